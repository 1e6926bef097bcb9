//! Switchyard's registry: the only place that talks to etcd.
//!
//! # Layout
//! - [`keys`]: the key schema (`P/gateways/<id>`, `P/drain/<id>`), [`GatewayId`], [`Prefix`].
//! - [`record`]: [`GatewayRecord`] and [`DrainRecord`], the JSON values, with validation.
//! - [`etcd`]: connecting with sane options ([`EtcdConfig`]) and retrying idempotent calls.
//! - [`lease`]: [`LeaseSession`], one key kept alive under a lease through outages.
//! - [`watcher`]: [`PrefixWatcher`], whole and consistent snapshots of a prefix.
//! - [`view`]: the registry decoded for routers and tools ([`RegistryView`]).
//! - [`cli`] and [`telemetry`]: what every binary shares — the etcd flags,
//!   `--config` files, exit codes, logging and the metrics recorder.
//!
//! Everything here survives etcd restarts, outages longer than a lease TTL, leader changes
//! and compaction; see `docs/registry.md` for the schema itself.
#![forbid(unsafe_code)]

pub mod cli;
pub mod etcd;
pub mod keys;
pub mod lease;
pub mod record;
pub mod telemetry;
pub mod view;
pub mod watcher;

pub use etcd::{ConnectError, EtcdConfig};
pub use keys::{GatewayId, KeyError, Prefix};
pub use lease::{LeaseError, LeaseSession, LeaseState, Registration};
pub use record::{Addrs, DrainRecord, GatewayRecord, GatewayState, Load, RecordError};
pub use view::{Entry, RegistryView};
pub use watcher::{Contact, PrefixWatcher, Snapshot, WatcherConfig};

/// Re-exported so users of this crate name the same etcd client type.
pub use etcd_client;
