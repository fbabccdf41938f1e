//! Pub/sub methods: `subscribe`, `unsubscribe`, `publish` and the `event`
//! notification.

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::methods::Empty;
use crate::methods::streams::{Durability, Since, SubscribeResult};
use crate::raw::RawRef;

/// `subscribe` params: `{0: topic, ? 1: presence, ? 2: since}`.
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
    /// Resume a durable subscription from this position: the missed events
    /// come first, streamed as chunks, then a final chunk with the outcome
    /// (`docs/protocol.md`, durable streams).
    #[b(2)]
    pub since: Option<Since<'a>>,
}

impl<'a> SubscribeParams<'a> {
    /// Subscribe to `topic` (a topic or pattern), without presence.
    pub fn new(topic: &'a str) -> Self {
        SubscribeParams {
            topic,
            presence: None,
            since: None,
        }
    }

    /// Resumes from `since` (durable topics and patterns only).
    pub fn with_since(mut self, since: Since<'a>) -> Self {
        self.since = Some(since);
        self
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
    /// `{}` on a plain topic (all fields `None`); the epoch and position on
    /// a durable topic or a pattern inside one durable namespace (§23.5).
    type Result = SubscribeResult;
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

/// `publish` params: `{0: topic, 1: data, ? 2: echo, ? 3: producer, ? 4:
/// seq, ? 5: key, ? 6: expected_offset}`. Keys 3–6 are for durable topics
/// only.
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
    /// Producer id for idempotent publishing (1–128 bytes; with `seq`).
    #[b(3)]
    pub producer: Option<&'a str>,
    /// The producer's sequence number of this publish (with `producer`).
    #[n(4)]
    pub seq: Option<u64>,
    /// Idempotency key (1–128 bytes), kept for the server's
    /// idempotency retention.
    #[b(5)]
    pub key: Option<&'a str>,
    /// Publish only if the topic's last offset is this (0: no event yet).
    #[n(6)]
    pub expected_offset: Option<u64>,
}

impl<'a> PublishParams<'a> {
    /// Publish `data` (one encoded CBOR item) on `topic`.
    pub fn new(topic: &'a str, data: RawRef<'a>) -> Self {
        PublishParams {
            topic,
            data,
            echo: None,
            producer: None,
            seq: None,
            key: None,
            expected_offset: None,
        }
    }

    /// Sets the producer id and sequence number (idempotent publish).
    pub fn with_producer(mut self, producer: &'a str, seq: u64) -> Self {
        self.producer = Some(producer);
        self.seq = Some(seq);
        self
    }

    /// Sets the idempotency key.
    pub fn with_key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }

    /// Publish only if the topic's last offset is `offset`.
    pub fn with_expected_offset(mut self, offset: u64) -> Self {
        self.expected_offset = Some(offset);
        self
    }

    /// Sets the `echo` flag.
    pub fn with_echo(mut self, echo: bool) -> Self {
        self.echo = Some(echo);
        self
    }
}

/// `publish` result: `{0: delivered, ? 1: offset, ? 2: epoch, ? 3:
/// durability, ? 4: duplicate, ? 5: position}`. Keys 1–5 come from durable
/// topics only.
///
/// `#[non_exhaustive]` (later revisions add keys): build it with
/// [`PublishResult::new`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct PublishResult {
    /// How many connections the event was queued for.
    #[n(0)]
    pub delivered: u64,
    /// The event's offset in its topic. Absent on a duplicate whose original
    /// retention already removed.
    #[n(1)]
    pub offset: Option<u64>,
    /// The topic's epoch.
    #[n(2)]
    pub epoch: Option<String>,
    /// The durability reached before this answer.
    #[n(3)]
    pub durability: Option<Durability>,
    /// `true` when the publish was a retry and was not stored again.
    #[n(4)]
    pub duplicate: Option<bool>,
    /// The event's position in its namespace.
    #[n(5)]
    pub position: Option<u64>,
}

impl PublishResult {
    /// A result for an event queued for `delivered` connections.
    pub fn new(delivered: u64) -> Self {
        PublishResult {
            delivered,
            ..PublishResult::default()
        }
    }

    /// A result for a durable publish: stored (or found stored) at `offset`
    /// / `position` of the topic with `epoch`, after reaching `durability`.
    pub fn durable(
        delivered: u64,
        offset: Option<u64>,
        position: Option<u64>,
        epoch: impl Into<String>,
        durability: Durability,
        duplicate: bool,
    ) -> Self {
        PublishResult {
            delivered,
            offset,
            epoch: Some(epoch.into()),
            durability: Some(durability),
            duplicate: duplicate.then_some(true),
            position,
        }
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

/// `event` params: `{0: topic, 1: data, ? 2: from, ? 3: offset, ? 4:
/// position}` (offset and position on durable topics).
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
    /// Its offset in the topic (durable topics).
    #[n(3)]
    pub offset: Option<u64>,
    /// Its position in the topic's namespace (durable topics).
    #[n(4)]
    pub position: Option<u64>,
}

impl<'a> EventParams<'a> {
    /// An event on `topic` carrying `data`, published by `from`.
    pub fn new(topic: &'a str, data: RawRef<'a>, from: Option<&'a str>) -> Self {
        EventParams {
            topic,
            data,
            from,
            offset: None,
            position: None,
        }
    }

    /// Sets the durable `offset` and `position`.
    pub fn with_position(mut self, offset: u64, position: u64) -> Self {
        self.offset = Some(offset);
        self.position = Some(position);
        self
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
