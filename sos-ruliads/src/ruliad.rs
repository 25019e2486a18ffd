//! The `Ruliad` trait: one small rule that looks at one entity and may emit one signal.

use std::fmt;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sos_core::TenantId;

use sos_core::Signal;

use crate::explain::{Evaluation, Explain};

/// What a signal is for a person, which decides how the trust gate treats it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Class {
    /// An observation ("you get most leads on Tuesday mornings"); allowed from the first-insight
    /// phase on.
    Insight,
    /// A nudge to act ("you haven't followed up with Acme in 8 days"); allowed only once the
    /// agent has earned it.
    #[default]
    Intervention,
}

/// A rule: given the current time and one entity, fire a signal or say which guard stopped it.
///
/// Rules are pure and deterministic for a given time and input (the stateful combinators keep
/// their state explicitly, see [`crate::combinators`]). Each has a stable name and a version.
pub trait Ruliad<E: ?Sized>: Send + Sync + fmt::Debug {
    /// The stable name, a slug such as `stale-deal-nudge`; also the kind of the signals it fires.
    fn name(&self) -> &str;

    /// The version of the rule's logic; bump it when its behaviour changes.
    fn version(&self) -> u32 {
        1
    }

    /// Whether its signals are insights or interventions (default: interventions).
    fn class(&self) -> Class {
        Class::Intervention
    }

    /// The labels its signals carry (such as `deal_id`), which inhibition rules may compare;
    /// a pack that compares a label no ruliad sets is refused at load. Empty (the default) means
    /// "not declared", and such a ruliad's labels are not checked.
    fn labels(&self) -> &[&'static str] {
        &[]
    }

    /// Whether the rule can say anything about `entity` at all (for instance, a deal rule about
    /// a contact); the engine skips the evaluation when it cannot. Default: always.
    fn applies_to(&self, entity: &E) -> bool {
        let _ = entity;
        true
    }

    /// Whether [`Ruliad::applies_to`] depends on nothing but which variant of an enum the entity
    /// is (as for the catalog's rules over [`crate::crm::Record`]); for a type that is not an
    /// enum, that it does not depend on the entity at all. The engine then asks `applies_to`
    /// once per variant in a batch instead of once per entity. Default `false`: asked for every
    /// entity. A wrong `true` makes the engine skip or evaluate the wrong entities.
    fn applies_per_variant(&self) -> bool {
        false
    }

    /// Evaluates the rule at `now` against `entity`.
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation;

    /// Evaluates the rule like [`Ruliad::evaluate`], recording into `why`, a recorder the
    /// caller passes down empty (new, or [`Explain::reset`]) and reuses from one evaluation to
    /// the next: the engine's path, with no per-evaluation buffer to take and hand back.
    /// Returns the signal when it fired; `why` then holds the evaluation's predicates, the
    /// guard when it did not fire ([`Explain::guard`]), and whether the signal's `because` line
    /// is still to be written from them ([`Explain::because_pending`]).
    ///
    /// The default runs [`Ruliad::evaluate`] and takes its result into `why`. A rule that
    /// overrides it must say the same as its `evaluate` (the catalog writes each rule once,
    /// here, with [`Explain::stop_here`] and [`Explain::fire_here`], and its `evaluate` as
    /// [`Explain::into_evaluation`] of this).
    fn evaluate_into(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> Option<Signal> {
        why.adopt(self.evaluate(now, entity))
    }
}

impl<E: ?Sized, R: Ruliad<E> + ?Sized> Ruliad<E> for Box<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> u32 {
        (**self).version()
    }
    fn class(&self) -> Class {
        (**self).class()
    }
    fn labels(&self) -> &[&'static str] {
        (**self).labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        (**self).applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        (**self).applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        (**self).evaluate(now, entity)
    }
    fn evaluate_into(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> Option<Signal> {
        (**self).evaluate_into(now, entity, why)
    }
}

impl<E: ?Sized, R: Ruliad<E> + ?Sized> Ruliad<E> for &R {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> u32 {
        (**self).version()
    }
    fn class(&self) -> Class {
        (**self).class()
    }
    fn labels(&self) -> &[&'static str] {
        (**self).labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        (**self).applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        (**self).applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        (**self).evaluate(now, entity)
    }
    fn evaluate_into(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> Option<Signal> {
        (**self).evaluate_into(now, entity, why)
    }
}

impl<E: ?Sized, R: Ruliad<E> + ?Sized> Ruliad<E> for Arc<R> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn version(&self) -> u32 {
        (**self).version()
    }
    fn class(&self) -> Class {
        (**self).class()
    }
    fn labels(&self) -> &[&'static str] {
        (**self).labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        (**self).applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        (**self).applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        (**self).evaluate(now, entity)
    }
    fn evaluate_into(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> Option<Signal> {
        (**self).evaluate_into(now, entity, why)
    }
}

/// An entity with an identity, needed by the stateful combinators and the engine to keep state
/// per (tenant, entity).
pub trait Entity {
    /// The tenant the entity belongs to.
    fn tenant(&self) -> &TenantId;
    /// A key unique among the tenant's entities of this type, such as a deal id.
    fn key(&self) -> &str;
}
