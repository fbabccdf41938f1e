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
/// whenever the connection's input is drained.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// The cap while a backlog is being read: `None` means uncapped.
    cap: Option<f64>,
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
            cap: Some(burst),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens += elapsed * self.rate;
        if let Some(cap) = self.cap {
            self.tokens = self.tokens.min(cap);
        }
    }

    /// The hub found input after an idle moment; it may itself have been
    /// unable to read for `lag` (a stall it measured). Refills up to
    /// `burst` plus `lag`'s worth of tokens, then lifts the cap until the
    /// next [`idle`](TokenBucket::idle).
    pub fn resume(&mut self, now: Instant, lag: Duration) {
        self.cap = Some(self.burst + lag.as_secs_f64() * self.rate);
        self.refill(now);
        self.cap = None;
    }

    /// The hub has read everything the connection sent: tokens are capped
    /// at `burst` again.
    pub fn idle(&mut self, now: Instant) {
        self.refill(now);
        self.cap = Some(self.burst);
        self.tokens = self.tokens.min(self.burst);
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
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert!(b.take(later, 1).is_ok());
        }
        assert!(b.take(later, 1).is_err());
        assert!(b.take(later + Duration::from_secs(1), 3).is_ok(), "cost 3");
        assert!(b.take(later + Duration::from_secs(1), 1).is_err());
    }

    #[test]
    fn a_quiet_client_cannot_save_up_for_a_flood() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.idle(t0);
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
        b.idle(now);
        assert!((0..201).filter(|_| b.take(now, 1).is_err()).count() == 1);
    }

    #[test]
    fn a_stall_the_hub_measured_is_credited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100, 200, t0);
        b.idle(t0);
        // The hub stops for 7 s while the client sends 700 requests.
        let t1 = t0 + Duration::from_secs(7);
        b.resume(t1, Duration::from_secs(7));
        assert!((0..700).all(|_| b.take(t1, 1).is_ok()));
        // Drained: the cap is back.
        b.idle(t1);
        let t2 = t1 + Duration::from_secs(60);
        b.resume(t2, Duration::ZERO);
        assert_eq!((0..1000).filter(|_| b.take(t2, 1).is_ok()).count(), 200);
    }
}
