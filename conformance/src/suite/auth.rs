//! §9 and §11.1: authentication, the auth deadline, instances and the
//! per-user connection limit.

use std::time::{Duration, Instant};

use serde_json::json;

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::{self, Frame};
use crate::jwt;
use crate::runner::ctx::{Limits, auth_params, unix_now, unix_secs};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

/// Connects and authenticates `user` with `instance`.
pub(crate) async fn client_instance(
    ctx: &Ctx,
    user: &str,
    instance: Option<&str>,
) -> CaseResult<Conn> {
    let token = ctx.token(&ctx.claims(user)).await?;
    let mut c = ctx.connect().await?;
    match ctx
        .auth_params(&mut c, auth_params(&token, instance))
        .await?
    {
        Ok(_) => Ok(c),
        Err(e) => fail!("auth failed: {} ({})", e.code, e.message),
    }
}

/// A token the server must reject, with an invalid signature.
pub(crate) async fn bad_token(ctx: &Ctx) -> CaseResult<String> {
    let t = ctx.token(&ctx.claims(&ctx.user("bad"))).await?;
    match jwt::corrupt_signature(&t) {
        Some(t) => Ok(t),
        None => fail!("the token source returned something that is not a JWT"),
    }
}

async fn deadline_case(ctx: Ctx, keep_sending: bool, bad_params_first: bool) -> CaseResult {
    let d = ctx.settings().auth_timeout;
    let tol = ctx.tolerance();
    ctx.require_wait(d + tol, "waiting for the auth deadline")?;
    let mut c = ctx.connect().await?;
    let started = Instant::now();
    if bad_params_first {
        let id = c
            .request("auth", &Value::map([(0, Value::Uint(7))]))
            .await?;
        expect_error(&mut c, id, "invalid_params").await?;
    }
    let spam = if keep_sending {
        // Slower than the rate limit allows, so that only the deadline
        // can close the connection.
        let every = Duration::from_millis((2000 / ctx.limits().rate_per_sec.max(1)).max(50));
        Some(Spam::every(
            &c,
            frame::request(u64::MAX, "ping", &Value::Null),
            every,
        ))
    } else {
        None
    };
    let r = c
        .expect_close(4001, d + tol * 2 + Duration::from_secs(2))
        .await;
    if let Some(s) = spam {
        s.stop().await;
    }
    r?;
    let took = started.elapsed();
    ensure!(
        took + tol >= d,
        "closed with 4001 after {took:?}, before the auth deadline {d:?} (§9.2)"
    );
    ensure!(
        took <= d + tol * 2,
        "closed with 4001 only after {took:?}; the deadline is {d:?} (§9.2)"
    );
    Ok(())
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new("auth.result-shape", "11.1, 10, 9.6", "the auth result has a session id, the token's sub as user, and every limit 0-8 as a uint", |ctx| async move {
            let user = ctx.user("a");
            let token = ctx.token(&ctx.claims(&user)).await?;
            let mut c = ctx.connect().await?;
            let info = match ctx.auth(&mut c, &token).await? {
                Ok(i) => i,
                Err(e) => fail!("auth failed: {}", e.code),
            };
            ensure_eq!(info.user, user, "user (the token's sub, §9.6)");
            let l = Limits::parse(&info.limits).map_err(crate::check::CaseError::Fail)?;
            ensure!(l.max_topic_len <= 1024, "max_topic_len {} is above 1024 (§10)", l.max_topic_len);
            ensure!(l.max_frame_size >= 16384, "max_frame_size {} is below the pre-auth size 16384 (P12)", l.max_frame_size);
            Ok(())
        }),
        Case::new("auth.limits-keys-9-11", "10, P3, P13", "the limits announce max_depth (16-256), max_presence_page and max_in_flight_bytes", |ctx| async move {
            let c = ctx.client("a").await?;
            let limits = c.auth.map(|a| a.limits).unwrap_or(Value::Null);
            for (k, name) in [(9u64, "max_depth"), (10, "max_presence_page"), (11, "max_in_flight_bytes")] {
                ensure!(limits.get(k).and_then(Value::as_u64).is_some(), "limits {limits} lack key {k} ({name})");
            }
            let d = limits.get(9).and_then(Value::as_u64).unwrap_or(0);
            ensure!((16..=256).contains(&d), "max_depth {d} is outside 16-256 (P13)");
            Ok(())
        }),
        Case::new("auth.sessions-unique", "9.6", "two connections get different session ids", |ctx| async move {
            let a = ctx.client("a").await?;
            let b = ctx.client("a").await?;
            ensure!(session_of(&a) != session_of(&b), "both connections got session {:?}", session_of(&a));
            Ok(())
        }),
        Case::new("auth.expires-in-ms", "11.1, 9.4, P5", "expires_in_ms counts to exp plus the server's leeway", |ctx| async move {
            let mut claims = ctx.claims(&ctx.user("a"));
            let exp = unix_secs() + 600;
            claims["exp"] = json!(exp);
            let token = ctx.token(&claims).await?;
            let mut c = ctx.connect().await?;
            let t0 = unix_now();
            let info = match ctx.auth(&mut c, &token).await? {
                Ok(i) => i,
                Err(e) => fail!("auth failed: {}", e.code),
            };
            let t1 = unix_now();
            let Some(got) = info.expires_in_ms else {
                fail!("a token with exp got no expires_in_ms (§11.1)");
            };
            check_expires(&ctx, got, exp, t0, t1)
        }),
        Case::new("auth.no-exp", "11.1, 9.3", "a token without exp is accepted without expires_in_ms (or refused with 4000 by a server that requires exp)", |ctx| async move {
            let mut claims = ctx.claims(&ctx.user("a"));
            claims.as_object_mut().map(|o| o.remove("exp"));
            let token = ctx.token(&claims).await?;
            let mut c = ctx.connect().await?;
            match ctx.auth(&mut c, &token).await? {
                Ok(i) => {
                    ensure!(i.expires_in_ms.is_none(), "expires_in_ms {:?} for a token without exp", i.expires_in_ms);
                    Ok(())
                }
                Err(e) => {
                    ensure_eq!(e.code, "unauthenticated", "error code");
                    c.expect_close(4000, PROMPT).await?;
                    skip!("the server requires exp (allowed by §9.3)")
                }
            }
        }),
        Case::new("auth.request-before-auth", "9.2", "a request before auth is answered unauthenticated and the connection stays open", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.err("ping", &Value::Null, "unauthenticated").await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "auth failed after an unauthenticated request");
            c.alive().await
        }),
        Case::new("auth.unknown-method-before-auth", "11.0, P1", "an unknown method before auth is unauthenticated (checked before method_not_found)", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.err("no.such.method", &Value::Null, "unauthenticated").await.map(drop)
        }),
        Case::new("auth.refresh-before-auth", "11.2, P1", "auth.refresh before auth is unauthenticated and the connection stays open", |ctx| async move {
            let mut c = ctx.connect().await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            c.err("auth.refresh", &Value::map([(0, Value::text(&token))]), "unauthenticated").await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "auth failed afterwards");
            Ok(())
        }),
        Case::new("auth.notifications-before-auth-ignored", "9.2, 12.7", "notifications before auth are ignored", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.notify("cancel", &cancel(1)).await?;
            c.notify("some.future.notification", &Value::Uint(1)).await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "auth failed");
            c.alive().await?;
            let stray = c.take_kept();
            ensure!(stray.is_empty(), "answered: {:?}", stray.iter().map(Frame::describe).collect::<Vec<_>>());
            Ok(())
        }),
        Case::new("auth.chunks-before-auth-ignored", "9.2, 7.4", "chunks before auth are ignored", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.send(&frame::chunk(1, 0, false, &Value::Bytes(vec![1, 2]))).await?;
            c.send(&frame::chunk(1, 1, true, &Value::Null)).await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "auth failed");
            c.alive().await?;
            ensure!(c.take_kept().is_empty(), "the server answered a chunk");
            Ok(())
        }),
        Case::new("auth.responses-before-auth-ignored", "9.2, 5.1", "a response frame from the client before auth is ignored", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.send(&frame::response_ok(1, &Value::Null)).await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "auth failed");
            c.alive().await
        }),
        Case::new("auth.invalid-params-stays-open", "11.1", "auth with invalid params is invalid_params; a corrected auth then succeeds", |ctx| async move {
            let mut c = ctx.connect().await?;
            c.err("auth", &Value::map([(0, Value::Uint(42))]), "invalid_params").await?;
            c.err("auth", &Value::Null, "invalid_params").await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            ensure!(ctx.auth(&mut c, &token).await?.is_ok(), "the corrected auth failed");
            c.alive().await
        }),
        Case::new("auth.conflict-when-authenticated", "9.2, 11.0, 11.1", "a second auth is answered conflict and the session is unaffected", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            c.err("auth", &auth_params(&token, None), "conflict").await?;
            let t = ctx.topic("t");
            subscribe(&mut c, &t).await?;
            c.alive().await
        }),
        Case::new("auth.conflict-before-invalid-params", "11.0, P1", "after auth, auth with invalid params is conflict (checked before params)", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.err("auth", &Value::Null, "conflict").await.map(drop)
        }),
        Case::new("auth.failed-4000", "9.2, 11.1, 15.1", "a bad token: unauthenticated, then closing 4000 and close 4000 auth_failed", |ctx| async move {
            let token = bad_token(&ctx).await?;
            let mut c = ctx.connect().await?;
            c.err("auth", &auth_params(&token, None), "unauthenticated").await?;
            c.expect_close(4000, PROMPT).await.map(drop)
        }),
        Case::new("auth.failure-hides-token", "21", "neither the error message nor the closing reason contain the token", |ctx| async move {
            let token = bad_token(&ctx).await?;
            let mut c = ctx.connect().await?;
            let e = c.err("auth", &auth_params(&token, None), "unauthenticated").await?;
            let rep = c.expect_close(4000, PROMPT).await?;
            let reason = rep.closing.as_ref().and_then(|p| p.get(1)).and_then(Value::as_str).unwrap_or("").to_owned();
            let parts: Vec<&str> = token.split('.').filter(|p| p.len() > 8).collect();
            for text in [&e.message, &reason, &rep.reason] {
                ensure!(
                    !parts.iter().any(|p| text.contains(p)),
                    "a message repeats part of the token: {text:?} (§21)"
                );
            }
            Ok(())
        }),
        Case::new("auth.pipelined-after-auth", "9.2", "requests sent right after auth, without waiting, are handled after it succeeds", |ctx| async move {
            let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            let mut c = ctx.connect().await?;
            let aid = c.request("auth", &auth_params(&token, None)).await?;
            let mut ids = Vec::new();
            for i in 0..5u64 {
                ids.push(c.request("ping", &Value::Uint(i)).await?);
            }
            expect_ok(&mut c, aid).await?;
            for id in ids {
                expect_ok(&mut c, id).await?;
            }
            Ok(())
        }),
        Case::new("auth.pipelined-after-failed-auth", "9.2, 12.6", "requests sent right after a failing auth are never answered", |ctx| async move {
            let token = bad_token(&ctx).await?;
            let mut c = ctx.connect().await?;
            let mut bytes = frame::request(1, "auth", &auth_params(&token, None));
            c.send(&bytes).await?;
            for id in 2..5u64 {
                bytes = frame::request(id, "ping", &Value::Null);
                c.send_lossy(&bytes).await;
            }
            let rep = c.expect_close(4000, PROMPT).await?;
            for f in &rep.before {
                if let Frame::Response { id, .. } = f {
                    ensure!(*id == 1, "request {id}, sent after the failing auth, was answered: {}", f.describe());
                }
            }
            Ok(())
        }),
        Case::new("auth.instance-replaces-4009", "9.5, 15.1", "a newer connection with the same user and instance replaces the older: closing 4009, close 4009", |ctx| async move {
            let user = ctx.user("a");
            let mut old = client_instance(&ctx, &user, Some("tab-1")).await?;
            let mut new = client_instance(&ctx, &user, Some("tab-1")).await?;
            old.expect_close(4009, PROMPT).await?;
            new.alive().await
        }),
        Case::new("auth.no-instance-no-replace", "9.5", "connections without instance never replace each other", |ctx| async move {
            let user = ctx.user("a");
            let mut a = client_instance(&ctx, &user, None).await?;
            let mut b = client_instance(&ctx, &user, None).await?;
            a.alive().await?;
            b.alive().await
        }),
        Case::new("auth.other-instance-no-replace", "9.5", "the same user with another instance does not replace", |ctx| async move {
            let user = ctx.user("a");
            let mut a = client_instance(&ctx, &user, Some("tab-1")).await?;
            let mut b = client_instance(&ctx, &user, Some("tab-2")).await?;
            a.alive().await?;
            b.alive().await
        }),
        Case::new("auth.other-user-same-instance", "9.5", "another user with the same instance does not replace", |ctx| async move {
            let mut a = client_instance(&ctx, &ctx.user("a"), Some("tab-1")).await?;
            let mut b = client_instance(&ctx, &ctx.user("b"), Some("tab-1")).await?;
            a.alive().await?;
            b.alive().await
        }),
        Case::new("auth.per-user-limit-4004", "9.7, 15.1", "one connection more than the per-user limit gets closing 4004 and close 4004, and no auth response", |ctx| async move {
            let n = ctx.settings().max_connections_per_user;
            if n > 512 {
                skip!("the per-user limit {n} is too high to reach here (--max-connections-per-user)");
            }
            let user = ctx.user("a");
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(client_instance(&ctx, &user, None).await?);
            }
            let token = ctx.token(&ctx.claims(&user)).await?;
            let mut c = ctx.connect().await?;
            let id = c.request("auth", &auth_params(&token, None)).await?;
            let rep = c.expect_close(4004, PROMPT).await?;
            ensure!(
                !rep.before.iter().any(|f| f.reply_id() == Some(id)),
                "the refused auth was answered (§9.7 says it is not)"
            );
            held[0].alive().await
        }),
        Case::new("auth.per-user-limit-replacement", "9.7, 9.5", "at the per-user limit, a connection replacing one of the user's succeeds", |ctx| async move {
            let n = ctx.settings().max_connections_per_user;
            if n > 512 {
                skip!("the per-user limit {n} is too high to reach here");
            }
            let user = ctx.user("a");
            let mut first = client_instance(&ctx, &user, Some("dev-1")).await?;
            let mut held = Vec::new();
            for _ in 1..n {
                held.push(client_instance(&ctx, &user, None).await?);
            }
            let mut c = client_instance(&ctx, &user, Some("dev-1")).await?;
            first.expect_close(4009, PROMPT).await?;
            c.alive().await
        }),
        Case::new("auth.deadline-4001", "9.2, 15.1", "a connection that does not authenticate is closed at the auth deadline: closing 4001, close 4001", |ctx| async move {
            deadline_case(ctx, false, false).await
        })
        .slow(),
        Case::new("auth.deadline-despite-requests", "9.2", "requests answered unauthenticated do not postpone the auth deadline", |ctx| async move {
            deadline_case(ctx, true, false).await
        })
        .slow(),
        Case::new("auth.deadline-after-invalid-params", "9.2, 11.1", "an auth with invalid params does not postpone the auth deadline", |ctx| async move {
            deadline_case(ctx, false, true).await
        })
        .slow(),
        Case::new("auth.deadline-not-after-success", "9.2", "an authenticated connection outlives the auth deadline", |ctx| async move {
            let d = ctx.settings().auth_timeout + ctx.tolerance();
            ctx.require_wait(d, "outliving the auth deadline")?;
            let mut c = ctx.client("a").await?;
            tokio::time::sleep(d).await;
            c.alive().await
        })
        .slow(),
    ]
}

/// Checks an `expires_in_ms` (P5): the time from acceptance (between `t0`
/// and `t1`) to `exp` + leeway.
pub(crate) fn check_expires(ctx: &Ctx, got: u64, exp: i64, t0: f64, t1: f64) -> CaseResult {
    let leeway = ctx.settings().jwt_leeway.as_secs_f64();
    let tol = ctx.tolerance().as_secs_f64();
    let e = exp as f64 + leeway;
    let (lo, hi) = ((e - t1 - tol) * 1000.0, (e - t0 + tol) * 1000.0);
    #[allow(clippy::cast_precision_loss)]
    let g = got as f64;
    ensure!(
        g >= lo && g <= hi,
        "expires_in_ms {got}, expected {:.0}–{:.0}: the time to exp + leeway ({} ms, P5)",
        lo.max(0.0),
        hi,
        ctx.settings().jwt_leeway.as_millis()
    );
    Ok(())
}
