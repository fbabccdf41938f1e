//! WebSocket publishers in the shape of the server API's clients, for the
//! HTTP comparison (issue 13): C connections, each writing a burst of N
//! `publish` frames in one flush and waiting for all N answers before the
//! next burst — one publish in flight for N = 1 (as one HTTP request at a
//! time), N publishes per round trip for N = 100 (as one batch of 100).
//!
//! The sliding-window publisher of the fan-out scenario (N in flight at
//! all times, not in bursts) is [`super::fanout()`] with no subscribers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::{DecodeLimits, Frame};
use tokio_tungstenite::tungstenite::Message;

use super::conn::{Session, WAIT, Ws, connect_many};
use super::frames::{publish_frame, publish_window};
use crate::clock::now_nanos;
use crate::scenario::{PublishLoadConfig, PublishLoadResult};
use crate::stats::Latency;
use crate::window::Window;

/// What one load client did in the window: requests (HTTP requests or
/// WebSocket bursts) answered, publishes in them, and their latency.
#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) requests: u64,
    pub(super) publishes: u64,
    pub(super) latency: Latency,
}

/// Adds up the clients' counts over the window `win`; `batch` publishes
/// per request.
pub(super) async fn gather(
    tasks: Vec<tokio::task::JoinHandle<Counts>>,
    win: Window,
    batch: usize,
    errors: &AtomicU64,
) -> PublishLoadResult {
    let mut all = Counts::default();
    for t in tasks {
        if let Ok(c) = t.await {
            all.requests += c.requests;
            all.publishes += c.publishes;
            all.latency.merge(&c.latency);
        }
    }
    PublishLoadResult {
        requests_per_sec: all.requests as f64 / win.secs(),
        publishes_per_sec: all.publishes as f64 / win.secs(),
        latency: all.latency.summary(),
        batch,
        errors: errors.load(Ordering::Relaxed),
    }
}

/// One publisher: bursts of `burst` publishes on `topic` until the window
/// is over.
async fn bursts(
    mut ws: Ws,
    topic: String,
    burst: usize,
    payload: usize,
    win: Window,
    errors: Arc<AtomicU64>,
) -> Counts {
    let limits = DecodeLimits::default();
    let mut buf = vec![0u8; payload.max(8)];
    let mut id = 10u64;
    let mut c = Counts::default();
    'run: while !win.over(now_nanos()) {
        let t0 = now_nanos();
        for _ in 0..burst {
            id += 1;
            let frame = Message::Binary(publish_frame(id, &topic, &mut buf));
            if ws.feed(frame).await.is_err() {
                errors.fetch_add(1, Ordering::Relaxed);
                break 'run;
            }
        }
        if ws.flush().await.is_err() {
            errors.fetch_add(1, Ordering::Relaxed);
            break;
        }
        let (mut answered, mut ok) = (0, 0u64);
        while answered < burst {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Ok(Frame::Response(r)) = Frame::decode(b, &limits) {
                        answered += 1;
                        if r.outcome.is_ok() {
                            ok += 1;
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    break 'run;
                }
            }
        }
        let t = now_nanos();
        if win.contains(t) {
            c.requests += 1;
            c.publishes += ok;
            c.latency.record(t.saturating_sub(t0));
        }
    }
    let _ = tokio::time::timeout(WAIT, ws.close(None)).await;
    c
}

/// Runs `cfg.clients` WebSocket publishers against the hub at `url`, each
/// writing bursts of `cfg.batch` publishes (capped by the hub's
/// `max_in_flight`) and awaiting every answer of a burst.
pub async fn ws_publish(url: &str, cfg: &PublishLoadConfig) -> PublishLoadResult {
    let errors = Arc::new(AtomicU64::new(0));
    let sessions = connect_many(url, &[], cfg.clients, 16, |_| None).await;
    let frame_len = publish_frame(u64::MAX, &cfg.topic(0), &mut vec![0; cfg.payload.max(8)]).len();
    let mut used = cfg.batch.max(1);
    let win = Window::after(cfg.warmup, cfg.duration);
    let mut tasks = Vec::new();
    for (j, s) in sessions.into_iter().enumerate() {
        let Ok(Session { ws, limits }) = s else {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let burst = publish_window(cfg.batch.max(1), &limits, frame_len);
        used = used.min(burst);
        tasks.push(tokio::spawn(bursts(
            ws,
            cfg.topic(j),
            burst,
            cfg.payload,
            win,
            errors.clone(),
        )));
    }
    gather(tasks, win, used, &errors).await
}
