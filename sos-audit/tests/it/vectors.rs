//! The test vectors of `docs/audit-format.md`, checked against the implementation.

use sha2::{Digest as _, Sha256};
use sos_audit::{AuditEntry, ChainVerifier, canonical_json, parse_jsonl_line};

const DOC: &str = include_str!("../../../docs/audit-format.md");

fn fenced_block(info: &str) -> &'static str {
    let opening = format!("```{info}\n");
    let start = DOC.find(&opening).map(|index| index + opening.len()).expect("the doc has the block");
    let length = DOC[start..].find("```").expect("the block is closed");
    &DOC[start..start + length]
}

fn vector_value(name: &str, index: usize) -> &'static str {
    let prefix = format!("{name} {index} = ");
    DOC.lines()
        .find_map(|line| line.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("the doc has `{prefix}`"))
}

fn preimage(entry: &AuditEntry) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, bytes: &[u8]) {
        out.extend_from_slice(&u32::try_from(bytes.len()).expect("short").to_be_bytes());
        out.extend_from_slice(bytes);
    }
    let mut out = Vec::new();
    field(&mut out, b"sos-audit/entry/v1");
    field(&mut out, entry.tenant.as_str().as_bytes());
    field(&mut out, &entry.seq.to_be_bytes());
    field(&mut out, &entry.time_us.to_be_bytes());
    field(&mut out, entry.actor.as_bytes());
    field(&mut out, entry.action.as_bytes());
    field(&mut out, entry.subject.as_bytes());
    field(&mut out, entry.payload.as_bytes());
    field(&mut out, entry.prev_hash.as_bytes());
    out
}

#[test]
fn doc_vectors_verify() {
    let entries: Vec<AuditEntry> = fenced_block("jsonl")
        .lines()
        .enumerate()
        .map(|(index, line)| parse_jsonl_line(line.as_bytes(), index as u64 + 1).expect("vector lines parse"))
        .collect();
    assert_eq!(entries.len(), 3);
    let mut verifier = ChainVerifier::new(None);
    for (index, entry) in entries.iter().enumerate() {
        let number = index + 1;
        let source: serde_json::Value =
            serde_json::from_str(vector_value("payload source", number)).expect("json");
        let canonical: String =
            serde_json::from_str(vector_value("payload canonical", number)).expect("json string");
        assert_eq!(canonical_json(&source).expect("canonical"), canonical, "entry {number} canonical form");
        assert_eq!(entry.payload, canonical);
        let preimage = preimage(entry);
        assert_eq!(hex::encode(&preimage), vector_value("preimage", number), "entry {number} preimage");
        let raw = Sha256::digest(&preimage);
        assert_eq!(hex::encode(raw), vector_value("hash", number));
        assert_eq!(entry.compute_hash().expect("hash").to_hex(), vector_value("hash", number));
        assert_eq!(entry.hash.to_hex(), vector_value("hash", number));
        assert!(verifier.push(entry));
    }
    assert!(verifier.finish().is_intact());
}
