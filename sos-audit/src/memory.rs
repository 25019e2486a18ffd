//! The in-memory store.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use sos_core::{Clock, Sha256Digest, SystemClock, TenantId};

use crate::entry::{AuditEntry, ChainHead, NewEntry};
use crate::error::Result;
use crate::store::AuditStore;

/// Chains held in memory, for tests, examples and single-process hosts that export their chain.
///
/// ```
/// use sos_audit::{AuditStore, MemoryAuditStore, NewEntry};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = MemoryAuditStore::new();
/// let tenant: sos_core::TenantId = "acme".parse()?;
/// let entry = store
///     .append(NewEntry::new(tenant.clone(), "alice", "login", "", &serde_json::json!({}))?)
///     .await?;
/// assert_eq!(entry.seq, 1);
/// assert_eq!(store.head(&tenant).await?, Some(entry.as_head()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryAuditStore {
    state: Arc<Mutex<State>>,
    clock: Arc<dyn Clock>,
    /// The Merkle tiles and checkpoints (`crate::tlog`), behind an async lock because extending
    /// the tree reads the chain while holding it.
    pub(crate) tlog: Arc<tokio::sync::Mutex<crate::tlog::MemoryTlog>>,
}

#[derive(Debug, Default)]
struct State {
    chains: BTreeMap<TenantId, Vec<AuditEntry>>,
    /// Reused for every hash preimage, so an append allocates only the stored entry.
    scratch: Vec<u8>,
}

impl MemoryAuditStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self { state: Arc::default(), clock: Arc::new(SystemClock), tlog: Arc::default() }
    }

    /// Uses `clock` for entry times.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Appends without an async runtime (what [`AuditStore::append`] does).
    ///
    /// # Errors
    ///
    /// As [`AuditStore::append`].
    pub fn append_now(&self, entry: NewEntry) -> Result<AuditEntry> {
        let time = self.clock.now();
        // The guarded map is only ever changed by whole pushes, so it is valid even if a holder
        // panicked.
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let State { chains, scratch } = &mut *state;
        // Looked up by reference so that the common case does not clone the tenant id.
        let (seq, prev_hash) = chains
            .get(entry.tenant())
            .and_then(|chain| chain.last())
            .map_or((1, Sha256Digest::ZERO), |last| (last.seq + 1, last.hash));
        let stored = entry.into_entry_with(seq, time, prev_hash, scratch)?;
        match chains.get_mut(&stored.tenant) {
            Some(chain) => chain.push(stored.clone()),
            None => {
                chains.insert(stored.tenant.clone(), vec![stored.clone()]);
            }
        }
        Ok(stored)
    }
}

impl Default for MemoryAuditStore {
    fn default() -> Self {
        Self::new()
    }
}

impl AuditStore for MemoryAuditStore {
    async fn append(&self, entry: NewEntry) -> Result<AuditEntry> {
        self.append_now(entry)
    }

    async fn head(&self, tenant: &TenantId) -> Result<Option<ChainHead>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let chains = &state.chains;
        Ok(chains.get(tenant).and_then(|chain| chain.last()).map(AuditEntry::as_head))
    }

    async fn read_page(&self, tenant: &TenantId, after_seq: u64, limit: u32) -> Result<Vec<AuditEntry>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let chains = &state.chains;
        let Some(chain) = chains.get(tenant) else { return Ok(Vec::new()) };
        // Sequence numbers are 1-based and gap-free here, so seq n sits at index n - 1.
        let start = usize::try_from(after_seq).unwrap_or(usize::MAX).min(chain.len());
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        Ok(chain[start..].iter().take(limit).cloned().collect())
    }

    async fn tenants(&self) -> Result<Vec<TenantId>> {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let chains = &state.chains;
        Ok(chains.keys().cloned().collect())
    }
}
