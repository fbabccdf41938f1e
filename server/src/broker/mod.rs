//! The pub/sub broker: the subject index plus presence, and the owner of
//! every subscription's lifecycle.
//!
//! The broker sees an event as a topic and shared, already-encoded frame
//! bytes, never as a decoded payload: a publish is encoded once and the same
//! bytes are queued for every matching connection, so a cluster transport or
//! a federation link can later carry them unchanged.
//!
//! Subscriptions go through [`Broker::subscribe`], [`Broker::unsubscribe`]
//! and [`Broker::drop_conn`], which keep three things consistent: the
//! connection's own record of what it holds ([`Conn::subscriptions`]), the
//! [`Matcher`] and [`Presence`]. The record is written first, so whatever
//! happens between the steps (a panic in a handler), dropping the
//! connection removes it from the index. Interest changes (a pattern's
//! first subscriber on this hub, its last one gone) are reported to the
//! registered [`InterestListener`]s: the hook cluster mode and federation
//! links use to subscribe upstream only to what someone here wants.

pub mod matcher;
pub mod presence;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use metrics::Gauge;
use parking_lot::RwLock;
use plexus_protocol::topic::Pattern;

use crate::conn::{Conn, ConnId, Subscription};
use crate::outbound::Push;
pub use matcher::{Interest, Matcher, Removed};
pub use presence::Presence;

/// Outcome of a fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Connections the frame was queued for.
    pub delivered: u64,
    /// Connections closed as slow consumers by this fan-out.
    pub overflowed: u64,
}

/// Why a subscription was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SubscribeError {
    /// The connection already holds this pattern.
    #[error("already subscribed")]
    AlreadySubscribed,
    /// The connection holds its maximum number of subscriptions.
    #[error("too many subscriptions")]
    TooMany,
    /// The principal may not subscribe to the pattern.
    #[error("not allowed to subscribe to this pattern")]
    Forbidden,
}

/// Told when a pattern gains its first subscriber on this hub or loses its
/// last one.
///
/// Called while the index is locked for that pattern, so the changes of one
/// pattern arrive in order: an implementation must not block and must not
/// call back into the broker (queue the change and act on it elsewhere).
pub trait InterestListener: Send + Sync {
    /// `pattern` changed as `interest` says.
    fn interest_changed(&self, pattern: &Pattern, interest: Interest);
}

/// Subscriptions and presence of the whole hub.
pub struct Broker {
    /// The subscription index.
    pub matcher: Matcher,
    /// Presence of every topic.
    pub presence: Presence,
    listeners: RwLock<Vec<Arc<dyn InterestListener>>>,
    /// Whether any listener is registered (checked without the lock).
    listening: AtomicBool,
    subscriptions: Gauge,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("matcher", &self.matcher)
            .field("presence", &self.presence)
            .field("listeners", &self.listeners.read().len())
            .finish_non_exhaustive()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker {
            matcher: Matcher::default(),
            presence: Presence::default(),
            listeners: RwLock::new(Vec::new()),
            listening: AtomicBool::new(false),
            subscriptions: metrics::gauge!("plexus_subscriptions"),
        }
    }
}

impl Broker {
    /// Registers a listener for interest changes from now on.
    pub fn add_interest_listener(&self, listener: Arc<dyn InterestListener>) {
        self.listeners.write().push(listener);
        self.listening.store(true, Ordering::Release);
    }

    fn notify(&self, pattern: &Pattern, interest: Interest) {
        if self.listening.load(Ordering::Acquire) {
            for l in self.listeners.read().iter() {
                l.interest_changed(pattern, interest);
            }
        }
    }

    /// Subscribes `conn` to `pattern` (joining the topic's presence when
    /// `presence`, which the caller has checked is an exact topic), unless
    /// it already holds the pattern or `max` subscriptions, or is not
    /// `authorized` — checked in that order, the order of `docs/protocol.md`
    /// §11.4 (a connection may hold a pattern its refreshed token no longer
    /// covers: a second subscribe to it is a `conflict`).
    pub fn subscribe(
        &self,
        conn: &Arc<Conn>,
        pattern: Pattern,
        presence: bool,
        max: usize,
        authorized: bool,
    ) -> Result<(), SubscribeError> {
        self.reserve(conn, pattern.clone(), presence, max, authorized, 0)?;
        self.index(conn, &pattern, 0);
        Ok(())
    }

    /// The first half of [`Broker::subscribe`]: records the subscription
    /// (the same checks, in the same order) without indexing it, so the
    /// connection holds the pattern (a second subscribe is a `conflict`)
    /// while a durable subscribe catches up. [`Broker::index`] makes it
    /// live; [`Broker::release`] or [`Broker::unsubscribe`] drops it.
    /// `request` (the subscribe's request id) tells this reservation from a
    /// later one of the same pattern (after an `unsubscribe` meanwhile).
    pub fn reserve(
        &self,
        conn: &Arc<Conn>,
        pattern: Pattern,
        presence: bool,
        max: usize,
        authorized: bool,
        request: u64,
    ) -> Result<(), SubscribeError> {
        let mut subs = conn.subscriptions.lock();
        if subs.iter().any(|s| s.pattern == pattern) {
            return Err(SubscribeError::AlreadySubscribed);
        }
        if subs.len() >= max {
            return Err(SubscribeError::TooMany);
        }
        if !authorized {
            return Err(SubscribeError::Forbidden);
        }
        // Most connections hold one or two subscriptions: grow from
        // one slot, not the default four.
        if subs.capacity() == 0 {
            subs.reserve_exact(1);
        }
        subs.push(Subscription {
            pattern,
            presence,
            pending: Some(request),
        });
        drop(subs);
        self.subscriptions.increment(1.0);
        Ok(())
    }

    /// Indexes a subscription [`Broker::reserve`] recorded (and joins its
    /// presence): from now on it receives events. Returns `false` if the
    /// connection no longer holds that reservation (unsubscribed
    /// meanwhile).
    pub fn index(&self, conn: &Arc<Conn>, pattern: &Pattern, request: u64) -> bool {
        let presence = {
            let mut subs = conn.subscriptions.lock();
            match subs
                .iter_mut()
                .find(|s| s.pattern == *pattern && s.pending == Some(request))
            {
                Some(s) => {
                    s.pending = None;
                    s.presence
                }
                None => return false,
            }
        };
        self.matcher
            .insert(pattern, conn.clone(), |i| self.notify(pattern, i));
        if presence {
            self.presence.join(pattern.as_str(), conn);
        }
        true
    }

    /// Drops a subscription [`Broker::reserve`] recorded that never went
    /// live (a durable subscribe that failed or was cancelled).
    pub fn release(&self, conn: &Conn, pattern: &Pattern, request: u64) {
        let mut subs = conn.subscriptions.lock();
        if let Some(i) = subs
            .iter()
            .position(|s| s.pattern == *pattern && s.pending == Some(request))
        {
            subs.swap_remove(i);
            drop(subs);
            self.subscriptions.decrement(1.0);
        }
    }

    /// Drops `conn`'s subscription to exactly `pattern` (and its presence);
    /// returns whether it held one.
    pub fn unsubscribe(&self, conn: &Conn, pattern: &str) -> bool {
        let sub = {
            let mut subs = conn.subscriptions.lock();
            match subs.iter().position(|s| s.pattern.as_str() == pattern) {
                Some(i) => subs.swap_remove(i),
                None => return false,
            }
        };
        self.remove(conn, &sub);
        true
    }

    /// Drops every subscription and presence membership of `conn` (the
    /// connection ended, however it ended).
    pub fn drop_conn(&self, conn: &Conn) {
        let subs = std::mem::take(&mut *conn.subscriptions.lock());
        for sub in &subs {
            self.remove(conn, sub);
        }
    }

    fn remove(&self, conn: &Conn, sub: &Subscription) {
        self.subscriptions.decrement(1.0);
        if sub.pending.is_some() {
            return;
        }
        self.matcher
            .remove(&sub.pattern, conn.id, |i| self.notify(&sub.pattern, i));
        if sub.presence {
            self.presence.leave(sub.pattern.as_str(), conn);
        }
    }

    /// Tells the other members of every topic where `conn` is present that
    /// its info changed.
    pub fn announce_info(&self, conn: &Conn) {
        let topics: Vec<Pattern> = conn
            .subscriptions
            .lock()
            .iter()
            .filter(|s| s.presence && s.pending.is_none())
            .map(|s| s.pattern.clone())
            .collect();
        for t in topics {
            self.presence.announce_info(t.as_str(), conn);
        }
    }

    /// Queues `frame` for every connection subscribed to a pattern matching
    /// `topic`, except `skip`.
    pub fn publish(&self, topic: &str, frame: &Bytes, skip: Option<ConnId>) -> FanOut {
        let mut out = FanOut::default();
        self.matcher.for_each_match(topic, |conn: &Arc<Conn>| {
            if Some(conn.id) == skip {
                return;
            }
            match conn.out.push(frame.clone()) {
                Push::Queued => out.delivered += 1,
                Push::Overflow => out.overflowed += 1,
                Push::Closed => {}
            }
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    #[derive(Default)]
    struct Log(Mutex<Vec<(String, Interest)>>);

    impl InterestListener for Log {
        fn interest_changed(&self, pattern: &Pattern, interest: Interest) {
            self.0.lock().push((pattern.as_str().to_owned(), interest));
        }
    }

    fn conn(id: ConnId) -> Arc<Conn> {
        let c = Arc::new(Conn::new(id, format!("s{id}").into(), 1 << 20));
        c.set_user(format!("u{id}").into());
        c
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    #[test]
    fn lifecycle_keeps_index_record_and_presence_consistent() {
        let b = Broker::default();
        let log = Arc::new(Log::default());
        b.add_interest_listener(log.clone());
        let (x, y) = (conn(1), conn(2));
        b.subscribe(&x, pat("room"), true, 8, true).unwrap();
        b.subscribe(&y, pat("room"), true, 8, true).unwrap();
        b.subscribe(&x, pat("news.*"), false, 8, true).unwrap();
        assert_eq!(
            b.subscribe(&x, pat("room"), false, 8, true),
            Err(SubscribeError::AlreadySubscribed)
        );
        assert_eq!(
            b.subscribe(&x, pat("other"), false, 2, true),
            Err(SubscribeError::TooMany)
        );
        assert_eq!(b.presence.count("room"), 2);
        let frame = Bytes::from_static(b"e");
        assert_eq!(b.publish("room", &frame, None).delivered, 2);
        assert_eq!(b.publish("news.today", &frame, None).delivered, 1);

        assert!(b.unsubscribe(&y, "room"));
        assert!(!b.unsubscribe(&y, "room"));
        assert_eq!(b.presence.count("room"), 1);
        b.drop_conn(&x);
        assert!(x.subscriptions.lock().is_empty());
        assert_eq!(b.presence.count("room"), 0);
        assert_eq!(b.matcher.topic_count(), 0);
        assert_eq!(b.publish("room", &frame, None).delivered, 0);
        assert_eq!(
            *log.0.lock(),
            vec![
                ("room".to_owned(), Interest::First),
                ("news.*".to_owned(), Interest::First),
                ("room".to_owned(), Interest::Last),
                ("news.*".to_owned(), Interest::Last),
            ]
        );
    }

    #[test]
    fn a_reservation_holds_the_pattern_until_indexed_or_released() {
        let b = Broker::default();
        let x = conn(1);
        let frame = Bytes::from_static(b"e");
        b.reserve(&x, pat("o.1"), false, 8, true, 7).unwrap();
        assert_eq!(
            b.subscribe(&x, pat("o.1"), false, 8, true),
            Err(SubscribeError::AlreadySubscribed)
        );
        assert_eq!(b.publish("o.1", &frame, None).delivered, 0, "not live yet");
        // Unsubscribed meanwhile, then reserved again by another request:
        // the first one's activation must not take the second's place.
        assert!(b.unsubscribe(&x, "o.1"));
        b.reserve(&x, pat("o.1"), false, 8, true, 9).unwrap();
        assert!(!b.index(&x, &pat("o.1"), 7));
        b.release(&x, &pat("o.1"), 7);
        assert_eq!(x.subscriptions.lock().len(), 1);
        assert!(b.index(&x, &pat("o.1"), 9));
        assert_eq!(b.publish("o.1", &frame, None).delivered, 1);
        b.release(&x, &pat("o.1"), 9);
        assert_eq!(x.subscriptions.lock().len(), 1, "release leaves a live one");
        b.reserve(&x, pat("o.2"), false, 8, true, 10).unwrap();
        b.release(&x, &pat("o.2"), 10);
        assert_eq!(x.subscriptions.lock().len(), 1);
        b.drop_conn(&x);
        assert_eq!(b.matcher.topic_count(), 0);
    }

    #[test]
    fn a_recorded_subscription_missing_from_the_index_is_still_dropped() {
        // As after a panic between recording and indexing: the record says
        // subscribed, the index does not. Dropping the connection must not
        // trip over it, and must clean up what is indexed.
        let b = Broker::default();
        let x = conn(1);
        x.subscriptions.lock().push(Subscription {
            pattern: pat("ghost"),
            presence: false,
            pending: None,
        });
        b.subscribe(&x, pat("real"), false, 8, true).unwrap();
        b.drop_conn(&x);
        assert_eq!(b.matcher.topic_count(), 0);
    }
}
