//! The WebSocket link: tungstenite's sans-IO `WebSocketContext` over the
//! upgraded socket, polled by the session's one task.
//!
//! tokio-tungstenite's stream cannot change its limits after the handshake,
//! and splitting it puts a lock and two wakers between reading and writing.
//! Here the context is driven directly through a small adapter that turns
//! the task's `poll_read`/`poll_write` into `Read`/`Write` returning
//! `WouldBlock`, so:
//!
//! - the message and frame size limits start at the pre-auth size and are
//!   raised after `auth` (decision P12): a frame header announcing more is
//!   refused before its payload is read or buffered (item 7);
//! - reads and writes interleave in one poll loop, without a lock;
//! - writes are batched: frames gather in the context's write buffer and go
//!   out in chunks of `ws_write_buffer` bytes, with one flush per batch.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{
    CloseFrame, Role, WebSocketConfig, WebSocketContext,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::link::{Inbound, Link, LinkFault, Outgoing, Sent};

/// Bytes read per call while discarding input after a fault.
const DISCARD_CHUNK: usize = 4096;

/// The WebSocket settings of one connection.
#[derive(Debug, Clone, Copy)]
pub struct WsSettings {
    /// Initial read buffer (it grows for larger messages).
    pub read_buffer: usize,
    /// Bytes gathered before a write to the socket.
    pub write_buffer: usize,
    /// Largest message before `auth` (the pre-auth frame size).
    pub max_message_size: usize,
}

/// The socket under a WebSocket link.
pub trait LinkIo: AsyncRead + AsyncWrite + Send + Unpin + 'static {
    /// Whether input may be available, without reading; registers the
    /// task's waker when not. The default says "maybe" always.
    fn poll_read_ready(&self, _cx: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl LinkIo for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<()> {
        TcpStream::poll_read_ready(self, cx).map(|_| ())
    }
}

/// An upgraded connection hyper could not hand back as a `TcpStream`.
impl LinkIo for TokioIo<Upgraded> {}

/// A WebSocket link over `S` (the upgraded connection).
pub struct WsLink<S> {
    ctx: WebSocketContext,
    io: S,
    /// The input is no longer parsed (after a framing fault): discard it.
    raw: bool,
    /// The last read found the socket empty: look at its readiness before
    /// reading again. A driver woken for other reasons (fan-out pushes)
    /// then pays one flag check, not a read attempt through the codec.
    dry: bool,
}

impl<S> std::fmt::Debug for WsLink<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsLink")
            .field("raw", &self.raw)
            .finish_non_exhaustive()
    }
}

/// `Read`/`Write` over an async socket, for the duration of one poll.
struct SyncIo<'a, 'b, S> {
    io: &'a mut S,
    cx: &'a mut Context<'b>,
}

fn would_block() -> io::Error {
    io::ErrorKind::WouldBlock.into()
}

impl<S: AsyncRead + Unpin> Read for SyncIo<'_, '_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut rb = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut rb) {
            Poll::Ready(Ok(())) => Ok(rb.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(would_block()),
        }
    }
}

impl<S: AsyncWrite + Unpin> Write for SyncIo<'_, '_, S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match Pin::new(&mut *self.io).poll_write(self.cx, buf) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match Pin::new(&mut *self.io).poll_flush(self.cx) {
            Poll::Ready(r) => r,
            Poll::Pending => Err(would_block()),
        }
    }
}

fn is_would_block(e: &WsError) -> bool {
    matches!(e, WsError::Io(io) if io.kind() == io::ErrorKind::WouldBlock)
}

impl<S: LinkIo> WsLink<S> {
    /// A server-side link over an upgraded connection; `read` holds bytes
    /// the HTTP layer had already read past the handshake.
    pub fn new(io: S, read: Bytes, settings: WsSettings) -> WsLink<S> {
        let config = WebSocketConfig::default()
            .read_buffer_size(settings.read_buffer)
            .write_buffer_size(settings.write_buffer)
            // The driver stops feeding when a write would block, so the
            // buffer never holds more than one batch chunk and one frame.
            .max_write_buffer_size(usize::MAX)
            .max_message_size(Some(settings.max_message_size))
            .max_frame_size(Some(settings.max_message_size));
        let ctx = if read.is_empty() {
            WebSocketContext::new(Role::Server, Some(config))
        } else {
            WebSocketContext::from_partially_read(read.to_vec(), Role::Server, Some(config))
        };
        WsLink {
            ctx,
            io,
            raw: false,
            dry: read.is_empty(),
        }
    }

    fn poll_discard(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        let mut buf = [0u8; DISCARD_CHUNK];
        let mut rb = ReadBuf::new(&mut buf);
        match Pin::new(&mut self.io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => Poll::Ready(Inbound::Ended),
            Poll::Ready(Ok(())) => Poll::Ready(Inbound::Discarded(rb.filled().len())),
            Poll::Ready(Err(_)) => Poll::Ready(Inbound::Ended),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: LinkIo> Link for WsLink<S> {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Inbound> {
        if self.raw {
            return self.poll_discard(cx);
        }
        if self.dry {
            if self.io.poll_read_ready(cx).is_pending() {
                return Poll::Pending;
            }
            self.dry = false;
        }
        loop {
            let mut io = SyncIo {
                io: &mut self.io,
                cx: &mut *cx,
            };
            let ev = match self.ctx.read(&mut io) {
                Ok(Message::Binary(b)) => Inbound::Frame(b),
                Ok(Message::Text(_)) => Inbound::Fault(LinkFault::Text),
                Ok(Message::Ping(_)) => Inbound::Ping,
                Ok(Message::Pong(_)) => Inbound::Pong,
                Ok(Message::Close(frame)) => {
                    let rejected = frame.as_ref().is_some_and(|f| {
                        f.code == WsCloseCode::Protocol && f.reason.as_str() == "Protocol violation"
                    });
                    Inbound::PeerClose {
                        code: frame.map(|f| u16::from(f.code)),
                        rejected,
                    }
                }
                Ok(Message::Frame(_)) => continue,
                Err(e) if is_would_block(&e) => {
                    self.dry = true;
                    return Poll::Pending;
                }
                // Size is checked on the frame header, before the payload
                // and before the opcode matters (P8).
                Err(WsError::Capacity(_)) => {
                    self.raw = true;
                    Inbound::Fault(LinkFault::TooBig)
                }
                // A text message or a Close reason that is not UTF-8 (P9);
                // the frame was read whole, parsing can go on.
                Err(WsError::Utf8(_)) => Inbound::Fault(LinkFault::InvalidUtf8),
                // The peer vanished: not a protocol error of ours to report.
                Err(WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => {
                    Inbound::Ended
                }
                Err(WsError::Protocol(_)) => {
                    self.raw = true;
                    Inbound::Fault(LinkFault::Protocol)
                }
                Err(_) => Inbound::Ended,
            };
            return Poll::Ready(ev);
        }
    }

    fn send(&mut self, cx: &mut Context<'_>, item: Outgoing) -> Sent {
        let msg = match item {
            Outgoing::Frame(b) => Message::Binary(b),
            Outgoing::Ping => Message::Ping(Bytes::new()),
            Outgoing::Close(code) => Message::Close(Some(CloseFrame {
                code: WsCloseCode::from(code.as_u16()),
                reason: code.name().into(),
            })),
        };
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        match self.ctx.write(&mut io, msg) {
            Ok(()) => Sent::Buffered,
            Err(e) if is_would_block(&e) => Sent::Blocked,
            Err(_) => Sent::Closed,
        }
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut io = SyncIo {
            io: &mut self.io,
            cx,
        };
        match self.ctx.flush(&mut io) {
            Ok(()) => Poll::Ready(true),
            Err(e) if is_would_block(&e) => Poll::Pending,
            // Written, and the closing handshake is complete.
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => Poll::Ready(true),
            Err(_) => Poll::Ready(false),
        }
    }

    fn poll_shutdown(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.io).poll_shutdown(cx).map(|_| ())
    }

    fn set_max_message_size(&mut self, max: usize) {
        self.ctx.set_config(|c| {
            c.max_message_size = Some(max);
            c.max_frame_size = Some(max);
        });
    }
}
