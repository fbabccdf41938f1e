//! The server API (`/v1/api/…`) for application backends (decisions
//! W2–W5): operations with named fields in JSON or CBOR, authenticated by
//! an API key (`Authorization: Bearer KEY` or `X-Api-Key: KEY`), each run
//! as the key's principal through an in-process session — the same checks
//! and error codes as a client's request. The OpenAPI document is
//! generated from the types and handlers here ([`ApiDoc`]) and served at
//! `/v1/api/openapi.json`.

use std::sync::Arc;

use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use minicbor::Encoder;
use plexus_protocol::methods::{
    Direction, EventParams, HistoryLatestParams, HistoryLatestResult, HistoryParams, HistoryResult,
    PresenceGetParams, PresenceGetResult, PublishParams, PublishResult,
};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use plexus_protocol::{CloseCode, ErrorCode, RawValue, WireError};
use serde::{Deserialize, Serialize};
use utoipa::{OpenApi, ToSchema};

use super::body::{self, ErrorBody, ErrorDoc, Format};
use super::keys::{ApiKey, Op};
use super::local::{Answer, LocalError, LocalSession, Who};
use super::payload::Payload;
use super::{Body, full};
use crate::hub::Hub;

// ---------------------------------------------------------------- documents

/// `publish`: one event on one topic.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PublishReq {
    /// The topic (no wildcards).
    pub topic: String,
    /// The payload.
    pub data: Payload,
    /// Idempotency key (durable topics): a repeat within the retention is
    /// answered `duplicate: true` and stored once.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Publish only if the topic's last offset is this (durable topics).
    #[serde(default)]
    pub expected_offset: Option<u64>,
}

/// What a publish did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PublishResp {
    /// Subscribers it was delivered to on this hub.
    pub delivered: u64,
    /// Its offset (durable topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The topic's epoch (durable topics).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// A repeat of an earlier publish with the same idempotency key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
}

/// `broadcast`: one payload to several topics, each published on its own.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BroadcastReq {
    /// The topics.
    pub topics: Vec<String>,
    /// The payload.
    pub data: Payload,
}

/// One topic's outcome in a broadcast or batch: a result or an error.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Outcome<T> {
    /// It worked.
    Ok {
        /// The result.
        ok: T,
    },
    /// It failed.
    Err {
        /// The error.
        error: ErrorBody,
    },
}

impl<T> From<Result<T, WireError>> for Outcome<T> {
    fn from(r: Result<T, WireError>) -> Self {
        match r {
            Ok(ok) => Outcome::Ok { ok },
            Err(e) => Outcome::Err { error: (&e).into() },
        }
    }
}

/// What a broadcast did, per topic in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BroadcastResp {
    /// One outcome per topic.
    pub results: Vec<Outcome<PublishResp>>,
}

/// `history`: a page of a durable topic.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HistoryReq {
    /// The topic.
    pub topic: String,
    /// The first offset to read (backward: the last).
    #[serde(default)]
    pub from: Option<u64>,
    /// `forward` (default) or `backward`.
    #[serde(default)]
    pub direction: Option<String>,
    /// Events at most.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventDoc {
    /// Its topic.
    pub topic: String,
    /// Its payload.
    pub data: Payload,
    /// Who published it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// Its offset in the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Its position in the topic's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
}

/// A page of history.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct HistoryResp {
    /// The events.
    pub events: Vec<EventDoc>,
    /// The topic's epoch.
    pub epoch: String,
    /// Where the next page starts, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
    /// The first offset stored.
    pub first: u64,
    /// The last offset assigned.
    pub last: u64,
}

/// `latest`: the last event of each durable topic matching a pattern.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatestReq {
    /// The pattern.
    pub pattern: String,
    /// Topics after this one (paging).
    #[serde(default)]
    pub after: Option<String>,
    /// Topics at most.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// The latest events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct LatestResp {
    /// One event per topic.
    pub events: Vec<EventDoc>,
    /// The `after` of the next page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `presence`: who is on a topic.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PresenceReq {
    /// The topic.
    pub topic: String,
    /// The `next` of the previous page.
    #[serde(default)]
    pub cursor: Option<u64>,
    /// Members at most.
    #[serde(default)]
    pub limit: Option<u64>,
}

/// One member.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct MemberDoc {
    /// Its session.
    pub session: String,
    /// Its user.
    pub user: String,
    /// What it set with `presence.set`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<Payload>,
}

/// A page of members.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PresenceResp {
    /// The members.
    pub members: Vec<MemberDoc>,
    /// The cursor of the next page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

/// `disconnect`: close a user's connections, or one session.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DisconnectReq {
    /// The user.
    pub user: String,
    /// Only this session of the user.
    #[serde(default)]
    pub session: Option<String>,
    /// 4003 `forbidden` (default: do not come back), 4008 `going_away`
    /// (reconnect with backoff) or 1000 `normal`.
    #[serde(default)]
    pub code: Option<u16>,
}

/// What a disconnect did.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DisconnectResp {
    /// Connections asked to close.
    pub disconnected: u64,
}

/// `sync.push` / `sync.pull` on behalf of a user: the method's params as
/// the protocol defines them (§24; in JSON, integer keys as decimal
/// strings).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncReq {
    /// The user the records belong to and the push is attributed to.
    pub user: String,
    /// The method's params.
    pub params: Payload,
}

/// A sync method's result, as the protocol defines it (a streamed pull:
/// the chunks' data in order).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SyncResp {
    /// The result (a single value), or the chunks of a streamed one.
    pub result: Payload,
    /// Whether `result` is an array of the chunks of a streamed result.
    pub streamed: bool,
}

/// `call`: a client-registered procedure.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CallReq {
    /// The procedure.
    pub procedure: String,
    /// Its params.
    #[serde(default)]
    pub params: Option<Payload>,
    /// The call's deadline.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The affinity key (for `affinity` procedures).
    #[serde(default)]
    pub key: Option<String>,
}

/// A procedure's answer.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct CallResp {
    /// The result, or the array of its progressive results.
    pub result: Payload,
    /// Whether `result` is the array of a streamed answer's chunks.
    pub streamed: bool,
}

/// `streams`: the durable topics the key may read.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StreamsReq {
    /// Topics after this one (paging).
    #[serde(default)]
    pub after: Option<String>,
    /// Topics at most (default and maximum 1000).
    #[serde(default)]
    pub limit: Option<u32>,
}

/// One durable topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamDoc {
    /// The topic.
    pub topic: String,
    /// Events stored.
    pub events: u64,
    /// Their bytes.
    pub bytes: u64,
    /// The first offset stored.
    pub first: u64,
    /// The last offset assigned.
    pub last: u64,
    /// The epoch.
    pub epoch: String,
}

/// A page of durable topics.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StreamsResp {
    /// The topics.
    pub topics: Vec<StreamDoc>,
    /// The `after` of the next page, if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// One operation of a batch, named by its key.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum BatchOp {
    /// See `/v1/api/publish`.
    Publish(PublishReq),
    /// See `/v1/api/broadcast`.
    Broadcast(BroadcastReq),
    /// See `/v1/api/history`.
    History(HistoryReq),
    /// See `/v1/api/latest`.
    Latest(LatestReq),
    /// See `/v1/api/presence`.
    Presence(PresenceReq),
    /// See `/v1/api/disconnect`.
    Disconnect(DisconnectReq),
    /// See `/v1/api/sync/push`.
    SyncPush(SyncReq),
    /// See `/v1/api/sync/pull`.
    SyncPull(SyncReq),
    /// See `/v1/api/call`.
    Call(CallReq),
    /// See `/v1/api/streams`.
    Streams(StreamsReq),
}

/// `batch`: several operations in one request.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchReq {
    /// The operations.
    pub ops: Vec<BatchOp>,
    /// Run them concurrently (default: in order, one after the other,
    /// stopping at the first failure; the rest are answered `cancelled`).
    #[serde(default)]
    pub parallel: bool,
}

/// The result of any operation.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum OpResult {
    /// `publish`.
    Publish(PublishResp),
    /// `broadcast`.
    Broadcast(BroadcastResp),
    /// `history`.
    History(HistoryResp),
    /// `latest`.
    Latest(LatestResp),
    /// `presence`.
    Presence(PresenceResp),
    /// `disconnect`.
    Disconnect(DisconnectResp),
    /// `sync.push`, `sync.pull`.
    Sync(SyncResp),
    /// `call`.
    Call(CallResp),
    /// `streams`.
    Streams(StreamsResp),
}

/// What a batch did, one outcome per operation in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BatchResp {
    /// The outcomes.
    pub results: Vec<Outcome<OpResult>>,
}

// ---------------------------------------------------------------- OpenAPI

macro_rules! doc_path {
    ($name:ident, $path:literal, $req:ty, $resp:ty, $summary:literal) => {
        #[doc = $summary]
        #[utoipa::path(
            post,
            path = $path,
            summary = $summary,
            request_body(content = $req, content_type = "application/json"),
            responses(
                (status = 200, body = $resp, content_type = "application/json"),
                (status = "4XX", body = ErrorDoc, description = "the protocol's error codes, mapped as docs/http.md says"),
                (status = "5XX", body = ErrorDoc, description = "the protocol's retryable error codes"),
            ),
            security(("api_key" = [])),
        )]
        #[allow(dead_code)]
        fn $name() {}
    };
}

doc_path!(
    doc_publish,
    "/v1/api/publish",
    PublishReq,
    PublishResp,
    "Publish one event"
);
doc_path!(
    doc_broadcast,
    "/v1/api/broadcast",
    BroadcastReq,
    BroadcastResp,
    "Publish one payload to several topics"
);
doc_path!(
    doc_history,
    "/v1/api/history",
    HistoryReq,
    HistoryResp,
    "Read a page of a durable topic"
);
doc_path!(
    doc_latest,
    "/v1/api/latest",
    LatestReq,
    LatestResp,
    "The latest event of each durable topic of a pattern"
);
doc_path!(
    doc_presence,
    "/v1/api/presence",
    PresenceReq,
    PresenceResp,
    "Who is on a topic"
);
doc_path!(
    doc_disconnect,
    "/v1/api/disconnect",
    DisconnectReq,
    DisconnectResp,
    "Close a user's connections or one session"
);
doc_path!(
    doc_sync_push,
    "/v1/api/sync/push",
    SyncReq,
    SyncResp,
    "Record sync push on behalf of a user"
);
doc_path!(
    doc_sync_pull,
    "/v1/api/sync/pull",
    SyncReq,
    SyncResp,
    "Record sync pull on behalf of a user"
);
doc_path!(
    doc_call,
    "/v1/api/call",
    CallReq,
    CallResp,
    "Call a client-registered procedure"
);
doc_path!(
    doc_streams,
    "/v1/api/streams",
    StreamsReq,
    StreamsResp,
    "List durable topics"
);
doc_path!(
    doc_batch,
    "/v1/api/batch",
    BatchReq,
    BatchResp,
    "Several operations in one request"
);

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = openapi.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key of `[[http.api-keys]]`"))
                    .build(),
            ),
        );
    }
}

/// The server API's OpenAPI document.
///
/// ```
/// use utoipa::OpenApi;
/// let doc = plexus_server::http::api::ApiDoc::openapi();
/// assert!(doc.paths.paths.contains_key("/v1/api/publish"));
/// ```
#[derive(OpenApi)]
#[openapi(
    info(title = "Plexus server API", description = "The server API of the Plexus hub: docs/http.md"),
    paths(doc_publish, doc_broadcast, doc_history, doc_latest, doc_presence, doc_disconnect,
          doc_sync_push, doc_sync_pull, doc_call, doc_streams, doc_batch),
    components(schemas(ErrorDoc, ErrorBody, Payload)),
    modifiers(&Security),
)]
pub struct ApiDoc;

// ---------------------------------------------------------------- handling

pub(super) async fn handle(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let out = body::response_format(req.headers(), Format::Json);
    if hub.http.keys.is_empty() {
        let mut r = Response::new(full(
            "the server API is off: no [[http.api-keys]] configured\n",
        ));
        *r.status_mut() = StatusCode::NOT_FOUND;
        return r;
    }
    if path == "/v1/api/openapi.json" && req.method() == hyper::Method::GET {
        let mut r = Response::new(full(ApiDoc::openapi().to_json().unwrap_or_default()));
        r.headers_mut().insert(
            hyper::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return r;
    }
    if req.method() != hyper::Method::POST {
        let mut r = Response::new(full("use POST\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    let presented = body::bearer(req.headers())
        .or_else(|| req.headers().get("x-api-key").and_then(|v| v.to_str().ok()))
        .unwrap_or("")
        .to_owned();
    let Some(key) = hub.http.keys.find(&presented) else {
        return body::error(
            out,
            &WireError::new(ErrorCode::Unauthenticated, "a valid API key is required"),
        );
    };
    let fmt = match body::request_format(req.headers()) {
        Ok(f) => f,
        Err(e) => return body::error(out, &e),
    };
    let bytes = match body::read(req, super::rpc::body_limit(hub)).await {
        Ok(b) => b,
        Err(e) => return body::error(out, &e),
    };
    let op = match parse_op(&path, fmt, &bytes) {
        Ok(op) => op,
        Err(e) => return body::error(out, &e),
    };
    let mut cx = OpCx {
        hub: hub.clone(),
        peer,
        key,
        session: None,
    };
    let result = match op {
        Parsed::One(op) => cx.run(op).await.map(|r| body::encode(out, &r)),
        Parsed::Batch(b) => cx.batch(b).await.map(|r| body::encode(out, &r)),
    };
    cx.finish().await;
    match result {
        Ok(bytes) => {
            let mut r = Response::new(full(bytes));
            r.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                HeaderValue::from_static(out.media_type()),
            );
            r
        }
        Err(e) => body::error(out, &e),
    }
}

enum Parsed {
    One(BatchOp),
    Batch(BatchReq),
}

fn parse_op(path: &str, fmt: Format, b: &[u8]) -> Result<Parsed, WireError> {
    let op = match path.strip_prefix("/v1/api/").unwrap_or("") {
        "publish" => BatchOp::Publish(body::parse(fmt, b)?),
        "broadcast" => BatchOp::Broadcast(body::parse(fmt, b)?),
        "history" => BatchOp::History(body::parse(fmt, b)?),
        "latest" => BatchOp::Latest(body::parse(fmt, b)?),
        "presence" => BatchOp::Presence(body::parse(fmt, b)?),
        "disconnect" => BatchOp::Disconnect(body::parse(fmt, b)?),
        "sync/push" => BatchOp::SyncPush(body::parse(fmt, b)?),
        "sync/pull" => BatchOp::SyncPull(body::parse(fmt, b)?),
        "call" => BatchOp::Call(body::parse(fmt, b)?),
        "streams" if b.is_empty() => BatchOp::Streams(StreamsReq::default()),
        "streams" => BatchOp::Streams(body::parse(fmt, b)?),
        "batch" => return Ok(Parsed::Batch(body::parse(fmt, b)?)),
        other => {
            return Err(WireError::new(
                ErrorCode::MethodNotFound,
                format!("no server API operation {other:?}"),
            ));
        }
    };
    Ok(Parsed::One(op))
}

/// One request's context: the key and, once an operation needs it, the
/// in-process session of the key's principal (shared by a batch's
/// operations in order).
struct OpCx {
    hub: Arc<Hub>,
    peer: std::net::SocketAddr,
    key: Arc<ApiKey>,
    session: Option<LocalSession>,
}

fn denied(op: Op) -> WireError {
    WireError::new(
        ErrorCode::Forbidden,
        format!("the API key may not run {}", op.name()),
    )
}

fn op_of(op: &BatchOp) -> Op {
    match op {
        BatchOp::Publish(_) => Op::Publish,
        BatchOp::Broadcast(_) => Op::Broadcast,
        BatchOp::History(_) => Op::History,
        BatchOp::Latest(_) => Op::Latest,
        BatchOp::Presence(_) => Op::Presence,
        BatchOp::Disconnect(_) => Op::Disconnect,
        BatchOp::SyncPush(_) | BatchOp::SyncPull(_) => Op::Sync,
        BatchOp::Call(_) => Op::Call,
        BatchOp::Streams(_) => Op::Streams,
    }
}

/// Encodes a method's typed params.
fn encode<T: minicbor::Encode<()>>(p: &T) -> Result<RawValue, WireError> {
    RawValue::encode(p).map_err(|_| WireError::new(ErrorCode::Internal, "cannot encode the params"))
}

fn bad_result() -> WireError {
    WireError::new(ErrorCode::Internal, "unexpected result shape")
}

fn value(a: Answer) -> Result<RawValue, WireError> {
    match a {
        Answer::Value(v) => Ok(v),
        Answer::Chunks(_) => Err(bad_result()),
    }
}

fn event_doc(raw: &RawValue) -> Result<EventDoc, WireError> {
    let e: EventParams<'_> = raw.decode().map_err(|_| bad_result())?;
    Ok(EventDoc {
        topic: e.topic.to_owned(),
        data: Payload(raw.slice_ref(e.data)),
        from: e.from.map(str::to_owned),
        offset: e.offset,
        position: e.position,
    })
}

fn answer_doc(a: Answer) -> (Payload, bool) {
    match a {
        Answer::Value(v) => (Payload(v), false),
        Answer::Chunks(c) => {
            let mut buf = Vec::new();
            let _ = Encoder::new(&mut buf).array(c.len() as u64);
            for x in &c {
                buf.extend_from_slice(x.as_bytes());
            }
            (
                Payload(
                    RawValue::from_bytes(buf.into(), &plexus_protocol::DecodeLimits::default())
                        .unwrap_or_else(|_| RawValue::null()),
                ),
                true,
            )
        }
    }
}

impl OpCx {
    async fn session(&mut self) -> Result<&mut LocalSession, WireError> {
        if self.session.is_none() {
            let s = match self.hub.http.take_session(&self.key.name) {
                Some(s) => s,
                None => self.open().await?,
            };
            self.session = Some(s);
        }
        self.session
            .as_mut()
            .ok_or_else(|| WireError::new(ErrorCode::Internal, "no session"))
    }

    async fn open(&self) -> Result<LocalSession, WireError> {
        LocalSession::open(
            &self.hub,
            self.peer,
            Who::Principal(self.key.principal.clone()),
        )
        .await
        .map_err(|e| e.to_wire())
    }

    async fn call(&mut self, method: &str, p: &RawValue) -> Result<Answer, WireError> {
        let max = self.hub.config.http.max_answer_bytes;
        match self.session().await?.call(method, p, max).await {
            // A pooled session the hub closed while it was idle (keepalive):
            // the request was not run; once more on a new session.
            Err(LocalError::Closed(_)) => {
                let mut s = self.open().await?;
                let r = s.call(method, p, max).await;
                self.session = Some(s);
                r.map_err(|e| e.to_wire())
            }
            r => r.map_err(|e| e.to_wire()),
        }
    }

    /// Ends the request: its session goes back to the key's pool.
    async fn finish(&mut self) {
        if let Some(s) = self.session.take() {
            self.hub.http.give_session(&self.key.name, s).await;
        }
    }

    async fn publish(&mut self, r: &PublishReq) -> Result<PublishResp, WireError> {
        let mut p = PublishParams::new(&r.topic, r.data.0.as_raw_ref());
        if let Some(k) = r.idempotency_key.as_deref() {
            p = p.with_key(k);
        }
        if let Some(o) = r.expected_offset {
            p = p.with_expected_offset(o);
        }
        let p = encode(&p)?;
        let v = value(self.call("publish", &p).await?)?;
        let res: PublishResult = v.decode().map_err(|_| bad_result())?;
        Ok(PublishResp {
            delivered: res.delivered,
            offset: res.offset,
            epoch: res.epoch,
            duplicate: res.duplicate,
        })
    }

    /// Runs one operation, its key's scope checked first.
    async fn run(&mut self, op: BatchOp) -> Result<OpResult, WireError> {
        let kind = op_of(&op);
        if !self.key.allows(kind) {
            return Err(denied(kind));
        }
        Ok(match op {
            BatchOp::Publish(r) => OpResult::Publish(self.publish(&r).await?),
            BatchOp::Broadcast(r) => {
                if r.topics.len() > self.hub.config.http.max_batch {
                    return Err(WireError::new(
                        ErrorCode::InvalidParams,
                        format!("at most {} topics", self.hub.config.http.max_batch),
                    ));
                }
                let mut results = Vec::with_capacity(r.topics.len());
                for t in &r.topics {
                    let one = PublishReq {
                        topic: t.clone(),
                        data: r.data.clone(),
                        idempotency_key: None,
                        expected_offset: None,
                    };
                    results.push(self.publish(&one).await.into());
                }
                OpResult::Broadcast(BroadcastResp { results })
            }
            BatchOp::History(r) => {
                let mut p = HistoryParams::new(&r.topic);
                if let Some(f) = r.from {
                    p = p.with_from(f);
                }
                if let Some(d) = r.direction.as_deref() {
                    p = p.with_direction(Direction::from_text(d));
                }
                if let Some(l) = r.limit {
                    p = p.with_limit(l);
                }
                let p = encode(&p)?;
                let v = value(self.call("history", &p).await?)?;
                let h: HistoryResult = v.decode().map_err(|_| bad_result())?;
                OpResult::History(HistoryResp {
                    events: h.events.iter().map(event_doc).collect::<Result<_, _>>()?,
                    epoch: h.epoch,
                    next: h.next,
                    first: h.first,
                    last: h.last,
                })
            }
            BatchOp::Latest(r) => {
                let mut p = HistoryLatestParams::new(&r.pattern);
                if let Some(a) = r.after.as_deref() {
                    p = p.with_after(a);
                }
                if let Some(l) = r.limit {
                    p = p.with_limit(l);
                }
                let p = encode(&p)?;
                let v = value(self.call("history.latest", &p).await?)?;
                let h: HistoryLatestResult = v.decode().map_err(|_| bad_result())?;
                OpResult::Latest(LatestResp {
                    events: h.events.iter().map(event_doc).collect::<Result<_, _>>()?,
                    next: h.next,
                })
            }
            BatchOp::Presence(r) => {
                let p = encode(&PresenceGetParams {
                    topic: &r.topic,
                    cursor: r.cursor,
                    limit: r.limit,
                })?;
                let v = value(self.call("presence.get", &p).await?)?;
                let g: PresenceGetResult = v.decode().map_err(|_| bad_result())?;
                OpResult::Presence(PresenceResp {
                    members: g
                        .members
                        .into_iter()
                        .map(|m| MemberDoc {
                            session: m.session,
                            user: m.user,
                            info: m.info.map(Payload),
                        })
                        .collect(),
                    next: g.next,
                })
            }
            BatchOp::Disconnect(r) => {
                let code = match r.code.unwrap_or(4003) {
                    4003 => CloseCode::Forbidden,
                    4008 => CloseCode::GoingAway,
                    1000 => CloseCode::Normal,
                    c => {
                        return Err(WireError::new(
                            ErrorCode::InvalidParams,
                            format!("close code {c} is not one of 4003, 4008, 1000"),
                        ));
                    }
                };
                let n = self.hub.disconnect(&r.user, r.session.as_deref(), code);
                OpResult::Disconnect(DisconnectResp {
                    disconnected: n as u64,
                })
            }
            BatchOp::SyncPush(r) | BatchOp::SyncPull(r) if r.user.is_empty() => {
                let _ = r;
                return Err(WireError::new(ErrorCode::InvalidParams, "user is required"));
            }
            BatchOp::SyncPush(r) => OpResult::Sync(self.sync("sync.push", r).await?),
            BatchOp::SyncPull(r) => OpResult::Sync(self.sync("sync.pull", r).await?),
            BatchOp::Call(r) => {
                let p = super::rpc::call_params(
                    &r.procedure,
                    r.params.as_ref().map(|p| &p.0),
                    r.timeout_ms,
                    r.key.as_deref(),
                )?;
                let (result, streamed) = answer_doc(self.call("rpc.call", &p).await?);
                OpResult::Call(CallResp { result, streamed })
            }
            BatchOp::Streams(r) => OpResult::Streams(self.streams(r).await?),
        })
    }

    async fn sync(&mut self, method: &str, r: SyncReq) -> Result<SyncResp, WireError> {
        // The params' integer keys, written in JSON as decimal strings
        // (a CBOR body may use either); byte strings stay bytes.
        if r.params.0.as_bytes().first().is_none_or(|b| b >> 5 != 5) {
            return Err(WireError::new(
                ErrorCode::InvalidParams,
                "params must be a map",
            ));
        }
        let p = plexus_protocol::json::rekey(&r.params.0);
        let mut s = LocalSession::open(
            &self.hub,
            self.peer,
            Who::Principal(self.key.sync_principal(&r.user)),
        )
        .await
        .map_err(|e| e.to_wire())?;
        let a = s
            .call(method, &p, self.hub.config.http.max_answer_bytes)
            .await
            .map_err(|e| e.to_wire());
        s.close().await;
        let (result, streamed) = answer_doc(a?);
        Ok(SyncResp { result, streamed })
    }

    async fn streams(&mut self, r: StreamsReq) -> Result<StreamsResp, WireError> {
        let Some(streams) = &self.hub.streams else {
            return Err(WireError::new(
                ErrorCode::InvalidParams,
                "no durable streams are configured",
            ));
        };
        let limit = r.limit.unwrap_or(1000).clamp(1, 1000);
        let rows = streams
            .store()
            .list_topics(r.after.as_deref(), limit)
            .await
            .map_err(|_| WireError::new(ErrorCode::Unavailable, "the store did not answer"))?;
        let next = (rows.len() >= limit as usize)
            .then(|| rows.last().map(|t| t.name.to_string()))
            .flatten();
        let caps = &self.key.principal.caps;
        let topics = rows
            .iter()
            .filter(|t| {
                plexus_protocol::topic::Topic::parse(&t.name, MAX_TOPIC_LEN).is_ok_and(|topic| {
                    caps.subscribe
                        .iter()
                        .chain(&caps.publish)
                        .any(|p: &Pattern| p.matches(&topic))
                })
            })
            .map(|t| StreamDoc {
                topic: t.name.to_string(),
                events: t.count(),
                bytes: t.bytes,
                first: t.first_offset,
                last: t.last_offset,
                epoch: t.epoch.to_string(),
            })
            .collect();
        Ok(StreamsResp { topics, next })
    }

    async fn batch(&mut self, b: BatchReq) -> Result<BatchResp, WireError> {
        let max = self.hub.config.http.max_batch;
        if b.ops.len() > max {
            return Err(WireError::new(
                ErrorCode::InvalidParams,
                format!("a batch holds at most {max} operations"),
            ));
        }
        let mut results = Vec::with_capacity(b.ops.len());
        if b.parallel {
            // Concurrently, on sessions of their own, a few at a time.
            use futures_util::StreamExt;
            let hub = self.hub.clone();
            let key = self.key.clone();
            let peer = self.peer;
            let outs: Vec<Outcome<OpResult>> = futures_util::stream::iter(b.ops)
                .map(|op| {
                    let mut cx = OpCx {
                        hub: hub.clone(),
                        peer,
                        key: key.clone(),
                        session: None,
                    };
                    async move {
                        let r = cx.run(op).await;
                        cx.finish().await;
                        r.into()
                    }
                })
                .buffered(PARALLEL)
                .collect()
                .await;
            results = outs;
        } else {
            let mut failed = false;
            for op in b.ops {
                if failed {
                    results.push(Outcome::Err {
                        error: (&WireError::new(
                            ErrorCode::Cancelled,
                            "not run: an earlier operation failed",
                        ))
                            .into(),
                    });
                    continue;
                }
                let r = self.run(op).await;
                failed = r.is_err();
                results.push(r.into());
            }
        }
        Ok(BatchResp { results })
    }
}

/// Operations of a parallel batch in flight at once (each on its own
/// session, counted against the key's `max-connections-per-user`).
pub const PARALLEL: usize = 8;
