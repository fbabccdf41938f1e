//! The crash test: a real hub in a separate process is killed with
//! SIGKILL in the middle of a storm of durable publishes from several SDK
//! clients, and started again on the same data. Then every acknowledged
//! publish is in the history exactly once (read over the wire), nothing
//! is stored twice, and every SDK subscriber saw every stored event
//! exactly once, in order, with no gap — on SQLite, and on PostgreSQL when
//! `PLEXUS_TEST_POSTGRES_URL` is set.
//!
//! The hub process is this test binary run again with [`CHILD_ENV`] set:
//! it then runs only [`crash_child_hub`], which starts the hub through the
//! `plexus-server` library and prints its address. Clients reach it
//! through a forwarder on a stable port, so they keep their URL across
//! the restart.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use plexus_client::protocol::methods::{EventParams, History, HistoryParams};
use plexus_client::{Backoff, Client, DurableEvent, DurableSubscription, Error, StartAt};
use plexus_testkit::{TestDb, streams_config};

/// Set in the hub process: `data_dir` and `database_url`, one per line.
const CHILD_ENV: &str = "PLEXUS_CRASH_CHILD";
/// The line the hub process prints with its address.
const ADDR_LINE: &str = "PLEXUS_CRASH_HUB_ADDR=";

const TOPICS: [&str; 2] = ["crash.a", "crash.b"];
const PUBLISHERS: u64 = 4;
const TASKS_PER_PUBLISHER: u64 = 8;
const PUBLISHES_PER_TASK: u64 = 40;
/// The hub is killed once this many publishes were acknowledged.
const KILL_AFTER_ACKS: u64 = 300;
/// Bound of every wait in the test.
const WAIT: Duration = Duration::from_secs(40);

/// The hub process (does nothing in a normal test run).
#[test]
fn crash_child_hub() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut lines = spec.lines();
    let data_dir = lines.next().unwrap_or_default().to_owned();
    let database_url = lines.next().unwrap_or_default().to_owned();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let server = common::hub(|c| {
            c.data_dir = data_dir.into();
            c.database_url = database_url;
            c.streams = streams_config(&["crash.>"]);
            // The storm is the point: no rate limit.
            c.rate_per_sec = 1_000_000;
            c.rate_burst = 1_000_000;
        })
        .await;
        println!("{ADDR_LINE}{}", server.local_addr());
        std::future::pending::<()>().await;
    });
}

/// The hub process; killed (SIGKILL) on drop.
struct HubProcess {
    child: Child,
    addr: SocketAddr,
}

impl HubProcess {
    fn start(db: &TestDb) -> HubProcess {
        let exe = std::env::current_exe().unwrap();
        let mut child = Command::new(exe)
            .args([
                "--exact",
                "crash_child_hub",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(
                CHILD_ENV,
                format!("{}\n{}", db.data_dir().display(), db.url()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                // libtest may have printed the test's name on that line.
                if let Some((_, a)) = line.split_once(ADDR_LINE) {
                    let _ = tx.send(a.parse::<SocketAddr>().unwrap());
                }
            }
        });
        let addr = rx.recv_timeout(WAIT).expect("the hub process starts");
        HubProcess { child, addr }
    }

    /// `kill -9`.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn builder(url: String, user: &str) -> plexus_client::ClientBuilder {
    common::builder(url, user)
        .call_timeout(WAIT)
        .backoff(Backoff {
            initial: Duration::from_millis(20),
            max: Duration::from_millis(200),
        })
}

/// A publish's payload: who published it.
fn payload(publisher: u64, task: u64, n: u64) -> u64 {
    (publisher << 40) | (task << 20) | n
}

/// What one subscriber received: (topic, offset, position, payload).
type Seen = Vec<(String, u64, u64, u64)>;

/// Consumes until `want` (once set) events were seen; returns them and
/// how many resumes caught up.
async fn consume(mut sub: DurableSubscription, want: Arc<AtomicU64>) -> (Seen, u32) {
    let mut seen = Seen::new();
    let mut recovered = 0;
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let target = want.load(Ordering::Acquire);
        if target != 0 && seen.len() as u64 >= target {
            return (seen, recovered);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let next = tokio::time::timeout(left.min(Duration::from_millis(200)), sub.next()).await;
        match next {
            Ok(Some(DurableEvent::Message(m))) => seen.push((
                m.topic.to_string(),
                m.offset,
                m.position,
                m.data.decode::<u64>().unwrap(),
            )),
            Ok(Some(DurableEvent::Recovered { .. })) => recovered += 1,
            Ok(Some(other)) => panic!("unexpected {other:?}"),
            Ok(None) => panic!("the subscription ended"),
            Err(_) if Instant::now() >= deadline => {
                panic!("subscriber saw {} events, wanted {target}", seen.len())
            }
            Err(_) => {}
        }
    }
}

/// Every event of `topic`, in offset order, read page by page.
async fn history(client: &Client, topic: &str) -> Vec<(u64, u64, u64)> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let mut params = HistoryParams::new(topic).with_limit(500);
        if let Some(f) = from {
            params = params.with_from(f);
        }
        let page = client.request::<History>(&params).await.unwrap();
        for raw in &page.events {
            let e: EventParams = raw.decode().unwrap();
            let data = raw.slice_ref(e.data).decode::<u64>().unwrap();
            out.push((e.offset.unwrap(), e.position.unwrap(), data));
        }
        match page.next {
            Some(n) => from = Some(n),
            None => return out,
        }
    }
}

async fn crash_run(db: TestDb) {
    let started = Instant::now();
    let proxy = common::Proxy::start(None).await;
    let hub = HubProcess::start(&db);
    proxy.set_upstream(Some(hub.addr));
    let url = proxy.url();

    // Subscribers from the beginning: each exact topic, and the pattern.
    let want: Vec<Arc<AtomicU64>> = (0..3).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let mut consumers = Vec::new();
    let mut sub_clients = Vec::new();
    for (i, pattern) in ["crash.a", "crash.b", "crash.>"].into_iter().enumerate() {
        let c = builder(url.clone(), &format!("sub-{i}"))
            .durable_buffer(64)
            .connect()
            .await
            .unwrap();
        let sub = c
            .subscribe_durable_from(pattern, StartAt::Beginning)
            .await
            .unwrap();
        consumers.push(tokio::spawn(consume(sub, want[i].clone())));
        sub_clients.push(c);
    }

    // The storm.
    let acks = Arc::new(AtomicU64::new(0));
    let kill_now = Arc::new(tokio::sync::Notify::new());
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let c = builder(url.clone(), &format!("pub-{p}"))
            .connect()
            .await
            .unwrap();
        for t in 0..TASKS_PER_PUBLISHER {
            let (c, acks, kill_now) = (c.clone(), acks.clone(), kill_now.clone());
            tasks.push(tokio::spawn(async move {
                let topic = TOPICS[((p + t) % 2) as usize];
                let mut acked = Vec::new();
                let mut failed = Vec::new();
                for n in 0..PUBLISHES_PER_TASK {
                    let data = payload(p, t, n);
                    match c.publish_durable(topic, &data).await {
                        Ok(ack) => {
                            if acks.fetch_add(1, Ordering::AcqRel) + 1 == KILL_AFTER_ACKS {
                                kill_now.notify_one();
                            }
                            acked.push((topic, data, ack));
                        }
                        Err(e) => failed.push((data, e)),
                    }
                }
                (acked, failed)
            }));
        }
    }

    // kill -9 mid-storm, then start again on the same data.
    tokio::time::timeout(WAIT, kill_now.notified())
        .await
        .expect("the storm is stuck before the kill");
    proxy.set_upstream(None);
    hub.kill();
    let acked_at_kill = acks.load(Ordering::Acquire);
    let hub = HubProcess::start(&db);
    proxy.set_upstream(Some(hub.addr));

    let mut acked = Vec::new();
    let mut failed: Vec<(u64, Error)> = Vec::new();
    for t in tasks {
        let (a, f) = t.await.unwrap();
        acked.extend(a);
        failed.extend(f);
    }
    let total = PUBLISHERS * TASKS_PER_PUBLISHER * PUBLISHES_PER_TASK;
    assert!(acked_at_kill < total, "the kill came after the storm ended");
    assert!(
        failed.is_empty(),
        "{} publishes failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );

    // Every acknowledged publish is in the history exactly once, where its
    // ack says; nothing is stored twice.
    let reader = builder(url.clone(), "reader").connect().await.unwrap();
    let mut stored: HashMap<&str, Vec<(u64, u64, u64)>> = HashMap::new();
    for topic in TOPICS {
        let h = history(&reader, topic).await;
        let offsets: Vec<u64> = h.iter().map(|e| e.0).collect();
        let expected: Vec<u64> = (1..=h.len() as u64).collect();
        assert_eq!(offsets, expected, "{topic}: offsets are gapless from 1");
        stored.insert(topic, h);
    }
    let mut where_stored: HashMap<u64, (&str, u64)> = HashMap::new();
    for (topic, events) in &stored {
        for (offset, _, data) in events {
            assert!(
                where_stored.insert(*data, (topic, *offset)).is_none(),
                "payload {data:#x} stored twice"
            );
        }
    }
    let mut duplicates = 0;
    for (topic, data, ack) in &acked {
        assert_eq!(
            where_stored.get(data),
            Some(&(*topic, ack.offset.unwrap())),
            "acknowledged publish {data:#x} is stored once at its acked offset"
        );
        duplicates += u64::from(ack.duplicate);
    }
    assert_eq!(acked.len() as u64, total);

    // Every subscriber saw every stored event exactly once, in order.
    let counts = [stored["crash.a"].len(), stored["crash.b"].len()];
    want[0].store(counts[0] as u64, Ordering::Release);
    want[1].store(counts[1] as u64, Ordering::Release);
    want[2].store((counts[0] + counts[1]) as u64, Ordering::Release);
    let mut seen = Vec::new();
    for c in consumers {
        let (s, recovered) = c.await.unwrap();
        assert!(
            recovered >= 2,
            "each subscriber resumed after the crash (recovered {recovered} times)"
        );
        seen.push(s);
    }
    for (i, topic) in TOPICS.iter().enumerate() {
        let got: Vec<(u64, u64, u64)> = seen[i].iter().map(|e| (e.1, e.2, e.3)).collect();
        assert_eq!(got, stored[topic], "subscriber of {topic}");
    }
    let pattern = &seen[2];
    let positions: Vec<u64> = pattern.iter().map(|e| e.2).collect();
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(
        positions, sorted,
        "the pattern's events in position order, once each"
    );
    let mut per_topic: BTreeMap<&str, Vec<(u64, u64, u64)>> = BTreeMap::new();
    for (topic, offset, position, data) in pattern {
        let topic = if topic == "crash.a" {
            "crash.a"
        } else {
            "crash.b"
        };
        per_topic
            .entry(topic)
            .or_default()
            .push((*offset, *position, *data));
    }
    for topic in TOPICS {
        assert_eq!(
            per_topic[topic], stored[topic],
            "the pattern's events of {topic}"
        );
    }
    let distinct: HashSet<u64> = pattern.iter().map(|e| e.3).collect();
    assert_eq!(distinct.len(), pattern.len());

    println!(
        "crash test on {}: {total} publishes, {} acked before the kill, {duplicates} answered duplicate after it, {} events seen by each subscriber, {:?}",
        db.name(),
        acked_at_kill,
        pattern.len(),
        started.elapsed()
    );
    drop(sub_clients);
    drop(hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_storm_loses_no_ack_and_subscribers_see_each_event_once() {
    for db in TestDb::all().await {
        crash_run(db).await;
    }
}
