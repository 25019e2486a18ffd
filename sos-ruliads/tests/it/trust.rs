use chrono::{DateTime, TimeDelta, Utc};
use proptest::prelude::*;
use sos_core::{Signal, SignalKind, TenantId};
use sos_ruliads::Class;
use sos_ruliads::trust::{Decision, Feedback, Phase, Reason, TrustConfig, TrustGate, TrustState};

use crate::at;

fn tenant() -> TenantId {
    "acme".parse().expect("valid tenant")
}

fn signal(kind: &str, number: u64) -> Signal {
    Signal::builder(tenant(), SignalKind::new(kind).expect("slug"))
        .subject(format!("Subject {number}"))
        .text("Something happened.")
        .build()
        .expect("valid signal")
}

fn introduced(now: DateTime<Utc>) -> TrustGate {
    let mut gate = TrustGate::plant(TrustConfig::default(), now).expect("default config is valid");
    assert!(gate.introduce(now, &tenant(), "Nova").expect("valid").is_some());
    gate
}

#[test]
fn planted_agent_is_silent_until_introduced() {
    let mut gate = TrustGate::plant(TrustConfig::default(), at(1, 9)).expect("valid");
    let decision = gate.offer(at(1, 10), signal("lead-rhythm", 1), Class::Insight);
    assert!(matches!(decision, Decision::Withhold { reason: Reason::Trust, .. }));
    let hello = gate.introduce(at(1, 10), &tenant(), "Nova {name} %s").expect("valid").expect("first time");
    assert_eq!(
        hello.text(),
        "Hi, I'm Nova {name} %s. I'll be quiet for a few days while I learn your rhythm."
    );
    assert!(gate.introduce(at(1, 11), &tenant(), "Nova").expect("valid").is_none());
    assert_eq!(gate.phase(), Phase::Observing);
}

#[test]
fn first_insight_needs_twenty_messages_and_three_days() {
    let mut gate = introduced(at(1, 9));
    for _ in 0..19 {
        gate.observe_message();
    }
    assert!(matches!(
        gate.offer(at(5, 9), signal("lead-rhythm", 1), Class::Insight),
        Decision::Withhold { reason: Reason::Trust, .. }
    ));
    gate.observe_message();
    assert!(matches!(
        gate.offer(at(3, 9), signal("lead-rhythm", 2), Class::Insight),
        Decision::Withhold { reason: Reason::Trust, .. }
    ));
    assert_eq!(gate.offer(at(4, 9), signal("lead-rhythm", 3), Class::Insight), Decision::Release);
    assert_eq!(gate.phase(), Phase::Insight);
    assert_eq!(gate.withheld().count(), 2, "withheld signals are kept with their reason");
    assert!(gate.withheld().all(|withheld| withheld.reason == Reason::Trust));
}

#[test]
fn interventions_need_day_fourteen_and_an_accepted_insight() {
    let mut gate = introduced(at(1, 9));
    for _ in 0..20 {
        gate.observe_message();
    }
    let insight = signal("lead-rhythm", 1);
    assert_eq!(gate.offer(at(4, 9), insight.clone(), Class::Insight), Decision::Release);
    let mut gate_accepting_early = gate.clone();
    // Without an accepted insight (this one expires as ignored), no intervention even on day 16.
    assert!(matches!(
        gate.offer(at(16, 9), signal("stale-deal-nudge", 1), Class::Intervention),
        Decision::Withhold { reason: Reason::Trust, .. }
    ));
    assert!(gate_accepting_early.feedback(at(5, 9), &tenant(), insight.id(), Feedback::Accepted));
    assert!(matches!(
        gate_accepting_early.offer(at(14, 8), signal("stale-deal-nudge", 2), Class::Intervention),
        Decision::Withhold { reason: Reason::Trust, .. }
    ));
    assert_eq!(
        gate_accepting_early.offer(at(15, 9), signal("stale-deal-nudge", 3), Class::Intervention),
        Decision::Release
    );
    assert_eq!(gate_accepting_early.phase(), Phase::Intervening);
    assert!(
        !gate_accepting_early.feedback(at(15, 10), &tenant(), insight.id(), Feedback::Accepted),
        "feedback counts once"
    );
}

#[test]
fn spent_budget_withholds_with_cooldown() {
    let config = TrustConfig { min_messages: 0, insight_after_days: 0, ..TrustConfig::default() };
    let mut gate = TrustGate::plant(config, at(1, 9)).expect("valid");
    gate.introduce(at(1, 9), &tenant(), "Nova").expect("valid");
    assert_eq!(gate.offer(at(1, 10), signal("lead-rhythm", 1), Class::Insight), Decision::Release);
    assert!(matches!(
        gate.offer(at(1, 11), signal("lead-rhythm", 2), Class::Insight),
        Decision::Withhold { reason: Reason::Cooldown, .. }
    ));
    assert_eq!(gate.offer(at(2, 11), signal("lead-rhythm", 3), Class::Insight), Decision::Release);
}

#[test]
fn state_round_trips_through_json() {
    let mut gate = introduced(at(1, 9));
    gate.observe_message();
    gate.offer(at(1, 10), signal("lead-rhythm", 1), Class::Insight);
    let saved = serde_json::to_string(gate.state()).expect("serializes");
    let state: TrustState = serde_json::from_str(&saved).expect("deserializes");
    let restored = TrustGate::restore(TrustConfig::default(), state).expect("valid");
    assert_eq!(restored, gate);
}

#[test]
fn invalid_configs_are_rejected() {
    for config in [
        TrustConfig { floor_per_day: 0.0, ..TrustConfig::default() },
        TrustConfig { ceiling_per_day: 0.1, ..TrustConfig::default() },
        TrustConfig { accept_factor: 0.9, ..TrustConfig::default() },
        TrustConfig { reject_factor: 1.5, ..TrustConfig::default() },
        TrustConfig { initial_per_day: 9.0, ..TrustConfig::default() },
        TrustConfig { floor_per_day: f64::NAN, ..TrustConfig::default() },
    ] {
        assert!(TrustGate::plant(config, at(1, 9)).is_err());
    }
}

/// A simulated month: a team that reads the agent's messages, accepts about two thirds of the
/// suggestions and rejects the rest.
#[test]
fn simulated_month() {
    let start = at(1, 9);
    let mut gate = introduced(start);
    let config = gate.config().clone();
    let mut released = Vec::new();
    let mut first_insight_day = None;
    let mut first_intervention_day = None;
    for hour in 0..(30 * 24) {
        let now = start + TimeDelta::hours(hour);
        for _ in 0..(if hour % 24 >= 8 && hour % 24 < 18 { 1 } else { 0 }) {
            gate.observe_message();
        }
        let day = hour / 24;
        if hour % 6 == 0 {
            let kind = if hour % 12 == 0 { "lead-rhythm" } else { "stale-deal-nudge" };
            let class = if kind == "lead-rhythm" { Class::Insight } else { Class::Intervention };
            let candidate = signal(kind, hour as u64);
            if gate.offer(now, candidate.clone(), class) == Decision::Release {
                if class == Class::Insight && first_insight_day.is_none() {
                    first_insight_day = Some(day);
                }
                if class == Class::Intervention && first_intervention_day.is_none() {
                    first_intervention_day = Some(day);
                }
                released.push((now, candidate.id(), released.len()));
            }
        }
        // People answer an hour later: two accepts, then a reject.
        if let Some((_, id, index)) =
            released.iter().find(|(at, _, _)| now - *at == TimeDelta::hours(1)).copied()
        {
            let feedback = if index % 3 == 2 { Feedback::Rejected } else { Feedback::Accepted };
            gate.feedback(now, &tenant(), id, feedback);
        }
        assert!(
            gate.budget_per_day() >= config.floor_per_day && gate.budget_per_day() <= config.ceiling_per_day
        );
    }
    assert!(first_insight_day.expect("an insight went out") >= 3);
    assert!(first_intervention_day.expect("an intervention went out") >= 14);
    assert_eq!(gate.phase(), Phase::Intervening);
    assert!(released.len() > 10 && released.len() < 30 * 4, "released {}", released.len());
    assert!(gate.withheld().count() > 0);
}

#[derive(Debug, Clone, Copy)]
enum Action {
    Message,
    Offer(bool),
    Feedback(u8),
    Wait(u16),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        Just(Action::Message),
        any::<bool>().prop_map(Action::Offer),
        (0_u8..4).prop_map(Action::Feedback),
        (1_u16..2_000).prop_map(Action::Wait),
    ]
}

proptest! {
    #[test]
    fn trust_gate_invariants(actions in proptest::collection::vec(action(), 1..200)) {
        let start = at(1, 9);
        let mut gate = introduced(start);
        let config = gate.config().clone();
        let mut now = start;
        let mut released: Vec<sos_core::SignalId> = Vec::new();
        for (index, action) in actions.into_iter().enumerate() {
            match action {
                Action::Message => gate.observe_message(),
                Action::Wait(minutes) => now += TimeDelta::minutes(i64::from(minutes)),
                Action::Offer(insight) => {
                    let class = if insight { Class::Insight } else { Class::Intervention };
                    let candidate = signal("some-signal", index as u64);
                    let age = now - start;
                    let state = gate.state().clone();
                    if gate.offer(now, candidate.clone(), class) == Decision::Release {
                        released.push(candidate.id());
                        // No signal before the thresholds.
                        prop_assert!(state.observed_messages >= u64::from(config.min_messages) || class == Class::Intervention);
                        if class == Class::Insight {
                            prop_assert!(age >= TimeDelta::days(i64::from(config.insight_after_days)));
                        } else {
                            prop_assert!(age >= TimeDelta::days(i64::from(config.intervene_after_days)));
                            prop_assert!(gate.state().insight_accepted);
                        }
                    }
                }
                Action::Feedback(kind) => {
                    if let Some(id) = released.pop() {
                        let before = gate.budget_per_day();
                        let feedback = [Feedback::Accepted, Feedback::Acknowledged, Feedback::Rejected, Feedback::Ignored][usize::from(kind)];
                        if gate.feedback(now, &tenant(), id, feedback) {
                            match feedback {
                                Feedback::Accepted | Feedback::Acknowledged => prop_assert!(gate.budget_per_day() >= before),
                                Feedback::Rejected | Feedback::Ignored => prop_assert!(gate.budget_per_day() <= before),
                            }
                        }
                    }
                }
            }
            prop_assert!(gate.budget_per_day() >= config.floor_per_day);
            prop_assert!(gate.budget_per_day() <= config.ceiling_per_day);
            prop_assert!(gate.budget_per_day() > 0.0);
        }
    }
}

/// The release-time index drops entries lazily: a signal that was answered, or released again,
/// leaves a stale entry behind that must never count as ignored when it comes up; only the
/// signals still awaiting feedback do, once each.
#[test]
fn answered_or_re_released_signals_are_not_counted_ignored_later() {
    let config = TrustConfig {
        initial_per_day: 8.0,
        ceiling_per_day: 64.0,
        accept_factor: 2.0,
        ignore_factor: 0.5,
        ..TrustConfig::default()
    };
    let mut gate = TrustGate::plant(config.clone(), at(1, 9)).expect("valid");
    gate.introduce(at(1, 9), &tenant(), "Nova").expect("valid");
    for _ in 0..20 {
        gate.observe_message();
    }
    let signals: Vec<Signal> = (0..3).map(|number| signal("lead-rhythm", number)).collect();
    for (hour, signal) in signals.iter().enumerate() {
        assert_eq!(gate.offer(at(5, 9 + hour as u32), signal.clone(), Class::Insight), Decision::Release);
    }
    // Answered: its entry goes stale. Released again later: its first entry goes stale.
    assert!(gate.feedback(at(5, 12), &tenant(), signals[0].id(), Feedback::Accepted));
    assert_eq!(gate.offer(at(6, 9), signals[1].clone(), Class::Insight), Decision::Release);
    assert_eq!(gate.state().outstanding.len(), 2);
    let budget = gate.state().budget_per_day;
    // Past `ignore_after_days` of every release: the two outstanding signals are ignored, once.
    let later = at(6, 9) + TimeDelta::days(i64::from(config.ignore_after_days));
    gate.offer(later, signal("lead-rhythm", 9), Class::Insight);
    assert_eq!(gate.state().budget_per_day, (budget * 0.25).max(config.floor_per_day));
    assert_eq!(gate.state().outstanding.len(), 1, "only the new release is outstanding");
    assert!(!gate.feedback(later, &tenant(), signals[1].id(), Feedback::Accepted), "already counted ignored");
}

/// A signal of `tenant` whose id the host set to `id`.
fn with_host_id(tenant: &str, id: sos_core::SignalId, number: u64) -> Signal {
    Signal::builder(tenant.parse().expect("valid tenant"), SignalKind::new("lead-rhythm").expect("slug"))
        .id(id)
        .subject(format!("Subject {number}"))
        .text("Something happened.")
        .build()
        .expect("valid signal")
}

/// An agent trusted with insights (20 messages observed, day 5).
fn observing_agent() -> TrustGate {
    let config = TrustConfig { initial_per_day: 8.0, ceiling_per_day: 64.0, ..TrustConfig::default() };
    let mut gate = TrustGate::plant(config, at(1, 9)).expect("valid");
    gate.introduce(at(1, 9), &tenant(), "Nova").expect("valid");
    for _ in 0..20 {
        gate.observe_message();
    }
    gate
}

/// Two tenants of one agent release signals with the same host-set id: each stays outstanding,
/// and one tenant's feedback never answers (nor moves the budget for) the other's signal. Before,
/// the outstanding signals were keyed by the id alone: globex's release replaced acme's entry and
/// globex's "rejected" answered acme's signal.
#[test]
fn tenant_crosstalk_trust_outstanding_signals_are_keyed_per_tenant() {
    let (acme, globex): (TenantId, TenantId) =
        ("acme".parse().expect("valid"), "globex".parse().expect("valid"));
    let id: sos_core::SignalId = "0b0e6f4e-59a4-4b8a-9d3c-5f3e5a1c2d7f".parse().expect("a uuid");
    let mut gate = observing_agent();
    assert_eq!(gate.offer(at(5, 9), with_host_id("acme", id, 1), Class::Insight), Decision::Release);
    assert_eq!(gate.offer(at(5, 10), with_host_id("globex", id, 2), Class::Insight), Decision::Release);
    assert_eq!(gate.state().outstanding.len(), 2, "one entry per tenant");
    assert_eq!(gate.state().outstanding.get(&acme, id).map(|(_, at)| *at), Some(at(5, 9)));
    assert_eq!(gate.state().outstanding.get(&globex, id).map(|(_, at)| *at), Some(at(5, 10)));

    // A tenant that released nothing under this id answers nothing.
    let initech: TenantId = "initech".parse().expect("valid");
    let budget = gate.budget_per_day();
    assert!(!gate.feedback(at(5, 11), &initech, id, Feedback::Rejected));
    assert_eq!(gate.budget_per_day(), budget);

    // Globex's answer is globex's: acme's signal still awaits its own.
    assert!(gate.feedback(at(5, 11), &globex, id, Feedback::Rejected));
    assert!(!gate.feedback(at(5, 11), &globex, id, Feedback::Rejected), "answered once");
    assert_eq!(gate.state().outstanding.get(&globex, id), None);
    assert!(gate.state().outstanding.get(&acme, id).is_some(), "acme's signal is not answered");
    assert!(gate.feedback(at(5, 12), &acme, id, Feedback::Accepted));
    assert!(gate.state().outstanding.is_empty());

    // Saved per tenant, sorted, and restored equal (also the time-ordered index: both expire).
    let mut gate = observing_agent();
    gate.offer(at(5, 9), with_host_id("globex", id, 1), Class::Insight);
    gate.offer(at(5, 10), with_host_id("acme", id, 2), Class::Insight);
    let saved = serde_json::to_value(gate.state()).expect("serializes");
    assert_eq!(
        saved["outstanding"],
        serde_json::json!({
            "acme": { id.to_string(): ["insight", "2026-03-05T10:00:00Z"] },
            "globex": { id.to_string(): ["insight", "2026-03-05T09:00:00Z"] },
        })
    );
    let state: TrustState = serde_json::from_value(saved).expect("deserializes");
    let mut restored = TrustGate::restore(gate.config().clone(), state).expect("valid");
    assert_eq!(restored, gate);
    let later = at(9, 11);
    restored.offer(later, signal("lead-rhythm", 7), Class::Insight);
    assert_eq!(restored.state().outstanding.len(), 1, "both tenants' signals counted as ignored");
}

/// A trust state saved when outstanding signals were keyed by id alone (`{id: [class, at]}`)
/// still loads: those signals belong to no known tenant, any tenant's feedback answers them (as
/// before), and they are saved under `*`, never a tenant id.
#[test]
fn tenant_crosstalk_trust_state_saved_without_tenants_still_loads() {
    let id: sos_core::SignalId = "0b0e6f4e-59a4-4b8a-9d3c-5f3e5a1c2d7f".parse().expect("a uuid");
    let gate = observing_agent();
    let mut saved = serde_json::to_value(gate.state()).expect("serializes");
    saved["outstanding"] = serde_json::json!({ id.to_string(): ["insight", "2026-03-05T09:00:00Z"] });
    let state: TrustState = serde_json::from_value(saved).expect("the older format loads");
    let mut restored = TrustGate::restore(gate.config().clone(), state).expect("valid");
    assert_eq!(restored.state().outstanding.get(&tenant(), id).map(|(_, at)| *at), Some(at(5, 9)));
    let resaved = serde_json::to_value(restored.state()).expect("serializes");
    assert_eq!(
        resaved["outstanding"],
        serde_json::json!({ "*": { id.to_string(): ["insight", "2026-03-05T09:00:00Z"] } })
    );
    let reloaded: TrustState = serde_json::from_value(resaved).expect("loads again");
    assert_eq!(&reloaded, restored.state());
    assert!(restored.feedback(at(5, 12), &tenant(), id, Feedback::Accepted));
    assert!(restored.state().outstanding.is_empty());
    // "*" is never read as a tenant, and a tenant that is not an id is refused.
    let mut bad = serde_json::to_value(gate.state()).expect("serializes");
    bad["outstanding"] =
        serde_json::json!({ "Not A Tenant": { id.to_string(): ["insight", "2026-03-05T09:00:00Z"] } });
    assert!(serde_json::from_value::<TrustState>(bad).is_err());
}
