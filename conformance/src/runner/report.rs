//! Rendering results: the table people read, JSON and JUnit XML for
//! machines, and the live progress line.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use super::{Case, CaseReport, Outcome, Progress};

/// Counts of each outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Passed.
    pub pass: usize,
    /// Failed.
    pub fail: usize,
    /// Skipped.
    pub skip: usize,
}

impl Summary {
    /// Counts `reports`.
    pub fn of(reports: &[CaseReport]) -> Summary {
        let mut s = Summary::default();
        for r in reports {
            match r.outcome {
                Outcome::Pass => s.pass += 1,
                Outcome::Fail(_) => s.fail += 1,
                Outcome::Skip(_) => s.skip += 1,
            }
        }
        s
    }
}

const GREEN: &str = "\x1b[32m";
const RED: &str = "\x1b[31m";
const YELLOW: &str = "\x1b[33m";
const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const RESET: &str = "\x1b[0m";

fn paint(color: bool, code: &str, s: &str) -> String {
    if color {
        format!("{code}{s}{RESET}")
    } else {
        s.to_owned()
    }
}

fn ms(d: Duration) -> String {
    if d >= Duration::from_secs(10) {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Sections as people cite them: `§9.2, §15.1, P11` (decisions without
/// the section sign).
pub fn cite(sections: &str) -> String {
    sections
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            if s.starts_with(|c: char| c.is_ascii_digit()) {
                format!("§{s}")
            } else {
                s.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The result table: id, group, result, time, section, detail (failures
/// and skips), then a summary line.
pub fn table(reports: &[CaseReport], elapsed: Duration, color: bool) -> String {
    let idw = reports
        .iter()
        .map(|r| r.id.len())
        .max()
        .unwrap_or(2)
        .clamp(2, 60);
    let gw = reports
        .iter()
        .map(|r| r.group.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let sw = reports
        .iter()
        .map(|r| cite(&r.section).chars().count())
        .max()
        .unwrap_or(7)
        .clamp(7, 24);
    let mut out = String::new();
    let header = format!(
        "{:<idw$}  {:<gw$}  {:<6}  {:>7}  {:<sw$}  detail",
        "id", "group", "result", "time", "section"
    );
    out.push_str(&paint(color, BOLD, &header));
    out.push('\n');
    for r in reports {
        let (label, code) = match r.outcome {
            Outcome::Pass => ("pass", GREEN),
            Outcome::Fail(_) => ("FAIL", RED),
            Outcome::Skip(_) => ("skip", YELLOW),
        };
        let result = paint(color, code, &format!("{label:<6}"));
        let detail = match &r.outcome {
            Outcome::Pass => String::new(),
            Outcome::Fail(s) => s.clone(),
            Outcome::Skip(s) => paint(color, DIM, s),
        };
        out.push_str(&format!(
            "{:<idw$}  {:<gw$}  {result}  {:>7}  {:<sw$}  {detail}\n",
            r.id,
            r.group,
            ms(r.elapsed),
            cite(&r.section),
        ));
    }
    let s = Summary::of(reports);
    let line = format!(
        "{} cases: {} passed, {} failed, {} skipped in {:.1}s",
        reports.len(),
        s.pass,
        s.fail,
        s.skip,
        elapsed.as_secs_f64()
    );
    out.push_str(&paint(color, if s.fail > 0 { RED } else { GREEN }, &line));
    out.push('\n');
    out
}

/// The JSON report.
pub fn json(reports: &[CaseReport], url: &str, elapsed: Duration) -> String {
    let s = Summary::of(reports);
    let cases: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.id,
                "group": r.group,
                "section": r.section,
                "title": r.title,
                "result": r.outcome.label(),
                "time_ms": u64::try_from(r.elapsed.as_millis()).unwrap_or(u64::MAX),
                "detail": r.outcome.detail(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "tool": "plexus-conformance",
        "version": env!("CARGO_PKG_VERSION"),
        "url": url,
        "duration_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        "summary": {"total": reports.len(), "pass": s.pass, "fail": s.fail, "skip": s.skip},
        "cases": cases,
    });
    serde_json::to_string_pretty(&doc).unwrap_or_default()
}

fn xml_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            // XML 1.0 has no way to carry other control characters.
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => o.push('?'),
            c => o.push(c),
        }
    }
    o
}

/// The JUnit XML report: one `testsuite` per group.
pub fn junit(reports: &[CaseReport], elapsed: Duration) -> String {
    let s = Summary::of(reports);
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"plexus-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">\n",
        reports.len(),
        s.fail,
        s.skip,
        elapsed.as_secs_f64()
    ));
    let mut groups: Vec<&str> = reports.iter().map(|r| r.group.as_str()).collect();
    groups.dedup();
    groups.sort_unstable();
    groups.dedup();
    for g in groups {
        let rs: Vec<&CaseReport> = reports.iter().filter(|r| r.group == g).collect();
        let gs = Summary::of(&rs.iter().map(|r| (*r).clone()).collect::<Vec<_>>());
        let t: f64 = rs.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        out.push_str(&format!(
            "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{t:.3}\">\n",
            xml_escape(g),
            rs.len(),
            gs.fail,
            gs.skip
        ));
        for r in rs {
            out.push_str(&format!(
                "    <testcase classname=\"plexus.{}\" name=\"{}\" time=\"{:.3}\">",
                xml_escape(&r.group),
                xml_escape(&r.id),
                r.elapsed.as_secs_f64()
            ));
            match &r.outcome {
                Outcome::Pass => {}
                Outcome::Fail(d) => out.push_str(&format!(
                    "<failure message=\"{}: {}\">{}</failure>",
                    xml_escape(&cite(&r.section)),
                    xml_escape(d),
                    xml_escape(&r.title)
                )),
                Outcome::Skip(d) => {
                    out.push_str(&format!("<skipped message=\"{}\"/>", xml_escape(d)))
                }
            }
            out.push_str("</testcase>\n");
        }
        out.push_str("  </testsuite>\n");
    }
    out.push_str("</testsuites>\n");
    out
}

/// The case list: plain text, or a Markdown table for docs.
pub fn list(cases: &[Case], markdown: bool) -> String {
    let mut out = String::new();
    if markdown {
        out.push_str("| id | section | checks |\n|---|---|---|\n");
        for c in cases {
            out.push_str(&format!(
                "| `{}` | {} | {} |\n",
                c.id,
                cite(&c.section),
                c.title.replace('|', "\\|")
            ));
        }
    } else {
        let w = cases.iter().map(|c| c.id.len()).max().unwrap_or(2);
        for c in cases {
            out.push_str(&format!(
                "{:<w$}  {:<16}  {}\n",
                c.id,
                cite(&c.section),
                c.title
            ));
        }
    }
    out
}

/// A live progress line on a terminal (stderr), rewritten in place.
#[derive(Debug)]
pub struct Line {
    color: bool,
    state: Mutex<(usize, usize)>,
}

impl Line {
    /// A progress line; `color` also means "stderr is a terminal".
    pub fn new(color: bool) -> Line {
        Line {
            color,
            state: Mutex::new((0, 0)),
        }
    }

    /// Clears the line (before the table is printed).
    pub fn clear(&self) {
        let mut e = std::io::stderr().lock();
        let _ = write!(e, "\r\x1b[2K");
        let _ = e.flush();
    }
}

impl Progress for Line {
    fn finished(&self, report: &CaseReport, done: usize, total: usize) {
        let mut st = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(report.outcome, Outcome::Fail(_)) {
            st.1 += 1;
        }
        let failed = st.1;
        st.0 = done;
        let mut e = std::io::stderr().lock();
        let fails = if failed > 0 {
            paint(self.color, RED, &format!(" {failed} failed"))
        } else {
            String::new()
        };
        let id: String = report.id.chars().take(60).collect();
        let _ = write!(e, "\r\x1b[2K[{done:>4}/{total}]{fails}  {id}");
        let _ = e.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rep(id: &str, outcome: Outcome) -> CaseReport {
        CaseReport {
            id: id.into(),
            group: id.split('.').next().unwrap_or("").into(),
            section: "9.2".into(),
            title: "t".into(),
            outcome,
            elapsed: Duration::from_millis(12),
        }
    }

    #[test]
    fn junit_escapes_and_counts() {
        let rs = vec![
            rep("a.one", Outcome::Pass),
            rep("a.two", Outcome::Fail("got <1> & \"2\"".into())),
            rep("b.three", Outcome::Skip("needs x".into())),
        ];
        let x = junit(&rs, Duration::from_secs(1));
        assert!(x.contains("tests=\"3\" failures=\"1\" skipped=\"1\""));
        assert!(x.contains("got &lt;1&gt; &amp; &quot;2&quot;"));
        assert!(x.contains("<testsuite name=\"b\""));
        let t = table(&rs, Duration::from_secs(1), false);
        assert!(t.contains("FAIL") && !t.contains('\x1b'));
        let j: serde_json::Value =
            serde_json::from_str(&json(&rs, "ws://x", Duration::ZERO)).unwrap();
        assert_eq!(j["summary"]["fail"], 1);
    }
}
