//! The Plexus side of the durable scenarios against a real hub with a
//! durable namespace, on SQLite and (with `PLEXUS_TEST_POSTGRES_URL`) on
//! PostgreSQL, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use plexus_bench::plexus::durable::{self, Database, StreamDurability, start_durable};
use plexus_bench::plexus::{call, connect};
use plexus_bench::procs::{BENCH_SECRET, HubBinary};
use plexus_bench::scenario::{CatchupConfig, DURABLE_SUBJECTS, DurablePublishConfig};
use plexus_protocol::methods::{HistoryParams, HistoryResult};
use plexus_server::auth::{AuthSettings, HmacAlg, KeySource};
use plexus_testkit::TestHub;
use plexus_testkit::durable::{TestDb, streams_config};

/// A hub on `db` with one durable namespace `pattern`, verifying the
/// bench's tokens, without rate limits (as the bench starts its hubs).
async fn hub(db: &TestDb, pattern: &str) -> TestHub {
    let auth = AuthSettings::new(KeySource::Hmac {
        secret: BENCH_SECRET.as_bytes().to_vec(),
        alg: HmacAlg::HS256,
    });
    TestHub::start_with_auth(auth, |c| {
        db.apply(c);
        c.streams = streams_config(&[pattern]);
        c.rate_per_sec = 100_000_000;
        c.rate_burst = 100_000_000;
        c.max_connections_per_user = 1_000_000;
    })
    .await
}

/// The last offset of `topic`, read with `history`.
async fn last_offset(url: &str, topic: &str) -> u64 {
    let mut s = connect(url, "reader", None).await.unwrap();
    let raw = call(
        &mut s.ws,
        3,
        "history",
        &HistoryParams::new(topic).with_limit(1),
    )
    .await
    .unwrap();
    raw.decode::<HistoryResult>().unwrap().last
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_publishes_are_acknowledged_after_the_commit() {
    for db in TestDb::all().await {
        let hub = hub(&db, DURABLE_SUBJECTS).await;
        let cfg = DurablePublishConfig {
            publishers: 3,
            window: 2,
            payload: 64,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
        };
        let r = durable::durable_publish(&hub.url(), &cfg).await;
        assert_eq!(r.errors, 0, "{}: {r:?}", db.name());
        assert!(r.acked_per_sec > 0.0, "{}: {r:?}", db.name());
        assert_eq!(r.durability.as_deref(), Some("fsynced"), "{}", db.name());
        assert!(r.ack_latency.samples > 0, "{}: {r:?}", db.name());
        // Every publisher's topic holds its publishes, the measured ones
        // and those before and after the window.
        for j in 0..cfg.publishers {
            let last = last_offset(&hub.url(), &cfg.topic(j)).await;
            assert!(last > 0, "{}: {} is empty", db.name(), cfg.topic(j));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_a_topic_that_is_not_durable_count_as_errors() {
    let db = TestDb::sqlite();
    let hub = hub(&db, "elsewhere.>").await;
    let cfg = DurablePublishConfig {
        publishers: 1,
        window: 1,
        payload: 16,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(200),
    };
    let r = durable::durable_publish(&hub.url(), &cfg).await;
    assert_eq!(r.acked_per_sec, 0.0, "{r:?}");
    assert!(r.errors > 0, "{r:?}");
    assert_eq!(r.durability, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_far_behind_recovers_every_event() {
    for db in TestDb::all().await {
        let hub = hub(&db, DURABLE_SUBJECTS).await;
        let cfg = CatchupConfig {
            behind: 5000,
            payload: 100,
            fill_window: 512,
        };
        let r = durable::catchup(&hub.url(), &cfg).await;
        assert_eq!(r.errors, 0, "{}: {r:?}", db.name());
        assert_eq!(r.received, 5000, "{}: {r:?}", db.name());
        assert_eq!(
            r.outcome.as_deref(),
            Some("recovered 5000"),
            "{}",
            db.name()
        );
        assert!(r.first_ms > 0.0 && r.first_ms <= r.total_ms, "{r:?}");
        assert!(r.events_per_sec > 0.0 && r.fill_per_sec > 0.0, "{r:?}");
    }
}

/// The suite's way: the `plexus` binary with a config file (and a database
/// created with `psql`), when a binary was built next to this test (as
/// `cargo test --workspace` does); skipped otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_binary_starts_with_a_durable_namespace() {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let Some(bin) = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("plexus"))
        .filter(|p| p.is_file())
    else {
        eprintln!("skipped: no plexus binary next to the test (cargo build -p plexus-server)");
        return;
    };
    let bin = HubBinary::probe(bin, "plexus").unwrap();
    if !bin.accepts("--database-url") {
        eprintln!(
            "skipped: {} predates durable streams (rebuild it: cargo build -p plexus-server)",
            bin.path.display()
        );
        return;
    }
    let mut dbs = vec![Database::Sqlite];
    match std::env::var("PLEXUS_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => dbs.push(Database::Postgres(url)),
        _ => eprintln!("postgres: skipped (PLEXUS_TEST_POSTGRES_URL not set)"),
    }
    for db in dbs {
        let hub = start_durable(&bin, &db, StreamDurability::Committed, &[])
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", db.label()));
        let cfg = DurablePublishConfig {
            publishers: 2,
            window: 1,
            payload: 32,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
        };
        let r = durable::durable_publish(&hub.hub.url(), &cfg).await;
        assert_eq!(r.errors, 0, "{}: {r:?}", db.label());
        assert_eq!(r.durability.as_deref(), Some("committed"), "{}", db.label());
    }
}
