//! Claims and tokens for tests.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

/// The HMAC secret [`TestHub`](crate::TestHub) verifies with. Test use only.
pub const SECRET: &[u8] = b"plexus-test-secret-not-for-production-0123456789";

/// Now, in Unix seconds.
pub fn now() -> i64 {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    i64::try_from(secs).expect("the clock is before year 292 billion")
}

/// Claims for `sub` with these capability patterns, issued now and valid
/// for an hour. Adjust fields (`exp`, `nbf`, `iss`, `aud`) before signing.
pub fn claims(sub: &str, subscribe: &[&str], publish: &[&str], presence: bool) -> Value {
    json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "plexus": { "sub": subscribe, "pub": publish, "presence": presence },
    })
}

/// Signs `claims` with an HMAC `alg` and `secret`.
pub fn sign(claims: &Value, alg: Algorithm, secret: &[u8]) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, &EncodingKey::from_secret(secret))
        .expect("test claims sign")
}

/// A token for `sub` allowed everything under `>` (presence too), valid
/// for an hour, signed with [`SECRET`].
pub fn token(sub: &str) -> String {
    sign(&claims(sub, &[">"], &[">"], true), Algorithm::HS256, SECRET)
}

/// Like [`token`], expiring `secs` seconds from now (negative: already
/// expired).
pub fn token_expiring_in(sub: &str, secs: i64) -> String {
    let mut c = claims(sub, &[">"], &[">"], true);
    c["exp"] = json!(now() + secs);
    sign(&c, Algorithm::HS256, SECRET)
}

/// An unsigned token with header `{"alg":"none","typ":"JWT"}`.
pub fn alg_none(claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}
