//! The client handle and its builder.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{FutureExt, Stream};
use minicbor::Encode;
use plexus_protocol::methods::{
    Member, PresenceGetParams, PresenceGetResult, PresenceSetParams, PublishParams, PublishResult,
};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use plexus_protocol::{CloseCode, ErrorCode, RawValue, RpcMethod, WireError};
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::connection::{Command, Settings, Task, TokenFn};
use crate::error::Error;
use crate::state::ConnectionState;
use crate::subscription::{SubQueue, Subscription};

/// Configures and connects a [`Client`].
///
/// Every setting has a default (listed on its method) except the token:
/// call [`token`](Self::token) or [`token_provider`](Self::token_provider).
///
/// ```no_run
/// # async fn run() -> Result<(), plexus_client::Error> {
/// use std::time::Duration;
/// let client = plexus_client::Client::builder("ws://127.0.0.1:7700/v1/ws")
///     .token_provider(|| async { Ok::<_, std::io::Error>("eyJ…".to_owned()) })
///     .call_timeout(Duration::from_secs(5))
///     .connect()
///     .await?;
/// # Ok(()) }
/// ```
pub struct ClientBuilder {
    url: String,
    token: Option<TokenFn>,
    connect_timeout: Duration,
    call_timeout: Duration,
    backoff: Backoff,
    subscription_buffer: usize,
    stream_buffer: usize,
    liveness_timeout: Option<Duration>,
    max_frame_size: usize,
    instance: Option<String>,
    agent: String,
}

impl std::fmt::Debug for ClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientBuilder")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl ClientBuilder {
    /// Where to connect, e.g. `ws://127.0.0.1:7700/v1/ws`.
    pub fn new(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            token: None,
            connect_timeout: Duration::from_secs(10),
            call_timeout: Duration::from_secs(30),
            backoff: Backoff::default(),
            subscription_buffer: 1024,
            stream_buffer: 64,
            liveness_timeout: None,
            max_frame_size: plexus_protocol::limits::DEFAULT_MAX_FRAME_SIZE,
            instance: None,
            agent: concat!("plexus-client-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }

    /// An async callback that returns a fresh token. It is called before
    /// every connection attempt and when the hub announces `token.expiring`.
    ///
    /// Before a connection attempt it may take at most the connect timeout.
    /// If it fails or times out, the first [`connect`](Self::connect)
    /// returns [`Error::TokenProvider`]; later, that attempt counts as
    /// failed and the client tries again with backoff (it never gives up
    /// because of the provider). A failure during an in-band refresh is
    /// only logged; the hub then closes with 4002 at expiry and the client
    /// reconnects with a fresh token.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> ClientBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.token = Some(Arc::new(move || {
            provider().map(|r| r.map_err(|e| e.to_string())).boxed()
        }));
        self
    }

    /// A fixed token (for tests and short-lived tools).
    ///
    /// The same token is sent on every attempt and every refresh, so a
    /// client cannot outlive the token's `exp`: after the hub closes with
    /// 4002 the reconnect is refused and the client ends closed with 4000.
    pub fn token(self, token: impl Into<String>) -> ClientBuilder {
        let token: String = token.into();
        self.token_provider(move || {
            let t = token.clone();
            async move { Ok::<_, std::convert::Infallible>(t) }
        })
    }

    /// Timeout of the TCP connect and WebSocket handshake [default: 10 s].
    /// The `auth` exchange that follows is bounded by
    /// [`call_timeout`](Self::call_timeout).
    pub fn connect_timeout(mut self, d: Duration) -> ClientBuilder {
        self.connect_timeout = d;
        self
    }

    /// Default timeout of a call, and of the `auth` exchange [default: 30 s].
    ///
    /// It also bounds how long [`Client::subscribe`] waits for the hub, and
    /// each page of [`Client::presence_get`]. Time spent waiting for a
    /// reconnect counts.
    pub fn call_timeout(mut self, d: Duration) -> ClientBuilder {
        self.call_timeout = d;
        self
    }

    /// Reconnect backoff [default: 250 ms doubling to 30 s, full jitter].
    pub fn backoff(mut self, b: Backoff) -> ClientBuilder {
        self.backoff = b;
        self
    }

    /// Items buffered per subscription before [`Event::Lagged`](crate::Event::Lagged) [default: 1024].
    pub fn subscription_buffer(mut self, n: usize) -> ClientBuilder {
        self.subscription_buffer = n;
        self
    }

    /// Chunks buffered per streamed call [default: 64].
    ///
    /// A consumer that falls this far behind loses the rest of the stream:
    /// see [`ChunkStream`].
    pub fn stream_buffer(mut self, n: usize) -> ClientBuilder {
        self.stream_buffer = n;
        self
    }

    /// Reconnect when nothing at all (not even a ping) arrived for this
    /// long [default: twice the hub's ping interval plus 5 s].
    pub fn liveness_timeout(mut self, d: Duration) -> ClientBuilder {
        self.liveness_timeout = Some(d);
        self
    }

    /// Largest frame accepted from the hub [default: 1 MiB]. A larger
    /// message drops the connection (the client then reconnects). It is
    /// not applied to frames the client sends.
    pub fn max_frame_size(mut self, n: usize) -> ClientBuilder {
        self.max_frame_size = n;
        self
    }

    /// A stable id of this client instance (e.g. a device id): a newer
    /// connection with the same user and instance replaces an older one.
    pub fn instance(mut self, id: impl Into<String>) -> ClientBuilder {
        self.instance = Some(id.into());
        self
    }

    /// Connects and authenticates. The first attempt is not retried: its
    /// failure is returned. Later disconnects reconnect by themselves.
    ///
    /// Errors: [`Error::Auth`] when the hub refuses the token,
    /// [`Error::TokenProvider`] when there is no token or the provider
    /// fails, [`Error::Connect`] for an invalid URL or any other failed
    /// attempt (network, handshake, timeout, a transient `auth` error; the
    /// cause is logged at debug level), [`Error::Closed`] when the hub
    /// closes during `auth` with a code after which the SDK never
    /// reconnects. Must be called within a tokio runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        let token = self
            .token
            .ok_or_else(|| Error::TokenProvider("no token provider configured".into()))?;
        let settings = Arc::new(Settings {
            url: self.url,
            token,
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            backoff: self.backoff,
            subscription_buffer: self.subscription_buffer,
            stream_buffer: self.stream_buffer,
            liveness_timeout: self.liveness_timeout,
            max_frame_size: self.max_frame_size,
            instance: self.instance,
            agent: self.agent,
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let ids = Arc::new(AtomicU64::new(1));
        let closed_code = Arc::new(std::sync::Mutex::new(None));
        let presence_info = Arc::new(std::sync::Mutex::new(None));
        let task = Task::new(
            settings.clone(),
            ids.clone(),
            state_tx,
            closed_code.clone(),
            cmd_rx,
            presence_info.clone(),
        );
        let (first_tx, first_rx) = oneshot::channel();
        tokio::spawn(task.run(first_tx));
        match first_rx.await {
            Ok(Ok(())) => Ok(Client {
                inner: Arc::new(Inner {
                    settings,
                    cmd: cmd_tx,
                    ids,
                    locals: AtomicU64::new(1),
                    state: state_rx,
                    closed_code,
                    presence_info,
                }),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed(None)),
        }
    }
}

struct Inner {
    settings: Arc<Settings>,
    cmd: mpsc::UnboundedSender<Command>,
    ids: Arc<AtomicU64>,
    locals: AtomicU64,
    state: watch::Receiver<ConnectionState>,
    closed_code: Arc<std::sync::Mutex<Option<u16>>>,
    /// The last presence info set, which the task re-sends after a
    /// reconnect.
    presence_info: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
}

/// A connection to a Plexus hub. Cheap to clone; all clones share one
/// connection. The connection closes when [`Client::close`] is called, or
/// when the last clone and every [`Subscription`] and [`ChunkStream`] are
/// dropped (they keep the connection alive too).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("url", &self.inner.settings.url)
            .field("state", &*self.inner.state.borrow())
            .finish()
    }
}

/// Sends `cancel` if the call's future is dropped before its answer.
struct CancelOnDrop {
    id: u64,
    cmd: mpsc::UnboundedSender<Command>,
    armed: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            let _ = self.cmd.send(Command::Cancel { id: self.id });
        }
    }
}

fn encode<T: Encode<()>>(value: &T) -> Result<Vec<u8>, Error> {
    minicbor::to_vec(value).map_err(|e| Error::Codec(e.to_string()))
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

    fn closed(&self) -> Error {
        let code = self.inner.closed_code.lock().ok().and_then(|c| *c);
        Error::Closed(code.and_then(CloseCode::from_u16))
    }

    fn send(&self, cmd: Command) -> Result<(), Error> {
        self.inner.cmd.send(cmd).map_err(|_| self.closed())
    }

    /// Calls `method` with `params` and returns the raw result, within the
    /// default call timeout. Dropping the future cancels the call.
    ///
    /// A hub error is [`Error::Remote`]; a call in flight when the
    /// connection drops fails with [`Error::ConnectionLost`] and is not
    /// resent; a call made while reconnecting waits for the connection.
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
        let params = encode(params)?;
        let id = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.send(Command::Call {
            id,
            method: method.to_owned(),
            params,
            reply,
        })?;
        let mut guard = CancelOnDrop {
            id,
            cmd: self.inner.cmd.clone(),
            armed: true,
        };
        let outcome = tokio::time::timeout(timeout, rx).await;
        match outcome {
            Ok(Ok(result)) => {
                guard.armed = false;
                result
            }
            Ok(Err(_)) => {
                guard.armed = false;
                Err(self.closed())
            }
            // The guard sends `cancel` as it drops.
            Err(_) => Err(Error::Timeout),
        }
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
        raw.decode().map_err(|e| Error::Codec(e.to_string()))
    }

    /// Calls a method whose result streams as chunks. The stream ends after
    /// the final chunk, or with an error if the hub answers one or the
    /// stream breaks. Dropping it cancels the call.
    ///
    /// It returns once the request is queued and has no timeout of its
    /// own. See [`ChunkStream`] for how it ends.
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
        let params = encode(params)?;
        let id = self.inner.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.inner.settings.stream_buffer.max(1));
        let failed = Arc::new(std::sync::OnceLock::new());
        let sink = crate::connection::StreamSink {
            tx,
            failed: failed.clone(),
        };
        self.send(Command::Stream {
            id,
            method: method.to_owned(),
            params,
            sink,
        })?;
        Ok(ChunkStream {
            rx,
            failed,
            guard: CancelOnDrop {
                id,
                cmd: self.inner.cmd.clone(),
                armed: true,
            },
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
        let data = RawValue::encode(data).map_err(|e| Error::Codec(e.to_string()))?;
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
            .call("publish", &params)
            .await?
            .decode()
            .map_err(|e| Error::Codec(e.to_string()))?;
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
        let (reply, rx) = oneshot::channel();
        let sub = Subscription {
            id: local,
            pattern: pattern.to_owned(),
            queue: queue.clone(),
            cmd: self.inner.cmd.clone(),
        };
        self.send(Command::Subscribe {
            local,
            pattern: parsed,
            presence,
            queue,
            reply,
        })?;
        match tokio::time::timeout(self.inner.settings.call_timeout, rx).await {
            Ok(Ok(Ok(()))) => Ok(sub),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(self.closed()),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Sets this connection's presence info (`null` clears it).
    ///
    /// To clear it pass a CBOR `null` such as `&None::<()>` (`&()` encodes
    /// as an empty array). The SDK remembers the info and sets it again
    /// after every reconnect.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// client.presence_set(&"at my desk").await?;
    /// client.presence_set(&None::<()>).await?; // clears it
    /// # Ok(()) }
    /// ```
    pub async fn presence_set<I: Encode<()>>(&self, info: &I) -> Result<(), Error> {
        let info = RawValue::encode(info).map_err(|e| Error::Codec(e.to_string()))?;
        self.call(
            "presence.set",
            &PresenceSetParams {
                info: info.as_raw_ref(),
            },
        )
        .await?;
        // Remembered so a reconnect restores it (null clears it for good).
        if let Ok(mut kept) = self.inner.presence_info.lock() {
            *kept = (!info.is_null()).then(|| info.as_bytes().to_vec());
        }
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
        // Each page makes progress (the hub returns at least one member per
        // page), so the loop ends; the cap guards against a faulty hub.
        for _ in 0..100_000 {
            let page: PresenceGetResult = self
                .call(
                    "presence.get",
                    &PresenceGetParams {
                        topic,
                        cursor,
                        limit: None,
                    },
                )
                .await?
                .decode()
                .map_err(|e| Error::Codec(e.to_string()))?;
            members.extend(page.members);
            match page.next {
                Some(next) if Some(next) != cursor => cursor = Some(next),
                _ => break,
            }
        }
        Ok(members)
    }

    /// Closes the connection and stops reconnecting, for every clone.
    ///
    /// It sends a WebSocket Close frame (without a status code), waits up
    /// to 2 s for the hub's reply, and returns once the state is
    /// [`ConnectionState::Closed`]. Calls in flight fail with
    /// [`Error::ConnectionLost`], later ones with [`Error::Closed`], and
    /// every [`Subscription`] ends with [`Event::Ended`](crate::Event::Ended).
    pub async fn close(&self) {
        let (reply, rx) = oneshot::channel();
        if self.inner.cmd.send(Command::Close { reply }).is_ok() {
            let _ = rx.await;
        }
        let mut state = self.state();
        let _ = state
            .wait_for(|s| matches!(s, ConnectionState::Closed { .. }))
            .await;
    }
}

/// The chunks of a streamed result, from [`Client::call_stream`].
///
/// It yields each chunk's data and then `None` after the final chunk. A
/// failure is one `Err` item and then `None`: [`Error::Remote`] for an
/// error response, [`Error::BrokenStream`] for a gap in sequence numbers,
/// [`Error::ConnectionLost`] when the connection drops. Dropping it before
/// the end sends `cancel`.
///
/// If the consumer falls a whole [`stream_buffer`](ClientBuilder::stream_buffer)
/// behind, the stream ends with [`Error::BrokenStream`] after the chunks
/// already buffered, and the SDK sends `cancel`: an error is never lost to
/// a full buffer.
#[derive(Debug)]
pub struct ChunkStream {
    rx: mpsc::Receiver<Result<RawValue, Error>>,
    failed: Arc<std::sync::OnceLock<Error>>,
    guard: CancelOnDrop,
    done: bool,
}

impl std::fmt::Debug for CancelOnDrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CancelOnDrop")
            .field("id", &self.id)
            .finish()
    }
}

impl Stream for ChunkStream {
    type Item = Result<RawValue, Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => {
                if item.is_err() {
                    self.done = true;
                    self.guard.armed = false;
                }
                Poll::Ready(Some(item))
            }
            Poll::Ready(None) => {
                // The task dropped the sender: after the final chunk, or with
                // the error that ended the stream recorded beside it.
                self.done = true;
                self.guard.armed = false;
                Poll::Ready(self.failed.get().cloned().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}
