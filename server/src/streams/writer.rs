//! The writer: group commit of durable publishes, idempotency, and the
//! hand-off to fan-out.
//!
//! One task owns the database's writing connection. It takes requests from
//! the bounded queue in batches (whatever is queued, up to
//! `commit-max-batch`; optionally waiting `commit-max-delay` for more),
//! plans the whole batch in memory on a copy of the cached state (offsets,
//! positions, producer sequences, keys, `expected_offset`), writes it with
//! a few bulk statements in one transaction, and commits. Only then are the
//! requests answered, through the fan-out task, which delivers the events
//! first so that `delivered` is known. If anything fails the transaction is
//! rolled back, the cache dropped (it is reloaded from the database) and
//! every request of the batch answered `unavailable`: nothing is ever half
//! applied.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use plexus_protocol::methods::Durability;
use tokio::sync::{mpsc, oneshot};

use super::event::{LiveEvent, derived_epoch, encode_frame};
use super::retention::RetentionState;
use super::{Command, PublishOutcome, PublishRequest, Shared, StreamError};
use crate::storage::{
    EventRecord, Flush, KeyRow, ProducerRow, StorageError, StoreWriter, TopicRow, WriteSet,
};

/// Committed batches waiting for the fan-out task.
pub(crate) const FANOUT_QUEUE: usize = 64;
/// How many times in a row the writer yields to the runtime without a new
/// request before it stops gathering a batch (a few microseconds; no
/// timer).
pub(crate) const LINGER_YIELDS: u32 = 2;
/// Under sustained load, run one retention slice at least every this many
/// batches.
pub(crate) const RETENTION_EVERY_BATCHES: u32 = 8;

pub(crate) type Reply = oneshot::Sender<Result<PublishOutcome, StreamError>>;

/// A publish waiting for the writer.
#[derive(Debug)]
pub(crate) struct PublishJob {
    pub(crate) req: PublishRequest,
    /// Index of its namespace in `Shared::namespaces`.
    pub(crate) ns: usize,
    pub(crate) reply: Reply,
}

/// How a request of a committed batch is answered.
#[derive(Debug)]
pub(crate) enum Answer {
    /// Stored as `live[index]`.
    Stored { index: usize, epoch: Arc<str> },
    /// A retry of a stored publish.
    Duplicate {
        offset: Option<u64>,
        position: Option<u64>,
        epoch: Arc<str>,
    },
    /// Refused, or the batch failed.
    Failed(StreamError),
}

/// A batch on its way to the fan-out task.
#[derive(Debug)]
pub(crate) struct Committed {
    pub(crate) live: Vec<LiveEvent>,
    pub(crate) replies: Vec<(Reply, Answer)>,
    pub(crate) durability: Durability,
}

/// What the fan-out task is given, in order.
#[derive(Debug)]
pub(crate) enum FanMsg {
    /// A batch this node's writer committed.
    Local(Committed),
    /// Events other nodes committed (cluster mode).
    Remote(Vec<LiveEvent>),
    /// Deliver `topic` up to `offset` from storage if it is behind, then
    /// answer (cluster mode: a resume's seam, a sweep after an outage).
    CatchUp {
        topic: Arc<str>,
        offset: u64,
        done: Option<oneshot::Sender<()>>,
    },
}

/// The fan-out task: delivers each committed batch in order, then answers.
/// In cluster mode every event first goes through the sequencer: a repeat
/// is dropped, a gap is filled from storage before the event.
pub(crate) async fn run_fanout(shared: Arc<Shared>, mut rx: mpsc::Receiver<FanMsg>) {
    let mut delivered = Vec::new();
    let sequenced = shared.config.shared;
    while let Some(msg) = rx.recv().await {
        delivered.clear();
        let c = match msg {
            FanMsg::Local(c) => c,
            FanMsg::Remote(events) => {
                deliver_sequenced(&shared, &events, &mut delivered).await;
                continue;
            }
            FanMsg::CatchUp {
                topic,
                offset,
                done,
            } => {
                catch_up(&shared, &topic, offset).await;
                if let Some(d) = done {
                    let _ = d.send(());
                }
                continue;
            }
        };
        if sequenced {
            deliver_sequenced(&shared, &c.live, &mut delivered).await;
            if let Some(r) = shared.fanout.relay.get() {
                for e in &c.live {
                    r.committed(e);
                }
            }
        } else {
            shared.fanout.deliver(&c.live, &mut delivered);
        }
        answer(c, &delivered);
    }
}

fn answer(c: Committed, delivered: &[u64]) {
    for (reply, answer) in c.replies {
        let r = match answer {
            Answer::Stored { index, epoch } => {
                let e = &c.live[index];
                Ok(PublishOutcome {
                    delivered: delivered.get(index).copied().unwrap_or(0),
                    offset: Some(e.offset),
                    position: Some(e.position),
                    epoch,
                    durability: c.durability.clone(),
                    duplicate: false,
                })
            }
            Answer::Duplicate {
                offset,
                position,
                epoch,
            } => Ok(PublishOutcome {
                delivered: 0,
                offset,
                position,
                epoch,
                durability: c.durability.clone(),
                duplicate: true,
            }),
            Answer::Failed(e) => Err(e),
        };
        // The caller may have gone (cancelled): nothing to do.
        let _ = reply.send(r);
    }
}

/// Most attempts at filling one gap from storage before the event is
/// delivered anyway (the database is down: better late subscribers that
/// resume than a stalled fan-out).
const GAP_FILL_ATTEMPTS: u32 = 3;

/// Cluster mode: delivers `events` in order per topic, one count each
/// (0 for a repeat), filling gaps from storage first.
async fn deliver_sequenced(shared: &Shared, events: &[LiveEvent], delivered: &mut Vec<u64>) {
    for e in events {
        if let super::fanout::Seq::Gap { after } = shared.fanout.check(&e.topic, e.offset) {
            fill(shared, &e.topic, e.namespace, after, e.offset - 1).await;
        }
        let mut one = Vec::with_capacity(1);
        shared.fanout.deliver(std::slice::from_ref(e), &mut one);
        delivered.push(one.first().copied().unwrap_or(0));
    }
}

/// Cluster mode: delivers `topic` from storage up to `offset` if this node
/// is behind; if it never delivered the topic, only records `offset`.
async fn catch_up(shared: &Shared, topic: &Arc<str>, offset: u64) {
    match shared.fanout.last_delivered(topic) {
        None => shared.fanout.assume_delivered(topic, offset),
        Some(l) if l < offset => {
            let ns = shared
                .namespace_index(topic)
                .map_or(0, |i| shared.namespaces[i].id);
            fill(shared, topic, ns, l, offset).await;
        }
        Some(_) => {}
    }
}

/// Reads `topic`'s events `after+1 ..= until` from storage and delivers
/// them (the sequencer drops any that arrive meanwhile by the other path).
async fn fill(shared: &Shared, topic: &Arc<str>, ns: i64, after: u64, until: u64) {
    let mut from = after + 1;
    let mut attempts = 0;
    let mut page = crate::storage::EventPage::default();
    let mut filled = 0u64;
    while from <= until {
        let read = async {
            let Some(t) = shared.store.topic(topic).await? else {
                return Ok::<bool, StorageError>(false);
            };
            page.clear();
            shared
                .store
                .read_topic(
                    crate::storage::TopicRead {
                        topic: t.id,
                        from,
                        until,
                        order: crate::storage::Order::Forward,
                        limit: shared.config.catchup_page,
                        max_bytes: shared.config.seam_buffer_bytes,
                    },
                    &mut page,
                )
                .await?;
            Ok(true)
        };
        match read.await {
            Ok(true) if !page.is_empty() => {
                let live: Vec<LiveEvent> = page
                    .iter()
                    .map(|(m, body)| LiveEvent {
                        topic: topic.clone(),
                        namespace: ns,
                        offset: m.offset,
                        position: m.position,
                        frame: super::event::frame_from_body(body),
                        body_at: super::event::frame_from_body(&[]).len(),
                        skip: None,
                    })
                    .collect();
                from = live.last().map_or(until + 1, |e| e.offset + 1);
                filled += live.len() as u64;
                let mut d = Vec::with_capacity(live.len());
                shared.fanout.deliver(&live, &mut d);
            }
            // Retention removed them, or the topic was reset: nothing to
            // fill.
            Ok(_) => break,
            Err(e) => {
                attempts += 1;
                if attempts >= GAP_FILL_ATTEMPTS {
                    tracing::warn!(error = %e, "cannot fill a gap of a durable topic from storage");
                    metrics::counter!("plexus_cluster_gap_fill_failures_total").increment(1);
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50 << attempts)).await;
            }
        }
    }
    if filled > 0 {
        metrics::counter!("plexus_cluster_gap_filled_events_total").increment(filled);
    }
}

/// A bounded map: past `cap` entries it forgets arbitrary ones (the
/// database has them all; a miss costs one load).
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    map: HashMap<K, V>,
    cap: usize,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    pub(crate) fn new(cap: usize) -> Self {
        Bounded {
            map: HashMap::new(),
            cap,
        }
    }

    pub(crate) fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k)
    }

    pub(crate) fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k)
    }

    pub(crate) fn insert(&mut self, k: K, v: V) {
        if self.map.len() >= self.cap && !self.map.contains_key(&k) {
            let drop_n = (self.cap / 10).max(1);
            let victims: Vec<K> = self.map.keys().take(drop_n).cloned().collect();
            for v in victims {
                self.map.remove(&v);
            }
        }
        self.map.insert(k, v);
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
    }
}

/// Per namespace, what the writer tracks.
#[derive(Debug, Clone)]
pub(crate) struct NsState {
    pub(crate) last_position: u64,
    /// Timestamps are kept monotonic per namespace, so that age order is
    /// position order even if the wall clock steps back.
    pub(crate) last_ts: i64,
}

/// The writer task's state.
pub(crate) struct Writer {
    pub(crate) shared: Arc<Shared>,
    pub(crate) conn: Option<Box<dyn StoreWriter>>,
    /// Topic state by name (authoritative while cached: only this task
    /// writes).
    pub(crate) topics: Bounded<Arc<str>, TopicRow>,
    /// Topic names by id, for retention.
    pub(crate) topic_ids: Bounded<i64, Arc<str>>,
    pub(crate) producers: Bounded<(i64, Arc<str>), ProducerRow>,
    /// Producer keys by id, for retention.
    pub(crate) producer_ids: Bounded<i64, (i64, Arc<str>)>,
    pub(crate) ns: Vec<NsState>,
    /// The namespace positions must be reloaded (after a failure).
    pub(crate) ns_stale: bool,
    pub(crate) last_topic_id: i64,
    pub(crate) last_producer_id: i64,
    pub(crate) retention: RetentionState,
    fan_tx: mpsc::Sender<FanMsg>,
    set: WriteSet,
}

impl Writer {
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: Box<dyn StoreWriter>,
        positions: Vec<u64>,
        (last_topic_id, last_producer_id): (i64, i64),
        fan_tx: mpsc::Sender<FanMsg>,
    ) -> Writer {
        let c = &shared.config;
        let now = shared.clock.now_ms();
        Writer {
            topics: Bounded::new(c.topic_cache),
            topic_ids: Bounded::new(c.topic_cache),
            producers: Bounded::new(c.producer_cache),
            producer_ids: Bounded::new(c.producer_cache),
            ns: positions
                .into_iter()
                .map(|p| NsState {
                    last_position: p,
                    last_ts: now,
                })
                .collect(),
            ns_stale: false,
            last_topic_id,
            last_producer_id,
            retention: RetentionState::new(shared.namespaces.len(), c.retention_interval),
            conn: Some(conn),
            shared,
            fan_tx,
            set: WriteSet::default(),
        }
    }

    /// The loop: batches of publishes, commands in order, retention in
    /// between.
    pub(crate) async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let max = self.shared.config.commit_max_batch;
        let delay = self.shared.config.commit_max_delay;
        let mut cmds: Vec<Command> = Vec::with_capacity(max);
        let mut jobs: Vec<PublishJob> = Vec::with_capacity(max);
        let mut since_slice = 0u32;
        'run: loop {
            self.retention.tick(Instant::now());
            let first = if self.retention.has_work(Instant::now()) {
                match rx.try_recv() {
                    Ok(c) => c,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        self.retention_slice().await;
                        since_slice = 0;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                }
            } else {
                let wake = self.retention.next_wake(Instant::now());
                tokio::select! {
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                    () = tokio::time::sleep_until(wake.into()) => continue,
                }
            };
            cmds.push(first);
            while cmds.len() < max {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            // Linger a moment while requests keep arriving: the answers of
            // the previous batch are going out and their senders publish
            // again; without this, concurrent publishers split into two
            // alternating half-size batches, each paying a full commit.
            let mut idle = 0;
            while cmds.len() < max && idle < LINGER_YIELDS {
                tokio::task::yield_now().await;
                let before = cmds.len();
                while cmds.len() < max {
                    match rx.try_recv() {
                        Ok(c) => cmds.push(c),
                        Err(_) => break,
                    }
                }
                idle = if cmds.len() == before { idle + 1 } else { 0 };
            }
            if !delay.is_zero() && cmds.len() < max {
                let deadline = tokio::time::Instant::now() + delay;
                while cmds.len() < max {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Ok(Some(c)) => cmds.push(c),
                        _ => break,
                    }
                }
            }
            for c in cmds.drain(..) {
                match c {
                    Command::Publish(j) => {
                        self.shared
                            .queued_bytes
                            .fetch_sub(j.req.data.len(), Ordering::Relaxed);
                        jobs.push(j);
                    }
                    other => {
                        if !jobs.is_empty() {
                            self.commit_batch(&mut jobs).await;
                        }
                        match other {
                            Command::Retention(reply) => {
                                let report = self.retention_now().await;
                                let _ = reply.send(report);
                            }
                            Command::Reset(topic, ns, reply) => {
                                let r = self.reset_topic(topic, ns).await;
                                let _ = reply.send(r);
                            }
                            Command::Close(reply) => {
                                // Let the fan-out finish before answering.
                                drop(std::mem::replace(&mut self.fan_tx, mpsc::channel(1).0));
                                if let Some(c) = self.conn.take() {
                                    c.close().await;
                                }
                                let _ = reply.send(());
                                break 'run;
                            }
                            Command::Publish(_) => {}
                        }
                    }
                }
            }
            if !jobs.is_empty() {
                self.commit_batch(&mut jobs).await;
            }
            since_slice += 1;
            if self.retention.has_work(Instant::now())
                && (rx.is_empty() || since_slice >= RETENTION_EVERY_BATCHES)
            {
                self.retention_slice().await;
                since_slice = 0;
            }
        }
    }

    /// The connection, reconnecting if the last one failed.
    pub(crate) async fn conn(&mut self) -> Result<&mut Box<dyn StoreWriter>, StorageError> {
        if self.conn.is_none() {
            self.conn = Some(self.shared.store.writer().await?);
        }
        if self.ns_stale {
            let c = self.conn.as_mut().ok_or(StorageError::Corrupt("writer"))?;
            for (i, n) in self.shared.namespaces.iter().enumerate() {
                let row = c.ensure_namespace(n.pattern.as_str(), &n.epoch).await?;
                self.ns[i].last_position = row.last_position;
            }
            self.ns_stale = false;
        }
        self.conn.as_mut().ok_or(StorageError::Corrupt("writer"))
    }

    /// After a failed transaction: forget the connection and the cache.
    pub(crate) async fn fail(&mut self) {
        if let Some(mut c) = self.conn.take() {
            let _ = c.rollback().await;
        }
        self.topics.clear();
        self.topic_ids.clear();
        self.producers.clear();
        self.producer_ids.clear();
        self.ns_stale = true;
        self.shared
            .stats
            .commit_errors
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("plexus_stream_storage_errors_total").increment(1);
    }

    pub(crate) fn cache_producer(&mut self, p: ProducerRow) {
        let k = (p.topic, p.name.clone());
        self.producer_ids.insert(p.id, k.clone());
        self.producers.insert(k, p);
    }

    pub(crate) fn cache_topic(&mut self, t: TopicRow) {
        self.topic_ids.insert(t.id, t.name.clone());
        self.topics.insert(t.name.clone(), t);
    }

    async fn commit_batch(&mut self, jobs: &mut Vec<PublishJob>) {
        let started = Instant::now();
        let n = jobs.len();
        let flush = jobs
            .iter()
            .map(|j| self.shared.namespaces[j.ns].config.durability.flush())
            .max()
            .unwrap_or(Flush::Fsynced);
        let mut set = std::mem::take(&mut self.set);
        set.clear();
        let result = self.plan_and_write(jobs, flush, &mut set).await;
        self.set = set;
        let durability = match flush {
            Flush::Fsynced => Durability::Fsynced,
            Flush::Committed => Durability::Committed,
        };
        let committed = match result {
            Ok(plan) => {
                self.apply(plan.staged);
                let stats = &self.shared.stats;
                stats.batches.fetch_add(1, Ordering::Relaxed);
                stats.requests.fetch_add(n as u64, Ordering::Relaxed);
                stats
                    .stored
                    .fetch_add(plan.live.len() as u64, Ordering::Relaxed);
                stats.max_batch.fetch_max(n as u64, Ordering::Relaxed);
                metrics::histogram!("plexus_stream_commit_seconds")
                    .record(started.elapsed().as_secs_f64());
                metrics::histogram!("plexus_stream_batch_size").record(n as f64);
                metrics::counter!("plexus_stream_events_stored_total")
                    .increment(plan.live.len() as u64);
                let replies = jobs
                    .drain(..)
                    .zip(plan.answers)
                    .map(|(j, a)| (j.reply, a))
                    .collect();
                Committed {
                    live: plan.live,
                    replies,
                    durability,
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, batch = n, "durable publish batch rolled back");
                self.fail().await;
                let err = StreamError::from(e);
                Committed {
                    live: Vec::new(),
                    replies: jobs
                        .drain(..)
                        .map(|j| (j.reply, Answer::Failed(err.clone())))
                        .collect(),
                    durability,
                }
            }
        };
        // The fan-out task only stops after the writer: a send can fail
        // only during shutdown, when nobody waits for the answers.
        let _ = self.fan_tx.send(FanMsg::Local(committed)).await;
    }

    async fn plan_and_write(
        &mut self,
        jobs: &[PublishJob],
        flush: Flush,
        set: &mut WriteSet,
    ) -> Result<Plan, StorageError> {
        let now = self.shared.clock.now_ms();
        self.conn().await?.begin(flush).await?;
        async {
            if self.shared.config.shared {
                self.lock_batch(jobs).await?;
            } else {
                self.load_missing(jobs).await?;
            }
            let plan = self.plan(jobs, now, set).await?;
            let c = self.conn().await?;
            if !set.is_empty() {
                c.write(set).await?;
            }
            c.commit().await?;
            Ok(plan)
        }
        .await
    }

    /// Cluster mode, inside the batch's transaction: forgets the cache
    /// (other nodes write too), locks and loads the batch's topics, takes
    /// the creation lock if the batch creates a topic or a producer (and
    /// refreshes the greatest ids under it), and locks the namespaces whose
    /// positions the batch assigns. Topics are locked in id order, then the
    /// creation lock, then namespaces: a deadlock between two nodes is
    /// still possible when both create topics, and PostgreSQL then fails
    /// one batch (its publishes are answered `unavailable`, retryable).
    async fn lock_batch(&mut self, jobs: &[PublishJob]) -> Result<(), StorageError> {
        self.topics.clear();
        self.topic_ids.clear();
        self.producers.clear();
        self.producer_ids.clear();
        let mut names: Vec<Arc<str>> = Vec::new();
        let mut ns_ids: Vec<i64> = Vec::new();
        for j in jobs {
            if !names.contains(&j.req.topic) {
                names.push(j.req.topic.clone());
            }
            let id = self.shared.namespaces[j.ns].id;
            if !ns_ids.contains(&id) {
                ns_ids.push(id);
            }
        }
        let rows = self.conn().await?.lock_topics(&names).await?;
        for r in rows {
            self.cache_topic(r);
        }
        let mut creates = names.iter().any(|n| self.topics.get(n).is_none());
        if !creates {
            self.load_missing(jobs).await?;
            creates = jobs.iter().any(|j| {
                j.req.producer.as_ref().is_some_and(|(p, _)| {
                    self.topics
                        .get(&j.req.topic)
                        .is_some_and(|t| self.producers.get(&(t.id, p.clone())).is_none())
                })
            });
        }
        if creates {
            let (t, p) = self.conn().await?.lock_ids().await?;
            self.last_topic_id = t;
            self.last_producer_id = p;
            // Another node may have created some meanwhile.
            let missing: Vec<Arc<str>> = names
                .iter()
                .filter(|n| self.topics.get(n).is_none())
                .cloned()
                .collect();
            if !missing.is_empty() {
                let rows = self.conn().await?.lock_topics(&missing).await?;
                for r in rows {
                    self.cache_topic(r);
                }
            }
            self.producers.clear();
            self.producer_ids.clear();
            self.load_missing(jobs).await?;
        }
        ns_ids.sort_unstable();
        let positions = self.conn().await?.lock_namespaces(&ns_ids).await?;
        for (id, p) in positions {
            if let Some(i) = self.shared.namespaces.iter().position(|n| n.id == id) {
                self.ns[i].last_position = p;
            }
        }
        Ok(())
    }

    /// Loads into the cache the topics and producers the batch names that
    /// are not cached (one query each on PostgreSQL).
    async fn load_missing(&mut self, jobs: &[PublishJob]) -> Result<(), StorageError> {
        let mut names: Vec<Arc<str>> = Vec::new();
        for j in jobs {
            if self.topics.get(&j.req.topic).is_none() && !names.contains(&j.req.topic) {
                names.push(j.req.topic.clone());
            }
        }
        if !names.is_empty() {
            let rows = self.conn().await?.load_topics(&names).await?;
            for r in rows {
                self.cache_topic(r);
            }
        }
        let mut keys: Vec<(i64, Arc<str>)> = Vec::new();
        for j in jobs {
            if let Some((p, _)) = &j.req.producer
                && let Some(t) = self.topics.get(&j.req.topic)
            {
                let k = (t.id, p.clone());
                if self.producers.get(&k).is_none() && !keys.contains(&k) {
                    keys.push(k);
                }
            }
        }
        if !keys.is_empty() {
            let rows = self.conn().await?.load_producers(&keys).await?;
            for r in rows {
                self.cache_producer(r);
            }
        }
        Ok(())
    }

    /// Decides every request of the batch on a copy of the state and fills
    /// `set` with the writes.
    async fn plan(
        &mut self,
        jobs: &[PublishJob],
        now: i64,
        set: &mut WriteSet,
    ) -> Result<Plan, StorageError> {
        let key_min_ts = now.saturating_sub(
            i64::try_from(self.shared.config.idempotency_retention.as_millis()).unwrap_or(i64::MAX),
        );
        // Keys of existing topics, looked up in one go.
        let mut key_lookups: Vec<(i64, Arc<str>)> = Vec::new();
        for j in jobs {
            if let Some(k) = &j.req.key
                && let Some(t) = self.topics.get(&j.req.topic)
            {
                let pair = (t.id, k.clone());
                if !key_lookups.contains(&pair) {
                    key_lookups.push(pair);
                }
            }
        }
        let mut keys: HashMap<(i64, Arc<str>), (u64, u64)> = HashMap::new();
        if !key_lookups.is_empty() {
            for k in self
                .conn()
                .await?
                .load_keys(&key_lookups, key_min_ts)
                .await?
            {
                keys.insert((k.topic, k.key), (k.offset, k.position));
            }
        }

        let mut staged = Staged {
            topics: HashMap::new(),
            producers: HashMap::new(),
            ns: self.ns.clone(),
            last_topic_id: self.last_topic_id,
            last_producer_id: self.last_producer_id,
        };
        let mut new_producers: Vec<i64> = Vec::new();
        let mut batch_seqs: HashMap<(i64, u64), (u64, u64)> = HashMap::new();
        let mut live = Vec::with_capacity(jobs.len());
        let mut answers = Vec::with_capacity(jobs.len());

        for j in jobs {
            let req = &j.req;
            let nsi = j.ns;
            let ns = &self.shared.namespaces[nsi];
            if !staged.topics.contains_key(&req.topic) {
                let row = match self.topics.get(&req.topic) {
                    Some(t) => t.clone(),
                    None => {
                        staged.last_topic_id += 1;
                        TopicRow {
                            id: staged.last_topic_id,
                            ns: ns.id,
                            name: req.topic.clone(),
                            epoch: derived_epoch(&ns.epoch, &req.topic).into(),
                            first_offset: 1,
                            last_offset: 0,
                            last_position: 0,
                            bytes: 0,
                            pruned_position: 0,
                        }
                    }
                };
                staged.topics.insert(req.topic.clone(), (row, false));
            }
            let Some((topic, _)) = staged.topics.get(&req.topic) else {
                continue;
            };
            let topic_id = topic.id;
            let epoch = topic.epoch.clone();

            // 1. Producer idempotency.
            if let Some((pname, seq)) = &req.producer {
                let seq = *seq;
                let pk = (topic_id, pname.clone());
                if !staged.producers.contains_key(&pk) {
                    let row = match self.producers.get(&pk) {
                        Some(p) => p.clone(),
                        None => {
                            staged.last_producer_id += 1;
                            new_producers.push(staged.last_producer_id);
                            ProducerRow {
                                id: staged.last_producer_id,
                                topic: topic_id,
                                name: pname.clone(),
                                last_seq: 0,
                                last_event: None,
                                pruned_seq: 0,
                            }
                        }
                    };
                    staged.producers.insert(pk.clone(), (row, false));
                }
                let Some((p, _)) = staged.producers.get(&pk) else {
                    continue;
                };
                if seq <= p.last_seq {
                    let found = if p.last_event.is_some() && seq == p.last_seq {
                        p.last_event
                    } else if let Some(e) = batch_seqs.get(&(p.id, seq)) {
                        Some(*e)
                    } else if new_producers.contains(&p.id) {
                        None
                    } else {
                        let (pid, pruned, last) = (p.id, p.pruned_seq, p.last_seq);
                        match self.conn().await?.find_seq(pid, seq).await? {
                            Some(e) => Some(e),
                            None if seq <= pruned => {
                                answers.push(Answer::Duplicate {
                                    offset: None,
                                    position: None,
                                    epoch,
                                });
                                continue;
                            }
                            None => {
                                answers.push(Answer::Failed(StreamError::SeqConflict {
                                    last_seq: last,
                                }));
                                continue;
                            }
                        }
                    };
                    match found {
                        Some((o, pos)) => answers.push(Answer::Duplicate {
                            offset: Some(o),
                            position: Some(pos),
                            epoch,
                        }),
                        None => answers.push(Answer::Failed(StreamError::SeqConflict {
                            last_seq: p.last_seq,
                        })),
                    }
                    continue;
                }
            }

            // 2. Idempotency key.
            if let Some(k) = &req.key
                && let Some(&(o, pos)) = keys.get(&(topic_id, k.clone()))
            {
                answers.push(Answer::Duplicate {
                    offset: Some(o),
                    position: Some(pos),
                    epoch,
                });
                continue;
            }

            // 3. Compare-and-set.
            let Some((topic, dirty)) = staged.topics.get_mut(&req.topic) else {
                continue;
            };
            if let Some(expected) = req.expected_offset
                && expected != topic.last_offset
            {
                answers.push(Answer::Failed(StreamError::OffsetConflict {
                    last_offset: topic.last_offset,
                }));
                continue;
            }

            // 4. Store.
            let nss = &mut staged.ns[nsi];
            let offset = topic.last_offset + 1;
            let position = nss.last_position + 1;
            let ts = now.max(nss.last_ts);
            nss.last_position = position;
            nss.last_ts = ts;
            let (frame, at) =
                encode_frame(&req.topic, &req.data, req.from.as_deref(), offset, position);
            let body = frame.slice(at..);
            topic.last_offset = offset;
            topic.last_position = position;
            topic.bytes += body.len() as u64;
            *dirty = true;
            let mut producer = None;
            if let Some((pname, seq)) = &req.producer
                && let Some((p, pdirty)) = staged.producers.get_mut(&(topic_id, pname.clone()))
            {
                p.last_seq = *seq;
                p.last_event = Some((offset, position));
                *pdirty = true;
                batch_seqs.insert((p.id, *seq), (offset, position));
                producer = Some((p.id, *seq));
            }
            if let Some(k) = &req.key {
                keys.insert((topic_id, k.clone()), (offset, position));
                set.keys.retain(|r| !(r.topic == topic_id && r.key == *k));
                set.keys.push(KeyRow {
                    topic: topic_id,
                    key: k.clone(),
                    offset,
                    position,
                    ts,
                });
            }
            set.events.push(EventRecord {
                topic: topic_id,
                offset,
                ns: ns.id,
                position,
                ts,
                producer,
                body,
            });
            answers.push(Answer::Stored {
                index: live.len(),
                epoch,
            });
            live.push(LiveEvent {
                topic: req.topic.clone(),
                namespace: ns.id,
                offset,
                position,
                frame,
                body_at: at,
                skip: req.skip,
            });
        }

        for (t, dirty) in staged.topics.values() {
            if *dirty {
                set.topics.push(t.clone());
            }
        }
        for (p, dirty) in staged.producers.values() {
            if *dirty {
                set.producers.push(p.clone());
            }
        }
        for (i, n) in staged.ns.iter().enumerate() {
            if n.last_position != self.ns[i].last_position {
                set.namespaces
                    .push((self.shared.namespaces[i].id, n.last_position));
            }
        }
        Ok(Plan {
            live,
            answers,
            staged,
        })
    }

    /// After the commit: the staged state becomes the cache.
    fn apply(&mut self, staged: Staged) {
        self.ns = staged.ns;
        self.last_topic_id = staged.last_topic_id;
        self.last_producer_id = staged.last_producer_id;
        for (p, dirty) in staged.producers.into_values() {
            if dirty {
                self.cache_producer(p);
            }
        }
        for (t, dirty) in staged.topics.into_values() {
            if dirty {
                self.retention.check_topic(&self.shared, &t);
                self.cache_topic(t);
            }
        }
    }

    async fn reset_topic(&mut self, topic: Arc<str>, nsi: usize) -> Result<Arc<str>, StreamError> {
        let r = async {
            let shared = self.shared.config.shared;
            if shared {
                self.topics.clear();
                self.topic_ids.clear();
                self.producers.clear();
                self.producer_ids.clear();
            }
            let c = self.conn().await?;
            c.begin(Flush::Fsynced).await?;
            let mut rows = if shared {
                c.lock_topics(std::slice::from_ref(&topic)).await?
            } else {
                c.load_topics(std::slice::from_ref(&topic)).await?
            };
            if shared && rows.is_empty() {
                let (t, p) = c.lock_ids().await?;
                rows = c.lock_topics(std::slice::from_ref(&topic)).await?;
                self.last_topic_id = t;
                self.last_producer_id = p;
            }
            let epoch: Arc<str> = super::event::random_epoch().into();
            let row = match rows.into_iter().next() {
                Some(mut t) => {
                    let c = self.conn().await?;
                    c.delete_events(t.id, u64::MAX).await?;
                    c.delete_topic_keys(t.id).await?;
                    c.reset_producers(t.id).await?;
                    t.pruned_position = t.pruned_position.max(t.last_position);
                    t.epoch = epoch.clone();
                    t.first_offset = 1;
                    t.last_offset = 0;
                    t.last_position = 0;
                    t.bytes = 0;
                    t
                }
                None => {
                    self.last_topic_id += 1;
                    TopicRow {
                        id: self.last_topic_id,
                        ns: self.shared.namespaces[nsi].id,
                        name: topic.clone(),
                        epoch: epoch.clone(),
                        first_offset: 1,
                        last_offset: 0,
                        last_position: 0,
                        bytes: 0,
                        pruned_position: 0,
                    }
                }
            };
            let set = WriteSet {
                topics: vec![row.clone()],
                ..WriteSet::default()
            };
            let c = self.conn().await?;
            c.write(&set).await?;
            c.commit().await?;
            Ok::<_, StorageError>((row, epoch))
        }
        .await;
        match r {
            Ok((row, epoch)) => {
                self.producers.clear();
                self.producer_ids.clear();
                self.cache_topic(row);
                Ok(epoch)
            }
            Err(e) => {
                self.fail().await;
                Err(e.into())
            }
        }
    }
}

/// A batch's decisions before the commit.
#[derive(Debug)]
struct Plan {
    live: Vec<LiveEvent>,
    answers: Vec<Answer>,
    staged: Staged,
}

/// The state a batch would leave (rows with a "changed" flag).
#[derive(Debug)]
struct Staged {
    topics: HashMap<Arc<str>, (TopicRow, bool)>,
    producers: HashMap<(i64, Arc<str>), (ProducerRow, bool)>,
    ns: Vec<NsState>,
    last_topic_id: i64,
    last_producer_id: i64,
}
