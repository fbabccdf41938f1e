//! The per-connection outbound queue, bounded in the memory it holds.
//!
//! Producers (the session, the broker fanning out a publish, presence) push
//! already-encoded frames as shared [`Bytes`]; pushing never blocks and never
//! waits for the socket. The connection's writer drains everything queued
//! in one go and writes it with a single flush. When a push would take the
//! queue past its budget, the queue is marked overflowed and its memory is
//! released at once: the writer stops, and the session closes with the
//! slow-consumer code. One slow reader therefore costs its own connection,
//! never anyone else's throughput.
//!
//! The budget counts what a queued frame really holds: its allocation (the
//! protocol crate encodes frames at their exact size) plus
//! [`ITEM_OVERHEAD`] for its queue slot and shared-buffer header, so a
//! flood of tiny frames is bounded as tightly as a few large ones.
//!
//! Bulk senders (streamed replies) do not push blindly: they wait for
//! credit with [`Outbound::reserve`], which resolves once the queue holds
//! less than half its budget, so a download slows down to the reader's
//! pace instead of tripping the slow-consumer close. Fan-out keeps
//! push-or-close.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use plexus_protocol::CloseCode;
use tokio::sync::Notify;

use crate::conn::Command;

/// Most commands queued for a connection's session at once.
pub const MAX_COMMANDS: usize = 64;

/// What the budget charges per queued frame beyond its bytes: the queue
/// slot (a `Bytes` handle, with the queue's growth slack) and the shared
/// header a cloned buffer carries.
pub const ITEM_OVERHEAD: usize = 64;

/// Queue slots a drained queue keeps allocated; past this the writer drops
/// its batch buffer, so a burst does not pin its peak slot count.
pub const BATCH_KEEP: usize = 64;

/// What the budget charges for a frame of `len` bytes.
pub const fn cost(len: usize) -> usize {
    len + ITEM_OVERHEAD
}

/// The queue was closed while waiting for credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closing")]
pub struct Closed;

/// One item for the writer.
#[derive(Debug, Clone)]
pub enum OutItem {
    /// An encoded frame, sent as one binary message.
    Frame(Bytes),
    /// A WebSocket ping with this payload.
    Ping(Bytes),
}

/// What the writer should do once the queue is drained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseRequest {
    /// Close after writing everything queued before the request.
    Graceful(CloseCode),
    /// Close now, dropping whatever is queued (slow consumer).
    Abort(CloseCode),
}

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for the writer.
    Queued,
    /// The push would exceed the byte budget: the queue is now closed with
    /// [`CloseCode::SlowConsumer`].
    Overflow,
    /// The queue is already closing; the frame was dropped.
    Closed,
}

#[derive(Debug, Default)]
struct State {
    items: VecDeque<OutItem>,
    /// Charged bytes (see [`cost`]) of the items queued and of the batch
    /// the writer is writing.
    bytes: usize,
    close: Option<CloseRequest>,
    /// Bulk senders waiting for credit.
    credit: Vec<Waker>,
    /// Commands for the session, from other tasks.
    commands: VecDeque<Command>,
}

impl State {
    /// Drops everything queued and releases its memory.
    fn discard(&mut self) {
        self.items = VecDeque::new();
        self.bytes = 0;
        for w in self.credit.drain(..) {
            w.wake();
        }
    }
}

/// A bounded, non-blocking, multi-producer queue drained by one writer.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    /// The writer's waker: lighter than a `Notify` on the fan-out path,
    /// where every publish wakes every idle subscriber's writer.
    writer: AtomicWaker,
    aborted: Notify,
    max_bytes: usize,
    closing: AtomicBool,
    /// Set when a command is queued; cleared by [`Outbound::take_commands`].
    commanded: AtomicBool,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` of frames not yet written.
    pub fn new(max_bytes: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State::default()),
            writer: AtomicWaker::new(),
            aborted: Notify::new(),
            max_bytes,
            closing: AtomicBool::new(false),
            commanded: AtomicBool::new(false),
        }
    }

    /// Queues a frame unless that would exceed the budget.
    pub fn push(&self, frame: Bytes) -> Push {
        let cost = cost(frame.len());
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Push::Closed;
        }
        if st.bytes + cost > self.max_bytes {
            st.discard();
            st.close = Some(CloseRequest::Abort(CloseCode::SlowConsumer));
            self.closing.store(true, Ordering::Release);
            drop(st);
            self.writer.wake();
            self.aborted.notify_one();
            return Push::Overflow;
        }
        let was_empty = st.items.is_empty();
        st.bytes += cost;
        st.items.push_back(OutItem::Frame(frame));
        drop(st);
        if was_empty {
            self.writer.wake();
        }
        Push::Queued
    }

    /// Queues a WebSocket ping (control frames are not counted in the budget).
    pub fn ping(&self, payload: Bytes) {
        let mut st = self.state.lock();
        if st.close.is_none() {
            st.items.push_back(OutItem::Ping(payload));
            drop(st);
            self.writer.wake();
        }
    }

    /// Asks the writer to close. The first request wins; an abort overrides
    /// a pending graceful close.
    pub fn close(&self, req: CloseRequest) {
        let mut st = self.state.lock();
        match (st.close, req) {
            (None, _) | (Some(CloseRequest::Graceful(_)), CloseRequest::Abort(_)) => {
                if matches!(req, CloseRequest::Abort(_)) {
                    st.discard();
                }
                st.close = Some(req);
                for w in st.credit.drain(..) {
                    w.wake();
                }
            }
            _ => return,
        }
        self.closing.store(true, Ordering::Release);
        drop(st);
        self.writer.wake();
        if matches!(req, CloseRequest::Abort(_)) {
            self.aborted.notify_one();
        }
    }

    /// Resolves once an abort has been requested (a writer blocked on a full
    /// socket selects on this to give up).
    pub async fn aborted(&self) {
        loop {
            let notified = self.aborted.notified();
            // The flag first: the writer selects on this for every batch,
            // and almost always nothing is closing.
            if self.is_closing() && matches!(self.state.lock().close, Some(CloseRequest::Abort(_)))
            {
                return;
            }
            notified.await;
        }
    }

    /// Queues a command for the session and wakes it; gives the command
    /// back if the connection is closing or [`MAX_COMMANDS`] are queued.
    pub fn command(&self, c: Command) -> Result<(), Command> {
        let mut st = self.state.lock();
        if st.close.is_some() || st.commands.len() >= MAX_COMMANDS {
            return Err(c);
        }
        st.commands.push_back(c);
        drop(st);
        self.commanded.store(true, Ordering::Release);
        self.writer.wake();
        Ok(())
    }

    /// Takes the queued commands (cheap when there are none).
    pub fn take_commands(&self) -> VecDeque<Command> {
        if !self.commanded.swap(false, Ordering::AcqRel) {
            return VecDeque::new();
        }
        std::mem::take(&mut self.state.lock().commands)
    }

    /// Whether a close has been requested (cheap; for fan-out to skip).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The close requested, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.state.lock().close
    }

    /// Charged bytes (see [`cost`]) queued and not yet handed to the
    /// socket.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
    }

    /// The most a bulk sender may have queued: half the budget, so fan-out
    /// always has room left.
    pub fn credit_limit(&self) -> usize {
        self.max_bytes / 2
    }

    /// Waits until a frame of `len` bytes fits under
    /// [`credit_limit`](Outbound::credit_limit) (it always fits when the
    /// queue is empty). Does not queue anything: push the frame next.
    pub async fn reserve(&self, len: usize) -> Result<(), Closed> {
        std::future::poll_fn(|cx| self.poll_reserve(cx, len)).await
    }

    /// Polls for credit for a frame of `len` bytes; see
    /// [`reserve`](Outbound::reserve).
    pub fn poll_reserve(&self, cx: &mut Context<'_>, len: usize) -> Poll<Result<(), Closed>> {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Poll::Ready(Err(Closed));
        }
        if st.bytes == 0 || st.bytes + cost(len) <= self.credit_limit() {
            return Poll::Ready(Ok(()));
        }
        if !st.credit.iter().any(|w| w.will_wake(cx.waker())) {
            st.credit.push(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Waits until there is something to write or a close request, then
    /// moves all queued items into `batch` (which must be empty). Returns the
    /// close request when the writer should close after writing `batch`.
    pub async fn next_batch(&self, batch: &mut VecDeque<OutItem>) -> Option<CloseRequest> {
        std::future::poll_fn(|cx| {
            // Register first, then look: a push between the two wakes us.
            self.writer.register(cx.waker());
            let mut st = self.state.lock();
            if !st.items.is_empty() || st.close.is_some() {
                std::mem::swap(&mut st.items, batch);
                std::task::Poll::Ready(st.close)
            } else {
                std::task::Poll::Pending
            }
        })
        .await
    }

    /// Releases `charged` bytes (see [`cost`]) of frames the writer has
    /// handed to the socket, and wakes bulk senders if there is room.
    pub fn written(&self, charged: usize) {
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(charged);
        if !st.credit.is_empty() && st.bytes <= self.credit_limit() {
            for w in st.credit.drain(..) {
                w.wake();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_with_slow_consumer() {
        let q = Outbound::new(2 * cost(5));
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"1")), Push::Overflow);
        assert_eq!(q.queued_bytes(), 0, "an overflowed queue holds nothing");
        assert_eq!(q.push(Bytes::from_static(b"1")), Push::Closed);
        let mut batch = VecDeque::new();
        assert_eq!(
            q.next_batch(&mut batch).await,
            Some(CloseRequest::Abort(CloseCode::SlowConsumer))
        );
        assert!(batch.is_empty(), "an aborted queue drops what it held");
    }

    #[tokio::test]
    async fn batches_drain_everything_and_budget_is_released() {
        let q = Outbound::new(1000);
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        let mut batch = VecDeque::new();
        assert_eq!(q.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        assert_eq!(q.queued_bytes(), 2 * cost(3));
        q.written(2 * cost(3));
        assert_eq!(q.queued_bytes(), 0);
        q.close(CloseRequest::Graceful(CloseCode::GoingAway));
        q.close(CloseRequest::Graceful(CloseCode::Normal));
        batch.clear();
        assert_eq!(
            q.next_batch(&mut batch).await,
            Some(CloseRequest::Graceful(CloseCode::GoingAway))
        );
    }

    #[test]
    fn tiny_frames_are_charged_for_what_they_hold() {
        // 40-byte events: a budget of 100 of them by bytes alone holds far
        // fewer once each is charged its slot and header.
        let q = Outbound::new(100 * 40);
        let mut queued = 0;
        while q.push(Bytes::from(vec![0u8; 40])) == Push::Queued {
            queued += 1;
        }
        assert_eq!(queued, 100 * 40 / cost(40));
    }

    #[tokio::test]
    async fn credit_waits_for_room_and_fails_once_closed() {
        let q = std::sync::Arc::new(Outbound::new(4 * cost(100)));
        // The first frame always fits, however large.
        q.reserve(10_000).await.unwrap();
        q.push(Bytes::from(vec![0u8; 100]));
        q.push(Bytes::from(vec![0u8; 100]));
        // Two of four slots used: a third does not fit under half.
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.reserve(100).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        let mut batch = VecDeque::new();
        q.next_batch(&mut batch).await;
        q.written(2 * cost(100));
        assert_eq!(waiter.await.unwrap(), Ok(()));

        q.push(Bytes::from(vec![0u8; 100]));
        q.push(Bytes::from(vec![0u8; 100]));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.reserve(100).await })
        };
        tokio::task::yield_now().await;
        q.close(CloseRequest::Abort(CloseCode::SlowConsumer));
        assert_eq!(waiter.await.unwrap(), Err(Closed));
    }
}
