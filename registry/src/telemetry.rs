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

/// The version every binary reports in `switchyard_build_info` (the workspace's).
pub const BUILD_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The git commit the binaries were built from (`build.rs`: `SWITCHYARD_BUILD_COMMIT`, else
/// `git rev-parse`, else "unknown").
pub const BUILD_COMMIT: &str = env!("SWITCHYARD_BUILD_COMMIT");

/// Installs the Prometheus recorder for the `metrics` facade, with explicit buckets for the
/// histograms named in `buckets` (the others render as summaries), and spawns its upkeep
/// on the current tokio runtime.
///
/// Every binary also exports `switchyard_build_info{version,commit}` (always 1, so dashboards
/// can join on it and alerts can spot a mixed-version fleet) and the standard `process_*`
/// metrics (CPU seconds, resident memory, open and max fds, start time, threads), read from
/// /proc at each upkeep.
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
    metrics::describe_gauge!(
        "switchyard_build_info",
        "1, labelled with the version and git commit this binary was built from"
    );
    metrics::gauge!("switchyard_build_info", "version" => BUILD_VERSION, "commit" => BUILD_COMMIT)
        .set(1.0);
    let process = metrics_process::Collector::default();
    process.describe();
    // Read once now, so the first scrape already has them (the interval's first tick is
    // immediate too, but runs only once the runtime polls the task).
    process.collect();
    declare_counters(&[
        "switchyard_registry_reregistrations_total",
        "switchyard_registry_watch_resyncs_total",
    ]);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(METRICS_UPKEEP);
        loop {
            tick.tick().await;
            process.collect();
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

/// Exports each counter at 0 before its first event.
///
/// The exporter renders a counter only once it was touched, so until then an alert on its
/// `increase()` sees no series at all (and cannot tell "none happened" from "not
/// scraped"), and the metric-name check of `deploy/` cannot find it. Call it with the
/// counters a binary may count, right after [`install_metrics`].
pub fn declare_counters(names: &[&'static str]) {
    for name in names {
        metrics::counter!(*name).increment(0);
    }
}
