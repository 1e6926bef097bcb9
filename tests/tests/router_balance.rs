//! A login burst between two load reports: 10 000 Route calls through the gRPC API land
//! within ±10 % of each gateway's capacity-proportional share (no herding on the gateway
//! that looked emptiest), and the next report clears the hand-out counts.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use switchyard_proto::v1::ListGatewaysRequest;
use switchyard_tests::router::{
    ADMIN_TOKEN, TestRouter, put_record, record, route_req, test_config, wait_gateways, with_token,
};
use switchyard_tests::{Etcd, eventually, init_tracing, unique_prefix};

const CALLS: usize = 10_000;
const TASKS: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_between_reports_lands_on_capacity_shares() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    // Unequal sizes, all 10 % full at the last report.
    let caps = [
        ("gw-s", 2_000u64),
        ("gw-m", 4_000),
        ("gw-l", 6_000),
        ("gw-xl", 8_000),
    ];
    for (id, cap) in caps {
        put_record(&mut kv, &prefix, &record(id, "r", "z", cap, cap / 10)).await;
    }
    let mut config = test_config(&prefix);
    // The burst must fall inside one report period however slow the machine is.
    config.pending_window = Duration::from_secs(600);
    let router = TestRouter::start(&[etcd.endpoint()], config).await;
    let c = router.client().await;
    wait_gateways(&c, &["gw-l", "gw-m", "gw-s", "gw-xl"]).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let mut got: HashMap<String, usize> = HashMap::new();
            for n in (t..CALLS).step_by(TASKS) {
                let r = c
                    .route(route_req(&format!("login-{n}")))
                    .await
                    .expect("route")
                    .into_inner();
                *got.entry(r.gateways[0].id.clone()).or_default() += 1;
            }
            got
        }));
    }
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for t in tasks {
        for (id, n) in t.await.unwrap() {
            *firsts.entry(id).or_default() += n;
        }
    }
    let elapsed = started.elapsed();
    let total_cap: u64 = caps.iter().map(|(_, c)| c).sum();
    for (id, cap) in caps {
        let share = CALLS as f64 * cap as f64 / total_cap as f64;
        let got = *firsts.get(id).unwrap_or(&0) as f64;
        assert!(
            (got - share).abs() <= 0.10 * share,
            "{id}: {got} first places, capacity share {share:.0} (all: {firsts:?})"
        );
    }
    eprintln!("{CALLS} routes in {elapsed:?}: {firsts:?}");

    // The router counted exactly what it handed out, per gateway.
    let mut lc = c.clone();
    let listed = lc
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    for g in &listed.gateways {
        assert_eq!(g.pending as usize, firsts[&g.id], "{}", g.id);
    }
    // The next report of gw-s (with the new connections) clears its pending count.
    put_record(&mut kv, &prefix, &record("gw-s", "r", "z", 2_000, 1_200)).await;
    eventually(
        Duration::from_secs(10),
        "gw-s pending cleared by its report",
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                    .await
                    .ok()?
                    .into_inner();
                let s = r.gateways.iter().find(|g| g.id == "gw-s")?;
                (s.pending == 0 && s.connections == 1_200).then_some(())
            }
        },
    )
    .await;
    let listed = lc
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let other = listed.gateways.iter().find(|g| g.id == "gw-xl").unwrap();
    assert_eq!(
        other.pending as usize, firsts["gw-xl"],
        "other gateways keep theirs"
    );
    router.stop().await;
}
