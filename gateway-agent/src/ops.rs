//! What the gateway-side binaries serve and set up besides the protocol: the ops HTTP
//! endpoint (`/metrics`, `/healthz`) and the open-file limit.

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

/// `/metrics` (Prometheus text) and `/healthz`; merge more routes into it as needed.
pub fn ops_router(handle: PrometheusHandle) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let handle = handle.clone();
                async move { handle.render() }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
}

/// Serves `router` on an already-bound listener until `shutdown` completes.
pub async fn serve_ops(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Raises the soft open-file limit to the hard one and returns the limit now in force
/// (`None` = unlimited). Every connection costs a descriptor, and the usual soft default
/// (1 024; systemd gives services 1 024 soft under a 512 K hard limit) would refuse
/// logins long before `--capacity`; Go's runtime does the same at start-up.
pub fn raise_fd_limit() -> std::io::Result<Option<u64>> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        )?;
    }
    Ok(getrlimit(Resource::Nofile).current)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_limit_is_raised_to_the_hard_limit() {
        let limit = raise_fd_limit().expect("raising within the hard limit is allowed");
        let now = rustix::process::getrlimit(rustix::process::Resource::Nofile);
        assert_eq!(limit, now.maximum);
        assert_eq!(now.current, now.maximum);
    }
}
