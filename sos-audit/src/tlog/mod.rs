//! The transparency log over each tenant's chain: stored Merkle tiles, signed checkpoints,
//! inclusion proofs, anchors and tile export.
//!
//! # How the pieces fit
//!
//! - A [`MerkleStore`] (every [`AuditStore`]: memory, PostgreSQL, SQLite) keeps each tenant's
//!   RFC 9162 tree as C2SP tiles of 256 hashes, and the checkpoints it signed. The tree is
//!   *derived* from the chain: [`MerkleStore::extend_tree`] reads the entries appended since the
//!   last extension, checks that they chain on (seq, `prev_hash`, recomputed hash), and writes
//!   the tiles they change, in one transaction serialized per tenant. Appends are untouched.
//! - A [`Checkpointer`] holds the signing key (never stored in the database), extends the tree,
//!   checks the new head against the last signed checkpoint (a consistency proof) and against
//!   every checkpoint of the same size (split view), re-derives the not yet signed part of the
//!   stored tree from the chain (rewritten rows are refused; usually its own extension is that
//!   re-derivation, reported by [`MerkleStore::extend_tree_reported`], so the new entries are
//!   read once), signs a C2SP `tlog-checkpoint`, writes it to
//!   its [`AnchorSink`]s and records it. It runs every N entries, after at most T seconds of
//!   pending entries, or on demand.
//! - [`prove`] gives an entry's inclusion proof against a stored checkpoint with `O(log n)` reads
//!   (a handful of tiles in one query), without the key.
//! - [`verify_checkpoints`] (and the `sos-audit verify --checkpoint` command) recomputes roots
//!   from the chain itself and reports a truncated tail, a fork, or a split view.
//! - [`export_tiles`] writes a tenant's tree and entries in the C2SP `tlog-tiles` layout.
//!
//! The formats are specified in `docs/audit-format.md`.

mod anchor;
mod checkpointer;
mod keys;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod tiles;
mod verify;

use std::future::Future;

use sos_core::{Sha256Digest, TenantId};

#[cfg(feature = "postgres")]
pub use anchor::PgAnchorSink;
#[cfg(feature = "sqlite")]
pub use anchor::SqliteAnchorSink;
pub use anchor::{Anchor, AnchorReceipt, AnchorSink, FsAnchorSink};
pub use checkpointer::{CheckpointPolicy, Checkpointer};
pub use keys::{generate_signer_file, load_signer, load_verifier};
pub use tiles::{
    FULL_TILE_BYTES, MAX_TILE_LEVEL, TILE_WIDTH, TileBuilder, TileKey, TileSet, entries_path, tiles_for_size,
};
pub use verify::{
    CheckpointFinding, StreamingRoot, export_tiles, verify_checkpoints, verify_checkpoints_jsonl,
};

use crate::error::{Error, Result};
use crate::merkle::InclusionProof;
use crate::note::Checkpoint;
use crate::store::AuditStore;

/// The origin line of `tenant`'s checkpoints in a log named `log_name` (the signing key's name):
/// `<log name>/<tenant>`.
///
/// ```
/// let tenant: sos_core::TenantId = "acme".parse()?;
/// assert_eq!(sos_audit::tlog::origin_for("example.com/sos-audit", &tenant), "example.com/sos-audit/acme");
/// # Ok::<(), sos_core::Error>(())
/// ```
pub fn origin_for(log_name: &str, tenant: &TenantId) -> String {
    format!("{log_name}/{tenant}")
}

/// A tenant's stored tree: how many leaves it has, and the hash of the entry at that position
/// (the leaf data of the last leaf; zero for an empty tree).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TreeState {
    /// The number of leaves (the chain's entries 1..=size).
    pub size: u64,
    /// The hash of entry `size` ([`Sha256Digest::ZERO`] when the tree is empty).
    pub last_entry_hash: Sha256Digest,
}

/// Stored tiles with their keys, as C2SP bytes (concatenated 32-byte hashes).
pub type StoredTiles = Vec<(TileKey, Vec<u8>)>;

/// What one tree extension ([`MerkleStore::extend_tree_reported`]) read, from one consistent
/// state of the database, and wrote, in one transaction that found the tree head still as read
/// (SQLite reads from a snapshot before it takes the write lock): enough for a [`Checkpointer`] to check the extension against a signed tree
/// without reading the new entries a second time.
///
/// The extension resumed a [`TileBuilder`] from `edges` at `before.size` leaves, pushed the leaf
/// of every new entry after checking that it chains on from `before.last_entry_hash` (seq,
/// tenant, `prev_hash`, recomputed hash), and wrote exactly `written` and `after`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeExtension {
    /// The stored tree's state it started from.
    pub before: TreeState,
    /// The stored hash of the chain's entry `before.size`, read with `before` (`None`
    /// when the tree was empty or that entry is missing from the chain).
    pub before_entry_hash: Option<Sha256Digest>,
    /// The edge tiles of the tree of `before.size` leaves it resumed from, as C2SP bytes, each
    /// exactly as wide as that size implies.
    pub edges: std::collections::BTreeMap<TileKey, Vec<u8>>,
    /// Every tile it wrote (full or partial), as C2SP bytes, in key order.
    pub written: StoredTiles,
    /// The state it committed.
    pub after: TreeState,
    /// The root of the tree of `after.size` leaves it built.
    pub root: Sha256Digest,
}

/// A checkpoint as signed and recorded by the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// The tenant whose chain it covers.
    pub tenant: TenantId,
    /// The parsed checkpoint body (origin, size, root).
    pub checkpoint: Checkpoint,
    /// The signed note exactly as published.
    pub note: String,
    /// When it was signed, in microseconds since the Unix epoch.
    pub signed_us: i64,
}

impl SignedCheckpoint {
    /// The tree size the checkpoint covers.
    pub fn size(&self) -> u64 {
        self.checkpoint.size
    }

    /// The root hash it signs.
    pub fn root(&self) -> Sha256Digest {
        self.checkpoint.root
    }
}

/// An entry's inclusion proof against a signed checkpoint: everything an auditor needs to check
/// that the entry is in the log the checkpoint commits to (`sos-audit prove` prints it).
///
/// JSON: `{"tenant": "acme", "seq": 2, "entry_hash": "<64 hex>", "proof": {"index": 1, "size": 3,
/// "hashes": [...]}, "checkpoint": "<signed note>"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryProof {
    /// The entry's tenant.
    pub tenant: TenantId,
    /// The entry's sequence number (leaf index `seq − 1`).
    pub seq: u64,
    /// The entry's hash, the leaf data.
    pub entry_hash: Sha256Digest,
    /// The RFC 9162 inclusion proof.
    pub proof: InclusionProof,
    /// The signed checkpoint the proof leads to.
    pub checkpoint: String,
}

/// The largest proof file [`EntryProof::from_json`] reads.
pub const MAX_PROOF_JSON_BYTES: usize = 64 * 1024;

impl EntryProof {
    /// Parses the JSON form, with a size limit.
    ///
    /// # Errors
    ///
    /// [`ProofError::Malformed`](crate::merkle::ProofError::Malformed).
    pub fn from_json(json: &[u8]) -> Result<Self> {
        let malformed = |reason: String| Error::Proof(crate::merkle::ProofError::Malformed { reason });
        if json.len() > MAX_PROOF_JSON_BYTES {
            return Err(malformed("the proof file is larger than 64 KiB".to_owned()));
        }
        let proof: Self = serde_json::from_slice(json).map_err(|error| malformed(error.to_string()))?;
        if proof.proof.hashes.len() > crate::merkle::MAX_PROOF_HASHES {
            return Err(malformed("more hashes than any proof has".to_owned()));
        }
        Ok(proof)
    }

    /// Verifies the proof: the checkpoint's signature by `verifier` and its origin
    /// (`<key name>/<tenant>`), that the proof is for this entry's index and the checkpoint's
    /// size, and that it leads to the signed root. Returns the verified checkpoint.
    ///
    /// # Errors
    ///
    /// [`Error::Note`] for a forged or foreign checkpoint, [`Error::ProofMismatch`] for a proof of
    /// another index or size, [`Error::Proof`] when it does not lead to the root.
    pub fn verify(&self, verifier: &crate::note::NoteVerifier) -> Result<Checkpoint> {
        let origin = origin_for(verifier.name(), &self.tenant);
        let checkpoint = Checkpoint::open(self.checkpoint.as_bytes(), verifier, &origin)?;
        self.verify_against(&checkpoint)?;
        Ok(checkpoint)
    }

    /// Verifies the proof against a checkpoint the caller already opened (for example one it
    /// kept from earlier).
    ///
    /// # Errors
    ///
    /// As [`EntryProof::verify`], without the signature check.
    pub fn verify_against(&self, checkpoint: &Checkpoint) -> Result<()> {
        if self.seq == 0 || self.proof.index != self.seq - 1 {
            return Err(Error::ProofMismatch {
                reason: format!(
                    "the proof is for leaf index {}, but entry {} is leaf {}",
                    self.proof.index,
                    self.seq,
                    self.seq.saturating_sub(1)
                ),
            });
        }
        if self.proof.size != checkpoint.size {
            return Err(Error::ProofMismatch {
                reason: format!(
                    "the proof is for a tree of size {}, but the checkpoint has size {}",
                    self.proof.size, checkpoint.size
                ),
            });
        }
        self.proof.verify(&crate::merkle::leaf_hash(self.entry_hash.as_bytes()), &checkpoint.root)?;
        Ok(())
    }
}

/// Storage for the per-tenant Merkle tree (as tiles) and for signed checkpoints.
///
/// Implemented by [`MemoryAuditStore`](crate::MemoryAuditStore), `PgAuditChain` (feature
/// `postgres`) and `SqliteAuditChain` (feature `sqlite`); all pass one conformance suite. The SQL
/// stores need the migrations of this crate (`0100000004` and later).
pub trait MerkleStore: AuditStore {
    /// Extends `tenant`'s tree with at most `max_entries` of the chain's entries after the
    /// tree's current size, in one transaction serialized per tenant, and returns the new state.
    ///
    /// Each new entry must carry the next sequence number, link to the previous entry's hash and
    /// match its own hash; otherwise nothing is written.
    ///
    /// # Errors
    ///
    /// [`Error::ChainBroken`] for an entry that does not chain on, [`Error::CorruptTree`] for
    /// unreadable tiles, [`Error::Storage`].
    fn extend_tree(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> impl Future<Output = Result<TreeState>> + Send;

    /// As [`MerkleStore::extend_tree`], and reports what the extension read and wrote when it
    /// appended at least one entry ([`TreeExtension`]), so that a [`Checkpointer`] need not read
    /// the new entries again to re-derive them. An implementation must report exactly what it
    /// read (one consistent state, whose tree head is still the stored one when it writes) and
    /// committed: the checkpointer signs the reported root once it has
    /// checked the report against the signed tree and the stored tiles.
    ///
    /// The default calls [`MerkleStore::extend_tree`] and reports nothing (the checkpointer
    /// then reads the new entries again).
    ///
    /// # Errors
    ///
    /// As [`MerkleStore::extend_tree`].
    fn extend_tree_reported(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> impl Future<Output = Result<(TreeState, Option<TreeExtension>)>> + Send {
        async move { Ok((self.extend_tree(tenant, max_entries).await?, None)) }
    }

    /// The stored tree's state (size 0 when nothing was stored yet).
    fn tree_state(&self, tenant: &TenantId) -> impl Future<Output = Result<TreeState>> + Send;

    /// The stored tiles among `keys`, as C2SP bytes (missing tiles are left out).
    fn read_tiles(
        &self,
        tenant: &TenantId,
        keys: &[TileKey],
    ) -> impl Future<Output = Result<StoredTiles>> + Send;

    /// The tree's state and the stored tiles among `keys`, read together (backends answer in one
    /// query; the default makes two calls).
    fn read_tree(
        &self,
        tenant: &TenantId,
        keys: &[TileKey],
    ) -> impl Future<Output = Result<(TreeState, StoredTiles)>> + Send {
        async move {
            let state = self.tree_state(tenant).await?;
            let tiles = self.read_tiles(tenant, keys).await?;
            Ok((state, tiles))
        }
    }

    /// The recorded checkpoint with the largest size, if any.
    fn latest_checkpoint(
        &self,
        tenant: &TenantId,
    ) -> impl Future<Output = Result<Option<SignedCheckpoint>>> + Send;

    /// The recorded checkpoint of exactly `size`, if any.
    fn checkpoint_at(
        &self,
        tenant: &TenantId,
        size: u64,
    ) -> impl Future<Output = Result<Option<SignedCheckpoint>>> + Send;

    /// Records a checkpoint once per (tenant, size) and returns the one recorded for that size:
    /// `checkpoint` itself, or the one recorded before it (compare the roots: a different root is
    /// a split view).
    fn record_checkpoint(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> impl Future<Output = Result<SignedCheckpoint>> + Send;

    /// As [`MerkleStore::record_checkpoint`], and also returns the recorded checkpoint with the
    /// largest size as read after recording (`checkpoint`'s own size or larger: a concurrent
    /// checkpointer may have recorded a larger one), so that a [`Checkpointer`] learns both in
    /// one call. The SQLite store answers in one round trip; the default makes the two calls.
    ///
    /// # Errors
    ///
    /// As [`MerkleStore::record_checkpoint`] and [`MerkleStore::latest_checkpoint`].
    fn record_checkpoint_and_latest(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> impl Future<Output = Result<(SignedCheckpoint, SignedCheckpoint)>> + Send {
        async move {
            let recorded = self.record_checkpoint(checkpoint).await?;
            let latest =
                self.latest_checkpoint(&checkpoint.tenant).await?.unwrap_or_else(|| recorded.clone());
            Ok((recorded, latest))
        }
    }
}

/// Reads the tree state and the tiles that a proof computation on the tree of `size` leaves
/// needs, in one query, refusing a size larger than the stored tree.
pub(crate) async fn load_tiles<S, F, T>(store: &S, tenant: &TenantId, size: u64, plan: F) -> Result<TileSet>
where
    S: MerkleStore + ?Sized,
    F: Fn(&tiles::TilePlanner) -> Result<T, crate::merkle::ProofError>,
{
    let planner = tiles::TilePlanner::new(size);
    plan(&planner)?;
    let keys = planner.into_keys();
    let (state, tiles) = store.read_tree(tenant, &keys).await?;
    if size > state.size {
        return Err(crate::merkle::ProofError::TreeTooSmall { size, available: state.size }.into());
    }
    let mut set = TileSet::new(size);
    for (key, bytes) in tiles {
        set.insert(key, &bytes).map_err(|error| match error {
            Error::CorruptTree { reason, .. } => Error::CorruptTree { tenant: tenant.to_string(), reason },
            other => other,
        })?;
    }
    Ok(set)
}

/// The root of `tenant`'s stored tree at `size` leaves, from a few stored tiles.
///
/// # Errors
///
/// [`ProofError::TreeTooSmall`](crate::merkle::ProofError::TreeTooSmall) when the stored tree is
/// smaller, [`Error::Storage`], [`Error::CorruptTree`].
pub async fn root_at<S: MerkleStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    size: u64,
) -> Result<Sha256Digest> {
    let set = load_tiles(store, tenant, size, |planner| crate::merkle::root_at(planner, size)).await?;
    Ok(crate::merkle::root_at(&set, size)?)
}

/// The inclusion proof of leaf `index` in `tenant`'s stored tree of `size` leaves.
///
/// # Errors
///
/// As [`root_at`], and [`ProofError::IndexOutOfRange`](crate::merkle::ProofError::IndexOutOfRange).
pub async fn inclusion_proof<S: MerkleStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    index: u64,
    size: u64,
) -> Result<InclusionProof> {
    if index >= size {
        return Err(crate::merkle::ProofError::IndexOutOfRange { index, size }.into());
    }
    let set = load_tiles(store, tenant, size, |planner| crate::merkle::inclusion_proof(planner, index, size))
        .await?;
    Ok(InclusionProof::generate(&set, index, size)?)
}

/// The consistency proof between sizes `old_size` and `new_size` of `tenant`'s stored tree.
///
/// # Errors
///
/// As [`root_at`], and [`ProofError::SizesOutOfOrder`](crate::merkle::ProofError::SizesOutOfOrder).
pub async fn consistency_proof<S: MerkleStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    old_size: u64,
    new_size: u64,
) -> Result<crate::merkle::ConsistencyProof> {
    if old_size > new_size {
        return Err(crate::merkle::ProofError::SizesOutOfOrder { old: old_size, new: new_size }.into());
    }
    let set = load_tiles(store, tenant, new_size, |planner| {
        crate::merkle::consistency_proof(planner, old_size, new_size)
    })
    .await?;
    Ok(crate::merkle::ConsistencyProof::generate(&set, old_size, new_size)?)
}

/// The inclusion proof of `tenant`'s entry `seq` against the latest recorded checkpoint, or
/// against the recorded checkpoint of size `at_size` when given. No key is needed.
///
/// # Errors
///
/// [`Error::NotCheckpointed`] when no recorded checkpoint covers the entry yet (make one with
/// [`Checkpointer::checkpoint_now`]), [`Error::EntryNotFound`], and the errors of
/// [`inclusion_proof`].
pub async fn prove<S: MerkleStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
    seq: u64,
    at_size: Option<u64>,
) -> Result<EntryProof> {
    let checkpoint = match at_size {
        Some(size) => store.checkpoint_at(tenant, size).await?,
        None => store.latest_checkpoint(tenant).await?,
    };
    let Some(checkpoint) = checkpoint else {
        return Err(Error::NotCheckpointed { tenant: tenant.to_string(), seq, checkpoint_size: None });
    };
    if seq == 0 || seq > checkpoint.size() {
        let head = store.head(tenant).await?.map_or(0, |head| head.seq);
        if seq == 0 || seq > head {
            return Err(Error::EntryNotFound { tenant: tenant.to_string(), seq });
        }
        return Err(Error::NotCheckpointed {
            tenant: tenant.to_string(),
            seq,
            checkpoint_size: Some(checkpoint.size()),
        });
    }
    let entry = store
        .read_page(tenant, seq - 1, 1)
        .await?
        .into_iter()
        .next()
        .filter(|entry| entry.seq == seq)
        .ok_or_else(|| Error::EntryNotFound { tenant: tenant.to_string(), seq })?;
    let proof = inclusion_proof(store, tenant, seq - 1, checkpoint.size()).await?;
    Ok(EntryProof { tenant: tenant.clone(), seq, entry_hash: entry.hash, proof, checkpoint: checkpoint.note })
}

/// How many entries one [`MerkleStore::extend_tree`] transaction takes at most when catching up.
pub const EXTEND_BATCH: u32 = 16_384;

/// Extends `tenant`'s stored tree up to the chain's head as it was when called, in batches.
///
/// # Errors
///
/// As [`MerkleStore::extend_tree`].
pub async fn sync_tree<S: MerkleStore + ?Sized>(store: &S, tenant: &TenantId) -> Result<TreeState> {
    let target = store.head(tenant).await?.map_or(0, |head| head.seq);
    let mut state = store.extend_tree(tenant, EXTEND_BATCH).await?;
    while state.size < target {
        let after = store.extend_tree(tenant, EXTEND_BATCH).await?;
        if after.size == state.size {
            // The chain has fewer entries than its head row says: the verifier reports it.
            break;
        }
        state = after;
    }
    Ok(state)
}

/// As [`sync_tree`], and returns the [`TreeExtension`] when one extension took the tree to the
/// returned state (none when nothing was appended, or when catching up took several batches).
pub(crate) async fn sync_tree_reported<S: MerkleStore + ?Sized>(
    store: &S,
    tenant: &TenantId,
) -> Result<(TreeState, Option<TreeExtension>)> {
    let target = store.head(tenant).await?.map_or(0, |head| head.seq);
    let (mut state, mut extension) = store.extend_tree_reported(tenant, EXTEND_BATCH).await?;
    while state.size < target {
        extension = None;
        let after = store.extend_tree(tenant, EXTEND_BATCH).await?;
        if after.size == state.size {
            break;
        }
        state = after;
    }
    Ok((state, extension))
}

/// Shared by the backends: the entries an extension read (from entry `before.size` on, when the
/// tree is not empty, then the new ones) split into the hash of entry `before.size` and the new
/// entries, at most `max_entries` of them.
pub(crate) fn split_previous(
    before: &TreeState,
    mut entries: Vec<crate::AuditEntry>,
    max_entries: u32,
) -> (Option<Sha256Digest>, Vec<crate::AuditEntry>) {
    let previous = match entries.first() {
        Some(first) if before.size > 0 && first.seq == before.size => Some(entries.remove(0).hash),
        _ => None,
    };
    entries.retain(|entry| entry.seq > before.size);
    entries.truncate(usize::try_from(max_entries).unwrap_or(usize::MAX));
    (previous, entries)
}

/// Shared by the backends: resumes the tree of `before` from its stored edge tiles, pushes the
/// new `entries` (checking that they chain on) and reports the tiles to write.
pub(crate) fn build_extension(
    tenant: &TenantId,
    before: TreeState,
    before_entry_hash: Option<Sha256Digest>,
    edges: std::collections::BTreeMap<TileKey, Vec<u8>>,
    entries: &[crate::AuditEntry],
) -> Result<TreeExtension> {
    let mut builder = TileBuilder::resume(before.size, &edges).map_err(|bad| corrupt_tree(tenant, bad))?;
    let mut after = before;
    push_entries(tenant, &mut after, &mut builder, entries)?;
    Ok(TreeExtension {
        before,
        before_entry_hash,
        edges,
        written: builder.take_changed(),
        after,
        root: builder.root(),
    })
}

/// Shared by the backends: extends a tree state with entries, checking that they chain on.
pub(crate) fn push_entries(
    tenant: &TenantId,
    state: &mut TreeState,
    builder: &mut TileBuilder,
    entries: &[crate::AuditEntry],
) -> Result<()> {
    let mut scratch = Vec::new();
    for entry in entries {
        let broken = |reason| Error::ChainBroken { tenant: tenant.to_string(), seq: entry.seq, reason };
        if entry.seq != state.size + 1 {
            return Err(broken("the next entry does not carry the next sequence number"));
        }
        if &entry.tenant != tenant {
            return Err(broken("the entry names another tenant"));
        }
        if entry.prev_hash != state.last_entry_hash {
            return Err(broken("prev_hash is not the previous entry's hash"));
        }
        if entry.compute_hash_with(&mut scratch)? != entry.hash {
            return Err(broken("the entry does not match its hash"));
        }
        builder.push_leaf_data(entry.hash.as_bytes());
        state.size = entry.seq;
        state.last_entry_hash = entry.hash;
    }
    Ok(())
}

pub(crate) fn corrupt_tree(tenant: &TenantId, tiles::BadTile(reason): tiles::BadTile) -> Error {
    Error::CorruptTree { tenant: tenant.to_string(), reason }
}

pub(crate) use tiles::edge_tiles;

pub(crate) use memory::MemoryTlog;

/// A tree size as the databases' signed 64-bit integer. Sizes beyond `i64::MAX` saturate: no
/// log reaches them, and a saturated bound still selects every stored row.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn db_size(size: u64) -> i64 {
    i64::try_from(size).unwrap_or(i64::MAX)
}

/// Reads a tree head row's columns, refusing what no extender writes.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn state_from_parts(tenant: &TenantId, size: i64, last_entry_hash: &[u8]) -> Result<TreeState> {
    let bad = |reason| Error::CorruptTree { tenant: tenant.to_string(), reason };
    let size = u64::try_from(size).map_err(|_| bad("negative tree size"))?;
    let hash = <[u8; 32]>::try_from(last_entry_hash).map_err(|_| bad("last entry hash is not 32 bytes"))?;
    Ok(TreeState { size, last_entry_hash: Sha256Digest::from_bytes(hash) })
}

/// Reads a stored tile row's key, refusing what no extender writes.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn tile_key_from_parts(tenant: &TenantId, level: i64, index: i64) -> Result<TileKey> {
    let bad = || Error::CorruptTree { tenant: tenant.to_string(), reason: "a tile key is out of range" };
    Ok(TileKey {
        level: u8::try_from(level).map_err(|_| bad())?,
        index: u64::try_from(index).map_err(|_| bad())?,
    })
}

/// Reads a recorded checkpoint's body (its signature is checked by whoever relies on it).
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn checkpoint_from_parts(
    tenant: &TenantId,
    note: String,
    signed_us: i64,
) -> Result<SignedCheckpoint> {
    let split = note.rfind("\n\n").ok_or(Error::CorruptTree {
        tenant: tenant.to_string(),
        reason: "a recorded checkpoint is not a signed note",
    })?;
    let checkpoint = Checkpoint::parse(&note[..=split])?;
    Ok(SignedCheckpoint { tenant: tenant.clone(), checkpoint, note, signed_us })
}
