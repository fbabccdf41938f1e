//! A `nats-server` process on loopback ports, with a WebSocket listener.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::procs::ProcError;

/// How long the server may take to accept WebSocket connections.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `nats-server` is: `PLEXUS_BENCH_NATS_SERVER`, else the first
/// `nats-server` on `PATH`, else `/usr/sbin/nats-server` (Debian's
/// package) or `/usr/local/bin/nats-server`.
pub fn nats_server_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PLEXUS_BENCH_NATS_SERVER") {
        return Some(PathBuf::from(p));
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join("nats-server"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(
            [
                "/usr/sbin/nats-server",
                "/usr/local/sbin/nats-server",
                "/usr/local/bin/nats-server",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.is_file())
}

/// Two distinct free loopback ports (bound, then released).
fn free_ports() -> Result<(u16, u16), ProcError> {
    let io = |source| ProcError::Io {
        what: "picking free ports".into(),
        source,
    };
    let a = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let b = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
    let pa = a.local_addr().map_err(io)?.port();
    let pb = b.local_addr().map_err(io)?.port();
    Ok((pa, pb))
}

/// A running `nats-server` (Debian package `nats-server`) on 127.0.0.1,
/// with a client port and a WebSocket port (`no_tls`), no JetStream and
/// default limits unless [`start_with`](Self::start_with) says otherwise.
/// Killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    child: Child,
    port: u16,
    ws_port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with the default configuration.
    pub async fn start() -> Result<NatsServer, ProcError> {
        NatsServer::start_with("").await
    }

    /// Starts a server with `extra_conf` appended to its configuration file
    /// (e.g. `max_pending: 1MB` and `write_deadline: "1s"`), and waits (at
    /// most 10 s) until its WebSocket port accepts connections.
    pub async fn start_with(extra_conf: &str) -> Result<NatsServer, ProcError> {
        let bin = nats_server_binary().ok_or_else(|| ProcError::Io {
            what: "nats-server not found on PATH or in /usr/sbin (install it: apt-get install nats-server)".into(),
            source: std::io::Error::from(ErrorKind::NotFound),
        })?;
        NatsServer::launch(&bin, |_| extra_conf.to_owned()).await
    }

    /// Starts `bin` with the configuration [`start_with`](Self::start_with)
    /// writes plus what `extra_conf` returns for the server's own temporary
    /// directory (e.g. a JetStream `store_dir` inside it, removed with the
    /// server).
    pub async fn launch(
        bin: &Path,
        extra_conf: impl FnOnce(&Path) -> String,
    ) -> Result<NatsServer, ProcError> {
        let dir = tempfile::tempdir().map_err(|source| ProcError::Io {
            what: "tempdir".into(),
            source,
        })?;
        let (port, ws_port) = free_ports()?;
        let extra_conf = extra_conf(dir.path());
        let conf = format!(
            "listen: 127.0.0.1:{port}\nwebsocket {{\n  host: 127.0.0.1\n  port: {ws_port}\n  no_tls: true\n}}\n{extra_conf}\n"
        );
        let conf_path = dir.path().join("nats.conf");
        let log_path = dir.path().join("nats.log");
        std::fs::write(&conf_path, conf).map_err(|source| ProcError::Io {
            what: "writing nats.conf".into(),
            source,
        })?;
        let log = std::fs::File::create(&log_path).map_err(|source| ProcError::Io {
            what: "creating nats.log".into(),
            source,
        })?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ProcError::Io {
                what: format!(
                    "spawning {} (install it: apt-get install nats-server)",
                    bin.display()
                ),
                source,
            })?;
        let log_tail = || {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            lines[lines.len().saturating_sub(5)..].join(" | ")
        };
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(ProcError::Io {
                    what: format!("nats-server exited at start ({status}): {}", log_tail()),
                    source: std::io::Error::other("exited"),
                });
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", ws_port))
                .await
                .is_ok()
            {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProcError::NoAddress(format!(
                    "nats-server (WebSocket port {ws_port} not open after 10 s: {})",
                    log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(NatsServer {
            child,
            port,
            ws_port,
            dir,
        })
    }

    /// The WebSocket URL, `ws://127.0.0.1:<port>`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.ws_port)
    }

    /// The plain NATS client URL, `nats://127.0.0.1:<port>`.
    pub fn nats_url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The server's resident set size in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::procs::rss_kib(self.child.id()?)
    }

    /// The server's log so far (its stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}
