//! Minting HMAC tokens (development tokens, tests, the `token` command).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{EncodingKey, Header};
use plexus_protocol::topic::TopicError;

use super::claims::{
    CapabilityClaim, CapabilityError, MAX_CAPABILITY_PATTERNS, MAX_SUBJECT_LEN, MintClaims,
    check_subject,
};
use super::settings::{HmacAlg, MIN_HMAC_SECRET_LEN};

/// What to put in a minted token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MintRequest {
    /// The user (`sub`), 1..=[`MAX_SUBJECT_LEN`] bytes.
    pub sub: String,
    /// Patterns the user may subscribe within (`plexus.sub`).
    pub subscribe: Vec<String>,
    /// Patterns the user may publish to (`plexus.pub`).
    pub publish: Vec<String>,
    /// Whether the user may join presence (`plexus.presence`).
    pub presence: bool,
    /// Record-sync spaces the user may pull from (`sync_read`).
    pub sync_read: Vec<String>,
    /// Record-sync spaces the user may push to and pull from
    /// (`sync_write`).
    pub sync_write: Vec<String>,
    /// Procedures the user may register as a callee (`rpc_register`).
    pub rpc_register: Vec<String>,
    /// Procedures the user may call (`rpc_call`).
    pub rpc_call: Vec<String>,
    /// Whether the user may use `rpc.list` (`rpc_admin`).
    pub rpc_admin: bool,
    /// Lifetime; `exp` is `iat` plus this, in whole seconds (at least one).
    pub ttl: Duration,
    /// `iss`, when set.
    pub issuer: Option<String>,
    /// `aud` (a single string), when set.
    pub audience: Option<String>,
}

/// Why a token could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// `sub` is empty or longer than [`MAX_SUBJECT_LEN`] bytes.
    #[error("the subject must be 1 to {MAX_SUBJECT_LEN} bytes")]
    BadSubject,
    /// A capability pattern does not parse.
    #[error("invalid {list} pattern {pattern:?}: {source}")]
    BadPattern {
        /// `"sub"` or `"pub"`.
        list: &'static str,
        /// The pattern as given.
        pattern: String,
        /// What is wrong with it.
        #[source]
        source: TopicError,
    },
    /// A pattern list is longer than [`MAX_CAPABILITY_PATTERNS`].
    #[error("at most {MAX_CAPABILITY_PATTERNS} patterns per list")]
    TooManyPatterns,
    /// The TTL is under one second or overflows `exp`.
    #[error("the ttl must be at least one second")]
    BadTtl,
    /// The secret is shorter than [`MIN_HMAC_SECRET_LEN`] bytes.
    #[error("the HMAC secret must be at least {MIN_HMAC_SECRET_LEN} bytes")]
    SecretTooShort,
    /// The system clock is before 1970.
    #[error("the system clock is before the Unix epoch")]
    Clock,
    /// Signing failed.
    #[error("signing the token failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

/// Mints an HMAC-signed token for `req`: `iat` and `nbf` are now, `exp` is
/// now plus `req.ttl`, and the `plexus` claim holds the capabilities.
/// Patterns are validated first, so a minted token always verifies (with
/// the same secret, algorithm, issuer and audience).
pub fn mint_hs(secret: &[u8], alg: HmacAlg, req: &MintRequest) -> Result<String, MintError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Clock)?
        .as_secs();
    mint_at(secret, alg, req, now)
}

fn mint_at(secret: &[u8], alg: HmacAlg, req: &MintRequest, now: u64) -> Result<String, MintError> {
    if secret.len() < MIN_HMAC_SECRET_LEN {
        return Err(MintError::SecretTooShort);
    }
    check_subject(&req.sub).map_err(|_| MintError::BadSubject)?;
    let capabilities = CapabilityClaim {
        subscribe: req.subscribe.clone(),
        publish: req.publish.clone(),
        presence: req.presence,
        sync_read: req.sync_read.clone(),
        sync_write: req.sync_write.clone(),
        rpc_register: req.rpc_register.clone(),
        rpc_call: req.rpc_call.clone(),
        rpc_admin: req.rpc_admin,
    };
    capabilities.parse().map_err(|e| match e {
        CapabilityError::TooMany => MintError::TooManyPatterns,
        CapabilityError::Pattern {
            list,
            pattern,
            error,
        } => MintError::BadPattern {
            list,
            pattern,
            source: error,
        },
    })?;
    let ttl = req.ttl.as_secs();
    if ttl == 0 {
        return Err(MintError::BadTtl);
    }
    let exp = now.checked_add(ttl).ok_or(MintError::BadTtl)?;
    let claims = MintClaims {
        sub: &req.sub,
        iat: now,
        nbf: now,
        exp,
        iss: req.issuer.as_deref(),
        aud: req.audience.as_deref(),
        plexus: &capabilities,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(alg.algorithm()),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

#[cfg(test)]
mod tests {
    use super::super::{AuthSettings, Authenticator, KeySource};
    use super::*;
    use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern, Topic};

    const SECRET: &[u8] = b"mint-test-secret-mint-test-secret";

    fn request() -> MintRequest {
        MintRequest {
            sub: "carol".into(),
            subscribe: vec!["chat.>".into()],
            publish: vec!["chat.room1".into()],
            presence: true,
            sync_read: vec!["team.*".into()],
            sync_write: vec!["user.carol.>".into()],
            rpc_register: vec!["svc.>".into()],
            rpc_call: vec!["svc.resize".into()],
            rpc_admin: true,
            ttl: Duration::from_secs(120),
            issuer: Some("plexus-dev".into()),
            audience: Some("plexus".into()),
        }
    }

    #[tokio::test]
    async fn minted_tokens_verify_with_their_capabilities() {
        for alg in [HmacAlg::HS256, HmacAlg::HS384, HmacAlg::HS512] {
            let token = mint_hs(SECRET, alg, &request()).unwrap();
            let mut settings = AuthSettings::new(KeySource::Hmac {
                secret: SECRET.to_vec(),
                alg,
            });
            settings.issuer = Some("plexus-dev".into());
            settings.audience = Some("plexus".into());
            let p = Authenticator::new(settings)
                .unwrap()
                .verify(&token)
                .await
                .unwrap();
            assert_eq!(&*p.user, "carol");
            let exp = p.expires_at.unwrap();
            let now = jsonwebtoken::get_current_timestamp();
            assert!(exp > now + 100 && exp <= now + 121, "{exp} vs {now}");
            assert!(
                p.caps
                    .can_subscribe(&Pattern::parse("chat.*", MAX_TOPIC_LEN).unwrap())
            );
            assert!(
                p.caps
                    .can_publish(&Topic::parse("chat.room1", MAX_TOPIC_LEN).unwrap())
            );
            assert!(
                !p.caps
                    .can_publish(&Topic::parse("chat.room2", MAX_TOPIC_LEN).unwrap())
            );
            assert!(p.caps.presence);
            let space = |s| Topic::parse(s, MAX_TOPIC_LEN).unwrap();
            assert!(p.caps.can_sync_write(&space("user.carol.notes")));
            assert!(p.caps.can_sync_read(&space("team.1")));
            assert!(!p.caps.can_sync_write(&space("team.1")));
            assert!(p.caps.can_rpc_register(&space("svc.resize")));
            assert!(p.caps.can_rpc_call(&space("svc.resize")));
            assert!(!p.caps.can_rpc_call(&space("svc.other")));
            assert!(p.caps.rpc_admin);
        }
    }

    #[test]
    fn claims_are_stamped_from_now() {
        let token = mint_at(SECRET, HmacAlg::HS256, &request(), 1_000).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(payload["iat"], 1_000);
        assert_eq!(payload["nbf"], 1_000);
        assert_eq!(payload["exp"], 1_120);
        assert_eq!(payload["iss"], "plexus-dev");
        assert_eq!(payload["plexus"]["pub"][0], "chat.room1");
    }

    #[test]
    fn invalid_requests_are_refused() {
        let mint = |f: &dyn Fn(&mut MintRequest)| {
            let mut r = request();
            f(&mut r);
            mint_hs(SECRET, HmacAlg::HS256, &r)
        };
        assert!(matches!(
            mint(&|r| r.subscribe.push("chat.>.x".into())),
            Err(MintError::BadPattern { list: "sub", .. })
        ));
        assert!(matches!(
            mint(&|r| r.publish.push("".into())),
            Err(MintError::BadPattern { list: "pub", .. })
        ));
        assert!(matches!(
            mint(&|r| r.publish = vec!["a".into(); MAX_CAPABILITY_PATTERNS + 1]),
            Err(MintError::TooManyPatterns)
        ));
        assert!(matches!(
            mint(&|r| r.sub.clear()),
            Err(MintError::BadSubject)
        ));
        assert!(matches!(
            mint(&|r| r.sub = "x".repeat(MAX_SUBJECT_LEN + 1)),
            Err(MintError::BadSubject)
        ));
        assert!(matches!(
            mint(&|r| r.ttl = Duration::from_millis(500)),
            Err(MintError::BadTtl)
        ));
        assert!(matches!(
            mint(&|r| r.ttl = Duration::MAX),
            Err(MintError::BadTtl)
        ));
        assert!(matches!(
            mint_hs(b"short", HmacAlg::HS256, &request()),
            Err(MintError::SecretTooShort)
        ));
    }
}
