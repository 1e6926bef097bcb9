//! The router's in-memory view: registry snapshots turned into immutable [`View`]s, plus the
//! few things that change between registry writes (hand-outs not yet reported, ejections),
//! kept per gateway in [`Shared`] so a Route never takes a lock held across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use switchyard_registry::{DrainRecord, Entry, GatewayRecord, Snapshot};

use crate::outlier;
use crate::ranking::{self, Candidate};

/// Wall clock in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Live state of one registration of a gateway, outliving snapshots. It is the only home
/// of these facts: a gateway that registers again (a new process, or back after its key
/// was gone) gets a fresh one, so it is neither stuck ejected nor deaf to new reports.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Clients handed this gateway as first place since its last report.
    pub(crate) pending: AtomicU64,
    /// Bumped at every report (and pending expiry): hand-outs remembered under an older
    /// generation are already in the reported load and must not be undone twice.
    pub(crate) generation: AtomicU64,
    /// When `pending` was last reset, Unix ms.
    pub(crate) reset_at_ms: AtomicI64,
    /// End of the current or last ejection, Unix ms (0 = never). An atomic because every
    /// Route reads it for every candidate; written only under `outlier`'s lock.
    ejected_until_ms: AtomicI64,
    /// Failure reports and ejection streak; a lock is fine because only failure reports,
    /// which are rare, touch it.
    outlier: Mutex<outlier::State>,
}

impl Shared {
    fn reset_pending(&self, now_ms: i64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.pending.store(0, Ordering::Release);
        self.reset_at_ms.store(now_ms, Ordering::Release);
    }

    /// End of the current or last ejection, Unix ms (0 = never).
    pub(crate) fn ejected_until_ms(&self) -> i64 {
        self.ejected_until_ms.load(Ordering::Acquire)
    }

    /// True while ejected.
    pub(crate) fn is_ejected(&self, now_ms: i64) -> bool {
        outlier::is_ejected(self.ejected_until_ms(), now_ms)
    }
}

/// One gateway in a view.
#[derive(Debug)]
pub(crate) struct Gateway {
    /// The record as its agent wrote it.
    pub(crate) record: Arc<GatewayRecord>,
    /// `P/drain/<id>`, if any.
    pub(crate) drain: Option<Arc<DrainRecord>>,
    /// Live counters of this registration.
    pub(crate) shared: Arc<Shared>,
}

/// An immutable registry view, ranked against by every Route until the next one replaces it.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Registry revision it reflects; 0 before the first full list.
    pub(crate) revision: i64,
    /// Ranking input, index-aligned with `gateways`, sorted by id.
    pub(crate) candidates: Vec<Candidate>,
    /// Records and live counters, index-aligned with `candidates`.
    pub(crate) gateways: Vec<Gateway>,
    /// `candidates` grouped by locality, so a Route ranks only the pools it needs.
    pub(crate) index: ranking::Index,
    /// Values under the prefix that did not parse.
    pub(crate) rejected: usize,
}

impl View {
    /// True once the first full list has been loaded.
    pub(crate) fn is_loaded(&self) -> bool {
        self.revision > 0
    }

    /// Index of gateway `id`.
    pub(crate) fn index_of(&self, id: &str) -> Option<usize> {
        self.candidates
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
    }

    /// How many gateways are ejected at `now_ms`: the one count behind both the ejection
    /// cap and the `ejected` gauge.
    pub(crate) fn ejected(&self, now_ms: i64) -> usize {
        self.gateways
            .iter()
            .filter(|g| g.shared.is_ejected(now_ms))
            .count()
    }
}

/// Ranking's view of the live counters of one [`View`].
#[derive(Debug)]
pub(crate) struct LiveView<'a> {
    /// The view.
    pub(crate) view: &'a View,
    /// Now, Unix ms (ejections end by themselves).
    pub(crate) now_ms: i64,
}

impl ranking::Live for LiveView<'_> {
    fn pending(&self, index: usize) -> u64 {
        self.view.gateways[index]
            .shared
            .pending
            .load(Ordering::Relaxed)
    }
    fn ejected(&self, index: usize) -> bool {
        self.view.gateways[index].shared.is_ejected(self.now_ms)
    }
}

/// Builds views from registry snapshots, carrying live counters across them.
#[derive(Debug, Default)]
pub(crate) struct Builder {
    /// Live state of each registered gateway, by id; dropped when it leaves the registry.
    registered: HashMap<String, Registered>,
}

/// What the builder remembers of one registered gateway.
#[derive(Debug)]
struct Registered {
    /// Its live counters, handed to every view while this registration lasts.
    shared: Arc<Shared>,
    /// Its process start: a new one is a new registration (a restart under the same id).
    started_at: Option<DateTime<Utc>>,
    /// Its last load report, to notice a new one.
    report: Report,
}

/// The part of a record that marks a new load report.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    updated_at: Option<DateTime<Utc>>,
    connections: u64,
}

impl Builder {
    /// A view of `snap`. Hand-outs of a gateway whose report changed are cleared; a
    /// gateway that is new or restarted gets fresh live state.
    pub(crate) fn build(&mut self, snap: &Snapshot<Entry>, now_ms: i64) -> View {
        let mut drains: HashMap<&str, Arc<DrainRecord>> = HashMap::new();
        let mut gws: Vec<Arc<GatewayRecord>> = Vec::new();
        for entry in snap.items.values() {
            match entry.as_ref() {
                Entry::Gateway(g) => gws.push(Arc::new(g.clone())),
                Entry::Drain(id, d) => {
                    drains.insert(id.as_str(), Arc::new(d.clone()));
                }
            }
        }
        gws.sort_by(|a, b| a.id.cmp(&b.id));
        let mut candidates = Vec::with_capacity(gws.len());
        let mut gateways = Vec::with_capacity(gws.len());
        let mut registered = HashMap::with_capacity(gws.len());
        for rec in gws {
            let report = Report {
                updated_at: rec.updated_at,
                connections: rec.load.connections,
            };
            let entry = match self.registered.remove(&rec.id) {
                Some(mut known) if known.started_at == rec.started_at => {
                    if known.report != report {
                        known.shared.reset_pending(now_ms);
                        known.report = report;
                    }
                    known
                }
                _ => Registered {
                    shared: Arc::new(Shared {
                        reset_at_ms: AtomicI64::new(now_ms),
                        ..Shared::default()
                    }),
                    started_at: rec.started_at,
                    report,
                },
            };
            let shared = entry.shared.clone();
            registered.insert(rec.id.clone(), entry);
            let drain = drains.get(rec.id.as_str()).cloned();
            candidates.push(Candidate::from_record(&rec, drain.is_some()));
            gateways.push(Gateway {
                drain,
                record: rec,
                shared,
            });
        }
        // Whatever was not seen left the registry; its state goes with it.
        self.registered = registered;
        View {
            revision: snap.revision,
            index: ranking::Index::new(&candidates),
            candidates,
            gateways,
            rejected: snap.rejected.len(),
        }
    }

    /// Forgets hand-outs older than `window` for gateways that stopped reporting.
    pub(crate) fn expire_pending(&self, window_ms: i64, now_ms: i64) {
        for s in self.registered.values().map(|r| &r.shared) {
            if now_ms - s.reset_at_ms.load(Ordering::Acquire) >= window_ms
                && s.pending.load(Ordering::Acquire) > 0
            {
                s.reset_pending(now_ms);
            }
        }
    }
}

/// Shards of the client → gateway hand-out memory (fewer lock collisions between Routes).
const SHARDS: usize = 32;
/// Entries per shard before stale ones are swept.
const SHARD_LIMIT: usize = 16_384;

/// The gateway a client was handed, and that gateway's report generation at the time.
type Handout = (Arc<Shared>, u64);

/// Remembers which gateway each client was handed during the pending window, so a client
/// asking again before the next report is not counted twice.
#[derive(Debug)]
pub(crate) struct Handouts {
    shards: Vec<Mutex<HashMap<u64, Handout>>>,
}

impl Default for Handouts {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }
}

impl Handouts {
    /// Counts `client` (by hash) as handed `to`, once per report generation.
    pub(crate) fn record(&self, client: u64, to: &Arc<Shared>) {
        let generation = to.generation.load(Ordering::Acquire);
        let mut shard = self.shards[(client % SHARDS as u64) as usize].lock();
        if let Some((prev, prev_gen)) = shard.get(&client) {
            if Arc::ptr_eq(prev, to) && *prev_gen == generation {
                return;
            }
            // The client moved before any report: take it off the old gateway.
            if prev.generation.load(Ordering::Acquire) == *prev_gen {
                let _ = prev
                    .pending
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |p| p.checked_sub(1));
            }
        }
        to.pending.fetch_add(1, Ordering::AcqRel);
        shard.insert(client, (to.clone(), generation));
        if shard.len() > SHARD_LIMIT {
            shard.retain(|_, (s, g)| s.generation.load(Ordering::Acquire) == *g);
            if shard.len() > SHARD_LIMIT {
                // Only possible under a flood of distinct ids inside one report period;
                // forgetting means a repeat asker may be counted twice, never a crash.
                shard.clear();
            }
        }
    }
}

/// Turns failure reports into ejections. Each gateway's reports and ejection live in its
/// [`Shared`]; this only makes the cap hold: deciding an ejection takes one lock, so two
/// reports arriving together cannot both pass the cap.
#[derive(Debug, Default)]
pub(crate) struct Ejector {
    /// Held while counting the ejected gateways and ejecting one more.
    decide: Mutex<()>,
}

impl Ejector {
    /// Records one failure report against `view.gateways[gateway]`; returns true when it
    /// ejected the gateway.
    pub(crate) fn report(
        &self,
        p: &outlier::Params,
        view: &View,
        gateway: usize,
        client: u64,
        at_ms: i64,
        now_ms: i64,
    ) -> bool {
        let shared = &view.gateways[gateway].shared;
        let mut state = shared.outlier.lock();
        let last_until = shared.ejected_until_ms();
        if !state.report(p, last_until, client, at_ms, now_ms) {
            return false;
        }
        let _deciding = self.decide.lock();
        if view.ejected(now_ms) >= p.max_ejected(view.gateways.len()) {
            return false;
        }
        let until = state.eject(p, last_until, now_ms);
        shared.ejected_until_ms.store(until, Ordering::Release);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(gateways: &[(&str, u64)], revision: i64) -> Snapshot<Entry> {
        let mut snap = Snapshot {
            revision,
            ..Snapshot::default()
        };
        for (id, conns) in gateways {
            let json = format!(
                r#"{{"id":"{id}","addrs":{{"tcp":"127.0.0.1:7200"}},"capacity":100,"load":{{"connections":{conns}}}}}"#
            );
            let rec = GatewayRecord::from_json(json.as_bytes()).unwrap();
            snap.items
                .insert(format!("gateways/{id}"), Arc::new(Entry::Gateway(rec)));
        }
        snap
    }

    fn pending(view: &View, id: &str) -> u64 {
        view.gateways[view.index_of(id).unwrap()]
            .shared
            .pending
            .load(Ordering::Relaxed)
    }

    #[test]
    fn handouts_count_each_client_once_and_reset_on_report() {
        let mut b = Builder::default();
        let v = b.build(&snapshot(&[("a", 0), ("b", 0)], 1), 0);
        let h = Handouts::default();
        let (a, bb) = (&v.gateways[0].shared, &v.gateways[1].shared);
        h.record(1, a);
        h.record(1, a);
        h.record(2, a);
        assert_eq!(pending(&v, "a"), 2, "client 1 asked twice, counted once");
        h.record(1, bb);
        assert_eq!(
            (pending(&v, "a"), pending(&v, "b")),
            (1, 1),
            "client 1 moved"
        );
        // Same load report again (e.g. a drain key changed): pending stays.
        let v2 = b.build(&snapshot(&[("a", 0), ("b", 0)], 2), 0);
        assert_eq!(pending(&v2, "a"), 1);
        // A new report from a: its pending is cleared, b keeps its own.
        let v3 = b.build(&snapshot(&[("a", 2), ("b", 0)], 3), 0);
        assert_eq!((pending(&v3, "a"), pending(&v3, "b")), (0, 1));
        // Client 2 asking again after a's report is a new hand-out for the new period.
        h.record(2, &v3.gateways[0].shared);
        assert_eq!(pending(&v3, "a"), 1);
        // A gateway that stopped reporting forgets its pending after the window.
        b.expire_pending(10_000, 20_000);
        assert_eq!((pending(&v3, "a"), pending(&v3, "b")), (0, 0));
    }

    #[test]
    fn ejections_are_capped_at_the_configured_share() {
        let ids: Vec<String> = (0..7).map(|i| format!("g{i}")).collect();
        let gws: Vec<(&str, u64)> = ids.iter().map(|s| (s.as_str(), 0)).collect();
        let v = Builder::default().build(&snapshot(&gws, 1), 0);
        let o = Ejector::default();
        let p = outlier::Params::default();
        let mut ejected = 0;
        for g in 0..7 {
            for client in 0..3 {
                if o.report(&p, &v, g, client, 1_000, 1_000) {
                    ejected += 1;
                }
            }
        }
        // 30 % of 7 gateways: two at most, however many are reported.
        assert_eq!(ejected, 2);
        let live = LiveView {
            view: &v,
            now_ms: 1_000,
        };
        use ranking::Live as _;
        assert_eq!((0..7).filter(|&i| live.ejected(i)).count(), 2);
        let later = LiveView {
            view: &v,
            now_ms: 1_000 + 31_000,
        };
        assert_eq!(
            (0..7).filter(|&i| later.ejected(i)).count(),
            0,
            "ejections end"
        );
    }

    /// Ejects `g` through reports from `min_clients` distinct clients; true when it worked.
    fn eject_by_reports(o: &Ejector, v: &View, g: usize, now: i64) -> bool {
        let p = outlier::Params::default();
        (0..p.min_clients as u64)
            .map(|client| o.report(&p, v, g, 100 + client, now, now))
            .fold(false, |_, ejected| ejected)
    }

    #[test]
    fn a_gateway_back_in_the_registry_is_not_ejected_and_hears_new_reports() {
        let mut b = Builder::default();
        let o = Ejector::default();
        let both = snapshot(&[("a", 0), ("b", 0)], 1);
        let v = b.build(&both, 1_000);
        assert!(eject_by_reports(&o, &v, 0, 1_000));
        assert_eq!(v.ejected(1_000), 1);
        // `a` leaves the registry (its lease lapsed) and comes back.
        b.build(&snapshot(&[("b", 0)], 2), 2_000);
        let back = b.build(&snapshot(&[("a", 0), ("b", 0)], 3), 3_000);
        assert_eq!(back.ejected(3_000), 0, "not stuck ejected");
        // New failures against the new registration eject it again.
        assert!(eject_by_reports(&o, &back, 0, 3_000), "deaf to new reports");
        assert_eq!(back.ejected(3_000), 1);
    }

    #[test]
    fn a_gateway_restarted_under_the_same_id_starts_clean() {
        let rec = |started: &str| {
            let json = format!(
                r#"{{"id":"a","addrs":{{"tcp":"127.0.0.1:7200"}},"capacity":100,"started_at":"{started}"}}"#
            );
            let mut snap = Snapshot {
                revision: 1,
                ..Snapshot::default()
            };
            snap.items.insert(
                "gateways/a".into(),
                Arc::new(Entry::Gateway(
                    GatewayRecord::from_json(json.as_bytes()).unwrap(),
                )),
            );
            snap
        };
        let mut b = Builder::default();
        let o = Ejector::default();
        let v = b.build(&rec("2026-11-22T01:00:00Z"), 1_000);
        assert!(eject_by_reports(&o, &v, 0, 1_000));
        // Same process, new report: still ejected.
        let same = b.build(&rec("2026-11-22T01:00:00Z"), 2_000);
        assert_eq!(same.ejected(2_000), 1);
        // The key was replaced by a new process within one snapshot: a new registration.
        let restarted = b.build(&rec("2026-11-22T01:10:00Z"), 3_000);
        assert_eq!(restarted.ejected(3_000), 0);
        assert!(eject_by_reports(&o, &restarted, 0, 3_000));
    }
}
