//! The HTTP surface (issue 13): the server API for application backends
//! (`/v1/api/…`, API keys), one-shot RPC with a user token
//! (`POST /v1/rpc/{method}`), and SSE that resumes exactly (`GET /v1/sse`).
//! `docs/http.md` is the reference; decisions W1–W12 say why.
//!
//! | module | what it holds |
//! |---|---|
//! | [`local`] | in-process sessions: every HTTP operation runs through the session core |
//! | [`keys`] | API keys: digests, scopes, the principal they run as |
//! | [`api`] | the server API's operations and the OpenAPI document |
//! | [`rpc`] | `POST /v1/rpc/{method}` |
//! | [`sse`] | `GET /v1/sse` and its signed resume ids |
//! | [`body`] | content negotiation: JSON or CBOR bodies, bounded reads |
//! | [`payload`] | opaque CBOR values inside body documents |
//! | [`status`] | the one error code → HTTP status table |

pub mod api;
pub mod body;
pub mod keys;
pub mod local;
pub mod payload;
pub mod rpc;
pub mod sse;
pub mod status;

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use sha2::Digest;

use crate::config::Config;
use crate::hub::Hub;

/// The body of every response of the hub's HTTP listener.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// A complete body.
pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed_unsync()
}

/// What the HTTP surface keeps for the life of the hub.
#[derive(Debug)]
pub struct HttpState {
    /// The server API's keys.
    pub keys: keys::ApiKeys,
    /// The key SSE resume ids are signed with.
    resume_key: [u8; 32],
    /// Idle in-process sessions of API keys, by key name, reused by later
    /// requests (at most [`POOL_PER_KEY`] per key).
    pool: parking_lot::Mutex<std::collections::HashMap<String, Vec<local::LocalSession>>>,
    /// Set by [`clear_pool`](Self::clear_pool): nothing is pooled any more.
    shutting_down: std::sync::atomic::AtomicBool,
}

/// Idle sessions kept per API key: they count against the key's
/// `max-connections-per-user`.
pub const POOL_PER_KEY: usize = 16;

impl HttpState {
    /// Prepares the keys (already validated by [`Config::validate`]; a key
    /// table that does not validate serves no key) and the resume key.
    pub fn new(config: &Config) -> HttpState {
        let keys = keys::ApiKeys::new(&config.http.api_keys).unwrap_or_default();
        HttpState {
            keys,
            resume_key: resume_key(config),
            pool: Default::default(),
            shutting_down: Default::default(),
        }
    }

    /// Drops every pooled session (shutdown): each pipe closes, so each
    /// session ends without waiting for a closing handshake.
    pub fn clear_pool(&self) {
        self.shutting_down
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let sessions: Vec<_> = self.pool.lock().drain().collect();
        drop(sessions);
    }

    /// An idle session of key `name`, if one is pooled.
    pub fn take_session(&self, name: &str) -> Option<local::LocalSession> {
        self.pool.lock().get_mut(name).and_then(Vec::pop)
    }

    /// Returns a session to key `name`'s pool, or closes it when the pool
    /// is full.
    pub async fn give_session(&self, name: &str, s: local::LocalSession) {
        if self
            .shutting_down
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            return s.close().await;
        }
        let spare = {
            let mut pool = self.pool.lock();
            let v = pool.entry(name.to_owned()).or_default();
            if v.len() < POOL_PER_KEY {
                v.push(s);
                None
            } else {
                Some(s)
            }
        };
        if let Some(s) = spare {
            s.close().await;
        }
    }

    /// The key SSE resume ids are signed with.
    pub fn resume_key(&self) -> &[u8; 32] {
        &self.resume_key
    }
}

/// The resume-id key: from `resume-secret`, else derived from the HMAC
/// token key (`jwt-secret` or the development key file), else random
/// (decision W9).
fn resume_key(config: &Config) -> [u8; 32] {
    let derive = |seed: &[u8]| -> [u8; 32] {
        let mut h = sha2::Sha256::new();
        h.update(b"plexus.v1 sse resume ids\0");
        h.update(seed);
        h.finalize().into()
    };
    if !config.http.resume_secret.is_empty() {
        return derive(config.http.resume_secret.as_bytes());
    }
    if !config.jwt_secret.is_empty() {
        return derive(config.jwt_secret.as_bytes());
    }
    let dev = config.data_dir.join(crate::auth::devkey::DEV_KEY_FILE);
    if let Ok(text) = std::fs::read(&dev)
        && text.len() <= 4096
    {
        return derive(&text);
    }
    rand::random()
}

/// Serves the HTTP surface's paths; `None` for a path it does not own.
pub async fn route(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    peer: std::net::SocketAddr,
) -> Result<Response<Body>, Request<Incoming>> {
    let path = req.uri().path();
    if path == "/v1/sse" {
        return Ok(sse::handle(req, hub, peer).await);
    }
    if let Some(method) = path.strip_prefix("/v1/rpc/") {
        let method = method.to_owned();
        return Ok(rpc::handle(req, hub, peer, &method).await);
    }
    if path.starts_with("/v1/api/") || path == "/v1/api" {
        return Ok(api::handle(req, hub, peer).await);
    }
    Err(req)
}
