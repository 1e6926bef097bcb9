//! The outbound queue: numbered DATA frames kept until a cumulative ACK covers them, and
//! sent again, in order, on the next link.

use std::collections::VecDeque;

use bytes::Bytes;

/// One frame waiting for its acknowledgement.
#[derive(Debug)]
struct Entry<T> {
    /// Sequence number; continuous for the client's lifetime, across links, so a receiver
    /// can drop duplicates after a resend.
    seq: u64,
    /// Application bytes, kept for a resend.
    payload: Bytes,
    /// Who to tell when it is acknowledged or given up.
    token: T,
}

/// Numbered frames in send order.
#[derive(Debug)]
pub(crate) struct Outbox<T> {
    /// Unacknowledged frames, lowest sequence first.
    entries: VecDeque<Entry<T>>,
    /// Sequence number of the next pushed frame (starts at 1: 0 means "no ACK wanted").
    next_seq: u64,
    /// How many leading entries already went out on the current link.
    sent: usize,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        Self {
            entries: VecDeque::new(),
            next_seq: 1,
            sent: 0,
        }
    }
}

impl<T> Outbox<T> {
    /// Queues `payload` and returns its sequence number.
    pub(crate) fn push(&mut self, payload: Bytes, token: T) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.entries.push_back(Entry {
            seq,
            payload,
            token,
        });
        seq
    }

    /// Frames not yet written on the current link, in order; marks them written.
    pub(crate) fn take_unsent(&mut self) -> Vec<(u64, Bytes)> {
        let out = self
            .entries
            .iter()
            .skip(self.sent)
            .map(|e| (e.seq, e.payload.clone()))
            .collect();
        self.sent = self.entries.len();
        out
    }

    /// A new link: everything unacknowledged goes out again.
    pub(crate) fn relink(&mut self) {
        self.sent = 0;
    }

    /// Cumulative ACK `upto`: releases every frame with `seq <= upto` that was written on this
    /// link. An ACK beyond what was written is capped (a confused peer cannot make us drop
    /// frames it never saw).
    pub(crate) fn ack(&mut self, upto: u64) -> Vec<T> {
        let mut released = Vec::new();
        while self.sent > 0 {
            match self.entries.front() {
                Some(e) if e.seq <= upto => {
                    released.push(self.entries.pop_front().expect("front exists").token);
                    self.sent -= 1;
                }
                _ => break,
            }
        }
        released
    }

    /// Frames waiting for an ACK (written or not).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Everything not acknowledged, in order, for handing back as failed.
    pub(crate) fn drain(&mut self) -> Vec<(Bytes, T)> {
        self.sent = 0;
        self.entries
            .drain(..)
            .map(|e| (e.payload, e.token))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn ack_releases_in_order_and_resend_repeats_only_unacked() {
        let mut o = Outbox::default();
        for (i, s) in ["a", "b", "c", "d"].into_iter().enumerate() {
            assert_eq!(o.push(b(s), i), i as u64 + 1);
        }
        let sent = o.take_unsent();
        assert_eq!(
            sent.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            [1, 2, 3, 4]
        );
        assert!(o.take_unsent().is_empty(), "written once per link");
        assert_eq!(o.ack(2), vec![0, 1]);
        assert_eq!(o.ack(1), Vec::<usize>::new(), "old ACK is harmless");
        // The link dies; 3 and 4 go out again with their numbers, followed by a new frame.
        o.relink();
        o.push(b("e"), 4);
        let again = o.take_unsent();
        assert_eq!(
            again,
            vec![(3, b("c")), (4, b("d")), (5, b("e"))],
            "same numbers, same order"
        );
        assert_eq!(o.ack(5), vec![2, 3, 4]);
        assert!(o.is_empty());
    }

    #[test]
    fn ack_beyond_written_is_capped() {
        let mut o = Outbox::default();
        o.push(b("a"), ());
        o.take_unsent();
        o.push(b("b"), ());
        assert_eq!(o.ack(99).len(), 1, "frame 2 was never written");
        assert_eq!(o.len(), 1);
    }

    #[test]
    fn drain_hands_back_everything_in_order() {
        let mut o = Outbox::default();
        o.push(b("a"), 1);
        o.push(b("b"), 2);
        o.take_unsent();
        o.push(b("c"), 3);
        let d = o.drain();
        assert_eq!(d, vec![(b("a"), 1), (b("b"), 2), (b("c"), 3)]);
        assert!(o.is_empty());
    }
}
