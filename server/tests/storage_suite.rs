//! The storage and durable-streams behaviour suite, run on SQLite always
//! and on PostgreSQL when `PLEXUS_TEST_POSTGRES_URL` is set (each test in
//! its own schema, dropped afterwards).
//!
//! Run with `cargo test -p plexus-server --test storage_suite`
//! (`PLEXUS_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test` for
//! both backends).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "the suite's functions are tests run by the generated #[test]s"
)]

mod storage_support;

use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::methods::{Durability, ResumeOutcome};
use plexus_protocol::topic::Pattern;
use plexus_server::storage::{
    Backend, EventPage, LatestRow, NamespaceRead, NamespaceRow, Order, Store, StoreFuture,
    StoreWriter, TopicRead, TopicRow,
};
use plexus_server::streams::config::DurabilitySetting;
use plexus_server::streams::{
    HistoryQuery, NamespaceConfig, PublishRequest, ResumeFrom, StreamError, Streams,
};
use sqlx::Connection;
use storage_support::{Ev, Fixture, config, drain, payload, recv_n, resume};

const CHUNK: usize = 64 * 1024;

fn ns(pattern: &str) -> NamespaceConfig {
    NamespaceConfig::new(pattern)
}

async fn publish(s: &Streams, topic: &str, v: u64) -> plexus_server::streams::PublishOutcome {
    s.publish(PublishRequest::new(topic, payload(v)))
        .await
        .unwrap()
}

fn assert_offsets(evs: &[Ev], from: u64, to: u64) {
    let got: Vec<u64> = evs.iter().map(|e| e.offset).collect();
    let want: Vec<u64> = (from..=to).collect();
    assert_eq!(got, want, "offsets");
}

suite!(
    offsets_and_positions_are_gapless,
    durability_is_stated,
    group_commit_batches_concurrent_appends,
    producer_idempotency_survives_a_reopen,
    idempotency_keys_survive_a_reopen_and_expire,
    expected_offset_conflicts,
    retention_by_count,
    retention_by_bytes,
    retention_by_age,
    epochs_are_stable_and_reset,
    resume_recovers_then_goes_live,
    resume_exactly_at_the_live_edge,
    resume_while_appends_race,
    resume_with_a_tiny_seam_buffer,
    wildcard_resume_while_appends_race,
    activation_after_an_overflow_reads_storage,
    a_full_queue_answers_overloaded,
    resume_too_old_after_retention,
    wildcard_resume,
    subscribe_without_since_gets_a_position,
    history_pages_both_ways,
    history_first_matches_its_events_during_retention,
    catch_up_with_retention_between_pages_is_gapless_or_too_old,
    latest_per_topic,
    a_failing_batch_is_rolled_back_whole,
    storage_failure_is_unavailable_and_recovers,
    non_durable_and_invalid_requests,
    migrations_apply_once_and_topics_list,
);

async fn offsets_and_positions_are_gapless(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("o.>"), ns("p.*")])).await;
    let mut live = b.subscribe("o.>");
    let mut expect = Vec::new();
    for i in 0..30u64 {
        let topic = if i % 3 == 0 { "o.a" } else { "o.b" };
        let out = publish(&s, topic, i).await;
        assert_eq!(out.delivered, 1);
        assert!(!out.duplicate);
        expect.push((topic, out.offset.unwrap(), out.position.unwrap()));
    }
    let a: Vec<u64> = expect
        .iter()
        .filter(|e| e.0 == "o.a")
        .map(|e| e.1)
        .collect();
    let bb: Vec<u64> = expect
        .iter()
        .filter(|e| e.0 == "o.b")
        .map(|e| e.1)
        .collect();
    assert_eq!(a, (1..=10).collect::<Vec<_>>());
    assert_eq!(bb, (1..=20).collect::<Vec<_>>());
    let pos: Vec<u64> = expect.iter().map(|e| e.2).collect();
    assert_eq!(pos, (1..=30).collect::<Vec<_>>());
    // Another namespace has its own positions.
    let out = publish(&s, "p.x", 1).await;
    assert_eq!((out.offset, out.position), (Some(1), Some(1)));
    // Live events carry offset and position, in commit order.
    let got = recv_n(&mut live, 30).await;
    for (e, x) in got.iter().zip(&expect) {
        assert_eq!((e.topic.as_str(), e.offset, e.position), *x);
    }
    s.close().await;
}

async fn durability_is_stated(f: Fixture) {
    let mut c = ns("c.>");
    c.durability = DurabilitySetting::Committed;
    let (s, _b) = f.open_with_broker(config(vec![ns("f.>"), c])).await;
    assert_eq!(publish(&s, "f.1", 1).await.durability, Durability::Fsynced);
    assert_eq!(
        publish(&s, "c.1", 1).await.durability,
        Durability::Committed
    );
    let r = publish(&s, "c.1", 2).await.to_result();
    assert_eq!(r.durability, Some(Durability::Committed));
    assert_eq!(r.offset, Some(2));
    s.close().await;
}

async fn group_commit_batches_concurrent_appends(f: Fixture) {
    let (s, _b) = f.open_with_broker(config(vec![ns("g.>")])).await;
    // One connection's publishes, enqueued back to back: stored in order.
    let futs: Vec<_> = (0..500u64)
        .map(|i| s.publish(PublishRequest::new("g.seq", payload(i))))
        .collect();
    for (i, fut) in futs.into_iter().enumerate() {
        assert_eq!(fut.await.unwrap().offset, Some(i as u64 + 1));
    }
    let st = s.stats();
    assert_eq!(st.requests, 500);
    assert!(
        st.batches < 100,
        "500 queued publishes took {} commits",
        st.batches
    );
    // 64 concurrent appenders, each waiting for its answer.
    let before = s.stats();
    let tasks: Vec<_> = (0..64u64)
        .map(|t| {
            let s = s.clone();
            tokio::spawn(async move {
                for i in 0..20u64 {
                    s.publish(PublishRequest::new(format!("g.t{t}"), payload(i)))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let after = s.stats();
    let (reqs, batches) = (
        after.requests - before.requests,
        after.batches - before.batches,
    );
    assert_eq!(reqs, 64 * 20);
    assert!(batches < reqs / 2, "{reqs} requests in {batches} commits");
    assert!(after.max_batch > 8, "largest batch {}", after.max_batch);
    s.close().await;
}

async fn producer_idempotency_survives_a_reopen(f: Fixture) {
    let cfg = config(vec![ns("i.>")]);
    let (s, _b) = f.open_with_broker(cfg.clone()).await;
    let req = |seq: u64, v: u64| {
        PublishRequest::new("i.t", payload(v))
            .with_producer("prod-1", seq)
            .unwrap()
    };
    for seq in 1..=3 {
        let o = s.publish(req(seq, seq)).await.unwrap();
        assert_eq!((o.offset, o.duplicate), (Some(seq), false));
    }
    let d = s.publish(req(2, 99)).await.unwrap();
    assert_eq!((d.offset, d.duplicate, d.delivered), (Some(2), true, 0));
    // Same batch: a retry right behind the original.
    let a = s.publish(req(4, 4));
    let b = s.publish(req(4, 4));
    assert_eq!(a.await.unwrap().offset, Some(4));
    let b = b.await.unwrap();
    assert_eq!((b.offset, b.duplicate), (Some(4), true));
    s.close().await;

    let (s, _b) = f.open_with_broker(cfg).await;
    let d = s.publish(req(3, 3)).await.unwrap();
    assert_eq!(
        (d.offset, d.position, d.duplicate),
        (Some(3), Some(3), true)
    );
    let d = s.publish(req(1, 1)).await.unwrap();
    assert_eq!((d.offset, d.duplicate), (Some(1), true));
    // Gaps are allowed; a never-stored sequence below the last conflicts.
    let o = s.publish(req(10, 10)).await.unwrap();
    assert_eq!((o.offset, o.duplicate), (Some(5), false));
    let e = s.publish(req(7, 7)).await.unwrap_err();
    assert!(
        matches!(e, StreamError::SeqConflict { last_seq: 10 }),
        "{e:?}"
    );
    // Another producer on the same topic, and the same producer elsewhere.
    let o = s
        .publish(
            PublishRequest::new("i.t", payload(0))
                .with_producer("prod-2", 1)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!((o.offset, o.duplicate), (Some(6), false));
    let o = s
        .publish(
            PublishRequest::new("i.u", payload(0))
                .with_producer("prod-1", 1)
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!((o.offset, o.duplicate), (Some(1), false));
    // The history holds each stored publish exactly once.
    let h = s.history(HistoryQuery::new("i.t", 1 << 20)).await.unwrap();
    assert_eq!(h.events.len(), 6);
    s.close().await;
}

async fn idempotency_keys_survive_a_reopen_and_expire(f: Fixture) {
    let cfg = config(vec![ns("k.>")]);
    let (s, _b) = f.open_with_broker(cfg.clone()).await;
    let req = |k: &str| PublishRequest::new("k.t", payload(1)).with_key(k).unwrap();
    let o = s.publish(req("order-1")).await.unwrap();
    assert_eq!((o.offset, o.duplicate), (Some(1), false));
    let d = s.publish(req("order-1")).await.unwrap();
    assert_eq!((d.offset, d.duplicate), (Some(1), true));
    s.close().await;

    let (s, _b) = f.open_with_broker(cfg.clone()).await;
    let d = s.publish(req("order-1")).await.unwrap();
    assert_eq!(
        (d.offset, d.position, d.duplicate),
        (Some(1), Some(1), true)
    );
    assert_eq!(s.publish(req("order-2")).await.unwrap().offset, Some(2));
    // Past the retention a key is forgotten (ignored at once, deleted by
    // the retention pass).
    f.clock.advance(25 * 3600 * 1000);
    let o = s.publish(req("order-1")).await.unwrap();
    assert_eq!((o.offset, o.duplicate), (Some(3), false));
    let r = s.run_retention().await.unwrap();
    assert_eq!(r.keys, 1, "order-2 expired; order-1 was stored again");
    let d = s.publish(req("order-1")).await.unwrap();
    assert_eq!((d.offset, d.duplicate), (Some(3), true));
    s.close().await;
}

async fn expected_offset_conflicts(f: Fixture) {
    let (s, _b) = f.open_with_broker(config(vec![ns("x.>")])).await;
    let cas = |e: u64| PublishRequest::new("x.t", payload(e)).with_expected_offset(e);
    assert_eq!(s.publish(cas(0)).await.unwrap().offset, Some(1));
    let e = s.publish(cas(0)).await.unwrap_err();
    assert!(matches!(e, StreamError::OffsetConflict { last_offset: 1 }));
    let w = e.to_wire();
    assert_eq!(w.code, plexus_protocol::ErrorCode::Conflict);
    assert_eq!(s.publish(cas(1)).await.unwrap().offset, Some(2));
    // Nothing was stored by the conflict.
    let h = s.history(HistoryQuery::new("x.t", 1 << 20)).await.unwrap();
    assert_eq!((h.events.len(), h.last), (2, 2));
    // Idempotency is checked first: a retried CAS publish that was stored
    // answers duplicate, not conflict.
    let p = |seq| {
        PublishRequest::new("x.t", payload(9))
            .with_expected_offset(2)
            .with_producer("p", seq)
            .unwrap()
    };
    assert_eq!(s.publish(p(1)).await.unwrap().offset, Some(3));
    let d = s.publish(p(1)).await.unwrap();
    assert_eq!((d.offset, d.duplicate), (Some(3), true));
    // Two CAS publishes in one batch: the second sees the first.
    let a = s.publish(cas(3));
    let b = s.publish(cas(3));
    assert_eq!(a.await.unwrap().offset, Some(4));
    assert!(matches!(
        b.await.unwrap_err(),
        StreamError::OffsetConflict { last_offset: 4 }
    ));
    s.close().await;
}

async fn retention_by_count(f: Fixture) {
    let mut n = ns("r.>");
    n.max_events = Some(10);
    let (s, b) = f.open_with_broker(config(vec![n])).await;
    for i in 0..25 {
        publish(&s, "r.a", i).await;
    }
    publish(&s, "r.b", 0).await;
    // Retention runs between batches anyway; this finishes what is due.
    s.run_retention().await.unwrap();
    assert_eq!(s.stats().retention_events, 15);
    let h = s.history(HistoryQuery::new("r.a", 1 << 20)).await.unwrap();
    assert_eq!((h.first, h.last, h.events.len()), (16, 25, 10));
    // Retention producers: a retried sequence whose event is gone.
    let p = |seq| {
        PublishRequest::new("r.c", payload(seq))
            .with_producer("p", seq)
            .unwrap()
    };
    for seq in 1..=12 {
        s.publish(p(seq)).await.unwrap();
    }
    s.run_retention().await.unwrap();
    let d = s.publish(p(1)).await.unwrap();
    assert_eq!(
        (d.duplicate, d.offset),
        (true, None),
        "removed by retention"
    );
    let d = s.publish(p(12)).await.unwrap();
    assert_eq!((d.duplicate, d.offset), (true, Some(12)));
    // Offsets continue after retention.
    assert_eq!(publish(&s, "r.a", 99).await.offset, Some(26));
    drop(b);
    s.close().await;
}

async fn retention_by_bytes(f: Fixture) {
    let mut n = ns("b.>");
    n.max_bytes = Some(1000);
    let (s, _b) = f.open_with_broker(config(vec![n])).await;
    let big = payload(minicbor::bytes::ByteVec::from(vec![7u8; 90]));
    for _ in 0..40 {
        s.publish(PublishRequest::new("b.t", big.clone()))
            .await
            .unwrap();
    }
    s.run_retention().await.unwrap();
    let h = s.history(HistoryQuery::new("b.t", 1 << 20)).await.unwrap();
    let bytes = h.events.bodies.len();
    assert!(bytes <= 1000, "{bytes} bytes kept");
    assert!(
        bytes > 1000 - 120,
        "only what was needed was removed ({bytes})"
    );
    assert_eq!(h.last, 40);
    assert_eq!(h.first, 40 - h.events.len() as u64 + 1);
    s.close().await;
}

async fn retention_by_age(f: Fixture) {
    let mut n = ns("a.>");
    n.max_age = Some(Duration::from_secs(3600));
    let (s, _b) = f.open_with_broker(config(vec![n])).await;
    for i in 0..5 {
        publish(&s, "a.x", i).await;
        publish(&s, "a.y", i).await;
    }
    f.clock.advance(30 * 60 * 1000);
    for i in 5..8 {
        publish(&s, "a.x", i).await;
    }
    assert_eq!(s.run_retention().await.unwrap().events, 0);
    f.clock.advance(45 * 60 * 1000);
    let rep = s.run_retention().await.unwrap();
    assert_eq!(rep.events, 10);
    let h = s.history(HistoryQuery::new("a.x", 1 << 20)).await.unwrap();
    assert_eq!((h.first, h.last, h.events.len()), (6, 8, 3));
    let h = s.history(HistoryQuery::new("a.y", 1 << 20)).await.unwrap();
    assert_eq!((h.first, h.last, h.events.len()), (6, 5, 0));
    f.clock.advance(3600 * 1000);
    assert_eq!(s.run_retention().await.unwrap().events, 3);
    s.close().await;
}

async fn epochs_are_stable_and_reset(f: Fixture) {
    let cfg = config(vec![ns("e.>")]);
    let (s, b) = f.open_with_broker(cfg.clone()).await;
    // A topic nobody wrote has an epoch already, and keeps it.
    let r = resume(&s, &b, "e.t", ResumeFrom::Now, CHUNK).await;
    let first_epoch = r.summary.epoch.clone();
    assert_eq!((r.summary.offset, r.summary.count), (0, 0));
    let o = publish(&s, "e.t", 1).await;
    assert_eq!(o.epoch, first_epoch);
    publish(&s, "e.t", 2).await;
    s.close().await;

    let (s, b) = f.open_with_broker(cfg).await;
    assert_eq!(publish(&s, "e.t", 3).await.epoch, first_epoch);
    // The same epoch resumes.
    let r = resume(
        &s,
        &b,
        "e.t",
        ResumeFrom::Offset {
            epoch: Some(first_epoch.to_string()),
            offset: 1,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    assert_offsets(&r.streamed(), 2, 3);
    // A reset gives a new epoch and restarts offsets.
    let new_epoch = s.reset_topic("e.t").await.unwrap();
    assert_ne!(new_epoch, first_epoch);
    let o = publish(&s, "e.t", 4).await;
    assert_eq!((o.offset, o.epoch.clone()), (Some(1), new_epoch.clone()));
    let mut r = resume(
        &s,
        &b,
        "e.t",
        ResumeFrom::Offset {
            epoch: Some(first_epoch.to_string()),
            offset: 3,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Reset);
    assert_eq!((r.summary.count, r.summary.offset), (0, 1));
    assert_eq!(r.summary.epoch, new_epoch);
    assert!(r.streamed().is_empty());
    publish(&s, "e.t", 5).await;
    assert_offsets(&recv_n(&mut r.live, 1).await, 2, 2);
    s.close().await;

    // A fresh database has new epochs.
    let g = if f.backend == Backend::Sqlite {
        Fixture::sqlite().await
    } else {
        Fixture::postgres().await.unwrap()
    };
    let (s2, b2) = g.open_with_broker(config(vec![ns("e.>")])).await;
    let o = publish(&s2, "e.t", 1).await;
    assert_ne!(o.epoch, first_epoch);
    assert_ne!(o.epoch, new_epoch);
    let r = resume(
        &s2,
        &b2,
        "e.t",
        ResumeFrom::Offset {
            epoch: Some(new_epoch.to_string()),
            offset: 0,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Reset);
    s2.close().await;
}

async fn resume_recovers_then_goes_live(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("s.>")])).await;
    for i in 0..100 {
        publish(&s, "s.t", i).await;
    }
    let epoch = publish(&s, "s.other", 0).await.epoch;
    let mut r = resume(
        &s,
        &b,
        "s.t",
        ResumeFrom::Offset {
            epoch: None,
            offset: 50,
        },
        512,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    assert_eq!(r.summary.count, 50);
    assert_eq!(r.summary.offset, 100);
    assert_eq!(r.summary.position, 100);
    assert_ne!(r.summary.epoch, epoch, "topic epochs differ");
    assert!(r.chunks.len() > 1, "small chunks: {}", r.chunks.len());
    assert_offsets(&r.streamed(), 51, 100);
    assert_eq!(r.pending, 0);
    assert_eq!(s.open_taps(), 0);
    for i in 0..10 {
        publish(&s, "s.t", i).await;
    }
    assert_offsets(&recv_n(&mut r.live, 10).await, 101, 110);
    // From the start.
    let r = resume(
        &s,
        &b,
        "s.t",
        ResumeFrom::Offset {
            epoch: None,
            offset: 0,
        },
        CHUNK,
    )
    .await;
    assert_offsets(&r.streamed(), 1, 110);
    assert_eq!(r.summary.to_final().count, 110);
    s.close().await;
}

async fn resume_exactly_at_the_live_edge(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("l.>")])).await;
    for i in 0..5 {
        publish(&s, "l.t", i).await;
    }
    let o = publish(&s, "l.t", 5).await;
    let mut r = resume(
        &s,
        &b,
        "l.t",
        ResumeFrom::Offset {
            epoch: Some(o.epoch.to_string()),
            offset: 6,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    assert_eq!(
        (r.summary.count, r.summary.offset, r.summary.position),
        (0, 6, o.position.unwrap())
    );
    publish(&s, "l.t", 6).await;
    assert_offsets(&recv_n(&mut r.live, 1).await, 7, 7);
    // Beyond the history: reset.
    let r = resume(
        &s,
        &b,
        "l.t",
        ResumeFrom::Offset {
            epoch: None,
            offset: 50,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Reset);
    assert_eq!(r.summary.offset, 7);
    s.close().await;
}

/// Resumes from 0 while a publisher keeps appending; the subscriber must see
/// every offset exactly once, in order, across chunks, pending and live.
async fn race(f: &Fixture, seam_events: usize, chunk: usize, total: u64) {
    let mut cfg = config(vec![ns("z.>")]);
    cfg.storage.seam_buffer_events = seam_events;
    let (s, b) = f.open_with_broker(cfg).await;
    for i in 0..200 {
        publish(&s, "z.t", i).await;
    }
    let s2 = s.clone();
    let publisher = tokio::spawn(async move {
        let mut futs = Vec::new();
        for i in 200..total {
            futs.push(s2.publish(PublishRequest::new("z.t", payload(i))));
            if futs.len() >= 16 {
                for f in futs.drain(..) {
                    f.await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }
        for f in futs {
            f.await.unwrap();
        }
    });
    let mut r = resume(
        &s,
        &b,
        "z.t",
        ResumeFrom::Offset {
            epoch: None,
            offset: 0,
        },
        chunk,
    )
    .await;
    publisher.await.unwrap();
    let streamed = r.streamed();
    assert_eq!(r.summary.count, streamed.len() as u64);
    let rest = total - streamed.len() as u64;
    let live = recv_n(&mut r.live, usize::try_from(rest).unwrap()).await;
    let all: Vec<Ev> = streamed.into_iter().chain(live).collect();
    assert_offsets(&all, 1, total);
    let data: Vec<u64> = all
        .iter()
        .map(|e| minicbor::decode::<u64>(&e.data).unwrap())
        .collect();
    assert_eq!(data, (0..total).collect::<Vec<_>>());
    assert!(drain(&mut r.live).is_empty(), "no duplicate after the end");
    assert_eq!(s.open_taps(), 0);
    s.close().await;
}

async fn resume_while_appends_race(f: Fixture) {
    race(&f, 8192, 256, 3000).await;
}

async fn resume_with_a_tiny_seam_buffer(f: Fixture) {
    // The buffer overflows again and again: storage is re-read each time.
    race(&f, 2, 128, 2000).await;
}

async fn resume_too_old_after_retention(f: Fixture) {
    let mut n = ns("t.>");
    n.max_events = Some(5);
    let (s, b) = f.open_with_broker(config(vec![n])).await;
    for i in 0..20 {
        publish(&s, "t.a", i).await;
    }
    publish(&s, "t.b", 0).await;
    s.run_retention().await.unwrap();
    // Just inside: since = earliest - 1 recovers.
    let r = resume(
        &s,
        &b,
        "t.a",
        ResumeFrom::Offset {
            epoch: None,
            offset: 15,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    assert_offsets(&r.streamed(), 16, 20);
    let mut r = resume(
        &s,
        &b,
        "t.a",
        ResumeFrom::Offset {
            epoch: None,
            offset: 3,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::TooOld);
    assert_eq!(r.summary.earliest, Some(16));
    assert_eq!((r.summary.count, r.summary.offset), (0, 20));
    assert!(r.streamed().is_empty());
    publish(&s, "t.a", 20).await;
    assert_offsets(&recv_n(&mut r.live, 1).await, 21, 21);
    // A pattern resume over the pruned topic is too old; over the untouched
    // one it recovers. (Offset 16, position 16, went with the 21st event.)
    s.run_retention().await.unwrap();
    let r = resume(
        &s,
        &b,
        "t.*",
        ResumeFrom::Position {
            epoch: None,
            position: 2,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::TooOld);
    assert_eq!(r.summary.earliest, Some(17));
    let r = resume(
        &s,
        &b,
        "t.b",
        ResumeFrom::Offset {
            epoch: None,
            offset: 0,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    s.close().await;
}

async fn wildcard_resume(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("w.>")])).await;
    for i in 0..60u64 {
        let t = ["w.a", "w.b", "w.c.deep"][(i % 3) as usize];
        publish(&s, t, i).await;
    }
    let epoch = s.namespaces()[0].epoch.to_string();
    let mut r = resume(
        &s,
        &b,
        "w.*",
        ResumeFrom::Position {
            epoch: Some(epoch.clone()),
            position: 10,
        },
        300,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Recovered);
    let got = r.streamed();
    // Positions 11..=60 except w.c.deep (position % 3 == 0).
    let want: Vec<u64> = (11..=60).filter(|p| p % 3 != 0).collect();
    assert_eq!(got.iter().map(|e| e.position).collect::<Vec<_>>(), want);
    assert!(got.iter().all(|e| e.topic != "w.c.deep"));
    assert_eq!(r.summary.position, 60);
    assert_eq!(r.summary.offset, 0);
    assert_eq!(&*r.summary.epoch, epoch);
    publish(&s, "w.c.deep", 0).await;
    publish(&s, "w.b", 0).await;
    let live = recv_n(&mut r.live, 1).await;
    assert_eq!((live[0].topic.as_str(), live[0].position), ("w.b", 62));
    // Wrong namespace epoch: reset.
    let r = resume(
        &s,
        &b,
        "w.>",
        ResumeFrom::Position {
            epoch: Some("0000000000000000".into()),
            position: 10,
        },
        CHUNK,
    )
    .await;
    assert_eq!(r.summary.outcome, ResumeOutcome::Reset);
    assert_eq!(r.summary.position, 62);
    s.close().await;
}

async fn subscribe_without_since_gets_a_position(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("n.>")])).await;
    let mut r = resume(&s, &b, "n.t", ResumeFrom::Now, CHUNK).await;
    let res = r.summary.to_subscribe_result(true);
    assert_eq!((res.offset, res.position), (Some(0), Some(0)));
    publish(&s, "n.t", 0).await;
    publish(&s, "n.u", 0).await;
    assert_offsets(&recv_n(&mut r.live, 1).await, 1, 1);
    let r = resume(&s, &b, "n.*", ResumeFrom::Now, CHUNK).await;
    let res = r.summary.to_subscribe_result(false);
    assert_eq!((res.offset, res.position), (None, Some(2)));
    assert_eq!(res.epoch.as_deref(), Some(&*s.namespaces()[0].epoch));
    s.close().await;
}

async fn history_pages_both_ways(f: Fixture) {
    let (s, _b) = f.open_with_broker(config(vec![ns("h.>")])).await;
    for i in 0..25 {
        publish(&s, "h.t", i).await;
    }
    let mut q = HistoryQuery::new("h.t", 1 << 20);
    q.limit = Some(10);
    let p1 = s.history(q.clone()).await.unwrap();
    assert_eq!(
        (p1.events.len(), p1.next, p1.first, p1.last),
        (10, Some(11), 1, 25)
    );
    q.from = p1.next;
    let p2 = s.history(q.clone()).await.unwrap();
    assert_eq!(p2.events.metas[0].offset, 11);
    q.from = Some(21);
    let p3 = s.history(q.clone()).await.unwrap();
    assert_eq!((p3.events.len(), p3.next), (5, None));
    // Backwards from the latest.
    let mut b = HistoryQuery::new("h.t", 1 << 20);
    b.direction = Order::Backward;
    b.limit = Some(10);
    let p = s.history(b.clone()).await.unwrap();
    let offs: Vec<u64> = p.events.metas.iter().map(|m| m.offset).collect();
    assert_eq!(offs, (16..=25).rev().collect::<Vec<_>>());
    assert_eq!(p.next, Some(15));
    b.from = Some(3);
    let p = s.history(b).await.unwrap();
    assert_eq!((p.events.len(), p.next), (3, None));
    // The byte budget cuts a page short, with next.
    let one = p1.events.metas[0].len as usize;
    let mut q = HistoryQuery::new("h.t", one * 3);
    q.limit = Some(100);
    let p = s.history(q).await.unwrap();
    assert_eq!((p.events.len(), p.next), (3, Some(4)));
    // The encoded result decodes as the protocol type.
    let bytes = minicbor::to_vec(&p).unwrap();
    let r: plexus_protocol::methods::HistoryResult = minicbor::decode(&bytes).unwrap();
    assert_eq!(
        (r.events.len(), r.next, r.first, r.last),
        (3, Some(4), 1, 25)
    );
    // A topic never written.
    let p = s
        .history(HistoryQuery::new("h.none", 1 << 20))
        .await
        .unwrap();
    assert_eq!((p.events.len(), p.first, p.last, p.next), (0, 1, 0, None));
    s.close().await;
}

async fn latest_per_topic(f: Fixture) {
    let (s, _b) = f.open_with_broker(config(vec![ns("st.>")])).await;
    for i in 0..3u64 {
        for t in ["st.d.2", "st.d.1", "st.e.1", "st.d.3", "st.d.x.y"] {
            publish(&s, t, i).await;
        }
    }
    let p = Pattern::parse("st.d.*", 256).unwrap();
    let page = s.latest(&p, None, Some(2), 1 << 20).await.unwrap();
    let bytes = minicbor::to_vec(&page).unwrap();
    let r: plexus_protocol::methods::HistoryLatestResult = minicbor::decode(&bytes).unwrap();
    let evs: Vec<Ev> = r
        .events
        .iter()
        .map(|v| {
            storage_support::decode_list(&minicbor::to_vec(vec![v.clone()]).unwrap()).remove(0)
        })
        .collect();
    assert_eq!(
        evs.iter()
            .map(|e| (e.topic.as_str(), e.offset))
            .collect::<Vec<_>>(),
        vec![("st.d.1", 3), ("st.d.2", 3)]
    );
    assert_eq!(r.next.as_deref(), Some("st.d.2"));
    let page = s
        .latest(&p, Some("st.d.2"), Some(2), 1 << 20)
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "st.d.3 only; st.d.x.y does not match");
    assert_eq!(page.next, None);
    let exact = Pattern::parse("st.e.1", 256).unwrap();
    let page = s.latest(&exact, None, None, 1 << 20).await.unwrap();
    assert_eq!(page.events.len(), 1);
    let all = Pattern::parse("st.>", 256).unwrap();
    assert_eq!(
        s.latest(&all, None, None, 1 << 20)
            .await
            .unwrap()
            .events
            .len(),
        5
    );
    s.close().await;
}

async fn a_failing_batch_is_rolled_back_whole(f: Fixture) {
    let mut cfg = config(vec![ns("fb.>")]);
    cfg.storage.commit_max_delay = Duration::from_millis(300);
    let (s, _b) = f.open_with_broker(cfg).await;
    publish(&s, "fb.t", 0).await;
    // A trigger makes the database refuse one row, in the middle of a batch.
    match f.backend {
        Backend::Sqlite => {
            let mut c =
                sqlx::SqliteConnection::connect(&format!("sqlite:{}", f.sqlite_path().display()))
                    .await
                    .unwrap();
            sqlx::query(
                "CREATE TRIGGER poison BEFORE INSERT ON events \
                 WHEN instr(NEW.body, CAST('POISON' AS BLOB)) > 0 \
                 BEGIN SELECT RAISE(ABORT, 'injected failure'); END",
            )
            .execute(&mut c)
            .await
            .unwrap();
            c.close().await.unwrap();
        }
        Backend::Postgres => {
            let url = f.options.url.clone();
            let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
            let schema = &f.options.schema;
            sqlx::Executor::execute(
                &mut c,
                format!(
                    "CREATE FUNCTION {schema}.poison() RETURNS trigger AS $$ BEGIN \
                     IF position('POISON'::bytea IN NEW.body) > 0 THEN \
                     RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$ \
                     LANGUAGE plpgsql; \
                     CREATE TRIGGER poison BEFORE INSERT ON {schema}.events \
                     FOR EACH ROW EXECUTE FUNCTION {schema}.poison();"
                )
                .as_str(),
            )
            .await
            .unwrap();
            c.close().await.unwrap();
        }
    }
    let futs: Vec<_> = (0..10u64)
        .map(|i| {
            let data = if i == 5 {
                payload("POISON")
            } else {
                payload(i)
            };
            s.publish(
                PublishRequest::new("fb.t", data)
                    .with_key(&format!("k{i}"))
                    .unwrap(),
            )
        })
        .collect();
    let mut failed = 0;
    let mut stored = Vec::new();
    for fut in futs {
        match fut.await {
            Ok(o) => stored.push(o.offset.unwrap()),
            Err(e) => {
                assert!(matches!(e, StreamError::Unavailable { .. }), "{e:?}");
                assert_eq!(e.to_wire().code, plexus_protocol::ErrorCode::Unavailable);
                assert!(e.to_wire().retry_after_ms.is_some());
                failed += 1;
            }
        }
    }
    assert!(
        failed > 1,
        "the poisoned request shares its batch ({failed} failed)"
    );
    assert!(s.stats().commit_errors >= 1);
    // Nothing of the failed batch is stored; offsets stay gapless.
    let h = s.history(HistoryQuery::new("fb.t", 1 << 20)).await.unwrap();
    assert_eq!(h.last, 1 + stored.len() as u64);
    let next = publish(&s, "fb.t", 99).await;
    assert_eq!(next.offset, Some(h.last + 1));
    // Keys of the failed requests were not kept: they store now.
    let o = s
        .publish(
            PublishRequest::new("fb.t", payload(1))
                .with_key("k1")
                .unwrap(),
        )
        .await
        .unwrap();
    assert!(!o.duplicate || stored.contains(&o.offset.unwrap()));
    s.close().await;
}

async fn storage_failure_is_unavailable_and_recovers(f: Fixture) {
    let mut cfg = config(vec![ns("u.>")]);
    // No background retention touching the connection during the test.
    cfg.storage.retention_interval = Duration::from_secs(3600);
    let (s, _b) = f.open_with_broker(cfg).await;
    s.run_retention().await.unwrap();
    publish(&s, "u.t", 0).await;
    match f.backend {
        Backend::Sqlite => {
            // Another process holds the write lock past the busy timeout.
            let mut c =
                sqlx::SqliteConnection::connect(&format!("sqlite:{}", f.sqlite_path().display()))
                    .await
                    .unwrap();
            sqlx::Executor::execute(&mut c, "BEGIN IMMEDIATE")
                .await
                .unwrap();
            let e = s
                .publish(PublishRequest::new("u.t", payload(1)))
                .await
                .unwrap_err();
            assert_eq!(e.to_wire().code, plexus_protocol::ErrorCode::Unavailable);
            sqlx::Executor::execute(&mut c, "ROLLBACK").await.unwrap();
            c.close().await.unwrap();
        }
        Backend::Postgres => {
            // The writer's connection is killed.
            let mut c = sqlx::PgConnection::connect(&f.options.url).await.unwrap();
            let killed: Vec<bool> = sqlx::query_scalar(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1",
            )
            .bind(&f.options.writer_name)
            .fetch_all(&mut c)
            .await
            .unwrap();
            assert_eq!(killed, vec![true]);
            c.close().await.unwrap();
            let e = s
                .publish(PublishRequest::new("u.t", payload(1)))
                .await
                .unwrap_err();
            assert_eq!(e.to_wire().code, plexus_protocol::ErrorCode::Unavailable);
        }
    }
    // The next publish reconnects; nothing of the failed one was stored.
    let o = publish(&s, "u.t", 2).await;
    assert_eq!((o.offset, o.position), (Some(2), Some(2)));
    let h = s.history(HistoryQuery::new("u.t", 1 << 20)).await.unwrap();
    assert_eq!(h.events.len(), 2);
    s.close().await;
}

async fn non_durable_and_invalid_requests(f: Fixture) {
    let (s, b) = f.open_with_broker(config(vec![ns("d.>")])).await;
    let e = s
        .publish(PublishRequest::new("plain.t", payload(1)))
        .await
        .unwrap_err();
    assert!(matches!(e, StreamError::NotDurable));
    assert!(
        PublishRequest::new("d.t", payload(1))
            .with_producer("", 1)
            .is_err()
    );
    assert!(
        PublishRequest::new("d.t", payload(1))
            .with_producer("p", 0)
            .is_err()
    );
    assert!(
        PublishRequest::new("d.t", payload(1))
            .with_key(&"k".repeat(129))
            .is_err()
    );
    let p = |s| Pattern::parse(s, 256).unwrap();
    assert!(matches!(
        s.resume(&p(">"), ResumeFrom::Now, CHUNK).unwrap_err(),
        StreamError::SpansNamespaces
    ));
    assert!(matches!(
        s.resume(&p("plain.*"), ResumeFrom::Now, CHUNK).unwrap_err(),
        StreamError::NotDurable
    ));
    assert!(
        s.resume(
            &p("d.t"),
            ResumeFrom::Position {
                epoch: None,
                position: 1
            },
            CHUNK
        )
        .is_err()
    );
    assert!(matches!(
        s.history(HistoryQuery::new("plain.t", 100))
            .await
            .unwrap_err(),
        StreamError::NotDurable
    ));
    // A resume dropped half way releases its tap.
    for i in 0..10 {
        publish(&s, "d.t", i).await;
    }
    let mut r = s
        .resume(
            &p("d.t"),
            ResumeFrom::Offset {
                epoch: None,
                offset: 0,
            },
            CHUNK,
        )
        .unwrap();
    while r.next_chunk().await.unwrap().is_some() {}
    assert_eq!(s.open_taps(), 1);
    drop(r);
    assert_eq!(s.open_taps(), 0);
    drop(b);
    let _ = Arc::new(0);
    s.close().await;
}

async fn migrations_apply_once_and_topics_list(f: Fixture) {
    // Opening without migrations refuses a database that lacks them.
    let mut bare = f.options.clone();
    bare.migrate = false;
    let e = plexus_server::storage::open(&bare).await.unwrap_err();
    assert!(e.to_string().contains("plexus migrate"), "{e}");
    // `plexus migrate` applies them once.
    assert_eq!(
        plexus_server::storage::migrate(&f.options).await.unwrap(),
        vec![1, 2, 3, 4, 5, 6, 7]
    );
    assert!(
        plexus_server::storage::migrate(&f.options)
            .await
            .unwrap()
            .is_empty()
    );
    let store = plexus_server::storage::open(&bare).await.unwrap();
    store.close().await;
    // The listing `plexus streams` prints.
    let (s, _b) = f.open_with_broker(config(vec![ns("ls.>")])).await;
    for t in ["ls.b", "ls.a", "ls.b"] {
        publish(&s, t, 0).await;
    }
    let rows = s.store().list_topics(None, 10).await.unwrap();
    let v: Vec<(&str, u64, u64)> = rows
        .iter()
        .map(|r| (&*r.name, r.count(), r.last_offset))
        .collect();
    assert_eq!(v, vec![("ls.a", 1, 1), ("ls.b", 2, 2)]);
    assert!(rows.iter().all(|r| r.bytes > 0 && r.epoch.len() == 16));
    let rows = s.store().list_topics(Some("ls.a"), 10).await.unwrap();
    assert_eq!(rows.len(), 1);
    s.close().await;
}

/// The same race on a pattern: seams by namespace position, with a buffer
/// that keeps overflowing.
async fn wildcard_resume_while_appends_race(f: Fixture) {
    let total = 1500u64;
    let mut cfg = config(vec![ns("zw.>")]);
    cfg.storage.seam_buffer_events = 3;
    let (s, b) = f.open_with_broker(cfg).await;
    for i in 0..100 {
        publish(&s, if i % 2 == 0 { "zw.a" } else { "zw.b" }, i).await;
    }
    let s2 = s.clone();
    let publisher = tokio::spawn(async move {
        for chunk in (100..total).collect::<Vec<_>>().chunks(8) {
            let futs: Vec<_> = chunk
                .iter()
                .map(|i| {
                    let t = if i % 2 == 0 { "zw.a" } else { "zw.b" };
                    s2.publish(PublishRequest::new(t, payload(*i)))
                })
                .collect();
            for f in futs {
                f.await.unwrap();
            }
            tokio::task::yield_now().await;
        }
    });
    let mut r = resume(
        &s,
        &b,
        "zw.*",
        ResumeFrom::Position {
            epoch: None,
            position: 0,
        },
        200,
    )
    .await;
    publisher.await.unwrap();
    let streamed = r.streamed();
    let rest = usize::try_from(total).unwrap() - streamed.len();
    let all: Vec<Ev> = streamed
        .into_iter()
        .chain(recv_n(&mut r.live, rest).await)
        .collect();
    let positions: Vec<u64> = all.iter().map(|e| e.position).collect();
    assert_eq!(positions, (1..=total).collect::<Vec<_>>());
    assert!(drain(&mut r.live).is_empty());
    s.close().await;
}

/// Events committed between the final chunk and the activation: a few wait
/// in the buffer; more than it holds are read back from storage.
async fn activation_after_an_overflow_reads_storage(f: Fixture) {
    let mut cfg = config(vec![ns("ov.>")]);
    cfg.storage.seam_buffer_events = 4;
    let (s, b) = f.open_with_broker(cfg).await;
    for i in 0..10 {
        publish(&s, "ov.t", i).await;
    }
    let p = Pattern::parse("ov.t", 256).unwrap();
    let from = || ResumeFrom::Offset {
        epoch: None,
        offset: 5,
    };
    // Within the buffer: handed to the activation.
    let mut r = s.resume(&p, from(), CHUNK).unwrap();
    while r.next_chunk().await.unwrap().is_some() {}
    assert_eq!(r.summary().unwrap().offset, 10);
    for i in 0..3 {
        publish(&s, "ov.t", i).await;
    }
    let pending: Vec<u64> = r
        .activate(|p| p.iter().map(|e| e.offset).collect())
        .unwrap();
    assert_eq!(pending, vec![11, 12, 13]);
    assert!(matches!(
        r.activate(|_| ()),
        Err(plexus_server::streams::NotLive::AlreadyLive)
    ));
    drop(r);
    // Past the buffer: activation refuses, next_live reads storage.
    let mut r = s.resume(&p, from(), CHUNK).unwrap();
    assert!(matches!(
        r.activate(|_| ()),
        Err(plexus_server::streams::NotLive::NotCaughtUp)
    ));
    while r.next_chunk().await.unwrap().is_some() {}
    assert_eq!(r.summary().unwrap().offset, 13);
    for i in 0..10 {
        publish(&s, "ov.t", i).await;
    }
    assert!(matches!(
        r.activate(|_| ()),
        Err(plexus_server::streams::NotLive::Overflowed)
    ));
    let mut live = Vec::new();
    while let Some(frames) = r.next_live().await.unwrap() {
        live.extend(
            frames
                .iter()
                .map(|f| storage_support::decode_frame(f).offset),
        );
    }
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    publish(&s, "ov.t", 0).await;
    let pending: Vec<u64> = r
        .activate(|p| {
            b.add("ov.t", tx.clone());
            p.iter().map(|e| e.offset).collect()
        })
        .unwrap();
    live.extend(pending);
    publish(&s, "ov.t", 0).await;
    live.extend(recv_n(&mut rx, 1).await.iter().map(|e| e.offset));
    assert_eq!(live, (14..=25).collect::<Vec<_>>());
    assert_eq!(s.open_taps(), 0);
    s.close().await;
}

/// SQLite only: the write-ahead log made unwritable under the open
/// connection (`chattr +i`, which binds root too) → `unavailable`, nothing
/// stored; writable again → the next publish succeeds, offsets gapless.
/// (Not the `-shm` file: SQLite maps it, and a mapped page that cannot be
/// written back is a SIGBUS, not an error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_unwritable_file_is_unavailable() {
    let f = Fixture::sqlite().await;
    let mut cfg = config(vec![ns("uw.>")]);
    cfg.storage.retention_interval = Duration::from_secs(3600);
    let (s, _b) = f.open_with_broker(cfg).await;
    s.run_retention().await.unwrap();
    publish(&s, "uw.t", 0).await;
    let path = f.sqlite_path();
    let files: Vec<String> = ["-wal"]
        .iter()
        .map(|x| format!("{}{x}", path.display()))
        .filter(|p| std::path::Path::new(p).exists())
        .collect();
    let chattr = |flag: &str| {
        std::process::Command::new("chattr")
            .arg(flag)
            .args(&files)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !chattr("+i") {
        eprintln!("skipped: chattr +i is not available here");
        s.close().await;
        return;
    }
    let r = s.publish(PublishRequest::new("uw.t", payload(1))).await;
    assert!(chattr("-i"), "chattr -i");
    let e = r.unwrap_err();
    assert_eq!(e.to_wire().code, plexus_protocol::ErrorCode::Unavailable);
    let o = publish(&s, "uw.t", 2).await;
    assert_eq!(o.offset, Some(2));
    let h = s.history(HistoryQuery::new("uw.t", 1 << 20)).await.unwrap();
    assert_eq!(h.events.len(), 2);
    s.close().await;
}

async fn a_full_queue_answers_overloaded(f: Fixture) {
    let mut cfg = config(vec![ns("q.>")]);
    cfg.storage.commit_queue_bytes = 2000;
    let (s, _b) = f.open_with_broker(cfg).await;
    let big = payload(minicbor::bytes::ByteVec::from(vec![1u8; 100]));
    let futs: Vec<_> = (0..2000)
        .map(|_| s.publish(PublishRequest::new("q.t", big.clone())))
        .collect();
    let (mut ok, mut overloaded) = (0u64, 0u64);
    for f in futs {
        match f.await {
            Ok(_) => ok += 1,
            Err(StreamError::Overloaded) => overloaded += 1,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(overloaded > 0 && ok > 0, "ok {ok}, overloaded {overloaded}");
    let w = StreamError::Overloaded.to_wire();
    assert_eq!(w.code, plexus_protocol::ErrorCode::Unavailable);
    // What was accepted is stored, gapless.
    let h = s.history(HistoryQuery::new("q.t", 1 << 20)).await.unwrap();
    assert_eq!(h.last, ok);
    // Once drained, publishes are accepted again.
    assert_eq!(publish(&s, "q.t", 1).await.offset, Some(ok + 1));
    s.close().await;
}

/// A [`Store`] that holds one read (of a topic or a namespace, after `skip`
/// others) until the test lets it go, so that the test can run retention
/// between two reads of one request, deterministically.
#[derive(Debug)]
struct GatedStore {
    inner: Arc<dyn Store>,
    gate: Arc<parking_lot::Mutex<Option<Armed>>>,
}

#[derive(Debug)]
struct Armed {
    skip: u32,
    entered: tokio::sync::oneshot::Sender<()>,
    go: tokio::sync::oneshot::Receiver<()>,
}

/// The test's side of an armed gate.
struct Gate {
    entered: tokio::sync::oneshot::Receiver<()>,
    go: tokio::sync::oneshot::Sender<()>,
}

impl GatedStore {
    fn arm(gate: &parking_lot::Mutex<Option<Armed>>, skip: u32) -> Gate {
        let (entered_tx, entered) = tokio::sync::oneshot::channel();
        let (go, go_rx) = tokio::sync::oneshot::channel();
        *gate.lock() = Some(Armed {
            skip,
            entered: entered_tx,
            go: go_rx,
        });
        Gate { entered, go }
    }

    async fn pass(&self) {
        let armed = {
            let mut g = self.gate.lock();
            match g.as_mut() {
                Some(a) if a.skip > 0 => {
                    a.skip -= 1;
                    None
                }
                Some(_) => g.take(),
                None => None,
            }
        };
        if let Some(a) = armed {
            let _ = a.entered.send(());
            let _ = a.go.await;
        }
    }
}

impl Store for GatedStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }
    fn writer(&self) -> StoreFuture<'_, Box<dyn StoreWriter>> {
        self.inner.writer()
    }
    fn namespaces(&self) -> StoreFuture<'_, Vec<NamespaceRow>> {
        self.inner.namespaces()
    }
    fn topic<'a>(&'a self, name: &'a str) -> StoreFuture<'a, Option<TopicRow>> {
        self.inner.topic(name)
    }
    fn read_topic<'a>(&'a self, read: TopicRead, out: &'a mut EventPage) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.pass().await;
            self.inner.read_topic(read, out).await
        })
    }
    fn read_namespace<'a>(
        &'a self,
        read: NamespaceRead,
        keep: &'a (dyn Fn(&str) -> bool + Send + Sync),
        out: &'a mut EventPage,
    ) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            self.pass().await;
            self.inner.read_namespace(read, keep, out).await
        })
    }
    fn pruned_topics<'a>(
        &'a self,
        ns: i64,
        position: u64,
        after: &'a str,
        limit: u32,
    ) -> StoreFuture<'a, Vec<(String, u64)>> {
        self.inner.pruned_topics(ns, position, after, limit)
    }
    fn latest<'a>(
        &'a self,
        ns: i64,
        lo: &'a str,
        hi: Option<&'a str>,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<LatestRow>> {
        self.inner.latest(ns, lo, hi, after, limit)
    }
    fn list_topics<'a>(
        &'a self,
        after: Option<&'a str>,
        limit: u32,
    ) -> StoreFuture<'a, Vec<TopicRow>> {
        self.inner.list_topics(after, limit)
    }
    fn close(&self) -> futures_util::future::BoxFuture<'_, ()> {
        self.inner.close()
    }
}

type GateHandle = Arc<parking_lot::Mutex<Option<Armed>>>;

async fn open_gated(
    f: &Fixture,
    config: plexus_server::streams::StreamsConfig,
) -> (Streams, Arc<storage_support::Broker>, GateHandle) {
    let inner = plexus_server::storage::open(&f.options).await.unwrap();
    let gate: GateHandle = Arc::default();
    let store: Arc<dyn Store> = Arc::new(GatedStore {
        inner,
        gate: gate.clone(),
    });
    let b = Arc::new(storage_support::Broker::default());
    let clock: Arc<dyn plexus_server::streams::Clock> = Arc::new(f.clock.clone());
    let s = Streams::open(store, config, b.clone(), clock)
        .await
        .unwrap();
    (s, b, gate)
}

/// `history` reads the topic's row, then its events: retention committing
/// in between must not leave a page whose `first` is below its events.
async fn history_first_matches_its_events_during_retention(f: Fixture) {
    let mut n = ns("g.>");
    n.max_events = Some(5);
    let (s, _b, gate) = open_gated(&f, config(vec![n])).await;
    for i in 0..10 {
        publish(&s, "g.t", i).await;
    }
    s.run_retention().await.unwrap();
    let h = s.history(HistoryQuery::new("g.t", 1 << 20)).await.unwrap();
    assert_eq!((h.first, h.last, h.events.len()), (6, 10, 5));
    for order in [Order::Forward, Order::Backward] {
        // The row says 6..=10 (or the last pass's); three more publishes
        // and a retention pass delete through 8 (11) before the events are read.
        let before = s.history(HistoryQuery::new("g.t", 1 << 20)).await.unwrap();
        let g = GatedStore::arm(&gate, 0);
        let mut q = HistoryQuery::new("g.t", 1 << 20);
        q.direction = order;
        q.limit = Some(100);
        let s2 = s.clone();
        let page = tokio::spawn(async move { s2.history(q).await.unwrap() });
        g.entered.await.unwrap();
        for i in 0..3 {
            publish(&s, "g.t", i).await;
        }
        s.run_retention().await.unwrap();
        g.go.send(()).unwrap();
        let p = page.await.unwrap();
        let offs: Vec<u64> = p.events.metas.iter().map(|m| m.offset).collect();
        let lowest = *offs.iter().min().unwrap();
        assert_eq!(p.last, before.last, "{order:?}: last as of the row");
        assert_eq!(
            p.first, lowest,
            "{order:?}: first {} while the page's events {offs:?} start higher",
            p.first
        );
        assert_eq!(lowest, before.last + 3 - 4, "{order:?}: retention ran");
        assert_eq!(p.next, None, "{order:?}: nothing more in the range read");
    }
    s.close().await;
}

/// Retention deleting events between two catch-up pages: the resume
/// streams a complete, gapless run or ends `too_old`, never a silent gap.
async fn catch_up_with_retention_between_pages_is_gapless_or_too_old(f: Fixture) {
    let mut c = ns("c.*");
    c.max_events = Some(50);
    let mut w = ns("w.*");
    w.max_events = Some(50);
    let (s, b, gate) = open_gated(&f, config(vec![c, w])).await;
    let cases = [
        (
            "c.t",
            "c.t",
            ResumeFrom::Offset {
                epoch: None,
                offset: 0,
            },
        ),
        (
            "w.*",
            "w.u",
            ResumeFrom::Position {
                epoch: None,
                position: 0,
            },
        ),
    ];
    for (pattern, topic, from) in cases {
        for i in 0..40 {
            publish(&s, topic, i).await;
        }
        let h = s.history(HistoryQuery::new(topic, 1 << 20)).await.unwrap();
        let one = h.events.metas[0].len as usize;
        // Chunks of about four events; the second read waits.
        let g = GatedStore::arm(&gate, 1);
        let (s2, b2, p) = (s.clone(), b.clone(), pattern.to_owned());
        let run = tokio::spawn(async move { resume(&s2, &b2, &p, from, one * 4 + 16).await });
        g.entered.await.unwrap();
        // 30 more: retention keeps the last 50 of 70 and deletes 1..=20
        // while the catch-up has read at most its first page.
        for i in 0..30 {
            publish(&s, topic, i).await;
        }
        s.run_retention().await.unwrap();
        let h = s.history(HistoryQuery::new(topic, 1 << 20)).await.unwrap();
        assert_eq!(h.first, 21, "{pattern}: retention ran");
        g.go.send(()).unwrap();
        let r = run.await.unwrap();
        let got: Vec<u64> = r.streamed().iter().map(|e| e.offset).collect();
        match r.summary.outcome {
            ResumeOutcome::TooOld => {
                // What was streamed before the loss is a gapless prefix,
                // and the final chunk says where the history is complete.
                let want: Vec<u64> = (1..=got.len() as u64).collect();
                assert_eq!(
                    got, want,
                    "{pattern}: streamed before too_old, gapless from 1"
                );
                assert_eq!(r.summary.count, got.len() as u64, "{pattern}: count");
                assert_eq!(r.summary.earliest, Some(21), "{pattern}: earliest");
                let live_from = if pattern == "c.t" {
                    r.summary.offset
                } else {
                    r.summary.position
                };
                assert_eq!(live_from, 70, "{pattern}: live from the end");
            }
            ResumeOutcome::Recovered => {
                let want: Vec<u64> = (1..=got.len() as u64).collect();
                assert_eq!(
                    got, want,
                    "{pattern}: a recovered catch-up is gapless from 1"
                );
                assert_eq!(got.len(), 70, "{pattern}: and complete");
            }
            o => panic!("{pattern}: outcome {o:?}"),
        }
    }
    s.close().await;
}
