//! Observability as code: every metric that `deploy/prometheus/` rules and the
//! `deploy/grafana/` dashboard name is exported by a running cluster (a router and two
//! reference gateways, real processes on real etcd), every binary reports
//! `switchyard_build_info` and the process metrics, and every alert's runbook link lands
//! on a heading of docs/operations.md.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_proto::v1::RouteRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::router::http_get;
use switchyard_tests::{Cluster, GatewaySpec, init_tracing};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo_root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Our metric names in a PromQL expression (or any text): tokens in `switchyard_*`,
/// `switchyard:*` (recording rules) and `process_*`. Label names never take those forms, so
/// no PromQL parser is needed to tell them apart.
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find(|c: char| is_ident(c)) {
        let tail = &rest[start..];
        let end = tail.find(|c: char| !is_ident(c)).unwrap_or(tail.len());
        let token = &tail[..end];
        if token.starts_with("switchyard_")
            || token.starts_with("switchyard:")
            || token.starts_with("process_")
        {
            names.insert(token.to_owned());
        }
        rest = &tail[end..];
    }
    names
}

/// The rule file's expressions (every non-comment line: annotations name no metric) and its
/// recording rules' outputs.
fn rules() -> (BTreeSet<String>, BTreeSet<String>) {
    let text = read("deploy/prometheus/switchyard.rules.yml");
    let mut used = BTreeSet::new();
    let mut recorded = BTreeSet::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix("- record:") {
            recorded.insert(name.trim().to_owned());
        } else {
            used.extend(metric_names(line));
        }
    }
    assert!(
        recorded.len() >= 5 && used.len() >= 15,
        "the rule file was read: {recorded:?} {used:?}"
    );
    (used, recorded)
}

/// Every `expr` of the dashboard's panels and every templating `query`.
fn dashboard() -> BTreeSet<String> {
    let v: serde_json::Value =
        serde_json::from_str(&read("deploy/grafana/switchyard.json")).expect("dashboard JSON");
    let mut queries = Vec::new();
    for panel in v["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            queries.push(target["expr"].as_str().expect("expr").to_owned());
        }
    }
    for var in v["templating"]["list"].as_array().expect("templating") {
        if let Some(q) = var["query"].as_str() {
            queries.push(q.to_owned());
        }
    }
    assert!(queries.len() >= 15, "the dashboard was read: {queries:?}");
    queries.iter().flat_map(|q| metric_names(q)).collect()
}

/// Series names in a Prometheus text scrape (histograms as their `_bucket`, `_sum` and
/// `_count` series, as PromQL sees them).
fn scraped_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_exported_metrics() {
    init_tracing();
    let (rule_metrics, recorded) = rules();
    let wanted: BTreeSet<String> = rule_metrics
        .union(&dashboard())
        .filter(|m| !recorded.contains(*m))
        .cloned()
        .collect();
    // A name with a colon is a recording rule's output: if it is not recorded, no binary
    // can export it either.
    for m in &wanted {
        assert!(!m.contains(':'), "{m} is used but no rule records it");
    }

    let cluster = Cluster::start(
        1,
        &[
            GatewaySpec::new("gw-obs-1", "r1", "z1"),
            GatewaySpec::new("gw-obs-2", "r1", "z2"),
        ],
    )
    .await;
    // One real login through the router, so its latency histogram has a sample.
    let mut router = RouterClient::connect(cluster.router_urls()[0].clone())
        .await
        .expect("router");
    let answer = router
        .route(RouteRequest {
            client_id: "obs-client".into(),
            region: "r1".into(),
            zone: "z1".into(),
            ..Default::default()
        })
        .await
        .expect("route")
        .into_inner();
    assert_eq!(answer.gateways.len(), 2, "both gateways handed out");

    let mut targets: Vec<(String, std::net::SocketAddr)> = cluster
        .routers
        .iter()
        .map(|r| ("router".to_owned(), r.http))
        .collect();
    targets.extend(
        cluster
            .gateways
            .values()
            .map(|g| (g.spec.id.clone(), g.http)),
    );

    // Gauges appear with the first view and the first record write: poll, bounded, and
    // name what is still missing when time is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let scrapes = loop {
        let mut texts = Vec::new();
        let mut exported = BTreeSet::new();
        for (name, addr) in &targets {
            let (status, body) = http_get(*addr, "/metrics").await;
            assert_eq!(status, 200, "{name} /metrics");
            exported.extend(scraped_names(&body));
            texts.push((name.clone(), body));
        }
        let missing: Vec<&String> = wanted.difference(&exported).collect();
        if missing.is_empty() {
            break texts;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "deploy/ names metrics no binary exports: {missing:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // Every binary: build_info with version and commit, and the process metrics.
    let now = chrono::Utc::now().timestamp() as f64;
    for (name, text) in &scrapes {
        let info = text
            .lines()
            .find(|l| l.starts_with("switchyard_build_info{"))
            .unwrap_or_else(|| panic!("{name}: no build_info\n{text}"));
        assert!(
            info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
                && info.contains("commit=\"")
                && !info.contains("commit=\"\"")
                && info.ends_with(" 1"),
            "{name}: {info}"
        );
        let value = |series: &str| {
            switchyard_tests::agent::metric(text, series)
                .unwrap_or_else(|| panic!("{name}: no {series}"))
        };
        assert!(
            value("process_resident_memory_bytes") > 1e6,
            "{name}: resident memory"
        );
        assert!(value("process_open_fds") >= 3.0, "{name}: open fds");
        let started = value("process_start_time_seconds");
        assert!(
            started <= now + 1.0 && started > now - 600.0,
            "{name}: started at {started}, now {now}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{name}: cpu");
    }
}

#[test]
fn every_runbook_link_lands_on_a_heading() {
    let ops = read("docs/operations.md");
    // GitHub's anchors: lower case, spaces to '-', punctuation other than '-' dropped.
    let anchors: BTreeSet<String> = ops
        .lines()
        .filter(|l| l.starts_with('#'))
        .map(|l| {
            l.trim_start_matches('#')
                .trim()
                .to_lowercase()
                .chars()
                .filter_map(|c| match c {
                    ' ' => Some('-'),
                    c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                    _ => None,
                })
                .collect()
        })
        .collect();
    let rules = read("deploy/prometheus/switchyard.rules.yml");
    let alerts = rules.matches("- alert:").count();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: docs/operations.md#"))
        .collect();
    assert_eq!(links.len(), alerts, "every alert names its runbook");
    for link in links {
        assert!(
            anchors.contains(link),
            "runbook #{link} is not a heading of docs/operations.md"
        );
    }
}
