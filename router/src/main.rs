//! `switchyard-router`: flags, env and TOML merged into a `router::Config` (validated) plus
//! the settings only this binary uses (etcd endpoints, listen addresses, log format), then
//! `switchyard_router::run`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use serde::Deserialize;
use switchyard_registry::EtcdConfig;
use switchyard_router::{Config, Listeners, ValidConfig};

/// Watches the Switchyard registry in etcd and answers Route with ranked gateways.
#[derive(Debug, Parser)]
#[command(name = "switchyard-router", version)]
struct Args {
    /// TOML file with any of the settings below plus ranking, outlier, policy and locality
    /// tables; flags and env override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "SWITCHYARD_ETCD", value_delimiter = ',')]
    etcd: Option<Vec<String>>,
    /// Registry prefix.
    #[arg(long, env = "SWITCHYARD_PREFIX")]
    prefix: Option<String>,
    /// gRPC listen address.
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP side port (/metrics, /healthz, status page).
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Bearer token for the Admin service.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Bearer token required for Route/ListGateways/WatchGateways.
    #[arg(long, env = "SWITCHYARD_ROUTE_TOKEN", hide_env_values = true)]
    route_token: Option<String>,
    /// CIDRs of proxies whose x-forwarded-for is trusted, comma-separated.
    #[arg(long, env = "SWITCHYARD_TRUST_FORWARDED_FOR", value_delimiter = ',')]
    trust_forwarded_for: Option<Vec<IpNet>>,
    /// TLS certificate chain (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "SWITCHYARD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) for admin client certificates (mTLS).
    #[arg(long, env = "SWITCHYARD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
    /// How long clients may cache a Route answer, e.g. 30s.
    #[arg(long, env = "SWITCHYARD_VALID_FOR", value_parser = humantime::parse_duration)]
    valid_for: Option<std::time::Duration>,
    /// Log format: text or json.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

/// The settings only this binary uses; the rest of the file is the library's [`Config`].
#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Process {
    /// etcd endpoints to connect to.
    etcd: Vec<String>,
    /// gRPC listen address.
    listen: SocketAddr,
    /// HTTP side port, none when unset.
    http_listen: Option<SocketAddr>,
    /// Log format: `text` or `json`.
    log_format: LogFormat,
}

impl Default for Process {
    fn default() -> Self {
        Self {
            etcd: vec!["http://127.0.0.1:2379".into()],
            listen: SocketAddr::from(([127, 0, 0, 1], 7100)),
            http_listen: None,
            log_format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Keys of the config file that belong to [`Process`], not to the library's [`Config`].
const PROCESS_KEYS: [&str; 4] = ["etcd", "listen", "http_listen", "log_format"];

impl Args {
    fn into_config(self) -> anyhow::Result<(Process, ValidConfig)> {
        let (mut p, mut c) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                let mut table: toml::Table =
                    text.parse().map_err(switchyard_router::ConfigError::Toml)?;
                let process: toml::Table = PROCESS_KEYS
                    .iter()
                    .filter_map(|k| table.remove(*k).map(|v| (k.to_string(), v)))
                    .collect();
                let p: Process = toml::Value::Table(process)
                    .try_into()
                    .map_err(switchyard_router::ConfigError::Toml)?;
                let c: Config = toml::Value::Table(table)
                    .try_into()
                    .map_err(switchyard_router::ConfigError::Toml)?;
                (p, c)
            }
            None => (Process::default(), Config::default()),
        };
        macro_rules! set {
            ($into:ident: $($field:ident),*) => { $( if let Some(v) = self.$field { $into.$field = v; } )* };
        }
        macro_rules! set_opt {
            ($into:ident: $($field:ident),*) => { $( if self.$field.is_some() { $into.$field = self.$field; } )* };
        }
        set!(p: etcd, listen, log_format);
        set_opt!(p: http_listen);
        set!(c: prefix, trust_forwarded_for, valid_for);
        set_opt!(
            c: admin_token,
            admin_token_file,
            route_token,
            tls_cert,
            tls_key,
            client_ca
        );
        Ok((p, c.validate()?))
    }
}

/// How often histogram samples are folded into their buckets (the exporter's own default).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (process, config) = match Args::parse().into_config() {
        Ok(both) => both,
        Err(e) => {
            eprintln!("switchyard-router: {e:#}");
            std::process::exit(64);
        }
    };
    init_logging(process.log_format);
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("switchyard_router_route_seconds".into()),
            &[
                0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
            ],
        )?
        .install_recorder()
        .context("installing the metrics recorder")?;
    // `install_recorder` spawns no upkeep task: histogram samples (one per Route) pile up
    // in the recorder until something drains them, and only a /metrics scrape did, so an
    // unscraped router grew with every Route. Drain them on a timer like `install()` does.
    let upkeep = metrics.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    let client = EtcdConfig::new(&process.etcd)?
        .connect()
        .await
        .context("connecting to etcd")?;
    let grpc = tokio::net::TcpListener::bind(process.listen)
        .await
        .with_context(|| format!("binding {}", process.listen))?;
    let http = match process.http_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {addr}"))?,
        ),
        None => None,
    };
    tracing::info!(
        listen = %grpc.local_addr()?,
        http = ?http.as_ref().map(|l| l.local_addr()).transpose()?,
        prefix = %config.prefix(),
        "switchyard-router starting"
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    switchyard_router::run(
        Listeners { grpc, http },
        config,
        client,
        Some(metrics),
        shutdown,
    )
    .await?;
    Ok(())
}
