use super::*;
use crate::{RawValue, decode_params};

#[test]
fn publish_params_borrow_and_skip_unknown_keys() {
    // {0: "a.b", 1: h'0102', 9: "future", 2: false}
    let data = RawValue::encode(&minicbor::bytes::ByteArray::from([1u8, 2])).unwrap();
    let raw =
        RawValue::encode(&PublishParams::new("a.b", data.as_raw_ref()).with_echo(false)).unwrap();
    let p: PublishParams = decode_params(&raw).unwrap();
    assert_eq!(p.topic, "a.b");
    assert_eq!(p.data.as_bytes(), &[0x42, 1, 2]);
    assert_eq!(p.echo, Some(false));

    let with_unknown = hex_bytes("a4006361 2e62014201 02096666 75747572 6502f4");
    let raw = RawValue::from_bytes(with_unknown.into(), &Default::default()).unwrap();
    let p: PublishParams = decode_params(&raw).unwrap();
    assert_eq!((p.topic, p.echo), ("a.b", Some(false)));
}

#[test]
fn missing_or_mistyped_fields_are_invalid_params() {
    let raw = RawValue::encode(&5u8).unwrap();
    assert_eq!(
        decode_params::<SubscribeParams>(&raw).unwrap_err().code,
        crate::ErrorCode::InvalidParams
    );
    // {1: true}: topic missing
    let raw = RawValue::from_bytes(vec![0xa1, 0x01, 0xf5].into(), &Default::default()).unwrap();
    assert!(decode_params::<SubscribeParams>(&raw).is_err());
}

#[test]
fn results_round_trip() {
    let limits = ServerLimits::DEFAULTS;
    let r = AuthResult::new("s1", "alice", Some(1000), limits);
    let raw = RawValue::encode(&r).unwrap();
    assert_eq!(raw.decode::<AuthResult>().unwrap(), r);
    let g = PresenceGetResult {
        members: vec![Member {
            session: "s".into(),
            user: "u".into(),
            info: Some(RawValue::encode(&"here").unwrap()),
        }],
        next: None,
    };
    assert_eq!(
        RawValue::encode(&g)
            .unwrap()
            .decode::<PresenceGetResult>()
            .unwrap(),
        g
    );
    assert_eq!(RawValue::encode(&Empty {}).unwrap().as_bytes(), &[0xa0]);
}

fn hex_bytes(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn the_catalog_names_the_durable_stream_methods() {
    use crate::{Method, MethodKind, RpcMethod};
    for (m, name) in [
        (Method::History, History::NAME),
        (Method::HistoryLatest, HistoryLatest::NAME),
    ] {
        assert_eq!(m.name(), name);
        assert_eq!(Method::from_name(name), Some(m));
        assert_eq!(m.kind(), MethodKind::Request);
        // Known names are interned: decoding a frame allocates no name.
        assert!(matches!(
            crate::method::intern(name),
            std::borrow::Cow::Borrowed(_)
        ));
    }
}
