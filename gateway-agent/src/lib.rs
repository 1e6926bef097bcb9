//! Switchyard's gateway side: the agent that registers a gateway in etcd and reports its
//! load, health and drains (embeddable library and the `switchyard-agent` sidecar), and the
//! reference long-connection gateway.
//!
//! # Layout
//! - [`agent`]: [`agent::Config`], [`agent::start`], the [`agent::Agent`] handle, what an
//!   embedding gateway needs around it ([`agent::drain_requested`],
//!   [`agent::report_load`]), probes and the sidecar runner ([`agent::run_sidecar`]).
//! - [`gateway`]: the reference gateway server (contract 3 over TCP/WebSocket, TLS,
//!   heartbeat reaping, kick, backpressure, drain); binary `switchyard-gateway`.
//! - [`ops_router`], [`serve_ops`], [`raise_fd_limit`]: the ops endpoint and start-up
//!   helpers of the binaries. Flags, exit codes, logging and metrics are shared with every
//!   Switchyard binary in [`switchyard_registry::cli`] and [`switchyard_registry::telemetry`].
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agent;
pub mod gateway;
mod ops;

pub use ops::{ops_router, raise_fd_limit, serve_ops};
