//! The standard suite: every scenario against the hub and its baselines,
//! alternating the targets round by round, in one report.
//!
//! With a baseline `plexus` binary ([`Suite::baseline`]) every Plexus run is
//! repeated against it in the same round, right after the current one, so
//! before/after figures come from the same run.

pub mod cluster;
pub mod durable;
pub mod http;
mod rounds;
mod rows;
pub mod sync;

pub use cluster::ClusterSuite;
pub use durable::DurableSuite;
pub use http::HttpSuite;
pub use sync::SyncSuite;

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use crate::plexus;
use crate::procs::HubBinary;
use crate::report::{Machine, Report, Row};
use crate::scenario::{
    ConnectionsConfig, FanoutConfig, PreauthConfig, Rate, RpcConfig, StalledConfig, StormConfig,
};

/// Any error of a suite run.
pub type BoxError = Box<dyn std::error::Error>;

/// Rounds of every head-to-head comparison: on a shared 2-core machine a
/// single run can be off by tens of percent, so the suite alternates the
/// targets and reports medians.
pub const ROUNDS: usize = 3;

/// Rounds of the slow-consumer comparison: its p99 is a few milliseconds,
/// where one scheduling hiccup on a shared machine moves a run by 50 %.
pub const SLOW_ROUNDS: usize = 5;

/// The publish window of the standard fan-out (publish responses awaited
/// with 64 in flight, as NATS waits for a `PONG` after 64 `PUB`s).
pub const FANOUT_WINDOW: usize = 64;

/// The large publish window: the hub's default `max_in_flight`, so that the
/// hub, not the wait for acknowledgements, binds the publisher.
pub const LARGE_WINDOW: usize = 1024;

/// The routed-RPC runs: (callers, calls in flight each, callees).
pub const ROUTED: [(usize, usize, usize); 3] = [(64, 16, 1), (64, 16, 4), (1, 1, 1)];

/// What to run.
#[derive(Debug, Clone)]
pub struct Suite {
    /// Shorter runs and fewer connections (a smoke test).
    pub quick: bool,
    /// Where to write `<date>.json` and `<date>.md`.
    pub out: PathBuf,
    /// Idle connections in the connections scenario (default 15,000; quick 2,000).
    pub connections: Option<usize>,
    /// Clients in the reconnect storm (default 10,000; quick 1,000).
    pub storm_clients: Option<usize>,
    /// Sockets in the pre-auth memory scenario (default 4,000; quick 200).
    pub preauth_sockets: Option<usize>,
    /// Subscribers in the stalled-subscriber memory scenarios (default
    /// 1,000; quick 100).
    pub stalled_subscribers: Option<usize>,
    /// The hub under test.
    pub current: HubBinary,
    /// Another hub binary run beside it in every round ("before").
    pub baseline: Option<HubBinary>,
    /// Extra flags for every hub started.
    pub hub_args: Vec<String>,
    /// Rounds of every comparison instead of [`ROUNDS`] and
    /// [`SLOW_ROUNDS`] (1 for a smoke test of the suite itself).
    pub rounds: Option<usize>,
}

/// Prints the report's table and writes `<date><suffix>.json` and `.md`
/// into `out`.
pub(crate) fn write_report(
    report: &Report,
    out: &std::path::Path,
    suffix: &str,
) -> Result<(), BoxError> {
    write_report_with(report, out, suffix, "")
}

/// [`write_report`] with `extra` (markdown) after the report's table.
pub(crate) fn write_report_with(
    report: &Report,
    out: &std::path::Path,
    suffix: &str,
    extra: &str,
) -> Result<(), BoxError> {
    let md = format!("{}{extra}", report.markdown());
    println!("{md}");
    std::fs::create_dir_all(out)?;
    let stem = format!("{}{suffix}", report.date.replace(':', "-"));
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(report)?,
    )?;
    std::fs::write(out.join(format!("{stem}.md")), &md)?;
    eprintln!("wrote {}/{stem}.json and .md", out.display());
    Ok(())
}

/// One Plexus figure for the current hub and, if any, the baseline hub.
type Pair<T> = (T, Option<T>);

/// What the scenarios produced so far.
#[derive(Default)]
struct Sink {
    rows: Vec<Row>,
    raw: serde_json::Map<String, serde_json::Value>,
}

impl Sink {
    fn raw(&mut self, name: &str, value: serde_json::Value) {
        self.raw.insert(name.to_owned(), value);
    }
}

impl Suite {
    /// Flags for a hub: the scenario's own, then the user's `--hub-arg`s.
    fn args(&self, scenario: &[String]) -> Vec<String> {
        scenario.iter().chain(&self.hub_args).cloned().collect()
    }

    /// Runs `run` against the current hub, then the baseline hub if any.
    async fn each_hub<T, F, Fut>(&self, run: F) -> Result<Pair<T>, BoxError>
    where
        F: Fn(HubBinary) -> Fut,
        Fut: Future<Output = Result<T, BoxError>>,
    {
        let now = run(self.current.clone()).await?;
        let before = match &self.baseline {
            Some(b) => Some(run(b.clone()).await?),
            None => None,
        };
        Ok((now, before))
    }

    /// Rounds of each head-to-head comparison.
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(ROUNDS).max(1)
    }

    /// Rounds of the slow-consumer comparison.
    fn slow_rounds_count(&self) -> usize {
        self.rounds.unwrap_or(SLOW_ROUNDS).max(1)
    }

    /// The warm-up and measured window of timed runs.
    fn timing(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(500), Duration::from_secs(2))
        } else {
            (Duration::from_secs(2), Duration::from_secs(5))
        }
    }

    /// Runs every scenario, prints the table and writes the report.
    pub async fn run(&self) -> Result<Report, BoxError> {
        let mut sink = Sink::default();
        self.fanout(&mut sink).await?;
        self.rpc(&mut sink).await?;
        self.routed(&mut sink).await?;
        self.http_suite().measure(&mut sink).await?;
        self.connections(&mut sink).await?;
        self.storm(&mut sink).await?;
        self.slow_consumers(&mut sink).await?;
        self.preauth(&mut sink).await?;
        self.stalled(&mut sink).await?;
        let baseline = self.baseline.as_ref().map(|b| b.path.display().to_string());
        self.report(sink, baseline, "")
    }

    /// The report of what `sink` gathered, printed and written with
    /// `suffix`.
    fn report(
        &self,
        sink: Sink,
        baseline_binary: Option<String>,
        suffix: &str,
    ) -> Result<Report, BoxError> {
        let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let report = Report {
            date,
            machine: Machine::detect(),
            rows: sink.rows,
            binary: self.current.path.display().to_string(),
            baseline_binary,
            raw: sink.raw.into(),
        };
        write_report(&report, &self.out, suffix)?;
        Ok(report)
    }

    /// Fan-out, 1 publisher → 1,000 subscribers on one topic, 128 B:
    /// saturating with the standard window, saturating with the large
    /// window, and at a rate both targets sustain.
    async fn fanout(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let mut fan = FanoutConfig {
            publishers: 1,
            subscribers: 1000,
            topics: 1,
            payload: 128,
            rate: Rate::Saturate {
                window: FANOUT_WINDOW,
            },
            warmup,
            duration,
            stalled: 0,
        };
        eprintln!("fanout 1→1000, saturating, window {FANOUT_WINDOW} …");
        let (p, b, n) = self.fanout_rounds(&fan).await?;
        rows::fanout(
            &mut sink.rows,
            "fanout 1→1000 saturated",
            &p,
            b.as_ref(),
            &n,
        );
        // A rate both sustain without queueing: a fifth of the slower one's
        // saturated rate (saturated publishes are batched; fixed-rate ones
        // are not, and cost one WebSocket frame per subscriber each).
        let sustainable = (p.published_per_sec.min(n.published_per_sec) * 0.2).max(10.0) as u64;
        sink.raw(
            "fanout_saturated",
            serde_json::json!({ "config": fan, "plexus": p, "baseline_plexus": b, "nats": n }),
        );

        fan.rate = Rate::Saturate {
            window: LARGE_WINDOW,
        };
        eprintln!("fanout 1→1000, saturating, window up to {LARGE_WINDOW} …");
        let (p, b, n) = self.fanout_rounds(&fan).await?;
        let name =
            format!("fanout 1→1000 saturated, window {LARGE_WINDOW} or the hub's max_in_flight");
        rows::fanout(&mut sink.rows, &name, &p, b.as_ref(), &n);
        rows::window(&mut sink.rows, &name, &p, b.as_ref(), &n);
        sink.raw(
            "fanout_saturated_large_window",
            serde_json::json!({ "config": fan, "plexus": p, "baseline_plexus": b, "nats": n }),
        );

        eprintln!("fanout 1→1000 at {sustainable}/s …");
        fan.rate = Rate::Fixed {
            per_sec: sustainable,
        };
        let (p, b, n) = self.fanout_rounds(&fan).await?;
        rows::fanout(
            &mut sink.rows,
            &format!("fanout 1→1000 at {sustainable}/s"),
            &p,
            b.as_ref(),
            &n,
        );
        sink.raw(
            "fanout_fixed",
            serde_json::json!({ "config": fan, "plexus": p, "baseline_plexus": b, "nats": n }),
        );
        Ok(())
    }

    /// RPC: 10 connections × 16 in flight, 128 B.
    async fn rpc(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        eprintln!("rpc …");
        let cfg = RpcConfig {
            connections: 10,
            in_flight: 16,
            payload: 128,
            warmup,
            duration,
        };
        let (p, b, f, n) = self.rpc_rounds(&cfg).await?;
        rows::rpc(&mut sink.rows, &p, b.as_ref(), &f, &n);
        sink.raw(
            "rpc",
            serde_json::json!({ "config": cfg, "plexus": p, "baseline_plexus": b, "floor": f, "nats": n }),
        );
        Ok(())
    }

    /// The HTTP surface's group (issue 13) with this suite's hub, flags,
    /// rounds and windows.
    pub fn http_suite(&self) -> HttpSuite {
        HttpSuite {
            quick: self.quick,
            hub_args: self.hub_args.clone(),
            rounds: self.rounds,
            ..HttpSuite::new(self.current.clone(), self.out.clone())
        }
    }

    /// Runs only the routed-RPC scenarios and writes `<date>-routed.*`.
    pub async fn run_routed(&self) -> Result<Report, BoxError> {
        let mut sink = Sink::default();
        self.routed(&mut sink).await?;
        self.report(sink, None, "-routed")
    }

    /// Routed RPC (issue 12), 128 B, beside NATS request/reply over
    /// WebSocket to as many responders in a queue group: 64 callers × 16
    /// in flight to one and to four callees, and one caller × one call.
    /// The baseline hub is not run (hubs before issue 12 have no `rpc.*`).
    async fn routed(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        for (callers, in_flight, callees) in ROUTED {
            eprintln!("routed rpc {callers}×{in_flight} → {callees} callee(s) …");
            let cfg = RpcConfig {
                connections: callers,
                in_flight,
                payload: 128,
                warmup,
                duration,
            };
            let (p, n) = self.routed_rounds(&cfg, callees).await?;
            rows::routed(&mut sink.rows, &cfg, callees, &p, &n);
            sink.raw(
                &format!("routed_{callers}x{in_flight}_to_{callees}"),
                serde_json::json!({ "config": cfg, "callees": callees, "plexus": p, "nats": n }),
            );
        }
        Ok(())
    }

    /// Idle connections: hub KiB per connection.
    async fn connections(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let count = self
            .connections
            .unwrap_or(if self.quick { 2_000 } else { 15_000 });
        eprintln!("{count} idle connections …");
        let cfg = ConnectionsConfig {
            connections: count,
            concurrency: 200,
            sources: Vec::new(),
        };
        let args = self.args(&[]);
        let (c, b) = self
            .each_hub(|bin| {
                let (args, cfg) = (&args, &cfg);
                async move {
                    let hub = bin.start(args).await?;
                    let (c, conns) = plexus::connections(&hub.url(), || hub.rss_kib(), cfg).await;
                    drop(conns);
                    Ok(c)
                }
            })
            .await?;
        rows::connections(&mut sink.rows, count, &c, b.as_ref());
        sink.raw(
            "connections",
            serde_json::json!({ "config": cfg, "plexus": c, "baseline_plexus": b }),
        );
        Ok(())
    }

    /// The reconnect storm beside NATS.
    async fn storm(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let clients = self
            .storm_clients
            .unwrap_or(if self.quick { 1_000 } else { 10_000 });
        crate::storm::check_file_limit(clients)?;
        eprintln!("reconnect storm, {clients} clients …");
        let cfg = StormConfig {
            clients,
            concurrency: 200,
            topics: clients,
            settle: Duration::from_secs(1),
            deadline: Duration::from_secs(60),
            sources: Vec::new(),
        };
        let (p, b, n) = self.storm_rounds(&cfg).await?;
        rows::storm(&mut sink.rows, &p, b.as_ref(), &n);
        let backlog = |bin: &HubBinary| bin.accepts("--listen-backlog");
        sink.raw(
            "reconnect_storm",
            serde_json::json!({
                "config": cfg,
                "listen_backlog": plexus::LISTEN_BACKLOG,
                "listen_backlog_passed": {
                    "plexus": backlog(&self.current),
                    "baseline_plexus": self.baseline.as_ref().map(backlog),
                },
                "plexus": p, "baseline_plexus": b, "nats": n,
            }),
        );
        Ok(())
    }

    /// Slow consumers: fast subscribers' latency with and without stalled ones.
    async fn slow_consumers(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        eprintln!("slow consumers …");
        let cfg = FanoutConfig {
            publishers: 1,
            subscribers: 100,
            topics: 1,
            payload: 1024,
            rate: Rate::Fixed { per_sec: 2000 },
            warmup,
            duration,
            stalled: 0,
        };
        let (s, b) = self.each_hub(|bin| self.slow_rounds(bin, &cfg)).await?;
        rows::slow(&mut sink.rows, &s, b.as_ref());
        sink.raw(
            "slow_consumer",
            serde_json::json!({ "config": cfg, "plexus": s, "baseline_plexus": b }),
        );
        Ok(())
    }

    /// Pre-auth memory, with the 1 MiB frames and with frames of
    /// the 16 KiB pre-auth size (the most a hub may hold per socket).
    async fn preauth(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let sockets = self
            .preauth_sockets
            .unwrap_or(if self.quick { 200 } else { 4_000 });
        for frame_bytes in [1 << 20, 16 * 1024] {
            eprintln!("pre-auth memory: {sockets} sockets, {frame_bytes}-byte frames …");
            let cfg = PreauthConfig {
                sockets,
                frame_bytes,
                concurrency: 64,
                sources: Vec::new(),
            };
            let args = self.args(&plexus::PREAUTH_HUB_ARGS.map(str::to_owned));
            let (p, b) = self
                .each_hub(|bin| {
                    let (args, cfg) = (&args, &cfg);
                    async move { Ok(plexus::preauth(&bin.start(args).await?, cfg).await) }
                })
                .await?;
            rows::preauth(&mut sink.rows, &cfg, &p, b.as_ref());
            sink.raw(
                &format!("preauth_{frame_bytes}"),
                serde_json::json!({ "config": cfg, "plexus": p, "baseline_plexus": b }),
            );
        }
        Ok(())
    }

    /// Stalled subscribers, sharing one topic (1 MiB budget) and on a topic
    /// each (256 KiB budget, so the run fills in seconds: every frame is
    /// published once per subscriber).
    async fn stalled(&self, sink: &mut Sink) -> Result<(), BoxError> {
        let subscribers = self
            .stalled_subscribers
            .unwrap_or(if self.quick { 100 } else { 1_000 });
        for (topics, budget, name) in [
            (1, 1 << 20, "stalled_one_topic"),
            (subscribers, 256 * 1024, "stalled_topic_each"),
        ] {
            eprintln!(
                "stalled subscribers memory: {subscribers} on {topics} topic(s), {budget}-byte budget …"
            );
            let cfg = StalledConfig {
                subscribers,
                topics,
                payload: 40,
                max_outbound_bytes: budget,
                window: LARGE_WINDOW,
                timeout: Duration::from_secs(60),
            };
            let args = self.args(&plexus::stalled_hub_args(cfg.max_outbound_bytes));
            let (p, b) = self
                .each_hub(|bin| {
                    let (args, cfg) = (&args, &cfg);
                    async move { Ok(plexus::stalled(&bin.start(args).await?, cfg).await) }
                })
                .await?;
            rows::stalled(&mut sink.rows, &p, b.as_ref());
            sink.raw(
                name,
                serde_json::json!({ "config": cfg, "plexus": p, "baseline_plexus": b }),
            );
        }
        Ok(())
    }
}
