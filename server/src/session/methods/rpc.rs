//! The routed-RPC methods (issue 12): `rpc.register`, `rpc.unregister`,
//! `rpc.call` and `rpc.list`, over the hub's [`Rpc`](crate::rpc::Rpc)
//! router.
//!
//! - `rpc.register` / `rpc.unregister` / `rpc.list`: synchronous, the
//!   router's lock held only for the change.
//! - `rpc.call`: routed in its synchronous part (so `no_callee` and a full
//!   queue are answered at once, R4); the session's relay
//!   (`session::relay`, R14) then invokes the callee with a
//!   [`Command::Invoke`](crate::conn::Command::Invoke) (at once, or when a
//!   queued call gets its slot), relays the callee's chunks with credit
//!   (R7) and answers with the callee's answer. The call's deadline is the
//!   request's deadline in the session core (R9); the relay withdraws the
//!   invocation and frees the slot however the call ends (answered,
//!   cancelled, timed out, its caller gone).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use plexus_protocol::methods::Empty;
use plexus_protocol::methods::rpc::{
    CallParams, CalleeInfo, Caller, InvokeParams, List, ListParams, ListResult, Policy,
    ProcedureInfo, Register, RegisterParams, RegisterResult, Unregister, UnregisterParams,
};
use plexus_protocol::topic::Topic;
use plexus_protocol::{RawRef, RawValue, RpcMethod, duration_ms};

use super::topic_error;
use crate::conn::ReplyTo;
use crate::rpc::{Assignment, CallId, Endpoint, RouteError, Routed};
use crate::session::context::Ctx;
use crate::session::error::{RequestError, params};
use crate::session::registry::{Meta, Registry};
use crate::session::relay::{RoutedStart, Target};

/// Longest claim name a registration may ask to be disclosed, in bytes.
pub const MAX_CLAIM_NAME_LEN: usize = 64;

/// Deepest JSON nesting of a disclosed claim; deeper values are sent as
/// `null`, so an invocation never nests past the frame depth limit.
pub const MAX_CLAIM_DEPTH: usize = 8;

/// Registers the methods.
pub fn register(r: &mut Registry) {
    r.sync::<Register, _>(Meta::default(), register_procedure);
    r.sync::<Unregister, _>(Meta::default(), unregister);
    r.sync::<List, _>(Meta::default(), list);
    // The call's own deadline bounds it, not `request-timeout`.
    r.routed(
        plexus_protocol::methods::rpc::Call::NAME,
        Meta::default().without_timeout(),
        call,
    );
}

/// A router refusal as the request's error (the one mapping of routed RPC).
pub fn route_error(e: RouteError) -> RequestError {
    match e {
        RouteError::NoCallee => RequestError::NoCallee,
        RouteError::QueueFull => {
            RequestError::TooManyRequests("the procedure's callees are busy".into())
        }
        RouteError::Conflict(m) => RequestError::Conflict(m.into()),
        RouteError::TooMany(m) => RequestError::TooManyRequests(m.into()),
        RouteError::NotFound => RequestError::NotFound("no such registration".into()),
    }
}

fn procedure(ctx: &Ctx<'_>, name: &str) -> Result<Topic, RequestError> {
    Topic::parse(name, ctx.config().max_topic_len).map_err(|e| topic_error("procedure", e))
}

/// Cluster mode: `rpc.register` goes through the cluster's directory
/// (`crate::cluster::rpc`), so it is asynchronous.
pub fn register_clustered(r: &mut Registry) {
    r.asynchronous::<Register, _>(Meta::default(), register_clustered_procedure);
}

/// A checked registration: procedure, policy, concurrency, claims.
struct Checked {
    topic: Topic,
    policy: Policy,
    concurrency: usize,
    disclose: Vec<Box<str>>,
}

fn register_clustered_procedure(
    ctx: &mut Ctx<'_>,
    p: RegisterParams<'_>,
) -> Result<
    futures_util::future::BoxFuture<'static, Result<RegisterResult, RequestError>>,
    RequestError,
> {
    let c = check_register(ctx, p)?;
    let hub = ctx.hub().clone();
    let conn = ctx.conn().clone();
    Ok(Box::pin(async move {
        let Some(rpc) = hub.cluster.get().and_then(|c| c.rpc()).cloned() else {
            return Err(RequestError::Unavailable {
                message: "the cluster's directory is not ready".into(),
                retry_after_ms: Some(crate::cluster::LINK_RETRY_AFTER_MS),
            });
        };
        let reg = rpc
            .register(
                &hub,
                &conn,
                c.topic.as_str(),
                c.policy,
                c.concurrency,
                c.disclose,
            )
            .await?;
        Ok(RegisterResult::new(reg))
    }))
}

fn register_procedure(
    ctx: &mut Ctx<'_>,
    p: RegisterParams<'_>,
) -> Result<RegisterResult, RequestError> {
    let c = check_register(ctx, p)?;
    let reg = ctx
        .hub()
        .rpc
        .register(
            ctx.conn(),
            c.topic.as_str(),
            c.policy,
            c.concurrency,
            c.disclose,
        )
        .map_err(route_error)?;
    Ok(RegisterResult::new(reg))
}

fn check_register(ctx: &mut Ctx<'_>, p: RegisterParams<'_>) -> Result<Checked, RequestError> {
    let topic = procedure(ctx, p.procedure)?;
    if !ctx.caps().can_rpc_register(&topic) {
        return Err(RequestError::forbidden("register this procedure"));
    }
    let settings = &ctx.hub().rpc.settings;
    let policy = p.policy.unwrap_or(Policy::Single);
    if let Policy::Unknown(name) = &policy {
        return Err(RequestError::invalid_params(format!(
            "unknown policy {name:?}"
        )));
    }
    let conc = match p.max_concurrency {
        None => settings.default_concurrency,
        Some(0) => return Err(RequestError::invalid_params("max_concurrency must be >= 1")),
        Some(n) if n > settings.max_concurrency => {
            return Err(RequestError::invalid_params(format!(
                "max_concurrency is at most {}",
                settings.max_concurrency
            )));
        }
        Some(n) => n,
    };
    let disclose = p.disclose_caller.unwrap_or_default();
    if disclose.len() > settings.max_disclose {
        return Err(RequestError::invalid_params(format!(
            "disclose_caller names at most {} claims",
            settings.max_disclose
        )));
    }
    if disclose
        .iter()
        .any(|c| c.is_empty() || c.len() > MAX_CLAIM_NAME_LEN)
    {
        return Err(RequestError::invalid_params(
            "a claim name is empty or too long",
        ));
    }
    Ok(Checked {
        topic,
        policy,
        concurrency: usize::try_from(conc).unwrap_or(usize::MAX),
        disclose: disclose.into_iter().map(Box::from).collect(),
    })
}

fn unregister(ctx: &mut Ctx<'_>, p: UnregisterParams) -> Result<Empty, RequestError> {
    ctx.hub()
        .rpc
        .unregister(ctx.conn(), p.registration)
        .map_err(route_error)?;
    Ok(Empty {})
}

fn list(ctx: &mut Ctx<'_>, p: ListParams<'_>) -> Result<ListResult, RequestError> {
    if !ctx.caps().rpc_admin {
        return Err(RequestError::forbidden("list procedures"));
    }
    let page = ctx.hub().rpc.settings.list_page;
    let limit = p
        .limit
        .map_or(page, |l| usize::try_from(l).unwrap_or(usize::MAX).min(page))
        .max(1);
    let (procs, more) = ctx.hub().rpc.with(|r| r.snapshot(p.after, limit));
    let next = more
        .then(|| procs.last().map(|p| p.procedure.clone()))
        .flatten();
    let procedures = procs
        .into_iter()
        .map(|v| {
            let callees = v
                .callees
                .into_iter()
                .map(|c| {
                    CalleeInfo::new(
                        c.registration,
                        c.endpoint.user(),
                        c.endpoint.session(),
                        c.in_flight as u64,
                        c.max_concurrency as u64,
                    )
                })
                .collect();
            ProcedureInfo::new(v.procedure, v.policy, callees, v.queued as u64)
        })
        .collect();
    fit_page(procedures, next, ctx.config().max_frame_size)
}

/// Bytes of an `rpc.list` response frame besides its result.
const LIST_ENVELOPE: usize = 16;

/// Shrinks a page until its response fits one frame (R13): fewer
/// procedures first (the rest come with `next`), then, for a lone
/// procedure with very many callees, fewer of its callees.
fn fit_page(
    mut procedures: Vec<ProcedureInfo>,
    mut next: Option<String>,
    max_frame_size: usize,
) -> Result<ListResult, RequestError> {
    let budget = max_frame_size.saturating_sub(LIST_ENVELOPE);
    loop {
        let page = ListResult::new(procedures, next);
        let len = minicbor::to_vec(&page)
            .map_err(|_| RequestError::internal("encode rpc.list"))?
            .len();
        if len <= budget {
            return Ok(page);
        }
        procedures = page.procedures;
        next = page.next;
        if procedures.len() > 1 {
            procedures.truncate(procedures.len() / 2);
            next = procedures.last().map(|p| p.procedure.clone());
        } else if let Some(p) = procedures.first_mut()
            && p.callees.len() > 1
        {
            let keep = p.callees.len() / 2;
            p.callees.truncate(keep);
        } else {
            return Err(RequestError::internal("rpc.list entry larger than a frame"));
        }
    }
}

fn call(ctx: &mut Ctx<'_>, raw: &RawValue) -> Result<RoutedStart, RequestError> {
    let p = params::<CallParams<'_>>(raw)?;
    let topic = procedure(ctx, p.procedure)?;
    if !ctx.caps().can_rpc_call(&topic) {
        return Err(RequestError::forbidden("call this procedure"));
    }
    let hub = ctx.hub();
    let settings = &hub.rpc.settings;
    let timeout = match p.timeout_ms {
        None => settings.default_timeout.0,
        Some(0) => return Err(RequestError::invalid_params("timeout_ms must be >= 1")),
        Some(ms) => Duration::from_millis(ms).min(settings.max_timeout.0),
    };
    if p.key.is_some_and(|k| k.len() > settings.max_key_len) {
        return Err(RequestError::PayloadTooLarge(
            format!("key is longer than {} bytes", settings.max_key_len).into(),
        ));
    }
    let now = Instant::now();
    let deadline = now + timeout;
    let window = settings.chunk_window;
    let (conn, id) = (ctx.conn(), ctx.request_id());
    let (call, routed) = hub
        .rpc
        .with(|r| {
            let call = r.next_call_id();
            r.route(call, topic.as_str(), p.key, || {
                ReplyTo::waiter(conn.clone(), id, call)
            })
            .map(|x| (call, x))
        })
        .map_err(route_error)?;
    let caller = caller(ctx);
    let args = p.params.unwrap_or(RawRef::NULL);
    let target = match routed {
        Routed::Now(a) => match invoke_params(
            call,
            &a,
            topic.as_str(),
            args,
            &caller,
            deadline,
            now,
            window,
        ) {
            Ok(params) => Target::Now {
                callee: a.endpoint,
                registration: a.registration,
                params,
            },
            Err(e) => {
                hub.rpc.finish(call);
                return Err(e);
            }
        },
        Routed::Queued => {
            // Kept until a slot frees: the params are copied out of the
            // request frame.
            let args = Bytes::copy_from_slice(args.as_bytes());
            let name: Box<str> = topic.as_str().into();
            Target::Queued(Box::new(move |a, now| {
                let args = minicbor::decode::<RawRef<'_>>(&args)
                    .map_err(|_| RequestError::internal("call params"))?;
                invoke_params(call, a, &name, args, &caller, deadline, now, window)
            }))
        }
    };
    Ok(RoutedStart {
        call,
        deadline,
        window,
        target,
    })
}

/// The `rpc.invoke` params of call `call` at callee `a`, at `now`.
#[allow(clippy::too_many_arguments)]
fn invoke_params(
    call: CallId,
    a: &Assignment<Endpoint>,
    procedure: &str,
    args: RawRef<'_>,
    caller: &CallerInfo,
    deadline: Instant,
    now: Instant,
    window: u64,
) -> Result<RawValue, RequestError> {
    let claims = disclosed(caller.claims.as_deref(), &a.disclose);
    let invoke = InvokeParams::new(
        call,
        a.registration,
        procedure,
        args,
        duration_ms(deadline.saturating_duration_since(now)),
        Caller::new(&*caller.user).with_claims(claims),
        window,
    );
    // The params, the names and the caller, with room for the keys and
    // the numbers.
    let size = args.as_bytes().len() + procedure.len() + caller.user.len() + 64;
    RawValue::encode_sized(&invoke, size).map_err(|_| RequestError::internal("encode invoke"))
}

struct CallerInfo {
    user: Arc<str>,
    claims: Option<Arc<str>>,
}

fn caller(ctx: &Ctx<'_>) -> CallerInfo {
    CallerInfo {
        user: ctx.principal().user.clone(),
        claims: ctx.caps().claims.clone(),
    }
}

/// The claims `wanted` that the caller's token has (`claims`: its claims
/// as JSON text), as CBOR (R8).
fn disclosed(claims: Option<&str>, wanted: &[Box<str>]) -> Option<BTreeMap<String, RawValue>> {
    if wanted.is_empty() {
        return None;
    }
    let claims: serde_json::Map<String, serde_json::Value> = claims
        .and_then(|c| serde_json::from_str(c).ok())
        .unwrap_or_default();
    let mut out = BTreeMap::new();
    for name in wanted {
        if let Some(v) = claims.get(&**name) {
            let mut e = minicbor::Encoder::new(Vec::new());
            if json_to_cbor(&mut e, v, 0).is_ok()
                && let Ok(raw) = RawValue::from_bytes(
                    Bytes::from(e.into_writer()),
                    &plexus_protocol::DecodeLimits::default(),
                )
            {
                out.insert(name.to_string(), raw);
            }
        }
    }
    Some(out)
}

fn json_to_cbor(
    e: &mut minicbor::Encoder<Vec<u8>>,
    v: &serde_json::Value,
    depth: usize,
) -> Result<(), minicbor::encode::Error<std::convert::Infallible>> {
    use serde_json::Value;
    if depth >= MAX_CLAIM_DEPTH {
        e.null()?;
        return Ok(());
    }
    match v {
        Value::Null => {
            e.null()?;
        }
        Value::Bool(b) => {
            e.bool(*b)?;
        }
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                e.u64(u)?;
            } else if let Some(i) = n.as_i64() {
                e.i64(i)?;
            } else {
                e.f64(n.as_f64().unwrap_or(0.0))?;
            }
        }
        Value::String(s) => {
            e.str(s)?;
        }
        Value::Array(a) => {
            e.array(a.len() as u64)?;
            for x in a {
                json_to_cbor(e, x, depth + 1)?;
            }
        }
        Value::Object(m) => {
            e.map(m.len() as u64)?;
            for (k, x) in m {
                e.str(k)?;
                json_to_cbor(e, x, depth + 1)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_page_is_cut_to_fit_one_frame() {
        let callee = |i: u64| CalleeInfo::new(i, "user", "0a1b2c3d-5", 0, 16);
        let procs: Vec<ProcedureInfo> = (0..100)
            .map(|i| {
                ProcedureInfo::new(
                    format!("svc.p{i:03}"),
                    Policy::RoundRobin,
                    (0..20).map(callee).collect(),
                    0,
                )
            })
            .collect();
        let page = fit_page(procs.clone(), None, 4096).unwrap();
        assert!(page.procedures.len() < 100 && !page.procedures.is_empty());
        assert_eq!(
            page.next.as_deref(),
            Some(page.procedures.last().unwrap().procedure.as_str())
        );
        assert!(minicbor::to_vec(&page).unwrap().len() <= 4096);
        // Everything fits a large frame unchanged.
        let page = fit_page(procs, None, 1 << 20).unwrap();
        assert_eq!((page.procedures.len(), page.next), (100, None));
        // One procedure with very many callees keeps as many as fit.
        let one = vec![ProcedureInfo::new(
            "svc.big",
            Policy::Random,
            (0..1000).map(callee).collect(),
            0,
        )];
        let page = fit_page(one, None, 4096).unwrap();
        assert!(page.procedures[0].callees.len() < 1000);
    }

    #[test]
    fn claims_are_disclosed_as_cbor_and_only_those_asked_for() {
        let mut m = serde_json::Map::new();
        m.insert("email".into(), serde_json::json!("a@b"));
        m.insert(
            "roles".into(),
            serde_json::json!(["x", 1, -2, 1.5, true, null]),
        );
        m.insert("secret".into(), serde_json::json!("s"));
        let text = serde_json::to_string(&m).unwrap();
        let got = disclosed(
            Some(&text),
            &["email".into(), "roles".into(), "absent".into()],
        )
        .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got["email"].decode::<&str>().unwrap(), "a@b");
        assert!(!got.contains_key("secret"));
        assert_eq!(disclosed(Some(&text), &[]), None);
        assert_eq!(disclosed(None, &["email".into()]), Some(BTreeMap::new()));
        // Deep values are cut off rather than nesting past the frame limit.
        let mut deep = serde_json::json!(1);
        for _ in 0..40 {
            deep = serde_json::json!([deep]);
        }
        m.insert("deep".into(), deep);
        let text = serde_json::to_string(&m).unwrap();
        assert!(
            disclosed(Some(&text), &["deep".into()])
                .unwrap()
                .contains_key("deep")
        );
    }
}
