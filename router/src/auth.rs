//! Who is calling (DESIGN contract 5): the checks of Route (app token, route or admin
//! token), of the topology calls and Admin (ops token or client certificate), and the
//! per-identity budget of failure reports. Every refusal is counted in
//! `switchyard_router_auth_failures_total{service,reason}`; no refusal echoes a token.

use std::borrow::Cow;
use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;
use switchyard_identity::{Refusal, Secret};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

use crate::config::ValidConfig;

/// The bearer credential of a call, if it carries one.
pub(crate) fn bearer(meta: &MetadataMap) -> Option<&str> {
    meta.get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

fn matches(secret: Option<&Secret>, presented: &str) -> bool {
    secret.is_some_and(|s| s.matches(presented))
}

fn refused(service: &'static str, reason: &'static str) {
    metrics::counter!("switchyard_router_auth_failures_total", "service" => service, "reason" => reason)
        .increment(1);
}

/// A Route caller, as far as it proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// An app token for this client: its `sub`.
    App(String),
    /// The route or admin token (a trusted backend): the caller's IP, when known.
    Token(Option<IpAddr>),
    /// Nothing was asked of it (Route is open on this router).
    Anonymous,
}

impl Caller {
    /// The identity its failure reports count under, or `None` when they must not count.
    /// App tokens count per `sub`; the route/admin token per caller IP (`token:<ip>`: one
    /// backend is one reporter, however many clients it speaks for); anonymous callers
    /// only where `anonymous_counts` (a loopback router with Route open: development),
    /// per client id as before identity existed.
    pub(crate) fn reporter<'a>(
        &'a self,
        client_id: &'a str,
        anonymous_counts: bool,
    ) -> Option<Cow<'a, str>> {
        match self {
            Self::App(sub) => Some(Cow::Borrowed(sub)),
            Self::Token(Some(ip)) => Some(Cow::Owned(format!("token:{ip}"))),
            Self::Token(None) => Some(Cow::Borrowed("token:unknown")),
            Self::Anonymous => anonymous_counts.then_some(Cow::Borrowed(client_id)),
        }
    }
}

/// Authenticates a Route call for `client_id`: the route or admin token, else an app
/// token when `app_jwks` is set; open when neither `app_jwks` nor `route_token` is.
pub(crate) fn route_caller(
    config: &ValidConfig,
    meta: &MetadataMap,
    ip: Option<IpAddr>,
    client_id: &str,
) -> Result<Caller, Status> {
    let presented = bearer(meta);
    if let Some(got) = presented
        && (matches(config.route_token.as_ref(), got) || matches(config.admin_token.as_ref(), got))
    {
        return Ok(Caller::Token(ip));
    }
    if let Some(app) = config.app_tokens() {
        return match app.verify(presented.unwrap_or(""), client_id) {
            Ok(claims) => Ok(Caller::App(claims.sub)),
            Err(refusal) => Err(refuse_app(&refusal)),
        };
    }
    if config.route_token.is_some() {
        refused(
            "router",
            if presented.is_some() {
                "bad_token"
            } else {
                "missing"
            },
        );
        return Err(Status::unauthenticated(
            "this router needs `authorization: Bearer <route token>`",
        ));
    }
    Ok(Caller::Anonymous)
}

/// An app token refused: UNAUTHENTICATED with the reason (never the token).
fn refuse_app(refusal: &Refusal) -> Status {
    refused("router", refusal.label());
    Status::unauthenticated(format!(
        "app token refused: {refusal} (send `authorization: Bearer <app token>` with sub = client_id)"
    ))
}

/// Admin: the ops token or a client certificate; refused outright when neither is
/// configured (drains must never be open).
pub(crate) fn check_admin<T>(config: &ValidConfig, req: &Request<T>) -> Result<(), Status> {
    check_ops(config, req, "admin", false)
}

/// ListGateways and WatchGateways: like Admin, except that a loopback router with no ops
/// token and no client CA stays open (development).
pub(crate) fn check_topology<T>(
    config: &ValidConfig,
    req: &Request<T>,
    loopback: bool,
) -> Result<(), Status> {
    check_ops(config, req, "topology", loopback)
}

fn check_ops<T>(
    config: &ValidConfig,
    req: &Request<T>,
    service: &'static str,
    open_when_unprotected: bool,
) -> Result<(), Status> {
    let presented = bearer(req.metadata());
    if let Some(got) = presented
        && matches(config.admin_token.as_ref(), got)
    {
        return Ok(());
    }
    if config.client_ca.is_some() && req.peer_certs().is_some_and(|c| !c.is_empty()) {
        return Ok(());
    }
    if !config.ops_protected() {
        if open_when_unprotected {
            return Ok(());
        }
        refused(service, "disabled");
        return Err(Status::permission_denied(format!(
            "{service} is disabled: start the router with --admin-token, --admin-token-file or --client-ca"
        )));
    }
    refused(
        service,
        if presented.is_some() {
            "bad_token"
        } else {
            "missing"
        },
    );
    Err(Status::unauthenticated(format!(
        "{service} needs `authorization: Bearer <admin token>` or a client certificate"
    )))
}

/// Identities remembered by [`ReportBudget`]; beyond this new identities are not
/// counted until old windows end (memory stays bounded under a flood of credentials).
const MAX_IDENTITIES: usize = 65_536;

/// How many failure reports each identity made in its current window.
#[derive(Debug, Default)]
pub(crate) struct ReportBudget {
    /// Identity hash → (window start, reports in it), Unix ms. Failure reports are rare,
    /// so one lock is enough.
    used: Mutex<HashMap<u64, (i64, u32)>>,
}

impl ReportBudget {
    /// Takes one report from `identity`'s budget of `max` per `window_ms`; false when it
    /// is spent (the report must be ignored).
    pub(crate) fn take(&self, identity: u64, max: u32, window_ms: i64, now_ms: i64) -> bool {
        let mut used = self.used.lock();
        if used.len() >= MAX_IDENTITIES && !used.contains_key(&identity) {
            used.retain(|_, (start, _)| now_ms - *start < window_ms);
            if used.len() >= MAX_IDENTITIES {
                return false;
            }
        }
        let (start, n) = used.entry(identity).or_insert((now_ms, 0));
        if now_ms - *start >= window_ms {
            (*start, *n) = (now_ms, 0);
        }
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use base64::Engine as _;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
    use switchyard_identity::unix_now;

    const SECRET: &[u8] = b"app-login-service-secret";

    fn jwks_file(dir: &tempfile::TempDir) -> std::path::PathBuf {
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(SECRET);
        let p = dir.path().join("app.jwks");
        std::fs::write(
            &p,
            format!(r#"{{"keys":[{{"kty":"oct","kid":"app-1","alg":"HS256","k":"{k}"}}]}}"#),
        )
        .unwrap();
        p
    }

    fn token(kid: &str, secret: &[u8], sub: &str, exp: u64) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        let claims = serde_json::json!({"sub": sub, "exp": exp, "aud": "chat"});
        encode(&h, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    fn meta(bearer: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(b) = bearer {
            m.insert("authorization", format!("Bearer {b}").parse().unwrap());
        }
        m
    }

    fn config(dir: &tempfile::TempDir) -> ValidConfig {
        Config {
            app_jwks: Some(jwks_file(dir)),
            app_audience: vec!["chat".into()],
            route_token: Some("route-token-1".into()),
            admin_token: Some("admin-token-1".into()),
            ..Config::default()
        }
        .validate()
        .unwrap()
    }

    #[test]
    fn route_takes_an_app_token_for_its_client_or_the_trusted_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(&dir);
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let exp = unix_now() + 60;
        let good = token("app-1", SECRET, "alice", exp);
        assert_eq!(
            route_caller(&c, &meta(Some(&good)), Some(ip), "alice").unwrap(),
            Caller::App("alice".into())
        );
        for t in ["route-token-1", "admin-token-1"] {
            assert_eq!(
                route_caller(&c, &meta(Some(t)), Some(ip), "anyone").unwrap(),
                Caller::Token(Some(ip))
            );
        }
        let refusals = [
            (None, "no token presented"),
            (Some(good.clone()), "issued to another client"),
            (
                Some(token("app-1", SECRET, "bob", unix_now() - 60)),
                "expired",
            ),
            (Some(token("app-9", SECRET, "bob", exp)), "unknown key"),
            (Some(token("app-1", b"forged", "bob", exp)), "bad signature"),
            (Some("route-token-2".into()), "malformed"),
        ];
        for (presented, why) in refusals {
            let e = route_caller(&c, &meta(presented.as_deref()), Some(ip), "bob").unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{why}");
            assert!(e.message().contains(why), "{why}: {}", e.message());
            if let Some(t) = presented {
                assert!(!e.message().contains(&t), "the token is never echoed");
            }
        }
    }

    #[test]
    fn route_token_alone_and_open_routers() {
        let c = Config {
            route_token: Some("route-token-1".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
        let e = route_caller(&c, &meta(Some("nope-nope")), None, "u").unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            route_caller(&c, &meta(Some("route-token-1")), None, "u").unwrap(),
            Caller::Token(None)
        );
        let open = Config::default().validate().unwrap();
        assert_eq!(
            route_caller(&open, &meta(None), None, "u").unwrap(),
            Caller::Anonymous
        );
    }

    #[test]
    fn reports_count_per_authenticated_identity() {
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        assert_eq!(
            Caller::App("s".into()).reporter("c", false).as_deref(),
            Some("s")
        );
        assert_eq!(
            Caller::Token(Some(ip)).reporter("c", false).as_deref(),
            Some("token:192.0.2.7")
        );
        assert_eq!(Caller::Anonymous.reporter("c", false), None);
        assert_eq!(Caller::Anonymous.reporter("c", true).as_deref(), Some("c"));
    }

    #[test]
    fn topology_is_open_only_on_an_unprotected_loopback_router() {
        let open = Config::default().validate().unwrap();
        let req = Request::new(());
        assert!(check_topology(&open, &req, true).is_ok());
        let e = check_topology(&open, &req, false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::PermissionDenied);
        assert!(check_admin(&open, &req).is_err(), "admin is never open");
        let protected = Config {
            admin_token: Some("admin-token-1".into()),
            route_token: Some("route-token-1".into()),
            ..Config::default()
        }
        .validate()
        .unwrap();
        let e = check_topology(&protected, &req, true).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        let mut with = Request::new(());
        *with.metadata_mut() = meta(Some("route-token-1"));
        assert!(
            check_topology(&protected, &with, true).is_err(),
            "the route token does not read the topology"
        );
        *with.metadata_mut() = meta(Some("admin-token-1"));
        assert!(check_topology(&protected, &with, true).is_ok());
        assert!(check_admin(&protected, &with).is_ok());
    }

    #[test]
    fn the_report_budget_is_per_identity_per_window() {
        let b = ReportBudget::default();
        let taken = (0..10).filter(|_| b.take(1, 5, 30_000, 1_000)).count();
        assert_eq!(taken, 5);
        assert!(
            b.take(2, 5, 30_000, 1_000),
            "another identity has its own budget"
        );
        assert!(!b.take(1, 5, 30_000, 30_999));
        assert!(b.take(1, 5, 30_000, 31_000), "a new window, a new budget");
    }
}
