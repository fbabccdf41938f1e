//! Durable streams through the running hub, over real sockets, on SQLite
//! always and on PostgreSQL when `PLEXUS_TEST_POSTGRES_URL` is set (each
//! test in a database of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use jsonwebtoken::Algorithm;
use plexus_protocol::methods::{
    Direction, Durability, EventParams, HistoryLatestParams, HistoryParams, PublishParams,
    PublishResult, ResumeFinal, ResumeOutcome, Since, SubscribeParams, SubscribeResult,
};
use plexus_protocol::{ErrorCode, Frame, RawValue, WireError};
use plexus_server::streams::{ConflictDetails, NamespaceConfig, StreamsConfig};
use plexus_testkit::*;

/// One decoded durable event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ev {
    topic: String,
    offset: u64,
    position: u64,
    data: Vec<u8>,
}

fn ev(p: &EventParams<'_>) -> Ev {
    Ev {
        topic: p.topic.to_owned(),
        offset: p.offset.expect("a durable event has an offset"),
        position: p.position.expect("a durable event has a position"),
        data: p.data.as_bytes().to_vec(),
    }
}

fn decode_list(data: &RawValue) -> Vec<Ev> {
    let items: Vec<RawValue> = data.decode().unwrap();
    items
        .iter()
        .map(|r| ev(&r.decode::<EventParams>().unwrap()))
        .collect()
}

async fn publish(
    c: &mut Client,
    topic: &str,
    n: u64,
    tweak: impl FnOnce(PublishParams<'_>) -> PublishParams<'_>,
) -> Result<PublishResult, WireError> {
    let data = raw(&n);
    let p = tweak(PublishParams::new(topic, data.as_raw_ref()));
    c.call("publish", &p)
        .await
        .map(|r| r.decode::<PublishResult>().unwrap())
}

async fn publish_n(c: &mut Client, topic: &str, range: std::ops::RangeInclusive<u64>) {
    for i in range {
        publish(c, topic, i, |p| p).await.unwrap();
    }
}

async fn subscribe(c: &mut Client, topic: &str) -> Result<SubscribeResult, WireError> {
    c.call("subscribe", &SubscribeParams::new(topic))
        .await
        .map(|r| r.decode().unwrap())
}

/// A resume: the events of the chunks, and the final chunk. No live event
/// may come before the final chunk.
async fn resume(
    c: &mut Client,
    topic: &str,
    since: Since<'_>,
) -> Result<(Vec<Ev>, ResumeFinal), WireError> {
    let id = c
        .request("subscribe", &SubscribeParams::new(topic).with_since(since))
        .await;
    let mut events = Vec::new();
    let mut seq = 0;
    loop {
        match c.next_frame().await.expect("the connection stays open") {
            Frame::Chunk(ch) if ch.id == id => {
                assert_eq!(ch.seq, seq, "chunks in order");
                seq += 1;
                if ch.fin {
                    return Ok((events, ch.data.decode().unwrap()));
                }
                events.extend(decode_list(&ch.data));
            }
            Frame::Response(r) if r.id == id => {
                return Err(r.outcome.expect_err("a resume answers with chunks"));
            }
            other => panic!("unexpected frame before the final chunk: {other:?}"),
        }
    }
}

/// The next live durable event.
async fn next_event(c: &mut Client) -> Ev {
    let n = c.notification("event").await;
    ev(&n.params.decode::<EventParams>().unwrap())
}

fn values(events: &[Ev]) -> Vec<u64> {
    events
        .iter()
        .map(|e| minicbor::decode::<u64>(&e.data).unwrap())
        .collect()
}

fn config(namespaces: Vec<NamespaceConfig>) -> StreamsConfig {
    StreamsConfig {
        streams: namespaces,
        ..StreamsConfig::default()
    }
}

fn ns(pattern: &str) -> NamespaceConfig {
    NamespaceConfig::new(pattern)
}

fn code(e: &WireError) -> ErrorCode {
    e.code.clone()
}

#[tokio::test]
async fn durable_publish_is_acknowledged_after_commit_and_delivered_with_offsets() {
    for db in TestDb::all().await {
        let hub = TestHub::start_durable(&db, config(vec![ns("orders.>")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        let (mut exact, _) = Client::authed(hub.addr(), &token("a")).await;
        let (mut wild, _) = Client::authed(hub.addr(), &token("b")).await;

        // A subscription that never saw an event gets a valid position.
        let s = subscribe(&mut exact, "orders.1").await.unwrap();
        assert_eq!(s.offset, Some(0), "{}", db.name());
        assert_eq!(s.position, Some(0));
        let epoch = s.epoch.clone().unwrap();
        assert_eq!(epoch.len(), 16);
        let w = subscribe(&mut wild, "orders.*").await.unwrap();
        assert_eq!((w.offset, w.position), (None, Some(0)));

        for i in 1..=3u64 {
            let r = publish(&mut p, "orders.1", i, |p| p).await.unwrap();
            assert_eq!(r.offset, Some(i));
            assert_eq!(r.position, Some(i));
            assert_eq!(r.epoch.as_deref(), Some(&*epoch));
            assert_eq!(r.durability, Some(Durability::Fsynced));
            assert_eq!(r.duplicate, None);
            assert_eq!(r.delivered, 2);
        }
        let r = publish(&mut p, "orders.2", 4, |p| p).await.unwrap();
        assert_eq!((r.offset, r.position), (Some(1), Some(4)));
        for i in 1..=3u64 {
            let e = next_event(&mut exact).await;
            assert_eq!((e.topic.as_str(), e.offset, e.position), ("orders.1", i, i));
            assert_eq!(values(&[e]), vec![i]);
        }
        let got: Vec<(u64, u64)> = [
            next_event(&mut wild).await,
            next_event(&mut wild).await,
            next_event(&mut wild).await,
            next_event(&mut wild).await,
        ]
        .iter()
        .map(|e| (e.offset, e.position))
        .collect();
        assert_eq!(got, vec![(1, 1), (2, 2), (3, 3), (1, 4)]);

        // The subscribe result after events: the current last values.
        let (mut late, _) = Client::authed(hub.addr(), &token("c")).await;
        let s = subscribe(&mut late, "orders.1").await.unwrap();
        assert_eq!((s.offset, s.position), (Some(3), Some(3)));

        // echo: false skips the publisher's own connection.
        subscribe(&mut p, "orders.1").await.unwrap();
        publish(&mut p, "orders.1", 5, |p| p.with_echo(false))
            .await
            .unwrap();
        publish(&mut p, "orders.1", 6, |p| p).await.unwrap();
        let e = next_event(&mut p).await;
        assert_eq!(values(&[e]), vec![6], "the echo: false event was skipped");

        // Durable-only keys on a plain topic, and `since` on a plain topic.
        let e = publish(&mut p, "chat.1", 1, |p| p.with_producer("x", 1))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        let e = resume(&mut p, "chat.1", Since::offset(None, 0))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        // A plain topic on a durable hub stays plain.
        let r = publish(&mut p, "chat.1", 1, |p| p).await.unwrap();
        assert_eq!((r.offset, r.epoch), (None, None));
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn idempotent_publish_survives_a_restart_and_expected_offset_conflicts() {
    for db in TestDb::all().await {
        let hub = TestHub::start_durable(&db, config(vec![ns("orders.>")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        let first = publish(&mut p, "orders.1", 1, |p| p.with_producer("prod-a", 1))
            .await
            .unwrap();
        assert_eq!(first.offset, Some(1));
        let keyed = publish(&mut p, "orders.1", 2, |p| p.with_key("k-1"))
            .await
            .unwrap();
        assert_eq!(keyed.offset, Some(2));
        drop(p);
        hub.shutdown().await;

        // The same data directory / database: the retry is a duplicate.
        let hub = TestHub::start_durable(&db, config(vec![ns("orders.>")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        let again = publish(&mut p, "orders.1", 1, |p| p.with_producer("prod-a", 1))
            .await
            .unwrap();
        assert_eq!(again.duplicate, Some(true), "{}", db.name());
        assert_eq!(again.offset, Some(1));
        assert_eq!(again.epoch, first.epoch);
        let again = publish(&mut p, "orders.1", 2, |p| p.with_key("k-1"))
            .await
            .unwrap();
        assert_eq!((again.duplicate, again.offset), (Some(true), Some(2)));
        let next = publish(&mut p, "orders.1", 3, |p| p.with_producer("prod-a", 2))
            .await
            .unwrap();
        assert_eq!((next.duplicate, next.offset), (None, Some(3)));

        // Compare-and-set on the last offset.
        let ok = publish(&mut p, "orders.1", 4, |p| p.with_expected_offset(3))
            .await
            .unwrap();
        assert_eq!(ok.offset, Some(4));
        let e = publish(&mut p, "orders.1", 5, |p| p.with_expected_offset(3))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::Conflict);
        let d: ConflictDetails = e.details.unwrap().decode().unwrap();
        assert_eq!(d.last_offset, Some(4));
        let fresh = publish(&mut p, "orders.9", 1, |p| p.with_expected_offset(0))
            .await
            .unwrap();
        assert_eq!(fresh.offset, Some(1));
        // Malformed durable keys.
        let e = publish(&mut p, "orders.1", 1, |p| {
            let mut p = p;
            p.seq = Some(1);
            p
        })
        .await
        .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn resume_streams_the_missed_events_in_chunks_then_goes_live() {
    for db in TestDb::all().await {
        let mut cfg = config(vec![ns("orders.>")]);
        // Small pages: the catch-up takes several chunks.
        cfg.storage.catchup_page = 7;
        let hub = TestHub::start_durable(&db, cfg, |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        publish_n(&mut p, "orders.1", 1..=50).await;
        let epoch = publish(&mut p, "orders.1", 51, |p| p)
            .await
            .unwrap()
            .epoch
            .unwrap();

        // During catch-up: from offset 10.
        let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
        let (events, fin) = resume(&mut c, "orders.1", Since::offset(Some(&epoch), 10))
            .await
            .unwrap();
        assert_eq!(fin.outcome, ResumeOutcome::Recovered, "{}", db.name());
        assert_eq!(fin.count, 41);
        assert_eq!((fin.offset, fin.position), (51, 51));
        assert_eq!(fin.epoch, epoch);
        assert_eq!(
            events.iter().map(|e| e.offset).collect::<Vec<_>>(),
            (11..=51).collect::<Vec<_>>()
        );
        assert_eq!(values(&events), (11..=51).collect::<Vec<_>>());
        // Live after the final chunk.
        publish(&mut p, "orders.1", 52, |p| p).await.unwrap();
        let e = next_event(&mut c).await;
        assert_eq!(e.offset, 52);
        // A second subscribe to the same topic is a conflict.
        let e = resume(&mut c, "orders.1", Since::offset(None, 0))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::Conflict);

        // Exactly at the live edge: nothing to stream, live from there.
        let (mut edge, _) = Client::authed(hub.addr(), &token("e")).await;
        let (events, fin) = resume(&mut edge, "orders.1", Since::offset(Some(&epoch), 52))
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(
            (fin.outcome, fin.count, fin.offset),
            (ResumeOutcome::Recovered, 0, 52)
        );
        publish(&mut p, "orders.1", 53, |p| p).await.unwrap();
        assert_eq!(next_event(&mut edge).await.offset, 53);

        // Beyond the history, or another epoch: reset.
        let (mut r, _) = Client::authed(hub.addr(), &token("r")).await;
        let (events, fin) = resume(&mut r, "orders.1", Since::offset(Some("0000"), 3))
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(fin.outcome, ResumeOutcome::Reset);
        assert_eq!((fin.epoch.as_str(), fin.offset), (&*epoch, 53));
        // Wrong `since` shapes.
        let (mut bad, _) = Client::authed(hub.addr(), &token("x")).await;
        let e = resume(&mut bad, "orders.1", Since::position(None, 3))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        // The failed subscribe left nothing behind: a good one works.
        let (events, _) = resume(&mut bad, "orders.1", Since::offset(None, 50))
            .await
            .unwrap();
        assert_eq!(events.len(), 3);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn resume_after_retention_is_too_old_and_after_a_reset_is_reset() {
    for db in TestDb::all().await {
        let mut n = ns("state.>");
        n.max_events = Some(5);
        let hub = TestHub::start_durable(&db, config(vec![n, ns("other.>")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        publish_n(&mut p, "state.1", 1..=20).await;
        let streams = hub.hub().streams.clone().unwrap();
        streams.run_retention().await.unwrap();
        let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
        let (events, fin) = resume(&mut c, "state.1", Since::offset(None, 2))
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(fin.outcome, ResumeOutcome::TooOld, "{}", db.name());
        assert_eq!(fin.earliest, Some(16));
        assert_eq!(fin.offset, 20);
        // Live after too_old too.
        publish(&mut p, "state.1", 21, |p| p).await.unwrap();
        assert_eq!(next_event(&mut c).await.offset, 21);

        // Epoch reset.
        let old = streams.topic_namespace("other.1").unwrap().epoch.clone();
        publish_n(&mut p, "other.1", 1..=3).await;
        let first = publish(&mut p, "other.1", 4, |p| p).await.unwrap();
        let new_epoch = streams.reset_topic("other.1").await.unwrap();
        assert_ne!(Some(&*new_epoch), first.epoch.as_deref());
        let (mut r, _) = Client::authed(hub.addr(), &token("r")).await;
        let (events, fin) = resume(&mut r, "other.1", Since::offset(first.epoch.as_deref(), 4))
            .await
            .unwrap();
        assert!(events.is_empty());
        assert_eq!(fin.outcome, ResumeOutcome::Reset);
        assert_eq!((fin.epoch.as_str(), fin.offset), (&*new_epoch, 0));
        let _ = old;
        let after = publish(&mut p, "other.1", 5, |p| p).await.unwrap();
        assert_eq!(after.offset, Some(1));
        assert_eq!(after.epoch.as_deref(), Some(&*new_epoch));
        assert_eq!(next_event(&mut r).await.offset, 1);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn wildcard_resume_by_namespace_position() {
    for db in TestDb::all().await {
        let mut cfg = config(vec![ns("orders.>"), ns("chat.>")]);
        cfg.storage.catchup_page = 5;
        let hub = TestHub::start_durable(&db, cfg, |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        for i in 1..=30u64 {
            let topic = if i % 3 == 0 {
                "orders.eu.x"
            } else {
                "orders.us"
            };
            publish(&mut p, topic, i, |p| p).await.unwrap();
        }
        let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
        let (events, fin) = resume(&mut c, "orders.*", Since::position(None, 10))
            .await
            .unwrap();
        assert_eq!(fin.outcome, ResumeOutcome::Recovered, "{}", db.name());
        // `orders.*` matches `orders.us` only (one token).
        let expect: Vec<u64> = (11..=30).filter(|i| i % 3 != 0).collect();
        assert_eq!(values(&events), expect);
        assert_eq!(fin.count, expect.len() as u64);
        assert_eq!((fin.offset, fin.position), (0, 30));
        publish(&mut p, "orders.eu.x", 31, |p| p).await.unwrap();
        publish(&mut p, "orders.us", 32, |p| p).await.unwrap();
        let e = next_event(&mut c).await;
        assert_eq!((e.topic.as_str(), e.position), ("orders.us", 32));

        // A pattern across namespaces can subscribe live, not resume.
        let (mut m, _) = Client::authed(hub.addr(), &token("m")).await;
        let e = resume(&mut m, ">", Since::position(None, 0))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        let s = subscribe(&mut m, ">").await.unwrap();
        assert_eq!(s, SubscribeResult::default());
        publish(&mut p, "chat.1", 33, |p| p).await.unwrap();
        let e = next_event(&mut m).await;
        assert_eq!((e.topic.as_str(), e.offset), ("chat.1", 1));
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn pattern_resume_after_one_topic_was_reset() {
    for db in TestDb::all().await {
        let hub = TestHub::start_durable(&db, config(vec![ns("room.*")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        // Positions 1..=6: room.a at 1, 3, 5; room.b at 2, 4, 6.
        for i in 1..=6u64 {
            let t = if i % 2 == 1 { "room.a" } else { "room.b" };
            publish(&mut p, t, i, |p| p).await.unwrap();
        }
        let streams = hub.hub().streams.clone().unwrap();
        let ns_epoch = streams.topic_namespace("room.a").unwrap().epoch.to_string();
        streams.reset_topic("room.a").await.unwrap();
        // From before room.a's last position: its events after the
        // client's position are gone (the reset removed them), so too_old
        // with earliest one past room.a's last position, and the
        // namespace's epoch and positions unchanged.
        let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
        let (events, fin) = resume(&mut c, "room.*", Since::position(Some(&ns_epoch), 2))
            .await
            .unwrap();
        assert!(events.is_empty(), "{}", db.name());
        assert_eq!(fin.outcome, ResumeOutcome::TooOld, "{}", db.name());
        assert_eq!(fin.earliest, Some(6));
        assert_eq!((fin.epoch.as_str(), fin.position), (ns_epoch.as_str(), 6));
        // From at or past it: recovered, and room.a continues with offsets
        // restarted at 1 but positions continuing (clients of a pattern go
        // by position).
        let (mut d, _) = Client::authed(hub.addr(), &token("d")).await;
        let (events, fin) = resume(&mut d, "room.*", Since::position(Some(&ns_epoch), 5))
            .await
            .unwrap();
        assert_eq!(fin.outcome, ResumeOutcome::Recovered, "{}", db.name());
        assert_eq!(
            events
                .iter()
                .map(|e| (e.topic.as_str(), e.position))
                .collect::<Vec<_>>(),
            vec![("room.b", 6)]
        );
        publish(&mut p, "room.a", 7, |p| p).await.unwrap();
        for live in [&mut c, &mut d] {
            let e = next_event(live).await;
            assert_eq!((e.topic.as_str(), e.offset, e.position), ("room.a", 1, 7));
        }
        // A later pattern resume from before the new event recovers it.
        let (mut e2, _) = Client::authed(hub.addr(), &token("e")).await;
        let (events, fin) = resume(&mut e2, "room.*", Since::position(Some(&ns_epoch), 6))
            .await
            .unwrap();
        assert_eq!(fin.outcome, ResumeOutcome::Recovered);
        assert_eq!(
            events
                .iter()
                .map(|e| (e.topic.as_str(), e.offset, e.position))
                .collect::<Vec<_>>(),
            vec![("room.a", 1, 7)]
        );
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn the_seam_has_no_gap_and_no_duplicate_under_concurrent_publishing() {
    for db in TestDb::all().await {
        let mut cfg = config(vec![ns("orders.>")]);
        cfg.storage.catchup_page = 16;
        // A small live buffer: the resume overflows it and reads storage
        // again while the publisher keeps going.
        cfg.storage.seam_buffer_events = 4;
        let hub = TestHub::start_durable(&db, cfg, |c| {
            c.rate_per_sec = 1_000_000;
            c.rate_burst = 1_000_000;
        })
        .await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        publish_n(&mut p, "orders.1", 1..=200).await;
        const TOTAL: u64 = 800;
        let publisher = tokio::spawn(async move {
            for i in 201..=TOTAL {
                publish(&mut p, "orders.1", i, |p| p).await.unwrap();
            }
            p
        });
        // A subscribe without `since` while the publisher runs: live from
        // exactly the offset its result names.
        let (mut now, _) = Client::authed(hub.addr(), &token("now")).await;
        let s = subscribe(&mut now, "orders.1").await.unwrap();
        let from = s.offset.unwrap();
        assert!(from < TOTAL, "subscribed while the publisher runs");
        let mut clients = Vec::new();
        for k in 0..4u64 {
            let (mut c, _) = Client::authed(hub.addr(), &token(&format!("c{k}"))).await;
            let (mut seen, fin) = resume(&mut c, "orders.1", Since::offset(None, k * 20))
                .await
                .unwrap();
            assert_eq!(fin.outcome, ResumeOutcome::Recovered);
            assert_eq!(fin.count, seen.len() as u64);
            assert_eq!(seen.last().map_or(k * 20, |e| e.offset), fin.offset);
            while seen.last().map_or(0, |e| e.offset) < TOTAL {
                seen.push(next_event(&mut c).await);
            }
            let offsets: Vec<u64> = seen.iter().map(|e| e.offset).collect();
            if let Some(i) = offsets.windows(2).position(|w| w[1] != w[0] + 1) {
                panic!(
                    "{}: client {k}: {} then {} at index {i}; final chunk {fin:?} after {} streamed",
                    db.name(),
                    offsets[i],
                    offsets[i + 1],
                    fin.count
                );
            }
            assert_eq!(
                offsets,
                (k * 20 + 1..=TOTAL).collect::<Vec<_>>(),
                "{}: client {k}",
                db.name()
            );
            clients.push(c);
        }
        let mut seen = Vec::new();
        while seen.last().copied().unwrap_or(from) < TOTAL {
            seen.push(next_event(&mut now).await.offset);
        }
        assert_eq!(
            seen,
            (from + 1..=TOTAL).collect::<Vec<_>>(),
            "{}",
            db.name()
        );
        publisher.await.unwrap();
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn history_pages_both_ways_and_latest_per_topic() {
    for db in TestDb::all().await {
        let hub = TestHub::start_durable(&db, config(vec![ns("state.>")]), |_| {}).await;
        let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
        publish_n(&mut p, "state.a", 1..=25).await;
        publish(&mut p, "state.b", 100, |p| p).await.unwrap();
        publish(&mut p, "state.c.deep", 200, |p| p).await.unwrap();
        // Forwards from the start, 10 at a time.
        let mut from = None;
        let mut all = Vec::new();
        loop {
            let mut params = HistoryParams::new("state.a").with_limit(10);
            params.from = from;
            let r = p.call("history", &params).await.unwrap();
            let h: plexus_protocol::methods::HistoryResult = r.decode().unwrap();
            assert_eq!((h.first, h.last), (1, 25), "{}", db.name());
            assert!(h.events.len() <= 10);
            all.extend(h.events.iter().map(|e| ev(&e.decode().unwrap()).offset));
            match h.next {
                Some(n) => from = Some(n),
                None => break,
            }
        }
        assert_eq!(all, (1..=25).collect::<Vec<_>>());
        // Backwards from offset 12.
        let r = p
            .call(
                "history",
                &HistoryParams::new("state.a")
                    .with_from(12)
                    .with_direction(Direction::Backward)
                    .with_limit(5),
            )
            .await
            .unwrap();
        let h: plexus_protocol::methods::HistoryResult = r.decode().unwrap();
        let got: Vec<u64> = h
            .events
            .iter()
            .map(|e| ev(&e.decode().unwrap()).offset)
            .collect();
        assert_eq!(got, vec![12, 11, 10, 9, 8]);
        assert_eq!(h.next, Some(7));
        // An empty durable topic, and a plain one.
        let r = p
            .call("history", &HistoryParams::new("state.none"))
            .await
            .unwrap();
        let h: plexus_protocol::methods::HistoryResult = r.decode().unwrap();
        assert!(h.events.is_empty());
        assert_eq!((h.first, h.last), (1, 0));
        let e = p
            .call("history", &HistoryParams::new("plain.x"))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);
        let e = p
            .call("history", &HistoryParams::new("state.a").with_limit(0))
            .await
            .unwrap_err();
        assert_eq!(code(&e), ErrorCode::InvalidParams);

        // The last event of each topic under a pattern, paged.
        let r = p
            .call(
                "history.latest",
                &HistoryLatestParams::new("state.>").with_limit(2),
            )
            .await
            .unwrap();
        let l: plexus_protocol::methods::HistoryLatestResult = r.decode().unwrap();
        let got: Vec<Ev> = l.events.iter().map(|e| ev(&e.decode().unwrap())).collect();
        assert_eq!(
            got.iter().map(|e| e.topic.as_str()).collect::<Vec<_>>(),
            vec!["state.a", "state.b"]
        );
        assert_eq!(values(&got), vec![25, 100]);
        let next = l.next.unwrap();
        let r = p
            .call(
                "history.latest",
                &HistoryLatestParams::new("state.>").with_after(&next),
            )
            .await
            .unwrap();
        let l: plexus_protocol::methods::HistoryLatestResult = r.decode().unwrap();
        let got: Vec<Ev> = l.events.iter().map(|e| ev(&e.decode().unwrap())).collect();
        assert_eq!(values(&got), vec![200]);
        assert_eq!(l.next, None);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn capabilities_are_checked_on_every_durable_method() {
    let db = TestDb::sqlite();
    let hub = TestHub::start_durable(&db, config(vec![ns("orders.>")]), |_| {}).await;
    let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
    publish_n(&mut p, "orders.1", 1..=3).await;
    // May read orders.public.* only, and publish nowhere.
    let t = sign(
        &claims("r", &["orders.public.*"], &[], false),
        Algorithm::HS256,
        SECRET,
    );
    let (mut c, _) = Client::authed(hub.addr(), &t).await;
    let e = publish(&mut c, "orders.1", 1, |p| p).await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = publish(&mut c, "orders.1", 1, |p| p.with_producer("x", 1))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = resume(&mut c, "orders.1", Since::offset(None, 0))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = subscribe(&mut c, "orders.1").await.unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = resume(&mut c, "orders.*", Since::position(None, 0))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = c
        .call("history", &HistoryParams::new("orders.1"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    let e = c
        .call("history.latest", &HistoryLatestParams::new("orders.>"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::Forbidden);
    // What it may read works.
    let (events, fin) = resume(&mut c, "orders.public.x", Since::offset(None, 0))
        .await
        .unwrap();
    assert!(events.is_empty());
    assert_eq!(fin.outcome, ResumeOutcome::Recovered);
    c.call("history", &HistoryParams::new("orders.public.x"))
        .await
        .unwrap();
    hub.shutdown().await;
}

#[tokio::test]
async fn a_hub_without_namespaces_serves_history_as_not_durable() {
    let hub = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
    let e = c
        .call("history", &HistoryParams::new("orders.1"))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidParams);
    let e = publish(&mut c, "orders.1", 1, |p| p.with_expected_offset(0))
        .await
        .unwrap_err();
    assert_eq!(code(&e), ErrorCode::InvalidParams);
    assert!(hub.hub().streams.is_none());
}

async fn scrape(hub: &TestHub) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(hub.addr()).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The value of the sample `name` (with its labels), 0 if absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn metrics_count_commits_batches_catch_up_and_retention() {
    let db = TestDb::sqlite();
    let mut n = ns("m.>");
    n.max_events = Some(5);
    let hub = TestHub::start_durable(&db, config(vec![n]), |_| {}).await;
    let (mut p, _) = Client::authed(hub.addr(), &token("p")).await;
    publish_n(&mut p, "m.1", 1..=10).await;
    let (mut c, _) = Client::authed(hub.addr(), &token("c")).await;
    let (events, _) = resume(&mut c, "m.1", Since::offset(None, 7)).await.unwrap();
    assert_eq!(events.len(), 3);
    hub.hub()
        .streams
        .as_ref()
        .unwrap()
        .run_retention()
        .await
        .unwrap();
    // Histograms are folded into buckets by the upkeep: render folds too.
    let text = scrape(&hub).await;
    assert!(
        metric(&text, "plexus_stream_commit_seconds_count") >= 10.0,
        "{text}"
    );
    assert!(metric(&text, "plexus_stream_batch_size_count") >= 10.0);
    assert!(text.contains("plexus_stream_batch_size_bucket{le=\"1\"}"));
    assert!(metric(&text, "plexus_stream_events_stored_total") >= 10.0);
    assert!(metric(&text, "plexus_stream_catchup_events_total") >= 3.0);
    assert!(metric(&text, "plexus_stream_retention_events_total") >= 5.0);
    hub.shutdown().await;
}
