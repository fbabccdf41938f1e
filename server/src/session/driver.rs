//! The session driver: the one task of a connection. It owns the link and
//! polls, in one loop, everything the connection waits on:
//!
//! 1. what other tasks left in the connection's mailbox (a close request,
//!    an overflowed queue, commands such as server-initiated requests);
//! 2. the link's input, up to [`READ_BUDGET`] messages per turn; when none
//!    is buffered the core is told (`handle_read_idle`), which is what lets
//!    rate limits and keepalive judge the client rather than the hub's own
//!    lag (P19);
//! 3. running handler futures and a pending token verification;
//! 4. the one timer, re-armed to `core.next_timeout()`;
//! 5. the outbound queue, written to the link in batches with one flush
//!    each, never blocking reads.
//!
//! Every rule is in [`Core`]; this module only moves bytes and runs
//! handlers. The driver runs outside tokio's cooperative budget
//! (`tokio::task::unconstrained`), so a read that returns `Pending` really
//! means the socket is empty, and yields on its own every
//! [`TURNS_PER_POLL`] turns.

use std::collections::VecDeque;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures_util::future::{AbortHandle, Abortable, BoxFuture};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use plexus_protocol::frame::encode_notification;
use plexus_protocol::methods::rpc::{Credit, CreditParams};
use plexus_protocol::{CloseCode, NotificationMethod, RawValue, RpcMethod};
use tokio::sync::oneshot;
use tokio::time::Sleep;

use super::context::Ctx;
use super::core::{ClientAnswer, Completion, Core, Dispatch, Label, Output};
use super::error::RequestError;
use super::registry::{Answer, FlexReply, Handler, Registry, Reply, Terminal};
use super::relay::{Env, Relay, RoutedStart};
use super::stream::ChunkSink;
use super::table::{FALLBACK, MethodIndex};
use crate::auth::{AuthError, Principal};
use crate::conn::{Command, Conn, InvokeEnd, ReplyTo};
use crate::hub::Hub;
use crate::idmap::IdMap;
use crate::lag::Mark;
use crate::outbound::{BATCH_KEEP, cost};
use crate::transport::link::{Inbound, Link, Outgoing, Sent};

/// Messages read per turn before the other sources (writes, timers,
/// handlers) get their turn.
pub(crate) const READ_BUDGET: usize = 64;

/// Turns per poll before the driver yields to other tasks. A yield costs a
/// reschedule (and often a worker wake-up): measured with one publisher
/// fanning out to 500 subscribers, 16 × 64 messages per poll keeps
/// throughput at the old two-task design's, 4 × 32 lost 10–25 %.
pub(crate) const TURNS_PER_POLL: usize = 16;

/// Frames counted locally before they are added to the shared counters: a
/// shared atomic per frame costs more than the frame's own handling.
const METRICS_BATCH: u64 = 64;

/// How long the last flush (the answer to a peer's Close) may take.
const FINAL_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A timer deadline for "never" that does not overflow.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// The waker given to the link's read side: it records that the socket
/// became readable and wakes the driver through the connection's waker. A
/// driver woken only to write (fan-out) then skips the read side without
/// touching the socket's registration.
struct ReadWake {
    readable: AtomicBool,
    conn: Arc<Conn>,
}

impl Wake for ReadWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.readable.store(true, Ordering::Release);
        self.conn.out.wake_driver();
    }
}

/// A routed call invoked at this connection's client.
struct Invocation {
    call: u64,
    /// Where its chunks and its end go: the caller's session.
    reply: ReplyTo,
    /// Chunks the client may send: the window plus the credit granted.
    allowance: u64,
    /// Chunks it sent.
    received: u64,
}

/// A finished handler future.
struct Done {
    id: u64,
    method: MethodIndex,
    started: Instant,
    result: Result<Answer, RequestError>,
    /// Chunks sent, for a streamed reply.
    seq: Option<Arc<AtomicU64>>,
}

/// A handler's future, before it is guarded and spawned.
enum Pending {
    /// Async (no chunks) or streamed (chunks counted in the `seq`).
    Plain(Reply),
    /// Flexible: the answer says how it ends.
    Flex(FlexReply),
}

/// Where the closing handshake stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CloseStage {
    /// Not closing.
    Open,
    /// Writing what was queued before the Close frame.
    Draining(CloseCode),
    /// The Close frame is buffered; flushing it.
    Flushing(CloseCode),
    /// Shutting down the sending direction.
    Shutdown,
    /// Reading and discarding until the peer's Close or EOF (P11).
    Lingering,
}

struct Driver<L> {
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    core: Core,
    link: L,
    /// Handler futures; created on first use, dropped when empty.
    tasks: Option<FuturesUnordered<BoxFuture<'static, Done>>>,
    aborts: IdMap<AbortHandle>,
    verify: Option<BoxFuture<'static, Result<Principal, AuthError>>>,
    /// Cluster mode: the count of the user's connections on the other
    /// nodes, then the registration (with the instance id) it is for.
    /// Boxed: rare, and not part of every connection's task.
    registering: Option<Box<(BoxFuture<'static, usize>, Option<String>)>>,
    /// The principal an in-process session (the HTTP surface) runs as: its
    /// `auth` is answered with it instead of verifying the token it sends.
    preauth: Option<Principal>,
    verify_started: Option<Instant>,
    /// Server-initiated requests awaiting the client's answer.
    calls: IdMap<oneshot::Sender<Result<RawValue, RequestError>>>,
    /// Routed-RPC invocations at this client, by server request id.
    invokes: IdMap<Invocation>,
    /// Their server request ids, by the hub's call id.
    invoke_ids: IdMap<u64>,
    /// Routed calls this connection made, in flight (created on first
    /// use).
    relay: Option<Box<Relay>>,
    batch: VecDeque<Bytes>,
    /// A decaying maximum of recent batch lengths: the batch buffer is
    /// dropped only when it is far larger than recent bursts need.
    batch_peak: usize,
    /// The link holds bytes that still need a flush.
    unflushed: bool,
    /// A write would block: flush before feeding more.
    blocked: bool,
    close: CloseStage,
    /// The last read found nothing buffered.
    idle: bool,
    /// Reading stopped because the core paused it (an `auth` being
    /// verified) while input may be waiting: read again as soon as the
    /// core wants input, in the same poll — no socket wake-up will come
    /// for input that is already there.
    read_paused: bool,
    read_wake: Arc<ReadWake>,
    read_waker: Waker,
    lag_mark: Mark,
    armed: Option<Instant>,
    /// The timer was polled since it was last reset (its waker is kept).
    sleep_polled: bool,
    /// The last clock read, for the latency of synchronous handlers.
    clock: Instant,
    frames_in: u64,
    bytes_in: u64,
}

/// Runs the session of `conn` over `link` until it ends.
pub(crate) async fn drive<L: Link>(
    hub: Arc<Hub>,
    conn: Arc<Conn>,
    link: L,
    preauth: Option<Principal>,
) {
    let now = Instant::now();
    let core = Core::new(hub.core.clone(), conn.session.clone(), now);
    let lag_mark = hub.lag.mark(now);
    let read_wake = Arc::new(ReadWake {
        readable: AtomicBool::new(true),
        conn: conn.clone(),
    });
    let read_waker = Waker::from(read_wake.clone());
    let mut d = Driver {
        hub,
        conn,
        core,
        link,
        tasks: None,
        aborts: IdMap::default(),
        verify: None,
        registering: None,
        preauth,
        verify_started: None,
        calls: IdMap::default(),
        invokes: IdMap::default(),
        invoke_ids: IdMap::default(),
        relay: None,
        batch: VecDeque::new(),
        batch_peak: 0,
        unflushed: false,
        blocked: false,
        close: CloseStage::Open,
        idle: true,
        read_paused: false,
        read_wake,
        read_waker,
        lag_mark,
        armed: None,
        sleep_polled: false,
        clock: now,
        frames_in: 0,
        bytes_in: 0,
    };
    if d.hub.is_shutting_down() {
        let hint = d.hub.shutdown_hint();
        d.core.close(
            now,
            CloseCode::GoingAway,
            "server shutting down".into(),
            Some(hint),
        );
    }
    let sleep = tokio::time::sleep_until(far_future().into());
    tokio::pin!(sleep);
    std::future::poll_fn(|cx| d.poll(cx, sleep.as_mut())).await;
    d.end_rpc();
    d.end_calls();
    d.finish().await;
}

impl<L: Link> Driver<L> {
    fn poll(&mut self, cx: &mut Context<'_>, mut sleep: Pin<&mut Sleep>) -> Poll<()> {
        for _ in 0..TURNS_PER_POLL {
            // Registered before anything is looked at: a push, a close
            // request, a command or read readiness after this wakes the
            // task.
            self.conn.out.register(cx.waker());
            // The clock is read only when a rule may need it: a turn woken
            // just to write queued frames (fan-out) does without.
            let quiet = !self.conn.out.has_attention()
                && self.idle
                && !self.read_wake.readable.load(Ordering::Acquire)
                && self.tasks.is_none()
                && self.verify.is_none()
                && self.registering.is_none()
                && !sleep.is_elapsed()
                && self.close == CloseStage::Open;
            let now = if quiet {
                self.clock
            } else {
                let now = Instant::now();
                self.clock = now;
                now
            };
            self.poll_attention(cx, now);
            let more_input = self.poll_reads(cx, now, quiet);
            self.poll_tasks(cx, now);
            if let Some(t) = self.core.next_timeout()
                && t <= now
            {
                self.core.handle_timeout(now);
            }
            self.drain_outputs(cx, now);
            self.poll_writes(cx, now);
            if let Some(relay) = &mut self.relay
                && relay.is_stalled()
            {
                let mut env = Env {
                    hub: &self.hub,
                    conn: &self.conn,
                    core: &mut self.core,
                    now,
                };
                relay.pump(&mut env);
                // What it relayed is written in the next turn.
                if !self.conn.out.is_empty() {
                    cx.waker().wake_by_ref();
                }
            }
            if self.core.is_finished() {
                return Poll::Ready(());
            }
            // Every source that returned `Pending` has registered the
            // waker; go round again only if one may have more right now.
            let next = self.core.next_timeout();
            let resume = self.read_paused && self.core.wants_read();
            if resume {
                self.read_paused = false;
            }
            if more_input || resume || next.is_some_and(|t| t <= now) {
                continue;
            }
            // Arm the one timer (polled again only when it changed).
            if next != self.armed || sleep.is_elapsed() {
                self.armed = next;
                sleep.as_mut().reset(next.unwrap_or_else(far_future).into());
                self.sleep_polled = false;
            }
            if !self.sleep_polled {
                if sleep.as_mut().poll(cx).is_ready() {
                    self.armed = None;
                    continue;
                }
                self.sleep_polled = true;
            }
            return Poll::Pending;
        }
        // Busy: let other tasks run, and come back.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    /// What other tasks left for this connection.
    fn poll_attention(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let Some(a) = self.conn.out.take_attention() else {
            return false;
        };
        if a.overflowed {
            self.core
                .close(now, CloseCode::SlowConsumer, "slow consumer".into(), None);
        }
        if let Some(req) = a.close {
            self.core
                .close(now, req.code, req.reason, req.retry_after_ms);
        }
        for c in a.commands {
            match c {
                Command::Call {
                    method,
                    params,
                    timeout,
                    reply,
                } => match self
                    .core
                    .start_server_request(now, &method, &params, timeout)
                {
                    Ok(id) => {
                        self.calls.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Invoke {
                    call,
                    params,
                    timeout,
                    window,
                    reply,
                } => match self.core.start_streamed_server_request(
                    now,
                    plexus_protocol::methods::rpc::Invoke::NAME,
                    &params,
                    timeout,
                ) {
                    Ok(id) => {
                        self.invoke_ids.insert(call, id);
                        self.invokes.insert(
                            id,
                            Invocation {
                                call,
                                reply,
                                allowance: window,
                                received: 0,
                            },
                        );
                    }
                    Err(
                        e @ (RequestError::TooManyRequests(_) | RequestError::PayloadTooLarge(_)),
                    ) => reply.end(InvokeEnd::Refused(e)),
                    Err(_) => reply.end(InvokeEnd::Lost),
                },
                Command::Credit { call, chunks } => {
                    if let Some(inv) = self
                        .invoke_ids
                        .get(&call)
                        .and_then(|id| self.invokes.get_mut(id))
                    {
                        inv.allowance = inv.allowance.saturating_add(chunks);
                        if let Ok(f) =
                            encode_notification(Credit::NAME, &CreditParams::new(call, chunks))
                        {
                            self.queue(Bytes::from(f));
                        }
                    }
                }
                Command::Withdraw { call } => {
                    if let Some(id) = self.invoke_ids.remove(&call) {
                        if let Some(inv) = self.invokes.remove(&id) {
                            inv.reply.forget();
                        }
                        self.core.withdraw_server_request(id);
                    }
                }
                Command::Routed { id, call, event } => {
                    let relay = self.relay.get_or_insert_with(Box::default);
                    let mut env = Env {
                        hub: &self.hub,
                        conn: &self.conn,
                        core: &mut self.core,
                        now,
                    };
                    relay.event(&mut env, id, call, event);
                }
            }
        }
        self.drain_outputs(cx, now);
        true
    }

    /// Reads up to [`READ_BUDGET`] messages; returns whether the budget
    /// ran out (more input may be waiting). `quiet`: nothing but queued
    /// frames woke the driver.
    fn poll_reads(&mut self, cx: &mut Context<'_>, now: Instant, quiet: bool) -> bool {
        // Nothing arrived since the socket was found empty: skip it (and
        // let the core judge a due pong, unless nothing can be due).
        if self.idle && !self.read_wake.readable.swap(false, Ordering::AcqRel) {
            if !quiet && self.core.wants_read() {
                let lag = self.lag(now);
                self.core.handle_read_idle(now, lag);
                self.drain_outputs(cx, now);
            }
            return false;
        }
        for _ in 0..READ_BUDGET {
            if !self.core.wants_read() {
                // The readiness just consumed (or input already buffered)
                // is kept for when reading resumes.
                self.read_wake.readable.store(true, Ordering::Release);
                self.read_paused = true;
                return false;
            }
            let mut rcx = Context::from_waker(&self.read_waker);
            let ev = match self.link.poll_recv(&mut rcx) {
                Poll::Pending => {
                    // Everything that arrived has been read (P19).
                    let lag = self.lag(now);
                    self.core.handle_read_idle(now, lag);
                    self.idle = true;
                    self.drain_outputs(cx, now);
                    return false;
                }
                Poll::Ready(ev) => ev,
            };
            if self.idle {
                self.idle = false;
                let lag = self.lag(now);
                self.core.handle_read_resume(now, lag);
            }
            self.on_inbound(cx, now, ev);
            self.drain_outputs(cx, now);
        }
        true
    }

    fn on_inbound(&mut self, cx: &mut Context<'_>, now: Instant, ev: Inbound) {
        match ev {
            Inbound::Frame(bytes) => {
                self.frames_in += 1;
                self.bytes_in += bytes.len() as u64;
                if self.frames_in >= METRICS_BATCH {
                    self.flush_counters();
                }
                if let Some(d) = self.core.handle_frame(now, bytes) {
                    self.dispatch(cx, now, d);
                }
            }
            // The link queued the pong; it goes out with the next flush.
            Inbound::Ping => self.unflushed = true,
            Inbound::Pong => self.core.handle_pong(now),
            Inbound::Fault(f) => self.core.handle_link_fault(now, f),
            Inbound::Discarded(n) => self.core.handle_discarded(n),
            Inbound::PeerClose { rejected, .. } => {
                // The link answers the peer's Close (echoing its code, P10);
                // a code a peer may not send is answered with 1002, which
                // counts as a close the hub sent (item 11).
                if rejected {
                    self.hub.metrics.close_sent(CloseCode::WsProtocolError);
                }
                self.unflushed = true;
                self.core.handle_peer_closed(now);
            }
            // A peer that vanished is not a close the hub sent.
            Inbound::Ended => self.core.handle_peer_closed(now),
        }
    }

    /// Runs a request that passed the core's checks.
    fn dispatch(&mut self, cx: &mut Context<'_>, now: Instant, d: Dispatch) {
        let registry: &Registry = &self.hub.registry;
        let Some(principal) = self.core.principal() else {
            return;
        };
        let mut ctx = Ctx::new(&self.hub, &self.conn, principal, d.id);
        enum Started {
            Done(Result<Bytes, RequestError>),
            Future(Pending, Option<Arc<AtomicU64>>),
            Routed(RoutedStart),
        }
        let started = if d.method == FALLBACK {
            match registry.fallback_handler() {
                Some(f) => match std::panic::catch_unwind(AssertUnwindSafe(|| {
                    f(&mut ctx, &d.name, &d.params)
                })) {
                    Ok(Ok(fut)) => Started::Future(Pending::Plain(fut), None),
                    Ok(Err(e)) => Started::Done(Err(e)),
                    Err(_) => Started::Done(Err(RequestError::internal("handler panicked"))),
                },
                None => Started::Done(Err(RequestError::MethodNotFound)),
            }
        } else {
            match registry.handler(d.method) {
                Some(Handler::Sync(f)) => {
                    let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut ctx, &d.params)))
                        .unwrap_or_else(|_| Err(RequestError::internal("handler panicked")));
                    Started::Done(r)
                }
                Some(Handler::Async(f)) => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut ctx, &d.params))) {
                        Ok(Ok(fut)) => Started::Future(Pending::Plain(fut), None),
                        Ok(Err(e)) => Started::Done(Err(e)),
                        Err(_) => Started::Done(Err(RequestError::internal("handler panicked"))),
                    }
                }
                Some(Handler::Streamed(f)) => {
                    let seq = Arc::new(AtomicU64::new(0));
                    let sink = ChunkSink::new(
                        self.conn.clone(),
                        d.id,
                        seq.clone(),
                        self.hub.config.max_frame_size,
                    );
                    match std::panic::catch_unwind(AssertUnwindSafe(|| {
                        f(&mut ctx, &d.params, sink)
                    })) {
                        Ok(Ok(fut)) => Started::Future(Pending::Plain(fut), Some(seq)),
                        Ok(Err(e)) => Started::Done(Err(e)),
                        Err(_) => Started::Done(Err(RequestError::internal("handler panicked"))),
                    }
                }
                Some(Handler::Flexible(f)) => {
                    let seq = Arc::new(AtomicU64::new(0));
                    let sink = ChunkSink::new(
                        self.conn.clone(),
                        d.id,
                        seq.clone(),
                        self.hub.config.max_frame_size,
                    );
                    match std::panic::catch_unwind(AssertUnwindSafe(|| {
                        f(&mut ctx, &d.params, sink)
                    })) {
                        Ok(Ok(fut)) => Started::Future(Pending::Flex(fut), Some(seq)),
                        Ok(Err(e)) => Started::Done(Err(e)),
                        Err(_) => Started::Done(Err(RequestError::internal("handler panicked"))),
                    }
                }
                Some(Handler::Routed(f)) => {
                    match std::panic::catch_unwind(AssertUnwindSafe(|| f(&mut ctx, &d.params))) {
                        Ok(Ok(start)) => Started::Routed(start),
                        Ok(Err(e)) => Started::Done(Err(e)),
                        Err(_) => Started::Done(Err(RequestError::internal("handler panicked"))),
                    }
                }
                None => Started::Done(Err(RequestError::MethodNotFound)),
            }
        };
        match started {
            Started::Done(r) => {
                let end = Instant::now();
                let secs = end.saturating_duration_since(self.clock).as_secs_f64();
                self.clock = end;
                if let Err(e) = &r {
                    log_failure(d.id, e);
                }
                self.hub.metrics.request(
                    d.method,
                    r.as_ref().err().map(RequestError::code).as_ref(),
                    secs,
                );
                let completion = match r {
                    Ok(b) => Completion::Result(b),
                    Err(e) => Completion::Error(e),
                };
                if let Some(frame) = self.core.handle_reply(d.id, completion) {
                    self.queue(frame);
                }
            }
            Started::Future(fut, seq) => self.spawn(cx, now, d.id, d.method, fut, seq),
            Started::Routed(start) => {
                let relay = self.relay.get_or_insert_with(Box::default);
                let mut env = Env {
                    hub: &self.hub,
                    conn: &self.conn,
                    core: &mut self.core,
                    now,
                };
                relay.start(&mut env, d.id, d.method, start);
            }
        }
    }

    fn spawn(
        &mut self,
        cx: &mut Context<'_>,
        now: Instant,
        id: u64,
        method: MethodIndex,
        fut: Pending,
        seq: Option<Arc<AtomicU64>>,
    ) {
        let timeout = self
            .hub
            .registry
            .table()
            .get(method)
            .is_none_or(|e| e.meta.timeout)
            .then_some(self.hub.config.request_timeout.0);
        let streamed = seq.is_some();
        let fut: FlexReply = match fut {
            Pending::Flex(f) => f,
            Pending::Plain(f) => Box::pin(async move {
                let data = f.await?;
                Ok(if streamed {
                    Answer::final_chunk(data)
                } else {
                    Answer::result(data)
                })
            }),
        };
        let guarded = async move {
            let run = AssertUnwindSafe(fut).catch_unwind();
            let r = match timeout {
                Some(t) => tokio::time::timeout(t, run).await,
                None => Ok(run.await),
            };
            match r {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(RequestError::internal("handler panicked")),
                Err(_) => Err(RequestError::Timeout),
            }
        };
        let (handle, registration) = AbortHandle::new_pair();
        self.aborts.insert(id, handle);
        let tasks = self.tasks.get_or_insert_with(FuturesUnordered::new);
        tasks.push(Box::pin(async move {
            let result = Abortable::new(guarded, registration)
                .await
                .unwrap_or(Err(RequestError::Cancelled));
            Done {
                id,
                method,
                started: now,
                result,
                seq,
            }
        }));
        // Polled in this turn, so a future that is ready at once answers
        // without another wake.
        self.poll_tasks(cx, now);
    }

    fn poll_tasks(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        if let Some(f) = &mut self.verify
            && let Poll::Ready(r) = f.as_mut().poll(cx)
        {
            self.verify = None;
            self.core.handle_verified(now, SystemTime::now(), r);
            progress = true;
        }
        if let Some(r) = &mut self.registering
            && let Poll::Ready(remote) = r.0.as_mut().poll(cx)
        {
            let instance = self.registering.take().and_then(|r| r.1);
            let r = self
                .hub
                .register_with(&self.conn, instance.as_deref(), remote);
            self.core.handle_registered(now, r);
            progress = true;
        }
        let Some(tasks) = &mut self.tasks else {
            return progress;
        };
        let mut done = Vec::new();
        while let Poll::Ready(Some(d)) = tasks.poll_next_unpin(cx) {
            done.push(d);
        }
        if tasks.is_empty() {
            self.tasks = None;
        }
        for d in done {
            progress = true;
            self.finish_task(d);
        }
        progress
    }

    fn finish_task(&mut self, d: Done) {
        self.aborts.remove(&d.id);
        let secs = d.started.elapsed().as_secs_f64();
        if let Err(e) = &d.result {
            log_failure(d.id, e);
        }
        self.hub.metrics.request(
            d.method,
            d.result.as_ref().err().map(RequestError::code).as_ref(),
            secs,
        );
        let mut after = None;
        let completion = match d.result {
            Ok(answer) => {
                after = answer.after;
                match answer.terminal {
                    Terminal::Final => Completion::Final {
                        seq: d.seq.map_or(0, |s| s.load(Ordering::Relaxed)),
                        data: answer.data,
                    },
                    Terminal::Result => Completion::Result(answer.data),
                }
            }
            Err(e) => Completion::Error(e),
        };
        if let Some(frame) = self.core.handle_reply(d.id, completion) {
            self.queue(frame);
            // After the terminal frame, on this task: what it queues
            // follows the answer.
            if let Some(f) = after
                && std::panic::catch_unwind(AssertUnwindSafe(f)).is_err()
            {
                tracing::error!(id = d.id, "work after a reply panicked");
            }
        }
    }

    fn queue(&self, frame: Bytes) {
        // An overflow closes the connection (4006) on the next turn.
        let _ = self.conn.out.push(frame);
    }

    fn drain_outputs(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut any = false;
        while let Some(o) = self.core.poll_output() {
            any = true;
            match o {
                Output::Frame(f) => self.queue(f),
                Output::Response {
                    frame,
                    label,
                    error,
                } => {
                    let waited = match label {
                        Label::Auth | Label::AuthRefresh => self
                            .verify_started
                            .take()
                            .map(|t| now.saturating_duration_since(t).as_secs_f64()),
                        _ => None,
                    };
                    self.hub.metrics.answered(label, error.as_ref(), waited);
                    self.queue(frame);
                }
                Output::Abort { id } => {
                    if let Some(h) = self.aborts.get(&id) {
                        h.abort();
                    } else if let Some(relay) = &mut self.relay {
                        let mut env = Env {
                            hub: &self.hub,
                            conn: &self.conn,
                            core: &mut self.core,
                            now,
                        };
                        relay.cancel(&mut env, id);
                    }
                }
                Output::Expired { id } => {
                    if let Some(relay) = &mut self.relay {
                        let mut env = Env {
                            hub: &self.hub,
                            conn: &self.conn,
                            core: &mut self.core,
                            now,
                        };
                        relay.expire(&mut env, id);
                    }
                }
                Output::Verify { token } => {
                    // Boxed: the rare, large verification future is not part
                    // of every connection's task.
                    let auth = self.hub.auth.clone();
                    self.verify_started = Some(now);
                    self.verify = Some(match self.preauth.take() {
                        Some(p) => Box::pin(std::future::ready(Ok(p))),
                        None => Box::pin(async move { auth.verify(&token).await }),
                    });
                }
                Output::Register { user, instance } => {
                    tracing::Span::current().record("user", &*user);
                    self.conn.set_user(user.clone());
                    if let Some(c) = self.hub.cluster.get().cloned() {
                        // Cluster mode: the per-user limit counts the other
                        // nodes' connections too (one database read).
                        let count = async move { c.remote_connections(&user).await };
                        self.registering = Some(Box::new((Box::pin(count), instance)));
                        // Polled (and its waker registered) in the next turn.
                        cx.waker().wake_by_ref();
                    } else {
                        let r = self.hub.register(&self.conn, instance.as_deref());
                        self.core.handle_registered(now, r);
                    }
                }
                Output::RaiseFrameLimit { max_frame_size } => {
                    self.link.set_max_message_size(max_frame_size);
                }
                Output::Ping => {
                    self.flush_counters();
                    if self.link.send(cx, Outgoing::Ping) == Sent::Blocked {
                        self.blocked = true;
                    }
                    self.unflushed = true;
                }
                Output::Close { code, closing } => self.begin_close(code, closing),
                Output::ClientChunk { id, data } => {
                    if let Some(inv) = self.invokes.get_mut(&id) {
                        // Past its credit: withdrawn, the call failed.
                        let overrun = inv.received >= inv.allowance;
                        // Passed on, or the caller is gone (its withdrawal
                        // follows; nothing more is passed on).
                        let gone = !overrun && {
                            inv.received += 1;
                            !inv.reply.chunk(data)
                        };
                        if (overrun || gone)
                            && let Some(inv) = self.invokes.remove(&id)
                        {
                            self.invoke_ids.remove(&inv.call);
                            self.core.withdraw_server_request(id);
                            if overrun {
                                inv.reply.end(InvokeEnd::Overrun);
                            } else {
                                inv.reply.forget();
                            }
                        }
                    }
                }
                Output::ClientAnswer { id, answer } => {
                    if let Some(inv) = self.invokes.remove(&id) {
                        self.invoke_ids.remove(&inv.call);
                        inv.reply.end(match answer {
                            ClientAnswer::Result(v) => InvokeEnd::Result(v),
                            ClientAnswer::Final(v) => InvokeEnd::Final(v),
                            ClientAnswer::Error(e) => InvokeEnd::Error(*e),
                            ClientAnswer::TimedOut => InvokeEnd::TimedOut,
                            ClientAnswer::Closed => InvokeEnd::Lost,
                        });
                    } else if let Some(reply) = self.calls.remove(&id) {
                        let _ = reply.send(match answer {
                            ClientAnswer::Result(v) | ClientAnswer::Final(v) => Ok(v),
                            ClientAnswer::Error(e) => Err(RequestError::Peer(*e)),
                            ClientAnswer::TimedOut => Err(RequestError::Timeout),
                            ClientAnswer::Closed => Err(RequestError::Unavailable {
                                message: "the connection is closing".into(),
                                retry_after_ms: None,
                            }),
                        });
                    }
                }
                Output::AuthFailure(reason) => self.hub.metrics.auth_failure(reason),
            }
        }
        any
    }

    fn begin_close(&mut self, code: CloseCode, closing: Option<Bytes>) {
        tracing::debug!(code = code.as_u16(), "closing");
        if code == CloseCode::SlowConsumer {
            // Only the Close frame is still sent: the queue and the batch
            // in progress are dropped.
            self.conn.out.abort();
            self.batch = VecDeque::new();
        } else {
            self.conn.out.close(closing);
        }
        for h in self.aborts.values() {
            h.abort();
        }
        self.verify = None;
        self.registering = None;
        self.close = CloseStage::Draining(code);
        // A closing callee takes no new calls (R5).
        self.hub.rpc.drop_conn(&self.conn);
    }

    fn poll_writes(&mut self, cx: &mut Context<'_>, now: Instant) -> bool {
        let mut progress = false;
        loop {
            if self.blocked || self.unflushed {
                match self.link.poll_flush(cx) {
                    Poll::Pending => {
                        self.blocked = true;
                        return progress;
                    }
                    Poll::Ready(false) => {
                        self.core.handle_peer_closed(now);
                        return true;
                    }
                    Poll::Ready(true) => {
                        self.blocked = false;
                        self.unflushed = false;
                        if let CloseStage::Flushing(code) = self.close {
                            // Counted once, where the Close frame is written.
                            self.hub.metrics.close_sent(code);
                            self.core.handle_close_sent(now);
                            self.close = CloseStage::Shutdown;
                            progress = true;
                        }
                    }
                }
            }
            match self.close {
                CloseStage::Open | CloseStage::Draining(_) => {}
                CloseStage::Flushing(_) => return progress,
                CloseStage::Shutdown => {
                    if self.link.poll_shutdown(cx).is_ready() {
                        self.close = CloseStage::Lingering;
                        progress = true;
                    }
                    return progress;
                }
                CloseStage::Lingering => return progress,
            }
            if self.batch.is_empty() && !self.conn.out.take_batch(&mut self.batch) {
                let CloseStage::Draining(code) = self.close else {
                    return progress;
                };
                // Everything queued before the close is buffered: the
                // Close frame goes last.
                match self.link.send(cx, Outgoing::Close(code)) {
                    Sent::Closed => {
                        self.core.handle_peer_closed(now);
                        return true;
                    }
                    Sent::Blocked | Sent::Buffered => {}
                }
                self.close = CloseStage::Flushing(code);
                self.unflushed = true;
                progress = true;
                continue;
            }
            progress = true;
            self.feed(cx, now);
            if self.core.is_finished() {
                return true;
            }
        }
    }

    /// Feeds the batch to the link until it is empty or the link blocks.
    fn feed(&mut self, cx: &mut Context<'_>, now: Instant) {
        self.batch_peak = self.batch.len().max(self.batch_peak - self.batch_peak / 8);
        let (mut charged, mut frames, mut bytes) = (0usize, 0u64, 0usize);
        while let Some(frame) = self.batch.pop_front() {
            charged += cost(frame.len());
            frames += 1;
            bytes += frame.len();
            match self.link.send(cx, Outgoing::Frame(frame)) {
                Sent::Buffered => {}
                Sent::Blocked => {
                    self.blocked = true;
                    break;
                }
                Sent::Closed => {
                    self.batch.clear();
                    self.core.handle_peer_closed(now);
                    break;
                }
            }
        }
        self.unflushed = true;
        self.conn.out.written(charged);
        let m = &self.hub.metrics;
        m.frames_out.increment(frames);
        m.bytes_out.increment(bytes as u64);
        // A burst must not pin its peak number of slots once it is over
        // (while bursts go on, the buffer is kept: no allocation churn).
        if self.batch.is_empty() && self.batch.capacity() > BATCH_KEEP.max(4 * self.batch_peak) {
            self.batch = VecDeque::new();
        }
    }

    /// The hub's lag since the last look, and a new mark.
    fn lag(&mut self, now: Instant) -> Duration {
        let lag = self.hub.lag.since(self.lag_mark, now);
        self.lag_mark = self.hub.lag.mark(now);
        lag
    }

    fn flush_counters(&mut self) {
        let m = &self.hub.metrics;
        if self.frames_in > 0 {
            m.frames_in.increment(std::mem::take(&mut self.frames_in));
            m.bytes_in.increment(std::mem::take(&mut self.bytes_in));
        }
    }

    /// The session is over: a callee's registrations vanish and its calls
    /// in flight fail `callee_lost` now, not after the last flush (R5).
    fn end_rpc(&mut self) {
        if !self.conn.rpc_callee.load(Ordering::Acquire) {
            return;
        }
        // No command is accepted from here on; those queued are failed.
        self.conn.out.abort();
        self.hub.rpc.drop_conn(&self.conn);
        // Each unanswered invocation's reply reports `Lost` as it drops,
        // those still queued as commands too.
        self.invokes.clear();
        self.invoke_ids.clear();
        drop(self.conn.out.take_attention());
    }

    /// The session is over: its own routed calls are withdrawn at their
    /// callees and their slots freed.
    fn end_calls(&mut self) {
        if let Some(mut relay) = self.relay.take() {
            relay.abandon(&self.hub);
        }
    }

    /// After the session: the link's last bytes (the answer to a peer's
    /// Close) and the end of the sending direction, each bounded.
    async fn finish(&mut self) {
        self.tasks = None;
        self.verify = None;
        self.registering = None;
        let link = &mut self.link;
        let _ = tokio::time::timeout(
            FINAL_FLUSH_TIMEOUT,
            std::future::poll_fn(|cx| link.poll_flush(cx)),
        )
        .await;
        if self.close != CloseStage::Lingering {
            let _ = tokio::time::timeout(
                FINAL_FLUSH_TIMEOUT,
                std::future::poll_fn(|cx| link.poll_shutdown(cx)),
            )
            .await;
        }
    }
}

impl<L> Drop for Driver<L> {
    /// Runs however the session ends, normally or by a panic unwinding
    /// through its task, so a connection is never left subscribed or
    /// registered.
    fn drop(&mut self) {
        let m = &self.hub.metrics;
        m.frames_in.increment(self.frames_in);
        m.bytes_in.increment(self.bytes_in);
        for h in self.aborts.values() {
            h.abort();
        }
        self.conn.out.abort();
        self.hub.broker.drop_conn(&self.conn);
        self.hub.rpc.drop_conn(&self.conn);
        // Calls in flight here fail `callee_lost` now (their replies drop).
        self.invokes.clear();
        if let Some(mut relay) = self.relay.take() {
            relay.abandon(&self.hub);
        }
        self.hub.connection_closed(&self.conn);
        tracing::debug!("connection ended");
    }
}

/// Internal failures are logged (without payloads); the client sees only
/// "internal error".
fn log_failure(id: u64, e: &RequestError) {
    if let RequestError::Internal(detail) = e {
        tracing::warn!(request = id, detail = %detail, "request failed");
    }
}
