//! Fuzz the frame decoder: no input may panic, and whatever decodes must
//! re-encode to bytes that decode to the same frame.
//!
//! Run with `cargo fuzz run decode` from `protocol/` (see docs/protocol.md,
//! "Fuzzing").
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_protocol::{DecodeLimits, Frame};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits { max_frame_size: 64 * 1024, max_depth: 32 };
    if let Ok(frame) = Frame::decode(bytes::Bytes::copy_from_slice(data), &limits) {
        let again = Frame::decode(frame.to_bytes(), &limits).expect("re-encoded frame decodes");
        assert_eq!(again, frame);
    }
});
