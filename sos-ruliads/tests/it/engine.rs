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

/// A host rule whose `applies_to` reads a field, so the engine must ask it for every entity.
#[derive(Debug)]
struct OddDealsOnly;

impl sos_ruliads::Ruliad<sos_ruliads::crm::Record> for OddDealsOnly {
    fn name(&self) -> &str {
        "odd-deals"
    }
    fn applies_to(&self, record: &sos_ruliads::crm::Record) -> bool {
        matches!(record, sos_ruliads::crm::Record::Deal(deal) if deal.id.ends_with(['1', '3', '5', '7', '9']))
    }
    fn evaluate(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        record: &sos_ruliads::crm::Record,
    ) -> sos_ruliads::Evaluation {
        let sos_ruliads::crm::Record::Deal(deal) = record else { return sos_ruliads::Explain::new().stop() };
        sos_ruliads::Explain::new().fire(
            sos_ruliads::Draft::new(&deal.tenant, "odd-deals", now)
                .subject(deal.id.clone())
                .text("An odd deal."),
        )
    }
}

/// The engine asks a catalog rule's `applies_to` once per variant of the batch (they promise it
/// depends on nothing else) and a host rule's for every entity: the signals are exactly those of
/// asking every rule about every entity, in the same order.
#[test]
fn per_variant_plans_fire_what_asking_every_entity_fires() {
    use sos_ruliads::Ruliad;
    use sos_ruliads::crm::Contact;
    let mut ruliads: Vec<Box<dyn Ruliad<sos_ruliads::crm::Record>>> =
        ["stale-deal-nudge", "contact-gone-quiet", "close-date-passed"]
            .iter()
            .map(|name| catalog::build(name, &serde_json::Value::Null).expect("defaults"))
            .collect();
    ruliads.insert(1, Box::new(OddDealsOnly));
    assert!(ruliads[0].applies_per_variant() && !ruliads[1].applies_per_variant());
    let batch: Vec<_> = (0..60)
        .map(|index| {
            if index % 3 == 0 {
                let contact: Contact = serde_json::from_value(serde_json::json!({
                    "tenant": "acme", "id": format!("c{index}"), "name": format!("Contact {index}"),
                    "last_interaction_at": "2026-01-01T09:00:00Z", "interactions": 10
                }))
                .expect("contact");
                sos_ruliads::crm::Record::Contact(contact)
            } else {
                deal(&format!("d{index}"), Stage::Negotiation, Some(1 + (index % 9) as u32))
            }
        })
        .collect();
    let expected: Vec<(usize, usize, sos_core::SignalId)> = batch
        .iter()
        .enumerate()
        .flat_map(|(entity, record)| {
            ruliads.iter().enumerate().filter(|(_, ruliad)| ruliad.applies_to(record)).filter_map(
                move |(index, ruliad)| {
                    ruliad.evaluate(at(10, 9), record).signal().map(|signal| (entity, index, signal.id()))
                },
            )
        })
        .collect();
    let engine = Engine::new(ruliads).with_parallelism(1, usize::MAX);
    let fired: Vec<_> = engine
        .evaluate_batch(at(10, 9), &batch)
        .iter()
        .map(|fired| (fired.entity, fired.ruliad, fired.signal.id()))
        .collect();
    assert!(fired.iter().any(|(_, ruliad, _)| *ruliad == 1), "the host rule fired for odd deals");
    assert!(fired.iter().any(|(_, ruliad, _)| *ruliad == 2), "the contact rule fired for contacts");
    assert_eq!(fired, expected);
}

/// The engine keeps a fired signal's explanation as data; its `because` line is the line the
/// evaluation itself shows, written when asked for, and absent with the trace off.
#[test]
fn the_because_line_is_rendered_on_demand_from_the_kept_explanation() {
    let serial = engine(1, usize::MAX);
    let entity = deal("d1", Stage::Negotiation, Some(1));
    let direct = serial.explain(at(10, 9), &entity);
    let line = direct[0].1.explain();
    assert_eq!(direct[0].1.signal().expect("fires").evidence()["because"], line.as_str());
    let mut fired = serial.evaluate_batch(at(10, 9), std::slice::from_ref(&entity));
    let first = fired.remove(0);
    assert!(first.signal.evidence().get("because").is_none(), "not rendered while evaluating");
    assert_eq!(first.explanation().map(|explanation| explanation.to_string()), Some(line.clone()));
    let signal = first.clone().into_signal();
    assert_eq!(signal.evidence()["because"], line.as_str());
    assert_eq!(signal.id(), first.signal.id());
    let mut rendered = first;
    rendered.render_because();
    assert!(rendered.explanation().is_none());
    assert_eq!(rendered.signal, signal);
    let quiet = with_trace(false, || serial.evaluate_batch(at(10, 9), std::slice::from_ref(&entity)));
    assert!(quiet[0].explanation().is_none());
    assert!(quiet[0].clone().into_signal().evidence().get("because").is_none());
}

/// One recorder passed down and reused across evaluations (the engine's path) says exactly what
/// each rule's own `evaluate` says: the same signal, the same guard, the same predicates, and a
/// pending `because` line only with the trace on; a host rule that implements only `evaluate`
/// goes through the default `evaluate_into`.
#[test]
fn a_reused_recorder_says_what_evaluate_says() {
    use sos_ruliads::{Explain, Ruliad};
    let mut ruliads: Vec<Box<dyn Ruliad<sos_ruliads::crm::Record>>> = [
        "stale-deal-nudge",
        "close-date-passed",
        "stuck-in-stage",
        "hot-opportunity-flag",
        "contact-gone-quiet",
    ]
    .iter()
    .map(|name| catalog::build(name, &serde_json::Value::Null).expect("defaults"))
    .collect();
    ruliads.push(Box::new(OddDealsOnly));
    let stages = [Stage::Discovery, Stage::ClosedWon, Stage::Other("pilot".into()), Stage::Negotiation];
    let batch: Vec<_> = (0..40)
        .map(|index| deal(&format!("d{index}"), stages[index % 4].clone(), Some(1 + (index % 12) as u32)))
        .collect();
    for trace in [true, false] {
        with_trace(trace, || {
            let mut why = Explain::new();
            let (mut fired, mut stopped) = (0, 0);
            for record in &batch {
                for ruliad in &ruliads {
                    why.reset();
                    let signal = ruliad.evaluate_into(at(10, 9), record, &mut why);
                    let direct = ruliad.evaluate(at(10, 9), record);
                    assert_eq!(why.explanation(), direct.explanation(), "{}", ruliad.name());
                    match signal {
                        Some(signal) => {
                            fired += 1;
                            let expected = direct.into_signal().expect("fired too");
                            assert_eq!(signal.id(), expected.id());
                            assert_eq!(why.because_pending(), trace);
                            assert!(signal.evidence().get("because").is_none());
                            assert_eq!(
                                expected.evidence().get("because").and_then(|line| line.as_str()),
                                trace.then(|| why.explanation().to_string()).as_deref()
                            );
                        }
                        None => {
                            stopped += 1;
                            assert!(!why.because_pending());
                            let guard = why.guard().expect("a stopped evaluation names its guard");
                            assert_eq!(Some(guard.name), direct.guard().map(|guard| guard.name));
                        }
                    }
                }
            }
            assert!(fired > 0 && stopped > 0, "both outcomes were checked: {fired} fired, {stopped} stopped");
        });
    }
}

/// The signals fired in one batch keep their explanations in shared buffers (of 1,024 predicates,
/// per thread's range): each still reads as its own evaluation's, interned text (a host's stage
/// name) included, and renders the same `because` line, on one thread and on several, across
/// the buffers' boundaries.
#[test]
fn signals_of_one_batch_keep_their_own_explanations() {
    use sos_ruliads::Ruliad;
    let build = || -> Vec<Box<dyn Ruliad<sos_ruliads::crm::Record>>> {
        let mut ruliads: Vec<Box<dyn Ruliad<sos_ruliads::crm::Record>>> =
            ["stale-deal-nudge", "close-date-passed", "stuck-in-stage", "hot-opportunity-flag"]
                .iter()
                .map(|name| catalog::build(name, &serde_json::Value::Null).expect("defaults"))
                .collect();
        ruliads.push(Box::new(OddDealsOnly));
        ruliads
    };
    let stages = [Stage::Discovery, Stage::Other("pilot".into()), Stage::Negotiation];
    // Idle 8 or 9 days: every deal fires the stale-deal nudge, with three predicates.
    let batch: Vec<_> = (0..1_500)
        .map(|index| deal(&format!("d{index}"), stages[index % 3].clone(), Some(1 + (index % 2) as u32)))
        .collect();
    let direct = build();
    for threads in [1, 3] {
        let engine = Engine::new(build()).with_parallelism(threads, 1);
        let fired = engine.evaluate_batch(at(10, 9), &batch);
        let predicates: usize = fired
            .iter()
            .filter_map(sos_ruliads::engine::Fired::explanation)
            .map(|explanation| explanation.len())
            .sum();
        assert!(predicates > 3 * 1_024, "enough to fill several buffers: {predicates} predicates");
        let interned = fired
            .iter()
            .filter_map(sos_ruliads::engine::Fired::explanation)
            .filter(|explanation| explanation.to_string().contains("pilot"))
            .count();
        assert!(interned > 0, "some explanations hold interned text");
        for signal in fired {
            let evaluation = direct[signal.ruliad].evaluate(at(10, 9), &batch[signal.entity]);
            assert_eq!(signal.explanation().as_ref(), Some(evaluation.explanation()));
            let expected = evaluation.into_signal().expect("fired directly too");
            assert_eq!(signal.into_signal(), expected);
        }
    }
}

/// Review of the shared explanation buffers: records many predicates on some deals (more than
/// one buffer holds, in one explanation) and one on the others, with run-time text holding
/// format directives and multi-byte characters.
#[derive(Debug)]
struct Verbose;

impl sos_ruliads::Ruliad<sos_ruliads::crm::Record> for Verbose {
    fn name(&self) -> &str {
        "verbose"
    }
    fn evaluate(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        record: &sos_ruliads::crm::Record,
    ) -> sos_ruliads::Evaluation {
        use sos_ruliads::{Op, Predicate};
        let mut why = sos_ruliads::Explain::new();
        let sos_ruliads::crm::Record::Deal(deal) = record else { return why.stop() };
        let many = if deal.id.ends_with('0') { 1_500 } else { 1 };
        for step in 0..many {
            let word = why.text(&format!("{{stage}} %s ünï 🦀 {}#{step}", deal.id));
            why.check(Predicate::custom("step", word, Op::Ne, "closed", true));
        }
        why.fire(
            sos_ruliads::Draft::new(&deal.tenant, "verbose", now).subject(deal.id.clone()).text("{0} %s"),
        )
    }
}

/// An explanation larger than one shared buffer, run-time text with `{`, `%s` and multi-byte
/// characters (shape `format-injection`), one and two threads: every signal the engine fired
/// carries exactly its own explanation and renders the `because` line `evaluate` gives, and a
/// clone renders it too after the batch's other signals are gone.
#[test]
fn an_explanation_larger_than_a_shared_buffer_stays_whole_and_its_own() {
    use sos_ruliads::Ruliad;
    let batch: Vec<_> =
        (0..40).map(|index| deal(&format!("d{index}"), Stage::Negotiation, Some(1))).collect();
    for threads in [1, 2] {
        let engine = Engine::new(vec![Box::new(Verbose) as Box<dyn Ruliad<_>>]).with_parallelism(threads, 1);
        let fired = engine.evaluate_batch(at(10, 9), &batch);
        assert_eq!(fired.len(), batch.len(), "every deal fires");
        let largest = fired.iter().filter_map(|signal| signal.explanation()).map(|e| e.len()).max();
        assert_eq!(largest, Some(1_500), "one explanation fills more than a buffer");
        let clones: Vec<_> = fired.iter().step_by(7).cloned().collect();
        for signal in fired {
            let evaluation = Verbose.evaluate(at(10, 9), &batch[signal.entity]);
            assert_eq!(signal.explanation().as_ref(), Some(evaluation.explanation()), "{threads} thread(s)");
            assert_eq!(signal.into_signal(), evaluation.into_signal().expect("fires directly too"));
        }
        for clone in clones {
            let expected = Verbose.evaluate(at(10, 9), &batch[clone.entity]).into_signal().expect("fires");
            let rendered = clone.into_signal();
            assert!(
                rendered.evidence().to_string().contains("%s ünï 🦀"),
                "the run-time text is shown as written"
            );
            assert_eq!(rendered, expected, "a clone outlives its batch's other signals");
        }
    }
}
