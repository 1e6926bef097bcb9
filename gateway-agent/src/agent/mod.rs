//! The gateway agent: registers a gateway in etcd under a lease, keeps its record current
//! (load, health, drain) and follows ops drains — embedded in a Rust gateway through
//! [`start`] and the [`Agent`] handle (with [`drain_requested`] and [`report_load`]), or
//! run beside any gateway by [`run_sidecar`].
//!
//! The lease itself (keepalive, re-registration after an outage, takeover) is
//! [`switchyard_registry::LeaseSession`]; this module decides *what* the record says and
//! *when* it is written (the private `report` module).

mod args;
mod conns;
mod cpu;
mod embed;
mod http;
mod probe;
mod report;
mod sidecar;

pub use args::{ArgsError, RegistryArgs};
pub use cpu::process_cpu_time;
pub use embed::{DrainCause, drain_requested, report_load, stop_signals};
pub use http::{HttpError, Target, get as http_get};
pub use probe::{Probe, ProbeError};
pub use report::CPU_BAND;
pub use sidecar::{Config as SidecarConfig, Error as SidecarError, run as run_sidecar};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use switchyard_registry::watcher::{Decoder, WatcherConfig};
use switchyard_registry::{
    Addrs, DrainRecord, EtcdConfig, GatewayId, GatewayRecord, GatewayState, LeaseSession,
    LeaseState, Load, Prefix, PrefixWatcher, RecordError, Registration,
};
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use report::{Decision, Observed, Policy, Reporter};

/// Validated agent configuration (registry identity + reporting policy).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the registry lives.
    pub etcd: EtcdConfig,
    /// Registry root, so several fleets (or tests) can share one etcd.
    pub prefix: Prefix,
    /// The gateway's key under `P/gateways/`; unique in the fleet.
    pub id: GatewayId,
    /// What clients connect to; routers hand these out.
    pub addrs: Addrs,
    /// Locality for ranking; empty when unknown.
    pub region: String,
    /// Locality within the region; empty when unknown.
    pub zone: String,
    /// Connections the gateway is sized for; utilisation is measured against it.
    pub capacity: u64,
    /// Relative share of new clients at equal utilisation (1–10000).
    pub weight: u32,
    /// Gateway software version, shown to operators.
    pub version: String,
    /// Free-form labels for operators.
    pub labels: BTreeMap<String, String>,
    /// Lease TTL: how long the record outlives a dead agent. Whole seconds, ≥ 2 s.
    pub ttl: Duration,
    /// At most one load-driven write per this interval.
    pub report_interval: Duration,
    /// Connection moves below this fraction of capacity are not written.
    pub report_delta: f64,
    /// The record is rewritten at least this often, even when nothing changed.
    pub report_max_interval: Duration,
    /// Replace a live agent holding the same id instead of refusing to start.
    pub takeover: bool,
    /// Health at registration (default true): a sidecar whose first probe failed registers
    /// as `unhealthy` instead of briefly advertising a dead gateway as `serving`.
    pub initially_healthy: bool,
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The record this configuration would write breaks the schema.
    #[error("invalid gateway record: {0}")]
    Record(#[from] RecordError),
    /// TTL not whole seconds or below 2 s.
    #[error("ttl must be whole seconds and at least 2s, got {0:?}")]
    Ttl(Duration),
    /// The report interval is zero.
    #[error("report interval must be above zero")]
    ReportInterval,
    /// The maximum interval is shorter than the minimum.
    #[error("report max interval {max:?} is shorter than the report interval {min:?}")]
    ReportMaxInterval {
        /// `report_interval`.
        min: Duration,
        /// `report_max_interval`.
        max: Duration,
    },
    /// The delta is not a fraction.
    #[error("report delta must be a fraction between 0 and 1, got {0}")]
    ReportDelta(f64),
}

impl Config {
    /// A configuration with the defaults (weight 100, TTL 10 s, report every 2 s at most,
    /// 2 % band, refresh every 30 s), validated.
    pub fn new(
        etcd: EtcdConfig,
        prefix: Prefix,
        id: GatewayId,
        addrs: Addrs,
        capacity: u64,
    ) -> Result<Self, ConfigError> {
        let config = Self {
            etcd,
            prefix,
            id,
            addrs,
            region: String::new(),
            zone: String::new(),
            capacity,
            weight: 100,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            labels: BTreeMap::new(),
            ttl: Duration::from_secs(10),
            report_interval: Duration::from_secs(2),
            report_delta: 0.02,
            report_max_interval: Duration::from_secs(30),
            takeover: false,
            initially_healthy: true,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every field; [`start`] calls it again, so fields may be set directly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.record(GatewayState::Serving, Load::default(), Utc::now())
            .validate()?;
        if !switchyard_proto::limits::ttl_is_valid(self.ttl) {
            return Err(ConfigError::Ttl(self.ttl));
        }
        if self.report_interval.is_zero() {
            return Err(ConfigError::ReportInterval);
        }
        if self.report_max_interval < self.report_interval {
            return Err(ConfigError::ReportMaxInterval {
                min: self.report_interval,
                max: self.report_max_interval,
            });
        }
        if !(0.0..=1.0).contains(&self.report_delta) {
            return Err(ConfigError::ReportDelta(self.report_delta));
        }
        Ok(())
    }

    fn record(&self, state: GatewayState, load: Load, started_at: DateTime<Utc>) -> GatewayRecord {
        GatewayRecord {
            id: self.id.to_string(),
            addrs: self.addrs.clone(),
            region: self.region.clone(),
            zone: self.zone.clone(),
            capacity: self.capacity,
            weight: self.weight,
            state,
            load,
            version: self.version.clone(),
            labels: self.labels.clone(),
            started_at: Some(started_at),
            updated_at: Some(Utc::now()),
        }
    }
}

/// Why the agent could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// etcd could not be reached or refused the client options.
    #[error("cannot connect to etcd: {0}")]
    Connect(#[from] switchyard_registry::ConnectError),
    /// Registration failed; [`switchyard_registry::LeaseError::AlreadyRegistered`] when a
    /// live agent holds the id.
    #[error("cannot register: {0}")]
    Register(#[from] switchyard_registry::LeaseError),
}

/// Why a running agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// etcd refused or lost a write, or the lease was taken over.
    #[error(transparent)]
    Lease(#[from] switchyard_registry::LeaseError),
    /// The agent was already shut down by another handle.
    #[error("the agent was already shut down")]
    AlreadyShutDown,
}

/// What the host tells the agent; the record is derived from it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Inputs {
    /// Live connections.
    connections: u64,
    /// CPU in cores.
    cpu: f64,
    /// False when the host (or the sidecar's probe) says the gateway is unwell.
    healthy: bool,
    /// Set by [`Agent::drain`]; never cleared.
    draining: bool,
}

/// The state precedence of DESIGN contract 1: draining > unhealthy > serving.
fn effective_state(inputs: &Inputs, ops_drained: bool) -> GatewayState {
    if inputs.draining || ops_drained {
        GatewayState::Draining
    } else if !inputs.healthy {
        GatewayState::Unhealthy
    } else {
        GatewayState::Serving
    }
}

/// What only the writer touches: the session (taken on shutdown) and the reporter.
#[derive(Debug)]
struct Writer {
    /// `None` once shut down.
    session: Option<LeaseSession>,
    /// What was last written, and when.
    reporter: Reporter,
}

/// Shared by every handle and the reporting task.
#[derive(Debug)]
struct Inner {
    /// The validated configuration.
    config: Config,
    /// Stamped into every record; routers use it for slow start.
    started_at: DateTime<Utc>,
    /// Host inputs; the task wakes on every change.
    inputs: watch::Sender<Inputs>,
    /// `P/drain/<id>` as last seen.
    ops_drain: watch::Receiver<Option<DrainRecord>>,
    /// Lease state from the session.
    lease_state: watch::Receiver<LeaseState>,
    /// Serialises writes between the task and [`Agent::drain`].
    writer: Mutex<Writer>,
    /// Successful record writes, registration included.
    writes: AtomicU64,
    /// Stops the reporting and watch tasks.
    stop: CancellationToken,
    /// Keeps the `P/drain/<id>` watch running for the agent's lifetime.
    _drain_watch: PrefixWatcher<DrainRecord>,
}

/// A running agent. Cheap to clone; every clone drives the same registration.
#[derive(Debug, Clone)]
pub struct Agent {
    /// One registration shared by every clone; the reporting task holds it weakly.
    inner: Arc<Inner>,
}

/// Starts: connects, registers (fails with a clear error when a live agent holds the id,
/// unless `takeover`), starts the reporting loop and the ops-drain watch.
pub async fn start(config: Config) -> Result<Agent, StartError> {
    config.validate()?;
    let client = config.etcd.connect().await?;
    let started_at = Utc::now();
    let inputs = Inputs {
        connections: 0,
        cpu: 0.0,
        healthy: config.initially_healthy,
        draining: false,
    };
    let first_state = effective_state(&inputs, false);
    let first = config.record(first_state, Load::default(), started_at);
    let session = LeaseSession::register(
        client.clone(),
        Registration {
            key: config.prefix.gateway(&config.id),
            value: first.to_json(),
            ttl: config.ttl,
            takeover: config.takeover,
        },
    )
    .await?;
    info!(id = %config.id, prefix = %config.prefix, "gateway registered");
    metrics::counter!("switchyard_agent_record_writes_total").increment(1);
    // With the reported connections below: the "gateway near capacity" alert's ratio.
    metrics::gauge!("switchyard_agent_capacity").set(config.capacity as f64);
    metrics::gauge!("switchyard_agent_reported_connections").set(0.0);
    let lease_state = session.state();
    let stop = CancellationToken::new();
    tokio::spawn(export_lease_state(lease_state.clone(), stop.clone()));

    let drain_watch = watch_ops_drain(client, &config);
    let ops_drain = follow_ops_drain(&drain_watch);
    let policy = Policy::new(
        config.report_interval,
        config.report_delta,
        config.capacity,
        config.report_max_interval,
    );
    let observed = Observed {
        state: first_state,
        connections: 0,
        cpu: 0.0,
    };
    let (inputs, _) = watch::channel(inputs);
    let inner = Arc::new(Inner {
        config,
        started_at,
        inputs,
        ops_drain,
        lease_state,
        writer: Mutex::new(Writer {
            session: Some(session),
            reporter: Reporter::new(policy, observed, Instant::now()),
        }),
        writes: AtomicU64::new(1),
        stop,
        _drain_watch: drain_watch,
    });
    tokio::spawn(report_loop(Arc::downgrade(&inner)));
    Ok(Agent { inner })
}

/// Watches exactly `P/drain/<id>`: a prefix watch on the key, keeping only the key itself
/// (a prefix would also match `<id>0`, `<id>-b`, …).
fn watch_ops_drain(
    client: switchyard_registry::etcd_client::Client,
    config: &Config,
) -> PrefixWatcher<DrainRecord> {
    let decoder: Decoder<DrainRecord> = Arc::new(|rel: &str, value: &[u8]| {
        if !rel.is_empty() {
            return Ok(None);
        }
        DrainRecord::from_json(value)
            .map(Some)
            .map_err(|e| e.to_string())
    });
    PrefixWatcher::spawn(
        client,
        config.prefix.drain(&config.id),
        decoder,
        WatcherConfig::default(),
    )
}

/// Turns the watcher's snapshots into "drained or not"; a value that does not parse is not
/// a drain (the watcher logs and counts it).
fn follow_ops_drain(watcher: &PrefixWatcher<DrainRecord>) -> watch::Receiver<Option<DrainRecord>> {
    let mut snapshots = watcher.snapshots();
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            let drain = snapshots
                .borrow_and_update()
                .items
                .get("")
                .map(|d| (**d).clone());
            tx.send_if_modified(|cur| {
                let changed = *cur != drain;
                *cur = drain;
                changed
            });
            if snapshots.changed().await.is_err() {
                return;
            }
        }
    });
    rx
}

/// Keeps the `switchyard_agent_lease_state{state}` gauges (1 for the current state) and
/// logs every change.
async fn export_lease_state(mut state: watch::Receiver<LeaseState>, stop: CancellationToken) {
    const STATES: [&str; 5] = ["active", "reconnecting", "lost", "superseded", "revoked"];
    loop {
        let current = *state.borrow_and_update();
        info!(state = current.name(), "lease state");
        for s in STATES {
            let v = if s == current.name() { 1.0 } else { 0.0 };
            metrics::gauge!("switchyard_agent_lease_state", "state" => s).set(v);
        }
        tokio::select! {
            () = stop.cancelled() => return,
            r = state.changed() => if r.is_err() { return },
        }
    }
}

/// Wakes on input changes, ops drains and the reporter's deadlines; writes when the
/// reporter says so. Holds only a weak reference so dropping every handle stops it.
async fn report_loop(inner: std::sync::Weak<Inner>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let mut inputs = strong.inputs.subscribe();
    let mut ops = strong.ops_drain.clone();
    let mut lease = strong.lease_state.clone();
    let stop = strong.stop.clone();
    drop(strong);
    // The age gauge is refreshed at least this often.
    let age_tick = Duration::from_secs(1);
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if let LeaseState::Superseded { by_lease } = *inner.lease_state.borrow() {
            // Another agent owns the id now; writing would only fail. The host sees the
            // state through `lease_state()` and decides what to do.
            warn!(id = %inner.config.id, other = format_args!("{by_lease:x}"), "superseded; reporting stopped");
            return;
        }
        let wait_until = match inner.write_if_due().await {
            Some(at) => at.min(Instant::now() + age_tick),
            None => Instant::now() + age_tick,
        };
        drop(inner);
        tokio::select! {
            () = stop.cancelled() => return,
            r = inputs.changed() => if r.is_err() { return },
            r = ops.changed() => if r.is_err() { return },
            () = tokio::time::sleep_until(wait_until) => {}
            r = lease.changed() => if r.is_err() { return },
        }
    }
}

impl Inner {
    fn observed(&self) -> Observed {
        let inputs = *self.inputs.borrow();
        let ops_drained = self.ops_drain.borrow().is_some();
        Observed {
            state: effective_state(&inputs, ops_drained),
            connections: inputs.connections,
            cpu: inputs.cpu,
        }
    }

    /// Writes the record when the reporter says so. Returns when to look again, `None` when
    /// shut down or after a failed write (retried on the next tick).
    async fn write_if_due(&self) -> Option<Instant> {
        let mut writer = self.writer.lock().await;
        let now = Instant::now();
        metrics::gauge!("switchyard_agent_last_report_age_seconds")
            .set(now.duration_since(writer.reporter.last_at()).as_secs_f64());
        let current = self.observed();
        if let Decision::WaitUntil(at) = writer.reporter.decide(now, &current) {
            return Some(at);
        }
        let session = writer.session.as_ref()?;
        let record = self.config.record(
            current.state,
            Load {
                connections: current.connections,
                cpu: current.cpu,
            },
            self.started_at,
        );
        match session.put(record.to_json()).await {
            Ok(()) => {
                writer.reporter.written(current, now);
                self.writes.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("switchyard_agent_record_writes_total").increment(1);
                metrics::gauge!("switchyard_agent_last_report_age_seconds").set(0.0);
                metrics::gauge!("switchyard_agent_reported_connections")
                    .set(current.connections as f64);
                Some(now)
            }
            Err(e) => {
                metrics::counter!("switchyard_agent_record_write_errors_total").increment(1);
                warn!(id = %self.config.id, error = %e, "record write failed; will retry");
                None
            }
        }
    }
}

impl Agent {
    fn update(&self, f: impl FnOnce(&mut Inputs)) {
        self.inner.inputs.send_if_modified(|i| {
            let before = *i;
            f(i);
            *i != before
        });
    }

    /// The live connection count.
    pub fn set_connections(&self, n: u64) {
        self.update(|i| i.connections = n);
    }

    /// CPU use in cores (0.35 = 35 % of one core); negative or non-finite values are
    /// refused (the record would be invalid) and ignored.
    pub fn set_cpu(&self, cores: f64) {
        if !cores.is_finite() || cores < 0.0 {
            warn!(cores, "ignoring invalid CPU value");
            metrics::counter!("switchyard_agent_invalid_inputs_total").increment(1);
            return;
        }
        self.update(|i| i.cpu = cores);
    }

    /// Health as the host sees it; `false` makes the record `unhealthy` (unless draining).
    pub fn set_healthy(&self, healthy: bool) {
        self.update(|i| i.healthy = healthy);
    }

    /// Lease and registration state, for the host to log or act on.
    pub fn lease_state(&self) -> watch::Receiver<LeaseState> {
        self.inner.lease_state.clone()
    }

    /// The ops drain (`P/drain/<id>`), `None` when not drained.
    pub fn ops_drain(&self) -> watch::Receiver<Option<DrainRecord>> {
        self.inner.ops_drain.clone()
    }

    /// Marks the gateway draining and writes the record at once: returns once the record
    /// says draining (a state change is never delayed), or after a failed attempt when etcd
    /// is unreachable (the reporting loop retries, and re-registration writes the latest).
    pub async fn drain(&self) {
        self.update(|i| i.draining = true);
        // The reporting loop may be writing it already; the writer lock orders the two and
        // the reporter skips the second.
        if self.inner.write_if_due().await.is_some() {
            info!(id = %self.inner.config.id, "record says draining");
        }
    }

    /// Stops reporting and revokes the lease, so the record is gone at once.
    pub async fn shutdown(self) -> Result<(), AgentError> {
        self.inner.stop.cancel();
        let session = self.inner.writer.lock().await.session.take();
        let session = session.ok_or(AgentError::AlreadyShutDown)?;
        session.revoke().await?;
        info!(id = %self.inner.config.id, "gateway deregistered");
        Ok(())
    }

    /// Record writes so far, the registration included.
    pub fn writes(&self) -> u64 {
        self.inner.writes.load(Ordering::Relaxed)
    }

    /// The configuration the agent runs with.
    pub fn config(&self) -> &Config {
        &self.inner.config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new(
            EtcdConfig::new(&["127.0.0.1:2379"]).unwrap(),
            Prefix::default(),
            GatewayId::new("gw-1").unwrap(),
            Addrs {
                tcp: Some("127.0.0.1:7200".into()),
                ws: None,
            },
            1000,
        )
        .unwrap()
    }

    #[test]
    fn defaults_match_the_contract() {
        let c = config();
        assert_eq!(c.ttl, Duration::from_secs(10));
        assert_eq!(c.report_interval, Duration::from_secs(2));
        assert_eq!(c.report_delta, 0.02);
        assert_eq!(c.report_max_interval, Duration::from_secs(30));
        assert_eq!(c.weight, 100);
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let mut c = config();
        c.capacity = 0;
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Record(RecordError::Capacity))
        ));
        let mut c = config();
        c.addrs = Addrs::default();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::Record(RecordError::NoAddress))
        ));
        let mut c = config();
        c.ttl = Duration::from_millis(2500);
        assert!(matches!(c.validate(), Err(ConfigError::Ttl(_))));
        let mut c = config();
        c.report_max_interval = Duration::from_secs(1);
        assert!(matches!(
            c.validate(),
            Err(ConfigError::ReportMaxInterval { .. })
        ));
        let mut c = config();
        c.report_delta = 1.5;
        assert!(matches!(c.validate(), Err(ConfigError::ReportDelta(_))));
        let mut c = config();
        c.weight = 0;
        assert!(c.validate().is_err());
    }

    #[test]
    fn draining_beats_unhealthy_beats_serving() {
        let mut i = Inputs {
            connections: 0,
            cpu: 0.0,
            healthy: true,
            draining: false,
        };
        assert_eq!(effective_state(&i, false), GatewayState::Serving);
        assert_eq!(effective_state(&i, true), GatewayState::Draining);
        i.healthy = false;
        assert_eq!(effective_state(&i, false), GatewayState::Unhealthy);
        assert_eq!(effective_state(&i, true), GatewayState::Draining);
        i.draining = true;
        assert_eq!(effective_state(&i, false), GatewayState::Draining);
    }
}
