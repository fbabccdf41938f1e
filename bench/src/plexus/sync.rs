//! Record sync (issue 11) measured on the library, in-process: the
//! [`SyncEngine`] of `plexus-server` opened on a SQLite file in a temporary
//! directory or on a PostgreSQL database created for the run (and dropped
//! after it), driven by concurrent clients calling `push` and one reader
//! calling `pull`, as the hub's session layer does. No sockets: these are
//! the engine's own rates, an upper bound of what the wire can carry.
//!
//! Writes are as durable as the engine makes them: SQLite `synchronous =
//! FULL` (WAL), PostgreSQL `synchronous_commit = on`; a push is counted
//! when `push` returned its result (the transaction committed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plexus_protocol::methods::sync::{SyncOp, SyncPullParams, SyncPushParams, hlc};
use plexus_server::storage::StoreOptions;
use plexus_server::sync::{PullStep, SyncConfig, SyncEngine, SystemClock, store};
use serde::Serialize;

use super::durable::{Database, PgDatabase};
use crate::stats::{Latency, Summary};

/// Any error of a sync run.
pub type BoxError = Box<dyn std::error::Error>;

/// The space every scenario writes to.
pub const SPACE: &str = "bench.sync";

/// The collection every scenario writes to.
pub const COLLECTION: &str = "items";

/// A sync engine under test and what it lives on. Close it with
/// [`SyncBench::close`] so that its connections end before the database
/// is dropped.
#[derive(Debug)]
pub struct SyncBench {
    /// The engine.
    pub engine: SyncEngine,
    _dir: Option<tempfile::TempDir>,
    _db: Option<PgDatabase>,
}

/// The engine's settings for the benchmarks: the defaults with quotas
/// large enough not to bind (a timed push run writes more than the default
/// 100,000 records per space).
pub fn bench_config() -> SyncConfig {
    let mut c = SyncConfig::default();
    c.max_records = 1 << 40;
    c.max_bytes = 1 << 50;
    c
}

/// Opens a fresh engine on `db`: a new SQLite file, or a new PostgreSQL
/// database on the server of the URL.
pub async fn open(db: &Database) -> Result<SyncBench, BoxError> {
    let (options, dir, pg) = match db {
        Database::Sqlite => {
            let dir = tempfile::tempdir()?;
            (StoreOptions::in_data_dir(dir.path()), Some(dir), None)
        }
        Database::Postgres(base) => {
            let pg = PgDatabase::create(base).await?;
            (StoreOptions::new(pg.url.clone()), None, Some(pg))
        }
    };
    let store = store::open(&options).await?;
    let engine = SyncEngine::open(store, bench_config(), Arc::new(SystemClock)).await?;
    Ok(SyncBench {
        engine,
        _dir: dir,
        _db: pg,
    })
}

impl SyncBench {
    /// Stops the writer and closes the pool (then drops the database).
    pub async fn close(self) {
        let SyncBench { engine, _dir, _db } = self;
        engine.close().await;
    }
}

/// The push scenario: `clients` clients, each pushing `batch` new records
/// per push and waiting for its result before the next (one push in flight
/// per client, as a replica sends its queue).
#[derive(Debug, Clone, Serialize)]
pub struct SyncPushConfig {
    /// Concurrent clients.
    pub clients: usize,
    /// Records (put operations) per push.
    pub batch: usize,
    /// Value bytes per record.
    pub payload: usize,
    /// Not measured, before the window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
}

/// What a push run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncPushRun {
    /// Records acknowledged per second in the window.
    pub records_per_sec: f64,
    /// Pushes acknowledged per second in the window.
    pub pushes_per_sec: f64,
    /// `push` call to result.
    pub latency: Summary,
    /// Pushes that failed or were reported duplicates (should be 0).
    pub errors: u64,
}

/// The current time as an HLC (the clients' clocks are the hub's here).
fn now_hlc() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    hlc(ms, 0)
}

/// One push of `batch` new records `c<client>-<n>`.
fn push_params(client: usize, seq: u64, batch: usize, payload: &[u8]) -> SyncPushParams {
    let ops = (0..batch)
        .map(|i| {
            let n = (seq - 1) * batch as u64 + i as u64;
            SyncOp::put(COLLECTION, format!("c{client}-{n}"), payload.to_vec())
        })
        .collect();
    SyncPushParams::new(SPACE, format!("bench-{client}"), seq, now_hlc(), ops)
}

/// What one pushing client counted inside the measured window.
#[derive(Default)]
pub(super) struct ClientRun {
    pub(super) records: u64,
    pub(super) pushes: u64,
    pub(super) latency: Latency,
    pub(super) errors: u64,
}

/// Adds up the clients' runs (a client task that panicked counts as an
/// error, as do `errors` found before the clients started) into the figures
/// of a push scenario measured for `duration`.
pub(super) async fn sum_push_runs(
    tasks: Vec<tokio::task::JoinHandle<ClientRun>>,
    errors: u64,
    duration: std::time::Duration,
) -> SyncPushRun {
    let mut total = ClientRun {
        errors,
        ..ClientRun::default()
    };
    for t in tasks {
        match t.await {
            Ok(r) => {
                total.records += r.records;
                total.pushes += r.pushes;
                total.latency.merge(&r.latency);
                total.errors += r.errors;
            }
            Err(_) => total.errors += 1,
        }
    }
    let secs = duration.as_secs_f64();
    SyncPushRun {
        records_per_sec: total.records as f64 / secs,
        pushes_per_sec: total.pushes as f64 / secs,
        latency: total.latency.summary(),
        errors: total.errors,
    }
}

/// Runs the push scenario against `engine`.
pub async fn push(engine: &SyncEngine, cfg: &SyncPushConfig) -> SyncPushRun {
    let start = Instant::now();
    let from = start + cfg.warmup;
    let until = from + cfg.duration;
    let payload: Arc<[u8]> = vec![b'x'; cfg.payload].into();
    let mut tasks = Vec::with_capacity(cfg.clients);
    for client in 0..cfg.clients {
        let engine = engine.clone();
        let payload = payload.clone();
        let batch = cfg.batch.max(1);
        tasks.push(tokio::spawn(async move {
            let mut run = ClientRun::default();
            let mut seq = 0;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                seq += 1;
                let params = push_params(client, seq, batch, &payload);
                let r = engine.push(params).await;
                let t1 = Instant::now();
                let ok = matches!(&r, Ok(res) if !res.duplicate);
                if ok && t0 >= from && t1 <= until {
                    run.records += batch as u64;
                    run.pushes += 1;
                    run.latency.record((t1 - t0).as_nanos() as u64);
                }
                if !ok {
                    run.errors += 1;
                }
            }
            run
        }));
    }
    sum_push_runs(tasks, 0, cfg.duration).await
}

/// The pull scenario: a space filled with `records` records (pushed by
/// `fill_clients` clients in batches of `fill_batch`), then pulled from the
/// start to the final chunk by one reader.
#[derive(Debug, Clone, Serialize)]
pub struct SyncPullConfig {
    /// Records in the space.
    pub records: u64,
    /// Value bytes per record.
    pub payload: usize,
    /// Clients filling the space.
    pub fill_clients: usize,
    /// Records per fill push.
    pub fill_batch: usize,
    /// Full pulls of the filled space (the median is reported).
    pub pulls: usize,
}

/// What a pull run measured.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncPullRun {
    /// Records pulled per second (median pull).
    pub records_per_sec: f64,
    /// Records the median pull received.
    pub received: u64,
    /// Chunks (pages) of the median pull.
    pub chunks: u64,
    /// The median pull, from `pull` to the final chunk, ms.
    pub total_ms: f64,
    /// Records pushed per second while filling.
    pub fill_per_sec: f64,
    /// Failed pushes or pulls, pulls that missed records (should be 0).
    pub errors: u64,
}

/// Fills the space with `cfg.records` records.
async fn fill(engine: &SyncEngine, cfg: &SyncPullConfig) -> (f64, u64) {
    let clients = cfg.fill_clients.max(1);
    let batch = cfg.fill_batch.max(1) as u64;
    let pushes = cfg.records.div_ceil(batch);
    let start = Instant::now();
    let payload: Arc<[u8]> = vec![b'x'; cfg.payload].into();
    let failed = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for client in 0..clients {
        let engine = engine.clone();
        let payload = payload.clone();
        let failed = failed.clone();
        let records = cfg.records;
        tasks.push(tokio::spawn(async move {
            let mut errors = 0;
            let mut seq = 0;
            // Pushes client, client + clients, …: every record once.
            let mut p = client as u64;
            while p < pushes && !failed.load(Ordering::Relaxed) {
                seq += 1;
                let n = (batch).min(records - p * batch);
                let ops = (0..n)
                    .map(|i| {
                        SyncOp::put(COLLECTION, format!("r{}", p * batch + i), payload.to_vec())
                    })
                    .collect();
                let params =
                    SyncPushParams::new(SPACE, format!("fill-{client}"), seq, now_hlc(), ops);
                if engine.push(params).await.is_err() {
                    errors += 1;
                    failed.store(true, Ordering::Relaxed);
                }
                p += clients as u64;
            }
            errors
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    (cfg.records as f64 / start.elapsed().as_secs_f64(), errors)
}

/// One full pull from the start: (records, chunks, elapsed).
async fn pull_all(engine: &SyncEngine) -> Result<(u64, u64, Duration), BoxError> {
    let start = Instant::now();
    let mut p = engine.pull(&SyncPullParams::new(SPACE)).await?;
    let (mut records, mut chunks) = (0, 0);
    while let Some(step) = p.next().await? {
        if let PullStep::Chunk(c) = step {
            records += c.records.len() as u64;
            chunks += 1;
        }
    }
    Ok((records, chunks, start.elapsed()))
}

/// Runs the pull scenario against a fresh `engine`.
pub async fn pull(engine: &SyncEngine, cfg: &SyncPullConfig) -> SyncPullRun {
    let (fill_per_sec, mut errors) = fill(engine, cfg).await;
    let mut pulls = Vec::new();
    for _ in 0..cfg.pulls.max(1) {
        match pull_all(engine).await {
            Ok((records, chunks, took)) => {
                if records != cfg.records {
                    errors += 1;
                }
                pulls.push(SyncPullRun {
                    records_per_sec: records as f64 / took.as_secs_f64(),
                    received: records,
                    chunks,
                    total_ms: took.as_secs_f64() * 1e3,
                    ..SyncPullRun::default()
                });
            }
            Err(_) => errors += 1,
        }
    }
    pulls.sort_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
    let mut r = pulls.get(pulls.len() / 2).cloned().unwrap_or_default();
    r.fill_per_sec = fill_per_sec;
    r.errors = errors;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_params_name_distinct_records_per_seq() {
        let a = push_params(3, 1, 2, b"v");
        let b = push_params(3, 2, 2, b"v");
        let ids: Vec<_> = a.ops.iter().chain(&b.ops).map(|o| o.id.clone()).collect();
        assert_eq!(ids, ["c3-0", "c3-1", "c3-2", "c3-3"]);
        assert_eq!(a.client, "bench-3");
        assert_eq!(b.seq, 2);
    }

    #[tokio::test]
    async fn push_and_pull_on_sqlite_count_every_record() {
        let bench = open(&Database::Sqlite).await.unwrap();
        let cfg = SyncPushConfig {
            clients: 4,
            batch: 10,
            payload: 16,
            warmup: Duration::from_millis(20),
            duration: Duration::from_millis(200),
        };
        let r = push(&bench.engine, &cfg).await;
        assert_eq!(r.errors, 0);
        assert!(r.records_per_sec > 0.0);
        assert!((r.records_per_sec - 10.0 * r.pushes_per_sec).abs() < 1e-6);
        bench.close().await;

        let bench = open(&Database::Sqlite).await.unwrap();
        let cfg = SyncPullConfig {
            records: 1234,
            payload: 16,
            fill_clients: 3,
            fill_batch: 100,
            pulls: 2,
        };
        let r = pull(&bench.engine, &cfg).await;
        assert_eq!(r.errors, 0);
        assert_eq!(r.received, 1234);
        assert!(r.chunks >= 3, "pages of at most 500: {}", r.chunks);
        bench.close().await;
    }
}
