//! The PostgreSQL store and audited writes (feature `postgres`).

use std::sync::Arc;

use futures::future::BoxFuture;
use sos_core::{Clock, Sha256Digest, SystemClock, TenantId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Connection as _, Row as _};

use crate::entry::{AuditEntry, ChainHead, NewEntry};
use crate::error::{Error, Result, storage};
use crate::store::{AuditStore, ExpectRows};

/// The PostgreSQL migrations of `sos-audit` (versions `01xxxxxxxx`; versions of other crates
/// sharing the database are ignored).
pub fn postgres_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// Per-tenant chains in PostgreSQL, and audited writes in the host's own transaction.
///
/// Appends lock the tenant's row in `audit_heads` (`SELECT … FOR UPDATE`) until commit, so
/// appenders to one tenant serialize and never fork the chain, while other tenants proceed.
/// The primary key `(tenant, seq)` is the backstop.
#[derive(Debug, Clone)]
pub struct PgAuditChain {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

impl PgAuditChain {
    /// A chain store on `pool` (run [`postgres_migrator`] first), on the system clock.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, clock: Arc::new(SystemClock) }
    }

    /// Uses `clock` for entry times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
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
    /// the audit entry is already inserted when it runs; a deferred trigger (migration `0100000003`) then refuses the
    /// commit and the transaction rolls back.
    ///
    /// ```no_run
    /// # async fn example(chain: sos_audit::PgAuditChain, entry: sos_audit::NewEntry) -> sos_audit::Result<()> {
    /// use sos_audit::ExpectRows;
    ///
    /// let mut tx = chain.pool().begin().await.map_err(|error| sos_audit::Error::Storage(error.into()))?;
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
        conn: &mut PgConnection,
        entry: NewEntry,
        expect: ExpectRows,
        write: F,
    ) -> Result<AuditEntry>
    where
        F: for<'c> FnOnce(&'c mut PgConnection) -> BoxFuture<'c, Result<u64, E>>,
        E: std::error::Error + Send + Sync + 'static,
    {
        let mut savepoint = conn.begin().await.map_err(storage)?;
        let appended = match append_locked(&mut savepoint, entry, self.clock.now()).await {
            Ok(appended) => appended,
            Err(error) => {
                savepoint.rollback().await.map_err(storage)?;
                return Err(error);
            }
        };
        // Until the host's write is checked its transaction must not commit: the deferred trigger
        // `audit_entries_settled` refuses a COMMIT issued inside the write (audit-before-write).
        if let Err(error) = set_unsettled(&mut savepoint, true).await {
            savepoint.rollback().await.map_err(storage)?;
            return Err(error);
        }
        let failure = match write(&mut savepoint).await {
            Ok(rows) if expect.admits(rows) => None,
            Ok(rows) => Some(Error::UnexpectedRows { expected: expect, actual: rows }),
            Err(error) => Some(Error::HostWrite(Box::new(error))),
        };
        match failure {
            None => {
                set_unsettled(&mut savepoint, false).await?;
                savepoint.commit().await.map_err(storage)?;
                Ok(appended)
            }
            Some(error) => {
                savepoint.rollback().await.map_err(storage)?;
                Err(error)
            }
        }
    }
}

/// Marks the transaction (un)settled for the deferred trigger `audit_entries_settled`; the mark is
/// transaction-local and undone with the savepoint that set it.
async fn set_unsettled(conn: &mut PgConnection, unsettled: bool) -> Result<()> {
    sqlx::query("SELECT set_config('sos_audit.unsettled', $1, true)")
        .bind(if unsettled { "on" } else { "off" })
        .execute(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

async fn append_locked(
    conn: &mut PgConnection,
    entry: NewEntry,
    time: chrono::DateTime<chrono::Utc>,
) -> Result<AuditEntry> {
    let tenant = entry.tenant().as_str().to_owned();
    let head = lock_head(conn, &tenant).await?;
    let (last_seq, prev_hash) = match head {
        Some(head) => head,
        None => {
            // First entry of this tenant: create the head row, then lock it. ON CONFLICT covers a
            // concurrent first append, which the lock below then waits for.
            sqlx::query("INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING")
                .bind(&tenant)
                .bind(Sha256Digest::ZERO.as_bytes().as_slice())
                .execute(&mut *conn)
                .await
                .map_err(storage)?;
            lock_head(conn, &tenant).await?.ok_or(Error::CorruptEntry {
                tenant: tenant.clone(),
                seq: 0,
                reason: "the head row vanished while being locked",
            })?
        }
    };
    let stored = entry.into_entry(last_seq + 1, time, prev_hash)?;
    let seq = i64::try_from(stored.seq).map_err(|_| Error::CorruptEntry {
        tenant: tenant.clone(),
        seq: i64::MAX,
        reason: "the chain is full (seq exceeds i64)",
    })?;
    sqlx::query(
        "WITH inserted AS (
             INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         )
         UPDATE audit_heads SET seq = $2, hash = $9 WHERE tenant = $1",
    )
    .bind(&tenant)
    .bind(seq)
    .bind(stored.time_us)
    .bind(&stored.actor)
    .bind(&stored.action)
    .bind(&stored.subject)
    .bind(&stored.payload)
    .bind(stored.prev_hash.as_bytes().as_slice())
    .bind(stored.hash.as_bytes().as_slice())
    .execute(&mut *conn)
    .await
    .map_err(storage)?;
    Ok(stored)
}

async fn lock_head(conn: &mut PgConnection, tenant: &str) -> Result<Option<(u64, Sha256Digest)>> {
    let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant = $1 FOR UPDATE")
        .bind(tenant)
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?;
    row.map(|row| head_from_row(tenant, &row)).transpose()
}

fn head_from_row(tenant: &str, row: &PgRow) -> Result<(u64, Sha256Digest)> {
    let seq: i64 = row.try_get("seq").map_err(storage)?;
    let hash: Vec<u8> = row.try_get("hash").map_err(storage)?;
    let corrupt = |reason| Error::CorruptEntry { tenant: tenant.to_owned(), seq, reason };
    let seq_unsigned = u64::try_from(seq).map_err(|_| corrupt("negative seq in the head row"))?;
    let hash = <[u8; 32]>::try_from(hash.as_slice()).map_err(|_| corrupt("head hash is not 32 bytes"))?;
    Ok((seq_unsigned, Sha256Digest::from_bytes(hash)))
}

fn entry_from_row(row: &PgRow) -> Result<AuditEntry> {
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

impl AuditStore for PgAuditChain {
    async fn append(&self, entry: NewEntry) -> Result<AuditEntry> {
        let mut tx = self.pool.begin().await.map_err(storage)?;
        let stored = append_locked(&mut tx, entry, self.clock.now()).await?;
        tx.commit().await.map_err(storage)?;
        Ok(stored)
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        let row = sqlx::query("SELECT seq, hash FROM audit_heads WHERE tenant = $1")
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
             FROM audit_entries WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
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
        let rows = sqlx::query(
            "SELECT tenant FROM audit_heads UNION SELECT DISTINCT tenant FROM audit_entries ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        rows.iter()
            .map(|row| {
                let tenant: String = row.try_get(0).map_err(storage)?;
                TenantId::new(tenant.clone()).map_err(|_| Error::CorruptEntry {
                    tenant,
                    seq: 0,
                    reason: "the tenant id is invalid",
                })
            })
            .collect()
    }
}
