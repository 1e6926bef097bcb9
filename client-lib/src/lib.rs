//! Switchyard client library: asks a router where to connect, keeps one long connection to
//! the best gateway alive with idle-only heartbeats, detects dead links, reconnects with
//! backoff and jitter, fails over to the next gateway, and never reconnects after a KICK.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use futures::StreamExt;
//! use switchyard_client::Client;
//!
//! let client = Client::builder()
//!     .routers(["http://127.0.0.1:7100"])
//!     .client_id("user-42")
//!     .token("secret")
//!     .build()?;
//! let mut events = client.events();
//! let mut messages = client.connect().await?;
//! let receipt = client.send("hello").await?;
//! receipt.await?; // the gateway acknowledged it
//! while let Some(m) = messages.next().await {
//!     println!("got {m:?}");
//! }
//! # drop(events); Ok(()) }
//! ```
//!
//! # Layout
//! - [`client`]: [`Client`] (the handle), [`Event`], [`Messages`], [`Receipt`], and the
//!   driver task that owns the link, the outbound queue and the reconnect loop.
//! - [`config`]: [`Builder`] (validated settings), [`Protocol`], [`Keepalive`], TLS helpers.
//! - [`routing`]: router gRPC calls over several endpoints, the cached last good list, the
//!   failure log behind `exclude`/`failures`.
//! - [`race`]: staggered connection racing (pure, generic over the attempt).
//! - [`heartbeat`]: idle-only PING and dead-link deadlines; the adaptive interval.
//! - [`outbox`]: numbered DATA frames kept until ACKed and resent in order on a new link.
//! - `transport` (private): TCP / WebSocket links, TLS (rustls), TCP keepalive (socket2).
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod heartbeat;
pub mod outbox;
pub mod race;
pub mod routing;
mod transport;

pub use client::{Client, Error, Event, Events, Messages, Receipt, SendError, Stats, Undelivered};
pub use config::{Builder, ConfigError, Keepalive, Protocol, tls_from_pem_file, tls_with_roots};
pub use heartbeat::AdaptiveSettings;
pub use routing::{Gateway, RouteSource};
pub use switchyard_proto::v1::KickCode;
