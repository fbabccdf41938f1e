//! SSE fan-out (issue 13): S `GET /v1/sse` streams on one topic, each on
//! its own HTTP/1.1 connection, read incrementally and split into event
//! blocks, while the fan-out scenario's WebSocket publishers publish
//! stamped payloads (saturating or at a fixed rate).
//!
//! The hub writes every publication as `id: …\nevent: event\ndata:
//! {json}\n\n`, the payload (a CBOR byte string) projected to base64url in
//! the JSON's `data` field. The reader counts `event` blocks and decodes
//! only the first 12 characters of that field: the 8-byte send stamp
//! ([`crate::clock::stamp`]), as the WebSocket subscriber reads only the
//! payload's bytes. A final `event: close` (e.g. 4006, a slow consumer)
//! ends the stream and is reported by its code.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Request, StatusCode};

use super::conn::{WAIT, connect_many};
use super::fanout::{publish_all, spawn_readers};
use super::http::{HttpConn, HttpError, http_connect};
use crate::clock::{now_nanos, read_stamp};
use crate::procs::token;
use crate::scenario::{FanoutConfig, FanoutResult, SseFanoutResult};
use crate::stats::Latency;
use crate::window::Window;

/// The longest block the parser buffers: far above any event the hub
/// writes for the bench's payloads; a longer one is an error rather than
/// unbounded memory.
pub const MAX_BLOCK: usize = 1 << 20;

/// Streams opened at once.
const OPEN_CONCURRENCY: usize = 64;

/// One dispatched SSE event (a block with at least one `data` line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block<'a> {
    /// Its `event` field (`message` when the block names none).
    pub event: &'a [u8],
    /// Its `id` field, if any.
    pub id: Option<&'a [u8]>,
    /// Its `data` lines joined with `\n` (borrowed when there is one).
    pub data: Cow<'a, [u8]>,
}

/// Why a stream could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    /// A block grew past [`MAX_BLOCK`] without ending.
    #[error("an SSE block longer than {MAX_BLOCK} bytes")]
    TooLong,
}

/// An incremental `text/event-stream` parser: bytes in as they arrive (in
/// pieces of any size), complete blocks out. Lines end with `\n` or
/// `\r\n`; comments (`:`…) and fields other than `event`, `data` and `id`
/// are skipped; a block without `data` (e.g. `retry: 1000`) dispatches
/// nothing, as an `EventSource` does.
#[derive(Debug, Default)]
pub struct SseParser {
    /// The start of a block not yet complete.
    pending: Vec<u8>,
}

impl SseParser {
    /// Parses `chunk`, calling `on` for every block it completes.
    pub fn push(&mut self, chunk: &[u8], mut on: impl FnMut(Block<'_>)) -> Result<(), SseError> {
        if self.pending.is_empty() {
            // The common case: whole blocks parsed in place, only the
            // unfinished tail copied.
            let used = parse_blocks(chunk, &mut on);
            self.pending.extend_from_slice(&chunk[used..]);
        } else {
            self.pending.extend_from_slice(chunk);
            let used = parse_blocks(&self.pending, &mut on);
            self.pending.drain(..used);
        }
        if self.pending.len() > MAX_BLOCK {
            return Err(SseError::TooLong);
        }
        Ok(())
    }
}

/// A block being read.
#[derive(Default)]
struct Builder<'a> {
    event: Option<&'a [u8]>,
    id: Option<&'a [u8]>,
    data: Option<Cow<'a, [u8]>>,
}

impl<'a> Builder<'a> {
    fn line(&mut self, line: &'a [u8]) {
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"event" => self.event = Some(value),
            b"id" => self.id = Some(value),
            b"data" => {
                self.data = Some(match self.data.take() {
                    None => Cow::Borrowed(value),
                    Some(prev) => {
                        let mut joined = prev.into_owned();
                        joined.push(b'\n');
                        joined.extend_from_slice(value);
                        Cow::Owned(joined)
                    }
                });
            }
            _ => {}
        }
    }

    fn dispatch(self, on: &mut impl FnMut(Block<'a>)) {
        if let Some(data) = self.data {
            on(Block {
                event: self.event.filter(|e| !e.is_empty()).unwrap_or(b"message"),
                id: self.id,
                data,
            });
        }
    }
}

/// Parses the complete blocks at the start of `input`; returns the bytes
/// they took (the rest is an unfinished block).
fn parse_blocks<'a>(input: &'a [u8], on: &mut impl FnMut(Block<'a>)) -> usize {
    let (mut pos, mut used) = (0, 0);
    let mut block = Builder::default();
    while let Some(n) = input[pos..].iter().position(|&b| b == b'\n') {
        let line = &input[pos..pos + n];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        pos += n + 1;
        if line.is_empty() {
            std::mem::take(&mut block).dispatch(on);
            used = pos;
        } else {
            block.line(line);
        }
    }
    used
}

/// The send stamp of an `event` block's data: the first 8 bytes of the
/// base64url `data` field of the hub's JSON projection.
pub fn event_stamp(data: &[u8]) -> Option<u64> {
    const FIELD: &[u8] = b"\"data\":\"";
    let at = data.windows(FIELD.len()).position(|w| w == FIELD)? + FIELD.len();
    // 12 characters are 9 bytes, the first 8 of them the stamp.
    let head = data.get(at..at + 12)?;
    let bytes = URL_SAFE_NO_PAD.decode(head).ok()?;
    read_stamp(&bytes)
}

/// The code of an `event: close` block's data (`{"code": 4006, …}`).
pub fn close_code(data: &[u8]) -> Option<u16> {
    let v: serde_json::Value = serde_json::from_slice(data).ok()?;
    u16::try_from(v.get("code")?.as_u64()?).ok()
}

/// An open SSE stream: its response body and the connection under it.
#[derive(Debug)]
pub struct SseStream {
    /// The `text/event-stream` body.
    pub body: Incoming,
    _conn: HttpConn,
}

/// Opens `GET /v1/sse?topic=TOPIC&token=TOKEN` on its own connection and
/// waits for the answer's head: the hub subscribes before it answers, so
/// the stream receives every event published after this returns. The
/// topic and the token (a JWT) hold only characters a query may carry
/// unescaped.
pub async fn open_sse(addr: SocketAddr, topic: &str, token: &str) -> Result<SseStream, HttpError> {
    let mut conn = http_connect(addr).await?;
    let req = Request::get(format!("/v1/sse?topic={topic}&token={token}"))
        .header(HOST, conn.host.clone())
        .header(ACCEPT, "text/event-stream")
        .body(Full::new(Bytes::new()))?;
    let resp = tokio::time::timeout(WAIT, conn.sender.send_request(req))
        .await
        .map_err(|_| HttpError::Timeout)??;
    let is_stream = resp
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if resp.status() != StatusCode::OK || !is_stream {
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(WAIT, resp.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(HttpError::Status(status, body));
    }
    Ok(SseStream {
        body: resp.into_body(),
        _conn: conn,
    })
}

/// What one stream read in the window.
#[derive(Debug, Default)]
struct Read {
    events: u64,
    latency: Latency,
    /// The code of the final `close` event, if the hub sent one.
    closed: Option<u16>,
    /// Unreadable blocks, a broken stream.
    errors: u64,
}

/// Reads one stream until the window is over, the stream ends or the hub
/// closes it; one clock read per body chunk.
async fn read_stream(mut s: SseStream, win: Window) -> Read {
    let mut r = Read::default();
    let mut parser = SseParser::default();
    let deadline = tokio::time::sleep_until(win.deadline());
    tokio::pin!(deadline);
    loop {
        let frame = tokio::select! {
            biased;
            f = s.body.frame() => f,
            _ = &mut deadline => break,
        };
        let data = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue,
            },
            Some(Err(_)) | None => {
                r.errors += 1;
                break;
            }
        };
        let t = now_nanos();
        if win.over(t) {
            break;
        }
        let counting = win.contains(t);
        let parsed = parser.push(&data, |b| match b.event {
            b"event" => match event_stamp(&b.data) {
                Some(sent) if counting => {
                    r.events += 1;
                    r.latency.record(t.saturating_sub(sent));
                }
                Some(_) => {}
                None => r.errors += 1,
            },
            b"close" => r.closed = Some(close_code(&b.data).unwrap_or(0)),
            _ => {}
        });
        if parsed.is_err() {
            r.errors += 1;
            break;
        }
        if r.closed.is_some() {
            break;
        }
    }
    r
}

/// Runs the fan-out scenario with SSE subscribers: `cfg.subscribers`
/// streams (stream i on `cfg.topic(i)`, user `sse<i>`) against the hub at
/// `addr`,
/// and `cfg.publishers` WebSocket publishers at `cfg.rate` (the fan-out
/// scenario's own). `cfg.stalled` is not used.
pub async fn sse_fanout(addr: SocketAddr, cfg: &FanoutConfig) -> SseFanoutResult {
    let errors = Arc::new(AtomicU64::new(0));
    let streams: Vec<Result<SseStream, HttpError>> = futures_util::stream::iter(0..cfg.subscribers)
        .map(|i| {
            let topic = cfg.topic(i);
            async move { open_sse(addr, &topic, &token(&format!("sse{i}"))).await }
        })
        .buffered(OPEN_CONCURRENCY)
        .collect()
        .await;
    let url = format!("ws://{addr}/v1/ws");
    let pubs = connect_many(&url, &[], cfg.publishers, 16, |_| None).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let readers = spawn_readers(streams, &errors, |s| read_stream(s, win));
    let (published, used_window) = publish_all(pubs, cfg, win, &errors).await;
    let (mut delivered, mut lat, mut closed) = (0, Latency::new(), BTreeMap::new());
    let mut stream_errors = 0;
    for r in readers {
        if let Ok(r) = r.await {
            delivered += r.events;
            lat.merge(&r.latency);
            stream_errors += r.errors;
            if let Some(code) = r.closed {
                *closed.entry(code).or_insert(0) += 1;
                stream_errors += 1;
            }
        }
    }
    SseFanoutResult {
        fanout: FanoutResult {
            published_per_sec: published as f64 / win.secs(),
            delivered_per_sec: delivered as f64 / win.secs(),
            latency: lat.summary(),
            window: used_window,
            stalled_closed: Vec::new(),
            errors: errors.load(Ordering::Relaxed) + stream_errors,
            histogram: lat,
        },
        closed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every block `input` dispatches, pushed in pieces of `step` bytes.
    fn blocks(input: &[u8], step: usize) -> Vec<(String, Option<String>, String)> {
        let mut p = SseParser::default();
        let mut out = Vec::new();
        for piece in input.chunks(step) {
            p.push(piece, |b| {
                out.push((
                    String::from_utf8_lossy(b.event).into_owned(),
                    b.id.map(|i| String::from_utf8_lossy(i).into_owned()),
                    String::from_utf8_lossy(&b.data).into_owned(),
                ));
            })
            .unwrap();
        }
        out
    }

    const STREAM: &[u8] = b"retry: 1000\n\nid: AAA\nevent: event\ndata: {\"topic\":\"a\"}\n\n\
        : keepalive\n\nevent: close\ndata: {\"code\":4006,\"reason\":\"slow_consumer\"}\n\n";

    #[test]
    fn the_hub_s_stream_splits_into_its_events_in_pieces_of_any_size() {
        let want = vec![
            (
                "event".into(),
                Some("AAA".into()),
                "{\"topic\":\"a\"}".into(),
            ),
            (
                "close".into(),
                None,
                "{\"code\":4006,\"reason\":\"slow_consumer\"}".into(),
            ),
        ];
        for step in [1, 2, 3, 7, 16, STREAM.len()] {
            assert_eq!(blocks(STREAM, step), want, "pieces of {step}");
        }
    }

    #[test]
    fn fields_follow_the_event_stream_rules() {
        // CRLF line ends, no space after the colon, several data lines,
        // a block without an event name, a field without a value, an
        // unfinished block at the end.
        let input = b"data:one\r\ndata: two\r\n\r\nevent\ndata\n\nevent: x\ndata: late";
        assert_eq!(
            blocks(input, 5),
            vec![
                ("message".into(), None, "one\ntwo".into()),
                ("message".into(), None, String::new()),
            ]
        );
        let mut p = SseParser::default();
        let mut seen = 0;
        p.push(input, |_| seen += 1).unwrap();
        p.push(b"\n\n", |b| {
            assert_eq!((b.event, &*b.data), (&b"x"[..], &b"late"[..]));
            seen += 1;
        })
        .unwrap();
        assert_eq!(seen, 3);
    }

    #[test]
    fn a_block_that_never_ends_is_refused() {
        let mut p = SseParser::default();
        let long = vec![b'a'; MAX_BLOCK + 1];
        assert_eq!(p.push(&long, |_| {}), Err(SseError::TooLong));
    }

    #[test]
    fn the_stamp_is_read_from_the_projected_payload() {
        let mut payload = [7u8; 128];
        payload[..8].copy_from_slice(&0x0102_0304_0506_0708u64.to_le_bytes());
        let data = format!(
            "{{\"data\":\"{}\",\"from\":\"u0\",\"offset\":null,\"position\":null,\"topic\":\"bench.t0\"}}",
            URL_SAFE_NO_PAD.encode(payload)
        );
        assert_eq!(event_stamp(data.as_bytes()), Some(0x0102_0304_0506_0708));
        assert_eq!(event_stamp(b"{\"data\":\"AAAA\"}"), None, "too short");
        assert_eq!(event_stamp(b"{\"data\":12}"), None, "not a string");
        assert_eq!(
            close_code(b"{\"code\":4006,\"reason\":\"slow_consumer\"}"),
            Some(4006)
        );
        assert_eq!(close_code(b"{}"), None);
    }
}
