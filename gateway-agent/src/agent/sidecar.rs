//! The sidecar: an [`Agent`] fed by health probes and by load read from the kernel's TCP
//! tables (or the gateway's `--load-url`), with signal-driven drain. What
//! `switchyard-agent` runs; a library function so tests and other binaries can drive it.

use std::time::Duration;

use serde::Deserialize;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use super::http::{self, Target};
use super::probe::{Health, Probe};
use super::{Agent, AgentError, StartError, conns, cpu};
use switchyard_registry::LeaseState;

/// Sidecar settings on top of [`super::Config`].
#[derive(Debug, Clone)]
pub struct Config {
    /// Health probe; `None` means the gateway is assumed healthy.
    pub probe: Option<Probe>,
    /// Time between probes.
    pub probe_interval: Duration,
    /// A probe slower than this failed.
    pub probe_timeout: Duration,
    /// Consecutive successes that make an unhealthy gateway healthy again.
    pub rise: u32,
    /// Consecutive failures that make a healthy gateway unhealthy.
    pub fall: u32,
    /// Count ESTABLISHED sockets on this local port as the connection count.
    pub count_conns_on: Option<u16>,
    /// Ask the gateway for `{"connections": n, "cpu": x}` instead.
    pub load_url: Option<Target>,
    /// Time between load samples; the reporter decides what gets written.
    pub load_interval: Duration,
    /// After a stop signal: how long the record says draining before the lease is revoked.
    pub drain_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            probe: None,
            probe_interval: Duration::from_secs(2),
            probe_timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
            count_conns_on: None,
            load_url: None,
            load_interval: Duration::from_secs(1),
            drain_grace: Duration::from_secs(30),
        }
    }
}

/// Why the sidecar stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// It never started.
    #[error(transparent)]
    Start(#[from] StartError),
    /// Shutting down failed.
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// Another agent took the id over; this one stopped reporting.
    #[error("another agent took over this gateway id (lease {0:x}); exiting")]
    Superseded(i64),
}

/// The body `--load-url` answers.
#[derive(Debug, Deserialize)]
struct LoadAnswer {
    /// Live connections.
    connections: u64,
    /// CPU in cores.
    #[serde(default)]
    cpu: Option<f64>,
}

/// Runs the sidecar: probes once, registers, keeps reporting; on the first message on
/// `stop` drains (record `draining` at once), waits `drain_grace`, revokes and returns; a
/// second message during the grace cuts it short.
pub async fn run<T>(
    mut agent_config: super::Config,
    config: Config,
    mut stop: mpsc::Receiver<T>,
) -> Result<(), Error> {
    // Probe before registering, so a gateway that is down never registers as serving.
    let mut health = Health::new(config.rise, config.fall);
    let first = match &config.probe {
        Some(p) => Some(record_probe(
            &mut health,
            p.check(config.probe_timeout).await,
        )),
        None => None,
    };
    agent_config.initially_healthy = first.unwrap_or(true);
    let agent = super::start(agent_config).await?;
    let probes = config.probe.clone().map(|p| {
        let was = first.unwrap_or(true);
        tokio::spawn(probe_loop(agent.clone(), p, health, was, config.clone()))
    });
    let load = tokio::spawn(load_loop(agent.clone(), config.clone()));
    let mut lease = agent.lease_state();
    let outcome = loop {
        tokio::select! {
            msg = stop.recv() => break msg.map(drop),
            r = lease.changed() => {
                if r.is_err() { break None; }
                if let LeaseState::Superseded { by_lease } = *lease.borrow() {
                    error!(other = format_args!("{by_lease:x}"), "taken over by another agent");
                    probes.inspect(|p| p.abort());
                    load.abort();
                    return Err(Error::Superseded(by_lease));
                }
            }
        }
    };
    if outcome.is_some() {
        info!(grace = ?config.drain_grace, "stop requested: draining");
        agent.drain().await;
        tokio::select! {
            () = tokio::time::sleep(config.drain_grace) => info!("drain grace over"),
            _ = stop.recv() => warn!("second stop request: deregistering at once"),
        }
    }
    if let Some(p) = probes {
        p.abort();
    }
    load.abort();
    agent.shutdown().await?;
    Ok(())
}

fn record_probe(health: &mut Health, ok: bool) -> bool {
    let result = if ok { "ok" } else { "fail" };
    metrics::counter!("switchyard_agent_probes_total", "result" => result).increment(1);
    let healthy = health.observe(ok);
    metrics::gauge!("switchyard_agent_healthy").set(if healthy { 1.0 } else { 0.0 });
    healthy
}

async fn probe_loop(agent: Agent, probe: Probe, mut health: Health, mut was: bool, config: Config) {
    let mut ticker = tokio::time::interval(config.probe_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // The first probe ran before registering.
    loop {
        ticker.tick().await;
        let healthy = record_probe(&mut health, probe.check(config.probe_timeout).await);
        if healthy != was {
            info!(healthy, "health changed");
            was = healthy;
        }
        agent.set_healthy(healthy);
    }
}

async fn load_loop(agent: Agent, config: Config) {
    let mut ticker = tokio::time::interval(config.load_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_cpu = cpu::sample();
    loop {
        ticker.tick().await;
        if let Some(target) = &config.load_url {
            match fetch_load(target).await {
                Ok(answer) => {
                    agent.set_connections(answer.connections);
                    if let Some(c) = answer.cpu {
                        agent.set_cpu(c);
                    }
                    continue;
                }
                Err(reason) => {
                    metrics::counter!("switchyard_agent_load_errors_total").increment(1);
                    warn!(%reason, "load URL failed; keeping the last load");
                }
            }
        } else if let Some(port) = config.count_conns_on {
            match conns::count_on_port(port) {
                Ok(n) => agent.set_connections(n),
                Err(e) => {
                    metrics::counter!("switchyard_agent_load_errors_total").increment(1);
                    warn!(error = %e, "cannot read /proc/net/tcp");
                }
            }
        }
        if config.load_url.is_none() {
            let now = cpu::sample();
            if let (Some(a), Some(b)) = (&last_cpu, &now) {
                agent.set_cpu(cpu::cores_between(a, b));
            }
            last_cpu = now;
        }
    }
}

async fn fetch_load(target: &Target) -> Result<LoadAnswer, String> {
    let (status, body) = http::get(target).await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("status {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("bad load answer: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_answers_parse() {
        let a: LoadAnswer = serde_json::from_str(r#"{"connections": 12, "cpu": 0.5}"#).unwrap();
        assert_eq!((a.connections, a.cpu), (12, Some(0.5)));
        let a: LoadAnswer = serde_json::from_str(r#"{"connections": 3, "x": 1}"#).unwrap();
        assert_eq!(a.cpu, None);
        assert!(serde_json::from_str::<LoadAnswer>(r#"{"cpu": 1}"#).is_err());
    }
}
