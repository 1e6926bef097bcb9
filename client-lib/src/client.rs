//! The public client and the driver task behind it.
//!
//! One spawned task owns the link, the outbound queue and the reconnect loop; the
//! [`Client`] handle talks to it over a channel, so every decision about the link is made in
//! one place and in order.

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::Stream;
use parking_lot::Mutex;
use rand::SeedableRng;
use rand::rngs::StdRng;
use switchyard_proto::v1;
use switchyard_proto::wire::Frame;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, sleep_until, timeout, timeout_at};
use tokio_stream::wrappers::BroadcastStream;

use crate::config::{Builder, Config, Effective};
use crate::heartbeat::{Adaptive, Due, Heartbeat};
use crate::outbox::Outbox;
use crate::race::{AttemptError, Outcome, RaceSettings, race};
use crate::routing::{
    CachedList, FailureLog, Gateway, RouteSource, RouterPolicy, Routers, order_fallback, unix_ms,
};
use crate::transport::{Dialer, LinkRx, LinkTx};
use switchyard_proto::backoff::uniform;

/// What happened to the connection; see [`Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An attempt to get a link starts (routing, then racing).
    Connecting,
    /// A gateway accepted the HELLO; `attempt` counts the attempts it took (1 = first try).
    Connected {
        /// Gateway id.
        gateway: String,
        /// Attempts since the last link (or since `connect()`).
        attempt: u32,
    },
    /// The link is gone.
    Disconnected {
        /// Why (`heartbeat timeout`, `closed by gateway`, `goaway: ...`, ...).
        reason: String,
    },
    /// The next attempt starts after `delay`.
    Reconnecting {
        /// Number of the coming attempt.
        attempt: u32,
        /// Wait before it (random spread or full-jitter backoff).
        delay: Duration,
    },
    /// The gateway sent KICK: terminal, no automatic reconnect.
    Kicked {
        /// Kick code.
        code: v1::KickCode,
        /// The gateway's reason.
        reason: String,
    },
    /// Terminal: limits reached or the credentials were refused.
    GaveUp {
        /// Why.
        reason: String,
    },
}

impl Event {
    /// Lower-case event name (`connecting`, `connected`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected { .. } => "connected",
            Self::Disconnected { .. } => "disconnected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Kicked { .. } => "kicked",
            Self::GaveUp { .. } => "gave_up",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Self::Connecting => Ok(()),
            Self::Connected { gateway, attempt } => {
                write!(f, " gateway={gateway} attempt={attempt}")
            }
            Self::Disconnected { reason } | Self::GaveUp { reason } => {
                write!(f, " reason={reason:?}")
            }
            Self::Reconnecting { attempt, delay } => {
                write!(f, " attempt={attempt} delay={}ms", delay.as_millis())
            }
            Self::Kicked { code, reason } => {
                write!(f, " code={} reason={reason:?}", code.as_str_name())
            }
        }
    }
}

/// Why `connect()` or the client as a whole ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// `connect()` runs once per client.
    #[error("connect() was already called on this client")]
    AlreadyStarted,
    /// Limits reached or credentials refused.
    #[error("gave up: {0}")]
    GaveUp(String),
    /// Kicked by the gateway.
    #[error("kicked ({}): {reason}", code.as_str_name())]
    Kicked {
        /// Kick code.
        code: v1::KickCode,
        /// The gateway's reason.
        reason: String,
    },
    /// `close()` was called or every handle was dropped.
    #[error("client closed")]
    Closed,
}

/// `send()` could not queue the message; the payload is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// No link and no room within the send timeout.
    #[error("send timed out waiting for a link or queue room")]
    Timeout(Bytes),
    /// The client has ended (closed, kicked, gave up).
    #[error("client ended: {1}")]
    Ended(Bytes, Error),
}

/// A message that was queued but never acknowledged: handed back on `GaveUp`, `Kicked` or
/// `close()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undelivered ({} bytes): {reason}", payload.len())]
pub struct Undelivered {
    /// The application bytes.
    pub payload: Bytes,
    /// Why it was given up.
    pub reason: Error,
}

/// Resolves when the gateway acknowledged the message, or with the message handed back.
#[derive(Debug)]
pub struct Receipt {
    /// Sequence number the message travels under.
    seq: u64,
    /// Answered by the driver exactly once.
    rx: oneshot::Receiver<Result<(), Undelivered>>,
}

impl Receipt {
    /// The message's sequence number (continuous across reconnects).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl Future for Receipt {
    type Output = Result<(), Undelivered>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| {
            r.unwrap_or_else(|_| {
                Err(Undelivered {
                    payload: Bytes::new(),
                    reason: Error::Closed,
                })
            })
        })
    }
}

/// Received application messages (DATA payloads), in order; ends when the client ends.
#[derive(Debug)]
pub struct Messages {
    /// Fed by the driver; bounded so a slow reader slows the link instead of growing memory.
    rx: mpsc::Receiver<Bytes>,
}

impl Messages {
    /// The next message, or `None` once the client has ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl Stream for Messages {
    type Item = Bytes;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Bytes>> {
        self.rx.poll_recv(cx)
    }
}

/// Connection events from the moment [`Client::events`] was called.
#[derive(Debug)]
pub struct Events {
    /// Lagging subscribers skip what they missed (logged) rather than block the driver.
    inner: BroadcastStream<Event>,
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        loop {
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(e))) => return Poll::Ready(Some(e)),
                Poll::Ready(Some(Err(e))) => tracing::warn!(error = %e, "event subscriber lagged"),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Delivery counters since the client was built (see [`Client::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages accepted by `send()`.
    pub queued: u64,
    /// Messages covered by a gateway ACK.
    pub acked: u64,
    /// Frames written again on a new link because no ACK covered them.
    pub resent: u64,
    /// Messages handed back as undelivered.
    pub handed_back: u64,
    /// Lowest sequence number resent on the most recent new link (0: none yet). Receivers
    /// may see duplicates only from here on.
    pub last_resend_from: u64,
}

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Status {
    /// `connect()` not called yet.
    Idle,
    /// Between links.
    Connecting,
    /// On a gateway.
    Connected(String),
    /// Ended for good.
    Ended(Error),
}

/// State shared between the handles and the driver.
#[derive(Debug)]
struct Common {
    /// Event fan-out.
    events: broadcast::Sender<Event>,
    /// Current status; `send()` and `connect()` wait on it.
    status: watch::Sender<Status>,
    /// Free places in the outbound queue; closed when the client ends.
    room: Arc<Semaphore>,
    /// Source of the last candidate list (for apps and tests to see fallbacks happen).
    route_source: Mutex<Option<RouteSource>>,
    /// Adaptive heartbeat memory, when on.
    adaptive: Mutex<Option<Adaptive>>,
    /// Every event in order, so apps (and tests) can read the history after the fact.
    history: Mutex<VecDeque<Event>>,
    /// Delivery counters.
    stats: Mutex<Stats>,
}

impl Common {
    const HISTORY: usize = 256;

    fn emit(&self, e: Event) {
        tracing::info!(event = %e, "client event");
        let mut h = self.history.lock();
        if h.len() == Self::HISTORY {
            h.pop_front();
        }
        h.push_back(e.clone());
        drop(h);
        let _ = self.events.send(e);
    }
}

/// Requests from the handles to the driver.
#[derive(Debug)]
enum Command {
    /// Queue one DATA frame.
    Send {
        /// Application bytes.
        payload: Bytes,
        /// Answered on ACK or give-up.
        done: oneshot::Sender<Result<(), Undelivered>>,
        /// Tells the handle the sequence number.
        seq: oneshot::Sender<u64>,
    },
    /// Drop the link and reconnect now, with fresh backoff.
    NetworkChanged(Option<String>),
    /// Stop; reply with every unacknowledged payload.
    Close(oneshot::Sender<Vec<Bytes>>),
}

/// The Switchyard client: a long connection to the best gateway, kept alive and moved when
/// needed. Cheap to clone; the client stops when `close()` is called or every clone is gone.
#[derive(Debug, Clone)]
pub struct Client {
    /// Shared with the driver.
    common: Arc<Common>,
    /// Settings (read by `send()` for its timeout).
    config: Arc<Config>,
    /// To the driver; dropping the last handle closes it and stops the driver.
    commands: mpsc::UnboundedSender<Command>,
    /// Taken by the one `connect()` call.
    start: Arc<Mutex<Option<mpsc::UnboundedReceiver<Command>>>>,
}

impl Client {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::new()
    }

    pub(crate) fn new(config: Config) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let adaptive = config.adaptive.map(Adaptive::new);
        Self {
            common: Arc::new(Common {
                events: broadcast::channel(256).0,
                status: watch::channel(Status::Idle).0,
                room: Arc::new(Semaphore::new(config.max_unacked)),
                route_source: Mutex::new(None),
                adaptive: Mutex::new(adaptive),
                history: Mutex::new(VecDeque::new()),
                stats: Mutex::new(Stats::default()),
            }),
            config: Arc::new(config),
            commands: tx,
            start: Arc::new(Mutex::new(Some(rx))),
        }
    }

    /// Events from now on (subscribe before `connect()` to see the first ones).
    pub fn events(&self) -> Events {
        Events {
            inner: BroadcastStream::new(self.common.events.subscribe()),
        }
    }

    /// Every event so far (the most recent 256), oldest first.
    pub fn history(&self) -> Vec<Event> {
        self.common.history.lock().iter().cloned().collect()
    }

    /// Routes, races and logs in; returns once a gateway accepted (the client then keeps the
    /// link up by itself) or with the terminal reason. Must run inside a tokio runtime.
    pub async fn connect(&self) -> Result<Messages, Error> {
        let commands = self.start.lock().take().ok_or(Error::AlreadyStarted)?;
        let (inbound_tx, inbound_rx) = mpsc::channel(self.config.inbound_buffer);
        let mut status = self.common.status.subscribe();
        self.common.status.send_replace(Status::Connecting);
        let driver = Driver::new(
            self.config.clone(),
            self.common.clone(),
            commands,
            inbound_tx,
        );
        tokio::spawn(driver.run());
        loop {
            match &*status.borrow_and_update() {
                Status::Connected(_) => return Ok(Messages { rx: inbound_rx }),
                Status::Ended(e) => return Err(e.clone()),
                Status::Idle | Status::Connecting => {}
            }
            if status.changed().await.is_err() {
                return Err(Error::Closed);
            }
        }
    }

    /// Queues `payload` as one numbered DATA frame. Waits (up to the send timeout) while there
    /// is no link or the queue is full. The returned [`Receipt`] resolves on the gateway's
    /// ACK, or hands the payload back if the client ends first.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<Receipt, SendError> {
        let payload = payload.into();
        let deadline = Instant::now() + self.config.send_timeout;
        let mut status = self.common.status.subscribe();
        loop {
            match &*status.borrow_and_update() {
                Status::Connected(_) => break,
                Status::Ended(e) => return Err(SendError::Ended(payload, e.clone())),
                Status::Idle | Status::Connecting => {}
            }
            match timeout_at(deadline, status.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(SendError::Ended(payload, Error::Closed)),
                Err(_) => return Err(SendError::Timeout(payload)),
            }
        }
        match timeout_at(deadline, self.common.room.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit.forget(),
            Ok(Err(_)) => return Err(SendError::Ended(payload, self.ended())),
            Err(_) => return Err(SendError::Timeout(payload)),
        }
        let (done, rx) = oneshot::channel();
        let (seq_tx, seq_rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(Command::Send { payload, .. })) =
            self.commands.send(Command::Send {
                payload,
                done,
                seq: seq_tx,
            })
        {
            return Err(SendError::Ended(payload, self.ended()));
        }
        let seq = seq_rx.await.unwrap_or(0);
        Ok(Receipt { seq, rx })
    }

    fn ended(&self) -> Error {
        match &*self.common.status.borrow() {
            Status::Ended(e) => e.clone(),
            _ => Error::Closed,
        }
    }

    /// The device moved to another network: drop the link, forget recent failures, reset
    /// the backoff and reconnect now. `network` (when given) becomes the label sent to the
    /// router and the adaptive heartbeat key.
    pub fn network_changed(&self, network: Option<String>) {
        let _ = self.commands.send(Command::NetworkChanged(network));
    }

    /// Stops everything; returns every payload that was not acknowledged (their receipts
    /// resolve as undelivered too).
    pub async fn close(&self) -> Vec<Bytes> {
        if self.start.lock().take().is_some() {
            // Never started: nothing to stop.
            self.common
                .status
                .send_replace(Status::Ended(Error::Closed));
            self.common.room.close();
            return Vec::new();
        }
        let (tx, rx) = oneshot::channel();
        if self.commands.send(Command::Close(tx)).is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// The gateway currently connected to.
    pub fn gateway(&self) -> Option<String> {
        match &*self.common.status.borrow() {
            Status::Connected(g) => Some(g.clone()),
            _ => None,
        }
    }

    /// Delivery counters: queued, acknowledged, resent, handed back.
    pub fn stats(&self) -> Stats {
        *self.common.stats.lock()
    }

    /// Where the last candidate list came from (router, cache or bootstrap).
    pub fn route_source(&self) -> Option<RouteSource> {
        *self.common.route_source.lock()
    }

    /// The adaptive heartbeat's current interval for `network` (`None` when adaptive is off).
    pub fn learned_heartbeat(&self, network: &str) -> Option<Duration> {
        self.common
            .adaptive
            .lock()
            .as_ref()
            .map(|a| a.interval(network))
    }
}

/// How a link ended.
#[derive(Debug)]
enum End {
    /// Application close (or every handle dropped).
    Closed(Option<oneshot::Sender<Vec<Bytes>>>),
    /// Broken; reconnect after the spread.
    Lost(String),
    /// GOAWAY window reached; reconnect now, elsewhere.
    GoAway(String),
    /// `network_changed()`.
    NetworkChanged,
    /// Terminal KICK.
    Kicked(v1::Kick),
}

/// How one connection attempt (route + race) ended.
enum Attempted {
    Won(LinkTx, LinkRx, v1::Welcome, Gateway),
    Terminal(String),
    Exhausted(Vec<(Gateway, String)>),
    Interrupted(End),
}

/// What stopped a wait between attempts.
enum Pause {
    Elapsed,
    Interrupted(End),
}

/// The task that owns the link.
struct Driver {
    /// Settings.
    cfg: Arc<Config>,
    /// Shared with the handles.
    common: Arc<Common>,
    /// From the handles.
    commands: mpsc::UnboundedReceiver<Command>,
    /// To the application.
    inbound: mpsc::Sender<Bytes>,
    /// Unacknowledged frames, resent on every new link.
    outbox: Outbox<oneshot::Sender<Result<(), Undelivered>>>,
    /// gRPC clients (`None` when only bootstrap gateways are configured).
    routers: Option<Routers>,
    /// Last good router answer.
    cache: Option<CachedList>,
    /// Recently failed gateways.
    failures: FailureLog,
    /// What the router asked for last.
    router_policy: RouterPolicy,
    /// Current network label.
    network: String,
    /// Session id from the last WELCOME, offered for resumption in the next HELLO.
    session_id: String,
    /// Jitter source.
    rng: StdRng,
    /// Highest sequence number ever written: anything at or below it on a new link is a resend.
    written_high: u64,
    /// Opens links.
    dialer: Dialer,
}

impl Driver {
    fn new(
        cfg: Arc<Config>,
        common: Arc<Common>,
        commands: mpsc::UnboundedReceiver<Command>,
        inbound: mpsc::Sender<Bytes>,
    ) -> Self {
        let routers = if cfg.routers.is_empty() {
            None
        } else {
            match Routers::new(&cfg.routers, cfg.route_timeout) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "router endpoints unusable; using cache and bootstrap only");
                    None
                }
            }
        };
        let cache = cfg.cache_file.as_deref().and_then(CachedList::load);
        let router_policy = cache.as_ref().map(|c| c.policy).unwrap_or_default();
        Self {
            dialer: Dialer {
                protocol: cfg.protocol,
                tls: cfg.tls.clone(),
                keepalive: cfg.keepalive,
                max_frame: cfg.max_frame,
            },
            network: cfg.network.clone(),
            cfg,
            common,
            commands,
            inbound,
            outbox: Outbox::default(),
            routers,
            cache,
            failures: FailureLog::default(),
            router_policy,
            session_id: String::new(),
            rng: StdRng::from_os_rng(),
            written_high: 0,
        }
    }

    fn effective(&self) -> Effective {
        Effective::merge(&self.cfg.overrides, &self.router_policy)
    }

    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let mut since = Instant::now();
        let mut delay: Option<Duration> = None;
        loop {
            if let Some(d) = delay.take() {
                self.common.emit(Event::Reconnecting {
                    attempt: attempt + 1,
                    delay: d,
                });
                if let Pause::Interrupted(end) = self.pause(d).await {
                    match end {
                        End::NetworkChanged => {
                            attempt = 0;
                            since = Instant::now();
                        }
                        End::Closed(reply) => return self.finish(Error::Closed, reply),
                        other => {
                            unreachable!("pause ends only by close or network change: {other:?}")
                        }
                    }
                }
            }
            attempt += 1;
            self.common.status.send_replace(Status::Connecting);
            self.common.emit(Event::Connecting);
            let list = self.candidates().await;
            match self.attempt(&list).await {
                Attempted::Won(tx, rx, welcome, gw) => {
                    self.common.emit(Event::Connected {
                        gateway: gw.id.clone(),
                        attempt,
                    });
                    metrics::counter!("switchyard_client_connects_total").increment(1);
                    self.common
                        .status
                        .send_replace(Status::Connected(gw.id.clone()));
                    attempt = 0;
                    let end = self.session(tx, rx, &gw, &welcome).await;
                    since = Instant::now();
                    match end {
                        End::Closed(reply) => {
                            self.common.emit(Event::Disconnected {
                                reason: "closed by the application".into(),
                            });
                            return self.finish(Error::Closed, reply);
                        }
                        End::Kicked(k) => {
                            let code = v1::KickCode::try_from(k.code).unwrap_or_default();
                            self.common.emit(Event::Kicked {
                                code,
                                reason: k.reason.clone(),
                            });
                            return self.finish(
                                Error::Kicked {
                                    code,
                                    reason: k.reason,
                                },
                                None,
                            );
                        }
                        End::Lost(reason) => {
                            metrics::counter!("switchyard_client_links_lost_total").increment(1);
                            self.common.emit(Event::Disconnected {
                                reason: reason.clone(),
                            });
                            self.fail(&gw.id, &reason, true);
                            delay = Some(uniform(self.effective().reconnect_spread, &mut self.rng));
                        }
                        End::GoAway(reason) => {
                            self.common.emit(Event::Disconnected { reason });
                        }
                        End::NetworkChanged => {
                            self.common.emit(Event::Disconnected {
                                reason: "network changed".into(),
                            });
                            self.failures.clear();
                        }
                    }
                }
                Attempted::Terminal(reason) => {
                    self.common.emit(Event::GaveUp {
                        reason: reason.clone(),
                    });
                    return self.finish(Error::GaveUp(reason), None);
                }
                Attempted::Exhausted(failed) => {
                    let last = failed.last().map_or_else(
                        || "no gateway to try".to_owned(),
                        |(g, r)| format!("{}: {r}", g.id),
                    );
                    for (g, r) in &failed {
                        // A refusal is not a network fault: avoid it, but do not report it.
                        self.fail(&g.id, r, !r.starts_with("rejected"));
                    }
                    let eff = self.effective();
                    let over_attempts = eff.max_attempts.is_some_and(|m| attempt >= m);
                    let over_time = self.cfg.max_elapsed.is_some_and(|m| since.elapsed() >= m);
                    if over_attempts || over_time {
                        let reason = format!(
                            "{attempt} attempts failed in {:?}; last: {last}",
                            since.elapsed()
                        );
                        self.common.emit(Event::GaveUp {
                            reason: reason.clone(),
                        });
                        return self.finish(Error::GaveUp(reason), None);
                    }
                    delay = Some(eff.backoff.delay(attempt, &mut self.rng));
                }
                Attempted::Interrupted(End::Closed(reply)) => {
                    return self.finish(Error::Closed, reply);
                }
                Attempted::Interrupted(_) => {
                    // Network changed mid-attempt: fresh start at once.
                    attempt = 0;
                    since = Instant::now();
                    self.failures.clear();
                }
            }
        }
    }

    fn fail(&mut self, id: &str, reason: &str, report: bool) {
        let now = Instant::now();
        let at = if report {
            unix_ms(SystemTime::now())
        } else {
            0
        };
        self.failures
            .record(id, reason, now, at, self.cfg.exclude_for);
    }

    /// Handles commands while waiting `d`.
    async fn pause(&mut self, d: Duration) -> Pause {
        let until = Instant::now() + d;
        loop {
            tokio::select! {
                _ = sleep_until(until) => return Pause::Elapsed,
                cmd = self.commands.recv() => {
                    if let Some(end) = self.between_links(cmd) {
                        return Pause::Interrupted(end);
                    }
                }
            }
        }
    }

    /// A command while no link is up: sends are queued for the next link.
    fn between_links(&mut self, cmd: Option<Command>) -> Option<End> {
        match cmd {
            Some(Command::Send { payload, done, seq }) => {
                let _ = seq.send(self.outbox.push(payload, done));
                self.common.stats.lock().queued += 1;
                None
            }
            Some(Command::NetworkChanged(n)) => {
                if let Some(n) = n {
                    self.network = n;
                }
                self.failures.clear();
                Some(End::NetworkChanged)
            }
            Some(Command::Close(reply)) => Some(End::Closed(Some(reply))),
            None => Some(End::Closed(None)),
        }
    }

    /// Router, else valid cache, else bootstrap.
    async fn candidates(&mut self) -> Vec<Gateway> {
        let now = Instant::now();
        self.failures.expire(now);
        let exclude = self.failures.excluded(now);
        if let Some(routers) = &mut self.routers {
            let req = v1::RouteRequest {
                client_id: self.cfg.client_id.clone(),
                region: self.cfg.region.clone(),
                zone: self.cfg.zone.clone(),
                protocol: self.cfg.protocol.name().into(),
                network: self.network.clone(),
                limit: self.cfg.route_limit,
                exclude: exclude.clone(),
                failures: self.failures.report(now),
                explain: false,
                dry_run: false,
            };
            match routers.route(&req).await {
                Ok(resp) if !resp.gateways.is_empty() => {
                    let cached = CachedList::from_answer(
                        &resp,
                        unix_ms(SystemTime::now()),
                        self.cfg.cache_max_age,
                    );
                    self.router_policy = cached.policy;
                    if let Some(path) = &self.cfg.cache_file
                        && let Err(e) = cached.save(path)
                    {
                        tracing::warn!(path = %path.display(), error = %e, "cannot write gateway cache");
                    }
                    let list = cached.gateways.clone();
                    self.cache = Some(cached);
                    return self.chose(list, RouteSource::Router);
                }
                Ok(_) => tracing::warn!("router answered with no gateway"),
                Err(e) => tracing::warn!(error = %e, "routing failed; falling back"),
            }
        }
        if let Some(c) = &self.cache
            && c.is_valid(unix_ms(SystemTime::now()))
        {
            let list = order_fallback(&c.gateways, &exclude);
            return self.chose(list, RouteSource::Cache);
        }
        let list = order_fallback(&self.cfg.bootstrap, &exclude);
        self.chose(list, RouteSource::Bootstrap)
    }

    fn chose(&self, list: Vec<Gateway>, source: RouteSource) -> Vec<Gateway> {
        tracing::debug!(
            source = source.name(),
            candidates = list.len(),
            "candidate list"
        );
        metrics::counter!("switchyard_client_routes_total", "source" => source.name()).increment(1);
        *self.common.route_source.lock() = Some(source);
        list
    }

    /// Token, then the staggered race; commands are served meanwhile.
    async fn attempt(&mut self, list: &[Gateway]) -> Attempted {
        let token_fut = (self.cfg.token)();
        let token = tokio::select! {
            t = token_fut => t,
            cmd = self.commands.recv() => match self.between_links(cmd) {
                Some(end) => return Attempted::Interrupted(end),
                None => Box::pin((self.cfg.token)()).await,
            },
        };
        let token = match token {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(error = %e, "token provider failed");
                return Attempted::Exhausted(vec![]);
            }
        };
        let hello = v1::Hello {
            client_id: self.cfg.client_id.clone(),
            token,
            session_id: self.session_id.clone(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        };
        let settings = RaceSettings {
            delay: self.cfg.race_delay,
            max_in_flight: self.cfg.race_max_in_flight,
        };
        let dialer = self.dialer.clone();
        let limit = self.cfg.connect_timeout;
        let race_fut = race(list.len(), settings, |i| {
            let address = list[i].address.clone();
            let hello = hello.clone();
            let dialer = dialer.clone();
            async move {
                match timeout(limit, handshake(&dialer, &address, hello)).await {
                    Ok(r) => r,
                    Err(_) => Err(AttemptError::Next(format!("no WELCOME within {limit:?}"))),
                }
            }
        });
        tokio::pin!(race_fut);
        loop {
            tokio::select! {
                out = &mut race_fut => {
                    return match out {
                        Outcome::Won { index, value: (tx, rx, welcome), failures } => {
                            for (i, r) in failures {
                                self.fail(&list[i].id, &r, !r.starts_with("rejected"));
                            }
                            Attempted::Won(tx, rx, welcome, list[index].clone())
                        }
                        Outcome::Terminal { reason } => Attempted::Terminal(reason),
                        Outcome::Exhausted { failures } => Attempted::Exhausted(
                            failures.into_iter().map(|(i, r)| (list[i].clone(), r)).collect(),
                        ),
                    };
                }
                cmd = self.commands.recv() => {
                    if let Some(end) = self.between_links(cmd) {
                        return Attempted::Interrupted(end);
                    }
                }
            }
        }
    }

    /// Runs one established link until it ends.
    async fn session(
        &mut self,
        mut tx: LinkTx,
        mut rx: LinkRx,
        gw: &Gateway,
        welcome: &v1::Welcome,
    ) -> End {
        self.session_id = welcome.session_id.clone();
        let eff = self.effective();
        // Precedence: local setting, router policy, the gateway's WELCOME, the default.
        let told = self
            .cfg
            .overrides
            .heartbeat_interval
            .or(self.router_policy.heartbeat_interval);
        let mut interval = match (self.common.adaptive.lock().as_ref(), told) {
            (Some(a), _) => a.interval(&self.network),
            (None, Some(i)) => i,
            (None, None) if welcome.heartbeat_interval_ms > 0 => {
                Duration::from_millis(welcome.heartbeat_interval_ms)
            }
            (None, None) => eff.heartbeat_interval,
        };
        if welcome.idle_timeout_ms > 0 {
            // The gateway reaps links silent for its idle timeout: PING well before that.
            let idle = Duration::from_millis(welcome.idle_timeout_ms);
            interval = interval.min(idle * 2 / 3);
        }
        let hb_timeout = eff.heartbeat_timeout;
        let mut hb = Heartbeat::new(Instant::now(), interval, hb_timeout);
        let max_frame = self.cfg.max_frame;
        // Everything unacknowledged goes out again first, in order (at-least-once).
        self.outbox.relink();
        let unsent = self.outbox.take_unsent();
        let resends: Vec<u64> = unsent
            .iter()
            .map(|(seq, _)| *seq)
            .filter(|seq| *seq <= self.written_high)
            .collect();
        if let Some(first) = resends.first() {
            let mut st = self.common.stats.lock();
            st.resent += resends.len() as u64;
            st.last_resend_from = *first;
            metrics::counter!("switchyard_client_resent_total").increment(resends.len() as u64);
        }
        for (seq, payload) in unsent {
            if let Err(e) = write(&mut tx, Frame::Data { seq, payload }, hb_timeout).await {
                return End::Lost(e);
            }
            self.written_high = self.written_high.max(seq);
            hb.on_send(Instant::now());
        }
        let mut recv_high = 0u64;
        let mut goaway: Option<(Instant, String)> = None;
        loop {
            let (deadline, due) = hb.next();
            let goaway_at = goaway.as_ref().map(|(t, _)| *t);
            tokio::select! {
                frame = rx.recv(max_frame) => {
                    let now = Instant::now();
                    let probing = hb.probing();
                    let frame = match frame {
                        None => return End::Lost("closed by gateway".into()),
                        Some(Err(e)) => return End::Lost(format!("read: {e}")),
                        Some(Ok(f)) => f,
                    };
                    hb.on_receive(now);
                    if probing && let Some(a) = self.common.adaptive.lock().as_mut() {
                        a.on_success(&self.network);
                    }
                    match frame {
                        Frame::Data { seq, payload } => {
                            // A dropped `Messages` only means the app stopped listening.
                            let _ = self.inbound.send(payload).await;
                            if seq != 0 {
                                recv_high = recv_high.max(seq);
                                if let Err(e) = write(&mut tx, Frame::Ack(recv_high), hb_timeout).await {
                                    return End::Lost(e);
                                }
                                hb.on_send(Instant::now());
                            }
                        }
                        Frame::Ack(n) => {
                            let released = self.outbox.ack(n);
                            let count = released.len();
                            self.common.stats.lock().acked += count as u64;
                            for done in released {
                                let _ = done.send(Ok(()));
                            }
                            self.common.room.add_permits(count);
                        }
                        Frame::Ping(p) => {
                            if let Err(e) = write(&mut tx, Frame::Pong(p), hb_timeout).await {
                                return End::Lost(e);
                            }
                            hb.on_send(Instant::now());
                        }
                        Frame::Pong(_) => {}
                        Frame::Kick(k) => return End::Kicked(k),
                        Frame::GoAway(g) => {
                            if goaway.is_none() {
                                let window = Duration::from_millis(g.reconnect_within_ms);
                                let at = now + uniform(window, &mut self.rng);
                                tracing::info!(gateway = %gw.id, reason = %g.reason, in_ms = (at - now).as_millis() as u64, "GOAWAY: moving");
                                // Exclude the draining gateway, but do not report it as failed.
                                self.fail(&gw.id, "goaway", false);
                                goaway = Some((at, format!("goaway: {}", g.reason)));
                            }
                        }
                        Frame::Reject(r) => {
                            return End::Lost(format!("REJECT after WELCOME: {}", r.reason));
                        }
                        Frame::Hello(_) | Frame::Welcome(_) => {
                            return End::Lost("unexpected HELLO/WELCOME on an open link".into());
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Send { payload, done, seq }) => {
                        let _ = seq.send(self.outbox.push(payload, done));
                        self.common.stats.lock().queued += 1;
                        for (seq, payload) in self.outbox.take_unsent() {
                            if let Err(e) = write(&mut tx, Frame::Data { seq, payload }, hb_timeout).await {
                                return End::Lost(e);
                            }
                            self.written_high = self.written_high.max(seq);
                            hb.on_send(Instant::now());
                        }
                    }
                    Some(Command::NetworkChanged(n)) => {
                        if let Some(n) = n {
                            self.network = n;
                        }
                        let _ = timeout(hb_timeout, tx.close()).await;
                        return End::NetworkChanged;
                    }
                    Some(Command::Close(reply)) => {
                        let _ = timeout(hb_timeout, tx.close()).await;
                        return End::Closed(Some(reply));
                    }
                    None => {
                        let _ = timeout(hb_timeout, tx.close()).await;
                        return End::Closed(None);
                    }
                },
                _ = sleep_until(deadline) => match due {
                    Due::Ping => {
                        if let Err(e) = write(&mut tx, Frame::Ping(Bytes::new()), hb_timeout).await {
                            return End::Lost(e);
                        }
                        hb.on_ping(Instant::now());
                    }
                    Due::Dead => {
                        metrics::counter!("switchyard_client_heartbeat_timeouts_total").increment(1);
                        if let Some(a) = self.common.adaptive.lock().as_mut() {
                            a.on_failure(&self.network);
                        }
                        return End::Lost(format!(
                            "heartbeat timeout (interval {:?}, timeout {:?})",
                            hb.interval(),
                            hb_timeout
                        ));
                    }
                },
                _ = sleep_until(goaway_at.unwrap_or(deadline)), if goaway_at.is_some() => {
                    let _ = timeout(hb_timeout, tx.close()).await;
                    let reason = goaway.take().map(|(_, r)| r).unwrap_or_default();
                    return End::GoAway(reason);
                }
            }
        }
    }

    /// Ends the client: every unacknowledged or still queued payload is handed back.
    fn finish(mut self, why: Error, reply: Option<oneshot::Sender<Vec<Bytes>>>) {
        self.common.room.close();
        let mut failed = Vec::new();
        for (payload, done) in self.outbox.drain() {
            failed.push(payload.clone());
            let _ = done.send(Err(Undelivered {
                payload,
                reason: why.clone(),
            }));
        }
        self.commands.close();
        let mut late_closers = Vec::new();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Send { payload, done, seq } => {
                    let _ = seq.send(0);
                    self.common.stats.lock().queued += 1;
                    failed.push(payload.clone());
                    let _ = done.send(Err(Undelivered {
                        payload,
                        reason: why.clone(),
                    }));
                }
                Command::Close(r) => late_closers.push(r),
                Command::NetworkChanged(_) => {}
            }
        }
        self.common.stats.lock().handed_back += failed.len() as u64;
        self.common.status.send_replace(Status::Ended(why));
        if let Some(r) = reply {
            let _ = r.send(failed);
        }
        for r in late_closers {
            let _ = r.send(Vec::new());
        }
    }
}

/// Writes one frame; a write that cannot finish within `limit` means a dead link (a frozen
/// peer stops reading and the socket buffer fills).
async fn write(tx: &mut LinkTx, frame: Frame, limit: Duration) -> Result<(), String> {
    match timeout(limit, tx.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("write: {e}")),
        Err(_) => Err(format!("write blocked for {limit:?}")),
    }
}

/// Dial, HELLO, and wait for WELCOME or REJECT.
async fn handshake(
    dialer: &Dialer,
    address: &str,
    hello: v1::Hello,
) -> Result<(LinkTx, LinkRx, v1::Welcome), AttemptError> {
    let next = |e: String| AttemptError::Next(e);
    let (mut tx, mut rx) = dialer
        .dial(address)
        .await
        .map_err(|e| next(format!("connect {address}: {e}")))?;
    tx.send(Frame::Hello(hello))
        .await
        .map_err(|e| next(format!("HELLO to {address}: {e}")))?;
    match rx.recv(dialer.max_frame).await {
        Some(Ok(Frame::Welcome(w))) => Ok((tx, rx, w)),
        Some(Ok(Frame::Reject(r))) => {
            let code = v1::RejectCode::try_from(r.code).unwrap_or_default();
            match code {
                v1::RejectCode::Auth | v1::RejectCode::BadHello => {
                    Err(AttemptError::Terminal(format!(
                        "{} rejected the login ({}): {}",
                        address,
                        code.as_str_name(),
                        r.reason
                    )))
                }
                _ => Err(next(format!(
                    "rejected ({}): {}",
                    code.as_str_name(),
                    r.reason
                ))),
            }
        }
        Some(Ok(other)) => Err(next(format!(
            "expected WELCOME from {address}, got {}",
            other.kind().name()
        ))),
        Some(Err(e)) => Err(next(format!("read from {address}: {e}"))),
        None => Err(next(format!("{address} closed before WELCOME"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_name_and_details() {
        let lines: Vec<String> = [
            Event::Connecting,
            Event::Connected {
                gateway: "gw-1".into(),
                attempt: 2,
            },
            Event::Reconnecting {
                attempt: 3,
                delay: Duration::from_millis(1500),
            },
            Event::Kicked {
                code: v1::KickCode::LoggedInElsewhere,
                reason: "other device".into(),
            },
            Event::GaveUp {
                reason: "3 attempts".into(),
            },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            lines,
            [
                "connecting",
                "connected gateway=gw-1 attempt=2",
                "reconnecting attempt=3 delay=1500ms",
                "kicked code=KICK_CODE_LOGGED_IN_ELSEWHERE reason=\"other device\"",
                "gave_up reason=\"3 attempts\"",
            ]
        );
    }
}
