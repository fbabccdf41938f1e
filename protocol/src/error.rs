//! Errors: why a frame failed to decode, the wire error codes carried in
//! error responses, and the error object itself.
//!
//! [`DecodeError::error_code`] and [`DecodeError::close_code`] are the one
//! place where a decoding failure is mapped to what goes on the wire.

use std::fmt;

use minicbor::{Decode, Encode};

use crate::close::CloseCode;
use crate::raw::RawValue;

/// Why bytes could not be decoded as a plexus.v1 frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than [`DecodeLimits::max_frame_size`](crate::DecodeLimits).
    #[error("frame of {size} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Size of the offending frame.
        size: usize,
        /// The configured limit.
        max: usize,
    },
    /// Arrays, maps or tags nest deeper than the configured limit.
    #[error("nesting deeper than {max} levels")]
    TooDeep {
        /// The configured depth limit.
        max: u16,
    },
    /// The input ends inside a data item, or a length prefix points past it.
    #[error("truncated CBOR at byte {offset}")]
    Truncated {
        /// Byte offset where more input was needed.
        offset: usize,
    },
    /// The input is not well-formed CBOR.
    #[error("malformed CBOR at byte {offset}: {reason}")]
    Malformed {
        /// Byte offset of the offending initial byte.
        offset: usize,
        /// What is wrong.
        reason: &'static str,
    },
    /// An indefinite-length string, array or map (forbidden in plexus.v1).
    #[error("indefinite-length item at byte {offset}")]
    IndefiniteLength {
        /// Byte offset of the item.
        offset: usize,
    },
    /// A text string is not valid UTF-8.
    #[error("invalid UTF-8 in text string at byte {offset}")]
    InvalidUtf8 {
        /// Byte offset of the text string.
        offset: usize,
    },
    /// Bytes follow the frame's single data item.
    #[error("trailing bytes after the frame at byte {offset}")]
    TrailingBytes {
        /// Byte offset of the first trailing byte.
        offset: usize,
    },
    /// Well-formed CBOR, but not one of the four frame layouts.
    #[error("invalid frame envelope: {reason}")]
    InvalidEnvelope {
        /// What is wrong with the envelope.
        reason: &'static str,
    },
    /// The frame's kind number is not one this version knows.
    #[error("unknown frame kind {0}")]
    UnknownKind(u64),
}

impl DecodeError {
    /// The error code for an error response answering this failure.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            _ => ErrorCode::InvalidFrame,
        }
    }

    /// The WebSocket close code a server sends for a frame that fails to
    /// decode: 1009 for an oversized frame, 4005 for everything else.
    pub fn close_code(&self) -> CloseCode {
        match self {
            DecodeError::TooLarge { .. } => CloseCode::MessageTooBig,
            _ => CloseCode::ProtocolError,
        }
    }
}

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, retry: $retry:literal; )*) => {
        /// A wire error code: a stable lowercase string.
        ///
        /// Codes this version does not know decode as [`ErrorCode::Unknown`],
        /// so a peer can add codes within v1 without breaking older ones.
        ///
        /// ```
        /// use plexus_protocol::ErrorCode;
        /// assert_eq!(ErrorCode::from_name("rate_limited"), ErrorCode::RateLimited);
        /// assert!(ErrorCode::RateLimited.retryable());
        /// assert_eq!(ErrorCode::Forbidden.as_str(), "forbidden");
        /// ```
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )*
            /// A code this version does not know.
            Unknown(Box<str>),
        }

        impl ErrorCode {
            /// Every code this version defines, in spec order.
            pub const ALL: &'static [ErrorCode] = &[$( ErrorCode::$variant, )*];

            /// The wire name of the code.
            pub fn as_str(&self) -> &str {
                match self {
                    $( ErrorCode::$variant => $name, )*
                    ErrorCode::Unknown(name) => name,
                }
            }

            /// Parses a wire name; unknown names become [`ErrorCode::Unknown`].
            pub fn from_name(name: &str) -> ErrorCode {
                match name {
                    $( $name => ErrorCode::$variant, )*
                    other => ErrorCode::Unknown(other.into()),
                }
            }

            /// Whether repeating the same request later can succeed.
            ///
            /// Unknown codes are treated as not retryable.
            pub fn retryable(&self) -> bool {
                match self {
                    $( ErrorCode::$variant => $retry, )*
                    ErrorCode::Unknown(_) => false,
                }
            }
        }
    };
}

error_codes! {
    /// The frame could not be decoded (malformed CBOR or a bad envelope).
    InvalidFrame = "invalid_frame", retry: false;
    /// The method's params are missing, of the wrong type or out of range.
    InvalidParams = "invalid_params", retry: false;
    /// The request needs an authenticated session.
    Unauthenticated = "unauthenticated", retry: false;
    /// The principal's capabilities do not allow the operation.
    Forbidden = "forbidden", retry: false;
    /// The named resource (subscription, request id, topic) does not exist.
    NotFound = "not_found", retry: false;
    /// No such method.
    MethodNotFound = "method_not_found", retry: false;
    /// The request conflicts with the current state (e.g. already subscribed).
    Conflict = "conflict", retry: false;
    /// The request rate limit was exceeded; `retry_after_ms` says when to retry.
    RateLimited = "rate_limited", retry: true;
    /// A payload or field exceeds its size limit.
    PayloadTooLarge = "payload_too_large", retry: false;
    /// Too many requests in flight on this connection (`max_in_flight`, or
    /// `max_in_flight_bytes` of request frames); retry when some finish.
    TooManyRequests = "too_many_requests", retry: true;
    /// The server gave up waiting for the operation to finish.
    Timeout = "timeout", retry: true;
    /// The request was cancelled by its caller (`cancel`, §8) or by the
    /// server's shutdown.
    Cancelled = "cancelled", retry: false;
    /// A dependency or the server itself is temporarily unavailable.
    Unavailable = "unavailable", retry: true;
    /// A bug or unexpected failure in the server.
    Internal = "internal", retry: true;
    /// A record-sync push would exceed the space's quota (records or
    /// bytes); nothing was applied.
    QuotaExceeded = "quota_exceeded", retry: false;
    /// A record-sync timestamp is further ahead of the hub's clock than the
    /// configured skew allows; nothing was applied.
    ClockSkew = "clock_skew", retry: false;
    /// Routed RPC: no callee has registered the procedure; answered at
    /// once, never after a timeout.
    NoCallee = "no_callee", retry: true;
    /// Routed RPC: the callee's session ended while the call was in
    /// flight; the call may or may not have taken effect.
    CalleeLost = "callee_lost", retry: false;
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl<C> Encode<C> for ErrorCode {
    fn encode<W: minicbor::encode::Write>(
        &self,
        e: &mut minicbor::Encoder<W>,
        _ctx: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        e.str(self.as_str())?;
        Ok(())
    }
}

impl<'b, C> Decode<'b, C> for ErrorCode {
    fn decode(
        d: &mut minicbor::Decoder<'b>,
        _ctx: &mut C,
    ) -> Result<Self, minicbor::decode::Error> {
        Ok(ErrorCode::from_name(d.str()?))
    }
}

/// The error object of an error response: `{0: code, 1: message, ? 2:
/// retry_after_ms, ? 3: details}`.
///
/// ```
/// use plexus_protocol::{ErrorCode, WireError};
/// let e = WireError::new(ErrorCode::RateLimited, "slow down").with_retry_after_ms(250);
/// assert_eq!(e.retry_after_ms, Some(250));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct WireError {
    /// The machine-readable code.
    #[n(0)]
    pub code: ErrorCode,
    /// A human-readable explanation (never contains secrets or payloads).
    #[n(1)]
    pub message: String,
    /// For `rate_limited` (and optionally other retryable codes): how long to
    /// wait before retrying, in milliseconds.
    #[n(2)]
    pub retry_after_ms: Option<u64>,
    /// Optional structured details, any CBOR item.
    #[n(3)]
    pub details: Option<RawValue>,
}

impl WireError {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            details: None,
        }
    }

    /// Sets the retry hint.
    pub fn with_retry_after_ms(mut self, ms: u64) -> Self {
        self.retry_after_ms = Some(ms);
        self
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(ms) = self.retry_after_ms {
            write!(f, " (retry after {ms} ms)")?;
        }
        Ok(())
    }
}

impl std::error::Error for WireError {}
