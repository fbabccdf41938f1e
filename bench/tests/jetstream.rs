//! The JetStream baseline against a real `nats-server` with JetStream on
//! 127.0.0.1 (skipped, with a message, when no binary is installed; the
//! `sync_interval: always` case also when the binary predates 2.10).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use plexus_bench::nats::jetstream::{self, JsSync, STREAM, start_jetstream};
use plexus_bench::nats::{Event, NatsConn, jetstream_server_binary};
use plexus_bench::scenario::{CatchupConfig, DurablePublishConfig, FanoutConfig, Rate};

/// The server binary, or why the test is skipped.
fn binary() -> Option<PathBuf> {
    let bin = jetstream_server_binary();
    if bin.is_none() {
        eprintln!("skipped: nats-server is not installed (apt-get install nats-server)");
    }
    bin
}

/// Whether `bin --version` is 2.10 or later (`sync_interval`).
fn knows_sync_interval(bin: &PathBuf) -> bool {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "nats-server: v2.15.1"
    let version = out.trim().rsplit('v').next().unwrap_or("");
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 10)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_publishes_are_stored_in_the_stream() {
    let Some(bin) = binary() else { return };
    let server = start_jetstream(&bin, JsSync::Default)
        .await
        .expect("JetStream starts");
    let cfg = DurablePublishConfig {
        publishers: 2,
        window: 4,
        payload: 64,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(500),
    };
    let r = jetstream::durable_publish(&server, &cfg).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.acked_per_sec > 0.0, "{r:?}");
    assert!(r.ack_latency.samples > 0, "{r:?}");
    // The stream holds at least what was acknowledged in the window.
    let mut conn = NatsConn::connect(&server.ws_url()).await.unwrap();
    let info = jetstream::request(&mut conn, &format!("$JS.API.STREAM.INFO.{STREAM}"), "")
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    let stored = info["state"]["messages"].as_u64().unwrap();
    assert!(stored as f64 >= r.acked_per_sec * 0.5, "{stored} {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_always_is_configured_and_acknowledges() {
    let Some(bin) = binary() else { return };
    if !knows_sync_interval(&bin) {
        let err = start_jetstream(&bin, JsSync::Always).await.unwrap_err();
        assert!(err.to_string().contains("2.10"), "{err}");
        eprintln!("skipped: {} predates sync_interval", bin.display());
        return;
    }
    let server = start_jetstream(&bin, JsSync::Always)
        .await
        .expect("JetStream starts");
    let cfg = DurablePublishConfig {
        publishers: 1,
        window: 1,
        payload: 128,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(300),
    };
    let r = jetstream::durable_publish(&server, &cfg).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.acked_per_sec > 0.0, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_consumer_catches_up_with_every_stored_message() {
    let Some(bin) = binary() else { return };
    let server = start_jetstream(&bin, JsSync::Default).await.unwrap();
    let cfg = CatchupConfig {
        behind: 3000,
        payload: 32,
        fill_window: 256,
    };
    let r = jetstream::catchup(&server, &cfg).await;
    assert_eq!(r.errors, 0, "{r:?}");
    assert_eq!(r.received, 3000, "{r:?}");
    assert!(r.fill_per_sec > 0.0 && r.events_per_sec > 0.0, "{r:?}");
    assert!(r.first_ms <= r.total_ms, "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_consumer_latency_sees_the_published_rate() {
    let Some(bin) = binary() else { return };
    let server = start_jetstream(&bin, JsSync::Default).await.unwrap();
    let cfg = FanoutConfig {
        publishers: 1,
        subscribers: 2,
        topics: 1,
        payload: 64,
        rate: Rate::Fixed { per_sec: 500 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(600),
        stalled: 0,
    };
    let r = jetstream::push_latency(&server, &cfg).await;
    assert_eq!(r.errors, 0, "{r:?}");
    // Two consumers, each receiving every message of the 500/s.
    assert!(r.delivered_per_sec > 500.0, "{r:?}");
    assert!(r.latency.samples > 0 && r.latency.p99_us > 0.0, "{r:?}");
    // Not a stream subject: a plain subscriber sees the messages too.
    let mut conn = NatsConn::connect(&server.ws_url()).await.unwrap();
    conn.outbox().subscribe(b"bench.>", 1);
    conn.round_trip().await.unwrap();
    conn.outbox().publish(b"bench.t0", None, b"x");
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(Event::Msg(m)) = conn.next_event().await {
                return m.subject.to_vec();
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, b"bench.t0");
}
