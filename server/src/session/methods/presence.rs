//! `presence.get` and `presence.set`.

use plexus_protocol::methods::{
    Empty, PresenceGet, PresenceGetParams, PresenceGetResult, PresenceSet, PresenceSetParams,
};
use plexus_protocol::topic::Topic;
use plexus_protocol::{DecodeLimits, RawValue};

use super::topic_error;
use crate::session::context::Ctx;
use crate::session::error::RequestError;
use crate::session::registry::{Meta, Registry};

/// Default page size of `presence.get`.
pub const DEFAULT_PRESENCE_PAGE: u64 = 100;

/// Room left in a response frame for the envelope and result map around a
/// page of members.
pub const RESPONSE_OVERHEAD: usize = 64;

/// Registers the module's methods.
pub fn register(r: &mut Registry) {
    r.sync::<PresenceGet, _>(Meta::default(), get);
    r.sync::<PresenceSet, _>(Meta::default(), set);
}

/// Cluster mode: `presence.get` lists the members of every node (it reads
/// the cluster's presence table, so it is asynchronous).
pub fn register_clustered(r: &mut Registry) {
    r.asynchronous::<PresenceGet, _>(Meta::default(), get_clustered);
}

/// The checked topic, page size and byte budget of a `presence.get`.
fn get_bounds(
    ctx: &mut Ctx<'_>,
    p: &PresenceGetParams<'_>,
) -> Result<(usize, usize), RequestError> {
    let topic =
        Topic::parse(p.topic, ctx.config().max_topic_len).map_err(|e| topic_error("topic", e))?;
    if !ctx.caps().can_read_presence(&topic) {
        return Err(RequestError::forbidden("read presence of this topic"));
    }
    let max = u64::try_from(ctx.config().max_presence_page).unwrap_or(u64::MAX);
    let limit = p
        .limit
        .unwrap_or(DEFAULT_PRESENCE_PAGE)
        .clamp(1, max.max(1));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Keep the response within the frame size clients accept.
    let budget = ctx
        .config()
        .max_frame_size
        .saturating_sub(RESPONSE_OVERHEAD);
    Ok((limit, budget))
}

fn get(ctx: &mut Ctx<'_>, p: PresenceGetParams<'_>) -> Result<PresenceGetResult, RequestError> {
    let (limit, budget) = get_bounds(ctx, &p)?;
    let (members, next) = ctx
        .broker()
        .presence
        .page(p.topic, p.cursor.unwrap_or(0), limit, budget);
    Ok(PresenceGetResult { members, next })
}

fn get_clustered(
    ctx: &mut Ctx<'_>,
    p: PresenceGetParams<'_>,
) -> Result<
    futures_util::future::BoxFuture<'static, Result<PresenceGetResult, RequestError>>,
    RequestError,
> {
    let (limit, budget) = get_bounds(ctx, &p)?;
    let Some(cluster) = ctx.hub().cluster.get().cloned() else {
        return Ok(Box::pin(std::future::ready(get(ctx, p))));
    };
    let topic = p.topic.to_owned();
    let cursor = p.cursor.unwrap_or(0);
    Ok(Box::pin(async move {
        let (members, next) = cluster
            .presence_page(&topic, cursor, limit, budget)
            .await
            .map_err(|_| RequestError::Unavailable {
                message: "the cluster database is unavailable".into(),
                retry_after_ms: Some(crate::cluster::LINK_RETRY_AFTER_MS),
            })?;
        Ok(PresenceGetResult { members, next })
    }))
}

fn set(ctx: &mut Ctx<'_>, p: PresenceSetParams<'_>) -> Result<Empty, RequestError> {
    if !ctx.caps().presence {
        return Err(RequestError::forbidden("set presence"));
    }
    let info = p.info.as_bytes();
    if info.len() > ctx.config().max_presence_info {
        return Err(RequestError::PayloadTooLarge(
            "presence info exceeds max_presence_info".into(),
        ));
    }
    // Copied out of the request frame, so the frame's buffer is not kept
    // alive for as long as the info is set.
    let info = RawValue::from_bytes(
        bytes::Bytes::copy_from_slice(info),
        &DecodeLimits::default(),
    )
    .map_err(|_| RequestError::invalid_params("invalid info"))?;
    *ctx.conn().info.lock() = if info.is_null() { None } else { Some(info) };
    ctx.broker().announce_info(ctx.conn());
    Ok(Empty {})
}
