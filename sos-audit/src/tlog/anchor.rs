//! Anchors: write-once copies of each signed checkpoint outside the log's own tables.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use sos_core::{Sha256Digest, TenantId};

use super::SignedCheckpoint;
use crate::error::{Error, Result};

/// One signed checkpoint to anchor, with an optional RFC 3161 timestamp token over its note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The tenant whose checkpoint it is.
    pub tenant: TenantId,
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's root hash.
    pub root: Sha256Digest,
    /// The signed note, exactly as published.
    pub note: String,
    /// A DER-encoded RFC 3161 `TimeStampToken` (CMS `ContentInfo`) over the note, when a timestamp
    /// authority was asked (the anchor stores it beside the note; the plain sinks do not request
    /// it themselves: `timestamp::TimestampedAnchorSink` does, with feature `tsa`).
    pub timestamp_token: Option<Vec<u8>>,
}

impl Anchor {
    /// The anchor of `checkpoint`, without a timestamp token.
    pub fn new(checkpoint: &SignedCheckpoint) -> Self {
        Self {
            tenant: checkpoint.tenant.clone(),
            size: checkpoint.size(),
            root: checkpoint.root(),
            note: checkpoint.note.clone(),
            timestamp_token: None,
        }
    }

    /// Attaches an RFC 3161 timestamp token (DER `TimeStampToken`).
    pub fn with_timestamp_token(mut self, token: Vec<u8>) -> Self {
        self.timestamp_token = Some(token);
        self
    }
}

/// Where an anchor was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorReceipt {
    /// A path, or a table and key.
    pub location: String,
    /// `true` when the very same note was already there (a retry), so nothing was written.
    pub already_present: bool,
}

/// A write-once place for signed checkpoints: each (tenant, size) is written once, and a
/// different note for a size already held is refused with [`Error::AnchorConflict`] (a split
/// view caught at the anchor).
///
/// Object-safe (a [`Checkpointer`](super::Checkpointer) holds `Arc<dyn AnchorSink>`s), hence the
/// boxed future.
pub trait AnchorSink: Send + Sync + fmt::Debug {
    /// Writes `anchor` once.
    ///
    /// # Errors
    ///
    /// [`Error::AnchorConflict`] when another note is held for the same size; [`Error::Io`] or
    /// [`Error::Storage`] when the write fails.
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, Result<AnchorReceipt>>;

    /// The anchor of `tenant` with the largest size, if any. A [`Checkpointer`](super::Checkpointer)
    /// reads it before each checkpoint and refuses to sign a tree that does not extend it, so
    /// neither a restarted process nor one overtaken by another can be led past what was
    /// anchored (the log's own checkpoint rows are in the database an administrator can
    /// rewrite). A sink that cannot be read back (a remote append-only service) answers
    /// `Ok(None)`; say so in its docs.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] or [`Error::Storage`] when the sink cannot be read, [`Error::Note`] when what
    /// it holds is not a checkpoint, [`Error::AnchorMisfiled`] when the note holds a checkpoint
    /// of another size than the one it is filed under (the sink was written to by something
    /// else: a genuine older note filed under a larger size would hide the real latest anchor).
    fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Option<Anchor>>>;
}

/// The largest note file an anchor directory may hold: real checkpoints are a few hundred bytes.
const MAX_ANCHOR_NOTE_BYTES: u64 = 64 * 1024;

/// The largest timestamp token file read back (as `timestamp::MAX_TOKEN_BYTES`).
const MAX_ANCHOR_TOKEN_BYTES: u64 = 1 << 20;

/// Refuses to file `anchor` when its note does not hold a checkpoint of its size and root, so
/// that a sink never files a note under a size it does not hold.
fn check_filing(anchor: &Anchor, location: impl FnOnce() -> String) -> Result<()> {
    let read = anchor_from_note(&anchor.tenant, anchor.size, anchor.note.clone(), None, location)?;
    if read.root != anchor.root {
        return Err(Error::Note(crate::note::NoteError::MalformedCheckpoint {
            reason: "the anchor's root is not the root of the checkpoint its note holds",
        }));
    }
    Ok(())
}

/// An anchor read back from a note filed under `size` at `location` (its root parsed from the
/// note's body, which the checkpointer verifies before relying on it).
///
/// The note must hold a checkpoint of the size it is filed under: the latest anchor is chosen by
/// that size, so a forged row or file with a large size and an older genuine note would
/// otherwise hide the real latest anchor, and let a process sign a fork of it.
fn anchor_from_note(
    tenant: &TenantId,
    size: u64,
    note: String,
    timestamp_token: Option<Vec<u8>>,
    location: impl FnOnce() -> String,
) -> Result<Anchor> {
    let body = note.rfind("\n\n").map_or(note.as_str(), |split| &note[..=split]);
    let checkpoint = crate::note::Checkpoint::parse(body)?;
    if checkpoint.size != size {
        return Err(Error::AnchorMisfiled { location: location(), filed: size, held: checkpoint.size });
    }
    Ok(Anchor { tenant: tenant.clone(), size, root: checkpoint.root, note, timestamp_token })
}

/// Writes each checkpoint to `<dir>/<tenant>/<size, 20 digits>.checkpoint` (and its timestamp
/// token to `….tsr`): created new (never truncating), fsynced with its directory, and left
/// read-only. An existing file is never overwritten.
#[derive(Debug, Clone)]
pub struct FsAnchorSink {
    dir: PathBuf,
}

impl FsAnchorSink {
    /// A sink under `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The path of the checkpoint of `tenant` at `size`.
    pub fn path_of(&self, tenant: &TenantId, size: u64) -> PathBuf {
        self.dir.join(tenant.as_str()).join(format!("{size:020}.checkpoint"))
    }
}

/// The file of the largest size in a tenant's anchor directory, if any (`<20 digits>.checkpoint`).
fn largest_anchor_file(dir: &Path) -> std::io::Result<Option<(u64, PathBuf)>> {
    let listing = match std::fs::read_dir(dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    let mut largest: Option<(u64, PathBuf)> = None;
    for item in listing {
        let item = item?;
        let name = item.file_name();
        let Some(stem) = name.to_str().and_then(|name| name.strip_suffix(".checkpoint")) else { continue };
        if stem.len() != 20 || !stem.bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let Ok(size) = stem.parse::<u64>() else { continue };
        if largest.as_ref().is_none_or(|(held, _)| size > *held) {
            largest = Some((size, item.path()));
        }
    }
    Ok(largest)
}

/// An anchor file read back: its size (from the file name), its path, the note's bytes and the
/// timestamp token's, when there is one.
type HeldAnchorFile = (u64, PathBuf, Vec<u8>, Option<Vec<u8>>);

/// Reads a file of at most `limit` bytes.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut bytes = Vec::new();
    std::fs::File::open(path)?.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the anchor file is too large"));
    }
    Ok(bytes)
}

/// Creates `path` with `bytes`, or reports whether an existing file holds the same bytes.
fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<bool> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // Read-only from birth: the open descriptor may still write, nobody else can.
        options.mode(0o444);
    }
    match options.open(path) {
        Ok(mut file) => {
            file.write_all(bytes)?;
            file.sync_all()?;
            let mut permissions = file.metadata()?.permissions();
            permissions.set_readonly(true);
            std::fs::set_permissions(path, permissions)?;
            if let Some(parent) = path.parent() {
                sync_dir(parent)?;
            }
            Ok(false)
        }
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            let existing = std::fs::read(path)?;
            if existing == bytes {
                Ok(true)
            } else {
                Err(std::io::Error::new(std::io::ErrorKind::AlreadyExists, "different content"))
            }
        }
        Err(error) => Err(error),
    }
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

impl AnchorSink for FsAnchorSink {
    fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, Result<AnchorReceipt>> {
        let path = self.path_of(&anchor.tenant, anchor.size);
        if let Err(refused) = check_filing(anchor, || path.display().to_string()) {
            return Box::pin(async move { Err(refused) });
        }
        let note = anchor.note.clone().into_bytes();
        let token = anchor.timestamp_token.clone();
        let size = anchor.size;
        Box::pin(async move {
            let location = path.display().to_string();
            let written = tokio::task::spawn_blocking(move || -> std::io::Result<bool> {
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                    if let Some(grandparent) = parent.parent() {
                        sync_dir(grandparent)?;
                    }
                }
                let already = write_once(&path, &note)?;
                if let Some(token) = token {
                    match write_once(&path.with_extension("tsr"), &token) {
                        // The very same note is held with the token of an earlier attempt (a
                        // retry, or a second checkpointer): timestamp tokens differ on every
                        // request, so the first one is kept and this is no conflict.
                        Err(error) if already && error.kind() == std::io::ErrorKind::AlreadyExists => {}
                        other => {
                            other?;
                        }
                    }
                }
                Ok(already)
            })
            .await
            .map_err(|join| Error::Io(std::io::Error::other(join)))?;
            match written {
                Ok(already_present) => Ok(AnchorReceipt { location, already_present }),
                Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
                    Err(Error::AnchorConflict { location, size })
                }
                Err(error) => Err(Error::Io(error)),
            }
        })
    }

    fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Option<Anchor>>> {
        let dir = self.dir.join(tenant.as_str());
        Box::pin(async move {
            let read = tokio::task::spawn_blocking(move || -> std::io::Result<Option<HeldAnchorFile>> {
                let Some((size, path)) = largest_anchor_file(&dir)? else { return Ok(None) };
                let note = read_limited(&path, MAX_ANCHOR_NOTE_BYTES)?;
                let token = match read_limited(&path.with_extension("tsr"), MAX_ANCHOR_TOKEN_BYTES) {
                    Ok(token) => Some(token),
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
                    Err(error) => return Err(error),
                };
                Ok(Some((size, path, note, token)))
            })
            .await
            .map_err(|join| Error::Io(std::io::Error::other(join)))?
            .map_err(Error::Io)?;
            let Some((size, path, note, token)) = read else { return Ok(None) };
            let note = String::from_utf8(note).map_err(|_| {
                Error::Io(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the anchor note is not UTF-8",
                ))
            })?;
            anchor_from_note(tenant, size, note, token, || path.display().to_string()).map(Some)
        })
    }
}

/// The answer of a table sink after its `INSERT … ON CONFLICT DO NOTHING`: `held` is `None` when
/// the row was inserted, else the note already held for that size. The same note is a retry; a
/// different one is a split view and is refused.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn table_receipt(anchor: &Anchor, held: Option<&str>) -> Result<AnchorReceipt> {
    let location = format!("audit_anchors ({}, {})", anchor.tenant, anchor.size);
    match held {
        None => Ok(AnchorReceipt { location, already_present: false }),
        Some(held) if held == anchor.note => Ok(AnchorReceipt { location, already_present: true }),
        Some(_) => Err(Error::AnchorConflict { location, size: anchor.size }),
    }
}

/// An anchor read back from a table sink's row.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn anchor_row(tenant: &TenantId, size: i64, note: String, token: Option<Vec<u8>>) -> Result<Anchor> {
    let size = u64::try_from(size).map_err(|_| Error::CorruptTree {
        tenant: tenant.to_string(),
        reason: "an anchor has a negative size",
    })?;
    anchor_from_note(tenant, size, note, token, || format!("audit_anchors ({tenant}, {size})"))
}

#[cfg(feature = "postgres")]
pub use pg::PgAnchorSink;

#[cfg(feature = "postgres")]
mod pg {
    use futures::future::BoxFuture;
    use sqlx::postgres::PgPool;

    use sos_core::TenantId;
    use sqlx::Row as _;

    use super::{Anchor, AnchorReceipt, AnchorSink};
    use crate::error::{Result, storage};

    /// Writes each checkpoint once to the write-once table `audit_anchors` (PostgreSQL; rows
    /// cannot be updated or deleted). Use a database other than the log's own for independence.
    #[derive(Debug, Clone)]
    pub struct PgAnchorSink {
        pool: PgPool,
    }

    impl PgAnchorSink {
        /// A sink on `pool` (run `postgres_migrator()` on that database first).
        pub fn new(pool: PgPool) -> Self {
            Self { pool }
        }
    }

    impl AnchorSink for PgAnchorSink {
        fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, Result<AnchorReceipt>> {
            Box::pin(async move {
                super::check_filing(anchor, || {
                    format!("audit_anchors ({}, {})", anchor.tenant, anchor.size)
                })?;
                let size = crate::tlog::db_size(anchor.size);
                let inserted = sqlx::query(
                    "INSERT INTO audit_anchors (tenant, size, root, note, timestamp_token, anchored_us)
                     VALUES ($1, $2, $3, $4, $5, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)
                     ON CONFLICT (tenant, size) DO NOTHING",
                )
                .bind(anchor.tenant.as_str())
                .bind(size)
                .bind(anchor.root.as_bytes().as_slice())
                .bind(&anchor.note)
                .bind(anchor.timestamp_token.as_deref())
                .execute(&self.pool)
                .await
                .map_err(storage)?
                .rows_affected();
                if inserted == 1 {
                    return super::table_receipt(anchor, None);
                }
                let held: String =
                    sqlx::query_scalar("SELECT note FROM audit_anchors WHERE tenant = $1 AND size = $2")
                        .bind(anchor.tenant.as_str())
                        .bind(size)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(storage)?;
                super::table_receipt(anchor, Some(&held))
            })
        }

        fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Option<Anchor>>> {
            Box::pin(async move {
                let row = sqlx::query(
                    "SELECT size, note, timestamp_token FROM audit_anchors WHERE tenant = $1
                     ORDER BY size DESC LIMIT 1",
                )
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
                let Some(row) = row else { return Ok(None) };
                let size: i64 = row.try_get("size").map_err(storage)?;
                let note: String = row.try_get("note").map_err(storage)?;
                let token: Option<Vec<u8>> = row.try_get("timestamp_token").map_err(storage)?;
                super::anchor_row(tenant, size, note, token).map(Some)
            })
        }
    }
}

#[cfg(feature = "sqlite")]
pub use lite::SqliteAnchorSink;

#[cfg(feature = "sqlite")]
mod lite {
    use futures::future::BoxFuture;
    use sqlx::sqlite::SqlitePool;

    use sos_core::TenantId;
    use sqlx::Row as _;

    use super::{Anchor, AnchorReceipt, AnchorSink};
    use crate::error::{Result, storage};

    /// Writes each checkpoint once to the write-once table `audit_anchors` (SQLite; rows cannot be
    /// updated or deleted). Use a database file other than the log's own for independence.
    #[derive(Debug, Clone)]
    pub struct SqliteAnchorSink {
        pool: SqlitePool,
    }

    impl SqliteAnchorSink {
        /// A sink on `pool` (run `sqlite_migrator()` on that database first).
        pub fn new(pool: SqlitePool) -> Self {
            Self { pool }
        }
    }

    impl AnchorSink for SqliteAnchorSink {
        fn write<'a>(&'a self, anchor: &'a Anchor) -> BoxFuture<'a, Result<AnchorReceipt>> {
            Box::pin(async move {
                super::check_filing(anchor, || {
                    format!("audit_anchors ({}, {})", anchor.tenant, anchor.size)
                })?;
                let size = crate::tlog::db_size(anchor.size);
                let inserted = sqlx::query(
                    "INSERT INTO audit_anchors (tenant, size, root, note, timestamp_token, anchored_us)
                     VALUES (?1, ?2, ?3, ?4, ?5, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER))
                     ON CONFLICT (tenant, size) DO NOTHING",
                )
                .bind(anchor.tenant.as_str())
                .bind(size)
                .bind(anchor.root.as_bytes().as_slice())
                .bind(&anchor.note)
                .bind(anchor.timestamp_token.as_deref())
                .execute(&self.pool)
                .await
                .map_err(storage)?
                .rows_affected();
                if inserted == 1 {
                    return super::table_receipt(anchor, None);
                }
                let held: String =
                    sqlx::query_scalar("SELECT note FROM audit_anchors WHERE tenant = ?1 AND size = ?2")
                        .bind(anchor.tenant.as_str())
                        .bind(size)
                        .fetch_one(&self.pool)
                        .await
                        .map_err(storage)?;
                super::table_receipt(anchor, Some(&held))
            })
        }

        fn latest<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Option<Anchor>>> {
            Box::pin(async move {
                let row = sqlx::query(
                    "SELECT size, note, timestamp_token FROM audit_anchors WHERE tenant = ?1
                     ORDER BY size DESC LIMIT 1",
                )
                .bind(tenant.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
                let Some(row) = row else { return Ok(None) };
                let size: i64 = row.try_get("size").map_err(storage)?;
                let note: String = row.try_get("note").map_err(storage)?;
                let token: Option<Vec<u8>> = row.try_get("timestamp_token").map_err(storage)?;
                super::anchor_row(tenant, size, note, token).map(Some)
            })
        }
    }
}
