//! Durable streams: the `since` of `subscribe`, the `subscribe` result, the
//! final chunk of a resume, and the `history` / `history.latest` methods.
//!
//! A durable topic (one matching a stream namespace the server configures)
//! keeps its events. Each has an `epoch` (random text, changed only when its
//! history is reset) and gapless `offset`s from 1; its namespace has gapless
//! `position`s across its topics, so a pattern inside one namespace can
//! resume too.

use minicbor::{Decode, Encode};

use crate::method::RpcMethod;
use crate::raw::RawValue;

text_enum! {
    /// The durability a durable publish reached before it was answered.
    ///
    /// ```
    /// use plexus_protocol::methods::Durability;
    /// assert_eq!(Durability::from_text("fsynced"), Durability::Fsynced);
    /// ```
    Durability {
        /// Committed by the database, not necessarily flushed to disk: an
        /// application crash keeps it, a power loss may not.
        Committed = "committed",
        /// Committed and flushed to stable storage.
        Fsynced = "fsynced",
    }
}

text_enum! {
    /// What a resume (`subscribe` with `since`) found.
    ResumeOutcome {
        /// The missed events were streamed (`count` of them, maybe 0).
        Recovered = "recovered",
        /// Retention no longer covers `since`; nothing was streamed.
        TooOld = "too_old",
        /// The epoch differs (the history was reset); nothing was streamed.
        Reset = "reset",
    }
}

text_enum! {
    /// The direction of a `history` page.
    Direction {
        /// Oldest first, from `from` (default: the earliest) upwards.
        Forward = "forward",
        /// Newest first, from `from` (default: the latest) downwards.
        Backward = "backward",
    }
}

/// `since` in `subscribe` params: `{? 0: epoch, ? 1: offset, ? 2:
/// position}`.
///
/// `offset` resumes an exact durable topic, `position` a pattern inside one
/// durable namespace. Without `epoch` any epoch is accepted: `{1: 0}` is
/// "from the start of whatever history exists".
///
/// ```
/// use plexus_protocol::methods::Since;
/// let s = Since::offset(Some("00ff00ff00ff00ff"), 41);
/// assert_eq!(s.offset, Some(41));
/// ```
///
/// It is a typed map nested in the params, so a repeated key makes it
/// invalid too (`docs/protocol.md` §4.8), like a repeated key of the params
/// map itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Encode)]
#[cbor(map)]
#[non_exhaustive]
pub struct Since<'a> {
    /// The epoch the client's position belongs to.
    #[b(0)]
    pub epoch: Option<&'a str>,
    /// The last offset the client has (exact topics).
    #[n(1)]
    pub offset: Option<u64>,
    /// The last namespace position the client has (patterns).
    #[n(2)]
    pub position: Option<u64>,
}

/// The wire form of [`Since`], decoded once its map is known to have no
/// repeated key.
#[derive(Decode)]
#[cbor(map)]
struct SinceWire<'a> {
    #[b(0)]
    epoch: Option<&'a str>,
    #[n(1)]
    offset: Option<u64>,
    #[n(2)]
    position: Option<u64>,
}

impl<'b, C> Decode<'b, C> for Since<'b> {
    fn decode(d: &mut minicbor::Decoder<'b>, ctx: &mut C) -> Result<Self, minicbor::decode::Error> {
        let start = d.position();
        d.skip()?;
        let input: &'b [u8] = d.input();
        let item = input.get(start..d.position()).unwrap_or_default();
        if crate::typed::duplicate_int_key(item) {
            return Err(minicbor::decode::Error::message("since: duplicate map key"));
        }
        let w: SinceWire<'b> = minicbor::Decoder::new(item).decode_with(ctx)?;
        Ok(Since {
            epoch: w.epoch,
            offset: w.offset,
            position: w.position,
        })
    }
}

impl<'a> Since<'a> {
    /// Resume an exact topic after `offset`.
    pub fn offset(epoch: Option<&'a str>, offset: u64) -> Self {
        Since {
            epoch,
            offset: Some(offset),
            position: None,
        }
    }

    /// Resume a pattern after namespace `position`.
    pub fn position(epoch: Option<&'a str>, position: u64) -> Self {
        Since {
            epoch,
            offset: None,
            position: Some(position),
        }
    }
}

/// `subscribe` result: `{? 0: epoch, ? 1: offset, ? 2: position}`. On a
/// durable topic or a pattern inside one durable namespace, the current last
/// values (0 when empty), so that a subscription that never saw an event can
/// still resume later; `{}` otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct SubscribeResult {
    /// The topic's epoch (exact topic) or the namespace's (pattern).
    #[n(0)]
    pub epoch: Option<String>,
    /// The topic's last offset (exact topics).
    #[n(1)]
    pub offset: Option<u64>,
    /// The namespace's last position.
    #[n(2)]
    pub position: Option<u64>,
}

impl SubscribeResult {
    /// A result with the durable state.
    pub fn durable(epoch: impl Into<String>, offset: Option<u64>, position: u64) -> Self {
        SubscribeResult {
            epoch: Some(epoch.into()),
            offset,
            position: Some(position),
        }
    }
}

/// The final chunk of a resume: `{0: outcome, 1: count, 2: epoch, 3:
/// offset, 4: position, ? 5: earliest}`. The subscription is live after it,
/// from `offset` (exact topic) or `position` (pattern): every later event
/// has a greater one.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ResumeFinal {
    /// What the resume found.
    #[n(0)]
    pub outcome: ResumeOutcome,
    /// Events streamed before this chunk.
    #[n(1)]
    pub count: u64,
    /// The current epoch (of the topic, or of the namespace for a pattern).
    #[n(2)]
    pub epoch: String,
    /// The topic's offset the subscription is live from (0 for patterns).
    #[n(3)]
    pub offset: u64,
    /// The namespace position the subscription is live from.
    #[n(4)]
    pub position: u64,
    /// With `too_old`: the first offset (exact topic) or position (pattern)
    /// from which the history is complete.
    #[n(5)]
    pub earliest: Option<u64>,
}

impl ResumeFinal {
    /// A final chunk.
    pub fn new(
        outcome: ResumeOutcome,
        count: u64,
        epoch: impl Into<String>,
        offset: u64,
        position: u64,
        earliest: Option<u64>,
    ) -> Self {
        ResumeFinal {
            outcome,
            count,
            epoch: epoch.into(),
            offset,
            position,
            earliest,
        }
    }
}

/// `history` params: `{0: topic, ? 1: from, ? 2: direction, ? 3: limit}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct HistoryParams<'a> {
    /// An exact durable topic.
    #[b(0)]
    pub topic: &'a str,
    /// The first offset of the page (inclusive).
    #[n(1)]
    pub from: Option<u64>,
    /// `forward` (default) or `backward`.
    #[n(2)]
    pub direction: Option<Direction>,
    /// Most events (default 100, capped by `max_history_page` and the frame
    /// size).
    #[n(3)]
    pub limit: Option<u64>,
}

impl<'a> HistoryParams<'a> {
    /// The first page forwards from the earliest event of `topic`.
    pub fn new(topic: &'a str) -> Self {
        HistoryParams {
            topic,
            from: None,
            direction: None,
            limit: None,
        }
    }

    /// Starts the page at `from` (inclusive).
    pub fn with_from(mut self, from: u64) -> Self {
        self.from = Some(from);
        self
    }

    /// Sets the direction.
    pub fn with_direction(mut self, direction: Direction) -> Self {
        self.direction = Some(direction);
        self
    }

    /// Sets the limit.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// `history` result: `{0: [* event-params], 1: epoch, ? 2: next, 3: first,
/// 4: last}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct HistoryResult {
    /// The events, each an `event` params map with offset and position.
    #[n(0)]
    pub events: Vec<RawValue>,
    /// The topic's epoch.
    #[n(1)]
    pub epoch: String,
    /// `from` of the next page; absent at the end.
    #[n(2)]
    pub next: Option<u64>,
    /// The first offset still stored (last + 1 when none is).
    #[n(3)]
    pub first: u64,
    /// The last offset (0 when the topic has no event yet).
    #[n(4)]
    pub last: u64,
}

/// `history` — a page of a durable topic's events.
#[derive(Debug)]
pub enum History {}
impl RpcMethod for History {
    const NAME: &'static str = "history";
    type Params<'a> = HistoryParams<'a>;
    type Result = HistoryResult;
}

/// `history.latest` params: `{0: pattern, ? 1: after, ? 2: limit}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct HistoryLatestParams<'a> {
    /// A topic or pattern inside one durable namespace.
    #[b(0)]
    pub pattern: &'a str,
    /// Continue after this topic (the `next` of the previous page).
    #[b(1)]
    pub after: Option<&'a str>,
    /// Most topics (default 100, capped like `history`).
    #[n(2)]
    pub limit: Option<u64>,
}

impl<'a> HistoryLatestParams<'a> {
    /// The first page of `pattern`.
    pub fn new(pattern: &'a str) -> Self {
        HistoryLatestParams {
            pattern,
            after: None,
            limit: None,
        }
    }

    /// Continues after `topic`.
    pub fn with_after(mut self, topic: &'a str) -> Self {
        self.after = Some(topic);
        self
    }

    /// Sets the limit.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }
}

/// `history.latest` result: `{0: [* event-params], ? 1: next}`: the last
/// event of each topic, topics in byte order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct HistoryLatestResult {
    /// One event per topic.
    #[n(0)]
    pub events: Vec<RawValue>,
    /// `after` of the next page; absent at the end.
    #[n(1)]
    pub next: Option<String>,
}

/// `history.latest` — the last event of each topic under a pattern.
#[derive(Debug)]
pub enum HistoryLatest {}
impl RpcMethod for HistoryLatest {
    const NAME: &'static str = "history.latest";
    type Params<'a> = HistoryLatestParams<'a>;
    type Result = HistoryLatestResult;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::methods::{EventParams, PublishParams, PublishResult, SubscribeParams};
    use crate::{RawValue, decode_params};

    #[test]
    fn older_maps_decode_without_the_new_keys() {
        // {0: 3}: a publish result of a non-durable topic.
        let r: PublishResult = minicbor::decode(&[0xa1, 0x00, 0x03]).unwrap();
        assert_eq!(r, PublishResult::new(3));
        // {0: "a", 1: h''}: a subscribe without since.
        let raw = RawValue::encode(&SubscribeParams::new("a")).unwrap();
        assert_eq!(raw.as_bytes(), &[0xa1, 0x00, 0x61, b'a']);
        let p: SubscribeParams = decode_params(&raw).unwrap();
        assert_eq!(p.since, None);
    }

    #[test]
    fn new_keys_round_trip() {
        let data = RawValue::encode(&1u8).unwrap();
        let p = PublishParams::new("o.1", data.as_raw_ref())
            .with_producer("p", 7)
            .with_key("k")
            .with_expected_offset(0);
        let raw = RawValue::encode(&p).unwrap();
        assert_eq!(decode_params::<PublishParams>(&raw).unwrap(), p);

        let r = PublishResult::durable(2, Some(5), Some(9), "e", Durability::Fsynced, true);
        let raw = RawValue::encode(&r).unwrap();
        assert_eq!(raw.decode::<PublishResult>().unwrap(), r);

        let ev = EventParams::new("o.1", data.as_raw_ref(), None).with_position(5, 9);
        let raw = RawValue::encode(&ev).unwrap();
        assert_eq!(raw.decode::<EventParams>().unwrap(), ev);

        let s = SubscribeParams::new("o.>").with_since(Since::position(Some("e"), 3));
        let raw = RawValue::encode(&s).unwrap();
        assert_eq!(decode_params::<SubscribeParams>(&raw).unwrap(), s);

        let f = ResumeFinal::new(ResumeOutcome::TooOld, 0, "e", 0, 10, Some(4));
        let raw = RawValue::encode(&f).unwrap();
        assert_eq!(raw.decode::<ResumeFinal>().unwrap(), f);

        let h = HistoryParams::new("o.1")
            .with_from(3)
            .with_direction(Direction::Backward)
            .with_limit(10);
        let raw = RawValue::encode(&h).unwrap();
        assert_eq!(decode_params::<HistoryParams>(&raw).unwrap(), h);

        let l = HistoryLatestParams::new("o.*")
            .with_after("o.1")
            .with_limit(2);
        let raw = RawValue::encode(&l).unwrap();
        assert_eq!(decode_params::<HistoryLatestParams>(&raw).unwrap(), l);
    }

    #[test]
    fn a_repeated_key_in_since_is_invalid() {
        // {0: "a", 2: {1: 40, 1: 41}}
        let bytes = vec![
            0xa2, 0x00, 0x61, b'a', 0x02, 0xa2, 0x01, 0x18, 40, 0x01, 0x18, 41,
        ];
        let raw = RawValue::from_bytes(bytes.into(), &Default::default()).unwrap();
        let e = decode_params::<SubscribeParams>(&raw).unwrap_err();
        assert_eq!(e.code, crate::ErrorCode::InvalidParams);
        // {0: "a", 2: {0: "e", 1: 40, 9: 1}}: unknown keys are still skipped.
        let bytes = vec![
            0xa2, 0x00, 0x61, b'a', 0x02, 0xa3, 0x00, 0x61, b'e', 0x01, 0x18, 40, 0x09, 0x01,
        ];
        let raw = RawValue::from_bytes(bytes.into(), &Default::default()).unwrap();
        let p = decode_params::<SubscribeParams>(&raw).unwrap();
        assert_eq!(p.since, Some(Since::offset(Some("e"), 40)));
    }

    #[test]
    fn unknown_texts_decode_as_unknown() {
        let raw = RawValue::encode(&"sideways").unwrap();
        assert_eq!(
            raw.decode::<Direction>().unwrap(),
            Direction::Unknown("sideways".into())
        );
        assert_eq!(ResumeOutcome::Reset.as_str(), "reset");
    }

    #[test]
    fn subscribe_result_is_compatible_with_the_empty_map() {
        use crate::method::RpcMethod;
        use crate::methods::{Empty, Subscribe};
        // A plain subscribe's `{}` decodes as a result with every field None…
        let raw = RawValue::encode(&Empty {}).unwrap();
        let r: <Subscribe as RpcMethod>::Result = raw.decode().unwrap();
        assert_eq!(r, SubscribeResult::default());
        // …and the default result encodes as `{}`, byte for byte.
        assert_eq!(
            RawValue::encode(&SubscribeResult::default())
                .unwrap()
                .as_bytes(),
            &[0xa0]
        );
        // A durable one keeps its keys.
        let d = SubscribeResult::durable("e", Some(3), 7);
        let back: SubscribeResult = RawValue::encode(&d).unwrap().decode().unwrap();
        assert_eq!(back, d);
    }
}
