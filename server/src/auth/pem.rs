//! PEM public keys: loaded once at start, algorithm pinned from the key
//! type.

use jsonwebtoken::{Algorithm, DecodingKey};

use super::error::AuthSetupError;
use super::jwks::check_key_shape;

/// Loads a PEM public key and pins its algorithm from the key type.
pub(crate) fn load_public_pem(pem: &[u8]) -> Result<(DecodingKey, Algorithm), AuthSetupError> {
    match pem_label(pem) {
        Some("PUBLIC KEY" | "RSA PUBLIC KEY") => {}
        Some(label) if label.contains("PRIVATE KEY") => return Err(AuthSetupError::PrivateKeyPem),
        Some(_) => return Err(AuthSetupError::UnsupportedKeyType),
        None => return Err(AuthSetupError::InvalidPem),
    }
    // Each constructor accepts only its own key type.
    let (key, alg) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        (key, Algorithm::RS256)
    } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        // An uncompressed (65 bytes) or compressed (33 bytes) SEC1 point is
        // P-256; other lengths are other curves.
        let p256 = match key.as_bytes() {
            [0x04, rest @ ..] => rest.len() == 64,
            [0x02 | 0x03, rest @ ..] => rest.len() == 32,
            _ => false,
        };
        if !p256 {
            return Err(AuthSetupError::UnsupportedKeyType);
        }
        (key, Algorithm::ES256)
    } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        (key, Algorithm::EdDSA)
    } else {
        return Err(AuthSetupError::UnsupportedKeyType);
    };
    check_key_shape(&key, alg).map_err(|_| AuthSetupError::InvalidPem)?;
    Ok((key, alg))
}

/// The label of the first PEM block (`PUBLIC KEY` in
/// `-----BEGIN PUBLIC KEY-----`).
pub(crate) fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_labels() {
        assert_eq!(
            pem_label(b"-----BEGIN PUBLIC KEY-----\n"),
            Some("PUBLIC KEY")
        );
        assert_eq!(
            pem_label(b"junk\n-----BEGIN RSA PUBLIC KEY-----"),
            Some("RSA PUBLIC KEY")
        );
        assert_eq!(pem_label(b"-----BEGIN PUBLIC KEY"), None);
        assert_eq!(pem_label(&[0xff, 0xfe]), None);
    }
}
