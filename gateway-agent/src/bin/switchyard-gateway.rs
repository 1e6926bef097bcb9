//! `switchyard-gateway`: the reference long-connection gateway (DESIGN contract 4).
//!
//! Flags, `SWITCHYARD_<FLAG>` environment variables and a TOML file (`--config`, keys are
//! the flag names with `_`) are merged in that order of precedence.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use serde::Deserialize;
use switchyard_gateway_agent::gateway::{self, Gateway, KickPolicy, Listeners};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

/// Every setting optional here, so flags/env (clap) and the TOML file can be merged.
#[derive(Debug, Default, Parser, Deserialize)]
#[command(
    name = "switchyard-gateway",
    version,
    about = "Switchyard reference long-connection gateway"
)]
#[serde(default, deny_unknown_fields)]
struct Args {
    /// TOML file with any of these settings (flags and env override it).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// etcd endpoints, comma separated.
    #[arg(long, env = "SWITCHYARD_ETCD")]
    etcd: Option<String>,
    /// Registry key prefix.
    #[arg(long, env = "SWITCHYARD_PREFIX")]
    prefix: Option<String>,
    /// Gateway id (registry key, WELCOME).
    #[arg(long, env = "SWITCHYARD_ID")]
    id: Option<String>,
    /// TCP listen address (default 127.0.0.1:7200).
    #[arg(long, env = "SWITCHYARD_LISTEN")]
    listen: Option<SocketAddr>,
    /// WebSocket listen address.
    #[arg(long, env = "SWITCHYARD_WS_LISTEN")]
    ws_listen: Option<SocketAddr>,
    /// TCP address registered (default: --listen when concrete).
    #[arg(long, env = "SWITCHYARD_ADVERTISE")]
    advertise: Option<String>,
    /// WebSocket URL registered (default: ws://<ws-listen>/ws when concrete).
    #[arg(long, env = "SWITCHYARD_WS_ADVERTISE")]
    ws_advertise: Option<String>,
    /// Region registered.
    #[arg(long, env = "SWITCHYARD_REGION")]
    region: Option<String>,
    /// Zone registered.
    #[arg(long, env = "SWITCHYARD_ZONE")]
    zone: Option<String>,
    /// Session limit; more get REJECT{OVERLOADED} (default 100000).
    #[arg(long, env = "SWITCHYARD_CAPACITY")]
    capacity: Option<u64>,
    /// Weight registered (default 100).
    #[arg(long, env = "SWITCHYARD_WEIGHT")]
    weight: Option<u32>,
    /// Registry lease TTL (default 10s).
    #[arg(long, env = "SWITCHYARD_TTL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    ttl: Option<Duration>,
    /// Run without etcd.
    #[arg(long, env = "SWITCHYARD_NO_REGISTER", num_args = 0..=1, default_missing_value = "true")]
    no_register: Option<bool>,
    /// Time to complete TLS, WebSocket upgrade and HELLO (default 10s).
    #[arg(long, env = "SWITCHYARD_HELLO_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    hello_timeout: Option<Duration>,
    /// Heartbeat interval told to clients (default 30s).
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    heartbeat_interval: Option<Duration>,
    /// Close sessions silent this long (default 2.5 × heartbeat interval).
    #[arg(long, env = "SWITCHYARD_IDLE_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    idle_timeout: Option<Duration>,
    /// Debugging: never reap idle sessions.
    #[arg(long, env = "SWITCHYARD_NO_HEARTBEAT_CHECK", num_args = 0..=1, default_missing_value = "true")]
    no_heartbeat_check: Option<bool>,
    /// Log every PING/PONG.
    #[arg(long, env = "SWITCHYARD_LOG_HEARTBEATS", num_args = 0..=1, default_missing_value = "true")]
    log_heartbeats: Option<bool>,
    /// Close clients that read nothing this long (default 10s).
    #[arg(long, env = "SWITCHYARD_SLOW_CLIENT_TIMEOUT", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    slow_client_timeout: Option<Duration>,
    /// Outbound frames queued per session (default 256).
    #[arg(long, env = "SWITCHYARD_SEND_QUEUE")]
    send_queue: Option<usize>,
    /// Largest frame in bytes (default 65536).
    #[arg(long, env = "SWITCHYARD_MAX_FRAME")]
    max_frame: Option<usize>,
    /// GOAWAYs are spread over this window on drain (default 30s).
    #[arg(long, env = "SWITCHYARD_DRAIN_WINDOW", value_parser = humantime::parse_duration)]
    #[serde(with = "humantime_serde")]
    drain_window: Option<Duration>,
    /// kick-old | reject-new | allow-many (default kick-old).
    #[arg(long, env = "SWITCHYARD_KICK_POLICY")]
    kick_policy: Option<String>,
    /// HELLO tokens must be hex(HMAC-SHA256(secret, client_id)).
    #[arg(long, env = "SWITCHYARD_AUTH_SECRET", hide_env_values = true)]
    auth_secret: Option<String>,
    /// PEM certificate chain: serve TLS on both listeners.
    #[arg(long, env = "SWITCHYARD_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "SWITCHYARD_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// /metrics and /healthz address.
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// text | json (default text).
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT")]
    log_format: Option<String>,
}

impl Args {
    /// Flags/env win over the file.
    fn merge(self, file: Args) -> Args {
        macro_rules! pick {
            ($($f:ident),*) => { Args { config: self.config, $($f: self.$f.or(file.$f),)* } };
        }
        pick!(
            etcd,
            prefix,
            id,
            listen,
            ws_listen,
            advertise,
            ws_advertise,
            region,
            zone,
            capacity,
            weight,
            ttl,
            no_register,
            hello_timeout,
            heartbeat_interval,
            idle_timeout,
            no_heartbeat_check,
            log_heartbeats,
            slow_client_timeout,
            send_queue,
            max_frame,
            drain_window,
            kick_policy,
            auth_secret,
            tls_cert,
            tls_key,
            http_listen,
            log_format
        )
    }
}

fn init_logging(format: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        "text" => builder.init(),
        "json" => builder.json().init(),
        other => bail!("--log-format {other:?}: expected text or json"),
    }
    Ok(())
}

async fn serve_http(addr: SocketAddr) -> anyhow::Result<()> {
    let handle = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .context("install metrics recorder")?;
    let app = axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(move || {
                let h = handle.clone();
                async move { h.render() }
            }),
        )
        .route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind --http-listen {addr}"))?;
    info!(%addr, "metrics on /metrics");
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "http server failed");
        }
    });
    Ok(())
}

/// Resolves on the first SIGTERM/SIGINT; a second one exits at once.
async fn first_signal() {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        warn!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!("signal: draining (a second signal exits at once)");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        warn!("second signal: exiting now");
        std::process::exit(1);
    });
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Args::parse();
    let file = match &cli.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("read --config {}", path.display()))?;
            toml::from_str(&text).with_context(|| format!("parse --config {}", path.display()))?
        }
        None => Args::default(),
    };
    let args = cli.merge(file);
    init_logging(args.log_format.as_deref().unwrap_or("text"))?;

    let id = args.id.clone().unwrap_or_else(|| "gw-1".into());
    let mut config = gateway::Config::new(id.clone());
    if let Some(d) = args.hello_timeout {
        config.hello_timeout = d;
    }
    if let Some(d) = args.heartbeat_interval {
        config.heartbeat_interval = d;
        config.idle_timeout = gateway::default_idle_timeout(d);
    }
    if let Some(d) = args.idle_timeout {
        config.idle_timeout = d;
    }
    config.heartbeat_check = !args.no_heartbeat_check.unwrap_or(false);
    config.log_heartbeats = args.log_heartbeats.unwrap_or(false);
    if let Some(d) = args.slow_client_timeout {
        config.slow_client_timeout = d;
    }
    if let Some(n) = args.send_queue {
        config.send_queue = n;
    }
    if let Some(n) = args.max_frame {
        config.max_frame = n;
    }
    if let Some(n) = args.capacity {
        config.capacity = n;
    }
    if let Some(d) = args.drain_window {
        config.drain_window = d;
    }
    if let Some(p) = &args.kick_policy {
        config.kick_policy = p.parse::<KickPolicy>()?;
    }
    config.auth_secret = args.auth_secret.clone().map(String::into_bytes);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        config.tls = Some(gateway::load_tls(cert, key)?);
    }
    let gw = Gateway::new(config).context("invalid gateway settings")?;

    if !args.no_register.unwrap_or(false) {
        bail!(
            "registration needs the embedded agent, which this build does not have yet; \
             run with --no-register"
        );
    }

    if let Some(addr) = args.http_listen {
        serve_http(addr).await?;
    }
    let listen = args
        .listen
        .unwrap_or_else(|| "127.0.0.1:7200".parse().expect("valid"));
    let tcp = TcpListener::bind(listen)
        .await
        .with_context(|| format!("bind --listen {listen}"))?;
    let ws = match args.ws_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .with_context(|| format!("bind --ws-listen {a}"))?,
        ),
        None => None,
    };
    info!(
        %id,
        tcp = %tcp.local_addr()?,
        ws = ?ws.as_ref().map(TcpListener::local_addr),
        "gateway listening"
    );
    gw.run(Listeners { tcp: Some(tcp), ws }, first_signal())
        .await?;
    info!("drained, exiting");
    Ok(())
}
