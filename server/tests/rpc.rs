//! Routed RPC through the running hub (issue 12), over real sockets: raw
//! callees answer the hub's `rpc.invoke` requests by hand.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use jsonwebtoken::Algorithm;
use plexus_protocol::frame::{encode_chunk, encode_error, encode_result};
use plexus_protocol::methods::CancelParams;
use plexus_protocol::methods::rpc::{
    CallParams, CreditParams, InvokeParams, ListParams, ListResult, Policy, RegisterParams,
    RegisterResult, UnregisterParams,
};
use plexus_protocol::{ErrorCode, Frame, RawValue, WireError};
use plexus_testkit::*;
use serde_json::json;

fn rpc_token(sub: &str, register: &[&str], call: &[&str], admin: bool) -> String {
    let c = json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "email": format!("{sub}@example.com"),
        "plexus": { "rpc_register": register, "rpc_call": call, "rpc_admin": admin },
    });
    sign(&c, Algorithm::HS256, SECRET)
}

async fn hub() -> TestHub {
    TestHub::start(|_| {}).await
}

async fn callee(h: &TestHub, name: &str) -> Client {
    Client::authed(h.addr(), &rpc_token(name, &["svc.>"], &[], false))
        .await
        .0
}

async fn caller(h: &TestHub) -> Client {
    Client::authed(h.addr(), &rpc_token("carol", &[], &["svc.>"], true))
        .await
        .0
}

async fn register(c: &mut Client, p: RegisterParams<'_>) -> Result<u64, WireError> {
    c.call("rpc.register", &p)
        .await
        .map(|r| r.decode::<RegisterResult>().unwrap().registration)
}

/// An invocation as a callee received it.
#[derive(Debug)]
struct Inv {
    id: u64,
    call: u64,
    registration: u64,
    params: RawValue,
    deadline_ms: u64,
    sub: String,
    claims: Option<std::collections::BTreeMap<String, RawValue>>,
    window: u64,
}

/// The next `rpc.invoke` request the callee receives (other frames kept).
async fn invocation(c: &mut Client) -> Inv {
    loop {
        let pos = c
            .pending()
            .iter()
            .position(|f| matches!(f, Frame::Request(r) if r.method == "rpc.invoke"));
        let f = match pos {
            Some(p) => c.pending().remove(p).unwrap(),
            None => c.next_frame().await.expect("connection open"),
        };
        match f {
            Frame::Request(r) if r.method == "rpc.invoke" => {
                let p: InvokeParams = r.params.decode().unwrap();
                return Inv {
                    id: r.id,
                    call: p.call,
                    registration: p.registration,
                    params: RawValue::encode(&p.params).unwrap(),
                    deadline_ms: p.deadline_ms,
                    sub: p.caller.sub.clone(),
                    claims: p.caller.claims.clone(),
                    window: p.window,
                };
            }
            other => c.pending().push_back(other),
        }
    }
}

async fn answer(c: &mut Client, id: u64, v: &RawValue) {
    c.send_bytes(encode_result(id, v).unwrap()).await;
}

async fn chunk(c: &mut Client, id: u64, seq: u64, fin: bool, v: &RawValue) {
    c.send_bytes(encode_chunk(id, seq, fin, v).unwrap()).await;
}

/// The next `cancel` the hub sends this callee: the id it withdraws.
async fn cancelled(c: &mut Client) -> u64 {
    let n = c.notification("cancel").await;
    n.params.decode::<CancelParams>().unwrap().id
}

fn code(r: Result<RawValue, WireError>) -> ErrorCode {
    r.expect_err("an error").code
}

#[tokio::test]
async fn a_round_trip_carries_params_deadline_and_the_attested_caller() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    let reg = register(
        &mut svc,
        RegisterParams::new("svc.echo").with_disclose_caller(vec!["email", "absent"]),
    )
    .await
    .unwrap();
    let mut c = caller(&h).await;
    let args = raw(&"hello");
    let id = c
        .request(
            "rpc.call",
            &CallParams::new("svc.echo")
                .with_params(args.as_raw_ref())
                .with_timeout_ms(5_000),
        )
        .await;
    let inv = invocation(&mut svc).await;
    assert_eq!(inv.registration, reg);
    assert_eq!(inv.params.decode::<&str>().unwrap(), "hello");
    assert!(
        inv.deadline_ms <= 5_000 && inv.deadline_ms > 3_000,
        "{}",
        inv.deadline_ms
    );
    assert_eq!(inv.sub, "carol", "the hub attests the caller");
    let claims = inv.claims.unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(
        claims["email"].decode::<&str>().unwrap(),
        "carol@example.com"
    );
    answer(&mut svc, inv.id, &raw(&"hello back")).await;
    let r = c.response(id).await.unwrap();
    assert_eq!(r.decode::<&str>().unwrap(), "hello back");
    // An error object passes through unchanged.
    let id = c.request("rpc.call", &CallParams::new("svc.echo")).await;
    let inv = invocation(&mut svc).await;
    assert_eq!(inv.params.as_bytes(), &[0xf6], "params default to null");
    let e = WireError::new(ErrorCode::from_name("app_error"), "nope");
    svc.send_bytes(encode_error(inv.id, &e)).await;
    assert_eq!(c.response(id).await.unwrap_err(), e);
}

#[tokio::test]
async fn nobody_registered_and_missing_capabilities_are_answered_at_once() {
    let h = hub().await;
    let mut c = caller(&h).await;
    let t = Instant::now();
    assert_eq!(
        code(c.call("rpc.call", &CallParams::new("svc.none")).await),
        ErrorCode::NoCallee
    );
    assert!(t.elapsed() < Duration::from_secs(1));
    // The caller may not register; a callee may not call.
    assert_eq!(
        register(&mut c, RegisterParams::new("svc.x"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.x"))
        .await
        .unwrap();
    assert_eq!(
        code(svc.call("rpc.call", &CallParams::new("svc.x")).await),
        ErrorCode::Forbidden
    );
    assert_eq!(
        register(&mut svc, RegisterParams::new("other.x"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::Forbidden
    );
    assert_eq!(
        code(svc.call("rpc.list", &ListParams::default()).await),
        ErrorCode::Forbidden
    );
    let mut narrow = Client::authed(h.addr(), &rpc_token("dan", &[], &["svc.y"], false))
        .await
        .0;
    assert_eq!(
        code(narrow.call("rpc.call", &CallParams::new("svc.x")).await),
        ErrorCode::Forbidden
    );
}

#[tokio::test]
async fn round_robin_spreads_concurrent_calls_over_callees() {
    let h = hub().await;
    let mut a = callee(&h, "svc-a").await;
    let mut b = callee(&h, "svc-b").await;
    let p = || RegisterParams::new("svc.work").with_policy(Policy::RoundRobin);
    let ra = register(&mut a, p()).await.unwrap();
    let rb = register(&mut b, p()).await.unwrap();
    let mut c = caller(&h).await;
    let mut ids = Vec::new();
    for i in 0..4u8 {
        let args = raw(&i);
        ids.push(
            c.request(
                "rpc.call",
                &CallParams::new("svc.work").with_params(args.as_raw_ref()),
            )
            .await,
        );
    }
    // Both callees hold two calls at once.
    let (a1, a2) = (invocation(&mut a).await, invocation(&mut a).await);
    let (b1, b2) = (invocation(&mut b).await, invocation(&mut b).await);
    assert!([&a1, &a2].iter().all(|i| i.registration == ra));
    assert!([&b1, &b2].iter().all(|i| i.registration == rb));
    for (on_a, inv) in [(false, &b2), (true, &a1), (false, &b1), (true, &a2)] {
        let v = inv.params.decode::<u8>().unwrap();
        let svc = if on_a { &mut a } else { &mut b };
        answer(svc, inv.id, &raw(&(u32::from(v) * 10))).await;
    }
    for (i, id) in ids.into_iter().enumerate() {
        let r = c.response(id).await.unwrap();
        assert_eq!(r.decode::<u32>().unwrap(), u32::try_from(i).unwrap() * 10);
    }
}

#[tokio::test]
async fn shared_policies_distribute_as_named() {
    let h = hub().await;
    // first: everything to the earliest callee while it has room.
    let mut a = callee(&h, "svc-a").await;
    let mut b = callee(&h, "svc-b").await;
    let p = || RegisterParams::new("svc.first").with_policy(Policy::First);
    let ra = register(&mut a, p()).await.unwrap();
    register(&mut b, p()).await.unwrap();
    let mut c = caller(&h).await;
    for _ in 0..3 {
        let id = c.request("rpc.call", &CallParams::new("svc.first")).await;
        let inv = invocation(&mut a).await;
        assert_eq!(inv.registration, ra);
        answer(&mut a, inv.id, &raw(&1u8)).await;
        c.response(id).await.unwrap();
    }
    // affinity: one key always reaches the same callee.
    let p = || RegisterParams::new("svc.aff").with_policy(Policy::Affinity);
    register(&mut a, p()).await.unwrap();
    register(&mut b, p()).await.unwrap();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for round in 0..2 {
        for k in ["k1", "k2", "k3", "k4", "k5", "k6"] {
            let id = c
                .request("rpc.call", &CallParams::new("svc.aff").with_key(k))
                .await;
            // Whichever callee got it answers.
            let inv = tokio::select! {
                i = invocation(&mut a) => { answer(&mut a, i.id, &raw(&0u8)).await; i }
                i = invocation(&mut b) => { answer(&mut b, i.id, &raw(&0u8)).await; i }
            };
            c.response(id).await.unwrap();
            if round == 0 {
                seen.insert(k.to_owned(), inv.registration);
            } else {
                assert_eq!(seen[k], inv.registration, "key {k} moved");
            }
        }
    }
}

#[tokio::test]
async fn progressive_results_are_paced_by_a_slow_caller() {
    const CHUNK: usize = 64 * 1024;
    const TOTAL: u64 = 160;
    let h = TestHub::start(|c| {
        c.max_frame_size = 256 * 1024;
        c.max_payload = 128 * 1024;
        c.max_outbound_bytes = 512 * 1024;
        c.tcp_send_buffer = 16 * 1024;
        c.rpc.chunk_window = 4;
    })
    .await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.stream"))
        .await
        .unwrap();
    let mut c = Client::connect_stalled(h.addr()).await;
    c.auth(&rpc_token("carol", &[], &["svc.>"], false))
        .await
        .unwrap();
    let id = c.request("rpc.call", &CallParams::new("svc.stream")).await;
    let inv = invocation(&mut svc).await;
    assert_eq!(inv.window, 4);
    let data = raw(&minicbor::bytes::ByteVec::from(vec![7u8; CHUNK]));
    // The callee sends only within its credit; the caller reads nothing.
    let mut credit = inv.window;
    let mut sent = 0u64;
    let throttled = loop {
        if sent == TOTAL {
            break false;
        }
        if credit == 0 {
            // Wait for credit; none comes once the caller's side is full.
            let got =
                tokio::time::timeout(Duration::from_millis(500), svc.notification("rpc.credit"))
                    .await;
            match got {
                Ok(n) => {
                    let p: CreditParams = n.params.decode().unwrap();
                    assert_eq!(p.call, inv.call);
                    credit += p.chunks;
                }
                Err(_) => break true,
            }
            continue;
        }
        chunk(&mut svc, inv.id, sent, false, &data).await;
        sent += 1;
        credit -= 1;
    };
    assert!(
        throttled,
        "the callee was never throttled ({sent} chunks sent)"
    );
    // What the hub can hold for the call: the caller's outbound budget
    // (8 chunks), the call's window (4), and a few in socket buffers.
    assert!(
        sent <= 24,
        "{sent} chunks went out before the callee was throttled"
    );
    // The caller reads: credit flows again and every chunk arrives in order.
    let reader = tokio::spawn(async move {
        let mut got = 0u64;
        loop {
            match c.next_frame().await.expect("open") {
                Frame::Chunk(ch) if ch.id == id && !ch.fin => {
                    assert_eq!(ch.seq, got);
                    assert_eq!(ch.data.as_bytes().len(), data_len());
                    got += 1;
                }
                Frame::Chunk(ch) if ch.id == id => {
                    assert_eq!(ch.seq, got);
                    return (got, ch.data.decode::<&str>().unwrap().to_owned());
                }
                _ => {}
            }
        }
    });
    while sent < TOTAL {
        if credit == 0 {
            let n = svc.notification("rpc.credit").await;
            credit += n.params.decode::<CreditParams>().unwrap().chunks;
            continue;
        }
        chunk(&mut svc, inv.id, sent, false, &data).await;
        sent += 1;
        credit -= 1;
    }
    chunk(&mut svc, inv.id, sent, true, &raw(&"done")).await;
    let (got, fin) = reader.await.unwrap();
    assert_eq!((got, fin.as_str()), (TOTAL, "done"));
}

fn data_len() -> usize {
    raw(&minicbor::bytes::ByteVec::from(vec![7u8; 64 * 1024]))
        .as_bytes()
        .len()
}

#[tokio::test]
async fn a_cancel_is_forwarded_to_the_callee() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.slow"))
        .await
        .unwrap();
    let mut c = caller(&h).await;
    let id = c.request("rpc.call", &CallParams::new("svc.slow")).await;
    let inv = invocation(&mut svc).await;
    c.notify("cancel", &CancelParams { id }).await;
    assert_eq!(code(c.response(id).await), ErrorCode::Cancelled);
    assert_eq!(cancelled(&mut svc).await, inv.id);
    // A late answer is ignored; the slot is free again.
    answer(&mut svc, inv.id, &raw(&1u8)).await;
    let id = c.request("rpc.call", &CallParams::new("svc.slow")).await;
    let inv = invocation(&mut svc).await;
    answer(&mut svc, inv.id, &raw(&2u8)).await;
    assert_eq!(c.response(id).await.unwrap().decode::<u8>().unwrap(), 2);
}

#[tokio::test]
async fn the_hub_enforces_the_deadline_and_interrupts_the_callee() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.slow"))
        .await
        .unwrap();
    let mut c = caller(&h).await;
    let id = c
        .request(
            "rpc.call",
            &CallParams::new("svc.slow").with_timeout_ms(150),
        )
        .await;
    let inv = invocation(&mut svc).await;
    assert!(inv.deadline_ms <= 150);
    assert_eq!(code(c.response(id).await), ErrorCode::Timeout);
    assert_eq!(cancelled(&mut svc).await, inv.id);
}

#[tokio::test]
async fn a_callee_that_leaves_fails_its_calls_with_callee_lost_at_once() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.x"))
        .await
        .unwrap();
    let mut c = caller(&h).await;
    let id = c.request("rpc.call", &CallParams::new("svc.x")).await;
    let _inv = invocation(&mut svc).await;
    let t = Instant::now();
    drop(svc);
    assert_eq!(code(c.response(id).await), ErrorCode::CalleeLost);
    let took = t.elapsed();
    assert!(
        took < Duration::from_millis(100),
        "callee_lost after {took:?}"
    );
    // Its registration vanished with it: no ghost callee.
    assert_eq!(
        code(c.call("rpc.call", &CallParams::new("svc.x")).await),
        ErrorCode::NoCallee
    );
}

#[tokio::test]
async fn a_caller_that_leaves_interrupts_its_calls_at_the_callee() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.x"))
        .await
        .unwrap();
    let mut c = caller(&h).await;
    c.request("rpc.call", &CallParams::new("svc.x")).await;
    let inv = invocation(&mut svc).await;
    drop(c);
    assert_eq!(cancelled(&mut svc).await, inv.id);
}

#[tokio::test]
async fn calls_beyond_concurrency_queue_up_to_the_bound() {
    let h = TestHub::start(|c| c.rpc.max_queue = 1).await;
    let mut svc = callee(&h, "svc-a").await;
    register(
        &mut svc,
        RegisterParams::new("svc.one").with_max_concurrency(1),
    )
    .await
    .unwrap();
    let mut c = caller(&h).await;
    let first = c.request("rpc.call", &CallParams::new("svc.one")).await;
    let inv1 = invocation(&mut svc).await;
    let queued = c.request("rpc.call", &CallParams::new("svc.one")).await;
    // The queue holds one: the next is refused at once.
    assert_eq!(
        code(c.call("rpc.call", &CallParams::new("svc.one")).await),
        ErrorCode::TooManyRequests
    );
    answer(&mut svc, inv1.id, &raw(&1u8)).await;
    assert_eq!(c.response(first).await.unwrap().decode::<u8>().unwrap(), 1);
    let inv2 = invocation(&mut svc).await;
    answer(&mut svc, inv2.id, &raw(&2u8)).await;
    assert_eq!(c.response(queued).await.unwrap().decode::<u8>().unwrap(), 2);
}

#[tokio::test]
async fn policies_must_agree_and_single_takes_one_callee() {
    let h = hub().await;
    let mut a = callee(&h, "svc-a").await;
    let mut b = callee(&h, "svc-b").await;
    register(
        &mut a,
        RegisterParams::new("svc.p").with_policy(Policy::RoundRobin),
    )
    .await
    .unwrap();
    let e = register(
        &mut b,
        RegisterParams::new("svc.p").with_policy(Policy::Random),
    )
    .await
    .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    register(&mut a, RegisterParams::new("svc.s"))
        .await
        .unwrap();
    let e = register(&mut b, RegisterParams::new("svc.s"))
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::Conflict);
    // Once the round-robin callee leaves, the procedure is free again.
    drop(a);
    let mut tries = 0;
    loop {
        match register(
            &mut b,
            RegisterParams::new("svc.p").with_policy(Policy::Random),
        )
        .await
        {
            Ok(_) => break,
            Err(e) if e.code == ErrorCode::Conflict && tries < 100 => {
                tries += 1;
                // The hub sees the disconnect asynchronously: ask again
                // after a round trip.
                b.call("ping", &raw(&0u8)).await.unwrap();
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[tokio::test]
async fn unregister_lets_calls_in_flight_finish_and_sends_new_ones_elsewhere() {
    let h = hub().await;
    let mut a = callee(&h, "svc-a").await;
    let mut b = callee(&h, "svc-b").await;
    let p = || RegisterParams::new("svc.u").with_policy(Policy::First);
    let ra = register(&mut a, p()).await.unwrap();
    let rb = register(&mut b, p()).await.unwrap();
    let mut c = caller(&h).await;
    let first = c.request("rpc.call", &CallParams::new("svc.u")).await;
    let inv = invocation(&mut a).await;
    assert_eq!(inv.registration, ra);
    a.call("rpc.unregister", &UnregisterParams::new(ra))
        .await
        .unwrap();
    assert_eq!(
        code(a.call("rpc.unregister", &UnregisterParams::new(ra)).await),
        ErrorCode::NotFound
    );
    let second = c.request("rpc.call", &CallParams::new("svc.u")).await;
    let inv_b = invocation(&mut b).await;
    assert_eq!(inv_b.registration, rb);
    answer(&mut a, inv.id, &raw(&"a")).await;
    answer(&mut b, inv_b.id, &raw(&"b")).await;
    assert_eq!(
        c.response(first).await.unwrap().decode::<&str>().unwrap(),
        "a"
    );
    assert_eq!(
        c.response(second).await.unwrap().decode::<&str>().unwrap(),
        "b"
    );
}

#[tokio::test]
async fn rpc_list_shows_procedures_callees_and_calls_in_flight() {
    let h = hub().await;
    let mut a = callee(&h, "svc-a").await;
    register(
        &mut a,
        RegisterParams::new("svc.l")
            .with_policy(Policy::LeastPending)
            .with_max_concurrency(3),
    )
    .await
    .unwrap();
    let mut c = caller(&h).await;
    let id = c.request("rpc.call", &CallParams::new("svc.l")).await;
    let inv = invocation(&mut a).await;
    let l: ListResult = c
        .call("rpc.list", &ListParams::default())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(l.procedures.len(), 1);
    let p = &l.procedures[0];
    assert_eq!(
        (p.procedure.as_str(), &p.policy),
        ("svc.l", &Policy::LeastPending)
    );
    assert_eq!(p.callees[0].user, "svc-a");
    assert_eq!(
        (p.callees[0].in_flight, p.callees[0].max_concurrency),
        (1, 3)
    );
    assert_eq!(l.next, None);
    answer(&mut a, inv.id, &raw(&0u8)).await;
    c.response(id).await.unwrap();
}

#[tokio::test]
async fn a_callee_that_overruns_its_credit_fails_the_call() {
    let h = TestHub::start(|c| c.rpc.chunk_window = 2).await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.o"))
        .await
        .unwrap();
    let mut c = Client::connect_stalled(h.addr()).await;
    c.auth(&rpc_token("carol", &[], &["svc.>"], false))
        .await
        .unwrap();
    let id = c.request("rpc.call", &CallParams::new("svc.o")).await;
    let inv = invocation(&mut svc).await;
    // Far more than the window, as fast as possible, with big chunks the
    // stalled caller cannot take.
    let data = raw(&minicbor::bytes::ByteVec::from(vec![1u8; 256 * 1024]));
    for seq in 0..64 {
        chunk(&mut svc, inv.id, seq, false, &data).await;
    }
    assert_eq!(cancelled(&mut svc).await, inv.id);
    loop {
        match c.next_frame().await.expect("open") {
            Frame::Response(r) if r.id == id => {
                assert_eq!(r.outcome.unwrap_err().code, ErrorCode::Internal);
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn queued_calls_fail_no_callee_when_the_last_callee_leaves_and_time_out_in_the_queue() {
    let h = hub().await;
    let mut svc = callee(&h, "svc-a").await;
    register(
        &mut svc,
        RegisterParams::new("svc.q").with_max_concurrency(1),
    )
    .await
    .unwrap();
    let mut c = caller(&h).await;
    let busy = c.request("rpc.call", &CallParams::new("svc.q")).await;
    let _inv = invocation(&mut svc).await;
    // Queued behind the busy one, with a deadline that passes in the queue.
    let short = c
        .request("rpc.call", &CallParams::new("svc.q").with_timeout_ms(100))
        .await;
    assert_eq!(code(c.response(short).await), ErrorCode::Timeout);
    let queued = c.request("rpc.call", &CallParams::new("svc.q")).await;
    // Make sure it is queued before the callee leaves.
    let l: ListResult = c
        .call("rpc.list", &ListParams::default())
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert_eq!(
        l.procedures[0].queued, 1,
        "the timed-out call left the queue"
    );
    drop(svc);
    assert_eq!(code(c.response(busy).await), ErrorCode::CalleeLost);
    assert_eq!(code(c.response(queued).await), ErrorCode::NoCallee);
}

#[tokio::test]
async fn params_too_large_for_the_invocation_are_payload_too_large() {
    let h = TestHub::start(|c| {
        c.max_frame_size = 64 * 1024;
        c.max_payload = 32 * 1024;
        c.max_outbound_bytes = 1024 * 1024;
        c.max_in_flight_bytes = 1024 * 1024;
    })
    .await;
    let mut svc = callee(&h, "svc-a").await;
    register(&mut svc, RegisterParams::new("svc.big"))
        .await
        .unwrap();
    let mut c = caller(&h).await;
    // The call frame fits; with the invocation's own fields it does not.
    let big = raw(&minicbor::bytes::ByteVec::from(vec![0u8; 64 * 1024 - 40]));
    let r = c
        .call(
            "rpc.call",
            &CallParams::new("svc.big").with_params(big.as_raw_ref()),
        )
        .await;
    assert_eq!(code(r), ErrorCode::PayloadTooLarge);
    // The callee's slot was given back.
    let id = c.request("rpc.call", &CallParams::new("svc.big")).await;
    let inv = invocation(&mut svc).await;
    answer(&mut svc, inv.id, &raw(&1u8)).await;
    c.response(id).await.unwrap();
}
