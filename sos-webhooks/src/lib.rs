//! An idempotent webhook guard and provider signature verification.
//!
//! # Overview
//!
//! Providers deliver the same webhook more than once, sometimes concurrently, to different
//! replicas. [`WebhookGuard`] makes a handler's effects happen exactly once per
//! (tenant, provider, event id) and answers every other delivery by the state of the first:
//! [`Outcome::AlreadyProcessed`], [`Outcome::RetryInFlight`], [`Outcome::PriorAttemptFailed`],
//! or [`Outcome::BodyMismatch`] when a known event id arrives with different bytes.
//! [`Outcome::to_http`] turns each answer into the status and JSON body a provider expects.
//!
//! The [`signature`] module verifies Stripe, Standard Webhooks, GitHub, Slack and Shopify
//! signatures on the raw body bytes, in constant time, with several secrets for rotation.
//!
//! Two modes (full discussion in `docs/webhooks.md`):
//!
//! - **Transactional** (`WebhookGuard<PgStore>::transactional`, and the SQLite twin): the claim,
//!   the handler's own database writes and the "processed" mark are one transaction. A failure
//!   or a crash leaves nothing behind. Choose it whenever the handler's effects are rows in the
//!   same database. Deliver each event through one mode: a transactional delivery that meets an
//!   unfinished two-phase record is refused with [`Error::ModeMismatch`].
//! - **Two-phase** ([`WebhookGuard::two_phase`], every store): the claim commits first with a
//!   lease, then the handler runs (calling outside APIs), then the record is marked processed
//!   or failed. Choose it when the effects leave the database; make the outside call
//!   idempotent too where the API allows, because a crash after the call and before the mark
//!   runs it again after the lease.
//!
//! # Usage
//!
//! ```toml
//! [dependencies]
//! sos-webhooks = { version = "0.1", features = ["postgres"] }
//! ```
//!
//! # Examples
//!
//! A handler made idempotent, in two-phase mode on the memory store:
//!
//! ```
//! # futures::executor::block_on(async {
//! use sos_core::SystemClock;
//! use sos_webhooks::{EventKey, MemoryStore, Outcome, WebhookGuard};
//!
//! let guard = WebhookGuard::new(MemoryStore::new(), SystemClock);
//! let key = EventKey::new("acme".parse()?, "stripe", "evt_1")?;
//! let body = br#"{"id":"evt_1","type":"invoice.paid"}"#;
//!
//! let first = guard.two_phase(&key, body, |_claim| async { Ok::<_, std::io::Error>("sent receipt") }).await;
//! assert!(matches!(first, Ok(Outcome::Processed("sent receipt"))));
//!
//! let again = guard.two_phase(&key, body, |_claim| async { Ok::<_, std::io::Error>("sent twice!") }).await;
//! assert!(matches!(again, Ok(Outcome::AlreadyProcessed)));
//! assert_eq!(again.map(|outcome| outcome.to_http().status().as_u16()).ok(), Some(200));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # }).unwrap();
//! ```
//!
//! On PostgreSQL, in transactional mode, the handler writes through the guard's transaction:
//!
//! ```no_run
//! # #[cfg(feature = "postgres")]
//! # async fn example(pool: sqlx::PgPool, body: &[u8]) -> Result<(), Box<dyn std::error::Error>> {
//! use sos_core::SystemClock;
//! use sos_webhooks::{EventKey, PgStore, WebhookGuard};
//!
//! let guard = WebhookGuard::new(PgStore::new(pool), SystemClock);
//! let key = EventKey::new("acme".parse()?, "stripe", "evt_1")?;
//! let outcome = guard
//!     .transactional(&key, body, |tx| {
//!         Box::pin(async move {
//!             sqlx::query("UPDATE invoices SET paid = true WHERE id = $1").bind(42).execute(&mut **tx).await
//!         })
//!     })
//!     .await?;
//! let answer = outcome.to_http(); // 200 processed, 200 already_processed, 503 retry, …
//! # let _ = answer;
//! # Ok(())
//! # }
//! ```
//!
//! # Performance
//!
//! In transactional mode a new event costs the handler's own transaction plus one statement
//! (the claim; on PostgreSQL the check that the handler left the transaction whole rides on
//! the `COMMIT`); a duplicate costs no disk flush (on PostgreSQL `BEGIN` and the claim
//! statement, the `ROLLBACK` riding on the pool's release ping; on SQLite one read).
//! [`GuardConfig::with_processed_cache`] answers duplicates of events this guard saw processed
//! from memory, race-free because `processed` is final. Signature verification keys each
//! secret's HMAC once at construction and allocates nothing per call. Figures are in
//! `BENCHMARKS.md`.
//!
//! # Untrusted input
//!
//! Every header parser (`signature::parse_*`) and key constructor returns a typed [`Error`] and
//! never panics; each parser has a fuzz target and a proptest mirror. Bodies are treated as
//! bytes, never as UTF-8. [`signature::read_body_limited`] refuses a body past its limit while
//! it streams in, whatever `Content-Length` says. GitHub and Shopify sign nothing timestamped:
//! for them, the dedupe store is the replay defence, keyed by [`EventId::of_body`] (their
//! delivery-id headers are not signed, so a key taken from them admits a replay).
//!
//! # Crate features
//!
//! - `postgres`: [`PgStore`], transactional and two-phase modes, migrations. Enables `sos-core`'s
//!   `postgres` feature: the guard opens its transactions with `sos_core::postgres::PgTxConnection`,
//!   so a delivery dropped mid-`BEGIN` never returns the host's pooled connection inside an open
//!   transaction (an sqlx bug; `docs/webhooks.md`, "Sharing the host's pool").
//! - `sqlite`: [`SqliteStore`], transactional and two-phase modes, migrations.
//! - `axum`: `axum::response::IntoResponse` for [`HttpAnswer`], [`Outcome`], [`RunError`] and
//!   [`Error`], so an axum handler can return the guard's answer directly; and the extractor
//!   `WebhookRequest`, the headers and raw body of a delivery, refused past a size limit while
//!   it streams in.
//!
//! The memory store and the signature verifiers are always available.

mod error;
#[cfg(feature = "axum")]
mod extract;
mod guard;
mod http_answer;
pub mod signature;

pub use error::{Error, Result};
#[cfg(feature = "axum")]
pub use extract::WebhookRequest;
pub use guard::{
    Claim, ClaimAnswer, ClaimRequest, ClaimStore, Duplicate, EventId, EventKey, GuardConfig, MemoryStore,
    Outcome, Provider, ReadFirst, RunError, WebhookGuard,
};
#[cfg(feature = "postgres")]
pub use guard::{PgHandler, PgStore, postgres_migrator};
#[cfg(feature = "sqlite")]
pub use guard::{SqliteHandler, SqliteStore, sqlite_migrator};
pub use http_answer::HttpAnswer;
