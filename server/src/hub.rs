//! The hub's shared state: configuration, authenticator, broker, the
//! connection registry and the shutdown signal. One `Arc<Hub>` per process,
//! handed to every connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use std::borrow::Cow;
use std::time::Duration;

use dashmap::DashMap;
use parking_lot::Mutex;
use plexus_protocol::methods::ServerLimits;
use plexus_protocol::{CloseCode, DecodeLimits};
use tokio::sync::watch;

use crate::auth::{Authenticator, MAX_LEEWAY};
use crate::broker::Broker;
use crate::config::Config;
use crate::conn::{Conn, ConnId};
use crate::lag::LagClock;
use crate::metrics::Metrics;
use crate::outbound::CloseRequest;
use crate::session::core::CoreConfig;
use crate::session::registry::Registry;
use crate::streams::{FanOut as StreamsFanOut, LiveEvent, Streams};
use crate::sync::SyncEngine;

/// Delivers committed durable events to the broker's live subscribers
/// (the streams layer's [`StreamsFanOut`]): the event's frame is the
/// `event` notification with its offset and position, encoded once in the
/// commit; the publisher's connection is skipped when it asked for `echo:
/// false`.
#[derive(Debug, Clone)]
pub struct BrokerFanOut {
    broker: Arc<Broker>,
    deliveries: metrics::Counter,
}

impl BrokerFanOut {
    /// A fan-out into `broker`.
    pub fn new(broker: Arc<Broker>) -> Self {
        BrokerFanOut {
            broker,
            deliveries: metrics::counter!("plexus_deliveries_total"),
        }
    }
}

impl StreamsFanOut for BrokerFanOut {
    fn deliver(&self, event: &LiveEvent) -> u64 {
        let fan = self.broker.publish(&event.topic, &event.frame, event.skip);
        self.deliveries.increment(fan.delivered);
        fan.delivered
    }
}

/// Why a connection could not be registered for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The user has `max_connections_per_user` connections already.
    TooManyConnections,
}

#[derive(Debug, Default)]
struct UserConns {
    /// Each connection with its instance id and when it registered (Unix
    /// milliseconds: instance claims of other nodes are compared by it).
    conns: Vec<UserConn>,
}

/// A connection of a user: its id, instance id, handle, and registration
/// time (Unix ms).
type UserConn = (ConnId, Option<Box<str>>, Arc<Conn>, u64);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Shared state of one hub.
#[derive(Debug)]
pub struct Hub {
    /// The effective configuration.
    pub config: Config,
    /// Verifies tokens.
    pub auth: Authenticator,
    /// Subscriptions and presence.
    pub broker: Arc<Broker>,
    /// Durable streams, when a namespace is configured.
    pub streams: Option<Streams>,
    /// Record sync, when `[sync] enabled` (Y17).
    pub sync: Option<SyncEngine>,
    /// Metric handles.
    pub metrics: Metrics,
    /// Limits announced to clients in the `auth` result.
    pub limits: ServerLimits,
    /// The methods served after `auth`, with their handlers.
    pub registry: Registry,
    /// Routed RPC's router (issue 12).
    pub rpc: crate::rpc::Rpc,
    /// The session rules' parameters, shared by every connection.
    pub core: Arc<CoreConfig>,
    /// The hub's own measured lag (P19).
    pub lag: Arc<LagClock>,
    /// When the hub started.
    pub started: Instant,
    /// Renders `/metrics`, when the application installed a recorder.
    pub metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The HTTP surface's keys and resume-id key.
    pub http: crate::http::HttpState,
    /// Cluster mode: this node's link to the others (set once, at start).
    pub cluster: std::sync::OnceLock<crate::cluster::Cluster>,
    users: Mutex<HashMap<Arc<str>, UserConns>>,
    /// Every open connection, authenticated or not (for shutdown).
    conns: DashMap<ConnId, Arc<Conn>>,
    open: AtomicU64,
    next_id: AtomicU64,
    node: String,
    shutdown: watch::Sender<bool>,
}

impl Hub {
    /// Builds the hub state; `metrics_handle` serves `/metrics`.
    pub fn new(
        config: Config,
        auth: Authenticator,
        metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    ) -> Hub {
        Hub::with_streams(
            config,
            auth,
            metrics_handle,
            Arc::new(Broker::default()),
            None,
        )
    }

    /// Builds the hub state around `broker` and, when durable namespaces
    /// are configured, the `streams` whose fan-out goes to that broker.
    pub fn with_streams(
        config: Config,
        auth: Authenticator,
        metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
        broker: Arc<Broker>,
        streams: Option<Streams>,
    ) -> Hub {
        Hub::with_services(config, auth, metrics_handle, broker, streams, None)
    }

    /// [`Hub::with_streams`], with the record-sync engine when `sync` is
    /// on (its methods are registered only then).
    pub fn with_services(
        config: Config,
        auth: Authenticator,
        metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
        broker: Arc<Broker>,
        streams: Option<Streams>,
        sync: Option<SyncEngine>,
    ) -> Hub {
        let limits = announced_limits(&config);
        let registry =
            crate::session::methods::registry_with(&config, streams.is_some(), sync.is_some());
        let core = Arc::new(core_config(&config, &registry, limits));
        let node = if config.node_id.is_empty() {
            format!("{:08x}", rand::random::<u32>())
        } else {
            config.node_id.clone()
        };
        let rpc = crate::rpc::Rpc::new(config.rpc.clone());
        Hub {
            http: crate::http::HttpState::new(&config),
            metrics: Metrics::new(registry.table()),
            config,
            auth,
            broker,
            streams,
            sync,
            limits,
            registry,
            rpc,
            core,
            lag: Arc::new(LagClock::default()),
            started: Instant::now(),
            metrics_handle,
            users: Mutex::new(HashMap::new()),
            conns: DashMap::new(),
            open: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            node,
            cluster: std::sync::OnceLock::new(),
            shutdown: watch::channel(false).0,
        }
    }

    /// A new connection (not yet authenticated), counted as open until
    /// [`Hub::connection_closed`].
    pub fn new_conn(&self) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.connections.increment(1.0);
        self.metrics.connections_total.increment(1);
        let session: Arc<str> = format!("{}-{id:x}", self.node).into();
        let conn = Arc::new(Conn::new(id, session, self.config.max_outbound_bytes));
        self.conns.insert(id, conn.clone());
        conn
    }

    /// Records that a connection from [`Hub::new_conn`] has ended.
    pub fn connection_closed(&self, conn: &Conn) {
        if self.conns.remove(&conn.id).is_none() {
            return;
        }
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.decrement(1.0);
        if let Some(user) = conn.user_arc() {
            // Cluster mode: its row goes (a no-op if it never registered,
            // or was replaced and removed from the map already).
            if let Some(c) = self.cluster.get() {
                c.connection_closed(conn);
            }
            let mut users = self.users.lock();
            if let Some(entry) = users.get_mut(user) {
                entry.conns.retain(|(id, _, _, _)| *id != conn.id);
                if entry.conns.is_empty() {
                    users.remove(user);
                }
            }
        }
    }

    /// This hub's node id: the prefix of its session ids, and its id in a
    /// cluster (`--node-id`, or random).
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Open connections, authenticated or not.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection under its user. A connection
    /// with the same `instance` is replaced: it gets `closing` and 4009.
    pub fn register(&self, conn: &Arc<Conn>, instance: Option<&str>) -> Result<(), RegisterError> {
        self.register_with(conn, instance, 0)
    }

    /// [`Hub::register`], counting `remote` connections of the user on the
    /// other nodes of a cluster against `max_connections_per_user`.
    pub fn register_with(
        &self,
        conn: &Arc<Conn>,
        instance: Option<&str>,
        remote: usize,
    ) -> Result<(), RegisterError> {
        let Some(user) = conn.user_arc() else {
            return Ok(());
        };
        let mut users = self.users.lock();
        let entry = users.entry(user.clone()).or_default();
        let replaced = instance.and_then(|inst| {
            let pos = entry
                .conns
                .iter()
                .position(|(_, i, _, _)| i.as_deref() == Some(inst))?;
            Some(entry.conns.swap_remove(pos).2)
        });
        if replaced.is_none() && entry.conns.len() + remote >= self.config.max_connections_per_user
        {
            return Err(RegisterError::TooManyConnections);
        }
        let at = unix_ms();
        entry
            .conns
            .push((conn.id, instance.map(Into::into), conn.clone(), at));
        drop(users);
        // Cluster mode: a connection of this instance on another node is
        // replaced too.
        if let Some(c) = self.cluster.get() {
            c.connection_opened(conn);
            if let Some(inst) = instance {
                c.claim_instance(user.as_ref(), inst, &conn.session, at);
            }
        }
        if let Some(old) = replaced {
            self.close_conn(
                &old,
                CloseCode::SessionReplaced,
                "replaced by a newer connection".into(),
                None,
            );
        }
        Ok(())
    }

    /// Cluster mode: another node registered `session` of `user` as
    /// `instance` at `at` (Unix ms). A connection here with that instance
    /// that registered earlier (ties: the smaller session id) is replaced
    /// (`closing`, 4009), as if it had registered here. Returns whether
    /// one was.
    pub fn instance_claimed(&self, user: &str, instance: &str, session: &str, at: u64) -> bool {
        let old = {
            let mut users = self.users.lock();
            let Some(entry) = users.get_mut(user) else {
                return false;
            };
            let Some(pos) = entry.conns.iter().position(|(_, i, c, t)| {
                i.as_deref() == Some(instance)
                    && &*c.session != session
                    && (*t, &*c.session) < (at, session)
            }) else {
                return false;
            };
            entry.conns.swap_remove(pos).2
        };
        self.close_conn(
            &old,
            CloseCode::SessionReplaced,
            "replaced by a newer connection".into(),
            None,
        );
        true
    }

    /// Asks a connection's session to close with `code` (it sends `closing`
    /// first when the code is announced, after what is already queued).
    pub fn close_conn(
        &self,
        conn: &Conn,
        code: CloseCode,
        reason: Cow<'static, str>,
        retry_after_ms: Option<u64>,
    ) {
        conn.out.request_close(CloseRequest {
            code,
            reason,
            retry_after_ms,
        });
    }

    /// Asks the connections of `user` (only `session`, when given) to close
    /// with `code`; returns how many were asked (the server API's
    /// `disconnect`).
    pub fn disconnect(&self, user: &str, session: Option<&str>, code: CloseCode) -> usize {
        let conns: Vec<Arc<Conn>> = {
            let users = self.users.lock();
            users.get(user).map_or_else(Vec::new, |u| {
                u.conns
                    .iter()
                    .filter(|(_, _, c, _)| session.is_none_or(|s| &*c.session == s))
                    .map(|(_, _, c, _)| c.clone())
                    .collect()
            })
        };
        for c in &conns {
            let retry = (code == CloseCode::GoingAway).then(|| self.shutdown_hint());
            self.close_conn(c, code, "disconnected by the server API".into(), retry);
        }
        conns.len()
    }

    /// The reconnect hint sent with 4008 on shutdown, in milliseconds.
    pub fn shutdown_hint(&self) -> u64 {
        plexus_protocol::duration_ms(self.config.shutdown_retry_hint.0)
    }

    /// A receiver that turns true when the hub starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts the graceful shutdown: the listener stops and every
    /// connection gets `closing` and 4008 with the retry hint.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
        // Idle HTTP sessions end at once: their pipes close.
        self.http.clear_pool();
        let hint = self.shutdown_hint();
        for c in self.conns.iter() {
            self.close_conn(
                c.value(),
                CloseCode::GoingAway,
                "server shutting down".into(),
                Some(hint),
            );
        }
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// The limits announced in the `auth` result.
pub fn announced_limits(config: &Config) -> ServerLimits {
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_frame_size = n(config.max_frame_size);
    limits.max_in_flight = n(config.max_in_flight);
    limits.max_subscriptions = n(config.max_subscriptions);
    limits.max_topic_len = n(config.max_topic_len);
    limits.max_payload = n(config.max_payload);
    limits.max_presence_info = n(config.max_presence_info);
    limits.ping_interval_ms = plexus_protocol::duration_ms(config.ping_interval.0);
    limits.rate_per_sec = u64::from(config.rate_per_sec);
    limits.rate_burst = u64::from(config.rate_burst);
    limits.max_depth = u64::from(config.max_depth);
    limits.max_presence_page = n(config.max_presence_page);
    limits.max_in_flight_bytes = n(config.max_in_flight_bytes);
    limits
}

/// The session rules' parameters from the configuration.
fn core_config(config: &Config, registry: &Registry, announced: ServerLimits) -> CoreConfig {
    let mut c = CoreConfig::new(registry.table().clone());
    c.auth_timeout = config.auth_timeout.0;
    c.ping_interval = config.ping_interval.0;
    c.pong_timeout = config.pong_timeout.0;
    // The leeway verification applies (whole seconds, capped), so E is
    // exactly when a token stops verifying.
    c.leeway = Duration::from_secs(config.jwt_leeway.0.min(MAX_LEEWAY).as_secs());
    c.token_expiring_lead = config.token_expiring_lead.0;
    c.close_linger = config.close_linger.0;
    c.rate_per_sec = config.rate_per_sec;
    c.rate_burst = config.rate_burst;
    c.rate_strikes = config.rate_strikes;
    c.max_in_flight = config.max_in_flight;
    c.max_in_flight_bytes = config.max_in_flight_bytes;
    // A callee's invocations are server requests (R2).
    c.max_server_requests = c
        .max_server_requests
        .max(usize::try_from(config.rpc.max_concurrency).unwrap_or(usize::MAX));
    c.preauth_limits = DecodeLimits {
        max_frame_size: config.max_preauth_frame_size,
        max_depth: config.max_depth,
    };
    c.limits = DecodeLimits {
        max_frame_size: config.max_frame_size,
        max_depth: config.max_depth,
    };
    c.announced = announced;
    c
}
