//! The Plexus side of every scenario, driven over raw `plexus.v1` frames
//! (the protocol crate, not the SDK) so the load generator adds as little
//! as possible.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use minicbor::bytes::ByteSlice;
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{AuthParams, PublishParams, SubscribeParams};
use plexus_protocol::{DecodeLimits, Frame, RawValue};
use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::clock::{now_nanos, read_stamp, stamp};
use crate::procs::{HubProcess, token};
use crate::scenario::{
    ConnectionsConfig, ConnectionsResult, FanoutConfig, FanoutResult, Rate, RpcConfig, RpcResult,
};
use crate::stats::Latency;

/// A client WebSocket.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long any single wait in a scenario may take.
const WAIT: Duration = Duration::from_secs(10);

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
        tokio_tungstenite::tungstenite::http::HeaderValue::from_static(
            plexus_protocol::SUBPROTOCOL,
        ),
    );
    let config = Some(crate::scenario::client_ws_config());
    let connecting = async {
        match source {
            None => tokio_tungstenite::connect_async_with_config(req, config, true).await,
            Some(ip) => {
                let host = req.uri().host().unwrap_or("127.0.0.1").to_owned();
                let port = req.uri().port_u16().unwrap_or(80);
                let peer: SocketAddr = format!("{host}:{port}").parse().map_err(|_| {
                    tokio_tungstenite::tungstenite::Error::Url(
                        tokio_tungstenite::tungstenite::error::UrlError::NoHostName,
                    )
                })?;
                let sock = if ip.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                sock.bind(SocketAddr::new(ip, 0))?;
                let tcp = sock.connect(peer).await?;
                let _ = tcp.set_nodelay(true);
                tokio_tungstenite::client_async_with_config(req, MaybeTlsStream::Plain(tcp), config)
                    .await
            }
        }
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

/// Opens, authenticates as `user` and optionally subscribes.
pub async fn connect(url: &str, user: &str, subscribe: Option<&str>) -> Result<Ws, ConnError> {
    connect_from(url, None, user, subscribe).await
}

/// [`connect`] from a given local address.
pub async fn connect_from(
    url: &str,
    source: Option<IpAddr>,
    user: &str,
    subscribe: Option<&str>,
) -> Result<Ws, ConnError> {
    let mut ws = open_from(url, source).await?;
    let t = token(user);
    call(
        &mut ws,
        1,
        "auth",
        &AuthParams {
            token: &t,
            instance: None,
            agent: Some("plexus-bench"),
        },
    )
    .await?;
    if let Some(topic) = subscribe {
        call(&mut ws, 2, "subscribe", &SubscribeParams::new(topic)).await?;
    }
    Ok(ws)
}

/// Opens many connections, `concurrency` at a time.
async fn connect_many(
    url: &str,
    n: usize,
    concurrency: usize,
    topic: impl Fn(usize) -> Option<String>,
) -> Vec<Result<Ws, ConnError>> {
    connect_many_from(url, &[], n, concurrency, topic).await
}

/// Opens many connections, `concurrency` at a time, spreading them
/// round-robin over `sources` (the default source when empty).
async fn connect_many_from(
    url: &str,
    sources: &[IpAddr],
    n: usize,
    concurrency: usize,
    topic: impl Fn(usize) -> Option<String>,
) -> Vec<Result<Ws, ConnError>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let t = topic(i);
            let url = url.to_owned();
            let source = (!sources.is_empty()).then(|| sources[i % sources.len()]);
            async move { connect_from(&url, source, &format!("u{i}"), t.as_deref()).await }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
}

/// The measurement window, in `now_nanos` time.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Start (after warm-up).
    pub start: u64,
    /// End.
    pub end: u64,
}

impl Window {
    /// A window starting `warmup` from now and lasting `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = now_nanos() + u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX);
        Window {
            start,
            end: start + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `t` is inside.
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }

    /// Whether `t` is past the end.
    pub fn over(&self, t: u64) -> bool {
        t >= self.end
    }

    /// Length in seconds.
    pub fn secs(&self) -> f64 {
        (self.end - self.start) as f64 / 1e9
    }
}

/// The bytes of an `event` frame's payload (a CBOR byte string), if any.
///
/// The load generator reads only what it needs, with a plain CBOR decoder
/// (as the NATS driver reads only the `MSG` header): `[2, "event", {0:
/// topic, 1: data, …}]`. This keeps the generator's cost per event small
/// and comparable across targets; the hub's own decoding is what is
/// measured.
fn event_payload(frame: &[u8]) -> Option<&[u8]> {
    // `[2, "event", {0: topic, 1: data, …}]`, read with no validation
    // beyond bounds: the hub already validated what it forwards.
    const HEAD: &[u8] = &[0x83, 0x02, 0x65, b'e', b'v', b'e', b'n', b't'];
    let rest = frame.strip_prefix(HEAD)?;
    let (&map, mut rest) = rest.split_first()?;
    if map & 0xe0 != 0xa0 {
        return None;
    }
    for _ in 0..(map & 0x1f) {
        let (&key, r) = rest.split_first()?;
        let (len, body) = head_len(r)?;
        let (item, r) = body.split_at_checked(len)?;
        if key == 0x01 {
            return Some(item);
        }
        rest = r;
    }
    None
}

/// The length of a byte or text string whose head starts `input`, and the
/// bytes after the head.
fn head_len(input: &[u8]) -> Option<(usize, &[u8])> {
    let (&first, rest) = input.split_first()?;
    if !matches!(first >> 5, 2 | 3) {
        return None;
    }
    let n = match first & 0x1f {
        n @ 0..=23 => return Some((usize::from(n), rest)),
        24 => 1,
        25 => 2,
        26 => 4,
        _ => return None,
    };
    let (len, rest) = rest.split_at_checked(n)?;
    let len = len
        .iter()
        .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
    Some((len, rest))
}

/// Reads events until the window is over; returns (count, latency).
async fn subscriber(mut ws: Ws, win: Window, errors: Arc<AtomicU64>) -> (u64, Latency) {
    let mut lat = Latency::new();
    let mut count = 0u64;
    // One timer for the whole run and one clock read per message: the
    // generator must cost as little per event as the NATS driver does.
    let end =
        tokio::time::Instant::now() + Duration::from_nanos(win.end.saturating_sub(now_nanos()));
    let deadline = tokio::time::sleep_until(end);
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            _ = &mut deadline => break,
        };
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let t = now_nanos();
                if win.over(t) {
                    break;
                }
                if !win.contains(t) {
                    continue;
                }
                if let Some(sent) = event_payload(&b).and_then(read_stamp) {
                    count += 1;
                    lat.record(t.saturating_sub(sent));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    (count, lat)
}

/// Encodes a publish request with a stamped payload.
fn publish_frame(id: u64, topic: &str, payload: &mut [u8]) -> Bytes {
    stamp(payload);
    let bytes: &ByteSlice = payload[..].into();
    let data = minicbor::to_vec(bytes).unwrap_or_default();
    let data =
        RawValue::from_bytes(Bytes::from(data), &DecodeLimits::default()).unwrap_or_default();
    let params = PublishParams::new(topic, data.as_raw_ref());
    Bytes::from(encode_request(id, "publish", &params).unwrap_or_default())
}

/// Reads the answers to a windowed sender until the window is over (or 10 s
/// of silence): each frame, decoded, goes to `on_frame` with its arrival
/// time and returns one permit to the sender (an undecodable one too, so the
/// sender never stalls on it).
async fn read_answers<T>(
    mut rx: futures_util::stream::SplitStream<Ws>,
    permits: Arc<Semaphore>,
    win: Window,
    mut state: T,
    mut on_frame: impl FnMut(&mut T, Result<Frame, plexus_protocol::DecodeError>, u64),
) -> T {
    let limits = DecodeLimits::default();
    loop {
        match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                let t = now_nanos();
                on_frame(&mut state, Frame::decode(b, &limits), t);
                permits.add_permits(1);
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
        if win.over(now_nanos()) {
            break;
        }
    }
    permits.close();
    state
}

/// Publishes until the window is over; returns acks counted in the window.
async fn publisher(
    ws: Ws,
    topic: String,
    payload: usize,
    rate: Rate,
    per_publisher: f64,
    win: Window,
    errors: Arc<AtomicU64>,
) -> u64 {
    let (mut tx, rx) = ws.split();
    let window = match rate {
        Rate::Saturate { window } => window.max(1),
        Rate::Fixed { .. } => usize::MAX >> 4,
    };
    let permits = Arc::new(Semaphore::new(window.min(Semaphore::MAX_PERMITS)));
    let acks = tokio::spawn(read_answers(rx, permits.clone(), win, 0u64, {
        let errors = errors.clone();
        move |acked: &mut u64, frame: Result<Frame, _>, t: u64| match frame {
            Ok(Frame::Response(r)) => {
                if r.outcome.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if win.contains(t) {
                    *acked += 1;
                }
            }
            Ok(_) => {}
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    let mut buf = vec![0u8; payload.max(8)];
    let mut id = 10u64;
    match rate {
        Rate::Saturate { .. } => {
            while !win.over(now_nanos()) {
                let Ok(p) = permits.acquire().await else {
                    break;
                };
                p.forget();
                let mut sent = 1;
                id += 1;
                if tx
                    .feed(Message::Binary(publish_frame(id, &topic, &mut buf)))
                    .await
                    .is_err()
                {
                    break;
                }
                while let Ok(p) = permits.try_acquire() {
                    p.forget();
                    id += 1;
                    sent += 1;
                    if tx
                        .feed(Message::Binary(publish_frame(id, &topic, &mut buf)))
                        .await
                        .is_err()
                        || sent > 256
                    {
                        break;
                    }
                }
                if tx.flush().await.is_err() {
                    break;
                }
            }
        }
        Rate::Fixed { .. } => {
            let tick = Duration::from_millis(1);
            let mut interval = tokio::time::interval(tick);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = now_nanos();
            let mut sent_total = 0u64;
            while !win.over(now_nanos()) {
                interval.tick().await;
                // A non-negative count of events, far below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let due = ((now_nanos() - started) as f64 / 1e9 * per_publisher) as u64;
                while sent_total < due {
                    id += 1;
                    sent_total += 1;
                    if tx
                        .feed(Message::Binary(publish_frame(id, &topic, &mut buf)))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if tx.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.close().await;
    acks.await.unwrap_or(0)
}

/// Runs the fan-out scenario against a running hub.
pub async fn fanout(hub: &HubProcess, cfg: &FanoutConfig) -> FanoutResult {
    let url = hub.url();
    let errors = Arc::new(AtomicU64::new(0));
    let subs = connect_many(&url, cfg.subscribers, 64, |i| Some(cfg.topic(i))).await;
    let mut stalled: Vec<Ws> = connect_many(&url, cfg.stalled, 16, |i| Some(cfg.topic(i)))
        .await
        .into_iter()
        .filter_map(Result::ok)
        .collect();
    let pubs = connect_many(&url, cfg.publishers, 16, |_| None).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let mut readers = Vec::new();
    for s in subs {
        match s {
            Ok(ws) => readers.push(tokio::spawn(subscriber(ws, win, errors.clone()))),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let per_publisher = match cfg.rate {
        Rate::Fixed { per_sec } => per_sec as f64 / cfg.publishers.max(1) as f64,
        Rate::Saturate { .. } => 0.0,
    };
    let mut writers = Vec::new();
    for (j, p) in pubs.into_iter().enumerate() {
        match p {
            Ok(ws) => writers.push(tokio::spawn(publisher(
                ws,
                cfg.topic(j),
                cfg.payload,
                cfg.rate,
                per_publisher,
                win,
                errors.clone(),
            ))),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let mut published = 0;
    for w in writers {
        published += w.await.unwrap_or(0);
    }
    let mut delivered = 0;
    let mut lat = Latency::new();
    for r in readers {
        if let Ok((n, l)) = r.await {
            delivered += n;
            lat.merge(&l);
        }
    }
    let stalled_closed = stalled_outcome(&mut stalled).await;
    FanoutResult {
        published_per_sec: published as f64 / win.secs(),
        delivered_per_sec: delivered as f64 / win.secs(),
        latency: lat.summary(),
        stalled_closed,
        errors: errors.load(Ordering::Relaxed),
        histogram: lat,
    }
}

/// Reads what the stalled connections had queued and reports how each one
/// was closed: `Some(code)`, `Some(0)` for closed without a code, `None`
/// when still open after 5 s.
async fn stalled_outcome(stalled: &mut [Ws]) -> Vec<Option<u16>> {
    let mut out = Vec::new();
    for ws in stalled.iter_mut() {
        let verdict = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return Some(f.map_or(0, |f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Some(0),
                }
            }
        })
        .await
        .unwrap_or(None);
        out.push(verdict);
    }
    out
}

/// Runs `ping` calls: C connections, K in flight each.
pub async fn rpc(url: &str, cfg: &RpcConfig, authenticate: bool) -> RpcResult {
    let errors = Arc::new(AtomicU64::new(0));
    let conns: Vec<Ws> = futures_util::stream::iter(0..cfg.connections)
        .map(|i| {
            let url = url.to_owned();
            async move {
                if authenticate {
                    connect(&url, &format!("rpc{i}"), None).await
                } else {
                    open(&url).await
                }
            }
        })
        .buffered(16)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|ws| {
            tokio::spawn(rpc_conn(
                ws,
                cfg.in_flight,
                cfg.payload,
                win,
                errors.clone(),
            ))
        })
        .collect();
    let mut calls = 0;
    let mut lat = Latency::new();
    for t in tasks {
        if let Ok((n, l)) = t.await {
            calls += n;
            lat.merge(&l);
        }
    }
    RpcResult {
        calls_per_sec: calls as f64 / win.secs(),
        latency: lat.summary(),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// The stamped payload carried back in a `ping` response (Plexus) or in the
/// echoed request (floor).
fn rpc_payload(f: &Frame) -> Option<&[u8]> {
    let raw = match f {
        Frame::Response(r) => r.outcome.as_ref().ok()?,
        Frame::Request(r) => &r.params,
        _ => return None,
    };
    let bytes: &ByteSlice = raw.decode().ok()?;
    Some(bytes)
}

async fn rpc_conn(
    ws: Ws,
    in_flight: usize,
    payload: usize,
    win: Window,
    errors: Arc<AtomicU64>,
) -> (u64, Latency) {
    let (mut tx, rx) = ws.split();
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let reader = tokio::spawn(read_answers(
        rx,
        permits.clone(),
        win,
        (0u64, Latency::new()),
        {
            let errors = errors.clone();
            move |(n, lat): &mut (u64, Latency), frame: Result<Frame, _>, t: u64| match frame
                .ok()
                .as_ref()
                .and_then(rpc_payload)
                .and_then(read_stamp)
            {
                Some(sent) if win.contains(t) => {
                    *n += 1;
                    lat.record(t.saturating_sub(sent));
                }
                Some(_) => {}
                None => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    ));
    let mut buf = vec![0u8; payload.max(8)];
    let mut id = 100u64;
    while !win.over(now_nanos()) {
        let Ok(p) = permits.acquire().await else {
            break;
        };
        p.forget();
        let mut batch = 0;
        loop {
            id += 1;
            batch += 1;
            stamp(&mut buf);
            let bytes: &ByteSlice = buf[..].into();
            let frame = encode_request(id, "ping", &bytes).unwrap_or_default();
            if tx.feed(Message::Binary(frame.into())).await.is_err() {
                break;
            }
            match permits.try_acquire() {
                Ok(p) if batch < 256 => p.forget(),
                _ => break,
            }
        }
        if tx.flush().await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
    // The reader ends at the window's end.
    reader.await.unwrap_or_default()
}

/// Opens N authenticated connections with one subscription each and
/// measures the hub's memory per connection.
pub async fn connections(
    url: &str,
    rss_kib: impl Fn() -> Option<u64>,
    cfg: &ConnectionsConfig,
) -> (ConnectionsResult, Vec<Ws>) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib().unwrap_or(0);
    let started = now_nanos();
    let results = connect_many_from(url, &cfg.sources, cfg.connections, cfg.concurrency, |i| {
        Some(format!("bench.idle.{i}"))
    })
    .await;
    let secs = (now_nanos() - started) as f64 / 1e9;
    let conns: Vec<Ws> = results.into_iter().filter_map(Result::ok).collect();
    // Let allocations settle before sampling.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib().unwrap_or(0);
    let opened = conns.len();
    let result = ConnectionsResult {
        opened,
        connect_rate: opened as f64 / secs.max(1e-9),
        rss_before_kib: before,
        rss_after_kib: after,
        kib_per_connection: after.saturating_sub(before) as f64 / opened.max(1) as f64,
    };
    (result, conns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::frame::encode_notification;

    #[test]
    fn event_payload_reads_the_data_of_a_real_event() {
        let bytes: &ByteSlice = (&[1u8, 2, 3][..]).into();
        let data = RawValue::encode(&bytes).unwrap();
        let frame = encode_notification(
            "event",
            &plexus_protocol::methods::EventParams::new("a.b", data.as_raw_ref(), Some("u")),
        )
        .unwrap();
        assert_eq!(event_payload(&frame), Some(&[1u8, 2, 3][..]));
        let ping = encode_request(1, "ping", &()).unwrap();
        assert_eq!(event_payload(&ping), None);
    }
}
