//! The session rules, driven by a virtual clock: every deadline and every
//! close code the core decides, in microseconds and without sleeping.

use super::*;
use crate::auth::AuthError;
use crate::auth::{Capabilities, InvalidToken};
use crate::session::table::Meta;
use crate::session::table::{MethodIndex, MethodTable};
use plexus_protocol::frame::encode_request;
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, AuthRefreshResult, AuthResult, ServerLimits,
};
use plexus_protocol::methods::{Empty, TokenExpiringParams};
use plexus_protocol::{DecodeLimits, Frame, Response};
use plexus_protocol::{ErrorCode, WireError};
use std::time::{SystemTime, UNIX_EPOCH};

const SESSION: &str = "node-1";

/// A core with a virtual clock. `wall` moves with `now`.
struct H {
    core: Core,
    t0: Instant,
    now: Instant,
    wall0: SystemTime,
    next_id: u64,
    /// Indexes of the test table.
    ping: MethodIndex,
    sleep: MethodIndex,
    stream: MethodIndex,
}

fn table() -> (MethodTable, MethodIndex, MethodIndex, MethodIndex) {
    let mut t = MethodTable::default();
    let ping = t.add("ping", Kind::Sync, Meta::default());
    let sleep = t.add("debug.sleep", Kind::Async, Meta::default());
    let stream = t.add("debug.stream", Kind::Streamed, Meta::default());
    (t, ping, sleep, stream)
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn principal(user: &str, exp: Option<u64>) -> Principal {
    Principal {
        user: user.into(),
        caps: Arc::new(Capabilities::allow_all()),
        expires_at: exp,
    }
}

fn decode(frame: &Bytes) -> Frame {
    Frame::decode(frame.clone(), &DecodeLimits::default()).expect("the core's frames decode")
}

impl H {
    fn new(tweak: impl FnOnce(&mut CoreConfig)) -> H {
        let (table, ping, sleep, stream) = table();
        let mut cfg = CoreConfig::new(table);
        cfg.leeway = Duration::ZERO;
        // No pings unless a test is about keepalive: the harness never
        // answers them.
        cfg.ping_interval = secs(86_400 * 365);
        tweak(&mut cfg);
        let t0 = Instant::now();
        H {
            core: Core::new(Arc::new(cfg), SESSION.into(), t0),
            t0,
            now: t0,
            wall0: UNIX_EPOCH + secs(1_800_000_000),
            next_id: 1,
            ping,
            sleep,
            stream,
        }
    }

    fn wall(&self) -> SystemTime {
        self.wall0 + (self.now - self.t0)
    }

    /// Unix seconds `d` from now.
    fn exp_in(&self, d: Duration) -> u64 {
        (self.wall() + d)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Moves the clock to `t0 + at`, running every timer at its own moment
    /// on the way. Bounded, so a timer that never moves is caught.
    fn run_to(&mut self, at: Duration) {
        let target = self.t0 + at;
        for _ in 0..10_000 {
            match self.core.next_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.core.handle_timeout(self.now);
                    if self.core.is_finished() {
                        break;
                    }
                }
                _ => {
                    self.now = self.now.max(target);
                    return;
                }
            }
        }
        assert!(
            self.core.is_finished(),
            "timers did not settle (livelock) before {at:?}"
        );
        self.now = self.now.max(target);
    }

    fn outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.core.poll_output()).collect()
    }

    /// Answers dispatched request `id`; the terminal frame, as an output.
    fn reply(&mut self, id: u64, c: Completion) -> Vec<Output> {
        self.core
            .handle_reply(id, c)
            .map(Output::Frame)
            .into_iter()
            .collect()
    }

    fn frame(&mut self, bytes: Vec<u8>) -> Option<Dispatch> {
        self.core.handle_frame(self.now, Bytes::from(bytes))
    }

    fn request<T: minicbor::Encode<()>>(
        &mut self,
        method: &str,
        params: &T,
    ) -> (u64, Option<Dispatch>) {
        let id = self.next_id;
        self.next_id += 1;
        let d = self.frame(encode_request(id, method, params).unwrap());
        (id, d)
    }

    /// Sends `auth` and answers its verification with `verified`.
    fn auth_with(&mut self, verified: Result<Principal, AuthError>) -> u64 {
        let (id, d) = self.request(
            "auth",
            &AuthParams {
                token: "t",
                instance: Some("phone"),
                agent: None,
            },
        );
        assert!(d.is_none());
        let out = self.outputs();
        assert!(
            matches!(&out[..], [Output::Verify { token }] if token == "t"),
            "{out:?}"
        );
        assert!(
            !self.core.wants_read(),
            "no frame is read while auth is verified"
        );
        let wall = self.wall();
        self.core.handle_verified(self.now, wall, verified);
        id
    }

    /// A full successful `auth` for `user` with `exp`; returns the result.
    fn authed(&mut self, user: &str, exp: Option<u64>) -> AuthResult {
        let id = self.auth_with(Ok(principal(user, exp)));
        let out = self.outputs();
        assert!(
            matches!(&out[..], [Output::Register { user: u, instance: Some(i) }] if &**u == user && i == "phone"),
            "{out:?}"
        );
        self.core.handle_registered(self.now, Ok(()));
        let out = self.outputs();
        let [
            Output::RaiseFrameLimit { max_frame_size },
            Output::Response {
                frame,
                label: Label::Auth,
                error: None,
            },
        ] = &out[..]
        else {
            panic!("{out:?}")
        };
        assert_eq!(*max_frame_size, self.core.cfg.limits.max_frame_size);
        assert!(self.core.wants_read());
        let r = response(frame, id);
        r.unwrap().decode().unwrap()
    }

    /// The close the core decided, with its `closing` code if announced.
    fn expect_close(&mut self, code: CloseCode) -> Option<u16> {
        let out = self.outputs();
        let close = out.iter().find_map(|o| match o {
            Output::Close { code, closing } => Some((*code, closing.clone())),
            _ => None,
        });
        let (got, closing) = close.unwrap_or_else(|| panic!("no close in {out:?}"));
        assert_eq!(got, code);
        assert!(self.core.is_closing());
        assert_eq!(closing.is_some(), code.announced(), "{code}");
        closing.map(|f| match decode(&f) {
            Frame::Notification(n) => n.params.decode::<ClosingParams>().unwrap().code,
            other => panic!("{other:?}"),
        })
    }

    fn expect_no_close(&mut self) -> Vec<Output> {
        let out = self.outputs();
        assert!(
            !out.iter().any(|o| matches!(o, Output::Close { .. })),
            "{out:?}"
        );
        assert!(!self.core.is_closing());
        out
    }
}

/// The outcome of the response to `id` in `frame`.
fn response(frame: &Bytes, id: u64) -> Result<RawValue, WireError> {
    match decode(frame) {
        Frame::Response(Response { id: got, outcome }) => {
            assert_eq!(got, id);
            outcome
        }
        other => panic!("not a response: {other:?}"),
    }
}

/// The error code of the only response in `out`.
fn error_of(out: &[Output]) -> ErrorCode {
    let codes: Vec<_> = out
        .iter()
        .filter_map(|o| match o {
            Output::Response { frame, .. } | Output::Frame(frame) => match decode(frame) {
                Frame::Response(r) => Some(r.outcome.unwrap_err().code),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(codes.len(), 1, "{out:?}");
    codes[0].clone()
}

// ---- auth ---------------------------------------------------------------

#[test]
fn the_auth_deadline_closes_4001() {
    let mut h = H::new(|_| {});
    h.run_to(secs(9));
    h.expect_no_close();
    h.run_to(secs(10));
    assert_eq!(h.expect_close(CloseCode::AuthTimeout), Some(4001));
}

#[test]
fn the_auth_deadline_holds_while_a_verification_is_pending() {
    // Item 10: a token sent at 9 s of a 10 s deadline, its JWKS fetch
    // taking 4.6 s, must not be accepted at 13.6 s.
    let mut h = H::new(|_| {});
    h.run_to(secs(9));
    let (_, _) = h.request(
        "auth",
        &AuthParams {
            token: "t",
            instance: None,
            agent: None,
        },
    );
    h.outputs();
    h.run_to(secs(10));
    let out = h.outputs();
    assert!(matches!(out[0], Output::AuthFailure("timeout")), "{out:?}");
    assert!(h.core.is_closing());
    // The verification finishing late changes nothing.
    let wall = h.wall();
    h.core
        .handle_verified(h.now + ms(3600), wall, Ok(principal("alice", None)));
    assert!(h.outputs().is_empty());
    assert!(h.core.principal().is_none());
}

#[test]
fn an_invalid_token_answers_unauthenticated_then_closes_4000() {
    let mut h = H::new(|_| {});
    let id = h.auth_with(Err(AuthError::Invalid(InvalidToken::BadSignature)));
    let out = h.outputs();
    let Output::Response { frame, error, .. } = &out[1] else {
        panic!("{out:?}")
    };
    assert_eq!(error, &Some(ErrorCode::Unauthenticated));
    let e = response(frame, id).unwrap_err();
    assert!(e.message.contains("signature"), "{e}");
    assert!(matches!(out[0], Output::AuthFailure("invalid")));
    assert!(matches!(
        out[2],
        Output::Close {
            code: CloseCode::AuthFailed,
            closing: Some(_)
        }
    ));
}

#[test]
fn unavailable_keys_keep_the_connection_and_the_deadline() {
    let mut h = H::new(|_| {});
    h.run_to(secs(2));
    h.auth_with(Err(AuthError::Unavailable));
    let out = h.expect_no_close();
    assert_eq!(error_of(&out), ErrorCode::Unavailable);
    assert!(h.core.wants_read());
    h.run_to(secs(10));
    h.expect_close(CloseCode::AuthTimeout);
}

#[test]
fn requests_before_auth_are_unauthenticated_and_auth_twice_is_a_conflict() {
    let mut h = H::new(|_| {});
    let (_, d) = h.request("ping", &Empty {});
    assert!(d.is_none());
    assert_eq!(error_of(&h.outputs()), ErrorCode::Unauthenticated);
    let (id, _) = h.request("auth", &5u8);
    let out = h.outputs();
    assert_eq!(error_of(&out), ErrorCode::InvalidParams);
    assert!(
        h.core.wants_read(),
        "bad params do not start a verification"
    );
    let _ = id;
    let r = h.authed("alice", None);
    assert_eq!(r.session, SESSION);
    assert_eq!(r.expires_in_ms, None);
    assert_eq!(r.limits, ServerLimits::DEFAULTS);
    h.request(
        "auth",
        &AuthParams {
            token: "t",
            instance: None,
            agent: None,
        },
    );
    assert_eq!(error_of(&h.outputs()), ErrorCode::Conflict);
    let (_, d) = h.request("no.such", &Empty {});
    assert!(d.is_none());
    let out = h.outputs();
    assert!(matches!(
        out[0],
        Output::Response {
            label: Label::Unknown,
            ..
        }
    ));
    assert_eq!(error_of(&out), ErrorCode::MethodNotFound);
}

#[test]
fn the_per_user_limit_closes_4004_with_a_hint() {
    let mut h = H::new(|_| {});
    h.auth_with(Ok(principal("alice", None)));
    h.outputs();
    h.core
        .handle_registered(h.now, Err(RegisterError::TooManyConnections));
    let out = h.outputs();
    let Some(Output::Close {
        code,
        closing: Some(f),
    }) = out.last()
    else {
        panic!("{out:?}")
    };
    assert_eq!(*code, CloseCode::TooManyConnections);
    let Frame::Notification(n) = decode(f) else {
        panic!()
    };
    let p: ClosingParams = n.params.decode().unwrap();
    assert_eq!(p.retry_after_ms, Some(TOO_MANY_CONNECTIONS_RETRY_MS));
}

#[test]
fn preauth_frames_are_decoded_with_the_preauth_limit_and_raised_after_auth() {
    let mut h = H::new(|c| c.preauth_limits.max_frame_size = 64);
    let (_, d) = h.request("ping", &RawValue::encode(&vec![0u8; 100]).unwrap());
    assert!(d.is_none());
    h.expect_close(CloseCode::MessageTooBig);
    let mut h = H::new(|c| c.preauth_limits.max_frame_size = 64);
    h.authed("alice", None);
    let (_, d) = h.request("ping", &RawValue::encode(&vec![0u8; 100]).unwrap());
    assert!(d.is_some(), "after auth the full frame size applies");
}

// ---- tokens ---------------------------------------------------------------

#[test]
fn expiry_closes_4002_at_exp() {
    let mut h = H::new(|_| {});
    let exp = h.exp_in(secs(600));
    let r = h.authed("alice", Some(exp));
    assert_eq!(r.expires_in_ms, Some(600_000));
    h.run_to(secs(599));
    let out = h.expect_no_close();
    assert_eq!(out.len(), 1, "token.expiring at 540 s: {out:?}");
    h.run_to(secs(600));
    h.expect_close(CloseCode::TokenExpired);
}

#[test]
fn a_token_accepted_under_the_leeway_closes_at_exp_plus_leeway() {
    // Item 3: exp 2 s ago, leeway 5 s: E is 3 s after acceptance.
    let mut h = H::new(|c| c.leeway = secs(5));
    let exp = h.exp_in(Duration::ZERO) - 2;
    let r = h.authed("alice", Some(exp));
    assert_eq!(r.expires_in_ms, Some(3_000), "P5: counted to exp + leeway");
    h.run_to(ms(2_999));
    h.outputs()
        .iter()
        .for_each(|o| assert!(!matches!(o, Output::Close { .. })));
    h.run_to(secs(3));
    h.expect_close(CloseCode::TokenExpired);
}

/// When `token.expiring` is sent after an `auth` with lifetime `life`, and
/// the `expires_in_ms` it carries.
fn expiring_schedule(life: Duration, lead: Duration) -> (Duration, u64) {
    let mut h = H::new(|c| c.token_expiring_lead = lead);
    let exp = h.exp_in(life);
    h.authed("alice", Some(exp));
    for step in 0..=life.as_millis() {
        let at = ms(u64::try_from(step).unwrap());
        h.run_to(at);
        for o in h.outputs() {
            if let Output::Frame(f) = o
                && let Frame::Notification(n) = decode(&f)
                && n.method == "token.expiring"
            {
                let p: TokenExpiringParams = n.params.decode().unwrap();
                return (at, p.expires_in_ms);
            }
        }
    }
    panic!("no token.expiring within {life:?}");
}

#[test]
fn token_expiring_is_sent_when_min_lead_or_a_quarter_remains() {
    // P6: L = 600 s → 60 s before; L = 100 s → 25 s before (L/4).
    assert_eq!(expiring_schedule(secs(600), secs(60)), (secs(540), 60_000));
    assert_eq!(expiring_schedule(secs(100), secs(60)), (secs(75), 25_000));
    assert_eq!(expiring_schedule(secs(8), secs(60)), (secs(6), 2_000));
}

#[test]
fn a_token_with_no_life_left_is_announced_right_after_the_response() {
    let mut h = H::new(|_| {});
    let exp = h.exp_in(Duration::ZERO);
    let r = h.authed("alice", Some(exp));
    assert_eq!(r.expires_in_ms, Some(0));
    h.run_to(Duration::ZERO);
    let out = h.outputs();
    let Output::Frame(f) = &out[0] else {
        panic!("{out:?}")
    };
    let Frame::Notification(n) = decode(f) else {
        panic!()
    };
    assert_eq!(n.method, "token.expiring");
    assert_eq!(
        n.params
            .decode::<TokenExpiringParams>()
            .unwrap()
            .expires_in_ms,
        0
    );
    assert!(matches!(
        out[1],
        Output::Close {
            code: CloseCode::TokenExpired,
            ..
        }
    ));
}

#[test]
fn a_refresh_re_arms_the_timers_and_answers_in_its_turn() {
    let mut h = H::new(|_| {});
    let exp = h.exp_in(secs(60));
    h.authed("alice", Some(exp));
    h.run_to(secs(50));
    h.outputs(); // token.expiring at 45 s
    let (id, d) = h.request("auth.refresh", &AuthRefreshParams { token: "fresh" });
    assert!(d.is_none());
    assert!(matches!(&h.outputs()[..], [Output::Verify { .. }]));
    assert!(
        h.core.wants_read(),
        "P21: a refresh does not block the session"
    );
    // A request meanwhile runs with the old principal.
    let (pid, d) = h.request("ping", &Empty {});
    let d = d.expect("dispatched while the refresh is verified");
    assert_eq!((d.id, d.method), (pid, h.ping));
    assert_eq!(
        h.reply(pid, Completion::Result(Bytes::from_static(&[0xa0])))
            .len(),
        1
    );
    // A second refresh meanwhile is a conflict.
    h.request("auth.refresh", &AuthRefreshParams { token: "again" });
    assert_eq!(error_of(&h.outputs()), ErrorCode::Conflict);
    let wall = h.wall();
    let exp = h.exp_in(secs(3600));
    h.core
        .handle_verified(h.now, wall, Ok(principal("alice", Some(exp))));
    let out = h.outputs();
    let [
        Output::Response {
            frame,
            label: Label::AuthRefresh,
            error: None,
        },
    ] = &out[..]
    else {
        panic!("{out:?}")
    };
    let r: AuthRefreshResult = response(frame, id).unwrap().decode().unwrap();
    assert_eq!(r.expires_in_ms, Some(3_600_000));
    h.run_to(secs(600));
    h.expect_no_close();
}

#[test]
fn a_refresh_for_another_subject_closes_4003() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.request("auth.refresh", &AuthRefreshParams { token: "x" });
    h.outputs();
    let wall = h.wall();
    h.core
        .handle_verified(h.now, wall, Ok(principal("mallory", None)));
    let out = h.outputs();
    assert_eq!(error_of(&out), ErrorCode::Forbidden);
    assert!(matches!(
        out.last(),
        Some(Output::Close {
            code: CloseCode::Forbidden,
            closing: Some(_)
        })
    ));
    // An invalid refresh token does not close.
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.request("auth.refresh", &AuthRefreshParams { token: "x" });
    h.outputs();
    let wall = h.wall();
    h.core
        .handle_verified(h.now, wall, Err(AuthError::Invalid(InvalidToken::Expired)));
    assert_eq!(error_of(&h.expect_no_close()), ErrorCode::Unauthenticated);
}

#[test]
fn an_exp_beyond_a_century_is_refused_even_if_verification_let_it_through() {
    let mut h = H::new(|_| {});
    h.auth_with(Ok(principal("alice", Some(1 << 63))));
    let out = h.outputs();
    assert_eq!(error_of(&out), ErrorCode::Unauthenticated);
    assert!(matches!(
        out.last(),
        Some(Output::Close {
            code: CloseCode::AuthFailed,
            ..
        })
    ));
}

// ---- request checks --------------------------------------------------------

#[test]
fn a_duplicate_in_flight_id_closes_4005_before_rate_limiting() {
    // P1: even with the bucket empty, the duplicate closes (no second
    // terminal frame for an id in flight).
    let mut h = H::new(|c| {
        c.rate_burst = 2;
        c.rate_per_sec = 1;
    });
    h.authed("alice", None);
    let sleep = encode_request(77, "debug.sleep", &Empty {}).unwrap();
    assert!(h.frame(sleep.clone()).is_some());
    assert!(h.frame(sleep).is_none());
    assert_eq!(h.expect_close(CloseCode::ProtocolError), Some(4005));
}

#[test]
fn undecodable_frames_close_4005() {
    let mut h = H::new(|_| {});
    h.frame(vec![0xff]);
    h.expect_close(CloseCode::ProtocolError);
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.frame(vec![0x83, 0x09, 0x00, 0x00]);
    h.expect_close(CloseCode::ProtocolError);
}

#[test]
fn link_faults_close_with_their_codes_unannounced() {
    for (fault, code) in [
        (LinkFault::TooBig, CloseCode::MessageTooBig),
        (LinkFault::Text, CloseCode::UnsupportedData),
        (LinkFault::InvalidUtf8, CloseCode::InvalidPayload),
        (LinkFault::Protocol, CloseCode::WsProtocolError),
    ] {
        let mut h = H::new(|_| {});
        h.authed("alice", None);
        h.core.handle_link_fault(h.now, fault);
        assert_eq!(h.expect_close(code), None, "{code} is not announced");
    }
}

#[test]
fn rate_limit_answers_with_a_hint_then_strikes_close_4007() {
    let mut h = H::new(|c| {
        c.rate_per_sec = 1;
        c.rate_burst = 5;
        c.rate_strikes = 3;
    });
    h.authed("alice", None); // one token
    for _ in 0..4 {
        let (id, d) = h.request("ping", &Empty {});
        assert!(d.is_some());
        assert_eq!(
            h.reply(id, Completion::Result(Bytes::from_static(&[0xa0])))
                .len(),
            1
        );
    }
    h.outputs();
    for _ in 0..3 {
        let (id, _) = h.request("ping", &Empty {});
        let out = h.expect_no_close();
        let Output::Response {
            frame,
            label: Label::RateLimited,
            ..
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        let e = response(frame, id).unwrap_err();
        assert_eq!(e.code, ErrorCode::RateLimited);
        assert!((1..=1001).contains(&e.retry_after_ms.unwrap()));
    }
    h.request("ping", &Empty {});
    assert_eq!(h.expect_close(CloseCode::RateLimited), Some(4007));
}

#[test]
fn a_compliant_client_is_never_rate_limited_across_a_hub_stall() {
    // Item 9 / P19: 100/s exactly, burst 200; the hub stops reading for 7 s
    // and then finds 700 requests; it measured its own 7 s lag.
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let mut refused = 0;
    let send = |h: &mut H, refused: &mut i32| {
        let (id, d) = h.request("ping", &Empty {});
        match d {
            Some(_) => assert!(
                h.core
                    .handle_reply(id, Completion::Result(Bytes::from_static(&[0xa0])))
                    .is_some()
            ),
            None => *refused += 1,
        }
    };
    for i in 0..300u64 {
        h.now = h.t0 + ms(10 * i);
        send(&mut h, &mut refused);
        h.core.handle_read_idle(h.now, Duration::ZERO);
    }
    h.now = h.t0 + secs(10);
    h.core.handle_read_resume(h.now, secs(7));
    for _ in 0..700 {
        send(&mut h, &mut refused);
    }
    h.core.handle_read_idle(h.now, Duration::ZERO);
    assert_eq!(refused, 0);
    h.outputs();
    // The same backlog without a measured lag is a flood after a silence.
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.now = h.t0 + secs(7);
    h.core.handle_read_resume(h.now, Duration::ZERO);
    let mut refused = 0;
    for _ in 0..250 {
        send(&mut h, &mut refused);
    }
    assert_eq!(refused, 50, "the burst of 200, then rate_limited");
}

#[test]
fn every_request_counts_in_flight_sync_ones_included() {
    // Item 2 / P2: with the window full of async requests, a synchronous
    // core method is refused too.
    let mut h = H::new(|c| c.max_in_flight = 2);
    h.authed("alice", None);
    assert!(h.request("debug.sleep", &Empty {}).1.is_some());
    assert!(h.request("debug.sleep", &Empty {}).1.is_some());
    let (_, d) = h.request("ping", &Empty {});
    assert!(d.is_none());
    let out = h.outputs();
    assert!(matches!(out[0], Output::Response { label: Label::Method(m), .. } if m == h.ping));
    assert_eq!(error_of(&out), ErrorCode::TooManyRequests);
    assert_eq!(h.core.in_flight(), 2);
    assert_eq!(
        h.reply(2, Completion::Result(Bytes::from_static(&[0xa0])))
            .len(),
        1
    );
    assert!(h.request("ping", &Empty {}).1.is_some());
}

#[test]
fn in_flight_bytes_are_bounded_including_the_new_request() {
    // [0, id, "debug.sleep", h'00 × 40'] is 57 bytes.
    let mut h = H::new(|c| c.max_in_flight_bytes = 114);
    h.authed("alice", None);
    let pad = RawValue::encode(&minicbor::bytes::ByteVec::from(vec![0u8; 40])).unwrap();
    assert_eq!(encode_request(2, "debug.sleep", &pad).unwrap().len(), 57);
    assert!(h.request("debug.sleep", &pad).1.is_some());
    let (_, d) = h.request("debug.sleep", &pad);
    assert!(d.is_some(), "two 57-byte frames fit in 114");
    let (_, d) = h.request("ping", &Empty {});
    assert!(d.is_none());
    assert_eq!(error_of(&h.outputs()), ErrorCode::TooManyRequests);
}

#[test]
fn cancel_aborts_handlers_in_flight_only() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let (id, d) = h.request("debug.stream", &Empty {});
    assert_eq!(d.unwrap().method, h.stream);
    let cancel = |id| encode_notification("cancel", &CancelParams { id }).unwrap();
    h.frame(cancel(id));
    h.frame(cancel(999));
    h.frame(encode_notification("some.future.thing", &Empty {}).unwrap());
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::Abort { id: a }] if *a == id),
        "{out:?}"
    );
    assert_eq!(
        error_of(&h.reply(id, Completion::Error(RequestError::Cancelled))),
        ErrorCode::Cancelled
    );
}

#[test]
fn streamed_replies_end_with_a_final_chunk_and_oversized_replies_become_internal() {
    let mut h = H::new(|c| c.limits.max_frame_size = 256);
    h.authed("alice", None);
    let (id, _) = h.request("debug.stream", &Empty {});
    let out = h.reply(
        id,
        Completion::Final {
            seq: 3,
            data: Bytes::from_static(&[0xf6]),
        },
    );
    let [Output::Frame(f)] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(
        decode(f),
        Frame::Chunk(plexus_protocol::Chunk {
            id,
            seq: 3,
            fin: true,
            data: RawValue::null()
        })
    );
    // H2: a result that would exceed max_frame_size is never sent.
    let (id, _) = h.request("debug.sleep", &Empty {});
    let big = minicbor::to_vec(minicbor::bytes::ByteVec::from(vec![0u8; 300])).unwrap();
    assert_eq!(
        error_of(&h.reply(id, Completion::Result(Bytes::from(big)))),
        ErrorCode::Internal
    );
}

// ---- keepalive --------------------------------------------------------------

#[test]
fn a_missing_pong_closes_4010_unannounced() {
    let mut h = H::new(|c| c.ping_interval = secs(25));
    h.authed("alice", None);
    h.run_to(secs(25));
    assert!(matches!(&h.outputs()[..], [Output::Ping]));
    h.run_to(secs(34));
    h.core.handle_read_idle(h.now, Duration::ZERO);
    h.expect_no_close();
    h.run_to(secs(35));
    h.core.handle_read_idle(h.now, Duration::ZERO);
    assert_eq!(h.expect_close(CloseCode::KeepaliveTimeout), None);
}

#[test]
fn a_pong_clears_the_deadline_and_pings_continue() {
    let mut h = H::new(|c| c.ping_interval = secs(25));
    h.authed("alice", None);
    for round in 1..=4u64 {
        h.run_to(secs(25 * round));
        assert!(matches!(&h.outputs()[..], [Output::Ping]), "round {round}");
        h.now += secs(1);
        h.core.handle_pong(h.now);
    }
    h.core.handle_read_idle(h.now, Duration::ZERO);
    h.expect_no_close();
}

#[test]
fn the_pong_deadline_waits_for_the_backlog_to_be_read() {
    // P19: the pong sits behind the client's own requests that the hub has
    // not read yet; the deadline passing while that backlog is read is not
    // the client's fault.
    let mut h = H::new(|c| c.ping_interval = secs(25));
    h.authed("alice", None);
    h.run_to(secs(25));
    assert!(matches!(&h.outputs()[..], [Output::Ping]));
    h.core.handle_read_resume(h.now, Duration::ZERO);
    h.run_to(secs(36)); // past the deadline, still reading the backlog
    h.expect_no_close();
    h.core.handle_pong(h.now);
    h.core.handle_read_idle(h.now, Duration::ZERO);
    h.expect_no_close();
    // Without a pong the hard bound closes even while a backlog lasts.
    h.run_to(secs(50));
    let out = h.outputs();
    assert!(matches!(&out[..], [Output::Ping]), "{out:?}");
    h.core.handle_read_resume(h.now, Duration::ZERO);
    h.run_to(secs(70));
    h.expect_close(CloseCode::KeepaliveTimeout);
}

#[test]
fn a_stall_of_the_hub_moves_the_pong_deadline() {
    // The hub is stopped for 30 s right after its ping; the pong is in its
    // socket, behind the client's requests. On resuming it has measured the
    // stall: the deadline (and its hard bound) move by as much.
    let mut h = H::new(|c| c.ping_interval = secs(25));
    h.authed("alice", None);
    h.run_to(secs(25));
    assert!(matches!(&h.outputs()[..], [Output::Ping]));
    h.now = h.t0 + secs(56);
    h.core.handle_read_resume(h.now, secs(30));
    h.core.handle_timeout(h.now);
    h.expect_no_close();
    h.core.handle_pong(h.now);
    h.core.handle_read_idle(h.now, Duration::ZERO);
    h.expect_no_close();
}

#[test]
fn no_keepalive_close_once_another_close_began() {
    // Item 11: a slow consumer with a ping outstanding is closed 4006 once,
    // never again as 4010.
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.run_to(secs(25));
    h.outputs();
    h.core
        .close(h.now, CloseCode::SlowConsumer, "slow consumer".into(), None);
    assert_eq!(h.expect_close(CloseCode::SlowConsumer), None);
    h.run_to(secs(40));
    h.core.handle_read_idle(h.now, Duration::ZERO);
    assert!(h.outputs().is_empty());
}

// ---- closing ------------------------------------------------------------------

#[test]
fn outside_closes_are_announced_with_their_hints() {
    for (code, retry) in [
        (CloseCode::GoingAway, Some(1234)),
        (CloseCode::SessionReplaced, None),
    ] {
        let mut h = H::new(|_| {});
        h.authed("alice", None);
        h.core.close(h.now, code, "bye".into(), retry);
        h.core
            .close(h.now, CloseCode::Normal, "second".into(), None);
        let out = h.outputs();
        assert_eq!(out.len(), 1, "the first decision wins: {out:?}");
        let Output::Close {
            code: got,
            closing: Some(f),
        } = &out[0]
        else {
            panic!("{out:?}")
        };
        assert_eq!(*got, code);
        let Frame::Notification(n) = decode(f) else {
            panic!()
        };
        let p: ClosingParams = n.params.decode().unwrap();
        assert_eq!(
            (p.code, p.reason, p.retry_after_ms),
            (code.as_u16(), "bye", retry)
        );
    }
}

#[test]
fn frames_after_the_close_are_ignored_and_the_linger_is_bounded() {
    let mut h = H::new(|c| c.linger_bytes = 100);
    h.authed("alice", None);
    h.core
        .close(h.now, CloseCode::GoingAway, "bye".into(), None);
    h.outputs();
    assert!(h.core.wants_read(), "lingering reads and discards");
    assert!(h.request("ping", &Empty {}).1.is_none());
    assert!(
        h.outputs().is_empty(),
        "nothing answers a frame after closing"
    );
    // The Close frame may take 2 s to write, then 2 s of linger.
    h.run_to(ms(1_500));
    h.core.handle_close_sent(h.now);
    h.run_to(ms(3_499));
    assert!(!h.core.is_finished());
    h.run_to(ms(3_500));
    assert!(h.core.is_finished());
    // The byte budget ends it sooner.
    let mut h = H::new(|c| c.linger_bytes = 100);
    h.authed("alice", None);
    h.core
        .close(h.now, CloseCode::GoingAway, "bye".into(), None);
    h.core.handle_close_sent(h.now);
    h.core.handle_discarded(60);
    assert!(!h.core.is_finished());
    h.core.handle_discarded(60);
    assert!(h.core.is_finished());
}

#[test]
fn a_slow_consumer_close_may_take_30_s_to_write() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.core
        .close(h.now, CloseCode::SlowConsumer, "slow".into(), None);
    h.run_to(secs(29));
    assert!(!h.core.is_finished());
    h.run_to(secs(30));
    assert!(h.core.is_finished());
}

#[test]
fn a_peer_close_finishes_at_once() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.core.handle_peer_closed(h.now);
    assert!(h.core.is_finished());
    assert!(!h.core.wants_read());
}

// ---- server-initiated requests ---------------------------------------------

#[test]
fn server_requests_have_their_own_ids_and_route_answers() {
    let mut h = H::new(|_| {});
    assert!(
        h.core
            .start_server_request(h.now, "x", &RawValue::null(), secs(1))
            .is_err(),
        "not before auth"
    );
    h.authed("alice", None);
    // The client uses ids 1.. for its own requests; server ids are apart.
    let a = h
        .core
        .start_server_request(h.now, "app.echo", &RawValue::null(), secs(5))
        .unwrap();
    let b = h
        .core
        .start_server_request(h.now, "app.echo", &RawValue::null(), secs(1))
        .unwrap();
    assert_ne!(a, b);
    let out = h.outputs();
    let Output::Frame(f) = &out[0] else { panic!() };
    assert!(matches!(decode(f), Frame::Request(r) if r.id == a && r.method == "app.echo"));
    // The client's answer to `a` (an id that is also in its own space).
    let answer = Frame::Response(Response {
        id: a,
        outcome: Ok(RawValue::encode(&7u8).unwrap()),
    });
    h.frame(answer.to_vec());
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::ClientAnswer { id, answer: ClientAnswer::Result(v) | ClientAnswer::Final(v) }] if *id == a && v.decode::<u8>().unwrap() == 7),
        "{out:?}"
    );
    // Unknown ids are ignored.
    h.frame(answer.to_vec());
    assert!(h.outputs().is_empty());
    // `b` times out: withdrawn with `cancel`.
    h.run_to(secs(1));
    let out = h.outputs();
    let Output::Frame(f) = &out[0] else {
        panic!("{out:?}")
    };
    let Frame::Notification(n) = decode(f) else {
        panic!()
    };
    assert_eq!(
        (
            n.method.as_ref(),
            n.params.decode::<CancelParams>().unwrap().id
        ),
        ("cancel", b)
    );
    assert!(
        matches!(out[1], Output::ClientAnswer { id, answer: ClientAnswer::TimedOut } if id == b)
    );
    // A pending one is answered `Closed` when the connection closes.
    let c = h
        .core
        .start_server_request(h.now, "app.echo", &RawValue::null(), secs(5))
        .unwrap();
    h.outputs();
    h.core
        .close(h.now, CloseCode::GoingAway, "bye".into(), None);
    let out = h.outputs();
    assert!(out.iter().any(
        |o| matches!(o, Output::ClientAnswer { id, answer: ClientAnswer::Closed } if *id == c)
    ));
}

#[test]
fn a_final_chunk_answers_a_server_request() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let id = h
        .core
        .start_server_request(h.now, "x", &RawValue::null(), secs(5))
        .unwrap();
    h.outputs();
    let chunk = |fin| {
        Frame::Chunk(plexus_protocol::Chunk {
            id,
            seq: 0,
            fin,
            data: RawValue::null(),
        })
        .to_vec()
    };
    h.frame(chunk(false));
    assert!(h.outputs().is_empty());
    h.frame(chunk(true));
    assert!(matches!(
        &h.outputs()[..],
        [Output::ClientAnswer {
            answer: ClientAnswer::Final(_),
            ..
        }]
    ));
}

#[test]
fn sync_dispatches_answer_once_and_stale_replies_are_ignored() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let (id, d) = h.request("ping", &Empty {});
    let d = d.unwrap();
    assert_eq!((d.kind, d.method), (Kind::Sync, h.ping));
    assert_eq!(
        h.core.in_flight(),
        0,
        "a sync request is in flight only while it is checked"
    );
    assert_eq!(
        h.reply(id, Completion::Result(Bytes::from_static(&[0xa0])))
            .len(),
        1
    );
    assert!(
        h.reply(id, Completion::Result(Bytes::from_static(&[0xa0])))
            .is_empty()
    );
    let (id, d) = h.request("debug.sleep", &Empty {});
    assert_eq!(d.unwrap().method, h.sleep);
    assert_eq!(
        error_of(&h.reply(id, Completion::Error(RequestError::Timeout))),
        ErrorCode::Timeout
    );
    assert!(
        h.reply(id, Completion::Error(RequestError::Timeout))
            .is_empty()
    );
}

#[test]
fn a_streamed_server_request_passes_chunks_in_order_and_can_be_withdrawn() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let id = h
        .core
        .start_streamed_server_request(h.now, "rpc.invoke", &RawValue::null(), secs(5))
        .unwrap();
    h.outputs();
    let chunk = |seq, fin| {
        Frame::Chunk(plexus_protocol::Chunk {
            id,
            seq,
            fin,
            data: RawValue::null(),
        })
        .to_bytes()
        .to_vec()
    };
    h.frame(chunk(0, false));
    h.frame(chunk(1, false));
    let out = h.outputs();
    assert_eq!(out.len(), 2);
    assert!(
        out.iter()
            .all(|o| matches!(o, Output::ClientChunk { id: i, .. } if *i == id))
    );
    // A gap breaks the stream: withdrawn with a cancel, failed locally.
    h.frame(chunk(3, false));
    let out = h.outputs();
    assert!(
        matches!(&out[0], Output::Frame(f) if matches!(decode(f), Frame::Notification(n) if n.method == "cancel"))
    );
    assert!(matches!(
        &out[1],
        Output::ClientAnswer { answer: ClientAnswer::Error(e), .. } if e.code == ErrorCode::InvalidFrame
    ));
    h.frame(chunk(4, true));
    assert!(h.outputs().is_empty(), "late chunks are ignored");

    // Withdrawn by the hub: a cancel, and nothing more is expected.
    let id2 = h
        .core
        .start_streamed_server_request(h.now, "rpc.invoke", &RawValue::null(), secs(5))
        .unwrap();
    h.outputs();
    assert!(h.core.withdraw_server_request(id2));
    assert!(!h.core.withdraw_server_request(id2));
    let out = h.outputs();
    assert_eq!(out.len(), 1);
}

#[test]
fn a_request_deadline_expires_once_and_goes_with_its_answer() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    let (a, d) = h.request("debug.sleep", &Empty {});
    assert!(d.is_some());
    let (b, _) = h.request("debug.sleep", &Empty {});
    let (c, _) = h.request("debug.sleep", &Empty {});
    let base = h.now - h.t0;
    assert!(h.core.set_deadline(a, h.now + secs(5)));
    assert!(h.core.set_deadline(b, h.now + secs(3)));
    assert!(h.core.set_deadline(c, h.now + secs(4)));
    // A later call moves the deadline; an id not in flight has none.
    assert!(h.core.set_deadline(b, h.now + secs(7)));
    assert!(!h.core.set_deadline(99, h.now + secs(1)));
    h.outputs();
    // c is answered before its deadline: its deadline goes with it.
    assert_eq!(
        h.reply(c, Completion::Result(Bytes::from_static(&[0xa0])))
            .len(),
        1
    );
    assert_eq!(h.core.next_timeout(), Some(h.t0 + base + secs(5)));
    h.run_to(base + secs(6));
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::Expired { id }] if *id == a),
        "{out:?}"
    );
    // Still in flight until answered; it does not expire twice.
    assert_eq!(h.core.in_flight(), 2);
    h.run_to(base + secs(8));
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::Expired { id }] if *id == b),
        "{out:?}"
    );
    h.run_to(base + secs(60));
    assert!(h.outputs().is_empty());
    let frame = h.reply(a, Completion::Error(RequestError::Timeout));
    let [Output::Frame(f)] = &frame[..] else {
        panic!("{frame:?}")
    };
    assert_eq!(response(f, a).unwrap_err().code, ErrorCode::Timeout);
    assert_eq!(h.core.in_flight(), 1);
}

#[test]
fn server_request_deadlines_fire_in_order_and_leave_with_their_answers() {
    let mut h = H::new(|_| {});
    h.authed("alice", None);
    h.outputs();
    let base = h.now - h.t0;
    let ids: Vec<u64> = [3, 1, 2]
        .into_iter()
        .map(|s| {
            h.core
                .start_server_request(h.now, "svc.x", &RawValue::null(), secs(s))
                .unwrap()
        })
        .collect();
    h.outputs();
    // The one due first is answered: the next deadline is the next one's.
    let answer = encode_result(ids[1], &Empty {}).unwrap();
    assert!(h.frame(answer).is_none());
    let out = h.outputs();
    assert!(
        matches!(&out[..], [Output::ClientAnswer { id, answer: ClientAnswer::Result(_) }] if *id == ids[1]),
        "{out:?}"
    );
    assert_eq!(h.core.next_timeout(), Some(h.t0 + base + secs(2)));
    h.run_to(base + secs(10));
    let timed_out: Vec<u64> = h
        .outputs()
        .into_iter()
        .filter_map(|o| match o {
            Output::ClientAnswer {
                id,
                answer: ClientAnswer::TimedOut,
            } => Some(id),
            Output::ClientAnswer { id, .. } => panic!("{id} answered"),
            _ => None,
        })
        .collect();
    assert_eq!(timed_out, vec![ids[2], ids[0]]);
}
