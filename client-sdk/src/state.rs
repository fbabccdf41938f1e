//! The observable connection state.

use std::time::Duration;

use plexus_protocol::CloseCode;

/// Where the client's connection stands; watch it with
/// [`Client::state`](crate::Client::state).
///
/// Printing every transition:
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) {
/// use plexus_client::ConnectionState;
/// let mut state = client.state();
/// tokio::spawn(async move {
///     loop {
///         let s = state.borrow_and_update().clone();
///         eprintln!("{s:?}");
///         if matches!(s, ConnectionState::Closed { .. }) || state.changed().await.is_err() {
///             break;
///         }
///     }
/// });
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected and authenticated.
    Connected,
    /// Waiting `next_in` before reconnect attempt `attempt` (1-based,
    /// counted since the last successful connection). The state stays
    /// this while the attempt runs; a failed attempt publishes the next.
    Reconnecting {
        /// The attempt about to be made.
        attempt: u32,
        /// How long until it is made.
        next_in: Duration,
    },
    /// Closed for good: by [`Client::close`](crate::Client::close), by every
    /// handle being dropped, or by the hub with a code after which the SDK
    /// does not reconnect.
    Closed {
        /// The WebSocket close code, when the hub closed (or refused the
        /// token: 4000).
        code: Option<CloseStatus>,
        /// Why, for humans: the error and its sources.
        reason: String,
    },
}

/// A WebSocket close code received from the hub: one that `plexus.v1`
/// defines, or any other number.
///
/// ```
/// use plexus_client::CloseStatus;
/// use plexus_client::protocol::CloseCode;
/// assert_eq!(CloseStatus::from(4009), CloseStatus::Known(CloseCode::SessionReplaced));
/// assert_eq!(CloseStatus::from(4099), CloseStatus::Other(4099));
/// assert_eq!(CloseStatus::from(4099).as_u16(), 4099);
/// assert_eq!(CloseStatus::from(1007).known(), Some(CloseCode::InvalidPayload));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseStatus {
    /// A code defined by `plexus.v1` (§15.1).
    Known(CloseCode),
    /// A code `plexus.v1` does not define (e.g. 1001, 1011, an unknown
    /// 40xx).
    Other(u16),
}

impl CloseStatus {
    /// The number on the wire.
    pub fn as_u16(self) -> u16 {
        match self {
            CloseStatus::Known(c) => c.as_u16(),
            CloseStatus::Other(n) => n,
        }
    }

    /// The `plexus.v1` code, if it is one.
    pub fn known(self) -> Option<CloseCode> {
        match self {
            CloseStatus::Known(c) => Some(c),
            CloseStatus::Other(_) => None,
        }
    }
}

impl From<u16> for CloseStatus {
    fn from(n: u16) -> CloseStatus {
        CloseCode::from_u16(n).map_or(CloseStatus::Other(n), CloseStatus::Known)
    }
}

impl From<CloseCode> for CloseStatus {
    fn from(c: CloseCode) -> CloseStatus {
        CloseStatus::Known(c)
    }
}

impl std::fmt::Display for CloseStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CloseStatus::Known(c) => c.fmt(f),
            CloseStatus::Other(n) => write!(f, "{n}"),
        }
    }
}
