//! The transport edge: hyper 1.x serving `/v1/ws` (handed to a session
//! after the WebSocket upgrade), `/health` and `/metrics`, and the links a
//! session runs over.
//!
//! The upgrade handler authenticates nothing and decides nothing about the
//! session: it checks the handshake (subprotocol, Origin, capacity) and hands
//! a [`ws::WsLink`] to [`crate::session::run`].
//!
//! | module | what it holds |
//! |---|---|
//! | `http` | the accept loop (listen backlog) and the routes |
//! | `upgrade` | the WebSocket handshake |
//! | [`link`] | the transport-neutral [`link::Link`] a session runs over |
//! | [`ws`] | the WebSocket link |

mod http;
pub mod link;
pub(crate) mod upgrade;
pub mod ws;

pub use http::{listen, serve};
