//! Fan-out of committed events, in commit order, and the taps that give a
//! resume its exact seam with the live stream.
//!
//! One task receives every committed batch from the writer and hands each
//! event to the hub's [`FanOut`] (the broker) under one lock. A resume that
//! is about to reach the live edge registers a [`Tap`] under the same lock:
//! from then on every committed event of its topic (or matching its
//! pattern) is also copied into the tap, a bounded buffer. Reading storage
//! *after* registering, then the tap, leaves no gap (an event committed
//! after the read is fanned out after the registration, so it is in the
//! tap) and no duplicate (tap events at or below what storage gave are
//! dropped). Activation, again under the lock, takes what is left in the
//! tap and lets the caller register the live subscription before the next
//! event is fanned out: each event goes either to the tap or to the live
//! subscription, never both, never neither.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;
use plexus_protocol::topic::Pattern;

use super::event::LiveEvent;

/// Where committed events go live: the hub's broker.
pub trait FanOut: Send + Sync + 'static {
    /// Queues `event` for every connection subscribed to its topic (except
    /// `event.skip`) and returns how many it was queued for. Called in
    /// commit order, one event at a time, from one task, under the fan-out
    /// lock: it must not block nor call back into the streams layer.
    fn deliver(&self, event: &LiveEvent) -> u64;
}

/// A [`FanOut`] that delivers to nobody.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoFanOut;

impl FanOut for NoFanOut {
    fn deliver(&self, _event: &LiveEvent) -> u64 {
        0
    }
}

impl<F: Fn(&LiveEvent) -> u64 + Send + Sync + 'static> FanOut for F {
    fn deliver(&self, event: &LiveEvent) -> u64 {
        self(event)
    }
}

/// What a tap collects.
#[derive(Debug, Clone)]
pub(crate) enum TapFilter {
    /// The events of one topic.
    Topic(Arc<str>),
    /// The events of a namespace whose topic matches.
    Pattern(i64, Pattern),
}

#[derive(Debug, Default)]
struct TapState {
    events: VecDeque<LiveEvent>,
    bytes: usize,
    overflowed: bool,
}

/// A bounded buffer of live events for one resume.
#[derive(Debug)]
pub(crate) struct Tap {
    filter: TapFilter,
    max_events: usize,
    max_bytes: usize,
    state: Mutex<TapState>,
}

impl Tap {
    pub(crate) fn new(filter: TapFilter, max_events: usize, max_bytes: usize) -> Arc<Tap> {
        Arc::new(Tap {
            filter,
            max_events,
            max_bytes,
            state: Mutex::new(TapState::default()),
        })
    }

    fn offer(&self, e: &LiveEvent) {
        let mut s = self.state.lock();
        if s.overflowed {
            return;
        }
        let size = e.frame.len();
        if s.events.len() >= self.max_events || s.bytes + size > self.max_bytes {
            // Storage has every one of them: the resume reads it again.
            s.events.clear();
            s.bytes = 0;
            s.overflowed = true;
            return;
        }
        s.bytes += size;
        s.events.push_back(e.clone());
    }

    /// Takes buffered events into `out` until `max_bytes` of bodies (at
    /// least one). Returns `Err(())` if the tap overflowed.
    pub(crate) fn take(
        &self,
        max_events: usize,
        max_bytes: usize,
        out: &mut Vec<LiveEvent>,
    ) -> Result<(), ()> {
        let mut s = self.state.lock();
        if s.overflowed {
            return Err(());
        }
        let mut body_bytes = 0usize;
        while let Some(e) = s.events.front() {
            let len = e.body().len();
            if !out.is_empty() && (out.len() >= max_events || body_bytes + len > max_bytes) {
                break;
            }
            body_bytes += len;
            let size = e.frame.len();
            if let Some(e) = s.events.pop_front() {
                s.bytes -= size;
                out.push(e);
            }
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct Taps {
    by_topic: HashMap<Arc<str>, Vec<Arc<Tap>>>,
    by_ns: HashMap<i64, Vec<Arc<Tap>>>,
    count: usize,
    /// The last position fanned out, per namespace.
    fanned: HashMap<i64, u64>,
}

/// The longest a resume waits for the fan-out to deliver what storage gave
/// it (the fan-out follows the commit by microseconds; this only bounds a
/// fan-out that stopped, at shutdown).
pub(crate) const FANOUT_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

impl Taps {
    fn offer(&self, e: &LiveEvent) {
        if let Some(v) = self.by_topic.get(&e.topic) {
            for t in v {
                t.offer(e);
            }
        }
        if let Some(v) = self.by_ns.get(&e.namespace) {
            for t in v {
                if let TapFilter::Pattern(_, p) = &t.filter
                    && p.matches_str(&e.topic)
                {
                    t.offer(e);
                }
            }
        }
    }

    fn remove(&mut self, tap: &Arc<Tap>) {
        let list = match &tap.filter {
            TapFilter::Topic(t) => self.by_topic.get_mut(t),
            TapFilter::Pattern(ns, _) => self.by_ns.get_mut(ns),
        };
        if let Some(v) = list {
            let before = v.len();
            v.retain(|t| !Arc::ptr_eq(t, tap));
            self.count -= before - v.len();
            if v.is_empty() {
                match &tap.filter {
                    TapFilter::Topic(t) => {
                        self.by_topic.remove(t);
                    }
                    TapFilter::Pattern(ns, _) => {
                        self.by_ns.remove(ns);
                    }
                }
            }
        }
    }
}

/// The fan-out lock, the taps and the hub's sink.
pub(crate) struct Fanout {
    taps: Mutex<Taps>,
    sink: Arc<dyn FanOut>,
    /// Woken after every delivered batch.
    delivered: tokio::sync::Notify,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("taps", &self.taps.lock().count)
            .finish()
    }
}

impl Fanout {
    /// A fan-out into `sink`; `positions`: each namespace's last position
    /// in the database (everything up to it counts as fanned out).
    pub(crate) fn new(
        sink: Arc<dyn FanOut>,
        positions: impl IntoIterator<Item = (i64, u64)>,
    ) -> Fanout {
        Fanout {
            taps: Mutex::new(Taps {
                fanned: positions.into_iter().collect(),
                ..Taps::default()
            }),
            sink,
            delivered: tokio::sync::Notify::new(),
        }
    }

    /// Delivers a committed batch, in order; pushes one count per event.
    pub(crate) fn deliver(&self, events: &[LiveEvent], delivered: &mut Vec<u64>) {
        {
            let mut taps = self.taps.lock();
            for e in events {
                if taps.count > 0 {
                    taps.offer(e);
                }
                delivered.push(self.sink.deliver(e));
                let f = taps.fanned.entry(e.namespace).or_insert(0);
                *f = (*f).max(e.position);
            }
        }
        if !events.is_empty() {
            self.delivered.notify_waiters();
        }
    }

    fn fanned(&self, ns: i64) -> u64 {
        self.taps.lock().fanned.get(&ns).copied().unwrap_or(0)
    }

    /// Waits until namespace `ns` has been fanned out up to `position`
    /// (at most [`FANOUT_WAIT`]).
    pub(crate) async fn wait_fanned(&self, ns: i64, position: u64) {
        let deadline = tokio::time::Instant::now() + FANOUT_WAIT;
        loop {
            let notified = self.delivered.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.fanned(ns) >= position {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::warn!(
                    ns,
                    position,
                    "the fan-out did not reach a resume's position"
                );
                return;
            }
        }
    }

    pub(crate) fn register(&self, tap: &Arc<Tap>) {
        let mut taps = self.taps.lock();
        let list = match &tap.filter {
            TapFilter::Topic(t) => taps.by_topic.entry(t.clone()).or_default(),
            TapFilter::Pattern(ns, _) => taps.by_ns.entry(*ns).or_default(),
        };
        list.push(tap.clone());
        taps.count += 1;
    }

    pub(crate) fn unregister(&self, tap: &Arc<Tap>) {
        self.taps.lock().remove(tap);
    }

    /// Under the fan-out lock: if `tap` did not overflow, removes it and
    /// calls `f` with what it still holds; otherwise returns `None` and
    /// leaves it registered (emptied, to be refilled from storage).
    pub(crate) fn activate<R>(
        &self,
        tap: &Arc<Tap>,
        f: impl FnOnce(Vec<LiveEvent>) -> R,
    ) -> Option<R> {
        let mut taps = self.taps.lock();
        let pending = {
            let mut s = tap.state.lock();
            if s.overflowed {
                return None;
            }
            s.bytes = 0;
            std::mem::take(&mut s.events)
        };
        taps.remove(tap);
        Some(f(pending.into()))
    }

    /// Clears an overflowed tap so that it collects again (the caller then
    /// reads storage from where it was).
    pub(crate) fn rearm(&self, tap: &Arc<Tap>) {
        let _taps = self.taps.lock();
        let mut s = tap.state.lock();
        s.events.clear();
        s.bytes = 0;
        s.overflowed = false;
    }

    /// Taps registered (tests and metrics).
    pub(crate) fn tap_count(&self) -> usize {
        self.taps.lock().count
    }
}
