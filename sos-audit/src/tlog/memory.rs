//! The in-memory Merkle store of [`MemoryAuditStore`].

use std::collections::BTreeMap;

use sos_core::{Sha256Digest, TenantId};

use super::{
    MerkleStore, SignedCheckpoint, StoredTiles, TileKey, TreeExtension, TreeState, build_extension,
    edge_tiles, split_previous,
};
use crate::MemoryAuditStore;
use crate::error::Result;
use crate::store::AuditStore;

/// Per-tenant tiles and checkpoints held by a [`MemoryAuditStore`].
#[derive(Debug, Default)]
pub(crate) struct MemoryTlog {
    tenants: BTreeMap<TenantId, TenantTlog>,
}

#[derive(Debug)]
struct TenantTlog {
    state: TreeState,
    tiles: BTreeMap<TileKey, Vec<u8>>,
    checkpoints: BTreeMap<u64, SignedCheckpoint>,
}

impl Default for TenantTlog {
    fn default() -> Self {
        Self {
            state: TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO },
            tiles: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
        }
    }
}

impl MerkleStore for MemoryAuditStore {
    async fn extend_tree(&self, tenant: &TenantId, max_entries: u32) -> Result<TreeState> {
        Ok(self.extend_tree_reported(tenant, max_entries).await?.0)
    }

    async fn extend_tree_reported(
        &self,
        tenant: &TenantId,
        max_entries: u32,
    ) -> Result<(TreeState, Option<TreeExtension>)> {
        let mut tlog = self.tlog.lock().await;
        let current = tlog
            .tenants
            .get(tenant)
            .map(|t| t.state)
            .unwrap_or(TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO });
        // From entry `size` on (when there is one): the checkpointer checks that the new entries
        // chain on from the last leaf it signed.
        let extra = u32::from(current.size > 0);
        let read = self
            .read_page(tenant, current.size - u64::from(extra), max_entries.saturating_add(extra))
            .await?;
        let (previous, entries) = split_previous(&current, read, max_entries);
        if entries.is_empty() {
            return Ok((current, None));
        }
        let entry = tlog.tenants.entry(tenant.clone()).or_default();
        let edges: BTreeMap<TileKey, Vec<u8>> = edge_tiles(current.size)
            .into_iter()
            .filter_map(|(key, _)| entry.tiles.get(&key).map(|bytes| (key, bytes.clone())))
            .collect();
        let extension = build_extension(tenant, current, previous, edges, &entries)?;
        entry.tiles.extend(extension.written.iter().cloned());
        entry.state = extension.after;
        Ok((extension.after, Some(extension)))
    }

    async fn tree_state(&self, tenant: &TenantId) -> Result<TreeState> {
        let tlog = self.tlog.lock().await;
        Ok(tlog
            .tenants
            .get(tenant)
            .map(|t| t.state)
            .unwrap_or(TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO }))
    }

    async fn read_tiles(&self, tenant: &TenantId, keys: &[TileKey]) -> Result<StoredTiles> {
        let tlog = self.tlog.lock().await;
        let Some(entry) = tlog.tenants.get(tenant) else { return Ok(Vec::new()) };
        Ok(keys.iter().filter_map(|key| entry.tiles.get(key).map(|bytes| (*key, bytes.clone()))).collect())
    }

    async fn latest_checkpoint(&self, tenant: &TenantId) -> Result<Option<SignedCheckpoint>> {
        let tlog = self.tlog.lock().await;
        Ok(tlog.tenants.get(tenant).and_then(|t| t.checkpoints.values().next_back().cloned()))
    }

    async fn checkpoint_at(&self, tenant: &TenantId, size: u64) -> Result<Option<SignedCheckpoint>> {
        let tlog = self.tlog.lock().await;
        Ok(tlog.tenants.get(tenant).and_then(|t| t.checkpoints.get(&size).cloned()))
    }

    async fn record_checkpoint(&self, checkpoint: &SignedCheckpoint) -> Result<SignedCheckpoint> {
        let mut tlog = self.tlog.lock().await;
        let entry = tlog.tenants.entry(checkpoint.tenant.clone()).or_default();
        Ok(entry.checkpoints.entry(checkpoint.size()).or_insert_with(|| checkpoint.clone()).clone())
    }
}
