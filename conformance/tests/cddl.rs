//! The golden vectors against the CDDL schema `docs/protocol.cddl`, checked
//! with the `cddl` crate.
//!
//! The crate validates against the first rule of a document, so each test
//! parses the schema once with `plexus-root = <rule>` prepended.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use cddl::ast::CDDL;
use cddl::validator::Validator;
use cddl::validator::cbor::CBORValidator;
use plexus_conformance::vectors::{DecodeErrorKind, FrameKind, Vector, load_all};

const SCHEMA_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.cddl");

fn schema() -> String {
    std::fs::read_to_string(SCHEMA_PATH).expect("docs/protocol.cddl is readable")
}

/// The schema with `rule` as its root (the crate validates against the
/// first rule of a document).
fn rooted(schema: &str, rule: &str) -> String {
    format!("plexus-root = {rule}\n\n{schema}")
}

fn parse(doc: &str) -> CDDL<'_> {
    cddl::cddl_from_str(doc, false)
        .unwrap_or_else(|e| panic!("docs/protocol.cddl does not parse: {e}"))
}

/// Validates `cbor` against the root rule of `cddl`.
fn validate(cddl: &CDDL<'_>, cbor: &[u8]) -> Result<(), String> {
    let value = cddl::validator::cbor_value::decode_cbor(cbor).map_err(|e| e.to_string())?;
    let mut validator = CBORValidator::new(cddl, value, None);
    let result: Result<(), cddl::validator::cbor::Error<std::io::Error>> = validator.validate();
    result.map_err(|e| e.to_string())
}

fn report(failures: Vec<String>, checked: usize) {
    assert!(checked > 0, "no vectors were checked");
    assert!(
        failures.is_empty(),
        "{} of {checked} vectors failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn the_schema_parses() {
    let schema = schema();
    parse(&schema);
    parse(&rooted(&schema, "frame"));
    parse(&rooted(&schema, "known-frame"));
}

#[test]
fn every_valid_vector_matches_the_frame_rule() {
    let doc = rooted(&schema(), "frame");
    let cddl = parse(&doc);
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter().filter(|v| v.valid) {
        checked += 1;
        for (form, bytes) in [
            ("cbor_hex", v.cbor().unwrap()),
            ("canonical", v.canonical().unwrap()),
        ] {
            if let Err(e) = validate(&cddl, &bytes) {
                failures.push(format!("{} ({form}): {e}", v.name));
            }
        }
    }
    report(failures, checked);
}

/// The durable-stream methods (protocol.md 23.7, 23.8), part of the
/// catalog whether or not `plexus_protocol::Method` lists them yet.
const DURABLE_METHODS: &[&str] = &["history", "history.latest"];

/// The record-sync methods (protocol.md 24), likewise.
const SYNC_METHODS: &[&str] = &["sync.push", "sync.pull", "sync.info"];

/// Whether `method` is in the v1 catalog of protocol.md 11.0.
fn in_catalog(method: &str) -> bool {
    plexus_protocol::Method::from_name(method).is_some()
        || DURABLE_METHODS.contains(&method)
        || SYNC_METHODS.contains(&method)
}

/// Whether a valid vector is a frame of the v1 catalog with well-typed
/// params, which the `known-frame` rule describes: every response (success
/// results match one of the result types, errors the error object), and
/// requests and notifications of known methods whose params decode.
fn is_known_frame(v: &Vector) -> bool {
    let x = v.expect.as_ref().unwrap();
    match x.kind {
        FrameKind::Chunk => false,
        FrameKind::Response => true,
        FrameKind::Request | FrameKind::Notification => {
            let method = x.method.as_deref().unwrap();
            in_catalog(method) && v.params_valid != Some(false)
        }
    }
}

/// Params vectors with invalid params that `known-frame` does not reject
/// (because of the schema or of this validator), with the reason.
const BAD_PARAMS_THE_SCHEMA_ALLOWS: &[(&str, &str)] = &[
    (
        "params-publish-echo-undefined",
        "validator limitation: cddl 0.10.7 decodes undefined as null, which `bool / null` \
         accepts; the schema itself does not match undefined there",
    ),
    (
        "params-subscribe-key-beyond-i64",
        "schema gap: `* int => any` admits every CBOR integer key, while protocol.md \
         §4.8 makes keys outside the signed 64-bit range invalid",
    ),
    (
        "params-publish-seq-bignum",
        "validator limitation: cddl 0.10.7 accepts a tag-2 bignum where uint is expected \
         (see id-bignum); the schema itself (uint = major type 0) rejects it",
    ),
    ("params-subscribe-duplicate-key", DUPLICATE_KEYS),
    ("params-subscribe-duplicate-key-nonshortest", DUPLICATE_KEYS),
    ("params-publish-duplicate-unknown-key", DUPLICATE_KEYS),
    ("params-publish-duplicate-seq", DUPLICATE_KEYS),
    ("params-subscribe-since-duplicate-key", DUPLICATE_KEYS),
    ("params-history-duplicate-key", DUPLICATE_KEYS),
    ("params-sync-push-duplicate-key", DUPLICATE_KEYS),
    ("params-sync-push-field-twice", DUPLICATE_KEYS),
];

/// Why a typed map with a duplicate key passes the schema.
const DUPLICATE_KEYS: &str = "schema gap: CDDL cannot say that a map's keys are unique \
     (and cddl 0.10.7 matches each entry on its own), while protocol.md §4.8 makes a \
     typed map with two entries for one key invalid";

#[test]
fn catalog_frames_match_known_frame_and_bad_params_do_not() {
    let doc = rooted(&schema(), "known-frame");
    let cddl = parse(&doc);
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter().filter(|v| v.valid) {
        let x = v.expect.as_ref().unwrap();
        let known_method = x.method.as_deref().is_some_and(in_catalog);
        let result = validate(&cddl, &v.cbor().unwrap());
        if is_known_frame(v) {
            checked += 1;
            if let Err(e) = result {
                failures.push(format!("{}: should match known-frame: {e}", v.name));
            }
        } else if v.params_valid == Some(false) && known_method {
            checked += 1;
            let excused = BAD_PARAMS_THE_SCHEMA_ALLOWS
                .iter()
                .any(|(name, _)| *name == v.name);
            match (result, excused) {
                (Err(_), false) | (Ok(()), true) => {}
                (Ok(()), false) => failures.push(format!(
                    "{}: params are invalid but match known-frame",
                    v.name
                )),
                (Err(e), true) => failures.push(format!(
                    "{}: allow-listed, but known-frame rejects it: {e}",
                    v.name
                )),
            }
        }
    }
    report(failures, checked);
}

/// Invalid envelopes the schema (or this validator) does not reject, with
/// the reason.
const ENVELOPE_ERRORS_THE_SCHEMA_ALLOWS: &[(&str, &str)] = &[
    (
        "id-bignum",
        "validator limitation: cddl 0.10.7 accepts a tagged item (any tag but 0, 1 and \
         the bignum tags where a bignum type is expected) for any type name, so \
         2(h'010000000000000000') passes as uint; the schema itself (uint = major type 0) \
         rejects it",
    ),
    (
        "error-code-tagged",
        "validator limitation: cddl 0.10.7 accepts tag 32 around a text string as tstr \
         (see id-bignum)",
    ),
    (
        "error-key-beyond-i64",
        "schema gap: `* int => any` admits every CBOR integer key, while protocol.md \
         §4.8 makes keys outside the signed 64-bit range invalid",
    ),
    ("error-duplicate-key", DUPLICATE_KEYS),
];

#[test]
fn invalid_envelopes_fail_the_frame_rule() {
    let doc = rooted(&schema(), "frame");
    let cddl = parse(&doc);
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter().filter(|v| {
        matches!(
            v.decode_error,
            Some(DecodeErrorKind::InvalidEnvelope | DecodeErrorKind::UnknownKind)
        )
    }) {
        checked += 1;
        let result = validate(&cddl, &v.cbor().unwrap());
        let excused = ENVELOPE_ERRORS_THE_SCHEMA_ALLOWS
            .iter()
            .any(|(name, _)| *name == v.name);
        match (result, excused) {
            (Err(_), false) | (Ok(()), true) => {}
            (Ok(()), false) => failures.push(format!("{}: the schema accepts it", v.name)),
            (Err(e), true) => failures.push(format!(
                "{}: allow-listed, but the schema rejects it: {e}",
                v.name
            )),
        }
    }
    report(failures, checked);
}

const PROTOCOL_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");

/// The example frames of `docs/protocol.md`: each ```` ```cbor-diag ````
/// block's diagnostic notation and the bytes of the hex block after it
/// (`#` starts a comment there). `generate.py` checks that the notation
/// encodes to those bytes; this checks the bytes against the schema.
fn doc_examples() -> Vec<(String, Vec<u8>)> {
    let text = std::fs::read_to_string(PROTOCOL_MD).expect("docs/protocol.md is readable");
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        if lines[i].trim() != "```cbor-diag" {
            i += 1;
            continue;
        }
        let close = |from: usize| {
            (from..lines.len())
                .find(|&j| lines[j] == "```")
                .expect("an unterminated code block")
        };
        let end = close(i + 1);
        let diag = lines[i + 1..end].join(" ");
        let start = (end + 1..lines.len())
            .find(|&j| !lines[j].trim().is_empty())
            .unwrap();
        assert_eq!(lines[start], "```", "no hex block after {diag}");
        let hex_end = close(start + 1);
        let hex: String = lines[start + 1..hex_end]
            .iter()
            .flat_map(|l| l.split('#').next().unwrap().split_whitespace())
            .collect();
        let bytes = hex::decode(&hex).unwrap_or_else(|e| panic!("{diag}: {e}"));
        out.push((diag, bytes));
        i = hex_end + 1;
    }
    out
}

/// Whether a decoded example is a request or notification of the v1
/// catalog, or a response (which `known-frame` covers whatever the method).
fn is_catalog_example(bytes: &[u8]) -> bool {
    use plexus_protocol::{DecodeLimits, Frame, Method};
    match Frame::decode_slice(bytes, &DecodeLimits::default()) {
        Ok(Frame::Request(r)) => in_catalog(&r.method),
        Ok(Frame::Notification(n)) => Method::from_name(&n.method).is_some(),
        Ok(Frame::Response(_)) => true,
        _ => false,
    }
}

#[test]
fn every_example_of_the_spec_matches_the_schema() {
    let schema = schema();
    let frame_doc = rooted(&schema, "frame");
    let known_doc = rooted(&schema, "known-frame");
    let (frame_rule, known_rule) = (parse(&frame_doc), parse(&known_doc));
    let examples = doc_examples();
    assert!(
        examples.len() > 40,
        "only {} examples found",
        examples.len()
    );
    let mut failures = Vec::new();
    for (diag, bytes) in &examples {
        if let Err(e) = validate(&frame_rule, bytes) {
            failures.push(format!("{diag}: not a frame: {e}"));
        }
        if is_catalog_example(bytes)
            && let Err(e) = validate(&known_rule, bytes)
        {
            failures.push(format!("{diag}: not a known-frame: {e}"));
        }
    }
    report(failures, examples.len());
}

/// Success results that do not match their method's result rule although
/// receivers accept them, with the reason.
const RESULTS_THE_SCHEMA_REJECTS: &[(&str, &str)] = &[(
    "response-auth-limits-before-9",
    "a server predating limits keys 9-11 sent this; the schema describes what servers of \
     this revision send (every key present), while protocol.md §10 asks clients to accept \
     the older form",
)];

/// `known-frame` matches every success response through `ping-response`
/// (whose result is any item), so each result of a vector that names its
/// method (`result_of`) is checked against that method's own result rule.
#[test]
fn results_match_their_methods_result_rule() {
    let schema = schema();
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter() {
        let Some(method) = v.result_of.as_deref() else {
            continue;
        };
        checked += 1;
        let rule = format!("{}-result", method.replace('.', "-"));
        let doc = rooted(&schema, &rule);
        let cddl = parse(&doc);
        let result = v
            .expect
            .as_ref()
            .unwrap()
            .embedded(&v.name)
            .unwrap()
            .unwrap();
        let excused = RESULTS_THE_SCHEMA_REJECTS
            .iter()
            .any(|(name, _)| *name == v.name);
        match (validate(&cddl, &result), excused) {
            (Ok(()), false) | (Err(_), true) => {}
            (Err(e), false) => failures.push(format!("{}: does not match {rule}: {e}", v.name)),
            (Ok(()), true) => {
                failures.push(format!("{}: allow-listed, but it matches {rule}", v.name))
            }
        }
    }
    report(failures, checked);
}

/// The chunks of a resume (protocol.md 23.6): each vector that names the
/// rule of its chunk data (`data_of`) matches it, and the whole frame
/// matches `resume-chunk` or `resume-final-chunk`.
#[test]
fn resume_chunks_match_their_rules() {
    let schema = schema();
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter() {
        let Some(rule) = v.data_of.as_deref() else {
            continue;
        };
        checked += 1;
        let data = v
            .expect
            .as_ref()
            .unwrap()
            .embedded(&v.name)
            .unwrap()
            .unwrap();
        let doc = rooted(&schema, rule);
        if let Err(e) = validate(&parse(&doc), &data) {
            failures.push(format!("{}: data does not match {rule}: {e}", v.name));
        }
        let frame_rule = match rule {
            "resume-final" => "resume-final-chunk",
            "sync-chunk" => "sync-pull-chunk",
            "sync-final" => "sync-pull-final-chunk",
            _ => "resume-chunk",
        };
        let doc = rooted(&schema, frame_rule);
        if let Err(e) = validate(&parse(&doc), &v.cbor().unwrap()) {
            failures.push(format!("{}: does not match {frame_rule}: {e}", v.name));
        }
    }
    report(failures, checked);
}
