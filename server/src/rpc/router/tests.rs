use std::collections::HashMap;

use super::*;

const LIMITS: Limits = Limits {
    max_queue: 4,
    max_procedures: 8,
    max_registrations_per_conn: 4,
};

type R = Router<ConnId, u64>;

fn router() -> R {
    Router::new(LIMITS, 42)
}

/// Registers one callee per connection 1..=n under `policy`.
fn callees(r: &mut R, policy: Policy, n: u64, conc: usize) -> Vec<RegId> {
    (1..=n)
        .map(|c| {
            r.register(c, c, "svc.a", policy.clone(), conc, Vec::new())
                .unwrap()
        })
        .collect()
}

fn now(r: &mut R, key: Option<&str>) -> (CallId, ConnId) {
    let call = r.next_call_id();
    match r.route(call, "svc.a", key, || call).unwrap() {
        Routed::Now(a) => (call, a.endpoint),
        Routed::Queued => panic!("queued"),
    }
}

/// Routes `n` calls, each finished at once; counts them per callee.
fn distribution(
    r: &mut R,
    n: usize,
    key: impl Fn(usize) -> Option<String>,
) -> HashMap<ConnId, usize> {
    let mut m = HashMap::new();
    for i in 0..n {
        let (call, c) = now(r, key(i).as_deref());
        *m.entry(c).or_default() += 1;
        assert!(r.finish(call).is_empty());
    }
    m
}

#[test]
fn round_robin_takes_turns() {
    let mut r = router();
    callees(&mut r, Policy::RoundRobin, 3, 8);
    let order: Vec<ConnId> = (0..6)
        .map(|_| {
            let (call, c) = now(&mut r, None);
            r.finish(call);
            c
        })
        .collect();
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn first_and_last_spill_over_only_when_full() {
    let mut r = router();
    callees(&mut r, Policy::First, 3, 1);
    assert_eq!(distribution(&mut r, 10, |_| None), HashMap::from([(1, 10)]));
    let (_a, c1) = now(&mut r, None);
    let (_b, c2) = now(&mut r, None);
    assert_eq!((c1, c2), (1, 2), "the first is busy: the next one");

    let mut r = router();
    callees(&mut r, Policy::Last, 3, 1);
    assert_eq!(distribution(&mut r, 10, |_| None), HashMap::from([(3, 10)]));
}

#[test]
fn random_spreads_over_every_callee() {
    let mut r = router();
    callees(&mut r, Policy::Random, 4, 8);
    let d = distribution(&mut r, 4000, |_| None);
    assert_eq!(d.len(), 4);
    for (c, n) in d {
        assert!((800..1200).contains(&n), "callee {c} got {n} of 4000");
    }
}

#[test]
fn least_pending_picks_the_least_busy() {
    let mut r = router();
    callees(&mut r, Policy::LeastPending, 3, 8);
    let (a, c1) = now(&mut r, None);
    let (_b, c2) = now(&mut r, None);
    let (_c, c3) = now(&mut r, None);
    assert_eq!((c1, c2, c3), (1, 2, 3));
    r.finish(a);
    assert_eq!(now(&mut r, None).1, 1, "callee 1 has nothing in flight");
    assert_eq!(now(&mut r, None).1, 1, "ties go to the earliest");
    assert_eq!(now(&mut r, None).1, 2);
}

#[test]
fn affinity_is_stable_and_moves_only_the_keys_of_a_leaving_callee() {
    let mut r = router();
    let regs = callees(&mut r, Policy::Affinity, 4, 8);
    let keys: Vec<String> = (0..400).map(|i| format!("user-{i}")).collect();
    let place = |r: &mut R| -> Vec<ConnId> {
        keys.iter()
            .map(|k| {
                let (call, c) = now(r, Some(k));
                r.finish(call);
                c
            })
            .collect()
    };
    let before = place(&mut r);
    assert_eq!(before, place(&mut r), "the same key, the same callee");
    let mut spread: HashMap<ConnId, usize> = HashMap::new();
    for c in &before {
        *spread.entry(*c).or_default() += 1;
    }
    assert_eq!(spread.len(), 4);
    assert!(spread.values().all(|n| (50..150).contains(n)), "{spread:?}");
    // Callee 2 leaves: only its keys move.
    r.unregister(2, regs[1]).unwrap();
    let after = place(&mut r);
    for (b, a) in before.iter().zip(&after) {
        if *b == 2 {
            assert_ne!(*a, 2);
        } else {
            assert_eq!(a, b);
        }
    }
}

#[test]
fn policies_must_agree_and_single_has_one_callee() {
    let mut r = router();
    r.register(1, 1, "svc.a", Policy::RoundRobin, 1, Vec::new())
        .unwrap();
    assert!(matches!(
        r.register(2, 2, "svc.a", Policy::Random, 1, Vec::new()),
        Err(RouteError::Conflict(_))
    ));
    r.register(1, 1, "svc.b", Policy::Single, 1, Vec::new())
        .unwrap();
    assert!(matches!(
        r.register(2, 2, "svc.b", Policy::Single, 1, Vec::new()),
        Err(RouteError::Conflict(_))
    ));
    assert!(matches!(
        r.register(2, 2, "svc.c", Policy::Unknown("x".into()), 1, Vec::new()),
        Err(RouteError::Conflict(_))
    ));
}

#[test]
fn queue_is_bounded_and_drains_in_order() {
    let mut r = router();
    callees(&mut r, Policy::RoundRobin, 1, 1);
    let (first, _) = now(&mut r, None);
    let mut queued = Vec::new();
    for _ in 0..LIMITS.max_queue {
        let call = r.next_call_id();
        assert_eq!(
            r.route(call, "svc.a", None, || call).unwrap(),
            Routed::Queued
        );
        queued.push(call);
    }
    let call = r.next_call_id();
    assert_eq!(
        r.route(call, "svc.a", None, || call),
        Err(RouteError::QueueFull)
    );
    // Each finished call hands its slot to the oldest queued one.
    let mut done = first;
    for q in queued {
        let h = r.finish(done);
        assert_eq!(h.len(), 1);
        assert_eq!((h[0].call, h[0].waiter), (q, q));
        done = q;
    }
    assert!(r.finish(done).is_empty());
    assert_eq!(r.calls(), 0);
}

#[test]
fn nobody_registered_is_no_callee_and_a_vanished_callee_drops_the_queue() {
    let mut r = router();
    assert_eq!(r.route(1, "svc.a", None, || 1), Err(RouteError::NoCallee));
    callees(&mut r, Policy::Single, 1, 1);
    let (a, _) = now(&mut r, None);
    let q = r.next_call_id();
    assert_eq!(r.route(q, "svc.a", None, || q).unwrap(), Routed::Queued);
    assert!(r.drop_conn(1).is_empty(), "the queued waiter is dropped");
    assert!(!r.has_callee("svc.a"));
    assert!(r.finish(a).is_empty());
    assert_eq!(r.calls(), 0);
    assert_eq!(r.route(9, "svc.a", None, || 9), Err(RouteError::NoCallee));
}

#[test]
fn unregister_keeps_calls_in_flight_and_sends_new_ones_elsewhere() {
    let mut r = router();
    let regs = callees(&mut r, Policy::First, 2, 4);
    let (a, c) = now(&mut r, None);
    assert_eq!(c, 1);
    assert_eq!(
        r.unregister(2, regs[0]),
        Err(RouteError::NotFound),
        "not its own"
    );
    r.unregister(1, regs[0]).unwrap();
    assert_eq!(now(&mut r, None).1, 2);
    // The call in flight at the withdrawn registration still finishes.
    assert!(r.finish(a).is_empty());
    assert_eq!(r.unregister(1, regs[0]), Err(RouteError::NotFound));
}

#[test]
fn a_cancelled_queued_call_leaves_the_queue() {
    let mut r = router();
    callees(&mut r, Policy::RoundRobin, 1, 1);
    let (a, _) = now(&mut r, None);
    let (q1, q2) = (r.next_call_id(), r.next_call_id());
    r.route(q1, "svc.a", None, || q1).unwrap();
    r.route(q2, "svc.a", None, || q2).unwrap();
    assert!(r.finish(q1).is_empty());
    let h = r.finish(a);
    assert_eq!(h.len(), 1);
    assert_eq!(h[0].call, q2);
}

#[test]
fn affinity_queues_per_callee() {
    let mut r = router();
    callees(&mut r, Policy::Affinity, 2, 1);
    // Find two keys that land on different callees.
    let mut by: HashMap<ConnId, String> = HashMap::new();
    for i in 0..100 {
        let k = format!("k{i}");
        let (call, c) = now(&mut r, Some(&k));
        r.finish(call);
        by.entry(c).or_insert(k);
    }
    let (k1, k2) = (by[&1].clone(), by[&2].clone());
    let (busy, _) = now(&mut r, Some(&k1));
    let q = r.next_call_id();
    assert_eq!(
        r.route(q, "svc.a", Some(&k1), || q).unwrap(),
        Routed::Queued
    );
    // A call for the other callee does not wait behind it.
    let (_, c) = now(&mut r, Some(&k2));
    assert_eq!(c, 2);
    let h = r.finish(busy);
    assert_eq!(h[0].call, q);
    assert_eq!(h[0].assignment.endpoint, 1);
}

#[test]
fn bounds_on_registrations_and_procedures() {
    let mut r = router();
    for i in 0..LIMITS.max_registrations_per_conn {
        r.register(1, 1, &format!("p.{i}"), Policy::Single, 1, Vec::new())
            .unwrap();
    }
    assert!(matches!(
        r.register(1, 1, "p.x", Policy::Single, 1, Vec::new()),
        Err(RouteError::TooMany(_))
    ));
    for i in 0..(LIMITS.max_procedures - LIMITS.max_registrations_per_conn) {
        r.register(
            2 + i as u64,
            2,
            &format!("q.{i}"),
            Policy::Single,
            1,
            Vec::new(),
        )
        .unwrap();
    }
    assert!(matches!(
        r.register(99, 99, "z", Policy::Single, 1, Vec::new()),
        Err(RouteError::TooMany(_))
    ));
    let (page, more) = r.snapshot(None, 3);
    assert_eq!(page.len(), 3);
    assert!(more);
    assert_eq!(page[0].procedure, "p.0");
    let (rest, more) = r.snapshot(Some(&page[2].procedure), 100);
    assert_eq!(rest.len(), LIMITS.max_procedures - 3);
    assert!(!more);
}

#[test]
fn inserted_registrations_keep_id_order_and_are_not_duplicated() {
    let mut r = router();
    // Cluster mode: ids come from the shared table, out of order here.
    assert!(r.insert(30, 3, 3, "svc.a", Policy::First, 1, Vec::new()));
    assert!(r.insert(10, 1, 1, "svc.a", Policy::First, 1, Vec::new()));
    assert!(!r.insert(10, 9, 9, "svc.a", Policy::First, 1, Vec::new()));
    // Another policy is refused.
    assert!(!r.insert(40, 4, 4, "svc.a", Policy::Last, 1, Vec::new()));
    // `first` is the lowest id, whatever the order of insertion.
    let (call, c) = now(&mut r, None);
    assert_eq!(c, 1);
    let (_, c2) = now(&mut r, None);
    assert_eq!(c2, 3);
    r.finish(call);
    // A fresh local id never collides with an inserted one.
    let reg = r
        .register(5, 5, "svc.b", Policy::Single, 1, Vec::new())
        .unwrap();
    assert!(reg > 30);
}

#[test]
fn an_inserted_callee_takes_queued_calls() {
    let mut r = router();
    callees(&mut r, Policy::RoundRobin, 1, 1);
    let (_busy, _) = now(&mut r, None);
    let call = r.next_call_id();
    assert_eq!(
        r.route(call, "svc.a", None, || call).unwrap(),
        Routed::Queued
    );
    assert!(r.insert(100, 7, 7, "svc.a", Policy::RoundRobin, 1, Vec::new()));
    let out = r.take_pumped();
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].call, out[0].assignment.endpoint), (call, 7));
    assert!(r.take_pumped().is_empty());
}

#[test]
fn take_goes_past_the_bound_and_remove_withdraws_any_registration() {
    let mut r = router();
    let regs = callees(&mut r, Policy::First, 1, 1);
    let (_a, _) = now(&mut r, None);
    // A call another node routed here takes a slot past the bound...
    let remote = r.next_call_id();
    let a = r.take(remote, regs[0]).unwrap();
    assert_eq!(a.endpoint, 1);
    // ...so local calls queue behind it.
    let call = r.next_call_id();
    assert_eq!(
        r.route(call, "svc.a", None, || call).unwrap(),
        Routed::Queued
    );
    let other = r.next_call_id();
    assert_eq!(r.take(other, 999), None);
    assert_eq!(r.registrations_of(1), regs);
    // Removing the last callee drops the queued call (its waiter: no_callee).
    assert!(r.remove(regs[0]).is_empty());
    assert!(!r.has_callee("svc.a"));
    assert!(r.registrations_of(1).is_empty());
}
