//! The record-sync suite (`plexus-bench sync`, `bench/run.sh --sync`):
//! push throughput (16 clients, batches of 1 and of 100 records) and the
//! pull rate of a 100,000-record space, on SQLite and PostgreSQL, in one
//! run and one report. Each run opens a fresh engine on a fresh database
//! (a new SQLite file; a new PostgreSQL database, dropped after it); the
//! rounds alternate the databases and the report takes medians.
//!
//! Two layers: the library in-process ([`crate::plexus::sync`], the
//! engine's own rates without the WebSocket hop) and over the wire
//! ([`crate::plexus::sync_wire`], a `plexus` hub with `[sync]` on, driven
//! with `sync.push` and `sync.pull` over WebSocket).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::rounds::median_by;
use super::{BoxError, write_report};
use crate::plexus::durable::Database;
use crate::plexus::sync::{self, SyncPullConfig, SyncPullRun, SyncPushConfig, SyncPushRun};
use crate::plexus::sync_wire;
use crate::procs::HubBinary;
use crate::report::{Machine, Report, Row};

/// Pushing clients.
pub const CLIENTS: usize = 16;

/// Records per push of the two push scenarios.
pub const BATCHES: [usize; 2] = [1, 100];

/// The batch the push target is checked at.
pub const TARGET_BATCH: usize = 100;

/// The push target on SQLite, records per second.
pub const PUSH_TARGET: f64 = 50_000.0;

/// The pull target on SQLite, records per second.
pub const PULL_TARGET: f64 = 300_000.0;

/// Records in the pulled space.
pub const RECORDS: u64 = 100_000;

/// Value bytes per record.
pub const PAYLOAD: usize = 128;

/// Rounds by default.
pub const ROUNDS: usize = 3;

/// What to run.
#[derive(Debug, Clone)]
pub struct SyncSuite {
    /// Shorter windows and a 20,000-record space (a smoke test).
    pub quick: bool,
    /// Where to write `<date>-sync.json` and `.md`.
    pub out: PathBuf,
    /// PostgreSQL server to create each run's database on; `None` skips
    /// the PostgreSQL runs.
    pub postgres: Option<String>,
    /// Rounds [default: [`ROUNDS`]].
    pub rounds: Option<usize>,
    /// Records in the pulled space [default: [`RECORDS`]; quick 20,000].
    pub records: Option<u64>,
    /// Pushing clients [default: [`CLIENTS`]].
    pub clients: usize,
    /// The hub for the wire layer (`None`: engine only).
    pub hub: Option<HubBinary>,
    /// Extra flags for every hub started.
    pub hub_args: Vec<String>,
    /// The layers to run (empty: every one there is a binary for).
    pub layers: Vec<Layer>,
}

/// Where the sync suite measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Layer {
    /// The sync engine in-process.
    Engine,
    /// A hub over WebSocket.
    Wire,
}

impl Layer {
    /// Its name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Layer::Engine => "engine",
            Layer::Wire => "wire",
        }
    }
}

impl SyncSuite {
    fn databases(&self) -> Vec<Database> {
        let mut dbs = vec![Database::Sqlite];
        dbs.extend(self.postgres.clone().map(Database::Postgres));
        dbs
    }

    fn layers(&self) -> Vec<Layer> {
        let all = if self.layers.is_empty() {
            vec![Layer::Engine, Layer::Wire]
        } else {
            self.layers.clone()
        };
        all.into_iter()
            .filter(|l| *l == Layer::Engine || self.hub.is_some())
            .collect()
    }

    async fn push_run(
        &self,
        layer: Layer,
        db: &Database,
        cfg: &SyncPushConfig,
    ) -> Result<SyncPushRun, BoxError> {
        Ok(match (layer, &self.hub) {
            (Layer::Wire, Some(bin)) => {
                let hub = sync_wire::start_sync_hub(bin, db, &self.hub_args).await?;
                sync_wire::push(&hub.hub.url(), cfg).await
            }
            _ => {
                let bench = sync::open(db).await?;
                let r = sync::push(&bench.engine, cfg).await;
                bench.close().await;
                r
            }
        })
    }

    async fn pull_run(
        &self,
        layer: Layer,
        db: &Database,
        cfg: &SyncPullConfig,
    ) -> Result<SyncPullRun, BoxError> {
        Ok(match (layer, &self.hub) {
            (Layer::Wire, Some(bin)) => {
                let hub = sync_wire::start_sync_hub(bin, db, &self.hub_args).await?;
                sync_wire::pull(&hub.hub.url(), cfg).await
            }
            _ => {
                let bench = sync::open(db).await?;
                let r = sync::pull(&bench.engine, cfg).await;
                bench.close().await;
                r
            }
        })
    }

    fn timing(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(3))
        }
    }

    /// Runs every scenario, prints the table and writes the report.
    pub async fn run(&self) -> Result<Report, BoxError> {
        if self.postgres.is_none() {
            eprintln!("sync: no --postgres-url: the PostgreSQL runs are skipped");
        }
        let (warmup, duration) = self.timing();
        let rounds = self.rounds.unwrap_or(ROUNDS).max(1);
        let records = self
            .records
            .unwrap_or(if self.quick { 20_000 } else { RECORDS });
        let push_cfgs: Vec<SyncPushConfig> = BATCHES
            .iter()
            .map(|&batch| SyncPushConfig {
                clients: self.clients,
                batch,
                payload: PAYLOAD,
                warmup,
                duration,
            })
            .collect();
        let pull_cfg = SyncPullConfig {
            records,
            payload: PAYLOAD,
            fill_clients: self.clients,
            fill_batch: TARGET_BATCH,
            pulls: 3,
        };
        let layers = self.layers();
        let mut pushes: BTreeMap<Key, Vec<SyncPushRun>> = BTreeMap::new();
        let mut pulls: BTreeMap<(Layer, &'static str), Vec<SyncPullRun>> = BTreeMap::new();
        for round in 1..=rounds {
            for &layer in &layers {
                for db in self.databases() {
                    for cfg in &push_cfgs {
                        eprintln!(
                            "sync push ({}), round {round}, {} × {} record(s), {} …",
                            layer.label(),
                            cfg.clients,
                            cfg.batch,
                            db.label()
                        );
                        let r = self.push_run(layer, &db, cfg).await?;
                        eprintln!(
                            "  {:.0} records/s ({:.0} pushes/s), p99 {:.0} µs, errors {}",
                            r.records_per_sec, r.pushes_per_sec, r.latency.p99_us, r.errors
                        );
                        pushes
                            .entry((layer, cfg.batch, db.label()))
                            .or_default()
                            .push(r);
                    }
                    eprintln!(
                        "sync pull ({}), round {round}, {records} records, {} …",
                        layer.label(),
                        db.label()
                    );
                    let r = self.pull_run(layer, &db, &pull_cfg).await?;
                    eprintln!(
                        "  {:.0} records/s ({} in {:.1} ms, {} chunks), fill {:.0}/s, errors {}",
                        r.records_per_sec,
                        r.received,
                        r.total_ms,
                        r.chunks,
                        r.fill_per_sec,
                        r.errors
                    );
                    pulls.entry((layer, db.label())).or_default().push(r);
                }
            }
        }
        let push_med: BTreeMap<Key, SyncPushRun> = pushes
            .iter()
            .map(|(k, v)| (*k, median_by(v, |r| r.records_per_sec)))
            .collect();
        let pull_med: BTreeMap<(Layer, &str), SyncPullRun> = pulls
            .iter()
            .map(|(k, v)| (*k, median_by(v, |r| r.records_per_sec)))
            .collect();
        let mut rows = Vec::new();
        for &layer in &layers {
            push_rows(&mut rows, layer, self.clients, &push_med);
            pull_rows(&mut rows, layer, records, &pull_med);
        }
        let push_json = pushes
            .iter()
            .map(|((l, b, db), v)| {
                (
                    format!("{}_batch_{b}_{db}", l.label()),
                    serde_json::json!({ "runs": v, "median": push_med.get(&(*l, *b, *db)) }),
                )
            })
            .collect::<serde_json::Map<_, _>>();
        let pull_json = pulls
            .iter()
            .map(|((l, db), v)| {
                (
                    format!("{}_{db}", l.label()),
                    serde_json::json!({ "runs": v, "median": pull_med.get(&(*l, *db)) }),
                )
            })
            .collect::<serde_json::Map<_, _>>();
        let raw = serde_json::json!({
            "layers": layers.iter().map(|l| l.label()).collect::<Vec<_>>(),
            "rounds": rounds,
            "push": { "configs": push_cfgs, "results": push_json },
            "pull": { "config": pull_cfg, "results": pull_json },
        });
        let report = Report {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: Machine::detect(),
            rows,
            binary: self.hub.as_ref().map_or_else(
                || "plexus-server sync engine, in-process".to_owned(),
                |h| {
                    format!(
                        "{} (wire), plexus-server in-process (engine)",
                        h.path.display()
                    )
                },
            ),
            baseline_binary: None,
            raw,
        };
        write_report(&report, &self.out, "-sync")?;
        Ok(report)
    }
}

/// A push figure's key: layer, batch, database.
type Key = (Layer, usize, &'static str);

/// Push rows of `layer`: every batch on SQLite against the target (checked
/// at [`TARGET_BATCH`], no errors), PostgreSQL against SQLite.
fn push_rows(rows: &mut Vec<Row>, layer: Layer, clients: usize, med: &BTreeMap<Key, SyncPushRun>) {
    for batch in BATCHES {
        let sqlite = med.get(&(layer, batch, Database::Sqlite.label()));
        let name = |db: &str| {
            format!(
                "sync push ({}), {clients} clients × {batch} record(s), {db}",
                layer.label()
            )
        };
        if let Some(s) = sqlite {
            let mut row = Row::new(
                &format!("{}: records/s", name("SQLite")),
                s.records_per_sec,
                "target",
                PUSH_TARGET,
                true,
            );
            if batch == TARGET_BATCH {
                row = row.target(
                    "≥ 50,000/s, no errors",
                    s.records_per_sec >= PUSH_TARGET && s.errors == 0,
                );
            }
            rows.push(row);
        }
        let pg = med.get(&(layer, batch, "PostgreSQL"));
        if let (Some(p), Some(s)) = (pg, sqlite) {
            rows.push(Row::new(
                &format!("{}: records/s", name("PostgreSQL")),
                p.records_per_sec,
                "SQLite",
                s.records_per_sec,
                true,
            ));
        }
        for (db, r) in [("SQLite", sqlite), ("PostgreSQL", pg)] {
            if let Some(r) = r {
                rows.push(Row::new(
                    &format!("{}: push p99 µs", name(db)),
                    r.latency.p99_us,
                    "p50",
                    r.latency.p50_us,
                    false,
                ));
            }
        }
    }
}

/// Pull rows: SQLite against the target (all records, no errors),
/// PostgreSQL against SQLite.
fn pull_rows(
    rows: &mut Vec<Row>,
    layer: Layer,
    records: u64,
    med: &BTreeMap<(Layer, &str), SyncPullRun>,
) {
    let name = |db: &str| {
        format!(
            "sync pull ({}) of a {records}-record space, {db}: records/s",
            layer.label()
        )
    };
    let sqlite = med.get(&(layer, Database::Sqlite.label()));
    if let Some(s) = sqlite {
        rows.push(
            Row::new(
                &name("SQLite"),
                s.records_per_sec,
                "target",
                PULL_TARGET,
                true,
            )
            .target(
                "≥ 300,000/s, every record",
                s.records_per_sec >= PULL_TARGET && s.errors == 0 && s.received == records,
            ),
        );
    }
    if let (Some(p), Some(s)) = (med.get(&(layer, "PostgreSQL")), sqlite) {
        rows.push(Row::new(
            &name("PostgreSQL"),
            p.records_per_sec,
            "SQLite",
            s.records_per_sec,
            true,
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(rps: f64, errors: u64) -> SyncPushRun {
        SyncPushRun {
            records_per_sec: rps,
            errors,
            ..SyncPushRun::default()
        }
    }

    #[test]
    fn the_push_target_is_checked_at_batch_100_on_sqlite_only() {
        let mut med = BTreeMap::new();
        med.insert((Layer::Engine, 1, "SQLite"), push(20_000.0, 0));
        med.insert((Layer::Engine, 100, "SQLite"), push(60_000.0, 0));
        med.insert((Layer::Engine, 100, "PostgreSQL"), push(30_000.0, 0));
        let mut rows = Vec::new();
        push_rows(&mut rows, Layer::Engine, 16, &med);
        let targets: Vec<_> = rows.iter().filter_map(|r| r.target.clone()).collect();
        assert_eq!(targets.len(), 1);
        assert!(targets[0].1);
        let pg = rows
            .iter()
            .find(|r| r.metric.contains("100 record(s), PostgreSQL: records/s"))
            .unwrap();
        assert!((pg.ratio - 0.5).abs() < 1e-9);
        med.insert((Layer::Engine, 100, "SQLite"), push(60_000.0, 2));
        let mut rows = Vec::new();
        push_rows(&mut rows, Layer::Engine, 16, &med);
        assert!(rows.iter().all(|r| r.metric.contains("(engine)")));
        assert!(rows.iter().any(|r| r.target.as_ref().is_some_and(|t| !t.1)));
    }

    #[test]
    fn the_pull_target_needs_every_record() {
        let mut med = BTreeMap::new();
        med.insert(
            (Layer::Wire, "SQLite"),
            SyncPullRun {
                records_per_sec: 400_000.0,
                received: 99_999,
                ..SyncPullRun::default()
            },
        );
        let mut rows = Vec::new();
        pull_rows(&mut rows, Layer::Wire, 100_000, &med);
        assert!(rows[0].metric.contains("(wire)"));
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].target.as_ref().map(|t| t.1), Some(false));
    }
}
