//! Rate limits and keepalive judge the client, not the hub's own lag
//! (decision P19, item 9): a client sending at exactly the announced rate
//! is never refused across a 3 s stop of the hub process (SIGSTOP), and
//! its pong, queued behind its own requests, does not count as late.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]
#![cfg(unix)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::Empty;
use plexus_protocol::{DecodeLimits, ErrorCode, Frame};
use plexus_testkit::{Client, SECRET, token};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio_tungstenite::tungstenite::Message;

async fn spawn_hub() -> (tokio::process::Child, SocketAddr) {
    let dir = std::env::temp_dir();
    let mut child = Command::new(env!("CARGO_BIN_EXE_plexus"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-leeway", "0s"])
        .args(["--ping-interval", "500ms", "--pong-timeout", "1s"])
        .arg("--jwt-secret")
        .arg(std::str::from_utf8(SECRET).unwrap())
        .arg("--data-dir")
        .arg(&dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the hub prints its address");
        if let Some(rest) = line.split("ws://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addr)
}

fn signal(child: &tokio::process::Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_compliant_client_survives_a_hub_stall() {
    let (child, addr) = spawn_hub().await;
    let (c, auth) = Client::authed(addr, &token("steady")).await;
    let rate = auth.limits.rate_per_sec;
    assert_eq!((rate, auth.limits.rate_burst), (100, 200));
    let (mut tx, mut rx) = c.ws.split();
    let refused = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let reader = {
        let (refused, answered) = (refused.clone(), answered.clone());
        tokio::spawn(async move {
            // Reading answers the hub's pings (queued, sent with the next
            // request).
            while let Some(Ok(msg)) = rx.next().await {
                match msg {
                    Message::Binary(b) => {
                        if let Ok(Frame::Response(r)) = Frame::decode(b, &DecodeLimits::default()) {
                            answered.fetch_add(1, Ordering::Relaxed);
                            if r.outcome.is_err_and(|e| e.code == ErrorCode::RateLimited) {
                                refused.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    Message::Close(f) => return f.map(|f| u16::from(f.code)),
                    _ => {}
                }
            }
            None
        })
    };
    // Exactly the announced rate, for 7 s; the hub is stopped from 2 s to
    // 5 s, so 300 requests (more than the burst) wait in its socket.
    let period = Duration::from_millis(1000 / rate);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sent = 7 * rate;
    for i in 0..sent {
        tick.tick().await;
        if i == 2 * rate {
            signal(&child, "-STOP");
        }
        if i == 5 * rate {
            signal(&child, "-CONT");
        }
        let frame = encode_request(10 + i, "ping", &Empty {}).unwrap();
        if tx.send(Message::Binary(frame.into())).await.is_err() {
            panic!(
                "the hub closed the connection with {:?} after {i} requests ({} refused)",
                reader.await,
                refused.load(Ordering::Relaxed)
            );
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while answered.load(Ordering::Relaxed) < sent && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        refused.load(Ordering::Relaxed),
        0,
        "refused across the stall"
    );
    assert_eq!(answered.load(Ordering::Relaxed), sent);
    assert!(!reader.is_finished(), "the connection is still open");
    drop(tx);
    reader.abort();
}
