//! The durable-streams suite (`plexus-bench durable`, `bench/run.sh
//! --durable`): durable publish throughput, catch-up and latency on a
//! durable topic, Plexus on SQLite and PostgreSQL beside NATS JetStream on
//! file storage, in one run and one report.
//!
//! Kept apart from the standard suite so that its run time does not grow:
//! a full durable run takes a few minutes on a 2-core machine.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::rounds::median_by;
use super::{BoxError, write_report};
use crate::nats::jetstream::{self, JsSync, start_jetstream};
use crate::plexus::durable::{self, Database, StreamDurability, start_durable};
use crate::procs::HubBinary;
use crate::report::{Machine, Report, Row};
use crate::scenario::{
    CatchupConfig, CatchupResult, DurablePublishConfig, DurablePublishResult, FanoutConfig,
    FanoutResult, Rate,
};

/// Publisher counts of the throughput comparison.
pub const PUBLISHERS: [usize; 3] = [1, 16, 64];

/// The publisher count the target is set at.
pub const TARGET_PUBLISHERS: usize = 64;

/// The throughput target at equal durability: Plexus / JetStream.
pub const TARGET_RATIO: f64 = 2.0;

/// The catch-up target on SQLite, events per second.
pub const CATCHUP_TARGET: f64 = 500_000.0;

/// Events a catch-up subscriber is behind.
pub const BEHIND: u64 = 100_000;

/// Publishes in flight while filling the catch-up topic.
pub const FILL_WINDOW: usize = 1024;

/// The latency scenario's rate, publishes per second: one that JetStream
/// with `sync_interval: always` sustains with a single publisher (it
/// flushes each message on its own: about 500/s on the development
/// machine), so its p99 is latency, not queueing.
pub const LATENCY_RATE: u64 = 200;

/// Payload bytes of every durable scenario.
pub const PAYLOAD: usize = 128;

/// What to run.
#[derive(Debug, Clone)]
pub struct DurableSuite {
    /// Shorter windows and a smaller catch-up (a smoke test).
    pub quick: bool,
    /// Where to write `<date>-durable.json` and `.md`.
    pub out: PathBuf,
    /// The hub under test.
    pub current: HubBinary,
    /// Extra flags for every hub started.
    pub hub_args: Vec<String>,
    /// PostgreSQL server to create each run's database on; `None` skips
    /// the PostgreSQL runs.
    pub postgres: Option<String>,
    /// The `nats-server` for JetStream (2.10+ for `sync_interval`).
    pub jetstream: PathBuf,
    /// Rounds of every comparison [default: 1].
    pub rounds: Option<usize>,
    /// Events the catch-up subscriber is behind [default: 100,000; quick 20,000].
    pub behind: Option<u64>,
    /// Publisher counts [default: 1, 16, 64].
    pub publishers: Vec<usize>,
    /// The parts to run (empty: all).
    pub only: Vec<Part>,
}

/// A part of the durable suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// Durable publish throughput.
    Publish,
    /// Catch-up of a subscriber far behind.
    Catchup,
    /// Publish-to-delivery latency on a durable topic.
    Latency,
}

/// One system under test in the durable comparisons.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Plexus(Database, StreamDurability),
    JetStream(JsSync),
}

impl Target {
    fn label(&self) -> String {
        match self {
            Target::Plexus(db, d) => format!("Plexus {} {}", db.label(), d.as_str()),
            Target::JetStream(s) => s.label().to_owned(),
        }
    }
}

/// A running system under test (dropped at the end of its run).
enum Running {
    Plexus(durable::DurableHub),
    JetStream(crate::nats::NatsServer),
}

impl DurableSuite {
    fn rounds(&self) -> usize {
        self.rounds.unwrap_or(1).max(1)
    }

    fn timing(&self) -> (Duration, Duration) {
        if self.quick {
            (Duration::from_millis(300), Duration::from_secs(1))
        } else {
            (Duration::from_secs(1), Duration::from_secs(3))
        }
    }

    fn databases(&self) -> Vec<Database> {
        let mut dbs = vec![Database::Sqlite];
        dbs.extend(self.postgres.clone().map(Database::Postgres));
        dbs
    }

    async fn start(&self, t: &Target) -> Result<Running, BoxError> {
        Ok(match t {
            Target::Plexus(db, d) => {
                Running::Plexus(start_durable(&self.current, db, *d, &self.hub_args).await?)
            }
            Target::JetStream(s) => Running::JetStream(start_jetstream(&self.jetstream, *s).await?),
        })
    }

    /// Runs every durable scenario, prints the table and writes the report.
    pub async fn run(&self) -> Result<Report, BoxError> {
        if self.postgres.is_none() {
            eprintln!("durable: no --postgres-url: the PostgreSQL runs are skipped");
        }
        let mut rows = Vec::new();
        let mut raw = serde_json::Map::new();
        raw.insert(
            "jetstream_server".into(),
            serde_json::json!({
                "path": self.jetstream.display().to_string(),
                "version": server_version(&self.jetstream),
            }),
        );
        let runs = |p: Part| self.only.is_empty() || self.only.contains(&p);
        if runs(Part::Publish) {
            self.publish(&mut rows, &mut raw).await?;
        }
        if runs(Part::Catchup) {
            self.catchup(&mut rows, &mut raw).await?;
        }
        if runs(Part::Latency) {
            self.latency(&mut rows, &mut raw).await?;
        }
        let report = Report {
            date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            machine: Machine::detect(),
            rows,
            binary: self.current.path.display().to_string(),
            baseline_binary: None,
            raw: raw.into(),
        };
        write_report(&report, &self.out, "-durable")?;
        Ok(report)
    }

    /// Durable publish throughput at each publisher count, every target in
    /// turn, round after round.
    async fn publish(
        &self,
        rows: &mut Vec<Row>,
        raw: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let mut targets = Vec::new();
        for d in [StreamDurability::Fsynced, StreamDurability::Committed] {
            for db in self.databases() {
                targets.push(Target::Plexus(db, d));
            }
        }
        targets.extend([
            Target::JetStream(JsSync::Always),
            Target::JetStream(JsSync::Default),
        ]);
        let mut all = serde_json::Map::new();
        for &publishers in &self.publishers {
            let cfg = DurablePublishConfig {
                publishers,
                window: 1,
                payload: PAYLOAD,
                warmup,
                duration,
            };
            let mut runs: BTreeMap<String, Vec<DurablePublishResult>> = BTreeMap::new();
            for _ in 0..self.rounds() {
                for t in &targets {
                    eprintln!(
                        "durable publish, {publishers} publisher(s): {} …",
                        t.label()
                    );
                    let r = match self.start(t).await? {
                        Running::Plexus(hub) => {
                            durable::durable_publish(&hub.hub.url(), &cfg).await
                        }
                        Running::JetStream(s) => jetstream::durable_publish(&s, &cfg).await,
                    };
                    eprintln!(
                        "  {:.0} acked/s, p99 {:.0} µs, errors {}",
                        r.acked_per_sec, r.ack_latency.p99_us, r.errors
                    );
                    runs.entry(t.label()).or_default().push(r);
                }
            }
            let med: BTreeMap<String, DurablePublishResult> = runs
                .iter()
                .map(|(k, v)| (k.clone(), median_by(v, |r| r.acked_per_sec)))
                .collect();
            publish_rows(rows, publishers, &self.databases(), &med);
            all.insert(
                format!("publishers_{publishers}"),
                serde_json::json!({ "config": cfg, "median": med, "runs": runs }),
            );
        }
        raw.insert("durable_publish".into(), all.into());
        Ok(())
    }

    /// Catch-up of a subscriber `behind` events behind, on each database
    /// (fsynced) and on JetStream (default sync: reading does not depend on
    /// it, and filling 100,000 messages one flush each would take minutes).
    async fn catchup(
        &self,
        rows: &mut Vec<Row>,
        raw: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BoxError> {
        let behind = self
            .behind
            .unwrap_or(if self.quick { 20_000 } else { BEHIND });
        let cfg = CatchupConfig {
            behind,
            payload: PAYLOAD,
            fill_window: FILL_WINDOW,
        };
        let mut targets: Vec<Target> = self
            .databases()
            .into_iter()
            .map(|db| Target::Plexus(db, StreamDurability::Fsynced))
            .collect();
        targets.push(Target::JetStream(JsSync::Default));
        let mut runs: BTreeMap<String, Vec<CatchupResult>> = BTreeMap::new();
        for _ in 0..self.rounds() {
            for t in &targets {
                eprintln!("catch-up, {behind} behind: {} …", t.label());
                let r = match self.start(t).await? {
                    Running::Plexus(hub) => durable::catchup(&hub.hub.url(), &cfg).await,
                    Running::JetStream(s) => jetstream::catchup(&s, &cfg).await,
                };
                eprintln!(
                    "  {:.0} events/s ({} in {:.1} ms, first after {:.1} ms), fill {:.0}/s, {:?}, errors {}",
                    r.events_per_sec,
                    r.received,
                    r.total_ms,
                    r.first_ms,
                    r.fill_per_sec,
                    r.outcome,
                    r.errors
                );
                runs.entry(t.label()).or_default().push(r);
            }
        }
        let med: BTreeMap<String, CatchupResult> = runs
            .iter()
            .map(|(k, v)| (k.clone(), median_by(v, |r| r.events_per_sec)))
            .collect();
        catchup_rows(rows, behind, &self.databases(), &med);
        raw.insert(
            "catchup".into(),
            serde_json::json!({ "config": cfg, "median": med, "runs": runs }),
        );
        Ok(())
    }

    /// Publish-to-delivery latency at a fixed rate on a durable topic (each
    /// database, fsynced), beside JetStream (sync always, push consumer)
    /// and plain pub/sub on a hub without stream namespaces.
    async fn latency(
        &self,
        rows: &mut Vec<Row>,
        raw: &mut serde_json::Map<String, serde_json::Value>,
    ) -> Result<(), BoxError> {
        let (warmup, duration) = self.timing();
        let cfg = FanoutConfig {
            publishers: 1,
            subscribers: 1,
            topics: 1,
            payload: PAYLOAD,
            rate: Rate::Fixed {
                per_sec: LATENCY_RATE,
            },
            warmup,
            duration,
            stalled: 0,
        };
        const PLAIN: &str = "Plexus plain pub/sub";
        let mut targets: Vec<Option<Target>> = self
            .databases()
            .into_iter()
            .map(|db| Some(Target::Plexus(db, StreamDurability::Fsynced)))
            .collect();
        targets.push(Some(Target::JetStream(JsSync::Always)));
        targets.push(None);
        let mut runs: BTreeMap<String, Vec<FanoutResult>> = BTreeMap::new();
        for _ in 0..self.rounds() {
            for t in &targets {
                let label = t.as_ref().map_or(PLAIN.to_owned(), Target::label);
                eprintln!("latency at {LATENCY_RATE}/s: {label} …");
                let r = match t {
                    Some(t) => match self.start(t).await? {
                        Running::Plexus(hub) => crate::plexus::fanout(&hub.hub, &cfg).await,
                        Running::JetStream(s) => jetstream::push_latency(&s, &cfg).await,
                    },
                    None => {
                        let hub = self.current.start(&self.hub_args).await?;
                        crate::plexus::fanout(&hub, &cfg).await
                    }
                };
                eprintln!(
                    "  delivered {:.0}/s, p50 {:.0} µs, p99 {:.0} µs, errors {}",
                    r.delivered_per_sec, r.latency.p50_us, r.latency.p99_us, r.errors
                );
                runs.entry(label).or_default().push(r);
            }
        }
        let med: BTreeMap<String, FanoutResult> = runs
            .iter()
            .map(|(k, v)| (k.clone(), median_by(v, |r| r.latency.p99_us)))
            .collect();
        latency_rows(rows, &self.databases(), &med, PLAIN);
        raw.insert(
            "latency".into(),
            serde_json::json!({ "config": cfg, "median": med, "runs": runs }),
        );
        Ok(())
    }
}

/// `BIN --version`, trimmed (empty if it does not run).
fn server_version(bin: &std::path::Path) -> String {
    std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn label(db: &Database, d: StreamDurability) -> String {
    Target::Plexus(db.clone(), d).label()
}

/// Rows of one publisher count: each database fsynced against JetStream
/// with `sync_interval: always` (acks and their p99) and committed against
/// JetStream's default.
fn publish_rows(
    rows: &mut Vec<Row>,
    publishers: usize,
    dbs: &[Database],
    med: &BTreeMap<String, DurablePublishResult>,
) {
    let pairs = [
        (StreamDurability::Fsynced, JsSync::Always),
        (StreamDurability::Committed, JsSync::Default),
    ];
    for (d, sync) in pairs {
        let Some(js) = med.get(sync.label()) else {
            continue;
        };
        for db in dbs {
            let Some(p) = med.get(&label(db, d)) else {
                continue;
            };
            let name = format!(
                "durable publish, {publishers} publisher(s), {} {}",
                db.label(),
                d.as_str()
            );
            let mut row = Row::new(
                &format!("{name}: acked/s"),
                p.acked_per_sec,
                sync.label(),
                js.acked_per_sec,
                true,
            );
            if d == StreamDurability::Fsynced && publishers == TARGET_PUBLISHERS {
                row = row.target(
                    "≥ 2× JetStream, no errors",
                    p.acked_per_sec >= TARGET_RATIO * js.acked_per_sec && p.errors == 0,
                );
            }
            rows.push(row);
            if d == StreamDurability::Fsynced {
                rows.push(Row::new(
                    &format!("{name}: ack p99 µs"),
                    p.ack_latency.p99_us,
                    sync.label(),
                    js.ack_latency.p99_us,
                    false,
                ));
            }
        }
    }
}

/// Catch-up rows: SQLite against the target, every database against
/// JetStream, and the fill rate.
fn catchup_rows(
    rows: &mut Vec<Row>,
    behind: u64,
    dbs: &[Database],
    med: &BTreeMap<String, CatchupResult>,
) {
    let js = med.get(JsSync::Default.label());
    for db in dbs {
        let Some(p) = med.get(&label(db, StreamDurability::Fsynced)) else {
            continue;
        };
        let name = format!("catch-up, {behind} behind, {}", db.label());
        if *db == Database::Sqlite {
            rows.push(
                Row::new(
                    &format!("{name}: events/s"),
                    p.events_per_sec,
                    "target",
                    CATCHUP_TARGET,
                    true,
                )
                .target(
                    "≥ 500,000/s, all recovered",
                    p.events_per_sec >= CATCHUP_TARGET && p.errors == 0,
                ),
            );
        }
        if let Some(js) = js {
            rows.push(Row::new(
                &format!("{name}: events/s vs JetStream push consumer"),
                p.events_per_sec,
                JsSync::Default.label(),
                js.events_per_sec,
                true,
            ));
            rows.push(Row::new(
                &format!(
                    "catch-up fill, 1 publisher × {FILL_WINDOW} in flight, {} fsynced: acked/s",
                    db.label()
                ),
                p.fill_per_sec,
                JsSync::Default.label(),
                js.fill_per_sec,
                true,
            ));
        }
    }
}

/// Latency rows: each database's durable p99 against JetStream's and
/// against plain pub/sub.
fn latency_rows(
    rows: &mut Vec<Row>,
    dbs: &[Database],
    med: &BTreeMap<String, FanoutResult>,
    plain: &str,
) {
    for db in dbs {
        let Some(p) = med.get(&label(db, StreamDurability::Fsynced)) else {
            continue;
        };
        let name = format!(
            "durable topic at {LATENCY_RATE}/s, {} fsynced: publish→delivery p99 µs",
            db.label()
        );
        if let Some(js) = med.get(JsSync::Always.label()) {
            rows.push(Row::new(
                &name,
                p.latency.p99_us,
                "JetStream sync always, push consumer",
                js.latency.p99_us,
                false,
            ));
        }
        if let Some(pl) = med.get(plain) {
            rows.push(Row::new(
                &name,
                p.latency.p99_us,
                plain,
                pl.latency.p99_us,
                false,
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_throughput_target_is_checked_at_64_publishers_fsynced_only() {
        let r = |acked: f64| DurablePublishResult {
            acked_per_sec: acked,
            ..DurablePublishResult::default()
        };
        let dbs = [Database::Sqlite];
        let mut med = BTreeMap::new();
        med.insert("Plexus SQLite fsynced".to_owned(), r(3000.0));
        med.insert("Plexus SQLite committed".to_owned(), r(9000.0));
        med.insert(JsSync::Always.label().to_owned(), r(1000.0));
        med.insert(JsSync::Default.label().to_owned(), r(8000.0));
        let mut rows = Vec::new();
        publish_rows(&mut rows, 64, &dbs, &med);
        assert_eq!(rows.len(), 3);
        assert!((rows[0].ratio - 3.0).abs() < 1e-9);
        assert_eq!(rows[0].target.as_ref().map(|t| t.1), Some(true));
        assert!(rows[1].metric.ends_with("ack p99 µs"));
        assert!(rows[2].metric.contains("committed"));
        assert!(rows[2].target.is_none());
        let mut rows = Vec::new();
        publish_rows(&mut rows, 16, &dbs, &med);
        assert!(rows.iter().all(|r| r.target.is_none()));
        med.insert("Plexus SQLite fsynced".to_owned(), r(1500.0));
        let mut rows = Vec::new();
        publish_rows(&mut rows, 64, &dbs, &med);
        assert_eq!(rows[0].target.as_ref().map(|t| t.1), Some(false));
    }

    #[test]
    fn catch_up_meets_its_target_only_without_errors() {
        let mut med = BTreeMap::new();
        med.insert(
            "Plexus SQLite fsynced".to_owned(),
            CatchupResult {
                events_per_sec: 600_000.0,
                errors: 1,
                ..CatchupResult::default()
            },
        );
        let mut rows = Vec::new();
        catchup_rows(&mut rows, 100_000, &[Database::Sqlite], &med);
        assert_eq!(rows.len(), 1, "no JetStream figure, no comparison row");
        assert_eq!(rows[0].target.as_ref().map(|t| t.1), Some(false));
    }
}
