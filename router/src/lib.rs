//! Switchyard router: watches the etcd registry, keeps an immutable in-memory view, and
//! answers `Route` with a ranked gateway list without ever waiting on etcd.
//!
//! # Layout
//! - `config`: [`Config`], every knob with its default, checked into a [`ValidConfig`];
//!   CIDR table and client policies.
//! - [`ranking`]: the pure ranking (DESIGN contract 2): filter, locality with spill,
//!   bounded-load rendezvous first place, two-choice further places, slow start. Public
//!   so benchmarks and tools can rank a registry they read themselves.
//! - `outlier`: pure ejection state machine fed by client failure reports.
//! - `view`: registry snapshots → immutable views, plus the live state of each gateway
//!   (pending hand-outs, ejection), which has exactly one home.
//! - `auth`: who is calling — app tokens and the route token on Route, the ops token or
//!   a client certificate on Admin and the topology calls, and the failure-report budget
//!   per caller identity.
//! - `service`: the `Router` and `Admin` gRPC services, and [`gateway_proto`], the one
//!   conversion of a registry record into the API's `Gateway`.
//! - `http`: the side port: `/metrics`, `/healthz`, status page.
//! - `route_http`, `route_json`: `POST /v1/route` on the gRPC port, Route over HTTP/JSON
//!   (DESIGN contract 6) through the gRPC service's own `route`.
//! - `server`: [`run`] wires it together on already-bound listeners (tests bind port 0).
//!
//! When etcd is unreachable the router keeps serving its last view and reports how old it
//! is (`snapshot_age_ms`, metric `switchyard_router_snapshot_age_seconds`, a log line).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod auth;
mod config;
mod http;
mod limits;
mod outlier;
pub mod ranking;
mod route_http;
mod route_json;
mod server;
mod service;
mod view;

pub use config::{
    Config, ConfigError, LocalityRule, Policies, Policy, PolicyError, PolicyOverride, ValidConfig,
};
pub use outlier::{Params as OutlierParams, ParamsError as OutlierParamsError};
pub use server::{Error, Listeners, run};
pub use service::gateway_proto;
