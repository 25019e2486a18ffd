//! The PostgreSQL registry.

use std::sync::Arc;

use sos_core::postgres::PgTxConnection;
use sos_core::{Clock, Sha256Digest, TenantId};
use sqlx::Row as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;

use super::{
    IdentityRegistry, Registration, RegistryEntry, decode_chain, entry_from_row, resolve_existing, storage,
};
use crate::error::{Error, Result};
use crate::vector::{AgentName, AgentRole};

/// The migrations of the PostgreSQL registry (versions `0400000001…`), ignoring other crates'
/// migrations in the same database.
pub fn postgres_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// A registry in PostgreSQL.
///
/// A registration locks the tenant's head row (`SELECT … FOR UPDATE`), so appends to one chain
/// are serialised across processes, and arbitrates the name with one
/// `INSERT … ON CONFLICT (tenant, name) DO NOTHING`: of two processes racing for one name,
/// exactly one inserts.
#[derive(Debug, Clone)]
pub struct PostgresRegistry {
    pool: PgPool,
    clock: Arc<dyn Clock>,
}

const SELECT_COLUMNS: &str =
    "SELECT seq, name, role, vector, registered_at_us, prev_hash, entry_hash FROM sos_identity_entries";

fn decode(tenant: &TenantId, row: &sqlx::postgres::PgRow) -> Result<RegistryEntry> {
    entry_from_row(
        tenant,
        row.try_get("seq").map_err(storage)?,
        row.try_get("name").map_err(storage)?,
        row.try_get("role").map_err(storage)?,
        row.try_get("vector").map_err(storage)?,
        row.try_get("registered_at_us").map_err(storage)?,
        row.try_get("prev_hash").map_err(storage)?,
        row.try_get("entry_hash").map_err(storage)?,
    )
}

impl PostgresRegistry {
    /// A registry on `pool` (migrated with [`postgres_migrator`]) stamping entries with `clock`.
    pub fn new(pool: PgPool, clock: Arc<dyn Clock>) -> Self {
        Self { pool, clock }
    }
}

impl IdentityRegistry for PostgresRegistry {
    async fn register(&self, tenant: &TenantId, name: &AgentName, role: &AgentRole) -> Result<Registration> {
        // Cancel-safe BEGIN on the host's pool (sqlx#4393; see `sos_core::postgres`).
        let mut connection = PgTxConnection::acquire(&self.pool).await.map_err(storage)?;
        let mut tx = connection.begin().await.map_err(storage)?;
        // The head-row lock below serialises appends; READ COMMITTED is what lets a waiter read
        // the head its predecessor committed. Under a stricter database default (REPEATABLE READ,
        // SERIALIZABLE) the waiter would fail with a serialization error instead of losing
        // cleanly with `RoleConflict`, so the level is set explicitly.
        sqlx::query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        sqlx::query("INSERT INTO sos_identity_heads (tenant, seq, head) VALUES ($1, 0, $2) ON CONFLICT (tenant) DO NOTHING")
            .bind(tenant.as_str())
            .bind(Sha256Digest::ZERO.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        let head = sqlx::query("SELECT seq, head FROM sos_identity_heads WHERE tenant = $1 FOR UPDATE")
            .bind(tenant.as_str())
            .fetch_one(&mut *tx)
            .await
            .map_err(storage)?;
        let seq: i64 = head.try_get("seq").map_err(storage)?;
        let head_hash: Vec<u8> = head.try_get("head").map_err(storage)?;
        let head_hash: [u8; 32] = head_hash
            .try_into()
            .map_err(|_| Error::CorruptRow { reason: format!("head of tenant {tenant} is not 32 bytes") })?;
        let prev = if seq == 0 { None } else { Some((seq as u64, Sha256Digest::from_bytes(head_hash))) };
        let entry = RegistryEntry::next(tenant, prev, name, role, self.clock.now());
        let inserted = sqlx::query(
            "INSERT INTO sos_identity_entries \
             (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(entry.seq as i64)
        .bind(name.as_str())
        .bind(role.as_str())
        .bind(entry.vector.as_bytes().as_slice())
        .bind(entry.registered_at.timestamp_micros())
        .bind(entry.prev_hash.as_bytes().as_slice())
        .bind(entry.hash.as_bytes().as_slice())
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        if inserted.rows_affected() == 1 {
            sqlx::query("UPDATE sos_identity_heads SET seq = $2, head = $3 WHERE tenant = $1")
                .bind(tenant.as_str())
                .bind(entry.seq as i64)
                .bind(entry.hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
            tx.commit().await.map_err(storage)?;
            return Ok(Registration::Created(entry));
        }
        tx.rollback().await.map_err(storage)?;
        // The lookup reads through the pool: give the connection back first.
        drop(connection);
        // The insert lost to a committed row with this name; that row is the answer.
        let existing = self.lookup(tenant, name).await?.ok_or_else(|| Error::CorruptRow {
            reason: format!("name {name:?} of tenant {tenant} conflicted but cannot be read back"),
        })?;
        resolve_existing(existing, role)
    }

    async fn lookup(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<RegistryEntry>> {
        let row = sqlx::query(&format!("{SELECT_COLUMNS} WHERE tenant = $1 AND name = $2"))
            .bind(tenant.as_str())
            .bind(name.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(storage)?;
        row.map(|row| decode(tenant, &row)).transpose()
    }

    async fn entries(&self, tenant: &TenantId) -> Result<Vec<RegistryEntry>> {
        let rows = sqlx::query(&format!("{SELECT_COLUMNS} WHERE tenant = $1 ORDER BY seq"))
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(storage)?;
        decode_chain(tenant, &rows, decode)
    }
}
