//! A bench connection to the hub: the WebSocket, `auth`, `subscribe`, and
//! opening many at once.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{AuthParams, AuthResult, ServerLimits, SubscribeParams};
use plexus_protocol::{DecodeLimits, Frame, RawValue};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::UrlError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::procs::token;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single wait in a scenario may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// Why a bench connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    /// WebSocket-level failure.
    #[error("websocket: {0}")]
    Ws(#[from] tokio_tungstenite::tungstenite::Error),
    /// The hub answered with an error.
    #[error("hub error: {0}")]
    Hub(String),
    /// Timed out or the connection ended.
    #[error("no answer")]
    NoAnswer,
}

/// An authenticated connection and the limits the hub announced on it.
#[derive(Debug)]
pub struct Session {
    /// The WebSocket.
    pub ws: Ws,
    /// The `limits` of the `auth` result (keys a hub predates are 0).
    pub limits: ServerLimits,
}

/// Opens a WebSocket with the plexus.v1 subprotocol.
pub async fn open(url: &str) -> Result<Ws, ConnError> {
    open_from(url, None).await
}

/// Opens a WebSocket from a given local address (e.g. `127.0.0.2`), so one
/// load generator can exceed the ephemeral ports of a single source
/// address.
pub async fn open_from(url: &str, source: Option<IpAddr>) -> Result<Ws, ConnError> {
    let mut req = url.into_client_request()?;
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(plexus_protocol::SUBPROTOCOL),
    );
    let config = Some(crate::scenario::client_ws_config());
    let connecting = async {
        let host = req.uri().host().unwrap_or("127.0.0.1").to_owned();
        let port = req.uri().port_u16().unwrap_or(80);
        let peer: SocketAddr = format!("{host}:{port}")
            .parse()
            .map_err(|_| tokio_tungstenite::tungstenite::Error::Url(UrlError::NoHostName))?;
        let tcp = crate::net::connect(peer, source).await?;
        tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(tcp), config).await
    };
    let (ws, _) = tokio::time::timeout(WAIT, connecting)
        .await
        .map_err(|_| ConnError::NoAnswer)??;
    Ok(ws)
}

/// Sends a request and waits for its response (other frames are dropped).
pub async fn call<T: minicbor::Encode<()>>(
    ws: &mut Ws,
    id: u64,
    method: &str,
    params: &T,
) -> Result<RawValue, ConnError> {
    let frame = encode_request(id, method, params).map_err(|e| ConnError::Hub(e.to_string()))?;
    ws.send(Message::Binary(frame.into())).await?;
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .map_err(|_| ConnError::NoAnswer)?;
        match msg {
            Some(Ok(Message::Binary(b))) => {
                if let Ok(Frame::Response(r)) = Frame::decode(b, &DecodeLimits::default())
                    && r.id == id
                {
                    return r.outcome.map_err(|e| ConnError::Hub(e.to_string()));
                }
            }
            Some(Ok(Message::Close(_))) | None => return Err(ConnError::NoAnswer),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// Authenticates with `token` and returns the announced limits.
pub async fn authenticate(ws: &mut Ws, token: &str) -> Result<ServerLimits, ConnError> {
    let params = AuthParams {
        token,
        instance: None,
        agent: Some("plexus-bench"),
    };
    let result = call(ws, 1, "auth", &params).await?;
    let auth: AuthResult = result
        .decode()
        .map_err(|e| ConnError::Hub(format!("undecodable auth result: {e}")))?;
    Ok(auth.limits)
}

/// Opens, authenticates with `token` and optionally subscribes to `topic`.
pub async fn connect_with(
    url: &str,
    source: Option<IpAddr>,
    token: &str,
    topic: Option<&str>,
) -> Result<Session, ConnError> {
    let mut ws = open_from(url, source).await?;
    let limits = authenticate(&mut ws, token).await?;
    if let Some(topic) = topic {
        call(&mut ws, 2, "subscribe", &SubscribeParams::new(topic)).await?;
    }
    Ok(Session { ws, limits })
}

/// Opens, authenticates as `user` and optionally subscribes.
pub async fn connect(url: &str, user: &str, subscribe: Option<&str>) -> Result<Session, ConnError> {
    connect_with(url, None, &token(user), subscribe).await
}

/// Opens `n` connections (user `u<i>`), `concurrency` at a time, spreading
/// them round-robin over `sources` (the default source when empty);
/// connection `i` subscribes to `topic(i)`.
pub async fn connect_many(
    url: &str,
    sources: &[IpAddr],
    n: usize,
    concurrency: usize,
    topic: impl Fn(usize) -> Option<String>,
) -> Vec<Result<Session, ConnError>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let t = topic(i);
            let source = crate::net::source_of(sources, i);
            async move { connect_with(url, source, &token(&format!("u{i}")), t.as_deref()).await }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
}
