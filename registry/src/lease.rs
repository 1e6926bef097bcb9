//! `LeaseSession`: one key kept alive under an etcd lease, through etcd restarts, outages
//! longer than the TTL, and lease loss.
//!
//! The session task sends a keepalive every TTL/3 on its own ticker. When the keepalive
//! stream breaks (an etcd restart yields `Unknown`, then `None` forever) it re-opens it;
//! when etcd says the lease is gone (TTL 0 or "lease not found") it grants a new lease and
//! puts the latest value again through a create-revision transaction. Every write is guarded
//! by "the key is still on my lease", so an agent that was replaced (`takeover`) notices and
//! stops instead of fighting over the key.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, PutOptions, Txn, TxnOp, TxnOpResponse};
use parking_lot::Mutex;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{debug, info, warn};

use switchyard_proto::backoff::Backoff;

use crate::etcd::{Retries, is_lease_not_found, retry};

/// What to register.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Full etcd key, e.g. `/switchyard/gateways/gw-1`.
    pub key: String,
    /// Initial value.
    pub value: Vec<u8>,
    /// Lease TTL; the key disappears this long after the owner dies. Whole seconds, ≥ 2 s.
    pub ttl: Duration,
    /// Replace a live holder of the key instead of refusing to start.
    pub takeover: bool,
}

/// Where the session stands; sent to the owner on every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    /// The key is registered and its lease is being kept alive.
    Active {
        /// The lease the key is attached to.
        lease_id: i64,
    },
    /// etcd is unreachable; the lease may still be alive. Retrying.
    Reconnecting {
        /// The lease being kept.
        lease_id: i64,
    },
    /// The lease expired; taking a new one and registering again.
    Lost,
    /// Another owner holds the key now (a takeover); this session stopped.
    Superseded {
        /// The other owner's lease.
        by_lease: i64,
    },
    /// Revoked on shutdown.
    Revoked,
}

impl LeaseState {
    /// A short name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Active { .. } => "active",
            Self::Reconnecting { .. } => "reconnecting",
            Self::Lost => "lost",
            Self::Superseded { .. } => "superseded",
            Self::Revoked => "revoked",
        }
    }
}

/// Why registering or writing failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// A live owner already holds the key and `takeover` was not asked for.
    #[error(
        "{key} is already registered by a live owner (lease {lease_id:x}, {ttl_left}s left); \
         stop it first or start with --takeover to replace it"
    )]
    AlreadyRegistered {
        /// The key.
        key: String,
        /// The holder's lease.
        lease_id: i64,
        /// Seconds left on the holder's lease.
        ttl_left: i64,
    },
    /// TTL below 2 s or not whole seconds.
    #[error("lease TTL must be whole seconds and at least 2s, got {0:?}")]
    BadTtl(Duration),
    /// Another owner took the key over.
    #[error("the key was taken over by another owner (lease {0:x})")]
    Superseded(i64),
    /// The session has stopped (revoked or superseded).
    #[error("the lease session has stopped")]
    Stopped,
    /// etcd failed.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// State shared between the handle and the session task.
#[derive(Debug)]
struct Shared {
    /// The latest value; what re-registration writes.
    value: Vec<u8>,
    /// The lease the key is on (0 while re-registering).
    lease_id: i64,
    /// Set once the session has stopped for good.
    stopped: bool,
    /// The latest value may not be in etcd (a write failed or was cut short); the task
    /// writes it as soon as the lease is confirmed again.
    dirty: bool,
}

/// A key kept alive under a lease. Dropping the session stops the keepalive without
/// revoking (the key expires after the TTL, as if the owner had died); call
/// [`LeaseSession::revoke`] for a clean shutdown.
pub struct LeaseSession {
    /// For writes from the owner.
    client: Client,
    /// The registered key.
    key: String,
    /// Value and lease, shared with the task.
    shared: Arc<Mutex<Shared>>,
    /// Wakes the task when a write found the key missing, so it re-registers at once.
    recheck: Arc<Notify>,
    /// Lease state, for the owner.
    state: watch::Receiver<LeaseState>,
    /// The task's sender, kept here too so `revoke` can say `Revoked` after the task is gone.
    state_tx: watch::Sender<LeaseState>,
    /// The keepalive task; aborted on drop.
    task: JoinHandle<()>,
}

impl LeaseSession {
    /// Grants a lease and registers the key under it, then keeps it alive in the background.
    ///
    /// Fails with [`LeaseError::AlreadyRegistered`] when the key is held by another live
    /// lease, unless `registration.takeover` is set.
    pub async fn register(client: Client, registration: Registration) -> Result<Self, LeaseError> {
        let ttl = registration.ttl;
        if ttl < Duration::from_secs(2) || ttl.subsec_nanos() != 0 {
            return Err(LeaseError::BadTtl(ttl));
        }
        let ttl_secs = ttl.as_secs() as i64;
        let mut c = client.clone();
        let lease_id = retry(|| {
            let mut c = c.clone();
            async move { c.lease_grant(ttl_secs, None).await }
        })
        .await?
        .id();
        let created = create(
            &mut c,
            &registration.key,
            &registration.value,
            lease_id,
            registration.takeover,
            0,
        )
        .await;
        if let Err(e) = created {
            let _ = c.lease_revoke(lease_id).await;
            return Err(e);
        }
        info!(key = %registration.key, lease = format_args!("{lease_id:x}"), "registered");
        let shared = Arc::new(Mutex::new(Shared {
            value: registration.value,
            lease_id,
            stopped: false,
            dirty: false,
        }));
        let (state_tx, state) = watch::channel(LeaseState::Active { lease_id });
        let recheck = Arc::new(Notify::new());
        let task = tokio::spawn(
            Task {
                client: client.clone(),
                key: registration.key.clone(),
                ttl,
                shared: shared.clone(),
                recheck: recheck.clone(),
                state: state_tx.clone(),
            }
            .run(),
        );
        Ok(Self {
            client,
            key: registration.key,
            shared,
            recheck,
            state,
            state_tx,
            task,
        })
    }

    /// Lease state changes, for the owner to log or act on.
    pub fn state(&self) -> watch::Receiver<LeaseState> {
        self.state.clone()
    }

    /// The lease the key is on now (0 while re-registering).
    pub fn lease_id(&self) -> i64 {
        self.shared.lock().lease_id
    }

    /// The registered key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Writes a new value. The value is kept even when etcd is unreachable, so the next
    /// re-registration writes it; the error tells the caller this write did not land yet.
    pub async fn put(&self, value: Vec<u8>) -> Result<(), LeaseError> {
        let lease_id = {
            let mut s = self.shared.lock();
            if s.stopped {
                return Err(LeaseError::Stopped);
            }
            s.value.clone_from(&value);
            s.dirty = true;
            s.lease_id
        };
        if lease_id == 0 {
            // Re-registering: the task writes the latest value when it gets a lease.
            return Ok(());
        }
        let mut c = self.client.clone();
        let key = self.key.clone();
        let resp = retry(|| {
            let txn = Txn::new()
                .when(vec![Compare::lease(
                    key.clone(),
                    CompareOp::Equal,
                    lease_id,
                )])
                .and_then(vec![TxnOp::put(
                    key.clone(),
                    value.clone(),
                    Some(PutOptions::new().with_lease(lease_id)),
                )])
                .or_else(vec![TxnOp::get(key.clone(), None)]);
            let mut c = c.clone();
            async move { c.txn(txn).await }
        })
        .await?;
        if resp.succeeded() {
            let mut s = self.shared.lock();
            if s.value == value {
                s.dirty = false;
            }
            return Ok(());
        }
        // The write raced the task re-registering on a new lease (after a pause longer than
        // the TTL, both wake at once): the value is kept and marked dirty, and the task
        // writes it under the new lease, so this is not a failure — and the new lease is
        // ours, not another owner's.
        let moved_on = || self.shared.lock().lease_id != lease_id;
        match current_holder(&resp) {
            Some(other) if other != 0 && other != lease_id => {
                if moved_on() {
                    return Ok(());
                }
                // Someone else's key now. The task confirms the holder is alive and stops.
                self.recheck.notify_one();
                Err(LeaseError::Superseded(other))
            }
            _ => {
                // The key vanished (deleted by hand, or the lease is expiring): re-create it.
                debug!(key = %self.key, "key missing on write; recreating");
                match create(&mut c, &self.key, &value, lease_id, false, lease_id).await {
                    Err(_) if moved_on() => Ok(()),
                    Err(LeaseError::Etcd(e)) if is_lease_not_found(&e) => {
                        // Our lease expired and the task has not noticed yet: wake it so it
                        // registers again now (with the latest value) instead of at its next
                        // keepalive.
                        self.recheck.notify_one();
                        Err(LeaseError::Etcd(e))
                    }
                    other => other,
                }
            }
        }
    }

    /// Stops the keepalive, revokes the lease and so deletes the key at once.
    pub async fn revoke(self) -> Result<(), LeaseError> {
        self.task.abort();
        let lease_id = {
            let mut s = self.shared.lock();
            s.stopped = true;
            s.lease_id
        };
        if lease_id != 0 {
            let c = self.client.clone();
            retry(|| {
                let mut c = c.clone();
                async move { c.lease_revoke(lease_id).await }
            })
            .await
            .map(drop)
            .or_else(|e| {
                if is_lease_not_found(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        }
        info!(key = %self.key, "lease revoked");
        self.state_tx.send_replace(LeaseState::Revoked);
        Ok(())
    }
}

impl std::fmt::Debug for LeaseSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaseSession")
            .field("key", &self.key)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Drop for LeaseSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lease on the key, from the `or_else` get of a failed guarded transaction.
/// One transaction, retried through etcd's transient errors like every other call.
async fn txn_with_retry(
    client: &Client,
    txn: Txn,
) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    retry(|| {
        let mut c = client.clone();
        let txn = txn.clone();
        async move { c.txn(txn).await }
    })
    .await
}

fn current_holder(resp: &etcd_client::TxnResponse) -> Option<i64> {
    resp.op_responses().into_iter().find_map(|r| match r {
        TxnOpResponse::Get(g) => Some(g.kvs().first().map_or(0, |kv| kv.lease())),
        _ => None,
    })
}

/// Puts `value` on `lease_id` if the key does not exist. If it exists on a lease that is
/// dead, ours (`own_lease`), or none, it is overwritten; if on another live lease, that is
/// [`LeaseError::AlreadyRegistered`] unless `takeover`, which overwrites and revokes the
/// other lease so its owner notices at once.
async fn create(
    client: &mut Client,
    key: &str,
    value: &[u8],
    lease_id: i64,
    takeover: bool,
    own_lease: i64,
) -> Result<(), LeaseError> {
    for _ in 0..5 {
        let txn = Txn::new()
            .when(vec![Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )])
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = txn_with_retry(client, txn).await?;
        if resp.succeeded() {
            return Ok(());
        }
        let holder = current_holder(&resp).unwrap_or(0);
        let holder_ttl = if holder == 0 || holder == own_lease || holder == lease_id {
            -1
        } else {
            let ttl = retry(|| {
                let mut c = client.clone();
                async move { c.lease_time_to_live(holder, None).await }
            })
            .await;
            match ttl {
                Ok(t) => t.ttl(),
                Err(e) if is_lease_not_found(&e) => -1,
                Err(e) => return Err(e.into()),
            }
        };
        if holder_ttl > 0 && !takeover {
            return Err(LeaseError::AlreadyRegistered {
                key: key.to_owned(),
                lease_id: holder,
                ttl_left: holder_ttl,
            });
        }
        // Replace the value only if the key still has the holder we looked at.
        let txn = Txn::new()
            .when(vec![Compare::lease(key, CompareOp::Equal, holder)])
            .and_then(vec![TxnOp::put(
                key,
                value,
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        let resp = txn_with_retry(client, txn).await?;
        if resp.succeeded() {
            if holder_ttl > 0 {
                warn!(
                    key,
                    old_lease = format_args!("{holder:x}"),
                    "took over a live registration"
                );
                let _ = client.lease_revoke(holder).await;
            }
            return Ok(());
        }
        // The key changed under us; look again.
    }
    Err(LeaseError::Etcd(etcd_client::Error::Internal(format!(
        "{key} kept changing while registering"
    ))))
}

/// The background half of a [`LeaseSession`].
struct Task {
    client: Client,
    key: String,
    ttl: Duration,
    shared: Arc<Mutex<Shared>>,
    recheck: Arc<Notify>,
    state: watch::Sender<LeaseState>,
}

/// How the keepalive loop ended.
enum Outcome {
    /// The stream broke; the lease may be alive.
    Broken,
    /// etcd says the lease is gone.
    Lost,
    /// A write found another owner.
    Recheck,
}

impl Task {
    async fn run(mut self) {
        let mut backoff = Retries::new(session_backoff(self.ttl));
        loop {
            let lease_id = self.shared.lock().lease_id;
            if lease_id == 0 {
                self.set_state(LeaseState::Lost);
                match self.reregister().await {
                    Ok(()) => backoff.reset(),
                    Err(LeaseError::AlreadyRegistered { lease_id, .. })
                    | Err(LeaseError::Superseded(lease_id)) => {
                        return self.superseded(lease_id);
                    }
                    Err(e) => {
                        debug!(key = %self.key, error = %e, "re-registration failed; retrying");
                        tokio::time::sleep(backoff.next_delay()).await;
                    }
                }
                continue;
            }
            match self.keep_alive(lease_id, &mut backoff).await {
                Outcome::Broken => {
                    self.set_state(LeaseState::Reconnecting { lease_id });
                    metrics::counter!("switchyard_registry_keepalive_restreams_total").increment(1);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Outcome::Lost => {
                    warn!(key = %self.key, lease = format_args!("{lease_id:x}"), "lease lost; registering again");
                    self.shared.lock().lease_id = 0;
                }
                Outcome::Recheck => {
                    if let Some(other) = self.foreign_holder(lease_id).await {
                        return self.superseded(other);
                    }
                }
            }
        }
    }

    /// Opens a keepalive stream and runs it until it breaks or the lease is gone.
    async fn keep_alive(&mut self, lease_id: i64, backoff: &mut Retries) -> Outcome {
        let (mut keeper, mut stream) = match self.client.lease_keep_alive(lease_id).await {
            Ok(pair) => pair,
            Err(e) if is_lease_not_found(&e) => return Outcome::Lost,
            Err(e) => {
                debug!(key = %self.key, error = %e, "keepalive stream failed to open");
                return Outcome::Broken;
            }
        };
        let mut ticker = tokio::time::interval(self.ttl / 3);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        // A keepalive answer must arrive within the TTL, or the stream is silently dead.
        let mut last_answer = Instant::now();
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if last_answer.elapsed() > self.ttl {
                        debug!(key = %self.key, "no keepalive answer within the TTL");
                        return Outcome::Broken;
                    }
                    if keeper.keep_alive().await.is_err() {
                        return Outcome::Broken;
                    }
                }
                msg = stream.message() => match msg {
                    Ok(Some(resp)) if resp.ttl() > 0 => {
                        last_answer = Instant::now();
                        backoff.reset();
                        self.set_state(LeaseState::Active { lease_id });
                        self.flush_if_dirty(lease_id).await;
                    }
                    Ok(Some(_)) => return Outcome::Lost,
                    Ok(None) => return Outcome::Broken,
                    Err(e) if is_lease_not_found(&e) => return Outcome::Lost,
                    Err(e) => {
                        debug!(key = %self.key, error = %e, "keepalive stream broke");
                        return Outcome::Broken;
                    }
                },
                () = self.recheck.notified() => return Outcome::Recheck,
            }
        }
    }

    /// Writes the latest value if a write by the owner did not land (etcd was away).
    async fn flush_if_dirty(&mut self, lease_id: i64) {
        let value = {
            let s = self.shared.lock();
            if !s.dirty {
                return;
            }
            s.value.clone()
        };
        let txn = Txn::new()
            .when(vec![Compare::lease(
                self.key.clone(),
                CompareOp::Equal,
                lease_id,
            )])
            .and_then(vec![TxnOp::put(
                self.key.clone(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease_id)),
            )]);
        match self.client.txn(txn).await {
            Ok(resp) if resp.succeeded() => {
                let mut s = self.shared.lock();
                if s.value == value {
                    s.dirty = false;
                }
            }
            Ok(_) => {
                // The key is gone (deleted by hand) or someone else's: recreate it on our
                // lease, or learn that we were superseded.
                let key = self.key.clone();
                match create(&mut self.client, &key, &value, lease_id, false, lease_id).await {
                    Ok(()) => {
                        let mut s = self.shared.lock();
                        if s.value == value {
                            s.dirty = false;
                        }
                    }
                    Err(LeaseError::AlreadyRegistered { .. }) => self.recheck.notify_one(),
                    Err(e) => {
                        debug!(key = %self.key, error = %e, "deferred write failed; will retry")
                    }
                }
            }
            Err(e) => debug!(key = %self.key, error = %e, "deferred write failed; will retry"),
        }
    }

    /// Grants a new lease and puts the latest value under it.
    async fn reregister(&mut self) -> Result<(), LeaseError> {
        let ttl_secs = self.ttl.as_secs() as i64;
        let lease_id = self.client.lease_grant(ttl_secs, None).await?.id();
        let value = self.shared.lock().value.clone();
        if let Err(e) = create(&mut self.client, &self.key, &value, lease_id, false, 0).await {
            let _ = self.client.lease_revoke(lease_id).await;
            return Err(e);
        }
        // The owner may have written a newer value meanwhile.
        let latest = {
            let mut s = self.shared.lock();
            s.lease_id = lease_id;
            s.dirty = s.value != value;
            s.dirty.then(|| s.value.clone())
        };
        if let Some(latest) = latest {
            let _ = self
                .client
                .put(
                    self.key.clone(),
                    latest,
                    Some(PutOptions::new().with_lease(lease_id)),
                )
                .await;
        }
        metrics::counter!("switchyard_registry_reregistrations_total").increment(1);
        info!(key = %self.key, lease = format_args!("{lease_id:x}"), "registered again");
        self.set_state(LeaseState::Active { lease_id });
        Ok(())
    }

    /// The live lease of another owner on the key, if any.
    async fn foreign_holder(&mut self, own: i64) -> Option<i64> {
        let resp = self.client.get(self.key.clone(), None).await.ok()?;
        let holder = resp.kvs().first()?.lease();
        if holder == own || holder == 0 {
            return None;
        }
        let ttl = self.client.lease_time_to_live(holder, None).await.ok()?;
        (ttl.ttl() > 0).then_some(holder)
    }

    fn superseded(self, by_lease: i64) {
        warn!(key = %self.key, other = format_args!("{by_lease:x}"), "registration taken over; stopping");
        let own = {
            let mut s = self.shared.lock();
            s.stopped = true;
            std::mem::replace(&mut s.lease_id, 0)
        };
        self.set_state(LeaseState::Superseded { by_lease });
        if own != 0 {
            let mut c = self.client.clone();
            tokio::spawn(async move {
                let _ = c.lease_revoke(own).await;
            });
        }
    }

    fn set_state(&self, state: LeaseState) {
        self.state.send_if_modified(|s| {
            let changed = *s != state;
            if changed {
                debug!(key = %self.key, from = s.name(), to = state.name(), "lease state");
            }
            *s = state;
            changed
        });
    }
}

/// Retry delays for the session: short enough to re-register within ~1 s of etcd's return
/// (the cap is a tenth of the TTL, kept within 200–800 ms).
fn session_backoff(ttl: Duration) -> Backoff {
    Backoff {
        base: Duration::from_millis(100),
        cap: (ttl / 10).clamp(Duration::from_millis(200), Duration::from_millis(800)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_backoff_stays_under_a_second() {
        let b = session_backoff(Duration::from_secs(10));
        assert_eq!(b.ceiling(1), Duration::from_millis(100));
        assert_eq!(b.ceiling(10), Duration::from_millis(800));
        assert_eq!(
            session_backoff(Duration::from_secs(2)).ceiling(10),
            Duration::from_millis(200)
        );
    }

    #[test]
    fn state_names() {
        assert_eq!(LeaseState::Active { lease_id: 1 }.name(), "active");
        assert_eq!(LeaseState::Superseded { by_lease: 1 }.name(), "superseded");
    }
}
