//! Synthetic registries for the drivers: gateway records spread over regions and zones,
//! and the same records as ranking candidates (what an etcd-direct client has to build).

use switchyard_registry::etcd_client::{Client, GetOptions};
use switchyard_registry::{Addrs, GatewayId, GatewayRecord, GatewayState, Load, Prefix};
use switchyard_router::ranking::{self, Candidate, Live};

/// `(region, zone)` of gateway `n`: 3 regions × 2 zones, round-robin.
pub fn locality(n: usize) -> (String, String) {
    let region = n % 3;
    let zone = (n / 3) % 2;
    (format!("r{region}"), format!("r{region}-z{zone}"))
}

/// A serving gateway record, id `gw-<n>`, with some reported load so ranking has work to do.
pub fn record(n: usize, capacity: u64) -> GatewayRecord {
    let (region, zone) = locality(n);
    GatewayRecord {
        id: format!("gw-{n:05}"),
        addrs: Addrs {
            tcp: Some(format!("127.0.0.1:{}", 20000 + n % 40000)),
            ws: None,
        },
        region,
        zone,
        capacity,
        weight: 100,
        state: GatewayState::Serving,
        load: Load {
            connections: (n as u64 * 7919) % (capacity / 2).max(1),
            cpu: 0.2,
        },
        version: "bench".into(),
        labels: Default::default(),
        started_at: None,
        updated_at: None,
    }
}

/// Writes `count` records under `prefix` (no lease), 64 puts in flight.
pub async fn put_records(client: &Client, prefix: &Prefix, count: usize) -> anyhow::Result<()> {
    use futures::StreamExt;
    let mut puts = futures::stream::iter(0..count)
        .map(|n| {
            let mut c = client.clone();
            let rec = record(n, 10_000);
            let key = prefix.gateway(&GatewayId::new(rec.id.clone()).expect("valid id"));
            async move { c.put(key, rec.to_json(), None).await }
        })
        .buffer_unordered(64);
    while let Some(r) = puts.next().await {
        r?;
    }
    Ok(())
}

/// The ranking input for a record, built like the router's view builder does.
pub fn candidate(rec: &GatewayRecord) -> Candidate {
    Candidate::from_record(rec, false)
}

/// What a team without a router does per login: read the whole prefix from etcd, decode
/// every record, rank on the client. Returns the first place's id.
pub async fn etcd_direct_route(
    client: &mut Client,
    prefix: &Prefix,
    client_id: &str,
    region: &str,
    zone: &str,
) -> anyhow::Result<String> {
    let resp = client
        .get(prefix.gateways(), Some(GetOptions::new().with_prefix()))
        .await?;
    let mut cands: Vec<Candidate> = Vec::with_capacity(resp.kvs().len());
    for kv in resp.kvs() {
        if let Ok(rec) = GatewayRecord::from_json(kv.value()) {
            cands.push(candidate(&rec));
        }
    }
    let req = ranking::Request {
        client_id,
        region,
        zone,
        protocol: ranking::Protocol::Tcp,
        limit: 3,
        exclude: &[],
        now_ms: 0,
        seed: 0,
    };
    let (mut scratch, mut out) = (Vec::new(), Vec::new());
    // The plain scan: for one call on a freshly read registry, building an index first
    // would only add work.
    ranking::rank_reference(
        &cands,
        &NoLive,
        &req,
        &ranking::Params::default(),
        &mut scratch,
        &mut out,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(cands[out[0].index].id.clone())
}

/// Nothing pending, nothing ejected: what a client ranking on its own knows.
#[derive(Debug, Clone, Copy)]
pub struct NoLive;

impl Live for NoLive {
    fn pending(&self, _: usize) -> u64 {
        0
    }
    fn ejected(&self, _: usize) -> bool {
        false
    }
}
