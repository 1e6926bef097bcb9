//! Switchyard's registry: the only place that talks to etcd, and the owner of its schema.
//!
//! # Layout
//! - `keys`: the key schema (`P/gateways/<id>`, `P/drain/<id>`), [`GatewayId`], [`Prefix`].
//! - `record`: [`GatewayRecord`] and [`DrainRecord`], the JSON values, with validation and
//!   the bounds of their numbers ([`MAX_CAPACITY`], [`MAX_CONNECTIONS`]).
//! - `etcd`: connecting with sane options ([`EtcdConfig`]) and retrying idempotent calls.
//! - `lease`: [`LeaseSession`], one key kept alive under a lease through outages.
//! - [`watcher`]: [`PrefixWatcher`], whole and consistent snapshots of a prefix.
//! - [`fleet`]: the registry decoded for routers and tools: [`fleet::watch`] keeps a
//!   [`Fleet`] current, [`fleet::load`] reads it once; ops drain and undrain writes.
//! - [`cli`] and [`telemetry`]: what every binary shares — the etcd flags,
//!   `--config` files, exit codes, logging and the metrics recorder.
//!
//! Everything here survives etcd restarts, outages longer than a lease TTL, leader changes
//! and compaction; see `docs/registry.md` for the schema itself.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
mod etcd;
pub mod fleet;
mod keys;
mod lease;
mod record;
pub mod telemetry;
// Public as a path too: the gateway agent names `watcher::Decoder`; everything in it is
// also exported below.
pub mod watcher;

pub use etcd::{ConnectError, EtcdConfig};
pub use fleet::{Entry, Fleet};
pub use keys::{DEFAULT_PREFIX, GatewayId, KeyError, KeyKind, Prefix};
pub use lease::{LeaseError, LeaseSession, LeaseState, Registration};
pub use record::{
    Addrs, DrainRecord, GatewayRecord, GatewayState, Load, MAX_CAPACITY, MAX_CONNECTIONS,
    RecordError,
};
pub use watcher::{Contact, Decoder, PrefixWatcher, Snapshot, WatcherConfig};

/// Re-exported so users of this crate name the same etcd client type.
pub use etcd_client;
