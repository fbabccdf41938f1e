//! `plexus.v1` frames over the runner's own CBOR ([`crate::cbor`]):
//! building what a client sends, and parsing what a server sends with every
//! envelope rule of `docs/protocol.md` §5 checked.

use crate::cbor::{Decoder, Value, encode, encode_into, head};

/// An embedded item: its exact bytes in the frame and its decoded value.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The item's bytes, exactly as they appeared.
    pub raw: Vec<u8>,
    /// The decoded item.
    pub value: Value,
}

/// An error object (§14.1).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorObject {
    /// Key 0.
    pub code: String,
    /// Key 1.
    pub message: String,
    /// Key 2 (`null` counts as absent).
    pub retry_after_ms: Option<u64>,
    /// The whole object.
    pub value: Value,
}

/// A decoded server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    /// Kind 0 (server-initiated, P20).
    Request {
        /// The server's id.
        id: u64,
        /// The method.
        method: String,
        /// The params.
        params: Item,
    },
    /// Kind 1.
    Response {
        /// The request's id.
        id: u64,
        /// The result or the error.
        outcome: Result<Item, ErrorObject>,
    },
    /// Kind 2.
    Notification {
        /// The notification name.
        method: String,
        /// Its body.
        params: Item,
    },
    /// Kind 3.
    Chunk {
        /// The request's id.
        id: u64,
        /// Sequence number.
        seq: u64,
        /// Last chunk?
        fin: bool,
        /// The data.
        data: Item,
    },
}

impl Frame {
    /// A one-line description for failure details.
    pub fn describe(&self) -> String {
        match self {
            Frame::Request { id, method, params } => {
                format!("request [{id}] {method} {}", params.value)
            }
            Frame::Response { id, outcome: Ok(r) } => format!("response [{id}] ok {}", r.value),
            Frame::Response {
                id,
                outcome: Err(e),
            } => {
                format!("response [{id}] error {} ({})", e.code, e.message)
            }
            Frame::Notification { method, params } => {
                format!("notification {method} {}", params.value)
            }
            Frame::Chunk { id, seq, fin, data } => {
                format!("chunk [{id}] seq {seq} final {fin} {}", data.value)
            }
        }
    }

    /// The id of a response or chunk.
    pub fn reply_id(&self) -> Option<u64> {
        match self {
            Frame::Response { id, .. } | Frame::Chunk { id, .. } => Some(*id),
            _ => None,
        }
    }
}

/// Parses a server frame strictly (§4 and §5). The message is the reason
/// it is undecodable.
pub fn parse(bytes: &[u8], max_depth: usize) -> Result<Frame, String> {
    let mut d = Decoder::new(bytes, max_depth);
    let Some(count) = d.array_head().map_err(|e| e.to_string())? else {
        // Not an array: still check it is well-formed, for a better message.
        let v = d.item(1).map_err(|e| e.to_string())?;
        return Err(format!("not an array: {v}"));
    };
    if count == 0 {
        return Err("an empty array".into());
    }
    let mut elems: Vec<Item> = Vec::new();
    for _ in 0..count {
        let start = d.pos();
        let value = d.item(2).map_err(|e| e.to_string())?;
        let raw = d.slice(start, d.pos()).to_vec();
        elems.push(Item { raw, value });
    }
    d.finish().map_err(|e| e.to_string())?;
    let kind = elems[0]
        .value
        .as_u64()
        .ok_or_else(|| format!("kind {} is not an unsigned integer", elems[0].value))?;
    let need = match kind {
        0 | 1 => 4,
        2 => 3,
        3 => 5,
        k => return Err(format!("unknown kind {k}")),
    };
    if elems.len() < need {
        return Err(format!(
            "kind {kind} with {} elements (at least {need})",
            elems.len()
        ));
    }
    let uint = |i: usize, what: &str| {
        elems[i]
            .value
            .as_u64()
            .ok_or_else(|| format!("{what} {} is not an unsigned integer", elems[i].value))
    };
    let method = |i: usize| match &elems[i].value {
        Value::Text(s) if !s.is_empty() => Ok(s.clone()),
        v => Err(format!("method {v} is not a non-empty text string")),
    };
    Ok(match kind {
        0 => Frame::Request {
            id: uint(1, "id")?,
            method: method(2)?,
            params: elems[3].clone(),
        },
        1 => {
            let id = uint(1, "id")?;
            let outcome = match uint(2, "status")? {
                0 => Ok(elems[3].clone()),
                1 => Err(error_object(&elems[3].value)?),
                s => return Err(format!("status {s}")),
            };
            Frame::Response { id, outcome }
        }
        2 => Frame::Notification {
            method: method(1)?,
            params: elems[2].clone(),
        },
        _ => Frame::Chunk {
            id: uint(1, "id")?,
            seq: uint(2, "seq")?,
            fin: elems[3]
                .value
                .as_bool()
                .ok_or_else(|| format!("final {} is not a bool", elems[3].value))?,
            data: elems[4].clone(),
        },
    })
}

/// Checks that `v` is a typed map (§4.8): integer keys within the signed
/// 64-bit range and no key twice (P14).
pub fn typed_map(v: &Value) -> Result<&[(Value, Value)], String> {
    let m = v.as_map().ok_or_else(|| format!("{v} is not a map"))?;
    let mut seen: Vec<i128> = Vec::with_capacity(m.len());
    for (k, _) in m {
        let key = match k {
            Value::Uint(n) if *n <= i64::MAX as u64 => i128::from(*n),
            Value::Neg(n) if *n < i64::MAX as u64 + 1 => -1 - i128::from(*n),
            other => {
                return Err(format!(
                    "typed map key {other} is not an integer in the i64 range"
                ));
            }
        };
        if seen.contains(&key) {
            return Err(format!("typed map {v} has key {key} twice"));
        }
        seen.push(key);
    }
    Ok(m)
}

fn error_object(v: &Value) -> Result<ErrorObject, String> {
    typed_map(v).map_err(|e| format!("invalid error object: {e}"))?;
    let code = v
        .get(0)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("error object {v} has no text code"))?;
    let message = v
        .get(1)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("error object {v} has no text message"))?;
    let retry_after_ms = match v.opt(2) {
        None => None,
        Some(Value::Uint(n)) => Some(*n),
        Some(o) => return Err(format!("error object retry_after_ms {o} is not a uint")),
    };
    Ok(ErrorObject {
        code: code.to_owned(),
        message: message.to_owned(),
        retry_after_ms,
        value: v.clone(),
    })
}

/// `[0, id, method, params]` with the params given as encoded bytes.
pub fn request_raw(id: u64, method: &str, params: &[u8]) -> Vec<u8> {
    let mut out = vec![0x84, 0x00];
    head(&mut out, 0, id);
    encode_into(&mut out, &Value::text(method));
    out.extend_from_slice(params);
    out
}

/// `[0, id, method, params]`.
pub fn request(id: u64, method: &str, params: &Value) -> Vec<u8> {
    request_raw(id, method, &encode(params))
}

/// `[2, method, params]`.
pub fn notification(method: &str, params: &Value) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::Uint(2),
        Value::text(method),
        params.clone(),
    ]))
}

/// `[3, id, seq, final, data]`.
pub fn chunk(id: u64, seq: u64, fin: bool, data: &Value) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::Uint(3),
        Value::Uint(id),
        Value::Uint(seq),
        Value::Bool(fin),
        data.clone(),
    ]))
}

/// `[1, id, 0, result]`.
pub fn response_ok(id: u64, result: &Value) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::Uint(1),
        Value::Uint(id),
        Value::Uint(0),
        result.clone(),
    ]))
}

/// `[1, id, 1, {0: code, 1: message}]`.
pub fn response_error(id: u64, code: &str, message: &str) -> Vec<u8> {
    encode(&Value::Array(vec![
        Value::Uint(1),
        Value::Uint(id),
        Value::Uint(1),
        Value::map([(0, Value::text(code)), (1, Value::text(message))]),
    ]))
}

/// A `ping` request of exactly `size` bytes (a byte-string param padded to
/// fit), for the frame size cases. `None` if `size` is too small.
pub fn ping_of_size(id: u64, size: usize) -> Option<Vec<u8>> {
    let empty = request(id, "ping", &Value::Bytes(Vec::new())).len();
    let most = size.checked_sub(empty)?;
    // The byte string's head grows at 24, 256 and 65536 bytes, so some
    // sizes are reachable only with a one-element array around it.
    for wrap in [false, true] {
        for n in (most.saturating_sub(12)..=most).rev() {
            let b = Value::Bytes(vec![0; n]);
            let params = if wrap { Value::Array(vec![b]) } else { b };
            let f = request(id, "ping", &params);
            if f.len() == size {
                return Some(f);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_examples_parse() {
        // §5.3 error response.
        let bytes = hex::decode("840107 01a2 00 69 6e6f745f666f756e64 01 781c 6e6f74207375627363726962656420746f20636861742e726f6f6d32".replace(' ', "")).unwrap();
        let f = parse(&bytes, 32).unwrap();
        let Frame::Response {
            id: 7,
            outcome: Err(e),
        } = f
        else {
            panic!("{f:?}")
        };
        assert_eq!(e.code, "not_found");
        // §5.5 chunk.
        let f = parse(&hex::decode("85030900f4420102").unwrap(), 32).unwrap();
        assert!(matches!(
            f,
            Frame::Chunk {
                id: 9,
                seq: 0,
                fin: false,
                ..
            }
        ));
    }

    #[test]
    fn bad_envelopes_are_named() {
        assert!(parse(&[0x80], 32).unwrap_err().contains("empty"));
        assert!(
            parse(&[0x84, 0x01, 0x01, 0x02, 0xf6], 32)
                .unwrap_err()
                .contains("status")
        );
        assert!(
            parse(&[0x85, 0x03, 0x01, 0x00, 0x01, 0xf6], 32)
                .unwrap_err()
                .contains("bool")
        );
        let dup = encode(&Value::Array(vec![
            Value::Uint(1),
            Value::Uint(1),
            Value::Uint(1),
            Value::map([
                (0, Value::text("a")),
                (1, Value::text("b")),
                (0, Value::text("c")),
            ]),
        ]));
        assert!(parse(&dup, 32).unwrap_err().contains("twice"));
    }

    #[test]
    fn pings_of_any_size() {
        for size in [16usize, 40, 300, 16384, 16385, 70000] {
            assert_eq!(ping_of_size(1, size).unwrap().len(), size);
        }
    }
}
