//! Switchyard router: watches the etcd registry, keeps an immutable in-memory view, and
//! answers `Route` with a ranked gateway list without ever waiting on etcd.
//!
//! # Layout
//! - [`config`]: [`Config`], every knob with its default; CIDR table and client policies.
//! - [`ranking`]: the pure ranking (DESIGN contract 2): filter, locality with spill,
//!   bounded-load rendezvous first place, two-choice further places, slow start.
//! - [`outlier`]: pure ejection state machine fed by client failure reports.
//! - [`view`]: registry snapshots → immutable [`view::View`]s swapped atomically, plus the
//!   lock-free live counters (pending hand-outs, ejections).
//! - [`service`]: the `Router` and `Admin` gRPC services.
//! - [`http`]: the side port: `/metrics`, `/healthz`, status page.
//! - [`run`]: wires it together on already-bound listeners (tests bind port 0).
//!
//! When etcd is unreachable the router keeps serving its last view and reports how old it
//! is (`snapshot_age_ms`, metric `switchyard_router_snapshot_age_seconds`, a log line).
#![forbid(unsafe_code)]

pub mod config;
pub mod http;
pub mod outlier;
pub mod ranking;
pub mod service;
pub mod view;

pub use config::{Config, ConfigError};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_proto::v1::admin_server::AdminServer;
use switchyard_proto::v1::router_server::RouterServer;
use switchyard_registry::etcd_client::Client;
use switchyard_registry::{Prefix, WatcherConfig, view as registry_view};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tracing::{info, warn};

use crate::service::{AdminService, RouterService, State};
use crate::view::{Builder, Handouts, Outliers, View, now_ms};

/// Why the router could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// TLS material unreadable or refused.
    #[error("tls: {0}")]
    Tls(String),
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP side port failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// Reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// Sockets the router serves on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// gRPC (`Router`, `Admin`, health, reflection).
    pub grpc: TcpListener,
    /// HTTP side port (`/metrics`, `/healthz`, status page), if wanted.
    pub http: Option<TcpListener>,
}

/// Runs the router until `shutdown` resolves. `config` must come from
/// [`Config::validate`]; `metrics` renders `/metrics` when given.
pub async fn run(
    listeners: Listeners,
    config: Config,
    client: Client,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let prefix =
        Prefix::new(config.prefix.clone()).map_err(|e| ConfigError::Invalid(e.to_string()))?;
    let tls = tls_config(&config)?;
    let watcher = registry_view::watch(
        client.clone(),
        &prefix,
        WatcherConfig {
            progress_interval: config.etcd_progress_interval,
            silence_timeout: config.etcd_silence_timeout,
            ..WatcherConfig::default()
        },
    );
    let (changes, _) = watch::channel(Arc::new(View::default()));
    let state = Arc::new(State {
        config,
        prefix,
        client,
        current: ArcSwap::from_pointee(View::default()),
        changes,
        handouts: Handouts::default(),
        outliers: Outliers::default(),
        contact_ms: AtomicI64::new(0),
        connected: AtomicBool::new(false),
        routes_total: AtomicU64::new(0),
        route_metrics: service::RouteMetrics::new(),
    });
    let stop = CancellationToken::new();
    // Background tasks end with `run`, also when its future is dropped (aborted).
    let _stop_on_drop = stop.clone().drop_guard();
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    health
        .set_not_serving::<RouterServer<RouterService>>()
        .await;

    // Registry snapshots → views.
    let builder = Arc::new(parking_lot::Mutex::new(Builder::default()));
    {
        let (state, stop, builder) = (state.clone(), stop.clone(), builder.clone());
        let mut snapshots = watcher.snapshots();
        tokio::spawn(async move {
            let mut serving = false;
            loop {
                let snap = snapshots.borrow_and_update().clone();
                if snap.is_loaded() {
                    let view = Arc::new(builder.lock().build(&snap, now_ms()));
                    publish_gauges(&view);
                    state.current.store(view.clone());
                    state.changes.send_replace(view);
                    if !serving {
                        serving = true;
                        health.set_service_status("", ServingStatus::Serving).await;
                        health.set_serving::<RouterServer<RouterService>>().await;
                        info!(
                            revision = snap.revision,
                            "first registry snapshot loaded; serving"
                        );
                    }
                }
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    // etcd contact → staleness.
    {
        let (state, stop) = (state.clone(), stop.clone());
        let mut contact = watcher.contact();
        tokio::spawn(async move {
            loop {
                let c = *contact.borrow_and_update();
                if let Some(last) = c.last {
                    let ago = last.elapsed().as_millis() as i64;
                    state.contact_ms.store(now_ms() - ago, Ordering::Relaxed);
                }
                let was = state.connected.swap(c.connected, Ordering::Relaxed);
                if was && !c.connected {
                    warn!("lost etcd; serving the last registry snapshot until it is back");
                } else if !was && c.connected {
                    info!("etcd watch connected");
                }
                tokio::select! {
                    changed = contact.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
        });
    }
    // Once a second: pending expiry and staleness gauges.
    {
        let (state, stop) = (state.clone(), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut warned_at = 0u64;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let now = now_ms();
                builder
                    .lock()
                    .expire_pending(state.config.pending_window.as_millis() as i64, now);
                let age = state.snapshot_age_ms(now);
                metrics::gauge!("switchyard_router_snapshot_age_seconds").set(age as f64 / 1000.0);
                metrics::gauge!("switchyard_router_etcd_connected")
                    .set(f64::from(u8::from(state.connected.load(Ordering::Relaxed))));
                let view = state.current.load();
                let pending: u64 = view
                    .gateways
                    .iter()
                    .map(|g| g.shared.pending.load(Ordering::Relaxed))
                    .sum();
                metrics::gauge!("switchyard_router_pending_handouts").set(pending as f64);
                let ejected = view
                    .gateways
                    .iter()
                    .filter(|g| g.shared.ejected_until_ms.load(Ordering::Relaxed) > now)
                    .count();
                metrics::gauge!("switchyard_router_gateways", "state" => "ejected")
                    .set(ejected as f64);
                // One line per minute of staleness while etcd is away.
                if !state.connected.load(Ordering::Relaxed) && age / 60_000 > warned_at {
                    warned_at = age / 60_000;
                    warn!(
                        age_ms = age,
                        revision = view.revision,
                        "still serving a stale registry snapshot"
                    );
                } else if state.connected.load(Ordering::Relaxed) {
                    warned_at = 0;
                }
            }
        });
    }

    let router = RouterService {
        state: state.clone(),
    };
    let admin = AdminService {
        state: state.clone(),
    };
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(switchyard_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let shutdown_token = stop.clone();
    tokio::spawn(async move {
        shutdown.await;
        shutdown_token.cancel();
    });
    let http_task = listeners.http.map(|listener| {
        let app = http::app(state.clone(), metrics);
        let stop = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { stop.cancelled().await })
                .await
        })
    });

    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let grpc_stop = stop.clone();
    let result = server
        .add_service(health_service)
        .add_service(reflection)
        .add_service(RouterServer::new(router))
        .add_service(AdminServer::new(admin))
        // Small request/response pairs: without TCP_NODELAY, Nagle holds a response back
        // until the previous segment is acknowledged (delayed ACK, up to 40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
            async move {
                grpc_stop.cancelled().await;
            },
        )
        .await;
    stop.cancel();
    drop(watcher);
    if let Some(task) = http_task
        && let Ok(Err(e)) = task.await
    {
        return Err(Error::Http(e));
    }
    result?;
    Ok(())
}

fn publish_gauges(view: &View) {
    let mut by_state = [0usize; 4];
    for (c, g) in view.candidates.iter().zip(&view.gateways) {
        by_state[g.record.state as usize] += 1;
        if c.ops_drained {
            by_state[3] += 1;
        }
    }
    for (i, name) in ["serving", "draining", "unhealthy", "ops_drained"]
        .into_iter()
        .enumerate()
    {
        metrics::gauge!("switchyard_router_gateways", "state" => name).set(by_state[i] as f64);
    }
    metrics::gauge!("switchyard_router_snapshot_revision").set(view.revision as f64);
    metrics::gauge!("switchyard_router_invalid_records").set(view.rejected as f64);
}

fn tls_config(config: &Config) -> Result<Option<ServerTlsConfig>, Error> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |p: &std::path::PathBuf| {
        std::fs::read(p).map_err(|e| Error::Tls(format!("{}: {e}", p.display())))
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}
