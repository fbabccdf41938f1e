//! The session rules' parameters.

use std::time::Duration;

use plexus_protocol::DecodeLimits;
use plexus_protocol::methods::ServerLimits;

use crate::session::table::MethodTable;

/// How long the driver may take to write the queued frames and the Close
/// frame before the connection is dropped.
pub const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(2);

/// The same for a slow consumer, whose socket is full until it reads
/// again: long enough for a reader that resumes to learn why it was cut
/// off. Only the Close frame is held, never the dropped queue.
pub const SLOW_CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes read and discarded after the Close frame (decision P11).
pub const LINGER_BYTES: usize = 1024 * 1024;

/// Most server-initiated requests awaiting an answer per connection.
pub const MAX_SERVER_REQUESTS: usize = 64;

/// Retry hint sent with 4004 (too many connections for the user).
pub const TOO_MANY_CONNECTIONS_RETRY_MS: u64 = 5_000;

/// The session rules' parameters, shared by every connection of a hub.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The methods served after `auth`.
    pub table: MethodTable,
    /// Deadline for a successful `auth`.
    pub auth_timeout: Duration,
    /// Interval of WebSocket pings.
    pub ping_interval: Duration,
    /// How long a pong may take.
    pub pong_timeout: Duration,
    /// Clock leeway added to `exp` (E = `exp` + leeway).
    pub leeway: Duration,
    /// Upper bound of how long before E `token.expiring` is sent.
    pub token_expiring_lead: Duration,
    /// How long writing the queue and the Close frame may take.
    pub close_write_timeout: Duration,
    /// The same for a slow consumer (4006).
    pub slow_close_write_timeout: Duration,
    /// How long to read and discard after the Close frame.
    pub close_linger: Duration,
    /// Most bytes read and discarded after the Close frame.
    pub linger_bytes: usize,
    /// Sustained requests per second.
    pub rate_per_sec: u32,
    /// Request burst.
    pub rate_burst: u32,
    /// Rate-limited requests in a row before closing with 4007.
    pub rate_strikes: u32,
    /// Most requests in flight.
    pub max_in_flight: usize,
    /// Most bytes of request frames in flight.
    pub max_in_flight_bytes: usize,
    /// Most server-initiated requests awaiting an answer.
    pub max_server_requests: usize,
    /// Decode limits before `auth` succeeded.
    pub preauth_limits: DecodeLimits,
    /// Decode limits after; `max_frame_size` also bounds what is sent (H2).
    pub limits: DecodeLimits,
    /// The limits announced in the `auth` result.
    pub announced: ServerLimits,
}

impl CoreConfig {
    /// The reference defaults (`docs/operations.md`) around `table`.
    pub fn new(table: MethodTable) -> CoreConfig {
        let d = ServerLimits::DEFAULTS;
        let frame = usize::try_from(d.max_frame_size).unwrap_or(usize::MAX);
        CoreConfig {
            table,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_millis(d.ping_interval_ms),
            pong_timeout: Duration::from_secs(10),
            leeway: Duration::from_secs(5),
            token_expiring_lead: Duration::from_secs(60),
            close_write_timeout: CLOSE_WRITE_TIMEOUT,
            slow_close_write_timeout: SLOW_CLOSE_WRITE_TIMEOUT,
            close_linger: Duration::from_secs(2),
            linger_bytes: LINGER_BYTES,
            rate_per_sec: 100,
            rate_burst: 200,
            rate_strikes: 50,
            max_in_flight: usize::try_from(d.max_in_flight).unwrap_or(usize::MAX),
            max_in_flight_bytes: usize::try_from(d.max_in_flight_bytes).unwrap_or(usize::MAX),
            max_server_requests: MAX_SERVER_REQUESTS,
            preauth_limits: DecodeLimits {
                max_frame_size: 16 * 1024,
                max_depth: 32,
            },
            limits: DecodeLimits {
                max_frame_size: frame,
                max_depth: 32,
            },
            announced: d,
        }
    }
}
