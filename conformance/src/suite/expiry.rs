//! §9.4, §11.2, §12.5: `auth.refresh`, `token.expiring` and the 4002
//! close.

use std::time::Duration;

use serde_json::json;

use super::auth::{bad_token, check_expires};
use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::Frame;
use crate::runner::ctx::{unix_now, unix_secs};
use crate::runner::{Case, Ctx};
use crate::{ensure, fail, skip};

fn refresh_params(token: &str) -> Value {
    Value::map([(0, Value::text(token))])
}

/// A connection whose token expires `secs` from now; returns it with the
/// token's `exp`.
async fn short_lived(ctx: &Ctx, tag: &str, secs: i64) -> CaseResult<(Conn, i64)> {
    let mut claims = ctx.claims(&ctx.user(tag));
    let exp = unix_secs() + secs;
    claims["exp"] = json!(exp);
    let c = ctx.client_with(&claims).await?;
    Ok((c, exp))
}

fn leeway(ctx: &Ctx) -> f64 {
    ctx.settings().jwt_leeway.as_secs_f64()
}

/// Skips unless a token of `secs` plus the leeway can be waited out.
fn wait_out(ctx: &Ctx, secs: i64) -> CaseResult {
    let d = Duration::from_secs_f64(secs.max(0) as f64 + leeway(ctx)) + ctx.tolerance() * 2;
    ctx.require_wait(d, "waiting for a token to expire")
}

/// Waits for close 4002 and checks it came at `exp` + leeway (§9.4).
async fn closed_at_expiry(ctx: &Ctx, c: &mut Conn, exp: i64) -> CaseResult<Vec<Frame>> {
    let e = exp as f64 + leeway(ctx);
    let tol = ctx.tolerance().as_secs_f64();
    let wait = Duration::from_secs_f64((e - unix_now()).max(0.0) + 2.0 * tol + 2.0);
    let rep = c.expect_close(4002, wait).await?;
    let at = unix_now() - rep.at.elapsed().as_secs_f64();
    ensure!(
        (at - e).abs() <= tol,
        "closed with 4002 at {:+.3} s from exp + leeway; the close is due at exp + leeway (§9.4)",
        at - e
    );
    Ok(rep.before)
}

/// Waits for `token.expiring` and checks its time and value against P6:
/// sent when min(60 s, L/4) of L = E − acceptance remain, E = exp + leeway.
async fn expiring_on_schedule(ctx: &Ctx, c: &mut Conn, exp: i64, accepted: f64) -> CaseResult {
    let e = exp as f64 + leeway(ctx);
    let l = e - accepted;
    let lead = (l / 4.0).min(60.0);
    let due = e - lead;
    let tol = ctx.tolerance().as_secs_f64();
    let wait = Duration::from_secs_f64((due - unix_now()).max(0.0) + 2.0 * tol + 1.0);
    let n = c.notification("token.expiring", wait).await?;
    let at = unix_now();
    ensure!(
        (at - due).abs() <= tol,
        "token.expiring came {:+.3} s from when min(60 s, L/4) = {lead:.3} s of the token's life remained (P6)",
        at - due
    );
    let Some(left) = n.value.get(0).and_then(Value::as_u64) else {
        fail!("token.expiring {} has no expires_in_ms (§12.5)", n.value);
    };
    #[allow(clippy::cast_precision_loss)]
    let left_s = left as f64 / 1000.0;
    ensure!(
        (left_s - (e - at)).abs() <= tol,
        "token.expiring says {left} ms left; {:.0} ms remain to exp + leeway (P5)",
        (e - at) * 1000.0
    );
    Ok(())
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new("refresh.success", "9.4, 11.2, P5", "a valid token for the same user is accepted; expires_in_ms counts to its exp + leeway", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            let exp = unix_secs() + 1200;
            claims["exp"] = json!(exp);
            let t = ctx.token(&claims).await?;
            let t0 = unix_now();
            let r = c.ok("auth.refresh", &refresh_params(&t)).await?;
            let t1 = unix_now();
            let Some(got) = r.value.get(0).and_then(Value::as_u64) else {
                fail!("the refresh result {} has no expires_in_ms (§11.2)", r.value);
            };
            check_expires(&ctx, got, exp, t0, t1)?;
            c.alive().await
        }),
        Case::new("refresh.no-exp", "9.4, 11.2", "a refresh with a token without exp returns no expires_in_ms", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            claims.as_object_mut().map(|o| o.remove("exp"));
            let t = ctx.token(&claims).await?;
            match c.call("auth.refresh", &refresh_params(&t)).await? {
                Ok(r) => ensure!(r.value.opt(0).is_none(), "expires_in_ms {} for a token without exp", r.value),
                Err(e) if e.code == "unauthenticated" => skip!("the server requires exp (allowed by §9.3)"),
                Err(e) => fail!("refresh answered {}", e.code),
            }
            Ok(())
        }),
        Case::new("refresh.invalid-token", "9.4, 11.2", "a refresh with a bad token is unauthenticated and the session continues", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let t = bad_token(&ctx).await?;
            c.err("auth.refresh", &refresh_params(&t), "unauthenticated").await?;
            c.alive().await
        }),
        Case::new("refresh.expired-token", "9.4", "a refresh with an expired token is unauthenticated and the session continues", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            let l = i64::try_from(ctx.settings().jwt_leeway.as_secs()).unwrap_or(0);
            claims["exp"] = json!(unix_secs() - l - 120);
            let t = ctx.token(&claims).await?;
            c.err("auth.refresh", &refresh_params(&t), "unauthenticated").await?;
            c.alive().await
        }),
        Case::new("refresh.other-user-4003", "9.4, 11.2, 15.1", "a refresh with another user's valid token: forbidden, then closing 4003 and close 4003", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let t = ctx.token(&ctx.claims(&ctx.user("b"))).await?;
            c.err("auth.refresh", &refresh_params(&t), "forbidden").await?;
            c.expect_close(4003, PROMPT).await.map(drop)
        }),
        Case::new("refresh.invalid-params", "11.0, 11.2", "auth.refresh with a token that is not text is invalid_params; the session continues", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.err("auth.refresh", &Value::map([(0, Value::Uint(5))]), "invalid_params").await?;
            c.alive().await
        }),
        Case::new("refresh.widens-capabilities", "9.4, 9.3", "capabilities of the new token apply after the refresh", |ctx| async move {
            let (a, b) = (ctx.topic("a"), ctx.topic("b"));
            let user = ctx.user("a");
            let mut c = ctx.client_with(&ctx.claims_caps(&user, &[], &[&a], false)).await?;
            c.err("publish", &publish(&b, Value::Null), "forbidden").await?;
            let wider = ctx.topic(">");
            let t = ctx.token(&ctx.claims_caps(&user, &[], &[&wider], false)).await?;
            c.ok("auth.refresh", &refresh_params(&t)).await?;
            c.ok("publish", &publish(&b, Value::Null)).await.map(drop)
        }),
        Case::new("refresh.narrows-capabilities", "9.4", "after a refresh to a token without pub, publish is forbidden", |ctx| async move {
            let user = ctx.user("a");
            let mut c = ctx.client("a").await?;
            let t = ctx.topic("t");
            c.ok("publish", &publish(&t, Value::Null)).await?;
            let tok = ctx.token(&ctx.claims_caps(&user, &[">"], &[], false)).await?;
            c.ok("auth.refresh", &refresh_params(&tok)).await?;
            c.err("publish", &publish(&t, Value::Null), "forbidden").await.map(drop)
        }),
        Case::new("refresh.subscriptions-kept", "9.4, 21", "subscriptions made before a refresh are not re-checked against the new capabilities", |ctx| async move {
            let user = ctx.user("a");
            let t = ctx.topic("t");
            let mut c = ctx.client("a").await?;
            subscribe(&mut c, &t).await?;
            let tok = ctx.token(&ctx.claims_caps(&user, &[], &[], false)).await?;
            c.ok("auth.refresh", &refresh_params(&tok)).await?;
            let mut p = ctx.client("p").await?;
            p.ok("publish", &publish(&t, Value::text("still here"))).await?;
            c.event(&t, PROMPT).await.map(drop)
        }),
        Case::new("expiry.token-expiring-schedule", "9.4, 12.5, P5, P6", "token.expiring comes when min(60 s, L/4) of the life to exp + leeway remain, and says so", |ctx| async move {
            wait_out(&ctx, 4)?;
            let accepted = unix_now();
            let (mut c, exp) = short_lived(&ctx, "a", 4).await?;
            expiring_on_schedule(&ctx, &mut c, exp, accepted).await
        })
        .slow(),
        Case::new("expiry.close-4002", "9.4, 15.1", "a token that is not refreshed ends the session at exp + leeway: closing 4002, close 4002", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            closed_at_expiry(&ctx, &mut c, exp).await.map(drop)
        })
        .slow(),
        Case::new("expiry.expiring-once", "12.5", "exactly one token.expiring per token, before the 4002 close", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            let before = closed_at_expiry(&ctx, &mut c, exp).await?;
            let n = before
                .iter()
                .filter(|f| matches!(f, Frame::Notification { method, .. } if method == "token.expiring"))
                .count();
            ensure!(n == 1, "{n} token.expiring notifications for one token (§12.5: once)");
            Ok(())
        })
        .slow(),
        Case::new("expiry.within-leeway-closed-at-exp-plus-leeway", "9.4, P5", "a token accepted under the leeway is closed at exp + leeway, not acceptance + leeway", |ctx| async move {
            let l = ctx.settings().jwt_leeway.as_secs();
            if l < 2 {
                skip!("needs a JWT leeway of at least 2 s (--jwt-leeway-ms)");
            }
            wait_out(&ctx, 0)?;
            let (mut c, exp) = short_lived(&ctx, "a", -1).await?;
            closed_at_expiry(&ctx, &mut c, exp).await.map(drop)
        })
        .slow(),
        Case::new("expiry.refresh-postpones", "9.4", "a refresh before expiry keeps the session past the old exp + leeway", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            claims["exp"] = json!(unix_secs() + 600);
            let t = ctx.token(&claims).await?;
            c.ok("auth.refresh", &refresh_params(&t)).await?;
            let past = exp as f64 + leeway(&ctx) + ctx.tolerance().as_secs_f64() - unix_now();
            c.none_within(Duration::from_secs_f64(past.max(0.0)), "frame", |f| {
                matches!(f, Frame::Notification { method, .. } if method == "closing")
            })
            .await?;
            c.alive().await
        })
        .slow(),
        Case::new("expiry.refresh-to-no-exp", "9.4", "a refresh with a token without exp makes the session non-expiring", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            claims.as_object_mut().map(|o| o.remove("exp"));
            let t = ctx.token(&claims).await?;
            match c.call("auth.refresh", &refresh_params(&t)).await? {
                Ok(_) => {}
                Err(e) if e.code == "unauthenticated" => skip!("the server requires exp (allowed by §9.3)"),
                Err(e) => fail!("refresh answered {}", e.code),
            }
            let past = exp as f64 + leeway(&ctx) + ctx.tolerance().as_secs_f64() - unix_now();
            tokio::time::sleep(Duration::from_secs_f64(past.max(0.0))).await;
            c.alive().await
        })
        .slow(),
        Case::new("expiry.failed-refresh-keeps-expiry", "9.4", "after a failed refresh the old token's expiry still applies", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            let t = bad_token(&ctx).await?;
            c.err("auth.refresh", &refresh_params(&t), "unauthenticated").await?;
            closed_at_expiry(&ctx, &mut c, exp).await.map(drop)
        })
        .slow(),
        Case::new("expiry.refresh-reschedules", "9.4, P6", "a refresh to a short token starts a new token.expiring schedule", |ctx| async move {
            wait_out(&ctx, 4)?;
            let mut c = ctx.client("a").await?;
            let mut claims = ctx.claims(&ctx.user("a"));
            let exp = unix_secs() + 4;
            claims["exp"] = json!(exp);
            let t = ctx.token(&claims).await?;
            let accepted = unix_now();
            c.ok("auth.refresh", &refresh_params(&t)).await?;
            expiring_on_schedule(&ctx, &mut c, exp, accepted).await?;
            closed_at_expiry(&ctx, &mut c, exp).await.map(drop)
        })
        .slow(),
        Case::new("expiry.lingering-close", "9.4, 12.6, P11", "a client that keeps sending still gets closing 4002 and the Close frame, and no reset (lingering close)", |ctx| async move {
            wait_out(&ctx, 2)?;
            let (mut c, exp) = short_lived(&ctx, "a", 2).await?;
            let due = exp as f64 + leeway(&ctx) - unix_now();
            tokio::time::sleep(Duration::from_secs_f64((due - 0.3).max(0.0))).await;
            let spam = spam_cancels(&c);
            let r = c.expect_close(4002, Duration::from_secs(4)).await;
            spam.stop().await;
            let rep = r?;
            ensure!(rep.end != crate::conn::End::Reset, "the connection was reset after the Close frame (P11)");
            Ok(())
        })
        .slow(),
    ]
}
