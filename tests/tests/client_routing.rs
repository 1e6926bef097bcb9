//! Client routing against real processes: etcd, a router and registered reference gateways.
//! The router's answer steers the client away from a gateway it just lost (`exclude`); with
//! the router gone the cached last good list (memory and file) is used while valid, then
//! the bootstrap list.

use std::time::{Duration, Instant};

use switchyard_client::{Event, RouteSource};
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc, fast_client, wait_connected};
use switchyard_tests::{Cluster, init_tracing};

/// etcd, one router, and gateways `gw-a`, `gw-b` registered through agent sidecars.
async fn routed() -> (Cluster, Vec<GatewayProc>) {
    let cluster = Cluster::start(1, &[]).await;
    let mut gateways = Vec::new();
    for id in ["gw-a", "gw-b"] {
        let mut g = GatewayProc::start(id, &GatewayOpts::default()).await;
        g.register(&cluster.etcd.endpoint(), cluster.prefix.as_str());
        gateways.push(g);
    }
    let ids: Vec<String> = gateways.iter().map(|g| g.id.clone()).collect();
    cluster.wait_serving(&ids, Duration::from_secs(20)).await;
    (cluster, gateways)
}

fn by_id<'a>(gateways: &'a mut [GatewayProc], id: &str) -> &'a mut GatewayProc {
    gateways
        .iter_mut()
        .find(|g| g.id == id)
        .expect("known gateway")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_router_reroutes_away_from_the_dead_gateway() {
    init_tracing();
    let (cluster, mut gateways) = routed().await;
    let client = fast_client("route-kill-1")
        .routers(cluster.router_urls())
        .region("r1")
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    assert_eq!(client.route_source(), Some(RouteSource::Router));
    let first = client.gateway().unwrap();

    let t0 = Instant::now();
    by_id(&mut gateways, &first).child.kill();
    // The dead gateway's lease is still alive in etcd, so only the client's `exclude` keeps
    // the router from handing it out again.
    let now_on = wait_connected(&client, Some(&first), Duration::from_secs(10)).await;
    let took = t0.elapsed();
    eprintln!("failover through the router after SIGKILL took {took:?}");
    assert_ne!(now_on, first);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert_eq!(client.route_source(), Some(RouteSource::Router));
    let last = client.history().last().cloned().unwrap();
    assert!(
        matches!(last, Event::Connected { attempt: 1, .. }),
        "the first routed attempt after the loss worked: {last:?}"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn router_down_uses_the_cache_then_the_bootstrap_list() {
    init_tracing();
    let (mut cluster, mut gateways) = routed().await;
    let spare = GatewayProc::start("gw-spare", &GatewayOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("gateways.json");
    let cache_age = Duration::from_secs(4);

    let client = fast_client("cache-1")
        .routers(cluster.router_urls())
        .region("r1")
        .cache_file(&cache)
        .cache_max_age(cache_age)
        .bootstrap([spare.gateway()])
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    let routed_at = Instant::now();
    assert_eq!(client.route_source(), Some(RouteSource::Router));
    assert!(cache.is_file(), "last good list written");
    let first = client.gateway().unwrap();

    cluster.routers[0].child.kill();

    // A fresh client (an app restart) with no router reachable logs in from the cache file.
    let restarted = fast_client("cache-2")
        .routers(cluster.router_urls())
        .cache_file(&cache)
        .bootstrap([spare.gateway()])
        .build()
        .unwrap();
    let _m2 = restarted.connect().await.unwrap();
    assert_eq!(restarted.route_source(), Some(RouteSource::Cache));
    assert_ne!(restarted.gateway().as_deref(), Some("gw-spare"));
    restarted.close().await;

    // Router down, cache valid: the cached list minus the gateway that just died.
    by_id(&mut gateways, &first).child.kill();
    let second = wait_connected(&client, Some(&first), Duration::from_secs(5)).await;
    assert_eq!(client.route_source(), Some(RouteSource::Cache));
    assert_ne!(second, "gw-spare");
    assert!(
        routed_at.elapsed() < cache_age,
        "still inside the cache validity"
    );

    // Router down and cache expired: the bootstrap list.
    tokio::time::sleep(cache_age.saturating_sub(routed_at.elapsed())).await;
    by_id(&mut gateways, &second).child.kill();
    let third = wait_connected(&client, Some(&second), Duration::from_secs(5)).await;
    assert_eq!(third, "gw-spare");
    assert_eq!(client.route_source(), Some(RouteSource::Bootstrap));
    client.close().await;
}
