//! §14: the error object and every error code a server can be made to
//! send.

use std::time::{Duration, Instant};

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::frame::ErrorObject;
use crate::runner::Case;
use crate::{ensure, ensure_eq, fail, skip};

/// Most requests past the burst that `errors.rate-limited` sends, for the
/// tokens refilled while it sends (and always fewer than the consecutive
/// refusals that close the connection, §17).
const RATE_MARGIN: u64 = 40;

/// Checks the parts of an error object every code shares (§14.1).
fn shape(e: &ErrorObject, code: &str) -> CaseResult {
    ensure_eq!(e.code, code, "code");
    ensure!(
        e.code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
        "code {:?} is not a lowercase string (§14.2)",
        e.code
    );
    ensure!(
        !e.message.is_empty(),
        "error {} has an empty message (§14.1)",
        e.code
    );
    Ok(())
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "errors.invalid-params",
            "14.2, 4.8",
            "params of the wrong type: invalid_params, and the connection stays",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let e = c
                    .err(
                        "subscribe",
                        &Value::map([(0, Value::Uint(5))]),
                        "invalid_params",
                    )
                    .await?;
                shape(&e, "invalid_params")?;
                c.alive().await
            },
        ),
        Case::new(
            "errors.unauthenticated",
            "14.2, 9.2",
            "a request before auth: unauthenticated",
            |ctx| async move {
                let mut c = ctx.connect().await?;
                let e = c
                    .err("subscribe", &topic(&ctx.topic("t")), "unauthenticated")
                    .await?;
                shape(&e, "unauthenticated")
            },
        ),
        Case::new(
            "errors.forbidden",
            "14.2, 9.3",
            "an operation the capabilities do not allow: forbidden",
            |ctx| async move {
                let mut c = ctx
                    .client_with(&ctx.claims_caps(&ctx.user("a"), &[], &[], false))
                    .await?;
                let e = c
                    .err("subscribe", &topic(&ctx.topic("t")), "forbidden")
                    .await?;
                shape(&e, "forbidden")
            },
        ),
        Case::new(
            "errors.not-found",
            "14.2, 11.5",
            "unsubscribing what is not subscribed: not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let e = c
                    .err("unsubscribe", &topic(&ctx.topic("t")), "not_found")
                    .await?;
                shape(&e, "not_found")
            },
        ),
        Case::new(
            "errors.method-not-found",
            "14.2, 12.7, 20",
            "an unknown method (a later version's, say): method_not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let e = c
                    .err("history.get", &topic(&ctx.topic("t")), "method_not_found")
                    .await?;
                shape(&e, "method_not_found")?;
                c.alive().await
            },
        ),
        Case::new(
            "errors.conflict",
            "14.2, 11.4",
            "a second subscribe to one pattern: conflict",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let t = ctx.topic("t");
                subscribe(&mut c, &t).await?;
                let e = c.err("subscribe", &topic(&t), "conflict").await?;
                shape(&e, "conflict")
            },
        ),
        Case::new(
            "errors.payload-too-large",
            "14.2, 13.1",
            "a topic over max_topic_len: payload_too_large",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let max = usize::try_from(ctx.limits().max_topic_len).unwrap_or(1024);
                let e = c
                    .err(
                        "publish",
                        &publish(&format!("{}.{}", ctx.ns(), "y".repeat(max)), Value::Null),
                        "payload_too_large",
                    )
                    .await?;
                shape(&e, "payload_too_large")
            },
        ),
        Case::new(
            "errors.rate-limited",
            "14.2, 14.1, 17",
            "a request beyond the burst: rate_limited, always with retry_after_ms",
            |ctx| async move {
                let b = ctx.limits().rate_burst;
                if b > 5000 {
                    skip!("rate_burst {b} is too large to exhaust here");
                }
                let margin =
                    RATE_MARGIN.min(u64::from(ctx.settings().rate_strikes.saturating_sub(1)));
                let mut c = ctx.client("a").await?;
                let mut ids = Vec::new();
                // The bucket refills while the requests go out (a loaded
                // machine sends 200 requests in more than the 10 ms one
                // token takes at 100/s): go past the burst by a margin,
                // kept under the 50 consecutive refusals that close the
                // connection (§17).
                for _ in 0..b + 1 + margin {
                    ids.push(c.request("ping", &Value::Null).await?);
                }
                for id in ids {
                    if let Err(e) = c.response(id, PROMPT).await? {
                        shape(&e, "rate_limited")?;
                        ensure!(
                            e.retry_after_ms.is_some(),
                            "rate_limited without retry_after_ms (§14.1)"
                        );
                        return Ok(());
                    }
                }
                fail!(
                    "{} requests at once, none rate_limited (rate_burst {b})",
                    b + 1 + margin
                )
            },
        ),
        Case::new(
            "errors.too-many-requests",
            "14.2, 6.2",
            "a request beyond max_in_flight: too_many_requests",
            |ctx| async move {
                match super::requests::with_full_window(&ctx, "debug.sleep", sleep(1)).await? {
                    Err(e) => shape(&e, "too_many_requests"),
                    Ok(r) => fail!("succeeded with {}", r.value),
                }
            },
        ),
        Case::new(
            "errors.cancelled",
            "14.2, 8",
            "a cancelled request: cancelled",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                super::requests::sleep_in_flight(&mut c, 8, 5000).await?;
                c.notify("cancel", &cancel(8)).await?;
                let e = expect_error(&mut c, 8, "cancelled").await?;
                shape(&e, "cancelled")
            },
        ),
        Case::new(
            "errors.timeout",
            "14.2",
            "a request running past the server's time limit: timeout",
            |ctx| async move {
                let limit = ctx.settings().request_timeout;
                ctx.require_wait(
                    limit + ctx.tolerance(),
                    "running past the request time limit",
                )?;
                let mut c = ctx.client("a").await?;
                let ms =
                    u64::try_from((limit + Duration::from_secs(2)).as_millis()).unwrap_or(u64::MAX);
                let started = Instant::now();
                let id = c.request("debug.sleep", &sleep(ms)).await?;
                let r = c
                    .response(id, limit + ctx.tolerance() * 2 + Duration::from_secs(1))
                    .await?;
                ctx.debug_check("debug.sleep", &r)?;
                match r {
                    Err(e) => shape(&e, "timeout")?,
                    Ok(_) => fail!("a {ms} ms request succeeded under a {limit:?} time limit"),
                }
                ensure!(
                    started.elapsed() + ctx.tolerance() >= limit,
                    "timed out after {:?}, before the limit {limit:?}",
                    started.elapsed()
                );
                Ok(())
            },
        )
        .slow(),
        Case::new(
            "errors.internal",
            "14.2",
            "a failing handler: internal, and the connection and the server carry on",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let r = ctx.debug(&mut c, "debug.panic", &Value::Null).await?;
                match r {
                    Err(e) => shape(&e, "internal")?,
                    Ok(v) => fail!("debug.panic succeeded with {}", v.value),
                }
                c.alive().await?;
                let mut other = ctx.client("b").await?;
                other.alive().await
            },
        ),
        Case::new(
            "errors.unknown-error-keys",
            "14.1, 4.8",
            "error objects carry key 0 and key 1 as text and optional keys of their types",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let e = c
                    .err("unsubscribe", &topic(&ctx.topic("t")), "not_found")
                    .await?;
                ensure!(!e.message.is_empty(), "an empty message");
                if let Some(d) = e.value.get(2) {
                    ensure!(
                        d.is_null() || d.as_u64().is_some(),
                        "retry_after_ms {d} is not a uint"
                    );
                }
                Ok(())
            },
        ),
    ]
}
