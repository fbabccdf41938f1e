//! The durable-stream scenarios against the hub: durable publish
//! throughput, catch-up of a subscriber far behind, and (through
//! [`fanout()`](super::fanout())) publish-to-delivery latency on a durable topic.
//!
//! A durable hub is started with a configuration file declaring one stream
//! namespace, [`DURABLE_SUBJECTS`], with the run's durability, on SQLite
//! (the hub's default database in its temporary data directory) or on a
//! PostgreSQL database created for the run and dropped after it.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, SinkExt, StreamExt};
use minicbor::data::Type;
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{
    Durability, PublishResult, ResumeFinal, ResumeOutcome, ServerLimits, Since, SubscribeParams,
};
use plexus_protocol::{DecodeLimits, Frame};
use serde::Serialize;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{Session, WAIT, Ws, connect};
use super::frames::{publish_frame, publish_window};
use crate::clock::now_nanos;
use crate::procs::{HubBinary, HubProcess};
use crate::scenario::{
    CATCHUP_TOPIC, CatchupConfig, CatchupResult, DURABLE_SUBJECTS, DurablePublishConfig,
    DurablePublishResult,
};
use crate::stats::Latency;
use crate::window::Window;

/// Any error of starting a durable hub.
pub type BoxError = Box<dyn std::error::Error>;

/// How long filling or catching up may take before it counts as failed.
const LIMIT: Duration = Duration::from_secs(120);

/// Most answers read in one go before the publisher writes again.
const MAX_DRAIN: usize = 256;

/// The durability the hub's namespace asks for (its `durability` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamDurability {
    /// Acknowledged after the commit (SQLite `synchronous=NORMAL` in WAL
    /// mode, PostgreSQL `synchronous_commit=off`): survives a hub crash,
    /// not a power loss.
    Committed,
    /// Acknowledged after the commit is flushed to stable storage.
    Fsynced,
}

impl StreamDurability {
    /// The config-file text.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamDurability::Committed => "committed",
            StreamDurability::Fsynced => "fsynced",
        }
    }
}

/// Which database a durable hub uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Database {
    /// The hub's default: SQLite in its data directory.
    Sqlite,
    /// A fresh database on the PostgreSQL server of this URL (e.g.
    /// `postgres://postgres@127.0.0.1:5432/test`): created (with `psql`)
    /// for each hub, dropped after it.
    Postgres(String),
}

impl Database {
    /// What reports call it.
    pub fn label(&self) -> &'static str {
        match self {
            Database::Sqlite => "SQLite",
            Database::Postgres(_) => "PostgreSQL",
        }
    }
}

/// The config file of a durable hub: one namespace over
/// [`DURABLE_SUBJECTS`].
pub fn streams_toml(durability: StreamDurability) -> String {
    format!(
        "[[streams]]\npattern = \"{DURABLE_SUBJECTS}\"\ndurability = \"{}\"\n",
        durability.as_str()
    )
}

/// `base` (a `postgres://` URL) naming database `name` instead, its query
/// kept.
pub fn with_database(base: &str, name: &str) -> Option<String> {
    let scheme_end = base.find("://")? + 3;
    let (head, rest) = base.split_at(scheme_end);
    let (authority, tail) = match rest.find(['/', '?']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    Some(format!("{head}{authority}/{name}{query}"))
}

/// A PostgreSQL database created for one hub and dropped with it.
#[derive(Debug)]
pub struct PgDatabase {
    base: String,
    name: String,
    /// The database's URL.
    pub url: String,
}

/// Runs one statement with `psql` on `url`.
fn psql_command(url: &str, sql: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", url, "-c", sql])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

impl PgDatabase {
    /// Creates `plexus_bench_<pid>_<n>` on the server of `base`.
    pub async fn create(base: &str) -> Result<PgDatabase, BoxError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "plexus_bench_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let url = with_database(base, &name).ok_or_else(|| format!("not a URL: {base}"))?;
        let out = tokio::process::Command::from(psql_command(
            base,
            &format!("CREATE DATABASE \"{name}\""),
        ))
        .output()
        .await
        .map_err(|e| format!("running psql (apt-get install postgresql-client): {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "psql could not create database {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(PgDatabase {
            base: base.to_owned(),
            name,
            url,
        })
    }

    /// The database's name (`plexus_bench_<pid>_<n>`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The URL of the server's own database it was created from.
    pub fn base(&self) -> &str {
        &self.base
    }
}

/// The process ids of the PostgreSQL backends connected now to database
/// `name` (from `pg_stat_activity`, read with `psql` on `base`), e.g. to
/// sample their CPU time; empty if `psql` fails.
pub async fn backend_pids(base: &str, name: &str) -> Vec<u32> {
    let sql = format!(
        "SELECT pid FROM pg_stat_activity WHERE datname = '{}'",
        name.replace('\'', "''")
    );
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-d", base, "-c", &sql])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await;
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect(),
        _ => Vec::new(),
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql_command(
            &self.base,
            &format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name),
        )
        .output();
    }
}

/// A hub with a durable namespace, its config file and its database.
/// Field order: the hub stops before its database is dropped.
#[derive(Debug)]
pub struct DurableHub {
    /// The hub.
    pub hub: HubProcess,
    _conf: tempfile::TempDir,
    _db: Option<PgDatabase>,
}

/// Starts `bin` with the [`streams_toml`] namespace on `db`, plus `extra`
/// flags.
pub async fn start_durable(
    bin: &HubBinary,
    db: &Database,
    durability: StreamDurability,
    extra: &[String],
) -> Result<DurableHub, BoxError> {
    let conf = tempfile::tempdir()?;
    let path: PathBuf = conf.path().join("plexus.toml");
    std::fs::write(&path, streams_toml(durability))?;
    let mut args = vec!["--config".to_owned(), path.display().to_string()];
    let pg = match db {
        Database::Sqlite => None,
        Database::Postgres(base) => {
            if !bin.accepts("--database-url") {
                return Err(format!(
                    "{} serve --help lists no --database-url: this hub cannot use PostgreSQL",
                    bin.path.display()
                )
                .into());
            }
            let pg = PgDatabase::create(base).await?;
            args.extend(["--database-url".to_owned(), pg.url.clone()]);
            Some(pg)
        }
    };
    args.extend(extra.iter().cloned());
    let hub = bin.start(&args).await?;
    Ok(DurableHub {
        hub,
        _conf: conf,
        _db: pg,
    })
}

/// What one publisher did.
#[derive(Debug, Default)]
struct Acks {
    acked: u64,
    latency: Latency,
    /// The weakest durability acknowledged.
    durability: Option<Durability>,
    errors: u64,
}

/// One publisher's run.
#[derive(Debug, Clone)]
struct PubRun {
    topic: String,
    payload: usize,
    window: usize,
    win: Window,
    /// Stop after this many publishes (all answered), or at the window's end.
    limit: Option<u64>,
}

/// Whether `a` is weaker than `b`.
fn weaker(a: &Durability, b: &Durability) -> bool {
    matches!((a, b), (Durability::Committed, Durability::Fsynced))
}

/// Keeps `window` publishes in flight (never more than the hub
/// announces); counts the answers received inside the window that report a
/// stored offset, with their latency.
async fn publisher(mut ws: Ws, limits: &ServerLimits, run: PubRun) -> Acks {
    let mut acks = Acks::default();
    let mut buf = vec![0u8; run.payload.max(8)];
    let frame_len = publish_frame(u64::MAX, &run.topic, &mut buf).len();
    let window = publish_window(run.window, limits, frame_len);
    let decode = DecodeLimits::default();
    let mut sent: HashMap<u64, u64> = HashMap::with_capacity(window);
    let mut id = 100u64;
    let mut published = 0u64;
    let end = run.win.deadline();
    let mut progress = tokio::time::Instant::now();
    loop {
        if run.win.over(now_nanos()) {
            break;
        }
        let mut fed = false;
        while sent.len() < window && run.limit.is_none_or(|l| published < l) {
            id += 1;
            published += 1;
            let frame = publish_frame(id, &run.topic, &mut buf);
            sent.insert(id, now_nanos());
            if ws.feed(Message::Binary(frame)).await.is_err() {
                acks.errors += 1;
                return acks;
            }
            fed = true;
        }
        if fed && ws.flush().await.is_err() {
            acks.errors += 1;
            return acks;
        }
        if sent.is_empty() {
            break;
        }
        let first = match tokio::time::timeout_at(end.min(progress + WAIT), ws.next()).await {
            Ok(m) => m,
            Err(_) => {
                if !run.win.over(now_nanos()) {
                    acks.errors += sent.len() as u64;
                }
                break;
            }
        };
        progress = tokio::time::Instant::now();
        let t = now_nanos();
        let mut next = Some(first);
        let mut drained = 0;
        while let Some(msg) = next.take() {
            match msg {
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(Frame::Response(r)) = Frame::decode(b, &decode)
                        && let Some(at) = sent.remove(&r.id)
                    {
                        let stored = r
                            .outcome
                            .ok()
                            .and_then(|raw| raw.decode::<PublishResult>().ok())
                            .filter(|p| p.offset.is_some());
                        match stored {
                            Some(p) => {
                                if let Some(d) = p.durability
                                    && acks.durability.as_ref().is_none_or(|w| weaker(&d, w))
                                {
                                    acks.durability = Some(d);
                                }
                                if run.win.contains(t) {
                                    acks.acked += 1;
                                    acks.latency.record(t.saturating_sub(at));
                                }
                            }
                            None => acks.errors += 1,
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    acks.errors += 1;
                    return acks;
                }
            }
            drained += 1;
            if drained < MAX_DRAIN {
                next = ws.next().now_or_never();
            }
        }
    }
    acks
}

/// Durable publish on the hub at `url`: `cfg.publishers` connections, each publishing on its
/// own topic in the durable namespace with `cfg.window` in flight.
pub async fn durable_publish(url: &str, cfg: &DurablePublishConfig) -> DurablePublishResult {
    let url = url.to_owned();
    let sessions: Vec<_> = futures_util::stream::iter(0..cfg.publishers)
        .map(|j| {
            let url = url.clone();
            async move { connect(&url, &format!("p{j}"), None).await }
        })
        .buffered(16)
        .collect()
        .await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let mut errors = 0;
    let mut tasks = Vec::with_capacity(sessions.len());
    for (j, s) in sessions.into_iter().enumerate() {
        let Ok(Session { ws, limits }) = s else {
            errors += 1;
            continue;
        };
        let run = PubRun {
            topic: cfg.topic(j),
            payload: cfg.payload,
            window: cfg.window,
            win,
            limit: None,
        };
        tasks.push(tokio::spawn(
            async move { publisher(ws, &limits, run).await },
        ));
    }
    let mut acked = 0;
    let mut latency = Latency::new();
    let mut durability: Option<Durability> = None;
    for t in tasks {
        match t.await {
            Ok(a) => {
                acked += a.acked;
                latency.merge(&a.latency);
                errors += a.errors;
                if let Some(d) = a.durability
                    && durability.as_ref().is_none_or(|w| weaker(&d, w))
                {
                    durability = Some(d);
                }
            }
            Err(_) => errors += 1,
        }
    }
    DurablePublishResult {
        acked_per_sec: acked as f64 / win.secs(),
        ack_latency: latency.summary(),
        durability: durability.map(|d| d.as_str().to_owned()),
        errors,
    }
}

/// The number of items of the CBOR array `data` (definite or indefinite).
pub fn array_len(data: &[u8]) -> Option<u64> {
    let mut d = minicbor::Decoder::new(data);
    match d.array().ok()? {
        Some(n) => Some(n),
        None => {
            let mut n = 0;
            while d.datatype().ok()? != Type::Break {
                d.skip().ok()?;
                n += 1;
            }
            Some(n)
        }
    }
}

/// The request id, `final` flag and data of a chunk frame `[3, id, seq,
/// final, data]`, read without validating the data.
pub fn chunk_parts(frame: &[u8]) -> Option<(u64, bool, &[u8])> {
    let mut d = minicbor::Decoder::new(frame);
    if d.array().ok()? != Some(5) || d.u64().ok()? != plexus_protocol::frame::KIND_CHUNK {
        return None;
    }
    let id = d.u64().ok()?;
    d.u64().ok()?;
    let fin = d.bool().ok()?;
    Some((id, fin, frame.get(d.position()..)?))
}

/// What the resume's frames said.
#[derive(Debug, Default)]
struct Resumed {
    received: u64,
    first: Option<u64>,
    last: Option<u64>,
    fin: Option<ResumeFinal>,
    error: Option<String>,
}

/// Reads the chunks answering request `id` until the final one.
async fn read_resume(ws: &mut Ws, id: u64) -> Resumed {
    // A chunk is at most the hub's frame size; accept any.
    let decode = DecodeLimits {
        max_frame_size: usize::MAX,
        ..DecodeLimits::default()
    };
    let mut r = Resumed::default();
    loop {
        let msg = match tokio::time::timeout(WAIT, ws.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => {
                r.error = Some(e.to_string());
                return r;
            }
            Ok(None) => {
                r.error = Some("connection closed".into());
                return r;
            }
            Err(_) => {
                r.error = Some("no chunk for 10 s".into());
                return r;
            }
        };
        let Message::Binary(b) = msg else { continue };
        let t = now_nanos();
        // Chunks are read as the fan-out subscriber reads events: only the
        // header and the list's length (the hub validated what it sends);
        // anything else is decoded in full.
        if let Some((chunk_id, fin, data)) = chunk_parts(&b)
            && chunk_id == id
        {
            if fin {
                r.last = Some(t);
                match minicbor::decode::<ResumeFinal>(data) {
                    Ok(f) => r.fin = Some(f),
                    Err(e) => r.error = Some(format!("undecodable final chunk: {e}")),
                }
                return r;
            }
            match array_len(data) {
                Some(n) => {
                    r.received += n;
                    if n > 0 {
                        r.first.get_or_insert(t);
                    }
                }
                None => {
                    r.error = Some("a chunk that is not an array".into());
                    return r;
                }
            }
            continue;
        }
        match Frame::decode(b, &decode) {
            Ok(Frame::Response(resp)) if resp.id == id => {
                if let Err(e) = resp.outcome {
                    r.error = Some(e.to_string());
                    return r;
                }
            }
            Ok(_) => {}
            Err(e) => {
                r.error = Some(format!("undecodable frame: {e}"));
                return r;
            }
        }
    }
}

/// Catch-up on the hub at `url`: fills [`CATCHUP_TOPIC`] with `cfg.behind` events, then a new
/// connection subscribes with `since: {offset: 0}` (it has none of them);
/// timed from the `subscribe` to its final chunk.
pub async fn catchup(url: &str, cfg: &CatchupConfig) -> CatchupResult {
    let mut r = CatchupResult {
        behind: cfg.behind,
        ..CatchupResult::default()
    };
    let Ok(Session { ws, limits }) = connect(url, "filler", None).await else {
        r.errors = 1;
        return r;
    };
    let started = now_nanos();
    let acks = publisher(
        ws,
        &limits,
        PubRun {
            topic: CATCHUP_TOPIC.to_owned(),
            payload: cfg.payload,
            window: cfg.fill_window,
            win: Window::after(Duration::ZERO, LIMIT),
            limit: Some(cfg.behind),
        },
    )
    .await;
    let secs = (now_nanos() - started) as f64 / 1e9;
    r.fill_per_sec = acks.acked as f64 / secs.max(1e-9);
    r.errors = acks.errors + cfg.behind.saturating_sub(acks.acked);
    let Ok(Session { mut ws, .. }) = connect(url, "catchup", None).await else {
        r.errors += 1;
        return r;
    };
    const ID: u64 = 7;
    let params = SubscribeParams::new(CATCHUP_TOPIC).with_since(Since::offset(None, 0));
    let Ok(frame) = encode_request(ID, "subscribe", &params) else {
        r.errors += 1;
        return r;
    };
    if ws.send(Message::Binary(frame.into())).await.is_err() {
        r.errors += 1;
        return r;
    }
    let t0 = now_nanos();
    let resumed = match tokio::time::timeout(LIMIT, read_resume(&mut ws, ID)).await {
        Ok(x) => x,
        Err(_) => Resumed {
            error: Some("catch-up took longer than its limit".into()),
            ..Resumed::default()
        },
    };
    r.received = resumed.received;
    r.first_ms = resumed.first.map_or(0.0, |f| (f - t0) as f64 / 1e6);
    let last = resumed.last.unwrap_or_else(now_nanos);
    r.total_ms = (last - t0) as f64 / 1e6;
    r.events_per_sec = r.received as f64 / (r.total_ms / 1e3).max(1e-9);
    match (&resumed.fin, &resumed.error) {
        (Some(f), None) => {
            r.outcome = Some(format!("{} {}", f.outcome.as_str(), f.count));
            if f.outcome != ResumeOutcome::Recovered
                || f.count != r.received
                || r.received != cfg.behind
            {
                r.errors += 1;
            }
        }
        (_, Some(e)) => {
            r.outcome = Some(format!("error: {e}"));
            r.errors += 1;
        }
        (None, None) => r.errors += 1,
    }
    let _ = ws.close(None).await;
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_replaces_the_path_and_keeps_the_query() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "b1").as_deref(),
            Some("postgres://postgres@127.0.0.1:5432/b1")
        );
        assert_eq!(
            with_database("postgresql://u:p@h/test?sslmode=disable", "b2").as_deref(),
            Some("postgresql://u:p@h/b2?sslmode=disable")
        );
        assert_eq!(
            with_database("postgres://h:5432", "b3").as_deref(),
            Some("postgres://h:5432/b3")
        );
        assert_eq!(
            with_database("postgres://h?x=1", "b4").as_deref(),
            Some("postgres://h/b4?x=1")
        );
        assert_eq!(with_database("nothing", "b"), None);
    }

    #[test]
    fn the_config_declares_one_namespace_with_the_durability() {
        let toml = streams_toml(StreamDurability::Fsynced);
        assert_eq!(
            toml,
            "[[streams]]\npattern = \"bench.>\"\ndurability = \"fsynced\"\n"
        );
        assert!(streams_toml(StreamDurability::Committed).contains("\"committed\""));
    }

    #[test]
    fn array_lengths_definite_and_indefinite() {
        let events: Vec<u32> = vec![1, 2, 3];
        let definite = minicbor::to_vec(&events).unwrap();
        assert_eq!(array_len(&definite), Some(3));
        let mut indefinite = Vec::new();
        let mut e = minicbor::Encoder::new(&mut indefinite);
        e.begin_array().unwrap();
        e.map(1).unwrap().u8(0).unwrap().str("a").unwrap();
        e.u8(7).unwrap();
        e.end().unwrap();
        assert_eq!(array_len(&indefinite), Some(2));
        assert_eq!(array_len(&[0xa0]), None);
    }

    #[test]
    fn chunk_parts_of_real_chunks() {
        let events: Vec<u32> = vec![1, 2, 3];
        let frame = plexus_protocol::frame::encode_chunk(9, 4, false, &events).unwrap();
        let (id, fin, data) = chunk_parts(&frame).unwrap();
        assert_eq!((id, fin, array_len(data)), (9, false, Some(3)));
        let fin_chunk = ResumeFinal::new(ResumeOutcome::Recovered, 3, "e", 3, 3, None);
        let frame = plexus_protocol::frame::encode_chunk(9, 5, true, &fin_chunk).unwrap();
        let (_, fin, data) = chunk_parts(&frame).unwrap();
        assert!(fin);
        assert_eq!(minicbor::decode::<ResumeFinal>(data).unwrap(), fin_chunk);
        let request = encode_request(9, "ping", &()).unwrap();
        assert_eq!(chunk_parts(&request), None);
    }

    #[test]
    fn committed_is_weaker_than_fsynced() {
        assert!(weaker(&Durability::Committed, &Durability::Fsynced));
        assert!(!weaker(&Durability::Fsynced, &Durability::Committed));
        assert!(!weaker(&Durability::Fsynced, &Durability::Fsynced));
    }
}
