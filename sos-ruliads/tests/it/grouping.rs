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
    // Format 1 also kept the flap history under 64-bit hashes: read and ignored.
    saved["previous_keys"] = serde_json::json!([1_u64, 2_u64]);
    saved["appearances"] = serde_json::json!({ "1": ["2026-03-10T09:00:00Z"] });
    let state: GroupingState = serde_json::from_value(saved).expect("format 1 loads");
    let mut restored = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    restored.observe(at(10, 9) + TimeDelta::minutes(5), signals);
    let due = restored.flush(at(10, 10));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].members().len(), 12, "no member twice");
}

/// Review finding: flap history was keyed by a 64-bit FNV hash of (tenant, kind, subject) with no
/// check of the key itself, so a subject crafted to collide with another entity's hash would
/// add its appearances to that entity's history (and hold the victim back as flapping). The
/// history is now keyed by the full, length-prefixed key; entities whose parts only differ in
/// where one ends and the next begins stay apart.
#[test]
fn flap_history_is_keyed_by_the_full_key_so_a_crafted_subject_cannot_merge_entities() {
    let config =
        GroupingConfig { group_wait_seconds: 0, repeat_interval_seconds: 60, ..GroupingConfig::default() };
    let mut grouper = Grouper::new(config).expect("valid");
    let signal = |subject: &str, hour: u32| {
        let mut why = Explain::new();
        why.label("deal_id", subject);
        why.fire(
            Draft::new(&"acme".parse().expect("tenant"), "stale-deal-nudge", at(10, hour))
                .subject(subject)
                .text("Look at this."),
        )
        .into_signal()
        .expect("valid")
    };
    // The attacker's entity flaps: present every other hour. The victim is present every hour
    // with a subject that only differs by a separator-like suffix.
    let (attacker, victim) = ("Deal 7", "Deal 7,");
    for hour in 0..8 {
        let mut active = vec![signal(victim, hour)];
        if hour % 2 == 0 {
            active.push(signal(attacker, hour));
        }
        grouper.observe(at(10, hour), active);
        grouper.flush(at(10, hour));
    }
    let cooldowns: Vec<_> =
        grouper.suppressed().filter(|outcome| outcome.reason == Reason::Cooldown).collect();
    assert!(!cooldowns.is_empty(), "the flapping entity is held back");
    let victim_id = signal(victim, 0).id();
    assert!(
        cooldowns.iter().all(|outcome| outcome.signal != victim_id),
        "the steady entity never inherits the flapping one's history: {cooldowns:?}"
    );
    // The saved history names each entity by its whole key, not a hash.
    let saved = serde_json::to_value(grouper.state()).expect("serializes");
    let keys: Vec<&String> = saved["flaps"].as_object().expect("a map").keys().collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert!(keys.iter().any(|key| key.ends_with("6:Deal 7,")), "{keys:?}");
    assert!(keys.iter().any(|key| key.ends_with("7:Deal 7,,")), "{keys:?}");
}

/// Review finding: inhibition matched a 64-bit hash of (rule, tenant, label values) without a
/// check of the values, so a crafted label value colliding with another deal's could inhibit
/// that deal's signal. The inhibitors are now indexed by the full key: only equal values
/// inhibit, however the values are split.
#[test]
fn inhibition_compares_full_label_values_not_their_hash() {
    let config = GroupingConfig {
        inhibit: vec![InhibitRule {
            source: "deal-lost".into(),
            target: "stale-deal-nudge".into(),
            equal: vec!["deal_id".into(), "owner".into()],
        }],
        ..GroupingConfig::default()
    };
    let labelled = |kind: &'static str, deal_id: &str, owner: &str| {
        let mut why = Explain::new();
        why.label("deal_id", deal_id).label("owner", owner);
        why.fire(
            Draft::new(&"acme".parse().expect("tenant"), kind, at(10, 9))
                .subject(format!("{kind} {deal_id} {owner}"))
                .text("Look at this."),
        )
        .into_signal()
        .expect("valid")
    };
    let mut grouper = Grouper::new(config).expect("valid");
    let outcomes = grouper.observe(
        at(10, 9),
        vec![
            labelled("deal-lost", "d1,", "2:x"),
            // The same bytes split differently: a different deal.
            labelled("stale-deal-nudge", "d1", ",2:x"),
            labelled("stale-deal-nudge", "d1,2:", "x"),
            // Equal values: inhibited.
            labelled("stale-deal-nudge", "d1,", "2:x"),
        ],
    );
    let inhibited: Vec<_> = outcomes.iter().filter(|outcome| outcome.reason == Reason::Inhibited).collect();
    assert_eq!(inhibited.len(), 1, "{outcomes:?}");
    assert_eq!(inhibited[0].signal, labelled("stale-deal-nudge", "d1,", "2:x").id());
}

#[test]
fn invalid_timers_are_rejected() {
    assert!(Grouper::new(GroupingConfig { group_interval_seconds: 0, ..GroupingConfig::default() }).is_err());
    assert!(Grouper::new(GroupingConfig { flap_threshold: 1, ..GroupingConfig::default() }).is_err());
}

/// Flap history stays bounded: an entity that went quiet is forgotten one flap window after its
/// last appearance, while one that stays active is kept (and does not count as appearing again).
#[test]
fn flap_history_forgets_quiet_entities_and_keeps_active_ones() {
    let config =
        GroupingConfig { group_wait_seconds: 0, repeat_interval_seconds: 60, ..GroupingConfig::default() };
    let mut grouper = Grouper::new(config).expect("valid");
    let signals = stale_signals(5);
    grouper.observe(at(10, 9), signals.clone());
    let flaps = |grouper: &Grouper| {
        serde_json::to_value(grouper.state()).expect("serializes")["flaps"]
            .as_object()
            .map_or(0, |map| map.len())
    };
    assert_eq!(flaps(&grouper), 5);
    // One entity stays active every hour for two days; the others are gone.
    for hour in 1..48 {
        let now = at(10, 9) + TimeDelta::hours(hour);
        grouper.observe(now, vec![signals[0].clone()]);
        grouper.flush(now);
    }
    assert_eq!(flaps(&grouper), 1, "the quiet entities were forgotten");
    assert!(
        grouper.suppressed().all(|outcome| outcome.reason != Reason::Cooldown),
        "staying active is not flapping"
    );
}

/// A signal of `kind` for tenant `acme` with the host's own cause digest (a host building
/// signals itself may derive a cause from the entity's event alone, the same for every kind).
fn with_cause(kind: &str, cause: &[u8]) -> Signal {
    Signal::builder("acme".parse().expect("tenant"), kind.parse().expect("kind"))
        .subject("Deal 42")
        .text("Deal 42 needs attention.")
        .observed_at(at(10, 9))
        .cause(sos_core::Sha256Digest::of(cause))
        .build()
        .expect("valid")
}

/// Review finding (`replay-same` across kinds): the repeat check remembered notified causes
/// per (tenant, cause) while the store claims them per (tenant, kind, cause), so a signal of
/// another kind with the same cause digest was held back as `repeat` for a week once the first
/// kind was notified (and went out when both happened to be due in one round). A cause is now
/// remembered per kind, as the store claims it; the same kind is still a repeat.
#[test]
fn a_cause_notified_for_one_kind_does_not_hold_back_another_kind() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    grouper.observe(at(10, 9), vec![with_cause("deal-lost", b"deal-42@2026-03-10")]);
    assert_eq!(grouper.flush(at(10, 10)).len(), 1);
    let later = at(10, 11);
    let outcomes = grouper.observe(
        later,
        vec![
            with_cause("deal-lost", b"deal-42@2026-03-10"),
            with_cause("stale-deal-nudge", b"deal-42@2026-03-10"),
        ],
    );
    let reasons: Vec<(&str, Reason)> =
        outcomes.iter().map(|outcome| (outcome.kind.as_str(), outcome.reason)).collect();
    assert_eq!(reasons, [("deal-lost", Reason::Repeat), ("stale-deal-nudge", Reason::Grouped)]);
    let due = grouper.flush(later + TimeDelta::hours(1));
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].summary().kind().as_str(), "stale-deal-nudge");
    // Both kinds are remembered after a restart, each under its own kind.
    let saved = serde_json::to_value(grouper.state()).expect("serializes");
    let causes = &saved["notified"]["acme"];
    assert!(causes["deal-lost"].is_object() && causes["stale-deal-nudge"].is_object(), "{causes}");
    let state: GroupingState = serde_json::from_value(saved).expect("deserializes");
    let mut restored = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    let again = restored.observe(
        at(11, 9),
        vec![
            with_cause("deal-lost", b"deal-42@2026-03-10"),
            with_cause("stale-deal-nudge", b"deal-42@2026-03-10"),
        ],
    );
    assert!(again.iter().all(|outcome| outcome.reason == Reason::Repeat), "{again:?}");
}

/// A state saved while notified causes were kept per (tenant, cause) still loads: each such
/// cause holds back signals of every kind until `repeat_interval` has passed since it was
/// notified, survives another save, and then expires.
#[test]
fn notified_causes_saved_without_their_kind_hold_back_every_kind_until_they_expire() {
    let cause = sos_core::Sha256Digest::of(b"deal-42@2026-03-10");
    let saved = serde_json::json!({
        "groups": {},
        "notified": { "acme": { cause.to_hex(): "2026-03-10T10:00:00Z" } },
        "log": [],
    });
    let state: GroupingState = serde_json::from_value(saved).expect("the older format loads");
    let mut grouper = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    let resaved = serde_json::to_value(grouper.state()).expect("serializes");
    assert_eq!(resaved["notified"]["acme"]["*"][cause.to_hex()], "2026-03-10T10:00:00Z");
    let state: GroupingState = serde_json::from_value(resaved).expect("the new format loads");
    let mut grouper_again = Grouper::restore(GroupingConfig::default(), state).expect("valid");
    for grouper in [&mut grouper, &mut grouper_again] {
        let both = || {
            vec![
                with_cause("deal-lost", b"deal-42@2026-03-10"),
                with_cause("stale-deal-nudge", b"deal-42@2026-03-10"),
            ]
        };
        let held = grouper.observe(at(12, 9), both());
        assert!(held.iter().all(|outcome| outcome.reason == Reason::Repeat), "{held:?}");
        let expired = grouper.observe(at(17, 10), both());
        assert!(expired.iter().all(|outcome| outcome.reason == Reason::Grouped), "{expired:?}");
    }
}

/// Notified causes are remembered per tenant: tenant `acme`'s notified cause does not hold back
/// tenant `other`'s signal with the same kind and cause digest.
#[test]
fn a_cause_notified_for_one_tenant_does_not_hold_back_another_tenant() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    grouper.observe(at(10, 9), vec![with_cause("deal-lost", b"deal-42")]);
    assert_eq!(grouper.flush(at(10, 10)).len(), 1);
    let other = Signal::builder("other".parse().expect("tenant"), "deal-lost".parse().expect("kind"))
        .subject("Deal 42")
        .text("Deal 42 needs attention.")
        .observed_at(at(10, 9))
        .cause(sos_core::Sha256Digest::of(b"deal-42"))
        .build()
        .expect("valid");
    let outcomes = grouper.observe(at(10, 11), vec![other]);
    assert_eq!(outcomes.iter().map(|outcome| outcome.reason).collect::<Vec<_>>(), [Reason::Grouped]);
}

/// A signal of `kind` for `tenant` with cause digest `cause` (as [`with_cause`], any tenant).
fn for_tenant(tenant: &str, cause: &[u8]) -> Signal {
    Signal::builder(tenant.parse().expect("tenant"), "deal-lost".parse().expect("kind"))
        .subject("Deal 42")
        .text("Deal 42 needs attention.")
        .observed_at(at(10, 9))
        .cause(sos_core::Sha256Digest::of(cause))
        .build()
        .expect("valid")
}

/// A group remembers the number its grouper gave its (tenant, kind) when it was first flushed,
/// so that recording its notified causes needs no lookup by name. A grouper restored from that
/// state numbers scopes in its own order (sorted by tenant): the remembered number must not
/// follow the state into it, or the causes notified after the restore would be queued for
/// expiry under another tenant's scope and held back as `repeat` for ever.
#[test]
fn a_restored_grouper_expires_causes_under_its_own_scope_numbers() {
    let mut grouper = Grouper::new(GroupingConfig::default()).expect("valid");
    // `zeta` is numbered before `alpha` here; a restored grouper numbers `alpha` first.
    grouper.observe(at(10, 9), vec![for_tenant("zeta", b"first")]);
    assert_eq!(grouper.flush(at(10, 10)).len(), 1);
    grouper.observe(at(10, 11), vec![for_tenant("alpha", b"first")]);
    assert_eq!(grouper.flush(at(10, 12)).len(), 1);
    for state in [
        grouper.state().clone(),
        serde_json::from_value(serde_json::to_value(grouper.state()).expect("saves")).expect("loads"),
    ] {
        let mut restored = Grouper::restore(GroupingConfig::default(), state).expect("valid");
        // The zeta group exists (flushed at 10:00) and is due a day after its last message.
        let joined = restored.observe(at(10, 13), vec![for_tenant("zeta", b"second")]);
        assert_eq!(joined.iter().map(|outcome| outcome.reason).collect::<Vec<_>>(), [Reason::Grouped]);
        assert_eq!(restored.flush(at(11, 10)).len(), 1, "the zeta group is due a day after its last message");
        let held = restored.observe(at(12, 10), vec![for_tenant("zeta", b"second")]);
        assert_eq!(held.iter().map(|outcome| outcome.reason).collect::<Vec<_>>(), [Reason::Repeat]);
        // A week after it was notified, the cause expires: it is news again.
        let again = restored.observe(at(18, 11), vec![for_tenant("zeta", b"second")]);
        assert_eq!(
            again.iter().map(|outcome| outcome.reason).collect::<Vec<_>>(),
            [Reason::Grouped],
            "the cause notified after the restore expired under its own tenant"
        );
    }
}

/// One step of a grouper's life: signals observed at a time, then a flush; optionally the
/// grouper is saved and restored first.
#[derive(Debug, Clone)]
struct Step {
    /// Hours since the last step.
    hours: i64,
    /// (tenant, kind, cause) of each signal, by index into the small sets below.
    signals: Vec<(usize, usize, u8)>,
    /// 0: no restore; 1: restored from a clone of the state; 2: through JSON.
    restore: u8,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    // Mostly a few hours (groups live on and are flushed again), sometimes a day (causes
    // expire); restores in about one step of four.
    let hours = prop_oneof![3 => 0_i64..4, 1 => 20_i64..30];
    let restore = prop_oneof![6 => Just(0_u8), 1 => Just(1_u8), 1 => Just(2_u8)];
    (hours, proptest::collection::vec((0_usize..3, 0_usize..2, 0_u8..4), 0..6), restore)
        .prop_map(|(hours, signals, restore)| Step { hours, signals, restore })
}

/// A signal of tenant `TENANTS[tenant]`, kind `KINDS[kind]` and cause `cause`; its subject
/// names the cause, so that flapping is tracked per cause.
fn scoped_signal(tenant: usize, kind: usize, cause: u8) -> Signal {
    // Named so that a restored grouper numbers the scopes (sorted by tenant) in another order
    // than the live one (first notified first).
    const TENANTS: [&str; 3] = ["zeta", "alpha", "mid"];
    const KINDS: [&str; 2] = ["deal-lost", "stale-deal-nudge"];
    Signal::builder(TENANTS[tenant].parse().expect("tenant"), KINDS[kind].parse().expect("kind"))
        .subject(format!("Deal {cause}"))
        .text("Needs attention.")
        .observed_at(at(10, 9))
        .cause(sos_core::Sha256Digest::of(&[cause]))
        .build()
        .expect("valid")
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    /// Named shapes `tenant-crosstalk` and `replay-same` across restores: a grouper remembers,
    /// per group, the number it gave the group's (tenant, kind) for its expiry queue, and a
    /// restored grouper numbers scopes in its own order. Whatever the tenants, kinds, causes,
    /// timers and restore points (from a clone of the state or through JSON; groups swept and
    /// created again; tenants first seen after a restore), a grouper restored along the way
    /// decides every signal and sends every notification exactly as one that never was: no
    /// cause expires under another tenant's scope (held back for ever, or said twice).
    #[test]
    fn tenant_crosstalk_a_restored_grouper_decides_as_the_live_one(
        steps in proptest::collection::vec(step(), 1..40)
    ) {
        let config = GroupingConfig {
            group_wait_seconds: 3_600,
            group_interval_seconds: 3 * 3_600,
            repeat_interval_seconds: 86_400,
            flap_window_seconds: 6 * 3_600,
            flap_threshold: 3,
            inhibit: vec![InhibitRule { source: "deal-lost".into(), target: "stale-deal-nudge".into(), equal: vec![] }],
            ..GroupingConfig::default()
        };
        let mut live = Grouper::new(config.clone()).expect("valid");
        let mut restored = Grouper::new(config.clone()).expect("valid");
        let mut now = at(10, 9);
        for step in steps {
            now += TimeDelta::hours(step.hours);
            match step.restore {
                1 => restored = Grouper::restore(config.clone(), restored.state().clone()).expect("valid"),
                2 => {
                    let saved = serde_json::to_string(restored.state()).expect("saves");
                    let state: GroupingState = serde_json::from_str(&saved).expect("loads");
                    restored = Grouper::restore(config.clone(), state).expect("valid");
                }
                _ => {}
            }
            let signals: Vec<Signal> =
                step.signals.iter().map(|&(tenant, kind, cause)| scoped_signal(tenant, kind, cause)).collect();
            proptest::prop_assert_eq!(live.observe(now, signals.clone()), restored.observe(now, signals));
            proptest::prop_assert_eq!(live.flush(now), restored.flush(now));
        }
    }
}
