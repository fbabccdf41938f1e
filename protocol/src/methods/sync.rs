//! Record sync: `sync.push`, `sync.pull` (streamed, optionally live) and
//! `sync.info`.
//!
//! A *space* (topic syntax, granted by the token's `sync_read` /
//! `sync_write` patterns) holds *collections* of *records*. A record is a
//! map of fields (name → bytes); an opaque value is the single field `""`.
//! Every applied change advances the space's `position` (increasing); a client
//! keeps the last position it has as its *cursor*, with the space's
//! `epoch`.
//!
//! Timestamps are hybrid logical clock values: a `u64` whose high 48 bits
//! are Unix milliseconds and whose low 16 bits are a counter (big-endian
//! bytes `MMMMMMMMMMMMCCCC`). A stamp `(hlc, actor)` orders by `hlc`, then
//! by the actor's bytes; the actor is the push's `client` (the server's own
//! is `""`). See [`hlc_ms`] and [`hlc_counter`].

use std::collections::BTreeMap;

use minicbor::bytes::ByteVec;
use minicbor::{Decode, Encode};

use crate::method::RpcMethod;

/// The milliseconds part of an HLC value (bits 63..16).
///
/// ```
/// use plexus_protocol::methods::sync::{hlc, hlc_counter, hlc_ms};
/// let t = hlc(1_700_000_000_000, 3);
/// assert_eq!((hlc_ms(t), hlc_counter(t)), (1_700_000_000_000, 3));
/// assert_eq!(t.to_be_bytes(), [0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, 0x00, 0x03]);
/// ```
pub const fn hlc_ms(hlc: u64) -> u64 {
    hlc >> 16
}

/// The counter part of an HLC value (bits 15..0).
pub const fn hlc_counter(hlc: u64) -> u16 {
    // Masked to 16 bits first.
    #[allow(clippy::cast_possible_truncation)]
    let c = (hlc & 0xffff) as u16;
    c
}

/// Builds an HLC value from milliseconds (the low 48 bits are kept) and a
/// counter.
pub const fn hlc(ms: u64, counter: u16) -> u64 {
    ((ms & 0xffff_ffff_ffff) << 16) | counter as u64
}

text_enum! {
    /// What a `sync.push` operation does.
    OpKind {
        /// Replace the whole record (its fields) — or create it.
        Put = "put",
        /// Merge fields by last-write-wins on `(hlc, actor)`; a `null` field
        /// removes it.
        Patch = "patch",
        /// Delete the record (a tombstone that syncs).
        Delete = "delete",
    }
}

macro_rules! field_map {
    ($(#[$doc:meta])* $name:ident, $value:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct $name(pub BTreeMap<String, $value>);

        impl<C> Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                ctx: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                self.0.encode(e, ctx)
            }
        }

        impl<'b, C> Decode<'b, C> for $name {
            /// Decodes the map, rejecting a field name that appears twice.
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                ctx: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                let len = d
                    .map()?
                    .ok_or_else(|| minicbor::decode::Error::message("indefinite field map"))?;
                let mut map = BTreeMap::new();
                for _ in 0..len {
                    let k = d.str()?.to_owned();
                    let v = <$value>::decode(d, ctx)?;
                    if map.insert(k, v).is_some() {
                        return Err(minicbor::decode::Error::message("duplicate field name"));
                    }
                }
                Ok($name(map))
            }
        }
    };
}

field_map! {
    /// The fields of a `patch` (or `put`): name → bytes, `null` removes the
    /// field (patch only). A name may appear only once.
    PatchFields, Option<ByteVec>
}

field_map! {
    /// A record's visible fields: name → bytes.
    RecordFields, ByteVec
}

/// A space's usage: `{0: records, 1: bytes}` (live records and their
/// bytes; tombstones are not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct Usage {
    /// Live records.
    #[n(0)]
    pub records: u64,
    /// Their bytes (collection + id + field names and values).
    #[n(1)]
    pub bytes: u64,
}

impl Usage {
    /// A usage.
    pub fn new(records: u64, bytes: u64) -> Self {
        Usage { records, bytes }
    }
}

/// A space's quota: `{0: max_records, 1: max_bytes}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct Limits {
    /// Most live records.
    #[n(0)]
    pub max_records: u64,
    /// Most bytes of live records.
    #[n(1)]
    pub max_bytes: u64,
}

impl Limits {
    /// A quota.
    pub fn new(max_records: u64, max_bytes: u64) -> Self {
        Limits {
            max_records,
            max_bytes,
        }
    }
}

/// One operation of a push: `{0: kind, 1: collection, 2: id, ? 3: value, ?
/// 4: fields, ? 5: expected_version, ? 6: hlc, ? 7: expires_at}`.
///
/// `value` (put only) is sugar for the single field `""`. `hlc` defaults to
/// the push's. `expires_at` (put, patch) is server Unix milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncOp {
    /// What it does.
    #[n(0)]
    pub kind: OpKind,
    /// The collection (1..=128 bytes).
    #[n(1)]
    pub collection: String,
    /// The record id (1..=256 bytes).
    #[n(2)]
    pub id: String,
    /// An opaque value (put).
    #[n(3)]
    pub value: Option<ByteVec>,
    /// Fields (put, patch).
    #[n(4)]
    pub fields: Option<PatchFields>,
    /// Apply only if the record's version is this (0: no live record).
    #[n(5)]
    pub expected_version: Option<u64>,
    /// When the change was made (HLC); default the push's `hlc`.
    #[n(6)]
    pub hlc: Option<u64>,
    /// When the record expires (server Unix ms).
    #[n(7)]
    pub expires_at: Option<u64>,
}

impl SyncOp {
    fn new(kind: OpKind, collection: impl Into<String>, id: impl Into<String>) -> Self {
        SyncOp {
            kind,
            collection: collection.into(),
            id: id.into(),
            value: None,
            fields: None,
            expected_version: None,
            hlc: None,
            expires_at: None,
        }
    }

    /// Puts an opaque value.
    pub fn put(collection: impl Into<String>, id: impl Into<String>, value: Vec<u8>) -> Self {
        let mut op = SyncOp::new(OpKind::Put, collection, id);
        op.value = Some(value.into());
        op
    }

    /// Puts a record of fields.
    pub fn put_fields(
        collection: impl Into<String>,
        id: impl Into<String>,
        fields: BTreeMap<String, Vec<u8>>,
    ) -> Self {
        let mut op = SyncOp::new(OpKind::Put, collection, id);
        op.fields = Some(PatchFields(
            fields
                .into_iter()
                .map(|(k, v)| (k, Some(v.into())))
                .collect(),
        ));
        op
    }

    /// Patches fields (`None` removes one).
    pub fn patch(
        collection: impl Into<String>,
        id: impl Into<String>,
        fields: BTreeMap<String, Option<Vec<u8>>>,
    ) -> Self {
        let mut op = SyncOp::new(OpKind::Patch, collection, id);
        op.fields = Some(PatchFields(
            fields
                .into_iter()
                .map(|(k, v)| (k, v.map(ByteVec::from)))
                .collect(),
        ));
        op
    }

    /// Deletes a record.
    pub fn delete(collection: impl Into<String>, id: impl Into<String>) -> Self {
        SyncOp::new(OpKind::Delete, collection, id)
    }

    /// Applies only if the record's version is `version` (0: absent).
    pub fn with_expected_version(mut self, version: u64) -> Self {
        self.expected_version = Some(version);
        self
    }

    /// Sets the op's own HLC timestamp.
    pub fn with_hlc(mut self, hlc: u64) -> Self {
        self.hlc = Some(hlc);
        self
    }

    /// Sets the expiry (server Unix ms).
    pub fn with_expires_at(mut self, ms: u64) -> Self {
        self.expires_at = Some(ms);
        self
    }
}

/// `sync.push` params: `{0: space, 1: client, 2: seq, 3: hlc, 4: [+ op], ?
/// 5: return_values}`. All-or-nothing; applied once per `(client, seq)`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncPushParams {
    /// The space.
    #[n(0)]
    pub space: String,
    /// The client (replica) id, 1..=64 bytes: the actor of its stamps.
    #[n(1)]
    pub client: String,
    /// The client's mutation sequence number (≥ 1, increasing).
    #[n(2)]
    pub seq: u64,
    /// The client's HLC at the push.
    #[n(3)]
    pub hlc: u64,
    /// The operations, applied in order.
    #[n(4)]
    pub ops: Vec<SyncOp>,
    /// On `conflict`, include the current fields of the records.
    #[n(5)]
    pub return_values: Option<bool>,
}

impl SyncPushParams {
    /// A push.
    pub fn new(
        space: impl Into<String>,
        client: impl Into<String>,
        seq: u64,
        hlc: u64,
        ops: Vec<SyncOp>,
    ) -> Self {
        SyncPushParams {
            space: space.into(),
            client: client.into(),
            seq,
            hlc,
            ops,
            return_values: None,
        }
    }

    /// Asks for the current values with a conflict.
    pub fn with_return_values(mut self, on: bool) -> Self {
        self.return_values = Some(on);
        self
    }
}

/// A record's version after a push: `{0: collection, 1: id, 2: version}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct RecordVersion {
    /// The collection.
    #[n(0)]
    pub collection: String,
    /// The id.
    #[n(1)]
    pub id: String,
    /// Its version now.
    #[n(2)]
    pub version: u64,
}

impl RecordVersion {
    /// A version entry.
    pub fn new(collection: impl Into<String>, id: impl Into<String>, version: u64) -> Self {
        RecordVersion {
            collection: collection.into(),
            id: id.into(),
            version,
        }
    }
}

/// `sync.push` result: `{0: position, 1: hlc, 2: usage, 3: duplicate, 4: [*
/// version]}`. The push is visible to every pull from `position` on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncPushResult {
    /// The space's position after the push (read-your-writes).
    #[n(0)]
    pub position: u64,
    /// The hub's HLC after observing the push.
    #[n(1)]
    pub hlc: u64,
    /// The space's usage after the push.
    #[n(2)]
    pub usage: Usage,
    /// The `(client, seq)` was applied before; nothing was applied now.
    #[n(3)]
    pub duplicate: bool,
    /// The versions of the records this push changed (ops that changed
    /// nothing are not listed).
    #[n(4)]
    pub versions: Vec<RecordVersion>,
}

impl SyncPushResult {
    /// A result.
    pub fn new(position: u64, hlc: u64, usage: Usage, duplicate: bool) -> Self {
        SyncPushResult {
            position,
            hlc,
            usage,
            duplicate,
            versions: Vec::new(),
        }
    }
}

/// One mismatched record of a `conflict`: `{0: collection, 1: id, 2:
/// version, 3: deleted, ? 4: fields}` (`version` 0: no record).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncConflict {
    /// The collection.
    #[n(0)]
    pub collection: String,
    /// The id.
    #[n(1)]
    pub id: String,
    /// Its current version (0: none).
    #[n(2)]
    pub version: u64,
    /// Whether it is a tombstone.
    #[n(3)]
    pub deleted: bool,
    /// Its current fields, with `return_values`.
    #[n(4)]
    pub fields: Option<RecordFields>,
}

impl SyncConflict {
    /// A conflict entry.
    pub fn new(
        collection: impl Into<String>,
        id: impl Into<String>,
        version: u64,
        deleted: bool,
        fields: Option<RecordFields>,
    ) -> Self {
        SyncConflict {
            collection: collection.into(),
            id: id.into(),
            version,
            deleted,
            fields,
        }
    }
}

/// The `details` of a `sync.push` `conflict`: `{0: [+ conflict]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncConflicts {
    /// Every mismatched record.
    #[n(0)]
    pub records: Vec<SyncConflict>,
}

impl SyncConflicts {
    /// Details.
    pub fn new(records: Vec<SyncConflict>) -> Self {
        SyncConflicts { records }
    }
}

/// The `details` of `quota_exceeded`: `{0: usage, 1: limits}` (the usage
/// the push would have reached).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct QuotaDetails {
    /// The usage with the push applied.
    #[n(0)]
    pub usage: Usage,
    /// The quota.
    #[n(1)]
    pub limits: Limits,
}

impl QuotaDetails {
    /// Details.
    pub fn new(usage: Usage, limits: Limits) -> Self {
        QuotaDetails { usage, limits }
    }
}

/// The `details` of `clock_skew`: `{0: server_hlc, 1: max_skew_ms}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ClockSkewDetails {
    /// The hub's HLC.
    #[n(0)]
    pub server_hlc: u64,
    /// How far ahead of the hub's clock a timestamp may be.
    #[n(1)]
    pub max_skew_ms: u64,
}

impl ClockSkewDetails {
    /// Details.
    pub fn new(server_hlc: u64, max_skew_ms: u64) -> Self {
        ClockSkewDetails {
            server_hlc,
            max_skew_ms,
        }
    }
}

/// `sync.pull` params: `{0: space, ? 1: cursor, ? 2: epoch, ? 3:
/// collection, ? 4: limit, ? 5: live, ? 6: notify_only}`.
///
/// Without `cursor` (or 0) the pull is a snapshot: live records only.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncPullParams {
    /// The space.
    #[n(0)]
    pub space: String,
    /// The last position the client has.
    #[n(1)]
    pub cursor: Option<u64>,
    /// The epoch the cursor belongs to (another → `reset`).
    #[n(2)]
    pub epoch: Option<String>,
    /// Only this collection.
    #[n(3)]
    pub collection: Option<String>,
    /// Most records per chunk (capped by the server).
    #[n(4)]
    pub limit: Option<u64>,
    /// Keep streaming committed changes after the final chunk.
    #[n(5)]
    pub live: Option<bool>,
    /// Live chunks carry only the cursors, no records.
    #[n(6)]
    pub notify_only: Option<bool>,
}

impl SyncPullParams {
    /// A snapshot pull of `space`.
    pub fn new(space: impl Into<String>) -> Self {
        SyncPullParams {
            space: space.into(),
            cursor: None,
            epoch: None,
            collection: None,
            limit: None,
            live: None,
            notify_only: None,
        }
    }

    /// Pulls the changes after `cursor` of `epoch`.
    pub fn with_cursor(mut self, epoch: impl Into<String>, cursor: u64) -> Self {
        self.epoch = Some(epoch.into());
        self.cursor = Some(cursor);
        self
    }

    /// Only `collection`.
    pub fn with_collection(mut self, collection: impl Into<String>) -> Self {
        self.collection = Some(collection.into());
        self
    }

    /// Sets the chunk limit.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Stays live after the catch-up (`notify_only`: cursors only).
    pub fn with_live(mut self, notify_only: bool) -> Self {
        self.live = Some(true);
        self.notify_only = Some(notify_only);
        self
    }
}

/// A record in a pull or live chunk: `{0: collection, 1: id, 2: version, 3:
/// position, 4: deleted, ? 5: fields, ? 6: hlc, ? 7: actor, ? 8:
/// expires_at}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncRecord {
    /// The collection.
    #[n(0)]
    pub collection: String,
    /// The id.
    #[n(1)]
    pub id: String,
    /// Its version.
    #[n(2)]
    pub version: u64,
    /// The position of its last change.
    #[n(3)]
    pub position: u64,
    /// Whether it is a tombstone.
    #[n(4)]
    pub deleted: bool,
    /// Its visible fields (absent for a tombstone).
    #[n(5)]
    pub fields: Option<RecordFields>,
    /// The HLC of the change that last won (client's or the hub's).
    #[n(6)]
    pub hlc: Option<u64>,
    /// The actor of that change (`""`: the hub).
    #[n(7)]
    pub actor: Option<String>,
    /// When it expires (server Unix ms).
    #[n(8)]
    pub expires_at: Option<u64>,
}

impl SyncRecord {
    /// A record.
    pub fn new(
        collection: impl Into<String>,
        id: impl Into<String>,
        version: u64,
        position: u64,
        fields: Option<RecordFields>,
    ) -> Self {
        SyncRecord {
            collection: collection.into(),
            id: id.into(),
            version,
            position,
            deleted: fields.is_none(),
            fields,
            hlc: None,
            actor: None,
            expires_at: None,
        }
    }
}

/// A chunk of `sync.pull`: `{0: [* record], 1: cursor, ? 2: prev}`. During
/// the catch-up `cursor` is the greatest position in the chunk; live
/// chunks (after the final) carry the previous and the new cursor of one
/// commit (`records` empty with `notify_only`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncChunk {
    /// The records, in position order.
    #[n(0)]
    pub records: Vec<SyncRecord>,
    /// The cursor after this chunk.
    #[n(1)]
    pub cursor: u64,
    /// Live chunks: the cursor before the commit.
    #[n(2)]
    pub prev: Option<u64>,
}

impl SyncChunk {
    /// A chunk.
    pub fn new(records: Vec<SyncRecord>, cursor: u64, prev: Option<u64>) -> Self {
        SyncChunk {
            records,
            cursor,
            prev,
        }
    }
}

/// A collection's checksum: `{0: collection, 1: count, 2: sum}` (see the
/// server's `sync::checksum` for the exact algorithm).
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct Checksum {
    /// The collection.
    #[n(0)]
    pub collection: String,
    /// Its live records.
    #[n(1)]
    pub count: u64,
    /// The wrapping sum of their hashes.
    #[n(2)]
    pub sum: u64,
}

impl Checksum {
    /// A checksum.
    pub fn new(collection: impl Into<String>, count: u64, sum: u64) -> Self {
        Checksum {
            collection: collection.into(),
            count,
            sum,
        }
    }
}

/// The final chunk of a `sync.pull` catch-up: `{0: cursor, 1: count, 2:
/// epoch, 3: reset, 4: [* checksum], 5: horizon}`. The client's state is the
/// space's at `cursor`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncPullFinal {
    /// The cursor the client is now at.
    #[n(0)]
    pub cursor: u64,
    /// Records streamed.
    #[n(1)]
    pub count: u64,
    /// The space's epoch.
    #[n(2)]
    pub epoch: String,
    /// The cursor was older than the tombstone horizon (or of another
    /// epoch): the pull was a snapshot from 0 and the client must drop its
    /// local state first.
    #[n(3)]
    pub reset: bool,
    /// Checksums of the collections pulled.
    #[n(4)]
    pub checksums: Vec<Checksum>,
    /// Cursors below this (except 0) get a reset.
    #[n(5)]
    pub horizon: u64,
}

impl SyncPullFinal {
    /// A final chunk.
    pub fn new(
        cursor: u64,
        count: u64,
        epoch: impl Into<String>,
        reset: bool,
        checksums: Vec<Checksum>,
        horizon: u64,
    ) -> Self {
        SyncPullFinal {
            cursor,
            count,
            epoch: epoch.into(),
            reset,
            checksums,
            horizon,
        }
    }
}

/// `sync.info` params: `{0: space}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncInfoParams {
    /// The space.
    #[n(0)]
    pub space: String,
}

impl SyncInfoParams {
    /// Params.
    pub fn new(space: impl Into<String>) -> Self {
        SyncInfoParams {
            space: space.into(),
        }
    }
}

/// A collection in `sync.info`: `{0: collection, 1: records, 2: bytes, 3:
/// last_position, 4: checksum}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct CollectionInfo {
    /// The collection.
    #[n(0)]
    pub collection: String,
    /// Live records.
    #[n(1)]
    pub records: u64,
    /// Their bytes.
    #[n(2)]
    pub bytes: u64,
    /// The position of its last change.
    #[n(3)]
    pub last_position: u64,
    /// Its checksum (as in [`Checksum::sum`]).
    #[n(4)]
    pub checksum: u64,
}

impl CollectionInfo {
    /// An entry.
    pub fn new(
        collection: impl Into<String>,
        records: u64,
        bytes: u64,
        last_position: u64,
        checksum: u64,
    ) -> Self {
        CollectionInfo {
            collection: collection.into(),
            records,
            bytes,
            last_position,
            checksum,
        }
    }
}

/// `sync.info` result: `{0: position, 1: epoch, 2: usage, 3: limits, 4:
/// horizon, 5: [* collection]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SyncInfoResult {
    /// The space's position.
    #[n(0)]
    pub position: u64,
    /// Its epoch.
    #[n(1)]
    pub epoch: String,
    /// Its usage.
    #[n(2)]
    pub usage: Usage,
    /// Its quota.
    #[n(3)]
    pub limits: Limits,
    /// The tombstone horizon position.
    #[n(4)]
    pub horizon: u64,
    /// Its collections, in byte order.
    #[n(5)]
    pub collections: Vec<CollectionInfo>,
}

/// `sync.push` — apply a batch of record changes, all or nothing.
#[derive(Debug)]
pub enum SyncPush {}
impl RpcMethod for SyncPush {
    const NAME: &'static str = "sync.push";
    type Params<'a> = SyncPushParams;
    type Result = SyncPushResult;
}

/// `sync.pull` — streamed: [`SyncChunk`]s, then [`SyncPullFinal`] (the
/// result), then with `live` more [`SyncChunk`]s until cancelled.
#[derive(Debug)]
pub enum SyncPull {}
impl RpcMethod for SyncPull {
    const NAME: &'static str = "sync.pull";
    type Params<'a> = SyncPullParams;
    type Result = SyncPullFinal;
}

/// `sync.info` — a space's collections, usage and positions.
#[derive(Debug)]
pub enum SyncInfo {}
impl RpcMethod for SyncInfo {
    const NAME: &'static str = "sync.info";
    type Params<'a> = SyncInfoParams;
    type Result = SyncInfoResult;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ErrorCode, RawValue, decode_params};

    fn round_trip<T>(v: &T) -> T
    where
        T: Encode<()> + for<'b> Decode<'b, ()> + PartialEq + std::fmt::Debug,
    {
        let raw = RawValue::encode(v).unwrap();
        let back: T = decode_params(&raw).unwrap();
        assert_eq!(&back, v);
        back
    }

    #[test]
    fn hlc_layout() {
        let t = hlc(0x0102_0304_0506, 0x0708);
        assert_eq!(t.to_be_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(hlc_ms(t), 0x0102_0304_0506);
        assert_eq!(hlc_counter(t), 0x0708);
        assert!(hlc(5, 0) > hlc(4, u16::MAX), "ms dominate the counter");
    }

    #[test]
    fn push_round_trips() {
        let mut f = BTreeMap::new();
        f.insert("title".to_owned(), Some(b"hi".to_vec()));
        f.insert("done".to_owned(), None);
        let p = SyncPushParams::new(
            "user.a.notes",
            "c1",
            7,
            hlc(1000, 1),
            vec![
                SyncOp::put("notes", "n1", vec![1, 2]).with_expected_version(0),
                SyncOp::patch("notes", "n2", f)
                    .with_hlc(hlc(999, 0))
                    .with_expires_at(5000),
                SyncOp::delete("notes", "n3").with_expected_version(4),
                SyncOp::put_fields("t", "x", BTreeMap::from([("a".into(), vec![9])])),
            ],
        )
        .with_return_values(true);
        round_trip(&p);
        let mut r = SyncPushResult::new(10, hlc(1000, 2), Usage::new(3, 40), false);
        r.versions.push(RecordVersion::new("notes", "n1", 1));
        round_trip(&r);
        round_trip(&SyncConflicts::new(vec![SyncConflict::new(
            "notes",
            "n1",
            3,
            false,
            Some(RecordFields(BTreeMap::from([("".into(), vec![1].into())]))),
        )]));
        round_trip(&QuotaDetails::new(Usage::new(1, 2), Limits::new(1, 1)));
        round_trip(&ClockSkewDetails::new(5, 60_000));
    }

    #[test]
    fn pull_and_info_round_trip() {
        let p = SyncPullParams::new("s")
            .with_cursor("e", 4)
            .with_collection("c")
            .with_limit(10)
            .with_live(true);
        round_trip(&p);
        let mut rec = SyncRecord::new("c", "1", 2, 4, Some(RecordFields::default()));
        rec.hlc = Some(hlc(1, 1));
        rec.actor = Some("c1".into());
        rec.expires_at = Some(9);
        let tomb = SyncRecord::new("c", "2", 3, 5, None);
        assert!(tomb.deleted);
        round_trip(&SyncChunk {
            records: vec![rec, tomb],
            cursor: 5,
            prev: Some(3),
        });
        round_trip(&SyncPullFinal {
            cursor: 5,
            count: 2,
            epoch: "e".into(),
            reset: true,
            checksums: vec![Checksum::new("c", 1, u64::MAX)],
            horizon: 2,
        });
        round_trip(&SyncInfoParams::new("s"));
        round_trip(&SyncInfoResult {
            position: 5,
            epoch: "e".into(),
            usage: Usage::new(1, 2),
            limits: Limits::new(3, 4),
            horizon: 0,
            collections: vec![CollectionInfo::new("c", 1, 2, 5, 77)],
        });
    }

    #[test]
    fn duplicate_keys_and_field_names_are_refused() {
        // {0: "s", 0: "t"}: a duplicate top-level key.
        let raw = RawValue::from_bytes(
            vec![0xa2, 0x00, 0x61, b's', 0x00, 0x61, b't'].into(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            decode_params::<SyncInfoParams>(&raw).unwrap_err().code,
            ErrorCode::InvalidParams
        );
        // {"a": h'01', "a": null}: a field named twice.
        let bytes = vec![0xa2, 0x61, b'a', 0x41, 0x01, 0x61, b'a', 0xf6];
        assert!(minicbor::decode::<PatchFields>(&bytes).is_err());
        let ok = vec![0xa2, 0x61, b'a', 0x41, 0x01, 0x61, b'b', 0xf6];
        let f: PatchFields = minicbor::decode(&ok).unwrap();
        assert_eq!(f.0.get("b"), Some(&None));
    }

    #[test]
    fn unknown_op_kinds_and_keys() {
        let raw = RawValue::encode(&"merge").unwrap();
        assert_eq!(
            raw.decode::<OpKind>().unwrap(),
            OpKind::Unknown("merge".into())
        );
        // {0: "s", 9: 1}: an unknown key is skipped.
        let raw = RawValue::from_bytes(
            vec![0xa2, 0x00, 0x61, b's', 0x09, 0x01].into(),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(decode_params::<SyncInfoParams>(&raw).unwrap().space, "s");
        // A push without ops is invalid params.
        let raw =
            RawValue::from_bytes(vec![0xa1, 0x00, 0x61, b's'].into(), &Default::default()).unwrap();
        assert!(decode_params::<SyncPushParams>(&raw).is_err());
    }
}
