use std::cmp::Ordering;

use proptest::prelude::*;

use super::*;

#[test]
fn exact_comparison_orders_cosines() {
    // 3/√2 > 2/√1; −1/√4 > −1/√1; positive beats negative.
    assert_eq!(compare_exact(3, 2, 2, 1), Ordering::Greater);
    assert_eq!(compare_exact(-1, 4, -1, 1), Ordering::Greater);
    assert_eq!(compare_exact(1, 100, -1, 1), Ordering::Greater);
    assert_eq!(compare_exact(2, 4, 1, 1), Ordering::Equal);
}

#[test]
fn canonical_json_sorts_keys() {
    let mut out = String::new();
    canonical_json(&serde_json::json!({"b": [1, {"d": null, "c": "x"}], "a": true}), &mut out);
    assert_eq!(out, r#"{"a":true,"b":[1,{"c":"x","d":null}]}"#);
}

proptest! {
    #[test]
    fn exact_comparison_agrees_with_f64_when_far_apart(
        dot_a in -(1i64 << 40)..(1i64 << 40), norm_a in 1i64..(1i64 << 36),
        dot_b in -(1i64 << 40)..(1i64 << 40), norm_b in 1i64..(1i64 << 36),
    ) {
        let a = dot_a as f64 / (norm_a as f64).sqrt();
        let b = dot_b as f64 / (norm_b as f64).sqrt();
        prop_assume!((a - b).abs() > 1e-6 * (a.abs() + b.abs() + 1.0));
        prop_assert_eq!(compare_exact(dot_a, norm_a, dot_b, norm_b), a.partial_cmp(&b).unwrap_or(Ordering::Equal));
    }
}

/// An agent with the given `u` values.
fn agent_from_u(u: [u16; DIMENSIONS]) -> IdentityVector {
    let mut bytes = [0u8; 32];
    for (dimension, value) in u.iter().enumerate() {
        bytes[2 * dimension..2 * dimension + 2].copy_from_slice(&value.to_be_bytes());
    }
    IdentityVector::from_bytes(bytes)
}

/// The cosine in `f64`: exact dot product and norms (integers below 2^53), one division.
fn reference_cosine(r: &[i32; DIMENSIONS], s: &[i32; DIMENSIONS]) -> f64 {
    let dot: i64 = r.iter().zip(s).map(|(a, b)| i64::from(*a) * i64::from(*b)).sum();
    let norm_r: i64 = r.iter().map(|a| i64::from(*a).pow(2)).sum();
    let norm_s: i64 = s.iter().map(|b| i64::from(*b).pow(2)).sum();
    dot as f64 / ((norm_r as f64).sqrt() * (norm_s as f64).sqrt())
}

/// The float score is within the proven bound (56 u; the scan allows 64 u) of the cosine, and
/// the 16-bit layout gives back `r` exactly.
fn check_float_score(u: [u16; DIMENSIONS], s: [i32; DIMENSIONS]) {
    let vector = agent_from_u(u);
    let signal = SignalVector::new(s).expect("valid signal");
    let mut router = ResonanceRouter::new(RouterConfig::default()).expect("valid");
    // Put the agent in a middle lane of a second block, beside others.
    for index in 0..11 {
        router.add(AgentName::new(format!("filler-{index}")).expect("valid"), vector).expect("new");
    }
    assert_eq!(router.r_of(10), vector.r(), "the 16-bit halves give back r exactly");
    let score = f64::from(router.float_score(10, &signal.weights()));
    let cosine = reference_cosine(&vector.r(), &s);
    let bound = 56.0 * f64::from(f32::EPSILON) / 2.0;
    assert!(
        (score - cosine).abs() <= bound,
        "u {u:?} s {s:?}: float {score} vs cosine {cosine}, error {:e} > {bound:e}",
        (score - cosine).abs()
    );
    assert!(bound < f64::from(FLOAT_SCORE_ERROR));
}

#[test]
fn float_score_error_bound_holds_at_the_extremes() {
    let max = MAX_SIGNAL_COMPONENT;
    let agents: Vec<[u16; DIMENSIONS]> = vec![
        [0; DIMENSIONS],
        [u16::MAX; DIMENSIONS],
        // r = ±1 everywhere: the smallest norm, where the constant term weighs most.
        [32767; DIMENSIONS],
        [32768; DIMENSIONS],
        std::array::from_fn(|d| if d % 2 == 0 { 32767 } else { 32768 }),
        std::array::from_fn(|d| if d == 3 { u16::MAX } else { 32767 }),
        std::array::from_fn(|d| if d % 3 == 0 { 0 } else { 32768 }),
        std::array::from_fn(|d| (d as u16) * 4097),
    ];
    let signals: Vec<[i32; DIMENSIONS]> = vec![
        [max; DIMENSIONS],
        [-max; DIMENSIONS],
        [1; DIMENSIONS],
        [-1; DIMENSIONS],
        std::array::from_fn(|d| if d == 0 { max } else { 1 }),
        std::array::from_fn(|d| if d % 2 == 0 { max } else { -1 }),
        std::array::from_fn(|d| if d == 15 { 1 } else { 0 }),
        std::array::from_fn(|d| (d as i32 - 8) * 131_071),
    ];
    for u in &agents {
        for s in &signals {
            check_float_score(*u, *s);
        }
    }
}

proptest! {
    #[test]
    fn float_score_error_bound_holds(
        u in any::<[u16; DIMENSIONS]>(),
        s in proptest::array::uniform16(-MAX_SIGNAL_COMPONENT..=MAX_SIGNAL_COMPONENT),
        small in any::<bool>(),
    ) {
        prop_assume!(s.iter().any(|value| *value != 0));
        // Half the cases squeeze the agent towards the smallest norms (r near ±1).
        let u = if small { u.map(|value| 32760 + value % 16) } else { u };
        check_float_score(u, s);
    }
}

/// The exact ranking by brute force, as exact mode was specified before the float pre-filter:
/// every agent's exact score, ordered by cross-multiplication, ties by the hash key.
fn brute_force_exact(router: &ResonanceRouter, signal: &SignalVector, id: &[u8; 16]) -> Vec<usize> {
    let mut keyed: Vec<(Score, u64, usize)> = (0..router.len())
        .map(|slot| (router.exact_score(slot, signal), tie_key(id, &router.names[slot]), slot))
        .collect();
    keyed.sort_by(|a, b| b.0.compare(&a.0).then_with(|| a.1.cmp(&b.1)));
    keyed.into_iter().map(|(_, _, slot)| slot).collect()
}

fn exact_router(vectors: &[IdentityVector]) -> ResonanceRouter {
    let mut router =
        ResonanceRouter::new(RouterConfig::default().with_mode(ScoreMode::Exact)).expect("valid");
    for (index, vector) in vectors.iter().enumerate() {
        router.add(AgentName::new(format!("agent-{index}")).expect("valid"), *vector).expect("new");
    }
    router
}

fn assert_exact_scan_matches(vectors: &[IdentityVector], signals: &[SignalVector], what: &str) {
    let router = exact_router(vectors);
    for (index, signal) in signals.iter().enumerate() {
        let id: [u8; 16] = std::array::from_fn(|byte| (index * 31 + byte) as u8);
        let expected = brute_force_exact(&router, signal, &id);
        for k in [1, 3, 10, 40] {
            let scanned: Vec<usize> =
                router.top_slots(signal, &id, k).into_iter().map(|(_, slot)| slot).collect();
            assert_eq!(scanned, expected[..k.min(expected.len())], "{what}: signal {index}, k {k}");
        }
    }
}

fn hashed(index: usize, role: &str) -> IdentityVector {
    IdentityVector::derive(&format!("agent-{index}"), role).expect("valid")
}

#[test]
fn exact_scan_matches_brute_force_on_random_agents() {
    let vectors: Vec<IdentityVector> = (0..600).map(|index| hashed(index, "worker")).collect();
    let signals: Vec<SignalVector> =
        (0..40).map(|index| SignalVector::from_identity(&hashed(index, "probe"))).collect();
    assert_exact_scan_matches(&vectors, &signals, "random");
}

#[test]
fn exact_scan_matches_brute_force_on_tie_heavy_agents() {
    // Twins: 12 distinct vectors, each under 15 names.
    let distinct: Vec<IdentityVector> = (0..12).map(|index| hashed(index, "twin")).collect();
    let twins: Vec<IdentityVector> = (0..180).map(|index| distinct[index % 12]).collect();
    let mut signals: Vec<SignalVector> = distinct.iter().map(SignalVector::from_identity).collect();
    signals.extend((0..6).map(|index| SignalVector::from_identity(&hashed(index, "probe"))));
    assert_exact_scan_matches(&twins, &signals, "twins");

    // Rotations: the 16 rotations of a few vectors have equal norms, and equal dot products with
    // a constant signal; exact ties between different vectors.
    let mut rotations = Vec::new();
    for base in 0..6 {
        let u = hashed(base, "rotated").u();
        for shift in 0..DIMENSIONS {
            rotations.push(agent_from_u(std::array::from_fn(|d| u[(d + shift) % DIMENSIONS])));
        }
    }
    let constant: Vec<SignalVector> = [1, -1, 7, MAX_SIGNAL_COMPONENT]
        .iter()
        .map(|value| SignalVector::new([*value; DIMENSIONS]).expect("valid"))
        .chain(std::iter::once(SignalVector::from_identity(&rotations[0])))
        .collect();
    assert_exact_scan_matches(&rotations, &constant, "rotations");

    // Near-ties below f32 resolution: one base vector and its neighbours one step of u away in
    // each dimension, against signals that are the base itself or close to it.
    let base = hashed(99, "near").u();
    let mut near = vec![agent_from_u(base)];
    for dimension in 0..DIMENSIONS {
        for step in [1u16, 2, 3] {
            let mut up = base;
            up[dimension] = up[dimension].saturating_add(step);
            near.push(agent_from_u(up));
            let mut down = base;
            down[dimension] = down[dimension].saturating_sub(step);
            near.push(agent_from_u(down));
        }
    }
    let centre = agent_from_u(base).r();
    let near_signals: Vec<SignalVector> = (0..8)
        .map(|index| {
            SignalVector::new(std::array::from_fn(|d| centre[d] * 16 + if d == index { 1 } else { 0 }))
                .expect("valid")
        })
        .chain(std::iter::once(SignalVector::from_identity(&agent_from_u(base))))
        .collect();
    assert_exact_scan_matches(&near, &near_signals, "near-ties");

    // Smallest norms: r in {−1, +1}, so many agents share a cosine with every signal.
    let signs: Vec<IdentityVector> = (0..200u32)
        .map(|index| {
            let bits = index.wrapping_mul(2_654_435_761);
            agent_from_u(std::array::from_fn(|d| if bits >> (d + 8) & 1 == 1 { 32768 } else { 32767 }))
        })
        .collect();
    let sign_signals: Vec<SignalVector> = (0..6)
        .map(|index| {
            SignalVector::new(std::array::from_fn(|d| if (d + index) % 3 == 0 { -5 } else { 5 }))
                .expect("valid")
        })
        .collect();
    assert_exact_scan_matches(&signs, &sign_signals, "signs");
}

/// Float mode on exact duplicates: bit-identical float scores, so ties fall to the hash key
/// exactly as in exact mode.
#[test]
fn float_mode_breaks_exact_duplicate_ties_like_exact_mode() {
    let distinct: Vec<IdentityVector> = (0..5).map(|index| hashed(index, "twin")).collect();
    let twins: Vec<IdentityVector> = (0..60).map(|index| distinct[index % 5]).collect();
    let exact = exact_router(&twins);
    let mut float = ResonanceRouter::new(RouterConfig::default()).expect("valid");
    for (index, vector) in twins.iter().enumerate() {
        float.add(AgentName::new(format!("agent-{index}")).expect("valid"), *vector).expect("new");
    }
    for (index, vector) in distinct.iter().enumerate() {
        let signal = SignalVector::from_identity(vector);
        let id = [index as u8; 16];
        assert_eq!(float.top_k(&signal, id, 20), exact.top_k(&signal, id, 20));
    }
}
