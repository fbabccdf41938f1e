//! Live changes of a space as a [`Stream`]: one task runs `sync.pull` with
//! `live`, resumes it from the last change handed over after every
//! reconnect, and hands events over through a bounded channel.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::{Stream, StreamExt};
use plexus_protocol::methods::sync::{Checksum, SyncRecord};
use tokio::sync::mpsc;

use super::state::{FinalStep, PullState, is_pull_retryable};
use super::{PullItem, SYNC_RETRY_LIMIT, Space, SyncCursor, decode_pull_item, wait_connected};
use crate::error::Error;

/// Events buffered between the live task and a slow [`LiveChanges`]
/// consumer; while it is full the task stops reading (the client's
/// stream buffer then fills, and the pull is resumed from the cursor).
pub const LIVE_BUFFER: usize = 64;

/// What a [`LiveChanges`] stream yields.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LiveEvent {
    /// The next records (catch-up or a live commit), in position order,
    /// never twice; `cursor` is where the replica stands after them.
    Changes {
        /// The records (tombstones have `deleted`).
        records: Vec<SyncRecord>,
        /// The cursor after them.
        cursor: SyncCursor,
    },
    /// The catch-up is done: what follows is live.
    CaughtUp {
        /// The cursor after the catch-up.
        cursor: SyncCursor,
        /// The hub's checksums of the collections at `cursor`.
        checksums: Vec<Checksum>,
    },
    /// The cursor was too old or of another epoch: drop every record, a
    /// snapshot follows.
    Reset,
    /// The stream ended (a final error, or too many failed resumes).
    Ended(Error),
}

/// The live changes of a space, from [`Space::live`]. Dropping it stops
/// the pull.
#[derive(Debug)]
pub struct LiveChanges {
    rx: mpsc::Receiver<LiveEvent>,
    cursor: SyncCursor,
}

impl LiveChanges {
    /// Where the consumer stands: after the last event taken.
    pub fn cursor(&self) -> &SyncCursor {
        &self.cursor
    }
}

impl Stream for LiveChanges {
    type Item = LiveEvent;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<LiveEvent>> {
        let item = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(
            LiveEvent::Changes { cursor, .. } | LiveEvent::CaughtUp { cursor, .. },
        )) = &item
        {
            self.cursor = cursor.clone();
        }
        item
    }
}

pub(super) fn start(space: Space, cursor: SyncCursor, collection: Option<String>) -> LiveChanges {
    let (tx, rx) = mpsc::channel(LIVE_BUFFER);
    let start = cursor.clone();
    tokio::spawn(async move {
        if let Err(e) = run(&space, start, collection.as_deref(), &tx).await {
            let _ = tx.send(LiveEvent::Ended(e)).await;
        }
    });
    LiveChanges { rx, cursor }
}

/// Runs until the consumer is gone (`Ok`) or a final error.
async fn run(
    space: &Space,
    cursor: SyncCursor,
    collection: Option<&str>,
    tx: &mpsc::Sender<LiveEvent>,
) -> Result<(), Error> {
    let client = &space.inner.client;
    let mut state = client.state();
    let mut pull = PullState::new(cursor);
    let mut failures = 0u32;
    loop {
        pull.begin();
        let params = space.pull_params(&pull.cursor, collection, true);
        let outcome: Result<Option<()>, Error> = async {
            let mut chunks = client.call_stream("sync.pull", &params).await?;
            while let Some(item) = chunks.next().await {
                match decode_pull_item(&item?)? {
                    PullItem::Chunk(c) => {
                        let to = c.cursor;
                        let records = pull.fresh(c);
                        if !records.is_empty() {
                            let mut after = pull.cursor.clone();
                            after.position = after.position.max(to);
                            let event = LiveEvent::Changes {
                                records,
                                cursor: after,
                            };
                            if tx.send(event).await.is_err() {
                                return Ok(None);
                            }
                        }
                        pull.delivered(to);
                        failures = 0;
                    }
                    PullItem::Final(f) => match pull.on_final(&f) {
                        FinalStep::Reset => {
                            if tx.send(LiveEvent::Reset).await.is_err() {
                                return Ok(None);
                            }
                            return Ok(Some(()));
                        }
                        FinalStep::Done => {
                            let event = LiveEvent::CaughtUp {
                                cursor: pull.cursor.clone(),
                                checksums: f.checksums,
                            };
                            if tx.send(event).await.is_err() {
                                return Ok(None);
                            }
                        }
                    },
                }
            }
            Err(Error::BrokenStream("the live pull ended"))
        }
        .await;
        match outcome {
            Ok(None) => return Ok(()),
            // A reset: pull the snapshot.
            Ok(Some(())) => {}
            Err(e) if is_pull_retryable(&e) && failures < SYNC_RETRY_LIMIT => {
                failures += 1;
                tokio::select! {
                    r = wait_connected(&mut state) => r?,
                    () = tx.closed() => return Ok(()),
                }
            }
            Err(e) => return Err(e),
        }
    }
}
