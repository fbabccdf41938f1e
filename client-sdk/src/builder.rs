//! The client builder.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::sync::{mpsc, oneshot, watch};

use crate::backoff::Backoff;
use crate::client::{Client, Inner};
use crate::config::{
    DEFAULT_COMMAND_BUFFER, DEFAULT_DURABLE_BUFFER, DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_SERVED,
    DEFAULT_OFFLINE_QUEUE, DEFAULT_STREAM_BUFFER, DEFAULT_SUBSCRIPTION_BUFFER, Settings, TokenFn,
};
use crate::deliver::Reaper;
use crate::driver::Driver;
use crate::durable::{MemoryPositionStore, PositionStore};
use crate::error::{Cause, Error};
use crate::state::ConnectionState;

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
    command_buffer: usize,
    offline_queue: usize,
    max_in_flight: usize,
    max_served: usize,
    liveness_timeout: Option<Duration>,
    max_frame_size: usize,
    instance: Option<String>,
    agent: String,
    durable_buffer: usize,
    position_store: Option<Arc<dyn PositionStore>>,
    producer: Option<(String, Option<u64>)>,
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
            subscription_buffer: DEFAULT_SUBSCRIPTION_BUFFER,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            command_buffer: DEFAULT_COMMAND_BUFFER,
            offline_queue: DEFAULT_OFFLINE_QUEUE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            max_served: DEFAULT_MAX_SERVED,
            liveness_timeout: None,
            max_frame_size: plexus_protocol::limits::DEFAULT_MAX_FRAME_SIZE,
            instance: None,
            agent: concat!("plexus-client-rust/", env!("CARGO_PKG_VERSION")).to_owned(),
            durable_buffer: DEFAULT_DURABLE_BUFFER,
            position_store: None,
            producer: None,
        }
    }

    /// An async callback that returns a fresh token. It is called before
    /// every connection attempt and when the hub announces `token.expiring`.
    ///
    /// Each call may take at most the connect timeout. Before a connection
    /// attempt, a failure or timeout makes the first
    /// [`connect`](Self::connect) return [`Error::TokenProvider`] (with the
    /// provider's error as its source); later, that attempt counts as
    /// failed and the client tries again with backoff (it never gives up
    /// because of the provider). A failure during an in-band refresh is
    /// only logged; the hub then closes with 4002 at expiry and the client
    /// reconnects with a fresh token.
    pub fn token_provider<F, Fut, E>(mut self, provider: F) -> ClientBuilder
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    {
        self.token = Some(Arc::new(move || {
            provider()
                .map(|r| r.map_err(|e| Cause::from(e.into())))
                .boxed()
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

    /// Timeout of the TCP connect and WebSocket handshake, and of each call
    /// of the token provider [default: 10 s]. The `auth` exchange that
    /// follows is bounded by [`call_timeout`](Self::call_timeout).
    pub fn connect_timeout(mut self, d: Duration) -> ClientBuilder {
        self.connect_timeout = d;
        self
    }

    /// Default timeout of a call, and of the `auth` exchange [default: 30 s].
    ///
    /// It also bounds how long [`Client::subscribe`] waits for the hub, and
    /// each page of [`Client::presence_get`]. Time spent waiting for a
    /// reconnect, for room in the command channel or for room in the hub's
    /// in-flight window counts.
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
    /// see [`ChunkStream`](crate::ChunkStream).
    pub fn stream_buffer(mut self, n: usize) -> ClientBuilder {
        self.stream_buffer = n;
        self
    }

    /// Capacity of the channel that carries calls, subscribes and `serve`s
    /// from the handles to the connection task [default: 256; 0 is taken
    /// as 1]. A caller finding it full waits (within its timeout).
    pub fn command_buffer(mut self, n: usize) -> ClientBuilder {
        self.command_buffer = n;
        self
    }

    /// Most requests waiting to go out [default: 1024]: calls made while
    /// the client is reconnecting (they are sent once it is back, unless
    /// their timeout passed first), and calls beyond the hub's in-flight
    /// window (`max_in_flight`, `max_in_flight_bytes`).
    ///
    /// While reconnecting, a call beyond the bound fails at once with
    /// [`Error::QueueFull`]. While connected, the task stops taking
    /// commands until the window has room, so callers wait in the command
    /// channel instead (within their timeouts). `0` sends nothing while
    /// reconnecting.
    pub fn offline_queue(mut self, n: usize) -> ClientBuilder {
        self.offline_queue = n;
        self
    }

    /// Local cap on requests in flight [default: 1024; 0 is taken as 1].
    /// The window is the lower of this and the hub's announced
    /// `max_in_flight`; requests beyond it wait in the queue (see
    /// [`offline_queue`](Self::offline_queue)) rather than fail with
    /// `too_many_requests`.
    pub fn max_in_flight(mut self, n: usize) -> ClientBuilder {
        self.max_in_flight = n;
        self
    }

    /// Most requests from the hub ([`Client::serve`]) running at once
    /// [default: 64]. A request beyond it is answered `too_many_requests`.
    pub fn max_served(mut self, n: usize) -> ClientBuilder {
        self.max_served = n;
        self
    }

    /// Reconnect when nothing at all (not even a ping) arrived for this
    /// long [default: twice the hub's ping interval plus 5 s].
    pub fn liveness_timeout(mut self, d: Duration) -> ClientBuilder {
        self.liveness_timeout = Some(d);
        self
    }

    /// Largest frame accepted from the hub [default: 1 MiB]. A larger
    /// message drops the connection (the client then reconnects). Frames
    /// the client sends are checked against the hub's announced
    /// `max_frame_size` instead.
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

    /// Events buffered per [`DurableSubscription`](crate::DurableSubscription)
    /// [default: 1024; 0 is taken as 1]. When a consumer is this far
    /// behind, the connection stops reading until it takes an event
    /// (nothing is dropped; the hub's catch-up waits), so the buffer holds
    /// at most this many events plus one frame's worth.
    pub fn durable_buffer(mut self, n: usize) -> ClientBuilder {
        self.durable_buffer = n;
        self
    }

    /// Where durable subscriptions keep their positions across process
    /// restarts [default: a [`MemoryPositionStore`] of this client]. See
    /// [`PositionStore`] for when it is called.
    pub fn position_store(mut self, store: Arc<dyn PositionStore>) -> ClientBuilder {
        self.position_store = Some(store);
        self
    }

    /// The producer id of durable publishes (1–128 bytes), for a producer
    /// that keeps its identity across process restarts [default: a random
    /// id per client instance].
    ///
    /// The hub keeps, per producer and topic, the last sequence number
    /// stored, for as long as the topic exists: a publish retried with the
    /// same (producer, seq) is stored once. Within one client the SDK
    /// numbers publishes 1, 2, 3… under the random default, which is
    /// always safe but cannot recognise a retry made by *another* process
    /// (an application that re-publishes after a crash stores the event
    /// again). With an explicit id the numbering must keep growing across
    /// restarts, so it starts at the current time in microseconds since
    /// the Unix epoch (or at [`producer_seq_start`](Self::producer_seq_start)):
    /// correct as long as the clock never steps back past the previous
    /// run's last number and no two live clients share the id (either
    /// makes publishes fail with [`Error::Conflict`] rather than be lost
    /// or stored twice).
    pub fn producer_id(mut self, id: impl Into<String>) -> ClientBuilder {
        let start = self.producer.take().and_then(|(_, s)| s);
        self.producer = Some((id.into(), start));
        self
    }

    /// The sequence number of the first durable publish with the
    /// [`producer_id`](Self::producer_id) (e.g. one more than the last
    /// number the application persisted) [default: see `producer_id`].
    pub fn producer_seq_start(mut self, seq: u64) -> ClientBuilder {
        let id = self
            .producer
            .take()
            .map_or_else(random_producer, |(id, _)| id);
        self.producer = Some((id, Some(seq.max(1))));
        self
    }

    /// Connects and authenticates. The first attempt is not retried: its
    /// failure is returned. Later disconnects reconnect by themselves.
    ///
    /// Errors: [`Error::Auth`] when the hub refuses the token,
    /// [`Error::TokenProvider`] when there is no token or the provider
    /// fails, [`Error::Connect`] for an invalid URL or any other failed
    /// attempt (network, handshake, timeout, a transient `auth` error; the
    /// underlying error is its source), [`Error::Closed`] when the hub
    /// closes during `auth` with a code after which the SDK never
    /// reconnects. Must be called within a tokio runtime.
    pub async fn connect(self) -> Result<Client, Error> {
        let token = self
            .token
            .ok_or_else(|| Error::provider("no token provider configured", None))?;
        let (producer, first_seq) = match self.producer {
            Some((id, Some(seq))) => (id, seq),
            Some((id, None)) => (id, clock_seq()),
            None => (random_producer(), 1),
        };
        let settings = Arc::new(Settings {
            url: self.url,
            token,
            connect_timeout: self.connect_timeout,
            call_timeout: self.call_timeout,
            backoff: self.backoff,
            subscription_buffer: self.subscription_buffer,
            stream_buffer: self.stream_buffer,
            command_buffer: self.command_buffer.max(1),
            offline_queue: self.offline_queue,
            max_in_flight: self.max_in_flight.max(1),
            max_served: self.max_served,
            liveness_timeout: self.liveness_timeout,
            max_frame_size: self.max_frame_size,
            instance: self.instance,
            agent: self.agent,
            durable_buffer: self.durable_buffer.max(1),
            position_store: self
                .position_store
                .unwrap_or_else(|| Arc::new(MemoryPositionStore::new())),
            producer: producer.into(),
            first_seq,
        });
        let (cmd_tx, cmd_rx) = mpsc::channel(settings.command_buffer);
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connecting);
        let ids = Arc::new(AtomicU64::new(1));
        let reaper = Arc::new(Reaper::default());
        let (first_tx, first_rx) = oneshot::channel();
        let driver = Driver::new(
            settings.clone(),
            ids.clone(),
            cmd_rx,
            reaper.clone(),
            state_tx,
            first_tx,
        );
        tokio::spawn(driver.run());
        match first_rx.await {
            Ok(Ok(())) => Ok(Client {
                inner: Arc::new(Inner {
                    settings,
                    cmd: cmd_tx,
                    ids,
                    locals: AtomicU64::new(1),
                    state: state_rx,
                    reaper,
                }),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Closed(None)),
        }
    }
}

/// A random producer id: 32 hex digits.
fn random_producer() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Microseconds since the Unix epoch (at least 1), below 2^63.
fn clock_seq() -> u64 {
    let us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_micros());
    u64::try_from(us)
        .unwrap_or(u64::MAX)
        .clamp(1, i64::MAX as u64 / 2)
}
