//! The core driven by a virtual clock: every deadline, every close code,
//! the window, the queues, served requests. Nothing here sleeps: time is an
//! `Instant` the test moves forward.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::FutureExt;
use plexus_protocol::frame::{
    encode_chunk, encode_error, encode_notification, encode_request, encode_result,
};
use plexus_protocol::methods::{
    AuthParams, AuthResult, CancelParams, ClosingParams, Empty, EventParams, ServerLimits,
    SubscribeParams, TokenExpiringParams,
};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{
    CloseCode, DecodeLimits, ErrorCode, Frame, RawValue, Reconnect, Request, WireError,
};

use super::*;
use crate::deliver::{ChunkQueue, ReplyRx, reply};
use crate::subscription::{Event, SubQueue};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const LIVENESS: Duration = Duration::from_secs(20);
const BACKOFF: Backoff = Backoff {
    initial: Duration::from_millis(100),
    max: Duration::from_secs(2),
};
/// The jitter every test core draws: half the ceiling.
const JITTER: f64 = 0.5;

fn config() -> Config {
    Config {
        call_timeout: CALL_TIMEOUT,
        connect_timeout: CONNECT_TIMEOUT,
        backoff: BACKOFF,
        liveness: Some(LIVENESS),
        max_queued: 8,
        max_in_flight: 1024,
        max_served: 4,
        max_frame_size: 1 << 20,
        instance: Some("laptop".into()),
        agent: "test-agent".into(),
        producer: "prod-1".into(),
        first_seq: 1,
    }
}

/// What a step produced.
#[derive(Debug, PartialEq)]
enum Out {
    Frame(Frame),
    Close,
}

/// A core, its virtual clock and helpers that play the hub.
struct Hub {
    core: Core,
    now: Instant,
    ids: Arc<AtomicU64>,
}

impl Hub {
    fn new() -> Hub {
        Hub::with(|_| {})
    }

    fn with(tweak: impl FnOnce(&mut Config)) -> Hub {
        let mut cfg = config();
        tweak(&mut cfg);
        let ids = Arc::new(AtomicU64::new(1));
        let now = Instant::now();
        Hub {
            core: Core::new(cfg, ids.clone(), Box::new(|| JITTER), now),
            now,
            ids,
        }
    }

    /// Moves the clock and lets the core see the time.
    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.core.handle_timeout(self.now);
    }

    /// Moves the clock to the core's next deadline.
    fn advance_to_deadline(&mut self) -> Duration {
        let at = self.core.poll_timeout().expect("a deadline");
        let d = at.saturating_duration_since(self.now);
        self.advance(d);
        d
    }

    fn actions(&mut self) -> Vec<Action> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }

    fn out(&mut self) -> Vec<Out> {
        std::iter::from_fn(|| self.core.poll_transmit())
            .map(|t| match t {
                Transmit::Frame(b) => {
                    Out::Frame(Frame::decode(b, &DecodeLimits::default()).unwrap())
                }
                Transmit::Close => Out::Close,
            })
            .collect()
    }

    /// The requests written, as (id, method).
    fn requests(&mut self) -> Vec<Request> {
        self.out()
            .into_iter()
            .filter_map(|o| match o {
                Out::Frame(Frame::Request(r)) => Some(r),
                _ => None,
            })
            .collect()
    }

    fn feed(&mut self, frame: Vec<u8>) {
        self.core
            .handle_inbound(self.now, Inbound::Binary(Bytes::from(frame)));
    }

    fn respond<T: minicbor::Encode<()>>(&mut self, id: u64, result: &T) {
        self.feed(encode_result(id, result).unwrap());
    }

    fn notify<T: minicbor::Encode<()>>(&mut self, method: &str, params: &T) {
        self.feed(encode_notification(method, params).unwrap());
    }

    /// Runs an attempt up to a sent `auth`; returns its request.
    fn open(&mut self) -> Request {
        let actions = self.actions();
        assert!(
            actions.iter().any(|a| matches!(a, Action::FetchToken)),
            "a token is fetched first"
        );
        self.core.handle_token(self.now, Ok("the-token".into()));
        assert!(matches!(self.actions()[..], [Action::Open]));
        self.core.handle_opened(self.now);
        let mut reqs = self.requests();
        assert_eq!(reqs.len(), 1);
        let auth = reqs.remove(0);
        assert_eq!(auth.method, "auth");
        auth
    }

    /// Runs an attempt to the end with `limits`; returns the actions.
    fn connect_with(&mut self, limits: ServerLimits) -> Vec<Action> {
        let auth = self.open();
        self.respond(auth.id, &AuthResult::new("s1", "alice", None, limits));
        self.actions()
    }

    fn connect(&mut self) -> Vec<Action> {
        self.connect_with(ServerLimits::DEFAULTS)
    }

    /// A call as a handle makes it.
    fn call(&mut self, method: &str) -> (u64, ReplyRx<Result<RawValue, Error>>) {
        self.call_with(method, &Empty {})
    }

    fn call_with<P: minicbor::Encode<()>>(
        &mut self,
        method: &str,
        params: &P,
    ) -> (u64, ReplyRx<Result<RawValue, Error>>) {
        let id = self.ids.fetch_add(1, Ordering::Relaxed);
        let frame = encode_request(id, method, params).unwrap();
        let (tx, rx) = reply();
        self.core.handle_command(
            self.now,
            Command::Call {
                id,
                frame: frame.into(),
                pending: Pending::Call(tx),
            },
        );
        (id, rx)
    }

    fn subscribe(
        &mut self,
        local: u64,
        pattern: &str,
    ) -> (Arc<SubQueue>, ReplyRx<Result<(), Error>>) {
        let queue = Arc::new(SubQueue::new(16));
        let (tx, rx) = reply();
        self.core.handle_command(
            self.now,
            Command::Subscribe {
                local,
                pattern: Pattern::parse(pattern, 1024).unwrap(),
                presence: false,
                queue: queue.clone(),
                reply: tx,
            },
        );
        (queue, rx)
    }

    /// Loses the connection (EOF) and returns the actions.
    fn drop_connection(&mut self) -> Vec<Action> {
        self.core.handle_socket_ended(self.now, None);
        self.actions()
    }
}

fn ready<T>(rx: &mut ReplyRx<T>) -> Option<T> {
    rx.now_or_never().flatten()
}

fn state(actions: &[Action]) -> Option<&ConnectionState> {
    actions.iter().rev().find_map(|a| match a {
        Action::State(s) => Some(s),
        _ => None,
    })
}

fn finished(actions: &[Action]) -> Option<&Error> {
    actions.iter().find_map(|a| match a {
        Action::Finished(e) => Some(e),
        _ => None,
    })
}

// ---- connecting ----

#[test]
fn the_first_attempt_authenticates_with_the_token_and_adopts_the_limits() {
    let mut hub = Hub::new();
    let auth = hub.open();
    let params: AuthParams<'_> = auth.params.decode().unwrap();
    assert_eq!(params.token, "the-token");
    assert_eq!(params.instance, Some("laptop"));
    assert_eq!(params.agent, Some("test-agent"));
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_in_flight = 3;
    hub.respond(auth.id, &AuthResult::new("s1", "alice", None, limits));
    let actions = hub.actions();
    assert_eq!(state(&actions), Some(&ConnectionState::Connected));
    assert!(actions.iter().any(|a| matches!(a, Action::FirstConnected)));
    // The announced window applies.
    let rx: Vec<_> = (0..4).map(|_| hub.call("ping")).collect();
    assert_eq!(hub.requests().len(), 3);
    assert_eq!(hub.core.requests.in_flight(), 3);
    drop(rx);
}

#[test]
fn a_token_provider_that_does_not_answer_fails_the_first_connect_at_its_deadline() {
    let mut hub = Hub::new();
    assert!(matches!(hub.actions()[..], [Action::FetchToken]));
    hub.advance(CONNECT_TIMEOUT - Duration::from_millis(1));
    assert!(hub.actions().is_empty(), "not before the deadline");
    hub.advance(Duration::from_millis(1));
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::AbandonAttempt));
    assert_eq!(
        finished(&actions),
        Some(&Error::provider("timed out", None))
    );
    assert!(hub.core.is_closed());
}

#[test]
fn opening_and_auth_have_deadlines() {
    // Opening the socket: connect_timeout.
    let mut hub = Hub::new();
    hub.actions();
    hub.core.handle_token(hub.now, Ok("t".into()));
    hub.actions();
    assert_eq!(hub.advance_to_deadline(), CONNECT_TIMEOUT);
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::AbandonAttempt));
    assert_eq!(finished(&actions), Some(&Error::connect("timed out", None)));

    // The auth answer: call_timeout.
    let mut hub = Hub::new();
    hub.open();
    hub.advance(CALL_TIMEOUT - Duration::from_millis(1));
    assert!(hub.actions().is_empty());
    hub.advance(Duration::from_millis(1));
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert!(matches!(finished(&actions), Some(Error::Connect { .. })));
}

#[test]
fn a_refused_token_stops_with_4000_and_a_transient_auth_error_retries() {
    let mut hub = Hub::new();
    let auth = hub.open();
    hub.feed(encode_error(
        auth.id,
        &WireError::new(ErrorCode::Unauthenticated, "bad signature"),
    ));
    let actions = hub.actions();
    assert_eq!(
        finished(&actions),
        Some(&Error::Auth("bad signature".into()))
    );
    assert_eq!(
        state(&actions),
        Some(&ConnectionState::Closed {
            code: Some(CloseStatus::Known(CloseCode::AuthFailed)),
            reason: "authentication failed: bad signature".into(),
        })
    );

    // After a first success, `unavailable` during auth reconnects.
    let mut hub = Hub::new();
    hub.connect();
    hub.drop_connection();
    hub.advance_to_deadline();
    let auth = hub.open();
    hub.feed(encode_error(
        auth.id,
        &WireError::new(ErrorCode::Unavailable, "busy"),
    ));
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert!(matches!(
        state(&actions),
        Some(ConnectionState::Reconnecting { attempt: 2, .. })
    ));
}

#[test]
fn an_invalid_url_is_fatal_and_a_failed_open_retries_after_the_first_connect() {
    let mut hub = Hub::new();
    hub.actions();
    hub.core.handle_token(hub.now, Ok("t".into()));
    hub.actions();
    hub.core
        .handle_open_failed(hub.now, Error::connect("invalid URL", None), true);
    assert!(matches!(
        finished(&hub.actions()),
        Some(Error::Connect { reason, .. }) if reason == "invalid URL"
    ));

    let mut hub = Hub::new();
    hub.connect();
    hub.drop_connection();
    hub.advance_to_deadline();
    hub.actions();
    hub.core.handle_token(hub.now, Ok("t".into()));
    hub.actions();
    hub.core
        .handle_open_failed(hub.now, Error::connect("refused", None), false);
    assert!(matches!(
        state(&hub.actions()),
        Some(ConnectionState::Reconnecting { attempt: 2, .. })
    ));
}

// ---- liveness, backoff ----

#[test]
fn silence_past_the_liveness_timeout_reconnects_and_any_message_resets_it() {
    let mut hub = Hub::new();
    hub.connect();
    hub.advance(LIVENESS - Duration::from_millis(1));
    assert!(hub.actions().is_empty());
    // A Ping (or any message) moves the deadline.
    hub.core.handle_inbound(hub.now, Inbound::Other);
    hub.advance(LIVENESS - Duration::from_millis(1));
    assert!(hub.actions().is_empty());
    hub.advance(Duration::from_millis(1));
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert_eq!(
        state(&actions),
        Some(&ConnectionState::Reconnecting {
            attempt: 1,
            next_in: BACKOFF.initial.mul_f64(JITTER),
        })
    );
}

#[test]
fn the_default_liveness_follows_the_announced_ping_interval() {
    let mut hub = Hub::with(|c| c.liveness = None);
    let mut limits = ServerLimits::DEFAULTS;
    limits.ping_interval_ms = 10_000;
    hub.connect_with(limits);
    // 2 × 10 s + 5 s.
    assert_eq!(hub.advance_to_deadline(), Duration::from_secs(25));
    assert!(matches!(hub.actions()[0], Action::DropSocket));
}

#[test]
fn backoff_grows_while_attempts_fail_and_resets_after_a_stable_session() {
    let mut hub = Hub::new();
    hub.connect();
    hub.drop_connection();
    let mut waits = Vec::new();
    for _ in 0..4 {
        waits.push(hub.advance_to_deadline());
        // The attempt fails: the provider errs.
        hub.actions();
        hub.core
            .handle_token(hub.now, Err(Error::provider("down", None)));
        assert!(matches!(
            state(&hub.actions()),
            Some(ConnectionState::Reconnecting { .. })
        ));
    }
    let half = |ms| Duration::from_millis(ms).mul_f64(JITTER);
    assert_eq!(waits, [half(100), half(200), half(400), half(800)]);
    // A connection that fails at once keeps backing off...
    hub.advance_to_deadline();
    hub.connect();
    let actions = hub.drop_connection();
    assert!(matches!(
        state(&actions),
        Some(ConnectionState::Reconnecting { attempt: 6, .. })
    ));
    // ...one that lasted STABLE_SESSION starts over.
    hub.advance_to_deadline();
    hub.connect();
    hub.advance(STABLE_SESSION);
    hub.core.handle_inbound(hub.now, Inbound::Other);
    let actions = hub.drop_connection();
    assert!(matches!(
        state(&actions),
        Some(ConnectionState::Reconnecting { attempt: 1, .. })
    ));
}

#[test]
fn the_retry_hint_of_closing_is_added_before_the_jitter_once() {
    let mut hub = Hub::new();
    hub.connect();
    hub.notify(
        "closing",
        &ClosingParams {
            code: 4008,
            reason: "draining",
            retry_after_ms: Some(2_000),
        },
    );
    hub.core.handle_inbound(hub.now, Inbound::Close(Some(4008)));
    hub.core.handle_socket_ended(hub.now, None);
    let actions = hub.actions();
    assert_eq!(
        state(&actions),
        Some(&ConnectionState::Reconnecting {
            attempt: 1,
            next_in: Duration::from_secs(2) + BACKOFF.initial.mul_f64(JITTER),
        })
    );
    hub.advance_to_deadline();
    hub.connect();
    let actions = hub.drop_connection();
    assert_eq!(
        state(&actions),
        Some(&ConnectionState::Reconnecting {
            attempt: 2,
            next_in: Duration::from_millis(200).mul_f64(JITTER),
        }),
        "the hint is used once"
    );
}

// ---- close codes ----

#[test]
fn every_close_code_gets_its_reaction() {
    let mut codes: Vec<Option<u16>> = CloseCode::ALL.iter().map(|c| Some(c.as_u16())).collect();
    codes.extend([Some(1001), Some(1011), Some(4099), None]);
    for code in codes {
        let mut hub = Hub::new();
        hub.connect();
        let (_, mut in_flight) = hub.call("ping");
        hub.out();
        hub.core.handle_inbound(hub.now, Inbound::Close(code));
        // In flight: lost at the close, whatever the code.
        assert_eq!(ready(&mut in_flight), Some(Err(Error::ConnectionLost)));
        // The socket is read to its end (the reply to the Close goes out).
        assert!(hub.actions().is_empty(), "{code:?}");
        hub.core.handle_socket_ended(hub.now, None);
        let actions = hub.actions();
        let known = code.and_then(CloseCode::from_u16);
        let stops = known.is_some_and(|c| c.reconnect() == Reconnect::Never);
        if stops {
            let c = known.unwrap();
            let want = if c == CloseCode::AuthFailed {
                Error::Auth("the hub rejected the token".into())
            } else {
                Error::Closed(Some(c))
            };
            assert_eq!(finished(&actions), Some(&want), "{c}");
            assert!(matches!(
                state(&actions),
                Some(ConnectionState::Closed { code: Some(CloseStatus::Known(k)), .. }) if *k == c
            ));
            // Later calls get the code.
            let (_, mut late) = hub.call("ping");
            assert_eq!(ready(&mut late), Some(Err(Error::Closed(Some(c)))));
        } else {
            assert!(
                matches!(state(&actions), Some(ConnectionState::Reconnecting { .. })),
                "{code:?}"
            );
            assert!(finished(&actions).is_none());
        }
    }
}

#[test]
fn invalid_payload_1007_stops_for_good() {
    let mut hub = Hub::new();
    hub.connect();
    hub.core.handle_inbound(hub.now, Inbound::Close(Some(1007)));
    hub.core.handle_socket_ended(hub.now, None);
    assert_eq!(
        finished(&hub.actions()),
        Some(&Error::Closed(Some(CloseCode::InvalidPayload)))
    );
}

#[test]
fn a_close_whose_socket_never_ends_is_dropped_after_the_reply_wait() {
    let mut hub = Hub::new();
    hub.connect();
    hub.core.handle_inbound(hub.now, Inbound::Close(Some(4009)));
    assert_eq!(hub.advance_to_deadline(), CLOSE_REPLY_WAIT);
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert_eq!(
        finished(&actions),
        Some(&Error::Closed(Some(CloseCode::SessionReplaced)))
    );
}

#[test]
fn a_close_during_auth_reports_the_code_on_the_first_connect() {
    let mut hub = Hub::new();
    hub.open();
    hub.core.handle_inbound(hub.now, Inbound::Close(Some(4004)));
    hub.core.handle_socket_ended(hub.now, None);
    let actions = hub.actions();
    assert!(
        matches!(finished(&actions), Some(Error::Connect { reason, .. }) if reason.contains("4004")),
        "{:?}",
        finished(&actions)
    );
}

// ---- application close ----

#[test]
fn close_sends_a_close_frame_and_lingers_for_the_reply() {
    let mut hub = Hub::new();
    hub.connect();
    let (_, mut in_flight) = hub.call("ping");
    hub.out();
    hub.core.close(hub.now);
    assert_eq!(hub.out(), [Out::Close]);
    assert_eq!(ready(&mut in_flight), Some(Err(Error::ConnectionLost)));
    // No reply from the hub: dropped after CLOSE_LINGER.
    assert_eq!(hub.advance_to_deadline(), CLOSE_LINGER);
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert_eq!(finished(&actions), Some(&Error::Closed(None)));
    assert_eq!(
        state(&actions),
        Some(&ConnectionState::Closed {
            code: None,
            reason: "client closed".into()
        })
    );
}

#[test]
fn close_during_a_backoff_wait_fails_what_waits_at_once() {
    let mut hub = Hub::new();
    hub.connect();
    let (queue, _) = hub.subscribe(1, "news");
    hub.drop_connection();
    let (_, mut queued) = hub.call("ping");
    hub.core.close(hub.now);
    let actions = hub.actions();
    assert_eq!(finished(&actions), Some(&Error::Closed(None)));
    assert_eq!(ready(&mut queued), Some(Err(Error::Closed(None))));
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    let mut sub = crate::subscription::Subscription {
        id: 1,
        pattern: "news".into(),
        queue,
        reaper: Arc::new(crate::deliver::Reaper::default()),
        _cmd: tokio::sync::mpsc::channel(1).0,
    };
    assert!(matches!(
        futures_util::Stream::poll_next(std::pin::Pin::new(&mut sub), &mut cx),
        std::task::Poll::Ready(Some(Event::Ended(Error::Closed(None))))
    ));
}

// ---- requests ----

#[test]
fn calls_in_flight_are_lost_and_queued_ones_wait_for_the_next_connection() {
    let mut hub = Hub::new();
    hub.connect();
    let (_, mut sent) = hub.call("ping");
    hub.out();
    hub.drop_connection();
    assert_eq!(ready(&mut sent), Some(Err(Error::ConnectionLost)));
    // Made while reconnecting: held, not failed.
    let (queued_id, mut queued) = hub.call("ping");
    assert!(hub.out().is_empty());
    hub.advance_to_deadline();
    hub.connect();
    let reqs = hub.requests();
    assert_eq!(reqs.iter().map(|r| r.id).collect::<Vec<_>>(), [queued_id]);
    hub.respond(queued_id, &"pong");
    assert_eq!(
        ready(&mut queued)
            .unwrap()
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "pong"
    );
}

#[test]
fn the_offline_queue_is_bounded() {
    let mut hub = Hub::with(|c| c.max_queued = 2);
    hub.connect();
    hub.drop_connection();
    let mut waiting: Vec<_> = (0..2).map(|_| hub.call("ping").1).collect();
    let (_, mut third) = hub.call("ping");
    assert_eq!(ready(&mut third), Some(Err(Error::QueueFull { limit: 2 })));
    assert!(waiting.iter_mut().all(|rx| ready(rx).is_none()));
}

#[test]
fn a_dropped_queued_call_is_never_sent() {
    let mut hub = Hub::new();
    hub.connect();
    hub.drop_connection();
    let (gone, rx) = hub.call("ping");
    drop(rx);
    hub.core.handle_dropped(hub.now, Dropped::Call(gone));
    let (kept, _rx) = hub.call("ping");
    hub.advance_to_deadline();
    hub.connect();
    let ids: Vec<u64> = hub.requests().iter().map(|r| r.id).collect();
    assert_eq!(ids, [kept]);
}

#[test]
fn the_window_queues_instead_of_failing_and_a_cancelled_call_holds_its_slot() {
    let mut hub = Hub::with(|c| c.max_queued = 1);
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_in_flight = 2;
    hub.connect_with(limits);
    let (a, _ra) = hub.call("ping");
    let (b, _rb) = hub.call("ping");
    let (c, mut rc) = hub.call("ping");
    assert_eq!(
        hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(),
        [a, b]
    );
    // The queue is at its bound: the task stops taking commands.
    assert!(!hub.core.accepts_commands());
    assert!(ready(&mut rc).is_none());
    // `a` is abandoned: `cancel` goes out, but the hub still counts it.
    hub.core.handle_dropped(hub.now, Dropped::Call(a));
    let out = hub.out();
    assert!(matches!(
        &out[..],
        [Out::Frame(Frame::Notification(n))] if n.method == "cancel"
            && n.params.decode::<CancelParams>().unwrap().id == a
    ));
    // Its terminal frame frees the slot: `c` goes out.
    hub.feed(encode_error(
        a,
        &WireError::new(ErrorCode::Cancelled, "cancelled"),
    ));
    assert_eq!(hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(), [c]);
    assert!(hub.core.accepts_commands());
    hub.respond(c, &1u8);
    assert_eq!(ready(&mut rc).unwrap().unwrap().decode::<u8>().unwrap(), 1);
}

#[test]
fn the_byte_window_queues_large_requests() {
    let mut hub = Hub::new();
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_in_flight_bytes = 1_000;
    limits.max_frame_size = 1_000;
    hub.connect_with(limits);
    let big = "x".repeat(600);
    let (a, _ra) = hub.call_with("upload", &big);
    let (b, _rb) = hub.call_with("upload", &big);
    assert_eq!(hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(), [a]);
    hub.respond(a, &Empty {});
    assert_eq!(hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(), [b]);
}

#[test]
fn requests_over_the_announced_limits_fail_at_once() {
    let mut hub = Hub::new();
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_frame_size = 100;
    limits.max_depth = 4;
    hub.connect_with(limits);
    let (_, mut big) = hub.call_with("x", &"y".repeat(200));
    assert_eq!(
        ready(&mut big),
        Some(Err(Error::ExceedsLimit {
            limit: "max_frame_size",
            max: 100
        }))
    );
    // [0, id, "x", [[[[1]]]]]: five levels.
    let (_, mut deep) = hub.call_with("x", &[[[[1u8]]]]);
    assert_eq!(
        ready(&mut deep),
        Some(Err(Error::ExceedsLimit {
            limit: "max_depth",
            max: 4
        }))
    );
    let (_, mut ok) = hub.call_with("x", &[[1u8]]);
    assert!(ready(&mut ok).is_none());
    assert_eq!(
        hub.requests().len(),
        1,
        "only the one within the limits went out"
    );
}

#[test]
fn after_closing_nothing_more_is_sent_on_the_connection() {
    let mut hub = Hub::new();
    hub.connect();
    hub.notify(
        "closing",
        &ClosingParams {
            code: 4008,
            reason: "draining",
            retry_after_ms: None,
        },
    );
    let (id, mut rx) = hub.call("ping");
    assert!(hub.out().is_empty());
    hub.core.handle_inbound(hub.now, Inbound::Close(Some(4008)));
    hub.core.handle_socket_ended(hub.now, None);
    assert!(ready(&mut rx).is_none(), "it waits for the next connection");
    hub.advance_to_deadline();
    hub.connect();
    assert_eq!(
        hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(),
        [id]
    );
}

#[test]
fn a_hub_that_does_not_close_after_closing_is_dropped_after_the_grace() {
    let mut hub = Hub::new();
    hub.connect();
    hub.notify(
        "closing",
        &ClosingParams {
            code: 4008,
            reason: "draining",
            retry_after_ms: None,
        },
    );
    let (id, _rx) = hub.call("ping");
    assert_eq!(hub.advance_to_deadline(), CLOSING_GRACE);
    let actions = hub.actions();
    assert!(matches!(actions[0], Action::DropSocket));
    assert!(matches!(
        state(&actions),
        Some(ConnectionState::Reconnecting { attempt: 1, .. })
    ));
    hub.advance_to_deadline();
    hub.connect();
    assert_eq!(
        hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(),
        [id]
    );
}

// ---- streams ----

#[test]
fn a_chunk_gap_breaks_the_stream_and_keeps_the_id_until_the_terminal_frame() {
    let mut hub = Hub::new();
    let mut limits = ServerLimits::DEFAULTS;
    limits.max_in_flight = 1;
    hub.connect_with(limits);
    let id = hub.ids.fetch_add(1, Ordering::Relaxed);
    let queue = Arc::new(ChunkQueue::new(8));
    hub.core.handle_command(
        hub.now,
        Command::Call {
            id,
            frame: encode_request(id, "history", &Empty {}).unwrap().into(),
            pending: Pending::Stream {
                queue: queue.clone(),
                next_seq: 0,
            },
        },
    );
    hub.out();
    hub.feed(encode_chunk(id, 0, false, &0u8).unwrap());
    hub.feed(encode_chunk(id, 2, false, &2u8).unwrap());
    assert!(matches!(
        &hub.out()[..],
        [Out::Frame(Frame::Notification(n))] if n.method == "cancel"
    ));
    assert!(queue.ended());
    let (next, _rx) = hub.call("ping");
    assert!(
        hub.out().is_empty(),
        "the broken stream still holds the window"
    );
    hub.feed(encode_chunk(id, 3, true, &3u8).unwrap());
    assert_eq!(
        hub.requests().iter().map(|r| r.id).collect::<Vec<_>>(),
        [next]
    );
}

// ---- subscriptions ----

#[test]
fn subscriptions_are_shared_renewed_and_unsubscribed_by_the_last_drop() {
    let mut hub = Hub::new();
    hub.connect();
    let (_q1, mut r1) = hub.subscribe(1, "news.>");
    let sub = hub.requests();
    assert_eq!(sub.len(), 1);
    assert_eq!(sub[0].method, "subscribe");
    hub.respond(sub[0].id, &Empty {});
    assert_eq!(ready(&mut r1), Some(Ok(())));
    // The same pattern again: confirmed at once, nothing sent.
    let (q2, mut r2) = hub.subscribe(2, "news.>");
    assert_eq!(ready(&mut r2), Some(Ok(())));
    assert!(hub.out().is_empty());
    assert_eq!(hub.core.subs.patterns(), 1);
    // Events reach every local subscription of the pattern.
    let data = RawValue::encode(&"hi").unwrap();
    hub.notify(
        "event",
        &EventParams::new("news.a", data.as_raw_ref(), Some("bob")),
    );
    assert_eq!(q2.len(), 1);
    // Renewed after a reconnect (and before queued calls).
    hub.drop_connection();
    let (queued, _rx) = hub.call("ping");
    hub.advance_to_deadline();
    hub.connect();
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].method, "subscribe");
    let p: SubscribeParams<'_> = reqs[0].params.decode().unwrap();
    assert_eq!(p.topic, "news.>");
    assert_eq!(reqs[1].id, queued);
    hub.respond(reqs[0].id, &Empty {});
    // Only the last drop unsubscribes.
    hub.core.handle_dropped(hub.now, Dropped::Subscription(1));
    assert!(hub.out().is_empty());
    hub.core.handle_dropped(hub.now, Dropped::Subscription(2));
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "unsubscribe");
}

#[test]
fn a_refused_renewal_ends_the_subscription() {
    let mut hub = Hub::new();
    hub.connect();
    let (queue, _r) = hub.subscribe(1, "news");
    let sub = hub.requests();
    hub.respond(sub[0].id, &Empty {});
    hub.drop_connection();
    hub.advance_to_deadline();
    hub.connect();
    let renewal = hub.requests();
    hub.feed(encode_error(
        renewal[0].id,
        &WireError::new(ErrorCode::Forbidden, "no"),
    ));
    assert_eq!(queue.len(), 1, "Ended is queued");
    assert_eq!(hub.core.subs.patterns(), 0);
}

// ---- token refresh ----

#[test]
fn token_expiring_refreshes_once_at_a_time_and_the_fetch_has_a_deadline() {
    let mut hub = Hub::new();
    hub.connect();
    let expiring = TokenExpiringParams {
        expires_in_ms: 10_000,
    };
    hub.notify("token.expiring", &expiring);
    assert!(matches!(hub.actions()[..], [Action::FetchRefreshToken]));
    hub.notify("token.expiring", &expiring);
    assert!(hub.actions().is_empty(), "one refresh at a time");
    // The provider hangs: given up at its deadline.
    hub.advance(CONNECT_TIMEOUT);
    assert!(matches!(hub.actions()[..], [Action::AbandonRefresh]));
    // The next notice tries again.
    hub.notify("token.expiring", &expiring);
    assert!(matches!(hub.actions()[..], [Action::FetchRefreshToken]));
    hub.core.handle_refresh_token(hub.now, Ok("fresh".into()));
    let reqs = hub.requests();
    assert_eq!(reqs[0].method, "auth.refresh");
    hub.notify("token.expiring", &expiring);
    assert!(hub.actions().is_empty(), "the refresh is in flight");
    hub.respond(reqs[0].id, &Empty {});
    hub.notify("token.expiring", &expiring);
    assert!(matches!(hub.actions()[..], [Action::FetchRefreshToken]));
}

// ---- served requests ----

fn unary() -> Handler {
    Handler::Unary(Arc::new(|p| async move { Ok(p) }.boxed()))
}

fn serve(hub: &mut Hub, method: &str) {
    let (tx, mut rx) = reply();
    hub.core.handle_command(
        hub.now,
        Command::Serve {
            method: method.into(),
            handler: unary(),
            reply: tx,
        },
    );
    assert_eq!(ready(&mut rx), Some(Ok(())));
}

fn response(out: &[Out]) -> (u64, Result<RawValue, WireError>) {
    match out {
        [Out::Frame(Frame::Response(r))] => (r.id, r.outcome.clone()),
        other => panic!("not one response: {other:?}"),
    }
}

fn spawned(actions: &[Action]) -> u64 {
    match actions {
        [Action::Spawn { serial, .. }] => *serial,
        _ => panic!("not one spawn"),
    }
}

#[test]
fn requests_for_methods_not_served_get_method_not_found() {
    let mut hub = Hub::new();
    hub.connect();
    hub.feed(encode_request(900, "app.unknown", &Empty {}).unwrap());
    let (id, outcome) = response(&hub.out());
    assert_eq!(id, 900);
    assert_eq!(outcome.unwrap_err().code, ErrorCode::MethodNotFound);
}

#[test]
fn a_served_request_runs_answers_and_survives_reconnects() {
    let mut hub = Hub::new();
    hub.connect();
    serve(&mut hub, "app.echo");
    // Serving it twice is refused.
    let (tx, mut rx) = reply();
    hub.core.handle_command(
        hub.now,
        Command::Serve {
            method: "app.echo".into(),
            handler: unary(),
            reply: tx,
        },
    );
    assert!(matches!(ready(&mut rx), Some(Err(Error::Remote(e))) if e.code == ErrorCode::Conflict));

    hub.feed(encode_request(7, "app.echo", &"hi").unwrap());
    let serial = spawned(&hub.actions());
    hub.core
        .handle_served(serial, Output::Done(Ok(RawValue::encode(&"hi").unwrap())));
    let (id, outcome) = response(&hub.out());
    assert_eq!(
        (id, outcome.unwrap().decode::<String>().unwrap()),
        (7, "hi".into())
    );

    // Still served on the next connection; a running one is aborted by the loss.
    hub.feed(encode_request(8, "app.echo", &"x").unwrap());
    let running = spawned(&hub.actions());
    let actions = hub.drop_connection();
    assert!(actions.iter().any(|a| matches!(a, Action::AbortAllServed)));
    hub.advance_to_deadline();
    hub.connect();
    // Its late output is not sent on the new connection.
    hub.core
        .handle_served(running, Output::Done(Ok(RawValue::null())));
    assert!(hub.out().is_empty());
    hub.feed(encode_request(8, "app.echo", &"x").unwrap());
    spawned(&hub.actions());
}

#[test]
fn the_hub_can_cancel_a_served_request() {
    let mut hub = Hub::new();
    hub.connect();
    serve(&mut hub, "app.slow");
    hub.feed(encode_request(5, "app.slow", &Empty {}).unwrap());
    let serial = spawned(&hub.actions());
    hub.notify("cancel", &CancelParams { id: 5 });
    assert!(matches!(hub.actions()[..], [Action::Abort(s)] if s == serial));
    let (id, outcome) = response(&hub.out());
    assert_eq!(id, 5);
    assert_eq!(outcome.unwrap_err().code, ErrorCode::Cancelled);
    // Whatever the dropped handler produced is not sent.
    hub.core
        .handle_served(serial, Output::Done(Ok(RawValue::null())));
    assert!(hub.out().is_empty());
    // A cancel for an id not running is ignored.
    hub.notify("cancel", &CancelParams { id: 5 });
    assert!(hub.actions().is_empty() && hub.out().is_empty());
}

#[test]
fn served_requests_are_bounded_and_stream_chunks_in_order() {
    let mut hub = Hub::new();
    hub.connect();
    serve(&mut hub, "app.s");
    let mut serials = Vec::new();
    for id in 0..4 {
        hub.feed(encode_request(id, "app.s", &Empty {}).unwrap());
        serials.push(spawned(&hub.actions()));
    }
    hub.feed(encode_request(4, "app.s", &Empty {}).unwrap());
    let (id, outcome) = response(&hub.out());
    assert_eq!(id, 4);
    assert_eq!(outcome.unwrap_err().code, ErrorCode::TooManyRequests);
    // Chunks carry consecutive seq numbers; the final one ends it.
    for (i, fin) in [(0u8, false), (1, false), (2, true)] {
        hub.core.handle_served(
            serials[0],
            Output::Chunk {
                data: RawValue::encode(&i).unwrap(),
                fin,
            },
        );
    }
    let chunks: Vec<(u64, u64, bool)> = hub
        .out()
        .into_iter()
        .map(|o| match o {
            Out::Frame(Frame::Chunk(c)) => (c.id, c.seq, c.fin),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(chunks, [(0, 0, false), (0, 1, false), (0, 2, true)]);
    // A slot is free again.
    hub.feed(encode_request(9, "app.s", &Empty {}).unwrap());
    spawned(&hub.actions());
}

#[test]
fn reading_pauses_while_answers_to_the_hub_pile_up() {
    let mut hub = Hub::new();
    hub.connect();
    for id in 0..MAX_QUEUED_REPLIES as u64 {
        hub.feed(encode_request(id, "nobody.serves.this", &Empty {}).unwrap());
    }
    assert!(!hub.core.wants_read());
    assert!(hub.core.poll_transmit().is_some());
    assert!(hub.core.wants_read());
}

#[test]
fn undecodable_frames_and_unknown_ids_are_ignored() {
    let mut hub = Hub::new();
    hub.connect();
    let (id, mut rx) = hub.call("ping");
    hub.out();
    hub.feed(vec![0xff, 0x00]);
    hub.feed(encode_result(id + 1000, &Empty {}).unwrap());
    hub.feed(encode_chunk(id + 1000, 0, true, &Empty {}).unwrap());
    hub.notify("some.future.notification", &1u8);
    assert!(hub.actions().is_empty() && hub.out().is_empty());
    hub.respond(id, &3u8);
    assert_eq!(ready(&mut rx).unwrap().unwrap().decode::<u8>().unwrap(), 3);
}

// ---- durable streams ----

mod durable_streams {
    use super::*;
    use crate::deliver::Reaper;
    use crate::durable::{DurableEvent, DurableQueue, PublishAck, PublishOptions, StreamPosition};
    use plexus_protocol::methods::{
        Durability, PublishParams, PublishResult, ResumeFinal, ResumeOutcome, SubscribeResult,
    };

    fn dsub(
        hub: &mut Hub,
        local: u64,
        pattern: &str,
        after: Option<StreamPosition>,
        capacity: usize,
    ) -> (
        Arc<DurableQueue>,
        ReplyRx<Result<Option<StreamPosition>, Error>>,
    ) {
        let queue = Arc::new(DurableQueue::new(capacity, Arc::new(Reaper::default())));
        let (tx, rx) = reply();
        hub.core.handle_command(
            hub.now,
            Command::DurableSubscribe {
                local,
                pattern: Pattern::parse(pattern, 1024).unwrap(),
                after,
                queue: queue.clone(),
                reply: tx,
            },
        );
        (queue, rx)
    }

    fn ev(topic: &str, offset: u64, position: u64) -> EventParams<'static> {
        // The payload is the offset, so tests can tell events apart.
        let data: &'static RawValue = Box::leak(Box::new(RawValue::encode(&offset).unwrap()));
        EventParams::new(
            Box::leak(topic.to_owned().into_boxed_str()),
            data.as_raw_ref(),
            None,
        )
        .with_position(offset, position)
    }

    fn live(hub: &mut Hub, topic: &str, offset: u64, position: u64) {
        hub.notify("event", &ev(topic, offset, position));
    }

    fn chunk(hub: &mut Hub, id: u64, seq: u64, events: &[(u64, u64)], topic: &str) {
        let list: Vec<EventParams<'static>> =
            events.iter().map(|(o, p)| ev(topic, *o, *p)).collect();
        hub.feed(encode_chunk(id, seq, false, &list).unwrap());
    }

    fn fin(hub: &mut Hub, id: u64, seq: u64, f: &ResumeFinal) {
        hub.feed(encode_chunk(id, seq, true, f).unwrap());
    }

    fn drain(q: &DurableQueue) -> Vec<DurableEvent> {
        std::iter::from_fn(|| q.try_pop()).collect()
    }

    fn offsets(events: &[DurableEvent]) -> Vec<u64> {
        events
            .iter()
            .filter_map(|e| match e {
                DurableEvent::Message(m) => Some(m.offset),
                _ => None,
            })
            .collect()
    }

    fn subscribe_req(hub: &mut Hub) -> (u64, SubscribeParams<'static>) {
        let reqs = hub.requests();
        let r = reqs
            .into_iter()
            .find(|r| r.method == "subscribe")
            .expect("a subscribe");
        let raw: &'static RawValue = Box::leak(Box::new(r.params));
        (r.id, plexus_protocol::decode_params(raw).unwrap())
    }

    #[test]
    fn a_start_now_adopts_the_subscribe_result_and_resumes_with_since_after_a_reconnect() {
        let mut hub = Hub::new();
        hub.connect();
        let (q, mut rx) = dsub(&mut hub, 1, "orders.eu", None, 64);
        let (id, p) = subscribe_req(&mut hub);
        assert_eq!(p.topic, "orders.eu");
        assert_eq!(p.since, None, "a start now sends no since");
        // An event may come before the answer (§11.4).
        live(&mut hub, "orders.eu", 8, 80);
        hub.respond(id, &SubscribeResult::durable("E1", Some(7), 79));
        assert_eq!(
            ready(&mut rx),
            Some(Ok(Some(StreamPosition::new(Some("E1".into()), 7)))),
            "the hub's position, for the store"
        );
        live(&mut hub, "orders.eu", 8, 80); // a duplicate
        live(&mut hub, "orders.eu", 9, 81);
        live(&mut hub, "orders.other", 3, 82); // not this topic
        assert_eq!(offsets(&drain(&q)), [8, 9]);

        hub.drop_connection();
        hub.advance_to_deadline();
        hub.connect();
        let (id, p) = subscribe_req(&mut hub);
        let since = p.since.expect("a resume");
        assert_eq!(
            (since.epoch, since.offset, since.position),
            (Some("E1"), Some(9), None)
        );
        // The catch-up overlaps what was queued, and a live event arrives
        // during it (ignored: the hub resends it after the final chunk).
        live(&mut hub, "orders.eu", 12, 84);
        chunk(&mut hub, id, 0, &[(9, 81), (10, 82)], "orders.eu");
        chunk(&mut hub, id, 1, &[(11, 83)], "orders.eu");
        fin(
            &mut hub,
            id,
            2,
            &ResumeFinal::new(ResumeOutcome::Recovered, 3, "E1", 11, 83, None),
        );
        live(&mut hub, "orders.eu", 11, 83); // the seam: a duplicate
        live(&mut hub, "orders.eu", 12, 84);
        let events = drain(&q);
        assert_eq!(offsets(&events), [10, 11, 12]);
        assert!(matches!(
            &events[2],
            DurableEvent::Recovered { count: 3, position } if position.last == 11
        ));
        assert_eq!(hub.core.durable.phase(1), Some(durable::DPhase::Live));
        assert_eq!(
            hub.core.durable.position(1),
            Some(StreamPosition::new(Some("E1".into()), 12))
        );
    }

    #[test]
    fn too_old_and_reset_are_typed_and_move_the_position() {
        let mut hub = Hub::new();
        hub.connect();
        let after = StreamPosition::new(Some("E1".into()), 5);
        let (q, mut rx) = dsub(&mut hub, 1, "orders.eu", Some(after), 64);
        let (id, p) = subscribe_req(&mut hub);
        assert_eq!(p.since.unwrap().offset, Some(5));
        assert_eq!(ready(&mut rx), None, "confirmed after the final chunk");
        fin(
            &mut hub,
            id,
            0,
            &ResumeFinal::new(ResumeOutcome::TooOld, 0, "E1", 40, 400, Some(30)),
        );
        assert_eq!(ready(&mut rx), Some(Ok(None)));
        assert!(matches!(
            &drain(&q)[..],
            [DurableEvent::TooOld { earliest: Some(30), position }] if position.last == 40
        ));

        hub.drop_connection();
        hub.advance_to_deadline();
        hub.connect();
        let (id, p) = subscribe_req(&mut hub);
        assert_eq!(p.since.unwrap().offset, Some(40));
        fin(
            &mut hub,
            id,
            0,
            &ResumeFinal::new(ResumeOutcome::Reset, 0, "E2", 2, 7, None),
        );
        live(&mut hub, "orders.eu", 3, 8);
        let events = drain(&q);
        assert!(matches!(
            &events[0],
            DurableEvent::Reset { epoch, position } if &**epoch == "E2" && position.last == 2
        ));
        match &events[1] {
            DurableEvent::Message(m) => {
                assert_eq!((m.offset, m.epoch.as_deref()), (3, Some("E2")));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_pattern_resumes_by_namespace_position() {
        let mut hub = Hub::new();
        hub.connect();
        let (q, _rx) = dsub(
            &mut hub,
            1,
            "orders.*",
            Some(StreamPosition::new(None, 0)),
            64,
        );
        let (id, p) = subscribe_req(&mut hub);
        let since = p.since.unwrap();
        assert_eq!(
            (since.epoch, since.offset, since.position),
            (None, None, Some(0))
        );
        chunk(&mut hub, id, 0, &[(1, 1), (1, 2), (2, 3)], "orders.a");
        fin(
            &mut hub,
            id,
            1,
            &ResumeFinal::new(ResumeOutcome::Recovered, 3, "NS", 0, 3, None),
        );
        live(&mut hub, "orders.b", 1, 3); // position 3 again: a duplicate
        live(&mut hub, "orders.b", 2, 4);
        let events = drain(&q);
        let positions: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                DurableEvent::Message(m) => Some(m.position),
                _ => None,
            })
            .collect();
        assert_eq!(positions, [1, 2, 3, 4]);
        hub.drop_connection();
        hub.advance_to_deadline();
        hub.connect();
        let (_, p) = subscribe_req(&mut hub);
        let since = p.since.unwrap();
        assert_eq!((since.epoch, since.position), (Some("NS"), Some(4)));
    }

    #[test]
    fn a_full_durable_buffer_stops_reading_until_the_consumer_takes_an_event() {
        let mut hub = Hub::new();
        hub.connect();
        let (q, _rx) = dsub(
            &mut hub,
            1,
            "orders.eu",
            Some(StreamPosition::new(None, 0)),
            2,
        );
        let (id, _) = subscribe_req(&mut hub);
        assert!(hub.core.wants_read());
        // One frame is taken whole, beyond the bound.
        chunk(&mut hub, id, 0, &[(1, 1), (2, 2), (3, 3)], "orders.eu");
        assert_eq!(q.len(), 3);
        assert!(!hub.core.wants_read(), "nothing is dropped: reading stops");
        q.try_pop();
        q.try_pop();
        assert!(hub.core.wants_read());
    }

    #[test]
    fn a_dropped_resume_is_cancelled_then_unsubscribed_after_its_end() {
        let mut hub = Hub::new();
        hub.connect();
        let (_q, _rx) = dsub(
            &mut hub,
            1,
            "orders.eu",
            Some(StreamPosition::new(None, 0)),
            8,
        );
        let (id, _) = subscribe_req(&mut hub);
        hub.core.handle_dropped(hub.now, Dropped::Subscription(1));
        assert!(matches!(
            &hub.out()[..],
            [Out::Frame(Frame::Notification(n))] if n.method == "cancel"
        ));
        fin(
            &mut hub,
            id,
            0,
            &ResumeFinal::new(ResumeOutcome::Recovered, 0, "E", 0, 0, None),
        );
        let reqs = hub.requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].method, "unsubscribe");
    }

    #[test]
    fn durable_and_plain_subscriptions_cannot_share_a_pattern() {
        let mut hub = Hub::new();
        hub.connect();
        let (_q, _rx) = dsub(&mut hub, 1, "orders.eu", None, 8);
        let (_sq, mut srx) = hub.subscribe(2, "orders.eu");
        assert!(
            matches!(ready(&mut srx), Some(Err(Error::Remote(e))) if e.code == ErrorCode::Conflict)
        );
        let (_q2, mut rx2) = dsub(&mut hub, 3, "orders.eu", None, 8);
        assert!(
            matches!(ready(&mut rx2), Some(Err(Error::Remote(e))) if e.code == ErrorCode::Conflict)
        );
    }

    #[test]
    fn a_plain_topic_is_refused_as_not_durable() {
        let mut hub = Hub::new();
        hub.connect();
        let (_q, mut rx) = dsub(&mut hub, 1, "chat.lobby", None, 8);
        let (id, _) = subscribe_req(&mut hub);
        hub.respond(id, &SubscribeResult::default());
        assert!(
            matches!(ready(&mut rx), Some(Err(Error::Remote(e))) if e.code == ErrorCode::InvalidParams)
        );
        assert_eq!(hub.requests()[0].method, "unsubscribe");
    }

    #[test]
    fn a_resume_refused_as_unavailable_is_sent_again_after_the_hint_from_its_position() {
        let mut hub = Hub::new();
        hub.connect();
        let (q, mut rx) = dsub(
            &mut hub,
            1,
            "orders.eu",
            Some(StreamPosition::new(None, 0)),
            64,
        );
        let (id, _) = subscribe_req(&mut hub);
        chunk(&mut hub, id, 0, &[(1, 1), (2, 2)], "orders.eu");
        assert_eq!(
            ready(&mut rx),
            Some(Ok(None)),
            "accepted at the first chunk"
        );
        // Storage fails in the middle of the catch-up.
        let e = WireError::new(ErrorCode::Unavailable, "storage").with_retry_after_ms(700);
        hub.feed(encode_error(id, &e));
        assert!(hub.requests().is_empty(), "not at once");
        assert_eq!(hub.advance_to_deadline(), Duration::from_millis(700));
        let (id, p) = subscribe_req(&mut hub);
        assert_eq!(p.since.unwrap().offset, Some(2), "from what was received");
        chunk(&mut hub, id, 0, &[(3, 3)], "orders.eu");
        fin(
            &mut hub,
            id,
            1,
            &ResumeFinal::new(ResumeOutcome::Recovered, 1, "E", 3, 3, None),
        );
        let events = drain(&q);
        assert_eq!(offsets(&events), [1, 2, 3]);
        assert!(!events.iter().any(|e| matches!(e, DurableEvent::Ended(_))));
    }

    fn publish(hub: &mut Hub, data: u64) -> (u64, ReplyRx<Result<PublishAck, Error>>) {
        publish_with(hub, data, PublishOptions::new())
    }

    fn publish_with(
        hub: &mut Hub,
        data: u64,
        options: PublishOptions,
    ) -> (u64, ReplyRx<Result<PublishAck, Error>>) {
        let id = hub.ids.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = reply();
        hub.core.handle_command(
            hub.now,
            Command::DurablePublish {
                id,
                topic: "orders.eu".into(),
                data: RawValue::encode(&data).unwrap(),
                options,
                reply: tx,
            },
        );
        (id, rx)
    }

    fn sent_publishes(hub: &mut Hub) -> Vec<(u64, Option<u64>)> {
        hub.requests()
            .iter()
            .filter(|r| r.method == "publish")
            .map(|r| {
                let p: PublishParams = plexus_protocol::decode_params(&r.params).unwrap();
                assert_eq!(p.producer, Some("prod-1"));
                (r.id, p.seq)
            })
            .collect()
    }

    #[test]
    fn publishes_get_increasing_seqs_and_those_in_flight_are_sent_again_after_a_reconnect() {
        let mut hub = Hub::new();
        hub.connect();
        let (a, mut ra) = publish(&mut hub, 1);
        let (b, mut rb) = publish(&mut hub, 2);
        let (c, mut rc) = publish(&mut hub, 3);
        assert_eq!(
            sent_publishes(&mut hub),
            [(a, Some(1)), (b, Some(2)), (c, Some(3))]
        );
        hub.respond(
            a,
            &PublishResult::durable(1, Some(1), Some(1), "E", Durability::Fsynced, false),
        );
        let ack = ready(&mut ra).unwrap().unwrap();
        assert_eq!((ack.offset, ack.seq, ack.duplicate), (Some(1), 1, false));
        assert_eq!(ack.durability, Some(Durability::Fsynced));

        hub.drop_connection();
        assert_eq!(
            ready(&mut rb),
            None,
            "b and c are not failed: they are retried"
        );
        // A publish made while reconnecting goes after the retries.
        let (d, mut rd) = publish(&mut hub, 4);
        hub.advance_to_deadline();
        hub.connect();
        assert_eq!(
            sent_publishes(&mut hub),
            [(b, Some(2)), (c, Some(3)), (d, Some(4))]
        );
        hub.respond(
            b,
            &PublishResult::durable(0, Some(2), Some(2), "E", Durability::Fsynced, true),
        );
        hub.respond(
            c,
            &PublishResult::durable(1, Some(3), Some(3), "E", Durability::Fsynced, false),
        );
        hub.respond(
            d,
            &PublishResult::durable(1, Some(4), Some(4), "E", Durability::Fsynced, false),
        );
        let b = ready(&mut rb).unwrap().unwrap();
        assert!(b.duplicate, "the first attempt had been stored");
        assert_eq!(b.offset, Some(2));
        assert_eq!(ready(&mut rc).unwrap().unwrap().offset, Some(3));
        assert_eq!(ready(&mut rd).unwrap().unwrap().seq, 4);
    }

    #[test]
    fn a_conflict_is_typed_and_key_and_expected_offset_are_sent() {
        let mut hub = Hub::new();
        hub.connect();
        let (id, mut rx) = publish_with(
            &mut hub,
            1,
            PublishOptions::new()
                .key("k-1")
                .expected_offset(9)
                .echo(false),
        );
        let reqs = hub.requests();
        let p: PublishParams = plexus_protocol::decode_params(&reqs[0].params).unwrap();
        assert_eq!(
            (p.key, p.expected_offset, p.echo),
            (Some("k-1"), Some(9), Some(false))
        );
        #[derive(minicbor::Encode)]
        #[cbor(map)]
        struct Details {
            #[n(1)]
            last_offset: u64,
        }
        let mut e = WireError::new(ErrorCode::Conflict, "expected offset differs");
        e.details = Some(RawValue::encode(&Details { last_offset: 12 }).unwrap());
        hub.feed(encode_error(id, &e));
        assert!(matches!(
            ready(&mut rx),
            Some(Err(Error::Conflict {
                last_offset: Some(12),
                last_seq: None,
                ..
            }))
        ));
    }

    #[test]
    fn a_durable_publish_still_queued_at_close_fails_with_the_close() {
        let mut hub = Hub::new();
        hub.connect();
        let (_a, mut ra) = publish(&mut hub, 1);
        hub.out();
        hub.core.close(hub.now);
        hub.core.handle_socket_ended(hub.now, None);
        assert!(matches!(ready(&mut ra), Some(Err(Error::Closed(_)))));
    }
}

mod rpc;
