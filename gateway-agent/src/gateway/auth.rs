//! The login check run on every HELLO (DESIGN contract 5): auth modes — `ticket` (a
//! router's login ticket), `jwt` (the app's own token), `hmac` (a shared secret) and an
//! application's own check ([`super::App::authenticate`]) — tried in order; the HELLO
//! passes when any of them accepts it.

use std::collections::BTreeMap;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_identity::verify::DEFAULT_LEEWAY;
use switchyard_identity::{
    AppTokens, KeyError, KeySource, KeyUnion, Rules, Secret, Tickets, Watched, unix_now,
};
use switchyard_proto::limits::MAX_CLIENT_ID;
use switchyard_proto::v1;

pub use switchyard_identity::Refusal;

use super::config::{AuthConfig, ConfigError};
use super::ticket_keys::UrlKeys;

/// [`Identity::mode`] of a HELLO admitted with no mode configured.
pub const ANONYMOUS: &str = "anonymous";

/// Who a HELLO proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The client id the credential was checked against (the HELLO's): sessions are
    /// keyed by it.
    pub client_id: String,
    /// The mode that proved it (`ticket`, `jwt`, `hmac`, an application's own name), or
    /// [`ANONYMOUS`]: the duplicate-login kick trusts only proven identities.
    pub mode: &'static str,
}

impl Identity {
    /// `client_id`, proven by `mode`.
    pub fn new(client_id: impl Into<String>, mode: &'static str) -> Self {
        Self {
            client_id: client_id.into(),
            mode,
        }
    }

    /// `client_id`, taken on its word (no mode configured).
    pub fn anonymous(client_id: impl Into<String>) -> Self {
        Self::new(client_id, ANONYMOUS)
    }

    /// Whether a mode proved it.
    pub fn is_authenticated(&self) -> bool {
        self.mode != ANONYMOUS
    }
}

/// Why a HELLO is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The HELLO itself is malformed (answered with `REJECT{BAD_HELLO}`).
    #[error("bad hello: {0}")]
    BadHello(String),
    /// Credentials refused (`REJECT{AUTH_EXPIRED}` when a fresh one would help, else
    /// `REJECT{AUTH}`, terminal for the client).
    #[error("{mode}: {refusal}")]
    Refused {
        /// The mode whose refusal says most (see [`Authenticator`]).
        mode: &'static str,
        /// Why.
        refusal: Refusal,
    },
}

impl AuthError {
    /// The REJECT code that answers it.
    pub fn reject_code(&self) -> v1::RejectCode {
        match self {
            Self::BadHello(_) => v1::RejectCode::BadHello,
            Self::Refused { refusal, .. } if refusal.is_expired() => v1::RejectCode::AuthExpired,
            Self::Refused { .. } => v1::RejectCode::Auth,
        }
    }

    /// The REJECT reason: the refusal's own text (it never echoes the token).
    pub fn reason(&self) -> String {
        match self {
            Self::BadHello(r) => r.clone(),
            Self::Refused { refusal, .. } => refusal.to_string(),
        }
    }
}

/// A future a HELLO waits on before its credential is checked once more.
pub type Refreshed = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Decides whether a HELLO may log in. Runs on the connection's task, so it should be
/// quick; an implementation needing I/O can cache.
pub trait Auth: Send + Sync + 'static {
    /// `Ok` accepts the login as that identity.
    fn check(&self, hello: &v1::Hello) -> Result<Identity, AuthError>;

    /// After [`Auth::check`] refused a token signed by an unknown key: a future that
    /// resolves once keys fetched from elsewhere were looked up again, so a key added by a
    /// rotation admits its first ticket. The gateway waits on it (bounded) and checks
    /// again. `None`: nothing to wait for.
    fn keys_refreshed(&self) -> Option<Refreshed> {
        None
    }
}

/// The client id must be usable as a session key before any mode looks at it.
pub(crate) fn check_client_id(id: &str) -> Result<(), AuthError> {
    if id.is_empty() {
        return Err(AuthError::BadHello("empty client_id".into()));
    }
    if id.len() > MAX_CLIENT_ID {
        return Err(AuthError::BadHello(format!(
            "client_id of {} bytes, at most {MAX_CLIENT_ID}",
            id.len()
        )));
    }
    Ok(())
}

/// Any non-empty `client_id` of at most [`MAX_CLIENT_ID`] bytes, as an anonymous identity.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAny;

impl Auth for AcceptAny {
    fn check(&self, hello: &v1::Hello) -> Result<Identity, AuthError> {
        check_client_id(&hello.client_id)?;
        Ok(Identity::anonymous(&hello.client_id))
    }
}

/// A built-in auth mode (`--auth`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthMode {
    /// A router's login ticket naming this gateway.
    Ticket,
    /// The app's own JWT.
    Jwt,
    /// An HMAC token of a shared secret.
    Hmac,
}

impl AuthMode {
    /// Its name on the command line and in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ticket => "ticket",
            Self::Jwt => "jwt",
            Self::Hmac => "hmac",
        }
    }
}

impl std::str::FromStr for AuthMode {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s.trim() {
            "ticket" => Ok(Self::Ticket),
            "jwt" => Ok(Self::Jwt),
            "hmac" => Ok(Self::Hmac),
            other => Err(ConfigError::Invalid {
                field: "auth",
                reason: format!("unknown mode {other:?} (ticket | jwt | hmac)"),
            }),
        }
    }
}

/// `ticket` mode: an unexpired login ticket, signed by a router key, issued to this client
/// and naming this gateway.
#[derive(Debug)]
pub struct TicketAuth {
    /// Signature, expiry and subject checks over the routers' public keys.
    tickets: Tickets,
    /// A ticket must name it in `gws`.
    gateway_id: String,
}

impl TicketAuth {
    /// Checks tickets for `gateway_id` with `keys`.
    pub fn new(keys: Arc<dyn KeySource>, gateway_id: impl Into<String>) -> Self {
        Self {
            tickets: Tickets::new(keys, DEFAULT_LEEWAY),
            gateway_id: gateway_id.into(),
        }
    }

    /// The identity a HELLO's ticket proves.
    pub fn verify(&self, hello: &v1::Hello) -> Result<Identity, Refusal> {
        self.tickets
            .verify(&hello.token, &hello.client_id, &self.gateway_id)
            .map(|_| Identity::new(&hello.client_id, "ticket"))
    }
}

/// `jwt` mode: the app's token, `sub` = the client id.
#[derive(Debug)]
pub struct JwtAuth {
    /// Signature, expiry, subject, audience and issuer checks.
    tokens: AppTokens,
}

impl JwtAuth {
    /// Checks app tokens with `keys` under `rules`.
    pub fn new(keys: Arc<dyn KeySource>, rules: Rules) -> Self {
        Self {
            tokens: AppTokens::new(keys, rules),
        }
    }

    /// The identity a HELLO's app token proves.
    pub fn verify(&self, hello: &v1::Hello) -> Result<Identity, Refusal> {
        self.tokens
            .verify(&hello.token, &hello.client_id)
            .map(|_| Identity::new(&hello.client_id, "jwt"))
    }
}

/// HMAC secrets by key id (`--auth-secret-file`: lines `kid secret`).
pub struct HmacKeys {
    /// Secrets by kid; several at once so a secret can be rotated.
    by_kid: BTreeMap<String, Secret>,
}

impl std::fmt::Debug for HmacKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HmacKeys")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The kid of `--auth-secret`.
pub const DEFAULT_KID: &str = "default";

impl HmacKeys {
    /// One secret.
    pub fn single(kid: &str, secret: Secret) -> Self {
        Self {
            by_kid: BTreeMap::from([(kid.to_owned(), secret)]),
        }
    }

    /// Lines `kid secret`; blank lines and `#` comments are skipped. A kid is
    /// `[A-Za-z0-9_-]` (a dot would split the token), each kid once, at least one line.
    pub fn parse(text: &[u8]) -> Result<Self, KeyError> {
        let text = std::str::from_utf8(text).map_err(|_| KeyError::Pem("not UTF-8".into()))?;
        let mut by_kid = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |kid: &str, reason: &str| KeyError::Key {
                kid: kid.to_owned(),
                reason: format!("line {}: {reason}", n + 1),
            };
            let (kid, secret) = line
                .split_once(char::is_whitespace)
                .ok_or_else(|| bad("", "expected `kid secret`"))?;
            let secret = secret.trim();
            if kid.len() > 64
                || !kid
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad(kid, "a kid is 1-64 of [A-Za-z0-9_-]"));
            }
            if secret.is_empty() {
                return Err(bad(kid, "empty secret"));
            }
            if by_kid.insert(kid.to_owned(), Secret::new(secret)).is_some() {
                return Err(bad(kid, "kid appears twice"));
            }
        }
        if by_kid.is_empty() {
            return Err(KeyError::Empty);
        }
        Ok(Self { by_kid })
    }
}

/// Where [`HmacAuth`] reads its secrets.
#[derive(Debug)]
enum HmacSource {
    /// Given once (`--auth-secret`).
    Fixed(Arc<HmacKeys>),
    /// A file re-read when it changes (`--auth-secret-file`).
    File(Watched<HmacKeys>),
}

/// `hmac` mode: tokens `v1.<kid>.<exp>.<hex HMAC-SHA256(secret[kid], "<client_id>\n<exp>")>`
/// with `exp` in Unix seconds; with `legacy`, also the old never-expiring
/// `hex(HMAC-SHA256(secret, client_id))` (docs/protocol.md).
#[derive(Debug)]
pub struct HmacAuth {
    /// The secrets by kid.
    source: HmacSource,
    /// Whether the old token format is still accepted (migration only: it never expires).
    legacy: bool,
}

fn mac(secret: &Secret, message: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes())
        .expect("HMAC accepts any key length");
    mac.update(message);
    mac
}

impl HmacAuth {
    /// One secret, kid [`DEFAULT_KID`] (`--auth-secret`).
    pub fn new(secret: impl Into<String>) -> Self {
        Self {
            source: HmacSource::Fixed(Arc::new(HmacKeys::single(DEFAULT_KID, Secret::new(secret)))),
            legacy: false,
        }
    }

    /// Secrets from a file of `kid secret` lines, re-read when it changes.
    pub fn from_file(path: &Path) -> Result<Self, KeyError> {
        Ok(Self {
            source: HmacSource::File(Watched::open(path, HmacKeys::parse)?),
            legacy: false,
        })
    }

    /// Also accept the old format (`--hmac-legacy`).
    pub fn with_legacy(mut self, legacy: bool) -> Self {
        self.legacy = legacy;
        self
    }

    fn keys(&self) -> Arc<HmacKeys> {
        match &self.source {
            HmacSource::Fixed(k) => k.clone(),
            HmacSource::File(w) => w.get(),
        }
    }

    /// The v1 token for `client_id` under secret `kid`, valid until `exp` (Unix seconds);
    /// `None` when there is no such kid. What an app's login service hands its clients.
    pub fn token(&self, kid: &str, client_id: &str, exp: u64) -> Option<String> {
        let keys = self.keys();
        let secret = keys.by_kid.get(kid)?;
        let sig = mac(secret, format!("{client_id}\n{exp}").as_bytes()).finalize();
        Some(format!("v1.{kid}.{exp}.{}", hex::encode(sig.into_bytes())))
    }

    /// The old-format token for `client_id` under the first secret (tests and migration).
    pub fn legacy_token(&self, client_id: &str) -> String {
        let keys = self.keys();
        let secret = keys.by_kid.values().next().expect("at least one secret");
        hex::encode(mac(secret, client_id.as_bytes()).finalize().into_bytes())
    }

    /// The identity a HELLO's token proves.
    pub fn verify(&self, hello: &v1::Hello) -> Result<Identity, Refusal> {
        let token = hello.token.as_str();
        if token.is_empty() {
            return Err(Refusal::Missing);
        }
        let keys = self.keys();
        let ok = || Ok(Identity::new(&hello.client_id, "hmac"));
        let Some(rest) = token.strip_prefix("v1.") else {
            if self.legacy && token.len() == 64 {
                let given = hex::decode(token)
                    .map_err(|_| Refusal::Malformed("token is not hex".into()))?;
                // Any secret in force: the old format has no kid.
                if keys.by_kid.values().any(|s| {
                    mac(s, hello.client_id.as_bytes())
                        .verify_slice(&given)
                        .is_ok()
                }) {
                    return ok();
                }
                return Err(Refusal::BadSignature);
            }
            return Err(Refusal::Malformed(
                "not a v1.<kid>.<exp>.<mac> token".into(),
            ));
        };
        let parts: Vec<&str> = rest.split('.').collect();
        let [kid, exp_text, sig] = parts[..] else {
            return Err(Refusal::Malformed(
                "not a v1.<kid>.<exp>.<mac> token".into(),
            ));
        };
        let exp: u64 = exp_text
            .parse()
            .map_err(|_| Refusal::Malformed("exp is not Unix seconds".into()))?;
        let given = hex::decode(sig).map_err(|_| Refusal::Malformed("mac is not hex".into()))?;
        let Some(secret) = keys.by_kid.get(kid) else {
            return Err(Refusal::UnknownKey(kid.chars().take(64).collect()));
        };
        // Signature before expiry: only a genuine token is told it is out of date.
        mac(secret, format!("{}\n{exp}", hello.client_id).as_bytes())
            .verify_slice(&given)
            .map_err(|_| Refusal::BadSignature)?;
        if exp.saturating_add(DEFAULT_LEEWAY.as_secs()) < unix_now() {
            return Err(Refusal::Expired);
        }
        ok()
    }
}

/// One configured mode.
#[derive(Debug)]
enum Mode {
    /// `ticket`.
    Ticket(TicketAuth),
    /// `jwt`.
    Jwt(JwtAuth),
    /// `hmac`.
    Hmac(HmacAuth),
}

impl Mode {
    fn name(&self) -> &'static str {
        match self {
            Self::Ticket(_) => "ticket",
            Self::Jwt(_) => "jwt",
            Self::Hmac(_) => "hmac",
        }
    }

    fn verify(&self, hello: &v1::Hello) -> Result<Identity, Refusal> {
        match self {
            Self::Ticket(m) => m.verify(hello),
            Self::Jwt(m) => m.verify(hello),
            Self::Hmac(m) => m.verify(hello),
        }
    }
}

/// How far a check got before it refused: when every mode refuses, the REJECT carries the
/// refusal of the mode that got furthest (a ticket past its expiry says more than the jwt
/// mode not knowing the ticket's key).
fn depth(r: &Refusal) -> u8 {
    match r {
        Refusal::Missing => 0,
        Refusal::Malformed(_) => 1,
        Refusal::UnknownKey(_) => 2,
        Refusal::Algorithm(_) => 3,
        _ => 4,
    }
}

/// Keeps the more telling of two refusals (the earlier one on a tie: modes are in order).
fn deeper(best: Option<AuthError>, next: AuthError) -> AuthError {
    match (best, &next) {
        (Some(b @ AuthError::Refused { .. }), AuthError::Refused { refusal, .. }) => {
            let AuthError::Refused { refusal: old, .. } = &b else {
                unreachable!()
            };
            if depth(refusal) > depth(old) { next } else { b }
        }
        (Some(b), _) => b,
        (None, _) => next,
    }
}

/// The built-in combinator: the configured modes in order; a HELLO passes if any accepts
/// it. With no mode every HELLO is anonymous (allowed on non-loopback listeners only with
/// `--allow-anonymous`).
#[derive(Debug)]
pub struct Authenticator {
    /// In the order tried.
    modes: Vec<Mode>,
    /// The routers' ticket-key URLs, when given: started by [`super::Gateway::load_keys`],
    /// waited on after an unknown `kid`.
    remote: Option<Arc<UrlKeys>>,
    /// Whether a ticket key file is configured too (then the URLs may be down at start).
    ticket_file: bool,
    /// Whether any JWKS file is in use: after an unknown `kid` it is worth a second look
    /// once the file may be re-read.
    files: bool,
}

/// A key file is re-read for an unknown `kid` at most every 100 ms
/// (`switchyard_identity::Watched::check_soon`); a HELLO waits this long before its second
/// look, so a key written to the file just before its first ticket arrived admits it.
const FILE_RECHECK: Duration = Duration::from_millis(150);

impl Authenticator {
    /// No mode: every HELLO is anonymous.
    pub fn anonymous() -> Self {
        Self {
            modes: Vec::new(),
            remote: None,
            ticket_file: false,
            files: false,
        }
    }

    /// The modes `config` asks for, with their keys read (files now; URLs once
    /// [`super::Gateway::load_keys`] runs). Fails on a key file that cannot be used.
    pub fn from_config(config: &AuthConfig, gateway_id: &str) -> Result<Self, ConfigError> {
        config.validate()?;
        let keys_err = |field: &'static str| {
            move |e: KeyError| ConfigError::Invalid {
                field,
                reason: e.to_string(),
            }
        };
        let mut out = Self::anonymous();
        for mode in config.effective_modes() {
            out.modes.push(match mode {
                AuthMode::Ticket => {
                    let mut sources: Vec<Arc<dyn KeySource>> = Vec::new();
                    if let Some(path) = &config.ticket_jwks {
                        sources.push(Arc::new(
                            Watched::jwks(path).map_err(keys_err("ticket_jwks"))?,
                        ));
                        out.ticket_file = true;
                        out.files = true;
                    }
                    if !config.ticket_jwks_urls.is_empty() {
                        let remote = Arc::new(UrlKeys::new(&config.ticket_jwks_urls)?);
                        sources.push(remote.clone());
                        out.remote = Some(remote);
                    }
                    let keys: Arc<dyn KeySource> = if sources.len() == 1 {
                        sources.pop().expect("one source")
                    } else {
                        Arc::new(KeyUnion::new(sources))
                    };
                    Mode::Ticket(TicketAuth::new(keys, gateway_id))
                }
                AuthMode::Jwt => {
                    let path = config.app_jwks.as_ref().expect("validated: jwt has keys");
                    let keys = Watched::jwks(path).map_err(keys_err("app_jwks"))?;
                    out.files = true;
                    let rules = Rules {
                        audience: config.app_audience.clone(),
                        issuer: config.app_issuer.clone(),
                        ..Rules::default()
                    };
                    Mode::Jwt(JwtAuth::new(Arc::new(keys), rules))
                }
                AuthMode::Hmac => {
                    let auth = match (&config.auth_secret_file, &config.auth_secret) {
                        (Some(path), _) => {
                            HmacAuth::from_file(path).map_err(keys_err("auth_secret_file"))?
                        }
                        (None, Some(secret)) => HmacAuth::new(secret.expose()),
                        (None, None) => unreachable!("validated: hmac has a secret"),
                    };
                    Mode::Hmac(auth.with_legacy(config.hmac_legacy))
                }
            });
        }
        Ok(out)
    }

    /// The modes in the order tried (empty: anonymous).
    pub fn modes(&self) -> Vec<&'static str> {
        self.modes.iter().map(Mode::name).collect()
    }

    /// Whether any mode is configured.
    pub fn is_anonymous(&self) -> bool {
        self.modes.is_empty()
    }

    /// Fetches the routers' ticket keys and keeps them fresh (every 30 s, and at once —
    /// at most once a second — for an unknown `kid`). Waits up to `first` for one URL to
    /// answer; fails if none did and no key file stands in.
    pub(crate) async fn load_keys(&self, first: Duration) -> Result<(), String> {
        let Some(remote) = &self.remote else {
            return Ok(());
        };
        match remote.start(first).await {
            Ok(()) => Ok(()),
            Err(why) if self.ticket_file => {
                tracing::warn!(error = %why, "no ticket key URL answered yet; using the key file meanwhile");
                Ok(())
            }
            Err(why) => Err(why),
        }
    }
}

impl Auth for Authenticator {
    fn check(&self, hello: &v1::Hello) -> Result<Identity, AuthError> {
        check_client_id(&hello.client_id)?;
        if self.modes.is_empty() {
            return Ok(Identity::anonymous(&hello.client_id));
        }
        let mut best = None;
        for mode in &self.modes {
            match mode.verify(hello) {
                Ok(id) => return Ok(id),
                Err(refusal) => {
                    let e = AuthError::Refused {
                        mode: mode.name(),
                        refusal,
                    };
                    best = Some(deeper(best, e));
                }
            }
        }
        Err(best.expect("at least one mode refused"))
    }

    fn keys_refreshed(&self) -> Option<Refreshed> {
        match (&self.remote, self.files) {
            (Some(r), false) => Some(r.refreshed()),
            (Some(r), true) => {
                let fetched = r.refreshed();
                Some(Box::pin(async move {
                    tokio::join!(fetched, tokio::time::sleep(FILE_RECHECK));
                }))
            }
            (None, true) => Some(Box::pin(tokio::time::sleep(FILE_RECHECK))),
            (None, false) => None,
        }
    }
}

/// Counts a refused login in `switchyard_gateway_auth_failures_total{mode,reason}`.
pub(crate) fn count_refusal(e: &AuthError) {
    if let AuthError::Refused { mode, refusal } = e {
        metrics::counter!("switchyard_gateway_auth_failures_total", "mode" => *mode, "reason" => refusal.label())
            .increment(1);
    }
}

/// The whole login check: the application's own mode first (`None` = no opinion), then
/// `auth`.
pub(crate) fn login(
    auth: &dyn Auth,
    app: &dyn super::App,
    hello: &v1::Hello,
) -> Result<Identity, AuthError> {
    check_client_id(&hello.client_id)?;
    let mut best = None;
    match app.authenticate(hello) {
        Some(Ok(id)) if id.client_id == hello.client_id => return Ok(id),
        Some(Ok(_)) => {
            best = Some(AuthError::Refused {
                mode: "app",
                refusal: Refusal::WrongSubject,
            });
        }
        Some(Err(refusal)) => {
            best = Some(AuthError::Refused {
                mode: "app",
                refusal,
            });
        }
        None => {}
    }
    match auth.check(hello) {
        // The application's refusal stands against an anonymous admission: its mode is
        // configured, so the HELLO is not unauthenticated-by-design.
        Ok(id) if !id.is_authenticated() && best.is_some() => Err(best.expect("checked above")),
        Ok(id) => Ok(id),
        Err(e) => Err(deeper(best, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_identity::{KeySet, TicketSigner, generate_ed25519_pem};

    fn hello(id: &str, token: &str) -> v1::Hello {
        v1::Hello {
            client_id: id.into(),
            token: token.into(),
            ..Default::default()
        }
    }

    fn signer() -> TicketSigner {
        TicketSigner::from_pem(generate_ed25519_pem().as_bytes(), Duration::from_secs(60)).unwrap()
    }

    fn fixed(set: KeySet) -> Arc<dyn KeySource> {
        Arc::new(Arc::new(set))
    }

    fn refused(r: Result<Identity, AuthError>) -> (v1::RejectCode, &'static str, Refusal) {
        match r {
            Err(e @ AuthError::Refused { .. }) => {
                let code = e.reject_code();
                let AuthError::Refused { mode, refusal } = e else {
                    unreachable!()
                };
                (code, mode, refusal)
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn accept_any_needs_a_client_id_and_is_anonymous() {
        assert!(
            !AcceptAny
                .check(&hello("u1", ""))
                .unwrap()
                .is_authenticated()
        );
        assert!(matches!(
            AcceptAny.check(&hello("", "")),
            Err(AuthError::BadHello(_))
        ));
        let long = "x".repeat(MAX_CLIENT_ID + 1);
        assert!(AcceptAny.check(&hello(&long, "")).is_err());
    }

    #[test]
    fn legacy_hmac_token_matches_the_documented_example_only_when_enabled() {
        // The example in docs/protocol.md.
        let auth = HmacAuth::new("s3cret").with_legacy(true);
        let token = auth.legacy_token("u1");
        assert_eq!(
            token,
            "8f0d05b747219f7d9f13a44304bbda130918600ddbbd901632ba7d35db20554d"
        );
        assert_eq!(auth.verify(&hello("u1", &token)).unwrap().mode, "hmac");
        assert_eq!(
            auth.verify(&hello("u2", &token)),
            Err(Refusal::BadSignature)
        );
        assert!(matches!(
            auth.verify(&hello("u1", "zz")),
            Err(Refusal::Malformed(_))
        ));
        let strict = HmacAuth::new("s3cret");
        assert!(matches!(
            strict.verify(&hello("u1", &token)),
            Err(Refusal::Malformed(_))
        ));
    }

    #[test]
    fn hmac_v1_tokens_carry_a_kid_and_expire() {
        let auth = HmacAuth::new("s3cret");
        let now = unix_now();
        let t = auth.token(DEFAULT_KID, "u1", now + 60).unwrap();
        assert!(t.starts_with("v1.default."), "{t}");
        assert!(auth.verify(&hello("u1", &t)).is_ok());
        assert_eq!(auth.verify(&hello("u2", &t)), Err(Refusal::BadSignature));
        let old = auth.token(DEFAULT_KID, "u1", now - 60).unwrap();
        let e = auth.verify(&hello("u1", &old)).unwrap_err();
        assert_eq!(e, Refusal::Expired);
        assert!(e.is_expired());
        // A later exp with the old signature is a forgery, not an expiry.
        let forged = old.replace(&format!(".{}.", now - 60), &format!(".{}.", now + 600));
        assert_eq!(
            auth.verify(&hello("u1", &forged)),
            Err(Refusal::BadSignature)
        );
        assert!(matches!(
            auth.verify(&hello("u1", "v1.other.1.00")),
            Err(Refusal::UnknownKey(_))
        ));
        assert!(auth.token("other", "u1", now).is_none());
        for bad in [
            "v1.default.x.00",
            "v1.default.1",
            "v1.default.1.zz",
            "garbage",
        ] {
            assert!(
                matches!(auth.verify(&hello("u1", bad)), Err(Refusal::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(auth.verify(&hello("u1", "")), Err(Refusal::Missing));
    }

    #[test]
    fn hmac_secret_files_rotate_and_never_print() {
        let dir = std::env::temp_dir().join(format!("sy-hmac-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("secrets");
        std::fs::write(&p, "# rotation\nk1 first-secret\nk2  second secret\n").unwrap();
        let auth = HmacAuth::from_file(&p).unwrap();
        let exp = unix_now() + 60;
        for kid in ["k1", "k2"] {
            let t = auth.token(kid, "u1", exp).unwrap();
            assert!(auth.verify(&hello("u1", &t)).is_ok(), "{kid}");
        }
        let shown = format!(
            "{auth:?} {:?} {:?}",
            HmacAuth::new("hunter2"),
            HmacKeys::parse(b"k1 hunter2").unwrap()
        );
        assert!(
            !shown.contains("first-secret") && !shown.contains("hunter2"),
            "{shown}"
        );
        for bad in ["", "k1\n", "k.1 s\n", "k1 a\nk1 b\n"] {
            assert!(HmacKeys::parse(bad.as_bytes()).is_err(), "{bad:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ticket_mode_admits_tickets_for_this_gateway_only() {
        let s = signer();
        let auth = TicketAuth::new(fixed(s.key_set()), "gw-1");
        let t = s.issue("u1", &["gw-1", "gw-2"]).unwrap().token;
        assert_eq!(auth.verify(&hello("u1", &t)).unwrap().mode, "ticket");
        assert_eq!(auth.verify(&hello("u2", &t)), Err(Refusal::WrongSubject));
        let other = s.issue("u1", &["gw-2"]).unwrap().token;
        assert_eq!(
            auth.verify(&hello("u1", &other)),
            Err(Refusal::NotForGateway)
        );
    }

    fn hs_jwks(kid: &str, secret: &[u8]) -> KeySet {
        use base64::Engine as _;
        let k = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        KeySet::from_jwks(
            format!(r#"{{"keys":[{{"kty":"oct","kid":"{kid}","alg":"HS256","k":"{k}"}}]}}"#)
                .as_bytes(),
        )
        .unwrap()
    }

    fn app_token(sub: &str, exp: u64) -> String {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some("app1".into());
        let claims = serde_json::json!({"sub": sub, "exp": exp, "aud": "chat"});
        jsonwebtoken::encode(
            &h,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"app-secret").unwrap(),
        )
        .unwrap()
    }

    fn combined() -> (Authenticator, TicketSigner) {
        let s = signer();
        let rules = Rules {
            audience: vec!["chat".into()],
            ..Rules::default()
        };
        let auth = Authenticator {
            modes: vec![
                Mode::Ticket(TicketAuth::new(fixed(s.key_set()), "gw-1")),
                Mode::Jwt(JwtAuth::new(fixed(hs_jwks("app1", b"app-secret")), rules)),
                Mode::Hmac(HmacAuth::new("s3cret")),
            ],
            remote: None,
            ticket_file: false,
            files: false,
        };
        (auth, s)
    }

    #[test]
    fn the_combinator_accepts_any_mode_and_reports_the_most_telling_refusal() {
        let (auth, s) = combined();
        assert_eq!(auth.modes(), ["ticket", "jwt", "hmac"]);
        let now = unix_now();
        let ticket = s.issue("u1", &["gw-1"]).unwrap().token;
        assert_eq!(auth.check(&hello("u1", &ticket)).unwrap().mode, "ticket");
        let app = app_token("u1", now + 60);
        assert_eq!(auth.check(&hello("u1", &app)).unwrap().mode, "jwt");
        let h = HmacAuth::new("s3cret")
            .token(DEFAULT_KID, "u1", now + 60)
            .unwrap();
        assert_eq!(auth.check(&hello("u1", &h)).unwrap().mode, "hmac");

        // An expired ticket: the ticket mode's refusal, not jwt's unknown key.
        let old = s.issue_at("u1", &["gw-1"], now - 3600).unwrap().token;
        let (code, mode, r) = refused(auth.check(&hello("u1", &old)));
        assert_eq!(
            (code, mode, r),
            (v1::RejectCode::AuthExpired, "ticket", Refusal::Expired)
        );
        let (code, mode, r) = refused(auth.check(&hello("u1", &app_token("u1", now - 600))));
        assert_eq!(
            (code, mode, r),
            (v1::RejectCode::AuthExpired, "jwt", Refusal::Expired)
        );
        let (code, _, r) = refused(auth.check(&hello("u2", &ticket)));
        assert_eq!((code, r), (v1::RejectCode::Auth, Refusal::WrongSubject));
        let (code, mode, r) = refused(auth.check(&hello("u1", "")));
        assert_eq!(
            (code, mode, r),
            (v1::RejectCode::Auth, "ticket", Refusal::Missing)
        );
        let stranger = signer().issue("u1", &["gw-1"]).unwrap().token;
        let (code, _, r) = refused(auth.check(&hello("u1", &stranger)));
        assert_eq!(
            code,
            v1::RejectCode::AuthExpired,
            "unknown kid: route again"
        );
        assert!(matches!(r, Refusal::UnknownKey(_)));
        assert!(matches!(
            auth.check(&hello("", &ticket)),
            Err(AuthError::BadHello(_))
        ));
    }

    /// An application mode: admits "magic" tokens, refuses "bad" ones, has no opinion
    /// on the rest.
    struct Custom;
    impl super::super::App for Custom {
        fn on_data(
            &self,
            _: &super::super::SessionHandle,
            _: u64,
            _: bytes::Bytes,
        ) -> Result<(), super::super::AppError> {
            Ok(())
        }
        fn authenticate(&self, hello: &v1::Hello) -> Option<Result<Identity, Refusal>> {
            match hello.token.as_str() {
                "magic" => Some(Ok(Identity::new(&hello.client_id, "custom"))),
                "bad" => Some(Err(Refusal::BadSignature)),
                _ => None,
            }
        }
    }

    #[test]
    fn an_application_mode_joins_the_built_in_ones() {
        let (auth, s) = combined();
        assert_eq!(
            login(&auth, &Custom, &hello("u1", "magic")).unwrap().mode,
            "custom"
        );
        let ticket = s.issue("u1", &["gw-1"]).unwrap().token;
        assert_eq!(
            login(&auth, &Custom, &hello("u1", &ticket)).unwrap().mode,
            "ticket"
        );
        let (_, mode, r) = refused(login(&auth, &Custom, &hello("u1", "bad")));
        assert_eq!((mode, r), ("app", Refusal::BadSignature));
        // With no built-in mode, the application's refusal still refuses.
        let none = Authenticator::anonymous();
        assert!(login(&none, &Custom, &hello("u1", "bad")).is_err());
        assert!(
            !login(&none, &Custom, &hello("u1", "x"))
                .unwrap()
                .is_authenticated()
        );
        assert!(
            login(&none, &Custom, &hello("u1", "magic"))
                .unwrap()
                .is_authenticated()
        );
    }
}
