//! Record sync (issue 11) over the wire: a `plexus` hub started with
//! `[sync]` on (SQLite in its data directory, or `--database-url` on a
//! PostgreSQL database created for it), driven over WebSocket with the
//! wire types of `plexus_protocol::methods::sync`: clients calling
//! `sync.push` (one push in flight each), and one client calling
//! `sync.pull` and reading its chunks (the hub sends them as the outbound
//! buffer's credit allows) to the final one.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::sync::{
    SyncChunk, SyncOp, SyncPullFinal, SyncPullParams, SyncPushParams, SyncPushResult,
};
use tokio_tungstenite::tungstenite::Message;

use super::conn::{Session, WAIT, Ws, call, connect_with};
use super::durable::{Database, PgDatabase, chunk_parts};
use super::sync::{
    BoxError, COLLECTION, ClientRun, SPACE, SyncPullConfig, SyncPullRun, SyncPushConfig,
    SyncPushRun, sum_push_runs,
};
use crate::procs::{HubBinary, HubProcess};

/// The hub's `[sync]` table: quotas that do not bind (a timed push run
/// writes more than the default 100,000 records per space).
pub const SYNC_TOML: &str = "[sync]\nmax-records = 1000000000000\nmax-bytes = 1000000000000000\n";

/// A hub with sync on, its config file and its database. Field order: the
/// hub stops before its database is dropped.
#[derive(Debug)]
pub struct SyncHub {
    /// The hub.
    pub hub: HubProcess,
    _conf: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

/// Starts `bin` with [`SYNC_TOML`] on `db` (a fresh PostgreSQL database
/// for [`Database::Postgres`]).
pub async fn start_sync_hub(
    bin: &HubBinary,
    db: &Database,
    extra: &[String],
) -> Result<SyncHub, BoxError> {
    let conf = tempfile::tempdir()?;
    let path: PathBuf = conf.path().join("plexus.toml");
    std::fs::write(&path, SYNC_TOML)?;
    let mut args = vec!["--config".to_owned(), path.display().to_string()];
    let pg = match db {
        Database::Sqlite => None,
        Database::Postgres(base) => {
            let pg = PgDatabase::create(base).await?;
            args.extend(["--database-url".to_owned(), pg.url.clone()]);
            Some(pg)
        }
    };
    args.extend(extra.iter().cloned());
    let hub = bin.start(&args).await?;
    Ok(SyncHub {
        hub,
        _conf: conf,
        _db: pg,
    })
}

/// A token for the bench hub that may push to and pull from every space.
pub fn sync_token(sub: &str) -> String {
    crate::procs::token_with(
        sub,
        serde_json::json!({ "sub": [">"], "pub": [">"], "sync_write": [">"] }),
    )
}

async fn session(url: &str, user: &str) -> Result<Ws, BoxError> {
    let Session { ws, .. } = connect_with(url, None, &sync_token(user), None).await?;
    Ok(ws)
}

/// The current time as an HLC.
fn now_hlc() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    plexus_protocol::methods::sync::hlc(ms, 0)
}

/// One `sync.push` and its result (`None`: an error or a duplicate).
async fn push_one(ws: &mut Ws, id: u64, params: &SyncPushParams) -> Option<SyncPushResult> {
    let raw = call(ws, id, "sync.push", params).await.ok()?;
    raw.decode::<SyncPushResult>().ok().filter(|r| !r.duplicate)
}

fn ops(prefix: &str, from: u64, n: u64, payload: &[u8]) -> Vec<SyncOp> {
    (from..from + n)
        .map(|i| SyncOp::put(COLLECTION, format!("{prefix}{i}"), payload.to_vec()))
        .collect()
}

/// The push scenario over WebSocket on the hub at `url`: `cfg.clients`
/// connections, each with one `sync.push` of `cfg.batch` new records in
/// flight.
pub async fn push(url: &str, cfg: &SyncPushConfig) -> SyncPushRun {
    let mut conns = Vec::new();
    let mut errors = 0;
    for c in 0..cfg.clients {
        match session(url, &format!("w{c}")).await {
            Ok(ws) => conns.push(ws),
            Err(_) => errors += 1,
        }
    }
    let start = Instant::now();
    let from = start + cfg.warmup;
    let until = from + cfg.duration;
    let batch = cfg.batch.max(1) as u64;
    let mut tasks = Vec::new();
    for (c, mut ws) in conns.into_iter().enumerate() {
        let payload = vec![b'x'; cfg.payload];
        tasks.push(tokio::spawn(async move {
            let mut run = ClientRun::default();
            let mut seq = 0u64;
            loop {
                let t0 = Instant::now();
                if t0 >= until {
                    break;
                }
                let params = SyncPushParams::new(
                    SPACE,
                    format!("wire-{c}"),
                    seq + 1,
                    now_hlc(),
                    ops(&format!("c{c}-"), seq * batch, batch, &payload),
                );
                seq += 1;
                let ok = push_one(&mut ws, 100 + seq, &params).await.is_some();
                let t1 = Instant::now();
                if ok && t0 >= from && t1 <= until {
                    run.records += batch;
                    run.pushes += 1;
                    run.latency.record((t1 - t0).as_nanos() as u64);
                }
                if !ok {
                    run.errors += 1;
                    break;
                }
            }
            let _ = ws.close(None).await;
            run
        }));
    }
    sum_push_runs(tasks, errors, cfg.duration).await
}

/// Fills the space over the wire: `cfg.fill_clients` connections, pushes
/// of `cfg.fill_batch` records. Returns (records/s, errors).
async fn fill(url: &str, cfg: &SyncPullConfig) -> (f64, u64) {
    let clients = cfg.fill_clients.max(1) as u64;
    let batch = cfg.fill_batch.max(1) as u64;
    let pushes = cfg.records.div_ceil(batch);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let url = url.to_owned();
        let payload = vec![b'x'; cfg.payload];
        let records = cfg.records;
        tasks.push(tokio::spawn(async move {
            let Ok(mut ws) = session(&url, &format!("f{c}")).await else {
                return 1;
            };
            let mut seq = 0;
            let mut p = c;
            while p < pushes {
                seq += 1;
                let n = batch.min(records - p * batch);
                let params = SyncPushParams::new(
                    SPACE,
                    format!("fill-{c}"),
                    seq,
                    now_hlc(),
                    ops("r", p * batch, n, &payload),
                );
                if push_one(&mut ws, 100 + seq, &params).await.is_none() {
                    return 1;
                }
                p += clients;
            }
            let _ = ws.close(None).await;
            0
        }));
    }
    let mut errors = 0;
    for t in tasks {
        errors += t.await.unwrap_or(1);
    }
    (cfg.records as f64 / start.elapsed().as_secs_f64(), errors)
}

/// One full `sync.pull` from the start: (records, chunks, elapsed).
async fn pull_all(ws: &mut Ws, id: u64) -> Result<(u64, u64, Duration), BoxError> {
    let frame = encode_request(id, "sync.pull", &SyncPullParams::new(SPACE))?;
    let start = Instant::now();
    ws.send(Message::Binary(frame.into())).await?;
    let (mut records, mut chunks) = (0, 0);
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| "no chunk for 10 s")?
            .ok_or("connection closed")??;
        let Message::Binary(b) = msg else { continue };
        match chunk_parts(&b) {
            Some((cid, fin, data)) if cid == id => {
                if fin {
                    minicbor::decode::<SyncPullFinal>(data)?;
                    return Ok((records, chunks, start.elapsed()));
                }
                let c: SyncChunk = minicbor::decode(data)?;
                records += c.records.len() as u64;
                chunks += 1;
            }
            // Anything else answering `id` is its error response.
            _ => {
                if let Ok(plexus_protocol::Frame::Response(r)) =
                    plexus_protocol::Frame::decode(b, &plexus_protocol::DecodeLimits::default())
                    && r.id == id
                {
                    return Err(format!("sync.pull failed: {:?}", r.outcome.err()).into());
                }
            }
        }
    }
}

/// The pull scenario over WebSocket on a fresh hub at `url`: fills the
/// space, then one connection pulls it from the start `cfg.pulls` times
/// (median reported).
pub async fn pull(url: &str, cfg: &SyncPullConfig) -> SyncPullRun {
    let (fill_per_sec, mut errors) = fill(url, cfg).await;
    let mut pulls = Vec::new();
    match session(url, "reader").await {
        Ok(mut ws) => {
            for i in 0..cfg.pulls.max(1) {
                match pull_all(&mut ws, 10 + i as u64).await {
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
                    Err(e) => {
                        eprintln!("  sync.pull: {e}");
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
        }
        Err(_) => errors += 1,
    }
    pulls.sort_by(|a, b| a.records_per_sec.total_cmp(&b.records_per_sec));
    let mut r = pulls.get(pulls.len() / 2).cloned().unwrap_or_default();
    r.fill_per_sec = fill_per_sec;
    r.errors = errors;
    r
}
