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
