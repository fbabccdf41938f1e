//! The HTTP surface over real sockets: the server API with scoped API
//! keys, one-shot RPC with a user token, and SSE resuming exactly with
//! `Last-Event-ID`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use plexus_testkit::*;
use serde_json::{Value, json};

const ORDERS_KEY: &str = "orders-backend-key-0123456789abcdef";
const READER_KEY: &str = "users-reader-key-0123456789abcdef";

async fn hub(db: &TestDb) -> TestHub {
    TestHub::start_durable(db, streams_config(&["orders.>", "users.>"]), |c| {
        c.http.api_keys = vec![
            api_key("orders", ORDERS_KEY, &["*"], &["orders.*"]),
            api_key("reader", READER_KEY, &["history", "presence"], &["users.>"]),
        ];
    })
    .await
}

type Http = HttpClient<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    HttpClient::builder(TokioExecutor::new()).build_http()
}

async fn send(c: &Http, req: Request<Full<Bytes>>) -> (u16, Value) {
    let r = tokio::time::timeout(Duration::from_secs(10), c.request(req))
        .await
        .expect("the hub answers in time")
        .unwrap();
    let status = r.status().as_u16();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

fn post(h: &TestHub, path: &str, key: Option<&str>, body: &Value) -> Request<Full<Bytes>> {
    let mut b = Request::post(format!("http://{}{path}", h.addr()))
        .header("content-type", "application/json");
    if let Some(k) = key {
        b = b.header("authorization", format!("Bearer {k}"));
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Runs `op` with `key` and asserts it is refused with `status` and `code`.
async fn refused(h: &TestHub, key: &str, op: &str, body: Value, status: u16, code: &str) {
    let (s, r) = api(h, key, op, body).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (status, Some(code)),
        "{op}: {r}"
    );
}

/// Publishes `data` on `orders.s` with the orders key.
async fn publish_s(h: &TestHub, data: i64) {
    let (s, r) = api(
        h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.s", "data": data}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
}

/// `GET url` with `Last-Event-ID: last`.
fn resume(url: &str, last: &str) -> Request<Full<Bytes>> {
    Request::get(url)
        .header("last-event-id", last)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

async fn api(h: &TestHub, key: &str, op: &str, body: Value) -> (u16, Value) {
    send(&http(), post(h, &format!("/v1/api/{op}"), Some(key), &body)).await
}

#[tokio::test]
async fn the_server_api_publishes_reads_and_keeps_to_each_keys_scope() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    // Durable, idempotent publish.
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.1", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["offset"], 1);
    let (_, again) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.1", "data": {"n": 1}, "idempotency_key": "k1"}),
    )
    .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["offset"], 1);
    // expected_offset that does not fit: conflict, nothing stored.
    refused(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.1", "data": 2, "expected_offset": 7}),
        409,
        "conflict",
    )
    .await;
    // History shows exactly one event, its payload projected to JSON.
    let (s, r) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.1"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["events"].as_array().unwrap().len(), 1);
    assert_eq!(r["events"][0]["data"], json!({"n": 1}));
    assert_eq!(r["last"], 1);
    // Scope: the orders key cannot publish to users.*, the reader key cannot
    // publish at all, and neither applies anything.
    refused(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "users.1", "data": 1}),
        403,
        "forbidden",
    )
    .await;
    refused(
        &h,
        READER_KEY,
        "publish",
        json!({"topic": "users.1", "data": 1}),
        403,
        "forbidden",
    )
    .await;
    let (s, r) = api(&h, READER_KEY, "history", json!({"topic": "users.1"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["last"], 0, "nothing was published to users.1");
    // Bad keys and bodies.
    let (s, r) = api(&h, "not-a-key", "history", json!({"topic": "orders.1"})).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (s, _) = send(&http(), post(&h, "/v1/api/history", None, &json!({}))).await;
    assert_eq!(s, 401);
    refused(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.1"}),
        400,
        "invalid_params",
    )
    .await;
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.1", "data": 1, "extra": 1}),
    )
    .await;
    assert_eq!(s, 400, "unknown fields are refused: {r}");
    refused(&h, ORDERS_KEY, "nope", json!({}), 404, "method_not_found").await;
    // Broadcast: one outcome per topic.
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "broadcast",
        json!({"topics": ["orders.2", "users.2", "orders.3"], "data": "x"}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["results"][0]["ok"]["offset"], 1);
    assert_eq!(r["results"][1]["error"]["code"], "forbidden");
    assert_eq!(r["results"][2]["ok"]["offset"], 1);
    // Streams lists only what the key may read or publish.
    let (s, r) = api(&h, ORDERS_KEY, "streams", json!({})).await;
    assert_eq!(s, 200, "{r}");
    let names: Vec<&str> = r["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["topic"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["orders.1", "orders.2", "orders.3"]);
}

#[tokio::test]
async fn batches_run_in_order_and_stop_at_a_failure_or_run_in_parallel() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let ops = json!([
        {"publish": {"topic": "orders.b", "data": 1}},
        {"publish": {"topic": "users.b", "data": 2}},
        {"publish": {"topic": "orders.b", "data": 3}},
    ]);
    let (s, r) = api(&h, ORDERS_KEY, "batch", json!({"ops": ops})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["results"][0]["ok"]["offset"], 1);
    assert_eq!(r["results"][1]["error"]["code"], "forbidden");
    assert_eq!(
        r["results"][2]["error"]["code"], "cancelled",
        "not run after a failure"
    );
    let (_, hist) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.b"})).await;
    assert_eq!(hist["last"], 1, "the third was not applied");
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "batch",
        json!({"ops": ops, "parallel": true}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert!(r["results"][0]["ok"]["offset"].is_u64());
    assert_eq!(r["results"][1]["error"]["code"], "forbidden");
    assert!(
        r["results"][2]["ok"]["offset"].is_u64(),
        "parallel runs them all: {r}"
    );
    let (_, hist) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.b"})).await;
    assert_eq!(hist["last"], 3);
    let many: Vec<Value> = (0..101).map(|_| json!({"streams": {}})).collect();
    let (s, _) = api(&h, ORDERS_KEY, "batch", json!({"ops": many})).await;
    assert_eq!(s, 400, "more than max-batch operations");
}

#[tokio::test]
async fn cbor_bodies_carry_byte_strings_both_ways() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let doc = ciborium::Value::Map(vec![
        ("topic".into(), "orders.c".into()),
        ("data".into(), ciborium::Value::Bytes(vec![0, 1, 255])),
    ]);
    let mut body = Vec::new();
    ciborium::into_writer(&doc, &mut body).unwrap();
    let req = Request::post(format!("http://{}/v1/api/publish", h.addr()))
        .header("content-type", "application/cbor")
        .header("accept", "application/cbor")
        .header("x-api-key", ORDERS_KEY)
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let r = http().request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/cbor");
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let v: ciborium::Value = ciborium::from_reader(&b[..]).unwrap();
    assert!(format!("{v:?}").contains("offset"), "{v:?}");
    // JSON shows the bytes as base64url; the hub stored the bytes.
    let (_, r) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.c"})).await;
    assert_eq!(r["events"][0]["data"], "AAH_");
}

#[tokio::test]
async fn disconnect_closes_a_users_sockets_with_the_code_asked_for() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let (mut alice, _) = Client::authed(h.addr(), &token("alice")).await;
    let (s, r) = api(&h, ORDERS_KEY, "disconnect", json!({"user": "alice"})).await;
    assert_eq!((s, r["disconnected"].as_u64()), (200, Some(1)), "{r}");
    alice.expect_close(4003, true).await;
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "disconnect",
        json!({"user": "alice", "code": 4006}),
    )
    .await;
    assert_eq!(s, 400, "only 4003, 4008 and 1000: {r}");
    let (_, r) = api(&h, READER_KEY, "disconnect", json!({"user": "alice"})).await;
    assert_eq!(
        r["error"]["code"], "forbidden",
        "the reader key may not disconnect"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_the_answers_the_hub_gives() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let r = http()
        .get(
            format!("http://{}/v1/api/openapi.json", h.addr())
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let doc: Value =
        serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap();
    let schema_of = |name: &str| -> Value {
        // The whole document as the root, so that `$ref`s resolve.
        let mut root = doc.clone();
        root["$ref"] = json!(format!("#/components/schemas/{name}"));
        root
    };
    let check = |name: &str, v: &Value| {
        let validator = jsonschema::validator_for(&schema_of(name)).unwrap();
        let errors: Vec<String> = validator.iter_errors(v).map(|e| e.to_string()).collect();
        assert!(errors.is_empty(), "{name}: {errors:?} in {v}");
    };
    let (_, r) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.o", "data": [1, "two"]}),
    )
    .await;
    check("PublishResp", &r);
    let (_, r) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.o"})).await;
    check("HistoryResp", &r);
    let (_, r) = api(&h, ORDERS_KEY, "presence", json!({"topic": "orders.o"})).await;
    check("PresenceResp", &r);
    let (_, r) = api(&h, ORDERS_KEY, "streams", json!({})).await;
    check("StreamsResp", &r);
    let (_, r) = api(
        &h,
        ORDERS_KEY,
        "batch",
        json!({"ops": [{"latest": {"pattern": "orders.*"}}]}),
    )
    .await;
    check("BatchResp", &r);
    let (_, r) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "users.o", "data": 1}),
    )
    .await;
    check("ErrorDoc", &r);
    // A document the schema refuses, so the check above can fail.
    let validator = jsonschema::validator_for(&schema_of("PublishResp")).unwrap();
    assert!(!validator.is_valid(&json!({"offset": "one"})));
}

#[tokio::test]
async fn one_shot_rpc_runs_any_method_with_the_sockets_rules() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let c = http();
    let rpc = |method: &str, token: Option<&str>, body: Value| {
        post(&h, &format!("/v1/rpc/{method}"), token, &body)
    };
    let alice = token("alice");
    // publish's params with integer keys written as decimal strings.
    let (s, r) = send(
        &c,
        rpc(
            "publish",
            Some(&alice),
            json!({"0": "orders.r", "1": {"x": 1}}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["1"], 1, "the result's offset (key 1)");
    let (s, r) = send(&c, rpc("history", Some(&alice), json!({"0": "orders.r"}))).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["0"][0]["1"], json!({"x": 1}));
    // Error paths.
    let (s, r) = send(&c, rpc("ping", None, json!(null))).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let (s, r) = send(
        &c,
        rpc("ping", Some(&token_expiring_in("alice", -60)), json!(null)),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (401, Some("unauthenticated")),
        "{r}"
    );
    let (s, r) = send(
        &c,
        rpc("publish", Some(&alice), json!({"0": "bad..topic", "1": 1})),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (400, Some("invalid_params"))
    );
    let narrow = sign(
        &claims("bob", &["orders.*"], &["orders.*"], false),
        jsonwebtoken::Algorithm::HS256,
        SECRET,
    );
    let (s, r) = send(
        &c,
        rpc("publish", Some(&narrow), json!({"0": "users.r", "1": 1})),
    )
    .await;
    assert_eq!((s, r["error"]["code"].as_str()), (403, Some("forbidden")));
    let (s, r) = send(&c, rpc("subscribe", Some(&alice), json!({"0": "orders.r"}))).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (400, Some("invalid_params")),
        "needs a session"
    );
    let (s, r) = send(&c, rpc("svc.nobody", Some(&alice), json!({"a": 1}))).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "no rpc_call claim"
    );
    let mut caller = claims("carol", &[">"], &[">"], false);
    caller["plexus"]["rpc_call"] = json!(["svc.>"]);
    let caller = sign(&caller, jsonwebtoken::Algorithm::HS256, SECRET);
    let (s, r) = send(&c, rpc("svc.nobody", Some(&caller), json!({"a": 1}))).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (503, Some("no_callee")),
        "{r}"
    );
    let big = "x".repeat(h.hub().config.max_frame_size + 1);
    let (s, r) = send(
        &c,
        rpc("publish", Some(&alice), json!({"0": "orders.r", "1": big})),
    )
    .await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let bad = Request::post(format!("http://{}/v1/rpc/ping", h.addr()))
        .header("authorization", format!("Bearer {alice}"))
        .body(Full::new(Bytes::from_static(b"{not json")))
        .unwrap();
    let (s, r) = send(&c, bad).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (400, Some("invalid_params"))
    );
}

/// Reads SSE events from `r` until `n` events arrived; returns (id, data).
async fn sse_events(
    r: &mut Response<Incoming>,
    n: usize,
    buf: &mut String,
) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    while out.len() < n {
        if let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut id = None;
            let mut kind = "message";
            let mut data = None;
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = Some(v.to_owned());
                } else if let Some(v) = line.strip_prefix("event: ") {
                    kind = if v == "event" { "event" } else { "other" };
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = Some(serde_json::from_str::<Value>(v).unwrap());
                }
            }
            if kind == "event" {
                out.push((id.unwrap(), data.unwrap()));
            }
            continue;
        }
        let f = tokio::time::timeout(Duration::from_secs(10), r.body_mut().frame())
            .await
            .expect("an SSE event in time")
            .expect("the stream goes on")
            .unwrap();
        if let Ok(d) = f.into_data() {
            buf.push_str(std::str::from_utf8(&d).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn sse_resumes_with_last_event_id_without_gap_or_duplicate() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    for i in 1..=3 {
        publish_s(&h, i).await;
    }
    let url = format!(
        "http://{}/v1/sse?topic=orders.s&token={}",
        h.addr(),
        token("alice")
    );
    let c = http();
    // A first connection from the start (offset 0 is "before the first").
    let mut r = c.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let mut buf = String::new();
    // Live from now on: the three earlier events are not replayed without
    // an id.
    publish_s(&h, 4).await;
    publish_s(&h, 5).await;
    let got = sse_events(&mut r, 2, &mut buf).await;
    assert_eq!(got[0].1["data"], 4);
    assert_eq!(got[1].1["offset"], 5);
    let last = got[1].0.clone();
    drop(r);
    // Missed while away.
    for i in 6..=8 {
        publish_s(&h, i).await;
    }
    let req = resume(&url, &last);
    let mut r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    let mut buf = String::new();
    publish_s(&h, 9).await;
    let got = sse_events(&mut r, 4, &mut buf).await;
    let data: Vec<i64> = got
        .iter()
        .map(|(_, d)| d["data"].as_i64().unwrap())
        .collect();
    assert_eq!(data, [6, 7, 8, 9], "no gap, no duplicate");
    // A forged or foreign id is refused.
    let forged = resume(&url, &format!("{last}x"));
    assert_eq!(c.request(forged).await.unwrap().status(), 400);
    let other = format!(
        "http://{}/v1/sse?topic=orders.t&token={}",
        h.addr(),
        token("alice")
    );
    let foreign = resume(&other, &last);
    assert_eq!(c.request(foreign).await.unwrap().status(), 400);
    // No token, a forbidden topic.
    let anon = format!("http://{}/v1/sse?topic=orders.s", h.addr());
    assert_eq!(c.get(anon.parse().unwrap()).await.unwrap().status(), 401);
    let narrow = sign(
        &claims("bob", &["users.*"], &[], false),
        jsonwebtoken::Algorithm::HS256,
        SECRET,
    );
    let denied = format!("http://{}/v1/sse?topic=orders.s&token={narrow}", h.addr());
    assert_eq!(c.get(denied.parse().unwrap()).await.unwrap().status(), 403);
}

#[tokio::test]
async fn the_server_api_and_one_shot_rpc_reach_a_registered_callee() {
    let db = TestDb::sqlite();
    let h = TestHub::start_durable(&db, streams_config(&["orders.>"]), |c| {
        let mut k = api_key("svc", ORDERS_KEY, &["call"], &[]);
        k.procedures = vec!["svc.*".into()];
        c.http.api_keys = vec![k];
    })
    .await;
    let mut callee = claims("svc", &[], &[], false);
    callee["plexus"]["rpc_register"] = json!(["svc.>"]);
    let callee = sign(&callee, jsonwebtoken::Algorithm::HS256, SECRET);
    let client = plexus_client::Client::builder(h.url())
        .token(callee)
        .connect()
        .await
        .unwrap();
    let _echo = client
        .register("svc.echo", |inv: plexus_client::Invocation| async move {
            Ok::<_, plexus_protocol::WireError>(inv.params)
        })
        .await
        .unwrap();
    let _count = client
        .register_stream(
            "svc.count",
            plexus_client::RegisterOptions::new(),
            |_inv: plexus_client::Invocation| {
                futures_util::stream::iter((1..=3u32).map(Ok::<_, plexus_protocol::WireError>))
            },
        )
        .await
        .unwrap();
    // Through the server API, as the key's principal.
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "call",
        json!({"procedure": "svc.echo", "params": {"w": 64}}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r, json!({"result": {"w": 64}, "streamed": false}));
    let (s, r) = api(&h, ORDERS_KEY, "call", json!({"procedure": "svc.count"})).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r, json!({"result": [1, 2, 3], "streamed": true}));
    refused(
        &h,
        ORDERS_KEY,
        "call",
        json!({"procedure": "other.echo"}),
        403,
        "forbidden",
    )
    .await;
    // One-shot, with a user's token.
    let mut caller = claims("carol", &[], &[], false);
    caller["plexus"]["rpc_call"] = json!(["svc.>"]);
    let caller = sign(&caller, jsonwebtoken::Algorithm::HS256, SECRET);
    let c = http();
    let (s, r) = send(
        &c,
        post(
            &h,
            "/v1/rpc/svc.echo",
            Some(&caller),
            &json!({"0": "keys stay text"}),
        ),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(
        r,
        json!({"0": "keys stay text"}),
        "a procedure's params are not re-keyed"
    );
    let (s, r) = send(
        &c,
        post(
            &h,
            "/v1/rpc/svc.count?timeout_ms=5000",
            Some(&caller),
            &json!(null),
        ),
    )
    .await;
    assert_eq!((s, r), (200, json!([1, 2, 3])));
    client.close().await;
}

#[tokio::test]
async fn an_sse_stream_ends_with_the_close_reason_and_speaks_cbor_when_asked() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    let c = http();
    let url = format!(
        "http://{}/v1/sse?topic=orders.z&format=cbor&token={}",
        h.addr(),
        token("dave")
    );
    let mut r = c.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    let (s, _) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.z", "data": "z"}),
    )
    .await;
    assert_eq!(s, 200);
    let mut text = String::new();
    // The CBOR form: base64 of the `event` params map.
    let data = loop {
        let f = tokio::time::timeout(Duration::from_secs(10), r.body_mut().frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(std::str::from_utf8(&f.into_data().unwrap()).unwrap());
        if let Some(line) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
            break line.to_owned();
        }
    };
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(data)
        .unwrap();
    let ev: plexus_protocol::methods::EventParams<'_> = minicbor::decode(&raw).unwrap();
    assert_eq!((ev.topic, ev.offset), ("orders.z", Some(1)));
    assert_eq!(ev.data.as_bytes(), &[0x61, b'z']);
    // The hub ends the session: the last event says why, then the body ends.
    let (_, d) = api(
        &h,
        ORDERS_KEY,
        "disconnect",
        json!({"user": "dave", "code": 4008}),
    )
    .await;
    assert_eq!(d["disconnected"], 1);
    let mut rest = String::new();
    while let Some(f) = tokio::time::timeout(Duration::from_secs(10), r.body_mut().frame())
        .await
        .unwrap()
    {
        rest.push_str(std::str::from_utf8(&f.unwrap().into_data().unwrap()).unwrap());
    }
    assert!(rest.contains("event: closing\n"), "{rest}");
    assert!(
        rest.ends_with("event: close\ndata: {\"code\":4008,\"reason\":\"going_away\"}\n\n"),
        "{rest}"
    );
}

#[tokio::test]
async fn an_sse_reader_that_stalls_meets_the_slow_consumer_rule() {
    let db = TestDb::sqlite();
    let h = TestHub::start_durable(&db, streams_config(&["orders.>"]), |c| {
        c.http.api_keys = vec![api_key("orders", ORDERS_KEY, &["*"], &["orders.*"])];
        c.max_payload = 16 * 1024;
        c.rate_per_sec = 1_000_000;
        c.rate_burst = 1_000_000;
        c.max_frame_size = 32 * 1024;
        c.max_outbound_bytes = 64 * 1024;
    })
    .await;
    let c = http();
    let url = format!(
        "http://{}/v1/sse?topic=flood&token={}",
        h.addr(),
        token("erin")
    );
    let mut r = c.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(r.status(), 200);
    // Publish far more than every buffer between the hub and this reader
    // holds, without reading.
    let (mut publisher, _) = Client::authed(h.addr(), &token("pub")).await;
    let blob = minicbor::bytes::ByteVec::from(vec![7u8; 8 * 1024]);
    let raw = plexus_protocol::RawValue::encode(&blob).unwrap();
    for _ in 0..8000 {
        let p = plexus_protocol::methods::PublishParams::new("flood", raw.as_raw_ref());
        publisher.call("publish", &p).await.unwrap();
        if h.hub().open_connections() < 2 {
            break;
        }
    }
    // Now read: what was buffered, then the close reason.
    let mut rest = Vec::new();
    while let Some(f) = tokio::time::timeout(Duration::from_secs(20), r.body_mut().frame())
        .await
        .unwrap()
    {
        rest.extend_from_slice(&f.unwrap().into_data().unwrap());
    }
    let rest = String::from_utf8(rest).unwrap();
    assert!(
        rest.ends_with("event: close\ndata: {\"code\":4006,\"reason\":\"slow_consumer\"}\n\n"),
        "{}",
        &rest[rest.len().saturating_sub(300)..]
    );
}

#[tokio::test]
async fn sync_on_behalf_of_a_user_stays_within_the_keys_spaces() {
    use plexus_protocol::methods::sync::{SyncOp, SyncPullParams, SyncPushParams, hlc};
    let db = TestDb::sqlite();
    let h = TestHub::start(|c| {
        db.apply(c);
        let mut k = api_key("sync", ORDERS_KEY, &["sync"], &[]);
        k.spaces = vec!["team.>".into()];
        c.http.api_keys = vec![k];
    })
    .await;
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let push = SyncPushParams::new(
        "team.a",
        "backend",
        1,
        hlc(u64::try_from(ms).unwrap(), 0),
        vec![SyncOp::put("notes", "n1", b"hello".to_vec())],
    );
    // A put carries bytes: a CBOR body.
    let cbor_body = |user: &str, params: &[u8]| {
        let params: ciborium::Value = ciborium::from_reader(params).unwrap();
        let doc = ciborium::Value::Map(vec![
            ("user".into(), user.into()),
            ("params".into(), params),
        ]);
        let mut b = Vec::new();
        ciborium::into_writer(&doc, &mut b).unwrap();
        Request::post(format!("http://{}/v1/api/sync/push", h.addr()))
            .header("content-type", "application/cbor")
            .header("accept", "application/json")
            .header("authorization", format!("Bearer {ORDERS_KEY}"))
            .body(Full::new(Bytes::from(b)))
            .unwrap()
    };
    let c = http();
    let (s, r) = send(&c, cbor_body("bob", &minicbor::to_vec(&push).unwrap())).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["streamed"], false);
    assert_eq!(r["result"]["0"], 1, "position 1");
    // A pull in JSON, integer keys as decimal strings; the record's value
    // comes back as base64url.
    let pull = plexus_protocol::json::from_cbor(
        &minicbor::to_vec(SyncPullParams::new("team.a")).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "sync/pull",
        json!({"user": "bob", "params": pull}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["streamed"], true);
    assert!(
        r["result"].to_string().contains("aGVsbG8"),
        "hello, base64url: {r}"
    );
    // Outside the key's spaces: refused, nothing applied.
    let other = SyncPushParams::new(
        "user.bob",
        "backend",
        1,
        hlc(u64::try_from(ms).unwrap(), 1),
        vec![SyncOp::put("notes", "n1", b"x".to_vec())],
    );
    let (s, r) = send(&c, cbor_body("bob", &minicbor::to_vec(&other).unwrap())).await;
    assert_eq!(
        (s, r["error"]["code"].as_str()),
        (403, Some("forbidden")),
        "{r}"
    );
    refused(
        &h,
        ORDERS_KEY,
        "sync/push",
        json!({"user": "", "params": {}}),
        400,
        "invalid_params",
    )
    .await;
}

#[tokio::test]
async fn api_sessions_are_reused_and_a_closed_one_is_replaced_transparently() {
    let db = TestDb::sqlite();
    let h = hub(&db).await;
    for n in 0..5 {
        let (s, r) = api(
            &h,
            ORDERS_KEY,
            "publish",
            json!({"topic": "orders.p", "data": n}),
        )
        .await;
        assert_eq!(s, 200, "{r}");
    }
    // Requests one after the other share one pooled session.
    assert_eq!(h.hub().open_connections(), 1);
    // The hub closes it while it is idle: the next request runs on a new
    // one, and nothing is lost or doubled.
    assert_eq!(
        h.hub()
            .disconnect("api:orders", None, plexus_protocol::CloseCode::GoingAway),
        1
    );
    let (s, r) = api(
        &h,
        ORDERS_KEY,
        "publish",
        json!({"topic": "orders.p", "data": 5}),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["offset"], 6);
    let (_, r) = api(&h, ORDERS_KEY, "history", json!({"topic": "orders.p"})).await;
    assert_eq!(r["last"], 6);
}

#[tokio::test]
async fn the_http_limits_the_docs_name_are_enforced() {
    let db = TestDb::sqlite();
    let h = TestHub::start_durable(&db, streams_config(&["orders.>"]), |c| {
        let mut k = api_key("svc", ORDERS_KEY, &["call"], &[]);
        k.procedures = vec!["svc.*".into()];
        c.http.api_keys = vec![k];
        c.http.max_answer_bytes = 2;
        c.http.sse_max_topics = 2;
    })
    .await;
    // sse-max-topics: 1 to 2 topic parameters here.
    let c = http();
    let base = format!("http://{}/v1/sse?token={}", h.addr(), token("gina"));
    let none = c.get(base.parse().unwrap()).await.unwrap();
    assert_eq!(none.status(), 400);
    let three = format!("{base}&topic=a&topic=b&topic=c");
    assert_eq!(c.get(three.parse().unwrap()).await.unwrap().status(), 400);
    let two = format!("{base}&topic=a&topic=b");
    assert_eq!(c.get(two.parse().unwrap()).await.unwrap().status(), 200);
    // max-answer-bytes: a streamed answer of 3 one-byte chunks is too large.
    let mut callee = claims("svc", &[], &[], false);
    callee["plexus"]["rpc_register"] = json!(["svc.>"]);
    let client = plexus_client::Client::builder(h.url())
        .token(sign(&callee, jsonwebtoken::Algorithm::HS256, SECRET))
        .connect()
        .await
        .unwrap();
    let _count = client
        .register_stream(
            "svc.count",
            plexus_client::RegisterOptions::new(),
            |_inv: plexus_client::Invocation| {
                futures_util::stream::iter((1..=3u32).map(Ok::<_, plexus_protocol::WireError>))
            },
        )
        .await
        .unwrap();
    refused(
        &h,
        ORDERS_KEY,
        "call",
        json!({"procedure": "svc.count"}),
        413,
        "payload_too_large",
    )
    .await;
    client.close().await;
}
