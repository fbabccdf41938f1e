//! The open, typed method registry.
//!
//! Every method the hub serves after `auth` is a handler registered here by
//! its [`RpcMethod`] type (or, for a raw one like `ping`, by name), with
//! [`Meta`]data the session core checks before it runs. Three kinds:
//!
//! - [`Registry::sync`]: runs to completion on the connection's task,
//!   before the next frame is read; it never waits.
//! - [`Registry::asynchronous`]: validates synchronously, then returns a
//!   future that runs concurrently with the connection's other requests,
//!   bounded by `request_timeout`, cancellable, panic-isolated.
//! - [`Registry::streamed`]: like asynchronous, but sends chunk frames with
//!   credit through a [`ChunkSink`]; its return value is the final chunk's
//!   data.
//!
//! A [`Registry::fallback`] takes names the table does not hold (routed RPC
//! will use it). Adding a method is a handler function and one
//! registration; the session loop does not change.
//!
//! The core is given only the [`MethodTable`] (names, kinds, metadata); the
//! driver holds the registry and runs the handlers.

use std::fmt;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use plexus_protocol::{RawValue, RpcMethod};

use super::context::Ctx;
use super::error::{RequestError, params};
use super::stream::ChunkSink;
pub use super::table::Meta;
use super::table::{FALLBACK, Kind, MethodIndex, MethodTable};

/// What an asynchronous handler's future yields: the encoded result item.
pub type Reply = BoxFuture<'static, Result<Bytes, RequestError>>;

/// A synchronous handler, after typing: params in, encoded result out.
pub type SyncFn = Box<dyn Fn(&mut Ctx<'_>, &RawValue) -> Result<Bytes, RequestError> + Send + Sync>;

/// An asynchronous handler, after typing.
pub type AsyncFn =
    Box<dyn Fn(&mut Ctx<'_>, &RawValue) -> Result<Reply, RequestError> + Send + Sync>;

/// A streamed handler, after typing: its future yields the final chunk's
/// encoded data.
pub type StreamFn =
    Box<dyn Fn(&mut Ctx<'_>, &RawValue, ChunkSink) -> Result<Reply, RequestError> + Send + Sync>;

/// How a [`Registry::flexible`] handler answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Terminal {
    /// A plain response `[1, id, data]` (no chunk was sent).
    Result,
    /// The final chunk `[3, id, seq, true, data]` after the chunks sent.
    Final,
}

/// Work to run on the connection's task right after the terminal frame is
/// queued (a durable subscription goes live there, so its live events
/// follow its answer). Not run if the connection is closing.
pub type After = Box<dyn FnOnce() + Send>;

/// What a [`Registry::flexible`] handler's future yields.
pub struct Answer {
    /// Response or final chunk.
    pub terminal: Terminal,
    /// The encoded result or final-chunk data.
    pub data: Bytes,
    /// Run after the terminal frame is queued.
    pub after: Option<After>,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer")
            .field("terminal", &self.terminal)
            .field("len", &self.data.len())
            .field("after", &self.after.is_some())
            .finish()
    }
}

impl Answer {
    /// A plain response.
    pub fn result(data: Bytes) -> Self {
        Answer {
            terminal: Terminal::Result,
            data,
            after: None,
        }
    }

    /// A final chunk.
    pub fn final_chunk(data: Bytes) -> Self {
        Answer {
            terminal: Terminal::Final,
            data,
            after: None,
        }
    }

    /// Runs `f` after the terminal frame is queued.
    pub fn then(mut self, f: impl FnOnce() + Send + 'static) -> Self {
        self.after = Some(Box::new(f));
        self
    }
}

/// What a flexible handler's future yields.
pub type FlexReply = BoxFuture<'static, Result<Answer, RequestError>>;

/// A routed handler (routed RPC's `rpc.call`): its synchronous part routes
/// the request, which the callee's connection then answers through the
/// session's relay (`session::relay`, decision R14).
pub type RoutedFn = Box<
    dyn Fn(&mut Ctx<'_>, &RawValue) -> Result<super::relay::RoutedStart, RequestError>
        + Send
        + Sync,
>;

/// A flexible handler: a streamed one that may answer with a plain
/// response instead of a final chunk, and run work after its answer.
pub type FlexFn = Box<
    dyn Fn(&mut Ctx<'_>, &RawValue, ChunkSink) -> Result<FlexReply, RequestError> + Send + Sync,
>;

/// The fallback: gets the method name too.
pub type FallbackFn =
    Box<dyn Fn(&mut Ctx<'_>, &str, &RawValue) -> Result<Reply, RequestError> + Send + Sync>;

/// A registered handler.
pub enum Handler {
    /// See [`Registry::sync`].
    Sync(SyncFn),
    /// See [`Registry::asynchronous`].
    Async(AsyncFn),
    /// See [`Registry::streamed`].
    Streamed(StreamFn),
    /// See [`Registry::flexible`].
    Flexible(FlexFn),
    /// See [`Registry::routed`].
    Routed(RoutedFn),
}

impl fmt::Debug for Handler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Handler::Sync(_) => "Sync",
            Handler::Async(_) => "Async",
            Handler::Streamed(_) => "Streamed",
            Handler::Flexible(_) => "Flexible",
            Handler::Routed(_) => "Routed",
        })
    }
}

/// Encodes a result item.
pub fn encode<T: minicbor::Encode<()>>(value: &T) -> Result<Bytes, RequestError> {
    minicbor::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| RequestError::internal("cannot encode the result"))
}

/// Methods and their handlers.
#[derive(Default)]
pub struct Registry {
    table: MethodTable,
    handlers: Vec<Handler>,
    fallback: Option<FallbackFn>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("table", &self.table)
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Registry {
        Registry::default()
    }

    fn add(&mut self, name: &str, meta: Meta, handler: Handler) {
        let kind = match &handler {
            Handler::Sync(_) => Kind::Sync,
            Handler::Async(_) => Kind::Async,
            Handler::Streamed(_) | Handler::Flexible(_) | Handler::Routed(_) => Kind::Streamed,
        };
        let i = usize::from(self.table.add(name, kind, meta));
        if i == self.handlers.len() {
            self.handlers.push(handler);
        } else {
            self.handlers[i] = handler;
        }
    }

    /// Registers a synchronous handler for `M`: its params are decoded
    /// (failures answer `invalid_params`) and its result encoded here.
    pub fn sync<M, F>(&mut self, meta: Meta, f: F)
    where
        M: RpcMethod,
        F: for<'p> Fn(&mut Ctx<'_>, M::Params<'p>) -> Result<M::Result, RequestError>
            + Send
            + Sync
            + 'static,
    {
        self.add(
            M::NAME,
            meta,
            Handler::Sync(Box::new(move |ctx, raw| {
                let p = params::<M::Params<'_>>(raw)?;
                encode(&f(ctx, p)?)
            })),
        );
    }

    /// Registers a synchronous handler by name that takes the raw params
    /// and returns the encoded result (no copy: `ping` echoes a slice of
    /// the request frame).
    pub fn sync_raw<F>(&mut self, name: &str, meta: Meta, f: F)
    where
        F: Fn(&mut Ctx<'_>, &RawValue) -> Result<Bytes, RequestError> + Send + Sync + 'static,
    {
        self.add(name, meta, Handler::Sync(Box::new(f)));
    }

    /// Registers an asynchronous handler for `M`: it checks its params and
    /// returns the future that produces the result.
    pub fn asynchronous<M, F>(&mut self, meta: Meta, f: F)
    where
        M: RpcMethod,
        M::Result: Send + 'static,
        F: for<'p> Fn(
                &mut Ctx<'_>,
                M::Params<'p>,
            )
                -> Result<BoxFuture<'static, Result<M::Result, RequestError>>, RequestError>
            + Send
            + Sync
            + 'static,
    {
        self.add(
            M::NAME,
            meta,
            Handler::Async(Box::new(move |ctx, raw| {
                let p = params::<M::Params<'_>>(raw)?;
                let fut = f(ctx, p)?;
                Ok(Box::pin(async move { encode(&fut.await?) }))
            })),
        );
    }

    /// Registers a streamed handler for `M`: its future sends chunks through
    /// the [`ChunkSink`] and yields the final chunk's data.
    pub fn streamed<M, F>(&mut self, meta: Meta, f: F)
    where
        M: RpcMethod,
        M::Result: Send + 'static,
        F: for<'p> Fn(
                &mut Ctx<'_>,
                M::Params<'p>,
                ChunkSink,
            )
                -> Result<BoxFuture<'static, Result<M::Result, RequestError>>, RequestError>
            + Send
            + Sync
            + 'static,
    {
        self.add(
            M::NAME,
            meta,
            Handler::Streamed(Box::new(move |ctx, raw, sink| {
                let p = params::<M::Params<'_>>(raw)?;
                let fut = f(ctx, p, sink)?;
                Ok(Box::pin(async move { encode(&fut.await?) }))
            })),
        );
    }

    /// Registers an asynchronous handler by name that decodes its own
    /// params and returns a future of the encoded result (results encoded
    /// straight from a storage page, without an intermediate type).
    pub fn asynchronous_raw<F>(&mut self, name: &str, meta: Meta, f: F)
    where
        F: Fn(&mut Ctx<'_>, &RawValue) -> Result<Reply, RequestError> + Send + Sync + 'static,
    {
        self.add(name, meta, Handler::Async(Box::new(f)));
    }

    /// Registers a flexible handler by name: it runs like a streamed one
    /// (chunks with credit through the [`ChunkSink`]), but its [`Answer`]
    /// says whether it ends with a plain response or a final chunk, and may
    /// carry work to run right after that frame is queued. Its synchronous
    /// part runs before the next frame is read, like a sync handler's.
    pub fn flexible<F>(&mut self, name: &str, meta: Meta, f: F)
    where
        F: Fn(&mut Ctx<'_>, &RawValue, ChunkSink) -> Result<FlexReply, RequestError>
            + Send
            + Sync
            + 'static,
    {
        self.add(name, meta, Handler::Flexible(Box::new(f)));
    }

    /// Registers a routed handler by name: its synchronous part (run before
    /// the next frame is read) hands the request to the router, and
    /// another connection's session answers it (see `session::relay`).
    pub fn routed<F>(&mut self, name: &str, meta: Meta, f: F)
    where
        F: Fn(&mut Ctx<'_>, &RawValue) -> Result<super::relay::RoutedStart, RequestError>
            + Send
            + Sync
            + 'static,
    {
        self.add(name, meta, Handler::Routed(Box::new(f)));
    }

    /// Sends every name the table does not hold to `f`, as an asynchronous
    /// request (routed RPC will use it). It answers
    /// [`RequestError::MethodNotFound`] for names it does not serve; with a
    /// fallback registered, unknown names pass the in-flight checks before
    /// that answer.
    pub fn fallback<F>(&mut self, meta: Meta, f: F)
    where
        F: Fn(&mut Ctx<'_>, &str, &RawValue) -> Result<Reply, RequestError> + Send + Sync + 'static,
    {
        self.table.set_fallback(Kind::Async, meta);
        self.fallback = Some(Box::new(f));
    }

    /// The table the core consults.
    pub fn table(&self) -> &MethodTable {
        &self.table
    }

    /// The handler at `index` (see [`MethodTable::lookup`]).
    pub fn handler(&self, index: MethodIndex) -> Option<&Handler> {
        self.handlers.get(usize::from(index))
    }

    /// The fallback, if one is registered.
    pub fn fallback_handler(&self) -> Option<&FallbackFn> {
        self.fallback.as_ref()
    }

    /// Whether `index` is the fallback.
    pub fn is_fallback(index: MethodIndex) -> bool {
        index == FALLBACK
    }
}
