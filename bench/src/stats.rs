//! Latency histograms and their summaries.

use hdrhistogram::Histogram;
use serde::Serialize;

/// A latency histogram in nanoseconds (1 µs to 60 s, 3 significant digits).
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency::new()
    }
}

impl Latency {
    /// An empty histogram.
    pub fn new() -> Latency {
        // Bounds are constants within hdrhistogram's limits: cannot fail.
        #[allow(clippy::expect_used)]
        Latency(Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid bounds"))
    }

    /// Records one latency in nanoseconds (clamped into range).
    pub fn record(&mut self, nanos: u64) {
        self.0.saturating_record(nanos.max(1_000));
    }

    /// Adds another histogram's samples.
    pub fn merge(&mut self, other: &Latency) {
        let _ = self.0.add(&other.0);
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.0.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The summary in microseconds.
    pub fn summary(&self) -> Summary {
        let us = |q: f64| self.0.value_at_quantile(q) as f64 / 1_000.0;
        Summary {
            samples: self.0.len(),
            p50_us: us(0.5),
            p90_us: us(0.9),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.0.max() as f64 / 1_000.0,
        }
    }
}

/// Percentiles of a latency distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Samples recorded.
    pub samples: u64,
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Latency::new();
        for i in 1..=1000u64 {
            h.record(i * 1_000);
        }
        let s = h.summary();
        assert_eq!(s.samples, 1000);
        assert!((s.p50_us - 500.0).abs() < 2.0, "{s:?}");
        assert!((s.p99_us - 990.0).abs() < 2.0, "{s:?}");
        assert!((s.max_us - 1000.0).abs() < 2.0, "{s:?}");
        let mut other = Latency::new();
        other.record(5_000_000);
        h.merge(&other);
        assert_eq!(h.len(), 1001);
    }
}
