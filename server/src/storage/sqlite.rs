//! SQLite: one file in the data directory, in WAL mode, one connection that
//! writes and a pool of readers.
//!
//! Pragmas, and why:
//!
//! - `journal_mode = WAL`: readers never block the writer nor the writer
//!   them; a commit appends to the WAL instead of rewriting pages.
//! - `synchronous`: `FULL` for a transaction holding an `fsynced` write
//!   (the WAL is fsynced at every commit), `NORMAL` for one with only
//!   `committed` writes (the WAL is fsynced at checkpoints: a commit
//!   survives a crash of the process, not necessarily a power loss). The
//!   writer switches it between transactions, never inside one.
//! - `BEGIN IMMEDIATE` for every write transaction: the write lock is taken
//!   up front, so a transaction never fails half way because another
//!   connection (a backup tool, `plexus streams`) started writing.
//! - `busy_timeout` (default 5 s): how long a statement waits for a lock
//!   held by another process before it fails as busy (→ `unavailable`).
//! - `foreign_keys = ON`: topics must name a namespace.
//! - `temp_store = MEMORY`, `cache_size = -32768` (32 MiB per connection),
//!   `mmap_size = 256 MiB`: catch-up reads large ranges; mapping the file
//!   avoids a copy per page.
//! - readers: `query_only = ON`, so a bug can never write through them.

use std::sync::Arc;

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Executor, Row, Sqlite};

use super::{
    Backend, EventPage, EventRecord, Flush, KeyRow, LatestRow, NamespaceRead, NamespaceRow,
    OldEvent, Order, ProducerRow, StorageError, Store, StoreFuture, StoreOptions, StoreWriter,
    TopicRead, TopicRow, WriteSet, i, u,
};

/// The embedded SQLite migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

/// Rows per multi-row statement, largest first: a batch of n rows runs as
/// few statements of these sizes (bounded number of distinct statements,
/// all cached prepared).
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// Rows the reader's worker thread sends ahead of the consumer.
const READ_ROW_BUFFER: usize = 512;

const TOPIC_COLS: &str =
    "id, ns, name, epoch, first_offset, last_offset, last_position, bytes, pruned_position";
const PRODUCER_COLS: &str = "id, topic, name, last_seq, last_offset, last_position, pruned_seq";
const OLD_COLS: &str = "topic, off, position, ts, size, producer, seq";

/// See [`options`]: at least the largest page read at once.
const ROW_BUFFER: usize = 512;

pub(crate) fn options(opts: &StoreOptions) -> Result<SqliteConnectOptions, StorageError> {
    let path = opts.sqlite_path().ok_or(StorageError::UnsupportedUrl)?;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| StorageError::Database(e.to_string().into()))?;
    }
    Ok(SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(opts.busy_timeout)
        .foreign_keys(true)
        .pragma("temp_store", "MEMORY")
        .pragma("cache_size", "-32768")
        .pragma("mmap_size", "268435456")
        // Rows the connection's worker thread may read ahead of the reader:
        // a whole page of a pull or a catch-up, instead of waking the reader
        // every 50 rows (sqlx's default).
        .row_buffer_size(ROW_BUFFER))
}

async fn check_migrated(conn: &mut SqliteConnection) -> Result<(), StorageError> {
    // No table yet: nothing applied.
    let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut *conn)
        .await
        .unwrap_or_default();
    for m in MIGRATOR.iter() {
        if !applied.contains(&m.version) {
            return Err(StorageError::Migrate(
                format!(
                    "the database lacks migration {} ({}); run `plexus migrate`",
                    m.version, m.description
                )
                .into(),
            ));
        }
    }
    Ok(())
}

/// Applies the migrations and returns the versions applied now.
pub async fn migrate_only(opts: &StoreOptions) -> Result<Vec<i64>, StorageError> {
    let mut conn = SqliteConnection::connect_with(&options(opts)?).await?;
    let before: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut conn)
        .await
        .unwrap_or_default();
    MIGRATOR.run(&mut conn).await?;
    let after: Vec<i64> = sqlx::query_scalar("SELECT version FROM _sqlx_migrations")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    Ok(after.into_iter().filter(|v| !before.contains(v)).collect())
}

/// The SQLite store.
#[derive(Debug)]
pub struct SqliteStore {
    write_options: SqliteConnectOptions,
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating) the file, applies the migrations unless
    /// `opts.migrate` is false, and opens the read pool.
    pub async fn open(opts: &StoreOptions) -> Result<SqliteStore, StorageError> {
        let write_options = options(opts)?;
        let mut conn = SqliteConnection::connect_with(&write_options).await?;
        if opts.migrate {
            MIGRATOR.run(&mut conn).await?;
        } else {
            check_migrated(&mut conn).await?;
        }
        conn.close().await?;
        let read_options = write_options
            .clone()
            .pragma("query_only", "ON")
            .row_buffer_size(READ_ROW_BUFFER);
        let pool = SqlitePoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(read_options)
            .await?;
        Ok(SqliteStore {
            write_options,
            pool,
        })
    }
}

fn topic_row(r: &SqliteRow) -> Result<TopicRow, StorageError> {
    Ok(TopicRow {
        id: r.try_get(0)?,
        ns: r.try_get(1)?,
        name: Arc::from(r.try_get::<&str, _>(2)?),
        epoch: Arc::from(r.try_get::<&str, _>(3)?),
        first_offset: u(r.try_get(4)?, "first_offset")?,
        last_offset: u(r.try_get(5)?, "last_offset")?,
        last_position: u(r.try_get(6)?, "last_position")?,
        bytes: u(r.try_get(7)?, "bytes")?,
        pruned_position: u(r.try_get(8)?, "pruned_position")?,
    })
}

fn producer_row(r: &SqliteRow) -> Result<ProducerRow, StorageError> {
    let off: Option<i64> = r.try_get(4)?;
    let pos: Option<i64> = r.try_get(5)?;
    let last_event = match (off, pos) {
        (Some(o), Some(p)) => Some((u(o, "last_offset")?, u(p, "last_position")?)),
        _ => None,
    };
    Ok(ProducerRow {
        id: r.try_get(0)?,
        topic: r.try_get(1)?,
        name: Arc::from(r.try_get::<&str, _>(2)?),
        last_seq: u(r.try_get(3)?, "last_seq")?,
        last_event,
        pruned_seq: u(r.try_get(6)?, "pruned_seq")?,
    })
}

fn old_event(r: &SqliteRow) -> Result<OldEvent, StorageError> {
    let producer: Option<i64> = r.try_get(5)?;
    let seq: Option<i64> = r.try_get(6)?;
    Ok(OldEvent {
        topic: r.try_get(0)?,
        offset: u(r.try_get(1)?, "off")?,
        position: u(r.try_get(2)?, "position")?,
        ts: r.try_get(3)?,
        size: u(r.try_get(4)?, "size")?,
        producer: match (producer, seq) {
            (Some(p), Some(s)) => Some((p, u(s, "seq")?)),
            _ => None,
        },
    })
}

impl Store for SqliteStore {
    fn backend(&self) -> Backend {
        Backend::Sqlite
    }

    fn writer(&self) -> StoreFuture<'_, Box<dyn StoreWriter>> {
        Box::pin(async move {
            let conn = SqliteConnection::connect_with(&self.write_options).await?;
            Ok(Box::new(SqliteWriter::new(conn)) as Box<dyn StoreWriter>)
        })
    }

    fn namespaces(&self) -> StoreFuture<'_, Vec<NamespaceRow>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT id, pattern, epoch, last_position FROM namespaces")
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(NamespaceRow {
                        id: r.try_get(0)?,
                        pattern: r.try_get(1)?,
                        epoch: r.try_get(2)?,
                        last_position: u(r.try_get(3)?, "last_position")?,
                    })
                })
                .collect()
        })
    }

    fn topic<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<TopicRow>> {
        Box::pin(async move {
            let sql = format!("SELECT {TOPIC_COLS} FROM topics WHERE name = ?");
            let row = sqlx::query(&sql)
                .bind(name)
                .fetch_optional(&self.pool)
                .await?;
            row.as_ref().map(topic_row).transpose()
        })
    }

    fn read_topic<'a>(&'a self, read: TopicRead, out: &'a mut EventPage) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let sql = match read.order {
                Order::Forward => {
                    "SELECT off, position, body FROM events \
                     WHERE topic = ? AND off >= ? AND off <= ? ORDER BY off LIMIT ?"
                }
                Order::Backward => {
                    "SELECT off, position, body FROM events \
                     WHERE topic = ? AND off <= ? AND off >= ? ORDER BY off DESC LIMIT ?"
                }
            };
            let mut rows = sqlx::query(sql)
                .bind(read.topic)
                .bind(i(read.from))
                .bind(i(read.until))
                .bind(i64::from(read.limit))
                .fetch(&self.pool);
            let start = out.bodies.len();
            while let Some(r) = rows.try_next().await? {
                let body: &[u8] = r.try_get(2)?;
                if out.bodies.len() > start
                    && out.bodies.len() + body.len() > start + read.max_bytes
                {
                    out.truncated = true;
                    break;
                }
                out.rows += 1;
                let off = u(r.try_get(0)?, "off")?;
                let pos = u(r.try_get(1)?, "position")?;
                out.push(off, pos, body);
                out.scanned_position = out.scanned_position.max(pos);
            }
            Ok(())
        })
    }

    fn read_namespace<'a>(
        &'a self,
        read: NamespaceRead,
        keep: &'a (dyn Fn(&str) -> bool + Send + std::marker::Sync),
        out: &'a mut EventPage,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let mut rows = sqlx::query(
                "SELECT e.off, e.position, e.body, t.name FROM events e \
                 JOIN topics t ON t.id = e.topic \
                 WHERE e.ns = ? AND e.position > ? ORDER BY e.position LIMIT ?",
            )
            .bind(read.ns)
            .bind(i(read.after))
            .bind(i64::from(read.limit))
            .fetch(&self.pool);
            let start = out.bodies.len();
            while let Some(r) = rows.try_next().await? {
                let pos = u(r.try_get(1)?, "position")?;
                if keep(r.try_get::<&str, _>(3)?) {
                    let body: &[u8] = r.try_get(2)?;
                    if out.bodies.len() > start
                        && out.bodies.len() + body.len() > start + read.max_bytes
                    {
                        out.truncated = true;
                        break;
                    }
                    let off = u(r.try_get(0)?, "off")?;
                    out.push(off, pos, body);
                }
                out.rows += 1;
                out.scanned_position = pos;
            }
            Ok(())
        })
    }

    fn pruned_topics<'a>(
        &'a self,
        ns: i64,
        position: u64,
        after: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<(String, u64)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT name, pruned_position FROM topics \
                 WHERE ns = ? AND pruned_position > ? AND name > ? ORDER BY name LIMIT ?",
            )
            .bind(ns)
            .bind(i(position))
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?, "pruned_position")?)))
                .collect()
        })
    }

    fn latest<'a>(
        &'a self,
        ns: i64,
        lo: &'a str,
        hi: Option<&'a str>,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<LatestRow>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT t.name, e.body FROM topics t \
                 JOIN events e ON e.topic = t.id AND e.off = t.last_offset \
                 WHERE t.ns = ? AND t.name >= ? AND (? IS NULL OR t.name < ?) \
                 AND (? IS NULL OR t.name > ?) ORDER BY t.name LIMIT ?",
            )
            .bind(ns)
            .bind(lo)
            .bind(hi)
            .bind(hi)
            .bind(after)
            .bind(after)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(LatestRow {
                        topic: r.try_get(0)?,
                        body: r.try_get(1)?,
                    })
                })
                .collect()
        })
    }

    fn list_topics<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {TOPIC_COLS} FROM topics WHERE (? IS NULL OR name > ?) \
                 ORDER BY name LIMIT ?"
            );
            let rows = sqlx::query(&sql)
                .bind(after)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(&self.pool)
                .await?;
            rows.iter().map(topic_row).collect()
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move { self.pool.close().await })
    }
}

/// Multi-row statements, one per chunk size in [`CHUNKS`].
#[derive(Debug)]
struct Multi {
    sql: Vec<String>,
}

impl Multi {
    fn new(head: &str, cols: usize, tail: &str) -> Multi {
        let row = format!("({})", vec!["?"; cols].join(", "));
        let sql = CHUNKS
            .iter()
            .map(|&n| format!("{head} VALUES {}{tail}", vec![row.as_str(); n].join(", ")))
            .collect();
        Multi { sql }
    }
}

/// Runs `rows` through the multi-row statement in as few statements as
/// [`CHUNKS`] allows.
async fn exec_multi<'q, T>(
    conn: &mut SqliteConnection,
    multi: &'q Multi,
    rows: &'q [T],
    bind: impl Fn(Query<'q>, &'q T) -> Query<'q>,
) -> Result<(), StorageError> {
    let mut rest = rows;
    while !rest.is_empty() {
        let (k, &n) = CHUNKS
            .iter()
            .enumerate()
            .find(|(_, n)| **n <= rest.len())
            .unwrap_or((CHUNKS.len() - 1, &1));
        let (now, later) = rest.split_at(n);
        let mut q = sqlx::query(&multi.sql[k]);
        for row in now {
            q = bind(q, row);
        }
        q.execute(&mut *conn).await?;
        rest = later;
    }
    Ok(())
}

/// The SQLite writing connection.
#[derive(Debug)]
pub struct SqliteWriter {
    conn: SqliteConnection,
    flush: Option<Flush>,
    events: Multi,
    topics: Multi,
    producers: Multi,
    keys: Multi,
}

impl SqliteWriter {
    fn new(conn: SqliteConnection) -> SqliteWriter {
        SqliteWriter {
            conn,
            flush: None,
            events: Multi::new(
                "INSERT INTO events (topic, off, ns, position, ts, size, producer, seq, body)",
                9,
                "",
            ),
            topics: Multi::new(
                &format!("INSERT INTO topics ({TOPIC_COLS})"),
                9,
                " ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
                 first_offset = excluded.first_offset, last_offset = excluded.last_offset, \
                 last_position = excluded.last_position, bytes = excluded.bytes, pruned_position = excluded.pruned_position",
            ),
            producers: Multi::new(
                &format!("INSERT INTO producers ({PRODUCER_COLS})"),
                7,
                " ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, \
                 last_offset = excluded.last_offset, last_position = excluded.last_position, \
                 pruned_seq = excluded.pruned_seq",
            ),
            keys: Multi::new(
                "INSERT INTO idempotency_keys (topic, key, off, position, ts)",
                5,
                " ON CONFLICT (topic, key) DO UPDATE SET off = excluded.off, \
                 position = excluded.position, ts = excluded.ts",
            ),
        }
    }
}

impl StoreWriter for SqliteWriter {
    fn begin(&mut self, flush: Flush) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            if self.flush != Some(flush) {
                let sql = match flush {
                    Flush::Fsynced => "PRAGMA synchronous = FULL",
                    Flush::Committed => "PRAGMA synchronous = NORMAL",
                };
                self.conn.execute(sql).await?;
                self.flush = Some(flush);
            }
            self.conn.execute("BEGIN IMMEDIATE").await?;
            Ok(())
        })
    }

    fn commit(&mut self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            self.conn.execute("COMMIT").await?;
            Ok(())
        })
    }

    fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let _ = self.conn.close().await;
        })
    }

    fn rollback(&mut self) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            // "no transaction is active" when the failure already rolled it
            // back (SQLite does so for some errors): nothing to undo.
            let _ = self.conn.execute("ROLLBACK").await;
            Ok(())
        })
    }

    fn ensure_namespace<'a>(
        &'a mut self,
        pattern: &'a str,
        epoch: &'a str,
    ) -> StoreFuture<'a, NamespaceRow> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO namespaces (pattern, epoch) VALUES (?, ?) \
                 ON CONFLICT (pattern) DO NOTHING",
            )
            .bind(pattern)
            .bind(epoch)
            .execute(&mut self.conn)
            .await?;
            let r = sqlx::query(
                "SELECT id, pattern, epoch, last_position FROM namespaces WHERE pattern = ?",
            )
            .bind(pattern)
            .fetch_one(&mut self.conn)
            .await?;
            Ok(NamespaceRow {
                id: r.try_get(0)?,
                pattern: r.try_get(1)?,
                epoch: r.try_get(2)?,
                last_position: u(r.try_get(3)?, "last_position")?,
            })
        })
    }

    fn max_ids(&mut self) -> StoreFuture<'_, (i64, i64)> {
        Box::pin(async move {
            let r = sqlx::query(
                "SELECT (SELECT coalesce(max(id), 0) FROM topics), \
                        (SELECT coalesce(max(id), 0) FROM producers)",
            )
            .fetch_one(&mut self.conn)
            .await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    fn load_topics<'a>(&'a mut self, names: &'a [Arc<str>]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(async move {
            let sql = format!("SELECT {TOPIC_COLS} FROM topics WHERE name = ?");
            let mut out = Vec::new();
            for name in names {
                if let Some(r) = sqlx::query(&sql)
                    .bind(&**name)
                    .fetch_optional(&mut self.conn)
                    .await?
                {
                    out.push(topic_row(&r)?);
                }
            }
            Ok(out)
        })
    }

    fn load_topics_by_id<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(async move {
            let sql = format!("SELECT {TOPIC_COLS} FROM topics WHERE id = ?");
            let mut out = Vec::new();
            for id in ids {
                if let Some(r) = sqlx::query(&sql)
                    .bind(id)
                    .fetch_optional(&mut self.conn)
                    .await?
                {
                    out.push(topic_row(&r)?);
                }
            }
            Ok(out)
        })
    }

    fn load_producers<'a>(
        &'a mut self,
        keys: &'a [(i64, Arc<str>)],
    ) -> StoreFuture<'a, Vec<ProducerRow>> {
        Box::pin(async move {
            let sql = format!("SELECT {PRODUCER_COLS} FROM producers WHERE topic = ? AND name = ?");
            let mut out = Vec::new();
            for (topic, name) in keys {
                if let Some(r) = sqlx::query(&sql)
                    .bind(topic)
                    .bind(&**name)
                    .fetch_optional(&mut self.conn)
                    .await?
                {
                    out.push(producer_row(&r)?);
                }
            }
            Ok(out)
        })
    }

    fn find_seq(&mut self, producer: i64, seq: u64) -> StoreFuture<'_, Option<(u64, u64)>> {
        Box::pin(async move {
            let r = sqlx::query("SELECT off, position FROM events WHERE producer = ? AND seq = ?")
                .bind(producer)
                .bind(i(seq))
                .fetch_optional(&mut self.conn)
                .await?;
            match r {
                Some(r) => Ok(Some((
                    u(r.try_get(0)?, "off")?,
                    u(r.try_get(1)?, "position")?,
                ))),
                None => Ok(None),
            }
        })
    }

    fn load_keys<'a>(
        &'a mut self,
        keys: &'a [(i64, Arc<str>)],
        min_ts: i64,
    ) -> StoreFuture<'a, Vec<KeyRow>> {
        Box::pin(async move {
            let mut out = Vec::new();
            for (topic, key) in keys {
                if let Some(r) = sqlx::query(
                    "SELECT off, position, ts FROM idempotency_keys \
                     WHERE topic = ? AND key = ? AND ts >= ?",
                )
                .bind(topic)
                .bind(&**key)
                .bind(min_ts)
                .fetch_optional(&mut self.conn)
                .await?
                {
                    out.push(KeyRow {
                        topic: *topic,
                        key: key.clone(),
                        offset: u(r.try_get(0)?, "off")?,
                        position: u(r.try_get(1)?, "position")?,
                        ts: r.try_get(2)?,
                    });
                }
            }
            Ok(out)
        })
    }

    fn write<'a>(&'a mut self, set: &'a WriteSet) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let conn = &mut self.conn;
            exec_multi(conn, &self.events, &set.events, |q, e: &EventRecord| {
                q.bind(e.topic)
                    .bind(i(e.offset))
                    .bind(e.ns)
                    .bind(i(e.position))
                    .bind(e.ts)
                    .bind(i64::try_from(e.body.len()).unwrap_or(i64::MAX))
                    .bind(e.producer.map(|p| p.0))
                    .bind(e.producer.map(|p| i(p.1)))
                    .bind(&e.body[..])
            })
            .await?;
            exec_multi(conn, &self.topics, &set.topics, |q, t: &TopicRow| {
                q.bind(t.id)
                    .bind(t.ns)
                    .bind(&*t.name)
                    .bind(&*t.epoch)
                    .bind(i(t.first_offset))
                    .bind(i(t.last_offset))
                    .bind(i(t.last_position))
                    .bind(i(t.bytes))
                    .bind(i(t.pruned_position))
            })
            .await?;
            exec_multi(
                conn,
                &self.producers,
                &set.producers,
                |q, p: &ProducerRow| {
                    q.bind(p.id)
                        .bind(p.topic)
                        .bind(&*p.name)
                        .bind(i(p.last_seq))
                        .bind(p.last_event.map(|e| i(e.0)))
                        .bind(p.last_event.map(|e| i(e.1)))
                        .bind(i(p.pruned_seq))
                },
            )
            .await?;
            exec_multi(conn, &self.keys, &set.keys, |q, k: &KeyRow| {
                q.bind(k.topic)
                    .bind(&*k.key)
                    .bind(i(k.offset))
                    .bind(i(k.position))
                    .bind(k.ts)
            })
            .await?;
            for (ns, last) in &set.namespaces {
                sqlx::query("UPDATE namespaces SET last_position = ? WHERE id = ?")
                    .bind(i(*last))
                    .bind(ns)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn oldest(&mut self, topic: i64, limit: u32) -> StoreFuture<'_, Vec<OldEvent>> {
        Box::pin(async move {
            let sql = format!("SELECT {OLD_COLS} FROM events WHERE topic = ? ORDER BY off LIMIT ?");
            let rows = sqlx::query(&sql)
                .bind(topic)
                .bind(i64::from(limit))
                .fetch_all(&mut self.conn)
                .await?;
            rows.iter().map(old_event).collect()
        })
    }

    fn oldest_in_namespace(
        &mut self,
        ns: i64,
        after: u64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<OldEvent>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT {OLD_COLS} FROM events WHERE ns = ? AND position > ? \
                 ORDER BY position LIMIT ?"
            );
            let rows = sqlx::query(&sql)
                .bind(ns)
                .bind(i(after))
                .bind(i64::from(limit))
                .fetch_all(&mut self.conn)
                .await?;
            rows.iter().map(old_event).collect()
        })
    }

    fn delete_events(&mut self, topic: i64, offset: u64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM events WHERE topic = ? AND off <= ?")
                .bind(topic)
                .bind(i(offset))
                .execute(&mut self.conn)
                .await?;
            Ok(r.rows_affected())
        })
    }

    fn delete_keys(&mut self, before_ts: i64, limit: u32) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM idempotency_keys WHERE rowid IN \
                 (SELECT rowid FROM idempotency_keys WHERE ts < ? LIMIT ?)",
            )
            .bind(before_ts)
            .bind(i64::from(limit))
            .execute(&mut self.conn)
            .await?;
            Ok(r.rows_affected())
        })
    }

    fn prune_producers<'a>(&'a mut self, pruned: &'a [(i64, u64)]) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            for (id, seq) in pruned {
                sqlx::query("UPDATE producers SET pruned_seq = max(pruned_seq, ?) WHERE id = ?")
                    .bind(i(*seq))
                    .bind(id)
                    .execute(&mut self.conn)
                    .await?;
            }
            Ok(())
        })
    }

    fn reset_producers(&mut self, topic: i64) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE producers SET last_offset = NULL, last_position = NULL, pruned_seq = last_seq WHERE topic = ?",
            )
            .bind(topic)
            .execute(&mut self.conn)
            .await?;
            Ok(())
        })
    }

    fn delete_topic_keys(&mut self, topic: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM idempotency_keys WHERE topic = ?")
                .bind(topic)
                .execute(&mut self.conn)
                .await?;
            Ok(r.rows_affected())
        })
    }

    fn over_limit_topics(
        &mut self,
        ns: i64,
        max_events: Option<u64>,
        max_bytes: Option<u64>,
        after: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<i64>> {
        Box::pin(async move {
            let ids = sqlx::query_scalar(
                "SELECT id FROM topics WHERE ns = ? AND id > ? \
                 AND (last_offset - first_offset + 1 > ? OR bytes > ?) ORDER BY id LIMIT ?",
            )
            .bind(ns)
            .bind(after)
            .bind(max_events.map_or(i64::MAX, i))
            .bind(max_bytes.map_or(i64::MAX, i))
            .bind(i64::from(limit))
            .fetch_all(&mut self.conn)
            .await?;
            Ok(ids)
        })
    }
}
