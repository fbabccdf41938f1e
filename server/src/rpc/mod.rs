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
use crate::conn::{Command, Conn, ReplyTo};
pub use router::{Assignment, CallId, Handoff, Limits, RegId, RouteError, Routed, Router};

/// What tells a queued call's caller its callee (or, dropped,
/// `no_callee`): the way back to the caller's session.
pub type Waiter = ReplyTo;

/// Where a callee is: a connection here, or one on another node of the
/// cluster, reached through the cluster's RPC link.
#[derive(Debug, Clone)]
pub enum Endpoint {
    /// A connection of this hub.
    Local(Arc<Conn>),
    /// A connection of another node.
    Remote(Arc<RemoteCallee>),
}

/// A callee on another node.
#[derive(Debug)]
pub struct RemoteCallee {
    /// Its node.
    pub node: Arc<str>,
    /// Its user.
    pub user: Box<str>,
    /// Its session id.
    pub session: Box<str>,
    /// The link that carries its invocations.
    pub link: Arc<dyn Forward>,
}

/// What carries invocations, credit and withdrawals to callees on other
/// nodes (the cluster's RPC link).
pub trait Forward: Send + Sync + std::fmt::Debug {
    /// Sends `command` ([`Command::Invoke`], [`Command::Credit`] or
    /// [`Command::Withdraw`]) to the callee of registration `reg` on
    /// `node`; gives it back if the link cannot take it.
    fn forward(&self, node: &Arc<str>, reg: RegId, command: Command) -> Result<(), Command>;
}

impl Endpoint {
    /// Sends the callee's session `command` (an invocation, credit or a
    /// withdrawal of call `reg`'s callee); gives it back if it cannot.
    pub fn command(&self, reg: RegId, command: Command) -> Result<(), Command> {
        match self {
            Endpoint::Local(c) => c.out.command(command),
            Endpoint::Remote(r) => r.link.forward(&r.node, reg, command),
        }
    }

    /// The callee's user.
    pub fn user(&self) -> &str {
        match self {
            Endpoint::Local(c) => c.user(),
            Endpoint::Remote(r) => &r.user,
        }
    }

    /// The callee's session id.
    pub fn session(&self) -> &str {
        match self {
            Endpoint::Local(c) => &c.session,
            Endpoint::Remote(r) => &r.session,
        }
    }

    /// The callee's node, if another one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Endpoint::Local(_) => None,
            Endpoint::Remote(r) => Some(&r.node),
        }
    }
}

/// What the cluster does with registrations made and withdrawn here.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// Registrations `regs` of this node vanished.
    fn withdrawn(&self, regs: Vec<RegId>);
}

/// The hub's router.
#[derive(Debug)]
pub struct Rpc {
    /// The `[rpc]` settings.
    pub settings: RpcSettings,
    router: Mutex<Router<Endpoint, Waiter>>,
    /// Cluster mode: where withdrawn registrations are announced.
    directory: std::sync::OnceLock<Arc<dyn Directory>>,
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
            directory: std::sync::OnceLock::new(),
        }
    }

    /// Runs `f` on the router (not across an await).
    pub fn with<T>(&self, f: impl FnOnce(&mut Router<Endpoint, Waiter>) -> T) -> T {
        f(&mut self.router.lock())
    }

    /// Cluster mode: sets where withdrawn registrations are announced
    /// (once).
    pub fn set_directory(&self, d: Arc<dyn Directory>) {
        let _ = self.directory.set(d);
    }

    /// Whether registrations are shared with a cluster.
    pub fn clustered(&self) -> bool {
        self.directory.get().is_some()
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
                Endpoint::Local(conn.clone()),
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
        if let Some(d) = self.directory.get() {
            d.withdrawn(vec![reg]);
        }
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
        let (regs, out) = self.with(|r| (r.registrations_of(conn.id), r.drop_conn(conn.id)));
        self.deliver(out);
        if let Some(d) = self.directory.get()
            && !regs.is_empty()
        {
            d.withdrawn(regs);
        }
    }

    /// Inserts registration `reg` (cluster mode, see [`Router::insert`])
    /// and hands queued calls to it. False if it was not inserted.
    #[allow(clippy::too_many_arguments)]
    pub fn insert(
        &self,
        reg: RegId,
        conn: crate::conn::ConnId,
        endpoint: Endpoint,
        procedure: &str,
        policy: plexus_protocol::methods::rpc::Policy,
        max_concurrency: usize,
        disclose: Vec<Box<str>>,
    ) -> bool {
        if let Endpoint::Local(c) = &endpoint {
            // Set before the registration exists, so the connection's end
            // always looks (as in `register`).
            c.rpc_callee.store(true, Ordering::Release);
        }
        let (done, out) = self.with(|r| {
            // A connection that is closing has had (or is having) its
            // registrations dropped: none is added after that.
            if let Endpoint::Local(c) = &endpoint
                && c.out.is_closing()
            {
                return (false, Vec::new());
            }
            let done = r.insert(
                reg,
                conn,
                endpoint,
                procedure,
                policy,
                max_concurrency,
                disclose,
            );
            (done, r.take_pumped())
        });
        self.deliver(out);
        done
    }

    /// Withdraws registrations `regs` whoever holds them (cluster mode:
    /// another node's callees left).
    pub fn remove(&self, regs: &[RegId]) {
        let out = self.with(|r| {
            let mut out = Vec::new();
            for reg in regs {
                out.extend(r.remove(*reg));
            }
            out
        });
        self.deliver(out);
    }

    /// Tells the callers of dispatched queued calls their callees; a
    /// caller that is gone gives its slot back at once.
    fn deliver(&self, mut out: Vec<Handoff<Endpoint, Waiter>>) {
        while let Some(h) = out.pop() {
            if !h.waiter.assigned(h.assignment) {
                out.extend(self.with(|r| r.finish(h.call)));
            }
        }
    }
}
