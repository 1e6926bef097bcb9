//! Validated settings of the reference gateway.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use switchyard_proto::limits::{DEFAULT_MAX_FRAME, MAX_PING_PAYLOAD};

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
    /// A socket that has not completed TLS, the WebSocket upgrade and HELLO by then is
    /// closed, so half-open or idle sockets cannot pile up before login.
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
    /// GOAWAYs are spread evenly over this window when draining, so the fleet is not hit
    /// by every client reconnecting at once.
    pub drain_window: Duration,
    /// What a second login of the same `client_id` does.
    pub kick_policy: KickPolicy,
    /// With a secret, HELLO tokens must be `hex(HMAC-SHA256(secret, client_id))`.
    pub auth_secret: Option<Vec<u8>>,
    /// With a server config, both listeners speak TLS.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl Config {
    /// Defaults from the issue: hello 10 s, heartbeat 30 s, idle 75 s, 64 KiB frames,
    /// 30 s drain window, kick-old.
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
            drain_window: Duration::from_secs(30),
            kick_policy: KickPolicy::KickOld,
            auth_secret: None,
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
        if self.auth_secret.as_ref().is_some_and(Vec::is_empty) {
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
        assert!(Config::new("").validate().is_err());
        assert!("nope".parse::<KickPolicy>().is_err());
        assert_eq!(
            "allow-many".parse::<KickPolicy>().unwrap(),
            KickPolicy::AllowMany
        );
    }
}
