//! The SQLite Merkle store of [`SqliteAuditChain`] (feature `sqlite`).

use std::collections::BTreeMap;

use sos_core::{Sha256Digest, TenantId};
use sqlx::Row as _;
use sqlx::sqlite::{SqliteConnection, SqliteRow};

use super::{
    MerkleStore, SignedCheckpoint, StoredTiles, TileKey, TreeExtension, TreeState, build_extension, db_size,
    edge_tiles, split_previous,
};
use crate::SqliteAuditChain;
use crate::error::{Error, Result, storage};

fn state_from_row(tenant: &TenantId, row: &SqliteRow) -> Result<TreeState> {
    let size: i64 = row.try_get("size").map_err(storage)?;
    let hash: Vec<u8> = row.try_get("last_entry_hash").map_err(storage)?;
    super::state_from_parts(tenant, size, &hash)
}

async fn read_state(conn: &mut SqliteConnection, tenant: &TenantId) -> Result<TreeState> {
    let row = sqlx::query("SELECT size, last_entry_hash FROM audit_tree_heads WHERE tenant = ?1")
        .bind(tenant.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(storage)?;
    match row {
        Some(row) => state_from_row(tenant, &row),
        None => Ok(TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO }),
    }
}

async fn read_tiles_on(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    keys: &[TileKey],
) -> Result<StoredTiles> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let wanted = serde_json::to_string(&keys.iter().map(|key| (key.level, key.index)).collect::<Vec<_>>())
        .map_err(storage)?;
    let rows = sqlx::query(
        "SELECT level, idx, hashes FROM audit_tree_tiles
         WHERE tenant = ?1 AND (level, idx) IN (
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))",
    )
    .bind(tenant.as_str())
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?;
    rows.iter()
        .map(|row| {
            let level: i64 = row.try_get("level").map_err(storage)?;
            let index: i64 = row.try_get("idx").map_err(storage)?;
            let hashes: Vec<u8> = row.try_get("hashes").map_err(storage)?;
            Ok((super::tile_key_from_parts(tenant, level, index)?, hashes))
        })
        .collect()
}

/// The tree state and the tiles among `keys`, in one query: the head row comes back as a row of
/// level -1 (its `idx` the size, its `hashes` the last entry hash).
async fn read_tree_on(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    keys: &[TileKey],
) -> Result<(TreeState, StoredTiles)> {
    let wanted = serde_json::to_string(&keys.iter().map(|key| (key.level, key.index)).collect::<Vec<_>>())
        .map_err(storage)?;
    let rows = sqlx::query(
        "SELECT -1 AS level, size AS idx, last_entry_hash AS hashes FROM audit_tree_heads WHERE tenant = ?1
         UNION ALL
         SELECT level, idx, hashes FROM audit_tree_tiles
         WHERE tenant = ?1 AND (level, idx) IN (
             SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?2))",
    )
    .bind(tenant.as_str())
    .bind(wanted)
    .fetch_all(&mut *conn)
    .await
    .map_err(storage)?;
    let mut state = TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO };
    let mut tiles = Vec::with_capacity(keys.len());
    for row in &rows {
        let level: i64 = row.try_get("level").map_err(storage)?;
        let index: i64 = row.try_get("idx").map_err(storage)?;
        let hashes: Vec<u8> = row.try_get("hashes").map_err(storage)?;
        if level < 0 {
            state = super::state_from_parts(tenant, index, &hashes)?;
            continue;
        }
        let key = super::tile_key_from_parts(tenant, level, index)?;
        tiles.push((key, hashes));
    }
    Ok((state, tiles))
}

fn checkpoint_from_row(tenant: &TenantId, row: &SqliteRow) -> Result<SignedCheckpoint> {
    let note: String = row.try_get("note").map_err(storage)?;
    let signed_us: i64 = row.try_get("signed_us").map_err(storage)?;
    super::checkpoint_from_parts(tenant, note, signed_us)
}

/// Kinds of the rows of [`EXTENSION_READ`].
const HEAD_ROW: i64 = 0;
const EDGE_ROW: i64 = 1;

/// What a tree extension starts from, in one statement (`?1` the tenant):
///
/// - kind 0, the tree head row: `number` the size, `bytes` the last entry hash;
/// - kind 1, the stored tile `size >> (8·L + 8)` of every tile level `L`: `number` the level,
///   `idx` the index, `bytes` the tile (the caller keeps those that are an edge tile of `size`);
/// - kind 2, one row: `entries`, a JSON array of at most `?2` entries of the chain from entry
///   `max(size, 1)` on, each `[tenant, seq, time_us, actor, action, subject, payload,
///   hex(prev_hash), hex(hash)]`, and `number`, how many of them hold a column of another SQL
///   type than its table declares.
///
/// The entries come back as one value rather than a row each: a row crosses from SQLite's thread
/// to the runtime with every column copied, which took about 10 µs per entry, most of a
/// checkpoint's time (`BENCHMARKS.md`). The SQL types are counted so that a column of another
/// type (which SQLite's dynamic typing lets through once the triggers are dropped) is refused
/// rather than read as text; the casts only keep such a row from failing the whole statement
/// (JSON cannot hold a BLOB) before it is counted.
const EXTENSION_READ: &str = "
    SELECT 0 AS kind, size AS number, NULL AS idx, last_entry_hash AS bytes, NULL AS entries
    FROM audit_tree_heads WHERE tenant = ?1
    UNION ALL
    SELECT 1, tiles.level, tiles.idx, tiles.hashes, NULL
    FROM (VALUES (0), (1), (2), (3), (4), (5), (6), (7)) AS levels
    JOIN audit_tree_tiles AS tiles ON tiles.tenant = ?1 AND tiles.level = levels.column1
        AND tiles.idx = (coalesce((SELECT size FROM audit_tree_heads WHERE tenant = ?1), 0)
                         >> (8 * levels.column1 + 8))
    UNION ALL
    SELECT 2, count(*) - coalesce(sum(typeof(tenant) = 'text' AND typeof(seq) = 'integer'
            AND typeof(time_us) = 'integer' AND typeof(actor) = 'text' AND typeof(action) = 'text'
            AND typeof(subject) = 'text' AND typeof(payload) = 'text' AND typeof(prev_hash) = 'blob'
            AND typeof(hash) = 'blob'), 0), NULL, NULL,
        json_group_array(json_array(
            CAST(tenant AS TEXT), CAST(seq AS INTEGER), CAST(time_us AS INTEGER), CAST(actor AS TEXT),
            CAST(action AS TEXT), CAST(subject AS TEXT), CAST(payload AS TEXT), hex(prev_hash),
            hex(hash)))
    FROM (
        SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
        FROM audit_entries
        WHERE tenant = ?1
          AND seq >= max(coalesce((SELECT size FROM audit_tree_heads WHERE tenant = ?1), 0), 1)
        ORDER BY seq LIMIT ?2)";

/// SQLite's result code for a string or BLOB longer than its length limit.
const SQLITE_TOOBIG: &str = "18";

/// One entry of [`EXTENSION_READ`]'s JSON array.
type JsonEntry = (String, i64, i64, String, String, String, String, String, String);

/// The entries of [`EXTENSION_READ`]'s JSON array, in `seq` order.
fn entries_from_json(tenant: &TenantId, json: &str) -> Result<Vec<crate::AuditEntry>> {
    let rows: Vec<JsonEntry> = serde_json::from_str(json).map_err(storage)?;
    let mut entries = Vec::with_capacity(rows.len());
    for (row_tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash) in rows {
        let corrupt = |reason| Error::CorruptEntry { tenant: tenant.to_string(), seq, reason };
        let prev_hash = from_hex(&prev_hash).ok_or_else(|| corrupt("prev_hash is not hex"))?;
        let hash = from_hex(&hash).ok_or_else(|| corrupt("hash is not hex"))?;
        entries.push(crate::entry_from_parts(crate::RowParts {
            tenant: row_tenant,
            seq,
            time_us,
            actor,
            action,
            subject,
            payload,
            prev_hash,
            hash,
        })?);
    }
    // A compound SELECT's order is not promised; push_entries refuses any gap or repeat.
    entries.sort_by_key(|entry| entry.seq);
    Ok(entries)
}

/// The bytes of SQLite's `hex()` output.
fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len()).step_by(2).map(|at| u8::from_str_radix(text.get(at..at + 2)?, 16).ok()).collect()
}

impl MerkleStore for SqliteAuditChain {
    async fn extend_tree(&self, tenant: &TenantId, max_entries: u32) -> Result<TreeState> {
        Ok(self.extend_tree_reported(tenant, max_entries).await?.0)
    }

    async fn extend_tree_reported(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> Result<(TreeState, Option<TreeExtension>)> {
        // BEGIN IMMEDIATE takes the write lock first: extenders of one database serialize.
        let mut tx = self.begin().await?;
        // One statement reads what the extension starts from: the tree head, the stored tiles at
        // its right edge and the chain's entries from entry `size` on (the checkpointer checks
        // that the new entries chain on from the last leaf it signed). Under the write lock, so
        // the three are one consistent state.
        //
        // The entries' JSON value is bounded by SQLite's length limit (1e9 bytes by default, or
        // less where the host lowered it), which EXTEND_BATCH entries of large payloads exceed
        // (a payload of 64 KiB of quotes or backslashes doubles when quoted again): on
        // SQLITE_TOOBIG the read is retried with a sixteenth as many entries, down to one new entry, so
        // the tree still extends in smaller steps instead of failing on every run.
        let mut limit = i64::from(max_entries) + 1;
        let rows = loop {
            match sqlx::query(EXTENSION_READ).bind(tenant.as_str()).bind(limit).fetch_all(&mut *tx).await {
                Ok(rows) => break rows,
                Err(sqlx::Error::Database(error))
                    if error.code().as_deref() == Some(SQLITE_TOOBIG) && limit > 2 =>
                {
                    limit = (limit / 16).max(2);
                }
                Err(error) => return Err(storage(error)),
            }
        };
        let mut current = TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO };
        let mut held_edges = Vec::new();
        let mut entries = Vec::new();
        for row in &rows {
            let kind: i64 = row.try_get("kind").map_err(storage)?;
            match kind {
                HEAD_ROW => {
                    let size: i64 = row.try_get("number").map_err(storage)?;
                    let hash: Vec<u8> = row.try_get("bytes").map_err(storage)?;
                    current = super::state_from_parts(tenant, size, &hash)?;
                }
                EDGE_ROW => {
                    let level: i64 = row.try_get("number").map_err(storage)?;
                    let index: i64 = row.try_get("idx").map_err(storage)?;
                    let hashes: Vec<u8> = row.try_get("bytes").map_err(storage)?;
                    held_edges.push((super::tile_key_from_parts(tenant, level, index)?, hashes));
                }
                _ => {
                    let mistyped: i64 = row.try_get("number").map_err(storage)?;
                    if mistyped != 0 {
                        return Err(Error::CorruptTree {
                            tenant: tenant.to_string(),
                            reason: "an entry holds a column of another SQL type than its table declares",
                        });
                    }
                    let json: String = row.try_get("entries").map_err(storage)?;
                    entries = entries_from_json(tenant, &json)?;
                }
            }
        }
        let (previous, entries) = split_previous(&current, entries, max_entries);
        if entries.is_empty() {
            return Ok((current, None));
        }
        // The statement read the tile `size >> (8·L + 8)` of every level; only the partial ones
        // of the tree of `size` leaves are its edge.
        let edge_keys: Vec<TileKey> = edge_tiles(current.size).into_iter().map(|(key, _)| key).collect();
        let edges: BTreeMap<TileKey, Vec<u8>> =
            held_edges.into_iter().filter(|(key, _)| edge_keys.contains(key)).collect();
        let extension = build_extension(tenant, current, previous, edges, &entries)?;
        // Every written tile and the new head in one round trip (two statements, numbered
        // parameters shared: ?1 the tenant, ?2 and ?3 the head, then three per tile).
        let mut statement = String::from(
            "INSERT INTO audit_tree_heads (tenant, size, last_entry_hash) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant) DO UPDATE SET size = excluded.size, last_entry_hash = excluded.last_entry_hash;
             INSERT INTO audit_tree_tiles (tenant, level, idx, hashes) VALUES ",
        );
        for position in 0..extension.written.len() {
            let first = 4 + 3 * position;
            if position > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&format!("(?1, ?{first}, ?{}, ?{})", first + 1, first + 2));
        }
        statement.push_str(" ON CONFLICT (tenant, level, idx) DO UPDATE SET hashes = excluded.hashes");
        let mut write = sqlx::query(&statement)
            .bind(tenant.as_str())
            .bind(db_size(extension.after.size))
            .bind(extension.after.last_entry_hash.as_bytes().as_slice());
        for (key, bytes) in &extension.written {
            write = write.bind(i64::from(key.level)).bind(db_size(key.index)).bind(bytes.as_slice());
        }
        write.execute(&mut *tx).await.map_err(storage)?;
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
            "SELECT note, signed_us FROM audit_checkpoints WHERE tenant = ?1 ORDER BY size DESC LIMIT 1",
        )
        .bind(tenant.as_str())
        .fetch_optional(self.pool())
        .await
        .map_err(storage)?;
        row.map(|row| checkpoint_from_row(tenant, &row)).transpose()
    }

    async fn checkpoint_at(&self, tenant: &TenantId, size: u64) -> Result<Option<SignedCheckpoint>> {
        let row =
            sqlx::query("SELECT note, signed_us FROM audit_checkpoints WHERE tenant = ?1 AND size = ?2")
                .bind(tenant.as_str())
                .bind(db_size(size))
                .fetch_optional(self.pool())
                .await
                .map_err(storage)?;
        row.map(|row| checkpoint_from_row(tenant, &row)).transpose()
    }

    async fn record_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<SignedCheckpoint> {
        Ok(self.record_checkpoint_and_latest(checkpoint).await?.0)
    }

    async fn record_checkpoint_and_latest(
        &self,
        checkpoint: &SignedCheckpoint,
    ) -> Result<(SignedCheckpoint, SignedCheckpoint)> {
        // Two statements in one round trip: the write-once insert, then the row now held for this
        // size (ours, or one recorded before it) and the largest row, read after the insert.
        let rows = sqlx::query(
            "INSERT INTO audit_checkpoints (tenant, size, root, note, signed_us) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (tenant, size) DO NOTHING;
             SELECT size, note, signed_us FROM audit_checkpoints WHERE tenant = ?1 AND (size = ?2
                 OR size = (SELECT max(size) FROM audit_checkpoints WHERE tenant = ?1))",
        )
        .bind(checkpoint.tenant.as_str())
        .bind(db_size(checkpoint.size()))
        .bind(checkpoint.root().as_bytes().as_slice())
        .bind(&checkpoint.note)
        .bind(checkpoint.signed_us)
        .fetch_all(self.pool())
        .await
        .map_err(storage)?;
        let vanished = || Error::CorruptTree {
            tenant: checkpoint.tenant.to_string(),
            reason: "a recorded checkpoint vanished",
        };
        let mut recorded = None;
        let mut latest: Option<(i64, SignedCheckpoint)> = None;
        for row in &rows {
            let size: i64 = row.try_get("size").map_err(storage)?;
            let read = checkpoint_from_row(&checkpoint.tenant, row)?;
            if size == db_size(checkpoint.size()) {
                recorded = Some(read.clone());
            }
            if latest.as_ref().is_none_or(|(largest, _)| size > *largest) {
                latest = Some((size, read));
            }
        }
        let recorded = recorded.ok_or_else(vanished)?;
        let latest = latest.map(|(_, latest)| latest).ok_or_else(vanished)?;
        Ok((recorded, latest))
    }
}
