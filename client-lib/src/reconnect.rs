//! The reconnect machine: every decision about when to route, dial, wait, report a gateway
//! or give up, as a pure state machine over [`Instant`]s (like quinn-proto's connection):
//! the driver feeds it what happened ([`Input`]) and does what it says ([`Step`]). No I/O,
//! so each rule is tested with a paused clock and a seeded random source.

use std::time::Duration;

use rand::Rng;
use switchyard_proto::backoff::uniform;
use switchyard_proto::v1;
use tokio::time::Instant;

use crate::config::Effective;
use crate::event::{DisconnectCause, Failure, FailureKind, GaveUp, Setback};

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Input {
    /// `connect()` was called.
    Start,
    /// The round's candidate list is known (router, cache or bootstrap).
    Candidates {
        /// How many there are.
        count: usize,
        /// Why it is empty, for the setback (routing error).
        detail: String,
    },
    /// The token provider failed (or gave a token that cannot be sent).
    TokenFailed(String),
    /// A router refused the app token (`UNAUTHENTICATED`) or the identity (`PERMISSION_DENIED`).
    RouteRefused {
        /// The router endpoint.
        router: String,
        /// `PERMISSION_DENIED`: a fresh token would not help.
        denied: bool,
        /// The router's reason.
        message: String,
    },
    /// A gateway accepted; `failures` are the candidates that failed before it.
    Won {
        /// Those that failed first.
        failures: Vec<Failure>,
    },
    /// A gateway refused the credentials: nothing else in this list will work either.
    Rejected {
        /// Gateway id.
        gateway: String,
        /// REJECT code (AUTH, BAD_HELLO or AUTH_EXPIRED).
        code: v1::RejectCode,
        /// The gateway's reason.
        reason: String,
    },
    /// Every candidate failed.
    Exhausted(Vec<Failure>),
    /// An established link ended (a GOAWAY window ending is `Lost` with a `GoAway` cause).
    Lost {
        /// Gateway id.
        gateway: String,
        /// Why.
        cause: DisconnectCause,
    },
    /// `network_changed()`.
    NetworkChanged,
    /// The instant from [`Machine::give_up_at`] passed, while trying these gateways.
    Deadline {
        /// Ids of the round cut short (empty while routing or waiting).
        trying: Vec<String>,
    },
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Ask for candidates (round number `attempt`).
    Route {
        /// Round number, 1-based, since the last link.
        attempt: u32,
    },
    /// Fetch a token and race the candidates.
    Dial,
    /// The link is up; run it.
    Session {
        /// Rounds it took.
        attempt: u32,
    },
    /// Sleep, then route.
    Wait {
        /// How long.
        delay: Duration,
        /// Round number that follows.
        attempt: u32,
        /// What went wrong.
        after: Setback,
    },
    /// Terminal.
    GiveUp(GaveUp),
}

/// The machine's answer to one input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Step {
    /// Gateways to remember as failed (excluded for a while; faults also reported to the
    /// routers), in order.
    pub(crate) report: Vec<Failure>,
    /// Forget every remembered failure (the network changed).
    pub(crate) forget: bool,
    /// What to do.
    pub(crate) next: Next,
}

impl Step {
    fn next(next: Next) -> Self {
        Self {
            report: Vec::new(),
            forget: false,
            next,
        }
    }
}

/// Limits that do not come from the router's policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `connect()` gives up when no gateway accepted within this.
    pub(crate) login_deadline: Duration,
    /// Reconnecting gives up after this long (`None`: never).
    pub(crate) max_elapsed: Option<Duration>,
}

/// Reconnect state.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    /// Fixed limits.
    limits: Limits,
    /// Rounds since the last link.
    attempt: u32,
    /// Start of the current streak without a link (for `max_elapsed`).
    since: Instant,
    /// When `connect()` was called; `None` once a gateway accepted (the login deadline
    /// applies to the first login only).
    login_started: Option<Instant>,
    /// What the last round ran into, for the give-up reason.
    last: Option<Setback>,
    /// A router refused the app token and the round after asked again with a fresh one: a
    /// second refusal is terminal (one retry, never a storm). Cleared once a round gets a
    /// candidate list.
    token_retried: bool,
    /// A gateway answered AUTH_EXPIRED and the client routed once more for a fresh ticket:
    /// a second AUTH_EXPIRED in a row is terminal. Cleared by any other end of a race.
    ticket_retried: bool,
}

impl Machine {
    /// A machine that has not started.
    pub(crate) fn new(limits: Limits, now: Instant) -> Self {
        Self {
            limits,
            attempt: 0,
            since: now,
            login_started: Some(now),
            last: None,
            token_retried: false,
            ticket_retried: false,
        }
    }

    /// When the driver must feed [`Input::Deadline`] if nothing else happened first.
    pub(crate) fn give_up_at(&self) -> Option<Instant> {
        self.login_started.map(|t| t + self.limits.login_deadline)
    }

    fn route(&mut self) -> Next {
        self.attempt += 1;
        Next::Route {
            attempt: self.attempt,
        }
    }

    fn fresh_streak(&mut self, now: Instant) {
        self.attempt = 0;
        self.since = now;
        self.last = None;
        self.token_retried = false;
        self.ticket_retried = false;
    }

    /// A new round at once, for a fresh credential: no backoff (nothing is down; the
    /// retry is bounded by the flags above), and the wait's event says why.
    fn again(&mut self, after: Setback) -> Step {
        self.last = Some(after.clone());
        Step::next(Next::Wait {
            delay: Duration::ZERO,
            attempt: self.attempt + 1,
            after,
        })
    }

    /// Feeds one input; `eff` is the policy in force now (the router may have changed it).
    pub(crate) fn handle(
        &mut self,
        now: Instant,
        input: Input,
        eff: &Effective,
        rng: &mut impl Rng,
    ) -> Step {
        match input {
            Input::Start => {
                self.fresh_streak(now);
                self.login_started = Some(now);
                Step::next(self.route())
            }
            Input::Candidates { count: 0, detail } => {
                self.token_retried = false;
                self.failed_round(now, Setback::NoCandidates { detail }, eff, rng)
            }
            Input::Candidates { .. } => {
                self.token_retried = false;
                Step::next(Next::Dial)
            }
            Input::TokenFailed(detail) => {
                self.failed_round(now, Setback::Token { detail }, eff, rng)
            }
            Input::RouteRefused {
                router,
                denied: true,
                message,
            } => Step::next(Next::GiveUp(GaveUp::PermissionDenied { router, message })),
            Input::RouteRefused {
                router, message, ..
            } if self.token_retried => {
                Step::next(Next::GiveUp(GaveUp::Unauthenticated { router, message }))
            }
            Input::RouteRefused {
                router, message, ..
            } => {
                self.token_retried = true;
                self.again(Setback::Unauthenticated {
                    detail: format!("{router}: {message}"),
                })
            }
            Input::Rejected {
                gateway,
                code: v1::RejectCode::AuthExpired,
                reason,
            } if !self.ticket_retried => {
                // Not reported: the gateway is fine, the credential was stale.
                self.ticket_retried = true;
                self.again(Setback::Failed(vec![Failure {
                    gateway,
                    kind: FailureKind::Refused {
                        code: v1::RejectCode::AuthExpired,
                        reason,
                        retry_after: None,
                    },
                }]))
            }
            Input::Won { failures } => {
                let attempt = self.attempt;
                self.login_started = None;
                self.fresh_streak(now);
                Step {
                    report: failures,
                    forget: false,
                    next: Next::Session { attempt },
                }
            }
            Input::Rejected {
                gateway,
                code,
                reason,
            } => Step::next(Next::GiveUp(GaveUp::Refused {
                gateway,
                code,
                reason,
            })),
            Input::Exhausted(failures) => {
                self.ticket_retried = false;
                let mut step = self.failed_round(now, Setback::Failed(failures.clone()), eff, rng);
                // When every candidate asked for time, come back no sooner than the first of
                // them is willing again.
                let retry_after = failures
                    .iter()
                    .map(|f| match f.kind {
                        FailureKind::Refused { retry_after, .. } => retry_after,
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()
                    .and_then(|v| v.into_iter().min());
                if let (Some(at_least), Next::Wait { delay, .. }) = (retry_after, &mut step.next) {
                    *delay = (*delay).max(at_least);
                }
                step.report = failures;
                self.check_login_deadline(now, step)
            }
            Input::Lost { gateway, cause } => {
                self.fresh_streak(now);
                let report = vec![Failure {
                    gateway,
                    kind: FailureKind::Lost(cause.clone()),
                }];
                let next = if matches!(cause, DisconnectCause::GoAway { .. }) {
                    // A move is planned, not a fault: route at once (the GOAWAY window was
                    // the spread).
                    self.route()
                } else {
                    Next::Wait {
                        delay: uniform(eff.reconnect_spread, rng),
                        attempt: 1,
                        after: Setback::Lost(cause),
                    }
                };
                Step {
                    report,
                    forget: false,
                    next,
                }
            }
            Input::NetworkChanged => {
                self.fresh_streak(now);
                Step {
                    report: Vec::new(),
                    forget: true,
                    next: self.route(),
                }
            }
            Input::Deadline { trying } => Step::next(Next::GiveUp(GaveUp::LoginDeadline {
                after: self.limits.login_deadline,
                attempts: self.attempt,
                last: self.last.take(),
                trying,
            })),
        }
    }

    /// Turns a wait that would end past the login deadline into giving up now: the app's
    /// login screen learns at once instead of after a pointless sleep.
    fn check_login_deadline(&mut self, now: Instant, mut step: Step) -> Step {
        if let (Some(deadline), Next::Wait { delay, .. }) = (self.give_up_at(), &step.next)
            && now + *delay >= deadline
        {
            step.next = Next::GiveUp(GaveUp::LoginDeadline {
                after: self.limits.login_deadline,
                attempts: self.attempt,
                last: self.last.take(),
                trying: Vec::new(),
            });
        }
        step
    }

    fn failed_round(
        &mut self,
        now: Instant,
        setback: Setback,
        eff: &Effective,
        rng: &mut impl Rng,
    ) -> Step {
        let elapsed = now.saturating_duration_since(self.since);
        if eff.max_attempts.is_some_and(|m| self.attempt >= m) {
            return Step::next(Next::GiveUp(GaveUp::AttemptLimit {
                attempts: self.attempt,
                last: setback,
            }));
        }
        if self.limits.max_elapsed.is_some_and(|m| elapsed >= m) {
            return Step::next(Next::GiveUp(GaveUp::TimeLimit {
                elapsed,
                last: setback,
            }));
        }
        self.last = Some(setback.clone());
        let step = Step::next(Next::Wait {
            delay: eff.backoff.delay(self.attempt, rng),
            attempt: self.attempt + 1,
            after: setback,
        });
        self.check_login_deadline(now, step)
    }

    /// The wait is over: start the next round.
    pub(crate) fn waited(&mut self) -> Next {
        self.route()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;
    use switchyard_proto::backoff::Backoff;

    fn eff() -> Effective {
        Effective {
            heartbeat_timeout: Duration::from_secs(10),
            backoff: Backoff {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(30),
            },
            max_attempts: Some(4),
            reconnect_spread: Duration::from_secs(1),
        }
    }

    const LIMITS: Limits = Limits {
        login_deadline: Duration::from_secs(60),
        max_elapsed: Some(Duration::from_secs(300)),
    };

    fn unreachable(id: &str) -> Failure {
        Failure {
            gateway: id.into(),
            kind: FailureKind::Unreachable {
                detail: "refused".into(),
            },
        }
    }

    fn overloaded(id: &str, retry_after: Option<Duration>) -> Failure {
        Failure {
            gateway: id.into(),
            kind: FailureKind::Refused {
                code: v1::RejectCode::Overloaded,
                reason: "full".into(),
                retry_after,
            },
        }
    }

    fn candidates(n: usize) -> Input {
        Input::Candidates {
            count: n,
            detail: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn login_routes_dials_and_starts_a_session() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        assert_eq!(
            m.handle(now, Input::Start, &eff(), &mut rng).next,
            Next::Route { attempt: 1 }
        );
        assert_eq!(
            m.handle(now, candidates(2), &eff(), &mut rng).next,
            Next::Dial
        );
        let won = m.handle(
            now,
            Input::Won {
                failures: vec![unreachable("a")],
            },
            &eff(),
            &mut rng,
        );
        assert_eq!(won.next, Next::Session { attempt: 1 });
        assert_eq!(won.report, vec![unreachable("a")], "the loser is reported");
        assert_eq!(m.give_up_at(), None, "no login deadline once logged in");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_rounds_back_off_with_full_jitter_then_give_up_at_the_attempt_limit() {
        let mut rng = StdRng::seed_from_u64(2);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        for round in 1..=3u32 {
            let step = m.handle(now, Input::Exhausted(vec![unreachable("a")]), &e, &mut rng);
            assert_eq!(step.report, vec![unreachable("a")]);
            match step.next {
                Next::Wait { delay, attempt, .. } => {
                    assert!(
                        delay <= e.backoff.ceiling(round),
                        "round {round}: {delay:?}"
                    );
                    assert_eq!(attempt, round + 1);
                }
                other => panic!("round {round}: {other:?}"),
            }
            assert_eq!(m.waited(), Next::Route { attempt: round + 1 });
        }
        match m
            .handle(now, Input::Exhausted(vec![unreachable("a")]), &e, &mut rng)
            .next
        {
            Next::GiveUp(GaveUp::AttemptLimit { attempts: 4, last }) => {
                assert_eq!(last, Setback::Failed(vec![unreachable("a")]));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_honoured_when_every_candidate_asked_for_it() {
        let mut rng = StdRng::seed_from_u64(3);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        let all_busy = vec![
            overloaded("a", Some(Duration::from_secs(7))),
            overloaded("b", Some(Duration::from_secs(5))),
        ];
        match m.handle(now, Input::Exhausted(all_busy), &e, &mut rng).next {
            Next::Wait { delay, .. } => assert_eq!(delay, Duration::from_secs(5), "the sooner"),
            other => panic!("{other:?}"),
        }
        // One candidate merely unreachable: the backoff alone decides (another gateway may
        // be up in a moment).
        m.waited();
        let mixed = vec![
            overloaded("a", Some(Duration::from_secs(7))),
            unreachable("b"),
        ];
        match m.handle(now, Input::Exhausted(mixed), &e, &mut rng).next {
            Next::Wait { delay, .. } => assert!(delay <= e.backoff.ceiling(2), "{delay:?}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lost_link_waits_the_spread_and_a_goaway_routes_at_once() {
        let mut rng = StdRng::seed_from_u64(4);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        m.handle(now, Input::Won { failures: vec![] }, &e, &mut rng);
        let cause = DisconnectCause::HeartbeatTimeout {
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
        };
        let step = m.handle(
            now,
            Input::Lost {
                gateway: "a".into(),
                cause: cause.clone(),
            },
            &e,
            &mut rng,
        );
        assert!(step.report[0].kind.is_fault());
        match step.next {
            Next::Wait {
                delay,
                attempt: 1,
                after,
            } => {
                assert!(delay <= e.reconnect_spread);
                assert_eq!(after, Setback::Lost(cause));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.waited(), Next::Route { attempt: 1 });
        m.handle(now, Input::Won { failures: vec![] }, &e, &mut rng);
        let step = m.handle(
            now,
            Input::Lost {
                gateway: "a".into(),
                cause: DisconnectCause::GoAway {
                    reason: "drain".into(),
                },
            },
            &e,
            &mut rng,
        );
        assert!(!step.report[0].kind.is_fault(), "excluded, not reported");
        assert_eq!(step.next, Next::Route { attempt: 1 });
    }

    #[tokio::test(start_paused = true)]
    async fn auth_refusal_gives_up_and_network_change_starts_over() {
        let mut rng = StdRng::seed_from_u64(5);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        m.handle(now, Input::Exhausted(vec![unreachable("a")]), &e, &mut rng);
        m.waited();
        let step = m.handle(now, Input::NetworkChanged, &e, &mut rng);
        assert!(step.forget);
        assert_eq!(step.next, Next::Route { attempt: 1 }, "fresh backoff");
        let step = m.handle(
            now,
            Input::Rejected {
                gateway: "a".into(),
                code: v1::RejectCode::Auth,
                reason: "bad token".into(),
            },
            &e,
            &mut rng,
        );
        assert!(matches!(step.next, Next::GiveUp(GaveUp::Refused { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn no_candidate_and_token_failures_are_failed_rounds() {
        let mut rng = StdRng::seed_from_u64(6);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        let step = m.handle(
            now,
            Input::Candidates {
                count: 0,
                detail: "no router answered".into(),
            },
            &e,
            &mut rng,
        );
        assert!(matches!(
            step.next,
            Next::Wait {
                after: Setback::NoCandidates { .. },
                ..
            }
        ));
        m.waited();
        let step = m.handle(now, Input::TokenFailed("login down".into()), &e, &mut rng);
        assert!(matches!(
            step.next,
            Next::Wait {
                after: Setback::Token { .. },
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn login_deadline_ends_connect_with_what_was_tried() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut e = eff();
        e.max_attempts = None;
        let limits = Limits {
            login_deadline: Duration::from_secs(3),
            max_elapsed: None,
        };
        let t0 = Instant::now();
        let mut m = Machine::new(limits, t0);
        m.handle(t0, Input::Start, &e, &mut rng);
        assert_eq!(m.give_up_at(), Some(t0 + Duration::from_secs(3)));
        // Late in the window, any wait would pass the deadline: give up now, not later.
        let late = t0 + Duration::from_millis(2999);
        e.backoff.base = Duration::from_secs(10);
        e.backoff.cap = Duration::from_secs(10);
        let mut gave_up = None;
        for _ in 0..32 {
            let mut probe = m.clone();
            if let Next::GiveUp(g) = probe
                .handle(late, Input::Exhausted(vec![unreachable("a")]), &e, &mut rng)
                .next
            {
                gave_up = Some(g);
                break;
            }
        }
        match gave_up {
            Some(GaveUp::LoginDeadline {
                after,
                attempts: 1,
                last: Some(Setback::Failed(tried)),
                ..
            }) => {
                assert_eq!(after, Duration::from_secs(3));
                assert_eq!(tried, vec![unreachable("a")]);
            }
            other => panic!("{other:?}"),
        }
        // The deadline passing mid-round gives up too, naming the gateways being tried.
        let cut = Input::Deadline {
            trying: vec!["a".into(), "b".into()],
        };
        match m
            .handle(t0 + Duration::from_secs(3), cut, &e, &mut rng)
            .next
        {
            Next::GiveUp(GaveUp::LoginDeadline {
                attempts: 1,
                trying,
                ..
            }) => assert_eq!(trying, ["a", "b"]),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn time_limit_counts_from_the_start_of_the_streak() {
        let mut rng = StdRng::seed_from_u64(8);
        let mut e = eff();
        e.max_attempts = None;
        let limits = Limits {
            login_deadline: Duration::from_secs(3600),
            max_elapsed: Some(Duration::from_secs(60)),
        };
        let t0 = Instant::now();
        let mut m = Machine::new(limits, t0);
        m.handle(t0, Input::Start, &e, &mut rng);
        let step = m.handle(
            t0 + Duration::from_secs(59),
            Input::Exhausted(vec![]),
            &e,
            &mut rng,
        );
        assert!(matches!(step.next, Next::Wait { .. }));
        m.waited();
        let step = m.handle(
            t0 + Duration::from_secs(61),
            Input::Exhausted(vec![]),
            &e,
            &mut rng,
        );
        assert!(
            matches!(step.next, Next::GiveUp(GaveUp::TimeLimit { elapsed, .. }) if elapsed == Duration::from_secs(61))
        );
    }

    fn refused_by_router(denied: bool) -> Input {
        Input::RouteRefused {
            router: "https://r1:7100".into(),
            denied,
            message: "bad token".into(),
        }
    }

    fn auth_expired(id: &str) -> Input {
        Input::Rejected {
            gateway: id.into(),
            code: v1::RejectCode::AuthExpired,
            reason: "ticket expired".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_app_token_is_retried_once_with_a_fresh_one_then_gives_up() {
        let mut rng = StdRng::seed_from_u64(9);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        let step = m.handle(now, refused_by_router(false), &e, &mut rng);
        assert!(step.report.is_empty());
        match step.next {
            Next::Wait {
                delay,
                attempt: 2,
                after: Setback::Unauthenticated { detail },
            } => {
                assert_eq!(delay, Duration::ZERO, "a fresh token needs no backoff");
                assert_eq!(detail, "https://r1:7100: bad token");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.waited(), Next::Route { attempt: 2 });
        match m.handle(now, refused_by_router(false), &e, &mut rng).next {
            Next::GiveUp(GaveUp::Unauthenticated { router, message }) => {
                assert_eq!(router, "https://r1:7100");
                assert_eq!(message, "bad token");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_accepted_after_the_retry_earns_a_new_retry_later() {
        let mut rng = StdRng::seed_from_u64(10);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        m.handle(now, refused_by_router(false), &e, &mut rng);
        m.waited();
        // The fresh token worked: the router answered with a list.
        assert_eq!(m.handle(now, candidates(1), &e, &mut rng).next, Next::Dial);
        m.handle(now, Input::Exhausted(vec![unreachable("a")]), &e, &mut rng);
        m.waited();
        // Hours later the token expired again: one more fresh-token round, not a give-up.
        assert!(matches!(
            m.handle(now, refused_by_router(false), &e, &mut rng).next,
            Next::Wait {
                after: Setback::Unauthenticated { .. },
                ..
            }
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn permission_denied_gives_up_at_once() {
        let mut rng = StdRng::seed_from_u64(11);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        assert!(matches!(
            m.handle(now, refused_by_router(true), &e, &mut rng).next,
            Next::GiveUp(GaveUp::PermissionDenied { .. })
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn auth_expired_routes_once_more_and_twice_in_a_row_is_terminal() {
        let mut rng = StdRng::seed_from_u64(12);
        let mut e = eff();
        e.max_attempts = Some(1);
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        m.handle(now, candidates(2), &e, &mut rng);
        let step = m.handle(now, auth_expired("a"), &e, &mut rng);
        assert!(
            step.report.is_empty(),
            "a stale ticket is not the gateway's fault"
        );
        match step.next {
            Next::Wait {
                delay,
                after: Setback::Failed(f),
                ..
            } => {
                assert_eq!(
                    delay,
                    Duration::ZERO,
                    "re-route at once, even at max_attempts"
                );
                assert!(matches!(
                    f[0].kind,
                    FailureKind::Refused {
                        code: v1::RejectCode::AuthExpired,
                        ..
                    }
                ));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.waited(), Next::Route { attempt: 2 });
        m.handle(now, candidates(2), &e, &mut rng);
        match m.handle(now, auth_expired("a"), &e, &mut rng).next {
            Next::GiveUp(GaveUp::Refused { gateway, code, .. }) => {
                assert_eq!(gateway, "a");
                assert_eq!(code, v1::RejectCode::AuthExpired);
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn auth_expired_after_a_session_starts_a_fresh_count_and_auth_stays_terminal() {
        let mut rng = StdRng::seed_from_u64(13);
        let e = eff();
        let mut m = Machine::new(LIMITS, Instant::now());
        let now = Instant::now();
        m.handle(now, Input::Start, &e, &mut rng);
        m.handle(now, auth_expired("a"), &e, &mut rng);
        m.waited();
        m.handle(now, Input::Won { failures: vec![] }, &e, &mut rng);
        m.handle(
            now,
            Input::Lost {
                gateway: "a".into(),
                cause: DisconnectCause::GoAway {
                    reason: "drain".into(),
                },
            },
            &e,
            &mut rng,
        );
        assert!(
            matches!(
                m.handle(now, auth_expired("b"), &e, &mut rng).next,
                Next::Wait { .. }
            ),
            "not in a row: a link came between"
        );
        m.waited();
        let auth = Input::Rejected {
            gateway: "b".into(),
            code: v1::RejectCode::Auth,
            reason: "revoked".into(),
        };
        assert!(matches!(
            m.handle(now, auth, &e, &mut rng).next,
            Next::GiveUp(GaveUp::Refused {
                code: v1::RejectCode::Auth,
                ..
            })
        ));
    }
}
