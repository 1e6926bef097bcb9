//! `switchyardctl` against a real router and etcd: tables and JSON, route explanations,
//! drain and undrain, watch, the etcd fallback, and errors that say what to check.

use std::process::{Command, Output};
use std::time::Duration;

use switchyard_registry::GatewayId;
use switchyard_tests::{Cluster, bin_path, eventually, init_tracing};

fn record(id: &str, zone: &str, state: &str, connections: u64) -> Vec<u8> {
    serde_json::json!({
        "id": id,
        "addrs": {"tcp": format!("127.0.0.1:{}", 7000 + id.len())},
        "region": "r1", "zone": zone,
        "capacity": 100,
        "state": state,
        "load": {"connections": connections, "cpu": 0.1},
        "version": "9.9.9",
    })
    .to_string()
    .into_bytes()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

async fn cluster_with_records() -> Cluster {
    let cluster = Cluster::start_with(1, &["--admin-token", "s3cret-token"], &[]).await;
    let mut c = cluster.etcd.client().await;
    for (id, zone, state, conns) in [
        ("gw-a", "z1", "serving", 40),
        ("gw-b", "z2", "serving", 10),
        ("gw-c", "z1", "unhealthy", 0),
    ] {
        c.put(
            cluster.prefix.gateway(&GatewayId::new(id).unwrap()),
            record(id, zone, state, conns),
            None,
        )
        .await
        .unwrap();
    }
    let url = cluster.router_urls()[0].clone();
    eventually(
        Duration::from_secs(10),
        "router sees 3 gateways",
        || async {
            let list = switchyard_tests::cluster::list_with(&url, Some("s3cret-token")).await?;
            (list.gateways.len() == 3).then_some(())
        },
    )
    .await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_table_json_and_route_explanation() {
    init_tracing();
    let cluster = cluster_with_records().await;

    let table = cluster.ctl(&["--token", "s3cret-token", "gateways"]);
    assert!(table.status.success(), "{}", stderr(&table));
    let text = stdout(&table);
    assert!(text.contains("ID") && text.contains("LOAD"), "{text}");
    let row = text
        .lines()
        .find(|l| l.starts_with("gw-a"))
        .expect("gw-a row");
    assert!(
        row.contains("serving")
            && row.contains("r1/z1")
            && row.contains("40/100")
            && row.contains("9.9.9"),
        "{row}"
    );
    assert!(
        row.contains("[########------------]"),
        "load bar for 40 %: {row}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("gw-c") && l.contains("unhealthy")),
        "{text}"
    );

    let json = cluster.ctl(&["--token", "s3cret-token", "gateways", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json output");
    assert_eq!(v["source"], "router");
    assert_eq!(v["gateways"].as_array().unwrap().len(), 3);

    let route = cluster.ctl(&[
        "route",
        "--client-id",
        "u1",
        "--region",
        "r1",
        "--zone",
        "z1",
        "--output",
        "json",
    ]);
    assert!(route.status.success(), "{}", stderr(&route));
    let v: serde_json::Value = serde_json::from_slice(&route.stdout).expect("json");
    let ids: Vec<&str> = v["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&"gw-c"),
        "unhealthy never handed out: {ids:?}"
    );
    assert_eq!(ids.first(), Some(&"gw-a"), "same zone first");
    let explained: Vec<&str> = v["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["gateway_id"].as_str().unwrap())
        .collect();
    assert!(
        explained.contains(&"gw-c"),
        "the passed-over gateway is explained: {explained:?}"
    );
    let why_c = v["explanation"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["gateway_id"] == "gw-c")
        .unwrap();
    assert!(!why_c["reason"].as_str().unwrap().is_empty());

    let table = cluster.ctl(&[
        "route",
        "--client-id",
        "u1",
        "--region",
        "r1",
        "--zone",
        "z1",
    ]);
    let text = stdout(&table);
    assert!(
        text.contains("RANK") && text.contains("answer: gw-a"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_and_undrain_need_the_token_and_take_effect() {
    init_tracing();
    let cluster = cluster_with_records().await;

    let no_token = cluster.ctl(&["drain", "gw-a"]);
    assert!(!no_token.status.success());
    assert!(
        stderr(&no_token).contains("token"),
        "says what to check: {}",
        stderr(&no_token)
    );

    let drained = cluster.ctl(&[
        "--token",
        "s3cret-token",
        "drain",
        "gw-a",
        "--reason",
        "maintenance",
    ]);
    assert!(drained.status.success(), "{}", stderr(&drained));
    assert!(stdout(&drained).contains("drained gw-a"));
    let mut c = cluster.etcd.client().await;
    let key = cluster.prefix.drain(&GatewayId::new("gw-a").unwrap());
    let v = c.get(key.as_str(), None).await.unwrap();
    let d: serde_json::Value = serde_json::from_slice(v.kvs()[0].value()).unwrap();
    assert_eq!(d["reason"], "maintenance");

    let table = eventually(
        Duration::from_secs(5),
        "drained shows in the table",
        || async {
            let t = stdout(&cluster.ctl(&["--token", "s3cret-token", "gateways"]));
            t.lines()
                .any(|l| l.starts_with("gw-a") && l.contains("drained"))
                .then_some(t)
        },
    )
    .await;
    assert!(table.contains("gw-b"));
    let route = stdout(&cluster.ctl(&[
        "route",
        "--client-id",
        "u1",
        "--zone",
        "z1",
        "--region",
        "r1",
        "--output",
        "json",
    ]));
    assert!(
        !route.contains("\"id\": \"gw-a\""),
        "a drained gateway is not handed out: {route}"
    );

    let undrained = cluster.ctl(&["--token", "s3cret-token", "undrain", "gw-a"]);
    assert!(
        stdout(&undrained).contains("undrained gw-a"),
        "{}",
        stderr(&undrained)
    );
    assert!(c.get(key.as_str(), None).await.unwrap().kvs().is_empty());
    let again = cluster.ctl(&["--token", "s3cret-token", "undrain", "gw-a"]);
    assert!(
        stdout(&again).contains("was not drained"),
        "{}",
        stdout(&again)
    );

    let bad = cluster.ctl(&["--token", "wrong", "drain", "gw-a"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("token"), "{}", stderr(&bad));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_one_line_per_change() {
    init_tracing();
    let cluster = cluster_with_records().await;
    let mut child = tokio::process::Command::new(bin_path("switchyardctl"))
        .args([
            "--router",
            &cluster.router_urls()[0],
            "--token",
            "s3cret-token",
            "watch",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let out = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(out));
    let mut seen = Vec::new();
    let mut c = cluster.etcd.client().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut wrote = false;
    while tokio::time::Instant::now() < deadline {
        let Ok(Ok(Some(line))) =
            tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await
        else {
            if !wrote {
                continue;
            }
            break;
        };
        seen.push(line);
        if seen.len() == 3 && !wrote {
            wrote = true;
            c.put(
                cluster.prefix.gateway(&GatewayId::new("gw-b").unwrap()),
                record("gw-b", "z2", "draining", 11),
                None,
            )
            .await
            .unwrap();
            c.delete(
                cluster.prefix.gateway(&GatewayId::new("gw-c").unwrap()),
                None,
            )
            .await
            .unwrap();
        }
        if seen.iter().any(|l| l.contains("gw-c removed"))
            && seen.iter().any(|l| l.contains("serving→draining"))
        {
            break;
        }
    }
    assert!(
        seen.iter().filter(|l| l.contains("added")).count() >= 3,
        "{seen:#?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.contains("gw-b") && l.contains("state serving→draining")),
        "{seen:#?}"
    );
    assert!(seen.iter().any(|l| l.contains("gw-c removed")), "{seen:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_router_falls_back_to_etcd_or_says_what_to_check() {
    init_tracing();
    let cluster = cluster_with_records().await;
    let dead = format!("http://127.0.0.1:{}", switchyard_tests::free_port());
    let run = |extra: &[&str]| {
        Command::new(bin_path("switchyardctl"))
            .args(["--router", &dead, "--timeout", "1s"])
            .args(extra)
            .output()
            .unwrap()
    };
    let plain = run(&["gateways"]);
    assert!(!plain.status.success());
    let err = stderr(&plain);
    assert!(
        err.contains("router unreachable") && err.contains("--etcd"),
        "{err}"
    );

    let fallback = run(&[
        "--etcd",
        &cluster.etcd.endpoint(),
        "--prefix",
        cluster.prefix.as_str(),
        "gateways",
        "--output",
        "json",
    ]);
    assert!(fallback.status.success(), "{}", stderr(&fallback));
    let v: serde_json::Value = serde_json::from_slice(&fallback.stdout).unwrap();
    assert_eq!(v["source"], "etcd");
    assert_eq!(v["gateways"].as_array().unwrap().len(), 3);

    let unknown = cluster.ctl(&["--token", "s3cret-token", "drain", "no/such id"]);
    assert!(!unknown.status.success());
    assert!(!stderr(&unknown).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_once_prints_the_router_gateways_and_drains() {
    init_tracing();
    let cluster = cluster_with_records().await;
    let drained = cluster.ctl(&[
        "--token",
        "s3cret-token",
        "drain",
        "gw-a",
        "--reason",
        "kernel-upgrade",
    ]);
    assert!(drained.status.success(), "{}", stderr(&drained));

    // The frame is what the terminal UI draws, as text: poll until the router has applied
    // the drain (it arrives through its etcd watch).
    let frame = eventually(Duration::from_secs(10), "top shows the drain", || async {
        let out = cluster.ctl(&["--token", "s3cret-token", "top", "--once", "--width", "140"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let text = stdout(&out);
        text.contains("kernel-upgrade").then_some(text)
    })
    .await;
    let line = |needle: &str| {
        frame
            .lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in\n{frame}"))
    };
    let router = line(&cluster.router_urls()[0]);
    assert!(router.contains(" up "), "etcd link shown: {router}");
    assert!(
        frame.contains("gateways 3 (1 serving, 0 ejected)"),
        "totals: {frame}"
    );
    let b = line("│gw-b ");
    assert!(
        b.contains("serving") && b.contains("r1/z2") && b.contains("10/100") && b.contains("9.9.9"),
        "{b}"
    );
    assert!(
        b.contains("[##------------------]"),
        "load bar at 10 %: {b}"
    );
    assert!(line("│gw-c ").contains("unhealthy"), "{frame}");
    assert!(line("│gw-a ").contains("drained"), "{frame}");
    let drains = frame
        .split("drains in progress")
        .nth(1)
        .expect("a drains box");
    let drain_row = drains
        .lines()
        .find(|l| l.contains("gw-a"))
        .unwrap_or_else(|| panic!("gw-a in the drains box: {drains}"));
    assert!(
        drain_row.contains("ops")
            && drain_row.contains("40")
            && drain_row.contains("kernel-upgrade"),
        "{drain_row}"
    );
    assert!(!drains.contains("gw-b"), "only drains are listed: {drains}");

    // Without a terminal and without --once it says what to do instead of garbling a pipe.
    let piped = cluster.ctl(&["top", "--iterations", "1"]);
    assert_eq!(piped.status.code(), Some(1), "{}", stderr(&piped));
    assert!(stderr(&piped).contains("--once"), "{}", stderr(&piped));
}
