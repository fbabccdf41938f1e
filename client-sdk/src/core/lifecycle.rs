//! The life of a connection: attempts, how a connection ends, reconnect
//! with backoff, and closing for good.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::requests::Held;
use super::{
    Action, CLOSE_LINGER, Core, Outcome, Pending, Phase, Refresh, STABLE_SESSION, Transmit,
};
use crate::error::Error;
use crate::state::{CloseStatus, ConnectionState};

impl Core {
    pub(super) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn liveness(&self) -> Duration {
        self.cfg.liveness.unwrap_or_else(|| {
            Duration::from_millis(self.limits.ping_interval_ms.max(1_000)) * 2
                + Duration::from_secs(5)
        })
    }

    pub(super) fn start_attempt(&mut self, now: Instant) {
        self.phase = Phase::Token {
            deadline: now + self.cfg.connect_timeout,
        };
        self.actions.push_back(Action::FetchToken);
    }

    /// An attempt failed before the socket was up.
    pub(super) fn attempt_failed(&mut self, now: Instant, error: Error) {
        self.token = None;
        self.phase = Phase::Closed;
        self.after(now, Outcome::Retry(error));
    }

    /// Ends the connection: everything in flight fails, and `then` happens
    /// now or after the socket's end.
    pub(super) fn end(&mut self, now: Instant, then: Outcome, how: End) {
        // Durable publishes are sent again on the next connection, with
        // their sequence numbers, in the order they were first sent;
        // everything else in flight fails.
        let mut retry = Vec::new();
        for (id, pending) in self.requests.connection_lost() {
            match pending {
                Pending::Publish { seq, frame, reply } => retry.push(Held {
                    id,
                    frame: frame.clone(),
                    pending: Pending::Publish { seq, frame, reply },
                }),
                other => other.fail(Error::ConnectionLost),
            }
        }
        retry.sort_by_key(|h| match h.pending {
            Pending::Publish { seq, .. } => seq,
            _ => 0,
        });
        self.requests.requeue_front(retry);
        self.durable.connection_lost();
        // The next connection resumes them all anyway.
        self.durable_retry = None;
        if self.served.running() > 0 {
            self.actions.push_back(Action::AbortAllServed);
        }
        self.served.connection_lost();
        self.rpc.connection_lost();
        self.paced_full.clear();
        self.subs.connection_lost();
        if !matches!(self.refresh, Refresh::Idle) {
            self.actions.push_back(Action::AbandonRefresh);
            self.refresh = Refresh::Idle;
        }
        self.transmit.clear();
        self.queued_replies = 0;
        self.closing = None;
        match how {
            End::Now | End::Gone => {
                self.phase = Phase::Closed;
                self.after(now, then);
            }
            End::Linger(wait) => {
                self.phase = Phase::Ending {
                    deadline: now + wait,
                    then,
                };
            }
            End::Close => {
                self.transmit.push_back((Transmit::Close, false));
                self.phase = Phase::Ending {
                    deadline: now + CLOSE_LINGER,
                    then,
                };
            }
        }
    }

    /// After a connection or an attempt ended: reconnect or stop.
    pub(super) fn after(&mut self, now: Instant, outcome: Outcome) {
        match outcome {
            Outcome::Retry(error) if self.first => self.finish(now, None, error),
            Outcome::Retry(_) => {
                self.attempt = match self.connected_since.take() {
                    // A connection that lasted is a fresh start; one that
                    // failed at once keeps backing off.
                    Some(since) if now.saturating_duration_since(since) >= STABLE_SESSION => 1,
                    _ => self.attempt.saturating_add(1),
                };
                let unit = (self.jitter)();
                let delay = self.cfg.backoff.delay_at(
                    self.attempt.saturating_sub(1),
                    self.retry_hint.take(),
                    unit,
                );
                self.phase = Phase::Backoff { until: now + delay };
                self.actions
                    .push_back(Action::State(ConnectionState::Reconnecting {
                        attempt: self.attempt,
                        next_in: delay,
                    }));
            }
            Outcome::Stop { code, error } => self.finish(now, code, error),
        }
    }

    /// Closed for good: everything waiting learns why.
    pub(super) fn finish(&mut self, now: Instant, code: Option<CloseStatus>, error: Error) {
        if !matches!(
            self.phase,
            Phase::Closed | Phase::Token { .. } | Phase::Opening { .. } | Phase::Backoff { .. }
        ) {
            // Still connected: end the connection first.
            return self.end(now, Outcome::Stop { code, error }, End::Now);
        }
        self.phase = Phase::Closed;
        self.final_code = code;
        for held in self.requests.drain_queued() {
            held.pending.fail(error.clone());
        }
        self.subs.finish(&error);
        self.durable.finish(&error);
        self.rpc.finish(&error);
        self.actions
            .push_back(Action::State(ConnectionState::Closed {
                code,
                reason: error.report(),
            }));
        self.actions.push_back(Action::Finished(error));
    }
}

/// How [`Core::end`] lets the socket go.
pub(super) enum End {
    /// The task drops it now (the action was already pushed).
    Now,
    /// It is already gone.
    Gone,
    /// Keep reading until its end, at most this long (after the hub's
    /// Close frame, whose reply the WebSocket layer sends).
    Linger(Duration),
    /// Send the client's Close frame, then linger for [`CLOSE_LINGER`].
    Close,
}
