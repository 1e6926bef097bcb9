//! Sessions by `client_id`: admission (capacity, drain, kick policy), pushes and broadcast.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use switchyard_proto::v1;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use super::config::KickPolicy;

/// What a session task is asked to do besides sending queued data. Carried in a
/// [`ControlQueue`], not with the data: these must get through a full data queue.
#[derive(Debug, Clone)]
pub(crate) enum Control {
    /// Send GOAWAY and keep serving until the client leaves or the drain ends.
    GoAway(v1::GoAway),
    /// Send KICK, then close.
    Kick(v1::Kick),
    /// Close now, counted under this reason.
    Close(&'static str),
}

/// Why a push did not reach a session.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PushError {
    /// No session for that client on this gateway.
    #[error("no session for client {0:?}")]
    NotConnected(String),
    /// The session's outbound queue is full (a slow reader); it is closed if that lasts
    /// longer than the slow-client timeout.
    #[error("outbound queue full")]
    QueueFull,
    /// The session is closing.
    #[error("session closed")]
    Closed,
}

/// A session's kick / goaway / close requests: a plain queue under a lock plus a wake-up.
/// A tokio mpsc channel would do the same but allocates its first 32-slot block and its
/// cache-line-padded state up front, about 2 KB per session even when nothing is ever sent
/// (measured by `bench-density`); a session gets a handful of these in its life.
#[derive(Debug)]
struct ControlQueue {
    /// `None` once the session has ended: later requests are dropped, not kept.
    items: Mutex<Option<VecDeque<Control>>>,
    /// Woken for each request; a wake-up with no waiter is kept for the next wait.
    ready: Notify,
}

/// One session as seen by the application and the hub. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    /// Shared parts.
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    /// The login name from HELLO; the hub's key.
    client_id: String,
    /// Sent in WELCOME; lets a client and the logs tell sessions apart, and lets an
    /// anonymous client resume (replace) its own session.
    session_id: String,
    /// The auth mode that proved `client_id` ([`super::auth::ANONYMOUS`] if none): only a
    /// proven identity may kick another session of the same client_id.
    auth_mode: &'static str,
    /// Hub-unique number, so removing an old session never removes its successor.
    key: u64,
    /// Bounded: the per-connection memory limit.
    data: mpsc::Sender<Bytes>,
    /// Kick, goaway, close.
    control: ControlQueue,
    /// When pushes first found the queue full, for the slow-client rule.
    full_since: Mutex<Option<Instant>>,
    /// Copied from the config for the slow-client rule.
    slow_client_timeout: Duration,
}

impl SessionHandle {
    pub(crate) fn new(
        client_id: String,
        session_id: String,
        auth_mode: &'static str,
        key: u64,
        queue: usize,
        slow_client_timeout: Duration,
    ) -> (Self, mpsc::Receiver<Bytes>) {
        let (data, data_rx) = mpsc::channel(queue);
        let control = ControlQueue {
            items: Mutex::new(Some(VecDeque::new())),
            ready: Notify::new(),
        };
        let inner = HandleInner {
            client_id,
            session_id,
            auth_mode,
            key,
            data,
            control,
            full_since: Mutex::new(None),
            slow_client_timeout,
        };
        (
            Self {
                inner: Arc::new(inner),
            },
            data_rx,
        )
    }

    /// The login name from HELLO.
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The session id sent in WELCOME.
    pub fn session_id(&self) -> &str {
        &self.inner.session_id
    }

    /// How the client proved its `client_id`: `ticket`, `jwt`, `hmac`, an application's
    /// mode, or `anonymous`.
    pub fn auth_mode(&self) -> &'static str {
        self.inner.auth_mode
    }

    fn is_authenticated(&self) -> bool {
        self.inner.auth_mode != super::auth::ANONYMOUS
    }

    pub(crate) fn key(&self) -> u64 {
        self.inner.key
    }

    /// Queues a DATA frame to this session (the gateway numbers it). Never waits: a full
    /// queue is an error, and one that stays full past the slow-client timeout closes the
    /// session.
    pub fn push(&self, payload: Bytes) -> Result<(), PushError> {
        match self.inner.data.try_send(payload) {
            Ok(()) => {
                let mut since = self.inner.full_since.lock();
                if since.is_some() {
                    *since = None;
                }
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let now = Instant::now();
                let mut since = self.inner.full_since.lock();
                let first = *since.get_or_insert(now);
                if now.duration_since(first) >= self.inner.slow_client_timeout {
                    self.control(Control::Close("slow_client"));
                }
                metrics::counter!("switchyard_gateway_push_dropped_total", "reason" => "queue_full")
                    .increment(1);
                Err(PushError::QueueFull)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(PushError::Closed),
        }
    }

    pub(crate) fn control(&self, c: Control) {
        // No queue means the session already ended: nothing left to tell it.
        if let Some(q) = self.inner.control.items.lock().as_mut() {
            q.push_back(c);
            self.inner.control.ready.notify_one();
        }
    }

    /// The next control request, for the session task. Cancel-safe: a request is taken
    /// from the queue only in the poll that returns it.
    pub(crate) async fn next_control(&self) -> Control {
        loop {
            if let Some(c) = self
                .inner
                .control
                .items
                .lock()
                .as_mut()
                .and_then(VecDeque::pop_front)
            {
                return c;
            }
            self.inner.control.ready.notified().await;
        }
    }

    /// The session task has ended: drop pending and future control requests.
    pub(crate) fn end_control(&self) {
        *self.inner.control.items.lock() = None;
    }

    /// The next pending control request, if any (tests).
    #[cfg(test)]
    fn try_control(&self) -> Option<Control> {
        self.inner.control.items.lock().as_mut()?.pop_front()
    }

    /// Closes the session with KICK (terminal for the client).
    pub fn kick(&self, code: v1::KickCode, reason: impl Into<String>) {
        self.control(Control::Kick(v1::Kick {
            code: code as i32,
            reason: reason.into(),
        }));
    }
}

/// The outcome of a HELLO that passed auth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Welcome it, after kicking the sessions it replaces (kick-old).
    Accept {
        /// How many existing sessions of that client are kicked.
        replaced: usize,
    },
    /// `REJECT{DRAINING}`.
    Draining,
    /// `REJECT{OVERLOADED}`.
    Overloaded,
    /// reject-new: answer with `KICK{LOGGED_IN_ELSEWHERE}`.
    Duplicate,
}

/// Pure admission rule. `existing` = sessions this client already has, `replaceable` =
/// those of them the newcomer may kick (all of them for a proven identity; for an
/// anonymous one only the session it resumes by `session_id`), `total` = all sessions.
/// Draining wins; a kick-old login replacing its own sessions never counts against
/// capacity twice.
pub(crate) fn admit(
    policy: KickPolicy,
    draining: bool,
    capacity: u64,
    total: usize,
    existing: usize,
    replaceable: usize,
) -> Admission {
    if draining {
        return Admission::Draining;
    }
    if existing > 0 && policy == KickPolicy::RejectNew {
        return Admission::Duplicate;
    }
    let replaced = if policy == KickPolicy::KickOld {
        replaceable
    } else {
        0
    };
    let after = total - replaced + 1;
    if after as u64 > capacity {
        return Admission::Overloaded;
    }
    Admission::Accept { replaced }
}

/// Every live session of one gateway, keyed by `client_id`. Cheap to clone; this is the
/// handle applications use to push to a client or broadcast.
#[derive(Debug, Clone)]
pub struct Hub {
    /// Shared state.
    inner: Arc<HubInner>,
}

#[derive(Debug)]
struct HubInner {
    /// One lock for the map: login and logout are rare next to frames, which never touch it.
    sessions: Mutex<HashMap<String, Vec<SessionHandle>>>,
    /// Kept beside the map so readers (agent reporting, metrics) never take the lock.
    count: AtomicUsize,
    /// Set at drain start: new logins get `REJECT{DRAINING}`.
    draining: AtomicBool,
    /// Same-client login rule.
    policy: KickPolicy,
    /// Session limit.
    capacity: u64,
}

/// The result of [`Hub::broadcast`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Broadcast {
    /// Sessions the payload was queued to.
    pub queued: usize,
    /// Sessions whose queue was full or that were closing.
    pub dropped: usize,
}

impl Hub {
    pub(crate) fn new(policy: KickPolicy, capacity: u64) -> Self {
        Self {
            inner: Arc::new(HubInner {
                sessions: Mutex::new(HashMap::new()),
                count: AtomicUsize::new(0),
                draining: AtomicBool::new(false),
                policy,
                capacity,
            }),
        }
    }

    /// Live sessions.
    pub fn connections(&self) -> usize {
        self.inner.count.load(Ordering::Relaxed)
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::Relaxed)
    }

    pub(crate) fn set_draining(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// Admits `session` or says why not. On kick-old, the replaced sessions are told to
    /// close with `KICK{LOGGED_IN_ELSEWHERE}` and leave the map at once. Only a proven
    /// identity replaces every session of its client_id: an anonymous newcomer replaces
    /// only the session whose `session_id` it resumes (which only the real client knows)
    /// and otherwise joins beside the others, so a stranger cannot kick the real user off.
    pub(crate) fn register(&self, session: &SessionHandle) -> Admission {
        let mut map = self.inner.sessions.lock();
        let may_replace = |old: &SessionHandle| {
            session.is_authenticated() || old.session_id() == session.session_id()
        };
        let (existing, replaceable) = map.get(session.client_id()).map_or((0, 0), |l| {
            (l.len(), l.iter().filter(|o| may_replace(o)).count())
        });
        let total = self.inner.count.load(Ordering::Relaxed);
        let decision = admit(
            self.inner.policy,
            self.is_draining(),
            self.inner.capacity,
            total,
            existing,
            replaceable,
        );
        if let Admission::Accept { replaced } = decision {
            let list = map.entry(session.client_id().to_owned()).or_default();
            if replaced > 0 {
                list.retain(|old| {
                    if !may_replace(old) {
                        return true;
                    }
                    old.kick(
                        v1::KickCode::LoggedInElsewhere,
                        "the same client_id logged in again",
                    );
                    metrics::counter!("switchyard_gateway_kicks_total", "reason" => "logged_in_elsewhere")
                        .increment(1);
                    false
                });
            } else if existing > 0 && self.inner.policy == KickPolicy::KickOld {
                metrics::counter!("switchyard_gateway_anonymous_duplicates_total").increment(1);
            }
            list.push(session.clone());
            let n = total - replaced + 1;
            self.inner.count.store(n, Ordering::Relaxed);
            metrics::gauge!("switchyard_gateway_connections").set(n as f64);
        }
        decision
    }

    /// Forgets `session` if it is still registered (a kicked one was already removed).
    pub(crate) fn unregister(&self, session: &SessionHandle) {
        let mut map = self.inner.sessions.lock();
        let Some(list) = map.get_mut(session.client_id()) else {
            return;
        };
        let before = list.len();
        list.retain(|s| s.key() != session.key());
        let removed = before - list.len();
        if list.is_empty() {
            map.remove(session.client_id());
        }
        if removed > 0 {
            let n = self.inner.count.fetch_sub(removed, Ordering::Relaxed) - removed;
            metrics::gauge!("switchyard_gateway_connections").set(n as f64);
        }
    }

    /// The sessions of `client_id` (several only with allow-many).
    pub fn sessions_of(&self, client_id: &str) -> Vec<SessionHandle> {
        self.inner
            .sessions
            .lock()
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Every live session (a snapshot).
    pub fn sessions(&self) -> Vec<SessionHandle> {
        self.inner
            .sessions
            .lock()
            .values()
            .flatten()
            .cloned()
            .collect()
    }

    /// Queues DATA to every session of `client_id`; returns how many got it.
    pub fn push(&self, client_id: &str, payload: Bytes) -> Result<usize, PushError> {
        let sessions = self.sessions_of(client_id);
        if sessions.is_empty() {
            return Err(PushError::NotConnected(client_id.to_owned()));
        }
        let mut ok = 0;
        let mut last_err = None;
        for s in &sessions {
            match s.push(payload.clone()) {
                Ok(()) => ok += 1,
                Err(e) => last_err = Some(e),
            }
        }
        match (ok, last_err) {
            (0, Some(e)) => Err(e),
            _ => Ok(ok),
        }
    }

    /// Queues DATA to every session; full queues are skipped (and counted), never waited on.
    pub fn broadcast(&self, payload: Bytes) -> Broadcast {
        let mut report = Broadcast::default();
        for s in self.sessions() {
            match s.push(payload.clone()) {
                Ok(()) => report.queued += 1,
                Err(_) => report.dropped += 1,
            }
        }
        report
    }

    /// Kicks every session of `client_id` (e.g. an admin action); returns how many.
    pub fn kick(&self, client_id: &str, code: v1::KickCode, reason: &str) -> usize {
        let sessions = self.sessions_of(client_id);
        for s in &sessions {
            s.kick(code, reason);
        }
        sessions.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::auth::ANONYMOUS;

    fn session(hub_key: u64, id: &str) -> SessionHandle {
        anonymous(hub_key, id, &format!("s{hub_key}"), "ticket")
    }

    fn anonymous(hub_key: u64, id: &str, session_id: &str, mode: &'static str) -> SessionHandle {
        let (h, _data) = SessionHandle::new(
            id.into(),
            session_id.into(),
            mode,
            hub_key,
            2,
            Duration::from_secs(1),
        );
        h
    }

    #[test]
    fn admission_rule() {
        use Admission::*;
        let p = KickPolicy::KickOld;
        assert_eq!(admit(p, true, 10, 0, 0, 0), Draining);
        assert_eq!(admit(p, false, 10, 9, 0, 0), Accept { replaced: 0 });
        assert_eq!(admit(p, false, 10, 10, 0, 0), Overloaded);
        // Replacing its own session at full capacity is fine.
        assert_eq!(admit(p, false, 10, 10, 1, 1), Accept { replaced: 1 });
        // An anonymous newcomer that resumes nothing joins beside the session.
        assert_eq!(admit(p, false, 10, 9, 1, 0), Accept { replaced: 0 });
        assert_eq!(admit(p, false, 10, 10, 1, 0), Overloaded);
        assert_eq!(admit(KickPolicy::RejectNew, false, 10, 1, 1, 1), Duplicate);
        assert_eq!(
            admit(KickPolicy::AllowMany, false, 10, 1, 1, 1),
            Accept { replaced: 0 }
        );
        assert_eq!(admit(KickPolicy::AllowMany, false, 2, 2, 1, 1), Overloaded);
    }

    #[tokio::test]
    async fn kick_old_replaces_and_counts_once() {
        let hub = Hub::new(KickPolicy::KickOld, 10);
        let a = session(1, "u1");
        let b = session(2, "u1");
        assert!(matches!(hub.register(&a), Admission::Accept { .. }));
        assert!(matches!(
            hub.register(&b),
            Admission::Accept { replaced: 1 }
        ));
        assert_eq!(hub.connections(), 1);
        assert!(
            matches!(a.try_control(), Some(Control::Kick(k)) if k.code == v1::KickCode::LoggedInElsewhere as i32)
        );
        // The kicked session's own cleanup must not remove its successor.
        hub.unregister(&a);
        assert_eq!(hub.connections(), 1);
        assert_eq!(hub.sessions_of("u1")[0].key(), 2);
        hub.unregister(&b);
        assert_eq!(hub.connections(), 0);
    }

    #[tokio::test]
    async fn an_anonymous_login_kicks_only_the_session_it_resumes() {
        let hub = Hub::new(KickPolicy::KickOld, 10);
        let real = anonymous(1, "u1", "s-real", ANONYMOUS);
        hub.register(&real);
        // A stranger with the same client_id: joins, kicks nobody.
        let stranger = anonymous(2, "u1", "s-other", ANONYMOUS);
        assert_eq!(hub.register(&stranger), Admission::Accept { replaced: 0 });
        assert!(real.try_control().is_none(), "the real session stays");
        assert_eq!(hub.connections(), 2);
        // The real client back with its session_id replaces its own session only.
        let resumed = anonymous(3, "u1", "s-real", ANONYMOUS);
        assert_eq!(hub.register(&resumed), Admission::Accept { replaced: 1 });
        assert!(matches!(real.try_control(), Some(Control::Kick(_))));
        assert!(stranger.try_control().is_none());
        assert_eq!(hub.connections(), 2);
        // A proven identity replaces them all.
        let proven = anonymous(4, "u1", "s-new", "ticket");
        assert_eq!(hub.register(&proven), Admission::Accept { replaced: 2 });
        assert_eq!(hub.connections(), 1);
    }

    #[tokio::test]
    async fn control_requests_wake_the_session_in_order_and_stop_at_its_end() {
        let a = session(1, "u1");
        // Sent before anyone waits: kept, in order.
        a.control(Control::Close("first"));
        a.control(Control::Close("second"));
        assert!(matches!(a.next_control().await, Control::Close("first")));
        assert!(matches!(a.next_control().await, Control::Close("second")));
        // Sent while the session waits: wakes it.
        let waiter = {
            let a = a.clone();
            tokio::spawn(async move { a.next_control().await })
        };
        tokio::task::yield_now().await;
        a.control(Control::Close("later"));
        assert!(matches!(waiter.await.unwrap(), Control::Close("later")));
        // After the session ended nothing is kept.
        a.end_control();
        a.control(Control::Close("too late"));
        assert!(a.try_control().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_fails_fast_then_closes_a_slow_client() {
        let hub = Hub::new(KickPolicy::AllowMany, 10);
        let (a, _data) = SessionHandle::new(
            "u1".into(),
            "s".into(),
            "ticket",
            1,
            1,
            Duration::from_secs(1),
        );
        hub.register(&a);
        assert_eq!(hub.push("u1", Bytes::from_static(b"x")), Ok(1));
        assert_eq!(
            hub.push("u1", Bytes::from_static(b"y")),
            Err(PushError::QueueFull)
        );
        assert!(a.try_control().is_none());
        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(
            hub.push("u1", Bytes::from_static(b"z")),
            Err(PushError::QueueFull)
        );
        assert!(matches!(
            a.try_control(),
            Some(Control::Close("slow_client"))
        ));
        assert!(matches!(
            hub.push("nobody", Bytes::new()),
            Err(PushError::NotConnected(_))
        ));
        assert_eq!(
            hub.broadcast(Bytes::new()),
            Broadcast {
                queued: 0,
                dropped: 1
            }
        );
    }
}
