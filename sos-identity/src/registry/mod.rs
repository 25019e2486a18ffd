//! The registry: a per-tenant hash chain of agent registrations.
//!
//! Registering appends an entry `(tenant, seq, name, role, vector, time, previous hash)` whose
//! hash commits to all of it. A name keeps its first role forever: registering it again with the
//! same role returns the existing entry, with another role is refused with
//! [`Error::RoleConflict`]. Each store arbitrates that with one insert against a
//! `UNIQUE (tenant, name)` constraint, never a check followed by an insert.

use std::future::Future;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sos_core::{DomainHasher, Sha256Digest, TenantId};

use crate::error::{Error, Result};
use crate::vector::{AgentName, AgentRole, IdentityVector};

mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use memory::MemoryRegistry;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresRegistry, postgres_migrator};
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteRegistry, sqlite_migrator};

/// The domain tag of an entry hash.
pub const ENTRY_HASH_TAG: &str = "sos-identity/registry-entry/v1";

/// One link of a tenant's registry chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryEntry {
    /// The tenant whose chain this is.
    pub tenant: TenantId,
    /// Position in the chain, from 1, without gaps.
    pub seq: u64,
    /// The agent's name.
    pub name: AgentName,
    /// The agent's role.
    pub role: AgentRole,
    /// The identity vector of (name, role).
    pub vector: IdentityVector,
    /// When the entry was appended (microsecond precision).
    pub registered_at: DateTime<Utc>,
    /// The hash of the previous entry, or all zeros for the first.
    pub prev_hash: Sha256Digest,
    /// This entry's hash, see [`RegistryEntry::compute_hash`].
    pub hash: Sha256Digest,
}

impl RegistryEntry {
    /// `DomainHasher("sos-identity/registry-entry/v1")` over tenant, seq (u64), name, role,
    /// vector (32 bytes), time (i64 microseconds since the Unix epoch) and previous hash.
    pub fn compute_hash(&self) -> Sha256Digest {
        let mut hasher = DomainHasher::new(ENTRY_HASH_TAG);
        // Every field is bounded far below the u32 length limit (tenant 64 bytes, name and role
        // 256 bytes, digests 32 bytes), so the fallible appends cannot fail.
        let _ = hasher.str_field(self.tenant.as_str());
        hasher.u64_field(self.seq);
        let _ = hasher.str_field(self.name.as_str());
        let _ = hasher.str_field(self.role.as_str());
        let _ = hasher.field(self.vector.as_bytes());
        hasher.i64_field(self.registered_at.timestamp_micros());
        let _ = hasher.field(self.prev_hash.as_bytes());
        hasher.finish()
    }

    /// Builds the next entry after `prev` (seq and previous hash), hashing it.
    pub(crate) fn next(
        tenant: &TenantId,
        prev: Option<(u64, Sha256Digest)>,
        name: &AgentName,
        role: &AgentRole,
        now: DateTime<Utc>,
    ) -> Self {
        let (prev_seq, prev_hash) = prev.unwrap_or((0, Sha256Digest::ZERO));
        let micros = now.timestamp_micros();
        let registered_at = DateTime::from_timestamp_micros(micros).unwrap_or(now);
        let mut entry = Self {
            tenant: tenant.clone(),
            seq: prev_seq + 1,
            name: name.clone(),
            role: role.clone(),
            vector: IdentityVector::of(name, role),
            registered_at,
            prev_hash,
            hash: Sha256Digest::ZERO,
        };
        entry.hash = entry.compute_hash();
        entry
    }
}

/// The outcome of a registration.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Registration {
    /// A new entry was appended.
    Created(RegistryEntry),
    /// The name was already registered with this role; nothing was appended.
    Existing(RegistryEntry),
}

impl Registration {
    /// The entry, new or existing.
    pub fn entry(&self) -> &RegistryEntry {
        match self {
            Self::Created(entry) | Self::Existing(entry) => entry,
        }
    }

    /// Whether this call appended the entry.
    pub fn is_created(&self) -> bool {
        matches!(self, Self::Created(_))
    }
}

/// A store of registry chains, one per tenant.
///
/// Implemented by [`MemoryRegistry`], `SqliteRegistry` (feature `sqlite`) and
/// `PostgresRegistry` (feature `postgres`); one behavioural test suite runs against all three.
pub trait IdentityRegistry: Send + Sync {
    /// Registers `name` with `role` under `tenant`.
    ///
    /// # Errors
    ///
    /// [`Error::RoleConflict`] when the name holds another role; [`Error::Storage`] when the
    /// backend fails.
    fn register(
        &self,
        tenant: &TenantId,
        name: &AgentName,
        role: &AgentRole,
    ) -> impl Future<Output = Result<Registration>> + Send;

    /// The entry of `name`, if registered.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::CorruptRow`].
    fn lookup(
        &self,
        tenant: &TenantId,
        name: &AgentName,
    ) -> impl Future<Output = Result<Option<RegistryEntry>>> + Send;

    /// The tenant's whole chain, in sequence order.
    ///
    /// # Errors
    ///
    /// [`Error::Storage`] or [`Error::CorruptRow`]; [`Error::Tampered`] when an entry before an
    /// undecodable row fails verification (the first bad entry is named, not the later row).
    fn entries(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<RegistryEntry>>> + Send;
}

/// What a successful verification established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainSummary {
    /// Number of entries.
    pub len: u64,
    /// The hash of the last entry (all zeros for an empty chain): keep it outside the store to
    /// detect truncation later.
    pub head: Sha256Digest,
}

/// Verifies a tenant's chain end to end: sequence numbers 1, 2, …; each previous hash; each
/// vector against its name and role; each entry hash; names unique.
///
/// # Errors
///
/// [`Error::Tampered`] naming the first entry that does not check out.
pub fn verify_chain(tenant: &TenantId, entries: &[RegistryEntry]) -> Result<ChainSummary> {
    let mut head = Sha256Digest::ZERO;
    let mut names = std::collections::HashSet::new();
    for (position, entry) in entries.iter().enumerate() {
        let expected_seq = position as u64 + 1;
        let fail = |reason: &str| Error::Tampered {
            tenant: tenant.to_string(),
            seq: expected_seq,
            reason: reason.to_owned(),
        };
        if entry.tenant != *tenant {
            return Err(fail("the entry belongs to another tenant"));
        }
        if entry.seq != expected_seq {
            return Err(fail(&format!("sequence number {} where {expected_seq} was expected", entry.seq)));
        }
        if entry.prev_hash != head {
            return Err(fail("the previous hash does not match the entry before it"));
        }
        if entry.vector != IdentityVector::of(&entry.name, &entry.role) {
            return Err(fail("the vector does not match the name and role"));
        }
        if entry.hash != entry.compute_hash() {
            return Err(fail("the entry hash does not match its contents"));
        }
        if !names.insert(entry.name.as_str()) {
            return Err(fail("the name was already registered earlier in the chain"));
        }
        head = entry.hash;
    }
    Ok(ChainSummary { len: entries.len() as u64, head })
}

/// Checks that `name` is registered under `tenant` with exactly `vector`, after verifying the
/// whole chain. This, not a portrait, is how an agent is authenticated.
///
/// # Errors
///
/// [`Error::Tampered`] when the chain is broken; storage errors as the store reports them.
pub async fn verify_agent<R: IdentityRegistry + ?Sized>(
    registry: &R,
    tenant: &TenantId,
    name: &AgentName,
    vector: &IdentityVector,
) -> Result<bool> {
    let entries = registry.entries(tenant).await?;
    verify_chain(tenant, &entries)?;
    Ok(entries.iter().any(|entry| entry.name == *name && entry.vector == *vector))
}

/// Decides the outcome when `name` already holds `existing`.
pub(crate) fn resolve_existing(existing: RegistryEntry, role: &AgentRole) -> Result<Registration> {
    if existing.role == *role {
        Ok(Registration::Existing(existing))
    } else {
        Err(Error::RoleConflict {
            tenant: existing.tenant.to_string(),
            name: existing.name.to_string(),
            registered_role: existing.role.to_string(),
            requested_role: role.to_string(),
        })
    }
}

/// Rebuilds an entry from stored columns, reporting undecodable values as [`Error::CorruptRow`].
#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn entry_from_row(
    tenant: &TenantId,
    seq: i64,
    name: String,
    role: String,
    vector: Vec<u8>,
    micros: i64,
    prev_hash: Vec<u8>,
    hash: Vec<u8>,
) -> Result<RegistryEntry> {
    let corrupt =
        |what: &str| Error::CorruptRow { reason: format!("entry {seq} of tenant {tenant}: {what}") };
    let digest =
        |bytes: Vec<u8>, what: &str| -> Result<[u8; 32]> { bytes.try_into().map_err(|_| corrupt(what)) };
    Ok(RegistryEntry {
        tenant: tenant.clone(),
        seq: u64::try_from(seq).map_err(|_| corrupt("negative sequence number"))?,
        name: AgentName::new(name).map_err(|_| corrupt("the name is not a valid agent name"))?,
        role: AgentRole::new(role).map_err(|_| corrupt("the role is not a valid agent role"))?,
        vector: IdentityVector::from_bytes(digest(vector, "the vector is not 32 bytes")?),
        registered_at: DateTime::from_timestamp_micros(micros)
            .ok_or_else(|| corrupt("the time is out of range"))?,
        prev_hash: Sha256Digest::from_bytes(digest(prev_hash, "the previous hash is not 32 bytes")?),
        hash: Sha256Digest::from_bytes(digest(hash, "the entry hash is not 32 bytes")?),
    })
}

/// Decodes a tenant's rows in sequence order. When a row cannot be decoded, the entries before it
/// are verified first, so an earlier tampered entry is still the one named ([`Error::Tampered`]);
/// otherwise the undecodable row is reported ([`Error::CorruptRow`]).
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn decode_chain<Row>(
    tenant: &TenantId,
    rows: &[Row],
    decode: impl Fn(&TenantId, &Row) -> Result<RegistryEntry>,
) -> Result<Vec<RegistryEntry>> {
    let mut entries = Vec::with_capacity(rows.len());
    for row in rows {
        match decode(tenant, row) {
            Ok(entry) => entries.push(entry),
            Err(error) => {
                verify_chain(tenant, &entries)?;
                return Err(error);
            }
        }
    }
    Ok(entries)
}

/// Boxes a backend error.
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) fn storage(error: sqlx::Error) -> Error {
    Error::Storage(Box::new(error))
}

#[cfg(test)]
mod tests;
