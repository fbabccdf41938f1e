//! Record sync (issue 11) on the application side: a [`Space`] handle
//! that pushes batches of changes applied once, pulls changes through a
//! callback, and follows live changes as a [`Stream`].
//!
//! The rules (which failures are resent, where a pull's cursor may move)
//! are pure and live in `state`; the client HLC in `hlc`; this module is
//! the glue to a [`Client`]. `docs/sdk.md` §17 describes the guarantees.

mod hlc;
mod live;
#[cfg(feature = "local-replica")]
mod replica;
mod state;

use std::sync::{Arc, Mutex};

use plexus_protocol::ErrorCode;
use plexus_protocol::RawValue;
use plexus_protocol::methods::sync::{
    Checksum, SyncChunk, SyncConflicts, SyncInfoResult, SyncOp, SyncPullFinal, SyncPullParams,
    SyncPushParams, SyncPushResult, SyncRecord, Usage,
};
use tokio::sync::watch;

pub use hlc::ClientHlc;
pub use live::{LIVE_BUFFER, LiveChanges, LiveEvent};
#[cfg(feature = "local-replica")]
pub use replica::{LocalRecord, REPLICA_PUSH_BATCH, Replica, SyncReport};

use crate::client::Client;
use crate::deliver::lock;
use crate::error::{Cause, Error};
use crate::state::ConnectionState;
use state::{FinalStep, PullState, is_pull_retryable, is_retryable};

/// How many times a push or pull is sent again after a retryable failure
/// (connection lost, timeout, `unavailable`) before its error is returned.
/// Each attempt first waits for the connection.
pub const SYNC_RETRY_LIMIT: u32 = 16;

/// What a [`Space::pull`] callback returns when it fails.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where a replica stands in a space: the space's epoch and the last
/// position it has applied (0: nothing yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct SyncCursor {
    /// The epoch the position belongs to (`None` before the first pull).
    pub epoch: Option<String>,
    /// The last position applied.
    pub position: u64,
}

impl SyncCursor {
    /// A cursor after `position` of `epoch`.
    ///
    /// ```
    /// use plexus_client::SyncCursor;
    /// assert_eq!(SyncCursor::new(Some("e1".into()), 7).position, 7);
    /// ```
    pub fn new(epoch: Option<String>, position: u64) -> SyncCursor {
        SyncCursor { epoch, position }
    }
}

/// What a [`Space::pull`] hands to its callback, in order.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub enum PullChange<'a> {
    /// The space's history no longer reaches the cursor (tombstone horizon)
    /// or its epoch changed: drop every record of this space (of this
    /// collection, for a filtered pull); a snapshot follows.
    Reset,
    /// The next records, in position order (tombstones have `deleted`).
    Records(&'a [SyncRecord]),
}

/// The outcome of a [`Space::pull`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PullSummary {
    /// Where the pull ended (also written to the caller's cursor).
    pub cursor: SyncCursor,
    /// Records handed to the callback.
    pub count: u64,
    /// The pull went through a [`PullChange::Reset`].
    pub reset: bool,
    /// The hub's checksums of the collections pulled, at `cursor`.
    pub checksums: Vec<Checksum>,
}

/// Options of [`Space::push_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushOptions {
    /// On a conflict, return the records' current fields too.
    pub return_values: bool,
}

impl PushOptions {
    /// Default options.
    pub fn new() -> PushOptions {
        PushOptions::default()
    }

    /// Asks for the current fields with a conflict.
    pub fn return_values(mut self, on: bool) -> PushOptions {
        self.return_values = on;
        self
    }
}

/// The hub's acknowledgement of a push: applied (or applied before).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PushAck {
    /// The space's position after the push: a pull to this cursor sees it.
    pub position: u64,
    /// The hub's HLC after the push (the space's clock has observed it).
    pub hlc: u64,
    /// The space's usage after the push.
    pub usage: Usage,
    /// It had been applied before (a retry after a lost answer).
    pub duplicate: bool,
    /// The versions of the records it changed.
    pub versions: Vec<(String, String, u64)>,
    /// The mutation sequence number it was sent with.
    pub seq: u64,
    /// How many times it was sent again (after reconnects).
    pub retries: u32,
}

/// The numbering of one client's mutations in one space.
#[derive(Debug)]
struct Numbering {
    next_seq: u64,
}

struct SpaceInner {
    client: Client,
    name: String,
    client_id: String,
    numbering: tokio::sync::Mutex<Numbering>,
    hlc: Mutex<ClientHlc>,
}

/// A record-sync space: push batches of changes, pull changes, follow them
/// live. Cheap to clone; clones share the client id and the numbering.
///
/// Every push carries the client id and the next mutation sequence number
/// (Y7): a push whose answer was lost (connection dropped, timeout,
/// `unavailable`) is sent again with the same number once the client is
/// connected, and the hub applies it once. Pushes of one `Space` go out one
/// at a time, in order, so a later number never overtakes an earlier one.
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
/// use plexus_client::protocol::methods::sync::SyncOp;
/// use plexus_client::{PullChange, SyncCursor};
/// let space = client.space("user.alice.todo");
/// space.push(vec![SyncOp::put("items", "1", b"milk".to_vec())]).await?;
/// let mut cursor = SyncCursor::default();
/// space
///     .pull(&mut cursor, None, |change| {
///         if let PullChange::Records(rs) = change {
///             println!("{} records", rs.len());
///         }
///         Ok(())
///     })
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Space {
    inner: Arc<SpaceInner>,
}

impl std::fmt::Debug for Space {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Space")
            .field("name", &self.inner.name)
            .field("client_id", &self.inner.client_id)
            .finish_non_exhaustive()
    }
}

/// Microseconds since the Unix epoch (at least 1): the first sequence
/// number, so that numbering keeps growing across process restarts.
fn clock_seq() -> u64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros());
    u64::try_from(us).unwrap_or(u64::MAX).clamp(1, 1 << 62)
}

impl Space {
    pub(crate) fn new(client: Client, name: String, client_id: Option<String>) -> Space {
        let client_id = client_id.unwrap_or_else(|| format!("{:016x}", rand::random::<u64>()));
        Space {
            inner: Arc::new(SpaceInner {
                client,
                name,
                client_id,
                numbering: tokio::sync::Mutex::new(Numbering {
                    next_seq: clock_seq(),
                }),
                hlc: Mutex::new(ClientHlc::new()),
            }),
        }
    }

    /// The space's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The client (replica) id its pushes carry: the actor of their stamps.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// A timestamp from this space's HLC for a change made now (for
    /// [`SyncOp::with_hlc`] on changes made offline).
    pub fn now(&self) -> u64 {
        lock(&self.inner.hlc).now(hlc::wall_ms())
    }

    /// Moves this space's HLC past `remote`.
    pub(crate) fn observe(&self, remote: u64) {
        lock(&self.inner.hlc).observe(remote);
    }

    /// Pushes `ops` (all or nothing) with default options. See
    /// [`push_with`](Self::push_with).
    pub async fn push(&self, ops: Vec<SyncOp>) -> Result<PushAck, Error> {
        self.push_with(ops, PushOptions::new()).await
    }

    /// Pushes `ops`: applied all or nothing, once, however often it has to
    /// be sent again.
    ///
    /// Errors: [`Error::SyncConflict`] when an `expected_version` does not
    /// match (nothing applied, the current records listed);
    /// [`Error::Remote`] with `quota_exceeded`, `clock_skew`, `forbidden`,
    /// `invalid_params`, `payload_too_large`; the last retryable error after
    /// [`SYNC_RETRY_LIMIT`] attempts; [`Error::Closed`].
    pub async fn push_with(
        &self,
        ops: Vec<SyncOp>,
        options: PushOptions,
    ) -> Result<PushAck, Error> {
        // One push of this space at a time, in seq order (Y7).
        let mut numbering = self.inner.numbering.lock().await;
        let client = &self.inner.client;
        let mut state = client.state();
        let mut params = SyncPushParams::new(
            self.inner.name.clone(),
            self.inner.client_id.clone(),
            0,
            self.now(),
            ops,
        );
        if options.return_values {
            params = params.with_return_values(true);
        }
        let mut renumbered = false;
        loop {
            params.seq = numbering.next_seq;
            numbering.next_seq += 1;
            let (result, retries) = send_with_retry(&mut state, || async {
                let raw = client.call("sync.push", &params).await?;
                raw.decode::<SyncPushResult>()
                    .map_err(|e| Error::decode("decode the sync.push result", e))
            })
            .await;
            let r = result.map_err(push_error)?;
            self.observe(r.hlc);
            if renumber(&r, retries, renumbered) {
                // A duplicate on the first send: another handle or process
                // with this client id used this number (nothing was
                // applied). Jump past it by the clock and send once more.
                numbering.next_seq = numbering.next_seq.max(clock_seq());
                renumbered = true;
                continue;
            }
            return Ok(PushAck {
                position: r.position,
                hlc: r.hlc,
                usage: r.usage,
                duplicate: r.duplicate,
                versions: r
                    .versions
                    .into_iter()
                    .map(|v| (v.collection, v.id, v.version))
                    .collect(),
                seq: params.seq,
                retries,
            });
        }
    }

    /// Pulls the changes after `cursor` (of `collection` only, if given)
    /// and hands them to `apply` in position order; `cursor` moves only
    /// past what `apply` accepted.
    ///
    /// The chunks stream with the client's bounded
    /// [`stream_buffer`](crate::ClientBuilder::stream_buffer): a callback
    /// slower than the hub breaks the stream, and the pull resumes from the
    /// cursor (as after a lost connection, up to [`SYNC_RETRY_LIMIT`]
    /// times), never handing a record over twice. From cursor 0 (a
    /// snapshot) the cursor moves after every chunk; from a later cursor it
    /// moves with the final chunk (so a pull that turns out to be a reset
    /// is never resumed half-way). On a reset, `apply` gets
    /// [`PullChange::Reset`] and then the whole snapshot.
    ///
    /// A filtered pull's cursor is that collection's: keep one cursor per
    /// filter.
    ///
    /// Errors: [`Error::Apply`] when `apply` fails (the cursor stays after
    /// the last accepted chunk), [`Error::Remote`] (`forbidden`,
    /// `invalid_params`), the last retryable error, [`Error::Closed`].
    pub async fn pull<F>(
        &self,
        cursor: &mut SyncCursor,
        collection: Option<&str>,
        mut apply: F,
    ) -> Result<PullSummary, Error>
    where
        F: FnMut(PullChange<'_>) -> Result<(), BoxError>,
    {
        use futures_util::StreamExt;
        let client = &self.inner.client;
        let mut state = client.state();
        let mut pull = PullState::new(cursor.clone());
        let mut count = 0u64;
        let mut reset = false;
        let mut attempts = 0u32;
        loop {
            pull.begin();
            let params = self.pull_params(&pull.cursor, collection, false);
            let outcome: Result<SyncPullFinal, Error> = async {
                let mut chunks = client.call_stream("sync.pull", &params).await?;
                while let Some(item) = chunks.next().await {
                    match decode_pull_item(&item?)? {
                        PullItem::Chunk(c) => {
                            let to = c.cursor;
                            let records = pull.fresh(c);
                            if !records.is_empty() {
                                apply(PullChange::Records(&records))
                                    .map_err(|e| Error::Apply(Cause::from(e)))?;
                                count += records.len() as u64;
                            }
                            pull.delivered(to);
                            *cursor = pull.cursor.clone();
                        }
                        PullItem::Final(f) => return Ok(f),
                    }
                }
                Err(Error::BrokenStream(
                    "the pull ended without its final chunk",
                ))
            }
            .await;
            match outcome {
                Ok(f) => match pull.on_final(&f) {
                    FinalStep::Reset => {
                        apply(PullChange::Reset).map_err(|e| Error::Apply(Cause::from(e)))?;
                        reset = true;
                        *cursor = pull.cursor.clone();
                    }
                    FinalStep::Done => {
                        *cursor = pull.cursor.clone();
                        return Ok(PullSummary {
                            cursor: cursor.clone(),
                            count,
                            reset,
                            checksums: f.checksums,
                        });
                    }
                },
                Err(e) if is_pull_retryable(&e) && attempts < SYNC_RETRY_LIMIT => {
                    attempts += 1;
                    wait_connected(&mut state).await?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Follows the space's changes after `cursor` (of `collection` only, if
    /// given) as a [`LiveChanges`] stream: the catch-up first, then
    /// [`LiveEvent::CaughtUp`], then each committed change; resumed from
    /// the last change handed over after every reconnect. Dropping it
    /// cancels the pull.
    pub fn live(&self, cursor: SyncCursor, collection: Option<&str>) -> LiveChanges {
        live::start(self.clone(), cursor, collection.map(str::to_owned))
    }

    /// The space's collections, usage, quota and positions.
    pub async fn info(&self) -> Result<SyncInfoResult, Error> {
        let raw = self
            .inner
            .client
            .call(
                "sync.info",
                &plexus_protocol::methods::sync::SyncInfoParams::new(self.inner.name.clone()),
            )
            .await?;
        raw.decode()
            .map_err(|e| Error::decode("decode the sync.info result", e))
    }

    fn pull_params(
        &self,
        cursor: &SyncCursor,
        collection: Option<&str>,
        live: bool,
    ) -> SyncPullParams {
        let mut p = SyncPullParams::new(self.inner.name.clone());
        if cursor.position > 0 || cursor.epoch.is_some() {
            p.cursor = Some(cursor.position);
            p.epoch = cursor.epoch.clone();
        }
        if let Some(c) = collection {
            p = p.with_collection(c);
        }
        if live {
            p = p.with_live(false);
        }
        p
    }
}

impl Client {
    /// A handle on the record-sync space `name` with a random client id
    /// (see [`Client::space_as`] for one kept across restarts).
    pub fn space(&self, name: impl Into<String>) -> Space {
        Space::new(self.clone(), name.into(), None)
    }

    /// A handle on `name` whose pushes carry `client_id` (1–64 bytes): the
    /// replica's identity, stable across process restarts. Sequence
    /// numbers start at the current time in microseconds, so they keep
    /// growing across restarts as long as the clock does not step back and
    /// no two live processes share the id.
    pub fn space_as(&self, name: impl Into<String>, client_id: impl Into<String>) -> Space {
        Space::new(self.clone(), name.into(), Some(client_id.into()))
    }
}

/// A chunk of a pull: a change chunk or the final one (told apart by key
/// 0: an array of records, or the final's cursor).
pub(crate) enum PullItem {
    Chunk(SyncChunk),
    Final(SyncPullFinal),
}

pub(crate) fn decode_pull_item(raw: &RawValue) -> Result<PullItem, Error> {
    if let Ok(c) = raw.decode::<SyncChunk>() {
        return Ok(PullItem::Chunk(c));
    }
    raw.decode::<SyncPullFinal>()
        .map(PullItem::Final)
        .map_err(|e| Error::decode("decode a sync.pull chunk", e))
}

/// Whether a push's answer means its number was taken by someone else: a
/// duplicate although it was sent only once (a resent push may be a
/// duplicate of itself). Renumbered once at most.
fn renumber(r: &SyncPushResult, retries: u32, renumbered: bool) -> bool {
    r.duplicate && retries == 0 && !renumbered
}

/// A push refused with `conflict` and `SyncConflicts` details becomes
/// [`Error::SyncConflict`].
fn push_error(e: Error) -> Error {
    if let Error::Remote(w) = &e
        && w.code == ErrorCode::Conflict
        && let Some(d) = w
            .details
            .as_ref()
            .and_then(|d| d.decode::<SyncConflicts>().ok())
    {
        return Error::SyncConflict { records: d.records };
    }
    e
}

/// Waits until the client is connected; [`Error::Closed`] if it closed.
pub(crate) async fn wait_connected(
    state: &mut watch::Receiver<ConnectionState>,
) -> Result<(), Error> {
    loop {
        match &*state.borrow_and_update() {
            ConnectionState::Connected => return Ok(()),
            ConnectionState::Closed { .. } => return Err(Error::Closed(None)),
            _ => {}
        }
        if state.changed().await.is_err() {
            return Err(Error::Closed(None));
        }
    }
}

/// Runs `send` until it succeeds, fails for good, or has been retried
/// [`SYNC_RETRY_LIMIT`] times, waiting for the connection before each
/// retry. Returns the outcome and the number of retries.
async fn send_with_retry<T, F, Fut>(
    state: &mut watch::Receiver<ConnectionState>,
    mut send: F,
) -> (Result<T, Error>, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Error>>,
{
    let mut retries = 0;
    loop {
        match send().await {
            Err(e) if is_retryable(&e) && retries < SYNC_RETRY_LIMIT => {
                retries += 1;
                if let Err(closed) = wait_connected(state).await {
                    return (Err(closed), retries);
                }
            }
            other => return (other, retries),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use plexus_protocol::WireError;
    use plexus_protocol::methods::sync::SyncConflict;

    #[tokio::test]
    async fn a_lost_push_is_resent_after_the_reconnect_then_given_up() {
        let (tx, mut rx) = watch::channel(ConnectionState::Connected);
        let mut sent = 0;
        let (r, retries) = send_with_retry(&mut rx, || {
            sent += 1;
            let n = sent;
            async move {
                if n < 3 {
                    Err(Error::ConnectionLost)
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!((r.unwrap(), retries), (3, 2));
        // A final error is not resent.
        let (r, retries) = send_with_retry(&mut rx, || async {
            Err::<(), _>(Error::Remote(WireError::new(ErrorCode::Forbidden, "no")))
        })
        .await;
        assert!(matches!(r, Err(Error::Remote(_))));
        assert_eq!(retries, 0);
        // Bounded.
        let (r, retries) =
            send_with_retry(&mut rx, || async { Err::<(), _>(Error::Timeout) }).await;
        assert!(matches!(r, Err(Error::Timeout)));
        assert_eq!(retries, SYNC_RETRY_LIMIT);
        // Closed while waiting.
        tx.send(ConnectionState::Closed {
            code: None,
            reason: "bye".into(),
        })
        .unwrap();
        let (r, _) =
            send_with_retry(&mut rx, || async { Err::<(), _>(Error::ConnectionLost) }).await;
        assert!(matches!(r, Err(Error::Closed(_))));
    }

    #[test]
    fn a_first_send_answered_duplicate_is_renumbered_once() {
        let dup = SyncPushResult::new(1, 1, Usage::default(), true);
        assert!(renumber(&dup, 0, false), "someone else used the number");
        assert!(
            !renumber(&dup, 1, false),
            "a resend: our own push, applied once"
        );
        assert!(!renumber(&dup, 0, true), "once at most");
        let fresh = SyncPushResult::new(1, 1, Usage::default(), false);
        assert!(!renumber(&fresh, 0, false));
    }

    #[test]
    fn conflicts_are_typed_and_chunks_told_apart() {
        let mut w = WireError::new(ErrorCode::Conflict, "version");
        w.details = Some(
            RawValue::encode(&SyncConflicts::new(vec![SyncConflict::new(
                "c", "1", 3, false, None,
            )]))
            .unwrap(),
        );
        match push_error(Error::Remote(w)) {
            Error::SyncConflict { records } => assert_eq!(records[0].version, 3),
            other => panic!("{other:?}"),
        }
        let c = RawValue::encode(&SyncChunk::new(Vec::new(), 4, None)).unwrap();
        assert!(matches!(decode_pull_item(&c).unwrap(), PullItem::Chunk(c) if c.cursor == 4));
        let f = RawValue::encode(&SyncPullFinal::new(4, 0, "E", false, Vec::new(), 0)).unwrap();
        assert!(matches!(decode_pull_item(&f).unwrap(), PullItem::Final(f) if f.epoch == "E"));
        assert!(decode_pull_item(&RawValue::encode(&"x").unwrap()).is_err());
    }
}

/// A real hub on 127.0.0.1:0 and a client of it, for the tests of this
/// module's submodules.
#[cfg(all(test, feature = "local-replica"))]
pub(crate) mod testhub {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use plexus_server::auth::{AuthSettings, Authenticator, HmacAlg, KeySource};
    use plexus_server::{Config, Server};

    const SECRET: &[u8] = b"plexus-sdk-unit-test-secret-not-for-production";

    /// Starts a hub and connects a client allowed every space.
    pub(crate) async fn client() -> (Server, crate::Client) {
        let mut config = Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            ..Config::default()
        };
        // The replica's unit tests need a connection, not the hub's sync.
        config.sync.enabled = false;
        let settings = AuthSettings::new(KeySource::Hmac {
            secret: SECRET.to_vec(),
            alg: HmacAlg::HS256,
        });
        let server = Server::start(config, Authenticator::new(settings).unwrap())
            .await
            .unwrap();
        let exp = super::hlc::wall_ms() / 1000 + 3600;
        let claims = serde_json::json!({
            "sub": "tester", "exp": exp,
            "plexus": { "sub": [">"], "pub": [">"], "sync_read": [">"], "sync_write": [">"] },
        });
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        let client = crate::Client::builder(format!("ws://{}/v1/ws", server.local_addr()))
            .token(token)
            .call_timeout(Duration::from_secs(5))
            .connect()
            .await
            .unwrap();
        (server, client)
    }
}
