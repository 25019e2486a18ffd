//! The in-memory store: two-phase mode for one process (tests, single-replica services).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sos_core::TenantId;

use super::{Claim, ClaimAnswer, ClaimRequest, ClaimStore, EventKey, answer_from};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
struct Record {
    body_hash: [u8; 32],
    state: &'static str,
    token: String,
    attempts: u32,
    lease_until: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    last_error: Option<String>,
}

/// Two-phase claims in a map behind a mutex. Clones share the same map.
///
/// Only deliveries within one process are deduplicated, and everything is lost on restart:
/// use it for tests and for services that run exactly one replica.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    records: Arc<Mutex<HashMap<EventKey, Record>>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records are held (for tests and metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The failure message recorded for `key`, if its last attempt failed.
    pub fn last_error(&self, key: &EventKey) -> Option<String> {
        self.lock().get(key).and_then(|record| record.last_error.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<EventKey, Record>> {
        // Every update below is a single assignment, so a panicking holder cannot leave a
        // half-written record behind.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn finish(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        state: &'static str,
        reason: Option<&str>,
    ) -> Result<()> {
        let mut records = self.lock();
        match records.get_mut(claim.key()) {
            Some(record) if record.token == claim.token() && record.state == "processing" => {
                record.state = state;
                record.updated_at = now;
                record.lease_until = now;
                record.last_error = reason.map(str::to_owned);
                Ok(())
            }
            _ => Err(Error::LeaseLost),
        }
    }
}

impl ClaimStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimAnswer> {
        let mut records = self.lock();
        let Some(record) = records.get_mut(request.key) else {
            let claim = Claim::fresh(request.key, 1);
            records.insert(
                request.key.clone(),
                Record {
                    body_hash: request.body_hash.to_bytes(),
                    state: "processing",
                    token: claim.token().to_owned(),
                    attempts: 1,
                    lease_until: request.lease_until,
                    updated_at: request.now,
                    last_error: None,
                },
            );
            return Ok(ClaimAnswer::Claimed(claim));
        };
        let same_body = record.body_hash == request.body_hash.to_bytes();
        let expired = record.state == "processing" && record.lease_until <= request.now;
        let reclaimable = record.state == "failed" && record.updated_at <= request.failed_reclaimable_before;
        if same_body && (expired || reclaimable) {
            let claim = Claim::fresh(request.key, record.attempts.saturating_add(1));
            record.state = "processing";
            record.token = claim.token().to_owned();
            record.attempts = claim.attempt();
            record.lease_until = request.lease_until;
            record.updated_at = request.now;
            return Ok(ClaimAnswer::Claimed(claim));
        }
        Ok(ClaimAnswer::Duplicate(answer_from(record.state, &record.body_hash, &request.body_hash)))
    }

    async fn complete(&self, claim: &Claim, now: DateTime<Utc>) -> Result<()> {
        self.finish(claim, now, "processed", None)
    }

    async fn fail(&self, claim: &Claim, now: DateTime<Utc>, reason: &str) -> Result<()> {
        self.finish(claim, now, "failed", Some(reason))
    }

    async fn purge_processed(&self, before: DateTime<Utc>) -> Result<u64> {
        let mut records = self.lock();
        let count = records.len();
        records.retain(|_, record| !(record.state == "processed" && record.updated_at < before));
        Ok((count - records.len()) as u64)
    }

    async fn purge_processed_of(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        let mut records = self.lock();
        let count = records.len();
        records.retain(|key, record| {
            !(key.tenant() == tenant && record.state == "processed" && record.updated_at < before)
        });
        Ok((count - records.len()) as u64)
    }
}
