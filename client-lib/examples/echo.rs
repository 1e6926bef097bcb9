//! Interactive echo client: logs in through the router, sends each stdin line, prints each
//! message received and every client event as one line `event: <name> <details>`.
//!
//! ```text
//! cargo run -p switchyard-client --example echo -- --router http://127.0.0.1:7100 --client-id alice
//! ```

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use futures::StreamExt;
use switchyard_client::{Client, Gateway, Protocol};
use tokio::io::{AsyncBufReadExt, BufReader};

#[derive(Debug, Parser)]
#[command(about = "Switchyard echo client")]
struct Args {
    /// Router gRPC endpoint(s), comma separated.
    #[arg(long, env = "SWITCHYARD_ROUTER", value_delimiter = ',')]
    router: Vec<String>,
    /// Client id.
    #[arg(long, env = "SWITCHYARD_CLIENT_ID")]
    client_id: String,
    /// App token: the Route bearer, and the HELLO token when no login ticket is at hand.
    #[arg(long, env = "SWITCHYARD_TOKEN", default_value = "")]
    token: String,
    /// `tcp` or `ws`.
    #[arg(long, env = "SWITCHYARD_PROTOCOL", default_value = "tcp")]
    protocol: String,
    /// Region hint.
    #[arg(long, env = "SWITCHYARD_REGION", default_value = "")]
    region: String,
    /// Bootstrap gateways `id=address`, comma separated.
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// PEM file of the CA that signed an `https://` router's certificate (default: the
    /// Mozilla roots).
    #[arg(long, env = "SWITCHYARD_ROUTER_CA")]
    router_ca: Option<PathBuf>,
    /// File for the last good gateway list.
    #[arg(long, env = "SWITCHYARD_CACHE_FILE")]
    cache_file: Option<PathBuf>,
    /// Heartbeat interval override (e.g. `20s`).
    #[arg(long, env = "SWITCHYARD_HEARTBEAT_INTERVAL", value_parser = humantime::parse_duration)]
    heartbeat_interval: Option<Duration>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let protocol = match args.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "ws" => Protocol::Ws,
        other => anyhow::bail!("--protocol {other:?}: expected tcp or ws"),
    };
    let bootstrap = args
        .bootstrap
        .iter()
        .map(|b| {
            let (id, addr) = b
                .split_once('=')
                .with_context(|| format!("--bootstrap {b:?}: expected id=address"))?;
            Ok(Gateway::new(id, addr))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut builder = Client::builder()
        .routers(args.router)
        .client_id(args.client_id)
        .token(args.token)
        .protocol(protocol)
        .region(args.region)
        .bootstrap(bootstrap);
    if let Some(p) = args.router_ca {
        builder = builder.router_ca_pem(std::fs::read(&p)?);
    }
    if let Some(p) = args.cache_file {
        builder = builder.cache_file(p);
    }
    if let Some(d) = args.heartbeat_interval {
        builder = builder.heartbeat_interval(d);
    }
    let client = builder.build()?;

    let mut events = client.events();
    tokio::spawn(async move {
        while let Some(e) = events.next().await {
            let text = e.to_string();
            let (name, details) = text.split_once(' ').unwrap_or((&text, ""));
            println!("event: {name} {details}");
        }
    });
    let mut messages = client.connect().await.context("login failed")?;
    tokio::spawn(async move {
        while let Some(m) = messages.next().await {
            println!("{}", String::from_utf8_lossy(&m));
        }
    });

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        match client.send(line).await {
            Ok(receipt) => {
                tokio::spawn(async move {
                    if let Err(e) = receipt.await {
                        eprintln!("undelivered: {e}");
                    }
                });
            }
            Err(e) => {
                eprintln!("send failed: {e}");
                break;
            }
        }
    }
    let unacked = client.close().await;
    if !unacked.is_empty() {
        eprintln!("{} message(s) not acknowledged", unacked.len());
    }
    Ok(())
}
