//! # plexus-server
//!
//! The Plexus hub: a WebSocket server speaking `plexus.v1`
//! (see `plexus-protocol` and `docs/protocol.md`).
//!
//! ## How the pieces fit
//!
//! - [`transport`]: hyper accepts HTTP connections (with a large listen
//!   backlog), serves `/health` and `/metrics`, and upgrades `/v1/ws` to a
//!   [`transport::ws::WsLink`] that it hands to [`session::run`]. A link is
//!   transport-neutral ([`transport::link::Link`]): frames, pings and
//!   closes in and out.
//! - [`session`]: one task per connection (the driver) owns the link and
//!   runs the sans-IO [`session::core::Core`], where every session rule
//!   lives (auth, deadlines, rate and in-flight limits, keepalive, the close
//!   decision), and the handlers of the open, typed
//!   [`session::registry::Registry`] (sync, async, streamed with credit, a
//!   fallback).
//! - [`outbound`]: each connection's bounded queue of encoded frames,
//!   charged for the memory it really holds, with credit for bulk senders.
//! - [`auth`]: JWT verification into a [`auth::Principal`] with
//!   capabilities that every operation consults.
//! - [`broker`]: the subject index (exact topics in a sharded map, wildcard
//!   patterns in a token trie) and presence; it owns subscription
//!   lifecycle and reports interest changes. A publish is encoded once and
//!   its bytes are shared with every subscriber.
//! - [`rpc`]: routed RPC, the sans-IO router of registrations, policies
//!   and queues that only the `rpc.*` methods consult.
//! - [`hub`]: the shared state; [`config`]: settings, validated at start;
//!   [`metrics`]: Prometheus handles; [`lag`]: the hub's own measured lag;
//!   [`logging`]: the binary's log output.
//!
//! [`Server`] starts a hub on a listener and shuts it down gracefully; the
//! `plexus` binary and the integration tests (through `plexus-testkit`)
//! both use it.
#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod cluster;
pub mod config;
pub mod conn;
pub mod http;
pub mod hub;
pub mod idmap;
pub mod lag;
pub mod logging;
pub mod metrics;
pub mod outbound;
pub mod rpc;
pub mod session;
pub mod storage;
pub mod streams;
pub mod sync;
pub mod transport;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use config::Config;
pub use hub::Hub;

use auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
use config::HmacAlgName;

/// Why the hub could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The public key file could not be read.
    #[error("cannot read the public key file {path}: {source}")]
    PublicKey {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The settings cannot work together.
    #[error(transparent)]
    Settings(#[from] config::SettingsError),
    /// The key material is unusable.
    #[error("cannot set up token verification: {0}")]
    Auth(#[from] auth::AuthSetupError),
    /// The database of the durable streams could not be opened (or its
    /// migrations applied).
    #[error("cannot open the database {url}: {source}")]
    Storage {
        /// Where it is (password masked).
        url: String,
        /// Why.
        source: storage::StorageError,
    },
    /// The durable streams could not start on the database.
    #[error("cannot start the durable streams: {0}")]
    Streams(#[from] streams::OpenError),
    /// Cluster mode could not start.
    #[error("cannot join the cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    /// Record sync could not start on the database.
    #[error("cannot start record sync on the database {url}: {source}")]
    Sync {
        /// Where it is (password masked).
        url: String,
        /// Why.
        source: storage::StorageError,
    },
    /// The development key could not be created or read.
    #[error("cannot create or read the development key in {dir}: {source}")]
    DevKey {
        /// The data directory.
        dir: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Where the verification key came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyOrigin {
    /// `--jwt-secret`.
    Secret,
    /// `--jwt-public-key`.
    PublicKey,
    /// `--jwks-url`.
    Jwks,
    /// The development key in the data directory (`created` on this start).
    DevKey {
        /// Whether this start created it.
        created: bool,
    },
}

/// Builds the token-verification settings from the configuration, creating
/// the development key when no key is configured.
pub fn auth_settings(config: &Config) -> Result<(AuthSettings, KeyOrigin), StartError> {
    let hmac = |alg: HmacAlgName| match alg {
        HmacAlgName::HS256 => HmacAlg::HS256,
        HmacAlgName::HS384 => HmacAlg::HS384,
        HmacAlgName::HS512 => HmacAlg::HS512,
    };
    let (key, origin) = if !config.jwt_secret.is_empty() {
        (
            KeySource::Hmac {
                secret: config.jwt_secret.as_bytes().to_vec(),
                alg: hmac(config.jwt_hmac_alg),
            },
            KeyOrigin::Secret,
        )
    } else if !config.jwt_public_key.as_os_str().is_empty() {
        let pem =
            std::fs::read(&config.jwt_public_key).map_err(|source| StartError::PublicKey {
                path: config.jwt_public_key.clone(),
                source,
            })?;
        (KeySource::PublicKeyPem { pem }, KeyOrigin::PublicKey)
    } else if !config.jwks_url.is_empty() {
        (
            KeySource::Jwks {
                url: config.jwks_url.clone(),
            },
            KeyOrigin::Jwks,
        )
    } else {
        let (secret, created) =
            auth::load_or_create_dev_key(&config.data_dir).map_err(|source| {
                StartError::DevKey {
                    dir: config.data_dir.clone(),
                    source,
                }
            })?;
        (
            KeySource::Hmac {
                secret,
                alg: HmacAlg::HS256,
            },
            KeyOrigin::DevKey { created },
        )
    };
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Ok((
        AuthSettings {
            key,
            issuer: non_empty(&config.jwt_issuer),
            audience: non_empty(&config.jwt_audience),
            leeway: config.jwt_leeway.0,
            jwks_refresh: config.jwks_refresh.0,
            jwks_timeout: config.jwks_timeout.0,
        },
        origin,
    ))
}

/// Options for [`Server::start_with`] beyond the configuration.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// The handle of an installed Prometheus recorder: when set, the hub
    /// serves `/metrics` from it and folds its histograms on a timer.
    /// Without it `/metrics` answers 404. See
    /// [`metrics::install_recorder`].
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl ServerOptions {
    /// Serves `/metrics` from `handle`.
    pub fn with_metrics(mut self, handle: metrics_exporter_prometheus::PrometheusHandle) -> Self {
        self.metrics = Some(handle);
        self
    }
}

/// A running hub.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    hub: Arc<Hub>,
    accept: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `config.listen` and starts serving, with default
    /// [`ServerOptions`] (no `/metrics`).
    pub async fn start(config: Config, auth: Authenticator) -> Result<Server, StartError> {
        Server::start_with(config, auth, ServerOptions::default()).await
    }

    /// Binds `config.listen` and starts serving.
    pub async fn start_with(
        config: Config,
        auth: Authenticator,
        options: ServerOptions,
    ) -> Result<Server, StartError> {
        config.validate()?;
        let addr = config.listen;
        let listener = transport::listen(addr, config.listen_backlog)
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        let broker = Arc::new(broker::Broker::default());
        let streams = open_streams(&config, &broker).await?;
        let sync = open_sync(&config).await?;
        auth.spawn_jwks_refresh();
        let hub = Arc::new(Hub::with_services(
            config,
            auth,
            options.metrics.clone(),
            broker,
            streams,
            sync,
        ));
        hub.lag.spawn_ticker();
        if hub.config.clustered() {
            // The cluster's tables, also when no `[[streams]]` namespace
            // opened the database (migrations are idempotent).
            if !hub.config.no_migrate {
                storage::migrate(&hub.config.store_options())
                    .await
                    .map_err(|source| StartError::Storage {
                        url: hub.config.database_display(),
                        source,
                    })?;
            }
            let c = cluster::Cluster::start(
                &hub.config,
                hub.node().into(),
                hub.broker.clone(),
                hub.streams.clone(),
                hub.shutdown_signal(),
            )
            .await?;
            let weak = Arc::downgrade(&hub);
            c.on_claim(Box::new(move |claim| {
                if let Some(h) = weak.upgrade() {
                    h.instance_claimed(&claim.user, &claim.instance, &claim.session, claim.at);
                }
            }));
            c.start_rpc(hub.clone()).await?;
            let _ = hub.cluster.set(c);
        }
        if let Some(engine) = &hub.sync {
            spawn_sweeper(engine.clone(), hub.shutdown_signal());
        }
        let accept = tokio::spawn(transport::serve(listener, hub.clone()));
        if let Some(handle) = options.metrics {
            // Histogram samples accumulate until folded into buckets: fold
            // them on a timer, not only when /metrics is scraped.
            let weak = Arc::downgrade(&hub);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(metrics::UPKEEP_INTERVAL);
                loop {
                    tick.tick().await;
                    if weak.upgrade().is_none() {
                        break;
                    }
                    handle.run_upkeep();
                }
            });
        }
        Ok(Server { addr, hub, accept })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The shared hub state.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    /// Stops accepting, sends `closing` and close 4008 to every connection,
    /// and waits for them to drain, at most `shutdown_grace`; then closes
    /// the durable streams (the writer commits what is queued, the fan-out
    /// drains, the database is closed) and record sync (likewise). Returns the number of connections
    /// still open at the deadline.
    pub async fn shutdown(self) -> u64 {
        self.hub.begin_shutdown();
        let _ = self.accept.await;
        let deadline = tokio::time::Instant::now() + self.hub.config.shutdown_grace.0;
        while self.hub.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.hub.open_connections();
        if let Some(s) = &self.hub.streams {
            s.clone().close().await;
        }
        if let Some(e) = &self.hub.sync {
            e.clone().close().await;
        }
        left
    }
}

/// Opens the database and the durable streams when `config` has a
/// `[[streams]]` namespace (decision S1: there is no default namespace;
/// without one the database is not opened at all).
pub async fn open_streams(
    config: &Config,
    broker: &Arc<broker::Broker>,
) -> Result<Option<streams::Streams>, StartError> {
    if config.streams.streams.is_empty() {
        return Ok(None);
    }
    let options = config.store_options();
    let mut streams_config = config.streams.clone();
    // Cluster mode: other nodes write the same database.
    streams_config.storage.shared = config.clustered();
    let store = storage::open(&options)
        .await
        .map_err(|source| StartError::Storage {
            url: config.database_display(),
            source,
        })?;
    let sink: Arc<dyn streams::FanOut> = Arc::new(hub::BrokerFanOut::new(broker.clone()));
    let s =
        streams::Streams::open(store, streams_config, sink, Arc::new(streams::SystemClock)).await?;
    Ok(Some(s))
}

/// Opens record sync on the database when `[sync] enabled` (decision Y17:
/// on by default, on the same database as the durable streams).
pub async fn open_sync(config: &Config) -> Result<Option<sync::SyncEngine>, StartError> {
    if !config.sync.enabled {
        return Ok(None);
    }
    if config.clustered() {
        // Its engine caches what only one writer may (docs/cluster.md).
        tracing::warn!("record sync is not served in cluster mode");
        return Ok(None);
    }
    let err = |source| StartError::Sync {
        url: config.database_display(),
        source,
    };
    // Hubs of one process (tests, embedders) starting together on a new
    // SQLite file would race to apply the migrations: open one at a time.
    static OPENING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let guard = OPENING.lock().await;
    let store = sync::store::open(&config.store_options())
        .await
        .map_err(err)?;
    drop(guard);
    let engine = sync::SyncEngine::open(
        store,
        config.sync.engine(config.max_frame_size),
        Arc::new(streams::SystemClock),
    )
    .await
    .map_err(err)?;
    Ok(Some(engine))
}

/// Sweeps expired records and old tombstones every `sweep_interval` (one
/// round per tick, more rounds at once while a round hits `sweep_limit`)
/// until shutdown begins.
fn spawn_sweeper(engine: sync::SyncEngine, shutdown: tokio::sync::watch::Receiver<bool>) {
    use futures_util::StreamExt;
    let mut tick = tokio::time::interval(engine.config().sweep_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let ticks = futures_util::stream::unfold(tick, |mut t| async move {
        t.tick().await;
        Some(((), t))
    })
    // The interval's first tick is at once: the first sweep waits one period.
    .skip(1);
    tokio::spawn(sweep_on(engine, shutdown, Box::pin(ticks)));
}

/// The sweeper's loop: a sweep on each of `ticks` (injected by tests).
async fn sweep_on(
    engine: sync::SyncEngine,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    mut ticks: std::pin::Pin<Box<dyn futures_util::Stream<Item = ()> + Send>>,
) {
    use futures_util::StreamExt;
    let limit = u64::from(engine.config().sweep_limit);
    loop {
        tokio::select! {
            t = ticks.next() => if t.is_none() { break },
            _ = shutdown.wait_for(|s| *s) => break,
        }
        // Bounded: at most 16 rounds per tick.
        for _ in 0..16 {
            match engine.sweep().await {
                Ok(r) => {
                    if r.expired > 0 || r.purged > 0 {
                        ::metrics::counter!("plexus_sync_swept_total", "kind" => "expired")
                            .increment(r.expired);
                        ::metrics::counter!("plexus_sync_swept_total", "kind" => "purged")
                            .increment(r.purged);
                    }
                    if r.expired < limit && r.purged < limit {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "record sync sweep failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::methods::sync::{SyncOp, SyncPushParams, hlc};

    /// The sweeper sweeps on each tick (injected) and expires records by
    /// the engine's clock (a manual one), until shutdown.
    #[tokio::test]
    async fn the_sweeper_expires_records_on_each_tick_until_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let store = sync::store::open(&storage::StoreOptions::in_data_dir(dir.path()))
            .await
            .unwrap();
        let clock = streams::ManualClock::new(1_700_000_000_000);
        let engine =
            sync::SyncEngine::open(store, sync::SyncConfig::default(), Arc::new(clock.clone()))
                .await
                .unwrap();
        let now = 1_700_000_000_000u64;
        let mut op = SyncOp::put("n", "a", b"v".to_vec());
        op.expires_at = Some(now + 1_000);
        engine
            .push(SyncPushParams::new("s", "c", 1, hlc(now, 0), vec![op]))
            .await
            .unwrap();
        let mut changes = engine.watch("s");
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let (tick, ticks) = tokio::sync::mpsc::channel::<()>(1);
        let ticks = futures_util::stream::unfold(ticks, |mut rx| async move {
            rx.recv().await.map(|()| ((), rx))
        });
        let task = tokio::spawn(sweep_on(engine.clone(), shutdown, Box::pin(ticks)));
        // Not yet expired: a tick changes nothing.
        tick.send(()).await.unwrap();
        // Expired by the engine's clock: the next tick turns it into a
        // tombstone at a new position.
        clock.advance(2_000);
        tick.send(()).await.unwrap();
        let c = changes.recv().await.unwrap();
        assert_eq!((c.prev, c.position), (1, 2));
        assert!(c.records[0].deleted);
        assert_eq!(engine.info("s").await.unwrap().usage.records, 0);
        // Shutdown ends the loop.
        stop.send(true).unwrap();
        task.await.unwrap();
        assert!(tick.send(()).await.is_err(), "the loop is gone");
        engine.close().await;
    }
}
