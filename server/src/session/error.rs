//! Why a request failed, and the one place that turns it into a wire error.
//!
//! Handlers (and the session core's own checks) return
//! `Result<_, RequestError>`; they never build a [`WireError`] or pick an
//! error code themselves. [`From<&RequestError> for WireError`] is the only
//! mapping, so the code, the message and the retry hint of every error
//! response are decided here.

use std::borrow::Cow;

use plexus_protocol::{ErrorCode, RawValue, WireError, decode_params};

/// How long a client should wait after `unavailable` because token keys
/// could not be fetched.
pub const KEYS_UNAVAILABLE_RETRY_MS: u64 = 1000;

/// Why a request failed. Messages are short, safe to send to the client,
/// and never quote a token, a key or a payload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// The params are missing, of the wrong type or out of range.
    #[error("invalid params: {0}")]
    InvalidParams(Cow<'static, str>),
    /// A field exceeds its size limit.
    #[error("{0}")]
    PayloadTooLarge(Cow<'static, str>),
    /// The principal may not do this.
    #[error("{0}")]
    Forbidden(Cow<'static, str>),
    /// The named thing does not exist.
    #[error("{0}")]
    NotFound(Cow<'static, str>),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(Cow<'static, str>),
    /// A per-connection limit is reached (requests in flight,
    /// subscriptions).
    #[error("{0}")]
    TooManyRequests(Cow<'static, str>),
    /// No such method.
    #[error("no such method")]
    MethodNotFound,
    /// The request needs an authenticated session, or the token is invalid.
    #[error("{0}")]
    Unauthenticated(Cow<'static, str>),
    /// The request rate limit was exceeded.
    #[error("request rate limit exceeded")]
    RateLimited {
        /// When a token is available again.
        retry_after_ms: u64,
    },
    /// Something the request needs is temporarily unavailable.
    #[error("{message}")]
    Unavailable {
        /// What is unavailable.
        message: Cow<'static, str>,
        /// When to retry, if known.
        retry_after_ms: Option<u64>,
    },
    /// The server gave up waiting (`request_timeout`, or a client that did
    /// not answer a server-initiated request).
    #[error("request timed out")]
    Timeout,
    /// The client cancelled the request.
    #[error("request cancelled")]
    Cancelled,
    /// A bug or an unexpected failure; the detail is for logs only, the
    /// client sees "internal error".
    #[error("internal error ({0})")]
    Internal(Cow<'static, str>),
    /// Routed RPC: no callee registered the procedure.
    #[error("no callee registered this procedure")]
    NoCallee,
    /// Routed RPC: the callee's session ended with the call in flight.
    #[error("the callee left with the call in flight")]
    CalleeLost,
    /// An error object the client sent in answer to a server-initiated
    /// request, passed on unchanged (`debug.call`, routed RPC).
    #[error("{0}")]
    Peer(WireError),
    /// A durable-stream operation failed: its error object as
    /// [`StreamError::to_wire`](crate::streams::StreamError::to_wire), the
    /// one mapping of stream errors, made it (with `retry_after_ms` and
    /// conflict details).
    #[error("{0}")]
    Stream(WireError),
}

impl From<crate::streams::StreamError> for RequestError {
    fn from(e: crate::streams::StreamError) -> Self {
        if let crate::streams::StreamError::Unavailable { cause: Some(c) } = &e {
            // The cause names the database failure, never a payload.
            tracing::warn!(error = %c, "durable stream operation failed");
        }
        RequestError::Stream(e.to_wire())
    }
}

impl RequestError {
    /// `invalid_params` with this message.
    pub fn invalid_params(msg: impl Into<Cow<'static, str>>) -> Self {
        RequestError::InvalidParams(msg.into())
    }

    /// `forbidden`: "not allowed to {what}".
    pub fn forbidden(what: &str) -> Self {
        RequestError::Forbidden(format!("not allowed to {what}").into())
    }

    /// `internal`, with a detail for logs.
    pub fn internal(detail: impl Into<Cow<'static, str>>) -> Self {
        RequestError::Internal(detail.into())
    }

    /// `unavailable` because token keys cannot be had right now.
    pub fn keys_unavailable() -> Self {
        RequestError::Unavailable {
            message: "token keys unavailable, retry later".into(),
            retry_after_ms: Some(KEYS_UNAVAILABLE_RETRY_MS),
        }
    }

    /// The wire code this error maps to.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::InvalidParams(_) => ErrorCode::InvalidParams,
            RequestError::PayloadTooLarge(_) => ErrorCode::PayloadTooLarge,
            RequestError::Forbidden(_) => ErrorCode::Forbidden,
            RequestError::NotFound(_) => ErrorCode::NotFound,
            RequestError::Conflict(_) => ErrorCode::Conflict,
            RequestError::TooManyRequests(_) => ErrorCode::TooManyRequests,
            RequestError::MethodNotFound => ErrorCode::MethodNotFound,
            RequestError::Unauthenticated(_) => ErrorCode::Unauthenticated,
            RequestError::RateLimited { .. } => ErrorCode::RateLimited,
            RequestError::Unavailable { .. } => ErrorCode::Unavailable,
            RequestError::Timeout => ErrorCode::Timeout,
            RequestError::Cancelled => ErrorCode::Cancelled,
            RequestError::Internal(_) => ErrorCode::Internal,
            RequestError::NoCallee => ErrorCode::NoCallee,
            RequestError::CalleeLost => ErrorCode::CalleeLost,
            RequestError::Peer(e) | RequestError::Stream(e) => e.code.clone(),
        }
    }
}

impl From<&RequestError> for WireError {
    /// The one mapping from a failed request to its error object.
    fn from(e: &RequestError) -> WireError {
        match e {
            RequestError::Peer(w) | RequestError::Stream(w) => w.clone(),
            RequestError::Internal(_) => WireError::new(ErrorCode::Internal, "internal error"),
            RequestError::RateLimited { retry_after_ms } => {
                WireError::new(ErrorCode::RateLimited, e.to_string())
                    .with_retry_after_ms(*retry_after_ms)
            }
            RequestError::Unavailable {
                message,
                retry_after_ms,
            } => {
                let w = WireError::new(ErrorCode::Unavailable, message.clone());
                match retry_after_ms {
                    Some(ms) => w.with_retry_after_ms(*ms),
                    None => w,
                }
            }
            other => WireError::new(other.code(), other.to_string()),
        }
    }
}

/// Decodes typed params, mapping any failure (including a duplicate map
/// key, decision P14) to [`RequestError::InvalidParams`].
pub fn params<'a, T: minicbor::Decode<'a, ()>>(raw: &'a RawValue) -> Result<T, RequestError> {
    decode_params(raw).map_err(|e| {
        let msg = e
            .message
            .strip_prefix("invalid params: ")
            .unwrap_or(&e.message);
        RequestError::InvalidParams(msg.to_owned().into())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code_and_hides_internal_details() {
        let cases = [
            (RequestError::invalid_params("x"), ErrorCode::InvalidParams),
            (
                RequestError::PayloadTooLarge("x".into()),
                ErrorCode::PayloadTooLarge,
            ),
            (RequestError::forbidden("x"), ErrorCode::Forbidden),
            (RequestError::NotFound("x".into()), ErrorCode::NotFound),
            (RequestError::Conflict("x".into()), ErrorCode::Conflict),
            (
                RequestError::TooManyRequests("x".into()),
                ErrorCode::TooManyRequests,
            ),
            (RequestError::MethodNotFound, ErrorCode::MethodNotFound),
            (
                RequestError::Unauthenticated("x".into()),
                ErrorCode::Unauthenticated,
            ),
            (
                RequestError::RateLimited { retry_after_ms: 7 },
                ErrorCode::RateLimited,
            ),
            (RequestError::keys_unavailable(), ErrorCode::Unavailable),
            (RequestError::Timeout, ErrorCode::Timeout),
            (RequestError::Cancelled, ErrorCode::Cancelled),
            (RequestError::internal("secret detail"), ErrorCode::Internal),
            (RequestError::NoCallee, ErrorCode::NoCallee),
            (RequestError::CalleeLost, ErrorCode::CalleeLost),
        ];
        for (e, code) in cases {
            let w = WireError::from(&e);
            assert_eq!(w.code, code, "{e:?}");
            assert_eq!(e.code(), code);
            assert!(!w.message.contains("secret"), "{w}");
        }
        let w = WireError::from(&RequestError::RateLimited { retry_after_ms: 7 });
        assert_eq!(w.retry_after_ms, Some(7));
        let w = WireError::from(&RequestError::keys_unavailable());
        assert_eq!(w.retry_after_ms, Some(KEYS_UNAVAILABLE_RETRY_MS));
        let peer = WireError::new(ErrorCode::from_name("app_specific"), "from the client");
        assert_eq!(WireError::from(&RequestError::Peer(peer.clone())), peer);
    }

    #[test]
    fn params_errors_are_invalid_params() {
        let raw = RawValue::encode(&5u8).unwrap();
        let e = params::<plexus_protocol::methods::SubscribeParams>(&raw).unwrap_err();
        assert_eq!(e.code(), ErrorCode::InvalidParams);
        assert!(WireError::from(&e).message.starts_with("invalid params: "));
        assert!(
            !WireError::from(&e)
                .message
                .contains("invalid params: invalid params")
        );
    }
}
