//! Log output of the `plexus` binary.
//!
//! - tungstenite's per-frame trace output, which would print every frame
//!   in hex (tokens included), is filtered out unless
//!   [`WIRE_LOG_ENV`]`=1` (decision H7), whatever `RUST_LOG` says.
//! - ANSI colour is used only when the log stream is a terminal and
//!   `NO_COLOR` is not set (decision H8), so a log file holds plain text.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

/// Set to `1` to see the WebSocket layer's per-frame logs. They include
/// frame payloads, tokens among them: for debugging on a test setup only.
pub const WIRE_LOG_ENV: &str = "PLEXUS_LOG_WIRE";

/// The targets of the WebSocket layer's own logs.
pub const WIRE_TARGETS: [&str; 2] = ["tungstenite", "tokio_tungstenite"];

/// The filter for `rust_log` (`RUST_LOG`, default `info`), with the wire
/// targets turned off unless `wire`.
pub fn filter(rust_log: Option<&str>, wire: bool) -> EnvFilter {
    let mut f = rust_log
        .and_then(|s| EnvFilter::try_new(s).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    if !wire {
        for target in WIRE_TARGETS {
            if let Ok(d) = format!("{target}=off").parse::<Directive>() {
                f = f.add_directive(d);
            }
        }
    }
    f
}

/// Whether to colour the output: only on a terminal, and not with
/// `NO_COLOR` set to anything non-empty.
pub fn use_colour(is_terminal: bool, no_color: Option<&str>) -> bool {
    is_terminal && no_color.is_none_or(str::is_empty)
}

/// Installs the subscriber for the binary (logs on standard output).
pub fn init() {
    use std::io::IsTerminal;
    let rust_log = std::env::var("RUST_LOG").ok();
    let wire = std::env::var(WIRE_LOG_ENV).is_ok_and(|v| v == "1");
    let no_color = std::env::var("NO_COLOR").ok();
    tracing_subscriber::fmt()
        .with_env_filter(filter(rust_log.as_deref(), wire))
        .with_ansi(use_colour(
            std::io::stdout().is_terminal(),
            no_color.as_deref(),
        ))
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_logs_are_off_even_at_trace_unless_asked_for() {
        let f = filter(Some("trace"), false).to_string();
        assert!(
            f.contains("tungstenite=off") && f.contains("tokio_tungstenite=off"),
            "{f}"
        );
        let f = filter(Some("tungstenite=trace"), false).to_string();
        assert!(f.contains("tungstenite=off"), "{f}");
        let f = filter(Some("trace"), true).to_string();
        assert!(!f.contains("=off"), "{f}");
        assert!(filter(None, false).to_string().contains("info"));
        assert!(
            filter(Some("not a [valid filter"), false)
                .to_string()
                .contains("info")
        );
    }

    #[test]
    fn the_wire_targets_are_disabled_in_effect() {
        use tracing_subscriber::layer::SubscriberExt;
        let enabled = |rust_log: &str, wire: bool| {
            let sub = tracing_subscriber::registry().with(filter(Some(rust_log), wire));
            tracing::subscriber::with_default(sub, || {
                (
                    tracing::enabled!(target: "tungstenite::protocol", tracing::Level::TRACE),
                    tracing::enabled!(target: "plexus_server::session", tracing::Level::TRACE),
                )
            })
        };
        assert_eq!(enabled("trace", false), (false, true));
        assert_eq!(enabled("tungstenite=trace,trace", false), (false, true));
        assert_eq!(enabled("trace", true), (true, true));
    }

    #[test]
    fn colour_only_on_a_terminal() {
        assert!(use_colour(true, None));
        assert!(use_colour(true, Some("")));
        assert!(!use_colour(true, Some("1")));
        assert!(!use_colour(false, None));
    }
}
