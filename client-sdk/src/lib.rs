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
//! A [`Client`] is a cheap handle; one background task owns the socket
//! (as in async-nats). The task is thin glue (the private `driver` module)
//! around a sans-IO core (`core`, private) that holds every protocol rule —
//! request ids and the in-flight table, the hub's window, the offline
//! queue, subscriptions and their renewal, served methods, the liveness
//! timer, the close-code policy, backoff and token refresh — and takes
//! `now` as an argument, so it is tested with a virtual clock. The SDK
//! depends only on tokio, tokio-tungstenite, plexus-protocol and small
//! crates — never on the server.
//!
//! Modules: `builder` (configuration), `client` (the handle), `chunks`
//! and `subscription` (the streams it returns), `serve` (running handlers
//! for requests from the hub), `deliver` (hand-off points between the
//! core and the handles), `config` (settings and every named bound),
//! `durable` (durable subscriptions, the position store, idempotent
//! publish), `sync` (record sync: the [`Space`] handle, live changes, the
//! client HLC, and with the feature `local-replica` the SQLite-backed
//! offline-first `Replica` — see `docs/sdk.md` §17), `rpc` (routed RPC:
//! [`Client::register`] offers a procedure through the hub, with
//! credit-paced progressive results, and [`Client::rpc_call`] /
//! [`Client::rpc_call_stream`] call one — see `docs/sdk.md` §18),
//! `core`, `driver`, `backoff`, `error`, `state`.
//!
//! Guarantees: a call in flight when the connection drops fails with
//! [`Error::ConnectionLost`] and is never resent (it may have taken
//! effect), except a durable publish ([`Client::publish_durable`]), which
//! carries a producer sequence number and is sent again and stored once;
//! calls made while reconnecting wait for the connection (within their
//! timeout, up to a bound); every subscription is renewed on reconnect,
//! and every [`DurableSubscription`] resumes from its position with no gap
//! and no duplicate; every [`Registration`] is registered again; a consumer of a plain [`Subscription`] that falls
//! behind sees [`Event::Lagged`]; every
//! buffer and queue has a named bound (`docs/sdk.md` lists them). See
//! `docs/sdk.md`.
#![forbid(unsafe_code)]

mod backoff;
mod builder;
mod chunks;
mod client;
mod config;
mod core;
mod deliver;
mod driver;
mod durable;
mod error;
mod rpc;
mod serve;
mod state;
mod subscription;
mod sync;

pub use backoff::Backoff;
pub use builder::ClientBuilder;
pub use chunks::ChunkStream;
pub use client::Client;
pub use durable::{
    DurableEvent, DurableMessage, DurableSubscription, MemoryPositionStore, PositionStore,
    PublishAck, PublishOptions, StartAt, StreamPosition,
};
pub use error::{Cause, Error};
pub use plexus_protocol::{self as protocol, RawValue};
pub use rpc::{
    CallOptions, Caller, DEFAULT_RPC_CONCURRENCY, Invocation, MAX_RPC_CONCURRENCY,
    RPC_TIMEOUT_SLACK, RegisterOptions, Registration,
};
pub use state::{CloseStatus, ConnectionState};
pub use subscription::{Event, Publication, Subscription};
pub use sync::{
    BoxError, ClientHlc, LIVE_BUFFER, LiveChanges, LiveEvent, PullChange, PullSummary, PushAck,
    PushOptions, SYNC_RETRY_LIMIT, Space, SyncCursor,
};
#[cfg(feature = "local-replica")]
pub use sync::{LocalRecord, REPLICA_PUSH_BATCH, Replica, SyncReport};
