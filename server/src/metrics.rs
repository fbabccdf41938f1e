//! Prometheus metrics, through the `metrics` facade and its Prometheus
//! exporter. Handles for the hot counters are created once and reused.
//!
//! The library records into whatever global recorder the application
//! installed (see [`install_recorder`]); it never installs one itself.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `plexus_connections` | gauge | |
//! | `plexus_connections_total` | counter | |
//! | `plexus_frames_in_total` / `plexus_frames_out_total` | counter | |
//! | `plexus_bytes_in_total` / `plexus_bytes_out_total` | counter | |
//! | `plexus_requests_total` | counter | `method`, `code` (`ok` or an error code) |
//! | `plexus_request_duration_seconds` | histogram | `method` |
//! | `plexus_publishes_total` | counter | |
//! | `plexus_deliveries_total` | counter | |
//! | `plexus_slow_consumer_closes_total` | counter | |
//! | `plexus_auth_failures_total` | counter | `reason` |
//! | `plexus_closes_total` | counter | `code` |
//! | `plexus_subscriptions` | gauge | |

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use plexus_protocol::{CloseCode, Method, MethodKind};

/// Request latency buckets in seconds (10 µs to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
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
        .install_recorder()
}

/// How often histogram samples are folded into their buckets. Until then
/// the exporter keeps raw samples, so this bounds that memory.
pub const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Cached handles of the hot metrics.
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
    /// Per known method: its name, its `ok` counter and its latency
    /// histogram, so the hot path does no registry lookup.
    methods: Vec<(&'static str, Counter, Histogram)>,
}

impl Metrics {
    /// Creates the handles in the current global recorder (a no-op
    /// recorder if none is installed).
    pub fn new() -> Metrics {
        let methods = Method::ALL
            .iter()
            .filter(|m| m.kind() == MethodKind::Request)
            .map(|m| {
                let name = m.name();
                (
                    name,
                    counter!("plexus_requests_total", "method" => name, "code" => "ok"),
                    histogram!("plexus_request_duration_seconds", "method" => name),
                )
            })
            .collect();
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
            methods,
        }
    }

    /// Counts a finished request and its latency.
    pub fn request(&self, method: &'static str, code: Option<&str>, seconds: f64) {
        let cached = self.methods.iter().find(|(m, _, _)| *m == method);
        match (code, cached) {
            (None, Some((_, ok, _))) => ok.increment(1),
            (None, None) => {
                counter!("plexus_requests_total", "method" => method, "code" => "ok").increment(1)
            }
            (Some(code), _) => {
                counter!("plexus_requests_total", "method" => method, "code" => code.to_owned())
                    .increment(1)
            }
        }
        match cached {
            Some((_, _, h)) => h.record(seconds),
            None => {
                histogram!("plexus_request_duration_seconds", "method" => method).record(seconds)
            }
        }
    }

    /// Counts an authentication failure.
    pub fn auth_failure(&self, reason: &'static str) {
        counter!("plexus_auth_failures_total", "reason" => reason).increment(1);
    }

    /// Counts a close the server initiated.
    pub fn close(&self, code: CloseCode) {
        counter!("plexus_closes_total", "code" => code.as_u16().to_string()).increment(1);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
