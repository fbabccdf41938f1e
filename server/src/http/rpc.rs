//! `POST /v1/rpc/{method}`: one request of a user, with a bearer token
//! (decision W6). The call runs in an in-process session authenticated
//! with the token, so it meets the socket's limits, capability checks and
//! error codes; the answer is the method's result (a streamed result as an
//! array of its chunks' data).
//!
//! `{method}` is a hub method (its params are the body) or, when the hub
//! has no method of that name, a routed procedure called through
//! `rpc.call` (the body is the procedure's params; `timeout_ms` and `key`
//! come from the query).

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use plexus_protocol::methods::rpc::CallParams;
use plexus_protocol::{ErrorCode, RawValue, WireError};

use super::body::{self, Format};
use super::local::{Answer, LocalSession, Who};
use super::payload::Payload;
use super::{Body, full};
use crate::hub::Hub;

/// Methods that only make sense on a session that outlives the request.
pub const SESSION_METHODS: &[&str] = &[
    "auth",
    "auth.refresh",
    "subscribe",
    "unsubscribe",
    "presence.set",
    "rpc.register",
    "rpc.unregister",
    "cancel",
];

/// The first value of query parameter `name`, percent-decoded.
pub fn query(req: &Request<Incoming>, name: &str) -> Option<String> {
    form_urlencoded::parse(req.uri().query()?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

pub(super) async fn handle(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    peer: std::net::SocketAddr,
    method: &str,
) -> Response<Body> {
    let out = body::response_format(req.headers(), Format::Json);
    if req.method() != hyper::Method::POST {
        let mut r = Response::new(full("use POST\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        r.headers_mut().insert(
            hyper::header::ALLOW,
            hyper::header::HeaderValue::from_static("POST"),
        );
        return r;
    }
    match run(req, hub, peer, method).await {
        Ok(Answer::Value(v)) => body::respond(out, StatusCode::OK, &Payload(v)),
        Ok(Answer::Chunks(c)) => body::respond(
            out,
            StatusCode::OK,
            &c.into_iter().map(Payload).collect::<Vec<_>>(),
        ),
        Err(e) => body::error(out, &e),
    }
}

async fn run(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    peer: std::net::SocketAddr,
    method: &str,
) -> Result<Answer, WireError> {
    let Some(token) = body::bearer(req.headers()).map(str::to_owned) else {
        return Err(WireError::new(
            ErrorCode::Unauthenticated,
            "send the user token as Authorization: Bearer TOKEN",
        ));
    };
    if SESSION_METHODS.contains(&method) {
        return Err(WireError::new(
            ErrorCode::InvalidParams,
            format!("{method} needs a session: use /v1/ws (or /v1/sse to subscribe)"),
        ));
    }
    let fmt = body::request_format(req.headers())?;
    let hub_method = hub
        .registry
        .table()
        .entries()
        .iter()
        .any(|e| &*e.name == method);
    let timeout_ms = match query(&req, "timeout_ms") {
        Some(t) => Some(t.parse::<u64>().map_err(|_| {
            WireError::new(ErrorCode::InvalidParams, "timeout_ms must be an integer")
        })?),
        None => None,
    };
    let key = query(&req, "key");
    let max = body_limit(hub);
    let bytes = body::read(req, max).await?;
    let params = body::parse_value(fmt, bytes, hub_method)?;
    let mut s = LocalSession::open(hub, peer, Who::Token(token))
        .await
        .map_err(|e| e.to_wire())?;
    let answer = if hub_method {
        s.call(method, &params.0, hub.config.http.max_answer_bytes)
            .await
    } else {
        let params = (!params.0.is_null()).then_some(&params.0);
        let raw = call_params(method, params, timeout_ms, key.as_deref())?;
        s.call("rpc.call", &raw, hub.config.http.max_answer_bytes)
            .await
    };
    s.close().await;
    answer.map_err(|e| e.to_wire())
}

/// The encoded params of `rpc.call` (shared by the server API's `call`).
pub(super) fn call_params(
    procedure: &str,
    params: Option<&RawValue>,
    timeout_ms: Option<u64>,
    key: Option<&str>,
) -> Result<RawValue, WireError> {
    let mut p = CallParams::new(procedure);
    if let Some(v) = params {
        p = p.with_params(v.as_raw_ref());
    }
    if let Some(t) = timeout_ms {
        p = p.with_timeout_ms(t);
    }
    if let Some(k) = key {
        p = p.with_key(k);
    }
    RawValue::encode(&p).map_err(|_| WireError::new(ErrorCode::Internal, "cannot encode the call"))
}

/// The largest request body: `[http] max-body-bytes`, or `max-frame-size`.
pub fn body_limit(hub: &Hub) -> usize {
    match hub.config.http.max_body_bytes {
        0 => hub.config.max_frame_size,
        n => n,
    }
}
