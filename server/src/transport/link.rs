//! The transport-neutral link a session runs over.
//!
//! The session sees inbound frames, pings, pongs, faults and the peer's
//! close, and emits frames, pings and its own close; how they are carried
//! is the transport's business. [`WsLink`](super::ws::WsLink) carries them
//! over a WebSocket; an HTTP streaming transport will be a second
//! implementation.
//!
//! A link is polled by exactly one task (the session's driver), which owns
//! it: reads and writes interleave in one poll loop, and nothing is locked.

use std::task::{Context, Poll};

use bytes::Bytes;
use plexus_protocol::CloseCode;

pub use crate::session::core::LinkFault;

/// What arrived.
#[derive(Debug)]
pub enum Inbound {
    /// One plexus frame (a binary message).
    Frame(Bytes),
    /// A ping (the link answers it itself).
    Ping,
    /// A pong.
    Pong,
    /// Something that is not a frame. After [`LinkFault::TooBig`] and
    /// [`LinkFault::Protocol`] the link no longer parses its input (later
    /// reads are [`Inbound::Discarded`]).
    Fault(LinkFault),
    /// The peer sent its Close frame; the link answers it (echoing the code,
    /// decision P10) when flushed. `rejected` when the peer's code was not
    /// one a peer may send, so the link answered 1002 itself.
    PeerClose {
        /// The peer's close code, if any.
        code: Option<u16>,
        /// The link answered 1002 instead of echoing.
        rejected: bool,
    },
    /// Bytes read and thrown away after a fault (0 never: that is
    /// [`Inbound::Ended`]).
    Discarded(usize),
    /// The connection ended: EOF after the closing handshake, a reset, or
    /// an I/O error.
    Ended,
}

/// What the link did with an outgoing item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Buffered; more may follow.
    Buffered,
    /// Buffered, but the socket is full: flush before sending more.
    Blocked,
    /// The link can send nothing more (closed or broken); dropped.
    Closed,
}

/// An outgoing item.
#[derive(Debug)]
pub enum Outgoing {
    /// A plexus frame.
    Frame(Bytes),
    /// A keepalive ping.
    Ping,
    /// The Close frame, with this code (its reason is the code's name).
    Close(CloseCode),
}

/// A bidirectional message transport for one session.
pub trait Link: Send + Unpin + 'static {
    /// Polls for the next inbound event. `Pending` means nothing is
    /// buffered: everything that arrived has been read.
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound>;

    /// Buffers one outgoing item (may write part of the buffer).
    fn send(&mut self, cx: &mut Context<'_>, item: Outgoing) -> Sent;

    /// Writes everything buffered. `Ready(false)`: the link is broken.
    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<bool>;

    /// Shuts down the sending direction (after the Close frame), so the
    /// peer sees the end while the link keeps reading.
    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()>;

    /// Raises (or lowers) the largest inbound message accepted from now
    /// on: the pre-auth limit is replaced by `max_frame_size` once `auth`
    /// succeeded (decision P12).
    fn set_max_message_size(&mut self, max: usize);
}
