//! # plexus-testkit
//!
//! Test support shared by the Plexus crates' integration tests. It is not
//! published and nothing in a production build depends on it.
//!
//! - [`hub`]: [`TestHub`], a real hub on `127.0.0.1:0` with the test secret
//!   and `debug.*` methods on, that stops when dropped.
//! - [`client`]: [`Client`], a minimal WebSocket client that speaks the wire
//!   format directly (no SDK), keeping frames it was not asked for.
//! - [`raw`](mod@raw): [`RawSocket`], a TCP socket that does the WebSocket handshake
//!   by hand and reads and writes raw frames, for tests of the WebSocket
//!   layer itself (unmasked frames, oversized headers, text, invalid close
//!   reasons, peers that never answer pings, lingering closes).
//! - [`durable`]: [`TestDb`], a SQLite data directory or a fresh
//!   PostgreSQL database per test, and [`TestHub::start_durable`], a hub
//!   with durable namespaces on it (start it again on the same
//!   [`TestDb`] to test a restart).
//! - [`token`](mod@token): claims and signed tokens (HMAC, `alg: none`, `exp`/`nbf`).
//!
//! Every wait is bounded by [`WAIT`]; a failure panics, which fails the test.
#![forbid(unsafe_code)]
// A test kit reports failure the way tests do: by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod client;
pub mod durable;
pub mod hub;
pub mod raw;
pub mod token;

use std::time::Duration;

pub use client::{Client, Ended};
pub use durable::{TestDb, streams_config};
pub use hub::{TestHub, api_key, auth_settings, metrics_handle, test_config};
pub use raw::{CloseReport, RawSocket, WsFrame};
pub use token::{SECRET, alg_none, claims, now, sign, token, token_expiring_in};

use plexus_protocol::RawValue;

/// The longest any helper waits for something to happen.
pub const WAIT: Duration = Duration::from_secs(5);

/// Encodes an arbitrary CBOR value, for params and payloads.
pub fn raw<T: minicbor::Encode<()>>(v: &T) -> RawValue {
    RawValue::encode(v).expect("test values encode")
}
