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

/// How many times [`SqliteAuditChain::extend_tree_reported`] plans an extension from a snapshot
/// (no lock) and finds at the write lock that another extender moved the tree head meanwhile,
/// before it plans under the write lock instead (as before the two phases), so that a busy
/// database cannot starve an extender.
const SNAPSHOT_ATTEMPTS: usize = 2;

/// Reads what an extension of `tenant`'s tree starts from ([`EXTENSION_READ`], one statement, so
/// one consistent state of the database: under WAL a statement reads one snapshot, in or out of a
/// transaction) and builds the extension from it: the new entries are checked to chain on and
/// hashed here. Returns the tree state read and the extension, `None` when no entry is pending.
/// Writes nothing.
async fn plan_extension(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    max_entries: u32,
) -> Result<(TreeState, Option<TreeExtension>)> {
    // The entries' JSON value is bounded by SQLite's length limit (1e9 bytes by default, or
    // less where the host lowered it), which EXTEND_BATCH entries of large payloads exceed
    // (a payload of 64 KiB of quotes or backslashes doubles when quoted again): on
    // SQLITE_TOOBIG the read is retried with a sixteenth as many entries, down to one new entry, so
    // the tree still extends in smaller steps instead of failing on every run.
    let mut limit = i64::from(max_entries) + 1;
    let rows = loop {
        match sqlx::query(EXTENSION_READ).bind(tenant.as_str()).bind(limit).fetch_all(&mut *conn).await {
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
    Ok((current, Some(extension)))
}

/// Writes every tile `extension` wrote and its new tree head in one round trip (two statements,
/// numbered parameters shared: ?1 the tenant, ?2 and ?3 the head, then three per tile). The caller
/// holds the write lock and has checked that the stored head is still `extension.before`.
async fn write_extension(
    conn: &mut SqliteConnection,
    tenant: &TenantId,
    extension: &TreeExtension,
) -> Result<()> {
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
    write.execute(&mut *conn).await.map_err(storage)?;
    Ok(())
}

impl SqliteAuditChain {
    /// Phase 1 of a tree extension: plans it from one snapshot of the database, without the
    /// write lock, so that appends go on while the pending entries are read and hashed.
    pub(crate) async fn plan_extension_from_snapshot(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> Result<(TreeState, Option<TreeExtension>)> {
        let mut conn = self.pool().acquire().await.map_err(storage)?;
        plan_extension(&mut conn, tenant, max_entries).await
    }

    /// Phase 2: under the write lock, writes a planned extension only if the stored tree head is
    /// still the one it was planned from (same size and last entry hash), and commits. Returns
    /// whether it wrote; `false` means that another extender moved the head since the snapshot,
    /// and nothing was written (the tiles were computed from a head that is no longer stored).
    ///
    /// The head decides: an extender writes tiles only together with a larger head, in one
    /// transaction, so an unmoved head means that no extension committed since the snapshot and
    /// the tiles it read are the stored ones. Entries are append-only (the chain's triggers), so
    /// the entries it read are still the chain's (a rewrite with the triggers dropped is refused
    /// by the checkpointer's checks, as when it happens right after a commit).
    pub(crate) async fn commit_planned_extension(
        &self,
        tenant: &TenantId,
        extension: &TreeExtension,
    ) -> Result<bool> {
        let mut tx = self.begin().await?;
        if read_state(&mut tx, tenant).await? != extension.before {
            tx.rollback().await.map_err(storage)?;
            return Ok(false);
        }
        write_extension(&mut tx, tenant, extension).await?;
        tx.commit().await.map_err(storage)?;
        Ok(true)
    }
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
        // Two phases, so that SQLite's single write lock is held for a head check and a few tile
        // writes, not for reading and hashing every pending entry (appends arriving meanwhile
        // wait for the lock in SQLite's sleeping busy handler; `BENCHMARKS.md`): the extension is
        // planned from a snapshot, then written under the lock only if the tree head has not
        // moved. A dropped future or a failure between or during the phases writes nothing (the
        // transaction rolls back), and the next run plans again.
        for _ in 0..SNAPSHOT_ATTEMPTS {
            let (state, extension) = self.plan_extension_from_snapshot(tenant, max_entries).await?;
            let Some(extension) = extension else { return Ok((state, None)) };
            if self.commit_planned_extension(tenant, &extension).await? {
                return Ok((extension.after, Some(extension)));
            }
            // Another extender (a concurrent checkpointer) moved the head: plan again from it.
        }
        // Still racing: plan under the write lock (BEGIN IMMEDIATE), where nothing can move.
        let mut tx = self.begin().await?;
        let (state, extension) = plan_extension(&mut tx, tenant, max_entries).await?;
        let Some(extension) = extension else { return Ok((state, None)) };
        write_extension(&mut tx, tenant, &extension).await?;
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

/// The race of the two-phase extension (snapshot, then the write lock): a stale plan is never
/// written, no entry is skipped, racing checkpointers agree, and a crash between or during the
/// phases leaves a state the next run completes.
#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use sos_core::TenantId;

    use super::{plan_extension, write_extension};
    use crate::note::NoteSigner;
    use crate::tlog::{Checkpointer, EXTEND_BATCH, MerkleStore, SignedCheckpoint, TileKey, TreeState};
    use crate::{AuditStore, NewEntry, SqliteAuditChain};

    const LOG: &str = "example.com/sos-audit";

    fn acme() -> TenantId {
        TenantId::new("acme").expect("a valid tenant id")
    }

    async fn database() -> (SqliteAuditChain, sos_testkit::SqliteTestDatabase) {
        let database = sos_testkit::SqliteTestDatabase::new(&[&crate::sqlite_migrator()]).await;
        (SqliteAuditChain::new(database.pool().clone()), database)
    }

    async fn append(chain: &SqliteAuditChain, from: u64, count: u64) {
        for n in from..from + count {
            let entry =
                NewEntry::new(acme(), "alice", "edit", format!("doc/{n}"), &serde_json::json!({ "n": n }))
                    .expect("valid entry");
            chain.append(entry).await.expect("append");
        }
    }

    fn checkpointer(chain: &SqliteAuditChain, key: &str) -> Checkpointer<SqliteAuditChain> {
        Checkpointer::new(chain.clone(), NoteSigner::from_key_string(key).expect("key"))
    }

    /// Every checkpoint is recomputed from the chain, and entries up to `size` prove against the
    /// latest one: the tree skipped no entry and signed nothing but the chain.
    async fn assert_log_is_whole(
        chain: &SqliteAuditChain,
        key: &str,
        checkpoints: &[SignedCheckpoint],
        size: u64,
    ) {
        let bodies: Vec<_> = checkpoints.iter().map(|signed| signed.checkpoint.clone()).collect();
        let findings = crate::tlog::verify_checkpoints(chain, &acme(), &bodies).await.expect("verify");
        assert!(findings.is_empty(), "the chain gives every signed root: {findings:?}");
        assert_eq!(chain.tree_state(&acme()).await.expect("state").size, size);
        let verifier = NoteSigner::from_key_string(key).expect("key").verifier();
        // A sample of entries (every leaf position class of the two levels, the last one): proving
        // all of them takes minutes in a debug build.
        for seq in (1..=size).step_by(37).chain([size]) {
            let proof = crate::tlog::prove(chain, &acme(), seq, None).await.expect("proof");
            assert_eq!(proof.verify(&verifier).expect("the proof verifies").size, size);
        }
    }

    #[tokio::test]
    async fn sqlite_stale_plan_is_not_written_after_an_append_and_a_checkpoint() {
        let (chain, _database) = database().await;
        let key = NoteSigner::generate(LOG).expect("key").to_key_string();
        append(&chain, 0, 10).await;
        let (_, planned) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
        let planned = planned.expect("ten entries are pending");
        assert_eq!((planned.before.size, planned.after.size), (0, 10));

        // Between the snapshot and the write lock: an append, and another checkpointer extends
        // the tree past the snapshot and signs it.
        append(&chain, 10, 5).await;
        let other = checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
        assert_eq!(other.size(), 15);
        let edge = [TileKey { level: 0, index: 0 }];
        let tiles_before = chain.read_tiles(&acme(), &edge).await.expect("tiles");

        assert!(
            !chain.commit_planned_extension(&acme(), &planned).await.expect("commit"),
            "a plan from a head that moved is refused"
        );
        assert_eq!(chain.tree_state(&acme()).await.expect("state").size, 15, "the head did not go back");
        assert_eq!(chain.read_tiles(&acme(), &edge).await.expect("tiles"), tiles_before, "no stale tile");
        assert_eq!(crate::tlog::root_at(&chain, &acme(), 15).await.expect("root"), other.root());

        append(&chain, 15, 3).await;
        let next = checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
        assert_eq!(next.size(), 18);
        assert_log_is_whole(&chain, &key, &[other, next], 18).await;
    }

    #[tokio::test]
    async fn sqlite_plan_of_an_unmoved_head_is_written_and_later_entries_are_not_skipped() {
        let (chain, _database) = database().await;
        let key = NoteSigner::generate(LOG).expect("key").to_key_string();
        append(&chain, 0, 10).await;
        let (_, planned) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
        let planned = planned.expect("ten entries are pending");
        // Appends do not move the tree head: the plan still extends the stored tree.
        append(&chain, 10, 5).await;
        assert!(chain.commit_planned_extension(&acme(), &planned).await.expect("commit"));
        let state = chain.tree_state(&acme()).await.expect("state");
        assert_eq!(state, planned.after);
        assert_eq!(state.size, 10, "the plan covers exactly the entries of its snapshot");
        let signed = checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
        assert_eq!(signed.size(), 15, "the entries appended after the snapshot are signed next");
        assert_log_is_whole(&chain, &key, &[signed], 15).await;
    }

    #[tokio::test]
    async fn sqlite_two_plans_from_one_head_write_once() {
        let (chain, _database) = database().await;
        append(&chain, 0, 300).await;
        let (_, first) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
        let (_, second) = chain.plan_extension_from_snapshot(&acme(), 100).await.expect("plan");
        let (first, second) = (first.expect("pending"), second.expect("pending"));
        assert!(chain.commit_planned_extension(&acme(), &second).await.expect("commit"));
        assert!(
            !chain.commit_planned_extension(&acme(), &first).await.expect("commit"),
            "the head moved to 100: the plan from 0 is stale"
        );
        assert_eq!(chain.tree_state(&acme()).await.expect("state").size, 100);
        let (state, extension) = chain.extend_tree_reported(&acme(), EXTEND_BATCH).await.expect("extend");
        let extension = extension.expect("200 entries were pending");
        assert_eq!((extension.before.size, state.size), (100, 300));
        let mut reference = crate::merkle::MemoryTree::new();
        for entry in chain.read_page(&acme(), 0, 300).await.expect("read") {
            reference.push(entry.hash.as_bytes());
        }
        assert_eq!(crate::tlog::root_at(&chain, &acme(), 300).await.expect("root"), reference.root());
    }

    #[tokio::test]
    async fn sqlite_extension_plans_without_the_write_lock() {
        let (chain, _database) = database().await;
        append(&chain, 0, 10).await;
        // Another writer (an append in a host transaction) holds the write lock: planning reads
        // and hashes the pending entries meanwhile instead of waiting for it.
        let held = chain.begin().await.expect("write lock");
        let planned = tokio::time::timeout(
            Duration::from_secs(2),
            chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH),
        )
        .await
        .expect("planning does not wait for the write lock")
        .expect("plan");
        assert_eq!(planned.1.expect("pending").after.size, 10);
        drop(held);
        assert_eq!(chain.extend_tree(&acme(), EXTEND_BATCH).await.expect("extend").size, 10);
    }

    #[tokio::test]
    async fn sqlite_extension_crash_between_or_during_the_phases_is_redone() {
        let (chain, _database) = database().await;
        let key = NoteSigner::generate(LOG).expect("key").to_key_string();
        append(&chain, 0, 260).await;
        let empty = TreeState { size: 0, last_entry_hash: sos_core::Sha256Digest::ZERO };
        let all_tiles =
            [TileKey { level: 0, index: 0 }, TileKey { level: 0, index: 1 }, TileKey { level: 1, index: 0 }];

        // A crash between the phases: the plan is dropped, nothing was written.
        let (_, planned) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
        let planned = planned.expect("pending");
        drop(planned);
        assert_eq!(chain.tree_state(&acme()).await.expect("state"), empty);

        // A transaction killed after its writes, before its commit: rolled back whole.
        let mut conn = chain.pool().acquire().await.expect("connection");
        let (_, planned) = plan_extension(&mut conn, &acme(), EXTEND_BATCH).await.expect("plan");
        let planned = planned.expect("pending");
        drop(conn);
        {
            let mut tx = chain.begin().await.expect("write lock");
            write_extension(&mut tx, &acme(), &planned).await.expect("write");
            // Dropped without commit, as when the task is cancelled or the process dies.
        }
        assert_eq!(chain.tree_state(&acme()).await.expect("state"), empty);
        assert!(chain.read_tiles(&acme(), &all_tiles).await.expect("tiles").is_empty(), "no tile survived");

        // The next run completes the tree from whatever is stored, and signs it.
        let signed = checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
        assert_eq!(signed.size(), 260);
        assert_log_is_whole(&chain, &key, &[signed], 260).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_two_checkpointers_race_on_one_database() {
        let (chain, database) = database().await;
        // A second pool on the same file: another process's checkpointer.
        let other = SqliteAuditChain::new(sos_testkit::sqlite_pool(database.path(), 4).await);
        let key = NoteSigner::generate(LOG).expect("key").to_key_string();
        append(&chain, 0, 20).await;
        let appending = Arc::new(AtomicBool::new(true));
        let appender = {
            let chain = chain.clone();
            let appending = Arc::clone(&appending);
            tokio::spawn(async move {
                append(&chain, 20, 400).await;
                appending.store(false, Ordering::SeqCst);
            })
        };
        let mut racers = Vec::new();
        for store in [chain.clone(), other.clone(), chain.clone(), other] {
            let checkpointer = checkpointer(&store, &key);
            let appending = Arc::clone(&appending);
            racers.push(tokio::spawn(async move {
                let mut signed = Vec::new();
                while appending.load(Ordering::SeqCst) {
                    signed.push(
                        checkpointer.checkpoint_now(&acme()).await.expect("every racing checkpoint succeeds"),
                    );
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                signed
            }));
        }
        appender.await.expect("appender");
        let mut checkpoints = Vec::new();
        for racer in racers {
            checkpoints.extend(racer.await.expect("racer"));
        }
        checkpoints.push(checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint"));
        checkpoints.sort_by_key(SignedCheckpoint::size);
        for pair in checkpoints.windows(2) {
            if pair[0].size() == pair[1].size() {
                assert_eq!(pair[0].note, pair[1].note, "one signed head per size");
            }
        }
        checkpoints.dedup_by_key(|signed| signed.size());
        assert!(checkpoints.len() > 2, "the checkpointers signed while the appender ran");
        assert_eq!(checkpoints.last().expect("one").size(), 420);
        assert_log_is_whole(&chain, &key, &checkpoints, 420).await;
    }

    /// Review of the two phases: a database administrator who rewrites a stored tile between
    /// the snapshot and the write lock leaves the head as it was, so the planned extension is
    /// written; the checkpointer must still refuse to sign, exactly as for a rewrite after the
    /// commit (the upper tile holds the hash of the first 256 leaves, which the signed root
    /// covers and this extension does not rewrite).
    #[tokio::test]
    async fn sqlite_tile_rewritten_between_the_phases_is_never_signed() {
        let (chain, database) = database().await;
        let key = NoteSigner::generate(LOG).expect("key").to_key_string();
        append(&chain, 0, 266).await;
        let signed = checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
        assert_eq!(signed.size(), 266);
        append(&chain, 266, 10).await;
        let (_, planned) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
        let planned = planned.expect("ten entries are pending");
        assert!(
            planned.written.iter().all(|(key, _)| *key != TileKey { level: 1, index: 0 }),
            "the extension does not rewrite the tile under attack"
        );

        let rewritten = sqlx::query(
            "UPDATE audit_tree_tiles SET hashes = randomblob(32) WHERE tenant = 'acme' AND level = 1 AND idx = 0",
        )
        .execute(database.pool())
        .await
        .expect("rewrite");
        assert_eq!(rewritten.rows_affected(), 1, "the administrator rewrote one tile");

        assert!(
            chain.commit_planned_extension(&acme(), &planned).await.expect("commit"),
            "the head did not move, so the plan is written"
        );
        let refused = checkpointer(&chain, &key).checkpoint_now(&acme()).await;
        assert!(
            matches!(refused, Err(crate::Error::Forked { .. } | crate::Error::RewrittenTree { .. })),
            "a tree whose stored hashes no longer give the signed root is never signed: {refused:?}"
        );
        assert_eq!(
            chain.latest_checkpoint(&acme()).await.expect("latest").expect("one").size(),
            266,
            "no checkpoint was recorded over the rewritten tree"
        );
    }

    /// Review of the two phases: the head row rewritten between them (same size, another last
    /// entry hash, or deleted) is a moved head, and the plan is not written.
    #[tokio::test]
    async fn sqlite_head_rewritten_between_the_phases_refuses_the_plan() {
        for rewrite in [
            "UPDATE audit_tree_heads SET last_entry_hash = randomblob(32) WHERE tenant = 'acme'",
            "DELETE FROM audit_tree_heads WHERE tenant = 'acme'",
        ] {
            let (chain, database) = database().await;
            let key = NoteSigner::generate(LOG).expect("key").to_key_string();
            append(&chain, 0, 5).await;
            checkpointer(&chain, &key).checkpoint_now(&acme()).await.expect("checkpoint");
            append(&chain, 5, 5).await;
            let (_, planned) = chain.plan_extension_from_snapshot(&acme(), EXTEND_BATCH).await.expect("plan");
            let planned = planned.expect("five entries are pending");
            let tiles_before =
                chain.read_tiles(&acme(), &[TileKey { level: 0, index: 0 }]).await.expect("tiles");
            let changed = sqlx::query(rewrite).execute(database.pool()).await.expect("rewrite");
            assert_eq!(changed.rows_affected(), 1, "{rewrite}");
            let after_rewrite = chain.tree_state(&acme()).await.expect("state");
            assert!(
                !chain.commit_planned_extension(&acme(), &planned).await.expect("commit"),
                "a rewritten head is a moved head: {rewrite}"
            );
            assert_eq!(
                chain.tree_state(&acme()).await.expect("state"),
                after_rewrite,
                "nothing written: {rewrite}"
            );
            assert_eq!(
                chain.read_tiles(&acme(), &[TileKey { level: 0, index: 0 }]).await.expect("tiles"),
                tiles_before,
                "no tile written: {rewrite}"
            );
        }
    }
}
