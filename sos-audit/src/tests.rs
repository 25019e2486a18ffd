use chrono::{TimeZone, Utc};
use proptest::prelude::*;
use sos_core::{Sha256Digest, TenantId};

use crate::{
    AuditEntry, ChainHead, ChainVerifier, Finding, NewEntry, Verdict, canonical_json, parse_jsonl_line,
};

fn tenant() -> TenantId {
    TenantId::new("acme").expect("a valid tenant id")
}

fn chain(length: usize) -> Vec<AuditEntry> {
    let mut entries: Vec<AuditEntry> = Vec::new();
    for index in 0..length {
        let prev = entries.last().map_or(Sha256Digest::ZERO, |entry| entry.hash);
        let new = NewEntry::new(
            tenant(),
            "alice",
            "edit",
            format!("doc/{index}"),
            &serde_json::json!({"n": index}),
        )
        .expect("valid entry");
        let time = Utc
            .timestamp_opt(1_700_000_000 + i64::try_from(index).expect("small"), 0)
            .single()
            .expect("time");
        entries.push(new.into_entry(u64::try_from(index).expect("small") + 1, time, prev).expect("hash"));
    }
    entries
}

fn verify(entries: &[AuditEntry], head: Option<ChainHead>) -> Verdict {
    let mut verifier = ChainVerifier::new(Some(tenant()));
    if let Some(head) = head {
        verifier.expect_head(head);
    }
    for entry in entries {
        if !verifier.push(entry) {
            break;
        }
    }
    verifier.finish()
}

#[test]
fn canonical_json_sorts_keys_by_utf16_and_escapes_controls() {
    let value = serde_json::json!({"\u{e000}": 1, "\u{1f600}": 2, "b": "line\nbreak\u{1}\u{7f}", "a": [true, null, -5]});
    assert_eq!(
        canonical_json(&value).expect("canonical"),
        "{\"a\":[true,null,-5],\"b\":\"line\\nbreak\\u0001\u{7f}\",\"\u{1f600}\":2,\"\u{e000}\":1}"
    );
}

#[test]
fn canonical_json_rejects_floats_and_unsafe_integers() {
    assert!(canonical_json(&serde_json::json!(1.5)).is_err());
    assert!(canonical_json(&serde_json::json!(9_007_199_254_740_992_u64)).is_err());
    assert!(canonical_json(&serde_json::json!(-9_007_199_254_740_992_i64)).is_err());
    assert_eq!(
        canonical_json(&serde_json::json!(-9_007_199_254_740_991_i64)).expect("safe"),
        "-9007199254740991"
    );
}

#[test]
fn new_entry_rejects_empty_actor_and_nul() {
    assert!(NewEntry::new(tenant(), "", "a", "", &serde_json::json!({})).is_err());
    assert!(NewEntry::new(tenant(), "a", "a\0b", "", &serde_json::json!({})).is_err());
    assert!(NewEntry::new(tenant(), "a", "a", "x".repeat(1025), &serde_json::json!({})).is_err());
}

#[test]
fn intact_chain_verifies_and_reports_its_head() {
    let entries = chain(5);
    let head = entries[4].as_head();
    match verify(&entries, Some(head)) {
        Verdict::Intact(verified) => {
            assert_eq!(verified.head, Some(head));
            assert_eq!(verified.entries, 5);
        }
        Verdict::Tampered { finding, .. } => panic!("intact chain reported as tampered: {finding}"),
    }
}

#[test]
fn replayed_entry_far_down_is_reported_where_it_sits() {
    let entries = chain(6);
    let mut replayed = entries.clone();
    replayed.insert(4, entries[1].clone());
    let verdict = verify(&replayed, None);
    assert_eq!(verdict.finding(), Some(&Finding::Duplicate { seq: 5, repeated: 2 }));
}

#[test]
fn chain_head_parse_rejects_garbage() {
    for input in
        ["", "3", ":abc", "x:00", "-1:0000000000000000000000000000000000000000000000000000000000000000"]
    {
        assert!(input.parse::<ChainHead>().is_err(), "{input:?} parsed");
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    ModifyField {
        field: u8,
    },
    Delete,
    SwapWithNext,
    InsertForged,
    RecomputeBrokenLink,
    /// Every entry from the chosen one to the end is cut off.
    TruncateTail,
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0u8..9).prop_map(|field| Mutation::ModifyField { field }),
        Just(Mutation::Delete),
        Just(Mutation::SwapWithNext),
        Just(Mutation::InsertForged),
        Just(Mutation::RecomputeBrokenLink),
        Just(Mutation::TruncateTail),
    ]
}

/// Applies `mutation` at 0-based `index`, returning the 1-based seq of the first mutated position.
fn apply(entries: &mut Vec<AuditEntry>, mutation: &Mutation, index: usize) -> u64 {
    let position = u64::try_from(index).expect("small") + 1;
    match mutation {
        Mutation::ModifyField { field } => {
            let entry = &mut entries[index];
            match field {
                0 => entry.tenant = TenantId::new("other").expect("valid"),
                1 => entry.seq += 7,
                2 => entry.time_us += 1,
                3 => entry.actor.push('x'),
                4 => entry.action = "delete".to_owned(),
                5 => entry.subject.push('!'),
                6 => entry.payload = "{\"n\":-1}".to_owned(),
                7 => entry.prev_hash = Sha256Digest::of(b"forged"),
                _ => entry.hash = Sha256Digest::of(b"forged"),
            }
        }
        Mutation::Delete => {
            entries.remove(index);
        }
        Mutation::TruncateTail => entries.truncate(index),
        Mutation::SwapWithNext => entries.swap(index, index + 1),
        Mutation::InsertForged => {
            let prev = if index == 0 { Sha256Digest::ZERO } else { entries[index - 1].hash };
            let forged = NewEntry::new(tenant(), "mallory", "grant", "admin", &serde_json::json!({}))
                .expect("valid")
                .into_entry(position, Utc.timestamp_opt(1_800_000_000, 0).single().expect("time"), prev)
                .expect("hash");
            entries.insert(index, forged);
        }
        Mutation::RecomputeBrokenLink => {
            let entry = &mut entries[index];
            entry.subject = "rewritten".to_owned();
            entry.hash = entry.compute_hash().expect("hash");
        }
    }
    position
}

proptest! {
    /// The verifier's one-pass hash equals the `DomainHasher` definition.
    #[test]
    fn one_pass_hash_equals_domain_hasher(
        actor in "[a-z:]{1,20}",
        subject in any::<String>(),
        seq in 1u64..u64::MAX,
        time_us in any::<i64>(),
        note in any::<String>(),
    ) {
        let new = NewEntry::new(tenant(), actor, "act", subject.replace('\0', ""), &serde_json::json!({ "note": note }));
        if let Ok(new) = new {
            let time = Utc.timestamp_opt(0, 0).single().expect("epoch");
            let mut entry = new.into_entry(seq, time, Sha256Digest::of(b"prev")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            entry.time_us = time_us;
            // The definition of docs/audit-format.md, field by field, on the streaming hasher.
            let mut reference = sos_core::DomainHasher::new(crate::ENTRY_DOMAIN);
            reference.str_field(entry.tenant.as_str()).expect("short");
            reference.u64_field(entry.seq).i64_field(entry.time_us);
            reference.str_field(&entry.actor).expect("short").str_field(&entry.action).expect("short");
            reference.str_field(&entry.subject).expect("short").str_field(&entry.payload).expect("short");
            reference.field(entry.prev_hash.as_bytes()).expect("short");
            let reference = reference.finish();
            let mut scratch = vec![0xaa; 7];
            prop_assert_eq!(entry.compute_hash_with(&mut scratch).ok(), Some(reference));
            prop_assert_eq!(entry.compute_hash().ok(), Some(reference));
        }
    }

    #[test]
    fn verifier_reports_exactly_the_first_mutated_position(
        length in 2usize..40,
        choice in any::<prop::sample::Index>(),
        mutation in mutation(),
    ) {
        let mut entries = chain(length);
        let head = entries[length - 1].as_head();
        // A swap needs a next entry.
        let last_index = if matches!(mutation, Mutation::SwapWithNext) { length - 2 } else { length - 1 };
        let index = choice.index(last_index + 1);
        let expected = apply(&mut entries, &mutation, index);
        let verdict = verify(&entries, Some(head));
        let finding = verdict.finding().cloned();
        prop_assert!(finding.is_some(), "mutation {:?} at {} not detected", mutation, expected);
        let finding = finding.unwrap_or(Finding::Duplicate { seq: 0, repeated: 0 });
        prop_assert_eq!(finding.position(), expected, "{:?} -> {}", mutation, finding);
        match mutation {
            Mutation::ModifyField { .. } => prop_assert!(matches!(finding, Finding::Modified { .. }), "{}", finding),
            Mutation::Delete if index + 1 == length => prop_assert!(matches!(finding, Finding::Truncated { .. }), "{}", finding),
            Mutation::Delete => prop_assert!(matches!(finding, Finding::Missing { .. }), "{}", finding),
            Mutation::SwapWithNext => prop_assert!(matches!(finding, Finding::Swapped { .. }), "{}", finding),
            // A forged entry at the recorded head's position is caught by the head itself.
            Mutation::InsertForged if index + 1 == length => prop_assert!(matches!(finding, Finding::HeadMismatch { .. }), "{}", finding),
            Mutation::InsertForged => prop_assert!(matches!(finding, Finding::Duplicate { .. }), "{}", finding),
            Mutation::RecomputeBrokenLink if index + 1 == length => prop_assert!(matches!(finding, Finding::HeadMismatch { .. }), "{}", finding),
            Mutation::RecomputeBrokenLink => prop_assert!(matches!(finding, Finding::BrokenLink { .. }), "{}", finding),
            // Only the head recorded elsewhere shows that the tail is gone.
            Mutation::TruncateTail => prop_assert!(matches!(finding, Finding::Truncated { .. }), "{}", finding),
        }
    }

    /// Mirrors the `parse_jsonl_line` fuzz target: random bytes never panic.
    #[test]
    fn parse_jsonl_line_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = parse_jsonl_line(&bytes, 1);
    }

    /// Mirrors the `verify_jsonl` fuzz target: random files never panic.
    #[test]
    fn verify_jsonl_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
        let _ = crate::verify_jsonl(bytes.as_slice(), None, |_| {});
    }

    /// Mirrors the `canonical_json` fuzz target: canonical form is a fixed point.
    #[test]
    fn canonical_json_is_idempotent(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Ok(canonical) = canonical_json(&value) {
                let reparsed: serde_json::Value = serde_json::from_str(&canonical).map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(canonical_json(&reparsed).ok(), Some(canonical));
            }
    }
}
