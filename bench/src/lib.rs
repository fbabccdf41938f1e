//! # plexus-bench
//!
//! The benchmark kit: scenarios (fan-out, RPC, idle connections, slow
//! consumers, reconnect storm) run against Plexus and, in the same
//! invocation, against baselines — NATS over WebSocket, a bare
//! tokio-tungstenite echo server (the floor), and optionally another
//! `plexus` binary — so every figure is reported as a ratio measured on the
//! same machine at the same time. Two more scenarios measure the hub's
//! memory bounds (pre-auth frames, stalled subscribers) as RSS.
//!
//! The durable-streams group ([`suite::DurableSuite`], `plexus-bench
//! durable`) measures durable publish throughput, catch-up and latency on
//! a durable topic, Plexus on SQLite and PostgreSQL beside NATS JetStream
//! on file storage at equal durability.
//!
//! The HTTP surface's group ([`suite::HttpSuite`], `plexus-bench http`)
//! measures the server API's publishes and batches over HTTP/1.1
//! keep-alive and SSE fan-out, each beside the hub's own WebSocket figure
//! of the same shape in the same run.
//!
//! The cluster-mode group ([`suite::ClusterSuite`], `plexus-bench
//! cluster`) spreads the fan-out over a cluster of nodes (one NATS server,
//! one PostgreSQL database) beside the same fan-out on one node, and
//! reports the hubs' CPU time per 100,000 deliveries ([`cpu`]).
//!
//! Latency is measured from a timestamp the sender writes into each payload
//! (nanoseconds since the load generator started), read by the receiver in
//! the same process.
#![forbid(unsafe_code)]
// A measurement tool: rates and percentiles move between floats and
// integer counts all the time, always of values far inside both ranges.
#![allow(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    clippy::cast_possible_wrap
)]

pub mod clock;
pub mod cpu;
pub mod echo;
pub mod nats;
pub mod net;
pub mod plexus;
pub mod procs;
pub mod report;
pub mod rss;
pub mod scenario;
pub mod stats;
pub mod storm;
pub mod suite;
pub mod window;
