//! The router serving gRPC over TLS (`--tls-cert`, `--tls-key`) with a certificate made in
//! the test: TLS clients (tonic and switchyardctl with `--ca-cert`) get answers, plain-text
//! clients do not; with `--client-ca`, a client certificate from that CA opens the Admin
//! service without a token, and a certificate from anyone else does not.

use std::process::Command;
use std::time::Duration;

use switchyard_proto::v1::admin_client::AdminClient;
use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use switchyard_tests::keys::Pki;
use switchyard_tests::{
    Child, Etcd, Launch, bin_path, eventually, init_tracing, start, unique_prefix,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// Starts a router with the command `command` builds for its gRPC port, and waits until
/// that port accepts TCP (the TLS handshake is what the scenarios test).
async fn start_router(name: &str, mut command: impl FnMut(u16) -> Command) -> (Child, u16) {
    let launch = Launch {
        name,
        ready: "router listens",
        limit: Duration::from_secs(20),
        echo: true,
    };
    let (child, [port], ()) = start(
        &launch,
        |[port]: [u16; 1]| command(port),
        |[port]: [u16; 1]| async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(drop)
        },
    )
    .await;
    (child, port)
}

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

    let (_router, port) = start_router("switchyard-router (tls)", |port| {
        let mut cmd = Command::new(bin_path("switchyard-router"));
        cmd.args(["--etcd", &etcd.endpoint(), "--prefix", prefix.as_str()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&cert_path)
            .arg("--tls-key")
            .arg(&key_path)
            .env("RUST_LOG", "warn");
        cmd
    })
    .await;

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

/// Drains `gw-mtls` through a TLS channel presenting `identity` (if any); `None` when the
/// connection itself fails.
async fn drain_with(url: &str, ca_pem: &str, identity: Option<Identity>) -> Option<tonic::Code> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel: Channel = Endpoint::from_shared(url.to_owned())
        .ok()?
        .tls_config(tls)
        .ok()?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()?;
    let request = pb::DrainRequest {
        gateway_id: "gw-mtls".into(),
        reason: "mtls test".into(),
        by: String::new(),
    };
    let answer = tokio::time::timeout(
        Duration::from_secs(5),
        AdminClient::new(channel).drain(request),
    )
    .await
    .ok()?;
    Some(match answer {
        Ok(_) => tonic::Code::Ok,
        Err(status) => status.code(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_from_the_client_ca_open_admin_and_others_do_not() {
    init_tracing();
    let etcd = Etcd::start().await;
    let client = etcd.client().await;
    let prefix = unique_prefix();
    let pki = Pki::new("localhost", "ops-tool");
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let (cert, key, ca) = (
        path("server.pem", &pki.server.0),
        path("server.key", &pki.server.1),
        path("ca.pem", &pki.ca_pem),
    );

    let (_router, port) = start_router("switchyard-router (mtls)", |port| {
        let mut cmd = Command::new(bin_path("switchyard-router"));
        cmd.args(["--etcd", &etcd.endpoint(), "--prefix", prefix.as_str()])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .arg("--tls-cert")
            .arg(&cert)
            .arg("--tls-key")
            .arg(&key)
            .arg("--client-ca")
            .arg(&ca)
            .env("RUST_LOG", "warn");
        cmd
    })
    .await;
    let url = format!("https://127.0.0.1:{port}");
    let drain_key = format!("{}/drain/gw-mtls", prefix.as_str());

    // No client certificate and no token: TLS works, Admin says who may call it.
    let anonymous = eventually(Duration::from_secs(20), "router answers over TLS", || {
        drain_with(&url, &pki.ca_pem, None)
    })
    .await;
    assert_eq!(anonymous, tonic::Code::Unauthenticated);

    // A certificate the client CA did not sign is refused (at the handshake or by Admin).
    let rogue = rcgen::generate_simple_self_signed(vec!["ops-tool".to_owned()]).unwrap();
    let rogue = Identity::from_pem(rogue.cert.pem(), rogue.signing_key.serialize_pem());
    let refused = drain_with(&url, &pki.ca_pem, Some(rogue)).await;
    assert_ne!(
        refused,
        Some(tonic::Code::Ok),
        "a rogue certificate opened Admin"
    );
    let mut kv = client.kv_client();
    let none = kv.get(drain_key.as_str(), None).await.unwrap();
    assert!(
        none.kvs().is_empty(),
        "nothing was written for refused callers"
    );

    // The CA's client certificate drains without a token.
    let ops = Identity::from_pem(&pki.client.0, &pki.client.1);
    assert_eq!(
        drain_with(&url, &pki.ca_pem, Some(ops)).await,
        Some(tonic::Code::Ok)
    );
    let written = kv.get(drain_key.as_str(), None).await.unwrap();
    assert_eq!(written.kvs().len(), 1, "the drain key is written");
}
