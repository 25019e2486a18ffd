use chrono::{TimeZone, Utc};
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

#[test]
fn every_entry_of_every_tree_size_proves_inclusion() {
    let (tenant, entries) = chain(21);
    for size in 1..=entries.len() {
        let checkpoint = checkpoint(&tenant, &entries[..size]).expect("intact");
        for seq in 1..=size as u64 {
            let proof = inclusion_proof(&entries, seq, size as u64).expect("in range");
            let hash = entries[(seq - 1) as usize].hash;
            assert!(verify_inclusion(&checkpoint, &hash, &proof), "size {size} seq {seq}");
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
}
