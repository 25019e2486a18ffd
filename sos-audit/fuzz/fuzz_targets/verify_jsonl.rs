//! A whole chain file through the streaming verifier: a verdict or a typed error, never a panic.
//! Mirrored by the proptest `verify_jsonl_never_panics`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sos_audit::verify_jsonl(data, None, |_| {});
});
