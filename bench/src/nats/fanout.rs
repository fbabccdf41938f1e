//! The fan-out scenario against NATS.

use std::time::Duration;

use futures_util::StreamExt;

use super::{Event, NatsConn, NatsError, NatsServer, WAIT, Window};
use crate::clock::{now_nanos, read_stamp, stamp};
use crate::scenario::{FanoutConfig, FanoutResult, Rate};
use crate::stats::Latency;

/// How long stalled subscribers get, after the run, to show they were closed.
const STALLED_GRACE: Duration = Duration::from_secs(5);

/// Opens `n` connections, `concurrency` at a time; connection `i`
/// subscribes to `subject(i)` (sid 1) and round-trips a `PING`.
pub(super) async fn connect_many(
    url: &str,
    n: usize,
    concurrency: usize,
    subject: impl Fn(usize) -> Option<String>,
) -> Vec<Result<NatsConn, NatsError>> {
    futures_util::stream::iter(0..n)
        .map(|i| {
            let s = subject(i);
            async move {
                let mut conn = NatsConn::connect(url).await?;
                if let Some(s) = s {
                    conn.outbox().subscribe(s.as_bytes(), 1);
                    conn.round_trip().await?;
                }
                Ok(conn)
            }
        })
        .buffered(concurrency.max(1))
        .collect()
        .await
}

/// What a subscriber saw.
#[derive(Default)]
pub(super) struct Received {
    pub(super) count: u64,
    pub(super) latency: Latency,
    pub(super) broke: bool,
}

/// Reads until the window is over, counting messages (and their latency)
/// received inside it.
pub(super) async fn subscriber(mut conn: NatsConn, win: Window) -> Received {
    let mut r = Received::default();
    let deadline = win.deadline();
    // Receipt time of the WebSocket message that completed the events
    // being parsed.
    let mut t = now_nanos();
    'run: loop {
        let counting = win.contains(t);
        loop {
            match conn.try_next() {
                Ok(Some(Event::Msg(m))) => {
                    if counting {
                        r.count += 1;
                        if let Some(sent) = read_stamp(m.payload) {
                            r.latency.record(t.saturating_sub(sent));
                        }
                    }
                }
                Ok(Some(Event::Err(_))) | Err(_) => {
                    r.broke = true;
                    break 'run;
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
            }
        }
        if win.over(t) {
            break;
        }
        match tokio::time::timeout_at(deadline, conn.fill()).await {
            Err(_) => break,
            Ok(Err(_)) => {
                r.broke = true;
                break;
            }
            Ok(Ok(())) => t = now_nanos(),
        }
    }
    r
}

/// What a publisher did.
pub(super) struct Published {
    pub(super) completed: u64,
    pub(super) broke: bool,
}

/// A window of `window` stamped `PUB`s and a `PING` per round trip; the
/// window counts when its `PONG` comes back inside the measured window.
async fn publish_saturated(
    mut conn: NatsConn,
    subject: String,
    payload: usize,
    window: usize,
    win: Window,
) -> Published {
    let mut p = Published {
        completed: 0,
        broke: false,
    };
    let mut buf = vec![0u8; payload];
    let end = win.deadline();
    while !win.over(now_nanos()) {
        let out = conn.outbox();
        for _ in 0..window {
            stamp(&mut buf);
            out.publish(subject.as_bytes(), None, &buf);
        }
        out.ping();
        let limit = (tokio::time::Instant::now() + WAIT).min(end);
        match tokio::time::timeout_at(limit, conn.wait_pong()).await {
            Ok(Ok(())) => {
                if win.contains(now_nanos()) {
                    p.completed += window as u64;
                }
            }
            Ok(Err(_)) => {
                p.broke = true;
                break;
            }
            Err(_) => {
                // Cut off by the end of the run: fine. By the 5 s limit: broken.
                p.broke = !win.over(now_nanos());
                break;
            }
        }
    }
    p
}

/// `per_sec` stamped `PUB`s per second, paced by a 1 ms interval; each is
/// counted when written inside the measured window.
pub(super) async fn publish_fixed(
    mut conn: NatsConn,
    subject: String,
    payload: usize,
    per_sec: f64,
    win: Window,
) -> Published {
    let mut p = Published {
        completed: 0,
        broke: false,
    };
    let mut buf = vec![0u8; payload];
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = now_nanos();
    let mut sent = 0u64;
    while !win.over(now_nanos()) {
        tokio::select! {
            _ = interval.tick() => {
                // A non-negative count of events, far below 2^53.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let due = ((now_nanos() - started) as f64 / 1e9 * per_sec) as u64;
                let n = due.saturating_sub(sent);
                let out = conn.outbox();
                for _ in 0..n {
                    stamp(&mut buf);
                    out.publish(subject.as_bytes(), None, &buf);
                }
                sent += n;
                match tokio::time::timeout(WAIT, conn.flush()).await {
                    Ok(Ok(())) => {
                        if win.contains(now_nanos()) {
                            p.completed += n;
                        }
                    }
                    _ => {
                        p.broke = true;
                        break;
                    }
                }
            }
            r = conn.read_more() => {
                let mut failed = r.is_err();
                while let Ok(Some(ev)) = conn.try_next() {
                    failed |= matches!(ev, Event::Err(_));
                }
                if failed {
                    p.broke = true;
                    break;
                }
            }
        }
    }
    p
}

/// How a stalled subscriber ended: `Some(code)` if the server sent a close
/// frame, `Some(0)` if it closed without one (or said `-ERR`), `None` if
/// it is still open after the grace period.
async fn stalled_verdict(mut conn: NatsConn) -> Option<u16> {
    let mut saw_err = false;
    let drain = async {
        loop {
            loop {
                match conn.try_next() {
                    Ok(Some(Event::Err(_))) => saw_err = true,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(_) => {
                        conn.split().0.clear();
                        break;
                    }
                }
            }
            match conn.read_more().await {
                Ok(()) => {}
                Err(NatsError::Closed(code)) => return Some(code.unwrap_or(0)),
                // Reset, end of stream: closed without a close frame.
                Err(_) => return Some(0),
            }
        }
    };
    match tokio::time::timeout(STALLED_GRACE, drain).await {
        Ok(v) => v,
        Err(_) => saw_err.then_some(0),
    }
}

/// Runs the fan-out scenario against a running `nats-server`.
pub async fn fanout(server: &NatsServer, cfg: &FanoutConfig) -> FanoutResult {
    let url = server.ws_url();
    let mut errors = 0u64;
    let subs = connect_many(&url, cfg.subscribers, 64, |i| Some(cfg.topic(i))).await;
    let stalled = connect_many(&url, cfg.stalled, 16, |i| Some(cfg.topic(i))).await;
    let pubs = connect_many(&url, cfg.publishers, 16, |_| None).await;
    let win = Window::after(cfg.warmup, cfg.duration);

    let mut readers = Vec::with_capacity(subs.len());
    for s in subs {
        match s {
            Ok(conn) => readers.push(tokio::spawn(subscriber(conn, win))),
            Err(_) => errors += 1,
        }
    }
    let mut stalled_conns = Vec::with_capacity(stalled.len());
    let mut stalled_failed = 0;
    for s in stalled {
        match s {
            Ok(conn) => stalled_conns.push(conn),
            Err(_) => stalled_failed += 1,
        }
    }
    let publishers = pubs.len().max(1) as u64;
    let mut writers = Vec::with_capacity(pubs.len());
    for (j, p) in pubs.into_iter().enumerate() {
        let Ok(conn) = p else {
            errors += 1;
            continue;
        };
        let subject = cfg.topic(j);
        writers.push(match cfg.rate {
            Rate::Saturate { window } => tokio::spawn(publish_saturated(
                conn,
                subject,
                cfg.payload,
                window.max(1),
                win,
            )),
            Rate::Fixed { per_sec } => {
                // Spread evenly; the first `per_sec % P` publishers take one more.
                let share = per_sec / publishers + u64::from((j as u64) < per_sec % publishers);
                tokio::spawn(publish_fixed(conn, subject, cfg.payload, share as f64, win))
            }
        });
    }

    let mut published = 0u64;
    for w in writers {
        match w.await {
            Ok(p) => {
                published += p.completed;
                errors += u64::from(p.broke);
            }
            Err(_) => errors += 1,
        }
    }
    let mut delivered = 0u64;
    let mut latency = Latency::new();
    for r in readers {
        match r.await {
            Ok(r) => {
                delivered += r.count;
                latency.merge(&r.latency);
                errors += u64::from(r.broke);
            }
            Err(_) => errors += 1,
        }
    }
    let mut stalled_closed =
        futures_util::future::join_all(stalled_conns.into_iter().map(stalled_verdict)).await;
    // Stalled subscribers that never connected are reported as not closed.
    stalled_closed.extend(std::iter::repeat_n(None, stalled_failed));

    FanoutResult {
        published_per_sec: published as f64 / win.secs(),
        delivered_per_sec: delivered as f64 / win.secs(),
        latency: latency.summary(),
        window: match cfg.rate {
            Rate::Saturate { window } => Some(window.max(1)),
            Rate::Fixed { .. } => None,
        },
        stalled_closed,
        errors,
        histogram: latency,
    }
}
