//! A minimal HTTP/1.1 GET (http and https) for probes and `--load-url`: one request per
//! connection, a bounded body, no redirects. hyper does the protocol; TLS is rustls with the
//! webpki roots.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Bodies above this are refused: a health or load answer is tiny.
const MAX_BODY: usize = 64 * 1024;

/// Why a GET failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an `http://` or `https://` URL with a host.
    #[error("{0:?} is not an http:// or https:// URL")]
    BadUrl(String),
    /// Connecting failed.
    #[error("connect: {0}")]
    Connect(#[from] std::io::Error),
    /// TLS server name invalid.
    #[error("TLS: invalid server name {0:?}")]
    ServerName(String),
    /// The exchange failed.
    #[error("http: {0}")]
    Http(#[from] hyper::Error),
    /// The body was too big or broke off.
    #[error("response body: {0}")]
    Body(String),
}

/// A parsed target, checked once at configuration time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Whether to speak TLS.
    tls: bool,
    /// Host for the connection, the `Host` header and the TLS server name.
    host: String,
    /// Port (default 80 / 443).
    port: u16,
    /// The request target, `/path?query`.
    path: String,
}

impl Target {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self, HttpError> {
        let bad = || HttpError::BadUrl(url.to_owned());
        let uri: Uri = url.parse().map_err(|_| bad())?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(bad()),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(bad)?;
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        Ok(Self {
            tls,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
            host,
        })
    }
}

/// GETs `target`; returns the status and body (even for non-2xx answers).
pub async fn get(target: &Target) -> Result<(StatusCode, Bytes), HttpError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    if target.tls {
        let name = rustls_pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| HttpError::ServerName(target.host.clone()))?;
        let tls = tokio_rustls::TlsConnector::from(tls_config())
            .connect(name, tcp)
            .await?;
        exchange(tls, target).await
    } else {
        exchange(tcp, target).await
    }
}

async fn exchange<S>(io: S, target: &Target) -> Result<(StatusCode, Bytes), HttpError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let driver = tokio::spawn(conn);
    let host = if (target.tls && target.port == 443) || (!target.tls && target.port == 80) {
        target.host.clone()
    } else {
        format!("{}:{}", target.host, target.port)
    };
    let request = Request::get(target.path.as_str())
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "switchyard-agent")
        .body(Empty::<Bytes>::new())
        .expect("a GET with valid parts");
    let response = sender.send_request(request).await;
    let result = match response {
        Ok(resp) => {
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_BODY)
                .collect()
                .await
                .map_err(|e| HttpError::Body(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        }
        Err(e) => Err(e.into()),
    };
    driver.abort();
    result
}

fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            };
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            Arc::new(
                rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default protocol versions")
                    .with_root_certificates(roots)
                    .with_no_client_auth(),
            )
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_parsed_once() {
        let t = Target::parse("http://127.0.0.1:8080/healthz?x=1").unwrap();
        assert_eq!(
            t,
            Target {
                tls: false,
                host: "127.0.0.1".into(),
                port: 8080,
                path: "/healthz?x=1".into()
            }
        );
        let t = Target::parse("https://gw.example.com").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (true, 443, "/"));
        let t = Target::parse("http://[::1]:81/").unwrap();
        assert_eq!(t.host, "::1");
        assert!(Target::parse("ftp://x/").is_err());
        assert!(Target::parse("127.0.0.1:80").is_err());
    }

    #[tokio::test]
    async fn gets_status_and_body_from_a_real_server() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).await.unwrap();
            assert!(buf[..n].starts_with(b"GET /load HTTP/1.1\r\n"));
            s.write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\nno")
                .await
                .unwrap();
        });
        let t = Target::parse(&format!("http://127.0.0.1:{port}/load")).unwrap();
        let (status, body) = get(&t).await.unwrap();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(&body[..], b"no");
    }
}
