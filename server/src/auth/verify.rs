//! Token verification: [`Authenticator`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::watch;

use super::capabilities::Principal;
use super::claims::Claims;
use super::error::{AuthError, AuthSetupError, InvalidToken, from_jwt_error};
use super::jwks::{ErrorChain, JwksCache, JwksError, check_key_shape};
use super::settings::{AuthSettings, KeySource, MAX_LEEWAY, MIN_HMAC_SECRET_LEN, MIN_JWKS_REFRESH};

/// Longest token accepted, in bytes; longer ones are
/// [`InvalidToken::Malformed`] without being decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Verifies tokens and turns them into [`Principal`]s.
///
/// Cheap to clone (one `Arc`); `Send + Sync`.
///
/// Every key source pins the algorithm: the token header's `alg` must equal
/// the pinned one or the token is [`InvalidToken::AlgorithmNotAllowed`].
/// `"none"` is refused the same way: Plexus reads the header itself, so
/// `jsonwebtoken`'s inability to parse `"none"` never turns it into
/// [`InvalidToken::Malformed`].
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    keys: Keys,
    /// Claim checks shared by every algorithm; `algorithms` is set per call.
    validation: Validation,
    jwks_refresh: Duration,
    /// Dropped with the last clone, which ends background refresh loops.
    shutdown: watch::Sender<()>,
}

enum Keys {
    Static { key: DecodingKey, alg: Algorithm },
    Jwks(Box<JwksCache>),
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("Authenticator");
        match &self.inner.keys {
            Keys::Static { alg, .. } => d.field("alg", alg),
            Keys::Jwks(cache) => d.field("jwks", cache),
        };
        d.finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the keys. For [`KeySource::Jwks`] this only checks the URL and
    /// builds the HTTP client: keys are fetched by the first
    /// [`verify`](Authenticator::verify) or by
    /// [`spawn_jwks_refresh`](Authenticator::spawn_jwks_refresh).
    pub fn new(settings: AuthSettings) -> Result<Authenticator, AuthSetupError> {
        let keys = match &settings.key {
            KeySource::Hmac { secret, alg } => {
                if secret.len() < MIN_HMAC_SECRET_LEN {
                    return Err(AuthSetupError::HmacSecretTooShort {
                        min: MIN_HMAC_SECRET_LEN,
                    });
                }
                Keys::Static {
                    key: DecodingKey::from_secret(secret),
                    alg: alg.algorithm(),
                }
            }
            KeySource::PublicKeyPem { pem } => {
                let (key, alg) = load_public_pem(pem)?;
                Keys::Static { key, alg }
            }
            KeySource::Jwks { url } => {
                Keys::Jwks(Box::new(JwksCache::new(url, settings.jwks_timeout)?))
            }
        };
        Ok(Authenticator::from_parts(keys, &settings))
    }

    fn from_parts(keys: Keys, settings: &AuthSettings) -> Authenticator {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = settings.leeway.min(MAX_LEEWAY).as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        match &settings.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &settings.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.validate_aud = true;
                required.push("aud");
            }
            None => {
                validation.aud = None;
                validation.validate_aud = false;
            }
        }
        validation.set_required_spec_claims(&required);
        let (shutdown, _) = watch::channel(());
        Authenticator {
            inner: Arc::new(Inner {
                keys,
                validation,
                jwks_refresh: settings.jwks_refresh.max(MIN_JWKS_REFRESH),
                shutdown,
            }),
        }
    }

    /// Verifies `token` (compact JWS) and returns who it names and what it
    /// allows.
    ///
    /// Checks, in order: size, header (`alg` pinned, no `crit`), key (by
    /// `kid` for JWKS), signature, `exp` (required) and `nbf` with leeway,
    /// `iss`/`aud` when configured, `sub`, then the capabilities claim.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(InvalidToken::Malformed.into());
        }
        let header = parse_header(token)?;
        let jwk;
        let (key, alg) = match &self.inner.keys {
            Keys::Static { key, alg } => {
                if header.alg != alg_name(*alg) {
                    return Err(InvalidToken::AlgorithmNotAllowed.into());
                }
                (key, *alg)
            }
            Keys::Jwks(cache) => {
                let alg = asymmetric_alg(&header.alg).ok_or(InvalidToken::AlgorithmNotAllowed)?;
                let kid = header.kid.as_deref().ok_or(InvalidToken::UnknownKey)?;
                jwk = cache.key_for(kid).await?;
                if jwk.alg != alg {
                    return Err(InvalidToken::AlgorithmNotAllowed.into());
                }
                (&jwk.key, alg)
            }
        };
        let mut validation = self.inner.validation.clone();
        validation.algorithms = vec![alg];
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation)
            .map_err(|e| from_jwt_error(&e))?;
        let claims = Claims::from_payload(data.claims)?;
        let caps = claims.capabilities()?;
        Ok(Principal {
            user: Arc::from(claims.sub),
            caps: Arc::new(caps),
            expires_at: Some(claims.exp),
        })
    }

    /// Fetches the JWKS now, replacing the cached keys on success; on
    /// failure the cached keys stay. Returns the number of usable keys, or
    /// `Ok(0)` when the key source is not a JWKS.
    pub async fn refresh_keys(&self) -> Result<usize, JwksError> {
        match &self.inner.keys {
            Keys::Jwks(cache) => cache.refresh().await,
            Keys::Static { .. } => Ok(0),
        }
    }

    /// Starts the background JWKS refresh loop when the key source is a
    /// JWKS (`None` otherwise). The loop fetches at once, then every
    /// `jwks_refresh`; a failed fetch keeps the cached keys and logs a
    /// warning. It holds only a weak reference and ends when the last
    /// clone of this `Authenticator` is dropped.
    ///
    /// Must be called inside a tokio runtime. Call it once: each call
    /// starts another loop.
    pub fn spawn_jwks_refresh(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !matches!(self.inner.keys, Keys::Jwks(_)) {
            return None;
        }
        let weak = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.subscribe();
        Some(tokio::spawn(refresh_loop(
            weak,
            shutdown,
            self.inner.jwks_refresh,
        )))
    }

    #[cfg(test)]
    fn jwks_mut(&mut self) -> Option<&mut JwksCache> {
        match &mut Arc::get_mut(&mut self.inner)?.keys {
            Keys::Jwks(cache) => Some(cache),
            Keys::Static { .. } => None,
        }
    }
}

async fn refresh_loop(weak: Weak<Inner>, mut shutdown: watch::Receiver<()>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            // Only an error can come: nothing is ever sent.
            _ = shutdown.changed() => break,
        }
        let Some(inner) = weak.upgrade() else { break };
        let Keys::Jwks(cache) = &inner.keys else {
            break;
        };
        if let Err(e) = cache.refresh().await {
            tracing::warn!(
                url = %cache.log_url(),
                error = %ErrorChain(&e),
                "JWKS refresh failed; keeping the cached keys",
            );
        }
    }
}

/// The parts of the JOSE header Plexus reads.
#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Reads the header without trusting it: the signature is checked later.
fn parse_header(token: &str) -> Result<Header, InvalidToken> {
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

fn alg_name(alg: Algorithm) -> &'static str {
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
fn asymmetric_alg(name: &str) -> Option<Algorithm> {
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

/// Loads a PEM public key and pins its algorithm from the key type.
fn load_public_pem(pem: &[u8]) -> Result<(DecodingKey, Algorithm), AuthSetupError> {
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
fn pem_label(pem: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(pem).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(rest[..end].trim())
}

#[cfg(test)]
mod tests {
    use super::super::jwks::test_server::{JwksServer, Mode};
    use super::super::settings::HmacAlg;
    use super::*;
    use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode, get_current_timestamp};
    use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern, Topic};
    use serde_json::{Value, json};
    use std::time::Instant;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    const RSA_PRIVATE: &[u8] = include_bytes!("testdata/test-only-rsa-private.pem");
    const RSA_PUBLIC: &[u8] = include_bytes!("testdata/test-only-rsa-public.pem");
    const EC_PRIVATE: &[u8] = include_bytes!("testdata/test-only-ec-p256-private.pem");
    const EC_PUBLIC: &[u8] = include_bytes!("testdata/test-only-ec-p256-public.pem");
    const EC2_PRIVATE: &[u8] = include_bytes!("testdata/test-only-ec-p256-second-private.pem");
    const EC_P384_PUBLIC: &[u8] = include_bytes!("testdata/test-only-ec-p384-public.pem");
    const ED_PRIVATE: &[u8] = include_bytes!("testdata/test-only-ed25519-private.pem");
    const ED_PUBLIC: &[u8] = include_bytes!("testdata/test-only-ed25519-public.pem");

    fn now() -> u64 {
        get_current_timestamp()
    }

    fn hmac(alg: HmacAlg) -> AuthSettings {
        AuthSettings::new(KeySource::Hmac {
            secret: SECRET.to_vec(),
            alg,
        })
    }

    fn auth(settings: AuthSettings) -> Authenticator {
        Authenticator::new(settings).unwrap()
    }

    fn claims() -> Value {
        json!({
            "sub": "alice",
            "exp": now() + 600,
            "plexus": {"sub": ["chat.>"], "pub": ["chat.room1"], "presence": true},
        })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = JwtHeader::new(alg);
        header.kid = kid.map(str::to_owned);
        encode(&header, claims, key).unwrap()
    }

    fn hs(alg: Algorithm, claims: &Value) -> String {
        sign(alg, None, &EncodingKey::from_secret(SECRET), claims)
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn invalid(r: Result<Principal, AuthError>) -> InvalidToken {
        match r {
            Err(AuthError::Invalid(e)) => e,
            other => panic!("expected an invalid token, got {other:?}"),
        }
    }

    fn rsa_key() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()
    }
    fn ec_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
    }
    fn ec2_key() -> EncodingKey {
        EncodingKey::from_ec_pem(EC2_PRIVATE).unwrap()
    }
    fn ed_key() -> EncodingKey {
        EncodingKey::from_ed_pem(ED_PRIVATE).unwrap()
    }

    #[tokio::test]
    async fn valid_hs256_token() {
        let a = auth(hmac(HmacAlg::HS256));
        let p = a.verify(&hs(Algorithm::HS256, &claims())).await.unwrap();
        assert_eq!(&*p.user, "alice");
        assert!(p.expires_at.unwrap() >= now() + 590);
        let pat = |s| Pattern::parse(s, MAX_TOPIC_LEN).unwrap();
        let topic = |s| Topic::parse(s, MAX_TOPIC_LEN).unwrap();
        assert!(p.caps.can_subscribe(&pat("chat.*")));
        assert!(p.caps.can_subscribe(&pat("chat.room1")));
        assert!(!p.caps.can_subscribe(&pat("news.x")));
        assert!(p.caps.can_publish(&topic("chat.room1")));
        assert!(!p.caps.can_publish(&topic("chat.room2")));
        assert!(p.caps.can_join_presence(&topic("chat.room2")));
    }

    #[tokio::test]
    async fn tokens_without_capabilities_allow_nothing() {
        let a = auth(hmac(HmacAlg::HS256));
        let p = a
            .verify(&hs(
                Algorithm::HS256,
                &json!({"sub": "bob", "exp": now() + 60}),
            ))
            .await
            .unwrap();
        assert_eq!(*p.caps, super::super::Capabilities::default());
        let bad = json!({"sub": "bob", "exp": now() + 60, "plexus": {"sub": ["chat.>.x"]}});
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &bad)).await),
            InvalidToken::BadCapabilities
        );
    }

    #[tokio::test]
    async fn hs384_and_hs512_are_pinned() {
        for (cfg, alg) in [
            (HmacAlg::HS384, Algorithm::HS384),
            (HmacAlg::HS512, Algorithm::HS512),
        ] {
            let a = auth(hmac(cfg));
            assert!(a.verify(&hs(alg, &claims())).await.is_ok());
            assert_eq!(
                invalid(a.verify(&hs(Algorithm::HS256, &claims())).await),
                InvalidToken::AlgorithmNotAllowed
            );
        }
    }

    #[tokio::test]
    async fn bad_signature() {
        let a = auth(hmac(HmacAlg::HS256));
        let other = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(b"another-secret-another-secret-xx"),
            &claims(),
        );
        assert_eq!(invalid(a.verify(&other).await), InvalidToken::BadSignature);

        // Same signature, tampered payload.
        let good = hs(Algorithm::HS256, &claims());
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut tampered = claims();
        tampered["sub"] = json!("mallory");
        let payload = b64(&tampered);
        parts[1] = &payload;
        assert_eq!(
            invalid(a.verify(&parts.join(".")).await),
            InvalidToken::BadSignature
        );
    }

    #[tokio::test]
    async fn wrong_algorithm() {
        let a = auth(hmac(HmacAlg::HS256));
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS512, &claims())).await),
            InvalidToken::AlgorithmNotAllowed
        );
        let rs = sign(Algorithm::RS256, None, &rsa_key(), &claims());
        assert_eq!(
            invalid(a.verify(&rs).await),
            InvalidToken::AlgorithmNotAllowed
        );

        // Key confusion: an HS256 token "signed" with the RSA public key
        // bytes must not pass an RSA configuration.
        let r = auth(AuthSettings::new(KeySource::PublicKeyPem {
            pem: RSA_PUBLIC.to_vec(),
        }));
        let confused = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC),
            &claims(),
        );
        assert_eq!(
            invalid(r.verify(&confused).await),
            InvalidToken::AlgorithmNotAllowed
        );
    }

    #[tokio::test]
    async fn alg_none_is_not_allowed() {
        let a = auth(hmac(HmacAlg::HS256));
        for header in [
            json!({"alg": "none", "typ": "JWT"}),
            json!({"alg": "None", "typ": "JWT"}),
            json!({"alg": "hs256"}),
        ] {
            let token = format!("{}.{}.", b64(&header), b64(&claims()));
            assert_eq!(
                invalid(a.verify(&token).await),
                InvalidToken::AlgorithmNotAllowed
            );
        }
    }

    #[tokio::test]
    async fn malformed_tokens() {
        let a = auth(hmac(HmacAlg::HS256));
        let good = hs(Algorithm::HS256, &claims());
        let crit = format!(
            "{}.{}",
            b64(&json!({"alg": "HS256", "crit": ["exp"], "exp": 1})),
            good.split_once('.').unwrap().1
        );
        for token in [
            String::new(),
            "a.b".into(),
            "a.b.c.d".into(),
            "!!.e30.".into(),
            format!("{}.e30.", URL_SAFE_NO_PAD.encode("not json")),
            format!("{good}!"),
            "x".repeat(MAX_TOKEN_LEN + 1),
            crit,
        ] {
            assert_eq!(
                invalid(a.verify(&token).await),
                InvalidToken::Malformed,
                "{token:.40}"
            );
        }
    }

    #[tokio::test]
    async fn expiry_and_not_before() {
        let a = auth(hmac(HmacAlg::HS256));
        let mut c = claims();
        c["exp"] = json!(now() - 60);
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::Expired
        );

        // Within the default 5 s leeway.
        c["exp"] = json!(now() - 2);
        assert!(a.verify(&hs(Algorithm::HS256, &c)).await.is_ok());

        let mut strict = hmac(HmacAlg::HS256);
        strict.leeway = Duration::ZERO;
        c["exp"] = json!(now() - 2);
        assert_eq!(
            invalid(auth(strict).verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::Expired
        );

        let mut c = claims();
        c["nbf"] = json!(now() + 120);
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::NotYetValid
        );
        c["nbf"] = json!(now() + 2);
        assert!(a.verify(&hs(Algorithm::HS256, &c)).await.is_ok());
        c["nbf"] = json!("soon");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::Malformed
        );
    }

    #[tokio::test]
    async fn missing_exp_and_sub() {
        let a = auth(hmac(HmacAlg::HS256));
        let mut c = claims();
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::MissingExpiry
        );
        c["exp"] = json!("tomorrow");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::MissingExpiry
        );

        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::MissingSubject
        );
        c["sub"] = json!("");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::MissingSubject
        );
        c["sub"] = json!("u".repeat(300));
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::BadSubject
        );
    }

    #[tokio::test]
    async fn issuer_and_audience() {
        let mut s = hmac(HmacAlg::HS256);
        s.issuer = Some("https://idp.example".into());
        s.audience = Some("plexus".into());
        let a = auth(s);
        let mut c = claims();
        c["iss"] = json!("https://idp.example");
        c["aud"] = json!(["other", "plexus"]);
        assert!(a.verify(&hs(Algorithm::HS256, &c)).await.is_ok());
        c["aud"] = json!("plexus");
        assert!(a.verify(&hs(Algorithm::HS256, &c)).await.is_ok());

        c["aud"] = json!("other");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::WrongAudience
        );
        c.as_object_mut().unwrap().remove("aud");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::WrongAudience
        );

        c["aud"] = json!("plexus");
        c["iss"] = json!("https://evil.example");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::WrongIssuer
        );
        c.as_object_mut().unwrap().remove("iss");
        assert_eq!(
            invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
            InvalidToken::WrongIssuer
        );

        // Without a configured audience, tokens that carry one still pass.
        let plain = auth(hmac(HmacAlg::HS256));
        c["aud"] = json!("anything");
        c["iss"] = json!("anyone");
        assert!(plain.verify(&hs(Algorithm::HS256, &c)).await.is_ok());
    }

    #[test]
    fn setup_errors() {
        let short = AuthSettings::new(KeySource::Hmac {
            secret: b"short".to_vec(),
            alg: HmacAlg::HS256,
        });
        assert!(matches!(
            Authenticator::new(short),
            Err(AuthSetupError::HmacSecretTooShort { min: 32 })
        ));
        let pem = |pem: &[u8]| {
            Authenticator::new(AuthSettings::new(KeySource::PublicKeyPem {
                pem: pem.to_vec(),
            }))
        };
        assert!(matches!(
            pem(RSA_PRIVATE),
            Err(AuthSetupError::PrivateKeyPem)
        ));
        assert!(matches!(
            pem(EC_P384_PUBLIC),
            Err(AuthSetupError::UnsupportedKeyType)
        ));
        assert!(matches!(pem(b"garbage"), Err(AuthSetupError::InvalidPem)));
        assert!(matches!(
            pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
            Err(AuthSetupError::UnsupportedKeyType)
        ));
        assert!(matches!(
            pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"),
            Err(AuthSetupError::UnsupportedKeyType)
        ));
        let a = pem(ED_PUBLIC).unwrap();
        assert!(format!("{a:?}").contains("EdDSA"));
    }

    #[tokio::test]
    async fn public_key_pems_pin_their_algorithm() {
        let cases = [
            (RSA_PUBLIC, Algorithm::RS256, rsa_key()),
            (EC_PUBLIC, Algorithm::ES256, ec_key()),
            (ED_PUBLIC, Algorithm::EdDSA, ed_key()),
        ];
        for (pem, alg, key) in cases {
            let a = auth(AuthSettings::new(KeySource::PublicKeyPem {
                pem: pem.to_vec(),
            }));
            let p = a.verify(&sign(alg, None, &key, &claims())).await.unwrap();
            assert_eq!(&*p.user, "alice");
            // Other algorithms with the same key type, and HMAC, are refused.
            let other = match alg {
                Algorithm::RS256 => sign(Algorithm::PS256, None, &key, &claims()),
                Algorithm::ES256 => sign(Algorithm::EdDSA, None, &ed_key(), &claims()),
                _ => sign(Algorithm::ES256, None, &ec_key(), &claims()),
            };
            assert_eq!(
                invalid(a.verify(&other).await),
                InvalidToken::AlgorithmNotAllowed
            );
            assert_eq!(
                invalid(a.verify(&hs(Algorithm::HS256, &claims())).await),
                InvalidToken::AlgorithmNotAllowed
            );
        }
        // Right algorithm, wrong key.
        let a = auth(AuthSettings::new(KeySource::PublicKeyPem {
            pem: EC_PUBLIC.to_vec(),
        }));
        let t = sign(Algorithm::ES256, None, &ec2_key(), &claims());
        assert_eq!(invalid(a.verify(&t).await), InvalidToken::BadSignature);
    }

    // ---- JWKS ------------------------------------------------------------

    fn jwk(kid: &str, alg: Algorithm) -> Value {
        let mut v = match alg {
            Algorithm::RS256 => serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_key(), alg).unwrap(),
            )
            .unwrap(),
            Algorithm::ES256 => serde_json::to_value(
                jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_key(), alg).unwrap(),
            )
            .unwrap(),
            _ => {
                let x =
                    URL_SAFE_NO_PAD.encode(DecodingKey::from_ed_pem(ED_PUBLIC).unwrap().as_bytes());
                json!({"kty": "OKP", "crv": "Ed25519", "x": x})
            }
        };
        v["kid"] = json!(kid);
        // Exercise alg inference from kty/crv: drop `alg`.
        v.as_object_mut().unwrap().remove("alg");
        v
    }

    fn ec2_jwk(kid: &str) -> Value {
        let mut v = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&ec2_key(), Algorithm::ES256).unwrap(),
        )
        .unwrap();
        v["kid"] = json!(kid);
        v
    }

    fn set(keys: &[Value]) -> String {
        json!({ "keys": keys }).to_string()
    }

    fn jwks_settings(url: String) -> AuthSettings {
        let mut s = AuthSettings::new(KeySource::Jwks { url });
        s.jwks_timeout = Duration::from_millis(500);
        s
    }

    #[tokio::test]
    async fn jwks_selects_keys_by_kid() {
        let server = JwksServer::start(set(&[
            jwk("ec", Algorithm::ES256),
            jwk("rsa", Algorithm::RS256),
            jwk("ed", Algorithm::EdDSA),
        ]))
        .await;
        let a = auth(jwks_settings(server.url()));
        let c = claims();
        for (kid, alg, key) in [
            ("ec", Algorithm::ES256, ec_key()),
            ("rsa", Algorithm::RS256, rsa_key()),
            ("ed", Algorithm::EdDSA, ed_key()),
        ] {
            let p = a.verify(&sign(alg, Some(kid), &key, &c)).await.unwrap();
            assert_eq!(&*p.user, "alice", "{kid}");
        }
        assert_eq!(server.hits(), 1, "one fetch serves every kid");

        // An EC token that names the RSA key: the key's pinned alg wins.
        let t = sign(Algorithm::ES256, Some("rsa"), &ec_key(), &c);
        assert_eq!(
            invalid(a.verify(&t).await),
            InvalidToken::AlgorithmNotAllowed
        );
        // Right alg, other key under the same kid.
        let t = sign(Algorithm::ES256, Some("ec"), &ec2_key(), &c);
        assert_eq!(invalid(a.verify(&t).await), InvalidToken::BadSignature);
        // No kid.
        let t = sign(Algorithm::ES256, None, &ec_key(), &c);
        assert_eq!(invalid(a.verify(&t).await), InvalidToken::UnknownKey);
        // HMAC and none are never accepted with a JWKS.
        let t = sign(
            Algorithm::HS256,
            Some("ec"),
            &EncodingKey::from_secret(SECRET),
            &c,
        );
        assert_eq!(
            invalid(a.verify(&t).await),
            InvalidToken::AlgorithmNotAllowed
        );
        let t = format!("{}.{}.", b64(&json!({"alg": "none", "kid": "ec"})), b64(&c));
        assert_eq!(
            invalid(a.verify(&t).await),
            InvalidToken::AlgorithmNotAllowed
        );
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn jwks_first_fetch_is_single_flight() {
        let server = JwksServer::start(set(&[jwk("ec", Algorithm::ES256)])).await;
        let a = auth(jwks_settings(server.url()));
        let token = sign(Algorithm::ES256, Some("ec"), &ec_key(), &claims());
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (a, token) = (a.clone(), token.clone());
            tasks.push(tokio::spawn(async move { a.verify(&token).await }));
        }
        for t in tasks {
            assert!(t.await.unwrap().is_ok());
        }
        assert_eq!(server.hits(), 1);
    }

    #[tokio::test]
    async fn jwks_rotation() {
        let server = JwksServer::start(set(&[jwk("old", Algorithm::ES256)])).await;
        let a = auth(jwks_settings(server.url()));
        let old = sign(Algorithm::ES256, Some("old"), &ec_key(), &claims());
        let new = sign(Algorithm::ES256, Some("new"), &ec2_key(), &claims());
        assert!(a.verify(&old).await.is_ok());

        server.set_body(set(&[ec2_jwk("new")]));
        assert_eq!(a.refresh_keys().await.unwrap(), 1);
        assert!(a.verify(&new).await.is_ok());
        assert_eq!(invalid(a.verify(&old).await), InvalidToken::UnknownKey);
    }

    #[tokio::test]
    async fn jwks_unknown_kid_refresh_has_a_cooldown() {
        let server = JwksServer::start(set(&[jwk("a", Algorithm::ES256)])).await;
        let a = auth(jwks_settings(server.url()));
        assert!(
            a.verify(&sign(Algorithm::ES256, Some("a"), &ec_key(), &claims()))
                .await
                .is_ok()
        );
        assert_eq!(server.hits(), 1);

        // A new key appears upstream: the first unknown kid forces a fetch.
        server.set_body(set(&[jwk("a", Algorithm::ES256), ec2_jwk("b")]));
        let b = sign(Algorithm::ES256, Some("b"), &ec2_key(), &claims());
        assert!(a.verify(&b).await.is_ok());
        assert_eq!(server.hits(), 2);

        // Within the cooldown, unknown kids do not fetch again.
        for kid in ["x", "y", "z"] {
            let t = sign(Algorithm::ES256, Some(kid), &ec_key(), &claims());
            assert_eq!(invalid(a.verify(&t).await), InvalidToken::UnknownKey);
        }
        assert_eq!(server.hits(), 2);
    }

    #[tokio::test]
    async fn jwks_unknown_kid_after_cooldown_fetches_again() {
        let server = JwksServer::start(set(&[jwk("a", Algorithm::ES256)])).await;
        let mut a = auth(jwks_settings(server.url()));
        a.jwks_mut()
            .unwrap()
            .set_cooldown(Duration::from_millis(50));
        let x = sign(Algorithm::ES256, Some("x"), &ec_key(), &claims());
        assert_eq!(invalid(a.verify(&x).await), InvalidToken::UnknownKey);
        assert_eq!(invalid(a.verify(&x).await), InvalidToken::UnknownKey);
        let before = server.hits();
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(invalid(a.verify(&x).await), InvalidToken::UnknownKey);
        assert_eq!(server.hits(), before + 1);
    }

    #[tokio::test]
    async fn jwks_outage_keeps_cached_keys() {
        let server = JwksServer::start(set(&[jwk("ec", Algorithm::ES256)])).await;
        let a = auth(jwks_settings(server.url()));
        let token = sign(Algorithm::ES256, Some("ec"), &ec_key(), &claims());
        assert!(a.verify(&token).await.is_ok());

        server.set_mode(Mode::Fail);
        assert!(matches!(
            a.refresh_keys().await,
            Err(JwksError::Status(503))
        ));
        assert!(a.verify(&token).await.is_ok());

        server.set_mode(Mode::Hang);
        assert!(matches!(a.refresh_keys().await, Err(JwksError::Timeout)));
        assert!(a.verify(&token).await.is_ok());

        // A refresh whose set has no usable key keeps the old keys too.
        server.set_mode(Mode::Serve);
        server.set_body(set(&[]));
        assert!(matches!(
            a.refresh_keys().await,
            Err(JwksError::NoUsableKeys)
        ));
        assert!(a.verify(&token).await.is_ok());

        // An unknown kid during an outage may be a new key: unavailable.
        server.set_mode(Mode::Fail);
        let t = sign(Algorithm::ES256, Some("new"), &ec2_key(), &claims());
        assert_eq!(a.verify(&t).await.unwrap_err(), AuthError::Unavailable);

        drop(server);
        assert!(a.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_outage_without_cache_is_unavailable() {
        let server = JwksServer::start(set(&[jwk("ec", Algorithm::ES256)])).await;
        server.set_mode(Mode::Fail);
        let a = auth(jwks_settings(server.url()));
        let token = sign(Algorithm::ES256, Some("ec"), &ec_key(), &claims());
        assert_eq!(a.verify(&token).await.unwrap_err(), AuthError::Unavailable);

        // Nothing listening at all.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let a = auth(jwks_settings(format!("http://{addr}/jwks")));
        assert_eq!(a.verify(&token).await.unwrap_err(), AuthError::Unavailable);

        // Recovers once the server does.
        server.set_mode(Mode::Serve);
        let a = auth(jwks_settings(server.url()));
        assert!(a.verify(&token).await.is_ok());
    }

    #[tokio::test]
    async fn jwks_timeout_is_unavailable() {
        // Accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let mut s = jwks_settings(format!("http://{addr}/jwks"));
        s.jwks_timeout = Duration::from_millis(300);
        let a = auth(s);
        let token = sign(Algorithm::ES256, Some("ec"), &ec_key(), &claims());
        let started = Instant::now();
        assert_eq!(a.verify(&token).await.unwrap_err(), AuthError::Unavailable);
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        hold.abort();
    }

    #[tokio::test]
    async fn background_refresh_rotates_and_stops_on_drop() {
        let server = JwksServer::start(set(&[jwk("old", Algorithm::ES256)])).await;
        let mut s = jwks_settings(server.url());
        s.jwks_refresh = Duration::from_secs(1);
        let a = auth(s);
        assert!(auth(hmac(HmacAlg::HS256)).spawn_jwks_refresh().is_none());
        let handle = a.spawn_jwks_refresh().unwrap();

        // The loop fetches at once.
        let deadline = Instant::now() + Duration::from_secs(3);
        while server.hits() == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(server.hits(), 1);
        let old = sign(Algorithm::ES256, Some("old"), &ec_key(), &claims());
        assert!(a.verify(&old).await.is_ok());
        assert_eq!(server.hits(), 1, "verify used the prefetched keys");

        // The next tick picks up the rotated set.
        server.set_body(set(&[ec2_jwk("new")]));
        let deadline = Instant::now() + Duration::from_secs(5);
        while server.hits() < 2 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(server.hits() >= 2);
        let new = sign(Algorithm::ES256, Some("new"), &ec2_key(), &claims());
        assert!(a.verify(&new).await.is_ok());

        drop(a);
        tokio::time::timeout(Duration::from_secs(1), handle)
            .await
            .expect("the loop ends when the authenticator is dropped")
            .unwrap();
    }

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

    #[test]
    fn authenticator_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<Authenticator>();
    }
}
