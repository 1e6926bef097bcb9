//! Switchyard's contracts in code.
//!
//! # Layout
//! - [`v1`]: generated protobuf messages and tonic services for package `switchyard.v1`
//!   (`router.proto`: the `Router` and `Admin` services; `wire.proto`: HELLO, WELCOME, KICK,
//!   GOAWAY and REJECT payloads).
//! - [`wire`]: the long-connection frame codec (DESIGN contract 3) for gateways and clients.
//! - [`limits`]: the numeric limits of the contracts (client_id length, route limit, ping
//!   payload, frame size, the TTL rule), checked by router, gateway and client alike.
//! - [`backoff`]: the one exponential backoff with full jitter (client reconnects, lease
//!   re-grants, watcher and etcd retries).
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors, for gRPC server reflection.
#![forbid(unsafe_code)]

pub mod backoff;
pub mod limits;
pub mod wire;

/// Generated code for protobuf package `switchyard.v1`.
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all
)]
pub mod v1 {
    tonic::include_proto!("switchyard.v1");
}

/// Encoded `FileDescriptorSet` of every Switchyard `.proto`, for `tonic-reflection`.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("switchyard_descriptor");
