//! Resident memory of a process under test, read from `/proc`, sampled in
//! the background to catch its peak.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

/// How often [`PeakSampler`] reads `/proc`.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(20);

/// The resident set size of a process in KiB, from `/proc/PID/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples a process's RSS every [`SAMPLE_EVERY`] until stopped and keeps
/// the largest value seen.
#[derive(Debug)]
pub struct PeakSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl PeakSampler {
    /// Starts sampling `pid`.
    pub fn start(pid: u32) -> PeakSampler {
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (peak, stop) = (peak.clone(), stop.clone());
            async move {
                let mut tick = tokio::time::interval(SAMPLE_EVERY);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    if let Some(kib) = rss_kib(pid) {
                        peak.fetch_max(kib, Ordering::Relaxed);
                    }
                }
            }
        });
        PeakSampler { peak, stop, task }
    }

    /// The peak so far, in KiB.
    pub fn peak_kib(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Stops sampling, takes one last sample and returns the peak in KiB.
    pub async fn finish(self, pid: u32) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.task.await;
        if let Some(kib) = rss_kib(pid) {
            self.peak.fetch_max(kib, Ordering::Relaxed);
        }
        self.peak.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn samples_this_process() {
        let me = std::process::id();
        let now = rss_kib(me).unwrap();
        assert!(now > 0);
        let sampler = PeakSampler::start(me);
        // Touch 64 MiB: the last sample must see it.
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        let peak = sampler.finish(me).await;
        assert!(peak >= now + 60 * 1024, "{peak} KiB vs {now} KiB before");
        drop(big);
        assert_eq!(rss_kib(u32::MAX), None);
    }
}
