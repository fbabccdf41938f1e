//! §9.3 and §13.4: capabilities and the covering rule.

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::runner::{Case, Ctx};
use crate::{ensure_eq, fail};

/// A connection with capabilities given relative to the case namespace
/// (`~` stands for it).
async fn with_caps(ctx: &Ctx, sub: &[&str], publ: &[&str], presence: bool) -> CaseResult<Conn> {
    let n = ctx.ns();
    let fix = |v: &[&str]| v.iter().map(|p| p.replace('~', &n)).collect::<Vec<_>>();
    let (s, p) = (fix(sub), fix(publ));
    let s: Vec<&str> = s.iter().map(String::as_str).collect();
    let p: Vec<&str> = p.iter().map(String::as_str).collect();
    ctx.client_with(&ctx.claims_caps(&ctx.user("a"), &s, &p, presence))
        .await
}

/// A covering case: with `sub` capability `cap`, subscribing to `pattern`
/// is allowed or forbidden.
fn covers(id: &str, title: &str, cap: &'static str, pattern: &'static str, allowed: bool) -> Case {
    Case::new(id, "13.4, 9.3, 11.4", title, move |ctx| async move {
        let mut c = with_caps(&ctx, &[cap], &[], false).await?;
        let p = pattern.replace('~', &ctx.ns());
        if allowed {
            subscribe(&mut c, &p).await
        } else {
            c.err("subscribe", &topic(&p), "forbidden").await.map(drop)
        }
    })
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        covers(
            "caps.gt-covers-topic",
            "chat.> covers chat.room1",
            "~.chat.>",
            "~.chat.room1",
            true,
        ),
        covers(
            "caps.gt-covers-star",
            "chat.> covers chat.*",
            "~.chat.>",
            "~.chat.*",
            true,
        ),
        covers(
            "caps.gt-covers-gt",
            "chat.> covers chat.>",
            "~.chat.>",
            "~.chat.>",
            true,
        ),
        covers(
            "caps.gt-not-parent",
            "chat.> does not cover chat",
            "~.chat.>",
            "~.chat",
            false,
        ),
        covers(
            "caps.star-covers-topic",
            "chat.* covers chat.x",
            "~.chat.*",
            "~.chat.x",
            true,
        ),
        covers(
            "caps.star-not-gt",
            "chat.* does not cover chat.>",
            "~.chat.*",
            "~.chat.>",
            false,
        ),
        covers(
            "caps.star-not-deeper",
            "chat.* does not cover chat.x.y",
            "~.chat.*",
            "~.chat.x.y",
            false,
        ),
        covers(
            "caps.literal-not-star",
            "chat.x does not cover chat.*",
            "~.chat.x",
            "~.chat.*",
            false,
        ),
        covers(
            "caps.exact-not-longer",
            "a.b does not cover a.b.c",
            "~.a.b",
            "~.a.b.c",
            false,
        ),
        covers(
            "caps.root-gt-covers-all",
            "> covers a.b.>",
            ">",
            "~.a.b.>",
            true,
        ),
        covers(
            "caps.other-subtree",
            "chat.> does not cover news.x",
            "~.chat.>",
            "~.news.x",
            false,
        ),
        Case::new(
            "caps.publish-forbidden",
            "9.3, 11.6, 14.2",
            "publish without a covering pub capability is forbidden",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[">"], &["~.allowed.>"], false).await?;
                c.ok("publish", &publish(&ctx.topic("allowed.x"), Value::Null))
                    .await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic("other.x"), Value::Null),
                    "forbidden",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "caps.publish-star",
            "9.3, 13.4",
            "pub chat.* allows publishing on chat.x, not chat.x.y",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[], &["~.chat.*"], false).await?;
                c.ok("publish", &publish(&ctx.topic("chat.x"), Value::Null))
                    .await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic("chat.x.y"), Value::Null),
                    "forbidden",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "caps.sub-does-not-grant-pub",
            "9.3",
            "a sub capability alone does not allow publishing",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[">"], &[], false).await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic("x"), Value::Null),
                    "forbidden",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "caps.pub-does-not-grant-sub",
            "9.3",
            "a pub capability alone does not allow subscribing",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[], &[">"], false).await?;
                c.err("subscribe", &topic(&ctx.topic("x")), "forbidden")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "caps.presence-get-needs-sub",
            "9.3, 11.7",
            "presence.get needs a sub capability covering the topic",
            |ctx| async move {
                let mut c = with_caps(&ctx, &["~.mine.>"], &[], false).await?;
                c.ok("presence.get", &topic(&ctx.topic("mine.room")))
                    .await?;
                c.err(
                    "presence.get",
                    &topic(&ctx.topic("theirs.room")),
                    "forbidden",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "caps.presence-set-needs-flag",
            "9.3, 11.8",
            "presence.set needs presence: true",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[">"], &[">"], false).await?;
                c.err("presence.set", &info(Value::text("here")), "forbidden")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "caps.subscribe-presence-needs-only-sub",
            "9.3, 11.4",
            "subscribe with presence needs only a sub capability, not the presence flag",
            |ctx| async move {
                let mut c = with_caps(&ctx, &["~.>"], &[], false).await?;
                subscribe_presence(&mut c, &ctx.topic("room")).await
            },
        ),
        Case::new(
            "caps.no-plexus-claim",
            "9.3",
            "a token without the plexus claim has no capabilities",
            |ctx| async move {
                let mut claims = ctx.claims(&ctx.user("a"));
                claims.as_object_mut().map(|o| o.remove("plexus"));
                let mut c = ctx.client_with(&claims).await?;
                c.err("subscribe", &topic(&ctx.topic("x")), "forbidden")
                    .await?;
                c.err(
                    "publish",
                    &publish(&ctx.topic("x"), Value::Null),
                    "forbidden",
                )
                .await?;
                c.err("presence.set", &info(Value::Null), "forbidden")
                    .await?;
                c.alive().await
            },
        ),
        Case::new(
            "caps.empty-plexus-claim",
            "9.3",
            "an empty plexus object grants nothing",
            |ctx| async move {
                let mut claims = ctx.claims(&ctx.user("a"));
                claims["plexus"] = serde_json::json!({});
                let mut c = ctx.client_with(&claims).await?;
                c.err("subscribe", &topic(&ctx.topic("x")), "forbidden")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "caps.syntax-before-forbidden",
            "11.4",
            "an invalid pattern is invalid_params even without a capability (syntax is checked first)",
            |ctx| async move {
                let mut c = with_caps(&ctx, &[], &[], false).await?;
                c.err(
                    "subscribe",
                    &topic(&format!("{}..x", ctx.ns())),
                    "invalid_params",
                )
                .await
                .map(drop)
            },
        ),
        Case::new(
            "caps.conflict-before-forbidden",
            "11.4",
            "the order of subscribe checks: conflict comes before forbidden",
            |ctx| async move {
                // Subscribed under a wide token, then narrowed by a refresh.
                let user = ctx.user("a");
                let t = ctx.topic("t");
                let mut c = ctx.client_with(&ctx.claims(&user)).await?;
                subscribe(&mut c, &t).await?;
                let tok = ctx.token(&ctx.claims_caps(&user, &[], &[], false)).await?;
                c.ok("auth.refresh", &Value::map([(0, Value::text(&tok))]))
                    .await?;
                match c.call("subscribe", &topic(&t)).await? {
                    Err(e) => ensure_eq!(e.code, "conflict", "error code"),
                    Ok(_) => fail!("a second subscribe to the same pattern succeeded"),
                }
                Ok(())
            },
        ),
    ]
}
