use proptest::prelude::*;

use super::*;

#[test]
fn vector_is_domain_hasher_of_name_and_role() {
    let vector = IdentityVector::derive("alice", "researcher").expect("valid input");
    let mut hasher = sos_core::DomainHasher::new("sos-identity/v1");
    hasher.str_field("alice").expect("short").str_field("researcher").expect("short");
    assert_eq!(vector.as_bytes(), hasher.finish().as_bytes());
}

#[test]
fn length_prefix_separates_concatenations() {
    let left = IdentityVector::derive("ab", "c").expect("valid");
    let right = IdentityVector::derive("a", "bc").expect("valid");
    assert_ne!(left, right);
}

#[test]
fn validation_never_trims_or_folds() {
    let plain = IdentityVector::derive("alice", "r").expect("valid");
    for variant in ["alice ", " alice", "Alice", "ALICE"] {
        assert_ne!(plain, IdentityVector::derive(variant, "r").expect("valid"), "{variant:?}");
    }
}

#[test]
fn validation_rejects_bad_input() {
    let too_long = "x".repeat(MAX_FIELD_LEN + 1);
    for bad in ["", "tab\there", "nul\0", "e\u{301}", "del\u{7f}", too_long.as_str()] {
        let error = AgentName::new(bad).expect_err(bad);
        assert!(matches!(error, Error::InvalidIdentity { field: Field::Name, .. }), "{error}");
        assert!(matches!(AgentRole::new(bad), Err(Error::InvalidIdentity { field: Field::Role, .. })));
    }
    assert!(AgentName::new("x".repeat(MAX_FIELD_LEN)).is_ok());
    assert!(AgentName::new("\u{e9}").is_ok());
}

#[test]
fn views_match_the_specification() {
    let vector = IdentityVector::from_bytes(std::array::from_fn(|index| if index < 2 { 0 } else { 0xff }));
    assert_eq!(vector.u()[0], 0);
    assert_eq!(vector.u()[1], 0xffff);
    assert_eq!(vector.r()[0], -65535);
    assert_eq!(vector.r()[1], 65535);
    assert_eq!(vector.p()[0], 0.0);
    assert_eq!(vector.p()[1], 65535.0 / 65536.0);
}

#[test]
fn hex_and_serde_round_trip() {
    let vector = IdentityVector::derive("alice", "researcher").expect("valid");
    assert_eq!(vector, vector.to_hex().parse().expect("hex"));
    let json = serde_json::to_string(&vector).expect("serialize");
    assert_eq!(vector, serde_json::from_str::<IdentityVector>(&json).expect("deserialize"));
    assert!(serde_json::from_str::<AgentName>("\"bad\\n\"").is_err());
}

#[test]
fn traits_follow_the_table() {
    let mut bytes = [0u8; 32];
    bytes[0] = 0xf0; // u0 = 0xf000 → hue family 15
    bytes[2] = 0xe0; // u1 = 0xe000 → geometry 7 (cross)
    bytes[4] = 0x20; // u2 = 0x2000 → symmetry 4
    bytes[6] = 0xc0; // u3 = 0xc000 → contrast 3
    bytes[12] = 0xff; // u6 → layers 4
    let traits = Traits::of(&IdentityVector::from_bytes(bytes));
    assert_eq!(traits.aesthetics.hue_family, 15);
    assert_eq!(traits.aesthetics.geometry, Geometry::Cross);
    assert_eq!(traits.aesthetics.symmetry, 4);
    assert_eq!(traits.aesthetics.contrast, 3);
    assert_eq!(traits.aesthetics.layers, 4);
    assert_eq!(traits.behaviour.communication, CommunicationStyle::Concise);
    let weights = traits.behaviour.domain_weights;
    assert!(weights.iter().all(|weight| (weight - 1.0 / 3.0).abs() < 1e-6));
}

fn text() -> impl Strategy<Value = String> {
    // Printable text including non-ASCII letters; NFC-normalised so that it is valid input.
    "[a-zA-Z0-9 éßü漢字🙂._-]{1,40}"
        .prop_map(|text| unicode_normalization::UnicodeNormalization::nfc(text.as_str()).collect())
}

proptest! {
    #[test]
    fn derivation_is_deterministic(name in text(), role in text()) {
        prop_assert_eq!(IdentityVector::derive(&name, &role)?, IdentityVector::derive(&name, &role)?);
    }

    #[test]
    fn views_stay_in_range(bytes in any::<[u8; 32]>()) {
        let vector = IdentityVector::from_bytes(bytes);
        for (index, (p, r)) in vector.p().iter().zip(vector.r()).enumerate() {
            prop_assert!((0.0..1.0).contains(p));
            prop_assert!(r % 2 != 0 && (-65535..=65535).contains(&r));
            prop_assert_eq!(r as f32 as i32, r);
            prop_assert_eq!(i64::from(r), 2 * i64::from(vector.u()[index]) + 1 - 65536);
        }
    }

    #[test]
    fn encoding_is_injective(name_a in text(), role_a in text(), name_b in text(), role_b in text()) {
        // Distinct pairs must give distinct encodings, hence (barring a SHA-256 collision)
        // distinct vectors; splitting the same concatenation differently is the classic trap.
        prop_assume!((name_a.as_str(), role_a.as_str()) != (name_b.as_str(), role_b.as_str()));
        prop_assert_ne!(IdentityVector::derive(&name_a, &role_a)?, IdentityVector::derive(&name_b, &role_b)?);
        let joined = format!("{name_a}{role_a}");
        for split in (1..joined.len()).filter(|index| joined.is_char_boundary(*index)) {
            let (left, right) = joined.split_at(split);
            if left != name_a {
                prop_assert_ne!(IdentityVector::derive(left, right)?, IdentityVector::derive(&name_a, &role_a)?);
            }
        }
    }

    #[test]
    fn traits_stay_in_their_ranges(bytes in any::<[u8; 32]>()) {
        let traits = Traits::of(&IdentityVector::from_bytes(bytes));
        let aesthetics = traits.aesthetics;
        prop_assert!(aesthetics.hue_family < 16 && aesthetics.contrast < 4 && aesthetics.accent < 8);
        prop_assert!((3..=10).contains(&aesthetics.symmetry) && (1..=4).contains(&aesthetics.layers));
        prop_assert!(aesthetics.scale < 4 && aesthetics.rotation < 8);
        let behaviour = traits.behaviour;
        prop_assert!((0.0..1.0).contains(&behaviour.formality) && (0.0..1.0).contains(&behaviour.intervention_frequency));
        let sum: f32 = behaviour.domain_weights.iter().sum();
        prop_assert!((sum - 1.0).abs() < 1e-5 && behaviour.domain_weights.iter().all(|weight| *weight > 0.0));
    }

    /// Mirror of the fuzz target `fuzz/fuzz_targets/parse_identity.rs`.
    #[test]
    fn fuzz_mirror_parse_identity(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let text = String::from_utf8_lossy(&bytes);
        let middle = text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(index, _)| index);
        let (name, role) = text.split_at(middle);
        if let Ok(vector) = IdentityVector::derive(name, role) {
            prop_assert_eq!(vector, IdentityVector::derive(name, role)?);
            prop_assert!(Portrait::of(&vector).as_svg().len() <= Portrait::MAX_BYTES);
        }
        let _ = AgentName::new(text.as_ref());
        let _ = IdentityVector::from_hex(text.as_ref());
        let _ = serde_json::from_slice::<AgentName>(&bytes);
        let _ = serde_json::from_slice::<IdentityVector>(&bytes);
    }
}
