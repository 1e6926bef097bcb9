//! Where to connect: the router answer, the cached last good list, the bootstrap list, and
//! the client's own memory of gateways that just failed.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_proto::limits::policy_floor;
use switchyard_proto::v1;
use tokio::time::Instant;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use crate::config::RouterTls;
use crate::event::FailureKind;

/// A gateway the client may connect to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Gateway {
    /// Registry id: what `exclude` and `failures` name.
    pub id: String,
    /// `host:port` for TCP, a `ws://` or `wss://` URL for WebSocket.
    pub address: String,
}

impl Gateway {
    /// A gateway entry (for the bootstrap list).
    pub fn new(id: impl Into<String>, address: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            address: address.into(),
        }
    }
}

/// Behaviour the router asks for (contract 2 `ClientPolicy`); `None` = not set there. Also
/// the shape of the app's local overrides.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct RouterPolicy {
    /// Idle time before a PING.
    #[serde(with = "opt_ms")]
    pub(crate) heartbeat_interval: Option<Duration>,
    /// How long a PING may stay unanswered.
    #[serde(with = "opt_ms")]
    pub(crate) heartbeat_timeout: Option<Duration>,
    /// First backoff ceiling.
    #[serde(with = "opt_ms")]
    pub(crate) backoff_base: Option<Duration>,
    /// Largest backoff ceiling.
    #[serde(with = "opt_ms")]
    pub(crate) backoff_cap: Option<Duration>,
    /// Attempts before giving up.
    pub(crate) max_attempts: Option<u32>,
    /// Random wait before the first reconnect after a loss.
    #[serde(with = "opt_ms")]
    pub(crate) reconnect_spread: Option<Duration>,
}

impl From<&v1::ClientPolicy> for RouterPolicy {
    /// What a router says, clamped up to the policy floors: routers refuse such policies
    /// when they load them, but one typo that slipped through (or an old router) must not
    /// make a fleet of phones ping every 30 ms or reconnect in a tight loop.
    fn from(p: &v1::ClientPolicy) -> Self {
        let d = |ms: u64, floor: Duration| (ms > 0).then(|| Duration::from_millis(ms).max(floor));
        let backoff_base = d(p.backoff_base_ms, policy_floor::BACKOFF_BASE);
        Self {
            heartbeat_interval: d(p.heartbeat_interval_ms, policy_floor::HEARTBEAT_INTERVAL),
            heartbeat_timeout: d(p.heartbeat_timeout_ms, policy_floor::HEARTBEAT_TIMEOUT),
            backoff_base,
            backoff_cap: d(
                p.backoff_cap_ms,
                backoff_base.unwrap_or(policy_floor::BACKOFF_BASE),
            ),
            max_attempts: (p.max_attempts > 0).then_some(p.max_attempts),
            reconnect_spread: d(p.reconnect_spread_ms, Duration::ZERO),
        }
    }
}

mod opt_ms {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&(d.as_millis() as u64)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

/// Where the list of the last connection attempt came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// A router answered.
    Router,
    /// No router answered; the cached last good list was still valid.
    Cache,
    /// No router and no valid cache: the configured bootstrap list.
    Bootstrap,
}

impl RouteSource {
    /// Lower-case name, for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Self::Router => "router",
            Self::Cache => "cache",
            Self::Bootstrap => "bootstrap",
        }
    }
}

/// The last good router answer, kept in memory and optionally in a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CachedList {
    /// Ranked gateways, best first.
    pub(crate) gateways: Vec<Gateway>,
    /// Wall-clock end of validity (the file outlives the process, so not an `Instant`).
    pub(crate) valid_until_unix_ms: u64,
    /// The policy that came with the list.
    pub(crate) policy: RouterPolicy,
    /// The router endpoint that answered: asked first after a restart, so a hung replica
    /// costs a login its deadline only when it was the last one that worked.
    #[serde(default)]
    pub(crate) router: Option<String>,
}

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CachedList {
    /// From a router answer received at `now_unix_ms`; validity is the router's
    /// `valid_for_ms`, shortened to `cap` when set.
    pub(crate) fn from_answer(
        resp: &v1::RouteResponse,
        now_unix_ms: u64,
        cap: Option<Duration>,
    ) -> Self {
        let mut valid = resp.valid_for_ms;
        if let Some(cap) = cap {
            valid = valid.min(cap.as_millis() as u64);
        }
        Self {
            gateways: resp
                .gateways
                .iter()
                .map(|g| Gateway::new(&g.id, &g.address))
                .collect(),
            valid_until_unix_ms: now_unix_ms.saturating_add(valid),
            policy: resp
                .policy
                .as_ref()
                .map(RouterPolicy::from)
                .unwrap_or_default(),
            router: None,
        }
    }

    /// Still usable at `now_unix_ms`.
    pub(crate) fn is_valid(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.valid_until_unix_ms && !self.gateways.is_empty()
    }

    /// Reads a cache file; a missing or unreadable file is simply no cache.
    pub(crate) fn load(path: &Path) -> Option<Self> {
        let text = std::fs::read(path).ok()?;
        match serde_json::from_slice(&text) {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable gateway cache");
                None
            }
        }
    }

    /// Writes the cache file atomically (temp file + rename), so a crash never leaves half a list.
    pub(crate) fn save(&self, path: &Path) -> std::io::Result<()> {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, path)
    }
}

/// One gateway this client failed to reach or lost.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    /// Registry id.
    id: String,
    /// What happened, for the router's ejection logic and for logs.
    reason: String,
    /// Wall clock of the failure, as the router wants it.
    at_unix_ms: u64,
    /// Excluded until then (monotonic, immune to clock jumps).
    until: Instant,
    /// A network fault worth reporting; refusals and GOAWAY only exclude (only network
    /// faults should feed the router's ejection).
    report: bool,
}

/// Gateways to avoid for a while, and the failures to report to the router.
#[derive(Debug, Clone, Default)]
pub(crate) struct FailureLog {
    /// Most recent last; at most [`FailureLog::MAX`].
    entries: Vec<Failed>,
}

impl FailureLog {
    /// Entries kept (the router caps `exclude` and `failures` too; a handful is all it needs).
    pub(crate) const MAX: usize = 16;
    /// Longest reason sent to the router (it refuses longer free text).
    const MAX_REASON: usize = 200;

    /// Avoid `id` for `exclude_for` (or for the gateway's own `retry_after`, when it said
    /// one); network faults are also reported to the router.
    pub(crate) fn record(
        &mut self,
        id: &str,
        kind: &FailureKind,
        now: Instant,
        now_unix_ms: u64,
        exclude_for: Duration,
    ) {
        let for_ = match kind {
            FailureKind::Refused {
                retry_after: Some(d),
                ..
            } => *d,
            _ => exclude_for,
        };
        let mut reason = kind.to_string();
        if reason.len() > Self::MAX_REASON {
            let mut cut = Self::MAX_REASON;
            while !reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason.truncate(cut);
        }
        self.entries.retain(|f| f.id != id);
        self.entries.push(Failed {
            id: id.to_owned(),
            reason,
            at_unix_ms: now_unix_ms,
            until: now + for_,
            report: kind.is_fault(),
        });
        if self.entries.len() > Self::MAX {
            self.entries.remove(0);
        }
    }

    /// Forget expired entries.
    pub(crate) fn expire(&mut self, now: Instant) {
        self.entries.retain(|f| f.until > now);
    }

    /// Forget everything (the network changed: old failures say nothing about the new path).
    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// Ids to exclude at `now`.
    pub(crate) fn excluded(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|f| f.until > now)
            .map(|f| f.id.clone())
            .collect()
    }

    /// Failures to report in `RouteRequest.failures`.
    pub(crate) fn report(&self, now: Instant) -> Vec<v1::Failure> {
        self.entries
            .iter()
            .filter(|f| f.until > now && f.report)
            .map(|f| v1::Failure {
                gateway_id: f.id.clone(),
                reason: f.reason.clone(),
                at_unix_ms: f.at_unix_ms as i64,
            })
            .collect()
    }
}

/// A fallback list with excluded gateways moved to the end (kept, not dropped: when every
/// gateway recently failed, trying them again beats trying nothing).
pub(crate) fn order_fallback(list: &[Gateway], exclude: &[String]) -> Vec<Gateway> {
    let (mut ok, bad): (Vec<_>, Vec<_>) =
        list.iter().cloned().partition(|g| !exclude.contains(&g.id));
    ok.extend(bad);
    ok
}

/// A login ticket from a Route answer (DESIGN contract 5), kept beside the list it came
/// with: opaque to the client, never printed, never written to the cache file.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Ticket {
    /// The compact JWT the gateways of that answer admit.
    token: String,
    /// End of validity on this client's clock (`ticket_valid_for_ms` after the answer), so
    /// the client needs neither to parse the ticket nor to trust its own wall clock.
    expires: Instant,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket")
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

impl Ticket {
    /// The ticket of an answer received at `now`; `None` when it carries none (a router
    /// that issues no tickets, or an answer already out of date).
    pub(crate) fn from_answer(resp: &v1::RouteResponse, now: Instant) -> Option<Self> {
        (!resp.ticket.is_empty() && resp.ticket_valid_for_ms > 0).then(|| Self {
            token: resp.ticket.clone(),
            expires: now + Duration::from_millis(resp.ticket_valid_for_ms),
        })
    }
}

/// What HELLO carries: the round's login ticket while it is valid, else the app token (a
/// list from the cache or the bootstrap list has no ticket; a gateway may accept the app
/// token then, and answers AUTH_EXPIRED to a stale credential).
pub(crate) fn hello_token(ticket: Option<&Ticket>, app_token: &str, now: Instant) -> String {
    match ticket {
        Some(t) if now < t.expires => t.token.clone(),
        _ => app_token.to_owned(),
    }
}

/// The app token as an `authorization: Bearer` value, marked sensitive (never indexed by
/// HPACK, never printed by tonic); `None` for an empty token (a router without auth needs
/// none).
pub(crate) fn bearer(token: &str) -> Result<Option<MetadataValue<Ascii>>, RouteError> {
    if token.is_empty() {
        return Ok(None);
    }
    let mut v = MetadataValue::try_from(format!("Bearer {token}")).map_err(|_| {
        // The error would echo the value: say what is wrong without the token.
        RouteError::BadToken
    })?;
    v.set_sensitive(true);
    Ok(Some(v))
}

/// Why no router answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RouteError {
    /// No router endpoint is configured.
    #[error("no router configured")]
    NoRouter,
    /// Every endpoint failed; the last reason.
    #[error("no router answered: {0}")]
    Unanswered(String),
    /// A router refused the app token (`UNAUTHENTICATED`) or the identity behind it
    /// (`PERMISSION_DENIED`): the other endpoints share the policy, so they are not asked.
    #[error("router {router} refused the credentials: {message}")]
    Refused {
        /// The endpoint that refused.
        router: String,
        /// `PERMISSION_DENIED` rather than `UNAUTHENTICATED`.
        denied: bool,
        /// The router's reason.
        message: String,
    },
    /// The app token cannot be sent as an HTTP header value.
    #[error("the app token is not a valid header value (visible ASCII only)")]
    BadToken,
}

/// gRPC clients for every configured router endpoint. Cheap to clone (channels are
/// shared), so a Route call can run while the driver keeps serving commands.
#[derive(Debug, Clone)]
pub(crate) struct Routers {
    /// One lazily connected channel per endpoint.
    clients: Arc<[(String, v1::router_client::RouterClient<Channel>)]>,
    /// Index of the endpoint that answered last: asked first next time. Starts at the one
    /// the cache file remembers, else at a random endpoint so a fleet of clients spreads
    /// over the replicas instead of all asking the first one listed.
    preferred: Arc<AtomicUsize>,
    /// Deadline of one `Route` call.
    timeout: Duration,
}

impl Routers {
    /// Channels for `urls` (connected on first use; TLS with `tls` for `https://`), asking
    /// `remembered` first when it is one of them. Must run inside a tokio runtime.
    pub(crate) fn new(
        urls: &[String],
        tls: &RouterTls,
        timeout: Duration,
        remembered: Option<&str>,
    ) -> Result<Self, tonic::transport::Error> {
        let clients = urls
            .iter()
            .map(|u| {
                let mut endpoint = Endpoint::from_shared(u.clone())?;
                if u.starts_with("https://") {
                    endpoint = endpoint.tls_config(tls.tonic())?;
                }
                let ch = endpoint
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok((u.clone(), v1::router_client::RouterClient::new(ch)))
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        let preferred = match remembered.and_then(|r| urls.iter().position(|u| u == r)) {
            Some(i) => i,
            None if clients.is_empty() => 0,
            None => rand::random_range(0..clients.len()),
        };
        Ok(Self {
            clients: clients.into(),
            preferred: Arc::new(AtomicUsize::new(preferred)),
            timeout,
        })
    }

    /// Asks each endpoint in turn (last good one first), each under the deadline, with the
    /// app token as bearer; returns the answer and the endpoint that gave it. A refusal of
    /// the credentials ends the search at once: every endpoint would say the same.
    pub(crate) async fn route(
        &self,
        req: &v1::RouteRequest,
        bearer: Option<&MetadataValue<Ascii>>,
    ) -> Result<(v1::RouteResponse, String), RouteError> {
        if self.clients.is_empty() {
            return Err(RouteError::NoRouter);
        }
        let n = self.clients.len();
        let first = self.preferred.load(Ordering::Relaxed);
        let mut last = String::new();
        for k in 0..n {
            let i = (first + k) % n;
            let (url, client) = &self.clients[i];
            let mut client = client.clone();
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(self.timeout);
            if let Some(b) = bearer {
                request.metadata_mut().insert("authorization", b.clone());
            }
            match tokio::time::timeout(self.timeout, client.route(request)).await {
                Ok(Ok(resp)) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok((resp.into_inner(), url.clone()));
                }
                Ok(Err(status))
                    if matches!(
                        status.code(),
                        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied
                    ) =>
                {
                    tracing::warn!(router = %url, code = ?status.code(), msg = status.message(), "router refused the app token");
                    return Err(RouteError::Refused {
                        router: url.clone(),
                        denied: status.code() == tonic::Code::PermissionDenied,
                        message: status.message().to_owned(),
                    });
                }
                Ok(Err(status)) => {
                    tracing::debug!(router = %url, code = ?status.code(), msg = status.message(), "route failed");
                    last = format!("{url}: {:?}: {}", status.code(), status.message());
                }
                Err(_) => {
                    tracing::debug!(router = %url, "route timed out");
                    last = format!("{url}: deadline {:?} exceeded", self.timeout);
                }
            }
        }
        Err(RouteError::Unanswered(last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(valid_for_ms: u64) -> v1::RouteResponse {
        v1::RouteResponse {
            gateways: vec![v1::RoutedGateway {
                id: "gw-1".into(),
                address: "127.0.0.1:1".into(),
                ..Default::default()
            }],
            valid_for_ms,
            policy: Some(v1::ClientPolicy {
                heartbeat_interval_ms: 20_000,
                max_attempts: 0,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cache_validity_follows_the_router_and_the_local_cap() {
        let c = CachedList::from_answer(&answer(60_000), 1_000, None);
        assert!(c.is_valid(60_999));
        assert!(!c.is_valid(61_000));
        let capped = CachedList::from_answer(&answer(60_000), 1_000, Some(Duration::from_secs(5)));
        assert!(!capped.is_valid(6_000));
        assert_eq!(c.policy.heartbeat_interval, Some(Duration::from_secs(20)));
        assert_eq!(c.policy.max_attempts, None, "0 means not set");
    }

    #[test]
    fn cache_file_roundtrips_and_garbage_is_no_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gw.json");
        let c = CachedList::from_answer(&answer(1_000), 5, None);
        c.save(&path).unwrap();
        assert_eq!(CachedList::load(&path), Some(c));
        std::fs::write(&path, b"{not json").unwrap();
        assert_eq!(CachedList::load(&path), None);
        assert_eq!(CachedList::load(&dir.path().join("missing")), None);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_exclude_for_a_while_and_report_once_per_gateway() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let fault = |d: &str| FailureKind::Unreachable { detail: d.into() };
        log.record("a", &fault("refused"), t0, 100, Duration::from_secs(10));
        log.record("b", &fault("timeout"), t0, 100, Duration::from_secs(20));
        log.record(
            "a",
            &fault("refused again"),
            t0,
            200,
            Duration::from_secs(10),
        );
        assert_eq!(log.excluded(t0), ["b", "a"]);
        assert_eq!(log.report(t0)[1].reason, "unreachable: refused again");
        assert_eq!(log.excluded(t0 + Duration::from_secs(15)), ["b"]);
        let moved = FailureKind::Lost(crate::event::DisconnectCause::GoAway {
            reason: "drain".into(),
        });
        log.record("drained", &moved, t0, 0, Duration::from_secs(10));
        assert!(log.excluded(t0).contains(&"drained".to_owned()));
        assert!(
            log.report(t0).iter().all(|f| f.gateway_id != "drained"),
            "excluded, not reported"
        );
        for i in 0..40 {
            log.record(&format!("g{i}"), &fault("x"), t0, 0, Duration::from_secs(1));
        }
        assert_eq!(log.excluded(t0).len(), FailureLog::MAX);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_excludes_for_the_gateways_retry_after() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let busy = FailureKind::Refused {
            code: v1::RejectCode::Overloaded,
            reason: "x".repeat(1000),
            retry_after: Some(Duration::from_secs(3)),
        };
        log.record("a", &busy, t0, 1, Duration::from_secs(30));
        assert_eq!(log.excluded(t0 + Duration::from_millis(2999)), ["a"]);
        assert!(log.excluded(t0 + Duration::from_secs(3)).is_empty());
        assert!(log.report(t0).is_empty(), "a refusal is not a fault");
        log.record(
            "b",
            &FailureKind::Unreachable {
                detail: "é".repeat(300),
            },
            t0,
            1,
            Duration::from_secs(30),
        );
        assert!(
            log.report(t0)[0].reason.len() <= 200,
            "long reasons are cut to what routers take"
        );
    }

    #[test]
    fn router_policy_is_clamped_to_the_floors() {
        let p = RouterPolicy::from(&v1::ClientPolicy {
            heartbeat_interval_ms: 30,
            heartbeat_timeout_ms: 1,
            backoff_base_ms: 1,
            backoff_cap_ms: 2,
            ..Default::default()
        });
        assert_eq!(p.heartbeat_interval, Some(policy_floor::HEARTBEAT_INTERVAL));
        assert_eq!(p.heartbeat_timeout, Some(policy_floor::HEARTBEAT_TIMEOUT));
        assert_eq!(p.backoff_base, Some(policy_floor::BACKOFF_BASE));
        assert_eq!(
            p.backoff_cap,
            Some(policy_floor::BACKOFF_BASE),
            "cap >= base"
        );
        let sane = RouterPolicy::from(&v1::ClientPolicy {
            heartbeat_interval_ms: 45_000,
            ..Default::default()
        });
        assert_eq!(sane.heartbeat_interval, Some(Duration::from_secs(45)));
    }

    #[tokio::test]
    async fn clients_start_at_a_random_router() {
        let urls = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        ];
        let mut seen = [0usize; 2];
        for _ in 0..64 {
            let routers = Routers::new(&urls, &RouterTls::default(), Duration::from_secs(1), None)
                .expect("valid urls");
            seen[routers.preferred.load(Ordering::Relaxed)] += 1;
        }
        // All 64 on one replica has probability 2^-63.
        assert!(seen[0] > 0 && seen[1] > 0, "start spread {seen:?}");
        // The one remembered from the last run goes first, every time.
        for _ in 0..8 {
            let r = Routers::new(
                &urls,
                &RouterTls::default(),
                Duration::from_secs(1),
                Some("http://127.0.0.1:2"),
            )
            .unwrap();
            assert_eq!(r.preferred.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn fallback_keeps_excluded_gateways_last() {
        let l = [
            Gateway::new("a", "1"),
            Gateway::new("b", "2"),
            Gateway::new("c", "3"),
        ];
        let got: Vec<_> = order_fallback(&l, &["a".into()])
            .into_iter()
            .map(|g| g.id)
            .collect();
        assert_eq!(got, ["b", "c", "a"]);
    }

    #[tokio::test(start_paused = true)]
    async fn hello_carries_the_ticket_while_valid_else_the_app_token() {
        let t0 = Instant::now();
        let mut resp = answer(30_000);
        // A router that issues no ticket (or a cache/bootstrap list): the app token.
        assert_eq!(Ticket::from_answer(&resp, t0), None);
        assert_eq!(hello_token(None, "app", t0), "app");
        resp.ticket = "eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1MSJ9.sig".into();
        assert_eq!(
            Ticket::from_answer(&resp, t0),
            None,
            "a ticket without a validity is out of date"
        );
        resp.ticket_valid_for_ms = 60_000;
        let ticket = Ticket::from_answer(&resp, t0).expect("a ticket");
        assert_eq!(hello_token(Some(&ticket), "app", t0), resp.ticket);
        assert_eq!(
            hello_token(Some(&ticket), "app", t0 + Duration::from_millis(59_999)),
            resp.ticket
        );
        assert_eq!(
            hello_token(Some(&ticket), "app", t0 + Duration::from_secs(60)),
            "app",
            "an expired ticket falls back to the app token"
        );
        assert!(
            !format!("{ticket:?}").contains("eyJ"),
            "a ticket never prints: {ticket:?}"
        );
        let cached = CachedList::from_answer(&resp, 0, None);
        assert!(
            !serde_json::to_string(&cached).unwrap().contains("eyJ"),
            "nor reaches the cache file"
        );
    }

    #[test]
    fn the_bearer_is_sensitive_and_a_token_that_cannot_be_a_header_is_an_error() {
        assert_eq!(bearer(""), Ok(None), "no token, no header");
        let b = bearer("s3cret").unwrap().expect("a header");
        assert!(b.is_sensitive());
        assert_eq!(b.to_str().unwrap(), "Bearer s3cret");
        let err = bearer("line\nbreak").unwrap_err();
        assert_eq!(err, RouteError::BadToken);
        assert!(!err.to_string().contains("line"), "{err}");
    }
}
