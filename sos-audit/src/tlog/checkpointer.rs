//! The checkpointer: extends trees, refuses split views and forks, signs, anchors and records.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sos_core::{Clock, Sha256Digest, SystemClock, TenantId};

use super::tiles::tiles_touched;
use super::{
    Anchor, AnchorSink, EXTEND_BATCH, MerkleStore, SignedCheckpoint, TileBuilder, TileKey, TileSet,
    TreeExtension, TreeState, edge_tiles, origin_for, push_entries, sync_tree_reported,
};
use crate::error::{Error, Result};
use crate::note::{Checkpoint, NoteSigner, NoteVerifier};

/// When the [`Checkpointer`] signs on its own: every `every` entries, and when entries have been
/// pending for `max_delay`.
///
/// ```
/// use std::time::Duration;
/// use sos_audit::tlog::CheckpointPolicy;
///
/// let policy = CheckpointPolicy::default().every(1024).max_delay(Duration::from_secs(30));
/// assert_eq!(policy.entries(), 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    every: u64,
    max_delay: Duration,
    poll_interval: Duration,
}

impl Default for CheckpointPolicy {
    /// Every 256 entries (one full tile), or 60 s after the oldest unsigned entry, polled each
    /// second.
    fn default() -> Self {
        Self { every: 256, max_delay: Duration::from_secs(60), poll_interval: Duration::from_secs(1) }
    }
}

impl CheckpointPolicy {
    /// Signs once at least `entries` entries are pending (at least 1).
    pub fn every(mut self, entries: u64) -> Self {
        self.every = entries.max(1);
        self
    }

    /// Signs once the oldest pending entry is `delay` old, so that a quiet log cannot hide a
    /// cut-off tail for longer than that.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// How often [`Checkpointer::run`] looks for due tenants.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(10));
        self
    }

    /// The entry threshold.
    pub fn entries(&self) -> u64 {
        self.every
    }

    /// The time threshold.
    pub fn delay(&self) -> Duration {
        self.max_delay
    }
}

/// Signs C2SP checkpoints of each tenant's tree with a key held outside the database.
///
/// The log's name is the signing key's name, and tenant `T`'s checkpoints carry the origin
/// `<key name>/T` ([`origin_for`]). Before signing, the checkpointer:
///
/// 1. reads the latest recorded checkpoint, then extends the stored tree from the chain
///    ([`sync_tree`](super::sync_tree)), which refuses entries that do not chain on (in this order, so that a
///    checkpoint another process records meanwhile is never mistaken for a cut-off tail);
/// 2. checks the new head against that checkpoint: its signature must verify, the tree must not
///    be smaller, and a consistency proof from the stored tiles must connect the two roots
///    ([`Error::Forked`] otherwise);
/// 3. refuses a second root for a size already signed, whether recorded in the store or signed
///    earlier by this process ([`Error::SplitView`]);
/// 4. re-derives the part of the tree after the largest signed head from the chain's entries
///    (against the signed tree's right-edge hashes, which the signature covers) and refuses when
///    a stored tile disagrees ([`Error::RewrittenTree`], [`Error::ChainBroken`]): no signature
///    covers those rows yet, and the database administrator can rewrite them. When the extension
///    of step 1 started at that head and reached the new size in one transaction, the extension
///    is that re-derivation (the entries are read and hashed once): what it read and wrote
///    ([`TreeExtension`](super::TreeExtension)) is checked against the signed head and the
///    stored tiles instead;
/// 5. signs, writes the note to every [`AnchorSink`] (a write-once sink refuses a different note
///    for a size it holds), records it in the store, and returns the latest recorded checkpoint
///    (its own, or a larger one a concurrent checkpointer recorded meanwhile).
///
/// The signed heads of step 2 are the latest recorded checkpoint, what this process signed last,
/// and the latest checkpoint each anchor sink holds ([`AnchorSink::latest`], read on every run):
/// neither a restarted process nor one that another process with the same key overtook can be led
/// past what was anchored.
///
/// ```
/// use sos_audit::{AuditStore, MemoryAuditStore, NewEntry};
/// use sos_audit::note::NoteSigner;
/// use sos_audit::tlog::{Checkpointer, prove};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = MemoryAuditStore::new();
/// let tenant: sos_core::TenantId = "acme".parse()?;
/// for n in 0..3 {
///     store.append(NewEntry::new(tenant.clone(), "alice", "edit", "doc/1", &serde_json::json!({ "n": n }))?).await?;
/// }
/// let signer = NoteSigner::generate("example.com/sos-audit")?;
/// let verifier = signer.verifier();
/// let checkpointer = Checkpointer::new(store.clone(), signer);
/// let signed = checkpointer.checkpoint_now(&tenant).await?;
/// assert_eq!(signed.size(), 3);
///
/// // Anyone can prove an entry without the key; an auditor verifies with the public key.
/// let proof = prove(&store, &tenant, 2, None).await?;
/// let checkpoint = proof.verify(&verifier)?;
/// assert_eq!(checkpoint.origin, "example.com/sos-audit/acme");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })
/// # }
/// ```
pub struct Checkpointer<S> {
    store: S,
    signer: NoteSigner,
    verifier: NoteVerifier,
    policy: CheckpointPolicy,
    clock: Arc<dyn Clock>,
    anchors: Vec<Arc<dyn AnchorSink>>,
    /// What this process signed last per tenant: survives a database administrator deleting
    /// checkpoint rows for as long as the process runs.
    signed: Mutex<HashMap<TenantId, (u64, Sha256Digest)>>,
    /// One checkpoint at a time per checkpointer, so its own runs never race each other.
    running: tokio::sync::Mutex<()>,
}

impl<S> std::fmt::Debug for Checkpointer<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer")
            .field("log", &self.signer.name())
            .field("policy", &self.policy)
            .field("anchors", &self.anchors.len())
            .finish_non_exhaustive()
    }
}

impl<S: MerkleStore> Checkpointer<S> {
    /// A checkpointer over `store`, signing with `signer` (load it with
    /// [`load_signer`](super::load_signer)), with the default [`CheckpointPolicy`].
    pub fn new(store: S, signer: NoteSigner) -> Self {
        let verifier = signer.verifier();
        Self {
            store,
            signer,
            verifier,
            policy: CheckpointPolicy::default(),
            clock: Arc::new(SystemClock),
            anchors: Vec::new(),
            signed: Mutex::new(HashMap::new()),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Uses `policy` for [`Checkpointer::tick`] and [`Checkpointer::run`].
    pub fn with_policy(mut self, policy: CheckpointPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Uses `clock` for signing times and the pending-time threshold.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Also writes every checkpoint to `sink` before recording it.
    pub fn with_anchor(mut self, sink: Arc<dyn AnchorSink>) -> Self {
        self.anchors.push(sink);
        self
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The public key that verifies this checkpointer's notes.
    pub fn verifier(&self) -> &NoteVerifier {
        &self.verifier
    }

    /// The origin of `tenant`'s checkpoints.
    pub fn origin(&self, tenant: &TenantId) -> String {
        origin_for(self.signer.name(), tenant)
    }

    /// The latest recorded checkpoint of `tenant`, if any (its signature is not re-checked; use
    /// [`Checkpoint::open`] for that).
    ///
    /// # Errors
    ///
    /// [`Error::Storage`].
    pub async fn latest(&self, tenant: &TenantId) -> Result<Option<SignedCheckpoint>> {
        self.store.latest_checkpoint(tenant).await
    }

    /// The inclusion proof of `tenant`'s entry `seq` against the latest checkpoint, signing a new
    /// checkpoint first when the entry is not covered yet.
    ///
    /// # Errors
    ///
    /// As [`Checkpointer::checkpoint_now`] and [`prove`](super::prove).
    pub async fn prove(&self, tenant: &TenantId, seq: u64) -> Result<super::EntryProof> {
        match super::prove(&self.store, tenant, seq, None).await {
            Err(Error::NotCheckpointed { .. }) => {
                self.checkpoint_now(tenant).await?;
                super::prove(&self.store, tenant, seq, None).await
            }
            other => other,
        }
    }

    /// Signs a checkpoint of `tenant`'s whole chain now (on demand), or returns the latest one
    /// when the chain has not grown since.
    ///
    /// # Errors
    ///
    /// [`Error::ChainBroken`], [`Error::Forked`], [`Error::SplitView`], [`Error::AnchorConflict`],
    /// [`Error::Note`] when a recorded checkpoint does not verify with this key, [`Error::Storage`].
    pub async fn checkpoint_now(&self, tenant: &TenantId) -> Result<SignedCheckpoint> {
        let _running = self.running.lock().await;
        // The latest recorded checkpoint is read before the tree is extended: another
        // checkpointer records a size only after extending the shared tree to it, so the tree
        // extended afterwards is never smaller unless its tail really was cut off (read the other
        // way round, a concurrent checkpointer's newer head looked like a truncation).
        let latest = self.store.latest_checkpoint(tenant).await?;
        let origin = self.origin(tenant);
        // The anchors too, on every run (another process with this key may have anchored a
        // larger checkpoint whose row was since deleted), and before the extension for the same
        // reason as above.
        let anchored = self.anchored_heads(tenant, &origin).await?;
        let (state, extension) = sync_tree_reported(&self.store, tenant).await?;
        let size = state.size;

        // The heads this tree must extend: what this process signed last, the latest checkpoint
        // each anchor holds, and the latest recorded checkpoint as read above.
        let remembered = self.signed.lock().unwrap_or_else(PoisonError::into_inner).get(tenant).copied();
        let mut signed_heads: Vec<(u64, Sha256Digest)> = remembered.into_iter().collect();
        signed_heads.extend(anchored);
        if let Some(latest) = &latest {
            let ours = remembered == Some((latest.size(), latest.root()));
            if ours && latest.size() < size {
                // The body is exactly what this process signed; it is not handed out again.
                signed_heads.push((latest.size(), latest.root()));
            } else {
                // A recorded checkpoint is only trusted once its signature verifies with our key.
                let opened = Checkpoint::open(latest.note.as_bytes(), &self.verifier, &origin)?;
                signed_heads.push((opened.size, opened.root));
            }
        }
        for &(signed_size, _) in &signed_heads {
            if signed_size > size {
                return Err(Error::Forked {
                    tenant: tenant.to_string(),
                    checkpoint_size: signed_size,
                    reason: format!("the tree has only {size} entries (its tail was cut off)"),
                });
            }
        }
        // The largest signed head: the part of the tree after it is covered by no signature yet,
        // so it is re-derived from the chain's entries below.
        let base = signed_heads.iter().copied().max_by_key(|&(signed_size, _)| signed_size);
        let (base_size, base_root) = base.unwrap_or((0, crate::merkle::empty_root()));
        let first_batch_end = size.min(base_size.saturating_add(u64::from(EXTEND_BATCH)));
        // One read of the few tiles that the root, every consistency proof and the re-derivation
        // of the first batch of new entries need.
        let olds: Vec<u64> =
            signed_heads.iter().map(|&(signed_size, _)| signed_size).filter(|&old| old < size).collect();
        let tiles = super::load_tiles(&self.store, tenant, size, |planner| {
            crate::merkle::root_at(planner, size)?;
            for &old in &olds {
                crate::merkle::consistency_proof(planner, old, size)?;
            }
            if base_size < size {
                if base_size > 0 {
                    crate::merkle::inclusion_proof(planner, base_size - 1, base_size)?;
                }
                for (key, _) in edge_tiles(base_size) {
                    planner.want(key);
                }
                for key in tiles_touched(base_size, first_batch_end) {
                    planner.want(key);
                }
            }
            Ok(())
        })
        .await?;
        let root = crate::merkle::root_at(&tiles, size)?;
        for &(signed_size, signed_root) in &signed_heads {
            check_extends(&tiles, tenant, signed_size, signed_root, size, root)?;
        }
        if base_size < size {
            match extension {
                // This run's extension started at the signed head and reached `size`: it read
                // and hashed the unsigned part once, and is checked instead of read again.
                Some(extension) if extension.before.size == base_size && extension.after.size == size => {
                    check_extension(tenant, (base_size, base_root), &extension, &tiles, root)?;
                }
                _ => self.rederive(tenant, (base_size, base_root), size, &tiles, root).await?,
            }
        }
        if let Some(latest) = &latest
            && latest.size() == size
        {
            self.remember(tenant, size, root);
            return self.newest(tenant, &origin, (size, root), latest.clone(), None).await;
        }

        let checkpoint = Checkpoint { origin: origin.clone(), size, root, extensions: Vec::new() };
        let note = checkpoint.sign(&self.signer)?;
        let signed = SignedCheckpoint {
            tenant: tenant.clone(),
            checkpoint,
            note,
            signed_us: self.clock.now().timestamp_micros(),
        };
        let anchor = Anchor::new(&signed);
        for sink in &self.anchors {
            sink.write(&anchor).await?;
        }
        // The latest checkpoint is the largest, so none of this size can be recorded yet unless a
        // concurrent checkpointer just recorded one: the store keeps the first and returns it.
        let (recorded, newest) = self.store.record_checkpoint_and_latest(&signed).await?;
        if recorded.note != signed.note {
            // Recorded meanwhile by someone else: trusted, and handed out, only once its
            // signature verifies with our key (a forged row is no split view either).
            Checkpoint::open(recorded.note.as_bytes(), &self.verifier, &origin)?;
        }
        if recorded.root() != root {
            return Err(Error::SplitView {
                tenant: tenant.to_string(),
                size,
                recorded: recorded.root(),
                computed: root,
            });
        }
        self.remember(tenant, size, root);
        self.newest(tenant, &origin, (size, root), recorded, Some(newest)).await
    }

    /// The latest checkpoint each anchor sink holds for `tenant`, opened with this checkpointer's
    /// key: a process learns what was anchored before it started or by another process, so it
    /// never signs a tree that does not extend an anchored checkpoint (the database's checkpoint
    /// rows alone can be deleted by its administrator).
    async fn anchored_heads(&self, tenant: &TenantId, origin: &str) -> Result<Vec<(u64, Sha256Digest)>> {
        let mut heads = Vec::new();
        for sink in &self.anchors {
            if let Some(anchor) = sink.latest(tenant).await? {
                let opened = Checkpoint::open(anchor.note.as_bytes(), &self.verifier, origin)?;
                heads.push((opened.size, opened.root));
            }
        }
        Ok(heads)
    }

    /// Re-derives the part of the stored tree after the signed head `base` (up to `size`) from
    /// the chain's entries, and refuses when the stored tiles disagree.
    ///
    /// The signed root covers the hashes at the right border of its tree (the edge tiles of
    /// `base`) and its last leaf; the builder resumes from those hashes once they are shown to
    /// give the signed root, each new entry must chain on from the last signed one (seq,
    /// `prev_hash`, recomputed hash), and every tile the new leaves write must be what is stored.
    /// Stored rows of the unsigned part that a database administrator rewrote are so never signed.
    async fn rederive(
        &self,
        tenant: &TenantId,
        (base_size, base_root): (u64, Sha256Digest),
        size: u64,
        tiles: &TileSet,
        root: Sha256Digest,
    ) -> Result<()> {
        let forked =
            |reason: String| Error::Forked { tenant: tenant.to_string(), checkpoint_size: base_size, reason };
        let rewritten = |reason: String| Error::RewrittenTree {
            tenant: tenant.to_string(),
            checkpoint_size: base_size,
            reason,
        };
        let mut edges = BTreeMap::new();
        for (key, width) in edge_tiles(base_size) {
            let hashes = tiles
                .hashes(&key)
                .and_then(|hashes| hashes.get(..usize::try_from(width).ok()?))
                .ok_or_else(|| forked(format!("the stored tree lacks its edge tile {}", key.path(width))))?;
            edges.insert(key, hashes.iter().flat_map(|hash| *hash.as_bytes()).collect::<Vec<u8>>());
        }
        let mut builder =
            TileBuilder::resume(base_size, &edges).map_err(|bad| super::corrupt_tree(tenant, bad))?;
        if builder.root() != base_root {
            return Err(forked("the stored hashes of the signed tree no longer give its root".to_owned()));
        }
        let mut state = TreeState { size: base_size, last_entry_hash: Sha256Digest::ZERO };
        let mut first_batch = true;
        while state.size < size {
            let wanted = u32::try_from(size - state.size).unwrap_or(EXTEND_BATCH).min(EXTEND_BATCH);
            let mut entries = if first_batch && base_size > 0 {
                // The last signed entry too: the new entries must chain on from it.
                let mut entries = self.store.read_page(tenant, base_size - 1, wanted + 1).await?;
                let last_signed = entries
                    .first()
                    .filter(|entry| entry.seq == base_size)
                    .ok_or_else(|| forked(format!("entry {base_size} is missing from the chain")))?;
                let proof = crate::merkle::InclusionProof::generate(tiles, base_size - 1, base_size)?;
                proof.verify(&crate::merkle::leaf_hash(last_signed.hash.as_bytes()), &base_root).map_err(
                    |_| forked(format!("entry {base_size} is not the last leaf the checkpoint signed")),
                )?;
                state.last_entry_hash = last_signed.hash;
                entries.remove(0);
                entries
            } else {
                self.store.read_page(tenant, state.size, wanted).await?
            };
            entries.truncate(usize::try_from(size - state.size).unwrap_or(usize::MAX));
            if entries.is_empty() {
                return Err(rewritten(format!(
                    "the chain ends at entry {}, but the stored tree has {size} leaves",
                    state.size
                )));
            }
            push_entries(tenant, &mut state, &mut builder, &entries)?;
            let derived = builder.take_changed();
            let held: BTreeMap<TileKey, Vec<u8>> = if first_batch {
                derived
                    .iter()
                    .filter_map(|(key, _)| {
                        let hashes = tiles.hashes(key)?;
                        Some((*key, hashes.iter().flat_map(|hash| *hash.as_bytes()).collect()))
                    })
                    .collect()
            } else {
                let keys: Vec<TileKey> = derived.iter().map(|(key, _)| *key).collect();
                self.store.read_tiles(tenant, &keys).await?.into_iter().collect()
            };
            for (key, bytes) in &derived {
                // A stored tile may be wider: the tree may have grown since it was read.
                if !held.get(key).is_some_and(|stored| stored.starts_with(bytes)) {
                    let width = (bytes.len() / 32) as u64;
                    return Err(rewritten(format!(
                        "stored tile {} differs from the hashes of entries {}..={}",
                        key.path(width),
                        state.size + 1 - entries.len() as u64,
                        state.size
                    )));
                }
            }
            first_batch = false;
        }
        if builder.root() != root {
            return Err(rewritten(format!("the stored root at size {size} is not the chain's")));
        }
        Ok(())
    }

    /// Hands out the largest recorded checkpoint once `ours` is recorded: a concurrent
    /// checkpointer may have recorded a larger one meanwhile. The larger one is returned only if it
    /// verifies with this key and extends `ours` (a consistency proof between the two roots).
    /// `read` is the largest recorded checkpoint as read after `ours` was recorded, when the
    /// caller has it (read here otherwise).
    async fn newest(
        &self,
        tenant: &TenantId,
        origin: &str,
        (size, root): (u64, Sha256Digest),
        ours: SignedCheckpoint,
        read: Option<SignedCheckpoint>,
    ) -> Result<SignedCheckpoint> {
        let newer = match read {
            Some(read) => Some(read),
            None => self.store.latest_checkpoint(tenant).await?,
        };
        let Some(newer) = newer else { return Ok(ours) };
        if newer.size() <= size {
            return Ok(ours);
        }
        let opened = Checkpoint::open(newer.note.as_bytes(), &self.verifier, origin)?;
        let tiles = super::load_tiles(&self.store, tenant, opened.size, |planner| {
            crate::merkle::consistency_proof(planner, size, opened.size)
        })
        .await
        .map_err(|error| match error {
            Error::Proof(crate::merkle::ProofError::TreeTooSmall { available, .. }) => Error::Forked {
                tenant: tenant.to_string(),
                checkpoint_size: opened.size,
                reason: format!("the tree has only {available} entries (its tail was cut off)"),
            },
            other => other,
        })?;
        check_extends(&tiles, tenant, size, root, opened.size, opened.root)?;
        self.remember(tenant, opened.size, opened.root);
        Ok(newer)
    }

    fn remember(&self, tenant: &TenantId, size: u64, root: Sha256Digest) {
        let mut signed = self.signed.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = signed.entry(tenant.clone()).or_insert((size, root));
        if entry.0 <= size {
            *entry = (size, root);
        }
    }

    /// Whether `tenant` is due for a checkpoint under the policy.
    async fn due(&self, tenant: &TenantId) -> Result<bool> {
        let Some(head) = self.store.head(tenant).await? else { return Ok(false) };
        let signed = self.store.latest_checkpoint(tenant).await?.map_or(0, |latest| latest.size());
        if head.seq <= signed {
            // A chain shorter than the latest row (a cut-off tail, or a forged row) is due, so
            // that checkpoint_now reports it instead of the tenant going silent.
            return Ok(head.seq < signed);
        }
        if head.seq - signed >= self.policy.every {
            return Ok(true);
        }
        let oldest = self.store.read_page(tenant, signed, 1).await?;
        let Some(oldest) = oldest.first() else { return Ok(false) };
        let waited_us = self.clock.now().timestamp_micros().saturating_sub(oldest.time_us);
        let limit_us = i64::try_from(self.policy.max_delay.as_micros()).unwrap_or(i64::MAX);
        Ok(waited_us >= limit_us)
    }

    /// Signs a checkpoint for every tenant that is due (N entries pending, or the oldest pending
    /// entry older than T), and returns them. A tenant whose checkpoint fails does not stop the
    /// others; its error is returned beside the successes.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the tenants cannot be listed.
    pub async fn tick(&self) -> Result<Vec<(TenantId, Result<SignedCheckpoint>)>> {
        let mut done = Vec::new();
        for tenant in self.store.tenants().await? {
            let outcome = match self.due(&tenant).await {
                Ok(true) => self.checkpoint_now(&tenant).await,
                Ok(false) => continue,
                Err(error) => Err(error),
            };
            done.push((tenant, outcome));
        }
        Ok(done)
    }

    /// Runs [`Checkpointer::tick`] every poll interval until `shutdown` resolves, calling
    /// `report` with each outcome and its tenant (`None` when the tenants could not be listed).
    /// Log them: a refused split view or fork needs a person.
    pub async fn run<F, R>(&self, shutdown: F, mut report: R)
    where
        F: std::future::Future<Output = ()>,
        R: FnMut(Option<&TenantId>, &Result<SignedCheckpoint>),
    {
        let mut shutdown = std::pin::pin!(shutdown);
        let mut interval = tokio::time::interval(self.policy.poll_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = interval.tick() => {}
            }
            match self.tick().await {
                Ok(outcomes) => {
                    for (tenant, outcome) in &outcomes {
                        report(Some(tenant), outcome);
                    }
                }
                Err(error) => report(None, &Err(error)),
            }
        }
    }
}

/// Checks this run's extension of the stored tree (reported by the store, from its one read of
/// the new entries) as the re-derivation of the part after the signed head `base`, in place of
/// [`Checkpointer::rederive`]'s second read of the same entries.
///
/// The extension resumed from edge tiles at `base.0` leaves and chained the new entries on from
/// the tree head's last entry hash. It is accepted only when those edge tiles give the signed
/// root (so they are the signed tree's right border), the tree head's last entry hash is the
/// stored hash of entry `base.0` and that hash is the signed tree's last leaf, every tile it wrote
/// is what is stored now, and the stored root at `size` is the root it built. What is signed is
/// then a function of the signed head and of entries read, in this run, that chain on from its
/// last leaf.
fn check_extension(
    tenant: &TenantId,
    (base_size, base_root): (u64, Sha256Digest),
    extension: &TreeExtension,
    tiles: &TileSet,
    root: Sha256Digest,
) -> Result<()> {
    let forked =
        |reason: String| Error::Forked { tenant: tenant.to_string(), checkpoint_size: base_size, reason };
    let rewritten = |reason: String| Error::RewrittenTree {
        tenant: tenant.to_string(),
        checkpoint_size: base_size,
        reason,
    };
    let resumed =
        TileBuilder::resume(base_size, &extension.edges).map_err(|bad| super::corrupt_tree(tenant, bad))?;
    if resumed.root() != base_root {
        return Err(forked("the stored hashes of the signed tree no longer give its root".to_owned()));
    }
    // The hash the new entries must chain on from: the signed tree's last leaf (the zero hash
    // before entry 1).
    let last_signed = if base_size > 0 {
        let last_signed = extension
            .before_entry_hash
            .ok_or_else(|| forked(format!("entry {base_size} is missing from the chain")))?;
        let proof = crate::merkle::InclusionProof::generate(tiles, base_size - 1, base_size)?;
        proof
            .verify(&crate::merkle::leaf_hash(last_signed.as_bytes()), &base_root)
            .map_err(|_| forked(format!("entry {base_size} is not the last leaf the checkpoint signed")))?;
        last_signed
    } else {
        Sha256Digest::ZERO
    };
    if extension.before.last_entry_hash != last_signed {
        // The extension chained the new entries on from the tree head's hash, which is not the
        // signed one: the first of them does not chain on from the signed chain.
        return Err(Error::ChainBroken {
            tenant: tenant.to_string(),
            seq: base_size + 1,
            reason: "prev_hash is not the previous entry's hash",
        });
    }
    for (key, bytes) in &extension.written {
        // A stored tile may be wider: the tree may have grown since it was read.
        let held = tiles.hashes(key).unwrap_or_default();
        let same = held.len() * 32 >= bytes.len()
            && bytes.chunks_exact(32).zip(held).all(|(written, stored)| written == stored.as_bytes());
        if !same {
            let width = (bytes.len() / 32) as u64;
            return Err(rewritten(format!(
                "stored tile {} differs from the hashes of entries {}..={}",
                key.path(width),
                base_size + 1,
                extension.after.size
            )));
        }
    }
    if extension.root != root {
        return Err(rewritten(format!(
            "the stored root at size {} is not the chain's",
            extension.after.size
        )));
    }
    Ok(())
}

/// Checks that the tree of `size` leaves with `root` extends the signed head (`signed_size`,
/// `signed_root`), with a consistency proof from `tiles`.
fn check_extends(
    tiles: &super::TileSet,
    tenant: &TenantId,
    signed_size: u64,
    signed_root: Sha256Digest,
    size: u64,
    root: Sha256Digest,
) -> Result<()> {
    if size < signed_size {
        return Err(Error::Forked {
            tenant: tenant.to_string(),
            checkpoint_size: signed_size,
            reason: format!("the tree has only {size} entries (its tail was cut off)"),
        });
    }
    if size == signed_size {
        if root != signed_root {
            return Err(Error::SplitView {
                tenant: tenant.to_string(),
                size,
                recorded: signed_root,
                computed: root,
            });
        }
        return Ok(());
    }
    let proof = crate::merkle::ConsistencyProof::generate(tiles, signed_size, size)?;
    proof.verify(&signed_root, &root).map_err(|error| Error::Forked {
        tenant: tenant.to_string(),
        checkpoint_size: signed_size,
        reason: format!("the consistency proof from the stored tree fails: {error}"),
    })
}
