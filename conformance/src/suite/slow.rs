//! §18: a subscriber that does not read is closed with 4006, without
//! `closing`, and nobody else suffers.

use std::time::{Duration, Instant};

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::runner::{Case, Ctx};
use crate::ws::Handshake;
use crate::{ensure, fail};

/// Longest a flood may run.
const FLOOD_TIME: Duration = Duration::from_secs(20);

/// A subscriber that reads nothing: a tiny receive buffer, so the
/// backlog piles up in the server's queue.
async fn stalled(ctx: &Ctx, tag: &str) -> CaseResult<Conn> {
    let token = ctx.token(&ctx.claims(&ctx.user(tag))).await?;
    let mut c = ctx
        .connect_with(Handshake {
            recv_buffer: Some(4096),
            ..Default::default()
        })
        .await?;
    match ctx.auth(&mut c, &token).await? {
        Ok(_) => Ok(c),
        Err(e) => fail!("auth failed: {}", e.code),
    }
}

/// Publishes large payloads on `topic` until a publish reports fewer
/// deliveries than `expected` (the stalled subscriber is gone), pacing
/// itself by the rate limit. Returns the publishes sent.
async fn flood(ctx: &Ctx, p: &mut Conn, topic: &str, expected: u64) -> CaseResult<u64> {
    let l = ctx.limits();
    let size = l
        .max_payload
        .min(64 * 1024)
        .min(l.max_frame_size.saturating_sub(1024))
        .max(64);
    let data = Value::Bytes(vec![0x5a; usize::try_from(size - 8).unwrap_or(0)]);
    let params = publish(topic, data);
    let cap = ctx
        .settings()
        .outbound_bytes
        .saturating_mul(16)
        .max(64 << 20);
    let started = Instant::now();
    let mut sent = 0u64;
    while sent * size < cap && started.elapsed() < FLOOD_TIME {
        match p.call("publish", &params).await? {
            Ok(r) => {
                sent += 1;
                let n = r.value.get(0).and_then(Value::as_u64).unwrap_or(u64::MAX);
                if n < expected {
                    return Ok(sent);
                }
            }
            Err(e) if e.code == "rate_limited" => {
                tokio::time::sleep(Duration::from_millis(e.retry_after_ms.unwrap_or(10))).await;
            }
            Err(e) => fail!("publish answered {} ({})", e.code, e.message),
        }
    }
    fail!(
        "{sent} publishes of {size} bytes ({} MiB) and the stalled subscriber was still counted as delivered (outbound bound {} bytes, §18)",
        (sent * size) >> 20,
        ctx.settings().outbound_bytes
    )
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "slow.close-4006",
            "18, 15.1, 12.6",
            "a subscriber that stops reading is closed with 4006 and no closing",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut s = stalled(&ctx, "s").await?;
                subscribe(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                flood(&ctx, &mut p, &t, 1).await?;
                // Now read the backlog: events, then the Close frame.
                s.expect_close(4006, Duration::from_secs(15))
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "slow.not-counted-after-close",
            "18, 11.6, P18",
            "once a slow consumer is closed, publishes no longer count it in delivered",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut s = stalled(&ctx, "s").await?;
                subscribe(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                flood(&ctx, &mut p, &t, 1).await?;
                for _ in 0..3 {
                    let n = publish_delivered(&mut p, &publish(&t, Value::Null)).await?;
                    ensure!(
                        n == 0,
                        "delivered {n} after the only subscriber was closed as a slow consumer"
                    );
                }
                Ok(())
            },
        ),
        Case::new(
            "slow.others-unaffected",
            "18",
            "while one subscriber is closed as slow, a reading subscriber gets every event",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut s = stalled(&ctx, "s").await?;
                subscribe(&mut s, &t).await?;
                let mut f = ctx.client("f").await?;
                subscribe(&mut f, &t).await?;
                let t2 = t.clone();
                let reader = tokio::spawn(async move {
                    let mut n = 0u64;
                    loop {
                        let e = f.event(&t2, Duration::from_secs(10)).await?;
                        if e.value.get(1) == Some(&Value::text("end")) {
                            return Ok::<u64, crate::check::CaseError>(n);
                        }
                        n += 1;
                    }
                });
                let mut p = ctx.client("p").await?;
                let sent = flood(&ctx, &mut p, &t, 2).await?;
                p.ok("publish", &publish(&t, Value::text("end"))).await?;
                let got = match reader.await {
                    Ok(r) => r?,
                    Err(e) => fail!("the reading subscriber's task failed: {e}"),
                };
                ensure!(
                    got == sent,
                    "the reading subscriber got {got} of {sent} events"
                );
                Ok(())
            },
        ),
        Case::new(
            "slow.presence-leave",
            "18, 12.3",
            "observers get presence.leave for a member closed as a slow consumer",
            |ctx| async move {
                let (pt, dt) = (ctx.topic("room"), ctx.topic("data"));
                let mut obs = ctx.client("o").await?;
                subscribe_presence(&mut obs, &pt).await?;
                let mut s = stalled(&ctx, "s").await?;
                subscribe_presence(&mut s, &pt).await?;
                subscribe(&mut s, &dt).await?;
                let sess = session_of(&s);
                let mut p = ctx.client("p").await?;
                flood(&ctx, &mut p, &dt, 1).await?;
                // Let the stalled connection end: it reads its backlog and the
                // Close frame.
                s.expect_close(4006, Duration::from_secs(15)).await?;
                obs.notification_where("presence.leave", PROMPT, move |v| {
                    v.get(1).and_then(|m| m.get(0)).and_then(Value::as_str) == Some(sess.as_str())
                })
                .await?;
                Ok(())
            },
        ),
    ]
}
