//! Reconnect delays: capped exponential backoff with full jitter.

use std::time::Duration;

/// How long to wait before reconnect attempt `n`.
///
/// The delay for attempt `n` (0-based) is drawn uniformly from
/// `[0, min(max, initial × 2ⁿ)]` ("full jitter"), so a crowd of clients that
/// lost their hub at the same moment spreads its reconnects out instead of
/// arriving together. When the hub sent a retry hint in `closing`, the
/// delay is the hint plus that jittered delay.
///
/// ```
/// use plexus_client::Backoff;
/// use std::time::Duration;
/// let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) };
/// assert_eq!(b.ceiling(0), Duration::from_millis(100));
/// assert_eq!(b.ceiling(3), Duration::from_millis(800));
/// assert_eq!(b.ceiling(30), Duration::from_secs(10));
/// assert!(b.delay(3, None) <= Duration::from_millis(800));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// Ceiling of the first attempt's delay.
    pub initial: Duration,
    /// Ceiling of any attempt's delay.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(250),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The largest delay attempt `n` may wait.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// A jittered delay for attempt `n`, after a server hint if any.
    pub fn delay(&self, attempt: u32, hint: Option<Duration>) -> Duration {
        self.delay_at(attempt, hint, rand::random::<f64>())
    }

    /// The delay for attempt `n` at point `unit` of the jitter range: the
    /// hint plus `unit × ceiling(n)`, with `unit` clamped to `[0, 1]`.
    /// [`delay`](Self::delay) draws `unit` at random; this form is for
    /// deterministic tests and custom jitter.
    ///
    /// ```
    /// use plexus_client::Backoff;
    /// use std::time::Duration;
    /// let b = Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(10) };
    /// assert_eq!(b.delay_at(2, None, 0.5), Duration::from_millis(200));
    /// assert_eq!(b.delay_at(0, Some(Duration::from_secs(2)), 1.0), Duration::from_millis(2100));
    /// ```
    pub fn delay_at(&self, attempt: u32, hint: Option<Duration>, unit: f64) -> Duration {
        let ceiling = self.ceiling(attempt);
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        let jitter = if ceiling.is_zero() {
            Duration::ZERO
        } else {
            ceiling.mul_f64(unit)
        };
        hint.unwrap_or_default().saturating_add(jitter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let b = Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        };
        let delays: Vec<_> = (0..200).map(|_| b.delay(4, None)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(1)));
        let min = delays.iter().min().unwrap();
        let max = delays.iter().max().unwrap();
        assert!(
            *max - *min > Duration::from_millis(500),
            "jitter spreads delays: {min:?}..{max:?}"
        );
        let hinted = b.delay(0, Some(Duration::from_secs(2)));
        assert!(hinted >= Duration::from_secs(2) && hinted <= Duration::from_millis(2100));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
    }
}
