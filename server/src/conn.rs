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
    /// server request whose result may stream): its non-final chunks go
    /// to `chunks` (bounded by the call's credit window: a chunk that
    /// finds it full withdraws the request, [`InvokeEnd::Overrun`]), its
    /// end to `done`.
    Invoke {
        /// The hub's call id, which [`Command::Withdraw`] names.
        call: u64,
        /// The `rpc.invoke` params.
        params: RawValue,
        /// How long the client may take (the call's deadline, with slack).
        timeout: Duration,
        /// The data of each non-final chunk, in order.
        chunks: tokio::sync::mpsc::Sender<RawValue>,
        /// How the invocation ended.
        done: tokio::sync::oneshot::Sender<InvokeEnd>,
    },
    /// Withdraw the invocation of call `call` (the caller cancelled, left
    /// or timed out): a `cancel` goes to the client.
    Withdraw {
        /// The hub's call id.
        call: u64,
    },
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
