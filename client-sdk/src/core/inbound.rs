//! Frames from the hub: answers to the client's requests, chunks,
//! notifications, and requests the hub sends to the client.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_protocol::methods::rpc::{Credit, CreditParams, Invoke, InvokeParams, RegisterResult};
use plexus_protocol::methods::{
    AuthRefresh, AuthResult, Cancel, CancelParams, ClosingParams, PresenceSet, PresenceSetParams,
    ServerLimits,
};
use plexus_protocol::{
    CloseCode, DecodeLimits, ErrorCode, Frame, Method, NotificationMethod, RawValue, Request,
    Response, RpcMethod, WireError,
};
use tracing::debug;

use super::lifecycle::End;
use super::rpc::Refused;
use super::served::Admit;
use super::{
    Action, CLOSE_REPLY_WAIT, CLOSING_GRACE, Core, Outcome, Pending, Phase, Refresh, policy,
};
use crate::deliver::Push;
use crate::error::Error;
use crate::rpc::Invocation;
use crate::state::{CloseStatus, ConnectionState};

impl Core {
    pub(super) fn on_binary(&mut self, now: Instant, bytes: Bytes) {
        if matches!(self.phase, Phase::Ending { .. } | Phase::Closed) {
            return;
        }
        // The hub's frames may nest two levels deeper than it accepts: a
        // presence `info` sits under the member and the page (§4.4).
        let depth = match self.limits.max_depth {
            0 => super::DEFAULT_MAX_DEPTH,
            d => d,
        }
        .saturating_add(2);
        let limits = DecodeLimits {
            max_frame_size: self.cfg.max_frame_size,
            max_depth: u16::try_from(depth).unwrap_or(u16::MAX),
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
                Some(Method::Event) => {
                    self.subs.event(&n.params);
                    self.durable.event(&n.params);
                }
                Some(Method::PresenceJoin) => self.subs.presence(true, &n.params),
                Some(Method::PresenceLeave) => self.subs.presence(false, &n.params),
                Some(Method::Closing) => {
                    if let Ok(p) = n.params.decode::<ClosingParams>() {
                        self.retry_hint = p.retry_after_ms.map(Duration::from_millis);
                    }
                    // §12.6: send nothing more; what waits is sent on the
                    // next connection. The close should follow at once.
                    if self.closing.is_none() {
                        self.closing = Some(now + CLOSING_GRACE);
                    }
                }
                Some(Method::TokenExpiring) => self.start_refresh(now),
                Some(Method::Cancel) => {
                    if let Ok(p) = n.params.decode::<CancelParams>() {
                        self.on_server_cancel(p.id);
                    }
                }
                _ if n.method == Credit::NAME => {
                    if let Ok(p) = n.params.decode::<CreditParams>() {
                        self.rpc.credit(p.call, p.chunks);
                    }
                }
                // Unknown notifications are ignored, as the spec requires.
                _ => {}
            },
            Frame::Request(r) => self.on_server_request(now, r),
        }
    }

    /// `token.expiring`: fetch a fresh token and send `auth.refresh`, one
    /// refresh at a time.
    pub(super) fn start_refresh(&mut self, now: Instant) {
        if matches!(self.refresh, Refresh::Idle) && self.sendable() {
            self.refresh = Refresh::Fetching {
                deadline: now + self.cfg.connect_timeout,
            };
            self.actions.push_back(Action::FetchRefreshToken);
        }
    }

    pub(super) fn on_response(&mut self, now: Instant, r: Response) {
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
            Pending::Durable(local) => {
                if let Some(pattern) = self.durable.answered(local, r.outcome) {
                    self.unsubscribe(pattern);
                }
                if let Some(wait) = self.durable.take_retry() {
                    let at = now + wait;
                    self.durable_retry = Some(self.durable_retry.map_or(at, |t| t.min(at)));
                }
            }
            Pending::Publish { seq, reply, .. } => {
                reply.send(super::durable::publish_answer(seq, r.outcome));
            }
            Pending::Register(local) => {
                let outcome = match r.outcome {
                    Ok(v) => v
                        .decode::<RegisterResult>()
                        .map(|r| r.registration)
                        .map_err(|e| Error::decode("decode the rpc.register result", e)),
                    Err(e) => Err(Error::Remote(e)),
                };
                let (unregister, retry) = self.rpc.answered(local, outcome);
                if let Some(id) = unregister {
                    self.unregister(id);
                }
                if retry {
                    let at = now + super::rpc::RENEW_RETRY;
                    self.rpc.retry_at = Some(self.rpc.retry_at.map_or(at, |t| t.min(at)));
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

    pub(super) fn on_chunk(&mut self, c: plexus_protocol::Chunk) {
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
                            } else if queue.is_paced() && queue.is_full() {
                                // Read nothing more until its consumer
                                // makes room (the hub and the callee wait).
                                self.paced_full.retain(|q| q.is_full());
                                self.paced_full.push(queue.clone());
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
            Pending::Durable(local) => {
                let local = *local;
                return self.on_durable_chunk(local, c);
            }
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

    fn on_durable_chunk(&mut self, local: u64, c: plexus_protocol::Chunk) {
        match self.durable.chunk(local, c.seq, c.fin, &c.data) {
            Ok(true) => {
                self.requests.complete(c.id);
                if let Some(pattern) = self.durable.ended_if_gone(local) {
                    self.unsubscribe(pattern);
                }
                self.release();
            }
            Ok(false) => {}
            Err(_) => {
                // Keep the id until the hub's terminal frame; tell it to
                // stop. The subscription is dropped then.
                if let Some(p) = self.requests.get_mut(c.id) {
                    *p = Pending::Durable(local);
                }
                self.notify(Cancel::NAME, &CancelParams { id: c.id }, false);
            }
        }
    }

    pub(super) fn on_auth_answer(&mut self, now: Instant, outcome: Result<RawValue, WireError>) {
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

    pub(super) fn on_authenticated(&mut self, now: Instant, limits: ServerLimits) {
        self.limits = limits;
        self.requests.set_window(&limits);
        self.phase = Phase::Connected { last_heard: now };
        self.connected_since = Some(now);
        self.closing = None;
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
        self.renew_durables();
        self.renew_registrations();
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

    pub(super) fn on_close(&mut self, now: Instant, code: Option<CloseStatus>) {
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

    pub(super) fn on_server_request(&mut self, now: Instant, r: Request) {
        if !matches!(self.phase, Phase::Connected { .. }) {
            return;
        }
        if r.method == Invoke::NAME {
            return self.on_invoke(now, r);
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

    /// `rpc.invoke`: an invocation of one of this client's registrations.
    fn on_invoke(&mut self, now: Instant, r: Request) {
        let p = match r.params.decode::<InvokeParams<'_>>() {
            Ok(p) => p,
            Err(e) => {
                return self.reply_error(
                    r.id,
                    WireError::new(ErrorCode::InvalidParams, format!("rpc.invoke params: {e}")),
                );
            }
        };
        let served = &mut self.served;
        let admitted = self.rpc.admit(
            p.registration,
            || served.admit_invocation(r.id),
            p.call,
            p.window,
        );
        match admitted {
            Err(Refused::Unknown) => self.reply_error(
                r.id,
                // The registration was just dropped: nobody serves it here.
                WireError::new(ErrorCode::NoCallee, "the registration was withdrawn"),
            ),
            Err(Refused::Busy) => self.reply_error(
                r.id,
                WireError::new(
                    ErrorCode::TooManyRequests,
                    "the registration has max_concurrency invocations running",
                ),
            ),
            Ok(None) => debug!(id = r.id, "the hub reused a request id in flight"),
            Ok(Some((serial, admitted))) => {
                let invocation = Invocation {
                    procedure: p.procedure.to_owned(),
                    params: RawValue::encode(&p.params).unwrap_or_default(),
                    caller: p.caller,
                    deadline: now + Duration::from_millis(p.deadline_ms),
                    call: p.call,
                    registration: p.registration,
                };
                self.actions.push_back(Action::Invoke {
                    serial,
                    handler: admitted.handler,
                    invocation,
                    credit: admitted.credit,
                });
            }
        }
    }

    pub(super) fn on_server_cancel(&mut self, id: u64) {
        if let Some(serial) = self.served.cancel(id) {
            self.rpc.finished(serial);
            self.actions.push_back(Action::Abort(serial));
            // Exactly one terminal frame per request (§8).
            self.reply_error(
                id,
                WireError::new(ErrorCode::Cancelled, "cancelled by the hub"),
            );
        }
    }
}
