//! Logging and metrics for every Switchyard binary: one subscriber setup, one Prometheus
//! recorder install with its upkeep, so the binaries cannot drift apart.

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Installs the tracing subscriber, writing to stderr (stdout stays for a tool's output);
/// `RUST_LOG` filters (default `info`, with the chatty HTTP/2 stack at `warn`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| "info,h2=warn,tower=warn,hyper=warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// How often histogram samples are folded into their buckets (the exporter's own default).
pub const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// Installs the Prometheus recorder for the `metrics` facade, with explicit buckets for the
/// histograms named in `buckets` (the others render as summaries), and spawns its upkeep
/// on the current tokio runtime.
///
/// `install_recorder` spawns no upkeep: histogram samples pile up in the recorder until
/// something drains them, and only a `/metrics` scrape did, so an unscraped process grew
/// with every sample (one per Route on a router). The upkeep drains them every
/// [`METRICS_UPKEEP`], as the exporter's own `install()` would.
pub fn install_metrics(buckets: &[(&str, &[f64])]) -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (name, bounds) in buckets {
        builder = builder.set_buckets_for_metric(Matcher::Full((*name).to_owned()), bounds)?;
    }
    let handle = builder.install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}
