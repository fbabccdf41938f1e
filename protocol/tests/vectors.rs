//! The golden vectors of `conformance/vectors/` against this crate, and
//! against ciborium as an independent decoder.
//!
//! The vectors were generated with Python `cbor2`, not with this crate; see
//! `conformance/vectors/README.md` for their format. Each test walks every
//! vector and collects all mismatches before failing, so one run shows every
//! broken vector.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::borrow::Cow;
use std::collections::BTreeSet;

use bytes::Bytes;
use ciborium::Value;
use plexus_conformance::vectors::{Expect, FrameKind, Layer, Vector, load_all};
use plexus_protocol::frame::{Chunk, Notification, Request, Response};
use plexus_protocol::methods::rpc;
use plexus_protocol::methods::sync::{
    SyncChunk, SyncInfoParams, SyncInfoResult, SyncPullFinal, SyncPullParams, SyncPushParams,
    SyncPushResult,
};
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, AuthRefreshResult, AuthResult, CancelParams, ClosingParams,
    Empty, EventParams, HistoryLatestParams, HistoryLatestResult, HistoryParams, HistoryResult,
    PresenceGetParams, PresenceGetResult, PresenceNotice, PresenceSetParams, PublishParams,
    PublishResult, ResumeFinal, SubscribeParams, SubscribeResult, TokenExpiringParams,
    UnsubscribeParams,
};
use plexus_protocol::{
    CloseCode, DecodeError, DecodeLimits, ErrorCode, Frame, Method, RawRef, RawValue, WireError,
    decode_params,
};

fn vectors() -> Vec<Vector> {
    load_all().expect("the golden vectors load")
}

fn limits(v: &Vector) -> DecodeLimits {
    DecodeLimits {
        max_frame_size: v
            .max_frame_size
            .unwrap_or(DecodeLimits::default().max_frame_size),
        ..DecodeLimits::default()
    }
}

fn decode(v: &Vector) -> Result<Frame, DecodeError> {
    Frame::decode(Bytes::from(v.cbor().unwrap()), &limits(v))
}

fn raw(bytes: Vec<u8>) -> RawValue {
    RawValue::from_bytes(Bytes::from(bytes), &DecodeLimits::default())
        .expect("an embedded item of a vector is one well-formed item")
}

fn hex_raw(name: &str, hex: Option<&String>) -> RawValue {
    let hex = hex.unwrap_or_else(|| panic!("{name}: expect lacks an embedded item"));
    raw(hex::decode(hex).unwrap())
}

/// The frame `expect` describes, built without decoding `cbor_hex`.
fn expected_frame(name: &str, x: &Expect) -> Frame {
    let method = || Cow::Owned(x.method.clone().unwrap());
    match x.kind {
        FrameKind::Request => Frame::Request(Request {
            id: x.id.unwrap(),
            method: method(),
            params: hex_raw(name, x.params_hex.as_ref()),
        }),
        FrameKind::Notification => Frame::Notification(Notification {
            method: method(),
            params: hex_raw(name, x.params_hex.as_ref()),
        }),
        FrameKind::Response => Frame::Response(Response {
            id: x.id.unwrap(),
            outcome: match &x.error {
                None => Ok(hex_raw(name, x.result_hex.as_ref())),
                Some(e) => Err(WireError {
                    code: ErrorCode::from_name(&e.code),
                    message: e.message.clone(),
                    retry_after_ms: e.retry_after_ms,
                    details: e.details_hex.as_ref().map(|h| raw(hex::decode(h).unwrap())),
                }),
            },
        }),
        FrameKind::Chunk => Frame::Chunk(Chunk {
            id: x.id.unwrap(),
            seq: x.seq.unwrap(),
            fin: x.fin.unwrap(),
            data: hex_raw(name, x.data_hex.as_ref()),
        }),
    }
}

fn variant_name(e: &DecodeError) -> &'static str {
    match e {
        DecodeError::TooLarge { .. } => "TooLarge",
        DecodeError::TooDeep { .. } => "TooDeep",
        DecodeError::Truncated { .. } => "Truncated",
        DecodeError::Malformed { .. } => "Malformed",
        DecodeError::IndefiniteLength { .. } => "IndefiniteLength",
        DecodeError::InvalidUtf8 { .. } => "InvalidUtf8",
        DecodeError::TrailingBytes { .. } => "TrailingBytes",
        DecodeError::InvalidEnvelope { .. } => "InvalidEnvelope",
        DecodeError::UnknownKind(_) => "UnknownKind",
        _ => "(a variant this test does not know)",
    }
}

/// Vectors whose expectation this crate does not meet yet, each with the
/// code change it needs. The tests below check that each of them still
/// fails, so a fix shows up as a stale entry to remove.
const DECODER_GAPS: &[(&str, &str)] = &[];

fn is_gap(v: &Vector) -> bool {
    DECODER_GAPS.iter().any(|(name, _)| *name == v.name)
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
fn valid_frames_decode_to_the_expected_frame_and_re_encode() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| v.valid) {
        checked += 1;
        let name = &v.name;
        let frame = match decode(v) {
            Ok(f) => f,
            Err(e) => {
                failures.push(format!("{name}: decode failed: {e}"));
                continue;
            }
        };
        let want = expected_frame(name, v.expect.as_ref().unwrap());
        if frame != want {
            failures.push(format!("{name}: decoded {frame:?}, expected {want:?}"));
            continue;
        }
        let canonical = v.canonical().unwrap();
        let encoded = frame.to_vec();
        if encoded != canonical {
            failures.push(format!(
                "{name}: re-encoded {}, expected {}",
                hex::encode(&encoded),
                hex::encode(&canonical)
            ));
        }
        // The canonical form decodes to the same frame, and the slice
        // decoder agrees with the `Bytes` one.
        match Frame::decode_slice(&canonical, &limits(v)) {
            Ok(f) if f == frame => {}
            other => failures.push(format!("{name}: canonical form decodes to {other:?}")),
        }
        let bytes = v.cbor().unwrap();
        match plexus_protocol::item_len(&bytes, &limits(v)) {
            Ok(n) if n == bytes.len() => {}
            other => failures.push(format!("{name}: item_len is {other:?}")),
        }
    }
    report(failures, checked);
}

#[test]
fn invalid_frames_fail_with_the_named_error_and_codes() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| !v.valid) {
        checked += 1;
        let name = &v.name;
        let want = v.decode_error.unwrap().as_str();
        let err = match decode(v) {
            Ok(_) if is_gap(v) => continue,
            Ok(f) => {
                failures.push(format!("{name}: decoded as {f:?}, expected {want}"));
                continue;
            }
            Err(e) if is_gap(v) => {
                failures.push(format!(
                    "{name}: listed in DECODER_GAPS but now fails ({e}): remove the entry"
                ));
                continue;
            }
            Err(e) => e,
        };
        if variant_name(&err) != want {
            failures.push(format!("{name}: failed with {err:?}, expected {want}"));
        }
        if Some(err.error_code().as_str()) != v.error.as_deref() {
            failures.push(format!(
                "{name}: error code {}, expected {:?}",
                err.error_code(),
                v.error
            ));
        }
        if Some(err.close_code().as_u16()) != v.close {
            failures.push(format!(
                "{name}: close code {}, expected {:?}",
                err.close_code(),
                v.close
            ));
        }
        let slice = Frame::decode_slice(&v.cbor().unwrap(), &limits(v));
        if slice.as_ref().err() != Some(&err) {
            failures.push(format!(
                "{name}: decode_slice gives {slice:?}, decode {err:?}"
            ));
        }
    }
    report(failures, checked);
}

/// The durable-stream methods (protocol.md 23.7, 23.8), by name: the
/// `Method` catalog of this crate may not list them.
const DURABLE_METHODS: &[&str] = &["history", "history.latest"];

/// The record-sync methods (protocol.md 24), by name, likewise.
const SYNC_METHODS: &[&str] = &["sync.push", "sync.pull", "sync.info"];

/// Decodes `raw` as the typed params of the method named `name`; `None`
/// when neither the catalog nor [`DURABLE_METHODS`] knows it.
fn decode_params_by_name(name: &str, raw: &RawValue) -> Option<Result<(), WireError>> {
    match name {
        "history" => Some(decode_params::<HistoryParams>(raw).map(drop)),
        "history.latest" => Some(decode_params::<HistoryLatestParams>(raw).map(drop)),
        "sync.push" => Some(decode_params::<SyncPushParams>(raw).map(drop)),
        "sync.pull" => Some(decode_params::<SyncPullParams>(raw).map(drop)),
        "sync.info" => Some(decode_params::<SyncInfoParams>(raw).map(drop)),
        // Sent by the server (protocol.md 25.5), outside the catalog.
        "rpc.invoke" => Some(decode_params::<rpc::InvokeParams>(raw).map(drop)),
        _ => Method::from_name(name).map(|m| decode_typed_params(m, raw)),
    }
}

/// Decodes `raw` as the typed result of the method named `name`.
fn decode_result_by_name(name: &str, raw: &RawValue) -> Result<(), minicbor::decode::Error> {
    match name {
        "history" => raw.decode::<HistoryResult>().map(drop),
        "history.latest" => raw.decode::<HistoryLatestResult>().map(drop),
        "sync.push" => raw.decode::<SyncPushResult>().map(drop),
        "sync.pull" => raw.decode::<SyncPullFinal>().map(drop),
        "sync.info" => raw.decode::<SyncInfoResult>().map(drop),
        _ => {
            let m = Method::from_name(name)
                .unwrap_or_else(|| panic!("result_of names no method: {name}"));
            decode_typed_result(m, raw)
        }
    }
}

/// Decodes `raw` as the typed params of `method`.
fn decode_typed_params(method: Method, raw: &RawValue) -> Result<(), WireError> {
    match method {
        Method::Auth => decode_params::<AuthParams>(raw).map(drop),
        Method::AuthRefresh => decode_params::<AuthRefreshParams>(raw).map(drop),
        Method::Ping => decode_params::<RawRef>(raw).map(drop),
        Method::Subscribe => decode_params::<SubscribeParams>(raw).map(drop),
        Method::Unsubscribe => decode_params::<UnsubscribeParams>(raw).map(drop),
        Method::Publish => decode_params::<PublishParams>(raw).map(drop),
        Method::PresenceGet => decode_params::<PresenceGetParams>(raw).map(drop),
        Method::PresenceSet => decode_params::<PresenceSetParams>(raw).map(drop),
        Method::Cancel => decode_params::<CancelParams>(raw).map(drop),
        Method::Event => decode_params::<EventParams>(raw).map(drop),
        Method::PresenceJoin | Method::PresenceLeave => {
            decode_params::<PresenceNotice>(raw).map(drop)
        }
        Method::TokenExpiring => decode_params::<TokenExpiringParams>(raw).map(drop),
        Method::Closing => decode_params::<ClosingParams>(raw).map(drop),
        Method::RpcRegister => decode_params::<rpc::RegisterParams>(raw).map(drop),
        Method::RpcUnregister => decode_params::<rpc::UnregisterParams>(raw).map(drop),
        Method::RpcCall => decode_params::<rpc::CallParams>(raw).map(drop),
        Method::RpcList => decode_params::<rpc::ListParams>(raw).map(drop),
        Method::RpcCredit => decode_params::<rpc::CreditParams>(raw).map(drop),
        other => panic!("no params type known for {other:?}"),
    }
}

/// Decodes `raw` as the typed result of `method`.
fn decode_typed_result(method: Method, raw: &RawValue) -> Result<(), minicbor::decode::Error> {
    match method {
        Method::Auth => raw.decode::<AuthResult>().map(drop),
        Method::AuthRefresh => raw.decode::<AuthRefreshResult>().map(drop),
        Method::Ping => raw.decode::<RawValue>().map(drop),
        // On durable topics subscribe answers with where it starts
        // (protocol.md 23.5); `{}` elsewhere, which decodes as that too.
        Method::Subscribe => raw.decode::<SubscribeResult>().map(drop),
        Method::Unsubscribe | Method::PresenceSet => raw.decode::<Empty>().map(drop),
        Method::Publish => raw.decode::<PublishResult>().map(drop),
        Method::PresenceGet => raw.decode::<PresenceGetResult>().map(drop),
        Method::RpcRegister => raw.decode::<rpc::RegisterResult>().map(drop),
        Method::RpcUnregister => raw.decode::<Empty>().map(drop),
        // The callee's result, unchanged: any item.
        Method::RpcCall => raw.decode::<RawValue>().map(drop),
        Method::RpcList => raw.decode::<rpc::ListResult>().map(drop),
        other => panic!("{other:?} has no result"),
    }
}

fn params_of(frame: &Frame) -> Option<(&str, &RawValue)> {
    match frame {
        Frame::Request(r) => Some((&r.method, &r.params)),
        Frame::Notification(n) => Some((&n.method, &n.params)),
        _ => None,
    }
}

#[test]
fn params_vectors_decode_as_the_methods_typed_params() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| v.layer == Layer::Params) {
        checked += 1;
        let name = &v.name;
        let frame = decode(v).expect("a params vector is a valid frame");
        let (method_name, params) = params_of(&frame).expect("a request or a notification");
        let wanted_method = v.method.as_deref().unwrap();
        if method_name != wanted_method {
            failures.push(format!(
                "{name}: frame method {method_name}, vector {wanted_method}"
            ));
            continue;
        }
        let outcome = match decode_params_by_name(wanted_method, params) {
            None => Err(ErrorCode::MethodNotFound),
            Some(r) => r.map_err(|e| {
                if e.code != ErrorCode::InvalidParams {
                    failures.push(format!("{name}: typed decoding failed with {e}"));
                }
                e.code
            }),
        };
        if is_gap(v) {
            if outcome.is_err() {
                failures.push(format!(
                    "{name}: listed in DECODER_GAPS but now fails: remove the entry"
                ));
            }
            continue;
        }
        match (v.params_valid.unwrap(), outcome) {
            (true, Ok(())) => {}
            (false, Err(code)) if Some(code.as_str()) == v.error.as_deref() => {}
            (want, got) => failures.push(format!(
                "{name}: params_valid {want} (error {:?}), got {got:?}",
                v.error
            )),
        }
    }
    report(failures, checked);
}

#[test]
fn results_decode_as_the_methods_typed_result() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| v.result_of.is_some()) {
        checked += 1;
        let name = &v.name;
        let method = v.result_of.as_deref().unwrap();
        let Ok(Frame::Response(Response {
            outcome: Ok(result),
            ..
        })) = decode(v)
        else {
            failures.push(format!("{name}: not a success response"));
            continue;
        };
        if let Err(e) = decode_result_by_name(method, &result) {
            failures.push(format!("{name}: result does not decode: {e:?}"));
        }
    }
    report(failures, checked);
}

/// The chunks of a resume (`data_of`, protocol.md 23.6): non-final chunks
/// decode as a list of event params, the final one as the outcome.
#[test]
fn resume_chunks_decode_as_their_typed_data() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| v.data_of.is_some()) {
        checked += 1;
        let name = &v.name;
        let Ok(Frame::Chunk(c)) = decode(v) else {
            failures.push(format!("{name}: not a chunk"));
            continue;
        };
        let r = match v.data_of.as_deref().unwrap() {
            "resume-events" => c.data.decode::<Vec<EventParams>>().map(|evs| {
                if evs.is_empty() || evs.iter().any(|e| e.offset.is_none() || e.position.is_none())
                {
                    failures.push(format!(
                        "{name}: a resume chunk holds one or more events, each with offset and position"
                    ));
                }
            }),
            "resume-final" => c.data.decode::<ResumeFinal>().map(|f| {
                if !c.fin {
                    failures.push(format!("{name}: resume-final data in a non-final chunk"));
                }
                if (f.outcome.as_str() == "too_old") != f.earliest.is_some() {
                    failures.push(format!("{name}: earliest goes with too_old"));
                }
            }),
            "sync-chunk" => c.data.decode::<SyncChunk>().map(|ch| {
                if c.fin {
                    failures.push(format!("{name}: sync-chunk data in a final chunk"));
                }
                if ch.records.iter().any(|r| r.position > ch.cursor) {
                    failures.push(format!("{name}: a record beyond the chunk's cursor"));
                }
                if ch.prev.is_some_and(|p| p >= ch.cursor) {
                    failures.push(format!("{name}: a live chunk's prev is not below its cursor"));
                }
            }),
            // Without live the final chunk; with live a non-final one.
            "sync-final" => c.data.decode::<SyncPullFinal>().map(|f| {
                if f.reset && f.cursor < f.horizon {
                    failures.push(format!("{name}: a reset's cursor is below the horizon"));
                }
            }),
            other => panic!("{name}: unknown data_of {other}"),
        };
        if let Err(e) = r {
            failures.push(format!("{name}: data does not decode: {e}"));
        }
    }
    report(failures, checked);
}

/// Every durable-stream and record-sync method has a vector of its
/// request, its result, and its params at the params layer.
#[test]
fn every_durable_method_is_covered() {
    let all = vectors();
    let mut gaps = Vec::new();
    for m in DURABLE_METHODS.iter().chain(SYNC_METHODS) {
        let framed = all.iter().any(|v| {
            v.layer == Layer::Frame
                && v.expect.as_ref().and_then(|x| x.method.as_deref()) == Some(m)
        });
        let typed = all.iter().any(|v| v.method.as_deref() == Some(*m));
        // sync.pull is streamed: its result is its final chunk.
        let result = all.iter().any(|v| {
            v.result_of.as_deref() == Some(*m)
                || (*m == "sync.pull" && v.data_of.as_deref() == Some("sync-final"))
        });
        if !(framed && typed && result) {
            gaps.push(format!(
                "{m}: request {framed}, params {typed}, result {result}"
            ));
        }
    }
    for rule in ["resume-events", "resume-final", "sync-chunk", "sync-final"] {
        if !all.iter().any(|v| v.data_of.as_deref() == Some(rule)) {
            gaps.push(format!("no chunk vector of {rule}"));
        }
    }
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));
}

fn cbor_value(bytes: &[u8]) -> Result<Value, String> {
    ciborium::de::from_reader::<Value, _>(bytes).map_err(|e| e.to_string())
}

fn map_get(map: &[(Value, Value)], key: u64) -> Option<&Value> {
    map.iter()
        .find(|(k, _)| *k == Value::Integer(key.into()))
        .map(|(_, v)| v)
}

/// Checks a ciborium decoding of a frame against `expect`.
fn check_with_ciborium(name: &str, frame: &Value, x: &Expect) -> Result<(), String> {
    let Value::Array(items) = frame else {
        return Err("not an array".into());
    };
    let uint = |i: usize| {
        items
            .get(i)
            .and_then(|v| v.as_integer())
            .and_then(|n| u64::try_from(n).ok())
    };
    let text = |i: usize| items.get(i).and_then(Value::as_text);
    let embedded = |i: usize| -> Result<(), String> {
        let bytes = x
            .embedded(name)
            .map_err(|e| e.to_string())?
            .ok_or("no embedded item")?;
        let want = cbor_value(&bytes)?;
        match items.get(i) {
            Some(got) if *got == want => Ok(()),
            got => Err(format!("element {i} is {got:?}, expected {want:?}")),
        }
    };
    if uint(0) != Some(x.kind.number()) {
        return Err(format!("kind element is {:?}", items.first()));
    }
    match x.kind {
        FrameKind::Request | FrameKind::Notification => {
            let at = usize::from(x.kind == FrameKind::Request);
            if x.kind == FrameKind::Request && uint(1) != x.id {
                return Err(format!("id is {:?}", items.get(1)));
            }
            if text(at + 1) != x.method.as_deref() {
                return Err(format!("method is {:?}", items.get(at + 1)));
            }
            embedded(at + 2)
        }
        FrameKind::Chunk => {
            if (uint(1), uint(2), items.get(3).and_then(Value::as_bool)) != (x.id, x.seq, x.fin) {
                return Err(format!("id, seq, final are {:?}", items.get(1..4)));
            }
            embedded(4)
        }
        FrameKind::Response => {
            if uint(1) != x.id {
                return Err(format!("id is {:?}", items.get(1)));
            }
            let Some(e) = &x.error else {
                return if uint(2) == Some(0) {
                    embedded(3)
                } else {
                    Err(format!("status is {:?}", items.get(2)))
                };
            };
            if uint(2) != Some(1) {
                return Err(format!("status is {:?}", items.get(2)));
            }
            let Some(Value::Map(obj)) = items.get(3) else {
                return Err("error object is not a map".into());
            };
            let code = map_get(obj, 0).and_then(Value::as_text);
            let message = map_get(obj, 1).and_then(Value::as_text);
            let retry = match map_get(obj, 2) {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    v.as_integer()
                        .and_then(|n| u64::try_from(n).ok())
                        .ok_or("bad retry")?,
                ),
            };
            let details = match map_get(obj, 3) {
                None | Some(Value::Null) => None,
                Some(v) => Some(v.clone()),
            };
            let want_details = match &e.details_hex {
                None => None,
                Some(h) => Some(cbor_value(&hex::decode(h).map_err(|e| e.to_string())?)?),
            };
            if (code, message, retry, details)
                != (
                    Some(e.code.as_str()),
                    Some(e.message.as_str()),
                    e.retry_after_ms,
                    want_details,
                )
            {
                return Err(format!("error object is {obj:?}"));
            }
            Ok(())
        }
    }
}

#[test]
fn ciborium_agrees_with_every_valid_vector() {
    let (mut failures, mut checked) = (Vec::new(), 0);
    for v in vectors().iter().filter(|v| v.valid) {
        checked += 1;
        let x = v.expect.as_ref().unwrap();
        for (form, bytes) in [
            ("cbor_hex", v.cbor().unwrap()),
            ("canonical", v.canonical().unwrap()),
        ] {
            let result =
                cbor_value(&bytes).and_then(|value| check_with_ciborium(&v.name, &value, x));
            if let Err(e) = result {
                failures.push(format!("{} ({form}): {e}", v.name));
            }
        }
    }
    report(failures, checked);
}

/// Close codes no vector can show, with the reason. A vector shows a close
/// code either as the `close` of an undecodable frame (1009, 4005) or as
/// the code of a `closing` notification (every announced code).
const CLOSE_CODES_WITHOUT_VECTOR: &[(u16, &str)] = &[
    (
        1000,
        "normal: the server never initiates it; it echoes a client's Close (protocol.md \
         15.2), which is a WebSocket control frame, not a plexus frame",
    ),
    (
        1002,
        "ws_protocol_error: decided by the WebSocket layer (bad frame headers, a Close \
         with a code a peer may not send); no plexus frame causes it",
    ),
    (
        1003,
        "unsupported_data: caused by a text message; every vector is a binary message",
    ),
    (
        1007,
        "invalid_payload: caused by invalid UTF-8 in a text message or in a Close frame's \
         reason; every vector is a binary message, and the code is not announced by \
         `closing`",
    ),
    (
        4006,
        "slow_consumer: the outbound queue is full, so no closing notification can be queued \
         ahead of the close; nothing on the frame layer shows it",
    ),
    (
        4010,
        "keepalive_timeout: the peer stopped answering WebSocket pings; the close is decided \
         below the frame layer and there is no frame to show",
    ),
];

/// Error codes no vector can show, with the reason (none so far).
const ERROR_CODES_WITHOUT_VECTOR: &[(&str, &str)] = &[];

#[test]
fn every_error_and_close_code_is_covered_or_explained() {
    let all = vectors();
    let mut errors = BTreeSet::new();
    let mut closes = BTreeSet::new();
    for v in &all {
        errors.extend(v.error.clone());
        closes.extend(v.close);
        let Some(x) = &v.expect else { continue };
        errors.extend(x.error.as_ref().map(|e| e.code.clone()));
        // The code a `closing` notification announces.
        if x.method.as_deref() == Some("closing") && v.params_valid != Some(false) {
            let params = hex_raw(&v.name, x.params_hex.as_ref());
            let closing: ClosingParams = decode_params(&params).unwrap();
            closes.insert(closing.code);
        }
    }
    let mut gaps = Vec::new();
    for code in ErrorCode::ALL {
        let name = code.as_str();
        let covered = errors.contains(name);
        let excused = ERROR_CODES_WITHOUT_VECTOR.iter().any(|(c, _)| *c == name);
        if covered == excused {
            gaps.push(format!(
                "error code {name}: covered {covered}, allow-listed {excused}"
            ));
        }
    }
    for code in CloseCode::ALL {
        let n = code.as_u16();
        let covered = closes.contains(&n);
        let excused = CLOSE_CODES_WITHOUT_VECTOR.iter().any(|(c, _)| *c == n);
        if covered == excused {
            gaps.push(format!(
                "close code {code}: covered {covered}, allow-listed {excused}"
            ));
        }
    }
    assert!(
        gaps.is_empty(),
        "coverage gaps (or stale allow-list entries):\n{}",
        gaps.join("\n")
    );
}

#[test]
fn every_method_and_decode_error_is_covered() {
    let all = vectors();
    let mut gaps = Vec::new();
    for m in Method::ALL {
        let framed = all.iter().any(|v| {
            v.layer == Layer::Frame
                && v.expect.as_ref().and_then(|x| x.method.as_deref()) == Some(m.name())
        });
        let typed_ok = all
            .iter()
            .any(|v| v.params_valid.is_some() && v.method.as_deref() == Some(m.name()));
        if !framed {
            gaps.push(format!("no frame-layer vector of {}", m.name()));
        }
        if !typed_ok {
            gaps.push(format!("no params-layer vector of {}", m.name()));
        }
    }
    for kind in [
        "TooLarge",
        "TooDeep",
        "Truncated",
        "Malformed",
        "IndefiniteLength",
        "InvalidUtf8",
        "TrailingBytes",
        "InvalidEnvelope",
        "UnknownKind",
    ] {
        if !all
            .iter()
            .any(|v| v.decode_error.map(|d| d.as_str()) == Some(kind))
        {
            gaps.push(format!("no vector fails with {kind}"));
        }
    }
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));
}

/// `closing` announces exactly the codes of protocol.md §12.6 (every code
/// from 4000 to 4999 except 4006 and 4010, never a code below 4000), and
/// the vectors show one `closing` for each announced code and none for
/// another.
#[test]
fn closing_vectors_announce_exactly_the_announced_codes() {
    let mut failures = Vec::new();
    for code in CloseCode::ALL {
        let n = code.as_u16();
        let by_rule = (4000..=4999).contains(&n) && n != 4006 && n != 4010;
        if code.announced() != by_rule {
            failures.push(format!(
                "{code}: announced() is {}, §12.6 says {by_rule}",
                code.announced()
            ));
        }
    }
    let mut shown = BTreeSet::new();
    for v in vectors() {
        let Some(x) = &v.expect else { continue };
        if x.method.as_deref() != Some("closing") || v.params_valid == Some(false) {
            continue;
        }
        let params = hex_raw(&v.name, x.params_hex.as_ref());
        let closing: ClosingParams = decode_params(&params).unwrap();
        match CloseCode::from_u16(closing.code) {
            Some(c) if c.announced() => {
                shown.insert(closing.code);
            }
            other => failures.push(format!(
                "{}: closing announces {} ({other:?}), which §12.6 never announces",
                v.name, closing.code
            )),
        }
    }
    for code in CloseCode::ALL.iter().filter(|c| c.announced()) {
        if !shown.contains(&code.as_u16()) {
            failures.push(format!("no closing vector announces {code}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
