//! # plexus-conformance
//!
//! Golden test vectors of the `plexus.v1` wire protocol and the code to load
//! them.
//!
//! The vectors live in `conformance/vectors/*.json`, one file per vector.
//! They were produced by `conformance/vectors/generate.py` with the Python
//! `cbor2` library, independently of the Rust crate they test; the format is
//! described in `conformance/vectors/README.md` and mirrored by
//! [`vectors::Vector`].
//!
//! [`script`] holds a scripted server: a real WebSocket endpoint that plays
//! a fixed script per connection, to test client SDKs against servers that
//! misbehave (refused auth, dropped connections, odd close codes, stalls).
//!
//! ```
//! let all = plexus_conformance::vectors::load_all().unwrap();
//! let ping = all.iter().find(|v| v.name == "request-ping").unwrap();
//! assert_eq!(ping.cbor().unwrap(), [0x84, 0x00, 0x01, 0x64, b'p', b'i', b'n', b'g', 0xf6]);
//! ```
#![forbid(unsafe_code)]

pub mod script;
pub mod vectors;
