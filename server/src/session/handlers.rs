//! The dispatch table: one entry per method the hub serves after `auth`.
//!
//! The table is open: a new method is a new entry and a handler function;
//! the session loop does not change. Synchronous handlers run inline on the
//! connection's task (they never wait); asynchronous ones run concurrently
//! with the connection's other requests, can be cancelled, and are bounded
//! by the request timeout.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::{
    Empty, EventParams, PresenceGetParams, PresenceGetResult, PresenceSetParams, PublishParams,
    PublishResult, SubscribeParams, UnsubscribeParams,
};
use plexus_protocol::topic::{Pattern, Topic, TopicError};
use plexus_protocol::{ErrorCode, NotificationMethod, RawValue, WireError, decode_params};

use super::Session;
use crate::broker::SubscribeError;

/// What a handler answers: the encoded result item (shared bytes, so a
/// result taken from the request, like `ping`'s, is not copied), or an
/// error.
pub(crate) type Reply = Result<Bytes, WireError>;

/// How a method runs.
#[derive(Clone, Copy)]
pub(crate) enum Handler {
    /// Runs to completion on the connection task.
    Sync(fn(&mut Session, &RawValue) -> Reply),
    /// Returns a future that runs concurrently with other requests.
    Async(fn(&mut Session, &RawValue) -> Result<BoxFuture<'static, Reply>, WireError>),
}

/// Default page size of `presence.get`.
const DEFAULT_PRESENCE_PAGE: u64 = 100;

/// Room left in a response frame for the envelope and result map around a
/// page of members.
const RESPONSE_OVERHEAD: usize = 64;

static TABLE: &[(&str, Handler)] = &[
    ("ping", Handler::Sync(ping)),
    ("subscribe", Handler::Sync(subscribe)),
    ("unsubscribe", Handler::Sync(unsubscribe)),
    ("publish", Handler::Sync(publish)),
    ("presence.get", Handler::Sync(presence_get)),
    ("presence.set", Handler::Sync(presence_set)),
];

/// Test-only methods, served when `debug_methods` is on.
static DEBUG_TABLE: &[(&str, Handler)] = &[
    ("debug.sleep", Handler::Async(debug_sleep)),
    ("debug.panic", Handler::Sync(debug_panic)),
];

/// Finds the handler of a method, with its name as a static string.
pub(crate) fn lookup(name: &str, debug: bool) -> Option<(&'static str, Handler)> {
    let find = |t: &'static [(&'static str, Handler)]| t.iter().find(|(n, _)| *n == name).copied();
    find(TABLE).or_else(|| if debug { find(DEBUG_TABLE) } else { None })
}

pub(crate) fn encode<T: minicbor::Encode<()>>(value: &T) -> Reply {
    minicbor::to_vec(value)
        .map(Bytes::from)
        .map_err(|_| WireError::new(ErrorCode::Internal, "cannot encode result"))
}

fn topic_error(what: &str, e: TopicError) -> WireError {
    match e {
        TopicError::TooLong { .. } => {
            WireError::new(ErrorCode::PayloadTooLarge, format!("{what}: {e}"))
        }
        _ => WireError::new(ErrorCode::InvalidParams, format!("{what}: {e}")),
    }
}

fn forbidden(what: &str) -> WireError {
    WireError::new(ErrorCode::Forbidden, format!("not allowed to {what}"))
}

fn ping(_: &mut Session, params: &RawValue) -> Reply {
    Ok(params.to_bytes())
}

fn subscribe(s: &mut Session, params: &RawValue) -> Reply {
    let p: SubscribeParams = decode_params(params)?;
    let max = s.hub.config.max_topic_len;
    let pattern = Pattern::parse(p.topic, max).map_err(|e| topic_error("topic", e))?;
    let presence = p.presence.unwrap_or(false);
    if presence && !pattern.is_exact() {
        return Err(WireError::new(
            ErrorCode::InvalidParams,
            "presence needs an exact topic, not a pattern",
        ));
    }
    if !s.caps().is_some_and(|c| c.can_subscribe(&pattern)) {
        return Err(forbidden("subscribe to this topic"));
    }
    let max = s.hub.config.max_subscriptions;
    match s.hub.broker.subscribe(&s.conn, pattern, presence, max) {
        Ok(()) => encode(&Empty {}),
        Err(SubscribeError::AlreadySubscribed) => {
            Err(WireError::new(ErrorCode::Conflict, "already subscribed"))
        }
        Err(SubscribeError::TooMany) => Err(WireError::new(
            ErrorCode::TooManyRequests,
            "too many subscriptions",
        )),
    }
}

fn unsubscribe(s: &mut Session, params: &RawValue) -> Reply {
    let p: UnsubscribeParams = decode_params(params)?;
    if !s.hub.broker.unsubscribe(&s.conn, p.topic) {
        return Err(WireError::new(ErrorCode::NotFound, "not subscribed"));
    }
    encode(&Empty {})
}

fn publish(s: &mut Session, params: &RawValue) -> Reply {
    let p: PublishParams = decode_params(params)?;
    let topic =
        Topic::parse(p.topic, s.hub.config.max_topic_len).map_err(|e| topic_error("topic", e))?;
    if p.data.as_bytes().len() > s.hub.config.max_payload {
        return Err(WireError::new(
            ErrorCode::PayloadTooLarge,
            "payload exceeds max_payload",
        ));
    }
    if !s.caps().is_some_and(|c| c.can_publish(&topic)) {
        return Err(forbidden("publish on this topic"));
    }
    let event = EventParams::new(p.topic, p.data, Some(s.conn.user()));
    let frame = encode_notification(plexus_protocol::methods::Event::NAME, &event)
        .map(Bytes::from)
        .map_err(|_| WireError::new(ErrorCode::Internal, "cannot encode event"))?;
    let skip = if p.echo.unwrap_or(true) {
        None
    } else {
        Some(s.conn.id)
    };
    let fan = s.hub.broker.publish(p.topic, &frame, skip);
    let m = &s.hub.metrics;
    m.publishes.increment(1);
    m.deliveries.increment(fan.delivered);
    encode(&PublishResult::new(fan.delivered))
}

fn presence_get(s: &mut Session, params: &RawValue) -> Reply {
    let p: PresenceGetParams = decode_params(params)?;
    let topic =
        Topic::parse(p.topic, s.hub.config.max_topic_len).map_err(|e| topic_error("topic", e))?;
    if !s.caps().is_some_and(|c| c.can_read_presence(&topic)) {
        return Err(forbidden("read presence of this topic"));
    }
    let max = s.hub.config.max_presence_page as u64;
    let limit = p
        .limit
        .unwrap_or(DEFAULT_PRESENCE_PAGE)
        .clamp(1, max.max(1));
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    // Keep the response within the frame size clients accept.
    let budget = s
        .hub
        .config
        .max_frame_size
        .saturating_sub(RESPONSE_OVERHEAD);
    let (members, next) = s
        .hub
        .broker
        .presence
        .page(p.topic, p.cursor.unwrap_or(0), limit, budget);
    encode(&PresenceGetResult { members, next })
}

fn presence_set(s: &mut Session, params: &RawValue) -> Reply {
    let p: PresenceSetParams = decode_params(params)?;
    if !s.caps().is_some_and(|c| c.presence) {
        return Err(forbidden("set presence"));
    }
    let info = p.info.as_bytes();
    if info.len() > s.hub.config.max_presence_info {
        return Err(WireError::new(
            ErrorCode::PayloadTooLarge,
            "presence info exceeds max_presence_info",
        ));
    }
    // Copy the info out of the request frame, so the frame's buffer is not
    // kept alive for as long as the info is set.
    let info = RawValue::decode::<RawValue>(&params.slice_ref(p.info))
        .map_err(|_| WireError::new(ErrorCode::InvalidParams, "invalid info"))?;
    *s.conn.info.lock() = if info.is_null() { None } else { Some(info) };
    s.hub.broker.announce_info(&s.conn);
    encode(&Empty {})
}

/// `debug.sleep {0: ms}`: answers `{}` after `ms` milliseconds.
fn debug_sleep(_: &mut Session, params: &RawValue) -> Result<BoxFuture<'static, Reply>, WireError> {
    #[derive(minicbor::Decode)]
    #[cbor(map)]
    struct SleepParams {
        #[n(0)]
        ms: u64,
    }
    let p: SleepParams = decode_params(params)?;
    Ok(Box::pin(async move {
        tokio::time::sleep(Duration::from_millis(p.ms)).await;
        encode(&Empty {})
    }))
}

/// `debug.panic`: a handler that panics, to show a bug answers `internal`
/// and leaves the connection and the hub running.
fn debug_panic(_: &mut Session, _: &RawValue) -> Reply {
    #[allow(clippy::panic)]
    {
        panic!("debug.panic called")
    }
}
