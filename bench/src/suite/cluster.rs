//! The cluster-mode group (issue 14; `plexus-bench cluster`, `bench/run.sh
//! --cluster`): the fan-out spread over a cluster of nodes beside the same
//! fan-out on one node, delivered events/s, delivery latency and the CPU
//! time each delivery cost, on a plain and on a durable topic, in one run
//! and one report.
//!
//! Each run starts its own processes ([`crate::plexus::cluster::start`]):
//! a private `nats-server`, a fresh PostgreSQL database and the nodes, or
//! the hub alone. Within a round the setups run one after the other,
//! first saturating, then at a fixed rate, a tenth of the slowest
//! saturated publish rate of the same run ([`FIXED_RATE_SHARE`]).
//!
//! Routed RPC ([`RPC_SHAPES`]): callers on node 1, callees on the other
//! nodes, so every call crosses nodes twice (invocation and answer),
//! beside the same callers and callees on a cluster of one node and on the
//! hub alone: calls/s and p50/p99.
//!
//! Not measured here: presence convergence (the cluster test
//! `presence_is_cluster_wide_pages_across_nodes_and_expires_a_dead_node`
//! prints it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::{BoxError, FANOUT_WINDOW, write_report_with};
use crate::plexus::cluster::{self, ClusterRun, Setup, TopicKind};
use crate::plexus::routed::routed_across;
use crate::procs::HubBinary;
use crate::report::{Machine, Report, Row};
use crate::scenario::{FanoutConfig, Rate, RpcConfig, RpcResult};

/// Nodes of the cluster setup.
pub const NODES: usize = 3;

/// Subscribers per node of the cluster setup (every setup has
/// `NODES × SUBSCRIBERS_PER_NODE` subscribers in all).
pub const SUBSCRIBERS_PER_NODE: usize = 100;

/// Payload bytes of every publish.
pub const PAYLOAD: usize = 128;

/// What to run.
#[derive(Debug, Clone)]
pub struct ClusterSuite {
    /// Shorter windows (a smoke test).
    pub quick: bool,
    /// Where to write `<date>-cluster.json` and `.md`.
    pub out: PathBuf,
    /// The hub under test.
    pub current: HubBinary,
    /// Extra flags for every hub started.
    pub hub_args: Vec<String>,
    /// The PostgreSQL server each run creates its database on (e.g.
    /// `postgres://postgres@127.0.0.1:5432/test`).
    pub postgres: String,
    /// Rounds [default: 1].
    pub rounds: Option<usize>,
    /// Nodes of the cluster setup.
    pub nodes: usize,
    /// Subscribers per node of the cluster setup.
    pub subscribers_per_node: usize,
    /// Payload bytes.
    pub payload: usize,
    /// Publishes in flight when saturating (capped by the hub's
    /// `max_in_flight`).
    pub window: usize,
    /// The fixed rate, publishes/s [default: [`FIXED_RATE_SHARE`] of the
    /// slowest saturated publish rate of the same topic kind in the same
    /// run].
    pub rate: Option<u64>,
    /// Warm-up of every run [default: 1 s; quick 300 ms].
    pub warmup: Option<Duration>,
    /// Measured window of every run [default: 3 s; quick 1 s].
    pub duration: Option<Duration>,
    /// Only these topic kinds [default: plain, then durable].
    pub only: Vec<TopicKind>,
    /// Whether to run the fan-out parts [default: yes].
    pub fanout: bool,
    /// Whether to run the routed-RPC part [default: yes].
    pub rpc: bool,
}

/// The routed-RPC shapes: (callers, calls in flight each, callees).
pub const RPC_SHAPES: [(usize, usize, usize); 3] = [(64, 16, 1), (64, 16, 4), (1, 1, 1)];

/// Payload bytes of a routed call (echoed back).
pub const RPC_PAYLOAD: usize = 64;

/// A group's figures for one setup: the median of each figure over the
/// rounds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Events delivered per second, all subscribers.
    pub delivered_per_sec: f64,
    /// Publishes acknowledged per second.
    pub published_per_sec: f64,
    /// Delivery latency (publish to receipt), median.
    pub p50_us: f64,
    /// Delivery latency, 99th percentile.
    pub p99_us: f64,
    /// The hubs' CPU seconds in the window.
    pub hub_cpu_secs: f64,
    /// NATS's CPU seconds in the window.
    pub nats_cpu_secs: f64,
    /// The PostgreSQL backends' CPU seconds in the window.
    pub postgres_cpu_secs: f64,
    /// The load generator's CPU seconds in the window.
    pub generator_cpu_secs: f64,
    /// The hubs' CPU seconds per 100,000 deliveries.
    pub hub_cpu_per_100k: f64,
    /// Hubs + NATS + PostgreSQL CPU seconds per 100,000 deliveries.
    pub system_cpu_per_100k: f64,
    /// Share of the deliveries per node, node 1 first (of the median
    /// delivered/s run).
    pub delivered_share_by_node: Vec<f64>,
    /// Broken connections and failed publishes, the largest of any round.
    pub errors: u64,
    /// Messages the nodes did not send to NATS (`/health` `dropped`,
    /// summed over the nodes), the largest of any round.
    pub cluster_dropped: u64,
    /// Messages the nodes sent to NATS and received from it (`/health`
    /// `sent`, `received`, summed over the nodes; of the median
    /// delivered/s run): with N nodes, each event is sent once and
    /// received N − 1 times.
    pub nats_sent_received: (u64, u64),
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The medians of `runs` (of one setup).
pub fn summarize(runs: &[ClusterRun]) -> Summary {
    let m = |f: fn(&ClusterRun) -> f64| median(runs.iter().map(f).collect());
    let delivered = m(|r| r.fanout.delivered_per_sec);
    let mid = runs
        .iter()
        .find(|r| r.fanout.delivered_per_sec == delivered);
    let counter = |r: &ClusterRun, key: &str| -> u64 {
        r.cluster_health
            .iter()
            .filter_map(|h| h[key].as_u64())
            .sum()
    };
    let share = mid
        .map(|r| {
            let total: u64 = r.delivered_by_node.iter().sum();
            r.delivered_by_node
                .iter()
                .map(|&n| {
                    if total == 0 {
                        0.0
                    } else {
                        n as f64 / total as f64
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Summary {
        delivered_per_sec: delivered,
        published_per_sec: m(|r| r.fanout.published_per_sec),
        p50_us: m(|r| r.fanout.latency.p50_us),
        p99_us: m(|r| r.fanout.latency.p99_us),
        hub_cpu_secs: m(|r| r.cpu.hubs),
        nats_cpu_secs: m(|r| r.cpu.nats),
        postgres_cpu_secs: m(|r| r.cpu.postgres),
        generator_cpu_secs: m(|r| r.cpu.generator),
        hub_cpu_per_100k: m(|r| r.hub_cpu_per_100k),
        system_cpu_per_100k: m(|r| r.system_cpu_per_100k),
        delivered_share_by_node: share,
        errors: runs.iter().map(|r| r.fanout.errors).max().unwrap_or(0),
        cluster_dropped: runs
            .iter()
            .map(|r| counter(r, "dropped"))
            .max()
            .unwrap_or(0),
        nats_sent_received: mid.map_or((0, 0), |r| (counter(r, "sent"), counter(r, "received"))),
    }
}

impl ClusterSuite {
    /// The group with its defaults against `current`, on the PostgreSQL
    /// server of `postgres`, writing into `out`.
    pub fn new(current: HubBinary, out: PathBuf, postgres: String) -> ClusterSuite {
        ClusterSuite {
            quick: false,
            out,
            current,
            hub_args: Vec::new(),
            postgres,
            rounds: None,
            nodes: NODES,
            subscribers_per_node: SUBSCRIBERS_PER_NODE,
            payload: PAYLOAD,
            window: FANOUT_WINDOW,
            rate: None,
            warmup: None,
            duration: None,
            only: Vec::new(),
            fanout: true,
            rpc: true,
        }
    }

    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(1).max(1)
    }

    fn timing(&self) -> (Duration, Duration) {
        let (w, d) = if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(3))
        };
        (self.warmup.unwrap_or(w), self.duration.unwrap_or(d))
    }

    /// The setups, in the order each round runs them: the cluster, the
    /// cluster of one, the hub alone.
    fn setups(&self) -> Vec<Setup> {
        let mut s = vec![Setup::Cluster {
            nodes: self.nodes.max(1),
        }];
        if self.nodes > 1 {
            s.push(Setup::Cluster { nodes: 1 });
        }
        s.push(Setup::Alone);
        s
    }

    fn kinds(&self) -> Vec<TopicKind> {
        [TopicKind::Plain, TopicKind::Durable]
            .into_iter()
            .filter(|_| self.fanout)
            .filter(|k| self.only.is_empty() || self.only.contains(k))
            .collect()
    }

    /// Runs every part, prints the tables and writes the report.
    pub async fn run(&self) -> Result<Report, BoxError> {
        let mut rows = Vec::new();
        let mut raw = serde_json::Map::new();
        let mut tables = String::from("\n## Side by side (medians)\n\n");
        for kind in self.kinds() {
            self.part(kind, &mut rows, &mut raw, &mut tables).await?;
        }
        if self.rpc {
            self.rpc_part(&mut rows, &mut raw, &mut tables).await?;
        }
        let report = Report {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: Machine::detect(),
            rows,
            binary: self.current.path.display().to_string(),
            baseline_binary: None,
            raw: raw.into(),
        };
        write_report_with(&report, &self.out, "-cluster", &tables)?;
        Ok(report)
    }

    /// The fan-out of one topic kind: saturating, then at a fixed rate.
    async fn part(
        &self,
        kind: TopicKind,
        rows: &mut Vec<Row>,
        raw: &mut serde_json::Map<String, serde_json::Value>,
        tables: &mut String,
    ) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let mut cfg = FanoutConfig {
            publishers: 1,
            subscribers: self.nodes.max(1) * self.subscribers_per_node,
            topics: 1,
            payload: self.payload,
            rate: Rate::Saturate {
                window: self.window,
            },
            warmup,
            duration,
            stalled: 0,
        };
        let shape = format!(
            "{} fan-out 1→{}×{}",
            kind.label(),
            self.nodes.max(1),
            self.subscribers_per_node
        );
        let mut all = serde_json::Map::new();
        let sat = self.rounds_of(kind, &cfg, "saturated").await?;
        let sat_med = medians(&sat);
        let rate = self.rate.unwrap_or_else(|| fixed_rate(&sat_med));
        let mode = format!("saturated (window {})", self.window);
        self.emit(rows, tables, &format!("{shape} {mode}"), &sat_med);
        all.insert(
            "saturated".into(),
            serde_json::json!({ "config": cfg, "median": sat_med, "runs": sat }),
        );
        cfg.rate = Rate::Fixed { per_sec: rate };
        let fixed = self.rounds_of(kind, &cfg, &format!("at {rate}/s")).await?;
        let fixed_med = medians(&fixed);
        self.emit(rows, tables, &format!("{shape} at {rate}/s"), &fixed_med);
        all.insert(
            "fixed_rate".into(),
            serde_json::json!({ "config": cfg, "median": fixed_med, "runs": fixed }),
        );
        raw.insert(kind.label().into(), all.into());
        Ok(())
    }

    /// Routed RPC: every shape on every setup, a fresh start each time
    /// (callees of one shape must not serve the next).
    async fn rpc_part(
        &self,
        rows: &mut Vec<Row>,
        raw: &mut serde_json::Map<String, serde_json::Value>,
        tables: &mut String,
    ) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let mut all = serde_json::Map::new();
        for (callers, in_flight, callees) in RPC_SHAPES {
            let cfg = RpcConfig {
                connections: callers,
                in_flight,
                payload: RPC_PAYLOAD,
                warmup,
                duration,
            };
            let name = format!("routed RPC {callers}×{in_flight} → {callees} callee(s)");
            let mut runs: BTreeMap<String, Vec<RpcResult>> = BTreeMap::new();
            for _ in 0..self.rounds() {
                for setup in self.setups() {
                    eprintln!("cluster: {name}, {} …", setup.label());
                    let running = cluster::start(
                        &self.current,
                        setup,
                        TopicKind::Plain,
                        &self.postgres,
                        &self.hub_args,
                    )
                    .await?;
                    let urls = running.urls();
                    // Callers on node 1, callees on the others (all on
                    // node 1 when it is alone).
                    let callee_urls = if urls.len() > 1 {
                        urls[1..].to_vec()
                    } else {
                        urls.clone()
                    };
                    let r = routed_across(&urls[0], &callee_urls, &cfg, callees).await;
                    drop(running);
                    eprintln!(
                        "  {:.0} calls/s, p50 {:.0} µs, p99 {:.0} µs, errors {}",
                        r.calls_per_sec, r.latency.p50_us, r.latency.p99_us, r.errors
                    );
                    runs.entry(setup.label()).or_default().push(r);
                }
            }
            let med: BTreeMap<String, RpcSummary> = runs
                .iter()
                .map(|(k, v)| (k.clone(), rpc_summary(v)))
                .collect();
            rpc_rows(rows, &name, self.nodes.max(1), &med);
            tables.push_str(&rpc_side_by_side(&name, &self.setups(), &med));
            all.insert(
                name,
                serde_json::json!({ "config": cfg, "median": med, "runs": runs }),
            );
        }
        raw.insert("routed_rpc".into(), all.into());
        Ok(())
    }

    /// Rows and the side-by-side table of one comparison.
    fn emit(
        &self,
        rows: &mut Vec<Row>,
        tables: &mut String,
        name: &str,
        med: &BTreeMap<String, Summary>,
    ) {
        comparison_rows(rows, name, self.nodes.max(1), med);
        tables.push_str(&side_by_side(name, &self.setups(), med));
    }

    /// Every setup in turn, round after round; the runs by setup label.
    async fn rounds_of(
        &self,
        kind: TopicKind,
        cfg: &FanoutConfig,
        mode: &str,
    ) -> Result<BTreeMap<String, Vec<ClusterRun>>, BoxError> {
        let mut runs: BTreeMap<String, Vec<ClusterRun>> = BTreeMap::new();
        for _ in 0..self.rounds() {
            for setup in self.setups() {
                eprintln!(
                    "cluster: {} topic, {mode}, {} …",
                    kind.label(),
                    setup.label()
                );
                let running =
                    cluster::start(&self.current, setup, kind, &self.postgres, &self.hub_args)
                        .await?;
                let r = cluster::run(&running, setup, cfg).await;
                drop(running);
                eprintln!(
                    "  delivered {:.0}/s (by node {:?}), published {:.0}/s, p50 {:.0} µs, p99 {:.0} µs, \
                     CPU s: hubs {:.2} NATS {:.2} PG {:.2} generator {:.2}; hub CPU s/100k {:.3}, errors {}",
                    r.fanout.delivered_per_sec,
                    r.delivered_by_node,
                    r.fanout.published_per_sec,
                    r.fanout.latency.p50_us,
                    r.fanout.latency.p99_us,
                    r.cpu.hubs,
                    r.cpu.nats,
                    r.cpu.postgres,
                    r.cpu.generator,
                    r.hub_cpu_per_100k,
                    r.fanout.errors
                );
                runs.entry(setup.label()).or_default().push(r);
            }
        }
        Ok(runs)
    }
}

/// A routed-RPC shape's figures for one setup: medians over the rounds.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct RpcSummary {
    /// Calls completed per second.
    pub calls_per_sec: f64,
    /// Round-trip latency, median.
    pub p50_us: f64,
    /// Round-trip latency, 99th percentile.
    pub p99_us: f64,
    /// Failed calls, the largest of any round.
    pub errors: u64,
}

/// The medians of routed-RPC runs.
pub fn rpc_summary(runs: &[RpcResult]) -> RpcSummary {
    RpcSummary {
        calls_per_sec: median(runs.iter().map(|r| r.calls_per_sec).collect()),
        p50_us: median(runs.iter().map(|r| r.latency.p50_us).collect()),
        p99_us: median(runs.iter().map(|r| r.latency.p99_us).collect()),
        errors: runs.iter().map(|r| r.errors).max().unwrap_or(0),
    }
}

/// The ratio rows of one routed-RPC shape: the cluster (calls crossing
/// nodes) against the cluster of one and against the hub alone.
pub fn rpc_rows(rows: &mut Vec<Row>, name: &str, nodes: usize, med: &BTreeMap<String, RpcSummary>) {
    let big = Setup::Cluster { nodes }.label();
    let one = Setup::Cluster { nodes: 1 }.label();
    let alone = Setup::Alone.label();
    let mut pairs = Vec::new();
    if nodes > 1 {
        pairs.extend([(&big, &one), (&big, &alone)]);
    }
    pairs.push((&one, &alone));
    for (setup, base) in pairs {
        let (Some(s), Some(b)) = (med.get(setup), med.get(base)) else {
            continue;
        };
        rows.push(Row::new(
            &format!("{name}, {setup}: calls/s"),
            s.calls_per_sec,
            base,
            b.calls_per_sec,
            true,
        ));
        rows.push(Row::new(
            &format!("{name}, {setup}: p99 µs"),
            s.p99_us,
            base,
            b.p99_us,
            false,
        ));
    }
}

/// One routed-RPC shape's setups side by side (markdown).
pub fn rpc_side_by_side(
    name: &str,
    setups: &[Setup],
    med: &BTreeMap<String, RpcSummary>,
) -> String {
    let mut out = format!(
        "### {name}\n\n| setup | calls/s | p50 µs | p99 µs | errors |\n|---|---:|---:|---:|---:|\n"
    );
    for setup in setups {
        if let Some(s) = med.get(&setup.label()) {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} |",
                setup.label(),
                fmt(s.calls_per_sec),
                fmt(s.p50_us),
                fmt(s.p99_us),
                s.errors
            );
        }
    }
    out.push('\n');
    out
}

/// The medians of every setup's runs.
fn medians(runs: &BTreeMap<String, Vec<ClusterRun>>) -> BTreeMap<String, Summary> {
    runs.iter()
        .map(|(k, v)| (k.clone(), summarize(v)))
        .collect()
}

/// The fixed rate's share of the slowest saturated publish rate. Not a
/// fifth (as the HTTP group's): events published at a steady rate reach
/// each subscriber one by one (one write per subscriber per event, where
/// a saturated fan-out writes many queued events at once), so a fifth of
/// the saturated rate already kept both cores busy in a trial run; at a
/// tenth the machine has room and the latency is not queueing.
pub const FIXED_RATE_SHARE: f64 = 0.1;

/// [`FIXED_RATE_SHARE`] of the slowest setup's saturated publish rate (at
/// least 10/s), so that every setup keeps up at the fixed rate.
pub fn fixed_rate(saturated: &BTreeMap<String, Summary>) -> u64 {
    let slowest = saturated
        .values()
        .map(|s| s.published_per_sec)
        .fold(f64::INFINITY, f64::min);
    if slowest.is_finite() {
        (slowest * FIXED_RATE_SHARE).max(10.0) as u64
    } else {
        10
    }
}

/// The ratio rows of one comparison: the cluster of `nodes` against the
/// cluster of one node and against the hub alone (delivered/s, p99, CPU
/// per 100,000 deliveries), and the cluster of one against the hub alone
/// (what cluster mode costs where nothing crosses nodes).
pub fn comparison_rows(
    rows: &mut Vec<Row>,
    name: &str,
    nodes: usize,
    med: &BTreeMap<String, Summary>,
) {
    let big = Setup::Cluster { nodes }.label();
    let one = Setup::Cluster { nodes: 1 }.label();
    let alone = Setup::Alone.label();
    type Metric = (&'static str, fn(&Summary) -> f64, bool);
    let metrics: [Metric; 4] = [
        ("delivered/s", |s| s.delivered_per_sec, true),
        ("delivery p99 µs", |s| s.p99_us, false),
        (
            "hub CPU s per 100k deliveries",
            |s| s.hub_cpu_per_100k,
            false,
        ),
        (
            "hubs+NATS+PostgreSQL CPU s per 100k deliveries",
            |s| s.system_cpu_per_100k,
            false,
        ),
    ];
    let mut pairs = Vec::new();
    if nodes > 1 {
        pairs.extend([(&big, &one), (&big, &alone)]);
    }
    pairs.push((&one, &alone));
    for (setup, base) in pairs {
        let (Some(s), Some(b)) = (med.get(setup), med.get(base)) else {
            continue;
        };
        for (metric, f, higher) in metrics {
            rows.push(Row::new(
                &format!("{name}, {setup}: {metric}"),
                f(s),
                base,
                f(b),
                higher,
            ));
        }
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// One comparison's setups side by side, absolute figures (markdown).
pub fn side_by_side(name: &str, setups: &[Setup], med: &BTreeMap<String, Summary>) -> String {
    let mut out = format!(
        "### {name}\n\n| setup | delivered/s | share by node | published/s | p50 µs | p99 µs | \
         CPU s: hubs / NATS / PG / generator | hub CPU s per 100k | hubs+NATS+PG CPU s per 100k | \
         errors | NATS msgs sent / received / dropped |\n|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|\n"
    );
    for setup in setups {
        let Some(s) = med.get(&setup.label()) else {
            continue;
        };
        let share = s
            .delivered_share_by_node
            .iter()
            .map(|x| format!("{:.0} %", x * 100.0))
            .collect::<Vec<_>>()
            .join(" / ");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} | {:.3} | {:.3} | {} | {} / {} / {} |",
            setup.label(),
            fmt(s.delivered_per_sec),
            share,
            fmt(s.published_per_sec),
            fmt(s.p50_us),
            fmt(s.p99_us),
            s.hub_cpu_secs,
            s.nats_cpu_secs,
            s.postgres_cpu_secs,
            s.generator_cpu_secs,
            s.hub_cpu_per_100k,
            s.system_cpu_per_100k,
            s.errors,
            s.nats_sent_received.0,
            s.nats_sent_received.1,
            s.cluster_dropped
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(delivered: f64, published: f64, hub_cpu: f64) -> Summary {
        Summary {
            delivered_per_sec: delivered,
            published_per_sec: published,
            hub_cpu_per_100k: hub_cpu,
            ..Summary::default()
        }
    }

    #[test]
    fn routed_rpc_is_compared_across_setups_with_medians() {
        let r = |c: f64, p99: f64, e: u64| RpcResult {
            calls_per_sec: c,
            latency: crate::stats::Summary {
                p99_us: p99,
                ..Default::default()
            },
            errors: e,
        };
        let s = rpc_summary(&[r(100.0, 9.0, 0), r(300.0, 1.0, 2), r(200.0, 5.0, 1)]);
        assert_eq!((s.calls_per_sec, s.p99_us, s.errors), (200.0, 5.0, 2));
        let mut med = BTreeMap::new();
        med.insert(
            Setup::Cluster { nodes: 3 }.label(),
            rpc_summary(&[r(50.0, 8.0, 0)]),
        );
        med.insert(
            Setup::Cluster { nodes: 1 }.label(),
            rpc_summary(&[r(100.0, 4.0, 0)]),
        );
        med.insert(Setup::Alone.label(), rpc_summary(&[r(200.0, 2.0, 0)]));
        let mut rows = Vec::new();
        rpc_rows(&mut rows, "x", 3, &med);
        assert_eq!(rows.len(), 6);
        assert_eq!(rows[0].ratio, 0.5);
        let table = rpc_side_by_side("x", &[Setup::Cluster { nodes: 3 }, Setup::Alone], &med);
        assert!(
            table.contains("| cluster of 3 nodes | 50.00 | 0.000 | 8.00 | 0 |"),
            "{table}"
        );
        assert!(!table.contains("cluster of 1 node"));
    }

    #[test]
    fn the_cluster_is_compared_with_one_node_and_with_the_hub_alone() {
        let mut med = BTreeMap::new();
        med.insert("cluster of 3 nodes".to_owned(), summary(300.0, 1.0, 0.6));
        med.insert("cluster of 1 node".to_owned(), summary(600.0, 2.0, 0.3));
        med.insert("hub alone".to_owned(), summary(1200.0, 4.0, 0.2));
        let mut rows = Vec::new();
        comparison_rows(&mut rows, "plain", 3, &med);
        assert_eq!(rows.len(), 12, "3 pairs × 4 metrics");
        assert_eq!(
            rows[0].metric, "plain, cluster of 3 nodes: delivered/s",
            "{rows:?}"
        );
        assert_eq!(rows[0].baseline, "cluster of 1 node");
        assert!((rows[0].ratio - 0.5).abs() < 1e-9);
        let cpu = rows
            .iter()
            .find(|r| {
                r.metric == "plain, cluster of 3 nodes: hub CPU s per 100k deliveries"
                    && r.baseline == "hub alone"
            })
            .unwrap();
        assert!((cpu.ratio - 3.0).abs() < 1e-9);
        assert!(!cpu.higher_is_better);
        let last = rows.last().unwrap();
        assert!(last.metric.starts_with("plain, cluster of 1 node:"));
        assert_eq!(last.baseline, "hub alone");
        // A setup that did not run leaves its comparisons out.
        med.remove("hub alone");
        let mut rows = Vec::new();
        comparison_rows(&mut rows, "plain", 3, &med);
        assert_eq!(rows.len(), 4);
        assert_eq!(fixed_rate(&med), 10, "a tenth of 1/s, at least 10");
        med.insert("hub alone".to_owned(), summary(0.0, 1000.0, 0.0));
        med.insert("cluster of 3 nodes".to_owned(), summary(0.0, 600.0, 0.0));
        med.insert("cluster of 1 node".to_owned(), summary(0.0, 800.0, 0.0));
        assert_eq!(fixed_rate(&med), 60, "a tenth of the slowest");
    }

    #[test]
    fn each_figure_is_the_median_of_the_rounds_and_counters_come_from_health() {
        let run = |delivered: f64, p99: f64, by_node: Vec<u64>, sent: u64, dropped: u64| {
            let mut fanout = crate::scenario::FanoutResult {
                delivered_per_sec: delivered,
                ..Default::default()
            };
            fanout.latency.p99_us = p99;
            ClusterRun {
                setup: Setup::Cluster { nodes: 2 },
                fanout,
                delivered_by_node: by_node,
                cpu: cluster::WindowCpu::default(),
                hub_cpu_per_100k: delivered / 1000.0,
                system_cpu_per_100k: 0.0,
                cluster_health: vec![
                    serde_json::json!({"sent": sent, "received": 0, "dropped": dropped}),
                    serde_json::json!({"sent": 0, "received": sent, "dropped": 0}),
                ],
            }
        };
        let runs = [
            run(100.0, 9.0, vec![50, 50], 10, 0),
            run(300.0, 1.0, vec![150, 150], 30, 4),
            run(200.0, 5.0, vec![150, 50], 20, 0),
        ];
        let s = summarize(&runs);
        assert_eq!(s.delivered_per_sec, 200.0);
        assert_eq!(s.p99_us, 5.0, "the median p99, of whichever run");
        assert_eq!(s.hub_cpu_per_100k, 0.2);
        assert_eq!(s.delivered_share_by_node, [0.75, 0.25], "the median run's");
        assert_eq!(s.nats_sent_received, (20, 20), "the median run's");
        assert_eq!(s.cluster_dropped, 4, "the worst round's");
        assert_eq!(summarize(&[]), Summary::default());
    }

    #[test]
    fn the_table_lists_the_setups_in_order_with_their_share_by_node() {
        let mut med = BTreeMap::new();
        let mut s = summary(3000.0, 10.0, 0.25);
        s.delivered_share_by_node = vec![1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0];
        med.insert("cluster of 3 nodes".to_owned(), s);
        med.insert("hub alone".to_owned(), summary(6000.0, 20.0, 0.125));
        let setups = [
            Setup::Cluster { nodes: 3 },
            Setup::Cluster { nodes: 1 },
            Setup::Alone,
        ];
        let md = side_by_side("plain", &setups, &med);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "### plain");
        assert!(
            lines[4].starts_with("| cluster of 3 nodes | 3000 | 33 % / 33 % / 33 % | 10.00 |"),
            "{md}"
        );
        assert!(lines[5].starts_with("| hub alone | 6000 |  |"), "{md}");
        assert!(lines[5].contains("| 0.125 |"), "{md}");
        let setup_rows = lines
            .iter()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| setup"))
            .count();
        assert_eq!(setup_rows, 2, "the missing setup is left out: {md}");
        assert!(md.ends_with("|\n\n"), "a blank line after the table");
    }
}
