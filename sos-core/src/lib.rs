//! The shared vocabulary of the SOS crates.
//!
//! # Overview
//!
//! SOS gives a service the trust primitives of an AI-agent coordination system: a tamper-evident
//! audit chain (`sos-audit`), an idempotent webhook guard (`sos-webhooks`), rules that turn state
//! into signals (`sos-ruliads`) and deterministic agent identities (`sos-identity`). This crate
//! holds the few types they all speak:
//!
//! - [`TenantId`]: the boundary every stored row and every signal carries.
//! - [`Signal`]: what an agent observed, for a person to act on. Signals, never actions.
//! - [`Clock`]: time as a dependency ([`SystemClock`], [`ManualClock`]).
//! - [`Channel`]: where signals reach people, answering with a [`DeliveryReceipt`].
//! - [`DomainHasher`] (streaming), [`DomainEncoder`] (into a buffer) and [`Sha256Digest`]:
//!   domain-separated, length-prefixed SHA-256, specified in `docs/hashing.md` with test vectors.
//!
//! `sos-core` depends on no database, no async runtime and no HTTP crate; its one optional
//! feature, `postgres`, adds the infrastructure every PostgreSQL backend of the SOS crates shares.
//!
//! # Usage
//!
//! ```toml
//! [dependencies]
//! sos-core = "0.1"
//! ```
//!
//! # Examples
//!
//! An agent notices a stale deal and tells a person through a channel:
//!
//! ```
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! use chrono::{TimeZone, Utc};
//! use sos_core::{Channel, Clock, DomainHasher, ManualClock, MemoryChannel, Severity, Signal};
//!
//! let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap());
//! let mut cause = DomainHasher::new("example/stale-deal/v1");
//! cause.str_field("deal-42")?.i64_field(9);
//!
//! let signal = Signal::builder("acme".parse()?, "stale-deal".parse()?)
//!     .subject("Deal with Acme")
//!     .text("9 days since the last action.")
//!     .severity(Severity::Notice)
//!     .observed_at(clock.now())
//!     .cause(cause.finish())
//!     .build()?;
//!
//! let inbox = MemoryChannel::new();
//! let receipt = inbox.deliver(&signal).await;
//! assert!(receipt.is_acknowledged());
//! # Ok::<(), sos_core::Error>(())
//! # }).unwrap();
//! ```
//!
//! # Untrusted input
//!
//! Every parser here ([`TenantId::new`], [`SignalKind::new`], [`Sha256Digest::from_hex`],
//! `Signal`'s `Deserialize`) returns a typed [`Error`] and never panics. Signal text is plain text
//! and is never interpreted as a template.
//!
//! # Crate features
//!
//! - `postgres` (off by default): [`postgres::PgTxConnection`], the cancel-safe way the SOS
//!   crates open a transaction on a host's `PgPool` (works around an sqlx bug where a cancelled
//!   `BEGIN` returns the connection to the pool inside an open transaction). It adds sqlx with
//!   its PostgreSQL driver and nothing else; the vocabulary above never depends on it.

mod channel;
mod clock;
mod error;
mod hash;
#[cfg(feature = "postgres")]
pub mod postgres;
mod signal;
mod tenant;

#[cfg(test)]
mod tests;

pub use channel::{Channel, DeliveryReceipt, MemoryChannel};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{Error, Result};
pub use hash::{DomainEncoder, DomainHasher, Sha256Digest, digest_fields};
pub use signal::{Severity, Signal, SignalBuilder, SignalId, SignalKind};
pub use tenant::TenantId;
