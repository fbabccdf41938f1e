//! §16: the server's WebSocket Pings and the 4010 close.

use std::time::{Duration, Instant};

use super::util::*;
use crate::frame::Frame;
use crate::runner::{Case, Ctx};
use crate::{ensure, skip};

fn interval(ctx: &Ctx) -> Duration {
    Duration::from_millis(ctx.limits().ping_interval_ms)
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new("keepalive.server-pings", "16", "the server sends a WebSocket Ping within ping_interval_ms", |ctx| async move {
            let i = interval(&ctx);
            ctx.require_wait(i + ctx.tolerance(), "waiting for a Ping")?;
            let started = Instant::now();
            let mut c = ctx.client("a").await?;
            c.wait_pings(1, i + ctx.tolerance() * 2).await?;
            ensure!(started.elapsed() + ctx.tolerance() >= i.mul_f32(0.5), "the first Ping came after {:?}, long before ping_interval_ms {i:?}", started.elapsed());
            Ok(())
        })
        .slow(),
        Case::new("keepalive.ping-interval", "16", "Pings keep coming about every ping_interval_ms", |ctx| async move {
            let i = interval(&ctx);
            ctx.require_wait(i * 3 + ctx.tolerance(), "waiting for three Pings")?;
            let mut c = ctx.client("a").await?;
            c.wait_pings(3, i * 3 + ctx.tolerance() * 3).await?;
            let gap = c.pings[2] - c.pings[1];
            let tol = ctx.tolerance();
            ensure!(
                gap + tol >= i && gap <= i + i / 2 + tol,
                "Pings {gap:?} apart; ping_interval_ms is {i:?} (§16)"
            );
            Ok(())
        })
        .slow(),
        Case::new("keepalive.no-pong-4010", "16, 15.1", "a client that answers no Ping is closed with 4010, without closing", |ctx| async move {
            let i = interval(&ctx);
            let p = ctx.settings().pong_timeout;
            let tol = ctx.tolerance();
            ctx.require_wait(i + p + tol, "waiting out the keepalive timeout")?;
            let mut c = ctx.client("a").await?;
            c.auto_pong = false;
            let started = Instant::now();
            c.expect_close(4010, i + p + tol * 2 + Duration::from_secs(2)).await?;
            let took = started.elapsed();
            ensure!(took + tol >= i + p, "closed with 4010 after {took:?}, before ping_interval + keepalive timeout ({:?})", i + p);
            ensure!(took <= i * 2 + p + tol * 2, "closed with 4010 only after {took:?} (ping interval {i:?}, keepalive timeout {p:?})");
            Ok(())
        })
        .slow(),
        Case::new("keepalive.pongs-keep-alive", "16", "a client that answers Pings stays connected across several keepalive periods", |ctx| async move {
            let i = interval(&ctx);
            let p = ctx.settings().pong_timeout;
            let d = (i + p) * 2;
            ctx.require_wait(d, "several keepalive periods")?;
            let mut c = ctx.client("a").await?;
            c.none_within(d, "closing", |f| matches!(f, Frame::Notification { method, .. } if method == "closing")).await?;
            c.alive().await?;
            if c.pings.is_empty() {
                skip!("no Ping came in {d:?}");
            }
            Ok(())
        })
        .slow(),
        Case::new("keepalive.lingering-4010", "16, P11", "a client that keeps sending but never answers Pings still gets the 4010 Close frame, and no reset", |ctx| async move {
            let i = interval(&ctx);
            let p = ctx.settings().pong_timeout;
            let tol = ctx.tolerance();
            ctx.require_wait(i + p + tol, "waiting out the keepalive timeout")?;
            let mut c = ctx.client("a").await?;
            c.auto_pong = false;
            let spam = spam_cancels(&c);
            let r = c.expect_close(4010, i * 2 + p + tol * 2 + Duration::from_secs(2)).await;
            spam.stop().await;
            let rep = r?;
            ensure!(rep.end != crate::conn::End::Reset, "the connection was reset after the Close frame (P11)");
            Ok(())
        })
        .slow(),
    ]
}
