//! An append-only, SHA-256 hash-chained audit log with audit-before-write and an independent
//! verifier.
//!
//! # Overview
//!
//! Every tenant has its own chain of [`AuditEntry`]s: sequence numbers from 1 without gaps, and
//! each entry's hash commits to all of its fields and to the previous entry's hash (the format is
//! specified with test vectors in `docs/audit-format.md`). A state change and its audit entry
//! commit in one transaction or not at all ("audit before write": `PgAuditChain::audited`,
//! `SqliteAuditChain::audited`). Concurrent appenders serialize on the tenant's head row, so the
//! chain never forks, and the entry table rejects UPDATE and DELETE. The [`ChainVerifier`]
//! streams a chain in constant memory and names the first bad entry and why.
//!
//! A chain alone cannot prove to an outsider that its tail was not cut off. Each chain is also an
//! RFC 9162 Merkle tree ([`merkle`]: tree heads, inclusion and consistency proofs), and its heads
//! can be published as C2SP checkpoints signed with Ed25519 ([`note`]), readable by existing
//! transparency-log tooling. The leaf data of entry `seq` is its 32-byte hash.
//!
//! [`tlog`] puts this to work per tenant: the tree stored as C2SP tiles in the same database
//! ([`tlog::MerkleStore`]), a [`tlog::Checkpointer`] that signs every 256 entries, after at most
//! 60 s of pending entries and on demand, and refuses split views and forks, inclusion proofs
//! with `O(log n)` reads ([`tlog::prove`]), write-once anchors ([`tlog::AnchorSink`]) and tile
//! export.
//!
//! # Usage
//!
//! Stores implement [`AuditStore`]: [`MemoryAuditStore`] always, `PgAuditChain` with feature
//! `postgres`, `SqliteAuditChain` with feature `sqlite` (run `postgres_migrator()` or
//! `sqlite_migrator()` first). Verify with [`verify_store`], [`verify_jsonl`] or the
//! `sos-audit` command (feature `cli`):
//!
//! ```text
//! sos-audit verify --database-url postgres://… [--tenant acme] [--expect-head 42:<hash>]
//! sos-audit export --database-url postgres://… --tenant acme > chain.jsonl
//! sos-audit verify --file chain.jsonl [--expect-head 42:<hash>]
//! sos-audit keygen --name example.com/sos-audit --out log.key > log.pub
//! sos-audit checkpoint --database-url … --signer-key log.key [--tenant acme] [--anchor-dir DIR]
//! sos-audit prove --database-url … --tenant acme --seq 2 > proof.json
//! sos-audit verify-proof --proof proof.json --verifier-key log.pub [--entry line.jsonl]
//! sos-audit verify --file chain.jsonl --checkpoint acme.checkpoint --verifier-key log.pub
//! sos-audit tiles --database-url … --tenant acme --out tiles/
//! ```
//!
//! Exit status: 0 intact, 1 tampering found, 2 usage or I/O error.
//!
//! # Examples
//!
//! ```
//! use sos_audit::{AuditStore, MemoryAuditStore, NewEntry, verify_store};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let store = MemoryAuditStore::new();
//! let tenant: sos_core::TenantId = "acme".parse()?;
//! for stage in ["new", "qualified", "won"] {
//!     let entry = NewEntry::new(
//!         tenant.clone(),
//!         "agent:closer",
//!         "deal.stage",
//!         "deal/42",
//!         &serde_json::json!({ "stage": stage }),
//!     )?;
//!     store.append(entry).await?;
//! }
//! let verdict = verify_store(&store, &tenant, None, |_| {}).await?;
//! assert!(verdict.is_intact());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })
//! # }
//! ```
//!
//! # Performance
//!
//! Verification costs one SHA-256 over each entry's encoding; see `BENCHMARKS.md` for verify
//! throughput beside raw SHA-256 and for append rates on each store. A Merkle proof of a
//! 10-million-entry tree takes microseconds to make and to check (24 node hashes).
//!
//! # Untrusted input
//!
//! Chain files and database rows are evidence, not trusted values: [`parse_jsonl_line`] and
//! [`JsonlReader`] return [`Error::MalformedLine`] naming the line and never panic; lines are
//! bounded by [`MAX_LINE_LEN`]. Tampering is reported as a [`Finding`], never an error. Signed
//! notes, keys, checkpoints ([`note::open_note`], [`note::Checkpoint::open`]) and proofs
//! ([`merkle::InclusionProof::from_json`], [`tlog::EntryProof::from_json`]) and tiles
//! ([`tlog::TileSet::insert`]) are parsed into typed errors, with size limits.
//! RFC 3161 timestamp replies and stored tokens (feature `tsa`: `timestamp::TimestampRequest::verify_response`,
//! `timestamp::TimestampToken::verify`) are parsed with the RustCrypto `der`, `cms` and
//! `x509-cert` crates into typed errors, bounded by `timestamp::MAX_TOKEN_BYTES`.
//!
//! # Crate features
//!
//! - `postgres`: `PgAuditChain`, `postgres_migrator`. Enables `sos-core`'s `postgres`
//!   feature: transactions on the host's pool open through `sos_core::postgres::PgTxConnection`
//!   (cancel-safe `BEGIN`, see `docs/webhooks.md`, "Sharing the host's pool").
//! - `sqlite`: `SqliteAuditChain`, `sqlite_migrator`.
//! - `cli`: the `sos-audit` binary (enables both backends).
//! - `tsa`: RFC 3161 timestamps of checkpoints (`timestamp`): the `TimestampAuthority` trait, an
//!   HTTP client, token verification for auditors, and `TimestampedAnchorSink` for anchors.
//!
//! The in-memory store is always available.

mod canonical;
mod entry;
mod error;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod head_cache;
mod jsonl;
mod memory;
pub mod merkle;
pub mod note;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
#[cfg(feature = "tsa")]
pub mod timestamp;
pub mod tlog;
mod verify;

#[cfg(test)]
mod tests;

pub use canonical::{MAX_DEPTH, MAX_SAFE_INTEGER, canonical_json};
pub use entry::{
    AuditEntry, ChainHead, ENTRY_DOMAIN, MAX_NAME_LEN, MAX_PAYLOAD_LEN, MAX_SUBJECT_LEN, NewEntry,
};
pub use error::{Error, Result};
pub use jsonl::{JsonlReader, MAX_LINE_LEN, parse_jsonl_line, write_jsonl_line};
pub use memory::MemoryAuditStore;
#[cfg(feature = "postgres")]
pub use postgres::{PgAuditChain, postgres_migrator};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteAuditChain, sqlite_migrator};
pub use store::{AuditStore, ExpectRows};
pub use verify::{ChainVerifier, Finding, PAGE_SIZE, Verdict, VerifiedChain, verify_jsonl, verify_store};

/// The tenants of a database store: those with a head row and those with entries, sorted.
///
/// The entries' tenants are found by a loose index scan (one index seek per tenant, the next
/// tenant above the last one found), not `SELECT DISTINCT tenant`, which reads every entry: the
/// checkpointer lists tenants on every poll, and at 10 million entries a full read per poll
/// costs more than the appends it signs. Entries are searched as well as heads so that a
/// tenant whose head row was deleted is still listed (and its checkpoint then reports the cut).
/// Both SQLite and PostgreSQL answer `MIN(tenant) … WHERE tenant > ?` from the `(tenant, seq)`
/// key with one seek.
///
/// `MIN` skips NULL, so the scan alone would pass over entries whose tenant is NULL (possible
/// only after an administrator dropped the key and the NOT NULL constraint, or rebuilt the
/// SQLite table without them); `SELECT DISTINCT` returned that NULL and listing failed. The
/// last branch, one more seek, keeps that: a NULL tenant comes back as a row, and the stores
/// report it as [`Error::CorruptEntry`] instead of leaving those entries unchecked.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) const TENANTS_SQL: &str = "WITH RECURSIVE entry_tenants(tenant) AS ( \
         SELECT MIN(tenant) FROM audit_entries \
         UNION ALL \
         SELECT (SELECT MIN(e.tenant) FROM audit_entries AS e WHERE e.tenant > entry_tenants.tenant) \
         FROM entry_tenants WHERE entry_tenants.tenant IS NOT NULL) \
     SELECT tenant FROM audit_heads \
     UNION SELECT tenant FROM entry_tenants WHERE tenant IS NOT NULL \
     UNION SELECT tenant FROM (SELECT tenant FROM audit_entries WHERE tenant IS NULL LIMIT 1) AS null_tenant \
     ORDER BY 1";

/// Turns one row of [`TENANTS_SQL`] (its tenant column, NULL as `None`) into a tenant id, or
/// into [`Error::CorruptEntry`] when the stored value is NULL or not a valid tenant id.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn listed_tenant(tenant: Option<String>) -> Result<sos_core::TenantId> {
    let Some(tenant) = tenant else {
        return Err(Error::CorruptEntry {
            tenant: "NULL".to_owned(),
            seq: 0,
            reason: "entries have a NULL tenant (the key or NOT NULL constraint was dropped); find them with WHERE tenant IS NULL",
        });
    };
    sos_core::TenantId::new(tenant.clone()).map_err(|_| Error::CorruptEntry {
        tenant,
        seq: 0,
        reason: "the tenant id is invalid",
    })
}

/// The columns of a stored row, before they are checked.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) struct RowParts {
    pub(crate) tenant: String,
    pub(crate) seq: i64,
    pub(crate) time_us: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) subject: String,
    pub(crate) payload: String,
    pub(crate) prev_hash: Vec<u8>,
    pub(crate) hash: Vec<u8>,
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn entry_from_parts(parts: RowParts) -> Result<AuditEntry> {
    let corrupt = |reason| Error::CorruptEntry { tenant: parts.tenant.clone(), seq: parts.seq, reason };
    let seq = u64::try_from(parts.seq).map_err(|_| corrupt("the seq is negative"))?;
    let prev_hash =
        <[u8; 32]>::try_from(parts.prev_hash.as_slice()).map_err(|_| corrupt("prev_hash is not 32 bytes"))?;
    let hash = <[u8; 32]>::try_from(parts.hash.as_slice()).map_err(|_| corrupt("hash is not 32 bytes"))?;
    let tenant =
        sos_core::TenantId::new(parts.tenant.clone()).map_err(|_| corrupt("the tenant id is invalid"))?;
    Ok(AuditEntry {
        tenant,
        seq,
        time_us: parts.time_us,
        actor: parts.actor,
        action: parts.action,
        subject: parts.subject,
        payload: parts.payload,
        prev_hash: sos_core::Sha256Digest::from_bytes(prev_hash),
        hash: sos_core::Sha256Digest::from_bytes(hash),
    })
}
