//! Registry scenarios against a real etcd: lease sessions through restarts, outages and lease
//! loss; the prefix watcher through compaction, leader loss and garbage values.

use std::time::Duration;

use etcd_client::{Client, GetOptions};
use switchyard_registry::{
    GatewayId, LeaseSession, LeaseState, Prefix, Registration, WatcherConfig, fleet,
};
use switchyard_tests::{CutProxy, Etcd, EtcdCluster, eventually, init_tracing, unique_prefix};

fn record(id: &str, connections: u64) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "addrs": {"tcp": "127.0.0.1:7200"},
        "region": "r1", "zone": "z1",
        "capacity": 1000,
        "state": "serving",
        "load": {"connections": connections, "cpu": 0.1},
    })
    .to_string()
    .into_bytes()
}

fn registration(prefix: &Prefix, id: &str, ttl_secs: u64) -> Registration {
    Registration {
        key: prefix.gateway(&GatewayId::new(id).unwrap()),
        value: record(id, 0),
        ttl: Duration::from_secs(ttl_secs),
        takeover: false,
    }
}

/// The lease a key is on, or `None` when the key is absent.
async fn lease_of(client: &Client, key: &str) -> Option<i64> {
    let resp = client.clone().get(key, None).await.ok()?;
    resp.kvs().first().map(|kv| kv.lease())
}

async fn key_count(client: &Client, prefix: &str) -> usize {
    let resp = client
        .clone()
        .get(
            prefix,
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .expect("count");
    resp.count() as usize
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_record_is_visible_with_its_lease_and_updates_land() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let reg = registration(&prefix, "gw-1", 5);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();

    let lease = lease_of(&client, &key).await.expect("key present");
    assert_eq!(lease, session.lease_id());
    assert_ne!(lease, 0);
    let ttl = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap();
    assert!(ttl.ttl() > 0 && ttl.ttl() <= 5, "ttl {}", ttl.ttl());

    session.put(record("gw-1", 42)).await.unwrap();
    let value = client.clone().get(key.as_str(), None).await.unwrap();
    let got: serde_json::Value = serde_json::from_slice(value.kvs()[0].value()).unwrap();
    assert_eq!(got["load"]["connections"], 42);

    let state = session.state();
    session.revoke().await.unwrap();
    assert_eq!(
        lease_of(&client, &key).await,
        None,
        "revoke deletes the key"
    );
    assert_eq!(
        *state.borrow(),
        LeaseState::Revoked,
        "the owner hears of it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_dying_without_revoke_loses_the_key_after_the_ttl() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let reg = registration(&prefix, "gw-1", 2);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();
    // Kept alive well past the TTL while the owner lives.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease_of(&client, &key).await.is_some());

    drop(session); // the owner dies: no revoke, no more keepalives
    let died = tokio::time::Instant::now();
    assert!(
        lease_of(&client, &key).await.is_some(),
        "not deleted at once"
    );
    eventually(Duration::from_secs(4), "key gone after the TTL", || async {
        lease_of(&client, &key).await.is_none().then_some(())
    })
    .await;
    assert!(
        died.elapsed() <= Duration::from_millis(3_500),
        "{:?}",
        died.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_shorter_than_the_ttl_keeps_the_same_lease() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let reg = registration(&prefix, "gw-1", 10);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();
    let lease = session.lease_id();
    let mut states = session.state();

    etcd.stop();
    eventually(
        Duration::from_secs(10),
        "session notices the outage",
        || {
            let s = *states.borrow_and_update();
            async move { matches!(s, LeaseState::Reconnecting { .. }).then_some(()) }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    etcd.restart().await;

    eventually(Duration::from_secs(5), "session active again", || {
        let s = *states.borrow_and_update();
        async move { (s == LeaseState::Active { lease_id: lease }).then_some(()) }
    })
    .await;
    assert_eq!(session.lease_id(), lease, "no re-registration");
    assert_eq!(lease_of(&client, &key).await, Some(lease));
    // And the lease really is being kept alive on the restarted etcd.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let ttl = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap()
        .ttl();
    assert!(ttl > 5, "lease refreshed, ttl {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_longer_than_the_ttl_registers_again_within_two_seconds() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let reg = registration(&prefix, "gw-1", 2);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();

    etcd.stop();
    // The owner keeps writing while etcd is away; the latest value must land on return.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = tokio::time::timeout(Duration::from_secs(3), session.put(record("gw-1", 7))).await;
    tokio::time::sleep(Duration::from_secs(3)).await; // down for > 4 s, TTL 2 s
    etcd.restart().await;
    let back = tokio::time::Instant::now();

    eventually(
        Duration::from_secs(2),
        "registered again with the latest value",
        || async {
            let l = lease_of(&client, &key).await?;
            let ttl = client.clone().lease_time_to_live(l, None).await.ok()?.ttl();
            let value = client.clone().get(key.as_str(), None).await.ok()?;
            let got: serde_json::Value =
                serde_json::from_slice(value.kvs().first()?.value()).ok()?;
            (ttl > 0 && got["load"]["connections"] == 7).then_some(())
        },
    )
    .await;
    assert!(back.elapsed() <= Duration::from_secs(2));
    // It stays registered: the lease is being kept alive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lease_of(&client, &key).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_is_replaced_and_the_record_put_again() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let reg = registration(&prefix, "gw-1", 5);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();
    let old = session.lease_id();

    // Lease loss as etcd reports it after an expiry: the lease is gone server-side.
    client.clone().lease_revoke(old).await.unwrap();
    let revoked = tokio::time::Instant::now();
    let new = eventually(
        Duration::from_secs(4),
        "a new lease holds the key",
        || async { lease_of(&client, &key).await.filter(|l| *l != old) },
    )
    .await;
    assert!(revoked.elapsed() < Duration::from_secs(4));
    assert_eq!(session.lease_id(), new);
    assert_eq!(
        *session.state().borrow(),
        LeaseState::Active { lease_id: new }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_finds_its_lease_gone_registers_again_at_once() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    // TTL 30 s: the keepalive ticks every 10 s, so only the write can explain a quick return.
    let reg = registration(&prefix, "gw-1", 30);
    let key = reg.key.clone();
    let session = LeaseSession::register(client.clone(), reg).await.unwrap();
    let old = session.lease_id();
    tokio::time::sleep(Duration::from_millis(300)).await; // past the first keepalive

    // The lease is gone (as after a pause longer than the TTL) and the owner writes first.
    client.clone().lease_revoke(old).await.unwrap();
    let written = tokio::time::Instant::now();
    match session.put(record("gw-1", 7)).await {
        // The task may already be on a new lease: then the write is kept for it.
        Ok(()) => {}
        Err(e) => assert!(e.to_string().contains("lease not found"), "{e}"),
    }
    eventually(
        Duration::from_secs(3),
        "the key again, on a new lease, with the written value",
        || async {
            let resp = client.clone().get(key.as_str(), None).await.ok()?;
            let kv = resp.kvs().first()?;
            let got: serde_json::Value = serde_json::from_slice(kv.value()).ok()?;
            (kv.lease() != old && got["load"]["connections"] == 7).then_some(())
        },
    )
    .await;
    assert!(written.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        *session.state().borrow(),
        LeaseState::Active { lease_id } if lease_id != old
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_registration_is_refused_and_takeover_supersedes() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let first = LeaseSession::register(client.clone(), registration(&prefix, "gw-1", 5))
        .await
        .unwrap();
    let err = LeaseSession::register(client.clone(), registration(&prefix, "gw-1", 5))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    let mut reg = registration(&prefix, "gw-1", 5);
    reg.takeover = true;
    let key = reg.key.clone();
    let second = LeaseSession::register(client.clone(), reg).await.unwrap();
    assert_eq!(lease_of(&client, &key).await, Some(second.lease_id()));
    let mut states = first.state();
    eventually(Duration::from_secs(5), "first session superseded", || {
        let s = *states.borrow_and_update();
        async move { matches!(s, LeaseState::Superseded { .. }).then_some(()) }
    })
    .await;
    assert!(
        first.put(record("gw-1", 1)).await.is_err(),
        "superseded owner cannot write"
    );
    assert_eq!(lease_of(&client, &key).await, Some(second.lease_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resyncs_to_the_live_key_set_after_compaction_while_cut_off() {
    init_tracing();
    let etcd = Etcd::start().await;
    let direct = etcd.client().await;
    let proxy = CutProxy::start(
        etcd.endpoint()
            .trim_start_matches("http://")
            .parse()
            .unwrap(),
    )
    .await;
    let through_proxy = switchyard_registry::EtcdConfig::new(&[proxy.endpoint()])
        .unwrap()
        .connect()
        .await
        .unwrap();
    let prefix = unique_prefix();
    for i in 0..5 {
        let id = format!("gw-{i}");
        direct
            .clone()
            .put(
                prefix.gateway(&GatewayId::new(&id).unwrap()),
                record(&id, 0),
                None,
            )
            .await
            .unwrap();
    }
    let config = WatcherConfig {
        progress_interval: Duration::from_millis(500),
        silence_timeout: Duration::from_secs(2),
        ..WatcherConfig::default()
    };
    let watcher = fleet::watch(through_proxy, &prefix, config);
    let mut snaps = watcher.snapshots();
    eventually(Duration::from_secs(5), "initial list", || {
        let n = fleet::gateways(&snaps.borrow_and_update()).count();
        async move { (n == 5).then_some(()) }
    })
    .await;

    proxy.cut();
    let mut c = direct.clone();
    for i in 0..3 {
        c.delete(
            prefix.gateway(&GatewayId::new(format!("gw-{i}")).unwrap()),
            None,
        )
        .await
        .unwrap();
    }
    for i in 5..8 {
        let id = format!("gw-{i}");
        c.put(
            prefix.gateway(&GatewayId::new(&id).unwrap()),
            record(&id, 0),
            None,
        )
        .await
        .unwrap();
    }
    let rev = c.get("x", None).await.unwrap().header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    proxy.restore();

    let expected: Vec<String> = ["gw-3", "gw-4", "gw-5", "gw-6", "gw-7"]
        .map(String::from)
        .to_vec();
    eventually(
        Duration::from_secs(10),
        "watcher resynced to the live set",
        || {
            let snap = snaps.borrow_and_update().clone();
            let ids: Vec<String> = fleet::gateways(&snap).map(|g| g.id.clone()).collect();
            let ok = ids == expected && snap.revision >= rev;
            async move { ok.then_some(()) }
        },
    )
    .await;
    assert_eq!(key_count(&direct, &prefix.gateways()).await, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_in_a_three_member_cluster_loses_no_key_and_the_watch_continues() {
    init_tracing();
    let mut cluster = EtcdCluster::start(3).await;
    let client = cluster.client().await;
    let prefix = unique_prefix();
    let mut sessions = Vec::new();
    for i in 0..5 {
        let reg = registration(&prefix, &format!("gw-{i}"), 5);
        sessions.push(LeaseSession::register(client.clone(), reg).await.unwrap());
    }
    let watcher = fleet::watch(
        client.clone(),
        &prefix,
        WatcherConfig {
            progress_interval: Duration::from_millis(500),
            silence_timeout: Duration::from_secs(2),
            ..WatcherConfig::default()
        },
    );
    let mut snaps = watcher.snapshots();
    eventually(Duration::from_secs(5), "watcher sees 5", || {
        let n = fleet::gateways(&snaps.borrow_and_update()).count();
        async move { (n == 5).then_some(()) }
    })
    .await;

    let leader = cluster.leader().await;
    cluster.kill(leader);
    // Longer than the TTL: keepalives must have gone through the new leader.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let survivor = cluster.client().await;
    assert_eq!(
        key_count(&survivor, &prefix.gateways()).await,
        5,
        "no key lost"
    );

    let id = GatewayId::new("gw-new").unwrap();
    eventually(
        Duration::from_secs(10),
        "a write lands after the election",
        || {
            let mut c = survivor.clone();
            let key = prefix.gateway(&id);
            async move { c.put(key, record("gw-new", 0), None).await.ok() }
        },
    )
    .await;
    eventually(Duration::from_secs(10), "watcher sees the new key", || {
        let n = fleet::gateways(&snaps.borrow_and_update()).count();
        async move { (n == 6).then_some(()) }
    })
    .await;
    for s in &sessions {
        assert!(matches!(*s.state().borrow(), LeaseState::Active { .. }));
    }

    // The killed member rejoins on its ports and data, and alone serves what it missed.
    cluster.restart(leader).await;
    assert_eq!(cluster.endpoints(), cluster.all_endpoints());
    let rejoined = Client::connect([cluster.all_endpoints()[leader].clone()], None)
        .await
        .unwrap();
    assert_eq!(key_count(&rejoined, &prefix.gateways()).await, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_values_are_skipped_and_counted_while_every_good_record_is_seen() {
    init_tracing();
    let etcd = Etcd::start().await;
    let mut c = etcd.client().await;
    let prefix = unique_prefix();
    let root = prefix.root();
    c.put(format!("{root}gateways/gw-1"), record("gw-1", 0), None)
        .await
        .unwrap();
    c.put(
        format!("{root}gateways/gw-bad"),
        b"{not json".to_vec(),
        None,
    )
    .await
    .unwrap();
    c.put(
        format!("{root}gateways/gw-zero"),
        br#"{"id":"gw-zero","addrs":{"tcp":"1.2.3.4:5"},"capacity":0}"#.to_vec(),
        None,
    )
    .await
    .unwrap();
    c.put(format!("{root}gateways/bad id"), record("bad id", 0), None)
        .await
        .unwrap();
    c.put(format!("{root}drain/gw-1"), b"{}".to_vec(), None)
        .await
        .unwrap();
    c.put(format!("{root}unrelated/x"), b"whatever".to_vec(), None)
        .await
        .unwrap();

    let watcher = fleet::watch(c.clone(), &prefix, WatcherConfig::default());
    let mut snaps = watcher.snapshots();
    eventually(Duration::from_secs(5), "initial list", || {
        let loaded = snaps.borrow_and_update().is_loaded();
        async move { loaded.then_some(()) }
    })
    .await;
    // Garbage arriving through the watch too.
    c.put(format!("{root}gateways/gw-2"), record("gw-2", 0), None)
        .await
        .unwrap();
    c.put(format!("{root}gateways/gw-3"), b"\xff\xfe".to_vec(), None)
        .await
        .unwrap();

    let snap = eventually(Duration::from_secs(5), "watch events applied", || {
        let s = snaps.borrow_and_update().clone();
        let ok = s.rejected.len() == 4 && fleet::gateways(&s).count() == 2;
        async move { ok.then_some(s) }
    })
    .await;
    let ids: Vec<&str> = fleet::gateways(&snap).map(|g| g.id.as_str()).collect();
    assert_eq!(ids, ["gw-1", "gw-2"]);
    assert_eq!(
        fleet::drains(&snap)
            .map(|(id, _)| id.as_str())
            .collect::<Vec<_>>(),
        ["gw-1"]
    );
    let rejected: Vec<&str> = snap.rejected.keys().map(String::as_str).collect();
    assert_eq!(
        rejected,
        [
            "gateways/bad id",
            "gateways/gw-3",
            "gateways/gw-bad",
            "gateways/gw-zero"
        ]
    );
    assert!(snap.rejected["gateways/gw-zero"].contains("capacity"));

    // A bad value that is fixed becomes a record.
    c.put(format!("{root}gateways/gw-bad"), record("gw-bad", 0), None)
        .await
        .unwrap();
    eventually(Duration::from_secs(5), "fixed record seen", || {
        let s = snaps.borrow_and_update().clone();
        let ok = s.rejected.len() == 3 && fleet::gateways(&s).count() == 3;
        async move { ok.then_some(()) }
    })
    .await;
}
