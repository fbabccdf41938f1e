//! Subscriptions: the application's local ones, the hub's (one per
//! distinct pattern, shared by every local subscription to it), routing of
//! events and presence notices, and what to renew after a reconnect.

use std::collections::HashMap;
use std::sync::Arc;

use plexus_protocol::methods::{EventParams, PresenceNotice};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{ErrorCode, RawValue, WireError};

use crate::deliver::ReplyTx;
use crate::error::Error;
use crate::subscription::{Event, Publication, SubQueue};

struct Local {
    pattern: Pattern,
    presence: bool,
    queue: Arc<SubQueue>,
}

struct Remote {
    presence: bool,
    /// The hub confirmed it on this connection.
    confirmed: bool,
    /// Local subscriptions waiting for the confirmation.
    waiters: Vec<(u64, ReplyTx<Result<(), Error>>)>,
}

/// Every subscription of the client.
#[derive(Default)]
pub(crate) struct Subs {
    locals: HashMap<u64, Local>,
    remote: HashMap<String, Remote>,
}

impl Subs {
    /// Adds a local subscription. Answers it at once when the hub already
    /// holds the pattern, or refuses it when the pattern is held with the
    /// other presence flag. Returns true when the hub must be asked (the
    /// pattern is new).
    pub(crate) fn add(
        &mut self,
        local: u64,
        pattern: Pattern,
        presence: bool,
        queue: Arc<SubQueue>,
        reply: ReplyTx<Result<(), Error>>,
    ) -> bool {
        if let Some(existing) = self.remote.get(pattern.as_str())
            && existing.presence != presence
        {
            reply.send(Err(Error::Remote(WireError::new(
                ErrorCode::Conflict,
                "already subscribed to this topic with a different presence option",
            ))));
            return false;
        }
        let key = pattern.as_str().to_owned();
        self.locals.insert(
            local,
            Local {
                pattern,
                presence,
                queue,
            },
        );
        match self.remote.get_mut(&key) {
            Some(r) if r.confirmed => {
                reply.send(Ok(()));
                false
            }
            Some(r) => {
                r.waiters.push((local, reply));
                false
            }
            None => {
                self.remote.insert(
                    key,
                    Remote {
                        presence,
                        confirmed: false,
                        waiters: vec![(local, reply)],
                    },
                );
                true
            }
        }
    }

    /// Removes a local subscription; returns the pattern when it was the
    /// last one on a pattern the hub confirmed (unsubscribe it there). An
    /// unconfirmed pattern is dropped when its answer arrives.
    pub(crate) fn remove(&mut self, local: u64) -> Option<String> {
        let sub = self.locals.remove(&local)?;
        let pattern = sub.pattern.as_str();
        if self.locals.values().any(|s| s.pattern.as_str() == pattern) {
            return None;
        }
        let remote = self.remote.remove(pattern)?;
        remote.confirmed.then(|| pattern.to_owned())
    }

    /// The hub answered a `subscribe` for `pattern`. Returns the pattern
    /// when nobody wants it any more although the hub now holds it (send
    /// `unsubscribe`).
    pub(crate) fn answered(
        &mut self,
        pattern: String,
        outcome: Result<RawValue, WireError>,
    ) -> Option<String> {
        let Some(remote) = self.remote.get_mut(&pattern) else {
            // Every local subscription went away while this was in
            // flight: drop the hub's side too, or it would leak.
            return outcome.is_ok().then_some(pattern);
        };
        match outcome {
            // `conflict`: the hub already holds this pattern for this
            // connection (an earlier subscribe for it was still in flight),
            // which is what we want.
            Ok(_) => remote.confirm(),
            Err(e) if e.code == ErrorCode::Conflict => remote.confirm(),
            Err(e) => {
                let waiting: Vec<u64> = self
                    .remote
                    .remove(&pattern)
                    .map(|r| {
                        r.waiters
                            .into_iter()
                            .map(|(local, w)| {
                                w.send(Err(Error::Remote(e.clone())));
                                local
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                // Subscriptions renewed after a reconnect end with the
                // error; new ones were answered above.
                let locals: Vec<u64> = self
                    .locals
                    .iter()
                    .filter(|(_, s)| s.pattern.as_str() == pattern)
                    .map(|(id, _)| *id)
                    .collect();
                for id in locals {
                    if let Some(s) = self.locals.remove(&id)
                        && !waiting.contains(&id)
                    {
                        s.queue.end(Error::Remote(e.clone()));
                    }
                }
            }
        }
        None
    }

    /// Routes an `event` to every matching local subscription.
    pub(crate) fn event(&self, params: &RawValue) {
        let Ok(p) = params.decode::<EventParams>() else {
            return;
        };
        let mut publication: Option<Publication> = None;
        for sub in self
            .locals
            .values()
            .filter(|s| s.pattern.matches_str(p.topic))
        {
            let item = publication.get_or_insert_with(|| Publication {
                topic: p.topic.into(),
                data: params.slice_ref(p.data),
                from: p.from.map(Into::into),
            });
            sub.queue.push(Event::Message(item.clone()));
        }
    }

    /// Routes a presence notice to the presence subscriptions of its topic.
    pub(crate) fn presence(&self, joined: bool, params: &RawValue) {
        let Ok(p) = params.decode::<PresenceNotice>() else {
            return;
        };
        for sub in self
            .locals
            .values()
            .filter(|s| s.presence && s.pattern.as_str() == p.topic)
        {
            sub.queue.push(if joined {
                Event::Join(p.member.clone())
            } else {
                Event::Leave(p.member.clone())
            });
        }
    }

    /// Whether the hub holds (or is asked for) `pattern`.
    pub(crate) fn holds(&self, pattern: &str) -> bool {
        self.remote.contains_key(pattern)
    }

    /// The patterns to subscribe again on a new connection, with their
    /// presence flag.
    pub(crate) fn renewals(&self) -> Vec<(String, bool)> {
        self.remote
            .iter()
            .map(|(p, r)| (p.clone(), r.presence))
            .collect()
    }

    /// The connection is gone: nothing is confirmed on the next one yet.
    pub(crate) fn connection_lost(&mut self) {
        for r in self.remote.values_mut() {
            r.confirmed = false;
        }
    }

    /// Closed for good: every waiter and every subscription ends.
    pub(crate) fn finish(&mut self, err: &Error) {
        for (_, r) in self.remote.drain() {
            for (_, w) in r.waiters {
                w.send(Err(err.clone()));
            }
        }
        for (_, s) in self.locals.drain() {
            s.queue.end(err.clone());
        }
    }

    /// How many distinct patterns the hub holds or is asked for.
    #[cfg(test)]
    pub(crate) fn patterns(&self) -> usize {
        self.remote.len()
    }
}

impl Remote {
    fn confirm(&mut self) {
        self.confirmed = true;
        for (_, w) in self.waiters.drain(..) {
            w.send(Ok(()));
        }
    }
}
