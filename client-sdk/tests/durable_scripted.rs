//! Durable streams through the whole SDK (driver, sockets, handles)
//! against scripted servers: a publish in flight when the connection drops
//! is sent again with the same producer sequence number and acknowledged
//! once; a durable subscription resumes with `since` on the next
//! connection, de-duplicates at the seam, and reports its outcome; a slow
//! consumer loses nothing.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::protocol::methods::{
    Durability, EventParams, PublishParams, PublishResult, ResumeFinal, ResumeOutcome,
    SubscribeParams, SubscribeResult,
};
use plexus_client::{
    Backoff, Client, ClientBuilder, DurableEvent, MemoryPositionStore, PositionStore, RawValue,
    StartAt, StreamPosition,
};
use plexus_conformance::script::{Peer, ScriptedServer};

fn builder(url: String) -> ClientBuilder {
    Client::builder(url)
        .token("scripted-token")
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
}

async fn next(sub: &mut plexus_client::DurableSubscription) -> DurableEvent {
    tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("an event in time")
        .expect("not ended")
}

fn offset_of(e: &DurableEvent) -> u64 {
    match e {
        DurableEvent::Message(m) => m.offset,
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn a_publish_in_flight_at_a_drop_is_sent_again_with_its_seq_and_acked_once() {
    let seen: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let log = seen.clone();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let log = log.clone();
        async move {
            p.accept_auth().await;
            while let Some(req) = p.recv_request().await {
                let params: PublishParams = plexus_protocol::decode_params(&req.params).unwrap();
                let (producer, seq) = (params.producer.unwrap().to_owned(), params.seq.unwrap());
                log.lock().unwrap().push((producer, seq));
                if p.index == 0 {
                    // Stored, but the connection dies before the answer.
                    p.drop_connection();
                    return;
                }
                let r =
                    PublishResult::durable(0, Some(seq), Some(seq), "E", Durability::Fsynced, true);
                p.respond(req.id, &r).await;
            }
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    let ack = c.publish_durable("orders.eu", &"o-1").await.unwrap();
    assert!(ack.duplicate);
    assert_eq!((ack.offset, ack.seq), (Some(1), 1));
    let ack = c.publish_durable("orders.eu", &"o-2").await.unwrap();
    assert_eq!(ack.seq, 2);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(
        seen[0], seen[1],
        "the retry carries the same producer and seq"
    );
    assert_eq!(seen[2].1, 2);
    assert_eq!(seen[2].0, seen[0].0, "one producer id per client");
}

fn event(topic: &str, offset: u64) -> Vec<u8> {
    let data = RawValue::encode(&offset).unwrap();
    let e = EventParams::new(topic, data.as_raw_ref(), None).with_position(offset, offset);
    RawValue::encode(&e).unwrap().as_bytes().to_vec()
}

#[tokio::test]
async fn a_durable_subscription_resumes_on_the_next_connection_without_gap_or_duplicate() {
    type Since = Option<(Option<String>, Option<u64>)>;
    let sinces: Arc<Mutex<Vec<Since>>> = Arc::default();
    let log = sinces.clone();
    let server = ScriptedServer::start(move |mut p: Peer| {
        let log = log.clone();
        async move {
            p.accept_auth().await;
            let req = p.recv_request().await.unwrap();
            let params: SubscribeParams = plexus_protocol::decode_params(&req.params).unwrap();
            log.lock()
                .unwrap()
                .push(params.since.map(|s| (s.epoch.map(str::to_owned), s.offset)));
            let ev =
                |o| plexus_protocol::Encoded(Box::leak(event("orders.eu", o).into_boxed_slice()));
            match p.index {
                0 => {
                    p.respond(req.id, &SubscribeResult::durable("E1", Some(2), 2))
                        .await;
                    p.notify("event", &ev(3)).await;
                    p.notify("event", &ev(4)).await;
                    p.drop_connection();
                }
                _ => {
                    // The catch-up repeats 4 (already received), then the
                    // seam repeats 6.
                    let list = [ev(4), ev(5), ev(6)];
                    p.chunk(req.id, 0, false, &list).await;
                    let f = ResumeFinal::new(ResumeOutcome::Recovered, 3, "E1", 6, 6, None);
                    p.chunk(req.id, 1, true, &f).await;
                    p.notify("event", &ev(6)).await;
                    p.notify("event", &ev(7)).await;
                    while p.recv().await.is_some() {}
                }
            }
        }
    })
    .await
    .unwrap();
    let store = Arc::new(MemoryPositionStore::new());
    let c = builder(server.url())
        .position_store(store.clone())
        .connect()
        .await
        .unwrap();
    let mut sub = c.subscribe_durable("orders.eu").await.unwrap();
    assert_eq!(offset_of(&next(&mut sub).await), 3);
    assert_eq!(offset_of(&next(&mut sub).await), 4);
    assert_eq!(offset_of(&next(&mut sub).await), 5);
    assert_eq!(offset_of(&next(&mut sub).await), 6);
    assert!(matches!(
        next(&mut sub).await,
        DurableEvent::Recovered { count: 3, .. }
    ));
    assert_eq!(offset_of(&next(&mut sub).await), 7);
    assert_eq!(
        store.load("orders.eu"),
        Some(StreamPosition::new(Some("E1".into()), 7)),
        "saved as the application took each event"
    );
    let sinces = sinces.lock().unwrap().clone();
    assert_eq!(sinces, [None, Some((Some("E1".into()), Some(4)))]);
}

#[tokio::test]
async fn a_slow_consumer_of_a_long_catch_up_loses_nothing() {
    const EVENTS: u64 = 2_000;
    const PER_CHUNK: usize = 50;
    let server = ScriptedServer::start(move |mut p: Peer| async move {
        p.accept_auth().await;
        let req = p.recv_request().await.unwrap();
        let mut seq = 0;
        for first in (1..=EVENTS).step_by(PER_CHUNK) {
            let list: Vec<_> = (first..first + PER_CHUNK as u64)
                .map(|o| {
                    plexus_protocol::Encoded(Box::leak(event("orders.eu", o).into_boxed_slice()))
                })
                .collect();
            p.chunk(req.id, seq, false, &list).await;
            seq += 1;
        }
        let f = ResumeFinal::new(ResumeOutcome::Recovered, EVENTS, "E1", EVENTS, EVENTS, None);
        p.chunk(req.id, seq, true, &f).await;
        while p.recv().await.is_some() {}
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .durable_buffer(16)
        .call_timeout(Duration::from_secs(20))
        .connect()
        .await
        .unwrap();
    let mut sub = c
        .subscribe_durable_from("orders.eu", StartAt::Beginning)
        .await
        .expect("resolves at the first chunk, before the catch-up ends");
    for want in 1..=EVENTS {
        if want % 100 == 0 {
            // A consumer slower than the hub.
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(offset_of(&next(&mut sub).await), want);
    }
    assert!(matches!(
        next(&mut sub).await,
        DurableEvent::Recovered { count: EVENTS, .. }
    ));
}
