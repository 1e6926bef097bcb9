//! The HTTP side port: `/metrics` (Prometheus), `/healthz`, `/v1/ticket-keys` (the public
//! login-ticket keys as a JWKS, for gateways), and `/`, a self-contained auto-refreshing
//! status page: gateways grouped by region and zone with totals, each with a load bar and a
//! chart of its connections over the last minutes, and a chart of the router's route rate
//! (inline SVG; no script, no external asset).

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

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
    history: Arc<parking_lot::Mutex<History>>,
}

/// The side-port application.
pub(crate) fn app(state: Arc<State>, metrics: Option<PrometheusHandle>) -> Router {
    let history = Arc::new(parking_lot::Mutex::new(History::default()));
    tokio::spawn(sample_history(Arc::downgrade(&state), history.clone()));
    Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route(TICKET_KEYS, get(ticket_keys))
        .with_state(Http {
            state,
            metrics,
            history,
        })
}

/// How often the status page's charts take a sample.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Samples kept: ten minutes at [`SAMPLE_EVERY`].
const HISTORY_SAMPLES: usize = 120;

/// The last minutes of what the status page charts, sampled whether or not anyone looks
/// (a page opened during an incident must show what led up to it).
#[derive(Debug, Default)]
struct History {
    /// Route answers per second between consecutive samples, oldest first.
    route_rate: VecDeque<f64>,
    /// Connections per gateway id, index-aligned with `route_rate` (`None` before the
    /// gateway was seen); gateways gone from the view for a whole window are dropped.
    connections: BTreeMap<String, VecDeque<Option<u64>>>,
    /// Route total and time (Unix ms) at the previous sample.
    last_routes: Option<(u64, i64)>,
}

impl History {
    fn record(&mut self, now_ms: i64, routes_total: u64, conns: &BTreeMap<String, u64>) {
        let rate = match self.last_routes {
            Some((total, at)) if now_ms > at => {
                routes_total.saturating_sub(total) as f64 * 1000.0 / (now_ms - at) as f64
            }
            _ => 0.0,
        };
        self.last_routes = Some((routes_total, now_ms));
        let len = self.route_rate.len();
        self.route_rate.push_back(rate);
        for (id, &c) in conns {
            self.connections
                .entry(id.clone())
                .or_insert_with(|| std::iter::repeat_n(None, len).collect())
                .push_back(Some(c));
        }
        for (id, series) in &mut self.connections {
            if !conns.contains_key(id) {
                series.push_back(None);
            }
        }
        if self.route_rate.len() > HISTORY_SAMPLES {
            self.route_rate.pop_front();
            for series in self.connections.values_mut() {
                series.pop_front();
            }
        }
        self.connections
            .retain(|_, series| series.iter().any(Option::is_some));
    }
}

/// Samples the view every [`SAMPLE_EVERY`] until the router's state is gone.
async fn sample_history(state: std::sync::Weak<State>, history: Arc<parking_lot::Mutex<History>>) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        let view = state.view();
        let conns: BTreeMap<String, u64> = view
            .gateways
            .iter()
            .map(|g| (g.record.id.clone(), g.record.load.connections))
            .collect();
        let routes = state.routes_total.load(Ordering::Relaxed);
        history.lock().record(now_ms(), routes, &conns);
    }
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
    let history = h.history.lock();
    Html(render_status(&h.state, &history))
}

/// A small line chart of `values` (gaps where `None`) as inline SVG, scaled to `max`.
fn sparkline(values: &[Option<f64>], max: f64, width: u32, height: u32, class: &str) -> String {
    let mut svg = format!(
        "<svg class=\"{class}\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" role=\"img\">"
    );
    let n = values.len().max(2) - 1;
    let max = if max > 0.0 { max } else { 1.0 };
    let mut run = String::new();
    let flush = |run: &mut String, svg: &mut String| {
        if run.contains(' ') {
            let _ = write!(svg, "<polyline points=\"{}\"/>", run.trim());
        }
        run.clear();
    };
    for (i, v) in values.iter().enumerate() {
        match v {
            Some(v) => {
                let x = i as f64 * f64::from(width) / n as f64;
                let y = f64::from(height) - 1.0 - (v / max).clamp(0.0, 1.0) * f64::from(height - 2);
                let _ = write!(run, "{x:.1},{y:.1} ");
            }
            None => flush(&mut run, &mut svg),
        }
    }
    flush(&mut run, &mut svg);
    svg.push_str("</svg>");
    svg
}

/// Sums of one group of gateways: the totals in each region's and zone's heading.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    gateways: usize,
    serving: usize,
    connections: u64,
    capacity: u64,
}

impl Totals {
    fn add(&mut self, other: Totals) {
        self.gateways += other.gateways;
        self.serving += other.serving;
        self.connections += other.connections;
        self.capacity += other.capacity;
    }

    fn describe(&self) -> String {
        format!(
            "{} gateway{}, {} serving · {} / {} connections ({:.0}%)",
            self.gateways,
            if self.gateways == 1 { "" } else { "s" },
            self.serving,
            self.connections,
            self.capacity,
            self.connections as f64 * 100.0 / self.capacity.max(1) as f64
        )
    }
}

/// The status page as HTML (no external assets: it must work on an isolated network).
fn render_status(state: &State, history: &History) -> String {
    let view = state.view();
    let now = now_ms();
    let connected = state.etcd_connected();
    let mut page = String::with_capacity(8192 + view.gateways.len() * 1024);
    page.push_str(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"5\">\
<title>Switchyard router</title><style>\
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;background:#fafafa}\
h2{margin:1.2em 0 .3em;font-size:1.2em}h3{margin:.8em 0 .3em;font-size:1em;color:#444}\
.totals{font-weight:normal;color:#666;margin-left:.6em}\
table{border-collapse:collapse;background:#fff}\
td,th{padding:.3em .7em;border-bottom:1px solid #ddd;text-align:left}th{font-size:.85em;color:#555}\
.bar{width:140px;height:12px;background:#eee;border-radius:3px;overflow:hidden}\
.fill{height:100%;background:#3a7}.hot{background:#d63}\
.serving{color:#292}.draining{color:#b80}.unhealthy,.ejected,.drained{color:#c22}\
svg polyline{fill:none;stroke:#37a;stroke-width:1.5}svg.spark{background:#f3f6fa}\
svg.rate{background:#f3f6fa}svg.rate polyline{stroke:#a53;stroke-width:2}\
.summary{display:flex;gap:2em;align-items:center}\
</style></head><body><h1>Switchyard router</h1>",
    );
    let rates: Vec<Option<f64>> = history.route_rate.iter().map(|&r| Some(r)).collect();
    let max_rate = history.route_rate.iter().copied().fold(0.0, f64::max);
    let _ = write!(
        page,
        "<div class=\"summary\"><p>revision {} · snapshot age {} ms · etcd {} · {} gateways · {} invalid records</p>\
<figure id=\"route-rate\"><figcaption>routes/s, last {} min (peak {:.1}, now {:.1})</figcaption>{}</figure></div>",
        view.revision,
        state.snapshot_age_ms(),
        if connected {
            "connected"
        } else {
            "<b class=\"unhealthy\">unreachable (serving last snapshot)</b>"
        },
        view.gateways.len(),
        view.rejected,
        (HISTORY_SAMPLES as u64 * SAMPLE_EVERY.as_secs()) / 60,
        max_rate,
        history.route_rate.back().copied().unwrap_or(0.0),
        sparkline(&rates, max_rate, 360, 60, "rate"),
    );

    // region -> zone -> gateways (BTreeMaps: a stable order from one refresh to the next).
    let mut groups: BTreeMap<&str, BTreeMap<&str, Vec<&crate::view::Gateway>>> = BTreeMap::new();
    for g in &view.gateways {
        groups
            .entry(g.record.region.as_str())
            .or_default()
            .entry(g.record.zone.as_str())
            .or_default()
            .push(g);
    }
    let totals = |gws: &[&crate::view::Gateway]| {
        gws.iter().fold(Totals::default(), |mut t, g| {
            t.gateways += 1;
            if g.record.state.as_str() == "serving"
                && g.drain.is_none()
                && !g.shared.is_ejected(now)
            {
                t.serving += 1;
            }
            t.connections += g.record.load.connections;
            t.capacity += g.record.capacity;
            t
        })
    };
    for (region, zones) in &groups {
        let mut region_totals = Totals::default();
        for gws in zones.values() {
            region_totals.add(totals(gws));
        }
        let _ = write!(
            page,
            "<section class=\"region\" data-region=\"{r}\"><h2>region {r}<span class=\"totals\">{t}</span></h2>",
            r = escape(region),
            t = region_totals.describe(),
        );
        for (zone, gws) in zones {
            let _ = write!(
                page,
                "<h3 class=\"zone\" data-zone=\"{z}\">zone {z}<span class=\"totals\">{t}</span></h3>\
<table><tr><th>id</th><th>state</th><th>load</th><th>connections, last {m} min</th><th>connections</th><th>pending</th><th>capacity</th><th>address</th></tr>",
                z = escape(zone),
                t = totals(gws).describe(),
                m = (HISTORY_SAMPLES as u64 * SAMPLE_EVERY.as_secs()) / 60,
            );
            for g in gws {
                gateway_row(&mut page, g, now, history);
            }
            page.push_str("</table>");
        }
        page.push_str("</section>");
    }
    page.push_str("</body></html>\n");
    page
}

fn gateway_row(page: &mut String, g: &crate::view::Gateway, now: i64, history: &History) {
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
    let series: Vec<Option<f64>> = history
        .connections
        .get(&r.id)
        .map(|s| s.iter().map(|c| c.map(|c| c as f64)).collect())
        .unwrap_or_default();
    let _ = write!(
        page,
        "<tr class=\"gateway\" data-gateway=\"{id}\"><td>{id}</td><td class=\"{cls}\">{label}</td>\
<td><div class=\"bar\" title=\"{pct:.1}%\"><div class=\"fill{hot}\" style=\"width:{pct:.1}%\"></div></div></td>\
<td>{chart}</td><td>{conns}</td><td>{pending}</td><td>{cap}</td><td>{addr}</td></tr>",
        id = escape(&r.id),
        cls = state_label.0,
        label = state_label.1,
        hot = if pct > 85.0 { " hot" } else { "" },
        chart = sparkline(&series, r.capacity as f64, 140, 24, "spark"),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<a href='x'>&"), "&lt;a href=&#39;x&#39;&gt;&amp;");
    }

    #[test]
    fn history_rates_align_and_window() {
        let mut h = History::default();
        let one = BTreeMap::from([("a".to_owned(), 5u64)]);
        let two = BTreeMap::from([("a".to_owned(), 6u64), ("b".to_owned(), 1u64)]);
        h.record(0, 0, &one);
        h.record(5_000, 50, &two);
        assert_eq!(h.route_rate, [0.0, 10.0]);
        assert_eq!(h.connections["a"], [Some(5), Some(6)]);
        assert_eq!(
            h.connections["b"],
            [None, Some(1)],
            "aligned: seen from the second sample"
        );
        for i in 2..=HISTORY_SAMPLES as i64 + 5 {
            h.record(i * 5_000, 50, &one);
        }
        assert_eq!(h.route_rate.len(), HISTORY_SAMPLES);
        assert!(h.connections.values().all(|s| s.len() == HISTORY_SAMPLES));
        assert!(
            !h.connections.contains_key("b"),
            "gone for a whole window: dropped"
        );
    }

    #[test]
    fn sparkline_scales_and_breaks_at_gaps() {
        let svg = sparkline(
            &[Some(0.0), Some(10.0), None, Some(5.0), Some(5.0)],
            10.0,
            40,
            12,
            "spark",
        );
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert!(svg.contains("points=\"0.0,11.0 10.0,1.0\""), "{svg}");
        assert!(svg.starts_with("<svg class=\"spark\" width=\"40\" height=\"12\""));
    }
}
