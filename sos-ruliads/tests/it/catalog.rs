use sos_ruliads::catalog::{self, NAMES};
use sos_ruliads::crm::Stage;
use sos_ruliads::fixture::{self, FixtureFile};
use sos_ruliads::{Error, Ruliad};

use crate::{at, crate_path, deal};

#[test]
fn every_catalog_fixture_passes() {
    for name in NAMES {
        let path = crate_path(&format!("fixtures/{name}.json"));
        let report = catalog::check_fixture_file(&path).unwrap_or_else(|error| panic!("{error}"));
        assert!(report.cases.len() >= 4, "{name} has too few cases");
    }
}

#[test]
fn catalog_has_at_least_twelve_ruliads_each_with_firing_and_silent_fixtures() {
    assert!(NAMES.len() >= 12);
    for name in NAMES {
        let path = crate_path(&format!("fixtures/{name}.json"));
        let fixture: FixtureFile<sos_ruliads::crm::Record> = fixture::load(&path).expect("fixture parses");
        assert_eq!(fixture.ruliad, *name);
        assert!(fixture.tests.iter().any(|case| !case.expect.is_empty()), "{name} has no firing case");
        assert!(fixture.tests.iter().any(|case| case.expect.is_empty()), "{name} has no silent case");
        let ruliad = catalog::build(name, &serde_json::Value::Null).expect("defaults are valid");
        assert_eq!(ruliad.name(), *name);
    }
}

#[test]
fn a_failing_fixture_reports_the_case_and_the_explanation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("wrong.json");
    let text = r#"{"ruliad":"stale-deal-nudge","tests":[{"name":"claims a signal","eval_time":"2026-03-10T09:00:00Z",
      "entity":{"deal":{"tenant":"acme","id":"d1","contact_name":"Acme","stage":"discovery","last_action_at":"2026-03-09T09:00:00Z"}},
      "expect":[{"kind":"stale-deal-nudge"}]}]}"#;
    std::fs::write(&path, text).expect("write");
    let error = catalog::check_fixture_file(&path).expect_err("the case must fail").to_string();
    assert!(error.contains("claims a signal"), "{error}");
    assert!(error.contains("idle 1 d > 7 d (failed)"), "{error}");
}

#[test]
fn parameters_are_validated_at_construction() {
    let cases = [
        ("stale-deal-nudge", serde_json::json!({"stale_days": 0}), "stale_days"),
        ("stale-deal-nudge", serde_json::json!({"stage_days": {"negotiation": 0}}), "stage_days.negotiation"),
        ("stale-deal-nudge", serde_json::json!({"stale_dayz": 3}), "stale_dayz"),
        ("stale-deal-nudge", serde_json::json!({"stale_days": "seven"}), "params"),
        ("hot-opportunity-flag", serde_json::json!({"min_probability": 101}), "min_probability"),
        ("lead-spike", serde_json::json!({"factor": 0.5}), "factor"),
        ("lead-rhythm", serde_json::json!({"min_share_percent": 0}), "min_share_percent"),
        ("response-time-rising", serde_json::json!({"factor": 0.9}), "factor"),
        ("unanswered-message", serde_json::json!({"hours": 0}), "hours"),
    ];
    for (name, params, field) in cases {
        match catalog::build(name, &params) {
            Err(Error::InvalidParameter { ruliad, field: got, .. }) => {
                assert_eq!(ruliad, name);
                assert_eq!(got, field, "{name} {params}");
            }
            other => panic!("{name} {params}: expected an invalid parameter, got {other:?}"),
        }
    }
}

#[test]
fn unknown_ruliad_names_the_known_ones() {
    let error = catalog::build("stale-deals", &serde_json::Value::Null).expect_err("unknown");
    let message = error.to_string();
    assert!(message.contains("stale-deals") && message.contains("stale-deal-nudge"), "{message}");
}

#[test]
fn stale_deal_nudge_explains_itself() {
    let rule = catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults");
    let evaluation = rule.evaluate(at(10, 9), &deal("d1", Stage::Negotiation, Some(1)));
    assert_eq!(
        evaluation.explain(),
        "last activity 2026-03-01T09:00:00Z != missing; stage negotiation not in [closed-won, closed-lost]; idle 9 d > 7 d"
    );
    let signal = evaluation.signal().expect("fires");
    assert_eq!(signal.evidence()["labels"]["deal_id"], "d1");
    assert_eq!(signal.evidence()["because"], evaluation.explain());

    let closed = rule.evaluate(at(10, 9), &deal("d1", Stage::ClosedWon, Some(1)));
    assert_eq!(closed.guard().expect("stopped").name, "stage");
    assert!(closed.explain().ends_with("stage closed-won not in [closed-won, closed-lost] (failed)"));

    // A host's own stage name is only known at run time: it is interned, and shown as written.
    let custom = rule.evaluate(at(10, 9), &deal("d1", Stage::Other("contract {sent} %s".into()), Some(1)));
    assert!(custom.fired());
    assert!(
        custom.explain().contains("; stage contract {sent} %s not in [closed-won, closed-lost]; "),
        "{}",
        custom.explain()
    );
    let json = serde_json::to_value(custom.explanation()).expect("serializes");
    assert_eq!(json[1]["observed"], serde_json::json!({ "text": "contract {sent} %s" }));
}

#[test]
fn same_cause_gives_the_same_signal_id() {
    let rule = catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults");
    let first =
        rule.evaluate(at(10, 9), &deal("d1", Stage::Discovery, Some(1))).into_signal().expect("fires");
    let again =
        rule.evaluate(at(11, 9), &deal("d1", Stage::Discovery, Some(1))).into_signal().expect("fires");
    let other =
        rule.evaluate(at(10, 9), &deal("d2", Stage::Discovery, Some(1))).into_signal().expect("fires");
    assert_eq!(first.cause(), again.cause());
    assert_eq!(first.id(), again.id());
    assert_ne!(first.cause(), other.cause());
}

/// The labels a catalog ruliad declares (used to refuse inhibitions on labels it never sets) are
/// exactly the labels its signals carry.
#[test]
fn declared_labels_are_the_labels_signals_carry() {
    for name in NAMES {
        let path = crate_path(&format!("fixtures/{name}.json"));
        let fixture: FixtureFile<sos_ruliads::crm::Record> = fixture::load(&path).expect("fixture parses");
        let ruliad = catalog::build(name, &fixture.params).expect("valid params");
        let mut declared: Vec<&str> = ruliad.labels().to_vec();
        declared.sort_unstable();
        let mut fired = 0;
        for case in fixture.tests.iter().filter(|case| !case.expect.is_empty() && case.timeline.is_empty()) {
            let entity = case.entity.as_ref().expect("a firing case has an entity");
            let signal = ruliad.evaluate(case.eval_time, entity).into_signal().expect("fires");
            let labels = signal.evidence()["labels"].as_object().expect("labels");
            let carried: Vec<&str> = labels.keys().map(String::as_str).collect();
            assert_eq!(carried, declared, "{name}");
            fired += 1;
        }
        assert!(fired > 0, "{name}: no firing case checked");
    }
}
