//! Verification with static keys (HMAC and PEM): pinned algorithms,
//! signatures, claims and dates. The helpers are shared with `jwks_tests`.

pub(super) use super::super::settings::HmacAlg;
pub(super) use super::*;
pub(super) use base64::Engine;
pub(super) use base64::engine::general_purpose::URL_SAFE_NO_PAD;
pub(super) use jsonwebtoken::{Algorithm, DecodingKey};
pub(super) use jsonwebtoken::{EncodingKey, Header as JwtHeader, encode, get_current_timestamp};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern, Topic};
pub(super) use serde_json::{Value, json};
pub(super) use std::time::Duration;

pub(super) const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

pub(super) const RSA_PRIVATE: &[u8] = include_bytes!("../testdata/test-only-rsa-private.pem");
pub(super) const RSA_PUBLIC: &[u8] = include_bytes!("../testdata/test-only-rsa-public.pem");
pub(super) const EC_PRIVATE: &[u8] = include_bytes!("../testdata/test-only-ec-p256-private.pem");
pub(super) const EC_PUBLIC: &[u8] = include_bytes!("../testdata/test-only-ec-p256-public.pem");
pub(super) const EC2_PRIVATE: &[u8] =
    include_bytes!("../testdata/test-only-ec-p256-second-private.pem");
pub(super) const EC_P384_PUBLIC: &[u8] = include_bytes!("../testdata/test-only-ec-p384-public.pem");
pub(super) const ED_PRIVATE: &[u8] = include_bytes!("../testdata/test-only-ed25519-private.pem");
pub(super) const ED_PUBLIC: &[u8] = include_bytes!("../testdata/test-only-ed25519-public.pem");

pub(super) fn now() -> u64 {
    get_current_timestamp()
}

pub(super) fn hmac(alg: HmacAlg) -> AuthSettings {
    AuthSettings::new(KeySource::Hmac {
        secret: SECRET.to_vec(),
        alg,
    })
}

pub(super) fn auth(settings: AuthSettings) -> Authenticator {
    Authenticator::new(settings).unwrap()
}

pub(super) fn claims() -> Value {
    json!({
        "sub": "alice",
        "exp": now() + 600,
        "plexus": {"sub": ["chat.>"], "pub": ["chat.room1"], "presence": true},
    })
}

pub(super) fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let mut header = JwtHeader::new(alg);
    header.kid = kid.map(str::to_owned);
    encode(&header, claims, key).unwrap()
}

pub(super) fn hs(alg: Algorithm, claims: &Value) -> String {
    sign(alg, None, &EncodingKey::from_secret(SECRET), claims)
}

pub(super) fn b64(v: &Value) -> String {
    URL_SAFE_NO_PAD.encode(v.to_string())
}

pub(super) fn invalid(r: Result<Principal, AuthError>) -> InvalidToken {
    match r {
        Err(AuthError::Invalid(e)) => e,
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

pub(super) fn rsa_key() -> EncodingKey {
    EncodingKey::from_rsa_pem(RSA_PRIVATE).unwrap()
}
pub(super) fn ec_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC_PRIVATE).unwrap()
}
pub(super) fn ec2_key() -> EncodingKey {
    EncodingKey::from_ec_pem(EC2_PRIVATE).unwrap()
}
pub(super) fn ed_key() -> EncodingKey {
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
    // Nothing is allowed; the claims are kept for disclosure (R8).
    let mut caps = (*p.caps).clone();
    let kept: serde_json::Value = serde_json::from_str(caps.claims.as_deref().unwrap()).unwrap();
    assert_eq!(kept["sub"], json!("bob"));
    caps.claims = None;
    assert_eq!(caps, super::super::Capabilities::default());
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
async fn an_expiry_beyond_a_century_is_refused() {
    let a = auth(hmac(HmacAlg::HS256));
    let mut c = claims();
    // 2^63: a "never expires" sentinel some issuers use.
    c["exp"] = json!(1u64 << 63);
    assert_eq!(
        invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
        InvalidToken::ExpiryTooFar
    );
    let century = MAX_TOKEN_LIFETIME.as_secs();
    c["exp"] = json!(now() + century + 60);
    assert_eq!(
        invalid(a.verify(&hs(Algorithm::HS256, &c)).await),
        InvalidToken::ExpiryTooFar
    );
    c["exp"] = json!(now() + century - 60);
    assert!(a.verify(&hs(Algorithm::HS256, &c)).await.is_ok());
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

#[test]
fn authenticator_is_send_sync_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<Authenticator>();
}
