//! Who a connection is and what it may do.

use std::sync::Arc;

use plexus_protocol::topic::{MAX_TOPIC_LEN, Pattern, Topic};

/// An authenticated user: the result of a successful
/// [`Authenticator::verify`](super::Authenticator::verify).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The token's `sub`.
    pub user: Arc<str>,
    /// What the token allows.
    pub caps: Arc<Capabilities>,
    /// The token's `exp`, in Unix seconds. Always `Some` for verified
    /// tokens (they must expire); `None` is for principals made in code.
    pub expires_at: Option<u64>,
}

/// What a token allows, from its `plexus` claim:
///
/// ```json
/// "plexus": {"sub": ["chat.>"], "pub": ["chat.room1"], "presence": true,
///            "sync_read": ["team.*"], "sync_write": ["user.alice.>"],
///            "rpc_register": ["svc.>"], "rpc_call": ["svc.*"], "rpc_admin": true}
/// ```
///
/// An absent claim or field allows nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Patterns the client may subscribe within (the `sub` field).
    pub subscribe: Vec<Pattern>,
    /// Patterns the client may publish to (the `pub` field).
    pub publish: Vec<Pattern>,
    /// Whether the client may join presence (the `presence` field);
    /// see [`Capabilities::can_join_presence`].
    pub presence: bool,
    /// Record-sync spaces the client may read (the `sync_read` field); see
    /// [`Capabilities::can_sync_read`].
    pub sync_read: Vec<Pattern>,
    /// Record-sync spaces the client may write (the `sync_write` field).
    pub sync_write: Vec<Pattern>,
    /// Procedures the client may register (the `rpc_register` field).
    pub rpc_register: Vec<Pattern>,
    /// Procedures the client may call (the `rpc_call` field).
    pub rpc_call: Vec<Pattern>,
    /// Whether the client may list the hub's procedures (`rpc.list`, the
    /// `rpc_admin` field).
    pub rpc_admin: bool,
    /// The token's top-level claims as compact JSON text, which a callee
    /// may ask to have disclosed about its callers (`disclose_caller`,
    /// decision R8). Text, parsed only for a registration that asks: a
    /// parsed map on every connection would cost it about 2 KiB.
    pub claims: Option<Arc<str>>,
}

impl Capabilities {
    /// Capabilities that allow everything: subscribe and publish on `>`,
    /// presence on. For development setups and tests.
    pub fn allow_all() -> Capabilities {
        let all = Pattern::parse(">", MAX_TOPIC_LEN).map_or_else(|_| Vec::new(), |p| vec![p]);
        Capabilities {
            subscribe: all.clone(),
            publish: all.clone(),
            presence: true,
            sync_read: all.clone(),
            sync_write: all.clone(),
            rpc_register: all.clone(),
            rpc_call: all,
            rpc_admin: true,
            claims: None,
        }
    }

    /// Whether subscribing to `pattern` is allowed: some allowed subscribe
    /// pattern [covers](Pattern::covers) it. `chat.>` allows `chat.*` and
    /// `chat.room1`; `chat.*` does not allow `chat.>`.
    pub fn can_subscribe(&self, pattern: &Pattern) -> bool {
        self.subscribe.iter().any(|allowed| allowed.covers(pattern))
    }

    /// Whether publishing to `topic` is allowed: some allowed publish
    /// pattern matches it.
    pub fn can_publish(&self, topic: &Topic) -> bool {
        self.publish.iter().any(|allowed| allowed.matches(topic))
    }

    /// Whether reading `topic`'s presence (`presence.get`, presence
    /// notices) is allowed: the same as subscribing to that exact topic.
    pub fn can_read_presence(&self, topic: &Topic) -> bool {
        self.can_subscribe(&Pattern::from(topic.clone()))
    }

    /// Whether joining `topic`'s presence (subscribing with `presence:
    /// true`) is allowed: the `presence` capability plus
    /// [`can_read_presence`](Capabilities::can_read_presence) on that topic.
    pub fn can_join_presence(&self, topic: &Topic) -> bool {
        self.presence && self.can_read_presence(topic)
    }

    /// Whether pulling from (and watching) the sync space `space` is
    /// allowed: some `sync_read` or `sync_write` pattern matches it (write
    /// implies read).
    pub fn can_sync_read(&self, space: &Topic) -> bool {
        self.can_sync_write(space) || self.sync_read.iter().any(|p| p.matches(space))
    }

    /// Whether pushing to the sync space `space` is allowed: some
    /// `sync_write` pattern matches it.
    pub fn can_sync_write(&self, space: &Topic) -> bool {
        self.sync_write.iter().any(|p| p.matches(space))
    }

    /// Whether registering `procedure` is allowed: some `rpc_register`
    /// pattern matches it.
    pub fn can_rpc_register(&self, procedure: &Topic) -> bool {
        self.rpc_register.iter().any(|p| p.matches(procedure))
    }

    /// Whether calling `procedure` is allowed: some `rpc_call` pattern
    /// matches it (registering does not imply calling).
    pub fn can_rpc_call(&self, procedure: &Topic) -> bool {
        self.rpc_call.iter().any(|p| p.matches(procedure))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pat(s: &str) -> Pattern {
        Pattern::parse(s, MAX_TOPIC_LEN).unwrap()
    }

    fn topic(s: &str) -> Topic {
        Topic::parse(s, MAX_TOPIC_LEN).unwrap()
    }

    #[test]
    fn subscribe_uses_covers() {
        let caps = Capabilities {
            subscribe: vec![pat("chat.>"), pat("news.*")],
            ..Capabilities::default()
        };
        assert!(caps.can_subscribe(&pat("chat.*")));
        assert!(caps.can_subscribe(&pat("chat.room1")));
        assert!(caps.can_subscribe(&pat("chat.a.b.>")));
        assert!(!caps.can_subscribe(&pat("chat")));
        assert!(!caps.can_subscribe(&pat(">")));
        assert!(caps.can_subscribe(&pat("news.x")));
        assert!(caps.can_subscribe(&pat("news.*")));
        assert!(!caps.can_subscribe(&pat("news.>")));
        assert!(caps.can_read_presence(&topic("chat.room9")));
        assert!(!caps.can_read_presence(&topic("other")));
        assert!(
            !caps.can_join_presence(&topic("chat.room9")),
            "presence flag off"
        );
    }

    #[test]
    fn publish_uses_matches() {
        let caps = Capabilities {
            publish: vec![pat("chat.room1"), pat("log.*")],
            presence: true,
            ..Capabilities::default()
        };
        assert!(caps.can_publish(&topic("chat.room1")));
        assert!(!caps.can_publish(&topic("chat.room2")));
        assert!(caps.can_publish(&topic("log.x")));
        assert!(!caps.can_publish(&topic("log.x.y")));
        assert!(
            !caps.can_subscribe(&pat("chat.room1")),
            "publish does not imply subscribe"
        );
        assert!(!caps.can_join_presence(&topic("chat.room1")));
    }

    #[test]
    fn nothing_and_everything() {
        let none = Capabilities::default();
        assert!(!none.can_subscribe(&pat("a")));
        assert!(!none.can_publish(&topic("a")));
        let all = Capabilities::allow_all();
        assert!(all.can_subscribe(&pat(">")));
        assert!(all.can_publish(&topic("a.b.c")));
        assert!(all.can_join_presence(&topic("a")));
        assert!(all.can_sync_write(&topic("user.a")));
        assert!(!none.can_sync_read(&topic("user.a")));
    }

    #[test]
    fn sync_read_and_write() {
        let caps = Capabilities {
            sync_read: vec![pat("team.*")],
            sync_write: vec![pat("user.alice.>")],
            ..Capabilities::default()
        };
        assert!(caps.can_sync_read(&topic("team.42")));
        assert!(!caps.can_sync_write(&topic("team.42")), "read only");
        assert!(!caps.can_sync_read(&topic("team.42.x")));
        assert!(caps.can_sync_write(&topic("user.alice.notes")));
        assert!(
            caps.can_sync_read(&topic("user.alice.notes")),
            "write implies read"
        );
        assert!(!caps.can_sync_read(&topic("user.bob.notes")));
        assert!(
            !caps.can_subscribe(&pat("team.42")),
            "sync does not imply subscribe"
        );
    }
}
