//! Reading the server's tables directly, beside its HTTP answers: what was really written.

use serde_json::Value;
use sos_core::TenantId;
use sqlx::{PgPool, SqlitePool};

/// A read connection to a server's database.
#[derive(Debug, Clone)]
pub(crate) enum Tables {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

impl Tables {
    /// A deal's stage and version (the version counts the writes to the row), when it exists.
    pub(crate) async fn deal(&self, tenant: &str, id: &str) -> Option<(String, i64)> {
        let row: Option<(String, i64)> = match self {
            Self::Postgres(pool) => sqlx::query_as(
                "SELECT body, version FROM sos_server_records WHERE tenant = $1 AND kind = 'deal' AND id = $2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .expect("the records table is readable"),
            Self::Sqlite(pool) => sqlx::query_as(
                "SELECT body, version FROM sos_server_records WHERE tenant = ?1 AND kind = 'deal' AND id = ?2",
            )
            .bind(tenant)
            .bind(id)
            .fetch_optional(pool)
            .await
            .expect("the records table is readable"),
        };
        row.map(|(body, version)| {
            let body: Value = serde_json::from_str(&body).expect("a deal body is JSON");
            (body["stage"].as_str().unwrap_or_default().to_owned(), version)
        })
    }

    /// How many audit entries of `tenant` with `action` mention `needle` in their payload.
    pub(crate) async fn audit_entries_mentioning(&self, tenant: &str, action: &str, needle: &str) -> i64 {
        match self {
            Self::Postgres(pool) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_entries WHERE tenant = $1 AND action = $2 AND strpos(payload, $3) > 0",
            )
            .bind(tenant)
            .bind(action)
            .bind(needle)
            .fetch_one(pool)
            .await
            .expect("the audit table is readable"),
            Self::Sqlite(pool) => sqlx::query_scalar(
                "SELECT COUNT(*) FROM audit_entries WHERE tenant = ?1 AND action = ?2 AND instr(payload, ?3) > 0",
            )
            .bind(tenant)
            .bind(action)
            .bind(needle)
            .fetch_one(pool)
            .await
            .expect("the audit table is readable"),
        }
    }

    /// How many audit entries of `tenant` have `action`.
    pub(crate) async fn audit_entries_with_action(&self, tenant: &str, action: &str) -> i64 {
        self.audit_entries_mentioning(tenant, action, "").await
    }

    /// How many audit entries `tenant`'s chain holds.
    pub(crate) async fn audit_entry_count(&self, tenant: &str) -> i64 {
        match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE tenant = $1")
                    .bind(tenant)
                    .fetch_one(pool)
                    .await
                    .expect("the audit table is readable")
            }
            Self::Sqlite(pool) => sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE tenant = ?1")
                .bind(tenant)
                .fetch_one(pool)
                .await
                .expect("the audit table is readable"),
        }
    }

    /// The hash of `tenant`'s entry `seq`, as hex.
    pub(crate) async fn audit_entry_hash(&self, tenant: &str, seq: i64) -> String {
        let hash: Vec<u8> = match self {
            Self::Postgres(pool) => {
                sqlx::query_scalar("SELECT hash FROM audit_entries WHERE tenant = $1 AND seq = $2")
                    .bind(tenant)
                    .bind(seq)
                    .fetch_one(pool)
                    .await
            }
            Self::Sqlite(pool) => {
                sqlx::query_scalar("SELECT hash FROM audit_entries WHERE tenant = ?1 AND seq = ?2")
                    .bind(tenant)
                    .bind(seq)
                    .fetch_one(pool)
                    .await
            }
        }
        .expect("the entry exists");
        hex::encode(hash)
    }

    /// The webhook guard's records of `tenant`: (event id, state, attempts).
    pub(crate) async fn webhook_records(&self, tenant: &str) -> Vec<(String, String, i32)> {
        match self {
            Self::Postgres(pool) => sqlx::query_as(
                "SELECT event_id, state, attempts FROM sos_webhook_events WHERE tenant = $1 ORDER BY event_id",
            )
            .bind(tenant)
            .fetch_all(pool)
            .await
            .expect("the webhook table is readable"),
            Self::Sqlite(pool) => sqlx::query_as(
                "SELECT event_id, state, attempts FROM sos_webhook_events WHERE tenant = ?1 ORDER BY event_id",
            )
            .bind(tenant)
            .fetch_all(pool)
            .await
            .expect("the webhook table is readable"),
        }
    }

    /// Verifies `tenant`'s audit chain with sos-audit's own verifier, independently of the
    /// server; panics with the finding when it is not intact.
    pub(crate) async fn assert_chain_intact(&self, tenant: &str) -> u64 {
        let tenant: TenantId = tenant.parse().expect("a valid tenant");
        let verdict = match self {
            Self::Postgres(pool) => {
                sos_audit::verify_store(&sos_audit::PgAuditChain::new(pool.clone()), &tenant, None, |_| {})
                    .await
            }
            Self::Sqlite(pool) => {
                sos_audit::verify_store(
                    &sos_audit::SqliteAuditChain::new(pool.clone()),
                    &tenant,
                    None,
                    |_| {},
                )
                .await
            }
        }
        .expect("the chain is readable");
        match verdict {
            sos_audit::Verdict::Intact(chain) => chain.entries,
            other => panic!("the audit chain of {tenant} is not intact: {other:?}"),
        }
    }
}
