//! The reference gateway: a long-connection server speaking DESIGN contract 3 over TCP and
//! WebSocket (optionally TLS), with server-side dead-link detection, kick, backpressure,
//! limits and drain.
//!
//! Build a [`Gateway`] from a [`Config`], take its [`Hub`] for pushes, then
//! [`Gateway::run`] it on already-bound listeners with a shutdown future: when that
//! resolves the gateway drains (REJECT{DRAINING} for new logins, GOAWAY spread over the
//! drain window, the rest closed) and `run` returns.
//!
//! Modules: `config` (settings), `auth` (HELLO check: auth modes and their combinator),
//! `ticket_keys` (the routers' ticket keys over HTTP), `app` (DATA hook, custom auth),
//! `hub` (sessions by client id), `limits` (admission of accepted sockets), `session`
//! (pure rules), `transport` (TCP/WS framing),
//! `conn` (the per-connection task), this file (accept loops and drain).

mod app;
mod auth;
mod config;
mod conn;
mod hub;
mod limits;
mod session;
mod ticket_keys;
mod transport;

pub use app::{App, AppError, Echo};
pub use auth::{
    ANONYMOUS, AcceptAny, Auth, AuthError, AuthMode, Authenticator, DEFAULT_KID, HmacAuth,
    HmacKeys, Identity, JwtAuth, Refreshed, Refusal, TicketAuth,
};
pub use config::{
    AuthConfig, Config, ConfigError, KickPolicy, default_idle_timeout, load_tls, tls_from_der,
};
pub use hub::{Broadcast, Hub, PushError, SessionHandle};
pub use ticket_keys::UrlKeys;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use switchyard_proto::v1;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use hub::Control;
use session::DrainPlan;

/// The listeners a gateway serves; bind them first (port 0 in tests).
#[derive(Debug, Default)]
pub struct Listeners {
    /// Length-prefixed frames on TCP (or TLS).
    pub tcp: Option<TcpListener>,
    /// WebSocket, one binary message per frame (or WSS).
    pub ws: Option<TcpListener>,
}

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Neither listener was given.
    #[error("no listener: give a TCP or a WebSocket listener")]
    NoListener,
    /// Ticket mode has key URLs only, and none answered.
    #[error("ticket keys: {0}")]
    NoTicketKeys(String),
    /// A listener's address could not be read.
    #[error("listener address: {0}")]
    Io(#[from] std::io::Error),
}

/// How long [`Gateway::load_keys`] waits for a router to publish its ticket keys: a
/// gateway started beside its routers (compose, the demo) comes up once they do.
pub const FIRST_KEYS_WAIT: Duration = Duration::from_secs(10);

/// What every connection task shares.
pub(crate) struct Shared {
    /// Validated settings.
    pub(crate) config: Config,
    /// Sessions by client id.
    pub(crate) hub: Hub,
    /// DATA hook.
    pub(crate) app: Arc<dyn App>,
    /// HELLO check.
    pub(crate) auth: Arc<dyn Auth>,
    /// Set when the config carries TLS.
    pub(crate) tls: Option<tokio_rustls::TlsAcceptor>,
    /// Admission of accepted sockets (connection, handshake and per-address caps).
    pub(crate) limits: Arc<limits::Limits>,
    /// Source of hub-unique session keys.
    next_key: AtomicU64,
}

impl Shared {
    pub(crate) fn next_key(&self) -> u64 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }
}

/// A gateway ready to run. See the module docs.
pub struct Gateway {
    /// Validated settings.
    config: Config,
    /// Created up front so the application can hold it before `run`.
    hub: Hub,
    /// DATA hook; [`Echo`] unless replaced.
    app: Arc<dyn App>,
    /// HELLO check: the built-in [`Authenticator`] unless replaced.
    auth: Arc<dyn Auth>,
    /// The built-in check while it is the one in use: its remote keys are loaded before
    /// serving, and the non-loopback rule applies to it.
    builtin: Option<Arc<Authenticator>>,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Gateway {
    /// Validates `config` and reads the key files it names; the application hook is
    /// [`Echo`]. Key URLs are fetched by [`Gateway::load_keys`].
    pub fn new(config: Config) -> Result<Self, Error> {
        config.validate()?;
        let builtin = Arc::new(Authenticator::from_config(
            &config.auth,
            &config.gateway_id,
        )?);
        Ok(Self {
            hub: Hub::new(config.kick_policy, config.capacity),
            config,
            app: Arc::new(Echo),
            auth: builtin.clone(),
            builtin: Some(builtin),
        })
    }

    /// Replaces the DATA hook.
    pub fn with_app(mut self, app: Arc<dyn App>) -> Self {
        self.app = app;
        self
    }

    /// Replaces the HELLO check (the configured modes are then unused; an application
    /// adding a mode to them implements [`App::authenticate`] instead).
    pub fn with_auth(mut self, auth: Arc<dyn Auth>) -> Self {
        self.auth = auth;
        self.builtin = None;
        self
    }

    /// Fetches the routers' ticket keys (`ticket_jwks_urls`) and keeps them fresh; waits
    /// up to [`FIRST_KEYS_WAIT`] for one router to answer and fails if none did and no key
    /// file stands in. Call it before registering, so routers send no client before the
    /// gateway can check their tickets; [`Gateway::run`] calls it too (once is enough).
    pub async fn load_keys(&self) -> Result<(), Error> {
        match &self.builtin {
            Some(b) => b
                .load_keys(FIRST_KEYS_WAIT)
                .await
                .map_err(Error::NoTicketKeys),
            None => Ok(()),
        }
    }

    /// The session registry: push, broadcast, kick, count.
    pub fn hub(&self) -> Hub {
        self.hub.clone()
    }

    /// Serves until `shutdown` resolves, then drains over the drain window and returns
    /// once every session is gone.
    pub async fn run(
        self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), Error> {
        if listeners.tcp.is_none() && listeners.ws.is_none() {
            return Err(Error::NoListener);
        }
        if self.builtin.is_some() {
            let mut addrs = Vec::new();
            for l in [&listeners.tcp, &listeners.ws].into_iter().flatten() {
                addrs.push(l.local_addr()?);
            }
            self.config.check_exposure(&addrs)?;
        }
        self.load_keys().await?;
        let shared = Arc::new(Shared {
            tls: self.config.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            limits: Arc::new(limits::Limits::new(&self.config)),
            config: self.config,
            hub: self.hub,
            app: self.app,
            auth: self.auth,
            next_key: AtomicU64::new(1),
        });
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        for (listener, websocket) in [(listeners.tcp, false), (listeners.ws, true)] {
            if let Some(l) = listener {
                tasks.spawn(accept_loop(
                    l,
                    websocket,
                    shared.clone(),
                    tasks.clone(),
                    stop.clone(),
                ));
            }
        }
        shutdown.await;
        drain(&shared.hub, shared.config.drain_window).await;
        stop.cancel();
        tasks.close();
        // Sessions were told to close; give stragglers (lingering closes) a moment.
        if tokio::time::timeout(Duration::from_secs(3), tasks.wait())
            .await
            .is_err()
        {
            warn!("some connections did not finish closing in 3s");
        }
        info!("gateway stopped");
        Ok(())
    }
}

async fn accept_loop(
    listener: TcpListener,
    websocket: bool,
    shared: Arc<Shared>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            // Refused sockets are dropped here, before TLS or any read, so an over-limit
            // peer costs one accept and nothing else.
            Ok((stream, peer)) => match shared.limits.admit(peer.ip()) {
                Ok(permit) => {
                    tasks.spawn(conn::serve(stream, peer, websocket, shared.clone(), permit));
                }
                Err(why) => debug!(%peer, reason = why.reason(), "connection refused"),
            },
            Err(e) => {
                // Out of file descriptors and the like: keep serving those connected.
                metrics::counter!("switchyard_gateway_accept_errors_total").increment(1);
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// New logins are refused from now on; every session gets GOAWAY at an evenly spaced
/// moment inside `window`; what is left at the end is closed.
pub(crate) async fn drain(hub: &Hub, window: Duration) {
    hub.set_draining();
    let start = Instant::now();
    let sessions = hub.sessions();
    let plan = DrainPlan::new(window, sessions.len());
    info!(sessions = sessions.len(), ?window, "draining");
    let goaway = v1::GoAway {
        reason: "gateway draining".into(),
        reconnect_within_ms: plan.reconnect_within.as_millis() as u64,
    };
    for (i, s) in sessions.iter().enumerate() {
        tokio::time::sleep_until(start + plan.at(i)).await;
        s.control(Control::GoAway(goaway.clone()));
    }
    metrics::counter!("switchyard_gateway_goaways_total").increment(sessions.len() as u64);
    tokio::time::sleep_until(start + window).await;
    let rest = hub.sessions();
    if !rest.is_empty() {
        info!(sessions = rest.len(), "drain window over, closing the rest");
    }
    for s in rest {
        s.control(Control::Close("drained"));
    }
}
