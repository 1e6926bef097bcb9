//! Validated settings of the reference gateway.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_identity::Secret;
use switchyard_proto::limits::{DEFAULT_MAX_FRAME, MAX_PING_PAYLOAD};

use super::auth::AuthMode;

/// What happens when a `client_id` that already has a session logs in again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KickPolicy {
    /// The old session gets `KICK{LOGGED_IN_ELSEWHERE}` and is closed; the new one is welcomed.
    #[default]
    KickOld,
    /// The new connection gets `KICK{LOGGED_IN_ELSEWHERE}` instead of WELCOME.
    RejectNew,
    /// Several sessions per `client_id`; pushes reach all of them.
    AllowMany,
}

impl std::str::FromStr for KickPolicy {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "kick-old" => Ok(Self::KickOld),
            "reject-new" => Ok(Self::RejectNew),
            "allow-many" => Ok(Self::AllowMany),
            other => Err(ConfigError::KickPolicy(other.to_owned())),
        }
    }
}

/// A setting that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Unknown kick policy name.
    #[error("unknown kick policy {0:?} (kick-old | reject-new | allow-many)")]
    KickPolicy(String),
    /// A value out of range.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The setting.
        field: &'static str,
        /// Why it cannot work.
        reason: String,
    },
    /// The TLS certificate or key could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Settings of one gateway process. Build with [`Config::new`], adjust the public fields,
/// then [`Config::validate`] (the gateway validates again at start).
#[derive(Debug, Clone)]
pub struct Config {
    /// Sent in WELCOME so a client (and its logs) knows which gateway it landed on.
    pub gateway_id: String,
    /// One deadline from accept: a socket that has not completed TLS, the WebSocket
    /// upgrade and HELLO by then is closed, so half-open or idle sockets cannot pile up
    /// before login.
    pub hello_timeout: Duration,
    /// Told to clients in WELCOME: how long their link may be idle before they send a PING.
    pub heartbeat_interval: Duration,
    /// A session that has sent nothing for this long is closed (dead link); told to clients
    /// in WELCOME. Default 2.5 × the heartbeat interval: one lost heartbeat is tolerated.
    pub idle_timeout: Duration,
    /// Off only for debugging: keeps sessions whose client went silent.
    pub heartbeat_check: bool,
    /// PING/PONG are logged only on request: at 100k clients they drown everything else.
    pub log_heartbeats: bool,
    /// A client whose outbound queue stays full (or whose socket accepts no bytes) this
    /// long is closed, so one slow reader never holds memory or stalls pushes to others.
    pub slow_client_timeout: Duration,
    /// Frames queued per session before pushes to it fail; bounds memory per connection.
    pub send_queue: usize,
    /// Largest accepted frame (length field); larger ones close the connection.
    pub max_frame: usize,
    /// Sessions beyond this get `REJECT{OVERLOADED}` so the client tries the next gateway.
    pub capacity: u64,
    /// Open sockets (sessions, handshakes, lingering closes) beyond this are closed as
    /// soon as they are accepted, before TLS: a clean refusal instead of running out of file
    /// descriptors, which would stall accepting for everyone. Above `capacity`, so a full
    /// gateway still answers `REJECT{OVERLOADED}`.
    pub max_connections: usize,
    /// Sockets that have not sent HELLO yet beyond this are closed when accepted, so slow
    /// or silent handshakes cannot take the gateway's memory and descriptors.
    pub max_handshaking: usize,
    /// Open sockets per source address (IPv6: per /64); 0 = no limit. Keeps one host from
    /// taking every slot; carrier NATs put many clients behind one address, size for them.
    pub max_connections_per_ip: u32,
    /// New sockets per second per source address (token bucket, burst one second's
    /// worth); 0 = no limit. Stops one host's connect loop from churning handshakes.
    pub accept_rate_per_ip: f64,
    /// GOAWAYs are spread evenly over this window when draining, so the fleet is not hit
    /// by every client reconnecting at once.
    pub drain_window: Duration,
    /// What a second login of the same `client_id` does.
    pub kick_policy: KickPolicy,
    /// How HELLOs are authenticated (DESIGN contract 5).
    pub auth: AuthConfig,
    /// With a server config, both listeners speak TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Config {
    /// Defaults from the issue: hello 10 s, heartbeat 30 s, idle 75 s, 64 KiB frames,
    /// 30 s drain window, kick-old; 1024 handshakes, capacity + 1024 sockets, 256 sockets
    /// and 50 new ones a second per address.
    pub fn new(gateway_id: impl Into<String>) -> Self {
        let heartbeat_interval = Duration::from_secs(30);
        Self {
            gateway_id: gateway_id.into(),
            hello_timeout: Duration::from_secs(10),
            heartbeat_interval,
            idle_timeout: default_idle_timeout(heartbeat_interval),
            heartbeat_check: true,
            log_heartbeats: false,
            slow_client_timeout: Duration::from_secs(10),
            send_queue: 256,
            max_frame: DEFAULT_MAX_FRAME,
            capacity: 100_000,
            max_connections: 100_000 + 1024,
            max_handshaking: 1024,
            max_connections_per_ip: 256,
            accept_rate_per_ip: 50.0,
            drain_window: Duration::from_secs(30),
            kick_policy: KickPolicy::KickOld,
            auth: AuthConfig::default(),
            tls: None,
        }
    }

    /// Checks that every setting can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.gateway_id.is_empty() {
            return Err(invalid("gateway_id", "empty"));
        }
        for (field, d) in [
            ("hello_timeout", self.hello_timeout),
            ("heartbeat_interval", self.heartbeat_interval),
            ("idle_timeout", self.idle_timeout),
            ("slow_client_timeout", self.slow_client_timeout),
        ] {
            if d.is_zero() {
                return Err(invalid(field, "must be > 0"));
            }
        }
        if self.idle_timeout <= self.heartbeat_interval {
            return Err(invalid(
                "idle_timeout",
                format!(
                    "{:?} must exceed the heartbeat interval {:?}, or every idle client is reaped",
                    self.idle_timeout, self.heartbeat_interval
                ),
            ));
        }
        if self.send_queue == 0 {
            return Err(invalid("send_queue", "must be > 0"));
        }
        // 9 bytes: a DATA frame with its sequence number must fit, so does a full PING.
        if self.max_frame < 1 + MAX_PING_PAYLOAD || self.max_frame > u32::MAX as usize {
            return Err(invalid(
                "max_frame",
                format!(
                    "{} not in {}..=u32::MAX",
                    self.max_frame,
                    1 + MAX_PING_PAYLOAD
                ),
            ));
        }
        if self.capacity == 0 {
            return Err(invalid("capacity", "must be > 0"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be > 0"));
        }
        if self.max_handshaking == 0 {
            return Err(invalid("max_handshaking", "must be > 0"));
        }
        if !self.accept_rate_per_ip.is_finite() || self.accept_rate_per_ip < 0.0 {
            return Err(invalid(
                "accept_rate_per_ip",
                format!("{} must be >= 0 (0 = off)", self.accept_rate_per_ip),
            ));
        }
        self.auth.validate()
    }

    /// A gateway that anyone on the network can reach must verify who logs in: listening
    /// on a non-loopback address with no auth mode is refused unless `allow_anonymous`.
    pub fn check_exposure(&self, listen: &[SocketAddr]) -> Result<(), ConfigError> {
        if self.auth.allow_anonymous || !self.auth.effective_modes().is_empty() {
            return Ok(());
        }
        match listen.iter().find(|a| !a.ip().is_loopback()) {
            None => Ok(()),
            Some(a) => Err(invalid(
                "auth",
                format!(
                    "listening on {a} (not loopback) with no auth mode: anyone could log in as any client; \
                     give --ticket-jwks/--ticket-jwks-url, --app-jwks or --auth-secret[-file], or --allow-anonymous"
                ),
            )),
        }
    }
}

/// How HELLOs are authenticated: which modes, in which order, with which keys. Keys are
/// read when the gateway is built ([`super::Authenticator::from_config`]).
#[derive(Debug, Clone, Default)]
pub struct AuthConfig {
    /// Modes in the order tried; empty = every mode whose keys are given, in the order
    /// ticket, jwt, hmac (so giving keys is enough to turn a mode on).
    pub modes: Vec<AuthMode>,
    /// JWKS file of the routers' ticket keys, re-read when it changes.
    pub ticket_jwks: Option<PathBuf>,
    /// The routers' `http://host:port/v1/ticket-keys` URLs, fetched and kept fresh.
    pub ticket_jwks_urls: Vec<String>,
    /// JWKS file of the keys the app's login service signs its tokens with.
    pub app_jwks: Option<PathBuf>,
    /// Accepted `aud` of app tokens (empty: not checked), so tokens for another service
    /// of the same issuer do not log in here.
    pub app_audience: Vec<String>,
    /// Accepted `iss` of app tokens (empty: not checked).
    pub app_issuer: Vec<String>,
    /// HMAC secret of kid `default`.
    pub auth_secret: Option<Secret>,
    /// HMAC secrets by kid (`kid secret` lines), re-read when it changes; wins over
    /// `auth_secret`.
    pub auth_secret_file: Option<PathBuf>,
    /// Also accept the old never-expiring HMAC token, during a migration only.
    pub hmac_legacy: bool,
    /// Admit HELLOs nobody verified even on non-loopback listeners (the operator says so).
    pub allow_anonymous: bool,
}

impl AuthConfig {
    /// Whether `mode` has its keys.
    fn has_keys(&self, mode: AuthMode) -> bool {
        match mode {
            AuthMode::Ticket => self.ticket_jwks.is_some() || !self.ticket_jwks_urls.is_empty(),
            AuthMode::Jwt => self.app_jwks.is_some(),
            AuthMode::Hmac => self.auth_secret.is_some() || self.auth_secret_file.is_some(),
        }
    }

    /// The modes in force, in the order tried.
    pub fn effective_modes(&self) -> Vec<AuthMode> {
        if self.modes.is_empty() {
            [AuthMode::Ticket, AuthMode::Jwt, AuthMode::Hmac]
                .into_iter()
                .filter(|m| self.has_keys(*m))
                .collect()
        } else {
            self.modes.clone()
        }
    }

    /// Every mode named has its keys, no mode twice, no setting without its mode.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (i, m) in self.modes.iter().enumerate() {
            if self.modes[..i].contains(m) {
                return Err(invalid("auth", format!("{} given twice", m.name())));
            }
            if !self.has_keys(*m) {
                let needs = match m {
                    AuthMode::Ticket => "--ticket-jwks or --ticket-jwks-url",
                    AuthMode::Jwt => "--app-jwks",
                    AuthMode::Hmac => "--auth-secret or --auth-secret-file",
                };
                return Err(invalid("auth", format!("mode {} needs {needs}", m.name())));
            }
        }
        let modes = self.effective_modes();
        let unused = |mode: AuthMode, field: &'static str, given: bool| {
            if given && !modes.contains(&mode) {
                Err(invalid(
                    field,
                    format!("given, but mode {} is not in --auth", mode.name()),
                ))
            } else {
                Ok(())
            }
        };
        unused(
            AuthMode::Ticket,
            "ticket_jwks",
            self.has_keys(AuthMode::Ticket),
        )?;
        unused(AuthMode::Jwt, "app_jwks", self.app_jwks.is_some())?;
        unused(
            AuthMode::Jwt,
            "app_audience",
            !self.app_audience.is_empty() || !self.app_issuer.is_empty(),
        )?;
        unused(AuthMode::Hmac, "auth_secret", self.has_keys(AuthMode::Hmac))?;
        unused(AuthMode::Hmac, "hmac_legacy", self.hmac_legacy)?;
        if self
            .auth_secret
            .as_ref()
            .is_some_and(|s| s.expose().is_empty())
        {
            return Err(invalid("auth_secret", "empty"));
        }
        Ok(())
    }
}

/// 2.5 × the heartbeat interval: tolerates one lost heartbeat plus transit time.
pub fn default_idle_timeout(heartbeat_interval: Duration) -> Duration {
    heartbeat_interval * 5 / 2
}

/// Loads a PEM certificate chain and private key into a rustls server config.
pub fn load_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let read = |p: &std::path::Path| {
        std::fs::read(p).map_err(|e| ConfigError::Tls(format!("{}: {e}", p.display())))
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ConfigError::Tls(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(ConfigError::Tls(format!(
            "{}: no certificate",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => ConfigError::Tls(format!("{}: no private key", key.display())),
        e => ConfigError::Tls(format!("{}: {e}", key.display())),
    })?;
    tls_from_der(certs, key)
}

/// A rustls server config from DER parts (what tests generate in memory).
pub fn tls_from_der(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ConfigError::Tls(e.to_string()))?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate_and_idle_is_two_and_a_half_heartbeats() {
        let c = Config::new("gw-1");
        c.validate().unwrap();
        assert_eq!(c.idle_timeout, Duration::from_millis(75_000));
    }

    #[test]
    fn impossible_settings_are_refused() {
        let mut c = Config::new("gw-1");
        c.idle_timeout = c.heartbeat_interval;
        assert!(c.validate().is_err());
        let mut c = Config::new("gw-1");
        c.send_queue = 0;
        assert!(c.validate().is_err());
        let mut c = Config::new("gw-1");
        c.max_frame = 8;
        assert!(c.validate().is_err());
        let mut c = Config::new("gw-1");
        c.max_handshaking = 0;
        assert!(c.validate().is_err());
        let mut c = Config::new("gw-1");
        c.accept_rate_per_ip = f64::NAN;
        assert!(c.validate().is_err());
        assert!(Config::new("").validate().is_err());
        assert!("nope".parse::<KickPolicy>().is_err());
        assert_eq!(
            "allow-many".parse::<KickPolicy>().unwrap(),
            KickPolicy::AllowMany
        );
    }

    #[test]
    fn auth_modes_default_to_the_keys_given_and_need_their_keys() {
        let mut a = AuthConfig::default();
        assert!(a.effective_modes().is_empty());
        a.auth_secret = Some(Secret::new("s"));
        a.ticket_jwks_urls = vec!["http://r:7101/v1/ticket-keys".into()];
        assert_eq!(a.effective_modes(), [AuthMode::Ticket, AuthMode::Hmac]);
        a.validate().unwrap();
        a.modes = vec![AuthMode::Hmac, AuthMode::Ticket];
        assert_eq!(a.effective_modes(), [AuthMode::Hmac, AuthMode::Ticket]);
        a.validate().unwrap();
        a.modes = vec![AuthMode::Jwt];
        assert!(a.validate().unwrap_err().to_string().contains("--app-jwks"));
        a.modes = vec![AuthMode::Hmac, AuthMode::Hmac];
        assert!(a.validate().is_err());
        a.modes = vec![AuthMode::Hmac];
        assert!(
            a.validate()
                .unwrap_err()
                .to_string()
                .contains("ticket_jwks"),
            "keys without their mode"
        );
        let b = AuthConfig {
            hmac_legacy: true,
            ..AuthConfig::default()
        };
        assert!(b.validate().is_err());
        assert!("nope".parse::<AuthMode>().is_err());
    }

    #[test]
    fn non_loopback_listeners_need_an_auth_mode_or_allow_anonymous() {
        let lo: SocketAddr = "127.0.0.1:7200".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:7200".parse().unwrap();
        let mut c = Config::new("gw-1");
        c.check_exposure(&[lo]).unwrap();
        let e = c.check_exposure(&[lo, any]).unwrap_err();
        assert!(e.to_string().contains("--allow-anonymous"), "{e}");
        c.auth.allow_anonymous = true;
        c.check_exposure(&[any]).unwrap();
        c.auth.allow_anonymous = false;
        c.auth.auth_secret = Some(Secret::new("s"));
        c.check_exposure(&[any]).unwrap();
    }
}
