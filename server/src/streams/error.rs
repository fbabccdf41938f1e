//! Why a stream operation failed, and its one mapping to the wire.
//!
//! | error | wire code | details |
//! |---|---|---|
//! | [`StreamError::InvalidParams`], [`StreamError::NotDurable`], [`StreamError::SpansNamespaces`] | `invalid_params` | |
//! | [`StreamError::SeqConflict`] | `conflict` | `{0: last_seq}` |
//! | [`StreamError::OffsetConflict`] | `conflict` | `{1: last_offset}` |
//! | [`StreamError::Unavailable`] (any storage failure, the writer gone) | `unavailable`, `retry_after_ms` | |
//! | [`StreamError::Overloaded`] (the writer's queue is full) | `unavailable`, `retry_after_ms` | |
//!
//! A storage failure never leaves part of a batch applied: the whole
//! transaction is rolled back and every request in it gets `unavailable`.
//! A client retrying with the same producer sequence or idempotency key is
//! answered `duplicate` if the commit had in fact happened (a connection
//! lost during `COMMIT`).

use std::borrow::Cow;

use plexus_protocol::{ErrorCode, RawValue, WireError};

use crate::storage::StorageError;

/// How long a client should wait after a storage failure.
pub const STORAGE_RETRY_AFTER_MS: u64 = 500;
/// How long a client should wait when the writer's queue is full.
pub const OVERLOADED_RETRY_AFTER_MS: u64 = 50;

/// Why a stream operation failed. Messages are safe to send to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// A param is missing, malformed or out of range.
    #[error("invalid params: {0}")]
    InvalidParams(Cow<'static, str>),
    /// The topic or pattern is not in a durable namespace.
    #[error("not a durable topic")]
    NotDurable,
    /// The pattern is not inside one durable namespace.
    #[error("the pattern is not inside one durable namespace")]
    SpansNamespaces,
    /// A producer sequence number below the last one that was never stored.
    #[error("sequence number below the producer's last ({last_seq}) and never stored")]
    SeqConflict {
        /// The producer's last stored sequence number.
        last_seq: u64,
    },
    /// `expected_offset` differs from the topic's last offset.
    #[error("expected offset differs from the topic's last offset ({last_offset})")]
    OffsetConflict {
        /// The topic's last offset.
        last_offset: u64,
    },
    /// The database failed (or the writer stopped); nothing was applied.
    #[error("storage unavailable, retry later")]
    Unavailable {
        /// The cause, for logs only (never sent).
        cause: Option<StorageError>,
    },
    /// The writer's queue is full.
    #[error("storage overloaded, retry later")]
    Overloaded,
}

impl StreamError {
    /// `invalid_params` with `msg`.
    pub fn invalid(msg: impl Into<Cow<'static, str>>) -> Self {
        StreamError::InvalidParams(msg.into())
    }

    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            StreamError::InvalidParams(_)
            | StreamError::NotDurable
            | StreamError::SpansNamespaces => ErrorCode::InvalidParams,
            StreamError::SeqConflict { .. } | StreamError::OffsetConflict { .. } => {
                ErrorCode::Conflict
            }
            StreamError::Unavailable { .. } | StreamError::Overloaded => ErrorCode::Unavailable,
        }
    }

    /// The one mapping to the error object sent on the wire.
    pub fn to_wire(&self) -> WireError {
        let mut w = WireError::new(self.code(), self.to_string());
        match self {
            StreamError::Unavailable { .. } => w = w.with_retry_after_ms(STORAGE_RETRY_AFTER_MS),
            StreamError::Overloaded => w = w.with_retry_after_ms(OVERLOADED_RETRY_AFTER_MS),
            StreamError::SeqConflict { last_seq } => {
                w.details = RawValue::encode(&ConflictDetails {
                    last_seq: Some(*last_seq),
                    last_offset: None,
                })
                .ok();
            }
            StreamError::OffsetConflict { last_offset } => {
                w.details = RawValue::encode(&ConflictDetails {
                    last_seq: None,
                    last_offset: Some(*last_offset),
                })
                .ok();
            }
            _ => {}
        }
        w
    }
}

impl From<StorageError> for StreamError {
    fn from(e: StorageError) -> Self {
        StreamError::Unavailable { cause: Some(e) }
    }
}

/// `conflict` details: `{? 0: last_seq, ? 1: last_offset}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, minicbor::Encode, minicbor::Decode)]
#[cbor(map)]
pub struct ConflictDetails {
    /// The producer's last stored sequence number.
    #[n(0)]
    pub last_seq: Option<u64>,
    /// The topic's last offset.
    #[n(1)]
    pub last_offset: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code() {
        let cases = [
            (StreamError::invalid("x"), ErrorCode::InvalidParams),
            (StreamError::NotDurable, ErrorCode::InvalidParams),
            (StreamError::SpansNamespaces, ErrorCode::InvalidParams),
            (
                StreamError::SeqConflict { last_seq: 4 },
                ErrorCode::Conflict,
            ),
            (
                StreamError::OffsetConflict { last_offset: 9 },
                ErrorCode::Conflict,
            ),
            (
                StreamError::Unavailable {
                    cause: Some(StorageError::Database("secret path".into())),
                },
                ErrorCode::Unavailable,
            ),
            (StreamError::Overloaded, ErrorCode::Unavailable),
        ];
        for (e, code) in cases {
            let w = e.to_wire();
            assert_eq!(w.code, code, "{e:?}");
            assert!(!w.message.contains("secret"));
            assert_eq!(w.code.retryable(), code == ErrorCode::Unavailable);
            if code == ErrorCode::Unavailable {
                assert!(w.retry_after_ms.is_some());
            }
        }
        let w = StreamError::SeqConflict { last_seq: 4 }.to_wire();
        let d: ConflictDetails = w.details.unwrap().decode().unwrap();
        assert_eq!(d.last_seq, Some(4));
        let w = StreamError::OffsetConflict { last_offset: 9 }.to_wire();
        let d: ConflictDetails = w.details.unwrap().decode().unwrap();
        assert_eq!(d.last_offset, Some(9));
    }
}
