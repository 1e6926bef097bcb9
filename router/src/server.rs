//! `run`: the router's tasks wired together on sockets the caller bound — registry
//! snapshots into views, the etcd contact log, the once-a-second upkeep, the gRPC server
//! (with `POST /v1/route` on the same port) and the HTTP side port — all ending together.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use switchyard_proto::v1::admin_server::AdminServer;
use switchyard_proto::v1::router_server::RouterServer;
use switchyard_registry::etcd_client::Client;
use switchyard_registry::{Contact, Entry, Snapshot, WatcherConfig, fleet};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::config::ValidConfig;
use crate::limits::Shedding;
use crate::service::{AdminService, RouteMetrics, RouterService, State};
use crate::view::{Builder, Ejector, Handouts, View, now_ms};
use crate::{http, route_http};

/// Why the router could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS material unreadable.
    #[error("tls: cannot read {path}: {source}")]
    Tls {
        /// The PEM file.
        path: std::path::PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("grpc server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    /// The HTTP side port failed.
    #[error("http server: {0}")]
    Http(#[from] std::io::Error),
    /// The configuration does not fit where the router listens (an exposed router without
    /// authentication, DESIGN contract 5).
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
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

/// Runs the router until `shutdown` resolves. `config` comes from
/// [`crate::Config::validate`]; `metrics` renders `/metrics` when given.
pub async fn run(
    listeners: Listeners,
    config: ValidConfig,
    client: Client,
    metrics: Option<PrometheusHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let tls = tls_config(&config)?;
    let listen = listeners.grpc.local_addr()?;
    config.check_exposure(listen)?;
    let watcher = fleet::watch(
        client.clone(),
        config.prefix(),
        WatcherConfig {
            progress_interval: config.etcd_progress_interval,
            silence_timeout: config.etcd_silence_timeout,
            ..WatcherConfig::default()
        },
    );
    let (view, _) = watch::channel(Arc::new(View::default()));
    let state = Arc::new(State {
        client,
        view,
        contact: watcher.contact(),
        handouts: Handouts::default(),
        ejector: Ejector::default(),
        routes_total: AtomicU64::new(0),
        route_metrics: RouteMetrics::new(),
        loopback: crate::config::is_loopback(listen.ip()),
        report_budget: crate::auth::ReportBudget::default(),
        guards: crate::limits::Guards::new(&config.limits),
        config,
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

    let builder = Arc::new(parking_lot::Mutex::new(Builder::default()));
    tokio::spawn(publish_views(
        state.clone(),
        builder.clone(),
        watcher.snapshots(),
        health,
        stop.clone(),
    ));
    tokio::spawn(log_contact(watcher.contact(), stop.clone()));
    tokio::spawn(upkeep(state.clone(), builder, stop.clone()));

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

    // One port for gRPC and for `POST /v1/route` (HTTP/JSON, DESIGN contract 6): the
    // gRPC services are axum routes under tonic's router, so the JSON route merges in.
    let json_route = route_http::routes(router.clone(), &state.config);
    let limits = &state.config.limits;
    let router_server = Shedding::new(
        RouterServer::new(router).max_decoding_message_size(limits.max_message_size),
        limits.route_concurrency,
        limits.retry_after,
    );
    let routes = Routes::new(health_service)
        .add_service(reflection)
        .add_service(router_server)
        .add_service(AdminServer::new(admin).max_decoding_message_size(limits.max_message_size))
        .into_axum_router()
        .merge(json_route);
    // HTTP/1.1 for browsers and plain HTTP clients; gRPC clients still speak HTTP/2 (the
    // connection is told apart by its preface).
    let mut server = Server::builder()
        .accept_http1(true)
        .timeout(limits.request_timeout)
        .max_concurrent_streams(limits.max_concurrent_streams)
        .http2_keepalive_interval(Some(limits.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(limits.http2_keepalive_timeout));
    if !limits.max_connection_age.is_zero() {
        server = server.max_connection_age(limits.max_connection_age);
    }
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    let grpc_stop = stop.clone();
    let result = server
        .add_routes(Routes::from(routes))
        // Small request/response pairs: without TCP_NODELAY, Nagle holds a response back
        // until the previous segment is acknowledged (delayed ACK, up to 40 ms).
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listeners.grpc)
                .with_nodelay(Some(true))
                .with_keepalive(Some(limits.tcp_keepalive)),
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

/// Registry snapshots → views: each one built once, published in the state's one cell;
/// the first one turns health to serving.
async fn publish_views(
    state: Arc<State>,
    builder: Arc<parking_lot::Mutex<Builder>>,
    mut snapshots: watch::Receiver<Arc<Snapshot<Entry>>>,
    health: HealthReporter,
    stop: CancellationToken,
) {
    let mut serving = false;
    loop {
        let snap = snapshots.borrow_and_update().clone();
        if snap.is_loaded() {
            let view = Arc::new(builder.lock().build(&snap, now_ms()));
            publish_gauges(&view);
            state.view.send_replace(view);
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
}

/// One log line when etcd goes away and one when it is back.
async fn log_contact(mut contact: watch::Receiver<Contact>, stop: CancellationToken) {
    let mut was = false;
    loop {
        let now = contact.borrow_and_update().connected;
        if was && !now {
            warn!("lost etcd; serving the last registry snapshot until it is back");
        } else if !was && now {
            info!("etcd watch connected");
        }
        was = now;
        tokio::select! {
            changed = contact.changed() => if changed.is_err() { return },
            () = stop.cancelled() => return,
        }
    }
}

/// Once a second: pending expiry, the live gauges, and a line per minute of staleness.
async fn upkeep(
    state: Arc<State>,
    builder: Arc<parking_lot::Mutex<Builder>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut warned_at = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        let now = now_ms();
        state.guards.upkeep();
        builder
            .lock()
            .expire_pending(state.config.pending_window.as_millis() as i64, now);
        let age = state.snapshot_age_ms();
        let connected = state.etcd_connected();
        metrics::gauge!("switchyard_router_snapshot_age_seconds").set(age as f64 / 1000.0);
        metrics::gauge!("switchyard_router_etcd_connected").set(f64::from(u8::from(connected)));
        let view = state.view();
        let pending = view
            .gateways
            .iter()
            .map(|g| g.shared.pending.load(Ordering::Relaxed))
            .fold(0u64, u64::saturating_add);
        metrics::gauge!("switchyard_router_pending_handouts").set(pending as f64);
        metrics::gauge!("switchyard_router_gateways", "state" => "ejected")
            .set(view.ejected(now) as f64);
        if connected {
            warned_at = 0;
        } else if age / 60_000 > warned_at {
            warned_at = age / 60_000;
            warn!(
                age_ms = age,
                revision = view.revision,
                "still serving a stale registry snapshot"
            );
        }
    }
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
    publish_zone_gauges(view);
}

/// Per zone: gateways a Route may hand out, their connections and capacity. The alert "no
/// serving gateway in a zone" needs a zone whose last gateway vanished to read 0, not to
/// disappear, so every zone seen since start keeps its series.
fn publish_zone_gauges(view: &View) {
    use std::collections::BTreeMap;
    static SEEN: parking_lot::Mutex<BTreeMap<(String, String), ()>> =
        parking_lot::Mutex::new(BTreeMap::new());
    let mut zones: BTreeMap<(String, String), (u64, u64, u64)> = BTreeMap::new();
    for c in &view.candidates {
        let z = zones.entry((c.region.clone(), c.zone.clone())).or_default();
        if c.serving && !c.ops_drained {
            z.0 += 1;
            z.1 += c.connections;
            z.2 += c.capacity;
        }
    }
    let mut seen = SEEN.lock();
    for key in zones.keys() {
        seen.insert(key.clone(), ());
    }
    for key in seen.keys() {
        let (serving, connections, capacity) = zones.get(key).copied().unwrap_or_default();
        let labels = [("region", key.0.clone()), ("zone", key.1.clone())];
        metrics::gauge!("switchyard_router_zone_serving_gateways", &labels).set(serving as f64);
        metrics::gauge!("switchyard_router_zone_connections", &labels).set(connections as f64);
        metrics::gauge!("switchyard_router_zone_capacity", &labels).set(capacity as f64);
    }
}

fn tls_config(config: &ValidConfig) -> Result<Option<ServerTlsConfig>, Error> {
    let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) else {
        return Ok(None);
    };
    let read = |path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| Error::Tls {
            path: path.clone(),
            source,
        })
    };
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(read(cert)?, read(key)?));
    if let Some(ca) = &config.client_ca {
        tls = tls
            .client_ca_root(Certificate::from_pem(read(ca)?))
            .client_auth_optional(true);
    }
    Ok(Some(tls))
}
