//! Fuzz the frame decoder: no input may panic, and whatever decodes must
//! re-encode to bytes that decode to the same frame.
//!
//! Run with `RUSTC_BOOTSTRAP=1 cargo fuzz run decode` from `protocol/` (see
//! `protocol/fuzz/README.md`).
#![no_main]
// The project rule (`unsafe_code = "forbid"` in the workspace lints) holds here
// too, at its strictest. `forbid` compiles because the only unsafe-looking code
// is the `#[no_mangle] extern "C"` entry points that `fuzz_target!` expands to:
// rustc does not report the `unsafe_code` lint for code expanded from a macro
// defined in another crate, and libfuzzer-sys is an edition-2018 crate, so its
// `#[no_mangle]` tokens need no `unsafe(...)` wrapper even in this edition-2024
// crate. Any `unsafe` block or `#[unsafe(no_mangle)]` written in this file is
// still a hard error.
#![forbid(unsafe_code)]

use libfuzzer_sys::fuzz_target;
use plexus_protocol::{DecodeLimits, Frame};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_frame_size: 64 * 1024,
        max_depth: 32,
    };
    if let Ok(frame) = Frame::decode(bytes::Bytes::copy_from_slice(data), &limits) {
        let again = Frame::decode(frame.to_bytes(), &limits).expect("re-encoded frame decodes");
        assert_eq!(again, frame);
    }
});
