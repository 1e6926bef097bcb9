//! Switchyard client library: asks a router where to connect, keeps one long connection to
//! the best gateway alive with idle-only heartbeats, detects dead links, reconnects with
//! backoff and jitter, fails over to the next gateway, and never reconnects after a KICK.
//!
//! ```no_run
//! use futures::StreamExt;
//! use switchyard_client::Client;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let client = Client::builder()
//!         .routers(["http://127.0.0.1:7100"])
//!         .client_id("user-42")
//!         .token("secret")
//!         .build()?;
//!     let mut messages = client.connect().await?;
//!     let receipt = client.send("hello").await?;
//!     receipt.await?; // the gateway acknowledged it
//!     while let Some(m) = messages.next().await {
//!         println!("got {m:?}");
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Layout
//! - `client`: [`Client`] (the handle), [`Messages`], [`Events`], [`Receipt`], [`Stats`],
//!   and the state the handle shares with the driver.
//! - `driver`: the task that owns the link — routing, racing, the session loop — doing
//!   what the reconnect machine decides.
//! - `reconnect`: the pure reconnect machine (events in, decisions out).
//! - `event`: [`Event`] and its typed causes ([`DisconnectCause`], [`FailureKind`],
//!   [`Setback`], [`GaveUp`]), [`Error`], [`SendError`], [`Undelivered`].
//! - `config`: [`Builder`] (validated settings), [`Protocol`], [`Keepalive`], TLS helpers,
//!   and the one place settings are merged (local > router > WELCOME > default).
//! - `token`: [`TokenSource`] and the app-token provider called once per round.
//! - `routing`: router gRPC calls over several endpoints (`https://` with rustls, the app
//!   token as bearer), the cached last good list, the login ticket and the choice of the
//!   HELLO credential, the failure log behind `exclude`/`failures`.
//! - `race`: staggered connection racing (pure, generic over the attempt).
//! - `heartbeat`: idle-only PING and dead-link deadlines; the adaptive interval.
//! - `outbox`: numbered DATA frames kept until ACKed and resent in order on a new link.
//! - `transport`: TCP / WebSocket links, TLS (rustls), TCP keepalive (socket2).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod config;
mod driver;
mod event;
mod heartbeat;
mod outbox;
mod race;
mod reconnect;
mod routing;
mod token;
mod transport;

#[doc = include_str!("../../docs/client.md")]
#[cfg(doctest)]
pub struct ClientGuideExamples;

#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeExamples;

pub use client::{Client, Events, Messages, Receipt, Stats};
pub use config::{
    Builder, ConfigError, Keepalive, Problem, Protocol, defaults, tls_from_pem_file, tls_with_roots,
};
pub use event::{
    DisconnectCause, Error, Event, Failure, FailureKind, GaveUp, SendError, Setback, Undelivered,
};
pub use heartbeat::AdaptiveSettings;
pub use routing::{Gateway, RouteSource};
pub use switchyard_proto::v1::{KickCode, RejectCode};
pub use token::{TokenError, TokenFuture, TokenSource};
