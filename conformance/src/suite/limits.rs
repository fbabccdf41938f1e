//! §4.6 and §10: the frame size before and after auth, and every
//! announced limit with its answer.

use std::time::Duration;

use super::util::*;
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::frame;
use crate::runner::ctx::AGENT;
use crate::runner::{Case, Ctx};
use crate::ws::{OP_BINARY, OP_TEXT, encode_frame};
use crate::{ensure, ensure_eq, fail, skip};

fn usize_of(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// Skips when a frame of `n` bytes is too much to build here.
fn buildable(n: u64) -> CaseResult<usize> {
    if n > 64 * 1024 * 1024 {
        skip!("a frame of {n} bytes is too large to build here");
    }
    Ok(usize_of(n))
}

/// A topic of exactly `len` bytes in the case's namespace.
fn topic_len(ctx: &Ctx, len: u64) -> CaseResult<String> {
    match topic_of_len(&ctx.ns(), usize_of(len)) {
        Some(t) => Ok(t),
        None => skip!("max_topic_len {len} is shorter than the case's topic namespace"),
    }
}

/// An `auth` request of exactly `size` bytes (padded with an unknown key).
fn auth_of_size(token: &str, size: usize) -> Option<Vec<u8>> {
    for wrap in 0..2u64 {
        let base = frame::request(1, "auth", &auth_pad(token, 0, wrap)).len();
        let most = size.checked_sub(base)?;
        for n in (most.saturating_sub(12)..=most).rev() {
            let f = frame::request(1, "auth", &auth_pad(token, n, wrap));
            if f.len() == size {
                return Some(f);
            }
        }
    }
    None
}

fn auth_pad(token: &str, n: usize, extra: u64) -> Value {
    let mut m = vec![
        (0, Value::text(token)),
        (2, Value::text(AGENT)),
        (99, Value::Bytes(vec![0; n])),
    ];
    if extra > 0 {
        m.push((98, Value::Uint(0)));
    }
    Value::map(m)
}

/// A `publish` of data encoded in exactly `size` bytes.
fn data_of_size(size: usize) -> Option<Value> {
    for n in (size.saturating_sub(9)..=size).rev() {
        let v = Value::Bytes(vec![0x11; n]);
        if crate::cbor::encode(&v).len() == size {
            return Some(v);
        }
    }
    None
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new("size.preauth-at-limit", "4.6, 9.2, P12", "before auth a frame of exactly the pre-auth size (16384) is accepted", |ctx| async move {
            let size = ctx.settings().preauth_frame_size;
            let t = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
            let Some(f) = auth_of_size(&t, size) else {
                fail!("cannot build an auth frame of {size} bytes");
            };
            let mut c = ctx.connect().await?;
            c.send(&f).await?;
            let r = expect_ok(&mut c, 1).await?;
            crate::runner::ctx::auth_info(&r).map(drop)
        }),
        Case::new("size.preauth-over-1009", "4.6, 5.6, 15.1", "before auth a frame one byte over the pre-auth size closes with 1009, without closing", |ctx| async move {
            let size = ctx.settings().preauth_frame_size + 1;
            let mut c = ctx.connect().await?;
            c.send_lossy(&frame::ping_of_size(1, size).unwrap_or_default()).await;
            c.expect_close(1009, PROMPT).await.map(drop)
        }),
        Case::new("size.preauth-header-refused", "4.6, 21, P12", "before auth a frame header announcing 1 MiB is refused with 1009 before its payload is sent", |ctx| async move {
            let mut c = ctx.connect().await?;
            // The header and a little of the payload; the rest never comes.
            let mut head = encode_frame(true, 0, OP_BINARY, Some([1, 2, 3, 4]), &vec![0; 1 << 20]);
            head.truncate(14 + 1000);
            c.send_raw(&head).await?;
            c.expect_close(1009, Duration::from_secs(3)).await.map(drop)
        }),
        Case::new("size.after-auth-larger-frames", "4.6", "after auth frames above 16384 bytes (up to max_frame_size) are accepted", |ctx| async move {
            let max = ctx.limits().max_frame_size;
            if max <= 20_000 {
                skip!("max_frame_size {max} leaves no room above the pre-auth size");
            }
            let mut c = ctx.client("a").await?;
            c.send(&frame::ping_of_size(5, 20_000).unwrap_or_default()).await?;
            expect_ok(&mut c, 5).await.map(drop)
        }),
        Case::new("size.at-max-frame-size", "4.6", "after auth a frame of exactly max_frame_size is accepted", |ctx| async move {
            let max = buildable(ctx.limits().max_frame_size)?;
            let mut c = ctx.client("a").await?;
            let Some(f) = frame::ping_of_size(5, max) else {
                fail!("cannot build a {max}-byte ping");
            };
            c.send(&f).await?;
            expect_ok(&mut c, 5).await.map(drop)
        }),
        Case::new("size.over-max-frame-size-1009", "4.6, 5.6, 15.1", "after auth a frame one byte over max_frame_size closes with 1009, without closing", |ctx| async move {
            let max = buildable(ctx.limits().max_frame_size)?;
            let mut c = ctx.client("a").await?;
            c.send_lossy(&frame::ping_of_size(5, max + 1).unwrap_or_default()).await;
            c.expect_close(1009, PROMPT).await.map(drop)
        }),
        Case::new("size.text-oversized-1009", "5.6, P8", "an oversized text message closes with 1009 (size is checked before the type)", |ctx| async move {
            let max = buildable(ctx.limits().max_frame_size)?;
            let mut c = ctx.client("a").await?;
            let _ = c.ws_frame(true, 0, OP_TEXT, true, &vec![b'a'; max + 1]).await;
            c.expect_close(1009, PROMPT).await.map(drop)
        }),
        Case::new("size.event-within-frame-size", "4.6, H1", "a publish at every limit at once (longest topic, largest payload, 256-byte user) never yields an oversized event", |ctx| async move {
            let l = ctx.limits().clone();
            let t = topic_len(&ctx, l.max_topic_len)?;
            let user = format!("{}{}", ctx.user("u"), "u".repeat(256)).chars().take(256).collect::<String>();
            let mut s = ctx.client("s").await?;
            subscribe(&mut s, &t).await?;
            let mut p = ctx.client_with(&ctx.claims(&user)).await?;
            let room = l.max_frame_size.saturating_sub(l.max_topic_len + 64);
            let size = usize_of(l.max_payload.min(room));
            let Some(data) = data_of_size(size) else {
                fail!("cannot build data of {size} bytes");
            };
            match p.call("publish", &publish(&t, data)).await? {
                Ok(_) => s.event(&t, PROMPT).await.map(drop),
                // Refusing is allowed; sending an oversized frame is not
                // (Conn fails the case on one).
                Err(e) => {
                    ensure!(e.code != "internal", "publish at the limits answered internal ({})", e.message);
                    Ok(())
                }
            }
        }),
        Case::new("limits.topic-at-max", "10, 13.1", "a topic of exactly max_topic_len bytes can be subscribed to and published on", |ctx| async move {
            let t = topic_len(&ctx, ctx.limits().max_topic_len)?;
            let mut c = ctx.client("a").await?;
            subscribe(&mut c, &t).await?;
            c.ok("publish", &publish(&t, Value::Null)).await?;
            c.event(&t, PROMPT).await.map(drop)
        }),
        Case::new("limits.topic-over-subscribe", "10, 11.4, 13.1", "subscribe to a pattern one byte over max_topic_len is payload_too_large", |ctx| async move {
            let t = topic_len(&ctx, ctx.limits().max_topic_len + 1)?;
            let mut c = ctx.client("a").await?;
            c.err("subscribe", &topic(&t), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.topic-over-publish", "10, 11.6", "publish on a topic one byte over max_topic_len is payload_too_large", |ctx| async move {
            let t = topic_len(&ctx, ctx.limits().max_topic_len + 1)?;
            let mut c = ctx.client("a").await?;
            c.err("publish", &publish(&t, Value::Null), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.topic-over-presence-get", "10, 11.7", "presence.get on a topic one byte over max_topic_len is payload_too_large", |ctx| async move {
            let t = topic_len(&ctx, ctx.limits().max_topic_len + 1)?;
            let mut c = ctx.client("a").await?;
            c.err("presence.get", &topic(&t), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.topic-counts-utf8-bytes", "13.1", "topic length is counted in UTF-8 bytes: two-byte characters up to the limit pass, one more fails", |ctx| async move {
            let max = usize_of(ctx.limits().max_topic_len);
            let ns = ctx.ns();
            let room = max.checked_sub(ns.len() + 1).filter(|r| *r >= 4).ok_or_else(|| CaseError::Skip("no room for the topic".into()))?;
            let fill = "é".repeat(room / 2);
            let fits = format!("{ns}.{fill}{}", if room % 2 == 1 { "x" } else { "" });
            ensure_eq!(fits.len(), max, "built topic length");
            let over = format!("{ns}.{fill}é");
            let mut c = ctx.client("a").await?;
            subscribe(&mut c, &fits).await?;
            if over.len() > max {
                c.err("subscribe", &topic(&over), "payload_too_large").await?;
            }
            Ok(())
        }),
        Case::new("limits.topic-length-before-syntax", "11.4, 13.1", "an over-long invalid pattern is payload_too_large (length is checked first)", |ctx| async move {
            let max = usize_of(ctx.limits().max_topic_len);
            let t = format!("{}..{}", ctx.ns(), "x".repeat(max));
            let mut c = ctx.client("a").await?;
            c.err("subscribe", &topic(&t), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.payload-at-max", "10, 11.6", "data of exactly max_payload encoded bytes is published", |ctx| async move {
            let l = ctx.limits().clone();
            if l.max_payload + 512 > l.max_frame_size {
                skip!("max_payload {} does not fit a frame of max_frame_size {} with its envelope", l.max_payload, l.max_frame_size);
            }
            let size = buildable(l.max_payload)?;
            let Some(data) = data_of_size(size) else {
                fail!("cannot build data of {size} bytes");
            };
            let t = ctx.topic("t");
            let mut s = ctx.client("s").await?;
            subscribe(&mut s, &t).await?;
            let mut p = ctx.client("p").await?;
            p.ok("publish", &publish(&t, data)).await?;
            s.event(&t, PROMPT).await.map(drop)
        }),
        Case::new("limits.payload-over", "10, 11.6, 14.2", "data one byte over max_payload is payload_too_large", |ctx| async move {
            let l = ctx.limits().clone();
            if l.max_payload + 512 > l.max_frame_size {
                skip!("max_payload {} + 1 does not fit a frame", l.max_payload);
            }
            let Some(data) = data_of_size(buildable(l.max_payload + 1)?) else {
                fail!("cannot build the data");
            };
            let mut p = ctx.client("p").await?;
            p.err("publish", &publish(&ctx.topic("t"), data), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.payload-after-topic-check", "11.6", "an invalid topic with oversized data is invalid_params (the topic is checked first)", |ctx| async move {
            let l = ctx.limits().clone();
            if l.max_payload + 512 > l.max_frame_size {
                skip!("max_payload {} + 1 does not fit a frame", l.max_payload);
            }
            let Some(data) = data_of_size(buildable(l.max_payload + 1)?) else {
                fail!("cannot build the data");
            };
            let mut p = ctx.client("p").await?;
            p.err("publish", &publish(&ctx.topic("*"), data), "invalid_params").await.map(drop)
        }),
        Case::new("limits.payload-before-forbidden", "11.6", "oversized data on a topic without pub capability is payload_too_large (size before capability)", |ctx| async move {
            let l = ctx.limits().clone();
            if l.max_payload + 512 > l.max_frame_size {
                skip!("max_payload {} + 1 does not fit a frame", l.max_payload);
            }
            let Some(data) = data_of_size(buildable(l.max_payload + 1)?) else {
                fail!("cannot build the data");
            };
            let mut p = ctx.client_with(&ctx.claims_caps(&ctx.user("p"), &[], &[], false)).await?;
            p.err("publish", &publish(&ctx.topic("t"), data), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.presence-info-at-max", "10, 11.8", "info of exactly max_presence_info encoded bytes is accepted", |ctx| async move {
            let Some(v) = data_of_size(buildable(ctx.limits().max_presence_info)?) else {
                fail!("cannot build the info");
            };
            let mut c = ctx.client("a").await?;
            c.ok("presence.set", &info(v)).await.map(drop)
        }),
        Case::new("limits.presence-info-over", "10, 11.8", "info one byte over max_presence_info is payload_too_large", |ctx| async move {
            let Some(v) = data_of_size(buildable(ctx.limits().max_presence_info + 1)?) else {
                fail!("cannot build the info");
            };
            let mut c = ctx.client("a").await?;
            c.err("presence.set", &info(v), "payload_too_large").await.map(drop)
        }),
        Case::new("limits.presence-info-forbidden-first", "11.8", "oversized info without the presence capability is forbidden (capability first)", |ctx| async move {
            let Some(v) = data_of_size(buildable(ctx.limits().max_presence_info + 1)?) else {
                fail!("cannot build the info");
            };
            let mut c = ctx.client_with(&ctx.claims_caps(&ctx.user("a"), &[">"], &[">"], false)).await?;
            c.err("presence.set", &info(v), "forbidden").await.map(drop)
        }),
        Case::new("limits.subscriptions", "10, 11.4, 14.2", "max_subscriptions subscriptions are accepted, one more is too_many_requests", |ctx| async move {
            let n = ctx.limits().max_subscriptions;
            paced_subscriptions(&ctx, n).await?;
            Ok(())
        })
        .slow(),
        Case::new("limits.subscriptions-freed", "10, 11.5", "after an unsubscribe at max_subscriptions, a new subscription is accepted", |ctx| async move {
            let n = ctx.limits().max_subscriptions;
            let mut c = paced_subscriptions(&ctx, n).await?;
            if let Err(e) = call_paced(&mut c, "unsubscribe", &topic(&ctx.topic("s0"))).await? {
                fail!("unsubscribe answered {}", e.code);
            }
            match call_paced(&mut c, "subscribe", &topic(&ctx.topic("again"))).await? {
                Ok(_) => Ok(()),
                Err(e) => fail!("a subscription after an unsubscribe answered {}", e.code),
            }
        })
        .slow(),
        Case::new("limits.subscriptions-conflict-first", "11.4", "at max_subscriptions, subscribing an existing pattern is conflict (checked before the count)", |ctx| async move {
            let n = ctx.limits().max_subscriptions;
            let mut c = paced_subscriptions(&ctx, n).await?;
            match call_paced(&mut c, "subscribe", &topic(&ctx.topic("s0"))).await? {
                Err(e) => ensure_eq!(e.code, "conflict", "error code at max_subscriptions"),
                Ok(_) => fail!("a duplicate subscription was accepted"),
            }
            Ok(())
        })
        .slow(),
        Case::new("limits.unsubscribe-long-name", "11.5, P15", "unsubscribe of a 2000-byte name is not_found (no length bound)", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.err("unsubscribe", &topic(&"x".repeat(2000)), "not_found").await.map(drop)
        }),
        Case::new("limits.depth-announced", "4.4, P13", "a frame nested exactly max_depth deep is accepted; one level more closes with 4005", |ctx| async move {
            let d = ctx.limits().depth();
            if d > 1000 {
                skip!("max_depth {d} is too deep to build");
            }
            let nest = |levels: u64| {
                // [0, id, "ping", params]: params at depth 2, so an empty
                // array wrapped `levels - 2` times reaches depth `levels`.
                let mut v = Value::Array(Vec::new());
                for _ in 0..levels.saturating_sub(2) {
                    v = Value::Array(vec![v]);
                }
                v
            };
            let mut c = ctx.client("a").await?;
            c.send(&frame::request(3, "ping", &nest(d))).await?;
            expect_ok(&mut c, 3).await?;
            c.send(&frame::request(4, "ping", &nest(d + 1))).await?;
            c.expect_close(4005, PROMPT).await.map(drop)
        }),
    ]
}

/// Subscribes to `n` topics (pacing by the rate limit), then checks one
/// more is too_many_requests; returns the connection.
async fn paced_subscriptions(ctx: &Ctx, n: u64) -> CaseResult<crate::conn::Conn> {
    let l = ctx.limits();
    let rate = l.rate_per_sec.max(1);
    let beyond = (n + 2).saturating_sub(l.rate_burst.saturating_sub(2));
    ctx.require_wait(
        Duration::from_millis(beyond * 1000 / rate),
        "subscribing up to max_subscriptions",
    )?;
    if n > 20_000 {
        skip!("max_subscriptions {n} is too many to reach here");
    }
    let mut c = ctx.client("a").await?;
    for i in 0..n {
        if let Err(e) =
            call_paced(&mut c, "subscribe", &topic(&ctx.topic(&format!("s{i}")))).await?
        {
            fail!(
                "subscription {i} of {n} answered {} ({})",
                e.code,
                e.message
            );
        }
    }
    match call_paced(&mut c, "subscribe", &topic(&ctx.topic("one-more"))).await? {
        Err(e) if e.code == "too_many_requests" => Ok(c),
        Err(e) => fail!(
            "subscription {} answered {}, expected too_many_requests",
            n + 1,
            e.code
        ),
        Ok(_) => fail!(
            "subscription {} of max_subscriptions {n} was accepted",
            n + 1
        ),
    }
}
