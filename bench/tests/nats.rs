//! The NATS baseline against a real `nats-server` on 127.0.0.1 (skipped,
//! with a message, when the binary is not installed).

use std::time::Duration;

use plexus_bench::nats::{self, Event, NatsConn, NatsServer};
use plexus_bench::scenario::{FanoutConfig, Rate, RpcConfig, StormConfig};

/// Starts a server, or says why the test is skipped.
async fn server(extra: &str) -> Option<NatsServer> {
    if nats::nats_server_binary().is_none() {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
        return None;
    }
    match NatsServer::start_with(extra).await {
        Ok(s) => Some(s),
        Err(e) => panic!("nats-server did not start: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_round_trip() {
    let Some(server) = server("").await else {
        return;
    };
    assert!(server.ws_url().starts_with("ws://127.0.0.1:"));
    assert!(server.rss_kib().is_some_and(|k| k > 0));
    let Ok(mut conn) = NatsConn::connect(&server.ws_url()).await else {
        panic!("connect failed")
    };
    assert!(conn.info().contains("server_id"), "{}", conn.info());
    conn.outbox().subscribe(b"t.>", 7);
    assert!(conn.round_trip().await.is_ok());
    conn.outbox().publish(b"t.a", Some(b"r.1"), b"hello");
    conn.outbox().publish(b"t.b", None, &[0u8; 100_000]);
    assert!(conn.flush().await.is_ok());
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), conn.next_event()).await {
            Ok(Ok(Event::Msg(m))) => got.push((
                m.subject.to_vec(),
                m.sid,
                m.reply.map(<[u8]>::to_vec),
                m.payload.len(),
            )),
            Ok(Ok(_)) => {}
            other => panic!("no message: {:?}", other.map(|r| r.map(|_| ()))),
        }
    }
    assert_eq!(got[0], (b"t.a".to_vec(), 7, Some(b"r.1".to_vec()), 5));
    assert_eq!(got[1], (b"t.b".to_vec(), 7, None, 100_000));
    conn.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_fanout_delivers_to_every_subscriber() {
    let Some(server) = server("").await else {
        return;
    };
    let cfg = FanoutConfig {
        publishers: 1,
        subscribers: 3,
        topics: 1,
        payload: 64,
        rate: Rate::Saturate { window: 16 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        stalled: 0,
    };
    let r = nats::fanout(&server, &cfg).await;
    eprintln!("{r:?}");
    assert!(r.delivered_per_sec > 0.0, "{r:?}");
    assert!(r.published_per_sec > 0.0, "{r:?}");
    let expected = 3.0 * r.published_per_sec;
    assert!(
        (r.delivered_per_sec - expected).abs() <= 0.1 * expected,
        "delivered ≉ 3 × published: {r:?}"
    );
    assert!(r.latency.samples > 0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.stalled_closed.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixed_rate_fanout_keeps_the_rate() {
    let Some(server) = server("").await else {
        return;
    };
    let cfg = FanoutConfig {
        publishers: 2,
        subscribers: 4,
        topics: 2,
        payload: 128,
        rate: Rate::Fixed { per_sec: 2_000 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(1000),
        stalled: 0,
    };
    let r = nats::fanout(&server, &cfg).await;
    eprintln!("{r:?}");
    assert!((r.published_per_sec - 2_000.0).abs() < 200.0, "{r:?}");
    // Each topic has two subscribers.
    assert!((r.delivered_per_sec - 4_000.0).abs() < 400.0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_reply_answers() {
    let Some(server) = server("").await else {
        return;
    };
    let cfg = RpcConfig {
        connections: 2,
        in_flight: 4,
        payload: 64,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
    };
    let r = nats::request_reply(&server, &cfg).await;
    eprintln!("{r:?}");
    assert!(r.calls_per_sec > 0.0, "{r:?}");
    assert!(r.latency.samples > 0, "{r:?}");
    assert_eq!(r.errors, 0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_cut_off() {
    let Some(server) = server("max_pending: 1MB\nwrite_deadline: \"1s\"").await else {
        return;
    };
    let cfg = FanoutConfig {
        publishers: 1,
        subscribers: 2,
        topics: 1,
        payload: 1024,
        rate: Rate::Saturate { window: 64 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_secs(2),
        stalled: 1,
    };
    let r = nats::fanout(&server, &cfg).await;
    eprintln!("{r:?}");
    assert!(r.delivered_per_sec > 0.0, "{r:?}");
    assert_eq!(r.stalled_closed.len(), 1, "{r:?}");
    assert!(
        r.stalled_closed[0].is_some(),
        "the stalled subscriber was not closed: {r:?}\n{}",
        server.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_comes_back_after_a_reconnect_storm() {
    let Some(server) = server("").await else {
        return;
    };
    let cfg = StormConfig {
        clients: 50,
        concurrency: 10,
        topics: 5,
        settle: Duration::ZERO,
        deadline: Duration::from_secs(20),
        sources: vec!["127.0.0.2".parse().unwrap()],
    };
    let r = nats::reconnect_storm(&server, &cfg).await;
    eprintln!("{r:?}");
    assert_eq!(r.connected, 50, "{r:?}");
    assert_eq!(r.reconnected, 50, "{r:?}");
    assert_eq!(r.failed, 0, "{r:?}");
    assert_eq!(r.per_client.samples, 50, "{r:?}");
    assert!(
        // The histogram keeps 3 significant digits: its max may sit up to
        // 0.1 % above the exact value.
        r.total_ms > 0.0 && r.per_client.max_us <= r.total_ms * 1e3 * 1.002 + 1.0,
        "{r:?}"
    );
}
