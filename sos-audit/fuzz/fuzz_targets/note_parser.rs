//! Signed notes, keys and checkpoints from outside: typed errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_audit::note::{Checkpoint, NoteSigner, NoteVerifier, open_note};

/// Go's `sumdb/note` example verifier key.
const VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";

fuzz_target!(|data: &[u8]| {
    let verifier = NoteVerifier::from_key_string(VERIFIER).expect("the example key parses");
    let _ = open_note(data, std::slice::from_ref(&verifier));
    let _ = Checkpoint::open(data, &verifier, "PeterNeumann");
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = Checkpoint::parse(text);
        let _ = NoteVerifier::from_key_string(text);
        let _ = NoteSigner::from_key_string(text);
    }
});
