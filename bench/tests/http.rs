//! The HTTP surface's scenarios against a real hub configured from the
//! bench's own config file text, over real sockets: every request answered,
//! every SSE event read with its stamp.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::Duration;

use plexus_bench::plexus::http::http_toml;
use plexus_bench::plexus::{api_publish, sse_fanout, ws_publish};
use plexus_bench::procs::BENCH_SECRET;
use plexus_bench::scenario::{FanoutConfig, PublishLoadConfig, Rate};
use plexus_server::auth::{AuthSettings, HmacAlg, KeySource};
use plexus_testkit::TestHub;

/// A hub with the bench's API key (parsed from [`http_toml`], as the
/// `plexus` binary reads it), verifying the bench's tokens, without rate
/// limits.
async fn hub() -> TestHub {
    let file = plexus_server::config::parse_file(Path::new("plexus.toml"), &http_toml())
        .expect("the bench's config file parses");
    let auth = AuthSettings::new(KeySource::Hmac {
        secret: BENCH_SECRET.as_bytes().to_vec(),
        alg: HmacAlg::HS256,
    });
    TestHub::start_with_auth(auth, |c| {
        c.http = file.http;
        c.rate_per_sec = 100_000_000;
        c.rate_burst = 100_000_000;
        c.max_connections_per_user = 1_000_000;
    })
    .await
}

fn publish_cfg(batch: usize, parallel: bool) -> PublishLoadConfig {
    PublishLoadConfig {
        clients: 2,
        payload: 128,
        batch,
        parallel,
        warmup: Duration::from_millis(100),
        duration: Duration::from_millis(400),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_publishes_and_batches_are_all_answered_with_success() {
    let hub = hub().await;
    for (batch, parallel) in [(1, false), (10, false), (10, true)] {
        let r = api_publish(hub.addr(), &publish_cfg(batch, parallel)).await;
        assert_eq!(r.errors, 0, "batch {batch} parallel {parallel}: {r:?}");
        assert!(r.requests_per_sec > 0.0, "{r:?}");
        let per_request = r.publishes_per_sec / r.requests_per_sec;
        assert!((per_request - batch as f64).abs() < 1e-6, "{r:?}");
        assert!(r.latency.samples > 0, "{r:?}");
    }
    for batch in [1, 10] {
        let r = ws_publish(&hub.url(), &publish_cfg(batch, false)).await;
        assert_eq!(r.errors, 0, "{r:?}");
        assert_eq!(r.batch, batch);
        assert!(r.publishes_per_sec > 0.0, "{r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_receive_every_event_with_its_stamp() {
    let hub = hub().await;
    let cfg = FanoutConfig {
        publishers: 1,
        subscribers: 5,
        topics: 1,
        payload: 128,
        rate: Rate::Fixed { per_sec: 200 },
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(500),
        stalled: 0,
    };
    let r = sse_fanout(hub.addr(), &cfg).await;
    assert_eq!(r.fanout.errors, 0, "{r:?}");
    assert!(r.closed.is_empty(), "{r:?}");
    // 200/s for 0.5 s to 5 streams: about 500 events, each one stamped.
    assert!(r.fanout.delivered_per_sec > 800.0, "{r:?}");
    let delivered = r.fanout.delivered_per_sec * cfg.duration.as_secs_f64();
    assert!(
        (r.fanout.latency.samples as f64 - delivered).abs() < 1e-6,
        "{r:?}"
    );
    assert!(r.fanout.latency.p99_us < 1_000_000.0, "{r:?}");
}
