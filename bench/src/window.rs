//! The measured window of a timed run, shared by every target's driver.

use std::time::Duration;

use crate::clock::now_nanos;

/// The measurement window, in [`now_nanos`] time: a run warms up until
/// `start`, and only what arrives before `end` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Start (after warm-up).
    pub start: u64,
    /// End.
    pub end: u64,
}

impl Window {
    /// A window starting `warmup` from now and lasting `duration`.
    pub fn after(warmup: Duration, duration: Duration) -> Window {
        let start = now_nanos().saturating_add(nanos(warmup));
        Window {
            start,
            end: start.saturating_add(nanos(duration)),
        }
    }

    /// Whether `t` is inside.
    pub fn contains(&self, t: u64) -> bool {
        t >= self.start && t < self.end
    }

    /// Whether `t` is past the end.
    pub fn over(&self, t: u64) -> bool {
        t >= self.end
    }

    /// Length in seconds (never zero, so rates stay finite).
    pub fn secs(&self) -> f64 {
        ((self.end - self.start) as f64 / 1e9).max(1e-9)
    }

    /// The end as a tokio deadline.
    pub fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_nanos(self.end.saturating_sub(now_nanos()))
    }

    /// The start (the end of the warm-up) as a tokio deadline.
    pub fn start_deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + Duration::from_nanos(self.start.saturating_sub(now_nanos()))
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_counts_only_its_own_span() {
        let w = Window::after(Duration::from_secs(1), Duration::from_secs(2));
        assert!(!w.contains(w.start - 1));
        assert!(w.contains(w.start));
        assert!(!w.contains(w.end));
        assert!(w.over(w.end));
        assert!((w.secs() - 2.0).abs() < 1e-9);
    }
}
