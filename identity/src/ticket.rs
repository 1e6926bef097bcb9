//! Login tickets: a router signs one into every Route answer, the gateways of that answer
//! admit the client with it (DESIGN contract 5). EdDSA (Ed25519) JWTs, `kid` = the RFC 7638
//! thumbprint of the public key, so a key's id needs no configuration and cannot collide.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use rustls_pki_types::PrivatePkcs8KeyDer;
use rustls_pki_types::pem::PemObject as _;
use serde::{Deserialize, Serialize};

use crate::keys::{KeyError, KeySet};

/// Default ticket lifetime: long enough to connect over a slow network after routing,
/// short enough that a leaked ticket is soon worthless.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);

/// The claims of a login ticket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The client id the ticket was issued to.
    pub sub: String,
    /// The gateways of the Route answer: only these admit it.
    pub gws: Vec<String>,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expires at (Unix seconds).
    pub exp: u64,
    /// Unique id, for logs and replay bookkeeping.
    pub jti: String,
}

/// A signed ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    /// The compact JWT.
    pub token: String,
    /// How long it stays valid from when it was issued.
    pub valid_for: Duration,
}

/// One Ed25519 key of a signer.
struct SigningKey {
    /// RFC 7638 thumbprint of the public key.
    kid: String,
    /// The private key, for signing.
    encoding: EncodingKey,
    /// The raw public key (JWK `x`).
    public: Vec<u8>,
}

/// A router's ticket keys: the first signs, all are published (so a key can be published
/// before it signs and kept after it stops, for rotation without a refused login).
pub struct TicketSigner {
    /// Signing key first.
    keys: Vec<SigningKey>,
    /// `exp - iat` of every ticket.
    lifetime: Duration,
}

impl fmt::Debug for TicketSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TicketSigner")
            .field("kids", &self.kids())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// RFC 7638 thumbprint of an Ed25519 public key.
fn thumbprint(public: &[u8]) -> String {
    let canonical = format!(
        r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
        URL_SAFE_NO_PAD.encode(public)
    );
    let digest = ring::digest::digest(&ring::digest::SHA256, canonical.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl TicketSigner {
    /// From PEM text holding one or more PKCS#8 Ed25519 private keys (`-----BEGIN PRIVATE
    /// KEY-----`); the first signs.
    pub fn from_pem(pem: &[u8], lifetime: Duration) -> Result<Self, KeyError> {
        if lifetime.is_zero() || lifetime > Duration::from_secs(24 * 3600) {
            return Err(KeyError::Pem(format!(
                "ticket lifetime {lifetime:?} is outside 1 s ..= 24 h"
            )));
        }
        let mut keys = Vec::new();
        for (i, der) in PrivatePkcs8KeyDer::pem_slice_iter(pem).enumerate() {
            let der = der.map_err(|e| KeyError::Pem(format!("PEM block {}: {e}", i + 1)))?;
            let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der()).map_err(
                |e| KeyError::Pem(format!("key {}: not an Ed25519 PKCS#8 key ({e})", i + 1)),
            )?;
            let public = pair.public_key().as_ref().to_vec();
            keys.push(SigningKey {
                kid: thumbprint(&public),
                encoding: EncodingKey::from_ed_der(der.secret_pkcs8_der()),
                public,
            });
        }
        if keys.is_empty() {
            return Err(KeyError::Pem(
                "no `-----BEGIN PRIVATE KEY-----` block (PKCS#8 Ed25519) found".into(),
            ));
        }
        Ok(Self { keys, lifetime })
    }

    /// The `kid` that signs.
    pub fn kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Every published `kid`, signing one first.
    pub fn kids(&self) -> Vec<&str> {
        self.keys.iter().map(|k| k.kid.as_str()).collect()
    }

    /// Ticket lifetime.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// Signs a ticket for `client_id` and the answer's gateways, issued at `now` (Unix s).
    pub fn issue_at(
        &self,
        client_id: &str,
        gateways: &[&str],
        now: u64,
    ) -> Result<Ticket, jsonwebtoken::errors::Error> {
        let key = &self.keys[0];
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(key.kid.clone());
        let claims = TicketClaims {
            sub: client_id.to_owned(),
            gws: gateways.iter().map(|g| (*g).to_owned()).collect(),
            iat: now,
            exp: now + self.lifetime.as_secs().max(1),
            jti: hex::encode(rand::random::<[u8; 12]>()),
        };
        let token = jsonwebtoken::encode(&header, &claims, &key.encoding)?;
        Ok(Ticket {
            token,
            valid_for: Duration::from_secs(claims.exp - claims.iat),
        })
    }

    /// Signs a ticket issued now.
    pub fn issue(
        &self,
        client_id: &str,
        gateways: &[&str],
    ) -> Result<Ticket, jsonwebtoken::errors::Error> {
        self.issue_at(client_id, gateways, crate::unix_now())
    }

    /// The public keys as a JWKS document (what gateways verify with).
    pub fn jwks(&self) -> serde_json::Value {
        let keys: Vec<serde_json::Value> = self
            .keys
            .iter()
            .map(|k| {
                serde_json::json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": URL_SAFE_NO_PAD.encode(&k.public),
                    "kid": k.kid,
                    "alg": "EdDSA",
                    "use": "sig",
                })
            })
            .collect();
        serde_json::json!({ "keys": keys })
    }

    /// The public keys as a [`KeySet`] (for a verifier in the same process).
    pub fn key_set(&self) -> KeySet {
        KeySet::from_jwks(self.jwks().to_string().as_bytes()).expect("our own JWKS is well formed")
    }
}

/// A new Ed25519 private key as PKCS#8 PEM, for the demo and tests (operators may use
/// `openssl genpkey -algorithm ed25519`).
pub fn generate_ed25519_pem() -> String {
    let rng = ring::rand::SystemRandom::new();
    let doc = Ed25519KeyPair::generate_pkcs8(&rng).expect("the system RNG works");
    let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
    let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END PRIVATE KEY-----\n");
    pem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signer_publishes_every_key_and_signs_with_the_first() {
        let (a, b) = (generate_ed25519_pem(), generate_ed25519_pem());
        let signer =
            TicketSigner::from_pem(format!("{a}{b}").as_bytes(), DEFAULT_LIFETIME).unwrap();
        assert_eq!(signer.kids().len(), 2);
        assert_ne!(signer.kids()[0], signer.kids()[1]);
        let only_b = TicketSigner::from_pem(b.as_bytes(), DEFAULT_LIFETIME).unwrap();
        assert_eq!(
            signer.kids()[1],
            only_b.kid(),
            "kids are thumbprints: stable"
        );
        let t = signer.issue_at("u1", &["gw-1"], 1_000).unwrap();
        let header = jsonwebtoken::decode_header(&t.token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(signer.kid()));
        assert_eq!(t.valid_for, DEFAULT_LIFETIME);
        assert_eq!(signer.key_set().len(), 2);
    }

    #[test]
    fn bad_key_files_say_why() {
        let e = TicketSigner::from_pem(b"", DEFAULT_LIFETIME).unwrap_err();
        assert!(e.to_string().contains("BEGIN PRIVATE KEY"), "{e}");
        let e =
            TicketSigner::from_pem(generate_ed25519_pem().as_bytes(), Duration::ZERO).unwrap_err();
        assert!(e.to_string().contains("lifetime"), "{e}");
    }

    #[test]
    fn the_thumbprint_matches_rfc_8037_appendix_a3() {
        // RFC 8037 A.3: the JWK thumbprint of the example Ed25519 public key.
        let x = URL_SAFE_NO_PAD
            .decode("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo")
            .unwrap();
        assert_eq!(
            thumbprint(&x),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }
}
