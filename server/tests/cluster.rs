//! Cluster mode against real processes: three `plexus` nodes on
//! 127.0.0.1–3, one PostgreSQL database (fresh per test, on
//! `PLEXUS_TEST_POSTGRES_URL`) and one NATS server (a private
//! `nats-server` per test, so that it can be restarted and its monitoring
//! port read; run when `PLEXUS_TEST_NATS_URL` is set, which says NATS is
//! installed here). SDK clients subscribe and publish on different nodes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod bin_support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bin_support::plexus;
use futures_util::StreamExt;
use parking_lot::Mutex;
use plexus_client::{Client, ClientBuilder, DurableEvent, DurableSubscription, StartAt};
use plexus_testkit::TestDb;
use plexus_testkit::token::{SECRET, token};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const NATS_ENV: &str = "PLEXUS_TEST_NATS_URL";
const WAIT: Duration = Duration::from_secs(20);
/// The server-API key every node of a test cluster accepts. Test use only.
const API_KEY: &str = "cluster-test-api-key-0123456789";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A private NATS server.
struct Nats {
    child: Option<Child>,
    port: u16,
    monitor: u16,
}

impl Nats {
    async fn start() -> Nats {
        let mut n = Nats {
            child: None,
            port: free_port(),
            monitor: free_port(),
        };
        n.spawn().await;
        n
    }

    async fn spawn(&mut self) {
        let bin = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or("nats-server");
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p"])
            .arg(self.port.to_string())
            .arg("-m")
            .arg(self.monitor.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(tokio::time::Instant::now() < deadline, "nats-server up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// `/connz?subs=1`: the connections, by name.
    async fn connz(&self) -> Value {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.monitor).parse().unwrap();
        get_json(addr, "/connz?subs=1").await.1
    }
}

/// An HTTP/1.0 request over a plain socket: status and JSON body.
async fn http(addr: SocketAddr, request: &str) -> (u16, Value) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("null");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// An HTTP GET: status and JSON body.
async fn get_json(addr: SocketAddr, path: &str) -> (u16, Value) {
    http(addr, &format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")).await
}

struct Node {
    id: String,
    child: Option<Child>,
    addr: SocketAddr,
}

impl Node {
    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }

    async fn health(&self) -> (u16, Value) {
        get_json(self.addr, "/health").await
    }

    async fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().await.unwrap();
        }
    }
}

struct TestCluster {
    nodes: Vec<Node>,
    nats: Nats,
    db: TestDb,
    _config: tempfile::TempDir,
}

impl TestCluster {
    /// Three nodes, or `None` (printed) when PostgreSQL or NATS is not set.
    async fn start() -> Option<TestCluster> {
        if std::env::var(NATS_ENV).map_or(true, |v| v.is_empty()) {
            println!("cluster: skipped ({NATS_ENV} not set)");
            return None;
        }
        let Some(db) = TestDb::postgres().await else {
            println!("cluster: skipped (PLEXUS_TEST_POSTGRES_URL not set)");
            return None;
        };
        let nats = Nats::start().await;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("plexus.toml");
        std::fs::write(
            &config,
            format!(
                "max-connections-per-user = 3\n\n[[streams]]\npattern = \"orders.>\"\n\n[[http.api-keys]]\nname = \"ops\"\n\
                 secret = \"{API_KEY}\"\noperations = [\"*\"]\ntopics = [\">\"]\n"
            ),
        )
        .unwrap();
        let mut nodes = Vec::new();
        for i in 1..=3 {
            nodes.push(start_node(i, &db, &nats.url(), &config, dir.path()).await);
        }
        let c = TestCluster {
            nodes,
            nats,
            db,
            _config: dir,
        };
        for n in &c.nodes {
            wait_for(|| async {
                let (_, h) = n.health().await;
                h["cluster"]["link"] == "up"
                    && h["cluster"]["nodes"].as_array().map_or(0, Vec::len) == 3
            })
            .await;
        }
        Some(c)
    }

    /// Waits until NATS lists `want` subscriptions of node `id` on
    /// `subject`.
    async fn wait_subscribed(&self, id: &str, subject: &str) {
        wait_for(|| async {
            let connz = self.nats.connz().await;
            conn_of(&connz, id).is_some_and(|c| {
                c["subscriptions_list"].as_array().is_some_and(|s| {
                    s.iter()
                        .any(|x| x.as_str().is_some_and(|x| x.ends_with(subject)))
                })
            })
        })
        .await;
    }
}

fn conn_of<'a>(connz: &'a Value, id: &str) -> Option<&'a Value> {
    connz["connections"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == format!("plexus-{id}").as_str())
}

async fn start_node(
    i: u8,
    db: &TestDb,
    nats: &str,
    config: &std::path::Path,
    dir: &std::path::Path,
) -> Node {
    let id = format!("n{i}");
    let data = dir.join(&id);
    let mut child = plexus()
        .args(["serve", "--listen", &format!("127.0.0.{i}:0"), "--config"])
        .arg(config)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--database-url",
            db.url(),
            "--cluster",
            nats,
            "--node-id",
            &id,
        ])
        .args([
            "--cluster-heartbeat",
            "200ms",
            "--cluster-node-expiry",
            "1s",
        ])
        .arg("--jwt-secret")
        .arg(std::str::from_utf8(SECRET).unwrap())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut addr = None;
    while addr.is_none() {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the node prints its address")
            .unwrap()
            .expect("the node runs");
        if let Some(rest) = line.split("ws://").nth(1) {
            addr = rest.split('/').next().and_then(|a| a.parse().ok());
        }
    }
    // Keep reading so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        id,
        child: Some(child),
        addr: addr.unwrap(),
    }
}

async fn wait_for<F, Fut>(mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "condition in time");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn client(url: String, user: &str) -> Client {
    ClientBuilder::new(url)
        .token(token(user))
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// Reads `n` messages; returns (offset, data) in arrival order.
async fn messages(sub: &mut DurableSubscription, n: usize) -> Vec<(u64, String)> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let e = tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} events in time", out.len()))
            .expect("not ended");
        if let DurableEvent::Message(m) = e {
            out.push((m.offset, m.data.decode::<String>().unwrap()));
        }
    }
    out
}

/// Publishes `p-I` on `topic` for each I of `range`, one after the other.
async fn publish_range(publisher: &Client, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        publisher
            .publish_durable(topic, &format!("p-{i}"))
            .await
            .unwrap();
    }
}

/// Every offset once, from 1, in order; each publisher's events in its
/// order.
fn assert_exact(got: &[(u64, String)], publishers: &[&str], each: usize) {
    let offsets: Vec<u64> = got.iter().map(|g| g.0).collect();
    let want: Vec<u64> = (1..=(publishers.len() * each) as u64).collect();
    assert_eq!(offsets, want, "every offset once, in order");
    for p in publishers {
        let seq: Vec<usize> = got
            .iter()
            .filter_map(|(_, d)| d.strip_prefix(&format!("{p}-")))
            .map(|i| i.parse().unwrap())
            .collect();
        assert_eq!(seq, (0..each).collect::<Vec<_>>(), "{p}'s events in order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_reach_every_node_exactly_once_in_order() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    const EACH: usize = 150;
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for n in &c.nodes {
        let cl = client(n.url(), &format!("reader-{}", n.id)).await;
        subs.push(
            cl.subscribe_durable_from("orders.a", StartAt::Beginning)
                .await
                .unwrap(),
        );
        clients.push(cl);
    }
    // Concurrent publishers on two different nodes.
    let pubs: Vec<_> = [("p1", 0usize), ("p2", 1)]
        .into_iter()
        .map(|(name, node)| {
            let url = c.nodes[node].url();
            tokio::spawn(async move {
                let cl = client(url, name).await;
                for i in 0..EACH {
                    cl.publish_durable("orders.a", &format!("{name}-{i}"))
                        .await
                        .unwrap();
                }
                cl.close().await;
            })
        })
        .collect();
    for p in pubs {
        p.await.unwrap();
    }
    for sub in &mut subs {
        let got = messages(sub, 2 * EACH).await;
        assert_exact(&got, &["p1", "p2"], EACH);
    }
    // Node 3 has no publisher: the events came over NATS (not only from
    // the database sweeps).
    let (_, h) = c.nodes[2].health().await;
    let received = h["cluster"]["received"].as_u64().unwrap();
    assert!(
        received >= 2 * EACH as u64,
        "node 3 received {received} over NATS"
    );
    // A subscriber that joins later, on the third node, resumes from the
    // start and gets the same sequence.
    let late = client(c.nodes[2].url(), "late").await;
    let mut sub = late
        .subscribe_durable_from("orders.a", StartAt::Beginning)
        .await
        .unwrap();
    assert_exact(&messages(&mut sub, 2 * EACH).await, &["p1", "p2"], EACH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_events_cross_nodes_only_where_someone_listens() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    let reader = client(c.nodes[2].url(), "reader").await;
    let mut sub = reader.subscribe("chat.x").await.unwrap();
    let wild = client(c.nodes[2].url(), "wild").await;
    let mut wsub = wild.subscribe("chat.*").await.unwrap();
    c.wait_subscribed("n3", "e.chat.x").await;
    c.wait_subscribed("n3", "e.chat.*").await;
    let before = c.nats.connz().await;
    let out_before =
        |id: &str| conn_of(&before, id).map_or(0, |c| c["out_msgs"].as_u64().unwrap_or(0));
    let (n2_before, n3_before) = (out_before("n2"), out_before("n3"));

    let publisher = client(c.nodes[0].url(), "pub").await;
    for i in 0..100u32 {
        publisher.publish("chat.x", &i).await.unwrap();
    }
    for i in 0..100u32 {
        assert_eq!(plain(&mut sub).await, i, "in order, once");
        assert_eq!(plain(&mut wsub).await, i, "the pattern too, once");
    }
    // Node 3 got the traffic once per event although two of its
    // subscriptions match (NATS sends it once per subscription; the node
    // delivers it once); node 2, where nobody listens, got none of it.
    let after = c.nats.connz().await;
    let out_after =
        |id: &str| conn_of(&after, id).map_or(0, |c| c["out_msgs"].as_u64().unwrap_or(0));
    assert!(
        out_after("n3") - n3_before >= 100,
        "node 3 received the events"
    );
    assert_eq!(out_after("n2"), n2_before, "node 2 received nothing");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), sub.next())
            .await
            .is_err(),
        "no duplicate"
    );

    // When node 3's last subscriber leaves, so does its subscription.
    drop(sub);
    drop(wsub);
    reader.close().await;
    wild.close().await;
    wait_for(|| async {
        let connz = c.nats.connz().await;
        conn_of(&connz, "n3").is_some_and(|c| {
            c["subscriptions_list"].as_array().is_none_or(|s| {
                !s.iter()
                    .any(|x| x.as_str().is_some_and(|x| x.contains(".e.chat")))
            })
        })
    })
    .await;
}

async fn plain(sub: &mut plexus_client::Subscription) -> u32 {
    match tokio::time::timeout(WAIT, sub.next())
        .await
        .unwrap()
        .unwrap()
    {
        plexus_client::Event::Message(m) => m.data.decode::<u32>().unwrap(),
        other => panic!("expected a message, got {other:?}"),
    }
}

/// A TCP balancer: each new connection goes to the first backend listed.
async fn balancer(backends: Arc<Mutex<Vec<SocketAddr>>>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = l.accept().await {
            let to = backends.lock().first().copied();
            tokio::spawn(async move {
                let Some(to) = to else { return };
                if let Ok(mut out) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    addr
}

/// How a test loses node 1.
#[derive(Clone, Copy)]
enum Loss {
    /// `kill -9`.
    Kill,
    /// SIGTERM: `closing` 4008, then a clean exit.
    Drain,
}

/// A durable reader connected through a balancer to node 1 gets 50 events
/// from a publisher on node 3; node 1 is lost as `loss` says, the reader
/// reconnects through the balancer to node 2, 50 more are published: it
/// must have all 100, once, in order. Then the others stop listing node 1.
async fn lose_a_node_under_a_durable_reader(loss: Loss, topic: &str) {
    let Some(mut c) = TestCluster::start().await else {
        return;
    };
    let backends = Arc::new(Mutex::new(vec![c.nodes[0].addr, c.nodes[1].addr]));
    let lb = balancer(backends.clone()).await;
    let reader = client(format!("ws://{lb}/v1/ws"), "reader").await;
    let mut sub = reader
        .subscribe_durable_from(topic, StartAt::Beginning)
        .await
        .unwrap();
    let publisher = client(c.nodes[2].url(), "pub").await;
    publish_range(&publisher, topic, 0..50).await;
    let mut got = messages(&mut sub, 50).await;
    backends.lock().remove(0);
    match loss {
        Loss::Kill => c.nodes[0].kill9().await,
        Loss::Drain => {
            let pid = c.nodes[0].child.as_ref().and_then(Child::id).unwrap();
            let term = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await
                .unwrap();
            assert!(term.success());
            let mut drained = c.nodes[0].child.take().unwrap();
            let status = tokio::time::timeout(WAIT, drained.wait())
                .await
                .unwrap()
                .unwrap();
            assert!(status.success(), "a drained node exits cleanly: {status}");
        }
    }
    publish_range(&publisher, topic, 50..100).await;
    got.extend(messages(&mut sub, 50).await);
    assert_exact(&got, &["p"], 100);
    // A dead node leaves the others' view within its expiry; a drained one
    // at once (it deletes its row).
    wait_for(|| async {
        let (_, h) = c.nodes[1].health().await;
        h["cluster"]["nodes"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_s_clients_resume_on_another_with_no_gap_and_no_duplicate() {
    lose_a_node_under_a_durable_reader(Loss::Kill, "orders.k").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_node_s_clients_move_with_nothing_lost() {
    lose_a_node_under_a_durable_reader(Loss::Drain, "orders.d").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_heals_after_nats_restarts_and_loses_nothing_acknowledged() {
    let Some(mut c) = TestCluster::start().await else {
        return;
    };
    let reader = client(c.nodes[2].url(), "reader").await;
    let mut sub = reader
        .subscribe_durable_from("orders.r", StartAt::Beginning)
        .await
        .unwrap();
    let publisher = client(c.nodes[0].url(), "pub").await;
    publish_range(&publisher, "orders.r", 0..30).await;
    let mut got = messages(&mut sub, 30).await;

    c.nats.kill().await;
    wait_for(|| async {
        let (status, h) = c.nodes[0].health().await;
        status == 503 && h["status"] == "degraded" && h["cluster"]["link"] == "down"
    })
    .await;
    // A plain publish the other nodes cannot get is refused, retryably.
    let e = publisher.publish("chat.y", &1u8).await.unwrap_err();
    assert_eq!(
        e.code(),
        Some(&plexus_client::protocol::ErrorCode::Unavailable),
        "{e:?}"
    );
    // Durable publishes are committed in PostgreSQL meanwhile.
    publish_range(&publisher, "orders.r", 30..60).await;
    c.nats.spawn().await;
    for n in &c.nodes {
        wait_for(|| async { n.health().await.1["cluster"]["link"] == "up" }).await;
    }
    got.extend(messages(&mut sub, 30).await);
    publish_range(&publisher, "orders.r", 60..80).await;
    got.extend(messages(&mut sub, 20).await);
    assert_exact(&got, &["p"], 80);
}

/// The `presence.get` pages of `topic` on `c`, `limit` members at a time.
async fn presence_pages(
    c: &Client,
    topic: &str,
    limit: u64,
    mut cursor: Option<u64>,
) -> (Vec<String>, Option<u64>) {
    use plexus_client::protocol::methods::{PresenceGet, PresenceGetParams};
    let page = c
        .request::<PresenceGet>(&PresenceGetParams {
            topic,
            cursor: cursor.take(),
            limit: Some(limit),
        })
        .await
        .unwrap();
    (
        page.members.into_iter().map(|m| m.user).collect(),
        page.next,
    )
}

async fn presence_event(sub: &mut plexus_client::Subscription) -> (bool, String) {
    loop {
        match tokio::time::timeout(WAIT, sub.next())
            .await
            .unwrap()
            .unwrap()
        {
            plexus_client::Event::Join(m) => return (true, m.user),
            plexus_client::Event::Leave(m) => return (false, m.user),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_cluster_wide_pages_across_nodes_and_expires_a_dead_node() {
    let Some(mut c) = TestCluster::start().await else {
        return;
    };
    let alice = client(c.nodes[0].url(), "alice").await;
    let mut a_sub = alice.subscribe_presence("room.1").await.unwrap();
    c.wait_subscribed("n1", "p.room.1").await;
    let bob = client(c.nodes[1].url(), "bob").await;
    let _b_sub = bob.subscribe_presence("room.1").await.unwrap();
    // Alice, on node 1, hears that bob joined on node 2.
    assert_eq!(presence_event(&mut a_sub).await, (true, "bob".to_owned()));

    // Carol, on node 3 where nobody is present, lists both, a page at a
    // time; the cursor node 3 gave works on node 1.
    let carol = client(c.nodes[2].url(), "carol").await;
    let dave = client(c.nodes[0].url(), "dave").await;
    wait_for(|| async { carol.presence_get("room.1").await.unwrap().len() == 2 }).await;
    let (first, next) = presence_pages(&carol, "room.1", 1, None).await;
    assert_eq!(first.len(), 1);
    let next = next.expect("a second page");
    let (second, last) = presence_pages(&dave, "room.1", 1, Some(next)).await;
    assert_eq!(last, None, "two members, two pages");
    let mut both = [first, second].concat();
    both.sort();
    assert_eq!(both, ["alice", "bob"]);

    // Bob's node dies: alice hears him leave within the expiry, and the
    // listing converges.
    let killed = std::time::Instant::now();
    c.nodes[1].kill9().await;
    assert_eq!(presence_event(&mut a_sub).await, (false, "bob".to_owned()));
    let converged = killed.elapsed();
    assert!(converged < Duration::from_secs(10), "{converged:?}");
    let users: Vec<String> = carol
        .presence_get("room.1")
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.user)
        .collect();
    assert_eq!(users, ["alice"]);
    println!("presence converged {converged:?} after the kill (expiry 1s)");
}

/// A POST of a JSON body with the API key: status and JSON answer.
async fn api(addr: SocketAddr, op: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let request = format!(
        "POST /v1/api/{op} HTTP/1.0\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    http(addr, &request).await
}

/// Opens an SSE stream on `addr` for `topics`; returns its lines.
async fn sse(
    addr: SocketAddr,
    topics: &[&str],
    user: &str,
) -> tokio::io::Lines<BufReader<tokio::net::TcpStream>> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let q: Vec<String> = topics.iter().map(|t| format!("topic={t}")).collect();
    s.write_all(
        format!(
            "GET /v1/sse?{}&token={} HTTP/1.0\r\nHost: x\r\n\r\n",
            q.join("&"),
            token(user)
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    BufReader::new(s).lines()
}

/// The next `event` data line's JSON of an SSE stream.
async fn sse_event(lines: &mut tokio::io::Lines<BufReader<tokio::net::TcpStream>>) -> Value {
    let mut is_event = false;
    loop {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("the stream goes on");
        if line == "event: event" {
            is_event = true;
        } else if let Some(d) = line.strip_prefix("data: ")
            && is_event
        {
            return serde_json::from_str(d).unwrap();
        } else if line.is_empty() {
            is_event = false;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_api_and_sse_work_on_any_node() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    // An SSE stream on node 3, an SDK subscriber on node 2.
    let mut stream = sse(c.nodes[2].addr, &["orders.h", "news.h"], "viewer").await;
    let reader = client(c.nodes[1].url(), "reader").await;
    let mut sub = reader.subscribe("news.h").await.unwrap();
    c.wait_subscribed("n3", "e.news.h").await;
    c.wait_subscribed("n2", "e.news.h").await;
    // The server API on node 1 publishes on both.
    let (status, r) = api(
        c.nodes[0].addr,
        "publish",
        &serde_json::json!({"topic": "orders.h", "data": "stored"}),
    )
    .await;
    assert_eq!((status, r["offset"].as_u64()), (200, Some(1)), "{r}");
    let (status, _) = api(
        c.nodes[0].addr,
        "publish",
        &serde_json::json!({"topic": "news.h", "data": 7}),
    )
    .await;
    assert_eq!(status, 200);
    let e = sse_event(&mut stream).await;
    assert_eq!(
        (
            e["topic"].as_str(),
            e["offset"].as_u64(),
            e["data"].as_str()
        ),
        (Some("orders.h"), Some(1), Some("stored")),
        "{e}"
    );
    let e = sse_event(&mut stream).await;
    assert_eq!(
        (e["topic"].as_str(), e["data"].as_u64()),
        (Some("news.h"), Some(7)),
        "{e}"
    );
    assert_eq!(plain(&mut sub).await, 7);
    // History and presence answer on another node than the publisher's.
    let (status, h) = api(
        c.nodes[1].addr,
        "history",
        &serde_json::json!({"topic": "orders.h"}),
    )
    .await;
    assert_eq!(status, 200, "{h}");
    assert!(h.to_string().contains("stored"), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_reconnecting_on_another_node_replaces_the_old_connection() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    let connect = |node: usize| {
        ClientBuilder::new(c.nodes[node].url())
            .token(token("alice"))
            .instance("phone")
            .connect()
    };
    let old = connect(0).await.unwrap();
    c.wait_subscribed("n1", "c.instance").await;
    c.wait_subscribed("n2", "c.instance").await;
    let mut state = old.state();
    let new = connect(1).await.unwrap();
    // The connection on node 1 is replaced: 4009, and it stays closed.
    let closed = tokio::time::timeout(
        WAIT,
        state.wait_for(|s| matches!(s, plexus_client::ConnectionState::Closed { .. })),
    )
    .await
    .expect("replaced in time")
    .unwrap()
    .clone();
    match closed {
        plexus_client::ConnectionState::Closed {
            code: Some(code), ..
        } => assert_eq!(code.as_u16(), 4009),
        other => panic!("{other:?}"),
    }
    // The newer one is untouched.
    new.publish("chat.z", &1u8).await.unwrap();
    // Another instance of the same user is not affected.
    let tablet = ClientBuilder::new(c.nodes[2].url())
        .token(token("alice"))
        .instance("tablet")
        .connect()
        .await
        .unwrap();
    tablet.publish("chat.z", &2u8).await.unwrap();
    new.publish("chat.z", &3u8).await.unwrap();
    assert_eq!(
        *new.state().borrow(),
        plexus_client::ConnectionState::Connected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_publishes_hold_across_nodes() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    // The same producer (id and sequence numbers) publishing through two
    // nodes at once, and the same idempotency keys sent to two nodes at
    // once: each event is stored once.
    let tasks: Vec<_> = [0usize, 1]
        .into_iter()
        .map(|node| {
            let url = c.nodes[node].url();
            tokio::spawn(async move {
                let p = ClientBuilder::new(url)
                    .token(token("producer"))
                    .producer_id("prod-1")
                    .producer_seq_start(1)
                    .connect()
                    .await
                    .unwrap();
                let mut dups = 0;
                for i in 0..30 {
                    let a = p
                        .publish_durable("orders.i", &format!("p-{i}"))
                        .await
                        .unwrap();
                    dups += u32::from(a.duplicate);
                    let data = plexus_client::RawValue::encode(&format!("k-{i}")).unwrap();
                    let opts = plexus_client::PublishOptions::new().key(format!("key-{i}"));
                    let a = p
                        .publish_durable_with("orders.j", &data, opts)
                        .await
                        .unwrap();
                    dups += u32::from(a.duplicate);
                }
                dups
            })
        })
        .collect();
    let mut dups = 0;
    for t in tasks {
        dups += t.await.unwrap();
    }
    assert_eq!(dups, 60, "one of each pair was a duplicate");
    let reader = client(c.nodes[2].url(), "reader").await;
    let mut sub = reader
        .subscribe_durable_from("orders.i", StartAt::Beginning)
        .await
        .unwrap();
    assert_exact(&messages(&mut sub, 30).await, &["p"], 30);
    let mut sub = reader
        .subscribe_durable_from("orders.j", StartAt::Beginning)
        .await
        .unwrap();
    let got = messages(&mut sub, 30).await;
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        (1..=30).collect::<Vec<u64>>()
    );
    // Whatever follows (the end of the catch-up) is not a 31st event.
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        assert!(
            !matches!(e, DurableEvent::Message(_)),
            "stored twice: {e:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_connection_limit_counts_every_node() {
    let Some(c) = TestCluster::start().await else {
        return;
    };
    // max-connections-per-user is 3: one connection on each node...
    let mut held = Vec::new();
    for n in &c.nodes {
        held.push(client(n.url(), "lim").await);
    }
    let count = || async {
        use sqlx::Connection;
        let mut db = sqlx::PgConnection::connect(c.db.url()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM cluster_conns WHERE usr = 'lim'")
            .fetch_one(&mut db)
            .await
            .unwrap();
        n
    };
    wait_for(|| async { count().await == 3 }).await;
    // ...and a fourth, on any node, is refused.
    let e = ClientBuilder::new(c.nodes[0].url())
        .token(token("lim"))
        .connect()
        .await
        .map(|_| ())
        .expect_err("a fourth connection is refused");
    assert!(
        format!("{e:?}").contains("4004 (too_many_connections)"),
        "{e:?}"
    );
    // One ends: its row goes, and a new one is let in.
    held.pop().unwrap().close().await;
    wait_for(|| async { count().await == 2 }).await;
    held.push(client(c.nodes[1].url(), "lim").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_without_durable_namespaces_forms_and_fans_out() {
    if std::env::var(NATS_ENV).map_or(true, |v| v.is_empty()) {
        println!("cluster: skipped ({NATS_ENV} not set)");
        return;
    }
    let Some(db) = TestDb::postgres().await else {
        println!("cluster: skipped (PLEXUS_TEST_POSTGRES_URL not set)");
        return;
    };
    let nats = Nats::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("plain.toml");
    std::fs::write(&config, "max-connections-per-user = 3\n").unwrap();
    let mut nodes = Vec::new();
    for i in 1..=2 {
        nodes.push(start_node(i, &db, &nats.url(), &config, dir.path()).await);
    }
    for n in &nodes {
        wait_for(|| async {
            let (status, h) = n.health().await;
            status == 200 && h["cluster"]["nodes"].as_array().map_or(0, Vec::len) == 2
        })
        .await;
    }
    let reader = client(nodes[1].url(), "reader").await;
    let mut sub = reader.subscribe("chat.p").await.unwrap();
    wait_for(|| async {
        let connz = nats.connz().await;
        conn_of(&connz, "n2")
            .is_some_and(|c| c["subscriptions_list"].to_string().contains("e.chat.p"))
    })
    .await;
    let publisher = client(nodes[0].url(), "pub").await;
    publisher.publish("chat.p", &5u32).await.unwrap();
    assert_eq!(plain(&mut sub).await, 5);
}

/// A client of `user` on `url` that may register, call and list every
/// procedure.
async fn rpc_client(url: String, user: &str) -> Client {
    let mut claims = plexus_testkit::token::claims(user, &[">"], &[">"], true);
    claims["plexus"]["rpc_register"] = serde_json::json!([">"]);
    claims["plexus"]["rpc_call"] = serde_json::json!([">"]);
    claims["plexus"]["rpc_admin"] = serde_json::json!(true);
    let token = plexus_testkit::token::sign(&claims, jsonwebtoken::Algorithm::HS256, SECRET);
    ClientBuilder::new(url)
        .token(token)
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap()
}

/// The error code of a failed routed call.
fn rpc_code(r: Result<plexus_client::RawValue, plexus_client::Error>) -> String {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e
            .code()
            .map_or_else(|| format!("{e}"), |c| c.as_str().to_owned()),
    }
}

/// Says who served: `node:caller`.
async fn echo_on(
    c: &Client,
    procedure: &str,
    node: &'static str,
    policy: plexus_client::protocol::methods::rpc::Policy,
) -> Result<plexus_client::Registration, plexus_client::Error> {
    c.register_with(
        procedure,
        plexus_client::RegisterOptions::new().policy(policy),
        move |inv: plexus_client::Invocation| async move {
            Ok::<_, plexus_client::protocol::WireError>(format!("{node}:{}", inv.caller.sub))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_calls_cross_nodes_with_the_policy_streams_timeouts_and_conflicts() {
    use plexus_client::protocol::methods::rpc::Policy;
    let Some(c) = TestCluster::start().await else {
        return;
    };
    let svc2 = rpc_client(c.nodes[1].url(), "svc2").await;
    let svc3 = rpc_client(c.nodes[2].url(), "svc3").await;
    let caller = rpc_client(c.nodes[0].url(), "carol").await;
    // Nobody anywhere: answered at once.
    assert_eq!(
        rpc_code(caller.rpc_call("svc.echo", &()).await),
        "no_callee"
    );

    let r2 = echo_on(&svc2, "svc.echo", "n2", Policy::RoundRobin)
        .await
        .unwrap();
    let _r3 = echo_on(&svc3, "svc.echo", "n3", Policy::RoundRobin)
        .await
        .unwrap();
    wait_for(|| async { caller_sees(&caller, "svc.echo").await == 2 }).await;
    // Round robin over both remote callees, and the caller attested.
    let mut served = std::collections::BTreeMap::<String, usize>::new();
    for _ in 0..20 {
        let v = caller.rpc_call("svc.echo", &()).await.unwrap();
        *served.entry(v.decode::<String>().unwrap()).or_default() += 1;
    }
    assert_eq!(
        served.into_iter().collect::<Vec<_>>(),
        [("n2:carol".to_owned(), 10), ("n3:carol".to_owned(), 10)]
    );

    // The policy is the cluster's: another one is a conflict on any node,
    // and so is a second callee of a `single` procedure.
    let local = rpc_client(c.nodes[0].url(), "svc1").await;
    let e = echo_on(&local, "svc.echo", "n1", Policy::Random)
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.as_str()), Some("conflict"));
    let _one = echo_on(&svc2, "svc.one", "n2", Policy::Single)
        .await
        .unwrap();
    let e = echo_on(&svc3, "svc.one", "n3", Policy::Single)
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.as_str()), Some("conflict"));

    // Progressive results cross nodes with credit: more chunks than the
    // window, in order.
    let _count = svc3
        .register_stream(
            "svc.count",
            plexus_client::RegisterOptions::new(),
            |inv: plexus_client::Invocation| {
                let n: u32 = inv.decode().unwrap_or(3);
                futures_util::stream::iter((1..=n).map(Ok::<_, plexus_client::protocol::WireError>))
            },
        )
        .await
        .unwrap();
    wait_for(|| async { caller_sees(&caller, "svc.count").await == 1 }).await;
    let mut s = caller
        .rpc_call_stream("svc.count", &200u32, &plexus_client::CallOptions::new())
        .await
        .unwrap();
    let mut got = Vec::new();
    while let Some(item) = tokio::time::timeout(WAIT, s.next()).await.unwrap() {
        got.push(item.unwrap().decode::<u32>().unwrap());
    }
    assert_eq!(got, (1..=200).collect::<Vec<_>>());

    // The hub's deadline holds across nodes, and interrupts the callee.
    let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _hang = svc2
        .register("svc.hang", move |_inv: plexus_client::Invocation| {
            let guard = DropSignal(dropped_tx.clone());
            async move {
                let _g = guard;
                std::future::pending::<()>().await;
                Ok::<u32, plexus_client::protocol::WireError>(0)
            }
        })
        .await
        .unwrap();
    wait_for(|| async { caller_sees(&caller, "svc.hang").await == 1 }).await;
    let opts = plexus_client::CallOptions::new().timeout(Duration::from_millis(300));
    assert_eq!(
        rpc_code(caller.rpc_call_with("svc.hang", &(), &opts).await),
        "timeout"
    );
    tokio::time::timeout(WAIT, dropped_rx.recv())
        .await
        .expect("the callee is interrupted")
        .unwrap();
    // Cancelling (dropping the call) interrupts it too.
    let call = caller.rpc_call("svc.hang", &());
    let _ = tokio::time::timeout(Duration::from_millis(300), call).await;
    tokio::time::timeout(WAIT, dropped_rx.recv())
        .await
        .expect("the cancelled callee is interrupted")
        .unwrap();

    // An unregistered callee leaves every node's directory.
    drop(r2);
    wait_for(|| async { caller_sees(&caller, "svc.echo").await == 1 }).await;
    for _ in 0..5 {
        let v = caller.rpc_call("svc.echo", &()).await.unwrap();
        assert_eq!(v.decode::<String>().unwrap(), "n3:carol");
    }
}

/// Tells when it is dropped (a handler's future interrupted).
struct DropSignal(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for DropSignal {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

/// The callees of `procedure` `rpc.list` shows on the caller's node.
async fn caller_sees(caller: &Client, procedure: &str) -> usize {
    use plexus_client::protocol::methods::rpc::{ListParams, ListResult};
    let Ok(v) = caller.call("rpc.list", &ListParams::default()).await else {
        return 0;
    };
    let list: ListResult = v.decode().unwrap();
    list.procedures
        .iter()
        .find(|p| p.procedure == procedure)
        .map_or(0, |p| p.callees.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_node_s_callees_fail_callee_lost_and_its_callers_calls_are_interrupted() {
    let Some(mut c) = TestCluster::start().await else {
        return;
    };
    // A callee on node 2 that never answers, called from node 1.
    let svc = rpc_client(c.nodes[1].url(), "svc").await;
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _reg = svc
        .register("svc.hang", move |_inv: plexus_client::Invocation| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(());
                std::future::pending::<()>().await;
                Ok::<u32, plexus_client::protocol::WireError>(0)
            }
        })
        .await
        .unwrap();
    let caller = rpc_client(c.nodes[0].url(), "carol").await;
    wait_for(|| async { caller_sees(&caller, "svc.hang").await == 1 }).await;
    let opts = plexus_client::CallOptions::new().timeout(Duration::from_secs(60));
    let call = {
        let caller = caller.clone();
        tokio::spawn(async move { caller.rpc_call_with("svc.hang", &(), &opts).await })
    };
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    // Its node dies: the call fails `callee_lost` within the node expiry
    // (1 s here), long before its own deadline.
    let killed = std::time::Instant::now();
    c.nodes[1].kill9().await;
    let r = tokio::time::timeout(WAIT, call).await.unwrap().unwrap();
    let lost_after = killed.elapsed();
    assert_eq!(rpc_code(r), "callee_lost");
    assert!(lost_after < Duration::from_secs(5), "{lost_after:?}");
    // And nobody is left to call: no ghost callee.
    wait_for(|| async { caller_sees(&caller, "svc.hang").await == 0 }).await;
    assert_eq!(
        rpc_code(caller.rpc_call("svc.hang", &()).await),
        "no_callee"
    );
    println!("callee_lost {lost_after:?} after the callee's node was killed (expiry 1s)");

    // A caller's node dies with its call in flight: the callee elsewhere
    // is interrupted.
    let svc1 = rpc_client(c.nodes[0].url(), "svc1").await;
    let (dropped_tx, mut dropped_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (started_tx, mut started_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let _reg1 = svc1
        .register("svc.wait", move |_inv: plexus_client::Invocation| {
            let guard = DropSignal(dropped_tx.clone());
            let started = started_tx.clone();
            async move {
                let _g = guard;
                let _ = started.send(());
                std::future::pending::<()>().await;
                Ok::<u32, plexus_client::protocol::WireError>(0)
            }
        })
        .await
        .unwrap();
    let far = rpc_client(c.nodes[2].url(), "dave").await;
    wait_for(|| async { caller_sees(&far, "svc.wait").await == 1 }).await;
    let far_call = {
        let far = far.clone();
        let opts = plexus_client::CallOptions::new().timeout(Duration::from_secs(60));
        tokio::spawn(async move { far.rpc_call_with("svc.wait", &(), &opts).await })
    };
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    c.nodes[2].kill9().await;
    tokio::time::timeout(Duration::from_secs(10), dropped_rx.recv())
        .await
        .expect("the callee is interrupted when its caller's node dies")
        .unwrap();
    far_call.abort();
}
