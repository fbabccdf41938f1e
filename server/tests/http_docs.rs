//! Every `curl` example of `docs/http.md` runs, in order, against a real
//! hub, and its answer must contain what the page shows under it — so the
//! page cannot go stale.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use plexus_testkit::*;
use serde_json::Value;

const KEY: &str = "docs-orders-key-0123456789abcdef";

/// The (command, expected answer) pairs of the page: a `sh` block that
/// runs `curl`, and the `json` block right after it.
fn examples(page: &str) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    let mut blocks: Vec<(String, String)> = Vec::new();
    let mut lines = page.lines();
    while let Some(l) = lines.next() {
        if let Some(lang) = l.strip_prefix("```")
            && !lang.is_empty()
        {
            let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "```").collect();
            blocks.push((lang.to_owned(), body.join("\n")));
        }
    }
    for w in blocks.windows(2) {
        if w[0].0 == "sh" && w[0].1.starts_with("curl ") {
            assert_eq!(
                w[1].0, "json",
                "every curl example shows its answer: {}",
                w[0].1
            );
            let expected = serde_json::from_str(&w[1].1).expect("the shown answer is JSON");
            out.push((w[0].1.clone(), expected));
        }
    }
    out
}

/// Whether `actual` has every field of `shown` with its value (`"*"`:
/// any value); arrays match element by element and in length.
fn contains(actual: &Value, shown: &Value) -> bool {
    match (actual, shown) {
        (_, Value::String(s)) if s == "*" => true,
        (Value::Object(a), Value::Object(s)) => s
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|x| contains(x, v))),
        (Value::Array(a), Value::Array(s)) => {
            a.len() == s.len() && a.iter().zip(s).all(|(x, v)| contains(x, v))
        }
        _ => actual == shown,
    }
}

#[test]
fn containment_is_strict_enough_to_fail() {
    let a: Value = serde_json::json!({"a": 1, "b": [1, 2], "c": "x"});
    assert!(contains(&a, &serde_json::json!({"a": 1, "c": "*"})));
    assert!(!contains(&a, &serde_json::json!({"a": 2})));
    assert!(!contains(&a, &serde_json::json!({"b": [1]})));
    assert!(!contains(&a, &serde_json::json!({"d": "*"})));
}

#[tokio::test]
async fn every_curl_example_of_the_http_page_answers_as_shown() {
    let page =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/http.md")).unwrap();
    let examples = examples(&page);
    assert!(
        examples.len() >= 12,
        "the page's examples were found: {}",
        examples.len()
    );
    let db = TestDb::sqlite();
    let h = TestHub::start_durable(&db, streams_config(&["orders.>"]), |c| {
        c.http.api_keys = vec![{
            let mut k = api_key("orders", KEY, &["*"], &["orders.*"]);
            k.procedures = vec!["svc.>".into()];
            k
        }];
    })
    .await;
    let hub = format!("http://{}", h.addr());
    let mut alice = claims("alice", &[">"], &[">"], true);
    alice["plexus"]["rpc_call"] = serde_json::json!([">"]);
    let token = sign(&alice, jsonwebtoken::Algorithm::HS256, SECRET);
    for (cmd, shown) in examples {
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&cmd)
            .env("HUB", &hub)
            .env("KEY", KEY)
            .env("TOKEN", &token)
            .output()
            .await
            .expect("sh runs");
        assert!(
            out.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let actual: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{cmd}: not JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        });
        assert!(
            contains(&actual, &shown),
            "{cmd}\n answered {actual}\n the page shows {shown}"
        );
    }
}
