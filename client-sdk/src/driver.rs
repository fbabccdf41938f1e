//! The connection task: the one place that owns the socket. It is glue
//! around the sans-IO [`Core`]: it polls every source in one loop — the
//! socket's reads and writes, the command channel, dropped handles, the
//! token provider, the socket being opened, served handlers' outputs and
//! one timer — feeds what happened to the core with `now`, and does what
//! the core asks.
//!
//! Writes are batched: frames are fed to the WebSocket layer while it
//! accepts them and flushed once nothing more is waiting. A write that
//! waits for the socket never blocks reading (reads and writes are polled
//! side by side, as async-nats does).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, SinkExt, StreamExt};
use plexus_protocol::{CloseCode, SUBPROTOCOL};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::AbortHandle;
use tokio::time::Sleep;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::SEC_WEBSOCKET_PROTOCOL;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::config::{
    COMMAND_BUDGET, READ_BUDGET, Settings, TURN_BUDGET, WS_READ_BUFFER, WS_WRITE_BUFFER,
};
use crate::core::{Action, Command, Core, Inbound, Output, Transmit};
use crate::deliver::Reaper;
use crate::error::{Cause, Error};
use crate::serve::{self, OutputTx};
use crate::state::ConnectionState;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

type Opening = BoxFuture<'static, Result<Ws, Error>>;

type TokenFuture = BoxFuture<'static, Result<String, Error>>;

/// The reading clock: tokio's, so a paused test runtime drives it too.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The connection task's state.
pub(crate) struct Driver {
    core: Core,
    settings: Arc<Settings>,
    cmd: mpsc::Receiver<Command>,
    cmd_open: bool,
    reaper: Arc<Reaper>,
    close_seen: bool,
    state: watch::Sender<ConnectionState>,
    first: Option<oneshot::Sender<Result<(), Error>>>,
    ws: Option<Ws>,
    unflushed: bool,
    opening: Option<Opening>,
    token: Option<TokenFuture>,
    refresh: Option<TokenFuture>,
    served_tx: OutputTx,
    served_rx: mpsc::Receiver<(u64, Output)>,
    served: HashMap<u64, AbortHandle>,
    timer: Pin<Box<Sleep>>,
    timer_at: Option<tokio::time::Instant>,
    finished: bool,
}

impl Driver {
    pub(crate) fn new(
        settings: Arc<Settings>,
        ids: Arc<AtomicU64>,
        cmd: mpsc::Receiver<Command>,
        reaper: Arc<Reaper>,
        state: watch::Sender<ConnectionState>,
        first: oneshot::Sender<Result<(), Error>>,
    ) -> Driver {
        let core = Core::new(settings.core(), ids, Box::new(rand::random::<f64>), now());
        let (served_tx, served_rx) = mpsc::channel(settings.max_served.max(1));
        Driver {
            core,
            settings,
            cmd,
            cmd_open: true,
            reaper,
            close_seen: false,
            state,
            first: Some(first),
            ws: None,
            unflushed: false,
            opening: None,
            token: None,
            refresh: None,
            served_tx,
            served_rx,
            served: HashMap::new(),
            timer: Box::pin(tokio::time::sleep_until(tokio::time::Instant::now())),
            timer_at: None,
            finished: false,
        }
    }

    /// Runs until the client is closed for good.
    pub(crate) async fn run(mut self) {
        std::future::poll_fn(|cx| self.poll(cx)).await;
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        for _ in 0..TURN_BUDGET {
            let now = now();
            let mut busy = self.apply_actions(now);
            if self.finished {
                return Poll::Ready(());
            }
            busy |= self.poll_handles(cx, now);
            busy |= self.poll_commands(cx, now);
            busy |= self.poll_connecting(cx, now);
            busy |= self.poll_read(cx, now);
            busy |= self.poll_served(cx);
            busy |= self.poll_write(cx, now);
            busy |= self.poll_timer(cx, now);
            if !busy {
                return Poll::Pending;
            }
        }
        // Still busy after a full budget: let other tasks run.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// Does what the core asked; true if it asked anything.
    fn apply_actions(&mut self, now: Instant) -> bool {
        let mut any = false;
        while let Some(action) = self.core.poll_action() {
            any = true;
            match action {
                Action::FetchToken => self.token = Some(self.fetch_token()),
                Action::Open => match open(&self.settings) {
                    Ok(f) => self.opening = Some(f),
                    Err(e) => self.core.handle_open_failed(now, e, true),
                },
                Action::AbandonAttempt => {
                    self.token = None;
                    self.opening = None;
                }
                Action::DropSocket => {
                    self.ws = None;
                    self.unflushed = false;
                }
                Action::FetchRefreshToken => self.refresh = Some(self.fetch_token()),
                Action::AbandonRefresh => self.refresh = None,
                Action::Spawn {
                    serial,
                    handler,
                    params,
                } => {
                    // Handles of finished handlers are not kept: at most
                    // `max_served` run, so this stays small.
                    self.served.retain(|_, h| !h.is_finished());
                    let handle = serve::spawn(serial, handler, params, self.served_tx.clone());
                    self.served.insert(serial, handle);
                }
                Action::Invoke {
                    serial,
                    handler,
                    invocation,
                    credit,
                } => {
                    self.served.retain(|_, h| !h.is_finished());
                    let handle = serve::spawn_invocation(
                        serial,
                        handler,
                        invocation,
                        credit,
                        self.served_tx.clone(),
                    );
                    self.served.insert(serial, handle);
                }
                Action::Abort(serial) => {
                    if let Some(h) = self.served.remove(&serial) {
                        h.abort();
                    }
                }
                Action::AbortAllServed => self.abort_served(),
                Action::State(s) => {
                    self.state.send_replace(s);
                }
                Action::FirstConnected => {
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Ok(()));
                    }
                }
                Action::Finished(error) => {
                    self.finished = true;
                    self.abort_served();
                    self.ws = None;
                    self.opening = None;
                    self.token = None;
                    self.refresh = None;
                    if let Some(first) = self.first.take() {
                        let _ = first.send(Err(error));
                    }
                }
            }
        }
        any
    }

    fn abort_served(&mut self) {
        for (_, h) in self.served.drain() {
            h.abort();
        }
    }

    fn fetch_token(&self) -> TokenFuture {
        (self.settings.token)()
            .map(|r| r.map_err(|e| Error::provider("it returned an error", Some(e))))
            .boxed()
    }

    /// Dropped handles and a requested close.
    fn poll_handles(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        self.reaper.register(cx.waker());
        let mut any = false;
        if !self.close_seen && self.reaper.close_requested() {
            self.close_seen = true;
            self.core.close(now);
            any = true;
        }
        for d in self.reaper.take() {
            self.core.handle_dropped(now, d);
            any = true;
        }
        any
    }

    fn poll_commands(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut any = false;
        for _ in 0..COMMAND_BUDGET {
            if !self.cmd_open || !self.core.accepts_commands() {
                break;
            }
            match self.cmd.poll_recv(cx) {
                Poll::Ready(Some(c)) => {
                    self.core.handle_command(now, c);
                    any = true;
                }
                Poll::Ready(None) => {
                    // Every handle is gone: close as `close()` would.
                    self.cmd_open = false;
                    self.core.close(now);
                    any = true;
                }
                Poll::Pending => break,
            }
        }
        any
    }

    /// The token fetches and the socket being opened.
    fn poll_connecting(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut any = false;
        if let Some(f) = self.token.as_mut()
            && let Poll::Ready(token) = f.as_mut().poll(cx)
        {
            self.token = None;
            self.core.handle_token(now, token);
            any = true;
        }
        if let Some(f) = self.opening.as_mut()
            && let Poll::Ready(result) = f.as_mut().poll(cx)
        {
            self.opening = None;
            match result {
                Ok(ws) => {
                    self.ws = Some(ws);
                    self.unflushed = false;
                    self.core.handle_opened(now);
                }
                Err(e) => self.core.handle_open_failed(now, e, false),
            }
            any = true;
        }
        if let Some(f) = self.refresh.as_mut()
            && let Poll::Ready(token) = f.as_mut().poll(cx)
        {
            self.refresh = None;
            self.core.handle_refresh_token(now, token);
            any = true;
        }
        any
    }

    fn poll_read(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut any = false;
        for _ in 0..READ_BUDGET {
            if !self.core.wants_read() {
                break;
            }
            let Some(ws) = self.ws.as_mut() else { break };
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(msg))) => {
                    any = true;
                    let inbound = match msg {
                        Message::Binary(b) => Inbound::Binary(b),
                        Message::Close(f) => {
                            // The WebSocket layer queued its reply: flush it.
                            self.unflushed = true;
                            Inbound::Close(f.map(|f| u16::from(f.code)))
                        }
                        // plexus.v1 is binary only; a text message is ignored.
                        Message::Text(_)
                        | Message::Ping(_)
                        | Message::Pong(_)
                        | Message::Frame(_) => Inbound::Other,
                    };
                    self.core.handle_inbound(now, inbound);
                }
                Poll::Ready(Some(Err(e))) => {
                    self.socket_failed(now, Some(Arc::new(e)));
                    return true;
                }
                Poll::Ready(None) => {
                    self.socket_failed(now, None);
                    return true;
                }
                Poll::Pending => break,
            }
        }
        any
    }

    fn socket_failed(&mut self, now: Instant, cause: Option<Cause>) {
        self.ws = None;
        self.unflushed = false;
        self.core.handle_socket_ended(now, cause);
    }

    fn poll_served(&mut self, cx: &mut Context<'_>) -> bool {
        let mut any = false;
        for _ in 0..READ_BUDGET {
            if !self.core.wants_served_output() {
                break;
            }
            match self.served_rx.poll_recv(cx) {
                Poll::Ready(Some((serial, output))) => {
                    self.core.handle_served(serial, output);
                    any = true;
                }
                // The driver holds a sender, so the channel never closes.
                Poll::Ready(None) | Poll::Pending => break,
            }
        }
        any
    }

    /// Feeds frames while the socket takes them, then flushes once.
    fn poll_write(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut any = false;
        let Some(ws) = self.ws.as_mut() else {
            return false;
        };
        while self.core.has_transmit() {
            match ws.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => {
                    self.socket_failed(now, Some(Arc::new(e)));
                    return true;
                }
                Poll::Pending => return any,
            }
            let Some(t) = self.core.poll_transmit() else {
                break;
            };
            let msg = match t {
                Transmit::Frame(b) => Message::Binary(b),
                Transmit::Close => Message::Close(Some(CloseFrame {
                    code: WsCloseCode::from(CloseCode::Normal.as_u16()),
                    reason: "".into(),
                })),
            };
            if let Err(e) = ws.start_send_unpin(msg) {
                self.socket_failed(now, Some(Arc::new(e)));
                return true;
            }
            self.unflushed = true;
            any = true;
        }
        if self.unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Ready(Ok(())) => self.unflushed = false,
                Poll::Ready(Err(e)) => {
                    self.socket_failed(now, Some(Arc::new(e)));
                    return true;
                }
                Poll::Pending => {}
            }
        }
        any
    }

    /// One timer, set to the core's next deadline. A deadline that moved
    /// later (the liveness deadline moves with every message) leaves the
    /// timer where it is: when it fires early the core does nothing and
    /// the timer is set again.
    fn poll_timer(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(deadline) = self.core.poll_timeout() else {
            self.timer_at = None;
            return false;
        };
        if deadline <= now {
            self.timer_at = None;
            self.core.handle_timeout(now);
            return true;
        }
        let at = tokio::time::Instant::from_std(deadline);
        if self.timer_at.is_none_or(|t| at < t) {
            self.timer.as_mut().reset(at);
            self.timer_at = Some(at);
        }
        if self.timer.as_mut().poll(cx).is_ready() {
            self.timer_at = None;
            self.core.handle_timeout(self::now());
            return true;
        }
        false
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The runtime is shutting down or the client closed: no handler
        // outlives its connection.
        self.abort_served();
    }
}

/// Starts opening the socket; `Err` when the URL itself is invalid (fatal).
fn open(settings: &Settings) -> Result<Opening, Error> {
    let mut req = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| Error::connect("invalid URL", Some(Arc::new(e))))?;
    req.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    // Frames are fed only while the layer is ready, so its write buffer
    // holds at most WS_WRITE_BUFFER plus one frame.
    let config = WebSocketConfig::default()
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_message_size(Some(settings.max_frame_size))
        .max_frame_size(Some(settings.max_frame_size));
    Ok(async move {
        tokio_tungstenite::connect_async_with_config(req, Some(config), true)
            .await
            .map(|(ws, _)| ws)
            .map_err(|e: tungstenite::Error| {
                tracing::debug!(error = %e, "connect failed");
                Error::connect(
                    "the TCP connect, TLS or WebSocket handshake failed",
                    Some(Arc::new(e)),
                )
            })
    }
    .boxed())
}
