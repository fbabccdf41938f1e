//! The subject index: which connections subscribed to patterns that match a
//! topic.
//!
//! Exact subscriptions (the common case) sit in a sharded hash map keyed by
//! topic, so a publish costs one hash lookup. Wildcard patterns sit in a
//! token trie behind a read-write lock; a publish walks only the trie
//! branches its tokens can reach, and skips the trie entirely while no
//! wildcard subscription exists.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use dashmap::DashMap;
use parking_lot::RwLock;
use plexus_protocol::topic::Pattern;

use crate::conn::{Conn, ConnId};

/// Subscribers of one exact topic or one trie position.
type Subs = Vec<Arc<Conn>>;

fn remove_conn(subs: &mut Subs, id: ConnId) -> bool {
    match subs.iter().position(|c| c.id == id) {
        Some(i) => {
            subs.swap_remove(i);
            true
        }
        None => false,
    }
}

#[derive(Debug, Default)]
struct Node {
    children: HashMap<Box<str>, Node>,
    star: Option<Box<Node>>,
    /// Subscribers whose pattern ends here.
    here: Subs,
    /// Subscribers whose pattern ends here with `>`.
    rest: Subs,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.children.is_empty()
            && self.star.is_none()
            && self.here.is_empty()
            && self.rest.is_empty()
    }

    /// Adds `conn` at the pattern's position; returns whether it is the
    /// pattern's first subscriber.
    fn insert<'a>(&mut self, mut tokens: impl Iterator<Item = &'a str>, conn: Arc<Conn>) -> bool {
        fn push(subs: &mut Subs, conn: Arc<Conn>) -> bool {
            subs.push(conn);
            subs.len() == 1
        }
        match tokens.next() {
            None => push(&mut self.here, conn),
            Some(">") => push(&mut self.rest, conn),
            Some("*") => self
                .star
                .get_or_insert_with(Default::default)
                .insert(tokens, conn),
            Some(lit) => self
                .children
                .entry(lit.into())
                .or_default()
                .insert(tokens, conn),
        }
    }

    /// Removes `id` from the pattern's position.
    fn remove<'a>(&mut self, mut tokens: impl Iterator<Item = &'a str>, id: ConnId) -> Removed {
        let take = |subs: &mut Subs| {
            if !remove_conn(subs, id) {
                Removed::Absent
            } else if subs.is_empty() {
                Removed::Last
            } else {
                Removed::Other
            }
        };
        match tokens.next() {
            None => take(&mut self.here),
            Some(">") => take(&mut self.rest),
            Some("*") => {
                let Some(star) = self.star.as_mut() else {
                    return Removed::Absent;
                };
                let removed = star.remove(tokens, id);
                if star.is_empty() {
                    self.star = None;
                }
                removed
            }
            Some(lit) => {
                let Some(child) = self.children.get_mut(lit) else {
                    return Removed::Absent;
                };
                let removed = child.remove(tokens, id);
                if child.is_empty() {
                    self.children.remove(lit);
                }
                removed
            }
        }
    }

    fn collect(&self, tokens: &[&str], out: &mut Vec<Arc<Conn>>) {
        match tokens.split_first() {
            None => out.extend(self.here.iter().cloned()),
            Some((first, rest)) => {
                out.extend(self.rest.iter().cloned());
                if let Some(child) = self.children.get(*first) {
                    child.collect(rest, out);
                }
                if let Some(star) = &self.star {
                    star.collect(rest, out);
                }
            }
        }
    }
}

/// What [`Matcher::remove`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// The connection did not hold the pattern.
    Absent,
    /// Removed; other connections still hold the pattern.
    Other,
    /// Removed; it was the pattern's last subscriber on this hub.
    Last,
}

/// A change of interest in a pattern, reported while the index is locked
/// for it, so the changes of one pattern are reported in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    /// The pattern got its first subscriber on this hub.
    First,
    /// The pattern lost its last subscriber on this hub.
    Last,
}

/// Tokens kept on the stack per publish; longer topics use a heap buffer.
const MAX_TOKENS: usize = 64;

/// The subscription index.
#[derive(Debug, Default)]
pub struct Matcher {
    /// Copy-on-write subscriber lists: a publish clones the `Arc` and lets
    /// go of the shard lock before fanning out, so a large fan-out never
    /// blocks subscribes in the same shard.
    exact: DashMap<Box<str>, Arc<Subs>>,
    wild: RwLock<Node>,
    wild_count: AtomicUsize,
}

impl Matcher {
    /// Adds a subscription. The caller guarantees the connection does not
    /// already hold the same pattern. `on_interest` is called with
    /// [`Interest::First`] if no other connection held the pattern, while
    /// the index is still locked for it (it must not block).
    pub fn insert(&self, pattern: &Pattern, conn: Arc<Conn>, on_interest: impl FnOnce(Interest)) {
        if pattern.is_exact() {
            let mut entry = self.exact.entry(pattern.as_str().into()).or_default();
            let subs = Arc::make_mut(&mut entry);
            subs.push(conn);
            if subs.len() == 1 {
                on_interest(Interest::First);
            }
        } else {
            let mut wild = self.wild.write();
            self.wild_count.fetch_add(1, Ordering::Relaxed);
            if wild.insert(pattern.tokens(), conn) {
                on_interest(Interest::First);
            }
        }
    }

    /// Removes a subscription. `on_interest` is called with
    /// [`Interest::Last`] if it was the pattern's last subscriber, while
    /// the index is still locked for it.
    pub fn remove(
        &self,
        pattern: &Pattern,
        id: ConnId,
        on_interest: impl FnOnce(Interest),
    ) -> Removed {
        if pattern.is_exact() {
            let removed = match self.exact.get_mut(pattern.as_str()) {
                Some(mut entry) => {
                    let subs = Arc::make_mut(&mut entry);
                    let removed = if !remove_conn(subs, id) {
                        Removed::Absent
                    } else if subs.is_empty() {
                        Removed::Last
                    } else {
                        Removed::Other
                    };
                    if removed == Removed::Last {
                        on_interest(Interest::Last);
                    }
                    removed
                }
                None => Removed::Absent,
            };
            if removed == Removed::Last {
                self.exact
                    .remove_if(pattern.as_str(), |_, subs| subs.is_empty());
            }
            removed
        } else {
            let mut wild = self.wild.write();
            let removed = wild.remove(pattern.tokens(), id);
            if removed != Removed::Absent {
                self.wild_count.fetch_sub(1, Ordering::Relaxed);
            }
            if removed == Removed::Last {
                on_interest(Interest::Last);
            }
            removed
        }
    }

    /// Calls `deliver` once for every connection with a subscription matching
    /// `topic`, at most once per connection. Returns how many were called.
    pub fn for_each_match(&self, topic: &str, mut deliver: impl FnMut(&Arc<Conn>)) -> usize {
        // Take the list and release the shard lock before delivering.
        let exact: Option<Arc<Subs>> = self.exact.get(topic).map(|e| Arc::clone(e.value()));
        if self.wild_count.load(Ordering::Relaxed) == 0 {
            // Fast path: one connection holds at most one exact subscription
            // per topic, so no de-duplication is needed.
            let Some(subs) = exact else { return 0 };
            subs.iter().for_each(&mut deliver);
            return subs.len();
        }
        // Tokens on the stack for ordinary topics; a topic with more tokens
        // than that (possible within the length limit) takes the slow path.
        let mut stack: [&str; MAX_TOKENS] = [""; MAX_TOKENS];
        let mut n = 0;
        let mut heap: Vec<&str> = Vec::new();
        for t in topic.split('.') {
            if n < MAX_TOKENS {
                stack[n] = t;
                n += 1;
            } else {
                if heap.is_empty() {
                    heap.extend_from_slice(&stack);
                }
                heap.push(t);
            }
        }
        let tokens: &[&str] = if heap.is_empty() { &stack[..n] } else { &heap };
        let mut all: Vec<Arc<Conn>> = Vec::new();
        if let Some(subs) = &exact {
            all.extend(subs.iter().cloned());
        }
        self.wild.read().collect(tokens, &mut all);
        all.sort_unstable_by_key(|c| c.id);
        all.dedup_by_key(|c| c.id);
        all.iter().for_each(&mut deliver);
        all.len()
    }

    /// Number of distinct exact topics with subscribers plus wildcard
    /// subscriptions.
    pub fn topic_count(&self) -> usize {
        self.exact.len() + self.wild_count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: ConnId) -> Arc<Conn> {
        Arc::new(Conn::new(id, format!("s{id}").into(), 1024))
    }

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, 256).unwrap()
    }

    fn matches(m: &Matcher, topic: &str) -> Vec<ConnId> {
        let mut ids = Vec::new();
        let n = m.for_each_match(topic, |c| ids.push(c.id));
        assert_eq!(n, ids.len());
        ids.sort();
        ids
    }

    #[test]
    fn exact_and_wildcards_match_once_per_connection() {
        let m = Matcher::default();
        let (a, b, c) = (conn(1), conn(2), conn(3));
        m.insert(&pat("chat.room1"), a.clone(), |_| {});
        m.insert(&pat("chat.*"), a.clone(), |_| {});
        m.insert(&pat("chat.>"), b.clone(), |_| {});
        m.insert(&pat("*.room1"), c.clone(), |_| {});
        assert_eq!(matches(&m, "chat.room1"), vec![1, 2, 3]);
        assert_eq!(matches(&m, "chat.room2"), vec![1, 2]);
        assert_eq!(matches(&m, "chat.room1.x"), vec![2]);
        assert_eq!(matches(&m, "chat"), Vec::<ConnId>::new());
        let gone = |m: &Matcher, p: &str, id| m.remove(&pat(p), id, |_| {});
        assert_eq!(gone(&m, "chat.*", 1), Removed::Last);
        assert_eq!(gone(&m, "chat.*", 1), Removed::Absent);
        assert_eq!(matches(&m, "chat.room2"), vec![2]);
        assert_eq!(gone(&m, "chat.>", 2), Removed::Last);
        assert_eq!(gone(&m, "*.room1", 3), Removed::Last);
        assert_eq!(matches(&m, "chat.room1"), vec![1]);
        assert_eq!(gone(&m, "chat.room1", 1), Removed::Last);
        assert_eq!(m.topic_count(), 0);
        assert!(m.wild.read().is_empty(), "empty trie branches are pruned");
    }

    #[test]
    fn interest_is_reported_for_the_first_and_the_last_subscriber() {
        let m = Matcher::default();
        for p in ["room", "room.*", "room.>"] {
            let mut seen = Vec::new();
            m.insert(&pat(p), conn(1), |i| seen.push(i));
            m.insert(&pat(p), conn(2), |i| seen.push(i));
            assert_eq!(m.remove(&pat(p), 1, |i| seen.push(i)), Removed::Other);
            assert_eq!(m.remove(&pat(p), 2, |i| seen.push(i)), Removed::Last);
            assert_eq!(m.remove(&pat(p), 2, |i| seen.push(i)), Removed::Absent);
            assert_eq!(seen, vec![Interest::First, Interest::Last], "{p}");
        }
        assert_eq!(m.topic_count(), 0);
    }

    #[test]
    fn topics_longer_than_the_stack_buffer_match_exactly() {
        let m = Matcher::default();
        let long_pattern: Vec<&str> = vec!["a"; MAX_TOKENS];
        m.insert(
            &Pattern::parse(&long_pattern.join("."), 1024).unwrap(),
            conn(1),
            |_| {},
        );
        m.insert(&pat("a.>"), conn(2), |_| {});
        let longer = vec!["a"; MAX_TOKENS + 1].join(".");
        assert_eq!(
            matches(&m, &longer),
            vec![2],
            "a 64-token pattern must not match 65 tokens"
        );
        assert_eq!(matches(&m, &long_pattern.join(".")), vec![1, 2]);
    }
}
