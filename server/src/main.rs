//! The plexus binary.
#![forbid(unsafe_code)]
fn main() {}
