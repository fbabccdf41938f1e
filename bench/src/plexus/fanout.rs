//! The fan-out scenario against the hub: subscribers reading events,
//! publishers keeping a window of publishes in flight (or a fixed rate).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::{DecodeLimits, Frame};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use super::conn::{ConnError, Session, WAIT, Ws, connect_many, connect_with};
use super::frames::{event_payload, publish_frame, publish_window};
use crate::clock::{now_nanos, read_stamp};
use crate::procs::{HubProcess, token};
use crate::scenario::{FanoutConfig, FanoutResult, Rate};
use crate::stats::Latency;
use crate::window::Window;

/// Most publishes written in one batch before a flush.
const MAX_BATCH: usize = 256;

/// Reads events until the window is over; returns (count, latency).
async fn subscriber(mut ws: Ws, win: Window, errors: Arc<AtomicU64>) -> (u64, Latency) {
    let mut lat = Latency::new();
    let mut count = 0u64;
    // One timer for the whole run and one clock read per message: the
    // generator must cost as little per event as the NATS driver does.
    let deadline = tokio::time::sleep_until(win.deadline());
    tokio::pin!(deadline);
    loop {
        let msg = tokio::select! {
            biased;
            msg = ws.next() => msg,
            _ = &mut deadline => break,
        };
        match msg {
            Some(Ok(Message::Binary(b))) => {
                let t = now_nanos();
                if win.over(t) {
                    break;
                }
                if !win.contains(t) {
                    continue;
                }
                if let Some(sent) = event_payload(&b).and_then(read_stamp) {
                    count += 1;
                    lat.record(t.saturating_sub(sent));
                }
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        }
    }
    (count, lat)
}

/// Reads the answers to a windowed sender until the window is over (or
/// [`WAIT`] of silence): each frame, decoded, goes to `on_frame` with its
/// arrival time and returns one permit to the sender (an undecodable one
/// too, so the sender never stalls on it).
pub(super) async fn read_answers<T>(
    mut rx: futures_util::stream::SplitStream<Ws>,
    permits: Arc<Semaphore>,
    win: Window,
    mut state: T,
    mut on_frame: impl FnMut(&mut T, Result<Frame, plexus_protocol::DecodeError>, u64),
) -> T {
    let limits = DecodeLimits::default();
    loop {
        match tokio::time::timeout(WAIT, rx.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => {
                let t = now_nanos();
                on_frame(&mut state, Frame::decode(b, &limits), t);
                permits.add_permits(1);
            }
            Ok(Some(Ok(_))) => {}
            _ => break,
        }
        if win.over(now_nanos()) {
            break;
        }
    }
    permits.close();
    state
}

/// One publisher's settings.
struct Publisher {
    topic: String,
    payload: usize,
    rate: Rate,
    per_sec: f64,
    win: Window,
}

/// Publishes until the window is over; returns the acks counted in the
/// window. A saturating publisher keeps `window` publishes in flight.
async fn publish(ws: Ws, p: Publisher, window: usize, errors: Arc<AtomicU64>) -> u64 {
    let Publisher {
        topic,
        payload,
        rate,
        per_sec,
        win,
    } = p;
    let (mut tx, rx) = ws.split();
    let permits = Arc::new(Semaphore::new(window.min(Semaphore::MAX_PERMITS)));
    let acks = tokio::spawn(read_answers(rx, permits.clone(), win, 0u64, {
        let errors = errors.clone();
        move |acked: &mut u64, frame: Result<Frame, _>, t: u64| match frame {
            Ok(Frame::Response(r)) => {
                if r.outcome.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if win.contains(t) {
                    *acked += 1;
                }
            }
            Ok(_) => {}
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }));
    let mut buf = vec![0u8; payload.max(8)];
    let mut id = 10u64;
    let mut next = |buf: &mut [u8]| {
        id += 1;
        Message::Binary(publish_frame(id, &topic, buf))
    };
    match rate {
        Rate::Saturate { .. } => {
            while !win.over(now_nanos()) {
                let Ok(p) = permits.acquire().await else {
                    break;
                };
                p.forget();
                let mut sent = 1;
                if tx.feed(next(&mut buf)).await.is_err() {
                    break;
                }
                while sent < MAX_BATCH
                    && let Ok(p) = permits.try_acquire()
                {
                    p.forget();
                    sent += 1;
                    if tx.feed(next(&mut buf)).await.is_err() {
                        break;
                    }
                }
                if tx.flush().await.is_err() {
                    break;
                }
            }
        }
        Rate::Fixed { .. } => {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let started = now_nanos();
            let mut sent_total = 0u64;
            while !win.over(now_nanos()) {
                interval.tick().await;
                let due = ((now_nanos() - started) as f64 / 1e9 * per_sec) as u64;
                while sent_total < due {
                    sent_total += 1;
                    if tx.feed(next(&mut buf)).await.is_err() {
                        break;
                    }
                }
                if tx.flush().await.is_err() {
                    break;
                }
            }
        }
    }
    let _ = tx.close().await;
    acks.await.unwrap_or(0)
}

/// Starts a publisher on each connection of `pubs` (publisher j on
/// `cfg.topic(j)`) at `cfg.rate` for the window `win`. Returns the tasks,
/// each yielding the acknowledgements it counted in the window, and the
/// smallest window used when saturating; a connection that failed counts
/// as an error.
/// Spawns `read` for every subscriber that connected; one error for each
/// that did not.
pub(super) fn spawn_readers<S, E, F, Fut>(
    subs: Vec<Result<S, E>>,
    errors: &AtomicU64,
    mut read: F,
) -> Vec<tokio::task::JoinHandle<Fut::Output>>
where
    F: FnMut(S) -> Fut,
    Fut: std::future::Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    let mut readers = Vec::with_capacity(subs.len());
    for s in subs {
        match s {
            Ok(s) => readers.push(tokio::spawn(read(s))),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    readers
}

/// Runs the publishers to the window's end: events published, and the
/// publish window they used.
pub(super) async fn publish_all(
    pubs: Vec<Result<Session, ConnError>>,
    cfg: &FanoutConfig,
    win: Window,
    errors: &Arc<AtomicU64>,
) -> (u64, Option<usize>) {
    let (writers, used_window) = spawn_publishers(pubs, cfg, win, errors);
    let mut published = 0;
    for w in writers {
        published += w.await.unwrap_or(0);
    }
    (published, used_window)
}

pub(super) fn spawn_publishers(
    pubs: Vec<Result<Session, ConnError>>,
    cfg: &FanoutConfig,
    win: Window,
    errors: &Arc<AtomicU64>,
) -> (Vec<JoinHandle<u64>>, Option<usize>) {
    let per_sec = match cfg.rate {
        Rate::Fixed { per_sec } => per_sec as f64 / cfg.publishers.max(1) as f64,
        Rate::Saturate { .. } => 0.0,
    };
    let frame_len = publish_frame(u64::MAX, &cfg.topic(0), &mut vec![0; cfg.payload.max(8)]).len();
    let mut used_window = None::<usize>;
    let mut writers = Vec::new();
    for (j, p) in pubs.into_iter().enumerate() {
        let Ok(Session { ws, limits }) = p else {
            errors.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let window = match cfg.rate {
            Rate::Saturate { window } => {
                let w = publish_window(window, &limits, frame_len);
                used_window = Some(used_window.map_or(w, |u| u.min(w)));
                w
            }
            // Fixed rate: no window, every publish goes out when due.
            Rate::Fixed { .. } => usize::MAX >> 4,
        };
        let publisher = Publisher {
            topic: cfg.topic(j),
            payload: cfg.payload,
            rate: cfg.rate,
            per_sec,
            win,
        };
        writers.push(tokio::spawn(publish(ws, publisher, window, errors.clone())));
    }
    (writers, used_window)
}

/// Runs the fan-out scenario against a running hub.
///
/// A saturating publisher keeps `window` publishes in flight, but never
/// more than the hub announced (`max_in_flight`, `max_in_flight_bytes`);
/// the window used is reported.
pub async fn fanout(hub: &HubProcess, cfg: &FanoutConfig) -> FanoutResult {
    let url = hub.url();
    fanout_spread(&url, std::slice::from_ref(&url), cfg, |_| ())
        .await
        .fanout
}

/// What [`fanout_spread`] measured: the fan-out's figures, the share of
/// each subscriber URL, and what the probe returned.
#[derive(Debug)]
pub struct SpreadResult<T> {
    /// The figures over every subscriber.
    pub fanout: FanoutResult,
    /// Events delivered in the window to the subscribers of each URL, in
    /// the order of the URLs given.
    pub delivered_by_url: Vec<u64>,
    /// What `probe` returned.
    pub probe: T,
}

/// The fan-out scenario with its clients spread over several hubs (the
/// nodes of a cluster): the publishers on `publisher_url`, subscriber `i`
/// (and stalled subscriber `i`) on `subscriber_urls[i % len]`. With one
/// URL for both it is [`fanout()`]. `probe` is called with the measured
/// window as soon as it is fixed, before any publish (e.g. to spawn a task
/// sampling the hubs' CPU time at its start and end).
pub async fn fanout_spread<T>(
    publisher_url: &str,
    subscriber_urls: &[String],
    cfg: &FanoutConfig,
    probe: impl FnOnce(Window) -> T,
) -> SpreadResult<T> {
    let errors = Arc::new(AtomicU64::new(0));
    let subs = connect_spread(subscriber_urls, cfg.subscribers, 64, |i| Some(cfg.topic(i))).await;
    let mut stalled: Vec<Ws> =
        connect_spread(subscriber_urls, cfg.stalled, 16, |i| Some(cfg.topic(i)))
            .await
            .into_iter()
            .filter_map(|s| s.ok().map(|s| s.ws))
            .collect();
    let pubs = connect_many(publisher_url, &[], cfg.publishers, 16, |_| None).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let probe = probe(win);
    let urls = subscriber_urls.len().max(1);
    let readers = spawn_readers(subs, &errors, |s| subscriber(s.ws, win, errors.clone()));
    let (published, used_window) = publish_all(pubs, cfg, win, &errors).await;
    let mut delivered = 0;
    let mut delivered_by_url = vec![0; urls];
    let mut lat = Latency::new();
    // Readers are in subscriber order (a subscriber that failed to connect
    // has none and was counted as an error), so they are matched to their
    // URL only when every subscriber connected.
    let all_connected = readers.len() == cfg.subscribers;
    for (i, r) in readers.into_iter().enumerate() {
        if let Ok((n, l)) = r.await {
            delivered += n;
            if all_connected {
                delivered_by_url[i % urls] += n;
            }
            lat.merge(&l);
        }
    }
    let stalled_closed = close_codes(&mut stalled, Duration::from_secs(5)).await;
    SpreadResult {
        fanout: FanoutResult {
            published_per_sec: published as f64 / win.secs(),
            delivered_per_sec: delivered as f64 / win.secs(),
            latency: lat.summary(),
            window: used_window,
            stalled_closed,
            errors: errors.load(Ordering::Relaxed),
            histogram: lat,
        },
        delivered_by_url,
        probe,
    }
}

/// Opens `n` subscriber connections (user `u<i>`), `concurrency` at a
/// time, connection `i` to `urls[i % len]` subscribing to `topic(i)`.
async fn connect_spread(
    urls: &[String],
    n: usize,
    concurrency: usize,
    topic: impl Fn(usize) -> Option<String>,
) -> Vec<Result<Session, ConnError>> {
    if urls.is_empty() {
        return (0..n).map(|_| Err(ConnError::NoAnswer)).collect();
    }
    futures_util::stream::iter(0..n)
        .map(|i| {
            let t = topic(i);
            let url = &urls[i % urls.len()];
            async move { connect_with(url, None, &token(&format!("u{i}")), t.as_deref()).await }
        })
        .buffered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await
}

/// Reads what each connection had queued (all in parallel, for at most
/// `grace`) and reports how each one was closed: `Some(code)`, `Some(0)`
/// for closed without a code, `None` when still open after `grace`.
pub async fn close_codes(conns: &mut [Ws], grace: Duration) -> Vec<Option<u16>> {
    let verdicts = conns.iter_mut().map(|ws| async move {
        tokio::time::timeout(grace, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(f))) => return Some(f.map_or(0, |f| u16::from(f.code))),
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Some(0),
                }
            }
        })
        .await
        .unwrap_or(None)
    });
    futures_util::future::join_all(verdicts).await
}
