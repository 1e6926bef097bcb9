//! Load generators and measurement helpers shared by the benchmark drivers and the demo.
//!
//! # Layout
//! - [`swarm`]: many client-lib clients in one process, with per-client connection history
//!   (who was where, when each link was lost and regained).
//! - [`fixture`]: synthetic gateway records and the etcd-direct routing alternative.
//! - [`stats`]: percentiles and one-line `name: key=value …` summaries.
//! - [`procfs`]: another process's private memory and CPU time from `/proc`.
//! - [`rawconn`]: minimal contract-3 connections (HELLO, hand-made PINGs) for holding many.
//! - [`soak`]: the soak driver's invariants: disconnection gaps and their bound, RSS trend,
//!   the seeded chaos schedule.
//!
//! Binaries: `switchyard-demo` (the README's main job, run by `deploy/local/demo`) and the
//! benchmark drivers (`bench/run-all` runs them and writes BENCHMARKS.md).
#![forbid(unsafe_code)]

pub mod fixture;
pub mod procfs;
pub mod rawconn;
pub mod soak;
pub mod stats;
pub mod swarm;
