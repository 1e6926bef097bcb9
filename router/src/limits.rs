//! How much one client, or all of them, can take from a router (issue 14): HTTP/2 and TCP
//! settings of the gRPC server, a concurrency limit that sheds instead of queueing, a cap
//! on WatchGateways streams and a per-address Route rate. Every refusal is immediate,
//! carries a `retry-after-ms` hint and is counted in `switchyard_router_shed_total{reason}`.

use std::convert::Infallible;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;
use tonic::body::Body;
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceBuilder};

use crate::config::ConfigError;

/// The `[limits]` table; every field has a default that leaves a healthy fleet (and the
/// demo's thousands of clients on one loopback address) untouched.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// HTTP/2 streams one connection may have open; tonic's default is unlimited, so one
    /// connection could hold every task of the router. Default 256.
    pub max_concurrent_streams: u32,
    /// HTTP/2 PING interval on idle connections, so dead peers are noticed. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_interval: Duration,
    /// A PING unanswered this long closes the connection. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub http2_keepalive_timeout: Duration,
    /// TCP keepalive idle time, for peers that vanish without a FIN. Default 60 s.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// Connections are asked to go away (GOAWAY) after this long, so long-lived client
    /// channels spread over replicas added since. Zero = never. Default 30 min.
    #[serde(with = "humantime_serde")]
    pub max_connection_age: Duration,
    /// Largest request message the services decode; a Route request is small and
    /// bounded field by field anyway. Default 64 KiB.
    pub max_message_size: usize,
    /// A call (to its response headers; a stream's body is not limited) that takes longer
    /// is ended with CANCELLED. Default 10 s.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Router-service calls in flight at once; one more is refused at once with
    /// UNAVAILABLE rather than queued. Default 1024.
    pub route_concurrency: usize,
    /// The `retry-after-ms` hint sent with every refusal. Default 100 ms.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// WatchGateways streams open at once; one more is refused with RESOURCE_EXHAUSTED.
    /// Default 1024.
    pub watch_streams: usize,
    /// Route calls a second from one caller IP (after `trust_forwarded_for`); over it
    /// → RESOURCE_EXHAUSTED. 0 = off, the default: behind a NAT or on one loopback
    /// address, many clients share an IP, so size it for the busiest address.
    pub route_rate_per_ip: u32,
    /// Calls one IP may make at once above the rate; 0 = as many as `route_rate_per_ip`.
    pub route_rate_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 256,
            http2_keepalive_interval: Duration::from_secs(30),
            http2_keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            max_connection_age: Duration::from_secs(30 * 60),
            max_message_size: 64 * 1024,
            request_timeout: Duration::from_secs(10),
            route_concurrency: 1024,
            retry_after: Duration::from_millis(100),
            watch_streams: 1024,
            route_rate_per_ip: 0,
            route_rate_burst: 0,
        }
    }
}

impl Limits {
    /// Refuses zeros where zero would stop the router from serving at all.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let zero = [
            (
                "limits.max_concurrent_streams",
                self.max_concurrent_streams == 0,
            ),
            (
                "limits.http2_keepalive_interval",
                self.http2_keepalive_interval.is_zero(),
            ),
            (
                "limits.http2_keepalive_timeout",
                self.http2_keepalive_timeout.is_zero(),
            ),
            ("limits.tcp_keepalive", self.tcp_keepalive.is_zero()),
            ("limits.max_message_size", self.max_message_size == 0),
            ("limits.request_timeout", self.request_timeout.is_zero()),
            ("limits.route_concurrency", self.route_concurrency == 0),
            ("limits.watch_streams", self.watch_streams == 0),
        ];
        match zero.into_iter().find(|(_, z)| *z) {
            Some((key, _)) => Err(ConfigError::Zero { key }),
            None => Ok(()),
        }
    }
}

/// A refusal the caller should retry after a pause (on this router or another).
pub(crate) fn refused(status: Status, retry_after: Duration, reason: &'static str) -> Status {
    metrics::counter!("switchyard_router_shed_total", "reason" => reason).increment(1);
    let mut status = status;
    let ms = u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX);
    status
        .metadata_mut()
        .insert("retry-after-ms", MetadataValue::from(ms));
    status
}

/// The per-call guards the services check themselves.
#[derive(Debug)]
pub(crate) struct Guards {
    /// One permit per open WatchGateways stream.
    watch_streams: Arc<Semaphore>,
    /// Route calls per caller IP, when `route_rate_per_ip` is set.
    route_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// The hint sent with refusals.
    retry_after: Duration,
}

impl Guards {
    /// Guards sized by `limits` (validated).
    pub(crate) fn new(limits: &Limits) -> Self {
        let route_rate = NonZeroU32::new(limits.route_rate_per_ip).map(|rate| {
            let burst = NonZeroU32::new(limits.route_rate_burst).unwrap_or(rate);
            RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            watch_streams: Arc::new(Semaphore::new(limits.watch_streams)),
            route_rate,
            retry_after: limits.retry_after,
        }
    }

    /// A slot for one more WatchGateways stream, held as long as the stream lives.
    pub(crate) fn watch_stream(&self) -> Result<OwnedSemaphorePermit, Status> {
        self.watch_streams.clone().try_acquire_owned().map_err(|_| {
            refused(
                Status::resource_exhausted("too many WatchGateways streams on this router"),
                self.retry_after,
                "watch_streams",
            )
        })
    }

    /// Whether `ip` may make one more Route call now (unknown callers are not limited:
    /// only in-process tests have no peer address).
    pub(crate) fn route_rate(&self, ip: Option<IpAddr>) -> Result<(), Status> {
        let (Some(limiter), Some(ip)) = (&self.route_rate, ip) else {
            return Ok(());
        };
        limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(limiter.clock()));
            refused(
                Status::resource_exhausted("Route rate limit for this address"),
                wait.max(Duration::from_millis(1)),
                "route_rate",
            )
        })
    }

    /// Forgets addresses whose budget is full again, so the table is bounded by the
    /// addresses active in the last second or so, not by every address ever seen.
    pub(crate) fn upkeep(&self) {
        if let Some(limiter) = &self.route_rate {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

/// The limited stack inside [`Shedding`].
type Stack = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, BoxError>;

/// A gRPC service behind a concurrency limit that sheds: when `limit` calls are in
/// flight, the next one is answered UNAVAILABLE with a retry hint at once, never queued.
#[derive(Clone)]
pub(crate) struct Shedding<S> {
    /// `load_shed(concurrency_limit(service))`.
    inner: Stack,
    /// The hint sent with a shed call.
    retry_after: Duration,
    /// The wrapped service's gRPC name, for routing.
    named: PhantomData<fn() -> S>,
}

impl<S> Shedding<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    /// `service` with at most `limit` calls in flight.
    pub(crate) fn new(service: S, limit: usize, retry_after: Duration) -> Self {
        let stack = ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(limit)
            .service(service);
        Self {
            inner: BoxCloneSyncService::new(stack),
            retry_after,
            named: PhantomData,
        }
    }
}

impl<S> std::fmt::Debug for Shedding<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Shedding")
    }
}

impl<S: NamedService> NamedService for Shedding<S> {
    const NAME: &'static str = S::NAME;
}

impl<S> Service<http::Request<Body>> for Shedding<S> {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<http::Response<Body>, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // `load_shed` is always ready (that is its point) and the service under it cannot
        // fail, so there is no error to pass on here.
        self.inner.poll_ready(cx).map(|_| Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let call = self.inner.call(req);
        let retry_after = self.retry_after;
        Box::pin(async move {
            Ok(call.await.unwrap_or_else(|_| {
                refused(
                    Status::unavailable("router busy; retry later or elsewhere"),
                    retry_after,
                    "concurrency",
                )
                .into_http()
            }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zeros_that_would_stop_serving_are_refused() {
        let l = Limits {
            watch_streams: 0,
            ..Limits::default()
        };
        assert!(
            l.validate()
                .unwrap_err()
                .to_string()
                .contains("watch_streams")
        );
        assert!(Limits::default().validate().is_ok());
    }

    #[test]
    fn the_rate_limit_is_per_address_and_hints_a_retry() {
        let g = Guards::new(&Limits {
            route_rate_per_ip: 2,
            ..Limits::default()
        });
        let a = Some("10.0.0.1".parse().unwrap());
        let b = Some("10.0.0.2".parse().unwrap());
        assert!(g.route_rate(a).is_ok() && g.route_rate(a).is_ok());
        let e = g.route_rate(a).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.metadata().get("retry-after-ms").is_some());
        assert!(
            g.route_rate(b).is_ok(),
            "another address has its own budget"
        );
        assert!(g.route_rate(None).is_ok());
    }

    #[test]
    fn watch_streams_over_the_cap_are_refused_until_one_ends() {
        let g = Guards::new(&Limits {
            watch_streams: 1,
            ..Limits::default()
        });
        let first = g.watch_stream().unwrap();
        assert_eq!(
            g.watch_stream().unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        drop(first);
        assert!(g.watch_stream().is_ok());
    }
}
