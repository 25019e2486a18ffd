//! The engine: a fixed set of ruliads evaluated over batches of entities.

use std::fmt;
use std::mem::Discriminant;

use chrono::{DateTime, Utc};
use sos_core::Signal;

use crate::error::Result;
use crate::explain::{Batch, Because, Evaluation, Explain, Explanation, trace_enabled, with_trace};
use crate::gate::{Gate, Round};
use crate::ruliad::{Class, Ruliad};
use crate::store::StateStore;

/// A signal fired by the engine, with where it came from and why.
///
/// With the trace on, the explanation is kept as packed data ([`Fired::explanation`]) and the
/// signal's `because` line is not rendered yet: [`Fired::into_signal`] and
/// [`Fired::render_because`] write it, and [`Gate::round`] writes it when the signal joins its
/// group (signals held back as repeats, inhibited or flapping are never rendered). Read
/// `signal` directly only for what the engine decided (id, cause, labels, subject).
///
/// The explanations of the signals fired in one batch (one range per thread) share one buffer,
/// which lives until the last of them is rendered or dropped.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The index of the entity in the batch.
    pub entity: usize,
    /// The index of the ruliad in the engine.
    pub ruliad: usize,
    /// Whether it is an insight or an intervention.
    pub class: Class,
    /// The signal; its `because` line is written by [`Fired::into_signal`] (see above).
    pub signal: Signal,
    /// The explanation whose line the signal's evidence does not hold yet.
    because: Option<Because>,
}

impl Fired {
    /// A fired signal whose evidence is complete (nothing left to render).
    pub fn new(entity: usize, ruliad: usize, class: Class, signal: Signal) -> Self {
        Self { entity, ruliad, class, signal, because: None }
    }

    /// The fired signal of `evaluation`, its `because` line left to render (as the engine keeps
    /// it); `None` when it did not fire.
    pub fn from_evaluation(
        entity: usize,
        ruliad: usize,
        class: Class,
        evaluation: Evaluation,
    ) -> Option<Self> {
        let (signal, explanation, pending) = evaluation.into_signal_and_buffer();
        let signal = *signal?;
        Some(Self { entity, ruliad, class, signal, because: pending.then(|| Because::whole(explanation)) })
    }

    /// The explanation whose `because` line is still to be written into the signal's evidence
    /// (a copy: the engine keeps it in a buffer shared with the batch's other signals); `None`
    /// when there is none (trace off) or it was written.
    pub fn explanation(&self) -> Option<Explanation> {
        self.because.as_ref().map(Because::to_explanation)
    }

    /// Writes the pending `because` line into the signal's evidence (nothing when there is
    /// none).
    pub fn render_because(&mut self) {
        if let Some(because) = self.because.take() {
            because.write_into(&mut self.signal);
        }
    }

    /// The signal, with its `because` line written.
    pub fn into_signal(mut self) -> Signal {
        self.render_because();
        self.signal
    }

    /// The signal and the explanation whose line it does not hold yet.
    pub(crate) fn into_parts(self) -> (Signal, Option<Because>) {
        (self.signal, self.because)
    }
}

/// Batches at least this large are split across threads.
pub const DEFAULT_PARALLEL_THRESHOLD: usize = 16_384;

/// Evaluates a fixed list of ruliads; it holds only what it was born with.
pub struct Engine<E> {
    ruliads: Vec<Box<dyn Ruliad<E>>>,
    parallel_threshold: usize,
    threads: usize,
}

impl<E> fmt::Debug for Engine<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("ruliads", &self.ruliads.iter().map(|ruliad| ruliad.name()).collect::<Vec<_>>())
            .field("parallel_threshold", &self.parallel_threshold)
            .field("threads", &self.threads)
            .finish()
    }
}

impl<E: Sync> Engine<E> {
    /// An engine over `ruliads`, using every available core for large batches.
    pub fn new(ruliads: Vec<Box<dyn Ruliad<E>>>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        Self { ruliads, parallel_threshold: DEFAULT_PARALLEL_THRESHOLD, threads }
    }

    /// Uses at most `threads` threads (at least 1) for batches of at least `threshold` entities.
    pub fn with_parallelism(mut self, threads: usize, threshold: usize) -> Self {
        self.threads = threads.max(1);
        self.parallel_threshold = threshold;
        self
    }

    /// The ruliads' names, in evaluation order.
    pub fn names(&self) -> Vec<&str> {
        self.ruliads.iter().map(|ruliad| ruliad.name()).collect()
    }

    /// The ruliads.
    pub fn ruliads(&self) -> &[Box<dyn Ruliad<E>>] {
        &self.ruliads
    }

    /// Every ruliad's evaluation of one entity, explanations included.
    pub fn explain(&self, now: DateTime<Utc>, entity: &E) -> Vec<(&str, Evaluation)> {
        self.ruliads.iter().map(|ruliad| (ruliad.name(), ruliad.evaluate(now, entity))).collect()
    }

    /// Evaluates every ruliad against every entity and returns the signals ordered by entity
    /// index, then ruliad index — the same order whatever the number of threads.
    pub fn evaluate_batch(&self, now: DateTime<Utc>, entities: &[E]) -> Vec<Fired> {
        if self.threads <= 1 || entities.len() < self.parallel_threshold {
            return self.evaluate_range(now, entities, 0);
        }
        let chunk = entities.len().div_ceil(self.threads);
        let trace = trace_enabled();
        std::thread::scope(|scope| {
            let workers: Vec<_> = entities
                .chunks(chunk)
                .enumerate()
                .map(|(index, part)| {
                    scope.spawn(move || with_trace(trace, || self.evaluate_range(now, part, index * chunk)))
                })
                .collect();
            let mut fired = Vec::new();
            for worker in workers {
                match worker.join() {
                    Ok(mut part) => fired.append(&mut part),
                    // A ruliad panicked: re-raise it on the caller's thread rather than return a
                    // silently incomplete batch.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            fired
        })
    }

    /// The one path from state to people: evaluates every ruliad against every entity
    /// ([`Engine::evaluate_batch`]) and hands everything that fired to `gate`
    /// ([`Gate::round`]), which claims causes in `store`. Returns what goes out now and every
    /// signal held back or delayed, with its reason.
    ///
    /// # Errors
    ///
    /// Whatever the store returns; nothing is lost (see [`Gate::round`]).
    pub async fn run<S: StateStore>(
        &self,
        gate: &mut Gate,
        store: &S,
        now: DateTime<Utc>,
        entities: &[E],
    ) -> Result<Round> {
        let fired = self.evaluate_batch(now, entities);
        gate.round(store, now, fired).await
    }

    fn evaluate_range(&self, now: DateTime<Utc>, entities: &[E], offset: usize) -> Vec<Fired> {
        let mut fired = Vec::new();
        // One recorder for the whole range, passed down to every evaluation and emptied between
        // two: no per-evaluation buffer to take from and hand back to a thread-local.
        let mut why = Explain::new();
        // The explanations of the signals that fire, in one buffer for the range (trace on).
        let mut batch = Batch::default();
        // Which ruliads to try for each variant of `E` met so far: a ruliad whose `applies_to`
        // depends only on the variant is asked once per variant here, not once per entity; the
        // others stay in the plan with `check` set and are asked per entity. Batches usually
        // hold one or a few variants, so the last plan used is tried first.
        let mut plans: Vec<Plan<'_, E>> = Vec::new();
        let mut last = usize::MAX;
        for (index, entity) in entities.iter().enumerate() {
            let variant = std::mem::discriminant(entity);
            if plans.get(last).is_none_or(|plan| plan.variant != variant) {
                last = match plans.iter().position(|plan| plan.variant == variant) {
                    Some(found) => found,
                    None => self.add_plan(&mut plans, variant, entity),
                };
            }
            let Some(plan) = plans.get(last) else { continue };
            for step in &plan.steps {
                if step.check && !step.ruliad.applies_to(entity) {
                    continue;
                }
                why.reset();
                if let Some(signal) = step.ruliad.evaluate_into(now, entity, &mut why) {
                    keep(
                        &mut fired,
                        offset + index,
                        step.index,
                        step.ruliad.class(),
                        signal,
                        &why,
                        &mut batch,
                    );
                }
            }
        }
        why.recycle();
        batch.flush(|index, because| attach(&mut fired, index, because));
        fired
    }

    /// Adds the plan of `entity`'s variant; returns its index. Out of line: it runs once per
    /// variant.
    #[cold]
    #[inline(never)]
    fn add_plan<'a>(&'a self, plans: &mut Vec<Plan<'a, E>>, variant: Discriminant<E>, entity: &E) -> usize {
        let steps = self
            .ruliads
            .iter()
            .enumerate()
            .filter_map(|(index, ruliad)| {
                let ruliad: &dyn Ruliad<E> = &**ruliad;
                if !ruliad.applies_per_variant() {
                    return Some(Step { ruliad, index, check: true });
                }
                ruliad.applies_to(entity).then_some(Step { ruliad, index, check: false })
            })
            .collect();
        plans.push(Plan { variant, steps });
        plans.len() - 1
    }
}

/// Keeps a fired signal: its explanation, when its `because` line is still to be written, is
/// copied as data into the range's `batch` (the recorder is reused), and the signal gets its
/// range of a shared buffer once that buffer is full or the range ends. Out of line: few
/// evaluations fire, and a smaller loop keeps the hot path inlined.
#[cold]
#[inline(never)]
fn keep(
    fired: &mut Vec<Fired>,
    entity: usize,
    ruliad: usize,
    class: Class,
    signal: Signal,
    why: &Explain,
    batch: &mut Batch,
) {
    if why.because_pending() {
        let at = fired.len();
        batch.keep(at, why, |index, because| attach(fired, index, because));
    }
    fired.push(Fired { entity, ruliad, class, signal, because: None });
}

/// Gives the signal at `index` of `fired` its explanation.
fn attach(fired: &mut [Fired], index: usize, because: Because) {
    if let Some(signal) = fired.get_mut(index) {
        signal.because = Some(because);
    }
}

/// The ruliads to try for one variant of the batch's entities, in the engine's order.
struct Plan<'a, E> {
    variant: Discriminant<E>,
    steps: Vec<Step<'a, E>>,
}

/// One ruliad of a plan, its index in the engine, and whether its `applies_to` must still be
/// asked per entity.
struct Step<'a, E> {
    ruliad: &'a dyn Ruliad<E>,
    index: usize,
    check: bool,
}
