//! Verification against a JWKS: key selection by `kid`, single-flight
//! fetches, rotation, cool-down, outages.

use std::time::Instant;

use super::super::jwks::test_server::{JwksServer, Mode};
use super::tests::*;

fn jwk(kid: &str, alg: Algorithm) -> Value {
    let mut v = match alg {
        Algorithm::RS256 => serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&rsa_key(), alg).unwrap(),
        )
        .unwrap(),
        Algorithm::ES256 => {
            serde_json::to_value(jsonwebtoken::jwk::Jwk::from_encoding_key(&ec_key(), alg).unwrap())
                .unwrap()
        }
        _ => {
            let x = URL_SAFE_NO_PAD.encode(DecodingKey::from_ed_pem(ED_PUBLIC).unwrap().as_bytes());
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
