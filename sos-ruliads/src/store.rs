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
use crate::hashing::SeededMap;

/// One cause to claim with [`StateStore::claim_causes`]: `cause` within `scope` (such as a
/// ruliad name) for `tenant`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CauseClaim<'a> {
    /// The tenant.
    pub tenant: &'a TenantId,
    /// The scope, such as a ruliad name.
    pub scope: &'a str,
    /// The cause digest.
    pub cause: &'a Sha256Digest,
}

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

    /// Claims several causes at once, as [`StateStore::claim_cause`] would one after the other:
    /// `claimed` is set to one flag per claim, in order, `true` for a first claim ever. A cause
    /// listed twice is claimed by its first entry. The database stores claim a batch with one
    /// statement per chunk of claims, so a round of the gate costs one round trip, not one per
    /// signal.
    ///
    /// # Errors
    ///
    /// Whatever the store returns. Then the flags that are `true` mark the claims this call made
    /// before the failure (they are the caller's now); the other causes were not claimed by it.
    fn claim_causes(
        &self,
        now: DateTime<Utc>,
        claims: &[CauseClaim<'_>],
        claimed: &mut Vec<bool>,
    ) -> impl Future<Output = Result<()>> + Send {
        claimed.clear();
        claimed.resize(claims.len(), false);
        async move {
            for (claim, flag) in claims.iter().zip(claimed.iter_mut()) {
                *flag = self.claim_cause(now, claim.tenant, claim.scope, claim.cause).await?;
            }
            Ok(())
        }
    }

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
    /// The causes of one scope are hashed: one probe per claim instead of a walk down a tree of
    /// every cause claimed.
    causes: BTreeMap<TenantId, BTreeMap<String, SeededMap<Sha256Digest, DateTime<Utc>>>>,
    values: BTreeMap<(String, String), serde_json::Value>,
}

impl MemoryState {
    /// Claims one cause: `true` for the first claim ever.
    fn claim(&mut self, now: DateTime<Utc>, claim: &CauseClaim<'_>) -> bool {
        // One lookup by tenant and scope when both were claimed before (the usual case).
        let causes = match self.causes.get_mut(claim.tenant).and_then(|scopes| scopes.get_mut(claim.scope)) {
            Some(causes) => causes,
            None => self.scope_mut(claim),
        };
        match causes.entry(*claim.cause) {
            std::collections::hash_map::Entry::Occupied(_) => false,
            std::collections::hash_map::Entry::Vacant(vacant) => {
                vacant.insert(now);
                true
            }
        }
    }

    /// The causes of `claim`'s tenant and scope, created when new (cloning the names once).
    fn scope_mut(&mut self, claim: &CauseClaim<'_>) -> &mut SeededMap<Sha256Digest, DateTime<Utc>> {
        if !self.causes.contains_key(claim.tenant) {
            self.causes.insert(claim.tenant.clone(), BTreeMap::new());
        }
        let scopes = self.causes.get_mut(claim.tenant).expect("inserted above");
        if !scopes.contains_key(claim.scope) {
            scopes.insert(claim.scope.to_owned(), SeededMap::default());
        }
        scopes.get_mut(claim.scope).expect("inserted above")
    }
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
        Ok(self.lock().claim(now, &CauseClaim { tenant, scope, cause }))
    }

    async fn claim_causes(
        &self,
        now: DateTime<Utc>,
        claims: &[CauseClaim<'_>],
        claimed: &mut Vec<bool>,
    ) -> Result<()> {
        // One lock for the whole batch.
        claimed.clear();
        let mut state = self.lock();
        for claim in claims {
            claimed.push(state.claim(now, claim));
        }
        Ok(())
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

/// A batch of claims prepared for one SQL statement per chunk: the distinct claims in key order
/// (so that concurrent batches take row locks in the same order and cannot deadlock), with the
/// cause as the hex text the tables store.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
struct SqlBatch<'a> {
    /// (tenant, scope, cause hex) of each distinct claim, sorted.
    keys: Vec<(&'a str, &'a str, String)>,
    /// For each claim in the caller's order, the index of its key, and whether it is the first
    /// entry of that key (a later duplicate is never a first claim).
    slots: Vec<(usize, bool)>,
}

/// Claims per SQL statement: 4 bound values each, well below SQLite's 32,766 and PostgreSQL's
/// 65,535 parameters.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const CLAIMS_PER_STATEMENT: usize = 500;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
impl<'a> SqlBatch<'a> {
    fn new(claims: &[CauseClaim<'a>]) -> Self {
        let mut keys: Vec<(&'a str, &'a str, String)> =
            claims.iter().map(|claim| (claim.tenant.as_str(), claim.scope, claim.cause.to_hex())).collect();
        keys.sort_unstable();
        keys.dedup();
        let mut first = vec![true; keys.len()];
        let slots = claims
            .iter()
            .map(|claim| {
                let hex = claim.cause.to_hex();
                let key = (claim.tenant.as_str(), claim.scope, hex);
                // Every claim's key is in `keys` (built from the same claims).
                let index = keys.binary_search(&key).unwrap_or_default();
                let is_first = std::mem::replace(&mut first[index], false);
                (index, is_first)
            })
            .collect();
        Self { keys, slots }
    }

    /// Sets the flag of every claim whose key (by index) this call inserted.
    fn outcomes(&self, inserted: &[bool], claimed: &mut [bool]) {
        for (&(index, is_first), flag) in self.slots.iter().zip(claimed.iter_mut()) {
            *flag = is_first && inserted.get(index).copied().unwrap_or(false);
        }
    }

    /// The index range of each statement's chunk of keys.
    fn chunks(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        (0..self.keys.len())
            .step_by(CLAIMS_PER_STATEMENT)
            .map(|start| start..(start + CLAIMS_PER_STATEMENT).min(self.keys.len()))
    }

    /// Marks as inserted the keys of `chunk` that the statement returned.
    fn mark(
        &self,
        chunk: std::ops::Range<usize>,
        returned: &[(String, String, String)],
        inserted: &mut [bool],
    ) {
        for (tenant, scope, cause) in returned {
            let key = (tenant.as_str(), scope.as_str(), cause.clone());
            if let Ok(index) = self.keys[chunk.clone()].binary_search(&key) {
                inserted[chunk.start + index] = true;
            }
        }
    }
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

    async fn claim_causes(
        &self,
        now: DateTime<Utc>,
        claims: &[CauseClaim<'_>],
        claimed: &mut Vec<bool>,
    ) -> Result<()> {
        claimed.clear();
        claimed.resize(claims.len(), false);
        if let [claim] = claims {
            claimed[0] = self.claim_cause(now, claim.tenant, claim.scope, claim.cause).await?;
            return Ok(());
        }
        let batch = SqlBatch::new(claims);
        let mut inserted = vec![false; batch.keys.len()];
        for chunk in batch.chunks() {
            let keys = &batch.keys[chunk.clone()];
            // One statement per chunk: the rows go in key order, so concurrent batches wait on
            // each other's rows in the same order and never deadlock.
            let returned = sqlx::query_as::<_, (String, String, String)>(
                "INSERT INTO sos_ruliads_seen_causes (tenant, scope, cause, seen_at) \
                 SELECT tenant, scope, cause, $4 FROM UNNEST($1::text[], $2::text[], $3::text[]) \
                 AS claims (tenant, scope, cause) \
                 ON CONFLICT (tenant, scope, cause) DO NOTHING RETURNING tenant, scope, cause",
            )
            .bind(keys.iter().map(|key| key.0).collect::<Vec<&str>>())
            .bind(keys.iter().map(|key| key.1).collect::<Vec<&str>>())
            .bind(keys.iter().map(|key| key.2.as_str()).collect::<Vec<&str>>())
            .bind(now)
            .fetch_all(&self.pool)
            .await;
            match returned {
                Ok(rows) => batch.mark(chunk, &rows, &mut inserted),
                Err(error) => {
                    batch.outcomes(&inserted, claimed);
                    return Err(storage(error));
                }
            }
        }
        batch.outcomes(&inserted, claimed);
        Ok(())
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

    async fn claim_causes(
        &self,
        now: DateTime<Utc>,
        claims: &[CauseClaim<'_>],
        claimed: &mut Vec<bool>,
    ) -> Result<()> {
        claimed.clear();
        claimed.resize(claims.len(), false);
        if let [claim] = claims {
            claimed[0] = self.claim_cause(now, claim.tenant, claim.scope, claim.cause).await?;
            return Ok(());
        }
        let batch = SqlBatch::new(claims);
        let mut inserted = vec![false; batch.keys.len()];
        let seen_at = crate::ceiling::sqlite_time(now);
        for chunk in batch.chunks() {
            let keys = &batch.keys[chunk.clone()];
            // One statement per chunk (one transaction, one round trip), returning the rows it
            // inserted; the others were claimed before.
            let mut sql = String::with_capacity(120 + 16 * keys.len());
            sql.push_str("INSERT INTO sos_ruliads_seen_causes (tenant, scope, cause, seen_at) VALUES ");
            for index in 0..keys.len() {
                sql.push_str(if index == 0 { "(?, ?, ?, ?)" } else { ", (?, ?, ?, ?)" });
            }
            sql.push_str(" ON CONFLICT (tenant, scope, cause) DO NOTHING RETURNING tenant, scope, cause");
            let mut query = sqlx::query_as::<_, (String, String, String)>(&sql);
            for (tenant, scope, cause) in keys {
                query = query.bind(*tenant).bind(*scope).bind(cause.as_str()).bind(seen_at.as_str());
            }
            match query.fetch_all(&self.pool).await {
                Ok(rows) => batch.mark(chunk, &rows, &mut inserted),
                Err(error) => {
                    batch.outcomes(&inserted, claimed);
                    return Err(storage(error));
                }
            }
        }
        batch.outcomes(&inserted, claimed);
        Ok(())
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
