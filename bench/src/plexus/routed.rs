//! Routed RPC (issue 12): C callers × K calls in flight through the hub to
//! N callee connections that registered `bench.echo` and echo each
//! invocation's params, beside NATS request/reply to N responders in a
//! queue group (`nats::request_reply_shared`).
//!
//! The callers write `rpc.call` frames by hand (as the `ping` scenario
//! writes `ping`); a callee reads `rpc.invoke` requests and answers each
//! with its params, every answer of one read in one write (as the NATS
//! responder does).

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::encode_result;
use plexus_protocol::methods::rpc::{CallParams, InvokeParams, Policy, RegisterParams};
use plexus_protocol::{DecodeLimits, Frame};
use tokio_tungstenite::tungstenite::Message;

use super::conn::{ConnError, Session, Ws, call, connect_with};
use super::frames::publish_window;
use super::rpc::calls;
use crate::procs::rpc_token;
use crate::scenario::{RpcConfig, RpcResult};

/// The procedure the callees register.
pub const PROCEDURE: &str = "bench.echo";

/// Most answers a callee writes in one batch before a flush.
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
    routed_across(url, &[url.to_owned()], cfg, callees).await
}

/// Longest wait for the callees to be routable from the callers' node.
const ROUTABLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// [`routed`] with the callers on `caller_url` and callee `i` on
/// `callee_urls[i % len]` (cluster mode: the calls cross nodes). Calls
/// start once one probe call from the callers' node succeeds.
pub async fn routed_across(
    caller_url: &str,
    callee_urls: &[String],
    cfg: &RpcConfig,
    callees: usize,
) -> RpcResult {
    let callees = callees.max(1);
    let failed = || RpcResult {
        errors: cfg.connections.max(1) as u64,
        ..RpcResult::default()
    };
    if callee_urls.is_empty() {
        return failed();
    }
    let share = (cfg.connections * cfg.in_flight).div_ceil(callees) as u64;
    for i in 0..callees {
        let url = &callee_urls[i % callee_urls.len()];
        let started = match connect_with(url, None, &rpc_token(&format!("callee{i}")), None).await {
            Ok(s) => callee(s, share).await,
            Err(e) => Err(e),
        };
        if started.is_err() {
            return failed();
        }
    }
    if !routable(caller_url).await {
        return failed();
    }
    let conns: Vec<(Ws, usize)> = futures_util::stream::iter(0..cfg.connections)
        .map(|i| {
            let url = caller_url.to_owned();
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
    calls(conns, cfg, call_frame).await
}

/// Whether a call from `url` reaches a callee within [`ROUTABLE_WAIT`]
/// (another node's registrations reach this one's directory in a moment).
async fn routable(url: &str) -> bool {
    let Ok(mut s) = connect_with(url, None, &rpc_token("probe"), None).await else {
        return false;
    };
    let deadline = tokio::time::Instant::now() + ROUTABLE_WAIT;
    let bytes: &minicbor::bytes::ByteSlice = [0u8][..].into();
    let Ok(item) = plexus_protocol::RawValue::encode(&bytes) else {
        return false;
    };
    let params = CallParams::new(PROCEDURE).with_params(item.as_raw_ref());
    while tokio::time::Instant::now() < deadline {
        if call(&mut s.ws, 1, "rpc.call", &params).await.is_ok() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    false
}

/// `[0, id, "rpc.call", {0: PROCEDURE, 1: h'…'}]`, written directly.
fn call_frame(id: u64, payload: &[u8]) -> Vec<u8> {
    let mut e = minicbor::Encoder::new(Vec::with_capacity(payload.len() + 32));
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
    e.into_writer()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hand_written_call_frame_is_the_protocol_crate_s() {
        let payload = [1u8, 2, 3];
        let ours = call_frame(7, &payload);
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
