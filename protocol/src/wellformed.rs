//! A strict, allocation-free well-formedness check of one CBOR data item.
//!
//! Every frame passes through [`check`] before anything else reads it. After it
//! succeeds the rest of the decoder may rely on: exactly one data item spans
//! the whole input, every length prefix fits in the input, every text string
//! is valid UTF-8, nesting stays within the depth limit, and no
//! indefinite-length item or reserved encoding appears.
//!
//! The check never allocates and its recursion is bounded by the depth limit.

use crate::error::DecodeError;

/// Checks that `input` holds exactly one well-formed CBOR data item that
/// obeys the plexus.v1 restrictions (definite lengths only, depth at most
/// `max_depth`).
pub(crate) fn check(input: &[u8], max_depth: u16) -> Result<(), DecodeError> {
    let mut pos = 0;
    item(input, &mut pos, 1, max_depth)?;
    if pos != input.len() {
        return Err(DecodeError::TrailingBytes { offset: pos });
    }
    Ok(())
}

/// Returns the length in bytes of the single well-formed item that starts at
/// the beginning of `input` (trailing bytes are allowed and not counted).
pub(crate) fn item_len(input: &[u8], max_depth: u16) -> Result<usize, DecodeError> {
    let mut pos = 0;
    item(input, &mut pos, 1, max_depth)?;
    Ok(pos)
}

fn byte(input: &[u8], pos: &mut usize) -> Result<u8, DecodeError> {
    let b = *input
        .get(*pos)
        .ok_or(DecodeError::Truncated { offset: *pos })?;
    *pos += 1;
    Ok(b)
}

/// Reads the argument of an initial byte whose additional information is
/// `ai` (which must be below 28 and not 31).
fn argument(input: &[u8], pos: &mut usize, ai: u8) -> Result<u64, DecodeError> {
    let n = match ai {
        0..=23 => return Ok(u64::from(ai)),
        24 => 1,
        25 => 2,
        26 => 4,
        27 => 8,
        _ => {
            return Err(DecodeError::Malformed {
                offset: pos.saturating_sub(1),
                reason: "reserved additional information",
            });
        }
    };
    let end = pos
        .checked_add(n)
        .filter(|end| *end <= input.len())
        .ok_or(DecodeError::Truncated { offset: *pos })?;
    let mut v = 0u64;
    for b in &input[*pos..end] {
        v = (v << 8) | u64::from(*b);
    }
    *pos = end;
    Ok(v)
}

fn item(input: &[u8], pos: &mut usize, depth: u16, max_depth: u16) -> Result<(), DecodeError> {
    if depth > max_depth {
        return Err(DecodeError::TooDeep { max: max_depth });
    }
    let start = *pos;
    let initial = byte(input, pos)?;
    let major = initial >> 5;
    let ai = initial & 0x1f;
    if ai == 31 {
        return Err(if major == 7 {
            DecodeError::Malformed {
                offset: start,
                reason: "unexpected break",
            }
        } else if (2..=5).contains(&major) {
            DecodeError::IndefiniteLength { offset: start }
        } else {
            DecodeError::Malformed {
                offset: start,
                reason: "reserved additional information",
            }
        });
    }
    let arg = argument(input, pos, ai)?;
    match major {
        0 | 1 => Ok(()),
        2 | 3 => {
            let remaining = (input.len() - *pos) as u64;
            if arg > remaining {
                return Err(DecodeError::Truncated { offset: *pos });
            }
            // `arg <= remaining`, which came from a `usize`.
            let end =
                *pos + usize::try_from(arg).map_err(|_| DecodeError::Truncated { offset: *pos })?;
            if major == 3 && std::str::from_utf8(&input[*pos..end]).is_err() {
                return Err(DecodeError::InvalidUtf8 { offset: start });
            }
            *pos = end;
            Ok(())
        }
        4 | 5 => {
            // Each element takes at least one byte: a count larger than the
            // rest of the input can only be truncated. This bounds the loop by
            // the input length, never by the untrusted prefix.
            let per = if major == 5 { 2 } else { 1 };
            let remaining = (input.len() - *pos) as u64;
            if arg.saturating_mul(per) > remaining {
                return Err(DecodeError::Truncated { offset: *pos });
            }
            for _ in 0..arg * per {
                item(input, pos, depth + 1, max_depth)?;
            }
            Ok(())
        }
        6 => item(input, pos, depth + 1, max_depth),
        _ => {
            // Major type 7: simple values and floats. The argument was read
            // above; only the one-byte simple form has a further rule.
            if ai == 24 && arg < 32 {
                return Err(DecodeError::Malformed {
                    offset: start,
                    reason: "two-byte encoding of a simple value below 32",
                });
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(hex: &[u8]) -> Result<(), DecodeError> {
        check(hex, 8)
    }

    #[test]
    fn accepts_scalars_and_containers() {
        assert!(ok(&[0x00]).is_ok());
        assert!(ok(&[0x1b, 0, 0, 0, 0, 0, 0, 0, 1]).is_ok());
        assert!(ok(&[0x83, 0x01, 0x02, 0x03]).is_ok());
        assert!(ok(&[0xa1, 0x61, b'a', 0xf6]).is_ok());
        assert!(ok(&[0xf9, 0x3c, 0x00]).is_ok());
        assert!(ok(&[0xc1, 0x1a, 0, 0, 0, 1]).is_ok());
    }

    #[test]
    fn rejects_bad_items() {
        assert!(matches!(ok(&[]), Err(DecodeError::Truncated { .. })));
        assert!(matches!(
            ok(&[0x9f, 0xff]),
            Err(DecodeError::IndefiniteLength { .. })
        ));
        assert!(matches!(ok(&[0xff]), Err(DecodeError::Malformed { .. })));
        assert!(matches!(ok(&[0x1c]), Err(DecodeError::Malformed { .. })));
        assert!(matches!(
            ok(&[0xf8, 0x10]),
            Err(DecodeError::Malformed { .. })
        ));
        assert!(matches!(
            ok(&[0x62, 0xff, 0xfe]),
            Err(DecodeError::InvalidUtf8 { .. })
        ));
        assert!(matches!(
            ok(&[0x01, 0x02]),
            Err(DecodeError::TrailingBytes { offset: 1 })
        ));
        // An array claiming 2^64-1 elements in a 9-byte input.
        assert!(matches!(
            ok(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
            Err(DecodeError::Truncated { .. })
        ));
    }

    #[test]
    fn depth_is_bounded() {
        let deep = [0x81u8; 9]
            .iter()
            .copied()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert!(matches!(ok(&deep), Err(DecodeError::TooDeep { max: 8 })));
        let fine = [0x81u8; 7]
            .iter()
            .copied()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert!(ok(&fine).is_ok());
        let tags = [0xc1u8; 9]
            .iter()
            .copied()
            .chain([0x00])
            .collect::<Vec<_>>();
        assert!(matches!(ok(&tags), Err(DecodeError::TooDeep { .. })));
    }

    #[test]
    fn item_len_ignores_trailing() {
        assert_eq!(item_len(&[0x82, 0x01, 0x02, 0xff], 4).ok(), Some(3));
    }
}
