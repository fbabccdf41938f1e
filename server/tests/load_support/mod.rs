//! Shared by the ignored load tests (`load.rs`, `streams_load.rs`,
//! `sync_load.rs`): the `plexus` binary started as a separate process, and
//! its memory read from `/proc`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use plexus_testkit::SECRET;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// `plexus serve` on a free loopback port with the test secret; add the
/// test's own flags, then [`spawn`] it.
pub(crate) fn plexus() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plexus"));
    cmd.args(["serve", "--listen", "127.0.0.1:0"])
        .arg("--jwt-secret")
        .arg(std::str::from_utf8(SECRET).expect("the test secret is text"));
    cmd
}

/// Starts `cmd` (quiet logs, killed on drop) and returns it with the
/// address it printed; its further output is drained.
pub(crate) async fn spawn(mut cmd: Command) -> (Child, SocketAddr) {
    let mut child = cmd
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the plexus binary starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout is piped")).lines();
    let addr = loop {
        let line = lines
            .next_line()
            .await
            .expect("the hub's output is readable")
            .expect("the hub prints its address");
        if let Some(rest) = line.split("ws://").nth(1) {
            break rest
                .split('/')
                .next()
                .and_then(|a| a.parse().ok())
                .expect("the printed address parses");
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

/// One line of `/proc/<pid>/status`, in KiB (0 when unreadable).
pub(crate) fn status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The process's resident memory: (`RssAnon`, the heap and stacks it owns;
/// `VmRSS`, which also counts mapped file pages such as the SQLite file's,
/// page cache the kernel reclaims).
pub(crate) fn rss_kib(pid: u32) -> (u64, u64) {
    (status_kib(pid, "RssAnon:"), status_kib(pid, "VmRSS:"))
}

/// Samples [`rss_kib`] every 20 ms until the flag is set; the task returns
/// the peaks.
pub(crate) fn peak_sampler(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<(u64, u64)>) {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let task = tokio::spawn(async move {
        let mut peak = (0, 0);
        while !s.load(Ordering::Relaxed) {
            let (anon, all) = rss_kib(pid);
            peak = (peak.0.max(anon), peak.1.max(all));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    (stop, task)
}

/// Waits until the process's memory has settled (five samples 20 ms apart
/// within 256 KiB of each other, at most 5 s) and returns [`rss_kib`] then:
/// a baseline taken on a condition, not after a fixed pause.
pub(crate) async fn settled_rss_kib(pid: u32) -> (u64, u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut last = rss_kib(pid);
    let mut steady = 0;
    while steady < 5 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = rss_kib(pid);
        steady = if now.0.abs_diff(last.0) <= 256 {
            steady + 1
        } else {
            0
        };
        last = now;
    }
    last
}
