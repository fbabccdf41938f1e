//! Requests the hub sends to the client (decision P20): the methods the
//! application serves, and the requests running on this connection.
//!
//! The hub's ids are its own id space. Each admitted request also gets a
//! local serial number, so an output that a cancelled handler produced
//! just before it was dropped can never be taken for the output of a
//! later request that reuses the id.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use plexus_protocol::{RawValue, WireError};

/// A unary handler: params in, one result out.
pub(crate) type UnaryFn =
    dyn Fn(RawValue) -> BoxFuture<'static, Result<RawValue, WireError>> + Send + Sync;

/// A streaming handler: params in, chunks out.
pub(crate) type StreamFn =
    dyn Fn(RawValue) -> BoxStream<'static, Result<RawValue, WireError>> + Send + Sync;

/// A routed procedure's unary handler: the invocation in, one result out.
pub(crate) type InvokeUnaryFn =
    dyn Fn(crate::rpc::Invocation) -> BoxFuture<'static, Result<RawValue, WireError>> + Send + Sync;

/// A routed procedure's streaming handler: progressive results out.
pub(crate) type InvokeStreamFn =
    dyn Fn(crate::rpc::Invocation) -> BoxStream<'static, Result<RawValue, WireError>> + Send + Sync;

/// What the application registered for a routed procedure.
#[derive(Clone)]
pub(crate) enum RpcHandler {
    /// Answers with one response.
    Unary(Arc<InvokeUnaryFn>),
    /// Answers with progressive results (chunks, the last one final).
    Stream(Arc<InvokeStreamFn>),
}

/// What the application registered for a method.
#[derive(Clone)]
pub(crate) enum Handler {
    /// Answers with one response.
    Unary(Arc<UnaryFn>),
    /// Answers with chunks (the last one final), or an error response.
    Stream(Arc<StreamFn>),
}

/// What a running handler produced.
#[derive(Debug)]
pub(crate) enum Output {
    /// One chunk of a streamed answer.
    Chunk {
        /// Its data.
        data: RawValue,
        /// Whether it is the last.
        fin: bool,
    },
    /// The terminal answer: a response (or, after chunks, an error).
    Done(Result<RawValue, WireError>),
}

struct Running {
    id: u64,
    next_seq: u64,
}

/// What to do with a request from the hub.
pub(crate) enum Admit {
    /// Nobody serves the method: answer `method_not_found`.
    NotServed,
    /// The concurrency bound is reached: answer `too_many_requests`.
    Busy,
    /// The id is already running (a hub bug): ignore the request.
    Duplicate,
    /// Run it.
    Run {
        /// The local serial of this request.
        serial: u64,
        /// Its handler.
        handler: Handler,
    },
}

/// The registry and the running requests.
pub(crate) struct Served {
    handlers: HashMap<String, Handler>,
    by_id: HashMap<u64, u64>,
    running: HashMap<u64, Running>,
    next_serial: u64,
    max: usize,
}

impl Served {
    /// At most `max` requests run at once.
    pub(crate) fn new(max: usize) -> Served {
        Served {
            handlers: HashMap::new(),
            by_id: HashMap::new(),
            running: HashMap::new(),
            next_serial: 1,
            max,
        }
    }

    /// Registers a handler; false if the method is already served.
    pub(crate) fn register(&mut self, method: String, handler: Handler) -> bool {
        if self.handlers.contains_key(&method) {
            return false;
        }
        self.handlers.insert(method, handler);
        true
    }

    /// Drops a method's handler (requests running keep running).
    pub(crate) fn unregister(&mut self, method: &str) -> bool {
        self.handlers.remove(method).is_some()
    }

    /// Decides what to do with request `id` for `method`.
    pub(crate) fn admit(&mut self, id: u64, method: &str) -> Admit {
        let Some(handler) = self.handlers.get(method) else {
            return Admit::NotServed;
        };
        if self.by_id.contains_key(&id) {
            return Admit::Duplicate;
        }
        if self.running.len() >= self.max {
            return Admit::Busy;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.by_id.insert(id, serial);
        self.running.insert(serial, Running { id, next_seq: 0 });
        Admit::Run {
            serial,
            handler: handler.clone(),
        }
    }

    /// Admits request `id` as an invocation of a routed procedure: its
    /// serial, or `None` for an id already running. Invocations are bounded
    /// by their registrations' `max_concurrency`, not by `max`.
    pub(crate) fn admit_invocation(&mut self, id: u64) -> Option<u64> {
        if self.by_id.contains_key(&id) {
            return None;
        }
        let serial = self.next_serial;
        self.next_serial += 1;
        self.by_id.insert(id, serial);
        self.running.insert(serial, Running { id, next_seq: 0 });
        Some(serial)
    }

    /// Whether `serial` still runs.
    pub(crate) fn is_running(&self, serial: u64) -> bool {
        self.running.contains_key(&serial)
    }

    /// The hub withdrew request `id`: its serial, if it was running.
    pub(crate) fn cancel(&mut self, id: u64) -> Option<u64> {
        let serial = self.by_id.remove(&id)?;
        self.running.remove(&serial);
        Some(serial)
    }

    /// For an output of `serial`: the hub's id and the `seq` of a chunk,
    /// or `None` when the request no longer runs (cancelled, or its
    /// connection is gone). A terminal output ends the request.
    pub(crate) fn route(&mut self, serial: u64, output: &Output) -> Option<(u64, u64)> {
        let run = self.running.get_mut(&serial)?;
        let (id, seq) = (run.id, run.next_seq);
        let terminal = match output {
            Output::Chunk { fin, .. } => {
                run.next_seq += 1;
                *fin
            }
            Output::Done(_) => true,
        };
        if terminal {
            self.running.remove(&serial);
            self.by_id.remove(&id);
        }
        Some((id, seq))
    }

    /// Ends a request early (its answer could not be sent).
    pub(crate) fn end(&mut self, serial: u64) {
        if let Some(run) = self.running.remove(&serial) {
            self.by_id.remove(&run.id);
        }
    }

    /// The connection is gone: the hub's ids mean nothing any more.
    pub(crate) fn connection_lost(&mut self) {
        self.by_id.clear();
        self.running.clear();
    }

    /// How many requests run.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }
}
