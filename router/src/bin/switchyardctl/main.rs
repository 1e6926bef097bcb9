//! `switchyardctl`: ask a router what it sees, what a client would get and why, drain and
//! undrain gateways, and watch the fleet live.
//!
//! Talks to a router's gRPC API (`--router`); `gateways` falls back to reading etcd directly
//! (`--etcd`) when no router answers. Errors say what failed and what to check. Like every
//! Switchyard binary it reads `SWITCHYARD_<FLAG>` and a TOML `--config` file, and exits 2
//! on a usage error, 1 when the command fails.

mod output;
mod top;

use std::time::Duration;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};
use switchyard_proto::v1::{self as pb, admin_client::AdminClient, router_client::RouterClient};
use switchyard_registry::cli::{
    EXIT_RUNTIME, EXIT_USAGE, EtcdArgs, fail, given, parse_with_matches,
};
use tonic::metadata::MetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Operate a Switchyard cluster.
#[derive(Debug, Parser)]
#[command(name = "switchyardctl", version, about)]
struct Cli {
    /// TOML file with any of the global flags as keys (flags and env win).
    #[arg(long, env = "SWITCHYARD_CONFIG")]
    config: Option<PathBuf>,
    /// Router gRPC address.
    #[arg(
        long,
        env = "SWITCHYARD_ROUTER",
        default_value = "http://127.0.0.1:7100",
        global = true
    )]
    router: String,
    /// Bearer token for Admin calls (drain, undrain) and token-gated routers.
    #[arg(
        long,
        env = "SWITCHYARD_ADMIN_TOKEN",
        global = true,
        hide_env_values = true
    )]
    token: Option<String>,
    /// CA certificate (PEM) to trust for an https:// router.
    #[arg(long, env = "SWITCHYARD_CA_CERT", global = true)]
    ca_cert: Option<std::path::PathBuf>,
    /// The registry, read by `gateways` when no router answers and `--etcd` (or its env
    /// variable, or the config file) names it.
    #[command(flatten)]
    registry: EtcdArgs,
    /// Whether etcd was named rather than left at its default: only then does `gateways`
    /// fall back to it.
    #[arg(skip)]
    etcd_given: bool,
    /// Output format.
    #[arg(long, env = "SWITCHYARD_OUTPUT", value_enum, default_value_t = Format::Table, global = true)]
    output: Format,
    /// Give up on a router call after this long.
    #[arg(long, env = "SWITCHYARD_TIMEOUT", default_value = "3s", value_parser = humantime::parse_duration, global = true)]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every gateway: state, locality, load, age, version.
    Gateways,
    /// What a client would get, and why each other gateway was passed over.
    Route {
        /// The client id to rank for.
        #[arg(long)]
        client_id: String,
        #[arg(long, default_value = "")]
        region: String,
        #[arg(long, default_value = "")]
        zone: String,
        /// tcp or ws.
        #[arg(long, default_value = "tcp")]
        protocol: String,
        /// Network type policy key (wifi, cellular, …).
        #[arg(long, default_value = "")]
        network: String,
        #[arg(long, default_value_t = 3)]
        limit: u32,
    },
    /// Stop handing out a gateway (writes P/drain/<id>); its agent drains it.
    Drain {
        /// Gateway id.
        id: String,
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Undo a drain.
    Undrain {
        /// Gateway id.
        id: String,
    },
    /// One line per change, as it happens.
    Watch,
    /// A live terminal UI of the routers and every gateway (load, state, hand-outs,
    /// ejections, drains in progress); q, Esc or Ctrl-C quits.
    Top {
        /// Refresh interval.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (0 = until quit).
        #[arg(long, default_value_t = 0)]
        iterations: u64,
        /// Print one frame as plain text and exit (no terminal needed: scripts, tests).
        #[arg(long)]
        once: bool,
        /// Width of the `--once` frame, in columns.
        #[arg(long, default_value_t = 120, requires = "once")]
        width: u16,
    },
}

/// Name in error lines.
const BIN: &str = "switchyardctl";

impl Cli {
    /// What can be refused before talking to anyone (exit 2).
    fn check(&self) -> Result<()> {
        Endpoint::from_shared(self.router.clone()).with_context(|| {
            format!(
                "--router {:?} is not a URL like http://127.0.0.1:7100",
                self.router
            )
        })?;
        if self.etcd_given {
            self.registry.etcd_config()?;
            self.registry.prefix()?;
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let (mut cli, matches) = parse_with_matches::<Cli>();
    cli.etcd_given = given(&matches, "etcd");
    if let Err(e) = cli.check() {
        return fail(BIN, EXIT_USAGE, &format_args!("{e:#}"));
    }
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(BIN, EXIT_RUNTIME, &format_args!("{e:#}")),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Command::Gateways => gateways(&cli).await,
        Command::Route {
            client_id,
            region,
            zone,
            protocol,
            network,
            limit,
        } => {
            let mut router = RouterClient::new(channel(&cli).await?);
            let req = pb::RouteRequest {
                client_id: client_id.clone(),
                region: region.clone(),
                zone: zone.clone(),
                protocol: protocol.clone(),
                network: network.clone(),
                limit: *limit,
                explain: true,
                // A preview: no hand-out is counted, so asking does not move real clients.
                dry_run: true,
                ..Default::default()
            };
            let resp = router
                .route(authed(&cli, req)?)
                .await
                .map_err(|s| explain_status(&cli, s))?
                .into_inner();
            output::route(&resp, cli.output);
            Ok(())
        }
        Command::Drain { id, reason } => {
            let mut admin = AdminClient::new(channel(&cli).await?);
            let by = std::env::var("USER").unwrap_or_else(|_| "switchyardctl".into());
            let req = pb::DrainRequest {
                gateway_id: id.clone(),
                reason: reason.clone(),
                by,
            };
            let resp = admin
                .drain(authed(&cli, req)?)
                .await
                .map_err(|s| explain_status(&cli, s))?
                .into_inner();
            output::done(
                cli.output,
                &format!("drained {id}"),
                serde_json::json!({"drained": id, "revision": resp.revision}),
            );
            Ok(())
        }
        Command::Undrain { id } => {
            let mut admin = AdminClient::new(channel(&cli).await?);
            let req = pb::UndrainRequest {
                gateway_id: id.clone(),
            };
            let resp = admin
                .undrain(authed(&cli, req)?)
                .await
                .map_err(|s| explain_status(&cli, s))?
                .into_inner();
            let msg = if resp.existed {
                format!("undrained {id}")
            } else {
                format!("{id} was not drained")
            };
            output::done(
                cli.output,
                &msg,
                serde_json::json!({"undrained": id, "existed": resp.existed}),
            );
            Ok(())
        }
        Command::Watch => {
            let mut router = RouterClient::new(channel(&cli).await?);
            let mut stream = router
                .watch_gateways(authed(&cli, pb::WatchGatewaysRequest {})?)
                .await
                .map_err(|s| explain_status(&cli, s))?
                .into_inner();
            let mut known = std::collections::BTreeMap::new();
            while let Some(update) = stream
                .message()
                .await
                .map_err(|s| explain_status(&cli, s))?
            {
                output::watch_update(&mut known, &update, cli.output);
            }
            bail!("the router closed the watch stream")
        }
        Command::Top {
            interval,
            iterations,
            once,
            width,
        } => {
            let router = RouterClient::new(channel(&cli).await?);
            top::run(router, &cli, *interval, *iterations, once.then_some(*width)).await
        }
    }
}

/// `gateways`: from the router, or straight from etcd when no router answers.
async fn gateways(cli: &Cli) -> Result<()> {
    let from_router = async {
        let mut router = RouterClient::new(channel(cli).await?);
        let resp = router
            .list_gateways(authed(cli, pb::ListGatewaysRequest {})?)
            .await
            .map_err(|s| explain_status(cli, s))?;
        anyhow::Ok(resp.into_inner())
    }
    .await;
    match from_router {
        Ok(resp) => {
            output::gateways(&resp, "router", cli.output);
            Ok(())
        }
        Err(e) if cli.etcd_given => {
            eprintln!("switchyardctl: {e:#}; reading etcd directly");
            let resp = from_etcd(cli).await?;
            output::gateways(&resp, "etcd", cli.output);
            Ok(())
        }
        Err(e) => {
            Err(e.context("pass --etcd to read the registry directly when no router answers"))
        }
    }
}

/// The registry read straight from etcd, shaped like a router's answer.
async fn from_etcd(cli: &Cli) -> Result<pb::ListGatewaysResponse> {
    use switchyard_registry::fleet;
    let prefix = cli.registry.prefix()?;
    let client = cli.registry.etcd_config()?.connect().await?;
    let snap = tokio::time::timeout(cli.timeout, fleet::load(&client, &prefix))
        .await
        .context("etcd did not answer in time: check --etcd and that etcd is running")?
        .context("reading the registry from etcd")?;
    for (key, reason) in &snap.rejected {
        eprintln!("switchyardctl: skipping {key}: {reason}");
    }
    let drains: std::collections::HashMap<&str, _> = fleet::drains(&snap)
        .map(|(id, d)| (id.as_str(), d))
        .collect();
    let gateways = fleet::gateways(&snap)
        .map(|g| switchyard_router::gateway_proto(g, drains.get(g.id.as_str()).copied()))
        .collect();
    Ok(pb::ListGatewaysResponse {
        gateways,
        revision: snap.revision,
        snapshot_age_ms: 0,
        etcd_connected: true,
        routes_total: 0,
    })
}

/// A channel to the router, failing fast with what to check.
async fn channel(cli: &Cli) -> Result<Channel> {
    let mut endpoint = Endpoint::from_shared(cli.router.clone())
        .with_context(|| {
            format!(
                "--router {:?} is not a URL like http://127.0.0.1:7100",
                cli.router
            )
        })?
        .connect_timeout(cli.timeout)
        .timeout(cli.timeout);
    if cli.router.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &cli.ca_cert {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --ca-cert {}", ca.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls)?;
    }
    endpoint.connect().await.with_context(|| {
        format!(
            "router unreachable at {}: check --router (or SWITCHYARD_ROUTER) and that switchyard-router runs",
            cli.router
        )
    })
}

/// A request carrying the bearer token, when one is given.
fn authed<T>(cli: &Cli, msg: T) -> Result<tonic::Request<T>> {
    let mut req = tonic::Request::new(msg);
    if let Some(token) = &cli.token {
        let value: MetadataValue<_> = format!("Bearer {token}")
            .parse()
            .context("--token holds characters not allowed in a header")?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}

/// Turns a gRPC status into an error that says what to check.
fn explain_status(cli: &Cli, status: tonic::Status) -> anyhow::Error {
    use tonic::Code;
    let hint = match status.code() {
        Code::Unauthenticated | Code::PermissionDenied => {
            "bad or missing token: pass --token (or SWITCHYARD_ADMIN_TOKEN) matching the router's --admin-token"
        }
        Code::NotFound => "unknown gateway id: list them with `switchyardctl gateways`",
        Code::InvalidArgument => "the request was refused as invalid",
        Code::Unavailable => "the router is unreachable or has nothing to route to",
        Code::DeadlineExceeded => "the router did not answer in time (--timeout)",
        _ => "router error",
    };
    anyhow::anyhow!(
        "{hint} ({}: {}) [router {}]",
        code_name(status.code()),
        status.message(),
        cli.router
    )
}

fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::Unavailable => "UNAVAILABLE",
        Code::Unauthenticated => "UNAUTHENTICATED",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::NotFound => "NOT_FOUND",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        _ => "ERROR",
    }
}
