//! `switchyard-router`: flags, env and TOML merged into a `router::Config` (validated) plus
//! the settings only this binary uses (etcd endpoints, listen addresses, log format), then
//! `switchyard_router::run`. Exits 2 on a usage or configuration error, 1 when running
//! fails (`switchyard_registry::cli`).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{ArgMatches, CommandFactory, FromArgMatches};
use ipnet::IpNet;
use serde::Deserialize;
use switchyard_registry::EtcdConfig;
use switchyard_registry::cli::{self, EtcdArgs, given};
use switchyard_registry::telemetry::{self, LogFormat};
use switchyard_router::{Config, ConfigError, Listeners, ValidConfig};

/// Name in error lines.
const BIN: &str = "switchyard-router";

/// Explicit buckets for Route latency: the default summary hides the microsecond range
/// the router answers in.
const ROUTE_SECONDS_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.025, 0.1,
];

/// Watches the Switchyard registry in etcd and answers Route with ranked gateways.
///
/// The defaults shown are the built-in ones; a value in the `--config` file wins over
/// them, and a flag or its environment variable wins over the file.
#[derive(Debug, clap::Parser)]
#[command(name = "switchyard-router", version)]
struct Args {
    /// TOML file with any of the settings below plus ranking, outlier, policy and locality
    /// tables; flags and env override it.
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// The etcd connection, the same flags as every Switchyard binary.
    #[command(flatten)]
    registry: EtcdArgs,
    /// gRPC listen address.
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// HTTP side port (/metrics, /healthz, status page).
    #[arg(long, env = "SWITCHYARD_HTTP_LISTEN")]
    http_listen: Option<SocketAddr>,
    /// Bearer token for the Admin service.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// File holding the admin token.
    #[arg(long, env = "SWITCHYARD_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Bearer token trusted backends may send on Route instead of an app token (the admin
    /// token is accepted too); alone, it is required on Route.
    #[arg(long, env = "SWITCHYARD_ROUTE_TOKEN", hide_env_values = true)]
    route_token: Option<String>,
    /// JWKS file of the app's login service: Route then needs `authorization: Bearer <app
    /// JWT>` with sub = client_id. Re-read when it changes.
    #[arg(long, env = "SWITCHYARD_APP_JWKS")]
    app_jwks: Option<PathBuf>,
    /// Accepted `aud` values of app tokens, comma-separated (unchecked when unset).
    #[arg(long, env = "SWITCHYARD_APP_AUDIENCE", value_delimiter = ',')]
    app_audience: Option<Vec<String>>,
    /// Accepted `iss` values of app tokens, comma-separated (unchecked when unset).
    #[arg(long, env = "SWITCHYARD_APP_ISSUER", value_delimiter = ',')]
    app_issuer: Option<Vec<String>>,
    /// Clock skew allowed on app tokens' exp/nbf [default: 5s].
    #[arg(long, env = "SWITCHYARD_TOKEN_LEEWAY", value_parser = humantime::parse_duration)]
    token_leeway: Option<std::time::Duration>,
    /// PEM file of Ed25519 private keys signing login tickets (first signs, all published
    /// at /v1/ticket-keys on the HTTP port). Re-read when it changes.
    #[arg(long, env = "SWITCHYARD_TICKET_KEY")]
    ticket_key: Option<PathBuf>,
    /// Login ticket lifetime [default: 60s].
    #[arg(long, env = "SWITCHYARD_TICKET_LIFETIME", value_parser = humantime::parse_duration)]
    ticket_lifetime: Option<std::time::Duration>,
    /// Start on a non-loopback --listen even with Route or ListGateways/WatchGateways open
    /// to anyone (refused otherwise).
    #[arg(long, env = "SWITCHYARD_ALLOW_ANONYMOUS")]
    allow_anonymous: bool,
    /// CIDRs of proxies whose x-forwarded-for is trusted, comma-separated.
    #[arg(long, env = "SWITCHYARD_TRUST_FORWARDED_FOR", value_delimiter = ',')]
    trust_forwarded_for: Option<Vec<IpNet>>,
    /// Browser origins allowed to call POST /v1/route (CORS), comma-separated, or `*`.
    #[arg(long, env = "SWITCHYARD_CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    cors_allowed_origins: Option<Vec<String>>,
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
    #[arg(long, env = "SWITCHYARD_VALID_FOR", default_value = "30s", value_parser = humantime::parse_duration)]
    valid_for: std::time::Duration,
    /// HTTP/2 streams per connection (limits.max_concurrent_streams).
    #[arg(long, env = "SWITCHYARD_MAX_CONCURRENT_STREAMS")]
    max_concurrent_streams: Option<u32>,
    /// HTTP/2 keepalive PING interval, e.g. 30s.
    #[arg(long, env = "SWITCHYARD_HTTP2_KEEPALIVE_INTERVAL", value_parser = humantime::parse_duration)]
    http2_keepalive_interval: Option<std::time::Duration>,
    /// HTTP/2 keepalive PING timeout, e.g. 10s.
    #[arg(long, env = "SWITCHYARD_HTTP2_KEEPALIVE_TIMEOUT", value_parser = humantime::parse_duration)]
    http2_keepalive_timeout: Option<std::time::Duration>,
    /// TCP keepalive idle time, e.g. 60s.
    #[arg(long, env = "SWITCHYARD_TCP_KEEPALIVE", value_parser = humantime::parse_duration)]
    tcp_keepalive: Option<std::time::Duration>,
    /// Connections get GOAWAY after this long (0s = never), e.g. 30m.
    #[arg(long, env = "SWITCHYARD_MAX_CONNECTION_AGE", value_parser = humantime::parse_duration)]
    max_connection_age: Option<std::time::Duration>,
    /// Largest request message decoded, in bytes.
    #[arg(long, env = "SWITCHYARD_MAX_MESSAGE_SIZE")]
    max_message_size: Option<usize>,
    /// Calls taking longer (to their response headers) end CANCELLED, e.g. 10s.
    #[arg(long, env = "SWITCHYARD_REQUEST_TIMEOUT", value_parser = humantime::parse_duration)]
    request_timeout: Option<std::time::Duration>,
    /// Router calls in flight at once; more are shed with UNAVAILABLE.
    #[arg(long, env = "SWITCHYARD_ROUTE_CONCURRENCY")]
    route_concurrency: Option<usize>,
    /// The retry-after-ms hint sent with refusals, e.g. 100ms.
    #[arg(long, env = "SWITCHYARD_RETRY_AFTER", value_parser = humantime::parse_duration)]
    retry_after: Option<std::time::Duration>,
    /// WatchGateways streams open at once; more get RESOURCE_EXHAUSTED.
    #[arg(long, env = "SWITCHYARD_WATCH_STREAMS")]
    watch_streams: Option<usize>,
    /// Route calls per second per caller IP (0 = off).
    #[arg(long, env = "SWITCHYARD_ROUTE_RATE_PER_IP")]
    route_rate_per_ip: Option<u32>,
    /// Route calls one IP may burst above its rate (0 = the rate).
    #[arg(long, env = "SWITCHYARD_ROUTE_RATE_BURST")]
    route_rate_burst: Option<u32>,
    /// Log format.
    #[arg(long, env = "SWITCHYARD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Validate flags, environment, the config file and the files it names (admin token,
    /// TLS), print a summary and exit: 0 when valid, 2 with the reason. Binds no port and
    /// does not contact etcd.
    #[arg(long)]
    check: bool,
}

/// The settings only this binary uses; the rest of the file is the library's [`Config`].
#[derive(Debug)]
struct Process {
    /// Where etcd is.
    etcd: EtcdConfig,
    /// gRPC listen address.
    listen: SocketAddr,
    /// HTTP side port, none when unset.
    http_listen: Option<SocketAddr>,
    /// How log lines are written.
    log_format: LogFormat,
}

/// [`Process`] as the config file may give it (every key optional).
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct ProcessFile {
    /// etcd endpoints.
    etcd: Option<Vec<String>>,
    /// gRPC listen address.
    listen: Option<SocketAddr>,
    /// HTTP side port.
    http_listen: Option<SocketAddr>,
    /// `text` or `json`.
    log_format: Option<String>,
}

/// Keys of the config file that belong to [`Process`], not to the library's [`Config`].
const PROCESS_KEYS: [&str; 4] = ["etcd", "listen", "http_listen", "log_format"];

/// Splits a config file into the binary's part and the library's.
fn read_file(text: &str) -> anyhow::Result<(ProcessFile, Config)> {
    let mut table: toml::Table = text.parse().map_err(ConfigError::Toml)?;
    let process: toml::Table = PROCESS_KEYS
        .iter()
        .filter_map(|k| table.remove(*k).map(|v| (k.to_string(), v)))
        .collect();
    let p = toml::Value::Table(process)
        .try_into()
        .map_err(ConfigError::Toml)?;
    let c = toml::Value::Table(table)
        .try_into()
        .map_err(ConfigError::Toml)?;
    Ok((p, c))
}

impl Args {
    /// The file's settings with what was given as a flag or env variable over them.
    fn into_config(self, matches: &ArgMatches) -> anyhow::Result<(Process, ValidConfig)> {
        let (file, mut c) = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading {}", path.display()))?;
                read_file(&text)?
            }
            None => (ProcessFile::default(), Config::default()),
        };
        let explicit = |id: &str| given(matches, id);
        let etcd = match file.etcd {
            Some(etcd) if !explicit("etcd") => etcd,
            _ => self.registry.etcd,
        };
        let log_format = match file.log_format.as_deref() {
            _ if explicit("log_format") => self.log_format,
            None => self.log_format,
            Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => anyhow::bail!("log_format must be text or json, got {other:?}"),
        };
        let process = Process {
            etcd: EtcdConfig::new(&etcd)?,
            listen: match file.listen {
                Some(listen) if !explicit("listen") => listen,
                _ => self.listen,
            },
            http_listen: self.http_listen.or(file.http_listen),
            log_format,
        };
        if explicit("prefix") {
            c.prefix = self.registry.prefix;
        }
        if explicit("valid_for") {
            c.valid_for = self.valid_for;
        }
        if let Some(v) = self.trust_forwarded_for {
            c.trust_forwarded_for = v;
        }
        if let Some(v) = self.cors_allowed_origins {
            c.cors_allowed_origins = v;
        }
        if let Some(v) = self.app_audience {
            c.app_audience = v;
        }
        if let Some(v) = self.app_issuer {
            c.app_issuer = v;
        }
        if let Some(v) = self.token_leeway {
            c.token_leeway = v;
        }
        if let Some(v) = self.ticket_lifetime {
            c.ticket_lifetime = v;
        }
        if self.allow_anonymous {
            c.allow_anonymous = true;
        }
        for (given, field) in [
            (self.admin_token, &mut c.admin_token),
            (self.route_token, &mut c.route_token),
        ] {
            if let Some(token) = given {
                *field = Some(token.into());
            }
        }
        macro_rules! set_opt {
            ($($field:ident),*) => { $( if self.$field.is_some() { c.$field = self.$field; } )* };
        }
        set_opt!(
            admin_token_file,
            app_jwks,
            ticket_key,
            tls_cert,
            tls_key,
            client_ca
        );
        macro_rules! set_limit {
            ($($field:ident),*) => { $( if let Some(v) = self.$field { c.limits.$field = v; } )* };
        }
        set_limit!(
            max_concurrent_streams,
            http2_keepalive_interval,
            http2_keepalive_timeout,
            tcp_keepalive,
            max_connection_age,
            max_message_size,
            request_timeout,
            route_concurrency,
            retry_after,
            watch_streams,
            route_rate_per_ip,
            route_rate_burst
        );
        let config = c.validate()?;
        config.check_exposure(process.listen)?;
        Ok((process, config))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    // Exits 2 itself on a bad flag (0 for --help and --version).
    let matches = Args::command().get_matches();
    let (process, config) = match Args::from_arg_matches(&matches)
        .map_err(anyhow::Error::from)
        .and_then(|args| args.into_config(&matches))
    {
        Ok(both) => both,
        Err(e) => return cli::fail(BIN, cli::EXIT_USAGE, &format_args!("{e:#}")),
    };
    if matches.get_flag("check") {
        return match check_tls(&config) {
            Ok(()) => {
                println!(
                    "{BIN}: configuration ok: listen {}, http {}, prefix {}, etcd {}, route auth {}, tickets {}",
                    process.listen,
                    process
                        .http_listen
                        .map_or_else(|| "off".to_owned(), |a| a.to_string()),
                    config.prefix(),
                    process.etcd.endpoints.join(","),
                    match (config.app_jwks.is_some(), config.route_token.is_some()) {
                        (true, true) => "app-jwks+route-token",
                        (true, false) => "app-jwks",
                        (false, true) => "route-token",
                        (false, false) => "open",
                    },
                    if config.ticket_key.is_some() {
                        "on"
                    } else {
                        "off"
                    },
                );
                ExitCode::SUCCESS
            }
            Err(e) => cli::fail(BIN, cli::EXIT_USAGE, &format_args!("{e:#}")),
        };
    }
    telemetry::init_logging(process.log_format);
    match run(process, config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            cli::fail(BIN, cli::EXIT_RUNTIME, &format_args!("{e:#}"))
        }
    }
}

/// `--check`: the TLS files read and parsed as the server will (the rest of the config is
/// checked by `validate`), without binding anything.
fn check_tls(config: &ValidConfig) -> anyhow::Result<()> {
    use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(());
    };
    let read = |path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("tls: cannot read {}", path.display()))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Server::builder()
        .tls_config(tls)
        .context("tls: the certificate, key or client CA is not usable")?;
    Ok(())
}

async fn run(process: Process, config: ValidConfig) -> anyhow::Result<()> {
    let metrics =
        telemetry::install_metrics(&[("switchyard_router_route_seconds", ROUTE_SECONDS_BUCKETS)])
            .context("installing the metrics recorder")?;
    telemetry::declare_counters(&[
        "switchyard_router_routes_total",
        "switchyard_router_ejections_total",
    ]);
    let client = process.etcd.connect().await.context("connecting to etcd")?;
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
