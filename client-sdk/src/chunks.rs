//! The chunks of a streamed call, as a [`Stream`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::Stream;
use plexus_protocol::RawValue;
use tokio::sync::mpsc;

use crate::core::Command;
use crate::deliver::{ChunkQueue, Dropped, Reaper};
use crate::error::Error;

/// The chunks of a streamed result, from [`Client::call_stream`](crate::Client::call_stream).
///
/// It yields each chunk's data and then `None` after the final chunk. A
/// failure is one `Err` item and then `None`: [`Error::Remote`] for an
/// error response, [`Error::BrokenStream`] for a gap in sequence numbers,
/// [`Error::ConnectionLost`] when the connection drops. Dropping it before
/// the end sends `cancel`.
///
/// If the consumer falls a whole [`stream_buffer`](crate::ClientBuilder::stream_buffer)
/// behind, the stream ends with [`Error::BrokenStream`] after the chunks
/// already buffered, and the SDK sends `cancel`: an error is never lost to
/// a full buffer.
pub struct ChunkStream {
    pub(crate) id: u64,
    pub(crate) queue: Arc<ChunkQueue>,
    pub(crate) reaper: Arc<Reaper>,
    /// Keeps the connection alive while the stream exists.
    pub(crate) _cmd: mpsc::Sender<Command>,
    pub(crate) done: bool,
}

impl std::fmt::Debug for ChunkStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkStream")
            .field("id", &self.id)
            .field("done", &self.done)
            .finish()
    }
}

impl Stream for ChunkStream {
    type Item = Result<RawValue, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let item = self.queue.poll_next(cx);
        if matches!(item, Poll::Ready(None | Some(Err(_)))) {
            self.done = true;
        }
        item
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        if !self.done && !self.queue.ended() {
            self.queue.abandon();
            self.reaper.push(Dropped::Call(self.id));
        }
    }
}
