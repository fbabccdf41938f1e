//! Routed RPC (`docs/protocol.md` §25): `rpc.register`, `rpc.unregister`,
//! `rpc.call`, `rpc.list`, the `rpc.invoke` request the hub sends to a
//! callee, and the `rpc.credit` notification that paces a callee's chunks.
//!
//! A callee registers a procedure (a name in topic syntax) under a
//! [`Policy`]; a caller's `rpc.call` is routed to one callee as an
//! `rpc.invoke` request in the hub's own id space (§6.4). The callee
//! answers it with a result, an error, or chunks; the hub relays the answer
//! to the caller unchanged (chunks as chunks, with the same data items).

use std::collections::BTreeMap;

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::raw::{RawRef, RawValue};

text_enum! {
    /// How the calls of a procedure with several callees are shared.
    ///
    /// ```
    /// use plexus_protocol::methods::rpc::Policy;
    /// assert_eq!(Policy::from_text("round_robin"), Policy::RoundRobin);
    /// assert_eq!(Policy::Affinity.as_str(), "affinity");
    /// ```
    Policy {
        /// Exactly one callee; a second registration is a `conflict`.
        Single = "single",
        /// Each callee in turn.
        RoundRobin = "round_robin",
        /// A callee chosen at random.
        Random = "random",
        /// The earliest registered callee (the next one while it is full).
        First = "first",
        /// The latest registered callee (the previous one while it is full).
        Last = "last",
        /// The callee with the fewest calls in flight.
        LeastPending = "least_pending",
        /// The callee a consistent hash of the call's `key` names.
        Affinity = "affinity",
    }
}

/// `rpc.register` params: `{0: procedure, ? 1: policy, ? 2:
/// max_concurrency, ? 3: [* claim-name]}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct RegisterParams<'a> {
    /// The procedure: a topic (no wildcards).
    #[b(0)]
    pub procedure: &'a str,
    /// The sharing policy (default `single`).
    #[n(1)]
    pub policy: Option<Policy>,
    /// Most calls in flight at this callee (default: the server's).
    #[n(2)]
    pub max_concurrency: Option<u64>,
    /// Claims of the caller's token the hub passes in each invocation.
    #[b(3)]
    pub disclose_caller: Option<Vec<&'a str>>,
}

impl<'a> RegisterParams<'a> {
    /// Register `procedure` with the defaults.
    pub fn new(procedure: &'a str) -> Self {
        RegisterParams {
            procedure,
            policy: None,
            max_concurrency: None,
            disclose_caller: None,
        }
    }

    /// Sets the policy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Sets the concurrency bound.
    pub fn with_max_concurrency(mut self, n: u64) -> Self {
        self.max_concurrency = Some(n);
        self
    }

    /// Asks for these claims of each caller.
    pub fn with_disclose_caller(mut self, claims: Vec<&'a str>) -> Self {
        self.disclose_caller = Some(claims);
        self
    }
}

/// `rpc.register` result: `{0: registration}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct RegisterResult {
    /// The registration id (unique on the hub, never reused).
    #[n(0)]
    pub registration: u64,
}

impl RegisterResult {
    /// A result.
    pub fn new(registration: u64) -> Self {
        RegisterResult { registration }
    }
}

/// `rpc.register` — offer a procedure.
#[derive(Debug)]
pub enum Register {}
impl RpcMethod for Register {
    const NAME: &'static str = "rpc.register";
    type Params<'a> = RegisterParams<'a>;
    type Result = RegisterResult;
}

/// `rpc.unregister` params: `{0: registration}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct UnregisterParams {
    /// A registration of this connection.
    #[n(0)]
    pub registration: u64,
}

impl UnregisterParams {
    /// Params.
    pub fn new(registration: u64) -> Self {
        UnregisterParams { registration }
    }
}

/// `rpc.unregister` — withdraw a registration; result `{}`.
#[derive(Debug)]
pub enum Unregister {}
impl RpcMethod for Unregister {
    const NAME: &'static str = "rpc.unregister";
    type Params<'a> = UnregisterParams;
    type Result = crate::methods::Empty;
}

/// `rpc.call` params: `{0: procedure, ? 1: params, ? 2: timeout_ms, ? 3:
/// key}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct CallParams<'a> {
    /// The procedure.
    #[b(0)]
    pub procedure: &'a str,
    /// The procedure's params: any CBOR item, passed unchanged (default
    /// `null`).
    #[b(1)]
    pub params: Option<RawRef<'a>>,
    /// The call's deadline, from its arrival (default and cap: the
    /// server's).
    #[n(2)]
    pub timeout_ms: Option<u64>,
    /// The affinity key (policy `affinity`); ignored by other policies.
    #[b(3)]
    pub key: Option<&'a str>,
}

impl<'a> CallParams<'a> {
    /// Call `procedure` with `null` params.
    pub fn new(procedure: &'a str) -> Self {
        CallParams {
            procedure,
            params: None,
            timeout_ms: None,
            key: None,
        }
    }

    /// Sets the params (one encoded CBOR item).
    pub fn with_params(mut self, params: RawRef<'a>) -> Self {
        self.params = Some(params);
        self
    }

    /// Sets the deadline.
    pub fn with_timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// Sets the affinity key.
    pub fn with_key(mut self, key: &'a str) -> Self {
        self.key = Some(key);
        self
    }
}

/// `rpc.call` — call a procedure; the result (or the chunks) is the
/// callee's, unchanged.
#[derive(Debug)]
pub enum Call {}
impl RpcMethod for Call {
    const NAME: &'static str = "rpc.call";
    type Params<'a> = CallParams<'a>;
    type Result = RawValue;
}

/// The caller as the hub attests it in an invocation: `{0: sub, ? 1:
/// {* claim-name => any}}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct Caller {
    /// The caller's token `sub`.
    #[n(0)]
    pub sub: String,
    /// The claims the callee asked for that the caller's token has (JSON
    /// values as CBOR).
    #[n(1)]
    pub claims: Option<BTreeMap<String, RawValue>>,
}

impl Caller {
    /// A caller with no disclosed claims.
    pub fn new(sub: impl Into<String>) -> Self {
        Caller {
            sub: sub.into(),
            claims: None,
        }
    }

    /// Sets the disclosed claims.
    pub fn with_claims(mut self, claims: Option<BTreeMap<String, RawValue>>) -> Self {
        self.claims = claims;
        self
    }
}

/// `rpc.invoke` params (server → callee): `{0: call, 1: registration, 2:
/// procedure, 3: params, 4: deadline_ms, 5: caller, 6: window}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct InvokeParams<'a> {
    /// The hub's id of the call (unique on the hub; `rpc.credit` names it).
    #[n(0)]
    pub call: u64,
    /// The callee's registration the call was routed to.
    #[n(1)]
    pub registration: u64,
    /// The procedure called.
    #[b(2)]
    pub procedure: &'a str,
    /// The caller's params, unchanged.
    #[b(3)]
    pub params: RawRef<'a>,
    /// Milliseconds left before the hub answers the caller `timeout` and
    /// withdraws this request.
    #[n(4)]
    pub deadline_ms: u64,
    /// Who called, attested by the hub.
    #[n(5)]
    pub caller: Caller,
    /// Chunks the callee may send before it waits for `rpc.credit`.
    #[n(6)]
    pub window: u64,
}

impl<'a> InvokeParams<'a> {
    /// Params of an invocation.
    #[allow(clippy::too_many_arguments)] // one per wire key
    pub fn new(
        call: u64,
        registration: u64,
        procedure: &'a str,
        params: RawRef<'a>,
        deadline_ms: u64,
        caller: Caller,
        window: u64,
    ) -> Self {
        InvokeParams {
            call,
            registration,
            procedure,
            params,
            deadline_ms,
            caller,
            window,
        }
    }
}

/// `rpc.invoke` — the hub's request to a callee (§25.5).
#[derive(Debug)]
pub enum Invoke {}
impl RpcMethod for Invoke {
    const NAME: &'static str = "rpc.invoke";
    type Params<'a> = InvokeParams<'a>;
    type Result = RawValue;
}

/// `rpc.credit` params (server → callee): `{0: call, 1: chunks}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct CreditParams {
    /// The call (`call` of the invocation).
    #[n(0)]
    pub call: u64,
    /// How many more chunks the callee may send.
    #[n(1)]
    pub chunks: u64,
}

impl CreditParams {
    /// Params.
    pub fn new(call: u64, chunks: u64) -> Self {
        CreditParams { call, chunks }
    }
}

/// `rpc.credit` — more chunks a streaming callee may send (§25.6).
#[derive(Debug)]
pub enum Credit {}
impl NotificationMethod for Credit {
    const NAME: &'static str = "rpc.credit";
    type Params<'a> = CreditParams;
}

/// `rpc.list` params: `{? 0: after, ? 1: limit}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ListParams<'a> {
    /// Continue after this procedure (the `next` of the previous page).
    #[b(0)]
    pub after: Option<&'a str>,
    /// Most procedures (default and cap: the server's).
    #[n(1)]
    pub limit: Option<u64>,
}

/// One callee in an `rpc.list` result: `{0: registration, 1: user, 2:
/// session, 3: in_flight, 4: max_concurrency}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct CalleeInfo {
    /// The registration.
    #[n(0)]
    pub registration: u64,
    /// The callee's user.
    #[n(1)]
    pub user: String,
    /// The callee's session id.
    #[n(2)]
    pub session: String,
    /// Calls in flight at this callee.
    #[n(3)]
    pub in_flight: u64,
    /// Its concurrency bound.
    #[n(4)]
    pub max_concurrency: u64,
}

impl CalleeInfo {
    /// A callee's entry.
    pub fn new(
        registration: u64,
        user: impl Into<String>,
        session: impl Into<String>,
        in_flight: u64,
        max_concurrency: u64,
    ) -> Self {
        CalleeInfo {
            registration,
            user: user.into(),
            session: session.into(),
            in_flight,
            max_concurrency,
        }
    }
}

/// One procedure in an `rpc.list` result: `{0: procedure, 1: policy, 2:
/// [* callee], 3: queued}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ProcedureInfo {
    /// The procedure.
    #[n(0)]
    pub procedure: String,
    /// Its policy.
    #[n(1)]
    pub policy: Policy,
    /// Its callees, in registration order.
    #[n(2)]
    pub callees: Vec<CalleeInfo>,
    /// Calls waiting for a free callee.
    #[n(3)]
    pub queued: u64,
}

impl ProcedureInfo {
    /// A procedure's entry.
    pub fn new(
        procedure: impl Into<String>,
        policy: Policy,
        callees: Vec<CalleeInfo>,
        queued: u64,
    ) -> Self {
        ProcedureInfo {
            procedure: procedure.into(),
            policy,
            callees,
            queued,
        }
    }
}

/// `rpc.list` result: `{0: [* procedure], ? 1: next}`, procedures in byte
/// order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
#[non_exhaustive]
pub struct ListResult {
    /// The procedures.
    #[n(0)]
    pub procedures: Vec<ProcedureInfo>,
    /// `after` of the next page; absent at the end.
    #[n(1)]
    pub next: Option<String>,
}

impl ListResult {
    /// A page.
    pub fn new(procedures: Vec<ProcedureInfo>, next: Option<String>) -> Self {
        ListResult { procedures, next }
    }
}

/// `rpc.list` — the hub's procedures, for operators (`rpc_admin`).
#[derive(Debug)]
pub enum List {}
impl RpcMethod for List {
    const NAME: &'static str = "rpc.list";
    type Params<'a> = ListParams<'a>;
    type Result = ListResult;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_params;

    #[test]
    fn params_round_trip() {
        let r = RegisterParams::new("svc.resize")
            .with_policy(Policy::Affinity)
            .with_max_concurrency(4)
            .with_disclose_caller(vec!["email"]);
        let raw = RawValue::encode(&r).unwrap();
        assert_eq!(decode_params::<RegisterParams>(&raw).unwrap(), r);

        let data = RawValue::encode(&7u8).unwrap();
        let c = CallParams::new("svc.resize")
            .with_params(data.as_raw_ref())
            .with_timeout_ms(500)
            .with_key("k");
        let raw = RawValue::encode(&c).unwrap();
        assert_eq!(decode_params::<CallParams>(&raw).unwrap(), c);

        let mut claims = BTreeMap::new();
        claims.insert("email".to_owned(), RawValue::encode(&"a@b").unwrap());
        let i = InvokeParams {
            call: 9,
            registration: 2,
            procedure: "svc.resize",
            params: data.as_raw_ref(),
            deadline_ms: 480,
            caller: Caller {
                sub: "alice".into(),
                claims: Some(claims),
            },
            window: 8,
        };
        let raw = RawValue::encode(&i).unwrap();
        assert_eq!(decode_params::<InvokeParams>(&raw).unwrap(), i);
    }

    #[test]
    fn unknown_policies_are_kept() {
        let raw = RawValue::encode(&"sticky").unwrap();
        assert_eq!(
            raw.decode::<Policy>().unwrap(),
            Policy::Unknown("sticky".into())
        );
    }
}
