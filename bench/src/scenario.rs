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
    /// Publishes kept in flight per publisher when saturating: the window
    /// asked for, or less if the hub announced a smaller `max_in_flight`
    /// (Plexus; the smallest over the publishers). `None` at a fixed rate.
    pub window: Option<usize>,
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

/// The publish-rate scenario of the HTTP surface (issue 13) and the
/// WebSocket publishers beside it: C clients, each on its own connection,
/// each with one request in flight.
#[derive(Debug, Clone, Serialize)]
pub struct PublishLoadConfig {
    /// Clients, one connection each (HTTP/1.1 keep-alive or WebSocket).
    pub clients: usize,
    /// Payload bytes of each publish.
    pub payload: usize,
    /// Publishes per request: 1 is one `POST /v1/api/publish` (or one
    /// `publish` frame); more is one `POST /v1/api/batch` of that many
    /// (or that many `publish` frames written together, all answers
    /// awaited before the next burst).
    pub batch: usize,
    /// HTTP batches: `"parallel": true`.
    pub parallel: bool,
    /// Warm-up before measuring.
    #[serde(with = "humantime_serde_lite")]
    pub warmup: Duration,
    /// Measured duration.
    #[serde(with = "humantime_serde_lite")]
    pub duration: Duration,
}

impl PublishLoadConfig {
    /// The topic client `j` publishes on (no subscribers, not durable).
    pub fn topic(&self, j: usize) -> String {
        format!("bench.t{j}")
    }
}

/// What a publish-rate run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PublishLoadResult {
    /// Requests (HTTP requests, or WebSocket bursts) answered per second
    /// in the measured window.
    pub requests_per_sec: f64,
    /// Publishes answered with success per second (requests × the
    /// publishes each carried that succeeded).
    pub publishes_per_sec: f64,
    /// Per request: from writing it to reading its whole answer (for a
    /// WebSocket burst, its last answer).
    pub latency: Summary,
    /// Publishes per request actually used (a WebSocket burst is capped
    /// by the hub's `max_in_flight`).
    pub batch: usize,
    /// Failed requests or operations, broken connections (should be 0).
    pub errors: u64,
}

/// What an SSE fan-out run measured: the fan-out figures, and how the
/// hub ended streams during the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SseFanoutResult {
    /// Delivered/s, latency, publish rate, as for the WebSocket fan-out
    /// (`errors` counts streams that failed to open, broke or were
    /// closed).
    #[serde(flatten)]
    pub fanout: FanoutResult,
    /// Streams that ended with a final `event: close`, by its code (e.g.
    /// 4006 for a slow consumer).
    pub closed: std::collections::BTreeMap<u16, usize>,
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

/// The reconnect storm (see [`crate::storm`]).
#[derive(Debug, Clone, Serialize)]
pub struct StormConfig {
    /// Clients, each authenticated (Plexus) and subscribed to one topic.
    pub clients: usize,
    /// Connections opened concurrently in the first (unmeasured) phase.
    pub concurrency: usize,
    /// Topics: client i subscribes to topic i mod `topics`.
    pub topics: usize,
    /// Pause between dropping every connection and reconnecting them all.
    #[serde(with = "humantime_serde_lite")]
    pub settle: Duration,
    /// A client still not subscribed this long after the reconnect started
    /// gives up and counts as failed.
    #[serde(with = "humantime_serde_lite")]
    pub deadline: Duration,
    /// Local addresses to connect from, round-robin; empty: the kernel's
    /// choice up to 5,000 clients, else 127.0.0.2, 127.0.0.3, … (see
    /// [`crate::net::sources_for`]).
    pub sources: Vec<std::net::IpAddr>,
}

impl StormConfig {
    /// The topic of client `i`.
    pub fn topic(&self, i: usize) -> String {
        format!("bench.storm.{}", i % self.topics.max(1))
    }
}

/// What a reconnect storm measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StormResult {
    /// Clients asked for.
    pub clients: usize,
    /// Clients connected and subscribed before the storm.
    pub connected: usize,
    /// Rate of the first, unmeasured connects (`concurrency` at a time).
    pub first_connects_per_sec: f64,
    /// Clients connected and subscribed again after the storm.
    pub reconnected: usize,
    /// Clients that gave up at the deadline.
    pub failed: usize,
    /// Failed attempts that were retried (refused, reset, timed out).
    pub retries: u64,
    /// From the start of the reconnect until the last client's
    /// subscription was confirmed, in milliseconds.
    pub total_ms: f64,
    /// Each client's time from the start of the reconnect to its confirmed
    /// subscription (microseconds).
    pub per_client: Summary,
}

/// The pre-auth memory scenario: sockets that each send all but the last
/// byte of one large binary frame and never authenticate.
#[derive(Debug, Clone, Serialize)]
pub struct PreauthConfig {
    /// Sockets.
    pub sockets: usize,
    /// The size the frame header announces; `frame_bytes - 1` payload
    /// bytes are sent.
    pub frame_bytes: usize,
    /// Sockets writing at once.
    pub concurrency: usize,
    /// Local addresses to connect from, round-robin (empty: the kernel's
    /// choice).
    pub sources: Vec<std::net::IpAddr>,
}

/// What the pre-auth memory scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PreauthResult {
    /// Sockets whose WebSocket handshake succeeded.
    pub opened: usize,
    /// Sockets on which every byte was written.
    pub fully_sent: usize,
    /// Sockets on which a write failed (the hub closed or reset them).
    pub write_failed: usize,
    /// Sockets on which a write did not complete within the scenario's
    /// write bound (the hub stopped reading without closing).
    pub write_stalled: usize,
    /// Hub RSS before, KiB.
    pub rss_before_kib: u64,
    /// Hub RSS once every write ended, with every socket still open, KiB.
    pub rss_held_kib: u64,
    /// Largest hub RSS seen during the run, KiB.
    pub rss_peak_kib: u64,
    /// (peak − before) / opened.
    pub peak_kib_per_socket: f64,
    /// (held − before) / opened.
    pub held_kib_per_socket: f64,
    /// How the hub had closed each socket when measured: close code (0:
    /// closed without one) → count; sockets still open are not listed.
    pub closed_by_hub: std::collections::BTreeMap<u16, usize>,
    /// Sockets still open when measured.
    pub still_open: usize,
}

/// The stalled-subscribers memory scenario.
#[derive(Debug, Clone, Serialize)]
pub struct StalledConfig {
    /// Subscribers that never read.
    pub subscribers: usize,
    /// Topics: subscriber i takes topic i mod T, the publisher cycles
    /// through them. With one topic every event is one buffer shared by
    /// all subscribers' queues; with one topic per subscriber every queued
    /// frame is its own allocation (the worst case for a budget that
    /// counts encoded bytes).
    pub topics: usize,
    /// Payload bytes per event.
    pub payload: usize,
    /// The hub's `--max-outbound-bytes` for the run.
    pub max_outbound_bytes: usize,
    /// Publishes in flight (capped by what the hub announces).
    pub window: usize,
    /// The publisher stops after this long even if subscribers remain.
    #[serde(with = "humantime_serde_lite")]
    pub timeout: Duration,
}

/// What the stalled-subscribers scenario measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StalledResult {
    /// Subscribers connected.
    pub subscribers: usize,
    /// Topics they were spread over.
    pub topics: usize,
    /// subscribers × max-outbound-bytes, KiB: what the budget should bound.
    pub bound_kib: u64,
    /// Hub RSS before any subscriber connected, KiB.
    pub rss_before_kib: u64,
    /// Hub RSS with every subscriber connected and idle, KiB.
    pub rss_idle_kib: u64,
    /// Largest hub RSS while publishing, KiB.
    pub rss_peak_kib: u64,
    /// (peak − idle) / bound.
    pub peak_over_bound: f64,
    /// Hub RSS once every subscriber was closed (their sockets still
    /// unread), KiB.
    pub rss_after_close_kib: u64,
    /// Hub RSS after the subscribers read their close and disconnected, KiB.
    pub rss_after_disconnect_kib: u64,
    /// Publishes answered.
    pub published: u64,
    /// Publish window used.
    pub window: usize,
    /// From the first publish until a publish reached no subscriber, ms
    /// (`None`: some were still subscribed at the timeout).
    pub all_closed_ms: Option<f64>,
    /// How each subscriber was closed: close code (0: without one) → count.
    pub close_codes: std::collections::BTreeMap<u16, usize>,
    /// Subscribers still open at the end.
    pub still_open: usize,
}

/// The durable namespace every durable scenario publishes in: the hub's
/// `[[streams]]` pattern and the JetStream stream's subjects.
pub const DURABLE_SUBJECTS: &str = "bench.>";

/// The durable publish scenario: P publishers, each on its own connection
/// and its own topic, each publish acknowledged only after it was stored
/// (Plexus: the `publish` response after the commit; JetStream: the
/// `PubAck`).
#[derive(Debug, Clone, Serialize)]
pub struct DurablePublishConfig {
    /// Publisher connections.
    pub publishers: usize,
    /// Publishes in flight per publisher (1: each waits for its ack before
    /// the next).
    pub window: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Warm-up before measuring.
    #[serde(with = "humantime_serde_lite")]
    pub warmup: Duration,
    /// Measured duration.
    #[serde(with = "humantime_serde_lite")]
    pub duration: Duration,
}

impl DurablePublishConfig {
    /// The topic publisher `j` publishes on.
    pub fn topic(&self, j: usize) -> String {
        format!("bench.p{j}")
    }
}

/// What a durable publish run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurablePublishResult {
    /// Acknowledged publishes per second in the measured window.
    pub acked_per_sec: f64,
    /// Publish to acknowledgement.
    pub ack_latency: Summary,
    /// Plexus: the weakest `durability` its acks reported (`None`: none
    /// said; JetStream acks carry none).
    pub durability: Option<String>,
    /// Publishes answered with an error, acks without a stored offset, or
    /// connections that broke (should be 0).
    pub errors: u64,
}

/// The catch-up scenario: a topic filled with `behind` events, then a new
/// subscriber that has none of them subscribes from the start.
#[derive(Debug, Clone, Serialize)]
pub struct CatchupConfig {
    /// Events stored before the subscriber comes.
    pub behind: u64,
    /// Payload bytes.
    pub payload: usize,
    /// Publishes in flight while filling.
    pub fill_window: usize,
}

/// The topic the catch-up scenario fills.
pub const CATCHUP_TOPIC: &str = "bench.catchup";

/// What a catch-up run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CatchupResult {
    /// Events stored before the subscribe.
    pub behind: u64,
    /// Acknowledged publishes per second while filling (window
    /// `fill_window`).
    pub fill_per_sec: f64,
    /// Events the subscriber received.
    pub received: u64,
    /// From sending the subscribe to the first event, ms.
    pub first_ms: f64,
    /// From sending the subscribe to the final chunk (Plexus) or the last
    /// event (JetStream), ms.
    pub total_ms: f64,
    /// received / total.
    pub events_per_sec: f64,
    /// Plexus: the final chunk's outcome and count (`recovered`, N).
    pub outcome: Option<String>,
    /// Failures (should be 0): errors, a short count, a final chunk that
    /// does not match what was received.
    pub errors: u64,
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
