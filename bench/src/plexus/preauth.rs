//! Pre-auth memory: sockets that complete the WebSocket handshake, then
//! send all but the last byte of one large binary frame and never
//! authenticate. What the hub holds for each is what an unauthenticated
//! peer can make it hold (§4.6: 16 KiB before `auth`).
//!
//! The sockets speak raw RFC 6455 (a hand-written upgrade request and frame
//! header), since no WebSocket client sends half a frame.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::procs::HubProcess;
use crate::rss::PeakSampler;
use crate::scenario::{PreauthConfig, PreauthResult};

/// Flags the scenario's hub needs: an auth deadline longer than the run,
/// so no socket is closed for being slow before it is measured.
pub const PREAUTH_HUB_ARGS: [&str; 2] = ["--auth-timeout", "120s"];

/// How long one socket's writes may take before it counts as stalled (the
/// hub stopped reading it without closing it).
const WRITE_BOUND: Duration = Duration::from_secs(10);

/// How long the hub gets to show, after the writes, that it closed a socket.
const CLOSE_PROBE: Duration = Duration::from_millis(500);

/// Largest upgrade response read.
const MAX_RESPONSE: usize = 4096;

/// Zeros written as payload, in pieces of this size.
const CHUNK: usize = 64 * 1024;

/// Why a raw socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RawError {
    /// Socket failure.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// The hub did not switch protocols.
    #[error("upgrade refused: {0}")]
    Refused(String),
}

/// The header of a masked client binary frame announcing `len` payload
/// bytes. The masking key is zero, which leaves the payload unchanged.
pub fn frame_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        h.push(0x80 | 126);
        h.extend(short.to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend((len as u64).to_be_bytes());
    }
    h.extend([0, 0, 0, 0]);
    h
}

/// Opens a TCP connection and completes the WebSocket upgrade for
/// `plexus.v1` by hand.
pub async fn raw_upgrade(
    peer: SocketAddr,
    path: &str,
    source: Option<IpAddr>,
) -> Result<TcpStream, RawError> {
    let mut tcp = crate::net::connect(peer, source).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {peer}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Protocol: {}\r\n\r\n",
        plexus_protocol::SUBPROTOCOL
    );
    tcp.write_all(request.as_bytes()).await?;
    let mut response = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !response.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || response.len() + n > MAX_RESPONSE {
            return Err(RawError::Refused("no complete response".into()));
        }
        response.extend_from_slice(&buf[..n]);
    }
    if !response.starts_with(b"HTTP/1.1 101") {
        let line = response.split(|&b| b == b'\r').next().unwrap_or_default();
        return Err(RawError::Refused(
            String::from_utf8_lossy(line).into_owned(),
        ));
    }
    Ok(tcp)
}

/// How writing one socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    All,
    Failed,
    Stalled,
}

/// Writes the header of a `frame_bytes` frame and all but its last byte.
async fn send_partial(tcp: &mut TcpStream, frame_bytes: usize, zeros: &[u8]) -> Sent {
    let write = async {
        tcp.write_all(&frame_header(frame_bytes)).await?;
        let mut left = frame_bytes.saturating_sub(1);
        while left > 0 {
            let n = left.min(zeros.len());
            tcp.write_all(&zeros[..n]).await?;
            left -= n;
        }
        tcp.flush().await
    };
    match tokio::time::timeout(WRITE_BOUND, write).await {
        Ok(Ok(())) => Sent::All,
        Ok(Err(_)) => Sent::Failed,
        Err(_) => Sent::Stalled,
    }
}

/// Whether the hub closed `tcp`: `Some(code)` from its Close frame (0 for
/// end of stream, a reset or a Close without a code), `None` if nothing
/// arrived within [`CLOSE_PROBE`].
async fn closed_by_hub(tcp: &mut TcpStream) -> Option<u16> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(CLOSE_PROBE, tcp.read(&mut buf)).await {
        Err(_) => None,
        Ok(Err(_) | Ok(0)) => Some(0),
        // A server frame is unmasked: [0x88, len, code_hi, code_lo, …].
        Ok(Ok(n)) if n >= 4 && buf[0] == 0x88 && buf[1] & 0x7f >= 2 => {
            Some(u16::from_be_bytes([buf[2], buf[3]]))
        }
        Ok(Ok(_)) => Some(0),
    }
}

/// Runs the scenario against a running hub (start it with
/// [`PREAUTH_HUB_ARGS`]).
pub async fn preauth(hub: &HubProcess, cfg: &PreauthConfig) -> PreauthResult {
    let pid = hub.pid().unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = crate::rss::rss_kib(pid).unwrap_or(0);
    let sampler = PeakSampler::start(pid);
    let sockets: Vec<TcpStream> = futures_util::stream::iter(0..cfg.sockets)
        .map(|i| raw_upgrade(hub.addr, "/v1/ws", crate::net::source_of(&cfg.sources, i)))
        .buffer_unordered(200)
        .filter_map(|r| async move { r.ok() })
        .collect()
        .await;
    let opened = sockets.len();
    let zeros: Arc<[u8]> = vec![0u8; CHUNK].into();
    let frame_bytes = cfg.frame_bytes;
    let written: Vec<(TcpStream, Sent)> = futures_util::stream::iter(sockets)
        .map(|mut tcp| {
            let zeros = zeros.clone();
            async move {
                let sent = send_partial(&mut tcp, frame_bytes, &zeros).await;
                (tcp, sent)
            }
        })
        .buffer_unordered(cfg.concurrency.max(1))
        .collect()
        .await;
    let count = |s: Sent| written.iter().filter(|(_, w)| *w == s).count();
    let (fully_sent, write_failed, write_stalled) =
        (count(Sent::All), count(Sent::Failed), count(Sent::Stalled));
    // Let the hub read what is still in its socket buffers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = crate::rss::rss_kib(pid).unwrap_or(0);
    let peak = sampler.finish(pid).await;
    let mut sockets: Vec<TcpStream> = written.into_iter().map(|(t, _)| t).collect();
    let verdicts = futures_util::future::join_all(sockets.iter_mut().map(closed_by_hub)).await;
    let mut closed = BTreeMap::new();
    for code in verdicts.iter().flatten() {
        *closed.entry(*code).or_insert(0) += 1;
    }
    drop(sockets);
    let per = |kib: u64| kib.saturating_sub(before) as f64 / opened.max(1) as f64;
    PreauthResult {
        opened,
        fully_sent,
        write_failed,
        write_stalled,
        rss_before_kib: before,
        rss_held_kib: held,
        rss_peak_kib: peak,
        peak_kib_per_socket: per(peak),
        held_kib_per_socket: per(held),
        closed_by_hub: closed,
        still_open: verdicts.iter().filter(|v| v.is_none()).count(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Message;

    #[test]
    fn headers_use_the_shortest_length_form() {
        assert_eq!(frame_header(5), [0x82, 0x85, 0, 0, 0, 0]);
        assert_eq!(frame_header(16_384), [0x82, 0xfe, 0x40, 0x00, 0, 0, 0, 0]);
        assert_eq!(
            frame_header(1_048_576),
            [0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]
        );
    }

    #[tokio::test]
    async fn a_websocket_server_reads_the_raw_frame() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            ws.next().await.unwrap().unwrap()
        });
        let mut tcp = raw_upgrade(addr, "/v1/ws", None).await.unwrap();
        let zeros = [0u8; 1000];
        // All but the last byte, then the last: one whole message.
        assert_eq!(send_partial(&mut tcp, 70_000, &zeros).await, Sent::All);
        tcp.write_all(&[0]).await.unwrap();
        assert_eq!(
            server.await.unwrap(),
            Message::Binary(vec![0u8; 70_000].into())
        );
    }
}
