//! The session core: every rule of one connection's session as a
//! deterministic state machine, in the shape of quinn-proto's
//! `Connection`.
//!
//! No tokio, no socket, no `Hub`, no clock reads: the caller passes `now`
//! (and the wall clock where a token's `exp` is involved) into every
//! `handle_*` method, asks [`Core::next_timeout`] when to call
//! [`Core::handle_timeout`], and drains [`Core::poll_output`]. The driver
//! (`session::driver`) is thin glue around it; the unit tests in
//! `core/tests.rs` drive it with a virtual clock.
//!
//! What the core decides:
//!
//! - the order of request checks (decision P1): duplicate in-flight id
//!   (close 4005), rate bucket (`rate_limited`, strikes → 4007),
//!   unauthenticated, `auth` twice (`conflict`), unknown method, in-flight
//!   limits (`too_many_requests`, P2/P3), then params;
//! - the auth state machine: `auth` is verified without blocking the
//!   driver, no frame is read meanwhile (P12), the auth deadline holds
//!   throughout (item 10); `auth.refresh` is verified while the session
//!   goes on (P21);
//! - token expiry at E = `exp` + leeway, `token.expiring` at
//!   min(lead, L/4) before E, every `expires_in_ms` counted to E (P5, P6);
//! - keepalive: a ping every interval, 4010 only once the input that
//!   arrived before the pong deadline has been read (P19);
//! - server-initiated requests in their own id space (P20);
//! - the close: one decision, `closing` first iff the code is announced,
//!   frames after it ignored, a bounded linger (P11).
//!
//! | module | what it holds |
//! |---|---|
//! | `config` | [`CoreConfig`], the rules' parameters |
//! | `io` | [`Output`], [`Dispatch`], [`Completion`], [`LinkFault`]: what goes in and out |
//! | `auth` | `auth` and `auth.refresh`, token times |
//! | `tests` | the virtual-clock unit tests |

use std::borrow::Cow;
use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_protocol::frame::{
    encode_chunk, encode_error, encode_notification, encode_request, encode_result,
};
use plexus_protocol::methods::{CancelParams, ClosingParams, TokenExpiringParams};
use plexus_protocol::{
    CloseCode, Encoded, Frame, Method, NotificationMethod, RawValue, Request, WireError,
    duration_ms,
};

use super::error::{RequestError, params};
use super::ratelimit::TokenBucket;
use super::table::Kind;
use crate::auth::Principal;
use crate::hub::RegisterError;
use crate::idmap::IdMap;

mod auth;
mod config;
mod io;
#[cfg(test)]
mod tests;

use auth::TokenTimes;
pub use config::{
    CLOSE_WRITE_TIMEOUT, CoreConfig, LINGER_BYTES, MAX_SERVER_REQUESTS, SLOW_CLOSE_WRITE_TIMEOUT,
    TOO_MANY_CONNECTIONS_RETRY_MS,
};
pub use io::{ClientAnswer, Completion, Dispatch, Label, LinkFault, Output};

/// What an in-flight request is waiting for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Work {
    /// Its handler (async or streamed).
    Handler(Kind),
    /// Verification of `auth`.
    Auth,
    /// Verification of `auth.refresh`.
    Refresh,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    bytes: usize,
    work: Work,
    /// Its deadline, if the driver set one ([`Core::set_deadline`]).
    deadline: Option<Instant>,
}

/// A request of the server's in flight on the client (P20).
#[derive(Debug, Clone, Copy)]
struct ServerRequest {
    deadline: Instant,
    /// Its result may stream: non-final chunks are passed on
    /// ([`Output::ClientChunk`]) and their `seq` checked (§7.1).
    streams: bool,
    /// The `seq` the next chunk must have.
    next_seq: u64,
}

/// The `auth` being verified and registered.
#[derive(Debug)]
struct PendingAuth {
    id: u64,
    instance: Option<String>,
    /// Set once verified, while the driver registers the connection.
    accepted: Option<(Principal, Option<TokenTimes>)>,
}

#[derive(Debug)]
enum Phase {
    /// No successful `auth` yet.
    AwaitingAuth,
    /// An `auth` is being verified (or registered): no frame is read.
    Verifying(Box<PendingAuth>),
    /// Authenticated.
    Authenticated,
    /// A close was decided; `sent` once the Close frame is written.
    Closing { sent: bool },
    /// Nothing more to do: drop the transport.
    Finished,
}

/// The state of one connection's session.
#[derive(Debug)]
pub struct Core {
    cfg: Arc<CoreConfig>,
    session: Arc<str>,
    phase: Phase,
    principal: Option<Principal>,
    auth_deadline: Option<Instant>,
    expires_at: Option<Instant>,
    expiring_at: Option<Instant>,
    next_ping: Instant,
    pong_due: Option<Instant>,
    /// The pong deadline passed while the transport had a backlog.
    pong_overdue: bool,
    close_deadline: Option<Instant>,
    bucket: TokenBucket,
    strikes: u32,
    inflight: IdMap<InFlight>,
    inflight_bytes: usize,
    /// The id of the `auth.refresh` being verified.
    refreshing: Option<u64>,
    /// The synchronous request being run (between dispatch and reply).
    running: Option<u64>,
    server_requests: IdMap<ServerRequest>,
    /// The server requests' deadlines, earliest first.
    server_deadlines: BTreeSet<(Instant, u64)>,
    /// Deadlines of requests in flight ([`Core::set_deadline`]).
    deadlines: BTreeSet<(Instant, u64)>,
    next_server_id: u64,
    discarded: usize,
    out: VecDeque<Output>,
}

impl Core {
    /// A new session for connection `session`, started at `now`.
    pub fn new(cfg: Arc<CoreConfig>, session: Arc<str>, now: Instant) -> Core {
        Core {
            bucket: TokenBucket::new(cfg.rate_per_sec, cfg.rate_burst, now),
            auth_deadline: Some(now + cfg.auth_timeout),
            next_ping: now + cfg.ping_interval,
            cfg,
            session,
            phase: Phase::AwaitingAuth,
            principal: None,
            expires_at: None,
            expiring_at: None,
            pong_due: None,
            pong_overdue: false,
            close_deadline: None,
            strikes: 0,
            inflight: IdMap::default(),
            inflight_bytes: 0,
            refreshing: None,
            running: None,
            server_requests: IdMap::default(),
            server_deadlines: BTreeSet::new(),
            deadlines: BTreeSet::new(),
            next_server_id: 1,
            discarded: 0,
            out: VecDeque::new(),
        }
    }

    /// The authenticated principal, once `auth` succeeded.
    pub fn principal(&self) -> Option<&Principal> {
        self.principal.as_ref()
    }

    /// The next output, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether the transport should be read: not while an `auth` is being
    /// verified (P12, so the frame limit is raised before the next read),
    /// not once finished.
    pub fn wants_read(&self) -> bool {
        !matches!(self.phase, Phase::Verifying(_) | Phase::Finished)
    }

    /// Whether the session is over: drop the transport.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    /// Whether a close was decided (frames are ignored from then on).
    pub fn is_closing(&self) -> bool {
        matches!(self.phase, Phase::Closing { .. } | Phase::Finished)
    }

    /// Whether `auth` succeeded and no close was decided.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Authenticated)
    }

    /// Requests in flight (async, streamed, being verified).
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// When [`handle_timeout`](Core::handle_timeout) should be called next.
    pub fn next_timeout(&self) -> Option<Instant> {
        if let Phase::Closing { .. } | Phase::Finished = self.phase {
            return self.close_deadline;
        }
        let keepalive = match self.pong_due {
            None => self.next_ping,
            // Past due while a backlog is read: judged when reading catches
            // up, at the hard bound at the latest (P19).
            Some(due) if self.pong_overdue => due + self.cfg.pong_timeout,
            Some(due) => due,
        };
        [
            self.auth_deadline,
            self.expires_at,
            self.expiring_at,
            Some(keepalive),
            self.server_deadlines.first().map(|d| d.0),
            self.deadlines.first().map(|d| d.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    // ---- input ---------------------------------------------------------

    /// Handles one binary message. Returns the request to run, if it is one
    /// that passed every check: the caller runs its handler and answers
    /// with [`handle_reply`](Core::handle_reply) (at once for a
    /// [`Kind::Sync`] handler, before the next frame).
    pub fn handle_frame(&mut self, now: Instant, bytes: Bytes) -> Option<Dispatch> {
        if self.is_closing() {
            self.discard(bytes.len());
            return None;
        }
        let len = bytes.len();
        let limits = if self.principal.is_some() {
            &self.cfg.limits
        } else {
            &self.cfg.preauth_limits
        };
        match Frame::decode(bytes, limits) {
            Err(e) => {
                self.close(now, e.close_code(), "undecodable frame".into(), None);
                None
            }
            Ok(Frame::Request(req)) => self.on_request(now, req, len),
            Ok(Frame::Notification(n)) => {
                if n.method == Method::Cancel.name()
                    && self.is_authenticated()
                    && let Ok(p) = params::<CancelParams>(&n.params)
                    && let Some(f) = self.inflight.get(&p.id)
                    && matches!(f.work, Work::Handler(_))
                {
                    self.out.push_back(Output::Abort { id: p.id });
                }
                // Other notifications are ignored, as §6.4 requires.
                None
            }
            Ok(Frame::Response(r)) => {
                if self.take_server_request(r.id).is_some() {
                    let answer = match r.outcome {
                        Ok(v) => ClientAnswer::Result(v),
                        Err(e) => ClientAnswer::Error(Box::new(e)),
                    };
                    self.out
                        .push_back(Output::ClientAnswer { id: r.id, answer });
                }
                // Responses for unknown server ids are ignored (P20).
                None
            }
            Ok(Frame::Chunk(c)) => {
                let Some(r) = self.server_requests.get_mut(&c.id) else {
                    // Chunks for unknown ids are ignored (§7.4).
                    return None;
                };
                if r.streams && c.seq != r.next_seq {
                    // A broken stream (§7.1): withdrawn, failed locally.
                    self.withdraw_server_request(c.id);
                    self.out.push_back(Output::ClientAnswer {
                        id: c.id,
                        answer: ClientAnswer::Error(Box::new(WireError::new(
                            plexus_protocol::ErrorCode::InvalidFrame,
                            "the callee broke its chunk sequence",
                        ))),
                    });
                    return None;
                }
                r.next_seq += 1;
                if c.fin {
                    self.take_server_request(c.id);
                    self.out.push_back(Output::ClientAnswer {
                        id: c.id,
                        answer: ClientAnswer::Final(c.data),
                    });
                } else if r.streams {
                    self.out.push_back(Output::ClientChunk {
                        id: c.id,
                        data: c.data,
                    });
                }
                None
            }
        }
    }

    fn on_request(&mut self, now: Instant, req: Request, len: usize) -> Option<Dispatch> {
        let id = req.id;
        // 1. An id already in flight: the client broke §6.3.
        if self.inflight.contains_key(&id) {
            self.close(
                now,
                CloseCode::ProtocolError,
                "request id already in flight".into(),
                None,
            );
            return None;
        }
        let method = self
            .cfg
            .table
            .lookup(&req.method)
            .map(|(i, e)| (i, e.kind, e.meta));
        // 2. The rate bucket.
        let cost = method.map_or(1, |(_, _, m)| m.cost);
        if let Err(wait) = self.bucket.take(now, cost) {
            self.strikes += 1;
            let retry_after_ms = duration_ms(wait) + 1;
            if self.strikes > self.cfg.rate_strikes {
                self.close(
                    now,
                    CloseCode::RateLimited,
                    "request rate limit exceeded repeatedly".into(),
                    Some(retry_after_ms),
                );
            } else {
                self.respond_err(
                    id,
                    Label::RateLimited,
                    &RequestError::RateLimited { retry_after_ms },
                );
            }
            return None;
        }
        self.strikes = 0;
        let is_auth = req.method == Method::Auth.name();
        // 3. Only `auth` before authentication; 4. and not again after.
        if self.principal.is_none() {
            if !is_auth {
                self.respond_err(
                    id,
                    Label::Unauthenticated,
                    &RequestError::Unauthenticated("the first request must be auth".into()),
                );
                return None;
            }
        } else if is_auth {
            self.respond_err(
                id,
                Label::Auth,
                &RequestError::Conflict("already authenticated".into()),
            );
            return None;
        }
        let is_refresh = req.method == Method::AuthRefresh.name();
        // 5. An unknown method.
        let (label, dispatch) = if is_auth {
            (Label::Auth, None)
        } else if is_refresh {
            (Label::AuthRefresh, None)
        } else {
            match method {
                Some((i, kind, meta)) => (Label::Method(i), Some((i, kind, meta))),
                None => {
                    self.respond_err(id, Label::Unknown, &RequestError::MethodNotFound);
                    return None;
                }
            }
        };
        // 6. The in-flight limits: every request counts, from arrival to
        // its terminal frame, the new one included in the bytes (P2, P3).
        let counts = dispatch.is_none_or(|(_, _, meta)| meta.counts_in_flight);
        if counts
            && (self.inflight.len() >= self.cfg.max_in_flight
                || self.inflight_bytes + len > self.cfg.max_in_flight_bytes)
        {
            self.respond_err(
                id,
                label,
                &RequestError::TooManyRequests("too many requests in flight".into()),
            );
            return None;
        }
        // 7. Params, for the methods the core runs itself; the handlers
        // check their own.
        if is_auth {
            self.start_auth(id, &req.params, len);
            return None;
        }
        if is_refresh {
            self.start_refresh(id, &req.params, len);
            return None;
        }
        let (index, kind, _) = dispatch?;
        match kind {
            Kind::Sync => self.running = Some(id),
            Kind::Async | Kind::Streamed => {
                self.inflight.insert(
                    id,
                    InFlight {
                        bytes: len,
                        work: Work::Handler(kind),
                        deadline: None,
                    },
                );
                self.inflight_bytes += len;
            }
        }
        Some(Dispatch {
            id,
            method: index,
            name: req.method,
            params: req.params,
            kind,
        })
    }

    fn finish_request(&mut self, id: u64) -> Option<InFlight> {
        let f = self.inflight.remove(&id)?;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.bytes);
        if let Some(at) = f.deadline {
            self.deadlines.remove(&(at, id));
        }
        Some(f)
    }

    /// Removes server request `id` and its deadline.
    fn take_server_request(&mut self, id: u64) -> Option<ServerRequest> {
        let r = self.server_requests.remove(&id)?;
        self.server_deadlines.remove(&(r.deadline, id));
        Some(r)
    }

    /// Gives request `id`, in flight, a deadline: at `at`,
    /// [`handle_timeout`](Core::handle_timeout) emits [`Output::Expired`]
    /// for it once (the request stays in flight until it is answered with
    /// [`handle_reply`](Core::handle_reply)). A later call moves the
    /// deadline. Returns whether `id` is in flight.
    pub fn set_deadline(&mut self, id: u64, at: Instant) -> bool {
        let Some(f) = self.inflight.get_mut(&id) else {
            return false;
        };
        if let Some(old) = f.deadline.replace(at) {
            self.deadlines.remove(&(old, id));
        }
        self.deadlines.insert((at, id));
        true
    }

    /// The handler of dispatched request `id` finished: returns its
    /// terminal frame to queue (none if the request is unknown or the
    /// session is closing). Returned rather than queued as an output, so
    /// the request path does not go through the output queue.
    #[must_use]
    pub fn handle_reply(&mut self, id: u64, completion: Completion) -> Option<Bytes> {
        if self.running == Some(id) {
            self.running = None;
        } else {
            self.finish_request(id)?;
        }
        if self.is_closing() {
            return None;
        }
        let frame = match completion {
            Completion::Result(bytes) => encode_result(id, &Encoded(&bytes)),
            Completion::Final { seq, data } => encode_chunk(id, seq, true, &Encoded(&data)),
            Completion::Error(e) => Ok(encode_error(id, &WireError::from(&e))),
        };
        Some(self.fit(id, frame.map(Bytes::from).ok()))
    }

    /// A frame to send, or the `internal` error for `id` if there is none
    /// (it failed to encode) or it is larger than the announced
    /// `max_frame_size` (H2: never send an oversized frame).
    fn fit(&self, id: u64, frame: Option<Bytes>) -> Bytes {
        match frame {
            Some(f) if f.len() <= self.cfg.limits.max_frame_size => f,
            _ => {
                let e = RequestError::internal("response too large or unencodable");
                Bytes::from(encode_error(id, &WireError::from(&e)))
            }
        }
    }

    fn respond_ok<T: minicbor::Encode<()>>(&mut self, id: u64, label: Label, result: &T) {
        let frame = self.fit(id, encode_result(id, result).ok().map(Bytes::from));
        self.out.push_back(Output::Response {
            frame,
            label,
            error: None,
        });
    }

    fn respond_err(&mut self, id: u64, label: Label, e: &RequestError) {
        let frame = Bytes::from(encode_error(id, &WireError::from(e)));
        self.out.push_back(Output::Response {
            frame,
            label,
            error: Some(e.code()),
        });
    }

    /// A WebSocket pong arrived.
    pub fn handle_pong(&mut self, _now: Instant) {
        if !self.is_closing() {
            self.pong_due = None;
            self.pong_overdue = false;
        }
    }

    /// The transport found input after having had none: the hub may have
    /// been unable to read for up to `lag` (a stall it measured). Neither
    /// the rate bucket nor the pong deadline charge that lag to the client
    /// (P19).
    pub fn handle_read_resume(&mut self, now: Instant, lag: Duration) {
        self.bucket.resume(now, lag);
        self.excuse_lag(lag);
    }

    /// The hub could not read for `lag`: the pong deadline moves by as much.
    fn excuse_lag(&mut self, lag: Duration) {
        if !lag.is_zero()
            && let Some(due) = &mut self.pong_due
        {
            *due += lag;
            self.pong_overdue = false;
        }
    }

    /// The transport has no unread input: everything the client sent
    /// before `now` has been handled (P19), as far as the hub can tell
    /// having lagged `lag` since it last looked.
    pub fn handle_read_idle(&mut self, now: Instant, lag: Duration) {
        self.bucket.idle(now, lag);
        self.excuse_lag(lag);
        if let Some(due) = self.pong_due
            && now >= due
            && !self.is_closing()
        {
            self.keepalive_timeout(now);
        }
    }

    /// The transport reported a fault instead of a frame.
    pub fn handle_link_fault(&mut self, now: Instant, fault: LinkFault) {
        let (code, reason) = match fault {
            LinkFault::TooBig => (CloseCode::MessageTooBig, "message too big"),
            LinkFault::Text => (
                CloseCode::UnsupportedData,
                "text messages are not supported",
            ),
            LinkFault::InvalidUtf8 => (CloseCode::InvalidPayload, "invalid UTF-8"),
            LinkFault::Protocol => (CloseCode::WsProtocolError, "WebSocket protocol error"),
        };
        if self.is_closing() {
            // While lingering: stop reading.
            self.phase = Phase::Finished;
            return;
        }
        self.close(now, code, reason.into(), None);
    }

    /// The client sent a Close frame (the transport answers it) or ended
    /// the connection: nothing more to send.
    pub fn handle_peer_closed(&mut self, _now: Instant) {
        self.phase = Phase::Finished;
        self.abandon_server_requests();
    }

    /// The Close frame asked for by [`Output::Close`] was written.
    pub fn handle_close_sent(&mut self, now: Instant) {
        if let Phase::Closing { sent } = &mut self.phase
            && !*sent
        {
            *sent = true;
            self.close_deadline = Some(now + self.cfg.close_linger);
        }
    }

    /// Decides to close with `code` (the first decision wins): from inside
    /// (a rule) or outside (shutdown 4008, replacement 4009, slow consumer
    /// 4006).
    pub fn close(
        &mut self,
        now: Instant,
        code: CloseCode,
        reason: Cow<'_, str>,
        retry_after_ms: Option<u64>,
    ) {
        if self.is_closing() {
            return;
        }
        self.phase = Phase::Closing { sent: false };
        self.auth_deadline = None;
        self.expires_at = None;
        self.expiring_at = None;
        self.pong_due = None;
        self.pong_overdue = false;
        let wait = if code == CloseCode::SlowConsumer {
            self.cfg.slow_close_write_timeout
        } else {
            self.cfg.close_write_timeout
        };
        self.close_deadline = Some(now + wait);
        let closing = code.announced().then(|| {
            let params = ClosingParams {
                code: code.as_u16(),
                reason: &reason,
                retry_after_ms,
            };
            encode_notification(plexus_protocol::methods::Closing::NAME, &params)
                .map(Bytes::from)
                .ok()
        });
        self.out.push_back(Output::Close {
            code,
            closing: closing.flatten(),
        });
        self.abandon_server_requests();
    }

    fn abandon_server_requests(&mut self) {
        self.server_deadlines.clear();
        let mut ids: Vec<u64> = self.server_requests.drain().map(|(id, _)| id).collect();
        ids.sort_unstable();
        for id in ids {
            self.out.push_back(Output::ClientAnswer {
                id,
                answer: ClientAnswer::Closed,
            });
        }
    }

    /// The transport read and discarded `len` bytes it could not parse
    /// (after a fault), while lingering.
    pub fn handle_discarded(&mut self, len: usize) {
        self.discard(len);
    }

    fn discard(&mut self, len: usize) {
        self.discarded += len;
        if self.discarded > self.cfg.linger_bytes {
            self.phase = Phase::Finished;
        }
    }

    fn keepalive_timeout(&mut self, now: Instant) {
        self.close(
            now,
            CloseCode::KeepaliveTimeout,
            "no pong within the keepalive timeout".into(),
            None,
        );
    }

    /// Runs the timers that are due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.is_closing() {
            if self.close_deadline.is_some_and(|t| now >= t) {
                self.phase = Phase::Finished;
            }
            return;
        }
        if self.auth_deadline.is_some_and(|t| now >= t) {
            self.out.push_back(Output::AuthFailure("timeout"));
            self.close(
                now,
                CloseCode::AuthTimeout,
                "no successful auth within the deadline".into(),
                None,
            );
            return;
        }
        if let Some(t) = self.expiring_at
            && now >= t
        {
            self.expiring_at = None;
            let left = self
                .expires_at
                .map_or(0, |e| duration_ms(e.saturating_duration_since(now)));
            let params = TokenExpiringParams {
                expires_in_ms: left,
            };
            if let Ok(f) =
                encode_notification(plexus_protocol::methods::TokenExpiring::NAME, &params)
            {
                self.out.push_back(Output::Frame(Bytes::from(f)));
            }
        }
        if self.expires_at.is_some_and(|t| now >= t) {
            self.close(
                now,
                CloseCode::TokenExpired,
                "token expired".into(),
                Some(0),
            );
            return;
        }
        if let Some(due) = self.pong_due
            && now >= due
        {
            // Judged only once the input that arrived before the deadline
            // has been read (handle_read_idle), or at the hard bound (P19).
            if now >= due + self.cfg.pong_timeout {
                self.keepalive_timeout(now);
                return;
            }
            self.pong_overdue = true;
        }
        if self.pong_due.is_none() && now >= self.next_ping {
            self.out.push_back(Output::Ping);
            self.pong_due = Some(now + self.cfg.pong_timeout);
            self.next_ping = now + self.cfg.ping_interval;
        }
        while let Some(&(at, id)) = self.deadlines.first()
            && at <= now
        {
            self.deadlines.pop_first();
            if let Some(f) = self.inflight.get_mut(&id) {
                f.deadline = None;
                self.out.push_back(Output::Expired { id });
            }
        }
        while let Some(&(at, id)) = self.server_deadlines.first()
            && at <= now
        {
            self.server_deadlines.pop_first();
            self.server_requests.remove(&id);
            if let Ok(f) = encode_notification(Method::Cancel.name(), &CancelParams { id }) {
                self.out.push_back(Output::Frame(Bytes::from(f)));
            }
            self.out.push_back(Output::ClientAnswer {
                id,
                answer: ClientAnswer::TimedOut,
            });
        }
    }

    /// Sends request `method` with `params` to the client (P20), answered
    /// by [`Output::ClientAnswer`] with the returned id, or
    /// [`ClientAnswer::TimedOut`] after `timeout`.
    pub fn start_server_request(
        &mut self,
        now: Instant,
        method: &str,
        params: &RawValue,
        timeout: Duration,
    ) -> Result<u64, RequestError> {
        self.start_server_request_with(now, method, params, timeout, false)
    }

    /// [`start_server_request`](Core::start_server_request) for a method
    /// whose result may stream: each non-final chunk of the client's
    /// comes out as [`Output::ClientChunk`], in `seq` order (a gap or a
    /// repeat withdraws the request and answers it `invalid_frame`).
    pub fn start_streamed_server_request(
        &mut self,
        now: Instant,
        method: &str,
        params: &RawValue,
        timeout: Duration,
    ) -> Result<u64, RequestError> {
        self.start_server_request_with(now, method, params, timeout, true)
    }

    /// Withdraws server request `id` (§8, from the server): a `cancel` is
    /// sent and any later answer ignored. Returns whether it was in flight.
    pub fn withdraw_server_request(&mut self, id: u64) -> bool {
        if self.take_server_request(id).is_none() {
            return false;
        }
        if self.is_authenticated()
            && let Ok(f) = encode_notification(Method::Cancel.name(), &CancelParams { id })
        {
            self.out.push_back(Output::Frame(Bytes::from(f)));
        }
        true
    }

    fn start_server_request_with(
        &mut self,
        now: Instant,
        method: &str,
        params: &RawValue,
        timeout: Duration,
        streams: bool,
    ) -> Result<u64, RequestError> {
        if !self.is_authenticated() {
            return Err(RequestError::Unavailable {
                message: "the connection is closing".into(),
                retry_after_ms: None,
            });
        }
        if self.server_requests.len() >= self.cfg.max_server_requests {
            return Err(RequestError::TooManyRequests(
                "too many requests to this client in flight".into(),
            ));
        }
        let id = self.next_server_id;
        let frame = encode_request(id, method, params)
            .map_err(|_| RequestError::internal("cannot encode a server request"))?;
        if frame.len() > self.cfg.limits.max_frame_size {
            return Err(RequestError::PayloadTooLarge(
                "request exceeds max_frame_size".into(),
            ));
        }
        self.next_server_id += 1;
        let deadline = now + timeout;
        self.server_deadlines.insert((deadline, id));
        self.server_requests.insert(
            id,
            ServerRequest {
                deadline,
                streams,
                next_seq: 0,
            },
        );
        self.out.push_back(Output::Frame(Bytes::from(frame)));
        Ok(id)
    }
}
