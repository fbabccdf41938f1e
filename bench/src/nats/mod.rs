//! The NATS baseline: a Debian `nats-server` in its own process, driven
//! over its WebSocket listener with the NATS text protocol, written by hand
//! on tokio-tungstenite so the load generator does the same kind of work
//! for NATS as it does for Plexus.
//!
//! Methodology (mirrors the Plexus side):
//!
//! - **fan-out**: every subscriber sends `SUB <topic> 1` and a `PING`, and
//!   waits for the `PONG` (so the subscription is registered) before any
//!   publisher starts. Stalled subscribers do the same and are then never
//!   read again. Publishers stamp every payload with
//!   [`crate::clock::stamp`]. With [`Rate::Saturate`](crate::scenario::Rate)
//!   a publisher sends `window` `PUB`s and a `PING` in one write (split
//!   into WebSocket messages of at most 64 KiB), waits for the `PONG`
//!   (NATS's flush-as-ack) and counts the window's publishes as completed
//!   when the `PONG` arrives. With `Rate::Fixed` the total rate is spread
//!   evenly across publishers and paced by a 1 ms tokio interval, sending
//!   the number of messages due each tick.
//! - **timing**: the measured window is `[t0 + warmup, t0 + warmup +
//!   duration]`, where `t0` is when every connection is open. A message
//!   counts (and its latency is recorded) when the WebSocket message that
//!   completed it was received inside the window; latency is receipt time
//!   minus the stamp.
//! - **stalled subscribers**: after the run each gets up to 5 s (all in
//!   parallel) to show whether the server closed it: `Some(code)` for a
//!   close frame, `Some(0)` for `-ERR` or end of stream without a code,
//!   `None` if it is still open.
//! - **request/reply**: one responder subscribed to `bench.echo` answers
//!   every message with `PUB <reply-to>` of the same payload; each
//!   requester subscribes to `_INBOX.<conn>.*` and keeps `in_flight`
//!   requests `PUB bench.echo _INBOX.<conn>.<seq>` outstanding.
//!
//! The parser reads NATS's byte stream regardless of how the server split
//! or coalesced it into WebSocket messages, finds control lines without
//! allocating and hands out `MSG` payloads as slices of its buffer.

mod conn;
mod fanout;
mod rpc;
mod server;

pub use conn::{CONNECT, Event, Inbox, Msg, NatsConn, NatsError, Outbox};
pub use fanout::fanout;
pub use rpc::request_reply;
pub use server::{NatsServer, nats_server_binary};

use std::time::Duration;

use crate::clock::now_nanos;

/// How long any single wait (connect, `PONG`, a write) may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// The measurement window, in [`now_nanos`] time.
#[derive(Debug, Clone, Copy)]
struct Window {
    /// Start (after warm-up).
    start: u64,
    /// End.
    end: u64,
}

impl Window {
    /// A window starting `warmup` from now and lasting `duration`.
    fn after(warmup: Duration, duration: Duration) -> Window {
        let start = now_nanos() + u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX);
        Window {
            start,
            end: start + u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX),
        }
    }

    /// Whether `t` is inside.
    fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }

    /// Whether `t` is past the end.
    fn over(&self, t: u64) -> bool {
        t >= self.end
    }

    /// Length in seconds.
    fn secs(&self) -> f64 {
        ((self.end - self.start) as f64 / 1e9).max(1e-9)
    }

    /// The end as a tokio deadline.
    fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_nanos(self.end.saturating_sub(now_nanos()))
    }
}
