//! A minimal client that speaks the wire format directly over a real
//! WebSocket (tokio-tungstenite), for tests of the hub's behaviour.

use std::collections::VecDeque;
use std::net::SocketAddr;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::{encode_notification, encode_request};
use plexus_protocol::methods::{AuthParams, AuthResult, ClosingParams};
use plexus_protocol::{DecodeLimits, Frame, Notification, RawValue, WireError};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::WAIT;

/// The WebSocket a [`Client`] talks over.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What ended a connection, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// A Close frame with this code.
    Close(u16),
    /// A Close frame without a code.
    CloseWithoutCode,
    /// The connection ended without a Close frame (EOF or reset).
    Dropped,
}

/// A client holding one connection. Frames it was not waiting for are kept
/// in [`Client::pending`], so a test can ask for them later.
#[derive(Debug)]
pub struct Client {
    /// The WebSocket.
    pub ws: Ws,
    next_id: u64,
    pending: VecDeque<Frame>,
}

fn ws_request(addr: SocketAddr) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    let mut req = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("a valid URL");
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        plexus_protocol::SUBPROTOCOL
            .parse()
            .expect("a valid header value"),
    );
    req
}

impl Client {
    /// Connects (subprotocol `plexus.v1`), not yet authenticated.
    pub async fn connect(addr: SocketAddr) -> Client {
        let (ws, resp) = tokio_tungstenite::connect_async(ws_request(addr))
            .await
            .expect("the WebSocket handshake succeeds");
        assert_eq!(
            resp.headers()["sec-websocket-protocol"],
            plexus_protocol::SUBPROTOCOL
        );
        Client::from_ws(ws)
    }

    /// Connects over a socket with a tiny receive buffer: a client that
    /// then stops reading stalls quickly, so the hub's outbound budget is
    /// what fills.
    pub async fn connect_stalled(addr: SocketAddr) -> Client {
        let sock = tokio::net::TcpSocket::new_v4().expect("a socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let tcp = sock.connect(addr).await.expect("connects");
        let (ws, _) = tokio_tungstenite::client_async(ws_request(addr), MaybeTlsStream::Plain(tcp))
            .await
            .expect("the WebSocket handshake succeeds");
        Client::from_ws(ws)
    }

    /// Wraps an already connected WebSocket.
    pub fn from_ws(ws: Ws) -> Client {
        Client {
            ws,
            next_id: 1,
            pending: VecDeque::new(),
        }
    }

    /// Connects and authenticates, panicking on failure.
    pub async fn authed(addr: SocketAddr, token: &str) -> (Client, AuthResult) {
        let mut c = Client::connect(addr).await;
        let r = c.auth(token).await.expect("auth succeeds");
        (c, r)
    }

    /// Sends `auth` and waits for its response.
    pub async fn auth(&mut self, token: &str) -> Result<AuthResult, WireError> {
        self.auth_as(token, None).await
    }

    /// Sends `auth` with a client `instance` and waits for its response.
    pub async fn auth_as(
        &mut self,
        token: &str,
        instance: Option<&str>,
    ) -> Result<AuthResult, WireError> {
        let params = AuthParams {
            token,
            instance,
            agent: Some("plexus-testkit"),
        };
        self.call("auth", &params)
            .await
            .map(|r| r.decode().expect("an auth result"))
    }

    /// Sends one binary message.
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws
            .send(Message::Binary(bytes.into()))
            .await
            .expect("the message is sent");
    }

    /// Sends a request and returns its id.
    pub async fn request<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_bytes(encode_request(id, method, params).expect("params encode"))
            .await;
        id
    }

    /// Sends a notification.
    pub async fn notify<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) {
        let bytes = encode_notification(method, params).expect("params encode");
        self.send_bytes(bytes).await;
    }

    /// Calls a method and waits for its response; other frames are kept.
    pub async fn call<T: minicbor::Encode<()>>(
        &mut self,
        method: &str,
        params: &T,
    ) -> Result<RawValue, WireError> {
        let id = self.request(method, params).await;
        self.response(id).await
    }

    /// Waits for the response to request `id`; other frames are kept.
    pub async fn response(&mut self, id: u64) -> Result<RawValue, WireError> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|f| matches!(f, Frame::Response(r) if r.id == id))
            && let Some(Frame::Response(r)) = self.pending.remove(pos)
        {
            return r.outcome;
        }
        loop {
            match self.read_frame().await {
                Some(Frame::Response(r)) if r.id == id => return r.outcome,
                Some(other) => self.pending.push_back(other),
                None => panic!("connection ended while waiting for response {id}"),
            }
        }
    }

    /// The next frame of any kind (pending first), or `None` when the
    /// connection ends.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_frame().await
    }

    /// The next notification with this method, skipping (and keeping)
    /// others.
    pub async fn notification(&mut self, method: &str) -> Notification {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|f| matches!(f, Frame::Notification(n) if n.method == method))
            && let Some(Frame::Notification(n)) = self.pending.remove(pos)
        {
            return n;
        }
        loop {
            match self.read_frame().await {
                Some(Frame::Notification(n)) if n.method == method => return n,
                Some(other) => self.pending.push_back(other),
                None => panic!("connection ended while waiting for {method}"),
            }
        }
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match msg {
                Ok(Message::Binary(b)) => {
                    return Some(
                        Frame::decode(b, &DecodeLimits::default()).expect("server frames decode"),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the connection ends and says how; frames are kept.
    pub async fn ended(&mut self) -> Ended {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(m) => m,
                Err(_) => panic!("connection did not end"),
            };
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return Ended::Close(u16::from(f.code)),
                Some(Ok(Message::Close(None))) => return Ended::CloseWithoutCode,
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(f) = Frame::decode(b, &DecodeLimits::default()) {
                        self.pending.push_back(f);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// The code of the `closing` notification received, if any.
    pub fn closing_code(&self) -> Option<u16> {
        self.closing().map(|c| c.0)
    }

    /// The code and retry hint of the `closing` notification received.
    pub fn closing(&self) -> Option<(u16, Option<u64>)> {
        self.pending.iter().find_map(|f| match f {
            Frame::Notification(n) if n.method == "closing" => n
                .params
                .decode::<ClosingParams>()
                .ok()
                .map(|p| (p.code, p.retry_after_ms)),
            _ => None,
        })
    }

    /// Expects the connection to close with `code`, after a `closing`
    /// notification carrying the same code when `with_closing`.
    pub async fn expect_close(&mut self, code: u16, with_closing: bool) {
        assert_eq!(self.ended().await, Ended::Close(code));
        if with_closing {
            assert_eq!(
                self.closing_code(),
                Some(code),
                "expected a closing notification with {code}"
            );
        } else {
            assert_eq!(self.closing_code(), None, "{code} is not announced");
        }
    }

    /// Frames received but not yet consumed.
    pub fn pending(&mut self) -> &mut VecDeque<Frame> {
        &mut self.pending
    }

    /// The plain TCP stream under the WebSocket, to write raw bytes.
    pub fn tcp(&mut self) -> &mut TcpStream {
        match self.ws.get_mut() {
            MaybeTlsStream::Plain(s) => s,
            _ => panic!("test clients do not use TLS"),
        }
    }
}
