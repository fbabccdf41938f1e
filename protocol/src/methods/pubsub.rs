//! Pub/sub methods: `subscribe`, `unsubscribe`, `publish` and the `event`
//! notification.

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::methods::Empty;
use crate::raw::RawRef;

/// `subscribe` params: `{0: topic, ? 1: presence}`.
///
/// `#[non_exhaustive]` (later revisions add keys): build it with
/// [`SubscribeParams::new`].
///
/// ```
/// use plexus_protocol::methods::SubscribeParams;
/// let p = SubscribeParams::new("chat.room1").with_presence(true);
/// assert_eq!(p.presence, Some(true));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SubscribeParams<'a> {
    /// A topic, or a pattern with `*` and `>` wildcards.
    #[b(0)]
    pub topic: &'a str,
    /// Join the topic's presence and receive `presence.join` /
    /// `presence.leave` for it (exact topics only).
    #[n(1)]
    pub presence: Option<bool>,
}

impl<'a> SubscribeParams<'a> {
    /// Subscribe to `topic` (a topic or pattern), without presence.
    pub fn new(topic: &'a str) -> Self {
        SubscribeParams {
            topic,
            presence: None,
        }
    }

    /// Sets the `presence` flag.
    pub fn with_presence(mut self, presence: bool) -> Self {
        self.presence = Some(presence);
        self
    }
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
    /// The topic or pattern exactly as subscribed: any non-empty text.
    #[b(0)]
    #[cbor(decode_with = "non_empty_str")]
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
///
/// `#[non_exhaustive]` (later revisions add keys): build it with
/// [`PublishParams::new`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
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

impl<'a> PublishParams<'a> {
    /// Publish `data` (one encoded CBOR item) on `topic`.
    pub fn new(topic: &'a str, data: RawRef<'a>) -> Self {
        PublishParams {
            topic,
            data,
            echo: None,
        }
    }

    /// Sets the `echo` flag.
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = Some(echo);
        self
    }
}

/// `publish` result: `{0: delivered}`.
///
/// `#[non_exhaustive]` (later revisions add keys): build it with
/// [`PublishResult::new`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct PublishResult {
    /// How many connections the event was queued for.
    #[n(0)]
    pub delivered: u64,
}

impl PublishResult {
    /// A result for an event queued for `delivered` connections.
    pub fn new(delivered: u64) -> Self {
        PublishResult { delivered }
    }
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
///
/// `#[non_exhaustive]` (later revisions add keys): build it with
/// [`EventParams::new`].
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
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

impl<'a> EventParams<'a> {
    /// An event on `topic` carrying `data`, published by `from`.
    pub fn new(topic: &'a str, data: RawRef<'a>, from: Option<&'a str>) -> Self {
        EventParams { topic, data, from }
    }
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

/// Decodes a text string that must not be empty (CDDL `tstr .ne ""`).
fn non_empty_str<'b, C>(
    d: &mut minicbor::Decoder<'b>,
    _ctx: &mut C,
) -> Result<&'b str, minicbor::decode::Error> {
    let s = d.str()?;
    if s.is_empty() {
        return Err(minicbor::decode::Error::message("empty text"));
    }
    Ok(s)
}
