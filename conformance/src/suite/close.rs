//! §12.6, §15 and P11: how the server closes — `closing` first where the
//! code is announced, queued frames before it, nothing after it, and the
//! lingering close that keeps a client that is still sending from losing
//! all of that to a TCP reset.

use std::time::Duration;

use super::auth::{bad_token, client_instance};
use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::{Conn, End};
use crate::frame::{self, Frame};
use crate::runner::Case;
use crate::runner::ctx::auth_params;
use crate::{ensure, skip};

/// With `spam` running on `c`, expects close `code` (and its `closing`)
/// intact and a clean end of the TCP connection.
async fn linger(c: &mut Conn, spam: Spam, code: u16, within: Duration) -> CaseResult {
    let r = c.expect_close(code, within).await;
    let sent = spam.stop().await;
    let rep = r.map_err(|e| e.context(format!("the client kept sending ({sent} frames)")))?;
    ensure!(
        rep.end != End::Reset,
        "after close {code} the connection was reset while the client was sending (P11: linger until the client's Close or EOF)"
    );
    Ok(())
}

/// A frame that is not CBOR at all.
const GARBAGE: &[u8] = &[0xff, 0xff, 0xff];

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new("close.queued-frames-first", "12.6", "responses to requests read before an undecodable frame arrive before closing 4005", |ctx| async move {
            require_burst(&ctx, 20, "the requests")?;
            let mut c = ctx.client("a").await?;
            let mut bytes = Vec::new();
            for id in 1..=20u64 {
                bytes.extend(crate::ws::encode_frame(true, 0, crate::ws::OP_BINARY, Some(rand::random()), &frame::request(id, "ping", &Value::Uint(id))));
            }
            bytes.extend(crate::ws::encode_frame(true, 0, crate::ws::OP_BINARY, Some(rand::random()), GARBAGE));
            c.send_raw(&bytes).await?;
            let rep = c.expect_close(4005, PROMPT).await?;
            let answered = rep.before.iter().filter(|f| matches!(f, Frame::Response { .. })).count();
            ensure!(answered == 20, "{answered} of 20 responses came before closing (§12.6: queued frames are sent first)");
            Ok(())
        }),
        Case::new("close.nothing-after-closing", "12.6", "requests after an undecodable frame are not answered: closing, then only the Close frame", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let mut bytes = crate::ws::encode_frame(true, 0, crate::ws::OP_BINARY, Some(rand::random()), GARBAGE);
            for id in 1..=5u64 {
                bytes.extend(crate::ws::encode_frame(true, 0, crate::ws::OP_BINARY, Some(rand::random()), &frame::request(id, "ping", &Value::Null)));
            }
            c.send_raw(&bytes).await?;
            let rep = c.expect_close(4005, PROMPT).await?;
            ensure!(
                !rep.before.iter().any(|f| matches!(f, Frame::Response { .. })),
                "a request sent after the undecodable frame was answered"
            );
            Ok(())
        }),
        Case::new("close.lingering-4000", "9.2, P11", "a client that keeps sending after a failed auth gets closing 4000 and close 4000, and no reset", |ctx| async move {
            let t = bad_token(&ctx).await?;
            let mut c = ctx.connect().await?;
            c.send(&frame::request(1, "auth", &auth_params(&t, None))).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4000, PROMPT).await
        }),
        Case::new("close.lingering-4001", "9.2, P11", "a client that keeps sending but never authenticates gets closing 4001 and close 4001, and no reset", |ctx| async move {
            let d = ctx.settings().auth_timeout;
            ctx.require_wait(d + ctx.tolerance(), "waiting for the auth deadline")?;
            let mut c = ctx.connect().await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4001, d + ctx.tolerance() * 2 + Duration::from_secs(2)).await
        })
        .slow(),
        Case::new("close.lingering-4003", "9.4, P11", "a client that keeps sending after a refresh for another user gets closing 4003 and close 4003, and no reset", |ctx| async move {
            let mut c = ctx.client("a").await?;
            let t = ctx.token(&ctx.claims(&ctx.user("b"))).await?;
            c.request("auth.refresh", &Value::map([(0, Value::text(&t))])).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4003, PROMPT).await
        }),
        Case::new("close.lingering-4004", "9.7, P11", "a client over the per-user limit that keeps sending gets closing 4004 and close 4004, and no reset", |ctx| async move {
            let n = ctx.settings().max_connections_per_user;
            if n > 512 {
                skip!("the per-user limit {n} is too high to reach here");
            }
            let user = ctx.user("a");
            let mut held = Vec::new();
            for _ in 0..n {
                held.push(client_instance(&ctx, &user, None).await?);
            }
            let t = ctx.token(&ctx.claims(&user)).await?;
            let mut c = ctx.connect().await?;
            c.send(&frame::request(1, "auth", &auth_params(&t, None))).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4004, PROMPT).await
        }),
        Case::new("close.lingering-4005-undecodable", "15.3, P11", "a client that keeps sending after an undecodable frame gets closing 4005 and close 4005, and no reset", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.send(GARBAGE).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4005, PROMPT).await
        }),
        Case::new("close.lingering-4005-duplicate-id", "6.1, P11", "a client that keeps sending after reusing an in-flight id gets closing 4005 and close 4005, and no reset", |ctx| async move {
            let mut c = ctx.client("a").await?;
            super::requests::sleep_in_flight(&mut c, 7, 3000).await?;
            c.send(&frame::request(7, "ping", &Value::Null)).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 4005, PROMPT).await
        }),
        Case::new("close.lingering-4009", "9.5, P11", "a replaced connection that keeps sending gets closing 4009 and close 4009, and no reset", |ctx| async move {
            let user = ctx.user("a");
            let mut old = client_instance(&ctx, &user, Some("tab")).await?;
            let spam = spam_cancels(&old);
            let _new = client_instance(&ctx, &user, Some("tab")).await?;
            linger(&mut old, spam, 4009, PROMPT).await
        }),
        Case::new("close.lingering-1003", "3.2, P11", "a client that keeps sending after a text message gets close 1003, and no reset", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.send_text(b"text").await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 1003, PROMPT).await
        }),
        Case::new("close.lingering-1009", "4.6, P11", "a client that keeps sending after an oversized frame gets close 1009, and no reset", |ctx| async move {
            let mut c = ctx.connect().await?;
            let big = frame::ping_of_size(1, ctx.settings().preauth_frame_size + 1).unwrap_or_default();
            c.send(&big).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 1009, PROMPT).await
        }),
        Case::new("close.lingering-1007", "3.2, P9, P11", "a client that keeps sending after invalid UTF-8 text gets close 1007, and no reset", |ctx| async move {
            let mut c = ctx.client("a").await?;
            c.send_text(&[0xff]).await?;
            let spam = spam_cancels(&c);
            linger(&mut c, spam, 1007, PROMPT).await
        }),
        Case::new("close.client-close-ends-session", "15.2, 9.6, 12.3", "after the client's Close its subscriptions and presence end", |ctx| async move {
            let t = ctx.topic("t");
            let mut obs = ctx.client("o").await?;
            subscribe_presence(&mut obs, &t).await?;
            let mut c = ctx.client("a").await?;
            subscribe_presence(&mut c, &t).await?;
            let sess = session_of(&c);
            c.send_close(1000, b"bye").await?;
            c.until_end(PROMPT).await?;
            let s2 = sess.clone();
            obs.notification_where("presence.leave", PROMPT, move |p| {
                p.get(1).and_then(|m| m.get(0)).and_then(Value::as_str) == Some(s2.as_str())
            })
            .await?;
            let mut p = ctx.client("p").await?;
            let n = publish_delivered(&mut p, &publish(&t, Value::Null)).await?;
            ensure!(n == 1, "delivered {n}: only the observer is left");
            Ok(())
        }),
    ]
}
