//! The offline-first local replica (feature `local-replica`): a space's
//! records, its cursor and a queue of pending changes in a local SQLite
//! file. Local writes apply at once; [`Replica::sync`] pushes the queue and
//! pulls what changed; the view rebases pending changes on pulled records
//! by last-write-wins on `(hlc, actor)`; after each pull the per-collection
//! checksums (Y13) are compared and a diverged collection is pulled again.
//!
//! Tables: `meta(key, value)` (epoch, position), `records(collection, id,
//! version, position, deleted, hlc, actor, fields)` — the hub's state as
//! pulled, fields CBOR — and `pending(seq, op)` — the queued ops, CBOR,
//! each with the HLC of the moment it was made.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plexus_protocol::methods::sync::{
    Checksum, OpKind, RecordFields, SyncOp, SyncPullFinal, SyncRecord,
};
use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqlitePool, SqlitePoolOptions};

use super::state::{FinalStep, PullState, is_pull_retryable};
use super::{PullItem, SYNC_RETRY_LIMIT, Space, SyncCursor, decode_pull_item, wait_connected};
use crate::error::Error;

/// Most pending ops pushed in one `sync.push`.
pub const REPLICA_PUSH_BATCH: i64 = 256;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL,
    position INTEGER NOT NULL, deleted INTEGER NOT NULL, hlc INTEGER NOT NULL,
    actor TEXT NOT NULL, fields BLOB NOT NULL, PRIMARY KEY (collection, id));
CREATE TABLE IF NOT EXISTS pending (seq INTEGER PRIMARY KEY AUTOINCREMENT, op BLOB NOT NULL);
";

fn db(what: &'static str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| Error::Replica {
        what,
        source: Some(Arc::new(e)),
    }
}

fn corrupt(what: &'static str) -> Error {
    Error::Replica { what, source: None }
}

/// A record as the application sees it: the hub's state with this
/// replica's pending changes applied.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalRecord {
    /// The collection.
    pub collection: String,
    /// The id.
    pub id: String,
    /// Its fields (an opaque value is the field `""`).
    pub fields: BTreeMap<String, Vec<u8>>,
    /// The hub's version (0: not yet pushed).
    pub version: u64,
    /// Pending changes touch it.
    pub pending: bool,
}

/// What one [`Replica::sync`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SyncReport {
    /// Pending ops pushed.
    pub pushed: usize,
    /// Records pulled.
    pub pulled: u64,
    /// Collections whose checksum differed from the hub's and were pulled
    /// again.
    pub repaired: Vec<String>,
    /// The cursor after the sync.
    pub cursor: SyncCursor,
}

/// A stored record: the hub's state.
#[derive(Debug, Clone)]
struct Stored {
    version: u64,
    deleted: bool,
    hlc: u64,
    actor: String,
    fields: BTreeMap<String, Vec<u8>>,
}

/// A SQLite-backed local replica of one space. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Replica {
    space: Space,
    pool: SqlitePool,
    /// One sync at a time.
    syncing: Arc<tokio::sync::Mutex<()>>,
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Replica {
    /// Opens (or creates) the replica of `space` in the SQLite file `path`.
    /// The space's client id is the actor of the local changes: use
    /// [`Client::space_as`](crate::Client::space_as) with an id stored next
    /// to the file so it stays the same across restarts.
    pub async fn open(space: Space, path: impl AsRef<Path>) -> Result<Replica, Error> {
        let options = SqliteConnectOptions::new()
            .filename(path.as_ref())
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(db("open the database"))?;
        sqlx::raw_sql(SCHEMA)
            .execute(&pool)
            .await
            .map_err(db("create the tables"))?;
        Ok(Replica {
            space,
            pool,
            syncing: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The space it replicates.
    pub fn space(&self) -> &Space {
        &self.space
    }

    /// Puts an opaque value (applied locally at once, pushed by the next
    /// sync).
    pub async fn put(&self, collection: &str, id: &str, value: Vec<u8>) -> Result<(), Error> {
        self.enqueue(SyncOp::put(collection, id, value)).await
    }

    /// Patches fields (`None` removes one).
    pub async fn patch(
        &self,
        collection: &str,
        id: &str,
        fields: BTreeMap<String, Option<Vec<u8>>>,
    ) -> Result<(), Error> {
        self.enqueue(SyncOp::patch(collection, id, fields)).await
    }

    /// Deletes a record.
    pub async fn delete(&self, collection: &str, id: &str) -> Result<(), Error> {
        self.enqueue(SyncOp::delete(collection, id)).await
    }

    async fn enqueue(&self, op: SyncOp) -> Result<(), Error> {
        let op = op.with_hlc(self.space.now());
        let bytes = minicbor::to_vec(&op).map_err(|_| corrupt("encode an op"))?;
        sqlx::query("INSERT INTO pending (op) VALUES (?)")
            .bind(bytes)
            .execute(&self.pool)
            .await
            .map_err(db("queue a change"))?;
        Ok(())
    }

    /// How many changes wait to be pushed.
    pub async fn pending(&self) -> Result<u64, Error> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM pending")
            .fetch_one(&self.pool)
            .await
            .map_err(db("count pending changes"))?;
        Ok(to_u64(n))
    }

    /// The cursor the replica has pulled to.
    pub async fn cursor(&self) -> Result<SyncCursor, Error> {
        let rows = sqlx::query("SELECT key, value FROM meta")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read the cursor"))?;
        let mut c = SyncCursor::default();
        for r in rows {
            let (k, v): (String, String) = (r.get(0), r.get(1));
            match k.as_str() {
                "epoch" => c.epoch = Some(v),
                "position" => c.position = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        Ok(c)
    }

    /// One record as the application sees it (pending changes applied).
    pub async fn get(&self, collection: &str, id: &str) -> Result<Option<LocalRecord>, Error> {
        Ok(self.view(collection, Some(id)).await?.pop())
    }

    /// The live records of `collection`, by id, as the application sees
    /// them: the hub's state with the pending changes rebased on it.
    pub async fn list(&self, collection: &str) -> Result<Vec<LocalRecord>, Error> {
        self.view(collection, None).await
    }

    /// The view of `collection` (of one record of it, with `only`).
    async fn view(&self, collection: &str, only: Option<&str>) -> Result<Vec<LocalRecord>, Error> {
        let mut view: BTreeMap<String, (Stored, bool)> = BTreeMap::new();
        let rows = sqlx::query(
            "SELECT id, version, deleted, hlc, actor, fields FROM records
             WHERE collection = ? AND (? IS NULL OR id = ?)",
        )
        .bind(collection)
        .bind(only)
        .bind(only)
        .fetch_all(&self.pool)
        .await
        .map_err(db("read records"))?;
        for r in rows {
            let stored = Stored {
                version: to_u64(r.get(1)),
                deleted: r.get::<i64, _>(2) != 0,
                hlc: to_u64(r.get(3)),
                actor: r.get(4),
                fields: decode_fields(&r.get::<Vec<u8>, _>(5))?,
            };
            view.insert(r.get(0), (stored, false));
        }
        for op in self
            .pending_ops(i64::MAX)
            .await?
            .into_iter()
            .map(|(_, op)| op)
        {
            if op.collection != collection || only.is_some_and(|id| id != op.id) {
                continue;
            }
            let entry = view.entry(op.id.clone()).or_insert_with(|| {
                (
                    Stored {
                        version: 0,
                        deleted: true,
                        hlc: 0,
                        actor: String::new(),
                        fields: BTreeMap::new(),
                    },
                    false,
                )
            });
            if rebase(&mut entry.0, &op, self.space.client_id()) {
                entry.1 = true;
            }
        }
        Ok(view
            .into_iter()
            .filter(|(_, (s, _))| !s.deleted)
            .map(|(id, (s, pending))| LocalRecord {
                collection: collection.to_owned(),
                id,
                fields: s.fields,
                version: s.version,
                pending,
            })
            .collect())
    }

    async fn pending_ops(&self, limit: i64) -> Result<Vec<(i64, SyncOp)>, Error> {
        let rows = sqlx::query("SELECT seq, op FROM pending ORDER BY seq LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(db("read pending changes"))?;
        rows.into_iter()
            .map(|r| {
                let op: SyncOp = minicbor::decode(&r.get::<Vec<u8>, _>(1))
                    .map_err(|_| corrupt("decode a pending change"))?;
                Ok((r.get::<i64, _>(0), op))
            })
            .collect()
    }

    /// Pushes the pending changes (in batches of [`REPLICA_PUSH_BATCH`],
    /// halved while a batch is too big for one frame),
    /// then pulls what changed since the cursor, then checks every
    /// collection's checksum against the hub's and pulls a diverged
    /// collection again. One sync runs at a time.
    ///
    /// A push that fails for good (`quota_exceeded`, `clock_skew`,
    /// `forbidden`) leaves its changes queued and returns the error. A
    /// change pushed twice (its answer lost beyond the retry limit, then
    /// queued again under a new seq) is harmless: it carries the HLC of
    /// when it was made, and applying the same stamped change again changes
    /// nothing (Y9).
    pub async fn sync(&self) -> Result<SyncReport, Error> {
        let _one = self.syncing.lock().await;
        let mut report = SyncReport::default();
        let mut limit = REPLICA_PUSH_BATCH;
        loop {
            let batch = self.pending_ops(limit).await?;
            let Some(&(last, _)) = batch.last() else {
                break;
            };
            let n = batch.len();
            match self
                .space
                .push(batch.into_iter().map(|(_, op)| op).collect())
                .await
            {
                Ok(_) => {}
                // Too big for one frame: halve the batch (nothing was
                // applied).
                Err(e) if n > 1 && too_big(&e) => {
                    limit = i64::try_from(n / 2).unwrap_or(1);
                    continue;
                }
                Err(e) => return Err(e),
            }
            sqlx::query("DELETE FROM pending WHERE seq <= ?")
                .bind(last)
                .execute(&self.pool)
                .await
                .map_err(db("drop pushed changes"))?;
            report.pushed += n;
        }
        let start = self.cursor().await?;
        let (f, pulled) = self.pull_into(start, None).await?;
        report.pulled = pulled;
        report.repaired = self.verify(&f.checksums).await?;
        for c in &report.repaired {
            sqlx::query("DELETE FROM records WHERE collection = ?")
                .bind(c)
                .execute(&self.pool)
                .await
                .map_err(db("drop a diverged collection"))?;
            let (_, n) = self.pull_into(SyncCursor::default(), Some(c)).await?;
            report.pulled += n;
        }
        report.cursor = self.cursor().await?;
        Ok(report)
    }

    /// Syncs now and then every `every`, and at once after each reconnect,
    /// until the returned task is aborted or the client closes. Failures
    /// are logged and retried at the next round.
    pub fn spawn_background(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            let mut state = me.space.inner.client.state();
            loop {
                if let Err(e) = me.sync().await {
                    if matches!(e, Error::Closed(_)) {
                        return;
                    }
                    tracing::debug!(error = %e, "background sync failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    r = state.changed() => if r.is_err() { return },
                }
            }
        })
    }

    /// Pulls from `start` (of `collection` only) into the records table,
    /// each chunk in one transaction with the cursor; a filtered pull does
    /// not move the space's cursor (the next unfiltered pull re-applies
    /// what it needs, newer positions winning).
    async fn pull_into(
        &self,
        start: SyncCursor,
        collection: Option<&str>,
    ) -> Result<(SyncPullFinal, u64), Error> {
        let client = &self.space.inner.client;
        let mut state = client.state();
        let mut pull = PullState::new(start);
        let mut count = 0;
        let mut attempts = 0;
        loop {
            pull.begin();
            let params = self.space.pull_params(&pull.cursor, collection, false);
            let outcome: Result<SyncPullFinal, Error> = async {
                let mut chunks = client.call_stream("sync.pull", &params).await?;
                while let Some(item) = chunks.next().await {
                    match decode_pull_item(&item?)? {
                        PullItem::Chunk(c) => {
                            let to = c.cursor;
                            let records = pull.fresh(c);
                            let mut next = pull.clone();
                            next.delivered(to);
                            if next.cursor != pull.cursor || !records.is_empty() {
                                count += records.len() as u64;
                                self.apply(&records, collection.is_none().then_some(&next.cursor))
                                    .await?;
                            }
                            pull = next;
                        }
                        PullItem::Final(f) => return Ok(f),
                    }
                }
                Err(Error::BrokenStream(
                    "the pull ended without its final chunk",
                ))
            }
            .await;
            match outcome {
                Ok(f) => match pull.on_final(&f) {
                    FinalStep::Reset => {
                        let mut q = String::from("DELETE FROM records");
                        if collection.is_some() {
                            q.push_str(" WHERE collection = ?");
                        }
                        sqlx::query(&q)
                            .bind(collection.unwrap_or_default())
                            .execute(&self.pool)
                            .await
                            .map_err(db("drop records on reset"))?;
                    }
                    FinalStep::Done => {
                        if collection.is_none() {
                            self.apply(&[], Some(&pull.cursor)).await?;
                        }
                        return Ok((f, count));
                    }
                },
                Err(e) if is_pull_retryable(&e) && attempts < SYNC_RETRY_LIMIT => {
                    attempts += 1;
                    wait_connected(&mut state).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes pulled records (newer positions win) and the cursor in one
    /// transaction.
    async fn apply(
        &self,
        records: &[SyncRecord],
        cursor: Option<&SyncCursor>,
    ) -> Result<(), Error> {
        let mut tx = self.pool.begin().await.map_err(db("begin"))?;
        for r in records {
            self.space.observe(r.hlc.unwrap_or(0));
            let fields = r.fields.clone().unwrap_or_default();
            let bytes = minicbor::to_vec(&fields).map_err(|_| corrupt("encode fields"))?;
            sqlx::query(
                "INSERT INTO records (collection, id, version, position, deleted, hlc, actor, fields)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (collection, id) DO UPDATE SET version = excluded.version,
                   position = excluded.position, deleted = excluded.deleted, hlc = excluded.hlc,
                   actor = excluded.actor, fields = excluded.fields
                 WHERE excluded.position >= records.position",
            )
            .bind(&r.collection)
            .bind(&r.id)
            .bind(to_i64(r.version))
            .bind(to_i64(r.position))
            .bind(i64::from(r.deleted))
            .bind(to_i64(r.hlc.unwrap_or(0)))
            .bind(r.actor.clone().unwrap_or_default())
            .bind(bytes)
            .execute(&mut *tx)
            .await
            .map_err(db("write a record"))?;
        }
        if let Some(c) = cursor {
            for (k, v) in [
                ("epoch", c.epoch.clone().unwrap_or_default()),
                ("position", c.position.to_string()),
            ] {
                sqlx::query("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)")
                    .bind(k)
                    .bind(v)
                    .execute(&mut *tx)
                    .await
                    .map_err(db("write the cursor"))?;
            }
        }
        tx.commit().await.map_err(db("commit"))
    }

    /// The checksums of the local (pulled) records, per collection with
    /// live records (Y13).
    pub async fn local_checksums(&self) -> Result<Vec<Checksum>, Error> {
        let rows = sqlx::query(
            "SELECT collection, id, version, fields FROM records WHERE deleted = 0 ORDER BY collection",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db("read records"))?;
        let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for r in rows {
            let (c, id): (String, String) = (r.get(0), r.get(1));
            let fields = decode_fields(&r.get::<Vec<u8>, _>(3))?;
            let h = record_hash(&c, &id, to_u64(r.get(2)), &fields);
            let e = sums.entry(c).or_default();
            e.0 += 1;
            e.1 = e.1.wrapping_add(h);
        }
        Ok(sums
            .into_iter()
            .map(|(c, (n, s))| Checksum::new(c, n, s))
            .collect())
    }

    /// The collections whose local checksum differs from the hub's.
    async fn verify(&self, remote: &[Checksum]) -> Result<Vec<String>, Error> {
        Ok(diverged(&self.local_checksums().await?, remote))
    }

    /// The database, for tests.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A push too big for one frame (refused by the SDK before sending, or by
/// the hub).
fn too_big(e: &Error) -> bool {
    matches!(e, Error::ExceedsLimit { .. })
        || e.code() == Some(&plexus_protocol::ErrorCode::PayloadTooLarge)
}

/// The collections whose checksums differ (a collection absent on one side
/// counts as 0 records with sum 0).
pub(crate) fn diverged(local: &[Checksum], remote: &[Checksum]) -> Vec<String> {
    let index = |cs: &[Checksum]| -> BTreeMap<String, (u64, u64)> {
        cs.iter()
            .filter(|c| c.count > 0)
            .map(|c| (c.collection.clone(), (c.count, c.sum)))
            .collect()
    };
    let (l, r) = (index(local), index(remote));
    let mut out: Vec<String> = l
        .keys()
        .chain(r.keys())
        .filter(|c| l.get(*c) != r.get(*c))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn decode_fields(b: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let f: RecordFields = minicbor::decode(b).map_err(|_| corrupt("decode stored fields"))?;
    Ok(f.0.into_iter().map(|(k, v)| (k, v.to_vec())).collect())
}

/// The checksum hash of one live record (Y13): FNV-1a 64 over `u32be len ‖
/// collection ‖ u32be len ‖ id ‖ u64be version`, then each field in
/// bytewise name order as `u32be len ‖ name ‖ u32be len ‖ value`.
pub(crate) fn record_hash(
    collection: &str,
    id: &str,
    version: u64,
    fields: &BTreeMap<String, Vec<u8>>,
) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    fn bytes(h: &mut u64, b: &[u8]) {
        for &x in b {
            *h ^= u64::from(x);
            *h = h.wrapping_mul(PRIME);
        }
    }
    fn chunk(h: &mut u64, b: &[u8]) {
        bytes(h, &u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        bytes(h, b);
    }
    let mut h = OFFSET;
    chunk(&mut h, collection.as_bytes());
    chunk(&mut h, id.as_bytes());
    bytes(&mut h, &version.to_be_bytes());
    // A BTreeMap of Strings iterates in bytewise order.
    for (k, v) in fields {
        chunk(&mut h, k.as_bytes());
        chunk(&mut h, v);
    }
    h
}

/// Applies a pending op to the hub's state of its record for the local
/// view, if it wins by `(hlc, actor)` against the record's last winning
/// change (Y9, with the record's stamp standing for all its fields: the
/// view may keep a field the hub would take, until the push and the next
/// pull bring the hub's exact merge). Returns whether it applied.
fn rebase(s: &mut Stored, op: &SyncOp, actor: &str) -> bool {
    let stamp = op.hlc.unwrap_or(0);
    if (stamp, actor) < (s.hlc, s.actor.as_str()) {
        return false;
    }
    match op.kind {
        OpKind::Put => {
            s.fields.clear();
            if let Some(v) = &op.value {
                s.fields.insert(String::new(), v.to_vec());
            }
            for (k, v) in op.fields.iter().flat_map(|f| f.0.iter()) {
                if let Some(v) = v {
                    s.fields.insert(k.clone(), v.to_vec());
                }
            }
            s.deleted = false;
        }
        OpKind::Patch => {
            for (k, v) in op.fields.iter().flat_map(|f| f.0.iter()) {
                match v {
                    Some(v) => s.fields.insert(k.clone(), v.to_vec()),
                    None => s.fields.remove(k),
                };
            }
            s.deleted = false;
        }
        OpKind::Delete => {
            s.fields.clear();
            s.deleted = true;
        }
        _ => return false,
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use plexus_protocol::methods::sync::hlc;

    async fn replica(client_id: &str) -> (Replica, std::path::PathBuf, plexus_server::Server) {
        let dir = std::env::temp_dir().join(format!("plexus-replica-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let (hub, client) = crate::sync::testhub::client().await;
        let r = Replica::open(client.space_as("user.a.todo", client_id), dir.join("r.db"))
            .await
            .unwrap();
        (r, dir, hub)
    }

    fn pulled(id: &str, version: u64, position: u64, at: u64, actor: &str, v: &[u8]) -> SyncRecord {
        let mut r = SyncRecord::new(
            "items",
            id,
            version,
            position,
            Some(RecordFields(BTreeMap::from([(
                String::new(),
                v.to_vec().into(),
            )]))),
        );
        r.hlc = Some(at);
        r.actor = Some(actor.into());
        r
    }

    #[test]
    fn the_checksum_hash_is_the_hubs() {
        let fields = BTreeMap::from([
            ("title".to_owned(), b"milk".to_vec()),
            (String::new(), vec![0, 1]),
            ("b".to_owned(), Vec::new()),
        ]);
        let ours = record_hash("items", "1", 7, &fields);
        let hub = plexus_server::sync::model::record_hash(
            "items",
            "1",
            7,
            fields.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        );
        assert_eq!(ours, hub);
        assert_ne!(ours, record_hash("items", "1", 8, &fields));
    }

    #[test]
    fn divergence_is_per_collection() {
        let a = vec![Checksum::new("a", 1, 5), Checksum::new("b", 2, 6)];
        assert!(diverged(&a, &a).is_empty());
        let b = vec![
            Checksum::new("a", 1, 5),
            Checksum::new("b", 2, 7),
            Checksum::new("c", 1, 1),
        ];
        assert_eq!(diverged(&a, &b), vec!["b".to_owned(), "c".to_owned()]);
        assert!(
            diverged(&[Checksum::new("z", 0, 0)], &[]).is_empty(),
            "empty = absent"
        );
    }

    #[tokio::test]
    async fn local_writes_apply_at_once_and_rebase_on_pulled_changes() {
        let (r, dir, _hub) = replica("me").await;
        r.put("items", "1", b"milk".to_vec()).await.unwrap();
        r.put("items", "2", b"eggs".to_vec()).await.unwrap();
        r.delete("items", "2").await.unwrap();
        assert_eq!(r.pending().await.unwrap(), 3);
        let view = r.list("items").await.unwrap();
        assert_eq!(view.len(), 1);
        assert_eq!(
            (view[0].id.as_str(), view[0].pending, view[0].version),
            ("1", true, 0)
        );
        assert_eq!(view[0].fields[""], b"milk");

        // A pulled change older than the pending put: the put still wins
        // in the view. A pulled record stamped later than our changes wins.
        let mine = r.pending_ops(10).await.unwrap()[0].1.hlc.unwrap();
        let cursor = SyncCursor::new(Some("E".into()), 2);
        r.apply(
            &[
                pulled("1", 1, 1, hlc(1, 0), "other", b"old"),
                pulled("3", 1, 2, mine + 10, "other", b"tea"),
            ],
            Some(&cursor),
        )
        .await
        .unwrap();
        assert_eq!(
            r.get("items", "1").await.unwrap().unwrap().fields[""],
            b"milk"
        );
        assert_eq!(
            r.get("items", "3").await.unwrap().unwrap().fields[""],
            b"tea"
        );
        assert_eq!(r.cursor().await.unwrap(), cursor);
        r.patch(
            "items",
            "3",
            BTreeMap::from([("done".to_owned(), Some(vec![1]))]),
        )
        .await
        .unwrap();
        let three = r.get("items", "3").await.unwrap().unwrap();
        assert!(three.pending);
        assert_eq!(
            three.fields.get("done").map(Vec::as_slice),
            Some(&[1u8][..]),
            "our clock moved past the pulled stamp"
        );
        // Newer positions win; an older one does not overwrite.
        r.apply(&[pulled("3", 1, 1, 0, "x", b"stale")], None)
            .await
            .unwrap();
        assert_eq!(
            r.get("items", "3").await.unwrap().unwrap().fields[""],
            b"tea"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn checksums_detect_a_corrupted_local_record() {
        let (r, dir, _hub) = replica("me").await;
        r.apply(
            &[
                pulled("1", 3, 1, hlc(5, 0), "a", b"milk"),
                pulled("2", 1, 2, hlc(5, 1), "a", b"eggs"),
            ],
            Some(&SyncCursor::new(Some("E".into()), 2)),
        )
        .await
        .unwrap();
        let hub = r.local_checksums().await.unwrap();
        assert_eq!(hub[0].count, 2);
        assert!(r.verify(&hub).await.unwrap().is_empty());
        // Someone edits the file behind the replica's back.
        let evil = minicbor::to_vec(RecordFields(BTreeMap::from([(
            String::new(),
            b"beer".to_vec().into(),
        )])))
        .unwrap();
        sqlx::query("UPDATE records SET fields = ? WHERE id = '2'")
            .bind(evil)
            .execute(r.pool())
            .await
            .unwrap();
        assert_eq!(r.verify(&hub).await.unwrap(), vec!["items".to_owned()]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
