//! Stalled subscribers: K subscribers that never read while a publisher
//! sends small events until the hub has closed them all as slow consumers
//! (4006). The hub's RSS is compared with what its outbound budget should
//! bound: K × `max-outbound-bytes`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::{DecodeLimits, Frame};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{Session, WAIT, Ws, connect, connect_many};
use super::fanout::close_codes;
use super::frames::{delivered, publish_frame, publish_window};
use crate::procs::HubProcess;
use crate::rss::{PeakSampler, rss_kib};
use crate::scenario::{StalledConfig, StalledResult};

/// The topic of stalled subscriber `i`.
fn topic(cfg: &StalledConfig, i: usize) -> String {
    format!("bench.stalled.{}", i % cfg.topics.max(1))
}

/// The smallest outbound budget the scenario runs with (the hub needs
/// room for two frames of its `max-frame-size`, itself at least the 16 KiB
/// pre-auth size).
pub const MIN_OUTBOUND_BYTES: usize = 64 * 1024;

/// How long stalled subscribers get, at the end, to show how they were
/// closed.
const CLOSE_GRACE: Duration = Duration::from_secs(5);

/// The hub flags for a run: the outbound budget, a frame size and payload
/// limit that a hub validating its settings accepts with it (the budget
/// holds two frames, a frame holds the largest payload), and a small
/// kernel send buffer so a stalled socket's backlog lands in the hub's
/// queue, not the kernel's.
pub fn stalled_hub_args(max_outbound_bytes: usize) -> Vec<String> {
    let budget = max_outbound_bytes.max(MIN_OUTBOUND_BYTES);
    let frame = (budget / 2).min(1 << 20);
    let payload = (frame / 2).min(256 * 1024);
    [
        "--max-outbound-bytes".to_owned(),
        budget.to_string(),
        "--max-frame-size".to_owned(),
        frame.to_string(),
        "--max-payload".to_owned(),
        payload.to_string(),
        "--tcp-send-buffer".to_owned(),
        "65536".to_owned(),
    ]
    .to_vec()
}

/// What the publisher saw.
struct Published {
    answered: u64,
    window: usize,
    all_closed: Option<Duration>,
}

/// Publishes `window` at a time, cycling through the topics, until a
/// whole round of topics reaches no subscriber (all were closed) or
/// `timeout` passes.
async fn publish_until_closed(session: Session, cfg: &StalledConfig) -> Published {
    let Session { mut ws, limits } = session;
    let topics: Vec<String> = (0..cfg.topics.max(1)).map(|i| topic(cfg, i)).collect();
    let mut buf = vec![0u8; cfg.payload.max(8)];
    let frame_len = publish_frame(u64::MAX, &topics[0], &mut buf).len();
    let window = publish_window(cfg.window, &limits, frame_len);
    let started = Instant::now();
    let mut p = Published {
        answered: 0,
        window,
        all_closed: None,
    };
    let mut id = 10u64;
    let mut next_topic = 0;
    // Publishes in a row that reached no subscriber.
    let mut missed = 0;
    let dlimits = DecodeLimits::default();
    'run: while started.elapsed() < cfg.timeout {
        for _ in 0..window {
            id += 1;
            let frame = publish_frame(id, &topics[next_topic], &mut buf);
            next_topic = (next_topic + 1) % topics.len();
            if ws.feed(Message::Binary(frame)).await.is_err() {
                break 'run;
            }
        }
        if ws.flush().await.is_err() {
            break;
        }
        let mut answers = 0;
        while answers < window {
            match tokio::time::timeout(WAIT, ws.next()).await {
                Ok(Some(Ok(Message::Binary(b)))) => {
                    if let Ok(f @ Frame::Response(_)) = Frame::decode(b, &dlimits) {
                        answers += 1;
                        match delivered(&f) {
                            Some(0) => missed += 1,
                            _ => missed = 0,
                        }
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => break 'run,
            }
        }
        p.answered += answers as u64;
        if missed >= topics.len() {
            p.all_closed = Some(started.elapsed());
            break;
        }
    }
    let _ = ws.close(None).await;
    p
}

/// Runs the scenario against a hub started with [`stalled_hub_args`]
/// (`cfg.max_outbound_bytes` must be the budget it was given).
pub async fn stalled(hub: &HubProcess, cfg: &StalledConfig) -> StalledResult {
    let url = hub.url();
    let pid = hub.pid().unwrap_or(0);
    let rss = || rss_kib(pid).unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss();
    let mut subs: Vec<Ws> = connect_many(&url, &[], cfg.subscribers, 64, |i| Some(topic(cfg, i)))
        .await
        .into_iter()
        .filter_map(|s| s.ok().map(|s| s.ws))
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = rss();
    let sampler = PeakSampler::start(pid);
    let published = match connect(&url, "stalled-publisher", None).await {
        Ok(session) => Some(publish_until_closed(session, cfg).await),
        Err(_) => None,
    };
    // Let the hub release what the closed queues held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_close = rss();
    let peak = sampler.finish(pid).await;
    let codes = close_codes(&mut subs, CLOSE_GRACE).await;
    let mut close_codes_seen = BTreeMap::new();
    for code in codes.iter().flatten() {
        *close_codes_seen.entry(*code).or_insert(0) += 1;
    }
    drop(subs);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_disconnect = rss();
    let bound_kib =
        (cfg.subscribers * cfg.max_outbound_bytes.max(MIN_OUTBOUND_BYTES) / 1024) as u64;
    StalledResult {
        subscribers: codes.len(),
        topics: cfg.topics.max(1),
        bound_kib,
        rss_before_kib: before,
        rss_idle_kib: idle,
        rss_peak_kib: peak,
        peak_over_bound: peak.saturating_sub(idle) as f64 / bound_kib.max(1) as f64,
        rss_after_close_kib: after_close,
        rss_after_disconnect_kib: after_disconnect,
        published: published.as_ref().map_or(0, |p| p.answered),
        window: published.as_ref().map_or(0, |p| p.window),
        all_closed_ms: published
            .as_ref()
            .and_then(|p| p.all_closed)
            .map(|d| d.as_secs_f64() * 1e3),
        close_codes: close_codes_seen,
        still_open: codes.iter().filter(|c| c.is_none()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_settings_hold_together() {
        let args = stalled_hub_args(1 << 20);
        assert_eq!(
            args,
            [
                "--max-outbound-bytes",
                "1048576",
                "--max-frame-size",
                "524288",
                "--max-payload",
                "262144",
                "--tcp-send-buffer",
                "65536"
            ]
        );
        let small = stalled_hub_args(1000);
        assert_eq!(small[1], MIN_OUTBOUND_BYTES.to_string());
        assert_eq!(small[3], (MIN_OUTBOUND_BYTES / 2).to_string());
        assert_eq!(small[5], (MIN_OUTBOUND_BYTES / 4).to_string());
    }
}
