//! The in-memory registry.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sos_core::{Clock, SystemClock, TenantId};

use super::{IdentityRegistry, Registration, RegistryEntry, resolve_existing};
use crate::error::Result;
use crate::vector::{AgentName, AgentRole};

/// A registry held in memory, for tests and single-process hosts. One mutex serialises
/// appends, so a name is arbitrated under the same lock that extends the chain.
#[derive(Debug)]
pub struct MemoryRegistry {
    clock: Arc<dyn Clock>,
    chains: Mutex<HashMap<TenantId, Vec<RegistryEntry>>>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(Arc::new(SystemClock))
    }
}

impl MemoryRegistry {
    /// An empty registry stamping entries with `clock`.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self { clock, chains: Mutex::new(HashMap::new()) }
    }
}

impl IdentityRegistry for MemoryRegistry {
    async fn register(&self, tenant: &TenantId, name: &AgentName, role: &AgentRole) -> Result<Registration> {
        // The guard never crosses an await: this body has none.
        let mut chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        let chain = chains.entry(tenant.clone()).or_default();
        if let Some(existing) = chain.iter().find(|entry| entry.name == *name) {
            return resolve_existing(existing.clone(), role);
        }
        let prev = chain.last().map(|entry| (entry.seq, entry.hash));
        let entry = RegistryEntry::next(tenant, prev, name, role, self.clock.now());
        chain.push(entry.clone());
        Ok(Registration::Created(entry))
    }

    async fn lookup(&self, tenant: &TenantId, name: &AgentName) -> Result<Option<RegistryEntry>> {
        let chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(chains.get(tenant).and_then(|chain| chain.iter().find(|entry| entry.name == *name).cloned()))
    }

    async fn entries(&self, tenant: &TenantId) -> Result<Vec<RegistryEntry>> {
        let chains = self.chains.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(chains.get(tenant).cloned().unwrap_or_default())
    }
}
