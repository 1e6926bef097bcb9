//! The router and etcd trouble: an etcd restart and a compaction while the router was cut
//! off; in both it keeps answering from its last view, reports the view's age, and catches
//! up when etcd is back.

use std::net::SocketAddr;
use std::time::Duration;

use etcd_client::CompactionOptions;
use switchyard_proto::v1::ListGatewaysRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::router::{
    ADMIN_TOKEN, TestRouter, ids, put_record, record, route_req, test_config, wait_gateways,
    with_token,
};
use switchyard_tests::{CutProxy, Etcd, eventually, init_tracing, unique_prefix};
use tonic::transport::Channel;

async fn connected(c: &RouterClient<Channel>, want: bool) {
    eventually(
        Duration::from_secs(15),
        &format!("etcd_connected == {want}"),
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                    .await
                    .ok()?
                    .into_inner();
                (r.etcd_connected == want).then_some(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_last_view_through_an_etcd_restart() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-1", "r", "z", 100, 0)).await;
    put_record(&mut kv, &prefix, &record("gw-2", "r", "z", 100, 0)).await;
    let router = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let mut c = router.client().await;
    wait_gateways(&c, &["gw-1", "gw-2"]).await;
    connected(&c, true).await;
    let before = c.route(route_req("u")).await.unwrap().into_inner();

    etcd.stop();
    connected(&c, false).await;
    // Stale but serving: same answer, and the age is visible and growing.
    let aged = eventually(Duration::from_secs(10), "snapshot age over 1 s", || {
        let mut c = c.clone();
        async move {
            let r = c.route(route_req("u")).await.ok()?.into_inner();
            (r.snapshot_age_ms > 1_000).then_some(r)
        }
    })
    .await;
    assert_eq!(aged.revision, before.revision);
    assert_eq!(ids(&aged)[0], ids(&before)[0]);
    let (_, metrics_page) = switchyard_tests::router::http_get(router.http, "/").await;
    assert!(metrics_page.contains("unreachable"), "{metrics_page}");

    etcd.restart().await;
    connected(&c, true).await;
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-3", "r", "z", 100, 0)).await;
    wait_gateways(&c, &["gw-1", "gw-2", "gw-3"]).await;
    let fresh = c.route(route_req("u")).await.unwrap().into_inner();
    assert!(fresh.revision > before.revision);
    assert!(fresh.snapshot_age_ms < 5_000, "{}", fresh.snapshot_age_ms);
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catches_up_after_compaction_while_cut_off() {
    init_tracing();
    let etcd = Etcd::start().await;
    let target: SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = CutProxy::start(target).await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-1", "r", "z", 100, 0)).await;
    put_record(&mut kv, &prefix, &record("gw-2", "r", "z", 100, 0)).await;
    let router = TestRouter::start(&[proxy.endpoint()], test_config(&prefix)).await;
    let mut c = router.client().await;
    wait_gateways(&c, &["gw-1", "gw-2"]).await;

    proxy.cut();
    connected(&c, false).await;
    // While the router is cut off: gw-1 leaves, gw-3 arrives, gw-2 reports many times,
    // and etcd compacts away every revision the router has not seen.
    kv.delete(format!("{}gw-1", prefix.gateways()), None)
        .await
        .unwrap();
    put_record(&mut kv, &prefix, &record("gw-3", "r", "z", 100, 0)).await;
    for n in 1..=20 {
        put_record(&mut kv, &prefix, &record("gw-2", "r", "z", 100, n)).await;
    }
    let rev = kv
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    kv.compact(rev, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    // Still answering from the old view meanwhile.
    let stale = c.route(route_req("u")).await.unwrap().into_inner();
    assert!(ids(&stale).iter().all(|id| id == "gw-1" || id == "gw-2"));

    proxy.restore();
    wait_gateways(&c, &["gw-2", "gw-3"]).await;
    let listed = c
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.revision >= rev, "{} < {rev}", listed.revision);
    let gw2 = listed.gateways.iter().find(|g| g.id == "gw-2").unwrap();
    assert_eq!(gw2.connections, 20);
    for n in 0..50 {
        let r = c
            .route(route_req(&format!("c{n}")))
            .await
            .unwrap()
            .into_inner();
        assert!(!ids(&r).contains(&"gw-1".to_string()));
    }
    router.stop().await;
}
