//! The idle-connections scenario: the hub's memory per authenticated,
//! subscribed, idle connection.

use std::time::Duration;

use super::conn::{Ws, connect_many};
use crate::clock::now_nanos;
use crate::scenario::{ConnectionsConfig, ConnectionsResult};

/// Opens N authenticated connections with one subscription each and
/// measures the hub's memory per connection (`rss_kib` reads the hub's
/// RSS). Returns the connections so the caller decides when they close.
pub async fn connections(
    url: &str,
    rss_kib: impl Fn() -> Option<u64>,
    cfg: &ConnectionsConfig,
) -> (ConnectionsResult, Vec<Ws>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib().unwrap_or(0);
    let started = now_nanos();
    let results = connect_many(url, &cfg.sources, cfg.connections, cfg.concurrency, |i| {
        Some(format!("bench.idle.{i}"))
    })
    .await;
    let secs = (now_nanos() - started) as f64 / 1e9;
    let conns: Vec<Ws> = results
        .into_iter()
        .filter_map(|r| r.ok().map(|s| s.ws))
        .collect();
    // Let allocations settle before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib().unwrap_or(0);
    let opened = conns.len();
    let result = ConnectionsResult {
        opened,
        connect_rate: opened as f64 / secs.max(1e-9),
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: after.saturating_sub(before) as f64 / opened.max(1) as f64,
    };
    (result, conns)
}
