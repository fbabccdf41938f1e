//! Durable streams: topics with history, exact resume and idempotent
//! publishing, on the [`crate::storage`] traits.
//!
//! ## How the pieces fit
//!
//! - [`config`]: namespaces (patterns with retention and durability) and
//!   the writer's bounds, from the config file.
//! - [`Streams`] is the handle the session layer calls. It is cheap to
//!   clone.
//! - `writer`: one task owns the database's writing connection and an
//!   in-memory cache of each topic's state. It takes publishes from a
//!   bounded queue in batches (group commit: up to `commit-max-batch`, one
//!   transaction, answered only after the commit), assigns offsets and
//!   positions, applies the idempotency rules, and between batches runs
//!   retention in bounded slices (`retention`).
//! - `fanout`: one task delivers each committed batch to the hub's
//!   [`FanOut`] in commit order and then answers its publishes; resumes
//!   register taps there for their seam with the live stream.
//! - [`Resume`] (`subscribe` with `since`) streams the missed events in
//!   batches (constant memory however far behind) and hands over to live
//!   delivery with no gap and no duplicate.
//! - `history`: `history` pages and `history.latest`.
//!
//! ## What the session layer calls
//!
//! - [`Streams::topic_namespace`] / [`Streams::scope`]: is this topic or
//!   pattern durable?
//! - [`Streams::publish`]: enqueues synchronously (so one connection's
//!   publishes keep their order) and returns a [`PublishFuture`].
//! - [`Streams::resume`]: a [`Resume`]; [`Resume::next_chunk`] yields chunk
//!   data, [`Resume::summary`] the final chunk, [`Resume::activate`] the
//!   switch to live delivery (after [`Resume::next_live`] when the live
//!   buffer overflowed).
//! - [`Streams::history`], [`Streams::latest`].
//! - [`StreamError::to_wire`]: the one mapping of stream errors to wire
//!   errors.

pub mod clock;
pub mod config;
mod error;
mod event;
mod fanout;
mod history;
mod resume;
mod retention;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_protocol::methods::{Durability, PublishParams, PublishResult};
use plexus_protocol::topic::Pattern;
use tokio::sync::{mpsc, oneshot};

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::{NamespaceConfig, StreamsConfig, WriterConfig};
pub use error::{ConflictDetails, OVERLOADED_RETRY_AFTER_MS, STORAGE_RETRY_AFTER_MS, StreamError};
pub use event::{EventList, LiveEvent, derived_epoch, encode_frame, frame_from_body, list_len};
pub use fanout::{FanOut, NoFanOut, Relay};
pub use history::{DEFAULT_HISTORY_LIMIT, HistoryPage, HistoryQuery, LatestPage, MAX_HISTORY_PAGE};
pub use resume::{NotLive, Resume, ResumeFrom, ResumeSummary};

use crate::storage::{Flush, StorageError, Store};

/// Longest producer id or idempotency key, in bytes (D3).
pub const MAX_ID_LEN: usize = 128;
/// Greatest producer sequence number (stored as a signed 64-bit integer).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// A configured namespace, as the streams layer holds it.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// Its id in the database.
    pub id: i64,
    /// Its pattern.
    pub pattern: Pattern,
    /// Its epoch.
    pub epoch: Arc<str>,
    /// Its settings.
    pub config: NamespaceConfig,
}

/// What a topic or pattern is, for the streams layer.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Not durable: plain pub/sub.
    Plain,
    /// An exact durable topic.
    Topic(&'a Namespace),
    /// A pattern inside one durable namespace.
    Pattern(&'a Namespace),
    /// A pattern that overlaps durable namespaces without being inside one:
    /// its live events carry offsets, but it cannot resume.
    Mixed,
}

/// A durable publish.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PublishRequest {
    /// The topic (validated by the caller).
    pub topic: Arc<str>,
    /// The payload: one encoded CBOR item.
    pub data: Bytes,
    /// The publishing user.
    pub from: Option<Arc<str>>,
    /// Producer id and sequence number.
    pub producer: Option<(Arc<str>, u64)>,
    /// Idempotency key.
    pub key: Option<Arc<str>>,
    /// Compare-and-set on the topic's last offset.
    pub expected_offset: Option<u64>,
    /// A connection not to deliver the event to (opaque; see
    /// [`LiveEvent::skip`]).
    pub skip: Option<u64>,
}

impl PublishRequest {
    /// A publish of `data` on `topic`.
    pub fn new(topic: impl Into<Arc<str>>, data: Bytes) -> Self {
        PublishRequest {
            topic: topic.into(),
            data,
            from: None,
            producer: None,
            key: None,
            expected_offset: None,
            skip: None,
        }
    }

    /// From `publish` params (keys 3–6 checked as D3 says): `data` is the
    /// params' `data` item as shared bytes (a slice of the frame).
    pub fn from_params(
        p: &PublishParams<'_>,
        data: Bytes,
        from: Option<Arc<str>>,
        skip: Option<u64>,
    ) -> Result<Self, StreamError> {
        let mut r = PublishRequest::new(p.topic, data);
        r.from = from;
        r.skip = skip;
        match (p.producer, p.seq) {
            (Some(producer), Some(seq)) => r = r.with_producer(producer, seq)?,
            (None, None) => {}
            _ => return Err(StreamError::invalid("producer and seq go together")),
        }
        if let Some(k) = p.key {
            r = r.with_key(k)?;
        }
        r.expected_offset = p.expected_offset;
        Ok(r)
    }

    /// Sets the publishing user.
    pub fn with_from(mut self, from: impl Into<Arc<str>>) -> Self {
        self.from = Some(from.into());
        self
    }

    /// Sets the producer id (1–128 bytes) and sequence number (1 to
    /// [`MAX_SEQ`]).
    pub fn with_producer(mut self, producer: &str, seq: u64) -> Result<Self, StreamError> {
        check_id("producer", producer)?;
        if seq == 0 || seq > MAX_SEQ {
            return Err(StreamError::invalid("seq must be between 1 and 2^63-1"));
        }
        self.producer = Some((producer.into(), seq));
        Ok(self)
    }

    /// Sets the idempotency key (1–128 bytes).
    pub fn with_key(mut self, key: &str) -> Result<Self, StreamError> {
        check_id("key", key)?;
        self.key = Some(key.into());
        Ok(self)
    }

    /// Publish only if the topic's last offset is `offset`.
    pub fn with_expected_offset(mut self, offset: u64) -> Self {
        self.expected_offset = Some(offset);
        self
    }

    /// Do not deliver to connection `skip`.
    pub fn with_skip(mut self, skip: u64) -> Self {
        self.skip = Some(skip);
        self
    }
}

fn check_id(what: &'static str, s: &str) -> Result<(), StreamError> {
    if s.is_empty() || s.len() > MAX_ID_LEN {
        return Err(StreamError::InvalidParams(
            format!("{what} must be 1 to {MAX_ID_LEN} bytes").into(),
        ));
    }
    Ok(())
}

/// Whether `publish` params use a durable-only key (3–6): on a topic that
/// is not durable that is `invalid_params` (D3).
pub fn uses_durable_keys(p: &PublishParams<'_>) -> bool {
    p.producer.is_some() || p.seq.is_some() || p.key.is_some() || p.expected_offset.is_some()
}

/// The answer to a durable publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishOutcome {
    /// Connections the event was queued for (0 for a duplicate).
    pub delivered: u64,
    /// Its offset (absent for a duplicate whose event retention removed).
    pub offset: Option<u64>,
    /// Its namespace position (likewise).
    pub position: Option<u64>,
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// What the commit reached.
    pub durability: Durability,
    /// A retry that was not stored again.
    pub duplicate: bool,
}

impl PublishOutcome {
    /// The `publish` result.
    pub fn to_result(&self) -> PublishResult {
        PublishResult::durable(
            self.delivered,
            self.offset,
            self.position,
            &*self.epoch,
            self.durability.clone(),
            self.duplicate,
        )
    }
}

/// The answer of [`Streams::publish`]: resolves after the commit (and the
/// fan-out), or at once with a validation error.
#[derive(Debug)]
pub struct PublishFuture(FutureState);

#[derive(Debug)]
enum FutureState {
    Ready(Option<Result<PublishOutcome, StreamError>>),
    Waiting(oneshot::Receiver<Result<PublishOutcome, StreamError>>),
}

impl PublishFuture {
    fn ready(r: Result<PublishOutcome, StreamError>) -> Self {
        PublishFuture(FutureState::Ready(Some(r)))
    }
}

impl Future for PublishFuture {
    type Output = Result<PublishOutcome, StreamError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            FutureState::Ready(r) => Poll::Ready(
                r.take()
                    .unwrap_or(Err(StreamError::Unavailable { cause: None })),
            ),
            FutureState::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(StreamError::Unavailable { cause: None }))),
        }
    }
}

/// Counters of the writer (tests, `plexus streams`, metrics).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamsStats {
    /// Transactions that carried publishes.
    pub batches: u64,
    /// Publishes answered through those transactions.
    pub requests: u64,
    /// Events stored.
    pub stored: u64,
    /// Largest batch.
    pub max_batch: u64,
    /// Transactions that failed and were rolled back.
    pub commit_errors: u64,
    /// Events retention removed.
    pub retention_events: u64,
    /// Idempotency keys retention removed.
    pub retention_keys: u64,
    /// Events streamed by resumes.
    pub catchup_events: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Stats {
    batches: AtomicU64,
    requests: AtomicU64,
    stored: AtomicU64,
    max_batch: AtomicU64,
    commit_errors: AtomicU64,
    retention_events: AtomicU64,
    retention_keys: AtomicU64,
    catchup_events: AtomicU64,
}

impl Stats {
    fn snapshot(&self) -> StreamsStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StreamsStats {
            batches: l(&self.batches),
            requests: l(&self.requests),
            stored: l(&self.stored),
            max_batch: l(&self.max_batch),
            commit_errors: l(&self.commit_errors),
            retention_events: l(&self.retention_events),
            retention_keys: l(&self.retention_keys),
            catchup_events: l(&self.catchup_events),
        }
    }
}

/// What one retention run removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionReport {
    /// Events removed.
    pub events: u64,
    /// Idempotency keys removed.
    pub keys: u64,
}

/// Why [`Streams::open`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The streams configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The database failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

pub(crate) enum Command {
    Publish(writer::PublishJob),
    Retention(oneshot::Sender<RetentionReport>),
    Reset(
        Arc<str>,
        usize,
        oneshot::Sender<Result<Arc<str>, StreamError>>,
    ),
    Close(oneshot::Sender<()>),
}

pub(crate) struct Shared {
    store: Arc<dyn Store>,
    config: WriterConfig,
    namespaces: Vec<Namespace>,
    fanout: fanout::Fanout,
    clock: Arc<dyn Clock>,
    stats: Stats,
    /// Payload bytes of the publishes in the writer's queue.
    queued_bytes: AtomicUsize,
    /// The fan-out task's queue (weak: the writer's sender is the one that
    /// ends it).
    fan_tx: mpsc::WeakSender<writer::FanMsg>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("namespaces", &self.namespaces)
            .finish_non_exhaustive()
    }
}

impl Shared {
    fn namespace_index(&self, topic: &str) -> Option<usize> {
        self.namespaces
            .iter()
            .position(|n| n.pattern.matches_str(topic))
    }

    fn namespace_by_id(&self, id: i64) -> Option<&Namespace> {
        self.namespaces.iter().find(|n| n.id == id)
    }

    /// Cluster mode: waits until the fan-out has delivered `topic` up to
    /// `offset` here (reading storage if it is behind).
    async fn catch_up(&self, topic: Arc<str>, offset: u64) {
        let Some(tx) = self.fan_tx.upgrade() else {
            return;
        };
        let (done, wait) = oneshot::channel();
        let msg = writer::FanMsg::CatchUp {
            topic,
            offset,
            done: Some(done),
        };
        if tx.send(msg).await.is_ok() {
            drop(tx);
            let _ = tokio::time::timeout(fanout::FANOUT_WAIT, wait).await;
        }
    }
}

/// The durable-streams handle. When the last clone is dropped the writer
/// finishes what is queued and stops.
#[derive(Debug, Clone)]
pub struct Streams {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Command>,
    tasks: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Streams {
    /// Starts the streams layer on `store`: creates the configured
    /// namespaces that are new (with fresh epochs) and spawns the writer
    /// and fan-out tasks. Committed events go to `sink`; ages are judged by
    /// `clock`.
    pub async fn open(
        store: Arc<dyn Store>,
        config: StreamsConfig,
        sink: Arc<dyn FanOut>,
        clock: Arc<dyn Clock>,
    ) -> Result<Streams, OpenError> {
        config.validate()?;
        let mut conn = store.writer().await?;
        let mut rows = Vec::with_capacity(config.streams.len());
        conn.begin(Flush::Fsynced).await?;
        let setup = async {
            for n in &config.streams {
                rows.push(
                    conn.ensure_namespace(&n.pattern, &event::random_epoch())
                        .await?,
                );
            }
            conn.max_ids().await
        }
        .await;
        let ids = match setup {
            Ok(ids) => {
                conn.commit().await?;
                ids
            }
            Err(e) => {
                let _ = conn.rollback().await;
                return Err(e.into());
            }
        };
        let namespaces: Vec<Namespace> = config
            .streams
            .iter()
            .zip(&rows)
            .map(|(c, r)| {
                Ok(Namespace {
                    id: r.id,
                    pattern: Pattern::parse(&c.pattern, plexus_protocol::topic::MAX_TOPIC_LEN)
                        .map_err(|e| config::ConfigError::Pattern {
                            pattern: c.pattern.clone(),
                            reason: e.to_string(),
                        })?,
                    epoch: r.epoch.as_str().into(),
                    config: c.clone(),
                })
            })
            .collect::<Result<_, config::ConfigError>>()?;
        let fanned: Vec<(i64, u64)> = rows.iter().map(|r| (r.id, r.last_position)).collect();
        let (tx, rx) = mpsc::channel(config.storage.commit_queue);
        let (fan_tx, fan_rx) = mpsc::channel(writer::FANOUT_QUEUE);
        let shared = Arc::new(Shared {
            store,
            config: config.storage.clone(),
            namespaces,
            fanout: fanout::Fanout::new(
                sink,
                fanned,
                if config.storage.shared {
                    config.storage.topic_cache
                } else {
                    0
                },
            ),
            clock,
            stats: Stats::default(),
            queued_bytes: AtomicUsize::new(0),
            fan_tx: fan_tx.downgrade(),
        });
        let positions = rows.iter().map(|r| r.last_position).collect();
        let w = writer::Writer::new(shared.clone(), conn, positions, ids, fan_tx.clone());
        let t1 = tokio::spawn(w.run(rx));
        let t2 = tokio::spawn(writer::run_fanout(shared.clone(), fan_rx));
        Ok(Streams {
            shared,
            tx,
            tasks: Arc::new(Mutex::new(vec![t1, t2])),
        })
    }

    /// Cluster mode: sends what this node commits to `relay` (once; a
    /// second relay is ignored).
    pub fn set_relay(&self, relay: Arc<dyn Relay>) {
        let _ = self.shared.fanout.relay.set(relay);
    }

    /// Cluster mode: delivers events another node committed, in order with
    /// this node's own (a repeat is dropped, a gap filled from storage).
    /// Waits while the fan-out queue is full; `false` once the streams
    /// layer has closed.
    pub async fn deliver_remote(&self, events: Vec<LiveEvent>) -> bool {
        match self.shared.fan_tx.upgrade() {
            Some(tx) => tx.send(writer::FanMsg::Remote(events)).await.is_ok(),
            None => false,
        }
    }

    /// Cluster mode: makes sure `topic` is delivered here up to `offset`
    /// (read from storage if this node is behind), and waits for it.
    pub async fn catch_up(&self, topic: Arc<str>, offset: u64) {
        self.shared.catch_up(topic, offset).await;
    }

    /// Cluster mode: the durable topics this node sequences, with the last
    /// offset it delivered of each (at most `max`).
    pub fn sequenced_topics(&self, max: usize) -> Vec<(Arc<str>, u64)> {
        self.shared.fanout.sequenced_topics(max)
    }

    /// The configured namespaces.
    pub fn namespaces(&self) -> &[Namespace] {
        &self.shared.namespaces
    }

    /// The namespace an exact topic belongs to, if it is durable.
    pub fn topic_namespace(&self, topic: &str) -> Option<&Namespace> {
        self.shared
            .namespace_index(topic)
            .map(|i| &self.shared.namespaces[i])
    }

    /// What a subscription pattern (or exact topic) is.
    pub fn scope(&self, pattern: &Pattern) -> Scope<'_> {
        if pattern.is_exact() {
            return match self.topic_namespace(pattern.as_str()) {
                Some(n) => Scope::Topic(n),
                None => Scope::Plain,
            };
        }
        if let Some(n) = self
            .shared
            .namespaces
            .iter()
            .find(|n| n.pattern.covers(pattern))
        {
            return Scope::Pattern(n);
        }
        if self
            .shared
            .namespaces
            .iter()
            .any(|n| config::overlap(&n.pattern, pattern))
        {
            Scope::Mixed
        } else {
            Scope::Plain
        }
    }

    /// Enqueues a durable publish. The enqueue happens now, before this
    /// returns, so publishes made one after the other are stored in that
    /// order; the future resolves after the commit and the fan-out.
    /// A full queue answers [`StreamError::Overloaded`] at once.
    pub fn publish(&self, req: PublishRequest) -> PublishFuture {
        let Some(ns) = self.shared.namespace_index(&req.topic) else {
            return PublishFuture::ready(Err(StreamError::NotDurable));
        };
        let size = req.data.len();
        let queued = &self.shared.queued_bytes;
        if queued.fetch_add(size, Ordering::Relaxed) + size > self.shared.config.commit_queue_bytes
        {
            queued.fetch_sub(size, Ordering::Relaxed);
            return PublishFuture::ready(Err(StreamError::Overloaded));
        }
        let (reply, rx) = oneshot::channel();
        let job = writer::PublishJob { req, ns, reply };
        match self.tx.try_send(Command::Publish(job)) {
            Ok(()) => PublishFuture(FutureState::Waiting(rx)),
            Err(mpsc::error::TrySendError::Full(_)) => {
                queued.fetch_sub(size, Ordering::Relaxed);
                PublishFuture::ready(Err(StreamError::Overloaded))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                queued.fetch_sub(size, Ordering::Relaxed);
                PublishFuture::ready(Err(StreamError::Unavailable { cause: None }))
            }
        }
    }

    /// Runs retention now (ages by the injected clock), until nothing is
    /// due; the background runs it every `retention-interval` anyway.
    pub async fn run_retention(&self) -> Result<RetentionReport, StreamError> {
        let (tx, rx) = oneshot::channel();
        self.command(Command::Retention(tx)).await?;
        rx.await
            .map_err(|_| StreamError::Unavailable { cause: None })
    }

    /// Resets a topic's history: deletes its events and keys, gives it a
    /// new epoch and restarts its offsets at 1 (its producers' sequence
    /// numbers are kept: a retry answers `duplicate` without an offset).
    /// Returns the new epoch.
    pub async fn reset_topic(&self, topic: &str) -> Result<Arc<str>, StreamError> {
        let ns = self
            .shared
            .namespace_index(topic)
            .ok_or(StreamError::NotDurable)?;
        let (tx, rx) = oneshot::channel();
        self.command(Command::Reset(topic.into(), ns, tx)).await?;
        rx.await
            .map_err(|_| StreamError::Unavailable { cause: None })?
    }

    async fn command(&self, c: Command) -> Result<(), StreamError> {
        self.tx
            .send(c)
            .await
            .map_err(|_| StreamError::Unavailable { cause: None })
    }

    /// The writer's counters.
    pub fn stats(&self) -> StreamsStats {
        self.shared.stats.snapshot()
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    /// Stops the writer after the requests already queued, waits for the
    /// fan-out to drain, and closes the store's pool.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let tasks: Vec<_> = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        self.shared.store.close().await;
    }

    /// Taps registered by resumes in progress (tests).
    #[doc(hidden)]
    pub fn open_taps(&self) -> usize {
        self.shared.fanout.tap_count()
    }
}
