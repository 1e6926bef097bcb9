//! DESIGN contract 5 at the router, with real etcd and a real `switchyard-router` process:
//! Route needs an app JWT (or the route/admin token), every real answer carries a login
//! ticket that verifies against the JWKS the router publishes at `/v1/ticket-keys`, the
//! ticket key rotates by rewriting its file, failure reports count per authenticated
//! identity, and an exposed router refuses to start without auth. (Build the binary first
//! when running this file alone: `cargo build -p switchyard-router --bins`.)

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use switchyard_identity::{KeySet, Refusal, TicketSigner, Tickets, generate_ed25519_pem, unix_now};
use switchyard_proto::v1::router_client::RouterClient;
use switchyard_proto::v1::{Failure, ListGatewaysRequest, RouteRequest, RouteResponse};
use switchyard_tests::router::{http_get, ids, put_record, record, route_req, with_token};
use switchyard_tests::{
    Child, Etcd, Launch, bin_path, eventually, init_tracing, start, unique_prefix,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::Channel;

/// The app login service's HS256 secret (published to the router as an `oct` JWKS).
const APP_SECRET: &[u8] = b"the-app-login-service-secret";
const APP_KID: &str = "app-1";
const ROUTE_TOKEN: &str = "route-token-123";
const ADMIN_TOKEN: &str = "admin-token-123";

/// An app JWT as the app's login service would issue it.
fn app_token(kid: &str, secret: &[u8], sub: &str, exp: u64) -> String {
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some(kid.into());
    let claims = serde_json::json!({"sub": sub, "exp": exp, "iat": unix_now()});
    encode(&h, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
}

fn good_token(sub: &str) -> String {
    app_token(APP_KID, APP_SECRET, sub, unix_now() + 300)
}

/// Writes `text` to `path` the way an operator's tooling should: a temporary file renamed
/// over it, so the router never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A running router process and its files.
struct Router {
    child: Child,
    grpc: SocketAddr,
    http: SocketAddr,
    ticket_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl Router {
    /// Starts a router over `prefix` with app tokens, the route and admin tokens, and a
    /// ticket key (`pem`), once its view is loaded.
    async fn start(etcd: &Etcd, prefix: &str, pem: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("app.jwks");
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(APP_SECRET);
        std::fs::write(
            &jwks,
            format!(r#"{{"keys":[{{"kty":"oct","kid":"{APP_KID}","alg":"HS256","k":"{k}"}}]}}"#),
        )
        .unwrap();
        let ticket_key = dir.path().join("tickets.pem");
        std::fs::write(&ticket_key, pem).unwrap();
        let command = |[grpc, http]: [u16; 2]| {
            let mut cmd = Command::new(bin_path("switchyard-router"));
            cmd.args(["--etcd", &etcd.endpoint(), "--prefix", prefix])
                .args(["--listen", &format!("127.0.0.1:{grpc}")])
                .args(["--http-listen", &format!("127.0.0.1:{http}")])
                .arg("--app-jwks")
                .arg(&jwks)
                .arg("--ticket-key")
                .arg(&ticket_key)
                .args(["--route-token", ROUTE_TOKEN, "--admin-token", ADMIN_TOKEN])
                .env("RUST_LOG", "warn");
            cmd
        };
        let launch = Launch {
            name: "switchyard-router (identity)",
            ready: "router /healthz says ok",
            limit: Duration::from_secs(20),
            echo: true,
        };
        let ready = |[_, http]: [u16; 2]| async move {
            let http = SocketAddr::from(([127, 0, 0, 1], http));
            tokio::net::TcpStream::connect(http).await.ok()?;
            (http_get(http, "/healthz").await.0 == 200).then_some(())
        };
        let (child, [grpc, http], ()) = start(&launch, command, ready).await;
        Self {
            child,
            grpc: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            ticket_key,
            _dir: dir,
        }
    }

    async fn client(&self) -> RouterClient<Channel> {
        RouterClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("connect to router")
    }

    /// The published ticket keys, and the `cache-control` they came with.
    async fn ticket_keys(&self) -> (KeySet, String) {
        let raw = raw_http(self.http, "GET /v1/ticket-keys HTTP/1.0\r\nHost: x\r\n\r\n").await;
        let (head, body) = raw.split_once("\r\n\r\n").expect("an HTTP answer");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{raw}"
        );
        let cache = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("cache-control:")
                    .map(|v| v.trim().to_owned())
            })
            .unwrap_or_default();
        (KeySet::from_jwks(body.as_bytes()).expect("a JWKS"), cache)
    }
}

/// One HTTP exchange on a fresh connection; the whole answer.
async fn raw_http(addr: SocketAddr, request: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect http");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut buf = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut buf))
        .await
        .expect("http answer in time")
        .expect("read http");
    buf
}

/// Four serving gateways under `prefix`, and the router sees them.
async fn fleet(etcd: &Etcd, prefix: &switchyard_registry::Prefix) {
    let mut kv = etcd.client().await;
    for id in ["gw-1", "gw-2", "gw-3", "gw-4"] {
        put_record(&mut kv, prefix, &record(id, "r", "z", 1000, 0)).await;
    }
}

async fn wait_all_listed(c: &RouterClient<Channel>) {
    eventually(
        Duration::from_secs(15),
        "router lists the 4 gateways",
        || {
            let mut c = c.clone();
            async move {
                let r = c
                    .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
                    .await
                    .ok()?;
                (r.get_ref().gateways.len() == 4).then_some(())
            }
        },
    )
    .await;
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .unwrap_or_default()
}

fn verify_all(keys: KeySet, resp: &RouteResponse, client: &str) {
    let tickets = Tickets::new(Arc::new(Arc::new(keys)), Duration::from_secs(5));
    for gw in ids(resp) {
        let claims = tickets
            .verify(&resp.ticket, client, &gw)
            .expect("ticket verifies");
        assert_eq!(
            claims.gws,
            ids(resp),
            "the ticket names exactly the answered gateways"
        );
        assert_eq!(claims.sub, client);
    }
    assert_eq!(
        tickets.verify(&resp.ticket, "someone-else", &ids(resp)[0]),
        Err(Refusal::WrongSubject)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_needs_an_app_token_and_answers_with_a_ticket_whose_key_rotates() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    fleet(&etcd, &prefix).await;
    let key_a = generate_ed25519_pem();
    let router = Router::start(&etcd, prefix.as_str(), &key_a).await;
    let mut c = router.client().await;
    wait_all_listed(&c).await;

    // Every refusal is UNAUTHENTICATED with its reason, never the token.
    let exp = unix_now() + 300;
    let refusals = [
        (None, "no token presented"),
        (
            Some(app_token(APP_KID, APP_SECRET, "mallory", exp)),
            "issued to another client",
        ),
        (
            Some(app_token(APP_KID, APP_SECRET, "alice", unix_now() - 120)),
            "expired",
        ),
        (
            Some(app_token("app-9", APP_SECRET, "alice", exp)),
            "unknown key",
        ),
        (
            Some(app_token(APP_KID, b"a-forged-secret", "alice", exp)),
            "bad signature",
        ),
    ];
    for (token, why) in &refusals {
        let req = match token {
            Some(t) => with_token(route_req("alice"), t),
            None => tonic::Request::new(route_req("alice")),
        };
        let e = c.route(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{why}: {e:?}");
        assert!(e.message().contains(why), "{why}: {}", e.message());
        if let Some(t) = token {
            assert!(!e.message().contains(t.as_str()));
        }
    }

    // A good app token: an answer with a ticket for exactly its gateways, verifiable with
    // the published keys (Ed25519, cacheable for 30 s).
    let resp = c
        .route(with_token(route_req("alice"), &good_token("alice")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.gateways.len(), 3, "default limit 3 of 4");
    assert_eq!(resp.ticket_valid_for_ms, 60_000, "default lifetime");
    let (keys, cache) = router.ticket_keys().await;
    assert_eq!(cache, "max-age=30");
    let kid_a = TicketSigner::from_pem(key_a.as_bytes(), Duration::from_secs(60))
        .unwrap()
        .kid()
        .to_owned();
    assert_eq!(keys.kids(), [kid_a.as_str()]);
    let unanswered = ["gw-1", "gw-2", "gw-3", "gw-4"]
        .into_iter()
        .find(|g| !ids(&resp).iter().any(|i| i == g))
        .unwrap();
    let tickets = Tickets::new(
        Arc::new(Arc::new(router.ticket_keys().await.0)),
        Duration::from_secs(5),
    );
    assert_eq!(
        tickets.verify(&resp.ticket, "alice", unanswered),
        Err(Refusal::NotForGateway)
    );
    verify_all(keys, &resp, "alice");

    // The route and admin tokens stay accepted for trusted backends, with tickets too.
    for token in [ROUTE_TOKEN, ADMIN_TOKEN] {
        let r = c
            .route(with_token(route_req("bob"), token))
            .await
            .unwrap()
            .into_inner();
        assert!(!r.ticket.is_empty());
    }
    // Previews are not logins: no ticket.
    for (explain, dry_run) in [(true, false), (false, true)] {
        let req = RouteRequest {
            explain,
            dry_run,
            ..route_req("alice")
        };
        let r = c
            .route(with_token(req, &good_token("alice")))
            .await
            .unwrap()
            .into_inner();
        assert!(r.ticket.is_empty() && r.ticket_valid_for_ms == 0, "{r:?}");
    }

    // Over HTTP/JSON: the same auth and the same ticket.
    let body = r#"{"clientId":"alice"}"#;
    let post = |bearer: Option<String>| {
        let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        format!(
            "POST /v1/route HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let refused = raw_http(router.grpc, &post(None)).await;
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");
    let answered = raw_http(router.grpc, &post(Some(good_token("alice")))).await;
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let json: serde_json::Value =
        serde_json::from_str(answered.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(kid_of(json["ticket"].as_str().unwrap()), kid_a);
    assert_eq!(json["ticketValidForMs"], "60000");

    // The topology needs the ops token: not the route token, not an app token.
    for token in [
        None,
        Some(ROUTE_TOKEN.to_owned()),
        Some(good_token("alice")),
    ] {
        let req = match &token {
            Some(t) => with_token(ListGatewaysRequest {}, t),
            None => tonic::Request::new(ListGatewaysRequest {}),
        };
        let e = c.list_gateways(req).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{token:?}");
    }

    // Rotation: the new key first, the old one second. The new one signs within about
    // a second or two; both are published, so tickets signed before still verify.
    let key_b = generate_ed25519_pem();
    let kid_b = TicketSigner::from_pem(key_b.as_bytes(), Duration::from_secs(60))
        .unwrap()
        .kid()
        .to_owned();
    let old_ticket = resp;
    let written = Instant::now();
    write_atomically(&router.ticket_key, &format!("{key_b}{key_a}"));
    let rotated = eventually(Duration::from_secs(15), "the new ticket key signs", || {
        let mut c = c.clone();
        let kid_b = kid_b.clone();
        async move {
            let r = c
                .route(with_token(route_req("carol"), &good_token("carol")))
                .await
                .ok()?
                .into_inner();
            (kid_of(&r.ticket) == kid_b).then_some(r)
        }
    })
    .await;
    let took = written.elapsed();
    assert!(took < Duration::from_secs(6), "rotation took {took:?}");
    let (keys, _) = router.ticket_keys().await;
    let mut want = vec![kid_a.as_str(), kid_b.as_str()];
    want.sort_unstable();
    assert_eq!(keys.kids(), want, "both keys are published");
    verify_all(keys, &rotated, "carol");
    verify_all(router.ticket_keys().await.0, &old_ticket, "alice");

    // Refusals were counted by reason.
    let (_, metrics) = http_get(router.http, "/metrics").await;
    for reason in [
        "missing",
        "wrong_subject",
        "expired",
        "unknown_key",
        "bad_signature",
    ] {
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("switchyard_router_auth_failures_total")
                    && l.contains("service=\"router\"")
                    && l.contains(&format!("reason=\"{reason}\""))),
            "{reason} not counted:\n{metrics}"
        );
    }
    drop(router.child);
}

/// `gateway` as failed in a Route for `client`.
fn failing(client: &str, gateway: &str) -> RouteRequest {
    RouteRequest {
        failures: vec![Failure {
            gateway_id: gateway.into(),
            reason: "connect refused".into(),
            at_unix_ms: 0,
        }],
        ..route_req(client)
    }
}

async fn ejected(c: &RouterClient<Channel>) -> Vec<String> {
    let r = c
        .clone()
        .list_gateways(with_token(ListGatewaysRequest {}, ADMIN_TOKEN))
        .await
        .unwrap()
        .into_inner();
    r.gateways
        .into_iter()
        .filter(|g| g.ejected_until_unix_ms > 0)
        .map(|g| g.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_reports_count_per_authenticated_identity_within_a_budget() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    fleet(&etcd, &prefix).await;
    let router = Router::start(&etcd, prefix.as_str(), &generate_ed25519_pem()).await;
    let mut c = router.client().await;
    wait_all_listed(&c).await;

    // One app identity reporting gw-1 again and again, and one backend (the route token)
    // reporting it for many different client ids: two identities, under the three
    // distinct reporters ejection needs. Nothing is ejected.
    for _ in 0..10 {
        c.route(with_token(
            failing("flooder", "gw-1"),
            &good_token("flooder"),
        ))
        .await
        .unwrap();
    }
    for n in 0..10 {
        c.route(with_token(
            failing(&format!("made-up-{n}"), "gw-1"),
            ROUTE_TOKEN,
        ))
        .await
        .unwrap();
    }
    assert_eq!(
        ejected(&c).await,
        Vec::<String>::new(),
        "a flood from one identity ejects nothing"
    );

    // Three distinct authenticated identities do eject (gw-2: not one the flood spent).
    for user in ["u-a", "u-b", "u-c"] {
        c.route(with_token(failing(user, "gw-2"), &good_token(user)))
            .await
            .unwrap();
    }
    assert_eq!(ejected(&c).await, ["gw-2"]);

    // Past its budget (5 per window) an identity's reports are ignored, and counted.
    let (_, metrics) = http_get(router.http, "/metrics").await;
    let over = metrics
        .lines()
        .find(|l| l.starts_with("switchyard_router_failure_reports_total{outcome=\"over_budget\"}"))
        .unwrap_or_else(|| panic!("no over_budget count in:\n{metrics}"));
    assert!(
        over.ends_with(" 10"),
        "two identities, 10 reports each, 5 counted: {over}"
    );

    // Lists and their strings are bounded.
    let long = "x".repeat(257);
    for req in [
        RouteRequest {
            exclude: vec![long.clone()],
            ..route_req("u-a")
        },
        failing("u-a", &long),
        RouteRequest {
            exclude: vec!["gw-1".into(); 65],
            ..route_req("u-a")
        },
    ] {
        let e = c
            .route(with_token(req, &good_token("u-a")))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    }
    let mut long_reason = failing("u-a", "gw-3");
    long_reason.failures[0].reason = long;
    let e = c
        .route(with_token(long_reason, &good_token("u-a")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    drop(router.child);
}

/// `switchyard-router <args>` to its end (it must not keep running), with its code and
/// what it wrote to stderr.
fn run_to_end(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin_path("switchyard-router"))
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("SWITCHYARD_ALLOW_ANONYMOUS")
        .output()
        .expect("run switchyard-router");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_exposed_router_without_auth_refuses_to_start_unless_told_anonymous() {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("app.jwks");
    let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(APP_SECRET);
    std::fs::write(
        &jwks,
        format!(r#"{{"keys":[{{"kty":"oct","kid":"a","k":"{k}"}}]}}"#),
    )
    .unwrap();
    let jwks = jwks.to_str().unwrap();
    // An etcd nobody serves: a refused start must not get as far as etcd.
    let base = ["--etcd", "http://127.0.0.1:1", "--listen", "0.0.0.0:0"];

    for (extra, open) in [
        (&[][..], "Route, ListGateways, WatchGateways and Admin"),
        (&["--admin-token", ADMIN_TOKEN][..], "with Route open"),
        (
            &["--app-jwks", jwks][..],
            "with ListGateways and WatchGateways open",
        ),
    ] {
        for check in [true, false] {
            let mut args: Vec<&str> = [&base[..], extra].concat();
            if check {
                args.push("--check");
            }
            let (code, stderr) = run_to_end(&args);
            assert_eq!(code, Some(2), "{args:?}: {stderr}");
            assert!(
                stderr.contains("--allow-anonymous") && stderr.contains(open),
                "{args:?}: {stderr}"
            );
        }
    }
    for extra in [
        &["--allow-anonymous"][..],
        &["--app-jwks", jwks, "--admin-token", ADMIN_TOKEN][..],
        &["--route-token", ROUTE_TOKEN, "--admin-token", ADMIN_TOKEN][..],
    ] {
        let mut args: Vec<&str> = [&base[..], extra].concat();
        args.push("--check");
        let (code, stderr) = run_to_end(&args);
        assert_eq!(code, Some(0), "{args:?}: {stderr}");
    }
    // Loopback stays open for development.
    let (code, stderr) = run_to_end(&["--listen", "127.0.0.1:0", "--check"]);
    assert_eq!(code, Some(0), "{stderr}");
}
