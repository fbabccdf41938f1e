//! Routed RPC in the core, on the virtual clock: registrations sent on
//! connect and renewed after a reconnect (retrying a `conflict`),
//! invocations bounded per registration, credit, cancel, drops.

use plexus_protocol::methods::rpc::{
    Caller, CreditParams, InvokeParams, RegisterParams, RegisterResult, UnregisterParams,
};
use tokio::sync::watch;

use super::*;
use crate::core::rpc::RENEW_RETRY;

fn handler() -> RpcHandler {
    RpcHandler::Unary(Arc::new(|_inv| async { Ok(RawValue::default()) }.boxed()))
}

fn spec(max_concurrency: u64) -> RegSpec {
    RegSpec {
        procedure: "svc.x".into(),
        policy: None,
        max_concurrency,
        disclose_caller: vec!["email".into()],
    }
}

impl Hub {
    fn register(
        &mut self,
        local: u64,
        max_concurrency: u64,
    ) -> (watch::Receiver<Option<u64>>, ReplyRx<Result<(), Error>>) {
        let (status, status_rx) = watch::channel(None);
        let (tx, rx) = reply();
        self.core.handle_command(
            self.now,
            Command::Register {
                local,
                spec: spec(max_concurrency),
                handler: handler(),
                status,
                reply: tx,
            },
        );
        (status_rx, rx)
    }

    fn invoke(&mut self, id: u64, registration: u64, call: u64, window: u64) {
        let params = RawValue::encode(&1u8).unwrap();
        let p = InvokeParams::new(
            call,
            registration,
            "svc.x",
            params.as_raw_ref(),
            1_000,
            Caller::new("carol"),
            window,
        );
        self.feed(encode_request(id, "rpc.invoke", &p).unwrap());
    }

    /// The error answers written, as (id, code).
    fn errors(&mut self) -> Vec<(u64, ErrorCode)> {
        self.out()
            .into_iter()
            .filter_map(|o| match o {
                Out::Frame(Frame::Response(r)) => r.outcome.err().map(|e| (r.id, e.code)),
                _ => None,
            })
            .collect()
    }
}

fn invoked(actions: Vec<Action>) -> Option<(u64, Arc<Credit>, crate::rpc::Invocation)> {
    actions.into_iter().find_map(|a| match a {
        Action::Invoke {
            serial,
            credit,
            invocation,
            ..
        } => Some((serial, credit, invocation)),
        _ => None,
    })
}

#[test]
fn registrations_are_renewed_after_a_reconnect_and_invocations_bounded_per_registration() {
    let mut hub = Hub::new();
    hub.connect();
    let (status, mut rx) = hub.register(1, 1);
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "rpc.register");
    let p: RegisterParams = reqs[0].params.decode().unwrap();
    assert_eq!(p.procedure, "svc.x");
    assert_eq!(p.max_concurrency, Some(1), "always sent");
    assert_eq!(p.disclose_caller, Some(vec!["email"]));
    hub.respond(reqs[0].id, &RegisterResult::new(7));
    assert_eq!(ready(&mut rx), Some(Ok(())));
    assert_eq!(*status.borrow(), Some(7));

    // One invocation runs; a second one at max_concurrency 1 is refused.
    hub.invoke(100, 7, 9, 2);
    let (serial, credit, inv) = invoked(hub.actions()).expect("an invocation");
    assert_eq!(
        (inv.call, inv.registration, inv.caller.sub.as_str()),
        (9, 7, "carol")
    );
    assert_eq!(inv.deadline, hub.now + Duration::from_millis(1_000));
    assert_eq!(credit.left(), 2, "the window");
    hub.invoke(101, 7, 10, 2);
    assert_eq!(hub.errors(), vec![(101, ErrorCode::TooManyRequests)]);
    // Credit goes to its invocation.
    hub.notify("rpc.credit", &CreditParams::new(9, 3));
    hub.notify("rpc.credit", &CreditParams::new(77, 3));
    assert_eq!(credit.left(), 5);
    // The hub's cancel aborts it, answers `cancelled` and frees the slot.
    hub.notify("cancel", &CancelParams { id: 100 });
    assert!(
        hub.actions()
            .iter()
            .any(|a| matches!(a, Action::Abort(s) if *s == serial))
    );
    assert_eq!(hub.errors(), vec![(100, ErrorCode::Cancelled)]);
    hub.invoke(102, 7, 11, 2);
    let (serial, ..) = invoked(hub.actions()).expect("admitted again");
    // Its answer frees the slot too.
    hub.core
        .handle_served(serial, Output::Done(Ok(RawValue::default())));
    hub.out();
    hub.invoke(103, 7, 12, 2);
    assert!(invoked(hub.actions()).is_some());
    // A registration this client does not hold: no_callee.
    hub.invoke(104, 99, 13, 2);
    assert_eq!(hub.errors(), vec![(104, ErrorCode::NoCallee)]);

    // The connection drops: the registration waits, then is sent again.
    hub.drop_connection();
    assert_eq!(*status.borrow(), None);
    hub.advance_to_deadline();
    hub.connect();
    let reqs = hub.requests();
    let renew: Vec<_> = reqs.iter().filter(|r| r.method == "rpc.register").collect();
    assert_eq!(renew.len(), 1);
    // The hub has not seen the old session end yet: conflict, retried.
    hub.feed(encode_error(
        renew[0].id,
        &WireError::new(ErrorCode::Conflict, "single"),
    ));
    assert!(hub.requests().is_empty(), "not at once");
    assert_eq!(hub.advance_to_deadline(), RENEW_RETRY);
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "rpc.register");
    hub.respond(reqs[0].id, &RegisterResult::new(8));
    assert_eq!(*status.borrow(), Some(8));
}

#[test]
fn a_dropped_registration_is_unregistered_even_while_its_register_is_in_flight() {
    let mut hub = Hub::new();
    hub.connect();
    let (_status, mut rx) = hub.register(1, 4);
    let reqs = hub.requests();
    hub.core.handle_dropped(hub.now, Dropped::Registration(1));
    hub.respond(reqs[0].id, &RegisterResult::new(7));
    assert_eq!(ready(&mut rx), None, "nobody waits any more");
    let reqs = hub.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "rpc.unregister");
    let p: UnregisterParams = reqs[0].params.decode().unwrap();
    assert_eq!(p.registration, 7);

    let (_status, mut rx) = hub.register(2, 4);
    let reqs = hub.requests();
    hub.respond(reqs[0].id, &RegisterResult::new(8));
    assert_eq!(ready(&mut rx), Some(Ok(())));
    hub.core.handle_dropped(hub.now, Dropped::Registration(2));
    let reqs = hub.requests();
    assert_eq!(reqs[0].method, "rpc.unregister");
    assert_eq!(
        reqs[0]
            .params
            .decode::<UnregisterParams>()
            .unwrap()
            .registration,
        8
    );
    // A refused first registration is the caller's error, and not renewed.
    let (_status, mut rx) = hub.register(3, 4);
    let reqs = hub.requests();
    hub.feed(encode_error(
        reqs[0].id,
        &WireError::new(ErrorCode::Forbidden, "no"),
    ));
    assert!(
        matches!(ready(&mut rx), Some(Err(Error::Remote(e))) if e.code == ErrorCode::Forbidden)
    );
    hub.drop_connection();
    hub.advance_to_deadline();
    hub.connect();
    assert!(hub.requests().iter().all(|r| r.method != "rpc.register"));
}

#[test]
fn a_full_paced_stream_pauses_reading_until_its_consumer_takes_a_chunk() {
    let mut hub = Hub::new();
    hub.connect();
    let reaper = Arc::new(crate::deliver::Reaper::default());
    let queue = Arc::new(ChunkQueue::paced(2, reaper));
    let id = hub.ids.fetch_add(1, Ordering::Relaxed);
    hub.core.handle_command(
        hub.now,
        Command::Call {
            id,
            frame: encode_request(id, "rpc.call", &Empty {}).unwrap().into(),
            pending: Pending::Stream {
                queue: queue.clone(),
                next_seq: 0,
            },
        },
    );
    hub.out();
    let one = RawValue::encode(&1u8).unwrap();
    hub.feed(encode_chunk(id, 0, false, &one).unwrap());
    assert!(hub.core.wants_read());
    hub.feed(encode_chunk(id, 1, false, &one).unwrap());
    assert!(!hub.core.wants_read(), "full: the hub and the callee wait");
    let waker = futures_util::task::noop_waker();
    let mut cx = std::task::Context::from_waker(&waker);
    assert!(queue.poll_next(&mut cx).is_ready());
    assert!(hub.core.wants_read());
    hub.feed(encode_chunk(id, 2, true, &one).unwrap());
    assert!(hub.core.wants_read(), "an ended stream never holds reads");
}
