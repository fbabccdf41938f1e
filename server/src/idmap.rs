//! Hash maps keyed by ids — request ids, server request ids, call ids,
//! registration ids — on the per-request path (decision H10).
//!
//! foldhash instead of the standard library's SipHash: an id hashes in a
//! few instructions rather than tens of nanoseconds, and a routed call
//! touches a dozen such maps. Each map is seeded at random
//! ([`foldhash::fast::RandomState`]), so a client that chooses its request
//! ids cannot aim them at one bucket chain of every hub; the maps are
//! bounded by `max-in-flight` and the `[rpc]` limits besides.

/// A hash map keyed by an id.
///
/// ```
/// let mut m = plexus_server::idmap::IdMap::default();
/// m.insert(7u64, "seven");
/// assert_eq!(m.get(&7), Some(&"seven"));
/// ```
pub type IdMap<V> = std::collections::HashMap<u64, V, foldhash::fast::RandomState>;
