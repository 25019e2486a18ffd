use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sos_core::{ManualClock, TenantId};

use super::*;

fn tenant() -> TenantId {
    TenantId::new("acme").expect("valid tenant")
}

fn chain(length: usize) -> Vec<RegistryEntry> {
    let clock = ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("valid date"));
    let mut entries: Vec<RegistryEntry> = Vec::new();
    for index in 0..length {
        let prev = entries.last().map(|entry| (entry.seq, entry.hash));
        let name = AgentName::new(format!("agent-{index}")).expect("valid");
        let role = AgentRole::new("worker").expect("valid");
        entries.push(RegistryEntry::next(&tenant(), prev, &name, &role, sos_core::Clock::now(&clock)));
        clock.advance(chrono::Duration::seconds(1));
    }
    entries
}

#[test]
fn intact_chain_verifies() {
    let entries = chain(5);
    let summary = verify_chain(&tenant(), &entries).expect("intact");
    assert_eq!(summary.len, 5);
    assert_eq!(summary.head, entries[4].hash);
}

fn tampered_at(entries: &[RegistryEntry]) -> u64 {
    match verify_chain(&tenant(), entries) {
        Err(Error::Tampered { seq, .. }) => seq,
        other => panic!("expected a tampered chain, got {other:?}"),
    }
}

#[test]
fn every_kind_of_tampering_names_the_first_bad_entry() {
    let mut role_changed = chain(5);
    role_changed[2].role = AgentRole::new("admin").expect("valid");
    assert_eq!(tampered_at(&role_changed), 3);

    let mut rehashed = chain(5);
    rehashed[2].role = AgentRole::new("admin").expect("valid");
    rehashed[2].vector = IdentityVector::of(&rehashed[2].name, &rehashed[2].role);
    rehashed[2].hash = rehashed[2].compute_hash();
    assert_eq!(tampered_at(&rehashed), 4, "the next entry's previous hash no longer matches");

    let mut deleted = chain(5);
    deleted.remove(1);
    assert_eq!(tampered_at(&deleted), 2);

    let mut reordered = chain(5);
    reordered.swap(3, 4);
    assert_eq!(tampered_at(&reordered), 4);

    let mut time_changed = chain(5);
    time_changed[0].registered_at += chrono::Duration::seconds(1);
    assert_eq!(tampered_at(&time_changed), 1);
}

#[tokio::test]
async fn memory_registry_refuses_a_second_role() {
    let registry = MemoryRegistry::new(Arc::new(ManualClock::new(Utc::now())));
    let name = AgentName::new("alice").expect("valid");
    let first =
        registry.register(&tenant(), &name, &AgentRole::new("a").expect("valid")).await.expect("first");
    assert!(first.is_created());
    let again =
        registry.register(&tenant(), &name, &AgentRole::new("a").expect("valid")).await.expect("same role");
    assert!(!again.is_created());
    let refused = registry.register(&tenant(), &name, &AgentRole::new("b").expect("valid")).await;
    assert!(matches!(refused, Err(Error::RoleConflict { .. })));
}
