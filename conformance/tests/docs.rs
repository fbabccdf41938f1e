//! `docs/conformance.md` lists the cases exactly as the runner does
//! (`plexus-conformance --list --markdown --exclude vector`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;

use plexus_conformance::runner::report;
use plexus_conformance::suite;
use plexus_conformance::vectors::VECTORS_DIR;

fn between<'a>(doc: &'a str, begin: &str, end: &str) -> &'a str {
    let start = doc
        .find(begin)
        .unwrap_or_else(|| panic!("no {begin} marker"));
    let start = start + doc[start..].find('\n').unwrap() + 1;
    let stop = doc.find(end).unwrap_or_else(|| panic!("no {end} marker"));
    &doc[start..stop]
}

#[test]
fn the_case_list_in_the_docs_is_current() {
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/conformance.md"
    ))
    .unwrap();
    // The vectors change with the spec; the docs list the other cases.
    let cases: Vec<_> = suite::all(Path::new(VECTORS_DIR))
        .into_iter()
        .filter(|c| c.group != "vector")
        .collect();
    assert_eq!(
        between(&doc, "<!-- cases:begin", "<!-- cases:end"),
        report::list(&cases, true),
        "docs/conformance.md is stale: paste `plexus-conformance --list --markdown --exclude vector` between the cases markers"
    );
}
