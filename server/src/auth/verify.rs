//! Token verification: [`Authenticator`].

use std::sync::{Arc, Weak};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tokio::sync::watch;

use super::capabilities::Principal;
use super::claims::Claims;
use super::error::{AuthError, AuthSetupError, InvalidToken, from_jwt_error};
use super::header::{alg_name, asymmetric_alg, parse_header};
use super::jwks::{ErrorChain, JwksCache, JwksError};
use super::pem::load_public_pem;
use super::settings::{AuthSettings, KeySource, MAX_LEEWAY, MIN_HMAC_SECRET_LEN, MIN_JWKS_REFRESH};

/// Longest token accepted, in bytes; longer ones are
/// [`InvalidToken::Malformed`] without being decoded.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// Furthest in the future an `exp` may lie (100 years of 365 days): a later
/// one is [`InvalidToken::ExpiryTooFar`], so no value of `exp` means "never
/// expires" (decision P7).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86_400);

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
    /// `kid` for JWKS), signature, `exp` (required, at most
    /// [`MAX_TOKEN_LIFETIME`] ahead) and `nbf` with leeway, `iss`/`aud` when
    /// configured, `sub`, then the capabilities claim.
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
        // Kept for disclosure to callees (R8); the token is bounded by
        // MAX_TOKEN_LEN, so is this.
        let all_claims = match &data.claims {
            serde_json::Value::Object(m) => serde_json::to_string(m).ok().map(Arc::from),
            _ => None,
        };
        let claims = Claims::from_payload(data.claims)?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        if Duration::from_secs(claims.exp).saturating_sub(now) > MAX_TOKEN_LIFETIME {
            return Err(InvalidToken::ExpiryTooFar.into());
        }
        let mut caps = claims.capabilities()?;
        caps.claims = all_claims;
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

#[cfg(test)]
mod jwks_tests;
#[cfg(test)]
mod tests;
