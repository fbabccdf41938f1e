//! The four frame kinds and their encoding.
//!
//! Every frame is one CBOR array whose first element is the frame kind:
//!
//! | kind | layout |
//! |---|---|
//! | 0 request | `[0, id, method, params]` |
//! | 1 response | `[1, id, 0, result]` or `[1, id, 1, error]` |
//! | 2 notification | `[2, method, params]` |
//! | 3 chunk | `[3, id, seq, final, data]` |
//!
//! Elements after the ones listed are ignored when decoding, so later
//! revisions of v1 can append optional fields. Requests, responses and
//! chunks travel in both directions: the server sends requests for methods
//! the client opted into (`docs/protocol.md` §6.4), in an id space of its
//! own.

use std::borrow::Cow;
use std::convert::Infallible;

use bytes::Bytes;
use minicbor::{Decoder, Encode, Encoder};

use crate::error::{DecodeError, WireError};
use crate::limits::DecodeLimits;
use crate::method::intern;
use crate::raw::{RawRef, RawValue};
use crate::wellformed;

/// Frame kind number of a request.
pub const KIND_REQUEST: u64 = 0;
/// Frame kind number of a response.
pub const KIND_RESPONSE: u64 = 1;
/// Frame kind number of a notification.
pub const KIND_NOTIFICATION: u64 = 2;
/// Frame kind number of a chunk.
pub const KIND_CHUNK: u64 = 3;

/// Response status meaning the body is the result.
pub const STATUS_OK: u64 = 0;
/// Response status meaning the body is an error object.
pub const STATUS_ERROR: u64 = 1;

/// A method name: borrowed from a static table for the names this version
/// knows, owned otherwise.
pub type MethodName = Cow<'static, str>;

/// One plexus.v1 frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A call that expects a response.
    Request(Request),
    /// The answer to a request.
    Response(Response),
    /// A one-way message.
    Notification(Notification),
    /// One piece of a streamed result or upload.
    Chunk(Chunk),
}

/// A request: `[0, id, method, params]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Caller-chosen id, unique among the caller's requests in flight on the
    /// connection. The client's and the server's requests (§6.4) have
    /// separate id spaces.
    pub id: u64,
    /// The method to call.
    pub method: MethodName,
    /// The method's params (`null` when it takes none).
    pub params: RawValue,
}

/// A response: `[1, id, 0, result]` or `[1, id, 1, error]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The id of the request answered (a request of the peer's).
    pub id: u64,
    /// The result, or the error.
    pub outcome: Result<RawValue, WireError>,
}

/// A notification: `[2, method, params]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// The notification's method name.
    pub method: MethodName,
    /// Its params.
    pub params: RawValue,
}

/// A chunk: `[3, id, seq, final, data]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// The id of the request the chunk belongs to.
    pub id: u64,
    /// Sequence number, 0 for the first chunk of a stream, then +1 each.
    pub seq: u64,
    /// Whether this is the last chunk of the stream.
    pub fin: bool,
    /// The chunk's data.
    pub data: RawValue,
}

impl Frame {
    /// Decodes one frame from a complete WebSocket binary message.
    ///
    /// Params, results and data are slices of `bytes`: nothing is copied.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use plexus_protocol::{DecodeLimits, Frame};
    /// // [0, 1, "ping", null]
    /// let bytes = Bytes::from_static(&[0x84, 0x00, 0x01, 0x64, b'p', b'i', b'n', b'g', 0xf6]);
    /// let Frame::Request(req) = Frame::decode(bytes, &DecodeLimits::default()).unwrap() else {
    ///     panic!("not a request");
    /// };
    /// assert_eq!((req.id, &*req.method), (1, "ping"));
    /// assert!(req.params.is_null());
    /// ```
    pub fn decode(bytes: Bytes, limits: &DecodeLimits) -> Result<Frame, DecodeError> {
        if bytes.len() > limits.max_frame_size {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: limits.max_frame_size,
            });
        }
        wellformed::check(&bytes, limits.effective_depth())?;
        decode_envelope(&bytes)
    }

    /// Decodes from a slice, copying it once into shared storage.
    pub fn decode_slice(bytes: &[u8], limits: &DecodeLimits) -> Result<Frame, DecodeError> {
        if bytes.len() > limits.max_frame_size {
            return Err(DecodeError::TooLarge {
                size: bytes.len(),
                max: limits.max_frame_size,
            });
        }
        Frame::decode(Bytes::copy_from_slice(bytes), limits)
    }

    /// Appends the frame's encoding to `buf`.
    pub fn encode_into(&self, buf: &mut Vec<u8>) {
        let mut e = Encoder::new(buf);
        let r: Result<(), minicbor::encode::Error<Infallible>> = (|| {
            match self {
                Frame::Request(r) => {
                    e.array(4)?.u64(KIND_REQUEST)?.u64(r.id)?.str(&r.method)?;
                    r.params.encode(&mut e, &mut ())?;
                }
                Frame::Response(r) => {
                    e.array(4)?.u64(KIND_RESPONSE)?.u64(r.id)?;
                    match &r.outcome {
                        Ok(v) => {
                            e.u64(STATUS_OK)?;
                            v.encode(&mut e, &mut ())?;
                        }
                        Err(err) => {
                            e.u64(STATUS_ERROR)?;
                            err.encode(&mut e, &mut ())?;
                        }
                    }
                }
                Frame::Notification(n) => {
                    e.array(3)?.u64(KIND_NOTIFICATION)?.str(&n.method)?;
                    n.params.encode(&mut e, &mut ())?;
                }
                Frame::Chunk(c) => {
                    e.array(5)?
                        .u64(KIND_CHUNK)?
                        .u64(c.id)?
                        .u64(c.seq)?
                        .bool(c.fin)?;
                    c.data.encode(&mut e, &mut ())?;
                }
            }
            Ok(())
        })();
        // The writer is a Vec (infallible) and the only `Encode` impls used
        // are this crate's, which report no errors of their own.
        #[allow(clippy::expect_used)]
        r.expect("encoding a frame into a Vec cannot fail");
    }

    /// Encodes the frame into a new buffer.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(self.size_hint());
        self.encode_into(&mut buf);
        buf.shrink_to_fit();
        buf
    }

    /// Encodes the frame into shared bytes.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.to_vec())
    }

    fn size_hint(&self) -> usize {
        const ENVELOPE: usize = 32;
        ENVELOPE
            + match self {
                Frame::Request(r) => r.method.len() + r.params.len(),
                Frame::Response(r) => match &r.outcome {
                    Ok(v) => v.len(),
                    Err(e) => e.message.len() + 16,
                },
                Frame::Notification(n) => n.method.len() + n.params.len(),
                Frame::Chunk(c) => c.data.len(),
            }
    }
}

fn envelope_error(_: minicbor::decode::Error) -> DecodeError {
    DecodeError::InvalidEnvelope {
        reason: "field of the wrong type",
    }
}

/// Decodes the envelope of input that has passed the well-formedness check.
fn decode_envelope(bytes: &Bytes) -> Result<Frame, DecodeError> {
    let mut d = Decoder::new(bytes);
    let len = match d.array() {
        Ok(Some(len)) => len,
        _ => {
            return Err(DecodeError::InvalidEnvelope {
                reason: "frame is not an array",
            });
        }
    };
    if len == 0 {
        return Err(DecodeError::InvalidEnvelope {
            reason: "empty array",
        });
    }
    let kind = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
        reason: "frame kind is not an unsigned integer",
    })?;
    let needed = match kind {
        KIND_REQUEST | KIND_RESPONSE => 4,
        KIND_NOTIFICATION => 3,
        KIND_CHUNK => 5,
        other => return Err(DecodeError::UnknownKind(other)),
    };
    if len < needed {
        return Err(DecodeError::InvalidEnvelope {
            reason: "too few elements for the frame kind",
        });
    }
    let raw = |d: &mut Decoder<'_>| -> Result<RawValue, DecodeError> {
        let r: RawRef<'_> = d.decode().map_err(envelope_error)?;
        Ok(RawValue::from_checked(bytes.slice_ref(r.as_bytes())))
    };
    let frame = match kind {
        KIND_REQUEST => {
            let id = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "id is not an unsigned integer",
            })?;
            let method = method_name(&mut d)?;
            let params = raw(&mut d)?;
            Frame::Request(Request { id, method, params })
        }
        KIND_RESPONSE => {
            let id = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "id is not an unsigned integer",
            })?;
            let status = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "status is not an unsigned integer",
            })?;
            let outcome = match status {
                STATUS_OK => Ok(raw(&mut d)?),
                STATUS_ERROR => {
                    let item = raw(&mut d)?;
                    // A typed map with a key given twice is invalid (§4.8),
                    // and the error object is part of the envelope.
                    if crate::typed::duplicate_int_key(item.as_bytes()) {
                        return Err(DecodeError::InvalidEnvelope {
                            reason: "duplicate key in the error object",
                        });
                    }
                    Err(item
                        .decode::<WireError>()
                        .map_err(|_| DecodeError::InvalidEnvelope {
                            reason: "invalid error object",
                        })?)
                }
                _ => {
                    return Err(DecodeError::InvalidEnvelope {
                        reason: "unknown response status",
                    });
                }
            };
            Frame::Response(Response { id, outcome })
        }
        KIND_NOTIFICATION => {
            let method = method_name(&mut d)?;
            let params = raw(&mut d)?;
            Frame::Notification(Notification { method, params })
        }
        _ => {
            let id = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "id is not an unsigned integer",
            })?;
            let seq = d.u64().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "seq is not an unsigned integer",
            })?;
            let fin = d.bool().map_err(|_| DecodeError::InvalidEnvelope {
                reason: "final is not a boolean",
            })?;
            let data = raw(&mut d)?;
            Frame::Chunk(Chunk { id, seq, fin, data })
        }
    };
    // Elements appended by later revisions of v1 are skipped, not decoded.
    // The well-formedness check has already bounded how many there can be.
    Ok(frame)
}

fn method_name(d: &mut Decoder<'_>) -> Result<MethodName, DecodeError> {
    let name = d.str().map_err(|_| DecodeError::InvalidEnvelope {
        reason: "method is not a text string",
    })?;
    if name.is_empty() {
        return Err(DecodeError::InvalidEnvelope {
            reason: "empty method name",
        });
    }
    Ok(intern(name))
}

/// Error from encoding a caller's typed value (only a faulty `Encode` impl
/// can produce one: the buffer itself cannot fail).
pub type EncodeError = minicbor::encode::Error<Infallible>;

/// Encodes a request frame straight from typed params, in one pass.
///
/// ```
/// use plexus_protocol::frame::encode_request;
/// use plexus_protocol::RawValue;
/// let bytes = encode_request(7, "ping", &RawValue::null()).unwrap();
/// assert_eq!(bytes, [0x84, 0x00, 0x07, 0x64, b'p', b'i', b'n', b'g', 0xf6]);
/// ```
pub fn encode_request<T: Encode<()>>(
    id: u64,
    method: &str,
    params: &T,
) -> Result<Vec<u8>, EncodeError> {
    encode_with(|e| {
        e.array(4)?.u64(KIND_REQUEST)?.u64(id)?.str(method)?;
        params.encode(e, &mut ())
    })
}

/// Encodes a success response straight from a typed result, in one pass.
pub fn encode_result<T: Encode<()>>(id: u64, result: &T) -> Result<Vec<u8>, EncodeError> {
    encode_with(|e| {
        e.array(4)?.u64(KIND_RESPONSE)?.u64(id)?.u64(STATUS_OK)?;
        result.encode(e, &mut ())
    })
}

/// Encodes an error response.
pub fn encode_error(id: u64, error: &WireError) -> Vec<u8> {
    Frame::Response(Response {
        id,
        outcome: Err(error.clone()),
    })
    .to_vec()
}

/// Encodes a notification frame straight from typed params, in one pass.
///
/// The hub uses this to build an `event` once per publish and share the
/// bytes with every subscriber.
pub fn encode_notification<T: Encode<()>>(
    method: &str,
    params: &T,
) -> Result<Vec<u8>, EncodeError> {
    encode_with(|e| {
        e.array(3)?.u64(KIND_NOTIFICATION)?.str(method)?;
        params.encode(e, &mut ())
    })
}

/// Encodes a chunk frame straight from typed data.
pub fn encode_chunk<T: Encode<()>>(
    id: u64,
    seq: u64,
    fin: bool,
    data: &T,
) -> Result<Vec<u8>, EncodeError> {
    encode_with(|e| {
        e.array(5)?.u64(KIND_CHUNK)?.u64(id)?.u64(seq)?.bool(fin)?;
        data.encode(e, &mut ())
    })
}

fn encode_with(
    f: impl FnOnce(&mut Encoder<&mut Vec<u8>>) -> Result<(), EncodeError>,
) -> Result<Vec<u8>, EncodeError> {
    // Most frames (responses, events with small payloads) fit without a
    // reallocation.
    let mut buf = Vec::with_capacity(256);
    f(&mut Encoder::new(&mut buf))?;
    // Frames are queued and shared as `Bytes`, which keep the whole
    // allocation alive: release the unused capacity, so what a queue holds
    // is what it counts (a 40-byte event must not pin 256 bytes).
    buf.shrink_to_fit();
    Ok(buf)
}
