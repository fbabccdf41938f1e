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
        }
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
    /// The markdown table.
    pub fn markdown(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "Measured {} on {} ({} CPUs, {} MiB, Linux {}).\n\n| metric | Plexus | baseline | baseline value | ratio | target |\n|---|---:|---|---:|---:|---|\n",
            self.date, m.cpu, m.cpus, m.memory_mib, m.kernel
        );
        for r in &self.rows {
            let target = match &r.target {
                Some((t, true)) => format!("{t} ✅"),
                Some((t, false)) => format!("{t} ❌"),
                None => String::new(),
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} | {:.2}× | {} |\n",
                r.metric,
                fmt(r.plexus),
                r.baseline,
                fmt(r.baseline_value),
                r.ratio,
                target
            ));
        }
        out
    }
}
