//! The floor: a minimal tokio-tungstenite echo server. It answers every
//! binary message with the same bytes, batching writes the way the hub
//! does, and negotiates `plexus.v1` so the same client can drive it.

use std::net::SocketAddr;

use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Serves until the process ends; prints `echo-server listening on ws://ADDR/`.
pub async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    println!("echo-server listening on ws://{}/", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(echo(stream));
    }
}

async fn echo(stream: TcpStream) {
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(4096);
    // The error type is fixed by tungstenite's `Callback` trait.
    #[allow(clippy::result_large_err)]
    let callback = |_: &Request, mut resp: Response| {
        resp.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(plexus_protocol::SUBPROTOCOL),
        );
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        if !msg.is_binary() {
            continue;
        }
        if ws.feed(msg).await.is_err() {
            return;
        }
        // Echo whatever else has already arrived, then flush once.
        while let Some(Some(Ok(more))) = ws.next().now_or_never() {
            if more.is_binary() && ws.feed(more).await.is_err() {
                return;
            }
        }
        if ws.flush().await.is_err() {
            return;
        }
    }
}
