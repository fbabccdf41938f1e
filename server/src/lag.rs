//! How far behind the hub itself has fallen, so that rate limits and
//! keepalive judge the client, not the hub's own lag (decision P19).
//!
//! A ticker task on the runtime wakes every [`TICK`] and adds how late it
//! woke to an accumulated total: when the runtime is saturated or the
//! process was stopped, every task is late by about as much, the ticker
//! included. A connection marks the total when its input runs dry and asks,
//! when input appears again, how much lag accrued meanwhile
//! ([`LagClock::since`]). A stall the ticker has not observed yet (the
//! process just resumed and this connection ran first) shows as a stale
//! heartbeat and counts too.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// How often the ticker wakes.
pub const TICK: Duration = Duration::from_millis(20);

/// Lateness below this is scheduling noise, not lag.
pub const TOLERANCE: Duration = Duration::from_millis(5);

/// A point to measure lag from; see [`LagClock::mark`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mark {
    lag_ms: u64,
    at_ms: u64,
}

/// The hub's own measured lag.
#[derive(Debug)]
pub struct LagClock {
    epoch: Instant,
    /// Milliseconds since `epoch` of the ticker's last wake (0: never).
    beat_ms: AtomicU64,
    /// Accumulated lateness, in milliseconds.
    lag_ms: AtomicU64,
}

impl Default for LagClock {
    fn default() -> Self {
        LagClock::new(Instant::now())
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl LagClock {
    /// A clock whose time starts at `epoch`.
    pub fn new(epoch: Instant) -> LagClock {
        LagClock {
            epoch,
            beat_ms: AtomicU64::new(0),
            lag_ms: AtomicU64::new(0),
        }
    }

    /// Where things stand at `now`, to pass to
    /// [`since`](LagClock::since) later.
    pub fn mark(&self, now: Instant) -> Mark {
        Mark {
            lag_ms: self.lag_ms.load(Ordering::Relaxed),
            at_ms: ms(now.saturating_duration_since(self.epoch)),
        }
    }

    /// The lag accrued between `mark` and `now`: what the ticker recorded,
    /// or, if it has not run for a while (the process just resumed), the
    /// time since its last beat (or the mark, if later).
    ///
    /// A stall first seen as a stale beat and later recorded by the ticker
    /// can be credited twice to one connection, once each way: at most one
    /// extra stall's worth, and only for a stall of the hub itself.
    pub fn since(&self, mark: Mark, now: Instant) -> Duration {
        let recorded = self
            .lag_ms
            .load(Ordering::Relaxed)
            .saturating_sub(mark.lag_ms);
        let beat = self.beat_ms.load(Ordering::Relaxed);
        let unobserved = if beat == 0 {
            0
        } else {
            ms(now.saturating_duration_since(self.epoch))
                .saturating_sub(beat.max(mark.at_ms))
                .saturating_sub(ms(TICK * 2))
        };
        Duration::from_millis(recorded.max(unobserved))
    }

    /// Records one tick that was due at `due` and happened at `now`.
    pub fn tick(&self, due: Instant, now: Instant) {
        let late = now.saturating_duration_since(due);
        if late > TOLERANCE {
            self.lag_ms.fetch_add(ms(late), Ordering::Relaxed);
        }
        self.beat_ms.store(
            ms(now.saturating_duration_since(self.epoch)).max(1),
            Ordering::Relaxed,
        );
    }

    /// Starts the ticker; it ends when the clock is dropped.
    pub fn spawn_ticker(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak: Weak<LagClock> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut due = Instant::now() + TICK;
            loop {
                tokio::time::sleep_until(due.into()).await;
                let now = Instant::now();
                let Some(clock) = weak.upgrade() else { break };
                clock.tick(due, now);
                due = now + TICK;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lateness_accumulates_and_a_stale_beat_counts_as_lag() {
        let t0 = Instant::now();
        let c = LagClock::new(t0);
        let mark = c.mark(t0);
        assert_eq!(
            c.since(mark, t0 + Duration::from_secs(60)),
            Duration::ZERO,
            "no ticker yet"
        );
        c.tick(t0 + TICK, t0 + TICK + Duration::from_millis(2));
        assert_eq!(c.since(mark, t0 + TICK * 2), Duration::ZERO, "noise");
        // The process stopped for 7 s: seen by the ticker...
        c.tick(t0 + TICK * 2, t0 + TICK * 2 + Duration::from_secs(7));
        let now = t0 + TICK * 2 + Duration::from_secs(7);
        assert_eq!(c.since(mark, now), Duration::from_secs(7));
        // ...or not yet: a connection that runs before the ticker sees a
        // heartbeat 3 s old.
        let mark = c.mark(now);
        let later = now + Duration::from_secs(3);
        assert_eq!(c.since(mark, later), Duration::from_secs(3) - TICK * 2);
        // Counted from the mark when the mark is later than the beat.
        let mark = c.mark(now + Duration::from_secs(2));
        assert_eq!(c.since(mark, later), Duration::from_secs(1) - TICK * 2);
    }
}
