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
//! - **reconnect storm**: the harness in [`crate::storm`]; a client is
//!   back when `CONNECT`+`PING` and then `SUB`+`PING` have each been
//!   answered with a `PONG`.
//! - **request/reply**: one responder subscribed to `bench.echo` answers
//!   every message with `PUB <reply-to>` of the same payload; each
//!   requester subscribes to `_INBOX.<conn>.*` and keeps `in_flight`
//!   requests `PUB bench.echo _INBOX.<conn>.<seq>` outstanding.
//!
//! - **JetStream** (the durable scenarios): see [`jetstream`].
//!
//! The parser reads NATS's byte stream regardless of how the server split
//! or coalesced it into WebSocket messages, finds control lines without
//! allocating and hands out `MSG` payloads as slices of its buffer.

mod conn;
mod fanout;
pub mod jetstream;
mod rpc;
mod server;
mod storm;

pub use conn::{CONNECT, Event, Inbox, Msg, NatsConn, NatsError, Outbox};
pub use fanout::fanout;
pub use jetstream::{JsSync, jetstream_server_binary, start_jetstream};
pub use rpc::{request_reply, request_reply_shared};
pub use server::{NatsServer, nats_server_binary};
pub use storm::reconnect_storm;

use std::time::Duration;

use crate::window::Window;

/// How long any single wait (connect, `PONG`, a write) may take.
pub const WAIT: Duration = Duration::from_secs(5);
