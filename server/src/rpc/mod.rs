//! Routed RPC (issue 12, decisions R1–R12): clients register procedures,
//! the hub routes calls to them.
//!
//! | module | what it holds |
//! |---|---|
//! | [`router`] | the sans-IO routing core: registrations, policies, slots, queues |
//! | this one | [`Rpc`], the router behind a lock with the hub's bounds, and the hand-off of queued calls to their callers' sessions |
//!
//! The methods (`rpc.register`, `rpc.unregister`, `rpc.call`, `rpc.list`)
//! are in `session::methods::rpc`; the invocation of a callee is a
//! [`Command::Invoke`](crate::conn::Command::Invoke) its session runs. Only
//! these methods and the end of a connection that registered something
//! consult the router: publish fan-out and other requests never do.

pub mod router;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use parking_lot::Mutex;

use crate::config::RpcSettings;
use crate::conn::{Conn, ReplyTo};
pub use router::{Assignment, CallId, Handoff, Limits, RegId, RouteError, Routed, Router};

/// What tells a queued call's caller its callee (or, dropped,
/// `no_callee`): the way back to the caller's session.
pub type Waiter = ReplyTo;

/// The hub's router.
#[derive(Debug)]
pub struct Rpc {
    /// The `[rpc]` settings.
    pub settings: RpcSettings,
    router: Mutex<Router<Arc<Conn>, Waiter>>,
}

impl Rpc {
    /// A router with `settings`' bounds.
    pub fn new(settings: RpcSettings) -> Rpc {
        let limits = Limits {
            max_queue: settings.max_queue,
            max_procedures: settings.max_procedures,
            max_registrations_per_conn: settings.max_registrations_per_conn,
        };
        Rpc {
            settings,
            router: Mutex::new(Router::new(limits, rand::random())),
        }
    }

    /// Runs `f` on the router (not across an await).
    pub fn with<T>(&self, f: impl FnOnce(&mut Router<Arc<Conn>, Waiter>) -> T) -> T {
        f(&mut self.router.lock())
    }

    /// Registers `procedure` for `conn`.
    pub fn register(
        &self,
        conn: &Arc<Conn>,
        procedure: &str,
        policy: plexus_protocol::methods::rpc::Policy,
        max_concurrency: usize,
        disclose: Vec<Box<str>>,
    ) -> Result<RegId, RouteError> {
        // Set before the registration exists, so the connection's end
        // always looks.
        conn.rpc_callee.store(true, Ordering::Release);
        self.with(|r| {
            r.register(
                conn.id,
                conn.clone(),
                procedure,
                policy,
                max_concurrency,
                disclose,
            )
        })
    }

    /// Withdraws `reg` of `conn` (R6).
    pub fn unregister(&self, conn: &Conn, reg: RegId) -> Result<(), RouteError> {
        let out = self.with(|r| r.unregister(conn.id, reg))?;
        self.deliver(out);
        Ok(())
    }

    /// Call `call` ended: frees its slot and hands it on.
    pub fn finish(&self, call: CallId) {
        let out = self.with(|r| r.finish(call));
        self.deliver(out);
    }

    /// `conn`'s registrations vanish (its session is ending, R5).
    pub fn drop_conn(&self, conn: &Conn) {
        if !conn.rpc_callee.load(Ordering::Acquire) {
            return;
        }
        let out = self.with(|r| r.drop_conn(conn.id));
        self.deliver(out);
    }

    /// Tells the callers of dispatched queued calls their callees; a
    /// caller that is gone gives its slot back at once.
    fn deliver(&self, mut out: Vec<Handoff<Arc<Conn>, Waiter>>) {
        while let Some(h) = out.pop() {
            if !h.waiter.assigned(h.assignment) {
                out.extend(self.with(|r| r.finish(h.call)));
            }
        }
    }
}
