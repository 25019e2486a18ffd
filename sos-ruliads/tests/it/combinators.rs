use chrono::{DateTime, TimeDelta, Utc};
use sos_ruliads::combinators::Condition;
use sos_ruliads::combinators::{
    StateMap, all, any, at_most, condition, dedupe_by_cause, first_of, hysteresis, keep_firing_for,
    map_signal, not, pending_for, unless, when,
};
use sos_ruliads::crm::{Record, Stage};
use sos_ruliads::{Draft, Evaluation, Explain, Predicate, Ruliad, catalog};

use crate::{at, deal};

fn stale() -> Box<dyn Ruliad<Record>> {
    catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults")
}

fn is_stage(stage: Stage) -> impl Fn(DateTime<Utc>, &Record) -> Predicate + Send + Sync {
    move |_, record| match record {
        Record::Deal(deal) => Predicate::eq("stage", deal.stage.known_name(), stage.known_name()),
        _ => Predicate::is_true("deal", false),
    }
}

/// Fires whenever the deal's value is at least `threshold` cents.
#[derive(Debug)]
struct ValueAtLeast(i64);

impl Ruliad<Record> for ValueAtLeast {
    fn name(&self) -> &str {
        "value-at-least"
    }
    fn evaluate(&self, now: DateTime<Utc>, record: &Record) -> Evaluation {
        let mut why = Explain::new();
        let Record::Deal(deal) = record else { return why.stop() };
        if !why.check(Predicate::ge("value", deal.value_cents.unwrap_or(0), self.0)) {
            return why.stop();
        }
        why.label("deal_id", deal.id.clone());
        why.fire(Draft::new(&deal.tenant, "value-at-least", now).subject("Deal").text("Big."))
    }
}

fn valued(value: i64) -> Record {
    let mut record = deal("d1", Stage::Proposal, Some(1));
    if let Record::Deal(deal) = &mut record {
        deal.value_cents = Some(value);
    }
    record
}

#[test]
fn all_any_not_combine_conditions() {
    let negotiation = || condition("negotiation", is_stage(Stage::Negotiation));
    let discovery = || condition("discovery", is_stage(Stage::Discovery));
    let entity = deal("d1", Stage::Negotiation, Some(1));
    let mut why = Explain::new();
    assert!(all::<Record>(vec![Box::new(negotiation()), Box::new(not(discovery()))]).check(
        at(10, 9),
        &entity,
        &mut why
    ));
    assert!(!all::<Record>(vec![Box::new(negotiation()), Box::new(discovery())]).check(
        at(10, 9),
        &entity,
        &mut why
    ));
    assert!(all::<Record>(vec![]).check(at(10, 9), &entity, &mut why));
    assert!(any::<Record>(vec![Box::new(discovery()), Box::new(negotiation())]).check(
        at(10, 9),
        &entity,
        &mut why
    ));
    assert!(!any::<Record>(vec![Box::new(discovery())]).check(at(10, 9), &entity, &mut why));
    assert!(!any::<Record>(vec![]).check(at(10, 9), &entity, &mut why));
}

#[test]
fn when_and_unless_gate_a_ruliad_and_name_the_guard() {
    let only_negotiation = when(condition("negotiation", is_stage(Stage::Negotiation)), stale());
    assert!(only_negotiation.evaluate(at(10, 9), &deal("d1", Stage::Negotiation, Some(1))).fired());
    let stopped = only_negotiation.evaluate(at(10, 9), &deal("d1", Stage::Discovery, Some(1)));
    assert_eq!(stopped.guard().expect("stopped").name, "stage");
    assert!(stopped.explain().starts_with("stage discovery = negotiation (failed)"));

    let except_negotiation = unless(condition("negotiation", is_stage(Stage::Negotiation)), stale());
    assert!(!except_negotiation.evaluate(at(10, 9), &deal("d1", Stage::Negotiation, Some(1))).fired());
    assert!(except_negotiation.evaluate(at(10, 9), &deal("d1", Stage::Discovery, Some(1))).fired());
}

#[test]
fn first_of_takes_the_first_that_fires() {
    let priority = first_of("big-or-stale", vec![Box::new(ValueAtLeast(1_000)), stale()]);
    let big = priority.evaluate(at(10, 9), &valued(5_000)).into_signal().expect("fires");
    assert_eq!(big.kind().as_str(), "value-at-least");
    let small = priority.evaluate(at(10, 9), &valued(5)).into_signal().expect("stale still fires");
    assert_eq!(small.kind().as_str(), "stale-deal-nudge");
    let none = priority.evaluate(at(2, 9), &valued(5));
    assert_eq!(none.guard().expect("stopped").name, "idle");
}

#[test]
fn map_signal_transforms_the_signal() {
    let louder = map_signal(stale(), |signal: sos_core::Signal| {
        sos_core::Signal::builder(signal.tenant().clone(), signal.kind().clone())
            .subject(signal.subject())
            .text(format!("{} Please look today.", signal.text()))
            .cause(*signal.cause())
            .build()
            .expect("still valid")
    });
    let signal =
        louder.evaluate(at(10, 9), &deal("d1", Stage::Discovery, Some(1))).into_signal().expect("fires");
    assert!(signal.text().ends_with("Please look today."));
}

mod replay_same {
    use super::*;

    #[test]
    fn dedupe_by_cause_never_fires_the_same_cause_twice() {
        let once = dedupe_by_cause(stale(), 10);
        let entity = deal("d1", Stage::Discovery, Some(1));
        assert!(once.evaluate(at(10, 9), &entity).fired());
        let replay = once.evaluate(at(11, 9), &entity);
        assert_eq!(replay.guard().expect("stopped").name, "cause first fired");
        assert!(once.evaluate(at(10, 9), &deal("d2", Stage::Discovery, Some(1))).fired());
        // A new idle episode is a new cause.
        assert!(once.evaluate(at(20, 9), &deal("d1", Stage::Discovery, Some(12))).fired());
    }

    #[test]
    fn dedupe_state_survives_a_restart_through_serde() {
        let before = dedupe_by_cause(stale(), 10);
        let entity = deal("d1", Stage::Discovery, Some(1));
        assert!(before.evaluate(at(10, 9), &entity).fired());
        let saved = serde_json::to_string(&before.snapshot()).expect("serializes");
        let after = dedupe_by_cause(stale(), 10);
        after.restore(serde_json::from_str(&saved).expect("deserializes"));
        assert!(!after.evaluate(at(10, 9), &entity).fired());
    }
}

/// Named shape `tenant-crosstalk`: state keyed without its tenant lets one tenant's signal hold
/// back another tenant's.
mod tenant_crosstalk {
    use sos_core::{Sha256Digest, Signal, TenantId};

    use super::*;

    /// The stale-deal rule with every cause replaced by one digest: a custom ruliad whose cause
    /// ignores the tenant.
    fn same_cause_for_everyone() -> impl Ruliad<Record> {
        map_signal(stale(), |signal: Signal| {
            Signal::builder(signal.tenant().clone(), signal.kind().clone())
                .subject(signal.subject())
                .text(signal.text())
                .cause(Sha256Digest::of(b"one cause for every tenant"))
                .build()
                .expect("still valid")
        })
    }

    fn of_tenant(tenant: &str, record: Record) -> Record {
        let Record::Deal(mut deal) = record else { unreachable!("a deal") };
        deal.tenant = tenant.parse::<TenantId>().expect("valid tenant");
        Record::Deal(deal)
    }

    #[test]
    fn tenant_crosstalk_dedupe_by_cause_keeps_tenants_apart() {
        let once = dedupe_by_cause(same_cause_for_everyone(), 10);
        let acme = of_tenant("acme", deal("d1", Stage::Discovery, Some(1)));
        let globex = of_tenant("globex", deal("d1", Stage::Discovery, Some(1)));
        assert!(once.evaluate(at(10, 9), &acme).fired());
        // The same cause digest for another tenant is that tenant's first: it fires.
        let other = once.evaluate(at(10, 10), &globex);
        assert!(other.fired(), "acme's cause held back globex's signal: {}", other.explain());
        // Within each tenant the cause still fires once (`replay-same`).
        for entity in [&acme, &globex] {
            let replay = once.evaluate(at(11, 9), entity);
            assert_eq!(replay.guard().expect("stopped").name, "cause first fired");
        }
    }

    #[test]
    fn tenant_crosstalk_dedupe_state_saved_with_bare_causes_still_holds_them_back() {
        // A state saved before the tenant was part of the key: a bare cause, of unknown tenant,
        // keeps holding that cause back for every tenant (never a replay) until evicted.
        let cause = Sha256Digest::of(b"one cause for every tenant").to_hex();
        let saved = serde_json::json!({
            "capacity": 10,
            "entries": { cause: { "touched": "2026-03-10T09:00:00Z", "value": "2026-03-10T09:00:00Z" } }
        });
        let once = dedupe_by_cause(same_cause_for_everyone(), 10);
        once.restore(serde_json::from_value(saved).expect("the saved format loads"));
        for tenant in ["acme", "globex"] {
            let entity = of_tenant(tenant, deal("d1", Stage::Discovery, Some(1)));
            let replay = once.evaluate(at(11, 9), &entity);
            assert_eq!(replay.guard().expect("stopped").name, "cause first fired", "{tenant}");
        }
    }
}

#[test]
fn state_is_bounded() {
    let once = dedupe_by_cause(stale(), 3);
    for index in 0..10 {
        assert!(once.evaluate(at(10, 9), &deal(&format!("d{index}"), Stage::Discovery, Some(1))).fired());
    }
    assert_eq!(once.snapshot().len(), 3);
    let mut map: StateMap<u32> = StateMap::new(2);
    map.insert("a".into(), at(1, 0), 1);
    map.insert("b".into(), at(2, 0), 2);
    map.insert("c".into(), at(3, 0), 3);
    assert_eq!((map.get("a"), map.get("b"), map.get("c")), (None, Some(&2), Some(&3)));
}

#[test]
fn at_most_limits_per_entity_per_window() {
    let limited = at_most(stale(), 2, TimeDelta::days(7));
    let entity = deal("d1", Stage::Discovery, Some(1));
    assert!(limited.evaluate(at(10, 9), &entity).fired());
    assert!(limited.evaluate(at(11, 9), &entity).fired());
    let third = limited.evaluate(at(12, 9), &entity);
    assert_eq!(third.guard().expect("stopped").name, "fired in window");
    assert!(limited.evaluate(at(12, 9), &deal("d2", Stage::Discovery, Some(1))).fired());
    assert!(limited.evaluate(at(17, 9), &entity).fired(), "the window slid past the first");
}

#[test]
fn pending_for_waits_for_the_condition_to_hold() {
    let patient = pending_for(stale(), TimeDelta::days(2));
    let entity = deal("d1", Stage::Discovery, Some(1));
    let first = patient.evaluate(at(10, 9), &entity);
    assert_eq!(first.guard().expect("pending").name, "pending");
    assert!(!patient.evaluate(at(11, 9), &entity).fired());
    assert!(patient.evaluate(at(12, 9), &entity).fired());
    // Activity resets the wait.
    assert!(!patient.evaluate(at(13, 9), &deal("d1", Stage::Discovery, Some(13))).fired());
    assert!(!patient.evaluate(at(21, 9), &deal("d1", Stage::Discovery, Some(13))).fired());
}

#[test]
fn keep_firing_for_bridges_a_short_dip() {
    let sticky = keep_firing_for(ValueAtLeast(1_000), TimeDelta::hours(12));
    assert!(sticky.evaluate(at(10, 9), &valued(1_500)).fired());
    let dip = sticky.evaluate(at(10, 15), &valued(900));
    assert!(dip.fired(), "{}", dip.explain());
    assert!(!sticky.evaluate(at(10, 22), &valued(900)).fired());
}

#[test]
fn hysteresis_clears_only_below_the_lower_threshold() {
    let clear = condition("clear", |_, record: &Record| match record {
        Record::Deal(deal) => Predicate::lt("value", deal.value_cents.unwrap_or(0), 800),
        _ => Predicate::is_true("deal", false),
    });
    let steady = hysteresis(ValueAtLeast(1_000), clear);
    let mut fired = Vec::new();
    for (hour, value) in [(1, 1_010), (2, 990), (3, 1_005), (4, 995), (5, 850), (6, 790), (7, 990)] {
        fired.push(steady.evaluate(at(10, hour), &valued(value)).fired());
    }
    assert_eq!(fired, [true, true, true, true, true, false, false]);
}

/// The eviction policy before it was indexed: scan every entry for the least recently touched
/// (the first, in key order, of those touched at the same time).
#[derive(Default)]
struct ScanningModel {
    capacity: usize,
    entries: std::collections::BTreeMap<String, (DateTime<Utc>, u32)>,
}

impl ScanningModel {
    fn insert(&mut self, key: String, now: DateTime<Utc>, value: u32) {
        if !self.entries.contains_key(&key) && self.entries.len() >= self.capacity {
            let oldest =
                self.entries.iter().min_by_key(|(_, (touched, _))| *touched).map(|(key, _)| key.clone());
            if let Some(oldest) = oldest {
                self.entries.remove(&oldest);
            }
        }
        self.entries.insert(key, (now, value));
    }
}

/// `StateMap` evicts by an index, not a scan: the same keys go, in the same order, as under the
/// scan it replaced, with ties, clocks that go back, re-touched and removed keys, and a state
/// saved and loaded half-way (the index is rebuilt, never saved).
#[test]
fn hash_flood_state_map_eviction_keeps_its_policy() {
    let mut map: StateMap<u32> = StateMap::new(16);
    let mut model = ScanningModel { capacity: 16, ..ScanningModel::default() };
    // A small deterministic generator: 40 keys, 8 distinct times (many ties), times going back.
    let mut state = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    };
    for step in 0..20_000_u32 {
        let key = format!("k{}", next(40));
        let now = at(1, 0) + TimeDelta::hours(next(8) as i64);
        if next(10) == 0 {
            assert_eq!(map.remove(&key), model.entries.remove(&key).map(|(_, value)| value), "step {step}");
        } else {
            map.insert(key.clone(), now, step);
            model.insert(key, now, step);
        }
        if step % 5_000 == 2_500 {
            let saved = serde_json::to_value(&map).expect("serializes");
            assert!(saved.get("by_touched").is_none(), "the index is not saved: {saved}");
            map = serde_json::from_value(saved).expect("loads");
        }
        assert_eq!(map.len(), model.entries.len(), "step {step}");
        for (key, (_, value)) in &model.entries {
            assert_eq!(map.get(key), Some(value), "step {step}: {key}");
        }
    }
}

/// An outsider feeding new causes: 300,000 of them through a map of the default capacity.
/// Each eviction scanned all 100,000 entries before (about 2·10^10 steps for this test: minutes);
/// indexed, it takes well under a second. The newest 100,000 are kept, the rest evicted oldest
/// first.
#[test]
fn hash_flood_state_map_new_keys_do_not_scan_the_map() {
    let capacity = sos_ruliads::combinators::DEFAULT_STATE_CAPACITY;
    let mut map: StateMap<u32> = StateMap::new(capacity);
    let start = at(1, 0);
    let total = 3 * capacity as u32;
    for index in 0..total {
        map.insert(format!("acme\u{1f}{index:064x}"), start + TimeDelta::seconds(i64::from(index)), index);
    }
    assert_eq!(map.len(), capacity);
    let first_kept = total - capacity as u32;
    assert_eq!(map.get(&format!("acme\u{1f}{:064x}", first_kept - 1)), None);
    assert_eq!(map.get(&format!("acme\u{1f}{first_kept:064x}")), Some(&first_kept));
    assert_eq!(map.get(&format!("acme\u{1f}{:064x}", total - 1)), Some(&(total - 1)));
}
