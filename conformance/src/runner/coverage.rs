//! Which sections of `docs/protocol.md` the cases cover, and why the
//! others have none.

use super::Case;

/// A section of `docs/protocol.md`.
#[derive(Debug, Clone, Copy)]
pub struct Section {
    /// Its number, e.g. `9.2`.
    pub id: &'static str,
    /// Its title.
    pub title: &'static str,
    /// Why a server-side case cannot or need not check it, when none does.
    pub why_none: Option<&'static str>,
}

const fn s(id: &'static str, title: &'static str) -> Section {
    Section {
        id,
        title,
        why_none: None,
    }
}

const fn gap(id: &'static str, title: &'static str, why: &'static str) -> Section {
    Section {
        id,
        title,
        why_none: Some(why),
    }
}

/// Every section, in document order.
pub const SECTIONS: &[Section] = &[
    gap("1", "Conventions", "definitions only"),
    s("2", "Overview and design rationale"),
    s("3.1", "WebSocket endpoint"),
    s("3.2", "Messages"),
    s("4.1", "One well-formed item, nothing after it"),
    s("4.2", "Definite lengths only"),
    s("4.3", "Valid UTF-8"),
    s("4.4", "Nesting depth"),
    s("4.5", "Serialization"),
    s("4.6", "Size"),
    gap(
        "4.7",
        "Tags, floats and simple values",
        "checked through vectors of other sections (tagged typed fields, tags in ping params)",
    ),
    s("4.8", "Typed maps"),
    s("5.1", "Frame kinds"),
    s("5.2", "Request (kind 0)"),
    s("5.3", "Response (kind 1)"),
    gap(
        "5.4",
        "Notification (kind 2)",
        "the notification layout is checked on every server frame the runner decodes",
    ),
    s("5.5", "Chunk (kind 3)"),
    s("5.6", "Receiving a frame"),
    s("6.1", "Ids"),
    s("6.2", "Concurrency and ordering"),
    s("6.3", "Terminal frames and connection loss"),
    s("7.1", "Sequence rules"),
    s("7.2", "Streamed results"),
    gap(
        "7.3",
        "Uploads",
        "no v1 method accepts an upload (a broken upload's invalid_frame cannot be provoked)",
    ),
    s("7.4", "Chunks for unknown ids"),
    s("8", "Cancellation"),
    gap("9.1", "Lifecycle", "a summary of 9.2-9.7"),
    s("9.2", "The auth request"),
    s("9.3", "Tokens"),
    s("9.4", "Token expiry and refresh"),
    s("9.5", "Client instances"),
    s("9.6", "Session state"),
    s("9.7", "Per-user connection limit"),
    s("10", "Announced limits"),
    s("11.0", "Catalog and common rules"),
    s("11.1", "auth"),
    s("11.2", "auth.refresh"),
    s("11.3", "ping"),
    s("11.4", "subscribe"),
    s("11.5", "unsubscribe"),
    s("11.6", "publish"),
    s("11.7", "presence.get"),
    s("11.8", "presence.set"),
    s("12.1", "event"),
    s("12.2", "presence.join"),
    s("12.3", "presence.leave"),
    s("12.4", "Presence ordering"),
    s("12.5", "token.expiring"),
    s("12.6", "closing"),
    s("12.7", "Unknown notifications and stray frames"),
    s("13.1", "Topic syntax"),
    s("13.2", "Topic examples"),
    s("13.3", "Matching"),
    s("13.4", "Covering (capability checks)"),
    s("14.1", "The error object"),
    s("14.2", "Error codes"),
    s("15.1", "Close codes"),
    s("15.2", "Closes by the client"),
    s("15.3", "Decode failures"),
    gap(
        "15.4",
        "Reconnecting",
        "client behaviour; the scripted faulty server (conformance/scripts/) exercises it for SDKs",
    ),
    s("16", "Keepalive"),
    s("17", "Rate limiting"),
    s("18", "Slow consumers"),
    s("19", "Graceful shutdown"),
    s("20", "Versioning and extensibility"),
    s("21", "Security considerations"),
    gap("22", "References", "no requirements"),
    s("23.1", "Durable topics and namespaces"),
    s("23.2", "Epochs, offsets and positions"),
    s("23.3", "Durable publish"),
    s("23.4", "Events of durable topics"),
    s("23.5", "subscribe on durable topics"),
    s("23.6", "Resume: subscribe with since"),
    s("23.7", "history"),
    s("23.8", "history.latest"),
    s("23.9", "Durable-only keys elsewhere"),
    gap(
        "23.10",
        "Client rules for durable streams",
        "client behaviour; the SDK's own tests check it",
    ),
    s("24.1", "Spaces and capabilities"),
    s("24.2", "Records, versions and stamps"),
    s("24.3", "Hybrid logical clock values"),
    s("24.4", "Positions, cursors, epochs and the horizon"),
    s("24.5", "sync.push"),
    s("24.6", "sync.pull"),
    s("24.7", "sync.info"),
    s("24.8", "Checksums"),
    s("24.9", "Errors of record sync"),
    gap(
        "24.10",
        "Client rules for record sync",
        "client behaviour; the SDK's own tests check it",
    ),
    s("25.1", "Procedures, registrations and capabilities"),
    s("25.2", "Shared registrations and policies"),
    s("25.3", "rpc.register"),
    s("25.4", "rpc.unregister"),
    s("25.5", "rpc.call"),
    s("25.6", "rpc.invoke (server to callee)"),
    s("25.7", "Credit: rpc.credit (server to callee)"),
    s("25.8", "rpc.list"),
    s("25.9", "Errors of routed RPC"),
    gap(
        "25.10",
        "Client rules for routed RPC",
        "client behaviour; the SDK's own tests will check it",
    ),
];

/// Cases per section: (section, ids of the cases citing it).
pub fn map(cases: &[Case]) -> Vec<(Section, Vec<&str>)> {
    SECTIONS
        .iter()
        .map(|sec| {
            let ids = cases
                .iter()
                .filter(|c| {
                    c.sections().any(|s| {
                        s == sec.id || s.strip_prefix(sec.id).is_some_and(|r| r.starts_with('.'))
                    })
                })
                .map(|c| c.id.as_str())
                .collect();
            (*sec, ids)
        })
        .collect()
}

/// The coverage report: every section with its case count, then the
/// sections without a case and why, then decisions cited.
pub fn report(cases: &[Case], markdown: bool) -> String {
    let m = map(cases);
    let mut out = String::new();
    if markdown {
        out.push_str("| section | title | cases |\n|---|---|---|\n");
        for (sec, ids) in &m {
            let n = if ids.is_empty() {
                format!("none: {}", sec.why_none.unwrap_or("**gap**"))
            } else {
                ids.len().to_string()
            };
            out.push_str(&format!("| §{} | {} | {n} |\n", sec.id, sec.title));
        }
    } else {
        for (sec, ids) in &m {
            let n = if ids.is_empty() {
                format!(
                    "none — {}",
                    sec.why_none.unwrap_or("GAP: no case checks it")
                )
            } else {
                format!("{} cases", ids.len())
            };
            out.push_str(&format!("§{:<5} {:<42} {n}\n", sec.id, sec.title));
        }
    }
    let mut decisions: Vec<&str> = cases
        .iter()
        .flat_map(Case::sections)
        .filter(|s| s.starts_with('P') || s.starts_with('H'))
        .collect();
    decisions.sort_by_key(|d| (d.chars().next(), d[1..].parse::<u32>().unwrap_or(0)));
    decisions.dedup();
    out.push_str(&format!("\ndecisions cited: {}\n", decisions.join(", ")));
    let gaps: Vec<&str> = m
        .iter()
        .filter(|(s, ids)| ids.is_empty() && s.why_none.is_none())
        .map(|(s, _)| s.id)
        .collect();
    if !gaps.is_empty() {
        out.push_str(&format!(
            "sections with no case and no reason: {}\n",
            gaps.join(", ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_is_covered_or_explained() {
        let cases = crate::suite::all(std::path::Path::new(crate::vectors::VECTORS_DIR));
        for (sec, ids) in map(&cases) {
            assert!(
                !ids.is_empty() || sec.why_none.is_some(),
                "§{} {} has no case and no reason",
                sec.id,
                sec.title
            );
        }
        let known: Vec<&str> = SECTIONS.iter().map(|s| s.id).collect();
        for c in &cases {
            for s in c.sections() {
                assert!(
                    s.starts_with('P')
                        || s.starts_with('H')
                        || known
                            .iter()
                            .any(|k| *k == s || s.starts_with(&format!("{k}."))),
                    "{} cites unknown section {s}",
                    c.id
                );
            }
        }
    }
}
