//! Pure pieces of the soak driver (`bench-soak`): per-client disconnection gaps, the gap
//! bound a client's policy implies, the router RSS trend and the seeded chaos schedule.

use std::time::Duration;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use switchyard_proto::backoff::Backoff;
use tokio::time::Instant;

/// One client's disconnected periods: from the moment its link stopped working to the
/// moment it was connected again.
#[derive(Debug, Clone, Default)]
pub struct GapTracker {
    /// Start of the current gap, while disconnected.
    down_since: Option<Instant>,
    /// The gateway under the current link was frozen at this moment: the link has been
    /// dead since then, even though the client only notices at its heartbeat deadline.
    frozen_at: Option<Instant>,
    /// Every closed gap, in order.
    gaps: Vec<Duration>,
}

impl GapTracker {
    /// A tracker for a client that is connected (`true`) or not (`false`) at `now`.
    pub fn new(connected: bool, now: Instant) -> Self {
        Self {
            down_since: (!connected).then_some(now),
            ..Self::default()
        }
    }

    /// The client reported its link lost at `at`. The gap starts then, or at the freeze of
    /// its gateway when that came first.
    pub fn lost(&mut self, at: Instant) {
        let frozen = self.frozen_at.take();
        if self.down_since.is_none() {
            self.down_since = Some(frozen.map_or(at, |f| f.min(at)));
        }
    }

    /// The client got a link at `at`: the current gap, if any, is closed.
    pub fn connected(&mut self, at: Instant) {
        self.frozen_at = None;
        if let Some(since) = self.down_since.take() {
            self.gaps.push(at.saturating_duration_since(since));
        }
    }

    /// The gateway this client is connected to was frozen at `at`.
    pub fn frozen(&mut self, at: Instant) {
        if self.down_since.is_none() {
            self.frozen_at.get_or_insert(at);
        }
    }

    /// The frozen gateway runs again: a link that survived the freeze was never broken.
    pub fn thawed(&mut self) {
        self.frozen_at = None;
    }

    /// True while disconnected.
    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    /// Closed gaps.
    pub fn gaps(&self) -> &[Duration] {
        &self.gaps
    }

    /// The longest gap so far, counting the open one up to `now`.
    pub fn longest(&self, now: Instant) -> Duration {
        let open = self
            .down_since
            .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
        self.gaps.iter().copied().fold(open, Duration::max)
    }
}

/// The client settings that bound how long a client stays disconnected, and the bound.
///
/// bound = (heartbeat interval + timeout)                       detecting a frozen gateway
///       + spread                                               first retry waits 0..spread
///       + rounds × (routers × route timeout                    asking every router
///                   + (route limit − 1) × race delay + connect timeout)   racing the list
///       + Σ_{k=1}^{rounds−1} min(cap, base × 2^(k−1))          backoff after a failed round
///       + slack
///
/// A round fails only when every candidate of the list fails; with one gateway impaired at
/// a time and more than `route limit` serving, that needs a stale list, and the failed
/// gateway is excluded from the next round, so `rounds` = 2 covers it. Outage lengths do
/// not enter: a client never waits for the impaired gateway to come back.
#[derive(Debug, Clone, Copy)]
pub struct GapPolicy {
    /// PING after this much write-idle time.
    pub heartbeat_interval: Duration,
    /// Dead when nothing answers this long after a PING.
    pub heartbeat_timeout: Duration,
    /// First retry after a loss waits 0..spread.
    pub spread: Duration,
    /// Reconnect backoff (full jitter).
    pub backoff: Backoff,
    /// Routers asked in turn.
    pub routers: u32,
    /// Deadline of one Route call.
    pub route_timeout: Duration,
    /// Candidates per list.
    pub route_limit: u32,
    /// Head start of each racing candidate.
    pub race_delay: Duration,
    /// Budget of one connection attempt (TCP + HELLO → WELCOME).
    pub connect_timeout: Duration,
    /// Attempt rounds allowed (the last one succeeds).
    pub rounds: u32,
    /// Scheduling slack on a shared machine.
    pub slack: Duration,
}

impl GapPolicy {
    /// The longest gap the policy allows.
    pub fn bound(&self) -> Duration {
        let round = self.route_timeout * self.routers
            + self.race_delay * self.route_limit.saturating_sub(1)
            + self.connect_timeout;
        let backoff: Duration = (1..self.rounds).map(|k| self.backoff.ceiling(k)).sum();
        self.heartbeat_interval
            + self.heartbeat_timeout
            + self.spread
            + round * self.rounds
            + backoff
            + self.slack
    }
}

/// `VmRSS` in kB from the text of `/proc/<pid>/status`.
pub fn parse_vm_rss_kb(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// RSS trend over samples taken at a steady pace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssTrend {
    /// Mean of the first third of the samples (kB).
    pub first_kb: f64,
    /// Mean of the middle third (kB).
    pub middle_kb: f64,
    /// Mean of the last third (kB).
    pub last_kb: f64,
}

impl RssTrend {
    /// Needs at least 3 samples.
    pub fn of(samples: &[u64]) -> Option<Self> {
        if samples.len() < 3 {
            return None;
        }
        let third = samples.len() / 3;
        let mean = |s: &[u64]| s.iter().sum::<u64>() as f64 / s.len() as f64;
        Some(Self {
            first_kb: mean(&samples[..third]),
            middle_kb: mean(&samples[third..samples.len() - third]),
            last_kb: mean(&samples[samples.len() - third..]),
        })
    }

    /// Last third minus first third (kB; negative when it shrank).
    pub fn growth_kb(&self) -> i64 {
        (self.last_kb - self.first_kb).round() as i64
    }

    /// Last third minus middle third: what is still growing late in the run.
    pub fn late_growth_kb(&self) -> i64 {
        (self.last_kb - self.middle_kb).round() as i64
    }

    /// Flat: grew by at most `tolerance_kb` over the run.
    pub fn is_flat(&self, tolerance_kb: u64) -> bool {
        self.growth_kb() <= tolerance_kb as i64
    }
}

/// What one chaos step does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Chaos {
    /// SIGKILL a gateway, restart it after a pause.
    Kill,
    /// SIGSTOP a gateway, SIGCONT it after a while.
    Stop,
    /// Ops drain of a gateway (it exits after its drain window), undrain, restart.
    Drain,
    /// SIGKILL the etcd leader, restart it after a pause.
    LeaderKill,
}

impl Chaos {
    /// Every kind, in a fixed order.
    pub const ALL: [Chaos; 4] = [Chaos::Kill, Chaos::Stop, Chaos::Drain, Chaos::LeaderKill];
}

/// One scheduled chaos step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Offset from the start of the chaos window.
    pub at: Duration,
    /// What to do.
    pub chaos: Chaos,
    /// Gateway index (ignored by [`Chaos::LeaderKill`]).
    pub target: usize,
}

/// A seeded schedule: `window` is cut into slots of `slot` (each long enough for one step
/// to run and heal); each slot gets one step at a random offset within its first
/// `slot − busy`. Kinds come in shuffled rounds of all four, so counts stay balanced; a
/// gateway is never hit twice in a row.
pub fn schedule(
    seed: u64,
    window: Duration,
    slot: Duration,
    busy: Duration,
    gateways: usize,
) -> Vec<Step> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let slots = if slot.is_zero() {
        0
    } else {
        (window.as_millis() / slot.as_millis()) as u32
    };
    let jitter_ms = slot.saturating_sub(busy).as_millis() as u64;
    let mut kinds = Vec::new();
    let mut last_target = None;
    let mut steps = Vec::with_capacity(slots as usize);
    for n in 0..slots {
        if kinds.is_empty() {
            kinds = Chaos::ALL.to_vec();
            kinds.shuffle(&mut rng);
        }
        let chaos = kinds.pop().expect("refilled above");
        let target = if gateways < 2 {
            0
        } else {
            let mut t = rng.random_range(0..gateways);
            if Some(t) == last_target {
                t = (t + 1) % gateways;
            }
            t
        };
        if chaos != Chaos::LeaderKill {
            last_target = Some(target);
        }
        let at = slot * n + Duration::from_millis(rng.random_range(0..=jitter_ms));
        steps.push(Step { at, chaos, target });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn gaps_from_loss_to_reconnect() {
        let t0 = Instant::now();
        let mut g = GapTracker::new(true, t0);
        assert_eq!(g.longest(t0 + 50 * MS), Duration::ZERO);
        g.lost(t0 + 100 * MS);
        assert!(g.is_down());
        // An open gap counts up to now.
        assert_eq!(g.longest(t0 + 400 * MS), 300 * MS);
        // A second loss report while down does not restart the gap.
        g.lost(t0 + 200 * MS);
        g.connected(t0 + 700 * MS);
        g.lost(t0 + 1000 * MS);
        g.connected(t0 + 1100 * MS);
        assert_eq!(g.gaps(), &[600 * MS, 100 * MS]);
        assert_eq!(g.longest(t0 + 5000 * MS), 600 * MS);
        assert!(!g.is_down());
        // Not yet connected at the start: the gap runs from then.
        let mut late = GapTracker::new(false, t0);
        late.connected(t0 + 30 * MS);
        assert_eq!(late.gaps(), &[30 * MS]);
    }

    #[test]
    fn a_frozen_gateway_starts_the_gap_at_the_freeze() {
        let t0 = Instant::now();
        let mut g = GapTracker::new(true, t0);
        g.frozen(t0 + 100 * MS);
        g.frozen(t0 + 200 * MS);
        g.lost(t0 + 3100 * MS);
        g.connected(t0 + 3500 * MS);
        assert_eq!(g.gaps(), &[3400 * MS]);
        // Thawed before the client noticed: the link survived, no gap.
        g.frozen(t0 + 4000 * MS);
        g.thawed();
        g.lost(t0 + 9000 * MS);
        g.connected(t0 + 9100 * MS);
        assert_eq!(g.gaps().last(), Some(&(100 * MS)));
        // A freeze while already down changes nothing.
        g.lost(t0 + 10_000 * MS);
        g.frozen(t0 + 9_500 * MS);
        g.connected(t0 + 10_200 * MS);
        assert_eq!(g.gaps().last(), Some(&(200 * MS)));
    }

    #[test]
    fn bound_adds_detection_spread_rounds_and_backoff() {
        let p = GapPolicy {
            heartbeat_interval: 2000 * MS,
            heartbeat_timeout: 1000 * MS,
            spread: 1000 * MS,
            backoff: Backoff {
                base: 500 * MS,
                cap: 5000 * MS,
            },
            routers: 2,
            route_timeout: 2000 * MS,
            route_limit: 3,
            race_delay: 250 * MS,
            connect_timeout: 3000 * MS,
            rounds: 2,
            slack: 1000 * MS,
        };
        // 3000 + 1000 + 2 × (4000 + 500 + 3000) + 500 + 1000
        assert_eq!(p.bound(), 20_500 * MS);
        let three = GapPolicy { rounds: 3, ..p };
        // one more round (7500) and the second backoff ceiling (1000)
        assert_eq!(three.bound(), 29_000 * MS);
    }

    #[test]
    fn vm_rss_from_proc_status() {
        let text =
            "Name:\tswitchyard-rout\nVmPeak:\t  90000 kB\nVmRSS:\t   23456 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss_kb(text), Some(23_456));
        assert_eq!(parse_vm_rss_kb("Name:\tx\n"), None);
    }

    #[test]
    fn rss_trend_compares_thirds() {
        assert_eq!(RssTrend::of(&[1, 2]), None);
        let t = RssTrend::of(&[100, 100, 104, 104, 108, 110]).unwrap();
        assert_eq!(t.growth_kb(), 9);
        assert_eq!(t.late_growth_kb(), 5);
        assert!(t.is_flat(9));
        assert!(!t.is_flat(8));
        let shrink = RssTrend::of(&[200, 150, 150, 150, 150, 100, 100]).unwrap();
        assert!(shrink.growth_kb() < 0 && shrink.is_flat(0));
    }

    #[test]
    fn schedule_is_seeded_bounded_and_balanced() {
        let s = Duration::from_secs(1);
        let a = schedule(7, 600 * s, 25 * s, 18 * s, 4);
        assert_eq!(a, schedule(7, 600 * s, 25 * s, 18 * s, 4));
        assert_ne!(a, schedule(8, 600 * s, 25 * s, 18 * s, 4));
        assert_eq!(a.len(), 24);
        for (n, step) in a.iter().enumerate() {
            let start = 25 * s * n as u32;
            assert!(step.at >= start && step.at <= start + 7 * s, "{step:?}");
            assert!(step.target < 4);
        }
        for kind in Chaos::ALL {
            assert_eq!(a.iter().filter(|x| x.chaos == kind).count(), 6, "{kind:?}");
        }
        let hits: Vec<usize> = a
            .iter()
            .filter(|x| x.chaos != Chaos::LeaderKill)
            .map(|x| x.target)
            .collect();
        assert!(hits.windows(2).all(|w| w[0] != w[1]), "{hits:?}");
        // A quick run still gets every kind once.
        let q = schedule(1, 72 * s, 18 * s, 14 * s, 4);
        assert_eq!(q.len(), 4);
        for kind in Chaos::ALL {
            assert!(q.iter().any(|x| x.chaos == kind));
        }
        assert!(schedule(1, 10 * s, 18 * s, 14 * s, 4).is_empty());
        assert!(schedule(1, 10 * s, Duration::ZERO, Duration::ZERO, 4).is_empty());
    }
}
