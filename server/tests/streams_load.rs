//! A catch-up of 1,000,000 durable events through a `plexus` child
//! process, with the hub's resident set size sampled throughout: it stays
//! bounded by one catch-up page, the outbound budget and the database
//! cache, however far behind the subscriber is. Ignored by default (it
//! writes a million events); run it in release mode:
//!
//! ```text
//! cargo test --release -p plexus-server --test streams_load -- --ignored --nocapture
//! ```
//!
//! `PLEXUS_LOAD_EVENTS` (default 1000000) sets the number of events.
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

use load_support::{peak_sampler, plexus, settled_rss_kib, spawn};
use plexus_protocol::Frame;
use plexus_protocol::methods::{PublishParams, ResumeFinal, ResumeOutcome, Since, SubscribeParams};
use plexus_testkit::{Client, raw, token};
use tokio::process::Child;

async fn spawn_hub(dir: &std::path::Path) -> (Child, SocketAddr) {
    let file = dir.join("plexus.toml");
    std::fs::write(
        &file,
        "[[streams]]\npattern = \"load.>\"\ndurability = \"committed\"\n",
    )
    .unwrap();
    let mut cmd = plexus();
    cmd.args(["--rate-per-sec", "10000000", "--rate-burst", "10000000"])
        .arg("--config")
        .arg(&file)
        .arg("--data-dir")
        .arg(dir.join("data"));
    spawn(cmd).await
}

/// Publishes `n` events on `topic` from one connection, `window` in flight.
async fn publish_many(addr: SocketAddr, topic: String, n: u64, window: u64) {
    let (mut c, _) = Client::authed(addr, &token("loader")).await;
    let payload = raw(&[0u8; 64]);
    let mut sent = 0;
    while sent < n {
        let batch = window.min(n - sent);
        let mut ids = Vec::with_capacity(usize::try_from(batch).unwrap());
        for _ in 0..batch {
            ids.push(
                c.request("publish", &PublishParams::new(&topic, payload.as_raw_ref()))
                    .await,
            );
        }
        for id in ids {
            c.response(id).await.unwrap();
        }
        sent += batch;
    }
}

#[tokio::test]
#[ignore = "writes a million events; run in release mode with --ignored --nocapture"]
async fn a_million_event_catch_up_keeps_the_hub_memory_bounded() {
    let total: u64 = std::env::var("PLEXUS_LOAD_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (child, addr) = spawn_hub(dir.path()).await;
    let pid = child.id().unwrap();

    let started = Instant::now();
    const LOADERS: u64 = 8;
    let per = total / LOADERS;
    let loaders: Vec<_> = (0..LOADERS)
        .map(|_| tokio::spawn(publish_many(addr, "load.1".into(), per, 512)))
        .collect();
    for l in loaders {
        l.await.unwrap();
    }
    let total = per * LOADERS;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "stored {total} events in {secs:.1} s ({:.0}/s, 8 connections, 512 in flight each)",
        total as f64 / secs
    );
    let base = settled_rss_kib(pid).await;

    let (stop, peak) = peak_sampler(pid);
    let (mut c, _) = Client::authed(addr, &token("reader")).await;
    let started = Instant::now();
    let id = c
        .request(
            "subscribe",
            &SubscribeParams::new("load.1").with_since(Since::offset(None, 0)),
        )
        .await;
    let mut got = 0u64;
    let fin: ResumeFinal = loop {
        match c.next_frame().await.expect("the connection stays open") {
            Frame::Chunk(ch) if ch.id == id => {
                if ch.fin {
                    break ch.data.decode().unwrap();
                }
                let mut d = minicbor::Decoder::new(ch.data.as_bytes());
                got += d.array().unwrap().unwrap();
            }
            other => panic!("unexpected frame {other:?}"),
        }
    };
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let peak = peak.await.unwrap();
    assert_eq!(fin.outcome, ResumeOutcome::Recovered);
    assert_eq!((got, fin.count, fin.offset), (total, total, total));
    let db = std::fs::metadata(dir.path().join("data/plexus.db")).map_or(0, |m| m.len());
    println!(
        "caught up {got} events in {secs:.2} s ({:.0} events/s); database {} MiB; hub RssAnon before {} MiB, peak during catch-up {} MiB (+{} MiB); VmRSS (with the mapped database file) before {} MiB, peak {} MiB",
        got as f64 / secs,
        db >> 20,
        base.0 / 1024,
        peak.0 / 1024,
        peak.0.saturating_sub(base.0) / 1024,
        base.1 / 1024,
        peak.1 / 1024,
    );
    // The hub's own memory: one page (4096 events, at most a frame), the
    // 4 MiB outbound budget, SQLite's page cache (32 MiB per connection at
    // most) and the allocator's slack; far below the database's size. The
    // mapped file's pages (VmRSS minus RssAnon) are the kernel's page
    // cache, reclaimable, and bounded by mmap_size (256 MiB).
    assert!(
        peak.0.saturating_sub(base.0) < 64 * 1024,
        "the catch-up grew the hub's anonymous memory by {} MiB",
        peak.0.saturating_sub(base.0) / 1024
    );
    drop(child);
}
