//! Client settings and their validated builder.

use std::fmt;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::heartbeat::AdaptiveSettings;
use crate::routing::{Gateway, RouterPolicy};
use switchyard_proto::backoff::Backoff;

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
    let bad = |e: &dyn fmt::Display| ConfigError(format!("TLS roots {}: {e}", path.display()));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| bad(&e))? {
        roots.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
    }
    if roots.is_empty() {
        return Err(bad(&"no certificate in the file"));
    }
    Ok(tls_with_roots(roots))
}

/// What the token provider returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Called before every HELLO (first login and every reconnect): the business-level re-login
/// after a technical reconnect, so an expired token is refreshed instead of replayed.
pub type TokenProvider = Arc<dyn Fn() -> TokenFuture + Send + Sync>;

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid client config: {0}")]
pub struct ConfigError(pub String);

/// Validated client settings (build with [`crate::Client::builder`]).
#[derive(Clone)]
pub struct Config {
    /// Router gRPC endpoints (`http://host:port`); asked in turn, last good one first.
    pub(crate) routers: Vec<String>,
    /// Sticky routing key and HELLO identity.
    pub(crate) client_id: String,
    /// Fresh token for every HELLO.
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
    /// Largest frame accepted from a gateway.
    pub(crate) max_frame: usize,
    /// Received messages buffered before the client stops reading the link.
    pub(crate) inbound_buffer: usize,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("routers", &self.routers)
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
    /// Give up after reconnecting for this long.
    pub const MAX_ELAPSED: Duration = Duration::from_secs(300);
}

/// The settings in force once local overrides, the router's policy and the defaults are
/// merged (in that order of precedence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Effective {
    /// Idle time before a PING.
    pub(crate) heartbeat_interval: Duration,
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
    pub(crate) fn merge(local: &RouterPolicy, router: &RouterPolicy) -> Self {
        let heartbeat_interval = local
            .heartbeat_interval
            .or(router.heartbeat_interval)
            .unwrap_or(defaults::HEARTBEAT_INTERVAL);
        Self {
            heartbeat_interval,
            heartbeat_timeout: local
                .heartbeat_timeout
                .or(router.heartbeat_timeout)
                .unwrap_or(defaults::HEARTBEAT_TIMEOUT),
            backoff: Backoff {
                base: local
                    .backoff_base
                    .or(router.backoff_base)
                    .unwrap_or(defaults::BACKOFF_BASE),
                cap: local
                    .backoff_cap
                    .or(router.backoff_cap)
                    .unwrap_or(defaults::BACKOFF_CAP),
            },
            max_attempts: local.max_attempts.or(router.max_attempts),
            reconnect_spread: local
                .reconnect_spread
                .or(router.reconnect_spread)
                .unwrap_or(defaults::RECONNECT_SPREAD),
        }
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
///     .token_provider(|| async { Ok::<_, String>("token-from-login-service".into()) })
///     .region("cn-east")
///     .bootstrap([Gateway::new("gw-1", "10.0.1.1:7200")])
///     .cache_file("/var/lib/app/gateways.json")
///     .heartbeat_interval(Duration::from_secs(45))
///     .build()?;
/// let mut events = client.events();
/// let messages = client.connect().await?;
/// # drop((events, messages)); Ok(()) }
/// ```
#[derive(Debug)]
pub struct Builder {
    /// Settings collected so far (validated in `build`).
    config: Config,
    /// Problems found while collecting (reported by `build`).
    errors: Vec<String>,
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
                client_id: String::new(),
                token: Arc::new(|| Box::pin(async { Ok(String::new()) })),
                region: String::new(),
                zone: String::new(),
                network: String::new(),
                protocol: Protocol::Tcp,
                tls: None,
                bootstrap: Vec::new(),
                cache_file: None,
                cache_max_age: None,
                route_timeout: Duration::from_secs(2),
                route_limit: 3,
                race_delay: Duration::from_millis(250),
                race_max_in_flight: 3,
                connect_timeout: Duration::from_secs(10),
                exclude_for: Duration::from_secs(30),
                overrides: RouterPolicy::default(),
                max_elapsed: Some(defaults::MAX_ELAPSED),
                keepalive: Some(Keepalive::default()),
                adaptive: None,
                max_unacked: 1024,
                send_timeout: Duration::from_secs(10),
                max_frame: switchyard_proto::wire::DEFAULT_MAX_FRAME,
                inbound_buffer: 1024,
            },
            errors: Vec::new(),
        }
    }

    /// Router endpoints (`http://host:port`), several for redundancy.
    pub fn routers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config.routers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The client's id (required, 1–256 bytes).
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.config.client_id = id.into();
        self
    }

    /// A fixed token for every HELLO.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token: String = token.into();
        self.config.token = Arc::new(move || {
            let t = token.clone();
            Box::pin(async move { Ok(t) })
        });
        self
    }

    /// An async token source called before every HELLO; an error counts as a failed attempt.
    pub fn token_provider<F, Fut, E>(mut self, f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: fmt::Display,
    {
        self.config.token = Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
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

    /// File keeping the last good router answer across restarts.
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

    /// Heartbeat interval, overriding the router's policy.
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

    /// Give up after this many consecutive failed attempts, overriding the router's policy.
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.config.overrides.max_attempts = Some(n);
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

    /// Turns the adaptive heartbeat on.
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

    /// Largest frame accepted from a gateway (default 64 KiB).
    pub fn max_frame(mut self, n: usize) -> Self {
        self.config.max_frame = n;
        self
    }

    /// Validates and builds the client (nothing runs until [`crate::Client::connect`]).
    pub fn build(mut self) -> Result<crate::Client, ConfigError> {
        let c = &self.config;
        let mut err = std::mem::take(&mut self.errors);
        if c.client_id.is_empty() || c.client_id.len() > 256 {
            err.push("client_id must be 1-256 bytes".into());
        }
        if c.routers.is_empty() && c.bootstrap.is_empty() {
            err.push("need at least one router endpoint or bootstrap gateway".into());
        }
        for r in &c.routers {
            if !(r.starts_with("http://") || r.starts_with("https://")) {
                err.push(format!(
                    "router endpoint {r:?} must be an http:// or https:// URL"
                ));
            }
        }
        for g in &c.bootstrap {
            if g.id.is_empty() || g.address.is_empty() {
                err.push(format!(
                    "bootstrap gateway {g:?} needs an id and an address"
                ));
            }
        }
        let positive = [
            ("route_timeout", c.route_timeout),
            ("connect_timeout", c.connect_timeout),
            ("send_timeout", c.send_timeout),
        ];
        for (name, d) in positive {
            if d.is_zero() {
                err.push(format!("{name} must be > 0"));
            }
        }
        let o = &c.overrides;
        for (name, d) in [
            ("heartbeat_interval", o.heartbeat_interval),
            ("heartbeat_timeout", o.heartbeat_timeout),
            ("backoff_base", o.backoff_base),
        ] {
            if d.is_some_and(|d| d.is_zero()) {
                err.push(format!("{name} must be > 0"));
            }
        }
        if let (Some(b), Some(cap)) = (o.backoff_base, o.backoff_cap)
            && cap < b
        {
            err.push("backoff cap must be >= base".into());
        }
        if o.max_attempts == Some(0) {
            err.push("max_attempts must be >= 1".into());
        }
        if !(1..=16).contains(&c.route_limit) {
            err.push("route_limit must be 1-16".into());
        }
        if c.race_max_in_flight == 0 {
            err.push("racing needs at least 1 attempt in flight".into());
        }
        if c.max_unacked == 0 || c.inbound_buffer == 0 {
            err.push("queue sizes must be >= 1".into());
        }
        if c.max_frame < 16 {
            err.push("max_frame must be >= 16 bytes".into());
        }
        if let Some(a) = c.adaptive
            && (a.min.is_zero() || a.max < a.min || a.step.is_zero() || a.successes_per_step == 0)
        {
            err.push("adaptive heartbeat needs 0 < min <= max, step > 0, successes >= 1".into());
        }
        if let Some(k) = c.keepalive
            && (k.idle.is_zero() || k.interval.is_zero() || k.count == 0)
        {
            err.push("keepalive idle, interval and count must be > 0".into());
        }
        if !err.is_empty() {
            return Err(ConfigError(err.join("; ")));
        }
        Ok(crate::Client::new(self.config))
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
        assert_eq!(e.heartbeat_interval, Duration::from_secs(5));
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
    fn tls_roots_from_pem_and_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = tls_from_pem_file(dir.path().join("none.pem")).unwrap_err();
        assert!(missing.0.contains("none.pem"), "{missing}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        assert!(
            tls_from_pem_file(&empty)
                .unwrap_err()
                .0
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
            .unwrap_err()
            .0;
        for needle in ["client_id", "http://", "heartbeat_interval", "max_attempts"] {
            assert!(err.contains(needle), "{needle} missing from {err}");
        }
        assert!(
            Builder::new()
                .client_id("u")
                .build()
                .unwrap_err()
                .0
                .contains("router endpoint or bootstrap")
        );
        assert!(
            Builder::new()
                .client_id("u")
                .bootstrap([Gateway::new("g", "127.0.0.1:1")])
                .build()
                .is_ok()
        );
    }
}
