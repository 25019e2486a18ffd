//! C2SP `tlog-tiles`: the tree stored as tiles of 256 hashes, built incrementally and read back
//! as [`SubtreeHashes`].
//!
//! A tile at tile level `L` holds consecutive hashes of tree level `8·L`: tile `(L, N)` holds the
//! hashes `[256·N, 256·N + W)` of that level, `W` its width (256 when full). Level-0 tiles hold
//! leaf hashes; the hashes of tree level `8·(L+1)` are the roots of full level-`L` tiles. A
//! complete subtree of tree level `8·L + r` (`r < 8`) is computed from `2^r` hashes of one tile,
//! so every proof of a tree of `n` leaves reads about `log₂₅₆ n + 1` tiles.

use std::collections::BTreeMap;
use std::fmt;

use sos_core::Sha256Digest;

use crate::merkle::{SubtreeHashes, leaf_hash, node_hash};

/// Hashes per full tile (C2SP `tlog-tiles`).
pub const TILE_WIDTH: u64 = 256;
/// Bytes of a full tile: 256 hashes of 32 bytes.
pub const FULL_TILE_BYTES: usize = 256 * 32;
/// Tile levels needed for a tree of up to 2^64 leaves (8 tree levels per tile level).
pub const MAX_TILE_LEVEL: u8 = 7;

/// The address of one tile: its tile level and its index within the level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TileKey {
    /// The tile level (0: leaf hashes; `L`: hashes of tree level `8·L`).
    pub level: u8,
    /// The tile's index within its level.
    pub index: u64,
}

impl TileKey {
    /// The C2SP path of this tile with `width` hashes, `tile/<L>/<N>[.p/<W>]`.
    ///
    /// ```
    /// use sos_audit::tlog::TileKey;
    ///
    /// assert_eq!(TileKey { level: 0, index: 1234067 }.path(256), "tile/0/x001/x234/067");
    /// assert_eq!(TileKey { level: 1, index: 0 }.path(7), "tile/1/000.p/7");
    /// ```
    pub fn path(&self, width: u64) -> String {
        format!("tile/{}/{}", self.level, index_path(self.index, width))
    }
}

/// The C2SP path of an entry bundle with `width` entries, `tile/entries/<N>[.p/<W>]`.
pub fn entries_path(index: u64, width: u64) -> String {
    format!("tile/entries/{}", index_path(index, width))
}

/// `N` as 3-digit path elements, all but the last prefixed with `x`, and `.p/<W>` when partial.
fn index_path(index: u64, width: u64) -> String {
    let mut groups = Vec::new();
    let mut rest = index;
    loop {
        groups.push(rest % 1000);
        rest /= 1000;
        if rest == 0 {
            break;
        }
    }
    let mut path = String::new();
    for (position, group) in groups.iter().rev().enumerate() {
        if position + 1 < groups.len() {
            path.push_str(&format!("x{group:03}/"));
        } else {
            path.push_str(&format!("{group:03}"));
        }
    }
    if width < TILE_WIDTH {
        path.push_str(&format!(".p/{width}"));
    }
    path
}

/// The tiles (and their widths) that make up the tree of `size` leaves, level by level.
///
/// ```
/// use sos_audit::tlog::{TileKey, tiles_for_size};
///
/// // 300 leaves: one full leaf tile, one partial of 44, and a level-1 tile holding its root.
/// assert_eq!(
///     tiles_for_size(300),
///     vec![
///         (TileKey { level: 0, index: 0 }, 256),
///         (TileKey { level: 0, index: 1 }, 44),
///         (TileKey { level: 1, index: 0 }, 1),
///     ]
/// );
/// ```
pub fn tiles_for_size(size: u64) -> Vec<(TileKey, u64)> {
    let mut tiles = Vec::new();
    for level in 0..=MAX_TILE_LEVEL {
        let hashes = level_count(size, level);
        if hashes == 0 {
            break;
        }
        for index in 0..hashes / TILE_WIDTH {
            tiles.push((TileKey { level, index }, TILE_WIDTH));
        }
        if !hashes.is_multiple_of(TILE_WIDTH) {
            tiles.push((TileKey { level, index: hashes / TILE_WIDTH }, hashes % TILE_WIDTH));
        }
    }
    tiles
}

/// How many hashes of tree level `8·level` a tree of `size` leaves has.
fn level_count(size: u64, level: u8) -> u64 {
    size.checked_shr(8 * u32::from(level)).unwrap_or(0)
}

/// The partial tiles at the right edge of a tree of `size` leaves (the only tiles an append can
/// change), with the widths they must have.
pub(crate) fn edge_tiles(size: u64) -> Vec<(TileKey, u64)> {
    (0..=MAX_TILE_LEVEL)
        .map(|level| (level, level_count(size, level)))
        .take_while(|&(_, hashes)| hashes > 0)
        .filter(|&(_, hashes)| !hashes.is_multiple_of(TILE_WIDTH))
        .map(|(level, hashes)| (TileKey { level, index: hashes / TILE_WIDTH }, hashes % TILE_WIDTH))
        .collect()
}

/// Every tile that extending a tree from `from` to `to` leaves writes (full or partial), level by
/// level: the tiles whose hashes a checkpointer re-derives from the chain.
pub(crate) fn tiles_touched(from: u64, to: u64) -> Vec<TileKey> {
    let mut keys = Vec::new();
    for level in 0..=MAX_TILE_LEVEL {
        let (before, after) = (level_count(from, level), level_count(to, level));
        if after <= before {
            break;
        }
        for index in before / TILE_WIDTH..=(after - 1) / TILE_WIDTH {
            keys.push(TileKey { level, index });
        }
    }
    keys
}

/// Why tile bytes were rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BadTile(pub(crate) &'static str);

fn split_hashes(bytes: &[u8]) -> Result<Vec<Sha256Digest>, BadTile> {
    if bytes.is_empty() || bytes.len() > FULL_TILE_BYTES || !bytes.len().is_multiple_of(32) {
        return Err(BadTile("a tile must hold 1 to 256 hashes of 32 bytes"));
    }
    Ok(bytes
        .chunks_exact(32)
        .map(|chunk| {
            let mut hash = [0u8; 32];
            hash.copy_from_slice(chunk);
            Sha256Digest::from_bytes(hash)
        })
        .collect())
}

fn join_hashes(hashes: &[Sha256Digest]) -> Vec<u8> {
    hashes.iter().flat_map(|hash| hash.as_bytes().iter().copied()).collect()
}

/// The root of a perfect subtree given its `2^k` bottom hashes.
fn perfect_root(hashes: &[Sha256Digest]) -> Sha256Digest {
    debug_assert!(hashes.len().is_power_of_two());
    let mut level: Vec<Sha256Digest> = hashes.to_vec();
    while level.len() > 1 {
        level = level.chunks_exact(2).map(|pair| node_hash(&pair[0], &pair[1])).collect();
    }
    level[0]
}

/// Tiles held in memory, read as the complete subtree hashes of a tree of a given size.
///
/// This is how a proof is made from stored tiles (and how an auditor checks a proof against tiles
/// served as static files): insert the tiles a proof needs, then call the functions of
/// [`merkle`](crate::merkle).
///
/// ```
/// use sos_audit::merkle::{MemoryTree, inclusion_proof, leaf_hash, verify_inclusion};
/// use sos_audit::tlog::{TileBuilder, TileSet};
///
/// let mut builder = TileBuilder::new();
/// let mut tree = MemoryTree::new();
/// for leaf in 0u32..1000 {
///     builder.push_leaf_hash(leaf_hash(&leaf.to_be_bytes()));
///     tree.push(&leaf.to_be_bytes());
/// }
/// let mut tiles = TileSet::new(1000);
/// for (key, bytes) in builder.take_changed() {
///     tiles.insert(key, &bytes)?;
/// }
/// let proof = inclusion_proof(&tiles, 700, 1000)?;
/// verify_inclusion(&leaf_hash(&700u32.to_be_bytes()), 700, 1000, &proof, &tree.root())?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Default)]
pub struct TileSet {
    size: u64,
    tiles: BTreeMap<TileKey, Vec<Sha256Digest>>,
}

impl fmt::Debug for TileSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TileSet").field("size", &self.size).field("tiles", &self.tiles.len()).finish()
    }
}

impl TileSet {
    /// An empty set for the tree of `size` leaves.
    pub fn new(size: u64) -> Self {
        Self { size, tiles: BTreeMap::new() }
    }

    /// Adds one tile from its C2SP bytes (concatenated 32-byte hashes). A tile wider than the
    /// tree needs is fine: only complete subtrees inside `size` are ever read.
    ///
    /// # Errors
    ///
    /// [`Error::CorruptTree`](crate::Error::CorruptTree) when the bytes are not 1 to 256 hashes.
    pub fn insert(&mut self, key: TileKey, bytes: &[u8]) -> crate::Result<()> {
        let hashes = split_hashes(bytes)
            .map_err(|BadTile(reason)| crate::Error::CorruptTree { tenant: String::new(), reason })?;
        self.tiles.insert(key, hashes);
        Ok(())
    }

    /// The tree size this set answers for.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The hashes of the tile at `key`, as inserted.
    pub(crate) fn hashes(&self, key: &TileKey) -> Option<&[Sha256Digest]> {
        self.tiles.get(key).map(Vec::as_slice)
    }
}

impl SubtreeHashes for TileSet {
    fn subtree(&self, level: u8, index: u64) -> Option<Sha256Digest> {
        let tile_level = level / 8;
        let height = u32::from(level % 8);
        let first = index.checked_shl(height)?;
        let key = TileKey { level: tile_level, index: first / TILE_WIDTH };
        let tile = self.tiles.get(&key)?;
        let start = usize::try_from(first % TILE_WIDTH).ok()?;
        let end = start + (1usize << height);
        Some(perfect_root(tile.get(start..end)?))
    }

    fn leaf_count(&self) -> u64 {
        self.size
    }
}

/// Records which subtrees a proof asks for, so that their tiles can be read in one query.
#[derive(Debug, Default)]
pub(crate) struct TilePlanner {
    size: u64,
    keys: std::cell::RefCell<std::collections::BTreeSet<TileKey>>,
}

impl TilePlanner {
    pub(crate) fn new(size: u64) -> Self {
        Self { size, keys: Default::default() }
    }

    /// Asks for one whole tile besides the subtrees planned.
    pub(crate) fn want(&self, key: TileKey) {
        self.keys.borrow_mut().insert(key);
    }

    pub(crate) fn into_keys(self) -> Vec<TileKey> {
        self.keys.into_inner().into_iter().collect()
    }
}

impl SubtreeHashes for TilePlanner {
    fn subtree(&self, level: u8, index: u64) -> Option<Sha256Digest> {
        let height = u32::from(level % 8);
        let first = index.checked_shl(height)?;
        self.keys.borrow_mut().insert(TileKey { level: level / 8, index: first / TILE_WIDTH });
        Some(Sha256Digest::ZERO)
    }

    fn leaf_count(&self) -> u64 {
        self.size
    }
}

/// Builds tiles incrementally from leaf hashes: the right edge of the tree in memory, and the
/// tiles each push changed.
///
/// Start from an empty tree with [`TileBuilder::new`] (or, inside the crate, from the stored edge
/// tiles of a tree), push leaf hashes, then [`TileBuilder::take_changed`] gives every tile to
/// write, full or partial, as C2SP bytes.
#[derive(Clone, Default)]
pub struct TileBuilder {
    size: u64,
    /// `edges[L]`: the hashes of the partial tile at tile level `L` (empty when none).
    edges: Vec<Vec<Sha256Digest>>,
    /// Tiles completed since the last `take_changed`.
    completed: Vec<(TileKey, Vec<u8>)>,
    /// Tile levels whose edge tile changed since the last `take_changed`.
    touched: Vec<bool>,
}

impl fmt::Debug for TileBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TileBuilder").field("size", &self.size).finish_non_exhaustive()
    }
}

impl TileBuilder {
    /// A builder for an empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// A builder continuing the tree of `size` leaves, given its edge tiles (see `edge_tiles`).
    pub(crate) fn resume(size: u64, edges: &BTreeMap<TileKey, Vec<u8>>) -> Result<Self, BadTile> {
        let mut builder = Self { size, ..Self::default() };
        for (key, width) in edge_tiles(size) {
            let bytes = edges.get(&key).ok_or(BadTile("an edge tile of the tree is missing"))?;
            let hashes = split_hashes(bytes)?;
            // A stored tile may be wider than the size says only if it was written by a later
            // extension that did not commit its size, which cannot happen in one transaction.
            if hashes.len() as u64 != width {
                return Err(BadTile("an edge tile does not have the width the tree size implies"));
            }
            let level = usize::from(key.level);
            if builder.edges.len() <= level {
                builder.edges.resize(level + 1, Vec::new());
            }
            builder.edges[level] = hashes;
        }
        Ok(builder)
    }

    /// The number of leaves pushed (including those of a resumed tree).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The RFC 9162 root of the tree built so far: the right-edge tiles alone determine it (each
    /// set bit of a level's edge width is one complete subtree of the tree's right border).
    ///
    /// ```
    /// use sos_audit::merkle::MemoryTree;
    /// use sos_audit::tlog::TileBuilder;
    ///
    /// let (mut builder, mut tree) = (TileBuilder::new(), MemoryTree::new());
    /// for leaf in 0u32..70_000 {
    ///     builder.push_leaf_data(&leaf.to_be_bytes());
    ///     tree.push(&leaf.to_be_bytes());
    /// }
    /// assert_eq!(builder.root(), tree.root());
    /// ```
    pub fn root(&self) -> Sha256Digest {
        // The border's complete subtrees from left (the highest tile level) to right.
        let mut border = Vec::new();
        for edge in self.edges.iter().rev() {
            let mut start = 0usize;
            for bit in (0..8).rev() {
                let width = 1usize << bit;
                if edge.len() & width != 0 {
                    border.push(perfect_root(&edge[start..start + width]));
                    start += width;
                }
            }
        }
        let mut subtrees = border.iter().rev();
        let Some(last) = subtrees.next() else { return crate::merkle::empty_root() };
        subtrees.fold(*last, |right, left| node_hash(left, &right))
    }

    /// Appends the leaf of `data` (hashed with [`leaf_hash`]).
    pub fn push_leaf_data(&mut self, data: &[u8]) {
        self.push_leaf_hash(leaf_hash(data));
    }

    /// Appends one leaf hash, completing every tile it fills.
    pub fn push_leaf_hash(&mut self, leaf: Sha256Digest) {
        self.size += 1;
        let mut hash = leaf;
        let mut level = 0usize;
        loop {
            if self.edges.len() <= level {
                self.edges.resize(level + 1, Vec::new());
            }
            if self.touched.len() <= level {
                self.touched.resize(level + 1, false);
            }
            self.edges[level].push(hash);
            self.touched[level] = true;
            if self.edges[level].len() as u64 != TILE_WIDTH {
                break;
            }
            let full = std::mem::take(&mut self.edges[level]);
            let count = level_count(self.size, level as u8);
            let key = TileKey { level: level as u8, index: count / TILE_WIDTH - 1 };
            hash = perfect_root(&full);
            self.completed.push((key, join_hashes(&full)));
            level += 1;
        }
    }

    /// Every tile changed since the last call: completed tiles and the current partial edge
    /// tiles, as C2SP bytes, in key order.
    pub fn take_changed(&mut self) -> Vec<(TileKey, Vec<u8>)> {
        let mut changed: BTreeMap<TileKey, Vec<u8>> = self.completed.drain(..).collect();
        for (level, touched) in self.touched.iter_mut().enumerate() {
            if *touched && !self.edges[level].is_empty() {
                let count = level_count(self.size, level as u8);
                changed.insert(
                    TileKey { level: level as u8, index: count / TILE_WIDTH },
                    join_hashes(&self.edges[level]),
                );
            }
            *touched = false;
        }
        changed.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merkle::{MemoryTree, consistency_proof, inclusion_proof, root_at};

    #[test]
    fn index_paths_follow_c2sp() {
        assert_eq!(TileKey { level: 0, index: 0 }.path(256), "tile/0/000");
        assert_eq!(TileKey { level: 2, index: 1000 }.path(256), "tile/2/x001/000");
        assert_eq!(TileKey { level: 0, index: 1_234_067 }.path(3), "tile/0/x001/x234/067.p/3");
        assert_eq!(entries_path(5, 256), "tile/entries/005");
    }

    #[test]
    fn tiles_built_in_steps_answer_like_a_memory_tree() {
        let mut tree = MemoryTree::new();
        let mut builder = TileBuilder::new();
        let mut stored: BTreeMap<TileKey, Vec<u8>> = BTreeMap::new();
        let steps = [1u64, 255, 1, 300, 65_000, 700, 1];
        let mut leaf = 0u64;
        for step in steps {
            // Resume from the stored edge tiles each time, as a checkpointer does.
            let mut resumed = TileBuilder::resume(builder.size(), &stored).expect("edges are stored");
            for _ in 0..step {
                let data = leaf.to_be_bytes();
                resumed.push_leaf_data(&data);
                tree.push(&data);
                leaf += 1;
            }
            stored.extend(resumed.take_changed());
            builder = resumed;
            let size = builder.size();
            let mut set = TileSet::new(size);
            for (key, bytes) in &stored {
                set.insert(*key, bytes).expect("valid tile");
            }
            assert_eq!(root_at(&set, size), root_at(&tree, size));
            for index in [0, size / 2, size - 1] {
                assert_eq!(inclusion_proof(&set, index, size), inclusion_proof(&tree, index, size));
            }
            assert_eq!(consistency_proof(&set, size / 3, size), consistency_proof(&tree, size / 3, size));
        }
        // The stored tiles are exactly those the layout names for this size.
        let expected: Vec<(TileKey, u64)> = tiles_for_size(leaf);
        let actual: Vec<(TileKey, u64)> =
            stored.iter().map(|(key, bytes)| (*key, bytes.len() as u64 / 32)).collect();
        assert_eq!(actual, expected);
    }

    #[test]
    fn planner_names_the_tiles_a_proof_reads() {
        let size = 10_000_000;
        let planner = TilePlanner::new(size);
        inclusion_proof(&planner, 4_321_000, size).expect("plan");
        let keys = planner.into_keys();
        assert!(keys.len() <= 6, "{keys:?}");
    }

    #[test]
    fn resume_refuses_a_missing_or_wrong_width_edge() {
        let mut builder = TileBuilder::new();
        for leaf in 0u32..10 {
            builder.push_leaf_data(&leaf.to_be_bytes());
        }
        let mut stored: BTreeMap<TileKey, Vec<u8>> = builder.take_changed().into_iter().collect();
        assert!(TileBuilder::resume(10, &stored).is_ok());
        assert!(TileBuilder::resume(11, &stored).is_err());
        stored.clear();
        assert!(TileBuilder::resume(10, &stored).is_err());
    }

    #[test]
    fn malformed_entry_proofs_are_typed_errors() {
        use crate::merkle::ProofError;
        let hash = "00".repeat(32);
        let valid = format!(
            r#"{{"tenant":"acme","seq":1,"entry_hash":"{hash}","proof":{{"index":0,"size":1,"hashes":[]}},"checkpoint":"x"}}"#
        );
        assert!(crate::tlog::EntryProof::from_json(valid.as_bytes()).is_ok());
        let too_many = valid.replace(
            r#""hashes":[]"#,
            &format!(r#""hashes":[{}]"#, vec![format!("\"{hash}\""); 66].join(",")),
        );
        let cases: Vec<Vec<u8>> = vec![
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            valid.replace("acme", "ACME!").into_bytes(),
            valid.replace(r#""seq":1"#, r#""seq":-1"#).into_bytes(),
            valid.replace(&hash, "zz").into_bytes(),
            valid.replace(r#""checkpoint""#, r#""extra":1,"checkpoint""#).into_bytes(),
            too_many.into_bytes(),
            vec![b' '; crate::tlog::MAX_PROOF_JSON_BYTES + 1],
            vec![0xff, 0xfe],
        ];
        for case in cases {
            let error = crate::tlog::EntryProof::from_json(&case).expect_err("malformed");
            assert!(matches!(error, crate::Error::Proof(ProofError::Malformed { .. })), "{error:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_tile_bytes_never_panic(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..9000),
            size in 0u64..100_000,
            level in 0u8..8,
            index in proptest::prelude::any::<u64>(),
        ) {
            let mut set = TileSet::new(size);
            if set.insert(TileKey { level, index }, &bytes).is_ok() {
                let _ = root_at(&set, size);
                if size > 0 {
                    let _ = inclusion_proof(&set, size - 1, size);
                    let _ = consistency_proof(&set, size / 2, size);
                }
            }
        }

        #[test]
        fn arbitrary_entry_proof_json_never_panics(json in "\\PC{0,400}") {
            if let Ok(proof) = crate::tlog::EntryProof::from_json(json.as_bytes()) {
                let verifier = crate::note::NoteSigner::generate("example.com/p").map(|s| s.verifier());
                if let Ok(verifier) = verifier {
                    let _ = proof.verify(&verifier);
                }
            }
        }

        #[test]
        fn streaming_root_matches_the_tree(size in 0u64..600) {
            let mut tree = MemoryTree::new();
            let mut streaming = crate::tlog::StreamingRoot::new();
            for leaf in 0..size {
                tree.push(&leaf.to_be_bytes());
                streaming.push_leaf_data(&leaf.to_be_bytes());
            }
            proptest::prop_assert_eq!(streaming.root(), tree.root());
        }
    }
}
