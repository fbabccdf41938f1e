//! Authentication settings: where verification keys come from and how
//! strictly claims are checked.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Default clock-skew allowance applied to `exp` and `nbf`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

/// Largest leeway honoured; larger values are clamped to it.
pub const MAX_LEEWAY: Duration = Duration::from_secs(3600);

/// Default interval between background JWKS refreshes.
pub const DEFAULT_JWKS_REFRESH: Duration = Duration::from_secs(300);

/// Shortest background JWKS refresh interval; shorter values are raised to it.
pub const MIN_JWKS_REFRESH: Duration = Duration::from_secs(1);

/// Default time limit for one JWKS fetch (connect, headers and body).
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Shortest HMAC secret accepted, in bytes (256 bits).
pub const MIN_HMAC_SECRET_LEN: usize = 32;

/// How the hub authenticates clients.
///
/// Build one with [`AuthSettings::new`], which fills in the documented
/// defaults, then adjust the public fields.
#[derive(Clone, Debug)]
pub struct AuthSettings {
    /// Where the verification key(s) come from.
    pub key: KeySource,
    /// When set, tokens must carry this `iss`.
    pub issuer: Option<String>,
    /// When set, tokens must carry this value in `aud`. When unset, `aud` is
    /// not checked at all (tokens that carry one are still accepted).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default
    /// [`DEFAULT_LEEWAY`], at most [`MAX_LEEWAY`]; whole seconds are used).
    pub leeway: Duration,
    /// Background JWKS refresh interval (default [`DEFAULT_JWKS_REFRESH`],
    /// at least [`MIN_JWKS_REFRESH`]). Ignored for other key sources.
    pub jwks_refresh: Duration,
    /// Time limit for one JWKS fetch (default [`DEFAULT_JWKS_TIMEOUT`]).
    /// Ignored for other key sources.
    pub jwks_timeout: Duration,
}

impl AuthSettings {
    /// Settings for `key` with every other field at its default: no issuer
    /// or audience check, 5 s leeway, JWKS refreshed every 300 s with a 5 s
    /// fetch timeout.
    pub fn new(key: KeySource) -> AuthSettings {
        AuthSettings {
            key,
            issuer: None,
            audience: None,
            leeway: DEFAULT_LEEWAY,
            jwks_refresh: DEFAULT_JWKS_REFRESH,
            jwks_timeout: DEFAULT_JWKS_TIMEOUT,
        }
    }
}

/// Where verification keys come from.
///
/// Each source pins the accepted algorithm(s); the `alg` named in a token's
/// header is compared against the pin and never used to choose one.
#[derive(Clone)]
pub enum KeySource {
    /// A shared secret (at least [`MIN_HMAC_SECRET_LEN`] bytes); only `alg`
    /// is accepted.
    Hmac {
        /// The secret. Never logged; `Debug` prints it redacted.
        secret: Vec<u8>,
        /// The one accepted HMAC algorithm.
        alg: HmacAlg,
    },
    /// One PEM public key (`PUBLIC KEY` or `RSA PUBLIC KEY`). The algorithm
    /// is pinned from the key type: RSA → RS256, EC P-256 → ES256,
    /// Ed25519 → EdDSA. Private keys and other curves are refused.
    PublicKeyPem {
        /// The PEM text.
        pem: Vec<u8>,
    },
    /// A JSON Web Key Set fetched over `http://` or `https://`. Tokens name
    /// their key with the `kid` header; each key's algorithm is pinned from
    /// its `alg`, or from its type when `alg` is absent (RSA → RS256,
    /// EC P-256 → ES256, EC P-384 → ES384, OKP Ed25519 → EdDSA).
    Jwks {
        /// The JWKS URL. Its query string and user info are never logged.
        url: String,
    },
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::Hmac { alg, .. } => f
                .debug_struct("Hmac")
                .field("secret", &"[redacted]")
                .field("alg", alg)
                .finish(),
            KeySource::PublicKeyPem { pem } => f
                .debug_struct("PublicKeyPem")
                .field("pem_len", &pem.len())
                .finish(),
            KeySource::Jwks { url } => f
                .debug_struct("Jwks")
                .field("url", &redact_url(url))
                .finish(),
        }
    }
}

/// `url` without its query string, fragment and user info, for logs.
pub(crate) fn redact_url(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// An HMAC algorithm for [`KeySource::Hmac`].
///
/// Spelled as in JWS (`"HS256"`) by `Display`, `FromStr` and serde.
// The variant names mirror the JWS algorithm names on purpose.
#[allow(clippy::upper_case_acronyms)]
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum HmacAlg {
    /// HMAC with SHA-256 (the default).
    #[default]
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
}

impl HmacAlg {
    /// The JWS name (`"HS256"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            HmacAlg::HS256 => "HS256",
            HmacAlg::HS384 => "HS384",
            HmacAlg::HS512 => "HS512",
        }
    }

    /// The matching `jsonwebtoken` algorithm.
    pub(crate) fn algorithm(self) -> jsonwebtoken::Algorithm {
        match self {
            HmacAlg::HS256 => jsonwebtoken::Algorithm::HS256,
            HmacAlg::HS384 => jsonwebtoken::Algorithm::HS384,
            HmacAlg::HS512 => jsonwebtoken::Algorithm::HS512,
        }
    }
}

impl fmt::Display for HmacAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text named no HMAC algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown HMAC algorithm (expected HS256, HS384 or HS512)")]
pub struct UnknownHmacAlg;

impl FromStr for HmacAlg {
    type Err = UnknownHmacAlg;

    fn from_str(s: &str) -> Result<HmacAlg, UnknownHmacAlg> {
        match s {
            "HS256" => Ok(HmacAlg::HS256),
            "HS384" => Ok(HmacAlg::HS384),
            "HS512" => Ok(HmacAlg::HS512),
            _ => Err(UnknownHmacAlg),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_secrets() {
        let s = AuthSettings::new(KeySource::Hmac {
            secret: b"super-secret-value-that-must-not-leak".to_vec(),
            alg: HmacAlg::HS256,
        });
        let text = format!("{s:?}");
        assert!(!text.contains("super-secret"), "{text}");
        assert!(text.contains("[redacted]"));
        let j = KeySource::Jwks {
            url: "https://user:pw@idp.example/keys.json?api_key=XYZ#frag".into(),
        };
        let text = format!("{j:?}");
        assert!(text.contains("https://idp.example/keys.json"), "{text}");
        assert!(!text.contains("XYZ") && !text.contains("pw"), "{text}");
    }

    #[test]
    fn redact_url_forms() {
        assert_eq!(redact_url("http://h:1/a?b"), "http://h:1/a");
        assert_eq!(redact_url("http://h"), "http://h");
        assert_eq!(redact_url("https://u@h/x"), "https://h/x");
        assert_eq!(redact_url("nonsense?q"), "nonsense");
    }

    #[test]
    fn hmac_alg_names() {
        for alg in [HmacAlg::HS256, HmacAlg::HS384, HmacAlg::HS512] {
            assert_eq!(alg.as_str().parse::<HmacAlg>(), Ok(alg));
            assert_eq!(alg.to_string(), alg.as_str());
        }
        assert_eq!("hs256".parse::<HmacAlg>(), Err(UnknownHmacAlg));
        assert_eq!(
            AuthSettings::new(KeySource::Jwks { url: String::new() }).leeway,
            DEFAULT_LEEWAY
        );
    }
}
