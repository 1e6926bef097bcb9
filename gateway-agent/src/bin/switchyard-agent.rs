//! `switchyard-agent`: the sidecar that registers any gateway in Switchyard's etcd registry
//! and reports its load and health (DESIGN contract 4).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_gateway_agent::agent::{self, http::Target, probe::Probe, sidecar};
use switchyard_gateway_agent::cli::{self, LogFormat};
use switchyard_registry::{Addrs, EtcdConfig, GatewayId, Prefix};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

/// Registers a gateway in etcd, keeps its record current, drains on SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "switchyard-agent", version, args_override_self = true)]
struct Flags {
    /// TOML file with any of these flags as keys (flags and env win).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "SWITCHYARD_ETCD", default_value = "http://127.0.0.1:2379")]
    etcd: String,
    /// Registry prefix in etcd.
    #[arg(long, env = "SWITCHYARD_PREFIX", default_value = "/switchyard")]
    prefix: String,
    /// Gateway id (1–128 chars of A-Z a-z 0-9 . _ -).
    #[arg(long, env = "SWITCHYARD_ID")]
    id: String,
    /// Address clients use for the TCP protocol (host:port).
    #[arg(long, env = "SWITCHYARD_TCP_ADDR")]
    tcp_addr: Option<String>,
    /// URL clients use for the WebSocket protocol (ws:// or wss://).
    #[arg(long, env = "SWITCHYARD_WS_ADDR")]
    ws_addr: Option<String>,
    /// Region of the gateway.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
    region: String,
    /// Zone of the gateway.
    #[arg(long, env = "SWITCHYARD_ZONE", default_value = "")]
    zone: String,
    /// Connections the gateway is sized for.
    #[arg(long, env = "SWITCHYARD_CAPACITY")]
    capacity: u64,
    /// Relative weight (1–10000).
    #[arg(long, env = "SWITCHYARD_WEIGHT", default_value_t = 100)]
    weight: u32,
    /// Gateway software version to show in the record.
    #[arg(long, env = "SWITCHYARD_GATEWAY_VERSION", default_value = "")]
    gateway_version: String,
    /// Label `key=value` (repeat, or comma-separated in the env variable).
    #[arg(long, env = "SWITCHYARD_LABEL", value_delimiter = ',')]
    label: Vec<String>,
    /// Lease TTL (whole seconds, at least 2s).
    #[arg(long, env = "SWITCHYARD_TTL", default_value = "10s", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Health probe: tcp://host:port, http(s)://host:port/path or exec:<command>.
    #[arg(long, env = "SWITCHYARD_PROBE")]
    probe: Option<String>,
    /// Time between probes.
    #[arg(long, env = "SWITCHYARD_PROBE_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    probe_interval: Duration,
    /// A probe slower than this failed.
    #[arg(long, env = "SWITCHYARD_PROBE_TIMEOUT", default_value = "1s", value_parser = humantime::parse_duration)]
    probe_timeout: Duration,
    /// Consecutive successes to become healthy again.
    #[arg(long, env = "SWITCHYARD_RISE", default_value_t = 2)]
    rise: u32,
    /// Consecutive failures to become unhealthy.
    #[arg(long, env = "SWITCHYARD_FALL", default_value_t = 3)]
    fall: u32,
    /// Count ESTABLISHED TCP connections on this local port (from /proc/net/tcp{,6}).
    #[arg(long, env = "SWITCHYARD_COUNT_CONNS_ON")]
    count_conns_on: Option<u16>,
    /// URL answering {"connections": n, "cpu": x}; wins over --count-conns-on.
    #[arg(long, env = "SWITCHYARD_LOAD_URL")]
    load_url: Option<String>,
    /// PEM file of a private CA to trust (besides the public roots) for an https:// probe
    /// and --load-url.
    #[arg(long, env = "SWITCHYARD_PROBE_CA")]
    probe_ca: Option<std::path::PathBuf>,
    /// At most one load-driven record write per this interval.
    #[arg(long, env = "SWITCHYARD_REPORT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    report_interval: Duration,
    /// Skip writes when connections moved by less than this fraction of capacity.
    #[arg(long, env = "SWITCHYARD_REPORT_DELTA", default_value_t = 0.02)]
    report_delta: f64,
    /// Rewrite the record at least this often.
    #[arg(long, env = "SWITCHYARD_REPORT_MAX_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    report_max_interval: Duration,
    /// After SIGTERM/SIGINT: time the record says draining before the lease is revoked.
    #[arg(long, env = "SWITCHYARD_DRAIN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// Replace a live agent registered under the same id.
    #[arg(long, env = "SWITCHYARD_TAKEOVER")]
    takeover: bool,
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

impl Flags {
    fn configs(&self) -> anyhow::Result<(agent::Config, sidecar::Config)> {
        let etcd = EtcdConfig::new(&[&self.etcd])?;
        let prefix = Prefix::new(&self.prefix)?;
        let id = GatewayId::new(&self.id)?;
        let addrs = Addrs {
            tcp: self.tcp_addr.clone(),
            ws: self.ws_addr.clone(),
        };
        let mut labels = BTreeMap::new();
        for l in &self.label {
            let Some((k, v)) = l.split_once('=') else {
                bail!("label {l:?} is not key=value");
            };
            labels.insert(k.to_owned(), v.to_owned());
        }
        let mut a = agent::Config::new(etcd, prefix, id, addrs, self.capacity)?;
        a.region.clone_from(&self.region);
        a.zone.clone_from(&self.zone);
        a.weight = self.weight;
        a.version.clone_from(&self.gateway_version);
        a.labels = labels;
        a.ttl = self.ttl;
        a.report_interval = self.report_interval;
        a.report_delta = self.report_delta;
        a.report_max_interval = self.report_max_interval;
        a.takeover = self.takeover;
        a.validate()?;
        let mut probe = self.probe.as_deref().map(Probe::parse).transpose()?;
        let mut load_url = self.load_url.as_deref().map(Target::parse).transpose()?;
        if let Some(ca) = &self.probe_ca {
            let mut https = [
                match probe.as_mut() {
                    Some(Probe::Http(t)) => Some(t),
                    _ => None,
                },
                load_url.as_mut(),
            ]
            .into_iter()
            .flatten()
            .filter(|t| t.is_tls())
            .peekable();
            if https.peek().is_none() {
                bail!("--probe-ca needs an https:// --probe or --load-url");
            }
            for t in https {
                *t = t.clone().with_ca(ca)?;
            }
        }
        let s = sidecar::Config {
            probe,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            rise: self.rise,
            fall: self.fall,
            count_conns_on: self.count_conns_on,
            load_url,
            load_interval: self.report_interval.min(Duration::from_secs(1)),
            drain_grace: self.drain_grace,
        };
        if s.probe_interval.is_zero() || s.probe_timeout.is_zero() {
            bail!("--probe-interval and --probe-timeout must be above zero");
        }
        Ok((a, s))
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let flags: Flags = cli::parse();
    cli::init_logging(flags.log_format);
    match run(flags).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, the outermost message: it already names the cause.
            tracing::error!("{e}");
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(flags: Flags) -> anyhow::Result<()> {
    let (agent_config, sidecar_config) = flags.configs()?;
    let metrics = cli::install_metrics().context("installing the metrics recorder")?;
    if let Some(addr) = flags.http_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        tokio::spawn(cli::serve(
            listener,
            cli::ops_router(metrics),
            std::future::pending(),
        ));
    }
    // Each SIGTERM/SIGINT is one stop request: the first drains, the second cuts the grace.
    let (stop_tx, stop_rx) = mpsc::channel(2);
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            if stop_tx.send(()).await.is_err() {
                return;
            }
        }
    });
    sidecar::run(agent_config, sidecar_config, stop_rx).await?;
    Ok(())
}
