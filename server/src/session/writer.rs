//! The writer task: owns the socket's sending half, drains the outbound
//! queue in batches and flushes once per batch.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt};
use plexus_protocol::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;

use crate::conn::Conn;
use crate::metrics::Metrics;
use crate::outbound::{BATCH_KEEP, CloseRequest, OutItem, cost};

/// How long the writer tries to deliver a close frame.
pub const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(2);

/// How long the writer tries to deliver the close frame to a slow consumer,
/// whose socket is full: long enough for a reader that resumes to learn why
/// it was cut off. Only the close frame is held, never the dropped queue.
pub const ABORT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// How the writer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriterEnd {
    /// It closed with this code (graceful or abort).
    Closed(CloseCode),
    /// The socket failed.
    SocketError,
}

/// A WebSocket close frame for a plexus close code.
pub fn close_message(code: CloseCode) -> Message {
    Message::Close(Some(CloseFrame {
        code: WsCloseCode::from(code.as_u16()),
        reason: code.name().into(),
    }))
}

/// Runs until the queue asks to close or the socket fails.
pub async fn run<S>(mut sink: S, conn: Arc<Conn>, metrics: Metrics) -> WriterEnd
where
    S: Sink<Message> + Unpin,
{
    let mut batch = VecDeque::new();
    loop {
        let close = conn.out.next_batch(&mut batch).await;
        let write = async {
            let mut frames = 0u64;
            let mut bytes = 0usize;
            let mut charged = 0usize;
            for item in batch.drain(..) {
                let msg = match item {
                    OutItem::Frame(b) => {
                        frames += 1;
                        bytes += b.len();
                        charged += cost(b.len());
                        Message::Binary(b)
                    }
                    OutItem::Ping(p) => Message::Ping(p),
                };
                sink.feed(msg).await.map_err(|_| ())?;
            }
            sink.flush().await.map_err(|_| ())?;
            Ok::<_, ()>((frames, bytes, charged))
        };
        let written = tokio::select! {
            r = write => r,
            () = conn.out.aborted() => {
                batch.clear();
                Ok((0, 0, 0))
            }
        };
        // A burst must not pin its peak number of slots.
        if batch.capacity() > BATCH_KEEP {
            batch = VecDeque::new();
        }
        match written {
            Ok((frames, bytes, charged)) => {
                conn.out.written(charged);
                metrics.frames_out.increment(frames);
                metrics.bytes_out.increment(bytes as u64);
            }
            Err(()) => return WriterEnd::SocketError,
        }
        // A close requested after this batch was taken is seen on the next
        // turn, together with whatever was queued before it.
        if let Some(req) = close {
            let code = match req {
                CloseRequest::Graceful(c) | CloseRequest::Abort(c) => c,
            };
            if req == CloseRequest::Abort(CloseCode::SlowConsumer) {
                metrics.slow_consumer_closes.increment(1);
                metrics.close(CloseCode::SlowConsumer);
            }
            let wait = match req {
                CloseRequest::Abort(CloseCode::SlowConsumer) => ABORT_CLOSE_TIMEOUT,
                _ => CLOSE_FRAME_TIMEOUT,
            };
            let _ = tokio::time::timeout(wait, sink.send(close_message(code))).await;
            return WriterEnd::Closed(code);
        }
    }
}
