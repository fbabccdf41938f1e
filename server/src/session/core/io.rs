//! What goes into the core besides frames, and what comes out of it.

use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::frame::MethodName;
use plexus_protocol::{CloseCode, ErrorCode, RawValue, WireError};

use crate::session::error::RequestError;
use crate::session::table::{Kind, MethodIndex};

/// What the driver should do next; see [`Core::poll_output`](super::Core::poll_output).
#[derive(Debug)]
pub enum Output {
    /// Queue this frame (a response, chunk, notification or request).
    Frame(Bytes),
    /// Queue this response, which the core answered itself; count it under
    /// `label` with `error` (or `ok`).
    Response {
        /// The response frame.
        frame: Bytes,
        /// What to count it as.
        label: Label,
        /// The error code, or `None` for success.
        error: Option<ErrorCode>,
    },
    /// Stop the handler of request `id` (the client cancelled it); answer
    /// with [`Completion::Error`]`(Cancelled)` when it has stopped.
    Abort {
        /// The request.
        id: u64,
    },
    /// The deadline given to request `id` with
    /// [`Core::set_deadline`](super::Core::set_deadline) passed: answer it
    /// (typically [`Completion::Error`]`(Timeout)`).
    Expired {
        /// The request.
        id: u64,
    },
    /// Verify this token without blocking, then call
    /// [`Core::handle_verified`](super::Core::handle_verified).
    Verify {
        /// The token.
        token: String,
    },
    /// Register the connection for `user`, then call
    /// [`Core::handle_registered`](super::Core::handle_registered).
    Register {
        /// The authenticated user.
        user: Arc<str>,
        /// The client instance from the `auth` params.
        instance: Option<String>,
    },
    /// Raise the transport's frame size limit: `auth` succeeded (P12).
    RaiseFrameLimit {
        /// The new limit.
        max_frame_size: usize,
    },
    /// Send a WebSocket ping.
    Ping,
    /// Queue `closing` (when announced), then write everything queued and
    /// the Close frame with `code`; call [`Core::handle_close_sent`](super::Core::handle_close_sent) once it
    /// is written, and keep reading.
    Close {
        /// The close code.
        code: CloseCode,
        /// The `closing` notification, for codes that are announced.
        closing: Option<Bytes>,
    },
    /// The answer to server-initiated request `id`.
    ClientAnswer {
        /// The server request.
        id: u64,
        /// What the client answered.
        answer: ClientAnswer,
    },
    /// A non-final chunk of a streamed server request `id`, in order.
    ClientChunk {
        /// The server request.
        id: u64,
        /// The chunk's data item.
        data: RawValue,
    },
    /// Count an authentication failure with this reason.
    AuthFailure(&'static str),
}

/// What a response the core answered itself is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `auth`.
    Auth,
    /// `auth.refresh`.
    AuthRefresh,
    /// Refused by the rate limit, before the method was looked at.
    RateLimited,
    /// Refused before `auth`.
    Unauthenticated,
    /// A method no one serves.
    Unknown,
    /// A method of the table, refused before it ran.
    Method(MethodIndex),
}

/// The client's answer to a server-initiated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAnswer {
    /// A result.
    Result(RawValue),
    /// The data of a final chunk.
    Final(RawValue),
    /// An error object.
    Error(Box<WireError>),
    /// No answer within the request's timeout (a `cancel` was sent).
    TimedOut,
    /// The connection is closing.
    Closed,
}

/// A request to run: see [`Core::handle_frame`](super::Core::handle_frame).
#[derive(Debug)]
pub struct Dispatch {
    /// The request id.
    pub id: u64,
    /// The method's index in the table (or the fallback).
    pub method: MethodIndex,
    /// The method name (what the fallback dispatches on).
    pub name: MethodName,
    /// The params.
    pub params: RawValue,
    /// How the handler runs.
    pub kind: Kind,
}

/// How a dispatched request ended; see [`Core::handle_reply`](super::Core::handle_reply).
#[derive(Debug)]
pub enum Completion {
    /// A result item (already encoded CBOR).
    Result(Bytes),
    /// The final chunk of a streamed reply, after `seq` chunks.
    Final {
        /// The sequence number of the final chunk.
        seq: u64,
        /// Its data item (already encoded CBOR).
        data: Bytes,
    },
    /// A failure.
    Error(RequestError),
}

/// What the transport reported instead of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// A message larger than the current limit (1009, P8).
    TooBig,
    /// A valid text message (1003).
    Text,
    /// Text that is not UTF-8: a text message or a Close reason (1007, P9).
    InvalidUtf8,
    /// A WebSocket protocol violation (1002).
    Protocol,
}
