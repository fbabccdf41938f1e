//! One client connection as the cases use it: send frames, wait for
//! responses and notifications, and check how the server closes.
//!
//! Everything the server sends is checked on the way in: a text message,
//! an undecodable frame or a frame larger than the announced
//! `max_frame_size` fails the case at once, whatever the case was waiting
//! for (§3.2, §4, §4.6).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::frame::{self, ErrorObject, Frame, Item};
use crate::ws::{Msg, OP_CLOSE, OP_PONG, OP_TEXT, ReadError, WsReader, WsWriter};
use crate::{ensure, fail};

/// How long [`Conn::call`] and friends wait for an answer.
pub const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// How long [`Conn::expect_close`] waits, after the Close frame, for the
/// TCP connection to end.
pub const END_WAIT: Duration = Duration::from_secs(3);

/// Frames received before auth are checked against this size (the
/// server has announced nothing yet; §4.6 default).
pub const DEFAULT_MAX_FRAME: usize = 1_048_576;

/// Step of the loops that wait for control frames (which do not end a
/// read).
const CONTROL_POLL: Duration = Duration::from_millis(20);

/// Most recent events kept for failure details.
const LOG_LEN: usize = 6;

/// The close codes of §15.1 (and 1007, P9): code, name, whether `closing`
/// comes first.
pub const CLOSE_CODES: &[(u16, &str, bool)] = &[
    (1000, "normal", false),
    (1002, "ws_protocol_error", false),
    (1003, "unsupported_data", false),
    (1007, "invalid_payload", false),
    (1009, "message_too_big", false),
    (4000, "auth_failed", true),
    (4001, "auth_timeout", true),
    (4002, "token_expired", true),
    (4003, "forbidden", true),
    (4004, "too_many_connections", true),
    (4005, "protocol_error", true),
    (4006, "slow_consumer", false),
    (4007, "rate_limited", true),
    (4008, "going_away", true),
    (4009, "session_replaced", true),
    (4010, "keepalive_timeout", false),
];

/// The name of a close code (§15.1), if it has one.
pub fn close_name(code: u16) -> Option<&'static str> {
    CLOSE_CODES.iter().find(|c| c.0 == code).map(|c| c.1)
}

/// Whether the server announces a close with `code` by `closing` (§12.6).
pub fn announced(code: u16) -> bool {
    CLOSE_CODES.iter().any(|c| c.0 == code && c.2)
}

/// How the TCP connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// A clean end of stream.
    Eof,
    /// A reset: the kernel discarded data, the peer closed with unread
    /// input.
    Reset,
    /// Another error.
    Error(String),
    /// It had not ended when the runner stopped waiting.
    StillOpen,
}

impl std::fmt::Display for End {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            End::Eof => f.write_str("EOF"),
            End::Reset => f.write_str("a TCP reset"),
            End::Error(e) => write!(f, "error {e}"),
            End::StillOpen => f.write_str("still open"),
        }
    }
}

fn end_of(e: ReadError) -> End {
    match e {
        ReadError::Eof => End::Eof,
        ReadError::Reset => End::Reset,
        other => End::Error(other.to_string()),
    }
}

/// Something the connection delivered.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// A frame.
    Frame(Frame),
    /// A Close frame: its code and reason bytes.
    Close(Option<u16>, Vec<u8>),
    /// The connection ended without (further) Close frame.
    End(End),
}

impl Seen {
    fn describe(&self) -> String {
        match self {
            Seen::Frame(f) => f.describe(),
            Seen::Close(c, r) => format!("Close {c:?} {:?}", String::from_utf8_lossy(r)),
            Seen::End(e) => format!("end ({e})"),
        }
    }
}

/// What [`Conn::expect_close`] saw.
#[derive(Debug, Clone)]
pub struct CloseReport {
    /// Frames that came before `closing` (or before the Close frame).
    pub before: Vec<Frame>,
    /// The `closing` params, if one came.
    pub closing: Option<Value>,
    /// The Close frame's reason.
    pub reason: String,
    /// When the Close frame was read.
    pub at: Instant,
    /// How the connection ended after the Close frame.
    pub end: End,
}

/// The `auth` result, as far as the cases need it.
#[derive(Debug, Clone)]
pub struct AuthInfo {
    /// Key 0.
    pub session: String,
    /// Key 1.
    pub user: String,
    /// Key 2.
    pub expires_in_ms: Option<u64>,
    /// Key 3.
    pub limits: Value,
    /// The whole result.
    pub result: Value,
}

/// A connection after a successful handshake.
pub struct Conn {
    reader: WsReader,
    writer: Arc<Mutex<WsWriter>>,
    pending: VecDeque<Seen>,
    ended: Option<End>,
    closed: bool,
    /// Set when the server's Close frame arrives: a client sends nothing
    /// after it (see [`Conn::close_seen`]).
    close_seen: Arc<AtomicBool>,
    close_sent: bool,
    next_id: u64,
    /// Answer Pings with Pongs (on by default; off for keepalive cases).
    pub auto_pong: bool,
    /// Answer a Close frame with a Close (on by default).
    pub reply_close: bool,
    /// Frames larger than this fail the case.
    pub max_frame: usize,
    /// Nesting limit for decoding server frames.
    pub max_depth: usize,
    /// When each Ping arrived.
    pub pings: Vec<Instant>,
    /// The payloads of the Pongs received.
    pub pongs: Vec<Vec<u8>>,
    /// Set by a successful `auth`.
    pub auth: Option<AuthInfo>,
    log: VecDeque<String>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("pending", &self.pending.len())
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// Wraps the halves of a connection.
    pub fn new(reader: WsReader, writer: WsWriter) -> Conn {
        Conn {
            reader,
            writer: Arc::new(Mutex::new(writer)),
            pending: VecDeque::new(),
            ended: None,
            closed: false,
            close_seen: Arc::new(AtomicBool::new(false)),
            close_sent: false,
            next_id: 1,
            auto_pong: true,
            reply_close: true,
            max_frame: DEFAULT_MAX_FRAME,
            max_depth: 32,
            pings: Vec::new(),
            pongs: Vec::new(),
            auth: None,
            log: VecDeque::new(),
        }
    }

    /// The writing half, for a task that sends while the case reads.
    pub fn writer(&self) -> Arc<Mutex<WsWriter>> {
        self.writer.clone()
    }

    /// A flag set once the server's Close frame has been read: a task that
    /// sends on this connection stops then, as a client must.
    pub fn close_seen(&self) -> Arc<AtomicBool> {
        self.close_seen.clone()
    }

    /// A fresh request id.
    pub fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// The recent events, for failure details.
    pub fn recent(&self) -> String {
        if self.log.is_empty() {
            "nothing".into()
        } else {
            self.log.iter().cloned().collect::<Vec<_>>().join("; ")
        }
    }

    fn note(&mut self, s: String) {
        if self.log.len() == LOG_LEN {
            self.log.pop_front();
        }
        self.log.push_back(s);
    }

    /// Sends one binary message.
    pub async fn send(&mut self, bytes: &[u8]) -> CaseResult {
        self.writer.lock().await.binary(bytes).await.map_err(|e| {
            CaseError::Fail(format!(
                "sending a frame failed: {e} (after: {})",
                self.recent()
            ))
        })
    }

    /// Sends one binary message, ignoring failure (the server may be
    /// closing).
    pub async fn send_lossy(&mut self, bytes: &[u8]) {
        let _ = self.writer.lock().await.binary(bytes).await;
    }

    /// Sends a text message with these bytes.
    pub async fn send_text(&mut self, payload: &[u8]) -> CaseResult {
        self.ws_frame(true, 0, OP_TEXT, true, payload).await
    }

    /// Sends a Close frame.
    pub async fn send_close(&mut self, code: u16, reason: &[u8]) -> CaseResult {
        self.close_sent = true;
        self.ws_frame(
            true,
            0,
            OP_CLOSE,
            true,
            &crate::ws::close_payload(code, reason),
        )
        .await
    }

    /// Sends any WebSocket frame.
    pub async fn ws_frame(
        &mut self,
        fin: bool,
        rsv: u8,
        opcode: u8,
        masked: bool,
        payload: &[u8],
    ) -> CaseResult {
        self.writer
            .lock()
            .await
            .frame(fin, rsv, opcode, masked, payload)
            .await
            .map_err(|e| CaseError::Fail(format!("sending failed: {e}")))
    }

    /// Sends raw bytes on the socket.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> CaseResult {
        self.writer
            .lock()
            .await
            .raw(bytes)
            .await
            .map_err(|e| CaseError::Fail(format!("sending failed: {e}")))
    }

    /// Sends a request with a fresh id; returns the id.
    pub async fn request(&mut self, method: &str, params: &Value) -> CaseResult<u64> {
        let id = self.id();
        self.send(&frame::request(id, method, params)).await?;
        Ok(id)
    }

    /// Sends a notification.
    pub async fn notify(&mut self, method: &str, params: &Value) -> CaseResult {
        self.send(&frame::notification(method, params)).await
    }

    async fn read_one(&mut self) -> CaseResult<Seen> {
        if let Some(end) = &self.ended {
            return Ok(Seen::End(end.clone()));
        }
        if self.closed {
            // After a Close frame only the end of the connection is left.
            let end = match tokio::time::timeout(END_WAIT, self.reader.drain()).await {
                Ok(e) => end_of(e),
                Err(_) => End::StillOpen,
            };
            self.ended = Some(end.clone());
            return Ok(Seen::End(end));
        }
        loop {
            let msg = match self.reader.read().await {
                Ok(m) => m,
                Err(e) => {
                    let end = end_of(e);
                    self.ended = Some(end.clone());
                    return Ok(Seen::End(end));
                }
            };
            match msg {
                Msg::Ping(p) => {
                    self.pings.push(Instant::now());
                    if self.auto_pong {
                        // In a task of its own: a write cut off by a
                        // timeout would corrupt the stream.
                        let w = self.writer.clone();
                        tokio::spawn(async move {
                            let _ = w.lock().await.send(OP_PONG, &p).await;
                        });
                    }
                }
                Msg::Pong(p) => self.pongs.push(p),
                Msg::Text(t) => fail!(
                    "the server sent a text message ({} bytes); it never may (§3.2)",
                    t.len()
                ),
                Msg::Binary(b) => {
                    ensure!(
                        b.len() <= self.max_frame,
                        "the server sent a frame of {} bytes, larger than its max_frame_size {} (§4.6)",
                        b.len(),
                        self.max_frame
                    );
                    return match frame::parse(&b, self.max_depth) {
                        Ok(f) => Ok(Seen::Frame(f)),
                        Err(e) => fail!(
                            "the server sent an undecodable frame ({e}): {} (§4, §5)",
                            hex::encode(&b[..b.len().min(48)])
                        ),
                    };
                }
                Msg::Close(code, reason) => {
                    self.closed = true;
                    self.close_seen.store(true, Ordering::SeqCst);
                    if self.reply_close && !self.close_sent {
                        let payload = code
                            .map(|c| crate::ws::close_payload(c, b""))
                            .unwrap_or_default();
                        let w = self.writer.clone();
                        tokio::spawn(async move {
                            let _ = w.lock().await.send(OP_CLOSE, &payload).await;
                        });
                    }
                    return Ok(Seen::Close(code, reason));
                }
            }
        }
    }

    /// The next thing delivered within `within` (kept frames first), or
    /// `None` on timeout.
    pub async fn try_recv(&mut self, within: Duration) -> CaseResult<Option<Seen>> {
        if let Some(s) = self.pending.pop_front() {
            return Ok(Some(s));
        }
        match tokio::time::timeout(within, self.read_one()).await {
            Ok(s) => {
                let s = s?;
                self.note(s.describe());
                Ok(Some(s))
            }
            Err(_) => Ok(None),
        }
    }

    /// The next thing delivered; fails after `within`.
    pub async fn recv(&mut self, within: Duration) -> CaseResult<Seen> {
        match self.try_recv(within).await? {
            Some(s) => Ok(s),
            None => fail!(
                "nothing arrived within {within:?} (before: {})",
                self.recent()
            ),
        }
    }

    /// Waits for the first kept or new frame that `pick` accepts; other
    /// frames are kept for later. Fails on close or after `within`.
    pub async fn wait_for<T>(
        &mut self,
        within: Duration,
        what: &str,
        mut pick: impl FnMut(&Frame) -> Option<T>,
    ) -> CaseResult<T> {
        if let Some(i) = self
            .pending
            .iter()
            .position(|s| matches!(s, Seen::Frame(f) if pick(f).is_some()))
            && let Some(Seen::Frame(f)) = self.pending.remove(i)
            && let Some(t) = pick(&f)
        {
            return Ok(t);
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut kept = Vec::new();
        let result = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let seen = match tokio::time::timeout(left, self.read_one()).await {
                Ok(s) => s,
                Err(_) => {
                    break Err(CaseError::Fail(format!(
                        "no {what} within {within:?} (before: {})",
                        self.recent()
                    )));
                }
            };
            let seen = match seen {
                Ok(s) => s,
                Err(e) => break Err(e),
            };
            self.note(seen.describe());
            match seen {
                Seen::Frame(f) => match pick(&f) {
                    Some(t) => break Ok(t),
                    None => kept.push(Seen::Frame(f)),
                },
                other => {
                    let closing = kept
                        .iter()
                        .filter_map(|s| match s {
                            Seen::Frame(Frame::Notification { method, params })
                                if method == "closing" =>
                            {
                                Some(params.value.to_string())
                            }
                            _ => None,
                        })
                        .next_back();
                    let what_ended = other.describe();
                    kept.push(other);
                    break Err(CaseError::Fail(format!(
                        "the connection closed while waiting for {what}: {what_ended}{}",
                        closing
                            .map(|c| format!(" after closing {c}"))
                            .unwrap_or_default()
                    )));
                }
            }
        };
        self.pending.extend(kept);
        result
    }

    /// The response to request `id`.
    pub async fn response(
        &mut self,
        id: u64,
        within: Duration,
    ) -> CaseResult<Result<Item, ErrorObject>> {
        self.wait_for(within, &format!("response to request {id}"), |f| match f {
            Frame::Response { id: i, outcome } if *i == id => Some(outcome.clone()),
            _ => None,
        })
        .await
    }

    /// Sends a request and waits for its response.
    pub async fn call(
        &mut self,
        method: &str,
        params: &Value,
    ) -> CaseResult<Result<Item, ErrorObject>> {
        let id = self.request(method, params).await?;
        self.response(id, ANSWER_WAIT).await
    }

    /// Calls and expects success.
    pub async fn ok(&mut self, method: &str, params: &Value) -> CaseResult<Item> {
        match self.call(method, params).await? {
            Ok(r) => Ok(r),
            Err(e) => fail!("{method} {params} answered {} ({})", e.code, e.message),
        }
    }

    /// Calls and expects the error `code`.
    pub async fn err(
        &mut self,
        method: &str,
        params: &Value,
        code: &str,
    ) -> CaseResult<ErrorObject> {
        match self.call(method, params).await? {
            Ok(r) => fail!(
                "{method} {params} succeeded with {}; expected {code}",
                r.value
            ),
            Err(e) if e.code == code => Ok(e),
            Err(e) => fail!(
                "{method} {params} answered {} ({}); expected {code}",
                e.code,
                e.message
            ),
        }
    }

    /// Waits for a notification `method` whose params `pred` accepts.
    pub async fn notification_where(
        &mut self,
        method: &str,
        within: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> CaseResult<Item> {
        self.wait_for(within, &format!("{method} notification"), |f| match f {
            Frame::Notification { method: m, params } if m == method && pred(&params.value) => {
                Some(params.clone())
            }
            _ => None,
        })
        .await
    }

    /// Waits for a notification `method`.
    pub async fn notification(&mut self, method: &str, within: Duration) -> CaseResult<Item> {
        self.notification_where(method, within, |_| true).await
    }

    /// Waits for an `event` on `topic`.
    pub async fn event(&mut self, topic: &str, within: Duration) -> CaseResult<Item> {
        self.notification_where("event", within, |p| {
            p.get(0).and_then(Value::as_str) == Some(topic)
        })
        .await
    }

    /// Fails if a frame that `bad` accepts arrives within `within` (or is
    /// kept already). Other frames are kept.
    pub async fn none_within(
        &mut self,
        within: Duration,
        what: &str,
        bad: impl Fn(&Frame) -> bool,
    ) -> CaseResult {
        if let Some(Seen::Frame(f)) = self
            .pending
            .iter()
            .find(|s| matches!(s, Seen::Frame(f) if bad(f)))
        {
            fail!("unexpected {what}: {}", f.describe());
        }
        let deadline = tokio::time::Instant::now() + within;
        let mut kept = Vec::new();
        let r = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match tokio::time::timeout(left, self.read_one()).await {
                Err(_) => break Ok(()),
                Ok(Err(e)) => break Err(e),
                Ok(Ok(Seen::Frame(f))) if bad(&f) => {
                    break Err(CaseError::Fail(format!(
                        "unexpected {what}: {}",
                        f.describe()
                    )));
                }
                Ok(Ok(s)) => {
                    let end = !matches!(s, Seen::Frame(_));
                    self.note(s.describe());
                    kept.push(s);
                    if end {
                        break Ok(());
                    }
                }
            }
        };
        self.pending.extend(kept);
        r
    }

    /// Fails if any frame, Close or end arrives within `within`.
    pub async fn quiet(&mut self, within: Duration) -> CaseResult {
        if let Some(s) = self.try_recv(within).await? {
            fail!("expected nothing, got {}", s.describe());
        }
        Ok(())
    }

    /// A `ping` round trip: the connection is open and answering.
    pub async fn alive(&mut self) -> CaseResult {
        let id = self.id();
        let payload = Value::text(format!("alive-{id}"));
        self.send(&frame::request(id, "ping", &payload))
            .await
            .map_err(|e| e.context("the connection should still be open"))?;
        match self.response(id, ANSWER_WAIT).await {
            Ok(Ok(r)) if r.value == payload => Ok(()),
            Ok(Ok(r)) => fail!("ping answered {} instead of its params", r.value),
            Ok(Err(e)) => fail!("ping answered {} ({})", e.code, e.message),
            Err(e) => Err(e.context("the connection should still be open and answering")),
        }
    }

    /// Waits for a Pong carrying `payload`; frames read meanwhile are kept.
    pub async fn wait_pong(&mut self, payload: &[u8], within: Duration) -> CaseResult {
        let deadline = tokio::time::Instant::now() + within;
        while !self.pongs.iter().any(|p| p == payload) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                fail!(
                    "no Pong with payload {:?} within {within:?}",
                    String::from_utf8_lossy(payload)
                );
            }
            // Control frames do not end a read: poll in short steps.
            match tokio::time::timeout(left.min(CONTROL_POLL), self.read_one()).await {
                Err(_) => {}
                Ok(s) => match s? {
                    f @ Seen::Frame(_) => self.pending.push_back(f),
                    other => fail!("the connection ended before the Pong: {}", other.describe()),
                },
            }
        }
        Ok(())
    }

    /// Waits until `n` Pings have arrived in all; frames read meanwhile are
    /// kept.
    pub async fn wait_pings(&mut self, n: usize, within: Duration) -> CaseResult {
        let deadline = tokio::time::Instant::now() + within;
        while self.pings.len() < n {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                fail!(
                    "{} WebSocket Ping(s) within {within:?}, expected {n} (§16)",
                    self.pings.len()
                );
            }
            match tokio::time::timeout(left.min(CONTROL_POLL), self.read_one()).await {
                Err(_) => {}
                Ok(s) => match s? {
                    f @ Seen::Frame(_) => self.pending.push_back(f),
                    other => fail!(
                        "the connection ended while waiting for a Ping: {}",
                        other.describe()
                    ),
                },
            }
        }
        Ok(())
    }

    /// Puts a frame back at the front of the kept frames.
    pub fn keep_front(&mut self, f: Frame) {
        self.pending.push_front(Seen::Frame(f));
    }

    /// Takes the frames kept so far.
    pub fn take_kept(&mut self) -> Vec<Frame> {
        let mut out = Vec::new();
        self.pending.retain(|s| match s {
            Seen::Frame(f) => {
                out.push(f.clone());
                false
            }
            _ => true,
        });
        out
    }

    /// Expects the server to close with `code`, after a `closing`
    /// notification iff the code is announced (§12.6), with the code's
    /// name as the reason (§15.1) unless `reason` says otherwise, and
    /// nothing between `closing` and the Close frame.
    pub async fn expect_close(&mut self, code: u16, within: Duration) -> CaseResult<CloseReport> {
        let name = close_name(code).map(str::to_owned);
        self.expect_close_with(code, announced(code), name.as_deref(), within)
            .await
    }

    /// [`expect_close`](Self::expect_close) with the `closing` expectation
    /// and the reason given (`None`: any reason).
    pub async fn expect_close_with(
        &mut self,
        code: u16,
        closing_first: bool,
        reason: Option<&str>,
        within: Duration,
    ) -> CaseResult<CloseReport> {
        let deadline = tokio::time::Instant::now() + within;
        let mut before = Vec::new();
        let mut closing: Option<Value> = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let seen = match self.try_recv(left).await? {
                Some(s) => s,
                None => fail!(
                    "no close {code} within {within:?}{} (before: {})",
                    if closing.is_some() {
                        " after closing"
                    } else {
                        ""
                    },
                    self.recent()
                ),
            };
            match seen {
                Seen::Frame(Frame::Notification { method, params }) if method == "closing" => {
                    ensure!(closing.is_none(), "two closing notifications");
                    ensure!(
                        closing_first,
                        "closing {} came before a close with {code}, which is never announced (§12.6)",
                        params.value
                    );
                    check_closing(&params.value, code)?;
                    closing = Some(params.value);
                }
                Seen::Frame(f) => {
                    ensure!(
                        closing.is_none(),
                        "a frame came after closing, before the Close frame (§12.6): {}",
                        f.describe()
                    );
                    before.push(f);
                }
                Seen::Close(got, raw_reason) => {
                    let at = Instant::now();
                    ensure!(
                        got == Some(code),
                        "closed with {got:?} {:?}, expected {code}{}",
                        String::from_utf8_lossy(&raw_reason),
                        closing
                            .as_ref()
                            .map(|c| format!(" (after closing {c})"))
                            .unwrap_or_default()
                    );
                    ensure!(
                        !closing_first || closing.is_some(),
                        "close {code} came without a closing notification first (§12.6)"
                    );
                    let text = String::from_utf8_lossy(&raw_reason).into_owned();
                    if let Some(want) = reason {
                        ensure!(
                            text == want,
                            "close {code} has reason {text:?}; the reason is the code's name {want:?} (§15.1)"
                        );
                    }
                    let end = match self.try_recv(END_WAIT).await? {
                        Some(Seen::End(e)) => e,
                        Some(other) => fail!("after the Close frame came {}", other.describe()),
                        None => End::StillOpen,
                    };
                    return Ok(CloseReport {
                        before,
                        closing,
                        reason: text,
                        at,
                        end,
                    });
                }
                Seen::End(e) => fail!(
                    "the connection ended ({e}) without a Close frame {code}{} (before: {})",
                    if closing.is_some() {
                        ", after closing"
                    } else {
                        ""
                    },
                    self.recent()
                ),
            }
        }
    }

    /// Reads until the connection has ended or `within` passed; returns
    /// the Close code if one came.
    pub async fn until_end(&mut self, within: Duration) -> CaseResult<(Option<u16>, End)> {
        let deadline = tokio::time::Instant::now() + within;
        let mut code = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.try_recv(left).await? {
                None => return Ok((code, End::StillOpen)),
                Some(Seen::Close(c, _)) => code = c,
                Some(Seen::End(e)) => return Ok((code, e)),
                Some(Seen::Frame(_)) => {}
            }
        }
    }
}

/// Checks `closing` params (§12.6) against the close code that follows.
pub fn check_closing(p: &Value, code: u16) -> CaseResult {
    frame::typed_map(p).map_err(|e| CaseError::Fail(format!("closing params: {e}")))?;
    let got = p.get(0).and_then(Value::as_u64);
    ensure!(
        got == Some(u64::from(code)),
        "closing says code {got:?}; the close is {code}"
    );
    ensure!(
        p.get(1).and_then(Value::as_str).is_some(),
        "closing {p} has no text reason (key 1)"
    );
    if let Some(r) = p.opt(2) {
        ensure!(
            r.as_u64().is_some(),
            "closing retry_after_ms {r} is not a uint"
        );
    }
    Ok(())
}
