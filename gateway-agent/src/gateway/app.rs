//! The application hook: what the gateway does with DATA frames, and an application's
//! own login check.

use bytes::Bytes;
use switchyard_proto::v1;

use super::auth::{Identity, Refusal};
use super::hub::SessionHandle;

/// Why the application refused a DATA frame; the frame is not acknowledged and the
/// session is closed, so the client resends it elsewhere.
#[derive(Debug, thiserror::Error)]
#[error("application refused data: {0}")]
pub struct AppError(pub String);

/// Receives DATA frames. A frame is acknowledged (contract 3) only after `on_data` returns
/// `Ok`: returning means the application has taken it. Runs on the session's task, so a
/// slow hook slows only its own session; hand long work to another task.
pub trait App: Send + Sync + 'static {
    /// One DATA frame from `session`. `seq` is the client's sequence number (0 = not
    /// acknowledged); at-least-once delivery means an application needing exactly-once
    /// drops numbers it has seen.
    fn on_data(&self, session: &SessionHandle, seq: u64, payload: Bytes) -> Result<(), AppError>;

    /// A session was welcomed.
    fn on_open(&self, _session: &SessionHandle) {}

    /// A session ended.
    fn on_close(&self, _session: &SessionHandle) {}

    /// The application's own auth mode, tried before the configured ones (`--auth`):
    /// `None` = no opinion (the configured modes decide), `Some(Ok)` admits the identity
    /// (its `client_id` must be the HELLO's), `Some(Err)` is this mode's refusal — the
    /// HELLO still passes if a configured mode accepts it. Runs on the connection's task:
    /// keep it quick. The start-up check for non-loopback listeners cannot see this mode:
    /// an application relying on it alone sets `AuthConfig::allow_anonymous`.
    fn authenticate(&self, _hello: &v1::Hello) -> Option<Result<Identity, Refusal>> {
        None
    }
}

/// The default hook: sends every payload back to its session.
#[derive(Debug, Clone, Copy, Default)]
pub struct Echo;

impl App for Echo {
    fn on_data(&self, session: &SessionHandle, _seq: u64, payload: Bytes) -> Result<(), AppError> {
        session
            .push(payload)
            .map_err(|e| AppError(format!("echo: {e}")))
    }
}
