//! PostgreSQL: a pool of readers and one writing connection.
//!
//! A batch is written with one statement per table, the rows passed as
//! arrays (`UNNEST`), so a batch of any size costs the same few round
//! trips. Each write transaction sets `synchronous_commit` for itself: `on`
//! when it holds an `fsynced` write (the commit waits for the WAL flush),
//! `off` when all its writes are `committed` (the commit is acknowledged
//! before the flush; a crash of the database server may lose it, never
//! half of it).
//!
//! The writer's connection is named `plexus-writer` (`application_name`),
//! so operators (and the tests) can find it in `pg_stat_activity`.

use std::sync::Arc;

use futures_util::TryStreamExt;
use futures_util::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Executor, Row};

use super::{
    Backend, EventPage, Flush, KeyRow, LatestRow, NamespaceRead, NamespaceRow, OldEvent, Order,
    ProducerRow, StorageError, Store, StoreFuture, StoreOptions, StoreWriter, TopicRead, TopicRow,
    WriteSet, i, u,
};

/// The embedded PostgreSQL migrations.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Default `application_name` of the writing connection.
pub const WRITER_APPLICATION_NAME: &str = "plexus-writer";

/// The advisory lock (transaction-scoped) that cluster nodes take to
/// create topics and producers: ids come from `max(id)`, so two nodes must
/// not pick them at once. An arbitrary constant ("plexus" in ASCII).
const CREATE_LOCK: i64 = 0x0000_706c_6578_7573;

const TOPIC_COLS: &str =
    "id, ns, name, epoch, first_offset, last_offset, last_position, bytes, pruned_position";
const OLD_COLS: &str = "topic, off, position, ts, size::int8, producer, seq";

pub(crate) fn options(opts: &StoreOptions) -> Result<PgConnectOptions, StorageError> {
    let mut o: PgConnectOptions = opts
        .url
        .parse()
        .map_err(|e: sqlx::Error| StorageError::Database(e.to_string().into()))?;
    if !opts.schema.is_empty() {
        o = o.options([("search_path", opts.schema.as_str())]);
    }
    Ok(o.disable_statement_logging())
}

async fn check_migrated(conn: &mut PgConnection) -> Result<(), StorageError> {
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
    let mut conn = PgConnection::connect_with(&options(opts)?).await?;
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

/// The PostgreSQL store.
#[derive(Debug)]
pub struct PgStore {
    options: PgConnectOptions,
    writer_name: String,
    pool: PgPool,
}

impl PgStore {
    /// Connects, applies the migrations unless `opts.migrate` is false, and
    /// opens the read pool.
    pub async fn open(opts: &StoreOptions) -> Result<PgStore, StorageError> {
        let options = options(opts)?;
        let mut conn = PgConnection::connect_with(&options).await?;
        if opts.migrate {
            MIGRATOR.run(&mut conn).await?;
        } else {
            check_migrated(&mut conn).await?;
        }
        conn.close().await?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.read_connections.max(1))
            .connect_with(options.clone())
            .await?;
        Ok(PgStore {
            options,
            writer_name: opts.writer_name.clone(),
            pool,
        })
    }
}

fn topic_row(r: &PgRow) -> Result<TopicRow, StorageError> {
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

fn producer_row(r: &PgRow) -> Result<ProducerRow, StorageError> {
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

fn old_event(r: &PgRow) -> Result<OldEvent, StorageError> {
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

impl Store for PgStore {
    fn backend(&self) -> Backend {
        Backend::Postgres
    }

    fn writer(&self) -> StoreFuture<'_, Box<dyn StoreWriter>> {
        Box::pin(async move {
            let opts = self.options.clone().application_name(&self.writer_name);
            let conn = PgConnection::connect_with(&opts).await?;
            Ok(Box::new(PgWriter { conn }) as Box<dyn StoreWriter>)
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
            let sql = format!("SELECT {TOPIC_COLS} FROM topics WHERE name = $1");
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
                     WHERE topic = $1 AND off >= $2 AND off <= $3 ORDER BY off LIMIT $4"
                }
                Order::Backward => {
                    "SELECT off, position, body FROM events \
                     WHERE topic = $1 AND off <= $2 AND off >= $3 ORDER BY off DESC LIMIT $4"
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
                 WHERE e.ns = $1 AND e.position > $2 ORDER BY e.position LIMIT $3",
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
                 WHERE ns = $1 AND pruned_position > $2 AND name > $3 ORDER BY name LIMIT $4",
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
                 WHERE t.ns = $1 AND t.name >= $2 AND ($3::text IS NULL OR t.name < $3) \
                 AND ($4::text IS NULL OR t.name > $4) ORDER BY t.name LIMIT $5",
            )
            .bind(ns)
            .bind(lo)
            .bind(hi)
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
                "SELECT {TOPIC_COLS} FROM topics WHERE ($1::text IS NULL OR name > $1) \
                 ORDER BY name LIMIT $2"
            );
            let rows = sqlx::query(&sql)
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

/// The PostgreSQL writing connection.
#[derive(Debug)]
pub struct PgWriter {
    conn: PgConnection,
}

/// Which topic rows to load.
enum TopicKey<'a> {
    Names(&'a [Arc<str>]),
    Ids(&'a [i64]),
}

/// Locks loaded rows until the transaction ends, in id order (cluster
/// mode: nodes never lock two topics in opposite orders).
const LOCK_ROWS: &str = " ORDER BY id FOR UPDATE";

impl PgWriter {
    /// The topic rows `key` names, `then` appended to the query.
    async fn topics_by(
        &mut self,
        key: TopicKey<'_>,
        then: &str,
    ) -> Result<Vec<TopicRow>, StorageError> {
        let column = match key {
            TopicKey::Names(_) => "name",
            TopicKey::Ids(_) => "id",
        };
        let sql = format!("SELECT {TOPIC_COLS} FROM topics WHERE {column} = ANY($1){then}");
        let q = sqlx::query(&sql);
        let q = match key {
            TopicKey::Names(n) => q.bind(n.iter().map(|n| &**n).collect::<Vec<&str>>()),
            TopicKey::Ids(ids) => q.bind(ids),
        };
        let rows = q.fetch_all(&mut self.conn).await?;
        rows.iter().map(topic_row).collect()
    }
}

impl StoreWriter for PgWriter {
    fn begin(&mut self, flush: Flush) -> StoreFuture<'_, ()> {
        Box::pin(async move {
            let sql = match flush {
                Flush::Fsynced => "BEGIN; SET LOCAL synchronous_commit = on",
                Flush::Committed => "BEGIN; SET LOCAL synchronous_commit = off",
            };
            // No arguments: the simple-query protocol, both statements in
            // one round trip.
            self.conn.execute(sql).await?;
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
                "INSERT INTO namespaces (pattern, epoch) VALUES ($1, $2) \
                 ON CONFLICT (pattern) DO NOTHING",
            )
            .bind(pattern)
            .bind(epoch)
            .execute(&mut self.conn)
            .await?;
            let r = sqlx::query(
                "SELECT id, pattern, epoch, last_position FROM namespaces WHERE pattern = $1",
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
                "SELECT (SELECT coalesce(max(id), 0) FROM topics)::int8, \
                        (SELECT coalesce(max(id), 0) FROM producers)::int8",
            )
            .fetch_one(&mut self.conn)
            .await?;
            Ok((r.try_get(0)?, r.try_get(1)?))
        })
    }

    fn load_topics<'a>(&'a mut self, names: &'a [Arc<str>]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(self.topics_by(TopicKey::Names(names), ""))
    }

    fn load_topics_by_id<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(self.topics_by(TopicKey::Ids(ids), ""))
    }

    fn lock_topics<'a>(&'a mut self, names: &'a [Arc<str>]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(self.topics_by(TopicKey::Names(names), LOCK_ROWS))
    }

    fn lock_topics_by_id<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<TopicRow>> {
        Box::pin(self.topics_by(TopicKey::Ids(ids), LOCK_ROWS))
    }

    fn lock_ids(&mut self) -> StoreFuture<'_, (i64, i64)> {
        Box::pin(async move {
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(CREATE_LOCK)
                .execute(&mut self.conn)
                .await?;
            self.max_ids().await
        })
    }

    fn lock_namespaces<'a>(&'a mut self, ids: &'a [i64]) -> StoreFuture<'a, Vec<(i64, u64)>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT id, last_position FROM namespaces WHERE id = ANY($1) ORDER BY id FOR UPDATE",
            )
            .bind(ids)
            .fetch_all(&mut self.conn)
            .await?;
            rows.iter()
                .map(|r| Ok((r.try_get(0)?, u(r.try_get(1)?, "last_position")?)))
                .collect()
        })
    }

    fn load_producers<'a>(
        &'a mut self,
        keys: &'a [(i64, Arc<str>)],
    ) -> StoreFuture<'a, Vec<ProducerRow>> {
        Box::pin(async move {
            let topics: Vec<i64> = keys.iter().map(|k| k.0).collect();
            let names: Vec<&str> = keys.iter().map(|k| &*k.1).collect();
            let sql = "SELECT p.id, p.topic, p.name, p.last_seq, p.last_offset, \
                       p.last_position, p.pruned_seq FROM producers p \
                       JOIN UNNEST($1::int8[], $2::text[]) AS k(topic, name) \
                       ON p.topic = k.topic AND p.name = k.name";
            let rows = sqlx::query(sql)
                .bind(topics)
                .bind(names)
                .fetch_all(&mut self.conn)
                .await?;
            rows.iter().map(producer_row).collect()
        })
    }

    fn find_seq(&mut self, producer: i64, seq: u64) -> StoreFuture<'_, Option<(u64, u64)>> {
        Box::pin(async move {
            let r =
                sqlx::query("SELECT off, position FROM events WHERE producer = $1 AND seq = $2")
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
            let topics: Vec<i64> = keys.iter().map(|k| k.0).collect();
            let names: Vec<&str> = keys.iter().map(|k| &*k.1).collect();
            let rows = sqlx::query(
                "SELECT i.topic, i.key, i.off, i.position, i.ts FROM idempotency_keys i \
                 JOIN UNNEST($1::int8[], $2::text[]) AS k(topic, key) \
                 ON i.topic = k.topic AND i.key = k.key WHERE i.ts >= $3",
            )
            .bind(topics)
            .bind(names)
            .bind(min_ts)
            .fetch_all(&mut self.conn)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(KeyRow {
                        topic: r.try_get(0)?,
                        key: Arc::from(r.try_get::<&str, _>(1)?),
                        offset: u(r.try_get(2)?, "off")?,
                        position: u(r.try_get(3)?, "position")?,
                        ts: r.try_get(4)?,
                    })
                })
                .collect()
        })
    }

    fn write<'a>(&'a mut self, set: &'a WriteSet) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let conn = &mut self.conn;
            if !set.events.is_empty() {
                let ev = &set.events;
                sqlx::query(
                    "INSERT INTO events (topic, off, ns, position, ts, size, producer, seq, body) \
                     SELECT * FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], \
                     $5::int8[], $6::int4[], $7::int8[], $8::int8[], $9::bytea[])",
                )
                .bind(ev.iter().map(|e| e.topic).collect::<Vec<i64>>())
                .bind(ev.iter().map(|e| i(e.offset)).collect::<Vec<i64>>())
                .bind(ev.iter().map(|e| e.ns).collect::<Vec<i64>>())
                .bind(ev.iter().map(|e| i(e.position)).collect::<Vec<i64>>())
                .bind(ev.iter().map(|e| e.ts).collect::<Vec<i64>>())
                .bind(
                    ev.iter()
                        .map(|e| i32::try_from(e.body.len()).unwrap_or(i32::MAX))
                        .collect::<Vec<i32>>(),
                )
                .bind(
                    ev.iter()
                        .map(|e| e.producer.map(|p| p.0))
                        .collect::<Vec<Option<i64>>>(),
                )
                .bind(
                    ev.iter()
                        .map(|e| e.producer.map(|p| i(p.1)))
                        .collect::<Vec<Option<i64>>>(),
                )
                .bind(ev.iter().map(|e| &e.body[..]).collect::<Vec<&[u8]>>())
                .execute(&mut *conn)
                .await?;
            }
            if !set.topics.is_empty() {
                let t = &set.topics;
                sqlx::query(
                    "INSERT INTO topics (id, ns, name, epoch, first_offset, last_offset, \
                     last_position, bytes, pruned_position) SELECT * FROM UNNEST($1::int8[], \
                     $2::int8[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[], \
                     $8::int8[], $9::int8[]) ON CONFLICT (id) DO UPDATE SET epoch = excluded.epoch, \
                     first_offset = excluded.first_offset, last_offset = excluded.last_offset, \
                     last_position = excluded.last_position, bytes = excluded.bytes, pruned_position = excluded.pruned_position",
                )
                .bind(t.iter().map(|t| t.id).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| t.ns).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| &*t.name).collect::<Vec<&str>>())
                .bind(t.iter().map(|t| &*t.epoch).collect::<Vec<&str>>())
                .bind(t.iter().map(|t| i(t.first_offset)).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| i(t.last_offset)).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| i(t.last_position)).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| i(t.bytes)).collect::<Vec<i64>>())
                .bind(t.iter().map(|t| i(t.pruned_position)).collect::<Vec<i64>>())
                .execute(&mut *conn)
                .await?;
            }
            if !set.producers.is_empty() {
                let p = &set.producers;
                sqlx::query(
                    "INSERT INTO producers (id, topic, name, last_seq, last_offset, \
                     last_position, pruned_seq) SELECT * FROM UNNEST($1::int8[], $2::int8[], \
                     $3::text[], $4::int8[], $5::int8[], $6::int8[], $7::int8[]) \
                     ON CONFLICT (id) DO UPDATE SET last_seq = excluded.last_seq, \
                     last_offset = excluded.last_offset, last_position = excluded.last_position, \
                     pruned_seq = excluded.pruned_seq",
                )
                .bind(p.iter().map(|p| p.id).collect::<Vec<i64>>())
                .bind(p.iter().map(|p| p.topic).collect::<Vec<i64>>())
                .bind(p.iter().map(|p| &*p.name).collect::<Vec<&str>>())
                .bind(p.iter().map(|p| i(p.last_seq)).collect::<Vec<i64>>())
                .bind(
                    p.iter()
                        .map(|p| p.last_event.map(|e| i(e.0)))
                        .collect::<Vec<Option<i64>>>(),
                )
                .bind(
                    p.iter()
                        .map(|p| p.last_event.map(|e| i(e.1)))
                        .collect::<Vec<Option<i64>>>(),
                )
                .bind(p.iter().map(|p| i(p.pruned_seq)).collect::<Vec<i64>>())
                .execute(&mut *conn)
                .await?;
            }
            if !set.keys.is_empty() {
                let k = &set.keys;
                sqlx::query(
                    "INSERT INTO idempotency_keys (topic, key, off, position, ts) \
                     SELECT * FROM UNNEST($1::int8[], $2::text[], $3::int8[], $4::int8[], \
                     $5::int8[]) ON CONFLICT (topic, key) DO UPDATE SET off = excluded.off, \
                     position = excluded.position, ts = excluded.ts",
                )
                .bind(k.iter().map(|k| k.topic).collect::<Vec<i64>>())
                .bind(k.iter().map(|k| &*k.key).collect::<Vec<&str>>())
                .bind(k.iter().map(|k| i(k.offset)).collect::<Vec<i64>>())
                .bind(k.iter().map(|k| i(k.position)).collect::<Vec<i64>>())
                .bind(k.iter().map(|k| k.ts).collect::<Vec<i64>>())
                .execute(&mut *conn)
                .await?;
            }
            if !set.namespaces.is_empty() {
                let n = &set.namespaces;
                sqlx::query(
                    "UPDATE namespaces SET last_position = v.p \
                     FROM UNNEST($1::int8[], $2::int8[]) AS v(id, p) WHERE namespaces.id = v.id",
                )
                .bind(n.iter().map(|n| n.0).collect::<Vec<i64>>())
                .bind(n.iter().map(|n| i(n.1)).collect::<Vec<i64>>())
                .execute(&mut *conn)
                .await?;
            }
            Ok(())
        })
    }

    fn oldest(&mut self, topic: i64, limit: u32) -> StoreFuture<'_, Vec<OldEvent>> {
        Box::pin(async move {
            let sql =
                format!("SELECT {OLD_COLS} FROM events WHERE topic = $1 ORDER BY off LIMIT $2");
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
                "SELECT {OLD_COLS} FROM events WHERE ns = $1 AND position > $2 \
                 ORDER BY position LIMIT $3"
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
            let r = sqlx::query("DELETE FROM events WHERE topic = $1 AND off <= $2")
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
                "DELETE FROM idempotency_keys WHERE ctid IN \
                 (SELECT ctid FROM idempotency_keys WHERE ts < $1 LIMIT $2)",
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
                sqlx::query(
                    "UPDATE producers SET pruned_seq = greatest(pruned_seq, $1) WHERE id = $2",
                )
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
                "UPDATE producers SET last_offset = NULL, last_position = NULL, pruned_seq = last_seq WHERE topic = $1",
            )
            .bind(topic)
            .execute(&mut self.conn)
            .await?;
            Ok(())
        })
    }

    fn delete_topic_keys(&mut self, topic: i64) -> StoreFuture<'_, u64> {
        Box::pin(async move {
            let r = sqlx::query("DELETE FROM idempotency_keys WHERE topic = $1")
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
                "SELECT id FROM topics WHERE ns = $1 AND id > $2 \
                 AND (last_offset - first_offset + 1 > $3 OR bytes > $4) ORDER BY id LIMIT $5",
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
