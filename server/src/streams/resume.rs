//! Resume: the missed events of a durable subscription, streamed in
//! batches, then an exact hand-over to live delivery.
//!
//! Order of work (see `fanout` for why it is exact):
//!
//! 1. Decide the outcome from the stored state: `reset` (epoch differs, or
//!    `since` is beyond the history), `too_old` (retention removed an event
//!    after `since`), else `recovered`.
//! 2. `recovered`: read storage after `since` in pages (`catchup-page`
//!    rows, at most the caller's chunk budget in bytes), one chunk per
//!    page, until a page comes back short: the live edge.
//! 3. Register a tap, then read storage once more from where step 2
//!    stopped (what was committed in between), then drain the tap, dropping
//!    what storage already gave. If the tap overflowed, re-arm it and go
//!    back to reading storage.
//! 4. The summary (the final chunk): outcome, count, epoch, and the offset
//!    (position, for a pattern) the subscription is live from.
//! 5. [`Resume::activate`], after the final chunk is queued: under the
//!    fan-out lock, the events still in the tap are handed to the caller
//!    (to queue as live `event`s) and the caller registers the live
//!    subscription before the next event is fanned out.
//!
//! `too_old`, `reset` and a subscribe without `since` skip to 3 with no
//! catch-up: the subscription is live from the current last offset.
//!
//! Memory is bounded by one page plus the tap, whatever the distance.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use plexus_protocol::methods::{ResumeFinal, ResumeOutcome, Since, SubscribeResult};
use plexus_protocol::topic::Pattern;

use super::event::{EventList, LiveEvent, derived_epoch, frame_from_body};
use super::fanout::{Tap, TapFilter};
use super::{Scope, Shared, StreamError, Streams};
use crate::storage::{EventPage, NamespaceRead, Order, TopicRead};

/// Topics one too-old check reads per query.
const PRUNED_PAGE: u32 = 1024;

/// Where a durable subscription starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// From now: no catch-up (a `subscribe` without `since`).
    Now,
    /// After `offset` of an exact topic, in `epoch` if given.
    Offset {
        /// The epoch the offset belongs to.
        epoch: Option<String>,
        /// The last offset the client has.
        offset: u64,
    },
    /// After namespace `position` (a pattern), in `epoch` if given.
    Position {
        /// The namespace epoch the position belongs to.
        epoch: Option<String>,
        /// The last position the client has.
        position: u64,
    },
}

impl ResumeFrom {
    /// From a `subscribe`'s `since` (absent: [`ResumeFrom::Now`]). An
    /// exact topic needs `offset`, a pattern `position` (D8).
    pub fn from_since(since: Option<&Since<'_>>, exact: bool) -> Result<Self, StreamError> {
        let Some(s) = since else {
            return Ok(ResumeFrom::Now);
        };
        let epoch = s.epoch.map(str::to_owned);
        match (exact, s.offset, s.position) {
            (true, Some(offset), None) => Ok(ResumeFrom::Offset { epoch, offset }),
            (false, None, Some(position)) => Ok(ResumeFrom::Position { epoch, position }),
            (true, _, _) => Err(StreamError::invalid(
                "since on an exact topic takes an offset (and no position)",
            )),
            (false, _, _) => Err(StreamError::invalid(
                "since on a pattern takes a position (and no offset)",
            )),
        }
    }
}

/// How a resume ended: the final chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeSummary {
    /// What it found.
    pub outcome: ResumeOutcome,
    /// Events streamed.
    pub count: u64,
    /// The topic's (or namespace's) epoch.
    pub epoch: Arc<str>,
    /// The offset the subscription is live from (0 for a pattern).
    pub offset: u64,
    /// The position the subscription is live from (for an exact topic: the
    /// position of the event at `offset`, 0 if none).
    pub position: u64,
    /// With `too_old`: the first offset (position) from which the history
    /// is complete.
    pub earliest: Option<u64>,
}

impl ResumeSummary {
    /// The final chunk's data.
    pub fn to_final(&self) -> ResumeFinal {
        ResumeFinal::new(
            self.outcome.clone(),
            self.count,
            &*self.epoch,
            self.offset,
            self.position,
            self.earliest,
        )
    }

    /// The `subscribe` result (no `since`): `offset` only for exact topics.
    pub fn to_subscribe_result(&self, exact: bool) -> SubscribeResult {
        SubscribeResult::durable(&*self.epoch, exact.then_some(self.offset), self.position)
    }
}

#[derive(Debug)]
enum Target {
    Topic { name: Arc<str>, ns: usize },
    Pattern { pattern: Pattern, ns: usize },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    GoLive,
    Storage,
    Tap,
    AfterTap,
    Drain,
    Done,
    /// The tap overflowed after the summary: storage must be read again
    /// before activation ([`Resume::next_live`]).
    Overflowed,
    LiveStorage,
    /// Activated: the live subscription has it.
    Live,
}

/// Why [`Resume::activate`] did not switch to live delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotLive {
    /// [`Resume::next_chunk`] has not returned `None` yet.
    #[error("the resume has not caught up yet")]
    NotCaughtUp,
    /// The live buffer overflowed: deliver [`Resume::next_live`] first.
    #[error("the live buffer overflowed; deliver next_live first")]
    Overflowed,
    /// It was activated already.
    #[error("already live")]
    AlreadyLive,
}

/// A resume in progress. Dropping it releases its tap.
#[derive(Debug)]
pub struct Resume {
    shared: Arc<Shared>,
    target: Target,
    from: ResumeFrom,
    phase: Phase,
    tap: Option<Arc<Tap>>,
    page: EventPage,
    live: Vec<LiveEvent>,
    max_bytes: usize,
    topic_id: Option<i64>,
    cursor: u64,
    cursor_position: u64,
    count: u64,
    outcome: ResumeOutcome,
    earliest: Option<u64>,
    epoch: Arc<str>,
    summary: Option<ResumeSummary>,
    /// Storage was read since the last wait for the fan-out.
    must_wait: bool,
}

impl Streams {
    /// Starts a resume of `pattern` (an exact durable topic, or a pattern
    /// inside one durable namespace) from `from`; chunks hold at most
    /// `max_chunk_bytes` of event bodies (at least one event). Nothing is
    /// read until [`Resume::next_chunk`].
    pub fn resume(
        &self,
        pattern: &Pattern,
        from: ResumeFrom,
        max_chunk_bytes: usize,
    ) -> Result<Resume, StreamError> {
        let index = |n: &super::Namespace| {
            self.shared
                .namespaces
                .iter()
                .position(|m| m.id == n.id)
                .unwrap_or(0)
        };
        let target = match self.scope(pattern) {
            Scope::Topic(n) => {
                if matches!(from, ResumeFrom::Position { .. }) {
                    return Err(StreamError::invalid(
                        "since on an exact topic takes an offset",
                    ));
                }
                Target::Topic {
                    name: pattern.as_str().into(),
                    ns: index(n),
                }
            }
            Scope::Pattern(n) => {
                if matches!(from, ResumeFrom::Offset { .. }) {
                    return Err(StreamError::invalid("since on a pattern takes a position"));
                }
                Target::Pattern {
                    pattern: pattern.clone(),
                    ns: index(n),
                }
            }
            Scope::Mixed => return Err(StreamError::SpansNamespaces),
            Scope::Plain => return Err(StreamError::NotDurable),
        };
        Ok(Resume {
            shared: self.shared.clone(),
            target,
            from,
            phase: Phase::Start,
            tap: None,
            page: EventPage::default(),
            live: Vec::new(),
            max_bytes: max_chunk_bytes.max(1),
            topic_id: None,
            cursor: 0,
            cursor_position: 0,
            count: 0,
            outcome: ResumeOutcome::Recovered,
            earliest: None,
            epoch: "".into(),
            summary: None,
            must_wait: true,
        })
    }
}

impl Resume {
    /// The next chunk's data (an array of `event` params maps), or `None`
    /// once caught up; then [`Resume::summary`] is the final chunk.
    pub async fn next_chunk(&mut self) -> Result<Option<EventList<'_>>, StreamError> {
        loop {
            match self.phase {
                Phase::Start => self.start().await?,
                Phase::GoLive => {
                    self.register_tap();
                    self.read_current().await?;
                    self.wait_fanned().await;
                    self.finish();
                }
                Phase::Storage | Phase::AfterTap => {
                    if self.read_page().await? {
                        return Ok(Some(EventList(&self.page)));
                    }
                }
                Phase::Tap => {
                    self.register_tap();
                    self.phase = Phase::AfterTap;
                }
                Phase::Drain => {
                    if self.must_wait {
                        // What storage gave must be fanned out before the
                        // summary; what is fanned out meanwhile is tapped.
                        self.wait_fanned().await;
                        self.must_wait = false;
                    }
                    if self.drain_tap() {
                        return Ok(Some(EventList(&self.page)));
                    }
                }
                Phase::Done | Phase::Overflowed | Phase::LiveStorage | Phase::Live => {
                    return Ok(None);
                }
            }
        }
    }

    /// The final chunk, once [`Resume::next_chunk`] returned `None`.
    pub fn summary(&self) -> Option<&ResumeSummary> {
        self.summary.as_ref()
    }

    /// Switches to live delivery; call it after the final chunk is queued.
    ///
    /// Under the fan-out lock, `f` gets the events committed since the
    /// summary (to queue as live `event` frames, in order) and must
    /// register the live subscription, without blocking: the next committed
    /// event is fanned out after `f` returns. If the live buffer overflowed
    /// since the summary, `f` is not called and [`NotLive::Overflowed`] is
    /// returned: deliver [`Resume::next_live`] until it returns `None`, then
    /// activate again.
    pub fn activate<R>(&mut self, f: impl FnOnce(&[LiveEvent]) -> R) -> Result<R, NotLive> {
        match self.phase {
            Phase::Done => {}
            Phase::Live => return Err(NotLive::AlreadyLive),
            Phase::Overflowed | Phase::LiveStorage => return Err(NotLive::Overflowed),
            _ => return Err(NotLive::NotCaughtUp),
        }
        let Some(tap) = self.tap.take() else {
            return Err(NotLive::NotCaughtUp);
        };
        let (cursor, by_position) = self.cursor_kind();
        let fanout = &self.shared.fanout;
        let r = fanout.activate(&tap, |pending| {
            let fresh: Vec<LiveEvent> = pending
                .into_iter()
                .filter(|e| {
                    if by_position {
                        e.position > cursor
                    } else {
                        e.offset > cursor
                    }
                })
                .collect();
            f(&fresh)
        });
        match r {
            Some(r) => {
                self.phase = Phase::Live;
                Ok(r)
            }
            None => {
                self.tap = Some(tap);
                self.phase = Phase::Overflowed;
                Err(NotLive::Overflowed)
            }
        }
    }

    /// After [`Resume::activate`] came back: the next `event` frames to
    /// queue (read from storage), or `None` when it is time to activate
    /// again.
    pub async fn next_live(&mut self) -> Result<Option<Vec<Bytes>>, StreamError> {
        if self.phase == Phase::Overflowed {
            if let Some(t) = &self.tap {
                self.shared.fanout.rearm(t);
            }
            self.phase = Phase::LiveStorage;
        }
        if self.phase != Phase::LiveStorage {
            return Ok(None);
        }
        let before = self.count;
        if self.read_page().await? {
            // Delivered live, not streamed: not part of the summary's count.
            self.count = before;
            let frames = self.page.iter().map(|(_, b)| frame_from_body(b)).collect();
            return Ok(Some(frames));
        }
        self.count = before;
        self.wait_fanned().await;
        self.phase = Phase::Done;
        Ok(None)
    }

    /// The namespace position the cursor stands at.
    fn seam_position(&self) -> (i64, u64) {
        match &self.target {
            Target::Topic { ns, .. } => (self.shared.namespaces[*ns].id, self.cursor_position),
            Target::Pattern { ns, .. } => (self.shared.namespaces[*ns].id, self.cursor),
        }
    }

    /// Waits until the fan-out has delivered everything up to the cursor.
    async fn wait_fanned(&self) {
        if self.shared.config.shared {
            // Cluster mode: this node delivers the topic up to the cursor
            // (from storage if another node's events are still on their
            // way). A pattern's seam is not waited for: its topics are
            // sequenced one by one, so a repeat at the seam is possible
            // (docs/cluster.md).
            if let Target::Topic { name, .. } = &self.target {
                self.shared.catch_up(name.clone(), self.cursor).await;
            }
            return;
        }
        let (ns, position) = self.seam_position();
        self.shared.fanout.wait_fanned(ns, position).await;
    }

    fn cursor_kind(&self) -> (u64, bool) {
        match self.target {
            Target::Topic { .. } => (self.cursor, false),
            Target::Pattern { .. } => (self.cursor, true),
        }
    }

    fn register_tap(&mut self) {
        if let Some(t) = &self.tap {
            self.shared.fanout.rearm(t);
            return;
        }
        let c = &self.shared.config;
        let filter = match &self.target {
            Target::Topic { name, .. } => TapFilter::Topic(name.clone()),
            Target::Pattern { pattern, ns } => {
                TapFilter::Pattern(self.shared.namespaces[*ns].id, pattern.clone())
            }
        };
        let tap = Tap::new(filter, c.seam_buffer_events, c.seam_buffer_bytes);
        self.shared.fanout.register(&tap);
        self.tap = Some(tap);
    }

    fn finish(&mut self) {
        let (offset, position) = match self.target {
            Target::Topic { .. } => (self.cursor, self.cursor_position),
            Target::Pattern { .. } => (0, self.cursor),
        };
        self.summary = Some(ResumeSummary {
            outcome: self.outcome.clone(),
            count: self.count,
            epoch: self.epoch.clone(),
            offset,
            position,
            earliest: self.earliest,
        });
        self.phase = Phase::Done;
    }

    async fn start(&mut self) -> Result<(), StreamError> {
        match &self.target {
            Target::Topic { name, ns } => {
                let ns_epoch = self.shared.namespaces[*ns].epoch.clone();
                let row = self.shared.store.topic(name).await?;
                let (epoch, first, last, last_position, id) = match &row {
                    Some(t) => (
                        t.epoch.clone(),
                        t.first_offset,
                        t.last_offset,
                        t.last_position,
                        Some(t.id),
                    ),
                    None => (derived_epoch(&ns_epoch, name).into(), 1, 0, 0, None),
                };
                self.epoch = epoch.clone();
                self.topic_id = id;
                match &self.from {
                    ResumeFrom::Now | ResumeFrom::Position { .. } => self.phase = Phase::GoLive,
                    ResumeFrom::Offset { epoch: e, offset } => {
                        let offset = *offset;
                        if e.as_deref().is_some_and(|e| e != &*epoch) || offset > last {
                            self.outcome = ResumeOutcome::Reset;
                            self.phase = Phase::GoLive;
                        } else if offset + 1 < first {
                            self.outcome = ResumeOutcome::TooOld;
                            self.earliest = Some(first);
                            self.phase = Phase::GoLive;
                        } else {
                            self.cursor = offset;
                            if offset == last {
                                self.cursor_position = last_position;
                            }
                            self.phase = Phase::Storage;
                        }
                    }
                }
            }
            Target::Pattern { pattern, ns } => {
                let n = &self.shared.namespaces[*ns];
                self.epoch = n.epoch.clone();
                let (ns_id, pattern) = (n.id, pattern.clone());
                match self.from.clone() {
                    ResumeFrom::Now | ResumeFrom::Offset { .. } => self.phase = Phase::GoLive,
                    ResumeFrom::Position { epoch: e, position } => {
                        let last = self.namespace_last(ns_id).await?;
                        if e.as_deref().is_some_and(|e| e != &*self.epoch) || position > last {
                            self.outcome = ResumeOutcome::Reset;
                            self.phase = Phase::GoLive;
                            return Ok(());
                        }
                        let pruned = self.max_pruned(ns_id, &pattern, position).await?;
                        if pruned > position {
                            self.outcome = ResumeOutcome::TooOld;
                            self.earliest = Some(pruned + 1);
                            self.phase = Phase::GoLive;
                        } else {
                            self.cursor = position;
                            self.phase = Phase::Storage;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    async fn namespace_last(&self, ns_id: i64) -> Result<u64, StreamError> {
        Ok(self
            .shared
            .store
            .namespaces()
            .await?
            .into_iter()
            .find(|r| r.id == ns_id)
            .map_or(0, |r| r.last_position))
    }

    /// The greatest position retention removed from a topic matching
    /// `pattern`, above `position`.
    async fn max_pruned(
        &self,
        ns_id: i64,
        pattern: &Pattern,
        position: u64,
    ) -> Result<u64, StreamError> {
        let mut max = 0u64;
        let mut after = String::new();
        loop {
            let rows = self
                .shared
                .store
                .pruned_topics(ns_id, position, &after, PRUNED_PAGE)
                .await?;
            let full = rows.len() >= PRUNED_PAGE as usize;
            for (name, pruned) in &rows {
                if pattern.matches_str(name) {
                    max = max.max(*pruned);
                }
            }
            match rows.into_iter().last() {
                Some((name, _)) if full => after = name,
                _ => return Ok(max),
            }
        }
    }

    /// The current last offset (position) after the tap is registered.
    async fn read_current(&mut self) -> Result<(), StreamError> {
        match &self.target {
            Target::Topic { name, .. } => {
                if let Some(t) = self.shared.store.topic(name).await? {
                    self.epoch = t.epoch.clone();
                    self.cursor = t.last_offset;
                    self.cursor_position = t.last_position;
                } else {
                    self.cursor = 0;
                    self.cursor_position = 0;
                }
            }
            Target::Pattern { ns, .. } => {
                let id = self.shared.namespaces[*ns].id;
                self.cursor = self.namespace_last(id).await?;
            }
        }
        Ok(())
    }

    /// Reads one page after the cursor. Returns whether it holds events
    /// (a chunk to send); moves the phase on at the end of storage.
    async fn read_page(&mut self) -> Result<bool, StreamError> {
        let limit = self.shared.config.catchup_page;
        self.page.clear();
        match &self.target {
            Target::Topic { name, .. } => {
                if self.topic_id.is_none() {
                    self.topic_id = self.shared.store.topic(name).await?.map(|t| t.id);
                }
                let Some(id) = self.topic_id else {
                    self.end_of_storage();
                    return Ok(false);
                };
                let read = TopicRead {
                    topic: id,
                    from: self.cursor.saturating_add(1),
                    until: u64::MAX,
                    order: Order::Forward,
                    limit,
                    max_bytes: self.max_bytes,
                };
                self.shared.store.read_topic(read, &mut self.page).await?;
                // Offsets are gapless: an event above the next one expected
                // (or none, where the row says some were stored) means that
                // retention deleted events after the cursor meanwhile.
                let expected = read.from;
                let gap = match self.page.metas.first() {
                    Some(m) => (m.offset > expected).then_some(m.offset),
                    None => match self.shared.store.topic(name).await? {
                        Some(t) if t.id == id && t.first_offset > expected => {
                            (t.last_offset >= expected).then_some(t.first_offset)
                        }
                        _ => None,
                    },
                };
                if let Some(earliest) = gap {
                    return self.lost(earliest);
                }
                if let Some(m) = self.page.metas.last() {
                    self.cursor = m.offset;
                    self.cursor_position = m.position;
                }
            }
            Target::Pattern { pattern, ns } => {
                let read = NamespaceRead {
                    ns: self.shared.namespaces[*ns].id,
                    after: self.cursor,
                    limit,
                    max_bytes: self.max_bytes,
                };
                let p = pattern.clone();
                let keep = move |t: &str| p.matches_str(t);
                self.shared
                    .store
                    .read_namespace(read, &keep, &mut self.page)
                    .await?;
                // Retention that removed a matching event above the cursor
                // (before or while this page was read) left a gap in it.
                let (ns_id, before, p) = (read.ns, read.after, pattern.clone());
                let pruned = self.max_pruned(ns_id, &p, before).await?;
                if pruned > before {
                    return self.lost(pruned + 1);
                }
                if self.page.rows > 0 {
                    self.cursor = self.page.scanned_position;
                }
            }
        }
        if self.page.rows > 0 {
            self.must_wait = true;
        }
        if self.page.rows < limit && !self.page.truncated {
            self.end_of_storage();
        }
        let n = self.page.len() as u64;
        self.count += n;
        if n > 0 {
            self.shared
                .stats
                .catchup_events
                .fetch_add(n, Ordering::Relaxed);
            metrics::counter!("plexus_stream_catchup_events_total").increment(n);
        }
        Ok(n > 0)
    }

    /// Retention deleted events after the cursor during the catch-up: what
    /// is left cannot be streamed without a gap. Before the summary, the
    /// resume ends `too_old` (after the events already streamed, with
    /// `earliest`) and goes live from the current last offset; after it
    /// (live catch-up from storage), it fails, and the session closes the
    /// connection so that the client resumes.
    fn lost(&mut self, earliest: u64) -> Result<bool, StreamError> {
        self.page.clear();
        if self.phase == Phase::LiveStorage {
            return Err(StreamError::Unavailable { cause: None });
        }
        self.outcome = ResumeOutcome::TooOld;
        self.earliest = Some(earliest);
        self.phase = Phase::GoLive;
        Ok(false)
    }

    fn end_of_storage(&mut self) {
        self.phase = match self.phase {
            Phase::Storage => Phase::Tap,
            Phase::AfterTap => Phase::Drain,
            Phase::LiveStorage => Phase::LiveStorage,
            other => other,
        };
    }

    /// Moves buffered live events above the cursor into the page. Returns
    /// whether there is a chunk; at the end, writes the summary.
    fn drain_tap(&mut self) -> bool {
        let Some(tap) = self.tap.clone() else {
            self.finish();
            return false;
        };
        self.live.clear();
        if tap
            .take(usize::MAX, self.max_bytes, &mut self.live)
            .is_err()
        {
            self.shared.fanout.rearm(&tap);
            self.phase = Phase::AfterTap;
            return false;
        }
        if self.live.is_empty() {
            self.finish();
            return false;
        }
        self.page.clear();
        let by_position = matches!(self.target, Target::Pattern { .. });
        if self.shared.config.shared
            && !by_position
            && self
                .live
                .iter()
                .find(|e| e.offset > self.cursor)
                .is_some_and(|e| e.offset > self.cursor + 1)
        {
            // Cluster mode: the tap started after a gap (events of another
            // node still on their way when it was registered): read
            // storage again from the cursor.
            self.shared.fanout.rearm(&tap);
            self.phase = Phase::AfterTap;
            return false;
        }
        for e in &self.live {
            let fresh = if by_position {
                e.position > self.cursor
            } else {
                e.offset > self.cursor
            };
            if fresh {
                self.page.push(e.offset, e.position, e.body());
                if by_position {
                    self.cursor = e.position;
                } else {
                    self.cursor = e.offset;
                    self.cursor_position = e.position;
                }
            }
        }
        let n = self.page.len() as u64;
        self.count += n;
        self.shared
            .stats
            .catchup_events
            .fetch_add(n, Ordering::Relaxed);
        metrics::counter!("plexus_stream_catchup_events_total").increment(n);
        n > 0
    }
}

impl Drop for Resume {
    fn drop(&mut self) {
        if let Some(t) = self.tap.take() {
            self.shared.fanout.unregister(&t);
        }
    }
}
