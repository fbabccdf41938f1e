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
//! Here: the types, the outputs and the inputs. `inbound` handles frames
//! from the hub, `outbound` the window, queues and limits of what goes
//! out, `lifecycle` attempts, ends, backoff and closing for good; the
//! state it keeps is in `requests`, `subs`, `served` and `rpc` (routed
//! procedures registered here and their invocations), the close-code rule
//! in `policy`.
//!
//! A connection goes through these phases:
//!
//! ```text
//! Token ─► Opening ─► Authenticating ─► Connected ─► Ending ─┬─► Backoff ─► Token …
//!   └────────┴────────────┴─── failed attempt ─────────────┤
//!                                                           └─► Closed
//! ```

mod durable;
mod inbound;
mod lifecycle;
mod outbound;
mod policy;
mod requests;
mod rpc;
mod served;
mod subs;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_protocol::frame::{encode_chunk, encode_error, encode_request};
use plexus_protocol::methods::{
    Auth, AuthParams, AuthRefresh, AuthRefreshParams, Cancel, CancelParams, ServerLimits,
};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{ErrorCode, NotificationMethod, RawValue, RpcMethod, WireError};
use tracing::debug;

use crate::backoff::Backoff;
use crate::deliver::{ChunkQueue, Credit, Dropped, ReplyTx};
use crate::durable::{DurableQueue, PublishAck, PublishOptions, StreamPosition};
use crate::error::{Cause, Error};
use crate::state::{CloseStatus, ConnectionState};
use crate::subscription::SubQueue;

use durable::{AfterDrop, Durables};
use lifecycle::End;
pub(crate) use requests::Pending;
use requests::{Held, QueueFull, Requests};
pub(crate) use rpc::RegSpec;
use rpc::Rpc;
use served::Served;
pub(crate) use served::{Handler, Output, RpcHandler};
use subs::Subs;

/// A session that lasted this long resets the backoff to its first step.
pub(crate) const STABLE_SESSION: Duration = Duration::from_secs(10);

/// After the client sent its Close frame, how long it waits for the hub's
/// reply before dropping the socket.
pub(crate) const CLOSE_LINGER: Duration = Duration::from_secs(2);

/// After the hub's Close frame, how long the client keeps the socket to
/// send its reply and read to the end.
pub(crate) const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// After a `closing` notification, how long the client waits for the
/// hub's Close frame before it drops the connection itself.
pub(crate) const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// Most answers to the hub's requests (responses, chunks, refusals) queued
/// for writing. At this bound the client stops reading until the socket
/// drains, so a hub that sends requests without reading the answers
/// cannot grow the client's memory.
pub(crate) const MAX_QUEUED_REPLIES: usize = 1024;

/// The nesting depth assumed when the hub does not announce `max_depth`.
pub(crate) const DEFAULT_MAX_DEPTH: u64 = plexus_protocol::limits::DEFAULT_MAX_DEPTH as u64;

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
    /// The producer id of durable publishes.
    pub(crate) producer: Arc<str>,
    /// The sequence number of the first durable publish.
    pub(crate) first_seq: u64,
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
    /// A new durable subscription.
    DurableSubscribe {
        /// Its local id (from the same counter as plain subscriptions).
        local: u64,
        /// The topic or pattern, already validated.
        pattern: Pattern,
        /// Start after this position (`None`: now).
        after: Option<StreamPosition>,
        /// Its buffer.
        queue: Arc<DurableQueue>,
        /// Answered once the hub accepted it (its answer, or the first
        /// chunk of a resume), or refused it.
        reply: durable::SubscribeReply,
    },
    /// A durable publish: the core gives it the next producer sequence
    /// number and encodes it.
    DurablePublish {
        /// Its request id, from the shared counter.
        id: u64,
        /// The topic.
        topic: String,
        /// The payload: one encoded item.
        data: RawValue,
        /// Key, condition, echo.
        options: PublishOptions,
        /// The caller.
        reply: ReplyTx<Result<PublishAck, Error>>,
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
    /// Register a routed procedure (and again after every reconnect).
    Register {
        /// Its local id (from the counter of subscriptions).
        local: u64,
        /// What `rpc.register` is sent with.
        spec: RegSpec,
        /// Its handler.
        handler: RpcHandler,
        /// Its hub id on the current connection, for the handle.
        status: tokio::sync::watch::Sender<Option<u64>>,
        /// Answered once the hub registered (or refused) it the first time.
        reply: ReplyTx<Result<(), Error>>,
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
    /// Run an invocation of a routed procedure; feed its outputs to
    /// [`Core::handle_served`].
    Invoke {
        /// The request's local serial.
        serial: u64,
        /// Its handler.
        handler: RpcHandler,
        /// What the handler gets.
        invocation: crate::rpc::Invocation,
        /// Its credit, which the core grows on `rpc.credit`.
        credit: Arc<Credit>,
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
    /// The hub sent `closing`: nothing more is sent on this connection,
    /// and it is dropped if the hub has not closed it by this deadline.
    closing: Option<Instant>,
    limits: ServerLimits,
    requests: Requests,
    subs: Subs,
    durable: Durables,
    /// When to send again the resumes refused with a retryable error.
    durable_retry: Option<Instant>,
    served: Served,
    /// Routed procedures registered here, and their invocations.
    rpc: Rpc,
    /// Paced chunk queues (routed calls' progressive results) that were
    /// full when last pushed to: the socket is not read while one is.
    paced_full: Vec<Arc<ChunkQueue>>,
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
            rpc: Rpc::default(),
            paced_full: Vec::new(),
            durable: Durables::new(cfg.producer.clone(), cfg.first_seq),
            durable_retry: None,
            cfg,
            ids,
            jitter,
            phase: Phase::Closed,
            first: true,
            attempt: 0,
            connected_since: None,
            token: None,
            retry_hint: None,
            closing: None,
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
            Phase::Connected { last_heard } => {
                let silent = *last_heard + self.liveness();
                Some(self.closing.map_or(silent, |c| c.min(silent)))
            }
            Phase::Closed => None,
        };
        let refresh = match self.refresh {
            Refresh::Fetching { deadline } => Some(deadline),
            _ => None,
        };
        let refresh = match (refresh, self.durable_retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let refresh = match (refresh, self.rpc.retry_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
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
            && !self.durable.any_full()
            && !self.paced_full.iter().any(|q| q.is_full())
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
        self.queued_replies < MAX_QUEUED_REPLIES
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
                if self.durable.holds(pattern.as_str()) {
                    reply.send(Err(held_durable()));
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
            Command::DurableSubscribe {
                local,
                pattern,
                after,
                queue,
                reply,
            } => {
                if self.is_closed() {
                    reply.send(Err(Error::Closed(
                        self.final_code.and_then(CloseStatus::known),
                    )));
                    return;
                }
                if self.durable.holds(pattern.as_str()) || self.subs.holds(pattern.as_str()) {
                    reply.send(Err(held_durable()));
                    return;
                }
                self.durable.add(local, pattern, after, queue, reply);
                if self.sendable() {
                    self.renew_durables();
                    self.release();
                }
            }
            Command::DurablePublish {
                id,
                topic,
                data,
                options,
                reply,
            } => {
                if self.is_closed() {
                    reply.send(Err(Error::Closed(
                        self.final_code.and_then(CloseStatus::known),
                    )));
                    return;
                }
                let seq = self.durable.take_seq();
                let frame = match durable_publish_frame(
                    id,
                    &topic,
                    &data,
                    &options,
                    self.durable.producer(),
                    seq,
                ) {
                    Ok(f) => f,
                    Err(e) => return reply.send(Err(e)),
                };
                let pending = Pending::Publish {
                    seq,
                    frame: frame.clone(),
                    reply,
                };
                self.handle_command(now, Command::Call { id, frame, pending });
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
            Command::Register {
                local,
                spec,
                handler,
                status,
                reply,
            } => {
                if self.is_closed() {
                    reply.send(Err(Error::Closed(
                        self.final_code.and_then(CloseStatus::known),
                    )));
                    return;
                }
                self.rpc.add(local, spec, handler, status, reply);
                if self.sendable() {
                    self.renew_registrations();
                    self.release();
                }
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
                if let Some(after) = self.durable.dropped(local) {
                    if self.sendable() {
                        match after {
                            AfterDrop::Nothing => {}
                            AfterDrop::Unsubscribe(p) => self.unsubscribe(p),
                            AfterDrop::Cancel(id) => {
                                self.notify(Cancel::NAME, &CancelParams { id }, false);
                            }
                        }
                    }
                    return;
                }
                if let Some(pattern) = self.subs.remove(local)
                    && self.sendable()
                {
                    self.unsubscribe(pattern);
                }
            }
            Dropped::Registration(local) => {
                if let Some(id) = self.rpc.dropped(local)
                    && self.sendable()
                {
                    self.unregister(id);
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
        if self.rpc.has_invocations() && !self.served.is_running(serial) {
            self.rpc.finished(serial);
        }
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
                self.rpc.finished(serial);
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
                self.rpc.finished(serial);
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
        if let Some(at) = self.durable_retry
            && at <= now
        {
            self.durable_retry = None;
            if self.sendable() {
                self.renew_durables();
                self.release();
            }
        }
        if let Some(at) = self.rpc.retry_at
            && at <= now
        {
            self.rpc.retry_at = None;
            self.rpc.retry_refused();
            if self.sendable() {
                self.renew_registrations();
                self.release();
            }
        }
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
            Phase::Connected { last_heard }
                if *last_heard + self.liveness() <= now
                    || self.closing.is_some_and(|c| c <= now) =>
            {
                debug!("the hub went silent or did not close after `closing`; reconnecting");
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
}

/// The refusal of a second subscription to a pattern when one of them is
/// durable (each durable subscription has its own on the hub).
fn held_durable() -> Error {
    Error::Remote(WireError::new(
        ErrorCode::Conflict,
        "already subscribed to this topic (durable and plain subscriptions cannot share one)",
    ))
}

/// The frame of a durable publish with producer sequence number `seq`.
fn durable_publish_frame(
    id: u64,
    topic: &str,
    data: &RawValue,
    options: &PublishOptions,
    producer: &str,
    seq: u64,
) -> Result<Bytes, Error> {
    use plexus_protocol::methods::{Publish, PublishParams};
    let mut p = PublishParams::new(topic, data.as_raw_ref()).with_producer(producer, seq);
    if let Some(k) = &options.key {
        p = p.with_key(k);
    }
    if let Some(o) = options.expected_offset {
        p = p.with_expected_offset(o);
    }
    if let Some(e) = options.echo {
        p = p.with_echo(e);
    }
    encode_request(id, Publish::NAME, &p)
        .map(Bytes::from)
        .map_err(Error::encode)
}
