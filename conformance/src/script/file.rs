//! Scripts as data: one JSON file per script in `conformance/scripts/`, so
//! that SDKs in any language can replay the same faulty servers.
//!
//! A script says what the server does on each connection, step by step,
//! and what a conforming client should make of it (`client_should`, prose
//! for the SDK author). Frames are given as hex of their CBOR, so a file
//! needs no CBOR library to read.
//!
//! ```json
//! {
//!   "name": "drop-after-first-request",
//!   "description": "The first connection drops without a Close frame after one request.",
//!   "client_should": "fail the call with connection lost, reconnect with backoff, and succeed",
//!   "connections": [
//!     [{"op": "accept_auth"}, {"op": "recv_request"}, {"op": "drop"}]
//!   ],
//!   "then": [{"op": "accept_auth"}, {"op": "echo"}]
//! }
//! ```
//!
//! Connection *i* (0-based accept order) plays `connections[i]`; later
//! connections play `then` (absent: they are dropped at once). The steps
//! are [`Step`]; "the request" is the one the last `recv_request` read.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use plexus_conformance::script::file::Script;
//! let script = Script::load_named("drop-after-first-request")?;
//! let server = script.serve().await?;
//! println!("point the client under test at {}", server.url());
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use plexus_protocol::{Encoded, ErrorCode, WireError};
use serde::Deserialize;

use super::{Peer, ScriptedServer};

/// The directory holding the committed scripts.
pub const SCRIPTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts");

/// Longest single `stall` or `wait`, so that a file cannot hang a test
/// run for ever.
pub const MAX_STALL: Duration = Duration::from_secs(300);

/// One step of a connection's script.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Step {
    /// Wait for `auth` and accept it ([`Peer::accept_auth`]).
    AcceptAuth,
    /// Wait for `auth` and refuse it: error, `closing` 4000, close 4000
    /// ([`Peer::reject_auth`]).
    RejectAuth,
    /// Wait for the next request; it becomes "the request". With `method`,
    /// a request for another method ends the script (the connection is
    /// dropped).
    RecvRequest {
        /// The method expected.
        #[serde(default)]
        method: Option<String>,
    },
    /// Answer the request with this result (hex of one CBOR item).
    Respond {
        /// The result item.
        result_hex: String,
    },
    /// Answer the request with its own params as the result.
    RespondParams,
    /// Answer the request with an error.
    RespondError {
        /// The error code.
        code: String,
        /// The message.
        message: String,
        /// The retry hint.
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// Send a chunk of the request's stream.
    Chunk {
        /// Its sequence number.
        seq: u64,
        /// Whether it ends the stream.
        #[serde(rename = "final")]
        fin: bool,
        /// Its data (hex of one CBOR item).
        data_hex: String,
    },
    /// Send a notification.
    Notify {
        /// Its name.
        method: String,
        /// Its params (hex of one CBOR item).
        params_hex: String,
    },
    /// Send these bytes as one binary message (any frame, valid or not).
    SendHex {
        /// The message.
        hex: String,
    },
    /// Send a text message (which a server never may).
    SendText {
        /// Its text.
        text: String,
    },
    /// Send the `closing` notification.
    Closing {
        /// The close code announced.
        code: u16,
        /// The reason.
        reason: String,
        /// The reconnect hint.
        #[serde(default)]
        retry_after_ms: Option<u64>,
    },
    /// Send a Close frame, wait for the client's reply, drop the
    /// connection.
    Close {
        /// The code.
        code: u16,
        /// The reason.
        reason: String,
    },
    /// Drop the TCP connection without a Close frame.
    Drop,
    /// Neither read nor write for `ms` milliseconds.
    Stall {
        /// How long.
        ms: u64,
    },
    /// Answer every further request with its params until the
    /// connection ends.
    Echo,
    /// Read and ignore everything until the connection ends.
    Drain,
}

/// One script file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Script {
    /// Unique name, equal to the file stem.
    pub name: String,
    /// What the server does.
    pub description: String,
    /// What a conforming client does about it.
    pub client_should: String,
    /// The steps of connection 0, 1, ...
    #[serde(default)]
    pub connections: Vec<Vec<Step>>,
    /// The steps of every later connection.
    #[serde(default)]
    pub then: Vec<Step>,
}

/// Why a script could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScriptError {
    /// Reading failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Not a script.
    #[error("parsing {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A field is wrong (bad hex, name not the file stem, a duplicate).
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn hex_of(path: &Path, field: &str, h: &str) -> Result<Vec<u8>, ScriptError> {
    hex::decode(h).map_err(|e| ScriptError::Invalid {
        path: path.to_owned(),
        reason: format!("{field} is not hex: {e}"),
    })
}

impl Script {
    /// Loads and checks one file.
    pub fn load(path: &Path) -> Result<Script, ScriptError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScriptError::Io {
            path: path.to_owned(),
            source,
        })?;
        let script: Script = serde_json::from_str(&text).map_err(|source| ScriptError::Json {
            path: path.to_owned(),
            source,
        })?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(script.name.as_str()) {
            return Err(ScriptError::Invalid {
                path: path.to_owned(),
                reason: format!("name {:?} differs from the file name", script.name),
            });
        }
        for step in script.connections.iter().flatten().chain(&script.then) {
            match step {
                Step::Respond { result_hex: h } => drop(hex_of(path, "result_hex", h)?),
                Step::Chunk { data_hex: h, .. } => drop(hex_of(path, "data_hex", h)?),
                Step::Notify { params_hex: h, .. } => drop(hex_of(path, "params_hex", h)?),
                Step::SendHex { hex: h } => drop(hex_of(path, "hex", h)?),
                _ => {}
            }
        }
        Ok(script)
    }

    /// Loads `SCRIPTS_DIR/{name}.json`.
    pub fn load_named(name: &str) -> Result<Script, ScriptError> {
        Script::load(&Path::new(SCRIPTS_DIR).join(format!("{name}.json")))
    }

    /// The steps of connection `index`.
    pub fn steps(&self, index: usize) -> &[Step] {
        self.connections.get(index).unwrap_or(&self.then)
    }

    /// Plays the steps of `peer`'s connection. Ends early (dropping the
    /// connection) when the client goes away or sends something a step
    /// did not expect.
    pub async fn play(&self, mut peer: Peer) {
        let mut request: Option<plexus_protocol::Request> = None;
        for step in self.steps(peer.index) {
            let id = request.as_ref().map_or(0, |r| r.id);
            match step {
                Step::AcceptAuth => {
                    if peer.accept_auth().await.is_none() {
                        return;
                    }
                }
                Step::RejectAuth => peer.reject_auth().await,
                Step::RecvRequest { method } => {
                    let Some(r) = peer.recv_request().await else {
                        return;
                    };
                    if method.as_ref().is_some_and(|m| *m != r.method) {
                        return;
                    }
                    request = Some(r);
                }
                // Hex fields were checked by `load`; a hand-built script
                // with bad hex sends an empty item, which the client then
                // sees as undecodable.
                Step::Respond { result_hex } => {
                    let b = hex::decode(result_hex).unwrap_or_default();
                    peer.respond(id, &Encoded(&b)).await;
                }
                Step::RespondParams => {
                    let b = request
                        .as_ref()
                        .map(|r| r.params.as_bytes().to_vec())
                        .unwrap_or_default();
                    peer.respond(id, &Encoded(&b)).await;
                }
                Step::RespondError {
                    code,
                    message,
                    retry_after_ms,
                } => {
                    let mut e = WireError::new(ErrorCode::from_name(code), message.clone());
                    if let Some(ms) = retry_after_ms {
                        e = e.with_retry_after_ms(*ms);
                    }
                    peer.respond_error(id, e).await;
                }
                Step::Chunk { seq, fin, data_hex } => {
                    let b = hex::decode(data_hex).unwrap_or_default();
                    peer.chunk(id, *seq, *fin, &Encoded(&b)).await;
                }
                Step::Notify { method, params_hex } => {
                    let b = hex::decode(params_hex).unwrap_or_default();
                    peer.notify(method, &Encoded(&b)).await;
                }
                Step::SendHex { hex } => peer.send_raw(hex::decode(hex).unwrap_or_default()).await,
                Step::SendText { text } => peer.send_text(text).await,
                Step::Closing {
                    code,
                    reason,
                    retry_after_ms,
                } => peer.closing(*code, reason, *retry_after_ms).await,
                Step::Close { code, reason } => peer.close(*code, reason).await,
                Step::Drop => return,
                Step::Stall { ms } => peer.stall(Duration::from_millis(*ms).min(MAX_STALL)).await,
                Step::Echo => {
                    while let Some(r) = peer.recv_request().await {
                        peer.respond(r.id, &Encoded(r.params.as_bytes())).await;
                    }
                }
                Step::Drain => while peer.recv().await.is_some() {},
            }
        }
    }

    /// Starts a [`ScriptedServer`] playing this script.
    pub async fn serve(self) -> std::io::Result<ScriptedServer> {
        let script = std::sync::Arc::new(self);
        ScriptedServer::start(move |peer| {
            let s = script.clone();
            async move { s.play(peer).await }
        })
        .await
    }
}

/// Loads every script in [`SCRIPTS_DIR`], sorted by name.
pub fn load_all() -> Result<Vec<Script>, ScriptError> {
    load_dir(Path::new(SCRIPTS_DIR))
}

/// Loads every `*.json` script in `dir`, sorted by name; names are unique.
pub fn load_dir(dir: &Path) -> Result<Vec<Script>, ScriptError> {
    let io = |source| ScriptError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let scripts = paths
        .iter()
        .map(|p| Script::load(p))
        .collect::<Result<Vec<_>, _>>()?;
    // File stems are unique within a directory, and names equal stems.
    Ok(scripts)
}
