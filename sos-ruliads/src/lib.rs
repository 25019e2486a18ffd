//! Ruliads: tiny independent rules that look at state and emit signals for people.
//!
//! # Overview
//!
//! A ruliad never acts: it notices ("this deal has been idle for 9 days") and emits a
//! [`sos_core::Signal`] for a person to act on. Each rule is dumb alone; together they
//! coordinate a business. This crate holds:
//!
//! - the [`Ruliad`] trait and its [`Evaluation`]: a signal, or the guard that stopped it, always
//!   with the leaf [`Predicate`]s checked (observed value against threshold);
//! - [`combinators`]: `all`/`any`/`not`, `when`/`unless`, `first_of`, `map_signal`, and the
//!   stateful `dedupe_by_cause` (named shape `replay-same`), `at_most`, `pending_for`,
//!   `keep_firing_for` and `hysteresis`, with explicit, serializable, bounded state;
//! - a [`catalog`] of CRM ruliads over the types in [`crm`], each with fixtures;
//! - [`fixture`]s in the style of `promtool test rules`, runnable with one call;
//! - vertical [`pack`]s (`<dir>/<vertical>/seed.json`) resolved and validated at deploy time;
//! - the [`engine`] that evaluates a pack over a batch, deterministically, on every core, and
//!   hands what fired to the [`gate`]: inhibition, repeat, grouping, the cause check and the
//!   trust gate on one path, every held-back signal recorded with its reason;
//! - the [`trust`] gate: Plant → Introduce → Observe → First insight → Intervene, with a budget
//!   that follows people's feedback;
//! - [`grouping`]: group_wait, group_interval, repeat_interval, inhibition and flapping, every
//!   held-back signal recorded with its reason;
//! - the [`ceiling`] on concurrently running triggers (one atomic conditional write on
//!   PostgreSQL and SQLite, replays refused under a unique key);
//! - the [`store`] of claimed causes and state blobs, so a host restarts without re-firing.
//!
//! The formats are specified in `docs/ruliads.md`.
//!
//! # Usage
//!
//! ```toml
//! [dependencies]
//! sos-ruliads = "0.1"
//! ```
//!
//! # Examples
//!
//! A host's own ruliad over its own type, in under ten lines:
//!
//! ```
//! use chrono::{DateTime, TimeZone, Utc};
//! use sos_ruliads::{Draft, Evaluation, Explain, Predicate, Ruliad};
//! # #[derive(Debug)]
//! # struct Invoice { tenant: sos_core::TenantId, customer: String, amount: i64 }
//!
//! #[derive(Debug)]
//! struct BigInvoice;
//! impl Ruliad<Invoice> for BigInvoice {
//!     fn name(&self) -> &str { "big-invoice" }
//!     fn evaluate(&self, now: DateTime<Utc>, invoice: &Invoice) -> Evaluation {
//!         let mut why = Explain::new();
//!         if !why.check(Predicate::gt("amount", invoice.amount, 10_000)) { return why.stop(); }
//!         why.fire(Draft::new(&invoice.tenant, "big-invoice", now).subject(&invoice.customer).text("A big invoice."))
//!     }
//! }
//!
//! let now = Utc.with_ymd_and_hms(2026, 3, 10, 9, 0, 0).unwrap();
//! let invoice = Invoice { tenant: "acme".parse()?, customer: "Globex".into(), amount: 25_000 };
//! let evaluation = BigInvoice.evaluate(now, &invoice);
//! assert_eq!(evaluation.signal().map(|signal| signal.subject()), Some("Globex"));
//! assert_eq!(evaluation.explain(), "amount 25000 > 10000");
//!
//! let small = Invoice { amount: 10_000, ..invoice };
//! assert_eq!(BigInvoice.evaluate(now, &small).explain(), "amount 10000 > 10000 (failed)");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The seed's stale-deal rule from the catalog, loaded from a pack and run over a batch:
//!
//! ```
//! use chrono::{TimeZone, Utc};
//! use sos_ruliads::crm::{Deal, Record, Stage};
//! use sos_ruliads::pack::Pack;
//!
//! let pack = Pack::parse(
//!     "generic",
//!     "seed.json".as_ref(),
//!     br#"{ "agent_role": "operations coordinator",
//!           "ruliads_enabled": [{ "name": "stale-deal-nudge", "params": { "stale_days": 7 } },
//!                               "lead-rhythm"] }"#,
//! )?;
//! let deal = Deal {
//!     tenant: "acme".parse()?,
//!     id: "d42".into(),
//!     contact_name: "Acme".into(),
//!     stage: Stage::Negotiation,
//!     last_action_at: Some(Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap()),
//! #   value_cents: None, probability: None, last_message_at: None, stage_entered_at: None,
//! #   expected_close_at: None, next_step_at: None, created_at: None,
//! };
//! let now = Utc.with_ymd_and_hms(2026, 3, 10, 9, 0, 0).unwrap();
//! let fired = pack.engine().evaluate_batch(now, &[Record::Deal(deal)]);
//! assert_eq!(fired[0].signal.text(), "Stale deal: Acme — 9 days since last action.");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Performance
//!
//! Evaluation allocates only for what it records; the benchmark in `benches/ruliads.rs` runs
//! 1,000,000 deals through the generic pack beside a hand-written loop doing the same checks, and
//! compares the trace on and off (figures in `BENCHMARKS.md`). Batches of at least
//! [`engine::DEFAULT_PARALLEL_THRESHOLD`] entities are split across the available cores.
//!
//! # Untrusted input
//!
//! Pack files and fixture files are parsed into typed errors, never panics, and an error names
//! the file and the field. Text from entities (names, subjects) is concatenated into signals as
//! plain text and never interpreted as a template (named shape `format-injection`: every catalog
//! fixture has a case with `{` and `%s`).
//!
//! # Crate features
//!
//! - `cli`: the `sos-ruliads` binary: `check <packs dir>` validates packs (like `promtool check
//!   rules`) and `test <fixture files…>` runs fixtures.
//! - `postgres`: `PgCeiling`, `PgStore` and `store::postgres_migrator`. Enables `sos-core`'s `postgres`
//!   feature: transactions on the host's pool open through `sos_core::postgres::PgTxConnection`
//!   (cancel-safe `BEGIN`, see `docs/webhooks.md`, "Sharing the host's pool").
//! - `sqlite`: `SqliteCeiling`, `SqliteStore` and `store::sqlite_migrator`.
//!
//! The in-memory ceiling and store are always available. Migrations use the version range
//! `0300000001…` and ignore other crates' migrations in a shared database.

pub mod catalog;
pub mod ceiling;
pub mod combinators;
pub mod crm;
pub mod engine;
mod error;
mod explain;
pub mod fixture;
pub mod gate;
pub mod grouping;
pub mod hashing;
pub mod pack;
mod ruliad;
pub mod store;
pub mod trust;

#[cfg(test)]
mod tests;

pub use error::{Error, Result};
pub use explain::{
    Draft, Evaluation, Explain, Explanation, Op, Outcome, Predicate, TextId, Value, trace_enabled, with_trace,
};
pub use ruliad::{Class, Entity, Ruliad};
