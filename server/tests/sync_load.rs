//! A pull of a 100,000-record sync space through a `plexus` child process,
//! with the hub's resident set size sampled throughout: it stays bounded by
//! one pull page, the outbound budget and the database cache, however large
//! the space. Ignored by default; run it with
//!
//! ```text
//! cargo test --release -p plexus-server --test sync_load -- --ignored --nocapture
//! ```
//!
//! `PLEXUS_LOAD_RECORDS` (default 100000) sets the number of records.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_precision_loss,
    missing_docs
)]
#![cfg(target_os = "linux")]

mod load_support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use jsonwebtoken::Algorithm;
use load_support::{peak_sampler, plexus, settled_rss_kib, spawn};
use plexus_protocol::Frame;
use plexus_protocol::methods::sync::{
    SyncChunk, SyncOp, SyncPullFinal, SyncPullParams, SyncPushParams, hlc,
};
use plexus_testkit::{Client, SECRET, now, sign};
use tokio::process::Child;

const SPACE: &str = "load.space";

fn sync_token() -> String {
    let c = serde_json::json!({
        "sub": "loader", "iat": now(), "exp": now() + 3600,
        "plexus": { "sync_write": ["load.>"] },
    });
    sign(&c, Algorithm::HS256, SECRET)
}

async fn spawn_hub(dir: &std::path::Path) -> (Child, SocketAddr) {
    let mut cmd = plexus();
    cmd.args(["--rate-per-sec", "10000000", "--rate-burst", "10000000"])
        .arg("--data-dir")
        .arg(dir.join("data"));
    spawn(cmd).await
}

#[tokio::test]
#[ignore = "writes 100,000 records; run in release mode with --ignored --nocapture"]
async fn pulling_a_100k_record_space_keeps_the_hub_memory_bounded() {
    let total: u64 = std::env::var("PLEXUS_LOAD_RECORDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_hub(dir.path()).await;
    let pid = child.id().unwrap();

    let (mut c, _) = Client::authed(addr, &sync_token()).await;
    let started = Instant::now();
    let t = hlc(u64::try_from(now()).unwrap() * 1000, 0);
    let per_push = 1000u64;
    let mut seq = 0;
    let mut ids = Vec::new();
    for start in (0..total).step_by(usize::try_from(per_push).unwrap()) {
        seq += 1;
        let ops = (start..(start + per_push).min(total))
            .map(|i| SyncOp::put("items", format!("r{i:08}"), vec![7u8; 64]))
            .collect();
        ids.push(
            c.request(
                "sync.push",
                &SyncPushParams::new(SPACE, "loader", seq, t, ops),
            )
            .await,
        );
        if ids.len() == 16 {
            for id in ids.drain(..) {
                c.response(id).await.unwrap();
            }
        }
    }
    for id in ids.drain(..) {
        c.response(id).await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "pushed {total} records in {secs:.1} s ({:.0} records/s, {per_push} per push, 16 in flight)",
        total as f64 / secs
    );
    let base = settled_rss_kib(pid).await;

    let (stop, peak) = peak_sampler(pid);
    let started = Instant::now();
    let id = c.request("sync.pull", &SyncPullParams::new(SPACE)).await;
    let (mut got, mut chunks) = (0u64, 0u64);
    let fin: SyncPullFinal = loop {
        match c.next_frame().await.expect("the connection stays open") {
            Frame::Chunk(ch) if ch.id == id => {
                if ch.fin {
                    break ch.data.decode().unwrap();
                }
                let chunk: SyncChunk = ch.data.decode().unwrap();
                got += chunk.records.len() as u64;
                chunks += 1;
            }
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!((got, fin.count, fin.cursor), (total, total, total));
    println!(
        "pulled {got} records in {chunks} chunks in {secs:.2} s ({:.0} records/s); hub RssAnon before {} MiB, peak during the pull {} MiB (+{} MiB); VmRSS before {} MiB, peak {} MiB",
        got as f64 / secs,
        base.0 / 1024,
        peak.0 / 1024,
        peak.0.saturating_sub(base.0) / 1024,
        base.1 / 1024,
        peak.1 / 1024,
    );
    // One page (500 records), the 4 MiB outbound budget, SQLite's page
    // cache and the allocator's slack.
    assert!(
        peak.0.saturating_sub(base.0) < 64 * 1024,
        "the pull grew the hub's anonymous memory by {} MiB",
        peak.0.saturating_sub(base.0) / 1024
    );
    drop(child);
}
