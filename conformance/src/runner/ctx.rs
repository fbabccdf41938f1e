//! What a case gets: the server's settings, unique names, tokens, and
//! connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value as Json, json};

use super::{RunError, Settings};
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::conn::{AuthInfo, Conn};
use crate::frame::{ErrorObject, Item};
use crate::ws::{Handshake, HandshakeReply, Target, connect};
use crate::{ensure, fail, skip};

/// The `agent` the runner sends in `auth`.
pub const AGENT: &str = concat!("plexus-conformance/", env!("CARGO_PKG_VERSION"));

/// How long a handshake may take.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);

/// The limits the server announced (§10); the keys beyond 8 are `None`
/// when absent.
#[derive(Debug, Clone, Default)]
pub struct Limits {
    /// Key 0.
    pub max_frame_size: u64,
    /// Key 1.
    pub max_in_flight: u64,
    /// Key 2.
    pub max_subscriptions: u64,
    /// Key 3.
    pub max_topic_len: u64,
    /// Key 4.
    pub max_payload: u64,
    /// Key 5.
    pub max_presence_info: u64,
    /// Key 6.
    pub ping_interval_ms: u64,
    /// Key 7.
    pub rate_per_sec: u64,
    /// Key 8.
    pub rate_burst: u64,
    /// Key 9 (P13).
    pub max_depth: Option<u64>,
    /// Key 10 (P13).
    pub max_presence_page: Option<u64>,
    /// Key 11 (P3).
    pub max_in_flight_bytes: Option<u64>,
}

impl Limits {
    /// Reads the limits map; every key 0–8 must be present (§10).
    pub fn parse(v: &Value) -> Result<Limits, String> {
        crate::frame::typed_map(v)?;
        let need = |k: u64| {
            v.get(k)
                .and_then(Value::as_u64)
                .ok_or_else(|| format!("limits {v} lacks key {k} (a uint)"))
        };
        let opt = |k: u64| v.opt(k).and_then(Value::as_u64);
        Ok(Limits {
            max_frame_size: need(0)?,
            max_in_flight: need(1)?,
            max_subscriptions: need(2)?,
            max_topic_len: need(3)?,
            max_payload: need(4)?,
            max_presence_info: need(5)?,
            ping_interval_ms: need(6)?,
            rate_per_sec: need(7)?,
            rate_burst: need(8)?,
            max_depth: opt(9),
            max_presence_page: opt(10),
            max_in_flight_bytes: opt(11),
        })
    }

    /// The depth limit in force: key 9, or 32 (§4.4).
    pub fn depth(&self) -> u64 {
        self.max_depth.unwrap_or(32)
    }

    /// The presence page cap: key 10, or 1000 (§11.7).
    pub fn presence_page(&self) -> u64 {
        self.max_presence_page.unwrap_or(1000)
    }
}

/// Shared by every case of a run.
#[derive(Debug)]
pub struct Env {
    /// The settings.
    pub settings: Settings,
    /// The parsed URL.
    pub target: Target,
    /// The limits announced to the probe connection.
    pub limits: Limits,
    /// A short random id, part of every user and topic name of the run.
    pub run: String,
}

impl Env {
    /// Connects and authenticates once, to learn the limits.
    pub async fn probe(settings: Settings) -> Result<Env, RunError> {
        let target = Target::parse(&settings.url).map_err(RunError::Url)?;
        let mut env = Env {
            settings,
            target,
            limits: Limits::default(),
            run: format!("{:04x}", rand::random::<u16>()),
        };
        let ctx = Ctx {
            env: Arc::new(Env {
                settings: env.settings.clone(),
                target: env.target.clone(),
                limits: Limits::default(),
                run: env.run.clone(),
            }),
            case: "probe".into(),
            n: Arc::new(AtomicU64::new(0)),
        };
        let fail = |why: String| RunError::Probe {
            url: env.settings.url.clone(),
            why,
        };
        let conn = ctx.client("probe").await.map_err(|e| fail(e.to_string()))?;
        let info = conn
            .auth
            .clone()
            .ok_or_else(|| fail("no auth result".into()))?;
        env.limits = Limits::parse(&info.limits).map_err(fail)?;
        Ok(env)
    }
}

/// One case's view of the run.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The shared environment.
    pub env: Arc<Env>,
    case: String,
    n: Arc<AtomicU64>,
}

/// Seconds since the Unix epoch, as a float.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// Whole seconds since the Unix epoch.
pub fn unix_secs() -> i64 {
    // Seconds since 1970 fit an i64 for billions of years.
    #[allow(clippy::cast_possible_truncation)]
    {
        unix_now().floor() as i64
    }
}

impl Ctx {
    /// The context of case `case`.
    pub fn new(env: Arc<Env>, case: &str) -> Ctx {
        Ctx {
            env,
            case: case.to_owned(),
            n: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.env.settings
    }

    /// The announced limits.
    pub fn limits(&self) -> &Limits {
        &self.env.limits
    }

    /// A topic namespace unique to this case and run: `conf.{run}.{case}`.
    pub fn ns(&self) -> String {
        format!("conf.{}.{}", self.env.run, self.case)
    }

    /// A topic in this case's namespace.
    pub fn topic(&self, suffix: &str) -> String {
        format!("{}.{suffix}", self.ns())
    }

    /// This case's namespace under `prefix` (e.g. a durable namespace's
    /// `conf.durable.`): `{prefix}{run}.{case}`; a `.` is added to a prefix
    /// that lacks it.
    pub fn ns_under(&self, prefix: &str) -> String {
        let dot = if prefix.ends_with('.') { "" } else { "." };
        format!("{prefix}{dot}{}.{}", self.env.run, self.case)
    }

    /// A user name unique to this case and run.
    pub fn user(&self, tag: &str) -> String {
        format!("{}-{}-{tag}", self.env.run, self.case)
    }

    /// A number unique within this case.
    pub fn unique(&self) -> u64 {
        self.n.fetch_add(1, Ordering::SeqCst)
    }

    /// Claims for `sub` allowed everything (`>` for the pub/sub and the
    /// record-sync capabilities, and presence), valid for an hour, with the
    /// configured `iss` and `aud`.
    pub fn claims(&self, sub: &str) -> Json {
        let now = unix_secs();
        let mut c = json!({
            "sub": sub,
            "iat": now,
            "exp": now + 3600,
            "plexus": {
                "sub": [">"], "pub": [">"], "presence": true,
                "sync_read": [">"], "sync_write": [">"],
            },
        });
        if let Some(iss) = &self.env.settings.issuer {
            c["iss"] = json!(iss);
        }
        if let Some(aud) = &self.env.settings.audience {
            c["aud"] = json!(aud);
        }
        c
    }

    /// Claims with the given capabilities.
    pub fn claims_caps(
        &self,
        sub: &str,
        subscribe: &[&str],
        publish: &[&str],
        presence: bool,
    ) -> Json {
        let mut c = self.claims(sub);
        c["plexus"] = json!({"sub": subscribe, "pub": publish, "presence": presence});
        c
    }

    /// A token for `claims`.
    pub async fn token(&self, claims: &Json) -> CaseResult<String> {
        self.env
            .settings
            .tokens
            .sign(claims)
            .await
            .map_err(|e| CaseError::Fail(format!("getting a token: {e}")))
    }

    /// The HMAC secret, or a skip for cases that need to sign tokens the
    /// token command would not (other algorithms).
    pub fn secret(&self) -> CaseResult<Vec<u8>> {
        match self.env.settings.tokens.secret() {
            Some(k) => Ok(k.to_vec()),
            None => skip!("needs --hs256-secret-file to sign tokens itself"),
        }
    }

    /// Skips unless waiting `d` is allowed (`--max-wait-ms`).
    pub fn require_wait(&self, d: Duration, what: &str) -> CaseResult {
        if d > self.env.settings.max_wait {
            skip!(
                "{what} would take {} ms, more than --max-wait-ms {}; start the server with shorter settings and pass them",
                d.as_millis(),
                self.env.settings.max_wait.as_millis()
            );
        }
        Ok(())
    }

    /// The timing slack.
    pub fn tolerance(&self) -> Duration {
        self.env.settings.tolerance
    }

    /// An opening handshake with these headers.
    pub async fn handshake(&self, hs: &Handshake) -> CaseResult<(HandshakeReply, Option<Conn>)> {
        match tokio::time::timeout(HANDSHAKE_WAIT, connect(&self.env.target, hs)).await {
            Err(_) => fail!("the handshake did not complete within {HANDSHAKE_WAIT:?}"),
            Ok(Err(e)) => fail!("{e}"),
            Ok(Ok((reply, halves))) => Ok((reply, halves.map(|(r, w)| Conn::new(r, w)))),
        }
    }

    /// The usual handshake: `plexus.v1` offered and selected (§3.1).
    pub async fn connect_with(&self, mut hs: Handshake) -> CaseResult<Conn> {
        if hs.protocols.is_none() {
            hs.protocols = Some("plexus.v1".into());
        }
        let (reply, conn) = self.handshake(&hs).await?;
        let Some(conn) = conn else {
            fail!(
                "the handshake was refused with {} {:?}",
                reply.status,
                String::from_utf8_lossy(&reply.body)
            );
        };
        ensure!(
            reply.header("sec-websocket-protocol") == Some("plexus.v1"),
            "the 101 selected {:?}, not plexus.v1 (§3.1)",
            reply.header("sec-websocket-protocol")
        );
        Ok(conn)
    }

    /// A connection, not authenticated.
    pub async fn connect(&self) -> CaseResult<Conn> {
        self.connect_with(Handshake::default()).await
    }

    /// Sends `auth` with `token` and returns its outcome; on success the
    /// connection takes the announced frame size and depth.
    pub async fn auth(
        &self,
        conn: &mut Conn,
        token: &str,
    ) -> CaseResult<Result<AuthInfo, ErrorObject>> {
        self.auth_params(conn, auth_params(token, None)).await
    }

    /// `auth` with any params.
    pub async fn auth_params(
        &self,
        conn: &mut Conn,
        params: Value,
    ) -> CaseResult<Result<AuthInfo, ErrorObject>> {
        let r = conn.call("auth", &params).await?;
        Ok(match r {
            Ok(item) => {
                let info = auth_info(&item)?;
                if let Ok(l) = Limits::parse(&info.limits) {
                    conn.max_frame = usize::try_from(l.max_frame_size).unwrap_or(usize::MAX);
                    conn.max_depth = usize::try_from(l.depth()).unwrap_or(usize::MAX);
                }
                conn.auth = Some(info.clone());
                Ok(info)
            }
            Err(e) => Err(e),
        })
    }

    /// A connection authenticated with `claims`.
    pub async fn client_with(&self, claims: &Json) -> CaseResult<Conn> {
        let token = self.token(claims).await?;
        let mut conn = self.connect().await?;
        match self.auth(&mut conn, &token).await? {
            Ok(_) => Ok(conn),
            Err(e) => fail!("auth with a valid token failed: {} ({})", e.code, e.message),
        }
    }

    /// A connection of user `self.user(tag)`, allowed everything.
    pub async fn client(&self, tag: &str) -> CaseResult<Conn> {
        self.client_with(&self.claims(&self.user(tag))).await
    }

    /// Calls a `debug.*` method; a server without it skips the case.
    pub async fn debug(
        &self,
        conn: &mut Conn,
        method: &str,
        params: &Value,
    ) -> CaseResult<Result<Item, ErrorObject>> {
        let r = conn.call(method, params).await?;
        if let Err(e) = &r
            && e.code == "method_not_found"
        {
            skip!(
                "the server answers method_not_found for {method} (a test-only method: plexus serves debug.* in debug builds started with --debug-methods; this server lacks it)"
            );
        }
        Ok(r)
    }

    /// Sends a `debug.*` request without waiting; pair with
    /// [`Ctx::debug_check`] on its response.
    pub fn debug_check(&self, method: &str, r: &Result<Item, ErrorObject>) -> CaseResult {
        if let Err(e) = r
            && e.code == "method_not_found"
        {
            skip!(
                "the server answers method_not_found for {method} (a test-only method: plexus serves debug.* in debug builds started with --debug-methods; this server lacks it)"
            );
        }
        Ok(())
    }
}

/// `auth` params `{0: token, ? 1: instance, 2: agent}`.
pub fn auth_params(token: &str, instance: Option<&str>) -> Value {
    let mut m = vec![(0, Value::text(token))];
    if let Some(i) = instance {
        m.push((1, Value::text(i)));
    }
    m.push((2, Value::text(AGENT)));
    Value::map(m)
}

/// Checks and reads an `auth` result (§11.1).
pub fn auth_info(item: &Item) -> CaseResult<AuthInfo> {
    let v = &item.value;
    crate::frame::typed_map(v).map_err(|e| CaseError::Fail(format!("auth result: {e}")))?;
    let session = match v.get(0) {
        Some(Value::Text(s)) if !s.is_empty() => s.clone(),
        other => fail!("auth result key 0 (session) is {other:?}, not a non-empty text (§11.1)"),
    };
    let user = match v.get(1) {
        Some(Value::Text(s)) => s.clone(),
        other => fail!("auth result key 1 (user) is {other:?}, not a text (§11.1)"),
    };
    let expires_in_ms = match v.opt(2) {
        None => None,
        Some(Value::Uint(n)) => Some(*n),
        Some(o) => fail!("auth result key 2 (expires_in_ms) is {o}, not a uint"),
    };
    let Some(limits) = v.get(3) else {
        fail!("auth result has no limits (key 3, §11.1)");
    };
    Ok(AuthInfo {
        session,
        user,
        expires_in_ms,
        limits: limits.clone(),
        result: v.clone(),
    })
}
