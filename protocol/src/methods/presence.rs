//! Presence methods: `presence.get`, `presence.set` and the
//! `presence.join` / `presence.leave` notifications.

use minicbor::{Decode, Encode};

use crate::method::{NotificationMethod, RpcMethod};
use crate::methods::Empty;
use crate::raw::{RawRef, RawValue};

/// One member of a topic's presence: `{0: session, 1: user, ? 2: info}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Member {
    /// The member connection's session id.
    #[n(0)]
    pub session: String,
    /// The member's user.
    #[n(1)]
    pub user: String,
    /// The info the member set with `presence.set`, if any.
    #[n(2)]
    pub info: Option<RawValue>,
}

/// `presence.get` params: `{0: topic, ? 1: cursor, ? 2: limit}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PresenceGetParams<'a> {
    /// The exact topic.
    #[b(0)]
    pub topic: &'a str,
    /// Where to continue: the `next` of the previous page.
    #[n(1)]
    pub cursor: Option<u64>,
    /// Most members to return (the server caps it).
    #[n(2)]
    pub limit: Option<u64>,
}

/// `presence.get` result: `{0: [* member], ? 1: next}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PresenceGetResult {
    /// This page of members.
    #[n(0)]
    pub members: Vec<Member>,
    /// Cursor of the next page; absent on the last page.
    #[n(1)]
    pub next: Option<u64>,
}

/// `presence.get` — list who is present on a topic, a page at a time.
#[derive(Debug)]
pub enum PresenceGet {}
impl RpcMethod for PresenceGet {
    const NAME: &'static str = "presence.get";
    type Params<'a> = PresenceGetParams<'a>;
    type Result = PresenceGetResult;
}

/// `presence.set` params: `{0: info}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PresenceSetParams<'a> {
    /// Small info shown with this connection on every topic where it is
    /// present; `null` clears it.
    #[b(0)]
    pub info: RawRef<'a>,
}

/// `presence.set` — set this connection's presence info.
#[derive(Debug)]
pub enum PresenceSet {}
impl RpcMethod for PresenceSet {
    const NAME: &'static str = "presence.set";
    type Params<'a> = PresenceSetParams<'a>;
    type Result = Empty;
}

/// `presence.join` and `presence.leave` params: `{0: topic, 1: member}`.
#[derive(Debug, Clone, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct PresenceNotice {
    /// The topic.
    #[n(0)]
    pub topic: String,
    /// Who joined (or changed info) or left.
    #[n(1)]
    pub member: Member,
}

/// `presence.join` — a member joined the topic's presence, or changed its
/// info.
#[derive(Debug)]
pub enum PresenceJoin {}
impl NotificationMethod for PresenceJoin {
    const NAME: &'static str = "presence.join";
    type Params<'a> = PresenceNotice;
}

/// `presence.leave` — a member left the topic's presence.
#[derive(Debug)]
pub enum PresenceLeave {}
impl NotificationMethod for PresenceLeave {
    const NAME: &'static str = "presence.leave";
    type Params<'a> = PresenceNotice;
}
