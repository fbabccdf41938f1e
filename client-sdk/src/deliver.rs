//! Hand-off points between the connection core and the application: a
//! one-shot reply slot, the bounded chunk queue of a streamed call, and the
//! list of handles dropped since the connection task last looked.
//!
//! Plain data structures with a waker, no runtime and no I/O, so the
//! sans-IO core can complete calls without depending on tokio.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use plexus_protocol::RawValue;

use crate::error::Error;

/// Locks a mutex, ignoring poisoning: every critical section in this crate
/// is a few plain field updates, so a panic while holding a lock cannot
/// leave the data torn.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

struct Slot<T> {
    value: Option<T>,
    /// The sender is gone (it sent, or was dropped without sending).
    closed: bool,
    waker: Option<Waker>,
}

/// Creates a one-shot reply slot.
pub(crate) fn reply<T>() -> (ReplyTx<T>, ReplyRx<T>) {
    let slot = Arc::new(Mutex::new(Slot {
        value: None,
        closed: false,
        waker: None,
    }));
    (ReplyTx { slot: slot.clone() }, ReplyRx { slot })
}

/// The core's end of a reply slot.
pub(crate) struct ReplyTx<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> ReplyTx<T> {
    /// Delivers the value and wakes the waiter.
    pub(crate) fn send(self, value: T) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.value = Some(value);
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for ReplyTx<T> {
    fn drop(&mut self) {
        let waker = {
            let mut slot = lock(&self.slot);
            slot.closed = true;
            slot.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> std::fmt::Debug for ReplyTx<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyTx")
    }
}

/// The waiter's end: resolves to the value, or `None` when the core dropped
/// the slot without answering (the client's task ended).
pub(crate) struct ReplyRx<T> {
    slot: Arc<Mutex<Slot<T>>>,
}

impl<T> Future for ReplyRx<T> {
    type Output = Option<T>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut slot = lock(&self.slot);
        if let Some(v) = slot.value.take() {
            return Poll::Ready(Some(v));
        }
        if slot.closed {
            return Poll::Ready(None);
        }
        slot.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// What [`ChunkQueue::push`] did with a chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Queued.
    Queued,
    /// The queue is full: the consumer fell a whole buffer behind.
    Full,
    /// The consumer dropped the stream.
    Gone,
}

struct ChunkState {
    items: VecDeque<RawValue>,
    /// `Some` once the stream ended: `Some(None)` complete, `Some(Some(e))`
    /// failed with `e` (yielded after the items, then taken).
    end: Option<Option<Error>>,
    waker: Option<Waker>,
}

/// The bounded buffer between the core and one [`ChunkStream`](crate::ChunkStream).
///
/// The terminal error is kept beside the items, so it is never lost to a
/// full buffer.
pub(crate) struct ChunkQueue {
    state: Mutex<ChunkState>,
    capacity: usize,
    consumer_gone: AtomicBool,
    /// Set for a paced queue (routed RPC's progressive results): the
    /// connection stops reading while it is full instead of breaking the
    /// stream, and the consumer wakes the connection when it makes room.
    paced: Option<Arc<Reaper>>,
}

impl ChunkQueue {
    /// A queue of at most `capacity` chunks (at least 1).
    pub(crate) fn new(capacity: usize) -> ChunkQueue {
        ChunkQueue {
            state: Mutex::new(ChunkState {
                items: VecDeque::new(),
                end: None,
                waker: None,
            }),
            capacity: capacity.max(1),
            consumer_gone: AtomicBool::new(false),
            paced: None,
        }
    }

    /// A paced queue of at most `capacity` chunks: while it is full the
    /// connection reads nothing (so the hub, and through its credit the
    /// callee, wait for the consumer); a read that makes room wakes the
    /// connection through `reaper`.
    pub(crate) fn paced(capacity: usize, reaper: Arc<Reaper>) -> ChunkQueue {
        let mut q = ChunkQueue::new(capacity);
        q.paced = Some(reaper);
        q
    }

    /// Whether this queue is paced.
    pub(crate) fn is_paced(&self) -> bool {
        self.paced.is_some()
    }

    /// Whether the consumer must make room before more is read: full,
    /// not ended and still consumed.
    pub(crate) fn is_full(&self) -> bool {
        if self.consumer_gone.load(Ordering::Acquire) {
            return false;
        }
        let s = lock(&self.state);
        s.end.is_none() && s.items.len() >= self.capacity
    }

    /// Queues one chunk's data.
    pub(crate) fn push(&self, data: RawValue) -> Push {
        if self.consumer_gone.load(Ordering::Acquire) {
            return Push::Gone;
        }
        let waker = {
            let mut s = lock(&self.state);
            if s.end.is_some() {
                return Push::Gone;
            }
            if s.items.len() >= self.capacity {
                return Push::Full;
            }
            s.items.push_back(data);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        Push::Queued
    }

    /// Ends the stream, with an error after the queued items if `error` is
    /// set. Only the first end counts.
    pub(crate) fn finish(&self, error: Option<Error>) {
        let waker = {
            let mut s = lock(&self.state);
            if s.end.is_some() {
                return;
            }
            s.end = Some(error);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Marks the consumer gone (its stream was dropped).
    pub(crate) fn abandon(&self) {
        self.consumer_gone.store(true, Ordering::Release);
    }

    /// The next item: data, then the terminal error if any, then `None`.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<Result<RawValue, Error>>> {
        let mut s = lock(&self.state);
        let was_full = s.items.len() >= self.capacity;
        if let Some(v) = s.items.pop_front() {
            drop(s);
            if was_full && let Some(r) = &self.paced {
                r.wake();
            }
            return Poll::Ready(Some(Ok(v)));
        }
        match &mut s.end {
            Some(end) => Poll::Ready(end.take().map(Err)),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }

    /// Whether the stream has ended (for tests and the stream's drop).
    pub(crate) fn ended(&self) -> bool {
        lock(&self.state).end.is_some()
    }
}

impl std::fmt::Debug for ChunkQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkQueue")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

/// A handle the application dropped, which the connection must clean up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// A call or stream abandoned before its end (timeout, dropped future):
    /// the request id, to cancel on the hub or remove from the queue.
    Call(u64),
    /// A [`Subscription`](crate::Subscription): its local id.
    Subscription(u64),
    /// A [`Registration`](crate::Registration): its local id.
    Registration(u64),
}

struct CreditState {
    chunks: u64,
    waker: Option<Waker>,
}

/// The credit of one invocation of a routed procedure (§25.7): chunks
/// its handler may still send. The core adds to it (`window`, then each
/// `rpc.credit`); the handler's task takes one before each non-final
/// chunk, waiting while there is none.
pub(crate) struct Credit {
    state: Mutex<CreditState>,
}

impl Credit {
    /// A credit of `window` chunks.
    pub(crate) fn new(window: u64) -> Credit {
        Credit {
            state: Mutex::new(CreditState {
                chunks: window,
                waker: None,
            }),
        }
    }

    /// Grants `chunks` more.
    pub(crate) fn add(&self, chunks: u64) {
        let waker = {
            let mut s = lock(&self.state);
            s.chunks = s.chunks.saturating_add(chunks);
            s.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Takes one chunk of credit, or registers to be woken when some comes.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = lock(&self.state);
        if s.chunks > 0 {
            s.chunks -= 1;
            return Poll::Ready(());
        }
        s.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// What is left (tests).
    #[cfg(test)]
    pub(crate) fn left(&self) -> u64 {
        lock(&self.state).chunks
    }
}

impl std::fmt::Debug for Credit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credit").finish_non_exhaustive()
    }
}

/// Where handles report that they were dropped, and where `close` is
/// requested, without going through the bounded command channel (a `Drop`
/// cannot wait for room in it).
///
/// Bounded by construction: each handle (a call in progress, a chunk
/// stream, a subscription) reports at most once, so the list never holds
/// more entries than the application had handles, and the task drains it
/// on every turn of its loop.
#[derive(Default)]
pub(crate) struct Reaper {
    dropped: Mutex<Vec<Dropped>>,
    close: AtomicBool,
    waker: AtomicWaker,
}

impl Reaper {
    /// Reports a dropped handle and wakes the task.
    pub(crate) fn push(&self, d: Dropped) {
        lock(&self.dropped).push(d);
        self.waker.wake();
    }

    /// Takes everything reported so far.
    pub(crate) fn take(&self) -> Vec<Dropped> {
        std::mem::take(&mut *lock(&self.dropped))
    }

    /// Wakes the task (a durable subscription's consumer made room: it
    /// may read again).
    pub(crate) fn wake(&self) {
        self.waker.wake();
    }

    /// Asks the task to close the connection.
    pub(crate) fn request_close(&self) {
        self.close.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether `close` was requested.
    pub(crate) fn close_requested(&self) -> bool {
        self.close.load(Ordering::Acquire)
    }

    /// Registers the task to be woken by the next report.
    pub(crate) fn register(&self, waker: &Waker) {
        self.waker.register(waker);
    }
}

impl std::fmt::Debug for Reaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reaper").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn a_reply_arrives_or_reports_the_sender_gone() {
        let (tx, rx) = reply::<u8>();
        tx.send(7);
        assert_eq!(rx.now_or_never(), Some(Some(7)));
        let (tx, rx) = reply::<u8>();
        drop(tx);
        assert_eq!(rx.now_or_never(), Some(None));
    }

    #[test]
    fn a_chunk_queue_is_bounded_and_keeps_its_error_beside_the_items() {
        let q = ChunkQueue::new(2);
        let one = RawValue::encode(&1u8).unwrap();
        assert_eq!(q.push(one.clone()), Push::Queued);
        assert_eq!(q.push(one.clone()), Push::Queued);
        assert_eq!(q.push(one.clone()), Push::Full);
        q.finish(Some(Error::BrokenStream("x")));
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(Some(Err(_)))));
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(None)));
        assert_eq!(q.push(one), Push::Gone);
    }

    #[test]
    fn credit_is_taken_one_chunk_at_a_time_and_wakes_when_granted() {
        let c = Credit::new(1);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(c.poll_take(&mut cx).is_ready());
        assert!(c.poll_take(&mut cx).is_pending(), "no credit left");
        c.add(2);
        assert_eq!(c.left(), 2);
        assert!(c.poll_take(&mut cx).is_ready());
        assert!(c.poll_take(&mut cx).is_ready());
        assert!(c.poll_take(&mut cx).is_pending());
    }

    #[test]
    fn a_paced_queue_reports_full_and_wakes_the_connection_on_room() {
        let reaper = Arc::new(Reaper::default());
        let q = ChunkQueue::paced(2, reaper);
        let one = RawValue::encode(&1u8).unwrap();
        assert!(q.is_paced());
        assert_eq!(q.push(one.clone()), Push::Queued);
        assert!(!q.is_full());
        assert_eq!(q.push(one), Push::Queued);
        assert!(q.is_full());
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(matches!(q.poll_next(&mut cx), Poll::Ready(Some(Ok(_)))));
        assert!(!q.is_full());
        q.abandon();
        assert!(
            !q.is_full(),
            "a dropped consumer never holds the connection"
        );
    }
}
