//! The `plexus` binary as the CLI tests start it.
#![allow(dead_code)]

use tokio::process::Command;

/// The binary cargo built for these tests.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_plexus");

/// The `plexus` binary with no `PLEXUS_*` setting inherited from the
/// environment, logging warnings only, killed when its handle is dropped.
pub(crate) fn plexus() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("PLEXUS_") {
            c.env_remove(k);
        }
    }
    c.env("RUST_LOG", "warn");
    c.kill_on_drop(true);
    c
}
