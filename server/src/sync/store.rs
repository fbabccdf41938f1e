//! The record-sync tables (`migrations/*/0002_sync.sql`) on SQLite and
//! PostgreSQL.
//!
//! The SQL is the same text on both backends (`$n` parameters, which
//! sqlx's SQLite driver numbers too; upserts with `ON CONFLICT … DO
//! UPDATE`), so one macro expands it for each; only the transaction
//! openings differ (`BEGIN IMMEDIATE` on SQLite; `REPEATABLE READ` reads
//! on PostgreSQL, so a page and its final checksums are one snapshot).
//! Queries are runtime-checked, as in `crate::storage`.

use std::sync::Arc;

use futures_util::future::BoxFuture;

use super::chunk::{RawRecord, wire_bytes};
use super::model::{RecordState, Stamp, decode_fields, encode_fields};
use crate::storage::{Backend, StorageError, StoreFuture, StoreOptions};

/// A space as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpaceRow {
    /// Its id (0: not stored yet).
    pub id: i64,
    /// Its name.
    pub name: String,
    /// Its epoch (16 hex digits).
    pub epoch: String,
    /// The last position assigned (0: none).
    pub last_position: u64,
    /// Cursors below this (except 0) must reset.
    pub horizon_position: u64,
    /// Live records.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
}

/// A collection's aggregates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CollectionRow {
    /// Its name.
    pub name: String,
    /// Live records.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The position of its last change.
    pub last_position: u64,
    /// The wrapping sum of its live records' hashes.
    pub checksum: u64,
}

/// A record row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its collection.
    pub collection: String,
    /// Its id.
    pub id: String,
    /// Its merge state.
    pub state: RecordState,
}

/// What a page of a pull reads.
#[derive(Debug, Clone)]
pub struct PageQuery<'a> {
    /// The space.
    pub space: i64,
    /// Positions above this.
    pub after: u64,
    /// Only this collection.
    pub collection: Option<&'a str>,
    /// Skip tombstones at or below this position (a snapshot skips those
    /// that existed when it started, never those made while it runs, which
    /// delete records it may already have sent); 0: send every tombstone.
    pub tombstones_after: u64,
    /// Most rows.
    pub limit: u32,
}

/// A page, and when it is the last one (fewer rows than the limit), the
/// space and its collections read in the same snapshot.
#[derive(Debug, Default)]
pub struct Page {
    /// The records as a pull sends them, in position order.
    pub records: Vec<RawRecord>,
    /// With the last page.
    pub end: Option<(SpaceRow, Vec<CollectionRow>)>,
}

/// The one writing connection (owned by the sync writer task).
pub trait SyncWriteConn: Send {
    /// Starts a write transaction.
    fn begin(&mut self) -> StoreFuture<'_, ()>;
    /// Commits it.
    fn commit(&mut self) -> StoreFuture<'_, ()>;
    /// Rolls it back (errors ignored).
    fn rollback(&mut self) -> BoxFuture<'_, ()>;
    /// A space by name.
    fn space<'a>(&'a mut self, name: &'a str) -> StoreFuture<'a, Option<SpaceRow>>;
    /// A space by id.
    fn space_by_id(&mut self, id: i64) -> StoreFuture<'_, Option<SpaceRow>>;
    /// Inserts a space; returns its id.
    fn insert_space<'a>(&'a mut self, row: &'a SpaceRow) -> StoreFuture<'a, i64>;
    /// Updates a space's counters.
    fn update_space<'a>(&'a mut self, row: &'a SpaceRow) -> StoreFuture<'a, ()>;
    /// The `(client, last_seq)` of those of `clients` that pushed to the
    /// space, in a few multi-row statements.
    fn clients<'a>(
        &'a mut self,
        space: i64,
        clients: &'a [String],
    ) -> StoreFuture<'a, Vec<(String, u64)>>;
    /// Stores clients' `(client, last_seq, last_position)`, in a few
    /// multi-row statements (each client at most once).
    fn put_clients<'a>(
        &'a mut self,
        space: i64,
        clients: &'a [(&'a str, u64, u64)],
    ) -> StoreFuture<'a, ()>;
    /// A record.
    fn record<'a>(
        &'a mut self,
        space: i64,
        collection: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, Option<StoredRecord>>;
    /// Inserts or replaces a record.
    fn put_record<'a>(&'a mut self, space: i64, rec: &'a StoredRecord) -> StoreFuture<'a, ()>;
    /// The stored records among `keys` (`(collection, id)`), in a few
    /// multi-row statements.
    fn records<'a>(
        &'a mut self,
        space: i64,
        keys: &'a [(String, String)],
    ) -> StoreFuture<'a, Vec<StoredRecord>>;
    /// Inserts or replaces records, in a few multi-row statements.
    fn put_records<'a>(
        &'a mut self,
        space: i64,
        recs: &'a [&'a StoredRecord],
    ) -> StoreFuture<'a, ()>;
    /// Deletes a record row (tombstone purge).
    fn delete_record<'a>(
        &'a mut self,
        space: i64,
        collection: &'a str,
        id: &'a str,
    ) -> StoreFuture<'a, ()>;
    /// A collection's aggregates.
    fn collection<'a>(
        &'a mut self,
        space: i64,
        name: &'a str,
    ) -> StoreFuture<'a, Option<CollectionRow>>;
    /// The stored aggregates of those of `names` the space has, in a few
    /// multi-row statements.
    fn collections<'a>(
        &'a mut self,
        space: i64,
        names: &'a [String],
    ) -> StoreFuture<'a, Vec<CollectionRow>>;
    /// How many collections the space has.
    fn collection_count(&mut self, space: i64) -> StoreFuture<'_, u64>;
    /// Inserts or replaces a collection's aggregates.
    fn put_collection<'a>(&'a mut self, space: i64, row: &'a CollectionRow) -> StoreFuture<'a, ()>;
    /// Live records expired at `now_ms`: `(space, collection, id)`, at most
    /// `limit`.
    fn expired(&mut self, now_ms: i64, limit: u32) -> StoreFuture<'_, Vec<(i64, String, String)>>;
    /// Tombstones deleted before `before_ms`: `(space, collection, id,
    /// position)`, at most `limit`.
    fn old_tombstones(
        &mut self,
        before_ms: i64,
        limit: u32,
    ) -> StoreFuture<'_, Vec<(i64, String, String, u64)>>;
    /// Closes the connection.
    fn close(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// The read side, shared.
pub trait SyncRead: Send + Sync + std::fmt::Debug {
    /// Which database.
    fn backend(&self) -> Backend;
    /// Opens the writing connection.
    fn writer(&self) -> StoreFuture<'_, Box<dyn SyncWriteConn>>;
    /// A space by name.
    fn space<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<SpaceRow>>;
    /// A page of a pull (see [`Page`]).
    fn page<'a>(&'a self, q: PageQuery<'a>) -> StoreFuture<'a, Page>;
    /// A space and its collections in one snapshot.
    fn info(&self, space: i64) -> StoreFuture<'_, Option<(SpaceRow, Vec<CollectionRow>)>>;
    /// Closes the pool.
    fn close(&self) -> BoxFuture<'_, ()>;
}

/// Opens the sync tables of the database `options` names (applying the
/// embedded migrations unless disabled).
pub async fn open(options: &StoreOptions) -> Result<Arc<dyn SyncRead>, StorageError> {
    match options.backend()? {
        Backend::Sqlite => Ok(Arc::new(sqlite::open(options).await?)),
        Backend::Postgres => Ok(Arc::new(postgres::open(options).await?)),
    }
}

pub(crate) fn u(v: i64, column: &'static str) -> Result<u64, StorageError> {
    u64::try_from(v).map_err(|_| StorageError::Corrupt(column))
}

pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Bit-casts (checksums are stored as signed 64-bit).
pub(crate) fn bits_i(v: u64) -> i64 {
    i64::from_be_bytes(v.to_be_bytes())
}

/// Bit-casts back.
pub(crate) fn bits_u(v: i64) -> u64 {
    u64::from_be_bytes(v.to_be_bytes())
}

const SPACE_COLS: &str = "id, name, epoch, last_position, horizon_position, records, bytes";
const REC_COLS: &str = "collection, id, version, position, deleted, base_hlc, base_actor, \
     base_delete, last_hlc, last_actor, expires_at, deleted_at, size, fields";
/// The columns a record row is written with: [`REC_COLS`] and its wire
/// form (decision Y21).
const WRITE_COLS: &str = "collection, id, version, position, deleted, base_hlc, base_actor, \
     base_delete, last_hlc, last_actor, expires_at, deleted_at, size, fields, wire";
/// [`REC_COLS`] of the table aliased `r`.
const REC_COLS_R: &str = "r.collection, r.id, r.version, r.position, r.deleted, r.base_hlc, \
     r.base_actor, r.base_delete, r.last_hlc, r.last_actor, r.expires_at, r.deleted_at, r.size, \
     r.fields";
const COLL_COLS: &str = "name, records, bytes, last_position, checksum";

/// Rows per multi-row statement, largest first: n rows run as few
/// statements of these sizes (a bounded set of prepared statements).
const CHUNKS: [usize; 5] = [256, 64, 16, 4, 1];

/// Splits `n` into [`CHUNKS`] sizes.
fn chunk_sizes(mut n: usize) -> Vec<usize> {
    let mut out = Vec::new();
    for c in CHUNKS {
        while n >= c {
            out.push(c);
            n -= c;
        }
    }
    out
}

/// `($s, $s+1, …), (…)`: `rows` tuples of `cols` parameters numbered from
/// `$start`, or anonymous `?` when not `numbered` (SQLite: sqlx looks each
/// parameter's name up, and SQLite finds a name by walking the list of
/// named ones, so thousands of `$n` in one statement cost quadratic time;
/// anonymous ones are bound in the order they appear in the text).
fn tuples(rows: usize, cols: usize, start: usize, numbered: bool) -> String {
    let mut s = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        for c in 0..cols {
            if c > 0 {
                s.push_str(", ");
            }
            if numbered {
                s.push('$');
                s.push_str(&(start + r * cols + c).to_string());
            } else {
                s.push('?');
            }
        }
        s.push(')');
    }
    s
}

/// The placeholder of parameter `n` (see [`tuples`]).
fn param(n: usize, numbered: bool) -> String {
    if numbered {
        format!("${n}")
    } else {
        "?".to_owned()
    }
}

const UPSERT_TAIL: &str = "ON CONFLICT (space, collection, id) DO UPDATE SET \
     version = excluded.version, position = excluded.position, \
     deleted = excluded.deleted, base_hlc = excluded.base_hlc, \
     base_actor = excluded.base_actor, base_delete = excluded.base_delete, \
     last_hlc = excluded.last_hlc, last_actor = excluded.last_actor, \
     expires_at = excluded.expires_at, deleted_at = excluded.deleted_at, \
     size = excluded.size, fields = excluded.fields, wire = excluded.wire";

macro_rules! backend {
    ($module:ident, $db:ty, $conn:ty, $pool:ty, $pool_opts:ty, $opts_fn:path, $migrator:path,
     $backend:expr, $begin_write:literal, $read_setup:expr, $numbered:expr) => {
        /// The sync tables on this backend.
        pub mod $module {
            use super::*;

            /// Whether multi-row statements number their parameters.
            const NUMBERED: bool = $numbered;
            use futures_util::TryStreamExt;
            use sqlx::{Connection, Executor, Row};

            type DbRow = <$db as sqlx::Database>::Row;

            /// The read pool and how to open the writer.
            #[derive(Debug)]
            pub struct Store {
                options: StoreOptions,
                pool: $pool,
            }

            /// Opens the pool, migrating first unless disabled.
            pub async fn open(opts: &StoreOptions) -> Result<Store, StorageError> {
                let connect = $opts_fn(opts)?;
                let mut conn = <$conn>::connect_with(&connect).await?;
                if opts.migrate {
                    $migrator.run(&mut conn).await?;
                }
                conn.close().await?;
                let pool = <$pool_opts>::new()
                    .max_connections(opts.read_connections.max(1))
                    .connect_with(connect)
                    .await?;
                Ok(Store {
                    options: opts.clone(),
                    pool,
                })
            }

            fn space_row(r: &DbRow) -> Result<SpaceRow, StorageError> {
                Ok(SpaceRow {
                    id: r.try_get(0)?,
                    name: r.try_get(1)?,
                    epoch: r.try_get(2)?,
                    last_position: u(r.try_get(3)?, "last_position")?,
                    horizon_position: u(r.try_get(4)?, "horizon_position")?,
                    records: u(r.try_get(5)?, "records")?,
                    bytes: u(r.try_get(6)?, "bytes")?,
                })
            }

            fn coll_row(r: &DbRow) -> Result<CollectionRow, StorageError> {
                Ok(CollectionRow {
                    name: r.try_get(0)?,
                    records: u(r.try_get(1)?, "records")?,
                    bytes: u(r.try_get(2)?, "bytes")?,
                    last_position: u(r.try_get(3)?, "last_position")?,
                    checksum: bits_u(r.try_get(4)?),
                })
            }

            fn rec_row(r: &DbRow) -> Result<StoredRecord, StorageError> {
                let expires: Option<i64> = r.try_get(10)?;
                let fields: Vec<u8> = r.try_get(13)?;
                Ok(StoredRecord {
                    collection: r.try_get(0)?,
                    id: r.try_get(1)?,
                    state: RecordState {
                        version: u(r.try_get(2)?, "version")?,
                        position: u(r.try_get(3)?, "position")?,
                        base: Stamp {
                            hlc: u(r.try_get(5)?, "base_hlc")?,
                            actor: r.try_get(6)?,
                        },
                        base_delete: r.try_get::<i64, _>(7)? != 0,
                        last: Stamp {
                            hlc: u(r.try_get(8)?, "last_hlc")?,
                            actor: r.try_get(9)?,
                        },
                        expires_at: expires.map(|e| u(e, "expires_at")).transpose()?,
                        deleted_at: r.try_get(11)?,
                        fields: decode_fields(&fields)?,
                    },
                })
            }

            impl SyncRead for Store {
                fn backend(&self) -> Backend {
                    $backend
                }

                fn writer(&self) -> StoreFuture<'_, Box<dyn SyncWriteConn>> {
                    Box::pin(async move {
                        let conn = <$conn>::connect_with(&$opts_fn(&self.options)?).await?;
                        Ok(Box::new(Writer { conn, buf: Vec::new() }) as Box<dyn SyncWriteConn>)
                    })
                }

                fn space<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<SpaceRow>> {
                    Box::pin(async move {
                        let sql = format!("SELECT {SPACE_COLS} FROM sync_spaces WHERE name = $1");
                        let row = sqlx::query(&sql).bind(name).fetch_optional(&self.pool).await?;
                        row.as_ref().map(space_row).transpose()
                    })
                }

                fn page<'a>(&'a self, q: PageQuery<'a>) -> StoreFuture<'a, Page> {
                    Box::pin(async move {
                        let mut tx = self.pool.begin().await?;
                        if let Some(setup) = $read_setup {
                            tx.execute(setup).await?;
                        }
                        // Two columns a row (Y21): the bytes are sent as
                        // they are stored.
                        let sql = match q.collection {
                            Some(_) => "SELECT position, wire FROM sync_records WHERE space = $1 \
                                 AND collection = $3 AND position > $2 \
                                 AND (deleted = 0 OR position > $5) \
                                 ORDER BY position LIMIT $4",
                            None => "SELECT position, wire FROM sync_records WHERE space = $1 \
                                 AND position > $2 AND $3 = $3 AND (deleted = 0 OR position > $5) \
                                 ORDER BY position LIMIT $4",
                        };
                        let mut page = Page::default();
                        let mut legacy = Vec::new();
                        {
                            let mut rows = sqlx::query(sql)
                                .bind(q.space)
                                .bind(i(q.after))
                                .bind(q.collection.unwrap_or(""))
                                .bind(i64::from(q.limit))
                                .bind(i(q.tombstones_after))
                                .fetch(&mut *tx);
                            while let Some(r) = rows.try_next().await? {
                                let position = u(r.try_get(0)?, "position")?;
                                let wire: Option<Vec<u8>> = r.try_get(1)?;
                                let bytes = match wire {
                                    // Sent as stored: never a broken item
                                    // inside a chunk, whatever the file holds.
                                    Some(w) => plexus_protocol::RawValue::from_bytes(
                                        w.into(),
                                        &plexus_protocol::DecodeLimits::default(),
                                    )
                                    .map_err(|_| StorageError::Corrupt("sync_records.wire"))?
                                    .to_bytes(),
                                    None => {
                                        legacy.push(page.records.len());
                                        bytes::Bytes::new()
                                    }
                                };
                                page.records.push(RawRecord { position, bytes });
                            }
                        }
                        // Rows written before migration 0003: encoded now.
                        for at in legacy {
                            let sql = format!(
                                "SELECT {REC_COLS} FROM sync_records WHERE space = $1 AND position = $2"
                            );
                            let row = sqlx::query(&sql)
                                .bind(q.space)
                                .bind(i(page.records[at].position))
                                .fetch_one(&mut *tx)
                                .await?;
                            page.records[at].bytes = wire_bytes(&rec_row(&row)?).into();
                        }
                        if page.records.len() < q.limit as usize {
                            let sql = format!("SELECT {SPACE_COLS} FROM sync_spaces WHERE id = $1");
                            let space = sqlx::query(&sql).bind(q.space).fetch_optional(&mut *tx).await?;
                            if let Some(space) = space {
                                let sql = format!(
                                    "SELECT {COLL_COLS} FROM sync_collections WHERE space = $1 \
                                     AND ($2 = '' OR name = $2) ORDER BY name"
                                );
                                let colls = sqlx::query(&sql)
                                    .bind(q.space)
                                    .bind(q.collection.unwrap_or(""))
                                    .fetch_all(&mut *tx)
                                    .await?;
                                page.end = Some((
                                    space_row(&space)?,
                                    colls.iter().map(coll_row).collect::<Result<_, _>>()?,
                                ));
                            }
                        }
                        tx.commit().await?;
                        Ok(page)
                    })
                }

                fn info(&self, space: i64) -> StoreFuture<'_, Option<(SpaceRow, Vec<CollectionRow>)>> {
                    Box::pin(async move {
                        let mut tx = self.pool.begin().await?;
                        if let Some(setup) = $read_setup {
                            tx.execute(setup).await?;
                        }
                        let sql = format!("SELECT {SPACE_COLS} FROM sync_spaces WHERE id = $1");
                        let Some(row) = sqlx::query(&sql).bind(space).fetch_optional(&mut *tx).await? else {
                            return Ok(None);
                        };
                        let sql = format!(
                            "SELECT {COLL_COLS} FROM sync_collections WHERE space = $1 ORDER BY name"
                        );
                        let colls = sqlx::query(&sql).bind(space).fetch_all(&mut *tx).await?;
                        tx.commit().await?;
                        Ok(Some((
                            space_row(&row)?,
                            colls.iter().map(coll_row).collect::<Result<_, _>>()?,
                        )))
                    })
                }

                fn close(&self) -> BoxFuture<'_, ()> {
                    Box::pin(async move { self.pool.close().await })
                }
            }

            struct Writer {
                conn: $conn,
                buf: Vec<u8>,
            }

            impl SyncWriteConn for Writer {
                fn begin(&mut self) -> StoreFuture<'_, ()> {
                    Box::pin(async move {
                        self.conn.execute($begin_write).await?;
                        Ok(())
                    })
                }

                fn commit(&mut self) -> StoreFuture<'_, ()> {
                    Box::pin(async move {
                        self.conn.execute("COMMIT").await?;
                        Ok(())
                    })
                }

                fn rollback(&mut self) -> BoxFuture<'_, ()> {
                    Box::pin(async move {
                        let _ = self.conn.execute("ROLLBACK").await;
                    })
                }

                fn space<'a>(&'a mut self, name: &'a str) -> StoreFuture<'a, Option<SpaceRow>> {
                    Box::pin(async move {
                        let sql = format!("SELECT {SPACE_COLS} FROM sync_spaces WHERE name = $1");
                        let row = sqlx::query(&sql).bind(name).fetch_optional(&mut self.conn).await?;
                        row.as_ref().map(space_row).transpose()
                    })
                }

                fn space_by_id(&mut self, id: i64) -> StoreFuture<'_, Option<SpaceRow>> {
                    Box::pin(async move {
                        let sql = format!("SELECT {SPACE_COLS} FROM sync_spaces WHERE id = $1");
                        let row = sqlx::query(&sql).bind(id).fetch_optional(&mut self.conn).await?;
                        row.as_ref().map(space_row).transpose()
                    })
                }

                fn insert_space<'a>(&'a mut self, row: &'a SpaceRow) -> StoreFuture<'a, i64> {
                    Box::pin(async move {
                        let r = sqlx::query(
                            "INSERT INTO sync_spaces (name, epoch) VALUES ($1, $2) RETURNING id",
                        )
                        .bind(&row.name)
                        .bind(&row.epoch)
                        .fetch_one(&mut self.conn)
                        .await?;
                        Ok(r.try_get(0)?)
                    })
                }

                fn update_space<'a>(&'a mut self, row: &'a SpaceRow) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        sqlx::query(
                            "UPDATE sync_spaces SET last_position = $2, horizon_position = $3, \
                             records = $4, bytes = $5 WHERE id = $1",
                        )
                        .bind(row.id)
                        .bind(i(row.last_position))
                        .bind(i(row.horizon_position))
                        .bind(i(row.records))
                        .bind(i(row.bytes))
                        .execute(&mut self.conn)
                        .await?;
                        Ok(())
                    })
                }

                fn clients<'a>(
                    &'a mut self,
                    space: i64,
                    clients: &'a [String],
                ) -> StoreFuture<'a, Vec<(String, u64)>> {
                    Box::pin(async move {
                        let mut out = Vec::with_capacity(clients.len());
                        let mut at = 0;
                        for n in chunk_sizes(clients.len()) {
                            // Parameters in the order of the text (see `tuples`).
                            let sql = format!(
                                "SELECT c.client, c.last_seq FROM (VALUES {}) AS k \
                                 JOIN sync_clients c ON c.space = {} AND c.client = k.column1",
                                tuples(n, 1, 1, NUMBERED),
                                param(n + 1, NUMBERED)
                            );
                            let mut q = sqlx::query(&sql);
                            for c in &clients[at..at + n] {
                                q = q.bind(c.as_str());
                            }
                            let q = q.bind(space);
                            for r in q.fetch_all(&mut self.conn).await? {
                                out.push((r.try_get(0)?, u(r.try_get(1)?, "last_seq")?));
                            }
                            at += n;
                        }
                        Ok(out)
                    })
                }

                fn put_clients<'a>(
                    &'a mut self,
                    space: i64,
                    clients: &'a [(&'a str, u64, u64)],
                ) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        let mut at = 0;
                        for n in chunk_sizes(clients.len()) {
                            let sql = format!(
                                "INSERT INTO sync_clients (space, client, last_seq, last_position) \
                                 VALUES {} ON CONFLICT (space, client) DO UPDATE SET \
                                 last_seq = excluded.last_seq, \
                                 last_position = excluded.last_position",
                                tuples(n, 4, 1, NUMBERED)
                            );
                            let mut q = sqlx::query(&sql);
                            for (client, seq, position) in &clients[at..at + n] {
                                q = q.bind(space).bind(*client).bind(i(*seq)).bind(i(*position));
                            }
                            q.execute(&mut self.conn).await?;
                            at += n;
                        }
                        Ok(())
                    })
                }

                fn record<'a>(
                    &'a mut self,
                    space: i64,
                    collection: &'a str,
                    id: &'a str,
                ) -> StoreFuture<'a, Option<StoredRecord>> {
                    Box::pin(async move {
                        let sql = format!(
                            "SELECT {REC_COLS} FROM sync_records \
                             WHERE space = $1 AND collection = $2 AND id = $3"
                        );
                        let row = sqlx::query(&sql)
                            .bind(space)
                            .bind(collection)
                            .bind(id)
                            .fetch_optional(&mut self.conn)
                            .await?;
                        row.as_ref().map(rec_row).transpose()
                    })
                }

                fn put_record<'a>(
                    &'a mut self,
                    space: i64,
                    rec: &'a StoredRecord,
                ) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        let s = &rec.state;
                        self.buf.clear();
                        encode_fields(&s.fields, &mut self.buf);
                        let sql = format!(
                            "INSERT INTO sync_records (space, {WRITE_COLS}) VALUES ($1, $2, $3, $4, \
                             $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
                             ON CONFLICT (space, collection, id) DO UPDATE SET \
                             version = excluded.version, position = excluded.position, \
                             deleted = excluded.deleted, base_hlc = excluded.base_hlc, \
                             base_actor = excluded.base_actor, base_delete = excluded.base_delete, \
                             last_hlc = excluded.last_hlc, last_actor = excluded.last_actor, \
                             expires_at = excluded.expires_at, deleted_at = excluded.deleted_at, \
                             size = excluded.size, fields = excluded.fields, wire = excluded.wire"
                        );
                        sqlx::query(&sql)
                            .bind(space)
                            .bind(&rec.collection)
                            .bind(&rec.id)
                            .bind(i(s.version))
                            .bind(i(s.position))
                            .bind(i64::from(s.deleted()))
                            .bind(i(s.base.hlc))
                            .bind(&s.base.actor)
                            .bind(i64::from(s.base_delete))
                            .bind(i(s.last.hlc))
                            .bind(&s.last.actor)
                            .bind(s.expires_at.map(i))
                            .bind(s.deleted_at)
                            .bind(i(s.size(&rec.collection, &rec.id)))
                            .bind(self.buf.as_slice())
                            .bind(wire_bytes(rec))
                            .execute(&mut self.conn)
                            .await?;
                        Ok(())
                    })
                }

                fn records<'a>(
                    &'a mut self,
                    space: i64,
                    keys: &'a [(String, String)],
                ) -> StoreFuture<'a, Vec<StoredRecord>> {
                    Box::pin(async move {
                        let mut out = Vec::with_capacity(keys.len());
                        let mut at = 0;
                        for n in chunk_sizes(keys.len()) {
                            // A join on the whole primary key: SQLite plans
                            // `(collection, id) IN (VALUES …)` as a scan of
                            // the space's records.
                            let sql = format!(
                                "SELECT {REC_COLS_R} FROM (VALUES {}) AS k \
                                 JOIN sync_records r ON r.space = {} \
                                 AND r.collection = k.column1 AND r.id = k.column2",
                                tuples(n, 2, 1, NUMBERED),
                                param(2 * n + 1, NUMBERED)
                            );
                            let mut q = sqlx::query(&sql);
                            for (c, id) in &keys[at..at + n] {
                                q = q.bind(c.as_str()).bind(id.as_str());
                            }
                            let q = q.bind(space);
                            let rows = q.fetch_all(&mut self.conn).await?;
                            for r in &rows {
                                out.push(rec_row(r)?);
                            }
                            at += n;
                        }
                        Ok(out)
                    })
                }

                fn put_records<'a>(
                    &'a mut self,
                    space: i64,
                    recs: &'a [&'a StoredRecord],
                ) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        let mut at = 0;
                        for n in chunk_sizes(recs.len()) {
                            let sql = format!(
                                "INSERT INTO sync_records (space, {WRITE_COLS}) VALUES {} {UPSERT_TAIL}",
                                tuples(n, 16, 1, NUMBERED)
                            );
                            let mut q = sqlx::query(&sql);
                            for rec in &recs[at..at + n] {
                                let s = &rec.state;
                                let mut buf = Vec::new();
                                encode_fields(&s.fields, &mut buf);
                                q = q
                                    .bind(space)
                                    .bind(rec.collection.as_str())
                                    .bind(rec.id.as_str())
                                    .bind(i(s.version))
                                    .bind(i(s.position))
                                    .bind(i64::from(s.deleted()))
                                    .bind(i(s.base.hlc))
                                    .bind(s.base.actor.as_str())
                                    .bind(i64::from(s.base_delete))
                                    .bind(i(s.last.hlc))
                                    .bind(s.last.actor.as_str())
                                    .bind(s.expires_at.map(i))
                                    .bind(s.deleted_at)
                                    .bind(i(s.size(&rec.collection, &rec.id)))
                                    .bind(buf)
                                    .bind(wire_bytes(rec));
                            }
                            q.execute(&mut self.conn).await?;
                            at += n;
                        }
                        Ok(())
                    })
                }

                fn delete_record<'a>(
                    &'a mut self,
                    space: i64,
                    collection: &'a str,
                    id: &'a str,
                ) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        sqlx::query(
                            "DELETE FROM sync_records WHERE space = $1 AND collection = $2 AND id = $3",
                        )
                        .bind(space)
                        .bind(collection)
                        .bind(id)
                        .execute(&mut self.conn)
                        .await?;
                        Ok(())
                    })
                }

                fn collection<'a>(
                    &'a mut self,
                    space: i64,
                    name: &'a str,
                ) -> StoreFuture<'a, Option<CollectionRow>> {
                    Box::pin(async move {
                        let sql = format!(
                            "SELECT {COLL_COLS} FROM sync_collections WHERE space = $1 AND name = $2"
                        );
                        let row = sqlx::query(&sql)
                            .bind(space)
                            .bind(name)
                            .fetch_optional(&mut self.conn)
                            .await?;
                        row.as_ref().map(coll_row).transpose()
                    })
                }

                fn collections<'a>(
                    &'a mut self,
                    space: i64,
                    names: &'a [String],
                ) -> StoreFuture<'a, Vec<CollectionRow>> {
                    Box::pin(async move {
                        let mut out = Vec::with_capacity(names.len());
                        let mut at = 0;
                        for n in chunk_sizes(names.len()) {
                            let sql = format!(
                                "SELECT c.name, c.records, c.bytes, c.last_position, c.checksum \
                                 FROM (VALUES {}) AS k JOIN sync_collections c \
                                 ON c.space = {} AND c.name = k.column1",
                                tuples(n, 1, 1, NUMBERED),
                                param(n + 1, NUMBERED)
                            );
                            let mut q = sqlx::query(&sql);
                            for c in &names[at..at + n] {
                                q = q.bind(c.as_str());
                            }
                            let q = q.bind(space);
                            for r in q.fetch_all(&mut self.conn).await? {
                                out.push(coll_row(&r)?);
                            }
                            at += n;
                        }
                        Ok(out)
                    })
                }

                fn collection_count(&mut self, space: i64) -> StoreFuture<'_, u64> {
                    Box::pin(async move {
                        let n: i64 =
                            sqlx::query_scalar("SELECT COUNT(*) FROM sync_collections WHERE space = $1")
                                .bind(space)
                                .fetch_one(&mut self.conn)
                                .await?;
                        u(n, "count")
                    })
                }

                fn put_collection<'a>(
                    &'a mut self,
                    space: i64,
                    row: &'a CollectionRow,
                ) -> StoreFuture<'a, ()> {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO sync_collections (space, name, records, bytes, \
                             last_position, checksum) VALUES ($1, $2, $3, $4, $5, $6) \
                             ON CONFLICT (space, name) DO UPDATE SET records = excluded.records, \
                             bytes = excluded.bytes, last_position = excluded.last_position, \
                             checksum = excluded.checksum",
                        )
                        .bind(space)
                        .bind(&row.name)
                        .bind(i(row.records))
                        .bind(i(row.bytes))
                        .bind(i(row.last_position))
                        .bind(bits_i(row.checksum))
                        .execute(&mut self.conn)
                        .await?;
                        Ok(())
                    })
                }

                fn expired(
                    &mut self,
                    now_ms: i64,
                    limit: u32,
                ) -> StoreFuture<'_, Vec<(i64, String, String)>> {
                    Box::pin(async move {
                        let rows = sqlx::query(
                            "SELECT space, collection, id FROM sync_records \
                             WHERE expires_at IS NOT NULL AND expires_at <= $1 AND deleted = 0 \
                             ORDER BY expires_at LIMIT $2",
                        )
                        .bind(now_ms)
                        .bind(i64::from(limit))
                        .fetch_all(&mut self.conn)
                        .await?;
                        rows.iter()
                            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
                            .collect()
                    })
                }

                fn old_tombstones(
                    &mut self,
                    before_ms: i64,
                    limit: u32,
                ) -> StoreFuture<'_, Vec<(i64, String, String, u64)>> {
                    Box::pin(async move {
                        let rows = sqlx::query(
                            "SELECT space, collection, id, position FROM sync_records \
                             WHERE deleted_at IS NOT NULL AND deleted_at < $1 AND deleted = 1 \
                             ORDER BY deleted_at LIMIT $2",
                        )
                        .bind(before_ms)
                        .bind(i64::from(limit))
                        .fetch_all(&mut self.conn)
                        .await?;
                        rows.iter()
                            .map(|r| {
                                Ok((
                                    r.try_get(0)?,
                                    r.try_get(1)?,
                                    r.try_get(2)?,
                                    u(r.try_get(3)?, "position")?,
                                ))
                            })
                            .collect()
                    })
                }

                fn close(self: Box<Self>) -> BoxFuture<'static, ()> {
                    Box::pin(async move {
                        let _ = self.conn.close().await;
                    })
                }
            }
        }
    };
}

backend!(
    sqlite,
    sqlx::Sqlite,
    sqlx::SqliteConnection,
    sqlx::SqlitePool,
    sqlx::sqlite::SqlitePoolOptions,
    crate::storage::sqlite::options,
    crate::storage::sqlite::MIGRATOR,
    Backend::Sqlite,
    "BEGIN IMMEDIATE",
    None::<&str>,
    false
);

backend!(
    postgres,
    sqlx::Postgres,
    sqlx::PgConnection,
    sqlx::PgPool,
    sqlx::postgres::PgPoolOptions,
    crate::storage::postgres::options,
    crate::storage::postgres::MIGRATOR,
    Backend::Postgres,
    "BEGIN",
    Some("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"),
    true
);
