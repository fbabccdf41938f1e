//! Test support: start a real hub on 127.0.0.1:0 and talk to it over real
//! WebSockets with a minimal client that speaks the wire format directly.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    missing_docs,
    unreachable_pub
)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{AuthParams, AuthResult};
use plexus_protocol::{DecodeLimits, Frame, Notification, RawValue, WireError};
use plexus_server::auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
use plexus_server::{Config, Server};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"plexus-test-secret-not-for-production-0123456789";
pub const WAIT: Duration = Duration::from_secs(5);

pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        debug_methods: true,
        jwt_leeway: plexus_server::config::Dur(Duration::from_secs(0)),
        ..Config::default()
    }
}

pub fn auth_settings(config: &Config) -> AuthSettings {
    AuthSettings {
        key: KeySource::Hmac {
            secret: SECRET.to_vec(),
            alg: HmacAlg::HS256,
        },
        issuer: (!config.jwt_issuer.is_empty()).then(|| config.jwt_issuer.clone()),
        audience: (!config.jwt_audience.is_empty()).then(|| config.jwt_audience.clone()),
        leeway: config.jwt_leeway.0,
        jwks_refresh: config.jwks_refresh.0,
        jwks_timeout: config.jwks_timeout.0,
    }
}

/// Starts a hub with explicit token-verification settings.
pub async fn start_with_auth(settings: AuthSettings) -> Server {
    let auth = Authenticator::new(settings).unwrap();
    Server::start(test_config(), auth).await.unwrap()
}

/// Starts a hub with the test secret; `tweak` adjusts the configuration.
pub async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let mut config = test_config();
    tweak(&mut config);
    let auth = Authenticator::new(auth_settings(&config)).unwrap();
    Server::start(config, auth).await.unwrap()
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        .try_into()
        .unwrap()
}

/// Claims for a token; adjust before signing.
pub fn claims(
    sub: &str,
    subscribe: &[&str],
    publish: &[&str],
    presence: bool,
) -> serde_json::Value {
    serde_json::json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "plexus": { "sub": subscribe, "pub": publish, "presence": presence },
    })
}

pub fn sign(claims: &serde_json::Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret)).unwrap()
}

/// A token allowed everything under `>`.
pub fn token(sub: &str) -> String {
    sign(&claims(sub, &[">"], &[">"], true), Algorithm::HS256, SECRET)
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    pending: VecDeque<Frame>,
}

/// What ended a connection, as the client saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    Close(u16),
    CloseWithoutCode,
    Dropped,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("Sec-WebSocket-Protocol", "plexus.v1".parse().unwrap());
        let (ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
        assert_eq!(resp.headers()["sec-websocket-protocol"], "plexus.v1");
        Client {
            ws,
            next_id: 1,
            pending: VecDeque::new(),
        }
    }

    /// Wraps an already connected WebSocket.
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            next_id: 1,
            pending: VecDeque::new(),
        }
    }

    /// Connects and authenticates, panicking on failure.
    pub async fn authed(addr: SocketAddr, token: &str) -> (Client, AuthResult) {
        let mut c = Client::connect(addr).await;
        let r = c.auth(token).await.expect("auth succeeds");
        (c, r)
    }

    pub async fn auth(&mut self, token: &str) -> Result<AuthResult, WireError> {
        let params = AuthParams {
            token,
            instance: None,
            agent: Some("tests"),
        };
        self.call("auth", &params)
            .await
            .map(|r| r.decode().unwrap())
    }

    pub async fn send_bytes(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    /// Sends a request and returns its id.
    pub async fn request<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.send_bytes(encode_request(id, method, params).unwrap())
            .await;
        id
    }

    pub async fn notify<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) {
        let bytes = plexus_protocol::frame::encode_notification(method, params).unwrap();
        self.send_bytes(bytes).await;
    }

    /// Calls a method and waits for its response; other frames are kept.
    pub async fn call<T: minicbor::Encode<()>>(
        &mut self,
        method: &str,
        params: &T,
    ) -> Result<RawValue, WireError> {
        let id = self.request(method, params).await;
        self.response(id).await
    }

    pub async fn response(&mut self, id: u64) -> Result<RawValue, WireError> {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|f| matches!(f, Frame::Response(r) if r.id == id))
            && let Some(Frame::Response(r)) = self.pending.remove(pos)
        {
            return r.outcome;
        }
        loop {
            match self.read_frame().await {
                Some(Frame::Response(r)) if r.id == id => return r.outcome,
                Some(other) => self.pending.push_back(other),
                None => panic!("connection ended while waiting for response {id}"),
            }
        }
    }

    /// The next frame of any kind (pending first), or None when the
    /// connection ends.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        if let Some(f) = self.pending.pop_front() {
            return Some(f);
        }
        self.read_frame().await
    }

    /// The next notification with this method, skipping others.
    pub async fn notification(&mut self, method: &str) -> Notification {
        if let Some(pos) = self
            .pending
            .iter()
            .position(|f| matches!(f, Frame::Notification(n) if n.method == method))
            && let Some(Frame::Notification(n)) = self.pending.remove(pos)
        {
            return n;
        }
        loop {
            match self.read_frame().await {
                Some(Frame::Notification(n)) if n.method == method => return n,
                Some(other) => self.pending.push_back(other),
                None => panic!("connection ended while waiting for {method}"),
            }
        }
    }

    async fn read_frame(&mut self) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match msg {
                Ok(Message::Binary(b)) => {
                    return Some(
                        Frame::decode(b, &DecodeLimits::default()).expect("server frames decode"),
                    );
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads until the connection ends and says how; frames are kept.
    pub async fn ended(&mut self) -> Ended {
        loop {
            let msg = match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(m) => m,
                Err(_) => panic!("connection did not end"),
            };
            match msg {
                Some(Ok(Message::Close(Some(f)))) => return Ended::Close(u16::from(f.code)),
                Some(Ok(Message::Close(None))) => return Ended::CloseWithoutCode,
                Some(Ok(Message::Binary(b))) => {
                    if let Ok(f) = Frame::decode(b, &DecodeLimits::default()) {
                        self.pending.push_back(f);
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return Ended::Dropped,
            }
        }
    }

    /// Expects the connection to close with `code`, after a `closing`
    /// notification carrying the same code when `with_closing`.
    pub async fn expect_close(&mut self, code: u16, with_closing: bool) {
        assert_eq!(self.ended().await, Ended::Close(code));
        let closing = self.pending.iter().find_map(|f| match f {
            Frame::Notification(n) if n.method == "closing" => Some(
                n.params
                    .decode::<plexus_protocol::methods::ClosingParams>()
                    .unwrap()
                    .code,
            ),
            _ => None,
        });
        if with_closing {
            assert_eq!(
                closing,
                Some(code),
                "expected a closing notification with {code}"
            );
        }
    }

    /// Frames received but not yet consumed.
    pub fn pending(&mut self) -> &mut VecDeque<Frame> {
        &mut self.pending
    }
}

/// Encodes an arbitrary CBOR value for params.
pub fn raw<T: minicbor::Encode<()>>(v: &T) -> RawValue {
    RawValue::encode(v).unwrap()
}
