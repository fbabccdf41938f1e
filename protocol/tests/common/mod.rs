//! Strategies shared by the property tests.
#![allow(dead_code)]

use bytes::Bytes;
use ciborium::Value;
use plexus_protocol::frame::{Chunk, Notification, Request, Response};
use plexus_protocol::{DecodeLimits, ErrorCode, Frame, RawValue, WireError};
use proptest::prelude::*;

/// Arbitrary CBOR values, nested at most a few levels.
pub(crate) fn value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(|i| Value::Integer(i.into())),
        any::<u64>().prop_map(|i| Value::Integer(i.into())),
        proptest::collection::vec(any::<u8>(), 0..64).prop_map(Value::Bytes),
        ".{0,32}".prop_map(Value::Text),
        any::<bool>().prop_map(Value::Bool),
        Just(Value::Null),
        any::<f64>().prop_map(Value::Float),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Map),
            (0u64..100_000, inner).prop_map(|(t, v)| Value::Tag(t, Box::new(v))),
        ]
    })
}

/// Arbitrary raw values (well-formed, definite-length CBOR).
pub(crate) fn raw() -> impl Strategy<Value = RawValue> {
    value().prop_map(|v| {
        let mut buf = Vec::new();
        ciborium::into_writer(&v, &mut buf).unwrap();
        RawValue::from_bytes(Bytes::from(buf), &DecodeLimits::default()).unwrap()
    })
}

fn method() -> impl Strategy<Value = std::borrow::Cow<'static, str>> {
    prop_oneof![
        prop::sample::select(plexus_protocol::Method::ALL)
            .prop_map(|m| std::borrow::Cow::Borrowed(m.name())),
        "[a-z][a-z.]{0,20}".prop_map(std::borrow::Cow::Owned),
    ]
}

fn error() -> impl Strategy<Value = WireError> {
    (
        prop_oneof![
            prop::sample::select(ErrorCode::ALL),
            "[a-z_]{1,12}".prop_map(|s| ErrorCode::from_name(&s)),
        ],
        ".{0,40}",
        proptest::option::of(any::<u64>()),
        proptest::option::of(raw().prop_filter("null reads as absent", |r| !r.is_null())),
    )
        .prop_map(|(code, message, retry, details)| WireError {
            code,
            message,
            retry_after_ms: retry,
            details,
        })
}

/// Arbitrary frames of all four kinds.
pub(crate) fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (any::<u64>(), method(), raw()).prop_map(|(id, method, params)| Frame::Request(Request {
            id,
            method,
            params
        })),
        (any::<u64>(), raw()).prop_map(|(id, r)| Frame::Response(Response { id, outcome: Ok(r) })),
        (any::<u64>(), error()).prop_map(|(id, e)| Frame::Response(Response {
            id,
            outcome: Err(e)
        })),
        (method(), raw())
            .prop_map(|(method, params)| Frame::Notification(Notification { method, params })),
        (any::<u64>(), any::<u64>(), any::<bool>(), raw())
            .prop_map(|(id, seq, fin, data)| Frame::Chunk(Chunk { id, seq, fin, data })),
    ]
}
