//! The auth part of the core: `auth` is verified without blocking the
//! driver and registered, `auth.refresh` is verified while the session
//! goes on (P21), and a token's `exp` turns into the session's expiry and
//! its `token.expiring` moment (P5, P6, P7).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use plexus_protocol::methods::{AuthParams, AuthRefreshParams, AuthRefreshResult, AuthResult};
use plexus_protocol::{CloseCode, RawValue, duration_ms};

use super::{Core, CoreConfig, InFlight, Label, Output, PendingAuth, Phase, Work};
use super::{RegisterError, TOO_MANY_CONNECTIONS_RETRY_MS};
use crate::auth::{AuthError, MAX_TOKEN_LIFETIME, Principal};
use crate::session::error::{RequestError, params};

/// The times derived from a token's `exp` at acceptance (P5, P6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TokenTimes {
    /// E: when the session closes with 4002.
    expires_at: Instant,
    /// When `token.expiring` is sent.
    expiring_at: Instant,
    /// E − acceptance, as announced.
    expires_in_ms: u64,
}

/// The token times for `exp` accepted at `now`/`wall`, or `Err` if `exp`
/// lies more than [`MAX_TOKEN_LIFETIME`] ahead (P7).
pub(super) fn token_times(
    cfg: &CoreConfig,
    now: Instant,
    wall: SystemTime,
    exp: u64,
) -> Result<TokenTimes, ()> {
    let e_wall = UNIX_EPOCH
        .checked_add(Duration::from_secs(exp))
        .and_then(|t| t.checked_add(cfg.leeway))
        .ok_or(())?;
    // L = E − acceptance; a token accepted under the leeway has
    // exp < now < E, and L counts to E, not to now + leeway (item 3).
    let left = e_wall.duration_since(wall).unwrap_or(Duration::ZERO);
    if left > MAX_TOKEN_LIFETIME + cfg.leeway {
        return Err(());
    }
    let lead = cfg.token_expiring_lead.min(left / 4);
    Ok(TokenTimes {
        expires_at: now + left,
        expiring_at: now + left.saturating_sub(lead),
        expires_in_ms: duration_ms(left),
    })
}

impl Core {
    pub(super) fn start_auth(&mut self, id: u64, raw: &RawValue, len: usize) {
        let p: AuthParams<'_> = match params(raw) {
            Ok(p) => p,
            Err(e) => return self.respond_err(id, Label::Auth, &e),
        };
        self.out.push_back(Output::Verify {
            token: p.token.to_owned(),
        });
        let instance = p.instance.map(str::to_owned);
        self.inflight.insert(
            id,
            InFlight {
                bytes: len,
                work: Work::Auth,
                deadline: None,
            },
        );
        self.inflight_bytes += len;
        self.phase = Phase::Verifying(Box::new(PendingAuth {
            id,
            instance,
            accepted: None,
        }));
    }

    pub(super) fn start_refresh(&mut self, id: u64, raw: &RawValue, len: usize) {
        // P21: one refresh at a time.
        if self.refreshing.is_some() {
            return self.respond_err(
                id,
                Label::AuthRefresh,
                &RequestError::Conflict("a refresh is already in progress".into()),
            );
        }
        let p: AuthRefreshParams<'_> = match params(raw) {
            Ok(p) => p,
            Err(e) => return self.respond_err(id, Label::AuthRefresh, &e),
        };
        self.out.push_back(Output::Verify {
            token: p.token.to_owned(),
        });
        self.inflight.insert(
            id,
            InFlight {
                bytes: len,
                work: Work::Refresh,
                deadline: None,
            },
        );
        self.inflight_bytes += len;
        self.refreshing = Some(id);
    }

    /// The verification asked for by [`Output::Verify`] finished.
    pub fn handle_verified(
        &mut self,
        now: Instant,
        wall: SystemTime,
        result: Result<Principal, AuthError>,
    ) {
        if self.is_closing() {
            return;
        }
        if let Phase::Verifying(pending) = &mut self.phase {
            if pending.accepted.is_some() {
                return;
            }
            let id = pending.id;
            match result {
                Ok(principal) => {
                    let times = match principal.expires_at {
                        None => Ok(None),
                        Some(exp) => token_times(&self.cfg, now, wall, exp).map(Some),
                    };
                    match times {
                        Ok(times) => {
                            let user = principal.user.clone();
                            let instance = pending.instance.take();
                            pending.accepted = Some((principal, times));
                            self.out.push_back(Output::Register { user, instance });
                        }
                        Err(()) => {
                            self.auth_invalid(now, id, "token expiry is too far in the future")
                        }
                    }
                }
                Err(AuthError::Invalid(why)) => self.auth_invalid(now, id, &why.to_string()),
                Err(AuthError::Unavailable) => {
                    self.finish_request(id);
                    self.phase = Phase::AwaitingAuth;
                    self.respond_err(id, Label::Auth, &RequestError::keys_unavailable());
                }
            }
            return;
        }
        let Some(id) = self.refreshing.take() else {
            return;
        };
        self.finish_request(id);
        match result {
            Ok(principal) => {
                let same = self
                    .principal
                    .as_ref()
                    .is_some_and(|p| p.user == principal.user);
                if !same {
                    self.out.push_back(Output::AuthFailure("refresh_subject"));
                    self.respond_err(
                        id,
                        Label::AuthRefresh,
                        &RequestError::Forbidden("token is for another subject".into()),
                    );
                    self.close(
                        now,
                        CloseCode::Forbidden,
                        "token subject changed".into(),
                        None,
                    );
                    return;
                }
                let times = match principal.expires_at {
                    None => Ok(None),
                    Some(exp) => token_times(&self.cfg, now, wall, exp).map(Some),
                };
                let Ok(times) = times else {
                    self.out.push_back(Output::AuthFailure("refresh_invalid"));
                    return self.respond_err(
                        id,
                        Label::AuthRefresh,
                        &RequestError::Unauthenticated(
                            "invalid token: token expiry is too far in the future".into(),
                        ),
                    );
                };
                self.set_token_times(times);
                self.principal = Some(principal);
                let result = AuthRefreshResult {
                    expires_in_ms: times.map(|t| t.expires_in_ms),
                };
                self.respond_ok(id, Label::AuthRefresh, &result);
            }
            Err(AuthError::Invalid(why)) => {
                self.out.push_back(Output::AuthFailure("refresh_invalid"));
                self.respond_err(
                    id,
                    Label::AuthRefresh,
                    &RequestError::Unauthenticated(format!("invalid token: {why}").into()),
                );
            }
            Err(AuthError::Unavailable) => {
                self.respond_err(id, Label::AuthRefresh, &RequestError::keys_unavailable());
            }
        }
    }

    fn auth_invalid(&mut self, now: Instant, id: u64, why: &str) {
        self.finish_request(id);
        self.out.push_back(Output::AuthFailure("invalid"));
        self.respond_err(
            id,
            Label::Auth,
            &RequestError::Unauthenticated(format!("invalid token: {why}").into()),
        );
        self.close(
            now,
            CloseCode::AuthFailed,
            "authentication failed".into(),
            None,
        );
    }

    /// The registration asked for by [`Output::Register`] finished.
    pub fn handle_registered(&mut self, now: Instant, result: Result<(), RegisterError>) {
        let Phase::Verifying(pending) = &mut self.phase else {
            return;
        };
        let Some((principal, times)) = pending.accepted.take() else {
            return;
        };
        let id = pending.id;
        self.finish_request(id);
        if let Err(RegisterError::TooManyConnections) = result {
            self.close(
                now,
                CloseCode::TooManyConnections,
                "too many connections for this user".into(),
                Some(TOO_MANY_CONNECTIONS_RETRY_MS),
            );
            return;
        }
        self.phase = Phase::Authenticated;
        self.auth_deadline = None;
        self.set_token_times(times);
        let result = AuthResult::new(
            self.session.to_string(),
            principal.user.to_string(),
            times.map(|t| t.expires_in_ms),
            self.cfg.announced,
        );
        self.principal = Some(principal);
        self.out.push_back(Output::RaiseFrameLimit {
            max_frame_size: self.cfg.limits.max_frame_size,
        });
        self.respond_ok(id, Label::Auth, &result);
    }

    pub(super) fn set_token_times(&mut self, times: Option<TokenTimes>) {
        self.expires_at = times.map(|t| t.expires_at);
        self.expiring_at = times.map(|t| t.expiring_at);
    }
}
