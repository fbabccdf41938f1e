//! Cluster mode: several hubs as one service, on one PostgreSQL database and
//! one NATS server (issue 14; the guide is `docs/cluster.md`).
//!
//! - [`wire`]: NATS subjects derived from topics, and the envelope of an
//!   event between nodes.
//! - [`interest`]: which subjects this node subscribes to, from the
//!   broker's interest events and the resumes in progress, reference-counted
//!   and coalesced.
//! - [`nodes`]: heartbeats in PostgreSQL and the nodes seen alive.
//!
//! What crosses nodes: a plain publish is delivered here and sent on its
//! topic's subject (at most once elsewhere, like NATS core); a durable
//! publish is committed in the shared database (offsets under a per-topic
//! row lock, see `crate::streams`), delivered here by the fan-out task and
//! sent the same way. Other nodes deliver a plain event to their
//! subscribers at once and hand a durable one to their streams layer,
//! whose sequencer keeps each topic in order, drops repeats and fills gaps
//! from the database, so an SDK subscriber sees every event once, in
//! order, whichever node it is on and whichever node published.
//!
//! One task owns the NATS connection's subscriptions (the interest task),
//! one the outgoing queue; each subscription has its reader task.

pub mod interest;
pub mod nodes;
pub mod presence;
pub mod rpc;
pub mod wire;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, mpsc, watch};

use crate::broker::Broker;
use crate::config::Config;
use crate::storage::StorageError;
use crate::streams::{LiveEvent, Relay, Streams};

pub use interest::Interest;
pub use nodes::NodeSeen;

/// The retry hint of a publish refused while the link is down.
pub const LINK_RETRY_AFTER_MS: u64 = 1000;
/// Most durable events a reader hands to the streams layer at once.
pub const READ_BATCH: usize = 256;
/// Most sequenced topics one sweep looks at.
pub const SWEEP_TOPICS: usize = 4096;
/// Messages NATS buffers per subscription before it calls the node a slow
/// consumer and drops (durable ones are then filled from the database).
pub const SUBSCRIPTION_CAPACITY: usize = 65_536;

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The NATS URL or options were refused.
    #[error("cannot use the cluster's NATS server: {0}")]
    Nats(String),
    /// The database could not be prepared.
    #[error("cluster database: {0}")]
    Storage(#[from] StorageError),
}

/// Counters of the cluster link (also exported as metrics).
#[derive(Debug, Default)]
pub struct LinkStats {
    /// Messages sent to NATS.
    pub sent: AtomicU64,
    /// Messages received from NATS.
    pub received: AtomicU64,
    /// Messages not sent because the outgoing queue was full.
    pub dropped: AtomicU64,
    /// Received messages that were not a cluster payload.
    pub malformed: AtomicU64,
    /// Times the link went down.
    pub disconnects: AtomicU64,
}

/// What another node's instance claim does here.
pub type ClaimHandler = Box<dyn Fn(&wire::Claim) + Send + Sync>;

/// What the shared parts of the node hold.
struct Inner {
    node: Arc<str>,
    prefix: String,
    client: async_nats::Client,
    broker: Arc<Broker>,
    streams: Option<Streams>,
    interest: Arc<Interest>,
    up: AtomicBool,
    db_up: AtomicBool,
    out: mpsc::Sender<(String, Bytes)>,
    stats: LinkStats,
    /// Subjects subscribed now.
    subjects: AtomicU64,
    seen: Mutex<Vec<NodeSeen>>,
    sweep: Notify,
    body_at: usize,
    presence: Arc<presence::ClusterPresence>,
    /// What to do with another node's instance claim (set by the hub).
    on_claim: std::sync::OnceLock<ClaimHandler>,
    /// The ids of the nodes alive at the last heartbeat, for the RPC task.
    alive: watch::Sender<Vec<String>>,
    /// Whether the link is up, for the RPC task.
    link: watch::Sender<bool>,
    /// The RPC directory and call link (set by [`Cluster::start_rpc`]).
    rpc: std::sync::OnceLock<rpc::ClusterRpc>,
    /// The database pool (nodes, presence, directory).
    pool: sqlx::PgPool,
    expiry: Duration,
    outbound_queue: usize,
    shutdown: watch::Receiver<bool>,
}

/// A node of a cluster: its NATS link and its view of the others.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("node", &self.inner.node)
            .field("up", &self.inner.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The events of the NATS connection, as the node acts on them.
#[derive(Debug, Clone, Copy)]
enum LinkEvent {
    Up,
    Down,
    Lossy,
}

impl Cluster {
    /// Joins the cluster `config.cluster` names as node `node`: connects to
    /// NATS (in the background: a NATS server that is down delays nothing,
    /// `/health` says so until it is up), starts the interest, outgoing,
    /// heartbeat and sweep tasks, and registers with the broker and the
    /// streams layer. The tasks end when `shutdown` turns true.
    pub async fn start(
        config: &Config,
        node: Arc<str>,
        broker: Arc<Broker>,
        streams: Option<Streams>,
        shutdown: watch::Receiver<bool>,
    ) -> Result<Cluster, ClusterError> {
        let (ev_tx, ev_rx) = mpsc::unbounded_channel::<LinkEvent>();
        let options = async_nats::ConnectOptions::new()
            .name(format!("plexus-{node}"))
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((100 * attempts as u64).min(1000))
            })
            .event_callback(move |e| {
                let tx = ev_tx.clone();
                async move {
                    let ev = match e {
                        async_nats::Event::Connected => Some(LinkEvent::Up),
                        async_nats::Event::Disconnected | async_nats::Event::Closed => {
                            Some(LinkEvent::Down)
                        }
                        async_nats::Event::SlowConsumer(_) => Some(LinkEvent::Lossy),
                        _ => None,
                    };
                    if let Some(ev) = ev {
                        let _ = tx.send(ev);
                    }
                }
            });
        let client = options
            .connect(config.cluster.as_str())
            .await
            .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let (out_tx, out_rx) = mpsc::channel(config.cluster_outbound_queue);
        let nodes = nodes::Nodes::connect(
            &config.database_url,
            &node,
            &config.listen.to_string(),
            config.cluster_node_expiry.0,
        )?;
        let interest = Arc::new(Interest::default());
        let notify = {
            let (out, interest, prefix) = (
                out_tx.clone(),
                interest.clone(),
                config.cluster_prefix.clone(),
            );
            move |topic: &str, frame: &Bytes, on: Option<bool>| {
                let key = wire::presence_key(topic);
                if on == Some(true) {
                    interest.change(&key, 1);
                }
                if out
                    .try_send((wire::key_subject(&prefix, &key), wire::presence(frame)))
                    .is_err()
                {
                    metrics::counter!("plexus_cluster_dropped_total").increment(1);
                }
                if on == Some(false) {
                    interest.change(&key, -1);
                }
            }
        };
        let (presence, presence_rx) =
            presence::ClusterPresence::new(node.clone(), nodes.pool().clone(), Box::new(notify));
        // What an earlier run of this node left in the presence table.
        match tokio::time::timeout(
            config.cluster_node_expiry.0,
            presence.expire(&[], true, &|t, f| {
                broker.presence.broadcast(t, f);
            }),
        )
        .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot clear this node's old presence"),
            Err(_) => tracing::warn!("the cluster database did not answer in time"),
        }
        let inner = Arc::new(Inner {
            node: node.clone(),
            prefix: config.cluster_prefix.clone(),
            client: client.clone(),
            broker: broker.clone(),
            streams: streams.clone(),
            interest,
            up: AtomicBool::new(false),
            db_up: AtomicBool::new(false),
            out: out_tx,
            stats: LinkStats::default(),
            subjects: AtomicU64::new(0),
            seen: Mutex::new(Vec::new()),
            sweep: Notify::new(),
            body_at: crate::streams::frame_from_body(&[]).len(),
            presence: presence.clone(),
            on_claim: std::sync::OnceLock::new(),
            alive: watch::Sender::new(Vec::new()),
            link: watch::Sender::new(false),
            rpc: std::sync::OnceLock::new(),
            pool: nodes.pool().clone(),
            expiry: config.cluster_node_expiry.0,
            outbound_queue: config.cluster_outbound_queue,
            shutdown: shutdown.clone(),
        });
        // Every node hears every instance claim.
        inner.interest.change(wire::CONTROL_KEY, 1);
        broker.add_interest_listener(inner.interest.clone());
        broker.presence.set_listener(presence.clone());
        tokio::spawn(presence::run_writer(presence, presence_rx));
        let cluster = Cluster { inner };
        if let Some(s) = &streams {
            s.set_relay(Arc::new(cluster.clone()));
        }
        tokio::spawn(run_out(cluster.inner.clone(), out_rx, shutdown.clone()));
        tokio::spawn(run_interest(cluster.inner.clone(), shutdown.clone()));
        tokio::spawn(run_events(cluster.inner.clone(), ev_rx, shutdown.clone()));
        tokio::spawn(run_heartbeat(
            cluster.inner.clone(),
            nodes,
            config.cluster_heartbeat.0,
            shutdown.clone(),
        ));
        tokio::spawn(run_sweeps(
            cluster.inner.clone(),
            config.cluster_node_expiry.0,
            shutdown,
        ));
        tracing::info!(node = %node, "cluster mode: joining");
        Ok(cluster)
    }

    /// This node's id.
    pub fn node(&self) -> &str {
        &self.inner.node
    }

    /// Starts routed RPC across nodes for `hub` (once, after the hub
    /// exists): the directory of registrations and the call link.
    pub async fn start_rpc(&self, hub: Arc<crate::hub::Hub>) -> Result<(), ClusterError> {
        let i = &self.inner;
        let r = rpc::start(
            hub,
            i.client.clone(),
            i.prefix.clone(),
            i.node.clone(),
            i.pool.clone(),
            i.expiry,
            i.outbound_queue,
            i.alive.subscribe(),
            i.link.subscribe(),
            i.shutdown.clone(),
        )
        .await
        .map_err(|e| ClusterError::Nats(e.to_string()))?;
        let _ = i.rpc.set(r);
        Ok(())
    }

    /// The RPC directory and call link, once started.
    pub fn rpc(&self) -> Option<&rpc::ClusterRpc> {
        self.inner.rpc.get()
    }

    /// Whether the NATS link is up.
    pub fn link_up(&self) -> bool {
        self.inner.up.load(Ordering::Acquire)
    }

    /// Whether the last heartbeat reached the database.
    pub fn database_up(&self) -> bool {
        self.inner.db_up.load(Ordering::Acquire)
    }

    /// The nodes seen alive at the last heartbeat.
    pub fn nodes_seen(&self) -> Vec<NodeSeen> {
        self.inner.seen.lock().clone()
    }

    /// The ids of the nodes seen alive at the last heartbeat.
    fn alive_ids(&self) -> Vec<String> {
        self.inner
            .seen
            .lock()
            .iter()
            .map(|n| n.id.clone())
            .collect()
    }

    /// The link's counters.
    pub fn stats(&self) -> &LinkStats {
        &self.inner.stats
    }

    /// The NATS subjects this node subscribes to now.
    pub fn subject_count(&self) -> u64 {
        self.inner.subjects.load(Ordering::Relaxed)
    }

    /// Sends a plain event published here to the other nodes. `false`
    /// (answer `unavailable`) when the link is down: a publish the other
    /// nodes cannot get is refused rather than delivered here alone.
    pub fn publish_plain(&self, topic: &str, frame: &Bytes) -> bool {
        if !self.link_up() {
            return false;
        }
        self.send(wire::subject(&self.inner.prefix, topic), wire::plain(frame));
        true
    }

    fn send(&self, subject: String, payload: Bytes) {
        if self.inner.out.try_send((subject, payload)).is_err() {
            self.inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("plexus_cluster_dropped_total").increment(1);
        }
    }

    /// The connections of `user` on the other alive nodes (the per-user
    /// limit is cluster-wide). 0 when the database cannot say: a database
    /// outage does not lock users out (each node still applies the limit
    /// to its own connections).
    pub async fn remote_connections(&self, user: &str) -> usize {
        let alive = self.alive_ids();
        match self.inner.presence.remote_connections(user, &alive).await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "cannot count a user's connections on other nodes");
                0
            }
        }
    }

    /// An authenticated connection registered here.
    pub fn connection_opened(&self, conn: &crate::conn::Conn) {
        self.inner.presence.connection(conn, true);
    }

    /// A connection here ended.
    pub fn connection_closed(&self, conn: &crate::conn::Conn) {
        self.inner.presence.connection(conn, false);
    }

    /// Tells the other nodes that `session` of `user` registered as
    /// `instance` at `at` (Unix ms): their older connection of that
    /// instance is replaced with 4009.
    pub fn claim_instance(&self, user: &str, instance: &str, session: &str, at: u64) {
        self.send(
            wire::key_subject(&self.inner.prefix, wire::CONTROL_KEY),
            wire::claim(user, instance, session, at),
        );
    }

    /// Sets what another node's instance claim does here (once).
    pub fn on_claim(&self, f: ClaimHandler) {
        let _ = self.inner.on_claim.set(f);
    }

    /// A page of the members of `topic` on every alive node from `cursor`,
    /// at most `limit` and about `max_bytes`: `presence.get` in cluster
    /// mode. Fails when the database cannot be read.
    pub async fn presence_page(
        &self,
        topic: &str,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<plexus_protocol::methods::Member>, Option<u64>), StorageError> {
        let p = &self.inner.presence;
        let alive = self.alive_ids();
        let remote = p.remote_page(topic, cursor, limit + 1, &alive).await?;
        let local = presence::local_from(p.tag, cursor).map_or_else(Vec::new, |from| {
            self.inner
                .broker
                .presence
                .members_from(topic, from, limit + 1)
        });
        Ok(presence::merge_page(p.tag, local, remote, limit, max_bytes))
    }

    /// The cluster part of `/health`.
    pub fn health(&self) -> serde_json::Value {
        let s = &self.inner.stats;
        serde_json::json!({
            "node": &*self.inner.node,
            "link": if self.link_up() { "up" } else { "down" },
            "database": if self.database_up() { "up" } else { "down" },
            "nodes": self.nodes_seen(),
            "subjects": self.subject_count(),
            "sent": s.sent.load(Ordering::Relaxed),
            "received": s.received.load(Ordering::Relaxed),
            "dropped": s.dropped.load(Ordering::Relaxed),
            "presence_dropped": self.inner.presence.dropped.load(Ordering::Relaxed),
            "disconnects": s.disconnects.load(Ordering::Relaxed),
        })
    }
}

impl Relay for Cluster {
    fn committed(&self, e: &LiveEvent) {
        self.send(
            wire::subject(&self.inner.prefix, &e.topic),
            wire::durable(e.offset, e.position, e.namespace, &e.frame),
        );
    }

    fn listening(&self, filter: &str, on: bool) {
        self.inner
            .interest
            .change(&wire::events_key(filter), if on { 1 } else { -1 });
    }
}

/// The outgoing queue's task: publishes in order.
async fn run_out(
    inner: Arc<Inner>,
    mut rx: mpsc::Receiver<(String, Bytes)>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (subject, payload) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match inner.client.publish(subject, payload).await {
            Ok(()) => {
                inner.stats.sent.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("plexus_cluster_sent_total").increment(1);
            }
            Err(e) => {
                inner.stats.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("plexus_cluster_dropped_total").increment(1);
                tracing::debug!(error = %e, "cluster publish failed");
            }
        }
    }
    let _ = inner.client.flush().await;
}

/// The interest task: applies the coalesced interest changes to the NATS
/// subscriptions, one round at a time.
async fn run_interest(inner: Arc<Inner>, mut shutdown: watch::Receiver<bool>) {
    let mut counts = interest::Counts::default();
    let mut readers: HashMap<Box<str>, tokio::task::JoinHandle<()>> = HashMap::new();
    loop {
        tokio::select! {
            () = inner.interest.wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        let round = counts.apply(inner.interest.take());
        if round.subscribe.is_empty() && round.unsubscribe.is_empty() {
            continue;
        }
        for p in &round.unsubscribe {
            if let Some(h) = readers.remove(p) {
                // Dropping the subscriber sends UNSUB.
                h.abort();
            }
        }
        // Shadows first: a new overlapping subscription must not deliver
        // what an existing one already does.
        inner.interest.set_subscribed(counts.wanted());
        let mut fresh = Vec::new();
        for p in round.subscribe {
            let subject = wire::key_subject(&inner.prefix, &p);
            match inner.client.subscribe(subject).await {
                Ok(sub) => {
                    let h = tokio::spawn(read(inner.clone(), p.clone(), sub));
                    readers.insert(p.clone(), h);
                    fresh.push(p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cluster subscribe failed");
                }
            }
        }
        inner
            .subjects
            .store(readers.len() as u64, Ordering::Relaxed);
        metrics::gauge!("plexus_cluster_subjects").set(readers.len() as f64);
        // Once the server has the new subscriptions, what was committed
        // before they took effect is read from the database.
        if !fresh.is_empty() && inner.client.flush().await.is_ok() {
            inner.sweep.notify_one();
        }
    }
    for (_, h) in readers {
        h.abort();
    }
}

/// One subscription's reader.
async fn read(inner: Arc<Inner>, via: Box<str>, mut sub: async_nats::Subscriber) {
    let mut batch = Vec::new();
    while let Some(m) = sub.next().await {
        handle(&inner, &via, m, &mut batch);
        while batch.len() < READ_BATCH {
            match sub.next().now_or_never() {
                Some(Some(m)) => handle(&inner, &via, m, &mut batch),
                _ => break,
            }
        }
        if !batch.is_empty()
            && let Some(s) = &inner.streams
            && !s.deliver_remote(std::mem::take(&mut batch)).await
        {
            break;
        }
    }
}

fn handle(inner: &Inner, via: &str, m: async_nats::Message, batch: &mut Vec<LiveEvent>) {
    inner.stats.received.fetch_add(1, Ordering::Relaxed);
    metrics::counter!("plexus_cluster_received_total").increment(1);
    let Some((kind, topic)) = wire::parse(&inner.prefix, m.subject.as_str()) else {
        inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if !inner.interest.delivers(via, topic) {
        return;
    }
    match wire::decode(&m.payload) {
        Some(wire::Payload::Presence(frame)) if kind == b'p' => {
            inner.broker.presence.broadcast(topic, &frame);
        }
        Some(wire::Payload::Claim(c)) if kind == b'c' => {
            if let Some(f) = inner.on_claim.get() {
                f(&c);
            }
        }
        Some(wire::Payload::Plain(frame)) if kind == b'e' => {
            let fan = inner.broker.publish(topic, &frame, None);
            metrics::counter!("plexus_deliveries_total").increment(fan.delivered);
        }
        Some(wire::Payload::Durable {
            offset,
            position,
            namespace,
            frame,
        }) if kind == b'e' => {
            if inner.streams.is_some() && frame.len() > inner.body_at {
                batch.push(LiveEvent {
                    topic: topic.into(),
                    namespace,
                    offset,
                    position,
                    frame,
                    body_at: inner.body_at,
                    skip: None,
                });
            }
        }
        _ => {
            inner.stats.malformed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Acts on the NATS connection's events: link state, and a sweep after it
/// came back or dropped messages.
async fn run_events(
    inner: Arc<Inner>,
    mut rx: mpsc::UnboundedReceiver<LinkEvent>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let ev = tokio::select! {
            e = rx.recv() => match e { Some(e) => e, None => break },
            _ = shutdown.wait_for(|s| *s) => break,
        };
        match ev {
            LinkEvent::Up => {
                let was = inner.up.swap(true, Ordering::AcqRel);
                inner.link.send_replace(true);
                metrics::gauge!("plexus_cluster_link_up").set(1.0);
                tracing::info!(node = %inner.node, "cluster link up");
                if !was {
                    inner.sweep.notify_one();
                }
            }
            LinkEvent::Down => {
                inner.link.send_replace(false);
                if inner.up.swap(false, Ordering::AcqRel) {
                    inner.stats.disconnects.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(node = %inner.node, "cluster link down");
                }
                metrics::gauge!("plexus_cluster_link_up").set(0.0);
            }
            LinkEvent::Lossy => inner.sweep.notify_one(),
        }
    }
}

/// Writes this node's heartbeat and reads the nodes alive, every
/// `period`; removes this node's row on shutdown.
async fn run_heartbeat(
    inner: Arc<Inner>,
    nodes: nodes::Nodes,
    period: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        match nodes.beat().await {
            Ok((seen, silent)) => {
                if silent {
                    // Taken for dead meanwhile: its members were removed.
                    tracing::warn!(node = %inner.node, "this node was silent past its expiry: writing its presence again");
                    for (topic, conn) in inner.broker.presence.all_members() {
                        inner.presence.rewrite(&topic, &conn);
                    }
                }
                if !inner.db_up.swap(true, Ordering::AcqRel) {
                    tracing::info!(node = %inner.node, "cluster database up");
                }
                metrics::gauge!("plexus_cluster_nodes").set(seen.len() as f64);
                let alive: Vec<String> = seen.iter().map(|n| n.id.clone()).collect();
                *inner.seen.lock() = seen;
                inner.alive.send_if_modified(|a| {
                    let changed = *a != alive;
                    if changed {
                        a.clone_from(&alive);
                    }
                    changed
                });
                // The members of nodes that died leave.
                let broker = inner.broker.clone();
                if let Err(e) = inner
                    .presence
                    .expire(&alive, false, &|t, f| {
                        broker.presence.broadcast(t, f);
                    })
                    .await
                {
                    tracing::debug!(error = %e, "cannot expire presence");
                }
            }
            Err(e) => {
                if inner.db_up.swap(false, Ordering::AcqRel) {
                    tracing::warn!(node = %inner.node, error = %e, "cluster database down");
                }
            }
        }
    }
    nodes.leave().await;
}

/// Sweeps: for each durable topic this node sequences, delivers from the
/// database what it missed (after the link came back, after NATS dropped
/// messages, after new subscriptions, and every `period` for quiet topics
/// whose last event was lost).
async fn run_sweeps(inner: Arc<Inner>, period: Duration, mut shutdown: watch::Receiver<bool>) {
    let Some(streams) = inner.streams.clone() else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = inner.sweep.notified() => {}
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|s| *s) => break,
        }
        for (topic, last) in streams.sequenced_topics(SWEEP_TOPICS) {
            match streams.store().topic(&topic).await {
                Ok(Some(row)) if row.last_offset > last => {
                    streams.catch_up(topic, row.last_offset).await;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
}
