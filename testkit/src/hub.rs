//! A real hub on `127.0.0.1:0` for tests.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use plexus_server::auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
use plexus_server::config::Dur;
use plexus_server::{Config, Hub, Server, ServerOptions};

use crate::WAIT;
use crate::token::SECRET;

/// The configuration tests start from: port 0, `debug.*` methods on, no
/// clock leeway (token times are exact).
///
/// Record sync is off (it would open a database in `./data`); a hub on a
/// [`TestDb`](crate::TestDb) has it on.
pub fn test_config() -> Config {
    let mut c = Config {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        debug_methods: true,
        jwt_leeway: Dur(Duration::ZERO),
        ..Config::default()
    };
    c.sync.enabled = false;
    c
}

/// Token verification with [`SECRET`] (HS256) and the configuration's
/// issuer, audience, leeway and JWKS timings.
pub fn auth_settings(config: &Config) -> AuthSettings {
    let mut s = AuthSettings::new(KeySource::Hmac {
        secret: SECRET.to_vec(),
        alg: HmacAlg::HS256,
    });
    s.issuer = (!config.jwt_issuer.is_empty()).then(|| config.jwt_issuer.clone());
    s.audience = (!config.jwt_audience.is_empty()).then(|| config.jwt_audience.clone());
    s.leeway = config.jwt_leeway.0;
    s.jwks_refresh = config.jwks_refresh.0;
    s.jwks_timeout = config.jwks_timeout.0;
    s
}

/// The process-wide Prometheus recorder, installed on first use. The hub
/// library never installs one itself (an embedding application owns the
/// global recorder); tests that read `/metrics` get it here.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            plexus_server::metrics::install_recorder()
                .expect("no other metrics recorder in the test process")
        })
        .clone()
}

/// A running hub that begins its shutdown when dropped (the listener
/// closes and every connection gets `closing` and 4008).
#[derive(Debug)]
pub struct TestHub {
    server: Option<Server>,
    addr: SocketAddr,
}

impl TestHub {
    /// Starts a hub with [`test_config`], adjusted by `tweak`, verifying
    /// tokens signed with [`SECRET`].
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> TestHub {
        let mut config = test_config();
        tweak(&mut config);
        let settings = auth_settings(&config);
        TestHub::start_with_auth(settings, |c| *c = config).await
    }

    /// Starts a hub with explicit token-verification settings.
    pub async fn start_with_auth(
        settings: AuthSettings,
        tweak: impl FnOnce(&mut Config),
    ) -> TestHub {
        let mut config = test_config();
        tweak(&mut config);
        let auth = Authenticator::new(settings).expect("test auth settings are valid");
        let options = ServerOptions::default().with_metrics(metrics_handle());
        let server = Server::start_with(config, auth, options)
            .await
            .expect("the test hub starts");
        let addr = server.local_addr();
        TestHub {
            server: Some(server),
            addr,
        }
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The shared hub state.
    pub fn hub(&self) -> &Arc<Hub> {
        self.server().hub()
    }

    /// The server.
    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("the hub is running")
    }

    /// Shuts down gracefully (see [`Server::shutdown`]); returns the
    /// connections still open at the drain deadline.
    pub async fn shutdown(mut self) -> u64 {
        let server = self.server.take().expect("the hub is running");
        server.shutdown().await
    }

    /// Waits until exactly `n` connections are open (authenticated or not).
    pub async fn wait_for_connections(&self, n: u64) {
        let hub = self.hub().clone();
        let waited = tokio::time::timeout(WAIT, async move {
            while hub.open_connections() != n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "expected {n} open connections, have {}",
            self.hub().open_connections()
        );
    }
}

impl Drop for TestHub {
    fn drop(&mut self) {
        if let Some(server) = &self.server {
            server.hub().begin_shutdown();
        }
    }
}

/// An `[[http.api-keys]]` entry named `name` for `secret` (stored as its
/// digest), allowed `operations` on `topics`.
pub fn api_key(
    name: &str,
    secret: &str,
    operations: &[&str],
    topics: &[&str],
) -> plexus_server::http::keys::ApiKeyConfig {
    plexus_server::http::keys::ApiKeyConfig {
        name: name.into(),
        secret_sha256: Some(plexus_server::http::keys::digest_hex(secret)),
        secret: None,
        operations: operations.iter().map(|s| s.to_string()).collect(),
        topics: topics.iter().map(|s| s.to_string()).collect(),
        spaces: vec![],
        procedures: vec![],
    }
}
