//! Every sos-core parser of outside bytes must return a value or a typed error, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<sos_core::TenantId>();
        let _ = text.parse::<sos_core::SignalKind>();
        let _ = text.parse::<sos_core::Sha256Digest>();
        let _ = text.parse::<sos_core::Severity>();
    }
    if let Ok(signal) = serde_json::from_slice::<sos_core::Signal>(data) {
        // What parses must serialize and parse back to the same signal.
        let again = serde_json::to_vec(&signal).expect("a parsed signal serializes");
        let back: sos_core::Signal = serde_json::from_slice(&again).expect("a serialized signal parses");
        assert_eq!(back, signal);
    }
});
