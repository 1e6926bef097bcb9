//! The reporting policy: a pure state machine deciding when the agent writes its record.
//!
//! Writes cost etcd a revision and every router a watch event, so the agent writes only when
//! something that matters changed: a state change goes out at once; a load change waits for
//! the minimum interval and is skipped when it is within the hysteresis band; an unchanged
//! record is refreshed once per maximum interval so `updated_at` proves the agent is alive.

use std::time::Duration;

use switchyard_registry::GatewayState;
use tokio::time::Instant;

/// What the record would say now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Observed {
    /// Serving, draining or unhealthy, after precedence.
    pub(crate) state: GatewayState,
    /// Established client connections.
    pub(crate) connections: u64,
    /// CPU in cores.
    pub(crate) cpu: f64,
}

/// The reporting thresholds, from [`crate::agent::Config`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Policy {
    /// At most one load-driven write per this interval.
    pub(crate) min_interval: Duration,
    /// Connection changes below this many connections are not worth a write.
    pub(crate) connections_band: f64,
    /// CPU changes below this many cores are not worth a write.
    pub(crate) cpu_band: f64,
    /// An unchanged record is still written this often.
    pub(crate) max_interval: Duration,
}

/// CPU moves below a quarter core are noise for routing purposes; without a band an idle
/// gateway's CPU jitter would defeat the connection hysteresis.
pub const CPU_BAND: f64 = 0.25;

impl Policy {
    /// The policy for a gateway of `capacity` connections with a `delta` fraction band.
    pub(crate) fn new(
        min_interval: Duration,
        delta: f64,
        capacity: u64,
        max_interval: Duration,
    ) -> Self {
        Self {
            min_interval,
            // A band below one connection would mean "any change", which is what 0 asks for.
            connections_band: (delta * capacity as f64).max(1.0),
            cpu_band: CPU_BAND,
            max_interval,
        }
    }
}

/// The reporter's verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Write the record now.
    Write,
    /// Nothing to write; ask again at this instant (or sooner if the inputs change).
    WaitUntil(Instant),
}

/// Remembers what was last written and when, and applies the [`Policy`].
#[derive(Debug, Clone)]
pub(crate) struct Reporter {
    /// The thresholds.
    policy: Policy,
    /// What the last successful write said.
    last: Observed,
    /// When it was written.
    last_at: Instant,
}

impl Reporter {
    /// A reporter whose last write (the registration) said `written` at `at`.
    pub(crate) fn new(policy: Policy, written: Observed, at: Instant) -> Self {
        Self {
            policy,
            last: written,
            last_at: at,
        }
    }

    /// Decides whether `now` the record should be rewritten to say `current`.
    pub(crate) fn decide(&self, now: Instant, current: &Observed) -> Decision {
        if current.state != self.last.state {
            return Decision::Write;
        }
        let refresh_at = self.last_at + self.policy.max_interval;
        if now >= refresh_at {
            return Decision::Write;
        }
        let moved = (current.connections as f64 - self.last.connections as f64).abs()
            >= self.policy.connections_band
            || (current.cpu - self.last.cpu).abs() >= self.policy.cpu_band;
        if !moved {
            return Decision::WaitUntil(refresh_at);
        }
        let allowed_at = self.last_at + self.policy.min_interval;
        if now >= allowed_at {
            Decision::Write
        } else {
            Decision::WaitUntil(allowed_at)
        }
    }

    /// Records a successful write.
    pub(crate) fn written(&mut self, what: Observed, at: Instant) {
        self.last = what;
        self.last_at = at;
    }

    /// When the last write happened.
    pub(crate) fn last_at(&self) -> Instant {
        self.last_at
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn obs(state: GatewayState, connections: u64) -> Observed {
        Observed {
            state,
            connections,
            cpu: 0.1,
        }
    }

    fn reporter() -> Reporter {
        // Capacity 1000, 2 % band = 20 connections; 2 s min, 30 s max.
        let p = Policy::new(2 * S, 0.02, 1000, 30 * S);
        Reporter::new(p, obs(GatewayState::Serving, 100), Instant::now())
    }

    #[tokio::test(start_paused = true)]
    async fn small_moves_wait_for_the_refresh() {
        let r = reporter();
        tokio::time::advance(5 * S).await;
        let d = r.decide(Instant::now(), &obs(GatewayState::Serving, 119));
        assert_eq!(d, Decision::WaitUntil(r.last_at() + 30 * S));
        tokio::time::advance(25 * S).await;
        assert_eq!(
            r.decide(Instant::now(), &obs(GatewayState::Serving, 119)),
            Decision::Write
        );
    }

    #[tokio::test(start_paused = true)]
    async fn big_moves_are_rate_limited() {
        let mut r = reporter();
        tokio::time::advance(S).await;
        let busy = obs(GatewayState::Serving, 150);
        assert_eq!(
            r.decide(Instant::now(), &busy),
            Decision::WaitUntil(r.last_at() + 2 * S)
        );
        tokio::time::advance(S).await;
        assert_eq!(r.decide(Instant::now(), &busy), Decision::Write);
        r.written(busy, Instant::now());
        // Going back down by the band is a move too.
        tokio::time::advance(2 * S).await;
        assert_eq!(
            r.decide(Instant::now(), &obs(GatewayState::Serving, 130)),
            Decision::Write
        );
    }

    #[tokio::test(start_paused = true)]
    async fn state_changes_go_out_at_once() {
        let r = reporter();
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            r.decide(Instant::now(), &obs(GatewayState::Draining, 100)),
            Decision::Write
        );
        assert_eq!(
            r.decide(Instant::now(), &obs(GatewayState::Unhealthy, 100)),
            Decision::Write
        );
    }

    #[tokio::test(start_paused = true)]
    async fn cpu_noise_is_ignored_but_real_cpu_moves_count() {
        let r = reporter();
        tokio::time::advance(3 * S).await;
        let mut o = obs(GatewayState::Serving, 100);
        o.cpu = 0.2;
        assert!(matches!(
            r.decide(Instant::now(), &o),
            Decision::WaitUntil(_)
        ));
        o.cpu = 1.5;
        assert_eq!(r.decide(Instant::now(), &o), Decision::Write);
    }

    #[tokio::test(start_paused = true)]
    async fn steady_idle_gateway_writes_once_per_max_interval() {
        let mut r = reporter();
        let idle = obs(GatewayState::Serving, 100);
        let mut writes = 0;
        // Ask every 100 ms for 95 s, as a busy loop would.
        for _ in 0..950 {
            tokio::time::advance(Duration::from_millis(100)).await;
            if r.decide(Instant::now(), &idle) == Decision::Write {
                writes += 1;
                r.written(idle, Instant::now());
            }
        }
        assert_eq!(writes, 3);
    }

    #[test]
    fn zero_delta_means_any_change() {
        let p = Policy::new(S, 0.0, 10, 30 * S);
        assert_eq!(p.connections_band, 1.0);
        let p = Policy::new(S, 0.02, 100_000, 30 * S);
        assert_eq!(p.connections_band, 2000.0);
    }
}
