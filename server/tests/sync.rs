//! Record sync through the running hub (issue 11), over real sockets, on
//! SQLite always and on PostgreSQL when `PLEXUS_TEST_POSTGRES_URL` is set
//! (each test in a database of its own).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use plexus_protocol::methods::CancelParams;
use plexus_protocol::methods::sync::{
    QuotaDetails, SyncChunk, SyncConflicts, SyncInfoParams, SyncInfoResult, SyncOp, SyncPullFinal,
    SyncPullParams, SyncPushParams, SyncPushResult, hlc,
};
use plexus_protocol::{ErrorCode, Frame, WireError};
use plexus_testkit::*;
use serde_json::json;

const SPACE: &str = "user.alice.notes";

fn sync_token(sub: &str, read: &[&str], write: &[&str]) -> String {
    let c = json!({
        "sub": sub,
        "iat": now(),
        "exp": now() + 3600,
        "plexus": { "sync_read": read, "sync_write": write },
    });
    sign(&c, Algorithm::HS256, SECRET)
}

fn writer() -> String {
    sync_token("alice", &[], &["user.alice.>"])
}

fn now_hlc() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    hlc(u64::try_from(ms).unwrap(), 0)
}

fn put(id: &str, v: &str) -> SyncOp {
    SyncOp::put("notes", id, v.as_bytes().to_vec())
}

async fn push(c: &mut Client, p: &SyncPushParams) -> Result<SyncPushResult, WireError> {
    c.call("sync.push", p).await.map(|r| r.decode().unwrap())
}

async fn info(c: &mut Client, space: &str) -> Result<SyncInfoResult, WireError> {
    c.call("sync.info", &SyncInfoParams::new(space))
        .await
        .map(|r| r.decode().unwrap())
}

/// A pull: its chunks and its final (non-live).
async fn pull(
    c: &mut Client,
    p: &SyncPullParams,
) -> Result<(Vec<SyncChunk>, SyncPullFinal), WireError> {
    let id = c.request("sync.pull", p).await;
    let mut chunks = Vec::new();
    let mut seq = 0;
    loop {
        match c.next_frame().await.expect("the connection stays open") {
            Frame::Chunk(ch) if ch.id == id => {
                assert_eq!(ch.seq, seq, "chunks in order");
                seq += 1;
                if ch.fin {
                    return Ok((chunks, ch.data.decode().unwrap()));
                }
                chunks.push(ch.data.decode().unwrap());
            }
            Frame::Response(r) if r.id == id => {
                return r.outcome.map(|v| (chunks, v.decode().unwrap()));
            }
            other => panic!("unexpected frame: {other:?}"),
        }
    }
}

/// The next chunk of request `id`, decoded as `T`.
async fn next_chunk<T: for<'b> minicbor::Decode<'b, ()>>(c: &mut Client, id: u64) -> T {
    let f = tokio::time::timeout(WAIT, c.next_frame())
        .await
        .expect("a chunk in time")
        .expect("the connection stays open");
    match f {
        Frame::Chunk(ch) if ch.id == id => {
            assert!(!ch.fin, "a live pull has no final chunk");
            ch.data.decode().unwrap()
        }
        other => panic!("unexpected frame: {other:?}"),
    }
}

async fn start(db: &TestDb, tweak: impl FnOnce(&mut plexus_server::Config)) -> TestHub {
    TestHub::start(|c| {
        db.apply(c);
        tweak(c);
    })
    .await
}

#[tokio::test]
async fn push_acks_conflicts_apply_nothing_and_retries_survive_a_restart() {
    for db in TestDb::all().await {
        let hub = start(&db, |_| {}).await;
        let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
        let t = now_hlc();
        let p1 = SyncPushParams::new(SPACE, "c1", 1, t, vec![put("a", "1"), put("b", "2")]);
        let r = push(&mut c, &p1).await.unwrap();
        assert_eq!((r.position, r.duplicate), (2, false), "{}", db.name());
        assert_eq!((r.usage.records, r.versions.len()), (2, 2));
        // One op's expected version is wrong: nothing applies.
        let p2 = SyncPushParams::new(
            SPACE,
            "c1",
            2,
            t + 1,
            vec![put("c", "3"), put("a", "x").with_expected_version(7)],
        )
        .with_return_values(true);
        let e = push(&mut c, &p2).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Conflict);
        let d: SyncConflicts = e.details.unwrap().decode().unwrap();
        assert_eq!(d.records.len(), 1);
        assert_eq!((d.records[0].id.as_str(), d.records[0].version), ("a", 1));
        assert!(d.records[0].fields.is_some(), "return_values");
        let i = info(&mut c, SPACE).await.unwrap();
        assert_eq!((i.position, i.usage.records), (2, 2), "nothing applied");
        drop(c);
        hub.shutdown().await;

        // The same (client, seq) after a restart is a duplicate.
        let hub = start(&db, |_| {}).await;
        let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
        let r = push(&mut c, &p1).await.unwrap();
        assert_eq!((r.position, r.duplicate), (2, true));
        let i = info(&mut c, SPACE).await.unwrap();
        assert_eq!((i.position, i.usage.records), (2, 2));
        assert_eq!(i.collections.len(), 1);
    }
}

#[tokio::test]
async fn last_write_wins_across_three_skewed_clients_and_the_skew_clamp() {
    for db in TestDb::all().await {
        let hub = start(&db, |_| {}).await;
        let t = now_hlc();
        // Clients 5 s behind, 10 s ahead and on time, arriving in this order.
        let stamps = [
            ("c1", t - hlc(5000, 0)),
            ("c2", t + hlc(10_000, 0)),
            ("c3", t),
        ];
        for (client, stamp) in stamps {
            let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
            let f = BTreeMap::from([("title".to_owned(), Some(client.as_bytes().to_vec()))]);
            let p = SyncPushParams::new(
                SPACE,
                client,
                1,
                stamp,
                vec![SyncOp::patch("notes", "n", f)],
            );
            push(&mut c, &p).await.unwrap();
        }
        let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
        let (chunks, fin) = pull(&mut c, &SyncPullParams::new(SPACE)).await.unwrap();
        let recs: Vec<_> = chunks.into_iter().flat_map(|c| c.records).collect();
        assert_eq!(recs.len(), 1, "{}", db.name());
        let title = &recs[0].fields.as_ref().unwrap().0["title"];
        assert_eq!(title.as_slice(), b"c2", "the latest stamp wins");
        assert_eq!(recs[0].actor.as_deref(), Some("c2"));
        assert_eq!(fin.count, 1);
        // Two minutes ahead is beyond the 60 s clamp.
        let p = SyncPushParams::new(SPACE, "c4", 1, t + hlc(120_000, 0), vec![put("z", "1")]);
        let e = push(&mut c, &p).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::ClockSkew);
        assert!(e.details.is_some());
    }
}

#[tokio::test]
async fn pull_streams_chunks_then_goes_live_with_exact_cursors() {
    for db in TestDb::all().await {
        let hub = start(&db, |_| {}).await;
        let (mut w, _) = Client::authed(hub.addr(), &writer()).await;
        let t = now_hlc();
        let ops: Vec<SyncOp> = (0..50).map(|i| put(&format!("r{i:02}"), "v")).collect();
        push(&mut w, &SyncPushParams::new(SPACE, "w", 1, t, ops))
            .await
            .unwrap();
        let (mut r, _) =
            Client::authed(hub.addr(), &sync_token("alice", &["user.alice.>"], &[])).await;
        let (chunks, fin) = pull(&mut r, &SyncPullParams::new(SPACE).with_limit(10))
            .await
            .unwrap();
        assert_eq!(chunks.len(), 5, "{}", db.name());
        assert!(chunks.iter().all(|c| c.records.len() == 10));
        assert_eq!((fin.cursor, fin.count, fin.reset), (50, 50, false));
        assert_eq!(chunks.last().unwrap().cursor, 50);
        assert_eq!(fin.checksums.len(), 1);

        // Live from cursor 40: the catch-up (10 records), the final as a
        // chunk, then each commit.
        let id = r
            .request(
                "sync.pull",
                &SyncPullParams::new(SPACE)
                    .with_cursor(fin.epoch.clone(), 40)
                    .with_live(false),
            )
            .await;
        let c: SyncChunk = next_chunk(&mut r, id).await;
        assert_eq!((c.records.len(), c.cursor), (10, 50));
        let f: SyncPullFinal = next_chunk(&mut r, id).await;
        assert_eq!((f.cursor, f.count, f.reset), (50, 10, false));
        push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 2, t + 1, vec![put("r00", "new")]),
        )
        .await
        .unwrap();
        push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 3, t + 2, vec![SyncOp::delete("notes", "r01")]),
        )
        .await
        .unwrap();
        let l1: SyncChunk = next_chunk(&mut r, id).await;
        assert_eq!((l1.prev, l1.cursor, l1.records.len()), (Some(50), 51, 1));
        assert_eq!(l1.records[0].id, "r00");
        let l2: SyncChunk = next_chunk(&mut r, id).await;
        assert_eq!((l2.prev, l2.cursor), (Some(51), 52));
        assert!(l2.records[0].deleted);
        // Cancel ends it.
        r.notify("cancel", &CancelParams { id }).await;
        let e = r.response(id).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Cancelled);
        // Resuming from the live cursor gets nothing again.
        let (chunks, f) = pull(&mut r, &SyncPullParams::new(SPACE).with_cursor(f.epoch, 52))
            .await
            .unwrap();
        assert!(chunks.is_empty());
        assert_eq!((f.cursor, f.count), (52, 0));
    }
}

#[tokio::test]
async fn quotas_and_capabilities_are_enforced() {
    for db in TestDb::all().await {
        let hub = start(&db, |c| {
            c.sync.max_records = 2;
            c.sync.quotas = vec![plexus_server::config::SyncQuota {
                pattern: "user.*.big".into(),
                max_records: Some(10),
                max_bytes: None,
            }];
        })
        .await;
        let (mut w, _) = Client::authed(hub.addr(), &writer()).await;
        let t = now_hlc();
        push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 1, t, vec![put("a", "1"), put("b", "1")]),
        )
        .await
        .unwrap();
        let e = push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 2, t, vec![put("c", "1")]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::QuotaExceeded, "{}", db.name());
        let q: QuotaDetails = e.details.unwrap().decode().unwrap();
        assert_eq!((q.usage.records, q.limits.max_records), (3, 2));
        // A space with an override holds more.
        let ops = (0..5).map(|i| put(&format!("r{i}"), "1")).collect();
        let r = push(
            &mut w,
            &SyncPushParams::new("user.alice.big", "w", 1, t, ops),
        )
        .await
        .unwrap();
        assert_eq!(r.usage.records, 5);
        assert_eq!(
            info(&mut w, "user.alice.big")
                .await
                .unwrap()
                .limits
                .max_records,
            10
        );
        // Another user's space.
        let e = push(
            &mut w,
            &SyncPushParams::new("user.bob.notes", "w", 1, t, vec![put("a", "1")]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        // Read only: pulls, cannot push.
        let (mut r, _) =
            Client::authed(hub.addr(), &sync_token("alice", &["user.alice.>"], &[])).await;
        let e = push(
            &mut r,
            &SyncPushParams::new(SPACE, "r", 1, t, vec![put("a", "1")]),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            pull(&mut r, &SyncPullParams::new(SPACE))
                .await
                .unwrap()
                .1
                .count,
            2
        );
        // No sync capabilities: neither pull nor info.
        let (mut n, _) = Client::authed(hub.addr(), &token("alice")).await;
        let e = pull(&mut n, &SyncPullParams::new(SPACE)).await.unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert_eq!(
            info(&mut n, SPACE).await.unwrap_err().code,
            ErrorCode::Forbidden
        );
    }
}

#[tokio::test]
async fn a_cursor_behind_the_tombstone_horizon_gets_a_reset() {
    for db in TestDb::all().await {
        let hub = start(&db, |c| {
            c.sync.tombstone_horizon = plexus_server::config::Dur(Duration::ZERO);
        })
        .await;
        let (mut w, _) = Client::authed(hub.addr(), &writer()).await;
        let t = now_hlc();
        push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 1, t, vec![put("a", "1"), put("b", "1")]),
        )
        .await
        .unwrap();
        push(
            &mut w,
            &SyncPushParams::new(SPACE, "w", 2, t + 1, vec![SyncOp::delete("notes", "a")]),
        )
        .await
        .unwrap();
        let engine = hub.hub().sync.clone().unwrap();
        // The sweep purges the tombstone once the clock has passed its
        // change (the horizon is zero).
        let purged = tokio::time::timeout(WAIT, async {
            loop {
                if engine.sweep().await.unwrap().purged > 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await;
        assert!(purged.is_ok(), "{}", db.name());
        let i = info(&mut w, SPACE).await.unwrap();
        assert_eq!(i.horizon, 3);
        let (chunks, f) = pull(
            &mut w,
            &SyncPullParams::new(SPACE).with_cursor(i.epoch.clone(), 1),
        )
        .await
        .unwrap();
        assert!(f.reset, "a cursor below the horizon resets");
        let recs: Vec<_> = chunks.into_iter().flat_map(|c| c.records).collect();
        assert_eq!(recs.len(), 1, "a snapshot: live records only");
        assert_eq!(recs[0].id, "b");
    }
}

#[tokio::test]
async fn a_hub_with_sync_off_does_not_serve_it() {
    let hub = TestHub::start(|_| {}).await;
    let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
    let e = info(&mut c, SPACE).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::MethodNotFound);
}

#[tokio::test]
async fn pipelined_pushes_of_one_connection_apply_in_arrival_order() {
    for db in TestDb::all().await {
        let hub = start(&db, |_| {}).await;
        let (mut c, _) = Client::authed(hub.addr(), &writer()).await;
        let t = now_hlc();
        let mut ids = Vec::new();
        for seq in 1..=40u64 {
            let p =
                SyncPushParams::new(SPACE, "c1", seq, t + seq, vec![put("n", &seq.to_string())]);
            ids.push(c.request("sync.push", &p).await);
        }
        let mut positions = Vec::new();
        for id in ids {
            let r: SyncPushResult = c.response(id).await.unwrap().decode().unwrap();
            assert!(!r.duplicate, "{}: a later seq applied first", db.name());
            positions.push(r.position);
        }
        assert_eq!(positions, (1..=40).collect::<Vec<u64>>());
    }
}
