//! Rules of typed maps that the derived decoders do not check themselves.

use minicbor::Decoder;
use minicbor::data::Type;

/// Whether `item` is a map in which two entries have integer keys of the
/// same value (however each is encoded). Only the top level is examined;
/// anything that is not a map, or not well-formed, yields `false` and is
/// left to the typed decoder to reject.
pub(crate) fn duplicate_int_key(item: &[u8]) -> bool {
    let mut d = Decoder::new(item);
    let Ok(Some(len)) = d.map() else {
        return false;
    };
    // Typed maps have a handful of keys; the capacity is not taken from
    // the input beyond that.
    let mut keys: Vec<i128> = Vec::with_capacity(usize::try_from(len).unwrap_or(0).min(16));
    for _ in 0..len {
        let is_int = matches!(
            d.datatype(),
            Ok(Type::U8
                | Type::U16
                | Type::U32
                | Type::U64
                | Type::I8
                | Type::I16
                | Type::I32
                | Type::I64
                | Type::Int)
        );
        if is_int {
            match d.int() {
                Ok(k) => keys.push(i128::from(k)),
                Err(_) => return false,
            }
        } else if d.skip().is_err() {
            return false;
        }
        if d.skip().is_err() {
            return false;
        }
    }
    keys.sort_unstable();
    keys.windows(2).any(|w| w[0] == w[1])
}

#[cfg(test)]
mod tests {
    use super::duplicate_int_key;

    #[test]
    fn finds_equal_keys_whatever_their_encoding() {
        assert!(!duplicate_int_key(&[0xa2, 0x00, 0xf6, 0x01, 0xf6]));
        assert!(duplicate_int_key(&[0xa2, 0x00, 0xf6, 0x00, 0xf5]));
        // 0 and 0 written as a one-byte-argument head (18 00).
        assert!(duplicate_int_key(&[0xa2, 0x00, 0xf6, 0x18, 0x00, 0xf5]));
        // -1 twice.
        assert!(duplicate_int_key(&[0xa2, 0x20, 0xf6, 0x20, 0xf6]));
        // Text keys are not typed-map keys: not examined here.
        assert!(!duplicate_int_key(&[
            0xa2, 0x61, b'a', 0xf6, 0x61, b'a', 0xf6
        ]));
        assert!(!duplicate_int_key(&[0xf6]));
        assert!(!duplicate_int_key(&[0xa0]));
    }
}
