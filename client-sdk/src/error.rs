//! The SDK's error type.

use plexus_protocol::{CloseCode, ErrorCode, WireError};

/// What can go wrong with a call, a subscription or the connection.
///
/// `docs/sdk.md` lists when each variant happens and what to do about
/// each wire error code.
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) {
/// use plexus_client::Error;
/// use plexus_client::protocol::ErrorCode;
/// match client.publish("demo.x", &1u8).await {
///     Ok(_) => {}
///     Err(Error::Remote(e)) if e.code == ErrorCode::RateLimited => {
///         let wait = e.retry_after_ms.unwrap_or(100);
///         tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
///     }
///     // Not resent by the SDK: it may or may not have been delivered.
///     Err(Error::ConnectionLost) => {}
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub answered with an error. Also produced locally by
    /// `subscribe` for an invalid pattern (`invalid_params`) or a pattern
    /// already subscribed with the other presence flag (`conflict`).
    #[error("the hub answered: {0}")]
    Remote(WireError),
    /// No answer within the call's timeout (the call was cancelled). Time
    /// spent waiting for a reconnect counts.
    #[error("timed out")]
    Timeout,
    /// The connection was lost while the call was in flight; it may or may
    /// not have taken effect, and the SDK does not resend it.
    #[error("connection lost while the call was in flight")]
    ConnectionLost,
    /// The client is closed (by `close`, or because the hub refused it for
    /// good); the code says why when the hub closed it.
    ///
    /// Every call made after the client closed returns it.
    #[error("client closed{}", .0.map(|c| format!(" by the hub: {c}")).unwrap_or_default())]
    Closed(Option<CloseCode>),
    /// Authentication failed (the hub answered `auth` with
    /// `unauthenticated`, or closed with 4000); the SDK does not reconnect.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// No token was configured, or the token provider failed before a
    /// connection attempt (the client then stops for good).
    #[error("token provider failed: {0}")]
    TokenProvider(String),
    /// The first connection attempt failed (network, handshake, timeout,
    /// a transient `auth` error), or the URL is invalid. Only
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) returns it;
    /// the cause is logged at debug level.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A stream of chunks broke: a chunk's sequence number was not the
    /// previous one plus one (`"chunk sequence gap"`). A stream cut off by
    /// a lost connection ends with [`Error::ConnectionLost`] instead.
    #[error("chunk stream broken: {0}")]
    BrokenStream(&'static str),
    /// A value could not be encoded or a result could not be decoded.
    #[error("codec error: {0}")]
    Codec(String),
}

impl Error {
    /// The wire error code, for [`Error::Remote`].
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Remote(e) => Some(&e.code),
            _ => None,
        }
    }
}
