//! Switchyard's gateway side: the agent that registers a gateway in etcd, and the
//! reference long-connection gateway.
//!
//! # Layout
//! - [`gateway`]: the reference gateway server (contract 3 over TCP/WebSocket, TLS,
//!   heartbeat reaping, kick, backpressure, drain); binary `switchyard-gateway`.
#![forbid(unsafe_code)]

pub mod gateway;
