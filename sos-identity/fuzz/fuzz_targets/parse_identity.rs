//! Outside bytes as names, roles, hex vectors and JSON: typed errors, never a panic; whatever is
//! accepted derives a vector and a portrait within budget.
//! Mirrored by the proptest `fuzz_mirror_parse_identity` in `src/tests.rs`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_identity::{AgentName, IdentityVector, Portrait};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (name, role) = text.split_at(text.char_indices().nth(text.chars().count() / 2).map_or(text.len(), |(index, _)| index));
    if let Ok(vector) = IdentityVector::derive(name, role) {
        assert_eq!(vector, IdentityVector::derive(name, role).expect("accepted once, accepted again"));
        assert!(Portrait::of(&vector).as_svg().len() <= Portrait::MAX_BYTES);
    }
    let _ = AgentName::new(text.as_ref());
    let _ = IdentityVector::from_hex(text.as_ref());
    let _ = serde_json::from_slice::<AgentName>(data);
    let _ = serde_json::from_slice::<IdentityVector>(data);
});
