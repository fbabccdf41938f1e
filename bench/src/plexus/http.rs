//! The hub's server API under load (issue 13): C clients, each on its own
//! HTTP/1.1 keep-alive connection, sending `POST /v1/api/publish` (or
//! `POST /v1/api/batch` of N publishes) back to back, one request in
//! flight each.
//!
//! The hub runs with one API key from a config file ([`http_toml`]); the
//! client is hyper's own HTTP/1.1 connection (no pool), so every client
//! keeps exactly one connection. Each request's body is encoded once per
//! client and reused; the answer is read whole and checked (status 200,
//! and for a batch one `ok` per operation).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::conn::WAIT;
use super::publish::{Counts, gather};
use crate::clock::now_nanos;
use crate::procs::{HubBinary, HubProcess};
use crate::scenario::{PublishLoadConfig, PublishLoadResult};
use crate::suite::BoxError;
use crate::window::Window;

/// The bench's API key (bench only; at least 24 characters, as the hub
/// requires).
pub const API_KEY: &str = "plexus-bench-api-key-0123456789abcdef";

/// The name the key runs as (`api:bench`).
pub const API_KEY_NAME: &str = "bench";

/// The topics the key may publish to: every bench topic.
pub const API_TOPICS: &str = "bench.>";

/// The config file of the bench's HTTP hub: one API key that may run every
/// operation on `bench.>` (no namespace: the topics are not durable).
pub fn http_toml() -> String {
    format!(
        "[[http.api-keys]]\nname = \"{API_KEY_NAME}\"\nsecret = \"{API_KEY}\"\n\
         operations = [\"*\"]\ntopics = [\"{API_TOPICS}\"]\n"
    )
}

/// A hub started with [`http_toml`], and the directory of its config file.
#[derive(Debug)]
pub struct HttpHub {
    /// The hub.
    pub hub: HubProcess,
    _conf: tempfile::TempDir,
}

/// Starts `bin` with the bench's API key, plus `extra` flags.
pub async fn start_http(bin: &HubBinary, extra: &[String]) -> Result<HttpHub, BoxError> {
    let conf = tempfile::tempdir()?;
    let path: PathBuf = conf.path().join("plexus.toml");
    std::fs::write(&path, http_toml())?;
    let mut args = vec!["--config".to_owned(), path.display().to_string()];
    args.extend(extra.iter().cloned());
    let hub = bin.start(&args).await?;
    Ok(HttpHub { hub, _conf: conf })
}

/// Why an HTTP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Connecting failed.
    #[error("connect: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTP/1.1 connection failed.
    #[error("http: {0}")]
    Hyper(#[from] hyper::Error),
    /// The request could not be built.
    #[error("request: {0}")]
    Request(#[from] hyper::http::Error),
    /// The hub answered with another status than expected.
    #[error("status {0}: {1}")]
    Status(u16, String),
    /// No answer within [`WAIT`].
    #[error("no answer")]
    Timeout,
}

/// One HTTP/1.1 keep-alive connection: hyper's request sender and the task
/// that drives the connection (stopped when this is dropped).
#[derive(Debug)]
pub struct HttpConn {
    /// Sends requests, one at a time.
    pub sender: SendRequest<Full<Bytes>>,
    /// The `Host` header of its requests.
    pub host: HeaderValue,
    driver: JoinHandle<()>,
}

impl Drop for HttpConn {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// Opens one HTTP/1.1 connection to `addr` (Nagle off, as the hub's side).
pub async fn http_connect(addr: SocketAddr) -> Result<HttpConn, HttpError> {
    let tcp = tokio::time::timeout(WAIT, TcpStream::connect(addr))
        .await
        .map_err(|_| HttpError::Timeout)??;
    tcp.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let host = HeaderValue::from_str(&addr.to_string()).map_err(hyper::http::Error::from)?;
    Ok(HttpConn {
        sender,
        host,
        driver,
    })
}

/// A payload of `n` ASCII bytes (a JSON string of `n` characters, stored
/// by the hub as a CBOR text string of `n` bytes).
pub fn payload_text(n: usize) -> String {
    (0..n).map(|i| char::from(b'a' + (i % 26) as u8)).collect()
}

/// The body of `POST /v1/api/publish`.
pub fn publish_body(topic: &str, data: &str) -> Vec<u8> {
    // Serializing a JSON value cannot fail.
    serde_json::to_vec(&publish_op(topic, data)).unwrap_or_default()
}

fn publish_op(topic: &str, data: &str) -> serde_json::Value {
    serde_json::json!({ "topic": topic, "data": data })
}

/// The body of `POST /v1/api/batch` with `n` publishes of `data` on
/// `topic` (`"parallel": true` only when asked; the default is in order).
pub fn batch_body(topic: &str, data: &str, n: usize, parallel: bool) -> Vec<u8> {
    let op = serde_json::json!({ "publish": publish_op(topic, data) });
    let mut doc = serde_json::json!({ "ops": vec![op; n] });
    if parallel {
        doc["parallel"] = serde_json::Value::Bool(true);
    }
    // Serializing a JSON value cannot fail.
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// Whether a publish answer is a success (`{"delivered": n, …}`).
pub fn publish_ok(answer: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .is_some_and(|v| v.get("delivered").is_some_and(serde_json::Value::is_u64))
}

/// The operations of a batch answer that succeeded (`{"results": [{"ok":
/// …}, {"error": …}, …]}`), and how many outcomes it held; `None` when it
/// is not a batch answer.
pub fn batch_ok(answer: &[u8]) -> Option<(usize, usize)> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    let results = v.get("results")?.as_array()?;
    let ok = results.iter().filter(|r| r.get("ok").is_some()).count();
    Some((ok, results.len()))
}

/// One client: requests back to back on its connection until the window
/// is over.
async fn api_client(
    mut conn: HttpConn,
    path: &'static str,
    body: Bytes,
    ops: usize,
    win: Window,
    errors: Arc<AtomicU64>,
) -> Counts {
    let mut c = Counts::default();
    let bearer = HeaderValue::from_str(&format!("Bearer {API_KEY}"));
    let Ok(bearer) = bearer else {
        errors.fetch_add(1, Ordering::Relaxed);
        return c;
    };
    let json = HeaderValue::from_static("application/json");
    while !win.over(now_nanos()) {
        let req = Request::post(path)
            .header(HOST, conn.host.clone())
            .header(AUTHORIZATION, bearer.clone())
            .header(CONTENT_TYPE, json.clone())
            .body(Full::new(body.clone()));
        let Ok(req) = req else {
            errors.fetch_add(1, Ordering::Relaxed);
            break;
        };
        let t0 = now_nanos();
        let exchange = async {
            conn.sender.ready().await?;
            let resp = conn.sender.send_request(req).await?;
            let status = resp.status();
            let answer = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, answer))
        };
        let (status, answer) = match tokio::time::timeout(WAIT, exchange).await {
            Ok(Ok(a)) => a,
            _ => {
                errors.fetch_add(1, Ordering::Relaxed);
                break;
            }
        };
        let t = now_nanos();
        let ok = match (status, ops) {
            (StatusCode::OK, 1) => usize::from(publish_ok(&answer)),
            (StatusCode::OK, _) => batch_ok(&answer).map_or(0, |(ok, _)| ok),
            _ => 0,
        };
        if ok < ops {
            errors.fetch_add((ops - ok) as u64, Ordering::Relaxed);
        }
        if win.contains(t) {
            c.requests += 1;
            c.publishes += ok as u64;
            c.latency.record(t.saturating_sub(t0));
        }
    }
    c
}

/// Runs `cfg.clients` server-API clients against the hub at `addr`: each
/// request one publish (`cfg.batch` = 1) or one batch of `cfg.batch`
/// publishes, all of `cfg.payload` bytes on the client's own topic.
pub async fn api_publish(addr: SocketAddr, cfg: &PublishLoadConfig) -> PublishLoadResult {
    let errors = Arc::new(AtomicU64::new(0));
    let ops = cfg.batch.max(1);
    let data = payload_text(cfg.payload);
    let mut conns = Vec::new();
    for _ in 0..cfg.clients {
        match http_connect(addr).await {
            Ok(c) => conns.push(c),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    let win = Window::after(cfg.warmup, cfg.duration);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(j, conn)| {
            let topic = cfg.topic(j);
            let (path, body) = if ops == 1 {
                ("/v1/api/publish", publish_body(&topic, &data))
            } else {
                (
                    "/v1/api/batch",
                    batch_body(&topic, &data, ops, cfg.parallel),
                )
            };
            tokio::spawn(api_client(
                conn,
                path,
                Bytes::from(body),
                ops,
                win,
                errors.clone(),
            ))
        })
        .collect();
    gather(tasks, win, ops, &errors).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_body_is_the_documented_document() {
        let body = publish_body("bench.t3", "abc");
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v, serde_json::json!({"topic": "bench.t3", "data": "abc"}));
        assert_eq!(payload_text(128).len(), 128);
        assert!(payload_text(30).is_ascii());
    }

    #[test]
    fn the_batch_body_holds_n_publishes_in_order_unless_parallel() {
        let body = batch_body("bench.t0", "xy", 100, false);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let ops = v["ops"].as_array().unwrap();
        assert_eq!(ops.len(), 100);
        assert!(
            ops.iter().all(
                |op| *op == serde_json::json!({"publish": {"topic": "bench.t0", "data": "xy"}})
            )
        );
        assert!(v.get("parallel").is_none(), "sequential is the default");
        let v: serde_json::Value =
            serde_json::from_slice(&batch_body("bench.t0", "xy", 2, true)).unwrap();
        assert_eq!(v["parallel"], true);
        assert_eq!(v["ops"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn answers_are_checked_for_success() {
        assert!(publish_ok(br#"{"delivered": 0}"#));
        assert!(publish_ok(br#"{"delivered":3,"offset":1,"epoch":"e"}"#));
        assert!(!publish_ok(br#"{"error": {"code": "forbidden"}}"#));
        assert!(!publish_ok(b"not json"));
        let answer = br#"{"results": [{"ok": {"delivered": 0}}, {"error": {"code": "forbidden"}}, {"error": {"code": "cancelled"}}]}"#;
        assert_eq!(batch_ok(answer), Some((1, 3)));
        assert_eq!(batch_ok(br#"{"results": []}"#), Some((0, 0)));
        assert_eq!(batch_ok(br#"{"delivered": 0}"#), None);
    }

    #[test]
    fn the_config_file_declares_one_key_on_the_bench_topics() {
        let toml = http_toml();
        assert!(toml.starts_with("[[http.api-keys]]\n"), "{toml}");
        assert!(toml.contains(&format!("secret = \"{API_KEY}\"")), "{toml}");
        assert!(toml.contains("topics = [\"bench.>\"]"), "{toml}");
        assert!(API_KEY.len() >= 24);
    }
}
