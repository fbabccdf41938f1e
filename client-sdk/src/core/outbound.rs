//! Requests going out: the window, the queues, the announced limits, and
//! the SDK's own requests and notifications.

use minicbor::Encode;
use plexus_protocol::frame::{encode_error, encode_notification, encode_request};
use plexus_protocol::methods::rpc::{Register, Unregister, UnregisterParams};
use plexus_protocol::methods::{Since, Subscribe, SubscribeParams, Unsubscribe, UnsubscribeParams};
use plexus_protocol::{DecodeError, DecodeLimits, RpcMethod, WireError};
use tracing::debug;

use super::requests::Held;
use super::{Core, DEFAULT_MAX_DEPTH, Pending, Phase, Transmit};
use crate::error::Error;

impl Core {
    /// Connected and not told that the connection is closing.
    pub(super) fn sendable(&self) -> bool {
        matches!(self.phase, Phase::Connected { .. }) && self.closing.is_none()
    }

    /// Sends a request that fits the window, unless it breaks an announced
    /// limit (then it fails at once: the hub would close the connection).
    pub(super) fn send_now(&mut self, held: Held) {
        if let Err(e) = self.check_limits(&held.frame) {
            return held.pending.fail(e);
        }
        self.requests.start(held.id, held.frame.len(), held.pending);
        self.transmit
            .push_back((Transmit::Frame(held.frame), false));
    }

    /// Sends what waits, as far as the window allows.
    pub(super) fn release(&mut self) {
        if !self.sendable() {
            return;
        }
        while let Some(held) = self.requests.next_to_send() {
            self.send_now(held);
        }
    }

    pub(super) fn check_limits(&self, frame: &[u8]) -> Result<(), Error> {
        let max = self.limits.max_frame_size;
        if max > 0 && frame.len() as u64 > max {
            return Err(Error::ExceedsLimit {
                limit: "max_frame_size",
                max,
            });
        }
        let depth = match self.limits.max_depth {
            0 => DEFAULT_MAX_DEPTH,
            d => d,
        };
        let limits = DecodeLimits {
            max_frame_size: frame.len(),
            max_depth: u16::try_from(depth).unwrap_or(u16::MAX),
        };
        match plexus_protocol::item_len(frame, &limits) {
            Err(DecodeError::TooDeep { .. }) => Err(Error::ExceedsLimit {
                limit: "max_depth",
                max: depth,
            }),
            _ => Ok(()),
        }
    }

    /// Sends one of the SDK's own requests (before any queued application
    /// request) as soon as the window allows.
    pub(super) fn request<P: Encode<()>>(
        &mut self,
        method: &'static str,
        params: &P,
        pending: Pending,
    ) {
        self.enqueue(method, params, pending);
        self.release();
    }

    /// Queues one of the SDK's own requests; [`release`](Self::release)
    /// sends it.
    pub(super) fn enqueue<P: Encode<()>>(
        &mut self,
        method: &'static str,
        params: &P,
        pending: Pending,
    ) {
        let id = self.next_id();
        match encode_request(id, method, params) {
            Ok(frame) => self.requests.queue_internal(Held {
                id,
                frame: frame.into(),
                pending,
            }),
            Err(e) => debug!(method, error = %e, "could not encode a background request"),
        }
    }

    /// Queues a `subscribe`; [`release`](Self::release) sends it.
    pub(super) fn subscribe(&mut self, pattern: String, presence: bool) {
        let mut params = SubscribeParams::new(&pattern);
        if presence {
            params = params.with_presence(true);
        }
        let pending = Pending::Subscribe(pattern.clone());
        self.enqueue(Subscribe::NAME, &params, pending);
    }

    /// Queues the `subscribe` of every durable subscription waiting for
    /// this connection: with `since` when it has a position (a resume),
    /// without when it starts now; [`release`](Self::release) sends them.
    pub(super) fn renew_durables(&mut self) {
        for (local, pattern, pos) in self.durable.to_subscribe() {
            let exact = self.durable.is_exact(local);
            let mut params = SubscribeParams::new(&pattern);
            if let Some(p) = &pos {
                let epoch = p.epoch.as_deref();
                params = params.with_since(if exact {
                    Since::offset(epoch, p.last)
                } else {
                    Since::position(epoch, p.last)
                });
            }
            let id = self.next_id();
            match encode_request(id, Subscribe::NAME, &params) {
                Ok(frame) => {
                    self.requests.queue_internal(Held {
                        id,
                        frame: frame.into(),
                        pending: Pending::Durable(local),
                    });
                    self.durable.sent(local, id, pos.is_some());
                }
                Err(e) => debug!(error = %e, "could not encode a durable subscribe"),
            }
        }
    }

    /// Queues the `rpc.register` of every registration waiting for this
    /// connection; [`release`](Self::release) sends them.
    pub(super) fn renew_registrations(&mut self) {
        for (local, spec) in self.rpc.unsent() {
            self.enqueue(Register::NAME, &spec.params(), Pending::Register(local));
        }
    }

    /// Sends `rpc.unregister` for hub registration `id`.
    pub(super) fn unregister(&mut self, id: u64) {
        self.request(
            Unregister::NAME,
            &UnregisterParams::new(id),
            Pending::Background(Unregister::NAME),
        );
    }

    pub(super) fn unsubscribe(&mut self, pattern: String) {
        self.request(
            Unsubscribe::NAME,
            &UnsubscribeParams { topic: &pattern },
            Pending::Background(Unsubscribe::NAME),
        );
    }

    pub(super) fn notify<P: Encode<()>>(&mut self, method: &'static str, params: &P, reply: bool) {
        if let Ok(frame) = encode_notification(method, params) {
            self.transmit
                .push_back((Transmit::Frame(frame.into()), reply));
            if reply {
                self.queued_replies += 1;
            }
        }
    }

    pub(super) fn reply_error(&mut self, id: u64, error: WireError) {
        self.transmit
            .push_back((Transmit::Frame(encode_error(id, &error).into()), true));
        self.queued_replies += 1;
    }
}
