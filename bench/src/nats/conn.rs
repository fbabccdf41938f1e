//! A minimal NATS client over WebSocket: the text protocol parsed from a
//! byte stream, commands buffered and written in as few WebSocket messages
//! as possible.

use std::net::{IpAddr, SocketAddr};

use bytes::{BufMut, BytesMut};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::{self, Message};

use super::WAIT;

/// The `CONNECT` line every bench connection sends (no verbose `+OK`s).
pub const CONNECT: &str = "CONNECT {\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"lang\":\"rust\",\"version\":\"0.1\",\"protocol\":1,\"echo\":true,\"headers\":false,\"no_responders\":false}\r\n";

/// Longest control line accepted (NATS's own limit is 4 KiB; `INFO` may be
/// longer on big servers).
const MAX_CONTROL_LINE: usize = 64 * 1024;

/// Largest WebSocket message written; bigger batches are split (NATS reads
/// a byte stream, so commands may straddle messages).
const MAX_WS_MESSAGE: usize = 64 * 1024;

/// Why a NATS connection failed.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// WebSocket-level failure.
    #[error("websocket: {0}")]
    Ws(#[from] tungstenite::Error),
    /// Socket failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// A wait took longer than allowed.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The server closed the connection (with this WebSocket close code, if
    /// it sent one).
    #[error("connection closed (close code {0:?})")]
    Closed(Option<u16>),
    /// The server answered `-ERR`.
    #[error("server error: {0}")]
    Server(String),
    /// The server sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The URL is not a loopback `ws://` URL.
    #[error("not a ws://127.0.0.1 URL: {0}")]
    Url(String),
}

/// A delivered message, borrowed from the connection's read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The subject it was published on.
    pub subject: &'a [u8],
    /// The subscription it matched.
    pub sid: u64,
    /// Where to reply, if the publisher asked for replies.
    pub reply: Option<&'a [u8]>,
    /// The payload (after any headers).
    pub payload: &'a [u8],
}

/// One thing the server said (`PING`s are answered by the connection and
/// not reported).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// `MSG` (or `HMSG`, headers skipped).
    Msg(Msg<'a>),
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR`, with the quotes removed.
    Err(&'a str),
    /// `INFO`, its JSON.
    Info(&'a [u8]),
}

/// A byte range of the read buffer.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: usize,
    end: usize,
}

/// A parsed event, as ranges of the read buffer (so it holds no borrow).
#[derive(Debug, Clone, Copy)]
enum Parsed {
    Msg {
        subject: Span,
        sid: u64,
        reply: Option<Span>,
        payload: Span,
    },
    Pong,
    Ok,
    Err(Span),
    Info(Span),
}

/// The read side: unparsed bytes and the parser.
#[derive(Debug, Default)]
pub struct Inbox {
    buf: Vec<u8>,
    pos: usize,
    pongs_owed: usize,
}

impl Inbox {
    /// An empty inbox.
    pub fn new() -> Inbox {
        Inbox::default()
    }

    /// Appends bytes received from the server.
    pub fn extend(&mut self, data: &[u8]) {
        if self.pos > 0 {
            if self.pos == self.buf.len() {
                self.buf.clear();
            } else {
                self.buf.drain(..self.pos);
            }
            self.pos = 0;
        }
        self.buf.extend_from_slice(data);
    }

    /// Drops everything buffered.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    /// Bytes received but not yet parsed into events.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many server `PING`s still need a `PONG` (and forgets them).
    pub fn take_pongs_owed(&mut self) -> usize {
        std::mem::take(&mut self.pongs_owed)
    }

    /// The next complete event in the buffer, if there is one.
    pub fn try_next(&mut self) -> Result<Option<Event<'_>>, NatsError> {
        Ok(self.parse()?.map(|p| self.event(p)))
    }

    fn slice(&self, s: Span) -> &[u8] {
        &self.buf[s.start..s.end]
    }

    fn event(&self, p: Parsed) -> Event<'_> {
        match p {
            Parsed::Msg {
                subject,
                sid,
                reply,
                payload,
            } => Event::Msg(Msg {
                subject: self.slice(subject),
                sid,
                reply: reply.map(|r| self.slice(r)),
                payload: self.slice(payload),
            }),
            Parsed::Pong => Event::Pong,
            Parsed::Ok => Event::Ok,
            Parsed::Err(s) => {
                Event::Err(std::str::from_utf8(self.slice(s)).unwrap_or("(not UTF-8)"))
            }
            Parsed::Info(s) => Event::Info(self.slice(s)),
        }
    }

    /// Parses the next complete event, advancing past it. `PING`s are
    /// counted in `pongs_owed` and skipped.
    fn parse(&mut self) -> Result<Option<Parsed>, NatsError> {
        loop {
            let rest = &self.buf[self.pos..];
            let Some(nl) = rest.iter().position(|&b| b == b'\n') else {
                if rest.len() > MAX_CONTROL_LINE {
                    return Err(NatsError::Protocol("control line too long".into()));
                }
                return Ok(None);
            };
            let start = self.pos;
            let mut end = start + nl;
            let after = end + 1;
            if end > start && self.buf[end - 1] == b'\r' {
                end -= 1;
            }
            let line = &self.buf[start..end];
            let head =
                |op: &[u8]| line.len() >= op.len() && line[..op.len()].eq_ignore_ascii_case(op);
            if head(b"MSG ") || head(b"MSG\t") {
                return self.parse_msg(start + 4, end, after, false);
            }
            if head(b"HMSG ") || head(b"HMSG\t") {
                return self.parse_msg(start + 5, end, after, true);
            }
            if head(b"PING") {
                self.pos = after;
                self.pongs_owed += 1;
                continue;
            }
            if head(b"PONG") {
                self.pos = after;
                return Ok(Some(Parsed::Pong));
            }
            if head(b"+OK") {
                self.pos = after;
                return Ok(Some(Parsed::Ok));
            }
            if head(b"-ERR") {
                let mut s = trim(
                    &self.buf,
                    Span {
                        start: start + 4,
                        end,
                    },
                );
                if s.end > s.start + 1 && self.buf[s.start] == b'\'' && self.buf[s.end - 1] == b'\''
                {
                    s = Span {
                        start: s.start + 1,
                        end: s.end - 1,
                    };
                }
                self.pos = after;
                return Ok(Some(Parsed::Err(s)));
            }
            if head(b"INFO") {
                self.pos = after;
                return Ok(Some(Parsed::Info(trim(
                    &self.buf,
                    Span {
                        start: start + 4,
                        end,
                    },
                ))));
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                self.pos = after;
                continue;
            }
            let shown = String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
            return Err(NatsError::Protocol(format!("unexpected line: {shown}")));
        }
    }

    /// `MSG <subject> <sid> [reply-to] <#bytes>` or
    /// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>`;
    /// `args` is the range after the op, `after` where the payload starts.
    fn parse_msg(
        &mut self,
        args: usize,
        end: usize,
        after: usize,
        headers: bool,
    ) -> Result<Option<Parsed>, NatsError> {
        let mut t = [Span { start: 0, end: 0 }; 5];
        let n = tokens(&self.buf, args, end, &mut t);
        let bad = || NatsError::Protocol("malformed MSG".into());
        let (reply, sizes) = match (headers, n) {
            (false, 3) => (None, &t[2..3]),
            (false, 4) => (Some(t[2]), &t[3..4]),
            (true, 4) => (None, &t[2..4]),
            (true, 5) => (Some(t[2]), &t[3..5]),
            _ => return Err(bad()),
        };
        let sid = number(&self.buf[t[1].start..t[1].end]).ok_or_else(bad)?;
        let mut size = [0usize; 2];
        for (slot, s) in size.iter_mut().zip(sizes) {
            *slot = usize::try_from(number(&self.buf[s.start..s.end]).ok_or_else(bad)?)
                .map_err(|_| bad())?;
        }
        let (header_len, total) = if headers {
            (size[0], size[1])
        } else {
            (0, size[0])
        };
        if header_len > total {
            return Err(bad());
        }
        let payload_end = after + total;
        if self.buf.len() < payload_end + 2 {
            return Ok(None);
        }
        if &self.buf[payload_end..payload_end + 2] != b"\r\n" {
            return Err(NatsError::Protocol(
                "MSG payload not followed by CRLF".into(),
            ));
        }
        self.pos = payload_end + 2;
        Ok(Some(Parsed::Msg {
            subject: t[0],
            sid,
            reply,
            payload: Span {
                start: after + header_len,
                end: payload_end,
            },
        }))
    }
}

/// Splits `buf[start..end]` on spaces and tabs into at most `out.len()`
/// tokens; returns how many there were (more than `out.len()` if there
/// were too many).
fn tokens(buf: &[u8], start: usize, end: usize, out: &mut [Span]) -> usize {
    let mut n = 0;
    let mut i = start;
    while i < end {
        while i < end && (buf[i] == b' ' || buf[i] == b'\t') {
            i += 1;
        }
        if i == end {
            break;
        }
        let s = i;
        while i < end && buf[i] != b' ' && buf[i] != b'\t' {
            i += 1;
        }
        if n < out.len() {
            out[n] = Span { start: s, end: i };
        }
        n += 1;
    }
    n
}

/// A span without leading and trailing whitespace.
fn trim(buf: &[u8], mut s: Span) -> Span {
    while s.start < s.end && buf[s.start].is_ascii_whitespace() {
        s.start += 1;
    }
    while s.end > s.start && buf[s.end - 1].is_ascii_whitespace() {
        s.end -= 1;
    }
    s
}

/// A decimal number.
fn number(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut n = 0u64;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + u64::from(d - b'0');
    }
    Some(n)
}

/// The write side: commands waiting to be sent.
#[derive(Debug, Default)]
pub struct Outbox {
    buf: BytesMut,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Outbox {
        Outbox::default()
    }

    /// `PUB <subject> [reply] <len>` and the payload.
    pub fn publish(&mut self, subject: &[u8], reply: Option<&[u8]>, payload: &[u8]) {
        self.buf
            .reserve(subject.len() + reply.map_or(0, <[u8]>::len) + payload.len() + 32);
        self.buf.put_slice(b"PUB ");
        self.buf.put_slice(subject);
        self.buf.put_u8(b' ');
        if let Some(r) = reply {
            self.buf.put_slice(r);
            self.buf.put_u8(b' ');
        }
        put_number(&mut self.buf, payload.len() as u64);
        self.buf.put_slice(b"\r\n");
        self.buf.put_slice(payload);
        self.buf.put_slice(b"\r\n");
    }

    /// `SUB <subject> <sid>`.
    pub fn subscribe(&mut self, subject: &[u8], sid: u64) {
        self.buf.put_slice(b"SUB ");
        self.buf.put_slice(subject);
        self.buf.put_u8(b' ');
        put_number(&mut self.buf, sid);
        self.buf.put_slice(b"\r\n");
    }

    /// `SUB <subject> <queue> <sid>`: one of the queue group's members
    /// gets each message (NATS's load sharing).
    pub fn subscribe_queue(&mut self, subject: &[u8], queue: &[u8], sid: u64) {
        self.buf.put_slice(b"SUB ");
        self.buf.put_slice(subject);
        self.buf.put_u8(b' ');
        self.buf.put_slice(queue);
        self.buf.put_u8(b' ');
        put_number(&mut self.buf, sid);
        self.buf.put_slice(b"\r\n");
    }

    /// `UNSUB <sid> [max]`.
    pub fn unsubscribe(&mut self, sid: u64, max: Option<u64>) {
        self.buf.put_slice(b"UNSUB ");
        put_number(&mut self.buf, sid);
        if let Some(m) = max {
            self.buf.put_u8(b' ');
            put_number(&mut self.buf, m);
        }
        self.buf.put_slice(b"\r\n");
    }

    /// `PING`.
    pub fn ping(&mut self) {
        self.buf.put_slice(b"PING\r\n");
    }

    /// `PONG`.
    pub fn pong(&mut self) {
        self.buf.put_slice(b"PONG\r\n");
    }

    /// Raw protocol bytes (must be whole commands).
    pub fn raw(&mut self, bytes: &[u8]) {
        self.buf.put_slice(bytes);
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is waiting.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn put_number(out: &mut BytesMut, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.put_slice(&tmp[i..]);
}

/// The socket address of a `ws://127.0.0.1:PORT[/...]` URL (loopback only).
fn loopback_addr(url: &str) -> Result<SocketAddr, NatsError> {
    let bad = || NatsError::Url(url.to_owned());
    let rest = url.strip_prefix("ws://").ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    let addr: SocketAddr = authority.parse().map_err(|_| bad())?;
    if !addr.ip().is_loopback() {
        return Err(bad());
    }
    Ok(addr)
}

/// One NATS connection over WebSocket.
///
/// Commands are queued in the [`Outbox`] and written by [`flush`](Self::flush)
/// (or automatically before [`fill`](Self::fill) waits for data); events
/// are parsed from the [`Inbox`]. Server `PING`s are answered with the next
/// flush.
#[derive(Debug)]
pub struct NatsConn {
    ws: WebSocketStream<TcpStream>,
    inbox: Inbox,
    outbox: Outbox,
    info: String,
}

impl NatsConn {
    /// Connects (TCP_NODELAY), reads `INFO`, sends [`CONNECT`] and a `PING`
    /// and waits for the `PONG`, all within [`WAIT`].
    pub async fn connect(url: &str) -> Result<NatsConn, NatsError> {
        NatsConn::connect_from(url, None).await
    }

    /// [`connect`](Self::connect) from a given local address (e.g.
    /// `127.0.0.2`), as the Plexus driver does for many connections.
    pub async fn connect_from(url: &str, source: Option<IpAddr>) -> Result<NatsConn, NatsError> {
        let addr = loopback_addr(url)?;
        let handshake = async {
            let tcp = crate::net::connect(addr, source).await?;
            // NATS writes a slow reader's whole backlog as one WebSocket
            // frame (tens of MiB): the shared client settings carry no size
            // limit (the server's max_pending bounds it).
            let config = crate::scenario::client_ws_config();
            let (ws, _) =
                tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
            let mut conn = NatsConn {
                ws,
                inbox: Inbox::new(),
                outbox: Outbox::new(),
                info: String::new(),
            };
            let info = match conn.next_event().await? {
                Event::Info(i) => String::from_utf8_lossy(i).into_owned(),
                Event::Err(e) => return Err(NatsError::Server(e.to_owned())),
                _ => return Err(NatsError::Protocol("expected INFO first".into())),
            };
            conn.info = info;
            conn.outbox.raw(CONNECT.as_bytes());
            conn.outbox.ping();
            conn.wait_pong().await?;
            Ok(conn)
        };
        tokio::time::timeout(WAIT, handshake)
            .await
            .map_err(|_| NatsError::Timeout("connecting"))?
    }

    /// The server's `INFO` JSON.
    pub fn info(&self) -> &str {
        &self.info
    }

    /// The read and write sides, to answer messages while reading them.
    pub fn split(&mut self) -> (&mut Inbox, &mut Outbox) {
        (&mut self.inbox, &mut self.outbox)
    }

    /// The write side.
    pub fn outbox(&mut self) -> &mut Outbox {
        &mut self.outbox
    }

    /// The next event already buffered, without waiting.
    pub fn try_next(&mut self) -> Result<Option<Event<'_>>, NatsError> {
        self.inbox.try_next()
    }

    /// Writes everything queued (plus any owed `PONG`s), in WebSocket
    /// messages of at most 64 KiB.
    pub async fn flush(&mut self) -> Result<(), NatsError> {
        for _ in 0..self.inbox.take_pongs_owed() {
            self.outbox.pong();
        }
        if self.outbox.is_empty() {
            return Ok(());
        }
        let data = self.outbox.buf.split().freeze();
        let mut at = 0;
        while data.len() - at > MAX_WS_MESSAGE {
            self.ws
                .feed(Message::Binary(data.slice(at..at + MAX_WS_MESSAGE)))
                .await?;
            at += MAX_WS_MESSAGE;
        }
        self.ws.send(Message::Binary(data.slice(at..))).await?;
        Ok(())
    }

    /// Reads one WebSocket message into the inbox without writing anything
    /// (cancel-safe: nothing is lost if the future is dropped).
    pub async fn read_more(&mut self) -> Result<(), NatsError> {
        match self.ws.next().await {
            Some(Ok(Message::Binary(b))) => self.inbox.extend(&b),
            Some(Ok(Message::Text(t))) => self.inbox.extend(t.as_bytes()),
            Some(Ok(Message::Close(f))) => {
                return Err(NatsError::Closed(f.map(|f| u16::from(f.code))));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(NatsError::Closed(None)),
        }
        Ok(())
    }

    /// Flushes, then reads one WebSocket message into the inbox.
    pub async fn fill(&mut self) -> Result<(), NatsError> {
        self.flush().await?;
        self.read_more().await
    }

    /// The next event, reading as needed (flushing first).
    pub async fn next_event(&mut self) -> Result<Event<'_>, NatsError> {
        loop {
            if let Some(p) = self.inbox.parse()? {
                return Ok(self.inbox.event(p));
            }
            self.fill().await?;
        }
    }

    /// Flushes and waits for a `PONG` (messages in between are dropped;
    /// `-ERR` fails). Queue the `PING` first.
    pub async fn wait_pong(&mut self) -> Result<(), NatsError> {
        loop {
            match self.next_event().await? {
                Event::Pong => return Ok(()),
                Event::Err(e) => return Err(NatsError::Server(e.to_owned())),
                _ => {}
            }
        }
    }

    /// Sends a `PING` and waits (at most [`WAIT`]) for its `PONG`: once it
    /// arrives, the server has processed everything sent before.
    pub async fn round_trip(&mut self) -> Result<(), NatsError> {
        self.outbox.ping();
        tokio::time::timeout(WAIT, self.wait_pong())
            .await
            .map_err(|_| NatsError::Timeout("waiting for PONG"))?
    }

    /// Closes the WebSocket politely (bounded by [`WAIT`]).
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(WAIT, self.ws.close(None)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(inbox: &mut Inbox) -> Vec<String> {
        let mut out = Vec::new();
        while let Ok(Some(ev)) = inbox.try_next() {
            out.push(match ev {
                Event::Msg(m) => format!(
                    "MSG {} {} {:?} {}",
                    String::from_utf8_lossy(m.subject),
                    m.sid,
                    m.reply.map(|r| String::from_utf8_lossy(r).into_owned()),
                    String::from_utf8_lossy(m.payload)
                ),
                Event::Pong => "PONG".into(),
                Event::Ok => "+OK".into(),
                Event::Err(e) => format!("ERR {e}"),
                Event::Info(i) => format!("INFO {}", String::from_utf8_lossy(i)),
            });
        }
        out
    }

    #[test]
    fn parses_a_stream_split_anywhere() {
        let stream: &[u8] = b"INFO {\"a\":1}\r\nMSG foo.bar 1 5\r\nhello\r\nPING\r\nMSG x 22 _INBOX.1.2 7\r\nhel\r\nlo\r\nPONG\r\n+OK\r\n-ERR 'Slow Consumer'\r\nHMSG h 3 12 14\r\nNATS/1.0\r\n\r\nhi\r\n";
        let expected = vec![
            "INFO {\"a\":1}".to_owned(),
            "MSG foo.bar 1 None hello".into(),
            "MSG x 22 Some(\"_INBOX.1.2\") hel\r\nlo".into(),
            "PONG".into(),
            "+OK".into(),
            "ERR Slow Consumer".into(),
            "MSG h 3 None hi".into(),
        ];
        for split in 0..stream.len() {
            let mut inbox = Inbox::new();
            inbox.extend(&stream[..split]);
            let mut got = all(&mut inbox);
            inbox.extend(&stream[split..]);
            got.extend(all(&mut inbox));
            assert_eq!(got, expected, "split at {split}");
            assert_eq!(inbox.take_pongs_owed(), 1);
            assert_eq!(inbox.pending(), 0);
        }
        // One byte at a time.
        let mut inbox = Inbox::new();
        let mut got = Vec::new();
        for b in stream {
            inbox.extend(std::slice::from_ref(b));
            got.extend(all(&mut inbox));
        }
        assert_eq!(got, expected);
    }

    #[test]
    fn rejects_garbage() {
        let mut inbox = Inbox::new();
        inbox.extend(b"WHAT\r\n");
        assert!(inbox.try_next().is_err());
        let mut inbox = Inbox::new();
        inbox.extend(b"MSG a b 3\r\nabc\r\n");
        assert!(inbox.try_next().is_err());
        let mut inbox = Inbox::new();
        inbox.extend(b"MSG a 1 3\r\nabcd\r\n");
        assert!(inbox.try_next().is_err());
    }

    #[test]
    fn writes_commands() {
        let mut out = Outbox::new();
        out.subscribe(b"bench.t0", 1);
        out.publish(b"bench.echo", Some(b"_INBOX.3.17"), b"abc");
        out.publish(b"x", None, b"");
        out.unsubscribe(1, Some(10));
        out.ping();
        assert_eq!(
            &out.buf[..],
            b"SUB bench.t0 1\r\nPUB bench.echo _INBOX.3.17 3\r\nabc\r\nPUB x 0\r\n\r\nUNSUB 1 10\r\nPING\r\n"
        );
    }

    #[test]
    fn only_loopback_urls() {
        assert!(loopback_addr("ws://127.0.0.1:4222").is_ok());
        assert!(loopback_addr("ws://127.0.0.1:4222/x").is_ok());
        assert!(loopback_addr("ws://10.0.0.1:4222").is_err());
        assert!(loopback_addr("wss://127.0.0.1:4222").is_err());
    }
}
