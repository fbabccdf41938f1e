//! The JSON projection's vectors in `docs/protocol.md` Appendix D, checked
//! against `plexus_protocol::json`, so the appendix and the code cannot
//! drift apart.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use plexus_protocol::{DecodeLimits, json};

#[test]
fn every_vector_of_appendix_d_holds() {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"))
        .unwrap();
    let appendix = spec
        .split("## Appendix D. The JSON projection")
        .nth(1)
        .unwrap();
    let mut n = 0;
    for line in appendix.lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() != 5 || !["⇄", "→", "params"].contains(&cells[1]) {
            continue;
        }
        let cbor = hex::decode(cells[2].trim_matches('`')).unwrap();
        let value: serde_json::Value = serde_json::from_str(cells[3].trim_matches('`')).unwrap();
        match cells[1] {
            "params" => assert_eq!(json::to_cbor_keyed(&value).as_bytes(), &cbor[..], "{line}"),
            way => {
                assert_eq!(
                    json::from_cbor(&cbor, &DecodeLimits::default()).unwrap(),
                    value,
                    "{line}"
                );
                if way == "⇄" {
                    assert_eq!(json::to_cbor(&value).as_bytes(), &cbor[..], "{line}");
                }
            }
        }
        n += 1;
    }
    assert_eq!(n, 14, "every vector row was read");
}
