//! A connection as the rest of the hub sees it: identity, its outbound
//! queue (which is also its mailbox for close requests and commands from
//! other tasks) and its subscription record. Shared by the broker and
//! presence as `Arc<Conn>`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use plexus_protocol::RawValue;
use plexus_protocol::topic::Pattern;

use crate::outbound::Outbound;

/// A hub-wide unique connection number.
pub type ConnId = u64;

/// An authenticated connection.
#[derive(Debug)]
pub struct Conn {
    /// Hub-wide unique number.
    pub id: ConnId,
    /// The session id announced to the client and shown in presence.
    pub session: Arc<str>,
    /// The authenticated user (`sub`), set once by `auth`.
    user: OnceLock<Arc<str>>,
    /// Frames waiting for the session's driver, and its mailbox.
    pub out: Outbound,
    /// Presence info set with `presence.set`.
    pub info: Mutex<Option<RawValue>>,
    /// What the connection is subscribed to: written by the
    /// [`Broker`](crate::broker::Broker) before the index, so dropping the
    /// connection always finds everything to remove.
    pub subscriptions: Mutex<Vec<Subscription>>,
    /// Whether the connection ever registered a procedure: only then does
    /// its end consult the RPC router.
    pub rpc_callee: std::sync::atomic::AtomicBool,
}

/// Something another task asks a connection's session to do; queued with
/// [`Outbound::command`](crate::outbound::Outbound::command).
#[derive(Debug)]
pub enum Command {
    /// Send request `method` with `params` to the client (a
    /// server-initiated request, decision P20) and answer `reply` with the
    /// client's result or error.
    Call {
        /// The method the client serves.
        method: String,
        /// Its params.
        params: RawValue,
        /// How long to wait for the client's answer.
        timeout: Duration,
        /// Where the answer goes.
        reply: tokio::sync::oneshot::Sender<Result<RawValue, crate::session::error::RequestError>>,
    },
    /// Invoke a routed call at this connection's client (an `rpc.invoke`
    /// server request whose result may stream). Its chunks (at most
    /// `window` beyond the credit [`Command::Credit`] grants: more
    /// withdraw the request, [`InvokeEnd::Overrun`]) and its end go to
    /// `reply`, the caller's connection.
    Invoke {
        /// The hub's call id, which [`Command::Withdraw`] names.
        call: u64,
        /// The `rpc.invoke` params.
        params: RawValue,
        /// How long the client may take (the call's deadline, with slack).
        timeout: Duration,
        /// The chunk credit the invocation announced.
        window: u64,
        /// Where its chunks and its end go.
        reply: ReplyTo,
    },
    /// The caller relayed `chunks` more chunks of call `call`: the callee
    /// may send as many more (an `rpc.credit` notification tells it).
    Credit {
        /// The hub's call id.
        call: u64,
        /// Chunks granted.
        chunks: u64,
    },
    /// Withdraw the invocation of call `call` (the caller cancelled, left
    /// or timed out): a `cancel` goes to the client.
    Withdraw {
        /// The hub's call id.
        call: u64,
    },
    /// To a caller's connection: news of its routed call `call`, which
    /// answers its request `id`.
    Routed {
        /// The caller's request.
        id: u64,
        /// The hub's call id.
        call: u64,
        /// What happened.
        event: RoutedEvent,
    },
}

/// What a caller's session hears of a routed call (decision R14).
#[derive(Debug)]
pub enum RoutedEvent {
    /// The queued call has its callee now: invoke it.
    Assigned(crate::rpc::Assignment<crate::rpc::Endpoint>),
    /// A non-final chunk of the callee's, in order.
    Chunk(RawValue),
    /// How the invocation ended.
    End(InvokeEnd),
}

/// How an invocation ([`Command::Invoke`]) ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvokeEnd {
    /// A response with a result.
    Result(RawValue),
    /// A final chunk with this data.
    Final(RawValue),
    /// An error response.
    Error(plexus_protocol::WireError),
    /// No answer within the timeout (a `cancel` was sent).
    TimedOut,
    /// The connection closed before an answer.
    Lost,
    /// The client sent more chunks than its credit allowed.
    Overrun,
    /// The request could not be sent: the client has too many requests of
    /// the server's in flight, or the invocation exceeds `max-frame-size`.
    Refused(crate::session::error::RequestError),
    /// The queued call's procedure lost its last callee before a slot
    /// freed.
    NoCallee,
}

/// The way back to a routed call's caller: its connection, its request
/// and the hub's call id. Sending the end consumes it; dropping it
/// unsent tells the caller [`InvokeEnd::Lost`] (the callee's session
/// ended), or [`InvokeEnd::NoCallee`] for a queued call's waiter, so a
/// call is never left unanswered.
#[derive(Debug)]
pub struct ReplyTo {
    back: Back,
    id: u64,
    call: u64,
    /// What a drop reports.
    dropped: Dropped,
}

/// Where a [`ReplyTo`] leads.
#[derive(Debug)]
enum Back {
    /// The caller's connection, here.
    Conn(Arc<Conn>),
    /// A caller on another node, through the cluster's RPC link.
    Remote(Arc<dyn Backward>),
}

/// What carries a routed call's news back to its caller on another node
/// (the cluster's RPC link).
pub trait Backward: Send + Sync + std::fmt::Debug {
    /// Passes on `event` of the call the caller's node knows as `id`
    /// (its call id), here call `call`; false if it cannot.
    fn back(&self, id: u64, call: u64, event: RoutedEvent) -> bool;
}

/// What dropping a [`ReplyTo`] unsent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dropped {
    Lost,
    NoCallee,
    /// Answered or forgotten: nothing.
    Nothing,
}

impl ReplyTo {
    /// The way back to request `id` of `conn` for call `call`, reporting
    /// [`InvokeEnd::Lost`] if dropped unanswered.
    pub fn new(conn: Arc<Conn>, id: u64, call: u64) -> ReplyTo {
        ReplyTo {
            back: Back::Conn(conn),
            id,
            call,
            dropped: Dropped::Lost,
        }
    }

    /// A queued call's waiter: reports [`InvokeEnd::NoCallee`] if dropped
    /// before [`assigned`](ReplyTo::assigned).
    pub fn waiter(conn: Arc<Conn>, id: u64, call: u64) -> ReplyTo {
        ReplyTo {
            back: Back::Conn(conn),
            id,
            call,
            dropped: Dropped::NoCallee,
        }
    }

    /// The way back to a caller on another node, whose node knows the
    /// call as `id`, here call `call`; reports [`InvokeEnd::Lost`] if
    /// dropped unanswered.
    pub fn remote(link: Arc<dyn Backward>, id: u64, call: u64) -> ReplyTo {
        ReplyTo {
            back: Back::Remote(link),
            id,
            call,
            dropped: Dropped::Lost,
        }
    }

    /// The hub's call id.
    pub fn call(&self) -> u64 {
        self.call
    }

    fn send(&self, event: RoutedEvent) -> bool {
        match &self.back {
            Back::Conn(conn) => conn
                .out
                .routed(Command::Routed {
                    id: self.id,
                    call: self.call,
                    event,
                })
                .is_ok(),
            Back::Remote(link) => link.back(self.id, self.call, event),
        }
    }

    /// Passes on a chunk; false if the caller is gone.
    pub fn chunk(&self, data: RawValue) -> bool {
        self.send(RoutedEvent::Chunk(data))
    }

    /// Passes on the end.
    pub fn end(mut self, end: InvokeEnd) {
        self.dropped = Dropped::Nothing;
        self.send(RoutedEvent::End(end));
    }

    /// Hands a queued call its callee; false if the caller is gone.
    pub fn assigned(mut self, a: crate::rpc::Assignment<crate::rpc::Endpoint>) -> bool {
        self.dropped = Dropped::Nothing;
        self.send(RoutedEvent::Assigned(a))
    }

    /// Drops it without a word (the caller withdrew the call).
    pub fn forget(mut self) {
        self.dropped = Dropped::Nothing;
    }
}

impl Drop for ReplyTo {
    fn drop(&mut self) {
        let end = match std::mem::replace(&mut self.dropped, Dropped::Nothing) {
            Dropped::Lost => InvokeEnd::Lost,
            Dropped::NoCallee => InvokeEnd::NoCallee,
            Dropped::Nothing => return,
        };
        self.send(RoutedEvent::End(end));
    }
}

/// One subscription of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The pattern as subscribed.
    pub pattern: Pattern,
    /// Whether the connection joined the topic's presence with it.
    pub presence: bool,
    /// While a durable subscribe catches up: the id of its request. Such a
    /// subscription is recorded (reserved) but not in the index until it
    /// goes live; `None` once indexed.
    pub pending: Option<u64>,
}

impl Conn {
    /// A connection, not yet authenticated, with an empty queue of
    /// `max_outbound_bytes`.
    pub fn new(id: ConnId, session: Arc<str>, max_outbound_bytes: usize) -> Conn {
        Conn {
            id,
            session,
            user: OnceLock::new(),
            out: Outbound::new(max_outbound_bytes),
            info: Mutex::new(None),
            subscriptions: Mutex::new(Vec::new()),
            rpc_callee: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The authenticated user, or `""` before `auth` succeeded.
    pub fn user(&self) -> &str {
        self.user.get().map_or("", |u| u)
    }

    /// The authenticated user as shared text, once authenticated.
    pub fn user_arc(&self) -> Option<&Arc<str>> {
        self.user.get()
    }

    /// Records the authenticated user; only the first call has an effect.
    pub fn set_user(&self, user: Arc<str>) {
        let _ = self.user.set(user);
    }
}
