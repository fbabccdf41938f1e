//! §11.4 (presence), §11.7, §11.8, §12.2–§12.4: members, notices and
//! paging.

use std::collections::HashSet;

use super::util::*;
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::conn::Conn;
use crate::frame::{Frame, typed_map};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

/// The session of a member map.
fn member_session(m: &Value) -> Option<&str> {
    m.get(0).and_then(Value::as_str)
}

/// Waits for a presence notice `kind` on `topic` for `session`.
async fn notice(c: &mut Conn, kind: &str, topic: &str, session: &str) -> CaseResult<Value> {
    let (t, s) = (topic.to_owned(), session.to_owned());
    let n = c
        .notification_where(kind, PROMPT, move |p| {
            p.get(0).and_then(Value::as_str) == Some(t.as_str())
                && p.get(1).and_then(member_session) == Some(s.as_str())
        })
        .await?;
    typed_map(&n.value).map_err(CaseError::Fail)?;
    let m = n.value.get(1).cloned().unwrap_or(Value::Null);
    typed_map(&m).map_err(|e| CaseError::Fail(format!("member: {e}")))?;
    Ok(m)
}

fn is_notice(kind: &'static str) -> impl Fn(&Frame) -> bool {
    move |f| matches!(f, Frame::Notification { method, .. } if method == kind)
}

/// One page of `presence.get`: (sessions with their member maps, next).
async fn page(
    c: &mut Conn,
    topic: &str,
    cursor: Option<u64>,
    limit: Option<u64>,
) -> CaseResult<(Vec<Value>, Option<u64>)> {
    let mut p = vec![(0, Value::text(topic))];
    if let Some(x) = cursor {
        p.push((1, Value::Uint(x)));
    }
    if let Some(l) = limit {
        p.push((2, Value::Uint(l)));
    }
    let r = c.ok("presence.get", &Value::map(p)).await?;
    typed_map(&r.value).map_err(CaseError::Fail)?;
    let Some(members) = r.value.get(0).and_then(Value::as_array) else {
        fail!(
            "presence.get result {} has no members array (§11.7)",
            r.value
        );
    };
    for m in members {
        typed_map(m).map_err(|e| CaseError::Fail(format!("member: {e}")))?;
        ensure!(
            member_session(m).is_some() && m.get(1).and_then(Value::as_str).is_some(),
            "member {m} lacks session or user (§11.7)"
        );
    }
    let next = match r.value.opt(1) {
        None => None,
        Some(Value::Uint(n)) => Some(*n),
        Some(o) => fail!("next {o} is not a uint"),
    };
    Ok((members.to_vec(), next))
}

/// Every member, page by page.
async fn all_pages(
    c: &mut Conn,
    topic: &str,
    limit: Option<u64>,
    max_pages: usize,
) -> CaseResult<(Vec<Value>, usize)> {
    let mut out = Vec::new();
    let mut cursor = None;
    for pages in 1..=max_pages {
        let (m, next) = page(c, topic, cursor, limit).await?;
        if let Some(l) = limit {
            ensure!(
                m.len() as u64 <= l.max(1),
                "a page of {} members for limit {l}",
                m.len()
            );
        }
        out.extend(m);
        match next {
            None => return Ok((out, pages)),
            Some(n) => cursor = Some(n),
        }
    }
    fail!("more than {max_pages} pages: next never went away (§11.7)")
}

/// `n` members present on `topic`.
async fn members(ctx: &Ctx, topic: &str, n: usize) -> CaseResult<Vec<Conn>> {
    let mut v = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = ctx.client(&format!("m{i}")).await?;
        subscribe_presence(&mut c, topic).await?;
        v.push(c);
    }
    Ok(v)
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "presence.join-notified",
            "11.4, 12.2",
            "a new member is announced with presence.join to the other observers, with its session and user",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                subscribe_presence(&mut b, &t).await?;
                let m = notice(&mut a, "presence.join", &t, &session_of(&b)).await?;
                ensure_eq!(
                    m.get(1).and_then(Value::as_str),
                    Some(user_of(&b).as_str()),
                    "member user"
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.no-join-for-self",
            "11.4, 12.2",
            "a connection never receives a presence.join for its own member",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                a.ok("presence.set", &info(Value::text("me"))).await?;
                a.none_within(
                    QUIET,
                    "presence.join for itself",
                    is_notice("presence.join"),
                )
                .await
            },
        ),
        Case::new(
            "presence.get-lists-members",
            "11.7",
            "presence.get lists every member with session and user",
            |ctx| async move {
                let t = ctx.topic("room");
                let ms = members(&ctx, &t, 3).await?;
                let mut q = ctx.client("q").await?;
                let (got, _) = all_pages(&mut q, &t, None, 10).await?;
                let want: HashSet<String> = ms.iter().map(session_of).collect();
                let have: HashSet<String> = got
                    .iter()
                    .filter_map(member_session)
                    .map(str::to_owned)
                    .collect();
                ensure_eq!(have, want, "member sessions");
                Ok(())
            },
        ),
        Case::new(
            "presence.get-empty",
            "11.7",
            "a topic nobody is present on yields no members and no next",
            |ctx| async move {
                let mut q = ctx.client("q").await?;
                let (m, next) = page(&mut q, &ctx.topic("empty"), None, None).await?;
                ensure!(
                    m.is_empty() && next.is_none(),
                    "members {m:?}, next {next:?}"
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.get-without-subscription",
            "11.7",
            "the caller of presence.get need not be subscribed",
            |ctx| async move {
                let t = ctx.topic("room");
                let _ms = members(&ctx, &t, 1).await?;
                let mut q = ctx.client("q").await?;
                let (m, _) = page(&mut q, &t, None, None).await?;
                ensure_eq!(m.len(), 1, "members");
                Ok(())
            },
        ),
        Case::new(
            "presence.get-pattern-invalid",
            "11.7",
            "presence.get on a pattern is invalid_params",
            |ctx| async move {
                let mut q = ctx.client("q").await?;
                q.err("presence.get", &topic(&ctx.topic("*")), "invalid_params")
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "presence.subscriber-without-flag-not-member",
            "11.4",
            "a subscription without presence neither joins nor observes",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe(&mut a, &t).await?;
                let _b = members(&ctx, &t, 1).await?;
                a.none_within(
                    QUIET,
                    "presence.join on a plain subscription",
                    is_notice("presence.join"),
                )
                .await?;
                let (m, _) = page(&mut a, &t, None, None).await?;
                ensure!(
                    !m.iter()
                        .any(|x| member_session(x) == Some(session_of(&a).as_str())),
                    "a plain subscriber is listed as a member"
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.set-announced",
            "11.8, 12.2",
            "presence.set sends presence.join with the new info to the other observers, not to itself",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                subscribe_presence(&mut b, &t).await?;
                notice(&mut a, "presence.join", &t, &session_of(&b)).await?;
                let i = Value::map([(0, Value::text("away"))]);
                b.ok("presence.set", &info(i.clone())).await?;
                let m = notice(&mut a, "presence.join", &t, &session_of(&b)).await?;
                ensure_eq!(m.get(2), Some(&i), "info in the notice");
                b.none_within(
                    QUIET,
                    "a notice of its own change",
                    is_notice("presence.join"),
                )
                .await
            },
        ),
        Case::new(
            "presence.info-in-get-and-cleared",
            "11.7, 11.8",
            "the info shows in presence.get; after null it is absent",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut ms = members(&ctx, &t, 1).await?;
                let s = session_of(&ms[0]);
                ms[0].ok("presence.set", &info(Value::text("busy"))).await?;
                let mut q = ctx.client("q").await?;
                let (m, _) = page(&mut q, &t, None, None).await?;
                let me = m
                    .iter()
                    .find(|x| member_session(x) == Some(s.as_str()))
                    .cloned()
                    .unwrap_or(Value::Null);
                ensure_eq!(me.get(2), Some(&Value::text("busy")), "info");
                ms[0].ok("presence.set", &info(Value::Null)).await?;
                let (m, _) = page(&mut q, &t, None, None).await?;
                let me = m
                    .iter()
                    .find(|x| member_session(x) == Some(s.as_str()))
                    .cloned()
                    .unwrap_or(Value::Null);
                ensure!(
                    me.opt(2).is_none(),
                    "info {:?} after clearing it",
                    me.get(2)
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.info-before-joining",
            "11.8, 11.4",
            "info set before joining is carried by the join",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                b.ok("presence.set", &info(Value::text("early"))).await?;
                subscribe_presence(&mut b, &t).await?;
                let m = notice(&mut a, "presence.join", &t, &session_of(&b)).await?;
                ensure_eq!(m.get(2), Some(&Value::text("early")), "info in the join");
                Ok(())
            },
        ),
        Case::new(
            "presence.set-nowhere-silent",
            "11.8",
            "presence.set of a connection present nowhere sends no notice",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                b.ok("presence.set", &info(Value::text("x"))).await?;
                a.none_within(
                    QUIET,
                    "a notice for a connection present nowhere",
                    is_notice("presence.join"),
                )
                .await
            },
        ),
        Case::new(
            "presence.leave-on-unsubscribe",
            "11.5, 12.3",
            "unsubscribing sends presence.leave, without info, to the remaining observers",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                subscribe_presence(&mut b, &t).await?;
                b.ok("presence.set", &info(Value::text("x"))).await?;
                b.ok("unsubscribe", &topic(&t)).await?;
                let m = notice(&mut a, "presence.leave", &t, &session_of(&b)).await?;
                ensure!(
                    m.opt(2).is_none(),
                    "the leave carries info {:?} (§12.3: without info)",
                    m.get(2)
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.leave-on-disconnect",
            "9.6, 12.3",
            "a member whose connection drops leaves: presence.leave",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let b = members(&ctx, &t, 1).await?;
                let s = session_of(&b[0]);
                drop(b);
                notice(&mut a, "presence.leave", &t, &s).await.map(drop)
            },
        ),
        Case::new(
            "presence.leave-on-server-close",
            "12.3",
            "a member closed by the server (text message, 1003) leaves: presence.leave",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = members(&ctx, &t, 1).await?;
                let s = session_of(&b[0]);
                b[0].send_text(b"bye").await?;
                notice(&mut a, "presence.leave", &t, &s).await.map(drop)
            },
        ),
        Case::new(
            "presence.unsubscribe-stops-observing",
            "11.5",
            "after unsubscribing, a connection no longer receives notices",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                a.ok("unsubscribe", &topic(&t)).await?;
                let _b = members(&ctx, &t, 1).await?;
                a.none_within(
                    QUIET,
                    "notice after unsubscribing",
                    is_notice("presence.join"),
                )
                .await
            },
        ),
        Case::new(
            "presence.per-connection",
            "11.7",
            "a user with two connections is two members with different sessions",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut c1 = ctx.client("same").await?;
                subscribe_presence(&mut c1, &t).await?;
                let mut c2 = ctx.client("same").await?;
                subscribe_presence(&mut c2, &t).await?;
                let mut q = ctx.client("q").await?;
                let (m, _) = all_pages(&mut q, &t, None, 10).await?;
                ensure_eq!(m.len(), 2, "members");
                ensure!(
                    member_session(&m[0]) != member_session(&m[1]),
                    "both members have one session"
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.ordering",
            "12.4",
            "one member's join, info change and leave reach an observer in that order",
            |ctx| async move {
                let t = ctx.topic("room");
                let mut a = ctx.client("a").await?;
                subscribe_presence(&mut a, &t).await?;
                let mut b = ctx.client("b").await?;
                subscribe_presence(&mut b, &t).await?;
                b.ok("presence.set", &info(Value::Uint(1))).await?;
                b.ok("presence.set", &info(Value::Uint(2))).await?;
                b.ok("unsubscribe", &topic(&t)).await?;
                let s = session_of(&b);
                let m0 = notice(&mut a, "presence.join", &t, &s).await?;
                ensure!(
                    m0.opt(2).is_none(),
                    "first notice {m0} is not the bare join"
                );
                let m1 = notice(&mut a, "presence.join", &t, &s).await?;
                ensure_eq!(m1.get(2), Some(&Value::Uint(1)), "second notice info");
                let m2 = notice(&mut a, "presence.join", &t, &s).await?;
                ensure_eq!(m2.get(2), Some(&Value::Uint(2)), "third notice info");
                notice(&mut a, "presence.leave", &t, &s).await.map(drop)
            },
        ),
        Case::new(
            "presence.paging",
            "11.7",
            "pages of limit 2 cover every member exactly once; the last page has no next",
            |ctx| async move {
                let t = ctx.topic("room");
                let ms = members(&ctx, &t, 5).await?;
                let mut q = ctx.client("q").await?;
                let (got, pages) = all_pages(&mut q, &t, Some(2), 10).await?;
                let sessions: Vec<&str> = got.iter().filter_map(member_session).collect();
                let unique: HashSet<&str> = sessions.iter().copied().collect();
                ensure_eq!(sessions.len(), unique.len(), "members listed twice");
                ensure_eq!(unique.len(), ms.len(), "members found");
                ensure!(pages >= 3, "{pages} pages for 5 members at limit 2");
                Ok(())
            },
        ),
        Case::new(
            "presence.limit-zero-is-one",
            "11.7",
            "limit 0 is treated as 1",
            |ctx| async move {
                let t = ctx.topic("room");
                let _ms = members(&ctx, &t, 2).await?;
                let mut q = ctx.client("q").await?;
                let (m, next) = page(&mut q, &t, None, Some(0)).await?;
                ensure!(
                    m.len() == 1 && next.is_some(),
                    "limit 0 gave {} members, next {next:?}",
                    m.len()
                );
                Ok(())
            },
        ),
        Case::new(
            "presence.limit-above-cap",
            "11.7, P13",
            "a limit above the page cap is treated as the cap, not an error",
            |ctx| async move {
                let t = ctx.topic("room");
                let _ms = members(&ctx, &t, 2).await?;
                let mut q = ctx.client("q").await?;
                let (m, _) = page(&mut q, &t, None, Some(u64::MAX)).await?;
                ensure_eq!(m.len(), 2, "members");
                Ok(())
            },
        ),
        Case::new(
            "presence.default-page-100",
            "11.7",
            "without limit a page holds at most 100 members",
            |ctx| async move {
                let n = 101usize;
                if ctx.settings().max_connections_per_user < 2 {
                    skip!("needs several connections");
                }
                let t = ctx.topic("room");
                let _ms = members(&ctx, &t, n).await?;
                let mut q = ctx.client("q").await?;
                let (m, next) = page(&mut q, &t, None, None).await?;
                ensure!(m.len() <= 100, "{} members on a default page", m.len());
                ensure!(next.is_some(), "no next although members remain");
                Ok(())
            },
        )
        .slow(),
        Case::new(
            "presence.page-fits-frame",
            "11.7, 4.6",
            "pages are cut to fit max_frame_size, with next",
            |ctx| async move {
                let l = ctx.limits().clone();
                // Each member is its info plus at least 16 bytes of keys, session
                // and user, so this many overflow one frame.
                let per = l.max_presence_info + 16;
                let need = l.max_frame_size / per + 2;
                if need > 150 || need > l.presence_page() {
                    skip!(
                        "{need} members with {} B of info would be needed to fill a {}-byte frame",
                        l.max_presence_info,
                        l.max_frame_size
                    );
                }
                let t = ctx.topic("room");
                let big = Value::Bytes(vec![
                    7;
                    usize::try_from(l.max_presence_info.saturating_sub(8))
                        .unwrap_or(0)
                ]);
                let mut ms = Vec::new();
                for i in 0..need {
                    let mut c = ctx.client(&format!("m{i}")).await?;
                    c.ok("presence.set", &info(big.clone())).await?;
                    subscribe_presence(&mut c, &t).await?;
                    ms.push(c);
                }
                let mut q = ctx.client("q").await?;
                // Conn fails the case on a frame over max_frame_size.
                let (got, pages) = all_pages(&mut q, &t, Some(l.presence_page()), 100).await?;
                ensure!(
                    pages >= 2,
                    "all {} members fit one page of a {}-byte frame",
                    got.len(),
                    l.max_frame_size
                );
                ensure_eq!(got.len() as u64, need, "members over all pages");
                Ok(())
            },
        )
        .slow(),
    ]
}
