//! The hub's shared state: configuration, authenticator, broker, the
//! connection registry and the shutdown signal. One `Arc<Hub>` per process,
//! handed to every connection.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use parking_lot::Mutex;
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::{ClosingParams, ServerLimits};
use plexus_protocol::{CloseCode, DecodeLimits, NotificationMethod};
use tokio::sync::watch;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::config::Config;
use crate::conn::{Conn, ConnId};
use crate::metrics::Metrics;
use crate::outbound::CloseRequest;

/// Why a connection could not be registered for its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegisterError {
    /// The user has `max_connections_per_user` connections already.
    TooManyConnections,
}

#[derive(Debug, Default)]
struct UserConns {
    conns: Vec<(ConnId, Option<Box<str>>, Arc<Conn>)>,
}

/// Shared state of one hub.
#[derive(Debug)]
pub struct Hub {
    /// The effective configuration.
    pub config: Config,
    /// Verifies tokens.
    pub auth: Authenticator,
    /// Subscriptions and presence.
    pub broker: Broker,
    /// Metric handles.
    pub metrics: Metrics,
    /// Limits announced to clients in the `auth` result.
    pub limits: ServerLimits,
    /// Decode limits after auth.
    pub decode_limits: DecodeLimits,
    /// Decode limits before auth.
    pub preauth_limits: DecodeLimits,
    /// When the hub started.
    pub started: Instant,
    /// Renders `/metrics`, when the application installed a recorder.
    pub metrics_handle: Option<metrics_exporter_prometheus::PrometheusHandle>,
    users: Mutex<HashMap<Arc<str>, UserConns>>,
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
        let mut limits = ServerLimits::default();
        limits.max_frame_size = config.max_frame_size as u64;
        limits.max_in_flight = config.max_in_flight as u64;
        limits.max_subscriptions = config.max_subscriptions as u64;
        limits.max_topic_len = config
            .max_topic_len
            .min(plexus_protocol::topic::MAX_TOPIC_LEN) as u64;
        limits.max_payload = config.max_payload as u64;
        limits.max_presence_info = config.max_presence_info as u64;
        limits.ping_interval_ms = plexus_protocol::duration_ms(config.ping_interval.0);
        limits.rate_per_sec = u64::from(config.rate_per_sec);
        limits.rate_burst = u64::from(config.rate_burst);
        limits.max_depth = u64::from(config.max_depth);
        limits.max_presence_page = config.max_presence_page as u64;
        limits.max_in_flight_bytes = u64::MAX;
        let decode_limits = DecodeLimits {
            max_frame_size: config.max_frame_size,
            max_depth: config.max_depth,
        };
        let preauth_limits = DecodeLimits {
            max_frame_size: config.max_preauth_frame_size.min(config.max_frame_size),
            max_depth: config.max_depth,
        };
        let node = format!("{:08x}", rand::random::<u32>());
        Hub {
            config,
            auth,
            broker: Broker::default(),
            metrics: Metrics::new(),
            limits,
            decode_limits,
            preauth_limits,
            started: Instant::now(),
            metrics_handle,
            users: Mutex::new(HashMap::new()),
            open: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            node,
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
        Arc::new(Conn::new(id, session, self.config.max_outbound_bytes))
    }

    /// Records that a connection from [`Hub::new_conn`] has ended.
    pub fn connection_closed(&self, conn: &Conn) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.connections.decrement(1.0);
        if let Some(user) = conn.user_arc() {
            let mut users = self.users.lock();
            if let Some(entry) = users.get_mut(user) {
                entry.conns.retain(|(id, _, _)| *id != conn.id);
                if entry.conns.is_empty() {
                    users.remove(user);
                }
            }
        }
    }

    /// Open connections, authenticated or not.
    pub fn open_connections(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection under its user. A connection
    /// with the same `instance` is replaced: it gets `closing` and 4009.
    pub fn register(&self, conn: &Arc<Conn>, instance: Option<&str>) -> Result<(), RegisterError> {
        let Some(user) = conn.user_arc() else {
            return Ok(());
        };
        let mut users = self.users.lock();
        let entry = users.entry(user.clone()).or_default();
        let replaced = instance.and_then(|inst| {
            let pos = entry
                .conns
                .iter()
                .position(|(_, i, _)| i.as_deref() == Some(inst))?;
            Some(entry.conns.swap_remove(pos).2)
        });
        if replaced.is_none() && entry.conns.len() >= self.config.max_connections_per_user {
            return Err(RegisterError::TooManyConnections);
        }
        entry
            .conns
            .push((conn.id, instance.map(Into::into), conn.clone()));
        drop(users);
        if let Some(old) = replaced {
            self.close_conn(
                &old,
                CloseCode::SessionReplaced,
                "replaced by a newer connection",
                None,
            );
        }
        Ok(())
    }

    /// Sends `closing` and asks the writer to close gracefully with `code`.
    pub fn close_conn(
        &self,
        conn: &Conn,
        code: CloseCode,
        reason: &str,
        retry_after_ms: Option<u64>,
    ) {
        if conn.out.is_closing() {
            return;
        }
        if let Some(frame) = closing_frame(code, reason, retry_after_ms) {
            conn.out.push(frame);
        }
        self.metrics.close(code);
        conn.out.close(CloseRequest::Graceful(code));
    }

    /// A receiver that turns true when the hub starts shutting down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Starts the graceful shutdown of every connection.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }
}

/// Encodes a `closing` notification.
pub fn closing_frame(code: CloseCode, reason: &str, retry_after_ms: Option<u64>) -> Option<Bytes> {
    let params = ClosingParams {
        code: code.as_u16(),
        reason,
        retry_after_ms,
    };
    encode_notification(plexus_protocol::methods::Closing::NAME, &params)
        .ok()
        .map(Bytes::from)
}
