//! Where to connect: the router answer, the cached last good list, the bootstrap list, and
//! the client's own memory of gateways that just failed.

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use switchyard_proto::v1;
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

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

/// Behaviour the router asks for (contract 2 `ClientPolicy`); `None` = not set there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterPolicy {
    /// Idle time before a PING.
    #[serde(with = "opt_ms")]
    pub heartbeat_interval: Option<Duration>,
    /// How long a PING may stay unanswered.
    #[serde(with = "opt_ms")]
    pub heartbeat_timeout: Option<Duration>,
    /// First backoff ceiling.
    #[serde(with = "opt_ms")]
    pub backoff_base: Option<Duration>,
    /// Largest backoff ceiling.
    #[serde(with = "opt_ms")]
    pub backoff_cap: Option<Duration>,
    /// Attempts before giving up.
    pub max_attempts: Option<u32>,
    /// Random wait before the first reconnect after a loss.
    #[serde(with = "opt_ms")]
    pub reconnect_spread: Option<Duration>,
}

impl From<&v1::ClientPolicy> for RouterPolicy {
    fn from(p: &v1::ClientPolicy) -> Self {
        let d = |ms: u64| (ms > 0).then(|| Duration::from_millis(ms));
        Self {
            heartbeat_interval: d(p.heartbeat_interval_ms),
            heartbeat_timeout: d(p.heartbeat_timeout_ms),
            backoff_base: d(p.backoff_base_ms),
            backoff_cap: d(p.backoff_cap_ms),
            max_attempts: (p.max_attempts > 0).then_some(p.max_attempts),
            reconnect_spread: d(p.reconnect_spread_ms),
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
pub struct CachedList {
    /// Ranked gateways, best first.
    pub gateways: Vec<Gateway>,
    /// Wall-clock end of validity (the file outlives the process, so not an `Instant`).
    pub valid_until_unix_ms: u64,
    /// The policy that came with the list.
    pub policy: RouterPolicy,
}

/// Now, in Unix milliseconds.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl CachedList {
    /// From a router answer received at `now_unix_ms`; validity is the router's
    /// `valid_for_ms`, shortened to `cap` when set.
    pub fn from_answer(resp: &v1::RouteResponse, now_unix_ms: u64, cap: Option<Duration>) -> Self {
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
        }
    }

    /// Still usable at `now_unix_ms`.
    pub fn is_valid(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.valid_until_unix_ms && !self.gateways.is_empty()
    }

    /// Reads a cache file; a missing or unreadable file is simply no cache.
    pub fn load(path: &Path) -> Option<Self> {
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
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
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
pub struct FailureLog {
    /// Most recent last; at most [`FailureLog::MAX`].
    entries: Vec<Failed>,
}

impl FailureLog {
    /// Entries kept (the router caps `exclude` and `failures` too; a handful is all it needs).
    pub const MAX: usize = 16;

    /// Avoid `id` until `now + for_`; `now_unix_ms == 0` excludes without reporting.
    pub fn record(
        &mut self,
        id: &str,
        reason: &str,
        now: Instant,
        now_unix_ms: u64,
        for_: Duration,
    ) {
        self.entries.retain(|f| f.id != id);
        self.entries.push(Failed {
            id: id.to_owned(),
            reason: reason.to_owned(),
            at_unix_ms: now_unix_ms,
            until: now + for_,
            report: now_unix_ms != 0,
        });
        if self.entries.len() > Self::MAX {
            self.entries.remove(0);
        }
    }

    /// Forget expired entries.
    pub fn expire(&mut self, now: Instant) {
        self.entries.retain(|f| f.until > now);
    }

    /// Forget everything (the network changed: old failures say nothing about the new path).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// Ids to exclude at `now`.
    pub fn excluded(&self, now: Instant) -> Vec<String> {
        self.entries
            .iter()
            .filter(|f| f.until > now)
            .map(|f| f.id.clone())
            .collect()
    }

    /// Failures to report in `RouteRequest.failures`.
    pub fn report(&self, now: Instant) -> Vec<v1::Failure> {
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
pub fn order_fallback(list: &[Gateway], exclude: &[String]) -> Vec<Gateway> {
    let (mut ok, bad): (Vec<_>, Vec<_>) =
        list.iter().cloned().partition(|g| !exclude.contains(&g.id));
    ok.extend(bad);
    ok
}

/// Why no router answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// No router endpoint is configured.
    #[error("no router configured")]
    NoRouter,
    /// Every endpoint failed; the last reason.
    #[error("no router answered: {0}")]
    Unanswered(String),
}

/// gRPC clients for every configured router endpoint.
#[derive(Debug)]
pub struct Routers {
    /// One lazily connected channel per endpoint.
    clients: Vec<(String, v1::router_client::RouterClient<Channel>)>,
    /// Index of the endpoint that answered last: asked first next time. Starts at a random
    /// endpoint so a fleet of clients spreads over the replicas instead of all asking the
    /// first one listed.
    preferred: usize,
    /// Deadline of one `Route` call.
    timeout: Duration,
}

impl Routers {
    /// Channels for `urls` (connected on first use). Must run inside a tokio runtime.
    pub fn new(urls: &[String], timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let clients = urls
            .iter()
            .map(|u| {
                let ch = Endpoint::from_shared(u.clone())?
                    .connect_timeout(timeout)
                    .timeout(timeout)
                    .connect_lazy();
                Ok((u.clone(), v1::router_client::RouterClient::new(ch)))
            })
            .collect::<Result<Vec<_>, tonic::transport::Error>>()?;
        let preferred = if clients.is_empty() {
            0
        } else {
            rand::random_range(0..clients.len())
        };
        Ok(Self {
            clients,
            preferred,
            timeout,
        })
    }

    /// Asks each endpoint in turn (last good one first), each under the deadline.
    pub async fn route(&mut self, req: &v1::RouteRequest) -> Result<v1::RouteResponse, RouteError> {
        if self.clients.is_empty() {
            return Err(RouteError::NoRouter);
        }
        let n = self.clients.len();
        let mut last = String::new();
        for k in 0..n {
            let i = (self.preferred + k) % n;
            let (url, client) = &mut self.clients[i];
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(self.timeout);
            match tokio::time::timeout(self.timeout, client.route(request)).await {
                Ok(Ok(resp)) => {
                    self.preferred = i;
                    return Ok(resp.into_inner());
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
        log.record("a", "refused", t0, 100, Duration::from_secs(10));
        log.record("b", "timeout", t0, 100, Duration::from_secs(20));
        log.record("a", "refused again", t0, 200, Duration::from_secs(10));
        assert_eq!(log.excluded(t0), ["b", "a"]);
        assert_eq!(log.report(t0)[1].reason, "refused again");
        assert_eq!(log.excluded(t0 + Duration::from_secs(15)), ["b"]);
        log.record("drained", "goaway", t0, 0, Duration::from_secs(10));
        assert!(log.excluded(t0).contains(&"drained".to_owned()));
        assert!(
            log.report(t0).iter().all(|f| f.gateway_id != "drained"),
            "excluded, not reported"
        );
        for i in 0..40 {
            log.record(&format!("g{i}"), "x", t0, 0, Duration::from_secs(1));
        }
        assert_eq!(log.excluded(t0).len(), FailureLog::MAX);
    }

    #[tokio::test]
    async fn clients_start_at_a_random_router() {
        let urls = [
            "http://127.0.0.1:1".to_string(),
            "http://127.0.0.1:2".to_string(),
        ];
        let mut seen = [0usize; 2];
        for _ in 0..64 {
            let routers = Routers::new(&urls, Duration::from_secs(1)).expect("valid urls");
            seen[routers.preferred] += 1;
        }
        // All 64 on one replica has probability 2^-63.
        assert!(seen[0] > 0 && seen[1] > 0, "start spread {seen:?}");
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
}
