//! §6 and §8: request ids, concurrency, ordering, in-flight limits and
//! cancellation. Cases that need a request to stay in flight use the
//! test-only `debug.sleep`.

use std::time::{Duration, Instant};

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::{self, Frame};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

/// Sends `debug.sleep` with `id` and makes sure it is in flight: a ping
/// sent after it is answered first, and the sleep is not (a server
/// without the method answers `method_not_found` at once: skip).
pub(crate) async fn sleep_in_flight(c: &mut Conn, id: u64, ms: u64) -> CaseResult {
    c.send(&frame::request(id, "debug.sleep", &sleep(ms)))
        .await?;
    c.alive().await?;
    skip_if_no_debug(c, "debug.sleep")
}

/// Skips if a kept response says `method_not_found` (a `debug.*` method
/// the server lacks); keeps every frame.
pub(crate) fn skip_if_no_debug(c: &mut Conn, method: &str) -> CaseResult {
    let kept = c.take_kept();
    let missing = kept.iter().any(
        |f| matches!(f, Frame::Response { outcome: Err(e), .. } if e.code == "method_not_found"),
    );
    if missing {
        skip!(
            "the server answers method_not_found for {method} (a test-only method: plexus serves debug.* in debug builds started with --debug-methods; this server lacks it)"
        );
    }
    for f in kept.iter().rev() {
        c.keep_front(f.clone());
    }
    Ok(())
}

/// Fills the in-flight window with long `debug.sleep`s, then sends
/// `method params` and returns its outcome.
pub(crate) async fn with_full_window(
    ctx: &Ctx,
    method: &str,
    params: Value,
) -> CaseResult<Result<frame::Item, frame::ErrorObject>> {
    let n = ctx.limits().max_in_flight;
    require_burst(ctx, n + 2, "filling max_in_flight")?;
    let mut c = ctx.client("a").await?;
    for _ in 0..n {
        let id = c.id();
        c.send(&frame::request(id, "debug.sleep", &sleep(5000)))
            .await?;
    }
    let id = c.id();
    c.send(&frame::request(id, method, &params)).await?;
    let r = c.response(id, PROMPT).await?;
    skip_if_no_debug(&mut c, "debug.sleep")?;
    Ok(r)
}

async fn expect_full(ctx: Ctx, method: &str, params: Value, want: &str) -> CaseResult {
    match with_full_window(&ctx, method, params).await? {
        Ok(r) => fail!(
            "with max_in_flight requests in flight, {method} succeeded ({}); expected {want}",
            r.value
        ),
        Err(e) => ensure_eq!(e.code, want, "error code with a full in-flight window"),
    }
    Ok(())
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "ids.reuse-after-answer",
            "6.1",
            "an id may be reused once its request was answered",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                for round in 0..3u64 {
                    c.send(&frame::request(9, "ping", &Value::Uint(round)))
                        .await?;
                    let r = expect_ok(&mut c, 9).await?;
                    ensure_eq!(r.value, Value::Uint(round), "ping result of round {round}");
                }
                Ok(())
            },
        ),
        Case::new(
            "ids.any-uint",
            "6.1",
            "ids 0, 2^32 and 2^64-1 are echoed exactly",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                for id in [0u64, 1 << 32, u64::MAX] {
                    c.send(&frame::request(id, "ping", &Value::Null)).await?;
                    expect_ok(&mut c, id).await?;
                }
                Ok(())
            },
        ),
        Case::new(
            "ids.duplicate-in-flight-4005",
            "6.1, 6.3, 12.6",
            "a request reusing the id of one in flight: closing 4005, close 4005, and neither is answered",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 77, 2000).await?;
                c.send(&frame::request(77, "ping", &Value::Null)).await?;
                let rep = c.expect_close(4005, PROMPT).await?;
                ensure!(
                    !rep.before.iter().any(|f| f.reply_id() == Some(77)),
                    "id 77 was answered although the duplicate ends the connection: {}",
                    rep.before
                        .iter()
                        .map(Frame::describe)
                        .collect::<Vec<_>>()
                        .join("; ")
                );
                Ok(())
            },
        ),
        Case::new(
            "ids.duplicate-checked-before-rate",
            "6.3, 11.0, P1",
            "a rate-limited request reusing an in-flight id closes with 4005 (never a second terminal frame)",
            |ctx| async move {
                let burst = ctx.limits().rate_burst;
                if burst > 2000 {
                    skip!("rate_burst {burst} is too large to exhaust here");
                }
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 5, 5000).await?;
                let mut bytes = Vec::new();
                for i in 0..burst {
                    bytes.push(frame::request(1_000_000 + i, "ping", &Value::Null));
                }
                for b in &bytes {
                    c.send(b).await?;
                }
                // Wait until the bucket is empty.
                c.wait_for(PROMPT, "a rate_limited answer", |f| match f {
                    Frame::Response {
                        outcome: Err(e), ..
                    } if e.code == "rate_limited" => Some(()),
                    _ => None,
                })
                .await?;
                c.send(&frame::request(5, "ping", &Value::Null)).await?;
                let rep = c.expect_close(4005, PROMPT).await?;
                ensure!(
                    !rep.before.iter().any(|f| f.reply_id() == Some(5)),
                    "id 5 got a terminal frame while its twin was in flight (§6.3, P1)"
                );
                Ok(())
            },
        ),
        Case::new(
            "ids.responses-out-of-order",
            "6.2",
            "a quick request is answered while a slow one of the same connection is still running",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let slow = c.id();
                c.send(&frame::request(slow, "debug.sleep", &sleep(800)))
                    .await?;
                let quick = c.request("ping", &Value::Null).await?;
                expect_ok(&mut c, quick).await?;
                skip_if_no_debug(&mut c, "debug.sleep")?;
                ensure!(
                    !c.take_kept().iter().any(|f| f.reply_id() == Some(slow)),
                    "the slow request was answered before the quick one"
                );
                expect_ok(&mut c, slow).await.map(drop)
            },
        ),
        Case::new(
            "ids.concurrent-processing",
            "6.2",
            "requests of one connection run concurrently: 6 sleeps of 400 ms finish in well under 2.4 s",
            |ctx| async move {
                let n = 6u64.min(ctx.limits().max_in_flight.saturating_sub(1));
                if n < 3 {
                    skip!("max_in_flight {} is too small", ctx.limits().max_in_flight);
                }
                require_burst(&ctx, n, "the sleeps")?;
                let mut c = ctx.client("a").await?;
                let started = Instant::now();
                let mut ids = Vec::new();
                for _ in 0..n {
                    ids.push(c.request("debug.sleep", &sleep(400)).await?);
                }
                for id in ids {
                    let r = c.response(id, PROMPT).await?;
                    ctx.debug_check("debug.sleep", &r)?;
                    if let Err(e) = r {
                        fail!("debug.sleep answered {}", e.code);
                    }
                }
                let took = started.elapsed();
                ensure!(
                    took < Duration::from_millis(400 * 2) + ctx.tolerance(),
                    "{n} sleeps of 400 ms took {took:?}: they ran one after another (§6.2)"
                );
                Ok(())
            },
        ),
        Case::new(
            "ids.publish-order",
            "6.2",
            "events of one publisher reach a subscriber in the order the publishes were sent",
            |ctx| async move {
                let n = 50u64;
                require_burst(&ctx, n, "the publishes")?;
                let t = ctx.topic("t");
                let mut s = ctx.client("s").await?;
                subscribe(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                for i in 0..n {
                    p.send(&frame::request(
                        p_id(i),
                        "publish",
                        &publish(&t, Value::Uint(i)),
                    ))
                    .await?;
                }
                for i in 0..n {
                    let e = s.event(&t, PROMPT).await?;
                    ensure_eq!(e.value.get(1), Some(&Value::Uint(i)), "event {i} data");
                }
                Ok(())
            },
        ),
        Case::new(
            "ids.publish-order-per-subscriber",
            "6.2, 12.1",
            "two subscribers (exact and wildcard) each see one publisher's events in order, once each",
            |ctx| async move {
                let n = 30u64;
                require_burst(&ctx, n, "the publishes")?;
                let t = ctx.topic("room.1");
                let mut a = ctx.client("a").await?;
                subscribe(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                subscribe(&mut b, &ctx.topic("room.*")).await?;
                subscribe(&mut b, &ctx.topic(">")).await?;
                let mut p = ctx.client("p").await?;
                for i in 0..n {
                    p.send(&frame::request(
                        p_id(i),
                        "publish",
                        &publish(&t, Value::Uint(i)),
                    ))
                    .await?;
                }
                for c in [&mut a, &mut b] {
                    for i in 0..n {
                        let e = c.event(&t, PROMPT).await?;
                        ensure_eq!(e.value.get(1), Some(&Value::Uint(i)), "event {i} data");
                    }
                    c.none_within(
                        QUIET,
                        "second copy of an event",
                        |f| matches!(f, Frame::Notification { method, .. } if method == "event"),
                    )
                    .await?;
                }
                Ok(())
            },
        ),
        Case::new(
            "ids.one-terminal-frame-each",
            "6.3",
            "30 pipelined requests of several methods get exactly one response each",
            |ctx| async move {
                require_burst(&ctx, 30, "the requests")?;
                let mut c = ctx.client("a").await?;
                let mut ids = Vec::new();
                for i in 0..10u64 {
                    ids.push(c.request("ping", &Value::Uint(i)).await?);
                    ids.push(
                        c.request("subscribe", &topic(&ctx.topic(&format!("t{i}"))))
                            .await?,
                    );
                    ids.push(
                        c.request("unsubscribe", &topic(&ctx.topic("never")))
                            .await?,
                    );
                }
                for id in &ids {
                    let _ = c.response(*id, PROMPT).await?;
                }
                c.none_within(QUIET, "second response", |f| {
                    matches!(f, Frame::Response { .. })
                })
                .await
            },
        ),
        Case::new(
            "inflight.limit",
            "6.2, 10, 14.2",
            "a request beyond max_in_flight is answered too_many_requests",
            |ctx| async move { expect_full(ctx, "debug.sleep", sleep(1), "too_many_requests").await },
        ),
        Case::new(
            "inflight.counts-every-method",
            "6.2, P2",
            "with max_in_flight requests in flight, even ping is answered too_many_requests",
            |ctx| async move { expect_full(ctx, "ping", Value::Null, "too_many_requests").await },
        ),
        Case::new(
            "inflight.after-method-check",
            "11.0, P1",
            "with a full window, an unknown method is still method_not_found (checked first)",
            |ctx| async move {
                expect_full(ctx, "no.such.method", Value::Null, "method_not_found").await
            },
        ),
        Case::new(
            "inflight.before-params-check",
            "11.0, P1",
            "with a full window, subscribe with invalid params is too_many_requests (checked before params)",
            |ctx| async move {
                expect_full(ctx, "subscribe", Value::empty_map(), "too_many_requests").await
            },
        ),
        Case::new(
            "inflight.freed-by-answers",
            "6.2",
            "once in-flight requests are answered, new ones are accepted again",
            |ctx| async move {
                let n = ctx.limits().max_in_flight;
                require_burst(&ctx, n + 2, "filling max_in_flight")?;
                let mut c = ctx.client("a").await?;
                let mut ids = Vec::new();
                for _ in 0..n {
                    ids.push(c.request("debug.sleep", &sleep(200)).await?);
                }
                for id in ids {
                    let r = c.response(id, PROMPT).await?;
                    ctx.debug_check("debug.sleep", &r)?;
                }
                c.ok("debug.sleep", &sleep(1)).await?;
                c.alive().await
            },
        ),
        Case::new(
            "inflight.bytes-limit",
            "6.2, 10, P3",
            "requests beyond max_in_flight_bytes of frames in flight are answered too_many_requests",
            |ctx| async move {
                let Some(limit) = ctx.limits().max_in_flight_bytes else {
                    skip!("the server does not announce max_in_flight_bytes (limits key 11)");
                };
                if limit > 64 * 1024 * 1024 {
                    skip!("max_in_flight_bytes {limit} is too large to reach here");
                }
                let size = ctx.limits().max_frame_size.min(1 << 20);
                let fits = limit / size;
                if fits + 2 > ctx.limits().max_in_flight {
                    skip!(
                        "max_in_flight {} is reached before max_in_flight_bytes {limit}",
                        ctx.limits().max_in_flight
                    );
                }
                require_burst(&ctx, fits + 1, "filling max_in_flight_bytes")?;
                let mut c = ctx.client("a").await?;
                let pad = usize::try_from(size).unwrap_or(0).saturating_sub(64);
                let params = Value::map([(0, Value::Uint(5000)), (1, Value::Bytes(vec![0; pad]))]);
                let mut ids = Vec::new();
                for _ in 0..=fits {
                    ids.push(c.request("debug.sleep", &params).await?);
                }
                let last = ids[ids.len() - 1];
                let r = c.response(last, PROMPT).await?;
                ctx.debug_check("debug.sleep", &r)?;
                match r {
                    Err(e) => ensure_eq!(
                        e.code,
                        "too_many_requests",
                        "the request over the byte bound"
                    ),
                    Ok(_) => fail!(
                        "{} requests of {size} bytes were in flight under max_in_flight_bytes {limit}",
                        fits + 1
                    ),
                }
                Ok(())
            },
        ),
        Case::new(
            "cancel.in-flight",
            "8, 14.2",
            "cancel of a running request answers it cancelled promptly",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 21, 5000).await?;
                let started = Instant::now();
                c.notify("cancel", &cancel(21)).await?;
                expect_error(&mut c, 21, "cancelled").await?;
                ensure!(
                    started.elapsed() < Duration::from_secs(2),
                    "cancelled only after {:?}",
                    started.elapsed()
                );
                Ok(())
            },
        ),
        Case::new(
            "cancel.one-terminal-frame",
            "8, 6.3",
            "a cancelled request gets exactly one terminal frame",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 21, 600).await?;
                c.notify("cancel", &cancel(21)).await?;
                let _ = c.response(21, PROMPT).await?;
                c.none_within(Duration::from_millis(900), "second answer for id 21", |f| {
                    f.reply_id() == Some(21)
                })
                .await
            },
        ),
        Case::new(
            "cancel.id-reusable",
            "8, 6.1",
            "after its cancelled answer an id can be used again",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 21, 5000).await?;
                c.notify("cancel", &cancel(21)).await?;
                let _ = c.response(21, PROMPT).await?;
                c.send(&frame::request(21, "ping", &Value::Uint(2))).await?;
                expect_ok(&mut c, 21).await.map(drop)
            },
        ),
        Case::new(
            "cancel.unknown-id-ignored",
            "8",
            "cancel naming no request in flight is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.notify("cancel", &cancel(424_242)).await?;
                c.alive().await?;
                ensure!(c.take_kept().is_empty(), "the server answered a cancel");
                Ok(())
            },
        ),
        Case::new(
            "cancel.invalid-params-ignored",
            "8",
            "cancel with params that are not cancel-params is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                sleep_in_flight(&mut c, 3, 300).await?;
                for p in [
                    Value::map([(0, Value::text("3"))]),
                    Value::Null,
                    Value::Array(vec![Value::Uint(3)]),
                    Value::empty_map(),
                ] {
                    c.notify("cancel", &p).await?;
                }
                let r = expect_ok(&mut c, 3).await?;
                is_map(&r, "debug.sleep")
            },
        ),
        Case::new(
            "cancel.before-auth-ignored",
            "8, 9.2",
            "cancel before auth is ignored",
            |ctx| async move {
                let mut c = ctx.connect().await?;
                c.notify("cancel", &cancel(1)).await?;
                let t = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
                ensure!(ctx.auth(&mut c, &t).await?.is_ok(), "auth failed");
                c.alive().await
            },
        ),
        Case::new(
            "cancel.after-answer-ignored",
            "8",
            "cancel of a request already answered changes nothing",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.request("ping", &Value::Null).await?;
                expect_ok(&mut c, id).await?;
                c.notify("cancel", &cancel(id)).await?;
                c.alive().await?;
                ensure!(c.take_kept().is_empty(), "a second answer came");
                Ok(())
            },
        ),
        Case::new(
            "cancel.core-method-answered",
            "8",
            "a cancel right behind a ping gets the ping's normal answer",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.request("ping", &Value::text("x")).await?;
                c.notify("cancel", &cancel(id)).await?;
                let r = expect_ok(&mut c, id).await?;
                ensure_eq!(r.value, Value::text("x"), "ping result");
                Ok(())
            },
        ),
        Case::new(
            "cancel.as-request",
            "11.0",
            "cancel sent as a request is method_not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err("cancel", &cancel(1), "method_not_found")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "requests.method-case-sensitive",
            "5.2, 11.0",
            "method names are case-sensitive: PING is method_not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err("PING", &Value::Null, "method_not_found")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "requests.notification-name-as-request",
            "11.0",
            "a notification name (event) sent as a request is method_not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err("event", &Value::empty_map(), "method_not_found")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "requests.duplicate-params-key",
            "4.8, 14.2, P14",
            "params with the same key twice are invalid_params",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let t = ctx.topic("t");
                let dup = Value::Map(vec![
                    (Value::Uint(0), Value::text(&t)),
                    (Value::Uint(0), Value::text(format!("{t}.other"))),
                ]);
                c.err("subscribe", &dup, "invalid_params").await?;
                c.alive().await
            },
        ),
        Case::new(
            "requests.null-optional-is-absent",
            "4.8",
            "null for an optional key means absent: subscribe with presence null is a plain subscription",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let t = ctx.topic("t");
                c.ok(
                    "subscribe",
                    &Value::map([(0, Value::text(&t)), (1, Value::Null)]),
                )
                .await?;
                c.err("subscribe", &topic(&t), "conflict").await.map(drop)
            },
        ),
        Case::new(
            "requests.second-auth-pipelined",
            "9.2, 14.2",
            "two auth requests sent back to back: the first succeeds, the second is conflict",
            |ctx| async move {
                let t = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
                let mut c = ctx.connect().await?;
                let p = crate::runner::ctx::auth_params(&t, None);
                let a = c.request("auth", &p).await?;
                let b = c.request("auth", &p).await?;
                expect_ok(&mut c, a).await?;
                expect_error(&mut c, b, "conflict").await?;
                c.alive().await
            },
        ),
        Case::new(
            "requests.server-notification-from-client-ignored",
            "12.7",
            "a closing notification sent by the client is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.notify(
                    "closing",
                    &Value::map([(0, Value::Uint(4008)), (1, Value::text("bye"))]),
                )
                .await?;
                c.alive().await
            },
        ),
    ]
}

fn p_id(i: u64) -> u64 {
    1000 + i
}
