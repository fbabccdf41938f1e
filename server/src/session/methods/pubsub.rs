//! `subscribe`, `unsubscribe` and `publish`.

use bytes::Bytes;
use plexus_protocol::NotificationMethod;
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::{
    Empty, Event, EventParams, Publish, PublishParams, PublishResult, Subscribe, SubscribeParams,
    SubscribeResult, Unsubscribe, UnsubscribeParams,
};
use plexus_protocol::topic::{Pattern, Topic};

use super::topic_error;
use crate::broker::SubscribeError;
use crate::session::context::Ctx;
use crate::session::error::RequestError;
use crate::session::registry::{Meta, Registry};
use crate::streams::StreamError;

/// Registers the module's methods.
pub fn register(r: &mut Registry) {
    r.sync::<Subscribe, _>(Meta::default(), subscribe);
    r.sync::<Unsubscribe, _>(Meta::default(), unsubscribe);
    r.sync::<Publish, _>(Meta::default(), publish);
}

/// `subscribe` on a topic or pattern that is not durable.
pub(super) fn subscribe(
    ctx: &mut Ctx<'_>,
    p: SubscribeParams<'_>,
) -> Result<SubscribeResult, RequestError> {
    let pattern =
        Pattern::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    let presence = p.presence.unwrap_or(false);
    if presence && !pattern.is_exact() {
        return Err(RequestError::invalid_params(
            "presence needs an exact topic, not a pattern",
        ));
    }
    let authorized = ctx.caps().can_subscribe(&pattern);
    let max = ctx.config().max_subscriptions;
    if p.since.is_some() {
        // A hub without durable namespaces: `since` is refused after the
        // connection's state and the capability (§23.6), so that a client
        // without the right to subscribe learns nothing about the topic.
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
        ctx.broker().release(ctx.conn(), &pattern, request);
        return Err(StreamError::NotDurable.into());
    }
    ctx.broker()
        .subscribe(ctx.conn(), pattern, presence, max, authorized)
        .map_err(subscribe_error)?;
    Ok(SubscribeResult::default())
}

/// The wire error of a refused subscription.
pub(super) fn subscribe_error(e: SubscribeError) -> RequestError {
    match e {
        SubscribeError::AlreadySubscribed => RequestError::Conflict("already subscribed".into()),
        SubscribeError::TooMany => RequestError::TooManyRequests("too many subscriptions".into()),
        SubscribeError::Forbidden => RequestError::forbidden("subscribe to this topic"),
    }
}

fn unsubscribe(ctx: &mut Ctx<'_>, p: UnsubscribeParams<'_>) -> Result<Empty, RequestError> {
    if !ctx.broker().unsubscribe(ctx.conn(), p.topic) {
        return Err(RequestError::NotFound("not subscribed".into()));
    }
    Ok(Empty {})
}

/// `publish` on a topic that is not durable.
pub(super) fn publish(
    ctx: &mut Ctx<'_>,
    p: PublishParams<'_>,
) -> Result<PublishResult, RequestError> {
    let topic =
        Topic::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    super::streams::check_plain_keys(&p)?;
    if p.data.as_bytes().len() > ctx.config().max_payload {
        return Err(RequestError::PayloadTooLarge(
            "payload exceeds max_payload".into(),
        ));
    }
    if !ctx.caps().can_publish(&topic) {
        return Err(RequestError::forbidden("publish on this topic"));
    }
    // Encoded once; the same bytes are queued for every subscriber.
    let event = EventParams::new(p.topic, p.data, Some(&ctx.principal().user));
    let frame = encode_notification(Event::NAME, &event)
        .map(Bytes::from)
        .map_err(|_| RequestError::internal("cannot encode the event"))?;
    // The settings are validated so that an event always fits (H1); never
    // send one that does not (H2).
    if frame.len() > ctx.config().max_frame_size {
        return Err(RequestError::PayloadTooLarge(
            "the event would exceed max_frame_size".into(),
        ));
    }
    let skip = if p.echo.unwrap_or(true) {
        None
    } else {
        Some(ctx.conn().id)
    };
    if let Some(c) = ctx.hub().cluster.get()
        && !c.publish_plain(p.topic, &frame)
    {
        return Err(RequestError::Unavailable {
            message: "the cluster link is down".into(),
            retry_after_ms: Some(crate::cluster::LINK_RETRY_AFTER_MS),
        });
    }
    let fan = ctx.broker().publish(p.topic, &frame, skip);
    let m = ctx.metrics();
    m.publishes.increment(1);
    m.deliveries.increment(fan.delivered);
    Ok(PublishResult::new(fan.delivered))
}
