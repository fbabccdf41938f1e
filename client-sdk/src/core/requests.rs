//! Requests the client sends: the table of those in flight, the hub's
//! in-flight window, and the queues of those waiting to go out.
//!
//! A request is in flight from the moment its frame is handed to the
//! transport until its terminal frame arrives (§6.2, decision P2), even
//! after the application cancelled it: the hub counts it until then, and
//! the id stays reserved (§8).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::RawValue;
use plexus_protocol::methods::ServerLimits;

use crate::deliver::{ChunkQueue, ReplyTx};
use crate::durable::PublishAck;
use crate::error::Error;

/// Where the answer to a request goes.
pub(crate) enum Pending {
    /// An application call.
    Call(ReplyTx<Result<RawValue, Error>>),
    /// An application call whose result streams as chunks.
    Stream {
        /// The consumer's buffer.
        queue: Arc<ChunkQueue>,
        /// The `seq` the next chunk must carry.
        next_seq: u64,
    },
    /// `presence.set` from the application: on success the info is
    /// remembered and set again after every reconnect.
    PresenceSet {
        /// The info sent (`null` clears what is remembered).
        info: RawValue,
        /// The caller.
        reply: ReplyTx<Result<RawValue, Error>>,
    },
    /// A `subscribe` for this pattern (new or renewed).
    Subscribe(String),
    /// The `subscribe` (maybe a resume, streamed) of the durable
    /// subscription with this local id.
    Durable(u64),
    /// A durable publish with a producer sequence number: in flight when
    /// the connection drops, it is sent again (same frame, same `seq`)
    /// on the next connection.
    Publish {
        /// Its producer sequence number.
        seq: u64,
        /// The whole request frame, to send again.
        frame: Bytes,
        /// The caller.
        reply: ReplyTx<Result<PublishAck, Error>>,
    },
    /// The `rpc.register` (first, or renewed) of the registration with
    /// this local id.
    Register(u64),
    /// A background request whose answer is only logged: `unsubscribe`,
    /// `auth.refresh`, the `presence.set` restored after a reconnect.
    Background(&'static str),
    /// Cancelled by the application: nobody waits for the answer, but the
    /// hub still counts the request until its terminal frame.
    Abandoned,
}

impl Pending {
    /// Fails the waiter, if there is one.
    pub(crate) fn fail(self, err: Error) {
        match self {
            Pending::Call(reply) | Pending::PresenceSet { reply, .. } => reply.send(Err(err)),
            Pending::Stream { queue, .. } => queue.finish(Some(err)),
            Pending::Publish { reply, .. } => reply.send(Err(err)),
            Pending::Subscribe(_)
            | Pending::Durable(_)
            | Pending::Register(_)
            | Pending::Background(_)
            | Pending::Abandoned => {}
        }
    }

    /// Whether the application is waiting for this answer (as opposed to
    /// the SDK's own requests).
    fn is_user(&self) -> bool {
        matches!(
            self,
            Pending::Call(_)
                | Pending::Stream { .. }
                | Pending::PresenceSet { .. }
                | Pending::Publish { .. }
        )
    }
}

/// A request that has not gone out yet.
pub(crate) struct Held {
    pub(crate) id: u64,
    pub(crate) frame: Bytes,
    pub(crate) pending: Pending,
}

/// Why a request was not queued.
pub(crate) struct QueueFull(pub(crate) Held);

/// The in-flight table and the waiting queues.
pub(crate) struct Requests {
    in_flight: HashMap<u64, (Pending, usize)>,
    in_flight_bytes: usize,
    /// The SDK's own requests (renewals, unsubscribes, refresh): sent
    /// before any application request. At most one per subscribed pattern
    /// plus a few, so not bounded separately.
    internal: VecDeque<Held>,
    /// Application requests waiting for a connection or for room in the
    /// window: at most `max_queued`.
    user: VecDeque<Held>,
    max_queued: usize,
    /// The local cap on requests in flight.
    local_max: usize,
    window_count: usize,
    window_bytes: usize,
}

impl Requests {
    pub(crate) fn new(max_queued: usize, local_max: usize) -> Requests {
        Requests {
            in_flight: HashMap::new(),
            in_flight_bytes: 0,
            internal: VecDeque::new(),
            user: VecDeque::new(),
            max_queued,
            local_max: local_max.max(1),
            window_count: local_max.max(1),
            window_bytes: 0,
        }
    }

    /// Adopts the window the hub announced: `max_in_flight` (capped by the
    /// local bound; 0 means not announced) and `max_in_flight_bytes` (0:
    /// no byte bound).
    pub(crate) fn set_window(&mut self, limits: &ServerLimits) {
        let announced = usize::try_from(limits.max_in_flight).unwrap_or(usize::MAX);
        self.window_count = if announced == 0 {
            self.local_max
        } else {
            announced.min(self.local_max)
        };
        self.window_bytes = usize::try_from(limits.max_in_flight_bytes).unwrap_or(usize::MAX);
    }

    /// Whether a request frame of `size` bytes may go out now.
    pub(crate) fn fits(&self, size: usize) -> bool {
        if self.in_flight.len() >= self.window_count {
            return false;
        }
        // An empty window takes any frame (the hub guarantees that
        // `max_in_flight_bytes` ≥ `max_frame_size`, decision H1).
        self.window_bytes == 0
            || self.in_flight.is_empty()
            || self.in_flight_bytes.saturating_add(size) <= self.window_bytes
    }

    /// Records a request as in flight.
    pub(crate) fn start(&mut self, id: u64, size: usize, pending: Pending) {
        self.in_flight_bytes = self.in_flight_bytes.saturating_add(size);
        if let Some((_, old)) = self.in_flight.insert(id, (pending, size)) {
            // Ids come from one counter and are never reused.
            self.in_flight_bytes = self.in_flight_bytes.saturating_sub(old);
        }
    }

    /// Removes a request on its terminal frame.
    pub(crate) fn complete(&mut self, id: u64) -> Option<Pending> {
        let (pending, size) = self.in_flight.remove(&id)?;
        self.in_flight_bytes = self.in_flight_bytes.saturating_sub(size);
        Some(pending)
    }

    /// The request in flight with this id.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Pending> {
        self.in_flight.get_mut(&id).map(|(p, _)| p)
    }

    /// How many requests are in flight.
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// How many application requests wait.
    pub(crate) fn queued(&self) -> usize {
        self.user.len()
    }

    /// Whether the application queue is at its bound.
    pub(crate) fn queue_full(&self) -> bool {
        self.user.len() >= self.max_queued
    }

    /// Queues an application request, unless the queue is at its bound.
    pub(crate) fn queue_user(&mut self, held: Held) -> Result<(), QueueFull> {
        if self.queue_full() {
            return Err(QueueFull(held));
        }
        self.user.push_back(held);
        Ok(())
    }

    /// Queues one of the SDK's own requests.
    pub(crate) fn queue_internal(&mut self, held: Held) {
        self.internal.push_back(held);
    }

    /// The next request to send if it fits the window: the SDK's own
    /// first, then the application's in order.
    pub(crate) fn next_to_send(&mut self) -> Option<Held> {
        let size = self
            .internal
            .front()
            .or_else(|| self.user.front())
            .map(|h| h.frame.len())?;
        if !self.fits(size) {
            return None;
        }
        self.internal.pop_front().or_else(|| self.user.pop_front())
    }

    /// The application gave up on request `id`: a queued request is
    /// dropped (never sent); one in flight is kept as abandoned, and
    /// `true` says the hub should be sent `cancel`.
    pub(crate) fn cancel(&mut self, id: u64) -> bool {
        if let Some(i) = self.user.iter().position(|h| h.id == id) {
            self.user.remove(i);
            return false;
        }
        match self.in_flight.get_mut(&id) {
            Some((p, _)) if p.is_user() => {
                *p = Pending::Abandoned;
                true
            }
            _ => false,
        }
    }

    /// The connection is gone: every request in flight ends (returned, to
    /// fail its waiter) and the SDK's own queued requests are dropped (they
    /// are rebuilt after the reconnect). Application requests that never
    /// went out stay queued.
    pub(crate) fn connection_lost(&mut self) -> Vec<(u64, Pending)> {
        self.in_flight_bytes = 0;
        self.internal.clear();
        self.in_flight.drain().map(|(id, (p, _))| (id, p)).collect()
    }

    /// Puts requests back at the head of the application queue, in the
    /// given order (durable publishes sent again after a reconnect, before
    /// anything queued after them). They were counted when first queued,
    /// so the bound is not checked again: at most the window's worth.
    pub(crate) fn requeue_front(&mut self, held: Vec<Held>) {
        for h in held.into_iter().rev() {
            self.user.push_front(h);
        }
    }

    /// Closed for good: everything still queued.
    pub(crate) fn drain_queued(&mut self) -> Vec<Held> {
        self.internal.clear();
        self.user.drain(..).collect()
    }
}
