//! Canonical JSON of any parsed value: an error or a fixed point, never a panic.
//! Mirrored by the proptest `canonical_json_is_idempotent`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        if let Ok(canonical) = sos_audit::canonical_json(&value) {
            let reparsed: serde_json::Value = serde_json::from_str(&canonical).expect("canonical JSON parses");
            assert_eq!(sos_audit::canonical_json(&reparsed).ok(), Some(canonical));
        }
    }
});
