//! Unit tests of the private pieces.

use chrono::TimeDelta;

use crate::combinators::StateMap;
use crate::explain::{Explain, Explanation, Op, Predicate, Value, with_trace};

#[test]
fn spans_display_for_people() {
    assert_eq!(Value::from(TimeDelta::days(9)).to_string(), "9 d");
    assert_eq!(Value::from(TimeDelta::hours(36)).to_string(), "1.5 d");
    assert_eq!(Value::from(TimeDelta::hours(5)).to_string(), "5 h");
    assert_eq!(Value::from(TimeDelta::minutes(90)).to_string(), "90 min");
    assert_eq!(Value::from(TimeDelta::seconds(59)).to_string(), "59 s");
    assert_eq!(Value::from(None::<i64>).to_string(), "missing");
    // Fractional days round like `{:.1}` does, in both directions and on both sides of zero.
    for seconds in (-400_000_i64..400_000).step_by(997).chain([129_600, -129_600, 90_720, 95_040]) {
        if seconds % 86_400 == 0 || seconds.abs() < 86_400 {
            continue;
        }
        let expected = format!("{:.1} d", seconds as f64 / 86_400.0);
        assert_eq!(Value::Seconds(seconds).to_string(), expected, "{seconds} s");
    }
}

#[test]
fn explanations_serialize_in_the_documented_shape() {
    let mut explanation = Explanation::new();
    explanation.push(Predicate::not_in("stage", "won", &["won", "lost"]));
    let custom = explanation.intern("contract {sent} %s");
    explanation.push(Predicate::custom("stage", custom, Op::Eq, "negotiation", false));
    explanation.push(Predicate::gt("idle", TimeDelta::days(9), TimeDelta::days(7)));
    let json = serde_json::to_value(&explanation).expect("serializes");
    assert_eq!(
        json,
        serde_json::json!([
            { "name": "stage", "observed": { "text": "won" }, "op": "not_in",
              "threshold": { "list": ["won", "lost"] }, "held": false },
            { "name": "stage", "observed": { "text": "contract {sent} %s" }, "op": "eq",
              "threshold": { "text": "negotiation" }, "held": false },
            { "name": "idle", "observed": { "seconds": 777_600 }, "op": "gt",
              "threshold": { "seconds": 604_800 }, "held": true },
        ])
    );
    assert_eq!(
        explanation.to_string(),
        "stage won not in [won, lost] (failed); stage contract {sent} %s = negotiation (failed); idle 9 d > 7 d"
    );
    assert_eq!(explanation.text(&custom), Some("contract {sent} %s"));
    // Alone, an interned value cannot be resolved; through its explanation it is.
    assert_eq!(explanation.predicates()[1].to_string(), "stage <text> = negotiation (failed)");
    assert_eq!(
        explanation.display(&explanation.predicates()[1]).to_string(),
        "stage contract {sent} %s = negotiation (failed)"
    );
}

#[test]
fn interned_text_follows_its_predicate_into_a_longer_explanation() {
    let mut prefix = Explanation::new();
    let first = prefix.intern("first");
    prefix.push(Predicate::custom("a", first, Op::Eq, "first", true));
    let mut why = Explain::new();
    let second = why.text("second");
    assert!(!why.check(Predicate::custom("b", second, Op::Eq, "other", false)));
    let evaluation = why.stop().with_prefix(prefix);
    assert_eq!(evaluation.explain(), "a first = first; b second = other (failed)");
    let guard = evaluation.guard().expect("stopped");
    assert_eq!(evaluation.explanation().text(&guard.observed), Some("second"));
    // Equality compares text, not where it was interned.
    let mut again = Explain::new();
    let padding = again.text("padding");
    again.check(Predicate::custom("unused", padding, Op::Eq, padding, true));
    let mut direct = Explanation::new();
    let text = direct.intern("first");
    direct.push(Predicate::custom("a", text, Op::Eq, "first", true));
    let mut other = Explain::new();
    let second = other.text("second");
    other.check(Predicate::custom("b", second, Op::Eq, "other", false));
    assert_eq!(other.stop().with_prefix(direct), evaluation);
}

#[test]
fn predicates_are_packed_records() {
    fn copy<T: Copy>() {}
    copy::<Predicate>();
    copy::<Value>();
    assert!(std::mem::size_of::<Predicate>() <= 72, "{}", std::mem::size_of::<Predicate>());
    assert!(!std::mem::needs_drop::<Predicate>());
}

#[test]
fn trace_setting_is_restored_after_a_panic() {
    let result = std::panic::catch_unwind(|| with_trace(false, || panic!("boom")));
    assert!(result.is_err());
    assert!(crate::trace_enabled());
}

#[test]
fn stop_without_a_failed_predicate_names_a_synthetic_guard() {
    let mut why = Explain::new();
    assert!(why.check(Predicate::is_true("held", true)));
    let evaluation = why.stop();
    assert_eq!(evaluation.guard().expect("stopped").name, "condition");
    assert_eq!(evaluation.explanation().len(), 2);
}

#[test]
fn state_map_replaces_without_evicting() {
    let mut map: StateMap<u8> = StateMap::new(1);
    let now = chrono::DateTime::UNIX_EPOCH;
    map.insert("a".into(), now, 1);
    map.insert("a".into(), now, 2);
    assert_eq!((map.len(), map.get("a")), (1, Some(&2)));
    assert_eq!(map.remove("a"), Some(2));
    assert!(map.is_empty());
    assert_eq!(StateMap::<u8>::new(0).capacity(), 1);
}
