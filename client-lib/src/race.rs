//! Staggered connection racing over a ranked candidate list (happy-eyeballs style, like
//! Mars's ComplexConnect): start candidate 0; start the next one when the previous has not
//! finished within `delay`, or at once when an attempt fails; at most `max_in_flight` at a
//! time; the first success wins and the others are dropped (which closes them).

use std::future::Future;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::time::Instant;

/// Racing parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RaceSettings {
    /// Head start each candidate gets before the next one starts.
    pub(crate) delay: Duration,
    /// Attempts running at once.
    pub(crate) max_in_flight: usize,
}

/// How one attempt ended badly; `E` says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum AttemptError<E> {
    /// Try the next candidate (connect refused, timeout, REJECT OVERLOADED/DRAINING, ...).
    Next(E),
    /// Stop racing: nothing else will work either (REJECT AUTH).
    Terminal(E),
}

/// The race result.
#[derive(Debug)]
pub(crate) enum Outcome<T, E> {
    /// Candidate `index` won; `failures` lists the candidates that failed before it.
    Won {
        /// Winner's position in the list.
        index: usize,
        /// What the winning attempt produced.
        value: T,
        /// Candidates that failed, with reasons.
        failures: Vec<(usize, E)>,
    },
    /// An attempt ended the race for good.
    Terminal {
        /// The candidate that ended it.
        index: usize,
        /// Why.
        reason: E,
    },
    /// Every candidate failed (or the list was empty).
    Exhausted {
        /// Candidates that failed, with reasons.
        failures: Vec<(usize, E)>,
    },
}

/// Races `n` candidates; `start(i)` begins the attempt on candidate `i`.
pub(crate) async fn race<T, E, F, Fut>(
    n: usize,
    settings: RaceSettings,
    mut start: F,
) -> Outcome<T, E>
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = Result<T, AttemptError<E>>>,
{
    let max = settings.max_in_flight.max(1);
    let mut in_flight = FuturesUnordered::new();
    let mut failures = Vec::new();
    let mut next = 0;
    let mut last_start = Instant::now();
    loop {
        if in_flight.is_empty() {
            if next >= n {
                return Outcome::Exhausted { failures };
            }
            let i = next;
            in_flight.push(tagged(i, start(i)));
            next += 1;
            last_start = Instant::now();
            continue;
        }
        let can_start = next < n && in_flight.len() < max;
        tokio::select! {
            Some((i, result)) = in_flight.next() => match result {
                Ok(value) => return Outcome::Won { index: i, value, failures },
                Err(AttemptError::Terminal(reason)) => return Outcome::Terminal { index: i, reason },
                Err(AttemptError::Next(reason)) => {
                    failures.push((i, reason));
                    if next < n && in_flight.len() < max {
                        let j = next;
                        in_flight.push(tagged(j, start(j)));
                        next += 1;
                        last_start = Instant::now();
                    }
                }
            },
            _ = tokio::time::sleep_until(last_start + settings.delay), if can_start => {
                let j = next;
                in_flight.push(tagged(j, start(j)));
                next += 1;
                last_start = Instant::now();
            }
        }
    }
}

/// Tags an attempt with its candidate index (one opaque type for every push site).
async fn tagged<T, E, Fut>(i: usize, fut: Fut) -> (usize, Result<T, AttemptError<E>>)
where
    Fut: Future<Output = Result<T, AttemptError<E>>>,
{
    (i, fut.await)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const S: RaceSettings = RaceSettings {
        delay: Duration::from_millis(250),
        max_in_flight: 3,
    };

    /// Candidate behaviour: how long it takes and how it ends.
    #[derive(Clone)]
    enum Plan {
        Ok(u64),
        Fail(u64),
        Auth(u64),
        Hang,
    }

    async fn run(plans: Vec<Plan>) -> (Outcome<usize, String>, Vec<(usize, u128)>) {
        let t0 = Instant::now();
        let started = Arc::new(Mutex::new(Vec::new()));
        let log = started.clone();
        let out = race(plans.len(), S, move |i| {
            log.lock().unwrap().push((i, t0.elapsed().as_millis()));
            let plan = plans[i].clone();
            async move {
                match plan {
                    Plan::Ok(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Ok(i)
                    }
                    Plan::Fail(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(AttemptError::Next(format!("fail {i}")))
                    }
                    Plan::Auth(ms) => {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        Err(AttemptError::Terminal("auth".into()))
                    }
                    Plan::Hang => std::future::pending().await,
                }
            }
        })
        .await;
        let s = started.lock().unwrap().clone();
        (out, s)
    }

    #[tokio::test(start_paused = true)]
    async fn fast_first_candidate_wins_alone() {
        let (out, started) = run(vec![Plan::Ok(100), Plan::Ok(1), Plan::Ok(1)]).await;
        assert!(matches!(out, Outcome::Won { index: 0, .. }));
        assert_eq!(started, vec![(0, 0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_candidates_are_staggered_and_capped_at_three() {
        let (out, started) = run(vec![
            Plan::Hang,
            Plan::Hang,
            Plan::Ok(300),
            Plan::Ok(1),
            Plan::Ok(1),
        ])
        .await;
        assert!(matches!(out, Outcome::Won { index: 2, .. }), "{out:?}");
        // 0, 250, 500; the fourth would start at 750 but only three may be in flight, and the
        // third wins at 800.
        assert_eq!(started, vec![(0, 0), (1, 250), (2, 500)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_starts_the_next_at_once() {
        let (out, started) = run(vec![Plan::Fail(10), Plan::Fail(20), Plan::Ok(5)]).await;
        match out {
            Outcome::Won {
                index, failures, ..
            } => {
                assert_eq!(index, 2);
                assert_eq!(failures.len(), 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(started, vec![(0, 0), (1, 10), (2, 30)]);
    }

    #[tokio::test(start_paused = true)]
    async fn auth_reject_stops_the_race() {
        let (out, started) = run(vec![Plan::Auth(10), Plan::Ok(500), Plan::Ok(500)]).await;
        assert!(matches!(out, Outcome::Terminal { .. }));
        assert_eq!(started, vec![(0, 0)], "no further candidate after AUTH");
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_is_exhausted_and_empty_list_too() {
        let (out, _) = run(vec![Plan::Fail(1), Plan::Fail(1)]).await;
        assert!(matches!(out, Outcome::Exhausted { failures } if failures.len() == 2));
        let (out, started) = run(vec![]).await;
        assert!(matches!(out, Outcome::Exhausted { failures } if failures.is_empty()));
        assert!(started.is_empty());
    }
}
