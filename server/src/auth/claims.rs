//! The JWT claims Plexus reads and writes.
//!
//! Registered claims: `sub` (required, 1..=[`MAX_SUBJECT_LEN`] bytes),
//! `exp` (required), `nbf` (optional), `iss` and `aud` (string or array).
//! `exp`, `nbf`, `iss` and `aud` are checked by `jsonwebtoken`'s
//! `Validation` before these types see the payload; this module reads
//! `sub`, `exp` and the capabilities claim:
//!
//! ```json
//! "plexus": {"sub": ["chat.>"], "pub": ["chat.room1"], "presence": true,
//!            "sync_read": ["team.*"], "sync_write": ["user.alice.>"],
//!            "rpc_register": ["svc.>"], "rpc_call": ["svc.resize"],
//!            "rpc_admin": false}
//! ```
//!
//! An absent claim or field allows nothing; unknown fields are ignored; an
//! invalid pattern rejects the whole token.

use serde::{Deserialize, Deserializer, Serialize};

use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern, TopicError};

use super::capabilities::Capabilities;
use super::error::InvalidToken;

/// Longest accepted `sub`, in bytes.
pub const MAX_SUBJECT_LEN: usize = 256;

/// Most patterns accepted in each of the `sub`, `pub`, `sync_read` and
/// `sync_write` lists.
pub const MAX_CAPABILITY_PATTERNS: usize = 256;

/// The name of the capabilities claim.
pub const CAPABILITIES_CLAIM: &str = "plexus";

/// The claims read from a verified token.
#[derive(Debug, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: String,
    #[serde(deserialize_with = "numeric_date")]
    pub(crate) exp: u64,
    #[serde(default, rename = "plexus")]
    pub(crate) capabilities: Option<serde_json::Value>,
}

impl Claims {
    /// Reads the claims from a payload that `jsonwebtoken` has validated.
    pub(crate) fn from_payload(payload: serde_json::Value) -> Result<Claims, InvalidToken> {
        let claims: Claims =
            serde_json::from_value(payload).map_err(|_| InvalidToken::Malformed)?;
        check_subject(&claims.sub)?;
        Ok(claims)
    }

    /// Parses the capabilities claim.
    pub(crate) fn capabilities(&self) -> Result<Capabilities, InvalidToken> {
        match &self.capabilities {
            None | Some(serde_json::Value::Null) => Ok(Capabilities::default()),
            Some(value) => CapabilityClaim::deserialize(value)
                .map_err(|_| InvalidToken::BadCapabilities)?
                .parse()
                .map_err(|_| InvalidToken::BadCapabilities),
        }
    }
}

/// Checks `sub`: non-empty and at most [`MAX_SUBJECT_LEN`] bytes.
pub(crate) fn check_subject(sub: &str) -> Result<(), InvalidToken> {
    if sub.is_empty() {
        Err(InvalidToken::MissingSubject)
    } else if sub.len() > MAX_SUBJECT_LEN {
        Err(InvalidToken::BadSubject)
    } else {
        Ok(())
    }
}

/// The `plexus` claim as it appears in the token.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct CapabilityClaim {
    #[serde(default, rename = "sub", skip_serializing_if = "Vec::is_empty")]
    pub(crate) subscribe: Vec<String>,
    #[serde(default, rename = "pub", skip_serializing_if = "Vec::is_empty")]
    pub(crate) publish: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) presence: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) sync_read: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) sync_write: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rpc_register: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) rpc_call: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub(crate) rpc_admin: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Why a capability claim is invalid.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum CapabilityError {
    /// A list holds more than [`MAX_CAPABILITY_PATTERNS`] patterns.
    TooMany,
    /// A pattern does not parse.
    Pattern {
        list: &'static str,
        pattern: String,
        error: TopicError,
    },
}

impl CapabilityClaim {
    /// Parses every pattern.
    pub(crate) fn parse(&self) -> Result<Capabilities, CapabilityError> {
        Ok(Capabilities {
            subscribe: parse_patterns("sub", &self.subscribe)?,
            publish: parse_patterns("pub", &self.publish)?,
            presence: self.presence,
            sync_read: parse_patterns("sync_read", &self.sync_read)?,
            sync_write: parse_patterns("sync_write", &self.sync_write)?,
            rpc_register: parse_patterns("rpc_register", &self.rpc_register)?,
            rpc_call: parse_patterns("rpc_call", &self.rpc_call)?,
            rpc_admin: self.rpc_admin,
            claims: None,
        })
    }
}

fn parse_patterns(list: &'static str, raw: &[String]) -> Result<Vec<Pattern>, CapabilityError> {
    if raw.len() > MAX_CAPABILITY_PATTERNS {
        return Err(CapabilityError::TooMany);
    }
    raw.iter()
        .map(|p| {
            Pattern::parse(p, MAX_TOPIC_LEN).map_err(|error| CapabilityError::Pattern {
                list,
                pattern: p.clone(),
                error,
            })
        })
        .collect()
}

/// The claims written by [`mint_hs`](super::mint::mint_hs).
#[derive(Debug, Serialize)]
pub(crate) struct MintClaims<'a> {
    pub(crate) sub: &'a str,
    pub(crate) iat: u64,
    pub(crate) nbf: u64,
    pub(crate) exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) aud: Option<&'a str>,
    pub(crate) plexus: &'a CapabilityClaim,
}

/// A JWT NumericDate: a non-negative integer, or a float rounded as
/// `jsonwebtoken` does when it validates `exp`.
fn numeric_date<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = serde_json::Number::deserialize(d)?;
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    match n.as_f64() {
        // The range check makes the cast exact up to rounding.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => Ok(f.round() as u64),
        _ => Err(serde::de::Error::custom("invalid NumericDate")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps(v: serde_json::Value) -> Result<Capabilities, InvalidToken> {
        Claims::from_payload(json!({"sub": "u", "exp": 1, "plexus": v}))
            .unwrap()
            .capabilities()
    }

    #[test]
    fn capability_claim_parsing() {
        let c = caps(json!({"sub": ["chat.>", "a.*"], "pub": ["chat.room1"], "presence": true}))
            .unwrap();
        assert_eq!(c.subscribe.len(), 2);
        assert_eq!(c.publish[0].as_str(), "chat.room1");
        assert!(c.presence);
        assert!(c.sync_read.is_empty() && c.sync_write.is_empty());

        let c = caps(json!({"sync_read": ["team.*"], "sync_write": ["user.a.>", "x"]})).unwrap();
        assert_eq!(c.sync_read[0].as_str(), "team.*");
        assert_eq!(c.sync_write.len(), 2);
        assert!(c.subscribe.is_empty() && c.publish.is_empty());

        // Absent fields allow nothing; unknown fields are ignored.
        let c = caps(json!({"rpc_register": ["svc.>"], "rpc_call": ["svc.a"], "rpc_admin": true}))
            .unwrap();
        assert_eq!(c.rpc_register[0].as_str(), "svc.>");
        assert_eq!(c.rpc_call[0].as_str(), "svc.a");
        assert!(c.rpc_admin);
        assert!(caps(json!({"rpc_call": ["a..b"]})).is_err());

        let c = caps(json!({"pub": ["x"], "future": 1})).unwrap();
        assert!(c.subscribe.is_empty() && !c.presence);
        assert_eq!(caps(json!(null)).unwrap(), Capabilities::default());
        let c = Claims::from_payload(json!({"sub": "u", "exp": 1}))
            .unwrap()
            .capabilities()
            .unwrap();
        assert_eq!(c, Capabilities::default());

        for bad in [
            json!({"sub": ["chat.>.x"]}),
            json!({"pub": ["a b"]}),
            json!({"pub": [""]}),
            json!({"sub": "chat.>"}),
            json!({"sub": [1]}),
            json!({"presence": "yes"}),
            json!({"sync_read": ["a..b"]}),
            json!({"sync_write": "user.>"}),
            json!({"sync_write": vec!["a"; MAX_CAPABILITY_PATTERNS + 1]}),
            json!(["chat.>"]),
            json!("everything"),
            json!({"sub": vec!["a"; MAX_CAPABILITY_PATTERNS + 1]}),
        ] {
            assert_eq!(
                caps(bad.clone()),
                Err(InvalidToken::BadCapabilities),
                "{bad}"
            );
        }
    }

    #[test]
    fn subject_and_dates() {
        assert_eq!(
            Claims::from_payload(json!({"sub": "", "exp": 1})).unwrap_err(),
            InvalidToken::MissingSubject
        );
        let long = "x".repeat(MAX_SUBJECT_LEN + 1);
        assert_eq!(
            Claims::from_payload(json!({"sub": long, "exp": 1})).unwrap_err(),
            InvalidToken::BadSubject
        );
        assert!(
            Claims::from_payload(json!({"sub": "x".repeat(MAX_SUBJECT_LEN), "exp": 1})).is_ok()
        );
        assert_eq!(
            Claims::from_payload(json!({"sub": "u", "exp": 10.6}))
                .unwrap()
                .exp,
            11
        );
        assert_eq!(
            Claims::from_payload(json!({"sub": "u", "exp": -1})).unwrap_err(),
            InvalidToken::Malformed
        );
    }

    #[test]
    fn mint_claims_shape() {
        let cap = CapabilityClaim {
            subscribe: vec!["a.>".into()],
            publish: vec![],
            presence: false,
            sync_read: vec![],
            sync_write: vec!["u.>".into()],
            ..CapabilityClaim::default()
        };
        let c = MintClaims {
            sub: "u",
            iat: 1,
            nbf: 1,
            exp: 2,
            iss: None,
            aud: Some("hub"),
            plexus: &cap,
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"sub": "u", "iat": 1, "nbf": 1, "exp": 2, "aud": "hub", "plexus": {"sub": ["a.>"], "sync_write": ["u.>"]}})
        );
    }
}
