//! The caller's side of routed calls (decision R14): a routed request
//! (`rpc.call`) is answered from another connection — the callee's — with
//! no task, timer or channel of its own.
//!
//! The handler's synchronous part routes the call and returns a
//! [`RoutedStart`]; the session keeps it here, gives the request the
//! call's deadline in its core ([`Core::set_deadline`]), and sends the
//! invocation to the callee's session ([`Command::Invoke`]). The callee's
//! session sends back [`Command::Routed`] news — the callee of a queued
//! call, each non-final chunk, the end — which [`Relay::event`] turns into
//! this connection's frames:
//!
//! - chunks are relayed while the outbound queue has room
//!   ([`Outbound::has_room`](crate::outbound::Outbound::has_room), the
//!   bulk senders' rule); a chunk that finds no room waits here and is
//!   relayed when the session's writes free some ([`Relay::pump`]). Credit
//!   goes back to the callee ([`Command::Credit`]) only for relayed
//!   chunks, so a slow caller throttles its callee; at most the call's
//!   window of chunks waits here per call.
//! - the end answers the request (after the chunks before it), frees the
//!   call's slot at the router and records the request's metrics.
//! - the deadline ([`Relay::expire`]), the caller's `cancel`
//!   ([`Relay::cancel`]) and the end of this connection
//!   ([`Relay::abandon`]) withdraw the invocation at the callee and free
//!   the slot.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_protocol::frame::encode_chunk;
use plexus_protocol::{Encoded, ErrorCode, RawValue, WireError};

use super::core::{Completion, Core};
use super::error::RequestError;
use super::table::MethodIndex;
use crate::conn::{Command, Conn, InvokeEnd, ReplyTo, RoutedEvent};
use crate::hub::Hub;
use crate::idmap::IdMap;
use crate::outbound::Push;
use crate::rpc::{Assignment, CallId, Endpoint, RegId};

/// How much longer than the call's deadline the callee's session waits for
/// its answer: the call's own deadline decides first (R9).
pub const INVOKE_SLACK: Duration = Duration::from_secs(1);

/// Builds a queued call's `rpc.invoke` params once its callee is known,
/// at the given time (the deadline left is passed on).
pub type BuildInvoke =
    Box<dyn FnOnce(&Assignment<Endpoint>, Instant) -> Result<RawValue, RequestError> + Send>;

/// Where a routed call goes.
pub enum Target {
    /// Invoke `callee` now with these `rpc.invoke` params.
    Now {
        /// The callee.
        callee: Endpoint,
        /// Its registration.
        registration: RegId,
        /// The `rpc.invoke` params.
        params: RawValue,
    },
    /// Queued at the router: the callee comes as
    /// [`RoutedEvent::Assigned`], and the invocation is built then.
    Queued(BuildInvoke),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Now { registration, .. } => f
                .debug_struct("Now")
                .field("registration", registration)
                .finish(),
            Target::Queued(_) => f.write_str("Queued"),
        }
    }
}

/// What a routed handler's synchronous part returns: a call the router
/// accepted.
#[derive(Debug)]
pub struct RoutedStart {
    /// The hub's call id.
    pub call: CallId,
    /// The call's deadline.
    pub deadline: Instant,
    /// The chunk credit the invocation announces.
    pub window: u64,
    /// Where it goes.
    pub target: Target,
}

enum State {
    Queued(BuildInvoke),
    Invoked(Endpoint, RegId),
}

struct Call {
    call: CallId,
    method: MethodIndex,
    started: Instant,
    deadline: Instant,
    window: u64,
    state: State,
    /// Chunks relayed (the final chunk's `seq`).
    relayed: u64,
    /// Relayed chunks not yet credited to the callee.
    uncredited: u64,
    /// Chunks waiting for room in the outbound queue.
    stash: VecDeque<RawValue>,
    /// The end, once it came while chunks were waiting.
    end: Option<InvokeEnd>,
}

/// What the relay works with: the session's core, its connection, the hub.
pub struct Env<'a> {
    /// The hub.
    pub hub: &'a Arc<Hub>,
    /// This (the caller's) connection.
    pub conn: &'a Arc<Conn>,
    /// This session's core.
    pub core: &'a mut Core,
    /// The time.
    pub now: Instant,
}

/// One connection's routed calls in flight, by request id.
#[derive(Default)]
pub struct Relay {
    calls: IdMap<Call>,
    /// Requests with chunks waiting for room.
    stalled: Vec<u64>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("calls", &self.calls.len())
            .field("stalled", &self.stalled.len())
            .finish()
    }
}

impl Relay {
    /// Whether no call is in flight.
    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Whether chunks wait for room ([`pump`](Relay::pump) after writes).
    pub fn is_stalled(&self) -> bool {
        !self.stalled.is_empty()
    }

    /// Starts routed call `start` for request `id` of `method`.
    pub fn start(&mut self, env: &mut Env<'_>, id: u64, method: MethodIndex, start: RoutedStart) {
        env.core.set_deadline(id, start.deadline);
        let (state, now) = match start.target {
            Target::Queued(build) => (State::Queued(build), None),
            Target::Now {
                callee,
                registration,
                params,
            } => (
                State::Invoked(callee.clone(), registration),
                Some((callee, registration, params)),
            ),
        };
        self.calls.insert(
            id,
            Call {
                call: start.call,
                method,
                started: env.now,
                deadline: start.deadline,
                window: start.window,
                state,
                relayed: 0,
                uncredited: 0,
                stash: VecDeque::new(),
                end: None,
            },
        );
        if let Some((callee, reg, params)) = now {
            self.invoke(env, id, &callee, reg, params);
        }
    }

    /// Sends the invocation to `callee`; a callee whose session is gone or
    /// full fails the call `callee_lost` at once.
    fn invoke(
        &mut self,
        env: &mut Env<'_>,
        id: u64,
        callee: &Endpoint,
        reg: RegId,
        params: RawValue,
    ) {
        let Some(c) = self.calls.get(&id) else { return };
        let cmd = Command::Invoke {
            call: c.call,
            params,
            timeout: c.deadline.saturating_duration_since(env.now) + INVOKE_SLACK,
            window: c.window,
            reply: ReplyTo::new(env.conn.clone(), id, c.call),
        };
        if let Err(cmd) = callee.command(reg, cmd) {
            if let Command::Invoke { reply, .. } = cmd {
                reply.forget();
            }
            self.complete(env, id, Err(RequestError::CalleeLost), false);
        }
    }

    /// News of call `call`, which answers request `id`.
    pub fn event(&mut self, env: &mut Env<'_>, id: u64, call: CallId, event: RoutedEvent) {
        // News of a call that ended already (cancelled, timed out) is
        // stale: its slot was freed when it ended.
        let Some(c) = self.calls.get_mut(&id).filter(|c| c.call == call) else {
            return;
        };
        match event {
            RoutedEvent::Assigned(a) => {
                let State::Queued(_) = c.state else { return };
                let State::Queued(build) = std::mem::replace(
                    &mut c.state,
                    State::Invoked(a.endpoint.clone(), a.registration),
                ) else {
                    return;
                };
                match build(&a, env.now) {
                    Ok(params) => self.invoke(env, id, &a.endpoint, a.registration, params),
                    // Nothing was sent to the callee.
                    Err(e) => self.complete(env, id, Err(e), false),
                }
            }
            RoutedEvent::Chunk(data) => {
                if c.stash.is_empty() {
                    match relay_chunk(env, id, c, data) {
                        Ok(None) => {}
                        Ok(Some(data)) => {
                            c.stash.push_back(data);
                            self.stalled.push(id);
                        }
                        Err(e) => self.complete(env, id, Err(e), true),
                    }
                } else {
                    c.stash.push_back(data);
                }
            }
            RoutedEvent::End(end) => {
                if c.stash.is_empty() {
                    let r = outcome(end, c.relayed);
                    self.complete(env, id, r, false);
                } else {
                    c.end = Some(end);
                }
            }
        }
    }

    /// Relays waiting chunks while there is room (after the session wrote).
    pub fn pump(&mut self, env: &mut Env<'_>) {
        let stalled = std::mem::take(&mut self.stalled);
        for id in stalled {
            let Some(c) = self.calls.get_mut(&id) else {
                continue;
            };
            let mut failed = None;
            while let Some(data) = c.stash.pop_front() {
                match relay_chunk(env, id, c, data) {
                    Ok(None) => {}
                    Ok(Some(data)) => {
                        c.stash.push_front(data);
                        break;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                self.complete(env, id, Err(e), true);
            } else if !c.stash.is_empty() {
                self.stalled.push(id);
            } else if let Some(end) = c.end.take() {
                let r = outcome(end, c.relayed);
                self.complete(env, id, r, false);
            }
        }
    }

    /// Request `id`'s deadline passed ([`Output::Expired`]): answered
    /// `timeout`, the callee interrupted. False if `id` is not a routed
    /// call.
    ///
    /// [`Output::Expired`]: super::core::Output::Expired
    pub fn expire(&mut self, env: &mut Env<'_>, id: u64) -> bool {
        if !self.calls.contains_key(&id) {
            return false;
        }
        self.complete(env, id, Err(RequestError::Timeout), true);
        true
    }

    /// The caller cancelled request `id`: answered `cancelled`, the callee
    /// interrupted. False if `id` is not a routed call.
    pub fn cancel(&mut self, env: &mut Env<'_>, id: u64) -> bool {
        if !self.calls.contains_key(&id) {
            return false;
        }
        self.complete(env, id, Err(RequestError::Cancelled), true);
        true
    }

    /// The connection is ending: every call is withdrawn at its callee and
    /// its slot freed (nothing is answered).
    pub fn abandon(&mut self, hub: &Hub) {
        self.stalled.clear();
        for (_, c) in self.calls.drain() {
            withdraw(hub, &c);
        }
    }

    fn complete(
        &mut self,
        env: &mut Env<'_>,
        id: u64,
        result: Result<Completion, RequestError>,
        interrupt: bool,
    ) {
        let Some(c) = self.calls.remove(&id) else {
            return;
        };
        if interrupt {
            withdraw(env.hub, &c);
        } else {
            env.hub.rpc.finish(c.call);
        }
        if !c.stash.is_empty() {
            self.stalled.retain(|s| *s != id);
        }
        let completion = match result {
            Ok(done) => {
                env.hub
                    .metrics
                    .request(c.method, None, secs(env.now, c.started));
                done
            }
            Err(e) => {
                env.hub
                    .metrics
                    .request(c.method, Some(&e.code()), secs(env.now, c.started));
                if let RequestError::Internal(detail) = &e {
                    tracing::warn!(request = id, detail = %detail, "request failed");
                }
                Completion::Error(e)
            }
        };
        if let Some(frame) = env.core.handle_reply(id, completion) {
            let _ = env.conn.out.push(frame);
        }
    }
}

fn secs(now: Instant, started: Instant) -> f64 {
    now.saturating_duration_since(started).as_secs_f64()
}

/// Withdraws `c`'s invocation at its callee (best effort: a full command
/// queue leaves it to the callee's own timer, the deadline plus
/// [`INVOKE_SLACK`]) and frees its slot.
fn withdraw(hub: &Hub, c: &Call) {
    if let State::Invoked(callee, reg) = &c.state {
        let _ = callee.command(*reg, Command::Withdraw { call: c.call });
    }
    hub.rpc.finish(c.call);
}

/// Relays one chunk if the outbound queue has room: `Ok(None)` if relayed,
/// `Ok(Some(data))` (given back) if there is none.
fn relay_chunk(
    env: &mut Env<'_>,
    id: u64,
    c: &mut Call,
    data: RawValue,
) -> Result<Option<RawValue>, RequestError> {
    let frame = encode_chunk(id, c.relayed, false, &Encoded(data.as_bytes()))
        .map_err(|_| RequestError::internal("cannot encode a chunk"))?;
    if frame.len() > env.hub.config.max_frame_size {
        return Err(RequestError::internal("chunk exceeds max_frame_size"));
    }
    if !env.conn.out.has_room(frame.len()) {
        if env.conn.out.is_closing() {
            return Err(RequestError::Cancelled);
        }
        return Ok(Some(data));
    }
    match env.conn.out.push(Bytes::from(frame)) {
        Push::Queued => {}
        Push::Overflow | Push::Closed => return Err(RequestError::Cancelled),
    }
    c.relayed += 1;
    c.uncredited += 1;
    // Credit goes back in batches of half the window.
    if c.uncredited >= (c.window / 2).max(1)
        && let State::Invoked(callee, reg) = &c.state
    {
        let chunks = std::mem::take(&mut c.uncredited);
        // A callee whose queue is full or closed is ending or flooded; its
        // own session ends the invocation.
        let _ = callee.command(
            *reg,
            Command::Credit {
                call: c.call,
                chunks,
            },
        );
    }
    Ok(None)
}

/// The request's answer for the invocation's end (`relayed` chunks sent
/// before it).
fn outcome(end: InvokeEnd, relayed: u64) -> Result<Completion, RequestError> {
    let data = |v: RawValue| Bytes::copy_from_slice(v.as_bytes());
    match end {
        InvokeEnd::Result(v) if relayed == 0 => Ok(Completion::Result(data(v))),
        InvokeEnd::Result(v) | InvokeEnd::Final(v) => Ok(Completion::Final {
            seq: relayed,
            data: data(v),
        }),
        InvokeEnd::Error(e) => Err(RequestError::Peer(e)),
        InvokeEnd::TimedOut => Err(RequestError::Timeout),
        InvokeEnd::Lost => Err(RequestError::CalleeLost),
        InvokeEnd::NoCallee => Err(RequestError::NoCallee),
        InvokeEnd::Refused(RequestError::PayloadTooLarge(_)) => Err(RequestError::PayloadTooLarge(
            "the invocation exceeds max_frame_size".into(),
        )),
        InvokeEnd::Refused(_) => Err(RequestError::TooManyRequests(
            "the callee has too many calls in flight".into(),
        )),
        InvokeEnd::Overrun => Err(RequestError::Peer(WireError::new(
            ErrorCode::Internal,
            "the callee sent more chunks than its credit allowed",
        ))),
    }
}
