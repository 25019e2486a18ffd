//! The SQLite store and audited writes (feature `sqlite`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::future::BoxFuture;
use sos_core::{Clock, Sha256Digest, SystemClock, TenantId};
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqliteRow};
use sqlx::{Connection as _, Row as _};

use crate::entry::{AuditEntry, ChainHead, NewEntry};
use crate::error::{Error, Result, storage};
use crate::head_cache::HeadCache;
use crate::store::{AuditStore, ExpectRows};

/// The SQLite migrations of `sos-audit` (versions `01xxxxxxxx`; versions of other crates
/// sharing the database are ignored).
pub fn sqlite_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
}

/// Per-tenant chains in SQLite, and audited writes in the host's own transaction.
///
/// SQLite has one writer at a time, so appends serialize on the database's write lock: an append
/// writes the tenant's `audit_heads` row and its entry while holding it, so no append works
/// from a stale head. The entry is built on the last head this store appended for the tenant
/// and written, with one statement (an INSERT into the view `audit_appends`, migration
/// 0100000012, whose trigger moves the head and inserts the entry), only if that head is still
/// current; when it is not (another process appended, or a transaction rolled back), the store
/// reads the head under the write lock, stamps the entry's time again and writes it there. Start
/// host transactions with [`SqliteAuditChain::begin`] (`BEGIN IMMEDIATE`): a deferred
/// transaction that reads before it writes can fail with `SQLITE_BUSY` when another writer got
/// in first. The primary key `(tenant, seq)` and the trigger `audit_entries_linked` are the
/// backstop.
///
/// Entry times are stamped while the write lock is held, or on a head guess that turns out
/// current (its entry committed before the guess was read), so on one clock they never decrease
/// along a chain.
#[derive(Debug, Clone)]
pub struct SqliteAuditChain {
    pool: SqlitePool,
    clock: Arc<dyn Clock>,
    heads: Arc<HeadCache>,
}

impl SqliteAuditChain {
    /// A chain store on `pool` (run [`sqlite_migrator`] first), on the system clock.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool, clock: Arc::new(SystemClock), heads: Arc::default() }
    }

    /// Uses `clock` for entry times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Starts a host transaction with `BEGIN IMMEDIATE`, taking the write lock up front.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] when the database cannot be reached or stays locked past its busy
    /// timeout.
    pub async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(storage)
    }

    /// Audit before write: appends `entry`, then runs the host's `write` on the same connection,
    /// inside a savepoint of the host's transaction (or a transaction of its own when `conn` is
    /// not in one).
    ///
    /// `write` returns the number of rows it changed. When that number does not meet `expect`, or
    /// `write` fails, the savepoint is rolled back, so neither the audit entry nor the write
    /// survives even if the host then commits its transaction, and the caller gets
    /// [`Error::UnexpectedRows`] or [`Error::HostWrite`]. The head lock is held until the host's
    /// transaction ends; keep audited transactions short.
    ///
    /// `write` must not end the transaction itself (a raw `COMMIT` or `ROLLBACK` statement):
    /// the audit entry is already inserted when it runs; a commit hook vetoes every commit on the connection while
    /// `write` runs, so the transaction rolls back (it replaces a commit hook the host set).
    ///
    /// ```no_run
    /// # async fn example(chain: sos_audit::SqliteAuditChain, entry: sos_audit::NewEntry) -> sos_audit::Result<()> {
    /// use sos_audit::ExpectRows;
    ///
    /// let mut tx = chain.begin().await?;
    /// chain
    ///     .audited(&mut tx, entry, ExpectRows::Exactly(1), |conn| {
    ///         Box::pin(async move {
    ///             let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE id = 42").execute(conn).await?;
    ///             Ok::<_, sqlx::Error>(done.rows_affected())
    ///         })
    ///     })
    ///     .await?;
    /// tx.commit().await.map_err(|error| sos_audit::Error::Storage(error.into()))?;
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::UnexpectedRows`], [`Error::HostWrite`], or [`Error::Storage`] when the database
    /// fails (the savepoint is rolled back in every case).
    pub async fn audited<F, E>(
        &self,
        conn: &mut SqliteConnection,
        entry: NewEntry,
        expect: ExpectRows,
        write: F,
    ) -> Result<AuditEntry>
    where
        F: for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, Result<u64, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        // Without a host transaction a plain (deferred) BEGIN is enough: the first statement in
        // it is the append's write, which takes the write lock before anything is read (SQLite
        // retries a busy lock under busy_timeout while the transaction has read nothing), as
        // `BEGIN IMMEDIATE` would, and sqlx checks a custom BEGIN statement with one more round
        // trip to its worker thread.
        let mut savepoint = conn.begin().await.map_err(storage)?;
        let appended = match self.place(&mut savepoint, entry).await {
            Ok(appended) => appended,
            Err(error) => {
                savepoint.rollback().await.map_err(storage)?;
                return Err(error);
            }
        };
        // Until the host's write is checked nothing may commit on this connection: a write that
        // ends the transaction itself (COMMIT, or ROLLBACK and then writes in autocommit mode) is
        // rolled back by this commit hook instead (audit-before-write). The veto is lifted when
        // the write returns or this future is dropped; the inert hook stays on the connection.
        let veto = Veto(Arc::new(AtomicBool::new(true)));
        let hooked = match savepoint.lock_handle().await {
            Ok(mut handle) => {
                let active = Arc::clone(&veto.0);
                handle.set_commit_hook(move || !active.load(Ordering::Acquire));
                Ok(())
            }
            Err(error) => Err(error),
        };
        if let Err(error) = hooked {
            savepoint.rollback().await.map_err(storage)?;
            return Err(storage(error));
        }
        let written = write(&mut savepoint).await;
        drop(veto);
        let failure = match written {
            Ok(rows) if expect.admits(rows) => None,
            Ok(rows) => Some(Error::UnexpectedRows { expected: expect, actual: rows }),
            Err(error) => Some(Error::HostWrite(Box::new(error))),
        };
        match failure {
            None => {
                savepoint.commit().await.map_err(storage)?;
                self.heads.set(appended.tenant.as_str(), (appended.seq, appended.hash));
                Ok(appended)
            }
            Some(error) => {
                savepoint.rollback().await.map_err(storage)?;
                Err(error)
            }
        }
    }
}

/// The commit veto of an audited write, lifted on drop (also when the write is cancelled).
struct Veto(Arc<AtomicBool>);

impl Drop for Veto {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl SqliteAuditChain {
    /// Builds `entry` on the tenant's cached head (`true`), or on the empty chain when none is
    /// cached (`false`: the head must be read).
    fn build_on_guess(&self, entry: NewEntry) -> Result<(AuditEntry, bool)> {
        let guess = self.heads.get(entry.tenant().as_str());
        let (last_seq, prev_hash) = guess.unwrap_or((0, Sha256Digest::ZERO));
        let next = last_seq.checked_add(1).ok_or_else(|| chain_full(entry.tenant().as_str()))?;
        Ok((entry.into_entry(next, self.clock.now(), prev_hash)?, guess.is_some()))
    }

    /// Builds `entry` on the tenant's cached head and writes it if that head is still current;
    /// otherwise reads the head under the write lock, stamps the time again and writes it there.
    /// `conn` must be in a transaction.
    async fn place(&self, conn: &mut SqliteConnection, entry: NewEntry) -> Result<AuditEntry> {
        let (stored, guessed) = self.build_on_guess(entry)?;
        if guessed && self.write_if_head(conn, &stored).await? {
            return Ok(stored);
        }
        self.place_on_read_head(conn, stored).await
    }

    /// Reads the tenant's head under the write lock, moves `stored` onto it (sequence number,
    /// time, link) and writes it. `conn` must be in a transaction.
    async fn place_on_read_head(
        &self,
        conn: &mut SqliteConnection,
        mut stored: AuditEntry,
    ) -> Result<AuditEntry> {
        let tenant = stored.tenant.as_str().to_owned();
        // Writing the head row first takes SQLite's write lock before the head is read, so the
        // read cannot be stale; the no-op update returns the current head.
        let row = sqlx::query(
            "INSERT INTO audit_heads (tenant, seq, hash) VALUES (?1, 0, ?2)
             ON CONFLICT (tenant) DO UPDATE SET seq = audit_heads.seq
             RETURNING seq, hash",
        )
        .bind(&tenant)
        .bind(Sha256Digest::ZERO.as_bytes().as_slice())
        .fetch_one(&mut *conn)
        .await
        .map_err(storage)?;
        let (last_seq, prev_hash) = head_from_row(&tenant, &row)?;
        let next = last_seq.checked_add(1).ok_or_else(|| chain_full(&tenant))?;
        stored.replace_at(next, self.clock.now(), prev_hash)?;
        if self.write_if_head(conn, &stored).await? {
            Ok(stored)
        } else {
            Err(Error::CorruptEntry {
                tenant,
                seq: i64::try_from(last_seq).unwrap_or(i64::MAX),
                reason: "the head row changed under the write lock before the entry was written",
            })
        }
    }

    /// Inserts `stored` and moves the head onto it, if the head row is still the one `stored`
    /// extends; `Ok(false)` when it is not (nothing was written). One statement, so it writes
    /// both rows or neither, in a transaction or in autocommit mode.
    async fn write_if_head(&self, conn: &mut SqliteConnection, stored: &AuditEntry) -> Result<bool> {
        let tenant = stored.tenant.as_str();
        let seq = i64::try_from(stored.seq).map_err(|_| chain_full(tenant))?;
        // The trigger of the view `audit_appends` (migration 0100000012) moves the head only
        // while it is `stored`'s predecessor, refuses with HEAD_MOVED when it is not, then inserts
        // the entry and refuses unless exactly that row was written; the triggers of
        // `audit_entries` (write-once, well-formed, `audit_entries_linked`) check the insert.
        let done = sqlx::query(
            "INSERT INTO audit_appends (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(tenant)
        .bind(seq)
        .bind(stored.time_us)
        .bind(&stored.actor)
        .bind(&stored.action)
        .bind(&stored.subject)
        .bind(&stored.payload)
        .bind(stored.prev_hash.as_bytes().as_slice())
        .bind(stored.hash.as_bytes().as_slice())
        .execute(&mut *conn)
        .await;
        match done {
            Ok(_) => Ok(true),
            Err(sqlx::Error::Database(error)) if error.message().contains(HEAD_MOVED) => Ok(false),
            Err(error) => {
                // A guess that led to an error is not worth keeping.
                self.heads.forget(tenant);
                Err(storage(error))
            }
        }
    }
}

/// The message with which the trigger of `audit_appends` refuses an entry that does not extend
/// the head row (migration 0100000012).
const HEAD_MOVED: &str = "audit head moved";

fn chain_full(tenant: &str) -> Error {
    Error::CorruptEntry {
        tenant: tenant.to_owned(),
        seq: i64::MAX,
        reason: "the chain is full (seq exceeds i64)",
    }
}

fn head_from_row(tenant: &str, row: &SqliteRow) -> Result<(u64, Sha256Digest)> {
    let seq: i64 = row.try_get("seq").map_err(storage)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(storage)?;
    let corrupt = |reason| Error::CorruptEntry { tenant: tenant.to_owned(), seq, reason };
    let seq_unsigned = u64::try_from(seq).map_err(|_| corrupt("negative seq in the head row"))?;
    let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| corrupt("head hash is not 32 bytes"))?;
    Ok((seq_unsigned, Sha256Digest::from_bytes(hash)))
}

fn entry_from_row(row: &SqliteRow) -> Result<AuditEntry> {
    let tenant: String = row.try_get("tenant").map_err(storage)?;
    let seq: i64 = row.try_get("seq").map_err(storage)?;
    let prev_hash: Vec<u8> = row.try_get("prev_hash").map_err(storage)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(storage)?;
    crate::entry_from_parts(crate::RowParts {
        tenant,
        seq,
        time_us: row.try_get("time_us").map_err(storage)?,
        actor: row.try_get("actor").map_err(storage)?,
        action: row.try_get("action").map_err(storage)?,
        subject: row.try_get("subject").map_err(storage)?,
        payload: row.try_get("payload").map_err(storage)?,
        prev_hash,
        hash,
    })
}

impl AuditStore for SqliteAuditChain {
    async fn append(&self, entry: NewEntry) -> Result<AuditEntry> {
        let (stored, guessed) = self.build_on_guess(entry)?;
        let mut conn = self.pool.acquire().await.map_err(storage)?;
        // On a cached head the append is one statement in autocommit mode, which SQLite runs as
        // a transaction of its own under the write lock (both rows or neither).
        if guessed && self.write_if_head(&mut conn, &stored).await? {
            self.heads.set(stored.tenant.as_str(), (stored.seq, stored.hash));
            return Ok(stored);
        }
        // The first statement of this (deferred) transaction writes the head row, so it takes
        // the write lock before the head is read, as in `audited`.
        let mut tx = conn.begin().await.map_err(storage)?;
        let stored = self.place_on_read_head(&mut tx, stored).await?;
        tx.commit().await.map_err(storage)?;
        self.heads.set(stored.tenant.as_str(), (stored.seq, stored.hash));
        Ok(stored)
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant = ?1")
            .bind(tenant.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
        let Some(row) = row else { return Ok(None) };
        let (seq, hash) = head_from_row(tenant.as_str(), &row)?;
        Ok((seq > 0).then_some(ChainHead { seq, hash }))
    }

    async fn read_page(&self, tenant: &TenantId, after_seq: u64, limit: u32) -> Result<Vec<AuditEntry>> {
        let rows = sqlx::query(
            "SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
             FROM audit_entries WHERE tenant = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(tenant.as_str())
        .bind(i64::try_from(after_seq).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        rows.iter().map(entry_from_row).collect()
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let rows = sqlx::query(crate::TENANTS_SQL).fetch_all(&self.pool).await.map_err(storage)?;
        rows.iter().map(|row| crate::listed_tenant(row.try_get(0).map_err(storage)?)).collect()
    }
}
