//! The byte-level examples of protocol.md §24 (HLC encoding, record hash
//! and collection checksum) against the reference server's implementation,
//! so the spec a client in another language implements from is the one the
//! hub computes.
#![allow(clippy::unwrap_used, missing_docs)]

use plexus_protocol::methods::sync::{hlc, hlc_counter, hlc_ms};
use plexus_server::sync::model::record_hash;

#[test]
fn hlc_example_of_the_spec() {
    let t = hlc(1_700_000_000_000, 3);
    assert_eq!(t, 111_411_200_000_000_003);
    assert_eq!(
        t.to_be_bytes(),
        [0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, 0x00, 0x03]
    );
    assert_eq!((hlc_ms(t), hlc_counter(t)), (1_700_000_000_000, 3));
}

#[test]
fn record_hash_and_checksum_examples_of_the_spec() {
    let h1 = record_hash("notes", "n1", 1, [("", &b"hello"[..])]);
    assert_eq!(h1, 0xbdee_ab44_b524_9348);
    let h2 = record_hash("notes", "n2", 2, [("title", &b"Groceries"[..])]);
    assert_eq!(h2, 0x6033_6d74_bb43_75e8);
    assert_eq!(h1.wrapping_add(h2), 0x1e22_18b9_7068_0930);
    // Field order does not matter: names are hashed in bytewise order.
    let a = record_hash("c", "i", 7, [("b", &b"2"[..]), ("a", &b"1"[..])]);
    let b = record_hash("c", "i", 7, [("a", &b"1"[..]), ("b", &b"2"[..])]);
    assert_eq!(a, b);
}
