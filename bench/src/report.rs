//! The suite's report: JSON for machines, a markdown table for people.

use serde::Serialize;

/// One figure of Plexus beside its baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Scenario and metric, e.g. `fanout 1→1000 sat: delivered/s`.
    pub metric: String,
    /// Plexus's figure.
    pub plexus: f64,
    /// The baseline's name (`nats`, `floor`, `target`, `no stalled`).
    pub baseline: String,
    /// The baseline's figure.
    pub baseline_value: f64,
    /// plexus / baseline.
    pub ratio: f64,
    /// Whether higher is better for this metric.
    pub higher_is_better: bool,
    /// The target, as text, and whether it was met.
    pub target: Option<(String, bool)>,
    /// The same figure from the baseline `plexus` binary in the same run
    /// (`--baseline-plexus`), if one was given.
    pub before: Option<f64>,
}

impl Row {
    /// A row; the ratio is computed here.
    pub fn new(
        metric: &str,
        plexus: f64,
        baseline: &str,
        baseline_value: f64,
        higher_is_better: bool,
    ) -> Row {
        Row {
            metric: metric.to_owned(),
            plexus,
            baseline: baseline.to_owned(),
            baseline_value,
            ratio: if baseline_value == 0.0 {
                0.0
            } else {
                plexus / baseline_value
            },
            higher_is_better,
            target: None,
            before: None,
        }
    }

    /// Attaches the baseline binary's figure, if there is one.
    pub fn before(mut self, value: Option<f64>) -> Row {
        self.before = value;
        self
    }

    /// Attaches a target and whether it was met.
    pub fn target(mut self, text: &str, met: bool) -> Row {
        self.target = Some((text.to_owned(), met));
        self
    }
}

/// The machine a report was measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// CPU model.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Total memory in MiB.
    pub memory_mib: u64,
    /// Kernel release.
    pub kernel: String,
}

impl Machine {
    /// Reads /proc.
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_mib = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024;
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_mib,
            kernel,
        }
    }
}

/// A whole report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// When (UTC, RFC 3339).
    pub date: String,
    /// Where.
    pub machine: Machine,
    /// The figures.
    pub rows: Vec<Row>,
    /// The `plexus` binary measured.
    pub binary: String,
    /// The baseline `plexus` binary measured beside it, if any.
    pub baseline_binary: Option<String>,
    /// Every scenario's raw result, by name.
    pub raw: serde_json::Value,
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{:.0}", v)
    } else if v >= 1.0 {
        format!("{:.2}", v)
    } else {
        format!("{:.3}", v)
    }
}

impl Report {
    /// The markdown table (with two more columns, the baseline binary's
    /// figure and this one's ratio to it, when a row has one).
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let with_before = self.rows.iter().any(|r| r.before.is_some());
        let mut out = format!(
            "Measured {} on {} ({} CPUs, {} MiB, Linux {}).\n\n",
            self.date, m.cpu, m.cpus, m.memory_mib, m.kernel
        );
        if let Some(b) = &self.baseline_binary {
            out.push_str(&format!(
                "Plexus: `{}`; baseline binary (\"before\"): `{b}`.\n\n",
                self.binary
            ));
        }
        if with_before {
            out.push_str("| metric | Plexus | baseline | baseline value | ratio | target | before | Plexus / before |\n|---|---:|---|---:|---:|---|---:|---:|\n");
        } else {
            out.push_str("| metric | Plexus | baseline | baseline value | ratio | target |\n|---|---:|---|---:|---:|---|\n");
        }
        for r in &self.rows {
            let target = match &r.target {
                Some((t, true)) => format!("{t} ✅"),
                Some((t, false)) => format!("{t} ❌"),
                None => String::new(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2}× | {} |",
                r.metric,
                fmt(r.plexus),
                r.baseline,
                fmt(r.baseline_value),
                r.ratio,
                target
            ));
            if with_before {
                match r.before {
                    Some(b) if b != 0.0 => {
                        out.push_str(&format!(" {} | {:.2}× |", fmt(b), r.plexus / b));
                    }
                    Some(b) => out.push_str(&format!(" {} | — |", fmt(b))),
                    None => out.push_str(" | |"),
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: Vec<Row>, baseline: Option<&str>) -> Report {
        Report {
            date: "2026-01-01T00:00:00Z".into(),
            machine: Machine {
                cpu: "cpu".into(),
                cpus: 2,
                memory_mib: 1024,
                kernel: "6".into(),
            },
            rows,
            binary: "target/release/plexus".into(),
            baseline_binary: baseline.map(str::to_owned),
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn the_before_columns_appear_only_with_a_baseline_binary() {
        let row =
            Row::new("fanout: delivered/s", 200.0, "nats", 100.0, true).target("≥ 1.0× NATS", true);
        let plain = report(vec![row.clone()], None).markdown();
        assert!(
            plain.contains("| fanout: delivered/s | 200 | nats | 100 | 2.00× | ≥ 1.0× NATS ✅ |\n"),
            "{plain}"
        );
        assert!(!plain.contains("before"), "{plain}");
        let md = report(
            vec![row.before(Some(160.0)), Row::new("x", 1.0, "y", 2.0, false)],
            Some("/old/plexus"),
        )
        .markdown();
        assert!(
            md.contains("baseline binary (\"before\"): `/old/plexus`"),
            "{md}"
        );
        assert!(
            md.contains("| 2.00× | ≥ 1.0× NATS ✅ | 160 | 1.25× |\n"),
            "{md}"
        );
        assert!(
            md.contains("| x | 1.00 | y | 2.00 | 0.50× |  | | |\n"),
            "{md}"
        );
    }
}
