//! The PostgreSQL store and audited writes (feature `postgres`).

use std::sync::Arc;

use futures::future::BoxFuture;
use sos_core::postgres::PgTxConnection;
use sos_core::{Clock, Sha256Digest, SystemClock, TenantId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnection, PgPool, PgRow};
use sqlx::{Connection as _, Row as _};

use crate::entry::{AuditEntry, ChainHead, NewEntry};
use crate::error::{Error, Result, storage};
use crate::head_cache::HeadCache;
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
/// An append moves the tenant's row in `audit_heads` and inserts the entry in one statement,
/// which holds the row's lock until commit, so appenders to one tenant serialize and never fork
/// the chain, while other tenants proceed. The statement names the head it extends (`WHERE seq =
/// … AND hash = …`) and writes nothing when that head is no longer current; the store then locks
/// the head row (`SELECT … FOR UPDATE`), reads it, stamps the entry's time again and writes
/// again. The head it names is the last one this store appended for the tenant, so one process
/// appending to a tenant needs a single round trip per append ([`AuditStore::append`] runs it in
/// autocommit mode). The primary key `(tenant, seq)` is the backstop. Entry times are stamped
/// under the row lock or on a head guess that turns out current, so on one clock they never
/// decrease along a chain.
#[derive(Debug, Clone)]
pub struct PgAuditChain {
    pool: PgPool,
    clock: Arc<dyn Clock>,
    heads: Arc<HeadCache>,
}

impl PgAuditChain {
    /// A chain store on `pool` (run [`postgres_migrator`] first), on the system clock.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, clock: Arc::new(SystemClock), heads: Arc::default() }
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
    /// Pass a connection inside the host's transaction. Open that transaction with
    /// `sos_core::postgres::PgTxConnection` (as below): a plain `pool.begin()` dropped while its
    /// `BEGIN` is in flight returns the connection to the pool inside an open transaction (an
    /// sqlx bug, `docs/webhooks.md`, "Sharing the host's pool"); so does this call, dropped
    /// mid-`BEGIN`, on a connection that was in no transaction.
    ///
    /// `write` must not end the transaction itself (a raw `COMMIT` or `ROLLBACK` statement):
    /// the audit entry is already inserted when it runs; a deferred trigger (migration `0100000003`) then refuses the
    /// commit and the transaction rolls back.
    ///
    /// ```no_run
    /// # async fn example(chain: sos_audit::PgAuditChain, entry: sos_audit::NewEntry) -> sos_audit::Result<()> {
    /// use sos_audit::ExpectRows;
    ///
    /// let storage = |error: sqlx::Error| sos_audit::Error::Storage(error.into());
    /// let mut connection = sos_core::postgres::PgTxConnection::acquire(chain.pool()).await.map_err(storage)?;
    /// let mut tx = connection.begin().await.map_err(storage)?;
    /// chain
    ///     .audited(&mut tx, entry, ExpectRows::Exactly(1), |conn| {
    ///         Box::pin(async move {
    ///             let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE id = 42").execute(conn).await?;
    ///             Ok::<_, sqlx::Error>(done.rows_affected())
    ///         })
    ///     })
    ///     .await?;
    /// tx.commit().await.map_err(storage)?;
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
        // The append also marks the transaction unsettled: until the host's write is checked,
        // the deferred trigger `audit_entries_settled` refuses a COMMIT issued inside the write
        // (audit-before-write). The mark is transaction-local and undone with the savepoint.
        let appended = match self.place(&mut savepoint, entry, Mark::Unsettled).await {
            Ok(appended) => appended,
            Err(error) => {
                savepoint.rollback().await.map_err(storage)?;
                return Err(error);
            }
        };
        let failure = match write(&mut savepoint).await {
            Ok(rows) if expect.admits(rows) => None,
            Ok(rows) => Some(Error::UnexpectedRows { expected: expect, actual: rows }),
            Err(error) => Some(Error::HostWrite(Box::new(error))),
        };
        match failure {
            None => {
                set_settled(&mut savepoint).await?;
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

    /// Builds `entry` on the tenant's cached head and writes it if that head is still current;
    /// otherwise locks the head row and writes it there. `conn` must be in a transaction.
    async fn place(&self, conn: &mut PgConnection, entry: NewEntry, mark: Mark) -> Result<AuditEntry> {
        let guess = self.heads.get(entry.tenant().as_str());
        let (last_seq, prev_hash) = guess.unwrap_or((0, Sha256Digest::ZERO));
        let mut stored = entry.into_entry(next_seq(last_seq)?, self.clock.now(), prev_hash)?;
        if guess.is_some() && self.write_if_head(conn, &stored, mark).await? {
            return Ok(stored);
        }
        self.write_locked(conn, &mut stored, mark).await?;
        Ok(stored)
    }

    /// Locks the tenant's head row (creating it for a first entry), moves `stored` onto that
    /// head and writes it.
    async fn write_locked(&self, conn: &mut PgConnection, stored: &mut AuditEntry, mark: Mark) -> Result<()> {
        let tenant = stored.tenant.as_str().to_owned();
        let (last_seq, prev_hash) = lock_head(conn, &tenant).await?;
        stored.replace_at(next_seq(last_seq)?, self.clock.now(), prev_hash)?;
        if self.write_if_head(conn, stored, mark).await? {
            Ok(())
        } else {
            self.heads.forget(&tenant);
            Err(Error::CorruptEntry {
                tenant,
                seq: i64::try_from(last_seq).unwrap_or(i64::MAX),
                reason: "the locked head row changed before the entry was written",
            })
        }
    }

    /// Inserts `stored` and moves the head onto it, if the head row is still the one `stored`
    /// extends. `Ok(false)` when it is not (nothing was written).
    async fn write_if_head(&self, conn: &mut PgConnection, stored: &AuditEntry, mark: Mark) -> Result<bool> {
        let seq = i64::try_from(stored.seq).map_err(|_| Error::CorruptEntry {
            tenant: stored.tenant.as_str().to_owned(),
            seq: i64::MAX,
            reason: "the chain is full (seq exceeds i64)",
        })?;
        let statement = match mark {
            Mark::None => APPEND_IF_HEAD,
            Mark::Unsettled => APPEND_IF_HEAD_UNSETTLED,
        };
        let done = sqlx::query(statement)
            .bind(stored.tenant.as_str())
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
            Ok(done) => Ok(done.rows_affected() == 1),
            Err(error) => {
                // A guess that led to an error is not worth keeping.
                self.heads.forget(stored.tenant.as_str());
                Err(storage(error))
            }
        }
    }
}

/// Whether an append marks its transaction unsettled (audited writes) or not (plain appends).
#[derive(Debug, Clone, Copy)]
enum Mark {
    None,
    Unsettled,
}

/// Inserts an entry and moves its tenant's head onto it, in one statement, only if the head row
/// is still the entry's predecessor (`$2 - 1`, `$8`): 1 row when written, 0 when the head has
/// moved (the UPDATE re-checks its condition on the newest row version after waiting for the
/// row lock, so two appenders can never both extend one head).
const APPEND_IF_HEAD: &str = "WITH head AS (
        UPDATE audit_heads SET seq = $2, hash = $9
        WHERE tenant = $1 AND seq = $2 - 1 AND hash = $8
        RETURNING 1
    )
    INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM head";

/// [`APPEND_IF_HEAD`], also marking the transaction unsettled when the head moves (see
/// migration `0100000003`).
const APPEND_IF_HEAD_UNSETTLED: &str = "WITH head AS (
        UPDATE audit_heads SET seq = $2, hash = $9
        WHERE tenant = $1 AND seq = $2 - 1 AND hash = $8
        RETURNING set_config('sos_audit.unsettled', 'on', true)
    )
    INSERT INTO audit_entries (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
    SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9 FROM head";

fn next_seq(last_seq: u64) -> Result<u64> {
    last_seq.checked_add(1).ok_or(Error::CorruptEntry {
        tenant: String::new(),
        seq: i64::MAX,
        reason: "the chain is full (seq exceeds u64)",
    })
}

/// Lifts the unsettled mark of an audited write whose row count checked out.
async fn set_settled(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT set_config('sos_audit.unsettled', 'off', true)")
        .execute(conn)
        .await
        .map_err(storage)?;
    Ok(())
}

/// Locks `tenant`'s head row until the transaction ends and returns it, creating it first for
/// the tenant's first entry.
async fn lock_head(conn: &mut PgConnection, tenant: &str) -> Result<(u64, Sha256Digest)> {
    if let Some(head) = select_head_for_update(conn, tenant).await? {
        return Ok(head);
    }
    // First entry of this tenant: create the head row, then lock it. ON CONFLICT covers a
    // concurrent first append, which the lock below then waits for.
    sqlx::query(
        "INSERT INTO audit_heads (tenant, seq, hash) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING",
    )
    .bind(tenant)
    .bind(Sha256Digest::ZERO.as_bytes().as_slice())
    .execute(&mut *conn)
    .await
    .map_err(storage)?;
    select_head_for_update(conn, tenant).await?.ok_or(Error::CorruptEntry {
        tenant: tenant.to_owned(),
        seq: 0,
        reason: "the head row vanished while being locked",
    })
}

async fn select_head_for_update(
    conn: &mut PgConnection,
    tenant: &str,
) -> Result<Option<(u64, Sha256Digest)>> {
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
        // Its BEGIN below is cancel-safe (sqlx#4393; see `sos_core::postgres`): an append dropped
        // mid-BEGIN closes the connection instead of handing the host's pool a stray transaction.
        let mut conn = PgTxConnection::acquire(&self.pool).await.map_err(storage)?;
        let guess = self.heads.get(entry.tenant().as_str());
        let (last_seq, prev_hash) = guess.unwrap_or((0, Sha256Digest::ZERO));
        let mut stored = entry.into_entry(next_seq(last_seq)?, self.clock.now(), prev_hash)?;
        // One statement in autocommit mode is a transaction of its own: the entry and the moved
        // head commit together or not at all.
        let written = guess.is_some() && self.write_if_head(&mut conn, &stored, Mark::None).await?;
        if !written {
            let mut tx = conn.begin().await.map_err(storage)?;
            self.write_locked(&mut tx, &mut stored, Mark::None).await?;
            tx.commit().await.map_err(storage)?;
        }
        self.heads.set(stored.tenant.as_str(), (stored.seq, stored.hash));
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
        let rows = sqlx::query(crate::TENANTS_SQL).fetch_all(&self.pool).await.map_err(storage)?;
        rows.iter().map(|row| crate::listed_tenant(row.try_get(0).map_err(storage)?)).collect()
    }
}
