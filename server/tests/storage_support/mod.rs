//! Test support for the storage suite: a database per test (a SQLite file
//! in a temporary directory, or a PostgreSQL schema dropped afterwards), a
//! broker stand-in that records live deliveries, and event decoding.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test support: a failure is the test failing"
)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_protocol::methods::EventParams;
use plexus_protocol::topic::Pattern;
use plexus_protocol::{DecodeLimits, Frame, RawValue};
use plexus_server::storage::{self, Backend, StoreOptions};
use plexus_server::streams::{
    Clock, FanOut, LiveEvent, ManualClock, NamespaceConfig, NotLive, Resume, ResumeFrom,
    ResumeSummary, Streams, StreamsConfig,
};
use sqlx::Connection;
use tokio::sync::mpsc;

/// The PostgreSQL URL, when the suite should run there too.
pub const PG_ENV: &str = "PLEXUS_TEST_POSTGRES_URL";

/// One test's database.
pub struct Fixture {
    pub backend: Backend,
    pub options: StoreOptions,
    pub clock: ManualClock,
    _dir: Option<tempfile::TempDir>,
    schema: Option<SchemaGuard>,
}

struct SchemaGuard {
    url: String,
    schema: String,
}

impl Drop for SchemaGuard {
    fn drop(&mut self) {
        let (url, schema) = (self.url.clone(), self.schema.clone());
        // Dropped from async tests too: use a runtime of our own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mut c) = sqlx::PgConnection::connect(&url).await {
                    let _ = sqlx::Executor::execute(
                        &mut c,
                        format!("DROP SCHEMA IF EXISTS {schema} CASCADE").as_str(),
                    )
                    .await;
                    let _ = c.close().await;
                }
            });
        })
        .join();
    }
}

impl Fixture {
    /// A fresh SQLite file.
    pub async fn sqlite() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let mut options = StoreOptions::in_data_dir(dir.path());
        options.busy_timeout = Duration::from_millis(200);
        Fixture {
            backend: Backend::Sqlite,
            options,
            clock: ManualClock::new(1_700_000_000_000),
            _dir: Some(dir),
            schema: None,
        }
    }

    /// A fresh schema, if `PLEXUS_TEST_POSTGRES_URL` is set.
    pub async fn postgres() -> Option<Fixture> {
        let url = std::env::var(PG_ENV).ok().filter(|u| !u.is_empty())?;
        let schema = format!("plexus_t_{:016x}", rand::random::<u64>());
        let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
        sqlx::Executor::execute(&mut c, format!("CREATE SCHEMA {schema}").as_str())
            .await
            .unwrap();
        c.close().await.unwrap();
        let mut options = StoreOptions::new(url.clone());
        options.schema = schema.clone();
        options.writer_name = format!("plexus-writer-{schema}");
        Some(Fixture {
            backend: Backend::Postgres,
            options,
            clock: ManualClock::new(1_700_000_000_000),
            _dir: None,
            schema: Some(SchemaGuard { url, schema }),
        })
    }

    /// Opens the store and the streams layer on it.
    pub async fn open(&self, config: StreamsConfig, sink: Arc<dyn FanOut>) -> Streams {
        let store = storage::open(&self.options).await.unwrap();
        let clock: Arc<dyn Clock> = Arc::new(self.clock.clone());
        Streams::open(store, config, sink, clock).await.unwrap()
    }

    /// Opens with a broker stand-in.
    pub async fn open_with_broker(&self, config: StreamsConfig) -> (Streams, Arc<Broker>) {
        let b = Arc::new(Broker::default());
        (self.open(config, b.clone()).await, b)
    }

    /// A plain connection to the same database, for fault injection.
    pub fn sqlite_path(&self) -> std::path::PathBuf {
        self.options.sqlite_path().unwrap()
    }
}

/// A config with the given namespaces.
pub fn config(namespaces: Vec<NamespaceConfig>) -> StreamsConfig {
    StreamsConfig {
        streams: namespaces,
        ..StreamsConfig::default()
    }
}

/// A broker stand-in: subscriptions by pattern, each a channel of frames.
#[derive(Default)]
pub struct Broker {
    subs: Mutex<Vec<(Pattern, mpsc::UnboundedSender<Bytes>)>>,
}

impl Broker {
    /// Subscribes; returns the receiving end.
    pub fn subscribe(&self, pattern: &str) -> mpsc::UnboundedReceiver<Bytes> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.add(pattern, tx);
        rx
    }

    pub fn add(&self, pattern: &str, tx: mpsc::UnboundedSender<Bytes>) {
        self.subs
            .lock()
            .push((Pattern::parse(pattern, 256).unwrap(), tx));
    }
}

impl FanOut for Broker {
    fn deliver(&self, e: &LiveEvent) -> u64 {
        let mut n = 0;
        for (p, tx) in self.subs.lock().iter() {
            if p.matches_str(&e.topic) && tx.send(e.frame.clone()).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ev {
    pub topic: String,
    pub offset: u64,
    pub position: u64,
    pub data: Vec<u8>,
    pub from: Option<String>,
}

fn ev(p: &EventParams<'_>) -> Ev {
    Ev {
        topic: p.topic.to_owned(),
        offset: p.offset.unwrap(),
        position: p.position.unwrap(),
        data: p.data.as_bytes().to_vec(),
        from: p.from.map(str::to_owned),
    }
}

/// Decodes chunk data (an array of event maps).
pub fn decode_list(bytes: &[u8]) -> Vec<Ev> {
    let items: Vec<RawValue> = minicbor::decode(bytes).unwrap();
    items
        .iter()
        .map(|r| ev(&r.decode::<EventParams>().unwrap()))
        .collect()
}

/// Decodes an `event` notification frame.
pub fn decode_frame(frame: &Bytes) -> Ev {
    let Frame::Notification(n) = Frame::decode(frame.clone(), &DecodeLimits::default()).unwrap()
    else {
        panic!("not a notification");
    };
    assert_eq!(n.method, "event");
    ev(&n.params.decode::<EventParams>().unwrap())
}

/// Encodes a CBOR payload.
pub fn payload<T: minicbor::Encode<()>>(v: T) -> Bytes {
    Bytes::from(minicbor::to_vec(v).unwrap())
}

/// What a simulated subscriber received across a resume.
pub struct Resumed {
    pub chunks: Vec<Vec<Ev>>,
    pub summary: ResumeSummary,
    /// Events queued at activation and afterwards, live.
    pub live: mpsc::UnboundedReceiver<Bytes>,
    pub pending: usize,
}

impl Resumed {
    pub fn streamed(&self) -> Vec<Ev> {
        self.chunks.iter().flatten().cloned().collect()
    }
}

/// Runs a resume to the end as the session layer would: chunks, summary,
/// then activation that queues pending events and subscribes, retrying
/// through `next_live` when the buffer overflowed.
pub async fn resume(
    streams: &Streams,
    broker: &Broker,
    pattern: &str,
    from: ResumeFrom,
    max_chunk_bytes: usize,
) -> Resumed {
    let p = Pattern::parse(pattern, 256).unwrap();
    let mut r = streams.resume(&p, from, max_chunk_bytes).unwrap();
    let mut chunks = Vec::new();
    while let Some(list) = r.next_chunk().await.unwrap() {
        let bytes = minicbor::to_vec(list).unwrap();
        chunks.push(decode_list(&bytes));
    }
    let summary = r.summary().unwrap().clone();
    let (tx, live) = mpsc::unbounded_channel();
    let pending = activate(r, broker, pattern, tx).await;
    Resumed {
        chunks,
        summary,
        live,
        pending,
    }
}

/// Activates, delivering what is pending into `tx` before subscribing it.
pub async fn activate(
    mut r: Resume,
    broker: &Broker,
    pattern: &str,
    tx: mpsc::UnboundedSender<Bytes>,
) -> usize {
    let mut delivered = 0;
    loop {
        let tx2 = tx.clone();
        match r.activate(|pending| {
            for e in pending {
                tx2.send(e.frame.clone()).unwrap();
            }
            broker.add(pattern, tx2.clone());
            pending.len()
        }) {
            Ok(n) => return delivered + n,
            Err(NotLive::Overflowed) => {
                while let Some(frames) = r.next_live().await.unwrap() {
                    for f in frames {
                        tx.send(f).unwrap();
                        delivered += 1;
                    }
                }
            }
            Err(e) => panic!("{e}"),
        }
    }
}

/// Drains what a live receiver holds right now.
pub fn drain(rx: &mut mpsc::UnboundedReceiver<Bytes>) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Ok(f) = rx.try_recv() {
        out.push(decode_frame(&f));
    }
    out
}

/// Receives exactly `n` live events, failing after a timeout.
pub async fn recv_n(rx: &mut mpsc::UnboundedReceiver<Bytes>, n: usize) -> Vec<Ev> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let f = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("timed out waiting for live events")
            .expect("channel closed");
        out.push(decode_frame(&f));
    }
    out
}

/// The process's resident anonymous memory (heap and stacks, not the
/// database file SQLite maps), in KiB (Linux).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("RssAnon:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap_or(0)))
        })
        .unwrap_or(0)
}

/// Generates one test per backend for each suite function.
#[macro_export]
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::storage_support::Fixture::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let Some(f) = $crate::storage_support::Fixture::postgres().await else {
                        eprintln!(
                            "skipped on PostgreSQL: {} is not set",
                            $crate::storage_support::PG_ENV
                        );
                        return;
                    };
                    super::$name(f).await
                }
            )*
        }
    };
}
