//! Adversarial tests for Merkle proofs and signed checkpoints.

use base64::Engine as _;
use sos_core::Sha256Digest;

use super::*;
use crate::note::{Checkpoint, NoteSigner, NoteVerifier, open_note, sign_note};

const GO_SIGNER: &str = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz";
const GO_VERIFIER: &str = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW";
const ORIGIN: &str = "example.com/sos-audit/acme";

fn tree(n: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..n {
        tree.push(&i.to_be_bytes());
    }
    tree
}

fn signed_checkpoint(signer: &NoteSigner) -> String {
    let checkpoint =
        Checkpoint { origin: ORIGIN.into(), size: 3, root: tree(3).root(), extensions: Vec::new() };
    checkpoint.sign(signer).unwrap()
}

#[test]
fn adversarial_checkpoint_wrong_key_and_same_name_other_id() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let note = signed_checkpoint(&signer);
    let good = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    assert!(Checkpoint::open(note.as_bytes(), &good, ORIGIN).is_ok());
    let other = NoteSigner::generate("PeterNeumann").unwrap().verifier();
    assert!(Checkpoint::open(note.as_bytes(), &other, ORIGIN).is_err());
    assert!(Checkpoint::open(note.as_bytes(), &good, "example.com/sos-audit/acme ").is_err());
    assert!(Checkpoint::open(note.as_bytes(), &good, "example.com/sos-audit/acm\u{0435}").is_err());
    // A key string whose id belongs to another key is rejected.
    assert!(NoteVerifier::from_key_string(&GO_VERIFIER.replace("c74f20a3", "c74f20a4")).is_err());
}

#[test]
fn adversarial_note_forged_known_plus_valid_fails() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let note = signed_checkpoint(&signer);
    let good = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let (_, sig_line) = note.split_once("\n\n").unwrap();
    // Flip one byte of the signature (inside the base64, keeping it valid base64).
    let mut forged_line = sig_line.to_owned();
    let at = forged_line.len() - 10;
    let c = forged_line.as_bytes()[at];
    let replacement = if c == b'A' { "B" } else { "A" };
    forged_line.replace_range(at..=at, replacement);
    let two = format!("{note}{forged_line}");
    assert!(open_note(two.as_bytes(), std::slice::from_ref(&good)).is_err());
    // An unknown signer is ignored.
    let stranger = NoteSigner::generate("stranger").unwrap();
    let extra = sign_note("x\n", &stranger).unwrap();
    let extra_line = extra.split_once("\n\n").unwrap().1;
    let with_stranger = format!("{note}{extra_line}");
    assert!(open_note(with_stranger.as_bytes(), std::slice::from_ref(&good)).is_ok());
}

#[test]
fn adversarial_note_framing_variants_rejected() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let note = signed_checkpoint(&signer);
    let good = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let v = std::slice::from_ref(&good);
    let variants = [
        note.trim_end_matches('\n').to_owned(),
        note.replace('\n', "\r\n"),
        note.replace('\u{2014}', "-"),
        note.replace("\u{2014} ", "\u{2014}  "),
        note.replace("PeterNeumann ", "PeterNeumann  "),
        format!("{}\n", note),
        format!("\n{note}"),
        note.replacen('\n', "\n\n", 1),
    ];
    for variant in variants {
        assert!(open_note(variant.as_bytes(), v).is_err(), "{variant:?}");
    }
    assert!(open_note(&vec![b'a'; 2 << 20], v).is_err());
    assert!(open_note(&[0xff, b'\n', b'\n'], v).is_err());
}

#[test]
fn adversarial_note_noncanonical_signature_base64() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let note = signed_checkpoint(&signer);
    let good = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let v = std::slice::from_ref(&good);
    // 68 bytes encode to 92 chars ending in "=": change the last data char's trailing bits.
    let trimmed = note.trim_end_matches('\n');
    let eq = trimmed.rfind('=').unwrap();
    let last = trimmed.as_bytes()[eq - 1];
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let pos = alphabet.iter().position(|&a| a == last).unwrap();
    let tweaked = alphabet[pos ^ 1] as char;
    let mut bad = trimmed.to_owned();
    bad.replace_range(eq - 1..eq, &tweaked.to_string());
    bad.push('\n');
    assert!(open_note(bad.as_bytes(), v).is_err());
    let unpadded = format!("{}\n", &trimmed[..eq]);
    assert!(open_note(unpadded.as_bytes(), v).is_err());
    let extra_pad = format!("{trimmed}=\n");
    assert!(open_note(extra_pad.as_bytes(), v).is_err());
}

#[test]
fn adversarial_note_malleable_s_and_small_order_key() {
    let signer = NoteSigner::from_key_string(GO_SIGNER).unwrap();
    let note = signed_checkpoint(&signer);
    let good = NoteVerifier::from_key_string(GO_VERIFIER).unwrap();
    let (text, line) = note.split_once("\n\n").unwrap();
    let b64 = line.trim_end().rsplit(' ').next().unwrap();
    let mut blob = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    // S += L (little endian): a non-canonical S must not verify.
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let s = &mut blob[4 + 32..];
    let mut carry = 0u16;
    for i in 0..32 {
        let sum = u16::from(s[i]) + u16::from(L[i]) + carry;
        s[i] = sum as u8;
        carry = sum >> 8;
    }
    let forged = format!(
        "{text}\n\n\u{2014} PeterNeumann {}\n",
        base64::engine::general_purpose::STANDARD.encode(&blob)
    );
    assert!(open_note(forged.as_bytes(), std::slice::from_ref(&good)).is_err());
    // Small-order public key (the identity point) with signature R = identity, S = 0.
    let mut material = vec![1u8];
    let mut identity = [0u8; 32];
    identity[0] = 1;
    material.extend_from_slice(&identity);
    let name = "evil";
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    hasher.update([b'\n', 1]);
    hasher.update(identity);
    let digest = hasher.finalize();
    let id = u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let key = format!("{name}+{id:08x}+{}", base64::engine::general_purpose::STANDARD.encode(&material));
    if let Ok(evil) = NoteVerifier::from_key_string(&key) {
        let mut sig = id.to_be_bytes().to_vec();
        sig.extend_from_slice(&identity);
        sig.extend_from_slice(&[0u8; 32]);
        let forged =
            format!("{text}\n\n\u{2014} evil {}\n", base64::engine::general_purpose::STANDARD.encode(&sig));
        assert!(open_note(forged.as_bytes(), &[evil]).is_err());
    }
}

#[test]
fn adversarial_checkpoint_body_variants() {
    let root = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
    let short = base64::engine::general_purpose::STANDARD.encode([7u8; 31]);
    for body in [
        format!("o\n03\n{root}\n"),
        format!("o\n+8\n{root}\n"),
        format!("o\n-1\n{root}\n"),
        format!("o\n18446744073709551616\n{root}\n"),
        format!("o\n 3\n{root}\n"),
        format!("o\n3\n{short}\n"),
        format!("o\n3\n{root}"),
        format!("\n3\n{root}\n"),
        format!("o\n3\n{root}\n\n"),
    ] {
        assert!(Checkpoint::parse(&body).is_err(), "{body:?}");
    }
    let ok = Checkpoint::parse(&format!("o\n18446744073709551615\n{root}\next\n")).unwrap();
    assert_eq!(ok.size, u64::MAX);
    assert_eq!(ok.extensions, ["ext"]);
}

#[test]
fn adversarial_inclusion_wrong_index_size_and_edges() {
    let t = tree(7);
    let root = t.root();
    let proof = InclusionProof::generate(&t, 3, 7).unwrap();
    let leaf = leaf_hash(&3u64.to_be_bytes());
    assert!(proof.verify(&leaf, &root).is_ok());
    // Sizes 6 and 8 are left out on purpose: for index 3 their audit paths have the same shape as
    // size 7's, so RFC 9162 verification cannot tell them apart. The size is bound by the signed
    // checkpoint that supplies the root, not by the proof.
    for (index, size) in [(2, 7), (4, 7), (7, 7), (0, 0), (u64::MAX, u64::MAX), (3, u64::MAX)] {
        assert!(verify_inclusion(&leaf, index, size, &proof.hashes, &root).is_err(), "{index} {size}");
    }
    let mut extra = proof.hashes.clone();
    extra.push(root);
    assert!(verify_inclusion(&leaf, 3, 7, &extra, &root).is_err());
    assert!(verify_inclusion(&leaf, 3, 7, &proof.hashes[1..], &root).is_err());
    // Size 1: the leaf is the root, the proof is empty.
    let one = tree(1);
    let l0 = leaf_hash(&0u64.to_be_bytes());
    assert!(verify_inclusion(&l0, 0, 1, &[], &one.root()).is_ok());
    assert!(verify_inclusion(&l0, 0, 1, &[l0], &one.root()).is_err());
    // Generating beyond the log fails instead of panicking.
    assert!(InclusionProof::generate(&t, 7, 7).is_err());
    assert!(InclusionProof::generate(&t, 0, 8).is_err());
    assert!(InclusionProof::generate(&t, 0, u64::MAX).is_err());
    assert!(root_at(&t, u64::MAX).is_err());
}

#[test]
fn adversarial_second_preimage_interior_node_as_leaf() {
    let t = tree(4);
    let root = t.root();
    let l0 = leaf_hash(&0u64.to_be_bytes());
    let l1 = leaf_hash(&1u64.to_be_bytes());
    let interior = node_hash(&l0, &l1);
    let proof = InclusionProof::generate(&t, 2, 4).unwrap();
    // Present the interior node (the left half) as a leaf of a 2-leaf tree.
    assert!(verify_inclusion(&interior, 0, 2, &proof.hashes[1..], &root).is_err());
    // Leaf data equal to the concatenation of two child hashes does not hash to the interior node.
    let mut concat = Vec::new();
    concat.extend_from_slice(l0.as_bytes());
    concat.extend_from_slice(l1.as_bytes());
    assert_ne!(leaf_hash(&concat), interior);
}

#[test]
fn adversarial_consistency_edges() {
    let t = tree(9);
    let r9 = t.root();
    let r4 = root_at(&t, 4).unwrap();
    let proof = ConsistencyProof::generate(&t, 4, 9).unwrap();
    assert!(proof.verify(&r4, &r9).is_ok());
    // old == new with a non-empty proof.
    assert!(verify_consistency(9, 9, &r9, &r9, &[r4]).is_err());
    assert!(verify_consistency(9, 9, &r9, &r9, &[]).is_ok());
    // old = 0 with a proof, and with a non-empty-tree root claimed as the old root.
    assert!(verify_consistency(0, 9, &empty_root(), &r9, &[r4]).is_err());
    // Extra and missing hashes.
    let mut extra = proof.hashes.clone();
    extra.push(r4);
    assert!(verify_consistency(4, 9, &r4, &r9, &extra).is_err());
    assert!(verify_consistency(4, 9, &r4, &r9, &proof.hashes[1..]).is_err());
    assert!(verify_consistency(9, 4, &r9, &r4, &proof.hashes).is_err());
    assert!(verify_consistency(4, u64::MAX, &r4, &r9, &proof.hashes).is_err());
    assert!(verify_consistency(u64::MAX - 1, u64::MAX, &r4, &r9, &proof.hashes).is_err());
    // Equal sizes with equal roots and an empty proof are consistent, however large the size.
    assert!(verify_consistency(u64::MAX, u64::MAX, &r9, &r9, &[]).is_ok());
    // A checkpoint larger than the log.
    assert!(ConsistencyProof::generate(&t, 4, 10).is_err());
    assert!(ConsistencyProof::generate(&t, 4, u64::MAX).is_err());
    assert!(ConsistencyProof::generate(&t, 10, 4).is_err());
}

#[test]
fn adversarial_json_proofs() {
    let h = "00".repeat(32);
    let upper = "AB".repeat(32);
    assert!(InclusionProof::from_json(br#"{"index":0,"size":1,"hashes":[],"x":1}"#).is_err());
    assert!(InclusionProof::from_json(br#"{"index":"0","size":1,"hashes":[]}"#).is_err());
    assert!(InclusionProof::from_json(br#"{"index":-1,"size":1,"hashes":[]}"#).is_err());
    assert!(InclusionProof::from_json(br#"{"index":0,"size":18446744073709551616,"hashes":[]}"#).is_err());
    assert!(
        InclusionProof::from_json(format!(r#"{{"index":0,"size":1,"hashes":["{}zz"]}}"#, &h[2..]).as_bytes())
            .is_err()
    );
    assert!(
        InclusionProof::from_json(format!(r#"{{"index":0,"size":1,"hashes":["{}"]}}"#, &h[2..]).as_bytes())
            .is_err()
    );
    let many = vec![format!("\"{h}\""); 66].join(",");
    assert!(
        InclusionProof::from_json(format!(r#"{{"index":0,"size":1,"hashes":[{many}]}}"#).as_bytes()).is_err()
    );
    assert!(
        ConsistencyProof::from_json(format!(r#"{{"old_size":0,"new_size":1,"hashes":[{many}]}}"#).as_bytes())
            .is_err()
    );
    // Upper-case hex either parses to the same digest as lower case or is rejected; never panics.
    let _ = InclusionProof::from_json(format!(r#"{{"index":0,"size":1,"hashes":["{upper}"]}}"#).as_bytes());
    let _: Option<Sha256Digest> = None;
}
