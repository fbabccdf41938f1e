//! Authentication errors, and the one place `jsonwebtoken` errors are
//! translated into them.

use jsonwebtoken::errors::ErrorKind;

/// Why a token was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token is bad; retrying with the same token cannot succeed. The
    /// session answers `unauthenticated` and closes with 4000.
    #[error("invalid token: {0}")]
    Invalid(#[from] InvalidToken),
    /// Keys cannot be had right now (JWKS unreachable and nothing cached
    /// for this token's key). The session answers `unavailable`; the same
    /// token may work later.
    #[error("authentication keys are unavailable")]
    Unavailable,
}

/// What is wrong with a token. Messages are short and safe to send to the
/// client: they never quote the token or a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidToken {
    /// Not a compact JWS: wrong shape, bad base64 or JSON, too large, a
    /// claim of the wrong type, or a `crit` header.
    #[error("token is malformed")]
    Malformed,
    /// The signature does not verify with the selected key.
    #[error("token signature is invalid")]
    BadSignature,
    /// The header's `alg` is not the algorithm pinned for the key. This
    /// includes `"none"`, which is always refused with this variant.
    #[error("token algorithm is not allowed")]
    AlgorithmNotAllowed,
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is missing or does not hold the configured audience.
    #[error("token audience is not accepted")]
    WrongAudience,
    /// No key with the token's `kid` (or the token has no `kid`) in the
    /// key set.
    #[error("token signing key is unknown")]
    UnknownKey,
    /// `sub` is missing or empty.
    #[error("token has no subject")]
    MissingSubject,
    /// `sub` is longer than [`MAX_SUBJECT_LEN`](super::MAX_SUBJECT_LEN).
    #[error("token subject is too long")]
    BadSubject,
    /// `exp` is missing; tokens must expire.
    #[error("token has no expiry")]
    MissingExpiry,
    /// `exp` lies more than
    /// [`MAX_TOKEN_LIFETIME`](super::MAX_TOKEN_LIFETIME) ahead: no value
    /// means "never expires".
    #[error("token expiry is too far in the future")]
    ExpiryTooFar,
    /// The `plexus` claim is not an object of pattern lists, holds an
    /// invalid pattern, or too many of them.
    #[error("token capabilities are invalid")]
    BadCapabilities,
}

impl InvalidToken {
    /// A stable `snake_case` name, for logs and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            InvalidToken::Malformed => "malformed",
            InvalidToken::BadSignature => "bad_signature",
            InvalidToken::AlgorithmNotAllowed => "algorithm_not_allowed",
            InvalidToken::Expired => "expired",
            InvalidToken::NotYetValid => "not_yet_valid",
            InvalidToken::WrongIssuer => "wrong_issuer",
            InvalidToken::WrongAudience => "wrong_audience",
            InvalidToken::UnknownKey => "unknown_key",
            InvalidToken::MissingSubject => "missing_subject",
            InvalidToken::BadSubject => "bad_subject",
            InvalidToken::MissingExpiry => "missing_expiry",
            InvalidToken::ExpiryTooFar => "expiry_too_far",
            InvalidToken::BadCapabilities => "bad_capabilities",
        }
    }
}

/// Translates a `jsonwebtoken` decoding error.
pub(crate) fn from_jwt_error(e: &jsonwebtoken::errors::Error) -> InvalidToken {
    match e.kind() {
        ErrorKind::InvalidSignature => InvalidToken::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => InvalidToken::AlgorithmNotAllowed,
        ErrorKind::ExpiredSignature => InvalidToken::Expired,
        ErrorKind::ImmatureSignature => InvalidToken::NotYetValid,
        ErrorKind::InvalidIssuer => InvalidToken::WrongIssuer,
        ErrorKind::InvalidAudience => InvalidToken::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => InvalidToken::MissingExpiry,
            "sub" => InvalidToken::MissingSubject,
            "iss" => InvalidToken::WrongIssuer,
            "aud" => InvalidToken::WrongAudience,
            _ => InvalidToken::Malformed,
        },
        // Key material that cannot be used surfaces per token: the
        // signature cannot be verified with the key the token names. Keys
        // are shape-checked when loaded, so this is not expected.
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => {
            tracing::warn!(error = %e, "a configured verification key is unusable");
            InvalidToken::BadSignature
        }
        // InvalidToken (shape), Base64, Json, Utf8, InvalidClaimFormat and
        // anything added later.
        _ => InvalidToken::Malformed,
    }
}

/// Why an [`Authenticator`](super::Authenticator) could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    /// The HMAC secret is shorter than the minimum.
    #[error("HMAC secret must be at least {min} bytes")]
    HmacSecretTooShort {
        /// The minimum length in bytes.
        min: usize,
    },
    /// The PEM text could not be parsed as a public key.
    #[error("the public key PEM could not be parsed")]
    InvalidPem,
    /// The PEM holds a private key; configure the public key instead.
    #[error("the PEM holds a private key; configure the public key")]
    PrivateKeyPem,
    /// The key is not RSA, EC P-256 or Ed25519.
    #[error("unsupported public key type (expected RSA, EC P-256 or Ed25519)")]
    UnsupportedKeyType,
    /// The JWKS URL is unusable. The URL itself is not quoted, as its query
    /// string may hold a secret.
    #[error("invalid JWKS URL: {reason}")]
    InvalidJwksUrl {
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The TLS client for JWKS fetches could not be configured.
    #[error("TLS setup for JWKS fetches failed: {0}")]
    Tls(#[from] rustls::Error),
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::errors::new_error;

    #[test]
    fn maps_jwt_errors() {
        let cases = [
            (ErrorKind::InvalidToken, InvalidToken::Malformed),
            (ErrorKind::InvalidSignature, InvalidToken::BadSignature),
            (
                ErrorKind::InvalidAlgorithm,
                InvalidToken::AlgorithmNotAllowed,
            ),
            (ErrorKind::ExpiredSignature, InvalidToken::Expired),
            (ErrorKind::ImmatureSignature, InvalidToken::NotYetValid),
            (ErrorKind::InvalidIssuer, InvalidToken::WrongIssuer),
            (ErrorKind::InvalidAudience, InvalidToken::WrongAudience),
            (
                ErrorKind::MissingRequiredClaim("exp".into()),
                InvalidToken::MissingExpiry,
            ),
            (
                ErrorKind::MissingRequiredClaim("sub".into()),
                InvalidToken::MissingSubject,
            ),
            (
                ErrorKind::MissingRequiredClaim("iss".into()),
                InvalidToken::WrongIssuer,
            ),
            (
                ErrorKind::MissingRequiredClaim("aud".into()),
                InvalidToken::WrongAudience,
            ),
            (
                ErrorKind::InvalidClaimFormat("nbf".into()),
                InvalidToken::Malformed,
            ),
        ];
        for (kind, want) in cases {
            assert_eq!(from_jwt_error(&new_error(kind)), want);
        }
    }

    #[test]
    fn names_are_distinct() {
        let all = [
            InvalidToken::Malformed,
            InvalidToken::BadSignature,
            InvalidToken::AlgorithmNotAllowed,
            InvalidToken::Expired,
            InvalidToken::NotYetValid,
            InvalidToken::WrongIssuer,
            InvalidToken::WrongAudience,
            InvalidToken::UnknownKey,
            InvalidToken::MissingSubject,
            InvalidToken::BadSubject,
            InvalidToken::MissingExpiry,
            InvalidToken::ExpiryTooFar,
            InvalidToken::BadCapabilities,
        ];
        let names: std::collections::HashSet<_> = all.iter().map(|e| e.as_str()).collect();
        assert_eq!(names.len(), all.len());
    }
}
