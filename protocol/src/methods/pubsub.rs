//! Pub/sub methods: `subscribe`, `unsubscribe`, `publish` and the `event`
//! notification.

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::methods::Empty;
use crate::raw::RawRef;

/// `subscribe` params: `{0: topic, ? 1: presence}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct SubscribeParams<'a> {
    /// A topic, or a pattern with `*` and `>` wildcards.
    #[b(0)]
    pub topic: &'a str,
    /// Join the topic's presence and receive `presence.join` /
    /// `presence.leave` for it (exact topics only).
    #[n(1)]
    pub presence: Option<bool>,
}

/// `subscribe` — receive `event`s published on matching topics.
#[derive(Debug)]
pub enum Subscribe {}
impl RpcMethod for Subscribe {
    const NAME: &'static str = "subscribe";
    type Params<'a> = SubscribeParams<'a>;
    type Result = Empty;
}

/// `unsubscribe` params: `{0: topic}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct UnsubscribeParams<'a> {
    /// The topic or pattern exactly as subscribed.
    #[b(0)]
    pub topic: &'a str,
}

/// `unsubscribe` — drop a subscription (and its presence).
#[derive(Debug)]
pub enum Unsubscribe {}
impl RpcMethod for Unsubscribe {
    const NAME: &'static str = "unsubscribe";
    type Params<'a> = UnsubscribeParams<'a>;
    type Result = Empty;
}

/// `publish` params: `{0: topic, 1: data, ? 2: echo}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PublishParams<'a> {
    /// The topic (no wildcards).
    #[b(0)]
    pub topic: &'a str,
    /// The payload: any CBOR item, routed unchanged.
    #[b(1)]
    pub data: RawRef<'a>,
    /// Deliver to the publisher's own connection too (default `true`).
    #[n(2)]
    pub echo: Option<bool>,
}

/// `publish` result: `{0: delivered}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PublishResult {
    /// How many connections the event was queued for.
    #[n(0)]
    pub delivered: u64,
}

/// `publish` — send an event to every subscriber of a topic.
#[derive(Debug)]
pub enum Publish {}
impl RpcMethod for Publish {
    const NAME: &'static str = "publish";
    type Params<'a> = PublishParams<'a>;
    type Result = PublishResult;
}

/// `event` params: `{0: topic, 1: data, ? 2: from}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct EventParams<'a> {
    /// The topic it was published on (never a pattern).
    #[b(0)]
    pub topic: &'a str,
    /// The payload exactly as published.
    #[b(1)]
    pub data: RawRef<'a>,
    /// The publishing user.
    #[b(2)]
    pub from: Option<&'a str>,
}

/// `event` — an event on a topic matching one or more of the connection's
/// subscriptions. Delivered once per connection, however many of its
/// subscriptions match.
#[derive(Debug)]
pub enum Event {}
impl NotificationMethod for Event {
    const NAME: &'static str = "event";
    type Params<'a> = EventParams<'a>;
}
