//! The routers' public ticket keys, fetched from their HTTP port (`GET /v1/ticket-keys`, a
//! JWKS): at start, every [`REFRESH_EVERY`], and at once — at most every [`MISSING_GAP`] —
//! when a ticket names a `kid` no URL has published yet (a key rotation just began).

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use switchyard_identity::{KeySet, KeySource};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::auth::Refreshed;
use super::config::ConfigError;
use crate::agent::{Target, http_get};

/// How often the keys are fetched again: a rotation publishes a key well before it signs,
/// so this only needs to beat the publishing lead time.
pub(crate) const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// Least gap between two fetches asked for by unknown `kid`s, so made-up ones cannot turn
/// every HELLO into a request to every router.
pub(crate) const MISSING_GAP: Duration = Duration::from_secs(1);
/// Retry gap while no URL has answered yet.
const RETRY_EVERY: Duration = Duration::from_secs(1);
/// One fetch's limit: a router that does not answer must not hold the round up.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A URL's last answer is dropped after this long without a new one, so a router gone for
/// good does not keep a rotated-out key trusted for ever.
const STALE_AFTER: Duration = Duration::from_secs(300);

/// One URL's last good answer.
struct Answer {
    /// Its keys.
    keys: Arc<KeySet>,
    /// When it came.
    at: Instant,
}

/// What the refresh rounds update.
struct State {
    /// Per URL (same order as the URLs), the last good answer.
    answers: Vec<Option<Answer>>,
    /// The union of the fresh answers: what tickets are checked with.
    merged: Arc<KeySet>,
    /// When an unknown `kid` last asked for a fetch.
    last_missing: Option<Instant>,
    /// Whether the refresh task runs.
    started: bool,
}

/// The union of the keys the routers publish. A [`KeySource`]: an unknown `kid` wakes the
/// refresh task; [`UrlKeys::refreshed`] resolves after the next round.
pub struct UrlKeys {
    /// The URLs as given (for logs) and parsed.
    urls: Vec<(String, Target)>,
    /// Answers, merged keys, rate limit.
    state: Mutex<State>,
    /// Wakes the refresh task early (unknown `kid`).
    wake: Arc<Notify>,
    /// Completed rounds; HELLOs waiting for a refresh watch it.
    rounds: watch::Sender<u64>,
}

impl std::fmt::Debug for UrlKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<&str> = self.urls.iter().map(|(u, _)| u.as_str()).collect();
        f.debug_struct("UrlKeys")
            .field("urls", &urls)
            .finish_non_exhaustive()
    }
}

impl UrlKeys {
    /// Parses the URLs (`http://` or `https://`); fetches nothing yet.
    pub fn new(urls: &[String]) -> Result<Self, ConfigError> {
        let urls = urls
            .iter()
            .map(|u| {
                Target::parse(u)
                    .map(|t| (u.clone(), t))
                    .map_err(|e| ConfigError::Invalid {
                        field: "ticket_jwks_url",
                        reason: e.to_string(),
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            state: Mutex::new(State {
                answers: urls.iter().map(|_| None).collect(),
                merged: Arc::new(KeySet::empty()),
                last_missing: None,
                started: false,
            }),
            urls,
            wake: Arc::new(Notify::new()),
            rounds: watch::channel(0).0,
        })
    }

    /// Starts the refresh task (once) and waits up to `first` for a URL to answer.
    pub async fn start(self: &Arc<Self>, first: Duration) -> Result<(), String> {
        let mut rounds = self.rounds.subscribe();
        {
            let mut state = self.state.lock();
            if !state.started {
                state.started = true;
                tokio::spawn(refresh(Arc::downgrade(self), self.wake.clone()));
            }
        }
        let deadline = Instant::now() + first;
        loop {
            if !self.state.lock().merged.is_empty() {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, rounds.changed())
                .await
                .is_err()
            {
                let urls: Vec<&str> = self.urls.iter().map(|(u, _)| u.as_str()).collect();
                return Err(format!(
                    "no ticket key URL answered within {first:?} ({}): start a router first, or give --ticket-jwks FILE",
                    urls.join(", ")
                ));
            }
        }
    }

    /// Resolves when the next refresh round has finished.
    pub fn refreshed(&self) -> Refreshed {
        let mut rx = self.rounds.subscribe();
        Box::pin(async move {
            let _ = rx.changed().await;
        })
    }

    /// One round: every URL at once; a failed one keeps its last answer until it is stale.
    async fn fetch_all(&self) {
        let fetches = self.urls.iter().map(|(url, target)| async move {
            let result = match tokio::time::timeout(FETCH_TIMEOUT, http_get(target)).await {
                Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok((status, _))) if !status.is_success() => Err(format!("HTTP {status}")),
                Ok(Ok((_, body))) => KeySet::from_jwks(&body).map_err(|e| e.to_string()),
            };
            if let Err(e) = &result {
                metrics::counter!("switchyard_gateway_ticket_key_fetch_errors_total").increment(1);
                warn!(url = %url, error = %e, "cannot fetch ticket keys");
            }
            result
        });
        let results = futures::future::join_all(fetches).await;
        let now = Instant::now();
        let mut state = self.state.lock();
        for (slot, result) in state.answers.iter_mut().zip(results) {
            match result {
                Ok(keys) => {
                    *slot = Some(Answer {
                        keys: Arc::new(keys),
                        at: now,
                    });
                }
                Err(_) if slot.as_ref().is_some_and(|a| now - a.at > STALE_AFTER) => {
                    *slot = None;
                }
                Err(_) => {}
            }
        }
        let merged = KeySet::union(state.answers.iter().flatten().map(|a| &*a.keys));
        if merged.kids() != state.merged.kids() {
            info!(kids = ?merged.kids(), "ticket keys changed");
        }
        state.merged = Arc::new(merged);
    }
}

/// The refresh task; ends once the keys are dropped (it holds them only while fetching).
async fn refresh(keys: Weak<UrlKeys>, wake: Arc<Notify>) {
    loop {
        let Some(k) = keys.upgrade() else { return };
        k.fetch_all().await;
        k.rounds.send_modify(|n| *n += 1);
        let wait = if k.state.lock().merged.is_empty() {
            RETRY_EVERY
        } else {
            REFRESH_EVERY
        };
        drop(k);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = wake.notified() => {}
        }
    }
}

impl KeySource for UrlKeys {
    fn keys(&self) -> Arc<KeySet> {
        self.state.lock().merged.clone()
    }

    fn missing(&self, _kid: &str) {
        let mut state = self.state.lock();
        let now = Instant::now();
        if state
            .last_missing
            .is_none_or(|t| now.duration_since(t) >= MISSING_GAP)
        {
            state.last_missing = Some(now);
            self.wake.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_identity::{TicketSigner, generate_ed25519_pem};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Serves whatever `body` holds at the moment, to any request.
    async fn serve(body: Arc<Mutex<String>>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let body = body.lock().clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 2048];
                    let _ = s.read(&mut buf).await;
                    let reply = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(reply.as_bytes()).await;
                });
            }
        });
        format!("http://{addr}/v1/ticket-keys")
    }

    fn signer() -> TicketSigner {
        TicketSigner::from_pem(generate_ed25519_pem().as_bytes(), Duration::from_secs(60)).unwrap()
    }

    #[tokio::test]
    async fn fetches_at_start_and_again_for_an_unknown_kid() {
        let (a, b) = (signer(), signer());
        let body = Arc::new(Mutex::new(a.jwks().to_string()));
        let url = serve(body.clone()).await;
        let keys = Arc::new(UrlKeys::new(&[url]).unwrap());
        keys.start(Duration::from_secs(10)).await.unwrap();
        assert_eq!(keys.keys().kids(), [a.kid()]);

        *body.lock() = serde_json::json!({"keys": [
            a.jwks()["keys"][0].clone(), b.jwks()["keys"][0].clone()
        ]})
        .to_string();
        let done = keys.refreshed();
        keys.missing(b.kid());
        tokio::time::timeout(Duration::from_secs(10), done)
            .await
            .unwrap();
        assert_eq!(keys.keys().len(), 2);
    }

    #[tokio::test]
    async fn a_start_with_no_router_answering_says_so() {
        let url = format!("http://127.0.0.1:{}/v1/ticket-keys", {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        });
        let keys = Arc::new(UrlKeys::new(&[url]).unwrap());
        let e = keys.start(Duration::from_millis(300)).await.unwrap_err();
        assert!(e.contains("--ticket-jwks"), "{e}");
        assert!(UrlKeys::new(&["ftp://x".into()]).is_err());
    }
}
