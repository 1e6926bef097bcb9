//! Verifying keys: a JWKS document as a [`KeySet`], a file that is re-read when it changes
//! ([`Watched`]), and the [`KeySource`] seam the verifiers read keys through.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use parking_lot::Mutex;

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Not a JWKS document.
    #[error("not a JWKS document ({{\"keys\": [...]}}): {0}")]
    Jwks(String),
    /// One key of the set is unusable.
    #[error("key {kid:?}: {reason}")]
    Key {
        /// Its `kid` ("" when it has none).
        kid: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A PEM file holds no usable private key.
    #[error("{0}")]
    Pem(String),
    /// The set is empty: nothing could ever be verified.
    #[error("the key set is empty")]
    Empty,
}

/// One verifying key and the algorithms it may be used with (pinned to the key's type, so
/// a token cannot pick an algorithm its key was not made for).
#[derive(Clone)]
struct Key {
    decoding: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Verifying keys by `kid`.
pub struct KeySet {
    /// Keys by `kid`.
    by_kid: HashMap<String, Key>,
    /// A set of exactly one key also verifies tokens that name no `kid`.
    only: Option<String>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeySet")
            .field("kids", &self.kids())
            .finish()
    }
}

fn algorithms_for(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let family: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::OctetKeyPair(_) => &[Algorithm::EdDSA],
        AlgorithmParameters::EllipticCurve(_) => &[Algorithm::ES256, Algorithm::ES384],
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::OctetKey(_) => &[Algorithm::HS256, Algorithm::HS384, Algorithm::HS512],
        _ => return Err("key type is not supported".into()),
    };
    // A key that names its algorithm may be used with that one only.
    match &jwk.common.key_algorithm {
        None => Ok(family.to_vec()),
        Some(named) => {
            let named: Algorithm = named
                .to_string()
                .parse()
                .map_err(|_| format!("algorithm {named} is not supported"))?;
            if family.contains(&named) {
                Ok(vec![named])
            } else {
                Err(format!("algorithm {named:?} does not fit the key type"))
            }
        }
    }
}

impl KeySet {
    /// A set with no keys (verifies nothing).
    pub fn empty() -> Self {
        Self {
            by_kid: HashMap::new(),
            only: None,
        }
    }

    /// Reads a JWKS document (RFC 7517). Every key needs a distinct `kid`, except in a set
    /// of one key.
    pub fn from_jwks(json: &[u8]) -> Result<Self, KeyError> {
        let set: JwkSet =
            serde_json::from_slice(json).map_err(|e| KeyError::Jwks(e.to_string()))?;
        Self::from_jwk_set(&set)
    }

    /// From a parsed JWK set.
    pub fn from_jwk_set(set: &JwkSet) -> Result<Self, KeyError> {
        if set.keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let kid = jwk.common.key_id.clone().unwrap_or_default();
            let bad = |reason: String| KeyError::Key {
                kid: kid.clone(),
                reason,
            };
            if kid.is_empty() && set.keys.len() > 1 {
                return Err(bad("every key of a set of several needs a `kid`".into()));
            }
            let algorithms = algorithms_for(jwk).map_err(&bad)?;
            let decoding = DecodingKey::from_jwk(jwk).map_err(|e| bad(e.to_string()))?;
            if by_kid
                .insert(
                    kid.clone(),
                    Key {
                        decoding,
                        algorithms,
                    },
                )
                .is_some()
            {
                return Err(bad("`kid` appears twice".into()));
            }
        }
        let only = (by_kid.len() == 1)
            .then(|| by_kid.keys().next().cloned())
            .flatten();
        Ok(Self { by_kid, only })
    }

    /// Every key of `sets` (a gateway reading a file and several routers' URLs). A `kid`
    /// found in several sets keeps its first key: the sets publish the same keys.
    pub fn union<'a>(sets: impl IntoIterator<Item = &'a KeySet>) -> Self {
        let mut by_kid = HashMap::new();
        for set in sets {
            for (kid, key) in &set.by_kid {
                by_kid.entry(kid.clone()).or_insert_with(|| key.clone());
            }
        }
        let only = (by_kid.len() == 1)
            .then(|| by_kid.keys().next().cloned())
            .flatten();
        Self { by_kid, only }
    }

    /// The `kid`s in the set, sorted.
    pub fn kids(&self) -> Vec<&str> {
        let mut kids: Vec<&str> = self.by_kid.keys().map(String::as_str).collect();
        kids.sort_unstable();
        kids
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.by_kid.len()
    }

    /// Whether the set has no keys.
    pub fn is_empty(&self) -> bool {
        self.by_kid.is_empty()
    }

    /// The key a token names, with the algorithms it may be used with.
    pub(crate) fn find(&self, kid: Option<&str>) -> Option<(&DecodingKey, &[Algorithm])> {
        let kid = match kid {
            Some(kid) => kid,
            None => self.only.as_deref()?,
        };
        self.by_kid
            .get(kid)
            .map(|k| (&k.decoding, k.algorithms.as_slice()))
    }
}

/// Where verifiers get keys: a file, a URL a gateway polls, the router's own signer.
pub trait KeySource: Send + Sync + 'static {
    /// The keys to verify with now.
    fn keys(&self) -> Arc<KeySet>;
    /// A token named a key that is not in [`KeySource::keys`]: look for new keys soon (a
    /// rotation may have added one). Must be cheap and bounded; the default does nothing.
    fn missing(&self, _kid: &str) {}
}

impl KeySource for Arc<KeySet> {
    fn keys(&self) -> Arc<KeySet> {
        self.clone()
    }
}

/// Several sources as one: the keys of all of them, and a missing `kid` looked for in
/// each. The merged set is rebuilt only when a source hands out a new set.
pub struct KeyUnion {
    /// The sources, in order (a `kid` in several keeps the first one's key).
    sources: Vec<Arc<dyn KeySource>>,
    /// The sets the merge was made from, and the merge.
    cache: Mutex<(Vec<Arc<KeySet>>, Arc<KeySet>)>,
}

impl fmt::Debug for KeyUnion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyUnion")
            .field("sources", &self.sources.len())
            .finish_non_exhaustive()
    }
}

impl KeyUnion {
    /// The union of `sources`.
    pub fn new(sources: Vec<Arc<dyn KeySource>>) -> Self {
        Self {
            sources,
            cache: Mutex::new((Vec::new(), Arc::new(KeySet::empty()))),
        }
    }
}

impl KeySource for KeyUnion {
    fn keys(&self) -> Arc<KeySet> {
        let sets: Vec<Arc<KeySet>> = self.sources.iter().map(|s| s.keys()).collect();
        let mut cache = self.cache.lock();
        let same = cache.0.len() == sets.len()
            && cache.0.iter().zip(&sets).all(|(a, b)| Arc::ptr_eq(a, b));
        if !same {
            let merged = Arc::new(KeySet::union(sets.iter().map(|s| &**s)));
            *cache = (sets, merged);
        }
        cache.1.clone()
    }

    fn missing(&self, kid: &str) {
        for s in &self.sources {
            s.missing(kid);
        }
    }
}

/// How often a [`Watched`] file is looked at while it is in use.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);
/// The least gap between two looks asked for by [`Watched::check_soon`], so tokens with
/// made-up `kid`s cannot turn into a file read each.
const CHECK_GAP: Duration = Duration::from_millis(100);

/// Turns the file's bytes into the value.
type Parse<T> = Box<dyn Fn(&[u8]) -> Result<T, KeyError> + Send + Sync>;

/// A small file (keys, a JWKS) parsed into a `T` and re-read when it changes: at most once
/// a [`CHECK_EVERY`], on the next use. A change that does not parse is logged and counted,
/// and the last good value stays in force, so a half-written file never locks clients out.
pub struct Watched<T> {
    /// The file.
    path: PathBuf,
    /// Turns its bytes into a `T`.
    parse: Parse<T>,
    /// What is in force, and what it came from.
    state: Mutex<WatchState<T>>,
}

struct WatchState<T> {
    value: Arc<T>,
    /// The bytes `value` was parsed from (small files: comparing bytes is exact where
    /// mtime has coarse granularity and a rename may keep the length).
    bytes: Vec<u8>,
    /// When the file was last looked at.
    checked: Instant,
    /// Looking again before this is not needed.
    next: Instant,
}

impl<T> fmt::Debug for Watched<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watched")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

impl<T: Send + Sync + 'static> Watched<T> {
    /// Reads and parses the file now: an unreadable or invalid file is an error at start.
    pub fn open(
        path: impl Into<PathBuf>,
        parse: impl Fn(&[u8]) -> Result<T, KeyError> + Send + Sync + 'static,
    ) -> Result<Self, KeyError> {
        let path = path.into();
        let bytes = read(&path)?;
        let value = Arc::new(parse(&bytes)?);
        let now = Instant::now();
        Ok(Self {
            path,
            parse: Box::new(parse),
            state: Mutex::new(WatchState {
                value,
                bytes,
                checked: now,
                next: now + CHECK_EVERY,
            }),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The value in force, after looking at the file if it is time to.
    pub fn get(&self) -> Arc<T> {
        let mut state = self.state.lock();
        let now = Instant::now();
        if now >= state.next {
            self.reload(&mut state, now);
        }
        state.value.clone()
    }

    /// Look at the file on the next [`Watched::get`] (at most every 100 ms).
    pub fn check_soon(&self) {
        let mut state = self.state.lock();
        let soonest = state.checked + CHECK_GAP;
        if state.next > soonest {
            state.next = soonest;
        }
    }

    fn reload(&self, state: &mut WatchState<T>, now: Instant) {
        state.checked = now;
        state.next = now + CHECK_EVERY;
        let bytes = match read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                metrics::counter!("switchyard_key_reload_errors_total").increment(1);
                tracing::warn!(error = %e, "keeping the keys in force");
                return;
            }
        };
        if bytes == state.bytes {
            return;
        }
        match (self.parse)(&bytes) {
            Ok(value) => {
                tracing::info!(path = %self.path.display(), "keys reloaded");
                state.value = Arc::new(value);
                state.bytes = bytes;
            }
            Err(e) => {
                metrics::counter!("switchyard_key_reload_errors_total").increment(1);
                tracing::warn!(path = %self.path.display(), error = %e, "changed key file does not parse; keeping the keys in force");
                // Not retried until it changes again.
                state.bytes = bytes;
            }
        }
    }
}

impl Watched<KeySet> {
    /// A JWKS file.
    pub fn jwks(path: impl Into<PathBuf>) -> Result<Self, KeyError> {
        Self::open(path, KeySet::from_jwks)
    }
}

impl KeySource for Watched<KeySet> {
    fn keys(&self) -> Arc<KeySet> {
        self.get()
    }

    fn missing(&self, _kid: &str) {
        self.check_soon();
        // Take the look now if it is due: the caller retries its lookup right after.
        drop(self.get());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HS_KEY: &str = r#"{"keys":[{"kty":"oct","kid":"h1","alg":"HS256","k":"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"}]}"#;

    #[test]
    fn jwks_sets_need_distinct_kids() {
        let set = KeySet::from_jwks(HS_KEY.as_bytes()).unwrap();
        assert_eq!(set.kids(), ["h1"]);
        assert!(set.find(Some("h1")).is_some());
        assert!(
            set.find(None).is_some(),
            "a set of one verifies tokens without kid"
        );
        assert!(set.find(Some("h2")).is_none());
        let two_without = r#"{"keys":[{"kty":"oct","k":"YQ"},{"kty":"oct","k":"Yg"}]}"#;
        assert!(matches!(
            KeySet::from_jwks(two_without.as_bytes()),
            Err(KeyError::Key { .. })
        ));
        assert!(matches!(
            KeySet::from_jwks(br#"{"keys":[]}"#),
            Err(KeyError::Empty)
        ));
        assert!(matches!(KeySet::from_jwks(b"nope"), Err(KeyError::Jwks(_))));
    }

    #[test]
    fn a_key_is_pinned_to_its_algorithm() {
        let set = KeySet::from_jwks(HS_KEY.as_bytes()).unwrap();
        let (_, algs) = set.find(Some("h1")).unwrap();
        assert_eq!(algs, [Algorithm::HS256]);
        let mismatched = r#"{"keys":[{"kty":"oct","kid":"x","alg":"EdDSA","k":"YQ"}]}"#;
        assert!(KeySet::from_jwks(mismatched.as_bytes()).is_err());
    }

    #[test]
    fn a_union_holds_every_source_and_follows_their_changes() {
        let two =
            r#"{"keys":[{"kty":"oct","kid":"h1","k":"YQ"},{"kty":"oct","kid":"h2","k":"Yg"}]}"#;
        let a: Arc<dyn KeySource> =
            Arc::new(Arc::new(KeySet::from_jwks(HS_KEY.as_bytes()).unwrap()));
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwks.json");
        std::fs::write(&p, two).unwrap();
        let file = Arc::new(Watched::jwks(&p).unwrap());
        let u = KeyUnion::new(vec![a, file.clone()]);
        assert_eq!(u.keys().kids(), ["h1", "h2"]);
        let first = u.keys();
        assert!(
            Arc::ptr_eq(&first, &u.keys()),
            "unchanged sources: the same merge"
        );
        let three = r#"{"keys":[{"kty":"oct","kid":"h3","k":"Yw"}]}"#;
        std::fs::write(&p, three).unwrap();
        // A file is looked at again at most every CHECK_GAP, even when a kid is missing.
        std::thread::sleep(CHECK_GAP + Duration::from_millis(20));
        u.missing("h3");
        assert_eq!(u.keys().kids(), ["h1", "h3"]);
        assert!(KeySet::union([]).is_empty());
    }

    #[test]
    fn watched_files_reload_and_keep_the_last_good_value() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("jwks.json");
        std::fs::write(&p, HS_KEY).unwrap();
        let w = Watched::jwks(&p).unwrap();
        assert_eq!(w.get().kids(), ["h1"]);
        let two =
            r#"{"keys":[{"kty":"oct","kid":"h1","k":"YQ"},{"kty":"oct","kid":"h2","k":"Yg"}]}"#;
        std::fs::write(&p, two).unwrap();
        w.check_soon();
        std::thread::sleep(CHECK_GAP + Duration::from_millis(20));
        assert_eq!(w.get().kids(), ["h1", "h2"]);
        std::fs::write(&p, "{half").unwrap();
        w.check_soon();
        std::thread::sleep(CHECK_GAP + Duration::from_millis(20));
        assert_eq!(
            w.get().kids(),
            ["h1", "h2"],
            "a broken file keeps the keys in force"
        );
        assert!(Watched::jwks(dir.path().join("missing")).is_err());
    }
}
