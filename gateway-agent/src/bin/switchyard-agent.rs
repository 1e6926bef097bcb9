//! `switchyard-agent`: the sidecar that registers any gateway in Switchyard's etcd registry
//! and reports its load and health (DESIGN contract 4).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use switchyard_gateway_agent::agent::{self, Probe, RegistryArgs, SidecarConfig, Target};
use switchyard_gateway_agent::{ops_router, serve_ops};
use switchyard_registry::telemetry::{self, LogFormat};
use switchyard_registry::{Addrs, cli};

/// Name in error lines.
const BIN: &str = "switchyard-agent";

/// Registers a gateway in etcd, keeps its record current, drains on SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "switchyard-agent", version, args_override_self = true)]
struct Flags {
    /// TOML file with any of these flags as keys (flags and env win).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Registry connection and the record's identity, locality and reporting.
    #[command(flatten)]
    registry: RegistryArgs,
    /// Address clients use for the TCP protocol (host:port).
    #[arg(long, env = "SWITCHYARD_TCP_ADDR")]
    tcp_addr: Option<String>,
    /// URL clients use for the WebSocket protocol (ws:// or wss://).
    #[arg(long, env = "SWITCHYARD_WS_ADDR")]
    ws_addr: Option<String>,
    /// Connections the gateway is sized for.
    #[arg(long, env = "SWITCHYARD_CAPACITY")]
    capacity: u64,
    /// Gateway software version to show in the record.
    #[arg(long, env = "SWITCHYARD_GATEWAY_VERSION", default_value = "")]
    gateway_version: String,
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
    /// After SIGTERM/SIGINT: time the record says draining before the lease is revoked.
    #[arg(long, env = "SWITCHYARD_DRAIN_GRACE", default_value = "30s", value_parser = humantime::parse_duration)]
    drain_grace: Duration,
    /// Serve /metrics and /healthz here.
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Validate flags, environment, the config file and the files they name (TLS, CA),
    /// print a summary and exit: 0 when valid, 2 with the reason. Binds no port and does
    /// not contact etcd.
    #[arg(long)]
    check: bool,
}

impl Flags {
    /// The validated settings; any error here is a usage error (exit 2).
    fn configs(&self) -> anyhow::Result<(agent::Config, SidecarConfig)> {
        let addrs = Addrs {
            tcp: self.tcp_addr.clone(),
            ws: self.ws_addr.clone(),
        };
        let mut a = self.registry.config(addrs, self.capacity)?;
        a.version.clone_from(&self.gateway_version);
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
        let s = SidecarConfig {
            probe,
            probe_interval: self.probe_interval,
            probe_timeout: self.probe_timeout,
            rise: self.rise,
            fall: self.fall,
            count_conns_on: self.count_conns_on,
            load_url,
            load_interval: self.registry.report_interval.min(Duration::from_secs(1)),
            drain_grace: self.drain_grace,
        };
        if s.probe_interval.is_zero() || s.probe_timeout.is_zero() {
            bail!("--probe-interval and --probe-timeout must be above zero");
        }
        Ok((a, s))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let flags: Flags = cli::parse();
    telemetry::init_logging(flags.log_format);
    let configs = match flags.configs() {
        Ok(c) => c,
        Err(e) => return cli::fail(BIN, cli::EXIT_USAGE, &format_args!("{e:#}")),
    };
    if flags.check {
        println!(
            "{BIN}: configuration ok: registers {} in {}, capacity {}",
            configs.0.id, configs.0.region, configs.0.capacity
        );
        return ExitCode::SUCCESS;
    }
    match run(flags.http_listen, configs).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            cli::fail(BIN, cli::EXIT_RUNTIME, &format_args!("{e:#}"))
        }
    }
}

async fn run(
    http_listen: Option<SocketAddr>,
    (agent_config, sidecar_config): (agent::Config, SidecarConfig),
) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics(&[]).context("installing the metrics recorder")?;
    telemetry::declare_counters(&[
        "switchyard_agent_record_write_errors_total",
        "switchyard_agent_load_errors_total",
    ]);
    if let Some(addr) = http_listen {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding --http-listen {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /healthz");
        tokio::spawn(serve_ops(
            listener,
            ops_router(metrics),
            std::future::pending(),
        ));
    }
    // Each SIGTERM/SIGINT is one stop request: the first drains, the second cuts the grace.
    let stop = agent::stop_signals().context("installing signal handlers")?;
    agent::run_sidecar(agent_config, sidecar_config, stop).await?;
    Ok(())
}
