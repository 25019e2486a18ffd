//! State that survives a restart: claimed causes (so that several evaluators, in several
//! processes, never fire the same cause twice) and serialized state blobs (trust gate, grouper,
//! combinator state).
//!
//! [`MemoryStore`] is always available; `PgStore` and `SqliteStore` come with the `postgres` and
//! `sqlite` features, over the migrations in `migrations/` (version range `0300000001…`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use sos_core::{Sha256Digest, Signal, TenantId};

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::error::Error;
use crate::error::Result;

/// A store of claimed causes and state blobs.
pub trait StateStore: Send + Sync {
    /// Claims `cause` within `scope` (such as a ruliad name) for `tenant`: `true` for the first
    /// claim ever, `false` for every later one, atomically across evaluators and processes.
    fn claim_cause(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        scope: &str,
        cause: &Sha256Digest,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Forgets the tenant's causes claimed before `before` (keeps the store bounded); returns how
    /// many were removed.
    fn forget_causes_before(
        &self,
        tenant: &TenantId,
        before: DateTime<Utc>,
    ) -> impl Future<Output = Result<u64>> + Send;

    /// Stores `value` under `key`, replacing what was there.
    fn put(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        key: &str,
        value: &serde_json::Value,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The value under `key`.
    fn get(
        &self,
        tenant: &TenantId,
        key: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>>> + Send;
}

/// Keeps the signals whose cause this evaluator claimed first, in order; the others were already
/// fired by someone (named shape `replay-same`).
///
/// # Errors
///
/// Whatever the store returns.
pub async fn claim_new<S: StateStore>(
    store: &S,
    now: DateTime<Utc>,
    signals: Vec<Signal>,
) -> Result<Vec<Signal>> {
    let mut fresh = Vec::with_capacity(signals.len());
    for signal in signals {
        if store.claim_cause(now, signal.tenant(), signal.kind().as_str(), signal.cause()).await? {
            fresh.push(signal);
        }
    }
    Ok(fresh)
}

#[derive(Debug, Default)]
struct MemoryState {
    /// tenant → scope → cause → when claimed; nested so that a claim looks up borrowed keys and
    /// allocates only for a new tenant or scope.
    causes: BTreeMap<TenantId, BTreeMap<String, BTreeMap<Sha256Digest, DateTime<Utc>>>>,
    values: BTreeMap<(String, String), serde_json::Value>,
}

/// The in-memory store, for one process and for tests.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // Each update is a single map operation, so a poisoned state is still consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl StateStore for MemoryStore {
    async fn claim_cause(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        scope: &str,
        cause: &Sha256Digest,
    ) -> Result<bool> {
        let mut state = self.lock();
        if !state.causes.contains_key(tenant) {
            state.causes.insert(tenant.clone(), BTreeMap::new());
        }
        let scopes = state.causes.get_mut(tenant).expect("inserted above");
        if !scopes.contains_key(scope) {
            scopes.insert(scope.to_owned(), BTreeMap::new());
        }
        let causes = scopes.get_mut(scope).expect("inserted above");
        if causes.contains_key(cause) {
            return Ok(false);
        }
        causes.insert(*cause, now);
        Ok(true)
    }

    async fn forget_causes_before(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        let mut state = self.lock();
        let Some(scopes) = state.causes.get_mut(tenant) else { return Ok(0) };
        let mut removed = 0;
        for causes in scopes.values_mut() {
            let count = causes.len();
            causes.retain(|_, at| *at >= before);
            removed += count - causes.len();
        }
        Ok(removed as u64)
    }

    async fn put(
        &self,
        _now: DateTime<Utc>,
        tenant: &TenantId,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        self.lock().values.insert((tenant.as_str().to_owned(), key.to_owned()), value.clone());
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<serde_json::Value>> {
        Ok(self.lock().values.get(&(tenant.as_str().to_owned(), key.to_owned())).cloned())
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn storage(error: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Storage(Box::new(error))
}

/// The PostgreSQL migrations of this crate (versions `0300000001…`), ignoring other crates'.
#[cfg(feature = "postgres")]
pub fn postgres_migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// The SQLite migrations of this crate (versions `0300000001…`), ignoring other crates'.
#[cfg(feature = "sqlite")]
pub fn sqlite_migrator() -> sqlx::migrate::Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
}

/// The PostgreSQL store (feature `postgres`).
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: sqlx::PgPool,
}

#[cfg(feature = "postgres")]
impl PgStore {
    /// A store over `pool`; apply [`postgres_migrator`] first.
    pub fn new(pool: sqlx::PgPool) -> Self {
        Self { pool }
    }
}

#[cfg(feature = "postgres")]
impl StateStore for PgStore {
    async fn claim_cause(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        scope: &str,
        cause: &Sha256Digest,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO sos_ruliads_seen_causes (tenant, scope, cause, seen_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, scope, cause) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(scope)
        .bind(cause.to_hex())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(storage)?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn forget_causes_before(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        let removed = sqlx::query("DELETE FROM sos_ruliads_seen_causes WHERE tenant = $1 AND seen_at < $2")
            .bind(tenant.as_str())
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(storage)?
            .rows_affected();
        Ok(removed)
    }

    async fn put(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO sos_ruliads_state (tenant, key, value, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (tenant, key) DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
        )
        .bind(tenant.as_str())
        .bind(key)
        .bind(sqlx::types::Json(value))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<serde_json::Value>> {
        let value: Option<sqlx::types::Json<serde_json::Value>> =
            sqlx::query_scalar("SELECT value FROM sos_ruliads_state WHERE tenant = $1 AND key = $2")
                .bind(tenant.as_str())
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
        Ok(value.map(|json| json.0))
    }
}

/// The SQLite store (feature `sqlite`).
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

#[cfg(feature = "sqlite")]
impl SqliteStore {
    /// A store over `pool`; apply [`sqlite_migrator`] first.
    pub fn new(pool: sqlx::SqlitePool) -> Self {
        Self { pool }
    }
}

#[cfg(feature = "sqlite")]
impl StateStore for SqliteStore {
    async fn claim_cause(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        scope: &str,
        cause: &Sha256Digest,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO sos_ruliads_seen_causes (tenant, scope, cause, seen_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant, scope, cause) DO NOTHING",
        )
        .bind(tenant.as_str())
        .bind(scope)
        .bind(cause.to_hex())
        .bind(crate::ceiling::sqlite_time(now))
        .execute(&self.pool)
        .await
        .map_err(storage)?
        .rows_affected();
        Ok(inserted == 1)
    }

    async fn forget_causes_before(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        let removed = sqlx::query("DELETE FROM sos_ruliads_seen_causes WHERE tenant = ? AND seen_at < ?")
            .bind(tenant.as_str())
            .bind(crate::ceiling::sqlite_time(before))
            .execute(&self.pool)
            .await
            .map_err(storage)?
            .rows_affected();
        Ok(removed)
    }

    async fn put(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        key: &str,
        value: &serde_json::Value,
    ) -> Result<()> {
        let text = serde_json::to_string(value).map_err(storage)?;
        sqlx::query(
            "INSERT INTO sos_ruliads_state (tenant, key, value, updated_at) VALUES (?, ?, ?, ?) \
             ON CONFLICT (tenant, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
        )
        .bind(tenant.as_str())
        .bind(key)
        .bind(text)
        .bind(crate::ceiling::sqlite_time(now))
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(())
    }

    async fn get(&self, tenant: &TenantId, key: &str) -> Result<Option<serde_json::Value>> {
        let text: Option<String> =
            sqlx::query_scalar("SELECT value FROM sos_ruliads_state WHERE tenant = ? AND key = ?")
                .bind(tenant.as_str())
                .bind(key)
                .fetch_optional(&self.pool)
                .await
                .map_err(storage)?;
        text.map(|text| serde_json::from_str(&text).map_err(storage)).transpose()
    }
}
