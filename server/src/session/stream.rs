//! Streamed replies: a handler sends chunk frames through a [`ChunkSink`],
//! which waits for outbound credit, so a bulk sender slows to the reader's
//! pace instead of tripping the slow-consumer close.
//!
//! The chunks `[3, id, seq, false, data]` are queued straight on the
//! connection's outbound queue as they are produced; the final chunk is the
//! handler's return value, framed by the session core after the last one
//! (or an error response, §7.2, if the handler fails part way).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use plexus_protocol::frame::encode_chunk;

use super::error::RequestError;
use crate::conn::Conn;
use crate::outbound::Push;

/// Where a streamed handler sends its chunks.
#[derive(Debug)]
pub struct ChunkSink {
    conn: Arc<Conn>,
    id: u64,
    seq: Arc<AtomicU64>,
    max_frame_size: usize,
}

impl ChunkSink {
    /// A sink for request `id` on `conn`; `seq` counts the chunks sent (the
    /// final chunk's sequence number once the handler returns).
    pub fn new(conn: Arc<Conn>, id: u64, seq: Arc<AtomicU64>, max_frame_size: usize) -> Self {
        ChunkSink {
            conn,
            id,
            seq,
            max_frame_size,
        }
    }

    /// The request the chunks answer.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// Chunks sent so far.
    pub fn sent(&self) -> u64 {
        self.seq.load(Ordering::Relaxed)
    }

    /// Sends one non-final chunk with `data`, waiting for credit first.
    ///
    /// Fails with [`RequestError::Internal`] if the chunk would exceed the
    /// announced `max_frame_size` (it is not sent), and with
    /// [`RequestError::Cancelled`] once the connection is closing.
    pub async fn send<T: minicbor::Encode<()>>(&mut self, data: &T) -> Result<(), RequestError> {
        let seq = self.sent();
        let frame = encode_chunk(self.id, seq, false, data)
            .map_err(|_| RequestError::internal("cannot encode a chunk"))?;
        if frame.len() > self.max_frame_size {
            return Err(RequestError::internal("chunk exceeds max_frame_size"));
        }
        self.conn
            .out
            .reserve(frame.len())
            .await
            .map_err(|_| RequestError::Cancelled)?;
        match self.conn.out.push(Bytes::from(frame)) {
            Push::Queued => {
                self.seq.store(seq + 1, Ordering::Relaxed);
                Ok(())
            }
            Push::Overflow | Push::Closed => Err(RequestError::Cancelled),
        }
    }
}
