//! The RPC scenario: `ping` calls on the hub, or the same frames echoed by
//! the floor.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{FutureExt, SinkExt, StreamExt};
use minicbor::bytes::ByteSlice;
use plexus_protocol::frame::encode_request;
use plexus_protocol::{DecodeLimits, Frame};
use tokio_tungstenite::tungstenite::Message;

use super::conn::{ConnError, WAIT, Ws, connect, open};
use super::frames::{publish_window, rpc_payload};
use crate::clock::{now_nanos, read_stamp, stamp};
use crate::scenario::{RpcConfig, RpcResult};
use crate::stats::Latency;
use crate::window::Window;

/// Most calls written in one batch before a flush.
const MAX_BATCH: usize = 256;

/// Runs `ping` calls: C connections, K in flight each (never more than
/// the hub announces as `max_in_flight`). `authenticate` is false for the
/// floor, which echoes without a session.
pub async fn rpc(url: &str, cfg: &RpcConfig, authenticate: bool) -> RpcResult {
    let conns: Vec<(Ws, usize)> = futures_util::stream::iter(0..cfg.connections)
        .map(|i| {
            let url = url.to_owned();
            async move {
                if authenticate {
                    let s = connect(&url, &format!("rpc{i}"), None).await?;
                    let k = publish_window(cfg.in_flight, &s.limits, cfg.payload + 32);
                    Ok::<_, ConnError>((s.ws, k))
                } else {
                    Ok((open(&url).await?, cfg.in_flight))
                }
            }
        })
        .buffered(16)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    calls(conns, cfg, ping_frame).await
}

/// `[0, id, "ping", h'…']`.
fn ping_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let bytes: &ByteSlice = payload.into();
    encode_request(id, "ping", &bytes).unwrap_or_default()
}

/// Runs the callers on `conns` (each with its calls in flight) for the
/// window of `cfg`, every call the frame `frame(id, stamped payload)`
/// whose answer echoes the payload.
pub(super) async fn calls(
    conns: Vec<(Ws, usize)>,
    cfg: &RpcConfig,
    frame: fn(u64, &[u8]) -> Vec<u8>,
) -> RpcResult {
    let errors = Arc::new(AtomicU64::new(0));
    let win = Window::after(cfg.warmup, cfg.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|(ws, in_flight)| {
            tokio::spawn(rpc_conn(
                ws,
                in_flight,
                cfg.payload,
                win,
                errors.clone(),
                frame,
            ))
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

/// The next call's message: a fresh id and the send time in `buf`.
fn next_call(id: &mut u64, buf: &mut [u8], frame: fn(u64, &[u8]) -> Vec<u8>) -> Message {
    *id += 1;
    stamp(buf);
    Message::Binary(frame(*id, buf).into())
}

/// One caller connection, one task (as the NATS requester is): it writes
/// its first `in_flight` calls, then, for every answer, the next call;
/// the answers already read are handled together and their calls written
/// in one flush, and the read that waits carries the only timer.
async fn rpc_conn(
    mut ws: Ws,
    in_flight: usize,
    payload: usize,
    win: Window,
    errors: Arc<AtomicU64>,
    frame: fn(u64, &[u8]) -> Vec<u8>,
) -> (u64, Latency) {
    let limits = DecodeLimits::default();
    let mut buf = vec![0u8; payload.max(8)];
    let mut id = 100u64;
    let (mut n, mut lat) = (0u64, Latency::new());
    'run: {
        for _ in 0..in_flight.max(1) {
            if ws.feed(next_call(&mut id, &mut buf, frame)).await.is_err() {
                break 'run;
            }
        }
        loop {
            if ws.flush().await.is_err() {
                break 'run;
            }
            let mut next = match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(m))) => Some(m),
                _ => break 'run,
            };
            let mut batch = 0;
            while let Some(msg) = next.take() {
                if let Message::Binary(b) = msg {
                    let t = now_nanos();
                    match Frame::decode(b, &limits)
                        .ok()
                        .as_ref()
                        .and_then(rpc_payload)
                        .and_then(read_stamp)
                    {
                        Some(sent) if win.contains(t) => {
                            n += 1;
                            lat.record(t.saturating_sub(sent));
                        }
                        Some(_) => {}
                        None => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    if win.over(t) {
                        break 'run;
                    }
                    if ws.feed(next_call(&mut id, &mut buf, frame)).await.is_err() {
                        break 'run;
                    }
                    batch += 1;
                }
                if batch < MAX_BATCH {
                    // Whatever else is already read, without waiting.
                    next = ws.next().now_or_never().flatten().and_then(Result::ok);
                }
            }
        }
    }
    let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
    (n, lat)
}
