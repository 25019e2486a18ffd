//! The backend-neutral store trait and the row-count expectation of audited writes.

use std::fmt;
use std::future::Future;

use sos_core::TenantId;

use crate::entry::{AuditEntry, ChainHead, NewEntry};
use crate::error::Result;

/// A place where per-tenant chains are appended and read back.
///
/// Implementations: [`MemoryAuditStore`](crate::MemoryAuditStore), `PgAuditChain` (feature
/// `postgres`) and `SqliteAuditChain` (feature `sqlite`). All pass the same conformance suite.
/// Audited writes (a host's own change in the same transaction) live on the backend types
/// because they need the host's sqlx transaction.
pub trait AuditStore: Send + Sync {
    /// Appends `entry` to its tenant's chain in a transaction of its own and returns it as
    /// stored. Concurrent appends to one tenant serialize; different tenants do not.
    fn append(&self, entry: NewEntry) -> impl Future<Output = Result<AuditEntry>> + Send;

    /// The head of `tenant`'s chain, or `None` when it has no entries.
    fn head(&self, tenant: &TenantId) -> impl Future<Output = Result<Option<ChainHead>>> + Send;

    /// Up to `limit` entries of `tenant`'s chain with `seq > after_seq`, by ascending seq.
    fn read_page(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: u32,
    ) -> impl Future<Output = Result<Vec<AuditEntry>>> + Send;

    /// Every tenant that has a chain (or a head row), sorted.
    fn tenants(&self) -> impl Future<Output = Result<Vec<TenantId>>> + Send;
}

/// How many rows an audited write must change for the transaction to commit.
///
/// ```
/// use sos_audit::ExpectRows;
///
/// assert!(ExpectRows::Exactly(1).admits(1));
/// assert!(!ExpectRows::Exactly(1).admits(0));
/// assert!(ExpectRows::AtLeast(1).admits(3));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ExpectRows {
    /// Exactly this many rows.
    Exactly(u64),
    /// At least this many rows.
    AtLeast(u64),
}

impl ExpectRows {
    /// Whether a write that changed `rows` rows meets the expectation.
    pub fn admits(self, rows: u64) -> bool {
        match self {
            Self::Exactly(expected) => rows == expected,
            Self::AtLeast(minimum) => rows >= minimum,
        }
    }
}

impl fmt::Display for ExpectRows {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exactly(expected) => write!(f, "exactly {expected}"),
            Self::AtLeast(minimum) => write!(f, "at least {minimum}"),
        }
    }
}
