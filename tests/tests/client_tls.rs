//! TLS on gateway links: the client verifies the gateway against configured roots (a
//! checked-in self-signed `localhost` certificate, valid until 2125) over TCP+TLS and over
//! `wss://`, and refuses a gateway it cannot verify.

use std::path::PathBuf;
use std::time::Duration;

use switchyard_client::{
    Error, FailureKind, Gateway, GaveUp, Protocol, Setback, tls_from_pem_file,
};
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc, fast_client};
use switchyard_tests::init_tracing;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/tls")
        .join(name)
}

fn port(addr: &str) -> &str {
    addr.trim_start_matches("ws://")
        .split('/')
        .next()
        .and_then(|hp| hp.rsplit(':').next())
        .expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_wss_links_verify_the_gateway_against_configured_roots() {
    init_tracing();
    let gw = GatewayProc::start(
        "gw-tls",
        &GatewayOpts {
            tls: Some((fixture("localhost.crt"), fixture("localhost.key"))),
            ..Default::default()
        },
    )
    .await;
    let tls = tls_from_pem_file(fixture("localhost.crt")).unwrap();
    let tcp_addr = format!("localhost:{}", port(&gw.tcp));

    let tcp = fast_client("tls-1")
        .tls(tls.clone())
        .bootstrap([Gateway::new("gw-tls", &tcp_addr)])
        .build()
        .unwrap();
    let mut m = tcp.connect().await.unwrap();
    tcp.send("over tls").await.unwrap().await.unwrap();
    let echo = tokio::time::timeout(Duration::from_secs(2), m.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&echo[..], b"over tls");
    tcp.close().await;

    let wss = fast_client("tls-2")
        .protocol(Protocol::Ws)
        .tls(tls)
        .bootstrap([Gateway::new(
            "gw-tls",
            format!("wss://localhost:{}/ws", port(&gw.ws)),
        )])
        .build()
        .unwrap();
    let _m = wss.connect().await.unwrap();
    wss.send("over wss").await.unwrap().await.unwrap();
    wss.close().await;

    // The Mozilla roots do not vouch for the test certificate: refused, then GaveUp.
    let untrusted = fast_client("tls-3")
        .tls_webpki_roots()
        .max_attempts(1)
        .bootstrap([Gateway::new("gw-tls", &tcp_addr)])
        .build()
        .unwrap();
    let err = untrusted.connect().await.unwrap_err();
    let Error::GaveUp(GaveUp::AttemptLimit {
        last: Setback::Failed(tried),
        ..
    }) = &err
    else {
        panic!("{err}");
    };
    assert!(
        matches!(&tried[0].kind, FailureKind::Unreachable { detail } if detail.to_lowercase().contains("certificate")),
        "{err}"
    );
}
