//! Every golden vector of `conformance/vectors/`, sent over the wire, gets
//! its documented reaction: a response (with the documented error code),
//! silence (frames a server ignores), or the documented close code.

use std::path::Path;

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::frame::{self, Frame};
use crate::runner::{Case, Ctx};
use crate::vectors::{FrameKind, Vector, load_dir};
use crate::{ensure, ensure_eq, fail, skip};

/// The spec section a vector is about, from its name.
fn section(v: &Vector) -> String {
    let n = v.name.as_str();
    let method = v
        .expect
        .as_ref()
        .and_then(|e| e.method.clone())
        .or_else(|| v.method.clone())
        .unwrap_or_default();
    let by_method = |m: &str| match m {
        "auth" => Some("11.1"),
        "auth.refresh" => Some("11.2"),
        "ping" => Some("11.3"),
        "subscribe" => Some("11.4"),
        "unsubscribe" => Some("11.5"),
        "publish" => Some("11.6"),
        "presence.get" => Some("11.7"),
        "presence.set" => Some("11.8"),
        "cancel" => Some("8"),
        "history" => Some("23.7"),
        "history.latest" => Some("23.8"),
        "sync.push" => Some("24.5"),
        "sync.pull" => Some("24.6"),
        "sync.info" => Some("24.7"),
        "rpc.register" => Some("25.3"),
        "rpc.unregister" => Some("25.4"),
        "rpc.call" => Some("25.5"),
        "rpc.invoke" => Some("25.6"),
        "rpc.credit" => Some("25.7"),
        "rpc.list" => Some("25.8"),
        _ => None,
    };
    let base = if n.starts_with("request-id-") {
        "6.1"
    } else if n == "request-unknown-method" {
        "11.0, 12.7"
    } else if n == "request-trailing-element" {
        "5.1"
    } else if n.starts_with("request-") || n.starts_with("params-") {
        match v.expect.as_ref().map(|e| e.kind) {
            Some(FrameKind::Request) => by_method(&method).unwrap_or("11.0"),
            _ => by_method(&method).filter(|s| *s == "8").unwrap_or("12.7"),
        }
    } else if n.starts_with("response-") {
        "5.1, 5.3"
    } else if n.starts_with("notification-") {
        "12.7"
    } else if n.starts_with("chunk-") {
        "7.4"
    } else if n.starts_with("nonshortest-") {
        "4.5"
    } else if n.starts_with("depth-") {
        "4.4"
    } else if n.starts_with("size-") || n.starts_with("too-large") {
        "4.6"
    } else if n.starts_with("indefinite-") {
        "4.2"
    } else if n.starts_with("invalid-utf8-") {
        "4.3"
    } else if n.starts_with("envelope-") || n.starts_with("kind-") || n.starts_with("too-few-") {
        "5.1"
    } else if n.starts_with("id-") || n.starts_with("method-") {
        "5.2"
    } else if n.starts_with("seq-") || n.starts_with("final-") {
        "5.5"
    } else if n.starts_with("status-") || n.starts_with("error-") {
        "5.3"
    } else {
        "4.1"
    };
    let mut s = base.to_owned();
    if n.starts_with("notification-") {
        s = format!("5.4, {s}");
    }
    if ["tag", "float", "undefined", "simple"]
        .iter()
        .any(|w| n.contains(w))
    {
        s.push_str(", 4.7");
    }
    if !v.valid {
        s.push_str(", 15.3");
    }
    // The durable-stream frames (protocol.md 23): sent to a server, their
    // topics are not durable (§23.9).
    if [
        "durable",
        "since",
        "history",
        "resume",
        "conflict-seq",
        "conflict-expected",
    ]
    .iter()
    .any(|w| n.contains(w))
        || n.starts_with("params-publish-seq")
        || n.starts_with("params-publish-producer")
        || n.starts_with("params-publish-key")
        || n.starts_with("params-publish-expected")
        || n.starts_with("params-publish-duplicate-seq")
    {
        s.push_str(", 23.9");
    }
    s
}

fn title(v: &Vector) -> String {
    let reaction = if !v.valid {
        format!("closes with {}", v.close.unwrap_or(4005))
    } else if let Some(e) = &v.error {
        format!("is answered {e}")
    } else {
        match v.expect.as_ref().map(|e| e.kind) {
            Some(FrameKind::Request) => "is answered".to_owned(),
            _ => "is ignored".to_owned(),
        }
    };
    format!("{} — {reaction}", v.description)
}

/// The cases: one per vector in `dir`.
pub(super) fn cases(dir: &Path) -> Vec<Case> {
    match load_dir(dir) {
        Ok(vs) => vs
            .into_iter()
            .map(|v| {
                let id = format!("vector.{}", v.name);
                let (s, t) = (section(&v), title(&v));
                Case::new(&id, &s, &t, move |ctx| {
                    let v = v.clone();
                    async move { run(ctx, v).await }
                })
            })
            .collect(),
        Err(e) => {
            let e = e.to_string();
            vec![Case::new(
                "vector.load",
                "4.1",
                "the golden vectors load",
                move |_| {
                    let e = e.clone();
                    async move { fail!("{e}") }
                },
            )]
        }
    }
}

/// The frame to send: the vector's, or for vectors written against a
/// small `max_frame_size`, the same shape at the server's limit.
fn frame_to_send(ctx: &Ctx, v: &Vector) -> CaseResult<Vec<u8>> {
    let bytes = v
        .cbor()
        .map_err(|e| crate::check::CaseError::Fail(e.to_string()))?;
    let Some(m) = v.max_frame_size else {
        return Ok(bytes);
    };
    let limit = ctx.limits().max_frame_size;
    if limit > 64 * 1024 * 1024 {
        skip!("max_frame_size {limit} is too large to build this vector at");
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let target = if bytes.len() > m { limit + 1 } else { limit };
    if let Ok(Frame::Request { id, method, .. }) = frame::parse(&bytes, 64)
        && method == "ping"
    {
        return frame::ping_of_size(id, target).ok_or_else(|| {
            crate::check::CaseError::Fail(format!("cannot build a ping of {target} bytes"))
        });
    }
    Ok(vec![bytes.first().copied().unwrap_or(0xff); target])
}

async fn run(ctx: Ctx, v: Vector) -> CaseResult {
    if v.name.starts_with("depth-")
        && let Some(d) = ctx.limits().max_depth
        && d != 32
    {
        skip!("the vector is written for depth 32; the server announces max_depth {d}");
    }
    let bytes = frame_to_send(&ctx, &v)?;
    if !v.valid {
        let code = v.close.unwrap_or(4005);
        let mut c = ctx.client("a").await?;
        // The server may close before it has read everything.
        c.send_lossy(&bytes).await;
        c.expect_close(code, PROMPT).await?;
        return Ok(());
    }
    let Some(expect) = &v.expect else {
        fail!("vector {} is valid but has no expect", v.name);
    };
    match expect.kind {
        FrameKind::Request => request(ctx, &v, bytes).await,
        _ => ignored(ctx, bytes).await,
    }
}

/// A frame a server ignores: nothing comes back, the connection stays.
async fn ignored(ctx: Ctx, bytes: Vec<u8>) -> CaseResult {
    let mut c = ctx.client("a").await?;
    c.send(&bytes).await?;
    c.alive().await?;
    let stray = c.take_kept();
    ensure!(
        stray.is_empty(),
        "the server answered a frame it must ignore: {}",
        stray
            .iter()
            .map(Frame::describe)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(())
}

async fn request(ctx: Ctx, v: &Vector, bytes: Vec<u8>) -> CaseResult {
    let sent = frame::parse(&bytes, 64).map_err(|e| {
        crate::check::CaseError::Fail(format!("the vector does not parse here: {e}"))
    })?;
    let Frame::Request { id, method, params } = sent else {
        fail!("the vector is not a request");
    };
    let params_ok = v.params_valid.unwrap_or(true);
    if method == "auth" && !params_ok {
        // Before auth: invalid params leave the connection open (§11.1).
        let mut c = ctx.connect().await?;
        c.send(&bytes).await?;
        let want = v.error.as_deref().unwrap_or("invalid_params");
        expect_error(&mut c, id, want).await?;
        let token = ctx.token(&ctx.claims(&ctx.user("a"))).await?;
        return match ctx.auth(&mut c, &token).await? {
            Ok(_) => Ok(()),
            Err(e) => fail!("after invalid auth params, a valid auth failed: {}", e.code),
        };
    }
    // The record-sync vectors (§24) share their spaces: they are sent with a
    // token without sync capabilities, so a server serving record sync
    // answers forbidden after the params rule (invalid_params), one that
    // does not serves method_not_found before it (§11.0 steps 5, 7; §24.1).
    let is_sync = method.starts_with("sync.");
    let mut c = if is_sync {
        let user = ctx.user("a");
        ctx.client_with(&ctx.claims_caps(&user, &[">"], &[">"], true))
            .await?
    } else {
        ctx.client("a").await?
    };
    c.send(&bytes).await?;
    let r = c.response(id, PROMPT).await?;
    let want_error: Option<String> = if is_sync {
        Some(if !ctx.settings().sync {
            "method_not_found".into()
        } else if !params_ok {
            v.error.clone().unwrap_or_else(|| "invalid_params".into())
        } else {
            "forbidden".into()
        })
    } else if method == "rpc.invoke" {
        // The server's own request (§25.6): a client sending it is asking
        // for a method no server serves (§6.4), before any params rule.
        Some("method_not_found".into())
    } else if !params_ok {
        v.error.clone()
    } else {
        match method.as_str() {
            "auth" => Some("conflict".into()),
            "auth.refresh" => Some("unauthenticated".into()),
            "unsubscribe" => Some("not_found".into()),
            // A topic over the announced max_topic_len passes the params
            // rule but fails the method's first check (§11.4, §11.6, §11.7).
            "subscribe" | "publish" | "presence.get" if topic_too_long(&ctx, &params.raw) => {
                Some("payload_too_large".into())
            }
            // The vectors' topics (orders.…, chat.…, a.b) are not durable on
            // a server under test: durable-only keys, `since` and the
            // history methods are invalid_params there (§23.9).
            "subscribe" | "publish" if durable_only(&method, &params.raw) => {
                Some("invalid_params".into())
            }
            "history" | "history.latest" => Some("invalid_params".into()),
            // The runner's tokens grant no routed RPC (§25.1); no
            // registration 7 is the connection's (§25.4).
            "rpc.register" | "rpc.call" | "rpc.list" => Some("forbidden".into()),
            "rpc.unregister" => Some("not_found".into()),
            "ping" | "subscribe" | "publish" | "presence.get" | "presence.set" => None,
            _ => Some("method_not_found".into()),
        }
    };
    if is_sync && !ctx.settings().sync && !matches!(&r, Err(e) if e.code == "method_not_found") {
        skip!("the server serves {method}; pass --sync to check the record-sync vectors (§24)");
    }
    if method.starts_with("rpc.")
        && method != "rpc.invoke"
        && matches!(&r, Err(e) if e.code == "method_not_found")
    {
        skip!("the server does not serve {method} (answered method_not_found, §25)");
    }
    if is_sync && ctx.settings().sync && matches!(&r, Err(e) if e.code == "method_not_found") {
        skip!("the server does not serve {method} (answered method_not_found, §24)");
    }
    match (want_error, r) {
        (Some(want), Err(e)) => ensure_eq!(e.code, want, "error code"),
        (Some(want), Ok(r)) => fail!("answered with success {}; expected {want}", r.value),
        (None, Err(e)) => fail!("answered {} ({}); expected success", e.code, e.message),
        (None, Ok(r)) => check_result(&method, &params.raw, &r)?,
    }
    c.alive().await
}

/// Whether the params use a key of durable topics only: `since` (key 2)
/// of `subscribe`, keys 3–6 of `publish` (§23.3, §23.6); `null` is absent.
fn durable_only(method: &str, params: &[u8]) -> bool {
    let Ok(v) = crate::cbor::decode(params, 64) else {
        return false;
    };
    match method {
        "subscribe" => v.opt(2).is_some(),
        "publish" => (3..=6).any(|k| v.opt(k).is_some()),
        _ => false,
    }
}

/// Whether the params' topic (key 0) is longer than the announced limit.
fn topic_too_long(ctx: &Ctx, params: &[u8]) -> bool {
    let Ok(v) = crate::cbor::decode(params, 64) else {
        return false;
    };
    let max = usize::try_from(ctx.limits().max_topic_len).unwrap_or(usize::MAX);
    v.get(0)
        .and_then(|t| t.as_str())
        .is_some_and(|t| t.len() > max)
}

fn check_result(method: &str, params: &[u8], r: &frame::Item) -> CaseResult {
    match method {
        "ping" => ensure!(
            r.raw == params,
            "ping result {} differs from its params byte for byte (§11.3)",
            hex::encode(&r.raw)
        ),
        "publish" => ensure!(
            r.value.get(0).and_then(Value::as_u64).is_some(),
            "publish result {} lacks delivered",
            r.value
        ),
        "presence.get" => ensure!(
            r.value.get(0).and_then(Value::as_array).is_some(),
            "presence.get result {} lacks members",
            r.value
        ),
        _ => is_map(r, method)?,
    }
    Ok(())
}
