//! Session behaviour over real sockets: concurrency, cancellation, limits,
//! bad input, keepalive, shutdown, and the HTTP edge.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use minicbor::{Decode, Encode};
use plexus_protocol::methods::{CancelParams, Empty, PublishParams, SubscribeParams};
use plexus_protocol::{ErrorCode, Frame, RawValue};
use plexus_server::config::Dur;
use plexus_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

#[derive(Encode, Decode)]
#[cbor(map)]
struct Sleep {
    #[n(0)]
    ms: u64,
}

#[tokio::test]
async fn requests_run_concurrently_and_answer_out_of_order() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let slow = c.request("debug.sleep", &Sleep { ms: 400 }).await;
    let fast = c.request("debug.sleep", &Sleep { ms: 10 }).await;
    let ping = c.request("ping", &raw(&"echo me")).await;
    let mut order = Vec::new();
    for _ in 0..3 {
        match c.next_frame().await.unwrap() {
            Frame::Response(r) => {
                if r.id == ping {
                    assert_eq!(
                        r.outcome.unwrap(),
                        raw(&"echo me"),
                        "ping echoes its params"
                    );
                }
                order.push(r.id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(order, vec![ping, fast, slow]);
}

#[tokio::test]
async fn cancel_aborts_an_in_flight_request() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let started = Instant::now();
    let id = c.request("debug.sleep", &Sleep { ms: 10_000 }).await;
    c.notify("cancel", &CancelParams { id }).await;
    let err = c.response(id).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Cancelled);
    assert!(started.elapsed() < Duration::from_secs(5));
    // Cancelling an unknown id is ignored; unknown notifications too.
    c.notify("cancel", &CancelParams { id: 999 }).await;
    c.notify("some.future.notification", &Empty {}).await;
    c.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn in_flight_limit_timeout_and_internal_errors() {
    let server = TestHub::start(|c| {
        c.max_in_flight = 2;
        c.request_timeout = Dur(Duration::from_millis(300));
    })
    .await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let a = c.request("debug.sleep", &Sleep { ms: 1_000 }).await;
    let b = c.request("debug.sleep", &Sleep { ms: 1_000 }).await;
    let err = c.call("debug.sleep", &Sleep { ms: 1 }).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::TooManyRequests);
    assert_eq!(c.response(a).await.unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(c.response(b).await.unwrap_err().code, ErrorCode::Timeout);
    // A handler that panics answers `internal`; the connection lives on.
    assert_eq!(
        c.call("debug.panic", &Empty {}).await.unwrap_err().code,
        ErrorCode::Internal
    );
    c.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn unknown_methods_are_method_not_found() {
    let server = TestHub::start(|c| c.debug_methods = false).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    assert_eq!(
        c.call("no.such.method", &Empty {}).await.unwrap_err().code,
        ErrorCode::MethodNotFound
    );
    // Debug methods do not exist unless enabled.
    assert_eq!(
        c.call("debug.sleep", &Sleep { ms: 1 })
            .await
            .unwrap_err()
            .code,
        ErrorCode::MethodNotFound
    );
}

#[tokio::test]
async fn every_request_counts_in_flight_core_methods_too() {
    // Item 2 / P2: with the window full of asynchronous requests, `ping`
    // and `subscribe` are refused too.
    let server = TestHub::start(|c| c.max_in_flight = 1).await;
    let (mut c, r) = Client::authed(server.addr(), &token("alice")).await;
    assert_eq!(r.limits.max_in_flight, 1);
    let slow = c.request("debug.sleep", &Sleep { ms: 300 }).await;
    for method in ["ping", "subscribe"] {
        let err = c
            .call(method, &SubscribeParams::new("room"))
            .await
            .unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManyRequests, "{method}");
    }
    c.response(slow).await.unwrap();
    c.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn duplicate_map_keys_in_params_are_invalid() {
    // P14: {0: "a", 0: "b"} as subscribe params.
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let dup = RawValue::from_bytes(
        vec![0xa2, 0x00, 0x61, b'a', 0x00, 0x61, b'b'].into(),
        &Default::default(),
    )
    .unwrap();
    let err = c.call("subscribe", &dup).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParams);
}

#[tokio::test]
async fn duplicate_in_flight_id_is_a_protocol_error() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let frame =
        plexus_protocol::frame::encode_request(77, "debug.sleep", &Sleep { ms: 2_000 }).unwrap();
    c.send_bytes(frame.clone()).await;
    c.send_bytes(frame).await;
    c.expect_close(4005, true).await;
}

#[tokio::test]
async fn malformed_cbor_closes_4005() {
    let server = TestHub::start(|_| {}).await;
    for bad in [
        vec![0xff],
        vec![0x84, 0x00],
        vec![0x9f, 0xff],
        vec![0x83, 0x09, 0x00, 0x00],
        vec![0xa0],
    ] {
        let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
        c.send_bytes(bad).await;
        c.expect_close(4005, true).await;
    }
    // Before auth too.
    let mut c = Client::connect(server.addr()).await;
    c.send_bytes(vec![0x00, 0x01]).await;
    c.expect_close(4005, true).await;
}

#[tokio::test]
async fn oversized_frames_close_1009_whatever_their_opcode() {
    let server = TestHub::start(|c| {
        c.max_frame_size = 32 * 1024;
        c.max_payload = 8 * 1024;
    })
    .await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let big = raw(&minicbor::bytes::ByteVec::from(vec![0u8; 40 * 1024]));
    c.request("ping", &big).await;
    c.expect_close(1009, false).await;
    // P8: the size is checked first, so an oversized text message is 1009,
    // not 1003 (item 4).
    let mut s = RawSocket::connect(server.addr()).await;
    assert!(s.auth(&token("bob")).await.outcome.is_ok());
    s.send_header(plexus_testkit::raw::OP_TEXT, 32 * 1024 + 1)
        .await
        .unwrap();
    let f = s.read_frame().await.unwrap().unwrap();
    assert_eq!(f.close_code(), Some(1009));
}

#[tokio::test]
async fn the_preauth_limit_is_enforced_on_the_frame_header_and_raised_after_auth() {
    // Item 7 / P12: before auth, a header announcing more than 16 KiB is
    // refused at once, before its payload is sent or buffered.
    let server = TestHub::start(|_| {}).await;
    let mut s = RawSocket::connect(server.addr()).await;
    s.send_header(plexus_testkit::raw::OP_BINARY, 1_048_575)
        .await
        .unwrap();
    let f = s.read_frame().await.unwrap().unwrap();
    assert_eq!(f.close_code(), Some(1009), "refused on the header alone");
    // After auth the announced max_frame_size applies.
    let (mut c, r) = Client::authed(server.addr(), &token("alice")).await;
    assert_eq!(r.limits.max_frame_size, 1_048_576);
    let big = raw(&minicbor::bytes::ByteVec::from(vec![7u8; 200 * 1024]));
    assert_eq!(c.call("ping", &big).await.unwrap(), big);
}

#[tokio::test]
async fn text_frames_close_1003() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    c.ws.send(Message::Text("[0,1,\"ping\",null]".into()))
        .await
        .unwrap();
    c.expect_close(1003, false).await;
}

#[tokio::test]
async fn a_client_close_is_echoed_and_an_invalid_one_answered() {
    // P10: the client's code and reason come back unchanged.
    let server = TestHub::start(|_| {}).await;
    let mut s = RawSocket::connect(server.addr()).await;
    assert!(s.auth(&token("alice")).await.outcome.is_ok());
    s.send_close(4321, b"bye now").await.unwrap();
    let f = s.read_frame().await.unwrap().unwrap();
    assert_eq!(f.close_code(), Some(4321));
    assert_eq!(&f.payload[2..], b"bye now");
    assert!(s.read_frame().await.unwrap().is_none(), "then EOF");
    // P10: a code a peer may not send (1005) is answered with 1002.
    let mut s = RawSocket::connect(server.addr()).await;
    s.send_close(1005, b"").await.unwrap();
    let f = s.read_frame().await.unwrap().unwrap();
    assert_eq!(f.close_code(), Some(1002));
    // P9 / item 12: a Close reason that is not UTF-8 is answered 1007.
    let mut s = RawSocket::connect(server.addr()).await;
    s.send_close(1000, &[0xff, 0xfe]).await.unwrap();
    let f = s.read_frame().await.unwrap().unwrap();
    assert_eq!(f.close_code(), Some(1007));
}

#[tokio::test]
async fn client_close_is_answered_with_1000() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    c.ws.close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
        code: 1000.into(),
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let mut got = None;
    while let Some(Ok(m)) = c.ws.next().await {
        if let Message::Close(f) = m {
            got = f.map(|f| u16::from(f.code));
        }
    }
    assert_eq!(
        got,
        Some(1000),
        "the hub completes the closing handshake with 1000"
    );
}

#[tokio::test]
async fn rate_limit_answers_rate_limited_then_closes_4007() {
    let server = TestHub::start(|c| {
        c.rate_per_sec = 1;
        c.rate_burst = 5;
        c.rate_strikes = 3;
    })
    .await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    for _ in 0..4 {
        c.call("ping", &Empty {}).await.unwrap();
    }
    let err = c.call("ping", &Empty {}).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::RateLimited);
    assert!(err.retry_after_ms.unwrap() > 0 && err.retry_after_ms.unwrap() <= 1001);
    for _ in 0..3 {
        c.request("ping", &Empty {}).await;
    }
    c.expect_close(4007, true).await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_closed_4010() {
    let server = TestHub::start(|c| {
        c.ping_interval = Dur(Duration::from_millis(100));
        c.pong_timeout = Dur(Duration::from_millis(200));
    })
    .await;
    // Answers every ping: still connected after three of them.
    let mut s = RawSocket::connect(server.addr()).await;
    assert!(s.auth(&token("alice")).await.outcome.is_ok());
    let mut pings = 0;
    while pings < 3 {
        let f = s.read_frame().await.unwrap().unwrap();
        if f.opcode == plexus_testkit::raw::OP_PING {
            pings += 1;
            s.send_frame(true, plexus_testkit::raw::OP_PONG, &f.payload, true)
                .await
                .unwrap();
        }
    }
    let id = s.request("ping", &Empty {}).await.unwrap();
    assert!(s.response(id).await.outcome.is_ok());
    // Never answers: closed with 4010, without `closing`.
    let mut quiet = RawSocket::connect(server.addr()).await;
    assert!(quiet.auth(&token("bob")).await.outcome.is_ok());
    loop {
        let f = quiet.read_frame().await.unwrap().unwrap();
        assert!(
            !matches!(f.plexus(), Some(Frame::Notification(n)) if n.method == "closing"),
            "4010 is not announced"
        );
        if f.opcode == plexus_testkit::raw::OP_CLOSE {
            assert_eq!(f.close_code(), Some(4010));
            break;
        }
    }
}

#[tokio::test]
async fn websocket_protocol_violation_closes_1002() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    // An unmasked client frame is a WebSocket protocol error (RFC 6455 5.1).
    let tcp = c.ws.get_mut();
    let tcp = match tcp {
        tokio_tungstenite::MaybeTlsStream::Plain(s) => s,
        _ => unreachable!(),
    };
    tcp.write_all(&[0x82, 0x01, 0x00]).await.unwrap();
    assert_eq!(c.ended().await, Ended::Close(1002));
}

#[tokio::test]
async fn graceful_shutdown_sends_closing_and_4008() {
    let server = TestHub::start(|c| c.shutdown_retry_hint = Dur(Duration::from_millis(1234))).await;
    let addr = server.addr();
    let (mut a, _) = Client::authed(addr, &token("alice")).await;
    let (mut b, _) = Client::authed(addr, &token("bob")).await;
    let drained = tokio::spawn(server.shutdown());
    for c in [&mut a, &mut b] {
        c.expect_close(4008, true).await;
        let retry = c.pending().iter().find_map(|f| match f {
            Frame::Notification(n) if n.method == "closing" => {
                n.params
                    .decode::<plexus_protocol::methods::ClosingParams>()
                    .unwrap()
                    .retry_after_ms
            }
            _ => None,
        });
        assert_eq!(retry, Some(1234));
    }
    assert_eq!(drained.await.unwrap(), 0, "all connections drained");
    // The listener is gone: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn slow_consumer_is_closed_4006_and_fast_subscribers_get_everything() {
    const FAST: usize = 100;
    const EVENTS: u32 = 300;
    let server = TestHub::start(|c| {
        c.max_outbound_bytes = 128 * 1024;
        c.max_frame_size = 64 * 1024;
        c.max_payload = 16 * 1024;
        c.rate_burst = 10_000;
        // Bound what the kernel absorbs, so the hub's own budget is what fills.
        c.tcp_send_buffer = 16 * 1024;
    })
    .await;
    let addr = server.addr();
    let mut slow = Client::connect_stalled(addr).await;
    slow.auth(&token("slow")).await.unwrap();
    slow.call("subscribe", &SubscribeParams::new("feed"))
        .await
        .unwrap();
    let mut fast = Vec::new();
    for i in 0..FAST {
        let (mut c, _) = Client::authed(addr, &token(&format!("fast{i}"))).await;
        c.call("subscribe", &SubscribeParams::new("feed"))
            .await
            .unwrap();
        fast.push(c);
    }
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                for i in 0..EVENTS {
                    let n = c.notification("event").await;
                    let p: plexus_protocol::methods::EventParams = n.params.decode().unwrap();
                    let (seq, _pad): (u32, minicbor::bytes::ByteVec) = p.data.decode().unwrap();
                    assert_eq!(seq, i, "fast subscriber missed or reordered an event");
                }
            })
        })
        .collect();
    let (mut publisher, _) = Client::authed(addr, &token("pub")).await;
    let pad = minicbor::bytes::ByteVec::from(vec![7u8; 2048]);
    let mut delivered = Vec::new();
    for i in 0..EVENTS {
        let data = RawValue::encode(&(i, pad.clone())).unwrap();
        let r = publisher
            .call("publish", &PublishParams::new("feed", data.as_raw_ref()))
            .await
            .unwrap();
        delivered.push(
            r.decode::<plexus_protocol::methods::PublishResult>()
                .unwrap()
                .delivered,
        );
    }
    // 300 × 2 KiB overflowed the stalled client's 128 KiB budget: it was
    // dropped from the fan-out part way, the fast ones never were.
    assert_eq!(delivered[0], FAST as u64 + 1);
    assert_eq!(*delivered.last().unwrap(), FAST as u64);
    // It learns why once it reads again.
    assert_eq!(slow.ended().await, Ended::Close(4006));
    for r in readers {
        r.await.unwrap();
    }
}

#[tokio::test]
async fn http_edge_rejects_bad_handshakes_and_serves_health_and_metrics() {
    let server = TestHub::start(|c| c.allowed_origins = "https://app.example".into()).await;
    let addr = server.addr();
    let get = |path: &'static str, headers: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    };
    let ws_headers = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let no_proto = get("/v1/ws", ws_headers).await;
    assert!(no_proto.starts_with("HTTP/1.1 400"), "{no_proto}");
    assert!(no_proto.contains("plexus.v1"));
    let bad_origin = get(
        "/v1/ws",
        "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: plexus.v1\r\nOrigin: https://evil.example\r\n",
    )
    .await;
    assert!(bad_origin.starts_with("HTTP/1.1 403"), "{bad_origin}");
    // P17: the subprotocol is matched exactly (item 12).
    let (head, _, _) = plexus_testkit::raw::http_exchange(
        addr,
        &plexus_testkit::raw::upgrade_request(Some("PLEXUS.V1"), ""),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    // P16: the whole Origin, ASCII case-insensitively, no normalization.
    for (origin, status) in [
        ("HTTPS://APP.EXAMPLE", "101"),
        ("https://app.example:443", "403"),
        ("https://app.example/", "403"),
        ("null", "403"),
    ] {
        let (head, _, _) = plexus_testkit::raw::http_exchange(
            addr,
            &plexus_testkit::raw::upgrade_request(
                Some("plexus.v1"),
                &format!("Origin: {origin}\r\n"),
            ),
        )
        .await;
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{origin}: {head}"
        );
    }
    let good_origin = {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Protocol: plexus.v1\r\nOrigin: https://app.example\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 512];
        let n = s.read(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    assert!(good_origin.starts_with("HTTP/1.1 101"), "{good_origin}");
    assert!(
        good_origin.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "RFC 6455 accept key"
    );
    assert!(get("/nope", "").await.starts_with("HTTP/1.1 404"));
    let health = get("/health", "").await;
    assert!(health.starts_with("HTTP/1.1 200"));
    let body: serde_json::Value =
        serde_json::from_str(health.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["status"], "ok");
    assert!(
        body["connections"].is_u64() && body["topics"].is_u64() && body["uptime_seconds"].is_u64()
    );
    // Some traffic, then the counters show it.
    let (mut c, _) = Client::authed(addr, &token("metrics")).await;
    c.call("ping", &Empty {}).await.unwrap();
    c.call("subscribe", &SubscribeParams::new("m"))
        .await
        .unwrap();
    let data = raw(&1u8);
    c.call("publish", &PublishParams::new("m", data.as_raw_ref()))
        .await
        .unwrap();
    c.call("nope", &Empty {}).await.unwrap_err();
    let metrics = get("/metrics", "").await;
    assert!(metrics.starts_with("HTTP/1.1 200"));
    for needle in [
        "plexus_connections ",
        "plexus_connections_total ",
        "plexus_frames_in_total ",
        "plexus_frames_out_total ",
        "plexus_bytes_in_total ",
        "plexus_bytes_out_total ",
        "plexus_requests_total{method=\"ping\",code=\"ok\"}",
        "plexus_requests_total{method=\"unknown\",code=\"method_not_found\"}",
        "plexus_request_duration_seconds_bucket{method=\"publish\",le=\"0.001\"}",
        "plexus_publishes_total ",
        "plexus_deliveries_total ",
        "plexus_subscriptions ",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in:\n{metrics}");
    }
}

/// §9.2: a client may send requests right after `auth` without waiting for
/// its response; they are handled after the `auth` outcome. Sent in one
/// TCP write, so the second frame is already buffered while the token is
/// verified and reading is paused — it must still be read afterwards.
#[tokio::test]
async fn requests_pipelined_after_auth_in_one_write_are_answered() {
    use plexus_protocol::frame::encode_request;
    let server = TestHub::start(|_| {}).await;
    let mut s = RawSocket::connect(server.addr()).await;
    let t = token("alice");
    let auth = plexus_protocol::methods::AuthParams {
        token: &t,
        instance: None,
        agent: None,
    };
    let mut bytes = plexus_testkit::raw::frame_bytes(
        true,
        0x2,
        &encode_request(1, "auth", &auth).unwrap(),
        true,
    );
    bytes.extend(plexus_testkit::raw::frame_bytes(
        true,
        0x2,
        &encode_request(2, "ping", &raw(&"after auth")).unwrap(),
        true,
    ));
    s.send_raw(&bytes).await.unwrap();
    let answered = tokio::time::timeout(WAIT, async {
        assert!(s.response(1).await.outcome.is_ok(), "auth succeeds");
        s.response(2).await
    })
    .await
    .expect("the pipelined request is answered");
    assert_eq!(answered.outcome.unwrap(), raw(&"after auth"));
}
