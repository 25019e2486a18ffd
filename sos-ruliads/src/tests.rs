//! Unit tests of the private pieces.

use chrono::TimeDelta;

use crate::combinators::StateMap;
use crate::explain::{Explain, Predicate, Value, with_trace};

#[test]
fn spans_display_for_people() {
    assert_eq!(Value::from(TimeDelta::days(9)).to_string(), "9 d");
    assert_eq!(Value::from(TimeDelta::hours(36)).to_string(), "1.5 d");
    assert_eq!(Value::from(TimeDelta::hours(5)).to_string(), "5 h");
    assert_eq!(Value::from(TimeDelta::minutes(90)).to_string(), "90 min");
    assert_eq!(Value::from(TimeDelta::seconds(59)).to_string(), "59 s");
    assert_eq!(Value::from(None::<i64>).to_string(), "missing");
}

#[test]
fn fixed_name_lists_serialize_as_lists() {
    let predicate = Predicate::not_in("stage", "won".into(), &["won", "lost"]);
    let json = serde_json::to_value(&predicate).expect("serializes");
    assert_eq!(json["threshold"], serde_json::json!({ "list": ["won", "lost"] }));
    let back: Predicate = serde_json::from_value(json).expect("deserializes");
    assert_eq!(back.to_string(), predicate.to_string());
    assert!(!back.held);
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
