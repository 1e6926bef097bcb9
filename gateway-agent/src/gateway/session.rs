//! Pure session rules: what a client frame means, acknowledgement tracking, the drain plan.

use std::time::Duration;

use switchyard_proto::wire::{Frame, Kind};

/// Receiver side of contract 3's cumulative ACK.
///
/// The client numbers DATA across reconnects, so a new session starts from whatever number
/// arrives first. The ACK carries the highest number taken in order; a repeat (≤ that) is
/// acknowledged again so a client that resent after a lost ACK moves on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckTracker {
    /// Highest sequence taken, 0 before the first.
    highest: u64,
    /// An ACK is owed (sent once the already-buffered frames are handled: batching).
    pending: bool,
}

impl AckTracker {
    /// Records a DATA frame the application has taken. Returns false for a repeat.
    pub(crate) fn taken(&mut self, seq: u64) -> bool {
        if seq == 0 {
            return true;
        }
        self.pending = true;
        if seq <= self.highest {
            return false;
        }
        self.highest = seq;
        true
    }

    /// The ACK to send now, if one is owed.
    pub(crate) fn take_pending(&mut self) -> Option<u64> {
        std::mem::take(&mut self.pending).then_some(self.highest)
    }

    pub(crate) fn is_pending(&self) -> bool {
        self.pending
    }
}

/// What the session does with one frame from a logged-in client.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Action {
    /// Answer with PONG carrying this payload.
    Pong(bytes::Bytes),
    /// Hand to the application.
    Data(u64, bytes::Bytes),
    /// Client acknowledged our DATA up to here.
    Acked(u64),
    /// Liveness only (a PONG).
    Nothing,
    /// A frame the client must never send now: close, counted as `unexpected_kind`.
    Violation(Kind),
}

/// Classifies a frame from a logged-in client. Every frame, whatever it is, has already
/// reset the idle clock.
pub(crate) fn on_client_frame(frame: Frame) -> Action {
    match frame {
        Frame::Ping(p) => Action::Pong(p),
        Frame::Pong(_) => Action::Nothing,
        Frame::Data { seq, payload } => Action::Data(seq, payload),
        Frame::Ack(n) => Action::Acked(n),
        other => Action::Violation(other.kind()),
    }
}

/// The drain plan: when each of `n` sessions gets its GOAWAY, and the reconnect window
/// they are given. GOAWAYs are spread evenly over the drain window minus the reconnect
/// window, so the last client still has its whole reconnect window before the gateway
/// closes what is left at the end of the drain window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DrainPlan {
    /// `reconnect_within_ms` sent in every GOAWAY.
    pub(crate) reconnect_within: Duration,
    /// Time between consecutive GOAWAYs.
    pub(crate) spacing: Duration,
}

impl DrainPlan {
    /// Reconnect window: a tenth of the drain window, at most 5 s.
    pub(crate) fn new(window: Duration, sessions: usize) -> Self {
        let reconnect_within = (window / 10).min(Duration::from_secs(5));
        let spread = window.saturating_sub(reconnect_within);
        let spacing = if sessions > 1 {
            spread / sessions as u32
        } else {
            Duration::ZERO
        };
        Self {
            reconnect_within,
            spacing,
        }
    }

    /// Offset from the drain start of the `i`-th GOAWAY.
    pub(crate) fn at(&self, i: usize) -> Duration {
        self.spacing * i as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use switchyard_proto::v1;

    #[test]
    fn acks_are_cumulative_and_batched() {
        let mut t = AckTracker::default();
        assert_eq!(t.take_pending(), None);
        assert!(t.taken(0));
        assert_eq!(t.take_pending(), None, "seq 0 is never acknowledged");
        // A new session starts wherever the client's numbering is.
        assert!(t.taken(41));
        assert!(t.taken(42));
        assert_eq!(t.take_pending(), Some(42));
        assert_eq!(t.take_pending(), None);
        assert!(!t.taken(40), "a repeat");
        assert_eq!(t.take_pending(), Some(42), "a repeat is acknowledged again");
    }

    #[test]
    fn server_only_frames_from_a_client_are_violations() {
        assert_eq!(
            on_client_frame(Frame::Ping(Bytes::from_static(b"x"))),
            Action::Pong(Bytes::from_static(b"x"))
        );
        assert_eq!(on_client_frame(Frame::Ack(3)), Action::Acked(3));
        assert_eq!(
            on_client_frame(Frame::Hello(v1::Hello::default())),
            Action::Violation(Kind::Hello)
        );
        assert_eq!(
            on_client_frame(Frame::Kick(v1::Kick::default())),
            Action::Violation(Kind::Kick)
        );
    }

    #[test]
    fn drain_spreads_goaways_evenly_inside_the_window() {
        let w = Duration::from_secs(30);
        let p = DrainPlan::new(w, 1000);
        assert_eq!(p.reconnect_within, Duration::from_secs(3));
        assert_eq!(p.at(0), Duration::ZERO);
        assert_eq!(p.at(500) * 2, p.at(1000));
        assert!(p.at(999) + p.reconnect_within <= w);
        let p = DrainPlan::new(Duration::from_secs(120), 10);
        assert_eq!(p.reconnect_within, Duration::from_secs(5));
        assert_eq!(DrainPlan::new(w, 1).at(0), Duration::ZERO);
        assert_eq!(DrainPlan::new(Duration::ZERO, 5).at(4), Duration::ZERO);
    }
}
