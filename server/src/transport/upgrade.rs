//! The WebSocket handshake on top of hyper (RFC 6455 section 4.2).

use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use plexus_protocol::SUBPROTOCOL;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tracing::debug;

use super::ws::{WsLink, WsSettings};
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

/// Whether a comma-separated header holds `token`, compared ASCII
/// case-insensitively (`Connection`, `Upgrade`), or exactly when `exact`
/// (`Sec-WebSocket-Protocol`: subprotocol tokens are case-sensitive, P17).
fn header_has_token(
    req: &Request<Incoming>,
    name: header::HeaderName,
    token: &str,
    exact: bool,
) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| {
                s.split(',').any(|t| {
                    let t = t.trim();
                    if exact {
                        t == token
                    } else {
                        t.eq_ignore_ascii_case(token)
                    }
                })
            })
            .unwrap_or(false)
    })
}

/// Whether an `Origin` value is allowed: the whole value against each
/// entry, ASCII case-insensitively, without normalizing ports or slashes;
/// `null` matches only an entry `null` (decision P16).
pub(crate) fn origin_allowed(origin: &str, allowed: &[String]) -> bool {
    allowed.iter().any(|a| a.eq_ignore_ascii_case(origin))
}

/// Answers an upgrade request and, on success, spawns the session.
pub(crate) fn handle(
    mut req: Request<Incoming>,
    hub: Arc<Hub>,
    peer: std::net::SocketAddr,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET
        || !header_has_token(&req, header::CONNECTION, "upgrade", false)
        || !header_has_token(&req, header::UPGRADE, "websocket", false)
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
            && !origin.to_str().is_ok_and(|o| origin_allowed(o, &origins))
        {
            return plain(StatusCode::FORBIDDEN, "origin not allowed\n");
        }
    }
    if !header_has_token(&req, header::SEC_WEBSOCKET_PROTOCOL, SUBPROTOCOL, true) {
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
    // Until `auth` succeeds only the pre-auth size is accepted, enforced on
    // the frame header before any payload is buffered (P12).
    let settings = WsSettings {
        read_buffer: hub.config.ws_read_buffer,
        write_buffer: hub.config.ws_write_buffer,
        max_message_size: hub.config.max_preauth_frame_size,
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            // The socket itself when hyper hands it back (it does for
            // HTTP/1 over TCP): no boxed IO, and reads can wait on its
            // readiness.
            Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
                Ok(parts) => {
                    let link = WsLink::new(parts.io.into_inner(), parts.read_buf, settings);
                    crate::session::run(hub, link, peer).await;
                }
                Err(upgraded) => {
                    let link = WsLink::new(TokioIo::new(upgraded), Bytes::new(), settings);
                    crate::session::run(hub, link, peer).await;
                }
            },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_compare_whole_values_ignoring_ascii_case() {
        let allowed = vec!["https://app.example".to_owned(), "null".to_owned()];
        assert!(origin_allowed("https://app.example", &allowed));
        assert!(origin_allowed("HTTPS://APP.EXAMPLE", &allowed));
        assert!(!origin_allowed("https://app.example:443", &allowed));
        assert!(!origin_allowed("https://app.example/", &allowed));
        assert!(!origin_allowed("https://evil.example", &allowed));
        assert!(origin_allowed("null", &allowed));
        assert!(!origin_allowed("null", &allowed[..1]));
    }
}
