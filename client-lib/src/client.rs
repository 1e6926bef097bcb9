//! The public handle and what it shares with the driver task.
//!
//! One spawned task (the driver, `driver.rs`) owns the link and makes every decision about
//! it in order; the [`Client`] handle talks to it over a channel and reads the state the
//! two share in [`Common`].

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures::{FutureExt, Stream};
use parking_lot::Mutex;
use switchyard_proto::limits;
use tokio::sync::{Semaphore, broadcast, mpsc, oneshot, watch};
use tokio::time::{Instant, timeout_at};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;

use crate::config::{Builder, Config};
use crate::driver::Driver;
use crate::event::{Error, Event, SendError, Undelivered};
use crate::heartbeat::Adaptive;
use crate::outbox::Outbox;
use crate::routing::RouteSource;

/// Resolves when the gateway acknowledged the message, or with the message handed back.
#[derive(Debug)]
pub struct Receipt {
    /// Sequence number the message travels under.
    seq: u64,
    /// A copy of the payload (reference-counted, not copied), so even a driver that died
    /// without answering hands the message back.
    payload: Bytes,
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
                    payload: self.payload.clone(),
                    reason: Error::Crashed("the client task ended without answering".into()),
                })
            })
        })
    }
}

/// Received application messages (DATA payloads), in order; ends when the client ends.
///
/// Read it: while its buffer (`inbound_buffer`, 1024) is full the client stops reading the
/// link and stops acknowledging ([`Event::InboundFull`]). Dropping it discards what
/// arrives from then on, unacknowledged.
#[derive(Debug)]
pub struct Messages {
    /// Fed by the driver without ever blocking it.
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

/// Connection events from the moment [`Client::events`] was called. A subscriber that falls
/// more than 256 events behind gets [`Event::Lagged`] instead of the ones it missed.
#[derive(Debug)]
pub struct Events {
    /// The driver never waits for subscribers.
    inner: BroadcastStream<Event>,
}

impl Stream for Events {
    type Item = Event;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        Pin::new(&mut self.inner).poll_next(cx).map(|item| {
            item.map(|r| match r {
                Ok(e) => e,
                Err(BroadcastStreamRecvError::Lagged(missed)) => Event::Lagged { missed },
            })
        })
    }
}

/// Delivery counters since the client was built (see [`Client::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
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
    /// Messages from gateways handed to the app (and acknowledged).
    pub received: u64,
    /// Messages from gateways discarded unacknowledged because the app dropped [`Messages`].
    pub discarded: u64,
}

/// Where the client stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Status {
    /// `connect()` not called yet.
    Idle,
    /// No link: routing, racing or waiting to retry.
    Connecting,
    /// On a gateway.
    Connected(String),
    /// Ended for good.
    Ended(Error),
}

/// What a pending `send()` is told: acknowledged, or handed back.
pub(crate) type Done = oneshot::Sender<Result<(), Undelivered>>;

/// State shared between the handles and the driver.
#[derive(Debug)]
pub(crate) struct Common {
    /// Event fan-out.
    events: broadcast::Sender<Event>,
    /// Current status; `send()` and `connect()` wait on it.
    pub(crate) status: watch::Sender<Status>,
    /// Free places in the outbound queue; closed when the client ends.
    pub(crate) room: Arc<Semaphore>,
    /// Unacknowledged messages. Shared (not owned by the driver) so that even a driver
    /// that panicked leaves them to be handed back.
    pub(crate) outbox: Mutex<Outbox<Done>>,
    /// Source of the last candidate list (for apps and tests to see fallbacks happen).
    pub(crate) route_source: Mutex<Option<RouteSource>>,
    /// Adaptive heartbeat memory, when on.
    pub(crate) adaptive: Mutex<Option<Adaptive>>,
    /// Every event in order, so apps (and tests) can read the history after the fact.
    history: Mutex<VecDeque<Event>>,
    /// Delivery counters.
    pub(crate) stats: Mutex<Stats>,
    /// Payloads handed back when the client ended with nobody asking (`GaveUp`, `Kicked`,
    /// a crash): the next `close()` returns them.
    unclaimed: Mutex<Vec<Bytes>>,
}

impl Common {
    const HISTORY: usize = 256;

    pub(crate) fn emit(&self, e: Event) {
        tracing::info!(event = %e, "client event");
        let mut h = self.history.lock();
        if h.len() == Self::HISTORY {
            h.pop_front();
        }
        h.push_back(e.clone());
        drop(h);
        let _ = self.events.send(e);
    }

    /// Ends the client: every unacknowledged message is handed back (receipts resolve to
    /// [`Undelivered`]), plus `late` payloads that never reached the outbox. They go to
    /// `reply` when a `close()` is waiting, else they wait for the next `close()`.
    pub(crate) fn end(
        &self,
        why: Error,
        late: Vec<(Bytes, Done)>,
        reply: Option<oneshot::Sender<Vec<Bytes>>>,
    ) {
        self.room.close();
        let pending: Vec<(Bytes, Done)> =
            self.outbox.lock().drain().into_iter().chain(late).collect();
        let failed: Vec<Bytes> = pending.iter().map(|(p, _)| p.clone()).collect();
        self.stats.lock().handed_back += failed.len() as u64;
        // The payloads go where `close()` finds them before anything announces the end (a
        // resolved receipt, the `Ended` status): whoever reacts to those and calls
        // `close()` must get them back, whichever thread it runs on.
        match reply {
            Some(r) => {
                if let Err(back) = r.send(failed) {
                    self.unclaimed.lock().extend(back);
                }
            }
            None => self.unclaimed.lock().extend(failed),
        }
        for (payload, done) in pending {
            let _ = done.send(Err(Undelivered {
                payload,
                reason: why.clone(),
            }));
        }
        self.status.send_replace(Status::Ended(why));
    }
}

/// Requests from the handles to the driver.
#[derive(Debug)]
pub(crate) enum Command {
    /// Queue one DATA frame.
    Send {
        /// Application bytes.
        payload: Bytes,
        /// Answered on ACK or give-up.
        done: Done,
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
    /// Settings (read by `send()` for its timeout and size limit).
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
                outbox: Mutex::new(Outbox::default()),
                route_source: Mutex::new(None),
                adaptive: Mutex::new(adaptive),
                history: Mutex::new(VecDeque::new()),
                stats: Mutex::new(Stats::default()),
                unclaimed: Mutex::new(Vec::new()),
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
    /// link up by itself) or with the terminal reason — at the latest after the login
    /// deadline (`login_timeout`, 20 s), with [`crate::GaveUp::LoginDeadline`] naming what
    /// was tried. Must run inside a tokio runtime.
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
        let common = self.common.clone();
        tokio::spawn(async move {
            if let Err(panic) = AssertUnwindSafe(driver.run()).catch_unwind().await {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "panic".into());
                tracing::error!(panic = %what, "client driver panicked; handing back what was queued");
                common.end(Error::Crashed(what), Vec::new(), None);
            }
        });
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

    /// Queues `payload` as one numbered DATA frame. While there is no link (before
    /// `connect()` succeeded, between links) or the queue is full, waits up to the send
    /// timeout. The returned [`Receipt`] resolves on the gateway's ACK, or hands the
    /// payload back if the client ends first. A payload over one frame is refused at once.
    pub async fn send(&self, payload: impl Into<Bytes>) -> Result<Receipt, SendError> {
        let payload = payload.into();
        let max = limits::max_data_payload(self.config.max_frame);
        if payload.len() > max {
            return Err(SendError::TooLarge(payload, max));
        }
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
                payload: payload.clone(),
                done,
                seq: seq_tx,
            })
        {
            return Err(SendError::Ended(payload, self.ended()));
        }
        let seq = seq_rx.await.unwrap_or(0);
        Ok(Receipt { seq, payload, rx })
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

    /// Stops everything and returns every payload that was not acknowledged (their
    /// receipts resolve as undelivered too) — also after the client already ended by
    /// itself (`GaveUp`, `Kicked`). Returns within about a second even when the gateway or
    /// the app is stuck.
    pub async fn close(&self) -> Vec<Bytes> {
        if self.start.lock().take().is_some() {
            // Never started: nothing was sent, nothing to stop.
            self.common.end(Error::Closed, Vec::new(), None);
        } else {
            let (tx, rx) = oneshot::channel();
            if self.commands.send(Command::Close(tx)).is_ok()
                && let Ok(back) = rx.await
            {
                return back;
            }
        }
        std::mem::take(&mut *self.common.unclaimed.lock())
    }

    /// The gateway currently connected to; `None` from the moment a link is lost.
    pub fn gateway(&self) -> Option<String> {
        match &*self.common.status.borrow() {
            Status::Connected(g) => Some(g.clone()),
            _ => None,
        }
    }

    /// Delivery counters: queued, acknowledged, resent, handed back, received.
    pub fn stats(&self) -> Stats {
        *self.common.stats.lock()
    }

    /// Where the last candidate list came from (router, cache or bootstrap).
    pub fn route_source(&self) -> Option<RouteSource> {
        *self.common.route_source.lock()
    }

    /// What the adaptive heartbeat learned for `network` (`None` when adaptive is off).
    pub fn learned_heartbeat(&self, network: &str) -> Option<Duration> {
        self.common
            .adaptive
            .lock()
            .as_ref()
            .map(|a| a.learned(network))
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;
    use crate::Gateway;

    fn client() -> Client {
        Builder::new()
            .client_id("u")
            .bootstrap([Gateway::new("g", "127.0.0.1:1")])
            .build()
            .expect("valid")
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_is_told_how_much_it_missed() {
        let c = client();
        let mut events = c.events();
        for attempt in 0..300 {
            c.common.emit(Event::Connected {
                gateway: "g".into(),
                attempt,
            });
        }
        assert_eq!(events.next().await, Some(Event::Lagged { missed: 44 }));
        assert_eq!(
            events.next().await,
            Some(Event::Connected {
                gateway: "g".into(),
                attempt: 44
            })
        );
        assert_eq!(
            c.history().len(),
            Common::HISTORY,
            "history keeps the last 256"
        );
    }

    #[tokio::test]
    async fn an_oversized_payload_is_refused_before_anything_else() {
        let c = client();
        let max = limits::max_data_payload(limits::DEFAULT_MAX_FRAME);
        match c.send(vec![0u8; max + 1]).await {
            Err(SendError::TooLarge(p, m)) => assert_eq!((p.len(), m), (max + 1, max)),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.stats().queued, 0);
    }
}
