//! Where the runner gets its tokens: it signs them itself with an HS256
//! secret, or asks a command to sign claims it chose.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value as Json;
use tokio::io::AsyncReadExt;

use crate::jwt::{self, HsAlg};

/// How long a `--token-cmd` may take per token.
pub const TOKEN_CMD_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest token read from a command's output, in bytes.
const MAX_TOKEN_OUTPUT: u64 = 64 * 1024;

/// A way to get a signed token for given claims.
#[derive(Clone)]
pub enum TokenSource {
    /// Sign with HMAC-SHA256 and this secret.
    Hs256 {
        /// The secret.
        key: Vec<u8>,
    },
    /// Run `sh -c` on this template after replacing `{sub}` and
    /// `{claims_json}` with shell-quoted values; its standard output
    /// (trimmed) is the token.
    Command {
        /// The command template.
        template: String,
    },
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSource::Hs256 { .. } => f.write_str("TokenSource::Hs256(<secret>)"),
            TokenSource::Command { template } => write!(f, "TokenSource::Command({template:?})"),
        }
    }
}

impl TokenSource {
    /// A token carrying exactly `claims`.
    pub async fn sign(&self, claims: &Json) -> Result<String, String> {
        match self {
            TokenSource::Hs256 { key } => Ok(jwt::sign(claims, HsAlg::HS256, key)),
            TokenSource::Command { template } => run_command(template, claims).await,
        }
    }

    /// The HMAC secret, when the runner signs its own tokens (needed for
    /// the cases that sign with another algorithm).
    pub fn secret(&self) -> Option<&[u8]> {
        match self {
            TokenSource::Hs256 { key } => Some(key),
            TokenSource::Command { .. } => None,
        }
    }
}

/// Quotes `s` for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

async fn run_command(template: &str, claims: &Json) -> Result<String, String> {
    let sub = claims.get("sub").and_then(Json::as_str).unwrap_or("");
    let cmd = template
        .replace("{sub}", &shell_quote(sub))
        .replace("{claims_json}", &shell_quote(&claims.to_string()));
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("--token-cmd: cannot start sh: {e}"))?;
    let mut out = String::new();
    let mut err = String::new();
    let (Some(stdout), Some(stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err("--token-cmd: no output pipes".into());
    };
    let work = async {
        let mut o = stdout.take(MAX_TOKEN_OUTPUT);
        let mut e = stderr.take(MAX_TOKEN_OUTPUT);
        let (a, b) = tokio::join!(o.read_to_string(&mut out), e.read_to_string(&mut err));
        a.and(b).map_err(|e| e.to_string())?;
        child.wait().await.map_err(|e| e.to_string())
    };
    let status = tokio::time::timeout(TOKEN_CMD_TIMEOUT, work)
        .await
        .map_err(|_| format!("--token-cmd took longer than {TOKEN_CMD_TIMEOUT:?}"))??;
    if !status.success() {
        return Err(format!(
            "--token-cmd exited with {status}: {}",
            err.trim().chars().take(300).collect::<String>()
        ));
    }
    let token = out.trim().to_owned();
    if token.is_empty() {
        return Err("--token-cmd printed no token".into());
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }

    #[tokio::test]
    async fn a_command_gets_the_claims() {
        let src = TokenSource::Command {
            template: "printf '%s|%s' {sub} {claims_json}".into(),
        };
        let t = src
            .sign(&serde_json::json!({"sub": "o'neil"}))
            .await
            .unwrap();
        assert_eq!(t, "o'neil|{\"sub\":\"o'neil\"}");
        let bad = TokenSource::Command {
            template: "exit 3".into(),
        };
        assert!(bad.sign(&serde_json::json!({})).await.is_err());
    }
}
