//! Request/reply against NATS: one echo responder, C requesters with K
//! requests in flight each.

use std::time::Duration;

use super::fanout::connect_many;
use super::{Event, NatsConn, NatsServer, WAIT, Window};
use crate::clock::{now_nanos, read_stamp, stamp};
use crate::scenario::{RpcConfig, RpcResult};
use crate::stats::Latency;

/// The subject the responder listens on.
const ECHO: &[u8] = b"bench.echo";

/// Answers every request with its own payload until the connection fails
/// or `until` passes (it is normally aborted before).
async fn responder(mut conn: NatsConn, until: tokio::time::Instant) {
    let serve = async {
        loop {
            let (inbox, outbox) = conn.split();
            loop {
                match inbox.try_next() {
                    Ok(Some(Event::Msg(m))) => {
                        if let Some(reply) = m.reply {
                            outbox.publish(reply, None, m.payload);
                        }
                    }
                    Ok(Some(Event::Err(_))) | Err(_) => return,
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                }
            }
            // Replies to everything parsed so far go out in one write.
            if conn.fill().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout_at(until, serve).await;
}

/// What one requester did.
#[derive(Default)]
struct Calls {
    completed: u64,
    latency: Latency,
    failed: u64,
}

/// One parsed reply, or what else happened.
enum Step {
    /// A reply to one of ours, with its stamp.
    Reply(Option<u64>),
    /// `-ERR` or a protocol error.
    Failed,
    /// Something else (e.g. a stray `PONG`).
    Other,
    /// Nothing complete is buffered.
    Drained,
}

/// Appends `PUB bench.echo _INBOX.<conn>.<seq>` with a stamped payload.
fn request(
    conn: &mut NatsConn,
    inbox_prefix: &str,
    seq: &mut u64,
    reply: &mut String,
    payload: &mut [u8],
) {
    use std::fmt::Write;
    *seq += 1;
    reply.clear();
    reply.push_str(inbox_prefix);
    let _ = write!(reply, "{seq}");
    stamp(payload);
    conn.outbox().publish(ECHO, Some(reply.as_bytes()), payload);
}

/// Keeps `in_flight` requests outstanding until the window is over.
async fn requester(mut conn: NatsConn, c: usize, cfg: RpcConfig, win: Window) -> Calls {
    let mut calls = Calls::default();
    let prefix = format!("_INBOX.{c}.");
    let mut seq = 0u64;
    let mut reply = String::with_capacity(prefix.len() + 20);
    let mut payload = vec![0u8; cfg.payload];
    let in_flight = cfg.in_flight.max(1) as u64;
    for _ in 0..in_flight {
        request(&mut conn, &prefix, &mut seq, &mut reply, &mut payload);
    }
    let mut outstanding = in_flight;
    let end = win.deadline();
    let mut progress = tokio::time::Instant::now();
    let mut t = now_nanos();
    'run: loop {
        loop {
            // Copy what is needed out of the event before writing requests.
            let step = match conn.try_next() {
                Ok(Some(Event::Msg(m))) if m.subject.starts_with(prefix.as_bytes()) => {
                    Step::Reply(read_stamp(m.payload))
                }
                Ok(Some(Event::Err(_))) | Err(_) => Step::Failed,
                Ok(Some(_)) => Step::Other,
                Ok(None) => Step::Drained,
            };
            match step {
                Step::Reply(sent) => {
                    outstanding = outstanding.saturating_sub(1);
                    if win.contains(t) {
                        calls.completed += 1;
                        if let Some(sent) = sent {
                            calls.latency.record(t.saturating_sub(sent));
                        }
                    }
                    if !win.over(t) {
                        request(&mut conn, &prefix, &mut seq, &mut reply, &mut payload);
                        outstanding += 1;
                    }
                }
                Step::Failed => {
                    calls.failed += outstanding.max(1);
                    break 'run;
                }
                Step::Other => {}
                Step::Drained => break,
            }
        }
        if win.over(t) || outstanding == 0 {
            break;
        }
        // New requests go out before waiting for replies.
        match tokio::time::timeout_at(end.min(progress + WAIT), conn.fill()).await {
            Ok(Ok(())) => {
                t = now_nanos();
                progress = tokio::time::Instant::now();
            }
            Ok(Err(_)) => {
                calls.failed += outstanding.max(1);
                break;
            }
            Err(_) => {
                if !win.over(now_nanos()) {
                    // No reply for 5 s: the outstanding calls are lost.
                    calls.failed += outstanding;
                }
                break;
            }
        }
    }
    calls
}

/// Runs request/reply against a running `nats-server`.
pub async fn request_reply(server: &NatsServer, cfg: &RpcConfig) -> RpcResult {
    request_reply_shared(server, cfg, 1).await
}

/// Connects one responder: with `shared`, a member of the queue group
/// `callees` (NATS shares the requests among the group's members).
async fn responder_conn(url: &str, shared: bool) -> Result<NatsConn, super::NatsError> {
    let mut conn = NatsConn::connect(url).await?;
    if shared {
        conn.outbox().subscribe_queue(ECHO, b"callees", 1);
    } else {
        conn.outbox().subscribe(ECHO, 1);
    }
    conn.round_trip().await?;
    Ok(conn)
}

/// Request/reply to `responders` echo responders: one plainly subscribed,
/// or several in one queue group (the routed-RPC comparison of issue 12).
pub async fn request_reply_shared(
    server: &NatsServer,
    cfg: &RpcConfig,
    responders: usize,
) -> RpcResult {
    let url = server.ws_url();
    let mut errors = 0u64;
    let shared = responders > 1;
    let mut responder_conns = Vec::new();
    for _ in 0..responders.max(1) {
        match responder_conn(&url, shared).await {
            Ok(c) => responder_conns.push(c),
            Err(_) => {
                return RpcResult {
                    errors: cfg.connections.max(1) as u64,
                    ..RpcResult::default()
                };
            }
        }
    }
    let conns = connect_many(&url, cfg.connections, 16, |c| Some(format!("_INBOX.{c}.*"))).await;
    let win = Window::after(cfg.warmup, cfg.duration);
    let responders: Vec<_> = responder_conns
        .into_iter()
        .map(|c| tokio::spawn(responder(c, win.deadline() + Duration::from_secs(10))))
        .collect();
    let mut tasks = Vec::with_capacity(conns.len());
    for (c, conn) in conns.into_iter().enumerate() {
        match conn {
            Ok(conn) => tasks.push(tokio::spawn(requester(conn, c, cfg.clone(), win))),
            Err(_) => errors += 1,
        }
    }
    let mut completed = 0u64;
    let mut latency = Latency::new();
    for t in tasks {
        match t.await {
            Ok(c) => {
                completed += c.completed;
                latency.merge(&c.latency);
                errors += c.failed;
            }
            Err(_) => errors += 1,
        }
    }
    for r in responders {
        r.abort();
        let _ = r.await;
    }
    RpcResult {
        calls_per_sec: completed as f64 / win.secs(),
        latency: latency.summary(),
        errors,
    }
}
