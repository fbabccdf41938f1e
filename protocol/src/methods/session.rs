//! Session methods: `auth`, `auth.refresh`, `ping`, `cancel`, and the
//! `token.expiring` and `closing` notifications.

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::raw::{RawRef, RawValue};

/// An empty map `{}`: the result of methods that return nothing else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Empty {}

/// `auth` params: `{0: token, ? 1: instance, ? 2: agent}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct AuthParams<'a> {
    /// The JWT (compact serialization).
    #[b(0)]
    pub token: &'a str,
    /// Client instance id (e.g. a device id). A newer connection of the same
    /// user with the same instance replaces the older one (close 4009).
    #[b(1)]
    pub instance: Option<&'a str>,
    /// Free-form client name and version, for logs and metrics.
    #[b(2)]
    pub agent: Option<&'a str>,
}

/// The limits the server announces in the `auth` result. A client must stay
/// within them; values are fixed for the life of the connection.
///
/// The map grows within v1 (new keys are additive), so the struct is
/// `#[non_exhaustive]`: start from [`ServerLimits::default`] and set fields.
///
/// ```
/// use plexus_protocol::methods::ServerLimits;
/// let mut l = ServerLimits::default();
/// l.max_frame_size = 1 << 20;
/// assert_eq!(l.max_depth, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ServerLimits {
    /// Largest frame the server accepts, in bytes.
    #[n(0)]
    pub max_frame_size: u64,
    /// Most requests in flight at once on one connection. Every request
    /// counts, whatever its method, from the moment the server reads it
    /// until its terminal frame is queued (§6.2).
    #[n(1)]
    pub max_in_flight: u64,
    /// Most subscriptions on one connection.
    #[n(2)]
    pub max_subscriptions: u64,
    /// Longest topic or pattern, in bytes.
    #[n(3)]
    pub max_topic_len: u64,
    /// Largest publish payload (`data`), in encoded bytes.
    #[n(4)]
    pub max_payload: u64,
    /// Largest presence info, in encoded bytes.
    #[n(5)]
    pub max_presence_info: u64,
    /// Interval of the server's WebSocket pings, in milliseconds.
    #[n(6)]
    pub ping_interval_ms: u64,
    /// Sustained request rate allowed, per second.
    #[n(7)]
    pub rate_per_sec: u64,
    /// Burst of requests allowed above the sustained rate.
    #[n(8)]
    pub rate_burst: u64,
    /// Deepest CBOR nesting the server accepts in a frame (§4.4). Absent
    /// (decoded as 0) from servers that predate it: assume 32.
    #[n(9)]
    #[cbor(default)]
    pub max_depth: u64,
    /// Largest page `presence.get` returns. Absent (0) from older servers:
    /// assume 1000.
    #[n(10)]
    #[cbor(default)]
    pub max_presence_page: u64,
    /// Most bytes of request frames in flight at once on one connection
    /// (the sum of the frame sizes of the requests not yet answered). Absent
    /// (0) from older servers: no separate bound.
    #[n(11)]
    #[cbor(default)]
    pub max_in_flight_bytes: u64,
}

/// `auth` result: `{0: session, 1: user, ? 2: expires_in_ms, 3: limits}`.
///
/// `#[non_exhaustive]`: the result may grow within v1; build it with
/// [`AuthResult::new`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct AuthResult {
    /// The server-assigned id of this connection.
    #[n(0)]
    pub session: String,
    /// The authenticated user (the token's `sub`).
    #[n(1)]
    pub user: String,
    /// Time until the session expires, in milliseconds: until the token's
    /// `exp` plus the server's clock leeway, when the server closes with 4002
    /// unless the token was refreshed. Absent if it never expires.
    #[n(2)]
    pub expires_in_ms: Option<u64>,
    /// The limits in force on this connection.
    #[n(3)]
    pub limits: ServerLimits,
}

impl ServerLimits {
    /// The defaults of the reference server (`docs/protocol.md` §10 and
    /// Appendix B), with every key set.
    pub const DEFAULTS: ServerLimits = ServerLimits {
        max_frame_size: 1_048_576,
        max_in_flight: 1024,
        max_subscriptions: 1024,
        max_topic_len: 256,
        max_payload: 262_144,
        max_presence_info: 1024,
        ping_interval_ms: 25_000,
        rate_per_sec: 100,
        rate_burst: 200,
        max_depth: 32,
        max_presence_page: 1000,
        max_in_flight_bytes: 8 * 1_048_576,
    };
}

impl AuthResult {
    /// An `auth` result.
    pub fn new(
        session: impl Into<String>,
        user: impl Into<String>,
        expires_in_ms: Option<u64>,
        limits: ServerLimits,
    ) -> AuthResult {
        AuthResult {
            session: session.into(),
            user: user.into(),
            expires_in_ms,
            limits,
        }
    }
}

/// `auth` — authenticate the connection. Must be the first frame.
#[derive(Debug)]
pub enum Auth {}
impl RpcMethod for Auth {
    const NAME: &'static str = "auth";
    type Params<'a> = AuthParams<'a>;
    type Result = AuthResult;
}

/// `auth.refresh` params: `{0: token}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct AuthRefreshParams<'a> {
    /// The new JWT; its `sub` must equal the session's user.
    #[b(0)]
    pub token: &'a str,
}

/// `auth.refresh` result: `{? 0: expires_in_ms}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct AuthRefreshResult {
    /// Time until the session expires with the new token (its `exp` plus
    /// the server's leeway), in milliseconds; absent if it never does.
    #[n(0)]
    pub expires_in_ms: Option<u64>,
}

/// `auth.refresh` — swap in a fresh token without reconnecting.
#[derive(Debug)]
pub enum AuthRefresh {}
impl RpcMethod for AuthRefresh {
    const NAME: &'static str = "auth.refresh";
    type Params<'a> = AuthRefreshParams<'a>;
    type Result = AuthRefreshResult;
}

/// `ping` — the result is the params, unchanged (any CBOR item).
#[derive(Debug)]
pub enum Ping {}
impl RpcMethod for Ping {
    const NAME: &'static str = "ping";
    type Params<'a> = RawRef<'a>;
    type Result = RawValue;
}

/// `cancel` params: `{0: id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct CancelParams {
    /// The id of the in-flight request to abort, in the sender's own id
    /// space (a client's request, or a request of the server's, §6.4).
    #[n(0)]
    pub id: u64,
}

/// `cancel` — sent by a caller about one of its requests in flight (§8).
/// From the client it aborts the request, which then answers `cancelled`
/// (or its normal result, if it had already finished). From the server it
/// withdraws one of the server's own requests (§6.4): the server then
/// expects no answer and ignores any that still arrives.
#[derive(Debug)]
pub enum Cancel {}
impl NotificationMethod for Cancel {
    const NAME: &'static str = "cancel";
    type Params<'a> = CancelParams;
}

/// `token.expiring` params: `{0: expires_in_ms}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct TokenExpiringParams {
    /// Time left before the server closes with 4002 (the token's `exp` plus
    /// the server's leeway), in milliseconds.
    #[n(0)]
    pub expires_in_ms: u64,
}

/// `token.expiring` — the token expires soon; call `auth.refresh`.
#[derive(Debug)]
pub enum TokenExpiring {}
impl NotificationMethod for TokenExpiring {
    const NAME: &'static str = "token.expiring";
    type Params<'a> = TokenExpiringParams;
}

/// `closing` params: `{0: code, 1: reason, ? 2: retry_after_ms}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct ClosingParams<'a> {
    /// The WebSocket close code that will follow.
    #[n(0)]
    pub code: u16,
    /// Human-readable reason.
    #[b(1)]
    pub reason: &'a str,
    /// How long to wait before reconnecting, in milliseconds.
    #[n(2)]
    pub retry_after_ms: Option<u64>,
}

/// `closing` — sent before the server closes the connection on purpose.
#[derive(Debug)]
pub enum Closing {}
impl NotificationMethod for Closing {
    const NAME: &'static str = "closing";
    type Params<'a> = ClosingParams<'a>;
}
