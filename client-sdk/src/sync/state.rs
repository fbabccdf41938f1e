//! The sans-IO rules of record sync on the client: which pushes are sent
//! again, and where a pull stands (decisions Q1–Q4 in `docs/decisions.md`).
//! No sockets, no clock: [`Space`](super::Space) is thin glue over these.

use plexus_protocol::ErrorCode;
use plexus_protocol::methods::sync::{SyncChunk, SyncPullFinal, SyncRecord};

use super::SyncCursor;
use crate::error::Error;

/// Whether a failed push (or pull) is sent again with the same `(client,
/// seq)` (resp. from the same cursor) once connected.
///
/// A push lost with the connection, timed out or answered `unavailable`
/// may or may not have been applied; the hub applies a `(client, seq)`
/// once (Y7), so resending it is safe. Anything else is final.
pub(crate) fn is_retryable(e: &Error) -> bool {
    match e {
        Error::ConnectionLost | Error::Timeout | Error::BrokenStream(_) => true,
        Error::Remote(w) => w.code == ErrorCode::Unavailable,
        _ => false,
    }
}

/// Whether a failed pull is started again from its cursor: as a push
/// ([`is_retryable`]), and on `conflict`, the hub's "pull again" when the
/// tombstone horizon passed the cursor during the pull (Y10; the next pull
/// gets the reset).
pub(crate) fn is_pull_retryable(e: &Error) -> bool {
    is_retryable(e) || matches!(e, Error::Remote(w) if w.code == ErrorCode::Conflict)
}

/// What a pull's final chunk means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum FinalStep {
    /// The cursor was too old or of another epoch: drop local state and
    /// pull a snapshot again (the cursor is now `(epoch, 0)`).
    Reset,
    /// Caught up at the final's cursor.
    Done,
}

/// Where a pull stands: the cursor to resume from and the highest position
/// already handed to the application in this epoch (so a resumed pull
/// never hands a change over twice).
#[derive(Debug, Clone)]
pub(crate) struct PullState {
    /// Where the next `sync.pull` starts.
    pub(crate) cursor: SyncCursor,
    /// The highest position handed over in this epoch.
    seen: u64,
    /// The current pull started at 0 (a snapshot: cannot be a reset).
    snapshot: bool,
    /// The catch-up ended: chunks are live changes.
    live: bool,
}

impl PullState {
    pub(crate) fn new(cursor: SyncCursor) -> PullState {
        PullState {
            seen: cursor.position,
            cursor,
            snapshot: false,
            live: false,
        }
    }

    /// A new `sync.pull` starts from [`Self::cursor`].
    pub(crate) fn begin(&mut self) {
        self.snapshot = self.cursor.position == 0;
        self.live = false;
    }

    /// The records of a chunk still to hand over (those not handed over
    /// before), in position order.
    pub(crate) fn fresh(&self, chunk: SyncChunk) -> Vec<SyncRecord> {
        let seen = self.seen;
        chunk
            .records
            .into_iter()
            .filter(|r| r.position > seen)
            .collect()
    }

    /// The application took a chunk (its callback succeeded): remember it,
    /// and move the resume cursor where that is safe — in a snapshot and
    /// for live changes. During an incremental catch-up the cursor moves
    /// only with the final chunk: a catch-up that turns out to be a reset
    /// must start again from 0, never resume half-way through a snapshot
    /// of the new epoch (it would miss the tombstones the horizon purged).
    pub(crate) fn delivered(&mut self, chunk_cursor: u64) {
        self.seen = self.seen.max(chunk_cursor);
        if self.snapshot || self.live {
            self.cursor.position = self.cursor.position.max(chunk_cursor);
        }
    }

    /// The final chunk of the catch-up arrived (after every chunk before it
    /// was delivered).
    pub(crate) fn on_final(&mut self, f: &SyncPullFinal) -> FinalStep {
        if f.reset && !self.snapshot {
            self.cursor = SyncCursor::new(Some(f.epoch.clone()), 0);
            self.seen = 0;
            return FinalStep::Reset;
        }
        self.cursor = SyncCursor::new(Some(f.epoch.clone()), f.cursor);
        self.seen = self.seen.max(f.cursor);
        self.live = true;
        FinalStep::Done
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use plexus_protocol::WireError;
    use plexus_protocol::methods::sync::RecordFields;

    fn rec(position: u64) -> SyncRecord {
        SyncRecord::new(
            "c",
            position.to_string(),
            1,
            position,
            Some(RecordFields::default()),
        )
    }

    fn chunk(positions: &[u64]) -> SyncChunk {
        SyncChunk::new(
            positions.iter().map(|&p| rec(p)).collect(),
            *positions.last().unwrap(),
            None,
        )
    }

    fn fin(cursor: u64, epoch: &str, reset: bool) -> SyncPullFinal {
        SyncPullFinal::new(cursor, 0, epoch, reset, Vec::new(), 0)
    }

    #[test]
    fn retryable_errors_are_the_ambiguous_ones() {
        assert!(is_retryable(&Error::ConnectionLost));
        assert!(is_retryable(&Error::Timeout));
        assert!(is_retryable(&Error::Remote(WireError::new(
            ErrorCode::Unavailable,
            "busy"
        ))));
        assert!(!is_retryable(&Error::Remote(WireError::new(
            ErrorCode::Conflict,
            "v"
        ))));
        assert!(!is_retryable(&Error::Closed(None)));
        assert!(is_pull_retryable(&Error::Remote(WireError::new(
            ErrorCode::Conflict,
            "pull again"
        ))));
    }

    #[test]
    fn a_snapshot_advances_per_chunk_and_resumes_without_duplicates() {
        let mut s = PullState::new(SyncCursor::default());
        s.begin();
        assert_eq!(s.fresh(chunk(&[1, 2])).len(), 2);
        s.delivered(2);
        assert_eq!(s.cursor.position, 2, "a snapshot chunk moves the cursor");
        // The callback for the next chunk fails: not delivered, so the
        // cursor stays and the resumed pull hands it over again.
        let again = s.fresh(chunk(&[3, 4]));
        assert_eq!(again.len(), 2);
        assert_eq!(s.cursor.position, 2);
        s.begin();
        assert!(!s.snapshot, "the resume is incremental from 2");
        assert_eq!(s.fresh(chunk(&[2, 3, 4])).len(), 2, "2 was handed over");
        s.delivered(4);
        assert_eq!(s.cursor.position, 2, "incremental: moves with the final");
        assert_eq!(s.on_final(&fin(4, "E", false)), FinalStep::Done);
        assert_eq!(s.cursor, SyncCursor::new(Some("E".into()), 4));
        // Live changes move it at once; old ones are dropped.
        assert!(s.fresh(chunk(&[4])).is_empty());
        s.delivered(6);
        assert_eq!(s.cursor.position, 6);
    }

    #[test]
    fn a_reset_restarts_from_zero_in_the_new_epoch() {
        let mut s = PullState::new(SyncCursor::new(Some("OLD".into()), 10));
        s.begin();
        assert_eq!(s.fresh(chunk(&[3, 11, 12])).len(), 2);
        s.delivered(12);
        assert_eq!(s.cursor.position, 10);
        assert_eq!(s.on_final(&fin(12, "NEW", true)), FinalStep::Reset);
        assert_eq!(s.cursor, SyncCursor::new(Some("NEW".into()), 0));
        s.begin();
        assert_eq!(s.fresh(chunk(&[3, 11, 12])).len(), 3, "all again");
        s.delivered(12);
        assert_eq!(s.on_final(&fin(12, "NEW", true)), FinalStep::Done);
        assert_eq!(s.cursor, SyncCursor::new(Some("NEW".into()), 12));
    }
}
