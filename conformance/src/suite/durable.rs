//! §23: durable streams — durable publish and its acknowledgement,
//! idempotency, compare-and-set, events with offsets, `subscribe` results,
//! resume with `since` (the three outcomes and the seam), `history` and
//! `history.latest`, and durable-only keys on plain topics.
//!
//! The server's durable namespaces are not announced (§23.1), so these
//! cases need `--durable-prefix` (a prefix of topics inside a namespace
//! without retention limits) and, for `too_old`, `--durable-capped-prefix`
//! with `--durable-capped-events` (a namespace with `max-events`); without
//! them they skip.

use std::time::Duration;

use super::util::*;
use crate::cbor::Value;
use crate::check::{CaseError, CaseResult};
use crate::conn::Conn;
use crate::frame::{ErrorObject, Frame, Item};
use crate::runner::{Case, Ctx};
use crate::ws::Handshake;
use crate::{ensure, ensure_eq, fail, skip};

/// How long a resume may take to reach its final chunk.
const RESUME_WAIT: Duration = Duration::from_secs(10);

/// The greatest producer sequence number (§23.3).
const MAX_SEQ: u64 = (1 << 63) - 1;

/// This case's namespace inside the durable namespace of `--durable-prefix`.
fn durable_ns(ctx: &Ctx) -> CaseResult<String> {
    match &ctx.settings().durable_prefix {
        Some(p) => Ok(ctx.ns_under(p)),
        None => skip!(
            "needs --durable-prefix: a prefix of topics in a durable namespace of the server (e.g. conf.durable. for a [[streams]] pattern conf.durable.>), which a server does not announce (§23.1)"
        ),
    }
}

/// A durable topic of this case.
fn durable_topic(ctx: &Ctx, suffix: &str) -> CaseResult<String> {
    Ok(format!("{}.{suffix}", durable_ns(ctx)?))
}

/// A durable publish's acknowledgement (§23.3).
#[derive(Debug, Clone)]
struct Ack {
    delivered: u64,
    offset: Option<u64>,
    epoch: String,
    duplicate: bool,
    position: Option<u64>,
}

/// Reads and checks a `publish` result of a durable topic.
fn ack_of(r: &Item) -> CaseResult<Ack> {
    let v = &r.value;
    crate::frame::typed_map(v).map_err(CaseError::Fail)?;
    let uint = |k: u64, name: &str| -> CaseResult<Option<u64>> {
        match v.opt(k) {
            None => Ok(None),
            Some(Value::Uint(n)) => Ok(Some(*n)),
            Some(o) => fail!("publish result key {k} ({name}) is {o}, not a uint (§23.3)"),
        }
    };
    let Some(delivered) = uint(0, "delivered")? else {
        fail!("publish result {v} has no delivered (key 0, §11.6)");
    };
    let epoch = match v.opt(2) {
        Some(Value::Text(s)) if !s.is_empty() => s.clone(),
        other => fail!(
            "a durable publish result has key 2 (epoch) {other:?}, not a non-empty text (§23.3); result {v}"
        ),
    };
    let durability = match v.opt(3) {
        Some(Value::Text(s)) => s.clone(),
        other => fail!(
            "a durable publish result has key 3 (durability) {other:?}, not a text (§23.3); result {v}"
        ),
    };
    ensure!(
        durability == "committed" || durability == "fsynced",
        "durability {durability:?} is neither committed nor fsynced (§23.3)"
    );
    let duplicate = match v.opt(4) {
        None => false,
        Some(Value::Bool(true)) => true,
        Some(o) => fail!("publish result key 4 (duplicate) is {o}; it is only ever true (§23.3)"),
    };
    let offset = uint(1, "offset")?;
    let position = uint(5, "position")?;
    ensure!(
        offset.is_some() == position.is_some(),
        "offset and position come together (§23.3): result {v}"
    );
    if !duplicate {
        ensure!(
            offset.is_some_and(|o| o >= 1),
            "a stored event has an offset of at least 1 (§23.2): result {v}"
        );
    }
    Ok(Ack {
        delivered,
        offset,
        epoch,
        duplicate,
        position,
    })
}

/// `publish` params with extra keys.
fn publish_with(t: &str, data: Value, extra: &[(u64, Value)]) -> Value {
    let mut m = vec![(0, Value::text(t)), (1, data)];
    m.extend(extra.iter().cloned());
    Value::map(m)
}

/// `{3: producer, 4: seq}`.
fn producer(p: &str, seq: u64) -> Vec<(u64, Value)> {
    vec![(3, Value::text(p)), (4, Value::Uint(seq))]
}

/// Publishes durably and expects success.
async fn dpublish(c: &mut Conn, params: &Value) -> CaseResult<Ack> {
    match call_paced(c, "publish", params).await? {
        Ok(r) => ack_of(&r),
        Err(e) => fail!(
            "durable publish {params} answered {} ({})",
            e.code,
            e.message
        ),
    }
}

/// Publishes `n` events `0..n` (as uints) on `t`; returns their acks.
async fn publish_n(c: &mut Conn, t: &str, n: u64) -> CaseResult<Vec<Ack>> {
    let mut acks = Vec::new();
    for i in 0..n {
        acks.push(dpublish(c, &publish(t, Value::Uint(i))).await?);
    }
    Ok(acks)
}

/// Publishes durably and expects the error `code`.
async fn dpublish_err(c: &mut Conn, params: &Value, code: &str) -> CaseResult<ErrorObject> {
    match call_paced(c, "publish", params).await? {
        Ok(r) => fail!(
            "publish {params} succeeded with {}; expected {code}",
            r.value
        ),
        Err(e) if e.code == code => Ok(e),
        Err(e) => fail!(
            "publish {params} answered {} ({}); expected {code}",
            e.code,
            e.message
        ),
    }
}

/// The `details` (key 3) of an error object.
fn details(e: &ErrorObject) -> Option<&Value> {
    e.value.opt(3)
}

/// Checks a `conflict`'s details: exactly key `key` with `value` (§23.3).
fn check_conflict(e: &ErrorObject, key: u64, value: u64) -> CaseResult {
    let Some(d) = details(e) else {
        fail!(
            "conflict {:?} has no details; §23.3 gives {{{key}: {value}}}",
            e.message
        );
    };
    ensure_eq!(
        d.opt(key).and_then(Value::as_u64),
        Some(value),
        "conflict details {d}, key {key} (§23.3)"
    );
    let other = 1 - key;
    ensure!(
        d.opt(other).is_none(),
        "conflict details {d} carry both keys (§23.3: exactly one)"
    );
    Ok(())
}

/// An event's offset (key 3) and position (key 4).
fn event_pos(v: &Value) -> CaseResult<(u64, u64)> {
    match (
        v.opt(3).and_then(Value::as_u64),
        v.opt(4).and_then(Value::as_u64),
    ) {
        (Some(o), Some(p)) => Ok((o, p)),
        _ => fail!("event {v} of a durable topic lacks offset (3) or position (4) (§23.4)"),
    }
}

/// The final chunk of a resume (§23.6).
#[derive(Debug, Clone)]
struct Final {
    outcome: String,
    count: u64,
    epoch: String,
    offset: u64,
    position: u64,
    earliest: Option<u64>,
}

fn final_of(v: &Value) -> CaseResult<Final> {
    crate::frame::typed_map(v).map_err(CaseError::Fail)?;
    let uint = |k: u64, name: &str| -> CaseResult<u64> {
        match v.get(k) {
            Some(Value::Uint(n)) => Ok(*n),
            other => {
                fail!("final chunk key {k} ({name}) is {other:?}, not a uint (§23.6); data {v}")
            }
        }
    };
    let text = |k: u64, name: &str| -> CaseResult<String> {
        match v.get(k) {
            Some(Value::Text(s)) => Ok(s.clone()),
            other => fail!("final chunk key {k} ({name}) is {other:?}, not a text (§23.6)"),
        }
    };
    let outcome = text(0, "outcome")?;
    ensure!(
        ["recovered", "too_old", "reset"].contains(&outcome.as_str()),
        "final chunk outcome {outcome:?} is not one of recovered, too_old, reset (§23.6)"
    );
    let earliest = match v.opt(5) {
        None => None,
        Some(Value::Uint(n)) => Some(*n),
        Some(o) => fail!("final chunk key 5 (earliest) is {o}, not a uint"),
    };
    ensure_eq!(
        earliest.is_some(),
        outcome == "too_old",
        "earliest present with too_old only (§23.6); data {v}"
    );
    Ok(Final {
        outcome,
        count: uint(1, "count")?,
        epoch: text(2, "epoch")?,
        offset: uint(3, "offset")?,
        position: uint(4, "position")?,
        earliest,
    })
}

/// What a resume delivered: the events of its chunks, then the final chunk.
#[derive(Debug)]
struct Resumed {
    chunks: usize,
    events: Vec<Value>,
    /// The exact bytes of each non-final chunk's data.
    raw: Vec<Vec<u8>>,
    fin: Final,
}

/// Sends `subscribe {0: topic, 2: since}` and reads its chunks (§23.6).
async fn resume(c: &mut Conn, topic: &str, since: Value) -> CaseResult<Resumed> {
    let id = c
        .request(
            "subscribe",
            &Value::map([(0, Value::text(topic)), (2, since)]),
        )
        .await?;
    read_resume(c, id).await
}

/// Reads the chunks of resume request `id` up to its final chunk.
async fn read_resume(c: &mut Conn, id: u64) -> CaseResult<Resumed> {
    let mut events = Vec::new();
    let mut raw = Vec::new();
    let mut chunks = 0usize;
    loop {
        let f = c
            .wait_for(
                RESUME_WAIT,
                &format!("chunk or response for resume {id}"),
                |f| match f {
                    Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                        Some(f.clone())
                    }
                    _ => None,
                },
            )
            .await?;
        match f {
            Frame::Chunk { seq, fin, data, .. } => {
                ensure_eq!(seq, chunks as u64, "seq of chunk {chunks} (§7.1)");
                chunks += 1;
                if fin {
                    let fin = final_of(&data.value)?;
                    return Ok(Resumed {
                        chunks: chunks - 1,
                        events,
                        raw,
                        fin,
                    });
                }
                let Some(list) = data.value.as_array() else {
                    fail!(
                        "a non-final resume chunk carries {}, not an array of events (§23.6)",
                        data.value
                    );
                };
                ensure!(
                    !list.is_empty(),
                    "a non-final resume chunk carries no event (§23.6: one or more)"
                );
                events.extend(list.iter().cloned());
                raw.push(data.raw.clone());
            }
            Frame::Response {
                outcome: Err(e), ..
            } => fail!(
                "the resume was answered {} ({}) after {chunks} chunks",
                e.code,
                e.message
            ),
            Frame::Response { outcome: Ok(r), .. } => fail!(
                "a subscribe with since was answered with a success response {} instead of chunks ending in a final chunk (§23.6, §7.2)",
                r.value
            ),
            _ => {}
        }
    }
}

/// Expects `subscribe` with these params to be refused with `code`.
async fn subscribe_err(c: &mut Conn, params: &Value, code: &str) -> CaseResult {
    let id = c.request("subscribe", params).await?;
    let got = c
        .wait_for(PROMPT, &format!("answer to subscribe {id}"), |f| match f {
            Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                Some(f.clone())
            }
            _ => None,
        })
        .await?;
    match got {
        Frame::Response {
            outcome: Err(e), ..
        } if e.code == code => Ok(()),
        other => fail!(
            "subscribe {params} got {}; expected the error {code}",
            other.describe()
        ),
    }
}

/// `since {0: epoch, 1: offset}` (epoch optional).
fn since_offset(epoch: Option<&str>, offset: u64) -> Value {
    let mut m = Vec::new();
    if let Some(e) = epoch {
        m.push((0, Value::text(e)));
    }
    m.push((1, Value::Uint(offset)));
    Value::map(m)
}

/// `since {0: epoch, 2: position}`.
fn since_position(epoch: &str, position: u64) -> Value {
    Value::map([(0, Value::text(epoch)), (2, Value::Uint(position))])
}

/// Checks that `events` are on `topic` with offsets `from..=to`, in order.
fn check_offsets(events: &[Value], topic: &str, from: u64, to: u64) -> CaseResult {
    let mut want = from;
    for e in events {
        ensure_eq!(e.get(0).and_then(Value::as_str), Some(topic), "event topic");
        let (o, _) = event_pos(e)?;
        ensure_eq!(
            o,
            want,
            "offset of the next event (§23.6: every one, in order, once)"
        );
        want += 1;
    }
    ensure_eq!(
        want,
        to + 1,
        "offset after the last event (events {from}..={to} expected)"
    );
    Ok(())
}

/// A `subscribe` result of a durable topic: (epoch, offset, position).
async fn subscribe_durable(
    c: &mut Conn,
    t: &str,
) -> CaseResult<(String, Option<u64>, Option<u64>)> {
    let r = c.ok("subscribe", &topic(t)).await?;
    let v = &r.value;
    crate::frame::typed_map(v).map_err(CaseError::Fail)?;
    let Some(epoch) = v.opt(0).and_then(Value::as_str) else {
        fail!(
            "the subscribe result {v} of durable {t} has no epoch (key 0, §23.5); is --durable-prefix a durable namespace of this server?"
        );
    };
    Ok((
        epoch.to_owned(),
        v.opt(1).and_then(Value::as_u64),
        v.opt(2).and_then(Value::as_u64),
    ))
}

/// A `history` page (§23.7).
#[derive(Debug)]
struct Page {
    events: Vec<Value>,
    epoch: String,
    next: Option<u64>,
    first: u64,
    last: u64,
}

fn history_params(t: &str, from: Option<u64>, dir: Option<&str>, limit: Option<u64>) -> Value {
    let mut m = vec![(0, Value::text(t))];
    if let Some(f) = from {
        m.push((1, Value::Uint(f)));
    }
    if let Some(d) = dir {
        m.push((2, Value::text(d)));
    }
    if let Some(l) = limit {
        m.push((3, Value::Uint(l)));
    }
    Value::map(m)
}

async fn history(
    c: &mut Conn,
    t: &str,
    from: Option<u64>,
    dir: Option<&str>,
    limit: Option<u64>,
) -> CaseResult<Page> {
    let params = history_params(t, from, dir, limit);
    let r = match call_paced(c, "history", &params).await? {
        Ok(r) => r,
        Err(e) if e.code == "method_not_found" => {
            fail!("the server does not serve history (method_not_found; §23.7)")
        }
        Err(e) => fail!("history {params} answered {} ({})", e.code, e.message),
    };
    let v = &r.value;
    crate::frame::typed_map(v).map_err(CaseError::Fail)?;
    let Some(events) = v.get(0).and_then(Value::as_array) else {
        fail!("history result {v} has no events array (key 0, §23.7)");
    };
    let Some(epoch) = v.get(1).and_then(Value::as_str) else {
        fail!("history result {v} has no epoch (key 1)");
    };
    let (Some(first), Some(last)) = (
        v.get(3).and_then(Value::as_u64),
        v.get(4).and_then(Value::as_u64),
    ) else {
        fail!("history result {v} lacks first (3) or last (4)");
    };
    Ok(Page {
        events: events.to_vec(),
        epoch: epoch.to_owned(),
        next: v.opt(2).and_then(Value::as_u64),
        first,
        last,
    })
}

fn offsets(events: &[Value]) -> CaseResult<Vec<u64>> {
    events.iter().map(|e| event_pos(e).map(|p| p.0)).collect()
}

/// The cases.
pub(super) fn cases() -> Vec<Case> {
    let mut v = publish_cases();
    v.extend(idempotency_cases());
    v.extend(subscribe_cases());
    v.extend(resume_cases());
    v.extend(history_cases());
    v.extend(plain_cases());
    v
}

fn publish_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.publish-ack",
            "23.3, 23.2, 23.1",
            "a durable publish is answered with offset 1 then 2, one epoch, a durability and increasing positions",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let a = dpublish(&mut p, &publish(&t, Value::text("one"))).await?;
                let b = dpublish(&mut p, &publish(&t, Value::text("two"))).await?;
                ensure_eq!(a.offset, Some(1), "offset of the first event (§23.2)");
                ensure_eq!(b.offset, Some(2), "offset of the second event (§23.2)");
                ensure_eq!(b.epoch, a.epoch, "epoch of one topic's history (§23.2)");
                ensure!(
                    !a.duplicate && !b.duplicate,
                    "a first publish is no duplicate"
                );
                ensure!(
                    b.position > a.position,
                    "positions increase: {:?} then {:?} (§23.2)",
                    a.position,
                    b.position
                );
                ensure_eq!(a.delivered, 0, "delivered with no subscriber");
                Ok(())
            },
        ),
        Case::new(
            "durable.offsets-gapless",
            "23.2",
            "offsets of one topic are 1, 2, 3, … with no gap; positions of a namespace increase across its topics",
            |ctx| async move {
                let a = durable_topic(&ctx, "a")?;
                let b = durable_topic(&ctx, "b")?;
                let mut p = ctx.client("p").await?;
                let mut last_pos = 0;
                let (mut na, mut nb) = (0, 0);
                for i in 0..6u64 {
                    let (t, n) = if i % 3 == 2 {
                        (&b, &mut nb)
                    } else {
                        (&a, &mut na)
                    };
                    let ack = dpublish(&mut p, &publish(t, Value::Uint(i))).await?;
                    *n += 1;
                    ensure_eq!(ack.offset, Some(*n), "offset of event {i} on {t}");
                    let pos = ack.position.unwrap_or(0);
                    ensure!(pos > last_pos, "position {pos} after {last_pos} (§23.2)");
                    last_pos = pos;
                }
                Ok(())
            },
        ),
        Case::new(
            "durable.event-fields",
            "23.4, 12.1",
            "a live event of a durable topic carries the offset and position of its publish result, and the data as published",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut s = ctx.client("s").await?;
                subscribe_durable(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                let data = Value::map([(0, Value::text("x")), (1, Value::Bytes(vec![0, 255]))]);
                let ack = dpublish(&mut p, &publish(&t, data.clone())).await?;
                ensure_eq!(ack.delivered, 1, "delivered (the subscriber)");
                let e = s.event(&t, PROMPT).await?;
                let (o, pos) = event_pos(&e.value)?;
                ensure_eq!(Some(o), ack.offset, "event offset = publish offset");
                ensure_eq!(Some(pos), ack.position, "event position = publish position");
                ensure_eq!(e.value.get(1), Some(&data), "data");
                ensure_eq!(
                    e.value.get(2).and_then(Value::as_str),
                    Some(user_of(&p).as_str()),
                    "from"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.echo-false",
            "23.3, 11.6",
            "echo false on a durable topic: stored, but not delivered to the publisher",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut c = ctx.client("a").await?;
                subscribe_durable(&mut c, &t).await?;
                let ack = dpublish(&mut c, &publish_echo(&t, Value::Uint(1), false)).await?;
                ensure_eq!(ack.delivered, 0, "delivered");
                ensure_eq!(ack.offset, Some(1), "offset");
                c.none_within(
                    QUIET,
                    "echoed event",
                    |f| matches!(f, Frame::Notification { method, .. } if method == "event"),
                )
                .await
            },
        ),
    ]
}

fn idempotency_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.idempotent-retry",
            "23.3",
            "a publish retried with the same producer and seq is answered duplicate with the original offset and not delivered again",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut s = ctx.client("s").await?;
                subscribe_durable(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                let params = publish_with(&t, Value::text("once"), &producer("prod-1", 1));
                let first = dpublish(&mut p, &params).await?;
                ensure!(
                    !first.duplicate,
                    "the first publish is stored, not a duplicate"
                );
                s.event(&t, PROMPT).await?;
                // The retry, on another connection (as after a reconnect).
                let mut p2 = ctx.client("p2").await?;
                let again = dpublish(&mut p2, &params).await?;
                ensure!(
                    again.duplicate,
                    "the retry is answered duplicate: true (§23.3)"
                );
                ensure_eq!(
                    again.offset,
                    first.offset,
                    "offset of the duplicate (the original's)"
                );
                ensure_eq!(again.position, first.position, "position of the duplicate");
                ensure_eq!(again.epoch, first.epoch, "epoch");
                ensure_eq!(again.delivered, 0, "delivered of a duplicate");
                s.none_within(
                    QUIET,
                    "a second event for a duplicate",
                    |f| matches!(f, Frame::Notification { method, .. } if method == "event"),
                )
                .await?;
                let next = dpublish(&mut p, &publish(&t, Value::Uint(2))).await?;
                ensure_eq!(
                    next.offset,
                    Some(2),
                    "the next offset: the duplicate took none"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.idempotent-seq-rules",
            "23.3",
            "seq may skip numbers; a lower stored seq is a duplicate with its own offset; a skipped seq is conflict {0: last_seq}",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let pp =
                    |seq: u64, d: u64| publish_with(&t, Value::Uint(d), &producer("prod-2", seq));
                let s1 = dpublish(&mut p, &pp(1, 1)).await?;
                let s2 = dpublish(&mut p, &pp(2, 2)).await?;
                let s5 = dpublish(&mut p, &pp(5, 5)).await?;
                ensure!(
                    !s1.duplicate && !s2.duplicate && !s5.duplicate,
                    "seq 1, 2, 5: each stored (gaps allowed, §23.3)"
                );
                ensure_eq!(s5.offset, Some(3), "offset of seq 5");
                let d1 = dpublish(&mut p, &pp(1, 1)).await?;
                ensure!(d1.duplicate, "seq 1 again: duplicate");
                ensure_eq!(d1.offset, s1.offset, "the offset stored with seq 1");
                let d5 = dpublish(&mut p, &pp(5, 5)).await?;
                ensure!(d5.duplicate, "seq 5 (the last) again: duplicate");
                ensure_eq!(d5.offset, s5.offset, "the offset stored with seq 5");
                let e = dpublish_err(&mut p, &pp(3, 3), "conflict").await?;
                check_conflict(&e, 0, 5)?;
                let s6 = dpublish(&mut p, &pp(6, 6)).await?;
                ensure_eq!(s6.offset, Some(4), "seq 6 after the conflict");
                Ok(())
            },
        ),
        Case::new(
            "durable.producer-per-topic",
            "23.3",
            "sequence numbers are per producer per topic: seq 1 of one producer is stored on two topics",
            |ctx| async move {
                let a = durable_topic(&ctx, "a")?;
                let b = durable_topic(&ctx, "b")?;
                let mut p = ctx.client("p").await?;
                let x = dpublish(
                    &mut p,
                    &publish_with(&a, Value::Uint(1), &producer("prod-3", 1)),
                )
                .await?;
                let y = dpublish(
                    &mut p,
                    &publish_with(&b, Value::Uint(1), &producer("prod-3", 1)),
                )
                .await?;
                ensure!(
                    !x.duplicate && !y.duplicate,
                    "both stored (§23.3: per topic)"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.idempotency-key",
            "23.3",
            "a publish repeating an idempotency key is a duplicate with the first offset, whatever its data",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let key = [(5, Value::text("order-1-line-1"))];
                let first = dpublish(&mut p, &publish_with(&t, Value::text("a"), &key)).await?;
                ensure!(!first.duplicate, "the first publish with a key is stored");
                let again = dpublish(&mut p, &publish_with(&t, Value::text("b"), &key)).await?;
                ensure!(again.duplicate, "the same key again: duplicate (§23.3)");
                ensure_eq!(again.offset, first.offset, "offset of the key's event");
                let other = dpublish(
                    &mut p,
                    &publish_with(&t, Value::text("c"), &[(5, Value::text("order-1-line-2"))]),
                )
                .await?;
                ensure_eq!(other.offset, Some(2), "another key is stored");
                Ok(())
            },
        ),
        Case::new(
            "durable.expected-offset",
            "23.3",
            "expected_offset stores only when it equals the last offset; otherwise conflict {1: last_offset}",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let cas = |e: u64, d: u64| publish_with(&t, Value::Uint(d), &[(6, Value::Uint(e))]);
                let a = dpublish(&mut p, &cas(0, 1)).await?;
                ensure_eq!(
                    a.offset,
                    Some(1),
                    "expected_offset 0 on an empty topic stores offset 1"
                );
                let e = dpublish_err(&mut p, &cas(0, 2), "conflict").await?;
                check_conflict(&e, 1, 1)?;
                let e = dpublish_err(&mut p, &cas(7, 2), "conflict").await?;
                check_conflict(&e, 1, 1)?;
                let b = dpublish(&mut p, &cas(1, 2)).await?;
                ensure_eq!(b.offset, Some(2), "expected_offset 1 stores offset 2");
                let h = history(&mut p, &t, None, None, None).await?;
                ensure_eq!(
                    offsets(&h.events)?,
                    vec![1, 2],
                    "stored offsets: the conflicts stored nothing"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.expected-offset-retry",
            "23.3",
            "a compare-and-set publish retried with its producer and seq is a duplicate, not a conflict",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let mut extra = producer("prod-4", 1);
                extra.push((6, Value::Uint(0)));
                let params = publish_with(&t, Value::Uint(1), &extra);
                let a = dpublish(&mut p, &params).await?;
                ensure!(!a.duplicate, "stored");
                let b = dpublish(&mut p, &params).await?;
                ensure!(
                    b.duplicate,
                    "the retry: duplicate (§23.3), though the last offset is now 1"
                );
                ensure_eq!(b.offset, a.offset, "offset");
                Ok(())
            },
        ),
        Case::new(
            "durable.invalid-ids",
            "23.3",
            "producer without seq, seq without producer, seq 0 or 2^63, producer or key empty or over 128 bytes: invalid_params",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let long = "k".repeat(129);
                let bad: Vec<(&str, Vec<(u64, Value)>)> = vec![
                    ("producer without seq", vec![(3, Value::text("p"))]),
                    ("seq without producer", vec![(4, Value::Uint(1))]),
                    ("seq 0", producer("p", 0)),
                    ("seq 2^63", producer("p", MAX_SEQ + 1)),
                    ("empty producer", producer("", 1)),
                    ("129-byte producer", producer(&long, 1)),
                    ("empty key", vec![(5, Value::text(""))]),
                    ("129-byte key", vec![(5, Value::text(long.clone()))]),
                ];
                for (what, extra) in bad {
                    dpublish_err(
                        &mut p,
                        &publish_with(&t, Value::Uint(0), &extra),
                        "invalid_params",
                    )
                    .await
                    .map_err(|e| e.context(what))?;
                }
                // The bounds themselves are valid.
                let ok = dpublish(
                    &mut p,
                    &publish_with(&t, Value::Uint(1), &producer(&"p".repeat(128), MAX_SEQ)),
                )
                .await?;
                ensure_eq!(
                    ok.offset,
                    Some(1),
                    "a 128-byte producer with seq 2^63-1 is stored; nothing before it was"
                );
                Ok(())
            },
        ),
    ]
}

fn subscribe_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.subscribe-result",
            "23.5, 23.2, 23.1",
            "subscribe to a durable topic answers its epoch, last offset and position; an empty topic already has the epoch its first publish gets",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut s = ctx.client("s").await?;
                let (epoch, offset, position) = subscribe_durable(&mut s, &t).await?;
                ensure_eq!(offset, Some(0), "offset of an empty topic (§23.5)");
                ensure_eq!(position, Some(0), "position of an empty topic (§23.5)");
                let mut p = ctx.client("p").await?;
                let a = publish_n(&mut p, &t, 2).await?;
                ensure_eq!(
                    a[0].epoch,
                    epoch,
                    "the first publish's epoch is the one subscribe gave (§23.2)"
                );
                let mut s2 = ctx.client("s2").await?;
                let (epoch2, offset2, position2) = subscribe_durable(&mut s2, &t).await?;
                ensure_eq!(epoch2, epoch, "epoch");
                ensure_eq!(offset2, Some(2), "last offset");
                ensure_eq!(
                    position2,
                    a[1].position,
                    "position of the event at offset 2"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.subscribe-result-pattern",
            "23.5",
            "subscribe to a pattern inside the namespace answers the namespace's epoch and last position, no offset",
            |ctx| async move {
                let ns = durable_ns(&ctx)?;
                let mut p = ctx.client("p").await?;
                let a = dpublish(&mut p, &publish(&format!("{ns}.a"), Value::Uint(1))).await?;
                let mut s = ctx.client("s").await?;
                let r = s.ok("subscribe", &topic(&format!("{ns}.*"))).await?;
                let v = &r.value;
                ensure!(
                    v.opt(0)
                        .and_then(Value::as_str)
                        .is_some_and(|e| !e.is_empty()),
                    "result {v} has the namespace's epoch (key 0, §23.5)"
                );
                ensure!(
                    v.opt(1).is_none(),
                    "result {v} of a pattern has no offset (§23.5)"
                );
                let pos = v.opt(2).and_then(Value::as_u64);
                ensure!(
                    pos.is_some_and(|x| Some(x) >= a.position),
                    "result {v}: position at least {:?}, the last publish's",
                    a.position
                );
                let b = dpublish(&mut p, &publish(&format!("{ns}.b"), Value::Uint(2))).await?;
                let e = s.event(&format!("{ns}.b"), PROMPT).await?;
                let (_, epos) = event_pos(&e.value)?;
                ensure_eq!(Some(epos), b.position, "the live event's position");
                ensure!(
                    pos < Some(epos),
                    "live events come after the result's position"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.subscribe-live-from-result",
            "23.5",
            "after a subscribe without since, every later event arrives, with offsets right after the result's",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                publish_n(&mut p, &t, 3).await?;
                let mut s = ctx.client("s").await?;
                let (_, offset, _) = subscribe_durable(&mut s, &t).await?;
                ensure_eq!(offset, Some(3), "offset");
                publish_n(&mut p, &t, 3).await?;
                for want in 4..=6u64 {
                    let e = s.event(&t, PROMPT).await?;
                    ensure_eq!(
                        event_pos(&e.value)?.0,
                        want,
                        "offset of the next live event"
                    );
                }
                Ok(())
            },
        ),
    ]
}

fn resume_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.resume-recovered",
            "23.6, 7.1, 7.2",
            "subscribe with since streams the missed events in chunks, then a final chunk recovered with the count, then live events",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, 5).await?;
                let epoch = acks[0].epoch.clone();
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(Some(&epoch), 2)).await?;
                ensure_eq!(r.fin.outcome, "recovered", "outcome");
                ensure_eq!(r.fin.count, 3, "count");
                ensure_eq!(r.fin.epoch, epoch, "epoch");
                ensure_eq!(r.fin.offset, 5, "offset live from");
                ensure_eq!(Some(r.fin.position), acks[4].position, "position of the event at offset 5");
                ensure!(r.chunks >= 1, "the missed events come in at least one chunk");
                check_offsets(&r.events, &t, 3, 5)?;
                ensure_eq!(r.events[0].get(1), Some(&Value::Uint(2)), "data of offset 3");
                let live = dpublish(&mut p, &publish(&t, Value::Uint(99))).await?;
                ensure_eq!(live.delivered, 1, "delivered: the resumed subscription is live");
                let e = s.event(&t, PROMPT).await?;
                ensure_eq!(event_pos(&e.value)?.0, 6, "the first live event's offset");
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-up-to-date",
            "23.6",
            "a resume from the last offset is the final chunk alone: recovered 0",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, 2).await?;
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(Some(&acks[1].epoch), 2)).await?;
                ensure_eq!(r.chunks, 0, "chunks before the final one");
                ensure_eq!((r.fin.outcome.as_str(), r.fin.count, r.fin.offset), ("recovered", 0, 2), "outcome, count, offset");
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-from-start",
            "23.6",
            "since {1: 0} without an epoch streams everything stored; an empty topic recovers 0 with a valid epoch",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let empty = durable_topic(&ctx, "empty")?;
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &empty, since_offset(None, 0)).await?;
                ensure_eq!((r.fin.outcome.as_str(), r.fin.count, r.fin.offset, r.fin.position), ("recovered", 0, 0, 0), "an empty topic");
                ensure!(!r.fin.epoch.is_empty(), "an empty topic has an epoch (§23.2)");
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, 4).await?;
                let r = resume(&mut s, &t, since_offset(None, 0)).await?;
                ensure_eq!(r.fin.count, 4, "count");
                ensure_eq!(r.fin.epoch, acks[0].epoch, "epoch");
                check_offsets(&r.events, &t, 1, 4)
            },
        ),
        Case::new(
            "durable.resume-seam",
            "23.6, 6.2",
            "a resume while another connection keeps publishing: chunks then live events give every offset exactly once, in order",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let (before, during) = (40u64, 120u64);
                require_burst(&ctx, 8, "the seam case")?;
                let mut p = ctx.client("p").await?;
                publish_n(&mut p, &t, before).await?;
                let t2 = t.clone();
                let publisher = tokio::spawn(async move {
                    for i in 0..during {
                        dpublish(&mut p, &publish(&t2, Value::Uint(1000 + i))).await?;
                    }
                    Ok::<(), CaseError>(())
                });
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(None, 0)).await?;
                ensure_eq!(r.fin.outcome, "recovered", "outcome");
                ensure_eq!(r.fin.count, r.fin.offset, "count = offset when resuming from 0");
                check_offsets(&r.events, &t, 1, r.fin.offset)?;
                let total = before + during;
                let mut next = r.fin.offset + 1;
                while next <= total {
                    let e = s.event(&t, PROMPT).await.map_err(|e| e.context(format!("waiting for offset {next} of {total}")))?;
                    let (o, _) = event_pos(&e.value)?;
                    ensure_eq!(o, next, "offset of the next live event after the final chunk at {} (§23.6: no gap, no duplicate)", r.fin.offset);
                    next += 1;
                }
                match publisher.await {
                    Ok(r) => r?,
                    Err(e) => fail!("the publisher task failed: {e}"),
                }
                s.none_within(QUIET, "an event after the last offset", |f| {
                    matches!(f, Frame::Notification { method, .. } if method == "event")
                })
                .await
            },
        )
        .slow(),
        Case::new(
            "durable.resume-chunks",
            "23.6, 7.1, 4.6",
            "a catch-up larger than a frame comes in several chunks, each within max_frame_size, events in order across them",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let l = ctx.limits();
                let size = l.max_payload.min(l.max_frame_size / 4).saturating_sub(64).max(16);
                let count = (3 * l.max_frame_size).div_ceil(size) + 1;
                if count > 200 {
                    skip!("{count} events of {size} bytes would be needed to fill three frames");
                }
                let mut p = ctx.client("p").await?;
                let body = usize::try_from(size).unwrap_or(16);
                for i in 0..count {
                    let mut data = vec![0x5a; body];
                    data[..8].copy_from_slice(&i.to_be_bytes());
                    dpublish(&mut p, &publish(&t, Value::Bytes(data))).await?;
                }
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(None, 0)).await?;
                ensure!(
                    r.chunks >= 3,
                    "{count} events of {size} bytes came in {} chunks; each frame is at most max_frame_size {} (§4.6)",
                    r.chunks,
                    l.max_frame_size
                );
                ensure_eq!(r.fin.count, count, "count");
                check_offsets(&r.events, &t, 1, count)?;
                for (i, e) in r.events.iter().enumerate() {
                    let ok = matches!(e.get(1), Some(Value::Bytes(b)) if b.len() == body && b[..8] == (i as u64).to_be_bytes());
                    ensure!(ok, "the data of offset {} is not the published one", i + 1);
                }
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-slow-reader",
            "23.6, 18",
            "a resume larger than the outbound queue, to a client that starts reading late, is paced by its reading, not closed as slow",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let l = ctx.limits();
                let size = l.max_payload.min(l.max_frame_size / 4).saturating_sub(64).max(16);
                let count = (3 * ctx.settings().outbound_bytes).div_ceil(size) + 1;
                if count > 400 {
                    skip!("{count} events of {size} bytes would be needed to exceed the outbound queue three times");
                }
                let mut p = ctx.client("p").await?;
                let data = Value::Bytes(vec![0xa5; usize::try_from(size).unwrap_or(16)]);
                for _ in 0..count {
                    dpublish(&mut p, &publish(&t, data.clone())).await?;
                }
                // A small receive buffer, so the kernel holds little of it.
                let token = ctx.token(&ctx.claims(&ctx.user("s"))).await?;
                let mut s = ctx
                    .connect_with(Handshake {
                        recv_buffer: Some(4096),
                        ..Default::default()
                    })
                    .await?;
                if let Err(e) = ctx.auth(&mut s, &token).await? {
                    fail!("auth failed: {}", e.code);
                }
                let id = s
                    .request("subscribe", &Value::map([(0, Value::text(&t)), (2, since_offset(None, 0))]))
                    .await?;
                // Read nothing for a while: the server must wait for credit.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let r = read_resume(&mut s, id).await?;
                ensure_eq!(r.fin.count, count, "count");
                check_offsets(&r.events, &t, 1, count)?;
                s.alive().await
            },
        )
        .slow(),
        Case::new(
            "durable.resume-cancel",
            "23.6, 8",
            "a resume cancelled while it streams ends with one terminal frame; cancelled leaves no subscription, a final chunk a live one",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let l = ctx.limits();
                let size = l.max_payload.min(l.max_frame_size / 4).saturating_sub(64).max(16);
                let count = (2 * ctx.settings().outbound_bytes).div_ceil(size) + 1;
                if count > 400 {
                    skip!("{count} events of {size} bytes would be needed for a long resume");
                }
                let mut p = ctx.client("p").await?;
                let data = Value::Bytes(vec![0x3c; usize::try_from(size).unwrap_or(16)]);
                for _ in 0..count {
                    dpublish(&mut p, &publish(&t, data.clone())).await?;
                }
                let mut s = ctx.client("s").await?;
                let params = Value::map([(0, Value::text(&t)), (2, since_offset(None, 0))]);
                let id = s.request("subscribe", &params).await?;
                s.notify("cancel", &cancel(id)).await?;
                let mut terminal = None;
                while terminal.is_none() {
                    let f = s
                        .wait_for(RESUME_WAIT, "the resume's terminal frame", |f| match f {
                            Frame::Chunk { id: i, .. } | Frame::Response { id: i, .. } if *i == id => {
                                Some(f.clone())
                            }
                            _ => None,
                        })
                        .await?;
                    match f {
                        Frame::Chunk { fin: true, .. } => terminal = Some(Ok(())),
                        Frame::Chunk { .. } => {}
                        Frame::Response { outcome: Err(e), .. } => terminal = Some(Err(e)),
                        other => fail!("unexpected {} (§7.2)", other.describe()),
                    }
                }
                s.none_within(QUIET, "a second terminal frame", |f| f.reply_id() == Some(id)).await?;
                let again = s.call("subscribe", &topic(&t)).await?;
                match (terminal, again) {
                    (Some(Err(e)), Ok(_)) if e.code == "cancelled" => Ok(()),
                    (Some(Ok(())), Err(e)) if e.code == "conflict" => Ok(()),
                    (Some(Err(e)), _) if e.code != "cancelled" => {
                        fail!("the cancelled resume answered {} ({}), not cancelled (§8)", e.code, e.message)
                    }
                    (Some(Err(_)), Err(e)) => fail!(
                        "after a cancelled resume, subscribing again answered {}: the cancelled one left a subscription (§8: it took no effect)",
                        e.code
                    ),
                    (_, Ok(_)) => fail!("after a completed resume, subscribing again succeeded: the resume left no subscription"),
                    (_, Err(e)) => fail!("after a completed resume, subscribing again answered {}, not conflict", e.code),
                }
            },
        ),
        Case::new(
            "durable.payload-byte-for-byte",
            "23.4, 23.6, 23.7, 2",
            "durable data with non-shortest heads and tags comes back byte for byte live, in a resume chunk and in history",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                // [19 0005, c1 1a 69544840, f9 3e00]: a 2-byte head for 5, a tag, a half float.
                let raw = hex::decode("83190005c11a69544840f93e00").unwrap_or_default();
                let mut s = ctx.client("s").await?;
                subscribe_durable(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                dpublish(&mut p, &publish(&t, Value::Raw(raw.clone()))).await?;
                let has = |b: &[u8]| b.windows(raw.len()).any(|w| w == raw.as_slice());
                let e = s.event(&t, PROMPT).await?;
                ensure!(has(&e.raw), "the live event's data differs from the published bytes");
                let r = resume(&mut ctx.client("r").await?, &t, since_offset(None, 0)).await?;
                ensure!(r.raw.iter().any(|c| has(c)), "the resume chunk's data differs from the published bytes");
                let h = match call_paced(&mut p, "history", &history_params(&t, None, None, None)).await? {
                    Ok(h) => h,
                    Err(e) => fail!("history answered {}", e.code),
                };
                ensure!(has(&h.raw), "the history page's data differs from the published bytes");
                Ok(())
            },
        ),
        Case::new(
            "durable.since-null",
            "23.6, 23.5, 4.8",
            "since null is since absent: a plain response with the epoch, no chunks",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut s = ctx.client("s").await?;
                let r = s.ok("subscribe", &Value::map([(0, Value::text(&t)), (2, Value::Null)])).await?;
                ensure!(
                    r.value.opt(0).and_then(Value::as_str).is_some() && r.value.opt(1).and_then(Value::as_u64) == Some(0),
                    "result {} is not the subscribe result of an empty durable topic (§23.5)",
                    r.value
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-reset",
            "23.6",
            "since with another epoch, or an offset beyond the last, is answered reset with the current epoch and offset",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, 3).await?;
                let epoch = &acks[0].epoch;
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(Some("not-this-epoch"), 1)).await?;
                ensure_eq!((r.fin.outcome.as_str(), r.fin.count, r.fin.offset), ("reset", 0, 3), "another epoch: outcome, count, offset");
                ensure_eq!(&r.fin.epoch, epoch, "the current epoch");
                ensure_eq!(r.chunks, 0, "nothing streamed");
                let mut s2 = ctx.client("s2").await?;
                let r = resume(&mut s2, &t, since_offset(Some(epoch), 9)).await?;
                ensure_eq!((r.fin.outcome.as_str(), r.fin.offset), ("reset", 3), "an offset beyond the last");
                // Live after a reset, from the current offset.
                dpublish(&mut p, &publish(&t, Value::Uint(3))).await?;
                let e = s2.event(&t, PROMPT).await?;
                ensure_eq!(event_pos(&e.value)?.0, 4, "live after reset");
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-too-old",
            "23.6, 23.2",
            "when retention removed events after since, the resume is too_old with the earliest offset, and live from the last",
            |ctx| async move {
                let (Some(prefix), max) = (ctx.settings().durable_capped_prefix.clone(), ctx.settings().durable_capped_events) else {
                    skip!("needs --durable-capped-prefix (a durable namespace with max-events, and --durable-capped-events)");
                };
                let t = format!("{}.t", ctx.ns_under(&prefix));
                let n = max + 4;
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, n).await?;
                let epoch = acks[0].epoch.clone();
                // Retention runs in the background, in slices (§23.1): wait
                // until it kept exactly the newest max-events events.
                let want_first = n - max + 1;
                let deadline = tokio::time::Instant::now() + PROMPT;
                let first = loop {
                    let h = history(&mut p, &t, None, None, None).await?;
                    ensure!(
                        h.first <= want_first,
                        "retention kept fewer than max-events {max}: first {} of last {}",
                        h.first,
                        h.last
                    );
                    if h.first == want_first {
                        ensure_eq!(
                            offsets(&h.events)?,
                            (want_first..=n).collect::<Vec<_>>(),
                            "history after retention: from the first stored offset to the last"
                        );
                        break h.first;
                    }
                    if tokio::time::Instant::now() > deadline {
                        fail!(
                            "retention (max-events {max}) did not reach first offset {want_first} within {PROMPT:?} after {n} events: first is {}",
                            h.first
                        );
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                };
                let mut s = ctx.client("s").await?;
                let r = resume(&mut s, &t, since_offset(Some(&epoch), 1)).await?;
                ensure_eq!(r.fin.outcome, "too_old", "outcome");
                ensure_eq!(r.fin.earliest, Some(first), "earliest (the first stored offset)");
                ensure_eq!((r.fin.count, r.fin.offset, r.chunks), (0, n, 0), "count, offset, chunks");
                ensure_eq!(r.fin.epoch, epoch, "epoch");
                // A resume from just before the first stored offset recovers.
                let mut s2 = ctx.client("s2").await?;
                let r2 = resume(&mut s2, &t, since_offset(Some(&epoch), first - 1)).await?;
                ensure_eq!(r2.fin.outcome, "recovered", "from first - 1");
                check_offsets(&r2.events, &t, first, n)?;
                dpublish(&mut p, &publish(&t, Value::Uint(n))).await?;
                let e = s.event(&t, PROMPT).await?;
                ensure_eq!(event_pos(&e.value)?.0, n + 1, "live after too_old");
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-pattern",
            "23.6, 23.2",
            "a pattern resumes by namespace position: the matching topics' events in position order, final offset 0",
            |ctx| async move {
                let ns = durable_ns(&ctx)?;
                let (a, b, other) = (format!("{ns}.x.a"), format!("{ns}.x.b"), format!("{ns}.y.c"));
                let pattern = format!("{ns}.x.*");
                let mut s = ctx.client("s").await?;
                let r = s.ok("subscribe", &topic(&pattern)).await?;
                let Some(epoch) = r.value.opt(0).and_then(Value::as_str).map(str::to_owned) else {
                    fail!("subscribe {pattern} gave {} without an epoch (§23.5)", r.value);
                };
                let Some(start) = r.value.opt(2).and_then(Value::as_u64) else {
                    fail!("subscribe {pattern} gave {} without a position", r.value);
                };
                s.ok("unsubscribe", &topic(&pattern)).await?;
                let mut p = ctx.client("p").await?;
                let mut want = Vec::new();
                for (i, t) in [&a, &other, &b, &a].into_iter().enumerate() {
                    let ack = dpublish(&mut p, &publish(t, Value::Uint(i as u64))).await?;
                    if t != &other {
                        want.push((t.clone(), ack.position.unwrap_or(0)));
                    }
                }
                let mut s2 = ctx.client("s2").await?;
                let r = resume(&mut s2, &pattern, since_position(&epoch, start)).await?;
                ensure_eq!(r.fin.outcome, "recovered", "outcome");
                ensure_eq!(r.fin.count, 3, "count (the other topic is not matched)");
                ensure_eq!(r.fin.offset, 0, "offset of a pattern resume");
                ensure_eq!(r.fin.epoch, epoch, "the namespace's epoch");
                let got: Vec<(String, u64)> = r
                    .events
                    .iter()
                    .map(|e| Ok((e.get(0).and_then(Value::as_str).unwrap_or("").to_owned(), event_pos(e)?.1)))
                    .collect::<CaseResult<_>>()?;
                ensure_eq!(got, want, "(topic, position) of the streamed events");
                ensure!(r.fin.position >= want[2].1, "live from position {} at least the last event's", r.fin.position);
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-checks",
            "23.6",
            "since needs an offset (exact topic) or a position (pattern), not the other: invalid_params",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let pat = format!("{}.*", durable_ns(&ctx)?);
                let mut s = ctx.client("s").await?;
                let sub = |t: &str, since: Value| Value::map([(0, Value::text(t)), (2, since)]);
                let bad = [
                    ("exact topic, since {}", sub(&t, Value::empty_map())),
                    ("exact topic, since with a position", sub(&t, Value::map([(2, Value::Uint(0))]))),
                    ("exact topic, since with both", sub(&t, Value::map([(1, Value::Uint(0)), (2, Value::Uint(0))]))),
                    ("pattern, since with an offset", sub(&pat, Value::map([(1, Value::Uint(0))]))),
                    ("pattern, since {}", sub(&pat, Value::empty_map())),
                ];
                for (what, params) in bad {
                    subscribe_err(&mut s, &params, "invalid_params")
                        .await
                        .map_err(|e| e.context(what))?;
                }
                // None of them created a subscription.
                let r = resume(&mut s, &t, since_offset(None, 0)).await?;
                ensure_eq!(r.fin.outcome, "recovered", "a valid resume afterwards");
                Ok(())
            },
        ),
        Case::new(
            "durable.resume-already-subscribed",
            "23.6, 11.4",
            "a resume of a pattern the connection already has is conflict, like any subscribe",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut s = ctx.client("s").await?;
                subscribe_durable(&mut s, &t).await?;
                subscribe_err(&mut s, &Value::map([(0, Value::text(&t)), (2, since_offset(None, 0))]), "conflict").await
            },
        ),
    ]
}

fn history_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.history-forward",
            "23.7",
            "history pages forwards with limit and next; the last page has no next; first, last and epoch are given",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let acks = publish_n(&mut p, &t, 5).await?;
                let mut seen = Vec::new();
                let mut from = None;
                let mut pages = 0;
                loop {
                    let h = history(&mut p, &t, from, None, Some(2)).await?;
                    pages += 1;
                    ensure_eq!((h.first, h.last), (1, 5), "first, last");
                    ensure_eq!(h.epoch, acks[0].epoch, "epoch");
                    ensure!(h.events.len() <= 2, "a page holds at most limit events");
                    seen.extend(offsets(&h.events)?);
                    match h.next {
                        Some(n) => {
                            ensure_eq!(
                                Some(n),
                                seen.last().map(|l| l + 1),
                                "next = the offset after the page"
                            );
                            from = Some(n);
                        }
                        None => break,
                    }
                    ensure!(pages < 10, "history does not reach the end");
                }
                ensure_eq!(seen, vec![1, 2, 3, 4, 5], "offsets of all pages");
                let h = history(&mut p, &t, None, Some("forward"), None).await?;
                ensure_eq!(
                    h.events.get(2).and_then(|e| e.get(1)),
                    Some(&Value::Uint(2)),
                    "data of offset 3 as published"
                );
                ensure_eq!(h.next, None, "one page with the default limit");
                Ok(())
            },
        ),
        Case::new(
            "durable.history-backward",
            "23.7",
            "history pages backwards from the last offset down to the first",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                publish_n(&mut p, &t, 5).await?;
                let h = history(&mut p, &t, None, Some("backward"), Some(2)).await?;
                ensure_eq!(offsets(&h.events)?, vec![5, 4], "the newest page");
                ensure_eq!(h.next, Some(3), "next");
                let h = history(&mut p, &t, Some(3), Some("backward"), Some(2)).await?;
                ensure_eq!(offsets(&h.events)?, vec![3, 2], "the page before");
                ensure_eq!(h.next, Some(1), "next");
                let h = history(&mut p, &t, Some(1), Some("backward"), Some(2)).await?;
                ensure_eq!(offsets(&h.events)?, vec![1], "the oldest page");
                ensure_eq!(h.next, None, "no next at the first offset");
                let h = history(&mut p, &t, Some(99), Some("backward"), Some(1)).await?;
                ensure_eq!(
                    offsets(&h.events)?,
                    vec![5],
                    "a from above last starts at last"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.history-edges",
            "23.7",
            "an empty durable topic, a from beyond the last, an unknown direction, limit 0 and a limit above the cap",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                let h = history(&mut p, &durable_topic(&ctx, "empty")?, None, None, None).await?;
                ensure!(
                    h.events.is_empty() && h.next.is_none(),
                    "an empty topic: no events, no next"
                );
                ensure_eq!(
                    (h.first, h.last),
                    (1, 0),
                    "first, last of an empty topic (§23.7)"
                );
                publish_n(&mut p, &t, 2).await?;
                let h = history(&mut p, &t, Some(3), None, None).await?;
                ensure!(
                    h.events.is_empty() && h.next.is_none(),
                    "from above last forwards: empty, no next"
                );
                let h = history(&mut p, &t, None, None, Some(1_000_000)).await?;
                ensure_eq!(
                    offsets(&h.events)?,
                    vec![1, 2],
                    "a limit above the cap is the cap"
                );
                for (what, params) in [
                    (
                        "direction sideways",
                        history_params(&t, None, Some("sideways"), None),
                    ),
                    ("limit 0", history_params(&t, None, None, Some(0))),
                ] {
                    p.err("history", &params, "invalid_params")
                        .await
                        .map_err(|e| e.context(what))?;
                }
                Ok(())
            },
        ),
        Case::new(
            "durable.history-latest",
            "23.8",
            "history.latest gives each topic's newest event in topic order, paging with after and next; topics without events are absent",
            |ctx| async move {
                let ns = durable_ns(&ctx)?;
                let (a, b, c) = (
                    format!("{ns}.s.a"),
                    format!("{ns}.s.b"),
                    format!("{ns}.s.c"),
                );
                let mut p = ctx.client("p").await?;
                dpublish(&mut p, &publish(&b, Value::text("b1"))).await?;
                dpublish(&mut p, &publish(&a, Value::text("a1"))).await?;
                let a2 = dpublish(&mut p, &publish(&a, Value::text("a2"))).await?;
                let mut s = ctx.client("s").await?;
                subscribe_durable(&mut s, &c).await?; // c exists, without events
                let pattern = format!("{ns}.s.*");
                let mut got: Vec<(String, Value, u64)> = Vec::new();
                let mut after: Option<String> = None;
                for _ in 0..10 {
                    let mut m = vec![(0, Value::text(&pattern)), (2, Value::Uint(1))];
                    if let Some(x) = &after {
                        m.push((1, Value::text(x)));
                    }
                    let r = match call_paced(&mut p, "history.latest", &Value::map(m)).await? {
                        Ok(r) => r,
                        Err(e) => fail!("history.latest answered {} ({})", e.code, e.message),
                    };
                    let Some(evs) = r.value.get(0).and_then(Value::as_array) else {
                        fail!("history.latest result {} has no events (key 0)", r.value);
                    };
                    ensure!(evs.len() <= 1, "a page holds at most limit events");
                    for e in evs {
                        got.push((
                            e.get(0).and_then(Value::as_str).unwrap_or("").to_owned(),
                            e.get(1).cloned().unwrap_or(Value::Null),
                            event_pos(e)?.0,
                        ));
                    }
                    match r.value.opt(1).and_then(Value::as_str) {
                        Some(n) => after = Some(n.to_owned()),
                        None => break,
                    }
                }
                ensure_eq!(
                    got,
                    vec![
                        (a.clone(), Value::text("a2"), a2.offset.unwrap_or(0)),
                        (b.clone(), Value::text("b1"), 1),
                    ],
                    "(topic, data, offset) of each topic's newest event"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.history-latest-exact",
            "23.8",
            "history.latest of an exact durable topic gives its newest event, without next",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let mut p = ctx.client("p").await?;
                publish_n(&mut p, &t, 3).await?;
                let r = match call_paced(
                    &mut p,
                    "history.latest",
                    &Value::map([(0, Value::text(&t))]),
                )
                .await?
                {
                    Ok(r) => r,
                    Err(e) => fail!("history.latest answered {} ({})", e.code, e.message),
                };
                let evs = r.value.get(0).and_then(Value::as_array).unwrap_or_default();
                ensure_eq!(offsets(evs)?, vec![3], "the newest offset");
                ensure!(
                    r.value.opt(1).is_none(),
                    "no next after the only topic: {}",
                    r.value
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.history-forbidden",
            "23.7, 23.8, 23.6, 9.3",
            "history, history.latest and a resume need a sub capability covering the topic; a durable publish a pub capability",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let ns = durable_ns(&ctx)?;
                let other = format!("{}.other", ctx.ns());
                let claims =
                    ctx.claims_caps(&ctx.user("c"), &[other.as_str()], &[other.as_str()], false);
                let mut c = ctx.client_with(&claims).await?;
                c.err(
                    "history",
                    &history_params(&t, None, None, None),
                    "forbidden",
                )
                .await?;
                c.err(
                    "history.latest",
                    &Value::map([(0, Value::text(format!("{ns}.*")))]),
                    "forbidden",
                )
                .await?;
                subscribe_err(
                    &mut c,
                    &Value::map([(0, Value::text(&t)), (2, since_offset(None, 0))]),
                    "forbidden",
                )
                .await?;
                dpublish_err(
                    &mut c,
                    &publish_with(&t, Value::Uint(1), &producer("p", 1)),
                    "forbidden",
                )
                .await?;
                Ok(())
            },
        ),
        Case::new(
            "durable.since-on-forbidden-topic-is-forbidden",
            "23.6, 11.4, 9.3",
            "subscribe with since checks conflict, limit and capability before durability and since: a client without sub rights learns nothing about the topic",
            |ctx| async move {
                let t = durable_topic(&ctx, "t")?;
                let ns = durable_ns(&ctx)?;
                let plain = ctx.topic("plain");
                let other = format!("{}.other", ctx.ns());
                let claims =
                    ctx.claims_caps(&ctx.user("c"), &[other.as_str()], &[other.as_str()], false);
                let mut c = ctx.client_with(&claims).await?;
                let sub = |t: &str, since: Value| Value::map([(0, Value::text(t)), (2, since)]);
                let refused = [
                    ("since on a plain topic", sub(&plain, since_offset(None, 0))),
                    (
                        "since on a pattern spanning namespaces",
                        sub(">", since_position("e", 0)),
                    ),
                    (
                        "an exact durable topic with since {}",
                        sub(&t, Value::empty_map()),
                    ),
                    (
                        "a durable pattern with an offset",
                        sub(&format!("{ns}.*"), Value::map([(1, Value::Uint(0))])),
                    ),
                    ("a valid resume", sub(&t, since_offset(None, 0))),
                ];
                for (what, params) in refused {
                    subscribe_err(&mut c, &params, "forbidden")
                        .await
                        .map_err(|e| e.context(what))?;
                }
                // With the right: a plain topic already subscribed is a
                // conflict before `since` on it is refused as not durable.
                let mut s = ctx.client("s").await?;
                s.ok("subscribe", &topic(&plain)).await?;
                subscribe_err(&mut s, &sub(&plain, since_offset(None, 0)), "conflict")
                    .await
                    .map_err(|e| e.context("since on a plain topic already subscribed"))?;
                subscribe_err(
                    &mut s,
                    &sub(&format!("{}.x", ctx.ns()), since_offset(None, 0)),
                    "invalid_params",
                )
                .await
                .map_err(|e| e.context("since on a plain topic"))?;
                // The refused resume left no subscription behind.
                s.ok("subscribe", &topic(&format!("{}.x", ctx.ns())))
                    .await?;
                Ok(())
            },
        ),
    ]
}

fn plain_cases() -> Vec<Case> {
    vec![
        Case::new(
            "durable.plain-topic-keys",
            "23.9, 11.6",
            "keys 3-6 of publish on a plain topic are invalid_params and publish nothing; a plain publish result has only delivered",
            |ctx| async move {
                durable_ns(&ctx)?;
                let t = ctx.topic("plain");
                let mut s = ctx.client("s").await?;
                subscribe(&mut s, &t).await?;
                let mut p = ctx.client("p").await?;
                let extras: [(&str, Vec<(u64, Value)>); 4] = [
                    ("producer and seq", producer("p", 1)),
                    ("seq", vec![(4, Value::Uint(1))]),
                    ("key", vec![(5, Value::text("k"))]),
                    ("expected_offset", vec![(6, Value::Uint(0))]),
                ];
                for (what, extra) in extras {
                    dpublish_err(
                        &mut p,
                        &publish_with(&t, Value::Uint(1), &extra),
                        "invalid_params",
                    )
                    .await
                    .map_err(|e| e.context(format!("{what} on a plain topic (§23.9)")))?;
                }
                s.none_within(
                    QUIET,
                    "an event of a refused publish",
                    |f| matches!(f, Frame::Notification { method, .. } if method == "event"),
                )
                .await?;
                let r = p.ok("publish", &publish(&t, Value::Uint(2))).await?;
                ensure!(
                    (1..=5).all(|k| r.value.opt(k).is_none()),
                    "a plain publish result {} carries durable keys (§23.9)",
                    r.value
                );
                let e = s.event(&t, PROMPT).await?;
                ensure!(
                    e.value.opt(3).is_none() && e.value.opt(4).is_none(),
                    "an event of a plain topic {} carries offset or position (§23.4)",
                    e.value
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.mixed-pattern-live",
            "23.4, 23.5, 23.9",
            "a pattern overlapping the durable namespace without being inside it subscribes live with {}; its durable events carry offsets",
            |ctx| async move {
                // Skips without --durable-prefix.
                durable_ns(&ctx)?;
                let prefix = ctx.settings().durable_prefix.clone().unwrap_or_default();
                let t = durable_topic(&ctx, "t")?;
                // The durable topic with the namespace's last literal token
                // made a wildcard: it matches topics outside it too.
                let mut tokens: Vec<&str> = prefix.trim_end_matches('.').split('.').collect();
                if let Some(last) = tokens.last_mut() {
                    *last = "*";
                }
                let rest = &t[prefix.trim_end_matches('.').len()..];
                let pattern = format!("{}{rest}", tokens.join("."));
                let mut s = ctx.client("s").await?;
                let r = s.ok("subscribe", &topic(&pattern)).await?;
                ensure!(
                    r.value.opt(0).is_none(),
                    "the subscribe result {} of {pattern}, which spans namespaces, has an epoch (§23.5: {{}})",
                    r.value
                );
                let mut p = ctx.client("p").await?;
                let ack = dpublish(&mut p, &publish(&t, Value::Uint(1))).await?;
                let e = s.event(&t, PROMPT).await?;
                ensure_eq!(
                    Some(event_pos(&e.value)?.0),
                    ack.offset,
                    "the live event's offset (§23.4)"
                );
                Ok(())
            },
        ),
        Case::new(
            "durable.plain-topic-since",
            "23.9, 23.6",
            "since on a plain topic or on a pattern spanning namespaces, and history on a plain topic, are invalid_params",
            |ctx| async move {
                let ns = durable_ns(&ctx)?;
                let t = ctx.topic("plain");
                let mut c = ctx.client("c").await?;
                subscribe_err(
                    &mut c,
                    &Value::map([(0, Value::text(&t)), (2, since_offset(None, 0))]),
                    "invalid_params",
                )
                .await?;
                // A pattern that matches durable topics and plain ones.
                let wide = ">";
                let _ = ns;
                subscribe_err(
                    &mut c,
                    &Value::map([(0, Value::text(wide)), (2, since_position("e", 0))]),
                    "invalid_params",
                )
                .await
                .map_err(|e| {
                    e.context(format!(
                        "since on {wide}, which overlaps the durable namespace"
                    ))
                })?;
                c.err(
                    "history",
                    &history_params(&t, None, None, None),
                    "invalid_params",
                )
                .await?;
                c.err(
                    "history.latest",
                    &Value::map([(0, Value::text(format!("{}.*", ctx.ns())))]),
                    "invalid_params",
                )
                .await?;
                let r = c.ok("subscribe", &topic(&t)).await?;
                ensure!(
                    r.value.opt(0).is_none(),
                    "the subscribe result {} of a plain topic has an epoch (§23.5: {{}})",
                    r.value
                );
                Ok(())
            },
        ),
    ]
}
