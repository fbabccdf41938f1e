//! `history` (keyset pages of one topic, either direction) and
//! `history.latest` (the last event of each topic under a pattern).

use std::sync::Arc;

use minicbor::Encoder;
use minicbor::encode::{Error as EncodeError, Write};
use plexus_protocol::methods::Direction;
use plexus_protocol::topic::Pattern;

use super::event::{EventList, derived_epoch};
use super::{Scope, StreamError, Streams};
use crate::storage::{EventPage, Order, TopicRead};

/// Default `limit` of both methods.
pub const DEFAULT_HISTORY_LIMIT: u64 = 100;
/// The cap on `limit` (announced as `max_history_page`, D12).
pub const MAX_HISTORY_PAGE: u64 = 1000;
/// `history.latest` reads at most this many pages of topics for one answer
/// (a pattern matching few of the topics under its prefix answers a short
/// page with `next`, rather than scanning the whole namespace).
const LATEST_MAX_SCANS: u32 = 8;

/// A `history` request.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    /// The exact durable topic.
    pub topic: Arc<str>,
    /// The first offset (inclusive); default: the earliest (forward) or the
    /// latest (backward).
    pub from: Option<u64>,
    /// The direction.
    pub direction: Order,
    /// Most events (default 100, capped at [`MAX_HISTORY_PAGE`]).
    pub limit: Option<u64>,
    /// Most bytes of event bodies (so the result fits the frame).
    pub max_bytes: usize,
}

impl HistoryQuery {
    /// A query of the first page forwards.
    pub fn new(topic: impl Into<Arc<str>>, max_bytes: usize) -> Self {
        HistoryQuery {
            topic: topic.into(),
            from: None,
            direction: Order::Forward,
            limit: None,
            max_bytes,
        }
    }

    /// The wire's direction (`None`: forward).
    pub fn direction_from_wire(d: Option<&Direction>) -> Result<Order, StreamError> {
        match d {
            None | Some(Direction::Forward) => Ok(Order::Forward),
            Some(Direction::Backward) => Ok(Order::Backward),
            Some(_) => Err(StreamError::invalid(
                "direction must be forward or backward",
            )),
        }
    }
}

/// A `history` result, encoded straight from the page's buffer as `{0:
/// [event...], 1: epoch, ? 2: next, 3: first, 4: last}`.
#[derive(Debug, Clone)]
pub struct HistoryPage {
    /// The events.
    pub events: EventPage,
    /// The topic's epoch.
    pub epoch: Arc<str>,
    /// `from` of the next page.
    pub next: Option<u64>,
    /// The first offset still stored.
    pub first: u64,
    /// The last offset.
    pub last: u64,
}

impl<C> minicbor::Encode<C> for HistoryPage {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), EncodeError<W::Error>> {
        e.map(if self.next.is_some() { 5 } else { 4 })?;
        e.u8(0)?;
        EventList(&self.events).encode(e, ctx)?;
        e.u8(1)?.str(&self.epoch)?;
        if let Some(n) = self.next {
            e.u8(2)?.u64(n)?;
        }
        e.u8(3)?.u64(self.first)?.u8(4)?.u64(self.last)?;
        Ok(())
    }
}

/// A `history.latest` result: `{0: [event...], ? 1: next}`.
#[derive(Debug, Clone, Default)]
pub struct LatestPage {
    /// One event per topic, topics in byte order.
    pub events: EventPage,
    /// The topic to continue after.
    pub next: Option<String>,
}

impl<C> minicbor::Encode<C> for LatestPage {
    fn encode<W: Write>(
        &self,
        e: &mut Encoder<W>,
        ctx: &mut C,
    ) -> Result<(), EncodeError<W::Error>> {
        e.map(if self.next.is_some() { 2 } else { 1 })?;
        e.u8(0)?;
        EventList(&self.events).encode(e, ctx)?;
        if let Some(n) = &self.next {
            e.u8(1)?.str(n)?;
        }
        Ok(())
    }
}

fn cap(limit: Option<u64>) -> Result<u32, StreamError> {
    match limit {
        Some(0) => Err(StreamError::invalid("limit must be at least 1")),
        l => Ok(
            u32::try_from(l.unwrap_or(DEFAULT_HISTORY_LIMIT).min(MAX_HISTORY_PAGE)).unwrap_or(1000),
        ),
    }
}

/// The literal prefix of a pattern (its tokens before the first wildcard,
/// with the dot), and the first string after every topic with that prefix.
fn prefix_range(p: &Pattern) -> (String, Option<String>) {
    let mut prefix = String::new();
    for t in p.tokens() {
        if t == "*" || t == ">" {
            break;
        }
        prefix.push_str(t);
        prefix.push('.');
    }
    if prefix.is_empty() {
        return (prefix, None);
    }
    // Ends with '.', so the upper bound is the same text ending in '/'.
    let mut hi = prefix.clone();
    hi.pop();
    hi.push('/');
    (prefix, Some(hi))
}

/// The first offset a history page states, given the topic row's `first`
/// and `last` (read before the events) and the page `read` returned.
///
/// Retention deletes a prefix of a topic's events, and may commit between
/// the two reads: the events then start above the row's `first`. The page
/// never states a `first` below its own events; so a forward read that
/// found its first event above `read.from` (or none at all), or a backward
/// read that ran out of events before `read.until`, tells the offset the
/// history really starts at.
pub(crate) fn visible_first(first: u64, last: u64, read: &TopicRead, page: &EventPage) -> u64 {
    let seen = match read.order {
        Order::Forward => match page.metas.first() {
            Some(m) if m.offset > read.from => m.offset,
            Some(_) => first,
            // Everything from `read.from` to `last` is gone.
            None => last.saturating_add(1),
        },
        Order::Backward => {
            let ran_out = !page.truncated && page.metas.len() < read.limit as usize;
            match page.metas.last() {
                Some(m) if ran_out && m.offset > read.until => m.offset,
                Some(_) => first,
                // Everything up to `read.from` is gone.
                None => read.from.saturating_add(1),
            }
        }
    };
    seen.max(first)
}

impl Streams {
    /// A page of an exact durable topic's history.
    pub async fn history(&self, q: HistoryQuery) -> Result<HistoryPage, StreamError> {
        let Some(ns) = self.topic_namespace(&q.topic) else {
            return Err(StreamError::NotDurable);
        };
        let limit = cap(q.limit)?;
        let store = &self.shared.store;
        let Some(t) = store.topic(&q.topic).await? else {
            return Ok(HistoryPage {
                events: EventPage::default(),
                epoch: derived_epoch(&ns.epoch, &q.topic).into(),
                next: None,
                first: 1,
                last: 0,
            });
        };
        let mut page = EventPage::default();
        let (mut first, last) = (t.first_offset, t.last_offset);
        if last >= first {
            let read = match q.direction {
                Order::Forward => TopicRead {
                    topic: t.id,
                    from: q.from.unwrap_or(first).max(first),
                    until: last,
                    order: Order::Forward,
                    limit,
                    max_bytes: q.max_bytes,
                },
                Order::Backward => TopicRead {
                    topic: t.id,
                    from: q.from.unwrap_or(last).min(last),
                    until: first,
                    order: Order::Backward,
                    limit,
                    max_bytes: q.max_bytes,
                },
            };
            if (read.order == Order::Forward && read.from <= last)
                || (read.order == Order::Backward && read.from >= first)
            {
                store.read_topic(read, &mut page).await?;
                first = visible_first(first, last, &read, &page);
            }
        }
        let next = match (q.direction, page.metas.last()) {
            (Order::Forward, Some(m)) if m.offset < last => Some(m.offset + 1),
            (Order::Backward, Some(m)) if m.offset > first => Some(m.offset - 1),
            _ => None,
        };
        Ok(HistoryPage {
            events: page,
            epoch: t.epoch,
            next,
            first,
            last,
        })
    }

    /// The last stored event of each topic under `pattern` (an exact topic
    /// or a pattern inside one durable namespace), topics in byte order
    /// after `after`.
    pub async fn latest(
        &self,
        pattern: &Pattern,
        after: Option<&str>,
        limit: Option<u64>,
        max_bytes: usize,
    ) -> Result<LatestPage, StreamError> {
        let ns = match self.scope(pattern) {
            Scope::Topic(n) | Scope::Pattern(n) => n,
            Scope::Mixed => return Err(StreamError::SpansNamespaces),
            Scope::Plain => return Err(StreamError::NotDurable),
        };
        let limit = cap(limit)?;
        let (lo, hi) = if pattern.is_exact() {
            (pattern.as_str().to_owned(), None)
        } else {
            prefix_range(pattern)
        };
        let mut out = LatestPage::default();
        let mut cursor = after.map(str::to_owned);
        for _ in 0..LATEST_MAX_SCANS {
            let want = limit - u32::try_from(out.events.len()).unwrap_or(limit);
            let rows = self
                .shared
                .store
                .latest(ns.id, &lo, hi.as_deref(), cursor.as_deref(), want)
                .await?;
            let full = rows.len() >= want as usize;
            let mut stopped = false;
            for r in &rows {
                if pattern.is_exact() && r.topic != pattern.as_str() {
                    stopped = true;
                    break;
                }
                if pattern.matches_str(&r.topic) {
                    if !out.events.is_empty() && out.events.bodies.len() + r.body.len() > max_bytes
                    {
                        out.next = cursor.clone();
                        return Ok(out);
                    }
                    out.events.push(0, 0, &r.body);
                }
                cursor = Some(r.topic.clone());
            }
            if stopped || !full {
                out.next = None;
                return Ok(out);
            }
            if out.events.len() >= limit as usize {
                out.next = cursor;
                return Ok(out);
            }
        }
        out.next = cursor;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_bound_the_topics_of_a_pattern() {
        let p = |s| Pattern::parse(s, 256).unwrap();
        assert_eq!(
            prefix_range(&p("orders.eu.*")),
            ("orders.eu.".into(), Some("orders.eu/".into()))
        );
        assert_eq!(prefix_range(&p(">")), (String::new(), None));
        assert_eq!(prefix_range(&p("*.x")), (String::new(), None));
        assert!(cap(Some(0)).is_err());
        assert_eq!(cap(Some(5000)).unwrap(), 1000);
        assert_eq!(cap(None).unwrap(), 100);
    }
}
