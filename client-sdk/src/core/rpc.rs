//! Routed RPC on the callee's side (§25, issue 12): the registrations this
//! client holds, renewed after every reconnect, and the invocations the
//! hub routed to them, with their credit.
//!
//! A registration lives here from `Client::register` until its
//! [`Registration`](crate::Registration) is dropped; its hub id changes
//! with every connection (registrations are leases of a session, §25.1).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plexus_protocol::ErrorCode;
use plexus_protocol::methods::rpc::{Policy, RegisterParams};
use tokio::sync::watch;

use super::served::RpcHandler;
use crate::deliver::{Credit, ReplyTx};
use crate::error::Error;

/// After a renewal the hub refused with a retryable error (`conflict`: the
/// hub has not yet seen the previous connection end; `too_many_requests`,
/// `unavailable`), how long before it is sent again.
pub(crate) const RENEW_RETRY: Duration = Duration::from_millis(200);

/// How many times a refused renewal is sent again on one connection
/// (about 10 s of [`RENEW_RETRY`]) before the SDK gives up until the
/// next reconnect.
pub(crate) const RENEW_ATTEMPTS: u32 = 50;

/// What `rpc.register` is sent with.
#[derive(Debug, Clone)]
pub(crate) struct RegSpec {
    pub(crate) procedure: String,
    pub(crate) policy: Option<Policy>,
    pub(crate) max_concurrency: u64,
    pub(crate) disclose_caller: Vec<String>,
}

impl RegSpec {
    /// The params of its `rpc.register`.
    pub(crate) fn params(&self) -> RegisterParams<'_> {
        let mut p = RegisterParams::new(&self.procedure).with_max_concurrency(self.max_concurrency);
        if let Some(policy) = &self.policy {
            p = p.with_policy(policy.clone());
        }
        if !self.disclose_caller.is_empty() {
            p = p.with_disclose_caller(self.disclose_caller.iter().map(String::as_str).collect());
        }
        p
    }
}

struct Reg {
    spec: RegSpec,
    handler: RpcHandler,
    status: watch::Sender<Option<u64>>,
    /// Its id on the current connection.
    hub: Option<u64>,
    /// An `rpc.register` for it is in flight.
    sent: bool,
    /// The first registration's caller, until the hub answered.
    reply: Option<ReplyTx<Result<(), Error>>>,
    /// Its handle was dropped while its `rpc.register` was in flight.
    gone: bool,
    in_flight: u64,
    /// Renewals refused on this connection.
    refusals: u32,
    /// Refused: waits for the retry timer.
    waiting: bool,
    /// Refused for good on this connection.
    parked: bool,
}

/// An invocation admitted to run.
pub(crate) struct Admitted {
    pub(crate) handler: RpcHandler,
    pub(crate) credit: Arc<Credit>,
}

/// Why an invocation was not admitted.
pub(crate) enum Refused {
    /// No live registration has this id (it was just dropped).
    Unknown,
    /// The registration has `max_concurrency` invocations running.
    Busy,
}

/// The registrations and the invocations running at them.
#[derive(Default)]
pub(crate) struct Rpc {
    regs: HashMap<u64, Reg>,
    by_hub: HashMap<u64, u64>,
    /// serial → (local registration, call).
    invocations: HashMap<u64, (u64, u64)>,
    by_call: HashMap<u64, Arc<Credit>>,
    /// When to send again the renewals refused with a retryable error.
    pub(crate) retry_at: Option<Instant>,
}

impl Rpc {
    /// A new registration, sent by the next
    /// [`unsent`](Self::unsent).
    pub(crate) fn add(
        &mut self,
        local: u64,
        spec: RegSpec,
        handler: RpcHandler,
        status: watch::Sender<Option<u64>>,
        reply: ReplyTx<Result<(), Error>>,
    ) {
        self.regs.insert(
            local,
            Reg {
                spec,
                handler,
                status,
                hub: None,
                sent: false,
                reply: Some(reply),
                gone: false,
                in_flight: 0,
                refusals: 0,
                waiting: false,
                parked: false,
            },
        );
    }

    /// The registrations to send on this connection: those neither
    /// registered nor in flight. Each is marked sent.
    pub(crate) fn unsent(&mut self) -> Vec<(u64, RegSpec)> {
        let mut out: Vec<(u64, RegSpec)> = self
            .regs
            .iter_mut()
            .filter(|(_, r)| !r.sent && r.hub.is_none() && !r.gone && !r.waiting && !r.parked)
            .map(|(l, r)| {
                r.sent = true;
                (*l, r.spec.clone())
            })
            .collect();
        // In the order they were made (local ids grow).
        out.sort_by_key(|(l, _)| *l);
        out
    }

    /// The hub answered the `rpc.register` of `local`. Returns a hub id to
    /// unregister (the handle was dropped meanwhile), and whether a retry
    /// should be scheduled.
    pub(crate) fn answered(
        &mut self,
        local: u64,
        outcome: Result<u64, Error>,
    ) -> (Option<u64>, bool) {
        let Some(reg) = self.regs.get_mut(&local) else {
            return (outcome.ok(), false);
        };
        reg.sent = false;
        if reg.gone {
            self.regs.remove(&local);
            return (outcome.ok(), false);
        }
        match outcome {
            Ok(id) => {
                reg.hub = Some(id);
                reg.refusals = 0;
                reg.status.send_replace(Some(id));
                if let Some(r) = reg.reply.take() {
                    r.send(Ok(()));
                }
                self.by_hub.insert(id, local);
                (None, false)
            }
            Err(e) => {
                if let Some(r) = reg.reply.take() {
                    // The first registration: the caller learns why.
                    r.send(Err(e));
                    self.regs.remove(&local);
                    return (None, false);
                }
                let retryable = e.code().is_some_and(|c| {
                    matches!(
                        c,
                        ErrorCode::Conflict
                            | ErrorCode::TooManyRequests
                            | ErrorCode::Unavailable
                            | ErrorCode::RateLimited
                    )
                });
                reg.refusals += 1;
                let retry = retryable && reg.refusals < RENEW_ATTEMPTS;
                if retry {
                    reg.waiting = true;
                } else {
                    tracing::warn!(
                        procedure = %reg.spec.procedure,
                        error = %e.report(),
                        "the hub refused to restore a registration; retried after the next reconnect"
                    );
                    reg.parked = true;
                }
                (None, retry)
            }
        }
    }

    /// The handle of `local` was dropped: the hub id to unregister, if it
    /// is registered now.
    pub(crate) fn dropped(&mut self, local: u64) -> Option<u64> {
        let reg = self.regs.get_mut(&local)?;
        if reg.sent {
            // Its `rpc.register` is in flight: unregistered on the answer.
            reg.gone = true;
            return None;
        }
        let reg = self.regs.remove(&local)?;
        let id = reg.hub?;
        self.by_hub.remove(&id);
        Some(id)
    }

    /// An invocation for hub registration `registration`.
    pub(crate) fn admit(
        &mut self,
        registration: u64,
        serial_if_admitted: impl FnOnce() -> Option<u64>,
        call: u64,
        window: u64,
    ) -> Result<Option<(u64, Admitted)>, Refused> {
        let local = *self.by_hub.get(&registration).ok_or(Refused::Unknown)?;
        let reg = self.regs.get_mut(&local).ok_or(Refused::Unknown)?;
        if reg.in_flight >= reg.spec.max_concurrency {
            return Err(Refused::Busy);
        }
        let Some(serial) = serial_if_admitted() else {
            return Ok(None);
        };
        reg.in_flight += 1;
        let credit = Arc::new(Credit::new(window));
        self.invocations.insert(serial, (local, call));
        self.by_call.insert(call, credit.clone());
        Ok(Some((
            serial,
            Admitted {
                handler: reg.handler.clone(),
                credit,
            },
        )))
    }

    /// `rpc.credit` for `call`.
    pub(crate) fn credit(&self, call: u64, chunks: u64) {
        if let Some(c) = self.by_call.get(&call) {
            c.add(chunks);
        }
    }

    /// The served request `serial` ended (answered, cancelled, or given
    /// up); a no-op for requests that are not invocations.
    pub(crate) fn finished(&mut self, serial: u64) {
        if let Some((local, call)) = self.invocations.remove(&serial) {
            self.by_call.remove(&call);
            if let Some(r) = self.regs.get_mut(&local) {
                r.in_flight = r.in_flight.saturating_sub(1);
            }
        }
    }

    /// Whether any invocation runs.
    pub(crate) fn has_invocations(&self) -> bool {
        !self.invocations.is_empty()
    }

    /// The connection is gone: no registration survives it (each is sent
    /// again on the next connection) and no invocation either.
    pub(crate) fn connection_lost(&mut self) {
        self.regs.retain(|_, r| !r.gone);
        for r in self.regs.values_mut() {
            r.hub = None;
            r.sent = false;
            r.in_flight = 0;
            r.refusals = 0;
            r.waiting = false;
            r.parked = false;
            r.status.send_replace(None);
        }
        self.by_hub.clear();
        self.invocations.clear();
        self.by_call.clear();
        self.retry_at = None;
    }

    /// Retry the refused renewals: mark them unsent.
    pub(crate) fn retry_refused(&mut self) {
        for r in self.regs.values_mut() {
            r.waiting = false;
        }
    }

    /// Closed for good.
    pub(crate) fn finish(&mut self, error: &Error) {
        for (_, r) in self.regs.drain() {
            r.status.send_replace(None);
            if let Some(reply) = r.reply {
                reply.send(Err(error.clone()));
            }
        }
        self.by_hub.clear();
        self.invocations.clear();
        self.by_call.clear();
    }
}
