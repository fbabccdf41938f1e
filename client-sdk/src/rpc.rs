//! Routed RPC (`docs/protocol.md` §25, `docs/sdk.md` §18): procedures this
//! client offers through the hub ([`Client::register`]) and calls to
//! procedures other clients offer ([`Client::rpc_call`],
//! [`Client::rpc_call_stream`]).
//!
//! A callee's handler runs in a task of its own for each invocation, at
//! most `max_concurrency` at once per registration; a streaming handler is
//! read only as fast as the hub grants credit (§25.7), so a slow caller
//! throttles the callee. A caller's progressive results arrive in a
//! bounded [`ChunkStream`]; while it is full the connection stops reading,
//! which in turn stops the hub's relay and the callee.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::{FutureExt, Stream, StreamExt};
use minicbor::Encode;
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::rpc::{Call, CallParams, Policy};
use plexus_protocol::{ErrorCode, RawValue, RpcMethod, WireError};
use tokio::sync::{mpsc, watch};

use crate::chunks::ChunkStream;
use crate::client::Client;
use crate::core::{Command, Pending, RegSpec, RpcHandler};
use crate::deliver::{ChunkQueue, Dropped, Reaper, reply};
use crate::error::Error;

pub use plexus_protocol::methods::rpc::Caller;

/// The `max_concurrency` a registration asks for unless
/// [`RegisterOptions::max_concurrency`] says otherwise (the reference hub's
/// default too). The SDK always sends it, so the hub and the SDK bound a
/// registration's invocations alike.
pub const DEFAULT_RPC_CONCURRENCY: u32 = 16;

/// The largest [`RegisterOptions::max_concurrency`] (the reference hub's
/// cap); larger values are lowered to it.
pub const MAX_RPC_CONCURRENCY: u32 = 1024;

/// How much longer than its `timeout_ms` a [`Client::rpc_call`] waits
/// locally, so that the hub's own `timeout` answer (which also interrupts
/// the callee) arrives first; [`Error::Timeout`] only if the hub says
/// nothing by then.
pub const RPC_TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// How a procedure is registered: see [`Client::register_with`].
///
/// ```
/// use plexus_client::RegisterOptions;
/// use plexus_client::protocol::methods::rpc::Policy;
/// let opts = RegisterOptions::new()
///     .policy(Policy::RoundRobin)
///     .max_concurrency(4)
///     .disclose_caller(["email"]);
/// assert_eq!(opts.max_concurrency, 4);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RegisterOptions {
    /// How calls are shared among the procedure's callees (`None`: the
    /// hub's default, `single`). Every callee of a procedure must name the
    /// same policy (`conflict` otherwise).
    pub policy: Option<Policy>,
    /// Most invocations running at once at this registration, 1 to
    /// [`MAX_RPC_CONCURRENCY`] (default [`DEFAULT_RPC_CONCURRENCY`]). The
    /// hub queues calls beyond it.
    pub max_concurrency: u32,
    /// Claims of each caller's token the hub discloses in
    /// [`Invocation::caller`] (at most 16 names).
    pub disclose_caller: Vec<String>,
}

impl Default for RegisterOptions {
    fn default() -> Self {
        RegisterOptions {
            policy: None,
            max_concurrency: DEFAULT_RPC_CONCURRENCY,
            disclose_caller: Vec::new(),
        }
    }
}

impl RegisterOptions {
    /// The defaults: policy `single`, [`DEFAULT_RPC_CONCURRENCY`], no
    /// disclosed claims.
    pub fn new() -> RegisterOptions {
        RegisterOptions::default()
    }

    /// Sets the sharing policy.
    pub fn policy(mut self, policy: Policy) -> RegisterOptions {
        self.policy = Some(policy);
        self
    }

    /// Sets the concurrency bound (clamped to 1..=[`MAX_RPC_CONCURRENCY`]).
    pub fn max_concurrency(mut self, n: u32) -> RegisterOptions {
        self.max_concurrency = n.clamp(1, MAX_RPC_CONCURRENCY);
        self
    }

    /// Asks for these claims of each caller.
    pub fn disclose_caller<I, S>(mut self, claims: I) -> RegisterOptions
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.disclose_caller = claims.into_iter().map(Into::into).collect();
        self
    }
}

/// Options of one routed call: see [`Client::rpc_call_with`].
///
/// ```
/// use std::time::Duration;
/// use plexus_client::CallOptions;
/// let opts = CallOptions::new().timeout(Duration::from_secs(2)).key("img-42");
/// assert_eq!(opts.key.as_deref(), Some("img-42"));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CallOptions {
    /// The call's deadline, sent as `timeout_ms` and enforced by the hub
    /// (`None`: the client's [`call_timeout`](crate::ClientBuilder::call_timeout)
    /// for [`Client::rpc_call`], the hub's default for
    /// [`Client::rpc_call_stream`]).
    pub timeout: Option<Duration>,
    /// The affinity key (policy `affinity`: one key always reaches the same
    /// callee while it stays registered); at most 256 bytes.
    pub key: Option<String>,
}

impl CallOptions {
    /// No timeout of its own, no key.
    pub fn new() -> CallOptions {
        CallOptions::default()
    }

    /// Sets the deadline (at least 1 ms).
    pub fn timeout(mut self, timeout: Duration) -> CallOptions {
        self.timeout = Some(timeout);
        self
    }

    /// Sets the affinity key.
    pub fn key(mut self, key: impl Into<String>) -> CallOptions {
        self.key = Some(key.into());
        self
    }
}

/// One call routed to this client's handler (the hub's `rpc.invoke`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Invocation {
    /// The procedure called.
    pub procedure: String,
    /// The caller's params, unchanged (`null` when it sent none): the
    /// caller's own words, not to be trusted for identity.
    pub params: RawValue,
    /// Who called, attested by the hub: the caller's token `sub` and the
    /// claims the registration asked for
    /// ([`RegisterOptions::disclose_caller`]).
    pub caller: Caller,
    /// When the hub answers the caller `timeout` and withdraws the call
    /// (the handler is then dropped): stop early past it.
    pub deadline: std::time::Instant,
    /// The hub's id of the call (unique on the hub).
    pub call: u64,
    /// The registration it was routed to (its hub id on this connection).
    pub registration: u64,
}

impl Invocation {
    /// An invocation made by hand, to unit-test a handler without a hub
    /// (`call` and `registration` are 0).
    ///
    /// ```
    /// use std::time::{Duration, Instant};
    /// use plexus_client::{Caller, Invocation, RawValue};
    /// let inv = Invocation::new(
    ///     "svc.resize",
    ///     RawValue::encode(&("img-42", 256u32)).unwrap(),
    ///     Caller::new("carol"),
    ///     Instant::now() + Duration::from_secs(5),
    /// );
    /// let (image, width): (String, u32) = inv.decode().unwrap();
    /// assert_eq!((image.as_str(), width), ("img-42", 256));
    /// ```
    pub fn new(
        procedure: impl Into<String>,
        params: RawValue,
        caller: Caller,
        deadline: std::time::Instant,
    ) -> Invocation {
        Invocation {
            procedure: procedure.into(),
            params,
            caller,
            deadline,
            call: 0,
            registration: 0,
        }
    }

    /// Decodes the params.
    ///
    /// ```
    /// # fn run(inv: plexus_client::Invocation) -> Result<(), plexus_client::Error> {
    /// let (image, width): (String, u32) = inv.decode()?;
    /// # Ok(()) }
    /// ```
    pub fn decode<'a, T: minicbor::Decode<'a, ()>>(&'a self) -> Result<T, Error> {
        self.params
            .decode()
            .map_err(|e| Error::decode("decode the invocation's params", e))
    }

    /// Time left until [`deadline`](Self::deadline) (zero once passed).
    pub fn remaining(&self) -> Duration {
        self.deadline
            .saturating_duration_since(tokio::time::Instant::now().into_std())
    }
}

/// A procedure this client offers, from [`Client::register`].
///
/// Dropping it unregisters the procedure (invocations already running
/// finish). It keeps the connection alive, like a
/// [`Subscription`](crate::Subscription), and is restored after every
/// reconnect with the same options (a new hub registration id each time).
pub struct Registration {
    local: u64,
    procedure: String,
    status: watch::Receiver<Option<u64>>,
    reaper: Arc<Reaper>,
    _cmd: mpsc::Sender<Command>,
}

impl std::fmt::Debug for Registration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registration")
            .field("procedure", &self.procedure)
            .field("id", &*self.status.borrow())
            .finish()
    }
}

impl Registration {
    /// The procedure.
    pub fn procedure(&self) -> &str {
        &self.procedure
    }

    /// Its hub registration id on the current connection; `None` while
    /// disconnected or being restored.
    pub fn id(&self) -> Option<u64> {
        *self.status.borrow()
    }

    /// The hub registration id as a watch: `Some(id)` while registered,
    /// `None` while disconnected or being restored, a new id after each
    /// reconnect.
    ///
    /// ```no_run
    /// # async fn run(reg: plexus_client::Registration) {
    /// let mut status = reg.status();
    /// // Wait until it is registered again after a reconnect.
    /// status.wait_for(|id| id.is_some()).await.ok();
    /// # }
    /// ```
    pub fn status(&self) -> watch::Receiver<Option<u64>> {
        self.status.clone()
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.reaper.push(Dropped::Registration(self.local));
    }
}

fn encode_answer<T: Encode<()>>(r: Result<T, WireError>) -> Result<RawValue, WireError> {
    r.and_then(|v| {
        RawValue::encode(&v)
            .map_err(|_| WireError::new(ErrorCode::Internal, "the answer could not be encoded"))
    })
}

impl Client {
    /// Offers `procedure` through the hub with the default
    /// [`RegisterOptions`]: each call routed here runs `handler` with the
    /// [`Invocation`], and its result (or error) is the caller's answer.
    ///
    /// See [`register_with`](Self::register_with).
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::Invocation;
    /// use plexus_client::protocol::WireError;
    /// let reg = client
    ///     .register("svc.greet", |inv: Invocation| async move {
    ///         Ok::<_, WireError>(format!("hello {}", inv.caller.sub))
    ///     })
    ///     .await?;
    /// // … serve until `reg` is dropped.
    /// # Ok(()) }
    /// ```
    pub async fn register<F, Fut, T>(
        &self,
        procedure: impl Into<String>,
        handler: F,
    ) -> Result<Registration, Error>
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, WireError>> + Send + 'static,
        T: Encode<()> + Send + 'static,
    {
        self.register_with(procedure, RegisterOptions::new(), handler)
            .await
    }

    /// Offers `procedure` with `options`; see [`register`](Self::register).
    ///
    /// Resolves once the hub registered it, within the call timeout.
    /// Errors: [`Error::Remote`] with `forbidden` (the token's
    /// `rpc_register` does not cover it), `conflict` (another policy than
    /// the procedure's other callees, or a second callee of a `single`
    /// procedure), `invalid_params`, `too_many_requests`.
    ///
    /// Each invocation runs in a task of its own, at most
    /// `max_concurrency` at once (the hub queues the rest). When the hub
    /// cancels an invocation (the caller cancelled or left, or the deadline
    /// passed) the handler's future is dropped. A handler that panics
    /// answers `internal`. After a reconnect the procedure is registered
    /// again with the same options; a refusal then (`conflict` while the
    /// hub has not yet seen the old connection end) is retried every
    /// 200 ms for about 10 s.
    pub async fn register_with<F, Fut, T>(
        &self,
        procedure: impl Into<String>,
        options: RegisterOptions,
        handler: F,
    ) -> Result<Registration, Error>
    where
        F: Fn(Invocation) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<T, WireError>> + Send + 'static,
        T: Encode<()> + Send + 'static,
    {
        let handler = RpcHandler::Unary(Arc::new(move |inv| {
            let fut = handler(inv);
            async move { encode_answer(fut.await) }.boxed()
        }));
        self.register_handler(procedure.into(), options, handler)
            .await
    }

    /// Offers `procedure` with a handler whose answer is a stream of
    /// progressive results: each item is one chunk for the caller (the
    /// last one final), an `Err` item ends the call with that error
    /// (chunks sent before it stand), and an empty stream answers one
    /// final chunk of `null`.
    ///
    /// The stream is read only as the hub grants credit (§25.7): at most
    /// the invocation's window plus the credit received so far of
    /// non-final chunks are sent, and one more item is read ahead (to
    /// know which chunk is final). A slow caller therefore pauses the
    /// stream instead of filling the hub. Otherwise as
    /// [`register_with`](Self::register_with).
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::{Invocation, RegisterOptions};
    /// use plexus_client::protocol::WireError;
    /// let reg = client
    ///     .register_stream("svc.count", RegisterOptions::new(), |inv: Invocation| {
    ///         let n: u32 = inv.decode().unwrap_or(3);
    ///         futures_util::stream::iter((1..=n).map(Ok::<_, WireError>))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn register_stream<F, S, T>(
        &self,
        procedure: impl Into<String>,
        options: RegisterOptions,
        handler: F,
    ) -> Result<Registration, Error>
    where
        F: Fn(Invocation) -> S + Send + Sync + 'static,
        S: Stream<Item = Result<T, WireError>> + Send + 'static,
        T: Encode<()> + Send + 'static,
    {
        let handler =
            RpcHandler::Stream(Arc::new(move |inv| handler(inv).map(encode_answer).boxed()));
        self.register_handler(procedure.into(), options, handler)
            .await
    }

    async fn register_handler(
        &self,
        procedure: String,
        options: RegisterOptions,
        handler: RpcHandler,
    ) -> Result<Registration, Error> {
        let local = self.inner.locals.fetch_add(1, Ordering::Relaxed);
        let (status, status_rx) = watch::channel(None);
        let (tx, rx) = reply();
        let spec = RegSpec {
            procedure: procedure.clone(),
            policy: options.policy,
            max_concurrency: u64::from(options.max_concurrency.clamp(1, MAX_RPC_CONCURRENCY)),
            disclose_caller: options.disclose_caller,
        };
        // Dropping it (on timeout too) unregisters; for a refused one that
        // is a no-op.
        let reg = Registration {
            local,
            procedure,
            status: status_rx,
            reaper: self.inner.reaper.clone(),
            _cmd: self.inner.cmd.clone(),
        };
        let wait = async {
            self.send(Command::Register {
                local,
                spec,
                handler,
                status,
                reply: tx,
            })
            .await?;
            rx.await.unwrap_or_else(|| Err(self.closed()))
        };
        match tokio::time::timeout(self.inner.settings.call_timeout, wait).await {
            Ok(Ok(())) => Ok(reg),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Calls the routed `procedure` with `params` and returns its result,
    /// within the client's call timeout; see
    /// [`rpc_call_with`](Self::rpc_call_with).
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use plexus_client::protocol::ErrorCode;
    /// match client.rpc_call("svc.greet", &()).await {
    ///     Ok(v) => println!("{:?}", v.decode::<String>()),
    ///     // Nobody serves it now: retry later.
    ///     Err(e) if e.code() == Some(&ErrorCode::NoCallee) => {}
    ///     // The callee died with the call: it may or may not have run.
    ///     Err(e) if e.code() == Some(&ErrorCode::CalleeLost) => {}
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn rpc_call<P: Encode<()>>(
        &self,
        procedure: &str,
        params: &P,
    ) -> Result<RawValue, Error> {
        self.rpc_call_with(procedure, params, &CallOptions::new())
            .await
    }

    /// Calls the routed `procedure` with `params` and `options`.
    ///
    /// The deadline (`options.timeout`, else the call timeout) is sent to
    /// the hub, which enforces it; the SDK waits [`RPC_TIMEOUT_SLACK`]
    /// longer for the hub's answer. Dropping the future cancels the call
    /// (the callee is interrupted). A progressive answer's chunks are
    /// dropped and only the final chunk's data is returned: use
    /// [`rpc_call_stream`](Self::rpc_call_stream) to see them.
    ///
    /// Errors are [`Error::Remote`] with the hub's code: `no_callee`
    /// (nobody registered it: answered at once; retryable), `callee_lost`
    /// (the callee's connection ended with the call in flight; it may have
    /// taken effect), `timeout` (the deadline passed; the callee was
    /// interrupted), `too_many_requests` (the procedure's queue is full),
    /// `forbidden`, or the callee's own error, relayed unchanged.
    /// [`Error::ConnectionLost`] if this client's connection drops first
    /// (not resent), [`Error::Timeout`] if the hub stays silent.
    pub async fn rpc_call_with<P: Encode<()>>(
        &self,
        procedure: &str,
        params: &P,
        options: &CallOptions,
    ) -> Result<RawValue, Error> {
        let timeout = options.timeout.unwrap_or(self.inner.settings.call_timeout);
        let id = self.next_id();
        let frame = call_frame(id, procedure, params, Some(timeout), options.key.as_deref())?;
        let (tx, rx) = reply();
        self.submit(
            id,
            frame.into(),
            Pending::Call(tx),
            rx,
            timeout.saturating_add(RPC_TIMEOUT_SLACK),
        )
        .await
    }

    /// Calls the routed `procedure` and streams its progressive results:
    /// each chunk's data, the final chunk's last, then `None`; a callee
    /// answering with a plain result yields that one item. Errors as
    /// [`rpc_call_with`](Self::rpc_call_with), as the stream's one `Err`
    /// item. Dropping the stream cancels the call.
    ///
    /// The stream buffers at most
    /// [`stream_buffer`](crate::ClientBuilder::stream_buffer) chunks; while
    /// it is full this client's connection reads nothing more (other calls
    /// and events on it wait too), so the hub relays no more and the
    /// callee, out of credit, pauses: a slow consumer throttles the callee
    /// rather than losing chunks. Consume it promptly, or use a client of
    /// its own for slow consumers.
    ///
    /// ```no_run
    /// # async fn run(client: plexus_client::Client) -> Result<(), plexus_client::Error> {
    /// use futures_util::StreamExt;
    /// use plexus_client::CallOptions;
    /// let opts = CallOptions::new().timeout(std::time::Duration::from_secs(60));
    /// let mut progress = client.rpc_call_stream("svc.resize", &("img-42", 256u32), &opts).await?;
    /// while let Some(item) = progress.next().await {
    ///     println!("{:?}", item?.decode::<u32>());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn rpc_call_stream<P: Encode<()>>(
        &self,
        procedure: &str,
        params: &P,
        options: &CallOptions,
    ) -> Result<ChunkStream, Error> {
        let id = self.next_id();
        let frame = call_frame(
            id,
            procedure,
            params,
            options.timeout,
            options.key.as_deref(),
        )?;
        let queue = Arc::new(ChunkQueue::paced(
            self.inner.settings.stream_buffer,
            self.inner.reaper.clone(),
        ));
        self.open_stream(id, frame, queue).await
    }
}

/// The frame of an `rpc.call`.
fn call_frame<P: Encode<()>>(
    id: u64,
    procedure: &str,
    params: &P,
    timeout: Option<Duration>,
    key: Option<&str>,
) -> Result<Vec<u8>, Error> {
    let params = RawValue::encode(params).map_err(Error::encode)?;
    let mut p = CallParams::new(procedure).with_params(params.as_raw_ref());
    if let Some(t) = timeout {
        let ms = u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1);
        p = p.with_timeout_ms(ms);
    }
    if let Some(k) = key {
        p = p.with_key(k);
    }
    encode_request(id, Call::NAME, &p).map_err(Error::encode)
}
