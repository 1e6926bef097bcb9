//! `router::Config`: everything the router library can be told, with documented defaults,
//! read from TOML (the binary merges flags and `SWITCHYARD_*` env over it) and turned by
//! [`Config::validate`] into the [`ValidConfig`] that [`crate::run`] takes.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use switchyard_identity::{AppTokens, Rules, Secret, TicketSigner, Watched};
use switchyard_proto::limits::policy_floor;
use switchyard_proto::v1::ClientPolicy;
use switchyard_registry::{KeyError, Prefix};

use crate::{outlier, ranking};

/// Why a configuration was refused; every message names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `prefix` breaks the key schema.
    #[error("prefix: {0}")]
    Prefix(#[from] KeyError),
    /// A `[ranking]` value is out of range.
    #[error(transparent)]
    Ranking(#[from] ranking::ParamsError),
    /// An `[outlier]` value is out of range.
    #[error(transparent)]
    Outlier(#[from] outlier::ParamsError),
    /// A client policy would make clients misbehave.
    #[error(transparent)]
    Policy(#[from] PolicyError),
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
    /// A bearer token short enough to guess.
    #[error("{key} must be at least 8 characters")]
    ShortToken {
        /// `admin_token` or `route_token`.
        key: &'static str,
    },
    /// A key file (`app_jwks`, `ticket_key`) that cannot be used.
    #[error("{key}: {source}")]
    Keys {
        /// The key naming the file.
        key: &'static str,
        /// What is wrong with it.
        source: switchyard_identity::KeyError,
    },
    /// `app_audience`/`app_issuer` without `app_jwks`: they would silently check nothing.
    #[error("{key} needs app_jwks")]
    WithoutJwks {
        /// The key.
        key: &'static str,
    },
    /// A non-loopback listen address with parts of the API open to anyone (DESIGN
    /// contract 5: refuse unless the operator said `--allow-anonymous`).
    #[error(
        "refusing to listen on {listen} (not loopback) with {open} open to anyone: {fix}, or pass --allow-anonymous"
    )]
    Anonymous {
        /// The gRPC listen address.
        listen: SocketAddr,
        /// What is unauthenticated.
        open: &'static str,
        /// The settings that would protect it.
        fix: &'static str,
    },
    /// Only one of `tls_cert` and `tls_key`.
    #[error("tls_cert and tls_key go together")]
    TlsPair,
    /// `client_ca` without TLS: client certificates need a TLS server.
    #[error("client_ca needs tls_cert and tls_key")]
    ClientCaWithoutTls,
    /// A `cors_allowed_origins` entry that is neither `*` nor an origin.
    #[error(
        "cors_allowed_origins: {origin:?} is not `*` or an origin like https://app.example.com"
    )]
    CorsOrigin {
        /// The entry as given.
        origin: String,
    },
    /// A duration that must be above zero is zero.
    #[error("{key} must be above zero")]
    Zero {
        /// The key.
        key: &'static str,
    },
    /// A `[[policy.overrides]]` entry that would match every client.
    #[error("policy.overrides[{index}] needs a region and/or a network")]
    OverrideMatchesAll {
        /// Position of the entry in the file.
        index: usize,
    },
}

/// Why a client policy was refused. The router tells every client how to behave, so one
/// typo here could make a million phones ping every 30 ms: values are checked when loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A value under its floor ([`switchyard_proto::limits::policy_floor`]).
    #[error("{key} = {} is below the floor of {}", humantime::format_duration(*.value), humantime::format_duration(*.floor))]
    BelowFloor {
        /// The key, e.g. `policy.overrides[network=cellular].heartbeat_interval`.
        key: String,
        /// The value given (after merging an override over the default).
        value: Duration,
        /// The smallest value allowed.
        floor: Duration,
    },
    /// A backoff whose cap is below its base.
    #[error("{key} = {} is below {base_key} = {}", humantime::format_duration(*.cap), humantime::format_duration(*.base))]
    CapBelowBase {
        /// The cap's key.
        key: String,
        /// The base's key.
        base_key: String,
        /// The cap given.
        cap: Duration,
        /// The base given.
        base: Duration,
    },
}

/// The router library's configuration. Every field has a default, so an empty file is
/// valid. Settings only the binary uses (etcd endpoints, listen addresses, log format) live
/// in the binary.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Registry prefix `P`. Default `/switchyard`.
    pub prefix: String,
    /// Bearer token (the ops token) for Admin, ListGateways and WatchGateways. Without it
    /// (and without `client_ca`) Admin is refused: drains must never be open to anyone
    /// who can reach the port; the topology calls stay open only on a loopback router.
    pub admin_token: Option<Secret>,
    /// File holding the admin token (first line), so it stays out of `ps` and env dumps.
    pub admin_token_file: Option<PathBuf>,
    /// When set, Route needs this bearer token (the admin token is accepted too), for
    /// trusted backends calling Route on behalf of clients. With `app_jwks` it is an
    /// alternative to an app token.
    pub route_token: Option<Secret>,
    /// JWKS file of the app's login service: when set, Route needs `authorization: Bearer
    /// <app JWT>` whose `sub` is the request's client_id (or the route/admin token).
    /// Re-read when it changes, so the app can rotate its keys.
    pub app_jwks: Option<PathBuf>,
    /// Accepted `aud` values of app tokens; empty = not checked.
    pub app_audience: Vec<String>,
    /// Accepted `iss` values of app tokens; empty = not checked.
    pub app_issuer: Vec<String>,
    /// Clock skew allowed on app tokens' `exp`/`nbf`. Default 5 s.
    #[serde(with = "humantime_serde")]
    pub token_leeway: Duration,
    /// PEM file of Ed25519 PKCS#8 private keys that sign login tickets: the first signs,
    /// all are published at `/v1/ticket-keys`. Re-read when it changes (rotation). No
    /// tickets when unset.
    pub ticket_key: Option<PathBuf>,
    /// How long a login ticket is valid. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub ticket_lifetime: Duration,
    /// Start on a non-loopback address even with Route or the topology calls open to
    /// anyone. Off by default: an exposed router must say who it serves.
    pub allow_anonymous: bool,
    /// Proxies (CIDRs) whose `x-forwarded-for` is believed; anyone else could forge it to
    /// pick a region.
    pub trust_forwarded_for: Vec<IpNet>,
    /// Browser origins (`https://app.example.com`) that may call `POST /v1/route` from a
    /// page, or `*` for any. Empty (the default): no CORS headers at all, so no page on
    /// another origin can read Route answers unless an operator opted in.
    pub cors_allowed_origins: Vec<String>,
    /// PEM certificate chain for TLS on the gRPC port; plaintext when unset.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: clients presenting a certificate it signed are admins (mTLS).
    /// Client certificates stay optional so Route keeps working without one.
    pub client_ca: Option<PathBuf>,
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
    /// Server settings and per-call limits (`[limits]`).
    pub limits: crate::limits::Limits,
}

/// A [`Config`] that passed [`Config::validate`]: the only kind [`crate::run`] accepts.
/// It reads like a `Config` (through `Deref`) but cannot be built or changed otherwise, so
/// a value the router runs with has always been checked.
#[derive(Debug, Clone)]
pub struct ValidConfig {
    /// The checked settings (the admin token file already read into `admin_token`).
    config: Config,
    /// `config.prefix`, parsed.
    prefix: Prefix,
    /// Verifies app tokens, when `app_jwks` is set.
    app_tokens: Option<Arc<AppTokens>>,
    /// The ticket keys, when `ticket_key` is set.
    tickets: Option<Arc<Watched<TicketSigner>>>,
}

impl ValidConfig {
    /// The registry prefix.
    pub fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    /// The app-token verifier, when Route takes app tokens.
    pub(crate) fn app_tokens(&self) -> Option<&AppTokens> {
        self.app_tokens.as_deref()
    }

    /// The ticket signer's file, when the router issues tickets.
    pub(crate) fn tickets(&self) -> Option<&Watched<TicketSigner>> {
        self.tickets.as_deref()
    }

    /// Whether Route authenticates its callers (app tokens or the route token).
    pub fn route_authenticated(&self) -> bool {
        self.app_tokens.is_some() || self.route_token.is_some()
    }

    /// Whether Admin, ListGateways and WatchGateways are protected (ops token or mTLS).
    pub fn ops_protected(&self) -> bool {
        self.admin_token.is_some() || self.client_ca.is_some()
    }

    /// DESIGN contract 5: a router listening on a non-loopback address refuses to start
    /// while Route or the topology calls are open to anyone, unless `allow_anonymous`.
    pub fn check_exposure(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        if self.allow_anonymous || is_loopback(listen.ip()) {
            return Ok(());
        }
        let (open, fix) = match (self.route_authenticated(), self.ops_protected()) {
            (true, true) => return Ok(()),
            (false, false) => (
                "Route, ListGateways, WatchGateways and Admin",
                "set --app-jwks or --route-token, and --admin-token(-file) or --client-ca",
            ),
            (false, true) => ("Route", "set --app-jwks or --route-token"),
            (true, false) => (
                "ListGateways and WatchGateways",
                "set --admin-token(-file) or --client-ca",
            ),
        };
        Err(ConfigError::Anonymous { listen, open, fix })
    }
}

/// Loopback, IPv4-mapped IPv6 included (`0.0.0.0` and `::` are every interface: not).
pub(crate) fn is_loopback(ip: IpAddr) -> bool {
    canonical(ip).is_loopback()
}

impl std::ops::Deref for ValidConfig {
    type Target = Config;
    fn deref(&self) -> &Config {
        &self.config
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            prefix: switchyard_registry::DEFAULT_PREFIX.into(),
            admin_token: None,
            admin_token_file: None,
            route_token: None,
            app_jwks: None,
            app_audience: Vec::new(),
            app_issuer: Vec::new(),
            token_leeway: switchyard_identity::verify::DEFAULT_LEEWAY,
            ticket_key: None,
            ticket_lifetime: switchyard_identity::ticket::DEFAULT_LIFETIME,
            allow_anonymous: false,
            trust_forwarded_for: Vec::new(),
            cors_allowed_origins: Vec::new(),
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            ranking: ranking::Params::default(),
            outlier: outlier::Params::default(),
            pending_window: Duration::from_secs(10),
            valid_for: Duration::from_secs(30),
            policy: Policies::default(),
            locality: Vec::new(),
            etcd_progress_interval: Duration::from_secs(5),
            etcd_silence_timeout: Duration::from_secs(12),
            limits: crate::limits::Limits::default(),
        }
    }
}

impl Config {
    /// Parses TOML (unknown keys are refused so typos do not go unnoticed).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Ok(toml::from_str(text)?)
    }

    /// Checks every value, reads `admin_token_file` into `admin_token`, and loads the key
    /// files (`app_jwks`, `ticket_key`), so a bad one stops the start (and `--check`).
    pub fn validate(mut self) -> Result<ValidConfig, ConfigError> {
        let prefix = Prefix::new(self.prefix.clone())?;
        self.ranking.validate()?;
        self.outlier.validate()?;
        self.limits.validate()?;
        if let Some(path) = &self.admin_token_file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            self.admin_token = text.lines().next().map(|l| Secret::new(l.trim()));
        }
        for (key, token) in [
            ("admin_token", &self.admin_token),
            ("route_token", &self.route_token),
        ] {
            if token.as_ref().is_some_and(|t| t.expose().len() < 8) {
                return Err(ConfigError::ShortToken { key });
            }
        }
        if self.app_jwks.is_none() {
            for (key, list) in [
                ("app_audience", &self.app_audience),
                ("app_issuer", &self.app_issuer),
            ] {
                if !list.is_empty() {
                    return Err(ConfigError::WithoutJwks { key });
                }
            }
        }
        let app_tokens = match &self.app_jwks {
            Some(path) => {
                let keys = Watched::jwks(path).map_err(|source| ConfigError::Keys {
                    key: "app_jwks",
                    source,
                })?;
                let rules = Rules {
                    audience: self.app_audience.clone(),
                    issuer: self.app_issuer.clone(),
                    leeway: self.token_leeway,
                };
                Some(Arc::new(AppTokens::new(Arc::new(keys), rules)))
            }
            None => None,
        };
        let lifetime = self.ticket_lifetime;
        let tickets = match &self.ticket_key {
            Some(path) => Some(Arc::new(
                Watched::open(path, move |pem| TicketSigner::from_pem(pem, lifetime)).map_err(
                    |source| ConfigError::Keys {
                        key: "ticket_key",
                        source,
                    },
                )?,
            )),
            None => None,
        };
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError::TlsPair);
        }
        if self.client_ca.is_some() && self.tls_cert.is_none() {
            return Err(ConfigError::ClientCaWithoutTls);
        }
        if let Some(origin) = self
            .cors_allowed_origins
            .iter()
            .find(|o| o.as_str() != "*" && !is_origin(o))
        {
            return Err(ConfigError::CorsOrigin {
                origin: origin.clone(),
            });
        }
        for (key, d) in [
            ("valid_for", self.valid_for),
            ("pending_window", self.pending_window),
            ("ticket_lifetime", self.ticket_lifetime),
        ] {
            if d.is_zero() {
                return Err(ConfigError::Zero { key });
            }
        }
        self.policy.validate()?;
        // Longest prefix first, so lookup can stop at the first match.
        self.locality
            .sort_by_key(|r| std::cmp::Reverse(r.cidr.prefix_len()));
        Ok(ValidConfig {
            config: self,
            prefix,
            app_tokens,
            tickets,
        })
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

/// `scheme://host[:port]` as a browser sends it in `Origin`: no path, no trailing slash,
/// nothing a header could not carry. A typo here would silently never match.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
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
    /// Checks the policy against the floors; `at` is its key, e.g. `policy.default`.
    fn validate(&self, at: &str) -> Result<(), PolicyError> {
        for (name, value, floor) in [
            (
                "heartbeat_interval",
                self.heartbeat_interval,
                policy_floor::HEARTBEAT_INTERVAL,
            ),
            (
                "heartbeat_timeout",
                self.heartbeat_timeout,
                policy_floor::HEARTBEAT_TIMEOUT,
            ),
            (
                "backoff_base",
                self.backoff_base,
                policy_floor::BACKOFF_BASE,
            ),
        ] {
            if value < floor {
                return Err(PolicyError::BelowFloor {
                    key: format!("{at}.{name}"),
                    value,
                    floor,
                });
            }
        }
        if self.backoff_cap < self.backoff_base {
            return Err(PolicyError::CapBelowBase {
                key: format!("{at}.backoff_cap"),
                base_key: format!("{at}.backoff_base"),
                cap: self.backoff_cap,
                base: self.backoff_base,
            });
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
    /// Checks the default and every override as clients would get it (the override merged
    /// over the default), naming the override by what it matches.
    fn validate(&self) -> Result<(), ConfigError> {
        self.default.validate("policy.default")?;
        for (index, o) in self.overrides.iter().enumerate() {
            let matches: Vec<String> = [("region", &o.region), ("network", &o.network)]
                .into_iter()
                .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
                .collect();
            if matches.is_empty() {
                return Err(ConfigError::OverrideMatchesAll { index });
            }
            o.over(&self.default)
                .validate(&format!("policy.overrides[{}]", matches.join(",")))?;
        }
        Ok(())
    }

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
        match best {
            Some(o) => o.over(&self.default),
            None => self.default.clone(),
        }
    }
}

impl PolicyOverride {
    /// `base` with the fields this override sets replaced.
    fn over(&self, base: &Policy) -> Policy {
        Policy {
            heartbeat_interval: self.heartbeat_interval.unwrap_or(base.heartbeat_interval),
            heartbeat_timeout: self.heartbeat_timeout.unwrap_or(base.heartbeat_timeout),
            backoff_base: self.backoff_base.unwrap_or(base.backoff_base),
            backoff_cap: self.backoff_cap.unwrap_or(base.backoff_cap),
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            reconnect_spread: self.reconnect_spread.unwrap_or(base.reconnect_spread),
        }
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

    fn bad(toml: &str) -> String {
        Config::from_toml(toml)
            .and_then(Config::validate)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        assert!(bad("prefix = \"nope\"").contains("prefix"));
        assert!(bad("[ranking]\nbound = 0.5").contains("ranking.bound"));
        assert!(bad("[outlier]\nmin_clients = 0").contains("outlier.min_clients"));
        assert!(bad("admin_token = \"short\"").contains("admin_token must be at least 8"));
        assert!(bad("tls_cert = \"/x\"").contains("go together"));
        assert!(bad("unknown_key = 1").contains("unknown"));
        assert!(bad("valid_for = \"0s\"").contains("valid_for must be above zero"));
        assert!(bad("[[policy.overrides]]\nmax_attempts = 3").contains("region and/or"));
        for origin in [
            "https://app.example.com/",
            "app.example.com",
            "https://",
            "https://a b",
        ] {
            let err = bad(&format!("cors_allowed_origins = [{origin:?}]"));
            assert!(err.starts_with("cors_allowed_origins: "), "{origin}: {err}");
        }
    }

    #[test]
    fn cors_origins_and_the_wildcard_are_accepted() {
        let c = Config::from_toml(
            r#"cors_allowed_origins = ["*", "https://app.example.com", "http://localhost:5173", "http://[::1]:8080"]"#,
        )
        .unwrap();
        assert_eq!(c.validate().unwrap().cors_allowed_origins.len(), 4);
    }

    #[test]
    fn binary_settings_are_not_library_settings() {
        // The binary reads these from its own part of the file.
        for key in [
            "etcd = []",
            "listen = \"127.0.0.1:1\"",
            "log_format = \"json\"",
        ] {
            assert!(bad(key).contains("unknown field"), "{key}");
        }
    }

    #[test]
    fn a_heartbeat_below_the_floor_is_refused_naming_the_key() {
        let err =
            bad("[[policy.overrides]]\nnetwork = \"cellular\"\nheartbeat_interval = \"30ms\"");
        assert_eq!(
            err,
            "policy.overrides[network=cellular].heartbeat_interval = 30ms is below the floor of 1s"
        );
        let err = bad("[policy.default]\nheartbeat_timeout = \"0s\"");
        assert!(
            err.starts_with("policy.default.heartbeat_timeout = 0s is below the floor"),
            "{err}"
        );
        let err = bad("[policy.default]\nbackoff_base = \"10ms\"");
        assert!(err.starts_with("policy.default.backoff_base"), "{err}");
        // At the floor is fine.
        assert!(
            Config::from_toml("[policy.default]\nheartbeat_interval = \"1s\"")
                .unwrap()
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn a_backoff_cap_below_its_base_is_refused_naming_the_key() {
        let err = bad("[policy.default]\nbackoff_base = \"2s\"\nbackoff_cap = \"1s\"");
        assert_eq!(
            err,
            "policy.default.backoff_cap = 1s is below policy.default.backoff_base = 2s"
        );
        // An override is checked merged over the default: its cap under the default base.
        let err = bad(
            "[[policy.overrides]]\nregion = \"eu\"\nnetwork = \"wifi\"\nbackoff_cap = \"200ms\"",
        );
        assert_eq!(
            err,
            "policy.overrides[region=eu,network=wifi].backoff_cap = 200ms is below \
             policy.overrides[region=eu,network=wifi].backoff_base = 500ms"
        );
    }

    #[test]
    fn key_files_are_loaded_and_refused_naming_the_key() {
        let dir = std::env::temp_dir().join(format!("sy-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing");
        let err = bad(&format!("app_jwks = {:?}", missing.to_str().unwrap()));
        assert!(err.starts_with("app_jwks: cannot read"), "{err}");
        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let err = bad(&format!("ticket_key = {:?}", not_pem.to_str().unwrap()));
        assert!(err.starts_with("ticket_key: "), "{err}");
        assert_eq!(
            bad("app_audience = [\"chat\"]"),
            "app_audience needs app_jwks"
        );
        assert!(
            bad("[outlier]\nmax_reports_per_identity = 0").contains("max_reports_per_identity")
        );
        let pem = dir.join("tickets.pem");
        std::fs::write(&pem, switchyard_identity::generate_ed25519_pem()).unwrap();
        let c = Config::from_toml(&format!(
            "ticket_key = {:?}\nticket_lifetime = \"30s\"",
            pem.to_str().unwrap()
        ))
        .unwrap()
        .validate()
        .unwrap();
        assert_eq!(
            c.tickets().unwrap().get().lifetime(),
            Duration::from_secs(30)
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_exposed_router_needs_auth_unless_told_anonymous() {
        let at = |s: &str| s.parse::<SocketAddr>().unwrap();
        let open = Config::default().validate().unwrap();
        assert!(open.check_exposure(at("127.0.0.1:7100")).is_ok());
        assert!(open.check_exposure(at("[::1]:7100")).is_ok());
        for exposed in ["0.0.0.0:7100", "[::]:7100", "10.1.2.3:7100"] {
            let err = open.check_exposure(at(exposed)).unwrap_err().to_string();
            assert!(err.contains("--allow-anonymous"), "{err}");
        }
        let half = Config {
            admin_token: Some("admin-token-1".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
        let err = half
            .check_exposure(at("0.0.0.0:1"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("with Route open"), "{err}");
        let both = Config {
            admin_token: Some("admin-token-1".into()),
            route_token: Some("route-token-1".into()),
            ..Config::default()
        };
        assert!(
            both.validate()
                .unwrap()
                .check_exposure(at("0.0.0.0:1"))
                .is_ok()
        );
        let told = Config {
            allow_anonymous: true,
            ..Config::default()
        };
        assert!(
            told.validate()
                .unwrap()
                .check_exposure(at("0.0.0.0:1"))
                .is_ok()
        );
    }

    #[test]
    fn tokens_never_print() {
        let c = Config {
            admin_token: Some("admin-token-1".into()),
            route_token: Some("route-token-1".into()),
            ..Config::default()
        };
        let text = format!("{:?}", c.validate().unwrap());
        assert!(
            !text.contains("admin-token-1") && !text.contains("route-token-1"),
            "{text}"
        );
    }
}
