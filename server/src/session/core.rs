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

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use plexus_protocol::frame::{
    MethodName, encode_chunk, encode_error, encode_notification, encode_request, encode_result,
};
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, AuthRefreshResult, AuthResult, CancelParams, ClosingParams,
    ServerLimits, TokenExpiringParams,
};
use plexus_protocol::{
    CloseCode, DecodeLimits, Encoded, ErrorCode, Frame, Method, NotificationMethod, RawValue,
    Request, WireError, duration_ms,
};

use super::error::{RequestError, params};
use super::ratelimit::TokenBucket;
use super::table::{Kind, MethodIndex, MethodTable};
use crate::auth::{AuthError, MAX_TOKEN_LIFETIME, Principal};
use crate::hub::RegisterError;

#[cfg(test)]
mod tests;

/// How long the driver may take to write the queued frames and the Close
/// frame before the connection is dropped.
pub const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The same for a slow consumer, whose socket is full until it reads
/// again: long enough for a reader that resumes to learn why it was cut
/// off. Only the Close frame is held, never the dropped queue.
pub const SLOW_CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes read and discarded after the Close frame (decision P11).
pub const LINGER_BYTES: usize = 1024 * 1024;

/// Most server-initiated requests awaiting an answer per connection.
pub const MAX_SERVER_REQUESTS: usize = 64;

/// Retry hint sent with 4004 (too many connections for the user).
pub const TOO_MANY_CONNECTIONS_RETRY_MS: u64 = 5_000;

/// The session rules' parameters, shared by every connection of a hub.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The methods served after `auth`.
    pub table: MethodTable,
    /// Deadline for a successful `auth`.
    pub auth_timeout: Duration,
    /// Interval of WebSocket pings.
    pub ping_interval: Duration,
    /// How long a pong may take.
    pub pong_timeout: Duration,
    /// Clock leeway added to `exp` (E = `exp` + leeway).
    pub leeway: Duration,
    /// Upper bound of how long before E `token.expiring` is sent.
    pub token_expiring_lead: Duration,
    /// How long writing the queue and the Close frame may take.
    pub close_write_timeout: Duration,
    /// The same for a slow consumer (4006).
    pub slow_close_write_timeout: Duration,
    /// How long to read and discard after the Close frame.
    pub close_linger: Duration,
    /// Most bytes read and discarded after the Close frame.
    pub linger_bytes: usize,
    /// Sustained requests per second.
    pub rate_per_sec: u32,
    /// Request burst.
    pub rate_burst: u32,
    /// Rate-limited requests in a row before closing with 4007.
    pub rate_strikes: u32,
    /// Most requests in flight.
    pub max_in_flight: usize,
    /// Most bytes of request frames in flight.
    pub max_in_flight_bytes: usize,
    /// Most server-initiated requests awaiting an answer.
    pub max_server_requests: usize,
    /// Decode limits before `auth` succeeded.
    pub preauth_limits: DecodeLimits,
    /// Decode limits after; `max_frame_size` also bounds what is sent (H2).
    pub limits: DecodeLimits,
    /// The limits announced in the `auth` result.
    pub announced: ServerLimits,
}

impl CoreConfig {
    /// The reference defaults (`docs/operations.md`) around `table`.
    pub fn new(table: MethodTable) -> CoreConfig {
        let d = ServerLimits::DEFAULTS;
        let frame = usize::try_from(d.max_frame_size).unwrap_or(usize::MAX);
        CoreConfig {
            table,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_millis(d.ping_interval_ms),
            pong_timeout: Duration::from_secs(10),
            leeway: Duration::from_secs(5),
            token_expiring_lead: Duration::from_secs(60),
            close_write_timeout: CLOSE_WRITE_TIMEOUT,
            slow_close_write_timeout: SLOW_CLOSE_WRITE_TIMEOUT,
            close_linger: Duration::from_secs(2),
            linger_bytes: LINGER_BYTES,
            rate_per_sec: 100,
            rate_burst: 200,
            rate_strikes: 50,
            max_in_flight: usize::try_from(d.max_in_flight).unwrap_or(usize::MAX),
            max_in_flight_bytes: usize::try_from(d.max_in_flight_bytes).unwrap_or(usize::MAX),
            max_server_requests: MAX_SERVER_REQUESTS,
            preauth_limits: DecodeLimits {
                max_frame_size: 16 * 1024,
                max_depth: 32,
            },
            limits: DecodeLimits {
                max_frame_size: frame,
                max_depth: 32,
            },
            announced: d,
        }
    }
}

/// What the driver should do next; see [`Core::poll_output`].
#[derive(Debug)]
pub enum Output {
    /// Queue this frame (a response, chunk, notification or request).
    Frame(Bytes),
    /// Queue this response, which the core answered itself; count it under
    /// `label` with `error` (or `ok`).
    Response {
        /// The response frame.
        frame: Bytes,
        /// What to count it as.
        label: Label,
        /// The error code, or `None` for success.
        error: Option<ErrorCode>,
    },
    /// Stop the handler of request `id` (the client cancelled it); answer
    /// with [`Completion::Error`]`(Cancelled)` when it has stopped.
    Abort {
        /// The request.
        id: u64,
    },
    /// Verify this token without blocking, then call
    /// [`Core::handle_verified`].
    Verify {
        /// The token.
        token: String,
    },
    /// Register the connection for `user`, then call
    /// [`Core::handle_registered`].
    Register {
        /// The authenticated user.
        user: Arc<str>,
        /// The client instance from the `auth` params.
        instance: Option<String>,
    },
    /// Raise the transport's frame size limit: `auth` succeeded (P12).
    RaiseFrameLimit {
        /// The new limit.
        max_frame_size: usize,
    },
    /// Send a WebSocket ping.
    Ping,
    /// Queue `closing` (when announced), then write everything queued and
    /// the Close frame with `code`; call [`Core::handle_close_sent`] once it
    /// is written, and keep reading.
    Close {
        /// The close code.
        code: CloseCode,
        /// The `closing` notification, for codes that are announced.
        closing: Option<Bytes>,
    },
    /// The answer to server-initiated request `id`.
    ClientAnswer {
        /// The server request.
        id: u64,
        /// What the client answered.
        answer: ClientAnswer,
    },
    /// Count an authentication failure with this reason.
    AuthFailure(&'static str),
}

/// What a response the core answered itself is counted as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `auth`.
    Auth,
    /// `auth.refresh`.
    AuthRefresh,
    /// Refused by the rate limit, before the method was looked at.
    RateLimited,
    /// Refused before `auth`.
    Unauthenticated,
    /// A method no one serves.
    Unknown,
    /// A method of the table, refused before it ran.
    Method(MethodIndex),
}

/// The client's answer to a server-initiated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAnswer {
    /// A result (or the data of a final chunk).
    Result(RawValue),
    /// An error object.
    Error(Box<WireError>),
    /// No answer within the request's timeout (a `cancel` was sent).
    TimedOut,
    /// The connection is closing.
    Closed,
}

/// A request to run: see [`Core::handle_frame`].
#[derive(Debug)]
pub struct Dispatch {
    /// The request id.
    pub id: u64,
    /// The method's index in the table (or the fallback).
    pub method: MethodIndex,
    /// The method name (what the fallback dispatches on).
    pub name: MethodName,
    /// The params.
    pub params: RawValue,
    /// How the handler runs.
    pub kind: Kind,
}

/// How a dispatched request ended; see [`Core::handle_reply`].
#[derive(Debug)]
pub enum Completion {
    /// A result item (already encoded CBOR).
    Result(Bytes),
    /// The final chunk of a streamed reply, after `seq` chunks.
    Final {
        /// The sequence number of the final chunk.
        seq: u64,
        /// Its data item (already encoded CBOR).
        data: Bytes,
    },
    /// A failure.
    Error(RequestError),
}

/// What the transport reported instead of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkFault {
    /// A message larger than the current limit (1009, P8).
    TooBig,
    /// A valid text message (1003).
    Text,
    /// Text that is not UTF-8: a text message or a Close reason (1007, P9).
    InvalidUtf8,
    /// A WebSocket protocol violation (1002).
    Protocol,
}

/// The times derived from a token's `exp` at acceptance (P5, P6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TokenTimes {
    /// E: when the session closes with 4002.
    expires_at: Instant,
    /// When `token.expiring` is sent.
    expiring_at: Instant,
    /// E − acceptance, as announced.
    expires_in_ms: u64,
}

/// The token times for `exp` accepted at `now`/`wall`, or `Err` if `exp`
/// lies more than [`MAX_TOKEN_LIFETIME`] ahead (P7).
fn token_times(
    cfg: &CoreConfig,
    now: Instant,
    wall: SystemTime,
    exp: u64,
) -> Result<TokenTimes, ()> {
    let e_wall = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .and_then(|t| t.checked_add(cfg.leeway))
        .ok_or(())?;
    // L = E − acceptance; a token accepted under the leeway has
    // exp < now < E, and L counts to E, not to now + leeway (item 3).
    let left = e_wall.duration_since(wall).unwrap_or(Duration::ZERO);
    if left > MAX_TOKEN_LIFETIME + cfg.leeway {
        return Err(());
    }
    let lead = cfg.token_expiring_lead.min(left / 4);
    Ok(TokenTimes {
        expires_at: now + left,
        expiring_at: now + left.saturating_sub(lead),
        expires_in_ms: duration_ms(left),
    })
}

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
    inflight: HashMap<u64, InFlight>,
    inflight_bytes: usize,
    /// The id of the `auth.refresh` being verified.
    refreshing: Option<u64>,
    /// The synchronous request being run (between dispatch and reply).
    running: Option<u64>,
    server_requests: HashMap<u64, Instant>,
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
            inflight: HashMap::new(),
            inflight_bytes: 0,
            refreshing: None,
            running: None,
            server_requests: HashMap::new(),
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
            self.server_requests.values().min().copied(),
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
                if self.server_requests.remove(&r.id).is_some() {
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
                if c.fin && self.server_requests.remove(&c.id).is_some() {
                    self.out.push_back(Output::ClientAnswer {
                        id: c.id,
                        answer: ClientAnswer::Result(c.data),
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

    fn start_auth(&mut self, id: u64, raw: &RawValue, len: usize) {
        let p: AuthParams<'_> = match params(raw) {
            Ok(p) => p,
            Err(e) => return self.respond_err(id, Label::Auth, &e),
        };
        self.out.push_back(Output::Verify {
            token: p.token.to_owned(),
        });
        let instance = p.instance.map(str::to_owned);
        self.inflight.insert(
            id,
            InFlight {
                bytes: len,
                work: Work::Auth,
            },
        );
        self.inflight_bytes += len;
        self.phase = Phase::Verifying(Box::new(PendingAuth {
            id,
            instance,
            accepted: None,
        }));
    }

    fn start_refresh(&mut self, id: u64, raw: &RawValue, len: usize) {
        // P21: one refresh at a time.
        if self.refreshing.is_some() {
            return self.respond_err(
                id,
                Label::AuthRefresh,
                &RequestError::Conflict("a refresh is already in progress".into()),
            );
        }
        let p: AuthRefreshParams<'_> = match params(raw) {
            Ok(p) => p,
            Err(e) => return self.respond_err(id, Label::AuthRefresh, &e),
        };
        self.out.push_back(Output::Verify {
            token: p.token.to_owned(),
        });
        self.inflight.insert(
            id,
            InFlight {
                bytes: len,
                work: Work::Refresh,
            },
        );
        self.inflight_bytes += len;
        self.refreshing = Some(id);
    }

    fn finish_request(&mut self, id: u64) -> Option<InFlight> {
        let f = self.inflight.remove(&id)?;
        self.inflight_bytes = self.inflight_bytes.saturating_sub(f.bytes);
        Some(f)
    }

    /// The verification asked for by [`Output::Verify`] finished.
    pub fn handle_verified(
        &mut self,
        now: Instant,
        wall: SystemTime,
        result: Result<Principal, AuthError>,
    ) {
        if self.is_closing() {
            return;
        }
        if let Phase::Verifying(pending) = &mut self.phase {
            if pending.accepted.is_some() {
                return;
            }
            let id = pending.id;
            match result {
                Ok(principal) => {
                    let times = match principal.expires_at {
                        None => Ok(None),
                        Some(exp) => token_times(&self.cfg, now, wall, exp).map(Some),
                    };
                    match times {
                        Ok(times) => {
                            let user = principal.user.clone();
                            let instance = pending.instance.take();
                            pending.accepted = Some((principal, times));
                            self.out.push_back(Output::Register { user, instance });
                        }
                        Err(()) => {
                            self.auth_invalid(now, id, "token expiry is too far in the future")
                        }
                    }
                }
                Err(AuthError::Invalid(why)) => self.auth_invalid(now, id, &why.to_string()),
                Err(AuthError::Unavailable) => {
                    self.finish_request(id);
                    self.phase = Phase::AwaitingAuth;
                    self.respond_err(id, Label::Auth, &RequestError::keys_unavailable());
                }
            }
            return;
        }
        let Some(id) = self.refreshing.take() else {
            return;
        };
        self.finish_request(id);
        match result {
            Ok(principal) => {
                let same = self
                    .principal
                    .as_ref()
                    .is_some_and(|p| p.user == principal.user);
                if !same {
                    self.out.push_back(Output::AuthFailure("refresh_subject"));
                    self.respond_err(
                        id,
                        Label::AuthRefresh,
                        &RequestError::Forbidden("token is for another subject".into()),
                    );
                    self.close(
                        now,
                        CloseCode::Forbidden,
                        "token subject changed".into(),
                        None,
                    );
                    return;
                }
                let times = match principal.expires_at {
                    None => Ok(None),
                    Some(exp) => token_times(&self.cfg, now, wall, exp).map(Some),
                };
                let Ok(times) = times else {
                    self.out.push_back(Output::AuthFailure("refresh_invalid"));
                    return self.respond_err(
                        id,
                        Label::AuthRefresh,
                        &RequestError::Unauthenticated(
                            "invalid token: token expiry is too far in the future".into(),
                        ),
                    );
                };
                self.set_token_times(times);
                self.principal = Some(principal);
                let result = AuthRefreshResult {
                    expires_in_ms: times.map(|t| t.expires_in_ms),
                };
                self.respond_ok(id, Label::AuthRefresh, &result);
            }
            Err(AuthError::Invalid(why)) => {
                self.out.push_back(Output::AuthFailure("refresh_invalid"));
                self.respond_err(
                    id,
                    Label::AuthRefresh,
                    &RequestError::Unauthenticated(format!("invalid token: {why}").into()),
                );
            }
            Err(AuthError::Unavailable) => {
                self.respond_err(id, Label::AuthRefresh, &RequestError::keys_unavailable());
            }
        }
    }

    fn auth_invalid(&mut self, now: Instant, id: u64, why: &str) {
        self.finish_request(id);
        self.out.push_back(Output::AuthFailure("invalid"));
        self.respond_err(
            id,
            Label::Auth,
            &RequestError::Unauthenticated(format!("invalid token: {why}").into()),
        );
        self.close(
            now,
            CloseCode::AuthFailed,
            "authentication failed".into(),
            None,
        );
    }

    /// The registration asked for by [`Output::Register`] finished.
    pub fn handle_registered(&mut self, now: Instant, result: Result<(), RegisterError>) {
        let Phase::Verifying(pending) = &mut self.phase else {
            return;
        };
        let Some((principal, times)) = pending.accepted.take() else {
            return;
        };
        let id = pending.id;
        self.finish_request(id);
        if let Err(RegisterError::TooManyConnections) = result {
            self.close(
                now,
                CloseCode::TooManyConnections,
                "too many connections for this user".into(),
                Some(TOO_MANY_CONNECTIONS_RETRY_MS),
            );
            return;
        }
        self.phase = Phase::Authenticated;
        self.auth_deadline = None;
        self.set_token_times(times);
        let result = AuthResult::new(
            self.session.to_string(),
            principal.user.to_string(),
            times.map(|t| t.expires_in_ms),
            self.cfg.announced,
        );
        self.principal = Some(principal);
        self.out.push_back(Output::RaiseFrameLimit {
            max_frame_size: self.cfg.limits.max_frame_size,
        });
        self.respond_ok(id, Label::Auth, &result);
    }

    fn set_token_times(&mut self, times: Option<TokenTimes>) {
        self.expires_at = times.map(|t| t.expires_at);
        self.expiring_at = times.map(|t| t.expiring_at);
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
        let expired: Vec<u64> = self
            .server_requests
            .iter()
            .filter(|(_, d)| now >= **d)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
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
        self.server_requests.insert(id, now + timeout);
        self.out.push_back(Output::Frame(Bytes::from(frame)));
        Ok(id)
    }
}
