//! The per-connection outbound queue, bounded in the memory it holds, and
//! the connection's mailbox for other tasks (close requests, commands).
//!
//! Producers (the session, the broker fanning out a publish, presence) push
//! already-encoded frames as shared [`Bytes`]; pushing never blocks and never
//! waits for the socket. The connection's driver drains everything queued
//! in one go and writes it with a single flush. When a push would take the
//! queue past its budget, the queue overflows: its memory is released at
//! once, further pushes are refused, and the driver closes with the
//! slow-consumer code. One slow reader therefore costs its own connection,
//! never anyone else's throughput.
//!
//! The budget counts what a queued frame really holds (decision H3): its
//! allocation (the protocol crate encodes frames at their exact size) plus
//! [`ITEM_OVERHEAD`] for its queue slot and shared-buffer header, so a
//! flood of tiny frames is bounded as tightly as a few large ones.
//!
//! Bulk senders (streamed replies) do not push blindly: they wait for
//! credit with [`Outbound::reserve`], which resolves once the queue holds
//! less than half its budget, so a download slows down to the reader's
//! pace instead of tripping the slow-consumer close. Fan-out keeps
//! push-or-close.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use plexus_protocol::CloseCode;

use crate::conn::Command;

/// What the budget charges per queued frame beyond its bytes: the queue
/// slot (a `Bytes` handle, with the queue's growth slack) and the shared
/// header a cloned buffer carries.
pub const ITEM_OVERHEAD: usize = 64;

/// Queue slots a drained batch keeps allocated; past this the driver drops
/// its batch buffer, so a burst does not pin its peak slot count.
pub const BATCH_KEEP: usize = 64;

/// Most commands queued for a connection's session at once: routed-RPC
/// invocations of a callee arrive here, so it is the `[rpc]
/// max-concurrency` cap plus room for withdrawals.
pub const MAX_COMMANDS: usize = 1024 + 256;

/// What the budget charges for a frame of `len` bytes.
pub const fn cost(len: usize) -> usize {
    len + ITEM_OVERHEAD
}

/// The queue was closed while waiting for credit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the connection is closing")]
pub struct Closed;

/// Result of a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// Queued for the driver.
    Queued,
    /// The push would exceed the budget: the queue is now closed and the
    /// connection will be closed with [`CloseCode::SlowConsumer`].
    Overflow,
    /// The queue is already closing; the frame was dropped.
    Closed,
}

/// A close asked for by another task (shutdown, a replacing connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    /// The close code.
    pub code: CloseCode,
    /// The reason for the `closing` notification.
    pub reason: Cow<'static, str>,
    /// The retry hint for the `closing` notification.
    pub retry_after_ms: Option<u64>,
}

/// What other tasks left for the driver; see [`Outbound::take_attention`].
#[derive(Debug, Default)]
pub struct Attention {
    /// The queue overflowed: close as a slow consumer.
    pub overflowed: bool,
    /// A close was asked for.
    pub close: Option<CloseRequest>,
    /// Commands to run.
    pub commands: VecDeque<Command>,
}

/// Flag: no more pushes are accepted.
const CLOSED: u8 = 1;
/// Flag: something for the driver to look at under the lock.
const ATTENTION: u8 = 2;

#[derive(Debug, Default)]
struct State {
    items: VecDeque<Bytes>,
    /// Charged bytes (see [`cost`]) of the items queued and of the batch
    /// the driver is writing.
    bytes: usize,
    closed: bool,
    overflowed: bool,
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
    }

    fn wake_credit(&mut self) {
        for w in self.credit.drain(..) {
            w.wake();
        }
    }
}

/// A bounded, non-blocking, multi-producer queue drained by one driver.
#[derive(Debug)]
pub struct Outbound {
    state: Mutex<State>,
    /// The driver's waker: lighter than a `Notify` on the fan-out path,
    /// where every publish wakes every idle subscriber.
    driver: AtomicWaker,
    max_bytes: usize,
    flags: AtomicU8,
}

impl Outbound {
    /// A queue that holds at most `max_bytes` (charged, see [`cost`]).
    pub fn new(max_bytes: usize) -> Outbound {
        Outbound {
            state: Mutex::new(State::default()),
            driver: AtomicWaker::new(),
            max_bytes,
            flags: AtomicU8::new(0),
        }
    }

    /// Queues a frame unless that would exceed the budget.
    pub fn push(&self, frame: Bytes) -> Push {
        let cost = cost(frame.len());
        let mut st = self.state.lock();
        if st.closed {
            return Push::Closed;
        }
        if st.bytes + cost > self.max_bytes {
            st.discard();
            st.closed = true;
            st.overflowed = true;
            st.wake_credit();
            drop(st);
            self.flags.fetch_or(CLOSED | ATTENTION, Ordering::Release);
            self.driver.wake();
            return Push::Overflow;
        }
        let was_empty = st.items.is_empty();
        st.bytes += cost;
        st.items.push_back(frame);
        drop(st);
        if was_empty {
            self.driver.wake();
        }
        Push::Queued
    }

    /// Asks the driver to close with `req` (the first request wins; the
    /// driver may already be closing for its own reasons).
    pub fn request_close(&self, req: CloseRequest) {
        let mut st = self.state.lock();
        if st.closed || st.close.is_some() {
            return;
        }
        st.close = Some(req);
        drop(st);
        self.flags.fetch_or(ATTENTION, Ordering::Release);
        self.driver.wake();
    }

    /// Queues a command for the session and wakes it; gives the command
    /// back if the connection is closing or [`MAX_COMMANDS`] are queued.
    pub fn command(&self, c: Command) -> Result<(), Command> {
        let mut st = self.state.lock();
        if st.closed || st.commands.len() >= MAX_COMMANDS {
            return Err(c);
        }
        st.commands.push_back(c);
        drop(st);
        self.flags.fetch_or(ATTENTION, Ordering::Release);
        self.driver.wake();
        Ok(())
    }

    /// Queues news of a routed call for its caller's session
    /// ([`Command::Routed`]) and wakes it; gives it back only if the
    /// connection is closing. Not counted against [`MAX_COMMANDS`]: such
    /// news is bounded by construction — per call of the caller's in
    /// flight (`max-in-flight`), one assignment, at most the call's chunk
    /// window of chunks (the callee's session enforces the credit) and one
    /// end (decision R14).
    pub fn routed(&self, c: Command) -> Result<(), Command> {
        let mut st = self.state.lock();
        if st.closed {
            return Err(c);
        }
        st.commands.push_back(c);
        drop(st);
        self.flags.fetch_or(ATTENTION, Ordering::Release);
        self.driver.wake();
        Ok(())
    }

    /// Registers the driver's waker; call it before looking at the queue.
    pub fn register(&self, waker: &Waker) {
        self.driver.register(waker);
    }

    /// Wakes the driver (for wakers that forward to it).
    pub fn wake_driver(&self) {
        self.driver.wake();
    }

    /// Whether other tasks left something for the driver (one atomic load).
    pub fn has_attention(&self) -> bool {
        self.flags.load(Ordering::Acquire) & ATTENTION != 0
    }

    /// What other tasks left for the driver, if anything (one atomic load
    /// when there is nothing).
    pub fn take_attention(&self) -> Option<Attention> {
        if self.flags.load(Ordering::Acquire) & ATTENTION == 0 {
            return None;
        }
        self.flags.fetch_and(!ATTENTION, Ordering::AcqRel);
        let mut st = self.state.lock();
        Some(Attention {
            overflowed: std::mem::take(&mut st.overflowed),
            close: st.close.take(),
            commands: std::mem::take(&mut st.commands),
        })
    }

    /// The driver closes the queue: `last` (the `closing` notification) is
    /// queued after everything already queued, outside the budget, and no
    /// more pushes are accepted. Bulk senders waiting for credit fail.
    pub fn close(&self, last: Option<Bytes>) {
        let mut st = self.state.lock();
        if !st.closed {
            if let Some(f) = last {
                st.bytes += cost(f.len());
                st.items.push_back(f);
            }
            st.closed = true;
        }
        st.wake_credit();
        drop(st);
        self.flags.fetch_or(CLOSED, Ordering::Release);
    }

    /// Drops everything queued (a slow consumer: only the Close frame is
    /// still sent) and closes the queue.
    pub fn abort(&self) {
        let mut st = self.state.lock();
        st.discard();
        st.closed = true;
        st.wake_credit();
        drop(st);
        self.flags.fetch_or(CLOSED, Ordering::Release);
    }

    /// Whether the queue is closed (cheap; for fan-out to skip).
    pub fn is_closing(&self) -> bool {
        self.flags.load(Ordering::Acquire) & CLOSED != 0
    }

    /// Moves everything queued into `batch` (which must be empty); returns
    /// whether there was anything.
    pub fn take_batch(&self, batch: &mut VecDeque<Bytes>) -> bool {
        let mut st = self.state.lock();
        if st.items.is_empty() {
            return false;
        }
        std::mem::swap(&mut st.items, batch);
        true
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.state.lock().items.is_empty()
    }

    /// Releases `charged` bytes (see [`cost`]) of frames the driver has
    /// handed to the socket, and wakes bulk senders if there is room.
    pub fn written(&self, charged: usize) {
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(charged);
        if !st.credit.is_empty() && st.bytes <= self.credit_limit() {
            st.wake_credit();
        }
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

    /// Whether a frame of `len` bytes fits under
    /// [`credit_limit`](Outbound::credit_limit) now (as
    /// [`reserve`](Outbound::reserve) would find, without waiting); false
    /// once closed.
    pub fn has_room(&self, len: usize) -> bool {
        let st = self.state.lock();
        !st.closed && (st.bytes == 0 || st.bytes + cost(len) <= self.credit_limit())
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
        if st.closed {
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn drain(q: &Outbound) -> usize {
        let mut batch = VecDeque::new();
        q.take_batch(&mut batch);
        let charged = batch.iter().map(|b| cost(b.len())).sum();
        q.written(charged);
        batch.len()
    }

    #[test]
    fn overflow_releases_the_queue_and_asks_for_attention() {
        let q = Outbound::new(2 * cost(5));
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert!(q.take_attention().is_none());
        assert_eq!(q.push(Bytes::from_static(b"1")), Push::Overflow);
        assert_eq!(q.queued_bytes(), 0, "an overflowed queue holds nothing");
        assert!(q.is_empty());
        assert!(q.is_closing());
        assert_eq!(q.push(Bytes::from_static(b"1")), Push::Closed);
        assert!(q.take_attention().unwrap().overflowed);
        assert!(q.take_attention().is_none());
    }

    #[test]
    fn batches_drain_everything_and_budget_is_released() {
        let q = Outbound::new(1000);
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        assert_eq!(q.queued_bytes(), 2 * cost(3));
        assert_eq!(drain(&q), 2);
        assert_eq!(q.queued_bytes(), 0);
        assert_eq!(drain(&q), 0);
    }

    #[test]
    fn close_queues_the_last_frame_after_the_others_and_refuses_more() {
        let q = Outbound::new(1000);
        q.push(Bytes::from_static(b"a"));
        q.request_close(CloseRequest {
            code: CloseCode::GoingAway,
            reason: "bye".into(),
            retry_after_ms: None,
        });
        q.request_close(CloseRequest {
            code: CloseCode::SessionReplaced,
            reason: "x".into(),
            retry_after_ms: None,
        });
        let a = q.take_attention().unwrap();
        assert_eq!(
            a.close.unwrap().code,
            CloseCode::GoingAway,
            "the first wins"
        );
        q.close(Some(Bytes::from_static(b"closing")));
        assert_eq!(q.push(Bytes::from_static(b"b")), Push::Closed);
        let mut batch = VecDeque::new();
        q.take_batch(&mut batch);
        assert_eq!(batch, [&b"a"[..], &b"closing"[..]]);
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

    #[test]
    fn commands_are_bounded_and_refused_once_closed() {
        let q = Outbound::new(1000);
        let call = || {
            let (reply, _) = tokio::sync::oneshot::channel();
            Command::Call {
                method: "m".into(),
                params: plexus_protocol::RawValue::null(),
                timeout: std::time::Duration::from_secs(1),
                reply,
            }
        };
        for _ in 0..MAX_COMMANDS {
            assert!(q.command(call()).is_ok());
        }
        assert!(q.command(call()).is_err());
        assert_eq!(q.take_attention().unwrap().commands.len(), MAX_COMMANDS);
        q.abort();
        assert!(q.command(call()).is_err());
    }

    #[tokio::test]
    async fn credit_waits_for_room_and_fails_once_closed() {
        let q = Arc::new(Outbound::new(4 * cost(100)));
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
        drain(&q);
        assert_eq!(waiter.await.unwrap(), Ok(()));

        q.push(Bytes::from(vec![0u8; 100]));
        q.push(Bytes::from(vec![0u8; 100]));
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move { q.reserve(100).await })
        };
        tokio::task::yield_now().await;
        q.abort();
        assert_eq!(waiter.await.unwrap(), Err(Closed));
    }
}
