//! In-process sessions (decision W1): the HTTP surface speaks `plexus.v1`
//! to the hub's own session core over an in-memory pipe, as a client
//! would over a socket. Every HTTP operation therefore meets the same
//! session rules, limits, capability checks and error codes as a
//! WebSocket client's, and no method is implemented twice.
//!
//! The pipe is a bounded [`tokio::io::duplex`] carrying WebSocket frames
//! (the server side is the hub's ordinary [`WsLink`]); the session task
//! ends when the [`LocalSession`] is dropped.

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::{Chunk, Response, encode_request};
use plexus_protocol::methods::{AuthParams, AuthResult};
use plexus_protocol::{CloseCode, DecodeLimits, ErrorCode, Frame, RawValue, WireError};
use tokio::io::DuplexStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth::Principal;
use crate::hub::Hub;
use crate::transport::ws::{LinkIo, WsLink, WsSettings};

/// Bytes the in-memory pipe buffers in each direction.
pub const PIPE_BYTES: usize = 64 * 1024;

impl LinkIo for DuplexStream {}

/// Who an in-process session is.
#[derive(Debug, Clone)]
pub enum Who {
    /// A user token, verified like a socket's `auth`.
    Token(String),
    /// A principal the HTTP layer built (an API key's), accepted as is.
    Principal(Principal),
}

/// Why an in-process exchange failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocalError {
    /// The hub answered with an error.
    #[error("{}: {}", .0.code, .0.message)]
    Wire(WireError),
    /// The session ended (the close code the hub sent, if any).
    #[error("the session closed ({0:?})")]
    Closed(Option<u16>),
    /// A streamed answer grew past the bound the caller gave.
    #[error("the answer exceeds {0} bytes")]
    TooLarge(usize),
}

impl LocalError {
    /// The wire error this failure is reported as.
    pub fn to_wire(&self) -> WireError {
        match self {
            LocalError::Wire(w) => w.clone(),
            LocalError::Closed(Some(c)) if *c == CloseCode::GoingAway as u16 => {
                WireError::new(ErrorCode::Unavailable, "the hub is shutting down")
            }
            LocalError::Closed(code) => WireError::new(
                ErrorCode::Unavailable,
                format!("the session ended (close code {})", code.unwrap_or(1006)),
            ),
            LocalError::TooLarge(n) => WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("the streamed answer exceeds {n} bytes"),
            ),
        }
    }
}

/// What a request answered.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// A single result.
    Value(RawValue),
    /// A streamed result: the data of every chunk, the final one's included
    /// unless it was `null`.
    Chunks(Vec<RawValue>),
}

/// One in-process session, authenticated.
pub struct LocalSession {
    ws: WebSocketStream<DuplexStream>,
    next_id: u64,
    limits: DecodeLimits,
    /// The `auth` result.
    pub auth: AuthResult,
}

impl std::fmt::Debug for LocalSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSession")
            .field("session", &self.auth.session)
            .finish()
    }
}

impl LocalSession {
    /// Starts a session for `who` (its peer shown as `peer` in logs) and
    /// authenticates it.
    pub async fn open(hub: &Arc<Hub>, peer: SocketAddr, who: Who) -> Result<Self, LocalError> {
        let (ours, theirs) = tokio::io::duplex(PIPE_BYTES);
        let settings = WsSettings {
            read_buffer: hub.config.ws_read_buffer,
            write_buffer: hub.config.ws_write_buffer,
            max_message_size: hub.config.max_preauth_frame_size,
        };
        let link = WsLink::new(theirs, bytes::Bytes::new(), settings);
        let (token, principal) = match who {
            Who::Token(t) => (t, None),
            Who::Principal(p) => (String::new(), Some(p)),
        };
        tokio::spawn(crate::session::run_as(hub.clone(), link, peer, principal));
        // tungstenite's default 128 KiB read buffer is zeroed on every read:
        // most of an API publish's cost before this (bench profile).
        let config = WebSocketConfig::default()
            .read_buffer_size(PIPE_BYTES.min(16 * 1024))
            .write_buffer_size(0)
            .max_message_size(Some(hub.config.max_frame_size.saturating_add(1024)))
            .max_frame_size(Some(hub.config.max_frame_size.saturating_add(1024)));
        let ws = WebSocketStream::from_raw_socket(ours, Role::Client, Some(config)).await;
        let mut s = LocalSession {
            ws,
            next_id: 0,
            limits: DecodeLimits {
                max_frame_size: hub.config.max_frame_size.saturating_add(1024),
                ..DecodeLimits::default()
            },
            auth: AuthResult::new("", "", None, Default::default()),
        };
        let params = AuthParams {
            token: &token,
            instance: None,
            agent: Some("plexus-http"),
        };
        let raw = RawValue::encode(&params).map_err(|_| LocalError::Closed(None))?;
        match s.call("auth", &raw, 64 * 1024).await? {
            Answer::Value(v) => {
                s.auth = v.decode().map_err(|_| {
                    LocalError::Wire(WireError::new(ErrorCode::Internal, "bad auth result"))
                })?;
            }
            Answer::Chunks(_) => return Err(LocalError::Closed(None)),
        }
        Ok(s)
    }

    /// Sends a request and returns its id; its answer comes through
    /// [`next`](Self::next).
    pub async fn send(&mut self, method: &str, params: &RawValue) -> Result<u64, LocalError> {
        self.next_id += 1;
        let id = self.next_id;
        let bytes = encode_request(id, method, params).map_err(|_| LocalError::Closed(None))?;
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|_| LocalError::Closed(None))?;
        Ok(id)
    }

    /// Sends a frame the caller encoded.
    pub async fn send_frame(&mut self, bytes: Vec<u8>) -> Result<(), LocalError> {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .map_err(|_| LocalError::Closed(None))
    }

    /// The next frame from the hub; [`LocalError::Closed`] once the
    /// session ended.
    pub async fn next(&mut self) -> Result<Frame, LocalError> {
        loop {
            match self.ws.next().await {
                Some(Ok(Message::Binary(b))) => match Frame::decode(b, &self.limits) {
                    Ok(f) => return Ok(f),
                    Err(_) => return Err(LocalError::Closed(None)),
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(LocalError::Closed(c.map(|c| u16::from(c.code))));
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Err(LocalError::Closed(None)),
            }
        }
    }

    /// Calls `method` and waits for its answer, collecting a streamed one
    /// up to `max_bytes` of chunk data. Notifications that arrive meanwhile
    /// are dropped.
    pub async fn call(
        &mut self,
        method: &str,
        params: &RawValue,
        max_bytes: usize,
    ) -> Result<Answer, LocalError> {
        let id = self.send(method, params).await?;
        let mut chunks = Vec::new();
        let mut size = 0usize;
        loop {
            match self.next().await? {
                Frame::Response(Response { id: rid, outcome }) if rid == id => {
                    return match outcome {
                        Ok(v) if chunks.is_empty() => Ok(Answer::Value(v)),
                        Ok(_) => Ok(Answer::Chunks(chunks)),
                        Err(e) => Err(LocalError::Wire(e)),
                    };
                }
                Frame::Chunk(Chunk {
                    id: rid, fin, data, ..
                }) if rid == id => {
                    size += data.len();
                    if size > max_bytes {
                        self.cancel(id).await;
                        return Err(LocalError::TooLarge(max_bytes));
                    }
                    if !(fin && data.is_null()) {
                        chunks.push(data);
                    }
                    if fin {
                        return Ok(Answer::Chunks(chunks));
                    }
                }
                _ => {}
            }
        }
    }

    /// Cancels request `id` (best effort).
    pub async fn cancel(&mut self, id: u64) {
        let p = plexus_protocol::methods::CancelParams { id };
        if let Ok(bytes) = plexus_protocol::frame::encode_notification("cancel", &p) {
            let _ = self.send_frame(bytes).await;
        }
    }

    /// Ends the session with a normal close.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
