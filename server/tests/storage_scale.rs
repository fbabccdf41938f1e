//! Scale checks of durable streams: a catch-up of 1,000,000 events in
//! bounded batches, and (ignored, for a printed figure) throughput.
//!
//! Run with `cargo test -p plexus-server --test storage_scale` (SQLite;
//! set `PLEXUS_TEST_POSTGRES_URL` for PostgreSQL too). The figures:
//! `cargo test --release -p plexus-server --test storage_scale -- --ignored
//! --nocapture`.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    clippy::cast_precision_loss,
    reason = "the suite's functions are tests run by the generated #[test]s"
)]

mod storage_support;

use std::time::{Duration, Instant};

use plexus_protocol::topic::Pattern;
use plexus_server::streams::{NamespaceConfig, PublishRequest, ResumeFrom, Streams};
use storage_support::{Fixture, config, decode_list, payload, rss_kib};

/// Publishes `n` events on `topic` with up to `window` in flight.
async fn fill(s: &Streams, topic: &str, n: u64, window: usize) {
    let mut futs = std::collections::VecDeque::with_capacity(window);
    for i in 0..n {
        futs.push_back(s.publish(PublishRequest::new(topic, payload(i))));
        if futs.len() >= window {
            futs.pop_front().unwrap().await.unwrap();
        }
    }
    for f in futs {
        f.await.unwrap();
    }
}

/// Streams the whole topic from offset 0; returns (events, chunks, time).
async fn catch_up(
    s: &Streams,
    topic: &str,
    chunk_bytes: usize,
    check: bool,
) -> (u64, u64, Duration) {
    let p = Pattern::parse(topic, 256).unwrap();
    let mut r = s
        .resume(
            &p,
            ResumeFrom::Offset {
                epoch: None,
                offset: 0,
            },
            chunk_bytes,
        )
        .unwrap();
    let started = Instant::now();
    let (mut next, mut chunks) = (1u64, 0u64);
    while let Some(list) = r.next_chunk().await.unwrap() {
        chunks += 1;
        assert!(list.0.bodies.len() <= chunk_bytes, "chunk over its budget");
        assert!(list.0.len() <= 4096, "chunk over catchup-page");
        if check {
            let bytes = minicbor::to_vec(list).unwrap();
            for e in decode_list(&bytes) {
                assert_eq!(e.offset, next);
                next += 1;
            }
        } else {
            for m in &list.0.metas {
                assert_eq!(m.offset, next);
                next += 1;
            }
        }
    }
    let elapsed = started.elapsed();
    let sum = r.summary().unwrap();
    assert_eq!(sum.count, next - 1);
    (next - 1, chunks, elapsed)
}

suite!(a_million_events_catch_up_in_bounded_batches);

async fn a_million_events_catch_up_in_bounded_batches(f: Fixture) {
    const N: u64 = 1_000_000;
    let mut cfg = config(vec![NamespaceConfig::new("big.>")]);
    cfg.streams[0].durability = plexus_server::streams::config::DurabilitySetting::Committed;
    let (s, _b) = f.open_with_broker(cfg).await;
    let t = Instant::now();
    fill(&s, "big.t", N, 8192).await;
    eprintln!("{:?}: stored {N} events in {:?}", f.backend, t.elapsed());
    let before = rss_kib();
    let (n, chunks, took) = catch_up(&s, "big.t", 256 * 1024, false).await;
    let grew = rss_kib().saturating_sub(before);
    eprintln!(
        "{:?}: caught up {n} events in {chunks} chunks in {took:?}; anonymous RSS grew {grew} KiB",
        f.backend
    );
    assert_eq!(n, N);
    assert!(chunks >= N / 4096, "bounded batches");
    // Constant memory: a page, its rows and the database's page cache
    // (32 MiB per connection), never the backlog (1,000,000 events are
    // ~25 MB of bodies). Anonymous memory only: SQLite maps the file, and
    // mapped pages of the file are the kernel's page cache.
    assert!(grew < 48 * 1024, "RSS grew {grew} KiB during the catch-up");
    s.close().await;
}

mod throughput {
    use super::*;

    async fn appends(f: Fixture, secs: u64) {
        let mut cfg = config(vec![NamespaceConfig::new("tp.>")]);
        cfg.storage.commit_max_batch = 1024;
        let (s, _b) = f.open_with_broker(cfg).await;
        let deadline = Instant::now() + Duration::from_secs(secs);
        let started = Instant::now();
        let tasks: Vec<_> = (0..64u64)
            .map(|t| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut n = 0u64;
                    // Each appender waits for its answer (acknowledged after
                    // the fsynced commit) before the next publish.
                    while Instant::now() < deadline {
                        s.publish(PublishRequest::new(format!("tp.{}", t % 8), payload(n)))
                            .await
                            .unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        let el = started.elapsed().as_secs_f64();
        let st = s.stats();
        println!(
            "{:?}: 64 appenders, fsynced: {:.0} appends/s ({total} in {el:.1}s, {} commits, mean batch {:.1}, max {})",
            f.backend,
            total as f64 / el,
            st.batches,
            st.requests as f64 / st.batches.max(1) as f64,
            st.max_batch
        );
        // Catch-up rate on a topic 200,000 behind.
        fill(&s, "tp.catchup", 200_000, 8192).await;
        let (n, _, took) = catch_up(&s, "tp.catchup", 1 << 20, false).await;
        println!(
            "{:?}: catch-up {:.0} events/s ({n} in {took:?})",
            f.backend,
            n as f64 / took.as_secs_f64()
        );
        s.close().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "prints a throughput figure; run in release"]
    async fn sqlite_throughput() {
        appends(Fixture::sqlite().await, 5).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "prints a throughput figure; run in release"]
    async fn postgres_throughput() {
        let Some(f) = Fixture::postgres().await else {
            eprintln!(
                "skipped on PostgreSQL: {} is not set",
                storage_support::PG_ENV
            );
            return;
        };
        appends(f, 5).await;
    }
}
