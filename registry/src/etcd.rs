//! Connecting to etcd with sane options, and retrying idempotent calls.
//!
//! etcd-client connects lazily, balances over every endpoint without health checks and never
//! retries; a dead member makes some calls fail at once with `Unavailable`. Idempotent calls
//! (reads, compare-guarded transactions, lease grants) go through [`retry`] instead.

use std::time::Duration;

use etcd_client::{Client, ConnectOptions};
use switchyard_proto::backoff::Backoff;

/// Why connecting was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// No endpoint given.
    #[error("no etcd endpoint given (e.g. --etcd http://127.0.0.1:2379)")]
    NoEndpoints,
    /// An endpoint is not `host:port` or an `http(s)://host:port` URL.
    #[error("etcd endpoint {0:?} is not host:port or http(s)://host:port")]
    BadEndpoint(String),
    /// etcd-client refused the options.
    #[error("etcd client: {0}")]
    Client(#[from] etcd_client::Error),
}

/// How to reach etcd.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// Client URLs of every member; calls are balanced over them.
    pub endpoints: Vec<String>,
    /// Bound on establishing a connection to one member.
    pub connect_timeout: Duration,
    /// Bound on one unary call (not on watch or keepalive streams).
    pub request_timeout: Duration,
    /// HTTP/2 PING interval on busy connections; no pings while idle (etcd answers idle
    /// pings with `ENHANCE_YOUR_CALM too_many_pings`).
    pub keep_alive_interval: Duration,
    /// How long to wait for a PING answer before the connection is considered dead.
    pub keep_alive_timeout: Duration,
    /// Optional user name and password for etcd auth.
    pub user: Option<(String, String)>,
}

impl EtcdConfig {
    /// Validated configuration for `endpoints` with the default timeouts
    /// (connect 2 s, request 5 s, keepalive 10 s / 5 s).
    pub fn new<S: AsRef<str>>(endpoints: &[S]) -> Result<Self, ConnectError> {
        let endpoints: Vec<String> = endpoints
            .iter()
            .flat_map(|e| e.as_ref().split(','))
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(ConnectError::NoEndpoints);
        }
        for e in &endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            let ok = rest
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !ok {
                return Err(ConnectError::BadEndpoint(e.clone()));
            }
        }
        Ok(Self {
            endpoints,
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(5),
            keep_alive_interval: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(5),
            user: None,
        })
    }

    /// Connects (lazily: the first call reports an unreachable cluster).
    pub async fn connect(&self) -> Result<Client, ConnectError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.connect_timeout)
            .with_timeout(self.request_timeout)
            .with_keep_alive(self.keep_alive_interval, self.keep_alive_timeout)
            .with_keep_alive_while_idle(false);
        if let Some((user, password)) = &self.user {
            options = options
                .with_user(user.clone(), password.clone())
                .with_auto_token_refresh(true);
        }
        Ok(Client::connect(&self.endpoints, Some(options)).await?)
    }
}

/// True for errors worth retrying: the member is unreachable, the connection broke, or the
/// cluster has no leader for a moment. Broken streams report `Unknown` (an h2 error), not
/// `Unavailable`, so the code alone is not enough.
pub(crate) fn is_transient(err: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match err {
        E::GRpcStatus(status) => {
            matches!(
                status.code(),
                tonic::Code::Unavailable
                    | tonic::Code::Unknown
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Cancelled
                    | tonic::Code::Aborted
            ) || status.message().contains("leader")
        }
        E::TransportError(_) | E::IoError(_) => true,
        E::LeaseKeepAliveError(msg) | E::WatchError(msg) => !msg.contains("not found"),
        _ => false,
    }
}

/// True when etcd says the lease no longer exists.
pub(crate) fn is_lease_not_found(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

/// Retry delays for idempotent calls: about 1 s in all over [`RETRY_TIMES`] retries.
const RETRY: Backoff = Backoff {
    base: Duration::from_millis(50),
    cap: Duration::from_millis(500),
};
/// Retries of one idempotent call before its error is returned.
const RETRY_TIMES: u32 = 5;

/// Runs an idempotent etcd call, retrying transient failures a few times with the
/// workspace's backoff. Only for calls that are safe to repeat.
pub(crate) async fn retry<T, F, Fut>(mut call: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let mut retries = Retries::new(RETRY);
    loop {
        match call().await {
            Err(e) if retries.count() < RETRY_TIMES && is_transient(&e) => {
                tokio::time::sleep(retries.next_delay()).await;
            }
            result => return result,
        }
    }
}

/// Consecutive failures of one loop over the workspace's one backoff
/// ([`switchyard_proto::backoff`]): the lease session, the watcher and [`retry`] all wait
/// through it, so a fleet that lost etcd comes back spread out the same way everywhere.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Retries {
    /// The delay ceilings.
    backoff: Backoff,
    /// Failures since the last success: picks the ceiling of the next delay.
    count: u32,
}

impl Retries {
    pub(crate) fn new(backoff: Backoff) -> Self {
        Self { backoff, count: 0 }
    }

    /// Failures counted since the last [`Retries::reset`].
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Counts one more failure and draws the wait before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.count = self.count.saturating_add(1);
        self.backoff.delay(self.count, &mut rand::rng())
    }

    /// A success: the next failure waits as little as the first one.
    pub(crate) fn reset(&mut self) {
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_validated() {
        assert!(matches!(
            EtcdConfig::new::<&str>(&[]),
            Err(ConnectError::NoEndpoints)
        ));
        assert!(matches!(
            EtcdConfig::new(&["localhost"]),
            Err(ConnectError::BadEndpoint(_))
        ));
        let c = EtcdConfig::new(&["http://127.0.0.1:2379,127.0.0.1:2479", " "]).unwrap();
        assert_eq!(c.endpoints, ["http://127.0.0.1:2379", "127.0.0.1:2479"]);
    }

    #[test]
    fn broken_streams_and_unavailable_members_are_transient() {
        let unknown = etcd_client::Error::GRpcStatus(tonic::Status::unknown("h2 protocol error"));
        let unavailable =
            etcd_client::Error::GRpcStatus(tonic::Status::unavailable("tcp connect error"));
        let bad = etcd_client::Error::GRpcStatus(tonic::Status::invalid_argument("bad"));
        let gone = etcd_client::Error::LeaseKeepAliveError("lease not found".into());
        assert!(is_transient(&unknown));
        assert!(is_transient(&unavailable));
        assert!(!is_transient(&bad));
        assert!(!is_transient(&gone));
        assert!(is_lease_not_found(&gone));
    }

    #[test]
    fn retries_grow_within_the_backoff_and_reset() {
        let mut r = Retries::new(RETRY);
        let delays: Vec<Duration> = (0..8).map(|_| r.next_delay()).collect();
        assert_eq!(r.count(), 8);
        for (n, d) in delays.iter().enumerate() {
            assert!(*d <= RETRY.ceiling(n as u32 + 1), "retry {n}: {d:?}");
        }
        r.reset();
        assert_eq!(r.count(), 0);
        assert!(r.next_delay() <= RETRY.base);
    }
}
