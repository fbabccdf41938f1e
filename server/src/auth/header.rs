//! The JOSE header: read before the signature is checked, never trusted
//! to choose an algorithm.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use super::error::InvalidToken;

/// The parts of the JOSE header Plexus reads.
#[derive(serde::Deserialize)]
pub(crate) struct Header {
    pub(crate) alg: String,
    #[serde(default)]
    pub(crate) kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Reads the header without trusting it: the signature is checked later.
pub(crate) fn parse_header(token: &str) -> Result<Header, InvalidToken> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(InvalidToken::Malformed);
    };
    let json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| InvalidToken::Malformed)?;
    let header: Header = serde_json::from_slice(&json).map_err(|_| InvalidToken::Malformed)?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; we
    // understand none.
    if header.crit.is_some() {
        return Err(InvalidToken::Malformed);
    }
    Ok(header)
}

pub(crate) fn alg_name(alg: Algorithm) -> &'static str {
    match alg {
        Algorithm::HS256 => "HS256",
        Algorithm::HS384 => "HS384",
        Algorithm::HS512 => "HS512",
        Algorithm::ES256 => "ES256",
        Algorithm::ES384 => "ES384",
        Algorithm::RS256 => "RS256",
        Algorithm::RS384 => "RS384",
        Algorithm::RS512 => "RS512",
        Algorithm::PS256 => "PS256",
        Algorithm::PS384 => "PS384",
        Algorithm::PS512 => "PS512",
        Algorithm::EdDSA => "EdDSA",
    }
}

/// The asymmetric algorithm named `name`; HMAC, `none` and unknown names
/// are never accepted from a JWKS-verified token.
pub(crate) fn asymmetric_alg(name: &str) -> Option<Algorithm> {
    [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ]
    .into_iter()
    .find(|alg| alg_name(*alg) == name)
}
