//! The handlers of the methods the hub serves after `auth`.
//!
//! | module | methods |
//! |---|---|
//! | `session` | `ping` |
//! | `pubsub` | `subscribe`, `unsubscribe`, `publish` |
//! | `presence` | `presence.get`, `presence.set` |
//! | `streams` | `history`, `history.latest` (on a hub without durable namespaces: `invalid_params`); with durable namespaces, `publish` and `subscribe` replacing `pubsub`'s |
//! | `rpc` | `rpc.register`, `rpc.unregister`, `rpc.call`, `rpc.list` (routed RPC, issue 12) |
//! | `sync` | `sync.push`, `sync.pull`, `sync.info` (with `[sync] enabled`) |
//! | `debug` | `debug.sleep`, `debug.panic`, `debug.stream`, `debug.call` (decision H5: compiled only in debug builds or with the `debug-methods` feature, served only with `--debug-methods`) |
//!
//! `auth` and `auth.refresh` are not here: the session core runs them,
//! because they change the session itself.

#[cfg(any(debug_assertions, feature = "debug-methods"))]
pub mod debug;
pub mod presence;
pub mod pubsub;
pub mod rpc;
pub mod session;
pub mod streams;
pub mod sync;

use plexus_protocol::topic::TopicError;

use super::error::RequestError;
use super::registry::Registry;
use crate::config::Config;

/// Whether this build contains the `debug.*` methods (H5).
pub const DEBUG_METHODS_COMPILED: bool = cfg!(any(debug_assertions, feature = "debug-methods"));

/// The registry of every method `config` serves; `durable`: the hub has
/// durable streams (the durable `publish` and `subscribe`, `history`).
pub fn registry(config: &Config, durable: bool) -> Registry {
    registry_with(config, durable, false)
}

/// [`registry`], with the record-sync methods when `sync`.
pub fn registry_with(config: &Config, durable: bool, sync: bool) -> Registry {
    let mut r = Registry::new();
    session::register(&mut r);
    pubsub::register(&mut r);
    streams::register_history(&mut r);
    if durable {
        streams::register(&mut r);
    }
    presence::register(&mut r);
    if config.clustered() {
        presence::register_clustered(&mut r);
    }
    rpc::register(&mut r);
    if config.clustered() {
        rpc::register_clustered(&mut r);
    }
    if sync {
        sync::register(&mut r);
    }
    #[cfg(any(debug_assertions, feature = "debug-methods"))]
    if config.debug_methods {
        debug::register(&mut r);
    }
    r
}

/// A topic or pattern that does not parse: too long is `payload_too_large`,
/// anything else `invalid_params`.
fn topic_error(what: &str, e: TopicError) -> RequestError {
    match e {
        TopicError::TooLong { .. } => RequestError::PayloadTooLarge(format!("{what}: {e}").into()),
        _ => RequestError::invalid_params(format!("{what}: {e}")),
    }
}

#[cfg(test)]
mod tests;
