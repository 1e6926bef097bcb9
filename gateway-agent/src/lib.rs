//! Switchyard's gateway side: the agent that registers a gateway in etcd and reports its
//! load, health and drains (embeddable library and the `switchyard-agent` sidecar), and the
//! reference long-connection gateway.
//!
//! # Layout
//! - [`agent`]: [`agent::Config`], [`agent::start`], the [`agent::Agent`] handle; probes,
//!   connection counting, the reporting policy and the sidecar runner.
//! - [`gateway`]: the reference gateway server (contract 3 over TCP/WebSocket, TLS,
//!   heartbeat reaping, kick, backpressure, drain); binary `switchyard-gateway`.
//! - [`cli`]: helpers shared by the binaries (config-file merge, logging, metrics endpoint).
#![forbid(unsafe_code)]

pub mod agent;
pub mod cli;
pub mod gateway;
