//! Heartbeat deadlines (idle-only PING, dead-link timeout) and the adaptive interval.
//!
//! Pure state machines over [`Instant`]s; the session loop asks [`Heartbeat::next`] what is
//! due and sleeps until then, so there is no periodic tick.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

/// What the heartbeat clock asks for at its next deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// The link has been write-idle for the interval: send a PING.
    Ping,
    /// Nothing came back in time: the link is dead.
    Dead,
}

/// Per-link heartbeat clock.
///
/// - A PING is due only after `interval` without any frame *sent* (idle-only: traffic is the
///   heartbeat, so a busy link costs no extra bytes).
/// - After a PING, any frame received within `timeout` proves the link alive.
/// - A link that keeps sending but hears nothing back (a frozen peer whose kernel still takes
///   our bytes) is dead after `interval + timeout` from the first unanswered frame, even
///   though it never went idle long enough to PING.
#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    /// Write-idle time before a PING.
    interval: Duration,
    /// How long a PING may stay unanswered.
    timeout: Duration,
    /// Start of the write-idle period.
    last_send: Instant,
    /// When the outstanding PING went out, if one is outstanding.
    probe: Option<Instant>,
    /// First frame sent since the last frame received, if any: bounds detection on a busy link.
    unanswered_since: Option<Instant>,
    /// False while the client does not read the link (the app's buffer is full): nothing can
    /// be heard then, so only PINGs fall due (they keep the gateway from reaping the link).
    listening: bool,
}

impl Heartbeat {
    /// A clock for a link that just became usable at `now`.
    pub(crate) fn new(now: Instant, interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            last_send: now,
            probe: None,
            unanswered_since: None,
            listening: true,
        }
    }

    /// The client stopped reading the link: suspend the dead-link clock.
    pub(crate) fn pause_listening(&mut self) {
        self.listening = false;
        self.probe = None;
        self.unanswered_since = None;
    }

    /// Reading resumed at `now`: the link must prove itself alive again within
    /// interval + timeout (what was sent meanwhile is waiting to be read).
    pub(crate) fn resume_listening(&mut self, now: Instant) {
        if !self.listening {
            self.listening = true;
            self.unanswered_since = Some(now);
        }
    }

    /// The configured interval.
    pub(crate) fn interval(&self) -> Duration {
        self.interval
    }

    /// True while a PING waits for an answer.
    pub(crate) fn probing(&self) -> bool {
        self.probe.is_some()
    }

    /// A frame other than PING went out.
    pub(crate) fn on_send(&mut self, now: Instant) {
        self.last_send = now;
        if self.listening {
            self.unanswered_since.get_or_insert(now);
        }
    }

    /// A PING went out.
    pub(crate) fn on_ping(&mut self, now: Instant) {
        self.last_send = now;
        if self.listening {
            self.probe = Some(now);
        }
    }

    /// Any frame arrived: the link is alive.
    pub(crate) fn on_receive(&mut self, _now: Instant) {
        self.probe = None;
        self.unanswered_since = None;
    }

    /// The next deadline and what is due then.
    pub(crate) fn next(&self) -> (Instant, Due) {
        if !self.listening {
            return (self.last_send + self.interval, Due::Ping);
        }
        let mut next = match self.probe {
            Some(at) => (at + self.timeout, Due::Dead),
            None => (self.last_send + self.interval, Due::Ping),
        };
        if let Some(at) = self.unanswered_since {
            let dead = at + self.interval + self.timeout;
            if dead < next.0 {
                next = (dead, Due::Dead);
            }
        }
        next
    }

    /// What is due at `now`, if anything.
    #[cfg(test)]
    pub(crate) fn poll(&self, now: Instant) -> Option<Due> {
        let (at, due) = self.next();
        (now >= at).then_some(due)
    }
}

/// Settings of the adaptive heartbeat (off unless configured).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdaptiveSettings {
    /// Lowest interval; also where learning starts. Must sit below the shortest NAT aging
    /// the fleet meets (some carriers: ~60 s).
    pub min: Duration,
    /// Highest interval tried.
    pub max: Duration,
    /// How much one step up or down changes the interval.
    pub step: Duration,
    /// Consecutive answered PINGs at the current interval before stepping up.
    pub successes_per_step: u32,
}

impl Default for AdaptiveSettings {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(30),
            max: Duration::from_secs(270),
            step: Duration::from_secs(30),
            successes_per_step: 3,
        }
    }
}

/// What was learned for one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Learned {
    /// Interval in use.
    interval: Duration,
    /// Answered PINGs at this interval since the last change.
    successes: u32,
    /// A failure settled the value; stop probing upwards.
    stable: bool,
}

/// Learns, per network key the app supplies, the longest interval links survive.
///
/// Like Mars's smart heartbeat, but with a configurable floor: step up by `step` after
/// `successes_per_step` answered idle PINGs, and after a dead link step back one step and
/// keep that value (a failure while already at `min` changes nothing).
#[derive(Debug, Clone)]
pub(crate) struct Adaptive {
    /// Bounds and step sizes.
    settings: AdaptiveSettings,
    /// Learned state per network key.
    learned: HashMap<String, Learned>,
}

impl Adaptive {
    /// A learner with no history.
    pub(crate) fn new(settings: AdaptiveSettings) -> Self {
        Self {
            settings,
            learned: HashMap::new(),
        }
    }

    fn entry(&mut self, network: &str) -> &mut Learned {
        let min = self.settings.min;
        self.learned.entry(network.to_owned()).or_insert(Learned {
            interval: min,
            successes: 0,
            stable: false,
        })
    }

    /// What was learned for `network`.
    pub(crate) fn learned(&self, network: &str) -> Duration {
        self.learned
            .get(network)
            .map_or(self.settings.min, |l| l.interval)
    }

    /// The interval to use on `network` on a link whose gateway allows at most `ceiling`.
    pub(crate) fn interval(&self, network: &str, ceiling: Option<Duration>) -> Duration {
        let learned = self.learned(network);
        ceiling.map_or(learned, |c| learned.min(c))
    }

    /// A PING sent after a full idle interval was answered, on a link allowing at most
    /// `ceiling`. Only the interval actually used is credited: learning never climbs past
    /// what a link could use.
    pub(crate) fn on_success(&mut self, network: &str, ceiling: Option<Duration>) {
        let s = self.settings;
        let top = ceiling.map_or(s.max, |c| c.min(s.max));
        let l = self.entry(network);
        if l.stable || l.interval >= top {
            return;
        }
        l.successes += 1;
        if l.successes >= s.successes_per_step {
            l.interval = (l.interval + s.step).min(top);
            l.successes = 0;
        }
    }

    /// A link on `network` died from a heartbeat timeout.
    pub(crate) fn on_failure(&mut self, network: &str) {
        let s = self.settings;
        let l = self.entry(network);
        l.successes = 0;
        if l.interval > s.min {
            l.interval = l.interval.saturating_sub(s.step).max(s.min);
            l.stable = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_secs(30);
    const T: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn ping_only_when_write_idle() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, I, T);
        assert_eq!(hb.next(), (t0 + I, Due::Ping));
        // Traffic pushes the PING out; a reply clears the "unanswered" clock.
        hb.on_send(t0 + Duration::from_secs(20));
        hb.on_receive(t0 + Duration::from_secs(21));
        assert_eq!(hb.poll(t0 + I), None);
        assert_eq!(hb.next(), (t0 + Duration::from_secs(50), Due::Ping));
    }

    #[tokio::test(start_paused = true)]
    async fn unanswered_ping_is_a_dead_link_after_timeout() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, I, T);
        tokio::time::advance(I).await;
        assert_eq!(hb.poll(Instant::now()), Some(Due::Ping));
        hb.on_ping(Instant::now());
        assert!(hb.probing());
        assert_eq!(hb.poll(t0 + I + T - Duration::from_millis(1)), None);
        assert_eq!(hb.poll(t0 + I + T), Some(Due::Dead));
        // An answer in time keeps it alive and restarts the idle clock from the PING.
        hb.on_receive(t0 + I + Duration::from_secs(1));
        assert_eq!(hb.next(), (t0 + I + I, Due::Ping));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_link_with_silent_peer_is_dead_too() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, I, T);
        // Send every 5 s forever: never idle, but nothing comes back.
        let mut t = t0;
        for _ in 0..20 {
            t += Duration::from_secs(5);
            hb.on_send(t);
        }
        let first = t0 + Duration::from_secs(5);
        assert_eq!(hb.next(), (first + I + T, Due::Dead));
    }

    #[test]
    fn adaptive_steps_up_then_settles_after_failure() {
        let s = AdaptiveSettings {
            min: Duration::from_secs(30),
            max: Duration::from_secs(120),
            step: Duration::from_secs(30),
            successes_per_step: 2,
        };
        let mut a = Adaptive::new(s);
        assert_eq!(a.learned("wifi"), Duration::from_secs(30));
        for _ in 0..2 {
            a.on_success("wifi", None);
        }
        assert_eq!(a.learned("wifi"), Duration::from_secs(60));
        for _ in 0..2 {
            a.on_success("wifi", None);
        }
        assert_eq!(a.learned("wifi"), Duration::from_secs(90));
        a.on_failure("wifi");
        assert_eq!(a.learned("wifi"), Duration::from_secs(60));
        for _ in 0..10 {
            a.on_success("wifi", None);
        }
        assert_eq!(a.learned("wifi"), Duration::from_secs(60), "stable");
        // Other networks learn separately; the ceiling holds.
        for _ in 0..100 {
            a.on_success("cell", None);
        }
        assert_eq!(a.learned("cell"), Duration::from_secs(120));
        // A failure at the floor is not a reason to go lower.
        a.on_failure("x");
        assert_eq!(a.learned("x"), Duration::from_secs(30));
    }

    #[test]
    fn adaptive_never_credits_an_interval_the_link_could_not_use() {
        // Defaults climb to 270 s; a gateway idle timeout of 90 s caps links at 60 s.
        let mut a = Adaptive::new(AdaptiveSettings::default());
        let ceiling = Some(Duration::from_secs(60));
        for _ in 0..100 {
            a.on_success("wifi", ceiling);
        }
        assert_eq!(a.learned("wifi"), Duration::from_secs(60));
        assert_eq!(a.interval("wifi", ceiling), Duration::from_secs(60));
        // Below the floor of learning, the ceiling wins and nothing is credited.
        let low = Some(Duration::from_secs(20));
        assert_eq!(a.interval("cell", low), Duration::from_secs(20));
        a.on_success("cell", low);
        assert_eq!(a.learned("cell"), Duration::from_secs(30));
    }

    #[tokio::test(start_paused = true)]
    async fn a_paused_reader_only_pings_and_must_hear_back_after_resuming() {
        let t0 = Instant::now();
        let mut hb = Heartbeat::new(t0, I, T);
        hb.on_send(t0);
        hb.pause_listening();
        // However long the app does not read, the link is never declared dead for silence
        // it cannot hear; it keeps PINGing so the gateway does not reap it.
        let mut t = t0;
        for _ in 0..10 {
            let (at, due) = hb.next();
            assert_eq!(due, Due::Ping);
            t = at;
            hb.on_ping(t);
        }
        hb.resume_listening(t);
        assert_eq!(hb.next(), (t + I, Due::Ping));
        hb.on_ping(t + I);
        assert_eq!(
            hb.next(),
            (t + I + T, Due::Dead),
            "silence after resuming is fatal"
        );
        hb.on_receive(t + I + Duration::from_secs(1));
        assert_eq!(hb.next().1, Due::Ping);
    }
}
