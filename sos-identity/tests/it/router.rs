//! Resonance routing through the public API.

use std::collections::HashMap;

use sos_core::{Severity, Signal, SignalId};
use sos_identity::{
    AgentName, AppliedRule, Error, IdentityVector, KindEvidenceProfile, LoadPolicy, ResonanceRouter,
    RouterConfig, ScoreMode, SignalProfile, SignalVector,
};

fn name(index: usize) -> AgentName {
    AgentName::new(format!("agent-{index}")).expect("valid name")
}

fn router(agents: usize, config: RouterConfig) -> ResonanceRouter {
    let mut router = ResonanceRouter::new(config).expect("valid config");
    for index in 0..agents {
        let vector = IdentityVector::derive(&format!("agent-{index}"), "worker").expect("valid");
        router.add(name(index), vector).expect("new agent");
    }
    router
}

fn random_signal(index: usize) -> (SignalVector, SignalId) {
    let vector = IdentityVector::derive(&format!("signal-{index}"), "probe").expect("valid");
    let id = SignalId::from_uuid(uuid_from(index));
    (SignalVector::from_identity(&vector), id)
}

fn uuid_from(index: usize) -> uuid::Uuid {
    uuid::Uuid::from_u128(index as u128 + 1)
}

fn cosine(agent: &IdentityVector, signal: &SignalVector) -> f64 {
    let r = agent.r();
    let dot: f64 = r.iter().zip(signal.components()).map(|(a, s)| f64::from(*a) * f64::from(*s)).sum();
    let norm_a: f64 = r.iter().map(|a| f64::from(*a).powi(2)).sum::<f64>().sqrt();
    let norm_s: f64 = signal.components().iter().map(|s| f64::from(*s).powi(2)).sum::<f64>().sqrt();
    dot / (norm_a * norm_s)
}

#[test]
fn top_k_matches_a_brute_force_ranking_in_both_modes() {
    let agents = 300;
    let vectors: Vec<IdentityVector> = (0..agents)
        .map(|index| IdentityVector::derive(&format!("agent-{index}"), "worker").expect("valid"))
        .collect();
    for mode in [ScoreMode::Float, ScoreMode::Exact] {
        let router = router(agents, RouterConfig::default().with_mode(mode));
        for index in 0..100 {
            let (signal, id) = random_signal(index);
            let mut expected: Vec<(f64, usize)> =
                vectors.iter().enumerate().map(|(slot, vector)| (cosine(vector, &signal), slot)).collect();
            expected.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top = router.top_k(&signal, *id.as_uuid().as_bytes(), 10);
            assert_eq!(top.len(), 10);
            for (rank, candidate) in top.iter().enumerate() {
                // Scores are distinct at this scale; allow float noise at the last place only.
                assert!((candidate.score - expected[rank].0).abs() < 1e-6, "{mode:?} rank {rank}");
            }
            assert_eq!(top[0].agent, name(expected[0].1), "{mode:?}");
        }
    }
}

#[test]
fn exact_and_float_modes_pick_the_same_winner() {
    let float = router(500, RouterConfig::default().with_mode(ScoreMode::Float));
    let exact = router(500, RouterConfig::default().with_mode(ScoreMode::Exact));
    let mut disagreements = 0;
    for index in 0..500 {
        let (signal, id) = random_signal(index);
        let bytes = *id.as_uuid().as_bytes();
        let a = &float.top_k(&signal, bytes, 2);
        let b = &exact.top_k(&signal, bytes, 2);
        if a[0].agent != b[0].agent {
            // Only a near-tie (below f32 resolution) may differ.
            assert!((a[0].score - a[1].score).abs() < 1e-6);
            disagreements += 1;
        }
    }
    assert_eq!(disagreements, 0);
}

#[test]
fn ties_are_broken_by_hash_never_by_position() {
    let twin = IdentityVector::derive("twin", "worker").expect("valid");
    let names: Vec<AgentName> =
        ["left", "right", "middle"].iter().map(|text| AgentName::new(*text).expect("valid")).collect();
    let build = |order: &[usize]| {
        let mut router = ResonanceRouter::new(RouterConfig::default()).expect("valid");
        for index in order {
            router.add(names[*index].clone(), twin).expect("new");
        }
        router
    };
    let forward = build(&[0, 1, 2]);
    let backward = build(&[2, 1, 0]);
    let signal = SignalVector::from_identity(&twin);
    let mut winners = HashMap::new();
    for index in 0..300u128 {
        let id = *uuid::Uuid::from_u128(index).as_bytes();
        let winner = forward.top_k(&signal, id, 1)[0].agent.clone();
        assert_eq!(winner, backward.top_k(&signal, id, 1)[0].agent, "insertion order must not matter");
        *winners.entry(winner).or_insert(0) += 1;
    }
    assert_eq!(winners.len(), 3, "every twin wins some ties: {winners:?}");
}

fn max_over_mean(loads: &[u64]) -> f64 {
    let total: u64 = loads.iter().sum();
    let max = loads.iter().copied().max().unwrap_or(0);
    max as f64 / (total as f64 / loads.len() as f64)
}

fn clustered_signal(index: usize) -> Signal {
    // Three kinds carry almost all signals: the clustering real workloads have.
    let kind = ["stale-deal", "lead-spike", "late-invoice"][index % 3];
    Signal::builder("acme".parse().expect("tenant"), kind.parse().expect("kind"))
        .subject(format!("case {index}"))
        .text("observed")
        .severity(Severity::Notice)
        .evidence(serde_json::json!({ "n": index }))
        .cause(sos_core::Sha256Digest::of(&index.to_be_bytes()))
        .build()
        .expect("valid signal")
}

#[test]
fn bounded_load_keeps_max_over_mean_within_epsilon_where_argmax_does_not() {
    let signals: Vec<Signal> = (0..3000).map(clustered_signal).collect();
    let mut bounded = router(40, RouterConfig::default());
    let mut argmax = router(40, RouterConfig::default().with_load(LoadPolicy::Argmax));
    for signal in &signals {
        bounded.route(signal, &KindEvidenceProfile).expect("routed");
        argmax.route(signal, &KindEvidenceProfile).expect("routed");
    }
    let bounded_ratio = max_over_mean(bounded.loads());
    let argmax_ratio = max_over_mean(argmax.loads());
    assert!(bounded_ratio <= 1.25 + 40.0 / 3000.0, "bounded max/mean {bounded_ratio}");
    assert!(argmax_ratio > 2.0, "argmax max/mean {argmax_ratio} should show the clustering");
}

#[test]
fn a_subject_sticks_to_its_agent_while_it_has_capacity() {
    // Two agents, epsilon 0.25: capacity is ceil(1.25 · (total + 1) / 2), so it is 1, 2, 2 for
    // the first three signals.
    let mut router = router(2, RouterConfig::default());
    let profile = KindEvidenceProfile;
    let route = |router: &mut ResonanceRouter, kind: &str, index: usize| {
        let signal = Signal::builder("acme".parse().expect("tenant"), kind.parse().expect("kind"))
            .subject("Deal with Acme")
            .text("observed")
            .cause(sos_core::Sha256Digest::of(&index.to_be_bytes()))
            .build()
            .expect("valid");
        router.route(&signal, &profile).expect("routed")
    };
    let first = route(&mut router, "stale-deal", 0);
    let second = route(&mut router, "lead-spike", 1);
    assert_eq!(second.agent, first.agent, "the subject sticks");
    assert_eq!(second.rule, AppliedRule::Sticky);
    let third = route(&mut router, "late-invoice", 2);
    assert_ne!(third.agent, first.agent, "the sticky agent is at capacity 2");
    assert_ne!(third.rule, AppliedRule::Sticky);
    let fourth = route(&mut router, "stale-deal", 3);
    assert_eq!(fourth.agent, third.agent, "the subject now sticks to its new agent");
}

#[test]
fn adding_or_removing_one_agent_moves_only_its_share() {
    let agents = 100;
    let signals: Vec<(SignalVector, SignalId)> = (0..5000).map(random_signal).collect();
    let mut router = router(agents, RouterConfig::default().with_load(LoadPolicy::Argmax));
    let winners = |router: &ResonanceRouter| -> Vec<AgentName> {
        signals
            .iter()
            .map(|(signal, id)| router.top_k(signal, *id.as_uuid().as_bytes(), 1)[0].agent.clone())
            .collect()
    };
    let before = winners(&router);
    let newcomer = AgentName::new("newcomer").expect("valid");
    router.add(newcomer.clone(), IdentityVector::derive("newcomer", "worker").expect("valid")).expect("new");
    let after_add = winners(&router);
    let moved: Vec<usize> = (0..signals.len()).filter(|index| before[*index] != after_add[*index]).collect();
    assert!(moved.iter().all(|index| after_add[*index] == newcomer), "signals only move to the newcomer");
    let fraction = moved.len() as f64 / signals.len() as f64;
    assert!(fraction > 0.0 && fraction < 3.0 / (agents as f64 + 1.0), "moved fraction {fraction}");

    let leaver = name(7);
    router.remove(&leaver).expect("present");
    let after_remove = winners(&router);
    for index in 0..signals.len() {
        if after_add[index] != leaver {
            assert_eq!(after_add[index], after_remove[index], "only the leaver's signals move");
        }
    }
    let moved = after_add.iter().filter(|agent| **agent == leaver).count() as f64 / signals.len() as f64;
    assert!(moved < 3.0 / agents as f64, "removed agent held {moved}");
}

#[test]
fn removal_leaves_the_same_router_as_never_adding() {
    let mut shrunk = router(30, RouterConfig::default());
    for index in [0, 29, 13, 8] {
        shrunk.remove(&name(index)).expect("present");
    }
    let mut fresh = ResonanceRouter::new(RouterConfig::default()).expect("valid");
    for index in (0..30).filter(|index| ![0, 29, 13, 8].contains(index)) {
        fresh
            .add(name(index), IdentityVector::derive(&format!("agent-{index}"), "worker").expect("valid"))
            .expect("new");
    }
    assert_eq!(shrunk.len(), 26);
    for index in 0..200 {
        let (signal, id) = random_signal(index);
        let bytes = *id.as_uuid().as_bytes();
        assert_eq!(shrunk.top_k(&signal, bytes, 5), fresh.top_k(&signal, bytes, 5));
    }
    assert!(matches!(shrunk.remove(&name(0)), Err(Error::UnknownAgent { .. })));
}

#[test]
fn explanation_shows_contributions_that_sum_to_the_score() {
    let router = router(50, RouterConfig::default().with_mode(ScoreMode::Exact));
    let signal = clustered_signal(1);
    let explanation = router.explain(&signal, &KindEvidenceProfile, 5).expect("agents present");
    assert_eq!(explanation.candidates.len(), 5);
    for candidate in &explanation.candidates {
        let sum: f64 = candidate.contributions.iter().sum();
        assert!((sum - candidate.score).abs() < 1e-9);
    }
    assert!(explanation.candidates.windows(2).all(|pair| pair[0].score >= pair[1].score));
    assert_eq!(explanation.decision.agent, explanation.candidates[0].agent);
    assert_eq!(explanation.decision.rule, AppliedRule::Best);
    let vector = KindEvidenceProfile.profile(&signal);
    assert!(vector.components().iter().any(|component| *component != 0));
}

#[test]
fn an_empty_router_refuses_to_route_and_bad_config_is_refused() {
    let mut empty = ResonanceRouter::new(RouterConfig::default()).expect("valid");
    assert!(matches!(empty.route(&clustered_signal(0), &KindEvidenceProfile), Err(Error::NoAgents)));
    assert!(ResonanceRouter::new(RouterConfig::default().with_epsilon(0.0)).is_err());
    assert!(ResonanceRouter::new(RouterConfig::default().with_epsilon(f64::NAN)).is_err());
    assert!(SignalVector::new([0; 16]).is_err());
    assert!(SignalVector::new([1 << 21; 16]).is_err());
}

#[test]
fn completing_work_frees_capacity() {
    let mut router = router(2, RouterConfig::default().with_sticky(false));
    let routed = router.route(&clustered_signal(0), &KindEvidenceProfile).expect("routed");
    assert_eq!(router.load(&routed.agent), Some(1));
    router.complete(&routed.agent).expect("present");
    assert_eq!(router.load(&routed.agent), Some(0));
}

/// A scan split over threads returns exactly what the single-threaded scan returns, in both
/// modes, for top-1 and top-k, and routes identically (the chunks' lists are merged by the same
/// ranking, ties included).
#[test]
fn parallel_scan_matches_the_single_threaded_scan() {
    let agents = sos_identity::PARALLEL_MIN_AGENTS + 1_000;
    for mode in [ScoreMode::Float, ScoreMode::Exact] {
        let single = router(agents, RouterConfig::default().with_mode(mode));
        for threads in [2, 3] {
            let split = router(agents, RouterConfig::default().with_mode(mode).with_threads(threads));
            for index in 0..8 {
                let (signal, id) = random_signal(index);
                let id = *id.as_uuid().as_bytes();
                for k in [1, 10, 40] {
                    assert_eq!(split.top_k(&signal, id, k), single.top_k(&signal, id, k), "{mode:?} k {k}");
                }
            }
        }
    }
    assert!(matches!(
        ResonanceRouter::new(RouterConfig::default().with_threads(0)),
        Err(Error::InvalidConfig { .. })
    ));
}

/// When every agent of the first walk (the best 32) is at capacity, bounded load still picks the
/// best-ranked agent with room and counts the full agents it skipped, exactly as walking the
/// whole ranking would.
#[test]
fn bounded_load_beyond_the_first_walk_takes_the_best_agent_with_room() {
    for mode in [ScoreMode::Float, ScoreMode::Exact] {
        let agents = 200;
        let mut router = router(agents, RouterConfig::default().with_mode(mode).with_sticky(false));
        let (signal, id) = random_signal(7);
        let ranking = router.top_k(&signal, *id.as_uuid().as_bytes(), agents);
        // Fill the 40 best agents: with 200 agents and ε = 0.25, capacity stays 1 while the
        // total load is below 160 / 1.25.
        for (index, candidate) in ranking.iter().take(40).enumerate() {
            let other = SignalVector::from_identity(
                &IdentityVector::derive(candidate.agent.as_str(), "worker").expect("valid"),
            );
            let routed = router
                .route_vector(&other, SignalId::from_uuid(uuid_from(1_000 + index)), "")
                .expect("routed");
            assert_eq!(routed.agent, candidate.agent, "a signal like the agent itself goes to it");
        }
        let routed = router.route_vector(&signal, id, "").expect("routed");
        assert_eq!(routed.capacity, 1);
        assert_eq!(routed.agent, ranking[40].agent, "{mode:?}: the best agent with room");
        assert_eq!(routed.rule, AppliedRule::Overflow { skipped: 40 }, "{mode:?}");
    }
}
