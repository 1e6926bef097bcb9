//! Outlier ejection from client failure reports: a gateway that several distinct clients
//! failed to reach within a window is ejected for a time that grows with each ejection
//! (gRPC A50 / Envoy), and at most a bounded share of gateways is ejected at once so a
//! client-side problem (or a liar) cannot empty the fleet. Pure: time is passed in, and so
//! is the end of the current ejection, which the router keeps in exactly one place (the
//! gateway's live counters) because every Route reads it.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Deserialize;

/// Ejection knobs; every field has a default.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Failure reports older than this are forgotten. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Distinct clients that must report a gateway within the window before it is
    /// ejected; one client alone may just have a bad network. Default 3.
    pub min_clients: usize,
    /// First ejection lasts this long; the n-th lasts n times as long. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub base_ejection: Duration,
    /// Cap on one ejection; also how long a gateway must stay clean before its ejection
    /// count starts again from zero. Default 300 s.
    #[serde(with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share of gateways can be ejected at once (at least one). Default 0.3.
    pub max_ejected_share: f64,
    /// Failure reports one caller identity may make per `window`; the rest are ignored
    /// (and counted), so one credential cannot flood the reports. Default 5.
    pub max_reports_per_identity: u32,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(30),
            min_clients: 3,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejected_share: 0.3,
            max_reports_per_identity: 5,
        }
    }
}

/// Why outlier knobs were refused; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// `min_clients` is 0: one report from anyone would eject.
    #[error("outlier.min_clients must be at least 1")]
    MinClients,
    /// `max_ejected_share` is not a share.
    #[error("outlier.max_ejected_share must be within 0..=1, got {0}")]
    MaxEjectedShare(f64),
    /// `max_reports_per_identity` is 0: no report could ever count.
    #[error("outlier.max_reports_per_identity must be at least 1")]
    MaxReports,
    /// The first ejection would be longer than the cap.
    #[error("outlier.base_ejection must not exceed outlier.max_ejection")]
    BaseOverMax,
}

impl Params {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if self.min_clients == 0 {
            return Err(ParamsError::MinClients);
        }
        if self.max_reports_per_identity == 0 {
            return Err(ParamsError::MaxReports);
        }
        if !(0.0..=1.0).contains(&self.max_ejected_share) {
            return Err(ParamsError::MaxEjectedShare(self.max_ejected_share));
        }
        if self.base_ejection > self.max_ejection {
            return Err(ParamsError::BaseOverMax);
        }
        Ok(())
    }

    /// How many gateways out of `total` may be ejected at once (at least one, so a single
    /// bad gateway in a small fleet can still go).
    pub fn max_ejected(&self, total: usize) -> usize {
        ((self.max_ejected_share * total as f64).floor() as usize).max(1)
    }
}

/// Most recent reports kept per gateway; beyond this the oldest are dropped (a flood of
/// reports must not grow memory).
const MAX_REPORTS: usize = 64;

/// True while an ejection that ends at `until_ms` (Unix ms; 0 = never ejected) lasts.
pub(crate) fn is_ejected(until_ms: i64, now_ms: i64) -> bool {
    now_ms < until_ms
}

/// Failure reports and ejection streak of one gateway. The end of its current ejection is
/// not here: the caller owns it and passes it in.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    /// `(client hash, Unix ms)` of recent reports, one per client, oldest first.
    reports: VecDeque<(u64, i64)>,
    /// Ejections so far in the current streak (drives the growing ejection time).
    ejections: u32,
}

impl State {
    /// Records that `client` failed to reach this gateway at `at_ms`; `ejected_until_ms`
    /// is the end of its current or last ejection. Returns true when enough distinct
    /// clients have reported it to eject it now. Reports while ejected are ignored.
    pub(crate) fn report(
        &mut self,
        p: &Params,
        ejected_until_ms: i64,
        client: u64,
        at_ms: i64,
        now_ms: i64,
    ) -> bool {
        let at_ms = at_ms.min(now_ms);
        let horizon = now_ms - p.window.as_millis() as i64;
        if at_ms < horizon || is_ejected(ejected_until_ms, now_ms) {
            return false;
        }
        self.reports.retain(|&(c, t)| t >= horizon && c != client);
        self.reports.push_back((client, at_ms));
        while self.reports.len() > MAX_REPORTS {
            self.reports.pop_front();
        }
        self.reports.len() >= p.min_clients
    }

    /// Ejects now, after a last ejection that ended at `last_until_ms` (0 = never);
    /// returns the end of the new ejection (Unix ms).
    pub(crate) fn eject(&mut self, p: &Params, last_until_ms: i64, now_ms: i64) -> i64 {
        let clean_for = now_ms - last_until_ms;
        if last_until_ms == 0 || clean_for > p.max_ejection.as_millis() as i64 {
            self.ejections = 0;
        }
        self.ejections = self.ejections.saturating_add(1);
        let length = p
            .base_ejection
            .saturating_mul(self.ejections)
            .min(p.max_ejection);
        self.reports.clear();
        now_ms + length.as_millis() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_distinct_clients_within_the_window() {
        let p = Params::default();
        let mut s = State::default();
        assert!(!s.report(&p, 0, 1, 0, 0));
        assert!(
            !s.report(&p, 0, 1, 1_000, 1_000),
            "same client twice counts once"
        );
        assert!(!s.report(&p, 0, 2, 2_000, 2_000));
        // Client 1's report is now outside the window.
        assert!(!s.report(&p, 0, 3, 31_500, 31_500));
        assert!(s.report(&p, 0, 4, 31_600, 31_600));
        // Reports claiming to be too old are ignored.
        let mut s = State::default();
        assert!(!s.report(&p, 0, 9, 0, 100_000));
    }

    #[test]
    fn ejection_time_grows_and_is_capped_then_resets() {
        let p = Params::default();
        let mut s = State::default();
        let (mut now, mut until) = (0, 0);
        let mut lengths = Vec::new();
        for _ in 0..12 {
            until = s.eject(&p, until, now);
            assert!(is_ejected(until, now) && !is_ejected(until, until));
            assert!(
                !s.report(&p, until, 1, now, now),
                "reports while ejected are ignored"
            );
            lengths.push((until - now) / 1000);
            now = until + 1_000;
        }
        assert_eq!(&lengths[..4], &[30, 60, 90, 120]);
        assert_eq!(*lengths.last().unwrap(), 300);
        // Clean for longer than the cap: the streak starts again.
        now += 301_000;
        let next = s.eject(&p, until, now);
        assert_eq!((next - now) / 1000, 30);
    }

    #[test]
    fn bounded_share() {
        let p = Params::default();
        assert_eq!(p.max_ejected(1), 1);
        assert_eq!(p.max_ejected(3), 1);
        assert_eq!(p.max_ejected(10), 3);
    }
}
