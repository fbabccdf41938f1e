//! The data scripts of `conformance/scripts/`: they load, and replayed by
//! the scripted server they do what their descriptions say, as seen by a
//! plain tokio-tungstenite client.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_conformance::script::file::{Script, Step, load_all};
use plexus_protocol::frame::{encode_error, encode_request};
use plexus_protocol::methods::{AuthParams, ClosingParams};
use plexus_protocol::{DecodeLimits, ErrorCode, Frame, RawValue, SUBPROTOCOL, WireError};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const STEP: Duration = Duration::from_secs(5);

async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, fut)
        .await
        .expect("step timed out")
}

async fn connect(url: &str) -> Ws {
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", SUBPROTOCOL.parse().unwrap());
    within(connect_async(request)).await.unwrap().0
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    within(ws.send(Message::Binary(bytes.into())))
        .await
        .unwrap();
}

async fn auth(ws: &mut Ws) {
    let params = AuthParams {
        token: "t",
        instance: None,
        agent: Some("script-files"),
    };
    send(ws, encode_request(1, "auth", &params).unwrap()).await;
}

#[derive(Debug)]
enum Seen {
    Frame(Frame),
    Undecodable(Vec<u8>),
    Text(String),
    Close(Option<u16>),
    Gone,
}

async fn next(ws: &mut Ws) -> Seen {
    loop {
        match within(ws.next()).await {
            Some(Ok(Message::Binary(b))) => {
                return match Frame::decode(b.clone(), &DecodeLimits::default()) {
                    Ok(f) => Seen::Frame(f),
                    Err(_) => Seen::Undecodable(b.to_vec()),
                };
            }
            Some(Ok(Message::Text(t))) => return Seen::Text(t.to_string()),
            Some(Ok(Message::Close(f))) => return Seen::Close(f.map(|f| u16::from(f.code))),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Seen::Gone,
        }
    }
}

async fn response_ok(ws: &mut Ws, id: u64) -> RawValue {
    loop {
        match next(ws).await {
            Seen::Frame(Frame::Response(r)) if r.id == id => return r.outcome.unwrap(),
            Seen::Frame(_) => {}
            other => panic!("waiting for response {id}: {other:?}"),
        }
    }
}

async fn served(name: &str) -> plexus_conformance::script::ScriptedServer {
    Script::load_named(name).unwrap().serve().await.unwrap()
}

#[test]
fn every_script_loads_and_has_steps() {
    let all = load_all().unwrap();
    assert!(all.len() >= 30, "{} scripts", all.len());
    for s in &all {
        assert!(
            !s.connections.is_empty() || !s.then.is_empty(),
            "{} has no steps",
            s.name
        );
        assert!(
            !s.client_should.is_empty(),
            "{} says nothing about the client",
            s.name
        );
    }
    // One script per close code of §15.1.
    for code in [
        1000, 1002, 1003, 1007, 1009, 4000, 4001, 4002, 4003, 4004, 4005, 4006, 4007, 4008, 4009,
        4010,
    ] {
        assert!(
            all.iter().any(|s| s.name == format!("close-{code}")),
            "no script for close {code}"
        );
    }
}

#[test]
fn a_script_with_bad_hex_or_a_wrong_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"name":"bad","description":"d","client_should":"c","then":[{"op":"send_hex","hex":"zz"}]}"#).unwrap();
    assert!(Script::load(&bad).is_err());
    let named = dir.path().join("other.json");
    std::fs::write(
        &named,
        r#"{"name":"bad","description":"d","client_should":"c","then":[{"op":"drop"}]}"#,
    )
    .unwrap();
    assert!(Script::load(&named).is_err());
    let unknown = dir.path().join("unknown.json");
    std::fs::write(
        &unknown,
        r#"{"name":"unknown","description":"d","client_should":"c","then":[{"op":"explode"}]}"#,
    )
    .unwrap();
    assert!(Script::load(&unknown).is_err());
}

#[tokio::test]
async fn echo_answers_with_the_params() {
    let server = served("echo").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    send(&mut ws, encode_request(2, "ping", &7u8).unwrap()).await;
    assert_eq!(response_ok(&mut ws, 2).await.decode::<u8>().unwrap(), 7);
}

#[tokio::test]
async fn every_close_script_closes_as_its_code_says_then_serves() {
    for s in load_all()
        .unwrap()
        .into_iter()
        .filter(|s| s.name.starts_with("close-"))
    {
        let code: u16 = s.name["close-".len()..].parse().unwrap();
        let announced = s.connections[0]
            .iter()
            .any(|st| matches!(st, Step::Closing { .. }));
        let server = s.serve().await.unwrap();
        let mut ws = connect(&server.url()).await;
        auth(&mut ws).await;
        response_ok(&mut ws, 1).await;
        if announced {
            let Seen::Frame(Frame::Notification(n)) = next(&mut ws).await else {
                panic!("close-{code}: expected closing");
            };
            assert_eq!(n.method, "closing");
            assert_eq!(n.params.decode::<ClosingParams<'_>>().unwrap().code, code);
        }
        match next(&mut ws).await {
            Seen::Close(Some(c)) => assert_eq!(c, code),
            other => panic!("close-{code}: {other:?}"),
        }
        let mut again = connect(&server.url()).await;
        auth(&mut again).await;
        response_ok(&mut again, 1).await;
        assert_eq!(server.connections(), 2);
    }
}

#[tokio::test]
async fn reject_auth_refuses_with_4000() {
    let server = served("reject-auth").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    let Seen::Frame(Frame::Response(r)) = next(&mut ws).await else {
        panic!("expected the auth response");
    };
    assert_eq!(r.outcome.unwrap_err().code, ErrorCode::Unauthenticated);
    assert!(matches!(
        next(&mut ws).await,
        Seen::Frame(Frame::Notification(_))
    ));
    assert!(matches!(next(&mut ws).await, Seen::Close(Some(4000))));
}

#[tokio::test]
async fn chunk_stream_complete_streams_three_items() {
    let server = served("chunk-stream-complete").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    send(&mut ws, encode_request(2, "history", &()).unwrap()).await;
    for seq in 0..3u64 {
        let Seen::Frame(Frame::Chunk(c)) = next(&mut ws).await else {
            panic!("expected chunk {seq}");
        };
        assert_eq!((c.id, c.seq, c.fin), (2, seq, seq == 2));
        assert_eq!(c.data.decode::<u64>().unwrap(), seq);
    }
}

#[tokio::test]
async fn unknown_frames_come_before_the_answer() {
    let server = served("unknown-frames").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    send(&mut ws, encode_request(2, "ping", &()).unwrap()).await;
    assert!(
        matches!(next(&mut ws).await, Seen::Frame(Frame::Notification(n)) if n.method == "some.future.notification")
    );
    assert!(matches!(next(&mut ws).await, Seen::Frame(Frame::Chunk(c)) if c.id == 987_654));
    assert!(matches!(next(&mut ws).await, Seen::Frame(Frame::Response(r)) if r.id == 123_456));
    assert_eq!(
        response_ok(&mut ws, 2).await.decode::<String>().unwrap(),
        "the answer"
    );
}

#[tokio::test]
async fn undecodable_and_text_frames_are_sent_as_written() {
    let server = served("undecodable-frame").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    assert!(matches!(next(&mut ws).await, Seen::Undecodable(b) if b == [0xff, 0x00]));
    let server = served("text-message").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    assert!(matches!(next(&mut ws).await, Seen::Text(t) if t == "hello"));
}

#[tokio::test]
async fn server_request_reads_the_clients_answer() {
    let server = served("server-request").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    let Seen::Frame(Frame::Request(r)) = next(&mut ws).await else {
        panic!("expected the server's request");
    };
    assert_eq!((r.id, &*r.method), (1, "sdk.unknown"));
    let answer = WireError::new(ErrorCode::MethodNotFound, "not served");
    send(&mut ws, encode_error(r.id, &answer)).await;
    // The script goes on echoing.
    send(&mut ws, encode_request(2, "ping", &3u8).unwrap()).await;
    assert_eq!(response_ok(&mut ws, 2).await.decode::<u8>().unwrap(), 3);
}

#[tokio::test]
async fn token_expiring_expects_a_refresh() {
    let server = served("token-expiring").await;
    let mut ws = connect(&server.url()).await;
    auth(&mut ws).await;
    response_ok(&mut ws, 1).await;
    assert!(
        matches!(next(&mut ws).await, Seen::Frame(Frame::Notification(n)) if n.method == "token.expiring")
    );
    send(
        &mut ws,
        encode_request(
            2,
            "auth.refresh",
            &AuthParams {
                token: "t2",
                instance: None,
                agent: None,
            },
        )
        .unwrap(),
    )
    .await;
    response_ok(&mut ws, 2).await;
}
