//! The SDK's error type.

use std::sync::Arc;

use plexus_protocol::{CloseCode, ErrorCode, WireError};

/// The error that caused an [`Error`], kept as its
/// [`source`](std::error::Error::source): an I/O or WebSocket error, a
/// codec error, or what your token provider returned.
pub type Cause = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// What can go wrong with a call, a subscription or the connection.
///
/// `docs/sdk.md` lists when each variant happens and what to do about
/// each wire error code. Variants that wrap an error from outside the SDK
/// say what failed in their message and keep the underlying error as their
/// [`source`](std::error::Error::source) (walk the chain to print it).
///
/// ```no_run
/// # async fn run(client: plexus_client::Client) {
/// use plexus_client::Error;
/// use plexus_client::protocol::ErrorCode;
/// match client.publish("demo.x", &1u8).await {
///     Ok(_) => {}
///     Err(Error::Remote(e)) if e.code == ErrorCode::RateLimited => {
///         let wait = e.retry_after_ms.unwrap_or(100);
///         tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
///     }
///     // Not resent by the SDK: it may or may not have been delivered.
///     Err(Error::ConnectionLost) => {}
///     Err(e) => eprintln!("{e}"),
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The hub answered with an error. Also produced locally by
    /// `subscribe` for an invalid pattern (`invalid_params`) or a pattern
    /// already subscribed with the other presence flag (`conflict`), and by
    /// `serve` for a method already served (`conflict`).
    #[error("the hub answered: {0}")]
    Remote(WireError),
    /// No answer within the call's timeout (the call was cancelled). Time
    /// spent waiting for a reconnect, or for room in the hub's in-flight
    /// window, counts.
    #[error("timed out")]
    Timeout,
    /// The connection was lost while the call was in flight; it may or may
    /// not have taken effect, and the SDK does not resend it.
    #[error("connection lost while the call was in flight")]
    ConnectionLost,
    /// The client is closed (by `close`, or because the hub refused it for
    /// good); the code says why when the hub closed it.
    ///
    /// Every call made after the client closed returns it.
    #[error("client closed{}", .0.map(|c| format!(" by the hub: {c}")).unwrap_or_default())]
    Closed(Option<CloseCode>),
    /// Authentication failed (the hub answered `auth` with
    /// `unauthenticated`, or closed with 4000); the SDK does not reconnect.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The call was made while the client was reconnecting and `limit`
    /// requests were already waiting for the connection
    /// ([`ClientBuilder::offline_queue`](crate::ClientBuilder::offline_queue)).
    /// It was not sent.
    #[error("{limit} requests are already waiting for a connection")]
    QueueFull {
        /// The configured bound of the offline queue.
        limit: usize,
    },
    /// The request would break a limit the hub announced in its `auth`
    /// result (§10), so it was not sent: sending it would make the hub
    /// close the connection. `limit` names it (`max_frame_size`,
    /// `max_depth`).
    #[error("the request exceeds the hub's {limit} of {max}")]
    ExceedsLimit {
        /// The announced limit that the request breaks.
        limit: &'static str,
        /// The announced bound (bytes for `max_frame_size`, levels for
        /// `max_depth`).
        max: u64,
    },
    /// No token was configured, or the token provider failed or timed out
    /// before a connection attempt (only the first `connect()` returns it;
    /// later failures are retried).
    #[error("token provider failed: {reason}")]
    TokenProvider {
        /// What went wrong (`"it returned an error"`, `"timed out"`, …).
        reason: String,
        /// The provider's own error, when it returned one.
        #[source]
        source: Option<Cause>,
    },
    /// The first connection attempt failed (network, handshake, timeout,
    /// a transient `auth` error), or the URL is invalid. Only
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect) returns it.
    #[error("cannot connect: {reason}")]
    Connect {
        /// Which step failed.
        reason: String,
        /// The underlying error (I/O, TLS, WebSocket handshake, or the
        /// hub's [`WireError`] answering `auth`), when there is one.
        #[source]
        source: Option<Cause>,
    },
    /// A stream of chunks broke: a chunk's sequence number was not the
    /// previous one plus one (`"chunk sequence gap"`), or the consumer fell
    /// a whole buffer behind. A stream cut off by a lost connection ends
    /// with [`Error::ConnectionLost`] instead.
    #[error("chunk stream broken: {0}")]
    BrokenStream(&'static str),
    /// A durable publish was refused with `conflict`: its
    /// `expected_offset` is not the topic's last offset (`last_offset`
    /// says what it is), or its producer sequence number is below the
    /// producer's last one and was never stored (`last_seq`; a producer id
    /// reused by two live clients, or a clock stepped back, see
    /// [`ClientBuilder::producer_id`](crate::ClientBuilder::producer_id)).
    /// Nothing was stored.
    #[error("conflict: {message}")]
    Conflict {
        /// The topic's last offset (an `expected_offset` conflict).
        last_offset: Option<u64>,
        /// The producer's last stored sequence number (a sequence
        /// conflict).
        last_seq: Option<u64>,
        /// The hub's message.
        message: String,
    },
    /// A value could not be encoded or a result could not be decoded.
    #[error("cannot {what}")]
    Codec {
        /// What failed (`"encode the params"`, `"decode the result"`, …).
        what: &'static str,
        /// minicbor's error.
        #[source]
        source: Cause,
    },
    /// A `sync.push` was refused with `conflict`: an `expected_version`
    /// did not match. Nothing of the push was applied; `records` lists
    /// every mismatched record with its current version (and fields, when
    /// the push asked for them with
    /// [`PushOptions::return_values`](crate::PushOptions::return_values)).
    #[error("sync conflict on {} record(s)", records.len())]
    SyncConflict {
        /// The mismatched records, as they are now.
        records: Vec<plexus_protocol::methods::sync::SyncConflict>,
    },
    /// The application's callback of a
    /// [`Space::pull`](crate::Space::pull) failed: the pull stopped and the
    /// cursor stays after the last chunk the callback accepted.
    #[error("the pull callback failed")]
    Apply(#[source] Cause),
    /// The local replica's database failed (feature `local-replica`).
    #[error("local replica: {what}")]
    Replica {
        /// What failed.
        what: &'static str,
        /// The database error.
        #[source]
        source: Option<Cause>,
    },
}

impl Error {
    /// The wire error code, for [`Error::Remote`] (and `conflict` for
    /// [`Error::Conflict`]).
    pub fn code(&self) -> Option<&ErrorCode> {
        match self {
            Error::Remote(e) => Some(&e.code),
            Error::Conflict { .. } | Error::SyncConflict { .. } => Some(&ErrorCode::Conflict),
            _ => None,
        }
    }

    /// The message followed by every source in the chain, joined by `": "`
    /// (what `ConnectionState::Closed` shows as its reason).
    ///
    /// ```
    /// use plexus_client::Error;
    /// let e = Error::Connect {
    ///     reason: "the WebSocket handshake failed".into(),
    ///     source: Some(std::sync::Arc::new(std::io::Error::other("connection refused"))),
    /// };
    /// assert_eq!(e.report(), "cannot connect: the WebSocket handshake failed: connection refused");
    /// ```
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        // A cycle is impossible for owned errors, but a hostile `source`
        // impl could loop: stop after a bounded number of links.
        for _ in 0..MAX_REPORTED_SOURCES {
            let Some(e) = next else { break };
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }

    pub(crate) fn encode(source: minicbor::encode::Error<std::convert::Infallible>) -> Error {
        Error::Codec {
            what: "encode the params",
            source: Arc::new(source),
        }
    }

    pub(crate) fn decode(what: &'static str, source: minicbor::decode::Error) -> Error {
        Error::Codec {
            what,
            source: Arc::new(source),
        }
    }

    pub(crate) fn connect(reason: impl Into<String>, source: Option<Cause>) -> Error {
        Error::Connect {
            reason: reason.into(),
            source,
        }
    }

    pub(crate) fn provider(reason: impl Into<String>, source: Option<Cause>) -> Error {
        Error::TokenProvider {
            reason: reason.into(),
            source,
        }
    }
}

/// Longest chain of sources [`Error::report`] prints.
const MAX_REPORTED_SOURCES: usize = 16;

/// Two errors are equal when they are the same variant with the same
/// fields; sources, which need not be comparable, are compared by their
/// messages.
impl PartialEq for Error {
    fn eq(&self, other: &Error) -> bool {
        fn same(a: Option<&Cause>, b: Option<&Cause>) -> bool {
            a.map(ToString::to_string) == b.map(ToString::to_string)
        }
        match (self, other) {
            (Error::Remote(a), Error::Remote(b)) => a == b,
            (Error::Timeout, Error::Timeout) | (Error::ConnectionLost, Error::ConnectionLost) => {
                true
            }
            (Error::Closed(a), Error::Closed(b)) => a == b,
            (Error::Auth(a), Error::Auth(b)) => a == b,
            (Error::QueueFull { limit: a }, Error::QueueFull { limit: b }) => a == b,
            (
                Error::ExceedsLimit { limit: a, max: m },
                Error::ExceedsLimit { limit: b, max: n },
            ) => a == b && m == n,
            (
                Error::TokenProvider {
                    reason: a,
                    source: s,
                },
                Error::TokenProvider {
                    reason: b,
                    source: t,
                },
            )
            | (
                Error::Connect {
                    reason: a,
                    source: s,
                },
                Error::Connect {
                    reason: b,
                    source: t,
                },
            ) => a == b && same(s.as_ref(), t.as_ref()),
            (Error::BrokenStream(a), Error::BrokenStream(b)) => a == b,
            (
                Error::Conflict {
                    last_offset: a,
                    last_seq: s,
                    message: m,
                },
                Error::Conflict {
                    last_offset: b,
                    last_seq: t,
                    message: n,
                },
            ) => a == b && s == t && m == n,
            (Error::Codec { what: a, source: s }, Error::Codec { what: b, source: t }) => {
                a == b && s.to_string() == t.to_string()
            }
            _ => false,
        }
    }
}

impl Eq for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_kept_and_reported() {
        let io = std::io::Error::other("refused");
        let e = Error::connect("the WebSocket handshake failed", Some(Arc::new(io)));
        let source = std::error::Error::source(&e).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("refused"));
        assert_eq!(
            e.to_string(),
            "cannot connect: the WebSocket handshake failed"
        );
        assert_eq!(
            e.report(),
            "cannot connect: the WebSocket handshake failed: refused"
        );
        let wire = WireError::new(ErrorCode::Unavailable, "busy");
        let e = Error::connect("the hub answered auth with an error", Some(Arc::new(wire)));
        assert!(e.report().ends_with("unavailable: busy"), "{}", e.report());
        assert_eq!(e.clone(), e);
        assert_ne!(e, Error::Timeout);
    }
}
