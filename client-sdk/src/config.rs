//! Settings fixed when the client is built, and the named bounds of every
//! buffer and queue in the SDK (`docs/sdk.md` lists them all).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::backoff::Backoff;
use crate::core;
use crate::error::Cause;

/// Default capacity of the command channel from the handles to the
/// connection task.
pub(crate) const DEFAULT_COMMAND_BUFFER: usize = 256;

/// Default bound of the offline queue: requests waiting for a connection,
/// or for room in the hub's in-flight window.
pub(crate) const DEFAULT_OFFLINE_QUEUE: usize = 1024;

/// Default local cap on requests in flight (the hub's announced
/// `max_in_flight` applies when it is lower).
pub(crate) const DEFAULT_MAX_IN_FLIGHT: usize = 1024;

/// Default bound on served requests (from the hub) running at once.
pub(crate) const DEFAULT_MAX_SERVED: usize = 64;

/// Default number of events buffered per subscription.
pub(crate) const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1024;

/// Default number of chunks buffered per streamed call.
pub(crate) const DEFAULT_STREAM_BUFFER: usize = 64;

/// Default number of events buffered per durable subscription before the
/// connection stops reading for its consumer.
pub(crate) const DEFAULT_DURABLE_BUFFER: usize = 1024;

/// The WebSocket layer's read buffer.
pub(crate) const WS_READ_BUFFER: usize = 16 * 1024;

/// The WebSocket layer's write buffer: frames are fed into it and written
/// out when it is full or when the task has nothing more to send (one
/// flush per batch).
pub(crate) const WS_WRITE_BUFFER: usize = 16 * 1024;

/// Most socket messages read in one turn of the task's loop before it
/// looks at its other sources again.
pub(crate) const READ_BUDGET: usize = 64;

/// Most commands taken in one turn of the task's loop.
pub(crate) const COMMAND_BUDGET: usize = 64;

/// Most turns of the task's loop before it yields to the runtime.
pub(crate) const TURN_BUDGET: usize = 32;

/// The token provider: called before every connection attempt and on
/// `token.expiring`.
pub(crate) type TokenFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, Cause>> + Send + Sync>;

/// Everything the builder configured.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) token: TokenFn,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) subscription_buffer: usize,
    pub(crate) stream_buffer: usize,
    pub(crate) command_buffer: usize,
    pub(crate) offline_queue: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) max_served: usize,
    pub(crate) liveness_timeout: Option<Duration>,
    pub(crate) max_frame_size: usize,
    pub(crate) instance: Option<String>,
    pub(crate) agent: String,
    pub(crate) durable_buffer: usize,
    pub(crate) position_store: Arc<dyn crate::PositionStore>,
    pub(crate) producer: Arc<str>,
    pub(crate) first_seq: u64,
}

impl Settings {
    /// The core's share of the settings.
    pub(crate) fn core(&self) -> core::Config {
        core::Config {
            call_timeout: self.call_timeout,
            connect_timeout: self.connect_timeout,
            backoff: self.backoff,
            liveness: self.liveness_timeout,
            max_queued: self.offline_queue,
            max_in_flight: self.max_in_flight,
            max_served: self.max_served,
            max_frame_size: self.max_frame_size,
            instance: self.instance.clone(),
            agent: self.agent.clone(),
            producer: self.producer.clone(),
            first_seq: self.first_seq,
        }
    }
}
