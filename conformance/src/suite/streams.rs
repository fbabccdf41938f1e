//! §7 and P20: chunk streams (with the test-only `debug.stream`) and
//! server-initiated requests (with `debug.call`).

use std::time::Duration;

use super::util::*;
use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::{self, Frame, Item};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

fn stream_params(count: u64, size: u64) -> Value {
    Value::map([(0, Value::Uint(count)), (1, Value::Uint(size))])
}

/// What a stream delivered for one request.
#[derive(Debug)]
struct Stream {
    chunks: Vec<(u64, bool, Item)>,
    error: Option<String>,
}

/// Reads the frames of request `id` until its terminal frame (§7.2).
async fn read_stream(c: &mut Conn, id: u64, within: Duration) -> CaseResult<Stream> {
    let mut s = Stream {
        chunks: Vec::new(),
        error: None,
    };
    loop {
        let f = c
            .wait_for(
                within,
                &format!("chunk or response for request {id}"),
                |f| match f {
                    Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                        Some(f.clone())
                    }
                    _ => None,
                },
            )
            .await?;
        match f {
            Frame::Chunk { seq, fin, data, .. } => {
                s.chunks.push((seq, fin, data));
                if fin {
                    return Ok(s);
                }
            }
            Frame::Response {
                outcome: Err(e), ..
            } => {
                if e.code == "method_not_found" && s.chunks.is_empty() {
                    skip!(
                        "the server answers method_not_found for debug.stream (a test-only method: plexus serves debug.* in debug builds started with --debug-methods; this server lacks it)"
                    );
                }
                s.error = Some(e.code);
                return Ok(s);
            }
            Frame::Response { outcome: Ok(r), .. } => {
                fail!(
                    "a streaming request ended with a success response {} instead of a final chunk (§7.2)",
                    r.value
                )
            }
            _ => {}
        }
    }
}

fn check_seq(s: &Stream) -> CaseResult {
    for (i, (seq, _, _)) in s.chunks.iter().enumerate() {
        ensure_eq!(*seq, i as u64, "seq of chunk {i} (§7.1)");
    }
    Ok(())
}

/// Starts `debug.call` for `method params`; returns the call's id and the
/// server's request (id, params).
async fn server_request(
    ctx: &Ctx,
    c: &mut Conn,
    method: &str,
    params: Value,
    timeout_ms: Option<u64>,
) -> CaseResult<(u64, u64, Item)> {
    let mut p = vec![(0, Value::text(method)), (1, params)];
    if let Some(t) = timeout_ms {
        p.push((2, Value::Uint(t)));
    }
    let call = c.request("debug.call", &Value::map(p)).await?;
    let want = method.to_owned();
    let got = c
        .wait_for(
            PROMPT,
            "the server's request (or the debug.call answer)",
            |f| match f {
                Frame::Request { id, method, params } if *method == want => {
                    Some(Ok((*id, params.clone())))
                }
                Frame::Response { id, outcome } if *id == call => Some(Err(outcome.clone())),
                _ => None,
            },
        )
        .await?;
    match got {
        Ok((sid, params)) => Ok((call, sid, params)),
        Err(outcome) => {
            ctx.debug_check("debug.call", &outcome)?;
            fail!("debug.call answered before the server sent its request: {outcome:?}")
        }
    }
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "chunks.stream",
            "7.1, 7.2, 5.5",
            "a streamed result: chunks seq 0, 1, 2, ... with final false, then one final chunk, and no response",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.request("debug.stream", &stream_params(4, 16)).await?;
                let s = read_stream(&mut c, id, PROMPT).await?;
                ensure!(s.error.is_none(), "the stream failed with {:?}", s.error);
                check_seq(&s)?;
                ensure_eq!(s.chunks.len(), 5, "chunks (4 data + the final one)");
                for (seq, fin, data) in &s.chunks[..4] {
                    ensure!(!fin, "chunk {seq} is final too early");
                    ensure!(
                        matches!(&data.value, Value::Bytes(b) if b.len() == 16),
                        "data of chunk {seq} is {}, not a 16-byte string",
                        data.value
                    );
                }
                ensure!(
                    s.chunks[4].2.value.is_null(),
                    "the final chunk's data is {} (debug.stream ends with null)",
                    s.chunks[4].2.value
                );
                c.none_within(QUIET, "frame for the finished stream", |f| {
                    f.reply_id() == Some(id)
                })
                .await
            },
        ),
        Case::new(
            "chunks.stream-empty",
            "7.2",
            "a stream of no items is one final chunk with seq 0",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c.request("debug.stream", &stream_params(0, 0)).await?;
                let s = read_stream(&mut c, id, PROMPT).await?;
                ensure!(s.error.is_none(), "the stream failed with {:?}", s.error);
                ensure_eq!(s.chunks.len(), 1, "chunks");
                ensure_eq!(s.chunks[0].0, 0, "seq");
                Ok(())
            },
        ),
        Case::new(
            "chunks.stream-id-reusable",
            "7.2, 6.1",
            "after the final chunk the id is free again",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send(&frame::request(33, "debug.stream", &stream_params(3, 8)))
                    .await?;
                read_stream(&mut c, 33, PROMPT).await?;
                c.send(&frame::request(33, "ping", &Value::Null)).await?;
                expect_ok(&mut c, 33).await.map(drop)
            },
        ),
        Case::new(
            "chunks.streams-interleaved",
            "7.1, 6.2",
            "two streams of one connection each keep their own sequence",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let a = c.request("debug.stream", &stream_params(20, 32)).await?;
                let b = c.request("debug.stream", &stream_params(20, 32)).await?;
                let sa = read_stream(&mut c, a, PROMPT).await?;
                let sb = read_stream(&mut c, b, PROMPT).await?;
                check_seq(&sa)?;
                check_seq(&sb)?;
                ensure!(
                    sa.chunks.len() == 21 && sb.chunks.len() == 21,
                    "chunk counts {} and {}",
                    sa.chunks.len(),
                    sb.chunks.len()
                );
                Ok(())
            },
        ),
        Case::new(
            "chunks.never-oversized",
            "4.6, 7.2, H2",
            "a stream item as large as max_frame_size is never sent in an oversized frame; the request still ends",
            |ctx| async move {
                let max = ctx.limits().max_frame_size;
                if max > 16 << 20 {
                    skip!("max_frame_size {max} is too large for this case");
                }
                let mut c = ctx.client("a").await?;
                let id = c.request("debug.stream", &stream_params(1, max)).await?;
                // Conn fails the case on any frame over max_frame_size.
                read_stream(&mut c, id, PROMPT).await?;
                c.alive().await
            },
        ),
        Case::new(
            "chunks.stream-cancelled",
            "8, 7.2",
            "cancel during a stream ends it with one terminal frame (cancelled, or the final chunk if it was done)",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let id = c
                    .request("debug.stream", &stream_params(100_000, 64))
                    .await?;
                let first = c
                    .wait_for(PROMPT, "the first chunk", |f| match f {
                        Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                            Some(f.clone())
                        }
                        _ => None,
                    })
                    .await?;
                if let Frame::Response { outcome, .. } = &first {
                    ctx.debug_check("debug.stream", outcome)?;
                    fail!("the stream ended at once with {}", first.describe());
                }
                c.notify("cancel", &cancel(id)).await?;
                let s = read_stream(&mut c, id, Duration::from_secs(10)).await?;
                if let Some(e) = &s.error {
                    ensure_eq!(e.as_str(), "cancelled", "error after cancel");
                }
                c.none_within(QUIET, "frame after the terminal one", |f| {
                    f.reply_id() == Some(id)
                })
                .await
            },
        ),
        Case::new(
            "chunks.unknown-id-ignored",
            "7.4",
            "a chunk for an id that names no request is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send(&frame::chunk(98_765, 0, false, &Value::Bytes(vec![1])))
                    .await?;
                c.send(&frame::chunk(98_765, 1, true, &Value::Null)).await?;
                c.alive().await?;
                ensure!(
                    c.take_kept().is_empty(),
                    "the server answered a stray chunk"
                );
                Ok(())
            },
        ),
        Case::new(
            "chunks.for-non-upload-ignored",
            "7.4",
            "a chunk for an in-flight request that takes no upload is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                super::requests::sleep_in_flight(&mut c, 12, 400).await?;
                c.send(&frame::chunk(12, 0, true, &Value::text("stray")))
                    .await?;
                let r = expect_ok(&mut c, 12).await?;
                is_map(&r, "debug.sleep")
            },
        ),
        Case::new(
            "serverreq.answered",
            "5.1, P20",
            "the server sends a request frame in its own id space and routes the client's response back",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let params = Value::map([(0, Value::text("question"))]);
                let (call, sid, got) =
                    server_request(&ctx, &mut c, "conformance.echo", params.clone(), None).await?;
                ensure_eq!(got.value, params, "params of the server's request");
                let answer = Value::map([(0, Value::text("answer")), (1, Value::Uint(42))]);
                c.send(&frame::response_ok(sid, &answer)).await?;
                let r = expect_ok(&mut c, call).await?;
                ensure_eq!(r.value, answer, "debug.call result (the client's answer)");
                Ok(())
            },
        ),
        Case::new(
            "serverreq.error-answer",
            "P20",
            "an error response from the client is the outcome of the server's request",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let (call, sid, _) =
                    server_request(&ctx, &mut c, "conformance.unknown", Value::Null, None).await?;
                c.send(&frame::response_error(
                    sid,
                    "method_not_found",
                    "not served here",
                ))
                .await?;
                match c.response(call, PROMPT).await? {
                    Err(_) => Ok(()),
                    Ok(r) => fail!(
                        "debug.call succeeded with {} although the client answered an error",
                        r.value
                    ),
                }
            },
        ),
        Case::new(
            "serverreq.routed-by-id",
            "P20, 6.2",
            "two server requests answered in reverse order each reach their own call",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let (call1, sid1, _) =
                    server_request(&ctx, &mut c, "conformance.one", Value::Uint(1), None).await?;
                let (call2, sid2, _) =
                    server_request(&ctx, &mut c, "conformance.two", Value::Uint(2), None).await?;
                ensure!(sid1 != sid2, "both server requests have id {sid1}");
                c.send(&frame::response_ok(sid2, &Value::text("second")))
                    .await?;
                c.send(&frame::response_ok(sid1, &Value::text("first")))
                    .await?;
                ensure_eq!(
                    expect_ok(&mut c, call1).await?.value,
                    Value::text("first"),
                    "first call"
                );
                ensure_eq!(
                    expect_ok(&mut c, call2).await?.value,
                    Value::text("second"),
                    "second call"
                );
                Ok(())
            },
        ),
        Case::new(
            "serverreq.withdrawn",
            "P20",
            "a server request the client leaves unanswered is withdrawn at its timeout: the call fails, a cancel names the server's id",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                let (call, sid, _) =
                    server_request(&ctx, &mut c, "conformance.slow", Value::Null, Some(300))
                        .await?;
                match c.response(call, Duration::from_secs(3)).await? {
                    Err(_) => {}
                    Ok(r) => fail!("debug.call succeeded with {} without an answer", r.value),
                }
                for f in c.take_kept() {
                    if let Frame::Notification { method, params } = &f
                        && method == "cancel"
                    {
                        ensure_eq!(
                            params.value.get(0).and_then(Value::as_u64),
                            Some(sid),
                            "the cancel's id"
                        );
                    }
                }
                Ok(())
            },
        ),
        Case::new(
            "serverreq.unknown-response-ignored",
            "12.7, P20",
            "a response naming no server request is ignored",
            |ctx| async move {
                let mut c = ctx.client("a").await?;
                c.send(&frame::response_ok(555_555, &Value::text("nobody asked")))
                    .await?;
                c.send(&frame::response_error(555_556, "internal", "nobody asked"))
                    .await?;
                c.alive().await
            },
        ),
    ]
}
