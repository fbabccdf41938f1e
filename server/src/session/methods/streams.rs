//! The durable-stream methods: `publish` and `subscribe` on hubs with
//! durable namespaces, `history` and `history.latest`.
//!
//! A hub without a `[[streams]]` namespace registers the plain `publish`
//! and `subscribe` of `pubsub` instead (synchronous, nothing to wait for);
//! with one, these replace them and serve plain topics the same way, in
//! their synchronous part.
//!
//! - `publish` on a durable topic is enqueued to the writer in the
//!   synchronous part (so one connection's publishes keep their order) and
//!   answered after the commit, with offset, epoch, durability and
//!   `duplicate`.
//! - `subscribe` on a durable topic, or on a pattern inside one durable
//!   namespace, records the subscription at once (so a second subscribe is
//!   a `conflict`), then, in its future, streams what was missed (with
//!   `since`: chunks with credit, then the final chunk; without: a plain
//!   response with the epoch and position), and goes live right after its
//!   answer is queued ([`Resume::activate`]): events committed meanwhile
//!   follow the answer, with no gap and no duplicate.
//! - Capabilities: `publish` for a durable publish; `subscribe` for
//!   `subscribe` (with or without `since`), `history` and
//!   `history.latest`, checked like the plain methods check them.

use std::sync::Arc;

use bytes::Bytes;
use plexus_protocol::methods::{
    HistoryLatestParams, HistoryParams, PublishParams, SubscribeParams,
};
use plexus_protocol::topic::{Pattern, Topic};

use super::pubsub::{self, subscribe_error};
use super::topic_error;
use crate::config::EVENT_ENVELOPE;
use crate::conn::Conn;
use crate::hub::Hub;
use crate::outbound::Push;
use crate::session::context::Ctx;
use crate::session::error::{RequestError, params};
use crate::session::registry::{Answer, FlexReply, Meta, Registry, Reply, encode};
use crate::session::stream::ChunkSink;
use crate::streams::{
    HistoryQuery, NotLive, PublishRequest, Resume, ResumeFrom, Scope, StreamError, Streams,
    uses_durable_keys,
};

/// Bytes a durable event's params take beyond a plain event's: keys 3
/// (offset) and 4 (position) with 64-bit values.
pub const DURABLE_EVENT_EXTRA: usize = 20;

/// Bytes of a catch-up chunk or a `history` page besides its event bodies,
/// at their longest (frame header, request id, sequence number, list
/// header, epoch, `next`, `first`, `last`). Event bodies of one chunk or
/// page are capped at `max-frame-size` minus this.
pub const STREAM_ENVELOPE: usize = 96;

/// Registers the durable `publish` and `subscribe`, replacing the plain
/// ones.
pub fn register(r: &mut Registry) {
    r.asynchronous::<plexus_protocol::methods::Publish, _>(Meta::default(), publish);
    r.flexible("subscribe", Meta::default().without_timeout(), subscribe);
}

/// Registers `history` and `history.latest` (every hub serves them; one
/// without durable namespaces answers `invalid_params`: not durable).
pub fn register_history(r: &mut Registry) {
    r.asynchronous_raw("history", Meta::default(), history);
    r.asynchronous_raw("history.latest", Meta::default(), history_latest);
}

fn streams<'a>(ctx: &'a Ctx<'_>) -> Result<&'a Streams, RequestError> {
    ctx.hub()
        .streams
        .as_ref()
        .ok_or_else(|| RequestError::from(StreamError::NotDurable))
}

fn ready<T: Send + 'static>(
    r: T,
) -> futures_util::future::BoxFuture<'static, Result<T, RequestError>> {
    Box::pin(std::future::ready(Ok(r)))
}

fn publish(
    ctx: &mut Ctx<'_>,
    p: PublishParams<'_>,
) -> Result<
    futures_util::future::BoxFuture<
        'static,
        Result<plexus_protocol::methods::PublishResult, RequestError>,
    >,
    RequestError,
> {
    let s = streams(ctx)?;
    if s.topic_namespace(p.topic).is_none() {
        return pubsub::publish(ctx, p).map(ready);
    }
    let topic =
        Topic::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    let data = p.data.as_bytes();
    if data.len() > ctx.config().max_payload {
        return Err(RequestError::PayloadTooLarge(
            "payload exceeds max_payload".into(),
        ));
    }
    if !ctx.caps().can_publish(&topic) {
        return Err(RequestError::forbidden("publish on this topic"));
    }
    let user = &ctx.principal().user;
    let body = data.len() + p.topic.len() + user.len() + EVENT_ENVELOPE + DURABLE_EVENT_EXTRA;
    if body + STREAM_ENVELOPE > ctx.config().max_frame_size {
        return Err(RequestError::PayloadTooLarge(
            "the event would exceed max_frame_size".into(),
        ));
    }
    let skip = (!p.echo.unwrap_or(true)).then_some(ctx.conn().id);
    let req =
        PublishRequest::from_params(&p, Bytes::copy_from_slice(data), Some(user.clone()), skip)?;
    let fut = s.publish(req);
    ctx.metrics().publishes.increment(1);
    Ok(Box::pin(async move {
        let outcome = fut.await?;
        Ok(outcome.to_result())
    }))
}

/// Drops a reserved subscription unless it went live: whatever ends a
/// durable subscribe early (an error, a cancel, the connection closing)
/// leaves the connection as it was.
struct Reservation {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    pattern: Pattern,
    request: u64,
    live: bool,
}

impl Reservation {
    /// The subscription went live: keep it.
    fn keep(&mut self) {
        self.live = true;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.live {
            self.hub
                .broker
                .release(&self.conn, &self.pattern, self.request);
        }
    }
}

fn subscribe(
    ctx: &mut Ctx<'_>,
    raw: &plexus_protocol::RawValue,
    mut sink: ChunkSink,
) -> Result<FlexReply, RequestError> {
    let p: SubscribeParams<'_> = params(raw)?;
    let s = streams(ctx)?.clone();
    let pattern =
        Pattern::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    let exact = pattern.is_exact();
    let scope = s.scope(&pattern);
    let durable = matches!(scope, Scope::Topic(_) | Scope::Pattern(_));
    if !durable && p.since.is_none() {
        // Live only: a pattern overlapping durable namespaces gets their
        // events with offsets, but cannot resume (D8).
        let r = pubsub::subscribe(ctx, p)?;
        let data = encode(&r)?;
        return Ok(ready(Answer::result(data)));
    }
    let presence = p.presence.unwrap_or(false);
    if presence && !exact {
        return Err(RequestError::invalid_params(
            "presence needs an exact topic, not a pattern",
        ));
    }
    // The connection's state and the capability come before anything
    // about the topic's durability or `since`, so that a client without
    // the right to subscribe learns nothing about the topic (§23.6).
    let resuming = p.since.is_some();
    let authorized = ctx.caps().can_subscribe(&pattern);
    let max = ctx.config().max_subscriptions;
    let request = ctx.request_id();
    ctx.broker()
        .reserve(
            ctx.conn(),
            pattern.clone(),
            presence,
            max,
            authorized,
            request,
        )
        .map_err(subscribe_error)?;
    // Released on drop unless it goes live: every error below leaves the
    // connection without the subscription.
    let mut reservation = Reservation {
        hub: ctx.hub().clone(),
        conn: ctx.conn().clone(),
        pattern: pattern.clone(),
        request,
        live: false,
    };
    match scope {
        Scope::Topic(_) | Scope::Pattern(_) => {}
        Scope::Plain => return Err(StreamError::NotDurable.into()),
        Scope::Mixed => return Err(StreamError::SpansNamespaces.into()),
    }
    let from = ResumeFrom::from_since(p.since.as_ref(), exact)?;
    let chunk_bytes = ctx.config().max_frame_size.saturating_sub(STREAM_ENVELOPE);
    let mut resume = s.resume(&pattern, from, chunk_bytes)?;
    Ok(Box::pin(async move {
        while let Some(list) = resume.next_chunk().await? {
            sink.send(&list).await?;
        }
        let summary = resume
            .summary()
            .cloned()
            .ok_or_else(|| RequestError::internal("resume ended without a summary"))?;
        let answer = if resuming {
            Answer::final_chunk(encode(&summary.to_final())?)
        } else {
            Answer::result(encode(&summary.to_subscribe_result(exact))?)
        };
        Ok(answer.then(move || {
            // On the connection's task, right after the answer is queued.
            let r = go_live(&mut resume, &reservation);
            match r {
                Ok(()) => reservation.keep(),
                Err(NotLive::Overflowed) => {
                    tokio::spawn(catch_up_live(resume, reservation));
                }
                // Cannot happen after a summary; the reservation is
                // released on drop.
                Err(_) => {}
            }
        }))
    }))
}

/// Activates `resume`: under the fan-out lock, indexes the subscription
/// and queues the events committed since the answer, so that the next
/// committed event reaches it through the broker.
fn go_live(resume: &mut Resume, r: &Reservation) -> Result<(), NotLive> {
    resume.activate(|pending| {
        if r.hub.broker.index(&r.conn, &r.pattern, r.request) {
            for e in pending {
                if e.skip != Some(r.conn.id) {
                    // An overflow closes the connection as a slow consumer.
                    let _ = r.conn.out.push(e.frame.clone());
                }
            }
        }
    })
}

/// The live buffer overflowed between the answer and the activation: read
/// what was committed meanwhile from storage (with credit), then activate
/// again.
async fn catch_up_live(mut resume: Resume, mut reservation: Reservation) {
    loop {
        loop {
            match resume.next_live().await {
                Ok(Some(frames)) => {
                    for f in frames {
                        if reservation.conn.out.reserve(f.len()).await.is_err() {
                            return;
                        }
                        if !matches!(reservation.conn.out.push(f), Push::Queued) {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The subscription cannot continue without a gap:
                    // close the connection so the client resumes.
                    tracing::warn!(error = %e, "durable subscription lost its live edge");
                    reservation.hub.close_conn(
                        &reservation.conn,
                        plexus_protocol::CloseCode::GoingAway,
                        "storage unavailable".into(),
                        Some(crate::streams::STORAGE_RETRY_AFTER_MS),
                    );
                    return;
                }
            }
        }
        match go_live(&mut resume, &reservation) {
            Ok(()) => {
                reservation.keep();
                return;
            }
            Err(NotLive::Overflowed) => continue,
            Err(_) => return,
        }
    }
}

fn history(ctx: &mut Ctx<'_>, raw: &plexus_protocol::RawValue) -> Result<Reply, RequestError> {
    let p: HistoryParams<'_> = params(raw)?;
    let s = streams(ctx)?.clone();
    let topic =
        Topic::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    let pattern =
        Pattern::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    if !ctx.caps().can_subscribe(&pattern) {
        return Err(RequestError::forbidden("read the history of this topic"));
    }
    if s.topic_namespace(topic.as_str()).is_none() {
        return Err(StreamError::NotDurable.into());
    }
    let mut q = HistoryQuery::new(
        topic.as_str(),
        ctx.config().max_frame_size.saturating_sub(STREAM_ENVELOPE),
    );
    q.from = p.from;
    q.direction = HistoryQuery::direction_from_wire(p.direction.as_ref())?;
    q.limit = p.limit;
    Ok(Box::pin(async move {
        let page = s.history(q).await?;
        encode(&page)
    }))
}

fn history_latest(
    ctx: &mut Ctx<'_>,
    raw: &plexus_protocol::RawValue,
) -> Result<Reply, RequestError> {
    let p: HistoryLatestParams<'_> = params(raw)?;
    let s = streams(ctx)?.clone();
    let max_topic = ctx.config().max_topic_len;
    let pattern = Pattern::parse(p.pattern, max_topic).map_err(|e| topic_error("pattern", e))?;
    if !ctx.caps().can_subscribe(&pattern) {
        return Err(RequestError::forbidden("read the history of this pattern"));
    }
    match s.scope(&pattern) {
        Scope::Topic(_) | Scope::Pattern(_) => {}
        Scope::Mixed => return Err(StreamError::SpansNamespaces.into()),
        Scope::Plain => return Err(StreamError::NotDurable.into()),
    }
    if p.after.is_some_and(|a| a.len() > max_topic) {
        return Err(RequestError::PayloadTooLarge(
            "after: longer than max_topic_len".into(),
        ));
    }
    let after = p.after.map(str::to_owned);
    let limit = p.limit;
    let max_bytes = ctx
        .config()
        .max_frame_size
        .saturating_sub(STREAM_ENVELOPE + max_topic);
    Ok(Box::pin(async move {
        let page = s
            .latest(&pattern, after.as_deref(), limit, max_bytes)
            .await?;
        encode(&page)
    }))
}

/// `publish` with durable-only keys (3–6) on a topic that is not durable:
/// `invalid_params` (D3).
pub fn check_plain_keys(p: &PublishParams<'_>) -> Result<(), RequestError> {
    if uses_durable_keys(p) {
        return Err(StreamError::invalid(
            "producer, seq, key and expected_offset need a durable topic",
        )
        .into());
    }
    Ok(())
}
