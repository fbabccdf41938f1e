//! The golden vectors: their JSON format as Rust types, and loading.
//!
//! Every vector is one CBOR frame (`cbor_hex`) with what a conforming
//! decoder must make of it. There are two layers:
//!
//! - [`Layer::Frame`]: the frame decoder. A valid vector carries an
//!   [`Expect`] describing the decoded frame; an invalid one names the
//!   decoding failure ([`DecodeErrorKind`]), the wire error code and the
//!   WebSocket close code the server answers with.
//! - [`Layer::Params`]: a valid frame whose params are then decoded as the
//!   typed params of [`Vector::method`]; [`Vector::params_valid`] says
//!   whether that succeeds.
//!
//! ```
//! use plexus_conformance::vectors::{Layer, load_all};
//! let all = load_all().unwrap();
//! assert!(all.iter().any(|v| v.layer == Layer::Params));
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The directory holding the committed `*.json` vectors.
pub const VECTORS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/vectors");

/// Why the vectors could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// Reading the directory or a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a vector in the expected JSON format.
    #[error("parsing {path}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A `*_hex` field is not valid hex.
    #[error("vector {name}: field {field} is not hex: {source}")]
    Hex {
        /// The vector's name.
        name: String,
        /// The offending field.
        field: &'static str,
        /// The underlying error.
        #[source]
        source: hex::FromHexError,
    },
    /// A vector's `name` differs from its file stem.
    #[error("{path}: vector name {name:?} differs from the file name")]
    NameMismatch {
        /// The file.
        path: PathBuf,
        /// The name inside the file.
        name: String,
    },
    /// Two vectors have the same name.
    #[error("duplicate vector name {0:?}")]
    Duplicate(String),
    /// A vector's fields contradict each other (e.g. a valid vector without
    /// an expectation).
    #[error("vector {name}: {reason}")]
    Inconsistent {
        /// The vector's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Which decoder a vector exercises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layer {
    /// The frame decoder (envelope and CBOR well-formedness).
    Frame,
    /// The typed params decoder of one method, applied to a valid frame.
    Params,
}

/// The four frame kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FrameKind {
    /// Kind 0.
    Request,
    /// Kind 1.
    Response,
    /// Kind 2.
    Notification,
    /// Kind 3.
    Chunk,
}

impl FrameKind {
    /// The kind number on the wire.
    pub fn number(self) -> u64 {
        match self {
            FrameKind::Request => 0,
            FrameKind::Response => 1,
            FrameKind::Notification => 2,
            FrameKind::Chunk => 3,
        }
    }
}

/// The decoding failures a vector can expect, named like the variants of
/// `plexus_protocol::DecodeError`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum DecodeErrorKind {
    /// Larger than the frame size limit (checked before anything else).
    TooLarge,
    /// Nesting deeper than the depth limit.
    TooDeep,
    /// The input ends inside an item, or a length points past it.
    Truncated,
    /// Not well-formed CBOR (break byte, reserved additional information,
    /// two-byte simple value below 32).
    Malformed,
    /// An indefinite-length string, array or map.
    IndefiniteLength,
    /// A text string that is not UTF-8.
    InvalidUtf8,
    /// Bytes after the frame's single item.
    TrailingBytes,
    /// Well-formed CBOR that is not a frame envelope.
    InvalidEnvelope,
    /// A frame kind this version does not know.
    UnknownKind,
}

impl DecodeErrorKind {
    /// The variant name, as written in the vectors.
    pub fn as_str(self) -> &'static str {
        match self {
            DecodeErrorKind::TooLarge => "TooLarge",
            DecodeErrorKind::TooDeep => "TooDeep",
            DecodeErrorKind::Truncated => "Truncated",
            DecodeErrorKind::Malformed => "Malformed",
            DecodeErrorKind::IndefiniteLength => "IndefiniteLength",
            DecodeErrorKind::InvalidUtf8 => "InvalidUtf8",
            DecodeErrorKind::TrailingBytes => "TrailingBytes",
            DecodeErrorKind::InvalidEnvelope => "InvalidEnvelope",
            DecodeErrorKind::UnknownKind => "UnknownKind",
        }
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The error object an error response must decode to.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectedError {
    /// The wire error code (possibly one this version does not know).
    pub code: String,
    /// The message.
    pub message: String,
    /// The retry hint, if present.
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
    /// Hex of the `details` item exactly as it appears, if present.
    #[serde(default)]
    pub details_hex: Option<String>,
}

/// What a valid frame must decode to. Which fields are present depends on
/// [`Expect::kind`]; embedded items are given as the hex of their exact
/// bytes in the frame.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The frame kind.
    pub kind: FrameKind,
    /// Request, response and chunk id.
    #[serde(default)]
    pub id: Option<u64>,
    /// Request and notification method.
    #[serde(default)]
    pub method: Option<String>,
    /// Request and notification params.
    #[serde(default)]
    pub params_hex: Option<String>,
    /// Success response result.
    #[serde(default)]
    pub result_hex: Option<String>,
    /// Chunk data.
    #[serde(default)]
    pub data_hex: Option<String>,
    /// Chunk sequence number.
    #[serde(default)]
    pub seq: Option<u64>,
    /// Chunk `final` flag.
    #[serde(default, rename = "final")]
    pub fin: Option<bool>,
    /// Error response's error object.
    #[serde(default)]
    pub error: Option<ExpectedError>,
}

impl Expect {
    /// The bytes of the embedded item: params, result or data (`None` for
    /// an error response).
    pub fn embedded(&self, name: &str) -> Result<Option<Vec<u8>>, VectorError> {
        let (field, hex) = match self.kind {
            FrameKind::Request | FrameKind::Notification => ("params_hex", &self.params_hex),
            FrameKind::Response => ("result_hex", &self.result_hex),
            FrameKind::Chunk => ("data_hex", &self.data_hex),
        };
        hex.as_deref()
            .map(|h| decode_hex(name, field, h))
            .transpose()
    }
}

/// One golden vector, as stored in `conformance/vectors/<name>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vector {
    /// Unique name, equal to the file stem.
    pub name: String,
    /// What the vector checks.
    pub description: String,
    /// Which decoder it exercises.
    pub layer: Layer,
    /// Whether the frame decodes (for params vectors: the frame, not
    /// necessarily its params).
    pub valid: bool,
    /// Params vectors: the method whose typed params decode the frame's
    /// params (may be a method this version does not know).
    #[serde(default)]
    pub method: Option<String>,
    /// Params vectors: whether the typed params decode.
    #[serde(default)]
    pub params_valid: Option<bool>,
    /// A frame size limit to decode with instead of the default 1 MiB.
    #[serde(default)]
    pub max_frame_size: Option<usize>,
    /// The wire error code answering the failure (invalid frames and
    /// invalid params).
    #[serde(default)]
    pub error: Option<String>,
    /// The WebSocket close code the server sends (`None` when the
    /// connection stays open).
    #[serde(default)]
    pub close: Option<u16>,
    /// Invalid frames: the expected decoding failure.
    #[serde(default)]
    pub decode_error: Option<DecodeErrorKind>,
    /// Success responses: the method whose result type the result decodes
    /// as.
    #[serde(default)]
    pub result_of: Option<String>,
    /// Chunks: the CDDL rule of `docs/protocol.md` their data matches
    /// (`resume-events` or `resume-final`, the chunks of a `subscribe` with
    /// `since`, §23.6).
    #[serde(default)]
    pub data_of: Option<String>,
    /// CBOR diagnostic notation of the frame (when it is well-formed).
    #[serde(default)]
    pub diagnostic: Option<String>,
    /// Valid frames: what the frame decodes to.
    #[serde(default)]
    pub expect: Option<Expect>,
    /// The frame, in hex.
    pub cbor_hex: String,
    /// The encoding of the decoded frame, when it legitimately differs from
    /// `cbor_hex` (non-shortest envelope heads, trailing envelope elements,
    /// dropped unknown or null error-object keys).
    #[serde(default)]
    pub canonical_hex: Option<String>,
}

impl Vector {
    /// The frame bytes.
    pub fn cbor(&self) -> Result<Vec<u8>, VectorError> {
        decode_hex(&self.name, "cbor_hex", &self.cbor_hex)
    }

    /// What re-encoding the decoded frame must produce: `canonical_hex` if
    /// present, else `cbor_hex`.
    pub fn canonical(&self) -> Result<Vec<u8>, VectorError> {
        match &self.canonical_hex {
            Some(h) => decode_hex(&self.name, "canonical_hex", h),
            None => self.cbor(),
        }
    }

    /// Checks that the fields present fit the vector's layer and validity,
    /// and that every hex field decodes.
    pub fn check(&self) -> Result<(), VectorError> {
        let bad = |reason| {
            Err(VectorError::Inconsistent {
                name: self.name.clone(),
                reason,
            })
        };
        self.cbor()?;
        self.canonical()?;
        if self.valid {
            let Some(expect) = &self.expect else {
                return bad("a valid vector needs expect");
            };
            if self.diagnostic.is_none() {
                return bad("a valid vector needs diagnostic");
            }
            if self.decode_error.is_some() {
                return bad("a valid vector has no decode_error");
            }
            let has_id = expect.id.is_some();
            let has_method = expect.method.is_some();
            let ok = match expect.kind {
                FrameKind::Request => has_id && has_method && expect.params_hex.is_some(),
                FrameKind::Notification => !has_id && has_method && expect.params_hex.is_some(),
                FrameKind::Response => {
                    has_id && !has_method && (expect.result_hex.is_some() != expect.error.is_some())
                }
                FrameKind::Chunk => {
                    has_id
                        && expect.seq.is_some()
                        && expect.fin.is_some()
                        && expect.data_hex.is_some()
                }
            };
            if !ok {
                return bad("expect lacks a field its kind requires");
            }
            expect.embedded(&self.name)?;
            if let Some(d) = expect.error.as_ref().and_then(|e| e.details_hex.as_deref()) {
                decode_hex(&self.name, "details_hex", d)?;
            }
            if self.data_of.is_some() && expect.kind != FrameKind::Chunk {
                return bad("data_of belongs to chunks");
            }
        } else {
            if self.expect.is_some() || self.layer != Layer::Frame {
                return bad("an invalid frame has no expect and is a frame-layer vector");
            }
            if self.decode_error.is_none() || self.error.is_none() || self.close.is_none() {
                return bad("an invalid frame needs decode_error, error and close");
            }
        }
        match self.layer {
            Layer::Params => {
                let (Some(_), Some(ok)) = (&self.method, self.params_valid) else {
                    return bad("a params vector needs method and params_valid");
                };
                if !self.valid || ok == self.error.is_some() || self.close.is_some() {
                    return bad(
                        "a params vector is a valid frame with error iff params are invalid",
                    );
                }
            }
            Layer::Frame => {
                if self.method.is_some() || self.params_valid.is_some() {
                    return bad("method and params_valid belong to params vectors");
                }
                if self.valid && (self.error.is_some() || self.close.is_some()) {
                    return bad("a valid frame has no error or close");
                }
            }
        }
        Ok(())
    }
}

fn decode_hex(name: &str, field: &'static str, hex: &str) -> Result<Vec<u8>, VectorError> {
    hex::decode(hex).map_err(|source| VectorError::Hex {
        name: name.to_owned(),
        field,
        source,
    })
}

/// Loads and checks every vector in [`VECTORS_DIR`], sorted by name.
pub fn load_all() -> Result<Vec<Vector>, VectorError> {
    load_dir(Path::new(VECTORS_DIR))
}

/// Loads and checks every `*.json` vector in `dir`, sorted by name.
///
/// Fails if a file does not parse, a vector's name differs from its file
/// stem, two names collide, or a vector fails [`Vector::check`].
pub fn load_dir(dir: &Path) -> Result<Vec<Vector>, VectorError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| VectorError::Io { path, source }
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            paths.push(path);
        }
    }
    paths.sort();
    let mut vectors: Vec<Vector> = Vec::with_capacity(paths.len());
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(io(&path))?;
        let vector: Vector = serde_json::from_str(&text).map_err(|source| VectorError::Json {
            path: path.clone(),
            source,
        })?;
        if path.file_stem().and_then(|s| s.to_str()) != Some(vector.name.as_str()) {
            return Err(VectorError::NameMismatch {
                path,
                name: vector.name,
            });
        }
        vector.check()?;
        vectors.push(vector);
    }
    vectors.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(w) = vectors.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(VectorError::Duplicate(w[0].name.clone()));
    }
    Ok(vectors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_60_vectors_load_with_unique_names() -> Result<(), VectorError> {
        let all = load_all()?;
        assert!(all.len() >= 60, "only {} vectors", all.len());
        let mut names: Vec<&str> = all.iter().map(|v| v.name.as_str()).collect();
        names.dedup();
        assert_eq!(names.len(), all.len());
        for v in &all {
            let file = Path::new(VECTORS_DIR).join(format!("{}.json", v.name));
            assert!(file.is_file(), "{} is not the stem of a file", v.name);
        }
        Ok(())
    }

    #[test]
    fn every_layer_and_kind_is_present() -> Result<(), VectorError> {
        let all = load_all()?;
        for kind in [
            FrameKind::Request,
            FrameKind::Response,
            FrameKind::Notification,
            FrameKind::Chunk,
        ] {
            assert!(
                all.iter()
                    .any(|v| v.expect.as_ref().is_some_and(|e| e.kind == kind)),
                "no valid {kind:?} vector"
            );
        }
        assert!(
            all.iter()
                .any(|v| v.layer == Layer::Params && v.params_valid == Some(true))
        );
        assert!(
            all.iter()
                .any(|v| v.layer == Layer::Params && v.params_valid == Some(false))
        );
        assert!(all.iter().any(|v| !v.valid));
        Ok(())
    }

    #[test]
    fn a_renamed_vector_is_rejected() -> Result<(), Box<dyn std::error::Error>> {
        let dir = std::env::temp_dir().join(format!("plexus-vectors-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let text = std::fs::read_to_string(Path::new(VECTORS_DIR).join("request-ping.json"))?;
        std::fs::write(dir.join("other-name.json"), text)?;
        let result = load_dir(&dir);
        std::fs::remove_dir_all(&dir)?;
        assert!(
            matches!(result, Err(VectorError::NameMismatch { .. })),
            "{result:?}"
        );
        Ok(())
    }
}
