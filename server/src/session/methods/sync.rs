//! The record-sync methods (issue 11): `sync.push`, `sync.pull` and
//! `sync.info`, over the [`SyncEngine`](crate::sync::SyncEngine) the hub
//! opened at start (registered only when `[sync] enabled`, decision Y17).
//!
//! - `sync.push`: `can_sync_write` on the space, then the push is
//!   validated and enqueued to the engine's writer in the synchronous part
//!   ([`SyncEngine::submit`](crate::sync::SyncEngine::submit)), so one
//!   connection's pushes are applied in the order they arrived; answered
//!   after the commit.
//! - `sync.pull`: `can_sync_read`; streamed with credit. Catch-up chunks
//!   ([`SyncChunk`]) are split to fit `max-frame-size`; without `live` the
//!   [`SyncPullFinal`](plexus_protocol::methods::sync::SyncPullFinal) is the
//!   final chunk. With `live` (decision Y18) the engine is watched *before*
//!   the catch-up, the `SyncPullFinal` goes as a non-final chunk, and every
//!   later commit of the space follows as a live chunk (`prev` set) until
//!   the client cancels the request or the connection closes; a watcher
//!   more than `live-buffer` commits behind ends the request with
//!   `unavailable` (resume with the cursor).
//! - `sync.info`: `can_sync_read`.
//!
//! Every error is [`SyncError::to_wire`](crate::sync::SyncError::to_wire).

use std::time::Instant;

use plexus_protocol::methods::sync::{
    SyncChunk, SyncInfo, SyncInfoParams, SyncInfoResult, SyncPull, SyncPullFinal, SyncPullParams,
    SyncPush, SyncPushParams, SyncPushResult, SyncRecord,
};
use plexus_protocol::topic::Topic;

use super::topic_error;
use crate::session::context::Ctx;
use crate::session::error::RequestError;
use crate::session::registry::{Meta, Registry};
use crate::session::stream::ChunkSink;
use crate::sync::{LiveChanges, PullStep, RawChunk, RawRecord, SyncEngine, SyncError};

/// Bytes of a pull chunk besides its records, at their longest (frame
/// header, request id, sequence number, map and list headers, the cursors).
pub const SYNC_CHUNK_ENVELOPE: usize = 64;

/// Bytes a record takes in a chunk besides its collection, id, field names
/// and values (map keys, version, position, flag, hlc, actor (a client id
/// of at most 64 bytes), expiry and the length headers).
pub const RECORD_OVERHEAD: usize = 128;

/// Bytes per field besides its name and value (two length headers).
pub const FIELD_OVERHEAD: usize = 18;

/// Bytes one collection takes, at most, in a pull's final chunk (its
/// checksum) or in a `sync.info` result (its name of at most 128 bytes,
/// counts, position and checksum, with their keys and headers).
pub const COLLECTION_BYTES: usize = 192;

/// Bytes of a pull's final chunk or a `sync.info` result besides its
/// collections (cursors, counts, epoch, flags, keys and headers).
pub const SUMMARY_ENVELOPE: usize = SYNC_CHUNK_ENVELOPE + 256;

/// The most collections a pull's final chunk (their checksums) or a
/// `sync.info` result can list in one frame of `max_frame_size`: the
/// effective `[sync] max-collections` is at most this (Y22).
pub const fn collections_that_fit(max_frame_size: usize) -> usize {
    max_frame_size.saturating_sub(SUMMARY_ENVELOPE) / COLLECTION_BYTES
}

/// The largest record (collection, id, field names and values, as the
/// engine counts it) that one chunk of `max_frame_size` can carry, however
/// many fields it has: the effective `[sync] max-record-bytes` is at most
/// this (Y19).
pub fn record_bytes_that_fit(max_frame_size: usize) -> usize {
    max_frame_size
        .saturating_sub(SYNC_CHUNK_ENVELOPE + RECORD_OVERHEAD)
        .saturating_sub(crate::sync::MAX_FIELDS * FIELD_OVERHEAD)
}

/// Registers the methods.
pub fn register(r: &mut Registry) {
    r.asynchronous::<SyncPush, _>(Meta::default(), push);
    r.streamed::<SyncPull, _>(Meta::default().without_timeout(), pull);
    r.asynchronous::<SyncInfo, _>(Meta::default(), info);
}

/// A sync error as the request's error (the one mapping, Y16).
pub fn sync_error(e: SyncError) -> RequestError {
    if let SyncError::Unavailable(cause) = &e {
        // The cause names the database failure, never a payload.
        tracing::warn!(error = %cause, "record sync operation failed");
    }
    RequestError::Stream(e.to_wire())
}

fn engine(ctx: &Ctx<'_>) -> Result<SyncEngine, RequestError> {
    ctx.hub().sync.clone().ok_or(RequestError::MethodNotFound)
}

fn space(ctx: &Ctx<'_>, name: &str) -> Result<Topic, RequestError> {
    Topic::parse(name, ctx.config().max_topic_len).map_err(|e| topic_error("space", e))
}

type Fut<T> = futures_util::future::BoxFuture<'static, Result<T, RequestError>>;

fn push(ctx: &mut Ctx<'_>, p: SyncPushParams) -> Result<Fut<SyncPushResult>, RequestError> {
    let engine = engine(ctx)?;
    let topic = space(ctx, &p.space)?;
    if !ctx.caps().can_sync_write(&topic) {
        return Err(RequestError::forbidden("push to this space"));
    }
    let ops = p.ops.len() as u64;
    let started = Instant::now();
    let fut = engine.submit(p).map_err(sync_error)?;
    Ok(Box::pin(async move {
        let r = fut.await.map_err(sync_error);
        metrics::histogram!("plexus_sync_push_seconds").record(started.elapsed().as_secs_f64());
        if r.is_ok() {
            metrics::counter!("plexus_sync_push_ops_total").increment(ops);
        }
        r
    }))
}

fn info(ctx: &mut Ctx<'_>, p: SyncInfoParams) -> Result<Fut<SyncInfoResult>, RequestError> {
    let engine = engine(ctx)?;
    let topic = space(ctx, &p.space)?;
    if !ctx.caps().can_sync_read(&topic) {
        return Err(RequestError::forbidden("read this space"));
    }
    Ok(Box::pin(async move {
        engine.info(&p.space).await.map_err(sync_error)
    }))
}

/// A record in a chunk being split.
trait Piece {
    /// The bytes it takes in a chunk, at most.
    fn bytes(&self) -> usize;
    /// Its position.
    fn position(&self) -> u64;
}

impl Piece for SyncRecord {
    fn bytes(&self) -> usize {
        let fields = self.fields.as_ref().map_or(0, |f| {
            f.0.iter()
                .map(|(k, v)| k.len() + v.len() + FIELD_OVERHEAD)
                .sum()
        });
        RECORD_OVERHEAD + self.collection.len() + self.id.len() + fields
    }
    fn position(&self) -> u64 {
        self.position
    }
}

impl Piece for RawRecord {
    fn bytes(&self) -> usize {
        self.bytes.len()
    }
    fn position(&self) -> u64 {
        self.position
    }
}

/// Splits `records` (in position order) into chunks of at most `budget`
/// record bytes, as `(records, cursor, prev)`: the last chunk's cursor is
/// `cursor`, each other's the position of its last record. With `prev`
/// (live), each chunk's `prev` is the cursor before it.
fn split<R: Piece>(
    records: Vec<R>,
    cursor: u64,
    prev: Option<u64>,
    budget: usize,
) -> Vec<(Vec<R>, u64, Option<u64>)> {
    let mut out = Vec::new();
    let mut cur: Vec<R> = Vec::new();
    let mut bytes = 0;
    let mut before = prev;
    for r in records {
        let b = r.bytes();
        if !cur.is_empty() && bytes + b > budget {
            let last = cur.last().map_or(cursor, Piece::position);
            out.push((std::mem::take(&mut cur), last, before));
            before = before.map(|_| last);
            bytes = 0;
        }
        bytes += b;
        cur.push(r);
    }
    out.push((cur, cursor, before));
    out
}

fn pull(
    ctx: &mut Ctx<'_>,
    p: SyncPullParams,
    mut sink: ChunkSink,
) -> Result<Fut<SyncPullFinal>, RequestError> {
    let engine = engine(ctx)?;
    let topic = space(ctx, &p.space)?;
    if !ctx.caps().can_sync_read(&topic) {
        return Err(RequestError::forbidden("pull from this space"));
    }
    let live = p.live.unwrap_or(false);
    if p.notify_only.unwrap_or(false) && !live {
        return Err(RequestError::invalid_params("notify_only needs live"));
    }
    // Watch first (Y15): nothing committed after the catch-up is missed.
    let rx = live.then(|| engine.watch(&p.space));
    let budget = ctx
        .config()
        .max_frame_size
        .saturating_sub(SYNC_CHUNK_ENVELOPE)
        .max(1);
    let rows = metrics::counter!("plexus_sync_pull_records_total");
    Ok(Box::pin(async move {
        let mut pull = engine.pull(&p).await.map_err(sync_error)?;
        let fin = loop {
            match pull.next().await.map_err(sync_error)? {
                Some(PullStep::Chunk(c)) => {
                    rows.increment(c.records.len() as u64);
                    for (records, cursor, prev) in split(c.records, c.cursor, None, budget) {
                        sink.send(&RawChunk {
                            records,
                            cursor,
                            prev,
                        })
                        .await?;
                    }
                }
                Some(PullStep::Final(f)) => break f,
                None => return Err(RequestError::internal("pull ended without a final")),
            }
        };
        let Some(rx) = rx else {
            return Ok(fin);
        };
        sink.send(&fin).await?;
        let mut changes = LiveChanges::new(
            rx,
            fin.cursor,
            p.collection.clone(),
            p.notify_only.unwrap_or(false),
        );
        loop {
            let c = changes.next().await.map_err(sync_error)?;
            rows.increment(c.records.len() as u64);
            let prev = c.prev;
            for (records, cursor, prev) in split(c.records, c.cursor, prev, budget) {
                sink.send(&SyncChunk::new(records, cursor, prev)).await?;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::methods::sync::RecordFields;
    use std::collections::BTreeMap;

    fn rec(pos: u64, size: usize) -> SyncRecord {
        SyncRecord::new(
            "c",
            "i",
            1,
            pos,
            Some(RecordFields(BTreeMap::from([(
                String::new(),
                vec![0; size].into(),
            )]))),
        )
    }

    #[test]
    fn chunks_are_split_by_bytes_with_consistent_cursors() {
        let one = rec(1, 100).bytes();
        let recs = (1..=5).map(|p| rec(p * 2, 100)).collect();
        let chunks = split(recs, 12, Some(0), one * 2);
        let shape: Vec<(usize, u64, Option<u64>)> = chunks
            .iter()
            .map(|(r, cursor, prev)| (r.len(), *cursor, *prev))
            .collect();
        assert_eq!(
            shape,
            vec![(2, 4, Some(0)), (2, 8, Some(4)), (1, 12, Some(8))]
        );
        // A record larger than the budget still goes, alone.
        let chunks = split(vec![rec(1, 1000), rec(2, 1)], 2, None, 10);
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| c.2.is_none()));
        // Nothing: one empty chunk with the cursor (a live notify_only).
        let chunks = split(Vec::<SyncRecord>::new(), 7, Some(3), 10);
        assert_eq!(chunks, vec![(Vec::new(), 7, Some(3))]);
    }

    #[test]
    fn stored_records_are_split_by_their_exact_length() {
        let raw = |position: u64, n: usize| RawRecord {
            position,
            bytes: vec![0; n].into(),
        };
        let chunks = split(vec![raw(1, 60), raw(2, 40), raw(3, 1)], 3, None, 100);
        let shape: Vec<(usize, u64)> = chunks.iter().map(|(r, c, _)| (r.len(), *c)).collect();
        assert_eq!(shape, vec![(2, 2), (1, 3)]);
        // The estimate of a decoded record is never below its encoding.
        let r = rec(9, 100);
        assert!(r.bytes() >= minicbor::to_vec(&r).unwrap().len());
    }

    #[test]
    fn the_default_record_fits_the_default_frame() {
        let c = crate::sync::SyncConfig::default();
        assert!(
            c.max_record_bytes <= record_bytes_that_fit(crate::Config::default().max_frame_size)
        );
        assert_eq!(record_bytes_that_fit(100), 0);
    }

    #[test]
    fn the_default_collection_bound_fits_the_default_frame() {
        use plexus_protocol::methods::sync::{Checksum, CollectionInfo, SyncInfoResult};
        let name = |n: usize| format!("{n:0>128}");
        let n = crate::sync::SyncConfig::default().max_collections;
        let fin = SyncPullFinal::new(
            u64::MAX,
            u64::MAX,
            "f".repeat(16),
            true,
            (0..n)
                .map(|i| Checksum::new(name(i), u64::MAX, u64::MAX))
                .collect(),
            u64::MAX,
        );
        let mut info = SyncInfoResult::default();
        info.position = u64::MAX;
        info.epoch = "f".repeat(16);
        info.horizon = u64::MAX;
        info.collections = (0..n)
            .map(|i| CollectionInfo::new(name(i), u64::MAX, u64::MAX, u64::MAX, u64::MAX))
            .collect();
        for len in [
            minicbor::to_vec(&fin).unwrap().len(),
            minicbor::to_vec(&info).unwrap().len(),
        ] {
            assert!(
                len <= SUMMARY_ENVELOPE - SYNC_CHUNK_ENVELOPE + n * COLLECTION_BYTES,
                "{len}"
            );
        }
        assert!(collections_that_fit(crate::Config::default().max_frame_size) >= n);
        assert_eq!(collections_that_fit(65536), 339);
    }
}
