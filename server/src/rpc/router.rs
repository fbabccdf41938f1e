//! The routing core of routed RPC, sans-IO: registrations, policies, calls
//! in flight per callee, and the bounded queue of calls waiting for a free
//! callee. No tokio, no sockets, no clock; randomness from a seeded
//! generator, so every policy is unit-tested deterministically.
//!
//! It is generic over the callee's endpoint `E` (what the hub uses to reach
//! the callee: its connection) and the waiter `W` of a queued call (what
//! wakes the caller's task). Operations that free a slot return the queued
//! calls they dispatched, as [`Handoff`]s the caller of the router delivers.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use plexus_protocol::methods::rpc::Policy;

use crate::conn::ConnId;
use crate::idmap::IdMap;

/// A registration id (hub-wide, never reused).
pub type RegId = u64;

/// A call id (hub-wide, never reused).
pub type CallId = u64;

/// The router's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls queued per procedure, waiting for a free callee.
    pub max_queue: usize,
    /// Procedures on the hub.
    pub max_procedures: usize,
    /// Registrations per connection.
    pub max_registrations_per_conn: usize,
}

/// Why the router refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteError {
    /// Nobody registered the procedure.
    #[error("no callee registered this procedure")]
    NoCallee,
    /// Every callee is at its concurrency bound and the queue is full.
    #[error("the procedure's callees are busy and its queue is full")]
    QueueFull,
    /// The procedure has another policy, or `single` already has a callee.
    #[error("{0}")]
    Conflict(&'static str),
    /// A registration or procedure bound is reached.
    #[error("{0}")]
    TooMany(&'static str),
    /// No such registration of this connection.
    #[error("no such registration")]
    NotFound,
}

/// A callee chosen for a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment<E> {
    /// The registration.
    pub registration: RegId,
    /// How to reach the callee.
    pub endpoint: E,
    /// The claims the callee asked for.
    pub disclose: Arc<[Box<str>]>,
}

/// A queued call dispatched because a slot freed: deliver `assignment` to
/// `waiter`. If the waiter is gone, call [`Router::finish`] for `call`.
#[derive(Debug, PartialEq, Eq)]
pub struct Handoff<E, W> {
    /// The call.
    pub call: CallId,
    /// Who waits for it.
    pub waiter: W,
    /// Where it goes.
    pub assignment: Assignment<E>,
}

/// What [`Router::route`] did with a call.
#[derive(Debug, PartialEq, Eq)]
pub enum Routed<E> {
    /// Dispatched at once.
    Now(Assignment<E>),
    /// Queued: the waiter gets a [`Handoff`] later, or is dropped (the
    /// procedure lost its last callee: `no_callee`).
    Queued,
}

#[derive(Debug)]
struct Callee<E> {
    reg: RegId,
    endpoint: E,
    max_concurrency: usize,
    in_flight: usize,
    disclose: Arc<[Box<str>]>,
}

#[derive(Debug)]
struct Queued<W> {
    call: CallId,
    key: Option<Box<str>>,
    waiter: W,
}

#[derive(Debug)]
struct Procedure<E, W> {
    /// Its name, shared by its calls' states.
    name: Arc<str>,
    policy: Policy,
    /// In registration order.
    callees: Vec<Callee<E>>,
    next: usize,
    queue: VecDeque<Queued<W>>,
}

#[derive(Debug, Clone)]
struct RegInfo {
    procedure: Box<str>,
    conn: ConnId,
}

/// Where a call stands.
#[derive(Debug, Clone)]
enum CallState {
    Queued(Arc<str>),
    /// In flight at a registration.
    At(Arc<str>, RegId),
}

/// One callee, as [`Router::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CalleeView<E> {
    /// The registration.
    pub registration: RegId,
    /// The callee.
    pub endpoint: E,
    /// Calls in flight.
    pub in_flight: usize,
    /// Its bound.
    pub max_concurrency: usize,
}

/// One procedure, as [`Router::snapshot`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcedureView<E> {
    /// The name.
    pub procedure: String,
    /// Its policy.
    pub policy: Policy,
    /// Callees in registration order.
    pub callees: Vec<CalleeView<E>>,
    /// Calls queued.
    pub queued: usize,
}

/// The router.
#[derive(Debug)]
pub struct Router<E, W> {
    limits: Limits,
    procedures: BTreeMap<Box<str>, Procedure<E, W>>,
    registrations: IdMap<RegInfo>,
    per_conn: IdMap<usize>,
    calls: IdMap<CallState>,
    next_reg: RegId,
    next_call: CallId,
    rng: u64,
    /// Handoffs made by [`Router::insert`].
    pumped: Vec<Handoff<E, W>>,
}

/// FNV-1a over `key` then the registration id: the rendezvous score.
fn score(key: &[u8], reg: RegId) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.iter().chain(reg.to_le_bytes().iter()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // A final mix: FNV's low bits are weak for short inputs.
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl<E: Clone, W> Router<E, W> {
    /// An empty router; `seed` drives the `random` policy.
    pub fn new(limits: Limits, seed: u64) -> Self {
        Router {
            limits,
            procedures: BTreeMap::new(),
            registrations: IdMap::default(),
            per_conn: IdMap::default(),
            calls: IdMap::default(),
            next_reg: 1,
            next_call: 1,
            rng: seed | 1,
            pumped: Vec::new(),
        }
    }

    /// A fresh call id.
    pub fn next_call_id(&mut self) -> CallId {
        let id = self.next_call;
        self.next_call += 1;
        id
    }

    fn random(&mut self) -> u64 {
        // xorshift64*
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Registers `procedure` for connection `conn` under a fresh id.
    pub fn register(
        &mut self,
        conn: ConnId,
        endpoint: E,
        procedure: &str,
        policy: Policy,
        max_concurrency: usize,
        disclose: Vec<Box<str>>,
    ) -> Result<RegId, RouteError> {
        self.check(conn, procedure, &policy)?;
        let reg = self.next_reg;
        self.next_reg += 1;
        self.insert(
            reg,
            conn,
            endpoint,
            procedure,
            policy,
            max_concurrency,
            disclose,
        );
        Ok(reg)
    }

    /// Whether `conn` may register `procedure` under `policy` now: the
    /// bounds, the procedure's policy, a `single` procedure's callee.
    pub fn check(&self, conn: ConnId, procedure: &str, policy: &Policy) -> Result<(), RouteError> {
        if matches!(policy, Policy::Unknown(_)) {
            return Err(RouteError::Conflict("unknown policy"));
        }
        if self.per_conn.get(&conn).copied().unwrap_or(0) >= self.limits.max_registrations_per_conn
        {
            return Err(RouteError::TooMany(
                "too many registrations on this connection",
            ));
        }
        match self.procedures.get(procedure) {
            Some(p) if p.policy != *policy => Err(RouteError::Conflict(
                "the procedure is registered under another policy",
            )),
            Some(p) if p.policy == Policy::Single && !p.callees.is_empty() => Err(
                RouteError::Conflict("the procedure has a single callee already"),
            ),
            None if self.procedures.len() >= self.limits.max_procedures => {
                Err(RouteError::TooMany("too many procedures on the hub"))
            }
            _ => Ok(()),
        }
    }

    /// Inserts registration `reg` without checking the bounds (cluster
    /// mode: `reg` is the id the shared registration table gave it, here
    /// or on another node). Callees stay in id order, which is their
    /// registration order. False, and nothing changes, if `reg` exists or
    /// the procedure has another policy.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &mut self,
        reg: RegId,
        conn: ConnId,
        endpoint: E,
        procedure: &str,
        policy: Policy,
        max_concurrency: usize,
        disclose: Vec<Box<str>>,
    ) -> bool {
        if self.registrations.contains_key(&reg)
            || self
                .procedures
                .get(procedure)
                .is_some_and(|p| p.policy != policy)
        {
            return false;
        }
        self.next_reg = self.next_reg.max(reg + 1);
        let p = self
            .procedures
            .entry(procedure.into())
            .or_insert_with(|| Procedure {
                name: procedure.into(),
                policy,
                callees: Vec::new(),
                next: 0,
                queue: VecDeque::new(),
            });
        let at = p.callees.partition_point(|c| c.reg < reg);
        p.callees.insert(
            at,
            Callee {
                reg,
                endpoint,
                max_concurrency: max_concurrency.max(1),
                in_flight: 0,
                disclose: disclose.into(),
            },
        );
        self.registrations.insert(
            reg,
            RegInfo {
                procedure: procedure.into(),
                conn,
            },
        );
        *self.per_conn.entry(conn).or_default() += 1;
        // A new callee may take queued calls.
        let mut out = Vec::new();
        let name: Box<str> = procedure.into();
        self.pump(&name, &mut out);
        self.pumped.extend(out);
        true
    }

    /// Queued calls that [`insert`](Router::insert) dispatched, to deliver.
    pub fn take_pumped(&mut self) -> Vec<Handoff<E, W>> {
        std::mem::take(&mut self.pumped)
    }

    /// Withdraws registration `reg`, whoever holds it (cluster mode:
    /// another node's callee left); as [`unregister`](Router::unregister).
    pub fn remove(&mut self, reg: RegId) -> Vec<Handoff<E, W>> {
        let mut out = Vec::new();
        self.remove_registration(reg, &mut out);
        out
    }

    /// The registrations of `conn`.
    pub fn registrations_of(&self, conn: ConnId) -> Vec<RegId> {
        if !self.per_conn.contains_key(&conn) {
            return Vec::new();
        }
        self.registrations
            .iter()
            .filter(|(_, i)| i.conn == conn)
            .map(|(r, _)| *r)
            .collect()
    }

    /// Takes a slot at registration `reg` for call `call` even past its
    /// bound (cluster mode: a call another node routed to a callee here;
    /// that node bounds its own calls by the callee's `max_concurrency`),
    /// so calls routed here see the callee busy. `None` if `reg` is gone.
    pub fn take(&mut self, call: CallId, reg: RegId) -> Option<Assignment<E>> {
        let info = self.registrations.get(&reg)?;
        let p = self.procedures.get_mut(&info.procedure)?;
        let i = p.callees.iter().position(|c| c.reg == reg)?;
        let a = take_slot(p, i);
        self.calls.insert(call, CallState::At(p.name.clone(), reg));
        Some(a)
    }

    /// Withdraws registration `reg` of `conn` (decision R6): its calls in
    /// flight go on, new and queued calls go to the other callees; queued
    /// calls of a procedure left without callees are dropped (their
    /// waiters: `no_callee`).
    pub fn unregister(
        &mut self,
        conn: ConnId,
        reg: RegId,
    ) -> Result<Vec<Handoff<E, W>>, RouteError> {
        match self.registrations.get(&reg) {
            Some(info) if info.conn == conn => {}
            _ => return Err(RouteError::NotFound),
        }
        let mut out = Vec::new();
        self.remove_registration(reg, &mut out);
        Ok(out)
    }

    fn remove_registration(&mut self, reg: RegId, out: &mut Vec<Handoff<E, W>>) {
        let Some(info) = self.registrations.remove(&reg) else {
            return;
        };
        if let Some(n) = self.per_conn.get_mut(&info.conn) {
            *n -= 1;
            if *n == 0 {
                self.per_conn.remove(&info.conn);
            }
        }
        let Some(p) = self.procedures.get_mut(&info.procedure) else {
            return;
        };
        p.callees.retain(|c| c.reg != reg);
        if p.callees.is_empty() {
            // Queued calls have no one left to go to.
            if let Some(p) = self.procedures.remove(&info.procedure) {
                for q in p.queue {
                    self.calls.remove(&q.call);
                }
            }
            return;
        }
        // Affinity targets may have moved to a callee with room.
        self.pump(&info.procedure, out);
    }

    /// Every registration of `conn` vanishes (its session ended, R5).
    pub fn drop_conn(&mut self, conn: ConnId) -> Vec<Handoff<E, W>> {
        let mut out = Vec::new();
        for r in self.registrations_of(conn) {
            self.remove_registration(r, &mut out);
        }
        out
    }

    /// Routes call `call` of `procedure`: dispatched now, queued with
    /// `waiter()` (made only when the call is queued), or refused.
    pub fn route(
        &mut self,
        call: CallId,
        procedure: &str,
        key: Option<&str>,
        waiter: impl FnOnce() -> W,
    ) -> Result<Routed<E>, RouteError> {
        let rnd = self.random();
        let p = self
            .procedures
            .get_mut(procedure)
            .ok_or(RouteError::NoCallee)?;
        // A non-empty queue means every callee is full (it is pumped
        // whenever a slot frees), except under affinity, where only the
        // queued calls' own callees are.
        if (p.queue.is_empty() || p.policy == Policy::Affinity)
            && let Some(i) = pick(p, key, rnd)
        {
            let a = take_slot(p, i);
            self.calls
                .insert(call, CallState::At(p.name.clone(), a.registration));
            return Ok(Routed::Now(a));
        }
        if p.queue.len() >= self.limits.max_queue {
            return Err(RouteError::QueueFull);
        }
        p.queue.push_back(Queued {
            call,
            key: key.map(Into::into),
            waiter: waiter(),
        });
        self.calls.insert(call, CallState::Queued(p.name.clone()));
        Ok(Routed::Queued)
    }

    /// Call `call` ended (answered, failed, cancelled, timed out, its
    /// caller gone): its slot or its queue place is freed; returns the
    /// queued calls that can now run.
    pub fn finish(&mut self, call: CallId) -> Vec<Handoff<E, W>> {
        let mut out = Vec::new();
        match self.calls.remove(&call) {
            None => {}
            Some(CallState::Queued(proc_name)) => {
                if let Some(p) = self.procedures.get_mut(&*proc_name) {
                    p.queue.retain(|q| q.call != call);
                }
            }
            Some(CallState::At(proc_name, reg)) => {
                if let Some(p) = self.procedures.get_mut(&*proc_name)
                    && let Some(c) = p.callees.iter_mut().find(|c| c.reg == reg)
                {
                    c.in_flight = c.in_flight.saturating_sub(1);
                    self.pump(&proc_name, &mut out);
                }
            }
        }
        out
    }

    /// Dispatches queued calls of `procedure` while callees have room.
    fn pump(&mut self, procedure: &str, out: &mut Vec<Handoff<E, W>>) {
        loop {
            let rnd = self.random();
            let Some(p) = self.procedures.get_mut(procedure) else {
                return;
            };
            // The first queued call that has a callee with room (for the
            // non-affinity policies that is the head, or none).
            let mut found = None;
            for qi in 0..p.queue.len() {
                let key = p.queue[qi].key.clone();
                if let Some(i) = pick(p, key.as_deref(), rnd) {
                    found = Some((qi, i));
                    break;
                }
                if p.policy != Policy::Affinity {
                    break;
                }
            }
            let Some((qi, i)) = found else { return };
            let Some(q) = p.queue.remove(qi) else { return };
            let a = take_slot(p, i);
            self.calls
                .insert(q.call, CallState::At(p.name.clone(), a.registration));
            out.push(Handoff {
                call: q.call,
                waiter: q.waiter,
                assignment: a,
            });
        }
    }

    /// Whether `procedure` has a callee.
    pub fn has_callee(&self, procedure: &str) -> bool {
        self.procedures.contains_key(procedure)
    }

    /// Procedures after `after` (byte order), at most `limit`, and whether
    /// more follow.
    pub fn snapshot(&self, after: Option<&str>, limit: usize) -> (Vec<ProcedureView<E>>, bool) {
        use std::ops::Bound;
        let start = match after {
            Some(a) => Bound::Excluded(a),
            None => Bound::Unbounded,
        };
        let mut it = self
            .procedures
            .range::<str, _>((start, Bound::Unbounded))
            .map(|(name, p)| ProcedureView {
                procedure: name.to_string(),
                policy: p.policy.clone(),
                callees: p
                    .callees
                    .iter()
                    .map(|c| CalleeView {
                        registration: c.reg,
                        endpoint: c.endpoint.clone(),
                        in_flight: c.in_flight,
                        max_concurrency: c.max_concurrency,
                    })
                    .collect(),
                queued: p.queue.len(),
            });
        let page: Vec<_> = it.by_ref().take(limit).collect();
        let more = it.next().is_some();
        (page, more)
    }

    /// Calls the router knows of (queued or in flight).
    pub fn calls(&self) -> usize {
        self.calls.len()
    }
}

fn take_slot<E: Clone, W>(p: &mut Procedure<E, W>, i: usize) -> Assignment<E> {
    let c = &mut p.callees[i];
    c.in_flight += 1;
    Assignment {
        registration: c.reg,
        endpoint: c.endpoint.clone(),
        disclose: c.disclose.clone(),
    }
}

/// The callee `p`'s policy picks for a call with `key`, among those with
/// room (decision R3); `None` when the one it must go to is full.
/// The callee with room and the fewest calls in flight (ties: the
/// earliest registered).
fn least_pending<E>(callees: &[Callee<E>]) -> Option<usize> {
    callees
        .iter()
        .enumerate()
        .filter(|(_, c)| c.in_flight < c.max_concurrency)
        .min_by_key(|(_, c)| c.in_flight)
        .map(|(i, _)| i)
}

fn pick<E, W>(p: &mut Procedure<E, W>, key: Option<&str>, rnd: u64) -> Option<usize> {
    let free = |c: &Callee<E>| c.in_flight < c.max_concurrency;
    let n = p.callees.len();
    if n == 0 {
        return None;
    }
    match p.policy {
        Policy::Single | Policy::First => p.callees.iter().position(free),
        Policy::Last => p.callees.iter().rposition(free),
        Policy::RoundRobin => {
            for k in 0..n {
                let i = (p.next + k) % n;
                if free(&p.callees[i]) {
                    p.next = (i + 1) % n;
                    return Some(i);
                }
            }
            None
        }
        Policy::Random => {
            let frees: Vec<usize> = (0..n).filter(|i| free(&p.callees[*i])).collect();
            if frees.is_empty() {
                return None;
            }
            let len = u64::try_from(frees.len()).unwrap_or(u64::MAX);
            let at = usize::try_from(rnd % len).unwrap_or(0);
            frees.get(at).copied()
        }
        Policy::LeastPending => least_pending(&p.callees),
        Policy::Affinity => match key {
            // Rendezvous hashing: the callee with the highest score; a
            // callee that leaves moves only its own keys.
            Some(k) => {
                let i = (0..n).max_by_key(|i| score(k.as_bytes(), p.callees[*i].reg))?;
                free(&p.callees[i]).then_some(i)
            }
            // No key: the least busy callee.
            None => least_pending(&p.callees),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests;
