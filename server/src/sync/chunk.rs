//! Pull chunks carried as the stored bytes of their records (decision
//! Y21): each record row keeps its `sync-record` encoding (written with
//! the row), so a pull copies bytes instead of decoding fourteen columns
//! and encoding them again.

use bytes::Bytes;
use minicbor::encode::{Error, Write};
use minicbor::{Encode, Encoder};
use plexus_protocol::methods::sync::{RecordFields, SyncChunk, SyncRecord};

use super::store::StoredRecord;

/// A record as a pull sends it: its position and its encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Its position.
    pub position: u64,
    /// Its CBOR `sync-record`.
    pub bytes: Bytes,
}

impl RawRecord {
    /// Decodes the record.
    pub fn decode(&self) -> Result<SyncRecord, minicbor::decode::Error> {
        minicbor::decode(&self.bytes)
    }
}

/// A chunk of a pull: encodes exactly as the [`SyncChunk`] of its records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawChunk {
    /// The records, in position order.
    pub records: Vec<RawRecord>,
    /// The cursor after this chunk.
    pub cursor: u64,
    /// Live chunks: the cursor before it.
    pub prev: Option<u64>,
}

impl RawChunk {
    /// The chunk with its records decoded (stored bytes that do not decode
    /// are an error).
    pub fn decode(&self) -> Result<SyncChunk, minicbor::decode::Error> {
        let records = self
            .records
            .iter()
            .map(RawRecord::decode)
            .collect::<Result<_, _>>()?;
        Ok(SyncChunk::new(records, self.cursor, self.prev))
    }
}

impl<C> Encode<C> for RawChunk {
    fn encode<W: Write>(&self, e: &mut Encoder<W>, _: &mut C) -> Result<(), Error<W::Error>> {
        e.map(if self.prev.is_some() { 3 } else { 2 })?;
        e.u8(0)?.array(self.records.len() as u64)?;
        for r in &self.records {
            e.writer_mut().write_all(&r.bytes).map_err(Error::write)?;
        }
        e.u8(1)?.u64(self.cursor)?;
        if let Some(p) = self.prev {
            e.u8(2)?.u64(p)?;
        }
        Ok(())
    }
}

/// The wire form of a stored record: visible fields only, the stamp of its
/// last change.
pub fn wire_record(r: &StoredRecord) -> SyncRecord {
    let s = &r.state;
    let deleted = s.deleted();
    let fields = (!deleted).then(|| {
        RecordFields(
            s.visible()
                .map(|(k, v)| (k.to_owned(), v.to_vec().into()))
                .collect(),
        )
    });
    let mut w = SyncRecord::new(
        r.collection.clone(),
        r.id.clone(),
        s.version,
        s.position,
        fields,
    );
    w.deleted = deleted;
    w.hlc = Some(s.last.hlc);
    w.actor = Some(s.last.actor.clone());
    w.expires_at = s.expires_at;
    w
}

/// The bytes the `wire` column stores for `r`.
pub fn wire_bytes(r: &StoredRecord) -> Vec<u8> {
    // Encoding into a Vec cannot fail.
    minicbor::to_vec(wire_record(r)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::model::{Change, RecordState, Stamp};
    use std::collections::BTreeMap;

    fn stored(id: &str, position: u64, deleted: bool) -> StoredRecord {
        let mut state = RecordState::default();
        let fields = BTreeMap::from([("a".to_string(), b"1".to_vec()), ("".into(), vec![0])]);
        state.apply(&Change::Put(fields), &Stamp::new(7, "phone"), Some(99));
        if deleted {
            state.apply(&Change::Delete, &Stamp::new(8, "phone"), None);
        }
        state.stamp_change(position, 1);
        StoredRecord {
            collection: "notes".into(),
            id: id.into(),
            state,
        }
    }

    #[test]
    fn a_raw_chunk_encodes_as_the_chunk_of_its_records() {
        let recs = [stored("a", 3, false), stored("b", 4, true)];
        for prev in [None, Some(2)] {
            let raw = RawChunk {
                records: recs
                    .iter()
                    .map(|r| RawRecord {
                        position: r.state.position,
                        bytes: wire_bytes(r).into(),
                    })
                    .collect(),
                cursor: 4,
                prev,
            };
            let chunk = SyncChunk::new(recs.iter().map(wire_record).collect(), 4, prev);
            assert_eq!(
                minicbor::to_vec(&raw).unwrap(),
                minicbor::to_vec(&chunk).unwrap()
            );
            assert_eq!(raw.decode().unwrap(), chunk);
        }
        let empty = RawChunk::default();
        assert_eq!(
            minicbor::to_vec(&empty).unwrap(),
            minicbor::to_vec(SyncChunk::default()).unwrap()
        );
    }
}
