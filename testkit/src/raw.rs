//! A WebSocket peer written by hand over a TCP socket: it does the opening
//! handshake itself and reads and writes raw frames, so tests can do what a
//! well-behaved library would not (unmasked frames, oversized headers,
//! invalid close reasons, never answering pings) and can tell a clean close
//! (FIN) from a reset (RST).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use plexus_protocol::frame::encode_request;
use plexus_protocol::{DecodeLimits, Frame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::WAIT;

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub const OP_BINARY: u8 = 0x2;
/// Opcode of a Close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a Ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a Pong frame.
pub const OP_PONG: u8 = 0xa;

/// The largest frame payload [`RawSocket::read_frame`] accepts.
const MAX_READ_PAYLOAD: u64 = 16 * 1024 * 1024;

/// One WebSocket frame as read from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsFrame {
    /// The FIN bit.
    pub fin: bool,
    /// The opcode.
    pub opcode: u8,
    /// The (unmasked) payload.
    pub payload: Vec<u8>,
}

impl WsFrame {
    /// The close code of a Close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == OP_CLOSE && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }

    /// The plexus frame carried by a binary frame.
    pub fn plexus(&self) -> Option<Frame> {
        (self.opcode == OP_BINARY)
            .then(|| Frame::decode_slice(&self.payload, &DecodeLimits::default()).ok())
            .flatten()
    }
}

/// What a peer saw while a connection closed: see [`RawSocket::linger`].
#[derive(Debug, Default, Clone)]
pub struct CloseReport {
    /// Plexus frames received before the Close frame.
    pub frames: Vec<Frame>,
    /// The code of the server's Close frame, if one arrived.
    pub close_code: Option<u16>,
    /// The connection was reset (ECONNRESET) at some point.
    pub reset: bool,
    /// The server closed the TCP connection cleanly (EOF).
    pub eof: bool,
    /// Frames the peer sent after the trigger.
    pub sent_after: usize,
}

impl CloseReport {
    /// The code of the `closing` notification received, if any.
    pub fn closing_code(&self) -> Option<u16> {
        self.frames.iter().find_map(|f| match f {
            Frame::Notification(n) if n.method == "closing" => n
                .params
                .decode::<plexus_protocol::methods::ClosingParams>()
                .ok()
                .map(|p| p.code),
            _ => None,
        })
    }
}

/// A hand-written WebSocket client.
#[derive(Debug)]
pub struct RawSocket {
    tcp: TcpStream,
    buf: Vec<u8>,
    next_id: u64,
}

/// The opening handshake request for `/v1/ws` with this subprotocol
/// header line (or none) and extra header lines.
pub fn upgrade_request(protocol: Option<&str>, extra: &str) -> String {
    let proto = protocol
        .map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n"))
        .unwrap_or_default();
    format!(
        "GET /v1/ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n{proto}{extra}\r\n"
    )
}

/// Sends `request` to `addr` and returns the response head (status line
/// and headers) and the socket.
pub async fn http_exchange(addr: SocketAddr, request: &str) -> (String, TcpStream, Vec<u8>) {
    let mut tcp = TcpStream::connect(addr).await.expect("connects");
    tcp.write_all(request.as_bytes()).await.expect("writes");
    let mut buf = Vec::new();
    let head_end = tokio::time::timeout(WAIT, async {
        loop {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.expect("reads");
            if n == 0 {
                return buf.len();
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                return i + 4;
            }
        }
    })
    .await
    .expect("the server answers the handshake");
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let rest = buf[head_end..].to_vec();
    (head, tcp, rest)
}

impl RawSocket {
    /// Connects and completes the handshake with subprotocol `plexus.v1`.
    pub async fn connect(addr: SocketAddr) -> RawSocket {
        let (head, tcp, rest) = http_exchange(
            addr,
            &upgrade_request(Some(plexus_protocol::SUBPROTOCOL), ""),
        )
        .await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        RawSocket {
            tcp,
            buf: rest,
            next_id: 1,
        }
    }

    /// Like [`RawSocket::connect`], over a socket with a tiny receive
    /// buffer.
    pub async fn connect_stalled(addr: SocketAddr) -> RawSocket {
        let sock = tokio::net::TcpSocket::new_v4().expect("a socket");
        sock.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let mut tcp = sock.connect(addr).await.expect("connects");
        let req = upgrade_request(Some(plexus_protocol::SUBPROTOCOL), "");
        tcp.write_all(req.as_bytes()).await.expect("writes");
        let mut s = RawSocket {
            tcp,
            buf: Vec::new(),
            next_id: 1,
        };
        let head = s.read_head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        s
    }

    async fn read_head(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..i + 4]).into_owned();
                self.buf.drain(..i + 4);
                return head;
            }
            self.fill().await.expect("reads the handshake");
        }
    }

    /// The TCP stream.
    pub fn tcp(&mut self) -> &mut TcpStream {
        &mut self.tcp
    }

    /// Writes raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.tcp.write_all(bytes).await
    }

    /// Writes one frame, masked as a client must (unless `masked` is false).
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
        masked: bool,
    ) -> io::Result<()> {
        let bytes = frame_bytes(fin, opcode, payload, masked);
        self.tcp.write_all(&bytes).await
    }

    /// Writes only the header of a masked frame announcing `len` payload
    /// bytes (the payload may follow with [`RawSocket::send_masked_payload`]).
    pub async fn send_header(&mut self, opcode: u8, len: u64) -> io::Result<()> {
        let mut out = Vec::with_capacity(14);
        push_header(&mut out, true, opcode, len, true);
        out.extend_from_slice(&MASK);
        self.tcp.write_all(&out).await
    }

    /// Writes payload bytes for a frame started with
    /// [`RawSocket::send_header`] (`offset` is where they start in the
    /// payload, for the mask).
    pub async fn send_masked_payload(&mut self, offset: usize, payload: &[u8]) -> io::Result<()> {
        let masked: Vec<u8> = payload
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ MASK[(offset + i) % 4])
            .collect();
        self.tcp.write_all(&masked).await
    }

    /// Sends one plexus frame as a binary message.
    pub async fn send_binary(&mut self, payload: &[u8]) -> io::Result<()> {
        self.send_frame(true, OP_BINARY, payload, true).await
    }

    /// Sends a request and returns its id.
    pub async fn request<T: minicbor::Encode<()>>(
        &mut self,
        method: &str,
        params: &T,
    ) -> io::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let bytes = encode_request(id, method, params).expect("params encode");
        self.send_binary(&bytes).await?;
        Ok(id)
    }

    /// Sends a Close frame with `code` and a raw `reason`.
    pub async fn send_close(&mut self, code: u16, reason: &[u8]) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        self.send_frame(true, OP_CLOSE, &payload, true).await
    }

    async fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 8192];
        let n = self.tcp.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Reads the next frame: `Ok(None)` at EOF, `Err` on a reset or other
    /// socket error. Waits at most [`WAIT`].
    pub async fn read_frame(&mut self) -> io::Result<Option<WsFrame>> {
        match tokio::time::timeout(WAIT, self.read_frame_inner()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "no frame")),
        }
    }

    async fn read_frame_inner(&mut self) -> io::Result<Option<WsFrame>> {
        loop {
            if let Some((frame, used)) = parse_frame(&self.buf)? {
                self.buf.drain(..used);
                return Ok(Some(frame));
            }
            if self.fill().await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Reads frames until a plexus response to `id` and returns it; other
    /// frames are dropped.
    pub async fn response(&mut self, id: u64) -> plexus_protocol::Response {
        loop {
            let f = self
                .read_frame()
                .await
                .expect("reads")
                .expect("connection open");
            if let Some(Frame::Response(r)) = f.plexus()
                && r.id == id
            {
                return r;
            }
        }
    }

    /// Authenticates and waits for the response.
    pub async fn auth(&mut self, token: &str) -> plexus_protocol::Response {
        let id = self
            .request(
                "auth",
                &plexus_protocol::methods::AuthParams {
                    token,
                    instance: None,
                    agent: Some("plexus-testkit raw"),
                },
            )
            .await
            .expect("sends");
        self.response(id).await
    }

    /// What a peer sees when the server closes while the peer still has
    /// frames in flight: for `quiet`, it writes `filler` (a plexus frame)
    /// every millisecond without reading, the way a busy client does (the
    /// server's Close frame, `closing` and responses pile up unread in its
    /// receive buffer); then it reads everything, answers the Close with its
    /// own, and reads until EOF or a reset.
    ///
    /// A server that closes its socket with unread input makes the kernel
    /// send RST, which discards what the peer had not read yet: the report
    /// then shows `reset` and misses the Close frame.
    pub async fn linger(&mut self, filler: Option<Vec<u8>>, quiet: Duration) -> CloseReport {
        let mut report = CloseReport::default();
        let until = tokio::time::Instant::now() + quiet;
        if let Some(filler) = &filler {
            let bytes = frame_bytes(true, OP_BINARY, filler, true);
            while tokio::time::Instant::now() < until {
                match self.tcp.write_all(&bytes).await {
                    Ok(()) => report.sent_after += 1,
                    Err(e) => {
                        if matches!(
                            e.kind(),
                            io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
                        ) {
                            report.reset = true;
                        }
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        } else {
            tokio::time::sleep_until(until).await;
        }
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection did not end: {report:?}"
            );
            match self.read_frame().await {
                Ok(Some(f)) => {
                    if f.opcode == OP_CLOSE {
                        report.close_code = Some(f.close_code().unwrap_or(1005));
                        let echo = f.close_code().unwrap_or(1000);
                        let _ = self.send_close(echo, b"").await;
                    } else if let Some(p) = f.plexus() {
                        report.frames.push(p);
                    }
                }
                Ok(None) => {
                    report.eof = true;
                    return report;
                }
                Err(e) => {
                    report.reset |= e.kind() == io::ErrorKind::ConnectionReset;
                    return report;
                }
            }
        }
    }
}

/// The masking key used for every frame (any key is valid).
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn push_header(out: &mut Vec<u8>, fin: bool, opcode: u8, len: u64, masked: bool) {
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0f));
    let mask_bit = if masked { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | u8::try_from(len).expect("checked")),
        126..=0xffff => {
            out.push(mask_bit | 126);
            out.extend_from_slice(&u16::try_from(len).expect("checked").to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend_from_slice(&len.to_be_bytes());
        }
    }
}

/// The bytes of one frame.
pub fn frame_bytes(fin: bool, opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    push_header(&mut out, fin, opcode, payload.len() as u64, masked);
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// Parses one server frame from the start of `buf`: the frame and the
/// bytes it used, or `None` if more input is needed.
fn parse_frame(buf: &[u8]) -> io::Result<Option<(WsFrame, usize)>> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (u64::from(n), 2),
    };
    if len > MAX_READ_PAYLOAD {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mask = if masked {
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let m = [buf[at], buf[at + 1], buf[at + 2], buf[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    let len = usize::try_from(len).expect("bounded above");
    if buf.len() < at + len {
        return Ok(None);
    }
    let mut payload = buf[at..at + len].to_vec();
    if let Some(m) = mask {
        payload
            .iter_mut()
            .enumerate()
            .for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Ok(Some((
        WsFrame {
            fin,
            opcode,
            payload,
        },
        at + len,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_parser() {
        for len in [0usize, 5, 125, 126, 300, 70_000] {
            let payload = vec![7u8; len];
            for masked in [false, true] {
                let bytes = frame_bytes(true, OP_BINARY, &payload, masked);
                let (f, used) = parse_frame(&bytes).unwrap().unwrap();
                assert_eq!(used, bytes.len());
                assert_eq!(f.payload, payload);
                assert!(parse_frame(&bytes[..bytes.len() - 1]).unwrap().is_none());
            }
        }
    }
}
