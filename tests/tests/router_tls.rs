//! The router serving gRPC over TLS (`--tls-cert`, `--tls-key`) with a certificate made in
//! the test: TLS clients (tonic and switchyardctl with `--ca-cert`) get answers, plain-text
//! clients do not.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use switchyard_tests::{Child, Etcd, bin_path, eventually, free_port, init_tracing, unique_prefix};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_clients_are_served_and_plain_text_is_refused() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();

    let port = free_port();
    let mut cmd = Command::new(bin_path("switchyard-router"));
    cmd.args(["--etcd", &etcd.endpoint(), "--prefix", prefix.as_str()])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(&cert_path)
        .arg("--tls-key")
        .arg(&key_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null());
    let _router = Child::spawn(cmd, "switchyard-router (tls)");

    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert.cert.pem()))
        .domain_name("localhost");
    let url = format!("https://127.0.0.1:{port}");
    let list = eventually(Duration::from_secs(20), "router answers over TLS", || {
        let (url, tls) = (url.clone(), tls.clone());
        async move {
            let channel = Endpoint::from_shared(url)
                .ok()?
                .tls_config(tls)
                .ok()?
                .connect()
                .await
                .ok()?;
            let mut c = RouterClient::new(channel);
            c.list_gateways(pb::ListGatewaysRequest {}).await.ok()
        }
    })
    .await;
    assert!(list.into_inner().gateways.is_empty());

    // Plain text on the TLS port gets no answer.
    let plain = async {
        let mut c = RouterClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()?;
        c.list_gateways(pb::ListGatewaysRequest {}).await.ok()
    };
    let plain = tokio::time::timeout(Duration::from_secs(5), plain).await;
    assert!(
        !matches!(plain, Ok(Some(_))),
        "plain text must not be served"
    );

    // switchyardctl trusts the router with --ca-cert.
    let out = Command::new(bin_path("switchyardctl"))
        .args(["--router", &format!("https://localhost:{port}")])
        .arg("--ca-cert")
        .arg(&cert_path)
        .args(["gateways", "--output", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "router");
}
