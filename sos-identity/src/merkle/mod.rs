//! Merkle checkpoints of a registry chain, per-agent inclusion proofs and consistency proofs
//! between checkpoints (feature `audit`).
//!
//! The tree is exactly RFC 9162's (Certificate Transparency v2), built and checked by
//! [`sos_audit::merkle`], so any Certificate Transparency verifier agrees with it: leaf `seq − 1`
//! has the entry's 32-byte hash as its leaf data, `leaf = SHA-256(0x00 ‖ entry hash)`,
//! `node = SHA-256(0x01 ‖ left ‖ right)` and the empty tree's root is `SHA-256("")`. This is the
//! same convention as the audit chain's own tree. A checkpoint held outside the store detects
//! truncation; an inclusion proof shows one agent's entry is in a checkpointed chain without
//! revealing the others; a consistency proof shows a later checkpoint extends an earlier one.

use serde::{Deserialize, Serialize};
use sos_audit::merkle::{self as rfc9162, MemoryTree};
use sos_core::{Sha256Digest, TenantId};

use crate::error::{Error, Result};
use crate::registry::{RegistryEntry, verify_chain};

/// A summary of a tenant's chain to keep outside the store: its length, last entry hash and
/// RFC 9162 Merkle root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Number of entries covered.
    pub len: u64,
    /// Hash of the last covered entry (all zeros for an empty chain).
    pub head: Sha256Digest,
    /// RFC 9162 Merkle root over the covered entry hashes.
    pub root: Sha256Digest,
}

/// The audit path of one entry in a checkpoint's tree (RFC 9162 §2.1.3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Sequence number of the entry (1-based; its leaf index is `seq − 1`).
    pub seq: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Sha256Digest>,
}

impl InclusionProof {
    /// The same proof in `sos-audit`'s exchange form (0-based leaf index), for tools that
    /// already verify audit proofs.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `seq` is 0, which no leaf has.
    pub fn to_rfc9162(&self) -> Result<rfc9162::InclusionProof> {
        let index = self.seq.checked_sub(1).ok_or(Error::InvalidConfig { reason: SEQ_RANGE })?;
        Ok(rfc9162::InclusionProof { index, size: self.tree_size, hashes: self.path.clone() })
    }
}

/// The proof that a checkpoint of `new_size` entries extends one of `old_size` entries
/// (RFC 9162 §2.1.4.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsistencyProof {
    /// Length of the older checkpoint.
    pub old_size: u64,
    /// Length of the newer checkpoint.
    pub new_size: u64,
    /// The proof's hashes, in RFC 9162 order.
    pub path: Vec<Sha256Digest>,
}

const SEQ_RANGE: &str = "an inclusion proof needs 1 ≤ seq ≤ tree size ≤ chain length";
const SIZE_RANGE: &str = "a consistency proof needs old size ≤ new size ≤ chain length";

/// The RFC 9162 tree over the first `size` entry hashes.
fn tree(entries: &[RegistryEntry]) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for entry in entries {
        tree.push(entry.hash.as_bytes());
    }
    tree
}

/// The first `size` entries, or `None` when the chain is shorter.
fn prefix(entries: &[RegistryEntry], size: u64) -> Option<&[RegistryEntry]> {
    entries.get(..usize::try_from(size).ok()?)
}

/// Verifies `entries` as a chain and returns its checkpoint.
///
/// # Errors
///
/// [`Error::Tampered`] as [`verify_chain`] reports it.
pub fn checkpoint(tenant: &TenantId, entries: &[RegistryEntry]) -> Result<Checkpoint> {
    let summary = verify_chain(tenant, entries)?;
    Ok(Checkpoint { len: summary.len, head: summary.head, root: tree(entries).root() })
}

/// The inclusion proof of entry `seq` in the tree over the first `tree_size` entries.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `seq` is 0 or beyond `tree_size`, or `tree_size` exceeds the
/// number of entries.
pub fn inclusion_proof(entries: &[RegistryEntry], seq: u64, tree_size: u64) -> Result<InclusionProof> {
    let covered = prefix(entries, tree_size).ok_or(Error::InvalidConfig { reason: SEQ_RANGE })?;
    if seq == 0 || seq > tree_size {
        return Err(Error::InvalidConfig { reason: SEQ_RANGE });
    }
    let path = rfc9162::inclusion_proof(&tree(covered), seq - 1, tree_size)
        .map_err(|_| Error::InvalidConfig { reason: SEQ_RANGE })?;
    Ok(InclusionProof { seq, tree_size, path })
}

/// Checks that an entry with hash `entry_hash` is entry `proof.seq` of the tree whose root the
/// checkpoint holds (RFC 9162 §2.1.3.2, by [`sos_audit::merkle::verify_inclusion`]).
pub fn verify_inclusion(checkpoint: &Checkpoint, entry_hash: &Sha256Digest, proof: &InclusionProof) -> bool {
    if proof.tree_size != checkpoint.len || proof.seq == 0 {
        return false;
    }
    let leaf = rfc9162::leaf_hash(entry_hash.as_bytes());
    rfc9162::verify_inclusion(&leaf, proof.seq - 1, proof.tree_size, &proof.path, &checkpoint.root).is_ok()
}

/// The proof that the chain's first `old_size` entries are a prefix of its first `new_size`.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `old_size > new_size` or `new_size` exceeds the number of
/// entries.
pub fn consistency_proof(
    entries: &[RegistryEntry],
    old_size: u64,
    new_size: u64,
) -> Result<ConsistencyProof> {
    let covered = prefix(entries, new_size).ok_or(Error::InvalidConfig { reason: SIZE_RANGE })?;
    let path = rfc9162::consistency_proof(&tree(covered), old_size, new_size)
        .map_err(|_| Error::InvalidConfig { reason: SIZE_RANGE })?;
    Ok(ConsistencyProof { old_size, new_size, path })
}

/// Checks that checkpoint `new` extends checkpoint `old`: the registry only appended entries in
/// between, nothing was rewritten, dropped or forked (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old: &Checkpoint, new: &Checkpoint, proof: &ConsistencyProof) -> bool {
    proof.old_size == old.len
        && proof.new_size == new.len
        && rfc9162::verify_consistency(old.len, new.len, &old.root, &new.root, &proof.path).is_ok()
}

#[cfg(test)]
mod tests;
