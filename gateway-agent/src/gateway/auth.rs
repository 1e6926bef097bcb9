//! The login check run on every HELLO.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use switchyard_proto::limits::MAX_CLIENT_ID;
use switchyard_proto::v1;

/// Why a HELLO is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The HELLO itself is malformed (answered with `REJECT{BAD_HELLO}`).
    #[error("bad hello: {0}")]
    BadHello(String),
    /// Credentials refused (answered with `REJECT{AUTH}`, terminal for the client).
    #[error("auth failed: {0}")]
    Denied(String),
}

/// Decides whether a HELLO may log in. Runs on the connection's task, so it should be
/// quick; an implementation needing I/O can cache.
pub trait Auth: Send + Sync + 'static {
    /// `Ok` accepts the login.
    fn check(&self, hello: &v1::Hello) -> Result<(), AuthError>;
}

fn check_client_id(id: &str) -> Result<(), AuthError> {
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

/// The default: any non-empty `client_id` of at most [`MAX_CLIENT_ID`] bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct AcceptAny;

impl Auth for AcceptAny {
    fn check(&self, hello: &v1::Hello) -> Result<(), AuthError> {
        check_client_id(&hello.client_id)
    }
}

/// Token = lower-case `hex(HMAC-SHA256(secret, client_id))`; see docs/protocol.md.
#[derive(Clone)]
pub struct HmacAuth {
    /// The shared secret; never logged.
    secret: Vec<u8>,
}

impl std::fmt::Debug for HmacAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacAuth { secret: <hidden> }")
    }
}

impl HmacAuth {
    /// Checks tokens against `secret`.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        Self {
            secret: secret.into(),
        }
    }

    fn mac(&self, client_id: &str) -> Hmac<Sha256> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(&self.secret).expect("HMAC accepts any key length");
        mac.update(client_id.as_bytes());
        mac
    }

    /// The token a client with `client_id` must present.
    pub fn token(&self, client_id: &str) -> String {
        hex::encode(self.mac(client_id).finalize().into_bytes())
    }
}

impl Auth for HmacAuth {
    fn check(&self, hello: &v1::Hello) -> Result<(), AuthError> {
        check_client_id(&hello.client_id)?;
        let given =
            hex::decode(&hello.token).map_err(|_| AuthError::Denied("token is not hex".into()))?;
        // Constant-time comparison.
        self.mac(&hello.client_id)
            .verify_slice(&given)
            .map_err(|_| AuthError::Denied("token does not match client_id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(id: &str, token: &str) -> v1::Hello {
        v1::Hello {
            client_id: id.into(),
            token: token.into(),
            ..Default::default()
        }
    }

    #[test]
    fn accept_any_needs_a_client_id() {
        assert!(AcceptAny.check(&hello("u1", "")).is_ok());
        assert!(matches!(
            AcceptAny.check(&hello("", "")),
            Err(AuthError::BadHello(_))
        ));
        let long = "x".repeat(MAX_CLIENT_ID + 1);
        assert!(AcceptAny.check(&hello(&long, "")).is_err());
    }

    #[test]
    fn hmac_token_matches_the_documented_example() {
        // The example in docs/protocol.md.
        let auth = HmacAuth::new("s3cret");
        let token = auth.token("u1");
        assert_eq!(
            token,
            "8f0d05b747219f7d9f13a44304bbda130918600ddbbd901632ba7d35db20554d"
        );
        assert_eq!(token.len(), 64);
        assert!(auth.check(&hello("u1", &token)).is_ok());
        assert!(matches!(
            auth.check(&hello("u2", &token)),
            Err(AuthError::Denied(_))
        ));
        assert!(matches!(
            auth.check(&hello("u1", "zz")),
            Err(AuthError::Denied(_))
        ));
        assert!(HmacAuth::new("other").check(&hello("u1", &token)).is_err());
    }
}
