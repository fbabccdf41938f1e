//! Durable streams through the SDK against a real hub with durable
//! namespaces, on SQLite (and PostgreSQL when `PLEXUS_TEST_POSTGRES_URL`
//! is set): acknowledgements, typed conflicts, a restart-stable producer,
//! positions kept across a "process restart" by the position store, the
//! `reset` outcome, a resume across a hub restart, and refusals of topics
//! that are not durable.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::protocol::ErrorCode;
use plexus_client::protocol::methods::Durability;
use plexus_client::{
    DurableEvent, DurableSubscription, Error, MemoryPositionStore, PositionStore, PublishOptions,
    RawValue, StartAt, StreamPosition,
};
use plexus_server::Server;
use plexus_testkit::{TestDb, streams_config};

async fn durable_hub(db: &TestDb) -> Server {
    common::hub(|c| {
        db.apply(c);
        c.streams = streams_config(&["orders.>"]);
    })
    .await
}

async fn next(sub: &mut DurableSubscription) -> DurableEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("an event in time")
        .expect("not ended")
}

async fn message(sub: &mut DurableSubscription) -> (u64, String) {
    match next(sub).await {
        DurableEvent::Message(m) => (m.offset, m.data.decode::<String>().unwrap()),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn acks_conflicts_producers_and_refusals() {
    for db in TestDb::all().await {
        let hub = durable_hub(&db).await;
        let c = common::client(&hub, "alice").await;

        let a = c.publish_durable("orders.eu", &"one").await.unwrap();
        assert_eq!((a.offset, a.duplicate, a.seq), (Some(1), false, 1));
        assert_eq!(a.durability, Some(Durability::Fsynced));
        assert!(a.epoch.is_some());
        let b = c.publish_durable("orders.eu", &"two").await.unwrap();
        assert_eq!(
            (b.offset, b.seq, b.epoch.clone()),
            (Some(2), 2, a.epoch.clone())
        );

        // Compare-and-set, typed.
        let data = RawValue::encode(&"three").unwrap();
        let e = c
            .publish_durable_with("orders.eu", &data, PublishOptions::new().expected_offset(1))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Conflict {
                    last_offset: Some(2),
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.code(), Some(&ErrorCode::Conflict));
        let ok = c
            .publish_durable_with("orders.eu", &data, PublishOptions::new().expected_offset(2))
            .await
            .unwrap();
        assert_eq!(ok.offset, Some(3));

        // An idempotency key: the second publish is not stored again.
        let k = PublishOptions::new().key("order-17");
        let first = c
            .publish_durable_with("orders.us", &data, k.clone())
            .await
            .unwrap();
        let again = c.publish_durable_with("orders.us", &data, k).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.offset, first.offset);

        // A restart-stable producer: a "new process" that retries with the
        // same (producer, seq) is recognised.
        let p1 = common::builder(common::url(&hub), "alice")
            .producer_id("billing-1")
            .producer_seq_start(500)
            .connect()
            .await
            .unwrap();
        let stored = p1.publish_durable("orders.eu", &"four").await.unwrap();
        p1.close().await;
        let p2 = common::builder(common::url(&hub), "alice")
            .producer_id("billing-1")
            .producer_seq_start(500)
            .connect()
            .await
            .unwrap();
        let retried = p2.publish_durable("orders.eu", &"four").await.unwrap();
        assert!(retried.duplicate, "{}", db.name());
        assert_eq!(retried.offset, stored.offset);
        // The default numbering of an explicit id follows the clock, above
        // any small number used before.
        let p3 = common::builder(common::url(&hub), "alice")
            .producer_id("billing-1")
            .connect()
            .await
            .unwrap();
        let fresh = p3.publish_durable("orders.eu", &"five").await.unwrap();
        assert!(!fresh.duplicate);
        assert!(fresh.seq > 500);

        // Not durable.
        let e = c.publish_durable("chat.lobby", &"x").await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::InvalidParams), "{e:?}");
        let e = c.subscribe_durable("chat.lobby").await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::InvalidParams), "{e:?}");
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn the_position_store_resumes_a_new_client_where_the_last_one_stopped() {
    for db in TestDb::all().await {
        let hub = durable_hub(&db).await;
        let publisher = common::client(&hub, "pub").await;
        let store = Arc::new(MemoryPositionStore::new());

        let first = common::builder(common::url(&hub), "sub")
            .position_store(store.clone())
            .connect()
            .await
            .unwrap();
        // Nothing stored: it starts now.
        let mut sub = first.subscribe_durable("orders.eu").await.unwrap();
        for n in 1..=3 {
            publisher
                .publish_durable("orders.eu", &format!("e{n}"))
                .await
                .unwrap();
        }
        for n in 1..=3 {
            assert_eq!(message(&mut sub).await, (n, format!("e{n}")));
        }
        let saved = store.load("orders.eu").unwrap();
        assert_eq!(saved.last, 3);
        drop(sub);
        first.close().await;

        for n in 4..=5 {
            publisher
                .publish_durable("orders.eu", &format!("e{n}"))
                .await
                .unwrap();
        }
        let second = common::builder(common::url(&hub), "sub")
            .position_store(store.clone())
            .connect()
            .await
            .unwrap();
        let mut sub = second.subscribe_durable("orders.eu").await.unwrap();
        assert_eq!(message(&mut sub).await, (4, "e4".into()));
        assert_eq!(message(&mut sub).await, (5, "e5".into()));
        assert!(matches!(
            next(&mut sub).await,
            DurableEvent::Recovered { count: 2, .. }
        ));
        publisher.publish_durable("orders.eu", &"e6").await.unwrap();
        assert_eq!(message(&mut sub).await, (6, "e6".into()));

        // One subscription per pattern and client.
        let e = second.subscribe_durable("orders.eu").await.unwrap_err();
        assert_eq!(e.code(), Some(&ErrorCode::Conflict));

        // An epoch the hub does not know: a typed reset, then live.
        let third = common::client(&hub, "sub").await;
        let mut r = third
            .subscribe_durable_from(
                "orders.eu",
                StartAt::After(StreamPosition::new(Some("not-the-epoch".into()), 2)),
            )
            .await
            .unwrap();
        match next(&mut r).await {
            DurableEvent::Reset { epoch, position } => {
                assert_eq!(Some(epoch), saved.epoch, "the topic's real epoch");
                assert_eq!(position.last, 6);
            }
            other => panic!("expected a reset, got {other:?}"),
        }
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn a_subscription_and_a_publish_survive_a_hub_restart() {
    for db in TestDb::all().await {
        let hub = durable_hub(&db).await;
        let proxy = common::Proxy::start(Some(hub.local_addr())).await;
        let c = common::builder(proxy.url(), "alice")
            .connect()
            .await
            .unwrap();
        let mut sub = c
            .subscribe_durable_from("orders.>", StartAt::Beginning)
            .await
            .unwrap();
        assert!(matches!(
            next(&mut sub).await,
            DurableEvent::Recovered { count: 0, .. }
        ));
        c.publish_durable("orders.eu", &"before").await.unwrap();
        assert_eq!(message(&mut sub).await, (1, "before".into()));

        // Stopped, then started again on the same data.
        proxy.set_upstream(None);
        hub.shutdown().await;
        let publish = {
            let c = c.clone();
            tokio::spawn(async move { c.publish_durable("orders.us", &"during").await })
        };
        let hub = durable_hub(&db).await;
        proxy.set_upstream(Some(hub.local_addr()));
        let ack = publish.await.unwrap().unwrap();
        assert_eq!(ack.offset, Some(1));

        // The resume replays nothing twice and misses nothing.
        let mut got = Vec::new();
        loop {
            match next(&mut sub).await {
                DurableEvent::Message(m) => {
                    got.push((m.topic.to_string(), m.data.decode::<String>().unwrap()));
                }
                DurableEvent::Recovered { .. } => {}
                other => panic!("{other:?}"),
            }
            if got.len() == 1 {
                break;
            }
        }
        assert_eq!(got, [("orders.us".to_owned(), "during".to_owned())]);
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn a_position_retention_removed_is_reported_too_old() {
    use plexus_client::protocol::methods::{History, HistoryParams};
    let db = TestDb::sqlite();
    let hub = common::hub(|c| {
        db.apply(c);
        let mut ns = plexus_server::streams::NamespaceConfig::new("logs.>");
        ns.max_events = Some(2);
        c.streams = plexus_server::streams::StreamsConfig {
            streams: vec![ns],
            ..Default::default()
        };
    })
    .await;
    let c = common::client(&hub, "alice").await;
    let mut epoch = None;
    for n in 1..=5u32 {
        epoch = c.publish_durable("logs.app", &n).await.unwrap().epoch;
    }
    // Retention runs in the background: wait (bounded) until it removed
    // the first events, publishing to give the writer turns.
    let mut first = 0;
    for n in 6..200u32 {
        let page = c
            .request::<History>(&HistoryParams::new("logs.app"))
            .await
            .unwrap();
        first = page.first;
        if first > 2 {
            break;
        }
        c.publish_durable("logs.app", &n).await.unwrap();
    }
    assert!(first > 2, "retention removed the oldest events");
    let mut sub = c
        .subscribe_durable_from("logs.app", StartAt::After(StreamPosition::new(epoch, 1)))
        .await
        .unwrap();
    match next(&mut sub).await {
        DurableEvent::TooOld { earliest, position } => {
            assert!(earliest.unwrap() > 2, "{earliest:?}");
            assert!(position.last >= 5);
        }
        other => panic!("expected too_old, got {other:?}"),
    }
    hub.shutdown().await;
}
