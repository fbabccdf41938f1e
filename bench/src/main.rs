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

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use plexus_bench::nats::{JsSync, NatsServer, start_jetstream};
use plexus_bench::plexus::durable::{Database, StreamDurability, start_durable};
use plexus_bench::procs::{EchoProcess, HubBinary};
use plexus_bench::scenario::{
    ConnectionsConfig, DurablePublishConfig, FanoutConfig, PreauthConfig, Rate, RpcConfig,
    StalledConfig, StormConfig,
};
use plexus_bench::suite::{BoxError, ClusterSuite, DurableSuite, HttpSuite, Suite};
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
    /// The `plexus` binary under test [default: the one next to this
    /// program, or in PLEXUS_BENCH_BIN_DIR].
    #[arg(long = "plexus", global = true)]
    plexus: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum Target {
    Plexus,
    Nats,
    Floor,
}

/// A durable namespace's durability.
#[derive(Clone, Copy, ValueEnum)]
enum DurabilityArg {
    Committed,
    Fsynced,
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
        /// Clients in the reconnect storm [default: 10000; --quick: 1000].
        #[arg(long)]
        storm_clients: Option<usize>,
        /// Sockets in the pre-auth memory scenario [default: 4000; --quick: 200].
        #[arg(long)]
        preauth_sockets: Option<usize>,
        /// Subscribers in the stalled-subscriber memory scenario [default:
        /// 1000; --quick: 100].
        #[arg(long)]
        stalled_subscribers: Option<usize>,
        /// Another `plexus` binary (e.g. a build of the previous release)
        /// run beside the current one in every round: the report gains its
        /// figures ("before") and the ratio to them.
        #[arg(long = "baseline-plexus")]
        baseline_plexus: Option<PathBuf>,
        /// Rounds of every comparison [default: 3; slow consumers 5]; 1 to
        /// smoke-test the suite itself.
        #[arg(long)]
        rounds: Option<usize>,
        /// Run only the routed-RPC scenarios (issue 12), writing
        /// `<date>-routed.json` and `.md`.
        #[arg(long)]
        routed_only: bool,
        /// Run only the HTTP surface's scenarios (issue 13), writing
        /// `<date>-http.json` and `.md`.
        #[arg(long, conflicts_with = "routed_only")]
        http_only: bool,
    },
    /// The HTTP surface (issue 13): server API publishes over HTTP/1.1
    /// keep-alive (one per request, and batches) and SSE fan-out, each
    /// beside the hub's WebSocket figure of the same shape, alternated
    /// per round.
    Http {
        /// Shorter windows (a smoke test).
        #[arg(long)]
        quick: bool,
        /// Where to write `<date>-http.json` and `.md`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// Rounds of every comparison [default: 3].
        #[arg(long)]
        rounds: Option<usize>,
        /// Concurrent clients of the publish comparisons.
        #[arg(long, default_value_t = plexus_bench::suite::http::CLIENTS)]
        clients: usize,
        /// Publishes per batch request (at most the hub's `[http] max-batch`).
        #[arg(long, default_value_t = plexus_bench::suite::http::BATCH)]
        batch: usize,
        /// SSE streams (and WebSocket subscribers) of the fan-out.
        #[arg(long, default_value_t = plexus_bench::suite::http::SUBSCRIBERS)]
        subscribers: usize,
        /// The fan-out's fixed rate, publishes/s [default: a fifth of the
        /// slower saturated publish rate of the same run].
        #[arg(long)]
        rate: Option<u64>,
        /// Warm-up of every timed run [default: 2s; --quick: 500ms].
        #[arg(long)]
        warmup: Option<humantime::Duration>,
        /// Measured window of every timed run [default: 5s; --quick: 2s].
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Run only these parts (repeatable) [default: all].
        #[arg(long, value_enum)]
        only: Vec<plexus_bench::suite::http::Part>,
    },
    /// The durable-streams suite: durable publish throughput (1, 16, 64
    /// publishers), catch-up and latency on a durable topic, Plexus on
    /// SQLite and PostgreSQL beside NATS JetStream on file storage.
    Durable {
        /// Shorter windows and 20,000 instead of 100,000 events behind.
        #[arg(long)]
        quick: bool,
        /// Where to write `<date>-durable.json` and `.md`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// PostgreSQL server to create each run's database on (with
        /// `psql`), e.g. postgres://postgres@127.0.0.1:5432/test; without
        /// it the PostgreSQL runs are skipped.
        #[arg(long, env = "PLEXUS_BENCH_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// The nats-server for JetStream (2.10+ for `sync_interval`)
        /// [default: PLEXUS_BENCH_JETSTREAM_SERVER, else the NATS baseline's].
        #[arg(long)]
        jetstream_server: Option<PathBuf>,
        /// Rounds of every comparison [default: 1].
        #[arg(long)]
        rounds: Option<usize>,
        /// Events the catch-up subscriber is behind [default: 100000; --quick: 20000].
        #[arg(long)]
        behind: Option<u64>,
        /// Publisher counts of the throughput comparison (repeatable)
        /// [default: 1, 16, 64].
        #[arg(long = "publishers")]
        publishers: Vec<usize>,
        /// Run only these parts (repeatable) [default: all].
        #[arg(long, value_enum)]
        only: Vec<plexus_bench::suite::durable::Part>,
    },
    /// The record-sync suite: push throughput (16 clients, batches of 1
    /// and 100 records) and the pull rate of a 100,000-record space, on the
    /// sync engine in-process, SQLite and PostgreSQL.
    Sync {
        /// Shorter windows and a 20,000-record space.
        #[arg(long)]
        quick: bool,
        /// Where to write `<date>-sync.json` and `.md`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// PostgreSQL server to create each run's database on (with
        /// `psql`), e.g. postgres://postgres@127.0.0.1:5432/test; without
        /// it the PostgreSQL runs are skipped.
        #[arg(long, env = "PLEXUS_BENCH_POSTGRES_URL")]
        postgres_url: Option<String>,
        /// Rounds [default: 3].
        #[arg(long)]
        rounds: Option<usize>,
        /// Records in the pulled space [default: 100000; --quick: 20000].
        #[arg(long)]
        records: Option<u64>,
        /// Pushing clients.
        #[arg(long, default_value_t = plexus_bench::suite::sync::CLIENTS)]
        clients: usize,
        /// Run only these layers (repeatable) [default: engine, and wire
        /// when the hub binary is found].
        #[arg(long, value_enum)]
        only: Vec<plexus_bench::suite::sync::Layer>,
    },
    /// Cluster mode (issue 14): the fan-out spread over a cluster of
    /// nodes (one private nats-server, one fresh PostgreSQL database;
    /// publisher on node 1, subscribers round-robin over the nodes) beside
    /// a cluster of one node and the hub alone, on a plain and a durable
    /// topic, saturating and at a fixed rate: delivered/s, delivery
    /// latency and CPU seconds per 100,000 deliveries.
    Cluster {
        /// Shorter windows (a smoke test).
        #[arg(long)]
        quick: bool,
        /// Where to write `<date>-cluster.json` and `.md`.
        #[arg(long, default_value = "bench/results")]
        out: PathBuf,
        /// PostgreSQL server to create each run's database on (with
        /// `psql`).
        #[arg(
            long,
            env = "PLEXUS_BENCH_POSTGRES_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        postgres_url: String,
        /// Rounds [default: 1].
        #[arg(long)]
        rounds: Option<usize>,
        /// Nodes of the cluster.
        #[arg(long, default_value_t = plexus_bench::suite::cluster::NODES)]
        nodes: usize,
        /// Subscribers per node (every setup has nodes × this many).
        #[arg(long, default_value_t = plexus_bench::suite::cluster::SUBSCRIBERS_PER_NODE)]
        subscribers_per_node: usize,
        /// Payload bytes (at least 8: the timestamp).
        #[arg(long, default_value_t = plexus_bench::suite::cluster::PAYLOAD)]
        payload: usize,
        /// Publishes in flight when saturating.
        #[arg(long, default_value_t = plexus_bench::suite::FANOUT_WINDOW)]
        window: usize,
        /// The fixed rate, publishes/s [default: a tenth of the slowest
        /// saturated publish rate of the same run].
        #[arg(long)]
        rate: Option<u64>,
        /// Warm-up of every run [default: 1s; --quick: 300ms].
        #[arg(long)]
        warmup: Option<humantime::Duration>,
        /// Measured window of every run [default: 3s; --quick: 1s].
        #[arg(long)]
        duration: Option<humantime::Duration>,
        /// Only these topic kinds (repeatable) [default: plain and durable].
        #[arg(long, value_enum)]
        only: Vec<plexus_bench::plexus::cluster::TopicKind>,
        /// Skip the routed-RPC part.
        #[arg(long)]
        no_rpc: bool,
        /// Only the routed-RPC part (no fan-out).
        #[arg(long, conflicts_with = "no_rpc")]
        rpc_only: bool,
    },
    /// One durable publish run (P publishers, each publish acknowledged
    /// after it was stored): Plexus on a hub it starts with a durable
    /// `bench.>` namespace (or at `--url`), or JetStream.
    DurablePublish {
        #[arg(long, value_enum, default_value = "plexus")]
        target: Target,
        #[arg(long, default_value_t = 1)]
        publishers: usize,
        /// Publishes in flight per publisher.
        #[arg(long, default_value_t = 1)]
        window: usize,
        #[arg(long, default_value_t = 128)]
        payload: usize,
        /// Plexus: the namespace's durability.
        #[arg(long, value_enum, default_value = "fsynced")]
        durability: DurabilityArg,
        /// Plexus: a PostgreSQL server to create the run's database on
        /// [default: SQLite].
        #[arg(long)]
        postgres_url: Option<String>,
        /// Plexus: a hub already running with a durable `bench.>`
        /// namespace, instead of starting one.
        #[arg(long)]
        url: Option<String>,
        /// JetStream: `sync_interval: always` instead of the default.
        #[arg(long)]
        sync_always: bool,
        #[arg(long, default_value = "1s")]
        warmup: humantime::Duration,
        #[arg(long, default_value = "3s")]
        duration: humantime::Duration,
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
        /// Publishes in flight per publisher when saturating (Plexus: never
        /// more than the hub announces as `max_in_flight`).
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
    /// One routed-RPC run (issue 12): callers × in-flight calls through the
    /// hub to N callees (`rpc.call` → `rpc.invoke`), or NATS request/reply
    /// to N responders in a queue group.
    Routed {
        #[arg(long, value_enum, default_value = "plexus")]
        target: Target,
        #[arg(long, default_value_t = 1)]
        callees: usize,
        #[arg(long, default_value_t = 64)]
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
        sources: Vec<IpAddr>,
    },
    /// Reconnect storm: N clients connected and subscribed drop at once and
    /// reconnect at once; time until all are resubscribed.
    Storm {
        #[arg(long, value_enum, default_value = "plexus")]
        target: Target,
        #[arg(long, default_value_t = 10_000)]
        clients: usize,
        /// Topics: client i subscribes to topic i mod T [default: one each].
        #[arg(long)]
        topics: Option<usize>,
        /// Connections opened at once before the storm (not measured).
        #[arg(long, default_value_t = 200)]
        concurrency: usize,
        /// Pause between the drop and the reconnect.
        #[arg(long, default_value = "1s")]
        settle: humantime::Duration,
        /// A client not back by then gives up.
        #[arg(long, default_value = "60s")]
        deadline: humantime::Duration,
        /// The hub's accept backlog, passed as --listen-backlog if the hub
        /// has that setting.
        #[arg(long, default_value_t = plexus::LISTEN_BACKLOG)]
        listen_backlog: u32,
        /// Local addresses to connect from, round-robin (repeatable)
        /// [default: 127.0.0.2, .3, … for more than 5,000 clients].
        #[arg(long = "source-ip")]
        sources: Vec<IpAddr>,
    },
    /// Pre-auth memory: M sockets each send all but the last byte of one
    /// large binary frame without authenticating; hub RSS per socket.
    Preauth {
        #[arg(long, default_value_t = 4_000)]
        sockets: usize,
        /// The frame size the header announces.
        #[arg(long, default_value_t = 1 << 20)]
        frame_bytes: usize,
        /// Sockets writing at once.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        /// Local addresses to connect from, round-robin (repeatable).
        #[arg(long = "source-ip")]
        sources: Vec<IpAddr>,
    },
    /// Stalled subscribers: K never-reading subscribers while a publisher
    /// sends small events until the hub closes them (4006); hub RSS vs
    /// K × max-outbound-bytes.
    Stalled {
        #[arg(long, default_value_t = 1_000)]
        subscribers: usize,
        /// Topics: subscriber i takes topic i mod T (1: every event shared
        /// by all queues; = subscribers: every queued frame its own).
        #[arg(long, default_value_t = 1)]
        topics: usize,
        #[arg(long, default_value_t = 40)]
        payload: usize,
        /// The hub's outbound budget per connection for the run.
        #[arg(long, default_value_t = 1 << 20)]
        max_outbound_bytes: usize,
        /// Publishes in flight (capped by what the hub announces).
        #[arg(long, default_value_t = 1024)]
        window: usize,
        /// Stop publishing after this long even if subscribers remain.
        #[arg(long, default_value = "60s")]
        timeout: humantime::Duration,
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
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("plexus-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The hub binary under test.
fn hub_binary(path: Option<PathBuf>) -> Result<HubBinary, BoxError> {
    Ok(match path {
        Some(p) => HubBinary::probe(p, "plexus")?,
        None => HubBinary::current()?,
    })
}

/// `scenario` flags, then the user's `--hub-arg`s.
fn with(scenario: &[String], hub_args: &[String]) -> Vec<String> {
    scenario.iter().chain(hub_args).cloned().collect()
}

fn print(result: &impl serde::Serialize) -> Result<(), BoxError> {
    println!("{}", serde_json::to_string_pretty(result)?);
    Ok(())
}

async fn run(cli: Cli) -> Result<(), BoxError> {
    let hub_args = cli.hub_args;
    match cli.command {
        Command::EchoServer { listen } => echo::serve(listen).await?,
        Command::DurablePublish {
            target,
            publishers,
            window,
            payload,
            durability,
            postgres_url,
            url,
            sync_always,
            warmup,
            duration,
        } => {
            let cfg = DurablePublishConfig {
                publishers,
                window,
                payload,
                warmup: warmup.into(),
                duration: duration.into(),
            };
            let result = match (target, url) {
                (Target::Plexus, Some(url)) => plexus::durable::durable_publish(&url, &cfg).await,
                (Target::Plexus, None) => {
                    let db = postgres_url.map_or(Database::Sqlite, Database::Postgres);
                    let durability = match durability {
                        DurabilityArg::Committed => StreamDurability::Committed,
                        DurabilityArg::Fsynced => StreamDurability::Fsynced,
                    };
                    let bin = hub_binary(cli.plexus)?;
                    let hub = start_durable(&bin, &db, durability, &hub_args).await?;
                    plexus::durable::durable_publish(&hub.hub.url(), &cfg).await
                }
                (Target::Nats, _) => {
                    let bin = nats::jetstream_server_binary().ok_or("no nats-server")?;
                    let sync = if sync_always {
                        JsSync::Always
                    } else {
                        JsSync::Default
                    };
                    nats::jetstream::durable_publish(&start_jetstream(&bin, sync).await?, &cfg)
                        .await
                }
                (Target::Floor, _) => return Err("the floor stores nothing".into()),
            };
            print(&result)?;
        }
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
                Target::Plexus => {
                    let hub = hub_binary(cli.plexus)?.start(&hub_args).await?;
                    plexus::fanout(&hub, &cfg).await
                }
                Target::Nats => nats::fanout(&NatsServer::start().await?, &cfg).await,
                Target::Floor => return Err("the floor has no fan-out".into()),
            };
            print(&result)?;
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
                    let hub = hub_binary(cli.plexus)?.start(&hub_args).await?;
                    plexus::rpc(&hub.url(), &cfg, true).await
                }
                Target::Floor => plexus::rpc(&EchoProcess::start().await?.url(), &cfg, false).await,
                Target::Nats => nats::request_reply(&NatsServer::start().await?, &cfg).await,
            };
            print(&result)?;
        }
        Command::Routed {
            target,
            callees,
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
                    let hub = hub_binary(cli.plexus)?.start(&hub_args).await?;
                    plexus::routed(&hub.url(), &cfg, callees).await
                }
                Target::Nats => {
                    nats::request_reply_shared(&NatsServer::start().await?, &cfg, callees).await
                }
                Target::Floor => return Err("routed RPC has no floor: use plexus or nats".into()),
            };
            print(&result)?;
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
                None => Some(hub_binary(cli.plexus)?.start(&hub_args).await?),
            };
            let (result, conns) = match (&url, &hub) {
                (Some(url), _) => {
                    let rss = move || hub_pid.and_then(plexus_bench::rss::rss_kib);
                    plexus::connections(url, rss, &cfg).await
                }
                (None, Some(hub)) => plexus::connections(&hub.url(), || hub.rss_kib(), &cfg).await,
                (None, None) => return Err("no hub".into()),
            };
            print(&result)?;
            tokio::time::sleep(hold.into()).await;
            drop(conns);
            drop(hub);
        }
        Command::Storm {
            target,
            clients,
            topics,
            concurrency,
            settle,
            deadline,
            listen_backlog,
            sources,
        } => {
            plexus_bench::storm::check_file_limit(clients)?;
            let cfg = StormConfig {
                clients,
                concurrency,
                topics: topics.unwrap_or(clients),
                settle: settle.into(),
                deadline: deadline.into(),
                sources,
            };
            let result = match target {
                Target::Plexus => {
                    let bin = hub_binary(cli.plexus)?;
                    let args = with(&plexus::storm_hub_args(&bin, listen_backlog), &hub_args);
                    plexus::reconnect_storm(&bin.start(&args).await?, &cfg).await
                }
                Target::Nats => nats::reconnect_storm(&NatsServer::start().await?, &cfg).await,
                Target::Floor => return Err("the floor has no subscriptions".into()),
            };
            print(&result)?;
        }
        Command::Preauth {
            sockets,
            frame_bytes,
            concurrency,
            sources,
        } => {
            let cfg = PreauthConfig {
                sockets,
                frame_bytes: frame_bytes.max(2),
                concurrency,
                sources,
            };
            let args = with(&plexus::PREAUTH_HUB_ARGS.map(str::to_owned), &hub_args);
            let hub = hub_binary(cli.plexus)?.start(&args).await?;
            print(&plexus::preauth(&hub, &cfg).await)?;
        }
        Command::Stalled {
            subscribers,
            topics,
            payload,
            max_outbound_bytes,
            window,
            timeout,
        } => {
            let cfg = StalledConfig {
                subscribers,
                topics,
                payload,
                max_outbound_bytes: max_outbound_bytes.max(plexus::stalled::MIN_OUTBOUND_BYTES),
                window,
                timeout: timeout.into(),
            };
            let args = with(&plexus::stalled_hub_args(cfg.max_outbound_bytes), &hub_args);
            let hub = hub_binary(cli.plexus)?.start(&args).await?;
            print(&plexus::stalled(&hub, &cfg).await)?;
        }
        Command::Durable {
            quick,
            out,
            postgres_url,
            jetstream_server,
            rounds,
            behind,
            publishers,
            only,
        } => {
            let jetstream = jetstream_server
                .or_else(nats::jetstream_server_binary)
                .ok_or("no nats-server for JetStream: pass --jetstream-server or run bash bench/run.sh --durable")?;
            let suite = DurableSuite {
                quick,
                out,
                current: hub_binary(cli.plexus)?,
                hub_args,
                postgres: postgres_url,
                jetstream,
                rounds,
                behind,
                publishers: if publishers.is_empty() {
                    plexus_bench::suite::durable::PUBLISHERS.to_vec()
                } else {
                    publishers
                },
                only,
            };
            suite.run().await?;
        }
        Command::Sync {
            quick,
            out,
            postgres_url,
            rounds,
            records,
            clients,
            only,
        } => {
            let wire = only.is_empty() || only.contains(&plexus_bench::suite::sync::Layer::Wire);
            let suite = plexus_bench::suite::SyncSuite {
                quick,
                out,
                postgres: postgres_url,
                rounds,
                records,
                clients,
                hub: if wire {
                    Some(hub_binary(cli.plexus)?)
                } else {
                    None
                },
                hub_args,
                layers: only,
            };
            suite.run().await?;
        }
        Command::Cluster {
            quick,
            out,
            postgres_url,
            rounds,
            nodes,
            subscribers_per_node,
            payload,
            window,
            rate,
            warmup,
            duration,
            only,
            no_rpc,
            rpc_only,
        } => {
            if rpc_only && !only.is_empty() {
                return Err("--rpc-only and --only exclude each other".into());
            }
            let suite = ClusterSuite {
                quick,
                hub_args,
                rounds,
                nodes: nodes.max(1),
                subscribers_per_node: subscribers_per_node.max(1),
                payload,
                window,
                rate,
                warmup: warmup.map(Into::into),
                duration: duration.map(Into::into),
                only,
                fanout: !rpc_only,
                rpc: !no_rpc,
                ..ClusterSuite::new(hub_binary(cli.plexus)?, out, postgres_url)
            };
            suite.run().await?;
        }
        Command::Http {
            quick,
            out,
            rounds,
            clients,
            batch,
            subscribers,
            rate,
            warmup,
            duration,
            only,
        } => {
            let suite = HttpSuite {
                quick,
                hub_args,
                rounds,
                clients,
                batch,
                subscribers,
                rate,
                warmup: warmup.map(Into::into),
                duration: duration.map(Into::into),
                only,
                ..HttpSuite::new(hub_binary(cli.plexus)?, out)
            };
            suite.run().await?;
        }
        Command::Suite {
            quick,
            out,
            connections,
            storm_clients,
            preauth_sockets,
            stalled_subscribers,
            baseline_plexus,
            rounds,
            routed_only,
            http_only,
        } => {
            let suite = Suite {
                quick,
                out,
                connections,
                storm_clients,
                preauth_sockets,
                stalled_subscribers,
                current: hub_binary(cli.plexus)?,
                baseline: baseline_plexus
                    .map(|p| HubBinary::probe(p, "baseline"))
                    .transpose()?,
                hub_args,
                rounds,
            };
            if routed_only {
                suite.run_routed().await?;
            } else if http_only {
                suite.http_suite().run().await?;
            } else {
                suite.run().await?;
            }
        }
    }
    Ok(())
}
