use sos_ruliads::crm::Stage;
use sos_ruliads::engine::Engine;
use sos_ruliads::{catalog, with_trace};

use crate::{at, deal};

fn engine(threads: usize, threshold: usize) -> Engine<sos_ruliads::crm::Record> {
    let ruliads = ["stale-deal-nudge", "close-date-passed", "stuck-in-stage"]
        .iter()
        .map(|name| catalog::build(name, &serde_json::Value::Null).expect("defaults"))
        .collect();
    Engine::new(ruliads).with_parallelism(threads, threshold)
}

#[test]
fn parallel_and_serial_batches_give_the_same_signals_in_the_same_order() {
    let stages = [Stage::Discovery, Stage::Negotiation, Stage::ClosedWon, Stage::Proposal];
    let batch: Vec<_> = (0..5_000)
        .map(|index| deal(&format!("d{index}"), stages[index % 4].clone(), Some(1 + (index % 9) as u32)))
        .collect();
    let serial = engine(1, usize::MAX).evaluate_batch(at(10, 9), &batch);
    let parallel = engine(2, 16).evaluate_batch(at(10, 9), &batch);
    let four = engine(4, 16).evaluate_batch(at(10, 9), &batch);
    assert!(!serial.is_empty());
    assert_eq!(serial, parallel);
    assert_eq!(serial, four);
    assert!(
        serial.windows(2).all(|pair| (pair[0].entity, pair[0].ruliad) < (pair[1].entity, pair[1].ruliad))
    );
}

#[test]
fn trace_off_keeps_the_guard_and_drops_the_held_predicates() {
    let serial = engine(1, usize::MAX);
    let entity = deal("d1", Stage::Discovery, Some(1));
    let traced = serial.explain(at(10, 9), &entity);
    let quiet = with_trace(false, || serial.explain(at(10, 9), &entity));
    assert_eq!(traced[0].1.explanation().len(), 3);
    assert!(quiet[0].1.explanation().is_empty());
    assert_eq!(traced[0].1.signal().map(|s| s.id()), quiet[0].1.signal().map(|s| s.id()));
    assert!(quiet[0].1.signal().expect("fires").evidence().get("because").is_none());
    assert_eq!(quiet[1].1.guard().map(|g| g.name), traced[1].1.guard().map(|g| g.name));
    // Parallel workers inherit the caller's trace setting.
    let batch = vec![entity; 64];
    let fired = with_trace(false, || engine(2, 8).evaluate_batch(at(10, 9), &batch));
    assert!(fired.iter().all(|fired| fired.signal.evidence().get("because").is_none()));
}
