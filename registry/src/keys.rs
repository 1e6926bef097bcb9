//! The etcd key schema (DESIGN contract 1): `P/gateways/<id>` and `P/drain/<id>`.

use std::fmt;

/// Why a prefix or gateway id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The id is empty or longer than 128 bytes.
    #[error("gateway id must be 1 to 128 characters long, got {0}")]
    IdLength(usize),
    /// The id holds a character outside `[A-Za-z0-9._-]`.
    #[error("gateway id {id:?} has {ch:?}; only A-Z a-z 0-9 . _ - are allowed")]
    IdChar {
        /// The refused id.
        id: String,
        /// The first character not allowed.
        ch: char,
    },
    /// The prefix does not start with `/` or is only slashes.
    #[error("prefix {0:?} must start with '/' and name something, e.g. /switchyard")]
    Prefix(String),
}

/// A validated gateway id: 1–128 characters of `[A-Za-z0-9._-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GatewayId(String);

impl GatewayId {
    /// Checks `id` against the schema.
    pub fn new(id: impl Into<String>) -> Result<Self, KeyError> {
        let id = id.into();
        validate_id(&id)?;
        Ok(Self(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GatewayId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for GatewayId {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// Checks a gateway id without taking ownership.
pub(crate) fn validate_id(id: &str) -> Result<(), KeyError> {
    if id.is_empty() || id.len() > 128 {
        return Err(KeyError::IdLength(id.len()));
    }
    if let Some(ch) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(KeyError::IdChar {
            id: id.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// The root of a Switchyard registry in etcd (default `/switchyard`). Every key the
/// project reads or writes is built here, so the schema lives in one place.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Prefix(String);

/// The default prefix, `/switchyard`.
pub const DEFAULT_PREFIX: &str = "/switchyard";

impl Default for Prefix {
    fn default() -> Self {
        Self(DEFAULT_PREFIX.to_owned())
    }
}

/// What a key under the prefix is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind<'a> {
    /// `P/gateways/<id>`: a gateway record.
    Gateway(&'a str),
    /// `P/drain/<id>`: an ops drain.
    Drain(&'a str),
}

impl Prefix {
    /// Validates and normalises a prefix (a trailing `/` is dropped).
    pub fn new(prefix: impl Into<String>) -> Result<Self, KeyError> {
        let raw = prefix.into();
        let trimmed = raw.trim_end_matches('/');
        if !raw.starts_with('/') || trimmed.is_empty() {
            return Err(KeyError::Prefix(raw));
        }
        Ok(Self(trimmed.to_owned()))
    }

    /// The prefix itself, without a trailing slash.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `P/` — every Switchyard key; what the router watches.
    pub fn root(&self) -> String {
        format!("{}/", self.0)
    }

    /// `P/gateways/` — every gateway record.
    pub fn gateways(&self) -> String {
        format!("{}/gateways/", self.0)
    }

    /// `P/gateways/<id>`.
    pub fn gateway(&self, id: &GatewayId) -> String {
        format!("{}/gateways/{id}", self.0)
    }

    /// `P/drain/` — every ops drain.
    pub fn drains(&self) -> String {
        format!("{}/drain/", self.0)
    }

    /// `P/drain/<id>`.
    pub fn drain(&self, id: &GatewayId) -> String {
        format!("{}/drain/{id}", self.0)
    }

    /// Classifies a key relative to [`Prefix::root`] (e.g. `gateways/gw-1`); `None` for keys
    /// that are not part of the schema (they are ignored, so the prefix can grow).
    pub fn classify<'a>(&self, relative: &'a str) -> Option<KeyKind<'a>> {
        if let Some(id) = relative.strip_prefix("gateways/") {
            Some(KeyKind::Gateway(id))
        } else {
            relative.strip_prefix("drain/").map(KeyKind::Drain)
        }
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_schema() {
        assert!(GatewayId::new("gw-sh-1.a_b").is_ok());
        assert_eq!(GatewayId::new(""), Err(KeyError::IdLength(0)));
        assert_eq!(
            GatewayId::new("x".repeat(129)),
            Err(KeyError::IdLength(129))
        );
        assert!(GatewayId::new("x".repeat(128)).is_ok());
        let err = GatewayId::new("gw/1").unwrap_err();
        assert!(err.to_string().contains("'/'"), "{err}");
        assert!(GatewayId::new("gw 1").is_err());
        assert!(GatewayId::new("gw-ü").is_err());
    }

    #[test]
    fn prefixes_are_normalised_and_keys_built_in_one_place() {
        let p = Prefix::new("/sy/").unwrap();
        let id = GatewayId::new("gw-1").unwrap();
        assert_eq!(p.root(), "/sy/");
        assert_eq!(p.gateway(&id), "/sy/gateways/gw-1");
        assert_eq!(p.drain(&id), "/sy/drain/gw-1");
        assert_eq!(p.classify("gateways/gw-1"), Some(KeyKind::Gateway("gw-1")));
        assert_eq!(p.classify("drain/gw-1"), Some(KeyKind::Drain("gw-1")));
        assert_eq!(p.classify("other/x"), None);
        assert!(Prefix::new("sy").is_err());
        assert!(Prefix::new("/").is_err());
        assert_eq!(Prefix::default().as_str(), "/switchyard");
    }
}
