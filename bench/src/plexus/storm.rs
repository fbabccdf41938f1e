//! The reconnect storm against the hub: each client opens a WebSocket,
//! authenticates and subscribes, waiting for each response (two round
//! trips after the handshake, as the NATS client's `CONNECT`+`PING` and
//! `SUB`+`PING`).

use std::sync::Arc;

use super::conn::connect_with;
use crate::procs::{HubBinary, HubProcess, token};
use crate::scenario::{StormConfig, StormResult};

/// The hub's accept backlog for the storm when the binary has the setting.
pub const LISTEN_BACKLOG: u32 = 4096;

/// The flags a storm passes to `hub`: `--listen-backlog` only if it
/// accepts the flag (older hubs do not).
pub fn storm_hub_args(hub: &HubBinary, backlog: u32) -> Vec<String> {
    hub.arg_if_accepted("--listen-backlog", backlog)
}

/// Runs the storm against a running hub. Tokens are minted before the
/// storm, so the generator's signing is not in the measurement.
pub async fn reconnect_storm(hub: &HubProcess, cfg: &StormConfig) -> StormResult {
    let url = Arc::new(hub.url());
    let sources = Arc::new(crate::net::sources_for(cfg.clients, &cfg.sources));
    let tokens: Arc<Vec<String>> =
        Arc::new((0..cfg.clients).map(|i| token(&format!("s{i}"))).collect());
    let topics: Arc<Vec<String>> = Arc::new((0..cfg.clients).map(|i| cfg.topic(i)).collect());
    crate::storm::run(cfg, move |i| {
        let (url, sources, tokens, topics) =
            (url.clone(), sources.clone(), tokens.clone(), topics.clone());
        async move {
            let source = crate::net::source_of(&sources, i);
            connect_with(&url, source, &tokens[i], Some(&topics[i])).await
        }
    })
    .await
}
