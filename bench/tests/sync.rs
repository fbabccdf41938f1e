//! The wire layer of the record-sync scenarios against a real hub with
//! `[sync]` on, on SQLite and (with `PLEXUS_TEST_POSTGRES_URL`) on
//! PostgreSQL, over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use plexus_bench::plexus::sync::{SyncPullConfig, SyncPushConfig};
use plexus_bench::plexus::sync_wire;
use plexus_bench::procs::BENCH_SECRET;
use plexus_server::auth::{AuthSettings, HmacAlg, KeySource};
use plexus_testkit::TestHub;
use plexus_testkit::durable::TestDb;

/// A hub on `db` with sync on and quotas that do not bind, verifying the
/// bench's tokens, without rate limits (as the bench starts its hubs).
async fn sync_hub(db: &TestDb) -> TestHub {
    let auth = AuthSettings::new(KeySource::Hmac {
        secret: BENCH_SECRET.as_bytes().to_vec(),
        alg: HmacAlg::HS256,
    });
    TestHub::start_with_auth(auth, |c| {
        db.apply(c);
        c.sync.enabled = true;
        c.sync.max_records = 1 << 40;
        c.sync.max_bytes = 1 << 50;
        c.rate_per_sec = 100_000_000;
        c.rate_burst = 100_000_000;
        c.max_connections_per_user = 1_000_000;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wire_pushes_are_answered_and_a_pull_returns_every_record() {
    for db in TestDb::all().await {
        let hub = sync_hub(&db).await;
        let cfg = SyncPushConfig {
            clients: 3,
            batch: 10,
            payload: 32,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
        };
        let r = sync_wire::push(&hub.url(), &cfg).await;
        assert_eq!(r.errors, 0, "{}: {r:?}", db.name());
        assert!(r.pushes_per_sec > 0.0, "{}: {r:?}", db.name());
        assert!((r.records_per_sec - 10.0 * r.pushes_per_sec).abs() < 1e-6);
        hub.shutdown().await;
    }
    // A fresh database each: the pull must find exactly what was filled.
    for db in TestDb::all().await {
        let hub = sync_hub(&db).await;
        let cfg = SyncPullConfig {
            records: 1_234,
            payload: 32,
            fill_clients: 3,
            fill_batch: 100,
            pulls: 2,
        };
        let r = sync_wire::pull(&hub.url(), &cfg).await;
        assert_eq!(r.errors, 0, "{}: {r:?}", db.name());
        assert_eq!(r.received, 1_234, "{}", db.name());
        assert!(r.chunks >= 3, "{}: pages of at most 500: {r:?}", db.name());
        hub.shutdown().await;
    }
}
