//! Contract 5 at the gateway, against real `switchyard-gateway` processes and raw clients:
//! every ticket refusal with its REJECT code, `ticket,jwt` combined, hmac v1 with expiry,
//! ticket-key rotation with no refused login (key file and routers' URLs), the anonymous
//! duplicate-login rule, and no anonymous gateway on a non-loopback address.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use switchyard_gateway_agent::gateway::HmacAuth;
use switchyard_identity::{TicketSigner, generate_ed25519_pem, unix_now};
use switchyard_proto::v1;
use switchyard_proto::wire::Frame;
use switchyard_tests::client_kit::{GatewayOpts, GatewayProc};
use switchyard_tests::rawclient::{Proto, RawClient};
use switchyard_tests::{bin_path, eventually, free_port, init_tracing};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Generous: a loaded 2-core machine.
const T: Duration = Duration::from_secs(10);

fn signer() -> TicketSigner {
    TicketSigner::from_pem(generate_ed25519_pem().as_bytes(), Duration::from_secs(60)).unwrap()
}

/// The public keys of `signers` as one JWKS document (what a router publishes mid-rotation).
fn jwks(signers: &[&TicketSigner]) -> String {
    let keys: Vec<serde_json::Value> = signers
        .iter()
        .flat_map(|s| s.jwks()["keys"].as_array().unwrap().clone())
        .collect();
    serde_json::json!({ "keys": keys }).to_string()
}

/// Replaces `path` in one step (rename), as a deploy tool would: never half-written.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn addr(gw: &GatewayProc) -> SocketAddr {
    gw.tcp.parse().unwrap()
}

async fn gateway(id: &str, args: &[&str]) -> GatewayProc {
    let opts = GatewayOpts {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..GatewayOpts::default()
    };
    GatewayProc::start(id, &opts).await
}

/// HELLO with `token` on a fresh connection; the answer.
async fn hello(gw: &GatewayProc, proto: Proto, client_id: &str, token: &str) -> Frame {
    let a = match proto {
        Proto::Tcp => addr(gw),
        Proto::Ws => gw
            .ws
            .trim_start_matches("ws://")
            .trim_end_matches("/ws")
            .parse()
            .unwrap(),
    };
    let mut c = RawClient::connect(proto, a).await;
    c.hello(client_id, token).await
}

async fn welcomed(gw: &GatewayProc, client_id: &str, token: &str, what: &str) {
    match hello(gw, Proto::Tcp, client_id, token).await {
        Frame::Welcome(w) => assert_eq!(w.gateway_id, gw.id),
        other => panic!("{what}: expected WELCOME, got {other:?}"),
    }
}

/// The REJECT code and reason of a refused HELLO.
async fn rejected(gw: &GatewayProc, proto: Proto, client_id: &str, token: &str) -> (i32, String) {
    match hello(gw, proto, client_id, token).await {
        Frame::Reject(r) => (r.code, r.reason),
        other => panic!("expected REJECT, got {other:?}"),
    }
}

const AUTH: i32 = v1::RejectCode::Auth as i32;
const EXPIRED: i32 = v1::RejectCode::AuthExpired as i32;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tickets_admit_their_client_at_their_gateway_and_every_refusal_has_its_code() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("ticket-keys.json");
    let s = signer();
    write_atomic(&keys, &jwks(&[&s]));
    let gw = gateway("gw-t1", &["--ticket-jwks", keys.to_str().unwrap()]).await;

    let good = s.issue("u1", &["gw-other", "gw-t1"]).unwrap().token;
    welcomed(&gw, "u1", &good, "a ticket naming this gateway").await;

    let elsewhere = s.issue("u1", &["gw-other"]).unwrap().token;
    let expired = s
        .issue_at("u1", &["gw-t1"], unix_now() - 3600)
        .unwrap()
        .token;
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let forged_claims = s.issue("u2", &["gw-t1"]).unwrap().token;
    parts[1] = forged_claims.split('.').nth(1).unwrap().to_owned();
    let tampered = parts.join(".");
    let unknown = signer().issue("u1", &["gw-t1"]).unwrap().token;
    let cases: [(&str, &str, &str, i32, &str); 6] = [
        (
            "another gateway",
            "u1",
            &elsewhere,
            AUTH,
            "not for this gateway",
        ),
        ("another client", "u2", &good, AUTH, "another client"),
        ("expired", "u1", &expired, EXPIRED, "expired"),
        ("tampered signature", "u2", &tampered, AUTH, "bad signature"),
        ("unknown kid", "u1", &unknown, EXPIRED, "unknown key"),
        ("no token", "u1", "", AUTH, "no token"),
    ];
    for (what, client, token, code, reason) in cases {
        for proto in [Proto::Tcp, Proto::Ws] {
            let (got, text) = rejected(&gw, proto, client, token).await;
            assert_eq!(got, code, "{what} over {proto:?}: {text}");
            assert!(text.contains(reason), "{what}: reason {text:?}");
        }
    }
    let expired_count = eventually(T, "auth failures counted by mode and reason", || async {
        gw.metric(r#"switchyard_gateway_auth_failures_total{mode="ticket",reason="expired"}"#)
            .await
    })
    .await;
    assert_eq!(expired_count, 2.0);
    assert_eq!(
        gw.metric("switchyard_gateway_auth_failures_total").await,
        Some(12.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_and_app_jwt_combined_accept_either() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let (router, app) = (signer(), signer());
    let (tk, ak) = (dir.path().join("tickets.json"), dir.path().join("app.json"));
    write_atomic(&tk, &jwks(&[&router]));
    write_atomic(&ak, &jwks(&[&app]));
    let gw = gateway(
        "gw-c1",
        &[
            "--auth",
            "ticket,jwt",
            "--ticket-jwks",
            tk.to_str().unwrap(),
            "--app-jwks",
            ak.to_str().unwrap(),
        ],
    )
    .await;
    let ticket = router.issue("u1", &["gw-c1"]).unwrap().token;
    welcomed(&gw, "u1", &ticket, "a router's ticket").await;
    // An app token: `sub` and `exp` from the app's own key (any claims besides are
    // ignored), for any gateway: what a client presents when it routed from its cache.
    let app_token = app.issue("u1", &[]).unwrap().token;
    welcomed(&gw, "u1", &app_token, "the app's token").await;
    let (code, text) = rejected(&gw, Proto::Tcp, "u2", &app_token).await;
    assert_eq!(code, AUTH, "{text}");
    let old = app.issue_at("u1", &[], unix_now() - 3600).unwrap().token;
    let (code, text) = rejected(&gw, Proto::Tcp, "u1", &old).await;
    assert_eq!(code, EXPIRED, "an expired app token: route again ({text})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmac_v1_tokens_expire_rotate_by_kid_and_a_proven_login_kicks_the_old_one() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    write_atomic(&secrets, "k1 first-secret\n");
    let gw = gateway("gw-h1", &["--auth-secret-file", secrets.to_str().unwrap()]).await;
    let now = unix_now();
    // The helper signs with kid "default"; the file names the same secret k1.
    let token = |secret: &str, kid: &str, client: &str, exp: u64| {
        let t = HmacAuth::new(secret).token("default", client, exp).unwrap();
        t.replacen("v1.default.", &format!("v1.{kid}."), 1)
    };
    let fresh = token("first-secret", "k1", "u1", now + 300);
    let mut first = RawClient::connect(Proto::Tcp, addr(&gw)).await;
    assert!(matches!(first.hello("u1", &fresh).await, Frame::Welcome(_)));
    let old = token("first-secret", "k1", "u1", now - 600);
    let (code, text) = rejected(&gw, Proto::Tcp, "u1", &old).await;
    assert_eq!((code, text.as_str()), (EXPIRED, "token expired"));
    let legacy = HmacAuth::new("first-secret").legacy_token("u1");
    let (code, _) = rejected(&gw, Proto::Tcp, "u1", &legacy).await;
    assert_eq!(code, AUTH, "the old format needs --hmac-legacy");

    // A proven identity logging in again replaces the old session.
    let mut second = RawClient::connect(Proto::Tcp, addr(&gw)).await;
    assert!(matches!(
        second.hello("u1", &fresh).await,
        Frame::Welcome(_)
    ));
    match first.frame(T).await {
        Frame::Kick(k) => assert_eq!(k.code, v1::KickCode::LoggedInElsewhere as i32),
        other => panic!("expected KICK, got {other:?}"),
    }

    // Rotation: a second kid added to the file is accepted once the file is re-read.
    write_atomic(&secrets, "k1 first-secret\nk2 second-secret\n");
    let k2 = token("second-secret", "k2", "u2", now + 300);
    eventually(T, "the new kid is accepted", || async {
        matches!(hello(&gw, Proto::Tcp, "u2", &k2).await, Frame::Welcome(_)).then_some(())
    })
    .await;
    let k1 = token("first-secret", "k1", "u3", now + 300);
    welcomed(&gw, "u3", &k1, "k1 still accepted").await;
}

/// A stand-in for a router's HTTP port: `GET /v1/ticket-keys` answers what `body` holds.
async fn key_server(body: Arc<Mutex<String>>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let body = body.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let ok = buf[..n].starts_with(b"GET /v1/ticket-keys ");
                let reply = if ok {
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        .into()
                };
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/v1/ticket-keys")
}

/// Keys A, then A and B (B's first ticket comes long before the 30 s refresh), then B only.
async fn rotate(gw: &GatewayProc, a: &TicketSigner, b: &TicketSigner, publish: impl Fn(&str)) {
    let ticket = |s: &TicketSigner| s.issue("u1", &[gw.id.as_str()]).unwrap().token;
    welcomed(gw, "u1", &ticket(a), "key A").await;
    publish(&jwks(&[a, b]));
    // Clients keep reconnecting through the rotation: not one login is refused.
    for i in 0..5 {
        welcomed(gw, "u1", &ticket(b), &format!("key B, login {i}")).await;
        welcomed(gw, "u1", &ticket(a), &format!("key A still, login {i}")).await;
    }
    publish(&jwks(&[b]));
    // A goes at the next look at the keys; a ticket of a key nobody knows prompts one.
    let stranger = signer();
    eventually(T, "key A refused once removed", || async {
        let _ = hello(gw, Proto::Tcp, "u1", &ticket(&stranger)).await;
        match hello(gw, Proto::Tcp, "u1", &ticket(a)).await {
            Frame::Reject(r) if r.code == EXPIRED => Some(()),
            Frame::Welcome(_) => None,
            other => panic!("{other:?}"),
        }
    })
    .await;
    welcomed(gw, "u1", &ticket(b), "key B after A is gone").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_key_rotation_in_the_key_file_refuses_no_login() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let keys: PathBuf = dir.path().join("ticket-keys.json");
    let (a, b) = (signer(), signer());
    write_atomic(&keys, &jwks(&[&a]));
    let gw = gateway("gw-r1", &["--ticket-jwks", keys.to_str().unwrap()]).await;
    rotate(&gw, &a, &b, |text| write_atomic(&keys, text)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ticket_key_rotation_over_the_routers_urls_refuses_no_login() {
    init_tracing();
    let (a, b) = (signer(), signer());
    let body = Arc::new(Mutex::new(jwks(&[&a])));
    let url = key_server(body.clone()).await;
    // A second router that is down: one answering router is enough to start.
    let down = format!("http://127.0.0.1:{}/v1/ticket-keys", free_port());
    let gw = gateway(
        "gw-r2",
        &["--ticket-jwks-url", &url, "--ticket-jwks-url", &down],
    )
    .await;
    rotate(&gw, &a, &b, |text| *body.lock().unwrap() = text.to_owned()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_login_never_kicks_the_real_session() {
    init_tracing();
    let gw = gateway("gw-anon", &[]).await;
    let a = addr(&gw);
    let (mut real, welcome) = RawClient::login(Proto::Tcp, a, "u1").await;
    let (mut stranger, _) = RawClient::login(Proto::Tcp, a, "u1").await;
    // Any kick is queued before the stranger's WELCOME and goes out before a PONG.
    for c in [&mut real, &mut stranger] {
        c.send(&Frame::Ping(Bytes::from_static(b"still"))).await;
        assert_eq!(c.frame(T).await, Frame::Pong(Bytes::from_static(b"still")));
    }
    // The real client resuming its session (only it knows the session_id) replaces it.
    let mut resumed = RawClient::connect(Proto::Tcp, a).await;
    resumed
        .send(&Frame::Hello(v1::Hello {
            client_id: "u1".into(),
            session_id: welcome.session_id.clone(),
            ..Default::default()
        }))
        .await;
    assert!(matches!(resumed.frame(T).await, Frame::Welcome(_)));
    match real.frame(T).await {
        Frame::Kick(k) => assert_eq!(k.code, v1::KickCode::LoggedInElsewhere as i32),
        other => panic!("expected KICK for the resumed session, got {other:?}"),
    }
    stranger.send(&Frame::Ping(Bytes::new())).await;
    assert_eq!(stranger.frame(T).await, Frame::Pong(Bytes::new()));
}

fn check(args: &[&str]) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin_path("switchyard-gateway"));
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("SWITCHYARD_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(["--id", "gw-x", "--no-register"]).args(args);
    cmd.output().expect("run switchyard-gateway")
}

#[test]
fn a_non_loopback_gateway_without_auth_refuses_to_start() {
    let listen = format!("0.0.0.0:{}", free_port());
    for extra in [&["--check"][..], &[]] {
        let out = check(&[&["--listen", &listen][..], extra].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains("--allow-anonymous"), "{stderr}");
    }
    for ok in [["--allow-anonymous"], ["--auth-secret=s"]] {
        let out = check(&[&["--listen", &listen, "--check"][..], &ok[..]].concat());
        assert!(
            out.status.success(),
            "{ok:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = check(&["--listen", &listen, "--auth", "jwt", "--check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr.contains("--app-jwks"),
        "a mode without its keys: {stderr}"
    );
}
