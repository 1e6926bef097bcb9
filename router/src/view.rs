//! The router's in-memory view: registry snapshots turned into immutable [`View`]s swapped
//! atomically, plus the few things that change between registry writes (hand-outs not yet
//! reported, ejections), kept in atomics so a Route never takes a lock held across an await.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use parking_lot::Mutex;
use switchyard_registry::{DrainRecord, Entry, GatewayRecord, Snapshot};

use crate::outlier;
use crate::ranking::{self, Candidate};

/// Wall clock in Unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Per-gateway counters that outlive snapshots (keyed by id).
#[derive(Debug, Default)]
pub struct Shared {
    /// Clients handed this gateway as first place since its last report.
    pub pending: AtomicU64,
    /// Bumped at every report (and pending expiry): hand-outs remembered under an older
    /// generation are already in the reported load and must not be undone twice.
    pub generation: AtomicU64,
    /// When `pending` was last reset, Unix ms.
    pub reset_at_ms: AtomicI64,
    /// Ejected until this Unix ms (0 = never), mirrored from the outlier state for a
    /// lock-free read on the hot path.
    pub ejected_until_ms: AtomicI64,
}

impl Shared {
    fn reset_pending(&self, now_ms: i64) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.pending.store(0, Ordering::Release);
        self.reset_at_ms.store(now_ms, Ordering::Release);
    }
}

/// One gateway in a view.
#[derive(Debug)]
pub struct Gateway {
    /// The record as its agent wrote it.
    pub record: Arc<GatewayRecord>,
    /// `P/drain/<id>`, if any.
    pub drain: Option<Arc<DrainRecord>>,
    /// Live counters.
    pub shared: Arc<Shared>,
}

/// An immutable registry view, ranked against by every Route until the next one replaces it.
#[derive(Debug, Default)]
pub struct View {
    /// Registry revision it reflects; 0 before the first full list.
    pub revision: i64,
    /// Ranking input, index-aligned with `gateways`, sorted by id.
    pub candidates: Vec<Candidate>,
    /// Records and live counters, index-aligned with `candidates`.
    pub gateways: Vec<Gateway>,
    /// `candidates` grouped by locality, so a Route ranks only the pools it needs.
    pub index: ranking::Index,
    /// Values under the prefix that did not parse.
    pub rejected: usize,
}

impl View {
    /// True once the first full list has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.revision > 0
    }

    /// Index of gateway `id`.
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.candidates
            .binary_search_by(|c| c.id.as_str().cmp(id))
            .ok()
    }
}

/// Ranking's view of the live counters of one [`View`].
#[derive(Debug)]
pub struct LiveView<'a> {
    /// The view.
    pub view: &'a View,
    /// Now, Unix ms (ejections end by themselves).
    pub now_ms: i64,
}

impl ranking::Live for LiveView<'_> {
    fn pending(&self, index: usize) -> u64 {
        self.view.gateways[index]
            .shared
            .pending
            .load(Ordering::Relaxed)
    }
    fn ejected(&self, index: usize) -> bool {
        self.view.gateways[index]
            .shared
            .ejected_until_ms
            .load(Ordering::Relaxed)
            > self.now_ms
    }
}

/// Builds views from registry snapshots, carrying live counters across them.
#[derive(Debug, Default)]
pub struct Builder {
    /// Live counters by id, kept while the gateway is registered.
    shared: HashMap<String, Arc<Shared>>,
    /// What each gateway last reported, to notice a new report.
    last_report: HashMap<String, Report>,
}

/// The part of a record that marks a new load report.
#[derive(Debug, Clone, PartialEq)]
struct Report {
    updated_at: Option<chrono::DateTime<chrono::Utc>>,
    connections: u64,
}

impl Builder {
    /// A view of `snap`. Hand-outs of a gateway whose report changed are cleared.
    pub fn build(&mut self, snap: &Snapshot<Entry>, now_ms: i64) -> View {
        let mut drains: HashMap<&str, Arc<DrainRecord>> = HashMap::new();
        let mut gws: Vec<Arc<GatewayRecord>> = Vec::new();
        for (key, entry) in &snap.items {
            match entry.as_ref() {
                Entry::Gateway(g) => gws.push(Arc::new(g.clone())),
                Entry::Drain(d) => {
                    let id = key.strip_prefix("drain/").unwrap_or(key);
                    drains.insert(id, Arc::new(d.clone()));
                }
            }
        }
        gws.sort_by(|a, b| a.id.cmp(&b.id));
        let mut candidates = Vec::with_capacity(gws.len());
        let mut gateways = Vec::with_capacity(gws.len());
        let mut seen = HashMap::with_capacity(gws.len());
        for rec in gws {
            let shared = self
                .shared
                .entry(rec.id.clone())
                .or_insert_with(|| {
                    Arc::new(Shared {
                        reset_at_ms: AtomicI64::new(now_ms),
                        ..Shared::default()
                    })
                })
                .clone();
            let report = Report {
                updated_at: rec.updated_at,
                connections: rec.load.connections,
            };
            if self.last_report.get(&rec.id) != Some(&report) {
                shared.reset_pending(now_ms);
                self.last_report.insert(rec.id.clone(), report);
            }
            seen.insert(rec.id.clone(), ());
            let drain = drains.get(rec.id.as_str()).cloned();
            candidates.push(Candidate::from_record(&rec, drain.is_some()));
            gateways.push(Gateway {
                drain,
                record: rec,
                shared,
            });
        }
        self.shared.retain(|id, _| seen.contains_key(id));
        self.last_report.retain(|id, _| seen.contains_key(id));
        View {
            revision: snap.revision,
            index: ranking::Index::new(&candidates),
            candidates,
            gateways,
            rejected: snap.rejected.len(),
        }
    }

    /// Forgets hand-outs older than `window` for gateways that stopped reporting.
    pub fn expire_pending(&self, window_ms: i64, now_ms: i64) {
        for s in self.shared.values() {
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
pub struct Handouts {
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
    pub fn record(&self, client: u64, to: &Arc<Shared>) {
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

/// Outlier state of every gateway; failures are rare, so one mutex is enough, and it is
/// never held across an await.
#[derive(Debug, Default)]
pub struct Outliers {
    states: Mutex<HashMap<String, outlier::State>>,
}

impl Outliers {
    /// Records one failure report; returns true when it ejected the gateway.
    pub fn report(
        &self,
        p: &outlier::Params,
        view: &View,
        gateway: usize,
        client: u64,
        at_ms: i64,
        now_ms: i64,
    ) -> bool {
        let id = &view.candidates[gateway].id;
        let mut states = self.states.lock();
        let wants = states
            .entry(id.clone())
            .or_default()
            .report(p, client, at_ms, now_ms);
        if !wants {
            return false;
        }
        let ejected_now = view
            .gateways
            .iter()
            .filter(|g| g.shared.ejected_until_ms.load(Ordering::Acquire) > now_ms)
            .count();
        if ejected_now >= p.max_ejected(view.gateways.len()) {
            return false;
        }
        let state = states.get_mut(id).expect("inserted above");
        let until = state.eject(p, now_ms);
        view.gateways[gateway]
            .shared
            .ejected_until_ms
            .store(until, Ordering::Release);
        true
    }
}

/// The current view, swapped atomically; readers never block writers or each other.
pub type Current = ArcSwap<View>;

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
        let o = Outliers::default();
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
}
