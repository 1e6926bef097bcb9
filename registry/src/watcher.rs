//! `PrefixWatcher`: a consistent, always-whole view of every key under a prefix.
//!
//! List, then watch from the list's revision + 1. A lost stream is re-watched from the last
//! revision seen; a compacted start revision (`canceled` with `compact_revision`, after which
//! etcd-client's stream just blocks) forces a full re-list, and so does a cluster whose
//! revision is behind the one seen (restored from a snapshot). Progress requests every
//! `progress_interval` catch a stream that went silent. Consumers only ever see whole
//! snapshots, each stamped with the revision it reflects.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, EventType, GetOptions, WatchOptions};
use switchyard_proto::backoff::Backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::etcd::Retries;

/// Turns a key (relative to the watched prefix) and its value into an item:
/// `Ok(None)` ignores the key silently, `Err(reason)` rejects it (counted and logged once).
pub type Decoder<T> = Arc<dyn Fn(&str, &[u8]) -> Result<Option<T>, String> + Send + Sync>;

/// Everything under the prefix at one revision.
#[derive(Debug)]
pub struct Snapshot<T> {
    /// The etcd revision this view reflects; 0 until the first list has completed.
    pub revision: i64,
    /// Decoded items by key relative to the prefix (e.g. `gateways/gw-1`).
    pub items: BTreeMap<String, Arc<T>>,
    /// Keys whose value was rejected by the decoder, with the reason.
    pub rejected: BTreeMap<String, String>,
}

impl<T> Snapshot<T> {
    /// True once the first full list has been loaded.
    pub fn is_loaded(&self) -> bool {
        self.revision > 0
    }
}

impl<T> Default for Snapshot<T> {
    fn default() -> Self {
        Self {
            revision: 0,
            items: BTreeMap::new(),
            rejected: BTreeMap::new(),
        }
    }
}

/// Whether the watcher is in touch with etcd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contact {
    /// True while the watch stream is open and answering.
    pub connected: bool,
    /// When etcd last answered (a list, an event or a progress notification).
    pub last: Option<Instant>,
}

/// Tuning for a [`PrefixWatcher`].
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// How often to ask etcd for a progress notification on an idle stream.
    pub progress_interval: Duration,
    /// A stream that answers nothing (not even progress) this long is treated as dead.
    pub silence_timeout: Duration,
    /// Longest wait between retries while etcd is unreachable.
    pub max_retry_delay: Duration,
}

impl Default for WatcherConfig {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_secs(5),
            silence_timeout: Duration::from_secs(12),
            max_retry_delay: Duration::from_secs(1),
        }
    }
}

/// A background task keeping a [`Snapshot`] of one prefix. Stops when dropped.
#[derive(Debug)]
pub struct PrefixWatcher<T> {
    snapshots: watch::Receiver<Arc<Snapshot<T>>>,
    contact: watch::Receiver<Contact>,
    stop: CancellationToken,
}

impl<T> Drop for PrefixWatcher<T> {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl<T: Send + Sync + 'static> PrefixWatcher<T> {
    /// Starts watching `prefix`; the first snapshot with `revision > 0` is the first full list.
    pub fn spawn(
        client: Client,
        prefix: String,
        decoder: Decoder<T>,
        config: WatcherConfig,
    ) -> Self {
        let (snap_tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let (contact_tx, contact) = watch::channel(Contact {
            connected: false,
            last: None,
        });
        let stop = CancellationToken::new();
        let task = Task {
            client,
            prefix,
            decoder,
            config,
            snap_tx,
            contact_tx,
            items: BTreeMap::new(),
            rejected: BTreeMap::new(),
            revision: 0,
        };
        let token = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                () = task.run() => {}
                () = token.cancelled() => {}
            }
        });
        Self {
            snapshots,
            contact,
            stop,
        }
    }

    /// Snapshots as they change.
    pub fn snapshots(&self) -> watch::Receiver<Arc<Snapshot<T>>> {
        self.snapshots.clone()
    }

    /// The latest snapshot.
    pub fn current(&self) -> Arc<Snapshot<T>> {
        self.snapshots.borrow().clone()
    }

    /// Contact with etcd, for staleness reporting.
    pub fn contact(&self) -> watch::Receiver<Contact> {
        self.contact.clone()
    }
}

struct Task<T> {
    client: Client,
    prefix: String,
    decoder: Decoder<T>,
    config: WatcherConfig,
    snap_tx: watch::Sender<Arc<Snapshot<T>>>,
    contact_tx: watch::Sender<Contact>,
    items: BTreeMap<String, Arc<T>>,
    rejected: BTreeMap<String, String>,
    revision: i64,
}

/// Why a watch stream ended.
enum End {
    /// Re-watch from the last revision.
    Rewatch,
    /// The revision was compacted: list again.
    Resync,
}

impl<T: Send + Sync + 'static> Task<T> {
    async fn run(mut self) {
        let mut retries = Retries::new(Backoff {
            base: Duration::from_millis(50),
            cap: self.config.max_retry_delay,
        });
        loop {
            if let Err(e) = self.list().await {
                self.lost_contact();
                debug!(prefix = %self.prefix, error = %e, "list failed; retrying");
                tokio::time::sleep(retries.next_delay()).await;
                continue;
            }
            retries.reset();
            loop {
                match self.watch().await {
                    End::Resync => {
                        metrics::counter!("switchyard_registry_watch_resyncs_total").increment(1);
                        break;
                    }
                    End::Rewatch => {
                        self.lost_contact();
                        tokio::time::sleep(retries.next_delay()).await;
                    }
                }
            }
        }
    }

    /// Full list: replaces the view.
    async fn list(&mut self) -> Result<(), etcd_client::Error> {
        let prefix = self.prefix.clone();
        let resp = crate::etcd::retry(|| {
            let mut c = self.client.clone();
            let prefix = prefix.clone();
            async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let old_rejected = std::mem::take(&mut self.rejected);
        self.items.clear();
        for kv in resp.kvs() {
            self.apply_put(kv.key(), kv.value(), kv.mod_revision(), &old_rejected);
        }
        self.revision = revision.max(1);
        self.touch();
        info!(prefix = %self.prefix, revision, keys = self.items.len(), "registry listed");
        self.publish();
        Ok(())
    }

    /// One watch stream from `revision + 1` until it ends.
    async fn watch(&mut self) -> End {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(self.revision + 1)
            .with_progress_notify();
        let mut stream = match self.client.watch(self.prefix.clone(), Some(options)).await {
            Ok(s) => s,
            Err(e) => {
                debug!(prefix = %self.prefix, error = %e, "watch failed to open");
                return End::Rewatch;
            }
        };
        let mut ticker = tokio::time::interval(self.config.progress_interval);
        ticker.reset();
        let mut last_answer = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if last_answer.elapsed() > self.config.silence_timeout {
                        warn!(prefix = %self.prefix, "watch stream silent; re-watching");
                        return End::Rewatch;
                    }
                    if stream.request_progress().await.is_err() {
                        return End::Rewatch;
                    }
                }
                msg = stream.message() => {
                    let resp = match msg {
                        Ok(Some(resp)) => resp,
                        Ok(None) => return End::Rewatch,
                        Err(e) => {
                            debug!(prefix = %self.prefix, error = %e, "watch stream broke");
                            return End::Rewatch;
                        }
                    };
                    last_answer = Instant::now();
                    self.touch();
                    if resp.canceled() {
                        if resp.compact_revision() > 0 {
                            info!(prefix = %self.prefix, from = self.revision + 1,
                                  compacted = resp.compact_revision(), "watch revision compacted; listing again");
                            return End::Resync;
                        }
                        warn!(prefix = %self.prefix, reason = resp.cancel_reason(), "watch canceled; re-watching");
                        return End::Rewatch;
                    }
                    let header_rev = resp.header().map_or(0, |h| h.revision());
                    if resp.created() && header_rev > 0 && header_rev < self.revision {
                        // etcd's revision went backwards: the cluster was restored from a
                        // snapshot (or replaced). A watch from our revision would wait for
                        // a future that replays different history; list what is there now.
                        warn!(prefix = %self.prefix, seen = self.revision, now = header_rev,
                              "etcd is behind the revision already seen (restored from a snapshot?); listing again");
                        return End::Resync;
                    }
                    if resp.events().is_empty() {
                        // Created or progress: everything up to header_rev has been sent.
                        if !resp.created() && header_rev > self.revision {
                            self.revision = header_rev;
                        }
                        continue;
                    }
                    let no_rejects = BTreeMap::new();
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        match ev.event_type() {
                            EventType::Put => self.apply_put(kv.key(), kv.value(), kv.mod_revision(), &no_rejects),
                            EventType::Delete => self.apply_delete(kv.key()),
                        }
                        self.revision = self.revision.max(kv.mod_revision());
                    }
                    self.publish();
                }
            }
        }
    }

    fn relative<'k>(&self, key: &'k [u8]) -> Option<&'k str> {
        std::str::from_utf8(key)
            .ok()?
            .strip_prefix(self.prefix.as_str())
    }

    fn apply_put(
        &mut self,
        key: &[u8],
        value: &[u8],
        mod_rev: i64,
        known: &BTreeMap<String, String>,
    ) {
        let Some(rel) = self.relative(key) else {
            metrics::counter!("switchyard_registry_invalid_values_total").increment(1);
            warn!(prefix = %self.prefix, "key that is not UTF-8 skipped");
            return;
        };
        let rel = rel.to_owned();
        match (self.decoder)(&rel, value) {
            Ok(Some(item)) => {
                self.rejected.remove(&rel);
                self.items.insert(rel, Arc::new(item));
            }
            Ok(None) => {
                self.items.remove(&rel);
                self.rejected.remove(&rel);
            }
            Err(reason) => {
                self.items.remove(&rel);
                // Logged once per bad value, not on every re-list.
                if known.get(&rel) != Some(&reason) {
                    metrics::counter!("switchyard_registry_invalid_values_total").increment(1);
                    warn!(key = %rel, revision = mod_rev, %reason, "invalid value skipped");
                }
                self.rejected.insert(rel, reason);
            }
        }
    }

    fn apply_delete(&mut self, key: &[u8]) {
        if let Some(rel) = self.relative(key) {
            self.items.remove(rel);
            self.rejected.remove(rel);
        }
    }

    fn publish(&self) {
        let snap = Snapshot {
            revision: self.revision,
            items: self.items.clone(),
            rejected: self.rejected.clone(),
        };
        self.snap_tx.send_replace(Arc::new(snap));
    }

    fn touch(&self) {
        self.contact_tx.send_replace(Contact {
            connected: true,
            last: Some(Instant::now()),
        });
    }

    fn lost_contact(&self) {
        self.contact_tx
            .send_if_modified(|c| std::mem::replace(&mut c.connected, false));
    }
}
