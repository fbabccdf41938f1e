//! What the metrics count (item 11), read from `/metrics`. One test: the
//! recorder is process-wide.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use plexus_protocol::methods::{PublishParams, SubscribeParams};
use plexus_server::config::Dur;
use plexus_testkit::raw::{OP_CLOSE, OP_PING};
use plexus_testkit::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(hub: &TestHub) -> String {
    let mut s = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels), 0 if absent.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn closes_are_counted_once_where_they_are_written() {
    let hub = TestHub::start(|c| {
        c.rate_per_sec = 100_000;
        c.rate_burst = 100_000;
        c.ping_interval = Dur(Duration::from_millis(50));
        c.pong_timeout = Dur(Duration::from_millis(500));
        c.max_outbound_bytes = 64 * 1024;
        c.max_frame_size = 16 * 1024;
        c.max_payload = 4 * 1024;
        c.tcp_send_buffer = 16 * 1024;
        c.close_linger = Dur(Duration::from_millis(200));
    })
    .await;
    let before = scrape(&hub).await;

    // A slow consumer with a ping outstanding: closed 4006, counted once,
    // never again as 4010 (1,000 stalled subscribers used to count both).
    let mut slow = RawSocket::connect_stalled(hub.addr()).await;
    assert!(slow.auth(&token("slow")).await.outcome.is_ok());
    let id = slow
        .request("subscribe", &SubscribeParams::new("feed"))
        .await
        .unwrap();
    slow.response(id).await;
    let after_sub = scrape(&hub).await;
    assert_eq!(value(&after_sub, "plexus_subscriptions"), 1.0);
    // Wait for the hub's ping, and never answer it.
    while slow.read_frame().await.unwrap().unwrap().opcode != OP_PING {}
    let (mut publisher, _) = Client::authed(hub.addr(), &token("pub")).await;
    let data = raw(&minicbor::bytes::ByteVec::from(vec![1u8; 2048]));
    // Until the event is queued for no one: the slow consumer overflowed
    // (and is not counted in `delivered`, P18).
    loop {
        let r: plexus_protocol::methods::PublishResult = publisher
            .call("publish", &PublishParams::new("feed", data.as_raw_ref()))
            .await
            .unwrap()
            .decode()
            .unwrap();
        if r.delivered == 0 {
            break;
        }
    }
    // (The publisher does not read either: it would be closed 4010.)
    drop(publisher);
    // Still not reading, past the pong deadline; then read the Close.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let mut code = None;
    while let Ok(Some(f)) = slow.read_frame().await {
        if f.opcode == OP_CLOSE {
            code = f.close_code();
            let _ = slow.send_close(4006, b"").await;
        }
    }
    assert_eq!(code, Some(4006));

    // An abrupt disconnect is not a 1002 the hub sent.
    let mut gone = RawSocket::connect(hub.addr()).await;
    assert!(gone.auth(&token("gone")).await.outcome.is_ok());
    drop(gone);
    // A Close with a code a peer may not send: the WebSocket layer answers
    // 1002 itself, and that counts.
    let mut bad = RawSocket::connect(hub.addr()).await;
    bad.send_close(1005, b"").await.unwrap();
    assert_eq!(
        bad.read_frame().await.unwrap().unwrap().close_code(),
        Some(1002)
    );
    drop(bad);
    hub.wait_for_connections(0).await;

    let after = scrape(&hub).await;
    let delta = |name: &str| value(&after, name) - value(&before, name);
    assert_eq!(delta(r#"plexus_closes_total{code="4006"}"#), 1.0, "{after}");
    assert_eq!(delta(r#"plexus_closes_total{code="4010"}"#), 0.0, "{after}");
    assert_eq!(delta(r#"plexus_closes_total{code="1002"}"#), 1.0, "{after}");
    assert_eq!(delta("plexus_slow_consumer_closes_total"), 1.0);
    assert_eq!(value(&after, "plexus_subscriptions"), 0.0);
    assert_eq!(value(&after, "plexus_connections"), 0.0);
    assert!(delta("plexus_frames_in_total") >= 3.0);
    assert!(delta(r#"plexus_requests_total{method="auth",code="ok"}"#) >= 3.0);
}
