//! `POST /v1/route`: Route over HTTP/JSON on the gRPC port, for clients that cannot speak
//! gRPC (browsers, mini-programs, shell scripts). The body is the proto3 JSON mapping of
//! `RouteRequest` ([`crate::route_json`]); the call goes through the gRPC service's own
//! `route`, with the HTTP headers as its metadata and the connection's address, so auth,
//! validation, caller locality, ranking and metrics are the gRPC path's, not a copy.
//! Errors are `{"code": "INVALID_ARGUMENT", "message": "..."}` with the HTTP status of the
//! gRPC code. CORS headers are sent only for the origins the configuration allows.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use switchyard_proto::v1::router_server::Router as _;
use tonic::metadata::MetadataMap;

use crate::config::Config;
use crate::route_json::{RouteResponseJson, parse_request};
use crate::service::RouterService;

/// The path, fixed by DESIGN contract 6.
pub(crate) const PATH: &str = "/v1/route";

/// Largest request body read. A Route request is well under 20 KiB even with every list
/// full (64 ids of 128 bytes); anything near this is not a client of ours.
const MAX_BODY: usize = 64 * 1024;

/// What `/v1/route` needs.
#[derive(Debug, Clone)]
struct Http {
    /// The gRPC service whose `route` answers.
    service: RouterService,
    /// Who may read answers from a browser page.
    cors: Arc<Cors>,
}

/// The HTTP/JSON Route, to merge into the gRPC server's router.
pub(crate) fn routes(service: RouterService, config: &Config) -> Router {
    let cors = Arc::new(Cors::new(&config.cors_allowed_origins));
    Router::new()
        .route(
            PATH,
            post(route).options(preflight).fallback(method_not_allowed),
        )
        .with_state(Http { service, cors })
}

/// Which origins get CORS headers.
#[derive(Debug)]
enum Cors {
    /// None: a page on another origin cannot read answers.
    Off,
    /// `*` was configured: any page may.
    Any,
    /// Exactly these origins may (compared byte for byte, as browsers send them).
    Origins(Vec<HeaderValue>),
}

impl Cors {
    fn new(origins: &[String]) -> Self {
        if origins.iter().any(|o| o == "*") {
            Self::Any
        } else if origins.is_empty() {
            Self::Off
        } else {
            Self::Origins(
                origins
                    .iter()
                    .filter_map(|o| HeaderValue::from_str(o).ok())
                    .collect(),
            )
        }
    }

    /// The `access-control-allow-origin` value for a request from `origin`, if any.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        let origin = origin?;
        match self {
            Self::Off => None,
            Self::Any => Some(HeaderValue::from_static("*")),
            Self::Origins(list) => list.iter().find(|o| *o == origin).cloned(),
        }
    }

    /// Adds the CORS headers an answer to `origin` carries.
    fn decorate(&self, origin: Option<&HeaderValue>, headers: &mut HeaderMap) {
        if let Self::Origins(_) = self {
            // The answer depends on the Origin: caches must not hand one origin's to another.
            headers.append(header::VARY, HeaderValue::from_static("origin"));
        }
        if let Some(allow) = self.allow(origin) {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        }
    }
}

/// The error body, the same shape for every failure.
#[derive(Debug, Serialize)]
struct ErrorBody<'a> {
    /// The gRPC code's name, e.g. `INVALID_ARGUMENT`, so clients branch on one vocabulary
    /// whichever transport they use.
    code: &'static str,
    /// What was wrong, for a person.
    message: &'a str,
}

/// A JSON answer that no cache along the way may keep: a Route answer is one client's.
fn json(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|e| {
        // Our own structs of strings and numbers: cannot fail, but never panic a server.
        format!(r#"{{"code":"INTERNAL","message":"cannot write JSON: {e}"}}"#).into_bytes()
    });
    (
        status,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response()
}

/// A gRPC status as the HTTP/JSON error.
fn status_response(status: &tonic::Status) -> Response {
    let (http, code) = http_status(status.code());
    let mut resp = json(
        http,
        &ErrorBody {
            code,
            message: status.message(),
        },
    );
    if http == StatusCode::UNAUTHORIZED {
        // RFC 9110: a 401 names the scheme it wants.
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// A request refused before it reached the service: counted by reason, since none of
/// the service's metrics ever sees it.
fn rejected(reason: &'static str, http: StatusCode, message: &str) -> Response {
    metrics::counter!("switchyard_router_http_rejected_total", "reason" => reason).increment(1);
    json(
        http,
        &ErrorBody {
            code: "INVALID_ARGUMENT",
            message,
        },
    )
}

/// The HTTP status and name of a gRPC code (the mapping of google.rpc.Code).
fn http_status(code: tonic::Code) -> (StatusCode, &'static str) {
    use tonic::Code as C;
    match code {
        C::Ok => (StatusCode::OK, "OK"),
        C::Cancelled => (
            StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            "CANCELLED",
        ),
        C::Unknown => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
        C::InvalidArgument => (StatusCode::BAD_REQUEST, "INVALID_ARGUMENT"),
        C::DeadlineExceeded => (StatusCode::GATEWAY_TIMEOUT, "DEADLINE_EXCEEDED"),
        C::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
        C::AlreadyExists => (StatusCode::CONFLICT, "ALREADY_EXISTS"),
        C::PermissionDenied => (StatusCode::FORBIDDEN, "PERMISSION_DENIED"),
        C::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "RESOURCE_EXHAUSTED"),
        C::FailedPrecondition => (StatusCode::BAD_REQUEST, "FAILED_PRECONDITION"),
        C::Aborted => (StatusCode::CONFLICT, "ABORTED"),
        C::OutOfRange => (StatusCode::BAD_REQUEST, "OUT_OF_RANGE"),
        C::Unimplemented => (StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED"),
        C::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL"),
        C::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
        C::DataLoss => (StatusCode::INTERNAL_SERVER_ERROR, "DATA_LOSS"),
        C::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED"),
    }
}

/// `application/json`, parameters (`; charset=utf-8`) allowed.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

async fn route(State(h): State<Http>, req: Request) -> Response {
    let origin = req.headers().get(header::ORIGIN).cloned();
    let mut resp = answer(&h, req).await;
    h.cors.decorate(origin.as_ref(), resp.headers_mut());
    resp
}

async fn answer(h: &Http, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    if !is_json(&parts.headers) {
        return rejected(
            "content_type",
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "content-type must be application/json",
        );
    }
    let too_large = || {
        rejected(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!("the body is over {MAX_BODY} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let bytes = match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => return too_large(),
        Err(e) => {
            return rejected(
                "body",
                StatusCode::BAD_REQUEST,
                &format!("cannot read the body: {e}"),
            );
        }
    };
    let route_req = match parse_request(&bytes) {
        Ok(r) => r,
        Err(e) => {
            return rejected(
                "bad_json",
                StatusCode::BAD_REQUEST,
                &format!("the body is not a RouteRequest in JSON: {e}"),
            );
        }
    };
    // The headers become the call's metadata (`authorization`, `x-forwarded-for`) and the
    // extensions carry the connection's address and TLS certificates, exactly as tonic
    // hands them to a gRPC call on this port.
    let request = tonic::Request::from_parts(
        MetadataMap::from_headers(parts.headers),
        parts.extensions,
        route_req,
    );
    match h.service.route(request).await {
        Ok(resp) => json(StatusCode::OK, &RouteResponseJson::from(resp.into_inner())),
        Err(status) => status_response(&status),
    }
}

async fn preflight(State(h): State<Http>, headers: HeaderMap) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let out = resp.headers_mut();
    out.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    h.cors.decorate(headers.get(header::ORIGIN), out);
    if out.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN) {
        out.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("POST"),
        );
        out.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        out.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
    resp
}

async fn method_not_allowed(method: Method) -> Response {
    metrics::counter!("switchyard_router_http_rejected_total", "reason" => "method").increment(1);
    let mut resp = json(
        StatusCode::METHOD_NOT_ALLOWED,
        &ErrorBody {
            code: "UNIMPLEMENTED",
            message: &format!("{method} is not supported here; use POST"),
        },
    );
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_codes_map_to_their_http_statuses() {
        use tonic::Code as C;
        for (code, http, name) in [
            (C::InvalidArgument, 400, "INVALID_ARGUMENT"),
            (C::Unauthenticated, 401, "UNAUTHENTICATED"),
            (C::PermissionDenied, 403, "PERMISSION_DENIED"),
            (C::NotFound, 404, "NOT_FOUND"),
            (C::ResourceExhausted, 429, "RESOURCE_EXHAUSTED"),
            (C::Internal, 500, "INTERNAL"),
            (C::Unavailable, 503, "UNAVAILABLE"),
            (C::DeadlineExceeded, 504, "DEADLINE_EXCEEDED"),
        ] {
            assert_eq!(
                http_status(code),
                (StatusCode::from_u16(http).unwrap(), name)
            );
        }
    }

    #[test]
    fn only_configured_origins_are_allowed() {
        let origin = HeaderValue::from_static("https://app.example.com");
        let other = HeaderValue::from_static("https://evil.example");
        assert_eq!(Cors::new(&[]).allow(Some(&origin)), None);
        let list = Cors::new(&["https://app.example.com".into()]);
        assert_eq!(list.allow(Some(&origin)), Some(origin.clone()));
        assert_eq!(list.allow(Some(&other)), None);
        assert_eq!(list.allow(None), None);
        let any = Cors::new(&["*".into()]);
        assert_eq!(any.allow(Some(&other)).unwrap(), "*");
    }

    #[test]
    fn json_content_types_are_recognised() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/jsonx"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
