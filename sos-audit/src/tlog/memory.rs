//! The in-memory Merkle store of [`MemoryAuditStore`].

use std::collections::BTreeMap;

use sos_core::{Sha256Digest, TenantId};

use super::{
    MerkleStore, SignedCheckpoint, StoredTiles, TileBuilder, TileKey, TreeState, corrupt_tree, edge_tiles,
    push_entries,
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
        let mut tlog = self.tlog.lock().await;
        let current = tlog
            .tenants
            .get(tenant)
            .map(|t| t.state)
            .unwrap_or(TreeState { size: 0, last_entry_hash: Sha256Digest::ZERO });
        let entries = self.read_page(tenant, current.size, max_entries).await?;
        if entries.is_empty() {
            return Ok(current);
        }
        let entry = tlog.tenants.entry(tenant.clone()).or_default();
        let edges: BTreeMap<TileKey, Vec<u8>> = edge_tiles(current.size)
            .into_iter()
            .filter_map(|(key, _)| entry.tiles.get(&key).map(|bytes| (key, bytes.clone())))
            .collect();
        let mut builder =
            TileBuilder::resume(current.size, &edges).map_err(|bad| corrupt_tree(tenant, bad))?;
        let mut state = current;
        push_entries(tenant, &mut state, &mut builder, &entries)?;
        entry.tiles.extend(builder.take_changed());
        entry.state = state;
        Ok(state)
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
