//! The PostgreSQL Merkle store of [`PgAuditChain`] (feature `postgres`).

use std::collections::BTreeMap;

use sos_core::postgres::PgTxConnection;
use sos_core::{Sha256Digest, TenantId};
use sqlx::Row as _;
use sqlx::postgres::{PgConnection, PgRow};

use super::{
    MerkleStore, SignedCheckpoint, StoredTiles, TileKey, TreeExtension, TreeState, build_extension, db_size,
    edge_tiles, split_previous,
};
use crate::PgAuditChain;
use crate::error::{Error, Result, storage};

fn state_from_row(tenant: &TenantId, row: &PgRow) -> Result<TreeState> {
    let size: i64 = row.try_get("size").map_err(storage)?;
    let hash: Vec<u8> = row.try_get("last_entry_hash").map_err(storage)?;
    super::state_from_parts(tenant, size, &hash)
}

async fn read_state(conn: &mut PgConnection, tenant: &TenantId) -> Result<TreeState> {
    let row = sqlx::query("SELECT size, last_entry_hash FROM audit_tree_heads WHERE tenant = $1")
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?;
    match row {
        Some(row) => state_from_row(tenant, &row),
        None => Ok(TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO }),
    }
}

async fn read_tiles_on(conn: &mut PgConnection, tenant: &TenantId, keys: &[TileKey]) -> Result<StoredTiles> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let levels: Vec<i16> = keys.iter().map(|key| i16::from(key.level)).collect();
    let indexes: Vec<i64> = keys.iter().map(|key| db_size(key.index)).collect();
    let rows = sqlx::query(
        "SELECT level, idx, hashes FROM audit_tree_tiles
         WHERE tenant = $1 AND level = ANY($2::smallint[]) AND idx = ANY($3::bigint[])",
    )
    .bind(tenant.as_str())
    .bind(levels)
    .bind(indexes)
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?;
    rows.iter()
        .map(|row| {
            let level: i16 = row.try_get("level").map_err(storage)?;
            let index: i64 = row.try_get("idx").map_err(storage)?;
            let hashes: Vec<u8> = row.try_get("hashes").map_err(storage)?;
            Ok((super::tile_key_from_parts(tenant, i64::from(level), index)?, hashes))
        })
        // The query matched every (level, idx) combination of the two arrays; keep the keys asked.
        .filter(|tile| tile.as_ref().map_or(true, |(key, _)| keys.contains(key)))
        .collect()
}

/// The tree state and the tiles among `keys`, in one query: the head row comes back as a row of
/// level -1 (its `idx` the size, its `hashes` the last entry hash).
async fn read_tree_on(
    conn: &mut PgConnection,
    tenant: &TenantId,
    keys: &[TileKey],
) -> Result<(TreeState, StoredTiles)> {
    let levels: Vec<i16> = keys.iter().map(|key| i16::from(key.level)).collect();
    let indexes: Vec<i64> = keys.iter().map(|key| db_size(key.index)).collect();
    let rows = sqlx::query(
        "SELECT -1::smallint AS level, size AS idx, last_entry_hash AS hashes FROM audit_tree_heads WHERE tenant = $1
         UNION ALL
         SELECT level, idx, hashes FROM audit_tree_tiles
         WHERE tenant = $1 AND level = ANY($2::smallint[]) AND idx = ANY($3::bigint[])",
    )
    .bind(tenant.as_str())
    .bind(levels)
    .bind(indexes)
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?;
    let mut state = TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO };
    let mut tiles = Vec::with_capacity(keys.len());
    for row in &rows {
        let level: i16 = row.try_get("level").map_err(storage)?;
        let index: i64 = row.try_get("idx").map_err(storage)?;
        let hashes: Vec<u8> = row.try_get("hashes").map_err(storage)?;
        if level < 0 {
            state = super::state_from_parts(tenant, index, &hashes)?;
            continue;
        }
        let key = super::tile_key_from_parts(tenant, i64::from(level), index)?;
        // The query matched every (level, idx) combination of the two arrays; keep the keys asked.
        if keys.contains(&key) {
            tiles.push((key, hashes));
        }
    }
    Ok((state, tiles))
}

fn checkpoint_from_row(tenant: &TenantId, row: &PgRow) -> Result<SignedCheckpoint> {
    let note: String = row.try_get("note").map_err(storage)?;
    let signed_us: i64 = row.try_get("signed_us").map_err(storage)?;
    super::checkpoint_from_parts(tenant, note, signed_us)
}

impl MerkleStore for PgAuditChain {
    async fn extend_tree(&self, tenant: &TenantId, max_entries: u32) -> Result<TreeState> {
        Ok(self.extend_tree_reported(tenant, max_entries).await?.0)
    }

    async fn extend_tree_reported(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> Result<(TreeState, Option<TreeExtension>)> {
        // Cancel-safe BEGIN on the host's pool (sqlx#4393; see `sos_core::postgres`).
        let mut connection = PgTxConnection::acquire(self.pool()).await.map_err(storage)?;
        let mut tx = connection.begin().await.map_err(storage)?;
        // The tenant's tree head row, locked until commit, serializes extenders of one tenant.
        sqlx::query(
            "INSERT INTO audit_tree_heads (tenant, size, last_entry_hash) VALUES ($1, 0, $2)
             ON CONFLICT (tenant) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(Sha256Digest::ZERO.as_bytes().as_slice())
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        let row =
            sqlx::query("SELECT size, last_entry_hash FROM audit_tree_heads WHERE tenant = $1 FOR UPDATE")
                .bind(tenant.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(storage)?;
        let current = state_from_row(tenant, &row)?;
        // From entry `size` on (when there is one): the checkpointer checks that the new entries
        // chain on from the last leaf it signed.
        let extra = u32::from(current.size > 0);
        let rows = sqlx::query(
            "SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
             FROM audit_entries WHERE tenant = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(tenant.as_str())
        .bind(db_size(current.size - u64::from(extra)))
        .bind(i64::from(max_entries) + i64::from(extra))
        .fetch_all(&mut *tx)
        .await
        .map_err(storage)?;
        let entries = rows
            .iter()
            .map(|row| {
                crate::entry_from_parts(crate::RowParts {
                    tenant: row.try_get("tenant").map_err(storage)?,
                    seq: row.try_get("seq").map_err(storage)?,
                    time_us: row.try_get("time_us").map_err(storage)?,
                    actor: row.try_get("actor").map_err(storage)?,
                    action: row.try_get("action").map_err(storage)?,
                    subject: row.try_get("subject").map_err(storage)?,
                    payload: row.try_get("payload").map_err(storage)?,
                    prev_hash: row.try_get("prev_hash").map_err(storage)?,
                    hash: row.try_get("hash").map_err(storage)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let (previous, entries) = split_previous(&current, entries, max_entries);
        if entries.is_empty() {
            return Ok((current, None));
        }
        let edge_keys: Vec<TileKey> = edge_tiles(current.size).into_iter().map(|(key, _)| key).collect();
        let edges: BTreeMap<TileKey, Vec<u8>> =
            read_tiles_on(&mut tx, tenant, &edge_keys).await?.into_iter().collect();
        let extension = build_extension(tenant, current, previous, edges, &entries)?;
        let changed = &extension.written;
        let levels: Vec<i16> = changed.iter().map(|(key, _)| i16::from(key.level)).collect();
        let indexes: Vec<i64> = changed.iter().map(|(key, _)| db_size(key.index)).collect();
        let hashes: Vec<&[u8]> = changed.iter().map(|(_, bytes)| bytes.as_slice()).collect();
        sqlx::query(
            "INSERT INTO audit_tree_tiles (tenant, level, idx, hashes)
             SELECT $1, * FROM UNNEST($2::smallint[], $3::bigint[], $4::bytea[])
             ON CONFLICT (tenant, level, idx) DO UPDATE SET hashes = excluded.hashes",
        )
        .bind(tenant.as_str())
        .bind(levels)
        .bind(indexes)
        .bind(hashes)
        .execute(&mut *tx)
        .await
        .map_err(storage)?;
        sqlx::query("UPDATE audit_tree_heads SET size = $2, last_entry_hash = $3 WHERE tenant = $1")
            .bind(tenant.as_str())
            .bind(db_size(extension.after.size))
            .bind(extension.after.last_entry_hash.as_bytes().as_slice())
            .execute(&mut *tx)
            .await
            .map_err(storage)?;
        tx.commit().await.map_err(storage)?;
        Ok((extension.after, Some(extension)))
    }

    async fn tree_state(&self, tenant: &TenantId) -> Result<TreeState> {
        let mut conn = self.pool().acquire().await.map_err(storage)?;
        read_state(&mut conn, tenant).await
    }

    async fn read_tiles(&self, tenant: &TenantId, keys: &[TileKey]) -> Result<StoredTiles> {
        let mut conn = self.pool().acquire().await.map_err(storage)?;
        read_tiles_on(&mut conn, tenant, keys).await
    }

    async fn read_tree(&self, tenant: &TenantId, keys: &[TileKey]) -> Result<(TreeState, StoredTiles)> {
        let mut conn = self.pool().acquire().await.map_err(storage)?;
        read_tree_on(&mut conn, tenant, keys).await
    }

    async fn latest_checkpoint(&self, tenant: &TenantId) -> Result<Option<SignedCheckpoint>> {
        let row = sqlx::query(
            "SELECT note, signed_us FROM audit_checkpoints WHERE tenant = $1 ORDER BY size DESC LIMIT 1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(storage)?;
        row.map(|row| checkpoint_from_row(tenant, &row)).transpose()
    }

    async fn checkpoint_at(&self, tenant: &TenantId, size: u64) -> Result<Option<SignedCheckpoint>> {
        let row =
            sqlx::query("SELECT note, signed_us FROM audit_checkpoints WHERE tenant = $1 AND size = $2")
                .bind(tenant.as_str())
                .bind(db_size(size))
                .fetch_optional(self.pool())
                .await
                .map_err(storage)?;
        row.map(|row| checkpoint_from_row(tenant, &row)).transpose()
    }

    async fn record_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<SignedCheckpoint> {
        let inserted = sqlx::query(
            "INSERT INTO audit_checkpoints (tenant, size, root, note, signed_us) VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (tenant, size) DO NOTHING RETURNING note, signed_us",
        )
        .bind(checkpoint.tenant.as_str())
        .bind(db_size(checkpoint.size()))
        .bind(checkpoint.root().as_bytes().as_slice())
        .bind(&checkpoint.note)
        .bind(checkpoint.signed_us)
        .fetch_optional(self.pool())
        .await
        .map_err(storage)?;
        if let Some(row) = inserted {
            return checkpoint_from_row(&checkpoint.tenant, &row);
        }
        self.checkpoint_at(&checkpoint.tenant, checkpoint.size()).await?.ok_or(Error::CorruptTree {
            tenant: checkpoint.tenant.to_string(),
            reason: "a recorded checkpoint vanished",
        })
    }
}
