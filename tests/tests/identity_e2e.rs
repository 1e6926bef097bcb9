//! The whole login path of DESIGN contract 5 with real processes: an app JWT → a router
//! over TLS (`--app-jwks`, `--ticket-key`) → a login ticket → a gateway over TLS in
//! `ticket` mode that learns the routers' keys from `/v1/ticket-keys`. The client connects
//! and echoes; refused app tokens end in `GaveUp::Unauthenticated`; the app token alone does
//! not get past a ticket gateway (balancing cannot be bypassed); and Python's PyJWT checks
//! a ticket against the router's JWKS, proving the tickets are standard JWTs.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchyard_client::{Error, GaveUp, tls_with_roots};
use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use switchyard_proto::wire::Frame;
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc, fast_client, http_get};
use switchyard_tests::keys::Pki;
use switchyard_tests::rawclient::{Proto, RawClient};
use switchyard_tests::router::with_token;
use switchyard_tests::{Child, Etcd, Launch, bin_path, eventually, init_tracing, start};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

/// The app's login service signs app tokens with this HS256 secret (`kid` "app-1").
const APP_SECRET: &[u8] = b"the-login-service-signing-secret";
/// The ops token (reads the topology).
const OPS_TOKEN: &str = "e2e-ops-token";

/// An app token for `sub`, expiring `ttl_secs` from now (negative: already expired).
fn app_token(sub: &str, ttl_secs: i64) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("app-1".into());
    let exp = switchyard_identity::unix_now() as i64 + ttl_secs;
    let claims = serde_json::json!({ "sub": sub, "exp": exp });
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(APP_SECRET).unwrap(),
    )
    .unwrap()
}

/// etcd, a TLS router with app-token auth and ticket keys, a TLS gateway in ticket mode.
struct Setup {
    /// Kept alive for the router and the agent.
    _etcd: Etcd,
    /// The router process.
    _router: Child,
    /// `https://127.0.0.1:<port>`.
    url: String,
    /// The router's HTTP side port.
    http: String,
    /// The gateway (and its agent sidecar).
    gateway: GatewayProc,
    /// Certificates.
    pki: Pki,
    /// Key files.
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let prefix = switchyard_tests::unique_prefix();
        let pki = Pki::new("127.0.0.1", "app-client");
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| -> PathBuf {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(APP_SECRET);
        let app_jwks = file(
            "app-jwks.json",
            &format!(r#"{{"keys":[{{"kty":"oct","kid":"app-1","alg":"HS256","k":"{k}"}}]}}"#),
        );
        let ticket_key = file(
            "ticket-key.pem",
            &switchyard_identity::generate_ed25519_pem(),
        );
        let (cert, key) = (
            file("server.pem", &pki.server.0),
            file("server.key", &pki.server.1),
        );

        let launch = Launch {
            name: "switchyard-router (e2e)",
            ready: "router listens",
            limit: Duration::from_secs(20),
            echo: true,
        };
        let (router, [grpc, http], ()) = start(
            &launch,
            |[grpc, http]: [u16; 2]| {
                let mut cmd = Command::new(bin_path("switchyard-router"));
                cmd.args(["--etcd", &etcd.endpoint(), "--prefix", prefix.as_str()])
                    .args(["--listen", &format!("127.0.0.1:{grpc}")])
                    .args(["--http-listen", &format!("127.0.0.1:{http}")])
                    .args(["--admin-token", OPS_TOKEN])
                    .arg("--app-jwks")
                    .arg(&app_jwks)
                    .arg("--ticket-key")
                    .arg(&ticket_key)
                    .arg("--tls-cert")
                    .arg(&cert)
                    .arg("--tls-key")
                    .arg(&key)
                    .env("RUST_LOG", "warn");
                cmd
            },
            |[_, http]: [u16; 2]| async move {
                http_get(&format!("127.0.0.1:{http}"), "/v1/ticket-keys")
                    .await
                    .map(drop)
            },
        )
        .await;
        let http = format!("127.0.0.1:{http}");

        let mut gateway = GatewayProc::start(
            "gw-e2e",
            &GatewayOpts {
                tls: Some((cert.clone(), key.clone())),
                args: vec![
                    "--auth".into(),
                    "ticket".into(),
                    "--ticket-jwks-url".into(),
                    format!("http://{http}/v1/ticket-keys"),
                ],
                ..GatewayOpts::default()
            },
        )
        .await;
        gateway.register(&etcd.endpoint(), prefix.as_str());

        let setup = Self {
            _etcd: etcd,
            _router: router,
            url: format!("https://127.0.0.1:{grpc}"),
            http,
            gateway,
            pki,
            _dir: dir,
        };
        eventually(
            Duration::from_secs(20),
            "the router hands out gw-e2e",
            || {
                let setup = &setup;
                async move {
                    let list = setup
                        .grpc()
                        .await?
                        .list_gateways(with_token(pb::ListGatewaysRequest {}, OPS_TOKEN))
                        .await
                        .ok()?;
                    list.get_ref()
                        .gateways
                        .iter()
                        .any(|g| g.id == "gw-e2e" && g.state == "serving")
                        .then_some(())
                }
            },
        )
        .await;
        setup
    }

    /// A tonic client trusting the private CA.
    async fn grpc(&self) -> Option<RouterClient<tonic::transport::Channel>> {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.pki.ca_pem));
        let channel = Endpoint::from_shared(self.url.clone())
            .ok()?
            .tls_config(tls)
            .ok()?
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .ok()?;
        Some(RouterClient::new(channel))
    }

    /// What the client trusts for the gateway link.
    fn gateway_tls(&self) -> std::sync::Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(self.pki.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        tls_with_roots(roots)
    }

    fn client(&self, client_id: &str, token: String) -> switchyard_client::Client {
        fast_client(client_id)
            .routers([self.url.clone()])
            .router_ca_pem(self.pki.ca_pem.clone())
            .tls(self.gateway_tls())
            .token(token)
            .max_attempts(3)
            .build()
            .unwrap()
    }
}

use rustls_pki_types::pem::PemObject as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_token_buys_a_ticket_that_opens_the_gateway_over_tls_and_nothing_else_does() {
    let s = Setup::start().await;

    // The happy path: app JWT → router (TLS) → ticket → gateway (TLS, ticket mode) → echo.
    let alice = s.client("alice", app_token("alice", 300));
    let mut messages = tokio::time::timeout(Duration::from_secs(15), alice.connect())
        .await
        .expect("alice connects in time")
        .expect("alice connects");
    assert_eq!(alice.gateway().as_deref(), Some("gw-e2e"));
    let receipt = alice.send(&b"hello over tls"[..]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), receipt)
        .await
        .expect("acked in time")
        .expect("delivered");
    let echo = tokio::time::timeout(Duration::from_secs(5), messages.recv())
        .await
        .expect("echo in time")
        .expect("an echo");
    assert_eq!(&echo[..], b"hello over tls");
    alice.close().await;

    // An expired app token, and alice's token presented by bob: the router refuses, the
    // client gives up with the router's reason instead of retrying.
    for (who, token, reason) in [
        ("carol", app_token("carol", -3600), "expired"),
        ("bob", app_token("alice", 300), "another client"),
    ] {
        let c = s.client(who, token);
        let err = tokio::time::timeout(Duration::from_secs(15), c.connect())
            .await
            .expect("gives up in time")
            .unwrap_err();
        match &err {
            Error::GaveUp(GaveUp::Unauthenticated { message, .. }) => {
                assert!(message.contains(reason), "{who}: {message}")
            }
            other => panic!("{who}: expected GaveUp::Unauthenticated, got {other}"),
        }
    }

    // Dialling the gateway directly with a good app token does not bypass the routers: a
    // ticket-mode gateway admits only tickets.
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types::CertificateDer::pem_slice_iter(s.pki.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let addr = s.gateway.tcp.parse().unwrap();
    let mut raw = RawClient::connect_tls(Proto::Tcp, addr, roots, "127.0.0.1").await;
    match raw.hello("mallory", &app_token("mallory", 300)).await {
        // Its key is not a router's: AUTH_EXPIRED (route for a ticket), or AUTH.
        Frame::Reject(r) => assert!(
            [
                pb::RejectCode::AuthExpired as i32,
                pb::RejectCode::Auth as i32
            ]
            .contains(&r.code),
            "refused with an auth code: {r:?}"
        ),
        other => panic!("an app token at a ticket gateway: expected REJECT, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyjwt_verifies_a_ticket_against_the_routers_jwks() {
    let s = Setup::start().await;
    let jwks = http_get(&s.http, "/v1/ticket-keys")
        .await
        .expect("the router serves its ticket keys");
    let mut router = s.grpc().await.expect("router answers over TLS");
    let answer = router
        .route(with_token(
            pb::RouteRequest {
                client_id: "py-user".into(),
                ..Default::default()
            },
            &app_token("py-user", 300),
        ))
        .await
        .expect("a good app token routes")
        .into_inner();
    assert!(
        !answer.ticket.is_empty(),
        "every real answer carries a ticket"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("jwks.json"), &jwks).unwrap();
    std::fs::write(dir.path().join("ticket"), &answer.ticket).unwrap();
    let script = r#"
import json, sys, jwt
keys = json.load(open(sys.argv[1]))["keys"]
token = open(sys.argv[2]).read().strip()
kid = jwt.get_unverified_header(token)["kid"]
key = next(jwt.PyJWK(k) for k in keys if k["kid"] == kid)
claims = jwt.decode(token, key.key, algorithms=["EdDSA"], options={"require": ["exp", "iat", "sub", "jti"]})
print(json.dumps({"sub": claims["sub"], "gws": claims["gws"], "life": claims["exp"] - claims["iat"]}))
# A tampered payload must not verify.
head, body, sig = token.split(".")
other = jwt.utils.base64url_encode(json.dumps({**claims, "sub": "someone-else"}).encode()).decode()
try:
    jwt.decode(".".join([head, other, sig]), key.key, algorithms=["EdDSA"])
    print("TAMPERED-ACCEPTED")
except jwt.InvalidSignatureError:
    pass
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(dir.path().join("jwks.json"))
        .arg(dir.path().join("ticket"))
        .output()
        .expect("python3 runs (tools/test-all installs PyJWT)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "PyJWT rejected the ticket: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!stdout.contains("TAMPERED-ACCEPTED"), "{stdout}");
    let claims: serde_json::Value =
        serde_json::from_str(stdout.lines().next().unwrap_or("")).expect("claims as JSON");
    assert_eq!(claims["sub"], "py-user");
    assert_eq!(claims["gws"], serde_json::json!(["gw-e2e"]));
    assert_eq!(claims["life"], 60, "default ticket lifetime");
    assert_eq!(
        answer.ticket_valid_for_ms / 1000,
        60,
        "{}",
        answer.ticket_valid_for_ms
    );
}
