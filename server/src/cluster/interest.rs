//! Which subjects this node subscribes to: the topics and patterns someone
//! here wants, reference-counted, with changes coalesced between rounds.
//!
//! The broker reports a pattern's first and last subscriber on this node
//! ([`crate::broker::InterestListener`]) and the streams layer reports a
//! resume listening before its subscription is live
//! ([`crate::streams::Relay::listening`]). Both only add a delta to a map
//! under a short lock and wake the interest task, which applies the net
//! change of everything that arrived meanwhile: a reconnect storm of ten
//! thousand clients subscribing to the same room costs one NATS `SUB`, and
//! a pattern that gains and loses its subscribers between two rounds costs
//! none.
//!
//! Overlapping subscriptions (`chat.*` and `chat.a`) make NATS deliver a
//! message once per subscription. Each subscription knows the overlapping
//! ones ordered before it ([`Interest::delivers`]): a message is delivered
//! by the first subscription that matches it, and only by that one.

use std::collections::{HashMap, HashSet};

use parking_lot::{Mutex, RwLock};
use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern};
use tokio::sync::Notify;

use crate::broker::{Interest as Change, InterestListener};

/// The interest of this node, as the interest task and the readers share it.
#[derive(Debug, Default)]
pub struct Interest {
    pending: Mutex<HashMap<Box<str>, i64>>,
    /// Woken when `pending` changed.
    pub(crate) wake: Notify,
    /// For each subscribed pattern, the subscribed ones before it (in byte
    /// order) that overlap it.
    shadows: RwLock<HashMap<Box<str>, Vec<Pattern>>>,
}

impl Interest {
    /// Adds `delta` to the wanters of `pattern`.
    pub fn change(&self, pattern: &str, delta: i64) {
        {
            let mut p = self.pending.lock();
            match p.get_mut(pattern) {
                Some(d) => *d += delta,
                None => {
                    p.insert(pattern.into(), delta);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Takes the net changes since the last call (zero changes dropped).
    pub(crate) fn take(&self) -> Vec<(Box<str>, i64)> {
        std::mem::take(&mut *self.pending.lock())
            .into_iter()
            .filter(|(_, d)| *d != 0)
            .collect()
    }

    /// Whether a message on `topic` that arrived through the subscription
    /// with interest key `via` is delivered (no subscription before it matches it too).
    pub fn delivers(&self, via: &str, topic: &str) -> bool {
        self.shadows
            .read()
            .get(via)
            .is_none_or(|before| !before.iter().any(|q| q.matches_str(topic)))
    }

    /// Recomputes the shadows for the subscribed set `subscribed` (interest
    /// keys: only the events' ones, `e.PATTERN`, can overlap).
    pub(crate) fn set_subscribed<'a>(&self, subscribed: impl Iterator<Item = &'a str>) {
        let mut pats: Vec<Pattern> = subscribed
            .filter_map(|s| s.strip_prefix("e."))
            .filter_map(|s| Pattern::parse(s, MAX_TOPIC_LEN).ok())
            .collect();
        pats.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        let mut shadows = HashMap::with_capacity(pats.len());
        for (i, p) in pats.iter().enumerate() {
            let before: Vec<Pattern> = pats[..i]
                .iter()
                .filter(|q| crate::streams::config::overlap(q, p))
                .cloned()
                .collect();
            if !before.is_empty() {
                shadows.insert(super::wire::events_key(p.as_str()).into(), before);
            }
        }
        *self.shadows.write() = shadows;
    }
}

impl InterestListener for Interest {
    fn interest_changed(&self, pattern: &Pattern, interest: Change) {
        self.change(
            &super::wire::events_key(pattern.as_str()),
            match interest {
                Change::First => 1,
                Change::Last => -1,
            },
        );
    }
}

/// The reference counts the interest task keeps.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    counts: HashMap<Box<str>, i64>,
}

/// What a round changes in the subscriptions.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Round {
    pub(crate) subscribe: Vec<Box<str>>,
    pub(crate) unsubscribe: Vec<Box<str>>,
}

impl Counts {
    /// Applies net deltas; returns which subjects to add and drop.
    pub(crate) fn apply(&mut self, deltas: Vec<(Box<str>, i64)>) -> Round {
        let mut r = Round::default();
        let mut seen = HashSet::new();
        for (p, d) in deltas {
            if !seen.insert(p.clone()) {
                continue;
            }
            let before = self.counts.get(&p).copied().unwrap_or(0);
            let after = before + d;
            if after > 0 {
                self.counts.insert(p.clone(), after);
            } else {
                self.counts.remove(&p);
            }
            match (before > 0, after > 0) {
                (false, true) => r.subscribe.push(p),
                (true, false) => r.unsubscribe.push(p),
                _ => {}
            }
        }
        r
    }

    /// The patterns wanted now.
    pub(crate) fn wanted(&self) -> impl Iterator<Item = &str> {
        self.counts.keys().map(|k| &**k)
    }

    /// How many patterns are wanted.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.counts.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_coalesce_and_counts_subscribe_only_on_the_first_and_last() {
        let i = Interest::default();
        for _ in 0..1000 {
            i.change("room.1", 1);
        }
        i.change("room.2", 1);
        i.change("room.2", -1);
        let mut c = Counts::default();
        let r = c.apply(i.take());
        assert_eq!(r.subscribe, vec![Box::from("room.1")]);
        assert!(r.unsubscribe.is_empty());
        assert!(i.take().is_empty(), "taken");
        i.change("room.1", -999);
        assert_eq!(c.apply(i.take()), Round::default(), "one is left");
        i.change("room.1", -1);
        assert_eq!(c.apply(i.take()).unsubscribe, vec![Box::from("room.1")]);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn overlapping_subscriptions_deliver_once() {
        let i = Interest::default();
        i.set_subscribed(["e.chat.a", "e.chat.*", "e.news.>", "e.chat.>", "p.chat.a"].into_iter());
        // Byte order: chat.* < chat.> < chat.a.
        assert!(i.delivers("e.chat.*", "chat.a"));
        assert!(!i.delivers("e.chat.>", "chat.a"), "chat.* is before it");
        assert!(i.delivers("e.chat.>", "chat.a.b"), "chat.* does not match");
        assert!(!i.delivers("e.chat.a", "chat.a"));
        assert!(i.delivers("e.news.>", "news.x"));
        assert!(
            i.delivers("p.chat.a", "chat.a"),
            "presence never overlaps events"
        );
        i.set_subscribed(["e.chat.a"].into_iter());
        assert!(i.delivers("e.chat.a", "chat.a"));
    }
}
