//! WebSocket close codes used by plexus.v1.
//!
//! Application codes live in 4000–4099; each has exactly one meaning. The
//! standard codes 1000, 1002, 1003, 1007 and 1009 are used where they fit
//! (`docs/protocol.md` §15.1). Whether the server announces a close with a
//! `closing` notification first is a property of the code:
//! [`CloseCode::announced`] (§12.6).

macro_rules! close_codes {
    ($( $(#[$doc:meta])* $variant:ident = $code:literal, $name:literal, reconnect: $reconnect:ident; )*) => {
        /// A WebSocket close code the hub sends, with its one meaning.
        ///
        /// ```
        /// use plexus_protocol::{CloseCode, Reconnect};
        /// assert_eq!(CloseCode::from_u16(4006), Some(CloseCode::SlowConsumer));
        /// assert_eq!(CloseCode::AuthFailed.reconnect(), Reconnect::Never);
        /// assert_eq!(CloseCode::GoingAway.as_u16(), 4008);
        /// ```
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum CloseCode {
            $( $(#[$doc])* $variant, )*
        }

        impl CloseCode {
            /// Every close code this version defines, in numeric order.
            pub const ALL: &'static [CloseCode] = &[$( CloseCode::$variant, )*];

            /// The numeric code sent in the WebSocket close frame.
            pub const fn as_u16(self) -> u16 {
                match self { $( CloseCode::$variant => $code, )* }
            }

            /// The code for a number, if this version defines it.
            pub const fn from_u16(code: u16) -> Option<CloseCode> {
                match code {
                    $( $code => Some(CloseCode::$variant), )*
                    _ => None,
                }
            }

            /// A short stable name, also used as the close frame's reason text.
            pub const fn name(self) -> &'static str {
                match self { $( CloseCode::$variant => $name, )* }
            }

            /// What a client should do after receiving this code.
            pub const fn reconnect(self) -> Reconnect {
                match self { $( CloseCode::$variant => Reconnect::$reconnect, )* }
            }
        }
    };
}

/// What a client should do after the server closed with a given code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect with backoff (honouring any retry hint).
    WithBackoff,
    /// Reconnect only with a fresh token (fetch one first; give up if the
    /// token source fails).
    WithFreshToken,
    /// Do not reconnect: surface the error to the application.
    Never,
}

close_codes! {
    /// 1000: normal closure, e.g. after the client asked to close.
    Normal = 1000, "normal", reconnect: Never;
    /// 1002: WebSocket-level protocol violation (detected by the WebSocket
    /// library, e.g. a bad frame header).
    WsProtocolError = 1002, "ws_protocol_error", reconnect: WithBackoff;
    /// 1003: the client sent a text message; plexus.v1 is binary only.
    UnsupportedData = 1003, "unsupported_data", reconnect: Never;
    /// 1007: the client sent text that is not valid UTF-8 (a text message's
    /// payload or a Close frame's reason), as RFC 6455 §7.4.1 requires.
    InvalidPayload = 1007, "invalid_payload", reconnect: Never;
    /// 1009: a message exceeded the maximum frame size.
    MessageTooBig = 1009, "message_too_big", reconnect: WithBackoff;
    /// 4000: the `auth` request failed (bad token, signature, claims).
    AuthFailed = 4000, "auth_failed", reconnect: Never;
    /// 4001: no `auth` request arrived within the auth deadline.
    AuthTimeout = 4001, "auth_timeout", reconnect: WithBackoff;
    /// 4002: the token expired and was not refreshed in time.
    TokenExpired = 4002, "token_expired", reconnect: WithFreshToken;
    /// 4003: the connection is no longer allowed (e.g. `auth.refresh` with a
    /// token for another subject).
    Forbidden = 4003, "forbidden", reconnect: Never;
    /// 4004: the user already has the maximum number of connections.
    TooManyConnections = 4004, "too_many_connections", reconnect: WithBackoff;
    /// 4005: the client broke the protocol (malformed CBOR, a bad
    /// envelope, a duplicate in-flight request id).
    ProtocolError = 4005, "protocol_error", reconnect: Never;
    /// 4006: the client read too slowly and its outbound queue overflowed.
    SlowConsumer = 4006, "slow_consumer", reconnect: WithBackoff;
    /// 4007: the client kept exceeding the request rate limit.
    RateLimited = 4007, "rate_limited", reconnect: WithBackoff;
    /// 4008: the server is shutting down or draining; reconnect (elsewhere)
    /// after the retry hint from the preceding `closing` notification.
    GoingAway = 4008, "going_away", reconnect: WithBackoff;
    /// 4009: a newer connection of the same user and client instance
    /// replaced this one.
    SessionReplaced = 4009, "session_replaced", reconnect: Never;
    /// 4010: the client did not answer the server's WebSocket ping within
    /// the keepalive timeout.
    KeepaliveTimeout = 4010, "keepalive_timeout", reconnect: WithBackoff;
}

impl CloseCode {
    /// Whether the server announces this close with a `closing`
    /// notification first (§12.6): every 4xxx code except 4006 (the
    /// outbound queue is full) and 4010 (the client is not reading). The
    /// standard 1xxx codes are never announced.
    ///
    /// ```
    /// use plexus_protocol::CloseCode;
    /// assert!(CloseCode::RateLimited.announced());
    /// assert!(!CloseCode::SlowConsumer.announced());
    /// assert!(!CloseCode::MessageTooBig.announced());
    /// ```
    pub const fn announced(self) -> bool {
        let n = self.as_u16();
        n >= 4000 && !matches!(self, CloseCode::SlowConsumer | CloseCode::KeepaliveTimeout)
    }
}

impl std::fmt::Display for CloseCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.as_u16(), self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_app_codes_are_in_range() {
        for code in CloseCode::ALL {
            assert_eq!(CloseCode::from_u16(code.as_u16()), Some(*code));
            let n = code.as_u16();
            assert!(n < 1100 || (4000..4100).contains(&n), "{code}");
        }
        assert_eq!(CloseCode::from_u16(4099), None);
    }
}
