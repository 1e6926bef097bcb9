//! The client's side of DESIGN contract 5, against a real etcd, a real `switchyard-router`
//! process serving TLS from a private CA with a route token, and a scripted gateway peer
//! registered in etcd: the app token reaches the router as `authorization: Bearer` over
//! https (also with a client certificate), a wrong token ends in `GaveUp::Unauthenticated`
//! after at most two Route calls and never falls back to the bootstrap list, REJECT
//! AUTH_EXPIRED costs exactly one more Route call, twice in a row is terminal, and HELLO
//! carries the router's ticket when there is one and the app token from the cache or the
//! bootstrap list.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use switchyard_client::{Error, Event, FailureKind, GaveUp, RejectCode, RouteSource, Setback};
use switchyard_proto::v1::{self as pb, router_client::RouterClient};
use switchyard_tests::client_kit;
use switchyard_tests::keys::Pki;
use switchyard_tests::router::{http_get, put_record, record, with_token};
use switchyard_tests::scripted::{Answer, ScriptedGateway};
use switchyard_tests::{Child, Etcd, Launch, bin_path, eventually, init_tracing, start};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};

const APP_TOKEN: &str = "app-token-for-the-router";
/// The ops token: the only token (besides a client certificate) that reads the topology.
const OPS_TOKEN: &str = "ops-token-for-the-test";

const WELCOME: Answer = Answer::Welcome {
    heartbeat_interval_ms: 0,
    idle_timeout_ms: 0,
};

/// etcd, a TLS router requiring [`APP_TOKEN`], and a scripted gateway `gw-s` it hands out.
struct Setup {
    /// Kept alive for the router.
    _etcd: Etcd,
    /// The router process.
    router: Child,
    /// `https://127.0.0.1:<port>`.
    url: String,
    /// The router's HTTP side port (`/metrics`).
    http: SocketAddr,
    /// The certificates.
    pki: Pki,
    /// The gateway every Route answer names.
    peer: ScriptedGateway,
    /// Holds the PEM files the router reads.
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Self {
        init_tracing();
        let etcd = Etcd::start().await;
        let prefix = switchyard_tests::unique_prefix();
        let peer = ScriptedGateway::start(WELCOME, true).await;
        let mut rec = record("gw-s", "r1", "z1", 1000, 0);
        rec["addrs"]["tcp"] = peer.addr.clone().into();
        put_record(&mut etcd.client().await, &prefix, &rec).await;

        let pki = Pki::new("127.0.0.1", "app-client");
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (cert, key, ca) = (
            file("router.pem", &pki.server.0),
            file("router.key", &pki.server.1),
            file("ca.pem", &pki.ca_pem),
        );
        let launch = Launch {
            name: "switchyard-router (tls, route token)",
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
                    .args(["--route-token", APP_TOKEN])
                    .args(["--admin-token", OPS_TOKEN])
                    .arg("--tls-cert")
                    .arg(&cert)
                    .arg("--tls-key")
                    .arg(&key)
                    .arg("--client-ca")
                    .arg(&ca)
                    .env("RUST_LOG", "warn");
                cmd
            },
            |[grpc, _]: [u16; 2]| async move {
                tokio::net::TcpStream::connect(("127.0.0.1", grpc))
                    .await
                    .ok()
                    .map(drop)
            },
        )
        .await;
        let setup = Self {
            _etcd: etcd,
            router,
            url: format!("https://127.0.0.1:{grpc}"),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            pki,
            peer,
            _dir: dir,
        };
        // ListGateways, not Route: the Route counters stay the clients' own.
        eventually(
            Duration::from_secs(20),
            "router serves gw-s over TLS",
            || {
                let setup = &setup;
                async move {
                    let mut c = setup.grpc().await?;
                    let list = c
                        .list_gateways(with_token(pb::ListGatewaysRequest {}, OPS_TOKEN))
                        .await
                        .ok()?;
                    list.get_ref()
                        .gateways
                        .iter()
                        .any(|g| g.id == "gw-s")
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
            .connect()
            .await
            .ok()?;
        Some(RouterClient::new(channel))
    }

    /// Route calls the router answered with `code` (`ok`, `unauthenticated`) so far.
    async fn routes(&self, code: &str) -> u64 {
        let (status, body) = http_get(self.http, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let series = format!("switchyard_router_routes_total{{code=\"{code}\"}}");
        body.lines()
            .find_map(|l| l.strip_prefix(&series))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(0, |v| v as u64)
    }

    /// The ticket this router puts in a Route answer for `client_id` (empty while routers
    /// issue none): the same key signs every ticket, so the JWT header names it.
    async fn probe_ticket(&self, client_id: &str) -> String {
        let mut c = self.grpc().await.expect("router over TLS");
        let req = pb::RouteRequest {
            client_id: client_id.into(),
            ..Default::default()
        };
        c.route(with_token(req, APP_TOKEN))
            .await
            .expect("route with the app token")
            .into_inner()
            .ticket
    }
}

/// The test client preset, with room for a TLS handshake on a loaded 2-core machine.
fn fast_client(client_id: &str) -> switchyard_client::Builder {
    client_kit::fast_client(client_id).route_timeout(Duration::from_secs(5))
}

/// Checks a HELLO token against what the router issues: its ticket (same signing key, not
/// the app token) when it issues tickets, else the app token.
fn assert_hello_credential(hello_token: &str, probe_ticket: &str) {
    if probe_ticket.is_empty() {
        assert_eq!(
            hello_token, APP_TOKEN,
            "no ticket issued: HELLO has the app token"
        );
    } else {
        assert_ne!(hello_token, APP_TOKEN, "a routed HELLO carries the ticket");
        assert_eq!(hello_token.split('.').count(), 3, "a compact JWT");
        assert_eq!(
            hello_token.split('.').next(),
            probe_ticket.split('.').next(),
            "signed by the router's ticket key"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_router_behind_a_private_ca_gets_the_app_token_as_bearer_with_or_without_a_client_certificate()
 {
    let s = Setup::start().await;
    let probe = s.probe_ticket("id-https").await;
    let client = fast_client("id-https")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .token(APP_TOKEN)
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    assert_eq!(client.gateway().as_deref(), Some("gw-s"));
    assert_eq!(client.route_source(), Some(RouteSource::Router));
    // The router requires the token: an answer at all means it saw the bearer.
    assert!(s.routes("ok").await >= 2, "the probe and the client");
    assert_eq!(s.routes("unauthenticated").await, 0);
    assert_hello_credential(&s.peer.hello_tokens()[0], &probe);
    client.close().await;

    // mTLS: the CA's client certificate is presented and accepted...
    let mtls = fast_client("id-mtls")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .router_client_cert_pem(s.pki.client.0.clone(), s.pki.client.1.clone())
        .token(APP_TOKEN)
        .build()
        .unwrap();
    let _m = mtls.connect().await.unwrap();
    assert_eq!(mtls.route_source(), Some(RouteSource::Router));
    mtls.close().await;
    // ...and a certificate the router's client CA did not sign is refused at the handshake
    // (proof that the client presents what it is given).
    let rogue = rcgen::generate_simple_self_signed(vec!["rogue".to_owned()]).unwrap();
    let rogue = fast_client("id-rogue")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .router_client_cert_pem(rogue.cert.pem(), rogue.signing_key.serialize_pem())
        .token(APP_TOKEN)
        .max_attempts(1)
        .build()
        .unwrap();
    match rogue.connect().await.unwrap_err() {
        Error::GaveUp(GaveUp::AttemptLimit {
            last: Setback::NoCandidates { detail },
            ..
        }) => assert!(detail.contains("no router answered"), "{detail}"),
        other => panic!("{other}"),
    }

    // The Mozilla roots do not vouch for a private CA: no answer, nothing sent in clear.
    let untrusted = fast_client("id-untrusted")
        .routers([s.url.clone()])
        .token(APP_TOKEN)
        .max_attempts(1)
        .build()
        .unwrap();
    assert!(matches!(
        untrusted.connect().await.unwrap_err(),
        Error::GaveUp(GaveUp::AttemptLimit {
            last: Setback::NoCandidates { .. },
            ..
        })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_app_token_gives_up_unauthenticated_promptly_without_a_fallback() {
    let s = Setup::start().await;
    let client = fast_client("id-wrong")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .token("not-the-token")
        // A usable bootstrap list: the refusal must not be hidden behind it.
        .bootstrap([s.peer.gateway("gw-s")])
        .build()
        .unwrap();
    let t = tokio::time::Instant::now();
    let err = tokio::time::timeout(Duration::from_secs(10), client.connect())
        .await
        .expect("connect() ends promptly")
        .unwrap_err();
    match &err {
        Error::GaveUp(GaveUp::Unauthenticated { router, message }) => {
            assert_eq!(router, &s.url);
            assert!(message.contains("Bearer"), "{message}");
        }
        other => panic!("{other}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The first call and one retry with a fresh token: never a storm.
    assert_eq!(s.routes("unauthenticated").await, 2);
    assert_eq!(s.routes("ok").await, 0);
    assert!(
        s.peer.hellos().is_empty(),
        "no fallback to the bootstrap list"
    );
    let history = client.history();
    assert!(
        history.iter().any(|e| matches!(
            e,
            Event::Reconnecting {
                after: Setback::Unauthenticated { .. },
                ..
            }
        )),
        "the one fresh-token retry is announced: {history:?}"
    );
    assert!(
        !format!("{history:?}{err:?}").contains("not-the-token"),
        "the token never shows"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_expired_routes_once_more_and_a_second_one_in_a_row_is_terminal() {
    let s = Setup::start().await;
    let probe = s.probe_ticket("id-expired").await;
    let before = s.routes("ok").await;
    s.peer
        .then_answer([Answer::Reject(RejectCode::AuthExpired, 0)]);
    let calls = Arc::new(AtomicU32::new(0));
    let client = fast_client("id-expired")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .token_provider({
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok::<_, String>(APP_TOKEN.into()) }
            }
        })
        .build()
        .unwrap();
    let _m = client.connect().await.unwrap();
    assert_eq!(client.gateway().as_deref(), Some("gw-s"));
    assert_eq!(s.routes("ok").await - before, 2, "exactly one re-route");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "one token per round, for its Route and its HELLO"
    );
    let tokens = s.peer.hello_tokens();
    assert_eq!(tokens.len(), 2);
    for t in &tokens {
        assert_hello_credential(t, &probe);
    }
    if !probe.is_empty() {
        assert_ne!(tokens[0], tokens[1], "the retry carries a fresh ticket");
    }
    assert!(client.history().iter().any(|e| matches!(
        e,
        Event::Reconnecting { after: Setback::Failed(f), .. }
            if matches!(f[0].kind, FailureKind::Refused { code: RejectCode::AuthExpired, .. })
    )));
    client.close().await;

    let before = s.routes("ok").await;
    s.peer.then_answer([
        Answer::Reject(RejectCode::AuthExpired, 0),
        Answer::Reject(RejectCode::AuthExpired, 0),
    ]);
    let client = fast_client("id-expired-twice")
        .routers([s.url.clone()])
        .router_ca_pem(s.pki.ca_pem.clone())
        .token(APP_TOKEN)
        .build()
        .unwrap();
    match client.connect().await.unwrap_err() {
        Error::GaveUp(GaveUp::Refused { gateway, code, .. }) => {
            assert_eq!(gateway, "gw-s");
            assert_eq!(code, RejectCode::AuthExpired);
        }
        other => panic!("{other}"),
    }
    assert_eq!(s.routes("ok").await - before, 2, "one re-route, no more");
    assert_eq!(s.peer.hellos().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_the_cache_or_the_bootstrap_list_hello_carries_the_app_token() {
    let mut s = Setup::start().await;
    let probe = s.probe_ticket("id-cache").await;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("gateways.json");
    let builder = || {
        fast_client("id-cache")
            .routers([s.url.clone()])
            .router_ca_pem(s.pki.ca_pem.clone())
            .token(APP_TOKEN)
            .cache_file(&cache)
    };
    let routed = builder().build().unwrap();
    let _m = routed.connect().await.unwrap();
    assert_eq!(routed.route_source(), Some(RouteSource::Router));
    routed.close().await;
    assert_hello_credential(&s.peer.hello_tokens()[0], &probe);

    // Every router down: the cached list, and the app token in HELLO.
    s.router.kill();
    let cached = builder().build().unwrap();
    let _m = cached.connect().await.unwrap();
    assert_eq!(cached.route_source(), Some(RouteSource::Cache));
    cached.close().await;
    assert_eq!(s.peer.hello_tokens()[1], APP_TOKEN);

    // No router at all: the bootstrap list, and the app token.
    let boot = fast_client("id-boot")
        .token(APP_TOKEN)
        .bootstrap([s.peer.gateway("gw-s")])
        .build()
        .unwrap();
    let _m = boot.connect().await.unwrap();
    assert_eq!(boot.route_source(), Some(RouteSource::Bootstrap));
    boot.close().await;
    assert_eq!(s.peer.hello_tokens()[2], APP_TOKEN);
}
