//! The JSON projection of CBOR values, used wherever a `plexus.v1` value
//! meets JSON: HTTP bodies (`application/json`), SSE events in JSON mode,
//! and the CLI's `--json` output. `docs/protocol.md` Appendix D is the
//! normative description, with vectors that `tests/json_projection.rs`
//! checks against this module.
//!
//! JSON → CBOR is exact: `null`, booleans, strings, arrays and objects map
//! to their CBOR kinds; a number that is an integer (no fraction, no
//! exponent) becomes a CBOR integer, any other number a float.
//!
//! CBOR → JSON is lossy where JSON has no kind:
//!
//! | CBOR | JSON |
//! |---|---|
//! | byte string | string, base64url without padding |
//! | tag *n*(v) | the projection of *v* (the tag is dropped) |
//! | `undefined`, other simple values | `null` |
//! | NaN, ±∞ | `null` |
//! | map key that is not a text string | its JSON text (`1` → `"1"`) |
//! | integer beyond ±2^64 (never produced by the hub) | refused |
//!
//! ```
//! use plexus_protocol::{json, DecodeLimits};
//! let v: serde_json::Value = serde_json::json!({"n": 1, "s": "x", "f": 1.5});
//! let cbor = json::to_cbor(&v);
//! assert_eq!(json::from_cbor(cbor.as_bytes(), &DecodeLimits::default()).unwrap(), v);
//! ```

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use minicbor::data::Type;
use minicbor::{Decoder, Encoder};
use serde_json::{Map, Number, Value};

use crate::{DecodeError, DecodeLimits, RawValue};

/// Encodes a JSON value as one CBOR item.
pub fn to_cbor(v: &Value) -> RawValue {
    let mut buf = Vec::with_capacity(64);
    let mut e = Encoder::new(&mut buf);
    encode(&mut e, v);
    RawValue::from_checked(buf.into())
}

/// Encodes a JSON value as the params of a method: like [`to_cbor`], but
/// an object key made of decimal digits only (`"0"`, `"17"`, at most 19
/// digits, no leading zero) becomes that unsigned integer, so the
/// integer-keyed maps of `plexus.v1` can be written in JSON (the reverse
/// of the projection's `1` → `"1"`).
///
/// ```
/// let v = serde_json::json!({"0": "chat.room1", "1": {"text": "hi"}});
/// let raw = plexus_protocol::json::to_cbor_keyed(&v);
/// assert_eq!(&raw.as_bytes()[..2], &[0xa2, 0x00]);
/// ```
pub fn to_cbor_keyed(v: &Value) -> RawValue {
    let mut buf = Vec::with_capacity(64);
    let mut e = Encoder::new(&mut buf);
    encode_with(&mut e, v, true);
    RawValue::from_checked(buf.into())
}

/// Re-keys a CBOR item like [`to_cbor_keyed`]: text map keys made of
/// decimal digits become unsigned integers, at every depth; every other
/// item (byte strings and tags included) is copied unchanged. For params
/// that arrive as a document's field, in JSON or CBOR alike.
///
/// ```
/// use plexus_protocol::{json, DecodeLimits, RawValue};
/// // {"0": h'01'} → {0: h'01'}
/// let v = RawValue::from_bytes(vec![0xa1, 0x61, b'0', 0x41, 0x01].into(), &DecodeLimits::default()).unwrap();
/// assert_eq!(json::rekey(&v).as_bytes(), &[0xa1, 0x00, 0x41, 0x01]);
/// ```
pub fn rekey(raw: &RawValue) -> RawValue {
    let mut out = Vec::with_capacity(raw.len());
    let mut d = Decoder::new(raw.as_bytes());
    if rekey_item(&mut d, &mut out).is_err() {
        return raw.clone();
    }
    RawValue::from_checked(out.into())
}

fn rekey_item(d: &mut Decoder<'_>, out: &mut Vec<u8>) -> Result<(), minicbor::decode::Error> {
    match d.datatype()? {
        Type::Array => {
            let n = d.array()?.unwrap_or(0);
            let _ = Encoder::new(&mut *out).array(n);
            for _ in 0..n {
                rekey_item(d, out)?;
            }
        }
        Type::Map => {
            let n = d.map()?.unwrap_or(0);
            let _ = Encoder::new(&mut *out).map(n);
            for _ in 0..n {
                let start = d.position();
                match d.datatype()? {
                    Type::String => {
                        let k = d.str()?;
                        match integer_key(k) {
                            Some(i) => {
                                let _ = Encoder::new(&mut *out).u64(i);
                            }
                            None => out.extend_from_slice(&d.input()[start..d.position()]),
                        }
                    }
                    _ => rekey_item(d, out)?,
                }
                rekey_item(d, out)?;
            }
        }
        Type::Tag => {
            let start = d.position();
            d.tag()?;
            out.extend_from_slice(&d.input()[start..d.position()]);
            rekey_item(d, out)?;
        }
        _ => {
            let start = d.position();
            d.skip()?;
            out.extend_from_slice(&d.input()[start..d.position()]);
        }
    }
    Ok(())
}

fn integer_key(k: &str) -> Option<u64> {
    let ok = !k.is_empty()
        && k.len() <= 19
        && k.bytes().all(|b| b.is_ascii_digit())
        && (k == "0" || !k.starts_with('0'));
    ok.then(|| k.parse().ok()).flatten()
}

fn encode(e: &mut Encoder<&mut Vec<u8>>, v: &Value) {
    encode_with(e, v, false);
}

fn encode_with(e: &mut Encoder<&mut Vec<u8>>, v: &Value, keyed: bool) {
    // Writing to a Vec cannot fail.
    let _ = match v {
        Value::Null => e.null().map(|_| ()),
        Value::Bool(b) => e.bool(*b).map(|_| ()),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                e.u64(u).map(|_| ())
            } else if let Some(i) = n.as_i64() {
                e.i64(i).map(|_| ())
            } else {
                e.f64(n.as_f64().unwrap_or(f64::NAN)).map(|_| ())
            }
        }
        Value::String(s) => e.str(s).map(|_| ()),
        Value::Array(a) => {
            let _ = e.array(a.len() as u64);
            for x in a {
                encode_with(e, x, keyed);
            }
            Ok(())
        }
        Value::Object(m) => {
            let _ = e.map(m.len() as u64);
            for (k, x) in m {
                let _ = match integer_key(k).filter(|_| keyed) {
                    Some(n) => e.u64(n).map(|_| ()),
                    None => e.str(k).map(|_| ()),
                };
                encode_with(e, x, keyed);
            }
            Ok(())
        }
    };
}

/// Projects one well-formed CBOR item onto JSON, within `limits`' depth.
pub fn from_cbor(bytes: &[u8], limits: &DecodeLimits) -> Result<Value, DecodeError> {
    // The well-formedness pass bounds the depth and checks lengths before
    // the walk below allocates anything.
    let raw = RawValue::from_bytes(bytes::Bytes::copy_from_slice(bytes), limits)?;
    let mut d = Decoder::new(raw.as_bytes());
    walk(&mut d).map_err(|_| DecodeError::Malformed {
        offset: d.position(),
        reason: "not projectable onto JSON",
    })
}

/// Projects a [`RawValue`] (already checked well-formed) onto JSON.
pub fn raw_to_json(raw: &RawValue) -> Value {
    let mut d = Decoder::new(raw.as_bytes());
    walk(&mut d).unwrap_or(Value::Null)
}

fn walk(d: &mut Decoder<'_>) -> Result<Value, minicbor::decode::Error> {
    Ok(match d.datatype()? {
        Type::Bool => Value::Bool(d.bool()?),
        Type::Null | Type::Undefined | Type::Simple => {
            d.skip()?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 => Value::from(d.u64()?),
        Type::I8 | Type::I16 | Type::I32 | Type::I64 => Value::from(d.i64()?),
        Type::Int => {
            let i: i128 = d.int()?.into();
            match i64::try_from(i) {
                Ok(x) => Value::from(x),
                Err(_) => return Err(minicbor::decode::Error::message("integer out of range")),
            }
        }
        t @ (Type::F16 | Type::F32 | Type::F64) => {
            let f = match t {
                Type::F16 => {
                    let p = d.position();
                    let b = d.input().get(p + 1..p + 3).unwrap_or(&[0, 0]);
                    let h = u16::from_be_bytes([b[0], b[1]]);
                    d.skip()?;
                    half_to_f64(h)
                }
                Type::F32 => f64::from(d.f32()?),
                _ => d.f64()?,
            };
            Number::from_f64(f).map_or(Value::Null, Value::Number)
        }
        Type::Bytes => Value::String(URL_SAFE_NO_PAD.encode(d.bytes()?)),
        Type::String => Value::String(d.str()?.to_owned()),
        Type::Array => {
            let n = d.array()?.unwrap_or(0);
            let mut a = Vec::with_capacity(n.min(1024) as usize);
            for _ in 0..n {
                a.push(walk(d)?);
            }
            Value::Array(a)
        }
        Type::Map => {
            let n = d.map()?.unwrap_or(0);
            let mut m = Map::new();
            for _ in 0..n {
                let k = match d.datatype()? {
                    Type::String => d.str()?.to_owned(),
                    _ => walk(d)?.to_string(),
                };
                m.insert(k, walk(d)?);
            }
            Value::Object(m)
        }
        Type::Tag => {
            d.tag()?;
            walk(d)?
        }
        _ => {
            return Err(minicbor::decode::Error::message(
                "indefinite or unknown item",
            ));
        }
    })
}

/// IEEE 754 binary16 → f64 (RFC 8949 appendix D).
fn half_to_f64(h: u16) -> f64 {
    let exp = (h >> 10) & 0x1f;
    let mant = f64::from(h & 0x3ff);
    let v = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (mant + 1024.0) * 2f64.powi(i32::from(e) - 25),
    };
    if h & 0x8000 != 0 { -v } else { v }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round(v: Value) -> Value {
        from_cbor(to_cbor(&v).as_bytes(), &DecodeLimits::default()).unwrap()
    }

    #[test]
    fn json_survives_a_round_trip_through_cbor() {
        let v = json!({"a": [1, -2, 3.25, null, true, "é"], "b": {"c": u64::MAX}, "d": i64::MIN});
        assert_eq!(round(v.clone()), v);
    }

    #[test]
    fn integers_stay_integers_and_fractions_floats() {
        // 1 → CBOR 0x01; 1.5 → a float (f64 0xfb...).
        assert_eq!(to_cbor(&json!(1)).as_bytes(), &[0x01]);
        assert_eq!(to_cbor(&json!(-1)).as_bytes(), &[0x20]);
        assert_eq!(to_cbor(&json!(1.5)).as_bytes()[0], 0xfb);
    }

    #[test]
    fn cbor_kinds_json_lacks_are_projected_as_documented() {
        let l = DecodeLimits::default();
        // h'0102ff' → base64url "AQL_"
        assert_eq!(from_cbor(&[0x43, 1, 2, 0xff], &l).unwrap(), json!("AQL_"));
        // 1(1700000000) → 1700000000
        assert_eq!(
            from_cbor(&[0xc1, 0x1a, 0x65, 0x53, 0xf1, 0x00], &l).unwrap(),
            json!(1_700_000_000)
        );
        // undefined → null; NaN (f16 0x7e00) → null
        assert_eq!(from_cbor(&[0xf7], &l).unwrap(), Value::Null);
        assert_eq!(from_cbor(&[0xf9, 0x7e, 0x00], &l).unwrap(), Value::Null);
        // 1.5 as f16 (0xf93e00) → 1.5
        assert_eq!(from_cbor(&[0xf9, 0x3e, 0x00], &l).unwrap(), json!(1.5));
        // {1: "x"} → {"1": "x"}
        assert_eq!(
            from_cbor(&[0xa1, 0x01, 0x61, b'x'], &l).unwrap(),
            json!({"1": "x"})
        );
        // -2^64 is a CBOR integer that JSON numbers here cannot hold.
        assert!(from_cbor(&[0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], &l).is_err());
    }

    #[test]
    fn keyed_params_read_decimal_keys_as_integers_only() {
        let v = json!({"0": {"1": true}, "01": 1, "x": 2, "-1": 3});
        let raw = to_cbor_keyed(&v);
        let back = from_cbor(raw.as_bytes(), &DecodeLimits::default()).unwrap();
        // Integer keys project back to the same text: a round trip.
        assert_eq!(back, v);
        assert_eq!(
            to_cbor_keyed(&json!({"0": {"1": true}})).as_bytes(),
            &[0xa1, 0x00, 0xa1, 0x01, 0xf5],
            "decimal keys became integers, nested ones too"
        );
        for text in ["01", "x", "-1", "18446744073709551616"] {
            let raw = to_cbor_keyed(&json!({ text: 1 }));
            assert_eq!(
                raw.as_bytes()[1],
                0x60 + u8::try_from(text.len()).unwrap(),
                "{text} stays text"
            );
        }
        // Plain to_cbor keeps every key text.
        assert_eq!(
            &to_cbor(&json!({"0": 1})).as_bytes()[..3],
            &[0xa1, 0x61, b'0']
        );
    }

    #[test]
    fn rekey_keeps_bytes_and_tags_and_rekeys_at_every_depth() {
        let l = DecodeLimits::default();
        // {"1": [1(h'ff'), {"02": "x", "3": null}]}
        let input = [
            0xa1, 0x61, b'1', 0x82, 0xc1, 0x41, 0xff, 0xa2, 0x62, b'0', b'2', 0x61, b'x', 0x61,
            b'3', 0xf6,
        ];
        let raw = RawValue::from_bytes(input.to_vec().into(), &l).unwrap();
        assert_eq!(
            rekey(&raw).as_bytes(),
            &[
                0xa1, 0x01, 0x82, 0xc1, 0x41, 0xff, 0xa2, 0x62, b'0', b'2', 0x61, b'x', 0x03, 0xf6
            ]
        );
    }

    #[test]
    fn malformed_or_too_deep_input_is_refused_not_walked() {
        let l = DecodeLimits::default();
        assert!(from_cbor(&[0x82, 0x01], &l).is_err());
        assert!(
            from_cbor(&[0x9f, 0xff], &l).is_err(),
            "indefinite lengths are refused"
        );
        let deep = vec![0x81; usize::from(l.effective_depth()) + 1];
        assert!(from_cbor(&deep, &l).is_err());
    }
}
