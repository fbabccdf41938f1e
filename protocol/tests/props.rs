//! Property tests: every frame round-trips; no input makes the decoder panic.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use bytes::Bytes;
use plexus_protocol::{DecodeLimits, Frame};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn every_frame_round_trips(frame in common::frame()) {
        let bytes = frame.to_bytes();
        let decoded = Frame::decode(bytes.clone(), &DecodeLimits::default()).unwrap();
        prop_assert_eq!(&decoded, &frame);
        prop_assert_eq!(decoded.to_bytes(), bytes);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = Frame::decode(Bytes::from(bytes), &DecodeLimits::default());
    }

    #[test]
    fn mutated_frames_never_panic(
        frame in common::frame(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = frame.to_vec();
        for (i, b) in flips {
            let i = i.index(bytes.len());
            bytes[i] = b;
        }
        let limits = DecodeLimits { max_depth: 6, ..DecodeLimits::default() };
        let cut = cut.index(bytes.len() + 1);
        let _ = Frame::decode(Bytes::from(bytes[..cut].to_vec()), &limits);
        if let Ok(f) = Frame::decode(Bytes::from(bytes), &limits) {
            // Whatever decodes must re-encode and decode to the same frame.
            prop_assert_eq!(Frame::decode(f.to_bytes(), &limits).unwrap(), f);
        }
    }

    #[test]
    fn oversized_input_is_rejected_before_parsing(len in 65usize..4096) {
        let limits = DecodeLimits { max_frame_size: 64, ..DecodeLimits::default() };
        let err = Frame::decode(Bytes::from(vec![0u8; len]), &limits).unwrap_err();
        prop_assert_eq!(err, plexus_protocol::DecodeError::TooLarge { size: len, max: 64 });
    }
}

#[test]
fn deep_nesting_is_rejected_not_overflowed() {
    // A million nested arrays would overflow a naive recursive decoder.
    let mut bytes = vec![0x81u8; 1_000_000];
    bytes.push(0x00);
    let limits = DecodeLimits {
        max_frame_size: usize::MAX,
        max_depth: u16::MAX,
    };
    let err = Frame::decode(Bytes::from(bytes), &limits).unwrap_err();
    assert_eq!(
        err,
        plexus_protocol::DecodeError::TooDeep {
            max: plexus_protocol::limits::MAX_DEPTH_CEILING
        }
    );
}
