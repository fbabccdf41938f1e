//! §11.4–§11.6, §12.1, §13: subscribe, unsubscribe, publish, events,
//! topics and wildcard matching.

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::Frame;
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq};

/// Whether a frame is an `event` on `topic`.
fn event_on(topic: &str) -> impl Fn(&Frame) -> bool + '_ {
    move |f| matches!(f, Frame::Notification { method, params } if method == "event" && params.value.get(0).and_then(Value::as_str) == Some(topic))
}

/// Subscribes a fresh connection to `pattern`, publishes on each topic,
/// and checks which ones arrive.
async fn matching(ctx: &Ctx, pattern: &str, hits: &[String], misses: &[String]) -> CaseResult {
    let mut s = ctx.client("s").await?;
    subscribe(&mut s, pattern).await?;
    let mut p = ctx.client("p").await?;
    for t in misses.iter().chain(hits) {
        p.ok("publish", &publish(t, Value::text(t.clone()))).await?;
    }
    for t in hits {
        s.event(t, PROMPT)
            .await
            .map_err(|e| e.context(format!("{pattern} should match {t} (§13.3)")))?;
    }
    for t in misses {
        s.none_within(
            QUIET,
            &format!("event on {t}, which {pattern} does not match (§13.3)"),
            event_on(t),
        )
        .await?;
    }
    Ok(())
}

/// A case expecting `subscribe` to `suffix` (under the case's namespace,
/// unless it starts with `!`) to be refused with invalid_params.
fn invalid_pattern(id: &str, title: &str, pattern: &'static str) -> Case {
    Case::new(id, "13.1, 13.2, 11.4", title, move |ctx| async move {
        let mut c = ctx.client("a").await?;
        let p = match pattern.strip_prefix('!') {
            Some(raw) => raw.to_owned(),
            None => format!("{}.{pattern}", ctx.ns()),
        };
        c.err("subscribe", &topic(&p), "invalid_params")
            .await
            .map(drop)
    })
}

fn valid_pattern(id: &str, title: &str, suffixes: &'static [&'static str]) -> Case {
    Case::new(id, "13.1, 13.2, 11.4", title, move |ctx| async move {
        let mut c = ctx.client("a").await?;
        for s in suffixes {
            subscribe(&mut c, &format!("{}.{s}", ctx.ns())).await?;
        }
        Ok(())
    })
}

async fn pair(ctx: &Ctx, t: &str) -> CaseResult<(Conn, Conn)> {
    let mut s = ctx.client("s").await?;
    subscribe(&mut s, t).await?;
    let p = ctx.client("p").await?;
    Ok((s, p))
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "pubsub.delivery",
            "11.6, 12.1",
            "an event carries the topic, the data and the publisher's user; delivered counts the subscriber",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                let data = Value::map([(0, Value::text("hello"))]);
                let n = publish_delivered(&mut p, &publish(&t, data.clone())).await?;
                ensure_eq!(n, 1, "delivered");
                let e = s.event(&t, PROMPT).await?;
                ensure_eq!(e.value.get(1), Some(&data), "data");
                ensure_eq!(
                    e.value.get(2).and_then(Value::as_str),
                    Some(user_of(&p).as_str()),
                    "from (§12.1: the publisher's user)"
                );
                Ok(())
            },
        ),
        Case::new(
            "pubsub.delivered-zero",
            "11.6",
            "a publish nobody is subscribed to succeeds with delivered 0",
            |ctx| async move {
                let mut p = ctx.client("p").await?;
                let n =
                    publish_delivered(&mut p, &publish(&ctx.topic("nobody"), Value::Null)).await?;
                ensure_eq!(n, 0, "delivered");
                Ok(())
            },
        ),
        Case::new(
            "pubsub.echo-default",
            "11.6",
            "a publisher subscribed to its topic receives its own event by default and is counted",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                let n = publish_delivered(&mut c, &publish(&t, Value::Uint(1))).await?;
                ensure_eq!(n, 1, "delivered (the publisher itself)");
                c.event(&t, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "pubsub.echo-false",
            "11.6",
            "with echo false the publisher gets no event and is not counted",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                let n = publish_delivered(&mut c, &publish_echo(&t, Value::Uint(1), false)).await?;
                ensure_eq!(n, 0, "delivered");
                c.none_within(QUIET, "echoed event", event_on(&t)).await
            },
        ),
        Case::new(
            "pubsub.echo-false-others-receive",
            "11.6",
            "echo false still delivers to other subscribers",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                subscribe(&mut p, &t).await?;
                let n = publish_delivered(&mut p, &publish_echo(&t, Value::Uint(1), false)).await?;
                ensure_eq!(n, 1, "delivered");
                s.event(&t, PROMPT).await?;
                p.none_within(QUIET, "echoed event", event_on(&t)).await
            },
        ),
        Case::new(
            "pubsub.echo-null-is-default",
            "11.6, 4.8",
            "echo null means absent: the publisher gets its event",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                let p = Value::map([(0, Value::text(&t)), (1, Value::Uint(1)), (2, Value::Null)]);
                c.ok("publish", &p).await?;
                c.event(&t, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "pubsub.match-star",
            "13.3",
            "a.* matches a.b, not a nor a.b.c",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.a.*"),
                    &[format!("{n}.a.b")],
                    &[format!("{n}.a"), format!("{n}.a.b.c")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.match-gt",
            "13.3",
            "a.> matches a.b and a.b.c, not a",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.a.>"),
                    &[format!("{n}.a.b"), format!("{n}.a.b.c")],
                    &[format!("{n}.a")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.match-star-then-gt",
            "13.3",
            "*.b.> matches x.b.c.d, not x.b",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.*.b.>"),
                    &[format!("{n}.x.b.c.d")],
                    &[format!("{n}.x.b"), format!("{n}.x.c.d")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.match-exact",
            "13.3",
            "an exact pattern matches only itself",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.a.b"),
                    &[format!("{n}.a.b")],
                    &[format!("{n}.a"), format!("{n}.a.b.c"), format!("{n}.a.bb")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.match-root-gt",
            "13.3",
            "> matches every topic",
            |ctx| async move {
                let n = ctx.ns();
                let mut s = ctx.client("s").await?;
                subscribe(&mut s, ">").await?;
                let mut p = ctx.client("p").await?;
                let t = format!("{n}.deep.er.than.that");
                p.ok("publish", &publish(&t, Value::Null)).await?;
                s.event(&t, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "pubsub.once-per-connection",
            "12.1",
            "an event matching several subscriptions of a connection arrives once and counts once",
            |ctx| async move {
                let n = ctx.ns();
                let t = format!("{n}.x.y");
                let mut s = ctx.client("s").await?;
                for pat in [
                    t.clone(),
                    format!("{n}.x.*"),
                    format!("{n}.x.>"),
                    format!("{n}.*.y"),
                ] {
                    subscribe(&mut s, &pat).await?;
                }
                let mut p = ctx.client("p").await?;
                let d = publish_delivered(&mut p, &publish(&t, Value::Null)).await?;
                ensure_eq!(d, 1, "delivered");
                s.event(&t, PROMPT).await?;
                s.none_within(QUIET, "second copy of the event", event_on(&t))
                    .await
            },
        ),
        Case::new(
            "pubsub.subscribe-conflict",
            "11.4",
            "subscribing to exactly the same pattern twice is conflict",
            |ctx| async move {
                let t = ctx.topic("*");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                c.err("subscribe", &topic(&t), "conflict").await.map(drop)
            },
        ),
        Case::new(
            "pubsub.subscribe-conflict-other-flag",
            "11.4",
            "the same exact topic with another presence flag is still conflict",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                c.err("subscribe", &topic_presence(&t), "conflict")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "pubsub.pattern-and-exact-coexist",
            "11.4",
            "chat.* and chat.room1 are two subscriptions of one connection",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &ctx.topic("*")).await?;
                subscribe(&mut c, &ctx.topic("room1")).await
            },
        ),
        Case::new(
            "pubsub.unsubscribe-stops-events",
            "11.5",
            "after the unsubscribe response no further event arrives",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                let r = s.ok("unsubscribe", &topic(&t)).await?;
                is_map(&r, "unsubscribe")?;
                p.ok("publish", &publish(&t, Value::Null)).await?;
                s.none_within(QUIET, "event after unsubscribe", event_on(&t))
                    .await
            },
        ),
        Case::new(
            "pubsub.unsubscribe-not-found",
            "11.5, 14.2",
            "unsubscribing a pattern never subscribed is not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err("unsubscribe", &topic(&ctx.topic("never")), "not_found")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "pubsub.unsubscribe-not-validated",
            "11.5",
            "unsubscribe does not validate its string: an invalid pattern is not_found",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err("unsubscribe", &topic("a..b"), "not_found").await?;
                c.err("unsubscribe", &topic("has space"), "not_found")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "pubsub.unsubscribe-exact-string",
            "11.5",
            "unsubscribe must name the pattern byte for byte: x.> does not end x.*",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &ctx.topic("*")).await?;
                c.err("unsubscribe", &topic(&ctx.topic(">")), "not_found")
                    .await?;
                c.ok("unsubscribe", &topic(&ctx.topic("*"))).await.map(drop)
            },
        ),
        Case::new(
            "pubsub.resubscribe-after-unsubscribe",
            "11.4, 11.5",
            "after unsubscribe the same pattern can be subscribed again",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut c = ctx.client("a").await?;
                subscribe(&mut c, &t).await?;
                c.ok("unsubscribe", &topic(&t)).await?;
                subscribe(&mut c, &t).await
            },
        ),
        invalid_pattern(
            "pubsub.pattern-gt-not-last",
            "a > before the last token is invalid",
            "a.>.b",
        ),
        invalid_pattern(
            "pubsub.pattern-star-in-token",
            "a * inside a token is invalid",
            "room*",
        ),
        invalid_pattern(
            "pubsub.pattern-gt-in-token",
            "a > inside a token is invalid",
            ">b",
        ),
        invalid_pattern(
            "pubsub.pattern-empty-token",
            "a doubled dot is invalid",
            "a..b",
        ),
        invalid_pattern(
            "pubsub.pattern-leading-dot",
            "a leading dot is invalid",
            "!.a",
        ),
        invalid_pattern(
            "pubsub.pattern-trailing-dot",
            "a trailing dot is invalid",
            "a.",
        ),
        invalid_pattern("pubsub.pattern-empty", "the empty string is invalid", "!"),
        invalid_pattern("pubsub.pattern-space", "a space is invalid", "a b"),
        invalid_pattern("pubsub.pattern-tab", "a tab is invalid", "a\tb"),
        invalid_pattern(
            "pubsub.pattern-control",
            "a control character (U+0001) is invalid",
            "a\u{1}b",
        ),
        invalid_pattern("pubsub.pattern-del", "DEL (U+007F) is invalid", "a\u{7f}b"),
        invalid_pattern(
            "pubsub.pattern-nbsp",
            "a no-break space (U+00A0, White_Space) is invalid",
            "a\u{a0}b",
        ),
        invalid_pattern(
            "pubsub.pattern-ideographic-space",
            "U+3000 (White_Space) is invalid",
            "a\u{3000}b",
        ),
        invalid_pattern(
            "pubsub.pattern-line-separator",
            "U+2028 (White_Space) is invalid",
            "a\u{2028}b",
        ),
        valid_pattern(
            "pubsub.pattern-unicode",
            "non-ASCII letters and - _ : are allowed",
            &["émoji.ü-1_x:y", "日本.話"],
        ),
        valid_pattern(
            "pubsub.pattern-wildcards",
            "*, > and *.> are valid patterns",
            &["*", ">", "*.>", "a.*.c"],
        ),
        Case::new(
            "pubsub.publish-wildcard-invalid",
            "11.6, 13.1",
            "publish on a pattern (a.* or a.>) is invalid_params",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic("*"), Value::Null),
                    "invalid_params",
                )
                .await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic(">"), Value::Null),
                    "invalid_params",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "pubsub.publish-invalid-topic",
            "11.6, 13.1",
            "publish on an invalid topic (a..b) is invalid_params",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err(
                    "publish",
                    &publish(&format!("{}..b", ctx.ns()), Value::Null),
                    "invalid_params",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "pubsub.presence-on-pattern-invalid",
            "11.4",
            "presence true on a pattern is invalid_params",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.err(
                    "subscribe",
                    &topic_presence(&ctx.topic("*")),
                    "invalid_params",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "pubsub.case-sensitive",
            "13.1",
            "topics are case-sensitive",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.Room"),
                    &[format!("{n}.Room")],
                    &[format!("{n}.room"), format!("{n}.ROOM")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.not-normalized",
            "13.1",
            "topics are compared byte for byte: NFC é and NFD é differ",
            |ctx| async move {
                let n = ctx.ns();
                matching(
                    &ctx,
                    &format!("{n}.caf\u{e9}"),
                    &[format!("{n}.caf\u{e9}")],
                    &[format!("{n}.cafe\u{301}")],
                )
                .await
            },
        ),
        Case::new(
            "pubsub.from-not-forgeable",
            "12.1, 21",
            "a publish carrying its own from key still gets the publisher's user as from",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                let params = Value::map([
                    (0, Value::text(&t)),
                    (1, Value::Null),
                    // An unknown key holding a user name (keys 3-6 are
                    // the durable-stream keys of §23.3; 20 is unassigned).
                    (20, Value::text("mallory")),
                    (2, Value::Bool(true)),
                ]);
                p.ok("publish", &params).await?;
                let e = s.event(&t, PROMPT).await?;
                ensure_eq!(
                    e.value.get(2).and_then(Value::as_str),
                    Some(user_of(&p).as_str()),
                    "from"
                );
                Ok(())
            },
        ),
        Case::new(
            "pubsub.payload-byte-for-byte",
            "2, 4.5, 11.6, 12.1",
            "data with non-shortest heads, tags, half floats and unordered maps arrives byte for byte",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                // [18 05, 19 0000, c1 1a..., f9 3e00, {2: 1, 1: 2}, 5b <8-byte len 2> h'0102']
                let data = hex::decode(
                    "86180519000 0c11a5f5e1000f93e00a202010102 5b00000000000000020102"
                        .replace(' ', ""),
                )
                .unwrap_or_default();
                let mut params = vec![0xa2, 0x00];
                crate::cbor::encode_into(&mut params, &Value::text(&t));
                params.push(0x01);
                params.extend_from_slice(&data);
                let id = p.id();
                p.send(&crate::frame::request_raw(id, "publish", &params))
                    .await?;
                expect_ok(&mut p, id).await?;
                let e = s.event(&t, PROMPT).await?;
                let Value::Map(m) = &e.value else {
                    return Err(crate::check::CaseError::Fail(
                        "event params are not a map".into(),
                    ));
                };
                ensure!(
                    m.iter().any(|(k, _)| k.as_u64() == Some(1)),
                    "event without data"
                );
                ensure!(
                    contains(&e.raw, &data),
                    "the event's data is not the published bytes: sent {}, event {}",
                    hex::encode(&data),
                    hex::encode(&e.raw)
                );
                Ok(())
            },
        ),
        Case::new(
            "pubsub.null-payload",
            "11.6",
            "null is a valid payload",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                p.ok("publish", &publish(&t, Value::Null)).await?;
                let e = s.event(&t, PROMPT).await?;
                ensure!(
                    e.value.get(1).is_some_and(Value::is_null),
                    "data {:?}",
                    e.value.get(1)
                );
                Ok(())
            },
        ),
        Case::new(
            "pubsub.no-subscription-needed",
            "11.6",
            "a connection need not be subscribed to publish",
            |ctx| async move {
                let t = ctx.topic("t");
                let (mut s, mut p) = pair(&ctx, &t).await?;
                ensure_eq!(
                    publish_delivered(&mut p, &publish(&t, Value::Null)).await?,
                    1,
                    "delivered"
                );
                s.event(&t, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "pubsub.no-history",
            "11.6, 9.6",
            "events published before a subscription are not delivered later",
            |ctx| async move {
                let t = ctx.topic("t");
                let mut p = ctx.client("p").await?;
                p.ok("publish", &publish(&t, Value::text("early"))).await?;
                let mut s = ctx.client("s").await?;
                subscribe(&mut s, &t).await?;
                s.none_within(
                    QUIET,
                    "event published before the subscription",
                    event_on(&t),
                )
                .await
            },
        ),
        Case::new(
            "pubsub.session-end-drops-subscriptions",
            "9.6, 11.6",
            "a closed subscriber is no longer delivered to",
            |ctx| async move {
                let t = ctx.topic("t");
                let (s, mut p) = pair(&ctx, &t).await?;
                drop(s);
                for _ in 0..50 {
                    if publish_delivered(&mut p, &publish(&t, Value::Null)).await? == 0 {
                        return Ok(());
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                crate::fail!("a subscriber that disconnected is still counted after 1 s")
            },
        ),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}
