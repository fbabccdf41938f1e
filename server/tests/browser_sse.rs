//! SSE in a real browser: headless Chromium (Debian's `chromium`, which
//! `.ci/run` installs) loads a page whose plain `EventSource` follows a
//! durable topic. The hub drops the stream (the browser reconnects by
//! itself with `Last-Event-ID`), then the browser is killed and the page
//! reloaded from the last id it saw; every event arrives once, in order.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use plexus_testkit::*;
use serde_json::{Value, json};
use tokio::sync::mpsc;

const CHROMIUM: &str = "/usr/bin/chromium";
const KEY: &str = "browser-test-key-0123456789abcdef";

/// The page: one `EventSource`, every event and every `open` reported, in
/// order, to `/report` on the page's own origin.
fn page(hub: &str, token: &str, last: Option<&str>) -> String {
    let last = last.map_or("null".to_owned(), |l| format!("{l:?}"));
    format!(
        r#"<!doctype html><title>sse</title><script>
let url = "{hub}/v1/sse?topic=orders.b&token={token}";
const last = {last};
if (last) url += "&last_event_id=" + encodeURIComponent(last);
let chain = Promise.resolve();
const report = (doc) => {{ chain = chain.then(() => fetch("/report", {{method: "POST", body: JSON.stringify(doc)}})); }};
const es = new EventSource(url);
es.onopen = () => report({{open: true}});
es.addEventListener("event", (e) => report({{id: e.lastEventId, data: JSON.parse(e.data).data}}));
</script>"#
    )
}

struct Pages {
    addr: std::net::SocketAddr,
    reports: mpsc::UnboundedReceiver<Value>,
}

/// Serves `/page?last=…` and collects `/report` bodies.
async fn page_server(hub: String, token: String) -> Pages {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, reports) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let (hub, token, tx) = (hub.clone(), token.clone(), tx.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let (hub, token, tx) = (hub.clone(), token.clone(), tx.clone());
                    async move {
                        let last = req.uri().query().and_then(|q| {
                            form_urlencoded::parse(q.as_bytes())
                                .find(|(k, _)| k == "last")
                                .map(|(_, v)| v.into_owned())
                        });
                        if req.uri().path() == "/report" {
                            let b = req.into_body().collect().await.unwrap().to_bytes();
                            let _ = tx.send(serde_json::from_slice::<Value>(&b).unwrap());
                            return Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())));
                        }
                        let html = page(&hub, &token, last.as_deref());
                        let mut r = Response::new(Full::new(Bytes::from(html)));
                        r.headers_mut()
                            .insert("content-type", "text/html".parse().unwrap());
                        Ok(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Pages { addr, reports }
}

fn chromium(url: &str, profile: &std::path::Path) -> tokio::process::Child {
    tokio::process::Command::new(CHROMIUM)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromium starts")
}

impl Pages {
    async fn next(&mut self) -> Value {
        tokio::time::timeout(Duration::from_secs(30), self.reports.recv())
            .await
            .expect("the browser reports in time")
            .unwrap()
    }

    async fn opened(&mut self) {
        let r = self.next().await;
        assert_eq!(r["open"], true, "{r}");
    }

    /// The next event's (id, data), skipping repeated `open`s.
    async fn event(&mut self) -> (String, i64) {
        loop {
            let r = self.next().await;
            if r["open"] == true {
                continue;
            }
            return (
                r["id"].as_str().unwrap().to_owned(),
                r["data"].as_i64().unwrap(),
            );
        }
    }
}

async fn publish(h: &TestHub, n: i64) {
    api(h, "publish", json!({"topic": "orders.b", "data": n})).await;
}

async fn api(h: &TestHub, op: &str, body: Value) -> Value {
    let c: hyper_util::client::legacy::Client<_, Full<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = Request::post(format!("http://{}/v1/api/{op}", h.addr()))
        .header("authorization", format!("Bearer {KEY}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let r = c.request(req).await.unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.into_body().collect().await.unwrap().to_bytes()).unwrap()
}

#[tokio::test]
async fn a_browser_event_source_resumes_exactly_across_a_drop_and_a_reload() {
    if !std::path::Path::new(CHROMIUM).exists() {
        eprintln!("skipped: {CHROMIUM} is not installed (.ci/run installs Debian's chromium)");
        return;
    }
    let db = TestDb::sqlite();
    let h = TestHub::start_durable(&db, streams_config(&["orders.>"]), |c| {
        c.http.api_keys = vec![api_key("browser", KEY, &["*"], &["orders.*"])];
    })
    .await;
    for n in 1..=3 {
        publish(&h, n).await;
    }
    let mut pages = page_server(format!("http://{}", h.addr()), token("reader")).await;
    let profile = tempfile::tempdir().unwrap();
    let url = format!("http://{}/page", pages.addr);
    let mut browser = chromium(&url, profile.path());
    pages.opened().await;
    // Live from the page's load: 1–3 are not replayed.
    let mut seen = Vec::new();
    for n in 4..=5 {
        publish(&h, n).await;
        seen.push(pages.event().await);
    }
    // The hub ends the stream; EventSource reconnects by itself, sending
    // the last id as Last-Event-ID.
    let r = api(&h, "disconnect", json!({"user": "reader", "code": 4008})).await;
    assert_eq!(r["disconnected"], 1);
    publish(&h, 6).await;
    publish(&h, 7).await;
    seen.push(pages.event().await);
    seen.push(pages.event().await);
    publish(&h, 8).await;
    seen.push(pages.event().await);
    // The browser dies; the page is loaded again from the last id it saw.
    browser.kill().await.unwrap();
    publish(&h, 9).await;
    publish(&h, 10).await;
    let last = seen.last().unwrap().0.clone();
    let url = format!("http://{}/page?last={}", pages.addr, urlencode(&last));
    let profile2 = tempfile::tempdir().unwrap();
    let _browser = chromium(&url, profile2.path());
    seen.push(pages.event().await);
    seen.push(pages.event().await);
    publish(&h, 11).await;
    seen.push(pages.event().await);
    let data: Vec<i64> = seen.iter().map(|(_, d)| *d).collect();
    assert_eq!(data, [4, 5, 6, 7, 8, 9, 10, 11], "no gap, no duplicate");
}

fn urlencode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
