//! Merkle tests: the RFC 6962 reference vectors, exhaustive small trees, and mutations.

use proptest::prelude::*;

use super::*;

fn digest(hex_text: &str) -> Sha256Digest {
    Sha256Digest::from_hex(hex_text).unwrap()
}

/// The reference leaves used by the Certificate Transparency implementations
/// (google/certificate-transparency `merkle_tree_test.cc`, transparency-dev/merkle
/// `testonly/constants.go`).
fn reference_tree() -> MemoryTree {
    let mut tree = MemoryTree::new();
    for leaf in
        ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
    {
        tree.push(&hex::decode(leaf).unwrap());
    }
    tree
}

/// Tree heads for sizes 0..=8 of the reference leaves (same sources).
const REFERENCE_ROOTS: [&str; 9] = [
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

#[test]
fn reference_roots() {
    let tree = reference_tree();
    for (size, expected) in REFERENCE_ROOTS.iter().enumerate() {
        assert_eq!(root_at(&tree, size as u64).unwrap(), digest(expected), "size {size}");
    }
    assert_eq!(tree.root(), digest(REFERENCE_ROOTS[8]));
}

#[test]
fn reference_inclusion_proofs() {
    let tree = reference_tree();
    let cases: [(u64, u64, &[&str]); 3] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (0, 1, &[]),
    ];
    for (index, size, expected) in cases {
        let proof = inclusion_proof(&tree, index, size).unwrap();
        let expected: Vec<_> = expected.iter().map(|h| digest(h)).collect();
        assert_eq!(proof, expected, "inclusion ({index}, {size})");
        let leaf = tree.subtree(0, index).unwrap();
        verify_inclusion(&leaf, index, size, &proof, &digest(REFERENCE_ROOTS[size as usize])).unwrap();
    }
}

#[test]
fn reference_consistency_proofs() {
    let tree = reference_tree();
    let cases: [(u64, u64, &[&str]); 4] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (old, new, expected) in cases {
        let proof = consistency_proof(&tree, old, new).unwrap();
        let expected: Vec<_> = expected.iter().map(|h| digest(h)).collect();
        assert_eq!(proof, expected, "consistency ({old}, {new})");
        verify_consistency(
            old,
            new,
            &digest(REFERENCE_ROOTS[old as usize]),
            &digest(REFERENCE_ROOTS[new as usize]),
            &proof,
        )
        .unwrap();
    }
}

fn numbered_tree(size: u64) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for i in 0..size {
        tree.push(&i.to_be_bytes());
    }
    tree
}

/// The RFC's recursive definition, written directly, to check the stored-subtree prover.
fn naive_root(leaves: &[Sha256Digest]) -> Sha256Digest {
    match leaves.len() {
        0 => empty_root(),
        1 => leaves[0],
        n => {
            let k = split_point(n as u64) as usize;
            node_hash(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
        }
    }
}

#[test]
fn every_proof_of_every_small_tree_verifies() {
    let tree = numbered_tree(40);
    let leaves: Vec<_> = (0..40).map(|i| tree.subtree(0, i).unwrap()).collect();
    for size in 0..=40u64 {
        let root = root_at(&tree, size).unwrap();
        assert_eq!(root, naive_root(&leaves[..size as usize]), "root of size {size}");
        for index in 0..size {
            let proof = inclusion_proof(&tree, index, size).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &proof, &root).unwrap();
            assert_eq!(proof.len(), inclusion_len(index, size));
        }
        for old in 0..=size {
            let proof = consistency_proof(&tree, old, size).unwrap();
            let old_root = root_at(&tree, old).unwrap();
            verify_consistency(old, size, &old_root, &root, &proof)
                .unwrap_or_else(|error| panic!("consistency {old} -> {size}: {error}"));
        }
    }
}

#[test]
fn mangled_proofs_are_refused() {
    let tree = numbered_tree(33);
    for size in 2..=33u64 {
        let root = root_at(&tree, size).unwrap();
        for index in 0..size {
            let leaf = tree.subtree(0, index).unwrap();
            let proof = inclusion_proof(&tree, index, size).unwrap();
            let mut flipped = proof.clone();
            let mut bytes = flipped[0].to_bytes();
            bytes[7] ^= 1;
            flipped[0] = Sha256Digest::from_bytes(bytes);
            assert!(verify_inclusion(&leaf, index, size, &flipped, &root).is_err());
            assert!(verify_inclusion(&leaf, index, size, &proof[..proof.len() - 1], &root).is_err());
            let mut extended = proof.clone();
            extended.push(Sha256Digest::ZERO);
            assert!(verify_inclusion(&leaf, index, size, &extended, &root).is_err());
            let wrong_index = (index + 1) % size;
            if tree.subtree(0, wrong_index) != Some(leaf) {
                assert!(verify_inclusion(&leaf, wrong_index, size, &proof, &root).is_err(), "wrong index");
            }
            // The root binds the proof; the size only shapes the path. Checked against the head
            // of another size, the same proof must fail.
            if size < 33 {
                let other_root = root_at(&tree, size + 1).unwrap();
                assert!(verify_inclusion(&leaf, index, size + 1, &proof, &other_root).is_err(), "wrong size");
            }
        }
        for old in 1..size {
            let old_root = root_at(&tree, old).unwrap();
            let proof = consistency_proof(&tree, old, size).unwrap();
            if proof.is_empty() {
                continue;
            }
            let mut flipped = proof.clone();
            let mut bytes = flipped[0].to_bytes();
            bytes[3] ^= 0x80;
            flipped[0] = Sha256Digest::from_bytes(bytes);
            assert!(verify_consistency(old, size, &old_root, &root, &flipped).is_err());
            assert!(verify_consistency(old, size, &old_root, &root, &proof[..proof.len() - 1]).is_err());
            let mut extended = proof.clone();
            extended.push(Sha256Digest::ZERO);
            assert!(verify_consistency(old, size, &old_root, &root, &extended).is_err());
            // A forked log: same old size, another old root.
            assert!(verify_consistency(old, size, &Sha256Digest::of(b"fork"), &root, &proof).is_err());
        }
    }
}

#[test]
fn split_view_and_bad_ranges_are_typed_errors() {
    let tree = numbered_tree(8);
    let root4 = root_at(&tree, 4).unwrap();
    let root5 = root_at(&tree, 5).unwrap();
    assert!(matches!(verify_consistency(4, 4, &root4, &root5, &[]), Err(ProofError::Inconsistent { .. })));
    assert!(verify_consistency(4, 4, &root4, &root4, &[]).is_ok());
    assert!(matches!(verify_consistency(5, 4, &root5, &root4, &[]), Err(ProofError::SizesOutOfOrder { .. })));
    assert!(matches!(
        verify_consistency(0, 4, &empty_root(), &root4, &[Sha256Digest::ZERO]),
        Err(ProofError::WrongProofLength { .. })
    ));
    assert!(matches!(inclusion_proof(&tree, 8, 8), Err(ProofError::IndexOutOfRange { .. })));
    assert!(matches!(inclusion_proof(&tree, 0, 9), Err(ProofError::TreeTooSmall { .. })));
    assert!(matches!(consistency_proof(&tree, 5, 3), Err(ProofError::SizesOutOfOrder { .. })));
    assert!(matches!(root_at(&tree, 9), Err(ProofError::TreeTooSmall { .. })));
    assert!(matches!(verify_inclusion(&root4, 0, 0, &[], &root4), Err(ProofError::IndexOutOfRange { .. })));
}

proptest! {
    #[test]
    fn random_trees_prove_and_verify(size in 1u64..300, index_seed in any::<u64>(), old_seed in any::<u64>()) {
        let tree = numbered_tree(size);
        let root = tree.root();
        let index = index_seed % size;
        let proof = inclusion_proof(&tree, index, size).unwrap();
        prop_assert!(verify_inclusion(&tree.subtree(0, index).unwrap(), index, size, &proof, &root).is_ok());
        let old = old_seed % (size + 1);
        let proof = consistency_proof(&tree, old, size).unwrap();
        prop_assert!(verify_consistency(old, size, &root_at(&tree, old).unwrap(), &root, &proof).is_ok());
    }

    #[test]
    fn verifiers_never_panic_on_arbitrary_proofs(
        index in any::<u64>(), size in any::<u64>(), old in any::<u64>(),
        hashes in proptest::collection::vec(any::<[u8; 32]>(), 0..70),
    ) {
        let proof: Vec<_> = hashes.into_iter().map(Sha256Digest::from_bytes).collect();
        let _ = verify_inclusion(&Sha256Digest::ZERO, index, size, &proof, &Sha256Digest::ZERO);
        let _ = verify_consistency(old, size, &Sha256Digest::ZERO, &Sha256Digest::ZERO, &proof);
    }
}

/// Checks every value of the worked example in `docs/audit-format.md` (tree, proofs, keys and
/// the signed checkpoint), so the specification and the code cannot drift apart.
#[test]
fn merkle_worked_example_from_docs() {
    use crate::note::{Checkpoint, NoteSigner, NoteVerifier, sign_note};

    let doc = include_str!("../../../docs/audit-format.md");
    let block = doc.split("```text\nmerkle-vectors\n").nth(1).expect("the merkle-vectors block");
    let block = block.split("```").next().unwrap();
    let value = |key: &str| -> &str {
        block
            .lines()
            .find_map(|line| line.strip_prefix(key).and_then(|rest| rest.strip_prefix(" = ")))
            .unwrap_or_else(|| panic!("{key} missing from the worked example"))
    };
    let hashes = |key: &str| -> Vec<Sha256Digest> { value(key).split(' ').map(digest).collect() };

    let mut tree = MemoryTree::new();
    for seq in 1..=3 {
        let entry_hash = digest(value(&format!("entry-hash {seq}")));
        tree.push(entry_hash.as_bytes());
        assert_eq!(tree.subtree(0, seq - 1).unwrap(), digest(value(&format!("leaf {}", seq - 1))));
    }
    assert_eq!(root_at(&tree, 2).unwrap(), digest(value("root 2")));
    assert_eq!(tree.root(), digest(value("root 3")));
    assert_eq!(inclusion_proof(&tree, 1, 3).unwrap(), hashes("inclusion 1 3"));
    assert_eq!(consistency_proof(&tree, 2, 3).unwrap(), hashes("consistency 2 3"));
    assert_eq!(consistency_proof(&tree, 1, 3).unwrap(), hashes("consistency 1 3"));

    let signer = NoteSigner::from_key_string(value("signer-key")).unwrap();
    let verifier = NoteVerifier::from_key_string(value("verifier-key")).unwrap();
    assert_eq!(signer.verifier(), verifier);
    let signed = doc.split("The signed checkpoint of size 3 is exactly:\n\n```text\n").nth(1).unwrap();
    let signed = signed.split("```").next().unwrap();
    let origin = "example.com/sos-audit/acme";
    let checkpoint = Checkpoint::open(signed.as_bytes(), &verifier, origin).unwrap();
    assert_eq!((checkpoint.size, checkpoint.root), (3, tree.root()));
    assert_eq!(sign_note(&checkpoint.to_text(), &signer).unwrap(), signed, "signing is deterministic");
}

#[test]
fn proofs_roundtrip_through_json_and_bad_json_is_typed() {
    let tree = numbered_tree(21);
    let proof = InclusionProof::generate(&tree, 13, 21).unwrap();
    let json = serde_json::to_vec(&proof).unwrap();
    let back = InclusionProof::from_json(&json).unwrap();
    back.verify(&tree.subtree(0, 13).unwrap(), &tree.root()).unwrap();
    let consistency = ConsistencyProof::generate(&tree, 5, 21).unwrap();
    let back = ConsistencyProof::from_json(&serde_json::to_vec(&consistency).unwrap()).unwrap();
    back.verify(&root_at(&tree, 5).unwrap(), &tree.root()).unwrap();
    let too_many = format!(
        r#"{{"index":0,"size":1,"hashes":[{}]}}"#,
        vec![format!("\"{}\"", "00".repeat(32)); 66].join(",")
    );
    for bad in [
        &b""[..],
        b"{}",
        b"[]",
        br#"{"index":0,"size":1,"hashes":["zz"]}"#,
        br#"{"index":-1,"size":1,"hashes":[]}"#,
        br#"{"index":0,"size":1,"hashes":[],"x":1}"#,
        too_many.as_bytes(),
    ] {
        assert!(
            matches!(InclusionProof::from_json(bad), Err(ProofError::Malformed { .. })),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
}

proptest! {
    /// Mirrors the fuzz target `proof_decoder`.
    #[test]
    fn proof_decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
        if let Ok(proof) = InclusionProof::from_json(&data) {
            let _ = proof.verify(&Sha256Digest::ZERO, &Sha256Digest::ZERO);
        }
        if let Ok(proof) = ConsistencyProof::from_json(&data) {
            let _ = proof.verify(&Sha256Digest::ZERO, &Sha256Digest::ZERO);
        }
    }
}
