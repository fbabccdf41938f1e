//! What the client does after the hub closed the connection, by close code.

use plexus_protocol::{CloseCode, Reconnect};

use crate::state::CloseStatus;

/// The client's reaction to a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reaction {
    /// Reconnect with backoff (and a fresh token: the SDK asks the
    /// provider before every attempt).
    Reconnect,
    /// Stop for good with this code.
    Stop(CloseCode),
    /// Stop for good: the hub refused the token (4000).
    StopAuth,
}

/// The reaction to a Close frame with `code` (`None`: no status code, or
/// no Close frame at all).
///
/// It follows [`CloseCode::reconnect`]: `never` stops, `with_backoff` and
/// `with_fresh_token` reconnect, 4000 is reported as an authentication
/// failure. 1007 (`invalid_payload`) always stops. Codes `plexus.v1` does not
/// define reconnect with backoff.
pub(crate) fn after_close(code: Option<CloseStatus>) -> Reaction {
    let Some(CloseStatus::Known(code)) = code else {
        return Reaction::Reconnect;
    };
    if code == CloseCode::AuthFailed {
        return Reaction::StopAuth;
    }
    if code == CloseCode::InvalidPayload {
        return Reaction::Stop(code);
    }
    match code.reconnect() {
        Reconnect::Never => Reaction::Stop(code),
        Reconnect::WithBackoff | Reconnect::WithFreshToken => Reaction::Reconnect,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_reaction() {
        let stop = [1000, 1003, 1007, 4003, 4005, 4009];
        let reconnect = [1002, 1009, 4001, 4002, 4004, 4006, 4007, 4008, 4010];
        for n in stop {
            assert!(
                matches!(after_close(Some(n.into())), Reaction::Stop(c) if c.as_u16() == n),
                "{n}"
            );
        }
        for n in reconnect {
            assert_eq!(after_close(Some(n.into())), Reaction::Reconnect, "{n}");
        }
        assert_eq!(after_close(Some(4000.into())), Reaction::StopAuth);
        assert_eq!(
            stop.len() + reconnect.len() + 1,
            CloseCode::ALL.len(),
            "every code is listed"
        );
        // Codes plexus.v1 does not define, and no code at all.
        for n in [1001, 1006, 1011, 3000, 4099] {
            assert_eq!(after_close(Some(n.into())), Reaction::Reconnect, "{n}");
        }
        assert_eq!(after_close(None), Reaction::Reconnect);
    }
}
