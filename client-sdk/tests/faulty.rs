//! The SDK against scripted faulty servers over real sockets: dropped
//! connections, stalls, every close code, broken chunk streams, unknown
//! frames, and a thousand clients reconnecting after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plexus_client::{Backoff, Client, ClientBuilder, CloseStatus, ConnectionState, Error};
use plexus_conformance::script::{Peer, ScriptedServer};
use plexus_protocol::{CloseCode, Encoded, Reconnect};

fn builder(url: String) -> ClientBuilder {
    Client::builder(url)
        .token("scripted-token")
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
}

/// Accepts auth, then echoes every request's params as its result.
async fn echo(mut p: Peer) {
    if p.accept_auth().await.is_none() {
        return;
    }
    while let Some(req) = p.recv_request().await {
        p.respond(req.id, &Encoded(req.params.as_bytes())).await;
    }
}

async fn wait_state(c: &Client, want: impl Fn(&ConnectionState) -> bool) -> ConnectionState {
    let mut rx = c.state();
    tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|s| want(s)))
        .await
        .expect("state change in time")
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_dropped_connection_fails_the_call_and_reconnects() {
    let server = ScriptedServer::start(|mut p: Peer| async move {
        if p.index == 0 {
            p.accept_auth().await;
            p.recv_request().await;
            p.drop_connection();
        } else {
            echo(p).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    assert_eq!(
        c.call("ping", &1u8).await.unwrap_err(),
        Error::ConnectionLost
    );
    wait_state(&c, |s| *s == ConnectionState::Connected).await;
    assert_eq!(
        c.call("ping", &2u8).await.unwrap().decode::<u8>().unwrap(),
        2
    );
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_stalled_server_trips_call_timeouts_and_the_liveness_check() {
    let server = ScriptedServer::start(|mut p: Peer| async move {
        if p.index == 0 {
            p.accept_auth().await;
            p.stall(Duration::from_secs(30)).await;
        } else {
            echo(p).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .liveness_timeout(Duration::from_millis(600))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = c
        .call_with_timeout("ping", &1u8, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(err, Error::Timeout);
    assert!(started.elapsed() < Duration::from_secs(2));
    // Silence past the liveness timeout makes the client reconnect.
    wait_state(&c, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    wait_state(&c, |s| *s == ConnectionState::Connected).await;
    assert_eq!(
        c.call("ping", &3u8).await.unwrap().decode::<u8>().unwrap(),
        3
    );
}

#[tokio::test]
async fn every_close_code_gets_its_documented_reaction() {
    for code in CloseCode::ALL.iter().copied() {
        let server = ScriptedServer::start(move |mut p: Peer| async move {
            if p.index == 0 {
                p.accept_auth().await;
                p.close(code.as_u16(), code.name()).await;
            } else {
                echo(p).await;
            }
        })
        .await
        .unwrap();
        let tokens = Arc::new(AtomicUsize::new(0));
        let counter = tokens.clone();
        let c = builder(server.url())
            .token_provider(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, std::convert::Infallible>("t".to_owned()) }
            })
            .connect()
            .await
            .unwrap();
        match code.reconnect() {
            Reconnect::Never => {
                let s = wait_state(&c, |s| matches!(s, ConnectionState::Closed { .. })).await;
                assert_eq!(
                    s,
                    ConnectionState::Closed {
                        code: Some(CloseStatus::Known(code)),
                        reason: s_reason(&s)
                    },
                    "{code}"
                );
                let err = c.call("ping", &()).await.unwrap_err();
                match code {
                    CloseCode::AuthFailed => assert!(
                        matches!(err, Error::Closed(_) | Error::Auth(_)),
                        "{code}: {err}"
                    ),
                    _ => assert_eq!(err, Error::Closed(Some(code)), "{code}"),
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                assert_eq!(server.connections(), 1, "{code}: no reconnect");
            }
            Reconnect::WithBackoff | Reconnect::WithFreshToken => {
                wait_state(&c, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
                wait_state(&c, |s| *s == ConnectionState::Connected).await;
                c.call("ping", &()).await.unwrap();
                assert_eq!(server.connections(), 2, "{code}");
                assert_eq!(
                    tokens.load(Ordering::SeqCst),
                    2,
                    "{code}: a fresh token per connection"
                );
            }
        }
    }
}

fn s_reason(s: &ConnectionState) -> String {
    match s {
        ConnectionState::Closed { reason, .. } => reason.clone(),
        _ => String::new(),
    }
}

#[tokio::test]
async fn the_retry_hint_in_closing_is_honoured() {
    let closed_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let reconnected_at = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let (c1, r1) = (closed_at.clone(), reconnected_at.clone());
    let server = ScriptedServer::start(move |mut p: Peer| {
        let (c1, r1) = (c1.clone(), r1.clone());
        async move {
            if p.index == 0 {
                p.accept_auth().await;
                p.closing(4008, "draining", Some(400)).await;
                *c1.lock().unwrap() = Some(Instant::now());
                p.close(4008, "going_away").await;
            } else {
                *r1.lock().unwrap() = Some(Instant::now());
                echo(p).await;
            }
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    wait_state(&c, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    wait_state(&c, |s| *s == ConnectionState::Connected).await;
    let gap = reconnected_at.lock().unwrap().unwrap() - closed_at.lock().unwrap().unwrap();
    assert!(
        gap >= Duration::from_millis(390),
        "reconnected after {gap:?}, before the 400 ms hint"
    );
}

#[tokio::test]
async fn auth_rejection_is_surfaced_and_not_retried() {
    let server = ScriptedServer::start(|mut p: Peer| async move { p.reject_auth().await })
        .await
        .unwrap();
    let err = builder(server.url()).connect().await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn chunk_streams_end_on_final_and_report_breaks() {
    let server = ScriptedServer::start(|mut p: Peer| async move {
        p.accept_auth().await;
        // 1: a complete stream.
        let r = p.recv_request().await.unwrap();
        for seq in 0..3u64 {
            p.chunk(r.id, seq, seq == 2, &seq).await;
        }
        // 2: a gap in sequence numbers.
        let r = p.recv_request().await.unwrap();
        p.chunk(r.id, 0, false, &0u8).await;
        p.chunk(r.id, 2, false, &2u8).await;
        // 3: chunks stop arriving and the connection drops.
        let r = p.recv_request().await.unwrap();
        p.chunk(r.id, 0, false, &0u8).await;
        p.chunk(r.id, 1, false, &1u8).await;
        p.drop_connection();
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    let items: Vec<_> = c.call_stream("history", &()).await.unwrap().collect().await;
    let values: Vec<u64> = items
        .into_iter()
        .map(|i| i.unwrap().decode().unwrap())
        .collect();
    assert_eq!(values, vec![0, 1, 2]);

    let items: Vec<_> = c.call_stream("history", &()).await.unwrap().collect().await;
    assert_eq!(items.len(), 2);
    assert_eq!(items[1], Err(Error::BrokenStream("chunk sequence gap")));

    let mut s = c.call_stream("history", &()).await.unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().decode::<u8>().unwrap(), 0);
    assert_eq!(s.next().await.unwrap().unwrap().decode::<u8>().unwrap(), 1);
    assert_eq!(s.next().await.unwrap(), Err(Error::ConnectionLost));
    assert!(s.next().await.is_none());
}

#[tokio::test]
async fn unknown_frames_are_ignored() {
    let server = ScriptedServer::start(|mut p: Peer| async move {
        p.accept_auth().await;
        let r = p.recv_request().await.unwrap();
        p.notify("some.future.notification", &(1u8, "x")).await;
        p.chunk(987_654, 0, true, &1u8).await;
        p.respond(123_456, &"nobody asked").await;
        p.send_raw(vec![0xff, 0x00]).await; // undecodable
        p.send_raw(vec![0x85, 0x09, 0x00, 0x00, 0x00, 0x00]).await; // unknown kind
        p.respond(r.id, &"the answer").await;
        echo(p).await;
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    assert_eq!(
        c.call("ping", &())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "the answer"
    );
    assert_eq!(*c.state().borrow(), ConnectionState::Connected);
}

/// A thousand clients lose their hub at once and reconnect to its
/// replacement: full jitter must spread their arrivals over the backoff
/// window instead of a single burst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_clients_reconnect_spread_out() {
    const CLIENTS: usize = 1000;
    let first = ScriptedServer::start(|mut p: Peer| async move {
        p.accept_auth().await;
        p.stall(Duration::from_secs(120)).await;
    })
    .await
    .unwrap();
    let addr = first.addr();
    let mut clients = Vec::with_capacity(CLIENTS);
    for chunk in 0..CLIENTS / 100 {
        let batch = futures_util::future::join_all((0..100).map(|_| {
            Client::builder(first.url())
                .token("t")
                .backoff(Backoff {
                    initial: Duration::from_millis(1000),
                    max: Duration::from_secs(4),
                })
                .liveness_timeout(Duration::from_secs(120))
                .connect()
        }))
        .await;
        for c in batch {
            clients.push(c.unwrap_or_else(|e| panic!("batch {chunk}: {e}")));
        }
    }
    let arrivals = Arc::new(std::sync::Mutex::new(Vec::with_capacity(CLIENTS)));
    let seen = arrivals.clone();
    let lost_at = Instant::now();
    drop(first);
    let second = ScriptedServer::start_on(addr, move |mut p: Peer| {
        let seen = seen.clone();
        async move {
            if p.accept_auth().await.is_some() {
                seen.lock().unwrap().push(Instant::now());
                p.stall(Duration::from_secs(120)).await;
            }
        }
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while arrivals.lock().unwrap().len() < CLIENTS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut times: Vec<f64> = arrivals
        .lock()
        .unwrap()
        .iter()
        .map(|t| (*t - lost_at).as_secs_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    assert_eq!(
        times.len(),
        CLIENTS,
        "every client reconnected ({} did)",
        times.len()
    );
    // Percentile indexes and 100 ms buckets of times under 10 s.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let pct = |p: f64| times[((times.len() - 1) as f64 * p) as usize];
    let (p10, p50, p90) = (pct(0.1), pct(0.5), pct(0.9));
    let busiest = {
        let mut buckets = [0usize; 100];
        for t in &times {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let bucket = (t * 10.0) as usize;
            buckets[bucket.min(99)] += 1;
        }
        buckets.into_iter().max().unwrap()
    };
    println!(
        "reconnect spread of {CLIENTS} clients: p10 {p10:.3}s p50 {p50:.3}s p90 {p90:.3}s max {:.3}s; busiest 100 ms holds {busiest}",
        times[times.len() - 1]
    );
    // Uniform over [0, 1 s] would put p10–p90 0.8 s apart and ~100 in any
    // 100 ms; a storm would put most of them in one bucket.
    assert!(
        p90 - p10 > 0.5,
        "reconnects bunched: p10 {p10:.3}s p90 {p90:.3}s"
    );
    assert!(
        busiest < CLIENTS / 4,
        "{busiest} reconnects in one 100 ms window"
    );
    drop(clients);
    drop(second);
}

#[tokio::test]
async fn a_stream_consumer_that_falls_behind_gets_an_error_and_the_hub_a_cancel() {
    let (cancelled_tx, cancelled_rx) = tokio::sync::oneshot::channel::<u64>();
    let cancelled_tx = Arc::new(std::sync::Mutex::new(Some(cancelled_tx)));
    let server = ScriptedServer::start(move |mut p: Peer| {
        let cancelled_tx = cancelled_tx.clone();
        async move {
            p.accept_auth().await;
            let r = p.recv_request().await.unwrap();
            for seq in 0..100u64 {
                p.chunk(r.id, seq, seq == 99, &seq).await;
            }
            // The client gives up on the stream and says so.
            while let Some(f) = p.recv().await {
                if let plexus_protocol::Frame::Notification(n) = f
                    && n.method == "cancel"
                {
                    let id = n
                        .params
                        .decode::<plexus_protocol::methods::CancelParams>()
                        .unwrap()
                        .id;
                    if let Some(tx) = cancelled_tx.lock().unwrap().take() {
                        let _ = tx.send(id);
                    }
                }
            }
        }
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .stream_buffer(4)
        .connect()
        .await
        .unwrap();
    let mut s = c.call_stream("history", &()).await.unwrap();
    // Do not read until the hub has sent everything.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut items = Vec::new();
    while let Some(item) = s.next().await {
        items.push(item);
    }
    assert_eq!(items.len(), 5, "{items:?}");
    assert!(items[..4].iter().all(Result::is_ok));
    assert!(
        matches!(items[4], Err(Error::BrokenStream(_))),
        "{:?}",
        items[4]
    );
    let id = tokio::time::timeout(Duration::from_secs(5), cancelled_rx)
        .await
        .unwrap()
        .unwrap();
    assert!(id > 0);
}

#[tokio::test]
async fn a_subscription_abandoned_before_its_answer_is_unsubscribed() {
    let (unsub_tx, unsub_rx) = tokio::sync::oneshot::channel::<String>();
    let unsub_tx = Arc::new(std::sync::Mutex::new(Some(unsub_tx)));
    let server = ScriptedServer::start(move |mut p: Peer| {
        let unsub_tx = unsub_tx.clone();
        async move {
            p.accept_auth().await;
            let sub = p.recv_request().await.unwrap();
            assert_eq!(sub.method, "subscribe");
            // Answer only after the client has given up waiting.
            tokio::time::sleep(Duration::from_millis(400)).await;
            p.respond(sub.id, &plexus_protocol::methods::Empty {}).await;
            while let Some(r) = p.recv_request().await {
                if r.method == "unsubscribe" {
                    let topic = r
                        .params
                        .decode::<plexus_protocol::methods::UnsubscribeParams>()
                        .unwrap()
                        .topic
                        .to_owned();
                    if let Some(tx) = unsub_tx.lock().unwrap().take() {
                        let _ = tx.send(topic);
                    }
                }
                p.respond(r.id, &plexus_protocol::methods::Empty {}).await;
            }
        }
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .call_timeout(Duration::from_millis(150))
        .connect()
        .await
        .unwrap();
    assert_eq!(c.subscribe("news").await.unwrap_err(), Error::Timeout);
    let topic = tokio::time::timeout(Duration::from_secs(5), unsub_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        topic, "news",
        "the late subscription was dropped on the hub too"
    );
}

#[tokio::test]
async fn presence_info_is_restored_after_a_reconnect() {
    let (info_tx, info_rx) = tokio::sync::oneshot::channel::<String>();
    let info_tx = Arc::new(std::sync::Mutex::new(Some(info_tx)));
    let server = ScriptedServer::start(move |mut p: Peer| {
        let info_tx = info_tx.clone();
        async move {
            p.accept_auth().await;
            let r = p.recv_request().await.unwrap();
            assert_eq!(r.method, "presence.set");
            p.respond(r.id, &plexus_protocol::methods::Empty {}).await;
            if p.index == 0 {
                p.drop_connection();
                return;
            }
            let info = r
                .params
                .decode::<plexus_protocol::methods::PresenceSetParams>()
                .unwrap()
                .info
                .decode::<String>()
                .unwrap();
            if let Some(tx) = info_tx.lock().unwrap().take() {
                let _ = tx.send(info);
            }
            echo(p).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url()).connect().await.unwrap();
    c.presence_set(&"at my desk").await.unwrap();
    let info = tokio::time::timeout(Duration::from_secs(5), info_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(info, "at my desk");
}

#[tokio::test]
async fn wss_urls_use_tls_and_fail_cleanly_against_a_plain_server() {
    let server = ScriptedServer::start(echo).await.unwrap();
    let url = server.url().replace("ws://", "wss://");
    let err = builder(url).connect().await.unwrap_err();
    assert!(
        matches!(err, Error::Connect { .. }),
        "a TLS handshake was attempted and failed: {err}"
    );
}

#[tokio::test]
async fn calls_wait_offline_up_to_the_queue_bound_then_fail_typed() {
    // Connection 0 drops at once; later attempts never answer `auth`, so
    // the client stays reconnecting.
    let server = ScriptedServer::start(|mut p: Peer| async move {
        if p.index == 0 {
            p.accept_auth().await;
            p.drop_connection();
        } else {
            p.stall(Duration::from_secs(30)).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .offline_queue(2)
        .call_timeout(Duration::from_millis(300))
        .connect()
        .await
        .unwrap();
    wait_state(&c, |s| matches!(s, ConnectionState::Reconnecting { .. })).await;
    // Two calls enter the command channel in order (one poll each)...
    let mut first = Box::pin(c.call("ping", &1u8));
    let mut second = Box::pin(c.call("ping", &2u8));
    assert!(futures_util::FutureExt::now_or_never(first.as_mut()).is_none());
    assert!(futures_util::FutureExt::now_or_never(second.as_mut()).is_none());
    // ...so a third one, behind them, finds the queue full and fails at once.
    let started = Instant::now();
    assert_eq!(
        c.call("ping", &3u8).await.unwrap_err(),
        Error::QueueFull { limit: 2 }
    );
    assert!(started.elapsed() < Duration::from_millis(300));
    // The queued ones wait within their timeout, then time out.
    assert_eq!(first.await.unwrap_err(), Error::Timeout);
    assert_eq!(second.await.unwrap_err(), Error::Timeout);
}

/// Params whose encoding fails.
struct Unencodable;

impl<C> minicbor::Encode<C> for Unencodable {
    fn encode<W: minicbor::encode::Write>(
        &self,
        _: &mut minicbor::Encoder<W>,
        _: &mut C,
    ) -> Result<(), minicbor::encode::Error<W::Error>> {
        Err(minicbor::encode::Error::message("cannot encode this"))
    }
}

#[tokio::test]
async fn an_encode_failure_fails_the_call_at_once() {
    let server = ScriptedServer::start(echo).await.unwrap();
    let c = builder(server.url())
        .call_timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let err = c.call("ping", &Unencodable).await.unwrap_err();
    assert!(matches!(err, Error::Codec { .. }), "{err}");
    assert!(
        std::error::Error::source(&err).is_some(),
        "the cause is kept"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "not held until the timeout"
    );
    let err = c.publish("t", &Unencodable).await.unwrap_err();
    assert!(matches!(err, Error::Codec { .. }), "{err}");
    assert_eq!(
        c.call("ping", &1u8).await.unwrap().decode::<u8>().unwrap(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_on_while_writes_wait_for_the_socket() {
    // The hub sends events without reading anything, while the client
    // pushes more than the socket buffers hold. A client that stopped
    // reading while a write waited would deadlock with it.
    const EVENTS: u32 = 200;
    const PAYLOAD: usize = 64 * 1024;
    const CALLS: usize = 96;
    let server = ScriptedServer::start(|mut p: Peer| async move {
        let Some(auth) = p.recv_request().await else {
            return;
        };
        let mut limits = plexus_protocol::methods::ServerLimits::DEFAULTS;
        limits.max_frame_size = 2 << 20;
        limits.max_in_flight_bytes = 256 << 20;
        p.respond(
            auth.id,
            &plexus_protocol::methods::AuthResult::new("s0", "user", None, limits),
        )
        .await;
        let sub = p.recv_request().await.unwrap();
        assert_eq!(sub.method, "subscribe");
        p.respond(sub.id, &plexus_protocol::methods::Empty {}).await;
        // Give the client's uploads time to fill the socket, then send
        // without reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let data = plexus_protocol::RawValue::encode(&"e".repeat(PAYLOAD)).unwrap();
        for i in 0..EVENTS {
            let topic = format!("t.{i}");
            p.notify(
                "event",
                &plexus_protocol::methods::EventParams::new(&topic, data.as_raw_ref(), None),
            )
            .await;
        }
        // Now read (and answer) what the client sent.
        while let Some(r) = p.recv_request().await {
            p.respond(r.id, &plexus_protocol::methods::Empty {}).await;
        }
    })
    .await
    .unwrap();
    let c = builder(server.url())
        .call_timeout(Duration::from_secs(60))
        .liveness_timeout(Duration::from_secs(60))
        .connect()
        .await
        .unwrap();
    let mut sub = c.subscribe("t.*").await.unwrap();
    // Within the scripted server's 1 MiB decode limit.
    let big = "u".repeat(512 << 10);
    let uploads: Vec<_> = (0..CALLS)
        .map(|_| {
            let c = c.clone();
            let big = big.clone();
            tokio::spawn(async move { c.call("upload", &big).await })
        })
        .collect();
    let mut seen = 0;
    while seen < EVENTS {
        match tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .expect("events keep arriving while the uploads wait")
            .unwrap()
        {
            plexus_client::Event::Message(_) => seen += 1,
            other => panic!("{other:?}"),
        }
    }
    for u in uploads {
        u.await.unwrap().unwrap();
    }
}
