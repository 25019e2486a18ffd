//! Combinators: small types that build ruliads out of conditions and other ruliads.
//!
//! Stateless: [`all`], [`any`], [`not`] over [`Condition`]s; [`when`], [`unless`], [`first_of`],
//! [`map_signal`] over ruliads.
//!
//! Stateful: [`dedupe_by_cause`] (named shape `replay-same`), [`at_most`], [`pending_for`],
//! [`keep_firing_for`] and [`hysteresis`]. Each keeps its state per (tenant, entity) in a
//! [`StateMap`]: explicit, serializable ([`StateMap`] is serde) and bounded (the least recently
//! touched entry is evicted when it is full, in O(log n)). Save it with `snapshot` and put it
//! back after a restart with `restore`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use sos_core::Signal;

use crate::explain::{Evaluation, Explain, Explanation, Op, Outcome, Predicate, Value};
use crate::ruliad::{Class, Entity, Ruliad};

/// A yes/no check on an entity that records its predicates.
pub trait Condition<E: ?Sized>: Send + Sync + fmt::Debug {
    /// Checks the condition at `now`, recording predicates in `why`.
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool;
}

impl<E: ?Sized, C: Condition<E> + ?Sized> Condition<E> for Box<C> {
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        (**self).check(now, entity, why)
    }
}

/// A condition from a function returning one [`Predicate`]; see [`condition`].
pub struct FnCondition<F> {
    name: &'static str,
    function: F,
}

impl<F> fmt::Debug for FnCondition<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FnCondition").field("name", &self.name).finish_non_exhaustive()
    }
}

impl<E: ?Sized, F> Condition<E> for FnCondition<F>
where
    F: Fn(DateTime<Utc>, &E) -> Predicate + Send + Sync,
{
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        why.check((self.function)(now, entity))
    }
}

/// A condition named `name` from a function that returns one predicate.
pub fn condition<E: ?Sized, F>(name: &'static str, function: F) -> FnCondition<F>
where
    F: Fn(DateTime<Utc>, &E) -> Predicate + Send + Sync,
{
    FnCondition { name, function }
}

/// All conditions hold (checked in order, stopping at the first that fails); see [`all`].
pub struct All<E: ?Sized>(Vec<Box<dyn Condition<E>>>);

impl<E: ?Sized> fmt::Debug for All<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// All of `conditions` hold; an empty list holds.
pub fn all<E: ?Sized>(conditions: Vec<Box<dyn Condition<E>>>) -> All<E> {
    All(conditions)
}

impl<E: ?Sized> Condition<E> for All<E> {
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        self.0.iter().all(|condition| condition.check(now, entity, why))
    }
}

/// At least one condition holds; see [`any`].
pub struct Any<E: ?Sized>(Vec<Box<dyn Condition<E>>>);

impl<E: ?Sized> fmt::Debug for Any<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// At least one of `conditions` holds; an empty list does not.
pub fn any<E: ?Sized>(conditions: Vec<Box<dyn Condition<E>>>) -> Any<E> {
    Any(conditions)
}

impl<E: ?Sized> Condition<E> for Any<E> {
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        let mut scratch = Explain::new();
        for condition in &self.0 {
            if condition.check(now, entity, &mut scratch) {
                return why.check(Predicate::custom("any", "one held", Op::Eq, "one held", true));
            }
        }
        why.check(Predicate::custom("any", "none held", Op::Eq, "one held", false))
    }
}

/// The condition does not hold; see [`not`].
#[derive(Debug)]
pub struct Not<C>(C);

/// `condition` does not hold.
pub fn not<C>(condition: C) -> Not<C> {
    Not(condition)
}

impl<E: ?Sized, C: Condition<E>> Condition<E> for Not<C> {
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        let mut inner = Explain::new();
        let held = self.0.check(now, entity, &mut inner);
        // The inner line is only rendered when it is recorded: with the trace on, or as the guard.
        let observed = if why.tracing() || held {
            let line = inner.stop().explain();
            why.text(&line)
        } else {
            Value::Text("held")
        };
        why.check(Predicate::custom("not", observed, Op::Eq, Value::Bool(false), !held))
    }
}

/// Runs a ruliad only when a condition holds; see [`when`] and [`unless`].
#[derive(Debug)]
pub struct When<C, R> {
    condition: C,
    ruliad: R,
    negate: bool,
}

/// Evaluates `ruliad` only when `condition` holds; otherwise the condition is the guard.
pub fn when<C, R>(condition: C, ruliad: R) -> When<C, R> {
    When { condition, ruliad, negate: false }
}

/// Evaluates `ruliad` only when `condition` does not hold.
pub fn unless<C, R>(condition: C, ruliad: R) -> When<C, R> {
    When { condition, ruliad, negate: true }
}

impl<E: ?Sized, C: Condition<E>, R: Ruliad<E>> Ruliad<E> for When<C, R> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn version(&self) -> u32 {
        self.ruliad.version()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let mut why = Explain::new();
        let held = if self.negate {
            not(ConditionRef(&self.condition)).check(now, entity, &mut why)
        } else {
            self.condition.check(now, entity, &mut why)
        };
        if !held {
            return why.stop();
        }
        let mut prefix = why.stop().into_parts().1;
        // `stop` appended a synthetic guard because nothing failed; drop it from the prefix.
        prefix.retain(|predicate| predicate.held);
        self.ruliad.evaluate(now, entity).with_prefix(prefix)
    }
}

#[derive(Debug)]
struct ConditionRef<'a, C>(&'a C);

impl<E: ?Sized, C: Condition<E>> Condition<E> for ConditionRef<'_, C> {
    fn check(&self, now: DateTime<Utc>, entity: &E, why: &mut Explain) -> bool {
        self.0.check(now, entity, why)
    }
}

/// The first ruliad that fires wins (priority order); see [`first_of`].
pub struct FirstOf<E: ?Sized> {
    name: String,
    ruliads: Vec<Box<dyn Ruliad<E>>>,
}

impl<E: ?Sized> fmt::Debug for FirstOf<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FirstOf").field("name", &self.name).field("ruliads", &self.ruliads).finish()
    }
}

/// Evaluates `ruliads` in order and returns the first that fires; when none fires, the last
/// guard stops it.
pub fn first_of<E: ?Sized>(name: impl Into<String>, ruliads: Vec<Box<dyn Ruliad<E>>>) -> FirstOf<E> {
    FirstOf { name: name.into(), ruliads }
}

impl<E: ?Sized> Ruliad<E> for FirstOf<E> {
    fn name(&self) -> &str {
        &self.name
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliads.iter().any(|ruliad| ruliad.applies_to(entity))
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliads.iter().all(|ruliad| ruliad.applies_per_variant())
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let mut explanation = Explanation::new();
        let mut last_guard = None;
        for ruliad in &self.ruliads {
            let evaluation = ruliad.evaluate(now, entity);
            if evaluation.fired() {
                return evaluation.with_prefix(explanation);
            }
            let guard = evaluation.guard_index();
            let start = explanation.len();
            explanation.append(evaluation.explanation());
            if let Some(guard) = guard {
                last_guard = Some(start + guard);
            }
        }
        match last_guard {
            Some(index) => Evaluation::stopped_at(index, explanation),
            None => Evaluation::stopped(
                Predicate::custom("first_of", "no ruliads", Op::Gt, Value::Int(0), false),
                explanation,
            ),
        }
    }
}

/// Transforms the signal a ruliad fires; see [`map_signal`].
pub struct MapSignal<R, F> {
    ruliad: R,
    function: F,
}

impl<R: fmt::Debug, F> fmt::Debug for MapSignal<R, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MapSignal").field("ruliad", &self.ruliad).finish_non_exhaustive()
    }
}

/// Applies `function` to every signal `ruliad` fires.
pub fn map_signal<R, F>(ruliad: R, function: F) -> MapSignal<R, F> {
    MapSignal { ruliad, function }
}

impl<E: ?Sized, R: Ruliad<E>, F: Fn(Signal) -> Signal + Send + Sync> Ruliad<E> for MapSignal<R, F> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn version(&self) -> u32 {
        self.ruliad.version()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        self.ruliad.evaluate(now, entity).map_signal(&self.function)
    }
}

/// Bounded, serializable state kept per key by the stateful combinators.
///
/// When full, a new key evicts the least recently touched one (the smallest key among those
/// touched at the same time). The keys are ordered by (touched, key) in an index derived from
/// the entries (rebuilt on load, never saved), so that eviction takes the oldest in O(log n)
/// instead of scanning every entry: an outsider feeding new keys (new causes, new entities)
/// cannot make each one cost a scan of the whole map (named shape `hash-flood`, the quadratic
/// form).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "SavedStateMap<T>", bound(deserialize = "T: Deserialize<'de>"))]
pub struct StateMap<T> {
    capacity: usize,
    entries: BTreeMap<String, Slot<T>>,
    /// Every key by (touched, key): the first is the next to evict.
    #[serde(skip)]
    by_touched: BTreeSet<(DateTime<Utc>, String)>,
}

/// A [`StateMap`] as saved (the eviction index is derived on load).
#[derive(Deserialize)]
struct SavedStateMap<T> {
    capacity: usize,
    entries: BTreeMap<String, Slot<T>>,
}

impl<T> From<SavedStateMap<T>> for StateMap<T> {
    fn from(saved: SavedStateMap<T>) -> Self {
        let by_touched = saved.entries.iter().map(|(key, slot)| (slot.touched, key.clone())).collect();
        Self { capacity: saved.capacity.max(1), entries: saved.entries, by_touched }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Slot<T> {
    touched: DateTime<Utc>,
    value: T,
}

impl<T> StateMap<T> {
    /// An empty map holding at most `capacity` keys (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(1), entries: BTreeMap::new(), by_touched: BTreeSet::new() }
    }

    /// The number of keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The most keys it holds.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&T> {
        self.entries.get(key).map(|slot| &slot.value)
    }

    /// Stores `value` under `key` as touched at `now`, evicting the least recently touched key
    /// (the smallest of those touched at the same time) when full. O(log n).
    pub fn insert(&mut self, key: String, now: DateTime<Utc>, value: T) {
        if let Some(slot) = self.entries.get_mut(&key) {
            slot.value = value;
            if slot.touched != now {
                let entry = (std::mem::replace(&mut slot.touched, now), key);
                self.by_touched.remove(&entry);
                self.by_touched.insert((now, entry.1));
            }
            return;
        }
        while self.entries.len() >= self.capacity {
            let Some((_, oldest)) = self.by_touched.pop_first() else { break };
            self.entries.remove(&oldest);
        }
        self.by_touched.insert((now, key.clone()));
        self.entries.insert(key, Slot { touched: now, value });
    }

    /// Removes and returns the value under `key`.
    pub fn remove(&mut self, key: &str) -> Option<T> {
        let (key, slot) = self.entries.remove_entry(key)?;
        self.by_touched.remove(&(slot.touched, key));
        Some(slot.value)
    }
}

fn state_key<E: Entity + ?Sized>(entity: &E) -> String {
    format!("{}\u{1f}{}", entity.tenant(), entity.key())
}

/// The shared shape of the stateful combinators: a ruliad and its keyed state.
#[derive(Debug)]
pub struct Stateful<R, T, P> {
    ruliad: R,
    params: P,
    state: Mutex<StateMap<T>>,
}

impl<R, T: Clone, P> Stateful<R, T, P> {
    fn with(ruliad: R, params: P, capacity: usize) -> Self {
        Self { ruliad, params, state: Mutex::new(StateMap::new(capacity)) }
    }

    /// A copy of the state, to persist.
    pub fn snapshot(&self) -> StateMap<T> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Replaces the state with a saved one.
    pub fn restore(&self, state: StateMap<T>) {
        *self.state.lock().unwrap_or_else(PoisonError::into_inner) = state;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, StateMap<T>> {
        // A panic in another evaluation cannot leave the map half-written: every update is a
        // single insert or remove, so the poisoned value is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The default number of keys a stateful combinator keeps.
pub const DEFAULT_STATE_CAPACITY: usize = 100_000;

/// Parameters of [`dedupe_by_cause`].
#[derive(Debug, Clone, Copy)]
pub struct DedupeParams;

/// A cause digest fires at most once per tenant (named shape `replay-same`); see [`dedupe_by_cause`].
pub type DedupeByCause<R> = Stateful<R, DateTime<Utc>, DedupeParams>;

/// Never fires the same cause digest twice for one tenant; remembers up to `capacity` causes.
///
/// Causes are remembered per (tenant, cause): a custom ruliad that gives two tenants' signals the
/// same cause digest fires once for each tenant, never letting one tenant's signal hold back
/// another's (named shape `tenant-crosstalk`). A state saved before the tenant was part of the
/// key holds bare causes; each of those still holds back that cause for every tenant (the saved
/// behaviour, never a replay) until it is evicted.
pub fn dedupe_by_cause<R>(ruliad: R, capacity: usize) -> DedupeByCause<R> {
    Stateful::with(ruliad, DedupeParams, capacity)
}

impl<E: ?Sized, R: Ruliad<E>> Ruliad<E> for DedupeByCause<R> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let evaluation = self.ruliad.evaluate(now, entity);
        // Only the cause is read: the `because` line stays unrendered.
        let Some(signal) = evaluation.raw_signal() else { return evaluation };
        let cause = signal.cause().to_hex();
        // A tenant id never holds the separator (`a-z`, `0-9`, `-`, `_`), and a cause is 64 hex
        // digits: the key names one (tenant, cause) only.
        let key = [signal.tenant().as_str(), "\u{1f}", &cause].concat();
        let mut state = self.lock();
        // A bare cause comes from a state saved before the tenant was part of the key.
        if let Some(first) = state.get(&key).or_else(|| state.get(&cause)).copied() {
            let (_, explanation) = evaluation.into_parts();
            let guard = Predicate::custom("cause first fired", first, Op::Eq, Value::Missing, false);
            return Evaluation::stopped(guard, explanation);
        }
        state.insert(key, now, now);
        evaluation
    }
}

/// Parameters of [`at_most`].
#[derive(Debug, Clone, Copy)]
pub struct AtMostParams {
    limit: u32,
    per: TimeDelta,
}

/// At most n signals per entity per window; see [`at_most`].
pub type AtMost<R> = Stateful<R, VecDeque<DateTime<Utc>>, AtMostParams>;

/// Fires at most `limit` times per entity in any window of length `per`.
pub fn at_most<R>(ruliad: R, limit: u32, per: TimeDelta) -> AtMost<R> {
    Stateful::with(ruliad, AtMostParams { limit, per }, DEFAULT_STATE_CAPACITY)
}

impl<E: Entity + ?Sized, R: Ruliad<E>> Ruliad<E> for AtMost<R> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let evaluation = self.ruliad.evaluate(now, entity);
        if !evaluation.fired() {
            return evaluation;
        }
        let key = state_key(entity);
        let mut state = self.lock();
        let mut fired_at = state.get(&key).cloned().unwrap_or_default();
        while fired_at.front().is_some_and(|first| now - *first >= self.params.per) {
            fired_at.pop_front();
        }
        let count = i64::try_from(fired_at.len()).unwrap_or(i64::MAX);
        let predicate = Predicate::lt("fired in window", count, i64::from(self.params.limit));
        if !predicate.held {
            state.insert(key, now, fired_at);
            let (_, explanation) = evaluation.into_parts();
            return Evaluation::stopped(predicate, explanation);
        }
        fired_at.push_back(now);
        state.insert(key, now, fired_at);
        let mut evaluation = evaluation;
        evaluation.push(predicate);
        evaluation
    }
}

/// Parameters of [`pending_for`].
#[derive(Debug, Clone, Copy)]
pub struct PendingParams {
    duration: TimeDelta,
}

/// The condition must hold for a while before firing; see [`pending_for`].
pub type PendingFor<R> = Stateful<R, DateTime<Utc>, PendingParams>;

/// Fires only once `ruliad` has fired continuously for at least `duration` (an alerting rule's
/// `for:`); a single evaluation that does not fire resets the wait.
pub fn pending_for<R>(ruliad: R, duration: TimeDelta) -> PendingFor<R> {
    Stateful::with(ruliad, PendingParams { duration }, DEFAULT_STATE_CAPACITY)
}

impl<E: Entity + ?Sized, R: Ruliad<E>> Ruliad<E> for PendingFor<R> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let evaluation = self.ruliad.evaluate(now, entity);
        let key = state_key(entity);
        let mut state = self.lock();
        if !evaluation.fired() {
            state.remove(&key);
            return evaluation;
        }
        let since = state.get(&key).copied().unwrap_or(now);
        state.insert(key, since, since);
        let predicate = Predicate::ge("pending", now - since, self.params.duration);
        let mut evaluation = evaluation;
        if predicate.held {
            evaluation.push(predicate);
            evaluation
        } else {
            let (_, explanation) = evaluation.into_parts();
            Evaluation::stopped(predicate, explanation)
        }
    }
}

/// Parameters of [`keep_firing_for`].
#[derive(Debug, Clone, Copy)]
pub struct KeepFiringParams {
    duration: TimeDelta,
}

/// The last signal and when the inner ruliad last fired it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latched {
    /// The last signal fired.
    pub signal: Signal,
    /// When the inner ruliad last fired.
    pub at: DateTime<Utc>,
}

/// Keeps firing for a while after the condition cleared; see [`keep_firing_for`].
pub type KeepFiringFor<R> = Stateful<R, Latched, KeepFiringParams>;

/// After `ruliad` stops firing, keeps returning its last signal for `duration` (an alerting rule's
/// `keep_firing_for:`), so that a value dipping for one evaluation does not resolve it.
pub fn keep_firing_for<R>(ruliad: R, duration: TimeDelta) -> KeepFiringFor<R> {
    Stateful::with(ruliad, KeepFiringParams { duration }, DEFAULT_STATE_CAPACITY)
}

impl<E: Entity + ?Sized, R: Ruliad<E>> Ruliad<E> for KeepFiringFor<R> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let evaluation = self.ruliad.evaluate(now, entity);
        let key = state_key(entity);
        let mut state = self.lock();
        if let Some(signal) = evaluation.signal() {
            state.insert(key, now, Latched { signal: signal.clone(), at: now });
            return evaluation;
        }
        match state.get(&key).cloned() {
            Some(latched) => {
                let predicate = Predicate::lt("cleared for", now - latched.at, self.params.duration);
                if predicate.held {
                    let (_, mut explanation) = evaluation.into_parts();
                    explanation.push(predicate);
                    Evaluation::new(Outcome::Fired(Box::new(latched.signal)), explanation)
                } else {
                    state.remove(&key);
                    evaluation
                }
            }
            None => evaluation,
        }
    }
}

/// Parameters of [`hysteresis`]: the clear condition.
#[derive(Debug)]
pub struct HysteresisParams<C> {
    clear: C,
}

/// Fires on the ruliad's condition and clears only on a separate, lower condition; see
/// [`hysteresis`].
pub type Hysteresis<R, C> = Stateful<R, Latched, HysteresisParams<C>>;

/// Once `ruliad` fires, keeps firing its last signal until `clear` holds, so that a value
/// hovering at the threshold does not flap.
pub fn hysteresis<R, C>(ruliad: R, clear: C) -> Hysteresis<R, C> {
    Stateful::with(ruliad, HysteresisParams { clear }, DEFAULT_STATE_CAPACITY)
}

impl<E: Entity + ?Sized, R: Ruliad<E>, C: Condition<E>> Ruliad<E> for Hysteresis<R, C> {
    fn name(&self) -> &str {
        self.ruliad.name()
    }
    fn class(&self) -> Class {
        self.ruliad.class()
    }
    fn labels(&self) -> &[&'static str] {
        self.ruliad.labels()
    }
    fn applies_to(&self, entity: &E) -> bool {
        self.ruliad.applies_to(entity)
    }
    fn applies_per_variant(&self) -> bool {
        self.ruliad.applies_per_variant()
    }
    fn evaluate(&self, now: DateTime<Utc>, entity: &E) -> Evaluation {
        let evaluation = self.ruliad.evaluate(now, entity);
        let key = state_key(entity);
        let mut state = self.lock();
        if let Some(signal) = evaluation.signal() {
            state.insert(key, now, Latched { signal: signal.clone(), at: now });
            return evaluation;
        }
        let Some(latched) = state.get(&key).cloned() else { return evaluation };
        let mut why = Explain::new();
        if self.params.clear.check(now, entity, &mut why) {
            state.remove(&key);
            return evaluation;
        }
        let (_, mut explanation) = evaluation.into_parts();
        explanation.push(Predicate::custom("clear condition", false, Op::Eq, true, true));
        Evaluation::new(Outcome::Fired(Box::new(latched.signal)), explanation)
    }
}
