//! The reconnect storm against NATS: each client opens a WebSocket, sends
//! `CONNECT` and `PING` and waits for the `PONG`, then `SUB` and `PING` and
//! waits for the `PONG` (the subscription is registered).

use std::sync::Arc;

use super::{NatsConn, NatsServer};
use crate::scenario::{StormConfig, StormResult};

/// Runs the storm against a running `nats-server`.
pub async fn reconnect_storm(server: &NatsServer, cfg: &StormConfig) -> StormResult {
    let url = Arc::new(server.ws_url());
    let sources = Arc::new(crate::net::sources_for(cfg.clients, &cfg.sources));
    let topics: Arc<Vec<String>> = Arc::new((0..cfg.clients).map(|i| cfg.topic(i)).collect());
    crate::storm::run(cfg, move |i| {
        let (url, sources, topics) = (url.clone(), sources.clone(), topics.clone());
        async move {
            let source = crate::net::source_of(&sources, i);
            let mut conn = NatsConn::connect_from(&url, source).await?;
            conn.outbox().subscribe(topics[i].as_bytes(), 1);
            conn.round_trip().await?;
            Ok::<_, super::NatsError>(conn)
        }
    })
    .await
}
