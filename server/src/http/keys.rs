//! API keys of the server API (decision W2): configured in the `[http]`
//! table, separate from user tokens, each scoped to operations and to
//! topic, space and procedure patterns. A presented key is hashed with
//! SHA-256 and compared with every configured digest in constant time;
//! keys and digests are never logged.

use std::sync::Arc;

use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::auth::{Capabilities, Principal};

/// One `[[http.api-keys]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ApiKeyConfig {
    /// The key's name: logs and metrics show it, never the key.
    pub name: String,
    /// The SHA-256 digest of the key, in hex (preferred: the config file
    /// then holds no secret). `plexus api-key` prints a new key and its
    /// digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_sha256: Option<String>,
    /// The key itself (masked by `plexus config`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// The operations it may run (see [`Op`]), or `"*"` for all.
    pub operations: Vec<String>,
    /// Topic patterns it may publish to and read (history, latest,
    /// presence).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Record-sync space patterns it may push to and pull from, on behalf
    /// of any user.
    #[serde(default)]
    pub spaces: Vec<String>,
    /// Procedure patterns it may call.
    #[serde(default)]
    pub procedures: Vec<String>,
}

macro_rules! ops {
    ($( $(#[$doc:meta])* $v:ident = $name:literal, )*) => {
        /// A server API operation, as named in a key's `operations`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Op { $( $(#[$doc])* $v, )* }
        impl Op {
            /// Every operation.
            pub const ALL: &'static [Op] = &[$( Op::$v, )*];
            /// Its name in `operations`.
            pub fn name(self) -> &'static str { match self { $( Op::$v => $name, )* } }
            /// Parses a name.
            pub fn from_name(s: &str) -> Option<Op> { match s { $( $name => Some(Op::$v), )* _ => None } }
        }
    };
}

ops! {
    /// `publish`.
    Publish = "publish",
    /// `broadcast`.
    Broadcast = "broadcast",
    /// `history`.
    History = "history",
    /// `latest`.
    Latest = "latest",
    /// `presence`.
    Presence = "presence",
    /// `disconnect`.
    Disconnect = "disconnect",
    /// `sync.push` and `sync.pull`.
    Sync = "sync",
    /// `call`.
    Call = "call",
    /// `streams`.
    Streams = "streams",
}

/// A configured key, ready to check.
#[derive(Debug)]
pub struct ApiKey {
    /// Its name.
    pub name: String,
    digest: [u8; 32],
    ops: Vec<Op>,
    /// The principal its operations run as (user `api:NAME`).
    pub principal: Principal,
    /// The capabilities a sync on behalf of a user gets.
    pub sync_caps: Arc<Capabilities>,
    /// The procedures it may call.
    pub procedures: Vec<Pattern>,
}

impl ApiKey {
    /// Whether the key may run `op`.
    pub fn allows(&self, op: Op) -> bool {
        self.ops.contains(&op)
    }

    /// The principal of a sync on behalf of `user`.
    pub fn sync_principal(&self, user: &str) -> Principal {
        Principal {
            user: user.into(),
            caps: self.sync_caps.clone(),
            expires_at: None,
        }
    }
}

/// Why the `[http]` keys cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyConfigError {
    /// A key has neither or both of `secret` and `secret-sha256`, or a
    /// digest that is not 64 hex digits.
    #[error("api key {0:?}: give exactly one of secret and secret-sha256 (64 hex digits)")]
    Secret(String),
    /// An unknown operation name.
    #[error("api key {0:?}: unknown operation {1:?}")]
    Operation(String, String),
    /// A pattern that does not parse.
    #[error("api key {0:?}: invalid pattern {1:?}")]
    Pattern(String, String),
    /// Two keys with one name or one secret.
    #[error("api key {0:?}: its name or secret is used by another key")]
    Duplicate(String),
    /// A secret too short to resist guessing.
    #[error("api key {0:?}: a secret needs at least 24 characters")]
    Short(String),
}

/// The configured keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    keys: Vec<Arc<ApiKey>>,
}

fn patterns(name: &str, v: &[String]) -> Result<Vec<Pattern>, KeyConfigError> {
    v.iter()
        .map(|p| {
            Pattern::parse(p, MAX_TOPIC_LEN)
                .map_err(|_| KeyConfigError::Pattern(name.into(), p.clone()))
        })
        .collect()
}

/// The SHA-256 digest of `secret`, in hex.
pub fn digest_hex(secret: &str) -> String {
    use std::fmt::Write;
    Sha256::digest(secret.as_bytes())
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl ApiKeys {
    /// Checks and prepares the configured keys.
    pub fn new(config: &[ApiKeyConfig]) -> Result<ApiKeys, KeyConfigError> {
        let mut keys: Vec<Arc<ApiKey>> = Vec::new();
        for k in config {
            let digest = match (&k.secret, &k.secret_sha256) {
                (Some(s), None) if s.len() < 24 => {
                    return Err(KeyConfigError::Short(k.name.clone()));
                }
                (Some(s), None) => Sha256::digest(s.as_bytes()).into(),
                (None, Some(h)) => parse_hex(&h.to_ascii_lowercase())
                    .ok_or_else(|| KeyConfigError::Secret(k.name.clone()))?,
                _ => return Err(KeyConfigError::Secret(k.name.clone())),
            };
            let mut ops = Vec::new();
            for o in &k.operations {
                if o == "*" {
                    ops.extend_from_slice(Op::ALL);
                } else {
                    ops.push(
                        Op::from_name(o)
                            .ok_or_else(|| KeyConfigError::Operation(k.name.clone(), o.clone()))?,
                    );
                }
            }
            let topics = patterns(&k.name, &k.topics)?;
            let spaces = patterns(&k.name, &k.spaces)?;
            let procedures = patterns(&k.name, &k.procedures)?;
            let has = |o| ops.contains(&o);
            let reads = has(Op::History) || has(Op::Latest) || has(Op::Presence);
            let writes = has(Op::Publish) || has(Op::Broadcast);
            let sync = has(Op::Sync);
            let user: Arc<str> = format!("api:{}", k.name).into();
            let caps = Capabilities {
                subscribe: if reads { topics.clone() } else { Vec::new() },
                publish: if writes { topics.clone() } else { Vec::new() },
                rpc_call: if has(Op::Call) {
                    procedures.clone()
                } else {
                    Vec::new()
                },
                claims: Some(
                    serde_json::json!({"sub": &*user, "api_key": &k.name})
                        .to_string()
                        .into(),
                ),
                ..Capabilities::default()
            };
            let sync_caps = Capabilities {
                sync_read: if sync { spaces.clone() } else { Vec::new() },
                sync_write: if sync { spaces } else { Vec::new() },
                ..Capabilities::default()
            };
            if keys
                .iter()
                .any(|o| o.name == k.name || bool::from(o.digest.ct_eq(&digest)))
            {
                return Err(KeyConfigError::Duplicate(k.name.clone()));
            }
            keys.push(Arc::new(ApiKey {
                name: k.name.clone(),
                digest,
                ops,
                principal: Principal {
                    user,
                    caps: Arc::new(caps),
                    expires_at: None,
                },
                sync_caps: Arc::new(sync_caps),
                procedures,
            }));
        }
        Ok(ApiKeys { keys })
    }

    /// Whether any key is configured (the server API is off otherwise).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key `presented` is, if any. Every configured digest is compared,
    /// in constant time, whichever matches.
    pub fn find(&self, presented: &str) -> Option<Arc<ApiKey>> {
        let d: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for k in &self.keys {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k.clone());
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, secret: &str, ops: &[&str], topics: &[&str]) -> ApiKeyConfig {
        ApiKeyConfig {
            name: name.into(),
            secret_sha256: None,
            secret: Some(secret.into()),
            operations: ops.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            spaces: vec![],
            procedures: vec![],
        }
    }

    #[test]
    fn keys_are_found_by_secret_and_scoped_by_operation_and_pattern() {
        let mut hashed = key("b", "x", &["history"], &["users.>"]);
        hashed.secret = None;
        hashed.secret_sha256 = Some(digest_hex("a-secret-for-the-users-key"));
        let keys = ApiKeys::new(&[
            key(
                "a",
                "a-secret-for-the-orders-key",
                &["publish"],
                &["orders.*"],
            ),
            hashed,
        ])
        .unwrap();
        let a = keys.find("a-secret-for-the-orders-key").unwrap();
        assert_eq!(a.name, "a");
        assert!(a.allows(Op::Publish) && !a.allows(Op::History));
        let caps = &a.principal.caps;
        assert!(caps.can_publish(&plexus_protocol::topic::Topic::parse("orders.1", 256).unwrap()));
        assert!(!caps.can_publish(&plexus_protocol::topic::Topic::parse("users.1", 256).unwrap()));
        assert!(caps.subscribe.is_empty(), "publish alone grants no reads");
        assert_eq!(keys.find("a-secret-for-the-users-key").unwrap().name, "b");
        assert!(keys.find("a-secret-for-the-orders-kez").is_none());
        assert!(keys.find("").is_none());
    }

    #[test]
    fn bad_key_tables_are_refused_with_the_key_named() {
        let e = |c: ApiKeyConfig| ApiKeys::new(&[c]).unwrap_err();
        assert!(
            matches!(e(key("s", "short", &["publish"], &[])), KeyConfigError::Short(n) if n == "s")
        );
        let long = "a-long-enough-secret-value";
        assert!(matches!(
            e(key("o", long, &["publsh"], &[])),
            KeyConfigError::Operation(..)
        ));
        assert!(matches!(
            e(key("p", long, &["*"], &["a..b"])),
            KeyConfigError::Pattern(..)
        ));
        let mut both = key("x", long, &["*"], &[]);
        both.secret_sha256 = Some(digest_hex(long));
        assert!(matches!(e(both), KeyConfigError::Secret(_)));
        let dup = ApiKeys::new(&[key("d", long, &["*"], &[]), key("e", long, &["*"], &[])]);
        assert!(matches!(dup.unwrap_err(), KeyConfigError::Duplicate(n) if n == "e"));
    }
}
