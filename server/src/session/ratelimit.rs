//! Per-connection request rate limit: a token bucket that judges the
//! client, not the hub's own lag (decision P19).
//!
//! Tokens refill at `rate` per second. The cap (`burst`) is what stops a
//! client that was quiet from saving up for a flood; it is applied only at
//! moments when the hub has read everything the connection sent
//! ([`TokenBucket::idle`]). While the hub has unread input from the
//! connection (a backlog), tokens keep accruing past the cap, so a client
//! that sent at the announced rate while the hub was slow to read is not
//! charged for the hub's delay. When the hub finds input after an idle
//! moment ([`TokenBucket::resume`]) it may have been stalled itself: the
//! refill since then is capped at `burst` plus what the hub's measured lag
//! explains.
//!
//! Time is passed in, so the rules are tested without sleeping.

use std::time::{Duration, Instant};

/// A token bucket refilled at `rate` tokens per second, capped at `burst`
/// (plus what the hub's own lag explains) whenever the connection's input
/// is drained.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket, with the connection's input drained.
    pub fn new(rate_per_sec: u32, burst: u32, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            rate: f64::from(rate_per_sec.max(1)),
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// The cap for a moment after which the hub lagged `lag`.
    fn cap(&self, lag: Duration) -> f64 {
        self.burst + lag.as_secs_f64() * self.rate
    }

    /// Adds the tokens accrued since the last update, uncapped.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens += elapsed * self.rate;
    }

    /// The hub found input after an idle moment; it may itself have been
    /// unable to read for `lag` (a stall it measured). What accrued since
    /// the idle moment counts up to `burst` plus `lag`'s worth of tokens
    /// (never taking away tokens already there); until the next
    /// [`idle`](TokenBucket::idle), tokens accrue uncapped.
    pub fn resume(&mut self, now: Instant, lag: Duration) {
        let before = self.tokens;
        self.refill(now);
        self.tokens = self.tokens.min(self.cap(lag)).max(before);
    }

    /// The hub has read everything the connection sent (as far as it can
    /// tell, having lagged `lag` since the last look): tokens are capped at
    /// `burst` plus `lag`'s worth again.
    pub fn idle(&mut self, now: Instant, lag: Duration) {
        self.refill(now);
        self.tokens = self.tokens.min(self.cap(lag));
    }

    /// Takes `cost` tokens, or says how long until they are available.
    pub fn take(&mut self, now: Instant, cost: u32) -> Result<(), Duration> {
        self.refill(now);
        let cost = f64::from(cost.max(1));
        if self.tokens >= cost {
            self.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - self.tokens) / self.rate))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let z = Duration::ZERO;
        let mut b = TokenBucket::new(10, 3, t0);
        assert!(b.take(t0, 1).is_ok());
        assert!(b.take(t0, 1).is_ok());
        assert!(b.take(t0, 1).is_ok());
        let wait = b.take(t0, 1).unwrap_err();
        assert!(
            wait <= Duration::from_millis(100) && wait > Duration::from_millis(90),
            "{wait:?}"
        );
        assert!(b.take(t0 + Duration::from_millis(100), 1).is_ok());
        assert!(b.take(t0 + Duration::from_millis(100), 1).is_err());
        // Refill is capped at the burst once the input is drained.
        b.idle(t0 + Duration::from_millis(100), z);
        let later = t0 + Duration::from_secs(60);
        b.idle(later, z);
        for _ in 0..3 {
            assert!(b.take(later, 1).is_ok());
        }
        assert!(b.take(later, 1).is_err());
        let then = later + Duration::from_secs(1);
        b.idle(then, z);
        assert!(b.take(then, 3).is_ok(), "cost 3");
        assert!(b.take(then, 1).is_err());
    }

    #[test]
    fn a_quiet_client_cannot_save_up_for_a_flood() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.idle(t0, Duration::ZERO);
        // An hour of silence, then 10,000 requests at once, the hub healthy.
        let t1 = t0 + Duration::from_secs(3600);
        b.resume(t1, Duration::ZERO);
        let served = (0..10_000).filter(|_| b.take(t1, 1).is_ok()).count();
        assert_eq!(served, 200);
    }

    #[test]
    fn a_backlog_the_hub_built_up_is_not_charged_to_the_client() {
        // The client sends at exactly 100/s for 10 s. The hub is saturated:
        // it reads only 50 a second, so its backlog grows to 500, then it
        // catches up and reads those 500 at once.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.resume(t0, Duration::ZERO);
        let mut refused = 0;
        for second in 1..=10u64 {
            let now = t0 + Duration::from_secs(second);
            refused += (0..50).filter(|_| b.take(now, 1).is_err()).count();
        }
        let now = t0 + Duration::from_secs(10);
        refused += (0..500).filter(|_| b.take(now, 1).is_err()).count();
        assert_eq!(refused, 0);
        // A bucket capped all along would have refused 300 of the 500.
        b.idle(now, Duration::ZERO);
        assert!((0..201).filter(|_| b.take(now, 1).is_err()).count() == 1);
    }

    #[test]
    fn a_stall_seen_first_as_an_idle_moment_is_credited_too() {
        // Right after the hub resumes, a turn may find no input yet (the
        // readiness is not processed) and call the moment idle: the lag it
        // measured keeps the accrued tokens.
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.idle(t0, Duration::ZERO);
        let t1 = t0 + Duration::from_secs(3);
        b.idle(t1, Duration::from_secs(3));
        b.resume(t1, Duration::ZERO);
        assert!((0..500).all(|_| b.take(t1, 1).is_ok()));
        assert!(b.take(t1, 1).is_err());
    }

    #[test]
    fn a_stall_the_hub_measured_is_credited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.idle(t0, Duration::ZERO);
        // The hub stops for 7 s while the client sends 700 requests.
        let t1 = t0 + Duration::from_secs(7);
        b.resume(t1, Duration::from_secs(7));
        assert!((0..700).all(|_| b.take(t1, 1).is_ok()));
        // Drained: the cap is back.
        b.idle(t1, Duration::ZERO);
        let t2 = t1 + Duration::from_secs(60);
        b.resume(t2, Duration::ZERO);
        assert_eq!((0..1000).filter(|_| b.take(t2, 1).is_ok()).count(), 200);
    }
}
