//! Record sync (issue 11): spaces of records that apps sync through the
//! hub, merged by last-write-wins on hybrid logical clocks, with the hub as
//! the clock referee. The design is recorded as decisions Y1–Y16 in
//! `docs/decisions.md` ("Record sync (issue 11)").
//!
//! - [`model`]: a record's merge state, the merge rules, the checksum and
//!   the stored field encoding — pure.
//! - [`hlc`]: the hub's HLC over an injectable [`Clock`] and the skew
//!   clamp.
//! - [`store`]: the tables (`migrations/*/0002_sync.sql`) on SQLite and
//!   PostgreSQL: a read pool and one writing connection.
//! - [`SyncEngine`] (here): the writer task (pushes in group-committed
//!   transactions, the expiry and tombstone sweep), pulls from a cursor in
//!   bounded pages, `info`, and live changes.
//!
//! ## What the session layer calls
//!
//! - `sync.push`: check [`Capabilities::can_sync_write`] on the space, then
//!   [`SyncEngine::push`] with the decoded params; map an error with
//!   [`SyncError::to_wire`]. Pushes of one connection must reach
//!   `push` in the order they arrived (the writer's queue is FIFO): a
//!   client's later `seq` applied first makes an earlier one a duplicate.
//! - `sync.pull`: check [`Capabilities::can_sync_read`]; with `live`, call
//!   [`SyncEngine::watch`] **first**, then [`SyncEngine::pull`] and send each
//!   [`PullStep::Chunk`] as a chunk (one per credit) and the
//!   [`PullStep::Final`] as the final chunk; then, with `live`, forward
//!   [`LiveChanges::next`] as further chunks until cancelled (an error ends
//!   the stream; the client resumes with its cursor).
//! - `sync.info`: [`SyncEngine::info`].
//! - A timer calls [`SyncEngine::sweep`] (expiry and tombstone horizon),
//!   e.g. every `SyncConfig::sweep_interval`.
//!
//! [`Capabilities::can_sync_write`]: crate::auth::Capabilities::can_sync_write
//! [`Capabilities::can_sync_read`]: crate::auth::Capabilities::can_sync_read

pub mod chunk;
mod group;
pub mod hlc;
pub mod model;
pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use plexus_protocol::methods::sync::CollectionInfo;
use plexus_protocol::methods::sync::{
    Checksum, ClockSkewDetails, Limits, OpKind, QuotaDetails, SyncChunk, SyncConflicts,
    SyncInfoResult, SyncOp, SyncPullFinal, SyncPullParams, SyncPushParams, SyncPushResult,
    SyncRecord, Usage,
};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Topic};
use plexus_protocol::{ErrorCode, RawValue, WireError};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::storage::StorageError;
pub use crate::streams::{Clock, ManualClock, SystemClock};
use chunk::wire_record;
pub use chunk::{RawChunk, RawRecord};
pub use group::MAX_GROUP_OPS;
use group::{Applied, Footprint, Group, account};
use hlc::{Hlc, SkewError};
use model::{Change, Stamp};
use store::{CollectionRow, Page, PageQuery, SpaceRow, SyncRead, SyncWriteConn};

/// Longest client id, in bytes.
pub const MAX_CLIENT_LEN: usize = 64;
/// Longest collection name, in bytes.
pub const MAX_COLLECTION_LEN: usize = 128;
/// Longest record id, in bytes.
pub const MAX_ID_LEN: usize = 256;
/// Longest field name, in bytes.
pub const MAX_FIELD_NAME_LEN: usize = 256;
/// Most fields in one operation, and visible fields in a merged record.
pub const MAX_FIELDS: usize = 256;

/// Record-sync settings. Every limit is a field with a documented default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SyncConfig {
    /// How far ahead of the hub's clock a client timestamp may be
    /// [default: 60 s].
    pub max_clock_skew: Duration,
    /// How long tombstones are kept [default: 30 days].
    pub tombstone_horizon: Duration,
    /// Most live records per space [default: 100,000].
    pub max_records: u64,
    /// Most bytes of live records per space [default: 64 MiB].
    pub max_bytes: u64,
    /// Pushes waiting for the writer; a full queue answers `unavailable`
    /// at once [default: 1024].
    pub queue_capacity: usize,
    /// Most pushes per transaction (a group also stops at
    /// [`MAX_GROUP_OPS`] operations) [default: 64].
    pub max_batch: usize,
    /// Most operations per push [default: 1000].
    pub max_ops: usize,
    /// Largest record (collection + id + fields) [default: 256 KiB].
    pub max_record_bytes: usize,
    /// Most collections in a space (every one it ever had a record in:
    /// a collection's aggregates stay when its records are deleted), so
    /// that a pull's final chunk (a checksum per collection) and a
    /// `sync.info` result fit one frame [default: 1024].
    pub max_collections: usize,
    /// Most records per pull page (a page holds at most this many times
    /// `max_record_bytes`; a pull holds two: the one being sent and the
    /// next, read ahead) [default: 500].
    pub page_limit: u32,
    /// Committed changes buffered per live watcher of a space [default:
    /// 1024]; a watcher further behind is ended (it resumes by cursor).
    pub live_buffer: usize,
    /// Most records one sweep expires or purges [default: 1000].
    pub sweep_limit: u32,
    /// How often the hub should call [`SyncEngine::sweep`] [default: 60 s].
    pub sweep_interval: Duration,
    /// Quotas of the spaces matching a pattern, instead of `max_records`
    /// and `max_bytes` (the first matching pattern wins) [default: none].
    pub quotas: Vec<(plexus_protocol::topic::Pattern, Limits)>,
}

impl Default for SyncConfig {
    fn default() -> Self {
        SyncConfig {
            max_clock_skew: Duration::from_secs(60),
            tombstone_horizon: Duration::from_secs(30 * 24 * 3600),
            max_records: 100_000,
            max_bytes: 64 << 20,
            queue_capacity: 1024,
            max_batch: 64,
            max_ops: 1000,
            max_record_bytes: 256 << 10,
            max_collections: 1024,
            page_limit: 500,
            live_buffer: 1024,
            sweep_limit: 1000,
            sweep_interval: Duration::from_secs(60),
            quotas: Vec::new(),
        }
    }
}

impl SyncConfig {
    /// The quota of `space`: the first matching override's, else
    /// `max_records` and `max_bytes`.
    pub fn limits_for(&self, space: &str) -> Limits {
        if let Ok(t) = Topic::parse(space, MAX_TOPIC_LEN)
            && let Some((_, l)) = self.quotas.iter().find(|(p, _)| p.matches(&t))
        {
            return *l;
        }
        Limits::new(self.max_records, self.max_bytes)
    }
}

/// Why a sync call failed. [`SyncError::to_wire`] is the one mapping to
/// the wire.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The params are wrong (→ `invalid_params`).
    #[error("invalid params: {0}")]
    Invalid(String),
    /// An operation or record exceeds a size limit (→
    /// `payload_too_large`).
    #[error("too large: {0}")]
    TooLarge(&'static str),
    /// Expected versions did not match; nothing was applied (→
    /// `conflict`).
    #[error("{} record(s) changed since the expected version", .0.records.len())]
    Conflict(SyncConflicts),
    /// The push would exceed the quota; nothing was applied (→
    /// `quota_exceeded`).
    #[error("the space's quota would be exceeded")]
    Quota(QuotaDetails),
    /// The push would give the space more than
    /// [`SyncConfig::max_collections`] collections; nothing was applied (→
    /// `quota_exceeded`, no details).
    #[error("a space holds at most {0} collections")]
    TooManyCollections(usize),
    /// A timestamp is too far ahead (→ `clock_skew`).
    #[error(transparent)]
    Skew(SkewError),
    /// The tombstone horizon passed the cursor during the pull: pull again
    /// (you will get a reset) (→ `conflict`).
    #[error("the tombstone horizon passed the cursor during the pull; pull again")]
    ResetRequired,
    /// The database or the writer is unavailable (→ `unavailable`,
    /// retryable; pushes are idempotent).
    #[error("record sync unavailable: {0}")]
    Unavailable(String),
    /// A live watcher fell more than `live_buffer` commits behind (→
    /// `unavailable`; resume with the cursor).
    #[error("live changes fell behind; resume from the cursor")]
    Lagged,
}

impl From<StorageError> for SyncError {
    fn from(e: StorageError) -> Self {
        SyncError::Unavailable(e.to_string())
    }
}

impl SyncError {
    /// The wire error (messages never contain payloads).
    pub fn to_wire(&self) -> WireError {
        let details = |v: Result<RawValue, _>| v.ok();
        match self {
            SyncError::Invalid(m) => WireError::new(ErrorCode::InvalidParams, m.clone()),
            SyncError::TooLarge(_) => WireError::new(ErrorCode::PayloadTooLarge, self.to_string()),
            SyncError::Conflict(c) => {
                let mut e = WireError::new(ErrorCode::Conflict, self.to_string());
                e.details = details(RawValue::encode(c));
                e
            }
            SyncError::Quota(q) => {
                let mut e = WireError::new(ErrorCode::QuotaExceeded, self.to_string());
                e.details = details(RawValue::encode(q));
                e
            }
            SyncError::TooManyCollections(_) => {
                WireError::new(ErrorCode::QuotaExceeded, self.to_string())
            }
            SyncError::Skew(s) => {
                let mut e = WireError::new(ErrorCode::ClockSkew, self.to_string());
                e.details = details(RawValue::encode(&ClockSkewDetails::new(
                    s.server_hlc,
                    s.max_skew_ms,
                )));
                e
            }
            SyncError::ResetRequired => WireError::new(ErrorCode::Conflict, self.to_string()),
            SyncError::Unavailable(_) | SyncError::Lagged => {
                WireError::new(ErrorCode::Unavailable, self.to_string())
                    .with_retry_after_ms(crate::streams::STORAGE_RETRY_AFTER_MS)
            }
        }
    }
}

/// One validated operation.
#[derive(Debug, Clone)]
struct Op {
    collection: String,
    id: String,
    change: Change,
    expected: Option<u64>,
    hlc: u64,
    expires_at: Option<u64>,
}

/// A validated push.
#[derive(Debug)]
pub(super) struct PushReq {
    space: String,
    client: String,
    seq: u64,
    ops: Vec<Op>,
    return_values: bool,
}

fn text_len(what: &str, s: &str, max: usize) -> Result<(), SyncError> {
    if s.is_empty() || s.len() > max {
        return Err(SyncError::Invalid(format!(
            "{what} must be 1..={max} bytes"
        )));
    }
    Ok(())
}

fn check_space(space: &str) -> Result<(), SyncError> {
    Topic::parse(space, MAX_TOPIC_LEN)
        .map(|_| ())
        .map_err(|e| SyncError::Invalid(format!("bad space name: {e}")))
}

fn validate(p: SyncPushParams, cfg: &SyncConfig) -> Result<PushReq, SyncError> {
    check_space(&p.space)?;
    text_len("client", &p.client, MAX_CLIENT_LEN)?;
    if p.seq == 0 {
        return Err(SyncError::Invalid("seq must be at least 1".into()));
    }
    if p.ops.is_empty() {
        return Err(SyncError::Invalid("a push needs at least one op".into()));
    }
    if p.ops.len() > cfg.max_ops {
        return Err(SyncError::TooLarge("more ops than max_ops"));
    }
    let mut ops = Vec::with_capacity(p.ops.len());
    for op in p.ops {
        ops.push(validate_op(op, p.hlc, cfg)?);
    }
    Ok(PushReq {
        space: p.space,
        client: p.client,
        seq: p.seq,
        ops,
        return_values: p.return_values.unwrap_or(false),
    })
}

fn validate_op(op: SyncOp, push_hlc: u64, cfg: &SyncConfig) -> Result<Op, SyncError> {
    text_len("collection", &op.collection, MAX_COLLECTION_LEN)?;
    text_len("id", &op.id, MAX_ID_LEN)?;
    let fields = op.fields.map(|f| f.0);
    if let Some(f) = &fields {
        if f.len() > MAX_FIELDS {
            return Err(SyncError::TooLarge("more fields than 256"));
        }
        if f.keys().any(|k| k.len() > MAX_FIELD_NAME_LEN) {
            return Err(SyncError::Invalid(
                "a field name is longer than 256 bytes".into(),
            ));
        }
        let bytes: usize = f
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, |v| v.len()))
            .sum();
        if bytes + op.collection.len() + op.id.len() > cfg.max_record_bytes {
            return Err(SyncError::TooLarge("record larger than max_record_bytes"));
        }
    }
    let change = match op.kind {
        OpKind::Put => match (op.value, fields) {
            (Some(v), None) => {
                if v.len() + op.collection.len() + op.id.len() > cfg.max_record_bytes {
                    return Err(SyncError::TooLarge("record larger than max_record_bytes"));
                }
                Change::Put(BTreeMap::from([(String::new(), v.to_vec())]))
            }
            (None, Some(f)) => {
                let mut put = BTreeMap::new();
                for (k, v) in f {
                    let Some(v) = v else {
                        return Err(SyncError::Invalid("a put's field cannot be null".into()));
                    };
                    put.insert(k, v.to_vec());
                }
                Change::Put(put)
            }
            _ => {
                return Err(SyncError::Invalid(
                    "a put needs exactly one of value and fields".into(),
                ));
            }
        },
        OpKind::Patch => match (op.value, fields) {
            (None, Some(f)) if !f.is_empty() => Change::Patch(
                f.into_iter()
                    .map(|(k, v)| (k, v.map(|v| v.to_vec())))
                    .collect(),
            ),
            _ => {
                return Err(SyncError::Invalid(
                    "a patch needs fields (and no value)".into(),
                ));
            }
        },
        OpKind::Delete => {
            if op.value.is_some() || fields.is_some() || op.expires_at.is_some() {
                return Err(SyncError::Invalid(
                    "a delete takes no value, fields or expiry".into(),
                ));
            }
            Change::Delete
        }
        other => {
            return Err(SyncError::Invalid(format!(
                "unknown op kind {:?}",
                other.as_str()
            )));
        }
    };
    Ok(Op {
        collection: op.collection,
        id: op.id,
        change,
        expected: op.expected_version,
        hlc: op.hlc.unwrap_or(push_hlc),
        expires_at: op.expires_at,
    })
}

/// A commit of one space, as live watchers get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The space's position before the commit.
    pub prev: u64,
    /// Its position after.
    pub position: u64,
    /// The changed records, in position order.
    pub records: Vec<SyncRecord>,
}

/// What a sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepReport {
    /// Records that expired (now tombstones).
    pub expired: u64,
    /// Tombstones removed past the horizon.
    pub purged: u64,
}

enum Cmd {
    Push(PushReq, oneshot::Sender<Result<SyncPushResult, SyncError>>),
    Sweep(oneshot::Sender<Result<SweepReport, SyncError>>),
    /// Stop after the commands queued before it (other handles may still
    /// exist: the hub's, a sweeper's).
    Stop,
}

type Watchers = Arc<DashMap<String, broadcast::Sender<Arc<Committed>>>>;

/// The record-sync engine: a handle to the writer task and the read pool.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct SyncEngine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn SyncRead>,
    config: SyncConfig,
    hlc: Hlc,
    tx: mpsc::Sender<Cmd>,
    watchers: Watchers,
    task: parking_lot::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Cmd::Push(..) => "Push",
            Cmd::Sweep(..) => "Sweep",
            Cmd::Stop => "Stop",
        })
    }
}

impl SyncEngine {
    /// Starts the writer on `store` (opening its connection now, so that a
    /// database that cannot be written fails here).
    pub async fn open(
        store: Arc<dyn SyncRead>,
        config: SyncConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<SyncEngine, StorageError> {
        let hlc = Hlc::new(
            clock,
            u64::try_from(config.max_clock_skew.as_millis()).unwrap_or(u64::MAX),
        );
        let conn = store.writer().await?;
        let (tx, rx) = mpsc::channel(config.queue_capacity.max(1));
        let watchers: Watchers = Arc::default();
        let writer = Writer {
            store: store.clone(),
            conn: Some(conn),
            config: config.clone(),
            hlc: hlc.clone(),
            watchers: watchers.clone(),
        };
        let task = tokio::spawn(writer.run(rx));
        Ok(SyncEngine {
            inner: Arc::new(Inner {
                store,
                config,
                hlc,
                tx,
                watchers,
                task: parking_lot::Mutex::new(Some(task)),
            }),
        })
    }

    /// The settings.
    pub fn config(&self) -> &SyncConfig {
        &self.inner.config
    }

    /// The hub's HLC.
    pub fn hlc(&self) -> &Hlc {
        &self.inner.hlc
    }

    /// Applies a push, all or nothing, once per `(client, seq)`.
    pub async fn push(&self, params: SyncPushParams) -> Result<SyncPushResult, SyncError> {
        self.submit(params)?.await
    }

    /// Checks and validates a push and enqueues it to the writer **now**
    /// (so pushes submitted in order are applied in order, which one
    /// connection's pushes need); the returned future yields the result
    /// after the commit. A full queue is `unavailable` at once.
    pub fn submit(
        &self,
        params: SyncPushParams,
    ) -> Result<
        impl std::future::Future<Output = Result<SyncPushResult, SyncError>> + Send + 'static,
        SyncError,
    > {
        let hlc = &self.inner.hlc;
        hlc.check(params.hlc).map_err(SyncError::Skew)?;
        for op in &params.ops {
            if let Some(t) = op.hlc {
                hlc.check(t).map_err(SyncError::Skew)?;
            }
        }
        let req = validate(params, &self.inner.config)?;
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .try_send(Cmd::Push(req, reply))
            .map_err(|_| SyncError::Unavailable("the sync writer is overloaded".into()))?;
        Ok(async move {
            rx.await
                .map_err(|_| SyncError::Unavailable("the sync writer stopped".into()))?
        })
    }

    /// Expires records and purges tombstones past the horizon (one bounded
    /// round of each; call again while it reports work).
    pub async fn sweep(&self) -> Result<SweepReport, SyncError> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .tx
            .send(Cmd::Sweep(reply))
            .await
            .map_err(|_| SyncError::Unavailable("the sync writer stopped".into()))?;
        rx.await
            .map_err(|_| SyncError::Unavailable("the sync writer stopped".into()))?
    }

    /// Subscribes to `space`'s committed changes. Call it before
    /// [`SyncEngine::pull`] and pass it to [`LiveChanges::new`] with the
    /// final cursor: nothing is missed or repeated.
    pub fn watch(&self, space: &str) -> broadcast::Receiver<Arc<Committed>> {
        let cap = self.inner.config.live_buffer.max(1);
        self.inner
            .watchers
            .entry(space.to_owned())
            .or_insert_with(|| broadcast::channel(cap).0)
            .subscribe()
    }

    /// Starts a pull (see [`Pull::next`]).
    pub async fn pull(&self, params: &SyncPullParams) -> Result<Pull, SyncError> {
        check_space(&params.space)?;
        if let Some(c) = &params.collection {
            text_len("collection", c, MAX_COLLECTION_LEN)?;
        }
        let space = self.inner.store.space(&params.space).await?;
        let cursor = params.cursor.unwrap_or(0);
        let limit = params
            .limit
            .map_or(self.inner.config.page_limit, |l| {
                u32::try_from(l).unwrap_or(u32::MAX)
            })
            .clamp(1, self.inner.config.page_limit.max(1));
        let mut pull = Pull {
            store: self.inner.store.clone(),
            space: space.clone().unwrap_or_default(),
            collection: params.collection.clone(),
            start: cursor,
            cursor,
            reset: false,
            limit,
            count: 0,
            end: None,
            done: false,
            ahead: None,
        };
        if let Some(s) = &space {
            let epoch_differs = params.epoch.as_deref().is_some_and(|e| e != s.epoch);
            if cursor > 0
                && (epoch_differs || cursor < s.horizon_position || cursor > s.last_position)
            {
                pull.reset = true;
                pull.cursor = 0;
                pull.start = 0;
            }
        } else {
            pull.reset = cursor > 0;
            pull.cursor = 0;
            pull.start = 0;
            pull.end = Some(SyncPullFinal::new(0, 0, "", pull.reset, Vec::new(), 0));
        }
        Ok(pull)
    }

    /// A space's collections, usage and positions (an unknown space is
    /// empty, with no epoch yet).
    pub async fn info(&self, space: &str) -> Result<SyncInfoResult, SyncError> {
        check_space(space)?;
        let mut r = SyncInfoResult::default();
        r.limits = self.inner.config.limits_for(space);
        let Some(row) = self.inner.store.space(space).await? else {
            return Ok(r);
        };
        let Some((row, colls)) = self.inner.store.info(row.id).await? else {
            return Ok(r);
        };
        r.position = row.last_position;
        r.epoch = row.epoch;
        r.usage = Usage::new(row.records, row.bytes);
        r.horizon = row.horizon_position;
        r.collections = colls
            .into_iter()
            .map(|c| CollectionInfo::new(c.name, c.records, c.bytes, c.last_position, c.checksum))
            .collect();
        Ok(r)
    }

    /// Stops the writer after the queued commands and closes the store
    /// (other handles of the engine then answer `unavailable`).
    pub async fn close(self) {
        let _ = self.inner.tx.send(Cmd::Stop).await;
        let task = self.inner.task.lock().take();
        let store = self.inner.store.clone();
        drop(self);
        if let Some(t) = task {
            let _ = t.await;
        }
        store.close().await;
    }
}

/// One step of a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullStep {
    /// A chunk of records, as stored (decision Y21; [`RawChunk::decode`]
    /// gives the [`SyncChunk`]).
    Chunk(RawChunk),
    /// The final chunk; the pull is over.
    Final(SyncPullFinal),
}

/// A pull in progress: bounded pages in position order, at constant
/// memory however large the space.
#[derive(Debug)]
pub struct Pull {
    store: Arc<dyn SyncRead>,
    space: SpaceRow,
    collection: Option<String>,
    start: u64,
    cursor: u64,
    reset: bool,
    limit: u32,
    count: u64,
    end: Option<SyncPullFinal>,
    done: bool,
    /// The next page, read while the caller sends this one (one page
    /// ahead at most).
    ahead: Option<tokio::task::JoinHandle<Result<Page, StorageError>>>,
}

impl Drop for Pull {
    fn drop(&mut self) {
        if let Some(h) = self.ahead.take() {
            h.abort();
        }
    }
}

impl Pull {
    /// The query of the page after `after` (without the collection, which
    /// borrows).
    fn query(&self, after: u64) -> PageQuery<'static> {
        PageQuery {
            space: self.space.id,
            after,
            collection: None,
            tombstones_after: if self.start == 0 {
                self.space.last_position
            } else {
                0
            },
            limit: self.limit,
        }
    }

    async fn read(&self, after: u64) -> Result<Page, StorageError> {
        self.store
            .page(PageQuery {
                collection: self.collection.as_deref(),
                ..self.query(after)
            })
            .await
    }

    /// Whether this pull is a reset (the client drops its state first).
    pub fn is_reset(&self) -> bool {
        self.reset
    }

    /// The next step; `None` after the final.
    pub async fn next(&mut self) -> Result<Option<PullStep>, SyncError> {
        if self.done {
            return Ok(None);
        }
        if let Some(f) = self.end.take() {
            self.done = true;
            return Ok(Some(PullStep::Final(f)));
        }
        let page = match self.ahead.take() {
            Some(h) => h
                .await
                .map_err(|_| SyncError::Unavailable("a pull's read was cancelled".into()))??,
            None => self.read(self.cursor).await?,
        };
        if page.end.is_none()
            && let Some(last) = page.records.last()
        {
            // A full page: more may follow; read it while this one is sent.
            let (store, query) = (self.store.clone(), self.query(last.position));
            let collection = self.collection.clone();
            self.ahead = Some(tokio::spawn(async move {
                store
                    .page(PageQuery {
                        collection: collection.as_deref(),
                        ..query
                    })
                    .await
            }));
        }
        if let Some((space, colls)) = page.end {
            if !self.reset && self.start > 0 && space.horizon_position > self.start {
                self.done = true;
                return Err(SyncError::ResetRequired);
            }
            self.end = Some(SyncPullFinal::new(
                space.last_position,
                self.count + page.records.len() as u64,
                space.epoch,
                self.reset,
                colls
                    .into_iter()
                    .map(|c| Checksum::new(c.name, c.records, c.checksum))
                    .collect(),
                space.horizon_position,
            ));
        }
        if page.records.is_empty() {
            // Only at the end (a full page has rows).
            return Box::pin(self.next()).await;
        }
        self.count += page.records.len() as u64;
        self.cursor = page.records.last().map_or(self.cursor, |r| r.position);
        Ok(Some(PullStep::Chunk(RawChunk {
            records: page.records,
            cursor: self.cursor,
            prev: None,
        })))
    }
}

/// Live changes of a space after a pull's final cursor (design Y15).
#[derive(Debug)]
pub struct LiveChanges {
    rx: broadcast::Receiver<Arc<Committed>>,
    after: u64,
    notify_only: bool,
    collection: Option<String>,
}

impl LiveChanges {
    /// Changes from `rx` (made by [`SyncEngine::watch`] before the pull)
    /// after `cursor` (the pull's final), optionally only one collection's
    /// records, or only the cursors.
    pub fn new(
        rx: broadcast::Receiver<Arc<Committed>>,
        cursor: u64,
        collection: Option<String>,
        notify_only: bool,
    ) -> Self {
        LiveChanges {
            rx,
            after: cursor,
            notify_only,
            collection,
        }
    }

    /// The next commit after the cursor, as a live chunk.
    pub async fn next(&mut self) -> Result<SyncChunk, SyncError> {
        loop {
            let c = match self.rx.recv().await {
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(_)) => return Err(SyncError::Lagged),
                Err(broadcast::error::RecvError::Closed) => {
                    return Err(SyncError::Unavailable("the sync writer stopped".into()));
                }
            };
            if c.position <= self.after {
                continue;
            }
            let prev = self.after.max(c.prev);
            self.after = c.position;
            let records = if self.notify_only {
                Vec::new()
            } else {
                c.records
                    .iter()
                    .filter(|r| {
                        r.position > prev
                            && self.collection.as_ref().is_none_or(|k| *k == r.collection)
                    })
                    .cloned()
                    .collect()
            };
            return Ok(SyncChunk::new(records, c.position, Some(prev)));
        }
    }
}

struct Writer {
    store: Arc<dyn SyncRead>,
    conn: Option<Box<dyn SyncWriteConn>>,
    config: SyncConfig,
    hlc: Hlc,
    watchers: Watchers,
}

type Reply = oneshot::Sender<Result<SyncPushResult, SyncError>>;

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut pending: Option<Cmd> = None;
        loop {
            let first = match pending.take() {
                Some(c) => c,
                None => match rx.recv().await {
                    Some(c) => c,
                    None => break,
                },
            };
            match first {
                Cmd::Sweep(reply) => {
                    let r = self.sweep().await;
                    let _ = reply.send(r);
                }
                Cmd::Stop => break,
                Cmd::Push(req, reply) => {
                    let mut ops = req.ops.len();
                    let mut batch = vec![(req, reply)];
                    while batch.len() < self.config.max_batch.max(1) {
                        match rx.try_recv() {
                            Ok(Cmd::Push(r, s)) if ops + r.ops.len() > MAX_GROUP_OPS => {
                                // The next group's first.
                                pending = Some(Cmd::Push(r, s));
                                break;
                            }
                            Ok(Cmd::Push(r, s)) => {
                                ops += r.ops.len();
                                batch.push((r, s));
                            }
                            Ok(other) => {
                                pending = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.push_batch(batch).await;
                }
            }
        }
        if let Some(c) = self.conn.take() {
            c.close().await;
        }
    }

    async fn conn(&mut self) -> Result<&mut Box<dyn SyncWriteConn>, StorageError> {
        if self.conn.is_none() {
            self.conn = Some(self.store.writer().await?);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| StorageError::Database("no writer connection".into()))
    }

    async fn push_batch(&mut self, batch: Vec<(PushReq, Reply)>) {
        let now = self.hlc.wall();
        let out = self.run_batch(&batch, now).await;
        match out {
            Ok(applied) => {
                for ((_, reply), a) in batch.into_iter().zip(applied) {
                    if let Some((space, c)) = a.committed {
                        self.publish(&space, c);
                    }
                    let _ = reply.send(a.result);
                }
            }
            Err(e) => {
                // The connection may be broken: open a new one next time.
                if let Some(c) = self.conn.take() {
                    c.close().await;
                }
                tracing::warn!(error = %e, "sync push batch failed");
                for (_, reply) in batch {
                    let _ = reply.send(Err(SyncError::from(e.clone())));
                }
            }
        }
    }

    async fn run_batch(
        &mut self,
        batch: &[(PushReq, Reply)],
        now: i64,
    ) -> Result<Vec<Applied>, StorageError> {
        let hlc = self.hlc.clone();
        let config = self.config.clone();
        let conn = self.conn().await?;
        conn.begin().await?;
        let r = async {
            let mut group = Group::load(conn.as_mut(), batch.iter().map(|(r, _)| r)).await?;
            let mut out = Vec::with_capacity(batch.len());
            for (req, _) in batch {
                out.push(group.apply(conn.as_mut(), req, &hlc, &config, now).await?);
            }
            group.write(conn.as_mut()).await?;
            Ok::<_, StorageError>(out)
        }
        .await;
        let out = match r {
            Ok(out) => out,
            Err(e) => {
                conn.rollback().await;
                return Err(e);
            }
        };
        if let Err(e) = conn.commit().await {
            conn.rollback().await;
            return Err(e);
        }
        Ok(out)
    }

    fn publish(&self, space: &str, c: Committed) {
        let mut gone = false;
        if let Some(tx) = self.watchers.get(space) {
            gone = tx.send(Arc::new(c)).is_err();
        }
        if gone {
            self.watchers
                .remove_if(space, |_, tx| tx.receiver_count() == 0);
        }
    }

    async fn sweep(&mut self) -> Result<SweepReport, SyncError> {
        let now = self.hlc.wall();
        let r = self.sweep_tx(now).await;
        match r {
            Ok((report, commits)) => {
                for (space, c) in commits {
                    self.publish(&space, c);
                }
                Ok(report)
            }
            Err(e) => {
                if let Some(c) = self.conn.take() {
                    c.close().await;
                }
                Err(e.into())
            }
        }
    }

    async fn sweep_tx(
        &mut self,
        now: i64,
    ) -> Result<(SweepReport, Vec<(String, Committed)>), StorageError> {
        let hlc = self.hlc.clone();
        let horizon = i64::try_from(self.config.tombstone_horizon.as_millis()).unwrap_or(i64::MAX);
        let limit = self.config.sweep_limit.max(1);
        let conn = self.conn().await?;
        conn.begin().await?;
        let r = async {
            let mut report = SweepReport::default();
            let mut spaces: HashMap<i64, (SpaceRow, u64, Vec<SyncRecord>)> = HashMap::new();
            let mut colls: HashMap<(i64, String), CollectionRow> = HashMap::new();
            for (sid, coll, id) in conn.expired(now, limit).await? {
                if let std::collections::hash_map::Entry::Vacant(e) = spaces.entry(sid) {
                    let Some(s) = conn.space_by_id(sid).await? else {
                        continue;
                    };
                    let prev = s.last_position;
                    e.insert((s, prev, Vec::new()));
                }
                let Some(mut rec) = conn.record(sid, &coll, &id).await? else {
                    continue;
                };
                let before = Footprint::of(&rec);
                hlc.observe(rec.state.max_hlc());
                let stamp = Stamp::new(hlc.now(), "");
                if !rec.state.apply(&Change::Delete, &stamp, None) {
                    continue;
                }
                let Some((space, _, changed)) = spaces.get_mut(&sid) else {
                    continue;
                };
                space.last_position += 1;
                rec.state.stamp_change(space.last_position, now);
                let after = Footprint::of(&rec);
                let key = (sid, coll.clone());
                if !colls.contains_key(&key) {
                    let row = conn.collection(sid, &coll).await?.unwrap_or(CollectionRow {
                        name: coll.clone(),
                        ..CollectionRow::default()
                    });
                    colls.insert(key.clone(), row);
                }
                if let Some(c) = colls.get_mut(&key) {
                    account(space, c, &before, &after, rec.state.position);
                }
                conn.put_record(sid, &rec).await?;
                changed.push(wire_record(&rec));
                report.expired += 1;
            }
            for (sid, coll, id, position) in conn
                .old_tombstones(now.saturating_sub(horizon), limit)
                .await?
            {
                if let std::collections::hash_map::Entry::Vacant(e) = spaces.entry(sid) {
                    let Some(s) = conn.space_by_id(sid).await? else {
                        continue;
                    };
                    let prev = s.last_position;
                    e.insert((s, prev, Vec::new()));
                }
                conn.delete_record(sid, &coll, &id).await?;
                if let Some((space, _, _)) = spaces.get_mut(&sid) {
                    space.horizon_position = space.horizon_position.max(position);
                }
                report.purged += 1;
            }
            for ((sid, _), c) in &colls {
                conn.put_collection(*sid, c).await?;
            }
            let mut commits = Vec::new();
            for (_, (space, prev, changed)) in spaces {
                conn.update_space(&space).await?;
                if !changed.is_empty() {
                    commits.push((
                        space.name.clone(),
                        Committed {
                            prev,
                            position: space.last_position,
                            records: changed,
                        },
                    ));
                }
            }
            Ok::<_, StorageError>((report, commits))
        }
        .await;
        match r {
            Ok(v) => {
                conn.commit().await?;
                Ok(v)
            }
            Err(e) => {
                conn.rollback().await;
                Err(e)
            }
        }
    }
}

pub(super) fn new_epoch() -> String {
    format!("{:016x}", rand::random::<u64>())
}
