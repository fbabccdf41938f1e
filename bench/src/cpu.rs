//! CPU time of processes under test, read from `/proc/PID/stat`: what a
//! scenario cost, in CPU seconds, beside what it delivered.

use std::collections::BTreeMap;

/// User plus system CPU time of a process, in clock ticks, from its
/// `/proc/PID/stat` (all its threads; not its children).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` (fields 14 and 15) of one `/proc/PID/stat` line. The
/// command name (field 2) is in parentheses and may itself hold spaces and
/// parentheses, so the fields are counted from the last `)`.
pub fn parse_stat(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    // After the name: state (3), ppid (4), … utime (14), stime (15).
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second of `/proc/PID/stat` times (`sysconf(_SC_CLK_TCK)`,
/// 100 on Linux).
pub fn ticks_per_sec() -> u64 {
    #[cfg(target_os = "linux")]
    if let Ok(Some(t)) = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        && t > 0
    {
        return t as u64;
    }
    100
}

/// CPU ticks of several processes at one moment, by pid (a process that
/// is gone is left out).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CpuSample(pub BTreeMap<u32, u64>);

impl CpuSample {
    /// Reads every process of `pids`.
    pub fn take(pids: &[u32]) -> CpuSample {
        CpuSample(
            pids.iter()
                .filter_map(|&p| Some((p, cpu_ticks(p)?)))
                .collect(),
        )
    }

    /// CPU seconds spent from `self` to `later`, summed over the processes
    /// of `later`: a process absent from `self` (started in between)
    /// counts from 0; one absent from `later` (gone) is not counted.
    pub fn seconds_until(&self, later: &CpuSample) -> f64 {
        let ticks: u64 = later
            .0
            .iter()
            .map(|(pid, &t)| t.saturating_sub(self.0.get(pid).copied().unwrap_or(0)))
            .sum();
        ticks as f64 / ticks_per_sec() as f64
    }
}

/// CPU seconds per 100,000 deliveries (0 when nothing was delivered).
pub fn per_100k(cpu_seconds: f64, deliveries: f64) -> f64 {
    if deliveries <= 0.0 {
        0.0
    } else {
        cpu_seconds / deliveries * 100_000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        // A name with spaces and parentheses, as `comm` may be.
        let line = "4242 (my (odd) name) S 1 4242 4242 0 -1 4194560 1513 0 0 0 \
                    731 219 0 0 20 0 9 0 12345 123456789 2345 18446744073709551615";
        assert_eq!(parse_stat(line), Some(731 + 219));
        assert_eq!(parse_stat("12 (x) S 1 2"), None);
        assert_eq!(parse_stat("no parenthesis"), None);
    }

    #[test]
    fn this_process_accrues_cpu_time_while_it_works() {
        let me = std::process::id();
        let before = CpuSample::take(&[me, u32::MAX]);
        assert!(before.0.contains_key(&me), "/proc/self/stat is readable");
        assert!(!before.0.contains_key(&u32::MAX), "no such process");
        // Spin until the kernel has charged at least one tick (at most 10 s
        // of wall time on a loaded machine).
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while CpuSample::take(&[me]).0[&me] == before.0[&me] {
            for i in 0..100_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            assert!(started.elapsed().as_secs() < 10, "no tick charged ({x})");
        }
        let after = CpuSample::take(&[me]);
        let secs = before.seconds_until(&after);
        assert!(secs > 0.0 && secs < 10.0, "{secs}");
        assert!((per_100k(2.0, 400_000.0) - 0.5).abs() < 1e-12);
        assert_eq!(per_100k(1.0, 0.0), 0.0);
    }

    #[test]
    fn a_process_that_started_in_between_counts_from_zero() {
        let before = CpuSample([(1, 100), (2, 50)].into_iter().collect());
        let after = CpuSample([(1, 150), (3, 20)].into_iter().collect());
        let secs = before.seconds_until(&after);
        assert!(
            (secs - 70.0 / ticks_per_sec() as f64).abs() < 1e-9,
            "{secs}"
        );
    }
}
