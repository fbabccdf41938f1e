//! §3: the opening handshake and WebSocket messages.

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::frame;
use crate::runner::{Case, Ctx};
use crate::ws::{Handshake, OP_BINARY, OP_CONT, OP_PING, OP_PONG};
use crate::{ensure, ensure_eq, skip};

fn offer(p: &str) -> Handshake {
    Handshake {
        protocols: Some(p.into()),
        ..Default::default()
    }
}

fn with_origin(p: Option<&str>, origin: &str) -> Handshake {
    Handshake {
        protocols: p.map(str::to_owned),
        origin: Some(origin.into()),
        ..Default::default()
    }
}

async fn refused(ctx: &Ctx, hs: Handshake, status: u16) -> CaseResult {
    let (reply, conn) = ctx.handshake(&hs).await?;
    ensure!(
        conn.is_none(),
        "the upgrade was accepted (101); expected {status}"
    );
    ensure_eq!(reply.status, status, "HTTP status");
    Ok(())
}

async fn refused_400(ctx: Ctx, protocols: Option<&str>) -> CaseResult {
    let hs = Handshake {
        protocols: protocols.map(str::to_owned),
        ..Default::default()
    };
    let (reply, conn) = ctx.handshake(&hs).await?;
    ensure!(conn.is_none(), "the upgrade was accepted without plexus.v1");
    ensure_eq!(reply.status, 400, "HTTP status");
    let ct = reply.header("content-type").unwrap_or("");
    ensure!(
        ct.starts_with("text/plain"),
        "content type {ct:?}, expected text/plain (§3.1)"
    );
    ensure!(
        !reply.body.is_empty(),
        "the 400 has no explanation in its body (§3.1)"
    );
    Ok(())
}

fn allowed(ctx: &Ctx) -> CaseResult<String> {
    match &ctx.settings().origin_allowed {
        Some(o) => Ok(o.clone()),
        None => skip!("needs --origin-allowed ORIGIN (an Origin on the server's allow-list)"),
    }
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "handshake.subprotocol-selected",
            "3.1",
            "offering plexus.v1 gets a 101 that names plexus.v1",
            |ctx| async move { ctx.connect().await.map(drop) },
        ),
        Case::new(
            "handshake.subprotocol-among-others",
            "3.1",
            "plexus.v1 offered after another subprotocol is the one selected",
            |ctx| async move {
                ctx.connect_with(offer("chat.v9, plexus.v1"))
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "handshake.subprotocol-missing-400",
            "3.1",
            "a handshake without Sec-WebSocket-Protocol gets 400 with a text/plain explanation",
            |ctx| async move { refused_400(ctx, None).await },
        ),
        Case::new(
            "handshake.subprotocol-other-400",
            "3.1",
            "a handshake offering only plexus.v2 gets 400",
            |ctx| async move { refused_400(ctx, Some("plexus.v2")).await },
        ),
        Case::new(
            "handshake.subprotocol-case-sensitive",
            "3.1, P17",
            "PLEXUS.V1 is not plexus.v1: 400",
            |ctx| async move { refused_400(ctx, Some("PLEXUS.V1")).await },
        ),
        Case::new(
            "handshake.origin-not-allowed-403",
            "3.1",
            "an Origin not on the allow-list gets 403",
            |ctx| async move {
                allowed(&ctx)?;
                refused(
                    &ctx,
                    with_origin(Some("plexus.v1"), "https://not-allowed.invalid"),
                    403,
                )
                .await
            },
        ),
        Case::new(
            "handshake.origin-allowed",
            "3.1",
            "an Origin on the allow-list is accepted",
            |ctx| async move {
                let o = allowed(&ctx)?;
                ctx.connect_with(with_origin(Some("plexus.v1"), &o))
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "handshake.origin-case-insensitive",
            "3.1, P16",
            "the Origin comparison is ASCII case-insensitive",
            |ctx| async move {
                let o = allowed(&ctx)?.to_ascii_uppercase();
                ctx.connect_with(with_origin(Some("plexus.v1"), &o))
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "handshake.origin-not-normalized",
            "3.1, P16",
            "an allowed Origin with a trailing slash is a different Origin: 403",
            |ctx| async move {
                let o = allowed(&ctx)?;
                refused(&ctx, with_origin(Some("plexus.v1"), &format!("{o}/")), 403).await
            },
        ),
        Case::new(
            "handshake.origin-null-403",
            "3.1, P16",
            "Origin: null matches only an entry null: 403",
            |ctx| async move {
                let o = allowed(&ctx)?;
                if o == "null" {
                    skip!("the allowed Origin given is null");
                }
                refused(&ctx, with_origin(Some("plexus.v1"), "null"), 403).await
            },
        ),
        Case::new(
            "handshake.origin-checked-first",
            "3.1",
            "a bad Origin without the subprotocol gets 403: the Origin check comes first",
            |ctx| async move {
                allowed(&ctx)?;
                refused(&ctx, with_origin(None, "https://not-allowed.invalid"), 403).await
            },
        ),
        Case::new(
            "handshake.no-origin-accepted",
            "3.1",
            "a request without Origin is not subject to the allow-list",
            |ctx| async move {
                allowed(&ctx)?;
                ctx.connect().await.map(drop)
            },
        ),
        Case::new(
            "messages.text-1003",
            "3.2, 5.6, 15.1",
            "a text message after auth closes with 1003, without closing",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_text(b"hello").await?;
                c.expect_close(1003, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.text-before-auth-1003",
            "3.2, 5.6",
            "a text message before auth closes with 1003",
            |ctx| async move {
                let mut c = ctx.connect().await?;
                c.send_text(b"{\"op\":\"auth\"}").await?;
                c.expect_close(1003, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.text-invalid-utf8-1007",
            "3.2, P9",
            "a text message that is not UTF-8 closes with 1007",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_text(&[0x68, 0xff, 0xfe, 0x69]).await?;
                c.expect_close(1007, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.fragmented-request",
            "3.2",
            "a request sent in three WebSocket fragments is answered",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.id();
                let f = frame::request(id, "ping", &Value::text("fragmented"));
                let (a, rest) = f.split_at(3);
                let (b, d) = rest.split_at(4);
                c.ws_frame(false, 0, OP_BINARY, true, a).await?;
                c.ws_frame(false, 0, OP_CONT, true, b).await?;
                c.ws_frame(true, 0, OP_CONT, true, d).await?;
                let r = expect_ok(&mut c, id).await?;
                ensure_eq!(r.value, Value::text("fragmented"), "ping result");
                Ok(())
            },
        ),
        Case::new(
            "messages.fragmented-with-ping",
            "3.2, 16",
            "a WebSocket Ping between two fragments is answered and the message still arrives",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.id();
                let f = frame::request(id, "ping", &Value::Uint(7));
                let (a, b) = f.split_at(2);
                c.ws_frame(false, 0, OP_BINARY, true, a).await?;
                c.ws_frame(true, 0, OP_PING, true, b"mid").await?;
                c.ws_frame(true, 0, OP_CONT, true, b).await?;
                expect_ok(&mut c, id).await?;
                c.wait_pong(b"mid", PROMPT).await
            },
        ),
        Case::new(
            "messages.fragmented-oversized-1009",
            "3.2, 4.6",
            "fragments that add up to more than max_frame_size close with 1009",
            |ctx| async move {
                let max = ctx.limits().max_frame_size;
                if max > 16 * 1024 * 1024 {
                    skip!("max_frame_size {max} is too large to exceed here");
                }
                let mut c = ctx.client("a").await?;
                let half = usize::try_from(max / 2 + 8).unwrap_or(usize::MAX);
                let f = frame::ping_of_size(c.id(), half * 2).unwrap_or_default();
                let (a, b) = f.split_at(half);
                c.ws_frame(false, 0, OP_BINARY, true, a).await?;
                // The server may close as soon as it has seen enough.
                let _ = c.ws_frame(true, 0, OP_CONT, true, b).await;
                c.expect_close(1009, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.client-ping-answered",
            "16",
            "a WebSocket Ping from the client is answered with a Pong carrying its payload",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.ws_frame(true, 0, OP_PING, true, b"are you there").await?;
                c.wait_pong(b"are you there", PROMPT).await
            },
        ),
        Case::new(
            "messages.unsolicited-pong-ignored",
            "16",
            "a Pong the server did not ask for is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.ws_frame(true, 0, OP_PONG, true, b"unsolicited").await?;
                c.alive().await
            },
        ),
        Case::new(
            "messages.close-echo-1000",
            "15.2, P10",
            "a client Close 1000 is answered with 1000 and the same reason",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_close(1000, b"done here").await?;
                c.expect_close_with(1000, false, Some("done here"), PROMPT)
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "messages.close-echo-private-code",
            "15.2, P10",
            "a client Close 4321 is echoed with 4321 and its reason",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_close(4321, b"app says bye").await?;
                c.expect_close_with(4321, false, Some("app says bye"), PROMPT)
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "messages.close-reserved-code-1002",
            "15.1, P10",
            "a client Close with 1005 (which no peer may send) is answered with 1002",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_close(1005, b"").await?;
                c.expect_close_with(1002, false, None, PROMPT)
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "messages.close-code-below-1000-1002",
            "15.1, P10",
            "a client Close with code 999 is answered with 1002",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_close(999, b"").await?;
                c.expect_close_with(1002, false, None, PROMPT)
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "messages.close-reason-invalid-utf8-1007",
            "15.1, P9",
            "a client Close whose reason is not UTF-8 is answered with 1007",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send_close(1000, &[0xc3, 0x28]).await?;
                c.expect_close_with(1007, false, None, PROMPT)
                    .await
                    .map(drop)
            },
        ),
        Case::new(
            "messages.unmasked-frame-1002",
            "15.1",
            "an unmasked client frame closes with 1002",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let f = frame::request(c.id(), "ping", &Value::Null);
                c.ws_frame(true, 0, OP_BINARY, false, &f).await?;
                c.expect_close(1002, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.reserved-bits-1002",
            "15.1",
            "a frame with RSV1 set (no extension negotiated) closes with 1002",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let f = frame::request(c.id(), "ping", &Value::Null);
                c.ws_frame(true, 0b100, OP_BINARY, true, &f).await?;
                c.expect_close(1002, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.unknown-opcode-1002",
            "15.1",
            "a frame with the reserved opcode 0x3 closes with 1002",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.ws_frame(true, 0, 0x3, true, b"x").await?;
                c.expect_close(1002, PROMPT).await.map(drop)
            },
        ),
        Case::new(
            "messages.server-binary-only",
            "3.2, 5.1",
            "everything the server sends in a busy session is one binary message per frame",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let t = ctx.topic("t");
                subscribe_presence(&mut c, &t).await?;
                for i in 0..5u64 {
                    c.ok("publish", &publish(&t, Value::Uint(i))).await?;
                }
                c.ok("presence.get", &topic(&t)).await?;
                for _ in 0..5 {
                    c.event(&t, PROMPT).await?;
                }
                // Conn fails the case on any text message or undecodable frame.
                Ok(())
            },
        ),
    ]
}
