//! The observable connection state.

use std::time::Duration;

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
        /// The WebSocket close code, when the hub closed.
        code: Option<u16>,
        /// Why.
        reason: String,
    },
}
