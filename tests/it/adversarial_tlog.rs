//! Adversarial tests against `sos-audit`'s Merkle checkpoint layer (`sos_audit::tlog`, `merkle`,
//! `note`): split views, forks, checkpoints larger than the log, tenant boundaries, malformed
//! proofs and notes, anchor sinks and the CLI given garbage.
//!
//! Each test is named after the attack and asserts the safe behaviour: a failing test is a
//! finding. Database-level attacks use raw SQL on real PostgreSQL or SQLite test databases.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_boxed::BoxFuture;
use sos_audit::merkle::{InclusionProof, ProofError};
use sos_audit::note::{Checkpoint, NoteError, NoteSigner};
use sos_audit::tlog::{
    self, Anchor, AnchorReceipt, AnchorSink, Checkpointer, EntryProof, FsAnchorSink, MerkleStore,
    PgAnchorSink, SignedCheckpoint, SqliteAnchorSink,
};
use sos_audit::{AuditStore, Error, MemoryAuditStore, NewEntry, PgAuditChain, SqliteAuditChain};
use sos_core::{Sha256Digest, TenantId};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

mod futures_boxed {
    pub(super) type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

const LOG: &str = "example.com/sos-audit";

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid test tenant")
}

fn signer() -> NoteSigner {
    NoteSigner::generate(LOG).expect("valid key name")
}

async fn append_n<S: AuditStore>(store: &S, tenant_name: &str, from: u64, count: u64) {
    for index in from..from + count {
        let entry = NewEntry::new(
            tenant(tenant_name),
            "agent:adversary",
            "deal.update",
            format!("deal/{index}"),
            &serde_json::json!({ "index": index }),
        )
        .expect("valid entry");
        store.append(entry).await.expect("append");
    }
}

/// A timestamp authority whose every token differs (as real RFC 3161 tokens do: serial number,
/// time), counting its calls.
#[derive(Debug, Default)]
struct FreshTokens(AtomicU64);

impl FreshTokens {
    fn timestamp(&self, note: &[u8]) -> Vec<u8> {
        let serial = self.0.fetch_add(1, Ordering::SeqCst);
        let mut token = Sha256Digest::of(note).as_bytes().to_vec();
        token.extend_from_slice(&serial.to_be_bytes());
        token
    }
}

/// A sink that attaches a fresh token to each anchor and hands it to a filesystem sink, as any
/// timestamping wrapper does.
#[derive(Debug)]
struct TokenedFsSink {
    tokens: FreshTokens,
    inner: FsAnchorSink,
}

impl AnchorSink for TokenedFsSink {
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, sos_audit::Result<AnchorReceipt>> {
        Box::pin(async move {
            let tokened = anchor.clone().with_timestamp_token(self.tokens.timestamp(anchor.note.as_bytes()));
            self.inner.write(&tokened).await
        })
    }

    fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, sos_audit::Result<Option<Anchor>>> {
        self.inner.latest(tenant)
    }
}

fn signed(tenant_name: &str, size: u64, root: Sha256Digest, key: &NoteSigner) -> SignedCheckpoint {
    let checkpoint = Checkpoint {
        origin: tlog::origin_for(key.name(), &tenant(tenant_name)),
        size,
        root,
        extensions: Vec::new(),
    };
    let note = checkpoint.sign(key).expect("sign");
    SignedCheckpoint { tenant: tenant(tenant_name), checkpoint, note, signed_us: 0 }
}

// ---------------------------------------------------------------------------------------------
// Anchors
// ---------------------------------------------------------------------------------------------

/// Finding (fixed): a second write of the same note with a fresh timestamp token (a retry after a
/// failed record, or a second checkpointer process on the same anchor directory) was refused by
/// the filesystem sink with `AnchorConflict`, i.e. reported as a split view.
#[tokio::test]
async fn fs_anchor_same_note_with_a_fresh_timestamp_token_is_not_a_split_view() {
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = FsAnchorSink::new(dir.path());
    let store = MemoryAuditStore::new();
    append_n(&store, "acme", 0, 3).await;
    let key = signer();
    let authority = FreshTokens::default();
    let checkpoint = {
        let root = tlog::root_at(
            &store,
            &tenant("acme"),
            tlog::sync_tree(&store, &tenant("acme")).await.expect("sync").size,
        )
        .await
        .expect("root");
        signed("acme", 3, root, &key)
    };
    let first =
        Anchor::new(&checkpoint).with_timestamp_token(authority.timestamp(checkpoint.note.as_bytes()));
    let second =
        Anchor::new(&checkpoint).with_timestamp_token(authority.timestamp(checkpoint.note.as_bytes()));
    assert_ne!(first.timestamp_token, second.timestamp_token);
    assert!(!sink.write(&first).await.expect("first write").already_present);
    let retry = sink.write(&second).await.expect("the same note is not a conflict");
    assert!(retry.already_present);
    let path = sink.path_of(&tenant("acme"), 3);
    assert_eq!(
        std::fs::read(path.with_extension("tsr")).expect("token"),
        first.timestamp_token.clone().expect("token"),
        "the first token is kept"
    );
    // A different note for the size is still a conflict, token or not.
    let forged = signed("acme", 3, Sha256Digest::of(b"another root"), &key);
    let refused = sink.write(&Anchor::new(&forged)).await.expect_err("split view at the anchor");
    assert!(matches!(refused, Error::AnchorConflict { size: 3, .. }), "{refused:?}");
}

/// Two checkpointer processes (same key, same anchor directory, each with its own timestamp
/// authority client) race on one PostgreSQL log: neither reports a split view.
#[tokio::test]
async fn concurrent_checkpointers_with_timestamps_share_an_fs_anchor_postgres() {
    let database = PgTestDatabase::with_pool_size(&[&sos_audit::postgres_migrator()], 16).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key = signer().to_key_string();
    let store = PgAuditChain::new(database.pool().clone());
    append_n(&store, "acme", 0, 5).await;
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let checkpointer = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
            .with_anchor(Arc::new(TokenedFsSink {
                tokens: FreshTokens::default(),
                inner: FsAnchorSink::new(dir.path()),
            }));
        tasks.push(tokio::spawn(async move { checkpointer.checkpoint_now(&tenant("acme")).await }));
    }
    let mut roots = Vec::new();
    for task in tasks {
        let signed = task.await.expect("join").expect("no split view among agreeing checkpointers");
        roots.push((signed.size(), signed.root()));
    }
    roots.dedup();
    assert_eq!(roots.len(), 1, "one head: {roots:?}");
}

/// A symlink planted where the next anchor file goes is never written through.
#[cfg(unix)]
#[tokio::test]
async fn fs_anchor_does_not_write_through_a_planted_symlink() {
    let dir = tempfile::tempdir().expect("temp dir");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").expect("victim");
    let sink = FsAnchorSink::new(dir.path().join("anchors"));
    let checkpoint = signed("acme", 7, Sha256Digest::of(b"root"), &signer());
    let path = sink.path_of(&tenant("acme"), 7);
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dirs");
    std::os::unix::fs::symlink(&victim, &path).expect("plant symlink");
    let refused = sink.write(&Anchor::new(&checkpoint)).await.expect_err("the slot is taken");
    assert!(matches!(refused, Error::AnchorConflict { size: 7, .. }), "{refused:?}");
    assert_eq!(std::fs::read(&victim).expect("victim"), b"precious", "nothing written through the link");
}

// ---------------------------------------------------------------------------------------------
// Split views, forks, checkpoints larger than the log
// ---------------------------------------------------------------------------------------------

/// Many checkpointers (separate pools, as separate processes would have) sign while entries are
/// appended: every recorded checkpoint is consistent with every other and with the chain.
#[tokio::test]
async fn concurrent_checkpointers_and_appenders_never_split_the_view_postgres() {
    let database = PgTestDatabase::with_pool_size(&[&sos_audit::postgres_migrator()], 24).await;
    let key = signer().to_key_string();
    let verifier = NoteSigner::from_key_string(&key).expect("key").verifier();
    let appender = PgAuditChain::new(database.pool().clone());
    let writer = tokio::spawn(async move {
        for index in 0..60 {
            append_n(&appender, "acme", index, 1).await;
            tokio::task::yield_now().await;
        }
    });
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let checkpointer = Checkpointer::new(
            PgAuditChain::new(database.pool().clone()),
            NoteSigner::from_key_string(&key).expect("key"),
        );
        tasks.push(tokio::spawn(async move {
            let mut heads = Vec::new();
            for _ in 0..15 {
                heads.push(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint"));
            }
            heads
        }));
    }
    writer.await.expect("writer");
    let mut heads = Vec::new();
    for task in tasks {
        heads.extend(task.await.expect("join"));
    }
    let store = PgAuditChain::new(database.pool().clone());
    let last = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
        .checkpoint_now(&tenant("acme"))
        .await
        .expect("final checkpoint");
    assert_eq!(last.size(), 60);
    let origin = tlog::origin_for(LOG, &tenant("acme"));
    let opened: Vec<Checkpoint> = heads
        .iter()
        .chain(std::iter::once(&last))
        .map(|head| Checkpoint::open(head.note.as_bytes(), &verifier, &origin).expect("signed"))
        .collect();
    let findings = tlog::verify_checkpoints(&store, &tenant("acme"), &opened).await.expect("verify");
    assert!(findings.is_empty(), "{findings:?}");
    for head in &heads {
        if head.size() == 0 {
            continue;
        }
        let proof = tlog::consistency_proof(&store, &tenant("acme"), head.size(), 60).await.expect("proof");
        proof.verify(&head.root(), &last.root()).expect("every head extends to the last");
    }
}

/// A genuinely signed checkpoint larger than the stored log (a tail cut off, or a row copied in
/// from elsewhere): the checkpointer refuses to sign, and proving against it is a typed error.
#[tokio::test]
async fn checkpoint_larger_than_the_log_is_refused_sqlite() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let key = signer().to_key_string();
    let load = || NoteSigner::from_key_string(&key).expect("key");
    append_n(&store, "acme", 0, 5).await;
    store
        .record_checkpoint(&signed("acme", 1_000, Sha256Digest::of(b"future"), &load()))
        .await
        .expect("plant");
    let refused =
        Checkpointer::new(store.clone(), load()).checkpoint_now(&tenant("acme")).await.expect_err("fork");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 1_000, .. }), "{refused:?}");
    let refused = tlog::prove(&store, &tenant("acme"), 3, None).await.expect_err("tree too small");
    assert!(matches!(refused, Error::Proof(ProofError::TreeTooSmall { size: 1_000, .. })), "{refused:?}");
    // The largest size there is.
    store
        .record_checkpoint(&signed("acme", u64::MAX, Sha256Digest::of(b"max"), &load()))
        .await
        .expect("plant");
    let refused =
        Checkpointer::new(store.clone(), load()).checkpoint_now(&tenant("acme")).await.expect_err("fork");
    assert!(matches!(refused, Error::Forked { .. }), "{refused:?}");
}

/// Another tenant's genuine checkpoint recorded under this tenant (a copied row) is refused: the
/// origin names the tenant.
#[tokio::test]
async fn another_tenants_checkpoint_recorded_here_is_refused() {
    let store = MemoryAuditStore::new();
    let key = signer().to_key_string();
    let load = || NoteSigner::from_key_string(&key).expect("key");
    append_n(&store, "acme", 0, 4).await;
    append_n(&store, "globex", 0, 6).await;
    let acme = Checkpointer::new(store.clone(), load()).checkpoint_now(&tenant("acme")).await.expect("acme");
    let mut copied = acme.clone();
    copied.tenant = tenant("globex");
    store.record_checkpoint(&copied).await.expect("plant");
    let refused = Checkpointer::new(store.clone(), load())
        .checkpoint_now(&tenant("globex"))
        .await
        .expect_err("foreign");
    assert!(matches!(refused, Error::Note(NoteError::WrongOrigin { .. })), "{refused:?}");
    // And a proof built on it does not verify for globex.
    let proof = tlog::prove(&store, &tenant("globex"), 1, None).await.expect("prove without key");
    let refused = proof.verify(&load().verifier()).expect_err("foreign checkpoint");
    assert!(matches!(refused, Error::Note(NoteError::WrongOrigin { .. })), "{refused:?}");
}

// ---------------------------------------------------------------------------------------------
// Rewritten rows in the stored but not yet signed part of the tree
// ---------------------------------------------------------------------------------------------

/// Raw SQL access to a test database, as a database administrator has it (triggers dropped or
/// disabled where the schema refuses the change).
enum RawDb {
    Postgres(Box<PgTestDatabase>),
    Sqlite(SqliteTestDatabase),
}

impl RawDb {
    async fn tile(&self, level: i64, index: i64) -> Vec<u8> {
        let select = "SELECT hashes FROM audit_tree_tiles WHERE tenant = 'acme' AND level = $1 AND idx = $2";
        match self {
            Self::Postgres(database) => sqlx::query_scalar(select)
                .bind(level as i16)
                .bind(index)
                .fetch_one(database.pool())
                .await
                .expect("tile"),
            Self::Sqlite(database) => sqlx::query_scalar(&select.replace('$', "?"))
                .bind(level)
                .bind(index)
                .fetch_one(database.pool())
                .await
                .expect("tile"),
        }
    }

    async fn set_tile(&self, level: i64, index: i64, hashes: Vec<u8>) {
        let update =
            "UPDATE audit_tree_tiles SET hashes = $1 WHERE tenant = 'acme' AND level = $2 AND idx = $3";
        let rows = match self {
            Self::Postgres(database) => sqlx::query(update)
                .bind(hashes)
                .bind(level as i16)
                .bind(index)
                .execute(database.pool())
                .await
                .expect("rewrite tile")
                .rows_affected(),
            Self::Sqlite(database) => sqlx::query(&update.replace('$', "?"))
                .bind(hashes)
                .bind(level)
                .bind(index)
                .execute(database.pool())
                .await
                .expect("rewrite tile")
                .rows_affected(),
        };
        assert_eq!(rows, 1, "the tile was rewritten");
    }

    /// Rewrites the payload (and, when given, the hash) of entry `seq`.
    async fn rewrite_entry(&self, seq: i64, payload: &str, hash: Option<Sha256Digest>) {
        match self {
            Self::Postgres(database) => {
                sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
                    .execute(database.pool())
                    .await
                    .expect("disable the append-only triggers");
                sqlx::query(
                    "UPDATE audit_entries SET payload = $1, hash = COALESCE($2, hash) WHERE tenant = 'acme' AND seq = $3",
                )
                .bind(payload)
                .bind(hash.map(|hash| hash.as_bytes().to_vec()))
                .bind(seq)
                .execute(database.pool())
                .await
                .expect("rewrite entry");
            }
            Self::Sqlite(database) => {
                sqlx::query("DROP TRIGGER IF EXISTS audit_entries_no_update")
                    .execute(database.pool())
                    .await
                    .expect("drop the append-only trigger");
                sqlx::query(
                    "UPDATE audit_entries SET payload = ?1, hash = COALESCE(?2, hash) WHERE tenant = 'acme' AND seq = ?3",
                )
                .bind(payload)
                .bind(hash.map(|hash| hash.as_bytes().to_vec()))
                .bind(seq)
                .execute(database.pool())
                .await
                .expect("rewrite entry");
            }
        }
    }
}

async fn postgres() -> (PgAuditChain, RawDb) {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    (PgAuditChain::new(database.pool().clone()), RawDb::Postgres(Box::new(database)))
}

async fn sqlite() -> (SqliteAuditChain, RawDb) {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    (SqliteAuditChain::new(database.pool().clone()), RawDb::Sqlite(database))
}

/// Signs a checkpoint of 10 entries, appends up to `size` and extends the stored tree to it
/// without signing: the tree's rows after entry 10 are covered by no signature.
async fn signed_ten_stored_to<S: MerkleStore + Clone>(store: &S, key: &str, size: u64) -> Checkpointer<S> {
    let checkpointer = Checkpointer::new(store.clone(), NoteSigner::from_key_string(key).expect("key"));
    append_n(store, "acme", 0, 10).await;
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), 10);
    append_n(store, "acme", 10, size - 10).await;
    assert_eq!(tlog::sync_tree(store, &tenant("acme")).await.expect("extend").size, size);
    checkpointer
}

/// After a refusal nothing new was signed, and an auditor recomputing from the chain agrees with
/// the one checkpoint there is.
async fn nothing_signed_after<S: MerkleStore>(checkpointer: &Checkpointer<S>) {
    let latest = checkpointer.latest(&tenant("acme")).await.expect("latest").expect("recorded");
    assert_eq!(latest.size(), 10, "nothing was signed after the refusal");
}

/// A DBA rewrites one leaf hash of the stored tree after the last signed checkpoint (leaf 12 of
/// 15, in the partial level-0 tile). No signature covers it: the checkpointer re-derives the new
/// leaves from the chain against the signed tree's edge and refuses.
async fn rewritten_unsigned_leaf_hash_is_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let key = signer().to_key_string();
    let checkpointer = signed_ten_stored_to(&store, &key, 15).await;
    let mut tile = raw.tile(0, 0).await;
    tile[12 * 32..13 * 32].fill(7);
    raw.set_tile(0, 0, tile).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten leaf");
    assert!(matches!(refused, Error::RewrittenTree { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(refused.to_string().contains("tile/0/000.p/15"), "{refused}");
    nothing_signed_after(&checkpointer).await;
    // A fresh process (no memory of what it signed) refuses it too: it re-derives from the
    // recorded checkpoint.
    let fresh = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"));
    let refused = fresh.checkpoint_now(&tenant("acme")).await.expect_err("rewritten leaf");
    assert!(matches!(refused, Error::RewrittenTree { checkpoint_size: 10, .. }), "{refused:?}");
}

/// A DBA rewrites interior hashes of the unsigned part: the level-1 hash of a full level-0 tile
/// (which the root is computed from), and separately a leaf of a full tile that no root reads
/// (only proofs would). Both are refused.
async fn rewritten_unsigned_interior_hash_is_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let checkpointer = signed_ten_stored_to(&store, &signer().to_key_string(), 600).await;
    let original = raw.tile(1, 0).await;
    assert_eq!(original.len(), 2 * 32, "tile 1/0 holds the roots of the two full leaf tiles");
    let mut rewritten = original.clone();
    rewritten[32..64].fill(9);
    raw.set_tile(1, 0, rewritten).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten interior hash");
    assert!(matches!(refused, Error::RewrittenTree { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(refused.to_string().contains("tile/1/000.p/2"), "{refused}");
    raw.set_tile(1, 0, original).await;

    let mut leaves = raw.tile(0, 1).await;
    leaves[40 * 32..41 * 32].fill(3);
    raw.set_tile(0, 1, leaves).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten full tile");
    assert!(matches!(refused, Error::RewrittenTree { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(refused.to_string().contains("tile/0/001"), "{refused}");
    nothing_signed_after(&checkpointer).await;
}

/// A DBA rewrites a chain entry after the last signed checkpoint, once without fixing its hash
/// and once with its hash recomputed: the chain's own hash linkage fails at that entry or the
/// next, and nothing is signed.
async fn rewritten_unsigned_chain_entry_is_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let checkpointer = signed_ten_stored_to(&store, &signer().to_key_string(), 15).await;
    let entry = store.read_page(&tenant("acme"), 11, 1).await.expect("read").remove(0);
    assert_eq!(entry.seq, 12);
    let forged_payload = r#"{"index":999}"#;
    raw.rewrite_entry(12, forged_payload, None).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten entry");
    assert!(matches!(refused, Error::ChainBroken { seq: 12, .. }), "{refused:?}");

    // With the entry's hash recomputed, the next entry no longer links to it.
    let mut forged = entry.clone();
    forged.payload = forged_payload.to_owned();
    let forged_hash = forged.compute_hash().expect("hash");
    raw.rewrite_entry(12, forged_payload, Some(forged_hash)).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("broken link");
    assert!(matches!(refused, Error::ChainBroken { seq: 13, .. }), "{refused:?}");
    nothing_signed_after(&checkpointer).await;
}

#[tokio::test]
async fn rewritten_unsigned_leaf_hash_is_refused_postgres() {
    let (store, raw) = postgres().await;
    rewritten_unsigned_leaf_hash_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_unsigned_leaf_hash_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    rewritten_unsigned_leaf_hash_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_unsigned_interior_hash_is_refused_postgres() {
    let (store, raw) = postgres().await;
    rewritten_unsigned_interior_hash_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_unsigned_interior_hash_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    rewritten_unsigned_interior_hash_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_unsigned_chain_entry_is_refused_postgres() {
    let (store, raw) = postgres().await;
    rewritten_unsigned_chain_entry_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_unsigned_chain_entry_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    rewritten_unsigned_chain_entry_is_refused(store, raw).await;
}

/// At an exact multiple of 256: signed at 256 (its right edge is the level-1 tile alone), stored
/// to 300. The level-1 hash of the signed full tile, a signed leaf on the path of the last signed
/// leaf, and a leaf of the new partial tile are each rewritten in turn: each is refused and
/// nothing is signed.
async fn rewritten_tiles_at_a_full_tile_boundary_are_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let checkpointer = Checkpointer::new(store.clone(), signer());
    append_n(&store, "acme", 0, 256).await;
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), 256);
    append_n(&store, "acme", 256, 44).await;
    assert_eq!(tlog::sync_tree(&store, &tenant("acme")).await.expect("extend").size, 300);
    let signed_before = checkpointer.latest(&tenant("acme")).await.expect("latest");
    for (level, index, hash) in [(1, 0, 0), (0, 0, 200), (0, 1, 20)] {
        let original = raw.tile(level, index).await;
        let mut rewritten = original.clone();
        rewritten[hash * 32..(hash + 1) * 32].fill(5);
        raw.set_tile(level, index, rewritten).await;
        let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten tile");
        assert!(
            matches!(
                refused,
                Error::Forked { checkpoint_size: 256, .. }
                    | Error::RewrittenTree { checkpoint_size: 256, .. }
            ),
            "tile {level}/{index} hash {hash}: {refused:?}"
        );
        assert_eq!(
            checkpointer.latest(&tenant("acme")).await.expect("latest"),
            signed_before,
            "nothing signed"
        );
        raw.set_tile(level, index, original).await;
    }
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("restored").size(), 300);
}

#[tokio::test]
async fn rewritten_tiles_at_a_full_tile_boundary_are_refused_postgres() {
    let (store, raw) = postgres().await;
    rewritten_tiles_at_a_full_tile_boundary_are_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_tiles_at_a_full_tile_boundary_are_refused_sqlite() {
    let (store, raw) = sqlite().await;
    rewritten_tiles_at_a_full_tile_boundary_are_refused(store, raw).await;
}

/// Another tenant's rewritten tree neither blocks nor leaks into this tenant's checkpoint, and is
/// refused for that tenant (`tick` reports both).
#[tokio::test]
async fn another_tenants_rewritten_tree_is_refused_for_it_alone_sqlite() {
    let (store, raw) = sqlite().await;
    let checkpointer = Checkpointer::new(store.clone(), signer());
    for name in ["acme", "globex"] {
        append_n(&store, name, 0, 10).await;
        checkpointer.checkpoint_now(&tenant(name)).await.expect("checkpoint");
        append_n(&store, name, 10, 5).await;
        tlog::sync_tree(&store, &tenant(name)).await.expect("extend");
    }
    let RawDb::Sqlite(database) = &raw else { unreachable!("a SQLite database") };
    sqlx::query("UPDATE audit_tree_tiles SET hashes = zeroblob(480) WHERE tenant = 'globex' AND level = 0 AND idx = 0")
        .execute(database.pool())
        .await
        .expect("rewrite globex's tile");
    let refused = checkpointer.checkpoint_now(&tenant("globex")).await.expect_err("globex rewritten");
    assert!(matches!(refused, Error::Forked { .. } | Error::RewrittenTree { .. }), "{refused:?}");
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("acme is untouched").size(), 15);
    let acme_tile = raw.tile(0, 0).await;
    assert_eq!(acme_tile.len(), 15 * 32);
    assert!(acme_tile.iter().any(|byte| *byte != 0), "acme's tile is its own");
}

/// The untampered case of the above on every backend, the memory store included (whose rows no
/// administrator can reach): the re-derivation agrees with the stored tree across tile and level
/// boundaries, from a signed head in the middle of a tile, and (memory) after a catch-up larger
/// than one extension batch (`tlog::EXTEND_BATCH`).
async fn rederived_tree_matches_the_stored_one<S: MerkleStore + Clone>(store: S, last: u64) {
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let mut appended = 0;
    for target in [1u64, 10, 256, 257, 600, last] {
        append_n(&store, "acme", appended, target - appended).await;
        appended = target;
        assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), target);
    }
}

#[tokio::test]
async fn rederived_tree_matches_the_stored_one_memory() {
    // A catch-up of more than one batch (level-2 tile boundaries are covered by the
    // `TileBuilder::root` doc test against a memory tree of 70,000 leaves).
    rederived_tree_matches_the_stored_one(MemoryAuditStore::new(), 600 + u64::from(tlog::EXTEND_BATCH) + 50)
        .await;
}

#[tokio::test]
async fn rederived_tree_matches_the_stored_one_sqlite() {
    let (store, _raw) = sqlite().await;
    rederived_tree_matches_the_stored_one(store, 1_000).await;
}

// ---------------------------------------------------------------------------------------------
// The checkpointer's single pass: its own extension read the new entries, and is checked as the
// re-derivation of the unsigned part (no second read). Each attack here happens before or during
// that extension, so that the single-pass check (not the re-reading fallback) is what refuses.
// ---------------------------------------------------------------------------------------------

/// A store that counts `read_page` calls and runs one piece of "database administrator" work
/// right after the next reported tree extension returns (before the checkpointer reads the
/// stored tiles and signs).
#[derive(Clone)]
struct Hooked<S> {
    inner: S,
    page_reads: Arc<AtomicU64>,
    after_extension: Arc<std::sync::Mutex<Option<BoxFuture<'static, ()>>>>,
}

impl<S> Hooked<S> {
    fn new(inner: S) -> Self {
        Self { inner, page_reads: Arc::default(), after_extension: Arc::default() }
    }

    fn after_extension(&self, work: BoxFuture<'static, ()>) {
        *self.after_extension.lock().expect("lock") = Some(work);
    }
}

impl<S: MerkleStore> AuditStore for Hooked<S> {
    async fn append(&self, entry: NewEntry) -> sos_audit::Result<sos_audit::AuditEntry> {
        self.inner.append(entry).await
    }

    async fn head(&self, tenant: &TenantId) -> sos_audit::Result<Option<sos_audit::ChainHead>> {
        self.inner.head(tenant).await
    }

    async fn read_page(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: u32,
    ) -> sos_audit::Result<Vec<sos_audit::AuditEntry>> {
        self.page_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.read_page(tenant, after_seq, limit).await
    }

    async fn tenants(&self) -> sos_audit::Result<Vec<TenantId>> {
        self.inner.tenants().await
    }
}

impl<S: MerkleStore> MerkleStore for Hooked<S> {
    async fn extend_tree(&self, tenant: &TenantId, max_entries: u32) -> sos_audit::Result<tlog::TreeState> {
        self.inner.extend_tree(tenant, max_entries).await
    }

    async fn extend_tree_reported(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> sos_audit::Result<(tlog::TreeState, Option<tlog::TreeExtension>)> {
        let reported = self.inner.extend_tree_reported(tenant, max_entries).await;
        let work = self.after_extension.lock().expect("lock").take();
        if let Some(work) = work {
            work.await;
        }
        reported
    }

    async fn tree_state(&self, tenant: &TenantId) -> sos_audit::Result<tlog::TreeState> {
        self.inner.tree_state(tenant).await
    }

    async fn read_tiles(
        &self,
        tenant: &TenantId,
        keys: &[tlog::TileKey],
    ) -> sos_audit::Result<tlog::StoredTiles> {
        self.inner.read_tiles(tenant, keys).await
    }

    async fn read_tree(
        &self,
        tenant: &TenantId,
        keys: &[tlog::TileKey],
    ) -> sos_audit::Result<(tlog::TreeState, tlog::StoredTiles)> {
        self.inner.read_tree(tenant, keys).await
    }

    async fn latest_checkpoint(&self, tenant: &TenantId) -> sos_audit::Result<Option<SignedCheckpoint>> {
        self.inner.latest_checkpoint(tenant).await
    }

    async fn checkpoint_at(
        &self,
        tenant: &TenantId,
        size: u64,
    ) -> sos_audit::Result<Option<SignedCheckpoint>> {
        self.inner.checkpoint_at(tenant, size).await
    }

    async fn record_checkpoint(&self, checkpoint: &SignedCheckpoint) -> sos_audit::Result<SignedCheckpoint> {
        self.inner.record_checkpoint(checkpoint).await
    }
}

impl RawDb {
    /// Sets the `prev_hash` and `hash` columns of entry `seq`.
    async fn relink_entry(&self, seq: i64, prev_hash: Sha256Digest, hash: Sha256Digest) {
        let update = "UPDATE audit_entries SET prev_hash = $1, hash = $2 WHERE tenant = 'acme' AND seq = $3";
        let rows = match self {
            Self::Postgres(database) => {
                sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
                    .execute(database.pool())
                    .await
                    .expect("disable the append-only triggers");
                sqlx::query(update)
                    .bind(prev_hash.as_bytes().as_slice())
                    .bind(hash.as_bytes().as_slice())
                    .bind(seq)
                    .execute(database.pool())
                    .await
                    .expect("relink entry")
                    .rows_affected()
            }
            Self::Sqlite(database) => {
                sqlx::query("DROP TRIGGER IF EXISTS audit_entries_no_update")
                    .execute(database.pool())
                    .await
                    .expect("drop the append-only trigger");
                sqlx::query(&update.replace('$', "?"))
                    .bind(prev_hash.as_bytes().as_slice())
                    .bind(hash.as_bytes().as_slice())
                    .bind(seq)
                    .execute(database.pool())
                    .await
                    .expect("relink entry")
                    .rows_affected()
            }
        };
        assert_eq!(rows, 1, "the entry was relinked");
    }

    /// Deletes entry `seq`.
    async fn delete_entry(&self, seq: i64) {
        let delete = "DELETE FROM audit_entries WHERE tenant = 'acme' AND seq = $1";
        let rows = match self {
            Self::Postgres(database) => {
                sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
                    .execute(database.pool())
                    .await
                    .expect("disable the append-only triggers");
                sqlx::query(delete).bind(seq).execute(database.pool()).await.expect("delete").rows_affected()
            }
            Self::Sqlite(database) => {
                sqlx::query("DROP TRIGGER IF EXISTS audit_entries_no_delete")
                    .execute(database.pool())
                    .await
                    .expect("drop the append-only trigger");
                sqlx::query(&delete.replace('$', "?"))
                    .bind(seq)
                    .execute(database.pool())
                    .await
                    .expect("delete")
                    .rows_affected()
            }
        };
        assert_eq!(rows, 1, "the entry was deleted");
    }

    /// Plants a stored tree head of size 0 whose last entry hash is `hash` (no extension ran yet).
    async fn plant_empty_tree_head(&self, hash: Sha256Digest) {
        let insert = "INSERT INTO audit_tree_heads (tenant, size, last_entry_hash) VALUES ('acme', 0, $1)";
        let rows = match self {
            Self::Postgres(database) => sqlx::query(insert)
                .bind(hash.as_bytes().as_slice())
                .execute(database.pool())
                .await
                .expect("plant tree head")
                .rows_affected(),
            Self::Sqlite(database) => sqlx::query(&insert.replace('$', "?"))
                .bind(hash.as_bytes().as_slice())
                .execute(database.pool())
                .await
                .expect("plant tree head")
                .rows_affected(),
        };
        assert_eq!(rows, 1, "the tree head was planted");
    }

    /// Points the stored tree head's last entry hash at `hash`.
    async fn set_tree_head_hash(&self, hash: Sha256Digest) {
        let update = "UPDATE audit_tree_heads SET last_entry_hash = $1 WHERE tenant = 'acme'";
        let rows = match self {
            Self::Postgres(database) => sqlx::query(update)
                .bind(hash.as_bytes().as_slice())
                .execute(database.pool())
                .await
                .expect("rewrite tree head")
                .rows_affected(),
            Self::Sqlite(database) => sqlx::query(&update.replace('$', "?"))
                .bind(hash.as_bytes().as_slice())
                .execute(database.pool())
                .await
                .expect("rewrite tree head")
                .rows_affected(),
        };
        assert_eq!(rows, 1, "the tree head was rewritten");
    }
}

/// Signs a checkpoint of 10 entries and appends up to `size` without extending the stored tree:
/// the checkpointer's next run extends it itself, in one pass.
async fn signed_ten_appended_to<S: MerkleStore + Clone>(store: &S, size: u64) -> Checkpointer<S> {
    let checkpointer = Checkpointer::new(store.clone(), signer());
    append_n(store, "acme", 0, 10).await;
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), 10);
    append_n(store, "acme", 10, size - 10).await;
    assert_eq!(store.tree_state(&tenant("acme")).await.expect("state").size, 10, "not extended yet");
    checkpointer
}

/// The single pass reads the new entries once: a checkpoint after 256 appends makes no
/// `read_page` call of its own (its extension read them in its transaction). When the stored
/// tree was extended before the run (by `sync_tree` or an earlier run that failed), the run did
/// not read those entries, and it reads them again to re-derive them.
async fn checkpoint_reads_the_new_entries_once<S: MerkleStore + Clone>(store: S) {
    let hooked = Hooked::new(store.clone());
    let checkpointer = signed_ten_appended_to(&hooked, 266).await;
    hooked.page_reads.store(0, Ordering::SeqCst);
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), 266);
    assert_eq!(hooked.page_reads.load(Ordering::SeqCst), 0, "no second read of the new entries");

    append_n(&store, "acme", 266, 30).await;
    assert_eq!(tlog::sync_tree(&store, &tenant("acme")).await.expect("extend").size, 296);
    hooked.page_reads.store(0, Ordering::SeqCst);
    assert_eq!(checkpointer.checkpoint_now(&tenant("acme")).await.expect("checkpoint").size(), 296);
    assert!(hooked.page_reads.load(Ordering::SeqCst) > 0, "entries extended earlier are read again");
}

#[tokio::test]
async fn checkpoint_reads_the_new_entries_once_memory() {
    checkpoint_reads_the_new_entries_once(MemoryAuditStore::new()).await;
}

#[tokio::test]
async fn checkpoint_reads_the_new_entries_once_postgres() {
    let (store, _raw) = postgres().await;
    checkpoint_reads_the_new_entries_once(store).await;
}

#[tokio::test]
async fn checkpoint_reads_the_new_entries_once_sqlite() {
    let (store, _raw) = sqlite().await;
    checkpoint_reads_the_new_entries_once(store).await;
}

/// A DBA rewrites a leaf hash of the signed tree's right edge (tile 0/0, leaf 5 of 10) before
/// the checkpointer's extension resumes from it: the extension builds on hashes that do not give
/// the signed root, and nothing is signed.
async fn rewritten_signed_edge_before_the_extension_is_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let checkpointer = signed_ten_appended_to(&store, 15).await;
    let mut tile = raw.tile(0, 0).await;
    tile[5 * 32..6 * 32].fill(4);
    raw.set_tile(0, 0, tile).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten signed edge");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{refused:?}");
    nothing_signed_after(&checkpointer).await;
}

#[tokio::test]
async fn rewritten_signed_edge_before_the_extension_is_refused_postgres() {
    let (store, raw) = postgres().await;
    rewritten_signed_edge_before_the_extension_is_refused(store, raw).await;
}

#[tokio::test]
async fn rewritten_signed_edge_before_the_extension_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    rewritten_signed_edge_before_the_extension_is_refused(store, raw).await;
}

/// A DBA forges the whole unsigned tail (entries 11 to 15, each hash recomputed) so that it
/// chains on from a hash that is not the signed entry 10's, and points the stored tree head at
/// that hash: the extension's own chain check passes, but the tail does not chain on from the
/// signed chain. With entry 10's stored hash rewritten to the forged hash too, that hash is not
/// the signed tree's last leaf. Nothing is signed either way, also by a second run (whose
/// extension has nothing left to add, so it re-reads).
async fn forged_tail_on_a_forged_tree_head_is_refused<S: MerkleStore + Clone>(
    store: S,
    raw: RawDb,
    forge_entry_ten: bool,
) {
    let checkpointer = signed_ten_appended_to(&store, 15).await;
    let acme = tenant("acme");
    let forged_head = Sha256Digest::of(b"not entry 10");
    let mut prev_hash = forged_head;
    for seq in 11..=15u64 {
        let mut entry = store.read_page(&acme, seq - 1, 1).await.expect("read").remove(0);
        entry.prev_hash = prev_hash;
        entry.hash = entry.compute_hash().expect("hash");
        raw.relink_entry(seq as i64, entry.prev_hash, entry.hash).await;
        prev_hash = entry.hash;
    }
    raw.set_tree_head_hash(forged_head).await;
    if forge_entry_ten {
        let ten = store.read_page(&acme, 9, 1).await.expect("read").remove(0);
        raw.relink_entry(10, ten.prev_hash, forged_head).await;
    }
    for run in ["the run that extends", "a second run"] {
        let refused = checkpointer.checkpoint_now(&acme).await.expect_err("forged tail");
        if forge_entry_ten {
            assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{run}: {refused:?}");
        } else {
            assert!(matches!(refused, Error::ChainBroken { seq: 11, .. }), "{run}: {refused:?}");
        }
        nothing_signed_after(&checkpointer).await;
    }
}

#[tokio::test]
async fn forged_tail_on_a_forged_tree_head_is_refused_postgres() {
    let (store, raw) = postgres().await;
    forged_tail_on_a_forged_tree_head_is_refused(store, raw, false).await;
}

#[tokio::test]
async fn forged_tail_on_a_forged_tree_head_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    forged_tail_on_a_forged_tree_head_is_refused(store, raw, false).await;
}

#[tokio::test]
async fn forged_tail_and_last_signed_entry_on_a_forged_tree_head_are_refused_postgres() {
    let (store, raw) = postgres().await;
    forged_tail_on_a_forged_tree_head_is_refused(store, raw, true).await;
}

#[tokio::test]
async fn forged_tail_and_last_signed_entry_on_a_forged_tree_head_are_refused_sqlite() {
    let (store, raw) = sqlite().await;
    forged_tail_on_a_forged_tree_head_is_refused(store, raw, true).await;
}

/// A DBA relinks a whole unsigned chain (entries 1 to 5, each hash recomputed) from a non-zero
/// "genesis" hash and plants a stored tree head of size 0 pointing at it, before the first
/// checkpoint: the extension's own chain check passes, but entry 1 must link to the zero hash.
/// Nothing is signed.
async fn forged_genesis_link_is_refused<S: MerkleStore + Clone>(store: S, raw: RawDb) {
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 5).await;
    let genesis = Sha256Digest::of(b"not the zero hash");
    let mut prev_hash = genesis;
    for seq in 1..=5u64 {
        let mut entry = store.read_page(&acme, seq - 1, 1).await.expect("read").remove(0);
        entry.prev_hash = prev_hash;
        entry.hash = entry.compute_hash().expect("hash");
        raw.relink_entry(seq as i64, entry.prev_hash, entry.hash).await;
        prev_hash = entry.hash;
    }
    raw.plant_empty_tree_head(genesis).await;
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("forged genesis link");
    assert!(matches!(refused, Error::ChainBroken { seq: 1, .. }), "{refused:?}");
    assert_eq!(checkpointer.latest(&acme).await.expect("latest"), None, "nothing signed");
}

#[tokio::test]
async fn forged_genesis_link_is_refused_postgres() {
    let (store, raw) = postgres().await;
    forged_genesis_link_is_refused(store, raw).await;
}

#[tokio::test]
async fn forged_genesis_link_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    forged_genesis_link_is_refused(store, raw).await;
}

/// A DBA deletes the last signed entry (10) before the checkpointer's extension reads the
/// entries after it: the new entries cannot be shown to chain on from the signed chain.
async fn deleted_last_signed_entry_before_the_extension_is_refused<S: MerkleStore + Clone>(
    store: S,
    raw: RawDb,
) {
    let checkpointer = signed_ten_appended_to(&store, 15).await;
    raw.delete_entry(10).await;
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("deleted entry");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(refused.to_string().contains("entry 10 is missing"), "{refused}");
    nothing_signed_after(&checkpointer).await;
}

#[tokio::test]
async fn deleted_last_signed_entry_before_the_extension_is_refused_postgres() {
    let (store, raw) = postgres().await;
    deleted_last_signed_entry_before_the_extension_is_refused(store, raw).await;
}

#[tokio::test]
async fn deleted_last_signed_entry_before_the_extension_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    deleted_last_signed_entry_before_the_extension_is_refused(store, raw).await;
}

/// A DBA rewrites one hash of a tile the checkpointer's extension just wrote, after it committed
/// and before the checkpointer reads the stored tiles to sign: a leaf of the new partial tile
/// (size 15), and a leaf of a new full tile that no root reads (size 600). The tiles the
/// extension reported writing are compared with the stored ones; nothing is signed.
async fn tile_rewritten_after_the_extension_is_refused<S: MerkleStore + Clone>(
    store: S,
    raw: RawDb,
    (size, index, leaf, path): (u64, i64, usize, &'static str),
) {
    let hooked = Hooked::new(store);
    let checkpointer = signed_ten_appended_to(&hooked, size).await;
    let raw = Arc::new(raw);
    let dba = Arc::clone(&raw);
    hooked.after_extension(Box::pin(async move {
        let mut tile = dba.tile(0, index).await;
        tile[leaf * 32..(leaf + 1) * 32].fill(6);
        dba.set_tile(0, index, tile).await;
    }));
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten tile");
    assert!(hooked.after_extension.lock().expect("lock").is_none(), "the DBA ran after the extension");
    assert!(matches!(refused, Error::RewrittenTree { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(refused.to_string().contains(path), "{refused}");
    nothing_signed_after(&checkpointer).await;
}

#[tokio::test]
async fn partial_tile_rewritten_after_the_extension_is_refused_postgres() {
    let (store, raw) = postgres().await;
    tile_rewritten_after_the_extension_is_refused(store, raw, (15, 0, 12, "tile/0/000.p/15")).await;
}

#[tokio::test]
async fn partial_tile_rewritten_after_the_extension_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    tile_rewritten_after_the_extension_is_refused(store, raw, (15, 0, 12, "tile/0/000.p/15")).await;
}

#[tokio::test]
async fn full_tile_rewritten_after_the_extension_is_refused_postgres() {
    let (store, raw) = postgres().await;
    tile_rewritten_after_the_extension_is_refused(store, raw, (600, 1, 40, "tile/0/001")).await;
}

#[tokio::test]
async fn full_tile_rewritten_after_the_extension_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    tile_rewritten_after_the_extension_is_refused(store, raw, (600, 1, 40, "tile/0/001")).await;
}

/// A fresh checkpointer process learns what its anchors hold. Its database administrator deletes
/// the checkpoint rows and restarts it: it re-signs the same head (the same note, a retry at the
/// anchor). Then the administrator also cuts the chain's tail (entries 6 to 10) and the stored
/// tree: a fresh checkpointer that read only the database would sign the cut chain of 5 entries
/// (shown at the end, without the anchor); one with its anchor refuses it as a cut-off tail.
#[tokio::test]
async fn fresh_checkpointer_learns_the_anchored_checkpoint_sqlite() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let sink: Arc<dyn AnchorSink> = Arc::new(FsAnchorSink::new(dir.path()));
    let key = signer().to_key_string();
    let fresh = || {
        Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
            .with_anchor(Arc::clone(&sink))
    };
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 10).await;
    let signed = fresh().checkpoint_now(&acme).await.expect("checkpoint 10");
    assert_eq!(signed.size(), 10);
    let dba = |sql: &'static str| {
        let pool = database.pool().clone();
        async move { sqlx::query(sql).execute(&pool).await.expect(sql) }
    };
    dba("DROP TRIGGER audit_checkpoints_no_delete").await;
    dba("DELETE FROM audit_checkpoints").await;
    let again = fresh().checkpoint_now(&acme).await.expect("the anchored head, signed again");
    assert_eq!(again.note, signed.note, "the same note: the anchor holds it already");

    dba("DELETE FROM audit_checkpoints").await;
    dba("DROP TRIGGER audit_entries_no_delete").await;
    dba("DELETE FROM audit_entries WHERE seq > 5").await;
    dba("DELETE FROM audit_tree_tiles").await;
    dba("DELETE FROM audit_tree_heads").await;
    let refused = fresh().checkpoint_now(&acme).await.expect_err("cut-off tail");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{refused:?}");
    assert!(!FsAnchorSink::new(dir.path()).path_of(&acme, 5).exists(), "nothing was anchored");
    assert_eq!(store.latest_checkpoint(&acme).await.expect("latest"), None, "nothing was recorded");

    // Without its anchor, the same fresh process would have signed the cut chain.
    let blind = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"));
    assert_eq!(blind.checkpoint_now(&acme).await.expect("signs what the database shows").size(), 5);
    // And the anchored process still refuses after that (the anchor is larger than the tree).
    let refused = fresh().checkpoint_now(&acme).await.expect_err("cut-off tail");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 10, .. }), "{refused:?}");
}

/// Finding (fixed): a checkpointer process that had signed for a tenant stopped reading its
/// anchors, and relied on its memory and the checkpoint rows. A second process with the same key
/// anchors a larger checkpoint (20); the database administrator deletes its row, rewrites the chain
/// after what the first process remembers (10) and lets one more entry in: the first process
/// signed and anchored size 21, a fork of the anchored 20 (a write-once sink only refuses another
/// note of the same size). It now checks every anchor's latest checkpoint on every run.
#[tokio::test]
async fn fork_of_a_checkpoint_another_process_anchored_is_refused_postgres() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let store = PgAuditChain::new(database.pool().clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let key = signer().to_key_string();
    let process = || {
        Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
            .with_anchor(Arc::new(FsAnchorSink::new(dir.path())))
    };
    let (first, second) = (process(), process());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 10).await;
    assert_eq!(first.checkpoint_now(&acme).await.expect("checkpoint 10").size(), 10);
    append_n(&store, "acme", 10, 10).await;
    assert_eq!(second.checkpoint_now(&acme).await.expect("checkpoint 20").size(), 20);

    for sql in [
        "ALTER TABLE audit_checkpoints DISABLE TRIGGER USER",
        "DELETE FROM audit_checkpoints WHERE size > 10",
        "ALTER TABLE audit_entries DISABLE TRIGGER USER",
        "DELETE FROM audit_entries WHERE seq > 10",
        "UPDATE audit_heads SET seq = 10, hash = (SELECT hash FROM audit_entries WHERE tenant = 'acme' AND seq = 10)",
        "DELETE FROM audit_tree_tiles",
        "DELETE FROM audit_tree_heads",
    ] {
        sqlx::query(sql).execute(database.pool()).await.expect(sql);
    }
    // Eleven other entries after the signed 10: a chain that forks from the anchored 20.
    append_n(&store, "acme", 100, 11).await;
    let refused = first.checkpoint_now(&acme).await.expect_err("fork of the anchored checkpoint");
    assert!(matches!(refused, Error::Forked { checkpoint_size: 20, .. }), "{refused:?}");
    assert!(!FsAnchorSink::new(dir.path()).path_of(&acme, 21).exists(), "nothing was anchored");
    assert_eq!(store.latest_checkpoint(&acme).await.expect("latest").map(|latest| latest.size()), Some(10));
}

/// A sink that, as a database administrator racing the checkpointer would, records a forged row
/// (the same body, signed by another key) for the size being anchored, just before the
/// checkpointer records its own.
#[derive(Debug)]
struct ForgeRowOnWrite {
    store: PgAuditChain,
}

impl AnchorSink for ForgeRowOnWrite {
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, sos_audit::Result<AnchorReceipt>> {
        Box::pin(async move {
            let forged = signed(anchor.tenant.as_str(), anchor.size, anchor.root, &signer());
            self.store.record_checkpoint(&forged).await?;
            Ok(AnchorReceipt { location: "forged".to_owned(), already_present: false })
        })
    }

    fn latest<'a>(&'a self, _tenant: &'a TenantId) -> BoxFuture<'a, sos_audit::Result<Option<Anchor>>> {
        Box::pin(async { Ok(None) })
    }
}

/// Finding (fixed): when a row of the same size was recorded between the checkpointer's read of
/// the latest checkpoint and its own record, `checkpoint_now` handed that row out as the
/// checkpoint after comparing its root alone, even when its signature was forged. The row's
/// signature is now verified first.
#[tokio::test]
async fn forged_row_of_the_same_size_recorded_meanwhile_is_not_handed_out_postgres() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let store = PgAuditChain::new(database.pool().clone());
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 7).await;
    let checkpointer = Checkpointer::new(store.clone(), signer())
        .with_anchor(Arc::new(ForgeRowOnWrite { store: store.clone() }));
    let outcome = checkpointer.checkpoint_now(&acme).await;
    let origin = checkpointer.origin(&acme);
    match outcome {
        Err(Error::Note(_)) => {}
        Ok(handed_out) => {
            let opened = Checkpoint::open(handed_out.note.as_bytes(), checkpointer.verifier(), &origin);
            panic!("a checkpoint was handed out whose signature is {opened:?}");
        }
        Err(other) => panic!("{other:?}"),
    }
}

/// An anchor sink that, the first time it is asked for its latest anchor, lets a concurrent
/// checkpointer process (same key, same anchor directory) append five entries and checkpoint them
/// first: the interleaving where the other process anchors while this one is checkpointing.
#[derive(Debug)]
struct RacedFsSink {
    inner: FsAnchorSink,
    store: PgAuditChain,
    key: String,
    raced: std::sync::atomic::AtomicBool,
}

impl AnchorSink for RacedFsSink {
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, sos_audit::Result<AnchorReceipt>> {
        self.inner.write(anchor)
    }

    fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, sos_audit::Result<Option<Anchor>>> {
        Box::pin(async move {
            if !self.raced.swap(true, Ordering::SeqCst) {
                append_n(&self.store, tenant.as_str(), 1_000, 5).await;
                let other = Checkpointer::new(
                    self.store.clone(),
                    NoteSigner::from_key_string(&self.key).expect("key"),
                )
                .with_anchor(Arc::new(self.inner.clone()));
                other.checkpoint_now(tenant).await.expect("the other process checkpoints");
            }
            self.inner.latest(tenant).await
        })
    }
}

/// Finding (fixed): a fresh checkpointer read its anchors after extending the tree, so a concurrent
/// process that extended the tree further and anchored in between looked like a cut-off tail
/// (`Error::Forked`, "needs a person") although nothing was wrong. Anchors are now read before
/// the tree is extended, like the latest recorded checkpoint.
#[tokio::test]
async fn anchor_written_by_a_concurrent_checkpointer_is_not_a_cut_off_tail_postgres() {
    let database = PgTestDatabase::with_pool_size(&[&sos_audit::postgres_migrator()], 8).await;
    let store = PgAuditChain::new(database.pool().clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let key = signer().to_key_string();
    let acme = tenant("acme");
    append_n(&store, "acme", 0, 10).await;
    Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
        .with_anchor(Arc::new(FsAnchorSink::new(dir.path())))
        .checkpoint_now(&acme)
        .await
        .expect("checkpoint 10");
    append_n(&store, "acme", 10, 5).await;
    let raced = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
        .with_anchor(Arc::new(RacedFsSink {
            inner: FsAnchorSink::new(dir.path()),
            store: store.clone(),
            key: key.clone(),
            raced: Default::default(),
        }));
    let signed = raced.checkpoint_now(&acme).await.expect("no cut-off tail: the tree only grew");
    assert_eq!(signed.size(), 20);
}

/// Finding (fixed): the periodic checkpointer (`tick`, `run`) judged a tenant due from the size of
/// the latest checkpoint row alone, unverified. A chain whose tail was cut off below the latest
/// checkpoint, or a forged row larger than the log, made the tenant never due: no checkpoint was
/// attempted, so the refusal that needs a person was never reported, and the entries appended
/// after it stayed unsigned for good. Such a tenant is now due, and `tick` reports the refusal.
#[tokio::test]
async fn checkpoint_row_larger_than_the_chain_does_not_silence_tick_sqlite() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let checkpointer = Checkpointer::new(store.clone(), signer());
    append_n(&store, "acme", 0, 5).await;
    // A forged row (another key) far beyond the chain.
    store
        .record_checkpoint(&signed("acme", 1_000, Sha256Digest::of(b"forged"), &signer()))
        .await
        .expect("plant");
    let done = checkpointer.tick().await.expect("tick");
    assert!(
        matches!(done.as_slice(), [(tenant, Err(Error::Note(_)))] if tenant.as_str() == "acme"),
        "the forged row is reported: {done:?}"
    );

    // A genuine checkpoint of 8 entries, then the chain's tail (and the tree) is cut back to 6.
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let key = signer().to_key_string();
    append_n(&store, "acme", 0, 8).await;
    Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"))
        .checkpoint_now(&tenant("acme"))
        .await
        .expect("checkpoint 8");
    for sql in [
        "DROP TRIGGER IF EXISTS audit_entries_no_delete",
        "DELETE FROM audit_entries WHERE seq > 6",
        "UPDATE audit_heads SET seq = 6, hash = (SELECT hash FROM audit_entries WHERE tenant = 'acme' AND seq = 6)",
        "DELETE FROM audit_tree_tiles",
        "DELETE FROM audit_tree_heads",
    ] {
        sqlx::query(sql).execute(database.pool()).await.expect(sql);
    }
    let restarted = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"));
    let done = restarted.tick().await.expect("tick");
    assert!(
        matches!(done.as_slice(), [(_, Err(Error::Forked { checkpoint_size: 8, .. }))]),
        "the cut-off tail is reported: {done:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Proofs and notes
// ---------------------------------------------------------------------------------------------

async fn proven() -> (EntryProof, NoteSigner) {
    let store = MemoryAuditStore::new();
    append_n(&store, "acme", 0, 7).await;
    let key = signer();
    let checkpointer =
        Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key.to_key_string()).expect("key"));
    let proof = checkpointer.prove(&tenant("acme"), 5).await.expect("prove");
    proof.verify(&key.verifier()).expect("genuine proof verifies");
    (proof, key)
}

/// Proofs altered to name another index, another size, index == size, size 0 or huge sizes are
/// refused with typed errors and never panic.
#[tokio::test]
async fn proofs_for_the_wrong_index_or_size_are_refused() {
    let (proof, key) = proven().await;
    let verifier = key.verifier();
    type Alteration = Box<dyn Fn(&mut EntryProof)>;
    let shapes: Vec<(&str, Alteration)> = vec![
        ("seq 0", Box::new(|p| p.seq = 0)),
        ("other seq", Box::new(|p| p.seq = 4)),
        ("other index", Box::new(|p| p.proof.index = 3)),
        ("index == size", Box::new(|p| p.proof.index = p.proof.size)),
        (
            "seq past size",
            Box::new(|p| {
                p.seq = p.proof.size + 1;
                p.proof.index = p.proof.size;
            }),
        ),
        ("size 0", Box::new(|p| p.proof.size = 0)),
        ("size u64::MAX", Box::new(|p| p.proof.size = u64::MAX)),
        (
            "index and size u64::MAX",
            Box::new(|p| {
                p.seq = u64::MAX;
                p.proof.index = u64::MAX - 1;
                p.proof.size = u64::MAX;
            }),
        ),
        ("extra hash", Box::new(|p| p.proof.hashes.push(Sha256Digest::ZERO))),
        (
            "missing hash",
            Box::new(|p| {
                p.proof.hashes.pop();
            }),
        ),
        ("other entry hash", Box::new(|p| p.entry_hash = Sha256Digest::of(b"forged"))),
        ("other tenant", Box::new(|p| p.tenant = tenant("globex"))),
    ];
    for (name, alter) in shapes {
        let mut forged = proof.clone();
        alter(&mut forged);
        assert!(forged.verify(&verifier).is_err(), "{name} must not verify");
        let json = serde_json::to_vec(&forged).expect("json");
        if let Ok(parsed) = EntryProof::from_json(&json) {
            assert!(parsed.verify(&verifier).is_err(), "{name} must not verify after a JSON round trip");
        }
    }
    // Bare proofs at the extremes are typed errors.
    for (index, size) in [(0, 0), (u64::MAX, u64::MAX), (u64::MAX - 1, u64::MAX), (0, u64::MAX)] {
        let bare = InclusionProof { index, size, hashes: vec![Sha256Digest::ZERO; 64] };
        assert!(bare.verify(&Sha256Digest::ZERO, &Sha256Digest::ZERO).is_err(), "({index}, {size})");
    }
    for (old, new) in [(0, u64::MAX), (u64::MAX, u64::MAX - 1), (u64::MAX - 1, u64::MAX), (1, u64::MAX)] {
        let outcome = sos_audit::merkle::verify_consistency(
            old,
            new,
            &Sha256Digest::ZERO,
            &Sha256Digest::of(b"x"),
            &[Sha256Digest::ZERO; 65],
        );
        assert!(outcome.is_err(), "({old}, {new})");
    }
}

/// The checkpoint inside a proof, altered: truncated, wrong origin, extra or unknown signature
/// lines, a signature line by the right key name with another key id, a re-signed body by
/// another key of the same name.
#[tokio::test]
async fn forged_checkpoint_notes_inside_proofs_are_refused() {
    let (proof, key) = proven().await;
    let verifier = key.verifier();
    let note = proof.checkpoint.clone();
    let (body, signatures) = note.split_once("\n\n").expect("note");
    let body = format!("{body}\n");
    let impostor = signer();
    let forged_notes = vec![
        ("truncated", note[..note.len() / 2].to_owned()),
        ("no signature", body.clone() + "\n"),
        ("missing final newline", note.trim_end_matches('\n').to_owned()),
        ("impostor key, same name", Checkpoint::parse(&body).expect("body").sign(&impostor).expect("sign")),
        (
            "wrong origin",
            Checkpoint { origin: format!("{LOG}/globex"), ..Checkpoint::parse(&body).expect("body") }
                .sign(&impostor)
                .expect("sign"),
        ),
        (
            "larger size under the genuine signature",
            format!("{}\n\n{signatures}", body.replacen("\n7\n", "\n8\n", 1).trim_end_matches('\n')),
        ),
        ("garbage signature line", format!("{note}\u{2014} {LOG} AAAA\n")),
        ("NUL in body", note.replacen('\n', "\0\n", 1)),
    ];
    for (name, forged_note) in forged_notes {
        let forged = EntryProof { checkpoint: forged_note, ..proof.clone() };
        assert!(forged.verify(&verifier).is_err(), "{name} must not verify");
    }
    // Cosignatures by unknown keys are allowed and do not weaken the check.
    let cosigned = format!(
        "{note}{}",
        sos_audit::note::sign_note(&body, &NoteSigner::generate("witness.example").expect("key"))
            .expect("sign")
            .split_once("\n\n")
            .expect("note")
            .1
    );
    let cosigned_proof = EntryProof { checkpoint: cosigned, ..proof.clone() };
    cosigned_proof.verify(&verifier).expect("a cosigned checkpoint still verifies");
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

fn cli_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/sos-audit");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p sos-audit --all-features --bin sos-audit` first",
        path.display()
    );
    path
}

fn sos_audit(args: &[&str]) -> Output {
    let mut child = Command::new(cli_path())
        .args(args)
        .env_remove("DATABASE_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the sos-audit binary runs");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > Duration::from_secs(20) {
            child.kill().expect("kill");
            panic!("sos-audit {args:?} did not finish within 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// `verify-proof` and `verify --checkpoint` given garbage, an endless file, or another tenant's
/// proof: a clean failure exit, no panic, no unbounded read.
#[tokio::test]
async fn cli_verify_proof_refuses_garbage_and_endless_files() {
    let (proof, key) = proven().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let key_text = key.verifier().to_key_string();
    let write = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        path.display().to_string()
    };
    let good = write("good.json", &serde_json::to_vec(&proof).expect("json"));
    let output = sos_audit(&["verify-proof", "--proof", &good, "--verifier-key", &key_text]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    let other_tenant = write(
        "other.json",
        &serde_json::to_vec(&EntryProof { tenant: tenant("globex"), ..proof.clone() }).expect("json"),
    );
    let garbage = write("garbage.json", &[0xff, 0x00, b'{', b'"']);
    let empty = write("empty.json", b"");
    let deep = write("deep.json", "[".repeat(100_000).as_bytes());
    let note = write("note", proof.checkpoint.as_bytes());
    for path in [&other_tenant, &garbage, &empty, &deep, &"/dev/zero".to_owned()] {
        let output = sos_audit(&["verify-proof", "--proof", path, "--verifier-key", &key_text]);
        assert!(!output.status.success(), "{path} must fail");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"), "{path}");
    }
    for (checkpoint, entry) in
        [("/dev/zero", None), (garbage.as_str(), None), (note.as_str(), Some("/dev/zero"))]
    {
        let mut args =
            vec!["verify-proof", "--proof", &good, "--verifier-key", &key_text, "--checkpoint", checkpoint];
        if let Some(entry) = entry {
            args.extend(["--entry", entry]);
        }
        let output = sos_audit(&args);
        assert!(!output.status.success(), "{checkpoint} {entry:?} must fail");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
    let chain = write("chain.jsonl", b"");
    for checkpoint in ["/dev/zero", garbage.as_str()] {
        let output =
            sos_audit(&["verify", "--file", &chain, "--checkpoint", checkpoint, "--verifier-key", &key_text]);
        assert!(!output.status.success(), "{checkpoint} must fail");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
    // A verifier key that is garbage, or an endless file.
    for bad_key in ["garbage", "/dev/zero"] {
        let output = sos_audit(&["verify-proof", "--proof", &good, "--verifier-key", bad_key]);
        assert!(!output.status.success(), "{bad_key} must fail");
        assert!(!String::from_utf8_lossy(&output.stderr).contains("panicked"));
    }
}

/// Finding (fixed): a checkpoint row far larger than the stored tree (a DBA plants one; its note
/// need not even be signed, the store only parses it) made `export_tiles` (`sos-audit tiles`) lay
/// out every tile of that size in memory before reading any: 2^40 leaves exhausted memory.
#[tokio::test]
async fn export_tiles_refuses_a_checkpoint_larger_than_the_tree() {
    let store = MemoryAuditStore::new();
    append_n(&store, "acme", 0, 3).await;
    Checkpointer::new(store.clone(), signer()).checkpoint_now(&tenant("acme")).await.expect("checkpoint");
    store
        .record_checkpoint(&signed("acme", 1 << 40, Sha256Digest::of(b"huge"), &signer()))
        .await
        .expect("plant");
    let dir = tempfile::tempdir().expect("temp dir");
    let refused = tokio::time::timeout(
        Duration::from_secs(10),
        tlog::export_tiles(&store, &tenant("acme"), dir.path()),
    )
    .await
    .expect("refused promptly")
    .expect_err("larger than the tree");
    assert!(
        matches!(refused, Error::Proof(ProofError::TreeTooSmall { size: 1_099_511_627_776, available: 3 })),
        "{refused:?}"
    );
    assert!(!dir.path().join("checkpoint").exists(), "nothing published");
}

// ---------------------------------------------------------------------------------------------
// The single pass, attacked from outside the checkpointer: a crash between its extension and its
// signature, an interior tile rewritten across a tile boundary, a second checkpointer process
// running between extension and signing, and checkpoints at sizes that are not multiples of 256.
// ---------------------------------------------------------------------------------------------

/// The RFC 9162 root of acme's first `size` entries, recomputed from their fields (no stored
/// hash or tile is trusted), after checking that they link from the zero hash: what an auditor
/// computes from the chain alone.
async fn independent_root<S: AuditStore>(store: &S, size: u64) -> Sha256Digest {
    let mut tree = sos_audit::merkle::MemoryTree::new();
    let mut prev_hash = Sha256Digest::ZERO;
    let mut read = 0u64;
    while read < size {
        let page = store.read_page(&tenant("acme"), read, 500).await.expect("read");
        assert!(!page.is_empty(), "the chain holds {size} entries");
        for entry in page.into_iter().take(usize::try_from(size - read).expect("small")) {
            let hash = entry.compute_hash().expect("hash");
            assert_eq!(
                (entry.seq, entry.prev_hash, entry.hash),
                (read + 1, prev_hash, hash),
                "the chain links"
            );
            tree.push(hash.as_bytes());
            prev_hash = hash;
            read += 1;
        }
    }
    tree.root()
}

/// A checkpointer process stops (crashes, or its future is dropped by a timeout) after its
/// extension committed the tree to 40 entries and before it signed. A DBA then rewrites leaf 20
/// of that unsigned part of the stored tree, and the chain grows to 45. The next process (same
/// key, nothing remembered) extends 40 → 45 itself, but that extension did not start at the
/// signed head (10): it re-reads entries 11..=45, refuses the rewritten leaf and signs nothing.
/// With the tile restored it signs the chain's own tree.
async fn crash_between_extension_and_signing_then_rewritten_tile_is_refused<S: MerkleStore + Clone>(
    store: S,
    raw: RawDb,
) {
    let acme = tenant("acme");
    let hooked = Hooked::new(store.clone());
    let key = signer().to_key_string();
    let process = || Checkpointer::new(hooked.clone(), NoteSigner::from_key_string(&key).expect("key"));
    let crashing = process();
    append_n(&store, "acme", 0, 10).await;
    assert_eq!(crashing.checkpoint_now(&acme).await.expect("checkpoint").size(), 10);
    append_n(&store, "acme", 10, 30).await;
    hooked.after_extension(Box::pin(std::future::pending()));
    let stopped = tokio::time::timeout(Duration::from_millis(500), crashing.checkpoint_now(&acme)).await;
    assert!(stopped.is_err(), "the run stopped between its extension and its signature");
    drop(crashing);
    assert_eq!(store.tree_state(&acme).await.expect("state").size, 40, "the extension committed");

    let original = raw.tile(0, 0).await;
    let mut rewritten = original.clone();
    rewritten[20 * 32..21 * 32].fill(9);
    raw.set_tile(0, 0, rewritten).await;
    append_n(&store, "acme", 40, 5).await;
    let next = process();
    hooked.page_reads.store(0, Ordering::SeqCst);
    let refused = next.checkpoint_now(&acme).await.expect_err("rewritten unsigned leaf");
    assert!(
        matches!(
            refused,
            Error::RewrittenTree { checkpoint_size: 10, .. } | Error::Forked { checkpoint_size: 10, .. }
        ),
        "{refused:?}"
    );
    assert!(hooked.page_reads.load(Ordering::SeqCst) > 0, "the crashed run's entries were read again");
    nothing_signed_after(&next).await;

    // The refused run's extension committed leaves 41 to 45 onto the rewritten tile; the DBA puts
    // back the 40 original leaves in front of them.
    let mut restored = original;
    restored.extend_from_slice(&raw.tile(0, 0).await[40 * 32..]);
    raw.set_tile(0, 0, restored).await;
    let signed = next.checkpoint_now(&acme).await.expect("restored tile");
    assert_eq!((signed.size(), signed.root()), (45, independent_root(&store, 45).await));
}

#[tokio::test]
async fn crash_between_extension_and_signing_then_rewritten_tile_is_refused_postgres() {
    let (store, raw) = postgres().await;
    crash_between_extension_and_signing_then_rewritten_tile_is_refused(store, raw).await;
}

#[tokio::test]
async fn crash_between_extension_and_signing_then_rewritten_tile_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    crash_between_extension_and_signing_then_rewritten_tile_is_refused(store, raw).await;
}

/// Signed at 10, the single pass extends to 300 (completing tile 0/000 and writing its interior
/// hash into tile 1/000). A DBA rewrites that interior hash after the extension committed and
/// before the checkpointer reads the stored tiles: the stored tree no longer extends the signed
/// one, and nothing is signed.
async fn interior_tile_rewritten_after_the_extension_across_a_tile_boundary_is_refused<
    S: MerkleStore + Clone,
>(
    store: S,
    raw: RawDb,
) {
    let hooked = Hooked::new(store);
    let checkpointer = signed_ten_appended_to(&hooked, 300).await;
    let raw = Arc::new(raw);
    let dba = Arc::clone(&raw);
    hooked.after_extension(Box::pin(async move {
        let mut tile = dba.tile(1, 0).await;
        assert_eq!(tile.len(), 32, "one full level-0 tile below");
        tile.fill(6);
        dba.set_tile(1, 0, tile).await;
    }));
    let refused = checkpointer.checkpoint_now(&tenant("acme")).await.expect_err("rewritten interior tile");
    assert!(hooked.after_extension.lock().expect("lock").is_none(), "the DBA ran after the extension");
    // The consistency proof from the signed head reads that hash first; the single pass would
    // name the tile.
    assert!(
        matches!(
            refused,
            Error::Forked { checkpoint_size: 10, .. } | Error::RewrittenTree { checkpoint_size: 10, .. }
        ),
        "{refused:?}"
    );
    nothing_signed_after(&checkpointer).await;
}

#[tokio::test]
async fn interior_tile_rewritten_after_the_extension_across_a_tile_boundary_is_refused_postgres() {
    let (store, raw) = postgres().await;
    interior_tile_rewritten_after_the_extension_across_a_tile_boundary_is_refused(store, raw).await;
}

#[tokio::test]
async fn interior_tile_rewritten_after_the_extension_across_a_tile_boundary_is_refused_sqlite() {
    let (store, raw) = sqlite().await;
    interior_tile_rewritten_after_the_extension_across_a_tile_boundary_is_refused(store, raw).await;
}

/// A second checkpointer process with the same key runs a whole checkpoint (appending 34 entries
/// and signing 300) between the first one's extension (10 → 266) and its signature. The first
/// still signs only what its extension read, the view does not split, and every recorded
/// checkpoint is the root an auditor recomputes from the chain.
async fn second_checkpointer_between_extension_and_signing_agrees<S: MerkleStore + Clone + 'static>(
    store: S,
) {
    let acme = tenant("acme");
    let hooked = Hooked::new(store.clone());
    let key = signer().to_key_string();
    let first = Checkpointer::new(hooked.clone(), NoteSigner::from_key_string(&key).expect("key"));
    append_n(&store, "acme", 0, 10).await;
    assert_eq!(first.checkpoint_now(&acme).await.expect("checkpoint").size(), 10);
    append_n(&store, "acme", 10, 256).await;
    let second = Checkpointer::new(store.clone(), NoteSigner::from_key_string(&key).expect("key"));
    let other = store.clone();
    hooked.after_extension(Box::pin(async move {
        append_n(&other, "acme", 266, 34).await;
        let signed = second.checkpoint_now(&tenant("acme")).await.expect("the second process signs");
        assert_eq!(signed.size(), 300);
    }));
    let returned = first.checkpoint_now(&acme).await.expect("the first process signs");
    assert!(hooked.after_extension.lock().expect("lock").is_none(), "the second process ran");
    assert!(matches!(returned.size(), 266 | 300), "{returned:?}");
    assert_eq!(returned.root(), independent_root(&store, returned.size()).await);
    let latest = first.checkpoint_now(&acme).await.expect("again");
    assert_eq!((latest.size(), latest.root()), (300, independent_root(&store, 300).await));
    for size in [10, 266, 300] {
        if let Some(recorded) = store.checkpoint_at(&acme, size).await.expect("checkpoint row") {
            assert_eq!(recorded.root(), independent_root(&store, size).await, "size {size}");
        }
    }
}

#[tokio::test]
async fn second_checkpointer_between_extension_and_signing_agrees_postgres() {
    let (store, _raw) = postgres().await;
    second_checkpointer_between_extension_and_signing_agrees(store).await;
}

#[tokio::test]
async fn second_checkpointer_between_extension_and_signing_agrees_sqlite() {
    let (store, _raw) = sqlite().await;
    second_checkpointer_between_extension_and_signing_agrees(store).await;
}

/// Checkpoints at sizes that are not multiples of 256 (and at the tile boundaries around them),
/// each taken by the single pass (no second read of the new entries): every signed note opens
/// with the key and holds the root an auditor recomputes from the chain.
async fn single_pass_checkpoints_at_odd_sizes_match_an_independent_tree<S: MerkleStore + Clone>(store: S) {
    let acme = tenant("acme");
    let hooked = Hooked::new(store.clone());
    let key = signer();
    let verifier = key.verifier();
    let origin = tlog::origin_for(key.name(), &acme);
    let checkpointer = Checkpointer::new(hooked.clone(), key);
    let mut appended = 0;
    for size in [1u64, 10, 255, 256, 257, 511, 513, 700, 1_000] {
        append_n(&store, "acme", appended, size - appended).await;
        appended = size;
        hooked.page_reads.store(0, Ordering::SeqCst);
        let signed = checkpointer.checkpoint_now(&acme).await.expect("checkpoint");
        assert_eq!(hooked.page_reads.load(Ordering::SeqCst), 0, "size {size}: the single pass was taken");
        let opened = Checkpoint::open(signed.note.as_bytes(), &verifier, &origin).expect("the note opens");
        assert_eq!((opened.size, opened.root), (size, independent_root(&store, size).await), "size {size}");
    }
}

#[tokio::test]
async fn single_pass_checkpoints_at_odd_sizes_match_an_independent_tree_postgres() {
    let (store, _raw) = postgres().await;
    single_pass_checkpoints_at_odd_sizes_match_an_independent_tree(store).await;
}

#[tokio::test]
async fn single_pass_checkpoints_at_odd_sizes_match_an_independent_tree_sqlite() {
    let (store, _raw) = sqlite().await;
    single_pass_checkpoints_at_odd_sizes_match_an_independent_tree(store).await;
}

// ---------------------------------------------------------------------------------------------
// Misfiled anchors
// ---------------------------------------------------------------------------------------------

/// Where an anchor sink keeps its anchors, and how someone with write access to it (a database
/// administrator of the anchor table, a user of the anchor directory) files a genuine older note
/// under a larger size, next to the sink's own writes.
enum MisfiledAnchor {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
    Dir(PathBuf),
}

impl MisfiledAnchor {
    async fn file_under(&self, tenant_name: &str, size: u64, older: &SignedCheckpoint) {
        // A plain INSERT: the table is write-once against UPDATE and DELETE, not against new rows.
        let forge = format!(
            "INSERT INTO audit_anchors (tenant, size, root, note, anchored_us) \
             SELECT tenant, {size}, root, note, anchored_us FROM audit_anchors \
             WHERE tenant = '{tenant_name}' AND size = {}",
            older.size()
        );
        match self {
            Self::Pg(pool) => {
                sqlx::query(&forge).execute(pool).await.expect("forged anchor row");
            }
            Self::Sqlite(pool) => {
                sqlx::query(&forge).execute(pool).await.expect("forged anchor row");
            }
            Self::Dir(dir) => {
                let sink = FsAnchorSink::new(dir);
                std::fs::copy(
                    sink.path_of(&tenant(tenant_name), older.size()),
                    sink.path_of(&tenant(tenant_name), size),
                )
                .expect("forged anchor file");
            }
        }
    }
}

/// Finding (fixed): an anchor sink's `latest` chose the anchor by the size it is filed under (row
/// column, file name) alone. A genuine older note (size 3) filed under a larger size (1000) was
/// then taken as the latest anchor and opened as size 3, hiding the real latest anchor (6): a
/// process whose checkpoint rows were deleted could sign a fork of it. A note must now hold the
/// size it is filed under, and a misfiled one is refused loudly (`Error::AnchorMisfiled`).
async fn misfiled_older_anchor_is_refused<S: AuditStore + MerkleStore + Clone>(
    store: S,
    sink: Arc<dyn AnchorSink>,
    forger: MisfiledAnchor,
) {
    let acme = tenant("acme");
    let checkpointer = Checkpointer::new(store.clone(), signer()).with_anchor(Arc::clone(&sink));
    append_n(&store, "acme", 0, 3).await;
    let older = checkpointer.checkpoint_now(&acme).await.expect("checkpoint 3");
    append_n(&store, "acme", 3, 3).await;
    assert_eq!(checkpointer.checkpoint_now(&acme).await.expect("checkpoint 6").size(), 6);
    assert_eq!(sink.latest(&acme).await.expect("latest").map(|anchor| anchor.size), Some(6));

    forger.file_under("acme", 1000, &older).await;
    let refused = sink.latest(&acme).await.expect_err("a note of size 3 filed under 1000");
    assert!(matches!(refused, Error::AnchorMisfiled { filed: 1000, held: 3, .. }), "{refused:?}");
    append_n(&store, "acme", 6, 1).await;
    let refused = checkpointer.checkpoint_now(&acme).await.expect_err("the anchors were tampered with");
    assert!(matches!(refused, Error::AnchorMisfiled { filed: 1000, held: 3, .. }), "{refused:?}");
    assert!(refused.to_string().contains("tampered"), "{refused}");
    assert_eq!(store.latest_checkpoint(&acme).await.expect("latest").map(|latest| latest.size()), Some(6));
}

#[tokio::test]
async fn misfiled_older_anchor_is_refused_postgres_table() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let store = PgAuditChain::new(database.pool().clone());
    let sink = Arc::new(PgAnchorSink::new(database.pool().clone()));
    misfiled_older_anchor_is_refused(store, sink, MisfiledAnchor::Pg(database.pool().clone())).await;
}

#[tokio::test]
async fn misfiled_older_anchor_is_refused_sqlite_table() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let sink = Arc::new(SqliteAnchorSink::new(database.pool().clone()));
    misfiled_older_anchor_is_refused(store, sink, MisfiledAnchor::Sqlite(database.pool().clone())).await;
}

#[tokio::test]
async fn misfiled_older_anchor_is_refused_fs() {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let store = SqliteAuditChain::new(database.pool().clone());
    let dir = tempfile::tempdir().expect("temp dir");
    let sink = Arc::new(FsAnchorSink::new(dir.path()));
    misfiled_older_anchor_is_refused(store, sink, MisfiledAnchor::Dir(dir.path().to_owned())).await;
}
