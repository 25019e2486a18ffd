use chrono::{TimeZone, Utc};
use sha2::{Digest as _, Sha256};
use sos_core::TenantId;

use super::*;
use crate::vector::{AgentName, AgentRole};

fn chain(length: usize) -> (TenantId, Vec<RegistryEntry>) {
    let tenant = TenantId::new("acme").expect("valid");
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid date");
    let mut entries: Vec<RegistryEntry> = Vec::new();
    for index in 0..length {
        let prev = entries.last().map(|entry| (entry.seq, entry.hash));
        let name = AgentName::new(format!("agent-{index}")).expect("valid");
        entries.push(RegistryEntry::next(
            &tenant,
            prev,
            &name,
            &AgentRole::new("worker").expect("valid"),
            now,
        ));
    }
    (tenant, entries)
}

/// RFC 9162 §2.1.1 written out with `sha2` alone, independently of `sos-audit`.
fn rfc9162_root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        0 => Sha256::digest(b"").into(),
        1 => Sha256::new().chain_update([0u8]).chain_update(leaves[0]).finalize().into(),
        n => {
            let split = 1usize << (usize::BITS - 1 - (n - 1).leading_zeros());
            let (left, right) = (rfc9162_root(&leaves[..split]), rfc9162_root(&leaves[split..]));
            Sha256::new().chain_update([1u8]).chain_update(left).chain_update(right).finalize().into()
        }
    }
}

#[test]
fn checkpoint_roots_are_rfc9162_roots_over_the_entry_hashes() {
    let (tenant, entries) = chain(21);
    for size in 0..=entries.len() {
        let checkpoint = checkpoint(&tenant, &entries[..size]).expect("intact");
        let leaves: Vec<[u8; 32]> = entries[..size].iter().map(|entry| *entry.hash.as_bytes()).collect();
        assert_eq!(*checkpoint.root.as_bytes(), rfc9162_root(&leaves), "size {size}");
        assert_eq!(checkpoint.len, size as u64);
    }
}

#[test]
fn every_entry_of_every_tree_size_proves_inclusion() {
    let (tenant, entries) = chain(21);
    for size in 1..=entries.len() {
        let checkpoint = checkpoint(&tenant, &entries[..size]).expect("intact");
        for seq in 1..=size as u64 {
            let proof = inclusion_proof(&entries, seq, size as u64).expect("in range");
            let hash = entries[(seq - 1) as usize].hash;
            assert!(verify_inclusion(&checkpoint, &hash, &proof), "size {size} seq {seq}");
            // The registry's proof is an ordinary sos-audit proof of the entry hash's leaf.
            let audit_proof = proof.to_rfc9162().expect("seq ≥ 1");
            let leaf = sos_audit::merkle::leaf_hash(hash.as_bytes());
            assert_eq!(audit_proof.verify(&leaf, &checkpoint.root), Ok(()), "size {size} seq {seq}");
            // The same proof does not fit another entry or another position.
            let other = entries[(seq as usize) % size].hash;
            if size > 1 {
                assert!(!verify_inclusion(&checkpoint, &other, &proof), "size {size} seq {seq}");
                let mut moved = proof.clone();
                moved.seq = seq % size as u64 + 1;
                assert!(!verify_inclusion(&checkpoint, &hash, &moved), "size {size} seq {seq}");
            }
        }
    }
}

#[test]
fn consistency_proofs_link_every_pair_of_checkpoints() {
    let (tenant, entries) = chain(13);
    let checkpoints: Vec<Checkpoint> =
        (0..=entries.len()).map(|size| checkpoint(&tenant, &entries[..size]).expect("intact")).collect();
    for old in 0..=entries.len() {
        for new in old..=entries.len() {
            let proof = consistency_proof(&entries, old as u64, new as u64).expect("in range");
            assert!(verify_consistency(&checkpoints[old], &checkpoints[new], &proof), "{old} → {new}");
            let audit = sos_audit::merkle::ConsistencyProof {
                old_size: old as u64,
                new_size: new as u64,
                hashes: proof.path.clone(),
            };
            assert_eq!(audit.verify(&checkpoints[old].root, &checkpoints[new].root), Ok(()));
        }
    }
    // A rewritten history is not consistent with the checkpoint taken before the rewrite.
    let mut rewritten = entries.clone();
    rewritten[2].role = AgentRole::new("admin").expect("valid");
    rewritten[2].vector = crate::IdentityVector::of(&rewritten[2].name, &rewritten[2].role);
    let mut prev = Some((rewritten[1].seq, rewritten[1].hash));
    for entry in rewritten.iter_mut().skip(2) {
        let (seq, hash) = prev.unwrap_or((0, Sha256Digest::ZERO));
        entry.seq = seq + 1;
        entry.prev_hash = hash;
        entry.hash = entry.compute_hash();
        prev = Some((entry.seq, entry.hash));
    }
    let forked = checkpoint(&tenant, &rewritten).expect("a rewritten chain is internally intact");
    let proof = consistency_proof(&rewritten, 5, 13).expect("in range");
    assert!(!verify_consistency(&checkpoints[5], &forked, &proof), "a forked history is detected");
    assert!(consistency_proof(&entries, 5, 4).is_err());
    assert!(consistency_proof(&entries, 1, 14).is_err());
    assert!(consistency_proof(&entries, 1, u64::MAX).is_err());
}

#[test]
fn a_checkpoint_detects_truncation_and_tampering() {
    let (tenant, entries) = chain(8);
    let full = checkpoint(&tenant, &entries).expect("intact");
    let truncated = checkpoint(&tenant, &entries[..7]).expect("intact prefix");
    assert_ne!(full.root, truncated.root);
    assert_eq!(full.len, 8);
    let proof = inclusion_proof(&entries, 3, 8).expect("in range");
    let mut forged = full;
    forged.root = Sha256Digest::of(b"forged");
    assert!(!verify_inclusion(&forged, &entries[2].hash, &proof));
    assert!(inclusion_proof(&entries, 0, 8).is_err());
    assert!(inclusion_proof(&entries, 9, 8).is_err());
    assert!(inclusion_proof(&entries, 1, 9).is_err());
    assert!(InclusionProof { seq: 0, tree_size: 8, path: Vec::new() }.to_rfc9162().is_err());
}
