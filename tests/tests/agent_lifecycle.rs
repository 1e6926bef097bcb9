//! Agent scenarios around the lifecycle: signal-driven drain and exit, ops drain and
//! undrain, and surviving etcd restarts and outages longer than the TTL.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchyard_registry::{DrainRecord, GatewayId, GatewayState, fleet};
use switchyard_tests::agent::{AgentProcess, record};
use switchyard_tests::{CutProxy, Etcd, eventually, init_tracing, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);

async fn state_is(
    client: &etcd_client::Client,
    prefix: &switchyard_registry::Prefix,
    id: &str,
    state: GatewayState,
) -> Option<()> {
    let (r, _) = record(client, prefix, id).await?;
    (r.state == state).then_some(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_at_once_waits_the_grace_then_revokes_and_exits_0() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut agent = AgentProcess::start(
        &etcd.endpoint(),
        &prefix,
        "gw-term",
        &["--drain-grace", "1500ms"],
    )
    .await;
    eventually(WAIT, "serving", || {
        state_is(&client, &prefix, "gw-term", GatewayState::Serving)
    })
    .await;

    agent.child.signal("TERM");
    let signalled = Instant::now();
    eventually(WAIT, "draining", || {
        state_is(&client, &prefix, "gw-term", GatewayState::Draining)
    })
    .await;
    assert!(
        signalled.elapsed() < Duration::from_millis(500),
        "draining written {:?} after SIGTERM",
        signalled.elapsed()
    );
    eventually(WAIT, "key gone after the grace", || async {
        record(&client, &prefix, "gw-term")
            .await
            .is_none()
            .then_some(())
    })
    .await;
    let gone = signalled.elapsed();
    assert!(
        gone >= Duration::from_millis(1500) && gone < Duration::from_millis(2500),
        "key removed {gone:?} after SIGTERM, grace 1.5 s"
    );
    assert_eq!(agent.child.wait_timeout(WAIT), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_revokes_and_exits_at_once() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut agent = AgentProcess::start(
        &etcd.endpoint(),
        &prefix,
        "gw-int",
        &["--drain-grace", "30s"],
    )
    .await;
    eventually(WAIT, "serving", || {
        state_is(&client, &prefix, "gw-int", GatewayState::Serving)
    })
    .await;
    agent.child.signal("INT");
    eventually(WAIT, "draining", || {
        state_is(&client, &prefix, "gw-int", GatewayState::Draining)
    })
    .await;
    agent.child.signal("INT");
    let second = Instant::now();
    assert_eq!(agent.child.wait_timeout(WAIT), Some(0));
    assert!(
        second.elapsed() < Duration::from_secs(1),
        "{:?}",
        second.elapsed()
    );
    assert!(
        record(&client, &prefix, "gw-int").await.is_none(),
        "lease revoked"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_drain_and_undrain_through_the_drain_key() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let _agent = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-ops", &[]).await;
    // A neighbour whose id extends this one must not be drained with it.
    let _neighbour = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-ops2", &[]).await;
    for id in ["gw-ops", "gw-ops2"] {
        eventually(WAIT, "serving", || {
            state_is(&client, &prefix, id, GatewayState::Serving)
        })
        .await;
    }
    let id = GatewayId::new("gw-ops").unwrap();
    let drain = DrainRecord {
        reason: "rack move".into(),
        by: "ops".into(),
        at: Some(chrono::Utc::now()),
    };
    fleet::put_drain(&client, &prefix, &id, &drain)
        .await
        .unwrap();
    let asked = Instant::now();
    eventually(WAIT, "ops drain reflected", || {
        state_is(&client, &prefix, "gw-ops", GatewayState::Draining)
    })
    .await;
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "{:?}",
        asked.elapsed()
    );
    assert!(
        state_is(&client, &prefix, "gw-ops2", GatewayState::Serving)
            .await
            .is_some()
    );

    // A garbage drain value is not a drain, and does not disturb the agent.
    assert!(fleet::delete_drain(&client, &prefix, &id).await.unwrap());
    eventually(WAIT, "serving after undrain", || {
        state_is(&client, &prefix, "gw-ops", GatewayState::Serving)
    })
    .await;
    client
        .clone()
        .put(prefix.drain(&id), "not json", None)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        state_is(&client, &prefix, "gw-ops", GatewayState::Serving)
            .await
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_after_more_than_the_ttl_registers_again_within_2s() {
    init_tracing();
    let mut etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut agent = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-restart", &[]).await;
    {
        let client = etcd.client().await;
        eventually(WAIT, "registered", || {
            record(&client, &prefix, "gw-restart")
        })
        .await;
    }
    etcd.stop();
    tokio::time::sleep(Duration::from_secs(3)).await; // TTL is 2 s
    etcd.restart().await;
    let back = Instant::now();
    let client = etcd.client().await;
    eventually(Duration::from_secs(2), "registered again", || {
        state_is(&client, &prefix, "gw-restart", GatewayState::Serving)
    })
    .await;
    assert!(back.elapsed() <= Duration::from_secs(2));
    assert!(agent.child.is_running());
    // And the lease keeps being renewed: still there after more than a TTL.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(record(&client, &prefix, "gw-restart").await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_longer_than_the_ttl_expires_the_key_then_registers_again_within_2s() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let target: SocketAddr = etcd
        .endpoint()
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let proxy = CutProxy::start(target).await;
    let agent = AgentProcess::start(&proxy.endpoint(), &prefix, "gw-cut", &[]).await;
    let (_, lease) = eventually(WAIT, "registered", || record(&client, &prefix, "gw-cut")).await;

    proxy.cut();
    eventually(
        Duration::from_secs(4),
        "lease expired during the partition",
        || async {
            record(&client, &prefix, "gw-cut")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    eventually(WAIT, "agent reports the lost contact", || async {
        let lost = agent
            .metric(r#"switchyard_agent_lease_state{state="active"}"#)
            .await?;
        (lost == 0.0).then_some(())
    })
    .await;
    proxy.restore();
    let restored = Instant::now();
    let (_, new_lease) = eventually(Duration::from_secs(2), "registered again", || {
        record(&client, &prefix, "gw-cut")
    })
    .await;
    assert!(restored.elapsed() <= Duration::from_secs(2));
    assert_ne!(new_lease, lease, "a new lease after the old one expired");
}
