//! Pure ranking (DESIGN contract 2): candidates, locality tiers with spill, sticky first
//! place by bounded-load rendezvous hashing, further places by two random choices over
//! headroom, slow start. No I/O and no clock: the same view, request and seed always give
//! the same answer, which is what makes two router replicas agree on first places.

use serde::Deserialize;

/// Ranking knobs; every field has a default (see [`Params::default`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Params {
    /// Bounded load `c`: a gateway whose utilisation would exceed `c ×` the pool's mean
    /// utilisation is skipped for first place, so sticky hashing cannot overload one
    /// gateway (consistent hashing with bounded loads). Default 1.25.
    pub bound: f64,
    /// Slow-start window in milliseconds: a gateway younger than this gets a reduced share
    /// of new clients so a cold process is not flooded the moment it registers. Default 30 s.
    #[serde(with = "humantime_serde")]
    pub slow_start: std::time::Duration,
    /// Smallest share factor during slow start (Envoy's `min_weight_percent`), so a new
    /// gateway gets some traffic at once. Default 0.1.
    pub slow_start_min: f64,
    /// Curve of the ramp: factor = `(age / window)^(1 / aggression)`; 1.0 is linear.
    pub slow_start_aggression: f64,
    /// Panic threshold: a locality tier whose healthy share falls below this spills into
    /// the next tier (Envoy's 50 %), so a mostly-dead zone does not take all its clients.
    pub panic_threshold: f64,
    /// A tier whose free capacity (share of its capacity) is below this also spills, so a
    /// full zone sends newcomers to the region instead of past its limit. Default 0.05.
    pub min_tier_headroom: f64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            bound: 1.25,
            slow_start: std::time::Duration::from_secs(30),
            slow_start_min: 0.1,
            slow_start_aggression: 1.0,
            panic_threshold: 0.5,
            min_tier_headroom: 0.05,
        }
    }
}

/// Why ranking knobs were refused; the message names the key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsError {
    /// `bound` below 1 would refuse first place to every gateway at mean load.
    #[error("ranking.bound must be >= 1.0, got {0}")]
    Bound(f64),
    /// A knob that is a share (0..=1) is not.
    #[error("ranking.{key} must be within 0..=1, got {value}")]
    Share {
        /// The key under `[ranking]`.
        key: &'static str,
        /// The value given.
        value: f64,
    },
    /// `slow_start_aggression` must be a positive number.
    #[error("ranking.slow_start_aggression must be > 0, got {0}")]
    Aggression(f64),
}

impl Params {
    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), ParamsError> {
        if !(self.bound.is_finite() && self.bound >= 1.0) {
            return Err(ParamsError::Bound(self.bound));
        }
        if !(self.slow_start_aggression.is_finite() && self.slow_start_aggression > 0.0) {
            return Err(ParamsError::Aggression(self.slow_start_aggression));
        }
        for (key, value) in [
            ("slow_start_min", self.slow_start_min),
            ("panic_threshold", self.panic_threshold),
            ("min_tier_headroom", self.min_tier_headroom),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return Err(ParamsError::Share { key, value });
            }
        }
        Ok(())
    }
}

/// The transport a client will use; a gateway needs an address for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Length-prefixed frames over TCP.
    Tcp,
    /// WebSocket.
    Ws,
}

impl Protocol {
    /// `""`/`"tcp"` → TCP, `"ws"` → WebSocket, anything else is refused.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "" | "tcp" => Some(Self::Tcp),
            "ws" => Some(Self::Ws),
            _ => None,
        }
    }

    /// The name used in records and requests.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Ws => "ws",
        }
    }
}

/// One gateway as ranking sees it: the static part of a registry record, precomputed
/// when the snapshot is built so a Route does no parsing or hashing per candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Gateway id (for `exclude` and explanations).
    pub id: String,
    /// Stable hash of the id, the gateway's half of the rendezvous score.
    pub id_hash: u64,
    /// Region, for locality tiers.
    pub region: String,
    /// Zone, for locality tiers.
    pub zone: String,
    /// Has a TCP address.
    pub has_tcp: bool,
    /// Has a WebSocket address.
    pub has_ws: bool,
    /// Connections it is sized for (≥ 1).
    pub capacity: u64,
    /// Relative share at equal utilisation (100 = normal).
    pub weight: u32,
    /// Connections in its last report.
    pub connections: u64,
    /// Reported `serving` (not draining, not unhealthy).
    pub serving: bool,
    /// Agent-side drain (`state == draining`): deliberate, so it does not count against
    /// the tier's healthy share.
    pub draining: bool,
    /// `P/drain/<id>` exists.
    pub ops_drained: bool,
    /// Process start, Unix ms; `None` = unknown, treated as warmed up.
    pub started_at_ms: Option<i64>,
}

impl Candidate {
    /// The ranking input for a registry record; `ops_drained` says whether `P/drain/<id>`
    /// exists. The one place a record becomes a candidate (router view, benchmarks).
    pub fn from_record(rec: &switchyard_registry::GatewayRecord, ops_drained: bool) -> Self {
        use switchyard_registry::GatewayState;
        Self {
            id: rec.id.clone(),
            id_hash: stable_hash(rec.id.as_bytes()),
            region: rec.region.clone(),
            zone: rec.zone.clone(),
            has_tcp: rec.addrs.tcp.is_some(),
            has_ws: rec.addrs.ws.is_some(),
            capacity: rec.capacity.max(1),
            weight: rec.weight,
            connections: rec.load.connections,
            serving: rec.state == GatewayState::Serving,
            draining: rec.state == GatewayState::Draining,
            ops_drained,
            started_at_ms: rec.started_at.map(|t| t.timestamp_millis()),
        }
    }
}

/// What changes between snapshots without a registry write: hand-outs not yet reflected in
/// a report, and outlier ejection. Indexed like the candidate slice.
pub trait Live {
    /// Clients handed this gateway since its last load report.
    fn pending(&self, index: usize) -> u64;
    /// Currently ejected after client failure reports.
    fn ejected(&self, index: usize) -> bool;
}

/// One Route question, already validated.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// Drives the sticky first place.
    pub client_id: &'a str,
    /// Preferred region (from the request or the CIDR table); empty = none.
    pub region: &'a str,
    /// Preferred zone; empty = none.
    pub zone: &'a str,
    /// Transport the client will use.
    pub protocol: Protocol,
    /// Answer length, 1..=16.
    pub limit: usize,
    /// Ids the client must not get back.
    pub exclude: &'a [String],
    /// Wall clock, Unix ms (slow start).
    pub now_ms: i64,
    /// Randomness for the two-choice places; anything, but fixed for a deterministic answer.
    pub seed: u64,
}

/// Locality of a candidate relative to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    /// Same zone (and region, when both are named).
    Zone = 0,
    /// Same region.
    Region = 1,
    /// Everything else.
    Other = 2,
}

impl Tier {
    /// Name used in explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Zone => "zone",
            Self::Region => "region",
            Self::Other => "other",
        }
    }
}

/// Why a gateway got its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Highest rendezvous score under the load bound.
    Sticky,
    /// Every gateway of the pool was over the bound; highest rendezvous score anyway.
    StickyOverBound,
    /// Won a two-random-choices draw on headroom.
    Headroom,
}

/// One place in the answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placed {
    /// Index into the candidate slice.
    pub index: usize,
    /// Its locality tier.
    pub tier: Tier,
    /// Higher is better; only the order matters.
    pub score: f64,
    /// Why it is here.
    pub reason: Reason,
}

/// Nothing routable, with counts that explain why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "no gateway routable: {registered} registered, {no_address} without a {protocol} address, \
     {not_serving} not serving, {ops_drained} drained by ops, {ejected} ejected, {excluded} excluded by the client"
)]
pub struct NoRoute {
    /// Gateways in the snapshot.
    pub registered: usize,
    /// Requested protocol.
    pub protocol: &'static str,
    /// Without an address for the protocol.
    pub no_address: usize,
    /// Draining or unhealthy.
    pub not_serving: usize,
    /// Ops drain present.
    pub ops_drained: usize,
    /// Ejected by failure reports.
    pub ejected: usize,
    /// In the request's `exclude`.
    pub excluded: usize,
}

/// Why a candidate cannot be handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filtered {
    /// No address for the requested protocol.
    NoAddress,
    /// Reported draining or unhealthy.
    NotServing,
    /// `P/drain/<id>` exists.
    OpsDrained,
    /// Ejected after client failure reports.
    Ejected,
    /// Named in the request's `exclude`.
    Excluded,
}

impl Filtered {
    /// Text for explanations.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NoAddress => "no address for the protocol",
            Self::NotServing => "not serving",
            Self::OpsDrained => "drained by ops",
            Self::Ejected => "ejected after client failures",
            Self::Excluded => "excluded by the client",
        }
    }
}

/// Why a candidate is filtered out before locality, or `None` when it is eligible.
pub fn filter(c: &Candidate, ejected: bool, req: &Request<'_>) -> Option<Filtered> {
    let has_addr = match req.protocol {
        Protocol::Tcp => c.has_tcp,
        Protocol::Ws => c.has_ws,
    };
    if !has_addr {
        Some(Filtered::NoAddress)
    } else if c.ops_drained {
        Some(Filtered::OpsDrained)
    } else if !c.serving {
        Some(Filtered::NotServing)
    } else if ejected {
        Some(Filtered::Ejected)
    } else if req.exclude.contains(&c.id) {
        Some(Filtered::Excluded)
    } else {
        None
    }
}

/// Locality tier of `c` for `req`.
pub fn tier(c: &Candidate, req: &Request<'_>) -> Tier {
    let region_ok = req.region.is_empty() || c.region == req.region;
    if !req.zone.is_empty() && c.zone == req.zone && region_ok {
        Tier::Zone
    } else if !req.region.is_empty() && c.region == req.region {
        Tier::Region
    } else {
        Tier::Other
    }
}

/// Slow-start share factor in `[slow_start_min, 1]` for a gateway started at `started_at_ms`.
pub fn slow_start_factor(p: &Params, started_at_ms: Option<i64>, now_ms: i64) -> f64 {
    let window = p.slow_start.as_millis() as f64;
    let Some(start) = started_at_ms else {
        return 1.0;
    };
    if window <= 0.0 {
        return 1.0;
    }
    let age = now_ms.saturating_sub(start).max(0) as f64;
    if age >= window {
        return 1.0;
    }
    (age / window)
        .powf(1.0 / p.slow_start_aggression)
        .max(p.slow_start_min)
}

/// Bits of a `scratch` entry above the candidate index that hold its [`Tier`].
const TIER_SHIFT: u32 = usize::BITS - 2;
/// The candidate-index part of a `scratch` entry.
const INDEX_MASK: usize = (1 << TIER_SHIFT) - 1;

/// The plain full scan: filters, tiers and sorts *every* candidate per call (O(n log n)).
/// It is the specification [`rank`] is tested against (same `out`, same [`NoRoute`]), and
/// what a client ranking a registry it just read would run once (the etcd-direct bench).
pub fn rank_reference(
    cands: &[Candidate],
    live: &impl Live,
    req: &Request<'_>,
    p: &Params,
    scratch: &mut Vec<usize>,
    out: &mut Vec<Placed>,
) -> Result<(), NoRoute> {
    out.clear();
    scratch.clear();
    let mut no_route = NoRoute {
        registered: cands.len(),
        protocol: req.protocol.as_str(),
        no_address: 0,
        not_serving: 0,
        ops_drained: 0,
        ejected: 0,
        excluded: 0,
    };
    // Per tier: gateways that count for the healthy share, healthy ones, and the load and
    // capacity of the eligible ones (for headroom).
    let mut total = [0usize; 3];
    let mut healthy = [0usize; 3];
    let mut load = [0u64; 3];
    let mut cap = [0u64; 3];
    for (i, c) in cands.iter().enumerate() {
        let ejected = live.ejected(i);
        let filtered = filter(c, ejected, req);
        match filtered {
            Some(Filtered::NoAddress) => {
                no_route.no_address += 1;
                continue;
            }
            Some(Filtered::OpsDrained) => {
                no_route.ops_drained += 1;
                continue;
            }
            // A deliberate drain says nothing about the tier's health.
            Some(Filtered::NotServing) if c.draining => {
                no_route.not_serving += 1;
                continue;
            }
            _ => {}
        }
        let t = tier(c, req) as usize;
        total[t] += 1;
        match filtered {
            None => {
                healthy[t] += 1;
                load[t] = load[t].saturating_add(c.connections.saturating_add(live.pending(i)));
                cap[t] = cap[t].saturating_add(c.capacity);
                // The tier rides in the top bits so sorting into pools compares integers,
                // not region/zone strings (the string compares dominated Route at 1000+
                // gateways).
                scratch.push(i | (t << TIER_SHIFT));
            }
            Some(Filtered::Excluded) => {
                // The client's own exclusion says nothing about the tier's health either.
                healthy[t] += 1;
                no_route.excluded += 1;
            }
            Some(Filtered::Ejected) => no_route.ejected += 1,
            Some(_) => no_route.not_serving += 1,
        }
    }
    if scratch.is_empty() {
        return Err(no_route);
    }
    // Pools: a tier that is mostly down or full merges into the next one (spill).
    let mut pool_of = [0u8; 3];
    let mut pool = 0u8;
    for t in 0..3 {
        pool_of[t] = pool;
        let share_ok = total[t] > 0 && healthy[t] as f64 >= p.panic_threshold * total[t] as f64;
        let headroom_ok = cap[t] > 0
            && (cap[t].saturating_sub(load[t])) as f64 >= p.min_tier_headroom * cap[t] as f64;
        if share_ok && headroom_ok {
            pool += 1;
        }
    }
    let pool_key = |e: usize| pool_of[e >> TIER_SHIFT];
    scratch.sort_unstable_by_key(|&e| (pool_key(e), e & INDEX_MASK));

    let client_hash = stable_hash(req.client_id.as_bytes());
    let mut rng = SplitMix(req.seed ^ client_hash);
    let limit = req.limit.max(1);
    let mut start = 0;
    while start < scratch.len() && out.len() < limit {
        let this_pool = pool_key(scratch[start]);
        let mut end = start;
        while end < scratch.len() && pool_key(scratch[end]) == this_pool {
            end += 1;
        }
        let seg = &mut scratch[start..end];
        for e in seg.iter_mut() {
            *e &= INDEX_MASK;
        }
        let mut a = 0;
        if out.is_empty() {
            let (pos, reason) = first_place(cands, live, req, p, client_hash, seg);
            seg.swap(0, pos);
            let i = seg[0];
            out.push(Placed {
                index: i,
                tier: tier(&cands[i], req),
                score: 0.0,
                reason,
            });
            a = 1;
        }
        while a < seg.len() && out.len() < limit {
            let rest = seg.len() - a;
            let pick = if rest == 1 {
                a
            } else {
                let x = a + (rng.next() % rest as u64) as usize;
                let mut y = a + (rng.next() % (rest as u64 - 1)) as usize;
                if y >= x {
                    y += 1;
                }
                let hx = headroom_score(cands, live, req, p, seg[x]);
                let hy = headroom_score(cands, live, req, p, seg[y]);
                if hy > hx || (hy == hx && seg[y] < seg[x]) {
                    y
                } else {
                    x
                }
            };
            seg.swap(a, pick);
            let i = seg[a];
            out.push(Placed {
                index: i,
                tier: tier(&cands[i], req),
                score: 0.0,
                reason: Reason::Headroom,
            });
            a += 1;
        }
        start = end;
    }
    let n = out.len();
    for (rank, placed) in out.iter_mut().enumerate() {
        placed.score = (n - rank) as f64;
    }
    Ok(())
}

/// Candidate indices grouped by locality, built once per candidate slice (the router builds
/// one per view) so a Route visits only the pools it needs: the request's zone, then its
/// region, and the rest only when those spill or run short. Regions and zones become
/// integer ids here, so a Route compares no locality strings per candidate.
///
/// It depends only on the candidates' ids, regions and zones: everything else (load,
/// state, addresses, capacity, weight) is read from the slice on every call, so a caller
/// may update those in place and keep the index.
#[derive(Clone, Default)]
pub struct Index {
    /// Per candidate: `(region id, zone id)`.
    locality: Vec<(u32, u32)>,
    /// Distinct regions, sorted; a region's id is its position.
    regions: Vec<String>,
    /// Distinct zones (across regions), sorted; a zone's id is its position.
    zones: Vec<String>,
    /// Candidate indices per region id, ascending.
    by_region: Vec<Vec<u32>>,
    /// Candidate indices per zone id (any region), ascending.
    by_zone: Vec<Vec<u32>>,
    /// Candidate indices per `(region id, zone id)`, sorted by key, each ascending.
    by_group: Vec<((u32, u32), Vec<u32>)>,
    /// Candidate indices ordered by id, to resolve `exclude` without a scan.
    by_id: Vec<u32>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("candidates", &self.locality.len())
            .field("regions", &self.regions.len())
            .field("zones", &self.zones.len())
            .finish_non_exhaustive()
    }
}

impl Index {
    /// Indexes `cands` (at most `u32::MAX` of them).
    pub fn new(cands: &[Candidate]) -> Self {
        assert!(u32::try_from(cands.len()).is_ok(), "too many candidates");
        // Few distinct names among many candidates: a set, not a sort of every name.
        let names = |field: fn(&Candidate) -> &str| {
            let set: std::collections::BTreeSet<&str> = cands.iter().map(field).collect();
            set.into_iter().map(str::to_owned).collect::<Vec<_>>()
        };
        let regions = names(|c| &c.region);
        let zones = names(|c| &c.zone);
        let id_of = |names: &[String], s: &str| {
            names
                .binary_search_by(|n| n.as_str().cmp(s))
                .expect("interned above") as u32
        };
        let mut by_region = vec![Vec::new(); regions.len()];
        let mut by_zone = vec![Vec::new(); zones.len()];
        let mut groups: std::collections::BTreeMap<(u32, u32), Vec<u32>> = Default::default();
        let mut locality = Vec::with_capacity(cands.len());
        for (i, c) in cands.iter().enumerate() {
            let (r, z) = (id_of(&regions, &c.region), id_of(&zones, &c.zone));
            locality.push((r, z));
            by_region[r as usize].push(i as u32);
            by_zone[z as usize].push(i as u32);
            groups.entry((r, z)).or_default().push(i as u32);
        }
        let mut by_id: Vec<u32> = (0..cands.len() as u32).collect();
        // A view is already sorted by id; only other callers pay for the sort.
        if !cands.windows(2).all(|w| w[0].id <= w[1].id) {
            by_id.sort_by(|&a, &b| cands[a as usize].id.cmp(&cands[b as usize].id));
        }
        Self {
            locality,
            regions,
            zones,
            by_region,
            by_zone,
            by_group: groups.into_iter().collect(),
            by_id,
        }
    }

    /// Number of candidates indexed.
    pub fn len(&self) -> usize {
        self.locality.len()
    }

    /// True when built from no candidates.
    pub fn is_empty(&self) -> bool {
        self.locality.is_empty()
    }

    fn group(&self, region: u32, zone: u32) -> &[u32] {
        self.by_group
            .binary_search_by_key(&(region, zone), |(k, _)| *k)
            .map_or(&[], |g| &self.by_group[g].1)
    }

    /// Pushes the indices of every candidate named `id`.
    fn find_id(&self, cands: &[Candidate], id: &str, into: &mut Vec<u32>) {
        let start = self
            .by_id
            .partition_point(|&i| cands[i as usize].id.as_str() < id);
        for &i in &self.by_id[start..] {
            if cands[i as usize].id != id {
                break;
            }
            into.push(i);
        }
    }
}

/// Buffers [`rank`] reuses between calls, so a Route allocates nothing once they have grown.
#[derive(Debug, Default)]
pub struct Scratch {
    /// Eligible candidates per tier, ascending by index.
    tiers: [Vec<Entry>; 3],
    /// The pool being ranked.
    seg: Vec<Entry>,
    /// Indices named in the request's `exclude`, sorted.
    excluded: Vec<u32>,
}

impl Scratch {
    /// Empty buffers.
    pub const fn new() -> Self {
        Self {
            tiers: [Vec::new(), Vec::new(), Vec::new()],
            seg: Vec::new(),
            excluded: Vec::new(),
        }
    }
}

/// An eligible candidate and the load it was seen with (read once per call, since reading
/// the live counters chases pointers).
#[derive(Debug, Clone, Copy)]
struct Entry {
    index: u32,
    load: u64,
}

/// The request's locality as index ids. A name the index does not know matches no
/// candidate, exactly as a string compare would.
#[derive(Debug, Clone, Copy)]
struct Near {
    region_named: bool,
    zone_named: bool,
    region: Option<u32>,
    zone: Option<u32>,
}

impl Near {
    fn new(index: &Index, req: &Request<'_>) -> Self {
        let find = |names: &[String], s: &str| {
            names
                .binary_search_by(|n| n.as_str().cmp(s))
                .ok()
                .map(|i| i as u32)
        };
        Self {
            region_named: !req.region.is_empty(),
            zone_named: !req.zone.is_empty(),
            region: find(&index.regions, req.region).filter(|_| !req.region.is_empty()),
            zone: find(&index.zones, req.zone).filter(|_| !req.zone.is_empty()),
        }
    }

    /// [`tier`] on ids.
    fn tier(&self, (region, zone): (u32, u32)) -> Tier {
        let region_ok = !self.region_named || self.region == Some(region);
        if self.zone_named && self.zone == Some(zone) && region_ok {
            Tier::Zone
        } else if self.region_named && self.region == Some(region) {
            Tier::Region
        } else {
            Tier::Other
        }
    }
}

/// What the spill rules need of one tier (same counting as [`rank_reference`]).
#[derive(Debug, Clone, Copy, Default)]
struct TierStats {
    /// Gateways that count for the healthy share.
    total: usize,
    healthy: usize,
    /// Load and capacity of the eligible ones.
    load: u64,
    cap: u64,
}

impl TierStats {
    /// Healthy and roomy enough to keep its clients (else it spills into the next tier).
    fn keeps(&self, p: &Params) -> bool {
        let share_ok =
            self.total > 0 && self.healthy as f64 >= p.panic_threshold * self.total as f64;
        let headroom_ok = self.cap > 0
            && (self.cap.saturating_sub(self.load)) as f64 >= p.min_tier_headroom * self.cap as f64;
        share_ok && headroom_ok
    }
}

/// Everything a tier scan needs besides the list it walks.
struct Ctx<'a, L> {
    cands: &'a [Candidate],
    index: &'a Index,
    live: &'a L,
    req: &'a Request<'a>,
    near: Near,
    excluded: &'a [u32],
}

impl<L: Live> Ctx<'_, L> {
    /// The candidates of tier `want` among `list` (ascending), filtered like
    /// [`rank_reference`] does, into `out`; returns the tier's counts.
    fn scan(&self, want: Tier, list: impl Iterator<Item = u32>, out: &mut Vec<Entry>) -> TierStats {
        out.clear();
        let mut st = TierStats::default();
        for i in list {
            let iu = i as usize;
            if self.near.tier(self.index.locality[iu]) != want {
                continue;
            }
            let c = &self.cands[iu];
            let has_addr = match self.req.protocol {
                Protocol::Tcp => c.has_tcp,
                Protocol::Ws => c.has_ws,
            };
            // No address, an ops drain or a deliberate drain: not part of the tier at all.
            if !has_addr || c.ops_drained || (!c.serving && c.draining) {
                continue;
            }
            st.total += 1;
            if !c.serving || self.live.ejected(iu) {
                continue;
            }
            st.healthy += 1;
            if !self.excluded.is_empty() && self.excluded.binary_search(&i).is_ok() {
                continue;
            }
            let load = c.connections.saturating_add(self.live.pending(iu));
            st.load = st.load.saturating_add(load);
            st.cap = st.cap.saturating_add(c.capacity);
            out.push(Entry { index: i, load });
        }
        st
    }

    /// Scans tier `t` over the narrowest list that holds it.
    fn scan_tier(&self, t: usize, out: &mut Vec<Entry>) -> TierStats {
        let (near, index) = (self.near, self.index);
        match t {
            0 => {
                let list: &[u32] =
                    match (near.zone_named, near.zone, near.region_named, near.region) {
                        (true, Some(z), true, Some(r)) => index.group(r, z),
                        (true, Some(z), false, _) => &index.by_zone[z as usize],
                        _ => &[],
                    };
                self.scan(Tier::Zone, list.iter().copied(), out)
            }
            1 => {
                let list: &[u32] = match near.region {
                    Some(r) => &index.by_region[r as usize],
                    None => &[],
                };
                self.scan(Tier::Region, list.iter().copied(), out)
            }
            _ => self.scan(Tier::Other, 0..index.len() as u32, out),
        }
    }
}

/// Ranks `cands` for `req` into `out` (cleared first). `index` must have been built from
/// the same candidate ids and localities ([`Index::new`]); `scratch` is reused between
/// calls. Gives exactly the answer of [`rank_reference`], but visits only the tiers it
/// needs: the request's zone, its region when the zone spills or has fewer eligible
/// gateways than `limit`, everything else only when both do.
pub fn rank(
    cands: &[Candidate],
    index: &Index,
    live: &impl Live,
    req: &Request<'_>,
    p: &Params,
    scratch: &mut Scratch,
    out: &mut Vec<Placed>,
) -> Result<(), NoRoute> {
    assert_eq!(
        index.len(),
        cands.len(),
        "ranking index built for another candidate slice"
    );
    out.clear();
    let Scratch {
        tiers,
        seg,
        excluded,
    } = scratch;
    excluded.clear();
    for id in req.exclude {
        index.find_id(cands, id, excluded);
    }
    excluded.sort_unstable();
    let ctx = Ctx {
        cands,
        index,
        live,
        req,
        near: Near::new(index, req),
        excluded,
    };
    let limit = req.limit.max(1);
    let mut stats = [TierStats::default(); 3];
    let mut scanned = [false; 3];
    stats[0] = ctx.scan_tier(0, &mut tiers[0]);
    scanned[0] = true;
    let keeps0 = stats[0].keeps(p);
    // Pools as in `rank_reference`: a tier that does not keep its clients merges into the
    // next one. The last tier's own state never matters.
    let mut pool_of = [0u8, 1, 2];
    if !(keeps0 && tiers[0].len() >= limit) {
        stats[1] = ctx.scan_tier(1, &mut tiers[1]);
        scanned[1] = true;
        let keeps1 = stats[1].keeps(p);
        pool_of = [0, u8::from(keeps0), u8::from(keeps0) + u8::from(keeps1)];
    }
    // Otherwise the zone alone fills the answer and the other pools are never reached.

    let client_hash = stable_hash(req.client_id.as_bytes());
    let mut rng = SplitMix(req.seed ^ client_hash);
    let mut t = 0;
    while t < 3 && out.len() < limit {
        let mut end = t + 1;
        while end < 3 && pool_of[end] == pool_of[t] {
            end += 1;
        }
        let (mut pool_load, mut pool_cap) = (0u64, 0u64);
        for u in t..end {
            if !scanned[u] {
                stats[u] = ctx.scan_tier(u, &mut tiers[u]);
                scanned[u] = true;
            }
            pool_load = pool_load.saturating_add(stats[u].load);
            pool_cap = pool_cap.saturating_add(stats[u].cap);
        }
        // The pool in ascending candidate order, as the reference's sort leaves it.
        seg.clear();
        seg.extend_from_slice(&tiers[t]);
        for u in t + 1..end {
            let (lo, hi) = tiers.split_at_mut(u);
            let spare = &mut lo[t];
            merge_by_index(seg, &hi[0], spare);
            std::mem::swap(seg, spare);
        }
        let mut a = 0;
        if !seg.is_empty() && out.is_empty() {
            let (pos, reason) =
                first_place_indexed(cands, req, p, client_hash, seg, pool_load, pool_cap);
            seg.swap(0, pos);
            let i = seg[0].index as usize;
            out.push(Placed {
                index: i,
                tier: ctx.near.tier(index.locality[i]),
                score: 0.0,
                reason,
            });
            a = 1;
        }
        // Deliberately the same two-choice loop as `rank_reference` (the oracle the proptest
        // compares against): change both or neither.
        while a < seg.len() && out.len() < limit {
            let rest = seg.len() - a;
            let pick = if rest == 1 {
                a
            } else {
                let x = a + (rng.next() % rest as u64) as usize;
                let mut y = a + (rng.next() % (rest as u64 - 1)) as usize;
                if y >= x {
                    y += 1;
                }
                let hx = headroom_of(&cands[seg[x].index as usize], seg[x].load, req, p);
                let hy = headroom_of(&cands[seg[y].index as usize], seg[y].load, req, p);
                if hy > hx || (hy == hx && seg[y].index < seg[x].index) {
                    y
                } else {
                    x
                }
            };
            seg.swap(a, pick);
            let i = seg[a].index as usize;
            out.push(Placed {
                index: i,
                tier: ctx.near.tier(index.locality[i]),
                score: 0.0,
                reason: Reason::Headroom,
            });
            a += 1;
        }
        t = end;
    }
    if out.is_empty() {
        // Nothing eligible in any tier (every tier was scanned): count why, over everything.
        return Err(no_route(cands, live, req));
    }
    let n = out.len();
    for (rank, placed) in out.iter_mut().enumerate() {
        placed.score = (n - rank) as f64;
    }
    Ok(())
}

/// Merges two index-ascending runs into `out` (cleared first).
fn merge_by_index(a: &[Entry], b: &[Entry], out: &mut Vec<Entry>) {
    out.clear();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        if a[i].index <= b[j].index {
            out.push(a[i]);
            i += 1;
        } else {
            out.push(b[j]);
            j += 1;
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
}

/// The [`NoRoute`] counts of [`rank_reference`], for when nothing is eligible.
fn no_route(cands: &[Candidate], live: &impl Live, req: &Request<'_>) -> NoRoute {
    let mut n = NoRoute {
        registered: cands.len(),
        protocol: req.protocol.as_str(),
        no_address: 0,
        not_serving: 0,
        ops_drained: 0,
        ejected: 0,
        excluded: 0,
    };
    for (i, c) in cands.iter().enumerate() {
        match filter(c, live.ejected(i), req) {
            None => {}
            Some(Filtered::NoAddress) => n.no_address += 1,
            Some(Filtered::OpsDrained) => n.ops_drained += 1,
            Some(Filtered::NotServing) => n.not_serving += 1,
            Some(Filtered::Ejected) => n.ejected += 1,
            Some(Filtered::Excluded) => n.excluded += 1,
        }
    }
    n
}

/// [`first_place`] over entries whose load was read during the scan, with the pool's load
/// and capacity already summed.
fn first_place_indexed(
    cands: &[Candidate],
    req: &Request<'_>,
    p: &Params,
    client_hash: u64,
    seg: &[Entry],
    pool_load: u64,
    pool_cap: u64,
) -> (usize, Reason) {
    let mut best: Option<(usize, f64)> = None;
    let mut best_any: (usize, f64) = (0, f64::NEG_INFINITY);
    for (pos, e) in seg.iter().enumerate() {
        let c = &cands[e.index as usize];
        let w = c.capacity as f64
            * f64::from(c.weight)
            * slow_start_factor(p, c.started_at_ms, req.now_ms);
        let u = hrw_uniform(client_hash, c.id_hash);
        // `-ln u >= 1 - u`, so `w / (1 - u)` bounds the score from above without the
        // logarithm (the costly part). A gateway whose bound cannot beat the best under
        // the load bound (and so not the best overall either) cannot change the answer;
        // the margin covers rounding, so the skip never changes a comparison.
        if let Some((_, b)) = best
            && w / (1.0 - u) * (1.0 + 1e-9) < b
        {
            continue;
        }
        let s = w / -u.ln();
        if s > best_any.1 {
            best_any = (pos, s);
        }
        // Same test as `first_place`, cheaper half first.
        if best.is_none_or(|(_, b)| s > b)
            && within_bound(p.bound, e.load, c.capacity, pool_load, pool_cap)
        {
            best = Some((pos, s));
        }
    }
    match best {
        Some((pos, _)) => (pos, Reason::Sticky),
        None => (best_any.0, Reason::StickyOverBound),
    }
}

/// [`headroom_score`] with the load read during the scan.
fn headroom_of(c: &Candidate, load: u64, req: &Request<'_>, p: &Params) -> f64 {
    let headroom = 1.0 - load as f64 / c.capacity as f64;
    if headroom <= 0.0 {
        return headroom;
    }
    headroom * slow_start_factor(p, c.started_at_ms, req.now_ms) * f64::from(c.weight) / 100.0
}

/// Rendezvous choice inside one pool, skipping gateways over the load bound. Returns the
/// position in `seg`.
fn first_place(
    cands: &[Candidate],
    live: &impl Live,
    req: &Request<'_>,
    p: &Params,
    client_hash: u64,
    seg: &[usize],
) -> (usize, Reason) {
    let (mut pool_load, mut pool_cap) = (0u64, 0u64);
    for &i in seg {
        pool_load = pool_load.saturating_add(cands[i].connections.saturating_add(live.pending(i)));
        pool_cap = pool_cap.saturating_add(cands[i].capacity);
    }
    let mut best: Option<(usize, f64)> = None;
    let mut best_any: (usize, f64) = (0, f64::NEG_INFINITY);
    for (pos, &i) in seg.iter().enumerate() {
        let c = &cands[i];
        let w = c.capacity as f64
            * f64::from(c.weight)
            * slow_start_factor(p, c.started_at_ms, req.now_ms);
        let s = hrw_score(client_hash, c.id_hash, w);
        if s > best_any.1 {
            best_any = (pos, s);
        }
        let this_load = c.connections.saturating_add(live.pending(i));
        if within_bound(p.bound, this_load, c.capacity, pool_load, pool_cap)
            && best.is_none_or(|(_, b)| s > b)
        {
            best = Some((pos, s));
        }
    }
    match best {
        Some((pos, _)) => (pos, Reason::Sticky),
        None => (best_any.0, Reason::StickyOverBound),
    }
}

/// Consistent hashing with bounded loads, weighted by capacity: one more client on this
/// gateway must keep it within `ceil(c × (pool load + 1) × capacity / pool capacity)`.
pub fn within_bound(c: f64, load: u64, capacity: u64, pool_load: u64, pool_cap: u64) -> bool {
    if pool_cap == 0 {
        return true;
    }
    let allowed =
        (c * pool_load.saturating_add(1) as f64 * capacity as f64 / pool_cap as f64).ceil();
    load.saturating_add(1) as f64 <= allowed
}

/// Free share of capacity, scaled down during slow start (and by weight) so a cold or
/// light gateway wins fewer draws.
fn headroom_score(
    cands: &[Candidate],
    live: &impl Live,
    req: &Request<'_>,
    p: &Params,
    i: usize,
) -> f64 {
    let c = &cands[i];
    let load = c.connections.saturating_add(live.pending(i)) as f64;
    let headroom = 1.0 - load / c.capacity as f64;
    if headroom <= 0.0 {
        return headroom;
    }
    headroom * slow_start_factor(p, c.started_at_ms, req.now_ms) * f64::from(c.weight) / 100.0
}

/// Weighted rendezvous score (the logarithmic method): each gateway wins a client with
/// probability proportional to `weight`, and removing one gateway moves only its clients.
pub fn hrw_score(client_hash: u64, id_hash: u64, weight: f64) -> f64 {
    weight / -hrw_uniform(client_hash, id_hash).ln()
}

/// The pair's uniform draw in (0, 1): 53 random bits, never 0 or 1.
fn hrw_uniform(client_hash: u64, id_hash: u64) -> f64 {
    let h = mix64(client_hash ^ mix64(id_hash));
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// FNV-1a followed by a SplitMix64 finaliser: stable across platforms, Rust releases and
/// router replicas (std's `DefaultHasher` promises none of that).
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix64(h)
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Tiny deterministic generator for the two-choice draws.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use switchyard_registry::{MAX_CAPACITY, MAX_CONNECTIONS};

    #[derive(Debug)]
    struct Fixed {
        pending: Vec<u64>,
        ejected: Vec<bool>,
    }

    impl Live for Fixed {
        fn pending(&self, i: usize) -> u64 {
            self.pending[i]
        }
        fn ejected(&self, i: usize) -> bool {
            self.ejected[i]
        }
    }

    fn none(n: usize) -> Fixed {
        Fixed {
            pending: vec![0; n],
            ejected: vec![false; n],
        }
    }

    fn gw(id: &str, region: &str, zone: &str, capacity: u64) -> Candidate {
        Candidate {
            id: id.into(),
            id_hash: stable_hash(id.as_bytes()),
            region: region.into(),
            zone: zone.into(),
            has_tcp: true,
            has_ws: false,
            capacity,
            weight: 100,
            connections: 0,
            serving: true,
            draining: false,
            ops_drained: false,
            started_at_ms: None,
        }
    }

    fn req<'a>(client: &'a str, exclude: &'a [String]) -> Request<'a> {
        Request {
            client_id: client,
            region: "",
            zone: "",
            protocol: Protocol::Tcp,
            limit: 3,
            exclude,
            now_ms: 1_000_000,
            seed: 7,
        }
    }

    fn ids(cands: &[Candidate], out: &[Placed]) -> Vec<String> {
        out.iter().map(|p| cands[p.index].id.clone()).collect()
    }

    fn run(cands: &[Candidate], live: &Fixed, r: &Request<'_>) -> Result<Vec<Placed>, NoRoute> {
        run_with(cands, live, r, &Params::default())
    }

    /// The indexed rank, checked against the reference on every call the tests make.
    fn run_with(
        cands: &[Candidate],
        live: &Fixed,
        r: &Request<'_>,
        p: &Params,
    ) -> Result<Vec<Placed>, NoRoute> {
        let mut out = Vec::new();
        let got = rank(
            cands,
            &Index::new(cands),
            live,
            r,
            p,
            &mut Scratch::new(),
            &mut out,
        )
        .map(|()| out);
        assert_eq!(got, reference(cands, live, r, p));
        got
    }

    fn reference(
        cands: &[Candidate],
        live: &Fixed,
        r: &Request<'_>,
        p: &Params,
    ) -> Result<Vec<Placed>, NoRoute> {
        let mut out = Vec::new();
        rank_reference(cands, live, r, p, &mut Vec::new(), &mut out).map(|()| out)
    }

    #[test]
    fn stable_hash_is_pinned() {
        // Replicas and releases must agree: these values may never change.
        // (Values computed by an independent implementation of FNV-1a + SplitMix64.)
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        assert_eq!(stable_hash(b"client-1"), 0x38b3_fd24_3825_1cb2);
        assert_eq!(stable_hash(b"gw-1"), 0xc895_8ab6_15f1_6fb4);
    }

    #[test]
    fn filters_every_kind_of_unroutable_gateway() {
        let mut c = vec![
            gw("a", "", "", 10),
            gw("b", "", "", 10),
            gw("c", "", "", 10),
            gw("d", "", "", 10),
            gw("e", "", "", 10),
            gw("f", "", "", 10),
        ];
        c[0].serving = false;
        c[1].ops_drained = true;
        c[2].has_tcp = false;
        c[3].serving = false;
        c[3].draining = true;
        let mut live = none(6);
        live.ejected[4] = true;
        let ex = vec!["f".to_string()];
        let err = run(&c, &live, &req("u", &ex)).unwrap_err();
        assert_eq!(
            (
                err.not_serving,
                err.ops_drained,
                err.no_address,
                err.ejected,
                err.excluded
            ),
            (2, 1, 1, 1, 1)
        );
        assert!(err.to_string().contains("6 registered"), "{err}");
        let out = run(&c, &live, &req("u", &[])).unwrap();
        assert_eq!(ids(&c, &out), vec!["f"]);
    }

    #[test]
    fn zone_then_region_then_rest() {
        let c = vec![
            gw("other", "eu", "x", 100),
            gw("region", "cn", "b", 100),
            gw("zone", "cn", "a", 100),
        ];
        let mut r = req("u", &[]);
        r.region = "cn";
        r.zone = "a";
        let out = run(&c, &none(3), &r).unwrap();
        assert_eq!(ids(&c, &out), vec!["zone", "region", "other"]);
        assert_eq!(
            out.iter().map(|p| p.tier).collect::<Vec<_>>(),
            vec![Tier::Zone, Tier::Region, Tier::Other]
        );
        assert!(out[0].score > out[1].score && out[1].score > out[2].score);
    }

    #[test]
    fn mostly_dead_zone_spills_into_region() {
        // Zone a: 1 of 3 healthy (below 50 %): its survivor competes with the region.
        let mut c = vec![
            gw("a1", "cn", "a", 100),
            gw("a2", "cn", "a", 100),
            gw("a3", "cn", "a", 100),
            gw("b1", "cn", "b", 100),
            gw("b2", "cn", "b", 100),
        ];
        c[0].serving = false;
        c[1].serving = false;
        let mut firsts = std::collections::HashMap::new();
        for n in 0..300 {
            let client = format!("c{n}");
            let mut r = req(&client, &[]);
            r.region = "cn";
            r.zone = "a";
            let out = run(&c, &none(5), &r).unwrap();
            *firsts.entry(c[out[0].index].id.clone()).or_insert(0) += 1;
        }
        assert!(firsts.get("b1").copied().unwrap_or(0) > 50, "{firsts:?}");
        assert!(firsts.get("a3").copied().unwrap_or(0) > 50, "{firsts:?}");
        // With 2 of 3 healthy the zone keeps its clients.
        c[1].serving = true;
        for n in 0..100 {
            let client = format!("c{n}");
            let mut r = req(&client, &[]);
            r.region = "cn";
            r.zone = "a";
            let out = run(&c, &none(5), &r).unwrap();
            assert_eq!(out[0].tier, Tier::Zone);
        }
    }

    #[test]
    fn full_zone_spills() {
        let mut c = vec![gw("a1", "cn", "a", 100), gw("b1", "cn", "b", 100)];
        c[0].connections = 99;
        let mut firsts = std::collections::HashSet::new();
        for n in 0..50 {
            let client = format!("c{n}");
            let mut r = req(&client, &[]);
            r.region = "cn";
            r.zone = "a";
            let out = run(&c, &none(2), &r).unwrap();
            firsts.insert(c[out[0].index].id.clone());
        }
        // Spilled into one pool, where a1 is over the load bound.
        assert_eq!(
            firsts.into_iter().collect::<Vec<_>>(),
            vec!["b1".to_string()]
        );
    }

    #[test]
    fn slow_start_ramps() {
        let p = Params::default();
        assert_eq!(slow_start_factor(&p, None, 5), 1.0);
        assert_eq!(slow_start_factor(&p, Some(0), 0), 0.1);
        assert!((slow_start_factor(&p, Some(0), 15_000) - 0.5).abs() < 1e-9);
        assert_eq!(slow_start_factor(&p, Some(0), 60_000), 1.0);
        // A brand-new gateway gets far fewer first places than its capacity share.
        let mut c = vec![gw("old", "", "", 100), gw("new", "", "", 100)];
        c[1].started_at_ms = Some(1_000_000);
        let new_wins = (0..1000)
            .filter(|n| {
                let client = format!("c{n}");
                run(&c, &none(2), &req(&client, &[])).unwrap()[0].index == 1
            })
            .count();
        assert!(new_wins < 200, "{new_wins}");
    }

    #[test]
    fn indexed_rank_equals_the_reference_at_scale() {
        // 600 gateways over 3 regions × 2 zones; zone r0/a mostly down, r1/a full, so the
        // spill paths with large merged pools are taken too.
        let mut c: Vec<Candidate> = (0..600)
            .map(|n| {
                let (r, z) = (n % 3, (n / 3) % 2);
                let mut g = gw(&format!("g{n:04}"), &format!("r{r}"), ["a", "b"][z], 100);
                g.connections = (n as u64 * 37) % 90;
                if r == 0 && z == 0 && n % 5 != 0 {
                    g.serving = false;
                }
                if r == 1 && z == 0 {
                    g.connections = 99;
                }
                g
            })
            .collect();
        c[7].started_at_ms = Some(999_000);
        let mut live = none(c.len());
        live.pending[4] = 30;
        live.ejected[11] = true;
        let ex = vec!["g0002".to_string(), "g0100".to_string()];
        for n in 0..300 {
            let client = format!("c{n}");
            let mut r = req(&client, if n % 7 == 0 { &ex } else { &[] });
            r.region = ["r0", "r1", "r2", ""][n % 4];
            r.zone = ["a", "b", ""][n % 3];
            r.limit = 1 + n % 16;
            r.seed = n as u64;
            run(&c, &live, &r).unwrap();
        }
    }

    #[test]
    fn bound_formula() {
        assert!(within_bound(1.25, 0, 10, 0, 100));
        assert!(!within_bound(1.25, 20, 10, 100, 100));
        assert!(within_bound(1.25, 12, 10, 100, 100));
    }

    fn arb_cands() -> impl Strategy<Value = (Vec<Candidate>, Vec<bool>, Vec<u64>)> {
        proptest::collection::vec(
            (
                0u8..3,
                0u8..3,
                1u64..1000,
                0u64..1200,
                any::<bool>(),
                any::<bool>(),
                any::<bool>(),
                0u64..50,
                1u32..300,
            ),
            1..20,
        )
        .prop_map(|v| {
            let mut cands = Vec::new();
            let mut ej = Vec::new();
            let mut pend = Vec::new();
            for (n, (r, z, cap, conns, serving, drained, ejected, pending, weight)) in
                v.into_iter().enumerate()
            {
                let mut c = gw(&format!("g{n}"), &format!("r{r}"), &format!("z{z}"), cap);
                c.connections = conns;
                c.serving = serving || n == 0;
                c.ops_drained = drained && n != 0;
                c.weight = weight;
                cands.push(c);
                ej.push(ejected && n != 0);
                pend.push(pending);
            }
            (cands, ej, pend)
        })
    }

    /// Candidates over a few regions and zones (zone names shared across regions, empty
    /// names too), every filter reason, loads around capacity, some in slow start; with
    /// live state. Ids are unique, as in a view.
    fn arb_world() -> impl Strategy<Value = (Vec<Candidate>, Fixed)> {
        let one = (
            (0u8..4, 0u8..4, any::<bool>(), any::<bool>()),
            (any::<bool>(), any::<bool>(), any::<bool>(), 0u8..8),
            (1u64..500, 0u64..600, 0u32..300, 0u64..40),
            proptest::option::of(0i64..60_000),
        );
        proptest::collection::vec(one, 0..48).prop_map(|v| {
            let names = ["", "r0", "r1", "r2"];
            let zones = ["", "z0", "z1", "z2"];
            let mut cands = Vec::new();
            let mut live = none(0);
            for (
                n,
                (
                    (r, z, tcp, ws),
                    (serving, draining, drained, ej),
                    (cap, conns, weight, pending),
                    age,
                ),
            ) in v.into_iter().enumerate()
            {
                let mut c = gw(
                    &format!("g{n:02}"),
                    names[r as usize],
                    zones[z as usize],
                    cap,
                );
                c.has_tcp = tcp || n % 3 != 0;
                c.has_ws = ws;
                // Mostly serving, so tiers are usually not empty.
                c.serving = serving || n % 4 != 0;
                c.draining = draining;
                c.ops_drained = drained && n % 5 == 0;
                c.connections = conns;
                c.weight = weight;
                c.started_at_ms = age.map(|a| 1_000_000 - a);
                cands.push(c);
                live.ejected.push(ej == 0);
                live.pending.push(pending);
            }
            // Not sorted by id on purpose sometimes: the index must not rely on it.
            if cands.len() % 2 == 1 {
                cands.reverse();
                live.ejected.reverse();
                live.pending.reverse();
            }
            (cands, live)
        })
    }

    proptest! {
        #[test]
        fn indexed_rank_equals_the_reference(
            (cands, live) in arb_world(),
            region in prop_oneof![Just(""), Just("r0"), Just("r1"), Just("r9")],
            zone in prop_oneof![Just(""), Just("z0"), Just("z1"), Just("z9")],
            ws: bool,
            limit in 1usize..17,
            seed: u64,
            client in "[a-z]{1,8}",
            exclude in proptest::collection::vec(0usize..60, 0..6),
            panic_threshold in 0.0f64..1.0,
            min_tier_headroom in 0.0f64..0.5,
            bound in 1.0f64..3.0,
        ) {
            // Excluded ids: existing ones, unknown ones and repeats.
            let exclude: Vec<String> = exclude.iter().map(|n| format!("g{n:02}")).collect();
            let p = Params { panic_threshold, min_tier_headroom, bound, ..Params::default() };
            let r = Request {
                client_id: &client,
                region,
                zone,
                protocol: if ws { Protocol::Ws } else { Protocol::Tcp },
                limit,
                exclude: &exclude,
                now_ms: 1_000_000,
                seed,
            };
            let want = reference(&cands, &live, &r, &p);
            let index = Index::new(&cands);
            // One scratch for several calls: nothing may leak from an earlier request.
            let mut scratch = Scratch::new();
            let mut out = Vec::new();
            let other = Request { region: "r1", zone: "", limit: 16, ..r };
            let _ = rank(&cands, &index, &live, &other, &p, &mut scratch, &mut out);
            for _ in 0..2 {
                let got = rank(&cands, &index, &live, &r, &p, &mut scratch, &mut out)
                    .map(|()| out.clone());
                prop_assert_eq!(&got, &want);
            }
        }

        #[test]
        fn extreme_capacities_and_loads_rank_without_overflow(
            gws in proptest::collection::vec(
                (
                    prop_oneof![Just(1u64), Just(MAX_CAPACITY), Just(u64::MAX), 1u64..],
                    prop_oneof![Just(0u64), Just(MAX_CONNECTIONS), Just(u64::MAX), any::<u64>()],
                    prop_oneof![Just(0u64), Just(u64::MAX), any::<u64>()],
                    0u8..3,
                ),
                1..12,
            ),
            limit in 1usize..17, seed: u64, client in "[a-z]{1,8}",
        ) {
            // What an agent may write (up to the decode bounds) and past it (a record
            // that skipped validation, a pending count that ran away): ranking must
            // neither panic nor disagree with its reference.
            let cands: Vec<Candidate> = gws
                .iter()
                .enumerate()
                .map(|(i, &(capacity, connections, _, r))| Candidate {
                    connections,
                    ..gw(&format!("g{i}"), &format!("r{r}"), "z0", capacity)
                })
                .collect();
            let live = Fixed {
                pending: gws.iter().map(|g| g.2).collect(),
                ejected: vec![false; gws.len()],
            };
            let mut r = req(&client, &[]);
            r.region = "r0";
            r.zone = "z0";
            r.limit = limit;
            r.seed = seed;
            let out = run(&cands, &live, &r).unwrap();
            prop_assert_eq!(out.len(), cands.len().min(limit));
        }

        #[test]
        fn records_at_the_decode_bounds_rank(
            n in 1usize..8, client in "[a-z]{1,8}",
        ) {
            let cands: Vec<Candidate> = (0..n)
                .map(|i| {
                    let json = format!(
                        r#"{{"id":"g{i}","addrs":{{"tcp":"127.0.0.1:7200"}},"capacity":{MAX_CAPACITY},"load":{{"connections":{MAX_CONNECTIONS}}}}}"#
                    );
                    let rec = switchyard_registry::GatewayRecord::from_json(json.as_bytes()).unwrap();
                    Candidate::from_record(&rec, false)
                })
                .collect();
            let live = Fixed { pending: vec![u64::MAX; n], ejected: vec![false; n] };
            let out = run(&cands, &live, &req(&client, &[])).unwrap();
            prop_assert_eq!(out.len(), n.min(3));
        }

        #[test]
        fn never_returns_a_filtered_gateway_and_respects_limit(
            (cands, ej, pend) in arb_cands(), limit in 1usize..17, seed: u64, client in "[a-z]{1,8}",
        ) {
            let live = Fixed { pending: pend, ejected: ej.clone() };
            let ex = vec!["g1".to_string()];
            let mut r = req(&client, &ex);
            r.limit = limit;
            r.seed = seed;
            r.region = "r1";
            r.zone = "z1";
            let out = run(&cands, &live, &r).unwrap_or_default();
            let eligible = (0..cands.len()).filter(|&i| filter(&cands[i], ej[i], &r).is_none()).count();
            prop_assert_eq!(out.len(), eligible.min(limit));
            let mut seen = std::collections::HashSet::new();
            for p in &out {
                prop_assert!(filter(&cands[p.index], ej[p.index], &r).is_none());
                prop_assert!(seen.insert(p.index));
            }
        }

        #[test]
        fn first_place_does_not_depend_on_the_seed(
            (cands, ej, pend) in arb_cands(), s1: u64, s2: u64, client in "[a-z]{1,8}",
        ) {
            let live = Fixed { pending: pend, ejected: ej };
            let mut r = req(&client, &[]);
            r.seed = s1;
            let a = run(&cands, &live, &r);
            r.seed = s2;
            let b = run(&cands, &live, &r);
            prop_assert_eq!(a.map(|o| o[0].index).ok(), b.map(|o| o[0].index).ok());
        }

        #[test]
        fn removing_another_gateway_keeps_the_first_place(
            n in 3usize..12, client in "[a-z]{1,8}", drop_pick: usize,
        ) {
            let cands: Vec<_> = (0..n).map(|i| gw(&format!("g{i}"), "", "", 1000)).collect();
            let first = run(&cands, &none(n), &req(&client, &[])).unwrap()[0].index;
            let drop_i = (0..n).filter(|&i| i != first).nth(drop_pick % (n - 1)).unwrap();
            let fewer: Vec<_> = cands.iter().enumerate().filter(|(i, _)| *i != drop_i).map(|(_, c)| c.clone()).collect();
            let again = run(&fewer, &none(n - 1), &req(&client, &[])).unwrap()[0].index;
            prop_assert_eq!(&fewer[again].id, &cands[first].id);
        }

        #[test]
        fn bounded_load_keeps_max_under_c_times_mean(
            caps in proptest::collection::vec(1u64..5, 2..8), clients in 200usize..600,
        ) {
            // Everyone counts its own hand-outs (one router): max utilisation stays within
            // c × mean plus one client's worth.
            let cands: Vec<_> = caps.iter().enumerate().map(|(i, &c)| gw(&format!("g{i}"), "", "", c * 100)).collect();
            let mut live = none(cands.len());
            for n in 0..clients {
                let client = format!("c{n}");
                let out = run(&cands, &live, &req(&client, &[])).unwrap();
                live.pending[out[0].index] += 1;
            }
            let total: u64 = live.pending.iter().sum();
            let cap: u64 = cands.iter().map(|c| c.capacity).sum();
            let mean = total as f64 / cap as f64;
            for (i, c) in cands.iter().enumerate() {
                let util = live.pending[i] as f64 / c.capacity as f64;
                prop_assert!(util <= 1.25 * mean + 1.0 / c.capacity as f64 + 1e-9,
                    "{} util {} mean {}", c.id, util, mean);
            }
        }
    }
}
