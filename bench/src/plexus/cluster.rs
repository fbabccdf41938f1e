//! Cluster mode (issue 14) under test: `plexus` nodes joined through one
//! private `nats-server` and one fresh PostgreSQL database, the fan-out
//! scenario spread over them (publisher on node 1, subscribers round-robin
//! over the nodes), and what the run cost in CPU time per delivery.
//!
//! Three setups are measured the same way, so that the cluster path is
//! quoted against the single-node path of the same run:
//!
//! - [`Setup::Cluster`] with N nodes (3 by default): every event published
//!   on node 1 goes once to NATS, which hands it to each other node that
//!   has a subscriber; each node fans it out to its own subscribers;
//! - [`Setup::Cluster`] with one node: the same hub in cluster mode, on
//!   the same NATS and PostgreSQL, all subscribers on it (what cluster
//!   mode costs on the publishing node: every event still goes to NATS);
//! - [`Setup::Alone`]: the hub without `--cluster` (SQLite for plain
//!   topics; for a durable topic the same kind of fresh PostgreSQL
//!   database).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::durable::{BoxError, PgDatabase, StreamDurability, backend_pids, streams_toml};
use super::fanout::{SpreadResult, fanout_spread};
use crate::clock::now_nanos;
use crate::cpu::{CpuSample, per_100k};
use crate::nats::NatsServer;
use crate::procs::{HubBinary, HubProcess};
use crate::scenario::{FanoutConfig, FanoutResult};
use crate::window::Window;

/// The nodes' heartbeat (as in the server's cluster tests: a node sees the
/// others within a second of starting).
pub const HEARTBEAT: &str = "200ms";

/// The nodes' expiry (at least three heartbeats).
pub const NODE_EXPIRY: &str = "1s";

/// How long a cluster may take to form (every node's `/health` listing
/// every node, its NATS link up).
pub const FORM_TIMEOUT: Duration = Duration::from_secs(20);

/// How long before the measured window the PostgreSQL backends are listed
/// (`psql` takes tens of milliseconds).
const PG_LEAD: Duration = Duration::from_millis(300);

/// The durability of the durable runs' namespace (the hub's default).
pub const DURABILITY: StreamDurability = StreamDurability::Fsynced;

/// Which hubs serve a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Setup {
    /// `nodes` hubs in cluster mode on one NATS server and one PostgreSQL
    /// database; the publisher on the first, subscribers round-robin.
    Cluster {
        /// How many nodes.
        nodes: usize,
    },
    /// One hub without `--cluster`.
    Alone,
}

impl Setup {
    /// What reports call it.
    pub fn label(self) -> String {
        match self {
            Setup::Cluster { nodes: 1 } => "cluster of 1 node".to_owned(),
            Setup::Cluster { nodes } => format!("cluster of {nodes} nodes"),
            Setup::Alone => "hub alone".to_owned(),
        }
    }
}

/// What the topic of a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TopicKind {
    /// A plain topic (no `[[streams]]` namespace).
    Plain,
    /// A topic in a durable `[[streams]]` namespace ([`streams_toml`],
    /// `bench.>`, [`DURABILITY`]): every publish is committed in the
    /// database before it is delivered and acknowledged.
    Durable,
}

impl TopicKind {
    /// What reports call it.
    pub fn label(self) -> &'static str {
        match self {
            TopicKind::Plain => "plain",
            TopicKind::Durable => "durable",
        }
    }
}

/// The running processes of one setup. Field order is drop order: the
/// hubs stop first, then NATS, then the database is dropped.
#[derive(Debug)]
pub struct Running {
    /// The hubs: node 1 first.
    pub nodes: Vec<HubProcess>,
    /// The cluster's NATS server.
    pub nats: Option<NatsServer>,
    /// The run's PostgreSQL database.
    pub db: Option<PgDatabase>,
    _conf: tempfile::TempDir,
}

impl Running {
    /// The nodes' WebSocket URLs, node 1 first.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(HubProcess::url).collect()
    }

    /// The processes whose CPU time a run counts, by role.
    fn pids(&self) -> Pids {
        Pids {
            hubs: self.nodes.iter().filter_map(HubProcess::pid).collect(),
            nats: self
                .nats
                .as_ref()
                .and_then(NatsServer::pid)
                .into_iter()
                .collect(),
            pg: self
                .db
                .as_ref()
                .map(|d| (d.base().to_owned(), d.name().to_owned())),
        }
    }

    /// Every node's `/health` (`null` for one that does not answer).
    pub async fn health(&self) -> Vec<serde_json::Value> {
        let mut out = Vec::with_capacity(self.nodes.len());
        for n in &self.nodes {
            out.push(get_json(n.addr, "/health").await.unwrap_or_default());
        }
        out
    }
}

/// `GET path` over a plain HTTP/1.0 socket; the body as JSON.
async fn get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n").as_bytes())
            .await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(5), io)
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&buf);
    serde_json::from_str(text.split("\r\n\r\n").nth(1)?).ok()
}

/// Whether a node's `/health` says it has joined a cluster of `nodes`
/// nodes: its NATS link up and every node listed.
pub fn joined(health: &serde_json::Value, nodes: usize) -> bool {
    let c = &health["cluster"];
    c["link"] == "up" && c["nodes"].as_array().is_some_and(|n| n.len() == nodes)
}

/// The namespace of the plain runs' config file: one no run publishes on.
pub const UNUSED_NAMESPACE: &str = "unused.>";

/// The config file of every hub of a run: for durable topics the durable
/// suite's namespace ([`streams_toml`], `bench.>`, [`DURABILITY`]); for
/// plain topics a namespace no run publishes on ([`UNUSED_NAMESPACE`]).
///
/// The plain runs need one too: a hub opens its database (and creates
/// the tables, the cluster's node table among them) only when it has a
/// `[[streams]]` namespace, and a cluster node without that table never
/// records its heartbeat (`/health`: `"database": "down"`, no nodes). Every
/// setup of a run gets the same file, so that they differ only in cluster
/// mode.
pub fn config_toml(kind: TopicKind) -> String {
    match kind {
        TopicKind::Durable => streams_toml(DURABILITY),
        TopicKind::Plain => format!("[[streams]]\npattern = \"{UNUSED_NAMESPACE}\"\n"),
    }
}

/// Starts `setup` for topics of `kind`: for a cluster, a private
/// `nats-server`, a fresh database on the PostgreSQL server of `postgres`
/// and the nodes (`127.0.0.N`, node ids `nN`), waiting until each has
/// joined; alone, one hub (with a fresh PostgreSQL database for durable
/// topics). `extra` flags go to every hub.
pub async fn start(
    bin: &HubBinary,
    setup: Setup,
    kind: TopicKind,
    postgres: &str,
    extra: &[String],
) -> Result<Running, BoxError> {
    let conf = tempfile::tempdir()?;
    let path: PathBuf = conf.path().join("plexus.toml");
    std::fs::write(&path, config_toml(kind))?;
    let mut args = vec!["--config".to_owned(), path.display().to_string()];
    let needs_db = kind == TopicKind::Durable || matches!(setup, Setup::Cluster { .. });
    let db = if needs_db {
        Some(PgDatabase::create(postgres).await?)
    } else {
        None
    };
    if let Some(db) = &db {
        args.extend(["--database-url".to_owned(), db.url.clone()]);
    }
    let (nats, count) = match setup {
        Setup::Cluster { nodes } => {
            if !bin.accepts("--cluster") {
                return Err(format!(
                    "{} serve --help lists no --cluster: this hub has no cluster mode",
                    bin.path.display()
                )
                .into());
            }
            let nats = NatsServer::start().await?;
            args.extend(["--cluster".to_owned(), nats.nats_url()]);
            args.extend(["--cluster-heartbeat".to_owned(), HEARTBEAT.to_owned()]);
            args.extend(["--cluster-node-expiry".to_owned(), NODE_EXPIRY.to_owned()]);
            (Some(nats), nodes.max(1))
        }
        Setup::Alone => (None, 1),
    };
    let mut nodes = Vec::with_capacity(count);
    for i in 1..=count {
        let mut a = args.clone();
        if nats.is_some() {
            a.extend(["--node-id".to_owned(), format!("n{i}")]);
        }
        a.extend(extra.iter().cloned());
        // 127.0.0.1 … 127.0.0.N: one loopback address per node, as in the
        // server's cluster tests (at most 254 nodes).
        let listen = format!("127.0.0.{}:0", i.min(254));
        nodes.push(bin.start_on(&listen, &a).await?);
    }
    let running = Running {
        nodes,
        nats,
        db,
        _conf: conf,
    };
    if running.nats.is_some() {
        let deadline = tokio::time::Instant::now() + FORM_TIMEOUT;
        for n in &running.nodes {
            while !get_json(n.addr, "/health")
                .await
                .is_some_and(|h| joined(&h, count))
            {
                if tokio::time::Instant::now() >= deadline {
                    return Err(format!(
                        "the cluster of {count} did not form within {FORM_TIMEOUT:?} (node {})",
                        n.addr
                    )
                    .into());
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    Ok(running)
}

/// The processes a run's CPU time is read from.
#[derive(Debug, Clone)]
struct Pids {
    hubs: Vec<u32>,
    nats: Vec<u32>,
    /// The PostgreSQL server's URL and the run's database name.
    pg: Option<(String, String)>,
}

/// CPU time spent in the measured window, in seconds, by role.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct WindowCpu {
    /// The `plexus` processes.
    pub hubs: f64,
    /// The cluster's `nats-server`.
    pub nats: f64,
    /// The PostgreSQL backends serving the run's database (those
    /// connected at the start of the window and any that connected
    /// during it).
    pub postgres: f64,
    /// The load generator (this process: publishers and subscribers).
    pub generator: f64,
    /// Wall-clock seconds between the two samples (the window's length
    /// unless the sampler was scheduled late; every figure above is scaled
    /// to the window's length).
    pub sampled_secs: f64,
}

/// Samples the CPU time of `pids` at the window's start and end.
async fn sample_window(win: Window, pids: Pids) -> WindowCpu {
    let start = win.start_deadline();
    tokio::time::sleep_until(start.checked_sub(PG_LEAD).unwrap_or(start)).await;
    let pg_before = match &pids.pg {
        Some((base, name)) => backend_pids(base, name).await,
        None => Vec::new(),
    };
    let me = [std::process::id()];
    tokio::time::sleep_until(start).await;
    let t0 = now_nanos();
    let h0 = CpuSample::take(&pids.hubs);
    let n0 = CpuSample::take(&pids.nats);
    let p0 = CpuSample::take(&pg_before);
    let g0 = CpuSample::take(&me);
    tokio::time::sleep_until(win.deadline()).await;
    let t1 = now_nanos();
    let h1 = CpuSample::take(&pids.hubs);
    let n1 = CpuSample::take(&pids.nats);
    let g1 = CpuSample::take(&me);
    let mut p1 = CpuSample::take(&pg_before);
    if let Some((base, name)) = &pids.pg {
        let now: Vec<u32> = backend_pids(base, name)
            .await
            .into_iter()
            .filter(|p| !p0.0.contains_key(p))
            .collect();
        p1.0.extend(CpuSample::take(&now).0);
    }
    let sampled = (t1.saturating_sub(t0)) as f64 / 1e9;
    let scale = if sampled > 0.0 {
        win.secs() / sampled
    } else {
        1.0
    };
    WindowCpu {
        hubs: h0.seconds_until(&h1) * scale,
        nats: n0.seconds_until(&n1) * scale,
        postgres: p0.seconds_until(&p1) * scale,
        generator: g0.seconds_until(&g1) * scale,
        sampled_secs: sampled,
    }
}

/// One run of one setup.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRun {
    /// The setup.
    pub setup: Setup,
    /// The fan-out's figures (over every subscriber).
    pub fanout: FanoutResult,
    /// Events delivered in the window to each node's subscribers, node 1
    /// first.
    pub delivered_by_node: Vec<u64>,
    /// CPU seconds in the window, by role.
    pub cpu: WindowCpu,
    /// The hubs' CPU seconds per 100,000 deliveries.
    pub hub_cpu_per_100k: f64,
    /// The hubs', NATS's and PostgreSQL's CPU seconds per 100,000
    /// deliveries (the load generator left out).
    pub system_cpu_per_100k: f64,
    /// Each node's `/health` `cluster` object after the run (its NATS
    /// counters: `sent`, `received`, `dropped`, …); empty for a hub alone.
    pub cluster_health: Vec<serde_json::Value>,
}

/// Runs the fan-out `cfg` on a running setup: the publishers on node 1,
/// subscriber `i` on node `i mod N`; the hubs', NATS's and PostgreSQL's
/// CPU time sampled at the measured window's start and end.
pub async fn run(running: &Running, setup: Setup, cfg: &FanoutConfig) -> ClusterRun {
    let urls = running.urls();
    let pids = running.pids();
    let SpreadResult {
        fanout,
        delivered_by_url,
        probe,
    } = fanout_spread(&urls[0], &urls, cfg, |win| {
        tokio::spawn(sample_window(win, pids))
    })
    .await;
    let cpu = probe.await.unwrap_or_default();
    let deliveries = fanout.delivered_per_sec * cpu_window_secs(cfg);
    let cluster_health = if running.nats.is_some() {
        running
            .health()
            .await
            .into_iter()
            .map(|h| h["cluster"].clone())
            .collect()
    } else {
        Vec::new()
    };
    ClusterRun {
        setup,
        hub_cpu_per_100k: per_100k(cpu.hubs, deliveries),
        system_cpu_per_100k: per_100k(cpu.hubs + cpu.nats + cpu.postgres, deliveries),
        fanout,
        delivered_by_node: delivered_by_url,
        cpu,
        cluster_health,
    }
}

/// The measured window's length in seconds (as [`Window::secs`]).
fn cpu_window_secs(cfg: &FanoutConfig) -> f64 {
    cfg.duration.as_secs_f64().max(1e-9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_has_joined_when_its_link_is_up_and_it_lists_every_node() {
        let h = |link: &str, n: usize| {
            serde_json::json!({"status": "ok", "cluster": {
                "node": "n1", "link": link,
                "nodes": (0..n).map(|i| serde_json::json!({"id": format!("n{i}")})).collect::<Vec<_>>(),
            }})
        };
        assert!(joined(&h("up", 3), 3));
        assert!(!joined(&h("up", 2), 3), "a node not seen yet");
        assert!(!joined(&h("down", 3), 3), "the NATS link is down");
        assert!(
            !joined(&serde_json::json!({"status": "ok"}), 1),
            "no cluster"
        );
    }

    #[test]
    fn every_run_declares_a_namespace_and_only_durable_runs_publish_in_it() {
        let plain = config_toml(TopicKind::Plain);
        assert_eq!(plain, "[[streams]]\npattern = \"unused.>\"\n");
        let durable = config_toml(TopicKind::Durable);
        assert!(durable.contains("pattern = \"bench.>\""), "{durable}");
        assert!(durable.contains("durability = \"fsynced\""), "{durable}");
    }

    #[test]
    fn setups_have_distinct_labels() {
        let labels = [
            Setup::Cluster { nodes: 3 }.label(),
            Setup::Cluster { nodes: 1 }.label(),
            Setup::Alone.label(),
        ];
        assert_eq!(
            labels,
            ["cluster of 3 nodes", "cluster of 1 node", "hub alone"]
        );
    }
}
