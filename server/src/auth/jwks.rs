//! A cache of keys fetched from a JSON Web Key Set URL.
//!
//! - The cache maps `kid` to a key and its pinned algorithm; a successful
//!   fetch replaces the whole set, so keys removed upstream stop working.
//! - The first lookup with nothing cached fetches synchronously. Fetches
//!   are single-flight: callers queue on one lock, and a caller that waited
//!   while another fetch finished uses that fetch's outcome instead of
//!   starting its own.
//! - An unknown `kid` forces at most one refresh per
//!   [`UNKNOWN_KID_REFRESH_COOLDOWN`].
//! - A failed fetch keeps the previous keys; only a cache that was never
//!   filled makes lookups [`AuthError::Unavailable`].
//! - A response that parses but holds no usable key counts as a failed
//!   fetch (it does not empty the cache).

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, LengthLimitError, Limited};
use hyper::header::{ACCEPT, CONTENT_LENGTH, HeaderValue, USER_AGENT};
use hyper::{Request, StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use parking_lot::RwLock;

use super::error::{AuthError, AuthSetupError, InvalidToken};
use super::settings::redact_url;

/// Largest JWKS response accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Shortest interval between two refreshes forced by unknown `kid`s.
pub const UNKNOWN_KID_REFRESH_COOLDOWN: Duration = Duration::from_secs(30);

/// Smallest RSA modulus accepted from a JWKS, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a JWKS fetch failed. Messages never quote the URL or a key.
#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    /// No complete response within the configured timeout.
    #[error("JWKS fetch timed out")]
    Timeout,
    /// Connecting or sending the request failed.
    #[error("JWKS request failed")]
    Request(#[source] hyper_util::client::legacy::Error),
    /// The server answered with a status other than 200.
    #[error("JWKS server answered {0}")]
    Status(u16),
    /// The response is larger than [`MAX_JWKS_BYTES`].
    #[error("JWKS response is larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    /// Reading the response body failed.
    #[error("reading the JWKS response failed")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The response is not a JWKS document.
    #[error("the JWKS response is not a key set: {0}")]
    Json(#[source] serde_json::Error),
    /// The document holds no key Plexus can use.
    #[error("the JWKS holds no usable signing key")]
    NoUsableKeys,
}

/// A key from the set, with its pinned algorithm.
#[derive(Debug)]
pub(crate) struct JwkKey {
    pub(crate) key: DecodingKey,
    pub(crate) alg: Algorithm,
}

type KeySet = HashMap<String, Arc<JwkKey>>;
type HttpsClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The JWKS cache and fetcher.
pub(crate) struct JwksCache {
    url: Uri,
    /// The URL without query string or user info, for logs.
    log_url: String,
    timeout: Duration,
    cooldown: Duration,
    client: HttpsClient,
    /// `None` until a fetch succeeds.
    keys: RwLock<Option<Arc<KeySet>>>,
    /// Completed fetch attempts; bumped after `keys` is updated.
    attempts: AtomicU64,
    /// Serialises fetches; holds when the last forced refresh started.
    refresh: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for JwksCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksCache")
            .field("url", &self.log_url)
            .field("keys", &self.keys.read().as_ref().map(|k| k.len()))
            .finish_non_exhaustive()
    }
}

impl JwksCache {
    /// Validates the URL and builds the HTTP client; fetches nothing.
    pub(crate) fn new(url: &str, timeout: Duration) -> Result<JwksCache, AuthSetupError> {
        let bad = |reason| AuthSetupError::InvalidJwksUrl { reason };
        let uri: Uri = url.parse().map_err(|_| bad("not a valid URL"))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err(bad("the scheme must be http or https")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(bad("the URL has no host"));
        }
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())?
            .https_or_http()
            .enable_http1()
            .build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Ok(JwksCache {
            url: uri,
            log_url: redact_url(url),
            timeout,
            cooldown: UNKNOWN_KID_REFRESH_COOLDOWN,
            client,
            keys: RwLock::new(None),
            attempts: AtomicU64::new(0),
            refresh: tokio::sync::Mutex::new(None),
        })
    }

    /// The URL as logged (no query string, no user info).
    pub(crate) fn log_url(&self) -> &str {
        &self.log_url
    }

    #[cfg(test)]
    pub(crate) fn set_cooldown(&mut self, cooldown: Duration) {
        self.cooldown = cooldown;
    }

    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().clone()
    }

    /// The key named `kid`, fetching the set first if nothing is cached
    /// and forcing a (rate-limited) refresh if `kid` is unknown.
    pub(crate) async fn key_for(&self, kid: &str) -> Result<Arc<JwkKey>, AuthError> {
        // Read the attempt count before the keys: a fetch that finishes in
        // between is then seen as "someone fetched while we waited".
        let seen = self.attempts.load(Ordering::Acquire);
        match self.current() {
            Some(set) => match set.get(kid) {
                Some(key) => Ok(Arc::clone(key)),
                None => self.refresh_for_unknown(kid, seen).await,
            },
            None => self.first_load(kid, seen).await,
        }
    }

    async fn first_load(&self, kid: &str, seen: u64) -> Result<Arc<JwkKey>, AuthError> {
        let _guard = self.refresh.lock().await;
        if self.attempts.load(Ordering::Acquire) == seen
            && let Err(e) = self.fetch_and_store().await
        {
            tracing::warn!(
                url = %self.log_url,
                error = %ErrorChain(&e),
                "JWKS fetch failed and no keys are cached",
            );
        }
        match self.current() {
            None => Err(AuthError::Unavailable),
            Some(set) => lookup(&set, kid),
        }
    }

    async fn refresh_for_unknown(&self, kid: &str, seen: u64) -> Result<Arc<JwkKey>, AuthError> {
        let mut last_forced = self.refresh.lock().await;
        if self.attempts.load(Ordering::Acquire) == seen {
            if last_forced.is_some_and(|t| t.elapsed() < self.cooldown) {
                return Err(InvalidToken::UnknownKey.into());
            }
            *last_forced = Some(Instant::now());
            if let Err(e) = self.fetch_and_store().await {
                // The key may exist upstream; the token may work later.
                tracing::warn!(
                    url = %self.log_url,
                    error = %ErrorChain(&e),
                    "JWKS refresh for an unknown key id failed; keeping the cached keys",
                );
                return Err(AuthError::Unavailable);
            }
        }
        match self.current() {
            None => Err(AuthError::Unavailable),
            Some(set) => lookup(&set, kid),
        }
    }

    /// Fetches the set now (after any fetch in progress) and replaces the
    /// cache on success. Returns the number of usable keys.
    pub(crate) async fn refresh(&self) -> Result<usize, JwksError> {
        let _guard = self.refresh.lock().await;
        self.fetch_and_store().await
    }

    /// One fetch attempt; the caller holds the refresh lock.
    async fn fetch_and_store(&self) -> Result<usize, JwksError> {
        let result = self.fetch().await;
        if let Ok(set) = &result {
            *self.keys.write() = Some(Arc::clone(set));
            tracing::debug!(url = %self.log_url, keys = set.len(), "JWKS loaded");
        }
        self.attempts.fetch_add(1, Ordering::AcqRel);
        result.map(|set| set.len())
    }

    async fn fetch(&self) -> Result<Arc<KeySet>, JwksError> {
        let fetch = async {
            let mut req = Request::new(Empty::<Bytes>::new());
            *req.uri_mut() = self.url.clone();
            let headers = req.headers_mut();
            headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
            headers.insert(
                USER_AGENT,
                HeaderValue::from_static(concat!("plexus/", env!("CARGO_PKG_VERSION"))),
            );
            let resp = self.client.request(req).await.map_err(JwksError::Request)?;
            if resp.status() != StatusCode::OK {
                return Err(JwksError::Status(resp.status().as_u16()));
            }
            let declared = resp
                .headers()
                .get(CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
                return Err(JwksError::TooLarge);
            }
            let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<LengthLimitError>() {
                        JwksError::TooLarge
                    } else {
                        JwksError::Body(e)
                    }
                })?
                .to_bytes();
            parse_jwks(&body).map(Arc::new)
        };
        tokio::time::timeout(self.timeout, fetch)
            .await
            .map_err(|_| JwksError::Timeout)?
    }
}

fn lookup(set: &KeySet, kid: &str) -> Result<Arc<JwkKey>, AuthError> {
    set.get(kid)
        .cloned()
        .ok_or(AuthError::Invalid(InvalidToken::UnknownKey))
}

#[derive(serde::Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document, keeping the keys Plexus can use. Keys that are
/// unparseable, lack a `kid`, are symmetric, are for encryption, have an
/// `alg` that does not fit their type, or fail the shape checks are
/// skipped (logged at debug level by `kid` only). On a duplicate `kid` the
/// first usable key wins.
pub(crate) fn parse_jwks(body: &[u8]) -> Result<KeySet, JwksError> {
    let raw: RawSet = serde_json::from_slice(body).map_err(JwksError::Json)?;
    let mut set = KeySet::new();
    for value in raw.keys {
        let jwk: Jwk = match serde_json::from_value(value) {
            Ok(jwk) => jwk,
            Err(_) => {
                tracing::debug!("skipping a JWK that does not parse");
                continue;
            }
        };
        let kid = jwk.common.key_id.clone();
        match key_from_jwk(&jwk) {
            Ok((kid, key)) => match set.entry(kid) {
                Entry::Occupied(e) => {
                    tracing::debug!(kid = %e.key(), "skipping a JWK with a duplicate kid");
                }
                Entry::Vacant(e) => {
                    e.insert(Arc::new(key));
                }
            },
            Err(reason) => tracing::debug!(kid = kid.as_deref(), reason, "skipping a JWK"),
        }
    }
    if set.is_empty() {
        Err(JwksError::NoUsableKeys)
    } else {
        Ok(set)
    }
}

/// Turns one JWK into a cache entry, pinning its algorithm.
fn key_from_jwk(jwk: &Jwk) -> Result<(String, JwkKey), &'static str> {
    let kid = jwk.common.key_id.clone().ok_or("no kid")?;
    if matches!(
        jwk.common.public_key_use,
        Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_))
    ) {
        return Err("not a signature key");
    }
    let declared = jwk.common.key_algorithm;
    let alg = match (&jwk.algorithm, declared) {
        (AlgorithmParameters::RSA(_), None | Some(KeyAlgorithm::RS256)) => Algorithm::RS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS384)) => Algorithm::RS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::RS512)) => Algorithm::RS512,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS256)) => Algorithm::PS256,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS384)) => Algorithm::PS384,
        (AlgorithmParameters::RSA(_), Some(KeyAlgorithm::PS512)) => Algorithm::PS512,
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES256))
            if p.curve == EllipticCurve::P256 =>
        {
            Algorithm::ES256
        }
        (AlgorithmParameters::EllipticCurve(p), None | Some(KeyAlgorithm::ES384))
            if p.curve == EllipticCurve::P384 =>
        {
            Algorithm::ES384
        }
        (AlgorithmParameters::OctetKeyPair(p), None | Some(KeyAlgorithm::EdDSA))
            if p.curve == EllipticCurve::Ed25519 =>
        {
            Algorithm::EdDSA
        }
        (AlgorithmParameters::OctetKey(_), _) => return Err("symmetric keys are not accepted"),
        _ => return Err("alg, kty and crv do not fit together"),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "bad key encoding")?;
    check_key_shape(&key, alg)?;
    Ok((kid, JwkKey { key, alg }))
}

/// Rejects key material that cannot verify anything (and, for Ed25519,
/// material that would make `jsonwebtoken` index out of bounds).
pub(crate) fn check_key_shape(key: &DecodingKey, alg: Algorithm) -> Result<(), &'static str> {
    match alg {
        Algorithm::EdDSA => {
            if !matches!(key.kind(), DecodingKeyKind::SecretOrDer(b) if b.len() == 32) {
                return Err("an Ed25519 key must be 32 bytes");
            }
        }
        Algorithm::ES256 | Algorithm::ES384 => {}
        _ => {
            if let DecodingKeyKind::RsaModulusExponent { n, .. } = key.kind()
                && modulus_bits(n) < MIN_RSA_BITS
            {
                return Err("RSA modulus is too small");
            }
        }
    }
    // Building the verifier parses EC and Ed25519 points; a bad point fails
    // here. RSA material is only parsed per signature.
    match jsonwebtoken::crypto::verify("AA", b"", key, alg) {
        Ok(_) => Ok(()),
        Err(_) => Err("invalid key material"),
    }
}

fn modulus_bits(n: &[u8]) -> usize {
    let n = match n.iter().position(|&b| b != 0) {
        Some(i) => &n[i..],
        None => return 0,
    };
    // `n` is non-empty here.
    n.len() * 8 - n.first().map_or(0, |b| b.leading_zeros() as usize)
}

/// Displays an error with its sources, `a: b: c`.
pub(crate) struct ErrorChain<'a>(pub(crate) &'a (dyn std::error::Error + 'static));

impl std::fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod test_server {
    //! A tiny JWKS server on 127.0.0.1:0 for tests.

    use std::convert::Infallible;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    use bytes::Bytes;
    use http_body_util::Full;
    use hyper::service::service_fn;
    use hyper::{Response, StatusCode};
    use hyper_util::rt::TokioIo;
    use parking_lot::Mutex;
    use tokio::net::TcpListener;

    /// How the server answers.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    #[repr(u8)]
    pub(crate) enum Mode {
        /// 200 with the current body.
        Serve = 0,
        /// Never answer.
        Hang = 1,
        /// 503.
        Fail = 2,
    }

    pub(crate) struct JwksServer {
        pub(crate) addr: SocketAddr,
        body: Arc<Mutex<String>>,
        mode: Arc<AtomicU8>,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl JwksServer {
        pub(crate) async fn start(body: String) -> JwksServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let body = Arc::new(Mutex::new(body));
            let mode = Arc::new(AtomicU8::new(Mode::Serve as u8));
            let hits = Arc::new(AtomicUsize::new(0));
            let (b, m, h) = (body.clone(), mode.clone(), hits.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((stream, _)) = listener.accept().await else {
                        return;
                    };
                    let (b, m, h) = (b.clone(), m.clone(), h.clone());
                    tokio::spawn(async move {
                        let svc = service_fn(move |_req| {
                            let (b, m, h) = (b.clone(), m.clone(), h.clone());
                            async move {
                                h.fetch_add(1, Ordering::SeqCst);
                                match m.load(Ordering::SeqCst) {
                                    0 => {}
                                    1 => std::future::pending::<()>().await,
                                    _ => {
                                        let mut r = Response::new(Full::new(Bytes::new()));
                                        *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                                        return Ok::<_, Infallible>(r);
                                    }
                                }
                                let text = b.lock().clone();
                                Ok(Response::new(Full::new(Bytes::from(text))))
                            }
                        });
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
            });
            JwksServer {
                addr,
                body,
                mode,
                hits,
                task,
            }
        }

        pub(crate) fn url(&self) -> String {
            format!(
                "http://{}/.well-known/jwks.json?secret=do-not-log",
                self.addr
            )
        }

        pub(crate) fn set_body(&self, body: String) {
            *self.body.lock() = body;
        }

        pub(crate) fn set_mode(&self, mode: Mode) {
            self.mode.store(mode as u8, Ordering::SeqCst);
        }

        pub(crate) fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    impl Drop for JwksServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_server::{JwksServer, Mode};
    use super::*;
    use serde_json::json;

    fn ed_jwk(kid: &str) -> serde_json::Value {
        let pem = include_bytes!("testdata/test-only-ed25519-public.pem");
        let key = DecodingKey::from_ed_pem(pem).unwrap();
        let x = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            key.as_bytes(),
        );
        json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "use": "sig"})
    }

    #[test]
    fn parse_skips_unusable_keys() {
        let mut good = ed_jwk("good");
        good["alg"] = json!("EdDSA");
        let doc = json!({"keys": [
            good,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            ed_jwk("dup"),
            {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "tiny-rsa"},
            {"weird": true},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_jwk("x")["x"], "kid": "enc", "use": "enc"},
            {"kty": "OKP", "crv": "Ed25519", "x": ed_jwk("x")["x"], "kid": "mismatch", "alg": "ES256"},
            ed_jwk("nokid").as_object().map(|o| { let mut o = o.clone(); o.remove("kid"); o }).unwrap(),
        ]});
        let mut doc = doc;
        doc["keys"].as_array_mut().unwrap().push(ed_jwk("dup"));
        let set = parse_jwks(doc.to_string().as_bytes()).unwrap();
        let mut kids: Vec<_> = set.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["dup", "good"]);
        assert_eq!(set["good"].alg, Algorithm::EdDSA);

        assert!(matches!(
            parse_jwks(b"{\"keys\": []}"),
            Err(JwksError::NoUsableKeys)
        ));
        assert!(matches!(parse_jwks(b"[]"), Err(JwksError::Json(_))));
        assert!(matches!(parse_jwks(b"<html>"), Err(JwksError::Json(_))));
    }

    #[test]
    fn modulus_bit_count() {
        assert_eq!(modulus_bits(&[]), 0);
        assert_eq!(modulus_bits(&[0, 0]), 0);
        assert_eq!(modulus_bits(&[0, 1]), 1);
        assert_eq!(modulus_bits(&[0x80, 0]), 16);
        assert_eq!(modulus_bits(&[0, 0x7f, 0]), 15);
    }

    #[test]
    fn rejects_bad_urls() {
        for url in ["ftp://h/x", "/relative", "not a url", "http://"] {
            assert!(
                matches!(
                    JwksCache::new(url, Duration::from_secs(1)),
                    Err(AuthSetupError::InvalidJwksUrl { .. })
                ),
                "{url}"
            );
        }
        assert!(JwksCache::new("https://idp.example/jwks", Duration::from_secs(1)).is_ok());
    }

    #[tokio::test]
    async fn oversized_and_error_responses_fail() {
        let big = format!(
            "{{\"keys\": [], \"pad\": \"{}\"}}",
            "x".repeat(MAX_JWKS_BYTES)
        );
        let server = JwksServer::start(big).await;
        let cache = JwksCache::new(&server.url(), Duration::from_secs(5)).unwrap();
        assert!(matches!(cache.refresh().await, Err(JwksError::TooLarge)));
        server.set_mode(Mode::Fail);
        assert!(matches!(cache.refresh().await, Err(JwksError::Status(503))));
        server.set_mode(Mode::Serve);
        server.set_body(json!({"keys": [ed_jwk("k")]}).to_string());
        assert_eq!(cache.refresh().await.unwrap(), 1);
        assert!(cache.log_url().ends_with("/.well-known/jwks.json"));
        assert!(!format!("{cache:?}").contains("do-not-log"));
    }

    #[test]
    fn error_chain_lists_sources() {
        let e = JwksError::Json(serde_json::from_str::<u8>("x").unwrap_err());
        let text = ErrorChain(&e).to_string();
        assert!(
            text.starts_with("the JWKS response is not a key set"),
            "{text}"
        );
    }
}
