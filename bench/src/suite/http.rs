//! The HTTP surface's group (issue 13): server API publishes over HTTP/1.1
//! keep-alive (one publish per request, and batches), and SSE fan-out,
//! each beside the hub's own WebSocket figure of the same shape, measured
//! in the same run with the targets alternated round by round.
//!
//! Every run starts its own hub with the bench's API key
//! ([`crate::plexus::http::http_toml`]), the WebSocket runs too, so both
//! surfaces meet the same hub configuration. The baseline hub binary is
//! not run: hubs before issue 13 have no HTTP surface.

use std::path::PathBuf;
use std::time::Duration;

use super::rounds::median_by;
use super::{BoxError, FANOUT_WINDOW, ROUNDS, Sink, write_report};
use crate::plexus::{self, start_http};
use crate::procs::HubBinary;
use crate::report::{Machine, Report, Row};
use crate::scenario::{
    FanoutConfig, FanoutResult, PublishLoadConfig, PublishLoadResult, Rate, SseFanoutResult,
};

/// Concurrent clients of the publish comparisons (the 16).
pub const CLIENTS: usize = 16;

/// Publishes per batch request (the hub's default `[http] max-batch`).
pub const BATCH: usize = 100;

/// SSE streams of the fan-out comparison.
pub const SUBSCRIBERS: usize = 1000;

/// Payload bytes of every publish.
pub const PAYLOAD: usize = 128;

/// A part of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// One publish per request: `POST /v1/api/publish` beside `publish`
    /// frames.
    Api,
    /// Batches: `POST /v1/api/batch` of N publishes (in order and
    /// parallel) beside bursts of N `publish` frames.
    Batch,
    /// SSE fan-out, saturating and at a fixed rate, beside the WebSocket
    /// fan-out.
    Sse,
}

/// What to run.
#[derive(Debug, Clone)]
pub struct HttpSuite {
    /// Shorter windows (a smoke test).
    pub quick: bool,
    /// Where to write `<date>-http.json` and `.md`.
    pub out: PathBuf,
    /// The hub under test.
    pub current: HubBinary,
    /// Extra flags for every hub started.
    pub hub_args: Vec<String>,
    /// Rounds of every comparison [default: [`ROUNDS`]].
    pub rounds: Option<usize>,
    /// Clients of the publish comparisons.
    pub clients: usize,
    /// Publishes per batch.
    pub batch: usize,
    /// SSE (and WebSocket) subscribers of the fan-out.
    pub subscribers: usize,
    /// The fan-out's fixed rate, publishes/s [default: a fifth of the
    /// slower saturated publish rate of the same run].
    pub rate: Option<u64>,
    /// Warm-up of every timed run [default: 2 s; quick 0.5 s].
    pub warmup: Option<Duration>,
    /// Measured window of every timed run [default: 5 s; quick 2 s].
    pub duration: Option<Duration>,
    /// Only these parts [default: all].
    pub only: Vec<Part>,
}

impl HttpSuite {
    /// The group with its defaults against `current`, writing into `out`.
    pub fn new(current: HubBinary, out: PathBuf) -> HttpSuite {
        HttpSuite {
            quick: false,
            out,
            current,
            hub_args: Vec::new(),
            rounds: None,
            clients: CLIENTS,
            batch: BATCH,
            subscribers: SUBSCRIBERS,
            rate: None,
            warmup: None,
            duration: None,
            only: Vec::new(),
        }
    }

    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(ROUNDS).max(1)
    }

    fn timing(&self) -> (Duration, Duration) {
        let (w, d) = if self.quick {
            (Duration::from_millis(500), Duration::from_secs(2))
        } else {
            (Duration::from_secs(2), Duration::from_secs(5))
        };
        (self.warmup.unwrap_or(w), self.duration.unwrap_or(d))
    }

    fn runs(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }

    fn publish_config(&self, batch: usize, parallel: bool) -> PublishLoadConfig {
        let (warmup, duration) = self.timing();
        PublishLoadConfig {
            clients: self.clients,
            payload: PAYLOAD,
            batch,
            parallel,
            warmup,
            duration,
        }
    }

    /// Runs the group, prints the table and writes `<date>-http.*`.
    pub async fn run(&self) -> Result<Report, BoxError> {
        let mut sink = Sink::default();
        self.measure(&mut sink).await?;
        let report = Report {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: Machine::detect(),
            rows: sink.rows,
            binary: self.current.path.display().to_string(),
            baseline_binary: None,
            raw: sink.raw.into(),
        };
        write_report(&report, &self.out, "-http")?;
        Ok(report)
    }

    /// Every part asked for, its rows and raw results into `sink`.
    pub(super) async fn measure(&self, sink: &mut Sink) -> Result<(), BoxError> {
        if self.runs(Part::Api) {
            self.api(sink).await?;
        }
        if self.runs(Part::Batch) {
            self.batches(sink).await?;
        }
        if self.runs(Part::Sse) {
            self.sse(sink).await?;
        }
        Ok(())
    }

    /// One publish per request: the server API, `publish` frames with one
    /// in flight, and the fan-out's sliding window of 64 with no
    /// subscribers.
    async fn api(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let cfg = self.publish_config(1, false);
        let pipelined = FanoutConfig {
            publishers: self.clients,
            subscribers: 0,
            topics: self.clients,
            payload: PAYLOAD,
            rate: Rate::Saturate {
                window: FANOUT_WINDOW,
            },
            warmup: cfg.warmup,
            duration: cfg.duration,
            stalled: 0,
        };
        let (mut https, mut wss, mut pipes) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=self.rounds() {
            eprintln!(
                "http api publish, {} clients, round {round}: HTTP, WebSocket 1 in flight, WebSocket window {FANOUT_WINDOW} …",
                self.clients
            );
            let h = start_http(&self.current, &self.hub_args).await?;
            https.push(plexus::api_publish(h.hub.addr, &cfg).await);
            drop(h);
            let h = start_http(&self.current, &self.hub_args).await?;
            wss.push(plexus::ws_publish(&h.hub.url(), &cfg).await);
            drop(h);
            let h = start_http(&self.current, &self.hub_args).await?;
            pipes.push(plexus::fanout(&h.hub, &pipelined).await);
            drop(h);
        }
        let (h, w, p) = (
            combine_publish(&https),
            combine_publish(&wss),
            combine_fanout(&pipes),
        );
        let name = format!("http api publish, {} clients × 1 in flight", self.clients);
        rows_publish(&mut sink.rows, &name, &h, "websocket, 1 in flight", &w);
        sink.rows.push(Row::new(
            &format!("{name}: publishes/s vs websocket window {FANOUT_WINDOW}"),
            h.publishes_per_sec,
            &format!("websocket, window {}", p.window.unwrap_or(0)),
            p.published_per_sec,
            true,
        ));
        sink.raw(
            "http_api_publish",
            serde_json::json!({
                "config": cfg, "pipelined_config": pipelined,
                "http": h, "websocket": w, "websocket_pipelined": p,
                "rounds": { "http": https, "websocket": wss, "websocket_pipelined": pipes },
            }),
        );
        Ok(())
    }

    /// Batches of N publishes per request, in order and parallel, beside
    /// bursts of N `publish` frames.
    async fn batches(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (seq, par) = (
            self.publish_config(self.batch, false),
            self.publish_config(self.batch, true),
        );
        let (mut seqs, mut pars, mut wss) = (Vec::new(), Vec::new(), Vec::new());
        for round in 1..=self.rounds() {
            eprintln!(
                "http api batch of {}, {} clients, round {round}: in order, parallel, WebSocket bursts …",
                self.batch, self.clients
            );
            let h = start_http(&self.current, &self.hub_args).await?;
            seqs.push(plexus::api_publish(h.hub.addr, &seq).await);
            drop(h);
            let h = start_http(&self.current, &self.hub_args).await?;
            pars.push(plexus::api_publish(h.hub.addr, &par).await);
            drop(h);
            let h = start_http(&self.current, &self.hub_args).await?;
            wss.push(plexus::ws_publish(&h.hub.url(), &seq).await);
            drop(h);
        }
        let (s, p, w) = (
            combine_publish(&seqs),
            combine_publish(&pars),
            combine_publish(&wss),
        );
        let against = format!("websocket, bursts of {}", w.batch);
        for (order, r) in [("in order", &s), ("parallel", &p)] {
            let name = format!(
                "http api batch of {} ({order}), {} clients",
                self.batch, self.clients
            );
            rows_publish(&mut sink.rows, &name, r, &against, &w);
        }
        sink.raw(
            "http_api_batch",
            serde_json::json!({
                "config": seq, "in_order": s, "parallel": p, "websocket": w,
                "rounds": { "in_order": seqs, "parallel": pars, "websocket": wss },
            }),
        );
        Ok(())
    }

    /// SSE fan-out 1 → S, saturating (the fan-out's window of 64) and at a
    /// fixed rate, beside the WebSocket fan-out.
    async fn sse(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let mut cfg = FanoutConfig {
            publishers: 1,
            subscribers: self.subscribers,
            topics: 1,
            payload: PAYLOAD,
            rate: Rate::Saturate {
                window: FANOUT_WINDOW,
            },
            warmup,
            duration,
            stalled: 0,
        };
        let s = self.subscribers;
        let (sat_sse, sat_ws) = self.fanout_rounds(&cfg, "saturating").await?;
        let name = format!("sse fanout 1→{s} saturated");
        rows_fanout(&mut sink.rows, &name, &sat_sse, &sat_ws);
        let rate = self.rate.unwrap_or_else(|| {
            // As the standard fan-out: a fifth of the slower one's
            // saturated publish rate, so that both keep up.
            (sat_sse
                .fanout
                .published_per_sec
                .min(sat_ws.published_per_sec)
                * 0.2)
                .max(10.0) as u64
        });
        let saturated_cfg = cfg.clone();
        cfg.rate = Rate::Fixed { per_sec: rate };
        let (fix_sse, fix_ws) = self.fanout_rounds(&cfg, &format!("at {rate}/s")).await?;
        let name = format!("sse fanout 1→{s} at {rate}/s");
        rows_fanout(&mut sink.rows, &name, &fix_sse, &fix_ws);
        sink.raw(
            "sse_fanout_saturated",
            serde_json::json!({ "config": saturated_cfg, "sse": sat_sse, "websocket": sat_ws }),
        );
        sink.raw(
            "sse_fanout_fixed",
            serde_json::json!({ "config": cfg, "sse": fix_sse, "websocket": fix_ws }),
        );
        Ok(())
    }

    /// SSE and WebSocket fan-out, alternated; the median delivered/s run of
    /// each, with the median p99.
    async fn fanout_rounds(
        &self,
        cfg: &FanoutConfig,
        what: &str,
    ) -> Result<(SseFanoutResult, FanoutResult), BoxError> {
        let (mut sses, mut wss) = (Vec::new(), Vec::new());
        for round in 1..=self.rounds() {
            eprintln!(
                "sse fanout 1→{} {what}, round {round}: SSE, WebSocket …",
                cfg.subscribers
            );
            let h = start_http(&self.current, &self.hub_args).await?;
            sses.push(plexus::sse_fanout(h.hub.addr, cfg).await);
            drop(h);
            let h = start_http(&self.current, &self.hub_args).await?;
            wss.push(plexus::fanout(&h.hub, cfg).await);
            drop(h);
        }
        let mut sse = median_by(&sses, |r| r.fanout.delivered_per_sec);
        sse.fanout.latency = median_by(&sses, |r| r.fanout.latency.p99_us).fanout.latency;
        Ok((sse, combine_fanout(&wss)))
    }
}

/// The median publishes/s run, with the latency of the median-p99 run.
fn combine_publish(runs: &[PublishLoadResult]) -> PublishLoadResult {
    let mut r = median_by(runs, |r| r.publishes_per_sec);
    r.latency = median_by(runs, |r| r.latency.p99_us).latency;
    r
}

/// The median delivered/s run (published/s when nothing is delivered),
/// with the latency of the median-p99 run.
fn combine_fanout(runs: &[FanoutResult]) -> FanoutResult {
    let mut r = median_by(runs, |r| r.delivered_per_sec + r.published_per_sec);
    r.latency = median_by(runs, |r| r.latency.p99_us).latency;
    r
}

/// Publishes/s, p50 and p99 per request, errors: `h` (HTTP) beside `w`
/// (WebSocket).
fn rows_publish(
    rows: &mut Vec<Row>,
    name: &str,
    h: &PublishLoadResult,
    against: &str,
    w: &PublishLoadResult,
) {
    rows.push(Row::new(
        &format!("{name}: publishes/s"),
        h.publishes_per_sec,
        against,
        w.publishes_per_sec,
        true,
    ));
    rows.push(Row::new(
        &format!("{name}: p50 µs per request"),
        h.latency.p50_us,
        against,
        w.latency.p50_us,
        false,
    ));
    rows.push(Row::new(
        &format!("{name}: p99 µs per request"),
        h.latency.p99_us,
        against,
        w.latency.p99_us,
        false,
    ));
    rows.push(Row::new(
        &format!("{name}: errors"),
        h.errors as f64,
        against,
        w.errors as f64,
        false,
    ));
}

/// Delivered/s, p99 and errors (streams closed by the hub included) of
/// the SSE fan-out beside the WebSocket fan-out.
fn rows_fanout(rows: &mut Vec<Row>, name: &str, s: &SseFanoutResult, w: &FanoutResult) {
    let against = "websocket fan-out";
    rows.push(Row::new(
        &format!("{name}: delivered/s"),
        s.fanout.delivered_per_sec,
        against,
        w.delivered_per_sec,
        true,
    ));
    rows.push(Row::new(
        &format!("{name}: p99 µs"),
        s.fanout.latency.p99_us,
        against,
        w.latency.p99_us,
        false,
    ));
    rows.push(Row::new(
        &format!("{name}: errors (streams closed or broken)"),
        s.fanout.errors as f64,
        against,
        w.errors as f64,
        false,
    ));
}
