//! The one mapping from a wire error code to an HTTP status (decision W4).
//! `docs/http.md` ("Errors") shows the same table.

use hyper::StatusCode;
use plexus_protocol::ErrorCode;

/// The HTTP status an error with `code` is answered with.
///
/// ```
/// use plexus_protocol::ErrorCode;
/// use plexus_server::http::status::status_of;
/// assert_eq!(status_of(&ErrorCode::Forbidden).as_u16(), 403);
/// assert_eq!(status_of(&ErrorCode::NoCallee).as_u16(), 503);
/// ```
pub fn status_of(code: &ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidFrame | ErrorCode::InvalidParams => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound | ErrorCode::MethodNotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::RateLimited | ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        // nginx's 499 ("client closed request") is not a registered status.
        ErrorCode::Cancelled => StatusCode::CONFLICT,
        ErrorCode::Unavailable | ErrorCode::NoCallee => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::CalleeLost => StatusCode::BAD_GATEWAY,
        ErrorCode::QuotaExceeded => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::ClockSkew => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // Codes this version does not know (and any added later without a
        // row here) are failures of the request as a whole.
        _ => StatusCode::BAD_REQUEST,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_has_an_error_status() {
        for c in ErrorCode::ALL {
            let s = status_of(c);
            assert!(s.is_client_error() || s.is_server_error(), "{c}: {s}");
            // Retryable codes are the ones a client may repeat: none is
            // mapped to 400, which says "do not send this again".
            if c.retryable() {
                assert_ne!(s, StatusCode::BAD_REQUEST, "{c}");
            }
        }
    }
}
