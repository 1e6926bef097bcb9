//! What the client tells the application: events, their typed causes, and errors.
//!
//! Every cause is an enum an app can `match` on; the free-text detail (an OS error, a
//! gateway's reason) is kept for display only. All of them are `#[non_exhaustive]` so new
//! causes can be added without breaking apps.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use switchyard_proto::v1;

/// What happened to the connection; see [`crate::Client::events`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A round starts: ask a router (or the cache) for candidates, then race them.
    Connecting,
    /// A gateway accepted the HELLO; `attempt` counts the rounds it took (1 = first try).
    Connected {
        /// Gateway id.
        gateway: String,
        /// Rounds since the last link (or since `connect()`).
        attempt: u32,
    },
    /// The link to `gateway` is gone; [`crate::Client::gateway`] is `None` from here on.
    Disconnected {
        /// Gateway id.
        gateway: String,
        /// Why.
        cause: DisconnectCause,
    },
    /// The next round starts after `delay`.
    Reconnecting {
        /// Number of the coming round.
        attempt: u32,
        /// Wait before it (random spread after a loss, full-jitter backoff after a failed
        /// round, at least a gateway's `retry_after` when every candidate said so).
        delay: Duration,
        /// What went wrong just before.
        after: Setback,
    },
    /// The application is not reading [`crate::Messages`]: its buffer is full, so the client
    /// stopped reading the link and stopped acknowledging. Heartbeats and sends go on; the
    /// gateway sees the backpressure. Reading resumes by itself once the app reads.
    InboundFull {
        /// Messages waiting in the buffer.
        buffered: usize,
    },
    /// The gateway sent KICK: terminal, no automatic reconnect.
    Kicked {
        /// Kick code.
        code: v1::KickCode,
        /// The gateway's reason.
        reason: String,
    },
    /// Terminal: a limit was reached or the credentials were refused.
    GaveUp {
        /// Why.
        cause: GaveUp,
    },
    /// Only from [`crate::Events`]: this subscriber fell behind and `missed` events were
    /// skipped ([`crate::Client::history`] still has them).
    Lagged {
        /// Events skipped.
        missed: u64,
    },
}

impl Event {
    /// Lower-case event name (`connecting`, `connected`, ...), the same in every client.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Connected { .. } => "connected",
            Self::Disconnected { .. } => "disconnected",
            Self::Reconnecting { .. } => "reconnecting",
            Self::InboundFull { .. } => "inbound_full",
            Self::Kicked { .. } => "kicked",
            Self::GaveUp { .. } => "gave_up",
            Self::Lagged { .. } => "lagged",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        match self {
            Self::Connecting => Ok(()),
            Self::Connected { gateway, attempt } => {
                write!(f, " gateway={gateway} attempt={attempt}")
            }
            Self::Disconnected { gateway, cause } => {
                write!(f, " gateway={gateway} cause={} ({cause})", cause.name())
            }
            Self::Reconnecting {
                attempt,
                delay,
                after,
            } => write!(
                f,
                " attempt={attempt} delay={}ms after=({after})",
                delay.as_millis()
            ),
            Self::InboundFull { buffered } => write!(f, " buffered={buffered}"),
            Self::Kicked { code, reason } => {
                write!(f, " code={} reason={reason:?}", code.as_str_name())
            }
            Self::GaveUp { cause } => write!(f, " cause={} ({cause})", cause.name()),
            Self::Lagged { missed } => write!(f, " missed={missed}"),
        }
    }
}

/// Why an established link ended. One crash gives one cause whatever the timing: a reset,
/// an EOF and a broken pipe are all [`DisconnectCause::LinkClosed`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectCause {
    /// Nothing came back within interval + timeout: the peer or the path died silently.
    HeartbeatTimeout {
        /// Heartbeat interval on that link.
        interval: Duration,
        /// Wait after a PING.
        timeout: Duration,
    },
    /// The gateway (or something on the path) closed or reset the connection.
    LinkClosed {
        /// The OS or library error, for display.
        detail: String,
    },
    /// A write could not finish: the peer stopped reading (frozen) and the buffers filled.
    WriteStalled {
        /// How long the write waited.
        after: Duration,
    },
    /// The gateway broke the protocol (bad frame, HELLO/WELCOME/REJECT on an open link).
    Protocol {
        /// What it sent, for display.
        detail: String,
    },
    /// The gateway is draining (GOAWAY): the client moved elsewhere at its chosen moment.
    GoAway {
        /// The gateway's reason.
        reason: String,
    },
    /// [`crate::Client::network_changed`] was called.
    NetworkChanged,
    /// [`crate::Client::close`] was called, or every handle was dropped.
    Closed,
}

impl DisconnectCause {
    /// Lower-case name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::HeartbeatTimeout { .. } => "heartbeat_timeout",
            Self::LinkClosed { .. } => "link_closed",
            Self::WriteStalled { .. } => "write_stalled",
            Self::Protocol { .. } => "protocol",
            Self::GoAway { .. } => "goaway",
            Self::NetworkChanged => "network_changed",
            Self::Closed => "closed",
        }
    }
}

impl fmt::Display for DisconnectCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HeartbeatTimeout { interval, timeout } => write!(
                f,
                "heartbeat timeout (interval {interval:?}, timeout {timeout:?})"
            ),
            Self::LinkClosed { detail } => write!(f, "link closed: {detail}"),
            Self::WriteStalled { after } => write!(f, "write blocked for {after:?}"),
            Self::Protocol { detail } => write!(f, "protocol error: {detail}"),
            Self::GoAway { reason } => write!(f, "goaway: {reason}"),
            Self::NetworkChanged => f.write_str("network changed"),
            Self::Closed => f.write_str("closed by the application"),
        }
    }
}

/// How one gateway failed this client.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailureKind {
    /// Could not open a link: refused, unreachable, TLS or WebSocket handshake failed, or
    /// closed before WELCOME.
    Unreachable {
        /// The OS or library error, for display.
        detail: String,
    },
    /// No WELCOME within `connect_timeout`.
    HandshakeTimeout {
        /// The budget that ran out.
        after: Duration,
    },
    /// The gateway answered HELLO with REJECT.
    Refused {
        /// REJECT code.
        code: v1::RejectCode,
        /// The gateway's reason.
        reason: String,
        /// Do not come back before this (`REJECT.retry_after_ms`), when the gateway said so.
        retry_after: Option<Duration>,
    },
    /// An established link ended.
    Lost(DisconnectCause),
}

impl FailureKind {
    /// Lower-case name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "unreachable",
            Self::HandshakeTimeout { .. } => "handshake_timeout",
            Self::Refused { .. } => "refused",
            Self::Lost(_) => "lost",
        }
    }

    /// A network fault worth reporting to the routers (it feeds their ejection). Refusals
    /// and moves are the gateway working as designed: they only exclude it for a while.
    pub fn is_fault(&self) -> bool {
        match self {
            Self::Unreachable { .. } | Self::HandshakeTimeout { .. } => true,
            Self::Refused { .. } => false,
            Self::Lost(c) => matches!(
                c,
                DisconnectCause::HeartbeatTimeout { .. }
                    | DisconnectCause::LinkClosed { .. }
                    | DisconnectCause::WriteStalled { .. }
                    | DisconnectCause::Protocol { .. }
            ),
        }
    }

    /// REJECT codes after which retrying anywhere is pointless: the credentials are wrong.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                code: v1::RejectCode::Auth | v1::RejectCode::BadHello,
                ..
            }
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable { detail } => write!(f, "unreachable: {detail}"),
            Self::HandshakeTimeout { after } => write!(f, "no WELCOME within {after:?}"),
            Self::Refused {
                code,
                reason,
                retry_after,
            } => {
                write!(f, "rejected ({}): {reason}", code.as_str_name())?;
                if let Some(d) = retry_after {
                    write!(f, " (retry after {d:?})")?;
                }
                Ok(())
            }
            Self::Lost(c) => write!(f, "lost: {c}"),
        }
    }
}

/// One gateway that failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Gateway id.
    pub gateway: String,
    /// What went wrong.
    pub kind: FailureKind,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.gateway, self.kind)
    }
}

/// What went wrong just before a wait or a give-up.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Setback {
    /// The link was lost.
    Lost(DisconnectCause),
    /// Every candidate of the round failed, in the order they were tried.
    Failed(Vec<Failure>),
    /// There was nothing to try: no router answered, no cached list was valid, no bootstrap
    /// gateway was configured.
    NoCandidates {
        /// Why no router answered, for display.
        detail: String,
    },
    /// The token provider failed, so neither a Route call nor a HELLO could be sent.
    Token {
        /// Its error, for display.
        detail: String,
    },
    /// A router answered `UNAUTHENTICATED` to the app token: the next round (at once) asks
    /// again with a fresh token; a second refusal in a row is [`GaveUp::Unauthenticated`].
    Unauthenticated {
        /// The router endpoint and its reason, for display (one string keeps every
        /// `Error` small).
        detail: String,
    },
}

impl fmt::Display for Setback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Lost(c) => write!(f, "lost: {c}"),
            Self::Failed(list) if list.is_empty() => f.write_str("no candidate"),
            Self::Failed(list) => {
                for (i, x) in list.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{x}")?;
                }
                Ok(())
            }
            Self::NoCandidates { detail } => write!(f, "no candidate: {detail}"),
            Self::Token { detail } => write!(f, "token provider: {detail}"),
            Self::Unauthenticated { detail } => {
                write!(f, "router refused the app token: {detail}")
            }
        }
    }
}

/// Why the client gave up for good.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GaveUp {
    /// A gateway refused the credentials (REJECT AUTH or BAD_HELLO, or AUTH_EXPIRED again
    /// right after routing once more for a fresh ticket): retrying would not help.
    Refused {
        /// Gateway id.
        gateway: String,
        /// REJECT code.
        code: v1::RejectCode,
        /// The gateway's reason.
        reason: String,
    },
    /// A router answered `UNAUTHENTICATED` to the app token twice in a row (the second time
    /// with a fresh token from the token provider): the app must log the user in again.
    /// The cached or bootstrap lists are not tried, so a revoked login cannot hide there.
    Unauthenticated {
        /// The router endpoint that refused.
        router: String,
        /// The router's reason.
        message: String,
    },
    /// A router answered `PERMISSION_DENIED`: the token is valid but this identity may not
    /// log in; a fresh token would not change that.
    PermissionDenied {
        /// The router endpoint that refused.
        router: String,
        /// The router's reason.
        message: String,
    },
    /// `max_attempts` consecutive rounds failed.
    AttemptLimit {
        /// Rounds tried.
        attempts: u32,
        /// What the last round ran into.
        last: Setback,
    },
    /// Reconnecting took longer than `max_elapsed`.
    TimeLimit {
        /// Time spent reconnecting.
        elapsed: Duration,
        /// What the last round ran into.
        last: Setback,
    },
    /// `connect()` found no gateway within the login deadline.
    LoginDeadline {
        /// The deadline.
        after: Duration,
        /// Rounds tried.
        attempts: u32,
        /// What the last finished round ran into (`None`: no round finished).
        last: Option<Setback>,
        /// Gateways the round cut short by the deadline was trying (empty: it was routing
        /// or waiting).
        trying: Vec<String>,
    },
}

impl GaveUp {
    /// Lower-case name, for logs and metric labels.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Refused { .. } => "refused",
            Self::Unauthenticated { .. } => "unauthenticated",
            Self::PermissionDenied { .. } => "permission_denied",
            Self::AttemptLimit { .. } => "attempt_limit",
            Self::TimeLimit { .. } => "time_limit",
            Self::LoginDeadline { .. } => "login_deadline",
        }
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Refused {
                gateway,
                code,
                reason,
            } => write!(
                f,
                "{gateway} refused the login ({}): {reason}",
                code.as_str_name()
            ),
            Self::Unauthenticated { router, message } => write!(
                f,
                "router {router} refused the app token twice (UNAUTHENTICATED): {message}"
            ),
            Self::PermissionDenied { router, message } => write!(
                f,
                "router {router} denied the login (PERMISSION_DENIED): {message}"
            ),
            Self::AttemptLimit { attempts, last } => {
                write!(f, "{attempts} attempts failed; last: {last}")
            }
            Self::TimeLimit { elapsed, last } => {
                write!(f, "reconnecting for {elapsed:?}; last: {last}")
            }
            Self::LoginDeadline {
                after,
                attempts,
                last,
                trying,
            } => {
                write!(
                    f,
                    "no gateway within the login deadline {after:?} ({attempts} attempts)"
                )?;
                if !trying.is_empty() {
                    write!(f, "; was trying {}", trying.join(", "))?;
                }
                match last {
                    Some(l) => write!(f, "; last: {l}"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// Why `connect()` or the client as a whole ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `connect()` runs once per client.
    #[error("connect() was already called on this client")]
    AlreadyStarted,
    /// A limit was reached or the credentials were refused.
    #[error("gave up: {0}")]
    GaveUp(GaveUp),
    /// Kicked by the gateway.
    #[error("kicked ({}): {reason}", code.as_str_name())]
    Kicked {
        /// Kick code.
        code: v1::KickCode,
        /// The gateway's reason.
        reason: String,
    },
    /// `close()` was called or every handle was dropped.
    #[error("client closed")]
    Closed,
    /// The client's task failed (a bug in the library); what was queued was handed back.
    #[error("client task failed: {0}")]
    Crashed(String),
}

/// `send()` did not queue the message; the payload is handed back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No link and no room within the send timeout.
    #[error("send timed out waiting for a link or queue room")]
    Timeout(Bytes),
    /// The client has ended (closed, kicked, gave up).
    #[error("client ended: {1}")]
    Ended(Bytes, Error),
    /// The payload does not fit one frame (`max_frame` less the DATA header).
    #[error("payload of {} bytes is over the {}-byte limit of one message", .0.len(), .1)]
    TooLarge(Bytes, usize),
}

/// A message that was queued but never acknowledged: handed back on `GaveUp`, `Kicked` or
/// `close()`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("undelivered ({} bytes): {reason}", payload.len())]
pub struct Undelivered {
    /// The application bytes.
    pub payload: Bytes,
    /// Why it was given up.
    pub reason: Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_print_as_name_and_details() {
        let lines: Vec<String> = [
            Event::Connecting,
            Event::Connected {
                gateway: "gw-1".into(),
                attempt: 2,
            },
            Event::Disconnected {
                gateway: "gw-1".into(),
                cause: DisconnectCause::LinkClosed {
                    detail: "reset".into(),
                },
            },
            Event::Reconnecting {
                attempt: 3,
                delay: Duration::from_millis(1500),
                after: Setback::Failed(vec![Failure {
                    gateway: "gw-2".into(),
                    kind: FailureKind::Refused {
                        code: v1::RejectCode::Overloaded,
                        reason: "full".into(),
                        retry_after: Some(Duration::from_secs(2)),
                    },
                }]),
            },
            Event::Kicked {
                code: v1::KickCode::LoggedInElsewhere,
                reason: "other device".into(),
            },
            Event::GaveUp {
                cause: GaveUp::AttemptLimit {
                    attempts: 3,
                    last: Setback::NoCandidates {
                        detail: "no router answered".into(),
                    },
                },
            },
        ]
        .iter()
        .map(ToString::to_string)
        .collect();
        assert_eq!(
            lines,
            [
                "connecting",
                "connected gateway=gw-1 attempt=2",
                "disconnected gateway=gw-1 cause=link_closed (link closed: reset)",
                "reconnecting attempt=3 delay=1500ms after=(gw-2: rejected (REJECT_CODE_OVERLOADED): full (retry after 2s))",
                "kicked code=KICK_CODE_LOGGED_IN_ELSEWHERE reason=\"other device\"",
                "gave_up cause=attempt_limit (3 attempts failed; last: no candidate: no router answered)",
            ]
        );
    }

    #[test]
    fn router_refusals_name_the_router_and_the_code() {
        let retry = Event::Reconnecting {
            attempt: 2,
            delay: Duration::ZERO,
            after: Setback::Unauthenticated {
                detail: "https://r1:7100: expired".into(),
            },
        };
        assert_eq!(
            retry.to_string(),
            "reconnecting attempt=2 delay=0ms after=(router refused the app token: https://r1:7100: expired)"
        );
        let gave_up = GaveUp::Unauthenticated {
            router: "https://r1:7100".into(),
            message: "expired".into(),
        };
        assert_eq!(gave_up.name(), "unauthenticated");
        assert!(gave_up.to_string().contains("UNAUTHENTICATED"), "{gave_up}");
        let denied = GaveUp::PermissionDenied {
            router: "https://r1:7100".into(),
            message: "banned".into(),
        };
        assert_eq!(denied.name(), "permission_denied");
        assert!(denied.to_string().contains("PERMISSION_DENIED"), "{denied}");
    }

    #[test]
    fn only_network_faults_are_reported_and_only_auth_is_terminal() {
        let refused = |code| FailureKind::Refused {
            code,
            reason: String::new(),
            retry_after: None,
        };
        assert!(!refused(v1::RejectCode::Overloaded).is_fault());
        assert!(!refused(v1::RejectCode::Overloaded).is_terminal());
        assert!(refused(v1::RejectCode::Auth).is_terminal());
        assert!(refused(v1::RejectCode::BadHello).is_terminal());
        assert!(
            FailureKind::Unreachable {
                detail: String::new()
            }
            .is_fault()
        );
        assert!(
            FailureKind::Lost(DisconnectCause::WriteStalled {
                after: Duration::ZERO
            })
            .is_fault()
        );
        assert!(
            !FailureKind::Lost(DisconnectCause::GoAway {
                reason: String::new()
            })
            .is_fault()
        );
    }
}
