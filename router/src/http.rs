//! The HTTP side port: `/metrics` (Prometheus), `/healthz`, `/v1/ticket-keys` (the public
//! login-ticket keys as a JWKS, for gateways), and `/`, a self-contained auto-refreshing
//! status page listing every gateway with a load bar.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::service::State;
use crate::view::now_ms;

#[derive(Clone)]
struct Http {
    state: Arc<State>,
    metrics: Option<PrometheusHandle>,
}

/// The side-port application.
pub(crate) fn app(state: Arc<State>, metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route(TICKET_KEYS, get(ticket_keys))
        .with_state(Http { state, metrics })
}

async fn healthz(Extract(h): Extract<Http>) -> Response {
    if h.state.view.borrow().is_loaded() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "registry not loaded yet\n").into_response()
    }
}

/// Where gateways poll the routers' public ticket keys (DESIGN contract 5).
pub(crate) const TICKET_KEYS: &str = "/v1/ticket-keys";

/// The public ticket keys as a JWKS. Public data, so no auth; cacheable for a short while
/// (gateways also refetch when a ticket names a `kid` they lack).
async fn ticket_keys(Extract(h): Extract<Http>) -> Response {
    match h.state.config.tickets() {
        Some(keys) => (
            [
                (header::CONTENT_TYPE, "application/json"),
                (header::CACHE_CONTROL, "max-age=30"),
            ],
            keys.get().jwks().to_string(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            "this router issues no tickets (start it with --ticket-key)\n",
        )
            .into_response(),
    }
}

async fn metrics_text(Extract(h): Extract<Http>) -> Response {
    match &h.metrics {
        Some(handle) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            handle.render(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed\n").into_response(),
    }
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

async fn status_page(Extract(h): Extract<Http>) -> Html<String> {
    Html(render_status(&h.state))
}

/// The status page as HTML (no external assets: it must work on an isolated network).
pub(crate) fn render_status(state: &State) -> String {
    let view = state.view();
    let now = now_ms();
    let connected = state.etcd_connected();
    let mut page = String::with_capacity(4096 + view.gateways.len() * 512);
    page.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>Switchyard router</title><style>\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}\
td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left}\
.bar{width:160px;height:12px;background:#eee;border-radius:3px;overflow:hidden}\
.fill{height:100%;background:#3a7}.hot{background:#d63}\
.serving{color:#292}.draining{color:#b80}.unhealthy,.ejected,.drained{color:#c22}\
</style></head><body><h1>Switchyard router</h1>",
    );
    let _ = write!(
        page,
        "<p>revision {} · snapshot age {} ms · etcd {} · {} gateways · {} invalid records</p>",
        view.revision,
        state.snapshot_age_ms(),
        if connected {
            "connected"
        } else {
            "<b class=\"unhealthy\">unreachable (serving last snapshot)</b>"
        },
        view.gateways.len(),
        view.rejected,
    );
    page.push_str("<table><tr><th>id</th><th>state</th><th>region</th><th>zone</th><th>load</th><th>connections</th><th>pending</th><th>capacity</th><th>address</th></tr>");
    for g in &view.gateways {
        let r = &g.record;
        let pending = g.shared.pending.load(Ordering::Relaxed);
        let load = r.load.connections.saturating_add(pending) as f64 / r.capacity.max(1) as f64;
        let pct = (load * 100.0).clamp(0.0, 100.0);
        let state_label = if g.drain.is_some() {
            ("drained", "drained by ops")
        } else if g.shared.is_ejected(now) {
            ("ejected", "ejected")
        } else {
            (r.state.as_str(), r.state.as_str())
        };
        let _ = write!(
            page,
            "<tr><td>{id}</td><td class=\"{cls}\">{label}</td><td>{region}</td><td>{zone}</td>\
<td><div class=\"bar\" title=\"{pct:.1}%\"><div class=\"fill{hot}\" style=\"width:{pct:.1}%\"></div></div></td>\
<td>{conns}</td><td>{pending}</td><td>{cap}</td><td>{addr}</td></tr>",
            id = escape(&r.id),
            cls = state_label.0,
            label = state_label.1,
            region = escape(&r.region),
            zone = escape(&r.zone),
            hot = if pct > 85.0 { " hot" } else { "" },
            conns = r.load.connections,
            cap = r.capacity,
            addr = escape(
                r.addrs
                    .tcp
                    .as_deref()
                    .or(r.addrs.ws.as_deref())
                    .unwrap_or("")
            ),
        );
    }
    page.push_str("</table></body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }
}
