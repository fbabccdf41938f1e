//! The WebSocket handshake on top of hyper (RFC 6455 section 4.2).

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plexus_protocol::SUBPROTOCOL;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tracing::debug;

use crate::hub::Hub;

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn header_has_token(req: &Request<Incoming>, name: header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// Answers an upgrade request and, on success, spawns the session.
pub(crate) fn handle(
    mut req: Request<Incoming>,
    hub: Arc<Hub>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET
        || !header_has_token(&req, header::CONNECTION, "upgrade")
        || !header_has_token(&req, header::UPGRADE, "websocket")
    {
        return plain(
            StatusCode::BAD_REQUEST,
            "expected a WebSocket upgrade request\n",
        );
    }
    if req
        .headers()
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes())
        != Some(b"13")
    {
        let mut r = plain(
            StatusCode::UPGRADE_REQUIRED,
            "unsupported WebSocket version; use 13\n",
        );
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return r;
    }
    let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key\n");
    };
    let origins = hub.config.origins();
    if !origins.is_empty() {
        // Browsers always send Origin; native clients usually do not, and
        // the allow-list exists to stop other web pages, not native apps.
        if let Some(origin) = req.headers().get(header::ORIGIN)
            && !origin
                .to_str()
                .is_ok_and(|o| origins.iter().any(|a| a == o))
        {
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
    }
    if !header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL) {
        return plain(
            StatusCode::BAD_REQUEST,
            "the plexus.v1 subprotocol is required: send Sec-WebSocket-Protocol: plexus.v1\n",
        );
    }
    if hub.open_connections() >= hub.config.max_connections as u64 || hub.is_shutting_down() {
        let mut r = plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "the hub is at capacity or shutting down\n",
        );
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    }

    let accept = derive_accept_key(key.as_bytes());
    let config = WebSocketConfig::default()
        .read_buffer_size(hub.config.ws_read_buffer)
        .write_buffer_size(hub.config.ws_write_buffer)
        .max_write_buffer_size(hub.config.ws_write_buffer.max(hub.config.max_frame_size) * 2)
        .max_message_size(Some(hub.config.max_frame_size))
        .max_frame_size(Some(hub.config.max_frame_size));
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws = WebSocketStream::from_raw_socket(
                    TokioIo::new(upgraded),
                    Role::Server,
                    Some(config),
                )
                .await;
                crate::session::run(hub, ws, peer).await;
            }
            Err(e) => debug!(error = %e, "upgrade failed"),
        }
    });

    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(SUBPROTOCOL),
    );
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    r
}
