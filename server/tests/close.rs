//! Lingering close (decision P11, item 1): for every close code the hub
//! sends, a peer that keeps sending after the trigger sees the responses
//! already written, `closing` when the code is announced, the Close frame
//! with the right code, and then a clean end of the connection — never a
//! reset.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, Empty, PublishParams, SubscribeParams,
};
use plexus_protocol::{CloseCode, Frame};
use plexus_server::config::{Config, Dur};
use plexus_testkit::raw::{OP_BINARY, OP_TEXT, frame_bytes};
use plexus_testkit::*;

/// Settings under which the filler traffic itself trips nothing.
fn roomy(c: &mut Config) {
    c.rate_per_sec = 100_000;
    c.rate_burst = 100_000;
    c.close_linger = Dur(Duration::from_secs(1));
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A `ping` request frame with `id`.
fn ping(id: u64) -> Vec<u8> {
    encode_request(id, "ping", &Empty {}).unwrap()
}

async fn authed(hub: &TestHub, user: &str) -> RawSocket {
    let mut s = RawSocket::connect(hub.addr()).await;
    assert!(s.auth(&token(user)).await.outcome.is_ok());
    s
}

/// The report shows a clean close with `code`, announced if it should be,
/// and the response to request 9000 written before it when `answered`.
fn clean(report: &CloseReport, code: u16, answered: bool) {
    assert!(
        !report.reset,
        "{code}: the connection was reset: {report:?}"
    );
    assert_eq!(report.close_code, Some(code), "{report:?}");
    assert!(report.eof, "{code}: the hub closed the TCP connection");
    let announced = CloseCode::from_u16(code).is_some_and(CloseCode::announced);
    assert_eq!(
        report.closing_code(),
        announced.then_some(code),
        "{code}: closing iff announced"
    );
    if answered {
        assert!(
            report
                .frames
                .iter()
                .any(|f| matches!(f, Frame::Response(r) if r.id == 9000)),
            "{code}: the response written before the close arrives: {report:?}"
        );
    }
    assert!(
        report.sent_after > 0 || code == 4006,
        "the peer kept sending"
    );
}

#[tokio::test]
async fn auth_failure_4000() {
    let hub = TestHub::start(roomy).await;
    let mut s = RawSocket::connect(hub.addr()).await;
    let bad = encode_request(
        1,
        "auth",
        &AuthParams {
            token: "not-a-jwt",
            instance: None,
            agent: None,
        },
    )
    .unwrap();
    s.send_binary(&bad).await.unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 4000, false);
}

#[tokio::test]
async fn auth_timeout_4001() {
    let hub = TestHub::start(|c| {
        roomy(c);
        c.auth_timeout = Dur(Duration::from_millis(200));
    })
    .await;
    let mut s = RawSocket::connect(hub.addr()).await;
    s.send_binary(&ping(9000)).await.unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(500)).await, 4001, true);
}

#[tokio::test]
async fn token_expiry_4002() {
    // `exp` is whole seconds: E falls within the next second, during the
    // 1.5 s the peer keeps sending, which the linger must outlast.
    let hub = TestHub::start(|c| {
        roomy(c);
        c.close_linger = Dur(Duration::from_secs(3));
    })
    .await;
    let mut s = RawSocket::connect(hub.addr()).await;
    assert!(s.auth(&token_expiring_in("alice", 1)).await.outcome.is_ok());
    clean(&s.linger(Some(ping(50_000)), ms(1500)).await, 4002, false);
}

#[tokio::test]
async fn refresh_for_another_subject_4003() {
    let hub = TestHub::start(roomy).await;
    let mut s = authed(&hub, "alice").await;
    s.send_binary(&ping(9000)).await.unwrap();
    let other = token("mallory");
    s.request("auth.refresh", &AuthRefreshParams { token: &other })
        .await
        .unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 4003, true);
}

#[tokio::test]
async fn too_many_connections_4004() {
    let hub = TestHub::start(|c| {
        roomy(c);
        c.max_connections_per_user = 1;
    })
    .await;
    let _first = authed(&hub, "alice").await;
    let mut s = RawSocket::connect(hub.addr()).await;
    let t = token("alice");
    s.request(
        "auth",
        &AuthParams {
            token: &t,
            instance: None,
            agent: None,
        },
    )
    .await
    .unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 4004, false);
}

#[tokio::test]
async fn protocol_error_4005() {
    let hub = TestHub::start(roomy).await;
    let mut s = authed(&hub, "alice").await;
    // The ping and the undecodable frame arrive together.
    let mut both = frame_bytes(true, OP_BINARY, &ping(9000), true);
    both.extend(frame_bytes(true, OP_BINARY, &[0xff], true));
    s.send_raw(&both).await.unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 4005, true);
}

#[tokio::test]
async fn slow_consumer_4006() {
    let hub = TestHub::start(|c| {
        roomy(c);
        c.max_outbound_bytes = 64 * 1024;
        c.max_frame_size = 16 * 1024;
        c.max_payload = 8 * 1024;
        c.tcp_send_buffer = 16 * 1024;
    })
    .await;
    let mut slow = RawSocket::connect_stalled(hub.addr()).await;
    assert!(slow.auth(&token("slow")).await.outcome.is_ok());
    let id = slow
        .request("subscribe", &SubscribeParams::new("feed"))
        .await
        .unwrap();
    slow.response(id).await;
    let (mut publisher, _) = Client::authed(hub.addr(), &token("pub")).await;
    let data = raw(&minicbor::bytes::ByteVec::from(vec![1u8; 4096]));
    for _ in 0..200 {
        publisher
            .call("publish", &PublishParams::new("feed", data.as_raw_ref()))
            .await
            .unwrap();
        if hub.hub().open_connections() < 2 {
            break;
        }
    }
    // The stalled peer reads again and learns why it was cut off.
    clean(&slow.linger(None, ms(0)).await, 4006, false);
}

#[tokio::test]
async fn rate_limited_4007() {
    let hub = TestHub::start(|c| {
        c.rate_per_sec = 1;
        c.rate_burst = 5;
        c.rate_strikes = 3;
        c.close_linger = Dur(Duration::from_secs(1));
    })
    .await;
    let mut s = authed(&hub, "alice").await;
    s.send_binary(&ping(9000)).await.unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 4007, true);
}

#[tokio::test]
async fn shutdown_4008() {
    let hub = TestHub::start(|c| {
        roomy(c);
        c.shutdown_grace = Dur(Duration::from_secs(5));
    })
    .await;
    let mut s = authed(&hub, "alice").await;
    s.send_binary(&ping(9000)).await.unwrap();
    s.response(9000).await;
    let drained = tokio::spawn(hub.shutdown());
    let report = s.linger(Some(ping(50_000)), ms(300)).await;
    assert!(!report.reset, "{report:?}");
    assert_eq!(report.close_code, Some(4008));
    assert_eq!(report.closing_code(), Some(4008));
    assert_eq!(drained.await.unwrap(), 0);
}

#[tokio::test]
async fn replaced_4009() {
    let hub = TestHub::start(roomy).await;
    let t = token("alice");
    let auth = |instance| {
        encode_request(
            1,
            "auth",
            &AuthParams {
                token: &t,
                instance: Some(instance),
                agent: None,
            },
        )
        .unwrap()
    };
    let mut first = RawSocket::connect(hub.addr()).await;
    first.send_binary(&auth("phone")).await.unwrap();
    first.response(1).await.outcome.unwrap();
    first.send_binary(&ping(9000)).await.unwrap();
    first.response(9000).await;
    let mut second = RawSocket::connect(hub.addr()).await;
    second.send_binary(&auth("phone")).await.unwrap();
    second.response(1).await.outcome.unwrap();
    clean(
        &first.linger(Some(ping(50_000)), ms(300)).await,
        4009,
        false,
    );
}

#[tokio::test]
async fn keepalive_timeout_4010() {
    let hub = TestHub::start(|c| {
        roomy(c);
        c.ping_interval = Dur(Duration::from_millis(100));
        c.pong_timeout = Dur(Duration::from_millis(100));
    })
    .await;
    let mut s = authed(&hub, "alice").await;
    // The raw peer never answers the hub's pings, though it keeps sending.
    clean(&s.linger(Some(ping(50_000)), ms(500)).await, 4010, false);
}

#[tokio::test]
async fn message_too_big_1009_before_auth() {
    let hub = TestHub::start(roomy).await;
    let mut s = RawSocket::connect(hub.addr()).await;
    // Just over the pre-auth size: refused on the header (P12).
    s.send_header(OP_BINARY, 16 * 1024 + 1).await.unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 1009, false);
}

#[tokio::test]
async fn text_1003_and_invalid_utf8_1007() {
    let hub = TestHub::start(roomy).await;
    let mut s = authed(&hub, "alice").await;
    s.send_binary(&ping(9000)).await.unwrap();
    s.send_frame(true, OP_TEXT, b"[0,1,\"ping\",null]", true)
        .await
        .unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 1003, true);

    let mut s = authed(&hub, "bob").await;
    s.send_frame(true, OP_TEXT, &[0xc3, 0x28], true)
        .await
        .unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 1007, false);
}

#[tokio::test]
async fn websocket_protocol_error_1002() {
    let hub = TestHub::start(roomy).await;
    let mut s = authed(&hub, "alice").await;
    s.send_binary(&ping(9000)).await.unwrap();
    s.response(9000).await;
    // An unmasked client frame (RFC 6455 §5.1).
    s.send_frame(true, OP_BINARY, &ping(3), false)
        .await
        .unwrap();
    clean(&s.linger(Some(ping(50_000)), ms(300)).await, 1002, false);
}
