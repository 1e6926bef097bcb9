//! Key files for a cluster with authentication on (DESIGN contract 5), as the demo and the
//! identity scenarios need them: the app's login service (an HS256 key in a JWKS file, and
//! app tokens signed with it) and the routers' Ed25519 ticket key with its public JWKS; and
//! [`Pki`], a private CA with a server and a client certificate for the TLS scenarios.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use switchyard_identity::{TicketSigner, generate_ed25519_pem, unix_now};

/// `kid` of the login service's key.
const APP_KID: &str = "app-1";

/// Key files in a private temporary directory (removed on drop).
#[derive(Debug)]
pub struct AuthKeys {
    /// Holds the files.
    dir: tempfile::TempDir,
    /// The login service's signing secret (random per cluster).
    app_secret: [u8; 32],
}

impl AuthKeys {
    /// Makes fresh keys and writes `app-jwks.json`, `ticket-key.pem` and `ticket-jwks.json`.
    pub fn generate() -> std::io::Result<Self> {
        let dir = tempfile::tempdir()?;
        let app_secret: [u8; 32] = rand::random();
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(app_secret);
        std::fs::write(
            dir.path().join("app-jwks.json"),
            format!(r#"{{"keys":[{{"kty":"oct","kid":"{APP_KID}","alg":"HS256","k":"{k}"}}]}}"#),
        )?;
        let pem = generate_ed25519_pem();
        let signer = TicketSigner::from_pem(pem.as_bytes(), Duration::from_secs(60))
            .map_err(std::io::Error::other)?;
        write_private(&dir.path().join("ticket-key.pem"), pem.as_bytes())?;
        std::fs::write(
            dir.path().join("ticket-jwks.json"),
            signer.jwks().to_string(),
        )?;
        Ok(Self { dir, app_secret })
    }

    /// The app's public keys (JWKS): `--app-jwks` of routers and `jwt`-mode gateways.
    pub fn app_jwks(&self) -> PathBuf {
        self.dir.path().join("app-jwks.json")
    }

    /// The routers' private ticket key: `--ticket-key`.
    pub fn ticket_key(&self) -> PathBuf {
        self.dir.path().join("ticket-key.pem")
    }

    /// The routers' public ticket keys (JWKS): `--ticket-jwks` of gateways.
    pub fn ticket_jwks(&self) -> PathBuf {
        self.dir.path().join("ticket-jwks.json")
    }

    /// Router flags: Route needs an app token, answers carry tickets.
    pub fn router_args(&self) -> Vec<String> {
        vec![
            "--app-jwks".into(),
            path(&self.app_jwks()),
            "--ticket-key".into(),
            path(&self.ticket_key()),
        ]
    }

    /// Gateway flags: a ticket, else an app token (clients routing from a cached list
    /// while every router is down).
    pub fn gateway_args(&self) -> Vec<String> {
        vec![
            "--auth".into(),
            "ticket,jwt".into(),
            "--ticket-jwks".into(),
            path(&self.ticket_jwks()),
            "--app-jwks".into(),
            path(&self.app_jwks()),
        ]
    }

    /// An app token for `client_id`, valid for `ttl` (what the app's login service hands
    /// its users).
    pub fn app_token(&self, client_id: &str, ttl: Duration) -> String {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(APP_KID.into());
        let claims = serde_json::json!({
            "sub": client_id,
            "exp": unix_now() + ttl.as_secs(),
        });
        let key = EncodingKey::from_secret(&self.app_secret).expect("a 32-byte secret");
        jsonwebtoken::encode(&header, &claims, &key).expect("HS256 signs anything")
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Writes a private key readable by its owner only.
fn write_private(p: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)?;
    f.write_all(bytes)
}

/// A private CA, a server certificate and a client certificate from it (PEM).
#[derive(Debug)]
pub struct Pki {
    /// The CA certificate: what clients (and a router's `--client-ca`) trust.
    pub ca_pem: String,
    /// Server certificate and key, for `server_name` (an IP or a DNS name).
    pub server: (String, String),
    /// Client certificate and key (mTLS).
    pub client: (String, String),
}

impl Pki {
    /// Makes the CA and both certificates.
    pub fn new(server_name: &str, client_name: &str) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa,
            KeyPair, KeyUsagePurpose,
        };
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("CA key"))
            .expect("self-signed CA");
        let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
            let key = KeyPair::generate().expect("leaf key");
            let mut params = CertificateParams::new(vec![name.to_owned()]).expect("leaf params");
            params.extended_key_usages = vec![usage];
            let cert = params.signed_by(&key, &ca).expect("signed by the CA");
            (cert.pem(), key.serialize_pem())
        };
        Self {
            server: leaf(server_name, ExtendedKeyUsagePurpose::ServerAuth),
            client: leaf(client_name, ExtendedKeyUsagePurpose::ClientAuth),
            ca_pem: ca.pem(),
        }
    }
}
