//! Routed RPC (issue 12): C callers × K calls in flight through the hub to
//! N callee connections that registered `bench.echo` and echo each
//! invocation's params, beside NATS request/reply to N responders in a
//! queue group (`nats::request_reply_shared`).
//!
//! The callers write `rpc.call` frames by hand (as the `ping` scenario
//! writes `ping`); a callee reads `rpc.invoke` requests and answers each
//! with its params, every answer of one read in one write (as the NATS
//! responder does).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::encode_result;
use plexus_protocol::methods::rpc::{InvokeParams, Policy, RegisterParams};
use plexus_protocol::{DecodeLimits, Frame};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{ConnError, Session, Ws, call, connect_with};
use super::fanout::read_answers;
use super::frames::{publish_window, rpc_payload};
use crate::clock::{now_nanos, read_stamp, stamp};
use crate::procs::rpc_token;
use crate::scenario::{RpcConfig, RpcResult};
use crate::stats::Latency;
use crate::window::Window;

/// The procedure the callees register.
pub const PROCEDURE: &str = "bench.echo";

/// Most calls written in one batch before a flush.
const MAX_BATCH: usize = 256;

/// A callee: registers [`PROCEDURE`] (policy `least_pending`, so that
/// several callees share the calls; `max_concurrency` its share of the
/// calls in flight) and answers until the connection ends.
async fn callee(session: Session, share: u64) -> Result<(), ConnError> {
    let mut ws = session.ws;
    let params = RegisterParams::new(PROCEDURE)
        .with_policy(Policy::LeastPending)
        .with_max_concurrency(share.clamp(1, 1024));
    call(&mut ws, 2, "rpc.register", &params).await?;
    tokio::spawn(answer(ws));
    Ok(())
}

/// Answers every `rpc.invoke` with its params; the answers to the frames
/// that were ready together go out in one flush.
async fn answer(ws: Ws) {
    let (mut tx, mut rx) = ws.split();
    let limits = DecodeLimits::default();
    while let Some(Ok(msg)) = rx.next().await {
        let mut pending = Some(msg);
        let mut batch = 0;
        while let Some(msg) = pending.take() {
            if let Message::Binary(b) = msg
                && let Ok(Frame::Request(r)) = Frame::decode(b, &limits)
                && let Ok(inv) = r.params.decode::<InvokeParams<'_>>()
                && let Ok(frame) = encode_result(r.id, &inv.params)
            {
                if tx.feed(Message::Binary(frame.into())).await.is_err() {
                    return;
                }
                batch += 1;
            }
            if batch < MAX_BATCH {
                // Whatever else is already read, without waiting.
                pending = futures_util::FutureExt::now_or_never(rx.next())
                    .flatten()
                    .and_then(Result::ok);
            }
        }
        if tx.flush().await.is_err() {
            return;
        }
    }
}

/// Runs `cfg.connections` callers with `cfg.in_flight` calls each through
/// the hub at `url` to `callees` callees.
pub async fn routed(url: &str, cfg: &RpcConfig, callees: usize) -> RpcResult {
    let errors = Arc::new(AtomicU64::new(0));
    let callees = callees.max(1);
    let share = (cfg.connections * cfg.in_flight).div_ceil(callees) as u64;
    for i in 0..callees {
        let started = match connect_with(url, None, &rpc_token(&format!("callee{i}")), None).await {
            Ok(s) => callee(s, share).await,
            Err(e) => Err(e),
        };
        if started.is_err() {
            return RpcResult {
                errors: cfg.connections.max(1) as u64,
                ..RpcResult::default()
            };
        }
    }
    let conns: Vec<(Ws, usize)> = futures_util::stream::iter(0..cfg.connections)
        .map(|i| {
            let url = url.to_owned();
            async move {
                let s = connect_with(&url, None, &rpc_token(&format!("caller{i}")), None).await?;
                let k = publish_window(cfg.in_flight, &s.limits, cfg.payload + 64);
                Ok::<_, ConnError>((s.ws, k))
            }
        })
        .buffered(16)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(ws, in_flight)| {
            tokio::spawn(caller(ws, in_flight, cfg.payload, win, errors.clone()))
        })
        .collect();
    let mut calls = 0;
    let mut lat = Latency::new();
    for t in tasks {
        if let Ok((n, l)) = t.await {
            calls += n;
            lat.merge(&l);
        }
    }
    RpcResult {
        calls_per_sec: calls as f64 / win.secs(),
        latency: lat.summary(),
        errors: errors.load(Ordering::Relaxed),
    }
}

/// `[0, id, "rpc.call", {0: PROCEDURE, 1: h'…'}]`, written directly.
fn call_frame(out: &mut Vec<u8>, id: u64, payload: &[u8]) {
    out.clear();
    let mut e = minicbor::Encoder::new(&mut *out);
    // Encoding into a Vec cannot fail.
    let _ = e
        .array(4)
        .and_then(|e| e.u8(0))
        .and_then(|e| e.u64(id))
        .and_then(|e| e.str("rpc.call"))
        .and_then(|e| e.map(2))
        .and_then(|e| e.u8(0))
        .and_then(|e| e.str(PROCEDURE))
        .and_then(|e| e.u8(1))
        .and_then(|e| e.bytes(payload));
}

async fn caller(
    ws: Ws,
    in_flight: usize,
    payload: usize,
    win: Window,
    errors: Arc<AtomicU64>,
) -> (u64, Latency) {
    let (mut tx, rx) = ws.split();
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let reader = tokio::spawn(read_answers(
        rx,
        permits.clone(),
        win,
        (0u64, Latency::new()),
        {
            let errors = errors.clone();
            move |(n, lat): &mut (u64, Latency), frame: Result<Frame, _>, t: u64| match frame
                .ok()
                .as_ref()
                .and_then(rpc_payload)
                .and_then(read_stamp)
            {
                Some(sent) if win.contains(t) => {
                    *n += 1;
                    lat.record(t.saturating_sub(sent));
                }
                Some(_) => {}
                None => {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        },
    ));
    let mut buf = vec![0u8; payload.max(8)];
    let mut frame = Vec::with_capacity(payload + 64);
    let mut id = 100u64;
    while !win.over(now_nanos()) {
        let Ok(p) = permits.acquire().await else {
            break;
        };
        p.forget();
        let mut batch = 0;
        loop {
            id += 1;
            batch += 1;
            stamp(&mut buf);
            call_frame(&mut frame, id, &buf);
            if tx
                .feed(Message::Binary(frame.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            match permits.try_acquire() {
                Ok(p) if batch < MAX_BATCH => p.forget(),
                _ => break,
            }
        }
        if tx.flush().await.is_err() {
            break;
        }
    }
    let _ = tx.close().await;
    reader.await.unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::methods::rpc::CallParams;

    #[test]
    fn the_hand_written_call_frame_is_the_protocol_crate_s() {
        let payload = [1u8, 2, 3];
        let mut ours = Vec::new();
        call_frame(&mut ours, 7, &payload);
        let bytes: &minicbor::bytes::ByteSlice = payload[..].into();
        let item = plexus_protocol::RawValue::encode(&bytes).unwrap();
        let theirs = plexus_protocol::frame::encode_request(
            7,
            "rpc.call",
            &CallParams::new(PROCEDURE).with_params(item.as_raw_ref()),
        )
        .unwrap();
        assert_eq!(ours, theirs);
    }
}
