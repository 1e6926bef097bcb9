//! Router scenarios against a real etcd: what is routed and what never is, locality and
//! spill, sticky first places across calls and replicas, input validation, auth, health.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use switchyard_proto::v1::{
    DrainRequest, Failure, ListGatewaysRequest, RouteRequest, UndrainRequest,
};
use switchyard_tests::router::{
    ADMIN_TOKEN, TestRouter, http_get, ids, put_raw, put_record, record, route_req, test_config,
    wait_gateways, with_token,
};
use switchyard_tests::{Etcd, eventually, init_tracing, unique_prefix};
use tonic::Code;

fn all(client: &str) -> RouteRequest {
    RouteRequest {
        limit: 16,
        ..route_req(client)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_routable_gateways_are_returned() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    for id in ["gw-a", "gw-drained", "gw-eject", "gw-f"] {
        put_record(&mut kv, &prefix, &record(id, "r", "z", 1000, 10)).await;
    }
    let mut sick = record("gw-sick", "r", "z", 1000, 10);
    sick["state"] = "unhealthy".into();
    put_record(&mut kv, &prefix, &sick).await;
    let mut leaving = record("gw-leaving", "r", "z", 1000, 10);
    leaving["state"] = "draining".into();
    put_record(&mut kv, &prefix, &leaving).await;
    let mut no_ws = record("gw-tcp-only", "r", "z", 1000, 10);
    no_ws["addrs"] = serde_json::json!({"tcp": "127.0.0.1:7300"});
    put_record(&mut kv, &prefix, &no_ws).await;

    let router = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let mut c = router.client().await;
    wait_gateways(
        &c,
        &[
            "gw-a",
            "gw-drained",
            "gw-eject",
            "gw-f",
            "gw-leaving",
            "gw-sick",
            "gw-tcp-only",
        ],
    )
    .await;

    // Admin: no token, a wrong token, then the right one.
    let mut admin = router.admin().await;
    let drain = DrainRequest {
        gateway_id: "gw-drained".into(),
        reason: "kernel upgrade".into(),
        by: "test".into(),
    };
    let err = admin.drain(drain.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = admin
        .drain(with_token(drain.clone(), "wrong-token-123"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = admin
        .drain(with_token(
            DrainRequest {
                gateway_id: "bad id!".into(),
                ..drain.clone()
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    admin.drain(with_token(drain, ADMIN_TOKEN)).await.unwrap();
    let drained = eventually(Duration::from_secs(10), "ops drain visible", || {
        let mut c = c.clone();
        async move {
            let r = c
                .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                .await
                .ok()?;
            r.into_inner()
                .gateways
                .into_iter()
                .find(|g| g.id == "gw-drained" && g.ops_drained)
        }
    })
    .await;
    assert_eq!(drained.drain_reason, "kernel upgrade");

    // Three distinct clients report gw-eject: it is ejected (max 30 % of 7 = 2 may go).
    for client in ["u1", "u2", "u3"] {
        let mut req = route_req(client);
        req.failures.push(Failure {
            gateway_id: "gw-eject".into(),
            reason: "connect refused".into(),
            at_unix_ms: 0,
        });
        c.route(req).await.unwrap();
    }
    let listed = c
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let ejected = listed.gateways.iter().find(|g| g.id == "gw-eject").unwrap();
    assert!(ejected.ejected_until_unix_ms > 0, "{ejected:?}");

    let mut returned = HashSet::new();
    for n in 0..200 {
        let r = c
            .route(all(&format!("client-{n}")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.revision > 0);
        returned.extend(ids(&r));
    }
    let want: HashSet<String> = ["gw-a", "gw-f", "gw-tcp-only"].map(String::from).into();
    assert_eq!(returned, want);

    // Over WebSocket the TCP-only gateway is not a candidate either.
    let mut ws = all("ws-client");
    ws.protocol = "ws".into();
    let r = c.route(ws).await.unwrap().into_inner();
    assert_eq!(
        ids(&r).into_iter().collect::<HashSet<_>>(),
        ["gw-a", "gw-f"].map(String::from).into()
    );
    assert!(r.gateways.iter().all(|g| g.address.starts_with("ws://")));

    // Exclude is honoured.
    let mut ex = all("excluder");
    ex.exclude = vec!["gw-a".into(), "gw-f".into()];
    let r = c.route(ex).await.unwrap().into_inner();
    assert_eq!(ids(&r), vec!["gw-tcp-only"]);

    // Undrain brings it back.
    let undone = admin
        .undrain(with_token(
            UndrainRequest {
                gateway_id: "gw-drained".into(),
            },
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(undone.existed);
    eventually(Duration::from_secs(10), "undrained gateway routed", || {
        let mut c = c.clone();
        async move {
            let r = c.route(all("after-undrain")).await.ok()?.into_inner();
            ids(&r).contains(&"gw-drained".to_string()).then_some(())
        }
    })
    .await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_then_region_preference_and_spill() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    for (id, zone) in [
        ("a1", "a"),
        ("a2", "a"),
        ("a3", "a"),
        ("b1", "b"),
        ("b2", "b"),
    ] {
        put_record(&mut kv, &prefix, &record(id, "cn", zone, 10_000, 1000)).await;
    }
    put_record(&mut kv, &prefix, &record("eu1", "eu", "x", 10_000, 1000)).await;
    let mut config = test_config(&prefix);
    // Requests naming no region come from 127.0.0.1: map it to cn / b.
    config.locality = vec![
        toml_rule("127.0.0.0/8", "cn", "b"),
        toml_rule("::1/128", "cn", "b"),
    ];
    let router = TestRouter::start(&[etcd.endpoint()], config).await;
    let mut c = router.client().await;
    wait_gateways(&c, &["a1", "a2", "a3", "b1", "b2", "eu1"]).await;

    let zone_a = |n: usize| RouteRequest {
        region: "cn".into(),
        zone: "a".into(),
        limit: 6,
        ..route_req(&format!("zc-{n}"))
    };
    for n in 0..60 {
        let r = c.route(zone_a(n)).await.unwrap().into_inner();
        let got = ids(&r);
        let tiers: Vec<char> = got.iter().map(|id| id.chars().next().unwrap()).collect();
        assert_eq!(tiers, vec!['a', 'a', 'a', 'b', 'b', 'e'], "{got:?}");
    }
    // From the CIDR table (no region in the request): zone b first.
    for n in 0..20 {
        let r = c
            .route(route_req(&format!("cidr-{n}")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.gateways[0].id.starts_with('b'), "{:?}", ids(&r));
    }
    // An explicit region beats the table.
    let r = c
        .route(RouteRequest {
            region: "eu".into(),
            ..route_req("eu-client")
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.gateways[0].id, "eu1");

    // Zone a mostly down (1 of 3 healthy, under the 50 % panic threshold): its clients
    // spill over the region instead of all landing on the survivor.
    for id in ["a1", "a2"] {
        let mut rec = record(id, "cn", "a", 10_000, 1000);
        rec["state"] = "unhealthy".into();
        put_record(&mut kv, &prefix, &rec).await;
    }
    eventually(
        Duration::from_secs(10),
        "a1 and a2 unhealthy in the view",
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                    .await
                    .ok()?
                    .into_inner();
                (r.gateways.iter().filter(|g| g.state == "unhealthy").count() == 2).then_some(())
            }
        },
    )
    .await;
    let mut firsts: HashMap<String, usize> = HashMap::new();
    for n in 0..300 {
        let r = c.route(zone_a(n)).await.unwrap().into_inner();
        assert!(!ids(&r).iter().any(|id| id == "a1" || id == "a2"));
        *firsts.entry(r.gateways[0].id.clone()).or_default() += 1;
    }
    let spilled = firsts.get("b1").unwrap_or(&0) + firsts.get("b2").unwrap_or(&0);
    assert!(spilled > 120, "zone a should spill into b: {firsts:?}");
    assert!(
        *firsts.get("a3").unwrap_or(&0) > 40,
        "a3 still takes its share: {firsts:?}"
    );
    assert!(
        !firsts.contains_key("eu1"),
        "the region absorbs the spill: {firsts:?}"
    );
    router.stop().await;
}

fn toml_rule(cidr: &str, region: &str, zone: &str) -> switchyard_router::LocalityRule {
    switchyard_router::LocalityRule {
        cidr: cidr.parse().unwrap(),
        region: region.into(),
        zone: zone.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_place_is_stable_across_calls_and_replicas() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    for n in 0..6 {
        put_record(
            &mut kv,
            &prefix,
            &record(&format!("gw-{n}"), "r", "z", 100_000, 20_000),
        )
        .await;
    }
    let one = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let two = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let (mut c1, mut c2) = (one.client().await, two.client().await);
    wait_gateways(&c1, &["gw-0", "gw-1", "gw-2", "gw-3", "gw-4", "gw-5"]).await;
    wait_gateways(&c2, &["gw-0", "gw-1", "gw-2", "gw-3", "gw-4", "gw-5"]).await;
    let mut spread = HashSet::new();
    for n in 0..100 {
        let client = format!("sticky-{n}");
        let first = c1
            .route(route_req(&client))
            .await
            .unwrap()
            .into_inner()
            .gateways[0]
            .id
            .clone();
        for _ in 0..3 {
            let again = c1.route(route_req(&client)).await.unwrap().into_inner();
            assert_eq!(again.gateways[0].id, first, "same router, same client");
            let other = c2.route(route_req(&client)).await.unwrap().into_inner();
            assert_eq!(other.gateways[0].id, first, "another replica agrees");
        }
        spread.insert(first);
    }
    assert_eq!(spread.len(), 6, "clients are spread over every gateway");
    // Asking again before a report did not count the client twice.
    let listed = c1
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    let pending: u64 = listed.gateways.iter().map(|g| g.pending).sum();
    assert_eq!(pending, 100);
    assert_eq!(
        listed.routes_total, 400,
        "every Route call on this replica is counted"
    );
    one.stop().await;
    two.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_routable_is_unavailable() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut config = test_config(&prefix);
    config.route_token = Some("route-secret-1".into());
    let router = TestRouter::start(&[etcd.endpoint()], config).await;
    let mut c = router.client().await;
    let tok = |r: RouteRequest| with_token(r, "route-secret-1");

    // Route is token-gated by config.
    let err = c.route(route_req("u")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    for (req, what) in [
        (route_req(""), "client_id"),
        (route_req(&"x".repeat(257)), "client_id"),
        (
            RouteRequest {
                limit: 17,
                ..route_req("u")
            },
            "limit",
        ),
        (
            RouteRequest {
                protocol: "udp".into(),
                ..route_req("u")
            },
            "protocol",
        ),
    ] {
        let err = c.route(tok(req)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(what), "{err:?}");
    }
    // 256 bytes is fine (as far as validation goes): empty registry → UNAVAILABLE + reason.
    let err = c.route(tok(route_req(&"x".repeat(256)))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("0 registered"), "{err:?}");

    let mut kv = etcd.client().await;
    let mut sick = record("gw-sick", "r", "z", 100, 0);
    sick["state"] = "unhealthy".into();
    put_record(&mut kv, &prefix, &sick).await;
    let err = eventually(
        Duration::from_secs(10),
        "unavailable names the sick gateway",
        || {
            let mut c = c.clone();
            async move {
                let e = c.route(tok(route_req("u"))).await.err()?;
                e.message().contains("1 not serving").then_some(e)
            }
        },
    )
    .await;
    assert_eq!(err.code(), Code::Unavailable);
    // The router is still fine after all that.
    put_record(&mut kv, &prefix, &record("gw-ok", "r", "z", 100, 0)).await;
    eventually(Duration::from_secs(10), "healthy gateway routed", || {
        let mut c = c.clone();
        async move { c.route(tok(route_req("u"))).await.ok() }
    })
    .await;
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_records_are_skipped_and_health_follows_the_first_snapshot() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_raw(&mut kv, &prefix, "gw-junk", "not json at all").await;
    put_raw(
        &mut kv,
        &prefix,
        "gw-liar",
        &record("gw-other", "r", "z", 10, 0).to_string(),
    )
    .await;
    let mut zero = record("gw-zero", "r", "z", 10, 0);
    zero["capacity"] = 0.into();
    put_record(&mut kv, &prefix, &zero).await;
    put_raw(&mut kv, &prefix, "bad id", "{}").await;
    put_record(&mut kv, &prefix, &record("gw-good", "r", "z", 10, 0)).await;

    let router = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let mut c = router.client().await;
    wait_gateways(&c, &["gw-good"]).await;
    let r = c.route(all("u")).await.unwrap().into_inner();
    assert_eq!(ids(&r), vec!["gw-good"]);
    let policy = r.policy.expect("policy in every answer");
    assert_eq!(policy.heartbeat_interval_ms, 30_000);
    assert_eq!(policy.heartbeat_timeout_ms, 10_000);
    assert_eq!(policy.reconnect_spread_ms, 1_000);
    assert_eq!(r.valid_for_ms, 30_000);

    let channel = tonic::transport::Endpoint::from_shared(router.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "switchyard.v1.Router"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let (code, body) = http_get(router.http, "/healthz").await;
    assert_eq!(code, 200, "{body}");
    let (code, page) = http_get(router.http, "/").await;
    assert_eq!(code, 200);
    assert!(page.contains("gw-good") && page.contains("http-equiv=\"refresh\""));
    assert!(page.contains("4 invalid records"), "{page}");
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_until_etcd_answers() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let endpoint = etcd.endpoint();
    etcd.stop();
    let config = test_config(&prefix).validate().unwrap();
    let client = switchyard_registry::EtcdConfig::new(&[endpoint])
        .unwrap()
        .connect()
        .await
        .unwrap();
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = grpc.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(switchyard_router::run(
        switchyard_router::Listeners { grpc, http: None },
        config,
        client,
        None,
        async move {
            let _ = stopped.await;
        },
    ));
    let url = format!("http://{addr}");
    let mut health = eventually(Duration::from_secs(5), "router listening", || {
        let url = url.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()?;
            Some(tonic_health::pb::health_client::HealthClient::new(channel))
        }
    })
    .await;
    let check = |h: &mut tonic_health::pb::health_client::HealthClient<_>| {
        let mut h = h.clone();
        async move {
            h.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap()
            .into_inner()
            .status
        }
    };
    use tonic_health::pb::health_check_response::ServingStatus;
    assert_eq!(check(&mut health).await, ServingStatus::NotServing as i32);
    let mut c = switchyard_proto::v1::router_client::RouterClient::connect(url.clone())
        .await
        .unwrap();
    let err = c.route(route_req("u")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("not loaded"), "{err:?}");
    etcd.restart().await;
    eventually(Duration::from_secs(15), "health turns SERVING", || {
        let mut h = health.clone();
        async move { (check(&mut h).await == ServingStatus::Serving as i32).then_some(()) }
    })
    .await;
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_gateways_streams_a_full_set_then_changes() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-1", "r", "z", 100, 0)).await;
    let router = TestRouter::start(&[etcd.endpoint()], test_config(&prefix)).await;
    let mut c = router.client().await;
    wait_gateways(&c, &["gw-1"]).await;
    let mut stream = c
        .watch_gateways(with_token(
            switchyard_proto::v1::WatchGatewaysRequest {},
            ADMIN_TOKEN,
        ))
        .await
        .unwrap()
        .into_inner();
    let first = next(&mut stream).await;
    assert!(first.full && first.revision > 0);
    assert_eq!(first.upserted.len(), 1);
    put_record(&mut kv, &prefix, &record("gw-2", "r", "z", 100, 0)).await;
    let added = next(&mut stream).await;
    assert!(!added.full && added.revision > first.revision);
    assert_eq!(
        added
            .upserted
            .iter()
            .map(|g| g.id.as_str())
            .collect::<Vec<_>>(),
        vec!["gw-2"]
    );
    kv.delete(format!("{}gw-1", prefix.gateways()), None)
        .await
        .unwrap();
    let removed = next(&mut stream).await;
    assert_eq!(removed.removed, vec!["gw-1".to_string()]);
    assert!(removed.upserted.is_empty());
    router.stop().await;
}

async fn next(
    s: &mut tonic::Streaming<switchyard_proto::v1::GatewaysUpdate>,
) -> switchyard_proto::v1::GatewaysUpdate {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("update in time")
        .expect("stream ok")
        .expect("stream open")
}
