//! Durable subscriptions and idempotent publishes: the position of each
//! durable subscription, its resume (`subscribe` with `since`) after every
//! reconnect, the catch-up chunks, de-duplication by offset, the typed
//! outcomes, and the producer sequence numbers.
//!
//! A durable subscription holds a hub subscription of its own (never
//! shared with another local subscription: its catch-up is its own), so
//! one pattern is either durable or plain on a client.
//!
//! Its position is the offset (exact topic) or namespace position
//! (pattern) of the last event *queued* for the application: the queue
//! survives reconnects, so the resume continues right after it. An event
//! whose offset is not above the position is a duplicate (the seam between
//! catch-up and live delivery, or a replay after a reconnect) and dropped.
//! Live `event`s that arrive while a resume streams its catch-up are
//! ignored: the hub sends every event after the final chunk's position
//! after that chunk (its seam), so they come again in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::methods::{
    EventParams, PublishResult, ResumeFinal, ResumeOutcome, SubscribeResult,
};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{ErrorCode, RawValue, WireError};
use tracing::debug;

use crate::deliver::ReplyTx;
use crate::durable::{DurableEvent, DurableMessage, DurableQueue, PublishAck, StreamPosition};
use crate::error::Error;

/// How long a renewal refused with a retryable error and no
/// `retry_after_ms` waits before it is sent again.
pub(crate) const DEFAULT_RESUME_RETRY: Duration = Duration::from_millis(500);

/// The longest such wait, whatever the hub's hint.
pub(crate) const MAX_RESUME_RETRY: Duration = Duration::from_secs(30);

/// Where a durable subscription stands with the hub on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DPhase {
    /// Waiting for a connection.
    Idle,
    /// `subscribe` without `since` sent (request id).
    Subscribing(u64),
    /// `subscribe` with `since` sent: catch-up chunks until the final one.
    Resuming {
        /// The request id.
        id: u64,
        /// The `seq` the next chunk must carry.
        next_seq: u64,
    },
    /// Live: events come as `event` notifications.
    Live,
}

struct DSub {
    pattern: Pattern,
    queue: Arc<DurableQueue>,
    /// The epoch and the last offset (position) queued; `None` until the
    /// hub first answered a subscription that started now.
    pos: Option<StreamPosition>,
    phase: DPhase,
    /// The application waits for the first confirmation.
    reply: Option<SubscribeReply>,
    /// The application dropped it; the hub's side is removed once its
    /// answer arrives.
    gone: bool,
}

impl DSub {
    fn exact(&self) -> bool {
        self.pattern.is_exact()
    }

    fn key(&self, e: &EventParams<'_>) -> Option<u64> {
        if self.exact() { e.offset } else { e.position }
    }

    /// Queues `e` unless it is not after the position; moves the position.
    fn offer(&mut self, params: &RawValue, e: &EventParams<'_>) -> bool {
        let (Some(key), Some(offset), Some(position)) = (self.key(e), e.offset, e.position) else {
            debug!("an event without offset on a durable subscription, ignored");
            return false;
        };
        let epoch = self.pos.as_ref().and_then(|p| p.epoch.clone());
        if self.pos.as_ref().is_some_and(|p| key <= p.last) {
            return false;
        }
        self.pos = Some(StreamPosition::new(epoch.clone(), key));
        self.queue.push(DurableEvent::Message(DurableMessage {
            topic: e.topic.into(),
            data: params.slice_ref(e.data),
            from: e.from.map(Into::into),
            offset,
            position,
            epoch,
        }));
        true
    }

    /// Live; the application learns `started` (the hub's position of a
    /// subscription that started now) if it still waits.
    fn confirm(&mut self, started: Option<StreamPosition>) {
        self.phase = DPhase::Live;
        if let Some(r) = self.reply.take() {
            r.send(Ok(started));
        }
    }

    fn fail(self, err: Error) {
        match self.reply {
            Some(r) => r.send(Err(err)),
            None => self.queue.end(err),
        }
    }
}

/// Where the answer to a durable `subscribe` goes: `Ok(Some(position))`
/// for a subscription that started now (the hub's current position, for
/// the position store), `Ok(None)` for a resume.
pub(crate) type SubscribeReply = ReplyTx<Result<Option<StreamPosition>, Error>>;

/// What the core must send after a durable subscription was dropped.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum AfterDrop {
    /// Nothing (the hub holds nothing, or its answer is awaited).
    Nothing,
    /// `unsubscribe` this pattern.
    Unsubscribe(String),
    /// `cancel` the resume with this id (unsubscribed after its end).
    Cancel(u64),
}

/// The durable side of the client.
pub(crate) struct Durables {
    subs: HashMap<u64, DSub>,
    /// A resume was refused with a retryable error (`unavailable`, …):
    /// subscribe again after this long.
    retry: Option<Duration>,
    producer: Arc<str>,
    next_seq: u64,
}

impl Durables {
    /// No subscription yet; publishes get `producer` and sequence numbers
    /// from `first_seq` up.
    pub(crate) fn new(producer: Arc<str>, first_seq: u64) -> Durables {
        Durables {
            subs: HashMap::new(),
            retry: None,
            producer,
            next_seq: first_seq.max(1),
        }
    }

    /// The producer id.
    pub(crate) fn producer(&self) -> &str {
        &self.producer
    }

    /// The sequence number of the next publish.
    pub(crate) fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq = self.next_seq.saturating_add(1);
        seq
    }

    /// Whether a durable subscription holds `pattern`.
    pub(crate) fn holds(&self, pattern: &str) -> bool {
        self.subs
            .values()
            .any(|s| !s.gone && s.pattern.as_str() == pattern)
    }

    /// Adds a subscription starting after `pos` (`None`: now).
    pub(crate) fn add(
        &mut self,
        local: u64,
        pattern: Pattern,
        pos: Option<StreamPosition>,
        queue: Arc<DurableQueue>,
        reply: SubscribeReply,
    ) {
        self.subs.insert(
            local,
            DSub {
                pattern,
                queue,
                pos,
                phase: DPhase::Idle,
                reply: Some(reply),
                gone: false,
            },
        );
    }

    /// The subscriptions waiting for a connection, with what to send:
    /// (local id, pattern, `since` as epoch and last).
    pub(crate) fn to_subscribe(&self) -> Vec<(u64, String, Option<StreamPosition>)> {
        let mut v: Vec<_> = self
            .subs
            .iter()
            .filter(|(_, s)| !s.gone && s.phase == DPhase::Idle)
            .map(|(l, s)| (*l, s.pattern.as_str().to_owned(), s.pos.clone()))
            .collect();
        v.sort_by_key(|(l, _, _)| *l);
        v
    }

    /// Whether `pattern` is exact (its `since` takes an offset).
    pub(crate) fn is_exact(&self, local: u64) -> bool {
        self.subs.get(&local).is_some_and(DSub::exact)
    }

    /// The `subscribe` for `local` went out as request `id`.
    pub(crate) fn sent(&mut self, local: u64, id: u64, resuming: bool) {
        if let Some(s) = self.subs.get_mut(&local) {
            s.phase = if resuming {
                DPhase::Resuming { id, next_seq: 0 }
            } else {
                DPhase::Subscribing(id)
            };
        }
    }

    /// The phase of `local` (tests).
    #[cfg(test)]
    pub(crate) fn phase(&self, local: u64) -> Option<DPhase> {
        self.subs.get(&local).map(|s| s.phase)
    }

    /// The position of `local` (tests).
    #[cfg(test)]
    pub(crate) fn position(&self, local: u64) -> Option<StreamPosition> {
        self.subs.get(&local).and_then(|s| s.pos.clone())
    }

    /// A response to the `subscribe` of `local`. Returns the pattern to
    /// `unsubscribe` when nobody wants it any more.
    pub(crate) fn answered(
        &mut self,
        local: u64,
        outcome: Result<RawValue, WireError>,
    ) -> Option<String> {
        let sub = self.subs.get_mut(&local)?;
        if sub.gone {
            let s = self.subs.remove(&local)?;
            return outcome.is_ok().then(|| s.pattern.as_str().to_owned());
        }
        let result = outcome.and_then(|v| {
            v.decode::<SubscribeResult>()
                .map_err(|_| WireError::new(ErrorCode::Internal, "undecodable subscribe result"))
        });
        match result {
            Ok(r) if r.epoch.is_some() => {
                let last = if sub.exact() { r.offset } else { r.position }.unwrap_or(0);
                let epoch: Option<Arc<str>> = r.epoch.map(Into::into);
                let started = StreamPosition::new(epoch.clone(), last);
                let last = sub.pos.as_ref().map_or(last, |p| p.last.max(last));
                sub.pos = Some(StreamPosition::new(epoch, last));
                sub.confirm(Some(started));
                None
            }
            Ok(_) => {
                let s = self.subs.remove(&local)?;
                let pattern = s.pattern.as_str().to_owned();
                s.fail(Error::Remote(WireError::new(
                    ErrorCode::InvalidParams,
                    "not a durable topic, nor a pattern inside one durable namespace",
                )));
                Some(pattern)
            }
            // A renewal (nobody waits for it) refused for a while: the
            // hub's storage is down or busy. Try again, from the position.
            Err(e) if sub.reply.is_none() && e.code.retryable() => {
                sub.phase = DPhase::Idle;
                let wait = e
                    .retry_after_ms
                    .map_or(DEFAULT_RESUME_RETRY, Duration::from_millis)
                    .min(MAX_RESUME_RETRY);
                self.retry = Some(self.retry.map_or(wait, |w| w.max(wait)));
                None
            }
            Err(e) => {
                if let Some(s) = self.subs.remove(&local) {
                    s.fail(Error::Remote(e));
                }
                None
            }
        }
    }

    /// How long to wait before resuming the subscriptions refused with a
    /// retryable error, if any were.
    pub(crate) fn take_retry(&mut self) -> Option<Duration> {
        self.retry.take()
    }

    /// A chunk of the resume of `local`. Returns what to do with the
    /// request: `Ok(true)` it ended (final chunk), `Ok(false)` more
    /// follows, `Err(())` the stream broke (cancel it).
    pub(crate) fn chunk(
        &mut self,
        local: u64,
        seq: u64,
        fin: bool,
        data: &RawValue,
    ) -> Result<bool, Broken> {
        let Some(sub) = self.subs.get_mut(&local) else {
            return Ok(fin);
        };
        let DPhase::Resuming { next_seq, .. } = &mut sub.phase else {
            return Ok(fin);
        };
        if sub.gone {
            return Ok(fin);
        }
        if seq != *next_seq {
            return Err(self.broken(local, "chunk sequence gap"));
        }
        *next_seq += 1;
        // The hub accepted the resume (its checks come before any chunk):
        // the application may consume the catch-up now.
        if let Some(r) = sub.reply.take() {
            r.send(Ok(None));
        }
        if !fin {
            let Ok(events) = data.decode::<Vec<EventParams<'_>>>() else {
                return Err(self.broken(local, "undecodable catch-up chunk"));
            };
            for e in &events {
                sub.offer(data, e);
            }
            return Ok(false);
        }
        let Ok(f) = data.decode::<ResumeFinal>() else {
            return Err(self.broken(local, "undecodable final chunk"));
        };
        let last = if sub.exact() { f.offset } else { f.position };
        let epoch: Arc<str> = f.epoch.as_str().into();
        let position = StreamPosition::new(Some(epoch.clone()), last);
        let event = match f.outcome {
            ResumeOutcome::Recovered => DurableEvent::Recovered {
                count: f.count,
                position: position.clone(),
            },
            ResumeOutcome::TooOld => DurableEvent::TooOld {
                earliest: f.earliest,
                position: position.clone(),
            },
            // A reset, or an outcome this version does not know: either
            // way the events since the position are not coming.
            _ => DurableEvent::Reset {
                epoch,
                position: position.clone(),
            },
        };
        // Live from `last`: the hub streamed (or will never stream)
        // everything up to it.
        let last = sub.pos.as_ref().map_or(last, |p| {
            if matches!(event, DurableEvent::Recovered { .. }) {
                p.last.max(last)
            } else {
                last
            }
        });
        sub.pos = Some(StreamPosition::new(position.epoch.clone(), last));
        sub.queue.push(event);
        sub.confirm(None);
        Ok(true)
    }

    fn broken(&mut self, local: u64, why: &'static str) -> Broken {
        if let Some(s) = self.subs.get_mut(&local) {
            debug!(why, "a durable subscription's resume broke");
            s.gone = true;
            match s.reply.take() {
                Some(r) => r.send(Err(Error::BrokenStream(why))),
                None => s.queue.end(Error::BrokenStream(why)),
            }
        }
        Broken
    }

    /// The final chunk of a resume of a dropped subscription arrived:
    /// remove it; returns the pattern to `unsubscribe`.
    pub(crate) fn ended_if_gone(&mut self, local: u64) -> Option<String> {
        if self.subs.get(&local).is_some_and(|s| s.gone) {
            return self
                .subs
                .remove(&local)
                .map(|s| s.pattern.as_str().to_owned());
        }
        None
    }

    /// An `event`: queued for every live durable subscription it matches
    /// and is new to.
    pub(crate) fn event(&mut self, params: &RawValue) {
        if self.subs.is_empty() {
            return;
        }
        let Ok(e) = params.decode::<EventParams>() else {
            return;
        };
        for sub in self.subs.values_mut() {
            // During a resume the hub resends what is after its final
            // chunk; before the first answer of a start-now subscription
            // an event may come early (§11.4).
            let takes = matches!(sub.phase, DPhase::Live | DPhase::Subscribing(_));
            if takes && !sub.gone && sub.pattern.matches_str(e.topic) {
                sub.offer(params, &e);
            }
        }
    }

    /// The application dropped `local`.
    pub(crate) fn dropped(&mut self, local: u64) -> Option<AfterDrop> {
        let sub = self.subs.get_mut(&local)?;
        Some(match sub.phase {
            DPhase::Idle => {
                self.subs.remove(&local);
                AfterDrop::Nothing
            }
            DPhase::Live => {
                let s = self.subs.remove(&local)?;
                AfterDrop::Unsubscribe(s.pattern.as_str().to_owned())
            }
            DPhase::Subscribing(_) => {
                sub.gone = true;
                AfterDrop::Nothing
            }
            DPhase::Resuming { id, .. } => {
                sub.gone = true;
                AfterDrop::Cancel(id)
            }
        })
    }

    /// Whether some consumer is a whole buffer behind: stop reading.
    pub(crate) fn any_full(&self) -> bool {
        self.subs.values().any(|s| !s.gone && s.queue.full())
    }

    /// The connection is gone: every subscription waits for the next one
    /// (dropped ones are forgotten: the hub's side died with it).
    pub(crate) fn connection_lost(&mut self) {
        self.subs.retain(|_, s| !s.gone);
        for s in self.subs.values_mut() {
            s.phase = DPhase::Idle;
        }
    }

    /// Closed for good.
    pub(crate) fn finish(&mut self, err: &Error) {
        for (_, s) in self.subs.drain() {
            s.fail(err.clone());
        }
    }
}

/// A resume stream broke; the request should be cancelled.
#[derive(Debug)]
pub(crate) struct Broken;

/// `conflict` details: `{? 0: last_seq, ? 1: last_offset}`.
#[derive(Debug, Clone, Copy, Default, minicbor::Decode)]
#[cbor(map)]
struct ConflictDetails {
    #[n(0)]
    last_seq: Option<u64>,
    #[n(1)]
    last_offset: Option<u64>,
}

/// The answer to a durable publish, as the application gets it.
pub(crate) fn publish_answer(
    seq: u64,
    outcome: Result<RawValue, WireError>,
) -> Result<PublishAck, Error> {
    match outcome {
        Ok(v) => {
            let r: PublishResult = v
                .decode()
                .map_err(|e| Error::decode("decode the publish result", e))?;
            Ok(PublishAck {
                offset: r.offset,
                position: r.position,
                epoch: r.epoch.map(Into::into),
                durability: r.durability,
                duplicate: r.duplicate.unwrap_or(false),
                delivered: r.delivered,
                seq,
            })
        }
        Err(e) if e.code == ErrorCode::Conflict => {
            let d = e
                .details
                .as_ref()
                .and_then(|d| d.decode::<ConflictDetails>().ok())
                .unwrap_or_default();
            Err(Error::Conflict {
                last_offset: d.last_offset,
                last_seq: d.last_seq,
                message: e.message,
            })
        }
        Err(e) => Err(Error::Remote(e)),
    }
}
