//! # plexus-client
//!
//! The async Rust SDK for the Plexus hub: calls, subscriptions as streams,
//! presence, and a connection that survives real networks — reconnect with
//! jittered backoff, subscriptions renewed, tokens refreshed in band, no
//! unbounded buffers.
//!
//! ```no_run
//! # async fn run() -> Result<(), plexus_client::Error> {
//! use futures_util::StreamExt;
//! use plexus_client::{Client, Event};
//!
//! let client = Client::builder("ws://127.0.0.1:7700/v1/ws")
//!     .token("eyJ…")
//!     .connect()
//!     .await?;
//! let mut sub = client.subscribe("chat.>").await?;
//! client.publish("chat.room1", &"hello").await?;
//! while let Some(event) = sub.next().await {
//!     if let Event::Message(m) = event {
//!         println!("{}: {:?}", m.topic, m.data.decode::<String>());
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! ## How it fits
//!
//! A [`Client`] is a cheap handle; one background task owns the socket, the
//! calls in flight, the subscriptions and the reconnect loop (as in
//! async-nats). The SDK depends only on tokio, tokio-tungstenite,
//! plexus-protocol and small crates — never on the server.
//!
//! Guarantees: a call in flight when the connection drops fails with
//! [`Error::ConnectionLost`] and is never resent (it may have taken
//! effect); calls made while reconnecting wait for the connection (within
//! their timeout); every subscription is renewed on reconnect; a consumer
//! that falls behind sees [`Event::Lagged`]. See `docs/sdk.md`.
#![forbid(unsafe_code)]

mod backoff;
mod client;
mod connection;
mod error;
mod state;
mod subscription;

pub use backoff::Backoff;
pub use client::{ChunkStream, Client, ClientBuilder};
pub use error::Error;
pub use plexus_protocol::{self as protocol, RawValue};
pub use state::ConnectionState;
pub use subscription::{Event, Publication, Subscription};
