//! `switchyard-router`: flags, env and TOML merged into a `router::Config`, then
//! `switchyard_router::run`.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use ipnet::IpNet;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use switchyard_registry::EtcdConfig;
use switchyard_router::{Config, Listeners};

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
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: Option<String>,
}

impl Args {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                Config::from_toml(&text)?
            }
            None => Config::default(),
        };
        macro_rules! set {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.$field = v; } )* };
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { c.$field = self.$field; } )* };
        }
        set!(
            etcd,
            prefix,
            listen,
            trust_forwarded_for,
            valid_for,
            log_format
        );
        set_opt!(
            http_listen,
            admin_token,
            admin_token_file,
            route_token,
            tls_cert,
            tls_key,
            client_ca
        );
        Ok(c.validate()?)
    }
}

/// How often histogram samples are folded into their buckets (the exporter's own default).
const METRICS_UPKEEP: std::time::Duration = std::time::Duration::from_secs(5);

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = match Args::parse().into_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("switchyard-router: {e:#}");
            std::process::exit(64);
        }
    };
    init_logging(&config.log_format);
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
    let client = EtcdConfig::new(&config.etcd)?
        .connect()
        .await
        .context("connecting to etcd")?;
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let http = match config.http_listen {
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
        prefix = %config.prefix,
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
