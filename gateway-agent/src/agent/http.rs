//! A minimal HTTP/1.1 GET (http and https) for probes and `--load-url`: one request per
//! connection, a bounded body, no redirects. hyper does the protocol; TLS is rustls with the
//! webpki roots, plus the certificates of a private CA when one is given (`--probe-ca`).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls_pki_types::pem::PemObject;
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
    /// The CA file could not be read or holds no PEM certificate.
    #[error("CA file {path}: {reason}")]
    Ca {
        /// The file.
        path: String,
        /// What was wrong with it.
        reason: String,
    },
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
    /// Certificates trusted besides the webpki roots (a private CA); empty = none.
    extra_roots: Arc<[rustls_pki_types::CertificateDer<'static>]>,
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
            extra_roots: Arc::new([]),
        })
    }

    /// Whether this is an `https://` target.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Also trusts the certificates in the PEM file `ca` (gateways behind a private CA).
    /// Only meaningful for `https://`; refused for `http://` so a typo does not go unseen.
    pub fn with_ca(mut self, ca: &Path) -> Result<Self, HttpError> {
        let err = |reason: String| HttpError::Ca {
            path: ca.display().to_string(),
            reason,
        };
        if !self.tls {
            return Err(err(format!("{} is not an https:// URL", self.host)));
        }
        let pem = std::fs::read(ca).map_err(|e| err(e.to_string()))?;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(e.to_string()))?;
        if certs.is_empty() {
            return Err(err("no PEM certificate in it".into()));
        }
        self.extra_roots = certs.into();
        Ok(self)
    }
}

/// GETs `target`; returns the status and body (even for non-2xx answers).
pub async fn get(target: &Target) -> Result<(StatusCode, Bytes), HttpError> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port)).await?;
    let _ = tcp.set_nodelay(true);
    if target.tls {
        let name = rustls_pki_types::ServerName::try_from(target.host.clone())
            .map_err(|_| HttpError::ServerName(target.host.clone()))?;
        let config = if target.extra_roots.is_empty() {
            tls_config()
        } else {
            // Built per call: probes run seconds apart, and this keeps `Target` plain data.
            client_config(&target.extra_roots)
        };
        let tls = tokio_rustls::TlsConnector::from(config)
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

/// The config with the webpki roots only, built once.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| client_config(&[])).clone()
}

/// A client config trusting the webpki roots and `extra` (certificates a parser already
/// accepted; one rustls refuses as a trust anchor is skipped, and the handshake then says
/// the issuer is unknown).
fn client_config(extra: &[rustls_pki_types::CertificateDer<'static>]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    roots.add_parsable_certificates(extra.iter().cloned());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports the default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
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
                path: "/healthz?x=1".into(),
                extra_roots: Arc::new([]),
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

    #[tokio::test]
    async fn https_trusts_a_private_ca_only_when_given_it() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A CA and a server certificate for 127.0.0.1 signed by it.
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca, rcgen::KeyPair::generate().unwrap()).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls_pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            // Two connections: the refused handshake, then the trusted one.
            for _ in 0..2 {
                let (tcp, _) = listener.accept().await.unwrap();
                let Ok(mut s) = acceptor.accept(tcp).await else {
                    continue;
                };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await.unwrap();
                s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
                let _ = s.shutdown().await;
            }
        });
        let url = format!("https://127.0.0.1:{port}/healthz");
        let anonymous = Target::parse(&url).unwrap();
        let err = get(&anonymous).await.unwrap_err();
        assert!(matches!(err, HttpError::Connect(_)), "{err}");

        let dir = std::env::temp_dir().join(format!("switchyard-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_file = dir.join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        let trusted = Target::parse(&url).unwrap().with_ca(&ca_file).unwrap();
        let (status, body) = get(&trusted).await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"ok");

        // A file without certificates, and http://, are refused up front.
        std::fs::write(dir.join("empty.pem"), "nothing here").unwrap();
        assert!(
            Target::parse(&url)
                .unwrap()
                .with_ca(&dir.join("empty.pem"))
                .is_err()
        );
        let plain = Target::parse("http://127.0.0.1:1/").unwrap();
        assert!(plain.with_ca(&ca_file).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
