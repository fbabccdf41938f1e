//! Typed params and results of the v1 methods.
//!
//! Every params, result and notification body is a CBOR map with small
//! unsigned integer keys (in the style of COSE and CWT). Keys this version
//! does not know are skipped when decoding; absent optional keys decode as
//! `None`. Borrowing types (`&'a str`, [`RawRef`](crate::RawRef)) decode
//! straight from the frame without copying.

// A text-valued enum of the wire: known texts as variants, any other text
// kept as `Unknown` (clients must accept texts they do not know). Defined
// before the submodules so that `streams` and `sync` can use it.
macro_rules! text_enum {
    ($(#[$doc:meta])* $name:ident { $( $(#[$vdoc:meta])* $variant:ident = $text:literal, )* }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vdoc])* $variant, )*
            /// A value this version does not know.
            Unknown(Box<str>),
        }

        impl $name {
            /// The wire text.
            pub fn as_str(&self) -> &str {
                match self {
                    $( $name::$variant => $text, )*
                    $name::Unknown(s) => s,
                }
            }

            /// Parses the wire text; unknown text becomes `Unknown`.
            pub fn from_text(s: &str) -> Self {
                match s {
                    $( $text => $name::$variant, )*
                    other => $name::Unknown(other.into()),
                }
            }
        }

        impl<C> Encode<C> for $name {
            fn encode<W: minicbor::encode::Write>(
                &self,
                e: &mut minicbor::Encoder<W>,
                _ctx: &mut C,
            ) -> Result<(), minicbor::encode::Error<W::Error>> {
                e.str(self.as_str())?;
                Ok(())
            }
        }

        impl<'b, C> Decode<'b, C> for $name {
            fn decode(
                d: &mut minicbor::Decoder<'b>,
                _ctx: &mut C,
            ) -> Result<Self, minicbor::decode::Error> {
                Ok($name::from_text(d.str()?))
            }
        }
    };
}

mod presence;
mod pubsub;
pub mod rpc;
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
