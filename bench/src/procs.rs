//! Processes under test: the Plexus hub and the echo floor, each in its own
//! process so the load generator never shares their runtime or their RSS.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub use crate::rss::rss_kib;

/// Why a process under test could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    /// Spawning or talking to it failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// It did not print its address in time.
    #[error("{0} did not report its address")]
    NoAddress(String),
}

/// The HMAC secret the bench hub is started with (bench only).
pub const BENCH_SECRET: &str = "plexus-bench-secret-0123456789abcdef-not-for-production";

/// Finds a binary built next to this one (`target/release/NAME`), or in
/// `PLEXUS_BENCH_BIN_DIR`.
pub fn binary(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("PLEXUS_BENCH_BIN_DIR") {
        return PathBuf::from(dir).join(name);
    }
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(name)))
        .unwrap_or_else(|| PathBuf::from(name))
}

async fn read_addr(child: &mut Child, name: &str, marker: &str) -> Result<SocketAddr, ProcError> {
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| ProcError::NoAddress(name.into()))?;
    let mut lines = BufReader::new(stdout).lines();
    let find = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.split(marker).nth(1) {
                let addr = rest.split(['/', ' ']).next().unwrap_or("");
                if let Ok(a) = addr.parse() {
                    return Some((a, lines));
                }
            }
        }
        None
    };
    match tokio::time::timeout(Duration::from_secs(30), find).await {
        Ok(Some((addr, mut lines))) => {
            // Keep draining stdout so the child never blocks on a full pipe.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            Ok(addr)
        }
        _ => Err(ProcError::NoAddress(name.into())),
    }
}

/// A `plexus` binary under test, with the flags its `serve --help` lists
/// (so a scenario passes a newer flag only to a hub that accepts it).
#[derive(Debug, Clone)]
pub struct HubBinary {
    /// The executable.
    pub path: PathBuf,
    /// What reports call it (`plexus`, `baseline`).
    pub label: String,
    help: String,
}

impl HubBinary {
    /// The `plexus` built next to this load generator (see [`binary`]).
    pub fn current() -> Result<HubBinary, ProcError> {
        HubBinary::probe(binary("plexus"), "plexus")
    }

    /// Runs `PATH serve --help` once to learn the flags it accepts.
    pub fn probe(path: PathBuf, label: &str) -> Result<HubBinary, ProcError> {
        let out = std::process::Command::new(&path)
            .args(["serve", "--help"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| ProcError::Io {
                what: format!(
                    "running {} serve --help (build it with `cargo build --release -p plexus-server`)",
                    path.display()
                ),
                source,
            })?;
        let help = String::from_utf8_lossy(&out.stdout).into_owned();
        if !help.contains("--listen") {
            return Err(ProcError::Io {
                what: format!(
                    "{} serve --help lists no --listen: not a plexus hub",
                    path.display()
                ),
                source: std::io::Error::other("unexpected help output"),
            });
        }
        Ok(HubBinary {
            path,
            label: label.to_owned(),
            help,
        })
    }

    /// Whether `serve` accepts `flag` (e.g. `--listen-backlog`).
    pub fn accepts(&self, flag: &str) -> bool {
        self.help.match_indices(flag).any(|(at, _)| {
            let next = self.help[at + flag.len()..].chars().next();
            !matches!(next, Some(c) if c.is_ascii_alphanumeric() || c == '-')
        })
    }

    /// `[flag, value]` if this hub accepts `flag`, else nothing.
    pub fn arg_if_accepted(&self, flag: &str, value: impl ToString) -> Vec<String> {
        if self.accepts(flag) {
            vec![flag.to_owned(), value.to_string()]
        } else {
            Vec::new()
        }
    }

    /// Starts this hub with bench-friendly limits (no rate limit, no
    /// per-user cap; every other setting at the hub's own default) plus
    /// `extra` flags.
    pub async fn start(&self, extra: &[String]) -> Result<HubProcess, ProcError> {
        self.start_on("127.0.0.1:0", extra).await
    }

    /// [`start`](Self::start), listening on `listen` (e.g. `127.0.0.2:0`
    /// for the second node of a cluster).
    pub async fn start_on(&self, listen: &str, extra: &[String]) -> Result<HubProcess, ProcError> {
        let dir = tempfile::tempdir().map_err(|source| ProcError::Io {
            what: "tempdir".into(),
            source,
        })?;
        let mut cmd = Command::new(&self.path);
        cmd.args(["serve", "--listen", listen, "--jwt-secret", BENCH_SECRET])
            .args(["--rate-per-sec", "100000000", "--rate-burst", "100000000"])
            .args(["--max-connections-per-user", "1000000"])
            .arg("--data-dir")
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| ProcError::Io {
            what: format!("spawning {}", self.path.display()),
            source,
        })?;
        let addr = read_addr(&mut child, "plexus", "ws://").await?;
        Ok(HubProcess {
            child,
            addr,
            _dir: dir,
        })
    }
}

/// A running `plexus` hub.
#[derive(Debug)]
pub struct HubProcess {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    /// Starts the `plexus` built next to this load generator (see
    /// [`HubBinary::start`]).
    pub async fn start(extra: &[String]) -> Result<HubProcess, ProcError> {
        HubBinary::current()?.start(extra).await
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    /// The hub's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The hub's resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.child.id()?)
    }
}

/// A token for the bench hub, allowed everything for an hour.
pub fn token(sub: &str) -> String {
    token_with(
        sub,
        serde_json::json!({ "sub": [">"], "pub": [">"], "presence": true }),
    )
}

/// A bench token that may also register and call every procedure (routed
/// RPC, issue 12).
pub fn rpc_token(sub: &str) -> String {
    token_with(
        sub,
        serde_json::json!({ "sub": [">"], "pub": [">"], "rpc_register": [">"], "rpc_call": [">"] }),
    )
}

/// A token for the bench hub with these capabilities (the `plexus`
/// claim), valid for an hour.
pub fn token_with(sub: &str, plexus: serde_json::Value) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let claims = serde_json::json!({ "sub": sub, "exp": exp, "plexus": plexus });
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(BENCH_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// The echo floor in its own process (`plexus-bench echo-server`).
#[derive(Debug)]
pub struct EchoProcess {
    _child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl EchoProcess {
    /// Starts `plexus-bench echo-server` from the same build.
    pub async fn start() -> Result<EchoProcess, ProcError> {
        let bin = binary("plexus-bench");
        let mut child = Command::new(&bin)
            .arg("echo-server")
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcError::Io {
                what: format!("spawning {}", bin.display()),
                source,
            })?;
        let addr = read_addr(&mut child, "echo-server", "ws://").await?;
        Ok(EchoProcess {
            _child: child,
            addr,
        })
    }

    /// The WebSocket URL.
    pub fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_is_accepted_only_when_listed_whole() {
        let hub = HubBinary {
            path: PathBuf::from("plexus"),
            label: "plexus".into(),
            help: "      --listen <LISTEN>\n      --listen-backlog <N>\n      --max-in-flight-bytes <B>\n".into(),
        };
        assert!(hub.accepts("--listen"));
        assert!(hub.accepts("--listen-backlog"));
        assert!(!hub.accepts("--max-in-flight"));
        assert!(!hub.accepts("--listen-back"));
        assert_eq!(
            hub.arg_if_accepted("--listen-backlog", 4096),
            ["--listen-backlog", "4096"]
        );
        assert!(hub.arg_if_accepted("--close-linger", "2s").is_empty());
    }
}
