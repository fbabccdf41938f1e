//! The SDK against the real hub over real sockets.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use futures_util::StreamExt;
use minicbor::{Decode, Encode};
use plexus_client::{Client, ConnectionState, Error, Event};
use plexus_protocol::ErrorCode;
use plexus_protocol::methods::{Empty, Ping};

#[derive(Encode, Decode)]
#[cbor(map)]
struct Sleep {
    #[n(0)]
    ms: u64,
}

async fn next_message(sub: &mut plexus_client::Subscription) -> plexus_client::Publication {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .unwrap()
            .unwrap()
        {
            Event::Message(m) => return m,
            Event::Ended(e) => panic!("subscription ended: {e}"),
            _ => {}
        }
    }
}

#[tokio::test]
async fn calls_run_concurrently_on_one_connection() {
    let server = hub(|_| {}).await;
    let c = client(&server, "alice").await;
    assert_eq!(*c.state().borrow(), ConnectionState::Connected);
    let echoed = c.call("ping", &"hello").await.unwrap();
    assert_eq!(echoed.decode::<String>().unwrap(), "hello");
    let typed = c
        .request::<Ping>(&plexus_client::RawValue::encode(&7u8).unwrap().as_raw_ref())
        .await
        .unwrap();
    assert_eq!(typed.decode::<u8>().unwrap(), 7);
    // A slow call does not hold up fast ones.
    let slow = {
        let c = c.clone();
        tokio::spawn(async move { c.call("debug.sleep", &Sleep { ms: 500 }).await })
    };
    let started = std::time::Instant::now();
    let results = futures_util::future::join_all((0..50u32).map(|i| {
        let c = c.clone();
        async move { c.call("ping", &i).await.unwrap().decode::<u32>().unwrap() }
    }))
    .await;
    assert_eq!(results, (0..50).collect::<Vec<_>>());
    assert!(
        started.elapsed() < Duration::from_millis(450),
        "pings waited for the slow call"
    );
    slow.await.unwrap().unwrap();
    // Errors from the hub come back typed.
    let err = c.call("no.such.method", &Empty {}).await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::MethodNotFound));
}

#[tokio::test]
async fn dropping_or_timing_out_a_call_cancels_it() {
    let server = hub(|c| c.max_in_flight = 1).await;
    let c = client(&server, "alice").await;
    /// Succeeds once the hub has a free in-flight slot, i.e. once every
    /// abandoned call was cancelled there.
    async fn slot_frees(c: &Client) {
        for _ in 0..50 {
            match c.call("debug.sleep", &Sleep { ms: 1 }).await {
                Ok(_) => return,
                Err(e) if e.code() == Some(&ErrorCode::TooManyRequests) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
        panic!("the hub still holds the abandoned call");
    }
    let err = c
        .call_with_timeout(
            "debug.sleep",
            &Sleep { ms: 10_000 },
            Duration::from_millis(100),
        )
        .await
        .unwrap_err();
    assert_eq!(err, Error::Timeout);
    slot_frees(&c).await;
    // Dropping the future also cancels.
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        c.call("debug.sleep", &Sleep { ms: 10_000 }),
    )
    .await;
    assert!(dropped.is_err(), "the call was still running when dropped");
    slot_frees(&c).await;
}

#[tokio::test]
async fn subscribe_receives_and_drop_unsubscribes() {
    let server = hub(|_| {}).await;
    let a = client(&server, "alice").await;
    let b = client(&server, "bob").await;
    let mut all = a.subscribe("chat.>").await.unwrap();
    let mut one = a.subscribe("chat.room1").await.unwrap();
    assert_eq!(
        b.publish("chat.room1", &"hi").await.unwrap(),
        1,
        "one connection, delivered once"
    );
    for sub in [&mut all, &mut one] {
        let m = next_message(sub).await;
        assert_eq!((&*m.topic, m.from.as_deref()), ("chat.room1", Some("bob")));
        assert_eq!(m.data.decode::<String>().unwrap(), "hi");
    }
    b.publish("chat.room2", &"only all").await.unwrap();
    assert_eq!(&*next_message(&mut all).await.topic, "chat.room2");
    drop(all);
    drop(one);
    let mut delivered = 1;
    for _ in 0..50 {
        delivered = b.publish("chat.room1", &"anyone?").await.unwrap();
        if delivered == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 0, "dropping the subscriptions unsubscribed");
    // Forbidden and invalid subscriptions surface as errors.
    let err = a.subscribe("bad..pattern").await.unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::InvalidParams));
}

#[tokio::test]
async fn presence_set_get_and_join_leave_events() {
    let server = hub(|_| {}).await;
    let a = client(&server, "alice").await;
    let b = client(&server, "bob").await;
    let mut pa = a.subscribe_presence("room").await.unwrap();
    a.presence_set(&"here").await.unwrap();
    let pb = b.subscribe_presence("room").await.unwrap();
    let joined = loop {
        if let Event::Join(m) = tokio::time::timeout(Duration::from_secs(5), pa.next())
            .await
            .unwrap()
            .unwrap()
        {
            break m;
        }
    };
    assert_eq!(joined.user, "bob");
    let members = b.presence_get("room").await.unwrap();
    let mut users: Vec<_> = members.iter().map(|m| m.user.as_str()).collect();
    users.sort();
    assert_eq!(users, ["alice", "bob"]);
    let alice = members.iter().find(|m| m.user == "alice").unwrap();
    assert_eq!(
        alice.info.as_ref().unwrap().decode::<String>().unwrap(),
        "here"
    );
    drop(pb);
    let left = loop {
        if let Event::Leave(m) = tokio::time::timeout(Duration::from_secs(5), pa.next())
            .await
            .unwrap()
            .unwrap()
        {
            break m;
        }
    };
    assert_eq!(left.user, "bob");
}

#[tokio::test]
async fn a_slow_subscriber_gets_lagged_not_unbounded_memory() {
    let server = hub(|c| c.rate_burst = 1000).await;
    let a = builder(url(&server), "alice")
        .subscription_buffer(4)
        .connect()
        .await
        .unwrap();
    let mut sub = a.subscribe("t").await.unwrap();
    for i in 0..20u32 {
        a.publish("t", &i).await.unwrap();
    }
    a.call("ping", &()).await.unwrap();
    let mut seen = Vec::new();
    let mut lagged = 0;
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        match e {
            Event::Message(m) => seen.push(m.data.decode::<u32>().unwrap()),
            Event::Lagged(n) => lagged += n,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, vec![0, 1, 2, 3]);
    assert_eq!(lagged, 16);
}

#[tokio::test]
async fn token_refresh_keeps_the_connection() {
    let server = hub(|_| {}).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = calls.clone();
    let c = Client::builder(url(&server))
        .token_provider(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            // The first token lives 2 s; refreshed ones an hour.
            let ttl = if n == 0 { 2 } else { 3600 };
            async move { Ok::<_, std::convert::Infallible>(token_for("alice", ttl)) }
        })
        .connect()
        .await
        .unwrap();
    let mut state = c.state();
    state.borrow_and_update();
    tokio::time::sleep(Duration::from_millis(3_000)).await;
    assert!(
        calls.load(Ordering::SeqCst) >= 2,
        "the provider was asked for a fresh token"
    );
    assert!(
        !state.has_changed().unwrap(),
        "no reconnect happened: {:?}",
        *state.borrow_and_update()
    );
    c.call("ping", &()).await.unwrap();
}

#[tokio::test]
async fn reconnects_after_a_hub_restart_and_renews_subscriptions() {
    let server =
        hub(|c| c.shutdown_retry_hint = plexus_server::config::Dur(Duration::from_millis(100)))
            .await;
    let addr = server.local_addr();
    let c = client(&server, "alice").await;
    let mut sub = c.subscribe("news").await.unwrap();
    let mut state = c.state();
    server.shutdown().await;
    state
        .wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. }))
        .await
        .unwrap();
    // A call made while disconnected waits for the connection.
    let pending = {
        let c = c.clone();
        tokio::spawn(async move { c.call("ping", &"queued").await })
    };
    let server = hub(|cfg| cfg.listen = addr).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| *s == ConnectionState::Connected),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        pending.await.unwrap().unwrap().decode::<String>().unwrap(),
        "queued"
    );
    let other = client(&server, "bob").await;
    let mut delivered = 0;
    for _ in 0..50 {
        delivered = other.publish("news", &"after restart").await.unwrap();
        if delivered == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(delivered, 1, "the subscription was renewed");
    assert_eq!(
        next_message(&mut sub)
            .await
            .data
            .decode::<String>()
            .unwrap(),
        "after restart"
    );
    c.close().await;
    assert!(matches!(
        *c.state().borrow(),
        ConnectionState::Closed { .. }
    ));
    assert!(matches!(
        c.call("ping", &()).await.unwrap_err(),
        Error::Closed(_)
    ));
}

#[tokio::test]
async fn bad_token_fails_connect_without_retrying() {
    let server = hub(|_| {}).await;
    let err = Client::builder(url(&server))
        .token("not-a-token")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err}");
}

#[tokio::test]
async fn the_hubs_in_flight_window_is_respected_by_queueing_not_failing() {
    let server = hub(|c| c.max_in_flight = 2).await;
    let c = client(&server, "alice").await;
    // Eight slow calls at once against a window of two: the SDK holds the
    // rest back instead of collecting `too_many_requests`.
    let results =
        futures_util::future::join_all((0..8).map(|_| c.call("debug.sleep", &Sleep { ms: 30 })))
            .await;
    for r in results {
        r.unwrap();
    }
}

#[tokio::test]
async fn close_codes_are_typed_in_the_state() {
    let server = hub(|_| {}).await;
    let a = builder(url(&server), "alice")
        .instance("laptop")
        .connect()
        .await
        .unwrap();
    let _b = builder(url(&server), "alice")
        .instance("laptop")
        .connect()
        .await
        .unwrap();
    // The newer connection replaced the older one: 4009, never reconnect.
    let mut state = a.state();
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        state.wait_for(|s| matches!(s, ConnectionState::Closed { .. })),
    )
    .await
    .unwrap()
    .unwrap()
    .clone();
    assert!(matches!(
        s,
        ConnectionState::Closed {
            code: Some(plexus_client::CloseStatus::Known(
                plexus_protocol::CloseCode::SessionReplaced
            )),
            ..
        }
    ));
    assert_eq!(
        a.call("ping", &()).await.unwrap_err(),
        Error::Closed(Some(plexus_protocol::CloseCode::SessionReplaced))
    );
}

/// `debug.call {0: method, 1: params}` makes the hub send a request for
/// `method` back to the caller and answer with the caller's answer. It
/// exists only once the server helper's work (server-initiated requests,
/// decision P20) is merged; on the hub of this branch it is
/// `method_not_found`. Adjust the params shape to the merged hub if it
/// differs, then drop the `#[ignore]`.
#[derive(Encode)]
#[cbor(map)]
struct DebugCall<'a> {
    #[n(0)]
    method: &'a str,
    #[b(1)]
    params: plexus_protocol::RawRef<'a>,
}

#[tokio::test]
async fn serve_answers_requests_from_the_real_hub() {
    let server = hub(|_| {}).await;
    let c = client(&server, "alice").await;
    c.serve(
        "app.echo",
        |p: plexus_client::RawValue| async move { Ok(p) },
    )
    .await
    .unwrap();
    let params = plexus_client::RawValue::encode(&"from the hub").unwrap();
    let answer = c
        .call(
            "debug.call",
            &DebugCall {
                method: "app.echo",
                params: params.as_raw_ref(),
            },
        )
        .await
        .unwrap();
    assert_eq!(answer.decode::<String>().unwrap(), "from the hub");
    // A method the client does not serve comes back as method_not_found.
    let err = c
        .call(
            "debug.call",
            &DebugCall {
                method: "app.nobody",
                params: params.as_raw_ref(),
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(&ErrorCode::MethodNotFound));
}

#[tokio::test]
async fn requests_over_the_announced_frame_size_or_depth_fail_without_losing_the_connection() {
    let server = hub(|c| {
        c.max_frame_size = 64 * 1024;
        c.max_payload = 32 * 1024;
    })
    .await;
    let c = client(&server, "alice").await;
    let mut state = c.state();
    state.borrow_and_update();
    // Sent as it is, this would make the hub close the connection (1009).
    let err = c.publish("t", &"x".repeat(100 * 1024)).await.unwrap_err();
    assert_eq!(
        err,
        Error::ExceedsLimit {
            limit: "max_frame_size",
            max: 64 * 1024
        }
    );
    // Deeper than the hub's 32 levels: the hub would close with 4005, for good.
    let mut deep = plexus_client::RawValue::encode(&1u8).unwrap();
    for _ in 0..40 {
        deep = plexus_client::RawValue::encode(&[deep]).unwrap();
    }
    let err = c.call("ping", &deep).await.unwrap_err();
    assert_eq!(
        err,
        Error::ExceedsLimit {
            limit: "max_depth",
            max: 32
        }
    );
    assert_eq!(
        c.call("ping", &7u8).await.unwrap().decode::<u8>().unwrap(),
        7
    );
    assert!(!state.has_changed().unwrap(), "the connection was kept");
}
