//! Durable streams on the application side: durable subscriptions as a
//! [`Stream`] of [`DurableEvent`]s, where they start, the
//! [`PositionStore`] that keeps their positions across process restarts,
//! and the options and acknowledgement of an idempotent publish.
//!
//! The rules (resume after every reconnect, de-duplication by offset,
//! typed resume outcomes, retry of publishes in flight) live in the
//! sans-IO core (`core/durable.rs`); this module is the hand-off to the
//! application.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use futures_util::Stream;
use plexus_protocol::RawValue;
use plexus_protocol::methods::Durability;
use tokio::sync::mpsc;

use crate::core::Command;
use crate::deliver::{Dropped, Reaper, lock};
use crate::error::Error;

/// Where a durable stream stands: the epoch of its history and the last
/// offset (exact topic) or namespace position (pattern) received.
///
/// An absent `epoch` accepts any epoch (a resume then never reports
/// [`DurableEvent::Reset`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct StreamPosition {
    /// The epoch the position belongs to.
    pub epoch: Option<Arc<str>>,
    /// The last offset (exact topic) or position (pattern) received; 0 is
    /// "before the first event".
    pub last: u64,
}

impl StreamPosition {
    /// A position after `last` in `epoch`.
    ///
    /// ```
    /// use plexus_client::StreamPosition;
    /// let p = StreamPosition::new(Some("9f2c".into()), 41);
    /// assert_eq!(p.last, 41);
    /// ```
    pub fn new(epoch: Option<Arc<str>>, last: u64) -> StreamPosition {
        StreamPosition { epoch, last }
    }
}

/// Where a new durable subscription starts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartAt {
    /// At the position the [`PositionStore`] has for this topic or pattern,
    /// or [`StartAt::Now`] when it has none (the default).
    #[default]
    Stored,
    /// With the next event published: no catch-up.
    Now,
    /// From the first event the history still holds.
    Beginning,
    /// After this position (catch-up from `last + 1`).
    After(StreamPosition),
}

/// An event of a durable topic, with where it sits in its stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DurableMessage {
    /// The topic it was published on.
    pub topic: Arc<str>,
    /// The payload, exactly as published.
    pub data: RawValue,
    /// The publishing user.
    pub from: Option<Arc<str>>,
    /// Its offset in its topic (gapless from 1).
    pub offset: u64,
    /// Its position in its namespace (gapless across the namespace's
    /// topics).
    pub position: u64,
    /// The epoch of the stream it belongs to, when known (it is not yet
    /// known during the catch-up of a subscription started at
    /// [`StartAt::Beginning`]; the [`DurableEvent::Recovered`] that ends
    /// the catch-up carries it).
    pub epoch: Option<Arc<str>>,
}

/// What a [`DurableSubscription`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DurableEvent {
    /// The next event, in offset (position, for a pattern) order, never
    /// twice.
    Message(DurableMessage),
    /// A resume caught up: `count` missed events came before this (maybe
    /// 0); what follows is live. After every reconnect and after a start
    /// from a position.
    Recovered {
        /// Events streamed by this resume (before de-duplication).
        count: u64,
        /// The position the stream is live from.
        position: StreamPosition,
    },
    /// The history no longer holds the events after the position (retention
    /// removed them): nothing was replayed and the stream is live from
    /// `position`. Resynchronise the application's state (e.g. from
    /// `history.latest`), then carry on.
    TooOld {
        /// The first offset (position) from which the history is complete.
        earliest: Option<u64>,
        /// The position the stream is live from.
        position: StreamPosition,
    },
    /// The stream's history was reset (its epoch changed): nothing was
    /// replayed and the stream is live from `position`. Drop what was
    /// derived from the old epoch and resynchronise.
    Reset {
        /// The new epoch.
        epoch: Arc<str>,
        /// The position the stream is live from.
        position: StreamPosition,
    },
    /// The subscription ended: the hub refused it when it was resumed, or
    /// the client closed. Nothing follows.
    Ended(Error),
}

impl DurableEvent {
    /// The position the stream stands at after this event, if it moves it.
    fn position(&self) -> Option<StreamPosition> {
        match self {
            DurableEvent::Message(m) => Some(StreamPosition {
                epoch: m.epoch.clone(),
                last: m.offset,
            }),
            DurableEvent::Recovered { position, .. }
            | DurableEvent::TooOld { position, .. }
            | DurableEvent::Reset { position, .. } => Some(position.clone()),
            DurableEvent::Ended(_) => None,
        }
    }
}

/// Keeps the position of each durable subscription, so that a new process
/// resumes where the previous one stopped.
///
/// Keys are the topic or pattern exactly as subscribed. The SDK calls
/// [`load`](Self::load) once when a subscription starts at
/// [`StartAt::Stored`], and [`save`](Self::save) after the application has
/// received each [`DurableEvent::Message`], `Recovered`, `TooOld` or
/// `Reset` (inside `poll_next`, just before the event is returned), and
/// once when a `Stored` subscription that found nothing stored (so it
/// started now) is confirmed, with the hub's position then. So a
/// saved position is never ahead of what the application was given; if the
/// process dies while handling an event, that event is not replayed (it
/// was handed over). An application that needs each event handled at
/// least once across crashes stores [`DurableMessage::offset`] with its own
/// results instead (in the same transaction), starts with
/// [`StartAt::After`], and passes a store whose `save` does nothing.
///
/// Both methods are called on the application's task, inside `poll_next`:
/// keep them short (an in-memory map, a small file write), never block on
/// the network.
pub trait PositionStore: Send + Sync + 'static {
    /// The saved position of `key`, if any.
    fn load(&self, key: &str) -> Option<StreamPosition>;
    /// Saves the position of `key`.
    fn save(&self, key: &str, position: &StreamPosition);
}

/// The default [`PositionStore`]: positions in memory, shared by the
/// subscriptions of one client (and its clones); lost when the process
/// exits.
#[derive(Debug, Default)]
pub struct MemoryPositionStore {
    positions: Mutex<HashMap<String, StreamPosition>>,
}

impl MemoryPositionStore {
    /// An empty store.
    pub fn new() -> MemoryPositionStore {
        MemoryPositionStore::default()
    }
}

impl PositionStore for MemoryPositionStore {
    fn load(&self, key: &str) -> Option<StreamPosition> {
        lock(&self.positions).get(key).cloned()
    }

    fn save(&self, key: &str, position: &StreamPosition) {
        lock(&self.positions).insert(key.to_owned(), position.clone());
    }
}

/// Options of [`Client::publish_durable_with`](crate::Client::publish_durable_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishOptions {
    /// An idempotency key (1–128 bytes): a second publish with the same
    /// key on the topic, within the hub's idempotency retention, is not
    /// stored again.
    pub key: Option<String>,
    /// Publish only if the topic's last offset is this (0: no event yet);
    /// otherwise [`Error::Conflict`] with the current last offset.
    pub expected_offset: Option<u64>,
    /// Deliver to this connection's own subscriptions too [default: true].
    pub echo: Option<bool>,
}

impl PublishOptions {
    /// No key, no condition, echo on.
    pub fn new() -> PublishOptions {
        PublishOptions::default()
    }

    /// Sets the idempotency key.
    pub fn key(mut self, key: impl Into<String>) -> PublishOptions {
        self.key = Some(key.into());
        self
    }

    /// Publishes only if the topic's last offset is `offset`.
    pub fn expected_offset(mut self, offset: u64) -> PublishOptions {
        self.expected_offset = Some(offset);
        self
    }

    /// Sets the `echo` flag.
    pub fn echo(mut self, echo: bool) -> PublishOptions {
        self.echo = Some(echo);
        self
    }
}

/// The hub's acknowledgement of a durable publish: it is stored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PublishAck {
    /// Its offset in the topic. Absent only for a duplicate whose original
    /// retention already removed.
    pub offset: Option<u64>,
    /// Its position in the namespace (absent like `offset`).
    pub position: Option<u64>,
    /// The topic's epoch.
    pub epoch: Option<Arc<str>>,
    /// The durability reached before the answer.
    pub durability: Option<Durability>,
    /// The publish had been stored before (a retry after a reconnect, or a
    /// repeated idempotency key): `offset` is the original's.
    pub duplicate: bool,
    /// How many connections the event was queued for (0 for a duplicate).
    pub delivered: u64,
    /// The producer sequence number it was sent with.
    pub seq: u64,
}

struct QueueState {
    items: VecDeque<DurableEvent>,
    ended: bool,
    waker: Option<Waker>,
}

/// The bounded buffer between the connection task and one
/// [`DurableSubscription`].
///
/// Nothing is ever dropped here: while it holds `capacity` events or more
/// the connection task stops reading from the socket (the hub's catch-up
/// then waits for this consumer), and reads again once the consumer took
/// an event. One frame is always taken whole, so the buffer holds at most
/// `capacity` events plus one frame's worth.
pub(crate) struct DurableQueue {
    state: Mutex<QueueState>,
    capacity: usize,
    reaper: Arc<Reaper>,
}

impl DurableQueue {
    pub(crate) fn new(capacity: usize, reaper: Arc<Reaper>) -> DurableQueue {
        DurableQueue {
            state: Mutex::new(QueueState {
                items: VecDeque::new(),
                ended: false,
                waker: None,
            }),
            capacity: capacity.max(1),
            reaper,
        }
    }

    /// Queues an event (never refused; see [`Self::full`]).
    pub(crate) fn push(&self, event: DurableEvent) {
        let waker = {
            let mut s = lock(&self.state);
            if s.ended {
                return;
            }
            s.items.push_back(event);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Ends the stream after what is queued.
    pub(crate) fn end(&self, why: Error) {
        let waker = {
            let mut s = lock(&self.state);
            if s.ended {
                return;
            }
            s.items.push_back(DurableEvent::Ended(why));
            s.ended = true;
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the consumer is a whole buffer behind (stop reading).
    pub(crate) fn full(&self) -> bool {
        lock(&self.state).items.len() >= self.capacity
    }

    /// How many events are buffered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.state).items.len()
    }

    /// Takes the next event without waiting (tests).
    #[cfg(test)]
    pub(crate) fn try_pop(&self) -> Option<DurableEvent> {
        lock(&self.state).items.pop_front()
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Option<DurableEvent>> {
        let (item, wake_task) = {
            let mut s = lock(&self.state);
            let was_full = s.items.len() >= self.capacity;
            match s.items.pop_front() {
                Some(item) => (item, was_full && s.items.len() < self.capacity),
                None if s.ended => return Poll::Ready(None),
                None => {
                    s.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
            }
        };
        if wake_task {
            // The connection task stopped reading for this consumer.
            self.reaper.wake();
        }
        Poll::Ready(Some(item))
    }
}

impl std::fmt::Debug for DurableQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableQueue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A durable subscription: a [`Stream`] of [`DurableEvent`]s that loses
/// nothing the hub stored.
///
/// After every reconnect the SDK resumes it from the last event received
/// (`subscribe` with `since`): the missed events come first, then
/// [`DurableEvent::Recovered`], [`DurableEvent::TooOld`] or
/// [`DurableEvent::Reset`], then live events. Events are de-duplicated by
/// offset (position, for a pattern), across the seam between catch-up and
/// live delivery and across reconnects, so each is yielded once, in order.
///
/// Its buffer is bounded
/// ([`ClientBuilder::durable_buffer`](crate::ClientBuilder::durable_buffer)):
/// a consumer that falls behind slows the connection's reading (and so
/// the hub's catch-up) instead of losing events. Other calls on the same
/// client wait meanwhile, so keep consuming while you wait for them.
///
/// Dropping it unsubscribes (in the background).
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
/// use futures_util::StreamExt;
/// use plexus_client::{DurableEvent, StartAt};
/// let mut orders = client.subscribe_durable_from("orders.eu", StartAt::Beginning).await?;
/// while let Some(event) = orders.next().await {
///     match event {
///         DurableEvent::Message(m) => println!("#{}: {:?}", m.offset, m.data),
///         DurableEvent::TooOld { .. } | DurableEvent::Reset { .. } => { /* resync */ }
///         DurableEvent::Ended(e) => return Err(e),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
pub struct DurableSubscription {
    pub(crate) id: u64,
    pub(crate) pattern: String,
    /// An exact topic (positions are offsets) or a pattern (namespace
    /// positions).
    pub(crate) exact: bool,
    pub(crate) queue: Arc<DurableQueue>,
    pub(crate) store: Arc<dyn PositionStore>,
    pub(crate) reaper: Arc<Reaper>,
    /// Keeps the connection alive while the subscription exists.
    pub(crate) _cmd: mpsc::Sender<Command>,
}

impl std::fmt::Debug for DurableSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableSubscription")
            .field("id", &self.id)
            .field("pattern", &self.pattern)
            .finish_non_exhaustive()
    }
}

impl DurableSubscription {
    /// The topic or pattern subscribed to (the [`PositionStore`] key).
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl Stream for DurableSubscription {
    type Item = DurableEvent;
    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<DurableEvent>> {
        let item = self.queue.poll(cx);
        if let Poll::Ready(Some(event)) = &item
            && let Some(position) = event.position()
        {
            // A pattern's position is the namespace position.
            let position = match event {
                DurableEvent::Message(m) if !self.exact => StreamPosition {
                    epoch: m.epoch.clone(),
                    last: m.position,
                },
                _ => position,
            };
            self.store.save(&self.pattern, &position);
        }
        item
    }
}

impl Drop for DurableSubscription {
    fn drop(&mut self) {
        self.reaper.push(Dropped::Subscription(self.id));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use futures_util::StreamExt;

    fn msg(offset: u64, position: u64) -> DurableEvent {
        DurableEvent::Message(DurableMessage {
            topic: "orders.a".into(),
            data: RawValue::encode(&offset).unwrap(),
            from: None,
            offset,
            position,
            epoch: Some("E".into()),
        })
    }

    fn sub(
        pattern: &str,
        store: Arc<MemoryPositionStore>,
    ) -> (DurableSubscription, Arc<DurableQueue>) {
        let reaper = Arc::new(Reaper::default());
        let queue = Arc::new(DurableQueue::new(4, reaper.clone()));
        let (tx, _rx) = mpsc::channel(1);
        let s = DurableSubscription {
            id: 1,
            pattern: pattern.into(),
            exact: !pattern.contains(['*', '>']),
            queue: queue.clone(),
            store,
            reaper,
            _cmd: tx,
        };
        (s, queue)
    }

    #[tokio::test]
    async fn the_store_is_saved_as_the_application_takes_each_event() {
        let store = Arc::new(MemoryPositionStore::new());
        let (mut s, q) = sub("orders.a", store.clone());
        q.push(msg(3, 30));
        q.push(msg(4, 31));
        assert_eq!(store.load("orders.a"), None, "nothing taken yet");
        s.next().await;
        assert_eq!(
            store.load("orders.a"),
            Some(StreamPosition::new(Some("E".into()), 3))
        );
        s.next().await;
        assert_eq!(store.load("orders.a").unwrap().last, 4);
        q.push(DurableEvent::Reset {
            epoch: "F".into(),
            position: StreamPosition::new(Some("F".into()), 0),
        });
        s.next().await;
        assert_eq!(
            store.load("orders.a"),
            Some(StreamPosition::new(Some("F".into()), 0))
        );
        q.end(Error::Closed(None));
        assert!(matches!(s.next().await, Some(DurableEvent::Ended(_))));
        assert_eq!(s.next().await, None);

        // A pattern keeps namespace positions.
        let (mut p, q) = sub("orders.*", store.clone());
        q.push(msg(3, 30));
        p.next().await;
        assert_eq!(store.load("orders.*").unwrap().last, 30);
    }
}
