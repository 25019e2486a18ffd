//! RFC 9162 (RFC 6962) Merkle trees over a tenant's audit chain: tree heads, inclusion proofs
//! and consistency proofs.
//!
//! Hashing follows RFC 9162 §2.1.1 exactly, so any Certificate Transparency verifier agrees:
//!
//! ```text
//! leaf hash  = SHA-256(0x00 ‖ leaf data)
//! node hash  = SHA-256(0x01 ‖ left ‖ right)
//! empty tree = SHA-256("")
//! ```
//!
//! A tree of `n` leaves splits at `k`, the largest power of two smaller than `n`. Proofs are built
//! from the hashes of *complete* subtrees only (a subtree of `2^level` leaves starting at a
//! multiple of `2^level`), read through [`SubtreeHashes`]. A store that keeps every complete
//! subtree hash (about `2n` hashes for `n` leaves, the layout of C2SP `tlog-tiles`) answers any
//! proof of a tree of size `n` with `O(log n)` reads, never a rescan.

use sha2::{Digest as _, Sha256};
use sos_core::Sha256Digest;

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The leaf index is not inside the tree.
    #[error("leaf index {index} is outside a tree of size {size}; ask for an index below the size")]
    IndexOutOfRange {
        /// The requested leaf index.
        index: u64,
        /// The tree size.
        size: u64,
    },
    /// The older size of a consistency proof is larger than the newer one.
    #[error(
        "tree size {old} is larger than {new}; a consistency proof goes from the smaller size to the larger"
    )]
    SizesOutOfOrder {
        /// The size given as older.
        old: u64,
        /// The size given as newer.
        new: u64,
    },
    /// The tree has fewer leaves than the requested size.
    #[error(
        "the tree has {available} leaves, fewer than the requested size {size}; the checkpoint is larger than the log"
    )]
    TreeTooSmall {
        /// The requested size.
        size: u64,
        /// How many leaves the tree has.
        available: u64,
    },
    /// The proof has the wrong number of hashes for its index and sizes.
    #[error("the proof has {actual} hashes where {expected} are needed for this index and size")]
    WrongProofLength {
        /// How many hashes the proof must have.
        expected: usize,
        /// How many it has.
        actual: usize,
    },
    /// The proof is well formed but leads to another root.
    #[error(
        "the proof leads to root {computed}, not the expected {expected}: the log or the proof was altered"
    )]
    RootMismatch {
        /// The root the proof leads to.
        computed: Sha256Digest,
        /// The root it was checked against.
        expected: Sha256Digest,
    },
    /// A consistency proof's two sizes are equal but the roots differ, or the old size is zero
    /// and the proof is not empty: a forked or split view of the log.
    #[error("the two tree heads cannot belong to one append-only log: {reason}")]
    Inconsistent {
        /// What was inconsistent.
        reason: &'static str,
    },
    /// A proof's serialized form could not be read.
    #[error(
        "malformed proof: {reason}; expect JSON with an index or sizes and a list of 64-hex-digit hashes"
    )]
    Malformed {
        /// What was wrong.
        reason: String,
    },
    /// The backing store failed to produce a subtree hash it should hold.
    #[error("subtree hash at level {level}, index {index} is missing from the store")]
    MissingSubtree {
        /// The subtree's level (it covers `2^level` leaves).
        level: u8,
        /// The subtree's index at that level.
        index: u64,
    },
}

/// RFC 9162 leaf hash: `SHA-256(0x00 ‖ data)`.
pub fn leaf_hash(data: &[u8]) -> Sha256Digest {
    let mut hasher = Sha256::new();
    hasher.update([0x00]);
    hasher.update(data);
    Sha256Digest::from_bytes(hasher.finalize().into())
}

/// RFC 9162 interior node hash: `SHA-256(0x01 ‖ left ‖ right)`.
pub fn node_hash(left: &Sha256Digest, right: &Sha256Digest) -> Sha256Digest {
    let mut hasher = Sha256::new();
    hasher.update([0x01]);
    hasher.update(left.as_bytes());
    hasher.update(right.as_bytes());
    Sha256Digest::from_bytes(hasher.finalize().into())
}

/// The root of the empty tree: `SHA-256("")`.
pub fn empty_root() -> Sha256Digest {
    Sha256Digest::of(b"")
}

/// Read access to the hashes of complete subtrees, which is all a prover needs.
///
/// `subtree(level, index)` is the Merkle tree hash of leaves `[index·2^level, (index+1)·2^level)`;
/// level 0 is the leaf hashes. The prover only asks for subtrees that lie entirely within the
/// tree size it was given.
pub trait SubtreeHashes {
    /// The hash of one complete subtree, or `None` if the store does not hold it.
    fn subtree(&self, level: u8, index: u64) -> Option<Sha256Digest>;

    /// How many leaves the store holds.
    fn leaf_count(&self) -> u64;
}

/// The largest power of two strictly smaller than `n` (`n ≥ 2`): RFC 9162's split point.
fn split_point(n: u64) -> u64 {
    debug_assert!(n >= 2);
    1 << (63 - (n - 1).leading_zeros())
}

/// The Merkle tree hash of leaves `[start, end)`, where `start` is a multiple of the largest
/// power of two not exceeding `end - start` (true for every range the RFC recursion visits).
fn range_hash<S: SubtreeHashes + ?Sized>(
    store: &S,
    start: u64,
    end: u64,
) -> Result<Sha256Digest, ProofError> {
    let width = end - start;
    if width == 0 {
        return Ok(empty_root());
    }
    if width.is_power_of_two() && start.is_multiple_of(width) {
        let level = width.trailing_zeros() as u8;
        let index = start >> level;
        return store.subtree(level, index).ok_or(ProofError::MissingSubtree { level, index });
    }
    let k = split_point(width);
    let left = range_hash(store, start, start + k)?;
    let right = range_hash(store, start + k, end)?;
    Ok(node_hash(&left, &right))
}

fn check_size<S: SubtreeHashes + ?Sized>(store: &S, size: u64) -> Result<(), ProofError> {
    let available = store.leaf_count();
    if size > available {
        return Err(ProofError::TreeTooSmall { size, available });
    }
    Ok(())
}

/// The tree head (root hash) of the first `size` leaves.
///
/// # Errors
///
/// [`ProofError::TreeTooSmall`] when the store has fewer leaves; [`ProofError::MissingSubtree`]
/// when it lacks a hash it should hold.
pub fn root_at<S: SubtreeHashes + ?Sized>(store: &S, size: u64) -> Result<Sha256Digest, ProofError> {
    check_size(store, size)?;
    range_hash(store, 0, size)
}

/// The inclusion proof (RFC 9162 §2.1.3.1 audit path) of leaf `index` in the tree of the first
/// `size` leaves, ordered from the leaf upwards.
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`], [`ProofError::TreeTooSmall`] or
/// [`ProofError::MissingSubtree`].
pub fn inclusion_proof<S: SubtreeHashes + ?Sized>(
    store: &S,
    index: u64,
    size: u64,
) -> Result<Vec<Sha256Digest>, ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    check_size(store, size)?;
    let mut proof = Vec::with_capacity(64 - size.leading_zeros() as usize);
    // PATH(m, D[start:end]) walked from the root down, so siblings are collected top-down and
    // reversed at the end to give the RFC's bottom-up order.
    let (mut start, mut end) = (0u64, size);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            proof.push(range_hash(store, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(store, start, start + k)?);
            start += k;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof (RFC 9162 §2.1.4.1) that the tree of `old_size` leaves is a prefix of
/// the tree of `new_size` leaves.
///
/// # Errors
///
/// [`ProofError::SizesOutOfOrder`], [`ProofError::TreeTooSmall`] or
/// [`ProofError::MissingSubtree`].
pub fn consistency_proof<S: SubtreeHashes + ?Sized>(
    store: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Sha256Digest>, ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old: old_size, new: new_size });
    }
    check_size(store, new_size)?;
    if old_size == 0 || old_size == new_size {
        return Ok(Vec::new());
    }
    // SUBPROOF(m, D[start:end], b), iteratively: each step either descends left (recording the
    // right subtree) or right (recording the left subtree); the final node is recorded unless it
    // is the whole old tree (b = true).
    let mut proof = Vec::new();
    let (mut start, mut end, mut whole_old_tree) = (0u64, new_size, true);
    let m = old_size;
    loop {
        let width = end - start;
        let local_m = m - start;
        if local_m == width {
            if !whole_old_tree {
                proof.push(range_hash(store, start, end)?);
            }
            break;
        }
        let k = split_point(width);
        if local_m <= k {
            proof.push(range_hash(store, start + k, end)?);
            end = start + k;
        } else {
            proof.push(range_hash(store, start, start + k)?);
            start += k;
            whole_old_tree = false;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// Verifies an inclusion proof (RFC 9162 §2.1.3.2).
///
/// # Errors
///
/// [`ProofError::IndexOutOfRange`], [`ProofError::WrongProofLength`] or
/// [`ProofError::RootMismatch`].
pub fn verify_inclusion(
    leaf: &Sha256Digest,
    index: u64,
    size: u64,
    proof: &[Sha256Digest],
    root: &Sha256Digest,
) -> Result<(), ProofError> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let mut fn_ = index;
    let mut sn = size - 1;
    let mut r = *leaf;
    for p in proof {
        if sn == 0 {
            return Err(ProofError::WrongProofLength {
                expected: inclusion_len(index, size),
                actual: proof.len(),
            });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            r = node_hash(p, &r);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongProofLength {
            expected: inclusion_len(index, size),
            actual: proof.len(),
        });
    }
    if r != *root {
        return Err(ProofError::RootMismatch { computed: r, expected: *root });
    }
    Ok(())
}

/// The number of hashes in an inclusion proof for `index` in a tree of `size`.
fn inclusion_len(index: u64, size: u64) -> usize {
    let (mut start, mut end, mut length) = (0u64, size, 0usize);
    while end - start > 1 {
        let k = split_point(end - start);
        if index < start + k {
            end = start + k;
        } else {
            start += k;
        }
        length += 1;
    }
    length
}

/// The number of hashes in a consistency proof from `old_size` to `new_size`
/// (`0 < old_size < new_size`).
fn consistency_len(old_size: u64, new_size: u64) -> usize {
    let (mut start, mut end, mut whole_old_tree, mut length) = (0u64, new_size, true, 0usize);
    loop {
        let width = end - start;
        if old_size - start == width {
            return length + usize::from(!whole_old_tree);
        }
        let k = split_point(width);
        if old_size - start <= k {
            end = start + k;
        } else {
            start += k;
            whole_old_tree = false;
        }
        length += 1;
    }
}

/// Verifies a consistency proof (RFC 9162 §2.1.4.2) between two tree heads.
///
/// # Errors
///
/// [`ProofError::SizesOutOfOrder`], [`ProofError::Inconsistent`],
/// [`ProofError::WrongProofLength`] or [`ProofError::RootMismatch`].
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Sha256Digest,
    new_root: &Sha256Digest,
    proof: &[Sha256Digest],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizesOutOfOrder { old: old_size, new: new_size });
    }
    if old_size == new_size {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength { expected: 0, actual: proof.len() });
        }
        if old_root != new_root {
            return Err(ProofError::Inconsistent { reason: "same size, different roots (a split view)" });
        }
        return Ok(());
    }
    if old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::WrongProofLength { expected: 0, actual: proof.len() });
        }
        return Ok(());
    }
    let expected = consistency_len(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
    }
    // When the old size is a power of two the old root is itself the first node of the path.
    let (first, rest) = if old_size.is_power_of_two() {
        (old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (first, rest),
            None => return Err(ProofError::WrongProofLength { expected, actual: 0 }),
        }
    };
    let mut fn_ = old_size - 1;
    let mut sn = new_size - 1;
    while fn_ & 1 == 1 {
        fn_ >>= 1;
        sn >>= 1;
    }
    let mut fr = *first;
    let mut sr = *first;
    for c in rest {
        if sn == 0 {
            return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
        }
        if fn_ & 1 == 1 || fn_ == sn {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fn_ & 1 == 0 {
                while fn_ & 1 == 0 && fn_ != 0 {
                    fn_ >>= 1;
                    sn >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fn_ >>= 1;
        sn >>= 1;
    }
    if sn != 0 {
        return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
    }
    if fr != *old_root {
        return Err(ProofError::RootMismatch { computed: fr, expected: *old_root });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch { computed: sr, expected: *new_root });
    }
    Ok(())
}

/// The most hashes a proof of a tree of at most 2^64 leaves can need: consistency proofs have at
/// most one per level plus one.
pub const MAX_PROOF_HASHES: usize = 65;

/// Parses a proof's JSON form and refuses more hashes than any real proof has.
fn decode_proof<T: serde::de::DeserializeOwned>(
    json: &[u8],
    hash_count: impl Fn(&T) -> usize,
) -> Result<T, ProofError> {
    let proof: T =
        serde_json::from_slice(json).map_err(|error| ProofError::Malformed { reason: error.to_string() })?;
    let count = hash_count(&proof);
    if count > MAX_PROOF_HASHES {
        return Err(ProofError::Malformed { reason: format!("{count} hashes is more than any proof has") });
    }
    Ok(proof)
}

/// An inclusion proof as exchanged between a log and an auditor (`sos-audit prove` prints it).
///
/// JSON: `{"index": 1, "size": 3, "hashes": ["<64 hex>", …]}`, hashes from the leaf upwards.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InclusionProof {
    /// The leaf index (an audit entry's `seq − 1`).
    pub index: u64,
    /// The tree size the proof is for.
    pub size: u64,
    /// The audit path, from the leaf upwards.
    pub hashes: Vec<Sha256Digest>,
}

impl InclusionProof {
    /// Builds the proof of leaf `index` in the tree of the first `size` leaves of `store`.
    ///
    /// # Errors
    ///
    /// As [`inclusion_proof`].
    pub fn generate<S: SubtreeHashes + ?Sized>(store: &S, index: u64, size: u64) -> Result<Self, ProofError> {
        Ok(Self { index, size, hashes: inclusion_proof(store, index, size)? })
    }

    /// Parses the JSON form, refusing more hashes than any real proof has.
    ///
    /// # Errors
    ///
    /// [`ProofError::Malformed`] for anything that is not a well-formed proof.
    pub fn from_json(json: &[u8]) -> Result<Self, ProofError> {
        decode_proof(json, |proof: &Self| proof.hashes.len())
    }

    /// Verifies that `leaf` (a leaf hash) is at this proof's index in the tree with `root`.
    ///
    /// # Errors
    ///
    /// As [`verify_inclusion`].
    pub fn verify(&self, leaf: &Sha256Digest, root: &Sha256Digest) -> Result<(), ProofError> {
        verify_inclusion(leaf, self.index, self.size, &self.hashes, root)
    }
}

/// A consistency proof between two tree sizes, as exchanged between a log and an auditor.
///
/// JSON: `{"old_size": 2, "new_size": 3, "hashes": ["<64 hex>", …]}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsistencyProof {
    /// The older (smaller) tree size.
    pub old_size: u64,
    /// The newer (larger) tree size.
    pub new_size: u64,
    /// The proof's hashes, in RFC 9162 order.
    pub hashes: Vec<Sha256Digest>,
}

impl ConsistencyProof {
    /// Builds the proof that the first `old_size` leaves of `store` are a prefix of its first
    /// `new_size`.
    ///
    /// # Errors
    ///
    /// As [`consistency_proof`].
    pub fn generate<S: SubtreeHashes + ?Sized>(
        store: &S,
        old_size: u64,
        new_size: u64,
    ) -> Result<Self, ProofError> {
        Ok(Self { old_size, new_size, hashes: consistency_proof(store, old_size, new_size)? })
    }

    /// Parses the JSON form, refusing more hashes than any real proof has.
    ///
    /// # Errors
    ///
    /// [`ProofError::Malformed`] for anything that is not a well-formed proof.
    pub fn from_json(json: &[u8]) -> Result<Self, ProofError> {
        decode_proof(json, |proof: &Self| proof.hashes.len())
    }

    /// Verifies the proof between two roots.
    ///
    /// # Errors
    ///
    /// As [`verify_consistency`].
    pub fn verify(&self, old_root: &Sha256Digest, new_root: &Sha256Digest) -> Result<(), ProofError> {
        verify_consistency(self.old_size, self.new_size, old_root, new_root, &self.hashes)
    }
}

/// An in-memory tree that keeps every complete subtree hash: appends are amortised O(1) hashes
/// and every proof is O(log n) lookups.
#[derive(Debug, Clone, Default)]
pub struct MemoryTree {
    /// `levels[l][i]` is the hash of the complete subtree of `2^l` leaves at index `i`.
    levels: Vec<Vec<Sha256Digest>>,
}

impl MemoryTree {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one leaf given its leaf hash, and records every subtree it completes.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) {
        if self.levels.is_empty() {
            self.levels.push(Vec::new());
        }
        self.levels[0].push(leaf);
        let mut level = 0;
        while self.levels[level].len().is_multiple_of(2) {
            let count = self.levels[level].len();
            let parent = node_hash(&self.levels[level][count - 2], &self.levels[level][count - 1]);
            if self.levels.len() == level + 1 {
                self.levels.push(Vec::new());
            }
            self.levels[level + 1].push(parent);
            level += 1;
        }
    }

    /// Appends one leaf given its data (hashed with [`leaf_hash`]).
    pub fn push(&mut self, data: &[u8]) {
        self.push_leaf_hash(leaf_hash(data));
    }

    /// The root of the whole tree.
    pub fn root(&self) -> Sha256Digest {
        // The store holds every subtree the recursion asks for, so this cannot fail.
        root_at(self, self.leaf_count()).unwrap_or_else(|_| empty_root())
    }
}

impl SubtreeHashes for MemoryTree {
    fn subtree(&self, level: u8, index: u64) -> Option<Sha256Digest> {
        let index = usize::try_from(index).ok()?;
        self.levels.get(usize::from(level))?.get(index).copied()
    }

    fn leaf_count(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaves.len() as u64)
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod adversarial_tests;
