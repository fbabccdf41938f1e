//! The HTTP edge: hyper 1.x serving `/v1/ws` (handed to a session after the
//! WebSocket upgrade), `/health` and `/metrics`.
//!
//! The upgrade handler authenticates nothing and decides nothing about the
//! session: it checks the handshake (subprotocol, Origin, capacity) and hands
//! the socket to [`crate::session::run`].

mod http;
mod upgrade;

pub use http::serve;
