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

/// Where a cluster node sends the events it committed, and learns which
/// durable topics and patterns resumes here are listening to (cluster
/// mode; see `crate::cluster`).
pub trait Relay: Send + Sync + 'static {
    /// `event` was committed by this node and fanned out here: carry it to
    /// the other nodes. Called from the fan-out task: must not block.
    fn committed(&self, event: &LiveEvent);
    /// A resume started (`on`) or stopped listening to `filter` (a topic or
    /// a pattern) before its live subscription exists.
    fn listening(&self, filter: &str, on: bool);
}

/// What the sequencer says of an event (cluster mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seq {
    /// The next one of its topic (or the first seen here): deliver it.
    Next,
    /// Delivered here already (it came by two paths): drop it.
    Repeat,
    /// Events after `after` and before it are missing: read them from
    /// storage first.
    Gap {
        /// The last offset delivered here.
        after: u64,
    },
}

/// Per topic, the last offset this node delivered (cluster mode): events
/// from this node's writer and from other nodes meet here, and each
/// topic's live stream stays in order, without gaps or repeats. Bounded:
/// past `cap` topics it forgets the least recently delivered ones that no
/// resume is tapping (a forgotten topic starts again at its next event).
#[derive(Debug, Default)]
struct Sequencer {
    last: HashMap<Arc<str>, (u64, u64)>,
    cap: usize,
    tick: u64,
}

impl Sequencer {
    fn check(&self, topic: &str, offset: u64) -> Seq {
        match self.last.get(topic) {
            None => Seq::Next,
            Some(&(l, _)) if offset <= l => Seq::Repeat,
            Some(&(l, _)) if offset == l + 1 => Seq::Next,
            Some(&(l, _)) => Seq::Gap { after: l },
        }
    }

    fn advance(
        &mut self,
        topic: &Arc<str>,
        offset: u64,
        tapped: &HashMap<Arc<str>, Vec<Arc<Tap>>>,
    ) {
        self.tick += 1;
        let tick = self.tick;
        match self.last.get_mut(topic) {
            Some(e) => *e = (e.0.max(offset), tick),
            None => {
                if self.last.len() >= self.cap.max(1) {
                    self.evict(tapped);
                }
                self.last.insert(topic.clone(), (offset, tick));
            }
        }
    }

    /// Forgets the oldest eighth of the untapped topics.
    fn evict(&mut self, tapped: &HashMap<Arc<str>, Vec<Arc<Tap>>>) {
        let mut ticks: Vec<u64> = self
            .last
            .iter()
            .filter(|(t, _)| !tapped.contains_key(*t))
            .map(|(_, v)| v.1)
            .collect();
        if ticks.is_empty() {
            return;
        }
        let n = (ticks.len() / 8).max(1);
        let (_, nth, _) = ticks.select_nth_unstable(n - 1);
        let cut = *nth;
        self.last.retain(|t, v| v.1 > cut || tapped.contains_key(t));
    }
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

impl TapFilter {
    /// The topic or pattern.
    fn as_str(&self) -> &str {
        match self {
            TapFilter::Topic(t) => t,
            TapFilter::Pattern(_, p) => p.as_str(),
        }
    }
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
    /// Cluster mode: each topic's last delivered offset.
    seq: Option<Sequencer>,
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
    /// Cluster mode: where this node's committed events go.
    pub(crate) relay: std::sync::OnceLock<Arc<dyn Relay>>,
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
    /// `sequence` (cluster mode): keep each topic's live stream in order
    /// for up to that many topics (0: off).
    pub(crate) fn new(
        sink: Arc<dyn FanOut>,
        positions: impl IntoIterator<Item = (i64, u64)>,
        sequence: usize,
    ) -> Fanout {
        Fanout {
            taps: Mutex::new(Taps {
                fanned: positions.into_iter().collect(),
                seq: (sequence > 0).then(|| Sequencer {
                    cap: sequence,
                    ..Sequencer::default()
                }),
                ..Taps::default()
            }),
            sink,
            relay: std::sync::OnceLock::new(),
            delivered: tokio::sync::Notify::new(),
        }
    }

    /// Cluster mode: what the sequencer says of `event` (always
    /// [`Seq::Next`] on a single node).
    pub(crate) fn check(&self, topic: &str, offset: u64) -> Seq {
        self.taps
            .lock()
            .seq
            .as_ref()
            .map_or(Seq::Next, |s| s.check(topic, offset))
    }

    /// Cluster mode: the last offset of `topic` delivered here, if known.
    pub(crate) fn last_delivered(&self, topic: &str) -> Option<u64> {
        self.taps
            .lock()
            .seq
            .as_ref()
            .and_then(|s| s.last.get(topic).map(|v| v.0))
    }

    /// Cluster mode: records that everything of `topic` up to `offset` counts
    /// as delivered here (a resume read it from storage and no event of
    /// the topic was delivered here yet).
    pub(crate) fn assume_delivered(&self, topic: &Arc<str>, offset: u64) {
        let mut taps = self.taps.lock();
        let Taps { seq, by_topic, .. } = &mut *taps;
        if let Some(s) = seq
            && !s.last.contains_key(topic)
        {
            s.advance(topic, offset, by_topic);
        }
    }

    /// Topics the sequencer tracks (for the sweep after a link outage).
    pub(crate) fn sequenced_topics(&self, max: usize) -> Vec<(Arc<str>, u64)> {
        self.taps.lock().seq.as_ref().map_or_else(Vec::new, |s| {
            s.last
                .iter()
                .take(max)
                .map(|(t, v)| (t.clone(), v.0))
                .collect()
        })
    }

    /// Delivers a committed batch, in order; pushes one count per event.
    pub(crate) fn deliver(&self, events: &[LiveEvent], delivered: &mut Vec<u64>) {
        {
            let mut taps = self.taps.lock();
            for e in events {
                if let Some(s) = &taps.seq {
                    // Sequenced by the caller; a repeat is dropped here.
                    if s.check(&e.topic, e.offset) == Seq::Repeat {
                        delivered.push(0);
                        continue;
                    }
                }
                if taps.count > 0 {
                    taps.offer(e);
                }
                delivered.push(self.sink.deliver(e));
                let f = taps.fanned.entry(e.namespace).or_insert(0);
                *f = (*f).max(e.position);
                let Taps { seq, by_topic, .. } = &mut *taps;
                if let Some(s) = seq {
                    s.advance(&e.topic, e.offset, by_topic);
                }
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
        if let Some(r) = self.relay.get() {
            r.listening(tap.filter.as_str(), true);
        }
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
        if let Some(r) = self.relay.get() {
            r.listening(tap.filter.as_str(), false);
        }
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
        let r = f(pending.into());
        drop(taps);
        if let Some(relay) = self.relay.get() {
            relay.listening(tap.filter.as_str(), false);
        }
        Some(r)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn ev(topic: &str, offset: u64) -> LiveEvent {
        LiveEvent {
            topic: topic.into(),
            namespace: 1,
            offset,
            position: offset,
            frame: bytes::Bytes::from_static(b"f"),
            body_at: 0,
            skip: None,
        }
    }

    fn counting() -> (Arc<AtomicU64>, Arc<dyn FanOut>) {
        let n = Arc::new(AtomicU64::new(0));
        let m = n.clone();
        let sink = move |_: &LiveEvent| {
            m.fetch_add(1, Ordering::Relaxed);
            1
        };
        (n, Arc::new(sink))
    }

    #[test]
    fn the_sequencer_drops_repeats_and_reports_gaps() {
        let (n, sink) = counting();
        let f = Fanout::new(sink, [], 16);
        assert_eq!(f.check("t", 5), Seq::Next, "the first one seen");
        let mut d = Vec::new();
        f.deliver(&[ev("t", 5), ev("t", 6)], &mut d);
        assert_eq!(d, vec![1, 1]);
        assert_eq!(f.check("t", 6), Seq::Repeat);
        assert_eq!(f.check("t", 7), Seq::Next);
        assert_eq!(f.check("t", 9), Seq::Gap { after: 6 });
        d.clear();
        f.deliver(&[ev("t", 6), ev("t", 4)], &mut d);
        assert_eq!(d, vec![0, 0], "repeats are not delivered");
        assert_eq!(n.load(Ordering::Relaxed), 2);
        assert_eq!(f.last_delivered("t"), Some(6));
        f.assume_delivered(&"t".into(), 100);
        assert_eq!(f.last_delivered("t"), Some(6), "only for an unknown topic");
        f.assume_delivered(&"u".into(), 100);
        assert_eq!(f.check("u", 101), Seq::Next);
    }

    #[test]
    fn the_sequencer_is_bounded_but_keeps_tapped_topics() {
        let (_, sink) = counting();
        let f = Fanout::new(sink, [], 4);
        let tap = Tap::new(TapFilter::Topic("kept".into()), 8, 1 << 20);
        f.register(&tap);
        let mut d = Vec::new();
        f.deliver(&[ev("kept", 1)], &mut d);
        for i in 0..100 {
            f.deliver(&[ev(&format!("t{i}"), 1)], &mut d);
        }
        assert!(f.sequenced_topics(usize::MAX).len() <= 4);
        assert_eq!(f.last_delivered("kept"), Some(1), "a tapped topic stays");
        assert_eq!(f.last_delivered("t99"), Some(1), "the newest stays");
    }

    #[test]
    fn without_sequencing_every_event_is_delivered() {
        let (n, sink) = counting();
        let f = Fanout::new(sink, [], 0);
        let mut d = Vec::new();
        f.deliver(&[ev("t", 2), ev("t", 2), ev("t", 1)], &mut d);
        assert_eq!(n.load(Ordering::Relaxed), 3);
        assert_eq!(f.check("t", 1), Seq::Next);
    }
}
