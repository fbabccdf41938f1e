//! Decoding arbitrary bytes never allocates more than a small multiple of
//! the input, whatever length prefixes the input claims.
//!
//! The global allocator is capped just above that bound while each decode
//! runs: an allocation past it fails and aborts the test process. This file
//! holds a single test so no other test allocates concurrently.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use bytes::Bytes;
use cap::Cap;
use plexus_protocol::{DecodeLimits, Frame};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::alloc::System;

#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

/// Slack for the allocator's bookkeeping and small fixed allocations.
const SLACK: usize = 16 * 1024;

fn decode_within_bound(bytes: Vec<u8>) {
    let bound = bytes.len() * 3 + SLACK;
    let input = Bytes::from(bytes);
    ALLOC.set_limit(ALLOC.allocated() + bound).unwrap();
    let result = Frame::decode(input, &DecodeLimits::default());
    ALLOC.set_limit(usize::MAX).unwrap();
    drop(result);
}

#[test]
fn decoding_allocation_is_bounded_by_input_size() {
    // The cap really bites: an allocation past the bound is refused.
    ALLOC.set_limit(ALLOC.allocated() + SLACK).unwrap();
    let refused = Vec::<u8>::new().try_reserve_exact(2 * SLACK).is_err();
    ALLOC.set_limit(usize::MAX).unwrap();
    assert!(refused, "the allocation cap is not enforced");

    // Hostile length prefixes: a 2^64-1 element array, a 4 GiB byte string,
    // a huge map, in tiny frames.
    for hostile in [
        vec![
            0x84, 0x00, 0x01, 0x61, b'x', 0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![
            0x84, 0x00, 0x01, 0x61, b'x', 0x5a, 0xff, 0xff, 0xff, 0xff, 0x00,
        ],
        vec![
            0x84, 0x01, 0x01, 0x01, 0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        vec![0x84, 0x00, 0x01, 0x7a, 0xff, 0xff, 0xff, 0xff, b'a'],
    ] {
        decode_within_bound(hostile);
    }
    let mut runner = TestRunner::new(Config::with_cases(1024));
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..256), |bytes| {
            decode_within_bound(bytes);
            Ok(())
        })
        .unwrap();
    runner
        .run(&common::frame(), |frame| {
            decode_within_bound(frame.to_vec());
            Ok(())
        })
        .unwrap();
}
