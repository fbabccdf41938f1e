//! One connection's session.
//!
//! | module | what it holds |
//! |---|---|
//! | [`core`] | the sans-IO `Core`: every session rule, tested with a virtual clock |
//! | `driver` | the one task per connection that owns the link and runs the core |
//! | [`registry`] | the open, typed method registry (sync / async / streamed / routed / fallback) |
//! | [`table`] | the method table the core consults: names, kinds, metadata |
//! | [`context`] | `Ctx`, what a handler sees |
//! | [`error`] | `RequestError` and the one mapping to a wire error |
//! | [`stream`] | `ChunkSink`, streamed replies with credit |
//! | [`relay`] | the caller's side of routed calls: answers that come from the callee's connection, chunks relayed with credit |
//! | [`ratelimit`] | the token bucket that judges the client, not the hub's lag |
//! | [`methods`] | the handlers of the core methods (and `debug.*`) |
//!
//! [`run`] is what a transport calls with a [`Link`] once it has one.

pub mod context;
pub mod core;
mod driver;
pub mod error;
pub mod methods;
pub mod ratelimit;
pub mod registry;
pub mod relay;
pub mod stream;
pub mod table;

use std::sync::Arc;

use tracing::Instrument;

use crate::hub::Hub;
use crate::transport::link::Link;

/// Runs a session over `link` until the connection ends. The connection is
/// registered with the hub for as long as this runs.
pub async fn run<L: Link>(hub: Arc<Hub>, link: L, peer: std::net::SocketAddr) {
    run_as(hub, link, peer, None).await;
}

/// Runs a session whose `auth` is answered with `principal` (when given)
/// instead of verifying the token it carries: the in-process sessions of
/// the HTTP surface, authenticated by an API key (decision W2). Every
/// other rule of the session applies unchanged.
pub async fn run_as<L: Link>(
    hub: Arc<Hub>,
    link: L,
    peer: std::net::SocketAddr,
    principal: Option<crate::auth::Principal>,
) {
    let conn = hub.new_conn();
    let span = tracing::info_span!(
        "conn",
        id = conn.id,
        session = %conn.session,
        %peer,
        user = tracing::field::Empty
    );
    // Outside tokio's cooperative budget: a read that returns `Pending`
    // must mean the socket is empty (P19); the driver yields on its own.
    tokio::task::unconstrained(driver::drive(hub, conn, link, principal))
        .instrument(span)
        .await
}
