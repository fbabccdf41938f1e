//! The record-sync behaviour suite (issue 11), run on SQLite always and on
//! PostgreSQL when `PLEXUS_TEST_POSTGRES_URL` is set (each test in its own
//! schema, dropped afterwards). Reuses the storage suite's fixture.
//!
//! Run with `cargo test -p plexus-server --test sync_suite`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "the suite's functions are tests run by the generated #[test]s"
)]

mod storage_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::ErrorCode;
use plexus_protocol::methods::sync::{
    SyncOp, SyncPullFinal, SyncPullParams, SyncPushParams, SyncRecord, hlc,
};
use plexus_server::storage::Backend as store_backend;
use plexus_server::streams::Clock;
use plexus_server::sync::model::record_hash;
use plexus_server::sync::{LiveChanges, PullStep, SyncConfig, SyncEngine, SyncError, store};
use sqlx::Connection;
use storage_support::Fixture;

const SPACE: &str = "user.alice.notes";

async fn engine(fx: &Fixture, config: SyncConfig) -> SyncEngine {
    let store = store::open(&fx.options).await.unwrap();
    SyncEngine::open(store, config, Arc::new(fx.clock.clone()))
        .await
        .unwrap()
}

fn now(fx: &Fixture) -> u64 {
    hlc(u64::try_from(fx.clock.now_ms()).unwrap(), 0)
}

fn fields(kv: &[(&str, &str)]) -> BTreeMap<String, Vec<u8>> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn patch_fields(kv: &[(&str, &str)]) -> BTreeMap<String, Option<Vec<u8>>> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), Some(v.as_bytes().to_vec())))
        .collect()
}

struct Pulled {
    records: Vec<SyncRecord>,
    last: SyncPullFinal,
    largest_chunk: usize,
    chunks: usize,
}

async fn pull(e: &SyncEngine, params: SyncPullParams) -> Pulled {
    let mut p = e.pull(&params).await.unwrap();
    let mut out = Pulled {
        records: Vec::new(),
        last: SyncPullFinal::default(),
        largest_chunk: 0,
        chunks: 0,
    };
    while let Some(step) = p.next().await.unwrap() {
        match step {
            PullStep::Chunk(c) => {
                let c = c.decode().unwrap();
                out.largest_chunk = out.largest_chunk.max(c.records.len());
                out.chunks += 1;
                out.records.extend(c.records);
            }
            PullStep::Final(f) => out.last = f,
        }
    }
    out
}

/// A replica: the latest record per (collection, id).
fn replica(records: &[SyncRecord]) -> BTreeMap<(String, String), SyncRecord> {
    let mut m = BTreeMap::new();
    for r in records {
        m.insert((r.collection.clone(), r.id.clone()), r.clone());
    }
    m
}

fn visible(
    m: &BTreeMap<(String, String), SyncRecord>,
) -> BTreeMap<(String, String), BTreeMap<String, Vec<u8>>> {
    m.iter()
        .filter(|(_, r)| !r.deleted)
        .map(|(k, r)| {
            let f = r.fields.clone().unwrap_or_default().0;
            (
                k.clone(),
                f.into_iter().map(|(k, v)| (k, v.to_vec())).collect(),
            )
        })
        .collect()
}

/// The client-side checksum of a replica, per collection.
fn checksums(m: &BTreeMap<(String, String), SyncRecord>) -> HashMap<String, (u64, u64)> {
    let mut out: HashMap<String, (u64, u64)> = HashMap::new();
    for ((c, id), r) in m {
        if r.deleted {
            continue;
        }
        let f = r.fields.clone().unwrap_or_default().0;
        let h = record_hash(
            c,
            id,
            r.version,
            f.iter().map(|(k, v)| (k.as_str(), &v[..])),
        );
        let e = out.entry(c.clone()).or_default();
        e.0 += 1;
        e.1 = e.1.wrapping_add(h);
    }
    out
}

fn server_checksums(f: &SyncPullFinal) -> HashMap<String, (u64, u64)> {
    f.checksums
        .iter()
        .filter(|c| c.count > 0)
        .map(|c| (c.collection.clone(), (c.count, c.sum)))
        .collect()
}

async fn all_or_nothing_batches(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c1",
            1,
            t,
            vec![SyncOp::put("notes", "a", b"1".to_vec())],
        ))
        .await
        .unwrap();
    assert_eq!(ok.position, 1);
    // Two good ops and a third whose expected version is stale: nothing.
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c1",
            2,
            t + 1,
            vec![
                SyncOp::put("notes", "b", b"2".to_vec()),
                SyncOp::delete("notes", "a"),
                SyncOp::put("notes", "c", b"3".to_vec()).with_expected_version(5),
            ],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Conflict(_)), "{err:?}");
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.position, 1, "nothing applied");
    assert_eq!(info.usage.records, 1);
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.records[0].id, "a");
    // The refused push did not consume seq 2.
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c1",
            2,
            t + 1,
            vec![
                SyncOp::put("notes", "b", b"2".to_vec()),
                SyncOp::delete("notes", "a"),
            ],
        ))
        .await
        .unwrap();
    assert!(!ok.duplicate);
    assert_eq!(ok.position, 3);
    assert_eq!(ok.usage.records, 1);
    e.close().await;
}

async fn conflicts_report_current_versions(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let r = e
        .push(SyncPushParams::new(
            SPACE,
            "c1",
            1,
            t,
            vec![SyncOp::put_fields("notes", "a", fields(&[("t", "x")])).with_expected_version(0)],
        ))
        .await
        .unwrap();
    assert_eq!(r.versions[0].version, 1);
    // "Must not exist" on an existing record, with values.
    let err = e
        .push(
            SyncPushParams::new(
                SPACE,
                "c2",
                1,
                t,
                vec![
                    SyncOp::put("notes", "a", b"y".to_vec()).with_expected_version(0),
                    SyncOp::put("notes", "new", b"z".to_vec()).with_expected_version(3),
                ],
            )
            .with_return_values(true),
        )
        .await
        .unwrap_err();
    let SyncError::Conflict(c) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(c.records.len(), 2);
    assert_eq!((c.records[0].id.as_str(), c.records[0].version), ("a", 1));
    assert_eq!(
        c.records[0].fields.as_ref().unwrap().0["t"].to_vec(),
        b"x".to_vec()
    );
    assert_eq!((c.records[1].id.as_str(), c.records[1].version), ("new", 0));
    let w = err.to_wire();
    assert_eq!(w.code, ErrorCode::Conflict);
    assert!(w.details.is_some());
    // The right version applies.
    e.push(SyncPushParams::new(
        SPACE,
        "c2",
        1,
        t,
        vec![SyncOp::put("notes", "a", b"y".to_vec()).with_expected_version(1)],
    ))
    .await
    .unwrap();
    assert_eq!(e.info(SPACE).await.unwrap().position, 2);
    e.close().await;
}

async fn idempotent_retry_across_a_reopen(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let push = SyncPushParams::new(
        SPACE,
        "phone",
        7,
        t,
        vec![
            SyncOp::put("notes", "a", b"1".to_vec()),
            SyncOp::put("notes", "b", b"2".to_vec()),
        ],
    );
    let first = e.push(push.clone()).await.unwrap();
    assert!(!first.duplicate);
    e.close().await;
    let e = engine(&fx, SyncConfig::default()).await;
    let again = e.push(push.clone()).await.unwrap();
    assert!(again.duplicate, "applied once, durably");
    assert_eq!(again.position, first.position);
    assert_eq!(again.usage, first.usage);
    // An older seq is a duplicate too; a newer one applies.
    let mut older = push.clone();
    older.seq = 3;
    assert!(e.push(older).await.unwrap().duplicate);
    let mut newer = push;
    newer.seq = 8;
    newer.hlc = t + 1;
    newer.ops = vec![SyncOp::delete("notes", "a")];
    let r = e.push(newer).await.unwrap();
    assert!(!r.duplicate);
    assert_eq!(r.usage.records, 1);
    e.close().await;
}

async fn lww_three_actors_with_skewed_clocks(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let base = u64::try_from(fx.clock.now_ms()).unwrap();
    // Clocks: a 30 s behind, b right, c 20 s ahead (within the skew).
    let (ta, tb, tc) = (hlc(base - 30_000, 0), hlc(base, 0), hlc(base + 20_000, 0));
    e.push(SyncPushParams::new(
        SPACE,
        "b",
        1,
        tb,
        vec![SyncOp::put_fields(
            "tasks",
            "t1",
            fields(&[("title", "b0"), ("done", "no")]),
        )],
    ))
    .await
    .unwrap();
    // c edits the title (wins: latest stamp), a edits the title later in
    // real time but with an older clock (loses), a and b edit different
    // fields (both kept).
    let pushes = [
        ("c", tc, vec![("title", "c")]),
        ("a", ta + 5, vec![("title", "a"), ("color", "red")]),
        ("b", tb + 1, vec![("done", "yes")]),
    ];
    for (i, (actor, t, f)) in pushes.iter().enumerate() {
        e.push(SyncPushParams::new(
            SPACE,
            *actor,
            2 + i as u64,
            *t,
            vec![SyncOp::patch("tasks", "t1", patch_fields(f))],
        ))
        .await
        .unwrap();
    }
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    let v = visible(&replica(&p.records));
    let f = &v[&("tasks".to_string(), "t1".to_string())];
    // a's put-older patch of a field nobody else wrote, stamped before b's
    // put: invisible (b's put at tb replaced the record).
    assert_eq!(f.get("title").unwrap(), b"c");
    assert_eq!(f.get("done").unwrap(), b"yes");
    assert!(
        f.get("color").is_none(),
        "older than the put that replaced the record"
    );
    // Same-ms ties break on the actor: "z" > "y".
    for (seq, actor) in [(1, "z"), (1, "y")] {
        e.push(SyncPushParams::new(
            SPACE,
            actor,
            seq + 10,
            tc + 100,
            vec![SyncOp::patch(
                "tasks",
                "t1",
                patch_fields(&[("title", actor)]),
            )],
        ))
        .await
        .unwrap();
    }
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    let v = visible(&replica(&p.records));
    assert_eq!(v[&("tasks".to_string(), "t1".to_string())]["title"], b"z");
    // The hub's clock moved to c's timestamp: it answers at least that.
    assert!(e.hlc().peek() >= tc + 100);
    e.close().await;
}

async fn the_skew_clamp_refuses_wild_clocks(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let base = u64::try_from(fx.clock.now_ms()).unwrap();
    let wild = hlc(base + 61_000, 0);
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            1,
            wild,
            vec![SyncOp::put("n", "a", b"1".to_vec())],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Skew(_)), "{err:?}");
    assert_eq!(err.to_wire().code, ErrorCode::ClockSkew);
    // An op's own timestamp is checked too.
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            1,
            hlc(base, 0),
            vec![SyncOp::put("n", "a", b"1".to_vec()).with_hlc(wild)],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Skew(_)));
    assert_eq!(e.info(SPACE).await.unwrap().position, 0, "nothing applied");
    // When the hub's clock catches up it is accepted.
    fx.clock.advance(2_000);
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        wild,
        vec![SyncOp::put("n", "a", b"1".to_vec())],
    ))
    .await
    .unwrap();
    e.close().await;
}

async fn tombstone_horizon_answers_reset(fx: Fixture) {
    let mut cfg = SyncConfig::default();
    cfg.tombstone_horizon = Duration::from_secs(3600);
    let e = engine(&fx, cfg).await;
    let t = now(&fx);
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        t,
        vec![
            SyncOp::put("n", "a", b"1".to_vec()),
            SyncOp::put("n", "b", b"2".to_vec()),
        ],
    ))
    .await
    .unwrap();
    let first = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(first.last.cursor, 2);
    let epoch = first.last.epoch.clone();
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        2,
        t + 1,
        vec![SyncOp::delete("n", "a")],
    ))
    .await
    .unwrap();
    // Before the horizon: the tombstone syncs.
    let p = pull(&e, SyncPullParams::new(SPACE).with_cursor(&epoch, 2)).await;
    assert!(!p.last.reset);
    assert_eq!(p.records.len(), 1);
    assert!(p.records[0].deleted);
    fx.clock.advance(3_600_001);
    let report = e.sweep().await.unwrap();
    assert_eq!(report.purged, 1);
    // The old cursor is now below the horizon: reset with a snapshot.
    let p = pull(&e, SyncPullParams::new(SPACE).with_cursor(&epoch, 2)).await;
    assert!(p.last.reset);
    assert_eq!(p.last.horizon, 3);
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.records[0].id, "b");
    // A cursor at the horizon is fine; another epoch is a reset.
    let p = pull(&e, SyncPullParams::new(SPACE).with_cursor(&epoch, 3)).await;
    assert!(!p.last.reset);
    assert!(p.records.is_empty());
    let p = pull(
        &e,
        SyncPullParams::new(SPACE).with_cursor("0000000000000000", 3),
    )
    .await;
    assert!(p.last.reset);
    e.close().await;
}

async fn expiry_writes_a_tombstone_that_syncs(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let expires = u64::try_from(fx.clock.now_ms()).unwrap() + 1_000;
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        t,
        vec![
            SyncOp::put("s", "session", b"x".to_vec()).with_expires_at(expires),
            SyncOp::put("s", "keep", b"y".to_vec()),
        ],
    ))
    .await
    .unwrap();
    let first = pull(&e, SyncPullParams::new(SPACE)).await;
    let rx = e.watch(SPACE);
    let mut live = LiveChanges::new(rx, first.last.cursor, None, false);
    assert_eq!(e.sweep().await.unwrap().expired, 0, "not yet");
    fx.clock.advance(1_000);
    assert_eq!(e.sweep().await.unwrap().expired, 1);
    let change = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.prev, Some(2));
    assert_eq!(change.cursor, 3);
    assert_eq!(change.records.len(), 1);
    assert!(change.records[0].deleted);
    assert_eq!(
        change.records[0].actor.as_deref(),
        Some(""),
        "the hub's stamp"
    );
    let p = pull(
        &e,
        SyncPullParams::new(SPACE).with_cursor(&first.last.epoch, first.last.cursor),
    )
    .await;
    assert_eq!(p.records.len(), 1);
    assert_eq!(p.records[0].id, "session");
    assert!(p.records[0].deleted);
    assert_eq!(e.info(SPACE).await.unwrap().usage.records, 1);
    e.close().await;
}

async fn quotas_refuse_and_report_usage(fx: Fixture) {
    let mut cfg = SyncConfig::default();
    cfg.max_records = 2;
    cfg.max_bytes = 100;
    let e = engine(&fx, cfg).await;
    let t = now(&fx);
    let three: Vec<SyncOp> = ["a", "b", "c"]
        .iter()
        .map(|id| SyncOp::put("n", *id, b"v".to_vec()))
        .collect();
    let err = e
        .push(SyncPushParams::new(SPACE, "c", 1, t, three))
        .await
        .unwrap_err();
    let SyncError::Quota(q) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(q.usage.records, 3);
    assert_eq!(err.to_wire().code, ErrorCode::QuotaExceeded);
    assert_eq!(e.info(SPACE).await.unwrap().position, 0, "nothing applied");
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            1,
            t,
            vec![
                SyncOp::put("n", "a", b"v".to_vec()),
                SyncOp::put("n", "b", b"v".to_vec()),
            ],
        ))
        .await
        .unwrap();
    // Bytes: collection (1) + id (1) + field "" (0) + value (1), twice.
    assert_eq!((ok.usage.records, ok.usage.bytes), (2, 6));
    // Bytes quota.
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 1,
            vec![SyncOp::put("n", "a", vec![0; 200])],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::Quota(_)));
    // A delete and a put in one push stay within the quota.
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 1,
            vec![
                SyncOp::delete("n", "a"),
                SyncOp::put("n", "c", b"v".to_vec()),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(ok.usage.records, 2);
    e.close().await;
}

async fn a_large_space_pulls_in_bounded_pages(fx: Fixture) {
    const N: usize = 100_000;
    let mut cfg = SyncConfig::default();
    cfg.max_records = N as u64;
    cfg.page_limit = 1000;
    let e = engine(&fx, cfg).await;
    let t = now(&fx);
    let mut seq = 0;
    let started = std::time::Instant::now();
    for chunk in (0..N).collect::<Vec<_>>().chunks(1000) {
        seq += 1;
        let ops = chunk
            .iter()
            .map(|i| {
                SyncOp::put(
                    format!("c{}", i % 3),
                    format!("r{i:06}"),
                    i.to_be_bytes().to_vec(),
                )
            })
            .collect();
        e.push(SyncPushParams::new(SPACE, "bulk", seq, t, ops))
            .await
            .unwrap();
    }
    let pushed = started.elapsed();
    let started = std::time::Instant::now();
    let p = pull(&e, SyncPullParams::new(SPACE).with_limit(5_000)).await;
    eprintln!(
        "{:?}: pushed {N} records in batches of 1000 in {pushed:?}, pulled them in {:?}",
        fx.backend,
        started.elapsed()
    );
    assert_eq!(p.records.len(), N);
    assert_eq!(p.last.count, N as u64);
    assert!(p.largest_chunk <= 1000, "pages are bounded by page_limit");
    assert!(p.chunks >= N / 1000);
    let m = replica(&p.records);
    assert_eq!(m.len(), N, "each record once");
    assert_eq!(checksums(&m), server_checksums(&p.last));
    // A collection filter.
    let p = pull(&e, SyncPullParams::new(SPACE).with_collection("c1")).await;
    assert_eq!(p.records.len(), N / 3);
    assert!(p.records.iter().all(|r| r.collection == "c1"));
    assert_eq!(p.last.checksums.len(), 1);
    e.close().await;
}

async fn checksums_detect_a_changed_record(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        t,
        vec![
            SyncOp::put_fields("a", "1", fields(&[("x", "1"), ("y", "2")])),
            SyncOp::put("a", "2", b"v".to_vec()),
            SyncOp::put("b", "1", b"w".to_vec()),
            SyncOp::delete("b", "gone"),
        ],
    ))
    .await
    .unwrap();
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    let mut m = replica(&p.records);
    assert_eq!(checksums(&m), server_checksums(&p.last));
    // Corrupt one local field: only collection "a" differs.
    let r = m.get_mut(&("a".to_string(), "1".to_string())).unwrap();
    r.fields
        .as_mut()
        .unwrap()
        .0
        .insert("x".into(), b"9".to_vec().into());
    let (local, server) = (checksums(&m), server_checksums(&p.last));
    assert_ne!(local["a"], server["a"]);
    assert_eq!(local["b"], server["b"]);
    // Incremental upkeep agrees with a recomputation after more changes.
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        2,
        t + 1,
        vec![
            SyncOp::patch("a", "1", patch_fields(&[("x", "3")])),
            SyncOp::delete("a", "2"),
        ],
    ))
    .await
    .unwrap();
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(checksums(&replica(&p.records)), server_checksums(&p.last));
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.collections.len(), 2);
    assert_eq!(info.collections[0].records, 1);
    e.close().await;
}

async fn live_changes_resume_exactly(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let put = |seq: u64, id: &str| {
        SyncPushParams::new(
            SPACE,
            "c",
            seq,
            t + seq,
            vec![SyncOp::put("n", id, b"v".to_vec())],
        )
    };
    e.push(put(1, "a")).await.unwrap();
    // Watch first, then pull; a push lands between the two.
    let rx = e.watch(SPACE);
    e.push(put(2, "b")).await.unwrap();
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(p.last.cursor, 2);
    let mut live = LiveChanges::new(rx, p.last.cursor, None, false);
    let ack = e.push(put(3, "c")).await.unwrap();
    let c = tokio::time::timeout(Duration::from_secs(5), live.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (c.prev, c.cursor),
        (Some(2), ack.position),
        "b not repeated"
    );
    assert_eq!(c.records[0].id, "c");
    // A notify-only watcher of another space's neighbour sees nothing of
    // this one; a resume by cursor gets exactly what followed.
    let p2 = pull(&e, SyncPullParams::new(SPACE).with_cursor(&p.last.epoch, 2)).await;
    assert_eq!(p2.records.len(), 1);
    assert_eq!(p2.records[0].id, "c");
    e.close().await;
}

async fn invalid_pushes_are_refused(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let cases = [
        SyncPushParams::new("bad..space", "c", 1, t, vec![SyncOp::delete("n", "a")]),
        SyncPushParams::new(SPACE, "", 1, t, vec![SyncOp::delete("n", "a")]),
        SyncPushParams::new(SPACE, "c", 0, t, vec![SyncOp::delete("n", "a")]),
        SyncPushParams::new(SPACE, "c", 1, t, vec![]),
        SyncPushParams::new(SPACE, "c", 1, t, vec![SyncOp::delete("", "a")]),
        SyncPushParams::new(
            SPACE,
            "c",
            1,
            t,
            vec![SyncOp::patch("n", "a", BTreeMap::new())],
        ),
    ];
    for p in cases {
        let err = e.push(p.clone()).await.unwrap_err();
        assert_eq!(err.to_wire().code, ErrorCode::InvalidParams, "{p:?}");
    }
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            1,
            t,
            vec![SyncOp::put("n", "a", vec![0; 300 << 10])],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.to_wire().code, ErrorCode::PayloadTooLarge);
    e.close().await;
}

async fn a_delete_during_a_snapshot_pull_is_sent(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let ops = (0..6)
        .map(|i| SyncOp::put("n", format!("r{i}"), b"v".to_vec()))
        .collect();
    e.push(SyncPushParams::new(SPACE, "c", 1, t, ops))
        .await
        .unwrap();
    // A snapshot skips old tombstones...
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        2,
        t + 1,
        vec![SyncOp::delete("n", "r5")],
    ))
    .await
    .unwrap();
    let mut p = e
        .pull(&SyncPullParams::new(SPACE).with_limit(2))
        .await
        .unwrap();
    let Some(PullStep::Chunk(first)) = p.next().await.unwrap() else {
        panic!("a chunk first")
    };
    let first = first.decode().unwrap();
    assert_eq!(first.records[0].id, "r0");
    // ...but not one made while it runs, of a record it already sent.
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        3,
        t + 2,
        vec![SyncOp::delete("n", "r0")],
    ))
    .await
    .unwrap();
    let mut got = first.records;
    while let Some(step) = p.next().await.unwrap() {
        if let PullStep::Chunk(c) = step {
            got.extend(c.decode().unwrap().records);
        }
    }
    let m = replica(&got);
    assert!(m[&("n".to_string(), "r0".to_string())].deleted);
    assert!(!m.contains_key(&("n".to_string(), "r5".to_string())));
    assert_eq!(visible(&m).len(), 4);
    e.close().await;
}

async fn concurrent_pushes_group_commit(fx: Fixture) {
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    // 16 clients at once, each pushing its mutations in order (a client's
    // seq must increase: a later seq first would make an earlier one a
    // duplicate).
    let mut tasks = Vec::new();
    for c in 0..16u64 {
        let e = e.clone();
        tasks.push(tokio::spawn(async move {
            let mut positions = Vec::new();
            for seq in 1..=4u64 {
                let r = e
                    .push(SyncPushParams::new(
                        SPACE,
                        format!("c{c}"),
                        seq,
                        t + seq,
                        vec![
                            SyncOp::put("n", format!("{c}-{seq}"), b"v".to_vec()),
                            SyncOp::patch(
                                "shared",
                                "doc",
                                patch_fields(&[(&format!("f{c}"), "x")]),
                            ),
                        ],
                    ))
                    .await
                    .unwrap();
                assert!(!r.duplicate);
                positions.push(r.position);
            }
            positions
        }));
    }
    let mut positions = Vec::new();
    for t in tasks {
        positions.extend(t.await.unwrap());
    }
    positions.sort_unstable();
    positions.dedup();
    assert_eq!(positions.len(), 64, "each push has its own commit position");
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.usage.records, 65);
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    let v = visible(&replica(&p.records));
    assert_eq!(
        v[&("shared".to_string(), "doc".to_string())].len(),
        16,
        "every field merged"
    );
    assert_eq!(checksums(&replica(&p.records)), server_checksums(&p.last));
    e.close().await;
}

/// The record's visible fields as one pull sees them, with its version.
async fn stored(e: &SyncEngine) -> (u64, BTreeMap<String, Vec<u8>>) {
    let p = pull(e, SyncPullParams::new(SPACE)).await;
    assert_eq!(p.records.len(), 1);
    let r = &p.records[0];
    let f = r.fields.clone().unwrap_or_default().0;
    (
        r.version,
        f.into_iter().map(|(k, v)| (k, v.to_vec())).collect(),
    )
}

async fn the_record_bound_applies_to_the_merged_record(fx: Fixture) {
    // size = len("n") + len("a") + Σ (name + value): 100 at most.
    let mut config = SyncConfig::default();
    config.max_record_bytes = 100;
    let e = engine(&fx, config).await;
    let t = now(&fx);
    let x60 = "x".repeat(60);
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            1,
            t,
            vec![SyncOp::patch("n", "a", patch_fields(&[("x", &x60)]))],
        ))
        .await
        .unwrap();
    assert_eq!(ok.position, 1);
    let before = stored(&e).await;
    // Each patch is under the bound (63 bytes), their merge is not (124).
    let y60 = "y".repeat(60);
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 1,
            vec![SyncOp::patch("n", "a", patch_fields(&[("y", &y60)]))],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::TooLarge(_)), "{err:?}");
    assert_eq!(err.to_wire().code, ErrorCode::PayloadTooLarge);
    // Two ops of one push on one record: the merge counts, nothing applied.
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 1,
            vec![
                SyncOp::put("n", "b", b"other".to_vec()),
                SyncOp::patch("n", "a", patch_fields(&[("y", "1")])),
                SyncOp::patch("n", "a", patch_fields(&[("z", &y60)])),
            ],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::TooLarge(_)), "{err:?}");
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.position, 1, "nothing applied");
    assert_eq!(info.usage.records, 1);
    assert_eq!(info.usage.bytes, 63);
    assert_eq!(stored(&e).await, before, "the record is unchanged");
    // Exactly at the bound is accepted (63 + 1 + 36 = 100); the refusals
    // did not consume seq 2.
    let y36 = "y".repeat(36);
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 2,
            vec![SyncOp::patch("n", "a", patch_fields(&[("y", &y36)]))],
        ))
        .await
        .unwrap();
    assert!(!ok.duplicate);
    assert_eq!(ok.position, 2);
    assert_eq!(ok.usage.bytes, 100);
    // At the bound, growing by one byte is refused...
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            3,
            t + 3,
            vec![SyncOp::patch(
                "n",
                "a",
                patch_fields(&[("x", &"x".repeat(61))]),
            )],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::TooLarge(_)), "{err:?}");
    // ...replacing a field with a smaller value is accepted.
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            3,
            t + 3,
            vec![SyncOp::patch("n", "a", patch_fields(&[("x", "small")]))],
        ))
        .await
        .unwrap();
    assert_eq!(ok.position, 3);
    assert_eq!(ok.usage.bytes, 100 - 55);
    let (version, f) = stored(&e).await;
    assert_eq!(version, 3);
    assert_eq!(f, fields(&[("x", "small"), ("y", &y36)]));
    e.close().await;
}

async fn the_field_bound_applies_to_the_merged_record(fx: Fixture) {
    // Each push adds 200 fields (under the 256 per op); the second would
    // leave the record with 400 visible fields: refused whole.
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let names = |from: usize| -> BTreeMap<String, Option<Vec<u8>>> {
        (from..from + 200)
            .map(|n| (format!("f{n}"), Some(vec![1])))
            .collect()
    };
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        t,
        vec![SyncOp::patch("n", "a", names(0))],
    ))
    .await
    .unwrap();
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 1,
            vec![SyncOp::patch("n", "a", names(200))],
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, SyncError::TooLarge(_)), "{err:?}");
    assert_eq!(err.to_wire().code, ErrorCode::PayloadTooLarge);
    let (version, f) = stored(&e).await;
    assert_eq!((version, f.len()), (1, 200), "nothing applied");
    // Up to exactly 256 is accepted; replacing fields of a full record too.
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            2,
            t + 2,
            vec![SyncOp::patch(
                "n",
                "a",
                (200..256)
                    .map(|n| (format!("f{n}"), Some(vec![2])))
                    .collect(),
            )],
        ))
        .await
        .unwrap();
    assert_eq!(ok.position, 2);
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            3,
            t + 3,
            vec![SyncOp::patch("n", "a", names(0))],
        ))
        .await
        .unwrap();
    assert_eq!(ok.position, 3);
    assert_eq!(stored(&e).await.1.len(), 256);
    e.close().await;
}

async fn one_group_applies_its_pushes_in_order(fx: Fixture) {
    // Submitted before the writer runs, so they share one transaction: each
    // push sees the ones before it, a refused one changes nothing, and a
    // record changed twice is stored once with its last change.
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    // Each push stamped later than the one before it (LWW would otherwise
    // keep the newer value).
    let stamp = std::sync::atomic::AtomicU64::new(t);
    let put = |seq: u64, client: &str, v: &[u8], expected: Option<u64>| {
        let mut op = SyncOp::put("n", "a", v.to_vec());
        op.expected_version = expected;
        let hlc = stamp.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        SyncPushParams::new(SPACE, client, seq, hlc, vec![op])
    };
    let futs = vec![
        e.submit(put(1, "c1", b"one", Some(0))).unwrap(),
        e.submit(put(2, "c1", b"two", Some(1))).unwrap(),
        // A stale expectation (the record is at 2 by now): refused.
        e.submit(put(1, "c2", b"stale", Some(1))).unwrap(),
        // The same seq again in the group: a duplicate.
        e.submit(put(2, "c1", b"dup", None)).unwrap(),
        // The refusal did not consume c2's seq 1.
        e.submit(put(1, "c2", b"three", Some(2))).unwrap(),
    ];
    let mut results = Vec::new();
    for f in futs {
        results.push(f.await);
    }
    assert_eq!(results[0].as_ref().unwrap().position, 1);
    assert_eq!(results[1].as_ref().unwrap().position, 2);
    assert!(
        matches!(results[2], Err(SyncError::Conflict(_))),
        "{:?}",
        results[2]
    );
    let dup = results[3].as_ref().unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.position, 2);
    let last = results[4].as_ref().unwrap();
    assert!(!last.duplicate);
    assert_eq!(last.position, 3);
    assert_eq!(last.usage.records, 1);
    let (version, f) = stored(&e).await;
    assert_eq!(version, 3);
    assert_eq!(f, fields(&[("", "three")]));
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.position, 3);
    assert_eq!(info.collections.len(), 1);
    assert_eq!(info.collections[0].records, 1);
    // Both clients' seqs are stored: a retry after a reopen is a duplicate.
    e.close().await;
    let e = engine(&fx, SyncConfig::default()).await;
    assert!(e.push(put(2, "c1", b"x", None)).await.unwrap().duplicate);
    assert!(e.push(put(1, "c2", b"x", None)).await.unwrap().duplicate);
    e.close().await;
}

async fn rows_from_before_the_wire_column_pull_the_same(fx: Fixture) {
    // Rows written before migration 0003 have no stored wire form (Y21):
    // a pull encodes them from their columns, byte for byte the same.
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let mut op = SyncOp::put("n", "b", b"2".to_vec());
    op.expires_at = Some(u64::MAX / 4);
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        1,
        t,
        vec![
            SyncOp::put("n", "a", b"1".to_vec()),
            op,
            SyncOp::patch("m", "c", patch_fields(&[("f", "x"), ("g", "y")])),
            SyncOp::put("n", "d", b"gone".to_vec()),
        ],
    ))
    .await
    .unwrap();
    e.push(SyncPushParams::new(
        SPACE,
        "c",
        2,
        t + 1,
        vec![SyncOp::delete("n", "d")],
    ))
    .await
    .unwrap();
    let before = pull(&e, SyncPullParams::new(SPACE)).await;
    // From a cursor, the tombstone too.
    let from = |f: &SyncPullFinal| SyncPullParams::new(SPACE).with_cursor(f.epoch.clone(), 1);
    let before_tail = pull(&e, from(&before.last)).await;
    assert!(before_tail.records.iter().any(|r| r.deleted));
    e.close().await;
    set_wire(&fx, "NULL").await;
    let e = engine(&fx, SyncConfig::default()).await;
    let after = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(
        after.records.len(),
        3,
        "a snapshot leaves the tombstone out"
    );
    assert_eq!(after.records, before.records);
    assert_eq!(after.last, before.last);
    let after_tail = pull(&e, from(&after.last)).await;
    assert_eq!(after_tail.records, before_tail.records);
    e.close().await;
    // A stored form that is not one well-formed CBOR item is never sent:
    // the pull fails (`unavailable`) instead of breaking the client's frame.
    set_wire(&fx, "X'FF'").await;
    let e = engine(&fx, SyncConfig::default()).await;
    let mut p = e.pull(&SyncPullParams::new(SPACE)).await.unwrap();
    let err = p.next().await.unwrap_err();
    assert_eq!(err.to_wire().code, ErrorCode::Unavailable, "{err:?}");
    drop(p);
    e.close().await;
}

/// Sets every record row's stored wire form to the SQL `value`.
async fn set_wire(fx: &Fixture, value: &str) {
    match fx.options.backend().unwrap() {
        store_backend::Sqlite => {
            let path = fx.options.sqlite_path().unwrap();
            let mut c = sqlx::SqliteConnection::connect(&format!("sqlite:{}", path.display()))
                .await
                .unwrap();
            sqlx::query(&format!("UPDATE sync_records SET wire = {value}"))
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        store_backend::Postgres => {
            let value = if value == "X'FF'" {
                "'\\xff'::bytea"
            } else {
                value
            };
            let mut c = sqlx::PgConnection::connect(&fx.options.url).await.unwrap();
            let sql = format!(
                "SET search_path TO {}; UPDATE sync_records SET wire = {value}",
                fx.options.schema
            );
            sqlx::Executor::execute(&mut c, sql.as_str()).await.unwrap();
            c.close().await.unwrap();
        }
    }
}

async fn a_space_holds_at_most_1024_collections(fx: Fixture) {
    // The final chunk lists every collection's checksum: the bound keeps it
    // within one frame.
    let e = engine(&fx, SyncConfig::default()).await;
    let t = now(&fx);
    let ops = |from: usize, to: usize| -> Vec<SyncOp> {
        (from..to)
            .map(|n| SyncOp::put(format!("c{n}"), "r", b"v".to_vec()))
            .collect()
    };
    e.push(SyncPushParams::new(SPACE, "c", 1, t, ops(0, 1000)))
        .await
        .unwrap();
    e.push(SyncPushParams::new(SPACE, "c", 2, t, ops(1000, 1024)))
        .await
        .unwrap();
    let err = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            3,
            t,
            vec![
                SyncOp::put("c0", "other", b"v".to_vec()),
                SyncOp::put("c1024", "r", b"v".to_vec()),
            ],
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SyncError::TooManyCollections(1024)),
        "{err:?}"
    );
    assert_eq!(err.to_wire().code, ErrorCode::QuotaExceeded);
    // Nothing applied; existing collections still take records, and a
    // collection emptied by deletes still counts.
    let ok = e
        .push(SyncPushParams::new(
            SPACE,
            "c",
            3,
            t + 1,
            vec![
                SyncOp::put("c0", "other", b"v".to_vec()),
                SyncOp::delete("c5", "r"),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(ok.usage.records, 1024);
    let info = e.info(SPACE).await.unwrap();
    assert_eq!(info.collections.len(), 1024);
    let p = pull(&e, SyncPullParams::new(SPACE)).await;
    assert_eq!(p.last.checksums.len(), 1024);
    e.close().await;
}

async fn a_lagging_live_watcher_ends_and_resumes_by_cursor(fx: Fixture) {
    // A watcher more than `live_buffer` commits behind ends with
    // `unavailable` (retryable); a pull from its cursor then has all it
    // missed.
    let mut config = SyncConfig::default();
    config.live_buffer = 2;
    let e = engine(&fx, config).await;
    let t = now(&fx);
    let rx = e.watch(SPACE);
    let mut live = LiveChanges::new(rx, 0, None, false);
    for seq in 1..=4u64 {
        e.push(SyncPushParams::new(
            SPACE,
            "c",
            seq,
            t + seq,
            vec![SyncOp::put("n", format!("r{seq}"), b"v".to_vec())],
        ))
        .await
        .unwrap();
    }
    let err = live.next().await.unwrap_err();
    assert!(matches!(err, SyncError::Lagged), "{err:?}");
    let wire = err.to_wire();
    assert_eq!(wire.code, ErrorCode::Unavailable);
    assert!(wire.retry_after_ms.is_some());
    let info = e.info(SPACE).await.unwrap();
    let p = pull(&e, SyncPullParams::new(SPACE).with_cursor(&info.epoch, 0)).await;
    assert_eq!(p.records.len(), 4);
    e.close().await;
}

macro_rules! sync_suite {
    ($($name:ident),* $(,)?) => { suite!($($name),*); };
}

sync_suite!(
    all_or_nothing_batches,
    conflicts_report_current_versions,
    idempotent_retry_across_a_reopen,
    lww_three_actors_with_skewed_clocks,
    the_skew_clamp_refuses_wild_clocks,
    tombstone_horizon_answers_reset,
    expiry_writes_a_tombstone_that_syncs,
    quotas_refuse_and_report_usage,
    a_large_space_pulls_in_bounded_pages,
    checksums_detect_a_changed_record,
    live_changes_resume_exactly,
    invalid_pushes_are_refused,
    a_delete_during_a_snapshot_pull_is_sent,
    concurrent_pushes_group_commit,
    the_record_bound_applies_to_the_merged_record,
    the_field_bound_applies_to_the_merged_record,
    one_group_applies_its_pushes_in_order,
    rows_from_before_the_wire_column_pull_the_same,
    a_space_holds_at_most_1024_collections,
    a_lagging_live_watcher_ends_and_resumes_by_cursor,
);

mod convergence {
    //! Random interleavings of pushes from several replicas converge: the
    //! same operations pushed in any order give the same visible state.
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Edit {
        Put(u8, u8),
        Patch(u8, u8, Option<u8>),
        Delete(u8),
    }

    fn edit() -> impl Strategy<Value = Edit> {
        prop_oneof![
            (0..3u8, 0..4u8).prop_map(|(r, v)| Edit::Put(r, v)),
            (0..3u8, 0..3u8, proptest::option::of(0..4u8))
                .prop_map(|(r, f, v)| Edit::Patch(r, f, v)),
            (0..3u8).prop_map(Edit::Delete),
        ]
    }

    fn op(e: &Edit, t: u64) -> SyncOp {
        match e {
            Edit::Put(r, v) => SyncOp::put_fields(
                "c",
                format!("r{r}"),
                BTreeMap::from([("f0".to_string(), vec![*v])]),
            ),
            Edit::Patch(r, f, v) => SyncOp::patch(
                "c",
                format!("r{r}"),
                BTreeMap::from([(format!("f{f}"), v.map(|v| vec![v]))]),
            ),
            Edit::Delete(r) => SyncOp::delete("c", format!("r{r}")),
        }
        .with_hlc(t)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(12))]
        #[test]
        fn interleavings_converge(
            // Per replica: (edit, hlc offset in ms; offsets may collide).
            edits in proptest::collection::vec(
                proptest::collection::vec((edit(), 0..20u64), 1..6), 3),
            order in proptest::collection::vec(0..3usize, 0..40),
            batch in 1..4usize,
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let fx = Fixture::sqlite().await;
                let e = engine(&fx, SyncConfig::default()).await;
                let base = u64::try_from(fx.clock.now_ms()).unwrap() - 60_000;
                // Stamps per replica increase with its edits (HLC).
                let ops: Vec<Vec<SyncOp>> = edits.iter().map(|list| {
                    let mut t = base;
                    list.iter().map(|(ed, dt)| { t += dt + 1; op(ed, hlc(t, 0)) }).collect()
                }).collect();
                // Space A: each replica pushes all of its edits in turn.
                for (i, list) in ops.iter().enumerate() {
                    e.push(SyncPushParams::new("conv.a", format!("r{i}"), 1, hlc(base, 0), list.clone())).await.unwrap();
                }
                // Space B: the replicas' pushes interleave as `order` says, in
                // batches, with a retried (duplicate) push now and then.
                let mut next = [0usize; 3];
                let mut seq = [0u64; 3];
                let mut schedule: Vec<usize> = order.clone();
                schedule.extend([0, 1, 2].iter().flat_map(|r| std::iter::repeat_n(*r, 6)));
                for r in schedule {
                    let list = &ops[r];
                    if next[r] >= list.len() { continue; }
                    let end = (next[r] + batch).min(list.len());
                    seq[r] += 1;
                    let p = SyncPushParams::new("conv.b", format!("r{r}"), seq[r], hlc(base, 0), list[next[r]..end].to_vec());
                    e.push(p.clone()).await.unwrap();
                    if seq[r] % 2 == 0 {
                        assert!(e.push(p).await.unwrap().duplicate);
                    }
                    next[r] = end;
                }
                let a = pull(&e, SyncPullParams::new("conv.a")).await;
                let b = pull(&e, SyncPullParams::new("conv.b")).await;
                assert_eq!(visible(&replica(&a.records)), visible(&replica(&b.records)));
                e.close().await;
            });
        }

        #[test]
        fn replicas_pulling_between_pushes_converge(
            edits in proptest::collection::vec(
                proptest::collection::vec((edit(), 0..20u64), 1..8), 3),
            // (replica, action): 0 push the next edit, 1 pull one chunk,
            // 2 disconnect (drop the pull in progress).
            actions in proptest::collection::vec((0..3usize, 0..3u8), 0..60),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let fx = Fixture::sqlite().await;
                let e = engine(&fx, SyncConfig::default()).await;
                let base = u64::try_from(fx.clock.now_ms()).unwrap() - 60_000;
                let ops: Vec<Vec<SyncOp>> = edits.iter().map(|list| {
                    let mut t = base;
                    list.iter().map(|(ed, dt)| { t += dt + 1; op(ed, hlc(t, 0)) }).collect()
                }).collect();
                struct Replica {
                    local: BTreeMap<(String, String), SyncRecord>,
                    cursor: u64,
                    epoch: String,
                    pull: Option<plexus_server::sync::Pull>,
                    next: usize,
                }
                let mut reps: Vec<Replica> = (0..3).map(|_| Replica {
                    local: BTreeMap::new(), cursor: 0, epoch: String::new(), pull: None, next: 0,
                }).collect();
                let params = |r: &Replica| {
                    SyncPullParams::new("conv.p").with_cursor(&r.epoch, r.cursor).with_limit(2)
                };
                let mut schedule = actions.clone();
                // Finally every replica pushes the rest and pulls to the end.
                for r in 0..3 {
                    schedule.extend(std::iter::repeat_n((r, 0u8), 8));
                }
                for (r, action) in schedule {
                    let rep = &mut reps[r];
                    match action {
                        0 if rep.next < ops[r].len() => {
                            let seq = rep.next as u64 + 1;
                            e.push(SyncPushParams::new(
                                "conv.p", format!("r{r}"), seq, hlc(base, 0),
                                vec![ops[r][rep.next].clone()],
                            )).await.unwrap();
                            rep.next += 1;
                        }
                        1 => {
                            if rep.pull.is_none() {
                                let p = e.pull(&params(rep)).await.unwrap();
                                if p.is_reset() { rep.local.clear(); }
                                rep.pull = Some(p);
                            }
                            match rep.pull.as_mut().unwrap().next().await.unwrap() {
                                Some(PullStep::Chunk(c)) => {
                                    let c = c.decode().unwrap();
                                    for rec in c.records {
                                        rep.local.insert((rec.collection.clone(), rec.id.clone()), rec);
                                    }
                                    rep.cursor = c.cursor;
                                }
                                Some(PullStep::Final(f)) => {
                                    rep.cursor = f.cursor;
                                    rep.epoch = f.epoch;
                                    rep.pull = None;
                                }
                                None => rep.pull = None,
                            }
                        }
                        2 => rep.pull = None,
                        _ => {}
                    }
                }
                let server = pull(&e, SyncPullParams::new("conv.p")).await;
                let want = visible(&replica(&server.records));
                for rep in &mut reps {
                    rep.pull = None;
                    let p = e.pull(&params(rep)).await.unwrap();
                    if p.is_reset() { rep.local.clear(); }
                    let mut p = p;
                    while let Some(step) = p.next().await.unwrap() {
                        if let PullStep::Chunk(c) = step {
                            for rec in c.decode().unwrap().records {
                                rep.local.insert((rec.collection.clone(), rec.id.clone()), rec);
                            }
                        }
                    }
                    assert_eq!(visible(&rep.local), want);
                    assert_eq!(checksums(&rep.local), server_checksums(&server.last));
                }
                e.close().await;
            });
        }
    }
}
