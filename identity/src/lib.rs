//! The credentials of DESIGN contract 5, in one place so the router that issues them and
//! the gateway that checks them cannot disagree.
//!
//! - [`keys`]: verifying keys from a JWKS document ([`KeySet`]), a file re-read when it
//!   changes ([`Watched`]), and the [`KeySource`] seam for other places (a URL, the registry).
//! - [`ticket`]: login tickets — the router's Ed25519 keys ([`TicketSigner`]), the claims,
//!   and [`generate_ed25519_pem`] for demos and tests.
//! - [`verify`]: checking an app token ([`AppTokens`]) or a ticket ([`Tickets`]), each
//!   failure a [`Refusal`] with a reason a log line or a REJECT can carry.
//! - [`secret`]: opaque secrets (ops token, HMAC keys) that never print, compared in
//!   constant time.
//!
//! All tokens are standard JWTs (RFC 7519; EdDSA per RFC 8037), so any language can make
//! or check them.

#![forbid(unsafe_code)]

pub mod keys;
pub mod secret;
pub mod ticket;
pub mod verify;

pub use keys::{KeyError, KeySet, KeySource, KeyUnion, Watched};
pub use secret::{Secret, same_secret};
pub use ticket::{Ticket, TicketClaims, TicketSigner, generate_ed25519_pem};
pub use verify::{AppClaims, AppTokens, Refusal, Rules, Tickets};

/// Seconds since the Unix epoch (JWT `NumericDate`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
