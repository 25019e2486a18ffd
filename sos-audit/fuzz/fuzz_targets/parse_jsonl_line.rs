//! One line of a chain file: a typed error or an entry, never a panic.
//! Mirrored by the proptest `parse_jsonl_line_never_panics`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = sos_audit::parse_jsonl_line(data, 1);
});
