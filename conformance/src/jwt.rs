//! JSON Web Tokens built by hand (RFC 7515 compact serialization), good and
//! deliberately bad: HMAC-signed tokens for any claims, and the defects the
//! token cases need (no signature, another algorithm, a broken signature,
//! malformed parts).

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde_json::Value as Json;
use sha2::{Sha256, Sha384, Sha512};

/// An HMAC JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HsAlg {
    /// HMAC-SHA256.
    HS256,
    /// HMAC-SHA384.
    HS384,
    /// HMAC-SHA512.
    HS512,
}

impl HsAlg {
    /// The `alg` header value.
    pub fn name(self) -> &'static str {
        match self {
            HsAlg::HS256 => "HS256",
            HsAlg::HS384 => "HS384",
            HsAlg::HS512 => "HS512",
        }
    }
}

/// base64url without padding.
pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The HMAC of `input` under `key`.
pub fn hmac(alg: HsAlg, key: &[u8], input: &[u8]) -> Vec<u8> {
    // `new_from_slice` accepts keys of any length for HMAC; the error
    // branch cannot be taken, and an empty MAC would only fail the case.
    macro_rules! mac {
        ($h:ty) => {
            match <Hmac<$h>>::new_from_slice(key) {
                Ok(mut m) => {
                    m.update(input);
                    m.finalize().into_bytes().to_vec()
                }
                Err(_) => Vec::new(),
            }
        };
    }
    match alg {
        HsAlg::HS256 => mac!(Sha256),
        HsAlg::HS384 => mac!(Sha384),
        HsAlg::HS512 => mac!(Sha512),
    }
}

/// The header `{"alg": alg, "typ": "JWT"}`.
pub fn header(alg: &str) -> Json {
    serde_json::json!({"alg": alg, "typ": "JWT"})
}

/// `b64(header).b64(claims)`: the signing input.
pub fn signing_input(header: &Json, claims: &Json) -> String {
    format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    )
}

/// A token with any header, signed with `alg` and `key` over its actual
/// signing input (so the header may lie about the algorithm).
pub fn sign_with_header(header: &Json, claims: &Json, alg: HsAlg, key: &[u8]) -> String {
    let input = signing_input(header, claims);
    let sig = hmac(alg, key, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

/// An HMAC-signed token with the standard header for `alg`.
pub fn sign(claims: &Json, alg: HsAlg, key: &[u8]) -> String {
    sign_with_header(&header(alg.name()), claims, alg, key)
}

/// The three parts of a compact token, if it has three.
pub fn parts(token: &str) -> Option<(&str, &str, &str)> {
    let mut it = token.splitn(3, '.');
    let (h, p, s) = (it.next()?, it.next()?, it.next()?);
    (!s.contains('.')).then_some((h, p, s))
}

/// The token's header and claims, decoded (no verification).
pub fn decode_unverified(token: &str) -> Option<(Json, Json)> {
    let (h, p, _) = parts(token)?;
    let h = URL_SAFE_NO_PAD.decode(h).ok()?;
    let p = URL_SAFE_NO_PAD.decode(p).ok()?;
    Some((
        serde_json::from_slice(&h).ok()?,
        serde_json::from_slice(&p).ok()?,
    ))
}

/// The same payload and signature under another header (the signature no
/// longer matches, unless the server ignores the header).
pub fn replace_header(token: &str, header: &Json) -> Option<String> {
    let (_, p, s) = parts(token)?;
    Some(format!("{}.{p}.{s}", b64(header.to_string().as_bytes())))
}

/// An unsigned token: header `alg: none`, the payload, an empty signature.
pub fn unsigned(token: &str) -> Option<String> {
    let (_, p, _) = parts(token)?;
    Some(format!(
        "{}.{p}.",
        b64(serde_json::json!({"alg": "none", "typ": "JWT"})
            .to_string()
            .as_bytes())
    ))
}

/// The token with one character of its signature changed.
pub fn corrupt_signature(token: &str) -> Option<String> {
    let (h, p, s) = parts(token)?;
    let mut sig: Vec<char> = s.chars().collect();
    let first = sig.first_mut()?;
    *first = if *first == 'A' { 'B' } else { 'A' };
    Some(format!("{h}.{p}.{}", sig.into_iter().collect::<String>()))
}

/// How a secret file's content is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SecretEncoding {
    /// base64url (unpadded) if the content decodes as such to at least 32
    /// bytes — the format of the hub's development key file
    /// (`data/dev-signing-key`) — otherwise the raw bytes.
    #[default]
    Auto,
    /// The file's bytes, trailing newline removed.
    Raw,
    /// base64url, with or without padding.
    Base64Url,
}

/// Reads an HMAC secret from a file.
pub fn read_secret(path: &Path, encoding: SecretEncoding) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&bytes);
    let trimmed = text.trim();
    let b64 = || {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(trimmed.trim_end_matches('='))
            .ok()
    };
    match encoding {
        SecretEncoding::Raw => {
            let mut b = bytes.clone();
            while b.last().is_some_and(|c| *c == b'\n' || *c == b'\r') {
                b.pop();
            }
            Ok(b)
        }
        SecretEncoding::Base64Url => {
            b64().ok_or_else(|| format!("{}: not base64url", path.display()))
        }
        SecretEncoding::Auto => Ok(match b64() {
            Some(k) if k.len() >= 32 => k,
            _ => trimmed.as_bytes().to_vec(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hs256_signs_its_signing_input() {
        // docs/protocol.md §9.3: HS256 with key `demo-secret-do-not-use`.
        let claims = serde_json::json!({
            "sub": "alice", "iat": 1767225600u64, "exp": 1767229200u64,
            "plexus": {"sub": ["chat.>"], "pub": ["chat.>"], "presence": true}
        });
        // serde_json keeps insertion order only with preserve_order; the
        // signature is checked over whatever order it produced.
        let t = sign(&claims, HsAlg::HS256, b"demo-secret-do-not-use");
        let (h, c) = decode_unverified(&t).unwrap();
        assert_eq!(h["alg"], "HS256");
        assert_eq!(c["sub"], "alice");
        let (hh, pp, ss) = parts(&t).unwrap();
        let sig = hmac(
            HsAlg::HS256,
            b"demo-secret-do-not-use",
            format!("{hh}.{pp}").as_bytes(),
        );
        assert_eq!(ss, b64(&sig));
    }

    #[test]
    fn defects_change_what_they_say() {
        let t = sign(&serde_json::json!({"sub": "a"}), HsAlg::HS256, b"k");
        assert!(unsigned(&t).unwrap().ends_with('.'));
        assert_ne!(corrupt_signature(&t).unwrap(), t);
        let (h, _) = decode_unverified(&unsigned(&t).unwrap()).unwrap();
        assert_eq!(h["alg"], "none");
    }
}
