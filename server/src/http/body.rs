//! Content negotiation (decision W3): request bodies in JSON
//! (`application/json`, the default) or CBOR (`application/cbor`), read
//! within `max-body-bytes`; answers in the format `Accept` asks for, else
//! the request's. Errors are one document shape in both formats.

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Request, Response, StatusCode};
use plexus_protocol::{ErrorCode, WireError};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::payload::Payload;
use super::{Body, full};

/// A body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/json`.
    Json,
    /// `application/cbor`.
    Cbor,
}

impl Format {
    /// Its media type.
    pub fn media_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Cbor => "application/cbor",
        }
    }
}

fn media(v: &HeaderValue) -> String {
    v.to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// The request body's format; `Err` (415) for a type that is neither.
pub fn request_format(h: &HeaderMap) -> Result<Format, WireError> {
    match h.get(header::CONTENT_TYPE).map(media).as_deref() {
        None | Some("application/json") => Ok(Format::Json),
        Some("application/cbor") => Ok(Format::Cbor),
        Some(_) => Err(WireError::new(
            ErrorCode::InvalidParams,
            "the body must be application/json or application/cbor",
        )),
    }
}

/// The answer's format: CBOR when `Accept` names `application/cbor` (and
/// not JSON first), JSON when it names JSON, else `default`.
pub fn response_format(h: &HeaderMap, default: Format) -> Format {
    let Some(accept) = h.get(header::ACCEPT).and_then(|v| v.to_str().ok()) else {
        return default;
    };
    for part in accept.split(',') {
        match part.split(';').next().unwrap_or("").trim() {
            "application/cbor" => return Format::Cbor,
            "application/json" => return Format::Json,
            _ => {}
        }
    }
    default
}

/// Reads the whole body, at most `max` bytes.
pub async fn read(req: Request<Incoming>, max: usize) -> Result<bytes::Bytes, WireError> {
    match Limited::new(req.into_body(), max).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(WireError::new(
                ErrorCode::PayloadTooLarge,
                format!("the body exceeds {max} bytes"),
            ))
        }
        Err(_) => Err(WireError::new(
            ErrorCode::InvalidParams,
            "the body could not be read",
        )),
    }
}

/// Parses a body document.
pub fn parse<T: DeserializeOwned>(fmt: Format, bytes: &[u8]) -> Result<T, WireError> {
    let bad = |e: String| WireError::new(ErrorCode::InvalidParams, format!("bad body: {e}"));
    match fmt {
        Format::Json => serde_json::from_slice(bytes).map_err(|e| bad(e.to_string())),
        Format::Cbor => ciborium::from_reader(bytes).map_err(|e| bad(e.to_string())),
    }
}

/// Parses a body that is one value (a method's params): CBOR as is, JSON
/// by the reverse projection with decimal map keys read as integers
/// (decision W6). An empty body is `null`.
pub fn parse_value(fmt: Format, bytes: bytes::Bytes, keyed: bool) -> Result<Payload, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::InvalidParams, m);
    if bytes.is_empty() {
        return Ok(Payload::null());
    }
    match fmt {
        Format::Cbor => plexus_protocol::RawValue::from_bytes(bytes, &Default::default())
            .map(Payload)
            .map_err(|e| bad(format!("bad CBOR body: {e}"))),
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| bad(format!("bad JSON body: {e}")))?;
            Ok(Payload(if keyed {
                plexus_protocol::json::to_cbor_keyed(&v)
            } else {
                plexus_protocol::json::to_cbor(&v)
            }))
        }
    }
}

/// Encodes a document in `fmt`.
pub fn encode<T: Serialize>(fmt: Format, v: &T) -> Vec<u8> {
    match fmt {
        Format::Json => serde_json::to_vec(v).unwrap_or_default(),
        Format::Cbor => {
            let mut out = Vec::new();
            let _ = ciborium::into_writer(v, &mut out);
            out
        }
    }
}

/// A response with a document body.
pub fn respond<T: Serialize>(fmt: Format, status: StatusCode, v: &T) -> Response<Body> {
    let mut r = Response::new(full(encode(fmt, v)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(fmt.media_type()),
    );
    r
}

/// The error document: `{"error": {"code", "message", "retry_after_ms"?,
/// "details"?}}`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorDoc {
    /// The error.
    pub error: ErrorBody,
}

/// One error, as the wire's error object with named fields.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The protocol's error code (`docs/protocol.md` §14.2).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// For retryable codes: when to retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The error's details, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Payload>,
}

impl From<&WireError> for ErrorBody {
    fn from(e: &WireError) -> Self {
        ErrorBody {
            code: e.code.as_str().to_owned(),
            message: e.message.clone(),
            retry_after_ms: e.retry_after_ms,
            details: e.details.clone().map(Payload),
        }
    }
}

/// An error response: the status of [`status_of`](super::status::status_of),
/// `Retry-After` (seconds, rounded up) when the error says when to retry.
pub fn error(fmt: Format, e: &WireError) -> Response<Body> {
    let mut r = respond(
        fmt,
        super::status::status_of(&e.code),
        &ErrorDoc { error: e.into() },
    );
    if let Some(ms) = e.retry_after_ms
        && let Ok(v) = HeaderValue::from_str(&ms.div_ceil(1000).max(1).to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if e.code == ErrorCode::Unauthenticated {
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    r
}

/// The bearer credential of `Authorization`, if any.
pub fn bearer(h: &HeaderMap) -> Option<&str> {
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, rest) = v.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn formats_are_negotiated_from_content_type_and_accept() {
        assert_eq!(request_format(&headers(&[])).unwrap(), Format::Json);
        let cbor = headers(&[("content-type", "application/cbor")]);
        assert_eq!(request_format(&cbor).unwrap(), Format::Cbor);
        assert!(request_format(&headers(&[("content-type", "text/plain")])).is_err());
        assert_eq!(response_format(&cbor, Format::Cbor), Format::Cbor);
        let want_json = headers(&[("accept", "application/json, application/cbor")]);
        assert_eq!(response_format(&want_json, Format::Cbor), Format::Json);
        let any = headers(&[("accept", "*/*")]);
        assert_eq!(response_format(&any, Format::Cbor), Format::Cbor);
    }

    #[test]
    fn bearer_credentials_are_read_case_insensitively() {
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Some("abc")
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])),
            Some("abc")
        );
        assert_eq!(bearer(&headers(&[("authorization", "Basic abc")])), None);
    }
}
