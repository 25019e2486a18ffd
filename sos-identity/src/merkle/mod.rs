//! Merkle checkpoints of a registry chain and per-agent inclusion proofs.
//!
//! The tree is RFC 9162's (Certificate Transparency v2) shape over the entry hashes in sequence
//! order, with its leaf and node prefixes replaced by `DomainHasher` tags:
//! `leaf = DomainHasher("sos-identity/merkle-leaf/v1").field(entry hash)`,
//! `node = DomainHasher("sos-identity/merkle-node/v1").field(left).field(right)`. A checkpoint
//! held outside the store detects truncation; an inclusion proof shows one agent's entry is in
//! a checkpointed chain without revealing the others.

use serde::{Deserialize, Serialize};
use sos_core::{DomainHasher, Sha256Digest};

use crate::error::{Error, Result};
use crate::registry::{RegistryEntry, verify_chain};

/// A signed-off summary of a tenant's chain: its length, last entry hash and Merkle root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Number of entries covered.
    pub len: u64,
    /// Hash of the last covered entry.
    pub head: Sha256Digest,
    /// Merkle root over the covered entry hashes.
    pub root: Sha256Digest,
}

/// The audit path of one entry in a checkpoint's tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InclusionProof {
    /// Sequence number of the entry (1-based).
    pub seq: u64,
    /// Size of the tree the proof is for.
    pub tree_size: u64,
    /// Sibling hashes from the leaf up.
    pub path: Vec<Sha256Digest>,
}

fn leaf(entry_hash: &Sha256Digest) -> Sha256Digest {
    let mut hasher = DomainHasher::new("sos-identity/merkle-leaf/v1");
    // A 32-byte field cannot exceed the u32 length limit.
    let _ = hasher.field(entry_hash.as_bytes());
    hasher.finish()
}

fn node(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    let mut hasher = DomainHasher::new("sos-identity/merkle-node/v1");
    let _ = hasher.field(left.as_bytes());
    let _ = hasher.field(right.as_bytes());
    hasher.finish()
}

/// The largest power of two strictly below `n` (for `n ≥ 2`).
fn split(n: usize) -> usize {
    let mut k = 1;
    while k * 2 < n {
        k *= 2;
    }
    k
}

fn root_of(leaves: &[Sha256Digest]) -> Sha256Digest {
    match leaves.len() {
        0 => Sha256Digest::ZERO,
        1 => leaves[0],
        n => {
            let k = split(n);
            node(&root_of(&leaves[..k]), &root_of(&leaves[k..]))
        }
    }
}

fn path_of(index: usize, leaves: &[Sha256Digest], path: &mut Vec<Sha256Digest>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if index < k {
        path_of(index, &leaves[..k], path);
        path.push(root_of(&leaves[k..]));
    } else {
        path_of(index - k, &leaves[k..], path);
        path.push(root_of(&leaves[..k]));
    }
}

/// Verifies `entries` as a chain and returns its checkpoint.
///
/// # Errors
///
/// [`Error::Tampered`] as [`verify_chain`] reports it.
pub fn checkpoint(tenant: &sos_core::TenantId, entries: &[RegistryEntry]) -> Result<Checkpoint> {
    let summary = verify_chain(tenant, entries)?;
    let leaves: Vec<Sha256Digest> = entries.iter().map(|entry| leaf(&entry.hash)).collect();
    Ok(Checkpoint { len: summary.len, head: summary.head, root: root_of(&leaves) })
}

/// The inclusion proof of entry `seq` in the tree over the first `tree_size` entries.
///
/// # Errors
///
/// [`Error::InvalidConfig`] when `seq` is 0 or beyond `tree_size`, or `tree_size` exceeds the
/// number of entries.
pub fn inclusion_proof(entries: &[RegistryEntry], seq: u64, tree_size: u64) -> Result<InclusionProof> {
    let size = usize::try_from(tree_size).unwrap_or(usize::MAX);
    if seq == 0 || seq > tree_size || size > entries.len() {
        return Err(Error::InvalidConfig {
            reason: "an inclusion proof needs 1 ≤ seq ≤ tree size ≤ chain length",
        });
    }
    let leaves: Vec<Sha256Digest> = entries[..size].iter().map(|entry| leaf(&entry.hash)).collect();
    let mut path = Vec::new();
    path_of((seq - 1) as usize, &leaves, &mut path);
    Ok(InclusionProof { seq, tree_size, path })
}

/// Checks that an entry with hash `entry_hash` is entry `proof.seq` of the tree whose root the
/// checkpoint holds (RFC 9162 section 2.1.3.2).
pub fn verify_inclusion(checkpoint: &Checkpoint, entry_hash: &Sha256Digest, proof: &InclusionProof) -> bool {
    if proof.tree_size != checkpoint.len || proof.seq == 0 || proof.seq > proof.tree_size {
        return false;
    }
    let mut index = proof.seq - 1;
    let mut last = proof.tree_size - 1;
    let mut hash = leaf(entry_hash);
    for sibling in &proof.path {
        if last == 0 {
            return false;
        }
        if index & 1 == 1 || index == last {
            hash = node(sibling, &hash);
            while index & 1 == 0 && index != 0 {
                index >>= 1;
                last >>= 1;
            }
        } else {
            hash = node(&hash, sibling);
        }
        index >>= 1;
        last >>= 1;
    }
    last == 0 && hash == checkpoint.root
}

#[cfg(test)]
mod tests;
