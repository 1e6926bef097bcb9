//! The gRPC services (`switchyard.v1.Router`, `switchyard.v1.Admin`): validation, auth,
//! locality of the caller, and a thin shell around [`crate::ranking`].

use std::cell::RefCell;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures::Stream;
use switchyard_proto::limits::{
    DEFAULT_ROUTE_LIMIT, MAX_CLIENT_ID, MAX_FIELD, MAX_ROUTE_LIMIT, MAX_ROUTE_LIST,
};
use switchyard_proto::v1::{
    self as pb, DrainRequest, DrainResponse, Explanation, GatewaysUpdate, ListGatewaysRequest,
    ListGatewaysResponse, RouteRequest, RouteResponse, RoutedGateway, UndrainRequest,
    UndrainResponse, WatchGatewaysRequest,
};
use switchyard_registry::etcd_client::Client;
use switchyard_registry::{Contact, DrainRecord, GatewayId, GatewayRecord, fleet};
use tokio::sync::{mpsc, watch};
use tonic::{Request, Response, Status};

use crate::auth::{self, ReportBudget};
use crate::config::{Config, ValidConfig};
use crate::ranking::{self, Placed, Protocol};
use crate::view::{Ejector, Gateway, Handouts, LiveView, View, now_ms};

/// Everything the services share.
pub(crate) struct State {
    /// Validated configuration.
    pub(crate) config: ValidConfig,
    /// etcd client for Admin writes.
    pub(crate) client: Client,
    /// The view every Route reads, and its change signal for WatchGateways, in one cell:
    /// a subscriber can never see a view without its notification or the other way round.
    pub(crate) view: watch::Sender<Arc<View>>,
    /// The registry watcher's own contact channel: whether etcd answers and when it last
    /// did (the age of what we serve). Read where needed, never copied.
    pub(crate) contact: watch::Receiver<Contact>,
    /// Client → gateway hand-outs in the pending window.
    pub(crate) handouts: Handouts,
    /// Turns failure reports into ejections under the cap.
    pub(crate) ejector: Ejector,
    /// Route calls answered since start (any outcome), so `switchyardctl top` can show a
    /// rate without scraping Prometheus.
    pub(crate) routes_total: AtomicU64,
    /// Metric handles of the Route path, looked up once.
    pub(crate) route_metrics: RouteMetrics,
    /// The gRPC port is on loopback: the topology calls may stay open without an ops
    /// token, and anonymous failure reports still count (development).
    pub(crate) loopback: bool,
    /// Failure reports per caller identity in the current outlier window.
    pub(crate) report_budget: ReportBudget,
    /// The WatchGateways cap and the per-address Route rate.
    pub(crate) guards: crate::limits::Guards,
}

/// The Route path's metric handles. The `counter!`/`histogram!` macros look the series up
/// in the recorder's registry (hashing name and labels) on every use; at tens of thousands
/// of Routes a second that is measurable, so the handles are resolved once. Build it after
/// the recorder is installed (handles made before are no-ops).
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    ok: metrics::Counter,
    invalid_argument: metrics::Counter,
    unavailable: metrics::Counter,
    unauthenticated: metrics::Counter,
    other: metrics::Counter,
    seconds: metrics::Histogram,
}

impl RouteMetrics {
    /// Resolves the handles against the installed recorder.
    pub(crate) fn new() -> Self {
        let routes = |code: &'static str| metrics::counter!("switchyard_router_routes_total", "code" => code);
        Self {
            ok: routes("ok"),
            invalid_argument: routes("invalid_argument"),
            unavailable: routes("unavailable"),
            unauthenticated: routes("unauthenticated"),
            other: routes("other"),
            seconds: metrics::histogram!("switchyard_router_route_seconds"),
        }
    }

    fn count(&self, result: &Result<RouteResponse, Status>) {
        let counter = match result {
            Ok(_) => &self.ok,
            Err(s) => match s.code() {
                tonic::Code::InvalidArgument => &self.invalid_argument,
                tonic::Code::Unavailable => &self.unavailable,
                tonic::Code::Unauthenticated => &self.unauthenticated,
                _ => &self.other,
            },
        };
        counter.increment(1);
    }
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("prefix", self.config.prefix())
            .field("revision", &self.view.borrow().revision)
            .finish_non_exhaustive()
    }
}

impl State {
    /// The view to answer from.
    pub(crate) fn view(&self) -> Arc<View> {
        self.view.borrow().clone()
    }

    /// Whether the registry watch is in touch with etcd right now.
    pub(crate) fn etcd_connected(&self) -> bool {
        self.contact.borrow().connected
    }

    /// How old the served view is: time since etcd last answered (0 before it ever did).
    pub(crate) fn snapshot_age_ms(&self) -> u64 {
        self.contact
            .borrow()
            .last
            .map_or(0, |t| t.elapsed().as_millis() as u64)
    }
}

thread_local! {
    /// Reused ranking buffers: a Route allocates nothing per candidate.
    static SCRATCH: RefCell<(ranking::Scratch, Vec<Placed>)> =
        const { RefCell::new((ranking::Scratch::new(), Vec::new())) };
}

fn invalid(reason: &'static str, message: String) -> Status {
    metrics::counter!("switchyard_router_invalid_requests_total", "reason" => reason).increment(1);
    Status::invalid_argument(message)
}

/// The caller's IP: the peer, or the client named in `x-forwarded-for` when the peer is a
/// trusted proxy (the right-most address not itself a trusted proxy).
pub(crate) fn caller_ip(
    config: &Config,
    peer: Option<IpAddr>,
    forwarded: Option<&str>,
) -> Option<IpAddr> {
    let peer = peer?;
    if !config.trusts(peer) {
        return Some(peer);
    }
    let Some(chain) = forwarded else {
        return Some(peer);
    };
    let mut last = peer;
    for hop in chain.rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A garbled hop ends what we can believe.
            return Some(last);
        };
        if !config.trusts(ip) {
            return Some(ip);
        }
        last = ip;
    }
    Some(last)
}

/// `Router` service.
#[derive(Debug, Clone)]
pub(crate) struct RouterService {
    /// Shared state.
    pub(crate) state: Arc<State>,
}

/// `Admin` service.
#[derive(Debug, Clone)]
pub(crate) struct AdminService {
    /// Shared state.
    pub(crate) state: Arc<State>,
}

impl RouterService {
    fn route_now(&self, req: Request<RouteRequest>) -> Result<RouteResponse, Status> {
        let state = &*self.state;
        let peer = req.remote_addr().map(|a| a.ip());
        let forwarded = req
            .metadata()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let ip = caller_ip(&state.config, peer, forwarded);
        // Before authentication: refusing a flood must cost less than serving it.
        state.guards.route_rate(ip)?;
        let caller =
            auth::route_caller(&state.config, req.metadata(), ip, &req.get_ref().client_id)?;
        // The caller's address only matters when the request names no locality.
        let located = if req.get_ref().region.is_empty() && req.get_ref().zone.is_empty() {
            ip.and_then(|ip| state.config.locate(ip))
        } else {
            None
        };
        let r = req.into_inner();
        if r.client_id.is_empty() {
            return Err(invalid("client_id", "client_id is required".into()));
        }
        if r.client_id.len() > MAX_CLIENT_ID {
            return Err(invalid(
                "client_id",
                format!(
                    "client_id is {} bytes; at most {MAX_CLIENT_ID} allowed",
                    r.client_id.len()
                ),
            ));
        }
        if r.limit > MAX_ROUTE_LIMIT {
            return Err(invalid(
                "limit",
                format!("limit {} is over the maximum {MAX_ROUTE_LIMIT}", r.limit),
            ));
        }
        let Some(protocol) = Protocol::parse(&r.protocol) else {
            return Err(invalid(
                "protocol",
                format!("protocol {:?} is not tcp or ws", r.protocol),
            ));
        };
        if [&r.region, &r.zone, &r.network]
            .iter()
            .any(|s| s.len() > MAX_FIELD)
        {
            return Err(invalid(
                "field",
                format!("region, zone and network are at most {MAX_FIELD} bytes"),
            ));
        }
        if r.exclude.len() > MAX_ROUTE_LIST || r.failures.len() > MAX_ROUTE_LIST {
            return Err(invalid(
                "list",
                format!("exclude and failures hold at most {MAX_ROUTE_LIST} entries"),
            ));
        }
        let long_exclude = r.exclude.iter().any(|id| id.len() > MAX_FIELD);
        let long_failure = r
            .failures
            .iter()
            .any(|f| f.gateway_id.len() > MAX_FIELD || f.reason.len() > MAX_FIELD);
        if long_exclude || long_failure {
            return Err(invalid(
                "list",
                format!(
                    "exclude ids and failure gateway ids and reasons are at most {MAX_FIELD} bytes"
                ),
            ));
        }
        let limit = if r.limit == 0 {
            DEFAULT_ROUTE_LIMIT
        } else {
            r.limit
        } as usize;
        // A preview or an explanation answers like a login but changes nothing: no
        // hand-out is counted and no failure report is believed.
        let dry_run = r.dry_run || r.explain;
        let now = now_ms();
        let (region, zone) = match located {
            Some(rule) => (rule.region.as_str(), rule.zone.as_str()),
            None => (r.region.as_str(), r.zone.as_str()),
        };
        let view = state.view();
        if !view.is_loaded() {
            return Err(Status::unavailable(
                "the router has not loaded the registry yet",
            ));
        }
        let client_hash = ranking::stable_hash(r.client_id.as_bytes());
        if !dry_run && !r.failures.is_empty() {
            self.believe_failures(&caller, &r, &view, now);
        }
        let request = ranking::Request {
            client_id: &r.client_id,
            region,
            zone,
            protocol,
            limit,
            exclude: &r.exclude,
            now_ms: now,
            seed: rand::random(),
        };
        let live = LiveView {
            view: &view,
            now_ms: now,
        };
        let mut resp =
            SCRATCH.with_borrow_mut(|(scratch, out)| -> Result<RouteResponse, Status> {
                ranking::rank(
                    &view.candidates,
                    &view.index,
                    &live,
                    &request,
                    &state.config.ranking,
                    scratch,
                    out,
                )
                .map_err(|e| Status::unavailable(e.to_string()))?;
                if let Some(first) = out.first().filter(|_| !dry_run) {
                    state
                        .handouts
                        .record(client_hash, &view.gateways[first.index].shared);
                }
                let gateways = out
                    .iter()
                    .map(|p| {
                        let rec = &view.gateways[p.index].record;
                        RoutedGateway {
                            id: rec.id.clone(),
                            address: rec.addr_for(protocol.as_str()).unwrap_or("").to_owned(),
                            region: rec.region.clone(),
                            zone: rec.zone.clone(),
                            score: p.score,
                        }
                    })
                    .collect();
                let explanation = if r.explain {
                    explain(&view, &live, &request, out)
                } else {
                    Vec::new()
                };
                let policy = state.config.policy.select(region, &r.network);
                Ok(RouteResponse {
                    gateways,
                    revision: view.revision,
                    valid_for_ms: state.config.valid_for.as_millis() as u64,
                    policy: Some(policy.to_proto()),
                    explanation,
                    snapshot_age_ms: state.snapshot_age_ms(),
                    // Signed below once the answer is final (not for explain/dry runs).
                    ticket: String::new(),
                    ticket_valid_for_ms: 0,
                })
            })?;
        if !dry_run && let Some(keys) = state.config.tickets() {
            let gws: Vec<&str> = resp.gateways.iter().map(|g| g.id.as_str()).collect();
            let ticket = keys.get().issue(&r.client_id, &gws).map_err(|e| {
                metrics::counter!("switchyard_router_ticket_errors_total").increment(1);
                tracing::error!(error = %e, "cannot sign a login ticket");
                Status::internal("cannot sign a login ticket")
            })?;
            resp.ticket = ticket.token;
            resp.ticket_valid_for_ms = ticket.valid_for.as_millis() as u64;
        }
        Ok(resp)
    }

    /// Feeds a Route's failure reports to the ejector, under the caller's identity
    /// (distinct reporters are what eject) and within its budget per window; reports that
    /// must not count are ignored and counted by why.
    fn believe_failures(&self, caller: &auth::Caller, r: &RouteRequest, view: &View, now: i64) {
        let state = &*self.state;
        let outlier = &state.config.outlier;
        let anonymous_counts = state.loopback && !state.config.route_authenticated();
        let outcome = |o: &'static str, n: usize| {
            metrics::counter!("switchyard_router_failure_reports_total", "outcome" => o)
                .increment(n as u64);
        };
        let Some(identity) = caller.reporter(&r.client_id, anonymous_counts) else {
            outcome("untrusted", r.failures.len());
            return;
        };
        let reporter = ranking::stable_hash(identity.as_bytes());
        let window = outlier.window.as_millis() as i64;
        for f in &r.failures {
            if !state
                .report_budget
                .take(reporter, outlier.max_reports_per_identity, window, now)
            {
                outcome("over_budget", 1);
                continue;
            }
            outcome("counted", 1);
            if let Some(i) = view.index_of(&f.gateway_id) {
                let at = if f.at_unix_ms == 0 { now } else { f.at_unix_ms };
                if state.ejector.report(outlier, view, i, reporter, at, now) {
                    metrics::counter!("switchyard_router_ejections_total").increment(1);
                    tracing::warn!(gateway = %f.gateway_id, "gateway ejected after failure reports from several callers");
                }
            }
        }
    }
}

fn explain(
    view: &View,
    live: &LiveView<'_>,
    req: &ranking::Request<'_>,
    out: &[Placed],
) -> Vec<Explanation> {
    use ranking::Live as _;
    view.candidates
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if let Some((rank, p)) = out.iter().enumerate().find(|(_, p)| p.index == i) {
                let reason = match p.reason {
                    ranking::Reason::Sticky => {
                        "first place: highest rendezvous score under the load bound"
                    }
                    ranking::Reason::StickyOverBound => {
                        "first place: every gateway of its tier is over the load bound"
                    }
                    ranking::Reason::Headroom => "won a two-random-choices draw on headroom",
                };
                Explanation {
                    gateway_id: c.id.clone(),
                    tier: p.tier.as_str().into(),
                    rank: rank as u32 + 1,
                    score: p.score,
                    reason: reason.into(),
                }
            } else {
                let filtered = ranking::filter(c, live.ejected(i), req);
                Explanation {
                    gateway_id: c.id.clone(),
                    tier: if filtered.is_some() {
                        String::new()
                    } else {
                        ranking::tier(c, req).as_str().into()
                    },
                    rank: 0,
                    score: 0.0,
                    reason: filtered
                        .map_or("ranked below the limit", ranking::Filtered::as_str)
                        .into(),
                }
            }
        })
        .collect()
}

/// A registry record (and its ops drain) as the API shows it: the one conversion, used by
/// the service and by `switchyardctl` when it reads etcd directly. Live counters (pending
/// hand-outs, ejection) are a router's own and left at zero.
pub fn gateway_proto(r: &GatewayRecord, drain: Option<&DrainRecord>) -> pb::Gateway {
    pb::Gateway {
        id: r.id.clone(),
        state: r.state.as_str().into(),
        region: r.region.clone(),
        zone: r.zone.clone(),
        tcp_addr: r.addrs.tcp.clone().unwrap_or_default(),
        ws_addr: r.addrs.ws.clone().unwrap_or_default(),
        capacity: r.capacity,
        weight: r.weight,
        connections: r.load.connections,
        cpu: r.load.cpu,
        pending: 0,
        version: r.version.clone(),
        labels: r.labels.clone().into_iter().collect(),
        started_at_unix_ms: r.started_at.map_or(0, |t| t.timestamp_millis()),
        updated_at_unix_ms: r.updated_at.map_or(0, |t| t.timestamp_millis()),
        ops_drained: drain.is_some(),
        drain_reason: drain.map(|d| d.reason.clone()).unwrap_or_default(),
        ejected_until_unix_ms: 0,
    }
}

/// A gateway of this router's view as `ListGateways` and `WatchGateways` show it.
fn live_gateway_proto(g: &Gateway, now_ms: i64) -> pb::Gateway {
    let until = g.shared.ejected_until_ms();
    pb::Gateway {
        pending: g.shared.pending.load(Ordering::Relaxed),
        ejected_until_unix_ms: if until > now_ms { until } else { 0 },
        ..gateway_proto(&g.record, g.drain.as_deref())
    }
}

type UpdateStream = Pin<Box<dyn Stream<Item = Result<GatewaysUpdate, Status>> + Send>>;

#[tonic::async_trait]
impl pb::router_server::Router for RouterService {
    async fn route(&self, req: Request<RouteRequest>) -> Result<Response<RouteResponse>, Status> {
        let started = Instant::now();
        self.state.routes_total.fetch_add(1, Ordering::Relaxed);
        let result = self.route_now(req);
        let m = &self.state.route_metrics;
        m.count(&result);
        m.seconds.record(started.elapsed().as_secs_f64());
        result.map(Response::new)
    }

    async fn list_gateways(
        &self,
        req: Request<ListGatewaysRequest>,
    ) -> Result<Response<ListGatewaysResponse>, Status> {
        auth::check_topology(&self.state.config, &req, self.state.loopback)?;
        let view = self.state.view();
        let now = now_ms();
        Ok(Response::new(ListGatewaysResponse {
            gateways: view
                .gateways
                .iter()
                .map(|g| live_gateway_proto(g, now))
                .collect(),
            revision: view.revision,
            snapshot_age_ms: self.state.snapshot_age_ms(),
            etcd_connected: self.state.etcd_connected(),
            routes_total: self.state.routes_total.load(Ordering::Relaxed),
        }))
    }

    type WatchGatewaysStream = UpdateStream;

    async fn watch_gateways(
        &self,
        req: Request<WatchGatewaysRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        auth::check_topology(&self.state.config, &req, self.state.loopback)?;
        let slot = self.state.guards.watch_stream()?;
        let mut changes = self.state.view.subscribe();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let _slot = slot;
            let mut prev: Option<Arc<View>> = None;
            loop {
                let view = changes.borrow_and_update().clone();
                if view.is_loaded() {
                    let update = diff(prev.as_deref(), &view);
                    let send =
                        update.full || !update.upserted.is_empty() || !update.removed.is_empty();
                    if send && tx.send(Ok(update)).await.is_err() {
                        return;
                    }
                    prev = Some(view);
                }
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// What changed between two views (everything, as `full`, when there is no previous one).
fn diff(prev: Option<&View>, next: &View) -> GatewaysUpdate {
    let now = now_ms();
    let Some(prev) = prev else {
        return GatewaysUpdate {
            revision: next.revision,
            full: true,
            upserted: next
                .gateways
                .iter()
                .map(|g| live_gateway_proto(g, now))
                .collect(),
            removed: Vec::new(),
        };
    };
    let upserted = next
        .gateways
        .iter()
        .filter(|g| {
            prev.index_of(&g.record.id).is_none_or(|i| {
                let old = &prev.gateways[i];
                old.record != g.record || old.drain != g.drain
            })
        })
        .map(|g| live_gateway_proto(g, now))
        .collect();
    let removed = prev
        .candidates
        .iter()
        .filter(|c| next.index_of(&c.id).is_none())
        .map(|c| c.id.clone())
        .collect();
    GatewaysUpdate {
        revision: next.revision,
        full: false,
        upserted,
        removed,
    }
}

fn gateway_id(id: &str) -> Result<GatewayId, Status> {
    GatewayId::new(id).map_err(|e| invalid("gateway_id", e.to_string()))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminService {
    async fn drain(&self, req: Request<DrainRequest>) -> Result<Response<DrainResponse>, Status> {
        auth::check_admin(&self.state.config, &req)?;
        let r = req.into_inner();
        let id = gateway_id(&r.gateway_id)?;
        if r.reason.len() > MAX_FIELD || r.by.len() > MAX_FIELD {
            return Err(invalid(
                "field",
                format!("reason and by are at most {MAX_FIELD} bytes"),
            ));
        }
        let drain = DrainRecord {
            reason: r.reason,
            by: if r.by.is_empty() {
                "switchyardctl".into()
            } else {
                r.by
            },
            at: Some(chrono::Utc::now()),
        };
        let revision =
            fleet::put_drain(&self.state.client, self.state.config.prefix(), &id, &drain)
                .await
                .map_err(|e| Status::unavailable(format!("etcd: {e}")))?;
        tracing::info!(gateway = %id, reason = %drain.reason, by = %drain.by, "ops drain written");
        Ok(Response::new(DrainResponse { revision }))
    }

    async fn undrain(
        &self,
        req: Request<UndrainRequest>,
    ) -> Result<Response<UndrainResponse>, Status> {
        auth::check_admin(&self.state.config, &req)?;
        let id = gateway_id(&req.get_ref().gateway_id)?;
        let existed = fleet::delete_drain(&self.state.client, self.state.config.prefix(), &id)
            .await
            .map_err(|e| Status::unavailable(format!("etcd: {e}")))?;
        tracing::info!(gateway = %id, existed, "ops drain removed");
        Ok(Response::new(UndrainResponse { existed }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let c = Config {
            trust_forwarded_for: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let xff = Some("198.51.100.7, 10.0.0.2");
        assert_eq!(
            caller_ip(&c, Some(ip("203.0.113.1")), xff),
            Some(ip("203.0.113.1"))
        );
        assert_eq!(
            caller_ip(&c, Some(ip("10.0.0.1")), xff),
            Some(ip("198.51.100.7"))
        );
        // A forged left-most entry behind an untrusted hop is not believed.
        assert_eq!(
            caller_ip(&c, Some(ip("10.0.0.1")), Some("1.1.1.1, 203.0.113.9")),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            caller_ip(&c, Some(ip("10.0.0.1")), None),
            Some(ip("10.0.0.1"))
        );
        assert_eq!(
            caller_ip(&c, Some(ip("10.0.0.1")), Some("garbage")),
            Some(ip("10.0.0.1"))
        );
    }

    /// A router state over `gateways` (all serving, capacity 100), with an etcd client
    /// that never connects: Route does not touch etcd.
    async fn state(gateways: &[&str]) -> Arc<State> {
        state_with(gateways, Config::default().validate().unwrap(), true).await
    }

    async fn state_with(gateways: &[&str], config: ValidConfig, loopback: bool) -> Arc<State> {
        let mut snap = switchyard_registry::Snapshot {
            revision: 1,
            ..Default::default()
        };
        for id in gateways {
            let json =
                format!(r#"{{"id":"{id}","addrs":{{"tcp":"127.0.0.1:7200"}},"capacity":100}}"#);
            let rec = GatewayRecord::from_json(json.as_bytes()).unwrap();
            snap.items.insert(
                format!("gateways/{id}"),
                Arc::new(switchyard_registry::Entry::Gateway(rec)),
            );
        }
        let view = crate::view::Builder::default().build(&snap, now_ms());
        let client = Client::connect(["127.0.0.1:1"], None).await.unwrap();
        let (_, contact) = watch::channel(Contact {
            connected: true,
            last: None,
        });
        Arc::new(State {
            client,
            view: watch::Sender::new(Arc::new(view)),
            contact,
            handouts: Handouts::default(),
            ejector: Ejector::default(),
            routes_total: AtomicU64::new(0),
            route_metrics: RouteMetrics::new(),
            loopback,
            report_budget: ReportBudget::default(),
            guards: crate::limits::Guards::new(&config.limits),
            config,
        })
    }

    fn pending(state: &State) -> u64 {
        state
            .view()
            .gateways
            .iter()
            .map(|g| g.shared.pending.load(Ordering::Relaxed))
            .sum()
    }

    fn failing(client: &str, gateway: &str, dry_run: bool, explain: bool) -> RouteRequest {
        RouteRequest {
            client_id: client.into(),
            failures: vec![pb::Failure {
                gateway_id: gateway.into(),
                reason: "connect refused".into(),
                at_unix_ms: 0,
            }],
            dry_run,
            explain,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_dry_run_route_changes_neither_load_nor_ejection() {
        let state = state(&["a", "b", "c", "d"]).await;
        let svc = RouterService {
            state: state.clone(),
        };
        for (n, (dry_run, explain)) in [(true, false), (false, true)].into_iter().enumerate() {
            for client in 0..5 {
                let req = failing(&format!("c{n}-{client}"), "a", dry_run, explain);
                let resp = svc.route_now(Request::new(req)).unwrap();
                assert!(!resp.gateways.is_empty());
            }
            assert_eq!(pending(&state), 0, "previews are not hand-outs");
            assert_eq!(state.view().ejected(now_ms()), 0, "previews report nothing");
        }
        // The same requests for real do both.
        for client in 0..5 {
            let req = failing(&format!("real-{client}"), "a", false, false);
            svc.route_now(Request::new(req)).unwrap();
        }
        assert_eq!(pending(&state), 5);
        assert_eq!(state.view().ejected(now_ms()), 1);
    }

    #[tokio::test]
    async fn real_answers_carry_a_ticket_for_their_gateways_and_previews_none() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("tickets.pem");
        std::fs::write(&pem, switchyard_identity::generate_ed25519_pem()).unwrap();
        let config = Config {
            ticket_key: Some(pem),
            ..Config::default()
        }
        .validate()
        .unwrap();
        let state = state_with(&["a", "b", "c", "d"], config, true).await;
        let signer = state.config.tickets().unwrap().get();
        let tickets = switchyard_identity::Tickets::new(
            Arc::new(Arc::new(signer.key_set())),
            std::time::Duration::from_secs(5),
        );
        let svc = RouterService { state };
        let resp = svc
            .route_now(Request::new(RouteRequest {
                client_id: "u1".into(),
                ..Default::default()
            }))
            .unwrap();
        let ids: Vec<String> = resp.gateways.iter().map(|g| g.id.clone()).collect();
        assert_eq!(ids.len(), 3);
        let claims = tickets.verify(&resp.ticket, "u1", &ids[0]).unwrap();
        assert_eq!(claims.gws, ids);
        assert_eq!(resp.ticket_valid_for_ms, 60_000);
        for (dry_run, explain) in [(true, false), (false, true)] {
            let resp = svc
                .route_now(Request::new(failing("u1", "zz", dry_run, explain)))
                .unwrap();
            assert!(resp.ticket.is_empty() && resp.ticket_valid_for_ms == 0);
        }
    }

    #[tokio::test]
    async fn anonymous_reports_count_only_on_an_open_loopback_router() {
        // --allow-anonymous on an exposed address: nobody proved who they are.
        let open = Config {
            allow_anonymous: true,
            ..Config::default()
        };
        let state = state_with(&["a", "b", "c", "d"], open.validate().unwrap(), false).await;
        let svc = RouterService {
            state: state.clone(),
        };
        for client in 0..5 {
            let req = failing(&format!("anon-{client}"), "a", false, false);
            svc.route_now(Request::new(req)).unwrap();
        }
        assert_eq!(
            state.view().ejected(now_ms()),
            0,
            "anonymous reports do not count"
        );
    }

    #[tokio::test]
    async fn exclude_and_failure_strings_are_bounded() {
        let svc = RouterService {
            state: state(&["a"]).await,
        };
        let long = "x".repeat(MAX_FIELD + 1);
        let mut reason = failing("u1", "a", false, false);
        reason.failures[0].reason = long.clone();
        for req in [
            RouteRequest {
                client_id: "u1".into(),
                exclude: vec![long.clone()],
                ..Default::default()
            },
            failing("u1", &long, false, false),
            reason,
        ] {
            let e = svc.route_now(Request::new(req)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        }
    }
}
