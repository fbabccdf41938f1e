//! Scenario settings and results, shared by every target.

use std::time::Duration;

use serde::Serialize;

use crate::stats::Summary;

/// How fast publishers publish.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Rate {
    /// As fast as acknowledgements come back, with this many in flight per
    /// publisher (Plexus: publish responses; NATS: a PING/PONG every
    /// window).
    Saturate {
        /// Publishes in flight per publisher.
        window: usize,
    },
    /// A fixed total rate, in messages per second across all publishers.
    Fixed {
        /// Messages per second.
        per_sec: u64,
    },
}

/// The fan-out scenario: P publishers, S subscribers, T topics.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutConfig {
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections (subscriber i takes topic i mod T).
    pub subscribers: usize,
    /// Topics (publisher j publishes on topic j mod T).
    pub topics: usize,
    /// Payload bytes (at least 8: the timestamp).
    pub payload: usize,
    /// Publish rate.
    pub rate: Rate,
    /// Warm-up before measuring.
    #[serde(with = "humantime_serde_lite")]
    pub warmup: Duration,
    /// Measured duration.
    #[serde(with = "humantime_serde_lite")]
    pub duration: Duration,
    /// Subscribers that connect and subscribe but never read (slow
    /// consumers), in addition to `subscribers`.
    pub stalled: usize,
}

impl FanoutConfig {
    /// The topic name of index `i`.
    pub fn topic(&self, i: usize) -> String {
        format!("bench.t{}", i % self.topics.max(1))
    }
}

/// What a fan-out run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FanoutResult {
    /// Publishes completed per second in the measured window.
    pub published_per_sec: f64,
    /// Events received by (non-stalled) subscribers per second.
    pub delivered_per_sec: f64,
    /// Delivery latency, publish to receipt.
    pub latency: Summary,
    /// Stalled subscribers the hub closed, and with which codes.
    pub stalled_closed: Vec<Option<u16>>,
    /// Subscriber connections that broke during the run (should be 0).
    pub errors: u64,
    /// The full latency histogram, for pooling runs (not serialized).
    #[serde(skip)]
    pub histogram: crate::stats::Latency,
}

/// The RPC scenario: C connections, K calls in flight on each.
#[derive(Debug, Clone, Serialize)]
pub struct RpcConfig {
    /// Connections.
    pub connections: usize,
    /// Calls in flight per connection.
    pub in_flight: usize,
    /// Bytes of the call's payload (echoed back).
    pub payload: usize,
    /// Warm-up before measuring.
    #[serde(with = "humantime_serde_lite")]
    pub warmup: Duration,
    /// Measured duration.
    #[serde(with = "humantime_serde_lite")]
    pub duration: Duration,
}

/// What an RPC run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RpcResult {
    /// Calls completed per second.
    pub calls_per_sec: f64,
    /// Round-trip latency.
    pub latency: Summary,
    /// Calls that failed.
    pub errors: u64,
}

/// The idle-connections scenario.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsConfig {
    /// Connections to open, each authenticated with one subscription.
    pub connections: usize,
    /// Connections opened concurrently.
    pub concurrency: usize,
    /// Local addresses to connect from, round-robin (e.g. 127.0.0.2,
    /// 127.0.0.3 …); empty for the default. Each source address has its own
    /// ~28,000 ephemeral ports toward one hub port.
    pub sources: Vec<std::net::IpAddr>,
}

/// What the idle-connections run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectionsResult {
    /// Connections established.
    pub opened: usize,
    /// Connections per second while opening.
    pub connect_rate: f64,
    /// Hub RSS before, in KiB.
    pub rss_before_kib: u64,
    /// Hub RSS with every connection open, in KiB.
    pub rss_after_kib: u64,
    /// (after − before) / opened.
    pub kib_per_connection: f64,
}

/// Durations serialized as human-readable strings.
mod humantime_serde_lite {
    use std::time::Duration;

    pub(super) fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

/// The load generator's WebSocket settings, the same for every target.
///
/// tungstenite zero-fills the spare part of its read buffer on every read;
/// its 128 KiB default made that the load generator's largest cost, so both
/// the Plexus and the NATS clients read in 16 KiB steps (larger messages
/// still grow the buffer as needed). No size limits: the servers bound what
/// they send.
pub fn client_ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .write_buffer_size(16 * 1024)
        .max_frame_size(None)
        .max_message_size(None)
}
