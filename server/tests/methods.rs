//! The registry's kinds over real sockets: streamed replies with credit,
//! server-initiated requests (P20), panics and unknown methods.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use plexus_protocol::methods::Empty;
use plexus_protocol::{ErrorCode, Frame, RawValue, Response, WireError};
use plexus_server::session::methods::debug::{CallParams, StreamParams};
use plexus_testkit::*;

#[tokio::test]
async fn a_streamed_reply_to_a_stalled_reader_waits_for_credit() {
    // 60 chunks of 8 KiB through a 64 KiB queue to a reader that is not
    // reading: pushed blindly they would overflow it (4006); with credit
    // the stream waits, and the reader gets all of them once it reads.
    let server = TestHub::start(|c| {
        c.max_outbound_bytes = 64 * 1024;
        c.max_frame_size = 16 * 1024;
        c.max_payload = 4 * 1024;
        c.tcp_send_buffer = 16 * 1024;
    })
    .await;
    let mut c = Client::connect_stalled(server.addr()).await;
    c.auth(&token("alice")).await.unwrap();
    let id = c
        .request(
            "debug.stream",
            &StreamParams {
                count: 60,
                size: 8192,
            },
        )
        .await;
    // Stall: the hub fills the socket buffers and its queue's credit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for seq in 0..60 {
        match c.next_frame().await.unwrap() {
            Frame::Chunk(ch) => {
                assert_eq!((ch.id, ch.seq, ch.fin), (id, seq, false));
                let data: minicbor::bytes::ByteVec = ch.data.decode().unwrap();
                assert_eq!(data.len(), 8192);
            }
            other => panic!("expected chunk {seq}, got {other:?}"),
        }
    }
    match c.next_frame().await.unwrap() {
        Frame::Chunk(ch) => {
            assert_eq!((ch.id, ch.seq, ch.fin), (id, 60, true));
            assert!(ch.data.is_null());
        }
        other => panic!("expected the final chunk, got {other:?}"),
    }
    c.call("ping", &Empty {})
        .await
        .expect("never a slow-consumer close");
}

#[tokio::test]
async fn a_chunk_larger_than_the_frame_size_is_refused() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let err = c
        .call(
            "debug.stream",
            &StreamParams {
                count: 1,
                size: 2 * 1024 * 1024,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParams);
}

/// Sends `debug.call` for `method` and returns its id and the request the
/// hub sent in turn.
async fn call_back(c: &mut Client, method: &str, timeout_ms: Option<u64>) -> (u64, u64) {
    let params = raw(&("hello", 1u8));
    let id = c
        .request(
            "debug.call",
            &CallParams {
                method,
                params: params.as_raw_ref(),
                timeout_ms,
            },
        )
        .await;
    match c.next_frame().await.unwrap() {
        Frame::Request(r) => {
            assert_eq!(r.method, method);
            assert_eq!(r.params, params, "params passed unchanged");
            (id, r.id)
        }
        other => panic!("expected the hub's request, got {other:?}"),
    }
}

#[tokio::test]
async fn server_initiated_requests_route_answers_back() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    // A result.
    let (id, sid) = call_back(&mut c, "app.echo", None).await;
    let answer = raw(&[1u8, 2, 3]);
    c.send_bytes(
        Frame::Response(Response {
            id: sid,
            outcome: Ok(answer.clone()),
        })
        .to_vec(),
    )
    .await;
    assert_eq!(c.response(id).await.unwrap(), answer);
    // An error object, passed on unchanged.
    let (id, sid2) = call_back(&mut c, "app.fail", None).await;
    assert_ne!(sid, sid2, "the hub's own id space");
    let e = WireError::new(ErrorCode::from_name("app_error"), "nope");
    c.send_bytes(
        Frame::Response(Response {
            id: sid2,
            outcome: Err(e.clone()),
        })
        .to_vec(),
    )
    .await;
    assert_eq!(c.response(id).await.unwrap_err(), e);
    // No answer: timeout, and the request is withdrawn with `cancel`.
    let (id, sid3) = call_back(&mut c, "app.slow", Some(200)).await;
    assert_eq!(c.response(id).await.unwrap_err().code, ErrorCode::Timeout);
    let cancel = c.notification("cancel").await;
    let p: plexus_protocol::methods::CancelParams = cancel.params.decode().unwrap();
    assert_eq!(p.id, sid3);
    // A late answer, and one for an id the hub never used, are ignored.
    for stray in [sid3, 999_999] {
        c.send_bytes(
            Frame::Response(Response {
                id: stray,
                outcome: Ok(RawValue::null()),
            })
            .to_vec(),
        )
        .await;
    }
    c.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn a_panicking_handler_answers_internal_and_the_session_goes_on() {
    let server = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(server.addr(), &token("alice")).await;
    let err = c.call("debug.panic", &Empty {}).await.unwrap_err();
    assert_eq!(
        (err.code, err.message.as_str()),
        (ErrorCode::Internal, "internal error")
    );
    c.call("ping", &Empty {}).await.unwrap();
}
