//! A scripted `plexus.v1` server for testing clients against servers that
//! misbehave.
//!
//! [`ScriptedServer`] listens on a real loopback socket, performs the
//! WebSocket handshake (requiring the `plexus.v1` subprotocol, §3.1), and
//! hands every accepted connection to a script: an async function of one
//! [`Peer`]. The script decides everything else: answer `auth` or refuse it,
//! respond out of order, stream chunks, send garbage, stall, close with any
//! code or drop the TCP connection without a close frame.
//!
//! The harness decides nothing on its own beyond the handshake and the
//! WebSocket layer's automatic replies (Pong for Ping, the Close reply).
//! Send failures are ignored, since a client under test may have gone at any
//! point; a script that wants to know reads with [`Peer::recv`], which
//! returns `None` once the connection has ended.
//!
//! When a script returns, its [`Peer`] is dropped, and with it the TCP
//! connection (without a close frame) unless the script closed it first.
//!
//! Scripts can also be data: [`file`] loads the JSON scripts of
//! `conformance/scripts/` (one file per script), which SDKs in other
//! languages can replay with their own harness.

pub mod file;

use std::fmt;
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::{encode_chunk, encode_error, encode_notification, encode_result};
use plexus_protocol::methods::{
    Auth, AuthParams, AuthResult, Closing, ClosingParams, ServerLimits,
};
use plexus_protocol::{
    CloseCode, DecodeLimits, ErrorCode, Frame, NotificationMethod, Request, RpcMethod, SUBPROTOCOL,
    WireError, decode_params,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{
    ErrorResponse, Request as HttpRequest, Response as HttpResponse,
};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::{WebSocketStream, accept_hdr_async};

/// The limits [`Peer::accept_auth`] announces: the protocol's documented
/// defaults (`docs/protocol.md` §10 and Appendix B).
pub const DEFAULT_LIMITS: ServerLimits = ServerLimits::DEFAULTS;

/// The user [`Peer::accept_auth`] reports as authenticated.
pub const AUTH_USER: &str = "user";

/// How long [`Peer::close`] waits for the client's Close reply.
pub const CLOSE_REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`ScriptedServer::start_on`] keeps retrying a bind that fails
/// because the address is still in use (a server dropped just before is
/// torn down by its runtime shortly after the drop).
pub const REBIND_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause between two bind attempts in [`ScriptedServer::start_on`].
const REBIND_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Pause after a failed `accept` (e.g. out of file descriptors), so that a
/// persistent failure does not spin.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Body of the `400 Bad Request` sent to a handshake without `plexus.v1`.
const MISSING_SUBPROTOCOL_BODY: &str =
    "the plexus.v1 subprotocol is required: send Sec-WebSocket-Protocol: plexus.v1\n";

/// A WebSocket server on `127.0.0.1:0` that runs a script for every accepted
/// connection, each in its own task.
///
/// Dropping it stops it: the accept task and every connection task are
/// aborted, which drops their sockets (clients see the connection end
/// without a close frame).
///
/// ```no_run
/// use plexus_conformance::script::ScriptedServer;
/// use plexus_protocol::methods::Empty;
///
/// # async fn demo() -> std::io::Result<()> {
/// // Authenticates, answers one request, then announces a shutdown.
/// let server = ScriptedServer::start(|mut peer| async move {
///     if peer.accept_auth().await.is_none() {
///         return;
///     }
///     if let Some(request) = peer.recv_request().await {
///         peer.respond(request.id, &Empty {}).await;
///     }
///     peer.closing(4008, "server shutting down", Some(2000)).await;
///     peer.close(4008, "going_away").await;
/// })
/// .await?;
/// let url = server.url(); // "ws://127.0.0.1:{port}/v1/ws": point the client under test here
/// # let _ = url;
/// # Ok(())
/// # }
/// ```
pub struct ScriptedServer {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    accept: JoinHandle<()>,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl ScriptedServer {
    /// Starts a server on `127.0.0.1` with a port chosen by the system.
    pub async fn start<F, Fut>(script: F) -> std::io::Result<ScriptedServer>
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), script).await
    }

    /// Like [`start`](Self::start), but binds `addr`: used to "restart" a
    /// server on the port of one that was dropped.
    ///
    /// A bind that fails with `AddrInUse` is retried for up to
    /// [`REBIND_TIMEOUT`], because a dropped server's listener is closed by
    /// its runtime shortly after the drop, not during it.
    pub async fn start_on<F, Fut>(addr: SocketAddr, script: F) -> std::io::Result<ScriptedServer>
    where
        F: Fn(Peer) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let listener = bind_with_retry(addr).await?;
        let addr = listener.local_addr()?;
        let connections = Arc::new(AtomicUsize::new(0));
        let tasks = Arc::new(Mutex::new(JoinSet::new()));
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::new(script),
            Arc::clone(&connections),
            Arc::clone(&tasks),
        ));
        Ok(ScriptedServer {
            addr,
            connections,
            accept,
            tasks,
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The endpoint URL: `ws://{addr}/v1/ws`.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// How many connections have been accepted so far: WebSocket handshakes
    /// that offered `plexus.v1`. Refused handshakes are not counted. The
    /// count is updated before the `101` response is sent, so it already
    /// includes a connection whose client has just finished connecting.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.accept.abort();
        lock(&self.tasks).abort_all();
    }
}

impl fmt::Debug for ScriptedServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScriptedServer")
            .field("addr", &self.addr)
            .field("connections", &self.connections())
            .finish_non_exhaustive()
    }
}

/// One accepted connection, handed to the script.
///
/// Every method that sends ignores send failures (the client may have
/// gone); reads return `None` once the connection has ended. After
/// [`close`](Self::close) the connection is gone and every method is a
/// no-op.
pub struct Peer {
    /// 0-based accept order of this connection on its server.
    pub index: usize,
    ws: Option<WebSocketStream<TcpStream>>,
    skipped: Vec<Frame>,
}

impl Peer {
    /// The next frame from the client: the next binary message decoded with
    /// [`Frame::decode`] and the default [`DecodeLimits`].
    ///
    /// Pings and Pongs are skipped (Pings are answered automatically while
    /// reading and on every send). Returns `None` when the connection ends:
    /// a Close frame (whose reply is sent before returning), EOF, a socket
    /// error, a text message or a binary message that does not decode.
    pub async fn recv(&mut self) -> Option<Frame> {
        let ws = self.ws.as_mut()?;
        next_frame(ws).await
    }

    /// The next request from the client. Notifications, chunks and
    /// responses read on the way are kept for [`skipped`](Self::skipped).
    pub async fn recv_request(&mut self) -> Option<Request> {
        loop {
            match self.recv().await? {
                Frame::Request(request) => return Some(request),
                other => self.skipped.push(other),
            }
        }
    }

    /// Takes the frames passed over so far by [`recv_request`],
    /// [`accept_auth`], [`reject_auth`] and [`close`], oldest first.
    ///
    /// [`recv_request`]: Self::recv_request
    /// [`accept_auth`]: Self::accept_auth
    /// [`reject_auth`]: Self::reject_auth
    /// [`close`]: Self::close
    pub fn skipped(&mut self) -> Vec<Frame> {
        std::mem::take(&mut self.skipped)
    }

    /// Waits for the `auth` request and accepts it, returning its token.
    ///
    /// The result names session `s{index}` and user [`AUTH_USER`] and
    /// announces [`DEFAULT_LIMITS`], without `expires_in_ms`. As the
    /// protocol prescribes, requests before `auth` are answered with
    /// `unauthenticated` and an `auth` whose params do not decode with
    /// `invalid_params`; both are also kept for [`skipped`](Self::skipped).
    /// Returns `None` if the connection ends first.
    pub async fn accept_auth(&mut self) -> Option<String> {
        loop {
            let request = self.recv_auth().await?;
            match decode_params::<AuthParams<'_>>(&request.params) {
                Ok(params) => {
                    let token = params.token.to_owned();
                    let result = auth_result(self.index);
                    self.respond(request.id, &result).await;
                    return Some(token);
                }
                Err(error) => {
                    self.respond_error(request.id, error).await;
                    self.skipped.push(Frame::Request(request));
                }
            }
        }
    }

    /// Waits for the `auth` request and refuses it as the protocol does for a
    /// bad token: an `unauthenticated` error response, the `closing`
    /// notification with 4000, then a close with 4000 (see
    /// [`close`](Self::close)). Requests before `auth` are answered as in
    /// [`accept_auth`](Self::accept_auth).
    pub async fn reject_auth(&mut self) {
        let Some(request) = self.recv_auth().await else {
            return;
        };
        let error = WireError::new(ErrorCode::Unauthenticated, "token rejected");
        self.respond_error(request.id, error).await;
        let code = CloseCode::AuthFailed;
        self.closing(code.as_u16(), "authentication failed", None)
            .await;
        self.close(code.as_u16(), code.name()).await;
    }

    /// Sends a success response with `result`.
    pub async fn respond<T: minicbor::Encode<()>>(&mut self, id: u64, result: &T) {
        self.send_encoded(encode_result(id, result)).await;
    }

    /// Sends an error response.
    pub async fn respond_error(&mut self, id: u64, error: WireError) {
        self.send_raw(encode_error(id, &error)).await;
    }

    /// Sends a notification.
    pub async fn notify<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) {
        self.send_encoded(encode_notification(method, params)).await;
    }

    /// Sends a chunk of the stream of request `id`.
    pub async fn chunk<T: minicbor::Encode<()>>(&mut self, id: u64, seq: u64, fin: bool, data: &T) {
        self.send_encoded(encode_chunk(id, seq, fin, data)).await;
    }

    /// Sends any bytes as one binary message (for malformed frames).
    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        self.send(Message::Binary(bytes.into())).await;
    }

    /// Sends a text message (which a `plexus.v1` server never does).
    pub async fn send_text(&mut self, text: &str) {
        self.send(Message::Text(text.into())).await;
    }

    /// Sends the `closing` notification only; follow it with
    /// [`close`](Self::close) to actually close.
    pub async fn closing(&mut self, code: u16, reason: &str, retry_after_ms: Option<u64>) {
        let params = ClosingParams {
            code,
            reason,
            retry_after_ms,
        };
        self.notify(Closing::NAME, &params).await;
    }

    /// Sends a WebSocket Close frame with `code` and `reason`, waits up to
    /// [`CLOSE_REPLY_TIMEOUT`] for the client's Close reply, then drops the
    /// connection. Frames that arrive meanwhile are kept for
    /// [`skipped`](Self::skipped).
    ///
    /// Neither value is checked: a reserved code or a reason longer than 123
    /// bytes goes out as given, producing an invalid Close frame.
    pub async fn close(&mut self, code: u16, reason: &str) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let frame = CloseFrame {
            code: code.into(),
            reason: reason.into(),
        };
        if ws.close(Some(frame)).await.is_ok() {
            let drain = async {
                while let Some(frame) = next_frame(&mut ws).await {
                    self.skipped.push(frame);
                }
            };
            // Timing out just means the client did not reply in time.
            let _ = tokio::time::timeout(CLOSE_REPLY_TIMEOUT, drain).await;
        }
    }

    /// Drops the TCP connection abruptly, without a Close frame.
    pub fn drop_connection(self) {
        drop(self);
    }

    /// Neither reads nor writes for `d`: Pings go unanswered and sends from
    /// the client pile up.
    pub async fn stall(&mut self, d: Duration) {
        tokio::time::sleep(d).await;
    }

    /// The next `auth` request; requests before it are answered with
    /// `unauthenticated` and kept as skipped.
    async fn recv_auth(&mut self) -> Option<Request> {
        loop {
            let request = self.recv_request().await?;
            if request.method == Auth::NAME {
                return Some(request);
            }
            let error = WireError::new(ErrorCode::Unauthenticated, "authenticate first");
            self.respond_error(request.id, error).await;
            self.skipped.push(Frame::Request(request));
        }
    }

    /// Sends an encoded frame; an encoding error (only a faulty `Encode`
    /// impl can cause one) sends nothing.
    async fn send_encoded<E>(&mut self, encoded: Result<Vec<u8>, E>) {
        if let Ok(bytes) = encoded {
            self.send_raw(bytes).await;
        }
    }

    async fn send(&mut self, message: Message) {
        if let Some(ws) = self.ws.as_mut() {
            // The client may have gone; the script finds out when it reads.
            let _ = ws.send(message).await;
        }
    }
}

impl fmt::Debug for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Peer")
            .field("index", &self.index)
            .field("open", &self.ws.is_some())
            .field("skipped", &self.skipped.len())
            .finish()
    }
}

/// The `auth` result [`Peer::accept_auth`] sends on connection `index`.
fn auth_result(index: usize) -> AuthResult {
    AuthResult::new(format!("s{index}"), AUTH_USER, None, DEFAULT_LIMITS)
}

/// Reads until a binary message and decodes it; see [`Peer::recv`].
async fn next_frame(ws: &mut WebSocketStream<TcpStream>) -> Option<Frame> {
    loop {
        match ws.next().await? {
            Ok(Message::Binary(bytes)) => {
                return Frame::decode(bytes, &DecodeLimits::default()).ok();
            }
            // After a Close the next read sends the reply and ends the stream.
            Ok(Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_)) => {}
            Ok(Message::Text(_)) | Err(_) => return None,
        }
    }
}

async fn bind_with_retry(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let deadline = tokio::time::Instant::now() + REBIND_TIMEOUT;
    loop {
        match TcpListener::bind(addr).await {
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(REBIND_RETRY_DELAY).await;
            }
            other => return other,
        }
    }
}

async fn accept_loop<F, Fut>(
    listener: TcpListener,
    script: Arc<F>,
    connections: Arc<AtomicUsize>,
    tasks: Arc<Mutex<JoinSet<()>>>,
) where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(ACCEPT_RETRY_DELAY).await;
            continue;
        };
        let mut set = lock(&tasks);
        // Reap finished connections so the set does not grow without bound.
        while set.try_join_next().is_some() {}
        set.spawn(serve(stream, Arc::clone(&script), Arc::clone(&connections)));
    }
}

/// Performs the handshake on one accepted socket and runs the script.
async fn serve<F, Fut>(stream: TcpStream, script: Arc<F>, connections: Arc<AtomicUsize>)
where
    F: Fn(Peer) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut index = None;
    // The closure's signature is tungstenite's `Callback`, whose error type
    // (an HTTP response) is large; this is not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |request: &HttpRequest, mut response: HttpResponse| {
        if !offers_subprotocol(request) {
            return Err(refusal());
        }
        response.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(SUBPROTOCOL),
        );
        index = Some(connections.fetch_add(1, Ordering::SeqCst));
        Ok(response)
    };
    let Ok(ws) = accept_hdr_async(stream, callback).await else {
        return;
    };
    // The callback ran (the handshake succeeded), so the index is set.
    let Some(index) = index else {
        return;
    };
    script(Peer {
        index,
        ws: Some(ws),
        skipped: Vec::new(),
    })
    .await;
}

/// Whether the handshake offers `plexus.v1` in `Sec-WebSocket-Protocol`
/// (in any of the header's lines and comma-separated entries).
fn offers_subprotocol(request: &HttpRequest) -> bool {
    request
        .headers()
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|list| list.split(','))
        .any(|name| name.trim() == SUBPROTOCOL)
}

/// The `400 Bad Request` refusing a handshake without `plexus.v1` (§3.1).
fn refusal() -> ErrorResponse {
    let mut refusal = ErrorResponse::new(Some(MISSING_SUBPROTOCOL_BODY.to_owned()));
    *refusal.status_mut() = StatusCode::BAD_REQUEST;
    refusal.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    refusal
}

/// Locks the task set; a panic while it was held leaves it usable.
fn lock(tasks: &Mutex<JoinSet<()>>) -> std::sync::MutexGuard<'_, JoinSet<()>> {
    tasks.lock().unwrap_or_else(PoisonError::into_inner)
}
