//! The runner checked against deliberately broken servers.
//!
//! A real hub runs in-process; a small WebSocket-aware proxy sits between
//! the runner and it and breaks one rule of the protocol: it drops `cancel`
//! notifications, hides the slow-consumer close 4006, answers a request
//! whose id is already in flight (so that id gets two terminal frames), or
//! turns an unsigned `alg: none` token into a valid one (as a server that
//! accepts unsigned tokens would). Each broken server must fail exactly the
//! cases that check the broken rule, and pass the others as the intact
//! proxy does.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use plexus_conformance::cbor::Value;
use plexus_conformance::frame::{self, Frame};
use plexus_conformance::jwt::{self, HsAlg};
use plexus_conformance::runner::{self, Outcome, Settings, Silent};
use plexus_conformance::tokens::TokenSource;
use plexus_conformance::ws::{OP_BINARY, OP_CLOSE, encode_frame, parse_frame};
use plexus_server::auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
use plexus_server::{Config, Server};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};

const SECRET: &[u8] = b"conformance-selftest-secret-0123456789abcdef";

/// Largest WebSocket payload the proxy parses.
const MAX_PAYLOAD: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Forwards everything unchanged.
    None,
    /// Drops `cancel` notifications: the server never sees them.
    IgnoreCancel,
    /// Drops the Close frame 4006 and closes the TCP connection instead.
    HideSlowConsumer,
    /// Answers a request whose id is in flight instead of letting the
    /// server close with 4005.
    AnswerDuplicateId,
    /// Replaces an `alg: none` token in `auth` by a valid one with the same
    /// claims.
    AcceptAlgNone,
}

async fn start_hub() -> Server {
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        debug_methods: true,
        max_outbound_bytes: 2 << 20,
        ..Config::default()
    };
    // Record sync is on by default and would open a database in ./data.
    config.sync.enabled = false;
    let auth = Authenticator::new(AuthSettings {
        key: KeySource::Hmac {
            secret: SECRET.to_vec(),
            alg: HmacAlg::HS256,
        },
        issuer: None,
        audience: None,
        leeway: config.jwt_leeway.0,
        jwks_refresh: config.jwks_refresh.0,
        jwks_timeout: config.jwks_timeout.0,
    })
    .unwrap();
    Server::start(config, auth).await.unwrap()
}

async fn start_proxy(upstream: SocketAddr, fault: Fault) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = relay(client, upstream, fault).await;
            });
        }
    });
    addr
}

/// Copies an HTTP head from `src` to `dst`; returns the status line and
/// the bytes read past the head.
async fn relay_head<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    src: &mut R,
    dst: &mut W,
) -> std::io::Result<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            dst.write_all(&buf[..i + 4]).await?;
            let line =
                String::from_utf8_lossy(&buf[..buf.iter().position(|b| *b == b'\r').unwrap_or(0)])
                    .into_owned();
            return Ok((line, buf[i + 4..].to_vec()));
        }
        let mut chunk = [0u8; 4096];
        let n = src.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

type InFlight = Arc<Mutex<HashSet<u64>>>;

async fn relay(client: TcpStream, upstream: SocketAddr, fault: Fault) -> std::io::Result<()> {
    let server = TcpStream::connect(upstream).await?;
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let (_, up_rest) = relay_head(&mut cr, &mut sw).await?;
    let (status, down_rest) = relay_head(&mut sr, &mut cw).await?;
    if !status.contains(" 101") {
        cw.write_all(&down_rest).await?;
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        return Ok(());
    }
    sw.write_all(&up_rest).await?;
    let cw = Arc::new(tokio::sync::Mutex::new(cw));
    let inflight: InFlight = Arc::default();
    let up = tokio::spawn(client_to_server(
        cr,
        sw,
        cw.clone(),
        fault,
        inflight.clone(),
    ));
    let _ = server_to_client(sr, down_rest, cw, fault, inflight).await;
    up.abort();
    Ok(())
}

/// What the proxy does with a client frame.
enum Action {
    Forward,
    Drop,
    Replace(Vec<u8>),
    /// Drop it and send this to the client instead.
    Answer(Vec<u8>),
}

fn client_action(payload: &[u8], fault: Fault, inflight: &InFlight) -> Action {
    let Ok(f) = frame::parse(payload, 64) else {
        return Action::Forward;
    };
    match (&f, fault) {
        (Frame::Notification { method, .. }, Fault::IgnoreCancel) if method == "cancel" => {
            Action::Drop
        }
        (Frame::Request { id, .. }, Fault::AnswerDuplicateId) => {
            if inflight.lock().unwrap().insert(*id) {
                Action::Forward
            } else {
                Action::Answer(encode_frame(
                    true,
                    0,
                    OP_BINARY,
                    None,
                    &frame::response_ok(*id, &Value::Null),
                ))
            }
        }
        (Frame::Request { id, method, params }, Fault::AcceptAlgNone) if method == "auth" => {
            let Some(token) = params.value.get(0).and_then(Value::as_str) else {
                return Action::Forward;
            };
            match jwt::decode_unverified(token) {
                Some((header, claims)) if header["alg"] == "none" => {
                    let good = jwt::sign(&claims, HsAlg::HS256, SECRET);
                    let mut m: Vec<(Value, Value)> =
                        params.value.as_map().unwrap_or_default().to_vec();
                    for (k, v) in &mut m {
                        if k.as_u64() == Some(0) {
                            *v = Value::text(good.clone());
                        }
                    }
                    let bytes = frame::request(*id, "auth", &Value::Map(m));
                    Action::Replace(encode_frame(
                        true,
                        0,
                        OP_BINARY,
                        Some(rand::random()),
                        &bytes,
                    ))
                }
                _ => Action::Forward,
            }
        }
        _ => Action::Forward,
    }
}

async fn client_to_server(
    mut cr: tokio::net::tcp::OwnedReadHalf,
    mut sw: OwnedWriteHalf,
    cw: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    fault: Fault,
    inflight: InFlight,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some((f, used))) = parse_frame(&buf, MAX_PAYLOAD) {
            let action = if f.fin && f.opcode == OP_BINARY {
                client_action(&f.payload, fault, &inflight)
            } else {
                Action::Forward
            };
            match action {
                Action::Forward => sw.write_all(&buf[..used]).await?,
                Action::Replace(b) => sw.write_all(&b).await?,
                Action::Drop => {}
                Action::Answer(b) => cw.lock().await.write_all(&b).await?,
            }
            buf.drain(..used);
        }
        let n = cr.read(&mut chunk).await?;
        if n == 0 {
            return sw.shutdown().await;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn server_to_client(
    mut sr: tokio::net::tcp::OwnedReadHalf,
    mut buf: Vec<u8>,
    cw: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    fault: Fault,
    inflight: InFlight,
) -> std::io::Result<()> {
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        while let Ok(Some((f, used))) = parse_frame(&buf, MAX_PAYLOAD) {
            if f.opcode == OP_CLOSE
                && fault == Fault::HideSlowConsumer
                && f.payload.get(..2) == Some(&4006u16.to_be_bytes())
            {
                return cw.lock().await.shutdown().await;
            }
            if f.opcode == OP_BINARY
                && let Ok(fr) = frame::parse(&f.payload, 64)
            {
                match fr {
                    Frame::Response { id, .. } | Frame::Chunk { id, fin: true, .. } => {
                        inflight.lock().unwrap().remove(&id);
                    }
                    _ => {}
                }
            }
            cw.lock().await.write_all(&buf[..used]).await?;
            buf.drain(..used);
        }
        let n = sr.read(&mut chunk).await?;
        if n == 0 {
            return cw.lock().await.shutdown().await;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The cases run against every proxy: those each fault must break, and
/// others it must not.
const CASES: &[&str] = &[
    "cancel.in-flight",
    "errors.cancelled",
    "cancel.unknown-id-ignored",
    "cancel.core-method-answered",
    "slow.close-4006",
    "slow.presence-leave",
    "slow.others-unaffected",
    "ids.duplicate-in-flight-4005",
    "ids.reuse-after-answer",
    "ids.responses-out-of-order",
    "token.alg-none-unsigned",
    "token.alg-none-with-signature",
    "token.bad-signature",
    "token.expired",
    "auth.failed-4000",
    "pubsub.delivery",
    "presence.join-notified",
    "vector.request-ping",
    "vector.kind-4",
];

async fn run_through(hub: SocketAddr, fault: Fault) -> BTreeMap<String, Outcome> {
    let proxy = start_proxy(hub, fault).await;
    let mut s = Settings::new(
        format!("ws://{proxy}/v1/ws"),
        TokenSource::Hs256 {
            key: SECRET.to_vec(),
        },
    );
    s.outbound_bytes = 2 << 20;
    s.jobs = 4;
    s.case_timeout = Duration::from_secs(30);
    let patterns: Vec<String> = CASES.iter().map(|c| (*c).to_owned()).collect();
    let cases = runner::select(
        plexus_conformance::suite::all(std::path::Path::new(
            plexus_conformance::vectors::VECTORS_DIR,
        )),
        &patterns,
    );
    assert_eq!(cases.len(), CASES.len(), "every selected case exists");
    runner::run(s, cases, Arc::new(Silent))
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.id, r.outcome))
        .collect()
}

fn failed(r: &BTreeMap<String, Outcome>) -> Vec<&str> {
    r.iter()
        .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
        .map(|(id, _)| id.as_str())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_broken_server_fails_exactly_its_cases() {
    let hub = start_hub().await;
    let addr = hub.local_addr();

    let baseline = run_through(addr, Fault::None).await;
    assert!(
        failed(&baseline).is_empty(),
        "the intact proxy fails {:#?}",
        baseline
    );

    for (fault, broken) in [
        (
            Fault::IgnoreCancel,
            &["cancel.in-flight", "errors.cancelled"][..],
        ),
        (
            Fault::HideSlowConsumer,
            &["slow.close-4006", "slow.presence-leave"][..],
        ),
        (
            Fault::AnswerDuplicateId,
            &["ids.duplicate-in-flight-4005"][..],
        ),
        (
            Fault::AcceptAlgNone,
            &["token.alg-none-unsigned", "token.alg-none-with-signature"][..],
        ),
    ] {
        let r = run_through(addr, fault).await;
        assert_eq!(failed(&r), broken, "{fault:?}: failures {:#?}", r);
        for (id, outcome) in &r {
            if !broken.contains(&id.as_str()) {
                assert_eq!(
                    outcome.label(),
                    baseline[id].label(),
                    "{fault:?}: {id} changed: {outcome:?}"
                );
            }
        }
    }
}
