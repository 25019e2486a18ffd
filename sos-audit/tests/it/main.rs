//! Integration tests of `sos-audit` through its public API, on real PostgreSQL and SQLite.

mod conformance;
mod streaming;
mod tlog;
mod vectors;

#[cfg(all(feature = "postgres", feature = "sqlite"))]
mod audit_before_write;
#[cfg(feature = "postgres")]
mod chain_seq_stale_read;
#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
mod cli_checkpoint;
#[cfg(feature = "tsa")]
mod timestamp;
#[cfg(all(feature = "postgres", feature = "sqlite"))]
mod write_once;

use sos_audit::NewEntry;
use sos_core::TenantId;

/// A valid tenant id for tests.
pub(crate) fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("test tenant ids are valid")
}

/// A small entry for `tenant`.
pub(crate) fn entry(tenant_name: &str, index: u64) -> NewEntry {
    NewEntry::new(
        tenant(tenant_name),
        "agent:test",
        "record.update",
        format!("record/{index}"),
        &serde_json::json!({ "index": index, "note": "é\n" }),
    )
    .expect("test entries are valid")
}
