//! The registration flags `switchyard-agent` and `switchyard-gateway` share (flattened into
//! each), so both register the same way and a flag added here reaches both.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_registry::cli::EtcdArgs;
use switchyard_registry::{Addrs, ConnectError, GatewayId, KeyError};

use super::{Config, ConfigError};

/// Where and how a gateway is registered: the etcd connection and the record's identity,
/// locality and reporting policy (DESIGN contracts 1 and 4).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// The etcd connection, the same flags as every Switchyard binary.
    #[command(flatten)]
    pub etcd: EtcdArgs,
    /// Gateway id: the registry key, sent in WELCOME (1–128 chars of A-Z a-z 0-9 . _ -).
    #[arg(long, env = "SWITCHYARD_ID")]
    pub id: String,
    /// Region registered.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
    pub region: String,
    /// Zone registered.
    #[arg(long, env = "SWITCHYARD_ZONE", default_value = "")]
    pub zone: String,
    /// Relative weight registered (1–10000).
    #[arg(long, env = "SWITCHYARD_WEIGHT", default_value_t = 100)]
    pub weight: u32,
    /// Label `key=value` registered (repeat, or comma-separated in the env variable).
    #[arg(long, env = "SWITCHYARD_LABEL", value_delimiter = ',')]
    pub label: Vec<String>,
    /// Lease TTL (whole seconds, at least 2s).
    #[arg(long, env = "SWITCHYARD_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// At most one load-driven record write per this interval.
    #[arg(long, env = "SWITCHYARD_REPORT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub report_interval: Duration,
    /// Skip writes when connections moved by less than this fraction of capacity.
    #[arg(long, env = "SWITCHYARD_REPORT_DELTA", default_value_t = 0.02)]
    pub report_delta: f64,
    /// Rewrite the record at least this often.
    #[arg(long, env = "SWITCHYARD_REPORT_MAX_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub report_max_interval: Duration,
    /// Replace a live agent registered under the same id.
    #[arg(long, env = "SWITCHYARD_TAKEOVER")]
    pub takeover: bool,
}

/// Why the registration flags were refused.
#[derive(Debug, thiserror::Error)]
pub enum ArgsError {
    /// `--etcd` holds no usable endpoint.
    #[error("--etcd: {0}")]
    Etcd(#[from] ConnectError),
    /// `--prefix` or `--id` breaks the key schema.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A `--label` without `=`.
    #[error("label {0:?} is not key=value")]
    Label(String),
    /// The resulting agent configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl RegistryArgs {
    /// The validated agent configuration for a gateway reachable at `addrs`, sized for
    /// `capacity` connections (each binary has its own capacity flag: required for the
    /// sidecar, the session limit for the reference gateway).
    pub fn config(&self, addrs: Addrs, capacity: u64) -> Result<Config, ArgsError> {
        let mut labels = BTreeMap::new();
        for l in &self.label {
            let (k, v) = l
                .split_once('=')
                .ok_or_else(|| ArgsError::Label(l.clone()))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        let mut c = Config::new(
            self.etcd.etcd_config()?,
            self.etcd.prefix()?,
            GatewayId::new(&self.id)?,
            addrs,
            capacity,
        )?;
        c.region.clone_from(&self.region);
        c.zone.clone_from(&self.zone);
        c.weight = self.weight;
        c.labels = labels;
        c.ttl = self.ttl;
        c.report_interval = self.report_interval;
        c.report_delta = self.report_delta;
        c.report_max_interval = self.report_max_interval;
        c.takeover = self.takeover;
        c.validate()?;
        Ok(c)
    }
}
