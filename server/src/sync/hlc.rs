//! The hub's hybrid logical clock (design Y5, Y6): the referee of every
//! record-sync timestamp.
//!
//! A value is a `u64`: bits 63..16 Unix milliseconds, bits 15..0 a counter
//! (`plexus_protocol::methods::sync::hlc`). The hub's clock never goes
//! back, moves to at least every timestamp it accepts, and refuses one
//! whose milliseconds are more than the allowed skew ahead of its wall
//! clock.

use std::sync::Arc;

use parking_lot::Mutex;
use plexus_protocol::methods::sync::{hlc, hlc_counter, hlc_ms};

use crate::streams::Clock;

/// A timestamp too far ahead of the hub's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("timestamp {hlc} is more than {max_skew_ms} ms ahead of the hub's clock")]
pub struct SkewError {
    /// The refused timestamp.
    pub hlc: u64,
    /// The hub's HLC when it refused it.
    pub server_hlc: u64,
    /// The allowed skew.
    pub max_skew_ms: u64,
}

/// The hub's HLC over an injectable wall clock.
#[derive(Debug, Clone)]
pub struct Hlc {
    clock: Arc<dyn Clock>,
    max_skew_ms: u64,
    last: Arc<Mutex<u64>>,
}

impl Hlc {
    /// A clock reading `clock`, accepting timestamps at most `max_skew_ms`
    /// ahead of it.
    pub fn new(clock: Arc<dyn Clock>, max_skew_ms: u64) -> Hlc {
        Hlc {
            clock,
            max_skew_ms,
            last: Arc::new(Mutex::new(0)),
        }
    }

    fn wall_ms(&self) -> u64 {
        u64::try_from(self.clock.now_ms()).unwrap_or(0)
    }

    /// The wall clock, milliseconds.
    pub fn wall(&self) -> i64 {
        self.clock.now_ms()
    }

    /// The allowed skew.
    pub fn max_skew_ms(&self) -> u64 {
        self.max_skew_ms
    }

    /// A new timestamp, greater than every one before.
    pub fn now(&self) -> u64 {
        let mut last = self.last.lock();
        let wall = hlc(self.wall_ms(), 0);
        *last = if wall > *last {
            wall
        } else if hlc_counter(*last) < u16::MAX {
            *last + 1
        } else {
            // Counter exhausted: borrow the next millisecond.
            hlc(hlc_ms(*last) + 1, 0)
        };
        *last
    }

    /// The current value without advancing.
    pub fn peek(&self) -> u64 {
        (*self.last.lock()).max(hlc(self.wall_ms(), 0))
    }

    /// Checks `remote` against the skew (nothing changes on an error).
    pub fn check(&self, remote: u64) -> Result<(), SkewError> {
        if hlc_ms(remote) > self.wall_ms().saturating_add(self.max_skew_ms) {
            return Err(SkewError {
                hlc: remote,
                server_hlc: self.peek(),
                max_skew_ms: self.max_skew_ms,
            });
        }
        Ok(())
    }

    /// Moves the clock to at least `remote` (already checked).
    pub fn observe(&self, remote: u64) {
        let mut last = self.last.lock();
        *last = (*last).max(remote);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streams::ManualClock;

    #[test]
    fn monotonic_observing_and_clamped() {
        let clock = ManualClock::new(1_000);
        let h = Hlc::new(Arc::new(clock.clone()), 50);
        let a = h.now();
        assert_eq!(a, hlc(1_000, 0));
        assert_eq!(h.now(), hlc(1_000, 1), "same ms: the counter moves");
        h.check(hlc(1_050, 9)).unwrap();
        h.observe(hlc(1_050, 9));
        assert_eq!(h.now(), hlc(1_050, 10), "moved to the remote");
        let e = h.check(hlc(1_051, 0)).unwrap_err();
        assert_eq!(e.max_skew_ms, 50);
        assert_eq!(e.server_hlc, hlc(1_050, 10));
        clock.advance(100);
        assert_eq!(h.now(), hlc(1_100, 0));
        h.check(hlc(1_151, 0)).expect_err("still clamped");
        // Counter overflow borrows the next millisecond.
        h.observe(hlc(1_100, u16::MAX));
        assert_eq!(h.now(), hlc(1_101, 0));
    }
}
