//! Routed RPC through a real hub (issue 12), SDK on both sides, over real
//! sockets: round trips with the attested caller, round-robin sharing,
//! progressive results paced by a slow caller, cancellation by dropping
//! the call, timeouts, a callee that leaves mid-call, registrations
//! restored after a reconnect and withdrawn on drop.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use jsonwebtoken::Algorithm;
use plexus_client::protocol::methods::rpc::Policy;
use plexus_client::protocol::{ErrorCode, WireError};
use plexus_client::{
    Backoff, CallOptions, Client, ClientBuilder, ConnectionState, Error, Invocation,
    RegisterOptions,
};
use plexus_testkit::{SECRET, TestHub, now, sign};
use serde_json::json;
use tokio::sync::{mpsc, watch};

/// How long a test waits for an event before it fails.
const WAIT: Duration = Duration::from_secs(10);

fn rpc_token(sub: &str, register: &[&str], call: &[&str]) -> String {
    let c = json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "email": format!("{sub}@example.com"),
        "plexus": { "rpc_register": register, "rpc_call": call },
    });
    sign(&c, Algorithm::HS256, SECRET)
}

fn builder(url: String, sub: &str) -> ClientBuilder {
    Client::builder(url)
        .token(rpc_token(sub, &["svc.>"], &["svc.>"]))
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(100),
        })
}

async fn client(h: &TestHub, sub: &str) -> Client {
    builder(h.url(), sub).connect().await.unwrap()
}

fn code(r: Result<plexus_client::RawValue, Error>) -> ErrorCode {
    r.expect_err("an error")
        .code()
        .cloned()
        .expect("a wire code")
}

/// Reports on a channel when it is dropped: a handler holding one shows
/// that the SDK dropped its future.
struct DropSignal(mpsc::UnboundedSender<&'static str>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send("dropped");
    }
}

/// A handler that reports it started, then never answers until dropped.
fn hang(
    events: mpsc::UnboundedSender<&'static str>,
) -> impl Fn(Invocation) -> futures_util::future::BoxFuture<'static, Result<u8, WireError>>
+ Send
+ Sync
+ 'static {
    use futures_util::FutureExt;
    move |_inv| {
        let events = events.clone();
        async move {
            let _guard = DropSignal(events.clone());
            let _ = events.send("started");
            std::future::pending::<()>().await;
            Ok(0u8)
        }
        .boxed()
    }
}

async fn next_event(rx: &mut mpsc::UnboundedReceiver<&'static str>) -> &'static str {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("an event in time")
        .expect("the channel is open")
}

#[tokio::test]
async fn a_round_trip_carries_params_and_the_attested_caller_and_relays_errors() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let _reg = svc
        .register_with(
            "svc.echo",
            RegisterOptions::new().disclose_caller(["email"]),
            |inv: Invocation| async move {
                let text: String = inv
                    .decode()
                    .map_err(|_| WireError::new(ErrorCode::InvalidParams, "a text, please"))?;
                if text == "fail" {
                    return Err(WireError::new(
                        ErrorCode::from_name("app_error"),
                        "as asked",
                    ));
                }
                let email = inv
                    .caller
                    .claims
                    .as_ref()
                    .and_then(|c| c.get("email"))
                    .and_then(|v| v.decode::<String>().ok())
                    .unwrap_or_default();
                assert!(
                    inv.remaining() > Duration::from_secs(1),
                    "{:?}",
                    inv.remaining()
                );
                Ok(format!("{text} from {} <{email}>", inv.caller.sub))
            },
        )
        .await
        .unwrap();
    let c = client(&h, "carol").await;
    let r = c.rpc_call("svc.echo", &"hello").await.unwrap();
    assert_eq!(
        r.decode::<String>().unwrap(),
        "hello from carol <carol@example.com>"
    );
    // The callee's error object reaches the caller unchanged.
    let e = c.rpc_call("svc.echo", &"fail").await.unwrap_err();
    assert_eq!(
        e,
        Error::Remote(WireError::new(
            ErrorCode::from_name("app_error"),
            "as asked"
        ))
    );
    assert_eq!(
        code(c.rpc_call("svc.echo", &7u8).await),
        ErrorCode::InvalidParams
    );
    // Nobody registered: answered at once.
    let t = Instant::now();
    assert_eq!(code(c.rpc_call("svc.none", &()).await), ErrorCode::NoCallee);
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn round_robin_shares_calls_between_two_callees() {
    let h = TestHub::start(|_| {}).await;
    let opts = || RegisterOptions::new().policy(Policy::RoundRobin);
    let a = client(&h, "svc-a").await;
    let b = client(&h, "svc-b").await;
    let _ra = a
        .register_with("svc.work", opts(), |_inv| async { Ok::<_, WireError>("a") })
        .await
        .unwrap();
    let _rb = b
        .register_with("svc.work", opts(), |_inv| async { Ok::<_, WireError>("b") })
        .await
        .unwrap();
    // Another policy for the same procedure is refused.
    let e = b
        .register_with(
            "svc.work",
            RegisterOptions::new().policy(Policy::Random),
            |_inv| async { Ok::<_, WireError>("x") },
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(&ErrorCode::Conflict));
    let c = client(&h, "carol").await;
    let mut got = Vec::new();
    for _ in 0..6 {
        let r = c.rpc_call("svc.work", &()).await.unwrap();
        got.push(r.decode::<String>().unwrap());
    }
    // In turn, whichever came first.
    for pair in got.windows(2) {
        assert_ne!(pair[0], pair[1], "{got:?}");
    }
    assert_eq!(got.iter().filter(|s| *s == "a").count(), 3);
}

#[tokio::test]
async fn progressive_results_are_paced_by_a_slow_caller() {
    const TOTAL: u64 = 160;
    const CHUNK: usize = 64 * 1024;
    let h = TestHub::start(|c| {
        c.max_frame_size = 256 * 1024;
        c.max_payload = 128 * 1024;
        c.max_outbound_bytes = 512 * 1024;
        c.tcp_send_buffer = 16 * 1024;
        c.rpc.chunk_window = 4;
    })
    .await;
    let svc = client(&h, "svc-a").await;
    let produced = Arc::new(AtomicU64::new(0));
    let (tick, mut ticks) = watch::channel(0u64);
    let p = produced.clone();
    let _reg = svc
        .register_stream("svc.stream", RegisterOptions::new(), move |_inv| {
            let p = p.clone();
            let tick = tick.clone();
            futures_util::stream::iter(0..=TOTAL).map(move |i| {
                let n = p.fetch_add(1, Ordering::SeqCst) + 1;
                tick.send_replace(n);
                if i == TOTAL {
                    Ok::<_, WireError>((i, minicbor::bytes::ByteVec::from(Vec::new())))
                } else {
                    Ok((i, minicbor::bytes::ByteVec::from(vec![7u8; CHUNK])))
                }
            })
        })
        .await
        .unwrap();
    let c = builder(h.url(), "carol")
        .stream_buffer(2)
        .connect()
        .await
        .unwrap();
    let mut stream = c
        .rpc_call_stream(
            "svc.stream",
            &(),
            &CallOptions::new().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // The caller reads nothing: the callee runs out of credit and stops.
    let stalled = loop {
        match tokio::time::timeout(Duration::from_millis(500), ticks.changed()).await {
            Ok(r) => r.unwrap(),
            Err(_) => break produced.load(Ordering::SeqCst),
        }
        assert!(
            produced.load(Ordering::SeqCst) <= TOTAL,
            "the callee was never throttled"
        );
    };
    eprintln!("the callee stalled after {stalled} of {TOTAL} chunks");
    assert!(stalled < TOTAL, "the callee ran to the end ({stalled})");
    // Now it reads: every chunk arrives, in order, none lost.
    let mut next = 0u64;
    while let Some(item) = tokio::time::timeout(WAIT, stream.next()).await.unwrap() {
        let (i, data): (u64, minicbor::bytes::ByteVec) = item.unwrap().decode().unwrap();
        assert_eq!(i, next);
        assert_eq!(data.len(), if i == TOTAL { 0 } else { CHUNK });
        next += 1;
    }
    assert_eq!(next, TOTAL + 1);
    assert_eq!(produced.load(Ordering::SeqCst), TOTAL + 1);
    // The connection serves other calls again.
    c.call("ping", &1u8).await.unwrap();
}

#[tokio::test]
async fn dropping_the_call_future_cancels_the_handler() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let _reg = svc.register("svc.slow", hang(tx)).await.unwrap();
    let c = client(&h, "carol").await;
    {
        let call = c.rpc_call("svc.slow", &());
        tokio::pin!(call);
        tokio::select! {
            _ = &mut call => panic!("the handler never answers"),
            e = next_event(&mut events) => assert_eq!(e, "started"),
        }
        // The call future is dropped here.
    }
    assert_eq!(next_event(&mut events).await, "dropped");
    // A stream dropped before its end cancels too.
    let stream = c
        .rpc_call_stream("svc.slow", &(), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(next_event(&mut events).await, "started");
    drop(stream);
    assert_eq!(next_event(&mut events).await, "dropped");
}

#[tokio::test]
async fn the_deadline_times_the_call_out_and_interrupts_the_handler() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let _reg = svc.register("svc.slow", hang(tx)).await.unwrap();
    let c = client(&h, "carol").await;
    let t = Instant::now();
    let r = c
        .rpc_call_with(
            "svc.slow",
            &(),
            &CallOptions::new().timeout(Duration::from_millis(200)),
        )
        .await;
    assert_eq!(code(r), ErrorCode::Timeout);
    assert!(t.elapsed() >= Duration::from_millis(200));
    assert_eq!(next_event(&mut events).await, "started");
    assert_eq!(next_event(&mut events).await, "dropped");
}

#[tokio::test]
async fn a_callee_that_leaves_mid_call_fails_the_call_with_callee_lost_at_once() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let reg = svc.register("svc.x", hang(tx)).await.unwrap();
    let c = client(&h, "carol").await;
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.rpc_call("svc.x", &()).await })
    };
    assert_eq!(next_event(&mut events).await, "started");
    let t = Instant::now();
    drop(reg);
    svc.close().await;
    let r = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert_eq!(code(r), ErrorCode::CalleeLost);
    let took = t.elapsed();
    eprintln!("callee_lost {took:?} after the callee began to close");
    assert!(took < Duration::from_secs(1), "callee_lost after {took:?}");
    assert_eq!(code(c.rpc_call("svc.x", &()).await), ErrorCode::NoCallee);
}

#[tokio::test]
async fn dropping_the_registration_unregisters_it() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let reg = svc
        .register("svc.once", |_inv| async { Ok::<_, WireError>(1u8) })
        .await
        .unwrap();
    assert!(reg.id().is_some());
    let c = client(&h, "carol").await;
    assert_eq!(
        c.rpc_call("svc.once", &())
            .await
            .unwrap()
            .decode::<u8>()
            .unwrap(),
        1
    );
    drop(reg);
    // A round trip on the callee's connection: its unregister went first.
    svc.call("ping", &0u8).await.unwrap();
    assert_eq!(code(c.rpc_call("svc.once", &()).await), ErrorCode::NoCallee);
    // The procedure is free for a new registration, under another policy.
    let _again = svc
        .register_with(
            "svc.once",
            RegisterOptions::new().policy(Policy::LeastPending),
            |_inv| async { Ok::<_, WireError>(2u8) },
        )
        .await
        .unwrap();
    assert_eq!(
        c.rpc_call("svc.once", &())
            .await
            .unwrap()
            .decode::<u8>()
            .unwrap(),
        2
    );
}

/// A TCP forwarder in front of the hub whose connections can be cut (both
/// sockets dropped), as a network failure would.
struct CutProxy {
    addr: SocketAddr,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    async fn start(upstream: SocketAddr) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let conns = Arc::new(Mutex::new(Vec::new()));
        let held = conns.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let t = tokio::spawn(async move {
                    let Ok(mut hub) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut hub).await;
                });
                held.lock().unwrap().push(t.abort_handle());
            }
        });
        CutProxy { addr, conns, task }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// Drops every connection open now.
    fn cut(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

#[tokio::test]
async fn registrations_are_restored_after_a_reconnect() {
    let h = TestHub::start(|_| {}).await;
    let proxy = CutProxy::start(h.addr()).await;
    let svc = builder(proxy.url(), "svc-a").connect().await.unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let s = served.clone();
    let reg = svc
        .register_with(
            "svc.kept",
            RegisterOptions::new().max_concurrency(2),
            move |_inv| {
                let s = s.clone();
                async move { Ok::<_, WireError>(s.fetch_add(1, Ordering::SeqCst) + 1) }
            },
        )
        .await
        .unwrap();
    let first = reg.id().unwrap();
    let c = client(&h, "carol").await;
    assert_eq!(
        c.rpc_call("svc.kept", &())
            .await
            .unwrap()
            .decode::<u64>()
            .unwrap(),
        1
    );
    let mut state = svc.state();
    let mut status = reg.status();
    proxy.cut();
    tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, ConnectionState::Reconnecting { .. })),
    )
    .await
    .unwrap()
    .unwrap();
    // Registered again on the new connection, with a new id (the hub may
    // first refuse it with `conflict` until it sees the old one end: the
    // SDK retries).
    let id = tokio::time::timeout(WAIT, status.wait_for(|id| id.is_some_and(|i| i != first)))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_ne!(id, first);
    assert_eq!(
        c.rpc_call("svc.kept", &())
            .await
            .unwrap()
            .decode::<u64>()
            .unwrap(),
        2
    );
}

#[tokio::test]
async fn a_caller_that_leaves_interrupts_the_handler() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let (tx, mut events) = mpsc::unbounded_channel();
    let _reg = svc.register("svc.slow", hang(tx)).await.unwrap();
    let c = client(&h, "carol").await;
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.rpc_call("svc.slow", &()).await })
    };
    assert_eq!(next_event(&mut events).await, "started");
    c.close().await;
    assert_eq!(next_event(&mut events).await, "dropped");
    let r = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    assert_eq!(r.unwrap_err(), Error::ConnectionLost);
}

#[tokio::test]
async fn an_affinity_key_always_reaches_the_same_callee() {
    let h = TestHub::start(|_| {}).await;
    let opts = || RegisterOptions::new().policy(Policy::Affinity);
    let a = client(&h, "svc-a").await;
    let b = client(&h, "svc-b").await;
    let _ra = a
        .register_with("svc.aff", opts(), |_inv| async { Ok::<_, WireError>("a") })
        .await
        .unwrap();
    let _rb = b
        .register_with("svc.aff", opts(), |_inv| async { Ok::<_, WireError>("b") })
        .await
        .unwrap();
    let c = client(&h, "carol").await;
    for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
        let with_key = CallOptions::new().key(k);
        let first = c.rpc_call_with("svc.aff", &(), &with_key).await.unwrap();
        for _ in 0..3 {
            let again = c.rpc_call_with("svc.aff", &(), &with_key).await.unwrap();
            assert_eq!(again, first, "key {k} moved");
        }
    }
}

#[tokio::test]
async fn a_callee_whose_connection_breaks_mid_call_fails_the_call_with_callee_lost() {
    let h = TestHub::start(|_| {}).await;
    let proxy = CutProxy::start(h.addr()).await;
    let svc = builder(proxy.url(), "svc-a").connect().await.unwrap();
    let (tx, mut events) = mpsc::unbounded_channel();
    let _reg = svc.register("svc.x", hang(tx)).await.unwrap();
    let c = client(&h, "carol").await;
    let call = {
        let c = c.clone();
        tokio::spawn(async move { c.rpc_call("svc.x", &()).await })
    };
    assert_eq!(next_event(&mut events).await, "started");
    let t = Instant::now();
    // A crash as the network sees it: both sockets gone, no close frame.
    proxy.cut();
    let r = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    let took = t.elapsed();
    assert_eq!(code(r), ErrorCode::CalleeLost);
    eprintln!("callee_lost {took:?} after the cut");
    assert!(took < Duration::from_secs(1), "callee_lost after {took:?}");
    // The callee's handler was dropped with its connection.
    assert_eq!(next_event(&mut events).await, "dropped");
}

#[tokio::test]
async fn a_stream_that_fails_midway_and_a_panicking_handler_answer_errors() {
    let h = TestHub::start(|_| {}).await;
    let svc = client(&h, "svc-a").await;
    let _s = svc
        .register_stream("svc.partial", RegisterOptions::new(), |_inv| {
            futures_util::stream::iter(vec![
                Ok(1u8),
                Ok(2u8),
                Err(WireError::new(ErrorCode::from_name("disk_full"), "no room")),
            ])
        })
        .await
        .unwrap();
    let _p = svc
        .register("svc.panics", |_inv| async {
            if true {
                panic!("handler bug");
            }
            Ok::<_, WireError>(0u8)
        })
        .await
        .unwrap();
    let c = client(&h, "carol").await;
    let mut s = c
        .rpc_call_stream("svc.partial", &(), &CallOptions::new())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        got.push(item.map(|v| v.decode::<u8>().unwrap()));
    }
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[0], Ok(1));
    assert_eq!(got[1], Ok(2));
    assert_eq!(
        got[2].as_ref().unwrap_err().code(),
        Some(&ErrorCode::from_name("disk_full"))
    );
    assert_eq!(
        code(c.rpc_call("svc.panics", &()).await),
        ErrorCode::Internal
    );
    // The callee still serves.
    let mut s = c
        .rpc_call_stream("svc.partial", &(), &CallOptions::new())
        .await
        .unwrap();
    assert_eq!(s.next().await.unwrap().unwrap().decode::<u8>().unwrap(), 1);
}
