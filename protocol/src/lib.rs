//! # plexus-protocol
//!
//! The `plexus.v1` wire protocol of the Plexus hub, as a sans-IO crate: no
//! sockets, no async runtime, no clock. It turns WebSocket binary messages
//! into typed [`Frame`]s and back, names every method, error code and close
//! code, and validates topics and patterns. The server, the client SDK, the
//! conformance suite and the benchmark kit all speak through it.
//!
//! ## How the pieces fit
//!
//! - [`frame`]: the four frame kinds (request, response, notification,
//!   chunk), each one CBOR array in one WebSocket binary message.
//! - [`RawValue`] / [`RawRef`]: params, results and payloads kept as the
//!   bytes of one CBOR item, so the hub routes them without re-encoding.
//! - [`method`] and [`methods`]: the v1 catalog and its typed params and
//!   results (integer-keyed CBOR maps, minicbor derive).
//! - [`ErrorCode`], [`WireError`], [`CloseCode`]: what goes on the wire when
//!   something fails. [`DecodeError::error_code`] and
//!   [`DecodeError::close_code`] are the one place decoding failures map to
//!   them.
//! - [`topic`]: topic and pattern syntax and matching.
//! - [`DecodeLimits`]: the bounds every decode of untrusted input enforces.
//!
//! ## Decoding is hardened
//!
//! [`Frame::decode`] first checks the size limit, then runs an
//! allocation-free well-formedness pass (definite lengths only, UTF-8 text,
//! bounded depth, no length prefix that points past the input, no trailing
//! bytes), and only then reads the envelope. No allocation is ever sized by
//! a length prefix from the input, and no input makes it panic.
//!
//! The normative specification is `docs/protocol.md` with its CDDL schema
//! `docs/protocol.cddl`; golden vectors live in `conformance/vectors/`.
//!
//! ```
//! use plexus_protocol::{DecodeLimits, Frame, RawValue, frame::Request};
//! let req = Frame::Request(Request { id: 1, method: "ping".into(), params: RawValue::null() });
//! let bytes = req.to_bytes();
//! assert_eq!(Frame::decode(bytes, &DecodeLimits::default()).unwrap(), req);
//! ```
#![forbid(unsafe_code)]

pub mod close;
pub mod error;
pub mod frame;
pub mod json;
pub mod limits;
pub mod method;
pub mod methods;
mod raw;
pub mod topic;
mod typed;
mod wellformed;

pub use close::{CloseCode, Reconnect};
pub use error::{DecodeError, ErrorCode, WireError};
pub use frame::{Chunk, Frame, Notification, Request, Response};
pub use limits::DecodeLimits;
pub use method::{Method, MethodKind, NotificationMethod, RpcMethod};
pub use raw::{Encoded, RawRef, RawValue};

/// The WebSocket subprotocol name, negotiated in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "plexus.v1";

/// Decodes typed params, mapping any failure to an `invalid_params` error.
///
/// ```
/// use plexus_protocol::{ErrorCode, RawValue, decode_params, methods::SubscribeParams};
/// let err = decode_params::<SubscribeParams>(&RawValue::null()).unwrap_err();
/// assert_eq!(err.code, ErrorCode::InvalidParams);
/// ```
///
/// A params map with two entries for the same integer key is invalid
/// (§4.8): a receiver that took the first or the last occurrence could be
/// told apart from one that took the other.
///
/// ```
/// use plexus_protocol::{DecodeLimits, ErrorCode, RawValue, decode_params, methods::SubscribeParams};
/// // {0: "a", 0: "b"}
/// let raw = RawValue::from_bytes(vec![0xa2, 0x00, 0x61, b'a', 0x00, 0x61, b'b'].into(), &DecodeLimits::default()).unwrap();
/// assert_eq!(decode_params::<SubscribeParams>(&raw).unwrap_err().code, ErrorCode::InvalidParams);
/// ```
pub fn decode_params<'a, T: minicbor::Decode<'a, ()>>(raw: &'a RawValue) -> Result<T, WireError> {
    if typed::duplicate_int_key(raw.as_bytes()) {
        return Err(WireError::new(
            ErrorCode::InvalidParams,
            "invalid params: duplicate map key",
        ));
    }
    raw.decode()
        .map_err(|e| WireError::new(ErrorCode::InvalidParams, format!("invalid params: {e}")))
}

/// A duration as the whole milliseconds the protocol puts on the wire,
/// saturating at `u64::MAX` (no duration a server can hold gets there).
///
/// ```
/// use std::time::Duration;
/// assert_eq!(plexus_protocol::duration_ms(Duration::from_micros(2_500)), 2);
/// ```
pub fn duration_ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Returns the length of the one well-formed CBOR item at the start of
/// `input` within `limits`, ignoring anything after it. For tools that read
/// concatenated items (fuzzers, vector generators).
pub fn item_len(input: &[u8], limits: &DecodeLimits) -> Result<usize, DecodeError> {
    wellformed::item_len(input, limits.effective_depth())
}
