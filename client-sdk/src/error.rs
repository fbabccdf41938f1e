//! The SDK's error type.

use plexus_protocol::{CloseCode, ErrorCode, WireError};

/// What can go wrong with a call, a subscription or the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub answered with an error.
    #[error("the hub answered: {0}")]
    Remote(WireError),
    /// No answer within the call's timeout (the call was cancelled).
    #[error("timed out")]
    Timeout,
    /// The connection was lost while the call was in flight; it may or may
    /// not have taken effect, and the SDK does not resend it.
    #[error("connection lost while the call was in flight")]
    ConnectionLost,
    /// The client is closed (by `close`, or because the hub refused it for
    /// good); the code says why when the hub closed it.
    #[error("client closed{}", .0.map(|c| format!(" by the hub: {c}")).unwrap_or_default())]
    Closed(Option<CloseCode>),
    /// Authentication failed; the SDK does not reconnect.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The token provider failed.
    #[error("token provider failed: {0}")]
    TokenProvider(String),
    /// The WebSocket connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// A stream of chunks broke (a gap in sequence numbers, or it ended
    /// without its final chunk).
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
