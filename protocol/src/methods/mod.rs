//! Typed params and results of the v1 methods.
//!
//! Every params, result and notification body is a CBOR map with small
//! unsigned integer keys (in the style of COSE and CWT). Keys this version
//! does not know are skipped when decoding; absent optional keys decode as
//! `None`. Borrowing types (`&'a str`, [`RawRef`](crate::RawRef)) decode
//! straight from the frame without copying.

mod presence;
mod pubsub;
mod session;
mod streams;
pub mod sync;

pub use presence::{
    Member, PresenceGet, PresenceGetParams, PresenceGetResult, PresenceJoin, PresenceLeave,
    PresenceNotice, PresenceSet, PresenceSetParams,
};
pub use pubsub::{
    Event, EventParams, Publish, PublishParams, PublishResult, Subscribe, SubscribeParams,
    Unsubscribe, UnsubscribeParams,
};
pub use session::{
    Auth, AuthParams, AuthRefresh, AuthRefreshParams, AuthRefreshResult, AuthResult, Cancel,
    CancelParams, Closing, ClosingParams, Empty, Ping, ServerLimits, TokenExpiring,
    TokenExpiringParams,
};
pub use streams::{
    Direction, Durability, History, HistoryLatest, HistoryLatestParams, HistoryLatestResult,
    HistoryParams, HistoryResult, ResumeFinal, ResumeOutcome, Since, SubscribeResult,
};

#[cfg(test)]
mod tests;
