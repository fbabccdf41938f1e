//! `plexus-bench`: run one scenario, or the standard suite, against Plexus
//! and its baselines.
//!
//! Run the standard suite with `bench/run.sh` (it builds in release mode
//! first); see `docs/benchmarks.md`.
#![forbid(unsafe_code)]
// A measurement tool: rates and percentiles move between floats and
// integer counts all the time, always of values far inside both ranges.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use plexus_bench::nats::NatsServer;
use plexus_bench::procs::{EchoProcess, HubProcess};
use plexus_bench::report::{Machine, Report, Row};
use plexus_bench::scenario::{ConnectionsConfig, FanoutConfig, Rate, RpcConfig};
use plexus_bench::{echo, nats, plexus};

#[derive(Parser)]
#[command(
    name = "plexus-bench",
    about = "Plexus side by side with NATS and the WebSocket floor"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Extra flags for every hub started, e.g. `--hub-arg=--ws-read-buffer=4096`.
    #[arg(long = "hub-arg", allow_hyphen_values = true, global = true)]
    hub_args: Vec<String>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Plexus,
    Nats,
    Floor,
}

#[derive(Subcommand)]
enum Command {
    /// The standard suite: every scenario, every baseline, one report.
    Suite {
        /// Shorter runs and 2,000 instead of 15,000 connections (a smoke test).
        #[arg(long)]
        quick: bool,
        /// Where to write `<date>.json` and `<date>.md`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Idle connections to open in the connections scenario.
        #[arg(long)]
        connections: Option<usize>,
    },
    /// One fan-out run.
    Fanout {
        #[arg(long, value_enum, default_value = "plexus")]
        target: Target,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        #[arg(long, default_value_t = 1000)]
        subscribers: usize,
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long, default_value_t = 128)]
        payload: usize,
        /// Publishes per second in total; 0 saturates.
        #[arg(long, default_value_t = 0)]
        rate: u64,
        /// Publishes in flight per publisher when saturating.
        #[arg(long, default_value_t = 64)]
        window: usize,
        #[arg(long, default_value_t = 0)]
        stalled: usize,
        #[arg(long, default_value = "2s")]
        warmup: humantime::Duration,
        #[arg(long, default_value = "5s")]
        duration: humantime::Duration,
    },
    /// One RPC run (`ping` on Plexus, echo on the floor, request/reply on NATS).
    Rpc {
        #[arg(long, value_enum, default_value = "plexus")]
        target: Target,
        #[arg(long, default_value_t = 10)]
        connections: usize,
        #[arg(long, default_value_t = 16)]
        in_flight: usize,
        #[arg(long, default_value_t = 128)]
        payload: usize,
        #[arg(long, default_value = "2s")]
        warmup: humantime::Duration,
        #[arg(long, default_value = "5s")]
        duration: humantime::Duration,
    },
    /// Open N idle authenticated connections and report hub KiB per connection.
    Connections {
        #[arg(long, default_value_t = 15_000)]
        n: usize,
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Hold them open this long after measuring (to inspect the hub).
        #[arg(long, default_value = "0s")]
        hold: humantime::Duration,
        /// Connect to a hub already running at this URL instead of starting
        /// one (several load generators can share it).
        #[arg(long)]
        url: Option<String>,
        /// With --url: the hub's process id, to sample its RSS.
        #[arg(long)]
        hub_pid: Option<u32>,
        /// Local addresses to connect from, round-robin (repeatable).
        #[arg(long = "source-ip")]
        sources: Vec<std::net::IpAddr>,
    },
    /// Run the echo floor server (used by the suite as a subprocess).
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("plexus-bench: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command, cli.hub_args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error>;

async fn run(command: Command, hub_args: Vec<String>) -> Result<(), BoxError> {
    match command {
        Command::EchoServer { listen } => echo::serve(listen).await?,
        Command::Fanout {
            target,
            publishers,
            subscribers,
            topics,
            payload,
            rate,
            window,
            stalled,
            warmup,
            duration,
        } => {
            let cfg = FanoutConfig {
                publishers,
                subscribers,
                topics,
                payload,
                rate: if rate == 0 {
                    Rate::Saturate { window }
                } else {
                    Rate::Fixed { per_sec: rate }
                },
                warmup: warmup.into(),
                duration: duration.into(),
                stalled,
            };
            let result = match target {
                Target::Plexus => plexus::fanout(&HubProcess::start(&hub_args).await?, &cfg).await,
                Target::Nats => nats::fanout(&NatsServer::start().await?, &cfg).await,
                Target::Floor => return Err("the floor has no fan-out".into()),
            };
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Rpc {
            target,
            connections,
            in_flight,
            payload,
            warmup,
            duration,
        } => {
            let cfg = RpcConfig {
                connections,
                in_flight,
                payload,
                warmup: warmup.into(),
                duration: duration.into(),
            };
            let result = match target {
                Target::Plexus => {
                    plexus::rpc(&HubProcess::start(&hub_args).await?.url(), &cfg, true).await
                }
                Target::Floor => plexus::rpc(&EchoProcess::start().await?.url(), &cfg, false).await,
                Target::Nats => nats::request_reply(&NatsServer::start().await?, &cfg).await,
            };
            println!("{}", serde_json::to_string_pretty(&result)?);
        }
        Command::Connections {
            n,
            concurrency,
            hold,
            url,
            hub_pid,
            sources,
        } => {
            let cfg = ConnectionsConfig {
                connections: n,
                concurrency,
                sources,
            };
            // The hub (when started here) lives until the end of this arm.
            let hub = match url {
                Some(_) => None,
                None => Some(HubProcess::start(&hub_args).await?),
            };
            let (result, conns) = match (&url, &hub) {
                (Some(url), _) => {
                    let rss = move || hub_pid.and_then(plexus_bench::procs::rss_kib);
                    plexus::connections(url, rss, &cfg).await
                }
                (None, Some(hub)) => plexus::connections(&hub.url(), || hub.rss_kib(), &cfg).await,
                (None, None) => return Err("no hub".into()),
            };
            println!("{}", serde_json::to_string_pretty(&result)?);
            tokio::time::sleep(hold.into()).await;
            drop(conns);
            drop(hub);
        }
        Command::Suite {
            quick,
            out,
            connections,
        } => suite(quick, out, connections, &hub_args).await?,
    }
    Ok(())
}

async fn suite(
    quick: bool,
    out: PathBuf,
    connections: Option<usize>,
    hub_args: &[String],
) -> Result<(), BoxError> {
    let (warmup, duration) = if quick {
        (Duration::from_millis(500), Duration::from_secs(2))
    } else {
        (Duration::from_secs(2), Duration::from_secs(5))
    };
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();

    // 1. Fan-out, 1 publisher → 1,000 subscribers on one topic, 128 B.
    let mut fan = FanoutConfig {
        publishers: 1,
        subscribers: 1000,
        topics: 1,
        payload: 128,
        rate: Rate::Saturate { window: 64 },
        warmup,
        duration,
        stalled: 0,
    };
    eprintln!("fanout 1→1000, saturating …");
    let (p, n) = fanout_rounds(&fan, hub_args).await?;
    rows.push(
        Row::new(
            "fanout 1→1000 saturated: delivered/s",
            p.delivered_per_sec,
            "nats",
            n.delivered_per_sec,
            true,
        )
        .target("≥ 1.0× NATS", p.delivered_per_sec >= n.delivered_per_sec),
    );
    rows.push(
        Row::new(
            "fanout 1→1000 saturated: p99 µs",
            p.latency.p99_us,
            "nats",
            n.latency.p99_us,
            false,
        )
        .target("≤ NATS", p.latency.p99_us <= n.latency.p99_us),
    );
    // A rate both sustain without queueing: a fifth of the slower one's
    // saturated rate (saturated publishes are batched; fixed-rate ones are
    // not, and cost one WebSocket frame per subscriber each).
    let sustainable = (p.published_per_sec.min(n.published_per_sec) * 0.2).max(10.0) as u64;
    raw.insert(
        "fanout_saturated".into(),
        serde_json::json!({ "config": fan, "plexus": p, "nats": n }),
    );

    eprintln!("fanout 1→1000 at {sustainable}/s …");
    fan.rate = Rate::Fixed {
        per_sec: sustainable,
    };
    let (p, n) = fanout_rounds(&fan, hub_args).await?;
    rows.push(
        Row::new(
            &format!("fanout 1→1000 at {sustainable}/s: delivered/s"),
            p.delivered_per_sec,
            "nats",
            n.delivered_per_sec,
            true,
        )
        .target(
            "≥ 1.0× NATS",
            p.delivered_per_sec >= n.delivered_per_sec * 0.99,
        ),
    );
    rows.push(
        Row::new(
            &format!("fanout 1→1000 at {sustainable}/s: p99 µs"),
            p.latency.p99_us,
            "nats",
            n.latency.p99_us,
            false,
        )
        .target("≤ NATS", p.latency.p99_us <= n.latency.p99_us),
    );
    raw.insert(
        "fanout_fixed".into(),
        serde_json::json!({ "config": fan, "plexus": p, "nats": n }),
    );

    // 2. RPC: 10 connections × 16 in flight, 128 B.
    eprintln!("rpc …");
    let rpc_cfg = RpcConfig {
        connections: 10,
        in_flight: 16,
        payload: 128,
        warmup,
        duration,
    };
    let (p, f, n) = rpc_rounds(&rpc_cfg, hub_args).await?;
    rows.push(
        Row::new(
            "rpc 10×16 ping: calls/s",
            p.calls_per_sec,
            "floor",
            f.calls_per_sec,
            true,
        )
        .target("≥ 0.7× floor", p.calls_per_sec >= 0.7 * f.calls_per_sec),
    );
    rows.push(Row::new(
        "rpc 10×16 ping: p99 µs",
        p.latency.p99_us,
        "floor",
        f.latency.p99_us,
        false,
    ));
    rows.push(Row::new(
        "rpc 10×16: calls/s vs NATS request/reply",
        p.calls_per_sec,
        "nats",
        n.calls_per_sec,
        true,
    ));
    raw.insert(
        "rpc".into(),
        serde_json::json!({ "config": rpc_cfg, "plexus": p, "floor": f, "nats": n }),
    );

    // 3. Idle connections.
    let count = connections.unwrap_or(if quick { 2_000 } else { 15_000 });
    eprintln!("{count} idle connections …");
    let conn_cfg = ConnectionsConfig {
        connections: count,
        concurrency: 200,
        sources: Vec::new(),
    };
    let c = {
        let hub = HubProcess::start(hub_args).await?;
        let (c, conns) = plexus::connections(&hub.url(), || hub.rss_kib(), &conn_cfg).await;
        drop(conns);
        c
    };
    rows.push(
        Row::new(
            &format!("{} idle connections: hub KiB/connection", c.opened),
            c.kib_per_connection,
            "target",
            8.0,
            false,
        )
        .target("≤ 8 KiB", c.kib_per_connection <= 8.0 && c.opened == count),
    );
    rows.push(Row::new(
        "idle connections: connects/s",
        c.connect_rate,
        "—",
        0.0,
        true,
    ));
    raw.insert(
        "connections".into(),
        serde_json::json!({ "config": conn_cfg, "plexus": c }),
    );

    // 4. Slow consumers: fast subscribers' latency with and without stalled ones.
    eprintln!("slow consumers …");
    let slow_args: Vec<String> = [
        "--max-outbound-bytes",
        "1048576",
        "--tcp-send-buffer",
        "65536",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let mut slow = FanoutConfig {
        publishers: 1,
        subscribers: 100,
        topics: 1,
        payload: 1024,
        rate: Rate::Fixed { per_sec: 2000 },
        warmup,
        duration,
        stalled: 0,
    };
    // p99 at this scale moves by 2× between identical runs on a shared
    // 2-core machine: alternate the two variants and compare medians.
    let mut bases = Vec::new();
    let mut withs = Vec::new();
    for _ in 0..SLOW_ROUNDS {
        slow.stalled = 0;
        bases.push(plexus::fanout(&HubProcess::start(&slow_args).await?, &slow).await);
        slow.stalled = 5;
        withs.push(plexus::fanout(&HubProcess::start(&slow_args).await?, &slow).await);
    }
    let median = |runs: &[plexus_bench::scenario::FanoutResult],
                  f: fn(&plexus_bench::scenario::FanoutResult) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    // Pool every round's samples per variant: one p99 over all of them is
    // steadier than a median of per-run p99s.
    let pooled = |runs: &[plexus_bench::scenario::FanoutResult]| {
        let mut h = plexus_bench::stats::Latency::new();
        for r in runs {
            h.merge(&r.histogram);
        }
        plexus_bench::scenario::FanoutResult {
            delivered_per_sec: median(runs, |r| r.delivered_per_sec),
            latency: h.summary(),
            stalled_closed: runs.iter().flat_map(|r| r.stalled_closed.clone()).collect(),
            ..Default::default()
        }
    };
    let base = pooled(&bases);
    let with = pooled(&withs);
    let closed_4006 = with
        .stalled_closed
        .iter()
        .filter(|c| **c == Some(4006))
        .count();
    rows.push(
        Row::new(
            "slow consumers: fast p99 µs with 5 stalled (5 rounds pooled)",
            with.latency.p99_us,
            "no stalled",
            base.latency.p99_us,
            false,
        )
        .target("≤ 1.10×", with.latency.p99_us <= base.latency.p99_us * 1.10),
    );
    rows.push(
        Row::new(
            "slow consumers: fast delivered/s with 5 stalled (median of 5)",
            with.delivered_per_sec,
            "no stalled",
            base.delivered_per_sec,
            true,
        )
        .target(
            "≥ 0.99×",
            with.delivered_per_sec >= base.delivered_per_sec * 0.99,
        ),
    );
    rows.push(
        Row::new(
            "slow consumers: stalled closed with 4006",
            closed_4006 as f64,
            "stalled",
            (5 * SLOW_ROUNDS) as f64,
            true,
        )
        .target("all", closed_4006 == 5 * SLOW_ROUNDS),
    );
    raw.insert(
        "slow_consumer_runs".into(),
        serde_json::json!({ "baseline": bases, "stalled": withs }),
    );
    raw.insert(
        "slow_consumer".into(),
        serde_json::json!({ "config": slow, "baseline": base, "stalled": with }),
    );

    let date = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let report = Report {
        date: date.clone(),
        machine: Machine::detect(),
        rows,
        raw: raw.into(),
    };
    let md = report.markdown();
    println!("{md}");
    std::fs::create_dir_all(&out)?;
    let stem = date.replace(':', "-");
    std::fs::write(
        out.join(format!("{stem}.json")),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join(format!("{stem}.md")), &md)?;
    eprintln!("wrote {}/{stem}.json and .md", out.display());
    Ok(())
}

/// Rounds of every head-to-head comparison: on a shared 2-core machine a
/// single run can be off by tens of percent, so the suite alternates the
/// targets and reports medians.
const ROUNDS: usize = 3;

/// Rounds of the slow-consumer comparison: its p99 is a few milliseconds,
/// where one scheduling hiccup on a shared machine moves a run by 50 %.
const SLOW_ROUNDS: usize = 5;

/// The run with the median of `key`.
fn median_by<T: Clone>(runs: &[T], key: impl Fn(&T) -> f64) -> T {
    let mut v: Vec<&T> = runs.iter().collect();
    v.sort_by(|a, b| key(a).total_cmp(&key(b)));
    v[v.len() / 2].clone()
}

/// Plexus and NATS fan-out, alternated; medians (delivered/s from the
/// median-throughput run, p99 from the median-latency run).
async fn fanout_rounds(
    cfg: &FanoutConfig,
    hub_args: &[String],
) -> Result<
    (
        plexus_bench::scenario::FanoutResult,
        plexus_bench::scenario::FanoutResult,
    ),
    BoxError,
> {
    let mut ps = Vec::new();
    let mut ns = Vec::new();
    for _ in 0..ROUNDS {
        let hub = HubProcess::start(hub_args).await?;
        ps.push(plexus::fanout(&hub, cfg).await);
        drop(hub);
        let server = NatsServer::start().await?;
        ns.push(nats::fanout(&server, cfg).await);
    }
    let combine = |runs: &[plexus_bench::scenario::FanoutResult]| {
        let mut r = median_by(runs, |r| r.delivered_per_sec);
        r.latency = median_by(runs, |r| r.latency.p99_us).latency;
        r
    };
    Ok((combine(&ps), combine(&ns)))
}

/// Plexus `ping`, the echo floor and NATS request/reply, alternated;
/// medians as for fan-out.
async fn rpc_rounds(
    cfg: &RpcConfig,
    hub_args: &[String],
) -> Result<
    (
        plexus_bench::scenario::RpcResult,
        plexus_bench::scenario::RpcResult,
        plexus_bench::scenario::RpcResult,
    ),
    BoxError,
> {
    let (mut ps, mut fs, mut ns) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let hub = HubProcess::start(hub_args).await?;
        ps.push(plexus::rpc(&hub.url(), cfg, true).await);
        drop(hub);
        let floor = EchoProcess::start().await?;
        fs.push(plexus::rpc(&floor.url(), cfg, false).await);
        drop(floor);
        let server = NatsServer::start().await?;
        ns.push(nats::request_reply(&server, cfg).await);
    }
    let combine = |runs: &[plexus_bench::scenario::RpcResult]| {
        let mut r = median_by(runs, |r| r.calls_per_sec);
        r.latency = median_by(runs, |r| r.latency.p99_us).latency;
        r
    };
    Ok((combine(&ps), combine(&fs), combine(&ns)))
}
