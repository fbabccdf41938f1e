//! What a handler sees: [`Ctx`], a narrow view of the connection and the
//! hub's services, never the session itself.

use std::sync::Arc;
use std::time::Duration;

use plexus_protocol::RawValue;

use super::error::RequestError;
use crate::auth::{Capabilities, Principal};
use crate::broker::Broker;
use crate::config::Config;
use crate::conn::{Command, Conn};
use crate::hub::Hub;
use crate::metrics::Metrics;

/// The context a handler runs in: the request, the connection, the
/// authenticated principal, and the hub's services.
///
/// A synchronous handler uses it while it runs. An asynchronous or streamed
/// one reads what it needs before returning its future, and clones
/// [`Ctx::hub`] or [`Ctx::client`] into the future if it needs more.
#[derive(Debug)]
pub struct Ctx<'a> {
    hub: &'a Arc<Hub>,
    conn: &'a Arc<Conn>,
    principal: &'a Principal,
    id: u64,
}

impl<'a> Ctx<'a> {
    /// A context for request `id` of `conn`, authenticated as `principal`.
    pub fn new(hub: &'a Arc<Hub>, conn: &'a Arc<Conn>, principal: &'a Principal, id: u64) -> Self {
        Ctx {
            hub,
            conn,
            principal,
            id,
        }
    }

    /// The request's id.
    pub fn request_id(&self) -> u64 {
        self.id
    }

    /// The connection.
    pub fn conn(&self) -> &Arc<Conn> {
        self.conn
    }

    /// Who the connection is (as of this request: `auth.refresh` may change
    /// it for later ones).
    pub fn principal(&self) -> &Principal {
        self.principal
    }

    /// What the principal may do.
    pub fn caps(&self) -> &Capabilities {
        &self.principal.caps
    }

    /// The hub's configuration.
    pub fn config(&self) -> &Config {
        &self.hub.config
    }

    /// Subscriptions, presence and fan-out.
    pub fn broker(&self) -> &Broker {
        &self.hub.broker
    }

    /// Metric handles.
    pub fn metrics(&self) -> &Metrics {
        &self.hub.metrics
    }

    /// The hub, for services a future needs after the handler returned.
    pub fn hub(&self) -> &Arc<Hub> {
        self.hub
    }

    /// A handle to send requests to this connection's client.
    pub fn client(&self) -> ClientHandle {
        ClientHandle {
            conn: self.conn.clone(),
        }
    }
}

/// Sends server-initiated requests (decision P20) to one connection's
/// client, from any task.
#[derive(Debug, Clone)]
pub struct ClientHandle {
    conn: Arc<Conn>,
}

impl ClientHandle {
    /// Sends request `method` with `params` to the client and waits for its
    /// answer, at most `timeout` (then the request is withdrawn with
    /// `cancel` and this is [`RequestError::Timeout`]). The client's error
    /// object comes back as [`RequestError::Peer`].
    pub async fn call(
        &self,
        method: &str,
        params: RawValue,
        timeout: Duration,
    ) -> Result<RawValue, RequestError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let command = Command::Call {
            method: method.to_owned(),
            params,
            timeout,
            reply,
        };
        if self.conn.out.command(command).is_err() {
            return Err(RequestError::TooManyRequests(
                "too many requests to this client in flight".into(),
            ));
        }
        answer.await.unwrap_or_else(|_| {
            Err(RequestError::Unavailable {
                message: "the connection closed".into(),
                retry_after_ms: None,
            })
        })
    }
}
