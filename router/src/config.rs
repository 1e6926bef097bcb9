//! `router::Config`: everything the router can be told, with documented defaults, read
//! from TOML (the binary merges flags and `SWITCHYARD_*` env over it) and validated once.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use switchyard_proto::v1::ClientPolicy;

use crate::{outlier, ranking};

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("invalid config: {0}")]
    Invalid(String),
    /// A file named by the config could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML does not match the schema.
    #[error("config file: {0}")]
    Toml(#[from] toml::de::Error),
}

/// The router's configuration. Every field has a default, so an empty file is valid.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// etcd client URLs (used by the binary to connect). Default `http://127.0.0.1:2379`.
    pub etcd: Vec<String>,
    /// Registry prefix `P`. Default `/switchyard`.
    pub prefix: String,
    /// gRPC listen address (binary only). Default `127.0.0.1:7100`.
    pub listen: SocketAddr,
    /// HTTP side port for `/metrics`, `/healthz` and the status page (binary only; none
    /// when unset).
    pub http_listen: Option<SocketAddr>,
    /// Bearer token for the Admin service. Without it (and without `client_ca`) Admin is
    /// refused: drains must never be open to anyone who can reach the port.
    pub admin_token: Option<String>,
    /// File holding the admin token (first line), so it stays out of `ps` and env dumps.
    pub admin_token_file: Option<PathBuf>,
    /// When set, Route, ListGateways and WatchGateways need this bearer token (the admin
    /// token is accepted too), for routers reachable from the internet.
    pub route_token: Option<String>,
    /// Proxies (CIDRs) whose `x-forwarded-for` is believed; anyone else could forge it to
    /// pick a region.
    pub trust_forwarded_for: Vec<IpNet>,
    /// PEM certificate chain for TLS on the gRPC port; plaintext when unset.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients presenting a certificate it signed are admins (mTLS).
    /// Client certificates stay optional so Route keeps working without one.
    pub client_ca: Option<PathBuf>,
    /// Log format of the binary: `text` or `json`.
    pub log_format: String,
    /// Ranking knobs.
    pub ranking: ranking::Params,
    /// Outlier ejection knobs.
    pub outlier: outlier::Params,
    /// Hand-outs not yet reflected in a report are forgotten after this long even when no
    /// report comes (an agent that stopped reporting must not look full forever).
    /// Default 10 s.
    #[serde(with = "humantime_serde")]
    pub pending_window: Duration,
    /// How long a client may use a Route answer without asking again. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub valid_for: Duration,
    /// Client policy sent with every answer, and its overrides.
    pub policy: Policies,
    /// CIDR → region/zone, used when a request names no region.
    pub locality: Vec<LocalityRule>,
    /// How often the watch stream asks etcd for progress (staleness detection).
    #[serde(with = "humantime_serde")]
    pub etcd_progress_interval: Duration,
    /// A silent watch stream is re-opened after this long.
    #[serde(with = "humantime_serde")]
    pub etcd_silence_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            etcd: vec!["http://127.0.0.1:2379".into()],
            prefix: "/switchyard".into(),
            listen: "127.0.0.1:7100".parse().expect("literal"),
            http_listen: None,
            admin_token: None,
            admin_token_file: None,
            route_token: None,
            trust_forwarded_for: Vec::new(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            log_format: "text".into(),
            ranking: ranking::Params::default(),
            outlier: outlier::Params::default(),
            pending_window: Duration::from_secs(10),
            valid_for: Duration::from_secs(30),
            policy: Policies::default(),
            locality: Vec::new(),
            etcd_progress_interval: Duration::from_secs(5),
            etcd_silence_timeout: Duration::from_secs(12),
        }
    }
}

impl Config {
    /// Parses TOML (unknown keys are refused so typos do not go unnoticed).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every value and reads `admin_token_file` into `admin_token`.
    pub fn validate(mut self) -> Result<Self, ConfigError> {
        let invalid = ConfigError::Invalid;
        switchyard_registry::Prefix::new(self.prefix.clone())
            .map_err(|e| invalid(e.to_string()))?;
        self.ranking.validate().map_err(invalid)?;
        self.outlier.validate().map_err(invalid)?;
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            self.admin_token = text.lines().next().map(|l| l.trim().to_owned());
        }
        for (name, token) in [("admin", &self.admin_token), ("route", &self.route_token)] {
            if token.as_deref().is_some_and(|t| t.len() < 8) {
                return Err(invalid(format!(
                    "{name} token must be at least 8 characters"
                )));
            }
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls_cert and tls_key go together".into()));
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err(invalid("client_ca needs tls_cert and tls_key".into()));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(invalid(format!(
                "log_format must be text or json, got {:?}",
                self.log_format
            )));
        }
        if self.valid_for.is_zero() || self.pending_window.is_zero() {
            return Err(invalid("valid_for and pending_window must be > 0".into()));
        }
        self.policy.default.validate()?;
        for o in &self.policy.overrides {
            if o.region.is_none() && o.network.is_none() {
                return Err(invalid(
                    "each [[policy.overrides]] needs a region and/or a network".into(),
                ));
            }
        }
        // Longest prefix first, so lookup can stop at the first match.
        self.locality
            .sort_by_key(|r| std::cmp::Reverse(r.cidr.prefix_len()));
        Ok(self)
    }

    /// Region and zone for a caller IP from the CIDR table (longest prefix wins).
    pub fn locate(&self, ip: IpAddr) -> Option<&LocalityRule> {
        let ip = canonical(ip);
        self.locality.iter().find(|r| r.cidr.contains(&ip))
    }

    /// True when `ip` is a trusted proxy.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trust_forwarded_for.iter().any(|n| n.contains(&ip))
    }
}

/// IPv4-mapped IPv6 (`::ffff:1.2.3.4`, what a dual-stack socket reports) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One row of the CIDR → locality table.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalityRule {
    /// IPv4 or IPv6 network.
    pub cidr: IpNet,
    /// Region of callers in it.
    pub region: String,
    /// Zone of callers in it (may be empty).
    #[serde(default)]
    pub zone: String,
}

/// Client behaviour the router prescribes (DESIGN contract 2).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// Idle time before the client sends a heartbeat. Default 30 s (the client library's
    /// default; lower it per network for carriers whose NAT drops idle mappings sooner).
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// How long after a PING the client waits for any frame before it declares the link
    /// dead, so detection takes at most interval + timeout. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub heartbeat_timeout: Duration,
    /// First reconnect backoff (full jitter, factor 2). Default 500 ms.
    #[serde(with = "humantime_serde")]
    pub backoff_base: Duration,
    /// Backoff cap. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub backoff_cap: Duration,
    /// Reconnect attempts after which the client gives up; 0 = no limit (the client's own
    /// elapsed-time limit still applies). Default 0.
    pub max_attempts: u32,
    /// The first reconnect after a lost link waits a random 0..spread, so a gateway crash
    /// does not bring all its clients back in the same second. Default 1 s.
    #[serde(with = "humantime_serde")]
    pub reconnect_spread: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(10),
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            max_attempts: 0,
            reconnect_spread: Duration::from_secs(1),
        }
    }
}

impl Policy {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "policy heartbeat_interval and heartbeat_timeout must be above zero".into(),
            ));
        }
        if self.backoff_base > self.backoff_cap {
            return Err(ConfigError::Invalid(
                "policy needs backoff_base <= backoff_cap".into(),
            ));
        }
        Ok(())
    }

    /// The wire form.
    pub fn to_proto(&self) -> ClientPolicy {
        let ms = |d: Duration| d.as_millis() as u64;
        ClientPolicy {
            heartbeat_interval_ms: ms(self.heartbeat_interval),
            heartbeat_timeout_ms: ms(self.heartbeat_timeout),
            backoff_base_ms: ms(self.backoff_base),
            backoff_cap_ms: ms(self.backoff_cap),
            max_attempts: self.max_attempts,
            reconnect_spread_ms: ms(self.reconnect_spread),
        }
    }
}

/// The default policy plus overrides per region and/or network.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policies {
    /// Used when no override matches.
    pub default: Policy,
    /// Most specific match wins: region and network, then region, then network.
    pub overrides: Vec<PolicyOverride>,
}

/// A policy for some regions and/or networks; unset fields come from the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    /// Applies to clients in this region (any when unset).
    pub region: Option<String>,
    /// Applies to clients on this network type (any when unset).
    pub network: Option<String>,
    /// See [`Policy::heartbeat_interval`].
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_interval: Option<Duration>,
    /// See [`Policy::heartbeat_timeout`].
    #[serde(default, with = "humantime_serde")]
    pub heartbeat_timeout: Option<Duration>,
    /// See [`Policy::backoff_base`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_base: Option<Duration>,
    /// See [`Policy::backoff_cap`].
    #[serde(default, with = "humantime_serde")]
    pub backoff_cap: Option<Duration>,
    /// See [`Policy::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`Policy::reconnect_spread`].
    #[serde(default, with = "humantime_serde")]
    pub reconnect_spread: Option<Duration>,
}

impl Policies {
    /// The policy for a client in `region` on `network`.
    pub fn select(&self, region: &str, network: &str) -> Policy {
        let matches = |o: &&PolicyOverride| {
            o.region.as_deref().is_none_or(|r| r == region)
                && o.network.as_deref().is_none_or(|n| n == network)
        };
        let specificity =
            |o: &PolicyOverride| 2 * u8::from(o.region.is_some()) + u8::from(o.network.is_some());
        let best = self
            .overrides
            .iter()
            .filter(matches)
            .max_by_key(|o| specificity(o));
        let mut p = self.default.clone();
        if let Some(o) = best {
            p.heartbeat_interval = o.heartbeat_interval.unwrap_or(p.heartbeat_interval);
            p.heartbeat_timeout = o.heartbeat_timeout.unwrap_or(p.heartbeat_timeout);
            p.backoff_base = o.backoff_base.unwrap_or(p.backoff_base);
            p.backoff_cap = o.backoff_cap.unwrap_or(p.backoff_cap);
            p.max_attempts = o.max_attempts.unwrap_or(p.max_attempts);
            p.reconnect_spread = o.reconnect_spread.unwrap_or(p.reconnect_spread);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
        prefix = "/sy"
        valid_for = "20s"
        trust_forwarded_for = ["10.0.0.0/8"]
        [ranking]
        bound = 1.5
        [outlier]
        min_clients = 2
        [policy.default]
        heartbeat_interval = "20s"
        [[policy.overrides]]
        network = "cellular"
        heartbeat_interval = "40s"
        heartbeat_timeout = "120s"
        [[policy.overrides]]
        region = "cn-east"
        network = "cellular"
        max_attempts = 9
        [[locality]]
        cidr = "192.0.2.0/24"
        region = "cn-east"
        [[locality]]
        cidr = "192.0.2.128/25"
        region = "cn-east"
        zone = "sh-b"
        [[locality]]
        cidr = "2001:db8::/32"
        region = "eu"
        zone = "fra-a"
    "#;

    #[test]
    fn sample_parses_and_selects() {
        let c = Config::from_toml(SAMPLE).unwrap().validate().unwrap();
        assert_eq!(c.ranking.bound, 1.5);
        assert_eq!(c.outlier.min_clients, 2);
        assert_eq!(c.valid_for, Duration::from_secs(20));
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(c.locate(ip("192.0.2.200")).unwrap().zone, "sh-b");
        assert_eq!(c.locate(ip("192.0.2.5")).unwrap().zone, "");
        assert_eq!(c.locate(ip("::ffff:192.0.2.5")).unwrap().region, "cn-east");
        assert_eq!(c.locate(ip("2001:db8::1")).unwrap().zone, "fra-a");
        assert!(c.locate(ip("198.51.100.1")).is_none());
        assert!(c.trusts(ip("10.1.2.3")) && !c.trusts(ip("11.0.0.1")));

        let wifi = c.policy.select("cn-east", "wifi");
        assert_eq!(wifi.heartbeat_interval, Duration::from_secs(20));
        let cell = c.policy.select("eu", "cellular");
        assert_eq!(cell.heartbeat_interval, Duration::from_secs(40));
        assert_eq!(cell.max_attempts, 0, "no attempt limit unless configured");
        let both = c.policy.select("cn-east", "cellular");
        assert_eq!(both.max_attempts, 9);
        assert_eq!(both.heartbeat_interval, Duration::from_secs(20));
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        let bad = |s: &str| {
            Config::from_toml(s)
                .and_then(Config::validate)
                .unwrap_err()
                .to_string()
        };
        assert!(bad("prefix = \"nope\"").contains("prefix"));
        assert!(bad("[ranking]\nbound = 0.5").contains("bound"));
        assert!(bad("admin_token = \"short\"").contains("at least 8"));
        assert!(bad("tls_cert = \"/x\"").contains("go together"));
        assert!(bad("unknown_key = 1").contains("unknown"));
        assert!(bad("[[policy.overrides]]\nmax_attempts = 3").contains("region and/or"));
        assert!(bad("[policy.default]\nheartbeat_timeout = \"0s\"").contains("above zero"));
    }
}
