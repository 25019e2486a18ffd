//! Checking a chain against signed checkpoints, and exporting tiles.

use std::path::{Path, PathBuf};

use sos_core::{Sha256Digest, TenantId};

use super::{MerkleStore, SignedCheckpoint, TILE_WIDTH, TileKey, entries_path, tiles_for_size};
use crate::error::{Error, Result};
use crate::merkle::{empty_root, leaf_hash, node_hash};
use crate::note::Checkpoint;
use crate::store::AuditStore;

/// The root of a growing tree in `O(log n)` memory: push leaves, read the root at any size.
///
/// ```
/// use sos_audit::merkle::MemoryTree;
/// use sos_audit::tlog::StreamingRoot;
///
/// let (mut streaming, mut tree) = (StreamingRoot::new(), MemoryTree::new());
/// for leaf in 0u32..1000 {
///     streaming.push_leaf_data(&leaf.to_be_bytes());
///     tree.push(&leaf.to_be_bytes());
///     assert_eq!(streaming.root(), tree.root());
/// }
/// ```
#[derive(Debug, Clone, Default)]
pub struct StreamingRoot {
    size: u64,
    /// Roots of the perfect subtrees that make up the tree, largest first, with their heights.
    stack: Vec<(u32, Sha256Digest)>,
}

impl StreamingRoot {
    /// An empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends the leaf of `data`.
    pub fn push_leaf_data(&mut self, data: &[u8]) {
        self.push_leaf_hash(leaf_hash(data));
    }

    /// Appends one leaf hash.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) {
        self.size += 1;
        self.stack.push((0, leaf));
        while self.stack.len() >= 2
            && self.stack[self.stack.len() - 1].0 == self.stack[self.stack.len() - 2].0
        {
            let (height, right) = self.stack.pop().unwrap_or((0, leaf));
            let (_, left) = self.stack.pop().unwrap_or((0, leaf));
            self.stack.push((height + 1, node_hash(&left, &right)));
        }
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root of the leaves pushed so far.
    pub fn root(&self) -> Sha256Digest {
        let mut subtrees = self.stack.iter().rev();
        let Some((_, last)) = subtrees.next() else { return empty_root() };
        subtrees.fold(*last, |right, (_, left)| node_hash(left, &right))
    }
}

/// What checking a chain against signed checkpoints found.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CheckpointFinding {
    /// The chain has fewer entries than a checkpoint signed: its tail was cut off.
    Truncated {
        /// The checkpoint's size.
        checkpoint_size: u64,
        /// How many entries the chain has.
        log_size: u64,
    },
    /// The chain's first `size` entries have another root than the checkpoint signed: the log
    /// was rewritten (forked) after the checkpoint, even if it verifies as a chain on its own.
    Forked {
        /// The checkpoint's size.
        size: u64,
        /// The root the checkpoint signed.
        signed_root: Sha256Digest,
        /// The root of the chain's first `size` entries.
        log_root: Sha256Digest,
    },
    /// Two signed checkpoints of one size with different roots: the log showed different
    /// histories to different people.
    SplitView {
        /// The size of both.
        size: u64,
        /// One root.
        first_root: Sha256Digest,
        /// The other.
        second_root: Sha256Digest,
    },
}

impl std::fmt::Display for CheckpointFinding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Truncated { checkpoint_size, log_size } => write!(
                f,
                "truncated: the checkpoint signs {checkpoint_size} entries but the log has only {log_size}"
            ),
            Self::Forked { size, signed_root, log_root } => write!(
                f,
                "forked: the log's first {size} entries have root {log_root}, the checkpoint signed {signed_root}"
            ),
            Self::SplitView { size, first_root, second_root } => write!(
                f,
                "split view: two signed checkpoints of size {size} with roots {first_root} and {second_root}"
            ),
        }
    }
}

fn split_views(checkpoints: &[Checkpoint]) -> Vec<CheckpointFinding> {
    let mut findings = Vec::new();
    for (position, first) in checkpoints.iter().enumerate() {
        for second in &checkpoints[position + 1..] {
            if first.size == second.size && first.root != second.root {
                findings.push(CheckpointFinding::SplitView {
                    size: first.size,
                    first_root: first.root,
                    second_root: second.root,
                });
            }
        }
    }
    findings
}

/// Compares roots of a stream of entry hashes with the checkpoints.
struct RootChecker<'a> {
    targets: Vec<&'a Checkpoint>,
    next: usize,
    root: StreamingRoot,
    findings: Vec<CheckpointFinding>,
}

impl<'a> RootChecker<'a> {
    fn new(checkpoints: &'a [Checkpoint]) -> Self {
        let mut targets: Vec<&Checkpoint> = checkpoints.iter().collect();
        targets.sort_by_key(|checkpoint| checkpoint.size);
        let mut checker =
            Self { targets, next: 0, root: StreamingRoot::new(), findings: split_views(checkpoints) };
        checker.check_reached();
        checker
    }

    fn wants_more(&self) -> bool {
        self.next < self.targets.len()
    }

    fn push(&mut self, entry_hash: &Sha256Digest) {
        self.root.push_leaf_data(entry_hash.as_bytes());
        self.check_reached();
    }

    fn check_reached(&mut self) {
        while let Some(target) = self.targets.get(self.next)
            && target.size == self.root.size()
        {
            let log_root = self.root.root();
            if log_root != target.root {
                self.findings.push(CheckpointFinding::Forked {
                    size: target.size,
                    signed_root: target.root,
                    log_root,
                });
            }
            self.next += 1;
        }
    }

    fn finish(mut self) -> Vec<CheckpointFinding> {
        let log_size = self.root.size();
        for target in &self.targets[self.next..] {
            self.findings.push(CheckpointFinding::Truncated { checkpoint_size: target.size, log_size });
        }
        self.findings
    }
}

/// Recomputes the roots of `tenant`'s chain at the sizes of `checkpoints` (already opened, so
/// their signatures and origins are checked) from the entries themselves, and reports a
/// truncated tail, a fork and a split view. An empty list means the chain's prefixes match every
/// checkpoint. Check the chain itself with [`verify_store`](crate::verify_store) too.
///
/// # Errors
///
/// [`Error::Storage`] when the store cannot be read.
pub async fn verify_checkpoints<S: AuditStore>(
    store: &S,
    tenant: &TenantId,
    checkpoints: &[Checkpoint],
) -> Result<Vec<CheckpointFinding>> {
    let mut checker = RootChecker::new(checkpoints);
    let mut after = 0;
    while checker.wants_more() {
        let page = store.read_page(tenant, after, crate::PAGE_SIZE).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in &page {
            if !checker.wants_more() {
                break;
            }
            checker.push(&entry.hash);
        }
        if page.len() < crate::PAGE_SIZE as usize {
            break;
        }
    }
    Ok(checker.finish())
}

/// As [`verify_checkpoints`], for a JSONL chain file.
///
/// # Errors
///
/// [`Error::MalformedLine`] or [`Error::Io`].
pub fn verify_checkpoints_jsonl<R: std::io::BufRead>(
    reader: R,
    checkpoints: &[Checkpoint],
) -> Result<Vec<CheckpointFinding>> {
    let mut checker = RootChecker::new(checkpoints);
    let mut lines = crate::jsonl::JsonlReader::new(reader);
    while checker.wants_more() {
        let Some(entry) = lines.next_entry()? else { break };
        checker.push(&entry.hash);
    }
    Ok(checker.finish())
}

async fn write_file(path: PathBuf, bytes: Vec<u8>) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&path, bytes)
    })
    .await
    .map_err(|join| Error::Io(std::io::Error::other(join)))??;
    Ok(())
}

/// Writes `tenant`'s tree at its latest recorded checkpoint in the C2SP `tlog-tiles` layout under
/// `dir`: `checkpoint` (the signed note), `tile/<L>/<N>[.p/<W>]` (hash tiles) and
/// `tile/entries/<N>[.p/<W>]` (entry bundles: each entry's leaf data, its 32-byte hash, behind a
/// big-endian 2-byte length). Serve `dir` as static files; `sos-audit export` gives the full
/// entries. Returns the checkpoint exported.
///
/// # Errors
///
/// [`Error::NotCheckpointed`] when the tenant has no checkpoint, [`Error::CorruptTree`] when a
/// tile is missing, [`ProofError::TreeTooSmall`](crate::merkle::ProofError::TreeTooSmall) when
/// the checkpoint is larger than the stored tree, [`Error::Storage`], [`Error::Io`].
pub async fn export_tiles<S: MerkleStore>(
    store: &S,
    tenant: &TenantId,
    dir: &Path,
) -> Result<SignedCheckpoint> {
    let checkpoint = store.latest_checkpoint(tenant).await?.ok_or(Error::NotCheckpointed {
        tenant: tenant.to_string(),
        seq: 0,
        checkpoint_size: None,
    })?;
    let size = checkpoint.size();
    // A recorded checkpoint larger than the stored tree (a planted row, or a tail cut off) is
    // refused before the tile layout of its size is laid out in memory.
    let available = store.tree_state(tenant).await?.size;
    if size > available {
        return Err(crate::merkle::ProofError::TreeTooSmall { size, available }.into());
    }
    let layout = tiles_for_size(size);
    for chunk in layout.chunks(512) {
        let keys: Vec<TileKey> = chunk.iter().map(|(key, _)| *key).collect();
        let stored: std::collections::BTreeMap<TileKey, Vec<u8>> =
            store.read_tiles(tenant, &keys).await?.into_iter().collect();
        for (key, width) in chunk {
            let bytes = stored.get(key).ok_or(Error::CorruptTree {
                tenant: tenant.to_string(),
                reason: "a tile the checkpoint covers is missing; run the checkpointer",
            })?;
            let wanted = usize::try_from(*width).unwrap_or(usize::MAX) * 32;
            let tile = bytes.get(..wanted).ok_or(Error::CorruptTree {
                tenant: tenant.to_string(),
                reason: "a stored tile is narrower than the checkpoint needs",
            })?;
            write_file(dir.join(key.path(*width)), tile.to_vec()).await?;
        }
    }
    let mut after = 0u64;
    while after < size {
        let bundle_index = after / TILE_WIDTH;
        let want = u32::try_from((size - after).min(TILE_WIDTH)).unwrap_or(256);
        let entries = store.read_page(tenant, after, want).await?;
        if entries.len() != want as usize {
            return Err(Error::EntryNotFound {
                tenant: tenant.to_string(),
                seq: after + entries.len() as u64 + 1,
            });
        }
        let mut bundle = Vec::with_capacity(entries.len() * 34);
        for entry in &entries {
            bundle.extend_from_slice(&32u16.to_be_bytes());
            bundle.extend_from_slice(entry.hash.as_bytes());
        }
        after += entries.len() as u64;
        let width = entries.len() as u64;
        write_file(dir.join(entries_path(bundle_index, width)), bundle).await?;
    }
    write_file(dir.join("checkpoint"), checkpoint.note.clone().into_bytes()).await?;
    Ok(checkpoint)
}
