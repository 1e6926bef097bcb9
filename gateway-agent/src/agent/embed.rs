//! What a Rust gateway embedding the agent needs besides [`super::start`]: when to drain
//! (a signal or an ops drain, DESIGN "Signals") and a task feeding its load to the agent.
//! The reference gateway uses exactly these; the sidecar uses [`stop_signals`].

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::warn;

use super::{Agent, cpu};

/// Why a drain started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainCause {
    /// SIGTERM (what orchestrators send).
    Sigterm,
    /// SIGINT (Ctrl-C).
    Sigint,
    /// An operator wrote `P/drain/<id>`.
    Ops,
}

impl DrainCause {
    /// Log and metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sigterm => "SIGTERM",
            Self::Sigint => "SIGINT",
            Self::Ops => "ops drain",
        }
    }
}

/// Every SIGTERM and SIGINT from now on, one message each, for as long as the receiver
/// lives: the first asks for a drain, a second for an exit at once.
pub fn stop_signals() -> std::io::Result<mpsc::Receiver<DrainCause>> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    // Two slots: a drain request and the one that cuts it short.
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let cause = tokio::select! {
                _ = term.recv() => DrainCause::Sigterm,
                _ = int.recv() => DrainCause::Sigint,
            };
            if tx.send(cause).await.is_err() {
                return;
            }
        }
    });
    Ok(rx)
}

/// Resolves when the gateway should drain: SIGTERM, SIGINT, or an ops drain of `agent`'s
/// gateway. From then on a second signal exits the process at once with status 1, whatever
/// the drain is doing (DESIGN "Signals"). Without signal handlers only an ops drain ends
/// it (logged).
pub async fn drain_requested(agent: Option<&Agent>) -> DrainCause {
    let mut signals = stop_signals()
        .inspect_err(|e| warn!(error = %e, "cannot install signal handlers"))
        .ok();
    let signalled = async {
        match signals.as_mut() {
            Some(rx) => match rx.recv().await {
                Some(cause) => cause,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    };
    let ops = async {
        if let Some(a) = agent {
            // Only an error (agent gone) ends this without a drain record.
            if a.ops_drain().wait_for(Option::is_some).await.is_ok() {
                return;
            }
        }
        std::future::pending::<()>().await;
    };
    let cause = tokio::select! {
        cause = signalled => cause,
        () = ops => DrainCause::Ops,
    };
    if let Some(mut rx) = signals {
        tokio::spawn(async move {
            if rx.recv().await.is_some() {
                warn!("second signal: exiting now");
                std::process::exit(1);
            }
        });
    }
    cause
}

/// How often the connection count is read: cheap, and a login burst shows within it.
const CONNECTIONS_EVERY: Duration = Duration::from_millis(250);

/// How often the process's CPU is sampled: shorter windows make the figure jumpy.
const CPU_EVERY: Duration = Duration::from_secs(1);

/// Spawns the task that feeds `connections()` and this process's CPU to `agent`; the
/// agent's reporting policy decides when either is worth an etcd write. Abort the handle
/// (or drop the runtime) to stop it.
///
/// The CPU is the process's own, not the host's: other work on the host must not rewrite
/// this gateway's record (each change past the report delta is an etcd write).
pub fn report_load<F>(agent: Agent, connections: F) -> JoinHandle<()>
where
    F: Fn() -> u64 + Send + 'static,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CONNECTIONS_EVERY);
        let me = std::process::id();
        let mut last_cpu = cpu::process_cpu_time(me).ok();
        let mut last_cpu_at = tokio::time::Instant::now();
        loop {
            tick.tick().await;
            agent.set_connections(connections());
            if last_cpu_at.elapsed() >= CPU_EVERY {
                let now = cpu::process_cpu_time(me).ok();
                if let (Some(a), Some(b)) = (last_cpu, now) {
                    agent.set_cpu(cpu::process_cores(a, b, last_cpu_at.elapsed()));
                }
                last_cpu = now;
                last_cpu_at = tokio::time::Instant::now();
            }
        }
    })
}
