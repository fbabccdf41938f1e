//! §17: the token bucket, `rate_limited` and the 4007 close.

use std::time::{Duration, Instant};

use super::util::*;
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::conn::{Conn, End};
use crate::frame;
use crate::runner::ctx::auth_params;
use crate::runner::{Case, Ctx};
use crate::{ensure, fail, skip};

/// Burst sizes beyond this are not exhausted by these cases.
const MAX_BURST: u64 = 5000;

fn burst(ctx: &Ctx) -> CaseResult<u64> {
    let b = ctx.limits().rate_burst;
    if b > MAX_BURST {
        skip!("rate_burst {b} is too large to exhaust here");
    }
    Ok(b)
}

/// Sends `n` pings in one write, with ids `base..base+n`.
async fn burst_pings(c: &mut Conn, base: u64, n: u64) -> CaseResult {
    let mut bytes = Vec::new();
    for i in 0..n {
        let f = frame::request(base + i, "ping", &Value::Null);
        bytes.extend(crate::ws::encode_frame(
            true,
            0,
            crate::ws::OP_BINARY,
            Some(rand::random()),
            &f,
        ));
    }
    c.send_raw(&bytes).await
}

/// Collects the answers to ids `base..base+n`: (successes, rate-limited
/// errors with their `retry_after_ms`).
async fn tally(c: &mut Conn, base: u64, n: u64) -> CaseResult<(u64, Vec<Option<u64>>)> {
    let (mut ok, mut limited) = (0, Vec::new());
    for i in 0..n {
        match c.response(base + i, PROMPT).await? {
            Ok(_) => ok += 1,
            Err(e) if e.code == "rate_limited" => limited.push(e.retry_after_ms),
            Err(e) => fail!("ping answered {} ({})", e.code, e.message),
        }
    }
    Ok((ok, limited))
}

/// The longest `retry_after_ms` one token can need, in ms, rounded up.
fn one_token_ms(ctx: &Ctx) -> u64 {
    1000u64.div_ceil(ctx.limits().rate_per_sec.max(1))
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "rate.limited-with-retry-after",
            "17, 14.1, 14.2",
            "requests beyond the burst are answered rate_limited with retry_after_ms up to the time one token takes",
            |ctx| async move {
                let b = burst(&ctx)?;
                let extra = 5u64
                    .min(u64::from(ctx.settings().rate_strikes.saturating_sub(1)))
                    .max(1);
                let mut c = ctx.client("a").await?;
                burst_pings(&mut c, 10_000, b + extra).await?;
                let (_, limited) = tally(&mut c, 10_000, b + extra).await?;
                ensure!(
                    !limited.is_empty(),
                    "{} requests at once after auth, none rate_limited (rate_burst {b})",
                    b + extra
                );
                let max =
                    one_token_ms(&ctx) + u64::try_from(ctx.tolerance().as_millis()).unwrap_or(0);
                for r in limited {
                    let Some(r) = r else {
                        fail!(
                            "a rate_limited error without retry_after_ms (§14.1: always present)"
                        );
                    };
                    ensure!(
                        r >= 1 && r <= max,
                        "retry_after_ms {r}; one token takes at most {} ms (§17)",
                        one_token_ms(&ctx)
                    );
                }
                alive_after_rate(&mut c, &ctx).await
            },
        ),
        Case::new(
            "rate.burst-counts-auth",
            "17",
            "the bucket starts full at rate_burst and auth takes a token: rate_burst - 1 requests pass right after it",
            |ctx| async move {
                let b = burst(&ctx)?;
                let r = ctx.limits().rate_per_sec;
                if r > 20 {
                    skip!(
                        "rate_per_sec {r} refills too fast for an exact count (start a server with a low rate)"
                    );
                }
                let mut c = ctx.connect().await?;
                let t = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
                let started = Instant::now();
                ensure!(ctx.auth(&mut c, &t).await?.is_ok(), "auth failed");
                burst_pings(&mut c, 10_000, b + 1).await?;
                let (ok, _) = tally(&mut c, 10_000, b + 1).await?;
                #[allow(
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss,
                    clippy::cast_precision_loss
                )]
                let refill = (started.elapsed().as_secs_f64() * r as f64).ceil() as u64;
                ensure!(
                    ok + 1 >= b && ok < b + refill,
                    "{ok} of {} requests passed; the burst {b} minus the auth allows {} (+{refill} refilled)",
                    b + 1,
                    b - 1
                );
                Ok(())
            },
        ),
        Case::new(
            "rate.unauthenticated-counts",
            "17, 11.0",
            "requests answered unauthenticated consume tokens: after rate_burst of them, auth is rate_limited",
            |ctx| async move {
                let b = burst(&ctx)?;
                if b > 1000 {
                    skip!("rate_burst {b} is too large to spend before the auth deadline");
                }
                // The token first and `auth` right behind the burst: the
                // bucket refills while a loaded machine reads answers. A
                // margin past the burst covers what refills while the
                // burst goes out, kept under the consecutive refusals that
                // close the connection (auth is one more).
                let margin = 40u64.min(u64::from(ctx.settings().rate_strikes.saturating_sub(2)));
                let t = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
                let mut c = ctx.connect().await?;
                burst_pings(&mut c, 10_000, b + margin).await?;
                let id = c.request("auth", &auth_params(&t, None)).await?;
                for i in 0..b + margin {
                    let _ = c.response(10_000 + i, PROMPT).await?;
                }
                let e = expect_error(&mut c, id, "rate_limited").await?;
                tokio::time::sleep(Duration::from_millis(e.retry_after_ms.unwrap_or(1000) + 20))
                    .await;
                match ctx.auth(&mut c, &t).await? {
                    Ok(_) => Ok(()),
                    Err(e) => fail!("auth after waiting retry_after_ms answered {}", e.code),
                }
            },
        ),
        Case::new(
            "rate.limited-costs-nothing",
            "17",
            "a rate-limited request consumes no token: after retry_after_ms the next request passes",
            |ctx| async move {
                let b = burst(&ctx)?;
                let mut c = ctx.client("a").await?;
                burst_pings(&mut c, 10_000, b + 3).await?;
                let (_, limited) = tally(&mut c, 10_000, b + 3).await?;
                let Some(Some(wait)) = limited.last().copied() else {
                    fail!("no rate_limited answer with retry_after_ms");
                };
                tokio::time::sleep(Duration::from_millis(wait + 20)).await;
                c.ok("ping", &Value::Null).await.map(drop)
            },
        ),
        Case::new(
            "rate.notifications-free",
            "17",
            "notifications consume no tokens",
            |ctx| async move {
                let b = burst(&ctx)?;
                let mut c = ctx.client("a").await?;
                for _ in 0..(3 * b).min(3000) {
                    c.notify("cancel", &cancel(u64::MAX - 7)).await?;
                }
                burst_pings(&mut c, 10_000, b.saturating_sub(2)).await?;
                let (ok, limited) = tally(&mut c, 10_000, b.saturating_sub(2)).await?;
                ensure!(
                    limited.is_empty(),
                    "{} of {} pings were rate_limited after notifications only ({ok} passed)",
                    limited.len(),
                    b - 2
                );
                Ok(())
            },
        ),
        Case::new(
            "rate.chunks-free",
            "17",
            "chunks consume no tokens",
            |ctx| async move {
                let b = burst(&ctx)?;
                let mut c = ctx.client("a").await?;
                for i in 0..(3 * b).min(3000) {
                    c.send(&frame::chunk(777_777, i, false, &Value::Null))
                        .await?;
                }
                burst_pings(&mut c, 10_000, b.saturating_sub(2)).await?;
                let (_, limited) = tally(&mut c, 10_000, b.saturating_sub(2)).await?;
                ensure!(
                    limited.is_empty(),
                    "{} pings were rate_limited after chunks only",
                    limited.len()
                );
                Ok(())
            },
        ),
        Case::new(
            "rate.close-4007",
            "17, 12.6, 15.1",
            "a client that keeps sending while limited is closed: closing 4007 (with retry_after_ms), close 4007",
            |ctx| async move {
                let b = burst(&ctx)?;
                let strikes = u64::from(ctx.settings().rate_strikes);
                let n = b + strikes * 2 + 20;
                let mut c = ctx.client("a").await?;
                burst_pings(&mut c, 10_000, n).await?;
                let rep = match c.expect_close(4007, PROMPT).await {
                    Ok(r) => r,
                    Err(CaseError::Fail(f)) if f.starts_with("no close 4007") => {
                        skip!(
                            "no 4007 after {n} requests at once; when to close is server policy (§17)"
                        )
                    }
                    Err(e) => return Err(e),
                };
                let retry = rep
                    .closing
                    .as_ref()
                    .and_then(|p| p.opt(2))
                    .and_then(Value::as_u64);
                ensure!(
                    retry.is_some(),
                    "closing 4007 without retry_after_ms (§17 SHOULD carry it)"
                );
                Ok(())
            },
        ),
        Case::new(
            "rate.lingering-4007",
            "17, P11",
            "a client that keeps sending gets closing 4007 and the Close frame intact, and no reset",
            |ctx| async move {
                let b = burst(&ctx)?;
                let strikes = u64::from(ctx.settings().rate_strikes);
                let mut c = ctx.client("a").await?;
                // A burst that is rate limited `rate_strikes` times in a row,
                // then more requests while the server closes.
                burst_pings(&mut c, 10_000, b + strikes * 2 + 20).await?;
                let spam = Spam::start(&c, frame::request(u64::MAX - 9, "ping", &Value::Null));
                let r = c.expect_close(4007, Duration::from_secs(10)).await;
                spam.stop().await;
                let rep = r?;
                ensure!(
                    rep.end != End::Reset,
                    "the connection was reset after the Close frame (P11)"
                );
                Ok(())
            },
        ),
        Case::new(
            "rate.compliant-client",
            "17, P19",
            "a client sending at half of rate_per_sec is never rate limited",
            |ctx| async move {
                let r = ctx.limits().rate_per_sec.max(1);
                let every = Duration::from_millis(2000 / r);
                let n = 8u64.max(r);
                let total = every * u32::try_from(n).unwrap_or(u32::MAX);
                ctx.require_wait(total, "pacing requests at half the rate")?;
                let mut c = ctx.client("a").await?;
                // Spend most of the burst first, so the refill rate is what is
                // judged.
                let b = ctx.limits().rate_burst.min(MAX_BURST);
                burst_pings(&mut c, 50_000, b.saturating_sub(3)).await?;
                tally(&mut c, 50_000, b.saturating_sub(3)).await?;
                let mut limited = 0;
                for _ in 0..n {
                    tokio::time::sleep(every).await;
                    match c.call("ping", &Value::Null).await? {
                        Ok(_) => {}
                        Err(e) if e.code == "rate_limited" => limited += 1,
                        Err(e) => fail!("ping answered {}", e.code),
                    }
                }
                ensure!(
                    limited == 0,
                    "{limited} of {n} requests at half of rate_per_sec {r} were rate_limited"
                );
                Ok(())
            },
        )
        .slow(),
        Case::new(
            "rate.limited-answers-frames",
            "17, 6.1",
            "a rate-limited request is answered at once and leaves flight: its id can be reused",
            |ctx| async move {
                let b = burst(&ctx)?;
                let mut c = ctx.client("a").await?;
                burst_pings(&mut c, 10_000, b + 2).await?;
                let (_, limited) = tally(&mut c, 10_000, b + 2).await?;
                ensure!(!limited.is_empty(), "nothing was rate limited");
                let wait = limited.iter().flatten().max().copied().unwrap_or(1000);
                tokio::time::sleep(Duration::from_millis(wait + 20)).await;
                c.send(&frame::request(10_000 + b + 1, "ping", &Value::Null))
                    .await?;
                expect_ok(&mut c, 10_000 + b + 1).await.map(drop)
            },
        ),
    ]
}

/// Waits for a token, then checks the connection answers.
async fn alive_after_rate(c: &mut Conn, ctx: &Ctx) -> CaseResult {
    tokio::time::sleep(Duration::from_millis(one_token_ms(ctx) + 20)).await;
    c.alive().await
}
