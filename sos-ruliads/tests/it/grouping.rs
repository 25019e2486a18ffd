use chrono::TimeDelta;
use sos_core::Signal;
use sos_ruliads::catalog;
use sos_ruliads::crm::{Record, Stage};
use sos_ruliads::grouping::{Grouper, GroupingConfig, GroupingState, InhibitRule};
use sos_ruliads::trust::Reason;
use sos_ruliads::{Draft, Explain, Ruliad};

use crate::{at, deal};

fn stale_signals(count: usize) -> Vec<Signal> {
    let rule = catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults");
    (0..count)
        .map(|index| rule.evaluate(at(10, 9), &deal(&format!("d{index}"), Stage::Discovery, Some(1))))
        .map(|evaluation| evaluation.into_signal().expect("fires"))
        .collect()
}

fn lost(deal_id: &str) -> Signal {
    let mut why = Explain::new();
    why.label("deal_id", deal_id);
    why.fire(
        Draft::new(&"acme".parse().expect("tenant"), "deal-lost", at(10, 9)).subject("Lost").text("Lost."),
    )
    .into_signal()
    .expect("valid")
}

#[test]
fn thirty_stale_deals_make_one_message_after_group_wait() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    let outcomes = grouper.observe(at(10, 9), stale_signals(30));
    assert_eq!(outcomes.len(), 30);
    assert!(outcomes.iter().all(|outcome| outcome.reason == Reason::Grouped));
    assert!(grouper.flush(at(10, 9) + TimeDelta::minutes(59)).is_empty());
    let notifications = grouper.flush(at(10, 10));
    assert_eq!(notifications.len(), 1);
    assert_eq!(notifications[0].members().len(), 30);
    assert_eq!(notifications[0].summary().subject(), "30 stale-deal-nudge signals");
    assert_eq!(notifications[0].summary().text().lines().count(), 30);
}

#[test]
fn repeat_interval_holds_back_what_was_already_said() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    grouper.observe(at(10, 9), stale_signals(2));
    assert_eq!(grouper.flush(at(10, 10)).len(), 1);
    let again = grouper.observe(at(11, 10), stale_signals(3));
    assert_eq!(again.iter().filter(|outcome| outcome.reason == Reason::Repeat).count(), 2);
    // The new member waits for group_interval (1 day after the last flush).
    assert!(grouper.flush(at(11, 9)).is_empty());
    let later = grouper.flush(at(11, 10));
    assert_eq!(later.len(), 1);
    assert_eq!(later[0].members().len(), 1);
    // After the repeat interval the old causes may be said again.
    let week_later = grouper.observe(at(18, 11), stale_signals(2));
    assert!(week_later.iter().all(|outcome| outcome.reason != Reason::Repeat), "{week_later:?}");
}

#[test]
fn a_lost_deal_inhibits_its_stale_nudge_only() {
    let config = GroupingConfig {
        inhibit: vec![InhibitRule {
            source: "deal-lost".into(),
            target: "stale-deal-nudge".into(),
            equal: vec!["deal_id".into()],
        }],
        ..GroupingConfig::default()
    };
    let mut grouper = Grouper::new(config).expect("valid");
    let mut active = stale_signals(2);
    active.push(lost("d0"));
    let outcomes = grouper.observe(at(10, 9), active);
    let inhibited: Vec<_> = outcomes.iter().filter(|outcome| outcome.reason == Reason::Inhibited).collect();
    assert_eq!(inhibited.len(), 1);
    assert!(inhibited[0].detail.contains("deal-lost"));
    let notifications = grouper.flush(at(10, 10));
    let stale =
        notifications.iter().find(|n| n.summary().kind().as_str() == "stale-deal-nudge").expect("group");
    assert_eq!(stale.members().len(), 1);
    assert!(stale.members()[0].subject().ends_with("d1"));
}

#[test]
fn a_flapping_entity_gives_one_signal() {
    let config =
        GroupingConfig { group_wait_seconds: 0, repeat_interval_seconds: 60, ..GroupingConfig::default() };
    let mut grouper = Grouper::new(config).expect("valid");
    let rule = catalog::build("hot-opportunity-flag", &serde_json::Value::Null).expect("defaults");
    let mut sent = 0;
    for hour in 0..12 {
        let now = at(10, hour);
        let mut record = deal("d1", Stage::Proposal, Some(10));
        if let Record::Deal(deal) = &mut record {
            deal.value_cents = Some(5_000_000);
            deal.probability = Some(if hour % 2 == 0 { 80 } else { 10 });
            deal.last_action_at = Some(now);
        }
        let active: Vec<_> = rule.evaluate(now, &record).into_signal().into_iter().collect();
        grouper.observe(now, active);
        sent += grouper.flush(now).iter().map(|n| n.members().len()).sum::<usize>();
    }
    assert!(sent <= 2, "a flapping deal was notified {sent} times");
    assert!(grouper.suppressed().any(|outcome| outcome.reason == Reason::Cooldown));
}

#[test]
fn grouping_state_survives_a_restart() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    grouper.observe(at(10, 9), stale_signals(3));
    let saved = serde_json::to_string(grouper.state()).expect("serializes");
    let state: GroupingState = serde_json::from_str(&saved).expect("deserializes");
    let mut restored = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    assert_eq!(restored.flush(at(10, 10))[0].members().len(), 3);
}

/// State saved by format 1 (which also stored each group's pending causes) still loads, and a
/// big restored group still refuses a cause it holds.
#[test]
fn format_one_state_loads_and_keeps_its_groups_deduplicated() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    let signals = stale_signals(12);
    grouper.observe(at(10, 9), signals.clone());
    let mut saved = serde_json::to_value(grouper.state()).expect("serializes");
    let group = &mut saved["groups"]["acme"]["stale-deal-nudge"];
    assert_eq!(group["pending"].as_array().map(Vec::len), Some(12), "pending members are a list");
    group["pending_causes"] =
        serde_json::to_value(signals.iter().map(Signal::cause).collect::<Vec<_>>()).expect("causes");
    assert!(saved["previous_keys"].is_array(), "previous keys are a list, as format 1's set");
    let state: GroupingState = serde_json::from_value(saved).expect("format 1 loads");
    let mut restored = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    restored.observe(at(10, 9) + TimeDelta::minutes(5), signals);
    let due = restored.flush(at(10, 10));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].members().len(), 12, "no member twice");
}

#[test]
fn invalid_timers_are_rejected() {
    assert!(Grouper::new(GroupingConfig { group_interval_seconds: 0, ..GroupingConfig::default() }).is_err());
    assert!(Grouper::new(GroupingConfig { flap_threshold: 1, ..GroupingConfig::default() }).is_err());
}
