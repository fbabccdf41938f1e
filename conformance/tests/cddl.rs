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
            plexus_protocol::Method::from_name(method).is_some() && v.params_valid != Some(false)
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
];

#[test]
fn catalog_frames_match_known_frame_and_bad_params_do_not() {
    let doc = rooted(&schema(), "known-frame");
    let cddl = parse(&doc);
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in load_all().unwrap().iter().filter(|v| v.valid) {
        let x = v.expect.as_ref().unwrap();
        let known_method = x
            .method
            .as_deref()
            .is_some_and(|m| plexus_protocol::Method::from_name(m).is_some());
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
