//! Opaque secrets: the ops token, route tokens, HMAC keys. They never reach `Debug`
//! output or logs, and comparisons take the same time wherever the first difference is.

use std::fmt;
use std::path::Path;

use subtle::ConstantTimeEq;

/// A secret string. `Debug` and `Display` print `<redacted>`; read it with
/// [`Secret::expose`] only where it is used. Deserializes from a plain string, so a
/// config struct can hold one and still derive `Debug` safely.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl Secret {
    /// Wraps a value (already read from a file or the environment).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Reads a secret file; surrounding whitespace (the trailing newline editors add) is
    /// not part of the secret. An empty file is an error: an empty secret would match an
    /// empty credential.
    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(path)?;
        let value = text.trim();
        if value.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this secret, in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        same_secret(&self.0, presented)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Compares two secrets without leaking, through timing, how long a prefix matches.
/// (The lengths may differ; that a length differs is not secret.)
pub fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert!(s.matches("hunter2"));
        assert!(!s.matches("hunter3"));
        assert!(!s.matches("hunter"));
        let from_toml: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert!(from_toml.matches("hunter2"));
        assert_eq!(format!("{from_toml:?}"), "<redacted>");
    }

    #[test]
    fn secret_files_are_trimmed_and_never_empty() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        std::fs::write(&p, "abc\n").unwrap();
        assert_eq!(Secret::from_file(&p).unwrap().expose(), "abc");
        std::fs::write(&p, " \n").unwrap();
        assert!(Secret::from_file(&p).is_err());
    }
}
