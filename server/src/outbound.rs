//! The per-connection outbound queue, bounded in bytes.
//!
//! Producers (the session, the broker fanning out a publish, presence) push
//! already-encoded frames as shared [`Bytes`]; pushing never blocks and never
//! waits for the socket. The connection's writer task drains everything
//! queued in one go and writes it with a single flush. When a push would take
//! the queue past its byte budget, the queue is marked overflowed: the writer
//! stops, and the session closes with the slow-consumer code. One slow reader
//! therefore costs its own connection, never anyone else's throughput.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use plexus_protocol::CloseCode;
use tokio::sync::Notify;

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
    bytes: usize,
    close: Option<CloseRequest>,
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
        }
    }

    /// Queues a frame unless that would exceed the byte budget.
    pub fn push(&self, frame: Bytes) -> Push {
        let mut st = self.state.lock();
        if st.close.is_some() {
            return Push::Closed;
        }
        if st.bytes + frame.len() > self.max_bytes {
            st.items.clear();
            st.bytes = 0;
            st.close = Some(CloseRequest::Abort(CloseCode::SlowConsumer));
            self.closing.store(true, Ordering::Release);
            drop(st);
            self.writer.wake();
            self.aborted.notify_one();
            return Push::Overflow;
        }
        let was_empty = st.items.is_empty();
        st.bytes += frame.len();
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
                    st.items.clear();
                    st.bytes = 0;
                }
                st.close = Some(req);
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

    /// Whether a close has been requested (cheap; for fan-out to skip).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The close requested, if any.
    pub fn close_request(&self) -> Option<CloseRequest> {
        self.state.lock().close
    }

    /// Bytes queued and not yet handed to the socket.
    pub fn queued_bytes(&self) -> usize {
        self.state.lock().bytes
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

    /// Releases budget for `bytes` that the writer has handed to the socket.
    pub fn written(&self, bytes: usize) {
        let mut st = self.state.lock();
        st.bytes = st.bytes.saturating_sub(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn overflow_closes_with_slow_consumer() {
        let q = Outbound::new(10);
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"12345")), Push::Queued);
        assert_eq!(q.push(Bytes::from_static(b"1")), Push::Overflow);
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
        let q = Outbound::new(10);
        q.push(Bytes::from_static(b"abc"));
        q.push(Bytes::from_static(b"def"));
        let mut batch = VecDeque::new();
        assert_eq!(q.next_batch(&mut batch).await, None);
        assert_eq!(batch.len(), 2);
        assert_eq!(q.queued_bytes(), 6);
        q.written(6);
        assert_eq!(q.queued_bytes(), 0);
        q.close(CloseRequest::Graceful(CloseCode::GoingAway));
        q.close(CloseRequest::Graceful(CloseCode::Normal));
        batch.clear();
        assert_eq!(
            q.next_batch(&mut batch).await,
            Some(CloseRequest::Graceful(CloseCode::GoingAway))
        );
    }
}
