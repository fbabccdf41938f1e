//! The observable connection state.

use std::time::Duration;

/// Where the client's connection stands; watch it with
/// [`Client::state`](crate::Client::state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionState {
    /// The first connection attempt is under way.
    Connecting,
    /// Connected and authenticated.
    Connected,
    /// Waiting `next_in` before reconnect attempt `attempt` (1-based).
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
        /// The WebSocket close code, when the hub closed.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}
