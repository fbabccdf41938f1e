//! What can go wrong in a client command, and the one place that turns an
//! SDK error into a message and an exit code.

use std::process::ExitCode;

use plexus_protocol::{ErrorCode, WireError};

/// Exit status: the hub answered an error, or something else failed.
pub(crate) const EXIT_FAILURE: u8 = 1;
/// Exit status: bad arguments or input, or no token (clap uses 2 as well).
pub(crate) const EXIT_USAGE: u8 = 2;
/// Exit status: the hub could not be reached, refused the token, or the
/// connection was lost or timed out.
pub(crate) const EXIT_CONNECTION: u8 = 3;

/// Why a client command failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// Arguments or input that cannot be used (exit 2).
    #[error("{0}")]
    Usage(String),
    /// No `--token`, and none can be minted (exit 2).
    #[error("{0}")]
    NoToken(String),
    /// The first connection failed (exit 3).
    #[error("cannot connect to {url}: {reason}")]
    Connect {
        /// The URL that failed.
        url: String,
        /// What failed, with its causes.
        reason: String,
    },
    /// The hub answered with an error (exit 1). Printed as `code: message`.
    #[error("{0}")]
    Remote(WireError),
    /// The connection broke, closed or stayed silent after it was made
    /// (exit 3).
    #[error("{0}")]
    Connection(String),
    /// Standard output was closed by its reader (`| head`): the command
    /// stops quietly (exit 0).
    #[error("standard output closed")]
    StdoutClosed,
    /// Anything else (exit 1): local I/O, an answer that does not decode.
    #[error("{0}")]
    Other(String),
}

impl CliError {
    /// The process exit status for this error.
    pub(crate) fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Usage(_) | CliError::NoToken(_) => EXIT_USAGE,
            CliError::Connect { .. } | CliError::Connection(_) => EXIT_CONNECTION,
            CliError::StdoutClosed => 0,
            CliError::Remote(_) | CliError::Other(_) => EXIT_FAILURE,
        })
    }

    /// Prints the error to standard error (nothing for a closed stdout).
    pub(crate) fn print(&self) {
        if !matches!(self, CliError::StdoutClosed) {
            eprintln!("plexus: {self}");
        }
    }

    /// The first connection to `url` failed.
    pub(crate) fn connect(url: &str, e: &plexus_client::Error) -> CliError {
        CliError::Connect {
            url: url.to_owned(),
            reason: e.report(),
        }
    }
}

/// The one mapping of SDK errors: hub answers keep their code (printed
/// first, so scripts can match it), connection trouble is exit 3.
impl From<plexus_client::Error> for CliError {
    fn from(e: plexus_client::Error) -> CliError {
        use plexus_client::Error as E;
        match e {
            E::Remote(w) => CliError::Remote(w),
            E::Conflict { message, .. } => {
                CliError::Remote(WireError::new(ErrorCode::Conflict, message))
            }
            E::SyncConflict { records } => CliError::Remote(WireError::new(
                ErrorCode::Conflict,
                format!("sync conflict on {} record(s)", records.len()),
            )),
            e @ (E::Timeout
            | E::ConnectionLost
            | E::Closed(_)
            | E::Auth(_)
            | E::Connect { .. }
            | E::TokenProvider { .. }
            | E::QueueFull { .. }) => CliError::Connection(e.report()),
            other => CliError::Other(other.report()),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            CliError::StdoutClosed
        } else {
            CliError::Other(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_errors_keep_their_code_and_connection_trouble_is_exit_3() {
        let e = CliError::from(plexus_client::Error::Remote(WireError::new(
            ErrorCode::MethodNotFound,
            "unknown method x",
        )));
        assert_eq!(e.to_string(), "method_not_found: unknown method x");
        assert_eq!(e.exit_code(), ExitCode::from(EXIT_FAILURE));
        let e = CliError::from(plexus_client::Error::ConnectionLost);
        assert_eq!(e.exit_code(), ExitCode::from(EXIT_CONNECTION));
        let e = CliError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert_eq!(e.exit_code(), ExitCode::SUCCESS);
    }
}
