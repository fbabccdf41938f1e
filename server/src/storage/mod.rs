//! Storage: the database behind durable streams, as two traits with one
//! SQLite and one PostgreSQL implementation.
//!
//! - [`Store`] is shared by every task: reads (catch-up pages, history,
//!   latest per topic, listings) on a pool of connections, and
//!   [`Store::writer`], which opens the one connection that writes.
//! - [`StoreWriter`] is that connection, owned by the streams writer task
//!   (`crate::streams`): explicit transactions, bulk loads of the state a
//!   batch needs, and one bulk [`WriteSet`] per batch, so a batch costs a
//!   handful of statements on either backend.
//!
//! The stream rules (offsets, idempotency, retention decisions) live once,
//! in `crate::streams`, above these traits; a backend only stores and
//! loads rows. The cluster mode will add a shared-PostgreSQL writer (row
//! locks instead of one writer's cache) as one more implementation of the
//! same traits.
//!
//! Queries are runtime-checked (`sqlx::query`), never the compile-time
//! macros, and each backend has its own module and migrations
//! (`server/migrations/{sqlite,postgres}`), embedded with
//! `sqlx::migrate!`. Published migrations are never edited.
//!
//! Every failure of the database is a [`StorageError`]; the streams layer
//! maps all of them to the wire's `unavailable` (retryable).

pub mod postgres;
pub mod sqlite;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;

/// What a storage call returns.
pub type StoreFuture<'a, T> = BoxFuture<'a, Result<T, StorageError>>;

/// Why the database could not do what was asked. Messages never contain
/// payloads.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// The database reported an error or the connection failed.
    #[error("database error: {0}")]
    Database(Arc<str>),
    /// The database is locked by another process for longer than the busy
    /// timeout (SQLite).
    #[error("database busy: {0}")]
    Busy(Arc<str>),
    /// The operation needs a database shared by several hubs (cluster
    /// mode), which this backend is not.
    #[error("this database cannot be shared by several hubs (cluster mode needs PostgreSQL)")]
    SharedUnsupported,
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(Arc<str>),
    /// The database URL is not one this build understands.
    #[error("unsupported database url (expected sqlite:… or postgres://…)")]
    UnsupportedUrl,
    /// The database holds a value this build cannot represent.
    #[error("corrupt value in column {0}")]
    Corrupt(&'static str),
}

impl From<sqlx::Error> for StorageError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e {
            // SQLITE_BUSY (5) and SQLITE_LOCKED (6), with extended codes.
            if let Some(code) = db.code()
                && let Ok(n) = code.parse::<u32>()
                && matches!(n & 0xff, 5 | 6)
            {
                return StorageError::Busy(e.to_string().into());
            }
        }
        StorageError::Database(e.to_string().into())
    }
}

impl From<sqlx::migrate::MigrateError> for StorageError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StorageError::Migrate(e.to_string().into())
    }
}

/// Which database a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file in the data directory.
    Sqlite,
    /// A PostgreSQL database.
    Postgres,
}

/// How far a write transaction goes before it counts as done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flush {
    /// Committed; the database may not have flushed it to disk yet.
    Committed,
    /// Committed and flushed to stable storage.
    Fsynced,
}

/// Where the database is and how to open it.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// `sqlite:PATH` / `sqlite://PATH`, or `postgres://…` / `postgresql://…`.
    pub url: String,
    /// Apply the embedded migrations on open (the default); with `false` a
    /// database whose migrations are behind fails to open.
    pub migrate: bool,
    /// Read connections in the pool [default: 4].
    pub read_connections: u32,
    /// How long a SQLite statement waits for a lock held by another
    /// process before it fails with [`StorageError::Busy`] [default: 5s].
    pub busy_timeout: Duration,
    /// PostgreSQL: a `search_path` to set on every connection (one schema
    /// per test; empty for the server's default).
    pub schema: String,
    /// PostgreSQL: the writing connection's `application_name`.
    pub writer_name: String,
}

impl StoreOptions {
    /// Options for `url` with the defaults.
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            migrate: true,
            read_connections: DEFAULT_READ_CONNECTIONS,
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
            schema: String::new(),
            writer_name: postgres::WRITER_APPLICATION_NAME.to_owned(),
        }
    }

    /// The default database: `plexus.db` in `data_dir`.
    pub fn in_data_dir(data_dir: &Path) -> Self {
        StoreOptions::new(format!("sqlite:{}", data_dir.join(SQLITE_FILE).display()))
    }

    /// The backend the URL names.
    pub fn backend(&self) -> Result<Backend, StorageError> {
        let u = self.url.as_str();
        if u.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if u.starts_with("postgres://") || u.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StorageError::UnsupportedUrl)
        }
    }

    /// For SQLite, the file the URL names.
    pub fn sqlite_path(&self) -> Option<PathBuf> {
        let rest = self.url.strip_prefix("sqlite:")?;
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let path = rest.split('?').next().unwrap_or(rest);
        Some(PathBuf::from(path))
    }
}

/// The SQLite file's name in the data directory.
pub const SQLITE_FILE: &str = "plexus.db";
/// Default size of the read pool.
pub const DEFAULT_READ_CONNECTIONS: u32 = 4;
/// Default SQLite busy timeout.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens the store `options` names, applying migrations unless disabled.
pub async fn open(options: &StoreOptions) -> Result<Arc<dyn Store>, StorageError> {
    match options.backend()? {
        Backend::Sqlite => Ok(Arc::new(sqlite::SqliteStore::open(options).await?)),
        Backend::Postgres => Ok(Arc::new(postgres::PgStore::open(options).await?)),
    }
}

/// Applies the embedded migrations and nothing else (`plexus migrate`).
/// Returns the versions that were applied by this call.
pub async fn migrate(options: &StoreOptions) -> Result<Vec<i64>, StorageError> {
    match options.backend()? {
        Backend::Sqlite => sqlite::migrate_only(options).await,
        Backend::Postgres => postgres::migrate_only(options).await,
    }
}

/// A stream namespace as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamespaceRow {
    /// Its id.
    pub id: i64,
    /// The configured pattern (its identity).
    pub pattern: String,
    /// Its epoch.
    pub epoch: String,
    /// The last position assigned (0: none yet).
    pub last_position: u64,
}

/// A durable topic as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicRow {
    /// Its id (assigned by the writer).
    pub id: i64,
    /// Its namespace.
    pub ns: i64,
    /// The topic.
    pub name: Arc<str>,
    /// Its epoch.
    pub epoch: Arc<str>,
    /// The first offset still stored (`last_offset + 1` when none is).
    pub first_offset: u64,
    /// The last offset assigned (0: none yet).
    pub last_offset: u64,
    /// The namespace position of the event at `last_offset` (0: none).
    pub last_position: u64,
    /// Bytes of the events still stored.
    pub bytes: u64,
    /// The greatest namespace position retention removed from this topic
    /// (0: none).
    pub pruned_position: u64,
}

impl TopicRow {
    /// Events still stored.
    pub fn count(&self) -> u64 {
        (self.last_offset + 1).saturating_sub(self.first_offset)
    }
}

/// A producer's idempotency state on one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProducerRow {
    /// Its id (assigned by the writer).
    pub id: i64,
    /// The topic.
    pub topic: i64,
    /// The producer id the client chose.
    pub name: Arc<str>,
    /// The greatest sequence number stored.
    pub last_seq: u64,
    /// Offset and position of the event with `last_seq`, while it is known.
    pub last_event: Option<(u64, u64)>,
    /// The greatest sequence number of this producer that retention
    /// removed (0: none).
    pub pruned_seq: u64,
}

/// An idempotency key and the event it stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    /// The topic.
    pub topic: i64,
    /// The key.
    pub key: Arc<str>,
    /// The event's offset.
    pub offset: u64,
    /// The event's position.
    pub position: u64,
    /// When it was stored (milliseconds of the streams clock).
    pub ts: i64,
}

/// One event to insert.
#[derive(Debug, Clone)]
pub struct EventRecord {
    /// Its topic.
    pub topic: i64,
    /// Its offset.
    pub offset: u64,
    /// Its namespace.
    pub ns: i64,
    /// Its namespace position.
    pub position: u64,
    /// When it was stored (milliseconds of the streams clock).
    pub ts: i64,
    /// The producer that stored it, with its sequence number.
    pub producer: Option<(i64, u64)>,
    /// The encoded `event` params map (topic, data, from, offset,
    /// position): what catch-up and history send as they are.
    pub body: Bytes,
}

/// Everything one batch writes, applied by [`StoreWriter::write`] in the
/// open transaction.
#[derive(Debug, Default)]
pub struct WriteSet {
    /// New events, in commit order.
    pub events: Vec<EventRecord>,
    /// Topics to insert or update (the whole row).
    pub topics: Vec<TopicRow>,
    /// Producers to insert or update (the whole row).
    pub producers: Vec<ProducerRow>,
    /// Idempotency keys to insert or replace.
    pub keys: Vec<KeyRow>,
    /// New last positions of namespaces.
    pub namespaces: Vec<(i64, u64)>,
}

impl WriteSet {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.topics.is_empty()
            && self.producers.is_empty()
            && self.keys.is_empty()
            && self.namespaces.is_empty()
    }

    /// Empties it, keeping the allocations.
    pub fn clear(&mut self) {
        self.events.clear();
        self.topics.clear();
        self.producers.clear();
        self.keys.clear();
        self.namespaces.clear();
    }
}

/// An event as retention sees it (no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OldEvent {
    /// Its topic.
    pub topic: i64,
    /// Its offset.
    pub offset: u64,
    /// Its namespace position.
    pub position: u64,
    /// When it was stored.
    pub ts: i64,
    /// Its size in bytes.
    pub size: u64,
    /// Its producer and sequence number.
    pub producer: Option<(i64, u64)>,
}

/// Which way a page of one topic is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Offsets upwards from `from` (inclusive).
    Forward,
    /// Offsets downwards from `from` (inclusive).
    Backward,
}

/// What to read from one topic.
#[derive(Debug, Clone, Copy)]
pub struct TopicRead {
    /// The topic.
    pub topic: i64,
    /// The first offset to read (inclusive).
    pub from: u64,
    /// Forward: the last offset to read (inclusive); backward: the lowest.
    pub until: u64,
    /// The direction.
    pub order: Order,
    /// Most rows to fetch.
    pub limit: u32,
    /// Most body bytes in the page: an event that would pass it is left
    /// for the next page (the first event is always taken).
    pub max_bytes: usize,
}

/// What to read from a namespace, by position.
#[derive(Debug, Clone, Copy)]
pub struct NamespaceRead {
    /// The namespace.
    pub ns: i64,
    /// Read positions greater than this.
    pub after: u64,
    /// Most rows to fetch (matching or not).
    pub limit: u32,
    /// Most body bytes in the page, as in [`TopicRead::max_bytes`].
    pub max_bytes: usize,
}

/// Metadata of one event in a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventMeta {
    /// Its offset.
    pub offset: u64,
    /// Its namespace position.
    pub position: u64,
    /// Its body's length in the page's buffer.
    pub len: u32,
}

/// A page of events: their bodies back to back in one buffer (no
/// allocation per event), ready to be framed as a CBOR array.
#[derive(Debug, Default, Clone)]
pub struct EventPage {
    /// The bodies, concatenated.
    pub bodies: Vec<u8>,
    /// One entry per event, in page order.
    pub metas: Vec<EventMeta>,
    /// Rows the query produced (matching or not, taken or not).
    pub rows: u32,
    /// The greatest position looked at (namespace reads: also events that
    /// did not match).
    pub scanned_position: u64,
    /// The query stopped because the byte budget was reached, not because
    /// it ran out of rows.
    pub truncated: bool,
}

impl EventPage {
    /// Empties it, keeping the allocations.
    pub fn clear(&mut self) {
        self.bodies.clear();
        self.metas.clear();
        self.rows = 0;
        self.scanned_position = 0;
        self.truncated = false;
    }

    /// Appends one event.
    pub fn push(&mut self, offset: u64, position: u64, body: &[u8]) {
        self.bodies.extend_from_slice(body);
        self.metas.push(EventMeta {
            offset,
            position,
            len: u32::try_from(body.len()).unwrap_or(u32::MAX),
        });
    }

    /// Events in the page.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// Whether the page holds no event.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    /// Iterates over `(meta, body)`.
    pub fn iter(&self) -> impl Iterator<Item = (EventMeta, &[u8])> + '_ {
        let mut at = 0usize;
        self.metas.iter().map(move |m| {
            let end = at + m.len as usize;
            let body = &self.bodies[at..end];
            at = end;
            (*m, body)
        })
    }
}

/// The last event of one topic (`history.latest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatestRow {
    /// The topic.
    pub topic: String,
    /// Its last event's body.
    pub body: Vec<u8>,
}

/// The database, shared by every task.
pub trait Store: Send + Sync + fmt::Debug + 'static {
    /// Which database this is.
    fn backend(&self) -> Backend;

    /// Opens the one connection that writes (the streams writer owns it).
    fn writer(&self) -> StoreFuture<'_, Box<dyn StoreWriter>>;

    /// Every namespace row.
    fn namespaces(&self) -> StoreFuture<'_, Vec<NamespaceRow>>;

    /// A topic's row, if it has one.
    fn topic<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<TopicRow>>;

    /// Appends a page of `read.topic`'s events to `out`.
    fn read_topic<'a>(&'a self, read: TopicRead, out: &'a mut EventPage) -> StoreFuture<'a, ()>;

    /// Appends a page of a namespace's events, in position order, to `out`:
    /// only those whose topic `keep` accepts are taken, but
    /// `scanned_position` covers every row read.
    fn read_namespace<'a>(
        &'a self,
        read: NamespaceRead,
        keep: &'a (dyn Fn(&str) -> bool + Send + Sync),
        out: &'a mut EventPage,
    ) -> StoreFuture<'a, ()>;

    /// Topics of `ns` (name above `after`, in byte order, at most `limit`)
    /// whose retention removed a position greater than `position`, with the
    /// greatest such position.
    fn pruned_topics<'a>(
        &'a self,
        ns: i64,
        position: u64,
        after: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<(String, u64)>>;

    /// The last stored event of each topic of `ns` whose name is in
    /// `[lo, hi)` (`hi` `None`: no upper bound) and above `after`, in byte
    /// order, at most `limit` topics.
    fn latest<'a>(
        &'a self,
        ns: i64,
        lo: &'a str,
        hi: Option<&'a str>,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<LatestRow>>;

    /// Topics in byte order after `after`, at most `limit` (`plexus
    /// streams`).
    fn list_topics<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<TopicRow>>;

    /// Closes the pool.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// The one writing connection. Only the streams writer task calls it, one
/// call at a time; every write happens between [`StoreWriter::begin`] and
/// [`StoreWriter::commit`] (or [`StoreWriter::rollback`]).
pub trait StoreWriter: Send {
    /// Starts a write transaction that will reach `flush` when committed
    /// (SQLite: `BEGIN IMMEDIATE` after setting `synchronous`; PostgreSQL:
    /// `BEGIN` and `synchronous_commit` for this transaction).
    fn begin(&mut self, flush: Flush) -> StoreFuture<'_, ()>;

    /// Commits the open transaction.
    fn commit(&mut self) -> StoreFuture<'_, ()>;

    /// Closes the connection cleanly.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;

    /// Rolls the open transaction back (also when the connection is
    /// broken: the error is then ignored and the connection discarded).
    fn rollback(&mut self) -> StoreFuture<'_, ()>;

    /// Inserts the namespace if it is new (with `epoch`) and returns its
    /// row.
    fn ensure_namespace<'a>(
        &'a mut self,
        pattern: &'a str,
        epoch: &'a str,
    ) -> StoreFuture<'a, NamespaceRow>;

    /// The greatest topic id and producer id in use (0 when none).
    fn max_ids(&mut self) -> StoreFuture<'_, (i64, i64)>;

    /// The rows of the named topics that exist.
    fn load_topics<'a>(&'a mut self, names: &'a [Arc<str>]) -> StoreFuture<'a, Vec<TopicRow>>;

    /// The rows of the topics with these ids.
    fn load_topics_by_id<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<TopicRow>>;

    /// The rows of the named `(topic, producer)` pairs that exist.
    fn load_producers<'a>(
        &'a mut self,
        keys: &'a [(i64, Arc<str>)],
    ) -> StoreFuture<'a, Vec<ProducerRow>>;

    /// Offset and position of the stored event of `producer` with `seq`.
    fn find_seq(&mut self, producer: i64, seq: u64) -> StoreFuture<'_, Option<(u64, u64)>>;

    /// The named `(topic, key)` pairs stored at or after `min_ts`.
    fn load_keys<'a>(
        &'a mut self,
        keys: &'a [(i64, Arc<str>)],
        min_ts: i64,
    ) -> StoreFuture<'a, Vec<KeyRow>>;

    /// Applies a batch's writes.
    fn write<'a>(&'a mut self, set: &'a WriteSet) -> StoreFuture<'a, ()>;

    /// The oldest stored events of `topic`, at most `limit`.
    fn oldest(&mut self, topic: i64, limit: u32) -> StoreFuture<'_, Vec<OldEvent>>;

    /// Stored events of `ns` with a position above `after`, in position
    /// order, at most `limit`.
    fn oldest_in_namespace(
        &mut self,
        ns: i64,
        after: u64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OldEvent>>;

    /// Deletes the events of `topic` up to `offset` (inclusive).
    fn delete_events(&mut self, topic: i64, offset: u64) -> StoreFuture<'_, u64>;

    /// Deletes at most `limit` idempotency keys stored before `before_ts`;
    /// returns how many.
    fn delete_keys(&mut self, before_ts: i64, limit: u32) -> StoreFuture<'_, u64>;

    /// Raises `pruned_seq` of each `(producer, seq)`.
    fn prune_producers<'a>(&'a mut self, pruned: &'a [(i64, u64)]) -> StoreFuture<'a, ()>;

    /// After a reset of `topic`: forgets where its producers' last events
    /// were and counts every stored sequence number as removed.
    fn reset_producers(&mut self, topic: i64) -> StoreFuture<'_, ()>;

    /// Deletes every idempotency key of `topic`.
    fn delete_topic_keys(&mut self, topic: i64) -> StoreFuture<'_, u64>;

    /// Cluster mode: loads the topics named (like
    /// [`StoreWriter::load_topics`]) and locks their rows until the
    /// transaction ends, in id order (so that nodes never lock two topics
    /// in opposite orders). Only PostgreSQL implements it.
    fn lock_topics<'a>(&'a mut self, names: &'a [Arc<str>]) -> StoreFuture<'a, Vec<TopicRow>> {
        let _ = names;
        Box::pin(async { Err(StorageError::SharedUnsupported) })
    }

    /// Cluster mode: [`StoreWriter::load_topics_by_id`], locking the rows.
    fn lock_topics_by_id<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<TopicRow>> {
        let _ = ids;
        Box::pin(async { Err(StorageError::SharedUnsupported) })
    }

    /// Cluster mode: takes the transaction-scoped lock on creating topics
    /// and producers, then returns the greatest ids in use (as
    /// [`StoreWriter::max_ids`]): new rows get ids above them.
    fn lock_ids(&mut self) -> StoreFuture<'_, (i64, i64)> {
        Box::pin(async { Err(StorageError::SharedUnsupported) })
    }

    /// Cluster mode: locks the namespaces' rows (in id order) and returns
    /// each one's last position.
    fn lock_namespaces<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<(i64, u64)>> {
        let _ = ids;
        Box::pin(async { Err(StorageError::SharedUnsupported) })
    }

    /// Ids of topics of `ns` above `after` holding more than `max_events`
    /// events or more than `max_bytes` bytes, at most `limit`.
    fn over_limit_topics(
        &mut self,
        ns: i64,
        max_events: Option<u64>,
        max_bytes: Option<u64>,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<i64>>;
}

/// Converts a stored integer to `u64`.
pub(crate) fn u(v: i64, column: &'static str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(column))
}

/// Converts a `u64` to a stored integer, saturating (offsets, positions and
/// sequence numbers the writer stores are checked to fit; this is for
/// bounds in queries).
pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
