//! The cases, by group. Every case cites the sections of
//! `docs/protocol.md` (and the decisions `P1`–`P21`, `H1`–`H8` of
//! `docs/decisions.md`) that it checks.
//!
//! To add a case, add a [`Case::new`] to the group's `cases()` (or a new
//! group module listed in [`all`]); see `docs/conformance.md`.

mod auth;
mod caps;
mod close;
mod durable;
mod errors;
mod expiry;
mod handshake;
mod keepalive;
mod limits;
mod presence;
mod pubsub;
mod rate;
mod requests;
mod rpc;
mod shutdown;
mod slow;
mod streams;
mod sync;
mod tokens;
mod util;
mod vectors;

use std::path::Path;

use crate::runner::Case;

/// Every case, the vectors of `vectors_dir` included, in a stable order.
pub fn all(vectors_dir: &Path) -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(handshake::cases());
    v.extend(limits::cases());
    v.extend(auth::cases());
    v.extend(tokens::cases());
    v.extend(expiry::cases());
    v.extend(keepalive::cases());
    v.extend(requests::cases());
    v.extend(streams::cases());
    v.extend(rate::cases());
    v.extend(pubsub::cases());
    v.extend(caps::cases());
    v.extend(presence::cases());
    v.extend(durable::cases());
    v.extend(sync::cases());
    v.extend(rpc::cases());
    v.extend(slow::cases());
    v.extend(close::cases());
    v.extend(errors::cases());
    v.extend(shutdown::cases());
    v.extend(vectors::cases(vectors_dir));
    v
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    #[test]
    fn ids_are_unique_and_cite_sections() {
        let all = super::all(std::path::Path::new(crate::vectors::VECTORS_DIR));
        let mut seen = HashSet::new();
        for c in &all {
            assert!(seen.insert(c.id.clone()), "duplicate case id {}", c.id);
            assert!(c.id.contains('.'), "{} has no group", c.id);
            assert!(c.sections().count() > 0, "{} cites no section", c.id);
            assert!(
                c.id.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || "-._".contains(ch)),
                "{} has characters a topic token cannot hold",
                c.id
            );
        }
        let behavioural = all.iter().filter(|c| c.group != "vector").count();
        assert!(
            behavioural >= 120,
            "only {behavioural} cases besides the vectors"
        );
    }
}
