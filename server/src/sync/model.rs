//! A record's state and the merge rules (design Y9), the checksum (Y13)
//! and the stored encoding of the fields. Pure: no I/O, no clock.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use crate::storage::StorageError;

/// A change's timestamp: `(hlc, actor)`, ordered by `hlc` then the actor's
/// bytes. The hub's own actor is `""`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The HLC value.
    pub hlc: u64,
    /// Who made the change (the push's client id).
    pub actor: String,
}

impl Stamp {
    /// A stamp.
    pub fn new(hlc: u64, actor: impl Into<String>) -> Stamp {
        Stamp {
            hlc,
            actor: actor.into(),
        }
    }
}

impl PartialOrd for Stamp {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stamp {
    fn cmp(&self, other: &Self) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| self.actor.as_bytes().cmp(other.actor.as_bytes()))
    }
}

/// One stored field: its value (`None`: removed by a patch, kept so that an
/// older write cannot bring it back) and the stamp of the write that set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldEntry {
    /// The value, or `None` when removed.
    pub value: Option<Vec<u8>>,
    /// The winning write's stamp.
    pub stamp: Stamp,
}

/// What one operation does, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replace the record with these fields.
    Put(BTreeMap<String, Vec<u8>>),
    /// Merge these fields (`None` removes one).
    Patch(BTreeMap<String, Option<Vec<u8>>>),
    /// Delete the record.
    Delete,
}

/// A record's merge state. A record never seen is `RecordState::default()`
/// (version 0).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordState {
    /// Server version: +1 per applied change; 0: never stored.
    pub version: u64,
    /// The space position of its last change.
    pub position: u64,
    /// The stamp of the winning put or delete (fields older are invisible).
    pub base: Stamp,
    /// Whether that winning op was a delete.
    pub base_delete: bool,
    /// The fields, visible or not yet dropped.
    pub fields: BTreeMap<String, FieldEntry>,
    /// The stamp of the last change that won something.
    pub last: Stamp,
    /// Expiry, server Unix ms.
    pub expires_at: Option<u64>,
    /// When it became a tombstone (server ms of the writer's clock).
    pub deleted_at: Option<i64>,
}

impl RecordState {
    /// Its visible fields: a value and a stamp at least the base's.
    pub fn visible(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.fields.iter().filter_map(|(k, f)| match &f.value {
            Some(v) if f.stamp >= self.base => Some((k.as_str(), v.as_slice())),
            _ => None,
        })
    }

    /// Whether it is a tombstone: the winning base op was a delete and no
    /// newer patch revived a field.
    pub fn deleted(&self) -> bool {
        self.base_delete && self.visible().next().is_none()
    }

    /// Whether it counts as a live record (stored and not a tombstone).
    pub fn live(&self) -> bool {
        self.version > 0 && !self.deleted()
    }

    /// Bytes it counts for in the quota: collection + id + its visible
    /// field names and values (0 for tombstones and unstored records).
    pub fn size(&self, collection: &str, id: &str) -> u64 {
        if !self.live() {
            return 0;
        }
        let fields: usize = self.visible().map(|(k, v)| k.len() + v.len()).sum();
        (collection.len() + id.len() + fields) as u64
    }

    fn write(&mut self, name: &str, value: Option<&[u8]>, stamp: &Stamp) -> bool {
        if *stamp < self.base {
            return false;
        }
        match self.fields.get_mut(name) {
            Some(f) if *stamp < f.stamp => false,
            Some(f) => {
                if f.stamp == *stamp && f.value.as_deref() == value {
                    return false;
                }
                f.stamp = stamp.clone();
                f.value = value.map(<[u8]>::to_vec);
                true
            }
            None => {
                self.fields.insert(
                    name.to_owned(),
                    FieldEntry {
                        value: value.map(<[u8]>::to_vec),
                        stamp: stamp.clone(),
                    },
                );
                true
            }
        }
    }

    fn rebase(&mut self, stamp: &Stamp, delete: bool) -> bool {
        if *stamp <= self.base {
            return false;
        }
        self.base = stamp.clone();
        self.base_delete = delete;
        let base = self.base.clone();
        self.fields.retain(|_, f| f.stamp >= base);
        true
    }

    /// Merges one change stamped `stamp` (design Y9). Returns whether
    /// anything stored changed; the caller then bumps the version and
    /// assigns a position ([`RecordState::stamp_change`]).
    pub fn apply(&mut self, change: &Change, stamp: &Stamp, expires_at: Option<u64>) -> bool {
        let mut changed = false;
        match change {
            Change::Put(fields) => {
                let won = self.rebase(stamp, false);
                changed |= won;
                for (k, v) in fields {
                    changed |= self.write(k, Some(v), stamp);
                }
                if won && self.expires_at != expires_at {
                    self.expires_at = expires_at;
                    changed = true;
                }
            }
            Change::Patch(fields) => {
                for (k, v) in fields {
                    changed |= self.write(k, v.as_deref(), stamp);
                }
                if changed && expires_at.is_some() && self.expires_at != expires_at {
                    self.expires_at = expires_at;
                }
            }
            Change::Delete => {
                changed |= self.rebase(stamp, true);
            }
        }
        if changed && *stamp > self.last {
            self.last = stamp.clone();
        }
        changed
    }

    /// Records an applied change at `position`, at writer time `now_ms`.
    pub fn stamp_change(&mut self, position: u64, now_ms: i64) {
        self.version += 1;
        self.position = position;
        if self.deleted() {
            self.expires_at = None;
            if self.deleted_at.is_none() {
                self.deleted_at = Some(now_ms);
            }
        } else {
            self.deleted_at = None;
        }
    }

    /// The greatest stamp it holds (base, fields, last).
    pub fn max_hlc(&self) -> u64 {
        self.fields
            .values()
            .map(|f| f.stamp.hlc)
            .chain([self.base.hlc, self.last.hlc])
            .max()
            .unwrap_or(0)
    }
}

/// FNV-1a 64-bit offset basis.
pub const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
/// FNV-1a 64-bit prime.
pub const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

struct Fnv(u64);

impl Fnv {
    fn bytes(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(FNV_PRIME);
        }
    }

    fn chunk(&mut self, b: &[u8]) {
        self.bytes(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.bytes(b);
    }
}

/// The checksum hash of one live record (design Y13): FNV-1a 64 over
/// `u32be len ‖ collection ‖ u32be len ‖ id ‖ u64be version`, then for each
/// visible field in bytewise name order `u32be len ‖ name ‖ u32be len ‖
/// value`. A collection's checksum is the wrapping sum of these over its
/// live records.
pub fn record_hash<'a>(
    collection: &str,
    id: &str,
    version: u64,
    fields: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> u64 {
    let mut h = Fnv(FNV_OFFSET);
    h.chunk(collection.as_bytes());
    h.chunk(id.as_bytes());
    h.bytes(&version.to_be_bytes());
    // BTreeMap iteration of `String` keys is bytewise order already; sort
    // anyway so that any caller order gives the same hash.
    let mut fields: Vec<(&str, &[u8])> = fields.into_iter().collect();
    fields.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    for (k, v) in fields {
        h.chunk(k.as_bytes());
        h.chunk(v);
    }
    h.0
}

impl RecordState {
    /// Its contribution to its collection's checksum (0 unless live).
    pub fn hash(&self, collection: &str, id: &str) -> u64 {
        if self.live() {
            record_hash(collection, id, self.version, self.visible())
        } else {
            0
        }
    }
}

/// Encodes the fields for the `fields` column: per field `u16be name len ‖
/// name ‖ u8 has-value ‖ [u32be value len ‖ value] ‖ u64be hlc ‖ u16be
/// actor len ‖ actor`.
pub fn encode_fields(fields: &BTreeMap<String, FieldEntry>, out: &mut Vec<u8>) {
    for (k, f) in fields {
        put_u16(out, k.len());
        out.extend_from_slice(k.as_bytes());
        match &f.value {
            Some(v) => {
                out.push(1);
                out.extend_from_slice(&u32::try_from(v.len()).unwrap_or(u32::MAX).to_be_bytes());
                out.extend_from_slice(v);
            }
            None => out.push(0),
        }
        out.extend_from_slice(&f.stamp.hlc.to_be_bytes());
        put_u16(out, f.stamp.actor.len());
        out.extend_from_slice(f.stamp.actor.as_bytes());
    }
}

fn put_u16(out: &mut Vec<u8>, n: usize) {
    // Names are at most MAX_FIELD_NAME bytes and actors MAX_CLIENT_LEN
    // (checked before a push is accepted).
    out.extend_from_slice(&u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes());
}

/// Decodes the `fields` column.
pub fn decode_fields(mut b: &[u8]) -> Result<BTreeMap<String, FieldEntry>, StorageError> {
    const BAD: StorageError = StorageError::Corrupt("sync_records.fields");
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], StorageError> {
        if b.len() < n {
            return Err(BAD);
        }
        let (h, t) = b.split_at(n);
        *b = t;
        Ok(h)
    }
    fn text(b: &mut &[u8]) -> Result<String, StorageError> {
        let n = u16::from_be_bytes(take(b, 2)?.try_into().map_err(|_| BAD)?);
        String::from_utf8(take(b, usize::from(n))?.to_vec()).map_err(|_| BAD)
    }
    let mut map = BTreeMap::new();
    while !b.is_empty() {
        let name = text(&mut b)?;
        let value = match take(&mut b, 1)?[0] {
            0 => None,
            1 => {
                let n = u32::from_be_bytes(take(&mut b, 4)?.try_into().map_err(|_| BAD)?);
                Some(take(&mut b, n as usize)?.to_vec())
            }
            _ => return Err(BAD),
        };
        let hlc = u64::from_be_bytes(take(&mut b, 8)?.try_into().map_err(|_| BAD)?);
        let actor = text(&mut b)?;
        map.insert(
            name,
            FieldEntry {
                value,
                stamp: Stamp { hlc, actor },
            },
        );
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(hlc: u64, a: &str) -> Stamp {
        Stamp::new(hlc, a)
    }

    fn put(kv: &[(&str, &str)]) -> Change {
        Change::Put(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
                .collect(),
        )
    }

    fn patch(kv: &[(&str, Option<&str>)]) -> Change {
        Change::Patch(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.map(|v| v.as_bytes().to_vec())))
                .collect(),
        )
    }

    fn view(r: &RecordState) -> Vec<(String, String)> {
        r.visible()
            .map(|(k, v)| (k.to_owned(), String::from_utf8(v.to_vec()).unwrap()))
            .collect()
    }

    #[test]
    fn stamps_order_by_hlc_then_actor() {
        assert!(s(2, "a") > s(1, "z"));
        assert!(s(1, "b") > s(1, "a"));
        assert!(s(1, "a") > s(1, ""), "the hub's actor sorts first");
    }

    #[test]
    fn lww_fields_and_put_delete() {
        let mut r = RecordState::default();
        assert!(r.apply(&put(&[("a", "1"), ("b", "1")]), &s(10, "x"), None));
        r.stamp_change(1, 0);
        // A newer patch of a, an older patch of b (loses).
        assert!(r.apply(&patch(&[("a", Some("2"))]), &s(12, "y"), None));
        assert!(!r.apply(&patch(&[("b", Some("0"))]), &s(9, "z"), None));
        assert_eq!(
            view(&r),
            [("a".into(), "2".into()), ("b".into(), "1".into())]
        );
        // A delete at 11 drops b (10) but a (12) survives: revived.
        assert!(r.apply(&Change::Delete, &s(11, "z"), None));
        assert!(!r.deleted());
        assert_eq!(view(&r), [("a".into(), "2".into())]);
        // A delete at 13 wins.
        assert!(r.apply(&Change::Delete, &s(13, "x"), None));
        assert!(r.deleted());
        // A stale put changes nothing; removing a field is a write.
        assert!(!r.apply(&put(&[("a", "9")]), &s(5, "x"), None));
        assert!(r.apply(&patch(&[("c", None)]), &s(14, "x"), None));
        assert!(r.deleted(), "a removed field does not revive");
    }

    #[test]
    fn fields_round_trip_and_hash_is_order_free() {
        let mut r = RecordState::default();
        r.apply(&put(&[("b", "2"), ("a", "1")]), &s(1, "c1"), None);
        r.apply(&patch(&[("z", None)]), &s(2, "c2"), None);
        let mut buf = Vec::new();
        encode_fields(&r.fields, &mut buf);
        assert_eq!(decode_fields(&buf).unwrap(), r.fields);
        assert!(decode_fields(&buf[..buf.len() - 1]).is_err());
        let h1 = record_hash("c", "i", 1, [("a", &b"1"[..]), ("b", &b"2"[..])]);
        let h2 = record_hash("c", "i", 1, [("b", &b"2"[..]), ("a", &b"1"[..])]);
        assert_eq!(h1, h2);
        assert_ne!(
            h1,
            record_hash("c", "i", 2, [("a", &b"1"[..]), ("b", &b"2"[..])])
        );
        assert_ne!(
            h1,
            record_hash("c", "i", 1, [("a", &b"1"[..]), ("b", &b"3"[..])])
        );
        // The length prefixes keep ("ab","c") and ("a","bc") apart.
        assert_ne!(record_hash("ab", "c", 1, []), record_hash("a", "bc", 1, []));
        // FNV-1a of the empty input is the offset basis.
        assert_eq!(Fnv(FNV_OFFSET).0, 0xcbf2_9ce4_8422_2325);
    }
}
