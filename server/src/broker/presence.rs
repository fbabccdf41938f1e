//! Presence: who is on a topic, with join and leave notifications.
//!
//! A connection joins a topic's presence by subscribing to that exact topic
//! with `presence: true`; it leaves when it unsubscribes or its connection
//! ends, however it ends. Every member receives `presence.join` and
//! `presence.leave` for the others. Members are kept in connection order so
//! `presence.get` can page with a stable cursor.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use dashmap::DashMap;
use plexus_protocol::NotificationMethod;
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::{Member, PresenceJoin, PresenceLeave, PresenceNotice};

use crate::conn::{Conn, ConnId};

/// Told of every presence change on this hub (cluster mode carries them to
/// the other nodes). Called with the topic's members locked, so the
/// changes of one topic arrive in order: an implementation must not block
/// and must not call back into the broker.
pub trait PresenceListener: Send + Sync {
    /// `conn` joined `topic` (`first`: nobody else here was present);
    /// `frame` is the `presence.join` notice.
    fn joined(&self, topic: &str, conn: &Conn, frame: &Bytes, first: bool);
    /// `conn` left `topic` (`last`: nobody here is present any more);
    /// `frame` is the `presence.leave` notice.
    fn left(&self, topic: &str, conn: &Conn, frame: &Bytes, last: bool);
    /// `conn` changed its info on `topic`; `frame` is the `presence.join`
    /// notice that says so.
    fn info_changed(&self, topic: &str, conn: &Conn, frame: &Bytes);
}

/// Presence of every topic.
#[derive(Default)]
pub struct Presence {
    topics: DashMap<Box<str>, BTreeMap<ConnId, Arc<Conn>>>,
    listener: std::sync::OnceLock<Arc<dyn PresenceListener>>,
}

impl std::fmt::Debug for Presence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Presence")
            .field("topics", &self.topics.len())
            .finish_non_exhaustive()
    }
}

/// The member record of a connection.
pub fn member_of(conn: &Conn, with_info: bool) -> Member {
    Member {
        session: conn.session.to_string(),
        user: conn.user().to_owned(),
        info: if with_info {
            conn.info.lock().clone()
        } else {
            None
        },
    }
}

fn notice(method: &str, topic: &str, member: Member) -> Option<Bytes> {
    let n = PresenceNotice {
        topic: topic.to_owned(),
        member,
    };
    encode_notification(method, &n).ok().map(Bytes::from)
}

impl Presence {
    /// Tells `listener` of every change from now on (once; a second
    /// listener is ignored).
    pub fn set_listener(&self, listener: Arc<dyn PresenceListener>) {
        let _ = self.listener.set(listener);
    }

    /// Adds `conn` to `topic` and tells the other members. Returns false if
    /// it was already present.
    pub fn join(&self, topic: &str, conn: &Arc<Conn>) -> bool {
        let mut members = self.topics.entry(topic.into()).or_default();
        if members.contains_key(&conn.id) {
            return false;
        }
        if let Some(frame) = notice(PresenceJoin::NAME, topic, member_of(conn, true)) {
            for other in members.values() {
                other.out.push(frame.clone());
            }
            if let Some(l) = self.listener.get() {
                l.joined(topic, conn, &frame, members.is_empty());
            }
        }
        members.insert(conn.id, conn.clone());
        true
    }

    /// Queues a notice that came from another node for every member of
    /// `topic` here.
    pub fn broadcast(&self, topic: &str, frame: &Bytes) -> usize {
        self.topics.get(topic).map_or(0, |members| {
            for m in members.values() {
                m.out.push(frame.clone());
            }
            members.len()
        })
    }

    /// Every membership here, as (topic, connection): bounded by the
    /// connections' subscriptions (cluster mode writes them again after
    /// the node was taken for dead).
    pub fn all_members(&self) -> Vec<(Box<str>, Arc<Conn>)> {
        let mut out = Vec::new();
        for e in self.topics.iter() {
            for c in e.value().values() {
                out.push((e.key().clone(), c.clone()));
            }
        }
        out
    }

    /// The members of `topic` here from connection `from` on, at most
    /// `limit`, with their connection ids (cluster paging merges them with
    /// the other nodes').
    pub fn members_from(&self, topic: &str, from: ConnId, limit: usize) -> Vec<(ConnId, Member)> {
        self.topics.get(topic).map_or_else(Vec::new, |members| {
            members
                .range(from..)
                .take(limit)
                .map(|(id, c)| (*id, member_of(c, true)))
                .collect()
        })
    }

    /// Removes `conn` from `topic` and tells the remaining members.
    pub fn leave(&self, topic: &str, conn: &Conn) -> bool {
        let removed = match self.topics.get_mut(topic) {
            Some(mut members) => {
                let removed = members.remove(&conn.id).is_some();
                let listener = self.listener.get();
                if removed
                    && (!members.is_empty() || listener.is_some())
                    && let Some(frame) = notice(PresenceLeave::NAME, topic, member_of(conn, false))
                {
                    for other in members.values() {
                        other.out.push(frame.clone());
                    }
                    if let Some(l) = listener {
                        l.left(topic, conn, &frame, members.is_empty());
                    }
                }
                removed
            }
            None => false,
        };
        self.topics.remove_if(topic, |_, m| m.is_empty());
        removed
    }

    /// Tells the other members of `topic` that `conn` changed its info.
    pub fn announce_info(&self, topic: &str, conn: &Conn) {
        if let Some(members) = self.topics.get(topic)
            && let Some(frame) = notice(PresenceJoin::NAME, topic, member_of(conn, true))
        {
            for other in members.values().filter(|m| m.id != conn.id) {
                other.out.push(frame.clone());
            }
            if let Some(l) = self.listener.get() {
                l.info_changed(topic, conn, &frame);
            }
        }
    }

    /// A page of members of `topic` from `cursor` (inclusive), at most
    /// `limit` members and about `max_bytes` of encoded members (at least
    /// one member per page); returns the page and the cursor of the next.
    pub fn page(
        &self,
        topic: &str,
        cursor: u64,
        limit: usize,
        max_bytes: usize,
    ) -> (Vec<Member>, Option<u64>) {
        let Some(members) = self.topics.get(topic) else {
            return (Vec::new(), None);
        };
        let mut page = Vec::with_capacity(limit.min(members.len()));
        let mut bytes = 0;
        let mut next = None;
        for (id, conn) in members.range(cursor..) {
            let member = member_of(conn, true);
            // Upper bound of the member's encoding: map and key heads plus
            // the three fields.
            let size = 32
                + member.session.len()
                + member.user.len()
                + member.info.as_ref().map_or(0, |i| i.len());
            if page.len() == limit || (!page.is_empty() && bytes + size > max_bytes) {
                next = Some(*id);
                break;
            }
            bytes += size;
            page.push(member);
        }
        (page, next)
    }

    /// Number of members on `topic`.
    pub fn count(&self, topic: &str) -> usize {
        self.topics.get(topic).map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use plexus_protocol::RawValue;

    fn conn(id: ConnId, info_len: usize) -> Arc<Conn> {
        let c = Arc::new(Conn::new(id, format!("s{id}").into(), 1 << 20));
        c.set_user(format!("u{id}").into());
        let info = minicbor::bytes::ByteVec::from(vec![0u8; info_len]);
        *c.info.lock() = Some(RawValue::encode(&info).unwrap());
        c
    }

    #[test]
    fn pages_are_bounded_by_count_and_bytes() {
        let p = Presence::default();
        for id in 1..=10 {
            p.join("t", &conn(id, 1000));
        }
        let (page, next) = p.page("t", 0, 4, 1 << 20);
        assert_eq!((page.len(), next), (4, Some(5)));
        // About 1 KiB per member: a 3.5 KiB budget holds three.
        let (page, next) = p.page("t", 5, 100, 3500);
        assert_eq!((page.len(), next), (3, Some(8)));
        // A member larger than the budget still makes progress.
        let (page, next) = p.page("t", 8, 100, 10);
        assert_eq!((page.len(), next), (1, Some(9)));
        let (page, next) = p.page("t", 9, 100, 1 << 20);
        assert_eq!((page.len(), next), (2, None));
        assert_eq!(p.count("t"), 10);
    }
}
