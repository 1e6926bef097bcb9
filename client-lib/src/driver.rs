//! The driver task: the I/O around the reconnect machine. It asks routers, races
//! candidates, runs the link (heartbeats, DATA, ACK, GOAWAY, KICK) and serves the handles'
//! commands meanwhile; every decision about what to do next comes from
//! [`crate::reconnect::Machine`].

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rand::SeedableRng;
use rand::rngs::StdRng;
use switchyard_proto::backoff::uniform;
use switchyard_proto::v1;
use switchyard_proto::wire::Frame;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep_until, timeout};

use crate::client::{Command, Common, Done, Status};
use crate::config::{Config, Effective, HeartbeatSources, heartbeat_ceiling, heartbeat_interval};
use crate::event::{DisconnectCause, Error, Event, Failure, FailureKind};
use crate::heartbeat::{Due, Heartbeat};
use crate::race::{AttemptError, Outcome, RaceSettings, race};
use crate::reconnect::{Input, Limits, Machine, Next, Step};
use crate::routing::{
    CachedList, FailureLog, Gateway, RouteError, RouteSource, RouterPolicy, Routers, Ticket,
    bearer, hello_token, order_fallback, unix_ms,
};
use crate::transport::{Dialer, LinkRx, LinkTx};

/// How long a polite close may take before the link is simply dropped: `close()` must
/// return promptly even when the gateway stopped reading.
const CLOSE_BUDGET: Duration = Duration::from_millis(500);

/// What stopped a wait, a route or a race.
#[derive(Debug)]
enum Interrupt {
    /// `network_changed()`.
    NetworkChanged,
    /// `close()` (with its reply) or every handle dropped (`None`).
    Closed(Option<oneshot::Sender<Vec<Bytes>>>),
    /// The login deadline passed.
    Deadline,
}

/// How a link ended.
#[derive(Debug)]
enum SessionEnd {
    /// Broken, or moved away after a GOAWAY.
    Lost(DisconnectCause),
    /// `network_changed()`.
    NetworkChanged,
    /// `close()` or every handle dropped.
    Closed(Option<oneshot::Sender<Vec<Bytes>>>),
    /// Terminal KICK.
    Kicked(v1::Kick),
}

/// A link that won the race, waiting for its session.
struct Won {
    /// Sending half.
    tx: LinkTx,
    /// Receiving half.
    rx: LinkRx,
    /// The gateway's greeting.
    welcome: v1::Welcome,
    /// Who it is.
    gateway: Gateway,
}

/// The task that owns the link.
pub(crate) struct Driver {
    /// Settings.
    cfg: Arc<Config>,
    /// Shared with the handles.
    common: Arc<Common>,
    /// From the handles.
    commands: mpsc::UnboundedReceiver<Command>,
    /// To the application; never awaited, so a slow reader cannot stall the driver.
    inbound: mpsc::Sender<Bytes>,
    /// A DATA frame read but not yet handed to the app (its buffer was full): the link is
    /// not read, and it is not acknowledged, until the app makes room. Kept across links.
    held: Option<(u64, Bytes)>,
    /// Every decision.
    machine: Machine,
    /// gRPC clients (`None` when only bootstrap gateways are configured).
    routers: Option<Routers>,
    /// Last good router answer.
    cache: Option<CachedList>,
    /// Recently failed gateways.
    failures: FailureLog,
    /// What the router asked for last (already clamped to the policy floors).
    router_policy: RouterPolicy,
    /// The current round's candidates.
    list: Vec<Gateway>,
    /// The login ticket that came with `list` (only from a router answer).
    ticket: Option<Ticket>,
    /// The app token fetched for this round's Route call, reused for its HELLO so one
    /// round calls the token provider once.
    round_token: Option<String>,
    /// The winner of the last race, until its session starts.
    won: Option<Won>,
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
    pub(crate) fn new(
        cfg: Arc<Config>,
        common: Arc<Common>,
        commands: mpsc::UnboundedReceiver<Command>,
        inbound: mpsc::Sender<Bytes>,
    ) -> Self {
        let cache = cfg.cache_file.as_deref().and_then(CachedList::load);
        let routers = if cfg.routers.is_empty() {
            None
        } else {
            let remembered = cache.as_ref().and_then(|c| c.router.as_deref());
            match Routers::new(&cfg.routers, &cfg.router_tls, cfg.route_timeout, remembered) {
                Ok(r) => Some(r),
                Err(e) => {
                    tracing::error!(error = %e, "router endpoints unusable; using cache and bootstrap only");
                    None
                }
            }
        };
        let router_policy = cache.as_ref().map(|c| c.policy).unwrap_or_default();
        let limits = Limits {
            login_deadline: cfg.login_timeout,
            max_elapsed: cfg.max_elapsed,
        };
        Self {
            dialer: Dialer {
                protocol: cfg.protocol,
                tls: cfg.tls.clone(),
                keepalive: cfg.keepalive,
                max_frame: cfg.max_frame,
            },
            network: cfg.network.clone(),
            machine: Machine::new(limits, Instant::now()),
            cfg,
            common,
            commands,
            inbound,
            held: None,
            routers,
            cache,
            failures: FailureLog::default(),
            router_policy,
            list: Vec::new(),
            ticket: None,
            round_token: None,
            won: None,
            session_id: String::new(),
            rng: StdRng::from_os_rng(),
            written_high: 0,
        }
    }

    fn effective(&self) -> Effective {
        Effective::merge(&self.cfg.overrides, &self.router_policy)
    }

    fn feed(&mut self, input: Input) -> Step {
        let eff = self.effective();
        self.machine
            .handle(Instant::now(), input, &eff, &mut self.rng)
    }

    pub(crate) async fn run(mut self) {
        let mut step = self.feed(Input::Start);
        loop {
            let dialing = matches!(step.next, Next::Dial);
            if step.forget {
                self.failures.clear();
            }
            for f in std::mem::take(&mut step.report) {
                self.remember(&f);
            }
            let outcome = match step.next {
                Next::Route { .. } => {
                    self.common.status.send_replace(Status::Connecting);
                    self.common.emit(Event::Connecting);
                    self.route().await
                }
                Next::Dial => self.dial().await,
                Next::Wait {
                    delay,
                    attempt,
                    after,
                } => {
                    self.common.emit(Event::Reconnecting {
                        attempt,
                        delay,
                        after,
                    });
                    match self.guarded(tokio::time::sleep(delay)).await {
                        Ok(()) => {
                            step = Step {
                                report: Vec::new(),
                                forget: false,
                                next: self.machine.waited(),
                            };
                            continue;
                        }
                        Err(i) => Err(i),
                    }
                }
                Next::Session { attempt } => {
                    let won = self.won.take().expect("a session follows a won race");
                    let id = won.gateway.id.clone();
                    self.common.emit(Event::Connected {
                        gateway: id.clone(),
                        attempt,
                    });
                    metrics::counter!("switchyard_client_connects_total").increment(1);
                    self.common
                        .status
                        .send_replace(Status::Connected(id.clone()));
                    let end = self.session(won).await;
                    // No link from here on: `gateway()` and `send()` see it before the event.
                    self.common.status.send_replace(Status::Connecting);
                    match end {
                        SessionEnd::Kicked(k) => {
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
                        SessionEnd::Closed(reply) => {
                            self.common.emit(Event::Disconnected {
                                gateway: id,
                                cause: DisconnectCause::Closed,
                            });
                            return self.finish(Error::Closed, reply);
                        }
                        SessionEnd::NetworkChanged => {
                            self.common.emit(Event::Disconnected {
                                gateway: id,
                                cause: DisconnectCause::NetworkChanged,
                            });
                            Ok(Input::NetworkChanged)
                        }
                        SessionEnd::Lost(cause) => {
                            metrics::counter!("switchyard_client_links_lost_total", "cause" => cause.name())
                                .increment(1);
                            self.common.emit(Event::Disconnected {
                                gateway: id.clone(),
                                cause: cause.clone(),
                            });
                            Ok(Input::Lost { gateway: id, cause })
                        }
                    }
                }
                Next::GiveUp(cause) => {
                    metrics::counter!("switchyard_client_gave_up_total", "cause" => cause.name())
                        .increment(1);
                    self.common.emit(Event::GaveUp {
                        cause: cause.clone(),
                    });
                    return self.finish(Error::GaveUp(cause), None);
                }
            };
            let input = match outcome {
                Ok(input) => input,
                Err(Interrupt::NetworkChanged) => Input::NetworkChanged,
                Err(Interrupt::Deadline) => Input::Deadline {
                    trying: if dialing {
                        self.list.iter().map(|g| g.id.clone()).collect()
                    } else {
                        Vec::new()
                    },
                },
                Err(Interrupt::Closed(reply)) => return self.finish(Error::Closed, reply),
            };
            step = self.feed(input);
        }
    }

    /// Runs `fut` while serving commands; stops early on close, a network change or the
    /// login deadline.
    async fn guarded<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Interrupt> {
        tokio::pin!(fut);
        let deadline = self.machine.give_up_at();
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                cmd = self.commands.recv() => {
                    if let Some(i) = self.between_links(cmd) {
                        return Err(i);
                    }
                }
                () = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    return Err(Interrupt::Deadline);
                }
            }
        }
    }

    /// A command while no link is up: sends are queued for the next link.
    fn between_links(&mut self, cmd: Option<Command>) -> Option<Interrupt> {
        match cmd {
            Some(Command::Send { payload, done, seq }) => {
                self.queue(payload, done, seq);
                None
            }
            Some(Command::NetworkChanged(n)) => {
                if let Some(n) = n {
                    self.network = n;
                }
                Some(Interrupt::NetworkChanged)
            }
            Some(Command::Close(reply)) => Some(Interrupt::Closed(Some(reply))),
            None => Some(Interrupt::Closed(None)),
        }
    }

    fn queue(&mut self, payload: Bytes, done: Done, seq: oneshot::Sender<u64>) {
        let n = self.common.outbox.lock().push(payload, done);
        let _ = seq.send(n);
        self.common.stats.lock().queued += 1;
    }

    /// Excludes a gateway for a while; network faults are also reported to the routers.
    fn remember(&mut self, f: &Failure) {
        tracing::debug!(gateway = %f.gateway, failure = %f.kind, "gateway failed");
        let at = if f.kind.is_fault() {
            unix_ms(SystemTime::now())
        } else {
            0
        };
        self.failures.record(
            &f.gateway,
            &f.kind,
            Instant::now(),
            at,
            self.cfg.exclude_for,
        );
    }

    /// Router (with the app token as bearer), else valid cache, else bootstrap.
    async fn route(&mut self) -> Result<Input, Interrupt> {
        self.ticket = None;
        self.round_token = None;
        let now = Instant::now();
        self.failures.expire(now);
        let exclude = self.failures.excluded(now);
        let routed = match self.routers.clone() {
            Some(routers) => {
                let token = match self.guarded(self.cfg.token.fetch()).await? {
                    Ok(t) => t,
                    Err(e) => return Ok(Input::TokenFailed(e.0)),
                };
                let auth = match bearer(&token) {
                    Ok(b) => b,
                    Err(e) => {
                        metrics::counter!("switchyard_client_bad_tokens_total").increment(1);
                        return Ok(Input::TokenFailed(e.to_string()));
                    }
                };
                self.round_token = Some(token);
                let req = v1::RouteRequest {
                    client_id: self.cfg.client_id.clone(),
                    region: self.cfg.region.clone(),
                    zone: self.cfg.zone.clone(),
                    protocol: self.cfg.protocol.name().into(),
                    network: self.network.clone(),
                    limit: self.cfg.route_limit,
                    exclude: exclude.clone(),
                    failures: self.failures.report(now),
                    ..Default::default()
                };
                self.guarded(async move { routers.route(&req, auth.as_ref()).await })
                    .await?
            }
            None => Err(RouteError::NoRouter),
        };
        let detail = match routed {
            // Never the cache or the bootstrap list here: a revoked login must not hide there.
            Err(RouteError::Refused {
                router,
                denied,
                message,
            }) => {
                return Ok(Input::RouteRefused {
                    router,
                    denied,
                    message,
                });
            }
            Ok((resp, _)) if resp.gateways.is_empty() => "router answered with no gateway".into(),
            Ok((resp, url)) => {
                let mut cached = CachedList::from_answer(
                    &resp,
                    unix_ms(SystemTime::now()),
                    self.cfg.cache_max_age,
                );
                cached.router = Some(url);
                self.router_policy = cached.policy;
                if let Some(path) = &self.cfg.cache_file
                    && let Err(e) = cached.save(path)
                {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write gateway cache");
                }
                self.list = cached.gateways.clone();
                self.cache = Some(cached);
                self.ticket = Ticket::from_answer(&resp, Instant::now());
                return Ok(self.chose(RouteSource::Router, String::new()));
            }
            Err(e) => e.to_string(),
        };
        tracing::warn!(reason = %detail, "routing failed; falling back");
        if let Some(c) = &self.cache
            && c.is_valid(unix_ms(SystemTime::now()))
        {
            self.list = order_fallback(&c.gateways, &exclude);
            return Ok(self.chose(RouteSource::Cache, detail));
        }
        self.list = order_fallback(&self.cfg.bootstrap, &exclude);
        Ok(self.chose(RouteSource::Bootstrap, detail))
    }

    fn chose(&self, source: RouteSource, detail: String) -> Input {
        tracing::debug!(
            source = source.name(),
            candidates = self.list.len(),
            "candidate list"
        );
        metrics::counter!("switchyard_client_routes_total", "source" => source.name()).increment(1);
        *self.common.route_source.lock() = Some(source);
        Input::Candidates {
            count: self.list.len(),
            detail,
        }
    }

    /// The HELLO credential (the round's ticket, else the app token), then the staggered
    /// race over the round's candidates.
    async fn dial(&mut self) -> Result<Input, Interrupt> {
        let app_token = match self.round_token.take() {
            Some(t) => t,
            None => match self.guarded(self.cfg.token.fetch()).await? {
                Ok(t) => t,
                Err(e) => return Ok(Input::TokenFailed(e.0)),
            },
        };
        let hello = v1::Hello {
            client_id: self.cfg.client_id.clone(),
            token: hello_token(self.ticket.as_ref(), &app_token, Instant::now()),
            session_id: self.session_id.clone(),
            client_version: env!("CARGO_PKG_VERSION").into(),
        };
        let settings = RaceSettings {
            delay: self.cfg.race_delay,
            max_in_flight: self.cfg.race_max_in_flight,
        };
        let list = self.list.clone();
        let addresses: Vec<String> = list.iter().map(|g| g.address.clone()).collect();
        let dialer = self.dialer.clone();
        let limit = self.cfg.connect_timeout;
        let race_fut = race(addresses.len(), settings, move |i| {
            let address = addresses[i].clone();
            let hello = hello.clone();
            let dialer = dialer.clone();
            async move {
                match timeout(limit, handshake(&dialer, &address, hello)).await {
                    Ok(r) => r,
                    Err(_) => Err(AttemptError::Next(FailureKind::HandshakeTimeout {
                        after: limit,
                    })),
                }
            }
        });
        let failed = |failures: Vec<(usize, FailureKind)>| -> Vec<Failure> {
            failures
                .into_iter()
                .map(|(i, kind)| Failure {
                    gateway: list[i].id.clone(),
                    kind,
                })
                .collect()
        };
        Ok(match self.guarded(race_fut).await? {
            Outcome::Won {
                index,
                value: (tx, rx, welcome),
                failures,
            } => {
                self.won = Some(Won {
                    tx,
                    rx,
                    welcome,
                    gateway: list[index].clone(),
                });
                Input::Won {
                    failures: failed(failures),
                }
            }
            Outcome::Terminal { index, reason } => match reason {
                FailureKind::Refused { code, reason, .. } => Input::Rejected {
                    gateway: list[index].id.clone(),
                    code,
                    reason,
                },
                other => Input::Exhausted(failed(vec![(index, other)])),
            },
            Outcome::Exhausted { failures } => Input::Exhausted(failed(failures)),
        })
    }

    /// Runs one established link until it ends.
    async fn session(&mut self, won: Won) -> SessionEnd {
        let Won {
            mut tx,
            mut rx,
            welcome,
            gateway: gw,
        } = won;
        self.session_id = welcome.session_id.clone();
        let eff = self.effective();
        let ms = |v: u64| (v > 0).then(|| Duration::from_millis(v));
        let idle_timeout = ms(welcome.idle_timeout_ms);
        let ceiling = heartbeat_ceiling(idle_timeout);
        let learned = self
            .common
            .adaptive
            .lock()
            .as_ref()
            .map(|a| a.interval(&self.network, ceiling));
        let interval = heartbeat_interval(HeartbeatSources {
            local: self.cfg.overrides.heartbeat_interval.or(learned),
            router: self.router_policy.heartbeat_interval,
            welcome: ms(welcome.heartbeat_interval_ms),
            idle_timeout,
        });
        let hb_timeout = eff.heartbeat_timeout;
        let mut hb = Heartbeat::new(Instant::now(), interval, hb_timeout);
        let max_frame = self.cfg.max_frame;
        // Everything unacknowledged goes out again first, in order (at-least-once).
        let unsent = {
            let mut outbox = self.common.outbox.lock();
            outbox.relink();
            outbox.take_unsent()
        };
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
            if let Err(c) = write(&mut tx, Frame::Data { seq, payload }, hb_timeout).await {
                return SessionEnd::Lost(c);
            }
            self.written_high = self.written_high.max(seq);
            hb.on_send(Instant::now());
        }
        if self.held.is_some() {
            hb.pause_listening();
        }
        let mut goaway: Option<(Instant, String)> = None;
        loop {
            let (deadline, due) = hb.next();
            let goaway_at = goaway.as_ref().map(|(t, _)| *t);
            let room = self.inbound.clone().reserve_owned();
            tokio::select! {
                permit = room, if self.held.is_some() => {
                    let (seq, payload) = self.held.take().expect("guarded by the branch condition");
                    hb.resume_listening(Instant::now());
                    if let Ok(permit) = permit {
                        permit.send(payload);
                        self.common.stats.lock().received += 1;
                        if let Err(c) = self.ack(&mut tx, seq, &mut hb, hb_timeout).await {
                            return SessionEnd::Lost(c);
                        }
                    } else {
                        self.discard();
                    }
                }
                frame = rx.recv(max_frame), if self.held.is_none() => {
                    let now = Instant::now();
                    let probing = hb.probing();
                    let frame = match frame {
                        None => return SessionEnd::Lost(DisconnectCause::LinkClosed {
                            detail: "closed by the gateway".into(),
                        }),
                        Some(Err(e)) => return SessionEnd::Lost(e.into_cause()),
                        Some(Ok(f)) => f,
                    };
                    hb.on_receive(now);
                    if probing && let Some(a) = self.common.adaptive.lock().as_mut() {
                        a.on_success(&self.network, ceiling);
                    }
                    match frame {
                        Frame::Data { seq, payload } => match self.inbound.try_send(payload) {
                            Ok(()) => {
                                self.common.stats.lock().received += 1;
                                if let Err(c) = self.ack(&mut tx, seq, &mut hb, hb_timeout).await {
                                    return SessionEnd::Lost(c);
                                }
                            }
                            Err(mpsc::error::TrySendError::Full(payload)) => {
                                // Not acknowledged and the link not read until the app makes
                                // room: the gateway feels the backpressure, nothing is lost.
                                self.held = Some((seq, payload));
                                hb.pause_listening();
                                metrics::counter!("switchyard_client_inbound_full_total").increment(1);
                                self.common.emit(Event::InboundFull {
                                    buffered: self.cfg.inbound_buffer,
                                });
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => self.discard(),
                        },
                        Frame::Ack(n) => {
                            let released = self.common.outbox.lock().ack(n);
                            let count = released.len();
                            self.common.stats.lock().acked += count as u64;
                            for done in released {
                                let _ = done.send(Ok(()));
                            }
                            self.common.room.add_permits(count);
                        }
                        Frame::Ping(p) => {
                            if let Err(c) = write(&mut tx, Frame::Pong(p), hb_timeout).await {
                                return SessionEnd::Lost(c);
                            }
                            hb.on_send(Instant::now());
                        }
                        Frame::Pong(_) => {}
                        Frame::Kick(k) => return SessionEnd::Kicked(k),
                        Frame::GoAway(g) => {
                            if goaway.is_none() {
                                let window = Duration::from_millis(g.reconnect_within_ms);
                                let at = now + uniform(window, &mut self.rng);
                                tracing::info!(gateway = %gw.id, reason = %g.reason, in_ms = (at - now).as_millis() as u64, "GOAWAY: moving");
                                goaway = Some((at, g.reason));
                            }
                        }
                        Frame::Reject(r) => {
                            return SessionEnd::Lost(DisconnectCause::Protocol {
                                detail: format!("REJECT after WELCOME: {}", r.reason),
                            });
                        }
                        Frame::Hello(_) | Frame::Welcome(_) => {
                            return SessionEnd::Lost(DisconnectCause::Protocol {
                                detail: "HELLO/WELCOME on an open link".into(),
                            });
                        }
                    }
                }
                cmd = self.commands.recv() => match cmd {
                    Some(Command::Send { payload, done, seq }) => {
                        self.queue(payload, done, seq);
                        let unsent = self.common.outbox.lock().take_unsent();
                        for (seq, payload) in unsent {
                            if let Err(c) = write(&mut tx, Frame::Data { seq, payload }, hb_timeout).await {
                                return SessionEnd::Lost(c);
                            }
                            self.written_high = self.written_high.max(seq);
                            hb.on_send(Instant::now());
                        }
                    }
                    Some(Command::NetworkChanged(n)) => {
                        if let Some(n) = n {
                            self.network = n;
                        }
                        let _ = timeout(CLOSE_BUDGET, tx.close()).await;
                        return SessionEnd::NetworkChanged;
                    }
                    Some(Command::Close(reply)) => {
                        let _ = timeout(CLOSE_BUDGET, tx.close()).await;
                        return SessionEnd::Closed(Some(reply));
                    }
                    None => {
                        let _ = timeout(CLOSE_BUDGET, tx.close()).await;
                        return SessionEnd::Closed(None);
                    }
                },
                () = sleep_until(deadline) => match due {
                    Due::Ping => {
                        if let Err(c) = write(&mut tx, Frame::Ping(Bytes::new()), hb_timeout).await {
                            return SessionEnd::Lost(c);
                        }
                        hb.on_ping(Instant::now());
                    }
                    Due::Dead => {
                        metrics::counter!("switchyard_client_heartbeat_timeouts_total").increment(1);
                        if let Some(a) = self.common.adaptive.lock().as_mut() {
                            a.on_failure(&self.network);
                        }
                        return SessionEnd::Lost(DisconnectCause::HeartbeatTimeout {
                            interval: hb.interval(),
                            timeout: hb_timeout,
                        });
                    }
                },
                () = sleep_until(goaway_at.unwrap_or(deadline)), if goaway_at.is_some() => {
                    let _ = timeout(CLOSE_BUDGET, tx.close()).await;
                    let reason = goaway.take().map(|(_, r)| r).unwrap_or_default();
                    return SessionEnd::Lost(DisconnectCause::GoAway { reason });
                }
            }
        }
    }

    /// Acknowledges a DATA frame the app can now see (sequence 0 asks for no ACK).
    async fn ack(
        &mut self,
        tx: &mut LinkTx,
        seq: u64,
        hb: &mut Heartbeat,
        limit: Duration,
    ) -> Result<(), DisconnectCause> {
        if seq != 0 {
            write(tx, Frame::Ack(seq), limit).await?;
            hb.on_send(Instant::now());
        }
        Ok(())
    }

    /// The app dropped its [`crate::Messages`]: what arrives is discarded, unacknowledged.
    fn discard(&self) {
        self.common.stats.lock().discarded += 1;
        metrics::counter!("switchyard_client_inbound_discarded_total").increment(1);
    }

    /// Ends the client: every unacknowledged or still queued payload is handed back.
    fn finish(mut self, why: Error, reply: Option<oneshot::Sender<Vec<Bytes>>>) {
        self.commands.close();
        let mut late = Vec::new();
        let mut reply = reply;
        let mut late_closers = Vec::new();
        while let Ok(cmd) = self.commands.try_recv() {
            match cmd {
                Command::Send { payload, done, seq } => {
                    let _ = seq.send(0);
                    self.common.stats.lock().queued += 1;
                    late.push((payload, done));
                }
                Command::Close(r) if reply.is_none() => reply = Some(r),
                Command::Close(r) => late_closers.push(r),
                Command::NetworkChanged(_) => {}
            }
        }
        self.common.end(why, late, reply);
        for r in late_closers {
            let _ = r.send(Vec::new());
        }
    }
}

/// Writes one frame; a write that cannot finish within `limit` means a dead link (a frozen
/// peer stops reading and the socket buffer fills).
async fn write(tx: &mut LinkTx, frame: Frame, limit: Duration) -> Result<(), DisconnectCause> {
    match timeout(limit, tx.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(e.into_cause()),
        Err(_) => Err(DisconnectCause::WriteStalled { after: limit }),
    }
}

/// Dial, HELLO, and wait for WELCOME or REJECT.
async fn handshake(
    dialer: &Dialer,
    address: &str,
    hello: v1::Hello,
) -> Result<(LinkTx, LinkRx, v1::Welcome), AttemptError<FailureKind>> {
    let unreachable = |detail: String| AttemptError::Next(FailureKind::Unreachable { detail });
    let (mut tx, mut rx) = dialer
        .dial(address)
        .await
        .map_err(|e| unreachable(format!("connect {address}: {e}")))?;
    tx.send(Frame::Hello(hello))
        .await
        .map_err(|e| unreachable(format!("HELLO to {address}: {e}")))?;
    match rx.recv(dialer.max_frame).await {
        Some(Ok(Frame::Welcome(w))) => Ok((tx, rx, w)),
        Some(Ok(Frame::Reject(r))) => {
            let kind = FailureKind::Refused {
                code: v1::RejectCode::try_from(r.code).unwrap_or_default(),
                reason: r.reason,
                retry_after: (r.retry_after_ms > 0)
                    .then(|| Duration::from_millis(r.retry_after_ms)),
            };
            // AUTH_EXPIRED ends the race too: every candidate got the same stale
            // credential; the machine routes once more for a fresh one.
            let stale = matches!(
                kind,
                FailureKind::Refused {
                    code: v1::RejectCode::AuthExpired,
                    ..
                }
            );
            if kind.is_terminal() || stale {
                Err(AttemptError::Terminal(kind))
            } else {
                Err(AttemptError::Next(kind))
            }
        }
        Some(Ok(other)) => Err(unreachable(format!(
            "expected WELCOME from {address}, got {}",
            other.kind().name()
        ))),
        Some(Err(e)) => Err(unreachable(format!("read from {address}: {e}"))),
        None => Err(unreachable(format!("{address} closed before WELCOME"))),
    }
}
