//! The client's hybrid logical clock (decision Y5): a `u64` whose high 48
//! bits are Unix milliseconds and low 16 bits a counter, the same encoding
//! as the hub's (`plexus_protocol::methods::sync::hlc`). Pure: the caller
//! passes the wall clock in, so it is tested without a clock.

use plexus_protocol::methods::sync::{hlc, hlc_counter, hlc_ms};

/// A hybrid logical clock: `now` never goes back and always moves forward,
/// and `observe` moves it past a timestamp seen from the hub or another
/// replica.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHlc {
    last: u64,
}

impl ClientHlc {
    /// A clock that has seen nothing.
    pub fn new() -> ClientHlc {
        ClientHlc::default()
    }

    /// A timestamp for a change made now, `wall_ms` being the Unix
    /// milliseconds: `max(wall, last)` with the counter moved on when the
    /// milliseconds did not advance.
    pub fn now(&mut self, wall_ms: u64) -> u64 {
        let wall = hlc(wall_ms, 0);
        self.last = if wall > self.last {
            wall
        } else if hlc_counter(self.last) == u16::MAX {
            // Counter exhausted: borrow the next millisecond.
            hlc(hlc_ms(self.last) + 1, 0)
        } else {
            self.last + 1
        };
        self.last
    }

    /// Moves the clock to at least `remote` (an HLC the hub answered).
    pub fn observe(&mut self, remote: u64) {
        self.last = self.last.max(remote);
    }

    /// The last timestamp handed out or observed.
    pub fn peek(&self) -> u64 {
        self.last
    }
}

/// The Unix wall clock in milliseconds (0 if the system clock is before
/// 1970).
pub(crate) fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The same examples as the hub's `sync::hlc` tests.
    #[test]
    fn monotonic_and_observing_like_the_hub() {
        let mut h = ClientHlc::new();
        assert_eq!(h.now(1_000), hlc(1_000, 0));
        assert_eq!(h.now(1_000), hlc(1_000, 1), "same ms: the counter moves");
        h.observe(hlc(1_050, 9));
        assert_eq!(h.now(1_000), hlc(1_050, 10), "moved to the remote");
        assert_eq!(h.now(1_100), hlc(1_100, 0));
        assert_eq!(h.now(1_101), hlc(1_101, 0));
        h.observe(hlc(5, 0));
        assert_eq!(h.peek(), hlc(1_101, 0), "an older remote changes nothing");
        assert_eq!(h.now(900), hlc(1_101, 1), "the wall going back does not");
        // Byte layout: 6 bytes ms, 2 bytes counter, big-endian.
        assert_eq!(
            hlc(1_700_000_000_000, 3).to_be_bytes(),
            [0x01, 0x8b, 0xcf, 0xe5, 0x68, 0x00, 0x00, 0x03]
        );
    }

    #[test]
    fn an_exhausted_counter_borrows_the_next_millisecond() {
        let mut h = ClientHlc::new();
        h.observe(hlc(7, u16::MAX));
        assert_eq!(h.now(7), hlc(8, 0));
    }
}
