//! `ping`.

use plexus_protocol::Method;

use crate::session::registry::{Meta, Registry};

/// Registers the module's methods.
pub fn register(r: &mut Registry) {
    // The result is the params, unchanged: a slice of the request frame,
    // copied only into the response.
    r.sync_raw(Method::Ping.name(), Meta::default(), |_, params| {
        Ok(params.to_bytes())
    });
}
