//! The engine: a fixed set of ruliads evaluated over batches of entities.

use std::fmt;

use chrono::{DateTime, Utc};
use sos_core::Signal;

use crate::error::Result;
use crate::explain::{Evaluation, recycle, trace_enabled, with_trace};
use crate::gate::{Gate, Round};
use crate::ruliad::{Class, Ruliad};
use crate::store::StateStore;

/// A signal fired by the engine, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct Fired {
    /// The index of the entity in the batch.
    pub entity: usize,
    /// The index of the ruliad in the engine.
    pub ruliad: usize,
    /// Whether it is an insight or an intervention.
    pub class: Class,
    /// The signal.
    pub signal: Signal,
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
        for (index, entity) in entities.iter().enumerate() {
            for (ruliad_index, ruliad) in self.ruliads.iter().enumerate() {
                if !ruliad.applies_to(entity) {
                    continue;
                }
                let (signal, explanation) = ruliad.evaluate(now, entity).into_signal_and_buffer();
                recycle(explanation);
                if let Some(signal) = signal {
                    fired.push(Fired {
                        entity: offset + index,
                        ruliad: ruliad_index,
                        class: ruliad.class(),
                        signal: *signal,
                    });
                }
            }
        }
        fired
    }
}
