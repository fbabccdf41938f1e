//! Helpers shared by the cases: params builders and common checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::{self, Item};
use crate::runner::Ctx;
use crate::{ensure, fail};

/// How long a case waits to be sure something does not arrive.
pub(crate) const QUIET: Duration = Duration::from_millis(300);

/// How long a case waits for something that should come promptly.
pub(crate) const PROMPT: Duration = Duration::from_secs(5);

/// `{0: topic}`.
pub(crate) fn topic(t: &str) -> Value {
    Value::map([(0, Value::text(t))])
}

/// `{0: topic, 1: true}`.
pub(crate) fn topic_presence(t: &str) -> Value {
    Value::map([(0, Value::text(t)), (1, Value::Bool(true))])
}

/// `publish` params `{0: topic, 1: data}`.
pub(crate) fn publish(t: &str, data: Value) -> Value {
    Value::map([(0, Value::text(t)), (1, data)])
}

/// `publish` params with `echo`.
pub(crate) fn publish_echo(t: &str, data: Value, echo: bool) -> Value {
    Value::map([(0, Value::text(t)), (1, data), (2, Value::Bool(echo))])
}

/// `presence.set` params.
pub(crate) fn info(v: Value) -> Value {
    Value::map([(0, v)])
}

/// `debug.sleep {0: ms}`.
pub(crate) fn sleep(ms: u64) -> Value {
    Value::map([(0, Value::Uint(ms))])
}

/// `cancel {0: id}`.
pub(crate) fn cancel(id: u64) -> Value {
    Value::map([(0, Value::Uint(id))])
}

/// Checks that a result is a map (an `{}` result may carry unknown keys,
/// §11.0).
pub(crate) fn is_map(r: &Item, what: &str) -> CaseResult {
    ensure!(
        r.value.as_map().is_some(),
        "{what} result {} is not a map (§11.0)",
        r.value
    );
    Ok(())
}

/// Subscribes and expects `{}`.
pub(crate) async fn subscribe(c: &mut Conn, t: &str) -> CaseResult {
    let r = c.ok("subscribe", &topic(t)).await?;
    is_map(&r, "subscribe")
}

/// Subscribes with presence and expects `{}`.
pub(crate) async fn subscribe_presence(c: &mut Conn, t: &str) -> CaseResult {
    let r = c.ok("subscribe", &topic_presence(t)).await?;
    is_map(&r, "subscribe")
}

/// Publishes and returns `delivered`.
pub(crate) async fn publish_delivered(c: &mut Conn, params: &Value) -> CaseResult<u64> {
    let r = c.ok("publish", params).await?;
    frame::typed_map(&r.value).map_err(crate::check::CaseError::Fail)?;
    match r.value.get(0).and_then(Value::as_u64) {
        Some(n) => Ok(n),
        None => fail!(
            "publish result {} has no delivered count (key 0, §11.6)",
            r.value
        ),
    }
}

/// The `session` of an authenticated connection.
pub(crate) fn session_of(c: &Conn) -> String {
    c.auth
        .as_ref()
        .map(|a| a.session.clone())
        .unwrap_or_default()
}

/// The `user` of an authenticated connection.
pub(crate) fn user_of(c: &Conn) -> String {
    c.auth.as_ref().map(|a| a.user.clone()).unwrap_or_default()
}

/// A task that keeps sending frames on `c`'s connection until stopped (or
/// until sending fails): the client that keeps talking while the server
/// closes (P11).
#[derive(Debug)]
pub(crate) struct Spam {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Spam {
    /// Starts sending `frame` over and over, yielding between sends.
    pub(crate) fn start(c: &Conn, frame: Vec<u8>) -> Spam {
        Spam::every(c, frame, Duration::from_micros(500))
    }

    /// Starts sending `frame` every `every`.
    pub(crate) fn every(c: &Conn, frame: Vec<u8>, every: Duration) -> Spam {
        let w = c.writer();
        let closed = c.close_seen();
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let mut sent = 0u64;
            // Until stopped, or until the server's Close frame arrives:
            // nothing may follow the client's Close reply.
            while !s.load(Ordering::SeqCst) && !closed.load(Ordering::SeqCst) {
                if w.lock().await.binary(&frame).await.is_err() {
                    break;
                }
                sent += 1;
                tokio::time::sleep(every).await;
            }
            sent
        });
        Spam { stop, task }
    }

    /// Stops sending; returns how many frames went out.
    pub(crate) async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap_or(0)
    }
}

/// Starts [`Spam`] with `cancel` notifications for an id nobody uses:
/// ignored by the server, costing no rate tokens (§8, §17), but unread
/// input for a server that closes without lingering.
pub(crate) fn spam_cancels(c: &Conn) -> Spam {
    Spam::start(c, frame::notification("cancel", &cancel(u64::MAX - 1)))
}

/// A pattern string longer than `n` bytes' worth of topic, as
/// `{prefix}.xxxx…` of exactly `len` bytes (`None` if the prefix is longer).
pub(crate) fn topic_of_len(prefix: &str, len: usize) -> Option<String> {
    let fill = len.checked_sub(prefix.len() + 1)?;
    if fill == 0 {
        return None;
    }
    Some(format!("{prefix}.{}", "x".repeat(fill)))
}

/// Skips unless the server's limits allow `n` quick requests on one
/// connection without being rate limited (the burst, with the `auth`
/// and a margin).
pub(crate) fn require_burst(ctx: &Ctx, n: u64, what: &str) -> CaseResult {
    let burst = ctx.limits().rate_burst;
    if n + 3 > burst {
        crate::skip!(
            "{what} needs {n} requests at once, more than the announced rate_burst {burst} allows"
        );
    }
    Ok(())
}

/// Expects the error `code` on request `id`.
pub(crate) async fn expect_error(
    c: &mut Conn,
    id: u64,
    code: &str,
) -> CaseResult<frame::ErrorObject> {
    match c.response(id, PROMPT).await? {
        Ok(r) => fail!("request {id} succeeded with {}; expected {code}", r.value),
        Err(e) if e.code == code => Ok(e),
        Err(e) => fail!(
            "request {id} answered {} ({}); expected {code}",
            e.code,
            e.message
        ),
    }
}

/// Expects success on request `id`.
pub(crate) async fn expect_ok(c: &mut Conn, id: u64) -> CaseResult<Item> {
    match c.response(id, PROMPT).await? {
        Ok(r) => Ok(r),
        Err(e) => fail!("request {id} answered {} ({})", e.code, e.message),
    }
}

/// Calls `method`, waiting out `rate_limited` answers (for cases that
/// need many requests and are not about the rate limit).
pub(crate) async fn call_paced(
    c: &mut Conn,
    method: &str,
    params: &Value,
) -> CaseResult<Result<Item, frame::ErrorObject>> {
    for _ in 0..100 {
        match c.call(method, params).await? {
            Err(e) if e.code == "rate_limited" => {
                let ms = e.retry_after_ms.unwrap_or(100).min(5000);
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            other => return Ok(other),
        }
    }
    fail!("{method} stayed rate_limited through 100 retries")
}
