//! Checking credentials: app tokens ([`AppTokens`]) and login tickets ([`Tickets`]). Each
//! failure is a [`Refusal`] whose text is safe to log and to send back (it never echoes
//! the token).

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Validation, decode, decode_header};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::keys::KeySource;
use crate::ticket::TicketClaims;

/// Longest token looked at; anything longer is refused unread.
pub const MAX_TOKEN: usize = 8 * 1024;

/// Why a credential is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// None was presented.
    #[error("no token presented")]
    Missing,
    /// Not a JWT, or claims of the wrong shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// Signed by a key the verifier does not have (rotated out, or never trusted).
    #[error("token signed by unknown key {0:?}")]
    UnknownKey(String),
    /// The header's algorithm is not the one its key is for.
    #[error("algorithm {0} does not fit the key")]
    Algorithm(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is still ahead.
    #[error("token not valid yet")]
    NotYetValid,
    /// `sub` is not the client id asked for.
    #[error("token was issued to another client")]
    WrongSubject,
    /// `aud` is not one we accept.
    #[error("token audience not accepted")]
    WrongAudience,
    /// `iss` is not one we accept.
    #[error("token issuer not accepted")]
    WrongIssuer,
    /// A ticket that does not name this gateway.
    #[error("ticket is not for this gateway")]
    NotForGateway,
}

impl Refusal {
    /// Whether a fresh credential would help (REJECT_CODE_AUTH_EXPIRED): it is out of date,
    /// or its key has been rotated out. Everything else is REJECT_CODE_AUTH, terminal.
    pub fn is_expired(&self) -> bool {
        matches!(self, Self::Expired | Self::UnknownKey(_))
    }

    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::Malformed(_) => "malformed",
            Self::UnknownKey(_) => "unknown_key",
            Self::Algorithm(_) => "algorithm",
            Self::BadSignature => "bad_signature",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::WrongSubject => "wrong_subject",
            Self::WrongAudience => "wrong_audience",
            Self::WrongIssuer => "wrong_issuer",
            Self::NotForGateway => "not_for_gateway",
        }
    }
}

/// What an app token must satisfy besides its signature and `exp`.
#[derive(Debug, Clone)]
pub struct Rules {
    /// Accepted `aud` values; empty = `aud` is not checked.
    pub audience: Vec<String>,
    /// Accepted `iss` values; empty = `iss` is not checked.
    pub issuer: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Default clock-skew allowance: small, because tickets live only a minute.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(5);

impl Default for Rules {
    fn default() -> Self {
        Self {
            audience: Vec::new(),
            issuer: Vec::new(),
            leeway: DEFAULT_LEEWAY,
        }
    }
}

/// The claims of an app token that we read (others are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct AppClaims {
    /// The client id.
    pub sub: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Issuer, when present.
    #[serde(default)]
    pub iss: Option<String>,
}

fn map_error(e: &jsonwebtoken::errors::Error) -> Refusal {
    match e.kind() {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidSignature => Refusal::BadSignature,
        ErrorKind::InvalidAudience => Refusal::WrongAudience,
        ErrorKind::InvalidIssuer => Refusal::WrongIssuer,
        ErrorKind::InvalidSubject => Refusal::WrongSubject,
        ErrorKind::InvalidAlgorithm => Refusal::Algorithm("mismatch".into()),
        ErrorKind::MissingRequiredClaim(c) => Refusal::Malformed(format!("no `{c}` claim")),
        _ => Refusal::Malformed(e.to_string()),
    }
}

/// Header, key lookup (with one fresh look when the `kid` is unknown), signature, `exp`,
/// `nbf`, then the caller's own validation settings.
fn check<C: DeserializeOwned>(
    keys: &dyn KeySource,
    token: &str,
    leeway: Duration,
    required: &[&str],
    tune: impl FnOnce(&mut Validation),
) -> Result<C, Refusal> {
    if token.is_empty() {
        return Err(Refusal::Missing);
    }
    if token.len() > MAX_TOKEN {
        return Err(Refusal::Malformed(format!(
            "{} bytes; at most {MAX_TOKEN}",
            token.len()
        )));
    }
    let header = decode_header(token).map_err(|e| Refusal::Malformed(e.to_string()))?;
    let kid = header.kid.as_deref();
    let mut set = keys.keys();
    if set.find(kid).is_none() {
        keys.missing(kid.unwrap_or(""));
        set = keys.keys();
    }
    let Some((key, algorithms)) = set.find(kid) else {
        return Err(Refusal::UnknownKey(
            kid.unwrap_or("").chars().take(64).collect(),
        ));
    };
    if !algorithms.contains(&header.alg) {
        return Err(Refusal::Algorithm(format!("{:?}", header.alg)));
    }
    let mut validation = Validation::new(header.alg);
    validation.leeway = leeway.as_secs();
    validation.validate_nbf = true;
    validation.validate_aud = false;
    validation.set_required_spec_claims(required);
    tune(&mut validation);
    decode::<C>(token, key, &validation)
        .map(|data| data.claims)
        .map_err(|e| map_error(&e))
}

/// Verifies app tokens: signed by a key of the source, unexpired, `sub` = the client id,
/// and `aud`/`iss` as the [`Rules`] say.
pub struct AppTokens {
    /// Where the app's public keys come from (a JWKS file, usually).
    keys: Arc<dyn KeySource>,
    /// Audience, issuer, leeway.
    rules: Rules,
}

impl std::fmt::Debug for AppTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppTokens")
            .field("rules", &self.rules)
            .finish_non_exhaustive()
    }
}

impl AppTokens {
    /// A verifier over these keys.
    pub fn new(keys: Arc<dyn KeySource>, rules: Rules) -> Self {
        Self { keys, rules }
    }

    /// The token, if it is a valid app token for `client_id`.
    pub fn verify(&self, token: &str, client_id: &str) -> Result<AppClaims, Refusal> {
        let rules = &self.rules;
        let claims: AppClaims = check(&*self.keys, token, rules.leeway, &["exp", "sub"], |v| {
            if !rules.audience.is_empty() {
                v.validate_aud = true;
                v.set_audience(&rules.audience);
                v.required_spec_claims.insert("aud".into());
            }
            if !rules.issuer.is_empty() {
                v.set_issuer(&rules.issuer);
                v.required_spec_claims.insert("iss".into());
            }
        })?;
        if claims.sub != client_id {
            return Err(Refusal::WrongSubject);
        }
        Ok(claims)
    }
}

/// Verifies login tickets: signed by a router key of the source, unexpired, issued to this
/// client, naming this gateway.
pub struct Tickets {
    /// The routers' public ticket keys.
    keys: Arc<dyn KeySource>,
    /// Clock skew allowed on `exp`.
    leeway: Duration,
}

impl std::fmt::Debug for Tickets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tickets")
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl Tickets {
    /// A verifier over these keys.
    pub fn new(keys: Arc<dyn KeySource>, leeway: Duration) -> Self {
        Self { keys, leeway }
    }

    /// The ticket's claims, if it admits `client_id` to `gateway_id`.
    pub fn verify(
        &self,
        token: &str,
        client_id: &str,
        gateway_id: &str,
    ) -> Result<TicketClaims, Refusal> {
        let claims: TicketClaims = check(&*self.keys, token, self.leeway, &["exp", "sub"], |_| {})?;
        if claims.sub != client_id {
            return Err(Refusal::WrongSubject);
        }
        if !claims.gws.iter().any(|g| g == gateway_id) {
            return Err(Refusal::NotForGateway);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::KeySet;
    use crate::ticket::{DEFAULT_LIFETIME, TicketSigner, generate_ed25519_pem};
    use crate::unix_now;
    use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};

    fn signer() -> TicketSigner {
        TicketSigner::from_pem(generate_ed25519_pem().as_bytes(), DEFAULT_LIFETIME).unwrap()
    }

    fn tickets_for(signer: &TicketSigner) -> Tickets {
        Tickets::new(Arc::new(Arc::new(signer.key_set())), DEFAULT_LEEWAY)
    }

    #[test]
    fn a_ticket_admits_its_client_at_its_gateways_only() {
        let s = signer();
        let v = tickets_for(&s);
        let t = s.issue("u1", &["gw-1", "gw-2"]).unwrap().token;
        let c = v.verify(&t, "u1", "gw-2").unwrap();
        assert_eq!(c.gws, ["gw-1", "gw-2"]);
        assert_eq!(v.verify(&t, "u2", "gw-1"), Err(Refusal::WrongSubject));
        assert_eq!(v.verify(&t, "u1", "gw-3"), Err(Refusal::NotForGateway));
        assert_eq!(v.verify("", "u1", "gw-1"), Err(Refusal::Missing));
        assert!(matches!(
            v.verify("a.b", "u1", "gw-1"),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn expired_tampered_and_foreign_tickets_are_refused() {
        let s = signer();
        let v = tickets_for(&s);
        let old = s
            .issue_at("u1", &["gw-1"], unix_now() - 3600)
            .unwrap()
            .token;
        let e = v.verify(&old, "u1", "gw-1").unwrap_err();
        assert_eq!(e, Refusal::Expired);
        assert!(e.is_expired());

        let t = s.issue("u1", &["gw-1"]).unwrap().token;
        let mut parts: Vec<String> = t.split('.').map(str::to_owned).collect();
        // Another subject, the original signature.
        let forged = s.issue("u2", &["gw-1"]).unwrap().token;
        parts[1] = forged.split('.').nth(1).unwrap().to_owned();
        let e = v.verify(&parts.join("."), "u2", "gw-1").unwrap_err();
        assert_eq!(e, Refusal::BadSignature);
        assert!(!e.is_expired());

        let other = signer().issue("u1", &["gw-1"]).unwrap().token;
        let e = v.verify(&other, "u1", "gw-1").unwrap_err();
        assert!(matches!(e, Refusal::UnknownKey(_)), "{e:?}");
    }

    #[test]
    fn a_rotated_set_verifies_old_and_new_tickets() {
        let (a, b) = (generate_ed25519_pem(), generate_ed25519_pem());
        let old = TicketSigner::from_pem(a.as_bytes(), DEFAULT_LIFETIME).unwrap();
        let new = TicketSigner::from_pem(format!("{b}{a}").as_bytes(), DEFAULT_LIFETIME).unwrap();
        let v = tickets_for(&new);
        for s in [&old, &new] {
            let t = s.issue("u1", &["gw-1"]).unwrap().token;
            assert!(v.verify(&t, "u1", "gw-1").is_ok());
        }
    }

    fn hs_keys(kid: &str, secret: &[u8]) -> Arc<dyn KeySource> {
        use base64::Engine as _;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let jwks = format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{k}"}}]}}"#);
        Arc::new(Arc::new(KeySet::from_jwks(jwks.as_bytes()).unwrap()))
    }

    fn app_token(kid: &str, secret: &[u8], claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(kid.into());
        encode(&h, &claims, &EncodingKey::from_secret(secret).unwrap()).unwrap()
    }

    #[test]
    fn app_tokens_check_sub_exp_nbf_aud_and_iss() {
        let now = unix_now();
        let rules = Rules {
            audience: vec!["chat".into()],
            issuer: vec!["login.example".into()],
            ..Rules::default()
        };
        let v = AppTokens::new(hs_keys("k1", b"secret"), rules);
        let good = serde_json::json!({"sub": "u1", "exp": now + 60, "aud": "chat", "iss": "login.example"});
        let tok = |c: serde_json::Value| app_token("k1", b"secret", c);
        assert_eq!(v.verify(&tok(good.clone()), "u1").unwrap().sub, "u1");
        assert_eq!(
            v.verify(&tok(good.clone()), "u2"),
            Err(Refusal::WrongSubject)
        );
        let mut c = good.clone();
        c["exp"] = (now - 60).into();
        assert_eq!(v.verify(&tok(c), "u1"), Err(Refusal::Expired));
        let mut c = good.clone();
        c["nbf"] = (now + 600).into();
        assert_eq!(v.verify(&tok(c), "u1"), Err(Refusal::NotYetValid));
        let mut c = good.clone();
        c["aud"] = "other".into();
        assert_eq!(v.verify(&tok(c), "u1"), Err(Refusal::WrongAudience));
        let mut c = good.clone();
        c["iss"] = "evil".into();
        assert_eq!(v.verify(&tok(c), "u1"), Err(Refusal::WrongIssuer));
        let mut c = good.clone();
        c.as_object_mut().unwrap().remove("exp");
        assert!(matches!(
            v.verify(&tok(c), "u1"),
            Err(Refusal::Malformed(_))
        ));
        assert!(matches!(
            v.verify(&app_token("k2", b"secret", good.clone()), "u1"),
            Err(Refusal::UnknownKey(_))
        ));
        assert_eq!(
            v.verify(&app_token("k1", b"wrong", good), "u1"),
            Err(Refusal::BadSignature)
        );
    }

    #[test]
    fn a_token_cannot_choose_an_algorithm_its_key_is_not_for() {
        // An Ed25519 public key must not be usable as an HMAC secret.
        let s = signer();
        let v = AppTokens::new(Arc::new(Arc::new(s.key_set())), Rules::default());
        let kid = s.kid().to_owned();
        let t = app_token(
            &kid,
            b"anything",
            serde_json::json!({"sub": "u1", "exp": unix_now() + 60}),
        );
        assert!(matches!(v.verify(&t, "u1"), Err(Refusal::Algorithm(_))));
    }
}
