//! What travels between nodes over NATS: subjects derived from topics, and
//! the small binary envelope around an event's frame.
//!
//! A topic `a.b` is published on `PREFIX.e.a.b`; a subscription pattern
//! `a.*` or `a.>` is a NATS subscription to `PREFIX.e.a.*` or `PREFIX.e.a.>`:
//! Plexus patterns and NATS subjects have the same tokens and wildcards, so
//! the mapping is one to one and NATS does the matching.
//!
//! The payload is one kind byte, then for a durable event its offset,
//! position and namespace id (big-endian, 8 bytes each), then the `event`
//! notification frame exactly as local subscribers get it (encoded once, on
//! the publishing node).

use bytes::{BufMut, Bytes, BytesMut};

/// The kind byte of a plain (not durable) event.
pub const KIND_PLAIN: u8 = 0;
/// The kind byte of a committed durable event.
pub const KIND_DURABLE: u8 = 1;
/// The kind byte of a presence notice (`presence.join` / `presence.leave`).
pub const KIND_PRESENCE: u8 = 2;
/// The kind byte of an instance claim (4009 across nodes).
pub const KIND_CLAIM: u8 = 3;
/// The interest key of the cluster's control messages (every node, always).
pub const CONTROL_KEY: &str = "c.instance";
/// Bytes before the frame of a durable event.
pub const DURABLE_HEADER: usize = 1 + 8 + 8 + 8;

/// The NATS subject of `topic` (or of a subscription pattern).
///
/// ```
/// assert_eq!(plexus_server::cluster::wire::subject("plexus", "chat.*"), "plexus.e.chat.*");
/// ```
pub fn subject(prefix: &str, topic: &str) -> String {
    let mut s = String::with_capacity(prefix.len() + 3 + topic.len());
    s.push_str(prefix);
    s.push_str(".e.");
    s.push_str(topic);
    s
}

/// The interest key of a subscription pattern's events (`e.PATTERN`): the
/// subject without the prefix.
pub fn events_key(pattern: &str) -> String {
    format!("e.{pattern}")
}

/// The interest key of a topic's presence notices (`p.TOPIC`).
pub fn presence_key(topic: &str) -> String {
    format!("p.{topic}")
}

/// The subject of an interest key.
pub fn key_subject(prefix: &str, key: &str) -> String {
    format!("{prefix}.{key}")
}

/// The topic a subject of the cluster names, if it is one.
pub fn topic_of<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    parse(prefix, subject).map(|(_, t)| t)
}

/// The kind (`b'e'` events, `b'p'` presence) and topic of a subject of the
/// cluster.
pub fn parse<'a>(prefix: &str, subject: &'a str) -> Option<(u8, &'a str)> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?;
    let (kind, topic) = rest.split_once('.')?;
    match kind {
        "e" if !topic.is_empty() => Some((b'e', topic)),
        "p" if !topic.is_empty() => Some((b'p', topic)),
        "c" if !topic.is_empty() => Some((b'c', topic)),
        _ => None,
    }
}

/// The payload of a presence notice.
pub fn presence(frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + frame.len());
    b.put_u8(KIND_PRESENCE);
    b.put_slice(frame);
    b.freeze()
}

/// The payload of a plain event.
pub fn plain(frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + frame.len());
    b.put_u8(KIND_PLAIN);
    b.put_slice(frame);
    b.freeze()
}

/// The payload of a committed durable event.
pub fn durable(offset: u64, position: u64, namespace: i64, frame: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(DURABLE_HEADER + frame.len());
    b.put_u8(KIND_DURABLE);
    b.put_u64(offset);
    b.put_u64(position);
    b.put_i64(namespace);
    b.put_slice(frame);
    b.freeze()
}

/// The payload of an instance claim: `session` of `user` registered as
/// `instance` at `at` (Unix ms). Each string is a big-endian u16 length
/// then its bytes (all three are bounded well below 64 KiB).
pub fn claim(user: &str, instance: &str, session: &str, at: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(1 + 8 + 6 + user.len() + instance.len() + session.len());
    b.put_u8(KIND_CLAIM);
    b.put_u64(at);
    for s in [user, instance, session] {
        b.put_u16(u16::try_from(s.len()).unwrap_or(u16::MAX));
        b.put_slice(&s.as_bytes()[..s.len().min(usize::from(u16::MAX))]);
    }
    b.freeze()
}

/// An instance claim, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// The user.
    pub user: String,
    /// The instance id.
    pub instance: String,
    /// The new connection's session.
    pub session: String,
    /// When it registered (Unix ms).
    pub at: u64,
}

fn decode_claim(p: &[u8]) -> Option<Claim> {
    let mut at = [0u8; 8];
    at.copy_from_slice(p.get(..8)?);
    let mut rest = &p[8..];
    let mut take = || {
        let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
        let s = std::str::from_utf8(rest.get(2..2 + n)?).ok()?.to_owned();
        rest = &rest[2 + n..];
        Some(s)
    };
    let (user, instance, session) = (take()?, take()?, take()?);
    Some(Claim {
        user,
        instance,
        session,
        at: u64::from_be_bytes(at),
    })
}

/// A payload, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A plain event's frame.
    Plain(Bytes),
    /// A presence notice's frame.
    Presence(Bytes),
    /// An instance claim.
    Claim(Claim),
    /// A durable event.
    Durable {
        /// Its offset in its topic.
        offset: u64,
        /// Its position in its namespace.
        position: u64,
        /// Its namespace's id.
        namespace: i64,
        /// Its frame.
        frame: Bytes,
    },
}

/// Decodes a payload; `None` if it is not one this version sends (another
/// version's node, or not a node at all: ignored and counted).
pub fn decode(payload: &Bytes) -> Option<Payload> {
    match *payload.first()? {
        KIND_PLAIN if payload.len() > 1 => Some(Payload::Plain(payload.slice(1..))),
        KIND_PRESENCE if payload.len() > 1 => Some(Payload::Presence(payload.slice(1..))),
        KIND_CLAIM => decode_claim(&payload[1..]).map(Payload::Claim),
        KIND_DURABLE if payload.len() > DURABLE_HEADER => {
            let n = |at: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&payload[at..at + 8]);
                b
            };
            let offset = u64::from_be_bytes(n(1));
            if offset == 0 {
                return None;
            }
            Some(Payload::Durable {
                offset,
                position: u64::from_be_bytes(n(9)),
                namespace: i64::from_be_bytes(n(17)),
                frame: payload.slice(DURABLE_HEADER..),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_map_topics_and_patterns_one_to_one() {
        assert_eq!(subject("p", "a.b"), "p.e.a.b");
        assert_eq!(subject("p", "a.>"), "p.e.a.>");
        assert_eq!(topic_of("p", "p.e.a.b"), Some("a.b"));
        assert_eq!(topic_of("p", "q.e.a.b"), None);
        assert_eq!(topic_of("p", "p.e."), None);
        assert_eq!(topic_of("p", "px.e.a"), None);
        assert_eq!(parse("p", "p.p.room"), Some((b'p', "room")));
        assert_eq!(parse("p", "p.x.room"), None);
        assert_eq!(key_subject("p", &presence_key("r")), "p.p.r");
        assert_eq!(key_subject("p", &events_key("r.*")), subject("p", "r.*"));
    }

    #[test]
    fn payloads_round_trip_and_garbage_is_refused() {
        let f = Bytes::from_static(b"\x83\x02eevent");
        assert_eq!(decode(&plain(&f)), Some(Payload::Plain(f.clone())));
        assert_eq!(
            decode(&durable(7, 9, 3, &f)),
            Some(Payload::Durable {
                offset: 7,
                position: 9,
                namespace: 3,
                frame: f.clone()
            })
        );
        assert_eq!(decode(&presence(&f)), Some(Payload::Presence(f.clone())));
        let c = claim("alice", "phone", "n1-2a", 77);
        assert_eq!(
            decode(&c),
            Some(Payload::Claim(Claim {
                user: "alice".into(),
                instance: "phone".into(),
                session: "n1-2a".into(),
                at: 77
            }))
        );
        assert_eq!(decode(&c.slice(..c.len() - 1)), None, "truncated");
        assert_eq!(decode(&Bytes::new()), None);
        assert_eq!(decode(&Bytes::from_static(&[KIND_PLAIN])), None);
        assert_eq!(decode(&Bytes::from_static(&[9, 1, 2])), None);
        let short = durable(7, 9, 3, &f).slice(..DURABLE_HEADER);
        assert_eq!(decode(&short), None);
        assert_eq!(decode(&durable(0, 9, 3, &f)), None, "offsets start at 1");
    }
}
