//! §25: routed RPC — `rpc.register`, `rpc.call` routed to a callee as the
//! server's `rpc.invoke`, the attested caller, progressive results,
//! cancellation forwarded, the call's deadline, `no_callee`,
//! `callee_lost`, policies that must agree, and the `rpc_register` /
//! `rpc_call` capabilities.
//!
//! The runner plays both the caller and the callee. A server that does not
//! serve routed RPC (it answers `method_not_found`) skips these cases.

use std::time::Duration;

use serde_json::json;

use crate::cbor::Value;
use crate::check::CaseResult;
use crate::conn::Conn;
use crate::frame::{self, ErrorObject, Frame, Item};
use crate::runner::{Case, Ctx};
use crate::{ensure, ensure_eq, fail, skip};

use super::util::{call_paced, cancel};

/// How long the runner waits for a relayed frame.
const WAIT: Duration = Duration::from_secs(5);

/// Claims with only these routed-RPC capabilities.
fn rpc_claims(ctx: &Ctx, tag: &str, register: &[&str], call: &[&str]) -> serde_json::Value {
    let mut c = ctx.claims(&ctx.user(tag));
    c["plexus"] = json!({"rpc_register": register, "rpc_call": call});
    c
}

/// A callee and a caller allowed everything under the case's namespace.
async fn pair(ctx: &Ctx) -> CaseResult<(Conn, Conn)> {
    let all = format!("{}.>", ctx.ns());
    let callee = ctx
        .client_with(&rpc_claims(ctx, "callee", &[&all], &[]))
        .await?;
    let caller = ctx
        .client_with(&rpc_claims(ctx, "caller", &[], &[&all]))
        .await?;
    Ok((callee, caller))
}

/// Calls an rpc method; a server that does not know it skips the case.
async fn call(c: &mut Conn, method: &str, params: &Value) -> CaseResult<Result<Item, ErrorObject>> {
    match call_paced(c, method, params).await? {
        Err(e) if e.code == "method_not_found" => {
            skip!("the server does not serve {method} (answered method_not_found, §25)")
        }
        other => Ok(other),
    }
}

fn register_params(procedure: &str, policy: Option<&str>) -> Value {
    let mut m = vec![(0, Value::text(procedure))];
    if let Some(p) = policy {
        m.push((1, Value::text(p)));
    }
    Value::map(m)
}

/// Registers and returns the registration id.
async fn register(c: &mut Conn, procedure: &str, policy: Option<&str>) -> CaseResult<u64> {
    match call(c, "rpc.register", &register_params(procedure, policy)).await? {
        Ok(r) => match r.value.get(0).and_then(Value::as_u64) {
            Some(reg) => Ok(reg),
            None => fail!(
                "rpc.register result {} has no registration (§25.3)",
                r.value
            ),
        },
        Err(e) => fail!("rpc.register answered {} ({})", e.code, e.message),
    }
}

/// Expects the error `code` for `method`.
async fn refused(c: &mut Conn, method: &str, params: &Value, code: &str) -> CaseResult {
    match call(c, method, params).await? {
        Ok(r) => fail!(
            "{method} {params} succeeded with {}; expected {code}",
            r.value
        ),
        Err(e) if e.code == code => Ok(()),
        Err(e) => fail!(
            "{method} {params} answered {} ({}); expected {code}",
            e.code,
            e.message
        ),
    }
}

fn call_params(procedure: &str, args: Option<Value>, timeout_ms: Option<u64>) -> Value {
    let mut m = vec![(0, Value::text(procedure))];
    if let Some(a) = args {
        m.push((1, a));
    }
    if let Some(t) = timeout_ms {
        m.push((2, Value::Uint(t)));
    }
    Value::map(m)
}

/// The next `rpc.invoke` the callee receives: its request id and params.
async fn invocation(c: &mut Conn) -> CaseResult<(u64, Value)> {
    c.wait_for(WAIT, "an rpc.invoke request (§25.6)", |f| match f {
        Frame::Request { id, method, params } if method == "rpc.invoke" => {
            Some((*id, params.value.clone()))
        }
        _ => None,
    })
    .await
}

/// The next `cancel` the server sends: the id it withdraws.
async fn withdrawn(c: &mut Conn) -> CaseResult<u64> {
    let n = c.notification("cancel", WAIT).await?;
    match n.value.get(0).and_then(Value::as_u64) {
        Some(id) => Ok(id),
        None => fail!("a cancel without an id: {}", n.value),
    }
}

pub(crate) fn cases() -> Vec<Case> {
    vec![
        Case::new(
            "rpc.no-callee",
            "25.5, 25.9",
            "a call of a procedure nobody registered is answered no_callee at once",
            |ctx| async move {
                let (_callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.nobody", ctx.ns());
                refused(
                    &mut caller,
                    "rpc.call",
                    &call_params(&p, None, None),
                    "no_callee",
                )
                .await
            },
        ),
        Case::new(
            "rpc.round-trip",
            "25.5, 25.6",
            "a call reaches the callee as rpc.invoke with the params, the deadline and the attested caller; its result comes back unchanged",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.echo", ctx.ns());
                let reg = register(&mut callee, &p, None).await?;
                let id = caller
                    .request(
                        "rpc.call",
                        &call_params(&p, Some(Value::text("hi")), Some(5000)),
                    )
                    .await?;
                let (inv, params) = invocation(&mut callee).await?;
                ensure_eq!(
                    params.get(1).and_then(Value::as_u64),
                    Some(reg),
                    "registration"
                );
                ensure_eq!(
                    params.get(2).and_then(Value::as_str),
                    Some(p.as_str()),
                    "procedure"
                );
                ensure_eq!(params.get(3).and_then(Value::as_str), Some("hi"), "params");
                let deadline = params.get(4).and_then(Value::as_u64).unwrap_or(u64::MAX);
                ensure!(
                    deadline <= 5000,
                    "deadline_ms {deadline} exceeds the call's 5000"
                );
                let sub = params.get(5).and_then(|c| c.get(0)).and_then(Value::as_str);
                ensure_eq!(
                    sub,
                    Some(ctx.user("caller").as_str()),
                    "the attested caller"
                );
                ensure!(
                    params.get(6).and_then(Value::as_u64).is_some(),
                    "rpc.invoke has a window (§25.6)"
                );
                callee
                    .send(&frame::response_ok(inv, &Value::text("hi back")))
                    .await?;
                match caller.response(id, WAIT).await? {
                    Ok(r) => ensure_eq!(r.value.as_str(), Some("hi back"), "the relayed result"),
                    Err(e) => fail!("the call answered {} ({})", e.code, e.message),
                }
                Ok(())
            },
        ),
        Case::new(
            "rpc.progressive",
            "25.5, 25.7, 7.2",
            "a callee's chunks reach the caller in order under the caller's id, then its final chunk",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.stream", ctx.ns());
                register(&mut callee, &p, None).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, None, None))
                    .await?;
                let (inv, _) = invocation(&mut callee).await?;
                for seq in 0..3 {
                    callee
                        .send(&frame::chunk(inv, seq, false, &Value::Uint(seq * 10)))
                        .await?;
                }
                callee
                    .send(&frame::chunk(inv, 3, true, &Value::text("done")))
                    .await?;
                for want in 0..4u64 {
                    let (seq, fin, data) = caller
                        .wait_for(WAIT, "a relayed chunk", |f| match f {
                            Frame::Chunk {
                                id: i,
                                seq,
                                fin,
                                data,
                            } if *i == id => Some((*seq, *fin, data.value.clone())),
                            _ => None,
                        })
                        .await?;
                    ensure_eq!(seq, want, "chunk seq");
                    ensure_eq!(fin, want == 3, "final flag");
                    if want < 3 {
                        ensure_eq!(data.as_u64(), Some(want * 10), "chunk data");
                    } else {
                        ensure_eq!(data.as_str(), Some("done"), "final data");
                    }
                }
                Ok(())
            },
        ),
        Case::new(
            "rpc.cancel-forwarded",
            "25.5, 8",
            "a caller's cancel answers cancelled and withdraws the invocation at the callee",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.slow", ctx.ns());
                register(&mut callee, &p, None).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, None, None))
                    .await?;
                let (inv, _) = invocation(&mut callee).await?;
                caller.notify("cancel", &cancel(id)).await?;
                match caller.response(id, WAIT).await? {
                    Err(e) => ensure_eq!(e.code.as_str(), "cancelled", "the answer"),
                    Ok(r) => fail!("a cancelled call succeeded with {}", r.value),
                }
                ensure_eq!(
                    withdrawn(&mut callee).await?,
                    inv,
                    "the withdrawn invocation"
                );
                Ok(())
            },
        ),
        Case::new(
            "rpc.deadline",
            "25.5, 25.6",
            "the server answers timeout at the call's deadline and withdraws the invocation",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.late", ctx.ns());
                register(&mut callee, &p, None).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, None, Some(200)))
                    .await?;
                let (inv, _) = invocation(&mut callee).await?;
                match caller.response(id, WAIT).await? {
                    Err(e) => ensure_eq!(e.code.as_str(), "timeout", "the answer"),
                    Ok(r) => fail!("an unanswered call succeeded with {}", r.value),
                }
                ensure_eq!(
                    withdrawn(&mut callee).await?,
                    inv,
                    "the withdrawn invocation"
                );
                Ok(())
            },
        ),
        Case::new(
            "rpc.callee-lost",
            "25.1, 25.5",
            "a callee that disconnects mid-call fails the call with callee_lost, and its registration is gone",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.gone", ctx.ns());
                register(&mut callee, &p, None).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, None, None))
                    .await?;
                invocation(&mut callee).await?;
                drop(callee);
                match caller.response(id, WAIT).await? {
                    Err(e) => ensure_eq!(e.code.as_str(), "callee_lost", "the answer"),
                    Ok(r) => fail!("a call whose callee left succeeded with {}", r.value),
                }
                refused(
                    &mut caller,
                    "rpc.call",
                    &call_params(&p, None, None),
                    "no_callee",
                )
                .await
            },
        ),
        Case::new(
            "rpc.policy-conflict",
            "25.2, 25.3",
            "a second callee of a single procedure, or one with another policy, is a conflict",
            |ctx| async move {
                let all = format!("{}.>", ctx.ns());
                let mut a = ctx
                    .client_with(&rpc_claims(&ctx, "a", &[&all], &[]))
                    .await?;
                let mut b = ctx
                    .client_with(&rpc_claims(&ctx, "b", &[&all], &[]))
                    .await?;
                let single = format!("{}.single", ctx.ns());
                register(&mut a, &single, None).await?;
                refused(
                    &mut b,
                    "rpc.register",
                    &register_params(&single, None),
                    "conflict",
                )
                .await?;
                let rr = format!("{}.shared", ctx.ns());
                register(&mut a, &rr, Some("round_robin")).await?;
                register(&mut b, &rr, Some("round_robin")).await?;
                refused(
                    &mut b,
                    "rpc.register",
                    &register_params(&rr, Some("random")),
                    "conflict",
                )
                .await
            },
        ),
        Case::new(
            "rpc.unregister",
            "25.4",
            "after rpc.unregister the procedure has no callee, and the registration is not_found",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.bye", ctx.ns());
                let reg = register(&mut callee, &p, None).await?;
                let params = Value::map([(0, Value::Uint(reg))]);
                match call(&mut callee, "rpc.unregister", &params).await? {
                    Ok(_) => {}
                    Err(e) => fail!("rpc.unregister answered {} ({})", e.code, e.message),
                }
                refused(
                    &mut caller,
                    "rpc.call",
                    &call_params(&p, None, None),
                    "no_callee",
                )
                .await?;
                refused(&mut callee, "rpc.unregister", &params, "not_found").await
            },
        ),
        Case::new(
            "rpc.caller-leaves-mid-stream",
            "25.5, 25.7",
            "a caller that disconnects while its call streams withdraws the invocation at the callee",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.leaving", ctx.ns());
                register(&mut callee, &p, None).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, None, None))
                    .await?;
                let (inv, _) = invocation(&mut callee).await?;
                callee
                    .send(&frame::chunk(inv, 0, false, &Value::Uint(1)))
                    .await?;
                caller
                    .wait_for(WAIT, "the relayed chunk", |f| match f {
                        Frame::Chunk { id: i, .. } if *i == id => Some(()),
                        _ => None,
                    })
                    .await?;
                drop(caller);
                ensure_eq!(
                    withdrawn(&mut callee).await?,
                    inv,
                    "the invocation withdrawn when its caller left"
                );
                Ok(())
            },
        ),
        Case::new(
            "rpc.unregister-in-flight",
            "25.4, 25.2",
            "a call in flight when its callee unregisters is still answered; later calls find no callee; the procedure may then be registered under another policy",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.draining", ctx.ns());
                let reg = register(&mut callee, &p, Some("round_robin")).await?;
                let id = caller
                    .request("rpc.call", &call_params(&p, Some(Value::Uint(7)), None))
                    .await?;
                let (inv, _) = invocation(&mut callee).await?;
                let params = Value::map([(0, Value::Uint(reg))]);
                match call(&mut callee, "rpc.unregister", &params).await? {
                    Ok(_) => {}
                    Err(e) => fail!("rpc.unregister answered {} ({})", e.code, e.message),
                }
                callee
                    .send(&frame::response_ok(inv, &Value::Uint(8)))
                    .await?;
                match caller.response(id, WAIT).await? {
                    Ok(r) => ensure_eq!(r.value.as_u64(), Some(8), "the in-flight call's answer"),
                    Err(e) => fail!("the in-flight call answered {} ({})", e.code, e.message),
                }
                refused(
                    &mut caller,
                    "rpc.call",
                    &call_params(&p, None, None),
                    "no_callee",
                )
                .await?;
                register(&mut callee, &p, Some("random")).await?;
                Ok(())
            },
        ),
        Case::new(
            "rpc.list",
            "25.8, 25.1",
            "rpc.list needs rpc_admin and shows a registered procedure with its callee",
            |ctx| async move {
                let (mut callee, mut caller) = pair(&ctx).await?;
                let p = format!("{}.listed", ctx.ns());
                let reg = register(&mut callee, &p, Some("least_pending")).await?;
                refused(&mut caller, "rpc.list", &Value::empty_map(), "forbidden").await?;
                let mut admin = ctx.claims(&ctx.user("admin"));
                admin["plexus"] = json!({"rpc_admin": true});
                let mut op = ctx.client_with(&admin).await?;
                // Page through until the case's procedure (other runs may
                // have procedures too).
                let mut after: Option<String> = None;
                for _ in 0..1000 {
                    let mut m = vec![(1, Value::Uint(100))];
                    if let Some(a) = &after {
                        m.push((0, Value::text(a.clone())));
                    }
                    let r = match call(&mut op, "rpc.list", &Value::map(m)).await? {
                        Ok(r) => r.value,
                        Err(e) => fail!("rpc.list answered {} ({})", e.code, e.message),
                    };
                    let procs = r.get(0).and_then(Value::as_array).unwrap_or_default();
                    if let Some(info) = procs
                        .iter()
                        .find(|x| x.get(0).and_then(Value::as_str) == Some(p.as_str()))
                    {
                        ensure_eq!(
                            info.get(1).and_then(Value::as_str),
                            Some("least_pending"),
                            "policy"
                        );
                        let callees = info.get(2).and_then(Value::as_array).unwrap_or_default();
                        ensure!(
                            callees
                                .iter()
                                .any(|c| c.get(0).and_then(Value::as_u64) == Some(reg)),
                            "the registration is listed"
                        );
                        return Ok(());
                    }
                    match r.opt(1).and_then(Value::as_str) {
                        Some(n) => after = Some(n.to_owned()),
                        None => fail!("rpc.list does not show {p}"),
                    }
                }
                fail!("rpc.list paged 1000 times without the end")
            },
        ),
        Case::new(
            "rpc.capabilities",
            "25.1, 9.3",
            "registering needs rpc_register and calling rpc_call; neither implies the other",
            |ctx| async move {
                let all = format!("{}.>", ctx.ns());
                let p = format!("{}.cap", ctx.ns());
                let mut callee = ctx
                    .client_with(&rpc_claims(&ctx, "callee", &[&all], &[]))
                    .await?;
                let mut caller = ctx
                    .client_with(&rpc_claims(&ctx, "caller", &[], &[&all]))
                    .await?;
                refused(
                    &mut caller,
                    "rpc.register",
                    &register_params(&p, None),
                    "forbidden",
                )
                .await?;
                register(&mut callee, &p, None).await?;
                refused(
                    &mut callee,
                    "rpc.call",
                    &call_params(&p, None, None),
                    "forbidden",
                )
                .await
            },
        ),
    ]
}
