//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds
//! the files of `migrations/` at compile time.
#![forbid(unsafe_code)]

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
