//! One connection's session: a reader that decodes frames and dispatches
//! them, and a writer task that owns the socket's sending half.
//!
//! The loop is generic over the WebSocket halves (`Stream` + `Sink` of
//! tungstenite messages), so it runs over real sockets and, in tests, over
//! anything else that carries messages.

pub mod context;
pub mod core;
pub mod error;
pub(crate) mod handlers;
pub mod methods;
pub mod ratelimit;
pub mod registry;
pub mod stream;
pub mod table;
pub mod writer;

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, Sink, Stream, StreamExt};
use plexus_protocol::frame::{encode_error, encode_notification, encode_result};
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, AuthRefreshResult, AuthResult, CancelParams, TokenExpiringParams,
};
use plexus_protocol::{
    CloseCode, ErrorCode, Frame, Method, NotificationMethod, Request, WireError, decode_params,
};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{Instrument, debug, debug_span, info_span};

use crate::auth::{AuthError, Capabilities, Principal};
use crate::conn::Conn;
use crate::hub::{Hub, RegisterError};
use crate::outbound::CloseRequest;
use handlers::{Handler, Reply, lookup};
use ratelimit::TokenBucket;

/// A finished asynchronous request.
struct Done {
    id: u64,
    method: &'static str,
    started: Instant,
    reply: Result<Reply, futures_util::future::Aborted>,
}

/// The state of one connection's session.
pub(crate) struct Session {
    pub(crate) hub: Arc<Hub>,
    pub(crate) conn: Arc<Conn>,
    principal: Option<Principal>,
    inflight: HashMap<u64, AbortHandle>,
    tasks: FuturesUnordered<BoxFuture<'static, Done>>,
    bucket: TokenBucket,
    strikes: u32,
    /// When to send `token.expiring`, and when the token expires.
    expiring_at: Option<Instant>,
    expires_at: Option<Instant>,
    auth_deadline: Option<Instant>,
    pong_deadline: Option<Instant>,
    /// Set once a close was requested: frames are ignored from then on.
    closing_since: Option<Instant>,
    /// Frames and bytes received, not yet added to the shared counters.
    frames_in: u64,
    bytes_in: u64,
}

/// Frames counted locally before they are added to the shared counters.
const METRICS_BATCH: u64 = 64;

/// The answer when token keys cannot be had right now (a JWKS outage):
/// retryable, with a hint.
fn keys_unavailable() -> WireError {
    WireError::new(
        ErrorCode::Unavailable,
        "token keys unavailable, retry later",
    )
    .with_retry_after_ms(1000)
}

/// Token lifetimes beyond this are treated as never expiring.
const MAX_TOKEN_LIFE: Duration = Duration::from_secs(100 * 365 * 86_400);

/// How long the reader keeps going after asking to close, waiting for the
/// writer to deliver the close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(6);

fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Runs a session until the connection ends.
pub async fn run<S, E>(hub: Arc<Hub>, ws: S, peer: std::net::SocketAddr)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = E> + Send + 'static,
    E: Send + 'static,
{
    let conn = hub.new_conn();
    let span = info_span!("conn", id = conn.id, session = %conn.session, %peer, user = tracing::field::Empty);
    async move {
        let (sink, stream) = ws.split();
        let writer = tokio::spawn(writer::run(sink, conn.clone(), hub.metrics.clone()));
        let now = Instant::now();
        let mut session = Session {
            bucket: TokenBucket::new(hub.config.rate_per_sec, hub.config.rate_burst, now),
            auth_deadline: Some(now + hub.config.auth_timeout.0),
            hub: hub.clone(),
            conn: conn.clone(),
            principal: None,
            inflight: HashMap::new(),
            tasks: FuturesUnordered::new(),
            strikes: 0,
            expiring_at: None,
            expires_at: None,
            pong_deadline: None,
            closing_since: None,
            frames_in: 0,
            bytes_in: 0,
        };
        session.run(stream, writer).await;
        // Dropping the session unsubscribes, leaves presence and
        // unregisters the connection.
        drop(session);
        debug!("connection ended");
    }
    .instrument(span)
    .await
}

impl Session {
    pub(crate) fn caps(&self) -> Option<&Capabilities> {
        self.principal.as_ref().map(|p| &*p.caps)
    }

    async fn run<R>(
        &mut self,
        mut stream: R,
        mut writer: tokio::task::JoinHandle<writer::WriterEnd>,
    ) where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let mut shutdown = self.hub.shutdown_signal();
        let ping_every = self.hub.config.ping_interval.0;
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        if self.hub.is_shutting_down() {
            self.close(
                CloseCode::GoingAway,
                "server shutting down",
                self.shutdown_hint(),
            );
        }
        // One timer, moved only when the next deadline changes: building a
        // new one per loop turn would re-register it on every frame.
        let mut armed = self.next_deadline();
        let sleep = tokio::time::sleep_until(armed.into());
        tokio::pin!(sleep);
        loop {
            let deadline = self.next_deadline();
            if deadline != armed {
                armed = deadline;
                sleep.as_mut().reset(deadline.into());
            }
            tokio::select! {
                _ = &mut writer => return,
                msg = stream.next() => match msg {
                    Some(Ok(msg)) => self.on_message(msg).await,
                    end => {
                        if let Some(Err(e)) = end {
                            self.on_ws_error(&e);
                        }
                        // The reading half is done. If a close was asked for,
                        // let the writer deliver it; otherwise the peer is gone.
                        if self.closing_since.is_some() {
                            let _ = tokio::time::timeout(CLOSE_LINGER, &mut writer).await;
                        }
                        return;
                    }
                },
                Some(done) = self.tasks.next(), if !self.tasks.is_empty() => self.finish(done),
                _ = ping.tick() => {
                    self.flush_metrics();
                    if self.closing_since.is_none()
                        && self.pong_deadline.is_none()
                        && !self.conn.out.is_closing()
                    {
                        self.conn.out.ping(Bytes::new());
                        self.pong_deadline = Some(Instant::now() + self.hub.config.pong_timeout.0);
                    }
                }
                _ = &mut sleep => {
                    self.on_deadline();
                    // Re-arm even if the deadline value did not change (a
                    // fired timer stays fired).
                    armed = far_future();
                }
                Ok(()) = shutdown.changed(), if self.closing_since.is_none() => {
                    if *shutdown.borrow() {
                        self.close(CloseCode::GoingAway, "server shutting down", self.shutdown_hint());
                    }
                }
            }
        }
    }

    fn shutdown_hint(&self) -> Option<u64> {
        Some(plexus_protocol::duration_ms(
            self.hub.config.shutdown_retry_hint.0,
        ))
    }

    fn next_deadline(&self) -> Instant {
        [
            self.auth_deadline,
            self.pong_deadline,
            self.expiring_at,
            self.expires_at,
            self.closing_since.map(|t| t + CLOSE_LINGER),
        ]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or_else(far_future)
    }

    fn on_deadline(&mut self) {
        let now = Instant::now();
        if let Some(t) = self.closing_since {
            if now >= t + CLOSE_LINGER {
                // The writer could not deliver the close: give up on it,
                // keeping the code asked for (1000 would tell clients to stop).
                self.abort_writer();
                self.closing_since = Some(now);
            }
            return;
        }
        if self.auth_deadline.is_some_and(|t| now >= t) {
            self.auth_deadline = None;
            self.hub.metrics.auth_failure("timeout");
            self.close(
                CloseCode::AuthTimeout,
                "no auth request within the deadline",
                None,
            );
        } else if self.pong_deadline.is_some_and(|t| now >= t) {
            self.pong_deadline = None;
            self.close(
                CloseCode::KeepaliveTimeout,
                "no pong within the keepalive timeout",
                None,
            );
        } else if self.expires_at.is_some_and(|t| now >= t) {
            self.expires_at = None;
            self.close(CloseCode::TokenExpired, "token expired", Some(0));
        } else if let Some(t) = self.expiring_at.filter(|t| now >= *t) {
            self.expiring_at = None;
            let left = self.expires_at.map_or(0, |e| {
                plexus_protocol::duration_ms(e.saturating_duration_since(t))
            });
            let params = TokenExpiringParams {
                expires_in_ms: left,
            };
            if let Ok(frame) =
                encode_notification(plexus_protocol::methods::TokenExpiring::NAME, &params)
            {
                self.send(Bytes::from(frame));
            }
        }
    }

    /// Sends `closing` (for the codes that get one) and asks the writer to
    /// close after what is already queued.
    fn close(&mut self, code: CloseCode, reason: &str, retry_after_ms: Option<u64>) {
        if self.closing_since.is_some() {
            return;
        }
        self.closing_since = Some(Instant::now());
        let sends_closing = !matches!(
            code,
            CloseCode::SlowConsumer
                | CloseCode::KeepaliveTimeout
                | CloseCode::MessageTooBig
                | CloseCode::UnsupportedData
        ) && code.as_u16() >= 4000;
        if sends_closing {
            self.hub
                .close_conn(&self.conn, code, reason, retry_after_ms);
        } else {
            self.hub.metrics.close(code);
            self.conn.out.close(CloseRequest::Graceful(code));
        }
    }

    fn on_ws_error(&mut self, e: &WsError) {
        match e {
            WsError::Capacity(_) => self.close(CloseCode::MessageTooBig, "frame too large", None),
            WsError::Utf8(_) => self.close(
                CloseCode::UnsupportedData,
                "text frames are not supported",
                None,
            ),
            WsError::Protocol(_) => {
                self.close(CloseCode::WsProtocolError, "WebSocket protocol error", None)
            }
            _ => {}
        }
    }

    async fn on_message(&mut self, msg: Message) {
        match msg {
            Message::Binary(bytes) => {
                // Once a close is under way, from this session or from
                // outside it (slow consumer, replaced session), frames are
                // ignored: none may take effect.
                if self.closing_since.is_some() || self.conn.out.is_closing() {
                    return;
                }
                // Counted locally and added to the shared counters in
                // batches: a shared atomic per frame costs more than the
                // frame's own handling.
                self.frames_in += 1;
                self.bytes_in += bytes.len() as u64;
                if self.frames_in >= METRICS_BATCH {
                    self.flush_metrics();
                }
                self.on_frame(bytes).await;
            }
            Message::Text(_) => self.close(
                CloseCode::UnsupportedData,
                "text frames are not supported",
                None,
            ),
            Message::Pong(_) => self.pong_deadline = None,
            Message::Ping(_) | Message::Frame(_) => {}
            Message::Close(_) => {
                // tungstenite answers the close handshake itself; the stream
                // ends next.
                if self.closing_since.is_none() {
                    self.closing_since = Some(Instant::now());
                    self.conn
                        .out
                        .close(CloseRequest::Graceful(CloseCode::Normal));
                }
            }
        }
    }

    async fn on_frame(&mut self, bytes: Bytes) {
        let limits = if self.principal.is_some() {
            self.hub.decode_limits
        } else {
            self.hub.preauth_limits
        };
        match Frame::decode(bytes, &limits) {
            Err(e) => {
                debug!(error = %e, "undecodable frame");
                self.close(e.close_code(), "undecodable frame", None);
            }
            Ok(Frame::Request(req)) => self.on_request(req).await,
            Ok(Frame::Notification(n)) => {
                if n.method == Method::Cancel.name()
                    && self.principal.is_some()
                    && let Ok(p) = decode_params::<CancelParams>(&n.params)
                    && let Some(h) = self.inflight.get(&p.id)
                {
                    h.abort();
                }
                // Unknown notifications are ignored, as the spec requires.
            }
            // v1 has no server-initiated requests or client uploads in the
            // core methods: responses and chunks for unknown ids are ignored.
            Ok(Frame::Response(_)) | Ok(Frame::Chunk(_)) => {}
        }
    }

    async fn on_request(&mut self, req: Request) {
        let now = Instant::now();
        if let Err(wait) = self.bucket.take(now, 1) {
            self.strikes += 1;
            if self.strikes > self.hub.config.rate_strikes {
                self.close(
                    CloseCode::RateLimited,
                    "request rate limit exceeded repeatedly",
                    Some(plexus_protocol::duration_ms(wait) + 1),
                );
                return;
            }
            let retry = plexus_protocol::duration_ms(wait) + 1;
            let err = WireError::new(ErrorCode::RateLimited, "request rate limit exceeded")
                .with_retry_after_ms(retry);
            self.respond(req.id, "rate_limited", now, Err(err));
            return;
        }
        self.strikes = 0;
        if self.inflight.contains_key(&req.id) {
            self.close(
                CloseCode::ProtocolError,
                "request id already in flight",
                None,
            );
            return;
        }
        if self.principal.is_none() {
            if req.method == Method::Auth.name() {
                // Boxed: the rare, large auth future would otherwise be
                // part of every connection's task for its whole life.
                Box::pin(self.auth(req)).await;
            } else {
                let err =
                    WireError::new(ErrorCode::Unauthenticated, "the first request must be auth");
                self.respond(req.id, "unauthenticated", now, Err(err));
            }
            return;
        }
        if req.method == Method::AuthRefresh.name() {
            Box::pin(self.refresh(req)).await;
            return;
        }
        if req.method == Method::Auth.name() {
            let err = WireError::new(ErrorCode::Conflict, "already authenticated");
            self.respond(req.id, Method::Auth.name(), now, Err(err));
            return;
        }
        let Some((name, handler)) = lookup(&req.method, self.hub.config.debug_methods) else {
            let err = WireError::new(ErrorCode::MethodNotFound, "no such method");
            self.respond(req.id, "unknown", now, Err(err));
            return;
        };
        match handler {
            Handler::Sync(f) => {
                let _span = debug_span!("request", id = req.id, method = name).entered();
                let reply = std::panic::catch_unwind(AssertUnwindSafe(|| f(self, &req.params)))
                    .unwrap_or_else(|_| Err(WireError::new(ErrorCode::Internal, "internal error")));
                self.respond(req.id, name, now, reply);
            }
            Handler::Async(f) => {
                if self.inflight.len() >= self.hub.config.max_in_flight {
                    let err =
                        WireError::new(ErrorCode::TooManyRequests, "too many requests in flight");
                    self.respond(req.id, name, now, Err(err));
                    return;
                }
                let fut = match f(self, &req.params) {
                    Ok(fut) => fut,
                    Err(e) => {
                        self.respond(req.id, name, now, Err(e));
                        return;
                    }
                };
                let timeout = self.hub.config.request_timeout.0;
                let guarded = async move {
                    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await
                    {
                        Ok(Ok(reply)) => reply,
                        Ok(Err(_)) => Err(WireError::new(ErrorCode::Internal, "internal error")),
                        Err(_) => Err(WireError::new(ErrorCode::Timeout, "request timed out")),
                    }
                };
                let guarded =
                    guarded.instrument(debug_span!("request", id = req.id, method = name));
                let (handle, reg) = AbortHandle::new_pair();
                let id = req.id;
                self.inflight.insert(id, handle);
                self.tasks.push(Box::pin(async move {
                    let reply = Abortable::new(guarded, reg).await;
                    Done {
                        id,
                        method: name,
                        started: now,
                        reply,
                    }
                }));
            }
        }
    }

    fn finish(&mut self, done: Done) {
        self.inflight.remove(&done.id);
        let reply = done
            .reply
            .unwrap_or_else(|_| Err(WireError::new(ErrorCode::Cancelled, "request cancelled")));
        self.respond(done.id, done.method, done.started, reply);
    }

    /// Sends the response of request `id` and counts it.
    fn respond(&mut self, id: u64, method: &'static str, started: Instant, reply: Reply) {
        let code = reply.as_ref().err().map(|e| e.code.as_str().to_owned());
        let frame = match reply {
            Ok(result) => encode_result(id, &plexus_protocol::Encoded(&result)),
            Err(e) => Ok(encode_error(id, &e)),
        };
        match frame {
            Ok(frame) => self.send(Bytes::from(frame)),
            Err(_) => {
                let e = WireError::new(ErrorCode::Internal, "cannot encode response");
                self.send(Bytes::from(encode_error(id, &e)));
            }
        }
        self.hub
            .metrics
            .request(method, code.as_deref(), started.elapsed().as_secs_f64());
    }

    fn send(&mut self, frame: Bytes) {
        // An overflow is counted by the writer, which performs the close.
        let _ = self.conn.out.push(frame);
    }

    async fn auth(&mut self, req: Request) {
        let now = Instant::now();
        let params: AuthParams = match decode_params(&req.params) {
            Ok(p) => p,
            Err(e) => return self.respond(req.id, "auth", now, Err(e)),
        };
        let principal = match self.hub.auth.verify(params.token).await {
            Ok(p) => p,
            Err(AuthError::Unavailable) => {
                return self.respond(req.id, "auth", now, Err(keys_unavailable()));
            }
            Err(AuthError::Invalid(why)) => {
                self.hub.metrics.auth_failure("invalid");
                debug!(reason = %why, "auth failed");
                let err =
                    WireError::new(ErrorCode::Unauthenticated, format!("invalid token: {why}"));
                self.respond(req.id, "auth", now, Err(err));
                self.close(CloseCode::AuthFailed, "authentication failed", None);
                return;
            }
        };
        self.conn.set_user(principal.user.clone());
        tracing::Span::current().record("user", &*principal.user);
        if let Err(RegisterError::TooManyConnections) =
            self.hub.register(&self.conn, params.instance)
        {
            self.close(
                CloseCode::TooManyConnections,
                "too many connections for this user",
                Some(5_000),
            );
            return;
        }
        self.auth_deadline = None;
        let expires_in = self.set_token_timers(principal.expires_at);
        let result = AuthResult::new(
            self.conn.session.to_string(),
            principal.user.to_string(),
            expires_in.map(plexus_protocol::duration_ms),
            self.hub.limits,
        );
        self.principal = Some(principal);
        let reply = handlers::encode(&result);
        self.respond(req.id, "auth", now, reply);
    }

    async fn refresh(&mut self, req: Request) {
        let now = Instant::now();
        let name = Method::AuthRefresh.name();
        let params: AuthRefreshParams = match decode_params(&req.params) {
            Ok(p) => p,
            Err(e) => return self.respond(req.id, name, now, Err(e)),
        };
        let principal = match self.hub.auth.verify(params.token).await {
            Ok(p) => p,
            Err(AuthError::Unavailable) => {
                return self.respond(req.id, name, now, Err(keys_unavailable()));
            }
            Err(AuthError::Invalid(why)) => {
                self.hub.metrics.auth_failure("refresh_invalid");
                let err =
                    WireError::new(ErrorCode::Unauthenticated, format!("invalid token: {why}"));
                return self.respond(req.id, name, now, Err(err));
            }
        };
        if Some(&principal.user) != self.principal.as_ref().map(|p| &p.user) {
            self.hub.metrics.auth_failure("refresh_subject");
            let err = WireError::new(ErrorCode::Forbidden, "token is for another subject");
            self.respond(req.id, name, now, Err(err));
            self.close(CloseCode::Forbidden, "token subject changed", None);
            return;
        }
        let expires_in = self.set_token_timers(principal.expires_at);
        self.principal = Some(principal);
        let result = AuthRefreshResult {
            expires_in_ms: expires_in.map(plexus_protocol::duration_ms),
        };
        let reply = handlers::encode(&result);
        self.respond(req.id, name, now, reply);
    }

    /// Arms the `token.expiring` and expiry timers; returns the time left.
    fn set_token_timers(&mut self, exp_unix: Option<u64>) -> Option<Duration> {
        let Some(exp) = exp_unix else {
            self.expiring_at = None;
            self.expires_at = None;
            return None;
        };
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let left = Duration::from_secs(exp).saturating_sub(now_unix);
        // A far-future `exp` (a "never expires" sentinel) must not overflow
        // the monotonic clock: treat anything past a century as no expiry.
        if left > MAX_TOKEN_LIFE {
            self.expiring_at = None;
            self.expires_at = None;
            return None;
        }
        let now = Instant::now();
        // Close at expiry plus the validation leeway, so a token that was
        // valid under the leeway is not cut off early.
        self.expires_at = Some(now + left + self.hub.config.jwt_leeway.0);
        let lead = self.hub.config.token_expiring_lead.0.min(left / 4);
        self.expiring_at = Some(now + left.saturating_sub(lead));
        Some(left)
    }

    fn flush_metrics(&mut self) {
        let m = &self.hub.metrics;
        m.frames_in.increment(std::mem::take(&mut self.frames_in));
        m.bytes_in.increment(std::mem::take(&mut self.bytes_in));
    }

    fn cleanup(&mut self) {
        self.flush_metrics();
        for (_, h) in self.inflight.drain() {
            h.abort();
        }
        self.hub.broker.drop_conn(&self.conn);
        self.abort_writer();
    }

    /// Stops the writer now, keeping the code of any close already asked
    /// for (1000 otherwise).
    fn abort_writer(&self) {
        let code = match self.conn.out.close_request() {
            Some(CloseRequest::Graceful(c) | CloseRequest::Abort(c)) => c,
            None => CloseCode::Normal,
        };
        self.conn.out.close(CloseRequest::Abort(code));
    }
}

impl Drop for Session {
    /// Runs however the session ends — normally, or by a panic unwinding
    /// through its task — so a connection is never left registered.
    fn drop(&mut self) {
        self.cleanup();
        self.hub.connection_closed(&self.conn);
    }
}
