//! The scripted server over real sockets, driven by a plain
//! tokio-tungstenite client.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_conformance::script::{AUTH_USER, DEFAULT_LIMITS, ScriptedServer};
use plexus_protocol::frame::{encode_notification, encode_request};
use plexus_protocol::methods::{AuthParams, AuthResult, CancelParams, ClosingParams};
use plexus_protocol::{DecodeLimits, ErrorCode, Frame, RawValue, Response, SUBPROTOCOL};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Upper bound on every step, so a broken harness fails instead of hanging.
const STEP: Duration = Duration::from_secs(5);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

/// Connects offering `plexus.v1` and checks the server selected it.
async fn connect(url: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().unwrap());
    let (ws, response) = within(connect_async(request)).await.unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        SUBPROTOCOL
    );
    ws
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    within(ws.send(Message::Binary(bytes.into())))
        .await
        .unwrap();
}

async fn send_auth(ws: &mut Ws, id: u64, token: &str) {
    let params = AuthParams {
        token,
        instance: None,
        agent: Some("script-test"),
    };
    send(ws, encode_request(id, "auth", &params).unwrap()).await;
}

/// What the client saw next.
#[derive(Debug)]
enum Seen {
    Frame(Frame),
    Close(Option<(u16, String)>),
    /// The stream ended or failed without a Close frame.
    Gone,
}

async fn next(ws: &mut Ws) -> Seen {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => {
                return Seen::Frame(Frame::decode(b, &DecodeLimits::default()).unwrap());
            }
            Some(Ok(Message::Close(f))) => {
                return Seen::Close(f.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(other)) => panic!("unexpected message {other:?}"),
            Some(Err(_)) | None => return Seen::Gone,
        }
    }
}

async fn next_frame(ws: &mut Ws) -> Frame {
    match next(ws).await {
        Seen::Frame(f) => f,
        other => panic!("expected a frame, got {other:?}"),
    }
}

async fn next_response(ws: &mut Ws) -> Response {
    match next_frame(ws).await {
        Frame::Response(r) => r,
        other => panic!("expected a response, got {other:?}"),
    }
}

/// Reads until the connection ends; true if a Close frame came first.
async fn saw_close_before_end(ws: &mut Ws) -> bool {
    loop {
        match next(ws).await {
            Seen::Frame(_) => {}
            Seen::Close(_) => return true,
            Seen::Gone => return false,
        }
    }
}

#[tokio::test]
async fn accept_auth_announces_the_default_limits_and_returns_the_token() {
    let (tx, mut tokens) = mpsc::unbounded_channel();
    let server = ScriptedServer::start(move |mut peer| {
        let tx = tx.clone();
        async move {
            let token = peer.accept_auth().await;
            let skipped = peer.skipped();
            tx.send((token, skipped)).unwrap();
            while peer.recv().await.is_some() {}
        }
    })
    .await
    .unwrap();
    let mut ws = connect(&server.url()).await;

    // A request before `auth` is refused, as the protocol says.
    send(
        &mut ws,
        encode_request(1, "ping", &RawValue::null()).unwrap(),
    )
    .await;
    let early = next_response(&mut ws).await;
    assert_eq!(early.id, 1);
    assert_eq!(early.outcome.unwrap_err().code, ErrorCode::Unauthenticated);

    send_auth(&mut ws, 2, "tok-abc").await;
    let response = next_response(&mut ws).await;
    assert_eq!(response.id, 2);
    let result: AuthResult = response.outcome.unwrap().decode().unwrap();
    assert_eq!(result.session, "s0");
    assert_eq!(result.user, AUTH_USER);
    assert_eq!(result.expires_in_ms, None);
    assert_eq!(result.limits, DEFAULT_LIMITS);
    assert_eq!(result.limits.max_frame_size, 1_048_576);
    assert_eq!(result.limits.ping_interval_ms, 25_000);
    assert_eq!(result.limits.rate_burst, 200);

    let (token, skipped) = within(tokens.recv()).await.unwrap();
    assert_eq!(token.as_deref(), Some("tok-abc"));
    assert!(
        matches!(&skipped[..], [Frame::Request(r)] if r.id == 1 && r.method == "ping"),
        "{skipped:?}"
    );
}

#[tokio::test]
async fn reject_auth_sends_an_error_then_closing_then_close_4000() {
    let server = ScriptedServer::start(|mut peer| async move { peer.reject_auth().await })
        .await
        .unwrap();
    let mut ws = connect(&server.url()).await;
    send_auth(&mut ws, 1, "bad").await;

    let response = next_response(&mut ws).await;
    assert_eq!(response.id, 1);
    assert_eq!(
        response.outcome.unwrap_err().code,
        ErrorCode::Unauthenticated
    );

    let Frame::Notification(closing) = next_frame(&mut ws).await else {
        panic!("expected the closing notification");
    };
    assert_eq!(closing.method, "closing");
    let params: ClosingParams<'_> = closing.params.decode().unwrap();
    assert_eq!(params.code, 4000);
    assert_eq!(params.retry_after_ms, None);

    match next(&mut ws).await {
        Seen::Close(Some((code, reason))) => {
            assert_eq!(code, 4000);
            assert_eq!(reason, "auth_failed");
        }
        other => panic!("expected close 4000, got {other:?}"),
    }
    assert!(matches!(next(&mut ws).await, Seen::Gone));
}

#[tokio::test]
async fn chunks_arrive_in_order_and_notifications_are_kept_as_skipped() {
    const CHUNKS: u64 = 5;
    let server = ScriptedServer::start(|mut peer| async move {
        let Some(request) = peer.recv_request().await else {
            return;
        };
        for seq in 0..CHUNKS {
            peer.chunk(request.id, seq, seq == CHUNKS - 1, &(seq * 10))
                .await;
        }
        let skipped = peer.skipped().len() as u64;
        peer.respond(request.id, &skipped).await;
        while peer.recv().await.is_some() {}
    })
    .await
    .unwrap();
    let mut ws = connect(&server.url()).await;

    send(
        &mut ws,
        encode_notification("cancel", &CancelParams { id: 3 }).unwrap(),
    )
    .await;
    send(
        &mut ws,
        encode_request(9, "stream.test", &RawValue::null()).unwrap(),
    )
    .await;

    for expected in 0..CHUNKS {
        let Frame::Chunk(chunk) = next_frame(&mut ws).await else {
            panic!("expected chunk {expected}");
        };
        assert_eq!((chunk.id, chunk.seq), (9, expected));
        assert_eq!(chunk.fin, expected == CHUNKS - 1);
        assert_eq!(chunk.data.decode::<u64>().unwrap(), expected * 10);
    }
    let response = next_response(&mut ws).await;
    assert_eq!(response.id, 9);
    // The `cancel` notification was passed over on the way to the request.
    assert_eq!(response.outcome.unwrap().decode::<u64>().unwrap(), 1);
}

#[tokio::test]
async fn drop_connection_ends_the_stream_without_a_close_frame() {
    let server = ScriptedServer::start(|mut peer| async move {
        if peer.recv_request().await.is_some() {
            peer.drop_connection();
        }
    })
    .await
    .unwrap();
    let mut ws = connect(&server.url()).await;
    send(
        &mut ws,
        encode_request(1, "ping", &RawValue::null()).unwrap(),
    )
    .await;
    assert!(!saw_close_before_end(&mut ws).await);
}

#[tokio::test]
async fn close_4008_reaches_the_client_after_closing() {
    let (tx, mut closed) = mpsc::unbounded_channel();
    let server = ScriptedServer::start(move |mut peer| {
        let tx = tx.clone();
        async move {
            peer.closing(4008, "server shutting down", Some(2000)).await;
            peer.close(4008, "going_away").await;
            // After close the connection is gone and sends are no-ops.
            peer.send_text("ignored").await;
            tx.send(peer.recv().await.is_none()).unwrap();
        }
    })
    .await
    .unwrap();
    let mut ws = connect(&server.url()).await;

    let Frame::Notification(closing) = next_frame(&mut ws).await else {
        panic!("expected the closing notification");
    };
    let params: ClosingParams<'_> = closing.params.decode().unwrap();
    assert_eq!(
        (params.code, params.reason, params.retry_after_ms),
        (4008, "server shutting down", Some(2000))
    );
    match next(&mut ws).await {
        Seen::Close(Some((code, reason))) => {
            assert_eq!(code, 4008);
            assert_eq!(reason, "going_away");
        }
        other => panic!("expected close 4008, got {other:?}"),
    }
    // tungstenite replied to the close; the server stops waiting and drops.
    assert!(matches!(next(&mut ws).await, Seen::Gone));
    assert!(within(closed.recv()).await.unwrap());
}

#[tokio::test]
async fn connections_counts_accepted_handshakes_in_order() {
    let (tx, mut indices) = mpsc::unbounded_channel();
    let server = ScriptedServer::start(move |mut peer| {
        let tx = tx.clone();
        async move {
            tx.send(peer.index).unwrap();
            while peer.recv().await.is_some() {}
        }
    })
    .await
    .unwrap();
    assert_eq!(server.connections(), 0);

    let mut clients = Vec::new();
    for n in 1..=3 {
        clients.push(connect(&server.url()).await);
        assert_eq!(server.connections(), n);
        assert_eq!(within(indices.recv()).await.unwrap(), n - 1);
    }
    // A refused handshake is not counted.
    assert!(connect_async(server.url()).await.is_err());
    assert_eq!(server.connections(), 3);
}

#[tokio::test]
async fn start_on_rebinds_the_port_of_a_dropped_server() {
    let first = ScriptedServer::start(|mut peer| async move {
        peer.accept_auth().await;
        while peer.recv().await.is_some() {}
    })
    .await
    .unwrap();
    let addr = first.addr();
    assert_eq!(first.url(), format!("ws://{addr}/v1/ws"));
    let mut old = connect(&first.url()).await;
    send_auth(&mut old, 1, "t").await;
    assert!(next_response(&mut old).await.outcome.is_ok());

    drop(first);
    // Dropping the server aborted the connection task: no Close frame.
    assert!(!saw_close_before_end(&mut old).await);

    let second = ScriptedServer::start_on(addr, |mut peer| async move {
        peer.accept_auth().await;
        while peer.recv().await.is_some() {}
    })
    .await
    .unwrap();
    assert_eq!(second.addr(), addr);
    let mut new = connect(&second.url()).await;
    send_auth(&mut new, 1, "t").await;
    let result: AuthResult = next_response(&mut new)
        .await
        .outcome
        .unwrap()
        .decode()
        .unwrap();
    // A fresh server counts from zero.
    assert_eq!(result.session, "s0");
    assert_eq!(second.connections(), 1);
}

#[tokio::test]
async fn a_client_without_the_subprotocol_is_refused_with_400() {
    let server = ScriptedServer::start(|_peer| async {}).await.unwrap();
    let err = within(connect_async(server.url())).await.unwrap_err();
    let tungstenite::Error::Http(response) = err else {
        panic!("expected an HTTP refusal, got {err:?}");
    };
    assert_eq!(response.status(), 400);
    let body = String::from_utf8(response.body().clone().unwrap_or_default()).unwrap();
    assert!(body.contains("plexus.v1"), "{body}");
    assert_eq!(server.connections(), 0);
}

#[tokio::test]
async fn plexus_v1_is_selected_among_several_offered_subprotocols() {
    let server = ScriptedServer::start(|_peer| async {}).await.unwrap();
    let mut request = server.url().into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", "chat, plexus.v1".parse().unwrap());
    let (_ws, response) = within(connect_async(request)).await.unwrap();
    assert_eq!(
        response.headers().get("Sec-WebSocket-Protocol").unwrap(),
        SUBPROTOCOL
    );
    assert_eq!(server.connections(), 1);
}
