//! Authentication over real sockets: every way a token can be wrong, the
//! auth deadline, refresh, expiry, and the per-user connection limit.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use jsonwebtoken::Algorithm;
use plexus_protocol::ErrorCode;
use plexus_protocol::methods::{AuthParams, AuthRefreshParams, AuthRefreshResult, Empty};
use plexus_testkit::*;

/// The auth fails with `unauthenticated`, then the hub closes with 4000.
async fn rejected(addr: std::net::SocketAddr, token: &str) {
    let mut c = Client::connect(addr).await;
    let err = c.auth(token).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated, "{err}");
    c.expect_close(4000, true).await;
}

/// A client authenticated with a token that expires in `secs` seconds.
async fn short_lived(server: &TestHub, secs: i64) -> Client {
    let mut claims = claims("alice", &[">"], &[">"], false);
    claims["exp"] = (now() + secs).into();
    Client::authed(server.addr(), &sign(&claims, Algorithm::HS256, SECRET))
        .await
        .0
}

#[tokio::test]
async fn valid_token_authenticates_and_announces_limits() {
    let server = TestHub::start(|_| {}).await;
    let (_c, r) = Client::authed(server.addr(), &token("alice")).await;
    assert_eq!(r.user, "alice");
    assert!(!r.session.is_empty());
    assert_eq!(r.limits.max_frame_size, 1024 * 1024);
    // Every key announced, the defaults of the reference server (P3, P13).
    assert_eq!(r.limits, plexus_protocol::methods::ServerLimits::DEFAULTS);
    assert_eq!(r.limits.max_in_flight, 1024);
    assert_eq!(r.limits.max_in_flight_bytes, 8 * 1024 * 1024);
    assert_eq!((r.limits.max_depth, r.limits.max_presence_page), (32, 1000));
    assert!(r.expires_in_ms.unwrap() > 3_500_000);
}

#[tokio::test]
async fn bad_tokens_are_rejected_with_4000() {
    let server = TestHub::start(|c| {
        c.jwt_audience = "plexus-tests".into();
        c.jwt_issuer = "https://issuer.test".into();
    })
    .await;
    let addr = server.addr();
    let good = || {
        let mut c = claims("alice", &[">"], &[">"], false);
        c["aud"] = "plexus-tests".into();
        c["iss"] = "https://issuer.test".into();
        c
    };
    // Sanity: the well-formed token is accepted.
    Client::authed(addr, &sign(&good(), Algorithm::HS256, SECRET)).await;

    // Bad signature.
    rejected(
        addr,
        &sign(
            &good(),
            Algorithm::HS256,
            b"another-secret-another-secret-another",
        ),
    )
    .await;
    // Wrong algorithm (HS512 with the right secret, HS256 is pinned).
    rejected(addr, &sign(&good(), Algorithm::HS512, SECRET)).await;
    // alg: none.
    let none = {
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!(
            "{}.{}.",
            b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
            b64.encode(good().to_string())
        )
    };
    rejected(addr, &none).await;
    // Expired.
    let mut c = good();
    c["exp"] = (now() - 60).into();
    rejected(addr, &sign(&c, Algorithm::HS256, SECRET)).await;
    // Not yet valid.
    let mut c = good();
    c["nbf"] = (now() + 600).into();
    rejected(addr, &sign(&c, Algorithm::HS256, SECRET)).await;
    // Wrong audience.
    let mut c = good();
    c["aud"] = "someone-else".into();
    rejected(addr, &sign(&c, Algorithm::HS256, SECRET)).await;
    // Wrong issuer.
    let mut c = good();
    c["iss"] = "https://evil.test".into();
    rejected(addr, &sign(&c, Algorithm::HS256, SECRET)).await;
    // Garbage.
    rejected(addr, "not-a-jwt").await;
}

#[tokio::test]
async fn requests_before_auth_are_unauthenticated_and_the_deadline_closes_4001() {
    let server =
        TestHub::start(|c| c.auth_timeout = plexus_server::config::Dur(Duration::from_millis(300)))
            .await;
    let mut c = Client::connect(server.addr()).await;
    let err = c.call("ping", &raw(&1u8)).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated);
    c.expect_close(4001, true).await;
}

#[tokio::test]
async fn auth_twice_is_a_conflict_and_bad_auth_params_are_invalid() {
    let server = TestHub::start(|_| {}).await;
    let mut c = Client::connect(server.addr()).await;
    let err = c.call("auth", &raw(&"just a string")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::InvalidParams);
    c.auth(&token("alice")).await.unwrap();
    let err = c.auth(&token("alice")).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Conflict);
}

#[tokio::test]
async fn refresh_extends_and_other_subject_is_forbidden_4003() {
    let server = TestHub::start(|_| {}).await;
    let addr = server.addr();
    let mut short = claims("alice", &[">"], &[">"], false);
    short["exp"] = (now() + 60).into();
    let (mut c, r) = Client::authed(addr, &sign(&short, Algorithm::HS256, SECRET)).await;
    assert!(r.expires_in_ms.unwrap() <= 60_000);
    let fresh = token("alice");
    let res: AuthRefreshResult = c
        .call("auth.refresh", &AuthRefreshParams { token: &fresh })
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert!(res.expires_in_ms.unwrap() > 3_500_000);
    // A bad token is refused without closing.
    let err = c
        .call("auth.refresh", &AuthRefreshParams { token: "nope" })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Unauthenticated);
    c.call("ping", &Empty {}).await.unwrap();
    // A token for another user closes the connection.
    let other = token("mallory");
    let err = c
        .call("auth.refresh", &AuthRefreshParams { token: &other })
        .await
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::Forbidden);
    c.expect_close(4003, true).await;
}

#[tokio::test]
async fn expiring_token_is_announced_then_closed_4002() {
    let server = TestHub::start(|_| {}).await;
    let mut c = short_lived(&server, 2).await;
    let n = c.notification("token.expiring").await;
    let p: plexus_protocol::methods::TokenExpiringParams = n.params.decode().unwrap();
    assert!(p.expires_in_ms <= 2_000);
    c.expect_close(4002, true).await;
}

#[tokio::test]
async fn a_refresh_answers_with_the_new_expiry() {
    // That the old expiry then no longer closes is a timing rule, tested in
    // the session core with a virtual clock.
    let server = TestHub::start(|_| {}).await;
    let mut c = short_lived(&server, 30).await;
    let fresh = token("alice");
    let r: AuthRefreshResult = c
        .call("auth.refresh", &AuthRefreshParams { token: &fresh })
        .await
        .unwrap()
        .decode()
        .unwrap();
    assert!(r.expires_in_ms.unwrap() > 3_500_000);
    c.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn the_auth_deadline_holds_while_keys_are_being_fetched() {
    // Item 10: a JWKS endpoint that never answers; the fetch would time out
    // after 5 s, the auth deadline is 300 ms.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let mut settings =
        plexus_server::auth::AuthSettings::new(plexus_server::auth::KeySource::Jwks {
            url: format!("http://{addr}/jwks.json"),
        });
    settings.jwks_timeout = Duration::from_secs(5);
    let server = TestHub::start_with_auth(settings, |c| {
        c.auth_timeout = plexus_server::config::Dur(Duration::from_millis(300));
    })
    .await;
    let mut c = Client::connect(server.addr()).await;
    let pem = include_bytes!("../src/auth/testdata/test-only-ec-p256-private.pem");
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let es256 = jsonwebtoken::encode(
        &header,
        &claims("alice", &[">"], &[">"], false),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap();
    let started = std::time::Instant::now();
    c.request(
        "auth",
        &AuthParams {
            token: &es256,
            instance: None,
            agent: None,
        },
    )
    .await;
    c.expect_close(4001, true).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    hold.abort();
}

#[tokio::test]
async fn per_user_connection_limit_closes_4004_and_instances_replace_4009() {
    let server = TestHub::start(|c| c.max_connections_per_user = 2).await;
    let addr = server.addr();
    let t = token("alice");
    let (_a, _) = Client::authed(addr, &t).await;
    let mut b = Client::connect(addr).await;
    b.call(
        "auth",
        &AuthParams {
            token: &t,
            instance: Some("phone"),
            agent: None,
        },
    )
    .await
    .unwrap();
    let mut c = Client::connect(addr).await;
    c.request(
        "auth",
        &AuthParams {
            token: &t,
            instance: None,
            agent: None,
        },
    )
    .await;
    c.expect_close(4004, true).await;
    // Another user is not affected.
    Client::authed(addr, &token("bob")).await;
    // Same instance replaces the older connection instead of counting.
    let mut d = Client::connect(addr).await;
    d.call(
        "auth",
        &AuthParams {
            token: &t,
            instance: Some("phone"),
            agent: None,
        },
    )
    .await
    .unwrap();
    b.expect_close(4009, true).await;
    d.call("ping", &Empty {}).await.unwrap();
}

#[tokio::test]
async fn jwks_outage_answers_unavailable_and_keeps_the_connection() {
    // Nothing listens on this port: the JWKS cannot be fetched.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/jwks.json", dead.local_addr().unwrap());
    drop(dead);
    let mut settings =
        plexus_server::auth::AuthSettings::new(plexus_server::auth::KeySource::Jwks { url });
    settings.jwks_timeout = Duration::from_millis(500);
    let server = TestHub::start_with_auth(settings, |_| {}).await;
    let pem = include_bytes!("../src/auth/testdata/test-only-ec-p256-private.pem");
    let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
    header.kid = Some("k1".into());
    let es256 = jsonwebtoken::encode(
        &header,
        &claims("alice", &[">"], &[">"], false),
        &jsonwebtoken::EncodingKey::from_ec_pem(pem).unwrap(),
    )
    .unwrap();
    let mut c = Client::connect(server.addr()).await;
    let err = c.auth(&es256).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
    assert!(err.retry_after_ms.is_some());
    // The connection stays open for a retry.
    let err = c.auth(&es256).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable);
}

#[tokio::test]
async fn a_far_future_expiry_is_an_invalid_token() {
    let server = TestHub::start(|_| {}).await;
    let mut c = claims("alice", &[">"], &[">"], false);
    // 2^63: no value of `exp` means "never expires" (decision P7).
    c["exp"] = (1u64 << 63).into();
    rejected(server.addr(), &sign(&c, Algorithm::HS256, SECRET)).await;
    // The rejected connection is unregistered when it ends.
    server.wait_for_connections(0).await;
}
