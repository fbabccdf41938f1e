//! The connection task: the one place that owns the socket, the map of
//! calls in flight, the subscriptions and the reconnect loop.
//!
//! [`Client`](crate::Client) handles talk to it through a command channel;
//! it never blocks them on the network.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use plexus_protocol::frame::{encode_notification, encode_request};
use plexus_protocol::methods::{
    AuthParams, AuthRefreshParams, AuthResult, CancelParams, ClosingParams, EventParams,
    PresenceNotice, ServerLimits, SubscribeParams, UnsubscribeParams,
};
use plexus_protocol::topic::Pattern;
use plexus_protocol::{
    CloseCode, DecodeLimits, Encoded, ErrorCode, Frame, RawValue, Reconnect, Response, WireError,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::debug;

use crate::backoff::Backoff;
use crate::error::Error;
use crate::state::ConnectionState;
use crate::subscription::{Event, Publication, SubQueue};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A session that lasted this long resets the backoff to its first step.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// The token provider: called before every connection attempt and on
/// `token.expiring`.
pub(crate) type TokenFn = Arc<dyn Fn() -> BoxFuture<'static, Result<String, String>> + Send + Sync>;

/// Settings fixed at build time.
pub(crate) struct Settings {
    pub(crate) url: String,
    pub(crate) token: TokenFn,
    pub(crate) connect_timeout: Duration,
    pub(crate) call_timeout: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) subscription_buffer: usize,
    pub(crate) stream_buffer: usize,
    pub(crate) liveness_timeout: Option<Duration>,
    pub(crate) max_frame_size: usize,
    pub(crate) instance: Option<String>,
    pub(crate) agent: String,
}

/// The task's end of a streamed call: chunks go into a bounded channel; a
/// terminal error is recorded beside it, so it is never lost to a full
/// channel.
pub(crate) struct StreamSink {
    pub(crate) tx: mpsc::Sender<Result<RawValue, Error>>,
    pub(crate) failed: Arc<std::sync::OnceLock<Error>>,
}

impl StreamSink {
    /// Ends the stream with an error (the receiver sees it after the chunks
    /// it already has).
    fn fail(self, err: Error) {
        let _ = self.failed.set(err);
    }
}

/// What `Client` handles ask of the task.
pub(crate) enum Command {
    Call {
        id: u64,
        method: String,
        params: Vec<u8>,
        reply: oneshot::Sender<Result<RawValue, Error>>,
    },
    Stream {
        id: u64,
        method: String,
        params: Vec<u8>,
        sink: StreamSink,
    },
    Cancel {
        id: u64,
    },
    Subscribe {
        local: u64,
        pattern: Pattern,
        presence: bool,
        queue: Arc<SubQueue>,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Unsubscribe {
        local: u64,
    },
    Close {
        reply: oneshot::Sender<()>,
    },
}

enum Pending {
    Call(oneshot::Sender<Result<RawValue, Error>>),
    Stream { sink: StreamSink, next_seq: u64 },
    Auth,
    Subscribe(String),
    Unsubscribe,
    Refresh,
}

struct LocalSub {
    pattern: Pattern,
    presence: bool,
    queue: Arc<SubQueue>,
}

struct ServerSub {
    presence: bool,
    confirmed: bool,
    waiters: Vec<(u64, oneshot::Sender<Result<(), Error>>)>,
}

/// How a connected session ended.
enum End {
    /// Reconnect (with backoff).
    Reconnect,
    /// Stop for good.
    Stop(Option<u16>, Error),
}

/// The task's state.
pub(crate) struct Task {
    settings: Arc<Settings>,
    ids: Arc<AtomicU64>,
    state: watch::Sender<ConnectionState>,
    closed_code: Arc<std::sync::Mutex<Option<u16>>>,
    cmd: mpsc::UnboundedReceiver<Command>,
    pending: HashMap<u64, Pending>,
    queued: VecDeque<Command>,
    subs: HashMap<u64, LocalSub>,
    server_subs: HashMap<String, ServerSub>,
    limits: ServerLimits,
    retry_hint: Option<Duration>,
    refresh: Option<BoxFuture<'static, Result<String, String>>>,
    /// Frames produced while handling a frame, sent right after it.
    outbox: Vec<Vec<u8>>,
    /// The last presence info set, re-sent after a reconnect.
    presence_info: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// Why the last attempt failed, for the first connect's error.
    last_error: Option<Error>,
}

impl Task {
    pub(crate) fn new(
        settings: Arc<Settings>,
        ids: Arc<AtomicU64>,
        state: watch::Sender<ConnectionState>,
        closed_code: Arc<std::sync::Mutex<Option<u16>>>,
        cmd: mpsc::UnboundedReceiver<Command>,
        presence_info: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    ) -> Task {
        Task {
            settings,
            ids,
            state,
            closed_code,
            cmd,
            pending: HashMap::new(),
            queued: VecDeque::new(),
            subs: HashMap::new(),
            server_subs: HashMap::new(),
            limits: ServerLimits::default(),
            retry_hint: None,
            refresh: None,
            outbox: Vec::new(),
            presence_info,
            last_error: None,
        }
    }

    fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs until closed for good. `first` learns how the first attempt
    /// went: the first connection is not retried, so `connect()` reports
    /// errors directly.
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), Error>>) {
        let mut first = Some(first);
        let mut attempt: u32 = 0;
        loop {
            if attempt > 0 {
                let delay = self
                    .settings
                    .backoff
                    .delay(attempt - 1, self.retry_hint.take());
                self.state.send_replace(ConnectionState::Reconnecting {
                    attempt,
                    next_in: delay,
                });
                if !self.wait(delay).await {
                    return self.finish(None, Error::Closed(None), "closed by the application");
                }
            }
            match self.connect().await {
                Ok(ws) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Ok(()));
                    }
                    self.state.send_replace(ConnectionState::Connected);
                    let since = tokio::time::Instant::now();
                    let end = self.session(ws).await;
                    self.connection_lost();
                    match end {
                        // A connection that lasted is a fresh start; one that
                        // failed at once keeps backing off.
                        End::Reconnect if since.elapsed() >= STABLE_SESSION => attempt = 1,
                        End::Reconnect => attempt = attempt.saturating_add(1),
                        End::Stop(code, err) => {
                            let reason = err.to_string();
                            return self.finish(code, err, &reason);
                        }
                    }
                }
                Err(End::Stop(code, err)) => {
                    if let Some(f) = first.take() {
                        let _ = f.send(Err(err.clone()));
                    }
                    let reason = err.to_string();
                    return self.finish(code, err, &reason);
                }
                Err(End::Reconnect) => {
                    if let Some(f) = first.take() {
                        let err = self.last_error.take().unwrap_or_else(|| {
                            Error::Connect("the first connection attempt failed".into())
                        });
                        let reason = err.to_string();
                        let _ = f.send(Err(err.clone()));
                        return self.finish(None, err, &reason);
                    }
                    attempt = attempt.saturating_add(1);
                }
            }
        }
    }

    /// Waits `delay` while serving commands; false when the client closed.
    async fn wait(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                _ = &mut sleep => return true,
                cmd = self.cmd.recv() => match cmd {
                    None => return false,
                    Some(Command::Close { reply }) => {
                        let _ = reply.send(());
                        return false;
                    }
                    Some(c) => self.offline_command(c),
                }
            }
        }
    }

    /// Handles a command while not connected.
    fn offline_command(&mut self, cmd: Command) {
        match cmd {
            c @ (Command::Call { .. } | Command::Stream { .. }) => self.queued.push_back(c),
            Command::Cancel { id } => self.queued.retain(|c| match c {
                Command::Call { id: i, .. } | Command::Stream { id: i, .. } => *i != id,
                _ => true,
            }),
            Command::Subscribe {
                local,
                pattern,
                presence,
                queue,
                reply,
            } => {
                // Sent when the connection is back (renewals go out first).
                self.register_subscription(local, &pattern, presence, queue, reply);
            }
            Command::Unsubscribe { local } => {
                self.remove_local(local);
            }
            Command::Close { reply } => {
                let _ = reply.send(());
            }
        }
    }

    /// Records a local subscription and answers it when the hub already
    /// confirmed its pattern; returns true when the hub must be asked (the
    /// pattern is new).
    fn register_subscription(
        &mut self,
        local: u64,
        pattern: &Pattern,
        presence: bool,
        queue: Arc<SubQueue>,
        reply: oneshot::Sender<Result<(), Error>>,
    ) -> bool {
        if let Err(e) = self.add_local(local, pattern.clone(), presence, queue) {
            let _ = reply.send(Err(e));
            return false;
        }
        match self.server_subs.get_mut(pattern.as_str()) {
            Some(s) if s.confirmed => {
                let _ = reply.send(Ok(()));
                false
            }
            Some(s) => {
                s.waiters.push((local, reply));
                false
            }
            None => {
                self.server_subs.insert(
                    pattern.as_str().to_owned(),
                    ServerSub {
                        presence,
                        confirmed: false,
                        waiters: vec![(local, reply)],
                    },
                );
                true
            }
        }
    }

    fn add_local(
        &mut self,
        local: u64,
        pattern: Pattern,
        presence: bool,
        queue: Arc<SubQueue>,
    ) -> Result<(), Error> {
        if let Some(existing) = self.server_subs.get(pattern.as_str())
            && existing.presence != presence
        {
            return Err(Error::Remote(WireError::new(
                ErrorCode::Conflict,
                "already subscribed to this topic with a different presence option",
            )));
        }
        self.subs.insert(
            local,
            LocalSub {
                pattern,
                presence,
                queue,
            },
        );
        Ok(())
    }

    /// Removes a local subscription; returns the pattern when it was the
    /// last one on it (the hub's subscription should go too).
    fn remove_local(&mut self, local: u64) -> Option<String> {
        let sub = self.subs.remove(&local)?;
        let pattern = sub.pattern.as_str();
        if self.subs.values().any(|s| s.pattern.as_str() == pattern) {
            return None;
        }
        let server = self.server_subs.remove(pattern)?;
        server.confirmed.then(|| pattern.to_owned())
    }

    /// Opens the socket and authenticates.
    async fn connect(&mut self) -> Result<Ws, End> {
        // A provider that fails or hangs is treated like a network failure:
        // retried with backoff (the first connect reports it).
        let token = match tokio::time::timeout(
            self.settings.connect_timeout,
            (self.settings.token)(),
        )
        .await
        {
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                self.last_error = Some(Error::TokenProvider(e));
                return Err(End::Reconnect);
            }
            Err(_) => {
                self.last_error = Some(Error::TokenProvider("timed out".into()));
                return Err(End::Reconnect);
            }
        };
        let mut req = self
            .settings
            .url
            .as_str()
            .into_client_request()
            .map_err(|e| End::Stop(None, Error::Connect(e.to_string())))?;
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            plexus_protocol::SUBPROTOCOL
                .parse()
                .map_err(|_| End::Stop(None, Error::Connect("bad subprotocol header".into())))?,
        );
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(16 * 1024)
            .max_message_size(Some(self.settings.max_frame_size))
            .max_frame_size(Some(self.settings.max_frame_size));
        let connecting = tokio_tungstenite::connect_async_with_config(req, Some(config), true);
        let mut ws = match tokio::time::timeout(self.settings.connect_timeout, connecting).await {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                debug!(error = %e, "connect failed");
                self.last_error = Some(Error::Connect(e.to_string()));
                return Err(End::Reconnect);
            }
            Err(_) => {
                self.last_error = Some(Error::Connect("timed out".into()));
                return Err(End::Reconnect);
            }
        };
        let id = self.next_id();
        let params = AuthParams {
            token: &token,
            instance: self.settings.instance.as_deref(),
            agent: Some(&self.settings.agent),
        };
        let frame = encode_request(id, "auth", &params)
            .map_err(|e| End::Stop(None, Error::Codec(e.to_string())))?;
        if ws.send(Message::Binary(frame.into())).await.is_err() {
            return Err(End::Reconnect);
        }
        self.pending.insert(id, Pending::Auth);
        let deadline = tokio::time::Instant::now() + self.settings.call_timeout;
        loop {
            let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
                Ok(Some(Ok(m))) => m,
                Ok(Some(Err(_)) | None) | Err(_) => {
                    self.pending.remove(&id);
                    return Err(End::Reconnect);
                }
            };
            match msg {
                Message::Binary(b) => match self.decode(b) {
                    Some(Frame::Response(Response { id: rid, outcome })) if rid == id => {
                        self.pending.remove(&id);
                        return match outcome {
                            Ok(v) => {
                                let r: AuthResult = v
                                    .decode()
                                    .map_err(|e| End::Stop(None, Error::Codec(e.to_string())))?;
                                self.limits = r.limits;
                                Ok(ws)
                            }
                            Err(e) if e.code == ErrorCode::Unauthenticated => Err(End::Stop(
                                Some(CloseCode::AuthFailed.as_u16()),
                                Error::Auth(e.message),
                            )),
                            Err(_) => Err(End::Reconnect),
                        };
                    }
                    Some(Frame::Notification(n)) if n.method == "closing" => {
                        self.on_closing(&n.params)
                    }
                    _ => {}
                },
                Message::Close(f) => {
                    self.pending.remove(&id);
                    return Err(self.on_close(f.map(|f| u16::from(f.code))));
                }
                _ => {}
            }
        }
    }

    fn decode(&self, bytes: Bytes) -> Option<Frame> {
        let limits = DecodeLimits {
            max_frame_size: self.settings.max_frame_size,
            ..DecodeLimits::default()
        };
        match Frame::decode(bytes, &limits) {
            Ok(f) => Some(f),
            Err(e) => {
                debug!(error = %e, "undecodable frame from the hub, ignored");
                None
            }
        }
    }

    fn on_closing(&mut self, params: &RawValue) {
        if let Ok(p) = params.decode::<ClosingParams>() {
            self.retry_hint = p.retry_after_ms.map(Duration::from_millis);
        }
    }

    /// What to do after the hub closed with `code`.
    fn on_close(&mut self, code: Option<u16>) -> End {
        let Some(code) = code else {
            return End::Reconnect;
        };
        match CloseCode::from_u16(code) {
            Some(CloseCode::AuthFailed) => {
                End::Stop(Some(code), Error::Auth("the hub rejected the token".into()))
            }
            Some(c) if c.reconnect() == Reconnect::Never => {
                End::Stop(Some(code), Error::Closed(Some(c)))
            }
            _ => End::Reconnect,
        }
    }

    /// Runs a connected session until it ends.
    async fn session(&mut self, mut ws: Ws) -> End {
        // Renew every subscription, then send what waited for a connection.
        let patterns: Vec<(String, bool)> = self
            .server_subs
            .iter()
            .map(|(p, s)| (p.clone(), s.presence))
            .collect();
        for (pattern, presence) in patterns {
            let id = self.next_id();
            let mut params = SubscribeParams::new(&pattern);
            if presence {
                params = params.with_presence(true);
            }
            if !self
                .send(&mut ws, encode_request(id, "subscribe", &params))
                .await
            {
                return End::Reconnect;
            }
            self.pending.insert(id, Pending::Subscribe(pattern));
        }
        let info = self.presence_info.lock().ok().and_then(|i| i.clone());
        if let Some(info) = info {
            let id = self.next_id();
            if let Ok(info) = minicbor::decode::<plexus_protocol::RawRef>(&info) {
                let params = plexus_protocol::methods::PresenceSetParams { info };
                if !self
                    .send(&mut ws, encode_request(id, "presence.set", &params))
                    .await
                {
                    return End::Reconnect;
                }
                self.pending.insert(id, Pending::Refresh);
            }
        }
        while let Some(cmd) = self.queued.pop_front() {
            if !self.command(&mut ws, cmd).await {
                return End::Reconnect;
            }
        }
        let liveness = self.settings.liveness_timeout.unwrap_or_else(|| {
            Duration::from_millis(self.limits.ping_interval_ms.max(1_000)) * 2
                + Duration::from_secs(5)
        });
        let mut last_heard = tokio::time::Instant::now();
        // One timer for the session, moved forward when it fires early
        // (not re-created for every frame).
        let silence = tokio::time::sleep(liveness);
        tokio::pin!(silence);
        loop {
            let refresh = async {
                match self.refresh.as_mut() {
                    Some(f) => f.await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = ws.next() => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        Some(Ok(Message::Binary(b))) => {
                            if let Some(end) = self.on_frame(b) {
                                return end;
                            }
                            for frame in std::mem::take(&mut self.outbox) {
                                if ws.send(Message::Binary(frame.into())).await.is_err() {
                                    return End::Reconnect;
                                }
                            }
                        }
                        Some(Ok(Message::Close(f))) => {
                            let end = self.on_close(f.map(|f| u16::from(f.code)));
                            // Let tungstenite complete the closing handshake.
                            let _ = tokio::time::timeout(Duration::from_secs(1), ws.next()).await;
                            return end;
                        }
                        Some(Ok(Message::Text(_))) => {
                            // plexus.v1 is binary only; a text message is ignored.
                        }
                        Some(Ok(_)) => {}
                        Some(Err(_)) | None => return End::Reconnect,
                    }
                }
                cmd = self.cmd.recv() => match cmd {
                    None => {
                        let _ = ws.close(None).await;
                        return End::Stop(None, Error::Closed(None));
                    }
                    Some(Command::Close { reply }) => {
                        let _ = ws.close(None).await;
                        let _ = tokio::time::timeout(Duration::from_secs(2), async {
                            while let Some(Ok(_)) = ws.next().await {}
                        }).await;
                        let _ = reply.send(());
                        return End::Stop(None, Error::Closed(None));
                    }
                    Some(c) => {
                        if !self.command(&mut ws, c).await {
                            return End::Reconnect;
                        }
                    }
                },
                token = refresh => {
                    self.refresh = None;
                    match token {
                        Ok(token) => {
                            let id = self.next_id();
                            if !self.send(&mut ws, encode_request(id, "auth.refresh", &AuthRefreshParams { token: &token })).await {
                                return End::Reconnect;
                            }
                            self.pending.insert(id, Pending::Refresh);
                        }
                        Err(e) => debug!(error = %e, "token provider failed during refresh"),
                    }
                }
                _ = &mut silence => {
                    let due = last_heard + liveness;
                    if tokio::time::Instant::now() >= due {
                        debug!("the hub went silent; reconnecting");
                        return End::Reconnect;
                    }
                    silence.as_mut().reset(due);
                }
            }
        }
    }

    async fn send(
        &mut self,
        ws: &mut Ws,
        frame: Result<Vec<u8>, plexus_protocol::frame::EncodeError>,
    ) -> bool {
        match frame {
            Ok(bytes) => ws.send(Message::Binary(bytes.into())).await.is_ok(),
            Err(_) => true,
        }
    }

    /// Handles a command while connected; false when the socket failed.
    async fn command(&mut self, ws: &mut Ws, cmd: Command) -> bool {
        match cmd {
            Command::Call {
                id,
                method,
                params,
                reply,
            } => {
                self.pending.insert(id, Pending::Call(reply));
                self.send(ws, encode_request(id, &method, &Encoded(&params)))
                    .await
            }
            Command::Stream {
                id,
                method,
                params,
                sink,
            } => {
                self.pending
                    .insert(id, Pending::Stream { sink, next_seq: 0 });
                self.send(ws, encode_request(id, &method, &Encoded(&params)))
                    .await
            }
            Command::Cancel { id } => {
                if self.pending.remove(&id).is_some() {
                    return self
                        .send(ws, encode_notification("cancel", &CancelParams { id }))
                        .await;
                }
                true
            }
            Command::Subscribe {
                local,
                pattern,
                presence,
                queue,
                reply,
            } => {
                if !self.register_subscription(local, &pattern, presence, queue, reply) {
                    return true;
                }
                let id = self.next_id();
                self.pending
                    .insert(id, Pending::Subscribe(pattern.as_str().to_owned()));
                let mut params = SubscribeParams::new(pattern.as_str());
                if presence {
                    params = params.with_presence(true);
                }
                self.send(ws, encode_request(id, "subscribe", &params))
                    .await
            }
            Command::Unsubscribe { local } => match self.remove_local(local) {
                Some(pattern) => {
                    let id = self.next_id();
                    self.pending.insert(id, Pending::Unsubscribe);
                    self.send(
                        ws,
                        encode_request(id, "unsubscribe", &UnsubscribeParams { topic: &pattern }),
                    )
                    .await
                }
                None => true,
            },
            Command::Close { reply } => {
                let _ = reply.send(());
                true
            }
        }
    }

    /// Handles a frame from the hub; `Some` ends the session.
    fn on_frame(&mut self, bytes: Bytes) -> Option<End> {
        match self.decode(bytes)? {
            Frame::Response(r) => self.on_response(r),
            Frame::Notification(n) => match &*n.method {
                "event" => self.on_event(&n.params),
                "presence.join" | "presence.leave" => {
                    if let Ok(p) = n.params.decode::<PresenceNotice>() {
                        for sub in self
                            .subs
                            .values()
                            .filter(|s| s.presence && s.pattern.as_str() == p.topic)
                        {
                            let item = if n.method == "presence.join" {
                                Event::Join(p.member.clone())
                            } else {
                                Event::Leave(p.member.clone())
                            };
                            sub.queue.push(item);
                        }
                    }
                }
                "closing" => self.on_closing(&n.params),
                "token.expiring" if self.refresh.is_none() => {
                    self.refresh = Some((self.settings.token)());
                }
                // Unknown notifications are ignored, as the spec requires.
                _ => {}
            },
            Frame::Chunk(c) => {
                let Some(Pending::Stream { sink, next_seq }) = self.pending.get_mut(&c.id) else {
                    // Chunks for unknown ids are ignored.
                    return None;
                };
                let outcome = if c.seq != *next_seq {
                    Err(Error::BrokenStream("chunk sequence gap"))
                } else {
                    match sink.tx.try_send(Ok(c.data)) {
                        Ok(()) => {
                            *next_seq += 1;
                            Ok(c.fin)
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => Err(Error::BrokenStream(
                            "the consumer fell a whole buffer behind",
                        )),
                        // The consumer dropped the stream; its drop sent
                        // `cancel` already.
                        Err(mpsc::error::TrySendError::Closed(_)) => Ok(true),
                    }
                };
                match outcome {
                    Ok(false) => {}
                    Ok(true) => {
                        self.pending.remove(&c.id);
                    }
                    Err(e) => {
                        if let Some(Pending::Stream { sink, .. }) = self.pending.remove(&c.id) {
                            sink.fail(e);
                        }
                        // Tell the hub to stop sending the rest.
                        if let Ok(f) = encode_notification("cancel", &CancelParams { id: c.id }) {
                            self.outbox.push(f);
                        }
                    }
                }
            }
            // The hub sends no requests in v1.
            Frame::Request(_) => {}
        }
        None
    }

    fn on_response(&mut self, r: Response) {
        let Some(pending) = self.pending.remove(&r.id) else {
            return;
        };
        match pending {
            Pending::Call(reply) => {
                let _ = reply.send(r.outcome.map_err(Error::Remote));
            }
            Pending::Stream { sink, .. } => match r.outcome {
                Ok(v) if v.is_null() => {}
                Ok(v) => {
                    if sink.tx.try_send(Ok(v)).is_err() {
                        sink.fail(Error::BrokenStream(
                            "the consumer fell a whole buffer behind",
                        ));
                    }
                }
                Err(e) => sink.fail(Error::Remote(e)),
            },
            Pending::Subscribe(pattern) => {
                let Some(server) = self.server_subs.get_mut(&pattern) else {
                    // Every local subscription went away while this was in
                    // flight: drop the hub's side too, or it would leak.
                    if r.outcome.is_ok() {
                        let id = self.next_id();
                        if let Ok(f) = encode_request(
                            id,
                            "unsubscribe",
                            &UnsubscribeParams { topic: &pattern },
                        ) {
                            self.pending.insert(id, Pending::Unsubscribe);
                            self.outbox.push(f);
                        }
                    }
                    return;
                };
                match r.outcome {
                    // `conflict`: the hub already holds this pattern for
                    // this connection (an earlier subscribe for it was still
                    // in flight), which is what we want.
                    Ok(_) => {
                        server.confirmed = true;
                        for (_, w) in server.waiters.drain(..) {
                            let _ = w.send(Ok(()));
                        }
                    }
                    Err(e) if e.code == ErrorCode::Conflict => {
                        server.confirmed = true;
                        for (_, w) in server.waiters.drain(..) {
                            let _ = w.send(Ok(()));
                        }
                    }
                    Err(e) => {
                        let server = self.server_subs.remove(&pattern);
                        let waiting: Vec<u64> = server
                            .map(|s| {
                                s.waiters
                                    .into_iter()
                                    .map(|(local, w)| {
                                        let _ = w.send(Err(Error::Remote(e.clone())));
                                        local
                                    })
                                    .collect()
                            })
                            .unwrap_or_default();
                        // Subscriptions renewed after a reconnect end with
                        // the error; new ones were answered above.
                        let locals: Vec<u64> = self
                            .subs
                            .iter()
                            .filter(|(_, s)| s.pattern.as_str() == pattern)
                            .map(|(id, _)| *id)
                            .collect();
                        for id in locals {
                            if let Some(s) = self.subs.remove(&id)
                                && !waiting.contains(&id)
                            {
                                s.queue.end(Error::Remote(e.clone()));
                            }
                        }
                    }
                }
            }
            Pending::Auth | Pending::Unsubscribe | Pending::Refresh => {
                if let Err(e) = r.outcome {
                    debug!(error = %e, "background request failed");
                }
            }
        }
    }

    fn on_event(&mut self, params: &RawValue) {
        let Ok(p) = params.decode::<EventParams>() else {
            return;
        };
        let mut publication: Option<Publication> = None;
        for sub in self
            .subs
            .values()
            .filter(|s| s.pattern.matches_str(p.topic))
        {
            let item = publication.get_or_insert_with(|| Publication {
                topic: p.topic.into(),
                data: params.slice_ref(p.data),
                from: p.from.map(Into::into),
            });
            sub.queue.push(Event::Message(item.clone()));
        }
    }

    /// The socket is gone: calls in flight fail (they may or may not have
    /// taken effect, so they are not resent); subscriptions will be renewed.
    fn connection_lost(&mut self) {
        for (_, p) in self.pending.drain() {
            match p {
                Pending::Call(reply) => {
                    let _ = reply.send(Err(Error::ConnectionLost));
                }
                Pending::Stream { sink, .. } => sink.fail(Error::ConnectionLost),
                _ => {}
            }
        }
        for s in self.server_subs.values_mut() {
            s.confirmed = false;
        }
        self.refresh = None;
    }

    /// Closed for good: everything waiting learns why.
    fn finish(mut self, code: Option<u16>, err: Error, reason: &str) {
        if let Ok(mut c) = self.closed_code.lock() {
            *c = code;
        }
        for cmd in self.queued.drain(..) {
            match cmd {
                Command::Call { reply, .. } => {
                    let _ = reply.send(Err(err.clone()));
                }
                Command::Stream { sink, .. } => sink.fail(err.clone()),
                _ => {}
            }
        }
        for (_, s) in self.server_subs.drain() {
            for (_, w) in s.waiters {
                let _ = w.send(Err(err.clone()));
            }
        }
        for (_, s) in self.subs.drain() {
            s.queue.end(err.clone());
        }
        self.state.send_replace(ConnectionState::Closed {
            code,
            reason: reason.to_owned(),
        });
    }
}
