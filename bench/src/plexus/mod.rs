//! The Plexus side of every scenario, driven over raw `plexus.v1` frames
//! (the protocol crate, not the SDK) so the load generator adds as little
//! as possible.
//!
//! - [`conn`]: opening, `auth` (keeping the announced limits), `subscribe`.
//! - [`frames`]: the frames written and the few fields read back.
//! - [`mod@fanout`], [`mod@rpc`], [`mod@connections`], [`mod@storm`]: the
//!   head-to-head scenarios (the reconnect storm's harness is
//!   [`crate::storm`]).
//! - [`mod@durable`]: durable streams (publish after commit, catch-up).
//! - [`mod@cluster`]: cluster mode (issue 14): nodes on one NATS server
//!   and one PostgreSQL database, the fan-out spread over them, and the
//!   CPU time it cost.
//! - [`mod@preauth`], [`mod@stalled`]: the hub's memory bounds, measured as
//!   RSS.
//! - [`mod@http`], [`mod@sse`]: the HTTP surface (server API publish and
//!   batch over HTTP/1.1 keep-alive, SSE fan-out), with [`mod@publish`]'s
//!   WebSocket publishers of the same shape beside them.

pub mod cluster;
pub mod conn;
pub mod connections;
pub mod durable;
pub mod fanout;
pub mod frames;
pub mod http;
pub mod preauth;
pub mod publish;
pub mod routed;
pub mod rpc;
pub mod sse;
pub mod stalled;
pub mod storm;
pub mod sync;
pub mod sync_wire;

pub use conn::{
    ConnError, Session, Ws, authenticate, call, connect, connect_many, connect_with, open,
    open_from,
};
pub use connections::connections;
pub use fanout::{SpreadResult, close_codes, fanout, fanout_spread};
pub use http::{api_publish, start_http};
pub use preauth::{PREAUTH_HUB_ARGS, preauth};
pub use publish::ws_publish;
pub use routed::routed;
pub use rpc::rpc;
pub use sse::sse_fanout;
pub use stalled::{stalled, stalled_hub_args};
pub use storm::{LISTEN_BACKLOG, reconnect_storm, storm_hub_args};
