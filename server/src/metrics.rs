//! Prometheus metrics, through the `metrics` facade and its Prometheus
//! exporter. Handles for everything counted on a hot path are created once
//! (per method index, per close code) and reused.
//!
//! The library records into whatever global recorder the application
//! installed (see [`install_recorder`]); it never installs one itself
//! (decision H6).
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `plexus_connections` | gauge | |
//! | `plexus_connections_total` | counter | |
//! | `plexus_subscriptions` | gauge | |
//! | `plexus_frames_in_total` / `plexus_frames_out_total` | counter | |
//! | `plexus_bytes_in_total` / `plexus_bytes_out_total` | counter | |
//! | `plexus_requests_total` | counter | `method`, `code` (`ok` or an error code) |
//! | `plexus_request_duration_seconds` | histogram | `method` |
//! | `plexus_publishes_total` | counter | |
//! | `plexus_deliveries_total` | counter | |
//! | `plexus_slow_consumer_closes_total` | counter | |
//! | `plexus_auth_failures_total` | counter | `reason` |
//! | `plexus_closes_total` | counter | `code`: every Close frame the hub sent, counted once, where it is written |
//! | `plexus_stream_commit_seconds` | histogram | time of one durable batch, first statement to commit |
//! | `plexus_stream_batch_size` | histogram | publishes per durable commit |
//! | `plexus_stream_events_stored_total` | counter | durable events stored |
//! | `plexus_stream_catchup_events_total` | counter | events streamed by resumes (its rate is the catch-up rate) |
//! | `plexus_stream_retention_events_total` / `plexus_stream_retention_keys_total` | counter | events and idempotency keys retention removed |
//! | `plexus_stream_storage_errors_total` | counter | durable batches rolled back by a database failure |

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use plexus_protocol::{CloseCode, ErrorCode, Method};

use crate::session::core::Label;
use crate::session::table::{FALLBACK, MethodIndex, MethodTable};

/// Request latency buckets in seconds (10 µs to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Publishes-per-commit buckets (powers of two up to the largest
/// `commit-max-batch` worth reading).
const BATCH_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Builds the Prometheus recorder with the hub's histogram buckets and
/// installs it as the process-wide `metrics` recorder, returning the handle
/// that renders `/metrics`.
///
/// The hub library never calls this itself: the global recorder belongs to
/// the application. The `plexus` binary calls it at start; an application
/// embedding the hub may install its own recorder instead, and the hub's
/// metrics go there (pass a handle in
/// [`ServerOptions`](crate::ServerOptions) to have the hub serve
/// `/metrics`).
pub fn install_recorder() -> Result<PrometheusHandle, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("plexus_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("plexus_stream_commit_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            Matcher::Full("plexus_stream_batch_size".into()),
            BATCH_BUCKETS,
        )?
        .install_recorder()
}

/// How often histogram samples are folded into their buckets. Until then
/// the exporter keeps raw samples, so this bounds that memory.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The handles of one request label.
#[derive(Debug, Clone)]
struct RequestMetrics {
    name: String,
    ok: Counter,
    latency: Histogram,
}

impl RequestMetrics {
    fn new(name: &str) -> RequestMetrics {
        RequestMetrics {
            name: name.to_owned(),
            ok: counter!("plexus_requests_total", "method" => name.to_owned(), "code" => "ok"),
            latency: histogram!("plexus_request_duration_seconds", "method" => name.to_owned()),
        }
    }

    fn count(&self, error: Option<&ErrorCode>) {
        match error {
            None => self.ok.increment(1),
            Some(code) => counter!(
                "plexus_requests_total",
                "method" => self.name.clone(),
                "code" => code.as_str().to_owned()
            )
            .increment(1),
        }
    }
}

/// The auth failure reasons counted.
const AUTH_FAILURES: [&str; 4] = ["invalid", "timeout", "refresh_invalid", "refresh_subject"];

/// Cached handles of the hub's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Open connections.
    pub connections: Gauge,
    /// Connections accepted.
    pub connections_total: Counter,
    /// Frames received.
    pub frames_in: Counter,
    /// Frames sent.
    pub frames_out: Counter,
    /// Bytes received in frames.
    pub bytes_in: Counter,
    /// Bytes sent in frames.
    pub bytes_out: Counter,
    /// Publishes accepted.
    pub publishes: Counter,
    /// Events queued for subscribers.
    pub deliveries: Counter,
    /// Connections closed as slow consumers.
    pub slow_consumer_closes: Counter,
    /// By method index.
    methods: Vec<RequestMetrics>,
    /// `auth`, `auth.refresh`, `rate_limited`, `unauthenticated`,
    /// `unknown`, the fallback.
    special: [RequestMetrics; 6],
    closes: Vec<(CloseCode, Counter)>,
    auth_failures: Vec<(&'static str, Counter)>,
}

impl Metrics {
    /// Creates the handles in the current global recorder (a no-op
    /// recorder if none is installed) for the methods of `table`.
    pub fn new(table: &MethodTable) -> Metrics {
        Metrics {
            connections: gauge!("plexus_connections"),
            connections_total: counter!("plexus_connections_total"),
            frames_in: counter!("plexus_frames_in_total"),
            frames_out: counter!("plexus_frames_out_total"),
            bytes_in: counter!("plexus_bytes_in_total"),
            bytes_out: counter!("plexus_bytes_out_total"),
            publishes: counter!("plexus_publishes_total"),
            deliveries: counter!("plexus_deliveries_total"),
            slow_consumer_closes: counter!("plexus_slow_consumer_closes_total"),
            methods: table
                .entries()
                .iter()
                .map(|e| RequestMetrics::new(&e.name))
                .collect(),
            special: [
                RequestMetrics::new(Method::Auth.name()),
                RequestMetrics::new(Method::AuthRefresh.name()),
                RequestMetrics::new("rate_limited"),
                RequestMetrics::new("unauthenticated"),
                RequestMetrics::new("unknown"),
                RequestMetrics::new("fallback"),
            ],
            closes: CloseCode::ALL
                .iter()
                .map(|c| {
                    (
                        *c,
                        counter!("plexus_closes_total", "code" => c.as_u16().to_string()),
                    )
                })
                .collect(),
            auth_failures: AUTH_FAILURES
                .iter()
                .map(|r| (*r, counter!("plexus_auth_failures_total", "reason" => *r)))
                .collect(),
        }
    }

    fn label(&self, label: Label) -> &RequestMetrics {
        match label {
            Label::Auth => &self.special[0],
            Label::AuthRefresh => &self.special[1],
            Label::RateLimited => &self.special[2],
            Label::Unauthenticated => &self.special[3],
            Label::Unknown => &self.special[4],
            Label::Method(i) => self.method(i),
        }
    }

    fn method(&self, i: MethodIndex) -> &RequestMetrics {
        if i == FALLBACK {
            return &self.special[5];
        }
        self.methods.get(usize::from(i)).unwrap_or(&self.special[4])
    }

    /// Counts a request a handler answered, and its latency.
    pub fn request(&self, method: MethodIndex, error: Option<&ErrorCode>, seconds: f64) {
        let m = self.method(method);
        m.count(error);
        m.latency.record(seconds);
    }

    /// Counts a request the session answered itself; with its latency
    /// when it waited for something (`auth` verification).
    pub fn answered(&self, label: Label, error: Option<&ErrorCode>, seconds: Option<f64>) {
        let m = self.label(label);
        m.count(error);
        if let Some(s) = seconds {
            m.latency.record(s);
        }
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &'static str) {
        match self.auth_failures.iter().find(|(r, _)| *r == reason) {
            Some((_, c)) => c.increment(1),
            None => counter!("plexus_auth_failures_total", "reason" => reason).increment(1),
        }
    }

    /// Counts a Close frame the hub sent, once, where it is written.
    pub fn close_sent(&self, code: CloseCode) {
        if code == CloseCode::SlowConsumer {
            self.slow_consumer_closes.increment(1);
        }
        match self.closes.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.increment(1),
            None => {
                counter!("plexus_closes_total", "code" => code.as_u16().to_string()).increment(1)
            }
        }
    }
}
