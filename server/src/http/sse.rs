//! `GET /v1/sse`: events as `text/event-stream`, resumable exactly
//! (decisions W7–W10).
//!
//! The stream subscribes an in-process session of the token's user to the
//! `topic` parameters (topics or patterns). Every event's `id:` is a
//! [resume id](ResumeId): the position of every subscription after that
//! event, signed with the hub's resume key. A plain `EventSource` sends the
//! last id it saw as `Last-Event-ID` when it reconnects; the hub verifies
//! it and resubscribes each durable subscription from its position, so the
//! client sees every event once, in order, with no gap. Events of topics
//! that are not durable cannot be replayed: their positions are not kept.
//!
//! The stream is bounded: the session's outbound queue, the in-memory
//! pipe and [`SSE_BUFFER`] chunks. A client that reads too slowly meets the
//! session's slow-consumer rule (close 4006), reported as the final
//! `close` event when it can still be written.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame as BodyFrame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode};
use minicbor::{Decoder, Encoder};
use plexus_protocol::frame::{Chunk, Notification, Response as WireResponse};
use plexus_protocol::methods::{EventParams, ResumeFinal, Since, SubscribeParams, SubscribeResult};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use plexus_protocol::{ErrorCode, Frame, RawValue, WireError};
use sha2::Sha256;
use tokio::sync::mpsc;

use super::Body;
use super::body::{self, Format};
use super::local::{LocalError, LocalSession, Who};
use crate::hub::Hub;

/// SSE chunks buffered between the session and the HTTP connection.
pub const SSE_BUFFER: usize = 64;

/// The largest `Last-Event-ID` accepted, in bytes.
pub const MAX_RESUME_ID: usize = 2048;

/// Bytes of the HMAC-SHA-256 tag a resume id carries.
const TAG_LEN: usize = 16;

/// Where one subscription stands: its epoch and its last offset (exact
/// topic) or namespace position (pattern). `None` for a topic that is not
/// durable.
pub type Mark = Option<(String, u64)>;

/// The decoded content of a resume id: the hash of the subscription list
/// it belongs to, and one mark per subscription in the request's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeId {
    /// A digest of the `topic` parameters, in order.
    pub topics: [u8; 8],
    /// One mark per topic.
    pub marks: Vec<Mark>,
}

/// The digest of a subscription list, as a resume id carries it.
pub fn topics_digest(topics: &[String]) -> [u8; 8] {
    use sha2::Digest;
    let mut h = Sha256::new();
    for t in topics {
        h.update(t.as_bytes());
        h.update([0]);
    }
    let d = h.finalize();
    let mut out = [0u8; 8];
    out.copy_from_slice(&d[..8]);
    out
}

impl ResumeId {
    /// Encodes and signs: base64url of `CBOR [1, digest, [* mark]] || tag`.
    pub fn sign(&self, key: &[u8; 32]) -> String {
        let mut buf = Vec::with_capacity(32 + 24 * self.marks.len());
        let mut e = Encoder::new(&mut buf);
        let _ = e
            .array(3)
            .and_then(|e| e.u8(1))
            .and_then(|e| e.bytes(&self.topics));
        let _ = e.array(self.marks.len() as u64);
        for m in &self.marks {
            let _ = match m {
                Some((epoch, pos)) => e
                    .array(2)
                    .and_then(|e| e.str(epoch))
                    .and_then(|e| e.u64(*pos))
                    .map(|_| ()),
                None => e.null().map(|_| ()),
            };
        }
        let tag = tag(key, &buf);
        buf.extend_from_slice(&tag);
        URL_SAFE_NO_PAD.encode(buf)
    }

    /// Verifies and decodes; `None` for anything not signed with `key`.
    pub fn verify(text: &str, key: &[u8; 32]) -> Option<ResumeId> {
        if text.len() > MAX_RESUME_ID {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(text.trim()).ok()?;
        let split = raw.len().checked_sub(TAG_LEN)?;
        let (body, got) = raw.split_at(split);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).ok()?;
        mac.update(body);
        mac.verify_truncated_left(got).ok()?;
        let mut d = Decoder::new(body);
        if d.array().ok()? != Some(3) || d.u8().ok()? != 1 {
            return None;
        }
        let topics: [u8; 8] = d.bytes().ok()?.try_into().ok()?;
        let n = d.array().ok()??;
        let mut marks = Vec::with_capacity(n.min(64) as usize);
        for _ in 0..n.min(64) {
            if d.datatype().ok()? == minicbor::data::Type::Null {
                d.skip().ok()?;
                marks.push(None);
            } else {
                if d.array().ok()? != Some(2) {
                    return None;
                }
                let epoch = d.str().ok()?.to_owned();
                marks.push(Some((epoch, d.u64().ok()?)));
            }
        }
        Some(ResumeId { topics, marks })
    }
}

fn tag(key: &[u8; 32], body: &[u8]) -> [u8; TAG_LEN] {
    let mut out = [0u8; TAG_LEN];
    if let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(key) {
        mac.update(body);
        out.copy_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    }
    out
}

/// An event's JSON form (`data` as its JSON projection).
#[derive(serde::Serialize)]
struct EventJson<'a> {
    topic: &'a str,
    data: super::payload::Payload,
    from: Option<&'a str>,
    offset: Option<u64>,
    position: Option<u64>,
}

/// One subscription of the stream.
#[derive(Debug)]
struct Sub {
    pattern: Pattern,
    /// Exact topic (marks are offsets) or pattern (namespace positions).
    exact: bool,
    mark: Mark,
}

/// The request's parameters.
#[derive(Debug)]
struct Params {
    topics: Vec<String>,
    format: Format,
    token: Option<String>,
    last_id: Option<String>,
}

fn params(req: &Request<Incoming>) -> Params {
    let mut p = Params {
        topics: Vec::new(),
        format: Format::Json,
        token: None,
        last_id: None,
    };
    for (k, v) in form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()) {
        match &*k {
            "topic" => p.topics.push(v.into_owned()),
            "format" if v == "cbor" => p.format = Format::Cbor,
            "token" => p.token = Some(v.into_owned()),
            "last_event_id" => p.last_id = Some(v.into_owned()),
            _ => {}
        }
    }
    if let Some(t) = body::bearer(req.headers()) {
        p.token = Some(t.to_owned());
    }
    if let Some(id) = req
        .headers()
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
    {
        p.last_id = Some(id.to_owned());
    }
    p
}

pub(super) async fn handle(
    req: Request<Incoming>,
    hub: &Arc<Hub>,
    peer: std::net::SocketAddr,
) -> Response<Body> {
    if req.method() != hyper::Method::GET {
        let mut r = Response::new(super::full("use GET\n"));
        *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
        return r;
    }
    // Cross-origin pages may read the stream (an `EventSource` sends no
    // credentials but the token it was given); with `allowed-origins` set,
    // only those origins, as for WebSocket upgrades (P16).
    let origins = hub.config.origins();
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allow = match &origin {
        None => None,
        Some(_) if origins.is_empty() => Some(HeaderValue::from_static("*")),
        Some(o)
            if o.to_str()
                .is_ok_and(|o| crate::transport::upgrade::origin_allowed(o, &origins)) =>
        {
            Some(o.clone())
        }
        Some(_) => {
            return body::error(
                Format::Json,
                &WireError::new(ErrorCode::Forbidden, "origin not allowed"),
            );
        }
    };
    let p = params(&req);
    match open(hub, peer, p).await {
        Ok(body) => {
            let mut r = Response::new(body);
            let h = r.headers_mut();
            if let Some(a) = allow {
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, a);
                h.insert(header::VARY, HeaderValue::from_static("Origin"));
            }
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            h.insert("x-accel-buffering", HeaderValue::from_static("no"));
            r
        }
        Err(e) => body::error(Format::Json, &e),
    }
}

async fn open(hub: &Arc<Hub>, peer: std::net::SocketAddr, p: Params) -> Result<Body, WireError> {
    let bad = |m: String| WireError::new(ErrorCode::InvalidParams, m);
    let Some(token) = p.token else {
        return Err(WireError::new(
            ErrorCode::Unauthenticated,
            "send the user token as Authorization: Bearer TOKEN or ?token=",
        ));
    };
    let max = hub.config.http.sse_max_topics;
    if p.topics.is_empty() || p.topics.len() > max {
        return Err(bad(format!("give 1 to {max} topic parameters")));
    }
    let mut subs = Vec::with_capacity(p.topics.len());
    for t in &p.topics {
        let pattern =
            Pattern::parse(t, MAX_TOPIC_LEN).map_err(|e| bad(format!("topic {t:?}: {e}")))?;
        let exact = !t.contains('*') && !t.contains('>');
        subs.push(Sub {
            pattern,
            exact,
            mark: None,
        });
    }
    let key = *hub.http.resume_key();
    let digest = topics_digest(&p.topics);
    if let Some(id) = p.last_id.as_deref().filter(|s| !s.is_empty()) {
        let r = ResumeId::verify(id, &key)
            .filter(|r| r.topics == digest && r.marks.len() == subs.len())
            .ok_or_else(|| bad("Last-Event-ID is not a resume id of this stream".into()))?;
        for (s, m) in subs.iter_mut().zip(r.marks) {
            s.mark = m;
        }
    }
    let mut session = LocalSession::open(hub, peer, Who::Token(token))
        .await
        .map_err(|e| e.to_wire())?;
    let (tx, rx) = mpsc::channel::<Bytes>(SSE_BUFFER);
    let mut stream = SseStream {
        subs,
        topics: p.topics,
        format: p.format,
        key,
        digest,
        tx,
    };
    // Subscribe before answering, so that a refused subscription is an
    // HTTP error rather than an event.
    let mut early = Vec::new();
    stream.subscribe_all(&mut session, &mut early).await?;
    let keepalive = hub.config.http.sse_keepalive.0;
    tokio::spawn(async move {
        // `retry:` tells EventSource how soon to reconnect.
        if stream
            .tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
        {
            return;
        }
        for b in early {
            if stream.tx.send(b).await.is_err() {
                return;
            }
        }
        stream.run(session, keepalive).await;
    });
    let body = StreamBody::new(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(BodyFrame::data(b)), rx))
    }));
    Ok(body.boxed_unsync())
}

struct SseStream {
    subs: Vec<Sub>,
    topics: Vec<String>,
    format: Format,
    key: [u8; 32],
    digest: [u8; 8],
    tx: mpsc::Sender<Bytes>,
}

impl SseStream {
    fn id(&self) -> String {
        ResumeId {
            topics: self.digest,
            marks: self.subs.iter().map(|s| s.mark.clone()).collect(),
        }
        .sign(&self.key)
    }

    /// Subscribes every topic in order, from its mark when it has one; the
    /// catch-up events and the live ones that arrive meanwhile go to
    /// `out`.
    async fn subscribe_all(
        &mut self,
        s: &mut LocalSession,
        out: &mut Vec<Bytes>,
    ) -> Result<(), WireError> {
        for i in 0..self.subs.len() {
            let sub = &self.subs[i];
            let mut p = SubscribeParams::new(&self.topics[i]);
            if let Some((epoch, pos)) = &sub.mark {
                p = p.with_since(if sub.exact {
                    Since::offset(Some(epoch), *pos)
                } else {
                    Since::position(Some(epoch), *pos)
                });
            }
            let raw = RawValue::encode(&p)
                .map_err(|_| WireError::new(ErrorCode::Internal, "cannot encode subscribe"))?;
            let id = s.send("subscribe", &raw).await.map_err(|e| e.to_wire())?;
            loop {
                match s.next().await.map_err(|e| e.to_wire())? {
                    Frame::Response(WireResponse { id: rid, outcome }) if rid == id => {
                        let v = outcome?;
                        if let Ok(r) = v.decode::<SubscribeResult>()
                            && let Some(epoch) = r.epoch
                        {
                            let pos = if self.subs[i].exact {
                                r.offset.unwrap_or(0)
                            } else {
                                r.position.unwrap_or(0)
                            };
                            self.subs[i].mark = Some((epoch, pos));
                        }
                        break;
                    }
                    Frame::Chunk(Chunk {
                        id: rid, fin, data, ..
                    }) if rid == id => {
                        if fin {
                            if let Ok(f) = data.decode::<ResumeFinal>() {
                                let pos = if self.subs[i].exact {
                                    f.offset
                                } else {
                                    f.position
                                };
                                let changed = self.subs[i]
                                    .mark
                                    .as_ref()
                                    .is_none_or(|(e, p)| *e != f.epoch || *p != pos);
                                self.subs[i].mark = Some((f.epoch.clone(), pos));
                                if changed
                                    && !matches!(
                                        f.outcome,
                                        plexus_protocol::methods::ResumeOutcome::Recovered
                                    )
                                {
                                    out.push(self.resume_event(i, &f));
                                }
                            }
                            break;
                        }
                        // A catch-up chunk's data is an array of events
                        // (protocol §23.6).
                        for ev in data.decode::<Vec<RawValue>>().unwrap_or_default() {
                            if let Some(b) = self.event(&ev) {
                                out.push(b);
                            }
                        }
                    }
                    Frame::Notification(n) => {
                        if let Some(b) = self.notification(&n) {
                            out.push(b);
                        }
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }

    fn resume_event(&self, i: usize, f: &ResumeFinal) -> Bytes {
        let doc = serde_json::json!({
            "topic": self.topics[i],
            "outcome": f.outcome.as_str(),
            "epoch": f.epoch,
            "earliest": f.earliest,
        });
        Bytes::from(format!("id: {}\nevent: resume\ndata: {doc}\n\n", self.id()))
    }

    /// The SSE text of one `event` params map, its subscription's mark
    /// advanced; `None` for an event already delivered.
    fn event(&mut self, raw: &RawValue) -> Option<Bytes> {
        let e: EventParams<'_> = raw.decode().ok()?;
        let i = self
            .subs
            .iter()
            .position(|s| s.pattern.matches_str(e.topic))?;
        let sub = &mut self.subs[i];
        let pos = if sub.exact { e.offset } else { e.position };
        if let (Some(pos), Some((_, mark))) = (pos, sub.mark.as_mut()) {
            if pos <= *mark {
                return None;
            }
            *mark = pos;
        }
        let data = match self.format {
            Format::Json => serde_json::to_string(&EventJson {
                topic: e.topic,
                data: super::payload::Payload(raw.slice_ref(e.data)),
                from: e.from,
                offset: e.offset,
                position: e.position,
            })
            .unwrap_or_default(),
            Format::Cbor => STANDARD.encode(raw.as_bytes()),
        };
        Some(Bytes::from(format!(
            "id: {}\nevent: event\ndata: {data}\n\n",
            self.id()
        )))
    }

    fn notification(&mut self, n: &Notification) -> Option<Bytes> {
        match &*n.method {
            "event" => self.event(&n.params),
            "closing" => {
                let j = plexus_protocol::json::raw_to_json(&n.params);
                Some(Bytes::from(format!("event: closing\ndata: {j}\n\n")))
            }
            _ => None,
        }
    }

    async fn run(mut self, mut s: LocalSession, keepalive: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
        loop {
            tokio::select! {
                f = s.next() => match f {
                    Ok(Frame::Notification(n)) => {
                        if let Some(b) = self.notification(&n)
                            && self.tx.send(b).await.is_err()
                        {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let code = match e { LocalError::Closed(c) => c.unwrap_or(1006), _ => 1006 };
                        let name = plexus_protocol::CloseCode::from_u16(code).map_or("closed", |c| c.name());
                        let doc = serde_json::json!({"code": code, "reason": name});
                        let _ = self.tx.send(Bytes::from(format!("event: close\ndata: {doc}\n\n"))).await;
                        return;
                    }
                },
                _ = tick.tick() => {
                    if self.tx.send(Bytes::from_static(b": keepalive\n\n")).await.is_err() {
                        return;
                    }
                }
                () = self.tx.closed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_ids_round_trip_and_refuse_any_change() {
        let key = [7u8; 32];
        let id = ResumeId {
            topics: topics_digest(&["a.b".into(), "c.>".into()]),
            marks: vec![Some(("e1".into(), 41)), None],
        };
        let text = id.sign(&key);
        assert_eq!(ResumeId::verify(&text, &key), Some(id.clone()));
        assert_eq!(ResumeId::verify(&text, &[8u8; 32]), None, "another key");
        let mut raw = URL_SAFE_NO_PAD.decode(&text).unwrap();
        raw[6] ^= 1;
        assert_eq!(
            ResumeId::verify(&URL_SAFE_NO_PAD.encode(raw), &key),
            None,
            "a flipped bit"
        );
        assert_eq!(ResumeId::verify("", &key), None);
        assert_eq!(ResumeId::verify(&"A".repeat(MAX_RESUME_ID + 1), &key), None);
        assert_ne!(
            topics_digest(&["a.b".into()]),
            topics_digest(&["a.b".into(), "c".into()])
        );
    }
}
