//! The sans-IO client core: every protocol rule of the SDK, without a
//! socket, a runtime or a clock.
//!
//! It is a state machine in the shape of `quinn-proto`'s `Connection`.
//! The connection task ([`crate::driver`]) feeds it what happened — a
//! command from a [`Client`](crate::Client) handle, a message from the
//! socket, a token from the provider, a handler's output, a deadline
//! passed — always with `now`, and takes out what to do: frames to write
//! ([`Core::poll_transmit`]), actions ([`Core::poll_action`]: fetch a token,
//! open or drop the socket, run a served request, publish a state) and the
//! next deadline ([`Core::poll_timeout`]). It holds the request ids and the
//! in-flight table, the hub's window, the offline queue, the subscriptions
//! and their renewal, the served methods, the liveness timer, the
//! close-code policy, the backoff and the token refresh, and it is tested
//! with a virtual clock (`core/tests.rs`).
//!
//! A connection goes through these phases:
//!
//! ```text
//! Token ─► Opening ─► Authenticating ─► Connected ─► Ending ─┬─► Backoff ─► Token …
//!   └────────┴────────────┴─── failed attempt ─────────────┤
//!                                                           └─► Closed
//! ```

mod policy;
mod requests;
mod served;
mod subs;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use minicbor::Encode;
use plexus_protocol::frame::{encode_chunk, encode_error, encode_notification, encode_request};
use plexus_protocol::methods::{
    Auth, AuthParams, AuthRefresh, AuthRefreshParams, AuthResult, Cancel, CancelParams,
    ClosingParams, PresenceSet, PresenceSetParams, ServerLimits, Subscribe, SubscribeParams,
    Unsubscribe, UnsubscribeParams,
};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{
    CloseCode, DecodeError, DecodeLimits, ErrorCode, Frame, Method, NotificationMethod, RawValue,
    Request, Response, RpcMethod, WireError,
};
use tracing::debug;

use crate::backoff::Backoff;
use crate::deliver::{Dropped, Push, ReplyTx};
use crate::error::{Cause, Error};
use crate::state::{CloseStatus, ConnectionState};
use crate::subscription::SubQueue;

pub(crate) use requests::Pending;
use requests::{Held, QueueFull, Requests};
use served::{Admit, Served};
pub(crate) use served::{Handler, Output};
use subs::Subs;

/// A session that lasted this long resets the backoff to its first step.
pub(crate) const STABLE_SESSION: Duration = Duration::from_secs(10);

/// After the client sent its Close frame, how long it waits for the hub's
/// reply before dropping the socket.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// After the hub's Close frame, how long the client keeps the socket to
/// send its reply and read to the end.
pub(crate) const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Most answers to the hub's requests (responses, chunks, refusals) queued
/// for writing. At this bound the client stops reading until the socket
/// drains, so a hub that sends requests without reading the answers
/// cannot grow the client's memory.
pub(crate) const MAX_QUEUED_REPLIES: usize = 1024;

/// The nesting depth assumed when the hub does not announce `max_depth`.
const DEFAULT_MAX_DEPTH: u64 = plexus_protocol::limits::DEFAULT_MAX_DEPTH as u64;

/// Settings of the core, fixed when the client is built.
pub(crate) struct Config {
    /// Deadline of the `auth` answer.
    pub(crate) call_timeout: Duration,
    /// Deadline of the token fetch before an attempt, of opening the socket,
    /// and of the token fetch of an in-band refresh.
    pub(crate) connect_timeout: Duration,
    /// Reconnect delays.
    pub(crate) backoff: Backoff,
    /// Silence after which the connection counts as dead (default: from
    /// the announced ping interval).
    pub(crate) liveness: Option<Duration>,
    /// Bound of the offline queue.
    pub(crate) max_queued: usize,
    /// Local cap on requests in flight (the hub's `max_in_flight` applies
    /// when lower).
    pub(crate) max_in_flight: usize,
    /// Most served requests running at once.
    pub(crate) max_served: usize,
    /// Largest frame accepted from the hub.
    pub(crate) max_frame_size: usize,
    /// The `instance` of `auth`.
    pub(crate) instance: Option<String>,
    /// The `agent` of `auth`.
    pub(crate) agent: String,
}

/// What a [`Client`](crate::Client) handle asks of the core.
pub(crate) enum Command {
    /// A request, already encoded with its id (so an encoding failure
    /// fails the call in the caller, at once).
    Call {
        /// Its id, from the shared counter.
        id: u64,
        /// The whole request frame.
        frame: Bytes,
        /// Where the answer goes ([`Pending::Call`], [`Pending::Stream`] or
        /// [`Pending::PresenceSet`]).
        pending: Pending,
    },
    /// A new local subscription.
    Subscribe {
        /// Its local id.
        local: u64,
        /// The pattern, already validated.
        pattern: Pattern,
        /// Whether it joins the topic's presence.
        presence: bool,
        /// Its buffer.
        queue: Arc<SubQueue>,
        /// Answered once the hub confirmed (or refused) it.
        reply: ReplyTx<Result<(), Error>>,
    },
    /// Serve a method the hub may call.
    Serve {
        /// The method name.
        method: String,
        /// Its handler.
        handler: Handler,
        /// `Err(conflict)` if the method is already served.
        reply: ReplyTx<Result<(), Error>>,
    },
    /// Stop serving a method.
    Unserve {
        /// The method name.
        method: String,
    },
}

/// A message read from the socket.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A binary message: one frame.
    Binary(Bytes),
    /// A Close frame, with its code if it has one.
    Close(Option<u16>),
    /// Anything else (Ping, Pong, text): only proves the hub is alive.
    Other,
}

/// Something to write to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Transmit {
    /// A binary message.
    Frame(Bytes),
    /// The client's Close frame (1000).
    Close,
}

/// What the connection task must do.
pub(crate) enum Action {
    /// Call the token provider for the next connection attempt; answer
    /// with [`Core::handle_token`].
    FetchToken,
    /// Open the socket; answer with [`Core::handle_opened`] or
    /// [`Core::handle_open_failed`].
    Open,
    /// Give up the token fetch or the socket opening under way.
    AbandonAttempt,
    /// Drop the socket now, without a close handshake.
    DropSocket,
    /// Call the token provider for an in-band refresh; answer with
    /// [`Core::handle_refresh_token`].
    FetchRefreshToken,
    /// Give up the refresh token fetch.
    AbandonRefresh,
    /// Run a served request; feed its outputs to [`Core::handle_served`].
    Spawn {
        /// The request's local serial.
        serial: u64,
        /// Its handler.
        handler: Handler,
        /// The hub's params.
        params: RawValue,
    },
    /// Drop the running served request `serial` (the hub cancelled it).
    Abort(u64),
    /// Drop every running served request (their connection is gone).
    AbortAllServed,
    /// Publish this connection state.
    State(ConnectionState),
    /// The first connection succeeded: `connect()` returns the client.
    FirstConnected,
    /// Closed for good with this error; the task ends.
    Finished(Error),
}

enum Phase {
    /// Waiting for the token of the next attempt.
    Token { deadline: Instant },
    /// Opening the socket.
    Opening { deadline: Instant },
    /// `auth` sent, waiting for its answer.
    Authenticating { auth_id: u64, deadline: Instant },
    /// Authenticated.
    Connected { last_heard: Instant },
    /// The socket is ending: reading to the end (or to `deadline`) before
    /// `then` happens.
    Ending { deadline: Instant, then: Outcome },
    /// Waiting before the next attempt.
    Backoff { until: Instant },
    /// Closed for good.
    Closed,
}

/// How a connection (or an attempt) ended.
enum Outcome {
    /// Reconnect with backoff. On the first attempt, `connect()` fails
    /// with this error instead.
    Retry(Error),
    /// Stop for good.
    Stop {
        code: Option<CloseStatus>,
        error: Error,
    },
}

enum Refresh {
    Idle,
    Fetching { deadline: Instant },
    Sent,
}

/// The client's protocol state.
pub(crate) struct Core {
    cfg: Config,
    ids: Arc<AtomicU64>,
    jitter: Box<dyn FnMut() -> f64 + Send>,
    phase: Phase,
    /// No connection has succeeded yet (`connect()` is waiting).
    first: bool,
    /// The next reconnect attempt, 1-based since the last stable session.
    attempt: u32,
    /// When the connection being ended was authenticated, if it was.
    connected_since: Option<Instant>,
    /// The token for the attempt under way, until `auth` is sent.
    token: Option<String>,
    retry_hint: Option<Duration>,
    /// The hub sent `closing`: nothing more is sent on this connection.
    closing_seen: bool,
    limits: ServerLimits,
    requests: Requests,
    subs: Subs,
    served: Served,
    presence_info: Option<RawValue>,
    refresh: Refresh,
    transmit: VecDeque<(Transmit, bool)>,
    queued_replies: usize,
    actions: VecDeque<Action>,
    final_code: Option<CloseStatus>,
}

impl Core {
    /// A core that starts its first connection attempt at `now`. Request
    /// ids come from `ids` (shared with the handles, which encode their
    /// requests themselves); `jitter` draws the backoff jitter in `[0, 1]`.
    pub(crate) fn new(
        cfg: Config,
        ids: Arc<AtomicU64>,
        jitter: Box<dyn FnMut() -> f64 + Send>,
        now: Instant,
    ) -> Core {
        let mut core = Core {
            requests: Requests::new(cfg.max_queued, cfg.max_in_flight),
            served: Served::new(cfg.max_served),
            cfg,
            ids,
            jitter,
            phase: Phase::Closed,
            first: true,
            attempt: 0,
            connected_since: None,
            token: None,
            retry_hint: None,
            closing_seen: false,
            limits: ServerLimits::default(),
            subs: Subs::default(),
            presence_info: None,
            refresh: Refresh::Idle,
            transmit: VecDeque::new(),
            queued_replies: 0,
            actions: VecDeque::new(),
            final_code: None,
        };
        core.start_attempt(now);
        core
    }

    // ---- outputs ----

    /// The next frame to write.
    pub(crate) fn poll_transmit(&mut self) -> Option<Transmit> {
        let (t, reply) = self.transmit.pop_front()?;
        if reply {
            self.queued_replies -= 1;
        }
        Some(t)
    }

    /// Whether a frame waits to be written.
    pub(crate) fn has_transmit(&self) -> bool {
        !self.transmit.is_empty()
    }

    /// The next thing the task must do.
    pub(crate) fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let phase = match &self.phase {
            Phase::Token { deadline }
            | Phase::Opening { deadline }
            | Phase::Authenticating { deadline, .. }
            | Phase::Ending { deadline, .. } => Some(*deadline),
            Phase::Backoff { until } => Some(*until),
            Phase::Connected { last_heard, .. } => Some(*last_heard + self.liveness()),
            Phase::Closed => None,
        };
        let refresh = match self.refresh {
            Refresh::Fetching { deadline } => Some(deadline),
            _ => None,
        };
        match (phase, refresh) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the task should read from the socket: false while the
    /// answers to the hub's requests fill [`MAX_QUEUED_REPLIES`].
    pub(crate) fn wants_read(&self) -> bool {
        self.queued_replies < MAX_QUEUED_REPLIES
    }

    /// Whether the task should take more commands: false while connected
    /// with the hub's window full and the queue at its bound (callers then
    /// wait in the bounded command channel, within their timeouts).
    pub(crate) fn accepts_commands(&self) -> bool {
        !(self.sendable() && self.requests.queue_full())
    }

    /// Whether the answers of served requests can be taken (the same
    /// bound as [`wants_read`](Self::wants_read)).
    pub(crate) fn wants_served_output(&self) -> bool {
        self.wants_read()
    }

    /// Closed for good.
    pub(crate) fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    // ---- inputs ----

    /// A command from a handle.
    pub(crate) fn handle_command(&mut self, now: Instant, cmd: Command) {
        let _ = now;
        match cmd {
            Command::Call { id, frame, pending } => {
                if self.is_closed() {
                    pending.fail(Error::Closed(self.final_code.and_then(CloseStatus::known)));
                    return;
                }
                let held = Held { id, frame, pending };
                if self.sendable()
                    && self.requests.queued() == 0
                    && self.requests.fits(held.frame.len())
                {
                    self.send_now(held);
                } else if let Err(QueueFull(held)) = self.requests.queue_user(held) {
                    held.pending.fail(Error::QueueFull {
                        limit: self.cfg.max_queued,
                    });
                }
            }
            Command::Subscribe {
                local,
                pattern,
                presence,
                queue,
                reply,
            } => {
                if self.is_closed() {
                    reply.send(Err(Error::Closed(
                        self.final_code.and_then(CloseStatus::known),
                    )));
                    return;
                }
                let name = pattern.as_str().to_owned();
                // Sent now when connected; otherwise renewed (sent for the
                // first time) once the connection is up.
                if self.subs.add(local, pattern, presence, queue, reply) && self.sendable() {
                    self.subscribe(name, presence);
                    self.release();
                }
            }
            Command::Serve {
                method,
                handler,
                reply,
            } => {
                if self.served.register(method, handler) {
                    reply.send(Ok(()));
                } else {
                    reply.send(Err(Error::Remote(WireError::new(
                        ErrorCode::Conflict,
                        "this method is already served",
                    ))));
                }
            }
            Command::Unserve { method } => {
                self.served.unregister(&method);
            }
        }
    }

    /// A handle was dropped.
    pub(crate) fn handle_dropped(&mut self, now: Instant, dropped: Dropped) {
        let _ = now;
        match dropped {
            Dropped::Call(id) => {
                if self.requests.cancel(id) && self.sendable() {
                    self.notify(Cancel::NAME, &CancelParams { id }, false);
                }
            }
            Dropped::Subscription(local) => {
                if let Some(pattern) = self.subs.remove(local)
                    && self.sendable()
                {
                    self.unsubscribe(pattern);
                }
            }
        }
    }

    /// The token for the attempt under way, or why there is none.
    pub(crate) fn handle_token(&mut self, now: Instant, token: Result<String, Error>) {
        if !matches!(self.phase, Phase::Token { .. }) {
            return;
        }
        match token {
            Ok(t) => {
                self.token = Some(t);
                self.phase = Phase::Opening {
                    deadline: now + self.cfg.connect_timeout,
                };
                self.actions.push_back(Action::Open);
            }
            Err(e) => self.attempt_failed(now, e),
        }
    }

    /// The socket is open: authenticate.
    pub(crate) fn handle_opened(&mut self, now: Instant) {
        if !matches!(self.phase, Phase::Opening { .. }) {
            self.actions.push_back(Action::DropSocket);
            return;
        }
        let token = self.token.take().unwrap_or_default();
        let id = self.next_id();
        let params = AuthParams {
            token: &token,
            instance: self.cfg.instance.as_deref(),
            agent: Some(&self.cfg.agent),
        };
        match encode_request(id, Auth::NAME, &params) {
            Ok(frame) => {
                self.transmit
                    .push_back((Transmit::Frame(frame.into()), false));
                self.phase = Phase::Authenticating {
                    auth_id: id,
                    deadline: now + self.cfg.call_timeout,
                };
            }
            Err(e) => {
                self.actions.push_back(Action::DropSocket);
                self.end(
                    now,
                    Outcome::Stop {
                        code: None,
                        error: Error::encode(e),
                    },
                    End::Now,
                );
            }
        }
    }

    /// Opening the socket failed; `fatal` when retrying cannot help (an
    /// invalid URL).
    pub(crate) fn handle_open_failed(&mut self, now: Instant, error: Error, fatal: bool) {
        if !matches!(self.phase, Phase::Opening { .. }) {
            return;
        }
        if fatal {
            self.finish(now, None, error);
        } else {
            self.attempt_failed(now, error);
        }
    }

    /// A message from the socket.
    pub(crate) fn handle_inbound(&mut self, now: Instant, msg: Inbound) {
        if let Phase::Connected { last_heard, .. } = &mut self.phase {
            *last_heard = now;
        }
        match msg {
            Inbound::Binary(bytes) => self.on_binary(now, bytes),
            Inbound::Close(code) => self.on_close(now, code.map(CloseStatus::from)),
            Inbound::Other => {}
        }
    }

    /// The socket ended (EOF or an error) without a Close frame, or after
    /// the closing handshake.
    pub(crate) fn handle_socket_ended(&mut self, now: Instant, cause: Option<Cause>) {
        match &self.phase {
            Phase::Ending { .. } => {
                if let Phase::Ending { then, .. } =
                    std::mem::replace(&mut self.phase, Phase::Closed)
                {
                    self.after(now, then);
                }
            }
            Phase::Authenticating { .. } => self.end(
                now,
                Outcome::Retry(Error::connect("the connection ended during auth", cause)),
                End::Gone,
            ),
            Phase::Connected { .. } => {
                debug!("the connection to the hub ended");
                self.end(now, Outcome::Retry(Error::ConnectionLost), End::Gone);
            }
            _ => {}
        }
    }

    /// The token for an in-band refresh.
    pub(crate) fn handle_refresh_token(&mut self, now: Instant, token: Result<String, Error>) {
        let _ = now;
        if !matches!(self.refresh, Refresh::Fetching { .. }) {
            return;
        }
        match token {
            Ok(token) if self.sendable() => {
                self.refresh = Refresh::Sent;
                self.request(
                    AuthRefresh::NAME,
                    &AuthRefreshParams { token: &token },
                    Pending::Background(AuthRefresh::NAME),
                );
            }
            Ok(_) => self.refresh = Refresh::Idle,
            Err(e) => {
                debug!(error = %e.report(), "token provider failed during refresh");
                self.refresh = Refresh::Idle;
            }
        }
    }

    /// An output of the served request `serial`.
    pub(crate) fn handle_served(&mut self, serial: u64, output: Output) {
        let Some((id, seq)) = self.served.route(serial, &output) else {
            return;
        };
        let frame = match output {
            Output::Chunk { data, fin } => encode_chunk(id, seq, fin, &data),
            Output::Done(Ok(v)) => plexus_protocol::frame::encode_result(id, &v),
            Output::Done(Err(e)) => Ok(encode_error(id, &e)),
        };
        let frame = match frame {
            Ok(f)
                if self.limits.max_frame_size == 0
                    || f.len() as u64 <= self.limits.max_frame_size =>
            {
                f
            }
            Ok(_) => {
                // Never send a frame larger than the hub accepts: the
                // request ends with an error instead (chunks sent before
                // it stand, as §7.2 allows).
                self.served.end(serial);
                encode_error(
                    id,
                    &WireError::new(
                        ErrorCode::PayloadTooLarge,
                        "the answer exceeds the hub's max_frame_size",
                    ),
                )
            }
            Err(_) => {
                self.served.end(serial);
                encode_error(
                    id,
                    &WireError::new(ErrorCode::Internal, "the answer could not be encoded"),
                )
            }
        };
        self.transmit
            .push_back((Transmit::Frame(frame.into()), true));
        self.queued_replies += 1;
    }

    /// A deadline may have passed.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if let Refresh::Fetching { deadline } = self.refresh
            && deadline <= now
        {
            debug!("token provider timed out during refresh");
            self.refresh = Refresh::Idle;
            self.actions.push_back(Action::AbandonRefresh);
        }
        match &self.phase {
            Phase::Token { deadline } if *deadline <= now => {
                self.actions.push_back(Action::AbandonAttempt);
                self.attempt_failed(now, Error::provider("timed out", None));
            }
            Phase::Opening { deadline } if *deadline <= now => {
                self.actions.push_back(Action::AbandonAttempt);
                self.attempt_failed(now, Error::connect("timed out", None));
            }
            Phase::Authenticating { deadline, .. } if *deadline <= now => {
                self.actions.push_back(Action::DropSocket);
                self.end(
                    now,
                    Outcome::Retry(Error::connect(
                        "no answer to auth within the call timeout",
                        None,
                    )),
                    End::Now,
                );
            }
            Phase::Connected { last_heard, .. } if *last_heard + self.liveness() <= now => {
                debug!("the hub went silent; reconnecting");
                self.actions.push_back(Action::DropSocket);
                self.end(now, Outcome::Retry(Error::ConnectionLost), End::Now);
            }
            Phase::Ending { deadline, .. } if *deadline <= now => {
                self.actions.push_back(Action::DropSocket);
                if let Phase::Ending { then, .. } =
                    std::mem::replace(&mut self.phase, Phase::Closed)
                {
                    self.after(now, then);
                }
            }
            Phase::Backoff { until } if *until <= now => self.start_attempt(now),
            _ => {}
        }
    }

    /// The application closes the client (or dropped every handle).
    pub(crate) fn close(&mut self, now: Instant) {
        let stop = Outcome::Stop {
            code: None,
            error: Error::Closed(None),
        };
        match &mut self.phase {
            Phase::Closed => {}
            Phase::Token { .. } | Phase::Opening { .. } => {
                self.actions.push_back(Action::AbandonAttempt);
                self.phase = Phase::Closed;
                self.finish(now, None, Error::Closed(None));
            }
            Phase::Backoff { .. } => {
                self.phase = Phase::Closed;
                self.finish(now, None, Error::Closed(None));
            }
            Phase::Authenticating { .. } | Phase::Connected { .. } => {
                self.end(now, stop, End::Close);
            }
            Phase::Ending { then, .. } => {
                if matches!(then, Outcome::Retry(_)) {
                    *then = stop;
                }
            }
        }
    }

    // ---- frames ----

    fn on_binary(&mut self, now: Instant, bytes: Bytes) {
        if matches!(self.phase, Phase::Ending { .. } | Phase::Closed) {
            return;
        }
        let limits = DecodeLimits {
            max_frame_size: self.cfg.max_frame_size,
            ..DecodeLimits::default()
        };
        let frame = match Frame::decode(bytes, &limits) {
            Ok(f) => f,
            Err(e) => {
                debug!(error = %e, "undecodable frame from the hub, ignored");
                return;
            }
        };
        match frame {
            Frame::Response(r) => self.on_response(now, r),
            Frame::Chunk(c) => self.on_chunk(c),
            Frame::Notification(n) => match Method::from_name(&n.method) {
                Some(Method::Event) => self.subs.event(&n.params),
                Some(Method::PresenceJoin) => self.subs.presence(true, &n.params),
                Some(Method::PresenceLeave) => self.subs.presence(false, &n.params),
                Some(Method::Closing) => {
                    if let Ok(p) = n.params.decode::<ClosingParams>() {
                        self.retry_hint = p.retry_after_ms.map(Duration::from_millis);
                    }
                    // §12.6: send nothing more; what waits is sent on the
                    // next connection.
                    self.closing_seen = true;
                }
                Some(Method::TokenExpiring) => self.start_refresh(now),
                Some(Method::Cancel) => {
                    if let Ok(p) = n.params.decode::<CancelParams>() {
                        self.on_server_cancel(p.id);
                    }
                }
                // Unknown notifications are ignored, as the spec requires.
                _ => {}
            },
            Frame::Request(r) => self.on_server_request(r),
        }
    }

    /// `token.expiring`: fetch a fresh token and send `auth.refresh`, one
    /// refresh at a time.
    fn start_refresh(&mut self, now: Instant) {
        if matches!(self.refresh, Refresh::Idle) && self.sendable() {
            self.refresh = Refresh::Fetching {
                deadline: now + self.cfg.connect_timeout,
            };
            self.actions.push_back(Action::FetchRefreshToken);
        }
    }

    fn on_response(&mut self, now: Instant, r: Response) {
        if let Phase::Authenticating { auth_id, .. } = self.phase
            && r.id == auth_id
        {
            return self.on_auth_answer(now, r.outcome);
        }
        let Some(pending) = self.requests.complete(r.id) else {
            // Responses for unknown ids are ignored.
            return;
        };
        match pending {
            Pending::Call(reply) => reply.send(r.outcome.map_err(Error::Remote)),
            Pending::PresenceSet { info, reply } => {
                if r.outcome.is_ok() {
                    // Remembered so a reconnect restores it; null clears it.
                    self.presence_info = (!info.is_null()).then_some(info);
                }
                reply.send(r.outcome.map_err(Error::Remote));
            }
            Pending::Stream { queue, .. } => match r.outcome {
                Ok(v) if v.is_null() => queue.finish(None),
                Ok(v) => match queue.push(v) {
                    Push::Full => queue.finish(Some(Error::BrokenStream(
                        "the consumer fell a whole buffer behind",
                    ))),
                    Push::Queued | Push::Gone => queue.finish(None),
                },
                Err(e) => queue.finish(Some(Error::Remote(e))),
            },
            Pending::Subscribe(pattern) => {
                if let Some(pattern) = self.subs.answered(pattern, r.outcome) {
                    self.unsubscribe(pattern);
                }
            }
            Pending::Background(method) => {
                if method == AuthRefresh::NAME {
                    self.refresh = Refresh::Idle;
                }
                if let Err(e) = r.outcome {
                    debug!(method, error = %e, "background request failed");
                }
            }
            Pending::Abandoned => {}
        }
        self.release();
    }

    fn on_chunk(&mut self, c: plexus_protocol::Chunk) {
        let Some(pending) = self.requests.get_mut(c.id) else {
            // Chunks for unknown ids are ignored (§7.4).
            return;
        };
        let broken = match &mut *pending {
            Pending::Stream { queue, next_seq } => {
                if c.seq != *next_seq {
                    queue.finish(Some(Error::BrokenStream("chunk sequence gap")));
                    true
                } else {
                    match queue.push(c.data) {
                        Push::Queued => {
                            *next_seq += 1;
                            if c.fin {
                                queue.finish(None);
                            }
                            false
                        }
                        Push::Full => {
                            queue.finish(Some(Error::BrokenStream(
                                "the consumer fell a whole buffer behind",
                            )));
                            true
                        }
                        // The consumer dropped the stream.
                        Push::Gone => true,
                    }
                }
            }
            Pending::Abandoned => false,
            // Chunks for a request that does not stream are ignored.
            _ => return,
        };
        if c.fin {
            self.requests.complete(c.id);
            self.release();
        } else if broken {
            // Keep the id until the hub's terminal frame; tell it to stop.
            *pending = Pending::Abandoned;
            self.notify(Cancel::NAME, &CancelParams { id: c.id }, false);
        }
    }

    fn on_auth_answer(&mut self, now: Instant, outcome: Result<RawValue, WireError>) {
        let outcome = outcome.map(|v| v.decode::<AuthResult>());
        match outcome {
            Ok(Ok(result)) => self.on_authenticated(now, result.limits),
            Ok(Err(e)) => {
                self.actions.push_back(Action::DropSocket);
                self.end(
                    now,
                    Outcome::Stop {
                        code: None,
                        error: Error::decode("decode the auth result", e),
                    },
                    End::Now,
                );
            }
            Err(e) if e.code == ErrorCode::Unauthenticated => {
                self.actions.push_back(Action::DropSocket);
                self.end(
                    now,
                    Outcome::Stop {
                        code: Some(CloseCode::AuthFailed.into()),
                        error: Error::Auth(e.message),
                    },
                    End::Now,
                );
            }
            Err(e) => {
                self.actions.push_back(Action::DropSocket);
                self.end(
                    now,
                    Outcome::Retry(Error::connect(
                        "the hub answered auth with an error",
                        Some(Arc::new(e)),
                    )),
                    End::Now,
                );
            }
        }
    }

    fn on_authenticated(&mut self, now: Instant, limits: ServerLimits) {
        self.limits = limits;
        self.requests.set_window(&limits);
        self.phase = Phase::Connected { last_heard: now };
        self.connected_since = Some(now);
        self.closing_seen = false;
        self.actions
            .push_back(Action::State(ConnectionState::Connected));
        if std::mem::take(&mut self.first) {
            self.actions.push_back(Action::FirstConnected);
        }
        // Renew every subscription, restore the presence info, then send
        // what waited for the connection.
        for (pattern, presence) in self.subs.renewals() {
            self.subscribe(pattern, presence);
        }
        if let Some(info) = self.presence_info.clone() {
            self.enqueue(
                PresenceSet::NAME,
                &PresenceSetParams {
                    info: info.as_raw_ref(),
                },
                Pending::Background(PresenceSet::NAME),
            );
        }
        self.release();
    }

    fn on_close(&mut self, now: Instant, code: Option<CloseStatus>) {
        let during_auth = match self.phase {
            Phase::Authenticating { .. } => true,
            Phase::Connected { .. } => false,
            _ => return,
        };
        let outcome = match policy::after_close(code) {
            policy::Reaction::Reconnect if during_auth => Outcome::Retry(Error::connect(
                match code {
                    Some(c) => format!("the hub closed the connection during auth with {c}"),
                    None => "the hub closed the connection during auth".to_owned(),
                },
                None,
            )),
            policy::Reaction::Reconnect => Outcome::Retry(Error::ConnectionLost),
            policy::Reaction::StopAuth => Outcome::Stop {
                code,
                error: Error::Auth("the hub rejected the token".into()),
            },
            policy::Reaction::Stop(c) => Outcome::Stop {
                code,
                error: Error::Closed(Some(c)),
            },
        };
        self.end(now, outcome, End::Linger(CLOSE_REPLY_WAIT));
    }

    fn on_server_request(&mut self, r: Request) {
        if !matches!(self.phase, Phase::Connected { .. }) {
            return;
        }
        match self.served.admit(r.id, &r.method) {
            Admit::NotServed => self.reply_error(
                r.id,
                WireError::new(
                    ErrorCode::MethodNotFound,
                    "this client does not serve the method",
                ),
            ),
            Admit::Busy => self.reply_error(
                r.id,
                WireError::new(
                    ErrorCode::TooManyRequests,
                    "too many requests running on this client",
                ),
            ),
            Admit::Duplicate => debug!(id = r.id, "the hub reused a request id in flight"),
            Admit::Run { serial, handler } => self.actions.push_back(Action::Spawn {
                serial,
                handler,
                params: r.params,
            }),
        }
    }

    fn on_server_cancel(&mut self, id: u64) {
        if let Some(serial) = self.served.cancel(id) {
            self.actions.push_back(Action::Abort(serial));
            // Exactly one terminal frame per request (§8).
            self.reply_error(
                id,
                WireError::new(ErrorCode::Cancelled, "cancelled by the hub"),
            );
        }
    }

    // ---- sending ----

    /// Connected and not told that the connection is closing.
    fn sendable(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. }) && !self.closing_seen
    }

    /// Sends a request that fits the window, unless it breaks an announced
    /// limit (then it fails at once: the hub would close the connection).
    fn send_now(&mut self, held: Held) {
        if let Err(e) = self.check_limits(&held.frame) {
            return held.pending.fail(e);
        }
        self.requests.start(held.id, held.frame.len(), held.pending);
        self.transmit
            .push_back((Transmit::Frame(held.frame), false));
    }

    /// Sends what waits, as far as the window allows.
    fn release(&mut self) {
        if !self.sendable() {
            return;
        }
        while let Some(held) = self.requests.next_to_send() {
            self.send_now(held);
        }
    }

    fn check_limits(&self, frame: &[u8]) -> Result<(), Error> {
        let max = self.limits.max_frame_size;
        if max > 0 && frame.len() as u64 > max {
            return Err(Error::ExceedsLimit {
                limit: "max_frame_size",
                max,
            });
        }
        let depth = match self.limits.max_depth {
            0 => DEFAULT_MAX_DEPTH,
            d => d,
        };
        let limits = DecodeLimits {
            max_frame_size: frame.len(),
            max_depth: u16::try_from(depth).unwrap_or(u16::MAX),
        };
        match plexus_protocol::item_len(frame, &limits) {
            Err(DecodeError::TooDeep { .. }) => Err(Error::ExceedsLimit {
                limit: "max_depth",
                max: depth,
            }),
            _ => Ok(()),
        }
    }

    /// Sends one of the SDK's own requests (before any queued application
    /// request) as soon as the window allows.
    fn request<P: Encode<()>>(&mut self, method: &'static str, params: &P, pending: Pending) {
        self.enqueue(method, params, pending);
        self.release();
    }

    /// Queues one of the SDK's own requests; [`release`](Self::release)
    /// sends it.
    fn enqueue<P: Encode<()>>(&mut self, method: &'static str, params: &P, pending: Pending) {
        let id = self.next_id();
        match encode_request(id, method, params) {
            Ok(frame) => self.requests.queue_internal(Held {
                id,
                frame: frame.into(),
                pending,
            }),
            Err(e) => debug!(method, error = %e, "could not encode a background request"),
        }
    }

    /// Queues a `subscribe`; [`release`](Self::release) sends it.
    fn subscribe(&mut self, pattern: String, presence: bool) {
        let mut params = SubscribeParams::new(&pattern);
        if presence {
            params = params.with_presence(true);
        }
        let pending = Pending::Subscribe(pattern.clone());
        self.enqueue(Subscribe::NAME, &params, pending);
    }

    fn unsubscribe(&mut self, pattern: String) {
        self.request(
            Unsubscribe::NAME,
            &UnsubscribeParams { topic: &pattern },
            Pending::Background(Unsubscribe::NAME),
        );
    }

    fn notify<P: Encode<()>>(&mut self, method: &'static str, params: &P, reply: bool) {
        if let Ok(frame) = encode_notification(method, params) {
            self.transmit
                .push_back((Transmit::Frame(frame.into()), reply));
            if reply {
                self.queued_replies += 1;
            }
        }
    }

    fn reply_error(&mut self, id: u64, error: WireError) {
        self.transmit
            .push_back((Transmit::Frame(encode_error(id, &error).into()), true));
        self.queued_replies += 1;
    }

    // ---- lifecycle ----

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    fn liveness(&self) -> Duration {
        self.cfg.liveness.unwrap_or_else(|| {
            Duration::from_millis(self.limits.ping_interval_ms.max(1_000)) * 2
                + Duration::from_secs(5)
        })
    }

    fn start_attempt(&mut self, now: Instant) {
        self.phase = Phase::Token {
            deadline: now + self.cfg.connect_timeout,
        };
        self.actions.push_back(Action::FetchToken);
    }

    /// An attempt failed before the socket was up.
    fn attempt_failed(&mut self, now: Instant, error: Error) {
        self.token = None;
        self.phase = Phase::Closed;
        self.after(now, Outcome::Retry(error));
    }

    /// Ends the connection: everything in flight fails, and `then` happens
    /// now or after the socket's end.
    fn end(&mut self, now: Instant, then: Outcome, how: End) {
        for pending in self.requests.connection_lost() {
            pending.fail(Error::ConnectionLost);
        }
        if self.served.running() > 0 {
            self.actions.push_back(Action::AbortAllServed);
        }
        self.served.connection_lost();
        self.subs.connection_lost();
        if !matches!(self.refresh, Refresh::Idle) {
            self.actions.push_back(Action::AbandonRefresh);
            self.refresh = Refresh::Idle;
        }
        self.transmit.clear();
        self.queued_replies = 0;
        self.closing_seen = false;
        match how {
            End::Now | End::Gone => {
                self.phase = Phase::Closed;
                self.after(now, then);
            }
            End::Linger(wait) => {
                self.phase = Phase::Ending {
                    deadline: now + wait,
                    then,
                };
            }
            End::Close => {
                self.transmit.push_back((Transmit::Close, false));
                self.phase = Phase::Ending {
                    deadline: now + CLOSE_LINGER,
                    then,
                };
            }
        }
    }

    /// After a connection or an attempt ended: reconnect or stop.
    fn after(&mut self, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Retry(error) if self.first => self.finish(now, None, error),
            Outcome::Retry(_) => {
                self.attempt = match self.connected_since.take() {
                    // A connection that lasted is a fresh start; one that
                    // failed at once keeps backing off.
                    Some(since) if now.saturating_duration_since(since) >= STABLE_SESSION => 1,
                    _ => self.attempt.saturating_add(1),
                };
                let unit = (self.jitter)();
                let delay = self.cfg.backoff.delay_at(
                    self.attempt.saturating_sub(1),
                    self.retry_hint.take(),
                    unit,
                );
                self.phase = Phase::Backoff { until: now + delay };
                self.actions
                    .push_back(Action::State(ConnectionState::Reconnecting {
                        attempt: self.attempt,
                        next_in: delay,
                    }));
            }
            Outcome::Stop { code, error } => self.finish(now, code, error),
        }
    }

    /// Closed for good: everything waiting learns why.
    fn finish(&mut self, now: Instant, code: Option<CloseStatus>, error: Error) {
        if !matches!(
            self.phase,
            Phase::Closed | Phase::Token { .. } | Phase::Opening { .. } | Phase::Backoff { .. }
        ) {
            // Still connected: end the connection first.
            return self.end(now, Outcome::Stop { code, error }, End::Now);
        }
        self.phase = Phase::Closed;
        self.final_code = code;
        for held in self.requests.drain_queued() {
            held.pending.fail(error.clone());
        }
        self.subs.finish(&error);
        self.actions
            .push_back(Action::State(ConnectionState::Closed {
                code,
                reason: error.report(),
            }));
        self.actions.push_back(Action::Finished(error));
    }
}

/// How [`Core::end`] lets the socket go.
enum End {
    /// The task drops it now (the action was already pushed).
    Now,
    /// It is already gone.
    Gone,
    /// Keep reading until its end, at most this long (after the hub's
    /// Close frame, whose reply the WebSocket layer sends).
    Linger(Duration),
    /// Send the client's Close frame, then linger for [`CLOSE_LINGER`].
    Close,
}
