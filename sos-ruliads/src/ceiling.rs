//! The trigger ceiling for self-healing actions (seed 002, LOCK-HEAL-5): at most `global`
//! triggers run at once per tenant (default 2), optionally at most `per_attribute` per attribute,
//! and the same cause digest never starts twice (named shape `replay-same`).
//!
//! On SQL backends one transaction inserts the trigger under a unique key (a replay conflicts and
//! is refused) and takes a slot with one conditional `UPDATE … SET running = running + 1 WHERE
//! running < limit`; the row lock serializes concurrent attempts, so the ceiling holds across
//! tasks and processes. A refused attempt rolls back and is recorded with its reason.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
#[cfg(feature = "postgres")]
use sos_core::postgres::PgTxConnection;
use sos_core::{Sha256Digest, TenantId};

use crate::error::{Error, Result};

/// The scope name of the global ceiling.
pub const GLOBAL_SCOPE: &str = "*";

/// How many triggers may run at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CeilingConfig {
    /// Per tenant, across all attributes (default 2).
    pub global: u32,
    /// Per (tenant, attribute), when set.
    pub per_attribute: Option<u32>,
}

impl Default for CeilingConfig {
    fn default() -> Self {
        Self { global: 2, per_attribute: None }
    }
}

impl CeilingConfig {
    fn scopes<'a>(&self, attribute: &'a str) -> Vec<(&'a str, u32)> {
        let mut scopes = vec![(GLOBAL_SCOPE, self.global)];
        if let (Some(limit), false) = (self.per_attribute, attribute.is_empty()) {
            scopes.push((attribute, limit));
        }
        scopes
    }
}

/// One attempt to start a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The tenant.
    pub tenant: TenantId,
    /// The digest of what caused it.
    pub cause: Sha256Digest,
    /// The attribute for a per-attribute ceiling (such as `"email"`), or empty.
    pub attribute: String,
}

/// Why an attempt was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refused {
    /// The ceiling was reached.
    Ceiling,
    /// The cause already started once.
    Replay,
}

impl Refused {
    /// The stored name (`ceiling` or `replay`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ceiling => "ceiling",
            Self::Replay => "replay",
        }
    }

    /// The suppression reason to record for a signal whose trigger was refused: `ceiling`, or
    /// `repeat` for a replayed cause.
    pub const fn reason(self) -> crate::trust::Reason {
        match self {
            Self::Ceiling => crate::trust::Reason::Ceiling,
            Self::Replay => crate::trust::Reason::Repeat,
        }
    }

    #[cfg_attr(not(any(feature = "postgres", feature = "sqlite")), allow(dead_code))]
    fn parse(text: &str) -> Result<Self> {
        match text {
            "ceiling" => Ok(Self::Ceiling),
            "replay" => Ok(Self::Replay),
            other => Err(Error::Storage(format!("unknown refusal reason {other:?} in the store").into())),
        }
    }
}

/// What the ceiling decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The trigger may run; call `finish` when it is done.
    Started,
    /// It may not run.
    Refused(Refused),
}

/// A recorded refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// The tenant.
    pub tenant: String,
    /// The cause, hex.
    pub cause: String,
    /// The attribute, or empty.
    pub attribute: String,
    /// Why.
    pub reason: Refused,
    /// When.
    pub at: DateTime<Utc>,
}

/// A store that enforces the trigger ceiling.
pub trait TriggerCeiling: Send + Sync {
    /// Tries to start a trigger at `now`.
    fn try_start(
        &self,
        now: DateTime<Utc>,
        attempt: &Attempt,
    ) -> impl Future<Output = Result<Admission>> + Send;

    /// Marks the trigger of `cause` finished and frees its slot; `false` when it was not running.
    fn finish(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        cause: &Sha256Digest,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// How many of the tenant's triggers run now.
    fn running(&self, tenant: &TenantId) -> impl Future<Output = Result<u32>> + Send;

    /// The tenant's refused attempts, oldest first (attempts refused at the same instant in no
    /// particular order).
    fn refusals(&self, tenant: &TenantId) -> impl Future<Output = Result<Vec<Refusal>>> + Send;
}

#[derive(Debug, Default)]
struct MemoryState {
    slots: BTreeMap<(String, String), u32>,
    triggers: BTreeMap<(String, String), (String, bool)>,
    refusals: Vec<Refusal>,
}

/// The in-memory ceiling, for one process.
#[derive(Debug, Default)]
pub struct MemoryCeiling {
    config: CeilingConfig,
    state: Mutex<MemoryState>,
}

impl MemoryCeiling {
    /// An empty ceiling with `config`.
    pub fn new(config: CeilingConfig) -> Self {
        Self { config, state: Mutex::new(MemoryState::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        // Every update below completes before the guard drops, so a poisoned state is consistent.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl TriggerCeiling for MemoryCeiling {
    async fn try_start(&self, now: DateTime<Utc>, attempt: &Attempt) -> Result<Admission> {
        let mut state = self.lock();
        let tenant = attempt.tenant.as_str().to_owned();
        let cause = attempt.cause.to_hex();
        let refuse = |state: &mut MemoryState, reason: Refused| {
            state.refusals.push(Refusal {
                tenant: tenant.clone(),
                cause: cause.clone(),
                attribute: attempt.attribute.clone(),
                reason,
                at: now,
            });
            Ok(Admission::Refused(reason))
        };
        if state.triggers.contains_key(&(tenant.clone(), cause.clone())) {
            return refuse(&mut state, Refused::Replay);
        }
        let scopes = self.config.scopes(&attempt.attribute);
        for (scope, limit) in &scopes {
            if state.slots.get(&(tenant.clone(), (*scope).to_owned())).copied().unwrap_or(0) >= *limit {
                return refuse(&mut state, Refused::Ceiling);
            }
        }
        for (scope, _) in scopes {
            *state.slots.entry((tenant.clone(), scope.to_owned())).or_default() += 1;
        }
        state.triggers.insert((tenant, cause), (attempt.attribute.clone(), true));
        Ok(Admission::Started)
    }

    async fn finish(&self, _now: DateTime<Utc>, tenant: &TenantId, cause: &Sha256Digest) -> Result<bool> {
        let mut state = self.lock();
        let key = (tenant.as_str().to_owned(), cause.to_hex());
        let attribute = match state.triggers.get_mut(&key) {
            Some((attribute, running)) if *running => {
                *running = false;
                attribute.clone()
            }
            _ => return Ok(false),
        };
        for (scope, _) in self.config.scopes(&attribute) {
            if let Some(count) = state.slots.get_mut(&(key.0.clone(), scope.to_owned())) {
                *count = count.saturating_sub(1);
            }
        }
        Ok(true)
    }

    async fn running(&self, tenant: &TenantId) -> Result<u32> {
        let state = self.lock();
        Ok(state.slots.get(&(tenant.as_str().to_owned(), GLOBAL_SCOPE.to_owned())).copied().unwrap_or(0))
    }

    async fn refusals(&self, tenant: &TenantId) -> Result<Vec<Refusal>> {
        let state = self.lock();
        Ok(state.refusals.iter().filter(|refusal| refusal.tenant == tenant.as_str()).cloned().collect())
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn storage(error: sqlx::Error) -> Error {
    Error::Storage(Box::new(error))
}

/// The PostgreSQL ceiling (feature `postgres`); apply [`crate::store::postgres_migrator`] first.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct PgCeiling {
    pool: sqlx::PgPool,
    config: CeilingConfig,
}

#[cfg(feature = "postgres")]
impl PgCeiling {
    /// A ceiling over `pool`.
    pub fn new(pool: sqlx::PgPool, config: CeilingConfig) -> Self {
        Self { pool, config }
    }

    async fn refuse(&self, now: DateTime<Utc>, attempt: &Attempt, reason: Refused) -> Result<Admission> {
        sqlx::query(
            "INSERT INTO sos_ruliads_trigger_refusals (id, tenant, cause, attribute, reason, refused_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(attempt.tenant.as_str())
        .bind(attempt.cause.to_hex())
        .bind(&attempt.attribute)
        .bind(reason.as_str())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(Admission::Refused(reason))
    }
}

#[cfg(feature = "postgres")]
impl TriggerCeiling for PgCeiling {
    async fn try_start(&self, now: DateTime<Utc>, attempt: &Attempt) -> Result<Admission> {
        let tenant = attempt.tenant.as_str();
        let cause = attempt.cause.to_hex();
        // Cancel-safe BEGIN on the host's pool (sqlx#4393; see `sos_core::postgres`).
        let mut connection = PgTxConnection::acquire(&self.pool).await.map_err(storage)?;
        let mut transaction = connection.begin().await.map_err(storage)?;
        let inserted = sqlx::query(
            "INSERT INTO sos_ruliads_triggers (tenant, cause, attribute, status, started_at) \
             VALUES ($1, $2, $3, 'running', $4) ON CONFLICT (tenant, cause) DO NOTHING",
        )
        .bind(tenant)
        .bind(&cause)
        .bind(&attempt.attribute)
        .bind(now)
        .execute(&mut *transaction)
        .await
        .map_err(storage)?
        .rows_affected();
        if inserted == 0 {
            transaction.rollback().await.map_err(storage)?;
            // The refusal is written through the pool: give the connection back first.
            drop(connection);
            return self.refuse(now, attempt, Refused::Replay).await;
        }
        for (scope, limit) in self.config.scopes(&attempt.attribute) {
            sqlx::query(
                "INSERT INTO sos_ruliads_ceiling_slots (tenant, scope, running) VALUES ($1, $2, 0) \
                 ON CONFLICT (tenant, scope) DO NOTHING",
            )
            .bind(tenant)
            .bind(scope)
            .execute(&mut *transaction)
            .await
            .map_err(storage)?;
            let taken = sqlx::query(
                "UPDATE sos_ruliads_ceiling_slots SET running = running + 1 \
                 WHERE tenant = $1 AND scope = $2 AND running < $3",
            )
            .bind(tenant)
            .bind(scope)
            .bind(i64::from(limit))
            .execute(&mut *transaction)
            .await
            .map_err(storage)?
            .rows_affected();
            if taken == 0 {
                transaction.rollback().await.map_err(storage)?;
                // The refusal is written through the pool: give the connection back first.
                drop(connection);
                return self.refuse(now, attempt, Refused::Ceiling).await;
            }
        }
        transaction.commit().await.map_err(storage)?;
        Ok(Admission::Started)
    }

    async fn finish(&self, now: DateTime<Utc>, tenant: &TenantId, cause: &Sha256Digest) -> Result<bool> {
        use sqlx::Row;
        // Cancel-safe BEGIN on the host's pool (sqlx#4393; see `sos_core::postgres`).
        let mut connection = PgTxConnection::acquire(&self.pool).await.map_err(storage)?;
        let mut transaction = connection.begin().await.map_err(storage)?;
        let row = sqlx::query(
            "UPDATE sos_ruliads_triggers SET status = 'finished', finished_at = $3 \
             WHERE tenant = $1 AND cause = $2 AND status = 'running' RETURNING attribute",
        )
        .bind(tenant.as_str())
        .bind(cause.to_hex())
        .bind(now)
        .fetch_optional(&mut *transaction)
        .await
        .map_err(storage)?;
        let Some(row) = row else {
            transaction.rollback().await.map_err(storage)?;
            return Ok(false);
        };
        let attribute: String = row.try_get("attribute").map_err(storage)?;
        for (scope, _) in self.config.scopes(&attribute) {
            sqlx::query(
                "UPDATE sos_ruliads_ceiling_slots SET running = running - 1 WHERE tenant = $1 AND scope = $2",
            )
            .bind(tenant.as_str())
            .bind(scope)
            .execute(&mut *transaction)
            .await
            .map_err(storage)?;
        }
        transaction.commit().await.map_err(storage)?;
        Ok(true)
    }

    async fn running(&self, tenant: &TenantId) -> Result<u32> {
        let running: Option<i32> = sqlx::query_scalar(
            "SELECT running FROM sos_ruliads_ceiling_slots WHERE tenant = $1 AND scope = $2",
        )
        .bind(tenant.as_str())
        .bind(GLOBAL_SCOPE)
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?;
        Ok(u32::try_from(running.unwrap_or(0)).unwrap_or(0))
    }

    async fn refusals(&self, tenant: &TenantId) -> Result<Vec<Refusal>> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT tenant, cause, attribute, reason, refused_at FROM sos_ruliads_trigger_refusals \
             WHERE tenant = $1 ORDER BY refused_at, id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        rows.iter()
            .map(|row| {
                Ok(Refusal {
                    tenant: row.try_get("tenant").map_err(storage)?,
                    cause: row.try_get("cause").map_err(storage)?,
                    attribute: row.try_get("attribute").map_err(storage)?,
                    reason: Refused::parse(row.try_get("reason").map_err(storage)?)?,
                    at: row.try_get("refused_at").map_err(storage)?,
                })
            })
            .collect()
    }
}

/// Formats a time for SQLite TEXT columns: fixed width, so text order is time order.
#[cfg(feature = "sqlite")]
pub(crate) fn sqlite_time(time: DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

#[cfg(feature = "sqlite")]
pub(crate) fn parse_sqlite_time(text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.with_timezone(&Utc))
        .map_err(|error| Error::Storage(Box::new(error)))
}

/// The SQLite ceiling (feature `sqlite`); apply [`crate::store::sqlite_migrator`] first. Use a
/// `busy_timeout` so that concurrent writers wait instead of failing.
#[cfg(feature = "sqlite")]
#[derive(Debug, Clone)]
pub struct SqliteCeiling {
    pool: sqlx::SqlitePool,
    config: CeilingConfig,
}

#[cfg(feature = "sqlite")]
impl SqliteCeiling {
    /// A ceiling over `pool`.
    pub fn new(pool: sqlx::SqlitePool, config: CeilingConfig) -> Self {
        Self { pool, config }
    }

    async fn refuse(&self, now: DateTime<Utc>, attempt: &Attempt, reason: Refused) -> Result<Admission> {
        sqlx::query(
            "INSERT INTO sos_ruliads_trigger_refusals (id, tenant, cause, attribute, reason, refused_at) \
             VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(uuid::Uuid::new_v4().to_string())
        .bind(attempt.tenant.as_str())
        .bind(attempt.cause.to_hex())
        .bind(&attempt.attribute)
        .bind(reason.as_str())
        .bind(sqlite_time(now))
        .execute(&self.pool)
        .await
        .map_err(storage)?;
        Ok(Admission::Refused(reason))
    }
}

#[cfg(feature = "sqlite")]
impl TriggerCeiling for SqliteCeiling {
    async fn try_start(&self, now: DateTime<Utc>, attempt: &Attempt) -> Result<Admission> {
        let tenant = attempt.tenant.as_str();
        let cause = attempt.cause.to_hex();
        // The first statement writes, so the transaction takes SQLite's write lock at once and
        // concurrent attempts queue behind it (busy_timeout) instead of deadlocking on upgrade.
        let mut transaction = self.pool.begin().await.map_err(storage)?;
        let inserted = sqlx::query(
            "INSERT INTO sos_ruliads_triggers (tenant, cause, attribute, status, started_at) \
             VALUES (?, ?, ?, 'running', ?) ON CONFLICT (tenant, cause) DO NOTHING",
        )
        .bind(tenant)
        .bind(&cause)
        .bind(&attempt.attribute)
        .bind(sqlite_time(now))
        .execute(&mut *transaction)
        .await
        .map_err(storage)?
        .rows_affected();
        if inserted == 0 {
            transaction.rollback().await.map_err(storage)?;
            return self.refuse(now, attempt, Refused::Replay).await;
        }
        for (scope, limit) in self.config.scopes(&attempt.attribute) {
            sqlx::query(
                "INSERT INTO sos_ruliads_ceiling_slots (tenant, scope, running) VALUES (?, ?, 0) \
                 ON CONFLICT (tenant, scope) DO NOTHING",
            )
            .bind(tenant)
            .bind(scope)
            .execute(&mut *transaction)
            .await
            .map_err(storage)?;
            let taken = sqlx::query(
                "UPDATE sos_ruliads_ceiling_slots SET running = running + 1 \
                 WHERE tenant = ? AND scope = ? AND running < ?",
            )
            .bind(tenant)
            .bind(scope)
            .bind(i64::from(limit))
            .execute(&mut *transaction)
            .await
            .map_err(storage)?
            .rows_affected();
            if taken == 0 {
                transaction.rollback().await.map_err(storage)?;
                return self.refuse(now, attempt, Refused::Ceiling).await;
            }
        }
        transaction.commit().await.map_err(storage)?;
        Ok(Admission::Started)
    }

    async fn finish(&self, now: DateTime<Utc>, tenant: &TenantId, cause: &Sha256Digest) -> Result<bool> {
        use sqlx::Row;
        let mut transaction = self.pool.begin().await.map_err(storage)?;
        let row = sqlx::query(
            "UPDATE sos_ruliads_triggers SET status = 'finished', finished_at = ? \
             WHERE tenant = ? AND cause = ? AND status = 'running' RETURNING attribute",
        )
        .bind(sqlite_time(now))
        .bind(tenant.as_str())
        .bind(cause.to_hex())
        .fetch_optional(&mut *transaction)
        .await
        .map_err(storage)?;
        let Some(row) = row else {
            transaction.rollback().await.map_err(storage)?;
            return Ok(false);
        };
        let attribute: String = row.try_get("attribute").map_err(storage)?;
        for (scope, _) in self.config.scopes(&attribute) {
            sqlx::query(
                "UPDATE sos_ruliads_ceiling_slots SET running = running - 1 WHERE tenant = ? AND scope = ?",
            )
            .bind(tenant.as_str())
            .bind(scope)
            .execute(&mut *transaction)
            .await
            .map_err(storage)?;
        }
        transaction.commit().await.map_err(storage)?;
        Ok(true)
    }

    async fn running(&self, tenant: &TenantId) -> Result<u32> {
        let running: Option<i64> = sqlx::query_scalar(
            "SELECT running FROM sos_ruliads_ceiling_slots WHERE tenant = ? AND scope = ?",
        )
        .bind(tenant.as_str())
        .bind(GLOBAL_SCOPE)
        .fetch_optional(&self.pool)
        .await
        .map_err(storage)?;
        Ok(u32::try_from(running.unwrap_or(0)).unwrap_or(0))
    }

    async fn refusals(&self, tenant: &TenantId) -> Result<Vec<Refusal>> {
        use sqlx::Row;
        let rows = sqlx::query(
            "SELECT tenant, cause, attribute, reason, refused_at FROM sos_ruliads_trigger_refusals \
             WHERE tenant = ? ORDER BY refused_at, id",
        )
        .bind(tenant.as_str())
        .fetch_all(&self.pool)
        .await
        .map_err(storage)?;
        rows.iter()
            .map(|row| {
                Ok(Refusal {
                    tenant: row.try_get("tenant").map_err(storage)?,
                    cause: row.try_get("cause").map_err(storage)?,
                    attribute: row.try_get("attribute").map_err(storage)?,
                    reason: Refused::parse(row.try_get("reason").map_err(storage)?)?,
                    at: parse_sqlite_time(row.try_get("refused_at").map_err(storage)?)?,
                })
            })
            .collect()
    }
}
