//! etcd upkeep while Switchyard runs on it (issue 18 item 4; the runbook is in
//! docs/operations.md, "etcd upkeep"): compaction past a router's watch, defragmentation,
//! a snapshot restored into a new cluster, and the NOSPACE alarm. Real etcd, real router
//! and gateway processes, a real client holding its link through each. etcdctl (Debian's
//! etcd-client) saves and restores snapshots, as an operator would.

use std::time::Duration;

use etcd_client::{AlarmAction, AlarmType, CompactionOptions, GetOptions};
use switchyard_client::{Client, Messages};
use switchyard_proto::v1::RouteRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::client_kit::{fast_client, wait_connected};
use switchyard_tests::router::http_get;
use switchyard_tests::{Cluster, CutProxy, EtcdCluster, GatewaySpec, eventually, init_tracing};

/// Generous on a loaded 2-core machine; every wait polls and returns as soon as it holds.
const LIMIT: Duration = Duration::from_secs(45);

fn gateways() -> [GatewaySpec; 2] {
    [
        GatewaySpec::new("gw-1", "r1", "z1"),
        GatewaySpec::new("gw-2", "r1", "z1"),
    ]
}

/// A record no agent holds (no lease): what the router lists tells which writes it saw.
fn ghost(id: &str) -> String {
    serde_json::json!({
        "id": id,
        "addrs": {"tcp": "127.0.0.1:9"},
        "region": "r1", "zone": "z9",
        "capacity": 10, "state": "serving",
        "load": {"connections": 0, "cpu": 0.0},
        "version": "0.0.0",
    })
    .to_string()
}

async fn put_ghost(cluster: &Cluster, id: &str) -> i64 {
    let mut kv = cluster.etcd.client().await;
    let key = format!("{}/gateways/{id}", cluster.prefix.as_str());
    let resp = kv.put(key, ghost(id), None).await.expect("put ghost");
    resp.header().expect("header").revision()
}

/// Ids the router at `url` lists (`None` when it does not answer).
async fn listed(url: &str) -> Option<Vec<String>> {
    let list = switchyard_tests::cluster::list(url).await?;
    Some(list.gateways.into_iter().map(|g| g.id).collect())
}

async fn wait_listed(url: &str, id: &str, present: bool, what: &str) {
    eventually(LIMIT, what, || async {
        let ids = listed(url).await?;
        (ids.iter().any(|g| g == id) == present).then_some(())
    })
    .await;
}

/// The router hands out a real gateway right now (from whatever view it holds).
async fn routes(url: &str, client_id: &str) -> Vec<String> {
    let mut router = RouterClient::connect(url.to_owned()).await.expect("router");
    let answer = router
        .route(RouteRequest {
            client_id: client_id.into(),
            region: "r1".into(),
            zone: "z1".into(),
            ..Default::default()
        })
        .await
        .expect("Route answers")
        .into_inner();
    answer.gateways.into_iter().map(|g| g.id).collect()
}

/// A client logged in through the router, with timings that tolerate a loaded machine;
/// keep the messages stream alive as long as the client (the gateway echoes what it sends).
async fn connected_client(cluster: &Cluster, id: &str) -> (Client, Messages) {
    let client = fast_client(id)
        .routers(cluster.router_urls())
        .heartbeat_interval(Duration::from_secs(1))
        .heartbeat_timeout(Duration::from_secs(3))
        .build()
        .expect("client");
    let messages = client.connect().await.expect("client connects");
    wait_connected(&client, None, LIMIT).await;
    (client, messages)
}

/// The client never lost its link, and it still gets a message acknowledged.
async fn still_connected(client: &Client, during: &str) {
    let names: Vec<&str> = client.history().iter().map(|e| e.name()).collect();
    assert_eq!(
        names.iter().filter(|n| **n == "connected").count(),
        1,
        "the client kept its one link during {during}: {names:?}"
    );
    let receipt = tokio::time::timeout(LIMIT, client.send(format!("after {during}")))
        .await
        .expect("send in time")
        .expect("send accepted");
    tokio::time::timeout(LIMIT, receipt)
        .await
        .expect("ack in time")
        .expect("acknowledged by the gateway");
}

/// One counter from the router's `/metrics` (0 when absent).
async fn router_counter(cluster: &Cluster, name: &str) -> f64 {
    let (_, body) = http_get(cluster.routers[0].http, "/metrics").await;
    switchyard_tests::agent::metric(&body, name).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_past_a_router_watch_is_resynced() {
    init_tracing();
    let etcd = EtcdCluster::start(1).await;
    let member: std::net::SocketAddr = etcd.all_endpoints()[0]
        .trim_start_matches("http://")
        .parse()
        .expect("member address");
    // Only the router goes through the proxy: cutting it stops the router's watch while
    // the agents and this test keep writing.
    let proxy = CutProxy::start(member).await;
    let mut cluster = Cluster::start_on(etcd, 0, &[] as &[&str], &gateways()).await;
    cluster.add_router_via(&proxy.endpoint()).await;
    cluster
        .wait_serving(&["gw-1".into(), "gw-2".into()], LIMIT)
        .await;
    let url = cluster.router_urls()[0].clone();
    let (client, _messages) = connected_client(&cluster, "compaction-client").await;
    let resyncs = router_counter(&cluster, "switchyard_registry_watch_resyncs_total").await;

    proxy.cut();
    // The cut takes effect once the router's watch notices its link is gone.
    eventually(LIMIT, "router notices it lost etcd", || async {
        let list = switchyard_tests::cluster::list(&url).await?;
        (!list.etcd_connected).then_some(())
    })
    .await;
    // While the router is cut off: a change it misses, then a compaction past its
    // revision, so its re-watch must fail as compacted.
    let ghost_rev = put_ghost(&cluster, "gw-ghost").await;
    let mut kv = cluster.etcd.client().await;
    // Compacting at the ghost's own revision would keep it watchable; one more write puts
    // the compaction past every revision the router has not seen.
    let rev = kv
        .put("/elsewhere/bump", "1", None)
        .await
        .expect("put")
        .header()
        .expect("header")
        .revision();
    assert!(rev > ghost_rev);
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    // Cut off, it keeps routing from its last view.
    let handed = routes(&url, "while-cut").await;
    assert!(
        !handed.is_empty() && handed.iter().all(|g| g.starts_with("gw-")),
        "{handed:?}"
    );

    proxy.restore();
    wait_listed(
        &url,
        "gw-ghost",
        true,
        "router lists what was written before the compaction",
    )
    .await;
    let after = router_counter(&cluster, "switchyard_registry_watch_resyncs_total").await;
    assert!(
        after >= resyncs + 1.0,
        "the compacted re-watch was a resync: {resyncs} -> {after}"
    );
    // The watch is live again: a later change arrives too.
    put_ghost(&cluster, "gw-ghost-2").await;
    wait_listed(&url, "gw-ghost-2", true, "router follows writes again").await;
    still_connected(&client, "the compaction").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defragmentation_keeps_routers_agents_and_clients() {
    init_tracing();
    let cluster = Cluster::start(1, &gateways()).await;
    let url = cluster.router_urls()[0].clone();
    let (client, _messages) = connected_client(&cluster, "defrag-client").await;

    // Churn outside the prefix leaves free pages behind once compacted.
    let mut kv = cluster.etcd.client().await;
    let filler = "x".repeat(8 * 1024);
    for i in 0..200 {
        kv.put(format!("/filler/{}", i % 20), filler.clone(), None)
            .await
            .expect("put filler");
    }
    kv.delete(
        "/filler/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("delete filler");
    let rev = kv
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    let before = kv.status().await.expect("status").db_size();
    kv.defragment().await.expect("defragment");
    let after = kv.status().await.expect("status").db_size();
    assert!(
        after < before,
        "defragmentation gave space back: {before} -> {after} bytes"
    );

    // Leases held, watch alive, routing on.
    cluster
        .wait_serving(&["gw-1".into(), "gw-2".into()], LIMIT)
        .await;
    put_ghost(&cluster, "gw-after-defrag").await;
    wait_listed(
        &url,
        "gw-after-defrag",
        true,
        "router follows writes after defrag",
    )
    .await;
    assert!(!routes(&url, "after-defrag").await.is_empty());
    still_connected(&client, "the defragmentation").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_restored_into_a_new_cluster_while_clients_stay_connected() {
    init_tracing();
    let mut cluster = Cluster::start(1, &gateways()).await;
    let url = cluster.router_urls()[0].clone();
    let (client, _messages) = connected_client(&cluster, "restore-client").await;

    let dir = tempfile::tempdir().expect("tmp");
    let snapshot = dir.path().join("registry.db");
    cluster.etcd.save_snapshot(&snapshot).await;
    // Written after the backup: the restore loses it, and the router has seen a revision
    // the restored cluster is behind.
    let late_rev = put_ghost(&cluster, "gw-late").await;
    wait_listed(&url, "gw-late", true, "router saw the late write").await;

    cluster.etcd.restore(&snapshot).await;
    let mut kv = cluster.etcd.client().await;
    let restored_rev = kv
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    assert!(
        restored_rev < late_rev,
        "the restored cluster is behind: {restored_rev} < {late_rev}"
    );
    let late = kv
        .get(
            format!("{}/gateways/gw-late", cluster.prefix.as_str()),
            Some(GetOptions::new().with_count_only()),
        )
        .await
        .expect("get");
    assert_eq!(late.count(), 0, "the late write is not in the backup");

    // The router lists again (its revision is ahead of the new cluster's) ...
    wait_listed(
        &url,
        "gw-late",
        false,
        "router dropped what the restore lost",
    )
    .await;
    // ... and follows new writes, though their revisions are below what it saw before.
    put_ghost(&cluster, "gw-new").await;
    wait_listed(&url, "gw-new", true, "router follows the restored cluster").await;
    // Agents kept or re-took their registrations.
    cluster
        .wait_serving(&["gw-1".into(), "gw-2".into()], LIMIT)
        .await;
    assert!(!routes(&url, "after-restore").await.is_empty());
    still_connected(&client, "the restore").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_leaves_the_data_plane_up() {
    init_tracing();
    // 4 MiB: a fresh member and the cluster's records fit; the filler below does not.
    let etcd = EtcdCluster::start_with(1, &["--quota-backend-bytes", "4194304"]).await;
    let cluster = Cluster::start_on(etcd, 1, &[] as &[&str], &gateways()).await;
    let url = cluster.router_urls()[0].clone();
    let (client, _messages) = connected_client(&cluster, "nospace-client").await;

    let mut kv = cluster.etcd.client().await;
    let filler = "x".repeat(256 * 1024);
    let mut refused = None;
    for i in 0..64 {
        if let Err(e) = kv.put(format!("/filler/{i}"), filler.clone(), None).await {
            refused = Some(e.to_string());
            break;
        }
    }
    let refused = refused.expect("etcd refused a write within 16 MiB of filler");
    assert!(refused.contains("space exceeded"), "{refused}");
    let alarms = kv
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .expect("alarm list");
    assert!(
        alarms
            .alarms()
            .iter()
            .any(|a| a.alarm() == AlarmType::Nospace),
        "NOSPACE raised"
    );

    // Under the alarm: the router serves its last view, a new client logs in, the
    // connected one keeps its link.
    let ids = listed(&url).await.expect("router answers");
    assert!(
        ids.contains(&"gw-1".to_owned()) && ids.contains(&"gw-2".to_owned()),
        "{ids:?}"
    );
    assert!(!routes(&url, "under-nospace").await.is_empty());
    let (second, _second_messages) = connected_client(&cluster, "nospace-newcomer").await;
    still_connected(&client, "the NOSPACE alarm").await;
    still_connected(&second, "the NOSPACE alarm").await;

    // The runbook: free space (delete, compact, defragment), then disarm.
    kv.delete(
        "/filler/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .expect("deletes are allowed under NOSPACE");
    let rev = kv
        .get("/", None)
        .await
        .expect("get")
        .header()
        .expect("header")
        .revision();
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .expect("compact");
    kv.defragment().await.expect("defragment");
    for alarm in alarms.alarms() {
        let mut opts = etcd_client::AlarmOptions::new();
        opts.with_member(alarm.member_id());
        kv.alarm(AlarmAction::Deactivate, alarm.alarm(), Some(opts))
            .await
            .expect("disarm");
    }
    put_ghost(&cluster, "gw-after-nospace").await;
    wait_listed(
        &url,
        "gw-after-nospace",
        true,
        "writes flow again after disarm",
    )
    .await;
    cluster
        .wait_serving(&["gw-1".into(), "gw-2".into()], LIMIT)
        .await;
}
