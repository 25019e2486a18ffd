//! Inclusion and consistency proofs from outside: typed errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_audit::merkle::{ConsistencyProof, InclusionProof};
use sos_core::Sha256Digest;

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = InclusionProof::from_json(data) {
        let _ = proof.verify(&Sha256Digest::ZERO, &Sha256Digest::ZERO);
    }
    if let Ok(proof) = ConsistencyProof::from_json(data) {
        let _ = proof.verify(&Sha256Digest::ZERO, &Sha256Digest::ZERO);
    }
});
