//! §24: record sync — `sync.push` (ack, idempotent retry, expected
//! versions and conflicts, all-or-nothing, last-write-wins patches, the
//! skew clamp, quotas), `sync.pull` (chunks, the final chunk and its
//! checksums, cursors, resets, live changes), `sync.info` and the
//! `sync_read` / `sync_write` capabilities.
//!
//! A server need not serve record sync, and which quota it applies is not
//! announced, so these cases need `--sync` (and, for the quota case,
//! `--sync-max-records` with the server's `max_records` per space); without
//! them, or when the server answers `method_not_found`, they skip.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::util::*;
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::conn::Conn;
use crate::frame::{ErrorObject, Frame, Item};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

/// How long a pull may take to reach the end of its catch-up.
const PULL_WAIT: Duration = Duration::from_secs(10);

/// The collection the cases write.
const COLL: &str = "notes";

/// An HLC value of `ms` and `counter` (§24.3).
fn hlc(ms: u64, counter: u16) -> u64 {
    ((ms & 0xffff_ffff_ffff) << 16) | u64::from(counter)
}

/// The local wall clock, Unix milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// 64-bit FNV-1a (§24.8).
struct Fnv(u64);

impl Fnv {
    fn eat(&mut self, b: &[u8]) {
        for x in b {
            self.0 ^= u64::from(*x);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    fn chunk(&mut self, b: &[u8]) {
        self.eat(&u32::try_from(b.len()).unwrap_or(u32::MAX).to_be_bytes());
        self.eat(b);
    }
}

/// The record hash of §24.8.
fn record_hash(
    collection: &str,
    id: &str,
    version: u64,
    fields: &BTreeMap<String, Vec<u8>>,
) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    h.chunk(collection.as_bytes());
    h.chunk(id.as_bytes());
    h.eat(&version.to_be_bytes());
    // BTreeMap<String, _> iterates in bytewise order of the names.
    for (k, v) in fields {
        h.chunk(k.as_bytes());
        h.chunk(v);
    }
    h.0
}

/// The space of this case (a topic name unique to the run and case).
fn space(ctx: &Ctx, suffix: &str) -> CaseResult<String> {
    if !ctx.settings().sync {
        skip!(
            "needs --sync: the server serves record sync (§24; the reference hub's [sync] table)"
        );
    }
    Ok(format!("{}.{suffix}", ctx.ns()))
}

/// Claims with only these sync capabilities (and nothing else).
fn sync_claims(ctx: &Ctx, tag: &str, read: &[&str], write: &[&str]) -> serde_json::Value {
    let mut c = ctx.claims(&ctx.user(tag));
    c["plexus"] = json!({"sync_read": read, "sync_write": write});
    c
}

/// Calls a sync method; a server that does not know it skips the case.
async fn call(c: &mut Conn, method: &str, params: &Value) -> CaseResult<Result<Item, ErrorObject>> {
    match call_paced(c, method, params).await? {
        Err(e) if e.code == "method_not_found" => {
            skip!("the server does not serve {method} (answered method_not_found, §24)")
        }
        other => Ok(other),
    }
}

/// Calls and expects success.
async fn ok(c: &mut Conn, method: &str, params: &Value) -> CaseResult<Value> {
    match call(c, method, params).await? {
        Ok(r) => Ok(r.value),
        Err(e) => fail!("{method} {params} answered {} ({})", e.code, e.message),
    }
}

/// Calls and expects the error `code`.
async fn err(c: &mut Conn, method: &str, params: &Value, code: &str) -> CaseResult<ErrorObject> {
    match call(c, method, params).await? {
        Ok(r) => fail!(
            "{method} {params} succeeded with {}; expected {code}",
            r.value
        ),
        Err(e) if e.code == code => Ok(e),
        Err(e) => fail!(
            "{method} {params} answered {} ({}); expected {code}",
            e.code,
            e.message
        ),
    }
}

/// A `put` of an opaque value.
fn put(id: &str, value: &[u8]) -> Vec<(u64, Value)> {
    vec![
        (0, Value::text("put")),
        (1, Value::text(COLL)),
        (2, Value::text(id)),
        (3, Value::Bytes(value.to_vec())),
    ]
}

/// A `patch` of text fields (`None` removes one).
fn patch(id: &str, fields: &[(&str, Option<&[u8]>)]) -> Vec<(u64, Value)> {
    let f = Value::Map(
        fields
            .iter()
            .map(|(k, v)| {
                (
                    Value::text(*k),
                    v.map_or(Value::Null, |b| Value::Bytes(b.to_vec())),
                )
            })
            .collect(),
    );
    vec![
        (0, Value::text("patch")),
        (1, Value::text(COLL)),
        (2, Value::text(id)),
        (4, f),
    ]
}

/// A `delete`.
fn delete(id: &str) -> Vec<(u64, Value)> {
    vec![
        (0, Value::text("delete")),
        (1, Value::text(COLL)),
        (2, Value::text(id)),
    ]
}

/// An op with extra keys.
fn with(mut op: Vec<(u64, Value)>, extra: &[(u64, Value)]) -> Value {
    op.extend(extra.iter().cloned());
    Value::map(op)
}

/// `sync.push` params.
fn push_params(space: &str, client: &str, seq: u64, at: u64, ops: Vec<Value>) -> Value {
    Value::map([
        (0, Value::text(space)),
        (1, Value::text(client)),
        (2, Value::Uint(seq)),
        (3, Value::Uint(at)),
        (4, Value::Array(ops)),
    ])
}

/// A checked push result (§24.5).
#[derive(Debug, Clone)]
struct Ack {
    position: u64,
    hlc: u64,
    records: u64,
    bytes: u64,
    duplicate: bool,
    versions: Vec<(String, String, u64)>,
}

fn u(v: &Value, k: u64, what: &str) -> CaseResult<u64> {
    match v.opt(k) {
        Some(Value::Uint(n)) => Ok(*n),
        other => fail!("{what}: key {k} is {other:?}, not a uint (§24); in {v}"),
    }
}

fn t(v: &Value, k: u64, what: &str) -> CaseResult<String> {
    match v.opt(k) {
        Some(Value::Text(s)) => Ok(s.clone()),
        other => fail!("{what}: key {k} is {other:?}, not a text (§24); in {v}"),
    }
}

fn b(v: &Value, k: u64, what: &str) -> CaseResult<bool> {
    match v.opt(k) {
        Some(Value::Bool(x)) => Ok(*x),
        other => fail!("{what}: key {k} is {other:?}, not a bool (§24); in {v}"),
    }
}

fn arr<'a>(v: &'a Value, k: u64, what: &str) -> CaseResult<&'a [Value]> {
    match v.opt(k).and_then(Value::as_array) {
        Some(a) => Ok(a),
        None => fail!("{what}: key {k} is not an array (§24); in {v}"),
    }
}

fn ack_of(v: &Value) -> CaseResult<Ack> {
    crate::frame::typed_map(v).map_err(CaseError::Fail)?;
    let usage = v.opt(2).cloned().unwrap_or(Value::Null);
    let mut versions = Vec::new();
    for e in arr(v, 4, "push result versions")? {
        versions.push((
            t(e, 0, "version entry")?,
            t(e, 1, "version entry")?,
            u(e, 2, "version entry")?,
        ));
    }
    Ok(Ack {
        position: u(v, 0, "push result position")?,
        hlc: u(v, 1, "push result hlc")?,
        records: u(&usage, 0, "push result usage")?,
        bytes: u(&usage, 1, "push result usage")?,
        duplicate: b(v, 3, "push result duplicate")?,
        versions,
    })
}

async fn push(c: &mut Conn, params: &Value) -> CaseResult<Ack> {
    ack_of(&ok(c, "sync.push", params).await?)
}

/// A pulled record (§24.6).
#[derive(Debug, Clone, PartialEq)]
struct Rec {
    id: String,
    version: u64,
    position: u64,
    deleted: bool,
    fields: BTreeMap<String, Vec<u8>>,
}

fn rec_of(v: &Value) -> CaseResult<(String, Rec)> {
    let coll = t(v, 0, "record")?;
    let deleted = b(v, 4, "record deleted")?;
    let mut fields = BTreeMap::new();
    match v.opt(5) {
        None => ensure!(deleted, "a live record without fields (key 5): {v}"),
        Some(Value::Map(m)) => {
            ensure!(!deleted, "a tombstone with fields: {v}");
            for (k, x) in m {
                match (k, x) {
                    (Value::Text(k), Value::Bytes(x)) => {
                        fields.insert(k.clone(), x.clone());
                    }
                    _ => fail!("a record field is not text => bytes: {v}"),
                }
            }
        }
        Some(o) => fail!("record key 5 (fields) is {o}"),
    }
    Ok((
        coll,
        Rec {
            id: t(v, 1, "record id")?,
            version: u(v, 2, "record version")?,
            position: u(v, 3, "record position")?,
            deleted,
            fields,
        },
    ))
}

/// The end of a pull's catch-up (§24.6).
#[derive(Debug, Clone)]
struct Final {
    cursor: u64,
    count: u64,
    epoch: String,
    reset: bool,
    checksums: Vec<(String, u64, u64)>,
    fin: bool,
}

/// What a pull delivered up to the end of its catch-up.
#[derive(Debug)]
struct Pulled {
    chunks: usize,
    /// Records in arrival order (collection, record).
    records: Vec<(String, Rec)>,
    end: Final,
    /// The next chunk seq.
    seq: u64,
}

impl Pulled {
    /// The state it gives: the last copy of each record.
    fn state(&self) -> BTreeMap<String, Rec> {
        let mut m = BTreeMap::new();
        for (_, r) in &self.records {
            m.insert(r.id.clone(), r.clone());
        }
        m
    }
}

fn final_of(v: &Value, fin: bool) -> CaseResult<Final> {
    let mut checksums = Vec::new();
    for c in arr(v, 4, "final checksums")? {
        checksums.push((
            t(c, 0, "checksum")?,
            u(c, 1, "checksum count")?,
            u(c, 2, "checksum sum")?,
        ));
    }
    Ok(Final {
        cursor: u(v, 0, "final cursor")?,
        count: u(v, 1, "final count")?,
        epoch: t(v, 2, "final epoch")?,
        reset: b(v, 3, "final reset")?,
        checksums,
        fin,
    })
}

/// The next chunk or response of request `id`.
async fn next_of(c: &mut Conn, id: u64, within: Duration) -> CaseResult<Frame> {
    c.wait_for(
        within,
        &format!("chunk or response for sync.pull {id}"),
        |f| match f {
            Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                Some(f.clone())
            }
            _ => None,
        },
    )
    .await
}

/// Sends `sync.pull` and reads it to the end of its catch-up.
async fn pull(c: &mut Conn, params: &Value) -> CaseResult<(u64, Pulled)> {
    let id = c.request("sync.pull", params).await?;
    let mut records = Vec::new();
    let mut chunks = 0usize;
    let mut last_cursor = 0;
    loop {
        match next_of(c, id, PULL_WAIT).await? {
            Frame::Chunk { seq, fin, data, .. } => {
                ensure_eq!(seq, chunks as u64, "seq of chunk {chunks} (§7.1)");
                chunks += 1;
                let v = &data.value;
                if matches!(v.opt(0), Some(Value::Uint(_))) {
                    let end = final_of(v, fin)?;
                    return Ok((
                        id,
                        Pulled {
                            chunks: chunks - 1,
                            records,
                            end,
                            seq: seq + 1,
                        },
                    ));
                }
                ensure!(
                    !fin,
                    "a final chunk whose data is not a sync-final (§24.6): {v}"
                );
                let list = arr(v, 0, "chunk records")?;
                ensure!(
                    !list.is_empty(),
                    "a catch-up chunk with no records (§24.6): {v}"
                );
                let cursor = u(v, 1, "chunk cursor")?;
                ensure!(
                    v.opt(2).is_none(),
                    "a catch-up chunk with prev (key 2 is for live chunks, §24.6): {v}"
                );
                let mut before = last_cursor;
                for r in list {
                    let (coll, r) = rec_of(r)?;
                    ensure!(
                        r.position > before,
                        "records in increasing position order (§24.6): {} after {before}",
                        r.position
                    );
                    before = r.position;
                    records.push((coll, r));
                }
                ensure_eq!(
                    cursor,
                    before,
                    "a catch-up chunk's cursor is its last record's position (§24.6)"
                );
                last_cursor = cursor;
            }
            Frame::Response {
                outcome: Err(e), ..
            } => {
                if e.code == "method_not_found" {
                    skip!("the server does not serve sync.pull (method_not_found, §24)");
                }
                fail!(
                    "sync.pull {params} answered {} ({}) after {chunks} chunks",
                    e.code,
                    e.message
                )
            }
            Frame::Response { outcome: Ok(r), .. } => fail!(
                "sync.pull was answered with a success response {} instead of chunks (§24.6, §7.2)",
                r.value
            ),
            _ => {}
        }
    }
}

fn pull_params(space: &str, extra: &[(u64, Value)]) -> Value {
    let mut m = vec![(0, Value::text(space))];
    m.extend(extra.iter().cloned());
    Value::map(m)
}

fn details(e: &ErrorObject) -> CaseResult<&Value> {
    match e.value.opt(3) {
        Some(d) => Ok(d),
        None => fail!("{} ({}) has no details (§24)", e.code, e.message),
    }
}

/// A client id unique to the case.
fn client(ctx: &Ctx, tag: &str) -> String {
    format!("c{}-{tag}", ctx.unique())
}

pub(crate) fn cases() -> Vec<Case> {
    let mut v = push_cases();
    v.extend(pull_cases());
    v.extend(cap_cases());
    v
}

fn push_cases() -> Vec<Case> {
    vec![
        Case::new(
            "sync.push-ack",
            "24.5, 24.2, 24.7",
            "a push is acknowledged with its position, the hub's HLC, the usage and the new versions; sync.info shows the record",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let at = hlc(now_ms(), 0);
                let a = push(
                    &mut c,
                    &push_params(
                        &s,
                        &client(&ctx, "a"),
                        1,
                        at,
                        vec![with(put("n1", b"hello"), &[(5, Value::Uint(0))])],
                    ),
                )
                .await?;
                ensure!(
                    a.position >= 1,
                    "the position of the first change is at least 1 (§24.4)"
                );
                ensure!(!a.duplicate, "a first push is not a duplicate");
                ensure!(
                    a.hlc >= at,
                    "the hub's HLC {} has observed the push's {at} (§24.3)",
                    a.hlc
                );
                ensure_eq!(
                    (a.records, a.bytes),
                    (1, (COLL.len() + 2 + 5) as u64),
                    "usage: one record of collection + id + value bytes (§24.2)"
                );
                ensure_eq!(
                    a.versions,
                    vec![(COLL.to_owned(), "n1".to_owned(), 1)],
                    "versions: n1 at version 1"
                );
                let info = ok(&mut c, "sync.info", &Value::map([(0, Value::text(&s))])).await?;
                ensure_eq!(
                    u(&info, 0, "info position")?,
                    a.position,
                    "sync.info position is the ack's"
                );
                ensure!(
                    !t(&info, 1, "info epoch")?.is_empty(),
                    "a written space has an epoch (§24.4)"
                );
                let colls = arr(&info, 5, "info collections")?;
                ensure_eq!(colls.len(), 1, "one collection");
                ensure_eq!(
                    u(&colls[0], 1, "collection records")?,
                    1,
                    "records of {COLL}"
                );
                let h = record_hash(
                    COLL,
                    "n1",
                    1,
                    &BTreeMap::from([(String::new(), b"hello".to_vec())]),
                );
                ensure_eq!(
                    u(&colls[0], 4, "collection checksum")?,
                    h,
                    "the checksum of one record is its hash (§24.8)"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-idempotent",
            "24.5",
            "a push retried with the same client and seq is answered duplicate and applied once; a smaller seq too",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                let p = push_params(&s, &id, 5, at, vec![Value::map(put("n1", b"v1"))]);
                let first = push(&mut c, &p).await?;
                let again = push(&mut c, &p).await?;
                ensure!(
                    again.duplicate,
                    "a retry of (client, 5) is duplicate (§24.5)"
                );
                ensure_eq!(
                    again.position,
                    first.position,
                    "a duplicate reports the current position"
                );
                ensure!(again.versions.is_empty(), "a duplicate lists no versions");
                let older = push(
                    &mut c,
                    &push_params(&s, &id, 3, at + 1, vec![Value::map(put("n1", b"other"))]),
                )
                .await?;
                ensure!(
                    older.duplicate,
                    "seq 3 below the last applied 5 is duplicate"
                );
                // From another connection too: idempotency is per (space, client).
                let mut d = ctx.client("b").await?;
                let third = push(&mut d, &p).await?;
                ensure!(
                    third.duplicate,
                    "a retry from another connection is duplicate"
                );
                let (_, got) = pull(&mut c, &pull_params(&s, &[])).await?;
                let st = got.state();
                ensure_eq!(
                    st.get("n1").map(|r| (r.version, r.fields.get("").cloned())),
                    Some((1, Some(b"v1".to_vec()))),
                    "n1 applied once, with the first value"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-conflict",
            "24.5",
            "a mismatched expected_version answers conflict with the current versions (and values with return_values); nothing of the push is applied and its seq is not consumed",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                push(
                    &mut c,
                    &push_params(&s, &id, 1, at, vec![Value::map(put("n1", b"v1"))]),
                )
                .await?;
                let mut bad = push_params(
                    &s,
                    &id,
                    2,
                    at + 1,
                    vec![
                        Value::map(put("n2", b"new")),
                        with(put("n1", b"v2"), &[(5, Value::Uint(0))]),
                    ],
                );
                if let Value::Map(m) = &mut bad {
                    m.push((Value::Uint(5), Value::Bool(true)));
                }
                let e = err(&mut c, "sync.push", &bad, "conflict").await?;
                let list = arr(details(&e)?, 0, "conflict details")?;
                ensure_eq!(list.len(), 1, "one mismatched record in {}", details(&e)?);
                let r = &list[0];
                ensure_eq!(
                    (
                        t(r, 0, "conflict")?,
                        t(r, 1, "conflict")?,
                        u(r, 2, "conflict version")?,
                        b(r, 3, "conflict deleted")?
                    ),
                    (COLL.to_owned(), "n1".to_owned(), 1, false),
                    "the conflict names n1 at version 1, live"
                );
                let fields = r.opt(4).and_then(Value::as_map).map(<[_]>::to_vec);
                ensure_eq!(
                    fields,
                    Some(vec![(Value::text(""), Value::Bytes(b"v1".to_vec()))]),
                    "return_values: the current fields"
                );
                let (_, got) = pull(&mut c, &pull_params(&s, &[])).await?;
                ensure!(
                    !got.state().contains_key("n2"),
                    "all or nothing: n2 of the refused push is not stored (§24.5)"
                );
                // The refused seq 2 is still free.
                let a = push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        2,
                        at + 2,
                        vec![with(put("n1", b"v2"), &[(5, Value::Uint(1))])],
                    ),
                )
                .await?;
                ensure!(!a.duplicate, "a refused push does not consume its seq");
                ensure_eq!(
                    a.versions,
                    vec![(COLL.to_owned(), "n1".to_owned(), 2)],
                    "n1 at version 2"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-lww",
            "24.2, 24.3",
            "patches merge per field by (hlc, actor): an older patch arriving later loses, patches of different fields both stay, a newer put drops older fields",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut a = ctx.client("a").await?;
                let mut b_ = ctx.client("b").await?;
                let (ia, ib) = (client(&ctx, "a"), client(&ctx, "b"));
                let base = now_ms() - 10_000;
                push(
                    &mut a,
                    &push_params(
                        &s,
                        &ia,
                        1,
                        hlc(base + 20, 0),
                        vec![Value::map(patch("r", &[("title", Some(b"new"))]))],
                    ),
                )
                .await?;
                // Older stamp for title (loses) and a fresh field (wins).
                push(
                    &mut b_,
                    &push_params(
                        &s,
                        &ib,
                        1,
                        hlc(base + 10, 0),
                        vec![Value::map(patch(
                            "r",
                            &[("title", Some(b"old")), ("done", Some(b"1"))],
                        ))],
                    ),
                )
                .await?;
                let (_, got) = pull(&mut a, &pull_params(&s, &[])).await?;
                let r = got.state().get("r").cloned();
                let want: BTreeMap<String, Vec<u8>> = BTreeMap::from([
                    ("title".into(), b"new".to_vec()),
                    ("done".into(), b"1".to_vec()),
                ]);
                ensure_eq!(
                    r.as_ref().map(|r| r.fields.clone()),
                    Some(want),
                    "fields after the two patches (§24.2)"
                );
                // Equal hlc: the actor breaks the tie (bytewise).
                let winner = if ia.as_bytes() > ib.as_bytes() {
                    b"A".as_slice()
                } else {
                    b"B".as_slice()
                };
                push(
                    &mut a,
                    &push_params(
                        &s,
                        &ia,
                        2,
                        hlc(base + 30, 0),
                        vec![Value::map(patch("r", &[("tie", Some(b"A"))]))],
                    ),
                )
                .await?;
                push(
                    &mut b_,
                    &push_params(
                        &s,
                        &ib,
                        2,
                        hlc(base + 30, 0),
                        vec![Value::map(patch("r", &[("tie", Some(b"B"))]))],
                    ),
                )
                .await?;
                // A put newer than all drops the older fields.
                push(
                    &mut b_,
                    &push_params(
                        &s,
                        &ib,
                        3,
                        hlc(base + 40, 0),
                        vec![
                            Value::map(patch("q", &[("x", Some(b"1"))])),
                            with(put("q", b"whole"), &[(6, Value::Uint(hlc(base + 50, 0)))]),
                        ],
                    ),
                )
                .await?;
                let (_, got) = pull(&mut a, &pull_params(&s, &[])).await?;
                let st = got.state();
                ensure_eq!(
                    st.get("r").and_then(|r| r.fields.get("tie").cloned()),
                    Some(winner.to_vec()),
                    "equal hlc: the greater actor wins"
                );
                ensure_eq!(
                    st.get("q").map(|r| r.fields.clone()),
                    Some(BTreeMap::from([(String::new(), b"whole".to_vec())])),
                    "a put replaces the record's older fields"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-tombstone",
            "24.2, 24.5",
            "a delete leaves a tombstone: expected_version 0 matches it, a conflict reports it deleted with its version, a patch newer than the delete revives the record",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let t0 = now_ms() - 10_000;
                push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        1,
                        hlc(t0, 0),
                        vec![Value::map(put("a", b"1")), Value::map(put("b", b"1"))],
                    ),
                )
                .await?;
                let d = push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        2,
                        hlc(t0 + 10, 0),
                        vec![Value::map(delete("a")), Value::map(delete("b"))],
                    ),
                )
                .await?;
                ensure_eq!(
                    d.records,
                    0,
                    "tombstones are not counted in the usage (§24.5)"
                );
                ensure_eq!(
                    d.versions,
                    vec![
                        (COLL.to_owned(), "a".to_owned(), 2),
                        (COLL.to_owned(), "b".to_owned(), 2)
                    ],
                    "a delete is a change: version 2"
                );
                let e = err(
                    &mut c,
                    "sync.push",
                    &push_params(
                        &s,
                        &id,
                        3,
                        hlc(t0 + 20, 0),
                        vec![with(put("a", b"x"), &[(5, Value::Uint(2))])],
                    ),
                    "conflict",
                )
                .await?;
                let list = arr(details(&e)?, 0, "conflict details")?;
                ensure_eq!(list.len(), 1, "one mismatched record");
                ensure_eq!(
                    (
                        u(&list[0], 2, "conflict version")?,
                        b(&list[0], 3, "conflict deleted")?
                    ),
                    (2, true),
                    "a tombstone conflicts as deleted, with its version; expected versions count it as 0 (§24.5)"
                );
                let a = push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        3,
                        hlc(t0 + 20, 0),
                        vec![with(put("a", b"again"), &[(5, Value::Uint(0))])],
                    ),
                )
                .await?;
                ensure_eq!(
                    a.versions,
                    vec![(COLL.to_owned(), "a".to_owned(), 3)],
                    "expected_version 0 recreates a deleted record"
                );
                push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        4,
                        hlc(t0 + 30, 0),
                        vec![Value::map(patch("b", &[("f", Some(b"v"))]))],
                    ),
                )
                .await?;
                let (_, got) = pull(&mut c, &pull_params(&s, &[])).await?;
                let st = got.state();
                ensure_eq!(
                    st.get("a").map(|r| (r.deleted, r.fields.clone())),
                    Some((false, BTreeMap::from([(String::new(), b"again".to_vec())]))),
                    "a recreated"
                );
                ensure_eq!(
                    st.get("b").map(|r| (r.deleted, r.fields.clone())),
                    Some((false, BTreeMap::from([("f".to_owned(), b"v".to_vec())]))),
                    "a patch newer than the delete revives b with the patched field only (§24.2)"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-clock-skew",
            "24.3, 24.9, 14.2",
            "a push stamped far ahead of the hub's clock is refused with clock_skew and its details; nothing is applied; a past stamp is accepted",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let ahead = hlc(now_ms() + 3_600_000, 0);
                let e = err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 1, ahead, vec![Value::map(put("n1", b"x"))]),
                    "clock_skew",
                )
                .await?;
                let d = details(&e)?;
                let server = u(d, 0, "clock_skew server_hlc")?;
                let skew = u(d, 1, "clock_skew max_skew_ms")?;
                ensure!(
                    skew < 3_600_000,
                    "max_skew_ms {skew} is below the hour the push was ahead"
                );
                ensure!(
                    (server >> 16).abs_diff(now_ms()) < 600_000,
                    "server_hlc {server} is near the hub's clock (§24.3)"
                );
                // The op's own hlc is checked too.
                let e = err(
                    &mut c,
                    "sync.push",
                    &push_params(
                        &s,
                        &id,
                        1,
                        hlc(now_ms(), 0),
                        vec![with(put("n2", b"x"), &[(6, Value::Uint(ahead))])],
                    ),
                    "clock_skew",
                )
                .await?;
                details(&e)?;
                let info = ok(&mut c, "sync.info", &Value::map([(0, Value::text(&s))])).await?;
                ensure_eq!(u(&info, 0, "info position")?, 0, "nothing was applied");
                let past = push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        1,
                        hlc(now_ms() - 86_400_000, 0),
                        vec![Value::map(put("n1", b"x"))],
                    ),
                )
                .await?;
                ensure!(
                    !past.duplicate && past.position >= 1,
                    "a day-old stamp is accepted (offline edits)"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.push-quota",
            "24.5, 14.2",
            "a push beyond max_records is refused with quota_exceeded, its usage and limits, and nothing applied",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let Some(max) = ctx.settings().sync_max_records else {
                    skip!(
                        "needs --sync-max-records: the server's max_records per space (not announced, §24.5)"
                    );
                };
                if max > 500 {
                    skip!("--sync-max-records {max} needs more than 500 records in one push");
                }
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                let ops: Vec<Value> = (0..=max)
                    .map(|i| Value::map(put(&format!("r{i}"), b"x")))
                    .collect();
                let e = err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 1, at, ops),
                    "quota_exceeded",
                )
                .await?;
                let d = details(&e)?;
                let usage = d.opt(0).cloned().unwrap_or(Value::Null);
                let limits = d.opt(1).cloned().unwrap_or(Value::Null);
                ensure_eq!(
                    u(&usage, 0, "quota usage")?,
                    max + 1,
                    "usage: the records the push would have reached"
                );
                ensure_eq!(u(&limits, 0, "quota limits")?, max, "limits: max_records");
                let ops: Vec<Value> = (0..max)
                    .map(|i| Value::map(put(&format!("r{i}"), b"x")))
                    .collect();
                let a = push(&mut c, &push_params(&s, &id, 1, at, ops)).await?;
                ensure_eq!(
                    a.records,
                    max,
                    "exactly max_records fit; the refused push consumed nothing"
                );
                let e = err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 2, at + 1, vec![Value::map(put("extra", b"x"))]),
                    "quota_exceeded",
                )
                .await?;
                details(&e)?;
                // Shrinking stays allowed.
                let a = push(
                    &mut c,
                    &push_params(&s, &id, 2, at + 2, vec![Value::map(delete("r0"))]),
                )
                .await?;
                ensure_eq!(a.records, max - 1, "a delete frees a record");
                Ok(())
            },
        ),
        Case::new(
            "sync.push-invalid",
            "24.5, 24.6",
            "method checks answer invalid_params: seq 0, no ops, a put with value and fields, an unknown kind, a pattern as space, notify_only without live",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 0, at, vec![Value::map(put("n", b"x"))]),
                    "invalid_params",
                )
                .await?;
                err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 1, at, vec![]),
                    "invalid_params",
                )
                .await?;
                err(
                    &mut c,
                    "sync.push",
                    &push_params(
                        &s,
                        &id,
                        1,
                        at,
                        vec![with(
                            put("n", b"x"),
                            &[(
                                4,
                                Value::Map(vec![(Value::text("a"), Value::Bytes(vec![1]))]),
                            )],
                        )],
                    ),
                    "invalid_params",
                )
                .await?;
                err(
                    &mut c,
                    "sync.push",
                    &push_params(
                        &s,
                        &id,
                        1,
                        at,
                        vec![Value::map([
                            (0, Value::text("merge")),
                            (1, Value::text(COLL)),
                            (2, Value::text("n")),
                        ])],
                    ),
                    "invalid_params",
                )
                .await?;
                err(
                    &mut c,
                    "sync.push",
                    &push_params(
                        &format!("{s}.*"),
                        &id,
                        1,
                        at,
                        vec![Value::map(put("n", b"x"))],
                    ),
                    "invalid_params",
                )
                .await?;
                err(
                    &mut c,
                    "sync.pull",
                    &pull_params(&s, &[(6, Value::Bool(true))]),
                    "invalid_params",
                )
                .await?;
                let info = ok(&mut c, "sync.info", &Value::map([(0, Value::text(&s))])).await?;
                ensure_eq!(u(&info, 0, "info position")?, 0, "nothing was applied");
                Ok(())
            },
        ),
        Case::new(
            "sync.push-merged-fields",
            "24.2, 24.5",
            "a merged record keeps at most 256 visible fields: a patch that would take it past them is payload_too_large and nothing is applied",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                let names = |from: usize| -> Vec<String> {
                    (from..from + 200).map(|n| format!("f{n}")).collect()
                };
                let fields = |names: &[String]| -> Vec<Value> {
                    let pairs: Vec<(&str, Option<&[u8]>)> = names
                        .iter()
                        .map(|n| (n.as_str(), Some(&b"v"[..])))
                        .collect();
                    vec![Value::map(patch("n", &pairs))]
                };
                let first = names(0);
                let ack = push(&mut c, &push_params(&s, &id, 1, at, fields(&first))).await?;
                ensure_eq!(ack.position, 1, "the first 200 fields");
                let second = names(200);
                err(
                    &mut c,
                    "sync.push",
                    &push_params(&s, &id, 2, at + 1, fields(&second)),
                    "payload_too_large",
                )
                .await?;
                let info = ok(&mut c, "sync.info", &Value::map([(0, Value::text(&s))])).await?;
                ensure_eq!(u(&info, 0, "info position")?, 1, "nothing was applied");
                Ok(())
            },
        ),
    ]
}

fn pull_cases() -> Vec<Case> {
    vec![
        Case::new(
            "sync.pull-chunks",
            "24.6, 24.8, 7.1, 7.2",
            "a snapshot pull streams every record in position order in chunks of at most limit, then the final chunk with the cursor, the count and checksums that match the records",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                let ops: Vec<Value> = (0..30)
                    .map(|i| Value::map(put(&format!("r{i:02}"), format!("value {i}").as_bytes())))
                    .collect();
                let a = push(&mut c, &push_params(&s, &id, 1, at, ops)).await?;
                let (_, got) = pull(&mut c, &pull_params(&s, &[(4, Value::Uint(7))])).await?;
                ensure!(
                    got.end.fin,
                    "without live the end of the catch-up is the final chunk (§24.6)"
                );
                ensure!(
                    got.chunks >= 5,
                    "30 records at limit 7 come in at least 5 chunks, got {}",
                    got.chunks
                );
                ensure_eq!(got.records.len(), 30, "records streamed");
                ensure_eq!(got.end.count, 30, "final count");
                ensure_eq!(
                    got.end.cursor,
                    a.position,
                    "the final cursor is the space's position"
                );
                ensure!(!got.end.reset, "a snapshot is not a reset");
                let mut sum = 0u64;
                for (_, r) in &got.records {
                    sum = sum.wrapping_add(record_hash(COLL, &r.id, r.version, &r.fields));
                }
                ensure_eq!(
                    got.end.checksums,
                    vec![(COLL.to_owned(), 30, sum)],
                    "checksums: count and the wrapping sum of the record hashes (§24.8)"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.pull-cursor",
            "24.4, 24.6",
            "a pull from a cursor gets only the later changes, tombstones included; another epoch or a cursor beyond the end is a reset",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut c = ctx.client("a").await?;
                let id = client(&ctx, "a");
                let at = hlc(now_ms(), 0);
                push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        1,
                        at,
                        vec![
                            Value::map(put("a", b"1")),
                            Value::map(put("b", b"2")),
                            Value::map(put("c", b"3")),
                        ],
                    ),
                )
                .await?;
                let (_, first) = pull(&mut c, &pull_params(&s, &[])).await?;
                let (epoch, cursor) = (first.end.epoch.clone(), first.end.cursor);
                let a = push(
                    &mut c,
                    &push_params(
                        &s,
                        &id,
                        2,
                        at + 1,
                        vec![Value::map(delete("a")), Value::map(put("d", b"4"))],
                    ),
                )
                .await?;
                let (_, next) = pull(
                    &mut c,
                    &pull_params(&s, &[(1, Value::Uint(cursor)), (2, Value::text(&epoch))]),
                )
                .await?;
                let st = next.state();
                ensure_eq!(
                    st.keys().cloned().collect::<Vec<_>>(),
                    vec!["a".to_owned(), "d".to_owned()],
                    "only the records changed after the cursor"
                );
                ensure!(st["a"].deleted, "the delete comes as a tombstone");
                ensure!(!next.end.reset, "not a reset");
                ensure_eq!(next.end.cursor, a.position, "cursor");
                ensure_eq!(
                    next.end.checksums.first().map(|c| c.1),
                    Some(3),
                    "the checksum counts the live records b, c, d"
                );
                let (_, other) = pull(
                    &mut c,
                    &pull_params(
                        &s,
                        &[
                            (1, Value::Uint(cursor)),
                            (2, Value::text("0000000000000000")),
                        ],
                    ),
                )
                .await?;
                ensure!(
                    other.end.reset,
                    "a cursor of another epoch gets a reset (§24.6)"
                );
                ensure_eq!(
                    other.state().keys().cloned().collect::<Vec<_>>(),
                    vec!["b".to_owned(), "c".to_owned(), "d".to_owned()],
                    "a reset is a snapshot of the live records"
                );
                let (_, beyond) = pull(
                    &mut c,
                    &pull_params(
                        &s,
                        &[(1, Value::Uint(a.position + 100)), (2, Value::text(&epoch))],
                    ),
                )
                .await?;
                ensure!(
                    beyond.end.reset,
                    "a cursor beyond the space's position gets a reset"
                );
                Ok(())
            },
        ),
        Case::new(
            "sync.pull-live",
            "24.6, 8",
            "a live pull ends its catch-up with a non-final chunk, then sends each later commit with prev and cursor; notify_only sends no records; cancel ends it",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut w = ctx.client("w").await?;
                let id = client(&ctx, "w");
                let at = hlc(now_ms(), 0);
                push(
                    &mut w,
                    &push_params(&s, &id, 1, at, vec![Value::map(put("a", b"1"))]),
                )
                .await?;
                let mut r = ctx.client("r").await?;
                let (rid, got) = pull(&mut r, &pull_params(&s, &[(5, Value::Bool(true))])).await?;
                ensure!(
                    !got.end.fin,
                    "with live the end of the catch-up is a non-final chunk (§24.6)"
                );
                ensure_eq!(got.records.len(), 1, "catch-up records");
                let mut n = ctx.client("n").await?;
                let (nid, ngot) = pull(
                    &mut n,
                    &pull_params(&s, &[(5, Value::Bool(true)), (6, Value::Bool(true))]),
                )
                .await?;
                let a = push(
                    &mut w,
                    &push_params(&s, &id, 2, at + 1, vec![Value::map(put("b", b"2"))]),
                )
                .await?;
                let f = next_of(&mut r, rid, PULL_WAIT).await?;
                let Frame::Chunk { seq, fin, data, .. } = f else {
                    fail!(
                        "the live pull was answered {} instead of a live chunk",
                        f.describe()
                    );
                };
                ensure_eq!(
                    (seq, fin),
                    (got.seq, false),
                    "the live chunk's seq and final flag"
                );
                let v = &data.value;
                ensure_eq!(
                    u(v, 2, "live chunk prev")?,
                    got.end.cursor,
                    "prev is the catch-up's cursor"
                );
                ensure_eq!(
                    u(v, 1, "live chunk cursor")?,
                    a.position,
                    "cursor is the commit's position"
                );
                let recs = arr(v, 0, "live records")?;
                ensure_eq!(recs.len(), 1, "one record changed");
                ensure_eq!(rec_of(&recs[0])?.1.id, "b", "the changed record");
                let f = next_of(&mut n, nid, PULL_WAIT).await?;
                let Frame::Chunk { data, .. } = f else {
                    fail!("the notify_only pull was answered {}", f.describe());
                };
                ensure!(
                    arr(&data.value, 0, "notify_only records")?.is_empty(),
                    "notify_only: no records"
                );
                ensure_eq!(
                    (u(&data.value, 2, "prev")?, u(&data.value, 1, "cursor")?),
                    (ngot.end.cursor, a.position),
                    "notify_only: prev and cursor"
                );
                r.notify("cancel", &cancel(rid)).await?;
                let f = next_of(&mut r, rid, PROMPT).await?;
                match f {
                    Frame::Response {
                        outcome: Err(e), ..
                    } if e.code == "cancelled" => Ok(()),
                    other => fail!(
                        "a cancelled live pull ended with {} instead of cancelled (§8)",
                        other.describe()
                    ),
                }
            },
        ),
        Case::new(
            "sync.pull-live-resume",
            "24.6",
            "a live pull resumed from the cursor of its last chunk gets exactly the commits made meanwhile, then live ones",
            |ctx| async move {
                let s = space(&ctx, "s")?;
                let mut w = ctx.client("w").await?;
                let id = client(&ctx, "w");
                let at = hlc(now_ms(), 0);
                push(
                    &mut w,
                    &push_params(&s, &id, 1, at, vec![Value::map(put("a", b"1"))]),
                )
                .await?;
                let mut r = ctx.client("r").await?;
                let (_, got) = pull(&mut r, &pull_params(&s, &[(5, Value::Bool(true))])).await?;
                let (epoch, cursor) = (got.end.epoch.clone(), got.end.cursor);
                drop(r);
                push(
                    &mut w,
                    &push_params(&s, &id, 2, at + 1, vec![Value::map(put("b", b"2"))]),
                )
                .await?;
                let mut r = ctx.client("r2").await?;
                let (rid, again) = pull(
                    &mut r,
                    &pull_params(
                        &s,
                        &[
                            (1, Value::Uint(cursor)),
                            (2, Value::text(&epoch)),
                            (5, Value::Bool(true)),
                        ],
                    ),
                )
                .await?;
                ensure_eq!(
                    again.state().keys().cloned().collect::<Vec<_>>(),
                    vec!["b".to_owned()],
                    "the resume gets the missed commit only"
                );
                let a = push(
                    &mut w,
                    &push_params(&s, &id, 3, at + 2, vec![Value::map(put("c", b"3"))]),
                )
                .await?;
                let f = next_of(&mut r, rid, PULL_WAIT).await?;
                let Frame::Chunk { data, .. } = f else {
                    fail!("the resumed live pull was answered {}", f.describe());
                };
                ensure_eq!(
                    (u(&data.value, 2, "prev")?, u(&data.value, 1, "cursor")?),
                    (again.end.cursor, a.position),
                    "the next live chunk follows the resume's cursor: no gap, no repeat"
                );
                Ok(())
            },
        ),
    ]
}

fn cap_cases() -> Vec<Case> {
    vec![Case::new(
        "sync.caps",
        "24.1, 9.3, 13.4",
        "sync_read grants pull and info but not push; sync_write grants push and read; no sync capability is forbidden everywhere",
        |ctx| async move {
            let s = space(&ctx, "s")?;
            let at = hlc(now_ms(), 0);
            let pattern = format!("{}.>", ctx.ns());
            let mut w = ctx
                .client_with(&sync_claims(&ctx, "w", &[], &[&pattern]))
                .await?;
            let a = push(
                &mut w,
                &push_params(
                    &s,
                    &client(&ctx, "w"),
                    1,
                    at,
                    vec![Value::map(put("a", b"1"))],
                ),
            )
            .await?;
            let (_, got) = pull(&mut w, &pull_params(&s, &[])).await?;
            ensure_eq!(got.end.cursor, a.position, "sync_write implies read");
            let mut r = ctx
                .client_with(&sync_claims(&ctx, "r", &[&pattern], &[]))
                .await?;
            err(
                &mut r,
                "sync.push",
                &push_params(
                    &s,
                    &client(&ctx, "r"),
                    1,
                    at,
                    vec![Value::map(put("b", b"2"))],
                ),
                "forbidden",
            )
            .await?;
            ok(&mut r, "sync.info", &Value::map([(0, Value::text(&s))])).await?;
            pull(&mut r, &pull_params(&s, &[])).await?;
            let mut none = ctx.client_with(&sync_claims(&ctx, "n", &[], &[])).await?;
            err(&mut none, "sync.pull", &pull_params(&s, &[]), "forbidden").await?;
            err(
                &mut none,
                "sync.info",
                &Value::map([(0, Value::text(&s))]),
                "forbidden",
            )
            .await?;
            err(
                &mut none,
                "sync.push",
                &push_params(
                    &s,
                    &client(&ctx, "n"),
                    1,
                    at,
                    vec![Value::map(put("c", b"3"))],
                ),
                "forbidden",
            )
            .await?;
            // A grant of another space does not cover this one.
            let mut other = ctx
                .client_with(&sync_claims(&ctx, "o", &["other.>"], &["other.>"]))
                .await?;
            err(
                &mut other,
                "sync.push",
                &push_params(
                    &s,
                    &client(&ctx, "o"),
                    1,
                    at,
                    vec![Value::map(put("c", b"3"))],
                ),
                "forbidden",
            )
            .await?;
            let (_, after) = pull(&mut w, &pull_params(&s, &[])).await?;
            ensure_eq!(
                after.state().keys().cloned().collect::<Vec<_>>(),
                vec!["a".to_owned()],
                "no refused push was applied"
            );
            Ok(())
        },
    )]
}
