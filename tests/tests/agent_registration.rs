//! Agent scenarios around identity and the record: fields and lease, duplicate ids and
//! takeover, SIGKILL, configuration from file and env, and the embedded library API.

use std::time::{Duration, Instant};

use switchyard_gateway_agent::agent;
use switchyard_registry::{
    Addrs, DrainRecord, EtcdConfig, GatewayId, GatewayState, LeaseState, fleet,
};
use switchyard_tests::agent::{AgentProcess, command, record};
use switchyard_tests::{Etcd, eventually, init_tracing, unique_prefix};

const WAIT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_appears_with_the_documented_fields_and_a_lease() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    // Some settings from a TOML file, some from env, the rest as flags.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(
        &file,
        "region = \"cn-east\"\nzone = \"file-zone\"\nlabel = [\"rack=r1\", \"tier=edge\"]\nweight = 70\n",
    )
    .unwrap();
    let agent = AgentProcess::start_with(|| {
        let mut cmd = command(&etcd.endpoint(), &prefix, "gw-fields");
        cmd.args(["--config", file.to_str().unwrap()])
            .args(["--ws-addr", "ws://127.0.0.1:7202/ws", "--zone", "sh-a"])
            .args(["--gateway-version", "1.2.3"])
            .env("SWITCHYARD_WEIGHT", "80");
        cmd
    })
    .await;
    let http = agent.http;

    let (rec, lease) =
        eventually(WAIT, "the record", || record(&client, &prefix, "gw-fields")).await;
    assert_eq!(rec.id, "gw-fields");
    assert_eq!(rec.addrs.tcp.as_deref(), Some("127.0.0.1:7200"));
    assert_eq!(rec.addrs.ws.as_deref(), Some("ws://127.0.0.1:7202/ws"));
    assert_eq!(rec.region, "cn-east", "from the file");
    assert_eq!(rec.zone, "sh-a", "the flag beats the file");
    assert_eq!(rec.weight, 80, "env beats the file");
    assert_eq!(rec.capacity, 1000);
    assert_eq!(rec.state, GatewayState::Serving);
    assert_eq!(rec.version, "1.2.3");
    assert_eq!(rec.labels.get("rack").map(String::as_str), Some("r1"));
    assert_eq!(rec.labels.get("tier").map(String::as_str), Some("edge"));
    assert!(rec.started_at.is_some() && rec.updated_at.is_some());
    assert_ne!(lease, 0, "the record is attached to a lease");
    let ttl = client
        .clone()
        .lease_time_to_live(lease, None)
        .await
        .unwrap();
    assert_eq!(ttl.granted_ttl(), 2);
    assert!(ttl.ttl() > 0);

    // Ops endpoint.
    let target =
        switchyard_gateway_agent::agent::Target::parse(&format!("http://{http}/healthz")).unwrap();
    let (status, _) = switchyard_gateway_agent::agent::http_get(&target)
        .await
        .unwrap();
    assert!(status.is_success());
    let metrics =
        switchyard_gateway_agent::agent::Target::parse(&format!("http://{http}/metrics")).unwrap();
    let (_, body) = switchyard_gateway_agent::agent::http_get(&metrics)
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&body);
    assert_eq!(
        switchyard_tests::agent::metric(&text, r#"switchyard_agent_lease_state{state="active"}"#),
        Some(1.0),
        "{text}"
    );
    assert!(
        switchyard_tests::agent::metric(&text, "switchyard_agent_record_writes_total")
            .is_some_and(|w| w >= 1.0),
        "{text}"
    );
    let age = switchyard_tests::agent::metric(&text, "switchyard_agent_last_report_age_seconds");
    assert!(age.is_some_and(|a| (0.0..30.0).contains(&a)), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_with_a_clear_message() {
    init_tracing();
    let prefix = unique_prefix();
    for (id, flags, expect) in [
        ("bad id", &[][..], "only A-Z a-z 0-9"),
        (
            "gw-bad",
            &["--capacity", "0"][..],
            "capacity must be at least 1",
        ),
        (
            "gw-bad",
            &["--ttl", "1500ms"][..],
            "ttl must be whole seconds",
        ),
        (
            "gw-bad",
            &["--probe", "udp://x:1"][..],
            "is not tcp://host:port",
        ),
        ("gw-bad", &["--label", "novalue"][..], "is not key=value"),
        (
            "gw-bad",
            &["--probe", "tcp://127.0.0.1:1", "--probe-ca", "/nonexistent"][..],
            "--probe-ca needs an https://",
        ),
        (
            "gw-bad",
            &[
                "--probe",
                "https://127.0.0.1:1/",
                "--probe-ca",
                "/nonexistent",
            ][..],
            "CA file /nonexistent",
        ),
    ] {
        let mut cmd = command("http://127.0.0.1:1", &prefix, id);
        cmd.args(flags).stderr(std::process::Stdio::piped());
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // A usage error, not a runtime one (docs/operations.md, exit codes).
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {stderr}");
        assert!(stderr.contains(expect), "{flags:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_id_is_refused_and_takeover_replaces_it() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut first = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-dup", &[]).await;
    let (_, first_lease) = eventually(WAIT, "first registration", || {
        record(&client, &prefix, "gw-dup")
    })
    .await;

    let mut dup = command(&etcd.endpoint(), &prefix, "gw-dup");
    dup.stderr(std::process::Stdio::piped());
    let out = dup.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already registered by a live owner"),
        "{stderr}"
    );
    assert!(stderr.contains("--takeover"), "{stderr}");
    let (_, lease) = record(&client, &prefix, "gw-dup").await.unwrap();
    assert_eq!(lease, first_lease, "the refused agent changed nothing");

    let _second = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-dup", &["--takeover"]).await;
    let second_lease = eventually(WAIT, "takeover", || async {
        let (_, lease) = record(&client, &prefix, "gw-dup").await?;
        (lease != first_lease).then_some(lease)
    })
    .await;
    // The replaced agent notices and exits with an error instead of fighting for the key.
    let code = first.child.wait_timeout(WAIT);
    assert_eq!(code, Some(1), "the superseded agent exits 1");
    let (_, lease) = record(&client, &prefix, "gw-dup").await.unwrap();
    assert_eq!(lease, second_lease);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_agent_removes_the_key_within_ttl_plus_one_second() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let mut agent = AgentProcess::start(&etcd.endpoint(), &prefix, "gw-kill", &[]).await;
    eventually(WAIT, "registration", || record(&client, &prefix, "gw-kill")).await;
    agent.child.kill();
    let killed = Instant::now();
    eventually(
        Duration::from_secs(3),
        "key gone after SIGKILL (TTL 2s + 1s)",
        || async {
            record(&client, &prefix, "gw-kill")
                .await
                .is_none()
                .then_some(())
        },
    )
    .await;
    assert!(killed.elapsed() <= Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_agent_reports_drains_and_shuts_down() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let id = GatewayId::new("gw-lib").unwrap();
    let mut config = agent::Config::new(
        EtcdConfig::new(&[etcd.endpoint()]).unwrap(),
        prefix.clone(),
        id.clone(),
        Addrs {
            tcp: Some("127.0.0.1:7300".into()),
            ws: None,
        },
        100,
    )
    .unwrap();
    config.ttl = Duration::from_secs(2);
    config.report_interval = Duration::from_millis(100);
    config.report_delta = 0.0;
    let a = agent::start(config.clone()).await.unwrap();
    assert!(matches!(
        *a.lease_state().borrow(),
        LeaseState::Active { .. }
    ));
    assert_eq!(a.writes(), 1);

    // Starting a second agent on the same id is refused with the typed error.
    let err = agent::start(config).await.unwrap_err();
    assert!(
        matches!(
            err,
            agent::StartError::Register(switchyard_registry::LeaseError::AlreadyRegistered { .. })
        ),
        "{err}"
    );

    a.set_connections(42);
    a.set_cpu(0.5);
    a.set_cpu(f64::NAN); // refused, the record stays valid
    eventually(WAIT, "load in the record", || async {
        let (r, _) = record(&client, &prefix, "gw-lib").await?;
        (r.load.connections == 42 && r.load.cpu == 0.5).then_some(())
    })
    .await;
    a.set_healthy(false);
    eventually(WAIT, "unhealthy", || async {
        let (r, _) = record(&client, &prefix, "gw-lib").await?;
        (r.state == GatewayState::Unhealthy).then_some(())
    })
    .await;

    // Ops drain wins over unhealthy and is visible to the host; undrain returns to the
    // health-derived state.
    let mut ops = a.ops_drain();
    let drain = DrainRecord {
        reason: "kernel upgrade".into(),
        by: "test".into(),
        at: None,
    };
    fleet::put_drain(&client, &prefix, &id, &drain)
        .await
        .unwrap();
    tokio::time::timeout(WAIT, ops.wait_for(Option::is_some))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ops.borrow().as_ref().unwrap().reason, "kernel upgrade");
    eventually(WAIT, "ops drained", || async {
        let (r, _) = record(&client, &prefix, "gw-lib").await?;
        (r.state == GatewayState::Draining).then_some(())
    })
    .await;
    fleet::delete_drain(&client, &prefix, &id).await.unwrap();
    a.set_healthy(true);
    eventually(WAIT, "serving after undrain", || async {
        let (r, _) = record(&client, &prefix, "gw-lib").await?;
        (r.state == GatewayState::Serving).then_some(())
    })
    .await;

    // drain() has written the record when it returns. (The write counter is not compared
    // across it: the reporting loop's last write can be visible in etcd a moment before
    // the loop counts it.)
    a.drain().await;
    let (r, _) = record(&client, &prefix, "gw-lib").await.unwrap();
    assert_eq!(r.state, GatewayState::Draining);
    // Every earlier write is counted once drain() returns (the writer lock orders them);
    // draining again changes nothing and writes nothing.
    let after = a.writes();
    a.drain().await;
    assert_eq!(a.writes(), after, "a second drain() is not a write");

    a.clone().shutdown().await.unwrap();
    assert!(
        record(&client, &prefix, "gw-lib").await.is_none(),
        "revoked: key gone"
    );
    assert!(matches!(
        a.shutdown().await,
        Err(agent::AgentError::AlreadyShutDown)
    ));
}
