//! What the client commands print, and how values are read from the
//! command line.
//!
//! Three formats: human-readable lines on a terminal, one JSON object per
//! line otherwise (or with `--json`), CBOR diagnostic notation with
//! `--diag`. Every CBOR ↔ JSON conversion goes through
//! [`plexus_protocol::json`], the projection the HTTP gateway uses too.

use std::io::{IsTerminal, Write};

use minicbor::Encoder;
use plexus_protocol::{DecodeLimits, RawValue, json};
use serde_json::Value;

use super::error::CliError;

/// How a command prints what it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// Lines for people (the default on a terminal).
    Human,
    /// One JSON object per line (the default when stdout is not a
    /// terminal).
    Json,
    /// CBOR diagnostic notation (RFC 8949 §8), one item per line.
    Diag,
}

/// The output flags every client command has.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct OutputArgs {
    /// Print one JSON object per line (the default when stdout is not a
    /// terminal).
    #[arg(long, conflicts_with = "diag")]
    pub(crate) json: bool,
    /// Print values in CBOR diagnostic notation (lossless, unlike JSON).
    #[arg(long)]
    pub(crate) diag: bool,
}

impl OutputArgs {
    /// The format these flags and the kind of stdout select.
    pub(crate) fn format(&self) -> Format {
        if self.diag {
            Format::Diag
        } else if self.json || !std::io::stdout().is_terminal() {
            Format::Json
        } else {
            Format::Human
        }
    }
}

/// One field of an output record.
#[derive(Debug, Clone)]
pub(crate) enum Field {
    /// A text.
    Str(String),
    /// A number.
    U64(u64),
    /// A flag.
    Bool(bool),
    /// A CBOR value from the hub, printed through the JSON projection (or
    /// as it is, in diagnostic notation).
    Value(RawValue),
}

/// An object printed as one line: JSON, or a CBOR map with text keys in
/// diagnostic notation.
#[derive(Debug, Clone, Default)]
pub(crate) struct Record(Vec<(&'static str, Field)>);

impl Record {
    /// An empty record.
    pub(crate) fn new() -> Record {
        Record::default()
    }

    /// Adds a field.
    pub(crate) fn with(mut self, key: &'static str, field: Field) -> Record {
        self.0.push((key, field));
        self
    }

    /// Adds a field when there is one.
    pub(crate) fn with_opt(self, key: &'static str, field: Option<Field>) -> Record {
        match field {
            Some(f) => self.with(key, f),
            None => self,
        }
    }

    /// The record as one line of JSON, its keys in the order they were
    /// added (a `serde_json` map would sort them).
    pub(crate) fn to_json_line(&self) -> String {
        let mut line = String::from("{");
        for (i, (k, f)) in self.0.iter().enumerate() {
            if i > 0 {
                line.push(',');
            }
            line.push_str(&Value::from(*k).to_string());
            line.push(':');
            let v = match f {
                Field::Str(s) => Value::from(s.as_str()),
                Field::U64(n) => Value::from(*n),
                Field::Bool(b) => Value::from(*b),
                Field::Value(raw) => json::raw_to_json(raw),
            };
            line.push_str(&v.to_string());
        }
        line.push('}');
        line
    }

    /// The record as one CBOR map with text keys (values from the hub
    /// byte for byte).
    pub(crate) fn to_cbor(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64);
        let mut e = Encoder::new(&mut buf);
        // Writing to a Vec cannot fail.
        let _ = e.map(self.0.len() as u64);
        for (k, f) in &self.0 {
            let _ = e.str(k);
            let _ = match f {
                Field::Str(s) => e.str(s).map(|_| ()),
                Field::U64(n) => e.u64(*n).map(|_| ()),
                Field::Bool(b) => e.bool(*b).map(|_| ()),
                Field::Value(raw) => e.encode(raw).map(|_| ()),
            };
        }
        buf
    }
}

/// CBOR bytes in diagnostic notation (hex if they do not parse, which
/// well-formed items always do).
pub(crate) fn diag(bytes: &[u8]) -> String {
    match cbor_diag::parse_bytes(bytes) {
        Ok(item) => item.to_diag(),
        Err(_) => format!("h'{}'", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A value for people: a text string as it is, anything else as JSON
/// (indented when `pretty`).
pub(crate) fn human_value(raw: &RawValue, pretty: bool) -> String {
    match json::raw_to_json(raw) {
        Value::String(s) if raw.decode::<&str>().is_ok() => s,
        v if pretty => serde_json::to_string_pretty(&v).unwrap_or_default(),
        v => v.to_string(),
    }
}

/// Standard output in one [`Format`]; a reader that went away ends the
/// command quietly ([`CliError::StdoutClosed`]).
#[derive(Debug)]
pub(crate) struct Out {
    format: Format,
}

impl Out {
    /// Output in `format`.
    pub(crate) fn new(format: Format) -> Out {
        Out { format }
    }

    /// The format.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// Prints one line (stdout is line-buffered: each line goes out whole,
    /// at once).
    pub(crate) fn line(&mut self, text: &str) -> Result<(), CliError> {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{text}")?;
        stdout.flush()?;
        Ok(())
    }

    /// Prints a record: `human()` on a terminal, else the record as JSON
    /// or diagnostic notation.
    pub(crate) fn record(
        &mut self,
        record: &Record,
        human: impl FnOnce() -> String,
    ) -> Result<(), CliError> {
        let text = match self.format {
            Format::Human => human(),
            Format::Json => record.to_json_line(),
            Format::Diag => diag(&record.to_cbor()),
        };
        self.line(&text)
    }

    /// Prints a bare value (a call's result or chunk): indented JSON or the
    /// text itself for people, one JSON or diagnostic-notation line
    /// otherwise.
    pub(crate) fn value(&mut self, raw: &RawValue) -> Result<(), CliError> {
        let text = match self.format {
            Format::Human => human_value(raw, true),
            Format::Json => json::raw_to_json(raw).to_string(),
            Format::Diag => diag(raw.as_bytes()),
        };
        self.line(&text)
    }
}

/// A message from the command line or a line of input: JSON if it parses
/// as JSON, else the text itself as a CBOR text string.
pub(crate) fn json_or_text(s: &str) -> RawValue {
    match serde_json::from_str::<Value>(s) {
        Ok(v) => json::to_cbor(&v),
        Err(_) => text(s),
    }
}

/// `s` as a CBOR text string.
pub(crate) fn text(s: &str) -> RawValue {
    // Encoding a string into a Vec cannot fail.
    RawValue::encode(&s).unwrap_or_default()
}

/// `b` as a CBOR byte string.
pub(crate) fn bytes(b: &[u8]) -> RawValue {
    // Encoding into a Vec cannot fail.
    RawValue::encode(&<&minicbor::bytes::ByteSlice>::from(b)).unwrap_or_default()
}

/// Params from the command line: JSON, or else CBOR diagnostic notation,
/// which can say what JSON cannot (the integer keys of typed maps,
/// `{0: "demo.x"}`; byte strings, `h'01ff'`).
pub(crate) fn params(s: &str) -> Result<RawValue, CliError> {
    if let Ok(v) = serde_json::from_str::<Value>(s) {
        return Ok(json::to_cbor(&v));
    }
    // cbor-diag's errors say nothing useful ("parsing error"): not shown.
    let item = cbor_diag::parse_diag(s).map_err(|_| {
        CliError::Usage(format!(
            "the params {s:?} are neither JSON nor CBOR diagnostic notation (a text needs JSON quotes: '\"text\"')"
        ))
    })?;
    RawValue::from_bytes(item.to_bytes().into(), &DecodeLimits::default())
        .map_err(|e| CliError::Usage(format!("the params {s:?} are not one CBOR item: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_values_are_json_then_text_or_diagnostic_notation() {
        assert_eq!(json_or_text("42").as_bytes(), &[0x18, 42]);
        assert_eq!(json_or_text("hello world"), text("hello world"));
        assert_eq!(json_or_text("\"q\"").decode::<&str>().ok(), Some("q"));
        // Integer keys from diagnostic notation: {0: "a"}.
        let p = params(r#"{0: "a"}"#).ok().map(|r| r.as_bytes().to_vec());
        assert_eq!(p, Some(vec![0xa1, 0x00, 0x61, b'a']));
        assert!(matches!(params("{0: "), Err(CliError::Usage(_))));
    }

    #[test]
    fn records_print_as_json_or_diagnostic_notation() {
        let r = Record::new()
            .with("topic", Field::Str("t".into()))
            .with("offset", Field::U64(3))
            .with("data", Field::Value(text("x")));
        assert_eq!(r.to_json_line(), r#"{"topic":"t","offset":3,"data":"x"}"#);
        assert_eq!(diag(&r.to_cbor()), r#"{"topic":"t","offset":3,"data":"x"}"#);
        assert_eq!(human_value(&text("x"), true), "x");
        assert_eq!(human_value(&json_or_text("[1]"), false), "[1]");
    }
}
