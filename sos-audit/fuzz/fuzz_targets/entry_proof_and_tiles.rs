//! Entry proofs (`sos-audit prove` output) and tile bytes from outside: typed errors, never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_audit::note::NoteSigner;
use sos_audit::tlog::{EntryProof, TileKey, TileSet};

fuzz_target!(|data: &[u8]| {
    if let Ok(proof) = EntryProof::from_json(data) {
        if let Ok(signer) = NoteSigner::generate("example.com/fuzz") {
            let _ = proof.verify(&signer.verifier());
        }
    }
    let mut tiles = TileSet::new(u64::from(data.first().copied().unwrap_or(0)) * 300);
    if tiles.insert(TileKey { level: 0, index: 0 }, data).is_ok() {
        let size = tiles.size();
        let _ = sos_audit::merkle::root_at(&tiles, size);
        let _ = sos_audit::merkle::inclusion_proof(&tiles, size / 2, size);
    }
});
