//! Retention, run by the writer between batches in bounded slices.
//!
//! Each slice is one short transaction deleting at most `retention-slice`
//! events (or keys), so a publish waits at most one slice:
//!
//! - count and bytes: a topic whose commit took it past `max-events` or
//!   `max-bytes` is marked due; a slice deletes its oldest events until it
//!   is within both (or the slice is used up, and it stays due). At start,
//!   and when the due set overflows, the topics over their limits are found
//!   with a query instead.
//! - age: every `retention-interval`, each namespace with `max-age` is
//!   scanned in position order from where the last scan stopped; events
//!   older than the cut-off are deleted (timestamps are monotonic per
//!   namespace, so they are a prefix).
//! - idempotency keys older than `idempotency-retention` are deleted. A
//!   key past its retention is ignored by publishes even before it is
//!   deleted, so the retention is exact.
//!
//! Each deletion advances the topic's `first_offset`, lowers its `bytes`,
//! raises its `pruned_position` (which tells a pattern resume it is too
//! old) and each affected producer's `pruned_seq` (which tells a retried
//! publish its event is gone: `duplicate` without an offset).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::writer::Writer;
use super::{RetentionReport, Shared};
use crate::storage::{Flush, OldEvent, StorageError, TopicRow, WriteSet};

/// Most topics remembered as over their limits; past it they are found by
/// a query.
pub(crate) const MAX_DUE: usize = 65_536;
/// Topics one rescan query returns.
const RESCAN_PAGE: u32 = 1024;
/// After a failed slice, wait this long before the next.
const FAILURE_BACKOFF: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub(crate) struct RetentionState {
    due: BTreeSet<i64>,
    /// Find over-limit topics by query: (namespace index, after id).
    rescan: Option<(usize, i64)>,
    age_due: Vec<bool>,
    age_cursor: Vec<u64>,
    keys_due: bool,
    interval: Duration,
    next_periodic: Instant,
    backoff_until: Option<Instant>,
}

impl RetentionState {
    pub(crate) fn new(namespaces: usize, interval: Duration) -> Self {
        RetentionState {
            due: BTreeSet::new(),
            rescan: Some((0, 0)),
            age_due: vec![true; namespaces],
            age_cursor: vec![0; namespaces],
            keys_due: true,
            interval,
            next_periodic: Instant::now() + interval,
            backoff_until: None,
        }
    }

    /// Marks the periodic work due when its time has come.
    pub(crate) fn tick(&mut self, now: Instant) {
        if now >= self.next_periodic {
            self.mark_periodic();
            self.next_periodic = now + self.interval;
        }
    }

    fn mark_periodic(&mut self) {
        self.age_due.iter_mut().for_each(|d| *d = true);
        self.keys_due = true;
    }

    pub(crate) fn has_work(&self, now: Instant) -> bool {
        if self.backoff_until.is_some_and(|t| now < t) {
            return false;
        }
        !self.due.is_empty()
            || self.rescan.is_some()
            || self.keys_due
            || self.age_due.contains(&true)
    }

    /// When the loop must wake up with no request.
    pub(crate) fn next_wake(&self, now: Instant) -> Instant {
        match self.backoff_until {
            Some(t) if t > now => t.min(self.next_periodic),
            _ => self.next_periodic,
        }
    }

    /// After a commit: is `t` over its namespace's count or byte limit?
    pub(crate) fn check_topic(&mut self, shared: &Shared, t: &TopicRow) {
        let Some(ns) = shared.namespace_by_id(t.ns) else {
            return;
        };
        let over = ns.config.max_events.is_some_and(|m| t.count() > m)
            || ns.config.max_bytes.is_some_and(|m| t.bytes > m);
        if over {
            if self.due.len() < MAX_DUE {
                self.due.insert(t.id);
            } else if self.rescan.is_none() {
                self.rescan = Some((0, 0));
            }
        }
    }
}

/// What one slice deletes from one topic.
#[derive(Debug, Default)]
struct Cut {
    /// The lowest offset cut.
    first: u64,
    up_to: u64,
    count: u64,
    bytes: u64,
    max_position: u64,
    producers: HashMap<i64, u64>,
}

impl Cut {
    fn add(&mut self, e: &OldEvent) {
        self.first = if self.count == 0 {
            e.offset
        } else {
            self.first.min(e.offset)
        };
        self.up_to = self.up_to.max(e.offset);
        self.count += 1;
        self.bytes += e.size;
        self.max_position = self.max_position.max(e.position);
        if let Some((p, seq)) = e.producer {
            let s = self.producers.entry(p).or_default();
            *s = (*s).max(seq);
        }
    }
}

impl Writer {
    /// Runs one slice of whatever retention work is due. Returns what it
    /// removed.
    pub(crate) async fn retention_slice(&mut self) -> RetentionReport {
        let r = self.slice().await;
        match r {
            Ok(report) => {
                self.retention.backoff_until = None;
                let s = &self.shared.stats;
                s.retention_events
                    .fetch_add(report.events, Ordering::Relaxed);
                s.retention_keys.fetch_add(report.keys, Ordering::Relaxed);
                metrics::counter!("plexus_stream_retention_events_total").increment(report.events);
                metrics::counter!("plexus_stream_retention_keys_total").increment(report.keys);
                report
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention slice rolled back");
                self.fail().await;
                self.retention.backoff_until = Some(Instant::now() + FAILURE_BACKOFF);
                // What was due may have been taken off the list: find it
                // again.
                self.retention.rescan = Some((0, 0));
                RetentionReport::default()
            }
        }
    }

    /// Runs retention until nothing is due (age and keys included now).
    pub(crate) async fn retention_now(&mut self) -> RetentionReport {
        self.retention.mark_periodic();
        if self.retention.rescan.is_none() {
            self.retention.rescan = Some((0, 0));
        }
        self.retention.backoff_until = None;
        let mut total = RetentionReport::default();
        while self.retention.has_work(Instant::now()) {
            let r = self.retention_slice().await;
            total.events += r.events;
            total.keys += r.keys;
        }
        total
    }

    async fn slice(&mut self) -> Result<RetentionReport, StorageError> {
        if let Some(id) = self.retention.due.pop_first() {
            return self.topic_slice(id).await;
        }
        if let Some((nsi, after)) = self.retention.rescan {
            self.rescan_slice(nsi, after).await?;
            return Ok(RetentionReport::default());
        }
        if let Some(nsi) = self.retention.age_due.iter().position(|d| *d) {
            return self.age_slice(nsi).await;
        }
        if self.retention.keys_due {
            return self.keys_slice().await;
        }
        Ok(RetentionReport::default())
    }

    async fn topic_row(&mut self, id: i64) -> Result<Option<TopicRow>, StorageError> {
        if let Some(name) = self.topic_ids.get(&id)
            && let Some(t) = self.topics.get(name)
        {
            return Ok(Some(t.clone()));
        }
        let rows = self.conn().await?.load_topics_by_id(&[id]).await?;
        Ok(rows
            .into_iter()
            .next()
            .inspect(|t| self.cache_topic(t.clone())))
    }

    async fn topic_slice(&mut self, id: i64) -> Result<RetentionReport, StorageError> {
        let Some(t) = self.topic_row(id).await? else {
            return Ok(RetentionReport::default());
        };
        let Some(ns) = self.shared.namespace_by_id(t.ns) else {
            return Ok(RetentionReport::default());
        };
        let (max_events, max_bytes) = (ns.config.max_events, ns.config.max_bytes);
        let over_count = max_events.map_or(0, |m| t.count().saturating_sub(m));
        let over_bytes = max_bytes.map_or(0, |m| t.bytes.saturating_sub(m));
        if over_count == 0 && over_bytes == 0 {
            return Ok(RetentionReport::default());
        }
        let slice = self.shared.config.retention_slice;
        let rows = self.conn().await?.oldest(id, slice).await?;
        let mut cut = Cut::default();
        for e in &rows {
            if cut.count >= over_count && cut.bytes >= over_bytes {
                break;
            }
            cut.add(e);
        }
        if cut.count == 0 {
            return Ok(RetentionReport::default());
        }
        let deleted = cut.count;
        let t = self.delete_cuts(vec![(t, cut)]).await?;
        for t in t {
            let still =
                max_events.is_some_and(|m| t.count() > m) || max_bytes.is_some_and(|m| t.bytes > m);
            if still {
                self.retention.due.insert(t.id);
            }
        }
        Ok(RetentionReport {
            events: deleted,
            keys: 0,
        })
    }

    async fn rescan_slice(&mut self, nsi: usize, after: i64) -> Result<(), StorageError> {
        let Some(ns) = self.shared.namespaces.get(nsi) else {
            self.retention.rescan = None;
            return Ok(());
        };
        let (id, max_events, max_bytes) = (ns.id, ns.config.max_events, ns.config.max_bytes);
        if max_events.is_none() && max_bytes.is_none() {
            self.retention.rescan = Some((nsi + 1, 0));
            return Ok(());
        }
        let ids = self
            .conn()
            .await?
            .over_limit_topics(id, max_events, max_bytes, after, RESCAN_PAGE)
            .await?;
        let full = ids.len() >= RESCAN_PAGE as usize;
        let last = ids.last().copied().unwrap_or(after);
        for id in ids {
            if self.retention.due.len() >= MAX_DUE {
                break;
            }
            self.retention.due.insert(id);
        }
        self.retention.rescan = if full && self.retention.due.len() < MAX_DUE {
            Some((nsi, last))
        } else if full {
            // Work through what is due, then come back here.
            Some((nsi, after))
        } else {
            Some((nsi + 1, 0))
        };
        if self.retention.due.len() < MAX_DUE
            && let Some((i, _)) = self.retention.rescan
            && i >= self.shared.namespaces.len()
        {
            self.retention.rescan = None;
        }
        Ok(())
    }

    async fn age_slice(&mut self, nsi: usize) -> Result<RetentionReport, StorageError> {
        let ns = &self.shared.namespaces[nsi];
        let Some(max_age) = ns.config.max_age else {
            self.retention.age_due[nsi] = false;
            return Ok(RetentionReport::default());
        };
        let ns_id = ns.id;
        let cutoff = self
            .shared
            .clock
            .now_ms()
            .saturating_sub(i64::try_from(max_age.as_millis()).unwrap_or(i64::MAX));
        let slice = self.shared.config.retention_slice;
        let after = self.retention.age_cursor[nsi];
        let rows = self
            .conn()
            .await?
            .oldest_in_namespace(ns_id, after, slice)
            .await?;
        let old: Vec<&OldEvent> = rows.iter().take_while(|e| e.ts < cutoff).collect();
        if old.len() < rows.len() || rows.len() < slice as usize {
            self.retention.age_due[nsi] = false;
        }
        let Some(last) = old.last() else {
            return Ok(RetentionReport::default());
        };
        let last_position = last.position;
        let mut by_topic: HashMap<i64, Cut> = HashMap::new();
        for e in &old {
            by_topic.entry(e.topic).or_default().add(e);
        }
        let mut cuts = Vec::with_capacity(by_topic.len());
        for (id, cut) in by_topic {
            if let Some(t) = self.topic_row(id).await? {
                cuts.push((t, cut));
            }
        }
        let deleted = old.len() as u64;
        self.delete_cuts(cuts).await?;
        self.retention.age_cursor[nsi] = last_position;
        Ok(RetentionReport {
            events: deleted,
            keys: 0,
        })
    }

    async fn keys_slice(&mut self) -> Result<RetentionReport, StorageError> {
        let retention =
            i64::try_from(self.shared.config.idempotency_retention.as_millis()).unwrap_or(i64::MAX);
        let before = self.shared.clock.now_ms().saturating_sub(retention);
        let slice = self.shared.config.retention_slice;
        let c = self.conn().await?;
        c.begin(Flush::Committed).await?;
        let n = c.delete_keys(before, slice).await?;
        c.commit().await?;
        if n < u64::from(slice) {
            self.retention.keys_due = false;
        }
        Ok(RetentionReport { events: 0, keys: n })
    }

    /// Deletes the cuts in one transaction; returns the updated rows (also
    /// cached).
    async fn delete_cuts(
        &mut self,
        cuts: Vec<(TopicRow, Cut)>,
    ) -> Result<Vec<TopicRow>, StorageError> {
        let shared = self.shared.config.shared;
        let c = self.conn().await?;
        c.begin(Flush::Committed).await?;
        let cuts = if shared {
            // Cluster mode: the rows as they are now, locked; a cut another
            // node made meanwhile is skipped.
            let ids: Vec<i64> = cuts.iter().map(|(t, _)| t.id).collect();
            let fresh = c.lock_topics_by_id(&ids).await?;
            cuts.into_iter()
                .filter_map(|(old, cut)| {
                    let t = fresh.iter().find(|f| f.id == old.id)?;
                    (t.first_offset <= cut.first).then(|| (t.clone(), cut))
                })
                .collect()
        } else {
            cuts
        };
        let mut set = WriteSet::default();
        let mut pruned: Vec<(i64, u64)> = Vec::new();
        for (t, cut) in &cuts {
            let mut t = t.clone();
            t.first_offset = t.first_offset.max(cut.up_to + 1);
            t.bytes = t.bytes.saturating_sub(cut.bytes);
            t.pruned_position = t.pruned_position.max(cut.max_position);
            set.topics.push(t);
            pruned.extend(cut.producers.iter().map(|(p, s)| (*p, *s)));
        }
        let c = self.conn().await?;
        for (t, cut) in &cuts {
            c.delete_events(t.id, cut.up_to).await?;
        }
        if !pruned.is_empty() {
            c.prune_producers(&pruned).await?;
        }
        c.write(&set).await?;
        c.commit().await?;
        for (id, seq) in &pruned {
            if let Some(k) = self.producer_ids.get(id).cloned()
                && let Some(p) = self.producers.get_mut(&k)
            {
                p.pruned_seq = p.pruned_seq.max(*seq);
            }
        }
        let rows = set.topics;
        for t in &rows {
            self.cache_topic(t.clone());
        }
        Ok(rows)
    }
}
