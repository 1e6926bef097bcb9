//! Route over HTTP/JSON (`POST /v1/route` on the gRPC port, DESIGN contract 6) against a
//! real router on a real etcd, with a plain HTTP/1.1 client written on a TcpStream: the
//! answer in the proto3 JSON mapping, the same sticky ranking and caller locality as
//! gRPC, JSON errors with HTTP statuses, the route token, CORS only when configured.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};
use switchyard_proto::v1::RouteRequest;
use switchyard_router::LocalityRule;
use switchyard_tests::router::{TestRouter, ids, put_record, record, test_config, with_token};
use switchyard_tests::{Etcd, init_tracing, unique_prefix};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 answer.
#[derive(Debug)]
struct Reply {
    /// Status code.
    status: u16,
    /// Header names lower-cased, in order.
    headers: Vec<(String, String)>,
    /// The body, de-chunked.
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }

    /// The JSON error's code, after checking the error shape.
    fn error_code(&self) -> String {
        let v = self.json();
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert_eq!(self.header("content-type"), Some("application/json"));
        v["code"].as_str().expect("code").to_owned()
    }
}

/// Sends one request on a fresh HTTP/1.1 connection (`Connection: close`) and reads the
/// whole answer.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Reply {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: router\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("write head");
    // A server may answer (413) and close before taking a body it refuses.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "answer within 5 s");
    let text = String::from_utf8(buf).expect("utf-8 answer");
    let (head, rest) = text.split_once("\r\n\r\n").expect("a complete head");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    // Bounded: every round consumes at least one line.
    for _ in 0..10_000 {
        let Some((size, after)) = rest.split_once("\r\n") else {
            break;
        };
        let n = usize::from_str_radix(size.trim(), 16).expect("chunk size");
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: &Value) -> Reply {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    http(addr, "POST", "/v1/route", &all, body.to_string().as_bytes()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_answers_in_json_like_grpc() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    for id in ["gw-a", "gw-b", "gw-c"] {
        put_record(&mut kv, &prefix, &record(id, "r", "z", 1000, 10)).await;
    }
    put_record(
        &mut kv,
        &prefix,
        &record("gw-near", "r-local", "z-local", 1000, 10),
    )
    .await;
    let config = switchyard_router::Config {
        // Callers on loopback are in r-local/z-local when they name no locality.
        locality: vec![LocalityRule {
            cidr: "127.0.0.0/8".parse().unwrap(),
            region: "r-local".into(),
            zone: "z-local".into(),
        }],
        ..test_config(&prefix)
    };
    let router = TestRouter::start(&[etcd.endpoint()], config).await;
    let addr = router.addr;

    // Every field in the proto3 JSON mapping; the same first place as the gRPC Route.
    let r = post(
        addr,
        &[],
        &json!({"clientId": "user-1", "region": "r", "zone": "z", "protocol": "ws", "limit": 3, "dryRun": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("access-control-allow-origin"), None);
    let v = r.json();
    let got: Vec<&str> = v["gateways"]
        .as_array()
        .expect("gateways")
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), 3, "{v}");
    assert!(
        got.iter().all(|id| ["gw-a", "gw-b", "gw-c"].contains(id)),
        "{v}"
    );
    let first = &v["gateways"][0];
    assert_eq!(first["address"], format!("ws://127.0.0.1:7202/{}", got[0]));
    assert_eq!(
        (&first["region"], &first["zone"]),
        (&json!("r"), &json!("z"))
    );
    assert!(first["score"].is_number(), "{v}");
    assert!(
        v["revision"].as_str().unwrap().parse::<i64>().unwrap() > 0,
        "{v}"
    );
    assert_eq!(v["validForMs"], "30000");
    assert!(
        v["snapshotAgeMs"].as_str().unwrap().parse::<u64>().is_ok(),
        "{v}"
    );
    assert_eq!(v["policy"]["heartbeatIntervalMs"], "30000");
    assert_eq!(v["policy"]["maxAttempts"], 0);
    assert_eq!(v["explanation"], json!([]));
    let mut grpc = router.client().await;
    let via_grpc = grpc
        .route(RouteRequest {
            client_id: "user-1".into(),
            region: "r".into(),
            zone: "z".into(),
            protocol: "ws".into(),
            limit: 3,
            dry_run: true,
            ..RouteRequest::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ids(&via_grpc)[0],
        got[0],
        "HTTP and gRPC agree on the first place"
    );

    // snake_case names and `explain` are read too.
    let r = post(
        addr,
        &[],
        &json!({"client_id": "user-1", "region": "r", "explain": true}),
    )
    .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["explanation"].as_array().unwrap().len(), 4);

    // No locality in the request: the peer address goes through the CIDR table.
    let r = post(addr, &[], &json!({"clientId": "user-2", "limit": 1})).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["gateways"][0]["id"], "gw-near");

    // Invalid input: the service's own validation, as a JSON error with 400.
    let r = post(addr, &[], &json!({"clientId": ""})).await;
    assert_eq!((r.status, r.error_code()), (400, "INVALID_ARGUMENT".into()));
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("client_id is required")
    );
    let r = post(addr, &[], &json!({"clientId": "u", "limit": 17})).await;
    assert_eq!((r.status, r.error_code()), (400, "INVALID_ARGUMENT".into()));
    // Nothing routable: UNAVAILABLE is 503.
    let r = post(
        addr,
        &[],
        &json!({"clientId": "u", "exclude": ["gw-a", "gw-b", "gw-c", "gw-near"]}),
    )
    .await;
    assert_eq!((r.status, r.error_code()), (503, "UNAVAILABLE".into()));

    // Broken requests never reach the service, and nothing breaks.
    let json_ct = [("Content-Type", "application/json")];
    let r = http(addr, "POST", "/v1/route", &json_ct, b"{\"clientId\": ").await;
    assert_eq!((r.status, r.error_code()), (400, "INVALID_ARGUMENT".into()));
    assert!(r.body.contains("not a RouteRequest"), "{r:?}");
    let r = post(addr, &[], &json!({"clientID": "typo"})).await;
    assert_eq!(r.status, 400, "unknown fields are refused: {r:?}");
    assert!(r.body.contains("unknown field"), "{r:?}");
    let r = http(
        addr,
        "POST",
        "/v1/route",
        &[("Content-Type", "text/plain")],
        b"{}",
    )
    .await;
    assert_eq!((r.status, r.error_code()), (415, "INVALID_ARGUMENT".into()));
    let big = format!("{{\"clientId\": \"{}\"}}", "x".repeat(70 * 1024));
    let r = http(addr, "POST", "/v1/route", &json_ct, big.as_bytes()).await;
    assert_eq!((r.status, r.error_code()), (413, "INVALID_ARGUMENT".into()));
    let r = http(addr, "GET", "/v1/route", &[], b"").await;
    assert_eq!((r.status, r.error_code()), (405, "UNIMPLEMENTED".into()));

    // CORS is off by default: no headers, not even on a preflight.
    let origin = [("Origin", "https://app.example.com")];
    let r = post(addr, &origin, &json!({"clientId": "u"})).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
    let r = http(addr, "OPTIONS", "/v1/route", &origin, b"").await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The gRPC side still works on the same port after all that.
    assert!(
        grpc.route(RouteRequest {
            client_id: "u".into(),
            ..RouteRequest::default()
        })
        .await
        .is_ok()
    );
    router.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_route_token_and_cors_apply_to_http() {
    init_tracing();
    let etcd = Etcd::start().await;
    let prefix = unique_prefix();
    let mut kv = etcd.client().await;
    put_record(&mut kv, &prefix, &record("gw-a", "r", "z", 1000, 10)).await;
    const TOKEN: &str = "route-token-123";
    let config = switchyard_router::Config {
        route_token: Some(TOKEN.into()),
        cors_allowed_origins: vec!["https://app.example.com".into()],
        ..test_config(&prefix)
    };
    let router = TestRouter::start(&[etcd.endpoint()], config).await;
    let addr = router.addr;
    let app = ("Origin", "https://app.example.com");
    let body = json!({"clientId": "user-1"});

    // Without the bearer, or with a wrong one: 401, readable by the allowed page.
    let r = post(addr, &[app], &body).await;
    assert_eq!((r.status, r.error_code()), (401, "UNAUTHENTICATED".into()));
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let r = post(addr, &[("Authorization", "Bearer wrong-token-1")], &body).await;
    assert_eq!(r.status, 401, "{r:?}");

    // With it: 200, the same as a gRPC call with it.
    let bearer = format!("Bearer {TOKEN}");
    let r = post(addr, &[app, ("Authorization", &bearer)], &body).await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["gateways"][0]["id"], "gw-a");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert!(
        r.header("vary").is_some_and(|v| v.contains("origin")),
        "{r:?}"
    );
    let mut grpc = router.client().await;
    let rq = RouteRequest {
        client_id: "user-1".into(),
        ..RouteRequest::default()
    };
    assert!(grpc.route(rq.clone()).await.is_err());
    assert!(grpc.route(with_token(rq, TOKEN)).await.is_ok());

    // Another origin gets no CORS headers.
    let r = post(
        addr,
        &[
            ("Origin", "https://evil.example"),
            ("Authorization", &bearer),
        ],
        &body,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);

    // The preflight a browser sends first (no credentials in it).
    let r = http(
        addr,
        "OPTIONS",
        "/v1/route",
        &[
            app,
            ("Access-Control-Request-Method", "POST"),
            (
                "Access-Control-Request-Headers",
                "authorization, content-type",
            ),
        ],
        b"",
    )
    .await;
    assert_eq!(r.status, 204, "{r:?}");
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    assert_eq!(r.header("access-control-allow-methods"), Some("POST"));
    let allowed = r.header("access-control-allow-headers").unwrap_or("");
    assert!(
        allowed.contains("authorization") && allowed.contains("content-type"),
        "{r:?}"
    );
    let r = http(
        addr,
        "OPTIONS",
        "/v1/route",
        &[("Origin", "https://evil.example")],
        b"",
    )
    .await;
    assert_eq!(r.status, 204);
    assert_eq!(r.header("access-control-allow-origin"), None);
    router.stop().await;
}
