//! Test support: a real hub on 127.0.0.1:0 and tokens for it.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use plexus_client::{Backoff, Client, ClientBuilder};
use plexus_server::auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
use plexus_server::config::Dur;
use plexus_server::{Config, Server};

pub const SECRET: &[u8] = b"plexus-sdk-test-secret-not-for-production-0123";

pub async fn hub(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        debug_methods: true,
        jwt_leeway: Dur(Duration::ZERO),
        ..Config::default()
    };
    // Record sync opens a database: off unless the test gives one
    // (`TestDb::apply` turns it on).
    config.sync.enabled = false;
    tweak(&mut config);
    let mut settings = AuthSettings::new(KeySource::Hmac {
        secret: SECRET.to_vec(),
        alg: HmacAlg::HS256,
    });
    settings.leeway = Duration::ZERO;
    Server::start(config, Authenticator::new(settings).unwrap())
        .await
        .unwrap()
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token for `sub`, allowed everything, valid for `ttl_secs`.
pub fn token_for(sub: &str, ttl_secs: u64) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": now() + ttl_secs,
        "plexus": { "sub": [">"], "pub": [">"], "presence": true },
    });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET),
    )
    .unwrap()
}

pub fn url(server: &Server) -> String {
    format!("ws://{}/v1/ws", server.local_addr())
}

pub fn builder(url: String, sub: &str) -> ClientBuilder {
    Client::builder(url)
        .token(token_for(sub, 3600))
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        })
}

pub async fn client(server: &Server, sub: &str) -> Client {
    builder(url(server), sub).connect().await.unwrap()
}

/// A TCP forwarder on a stable port in front of a hub whose address
/// changes (a hub restarted, in this process or another): clients keep
/// their URL. When the hub side of a connection ends, the client side is
/// dropped too; while there is no hub, connections are refused (accepted
/// and dropped at once).
pub struct Proxy {
    addr: std::net::SocketAddr,
    upstream: std::sync::Arc<std::sync::Mutex<Option<std::net::SocketAddr>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    pub async fn start(upstream: Option<std::net::SocketAddr>) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let upstream = std::sync::Arc::new(std::sync::Mutex::new(upstream));
        let up = upstream.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let target = *up.lock().unwrap();
                tokio::spawn(async move {
                    let Some(target) = target else { return };
                    let Ok(mut hub) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut hub).await;
                });
            }
        });
        Proxy {
            addr,
            upstream,
            task,
        }
    }

    /// Where new connections go (`None`: refused).
    pub fn set_upstream(&self, upstream: Option<std::net::SocketAddr>) {
        *self.upstream.lock().unwrap() = upstream;
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
