//! The client handle: calls, subscriptions, presence and served methods.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{FutureExt, Stream, StreamExt};
use minicbor::Encode;
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{
    Member, PresenceGet, PresenceGetParams, PresenceGetResult, PresenceSet, PresenceSetParams,
    Publish, PublishParams, PublishResult,
};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use plexus_protocol::{ErrorCode, RawValue, RpcMethod, WireError};
use tokio::sync::{mpsc, watch};

use crate::builder::ClientBuilder;
use crate::chunks::ChunkStream;
use crate::config::Settings;
use crate::core::{Command, Handler, Pending};
use crate::deliver::{ChunkQueue, Dropped, Reaper, ReplyRx, reply};
use crate::durable::{
    DurableQueue, DurableSubscription, PublishAck, PublishOptions, StartAt, StreamPosition,
};
use crate::error::Error;
use crate::state::ConnectionState;
use crate::subscription::{SubQueue, Subscription};

/// Most pages [`Client::presence_get`] fetches (each page makes progress,
/// so the loop ends; the cap guards against a faulty hub).
const MAX_PRESENCE_PAGES: usize = 100_000;

pub(crate) struct Inner {
    pub(crate) settings: Arc<Settings>,
    pub(crate) cmd: mpsc::Sender<Command>,
    pub(crate) ids: Arc<AtomicU64>,
    pub(crate) locals: AtomicU64,
    pub(crate) state: watch::Receiver<ConnectionState>,
    pub(crate) reaper: Arc<Reaper>,
}

/// A connection to a Plexus hub. Cheap to clone; all clones share one
/// connection. The connection closes when [`Client::close`] is called, or
/// when the last clone and every [`Subscription`], [`ChunkStream`] and
/// [`Registration`](crate::Registration) are dropped (they keep the
/// connection alive too).
#[derive(Clone)]
pub struct Client {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.settings.url)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// Reports the call abandoned if its future is dropped before its answer
/// (the task then removes it from the queue, or sends `cancel`).
pub(crate) struct CancelOnDrop<'a> {
    id: u64,
    reaper: &'a Reaper,
    armed: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.reaper.push(Dropped::Call(self.id));
        }
    }
}

impl Client {
    /// Starts configuring a client for `url`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder::new(url)
    }

    /// The connection state, as a watch that changes on every transition.
    ///
    /// A watch keeps only the latest value: a receiver that is not looking
    /// may miss a short-lived state.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) {
    /// use plexus_client::ConnectionState;
    /// let mut state = client.state();
    /// state
    ///     .wait_for(|s| *s == ConnectionState::Connected)
    ///     .await
    ///     .ok();
    /// # }
    /// ```
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        self.inner.state.clone()
    }

    /// The error for a client whose task has ended.
    pub(crate) fn closed(&self) -> Error {
        match &*self.inner.state.borrow() {
            ConnectionState::Closed { code, .. } => {
                Error::Closed(code.and_then(crate::CloseStatus::known))
            }
            _ => Error::Closed(None),
        }
    }

    pub(crate) async fn send(&self, cmd: Command) -> Result<(), Error> {
        self.inner.cmd.send(cmd).await.map_err(|_| self.closed())
    }

    pub(crate) fn next_id(&self) -> u64 {
        self.inner.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Calls `method` with `params` and returns the raw result, within the
    /// default call timeout. Dropping the future cancels the call.
    ///
    /// A hub error is [`Error::Remote`]; a call in flight when the
    /// connection drops fails with [`Error::ConnectionLost`] and is not
    /// resent; a call made while reconnecting waits for the connection
    /// (up to the [`offline_queue`](ClientBuilder::offline_queue) bound);
    /// params that cannot be encoded fail at once with [`Error::Codec`].
    /// Use [`subscribe`](Self::subscribe) rather than calling `subscribe`
    /// or `unsubscribe` here: the SDK would not route or renew it.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::protocol::ErrorCode;
    /// match client.call("ping", &"hello").await {
    ///     Ok(echo) => assert_eq!(echo.decode::<String>().ok().as_deref(), Some("hello")),
    ///     Err(e) if e.code() == Some(&ErrorCode::RateLimited) => { /* wait, retry */ }
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call<P: Encode<()>>(&self, method: &str, params: &P) -> Result<RawValue, Error> {
        self.call_with_timeout(method, params, self.inner.settings.call_timeout)
            .await
    }

    /// [`Client::call`] with its own timeout. On timeout the call is
    /// cancelled (a `cancel` is sent if the request had gone out) and
    /// [`Error::Timeout`] is returned.
    pub async fn call_with_timeout<P: Encode<()>>(
        &self,
        method: &str,
        params: &P,
        timeout: Duration,
    ) -> Result<RawValue, Error> {
        let id = self.next_id();
        let frame = encode_request(id, method, params).map_err(Error::encode)?;
        let (tx, rx) = reply();
        self.submit(id, frame.into(), Pending::Call(tx), rx, timeout)
            .await
    }

    /// Sends a request and waits for its answer within `timeout`.
    pub(crate) async fn submit(
        &self,
        id: u64,
        frame: Bytes,
        pending: Pending,
        rx: ReplyRx<Result<RawValue, Error>>,
        timeout: Duration,
    ) -> Result<RawValue, Error> {
        let call = async {
            self.send(Command::Call { id, frame, pending }).await?;
            let mut guard = CancelOnDrop {
                id,
                reaper: &self.inner.reaper,
                armed: true,
            };
            let answer = rx.await;
            guard.armed = false;
            answer.unwrap_or_else(|| Err(self.closed()))
        };
        // On timeout the call's future is dropped, and its guard reports
        // the call abandoned.
        tokio::time::timeout(timeout, call)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// A typed call through the protocol's [`RpcMethod`] catalog, with the
    /// default timeout. A result that does not decode as `M::Result` is
    /// [`Error::Codec`].
    ///
    /// Not for `subscribe`, `unsubscribe`, `auth` or `auth.refresh`: the
    /// SDK manages those itself, and a subscription made here would not be
    /// routed to any [`Subscription`] or renewed after a reconnect.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::RawValue;
    /// use plexus_client::protocol::methods::Ping;
    /// let params = RawValue::encode(&7u8).unwrap();
    /// let echoed: RawValue = client.request::<Ping>(&params.as_raw_ref()).await?;
    /// assert_eq!(echoed.decode::<u8>().ok(), Some(7));
    /// # Ok(()) }
    /// ```
    pub async fn request<M: RpcMethod>(&self, params: &M::Params<'_>) -> Result<M::Result, Error> {
        let raw = self.call(M::NAME, params).await?;
        raw.decode()
            .map_err(|e| Error::decode("decode the result", e))
    }

    /// Calls a method whose result streams as chunks. The stream ends after
    /// the final chunk, or with an error if the hub answers one or the
    /// stream breaks. Dropping it cancels the call.
    ///
    /// It returns once the request is handed to the connection task and
    /// has no timeout of its own. See [`ChunkStream`] for how it ends.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use futures_util::StreamExt;
    /// let mut chunks = client.call_stream("history.get", &"demo.chat").await?;
    /// while let Some(item) = chunks.next().await {
    ///     let chunk = item?; // Err ends the stream: None follows
    ///     println!("{} bytes", chunk.len());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn call_stream<P: Encode<()>>(
        &self,
        method: &str,
        params: &P,
    ) -> Result<ChunkStream, Error> {
        let id = self.next_id();
        let frame = encode_request(id, method, params).map_err(Error::encode)?;
        let queue = Arc::new(ChunkQueue::new(self.inner.settings.stream_buffer));
        self.open_stream(id, frame, queue).await
    }

    /// Sends request `frame` (with `id`) whose chunks go to `queue`, and
    /// returns the stream of them.
    pub(crate) async fn open_stream(
        &self,
        id: u64,
        frame: Vec<u8>,
        queue: Arc<ChunkQueue>,
    ) -> Result<ChunkStream, Error> {
        self.send(Command::Call {
            id,
            frame: frame.into(),
            pending: Pending::Stream {
                queue: queue.clone(),
                next_seq: 0,
            },
        })
        .await?;
        Ok(ChunkStream {
            id,
            queue,
            reaper: self.inner.reaper.clone(),
            _cmd: self.inner.cmd.clone(),
            done: false,
        })
    }

    /// Publishes `data` on `topic`; returns how many connections it was
    /// queued for. Not retried across reconnects (it might duplicate).
    ///
    /// The event is echoed to this connection's own matching
    /// subscriptions; use [`publish_raw`](Self::publish_raw) to turn that
    /// off.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// let delivered = client.publish("demo.chat.lobby", &"hello").await?;
    /// println!("queued for {delivered} connection(s)");
    /// # Ok(()) }
    /// ```
    pub async fn publish<D: Encode<()>>(&self, topic: &str, data: &D) -> Result<u64, Error> {
        let data = RawValue::encode(data).map_err(Error::encode)?;
        self.publish_raw(topic, &data, true).await
    }

    /// Publishes already-encoded data, optionally without echo to this
    /// connection's own subscriptions.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// let data = plexus_client::RawValue::encode(&("tick", 42u32)).unwrap();
    /// client.publish_raw("demo.ticker", &data, false).await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish_raw(
        &self,
        topic: &str,
        data: &RawValue,
        echo: bool,
    ) -> Result<u64, Error> {
        let mut params = PublishParams::new(topic, data.as_raw_ref());
        if !echo {
            params = params.with_echo(false);
        }
        let r: PublishResult = self
            .call(Publish::NAME, &params)
            .await?
            .decode()
            .map_err(|e| Error::decode("decode the publish result", e))?;
        Ok(r.delivered)
    }

    /// Subscribes to a topic or pattern (`*` one token, `>` the rest).
    ///
    /// Resolves once the hub confirmed the subscription (within the call
    /// timeout). Local subscriptions to the same pattern share one hub
    /// subscription; each receives every matching event. An invalid
    /// pattern is refused locally with [`Error::Remote`] (`invalid_params`).
    /// The subscription is renewed after every reconnect.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use futures_util::StreamExt;
    /// use plexus_client::Event;
    /// let mut sub = client.subscribe("demo.chat.*").await?;
    /// while let Some(event) = sub.next().await {
    ///     match event {
    ///         Event::Message(m) => println!("{}: {:?}", m.topic, m.data.decode::<String>()),
    ///         Event::Lagged(n) => eprintln!("missed {n}"),
    ///         Event::Ended(e) => return Err(e),
    ///         _ => {}
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn subscribe(&self, pattern: &str) -> Result<Subscription, Error> {
        self.subscribe_with(pattern, false).await
    }

    /// Subscribes to an exact topic and joins its presence: the
    /// subscription also yields [`Event::Join`](crate::Event::Join) and
    /// [`Event::Leave`](crate::Event::Leave).
    ///
    /// Joins and leaves are for the other members (never this connection's
    /// own). After a reconnect the connection rejoins with a new session
    /// id, and the SDK re-sends the last info set with
    /// [`presence_set`](Self::presence_set).
    pub async fn subscribe_presence(&self, topic: &str) -> Result<Subscription, Error> {
        self.subscribe_with(topic, true).await
    }

    async fn subscribe_with(&self, pattern: &str, presence: bool) -> Result<Subscription, Error> {
        let parsed = Pattern::parse(pattern, MAX_TOPIC_LEN)
            .map_err(|e| Error::Remote(WireError::new(ErrorCode::InvalidParams, e.to_string())))?;
        let local = self.inner.locals.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(SubQueue::new(self.inner.settings.subscription_buffer));
        let (tx, rx) = reply();
        // Dropping it (on timeout too) unsubscribes; for a refused one
        // that is a no-op.
        let sub = Subscription {
            id: local,
            pattern: pattern.to_owned(),
            queue: queue.clone(),
            reaper: self.inner.reaper.clone(),
            _cmd: self.inner.cmd.clone(),
        };
        let wait = async {
            self.send(Command::Subscribe {
                local,
                pattern: parsed,
                presence,
                queue,
                reply: tx,
            })
            .await?;
            rx.await.unwrap_or_else(|| Err(self.closed()))
        };
        match tokio::time::timeout(self.inner.settings.call_timeout, wait).await {
            Ok(Ok(())) => Ok(sub),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Subscribes durably to a durable topic, or to a pattern inside one
    /// durable namespace, starting at [`StartAt::Stored`]: where the
    /// [`PositionStore`](crate::PositionStore) says this topic or pattern
    /// stopped, or now when it has no position.
    ///
    /// See [`DurableSubscription`] for what it yields and
    /// [`subscribe_durable_from`](Self::subscribe_durable_from) for the
    /// errors.
    pub async fn subscribe_durable(&self, pattern: &str) -> Result<DurableSubscription, Error> {
        self.subscribe_durable_from(pattern, StartAt::Stored).await
    }

    /// Subscribes durably from `start`.
    ///
    /// Resolves once the hub accepted it, within the call timeout: its
    /// answer, or for a start from a position (stored,
    /// [`StartAt::Beginning`], [`StartAt::After`]) the first chunk of its
    /// catch-up. The catch-up is then streamed as the subscription is
    /// consumed, however long it is, and ends with
    /// [`DurableEvent::Recovered`](crate::DurableEvent::Recovered),
    /// `TooOld` or `Reset`.
    ///
    /// Errors: [`Error::Remote`] with `invalid_params` for an invalid
    /// pattern, a topic or pattern that is not durable, or a position of
    /// the wrong kind; `conflict` if this client already subscribes to
    /// exactly this pattern (durable or not); `forbidden` without the
    /// capability.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::{StartAt, StreamPosition};
    /// let from_41 = StartAt::After(StreamPosition::new(Some("9f2c".into()), 41));
    /// let sub = client.subscribe_durable_from("orders.eu", from_41).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe_durable_from(
        &self,
        pattern: &str,
        start: StartAt,
    ) -> Result<DurableSubscription, Error> {
        let parsed = Pattern::parse(pattern, MAX_TOPIC_LEN)
            .map_err(|e| Error::Remote(WireError::new(ErrorCode::InvalidParams, e.to_string())))?;
        let settings = &self.inner.settings;
        let stored = matches!(start, StartAt::Stored);
        let after = match start {
            StartAt::Stored => settings.position_store.load(pattern),
            StartAt::Now => None,
            StartAt::Beginning => Some(StreamPosition::new(None, 0)),
            StartAt::After(p) => Some(p),
        };
        let local = self.inner.locals.fetch_add(1, Ordering::Relaxed);
        let queue = Arc::new(DurableQueue::new(
            settings.durable_buffer,
            self.inner.reaper.clone(),
        ));
        let (tx, rx) = reply();
        let sub = DurableSubscription {
            id: local,
            exact: parsed.is_exact(),
            pattern: pattern.to_owned(),
            queue: queue.clone(),
            store: settings.position_store.clone(),
            reaper: self.inner.reaper.clone(),
            _cmd: self.inner.cmd.clone(),
        };
        let wait = async {
            self.send(Command::DurableSubscribe {
                local,
                pattern: parsed,
                after,
                queue,
                reply: tx,
            })
            .await?;
            rx.await.unwrap_or_else(|| Err(self.closed()))
        };
        match tokio::time::timeout(settings.call_timeout, wait).await {
            Ok(Ok(started)) => {
                // A `Stored` start with nothing stored starts now: keep
                // that position, so the next run resumes from here even
                // if no event comes before it stops.
                if let Some(p) = started.filter(|_| stored) {
                    settings.position_store.save(pattern, &p);
                }
                Ok(sub)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Publishes `data` on a durable topic, idempotently: see
    /// [`publish_durable_with`](Self::publish_durable_with).
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// let ack = client.publish_durable("orders.eu", &"order 17").await?;
    /// println!("stored at {:?} ({:?})", ack.offset, ack.durability);
    /// # Ok(()) }
    /// ```
    pub async fn publish_durable<D: Encode<()>>(
        &self,
        topic: &str,
        data: &D,
    ) -> Result<PublishAck, Error> {
        let data = RawValue::encode(data).map_err(Error::encode)?;
        self.publish_durable_with(topic, &data, PublishOptions::new())
            .await
    }

    /// Publishes already-encoded `data` on a durable topic with `options`,
    /// and returns once it is stored.
    ///
    /// The SDK gives each durable publish the client's
    /// [`producer_id`](crate::ClientBuilder::producer_id) and the next
    /// sequence number. A publish in flight when the connection drops is
    /// sent again after the reconnect with the same (producer, seq), so the
    /// hub stores it once: the one [`PublishAck`] says `duplicate` when
    /// the first attempt had been stored, with the original's offset.
    /// Publishes are sent, and sent again, in the order they were made.
    ///
    /// Errors: [`Error::Conflict`] (`expected_offset` differs, or a
    /// sequence conflict); [`Error::Remote`] with `invalid_params` for a
    /// topic that is not durable, `unavailable` when the hub's storage
    /// failed or is overloaded (nothing was stored: publish again after
    /// `retry_after_ms`), `forbidden`, `payload_too_large`;
    /// [`Error::Timeout`] after the call timeout (it may or may not have
    /// been stored: the SDK stops retrying it).
    pub async fn publish_durable_with(
        &self,
        topic: &str,
        data: &RawValue,
        options: PublishOptions,
    ) -> Result<PublishAck, Error> {
        let id = self.next_id();
        let (tx, rx) = reply();
        let call = async {
            self.send(Command::DurablePublish {
                id,
                topic: topic.to_owned(),
                data: data.clone(),
                options,
                reply: tx,
            })
            .await?;
            let mut guard = CancelOnDrop {
                id,
                reaper: &self.inner.reaper,
                armed: true,
            };
            let answer = rx.await;
            guard.armed = false;
            answer.unwrap_or_else(|| Err(self.closed()))
        };
        tokio::time::timeout(self.inner.settings.call_timeout, call)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// Sets this connection's presence info (`null` clears it).
    ///
    /// To clear it pass a CBOR `null` such as `&None::<()>` (`&()` encodes
    /// as an empty array). The SDK remembers the info once the hub accepted
    /// it and sets it again after every reconnect.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// client.presence_set(&"at my desk").await?;
    /// client.presence_set(&None::<()>).await?; // clears it
    /// # Ok(()) }
    /// ```
    pub async fn presence_set<I: Encode<()>>(&self, info: &I) -> Result<(), Error> {
        let info = RawValue::encode(info).map_err(Error::encode)?;
        let id = self.next_id();
        let frame = encode_request(
            id,
            PresenceSet::NAME,
            &PresenceSetParams {
                info: info.as_raw_ref(),
            },
        )
        .map_err(Error::encode)?;
        let (tx, rx) = reply();
        let pending = Pending::PresenceSet { info, reply: tx };
        self.submit(
            id,
            frame.into(),
            pending,
            rx,
            self.inner.settings.call_timeout,
        )
        .await?;
        Ok(())
    }

    /// Everyone present on `topic`, fetching every page.
    ///
    /// Each page is a call of its own; the list is not a snapshot (members
    /// that join or leave meanwhile may be missing or listed twice; key
    /// them by `session`).
    pub async fn presence_get(&self, topic: &str) -> Result<Vec<Member>, Error> {
        let mut members = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_PRESENCE_PAGES {
            let page: PresenceGetResult = self
                .call(
                    PresenceGet::NAME,
                    &PresenceGetParams {
                        topic,
                        cursor,
                        limit: None,
                    },
                )
                .await?
                .decode()
                .map_err(|e| Error::decode("decode a presence page", e))?;
            members.extend(page.members);
            match page.next {
                Some(next) if Some(next) != cursor => cursor = Some(next),
                _ => break,
            }
        }
        Ok(members)
    }

    /// Serves `method` for the hub: when the hub sends a request for it
    /// (a server-initiated request, for methods the client opted into),
    /// `handler` runs with its params and its result is the response.
    ///
    /// Each request runs in a task of its own, at most
    /// [`max_served`](ClientBuilder::max_served) at once (more are
    /// answered `too_many_requests`). When the hub cancels a request, its
    /// handler's future is dropped and the hub gets `cancelled`. A handler
    /// that panics answers `internal`. Requests for methods nobody serves
    /// are answered `method_not_found`. Served methods stay served across
    /// reconnects; [`unserve`](Self::unserve) stops. Serving a method
    /// twice is refused with [`Error::Remote`] (`conflict`).
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::RawValue;
    /// use plexus_client::protocol::{ErrorCode, WireError};
    /// client
    ///     .serve("app.echo", |params: RawValue| async move {
    ///         if params.is_null() {
    ///             return Err(WireError::new(ErrorCode::InvalidParams, "params required"));
    ///         }
    ///         Ok(params)
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve<F, Fut>(&self, method: impl Into<String>, handler: F) -> Result<(), Error>
    where
        F: Fn(RawValue) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<RawValue, WireError>> + Send + 'static,
    {
        let handler = Handler::Unary(Arc::new(move |params| handler(params).boxed()));
        self.serve_handler(method.into(), handler).await
    }

    /// Like [`serve`](Self::serve), with a handler whose answer streams as
    /// chunks: each item of the stream is one chunk (the last one final),
    /// an `Err` item ends the request with that error response (chunks
    /// sent before it stand), and an empty stream answers one final chunk
    /// of `null`. The stream is read only as fast as the socket takes the
    /// chunks.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::RawValue;
    /// client
    ///     .serve_stream("app.count", |_params: RawValue| {
    ///         futures_util::stream::iter((0..3u8).map(|i| Ok(RawValue::encode(&i).unwrap())))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn serve_stream<F, S>(
        &self,
        method: impl Into<String>,
        handler: F,
    ) -> Result<(), Error>
    where
        F: Fn(RawValue) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<RawValue, WireError>> + Send + 'static,
    {
        let handler = Handler::Stream(Arc::new(move |params| handler(params).boxed()));
        self.serve_handler(method.into(), handler).await
    }

    async fn serve_handler(&self, method: String, handler: Handler) -> Result<(), Error> {
        let (tx, rx) = reply();
        self.send(Command::Serve {
            method,
            handler,
            reply: tx,
        })
        .await?;
        rx.await.unwrap_or_else(|| Err(self.closed()))
    }

    /// Stops serving `method`: later requests for it are answered
    /// `method_not_found`; requests already running finish.
    pub async fn unserve(&self, method: &str) -> Result<(), Error> {
        self.send(Command::Unserve {
            method: method.to_owned(),
        })
        .await
    }

    /// Closes the connection and stops reconnecting, for every clone.
    ///
    /// It sends a WebSocket Close frame (1000), waits up to 2 s for the
    /// hub's reply, and returns once the state is
    /// [`ConnectionState::Closed`]. Calls in flight fail with
    /// [`Error::ConnectionLost`], later ones with [`Error::Closed`], and
    /// every [`Subscription`] ends with [`Event::Ended`](crate::Event::Ended).
    pub async fn close(&self) {
        self.inner.reaper.request_close();
        let mut state = self.state();
        let _ = state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await;
    }
}
