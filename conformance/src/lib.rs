//! # plexus-conformance
//!
//! Everything that checks a `plexus.v1` implementation against
//! `docs/protocol.md`:
//!
//! - [`vectors`]: the golden vectors (`conformance/vectors/*.json`, one
//!   file per frame) and their loader.
//! - The **runner** (binary `plexus-conformance`, library [`runner`] and
//!   [`suite`]): named cases, each citing the spec section it checks, run
//!   against any server over a socket. It has its own WebSocket client
//!   ([`ws`]), its own CBOR ([`cbor`]) and frame handling ([`frame`],
//!   [`conn`]) and its own tokens ([`jwt`], [`tokens`]), so it shares no
//!   code with the hub it checks. `docs/conformance.md` is its guide.
//! - [`script`]: a scripted faulty *server*, to test client SDKs against
//!   servers that misbehave; its scripts can be data files
//!   (`conformance/scripts/*.json`) that SDKs in other languages replay.
//!
//! ```
//! let all = plexus_conformance::vectors::load_all().unwrap();
//! let ping = all.iter().find(|v| v.name == "request-ping").unwrap();
//! assert_eq!(ping.cbor().unwrap(), [0x84, 0x00, 0x01, 0x64, b'p', b'i', b'n', b'g', 0xf6]);
//! ```
#![forbid(unsafe_code)]

pub mod cbor;
pub mod check;
pub mod conn;
pub mod frame;
pub mod jwt;
pub mod runner;
pub mod script;
pub mod suite;
pub mod tokens;
pub mod vectors;
pub mod ws;
