//! One group commit of the sync writer: the pushes of one transaction
//! applied against an in-memory copy of the rows they touch.
//!
//! [`Group::load`] reads every space, client, record and collection row the
//! group's pushes name in a few multi-row statements; [`Group::apply`]
//! checks and merges each push in order against that copy (a refused push
//! leaves it untouched, so it writes nothing while the rest of the group
//! commits); [`Group::write`] writes each changed row once, in a few
//! multi-row statements. A transaction thus runs a handful of statements
//! however many pushes it holds (decision Y4), and a record changed by
//! several pushes of the group is written once, with its last position.

use std::collections::{BTreeMap, HashMap};

use plexus_protocol::methods::sync::{
    QuotaDetails, RecordFields, RecordVersion, SyncConflict, SyncConflicts, SyncPushResult, Usage,
};

use super::chunk::wire_record;
use super::hlc::Hlc;
use super::model::{RecordState, Stamp};
use super::store::{CollectionRow, SpaceRow, StoredRecord, SyncWriteConn};
use super::{Committed, MAX_FIELDS, PushReq, SyncConfig, SyncError, new_epoch};
use crate::storage::StorageError;

/// Most operations one group commit holds (a push that would take the
/// group past it starts the next group; a first push is never split: it
/// has at most `max_ops`): bounds the rows a group keeps in memory besides
/// the queued pushes themselves.
pub const MAX_GROUP_OPS: usize = 4096;

/// What a push did, before COMMIT.
pub(super) struct Applied {
    pub(super) result: Result<SyncPushResult, SyncError>,
    pub(super) committed: Option<(String, Committed)>,
}

/// A record's key in a group: (space name, collection, id).
type RecordKey = (String, String, String);

/// The rows a group touches, as its pushes leave them.
#[derive(Default)]
pub(super) struct Group {
    spaces: HashMap<String, SpaceRow>,
    /// `(space name, client)` → last seq.
    clients: HashMap<(String, String), u64>,
    records: HashMap<RecordKey, StoredRecord>,
    /// `(space name, collection)` → aggregates.
    colls: HashMap<(String, String), CollectionRow>,
    /// Space name → its collections, where a push may add one.
    coll_count: HashMap<String, u64>,
    /// Changed rows, written by [`Group::write`].
    dirty_records: std::collections::HashSet<RecordKey>,
    dirty_colls: Vec<(String, String)>,
    dirty_spaces: Vec<String>,
    /// `(space name, client)` → (seq, position).
    dirty_clients: BTreeMap<(String, String), (u64, u64)>,
}

/// A record's share of its collection's aggregates.
pub(super) struct Footprint {
    live: bool,
    size: u64,
    hash: u64,
    fields: usize,
}

impl Footprint {
    pub(super) fn of(r: &StoredRecord) -> Footprint {
        Footprint {
            live: r.state.live(),
            size: r.state.size(&r.collection, &r.id),
            hash: r.state.hash(&r.collection, &r.id),
            fields: r.state.visible().count(),
        }
    }
}

/// Moves a space's and a collection's aggregates from `before` to `after`.
pub(super) fn account(
    space: &mut SpaceRow,
    c: &mut CollectionRow,
    before: &Footprint,
    after: &Footprint,
    position: u64,
) {
    let (b, a) = (u64::from(before.live), u64::from(after.live));
    c.records = (c.records + a).saturating_sub(b);
    space.records = (space.records + a).saturating_sub(b);
    c.bytes = (c.bytes + after.size).saturating_sub(before.size);
    space.bytes = (space.bytes + after.size).saturating_sub(before.size);
    c.checksum = c
        .checksum
        .wrapping_sub(before.hash)
        .wrapping_add(after.hash);
    c.last_position = c.last_position.max(position);
}

fn usage(s: &SpaceRow) -> Usage {
    Usage::new(s.records, s.bytes)
}

impl Group {
    /// Reads the rows `batch` touches inside the open transaction.
    pub(super) async fn load<'a>(
        conn: &mut dyn SyncWriteConn,
        batch: impl Iterator<Item = &'a PushReq> + Clone,
    ) -> Result<Group, StorageError> {
        let mut g = Group::default();
        // Per space: its clients, record keys and collections, each once.
        type Wanted = (Vec<String>, Vec<(String, String)>, Vec<String>);
        let mut wanted: BTreeMap<&str, Wanted> = BTreeMap::new();
        let mut seen_clients: std::collections::HashSet<(&str, &str)> = Default::default();
        let mut seen_keys: std::collections::HashSet<(&str, &str, &str)> = Default::default();
        let mut seen_colls: std::collections::HashSet<(&str, &str)> = Default::default();
        for req in batch {
            let w = wanted.entry(req.space.as_str()).or_default();
            if seen_clients.insert((&req.space, &req.client)) {
                w.0.push(req.client.clone());
            }
            for op in &req.ops {
                if seen_keys.insert((&req.space, &op.collection, &op.id)) {
                    w.1.push((op.collection.clone(), op.id.clone()));
                }
                if seen_colls.insert((&req.space, &op.collection)) {
                    w.2.push(op.collection.clone());
                }
            }
        }
        for (name, (clients, keys, colls)) in wanted {
            let space = match conn.space(name).await? {
                Some(s) => s,
                None => SpaceRow {
                    name: name.to_owned(),
                    epoch: new_epoch(),
                    ..SpaceRow::default()
                },
            };
            if space.id != 0 {
                for (c, seq) in conn.clients(space.id, &clients).await? {
                    g.clients.insert((name.to_owned(), c), seq);
                }
                for r in conn.records(space.id, &keys).await? {
                    g.records
                        .insert((name.to_owned(), r.collection.clone(), r.id.clone()), r);
                }
                let found = conn.collections(space.id, &colls).await?;
                let all_found = found.len() == colls.len();
                for c in found {
                    g.colls.insert((name.to_owned(), c.name.clone()), c);
                }
                if !all_found {
                    let n = conn.collection_count(space.id).await?;
                    g.coll_count.insert(name.to_owned(), n);
                }
            } else {
                g.coll_count.insert(name.to_owned(), 0);
            }
            g.spaces.insert(name.to_owned(), space);
        }
        Ok(g)
    }

    /// Checks and merges one push against the group's rows (inserting its
    /// space if it is new and the push is accepted). A refusal changes
    /// nothing.
    pub(super) async fn apply(
        &mut self,
        conn: &mut dyn SyncWriteConn,
        req: &PushReq,
        hlc: &Hlc,
        config: &SyncConfig,
        now: i64,
    ) -> Result<Applied, StorageError> {
        let refuse = |e: SyncError| Applied {
            result: Err(e),
            committed: None,
        };
        let Some(mut space) = self.spaces.get(&req.space).cloned() else {
            return Err(StorageError::Database("a push outside its group".into()));
        };
        let client_key = (req.space.clone(), req.client.clone());
        if self
            .clients
            .get(&client_key)
            .is_some_and(|last| req.seq <= *last)
        {
            return Ok(Applied {
                result: Ok(SyncPushResult::new(
                    space.last_position,
                    hlc.peek(),
                    usage(&space),
                    true,
                )),
                committed: None,
            });
        }
        // The records the push touches, copied: a refusal drops the copies.
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        let mut recs: Vec<StoredRecord> = Vec::new();
        for op in &req.ops {
            let key = (op.collection.as_str(), op.id.as_str());
            if let std::collections::hash_map::Entry::Vacant(e) = index.entry(key) {
                e.insert(recs.len());
                let stored =
                    self.records
                        .get(&(req.space.clone(), op.collection.clone(), op.id.clone()));
                recs.push(stored.cloned().unwrap_or_else(|| StoredRecord {
                    collection: op.collection.clone(),
                    id: op.id.clone(),
                    state: RecordState::default(),
                }));
            }
        }
        // Expected versions, against the state before the push.
        let mut conflicts = Vec::new();
        for op in &req.ops {
            let Some(expected) = op.expected else {
                continue;
            };
            let r = &recs[index[&(op.collection.as_str(), op.id.as_str())]];
            let current = if r.state.live() { r.state.version } else { 0 };
            if current != expected
                && !conflicts
                    .iter()
                    .any(|c: &SyncConflict| c.collection == r.collection && c.id == r.id)
            {
                let fields = (req.return_values && r.state.live()).then(|| {
                    RecordFields(
                        r.state
                            .visible()
                            .map(|(k, v)| (k.to_owned(), v.to_vec().into()))
                            .collect(),
                    )
                });
                conflicts.push(SyncConflict::new(
                    &r.collection,
                    &r.id,
                    r.state.version,
                    r.state.deleted(),
                    fields,
                ));
            }
        }
        if !conflicts.is_empty() {
            return Ok(refuse(SyncError::Conflict(SyncConflicts::new(conflicts))));
        }
        // Merge in memory.
        let before: Vec<Footprint> = recs.iter().map(Footprint::of).collect();
        let prev = space.last_position;
        let mut position = prev;
        let mut changed = vec![false; recs.len()];
        for op in &req.ops {
            let i = index[&(op.collection.as_str(), op.id.as_str())];
            let stamp = Stamp::new(op.hlc, req.client.as_str());
            if recs[i].state.apply(&op.change, &stamp, op.expires_at) {
                position += 1;
                recs[i].state.stamp_change(position, now);
                changed[i] = true;
            }
        }
        // The record bound, on each record as it would be stored (Z5): an
        // op under the bound can still grow a record past it by adding
        // fields. A record stored under a larger earlier bound may still
        // shrink.
        let max_record = config.max_record_bytes as u64;
        if recs.iter().enumerate().any(|(i, r)| {
            let size = r.state.size(&r.collection, &r.id);
            changed[i] && size > max_record && size > before[i].size
        }) {
            return Ok(refuse(SyncError::TooLarge(
                "record larger than max_record_bytes",
            )));
        }
        // The field bound likewise: one chunk must carry any record, and
        // the frame budget counts at most MAX_FIELDS fields (Y19, Z5).
        if recs.iter().enumerate().any(|(i, r)| {
            let n = r.state.visible().count();
            changed[i] && n > MAX_FIELDS && n > before[i].fields
        }) {
            return Ok(refuse(SyncError::TooLarge(
                "record with more than 256 fields",
            )));
        }
        // The collection bound: the final chunk lists every collection's
        // checksum, and must fit one frame.
        let mut new_colls: Vec<&str> = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            if changed[i]
                && !new_colls.contains(&r.collection.as_str())
                && !self
                    .colls
                    .contains_key(&(req.space.clone(), r.collection.clone()))
            {
                new_colls.push(&r.collection);
            }
        }
        let had = self.coll_count.get(&req.space).copied().unwrap_or(0);
        if !new_colls.is_empty() && had + new_colls.len() as u64 > config.max_collections as u64 {
            return Ok(refuse(SyncError::TooManyCollections(
                config.max_collections,
            )));
        }
        // Quota, on the usage the push would reach.
        let mut next = space.clone();
        for (i, r) in recs.iter().enumerate() {
            if changed[i] {
                let mut scratch = CollectionRow::default();
                account(&mut next, &mut scratch, &before[i], &Footprint::of(r), 0);
            }
        }
        let limits = config.limits_for(&req.space);
        let over_records = next.records > limits.max_records && next.records > space.records;
        let over_bytes = next.bytes > limits.max_bytes && next.bytes > space.bytes;
        if over_records || over_bytes {
            return Ok(refuse(SyncError::Quota(QuotaDetails::new(
                usage(&next),
                limits,
            ))));
        }
        // Accepted: into the group's rows.
        if !new_colls.is_empty() {
            self.coll_count
                .insert(req.space.clone(), had + new_colls.len() as u64);
        }
        if space.id == 0 {
            space.id = conn.insert_space(&space).await?;
        }
        let mut versions = Vec::new();
        let mut order: Vec<usize> = (0..recs.len()).filter(|i| changed[*i]).collect();
        order.sort_by_key(|i| recs[*i].state.position);
        for &i in &order {
            let r = &recs[i];
            let ck = (req.space.clone(), r.collection.clone());
            let c = self
                .colls
                .entry(ck.clone())
                .or_insert_with(|| CollectionRow {
                    name: r.collection.clone(),
                    ..CollectionRow::default()
                });
            account(
                &mut space,
                c,
                &before[i],
                &Footprint::of(r),
                r.state.position,
            );
            if !self.dirty_colls.contains(&ck) {
                self.dirty_colls.push(ck);
            }
            versions.push(RecordVersion::new(&r.collection, &r.id, r.state.version));
        }
        space.last_position = position;
        for op in &req.ops {
            hlc.observe(op.hlc);
        }
        let mut result = SyncPushResult::new(position, hlc.peek(), usage(&space), false);
        result.versions = versions;
        let committed = (!order.is_empty()).then(|| {
            (
                space.name.clone(),
                Committed {
                    prev,
                    position,
                    records: order.iter().map(|&i| wire_record(&recs[i])).collect(),
                },
            )
        });
        for &i in &order {
            let r = std::mem::replace(
                &mut recs[i],
                StoredRecord {
                    collection: String::new(),
                    id: String::new(),
                    state: RecordState::default(),
                },
            );
            let key = (req.space.clone(), r.collection.clone(), r.id.clone());
            self.dirty_records.insert(key.clone());
            self.records.insert(key, r);
        }
        self.clients.insert(client_key.clone(), req.seq);
        self.dirty_clients.insert(client_key, (req.seq, position));
        if !self.dirty_spaces.contains(&req.space) {
            self.dirty_spaces.push(req.space.clone());
        }
        self.spaces.insert(req.space.clone(), space);
        Ok(Applied {
            result: Ok(result),
            committed,
        })
    }

    /// Writes every changed row once.
    pub(super) async fn write(self, conn: &mut dyn SyncWriteConn) -> Result<(), StorageError> {
        for name in &self.dirty_spaces {
            let Some(space) = self.spaces.get(name) else {
                continue;
            };
            let mut recs: Vec<&StoredRecord> = self
                .dirty_records
                .iter()
                .filter(|k| k.0 == *name)
                .filter_map(|k| self.records.get(k))
                .collect();
            recs.sort_by_key(|r| r.state.position);
            conn.put_records(space.id, &recs).await?;
            for (k, c) in &self.dirty_colls {
                if k == name
                    && let Some(row) = self.colls.get(&(k.clone(), c.clone()))
                {
                    conn.put_collection(space.id, row).await?;
                }
            }
            conn.update_space(space).await?;
            let clients: Vec<(&str, u64, u64)> = self
                .dirty_clients
                .iter()
                .filter(|((s, _), _)| s == name)
                .map(|((_, c), (seq, pos))| (c.as_str(), *seq, *pos))
                .collect();
            conn.put_clients(space.id, &clients).await?;
        }
        Ok(())
    }
}
