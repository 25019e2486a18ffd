//! One behavioural suite for every `MerkleStore` (memory, SQLite, PostgreSQL): stored tiles,
//! checkpoints, proofs, split views and forks, anchors and tile export.

use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use sos_audit::merkle::{MemoryTree, ProofError, leaf_hash};
use sos_audit::note::{Checkpoint, NoteSigner};
use sos_audit::tlog::{
    self, Anchor, AnchorSink, CheckpointFinding, CheckpointPolicy, Checkpointer, FsAnchorSink, MerkleStore,
    TileSet,
};
use sos_audit::{AuditStore, Error, MemoryAuditStore};
use sos_core::ManualClock;

use crate::{entry, tenant};

const LOG: &str = "example.com/sos-audit";

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).single().expect("valid time"))
}

fn signer() -> NoteSigner {
    NoteSigner::generate(LOG).expect("valid key name")
}

async fn append_n<S: AuditStore>(store: &S, tenant_name: &str, from: u64, count: u64) {
    for index in from..from + count {
        store.append(entry(tenant_name, index)).await.expect("append");
    }
}

/// The tree the chain implies, built independently in memory from the entries.
async fn reference_tree<S: AuditStore>(store: &S, tenant_name: &str) -> MemoryTree {
    let mut tree = MemoryTree::new();
    for stored in store.read_page(&tenant(tenant_name), 0, 100_000).await.expect("read") {
        tree.push(stored.hash.as_bytes());
    }
    tree
}

pub(crate) async fn stored_tree_matches_the_chain<S: MerkleStore>(store: S) {
    let acme = tenant("acme");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 0);
    append_n(&store, "acme", 0, 300).await;
    append_n(&store, "globex", 0, 3).await;
    // Extend in uneven steps, as checkpoints at arbitrary times would.
    for step in [1, 99, 156, 30] {
        store.extend_tree(&acme, step).await.expect("extend");
    }
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 286);
    let state = tlog::sync_tree(&store, &acme).await.expect("sync");
    assert_eq!(state.size, 300);
    assert_eq!(state.last_entry_hash, store.head(&acme).await.expect("head").expect("head").hash);
    assert_eq!(store.tree_state(&tenant("globex")).await.expect("state").size, 0, "tenants are separate");

    let reference = reference_tree(&store, "acme").await;
    for size in [1, 2, 255, 256, 257, 300] {
        let expected = sos_audit::merkle::root_at(&reference, size).expect("reference root");
        assert_eq!(tlog::root_at(&store, &acme, size).await.expect("root"), expected, "size {size}");
    }
    for (index, size) in [(0, 1), (0, 300), (255, 256), (256, 300), (299, 300), (17, 100)] {
        let proof = tlog::inclusion_proof(&store, &acme, index, size).await.expect("proof");
        let expected = sos_audit::merkle::inclusion_proof(&reference, index, size).expect("reference proof");
        assert_eq!(proof.hashes, expected, "index {index} size {size}");
    }
    for (old, new) in [(1, 300), (256, 300), (100, 257), (300, 300)] {
        let proof = tlog::consistency_proof(&store, &acme, old, new).await.expect("consistency");
        let old_root = sos_audit::merkle::root_at(&reference, old).expect("root");
        let new_root = sos_audit::merkle::root_at(&reference, new).expect("root");
        proof.verify(&old_root, &new_root).expect("consistent");
    }
    // A size beyond the stored tree is refused with a typed error, never a rescan.
    let too_big = tlog::root_at(&store, &acme, 301).await.expect_err("larger than the tree");
    assert!(
        matches!(too_big, Error::Proof(ProofError::TreeTooSmall { size: 301, available: 300 })),
        "{too_big:?}"
    );
    let out_of_range = tlog::inclusion_proof(&store, &acme, 300, 300).await.expect_err("index out of range");
    assert!(matches!(out_of_range, Error::Proof(ProofError::IndexOutOfRange { .. })), "{out_of_range:?}");
}

pub(crate) async fn checkpoints_sign_prove_and_verify<S: MerkleStore + Clone>(store: S) {
    let acme = tenant("acme");
    let signer = signer();
    let verifier = signer.verifier();
    let checkpointer = Checkpointer::new(store.clone(), signer);
    assert_eq!(checkpointer.latest(&acme).await.expect("latest"), None);
    let not_yet = tlog::prove(&store, &acme, 1, None).await.expect_err("no checkpoint yet");
    assert!(matches!(not_yet, Error::NotCheckpointed { checkpoint_size: None, .. }), "{not_yet:?}");

    append_n(&store, "acme", 0, 5).await;
    let first = checkpointer.checkpoint_now(&acme).await.expect("checkpoint");
    assert_eq!(first.size(), 5);
    let opened =
        Checkpoint::open(first.note.as_bytes(), &verifier, "example.com/sos-audit/acme").expect("opens");
    assert_eq!(opened.root, reference_tree(&store, "acme").await.root());
    assert_eq!(checkpointer.latest(&acme).await.expect("latest"), Some(first.clone()));
    // Nothing new: the same checkpoint, not a second signature.
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("again"), first);

    for seq in 1..=5 {
        let proof = tlog::prove(&store, &acme, seq, None).await.expect("prove");
        let checkpoint = proof.verify(&verifier).expect("the proof verifies");
        assert_eq!(checkpoint.size, 5);
        let json = serde_json::to_vec(&proof).expect("json");
        assert_eq!(tlog::EntryProof::from_json(&json).expect("parse"), proof);
    }

    append_n(&store, "acme", 5, 4).await;
    let uncovered = tlog::prove(&store, &acme, 7, None).await.expect_err("not covered yet");
    assert!(
        matches!(uncovered, Error::NotCheckpointed { checkpoint_size: Some(5), seq: 7, .. }),
        "{uncovered:?}"
    );
    let missing = tlog::prove(&store, &acme, 10, None).await.expect_err("no such entry");
    assert!(matches!(missing, Error::EntryNotFound { seq: 10, .. }), "{missing:?}");
    let zero = tlog::prove(&store, &acme, 0, None).await.expect_err("seq 0");
    assert!(matches!(zero, Error::EntryNotFound { seq: 0, .. }), "{zero:?}");
    // The checkpointer signs on demand when asked to prove an uncovered entry.
    let proof = checkpointer.prove(&acme, 7).await.expect("prove on demand");
    assert_eq!(proof.proof.size, 9);
    proof.verify(&verifier).expect("verifies");
    // An old checkpoint still answers proofs at its size.
    let old = tlog::prove(&store, &acme, 2, Some(5)).await.expect("prove at 5");
    old.verify(&verifier).expect("verifies at the old size");
    let second = checkpointer.latest(&acme).await.expect("latest").expect("a checkpoint");
    let consistency = tlog::consistency_proof(&store, &acme, 5, 9).await.expect("consistency");
    consistency.verify(&first.root(), &second.root()).expect("append-only");

    // The chain matches both checkpoints.
    let checkpoints = [first.checkpoint.clone(), second.checkpoint.clone()];
    assert!(tlog::verify_checkpoints(&store, &acme, &checkpoints).await.expect("verify").is_empty());
}

pub(crate) async fn proofs_for_the_wrong_entry_or_size_are_refused<S: MerkleStore + Clone>(store: S) {
    let acme = tenant("acme");
    let signer = signer();
    let verifier = signer.verifier();
    let checkpointer = Checkpointer::new(store.clone(), signer);
    append_n(&store, "acme", 0, 6).await;
    checkpointer.checkpoint_now(&acme).await.expect("checkpoint");
    let good = tlog::prove(&store, &acme, 3, None).await.expect("prove");

    let mut wrong_index = good.clone();
    wrong_index.seq = 4;
    let refused = wrong_index.verify(&verifier).expect_err("another entry's proof");
    assert!(matches!(refused, Error::ProofMismatch { .. }), "{refused:?}");

    let mut wrong_size = good.clone();
    wrong_size.proof.size = 5;
    let refused = wrong_size.verify(&verifier).expect_err("another size");
    assert!(matches!(refused, Error::ProofMismatch { .. }), "{refused:?}");

    let mut wrong_leaf = good.clone();
    wrong_leaf.entry_hash = tlog::prove(&store, &acme, 4, None).await.expect("prove").entry_hash;
    let refused = wrong_leaf.verify(&verifier).expect_err("another leaf");
    assert!(matches!(refused, Error::Proof(ProofError::RootMismatch { .. })), "{refused:?}");

    let mut truncated = good.clone();
    truncated.proof.hashes.pop();
    let refused = truncated.verify(&verifier).expect_err("a hash short");
    assert!(matches!(refused, Error::Proof(ProofError::WrongProofLength { .. })), "{refused:?}");

    let other_key = NoteSigner::generate(LOG).expect("key").verifier();
    let refused = good.verify(&other_key).expect_err("another key");
    assert!(matches!(refused, Error::Note(_)), "{refused:?}");

    let mut foreign = good.clone();
    foreign.tenant = tenant("globex");
    let refused = foreign.verify(&verifier).expect_err("another tenant's origin");
    assert!(matches!(refused, Error::Note(sos_audit::note::NoteError::WrongOrigin { .. })), "{refused:?}");
    for cut in [1, 20, good.checkpoint.len() / 2, good.checkpoint.len() - 1] {
        let mut truncated_note = good.clone();
        truncated_note.checkpoint.truncate(good.checkpoint.len() - cut);
        let refused = truncated_note.verify(&verifier).expect_err("a truncated note");
        assert!(matches!(refused, Error::Note(_)), "cut {cut}: {refused:?}");
    }

    let mut forged = good.clone();
    forged.checkpoint = forged.checkpoint.replacen("\n6\n", "\n7\n", 1);
    let refused = forged.verify(&verifier).expect_err("edited checkpoint");
    assert!(matches!(refused, Error::Note(sos_audit::note::NoteError::BadSignature { .. })), "{refused:?}");
}

pub(crate) async fn policy_signs_every_n_and_after_max_delay<S: MerkleStore + Clone>(
    store: S,
    clock: ManualClock,
) {
    let policy = CheckpointPolicy::default().every(4).max_delay(Duration::from_secs(60));
    let checkpointer =
        Checkpointer::new(store.clone(), signer()).with_policy(policy).with_clock(Arc::new(clock.clone()));
    assert!(checkpointer.tick().await.expect("tick").is_empty(), "nothing to sign");
    append_n(&store, "acme", 0, 3).await;
    assert!(checkpointer.tick().await.expect("tick").is_empty(), "3 of 4 pending, none old");
    append_n(&store, "acme", 3, 1).await;
    let done = checkpointer.tick().await.expect("tick");
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].1.as_ref().expect("signed").size(), 4);
    append_n(&store, "acme", 4, 1).await;
    assert!(checkpointer.tick().await.expect("tick").is_empty(), "1 pending, not old yet");
    clock.advance(chrono::Duration::seconds(59));
    assert!(checkpointer.tick().await.expect("tick").is_empty(), "59 s is within the limit");
    clock.advance(chrono::Duration::seconds(2));
    let done = checkpointer.tick().await.expect("tick");
    assert_eq!(done.len(), 1, "a quiet log is checkpointed after the delay");
    assert_eq!(done[0].1.as_ref().expect("signed").size(), 5);
}

/// Two deployments of one log key over diverging chains: what one signed, the other must not
/// contradict.
pub(crate) async fn split_view_and_fork_are_refused<S: MerkleStore + Clone>(honest: S, other: S) {
    let acme = tenant("acme");
    let signer_text = signer().to_key_string();
    let load = || NoteSigner::from_key_string(&signer_text).expect("key");
    let dir = tempfile::tempdir().expect("temp dir");
    let anchor: Arc<dyn AnchorSink> = Arc::new(FsAnchorSink::new(dir.path()));

    append_n(&honest, "acme", 0, 3).await;
    let honest_checkpointer = Checkpointer::new(honest.clone(), load()).with_anchor(Arc::clone(&anchor));
    let signed = honest_checkpointer.checkpoint_now(&acme).await.expect("checkpoint");

    // The other chain has three different entries.
    append_n(&other, "acme", 100, 3).await;
    let other_checkpointer = Checkpointer::new(other.clone(), load()).with_anchor(Arc::clone(&anchor));
    // A fresh checkpointer learns the anchored checkpoint of size 3 before it signs anything, so
    // the second root is refused as a split view before it is signed, not only at the anchor.
    let refused = other_checkpointer.checkpoint_now(&acme).await.expect_err("the anchor holds size 3");
    assert!(matches!(refused, Error::SplitView { size: 3, .. }), "{refused:?}");
    assert_eq!(other.latest_checkpoint(&acme).await.expect("latest"), None, "nothing was signed");

    // With the honest checkpoint recorded in its store, the other log refuses to sign a second
    // root for size 3 ...
    other.record_checkpoint(&signed).await.expect("record");
    let fresh = Checkpointer::new(other.clone(), load());
    let refused = fresh.checkpoint_now(&acme).await.expect_err("split view");
    assert!(matches!(refused, Error::SplitView { size: 3, .. }), "{refused:?}");
    // ... and, once it grows, refuses to sign what does not extend the signed checkpoint.
    append_n(&other, "acme", 103, 2).await;
    let refused = fresh.checkpoint_now(&acme).await.expect_err("fork");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 3, .. }), "{refused:?}");

    // The verifier reports both checkpoints of size 3 as a split view, and the other chain as
    // forked from the honest checkpoint.
    let other_signed = Checkpoint {
        origin: "example.com/sos-audit/acme".to_owned(),
        size: 3,
        root: reference_tree(&other, "acme").await.root_at_size(3),
        extensions: Vec::new(),
    };
    let findings = tlog::verify_checkpoints(&other, &acme, &[signed.checkpoint.clone(), other_signed])
        .await
        .expect("verify");
    assert!(
        findings.iter().any(|f| matches!(f, CheckpointFinding::SplitView { size: 3, .. })),
        "{findings:?}"
    );
    assert!(findings.iter().any(|f| matches!(f, CheckpointFinding::Forked { size: 3, .. })), "{findings:?}");
}

pub(crate) async fn checkpoint_larger_than_the_log_is_truncation<S: MerkleStore + Clone>(store: S) {
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 4).await;
    let claimed = Checkpoint {
        origin: "example.com/sos-audit/acme".to_owned(),
        size: 9,
        root: reference_tree(&store, "acme").await.root(),
        extensions: Vec::new(),
    };
    let findings = tlog::verify_checkpoints(&store, &acme, &[claimed]).await.expect("verify");
    assert_eq!(findings, vec![CheckpointFinding::Truncated { checkpoint_size: 9, log_size: 4 }]);
}

pub(crate) async fn tiles_export_and_read_back<S: MerkleStore + Clone>(store: S) {
    let acme = tenant("acme");
    let signer = signer();
    let verifier = signer.verifier();
    let checkpointer = Checkpointer::new(store.clone(), signer);
    append_n(&store, "acme", 0, 600).await;
    checkpointer.checkpoint_now(&acme).await.expect("checkpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let exported = tlog::export_tiles(&store, &acme, dir.path()).await.expect("export");
    assert_eq!(exported.size(), 600);

    // An auditor with only the files and the public key:
    let note = std::fs::read(dir.path().join("checkpoint")).expect("checkpoint file");
    let checkpoint = Checkpoint::open(&note, &verifier, "example.com/sos-audit/acme").expect("opens");
    let mut tiles = TileSet::new(checkpoint.size);
    for (key, width) in tlog::tiles_for_size(checkpoint.size) {
        let bytes = std::fs::read(dir.path().join(key.path(width))).expect("tile file");
        assert_eq!(bytes.len() as u64, width * 32);
        tiles.insert(key, &bytes).expect("tile");
    }
    assert!(dir.path().join("tile/0/002.p/88").is_file());
    assert!(dir.path().join("tile/1/000.p/2").is_file());
    let bundle = std::fs::read(dir.path().join("tile/entries/001")).expect("entry bundle");
    assert_eq!(bundle.len(), 256 * 34);
    // Entry 300 is leaf 299: the 44th entry of bundle 1.
    let at = 43 * 34;
    assert_eq!(&bundle[at..at + 2], &[0, 32]);
    let leaf_data = &bundle[at + 2..at + 34];
    let stored = store.read_page(&acme, 299, 1).await.expect("read");
    assert_eq!(leaf_data, stored[0].hash.as_bytes());
    let proof = sos_audit::merkle::inclusion_proof(&tiles, 299, checkpoint.size).expect("proof from tiles");
    sos_audit::merkle::verify_inclusion(
        &leaf_hash(leaf_data),
        299,
        checkpoint.size,
        &proof,
        &checkpoint.root,
    )
    .expect("the proof from the exported tiles verifies");
    assert_eq!(sos_audit::merkle::root_at(&tiles, checkpoint.size).expect("root"), checkpoint.root);
}

pub(crate) async fn concurrent_checkpointers_agree<S: MerkleStore + Clone + 'static>(store: S) {
    let acme = tenant("acme");
    let key = signer().to_key_string();
    append_n(&store, "acme", 0, 40).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let store = store.clone();
        let key = key.clone();
        let acme = acme.clone();
        tasks.push(tokio::spawn(async move {
            let checkpointer = Checkpointer::new(store, NoteSigner::from_key_string(&key).expect("key"));
            checkpointer.checkpoint_now(&acme).await
        }));
    }
    let mut notes = Vec::new();
    for task in tasks {
        notes.push(task.await.expect("task").expect("checkpoint").note);
    }
    notes.dedup();
    assert_eq!(notes.len(), 1, "every checkpointer signed the same head");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 40);
}

/// A store that runs one piece of "another replica's" work right after the next
/// [`MerkleStore::extend_tree`] call returns: the moment a checkpointer has synced its tree but not
/// yet read the latest recorded checkpoint (the interleaving of finding F4).
#[derive(Clone)]
struct InterleavedStore<S> {
    inner: S,
    after_extend: Arc<std::sync::Mutex<Option<futures::future::BoxFuture<'static, ()>>>>,
}

impl<S: MerkleStore> InterleavedStore<S> {
    async fn run_the_other_replica(&self) {
        let pending = self.after_extend.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(other) = pending {
            other.await;
        }
    }
}

impl<S: MerkleStore> AuditStore for InterleavedStore<S> {
    async fn append(&self, entry: sos_audit::NewEntry) -> sos_audit::Result<sos_audit::AuditEntry> {
        self.inner.append(entry).await
    }

    async fn head(&self, tenant: &sos_core::TenantId) -> sos_audit::Result<Option<sos_audit::ChainHead>> {
        self.inner.head(tenant).await
    }

    async fn read_page(
        &self,
        tenant: &sos_core::TenantId,
        after_seq: u64,
        limit: u32,
    ) -> sos_audit::Result<Vec<sos_audit::AuditEntry>> {
        self.inner.read_page(tenant, after_seq, limit).await
    }

    async fn tenants(&self) -> sos_audit::Result<Vec<sos_core::TenantId>> {
        self.inner.tenants().await
    }
}

impl<S: MerkleStore> MerkleStore for InterleavedStore<S> {
    async fn extend_tree(
        &self,
        tenant: &sos_core::TenantId,
        max_entries: u32,
    ) -> sos_audit::Result<tlog::TreeState> {
        let state = self.inner.extend_tree(tenant, max_entries).await;
        self.run_the_other_replica().await;
        state
    }

    async fn tree_state(&self, tenant: &sos_core::TenantId) -> sos_audit::Result<tlog::TreeState> {
        self.inner.tree_state(tenant).await
    }

    async fn read_tiles(
        &self,
        tenant: &sos_core::TenantId,
        keys: &[tlog::TileKey],
    ) -> sos_audit::Result<tlog::StoredTiles> {
        self.inner.read_tiles(tenant, keys).await
    }

    async fn read_tree(
        &self,
        tenant: &sos_core::TenantId,
        keys: &[tlog::TileKey],
    ) -> sos_audit::Result<(tlog::TreeState, tlog::StoredTiles)> {
        self.inner.read_tree(tenant, keys).await
    }

    async fn latest_checkpoint(
        &self,
        tenant: &sos_core::TenantId,
    ) -> sos_audit::Result<Option<tlog::SignedCheckpoint>> {
        self.inner.latest_checkpoint(tenant).await
    }

    async fn checkpoint_at(
        &self,
        tenant: &sos_core::TenantId,
        size: u64,
    ) -> sos_audit::Result<Option<tlog::SignedCheckpoint>> {
        self.inner.checkpoint_at(tenant, size).await
    }

    async fn record_checkpoint(
        &self,
        checkpoint: &tlog::SignedCheckpoint,
    ) -> sos_audit::Result<tlog::SignedCheckpoint> {
        self.inner.record_checkpoint(checkpoint).await
    }
}

/// Finding F4: two replicas (two checkpointers, one key) over one database. Replica A syncs its
/// tree to 83 entries; before it reads the latest recorded checkpoint, replica B appends 5
/// entries and records a checkpoint of size 88. A must not take B's newer checkpoint for a cut-off
/// tail; it signs 83, and its next checkpoint extends both. A real truncation is still refused.
pub(crate) async fn a_replicas_newer_checkpoint_is_not_a_cut_tail<S: MerkleStore + Clone + 'static>(
    store: S,
) {
    let acme = tenant("acme");
    let key = signer().to_key_string();
    let load = || NoteSigner::from_key_string(&key).expect("key");
    append_n(&store, "acme", 0, 83).await;

    let replica_b = Arc::new(Checkpointer::new(store.clone(), load()));
    let interleaved = InterleavedStore { inner: store.clone(), after_extend: Arc::default() };
    let replica_a = Checkpointer::new(interleaved.clone(), load());
    let (other_store, other, tenant_b) = (store.clone(), Arc::clone(&replica_b), acme.clone());
    *interleaved.after_extend.lock().expect("lock") = Some(Box::pin(async move {
        append_n(&other_store, "acme", 83, 5).await;
        let signed = other.checkpoint_now(&tenant_b).await.expect("replica B checkpoints");
        assert_eq!(signed.size(), 88);
    }));

    let signed = replica_a.checkpoint_now(&acme).await.expect("a newer checkpoint of a replica is no fork");
    assert!(interleaved.after_extend.lock().expect("lock").is_none(), "replica B ran in between");
    // A signed 83 and recorded it, but hands out the latest recorded checkpoint: B's 88, which
    // verifies with the key and extends A's 83.
    assert_eq!(signed.size(), 88, "checkpoint_now returns the latest recorded checkpoint");
    assert!(store.checkpoint_at(&acme, 83).await.expect("read").is_some(), "A recorded its own 83");
    let latest = replica_a.latest(&acme).await.expect("latest").expect("recorded");
    assert_eq!(latest.size(), 88, "the latest recorded checkpoint is replica B's");

    // Both replicas go on extending each other's checkpoints.
    append_n(&store, "acme", 88, 2).await;
    assert_eq!(replica_a.checkpoint_now(&acme).await.expect("A extends 83 and 88").size(), 90);
    append_n(&store, "acme", 90, 1).await;
    assert_eq!(replica_b.checkpoint_now(&acme).await.expect("B extends 90").size(), 91);
    let reference = reference_tree(&store, "acme").await;
    for size in [83, 88, 90, 91] {
        if let Some(recorded) = store.checkpoint_at(&acme, size).await.expect("read") {
            assert_eq!(recorded.root(), reference.root_at_size(size), "size {size}");
        }
    }

    // A recorded checkpoint the chain really does not reach is still a cut-off tail.
    let beyond = Checkpoint {
        origin: "example.com/sos-audit/acme".to_owned(),
        size: 95,
        root: reference.root(),
        extensions: Vec::new(),
    };
    let note = beyond.sign(&load()).expect("sign");
    let forged = tlog::SignedCheckpoint { tenant: acme.clone(), checkpoint: beyond, note, signed_us: 0 };
    store.record_checkpoint(&forged).await.expect("record");
    let fresh = Checkpointer::new(store.clone(), load());
    let refused = fresh.checkpoint_now(&acme).await.expect_err("truncation");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 95, .. }), "{refused:?}");
}

pub(crate) async fn anchors_are_write_once(sink: Arc<dyn AnchorSink>) {
    let signer = signer();
    let acme = tenant("acme");
    let make_sized = |size: u64, root_byte: u8| {
        let checkpoint = Checkpoint {
            origin: "example.com/sos-audit/acme".to_owned(),
            size,
            root: sos_core::Sha256Digest::from_bytes([root_byte; 32]),
            extensions: Vec::new(),
        };
        let note = checkpoint.sign(&signer).expect("sign");
        Anchor { tenant: acme.clone(), size, root: checkpoint.root, note, timestamp_token: None }
    };
    let make = |root_byte: u8| make_sized(7, root_byte);
    let first = sink.write(&make(1)).await.expect("first write");
    assert!(!first.already_present);
    let again = sink.write(&make(1)).await.expect("same note again is a retry");
    assert!(again.already_present);
    let refused = sink.write(&make(2)).await.expect_err("a different note for size 7");
    assert!(matches!(refused, Error::AnchorConflict { size: 7, .. }), "{refused:?}");
    // A note filed under another size, or with another root, than it holds is never filed.
    let misfiled = sink.write(&Anchor { size: 9, ..make(4) }).await.expect_err("a note of size 7 filed as 9");
    assert!(matches!(misfiled, Error::AnchorMisfiled { filed: 9, held: 7, .. }), "{misfiled:?}");
    let wrong_root = Anchor { root: sos_core::Sha256Digest::from_bytes([5; 32]), ..make(4) };
    let misfiled = sink.write(&wrong_root).await.expect_err("a root the note does not hold");
    assert!(matches!(misfiled, Error::Note(_)), "{misfiled:?}");
    let with_token = make_sized(8, 3).with_timestamp_token(vec![0x30, 0x03, 0x02, 0x01, 0x00]);
    sink.write(&with_token).await.expect("an anchor with a timestamp token");
    // Read back: the largest size, with its token; nothing for another tenant.
    let latest = sink.latest(&acme).await.expect("read back").expect("anchors are held");
    assert_eq!(latest, with_token);
    assert_eq!(sink.latest(&tenant("globex")).await.expect("read back"), None);
}

trait RootAtSize {
    fn root_at_size(&self, size: u64) -> sos_core::Sha256Digest;
}

impl RootAtSize for MemoryTree {
    fn root_at_size(&self, size: u64) -> sos_core::Sha256Digest {
        sos_audit::merkle::root_at(self, size).expect("root")
    }
}

macro_rules! tlog_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stored_tree_matches_the_chain() {
                let (store, _guard) = $make(clock()).await;
                super::stored_tree_matches_the_chain(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn checkpoints_sign_prove_and_verify() {
                let (store, _guard) = $make(clock()).await;
                super::checkpoints_sign_prove_and_verify(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn proofs_for_the_wrong_entry_or_size_are_refused() {
                let (store, _guard) = $make(clock()).await;
                super::proofs_for_the_wrong_entry_or_size_are_refused(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn policy_signs_every_n_and_after_max_delay() {
                let clock = clock();
                let (store, _guard) = $make(clock.clone()).await;
                super::policy_signs_every_n_and_after_max_delay(store, clock).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn split_view_and_fork_are_refused() {
                let (honest, _honest_guard) = $make(clock()).await;
                let (other, _other_guard) = $make(clock()).await;
                super::split_view_and_fork_are_refused(honest, other).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn checkpoint_larger_than_the_log_is_truncation() {
                let (store, _guard) = $make(clock()).await;
                super::checkpoint_larger_than_the_log_is_truncation(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tiles_export_and_read_back() {
                let (store, _guard) = $make(clock()).await;
                super::tiles_export_and_read_back(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_checkpointers_agree() {
                let (store, _guard) = $make(clock()).await;
                super::concurrent_checkpointers_agree(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_replicas_newer_checkpoint_is_not_a_cut_tail() {
                let (store, _guard) = $make(clock()).await;
                super::a_replicas_newer_checkpoint_is_not_a_cut_tail(store).await;
            }
        }
    };
}

async fn memory_store(clock: ManualClock) -> (MemoryAuditStore, ()) {
    (MemoryAuditStore::new().with_clock(Arc::new(clock)), ())
}

tlog_suite!(memory, memory_store);

#[cfg(feature = "sqlite")]
async fn sqlite_store(clock: ManualClock) -> (sos_audit::SqliteAuditChain, sos_testkit::SqliteTestDatabase) {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    (sos_audit::SqliteAuditChain::new(database.pool().clone()).with_clock(Arc::new(clock)), database)
}

#[cfg(feature = "sqlite")]
tlog_suite!(sqlite, sqlite_store);

#[cfg(feature = "postgres")]
async fn postgres_store(clock: ManualClock) -> (sos_audit::PgAuditChain, sos_testkit::PgTestDatabase) {
    let database = sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    (sos_audit::PgAuditChain::new(database.pool().clone()).with_clock(Arc::new(clock)), database)
}

#[cfg(feature = "postgres")]
tlog_suite!(postgres, postgres_store);

#[tokio::test]
async fn fs_anchor_sink_is_write_once_and_read_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = FsAnchorSink::new(dir.path());
    anchors_are_write_once(Arc::new(sink.clone())).await;
    let path = sink.path_of(&tenant("acme"), 7);
    let metadata = std::fs::metadata(&path).expect("anchor file");
    assert!(metadata.permissions().readonly(), "the anchor is read-only");
    assert!(
        sink.path_of(&tenant("acme"), 8).with_extension("tsr").is_file(),
        "the token is kept beside its note"
    );
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_anchor_sink_is_write_once() {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    anchors_are_write_once(Arc::new(tlog::SqliteAnchorSink::new(database.pool().clone()))).await;
    let deleted = sqlx::query("DELETE FROM audit_anchors").execute(database.pool()).await;
    assert!(deleted.is_err(), "anchor rows cannot be deleted");
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_anchor_sink_is_write_once() {
    let database = sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    anchors_are_write_once(Arc::new(tlog::PgAnchorSink::new(database.pool().clone()))).await;
    let updated = sqlx::query("UPDATE audit_anchors SET note = 'x'").execute(database.pool()).await;
    assert!(updated.is_err(), "anchor rows cannot be updated");
}

/// A database administrator rewrites an entry (with its triggers off): the checkpointer refuses
/// to extend the tree over it, so the rewrite is never signed.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn checkpointer_refuses_a_rewritten_entry_postgres() {
    let database = sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let store = sos_audit::PgAuditChain::new(database.pool().clone());
    append_n(&store, "acme", 0, 6).await;
    sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
        .execute(database.pool())
        .await
        .expect("disable");
    sqlx::query("UPDATE audit_entries SET payload = '{\"index\":99}' WHERE tenant = 'acme' AND seq = 4")
        .execute(database.pool())
        .await
        .expect("rewrite");
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("broken chain");
    assert!(matches!(refused, Error::ChainBroken { seq: 4, .. }), "{refused:?}");
    assert_eq!(checkpointer.latest(&tenant("acme")).await.expect("latest"), None, "nothing was signed");
    assert_eq!(store.tree_state(&tenant("acme")).await.expect("state").size, 0, "nothing was written");
}

/// A database administrator rewrites the stored tiles: proofs from them no longer match the
/// signed checkpoint, and the checkpointer refuses to sign the rewritten tree.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn checkpointer_refuses_rewritten_tiles_sqlite() {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = sos_audit::SqliteAuditChain::new(database.pool().clone());
    let key = signer().to_key_string();
    let load = || NoteSigner::from_key_string(&key).expect("key");
    let verifier = load().verifier();
    let checkpointer = Checkpointer::new(store.clone(), load());
    append_n(&store, "acme", 0, 10).await;
    checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint");
    // Replace leaf 3's hash in the level-0 tile.
    let mut tile: Vec<u8> = sqlx::query_scalar(
        "SELECT hashes FROM audit_tree_tiles WHERE tenant = 'acme' AND level = 0 AND idx = 0",
    )
    .fetch_one(database.pool())
    .await
    .expect("tile");
    tile[96..128].fill(0);
    sqlx::query("UPDATE audit_tree_tiles SET hashes = ?1 WHERE tenant = 'acme' AND level = 0 AND idx = 0")
        .bind(tile)
        .execute(database.pool())
        .await
        .expect("rewrite tile");
    let proof = tlog::prove(&store, &tenant("acme"), 2, None).await.expect("prove");
    let refused = proof.verify(&verifier).expect_err("the proof uses the rewritten leaf");
    assert!(matches!(refused, Error::Proof(ProofError::RootMismatch { .. })), "{refused:?}");
    // A fresh checkpointer (no memory of what it signed) still refuses: the recorded, signed
    // checkpoint disagrees with the tree.
    let fresh = Checkpointer::new(store.clone(), load());
    let refused = fresh.checkpoint_now(&tenant("acme")).await.expect_err("split view");
    assert!(matches!(refused, Error::SplitView { size: 10, .. }), "{refused:?}");
    // Once the log grows, the rewritten prefix no longer extends the signed checkpoint.
    append_n(&store, "acme", 10, 3).await;
    let refused = fresh.checkpoint_now(&tenant("acme")).await.expect_err("fork");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{refused:?}");
    // Checkpoint rows are write-once.
    let deleted = sqlx::query("DELETE FROM audit_checkpoints").execute(database.pool()).await;
    assert!(deleted.is_err(), "checkpoint rows cannot be deleted");
}

/// The SQLite extension reads the new entries as one JSON value (not a row each). A database
/// administrator who drops the write-once trigger and stores a column under another SQL type with
/// the same bytes (a payload as a BLOB), or rewrites an entry's text without its hash, is refused
/// before anything is signed, and nothing of the unsigned part is extended or recorded.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_extension_refuses_mistyped_and_rewritten_entries() {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = sos_audit::SqliteAuditChain::new(database.pool().clone());
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 5).await;
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("checkpoint").size(), 5);
    append_n(&store, "acme", 5, 4).await;
    sqlx::query("DROP TRIGGER audit_entries_no_update").execute(database.pool()).await.expect("drop");
    let original: String =
        sqlx::query_scalar("SELECT payload FROM audit_entries WHERE tenant = 'acme' AND seq = 7")
            .fetch_one(database.pool())
            .await
            .expect("payload");
    sqlx::query("UPDATE audit_entries SET payload = CAST(payload AS BLOB) WHERE tenant = 'acme' AND seq = 7")
        .execute(database.pool())
        .await
        .expect("store the payload as a BLOB");
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("a mistyped column");
    assert!(matches!(refused, Error::CorruptTree { .. }), "{refused:?}");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 5, "nothing was extended");
    sqlx::query("UPDATE audit_entries SET payload = ?1 WHERE tenant = 'acme' AND seq = 7")
        .bind(original.replace("index", "indey"))
        .execute(database.pool())
        .await
        .expect("rewrite the payload as text");
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("a rewritten entry");
    assert!(matches!(refused, Error::ChainBroken { seq: 7, .. }), "{refused:?}");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 5, "nothing was extended");
    sqlx::query("UPDATE audit_entries SET payload = ?1 WHERE tenant = 'acme' AND seq = 7")
        .bind(original)
        .execute(database.pool())
        .await
        .expect("restore the payload");
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("restored chain").size(), 9);
    assert!(store.checkpoint_at(&acme, 9).await.expect("read").is_some());
}

/// The proof file of `docs/audit-format.md` verifies with the documented key, and only with it.
#[test]
fn proof_file_example_from_docs() {
    let doc = include_str!("../../../docs/audit-format.md");
    let json = doc
        .split("### Proof files")
        .nth(1)
        .and_then(|rest| rest.split("```json\n").nth(1))
        .expect("the proof block");
    let json = json.split("```").next().expect("block end");
    let proof = tlog::EntryProof::from_json(json.as_bytes()).expect("the documented proof parses");
    let key = doc
        .lines()
        .find_map(|line| line.strip_prefix("verifier-key = "))
        .expect("the documented verifier key");
    let verifier = sos_audit::note::NoteVerifier::from_key_string(key).expect("key");
    let checkpoint = proof.verify(&verifier).expect("the documented proof verifies");
    assert_eq!((checkpoint.origin.as_str(), checkpoint.size), ("example.com/sos-audit/acme", 3));
    let tile_doc = doc.split("tile/0/000.p/3        = ").nth(1).expect("tile example");
    let tile_hex: String = tile_doc.split("(96 bytes)").next().expect("end").split_whitespace().collect();
    let mut tiles = TileSet::new(3);
    tiles
        .insert(sos_audit::tlog::TileKey { level: 0, index: 0 }, &hex::decode(tile_hex).expect("hex"))
        .expect("tile");
    assert_eq!(sos_audit::merkle::root_at(&tiles, 3).expect("root"), checkpoint.root);
}

/// The background loop signs due tenants on its own and stops when told to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_signs_in_the_background_until_shutdown() {
    let store = MemoryAuditStore::new();
    let policy = CheckpointPolicy::default().every(2).poll_interval(Duration::from_millis(20));
    let checkpointer = Arc::new(Checkpointer::new(store.clone(), signer()).with_policy(policy));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let reports = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let checkpointer = Arc::clone(&checkpointer);
        let reports = Arc::clone(&reports);
        tokio::spawn(async move {
            checkpointer
                .run(
                    async {
                        let _ = stopped.await;
                    },
                    move |tenant, outcome| {
                        let size = outcome.as_ref().map(|signed| signed.size()).ok();
                        reports.lock().expect("reports").push((tenant.cloned(), size));
                    },
                )
                .await;
        })
    };
    append_n(&store, "acme", 0, 2).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while checkpointer.latest(&tenant("acme")).await.expect("latest").is_none() {
        assert!(std::time::Instant::now() < deadline, "the loop never signed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.send(()).expect("the loop is running");
    tokio::time::timeout(Duration::from_secs(5), task).await.expect("the loop stops").expect("task");
    let reports = reports.lock().expect("reports").clone();
    assert_eq!(reports, vec![(Some(tenant("acme")), Some(2))]);
}

/// Review attack on the directory sink: whoever can write the anchor directory plants names
/// that are not `<20 digits>.checkpoint` (21 digits with a leading zero, a `+` sign that
/// `u64::from_str` would accept, a size past `u64::MAX`, a hex digit, a backup copy, a token
/// alone), each holding the genuine older note: none of them hides the real latest anchor.
/// A symlink under a larger, well-formed name to a genuine older note is refused as misfiled.
#[cfg(unix)]
#[tokio::test]
async fn fs_anchor_names_that_are_not_sizes_cannot_hide_the_latest_anchor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = FsAnchorSink::new(dir.path());
    let acme = tenant("acme");
    let signer = signer();
    let anchor = |size: u64| {
        let checkpoint = Checkpoint {
            origin: "example.com/sos-audit/acme".to_owned(),
            size,
            root: sos_core::Sha256Digest::from_bytes([size as u8; 32]),
            extensions: Vec::new(),
        };
        let note = checkpoint.sign(&signer).expect("sign");
        Anchor { tenant: acme.clone(), size, root: checkpoint.root, note, timestamp_token: None }
    };
    let older = anchor(7);
    let latest = anchor(8);
    sink.write(&older).await.expect("older");
    sink.write(&latest).await.expect("latest");
    let tenant_dir = dir.path().join("acme");
    for planted in [
        "000000000000000000099.checkpoint",
        "+0000000000000000099.checkpoint",
        "99999999999999999999.checkpoint",
        "0000000000000000009a.checkpoint",
        "00000000000000000099.checkpoint.bak",
        "00000000000000000099.tsr",
        "00000000000000000099",
    ] {
        std::fs::write(tenant_dir.join(planted), older.note.as_bytes()).expect("plant");
    }
    assert_eq!(sink.latest(&acme).await.expect("read back"), Some(latest), "the planted names are ignored");
    std::os::unix::fs::symlink(sink.path_of(&acme, 7), sink.path_of(&acme, 99)).expect("symlink");
    let refused = sink.latest(&acme).await.expect_err("a symlink to an older note under a larger size");
    assert!(matches!(refused, Error::AnchorMisfiled { filed: 99, held: 7, .. }), "{refused:?}");
}

/// Threat shape: a tree extension that can never succeed (liveness of the checkpointer). The
/// SQLite extension reads the new entries as one JSON value; entries whose quoted form exceeds
/// SQLite's length limit (1e9 bytes: here 170 rows of 1 MiB of NUL characters, each quoted as
/// `\u0000`, about 1.07e9 bytes) made that read fail with "string or blob too big" on every run,
/// wedging the tree at its size. The read must instead take fewer entries and go on to check
/// them: the rows are junk, so the checkpoint is refused as a broken chain at the first of them.
#[tokio::test]
async fn sqlite_extension_survives_entries_beyond_the_json_length_limit() {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = sos_audit::SqliteAuditChain::new(database.pool().clone());
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 5).await;
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("checkpoint").size(), 5);
    // A database administrator (or a buggy host) drops the triggers and appends large rows.
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_entries'",
    )
    .fetch_all(database.pool())
    .await
    .expect("triggers");
    for trigger in triggers {
        sqlx::query(&format!("DROP TRIGGER \"{trigger}\"")).execute(database.pool()).await.expect("drop");
    }
    sqlx::query(
        "WITH RECURSIVE n(seq) AS (SELECT 6 UNION ALL SELECT seq + 1 FROM n WHERE seq < 175)
         INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
         SELECT 'acme', seq, 0, 'a', 'b', 'c', CAST(zeroblob(1048576) AS TEXT), zeroblob(32), zeroblob(32) FROM n",
    )
    .execute(database.pool())
    .await
    .expect("append the large rows");
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("junk rows");
    assert!(matches!(refused, Error::ChainBroken { seq: 6, .. }), "{refused:?}");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 5, "nothing was extended");
}

/// Threat shape: a half-written tree. The SQLite extension writes the head and every changed tile
/// in one multi-statement round trip; when the tiles' statement fails after the head's succeeded,
/// the error reaches the caller and the transaction rolls back, head included. Likewise the
/// checkpoint row's insert and the read of the latest row share a round trip: when the insert
/// fails, the checkpointer reports it and no checkpoint of that size is recorded.
#[tokio::test]
async fn sqlite_multi_statement_writes_fail_whole() {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = sos_audit::SqliteAuditChain::new(database.pool().clone());
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 5).await;
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("checkpoint").size(), 5);
    append_n(&store, "acme", 5, 300).await;
    sqlx::query(
        "CREATE TRIGGER refuse_tiles BEFORE INSERT ON audit_tree_tiles WHEN NEW.level = 0 AND NEW.idx = 1
         BEGIN SELECT RAISE(ABORT, 'refused tile'); END",
    )
    .execute(database.pool())
    .await
    .expect("trigger");
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("a refused tile");
    assert!(matches!(refused, Error::Storage(_)), "{refused:?}");
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 5, "the head rolled back with the tiles");
    let tiles: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_tree_tiles WHERE tenant = 'acme'")
        .fetch_one(database.pool())
        .await
        .expect("count");
    assert_eq!(tiles, 1, "only the tile of the first checkpoint is stored");
    sqlx::query("DROP TRIGGER refuse_tiles").execute(database.pool()).await.expect("drop");
    sqlx::query(
        "CREATE TRIGGER refuse_checkpoints BEFORE INSERT ON audit_checkpoints
         BEGIN SELECT RAISE(ABORT, 'refused checkpoint'); END",
    )
    .execute(database.pool())
    .await
    .expect("trigger");
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("a refused checkpoint row");
    assert!(matches!(refused, Error::Storage(_)), "{refused:?}");
    assert!(store.checkpoint_at(&acme, 305).await.expect("read").is_none(), "nothing recorded");
    assert_eq!(store.latest_checkpoint(&acme).await.expect("latest").expect("one").size(), 5);
    sqlx::query("DROP TRIGGER refuse_checkpoints").execute(database.pool()).await.expect("drop");
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("checkpoint").size(), 305);
}
