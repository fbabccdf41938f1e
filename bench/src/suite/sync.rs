//! The record-sync suite (`plexus-bench sync`, `bench/run.sh --sync`):
//! push throughput (16 clients, batches of 1 and of 100 records) and the
//! pull rate of a 100,000-record space, on SQLite and PostgreSQL, in one
//! run and one report. Each run opens a fresh engine on a fresh database
//! (a new SQLite file; a new PostgreSQL database, dropped after it); the
//! rounds alternate the databases and the report takes medians.
//!
//! Measured on the library in-process ([`crate::plexus::sync`]): the
//! engine's own rates, without the WebSocket hop.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::rounds::median_by;
use super::{BoxError, write_report};
use crate::plexus::durable::Database;
use crate::plexus::sync::{self, SyncPullConfig, SyncPullRun, SyncPushConfig, SyncPushRun};
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
}

impl SyncSuite {
    fn databases(&self) -> Vec<Database> {
        let mut dbs = vec![Database::Sqlite];
        dbs.extend(self.postgres.clone().map(Database::Postgres));
        dbs
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
        let mut pushes: BTreeMap<(usize, &'static str), Vec<SyncPushRun>> = BTreeMap::new();
        let mut pulls: BTreeMap<&'static str, Vec<SyncPullRun>> = BTreeMap::new();
        for round in 1..=rounds {
            for db in self.databases() {
                for cfg in &push_cfgs {
                    eprintln!(
                        "sync push, round {round}, {} × {} record(s), {} …",
                        cfg.clients,
                        cfg.batch,
                        db.label()
                    );
                    let bench = sync::open(&db).await?;
                    let r = sync::push(&bench.engine, cfg).await;
                    bench.close().await;
                    eprintln!(
                        "  {:.0} records/s ({:.0} pushes/s), p99 {:.0} µs, errors {}",
                        r.records_per_sec, r.pushes_per_sec, r.latency.p99_us, r.errors
                    );
                    pushes.entry((cfg.batch, db.label())).or_default().push(r);
                }
                eprintln!(
                    "sync pull, round {round}, {records} records, {} …",
                    db.label()
                );
                let bench = sync::open(&db).await?;
                let r = sync::pull(&bench.engine, &pull_cfg).await;
                bench.close().await;
                eprintln!(
                    "  {:.0} records/s ({} in {:.1} ms, {} chunks), fill {:.0}/s, errors {}",
                    r.records_per_sec, r.received, r.total_ms, r.chunks, r.fill_per_sec, r.errors
                );
                pulls.entry(db.label()).or_default().push(r);
            }
        }
        let push_med: BTreeMap<(usize, &str), SyncPushRun> = pushes
            .iter()
            .map(|(k, v)| (*k, median_by(v, |r| r.records_per_sec)))
            .collect();
        let pull_med: BTreeMap<&str, SyncPullRun> = pulls
            .iter()
            .map(|(k, v)| (*k, median_by(v, |r| r.records_per_sec)))
            .collect();
        let mut rows = Vec::new();
        push_rows(&mut rows, self.clients, &push_med);
        pull_rows(&mut rows, records, &pull_med);
        let json = |m: &BTreeMap<(usize, &str), Vec<SyncPushRun>>| {
            m.iter()
                .map(|((b, db), v)| (format!("batch_{b}_{db}"), serde_json::json!(v)))
                .collect::<serde_json::Map<_, _>>()
        };
        let raw = serde_json::json!({
            "layer": "library, in-process (plexus_server::sync::SyncEngine)",
            "rounds": rounds,
            "push": { "configs": push_cfgs, "runs": json(&pushes) },
            "pull": { "config": pull_cfg, "runs": pulls, "median": pull_med },
        });
        let report = Report {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: Machine::detect(),
            rows,
            binary: "plexus-server sync engine, in-process".to_owned(),
            baseline_binary: None,
            raw,
        };
        write_report(&report, &self.out, "-sync")?;
        Ok(report)
    }
}

/// Push rows: every batch on SQLite against the target (checked at
/// [`TARGET_BATCH`], no errors), PostgreSQL against SQLite.
fn push_rows(rows: &mut Vec<Row>, clients: usize, med: &BTreeMap<(usize, &str), SyncPushRun>) {
    for batch in BATCHES {
        let sqlite = med.get(&(batch, Database::Sqlite.label()));
        let name = |db: &str| format!("sync push, {clients} clients × {batch} record(s), {db}");
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
        let pg = med.get(&(batch, "PostgreSQL"));
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
fn pull_rows(rows: &mut Vec<Row>, records: u64, med: &BTreeMap<&str, SyncPullRun>) {
    let name = |db: &str| format!("sync pull of a {records}-record space, {db}: records/s");
    let sqlite = med.get(Database::Sqlite.label());
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
    if let (Some(p), Some(s)) = (med.get("PostgreSQL"), sqlite) {
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
        med.insert((1, "SQLite"), push(20_000.0, 0));
        med.insert((100, "SQLite"), push(60_000.0, 0));
        med.insert((100, "PostgreSQL"), push(30_000.0, 0));
        let mut rows = Vec::new();
        push_rows(&mut rows, 16, &med);
        let targets: Vec<_> = rows.iter().filter_map(|r| r.target.clone()).collect();
        assert_eq!(targets.len(), 1);
        assert!(targets[0].1);
        let pg = rows
            .iter()
            .find(|r| r.metric.contains("100 record(s), PostgreSQL: records/s"))
            .unwrap();
        assert!((pg.ratio - 0.5).abs() < 1e-9);
        med.insert((100, "SQLite"), push(60_000.0, 2));
        let mut rows = Vec::new();
        push_rows(&mut rows, 16, &med);
        assert!(rows.iter().any(|r| r.target.as_ref().is_some_and(|t| !t.1)));
    }

    #[test]
    fn the_pull_target_needs_every_record() {
        let mut med = BTreeMap::new();
        med.insert(
            "SQLite",
            SyncPullRun {
                records_per_sec: 400_000.0,
                received: 99_999,
                ..SyncPullRun::default()
            },
        );
        let mut rows = Vec::new();
        pull_rows(&mut rows, 100_000, &med);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].target.as_ref().map(|t| t.1), Some(false));
    }
}
