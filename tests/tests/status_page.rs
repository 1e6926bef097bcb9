//! The router's status page in a real browser: headless Chromium (Debian's `chromium`,
//! installed by .ci/run) renders it from a running router with gateways in two regions and
//! three zones; the rendered DOM has every region and zone group with its gateways and the
//! inline charts, and a screenshot is a real 1200×900 picture.

use std::path::Path;
use std::time::Duration;

use switchyard_proto::v1::RouteRequest;
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_tests::router::http_get;
use switchyard_tests::{Cluster, GatewaySpec, init_tracing};

/// Chromium's first start on a loaded 2-core machine is slow; nothing waits this long
/// unless it hangs.
const BROWSER_LIMIT: Duration = Duration::from_secs(120);

/// Runs headless Chromium with a fresh profile and `args`; returns its stdout.
async fn chromium(profile: &Path, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .kill_on_drop(true);
    let out = tokio::time::timeout(BROWSER_LIMIT, cmd.output())
        .await
        .expect("chromium finished in time")
        .expect("chromium runs (apt-get install chromium; .ci/run does it)");
    assert!(
        out.status.success(),
        "chromium {args:?}: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Width and height from a PNG's IHDR chunk.
fn png_size(bytes: &[u8]) -> (u32, u32) {
    assert!(
        bytes.len() > 24 && bytes.starts_with(b"\x89PNG\r\n\x1a\n") && &bytes[12..16] == b"IHDR",
        "a PNG"
    );
    let be = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
    (be(&bytes[16..20]), be(&bytes[20..24]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_groups_and_charts_in_chromium() {
    init_tracing();
    let cluster = Cluster::start(
        1,
        &[
            GatewaySpec::new("gw-east-a", "east", "a"),
            GatewaySpec::new("gw-east-b", "east", "b"),
            GatewaySpec::new("gw-west-c", "west", "c"),
        ],
    )
    .await;
    let http = cluster.routers[0].http;
    let mut router = RouterClient::connect(cluster.router_urls()[0].clone())
        .await
        .expect("router");

    // Charts need two samples (one every 5 s); route meanwhile until the rate line rises.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    loop {
        router
            .route(RouteRequest {
                client_id: format!("page-{n}"),
                region: "east".into(),
                ..Default::default()
            })
            .await
            .expect("route");
        n += 1;
        let (status, page) = http_get(http, "/").await;
        assert_eq!(status, 200);
        let rate = page
            .split("id=\"route-rate\"")
            .nth(1)
            .expect("route rate figure");
        let peak: f64 = rate
            .split("(peak ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.parse().ok())
            .expect("the caption names the peak");
        if rate.contains("<polyline") && peak > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no route-rate line above 0 after 60 s:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let url = format!("http://{http}/");
    let profile = tempfile::tempdir().expect("profile dir");
    let dom = chromium(profile.path(), &["--dump-dom", &url]).await;
    // Regions, their zones and their gateways, nested as rendered.
    let region = |name: &str| {
        dom.split(&format!("data-region=\"{name}\""))
            .nth(1)
            .and_then(|rest| rest.split("</section>").next())
            .unwrap_or_else(|| panic!("region {name} in the DOM:\n{dom}"))
            .to_owned()
    };
    let east = region("east");
    let west = region("west");
    assert!(
        east.contains("data-zone=\"a\"") && east.contains("data-zone=\"b\""),
        "{east}"
    );
    assert!(
        east.contains("2 gateways, 2 serving"),
        "region totals: {east}"
    );
    assert!(
        east.contains("data-gateway=\"gw-east-a\"") && east.contains("data-gateway=\"gw-east-b\""),
        "{east}"
    );
    assert!(!east.contains("gw-west-c"), "{east}");
    assert!(west.contains("data-zone=\"c\"") && west.contains("data-gateway=\"gw-west-c\""));
    assert!(
        dom.matches("<svg class=\"spark\"").count() == 3,
        "one connections chart per gateway"
    );
    assert!(dom.contains("<svg class=\"rate\""), "route-rate chart");
    assert!(!dom.contains("<script"), "self-contained: no scripts");

    let shot = profile.path().join("status.png");
    chromium(
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,900",
            &url,
        ],
    )
    .await;
    let png = std::fs::read(&shot).expect("screenshot written");
    // To look at it: SWITCHYARD_STATUS_SCREENSHOT=/tmp/status.png cargo test ... status_page
    if let Some(keep) = std::env::var_os("SWITCHYARD_STATUS_SCREENSHOT") {
        std::fs::write(keep, &png).expect("copy the screenshot");
    }
    assert_eq!(png_size(&png), (1200, 900));
    // A blank page compresses to a few hundred bytes; text, tables and charts do not.
    assert!(
        png.len() > 10_000,
        "screenshot has content: {} bytes",
        png.len()
    );
}
