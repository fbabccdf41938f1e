//! The runner's own CBOR: a value tree, an encoder with preferred
//! serialization, and a strict decoder that applies the rules of
//! `docs/protocol.md` §4 to everything a server sends.
//!
//! Deliberately independent of `plexus-protocol` (and of `minicbor`), so a
//! codec bug shared by a hub and its tests cannot hide from the runner.
//!
//! ```
//! use plexus_conformance::cbor::{Value, decode, encode};
//! let v = Value::Array(vec![Value::Uint(0), Value::Uint(1), Value::text("ping"), Value::Null]);
//! let bytes = encode(&v);
//! assert_eq!(bytes, [0x84, 0x00, 0x01, 0x64, b'p', b'i', b'n', b'g', 0xf6]);
//! assert_eq!(decode(&bytes, 32).unwrap(), v);
//! ```

use std::fmt;

/// One CBOR data item.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Major type 0.
    Uint(u64),
    /// Major type 1: the value is `-1 - n`.
    Neg(u64),
    /// Major type 2.
    Bytes(Vec<u8>),
    /// Major type 3.
    Text(String),
    /// Major type 4.
    Array(Vec<Value>),
    /// Major type 5, entries in wire order.
    Map(Vec<(Value, Value)>),
    /// Major type 6.
    Tag(u64, Box<Value>),
    /// `false` / `true`.
    Bool(bool),
    /// `null`.
    Null,
    /// `undefined`.
    Undefined,
    /// Any other simple value.
    Simple(u8),
    /// A float (encoded as a 64-bit float).
    Float(f64),
    /// Encoding only: bytes inserted verbatim as one item (they should be
    /// exactly one item; nothing checks it, so a case can send garbage).
    Raw(Vec<u8>),
}

impl Value {
    /// A text string.
    pub fn text(s: impl Into<String>) -> Value {
        Value::Text(s.into())
    }

    /// A map with unsigned integer keys.
    pub fn map<I: IntoIterator<Item = (u64, Value)>>(entries: I) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::Uint(k), v))
                .collect(),
        )
    }

    /// The empty map `{}`.
    pub fn empty_map() -> Value {
        Value::Map(Vec::new())
    }

    /// The unsigned integer, if this is one.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Uint(n) => Some(*n),
            _ => None,
        }
    }

    /// The text, if this is a text string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }

    /// The bool, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The elements, if this is an array.
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The entries, if this is a map.
    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Whether this is `null`.
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// The value of integer key `key` in a map (the first occurrence).
    pub fn get(&self, key: u64) -> Option<&Value> {
        self.as_map()?
            .iter()
            .find(|(k, _)| k.as_u64() == Some(key))
            .map(|(_, v)| v)
    }

    /// Like [`get`](Self::get), but `null` counts as absent (§4.8).
    pub fn opt(&self, key: u64) -> Option<&Value> {
        self.get(key).filter(|v| !v.is_null())
    }
}

impl fmt::Display for Value {
    /// Diagnostic notation (approximately RFC 8949 §8), for failure
    /// details.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Uint(n) => write!(f, "{n}"),
            Value::Neg(n) => write!(f, "-{}", u128::from(*n) + 1),
            Value::Bytes(b) if b.len() > 32 => {
                write!(f, "h'{}…'({} bytes)", hex::encode(&b[..16]), b.len())
            }
            Value::Bytes(b) => write!(f, "h'{}'", hex::encode(b)),
            Value::Text(s) if s.len() > 80 => {
                let cut: String = s.chars().take(40).collect();
                write!(f, "{cut:?}…({} bytes)", s.len())
            }
            Value::Text(s) => write!(f, "{s:?}"),
            Value::Array(a) => {
                f.write_str("[")?;
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
            Value::Map(m) => {
                f.write_str("{")?;
                for (i, (k, v)) in m.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{k}: {v}")?;
                }
                f.write_str("}")
            }
            Value::Tag(t, v) => write!(f, "{t}({v})"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Null => f.write_str("null"),
            Value::Undefined => f.write_str("undefined"),
            Value::Simple(s) => write!(f, "simple({s})"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Raw(b) => write!(f, "<raw h'{}'>", hex::encode(b)),
        }
    }
}

/// Encodes a head (major type and argument) in its shortest form.
pub fn head(out: &mut Vec<u8>, major: u8, arg: u64) {
    let m = major << 5;
    // Each branch's range check makes the narrowing exact.
    #[allow(clippy::cast_possible_truncation)]
    match arg {
        0..=23 => out.push(m | arg as u8),
        24..=0xff => out.extend([m | 24, arg as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend((arg as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend((arg as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend(arg.to_be_bytes());
        }
    }
}

/// Encodes `v` with preferred serialization (floats as 64-bit).
pub fn encode(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(&mut out, v);
    out
}

/// Appends the encoding of `v` to `out`.
pub fn encode_into(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Uint(n) => head(out, 0, *n),
        Value::Neg(n) => head(out, 1, *n),
        Value::Bytes(b) => {
            head(out, 2, b.len() as u64);
            out.extend_from_slice(b);
        }
        Value::Text(s) => {
            head(out, 3, s.len() as u64);
            out.extend_from_slice(s.as_bytes());
        }
        Value::Array(a) => {
            head(out, 4, a.len() as u64);
            for x in a {
                encode_into(out, x);
            }
        }
        Value::Map(m) => {
            head(out, 5, m.len() as u64);
            for (k, x) in m {
                encode_into(out, k);
                encode_into(out, x);
            }
        }
        Value::Tag(t, x) => {
            head(out, 6, *t);
            encode_into(out, x);
        }
        Value::Bool(false) => out.push(0xf4),
        Value::Bool(true) => out.push(0xf5),
        Value::Null => out.push(0xf6),
        Value::Undefined => out.push(0xf7),
        Value::Simple(s) if *s < 24 => out.push(0xe0 | s),
        Value::Simple(s) => out.extend([0xf8, *s]),
        Value::Float(x) => {
            out.push(0xfb);
            out.extend(x.to_bits().to_be_bytes());
        }
        Value::Raw(b) => out.extend_from_slice(b),
    }
}

/// Why bytes are not a conforming CBOR item (§4).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The input ends inside an item (§4.1).
    #[error("truncated at byte {0}")]
    Truncated(usize),
    /// A reserved additional-information value, a break byte, or a two-byte
    /// simple value below 32 (§4.1).
    #[error("not well-formed at byte {0}")]
    Malformed(usize),
    /// An indefinite length (§4.2).
    #[error("indefinite length at byte {0}")]
    Indefinite(usize),
    /// A text string that is not UTF-8 (§4.3).
    #[error("invalid UTF-8 in a text string at byte {0}")]
    Utf8(usize),
    /// Deeper than the limit (§4.4).
    #[error("nested deeper than {0}")]
    TooDeep(usize),
    /// Bytes after the item (§4.1).
    #[error("{0} bytes after the item")]
    Trailing(usize),
}

/// Decodes exactly one item from `bytes`, strictly: definite lengths,
/// valid UTF-8, depth at most `max_depth` (the item itself has depth 1),
/// nothing after it. Non-shortest heads are accepted (§4.5).
pub fn decode(bytes: &[u8], max_depth: usize) -> Result<Value, DecodeError> {
    let mut d = Decoder::new(bytes, max_depth);
    let v = d.item(1)?;
    d.finish()?;
    Ok(v)
}

/// A strict decoder over a byte slice; see [`decode`]. Exposed so that a
/// frame parser can take the top-level array apart element by element and
/// keep each element's exact bytes.
#[derive(Debug)]
pub struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    max_depth: usize,
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `bytes`.
    pub fn new(bytes: &'a [u8], max_depth: usize) -> Decoder<'a> {
        Decoder {
            bytes,
            pos: 0,
            max_depth,
        }
    }

    /// The current offset.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Fails unless every byte was consumed.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(DecodeError::Trailing(self.bytes.len() - self.pos))
        }
    }

    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.pos)
            .ok_or(DecodeError::Truncated(self.pos))?;
        self.pos += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(DecodeError::Truncated(self.bytes.len()));
        }
        // n <= left, which fits usize.
        #[allow(clippy::cast_possible_truncation)]
        let n = n as usize;
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reads a head; returns (major, additional information, argument).
    /// Fails on indefinite lengths and reserved values.
    fn head(&mut self) -> Result<(u8, u8, u64), DecodeError> {
        let at = self.pos;
        let ib = self.byte()?;
        let major = ib >> 5;
        let ai = ib & 0x1f;
        let arg = match ai {
            0..=23 => u64::from(ai),
            24 => u64::from(self.byte()?),
            25 => u64::from(u16::from_be_bytes(self.fixed()?)),
            26 => u64::from(u32::from_be_bytes(self.fixed()?)),
            27 => u64::from_be_bytes(self.fixed()?),
            28..=30 => return Err(DecodeError::Malformed(at)),
            _ => {
                return Err(if (2..=5).contains(&major) {
                    DecodeError::Indefinite(at)
                } else {
                    DecodeError::Malformed(at)
                });
            }
        };
        Ok((major, ai, arg))
    }

    fn fixed<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.take(N as u64)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    /// Reads the array head of a top-level array; `None` if the item is not
    /// a definite array (the position is then unchanged).
    pub fn array_head(&mut self) -> Result<Option<u64>, DecodeError> {
        let start = self.pos;
        let (major, _, arg) = self.head()?;
        if major == 4 {
            Ok(Some(arg))
        } else {
            self.pos = start;
            Ok(None)
        }
    }

    /// Reads one item at `depth`.
    pub fn item(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > self.max_depth {
            return Err(DecodeError::TooDeep(self.max_depth));
        }
        let at = self.pos;
        let (major, ai, arg) = self.head()?;
        Ok(match major {
            0 => Value::Uint(arg),
            1 => Value::Neg(arg),
            2 => Value::Bytes(self.take(arg)?.to_vec()),
            3 => {
                let s = self.take(arg)?;
                Value::Text(
                    std::str::from_utf8(s)
                        .map_err(|_| DecodeError::Utf8(at))?
                        .to_owned(),
                )
            }
            4 => {
                // Never size an allocation from the input: grow as items
                // actually decode.
                let mut a = Vec::new();
                for _ in 0..arg {
                    a.push(self.item(depth + 1)?);
                }
                Value::Array(a)
            }
            5 => {
                let mut m = Vec::new();
                for _ in 0..arg {
                    let k = self.item(depth + 1)?;
                    let v = self.item(depth + 1)?;
                    m.push((k, v));
                }
                Value::Map(m)
            }
            6 => Value::Tag(arg, Box::new(self.item(depth + 1)?)),
            _ => match ai {
                20 => Value::Bool(false),
                21 => Value::Bool(true),
                22 => Value::Null,
                23 => Value::Undefined,
                // A simple value in the one-byte extension must be >= 32.
                24 if arg < 32 => return Err(DecodeError::Malformed(at)),
                0..=19 | 24 => {
                    // arg <= 255 for these additional information values.
                    #[allow(clippy::cast_possible_truncation)]
                    Value::Simple(arg as u8)
                }
                25 => {
                    // The argument of a half float is 16 bits.
                    #[allow(clippy::cast_possible_truncation)]
                    Value::Float(f64::from(half_to_f32(arg as u16)))
                }
                // The argument of a single float is 32 bits.
                #[allow(clippy::cast_possible_truncation)]
                26 => Value::Float(f64::from(f32::from_bits(arg as u32))),
                _ => Value::Float(f64::from_bits(arg)),
            },
        })
    }

    /// The bytes between two offsets.
    pub fn slice(&self, from: usize, to: usize) -> &'a [u8] {
        &self.bytes[from..to]
    }
}

fn half_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f32::from(h & 0x3ff);
    match exp {
        0 => sign * frac * 2f32.powi(-24),
        31 if frac == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        _ => sign * (1.0 + frac / 1024.0) * 2f32.powi(exp - 15),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_shortest_and_round_trip() {
        for n in [
            0u64,
            23,
            24,
            255,
            256,
            65535,
            65536,
            u64::from(u32::MAX),
            u64::MAX,
        ] {
            let v = Value::Uint(n);
            assert_eq!(decode(&encode(&v), 32), Ok(v));
        }
        assert_eq!(encode(&Value::Uint(24)), [0x18, 24]);
        assert_eq!(encode(&Value::Uint(500)), [0x19, 0x01, 0xf4]);
    }

    #[test]
    fn strict_rules_are_applied() {
        assert_eq!(decode(&[0x5f, 0xff], 32), Err(DecodeError::Indefinite(0)));
        assert_eq!(decode(&[0x1c], 32), Err(DecodeError::Malformed(0)));
        assert_eq!(decode(&[0xf8, 0x10], 32), Err(DecodeError::Malformed(0)));
        assert_eq!(decode(&[0x62, 0xff, 0xfe], 32), Err(DecodeError::Utf8(0)));
        assert_eq!(decode(&[0x01, 0x02], 32), Err(DecodeError::Trailing(1)));
        assert_eq!(decode(&[0x82, 0x01], 32), Err(DecodeError::Truncated(2)));
        assert_eq!(decode(&[0x81, 0x81, 0x01], 2), Err(DecodeError::TooDeep(2)));
        assert_eq!(
            decode(&[0x18, 0x01], 32),
            Ok(Value::Uint(1)),
            "non-shortest accepted"
        );
        assert_eq!(
            decode(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], 32),
            Err(DecodeError::Truncated(9))
        );
    }

    #[test]
    fn floats_of_every_width_decode() {
        assert_eq!(decode(&[0xf9, 0x3e, 0x00], 32), Ok(Value::Float(1.5)));
        assert_eq!(
            decode(&[0xfa, 0x47, 0xc3, 0x50, 0x00], 32),
            Ok(Value::Float(100000.0))
        );
    }
}
