//! The pub/sub broker: the subject index plus presence.
//!
//! The broker sees an event as a topic and shared, already-encoded frame
//! bytes, never as a decoded payload: a publish is encoded once and the same
//! bytes are queued for every matching connection, so a cluster transport or
//! a federation link can later carry them unchanged.

pub mod matcher;
pub mod presence;

use std::sync::Arc;

use bytes::Bytes;

use crate::conn::{Conn, ConnId};
use crate::outbound::Push;
pub use matcher::Matcher;
pub use presence::Presence;

/// Outcome of a fan-out.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FanOut {
    /// Connections the frame was queued for.
    pub delivered: u64,
    /// Connections closed as slow consumers by this fan-out.
    pub overflowed: u64,
}

/// Subscriptions and presence of the whole hub.
#[derive(Debug, Default)]
pub struct Broker {
    /// The subscription index.
    pub matcher: Matcher,
    /// Presence of every topic.
    pub presence: Presence,
}

impl Broker {
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
