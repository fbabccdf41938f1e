//! Record sync through the SDK against a real hub (SQLite, and PostgreSQL
//! when `PLEXUS_TEST_POSTGRES_URL` is set): pushes, typed conflicts, pulls
//! whose cursor moves only past what the callback accepted, live changes
//! resumed across a hub restart, a push made while the hub is down applied
//! once, and (with `--features local-replica`) two offline replicas that
//! converge.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use futures_util::StreamExt;
use plexus_client::protocol::methods::sync::{SyncOp, SyncRecord};
use plexus_client::{Backoff, Client, Error, LiveEvent, PullChange, SyncCursor};
use plexus_server::Server;
use plexus_testkit::TestDb;

fn token(sub: &str) -> String {
    let claims = serde_json::json!({
        "sub": sub,
        "exp": common::now() + 3600,
        "plexus": { "sub": [">"], "pub": [">"], "sync_write": ["lists.>"] },
    });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(common::SECRET),
    )
    .unwrap()
}

async fn sync_hub(db: &TestDb) -> Server {
    common::hub(|c| db.apply(c)).await
}

async fn connect(url: String, sub: &str) -> Client {
    Client::builder(url)
        .token(token(sub))
        .call_timeout(Duration::from_secs(5))
        .backoff(Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
        })
        .connect()
        .await
        .unwrap()
}

async fn next(live: &mut plexus_client::LiveChanges) -> LiveEvent {
    tokio::time::timeout(Duration::from_secs(10), live.next())
        .await
        .expect("an event in time")
        .expect("not ended")
}

fn text(r: &SyncRecord) -> String {
    String::from_utf8(r.fields.as_ref().unwrap().0[""].to_vec()).unwrap()
}

#[tokio::test]
async fn push_conflict_pull_and_info() {
    for db in TestDb::all().await {
        let hub = sync_hub(&db).await;
        let alice = connect(common::url(&hub), "alice").await;
        let bob = connect(common::url(&hub), "bob").await;
        let a = alice.space("lists.shop");
        let b = bob.space("lists.shop");
        assert_ne!(a.client_id(), b.client_id());

        let ack = a
            .push(vec![
                SyncOp::put("items", "1", b"milk".to_vec()),
                SyncOp::put("items", "2", b"eggs".to_vec()),
            ])
            .await
            .unwrap();
        assert!(!ack.duplicate);
        assert_eq!(ack.usage.records, 2);
        let next = a.push(vec![SyncOp::delete("items", "2")]).await.unwrap();
        assert_eq!(next.seq, ack.seq + 1, "mutation numbers follow each other");
        assert!(next.position > ack.position);

        // A conflict is typed, carries the current record, applies nothing.
        let e = b
            .push_with(
                vec![
                    SyncOp::put("items", "3", b"tea".to_vec()),
                    SyncOp::put("items", "1", b"oat milk".to_vec()).with_expected_version(0),
                ],
                plexus_client::PushOptions::new().return_values(true),
            )
            .await
            .unwrap_err();
        match e {
            Error::SyncConflict { records } => {
                assert_eq!((records[0].id.as_str(), records[0].version), ("1", 1));
                assert_eq!(
                    records[0].fields.as_ref().unwrap().0[""].to_vec(),
                    b"milk".to_vec()
                );
            }
            other => panic!("{other:?}"),
        }

        // A failing callback leaves the cursor; the next pull hands the
        // same records over again.
        let mut cursor = SyncCursor::default();
        let e = b
            .pull(&mut cursor, None, |_| Err("disk full".into()))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Apply(_)));
        assert_eq!(cursor, SyncCursor::default());
        let mut got = Vec::new();
        let s = b
            .pull(&mut cursor, None, |c| {
                if let PullChange::Records(rs) = c {
                    got.extend(rs.iter().map(text));
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(got, ["milk"], "a snapshot has live records only");
        assert_eq!(s.cursor, cursor);
        assert_eq!(cursor.position, next.position);
        assert!(cursor.epoch.is_some());
        assert_eq!(s.checksums[0].count, 1);

        // An incremental pull from there sees the next change, tombstones
        // included.
        a.push(vec![SyncOp::delete("items", "1")]).await.unwrap();
        let mut deleted = Vec::new();
        b.pull(&mut cursor, Some("items"), |c| {
            if let PullChange::Records(rs) = c {
                deleted.extend(rs.iter().map(|r| (r.id.clone(), r.deleted)));
            }
            Ok(())
        })
        .await
        .unwrap();
        assert_eq!(deleted, [("1".to_owned(), true)]);

        let info = b.info().await.unwrap();
        assert_eq!(info.usage.records, 0);
        assert_eq!(info.position, cursor.position);

        // Pushing to a space the token only reads is forbidden.
        let e = alice
            .space("other.x")
            .push(vec![SyncOp::put("c", "1", vec![1])])
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Some(&plexus_client::protocol::ErrorCode::Forbidden)
        );
        hub.shutdown().await;
    }
}

#[tokio::test]
async fn live_changes_and_a_push_survive_a_hub_restart() {
    for db in TestDb::all().await {
        let hub = sync_hub(&db).await;
        let proxy = common::Proxy::start(Some(hub.local_addr())).await;
        let alice = connect(proxy.url(), "alice").await;
        let bob = connect(proxy.url(), "bob").await;
        let a = alice.space_as("lists.todo", "alice-laptop");
        let b = bob.space("lists.todo");
        a.push(vec![SyncOp::put("t", "1", b"one".to_vec())])
            .await
            .unwrap();

        let mut live = b.live(SyncCursor::default(), None);
        match next(&mut live).await {
            LiveEvent::Changes { records, .. } => assert_eq!(text(&records[0]), "one"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(next(&mut live).await, LiveEvent::CaughtUp { .. }));
        a.push(vec![SyncOp::put("t", "2", b"two".to_vec())])
            .await
            .unwrap();
        match next(&mut live).await {
            LiveEvent::Changes { records, .. } => assert_eq!(text(&records[0]), "two"),
            other => panic!("{other:?}"),
        }

        // The hub stops; a push made meanwhile waits, then is applied once.
        proxy.set_upstream(None);
        hub.shutdown().await;
        let push = {
            let a = a.clone();
            tokio::spawn(
                async move { a.push(vec![SyncOp::put("t", "3", b"three".to_vec())]).await },
            )
        };
        let hub = sync_hub(&db).await;
        proxy.set_upstream(Some(hub.local_addr()));
        let ack = push.await.unwrap().unwrap();
        assert!(!ack.duplicate);

        // The live stream resumes from its cursor: "three" once, nothing
        // replayed.
        let mut seen = Vec::new();
        while seen.is_empty() {
            match next(&mut live).await {
                LiveEvent::Changes { records, .. } => seen.extend(records.iter().map(text)),
                LiveEvent::CaughtUp { .. } => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(seen, ["three"]);
        let info = b.info().await.unwrap();
        assert_eq!(info.usage.records, 3);
        drop(live);
        hub.shutdown().await;
    }
}

#[cfg(feature = "local-replica")]
#[tokio::test]
async fn two_offline_replicas_converge() {
    use plexus_client::Replica;
    use std::collections::BTreeMap;
    let db = TestDb::sqlite();
    let hub = sync_hub(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let alice = connect(common::url(&hub), "alice").await;
    let bob = connect(common::url(&hub), "bob").await;
    let ra = Replica::open(alice.space_as("lists.g", "alice"), dir.join("a.db"))
        .await
        .unwrap();
    let rb = Replica::open(bob.space_as("lists.g", "bob"), dir.join("b.db"))
        .await
        .unwrap();
    let f = |k: &str, v: &str| BTreeMap::from([(k.to_owned(), Some(v.as_bytes().to_vec()))]);

    ra.patch("items", "milk", f("text", "milk")).await.unwrap();
    ra.sync().await.unwrap();
    rb.sync().await.unwrap();
    // Offline: both edit the same record (different fields) and add one.
    ra.patch("items", "milk", f("done", "1")).await.unwrap();
    rb.patch("items", "milk", f("qty", "2")).await.unwrap();
    rb.put("items", "eggs", b"eggs".to_vec()).await.unwrap();
    assert_eq!(
        rb.list("items").await.unwrap().len(),
        2,
        "applied locally at once"
    );
    // Back online.
    let report = ra.sync().await.unwrap();
    assert_eq!(report.pushed, 1);
    rb.sync().await.unwrap();
    ra.sync().await.unwrap();
    let (la, lb) = (
        ra.list("items").await.unwrap(),
        rb.list("items").await.unwrap(),
    );
    assert_eq!(la, lb, "converged");
    let milk = &la.iter().find(|r| r.id == "milk").unwrap().fields;
    assert_eq!(milk.len(), 3, "both field edits kept: {milk:?}");
    assert_eq!(rb.pending().await.unwrap(), 0);
    hub.shutdown().await;
}

#[tokio::test]
async fn a_client_id_shared_by_two_handles_loses_no_push() {
    let db = TestDb::sqlite();
    let hub = sync_hub(&db).await;
    let c = connect(common::url(&hub), "alice").await;
    let first = c.space_as("lists.shared", "phone");
    // Created later: its numbering starts as high or higher.
    let second = c.space_as("lists.shared", "phone");
    second
        .push(vec![SyncOp::put("t", "b", b"b".to_vec())])
        .await
        .unwrap();
    let ack = first
        .push(vec![SyncOp::put("t", "a", b"a".to_vec())])
        .await
        .unwrap();
    assert!(!ack.duplicate, "renumbered and applied, not dropped");
    assert_eq!(first.info().await.unwrap().usage.records, 2);
    hub.shutdown().await;
}

#[cfg(feature = "local-replica")]
#[tokio::test]
async fn a_replica_repairs_a_corrupted_local_record() {
    use plexus_client::Replica;
    let db = TestDb::sqlite();
    let hub = sync_hub(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let c = connect(common::url(&hub), "alice").await;
    let space = c.space_as("lists.r", "alice");
    space
        .push(vec![
            SyncOp::put("items", "1", b"milk".to_vec()),
            SyncOp::put("notes", "1", b"hello".to_vec()),
        ])
        .await
        .unwrap();
    let path = tmp.path().join("r.db");
    let r = Replica::open(space, &path).await.unwrap();
    let first = r.sync().await.unwrap();
    assert_eq!((first.pulled, first.repaired.len()), (2, 0));
    // The file is edited behind the replica's back.
    {
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        sqlx::query("UPDATE records SET version = 9 WHERE collection = 'items'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    }
    let report = r.sync().await.unwrap();
    assert_eq!(report.repaired, ["items"], "only the diverged collection");
    assert_eq!(r.get("items", "1").await.unwrap().unwrap().version, 1);
    assert!(
        r.sync().await.unwrap().repaired.is_empty(),
        "repaired for good"
    );
    hub.shutdown().await;
}

/// Three replicas make random edits (puts, patches of two fields, deletes)
/// with random syncs in between, some replicas offline for a while; once
/// every replica has synced twice, all views are the hub's state.
#[cfg(feature = "local-replica")]
#[tokio::test]
async fn random_offline_edits_from_three_replicas_converge() {
    use plexus_client::Replica;
    use rand::{Rng, SeedableRng};
    use std::collections::BTreeMap;
    let db = TestDb::sqlite();
    let hub = sync_hub(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let mut replicas = Vec::new();
    for name in ["r0", "r1", "r2"] {
        let c = connect(common::url(&hub), name).await;
        let r = Replica::open(c.space_as("lists.prop", name), tmp.path().join(name))
            .await
            .unwrap();
        replicas.push(r);
    }
    for seed in 0..3u64 {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for _ in 0..60 {
            let r = &replicas[rng.random_range(0..3)];
            let id = format!("{}", rng.random_range(0..5));
            match rng.random_range(0..10) {
                0..=2 => r.put("c", &id, vec![rng.random()]).await.unwrap(),
                3..=6 => {
                    let field = ["a", "b"][rng.random_range(0..2)].to_owned();
                    let v = rng.random_bool(0.8).then(|| vec![rng.random()]);
                    r.patch("c", &id, BTreeMap::from([(field, v)]))
                        .await
                        .unwrap();
                }
                7 => r.delete("c", &id).await.unwrap(),
                _ => {
                    r.sync().await.unwrap();
                }
            }
        }
        for _ in 0..2 {
            for r in &replicas {
                let report = r.sync().await.unwrap();
                assert!(report.repaired.is_empty(), "checksums agree");
            }
        }
        let first = replicas[0].list("c").await.unwrap();
        for r in &replicas[1..] {
            assert_eq!(r.list("c").await.unwrap(), first, "seed {seed}");
        }
        assert!(first.iter().all(|r| !r.pending));
    }
    hub.shutdown().await;
}

/// A TCP forwarder that can swallow the hub's answers on the connections
/// of one generation (`mute` holds that generation + 1; 0: none; a
/// connection's generation is the number of cuts before it was accepted)
/// and cut every connection (`cut`), to lose a push's answer after the hub
/// applied it while the reconnected client is heard.
struct LossyProxy {
    addr: std::net::SocketAddr,
    mute: std::sync::Arc<std::sync::atomic::AtomicU64>,
    cut: tokio::sync::watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    async fn start(upstream: std::net::SocketAddr) -> LossyProxy {
        use std::sync::atomic::Ordering;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mute = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        let m = mute.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(hub) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                let (mut cr, mut cw) = client.into_split();
                let (mut hr, mut hw) = hub.into_split();
                let (m, mut cuts) = (m.clone(), cuts.clone());
                let generation = *cuts.borrow_and_update();
                tokio::spawn(async move {
                    let up = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = cr.read(&mut buf).await {
                            if hw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    let down = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n @ 1..) = hr.read(&mut buf).await {
                            let muted = m.load(Ordering::SeqCst) == generation + 1;
                            if !muted && cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::select! {
                        () = up => {}
                        () = down => {}
                        _ = cuts.changed() => {}
                    }
                });
            }
        });
        LossyProxy {
            addr,
            mute,
            cut,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/v1/ws", self.addr)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test]
async fn a_push_whose_answer_was_lost_is_resent_and_applied_once() {
    use std::sync::atomic::Ordering;
    for db in TestDb::all().await {
        let hub = sync_hub(&db).await;
        let proxy = LossyProxy::start(hub.local_addr()).await;
        let alice = connect(proxy.url(), "alice").await;
        let observer = connect(common::url(&hub), "bob").await.space("lists.once");
        let space = alice.space_as("lists.once", "alice-phone");
        space
            .push(vec![SyncOp::put("t", "0", b"zero".to_vec())])
            .await
            .unwrap();

        // The hub applies the push, its answer is swallowed.
        proxy.mute.store(*proxy.cut.borrow() + 1, Ordering::SeqCst);
        let push = {
            let space = space.clone();
            tokio::spawn(async move {
                space
                    .push(vec![SyncOp::patch(
                        "t",
                        "1",
                        [("n".to_owned(), Some(vec![1]))].into(),
                    )])
                    .await
            })
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while observer.info().await.unwrap().usage.records < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the push reached the hub"
            );
            tokio::task::yield_now().await;
        }
        // The connection drops (its answers still swallowed, however late
        // they come); the client reconnects and sends it again.
        proxy.cut.send_modify(|n| *n += 1);
        let ack = tokio::time::timeout(Duration::from_secs(15), push)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(ack.duplicate, "the hub had applied it: {ack:?}");
        assert!(ack.retries >= 1);
        let info = observer.info().await.unwrap();
        assert_eq!(info.usage.records, 2);
        let mut versions = Vec::new();
        observer
            .pull(&mut SyncCursor::default(), None, |c| {
                if let PullChange::Records(rs) = c {
                    versions.extend(rs.iter().map(|r| (r.id.clone(), r.version)));
                }
                Ok(())
            })
            .await
            .unwrap();
        assert_eq!(
            versions,
            [("0".to_owned(), 1), ("1".to_owned(), 1)],
            "applied once"
        );
        hub.shutdown().await;
    }
}

#[cfg(feature = "local-replica")]
#[tokio::test]
async fn a_replica_splits_a_queue_too_big_for_one_frame() {
    use plexus_client::Replica;
    let db = TestDb::sqlite();
    let hub = sync_hub(&db).await;
    let tmp = tempfile::tempdir().unwrap();
    let c = connect(common::url(&hub), "alice").await;
    let r = Replica::open(c.space_as("lists.big", "alice"), tmp.path().join("r.db"))
        .await
        .unwrap();
    // 200 × 8 KiB: more than the hub's 1 MiB frame in one push.
    for i in 0..200 {
        r.put("c", &i.to_string(), vec![7; 8 * 1024]).await.unwrap();
    }
    let report = r.sync().await.unwrap();
    assert_eq!(report.pushed, 200);
    assert_eq!(r.pending().await.unwrap(), 0);
    assert_eq!(r.space().info().await.unwrap().usage.records, 200);
    hub.shutdown().await;
}
