//! The v1 method catalog: names, directions, and the typed params and
//! results of each method.
//!
//! The catalog is open: later revisions add methods (durable history, record
//! sync, routed RPC) by adding names here and types in [`crate::methods`];
//! nothing in the frame layer changes.

use std::borrow::Cow;

use minicbor::{Decode, Encode};

use crate::frame::MethodName;

macro_rules! methods {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, $kind:ident; )*) => {
        /// A method or notification defined by plexus.v1.
        ///
        /// ```
        /// use plexus_protocol::{Method, MethodKind};
        /// assert_eq!(Method::from_name("presence.get"), Some(Method::PresenceGet));
        /// assert_eq!(Method::from_name("history.latest"), Some(Method::HistoryLatest));
        /// assert_eq!(Method::Event.kind(), MethodKind::ServerNotification);
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum Method {
            $( $(#[$doc])* $variant, )*
        }

        impl Method {
            /// Every method this version defines.
            pub const ALL: &'static [Method] = &[$( Method::$variant, )*];

            /// The wire name.
            pub const fn name(self) -> &'static str {
                match self { $( Method::$variant => $name, )* }
            }

            /// The method for a wire name, if this version defines it.
            pub fn from_name(name: &str) -> Option<Method> {
                match name {
                    $( $name => Some(Method::$variant), )*
                    _ => None,
                }
            }

            /// Whether it is a request or a notification, and who sends it.
            pub const fn kind(self) -> MethodKind {
                match self { $( Method::$variant => MethodKind::$kind, )* }
            }
        }
    };
}

/// How a method travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodKind {
    /// A request the client sends and the server answers. (The server
    /// sends requests only for methods outside this catalog that the client
    /// opted into, `docs/protocol.md` §6.4.)
    Request,
    /// A notification the client sends (no answer). `cancel` is one, and
    /// the server sends it too, to withdraw one of its own requests (§8).
    ClientNotification,
    /// A notification the server sends (no answer).
    ServerNotification,
}

methods! {
    /// Authenticate the connection; must be the first frame.
    Auth = "auth", Request;
    /// Swap in a fresh token for the same subject.
    AuthRefresh = "auth.refresh", Request;
    /// Application-level round trip; the result echoes the params.
    Ping = "ping", Request;
    /// Subscribe to a topic or pattern.
    Subscribe = "subscribe", Request;
    /// Drop a subscription.
    Unsubscribe = "unsubscribe", Request;
    /// Publish an event on a topic.
    Publish = "publish", Request;
    /// List the members present on a topic.
    PresenceGet = "presence.get", Request;
    /// Set this connection's presence info.
    PresenceSet = "presence.set", Request;
    /// A page of a durable topic's stored events (`docs/protocol.md` §23.7).
    History = "history", Request;
    /// The newest stored event of each topic under a pattern (§23.8).
    HistoryLatest = "history.latest", Request;
    /// Apply a batch of record changes to a sync space (§24).
    SyncPush = "sync.push", Request;
    /// Stream a sync space's changes after a cursor, optionally live (§24).
    SyncPull = "sync.pull", Request;
    /// A sync space's collections, usage and positions (§24).
    SyncInfo = "sync.info", Request;
    /// Offer a procedure for routed calls (§25).
    RpcRegister = "rpc.register", Request;
    /// Withdraw a registration (§25).
    RpcUnregister = "rpc.unregister", Request;
    /// Call a procedure some client registered (§25).
    RpcCall = "rpc.call", Request;
    /// The hub's procedures and callees, for operators (§25).
    RpcList = "rpc.list", Request;
    /// Abort an in-flight request of the sender's (either direction, §8).
    Cancel = "cancel", ClientNotification;
    /// An event published on a subscribed topic.
    Event = "event", ServerNotification;
    /// A member joined a topic's presence (or changed its info).
    PresenceJoin = "presence.join", ServerNotification;
    /// A member left a topic's presence.
    PresenceLeave = "presence.leave", ServerNotification;
    /// The session's token expires soon; call `auth.refresh`.
    TokenExpiring = "token.expiring", ServerNotification;
    /// The server is about to close the connection.
    Closing = "closing", ServerNotification;
    /// More chunks a streaming callee may send (§25.6).
    RpcCredit = "rpc.credit", ServerNotification;
}

/// Returns a static name for known methods and an owned one otherwise, so
/// decoding a frame of a known method allocates nothing for its name.
pub fn intern(name: &str) -> MethodName {
    match Method::from_name(name) {
        Some(m) => Cow::Borrowed(m.name()),
        None => Cow::Owned(name.to_owned()),
    }
}

/// A request method with typed params and result, for typed calls:
///
/// ```
/// use plexus_protocol::{RpcMethod, methods::Subscribe};
/// assert_eq!(Subscribe::NAME, "subscribe");
/// ```
pub trait RpcMethod {
    /// The wire name.
    const NAME: &'static str;
    /// The params type; it may borrow from the frame it is decoded from.
    type Params<'a>: Encode<()> + Decode<'a, ()>;
    /// The result type.
    type Result: Encode<()> + for<'b> Decode<'b, ()>;
}

/// A notification with typed params.
pub trait NotificationMethod {
    /// The wire name.
    const NAME: &'static str;
    /// The params type; it may borrow from the frame it is decoded from.
    type Params<'a>: Encode<()> + Decode<'a, ()>;
}
