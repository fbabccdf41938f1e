//! Routed RPC across nodes: the directory of every node's registrations,
//! and calls forwarded to the node of their callee.
//!
//! - **Directory.** A registration is a row of `cluster_registrations`
//!   (PostgreSQL), inserted under a per-procedure advisory lock that also
//!   checks the procedure's policy and a `single` procedure's callee
//!   against every alive node's rows: `conflict` holds cluster-wide. The
//!   row's `reg` (a sequence) is the registration's id on every node, so
//!   ids are unique and ordered as registered. Each node announces its
//!   registrations and withdrawals on `PREFIX.d`; every node puts the other
//!   nodes' registrations in its own router as remote callees
//!   ([`Endpoint::Remote`]), so a caller's node applies the procedure's
//!   policy over every callee of the cluster. The table is read again after
//!   the link comes back and every `cluster-node-expiry`, so a lost notice
//!   heals; withdrawn ids are remembered (tombstones) so a read racing a
//!   withdrawal does not bring a registration back.
//! - **Calls.** A call routed to a remote callee travels to its node on
//!   `PREFIX.r.NODE`: the invocation, credit and withdrawal one way, the
//!   chunks and the end the other. The callee's node takes a slot at the
//!   registration (past its bound if needed: each caller's node bounds its
//!   own calls by `max_concurrency`) and invokes the callee as for a local
//!   call; its session does not know the difference.
//! - **Failure.** When a node stops being seen alive (heartbeats,
//!   `cluster-node-expiry`), its registrations leave every router, calls
//!   in flight at its callees fail `callee_lost`, and calls its callers
//!   made here are withdrawn at their callees.
//!
//! One task owns this state (`run`); the sessions reach it through an
//! unbounded channel whose traffic is bounded by construction (the calls
//! in flight, their credit windows), and forwarded invocations are
//! counted against `cluster-outbound-queue`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use minicbor::{Decode, Encode};
use plexus_protocol::methods::rpc::{InvokeParams, Policy};
use plexus_protocol::{RawValue, WireError};
use sqlx::Row;
use sqlx::postgres::PgPool;
use tokio::sync::{mpsc, watch};

use crate::conn::{Backward, Command, Conn, ConnId, InvokeEnd, ReplyTo, RoutedEvent};
use crate::hub::Hub;
use crate::rpc::{Directory, Endpoint, Forward, RegId, RemoteCallee};
use crate::session::error::RequestError;
use crate::storage::StorageError;

/// The connection id remote registrations are filed under in a router
/// (no local connection has it).
pub const REMOTE_CONN: ConnId = u64::MAX;

/// Withdrawn registration ids remembered, so that a directory read racing
/// a withdrawal does not bring one back.
pub const TOMBSTONES: usize = 65_536;

/// One registration, as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub struct Entry {
    /// The node of its callee.
    #[n(0)]
    pub node: String,
    /// Its id.
    #[n(1)]
    pub reg: u64,
    /// The procedure.
    #[n(2)]
    pub procedure: String,
    /// The procedure's policy.
    #[n(3)]
    pub policy: Policy,
    /// Calls in flight it takes.
    #[n(4)]
    pub max_concurrency: u64,
    /// The caller's claims it asked for.
    #[n(5)]
    pub disclose: Vec<String>,
    /// The callee's user.
    #[n(6)]
    pub user: String,
    /// The callee's session id.
    #[n(7)]
    pub session: String,
}

/// A directory notice on `PREFIX.d`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Notice {
    /// A registration was made.
    #[n(0)]
    Add(#[n(0)] Entry),
    /// Registrations of `node` were withdrawn.
    #[n(1)]
    Remove(#[n(0)] String, #[n(1)] Vec<u64>),
    /// `node` started again: its earlier registrations are gone.
    #[n(2)]
    Reset(#[n(0)] String),
}

/// How an invocation ended, between nodes.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum End {
    /// A result.
    #[n(0)]
    Result(#[n(0)] RawValue),
    /// A final chunk.
    #[n(1)]
    Final(#[n(0)] RawValue),
    /// An error answer.
    #[n(2)]
    Error(#[n(0)] WireError),
    /// The callee did not answer in time.
    #[n(3)]
    TimedOut,
    /// The callee went away.
    #[n(4)]
    Lost,
    /// The callee sent chunks past its credit.
    #[n(5)]
    Overrun,
    /// The callee's session has too many requests in flight.
    #[n(6)]
    Busy,
    /// The invocation exceeds the frame size.
    #[n(7)]
    TooLarge,
    /// No callee.
    #[n(8)]
    NoCallee,
}

impl End {
    fn from_end(e: InvokeEnd) -> End {
        match e {
            InvokeEnd::Result(v) => End::Result(v),
            InvokeEnd::Final(v) => End::Final(v),
            InvokeEnd::Error(e) => End::Error(e),
            InvokeEnd::TimedOut => End::TimedOut,
            InvokeEnd::Lost => End::Lost,
            InvokeEnd::Overrun => End::Overrun,
            InvokeEnd::Refused(RequestError::PayloadTooLarge(_)) => End::TooLarge,
            InvokeEnd::Refused(_) => End::Busy,
            InvokeEnd::NoCallee => End::NoCallee,
        }
    }

    fn into_end(self) -> InvokeEnd {
        match self {
            End::Result(v) => InvokeEnd::Result(v),
            End::Final(v) => InvokeEnd::Final(v),
            End::Error(e) => InvokeEnd::Error(e),
            End::TimedOut => InvokeEnd::TimedOut,
            End::Lost => InvokeEnd::Lost,
            End::Overrun => InvokeEnd::Overrun,
            End::Busy => InvokeEnd::Refused(RequestError::TooManyRequests(
                "the callee has too many calls in flight".into(),
            )),
            End::TooLarge => InvokeEnd::Refused(RequestError::PayloadTooLarge(
                "the invocation exceeds max_frame_size".into(),
            )),
            End::NoCallee => InvokeEnd::NoCallee,
        }
    }
}

/// A message on `PREFIX.r.NODE`, to that node.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
pub enum Msg {
    /// Invoke registration `reg` for call `call` of node `from`.
    #[n(0)]
    Invoke {
        /// The caller's node.
        #[n(0)]
        from: String,
        /// Its call id.
        #[n(1)]
        call: u64,
        /// The registration.
        #[n(2)]
        reg: u64,
        /// The `rpc.invoke` params.
        #[n(3)]
        params: RawValue,
        /// How long the callee may take, in ms.
        #[n(4)]
        timeout_ms: u64,
        /// The chunk window.
        #[n(5)]
        window: u64,
    },
    /// The caller relayed `chunks` more chunks of call `call` of `from`.
    #[n(1)]
    Credit {
        /// The caller's node.
        #[n(0)]
        from: String,
        /// Its call id.
        #[n(1)]
        call: u64,
        /// Chunks granted.
        #[n(2)]
        chunks: u64,
    },
    /// Call `call` of `from` is withdrawn.
    #[n(2)]
    Withdraw {
        /// The caller's node.
        #[n(0)]
        from: String,
        /// Its call id.
        #[n(1)]
        call: u64,
    },
    /// A chunk of this node's call `call`.
    #[n(3)]
    Chunk {
        /// The call id on the caller's node.
        #[n(0)]
        call: u64,
        /// The chunk.
        #[n(1)]
        data: RawValue,
    },
    /// The end of this node's call `call`.
    #[n(4)]
    End {
        /// The call id on the caller's node.
        #[n(0)]
        call: u64,
        /// How it ended.
        #[n(1)]
        end: End,
    },
}

/// The subject of directory notices.
pub fn directory_subject(prefix: &str) -> String {
    format!("{prefix}.d")
}

/// The subject of `node`'s call traffic.
pub fn node_subject(prefix: &str, node: &str) -> String {
    format!("{prefix}.r.{node}")
}

/// What the sessions hand the task.
enum Work {
    /// A command for a callee on `node`.
    Forward {
        node: Arc<str>,
        reg: RegId,
        command: Command,
    },
    /// News of a call a caller on `node` made here (`id`: its call id
    /// there; `call`: the call id here).
    Back {
        node: Arc<str>,
        id: u64,
        call: u64,
        event: RoutedEvent,
    },
    /// A registration was made here.
    Added(Entry),
    /// Registrations made here were withdrawn.
    Withdrawn(Vec<RegId>),
}

/// The sessions' way to the task.
#[derive(Debug, Clone)]
pub struct Link {
    tx: mpsc::UnboundedSender<Work>,
    /// Forwarded commands not yet taken by the task.
    queued: Arc<AtomicUsize>,
    max_queued: usize,
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Work::Forward { .. } => "Forward",
            Work::Back { .. } => "Back",
            Work::Added(_) => "Added",
            Work::Withdrawn(_) => "Withdrawn",
        })
    }
}

impl Forward for Link {
    fn forward(&self, node: &Arc<str>, reg: RegId, command: Command) -> Result<(), Command> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max_queued {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(command);
        }
        self.tx
            .send(Work::Forward {
                node: node.clone(),
                reg,
                command,
            })
            .map_err(|e| {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                match e.0 {
                    Work::Forward { command, .. } => command,
                    _ => unreachable_command(),
                }
            })
    }
}

/// A placeholder never built: the error of a send gives back what was
/// sent.
fn unreachable_command() -> Command {
    Command::Withdraw { call: 0 }
}

impl Directory for Link {
    fn withdrawn(&self, regs: Vec<RegId>) {
        let _ = self.tx.send(Work::Withdrawn(regs));
    }
}

/// The way back to a caller on another node.
#[derive(Debug)]
struct BackTo {
    node: Arc<str>,
    tx: mpsc::UnboundedSender<Work>,
}

impl Backward for BackTo {
    fn back(&self, id: u64, call: u64, event: RoutedEvent) -> bool {
        if matches!(event, RoutedEvent::Assigned(_)) {
            return false;
        }
        self.tx
            .send(Work::Back {
                node: self.node.clone(),
                id,
                call,
                event,
            })
            .is_ok()
    }
}

/// Why a registration was refused.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The procedure's policy or `single` callee conflicts.
    #[error("{0}")]
    Conflict(&'static str),
    /// This node is not seen alive by the cluster, or the database failed.
    #[error("the cluster's directory is unavailable")]
    Unavailable,
}

impl From<StorageError> for RegisterError {
    fn from(_: StorageError) -> Self {
        RegisterError::Unavailable
    }
}

impl From<sqlx::Error> for RegisterError {
    fn from(_: sqlx::Error) -> Self {
        RegisterError::Unavailable
    }
}

/// The cluster's RPC directory and call link of this node.
#[derive(Debug, Clone)]
pub struct ClusterRpc {
    node: Arc<str>,
    pool: PgPool,
    expiry: Duration,
    link: Link,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl ClusterRpc {
    /// Registers `procedure` for `conn` in the cluster's directory and in
    /// this node's router, and announces it; the registration's id.
    pub async fn register(
        &self,
        hub: &Hub,
        conn: &Arc<Conn>,
        procedure: &str,
        policy: Policy,
        max_concurrency: usize,
        disclose: Vec<Box<str>>,
    ) -> Result<RegId, RequestError> {
        hub.rpc
            .with(|r| r.check(conn.id, procedure, &policy))
            .map_err(crate::session::methods::rpc::route_error)?;
        let entry = Entry {
            node: self.node.to_string(),
            reg: 0,
            procedure: procedure.to_owned(),
            policy: policy.clone(),
            max_concurrency: max_concurrency as u64,
            disclose: disclose.iter().map(|d| d.to_string()).collect(),
            user: conn.user().to_owned(),
            session: conn.session.to_string(),
        };
        let reg = match self.insert_row(&entry).await {
            Ok(reg) => reg,
            Err(RegisterError::Conflict(m)) => return Err(RequestError::Conflict(m.into())),
            Err(RegisterError::Unavailable) => {
                return Err(RequestError::Unavailable {
                    message: "the cluster's directory is unavailable".into(),
                    retry_after_ms: Some(super::LINK_RETRY_AFTER_MS),
                });
            }
        };
        let entry = Entry { reg, ..entry };
        // Announced before it is in the router, so that its withdrawal,
        // whenever it comes, is announced after it.
        let _ = self.link.tx.send(Work::Added(entry));
        if hub.rpc.insert(
            reg,
            conn.id,
            Endpoint::Local(conn.clone()),
            procedure,
            policy,
            max_concurrency,
            disclose,
        ) {
            Ok(reg)
        } else {
            self.link.withdrawn(vec![reg]);
            Err(RequestError::Conflict(
                "the procedure is registered under another policy".into(),
            ))
        }
    }

    /// Inserts `entry`'s row under the procedure's lock, checking the
    /// policy against every alive node's registrations; its id.
    async fn insert_row(&self, entry: &Entry) -> Result<u64, RegisterError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('plexus.rpc:' || $1, 0))")
            .bind(&entry.procedure)
            .execute(&mut *tx)
            .await?;
        let alive: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM cluster_nodes WHERE id = $1 \
             AND seen_at >= now() - make_interval(secs => $2::int8 / 1000.0))",
        )
        .bind(&entry.node)
        .bind(ms(self.expiry))
        .fetch_one(&mut *tx)
        .await?;
        if !alive {
            return Err(RegisterError::Unavailable);
        }
        let rows = sqlx::query(
            "SELECT r.policy, count(*) FROM cluster_registrations r JOIN cluster_nodes n \
             ON n.id = r.node AND n.seen_at >= now() - make_interval(secs => $2::int8 / 1000.0) \
             WHERE r.procedure = $1 GROUP BY r.policy",
        )
        .bind(&entry.procedure)
        .bind(ms(self.expiry))
        .fetch_all(&mut *tx)
        .await?;
        for row in &rows {
            let policy: String = row.try_get(0)?;
            let n: i64 = row.try_get(1)?;
            if policy != entry.policy.as_str() {
                return Err(RegisterError::Conflict(
                    "the procedure is registered under another policy",
                ));
            }
            if entry.policy == Policy::Single && n > 0 {
                return Err(RegisterError::Conflict(
                    "the procedure has a single callee already",
                ));
            }
        }
        let reg: i64 = sqlx::query_scalar(
            "INSERT INTO cluster_registrations \
             (node, procedure, policy, max_concurrency, disclose, usr, session) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING reg",
        )
        .bind(&entry.node)
        .bind(&entry.procedure)
        .bind(entry.policy.as_str())
        .bind(i64::try_from(entry.max_concurrency).unwrap_or(i64::MAX))
        .bind(&entry.disclose)
        .bind(&entry.user)
        .bind(&entry.session)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(u64::try_from(reg).unwrap_or(0))
    }
}

/// Starts the directory and call link of node `node`: clears what an
/// earlier run of this node left, subscribes, reads the directory, and
/// runs until `shutdown`.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn start(
    hub: Arc<Hub>,
    client: async_nats::Client,
    prefix: String,
    node: Arc<str>,
    pool: PgPool,
    expiry: Duration,
    max_queued: usize,
    alive: watch::Receiver<Vec<String>>,
    up: watch::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
) -> Result<ClusterRpc, async_nats::SubscribeError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let link = Link {
        tx,
        queued: Arc::new(AtomicUsize::new(0)),
        max_queued: max_queued.max(1),
    };
    let dir = client.subscribe(directory_subject(&prefix)).await?;
    let calls = client.subscribe(node_subject(&prefix, &node)).await?;
    hub.rpc.set_directory(Arc::new(link.clone()));
    let rpc = ClusterRpc {
        node: node.clone(),
        pool: pool.clone(),
        expiry,
        link: link.clone(),
    };
    let task = Task {
        hub,
        client,
        prefix,
        node,
        pool,
        expiry,
        link,
        remote: HashMap::new(),
        tombstones: Tombstones::default(),
        outgoing: HashMap::new(),
        incoming: HashMap::new(),
        seen: HashSet::new(),
    };
    tokio::spawn(task.run(rx, dir, calls, alive, up, shutdown));
    Ok(rpc)
}

#[derive(Default)]
struct Tombstones {
    order: VecDeque<RegId>,
    set: HashSet<RegId>,
}

impl Tombstones {
    fn add(&mut self, reg: RegId) {
        if self.set.insert(reg) {
            self.order.push_back(reg);
            if self.order.len() > TOMBSTONES
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

/// What woke the task.
enum Ev {
    Work(Work),
    Directory(async_nats::Message),
    Call(async_nats::Message),
    Alive,
    Up,
    Tick,
}

struct Task {
    hub: Arc<Hub>,
    client: async_nats::Client,
    prefix: String,
    node: Arc<str>,
    pool: PgPool,
    expiry: Duration,
    link: Link,
    /// Other nodes' registrations in the router, by node.
    remote: HashMap<Arc<str>, HashSet<RegId>>,
    tombstones: Tombstones,
    /// Calls made here at callees elsewhere: call id → (node, reply).
    outgoing: HashMap<u64, (Arc<str>, ReplyTo)>,
    /// Calls made elsewhere at callees here: (node, its call id) → (call
    /// id here, callee).
    incoming: HashMap<(Arc<str>, u64), (u64, Arc<Conn>)>,
    /// Nodes seen alive at some heartbeat.
    seen: HashSet<Arc<str>>,
}

impl Task {
    #[allow(clippy::too_many_arguments)]
    async fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Work>,
        mut dir: async_nats::Subscriber,
        mut calls: async_nats::Subscriber,
        mut alive: watch::Receiver<Vec<String>>,
        mut up: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        // What an earlier run of this node left.
        if let Err(e) = sqlx::query("DELETE FROM cluster_registrations WHERE node = $1")
            .bind(&*self.node)
            .execute(&self.pool)
            .await
        {
            tracing::warn!(error = %e, "cannot clear this node's old registrations");
        }
        self.notice(&Notice::Reset(self.node.to_string())).await;
        self.reload().await;
        let mut tick = tokio::time::interval(self.expiry);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The heartbeat may have seen nodes before this task started.
        alive.mark_changed();
        loop {
            let ev = tokio::select! {
                w = rx.recv() => w.map(Ev::Work),
                m = dir.next() => m.map(Ev::Directory),
                m = calls.next() => m.map(Ev::Call),
                r = alive.changed() => r.ok().map(|()| Ev::Alive),
                r = up.changed() => r.ok().map(|()| Ev::Up),
                _ = tick.tick() => Some(Ev::Tick),
                _ = shutdown.wait_for(|s| *s) => None,
            };
            let Some(ev) = ev else { break };
            match ev {
                Ev::Work(w) => self.work(w).await,
                Ev::Directory(m) => self.directory(&m.payload),
                Ev::Call(m) => self.message(&m.payload).await,
                Ev::Alive => {
                    let now: Vec<String> = alive.borrow_and_update().clone();
                    self.nodes_alive(&now);
                }
                Ev::Up => {
                    let is_up = *up.borrow_and_update();
                    if is_up {
                        self.reload().await;
                    }
                }
                Ev::Tick => self.reload().await,
            }
        }
        // A clean stop: the others need not wait for this node's expiry.
        let _ = sqlx::query("DELETE FROM cluster_registrations WHERE node = $1")
            .bind(&*self.node)
            .execute(&self.pool)
            .await;
        self.notice(&Notice::Reset(self.node.to_string())).await;
        let _ = self.client.flush().await;
    }

    /// Publishes; false if NATS refused it (too large for its
    /// `max_payload`, or the client is closed).
    async fn publish(&self, subject: String, payload: Vec<u8>) -> bool {
        if let Err(e) = self.client.publish(subject, Bytes::from(payload)).await {
            metrics::counter!("plexus_cluster_dropped_total").increment(1);
            tracing::debug!(error = %e, "cluster rpc publish failed");
            false
        } else {
            metrics::counter!("plexus_cluster_sent_total").increment(1);
            true
        }
    }

    async fn notice(&self, n: &Notice) {
        if let Ok(b) = minicbor::to_vec(n) {
            self.publish(directory_subject(&self.prefix), b).await;
        }
    }

    /// Sends `m` to `node`; false if it could not be sent.
    async fn send(&self, node: &str, m: &Msg) -> bool {
        match minicbor::to_vec(m) {
            Ok(b) => self.publish(node_subject(&self.prefix, node), b).await,
            Err(_) => false,
        }
    }

    async fn work(&mut self, w: Work) {
        match w {
            Work::Forward { node, reg, command } => {
                self.link.queued.fetch_sub(1, Ordering::AcqRel);
                self.forward(node, reg, command).await;
            }
            Work::Back {
                node,
                id,
                call,
                event,
            } => {
                let m = match event {
                    RoutedEvent::Chunk(data) => Msg::Chunk { call: id, data },
                    RoutedEvent::End(end) => {
                        self.incoming.remove(&(node.clone(), id));
                        self.hub.rpc.finish(call);
                        Msg::End {
                            call: id,
                            end: End::from_end(end),
                        }
                    }
                    RoutedEvent::Assigned(_) => return,
                };
                self.send(&node, &m).await;
            }
            Work::Added(entry) => self.notice(&Notice::Add(entry)).await,
            Work::Withdrawn(regs) => {
                self.notice(&Notice::Remove(self.node.to_string(), regs.clone()))
                    .await;
                let ids: Vec<i64> = regs.iter().filter_map(|r| i64::try_from(*r).ok()).collect();
                let (pool, node) = (self.pool.clone(), self.node.clone());
                tokio::spawn(async move {
                    if let Err(e) = sqlx::query(
                        "DELETE FROM cluster_registrations WHERE node = $1 AND reg = ANY($2)",
                    )
                    .bind(&*node)
                    .bind(&ids)
                    .execute(&pool)
                    .await
                    {
                        tracing::debug!(error = %e, "cannot delete withdrawn registrations");
                    }
                });
            }
        }
    }

    /// A command of a caller here for a callee on `node`.
    async fn forward(&mut self, node: Arc<str>, reg: RegId, command: Command) {
        let m = match command {
            Command::Invoke {
                call,
                params,
                timeout,
                window,
                reply,
            } => {
                self.outgoing.insert(call, (node.clone(), reply));
                Msg::Invoke {
                    from: self.node.to_string(),
                    call,
                    reg,
                    params,
                    timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    window,
                }
            }
            Command::Credit { call, chunks } => Msg::Credit {
                from: self.node.to_string(),
                call,
                chunks,
            },
            Command::Withdraw { call } => {
                if let Some((_, reply)) = self.outgoing.remove(&call) {
                    reply.forget();
                }
                Msg::Withdraw {
                    from: self.node.to_string(),
                    call,
                }
            }
            _ => return,
        };
        if !self.send(&node, &m).await
            && let Msg::Invoke { call, .. } = m
            && let Some((_, reply)) = self.outgoing.remove(&call)
        {
            // Not sent (larger than NATS's `max_payload`, or the link is
            // closed): the caller hears at once, not at its deadline.
            reply.end(InvokeEnd::Lost);
        }
    }

    /// A message on this node's subject.
    async fn message(&mut self, payload: &[u8]) {
        metrics::counter!("plexus_cluster_received_total").increment(1);
        let Ok(m) = minicbor::decode::<Msg>(payload) else {
            tracing::debug!("malformed cluster rpc message");
            return;
        };
        match m {
            Msg::Invoke {
                from,
                call,
                reg,
                params,
                timeout_ms,
                window,
            } => {
                self.invoke(from.into(), call, reg, params, timeout_ms, window)
                    .await
            }
            Msg::Credit { from, call, chunks } => {
                if let Some((here, conn)) = self.incoming.get(&(from.into(), call)) {
                    let _ = conn.out.command(Command::Credit {
                        call: *here,
                        chunks,
                    });
                }
            }
            Msg::Withdraw { from, call } => {
                if let Some((here, conn)) = self.incoming.remove(&(from.into(), call)) {
                    let _ = conn.out.command(Command::Withdraw { call: here });
                    self.hub.rpc.finish(here);
                }
            }
            Msg::Chunk { call, data } => {
                if let Some((_, reply)) = self.outgoing.get(&call) {
                    reply.chunk(data);
                }
            }
            Msg::End { call, end } => {
                if let Some((_, reply)) = self.outgoing.remove(&call) {
                    reply.end(end.into_end());
                }
            }
        }
    }

    /// Call `call` of node `from` at registration `reg` here.
    async fn invoke(
        &mut self,
        from: Arc<str>,
        call: u64,
        reg: RegId,
        params: RawValue,
        timeout_ms: u64,
        window: u64,
    ) {
        let taken = self.hub.rpc.with(|r| {
            let here = r.next_call_id();
            r.take(here, reg).map(|a| (here, a))
        });
        let Some((here, a)) = taken else {
            // Withdrawn meanwhile.
            self.send(
                &from,
                &Msg::End {
                    call,
                    end: End::Lost,
                },
            )
            .await;
            return;
        };
        let Endpoint::Local(conn) = a.endpoint else {
            self.hub.rpc.finish(here);
            self.send(
                &from,
                &Msg::End {
                    call,
                    end: End::Lost,
                },
            )
            .await;
            return;
        };
        // The callee knows the call by this node's id (its credit and its
        // cancel name it).
        let renamed = params.decode::<InvokeParams<'_>>().ok().and_then(|mut p| {
            p.call = here;
            RawValue::encode_sized(&p, params.as_bytes().len() + 16).ok()
        });
        let params = match renamed {
            Some(p) => p,
            None => {
                self.hub.rpc.finish(here);
                self.send(
                    &from,
                    &Msg::End {
                        call,
                        end: End::Lost,
                    },
                )
                .await;
                return;
            }
        };
        let back = Arc::new(BackTo {
            node: from.clone(),
            tx: self.link.tx.clone(),
        });
        self.incoming.insert((from, call), (here, conn.clone()));
        let cmd = Command::Invoke {
            call: here,
            params,
            timeout: Duration::from_millis(timeout_ms),
            window,
            reply: ReplyTo::remote(back, call, here),
        };
        if let Err(Command::Invoke { reply, .. }) = conn.out.command(cmd) {
            // Its end comes back through the task and frees the slot.
            reply.end(InvokeEnd::Lost);
        }
    }

    /// A directory notice of another node.
    fn directory(&mut self, payload: &[u8]) {
        let Ok(n) = minicbor::decode::<Notice>(payload) else {
            tracing::debug!("malformed cluster directory notice");
            return;
        };
        match n {
            Notice::Add(e) if *e.node != *self.node => self.add(e),
            Notice::Remove(node, regs) if *node != *self.node => {
                self.remove(&node.into(), &regs);
            }
            Notice::Reset(node) if *node != *self.node => {
                // The node stopped, or started again: its earlier process
                // is gone with its callees and calls.
                self.node_dead(&node.into());
            }
            _ => {}
        }
    }

    fn add(&mut self, e: Entry) {
        if self.tombstones.set.contains(&e.reg) {
            return;
        }
        let node: Arc<str> = e.node.as_str().into();
        if self.remote.get(&node).is_some_and(|s| s.contains(&e.reg)) {
            return;
        }
        let endpoint = Endpoint::Remote(Arc::new(RemoteCallee {
            node: node.clone(),
            user: e.user.into(),
            session: e.session.into(),
            link: Arc::new(self.link.clone()),
        }));
        let conc = usize::try_from(e.max_concurrency).unwrap_or(usize::MAX);
        let disclose = e.disclose.into_iter().map(Box::from).collect();
        if self.hub.rpc.insert(
            e.reg,
            REMOTE_CONN,
            endpoint,
            &e.procedure,
            e.policy,
            conc,
            disclose,
        ) {
            self.remote.entry(node).or_default().insert(e.reg);
        }
    }

    fn remove(&mut self, node: &Arc<str>, regs: &[RegId]) {
        for r in regs {
            self.tombstones.add(*r);
        }
        if let Some(s) = self.remote.get_mut(node) {
            for r in regs {
                s.remove(r);
            }
            if s.is_empty() {
                self.remote.remove(node);
            }
        }
        self.hub.rpc.remove(regs);
    }

    /// The heartbeat's view changed: nodes seen before and not now are
    /// dead.
    fn nodes_alive(&mut self, alive: &[String]) {
        let alive: HashSet<&str> = alive.iter().map(String::as_str).collect();
        let dead: Vec<Arc<str>> = self
            .seen
            .iter()
            .filter(|n| !alive.contains(&***n))
            .cloned()
            .collect();
        for n in alive {
            if n != &*self.node && !self.seen.iter().any(|s| &**s == n) {
                self.seen.insert(n.into());
            }
        }
        for node in dead {
            self.seen.remove(&node);
            self.node_dead(&node);
        }
    }

    fn node_dead(&mut self, node: &Arc<str>) {
        tracing::info!(node = %node, "cluster node gone: its callees and calls leave");
        let regs: Vec<RegId> = self
            .remote
            .get(node)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        self.remove(node, &regs);
        // Calls at its callees: the replies drop, `callee_lost`.
        self.outgoing.retain(|_, (n, _)| n != node);
        // Calls of its callers: withdrawn at the callees here.
        let gone: Vec<(Arc<str>, u64)> = self
            .incoming
            .keys()
            .filter(|(n, _)| n == node)
            .cloned()
            .collect();
        for k in gone {
            if let Some((here, conn)) = self.incoming.remove(&k) {
                let _ = conn.out.command(Command::Withdraw { call: here });
                self.hub.rpc.finish(here);
            }
        }
    }

    /// Reads the directory: drops the rows of nodes not alive, and makes
    /// the router's remote registrations those of the alive nodes.
    async fn reload(&mut self) {
        let expiry = ms(self.expiry);
        let _ = sqlx::query(
            "DELETE FROM cluster_registrations WHERE node <> $1 AND node NOT IN \
             (SELECT id FROM cluster_nodes WHERE seen_at >= now() - make_interval(secs => $2::int8 / 1000.0))",
        )
        .bind(&*self.node)
        .bind(expiry)
        .execute(&self.pool)
        .await;
        let rows = match sqlx::query(
            "SELECT reg, node, procedure, policy, max_concurrency, disclose, usr, session \
             FROM cluster_registrations WHERE node <> $1 ORDER BY reg",
        )
        .bind(&*self.node)
        .fetch_all(&self.pool)
        .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the cluster's directory");
                return;
            }
        };
        let mut want: HashMap<Arc<str>, HashSet<RegId>> = HashMap::new();
        let mut entries = Vec::new();
        for r in &rows {
            let entry = (|| -> Result<Entry, sqlx::Error> {
                Ok(Entry {
                    reg: u64::try_from(r.try_get::<i64, _>(0)?).unwrap_or(0),
                    node: r.try_get(1)?,
                    procedure: r.try_get(2)?,
                    policy: Policy::from_text(r.try_get::<&str, _>(3)?),
                    max_concurrency: u64::try_from(r.try_get::<i64, _>(4)?).unwrap_or(1),
                    disclose: r.try_get(5)?,
                    user: r.try_get(6)?,
                    session: r.try_get(7)?,
                })
            })();
            if let Ok(e) = entry {
                want.entry(e.node.as_str().into())
                    .or_default()
                    .insert(e.reg);
                entries.push(e);
            }
        }
        // Registrations gone from the table.
        let stale: Vec<(Arc<str>, Vec<RegId>)> = self
            .remote
            .iter()
            .map(|(n, s)| {
                let keep = want.get(n);
                (
                    n.clone(),
                    s.iter()
                        .filter(|r| !keep.is_some_and(|k| k.contains(r)))
                        .copied()
                        .collect::<Vec<_>>(),
                )
            })
            .filter(|(_, v)| !v.is_empty())
            .collect();
        for (n, regs) in stale {
            self.remove(&n, &regs);
        }
        for e in entries {
            self.add(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let params = RawValue::encode_sized(&7u32, 8).unwrap();
        let msgs = [
            Msg::Invoke {
                from: "n1".into(),
                call: 9,
                reg: 12,
                params: params.clone(),
                timeout_ms: 5000,
                window: 16,
            },
            Msg::Credit {
                from: "n1".into(),
                call: 9,
                chunks: 8,
            },
            Msg::Withdraw {
                from: "n1".into(),
                call: 9,
            },
            Msg::Chunk {
                call: 9,
                data: params.clone(),
            },
            Msg::End {
                call: 9,
                end: End::Error(WireError::new(plexus_protocol::ErrorCode::Conflict, "x")),
            },
        ];
        for m in msgs {
            let b = minicbor::to_vec(&m).unwrap();
            assert_eq!(minicbor::decode::<Msg>(&b).unwrap(), m);
        }
        let n = Notice::Add(Entry {
            node: "n2".into(),
            reg: 3,
            procedure: "svc.a".into(),
            policy: Policy::Affinity,
            max_concurrency: 4,
            disclose: vec!["email".into()],
            user: "u".into(),
            session: "n2-1".into(),
        });
        let b = minicbor::to_vec(&n).unwrap();
        assert_eq!(minicbor::decode::<Notice>(&b).unwrap(), n);
        assert!(minicbor::decode::<Msg>(&[0xff, 0x00]).is_err());
    }

    #[test]
    fn ends_keep_their_meaning_across_nodes() {
        for e in [
            InvokeEnd::TimedOut,
            InvokeEnd::Lost,
            InvokeEnd::Overrun,
            InvokeEnd::NoCallee,
        ] {
            assert_eq!(End::from_end(e.clone()).into_end(), e);
        }
        assert!(matches!(
            End::from_end(InvokeEnd::Refused(RequestError::PayloadTooLarge(
                "x".into()
            )))
            .into_end(),
            InvokeEnd::Refused(RequestError::PayloadTooLarge(_))
        ));
        assert!(matches!(
            End::from_end(InvokeEnd::Refused(RequestError::TooManyRequests(
                "x".into()
            )))
            .into_end(),
            InvokeEnd::Refused(RequestError::TooManyRequests(_))
        ));
    }

    #[test]
    fn tombstones_are_bounded() {
        let mut t = Tombstones::default();
        for r in 0..(TOMBSTONES as u64 + 10) {
            t.add(r);
        }
        assert_eq!(t.set.len(), TOMBSTONES);
        assert!(!t.set.contains(&0) && t.set.contains(&(TOMBSTONES as u64 + 9)));
    }
}
