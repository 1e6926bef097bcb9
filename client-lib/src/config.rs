//! Client settings and their validated builder.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use switchyard_proto::backoff::Backoff;
use switchyard_proto::limits;

use crate::heartbeat::AdaptiveSettings;
use crate::routing::{Gateway, RouterPolicy};
use crate::token::{TokenProvider, TokenSource};

/// How the client talks to gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// Length-prefixed frames over TCP (`host:port` addresses).
    #[default]
    Tcp,
    /// One frame per binary WebSocket message (`ws://` / `wss://` URLs).
    Ws,
}

impl Protocol {
    /// The name the router API uses (`tcp`, `ws`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Ws => "ws",
        }
    }
}

/// Kernel TCP keepalive: catches a dead peer even when the app heartbeat is long, at the cost
/// of `count` tiny probes after `idle`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the kernel drops the connection.
    pub count: u32,
}

impl Default for Keepalive {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 3,
        }
    }
}

/// The rustls config for `wss://` when none was given: the Mozilla roots from `webpki-roots`.
pub(crate) fn default_tls() -> Arc<rustls::ClientConfig> {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    tls_with_roots(roots)
}

/// A rustls client config trusting exactly `roots` (e.g. a private CA, or a test's
/// self-signed certificate).
pub fn tls_with_roots(roots: rustls::RootCertStore) -> Arc<rustls::ClientConfig> {
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A rustls client config trusting every certificate in a PEM file (a private CA, or a
/// test's self-signed certificate).
pub fn tls_from_pem_file(
    path: impl AsRef<std::path::Path>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = path.as_ref();
    let bad = |e: &dyn fmt::Display| {
        ConfigError::from(Problem::Tls {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(tls_with_roots(roots))
}

/// One problem with a client configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// `client_id` is empty or longer than [`limits::MAX_CLIENT_ID`].
    #[error("client_id must be 1-{max} bytes, got {0}", max = limits::MAX_CLIENT_ID)]
    ClientIdLength(usize),
    /// Neither a router endpoint nor a bootstrap gateway: nowhere to go.
    #[error("need at least one router endpoint or bootstrap gateway")]
    NowhereToConnect,
    /// A router endpoint that is not an `http://` or `https://` URL.
    #[error("router endpoint {0:?} must be an http:// or https:// URL")]
    RouterUrl(String),
    /// A bootstrap gateway without id or address.
    #[error("bootstrap gateway {0:?} needs an id and an address")]
    Bootstrap(String),
    /// A setting that must be above zero.
    #[error("{0} must be > 0")]
    Zero(&'static str),
    /// A setting outside its range.
    #[error("{setting} must be {range}, got {got}")]
    OutOfRange {
        /// Builder method.
        setting: &'static str,
        /// Allowed values.
        range: &'static str,
        /// The value given.
        got: String,
    },
    /// Two settings that exclude each other.
    #[error("{0} and {1} exclude each other")]
    Conflict(&'static str, &'static str),
    /// A TLS file that is unreadable or holds no certificate.
    #[error("TLS roots {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A router TLS setting that cannot work: a CA or client certificate that does not
    /// parse, or TLS settings beside an `http://` router (the app token would travel in
    /// clear while the app believes it protected).
    #[error("{setting}: {reason}")]
    RouterTls {
        /// Builder method (or `routers`).
        setting: &'static str,
        /// What is wrong.
        reason: String,
    },
}

/// Why a configuration was refused: every problem found, not just the first.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid client config: {}", list(.problems))]
pub struct ConfigError {
    /// What is wrong, in the order the settings were checked.
    pub problems: Vec<Problem>,
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

impl From<Problem> for ConfigError {
    fn from(p: Problem) -> Self {
        Self { problems: vec![p] }
    }
}

/// How the client checks `https://` routers and proves itself to them (gateway links have
/// their own `tls`).
#[derive(Clone, Default)]
pub(crate) struct RouterTls {
    /// PEM CA certificates trusted instead of the Mozilla roots: routers behind a private CA.
    pub(crate) ca_pem: Option<Vec<u8>>,
    /// PEM certificate chain and private key presented to routers that require mTLS.
    pub(crate) identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl RouterTls {
    /// Whether the app asked for anything beyond the defaults.
    fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some()
    }

    /// The tonic TLS settings for one `https://` endpoint (the server name comes from the
    /// URL). Only called on settings `problems()` accepted.
    pub(crate) fn tonic(&self) -> tonic::transport::ClientTlsConfig {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        let tls = match &self.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => {
                ClientTlsConfig::new().trust_anchors(webpki_roots::TLS_SERVER_ROOTS.iter().cloned())
            }
        };
        match &self.identity {
            Some((cert, key)) => tls.identity(Identity::from_pem(cert, key)),
            None => tls,
        }
    }

    /// What is wrong with the PEM texts, checked the way rustls will use them, so a typo
    /// fails `build()` instead of every later Route call.
    fn problems(&self, routers: &[String]) -> Vec<Problem> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let mut err = Vec::new();
        let certs = |pem: &[u8]| -> Result<Vec<CertificateDer<'static>>, String> {
            let certs = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| e.to_string())?;
            if certs.is_empty() {
                return Err("no certificate in the PEM text".into());
            }
            Ok(certs)
        };
        if let Some(pem) = &self.ca_pem {
            let mut roots = rustls::RootCertStore::empty();
            let added = certs(pem).and_then(|list| {
                list.into_iter()
                    .try_for_each(|c| roots.add(c).map_err(|e| e.to_string()))
            });
            if let Err(reason) = added {
                err.push(Problem::RouterTls {
                    setting: "router_ca_pem",
                    reason,
                });
            }
        }
        if let Some((cert, key)) = &self.identity {
            let checked = certs(cert).and_then(|chain| {
                let key =
                    PrivateKeyDer::from_pem_slice(key).map_err(|e| format!("private key: {e}"))?;
                rustls::ClientConfig::builder_with_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .with_safe_default_protocol_versions()
                .map_err(|e| e.to_string())?
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_client_auth_cert(chain, key)
                .map(drop)
                .map_err(|e| e.to_string())
            });
            if let Err(reason) = checked {
                err.push(Problem::RouterTls {
                    setting: "router_client_cert_pem",
                    reason,
                });
            }
        }
        if self.is_set() {
            for r in routers.iter().filter(|r| r.starts_with("http://")) {
                err.push(Problem::RouterTls {
                    setting: "routers",
                    reason: format!("{r} is http:// but router TLS settings are given"),
                });
            }
        }
        err
    }
}

/// Validated client settings (build with [`crate::Client::builder`]).
#[derive(Clone)]
pub(crate) struct Config {
    /// Router gRPC endpoints (`http://host:port` or `https://host:port`); the first asked
    /// is the one that answered last (remembered in the cache file), else a random one.
    pub(crate) routers: Vec<String>,
    /// Trust and client certificate for `https://` routers.
    pub(crate) router_tls: RouterTls,
    /// Sticky routing key and HELLO identity.
    pub(crate) client_id: String,
    /// The app token: fetched once per round, sent as the bearer on Route and in HELLO
    /// when no login ticket is at hand.
    pub(crate) token: TokenProvider,
    /// Locality hints for the router (empty: the router maps the caller's IP).
    pub(crate) region: String,
    /// See `region`.
    pub(crate) zone: String,
    /// Network label sent to the router (policy selection) and the adaptive heartbeat key.
    pub(crate) network: String,
    /// TCP or WebSocket.
    pub(crate) protocol: Protocol,
    /// TLS for gateway links (`None`: plain TCP; `wss://` URLs still get the default roots).
    pub(crate) tls: Option<Arc<rustls::ClientConfig>>,
    /// Last-resort gateways when no router answers and no cached list is valid.
    pub(crate) bootstrap: Vec<Gateway>,
    /// Where the last good router answer is kept across restarts.
    pub(crate) cache_file: Option<PathBuf>,
    /// Shortens the router's `valid_for_ms` for the cache, when set.
    pub(crate) cache_max_age: Option<Duration>,
    /// Deadline of one `Route` call.
    pub(crate) route_timeout: Duration,
    /// Candidates asked from the router.
    pub(crate) route_limit: u32,
    /// Head start of each racing candidate.
    pub(crate) race_delay: Duration,
    /// Racing attempts in flight at once.
    pub(crate) race_max_in_flight: usize,
    /// One attempt's budget: TCP, TLS, WebSocket and HELLO→WELCOME.
    pub(crate) connect_timeout: Duration,
    /// How long a failed gateway stays excluded from this client's lists.
    pub(crate) exclude_for: Duration,
    /// Local settings; they override what the router says.
    pub(crate) overrides: RouterPolicy,
    /// `connect()` gives up when no gateway accepted within this.
    pub(crate) login_timeout: Duration,
    /// Give up when reconnecting took longer than this (`None`: no time limit).
    pub(crate) max_elapsed: Option<Duration>,
    /// Kernel keepalive (`None`: off).
    pub(crate) keepalive: Option<Keepalive>,
    /// Adaptive heartbeat (`None`: off, the policy interval is used as is).
    pub(crate) adaptive: Option<AdaptiveSettings>,
    /// Frames waiting for an ACK; `send()` waits when full.
    pub(crate) max_unacked: usize,
    /// How long `send()` waits for a link and room in the queue.
    pub(crate) send_timeout: Duration,
    /// Largest frame, both ways: what a gateway may send us, and what `send()` accepts
    /// (less the DATA header).
    pub(crate) max_frame: usize,
    /// Received messages buffered for the app before the client stops reading the link.
    pub(crate) inbound_buffer: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("routers", &self.routers)
            .field("router_ca", &self.router_tls.ca_pem.is_some())
            .field("router_client_cert", &self.router_tls.identity.is_some())
            .field("client_id", &self.client_id)
            .field("protocol", &self.protocol)
            .field("tls", &self.tls.is_some())
            .field("bootstrap", &self.bootstrap)
            .field("overrides", &self.overrides)
            .finish_non_exhaustive()
    }
}

/// Defaults when neither the local settings nor the router say otherwise.
pub mod defaults {
    use std::time::Duration;
    /// Idle time before a PING (below the ~60 s NAT aging is the operator's call, via policy).
    pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(30);
    /// How long a PING may stay unanswered.
    pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
    /// First backoff ceiling.
    pub const BACKOFF_BASE: Duration = Duration::from_millis(500);
    /// Largest backoff ceiling.
    pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
    /// Random wait before the first reconnect after a loss.
    pub const RECONNECT_SPREAD: Duration = Duration::from_secs(1);
    /// `connect()` gives up after this: a login screen shows its retry button instead of
    /// spinning for minutes. Two rounds of three staggered 10 s attempts fit in it.
    pub const LOGIN_TIMEOUT: Duration = Duration::from_secs(20);
    /// Give up after reconnecting for this long.
    pub const MAX_ELAPSED: Duration = Duration::from_secs(300);
}

/// The settings in force once local overrides, the router's policy and the defaults are
/// merged (in that order of precedence). The heartbeat interval also depends on the
/// gateway's WELCOME, so it is resolved per link by [`heartbeat_interval`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effective {
    /// How long a PING may stay unanswered.
    pub(crate) heartbeat_timeout: Duration,
    /// Reconnect delays.
    pub(crate) backoff: Backoff,
    /// Attempts before giving up (`None`: unlimited).
    pub(crate) max_attempts: Option<u32>,
    /// Random wait before the first reconnect after a loss.
    pub(crate) reconnect_spread: Duration,
}

impl Effective {
    /// `router` must already be clamped to the policy floors (see [`RouterPolicy::from`]).
    pub(crate) fn merge(local: &RouterPolicy, router: &RouterPolicy) -> Self {
        let base = local
            .backoff_base
            .or(router.backoff_base)
            .unwrap_or(defaults::BACKOFF_BASE);
        Self {
            heartbeat_timeout: local
                .heartbeat_timeout
                .or(router.heartbeat_timeout)
                .unwrap_or(defaults::HEARTBEAT_TIMEOUT),
            backoff: Backoff {
                base,
                // A local base above the router's cap must not invert the range.
                cap: local
                    .backoff_cap
                    .or(router.backoff_cap)
                    .unwrap_or(defaults::BACKOFF_CAP)
                    .max(base),
            },
            max_attempts: local.max_attempts.or(router.max_attempts),
            reconnect_spread: local
                .reconnect_spread
                .or(router.reconnect_spread)
                .unwrap_or(defaults::RECONNECT_SPREAD),
        }
    }
}

/// Where a link's heartbeat interval can come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HeartbeatSources {
    /// The app's own setting: a fixed `heartbeat_interval` or what the adaptive heartbeat
    /// learned (the builder refuses both at once).
    pub(crate) local: Option<Duration>,
    /// The router's policy.
    pub(crate) router: Option<Duration>,
    /// The gateway's WELCOME (`heartbeat_interval_ms`, 0 = not said).
    pub(crate) welcome: Option<Duration>,
    /// The gateway's idle timeout from WELCOME: it reaps links silent that long.
    pub(crate) idle_timeout: Option<Duration>,
}

/// The highest interval a link may use: well under the gateway's idle timeout, so the
/// server never reaps a healthy idle client.
pub(crate) fn heartbeat_ceiling(idle_timeout: Option<Duration>) -> Option<Duration> {
    idle_timeout.map(|idle| idle * 2 / 3)
}

/// The one place the heartbeat precedence is decided: local (fixed or learned) > router >
/// WELCOME > default, then capped by [`heartbeat_ceiling`].
pub(crate) fn heartbeat_interval(s: HeartbeatSources) -> Duration {
    let chosen = s
        .local
        .or(s.router)
        .or(s.welcome)
        .unwrap_or(defaults::HEARTBEAT_INTERVAL);
    match heartbeat_ceiling(s.idle_timeout) {
        Some(ceiling) => chosen.min(ceiling),
        None => chosen,
    }
}

/// Builds a [`crate::Client`]; every setting has a default except `client_id` and a way to
/// find gateways (routers or a bootstrap list).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use switchyard_client::{Client, Gateway};
///
/// let client = Client::builder()
///     .routers(["http://10.0.0.1:7100", "http://10.0.0.2:7100"])
///     .client_id("user-42")
///     .token_provider(|| async { Ok::<_, std::io::Error>("token-from-login-service".into()) })
///     .region("cn-east")
///     .bootstrap([Gateway::new("gw-1", "10.0.1.1:7200")])
///     .cache_file("/var/lib/app/gateways.json")
///     .heartbeat_interval(Duration::from_secs(45))
///     .build()?;
/// let events = client.events();
/// let messages = client.connect().await?;
/// # drop((events, messages)); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Builder {
    /// Settings collected so far (validated in `build`).
    config: Config,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// All defaults.
    pub fn new() -> Self {
        Self {
            config: Config {
                routers: Vec::new(),
                router_tls: RouterTls::default(),
                client_id: String::new(),
                token: TokenProvider::fixed(String::new()),
                region: String::new(),
                zone: String::new(),
                network: String::new(),
                protocol: Protocol::Tcp,
                tls: None,
                bootstrap: Vec::new(),
                cache_file: None,
                cache_max_age: None,
                route_timeout: Duration::from_secs(2),
                route_limit: limits::DEFAULT_ROUTE_LIMIT,
                race_delay: Duration::from_millis(250),
                race_max_in_flight: 3,
                connect_timeout: Duration::from_secs(10),
                exclude_for: Duration::from_secs(30),
                overrides: RouterPolicy::default(),
                login_timeout: defaults::LOGIN_TIMEOUT,
                max_elapsed: Some(defaults::MAX_ELAPSED),
                keepalive: Some(Keepalive::default()),
                adaptive: None,
                max_unacked: 1024,
                send_timeout: Duration::from_secs(10),
                max_frame: limits::DEFAULT_MAX_FRAME,
                inbound_buffer: 1024,
            },
        }
    }

    /// Router endpoints, several for redundancy: `https://host:port` (TLS, checked against
    /// the Mozilla roots unless [`Builder::router_ca_pem`] is given) or `http://host:port`
    /// (plain text: the app token travels in clear, so keep it to loopback and private
    /// networks).
    pub fn routers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.routers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// Trust exactly the CA certificates in this PEM text for `https://` routers (instead
    /// of the Mozilla roots): routers behind a private CA. `build()` refuses text without a
    /// certificate.
    pub fn router_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.router_tls.ca_pem = Some(pem.into());
        self
    }

    /// Present this client certificate (PEM chain and PEM private key) to `https://`
    /// routers that require mutual TLS. `build()` refuses a chain or key that does not
    /// parse.
    pub fn router_client_cert_pem(
        mut self,
        cert_chain_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.config.router_tls.identity = Some((cert_chain_pem.into(), key_pem.into()));
        self
    }

    /// The client's id (required, 1–256 bytes).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }

    /// A fixed app token: the bearer on every Route call, and the HELLO token when no
    /// login ticket is at hand.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.config.token = TokenProvider::fixed(token.into());
        self
    }

    /// An async closure giving the app token, called once per round (first login and every
    /// reconnect): before routing when routers are configured (the token is the Route
    /// bearer), else before the HELLO, never when there is nothing to ask or try. An error
    /// counts as a failed round.
    ///
    /// ```no_run
    /// # fn demo() -> Result<(), switchyard_client::ConfigError> {
    /// let client = switchyard_client::Client::builder()
    ///     .client_id("user-42")
    ///     .routers(["http://127.0.0.1:7100"])
    ///     .token_provider(|| async { Ok::<_, std::io::Error>("fresh-token".to_owned()) })
    ///     .build()?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn token_provider<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.config.token = TokenProvider::closure(f);
        self
    }

    /// A token source the client borrows once per round, like [`Builder::token_provider`]:
    /// implement [`TokenSource`] on your login service (no cloning into closures).
    pub fn token_source(mut self, source: impl TokenSource) -> Self {
        self.config.token = TokenProvider::source(source);
        self
    }

    /// Region hint for the router.
    pub fn region(mut self, region: impl Into<String>) -> Self {
        self.config.region = region.into();
        self
    }

    /// Zone hint for the router.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        self.config.zone = zone.into();
        self
    }

    /// Network label (`wifi`, `cellular`, an SSID hash...): policy selection and adaptive
    /// heartbeat memory.
    pub fn network(mut self, network: impl Into<String>) -> Self {
        self.config.network = network.into();
        self
    }

    /// TCP (default) or WebSocket.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config.protocol = protocol;
        self
    }

    /// TLS for gateway links with this rustls config (see [`tls_with_roots`]).
    pub fn tls(mut self, config: Arc<rustls::ClientConfig>) -> Self {
        self.config.tls = Some(config);
        self
    }

    /// TLS for gateway links trusting the Mozilla roots.
    pub fn tls_webpki_roots(mut self) -> Self {
        self.config.tls = Some(default_tls());
        self
    }

    /// Gateways to try when no router answers and no cached list is valid.
    pub fn bootstrap<I: IntoIterator<Item = Gateway>>(mut self, gateways: I) -> Self {
        self.config.bootstrap = gateways.into_iter().collect();
        self
    }

    /// File keeping the last good router answer (and the router that gave it) across
    /// restarts.
    pub fn cache_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.config.cache_file = Some(path.into());
        self
    }

    /// Caps how long a cached list stays valid (the router's `valid_for_ms` otherwise).
    pub fn cache_max_age(mut self, age: Duration) -> Self {
        self.config.cache_max_age = Some(age);
        self
    }

    /// Deadline of one `Route` call (default 2 s).
    pub fn route_timeout(mut self, d: Duration) -> Self {
        self.config.route_timeout = d;
        self
    }

    /// Candidates asked from the router (default 3, at most 16).
    pub fn route_limit(mut self, n: u32) -> Self {
        self.config.route_limit = n;
        self
    }

    /// Racing: head start per candidate (default 250 ms) and attempts in flight (default 3).
    pub fn racing(mut self, delay: Duration, max_in_flight: usize) -> Self {
        self.config.race_delay = delay;
        self.config.race_max_in_flight = max_in_flight;
        self
    }

    /// Budget of one connection attempt up to WELCOME (default 10 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// How long a failed gateway is excluded (default 30 s).
    pub fn exclude_for(mut self, d: Duration) -> Self {
        self.config.exclude_for = d;
        self
    }

    /// Heartbeat interval, overriding the router's policy and the gateway's WELCOME.
    pub fn heartbeat_interval(mut self, d: Duration) -> Self {
        self.config.overrides.heartbeat_interval = Some(d);
        self
    }

    /// Heartbeat timeout, overriding the router's policy.
    pub fn heartbeat_timeout(mut self, d: Duration) -> Self {
        self.config.overrides.heartbeat_timeout = Some(d);
        self
    }

    /// Backoff base and cap, overriding the router's policy.
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.config.overrides.backoff_base = Some(base);
        self.config.overrides.backoff_cap = Some(cap);
        self
    }

    /// Random wait before the first reconnect after a loss, overriding the router's policy.
    pub fn reconnect_spread(mut self, d: Duration) -> Self {
        self.config.overrides.reconnect_spread = Some(d);
        self
    }

    /// Give up after this many consecutive failed rounds, overriding the router's policy.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.overrides.max_attempts = Some(n);
        self
    }

    /// `connect()` gives up with [`crate::GaveUp::LoginDeadline`] when no gateway accepted
    /// within this (default 20 s).
    pub fn login_timeout(mut self, d: Duration) -> Self {
        self.config.login_timeout = d;
        self
    }

    /// Give up after reconnecting for this long (default 5 min; `None`: never).
    pub fn max_elapsed(mut self, d: Option<Duration>) -> Self {
        self.config.max_elapsed = d;
        self
    }

    /// Kernel TCP keepalive (default idle 60 s, interval 10 s, 3 probes; `None`: off).
    pub fn keepalive(mut self, k: Option<Keepalive>) -> Self {
        self.config.keepalive = k;
        self
    }

    /// Turns the adaptive heartbeat on (instead of a fixed `heartbeat_interval`).
    pub fn adaptive_heartbeat(mut self, s: AdaptiveSettings) -> Self {
        self.config.adaptive = Some(s);
        self
    }

    /// Outbound frames kept until acknowledged (default 1024); `send()` waits when full.
    pub fn max_unacked(mut self, n: usize) -> Self {
        self.config.max_unacked = n;
        self
    }

    /// How long `send()` waits for a link and room (default 10 s).
    pub fn send_timeout(mut self, d: Duration) -> Self {
        self.config.send_timeout = d;
        self
    }

    /// Largest frame both ways (default 64 KiB, the reference gateway's default): larger
    /// frames from a gateway close the link; `send()` refuses larger payloads.
    pub fn max_frame(mut self, n: usize) -> Self {
        self.config.max_frame = n;
        self
    }

    /// Received messages buffered for the app (default 1024). When the app does not read
    /// and the buffer is full, the client stops reading the link and acknowledging (see
    /// [`crate::Event::InboundFull`]).
    pub fn inbound_buffer(mut self, n: usize) -> Self {
        self.config.inbound_buffer = n;
        self
    }

    /// Validates and builds the client (nothing runs until [`crate::Client::connect`]).
    pub fn build(self) -> Result<crate::Client, ConfigError> {
        let problems = self.config.problems();
        if !problems.is_empty() {
            return Err(ConfigError { problems });
        }
        Ok(crate::Client::new(self.config))
    }
}

impl Config {
    /// Every problem, in the order the settings are documented.
    fn problems(&self) -> Vec<Problem> {
        let c = self;
        let mut err = Vec::new();
        let range = |setting, range, got: &dyn fmt::Debug| Problem::OutOfRange {
            setting,
            range,
            got: format!("{got:?}"),
        };
        if c.client_id.is_empty() || c.client_id.len() > limits::MAX_CLIENT_ID {
            err.push(Problem::ClientIdLength(c.client_id.len()));
        }
        if c.routers.is_empty() && c.bootstrap.is_empty() {
            err.push(Problem::NowhereToConnect);
        }
        for r in &c.routers {
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                err.push(Problem::RouterUrl(r.clone()));
            }
        }
        err.extend(c.router_tls.problems(&c.routers));
        for g in &c.bootstrap {
            if g.id.is_empty() || g.address.is_empty() {
                err.push(Problem::Bootstrap(format!("{g:?}")));
            }
        }
        for (name, d) in [
            ("route_timeout", c.route_timeout),
            ("connect_timeout", c.connect_timeout),
            ("send_timeout", c.send_timeout),
            ("login_timeout", c.login_timeout),
        ] {
            if d.is_zero() {
                err.push(Problem::Zero(name));
            }
        }
        let o = &c.overrides;
        for (name, d) in [
            ("heartbeat_interval", o.heartbeat_interval),
            ("heartbeat_timeout", o.heartbeat_timeout),
            ("backoff base", o.backoff_base),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                err.push(Problem::Zero(name));
            }
        }
        if let (Some(b), Some(cap)) = (o.backoff_base, o.backoff_cap)
            && cap < b
        {
            err.push(range("backoff cap", ">= base", &cap));
        }
        if o.max_attempts == Some(0) {
            err.push(Problem::Zero("max_attempts"));
        }
        if o.heartbeat_interval.is_some() && c.adaptive.is_some() {
            err.push(Problem::Conflict(
                "heartbeat_interval",
                "adaptive_heartbeat",
            ));
        }
        if !(1..=limits::MAX_ROUTE_LIMIT).contains(&c.route_limit) {
            err.push(range("route_limit", "1-16", &c.route_limit));
        }
        if c.race_max_in_flight == 0 {
            err.push(Problem::Zero("racing max_in_flight"));
        }
        if c.max_unacked == 0 {
            err.push(Problem::Zero("max_unacked"));
        }
        if c.inbound_buffer == 0 {
            err.push(Problem::Zero("inbound_buffer"));
        }
        if c.max_frame < 1 + limits::MAX_PING_PAYLOAD || c.max_frame > u32::MAX as usize {
            err.push(range("max_frame", "65 bytes to 4 GiB", &c.max_frame));
        }
        if let Some(a) = c.adaptive
            && (a.min.is_zero() || a.max < a.min || a.step.is_zero() || a.successes_per_step == 0)
        {
            err.push(range(
                "adaptive_heartbeat",
                "0 < min <= max, step > 0, successes >= 1",
                &a,
            ));
        }
        if let Some(k) = c.keepalive
            && (k.idle.is_zero() || k.interval.is_zero() || k.count == 0)
        {
            err.push(range("keepalive", "idle, interval and count > 0", &k));
        }
        err
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_beats_router_beats_default() {
        let local = RouterPolicy {
            heartbeat_interval: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        let router = RouterPolicy {
            heartbeat_interval: Some(Duration::from_secs(20)),
            heartbeat_timeout: Some(Duration::from_secs(4)),
            max_attempts: Some(7),
            ..Default::default()
        };
        let e = Effective::merge(&local, &router);
        assert_eq!(
            e.heartbeat_timeout,
            Duration::from_secs(4),
            "router value taken as is"
        );
        assert_eq!(e.max_attempts, Some(7));
        assert_eq!(e.backoff.base, defaults::BACKOFF_BASE);
        assert_eq!(e.reconnect_spread, defaults::RECONNECT_SPREAD);
    }

    #[test]
    fn heartbeat_precedence_is_local_router_welcome_default_under_the_idle_ceiling() {
        let s =
            |local: Option<u64>, router: Option<u64>, welcome: Option<u64>, idle: Option<u64>| {
                heartbeat_interval(HeartbeatSources {
                    local: local.map(Duration::from_secs),
                    router: router.map(Duration::from_secs),
                    welcome: welcome.map(Duration::from_secs),
                    idle_timeout: idle.map(Duration::from_secs),
                })
            };
        let secs = Duration::from_secs;
        assert_eq!(s(Some(5), Some(20), Some(40), None), secs(5));
        assert_eq!(s(None, Some(20), Some(40), None), secs(20));
        assert_eq!(s(None, None, Some(40), None), secs(40));
        assert_eq!(s(None, None, None, None), defaults::HEARTBEAT_INTERVAL);
        // Whatever the source, a link never goes quieter than 2/3 of the gateway's idle timeout.
        assert_eq!(s(Some(50), None, None, Some(30)), secs(20));
        assert_eq!(s(None, None, None, Some(30)), secs(20));
    }

    #[test]
    fn a_local_backoff_base_above_the_routers_cap_keeps_the_range_sane() {
        let local = RouterPolicy {
            backoff_base: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let router = RouterPolicy {
            backoff_cap: Some(Duration::from_secs(10)),
            ..Default::default()
        };
        let e = Effective::merge(&local, &router);
        assert_eq!(e.backoff.cap, Duration::from_secs(60));
    }

    #[test]
    fn tls_roots_from_pem_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = tls_from_pem_file(dir.path().join("none.pem")).unwrap_err();
        assert!(missing.to_string().contains("none.pem"), "{missing}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(
            tls_from_pem_file(&empty)
                .unwrap_err()
                .to_string()
                .contains("no certificate")
        );
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/tls/localhost.crt"
        );
        assert!(tls_from_pem_file(fixture).is_ok());
    }

    #[test]
    fn bad_settings_are_refused_with_every_reason() {
        let err = Builder::new()
            .routers(["127.0.0.1:7100"])
            .heartbeat_interval(Duration::ZERO)
            .max_attempts(0)
            .build()
            .unwrap_err();
        assert_eq!(
            err.problems,
            [
                Problem::ClientIdLength(0),
                Problem::RouterUrl("127.0.0.1:7100".into()),
                Problem::Zero("heartbeat_interval"),
                Problem::Zero("max_attempts"),
            ]
        );
        assert_eq!(
            Builder::new().client_id("u").build().unwrap_err().problems,
            [Problem::NowhereToConnect]
        );
        assert_eq!(
            Builder::new()
                .client_id("u")
                .bootstrap([Gateway::new("g", "127.0.0.1:1")])
                .heartbeat_interval(Duration::from_secs(5))
                .adaptive_heartbeat(AdaptiveSettings::default())
                .build()
                .unwrap_err()
                .problems,
            [Problem::Conflict(
                "heartbeat_interval",
                "adaptive_heartbeat"
            )]
        );
        assert!(
            Builder::new()
                .client_id("u")
                .bootstrap([Gateway::new("g", "127.0.0.1:1")])
                .build()
                .is_ok()
        );
    }

    #[test]
    fn router_tls_settings_are_checked_at_build() {
        let fixture = |name: &str| {
            std::fs::read(format!(
                "{}/../tests/fixtures/tls/{name}",
                env!("CARGO_MANIFEST_DIR")
            ))
            .unwrap()
        };
        let (cert, key) = (fixture("localhost.crt"), fixture("localhost.key"));
        let base = || {
            Builder::new()
                .client_id("u")
                .routers(["https://router.example:7100"])
        };
        assert!(base().build().is_ok(), "https with the Mozilla roots");
        assert!(
            base()
                .router_ca_pem(cert.clone())
                .router_client_cert_pem(cert.clone(), key.clone())
                .build()
                .is_ok()
        );
        let problems = base()
            .router_ca_pem("not a certificate")
            .router_client_cert_pem(
                cert.clone(),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
            )
            .build()
            .unwrap_err()
            .problems;
        assert!(
            matches!(
                &problems[..],
                [
                    Problem::RouterTls { setting: "router_ca_pem", reason },
                    Problem::RouterTls { setting: "router_client_cert_pem", .. },
                ] if reason.contains("no certificate")
            ),
            "{problems:?}"
        );
        // TLS settings beside a plain-text router: the token would travel in clear.
        let problems = Builder::new()
            .client_id("u")
            .routers(["http://10.0.0.1:7100"])
            .router_ca_pem(cert)
            .build()
            .unwrap_err()
            .problems;
        assert!(
            matches!(&problems[..], [Problem::RouterTls { setting: "routers", reason }] if reason.contains("http://10.0.0.1:7100")),
            "{problems:?}"
        );
        // The key never reaches Debug output.
        let b = base().router_client_cert_pem("c", "PRIVATE-KEY-TEXT");
        assert!(!format!("{:?}", b.config).contains("PRIVATE-KEY-TEXT"));
    }
}
