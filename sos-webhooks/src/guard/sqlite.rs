//! The SQLite store: transactional mode (the handler shares the claim's transaction) and
//! two-phase mode. Times are stored as Unix microseconds.

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sos_core::{Sha256Digest, TenantId};
use sqlx::migrate::Migrator;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::SqlitePool;
use sqlx::{Acquire as _, Row as _, Sqlite, Transaction};

use super::{
    Claim, ClaimAnswer, ClaimRequest, ClaimStore, Duplicate, EventKey, Outcome, RunError, WebhookGuard,
    answer_from, new_token, transactional_answer,
};
use crate::error::{Error, Result};

/// The crate's SQLite migrations (versions `0200000001…`), set to ignore other crates'
/// migrations in the same database.
pub fn sqlite_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/sqlite");
    migrator.set_ignore_missing(true);
    migrator
}

/// A transactional-mode handler for SQLite: it receives the guard's open transaction.
///
/// Write it as `|tx| Box::pin(async move { … })`.
pub trait SqliteHandler<T, E>:
    for<'t, 'c> FnOnce(&'t mut Transaction<'c, Sqlite>) -> BoxFuture<'t, Result<T, E>>
{
}

impl<T, E, F> SqliteHandler<T, E> for F where
    F: for<'t, 'c> FnOnce(&'t mut Transaction<'c, Sqlite>) -> BoxFuture<'t, Result<T, E>>
{
}

/// A pooled connection whose busy timeout the guard has shortened. If the guard's future is
/// dropped before the timeout is put back, the connection is closed instead of returning to
/// the pool with the guard's setting.
struct ShortTimeout {
    connection: PoolConnection<Sqlite>,
    shortened: bool,
}

impl Drop for ShortTimeout {
    fn drop(&mut self) {
        if self.shortened {
            self.connection.close_on_drop();
        }
    }
}

fn micros(instant: DateTime<Utc>) -> i64 {
    instant.timestamp_micros()
}

/// Whether a database error is SQLite's "busy" or "locked" (primary codes 5 and 6).
fn is_busy(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    database.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(|code| matches!(code & 0xff, 5 | 6))
}

/// Dedupe records in SQLite (table `sos_webhook_events`).
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore").finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// A store on `pool` (WAL mode recommended); run [`sqlite_migrator`] first.
    pub fn new(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The committed record of `key`: its state and body hash.
    async fn record<'e, X>(executor: X, key: &EventKey) -> Result<Option<(String, Vec<u8>)>>
    where
        X: sqlx::Executor<'e, Database = Sqlite>,
    {
        let row = sqlx::query(
            "SELECT state, body_hash FROM sos_webhook_events WHERE tenant = ?1 AND provider = ?2 AND event_id = ?3",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .fetch_optional(executor)
        .await?;
        match row {
            Some(row) => Ok(Some((row.try_get(0)?, row.try_get(1)?))),
            None => Ok(None),
        }
    }

    async fn finish(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let result = sqlx::query(
            "UPDATE sos_webhook_events SET state = ?5, updated_at = ?6, lease_until = ?6, last_error = ?7 \
             WHERE tenant = ?1 AND provider = ?2 AND event_id = ?3 AND claim_token = ?4 AND state = 'processing'",
        )
        .bind(claim.key().tenant().as_str())
        .bind(claim.key().provider().as_str())
        .bind(claim.key().event_id().as_str())
        .bind(claim.token())
        .bind(state)
        .bind(micros(now))
        .bind(reason)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 { Ok(()) } else { Err(Error::LeaseLost) }
    }
}

impl ClaimStore for SqliteStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimAnswer> {
        let key = request.key;
        let token = new_token();
        let claimed = sqlx::query(
            "INSERT INTO sos_webhook_events AS e \
               (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 'processing', ?5, 1, ?6, NULL, ?7, ?7) \
             ON CONFLICT (tenant, provider, event_id) DO UPDATE \
               SET state = 'processing', claim_token = excluded.claim_token, attempts = e.attempts + 1, \
                   lease_until = excluded.lease_until, updated_at = excluded.updated_at \
               WHERE e.body_hash = excluded.body_hash \
                 AND ((e.state = 'processing' AND e.lease_until <= excluded.updated_at) \
                   OR (e.state = 'failed' AND e.updated_at <= ?8)) \
             RETURNING attempts",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .bind(request.body_hash.as_bytes().as_slice())
        .bind(&token)
        .bind(micros(request.lease_until))
        .bind(micros(request.now))
        .bind(micros(request.failed_reclaimable_before))
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = claimed {
            let attempts: i64 = row.try_get(0)?;
            let attempts = u32::try_from(attempts).unwrap_or(u32::MAX);
            return Ok(ClaimAnswer::Claimed(Claim::with_token(key, token, attempts)));
        }
        let answer = Self::record(&self.pool, key).await?;
        let answer = answer.map(|(state, hash)| answer_from(&state, &hash, &request.body_hash));
        Ok(ClaimAnswer::Duplicate(answer.unwrap_or(Duplicate::RetryInFlight)))
    }

    async fn complete(&self, claim: &Claim, now: DateTime<Utc>) -> Result<()> {
        self.finish(claim, now, "processed", None).await
    }

    async fn fail(&self, claim: &Claim, now: DateTime<Utc>, reason: &str) -> Result<()> {
        self.finish(claim, now, "failed", Some(reason)).await
    }

    async fn purge_processed(&self, before: DateTime<Utc>) -> Result<u64> {
        let result =
            sqlx::query("DELETE FROM sos_webhook_events WHERE state = 'processed' AND updated_at < ?1")
                .bind(micros(before))
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    async fn purge_processed_of(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        let result = sqlx::query(
            "DELETE FROM sos_webhook_events WHERE tenant = ?1 AND state = 'processed' AND updated_at < ?2",
        )
        .bind(tenant.as_str())
        .bind(micros(before))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

impl WebhookGuard<SqliteStore> {
    /// Runs `handler` exactly once per event, in transactional mode.
    ///
    /// SQLite has one writer at a time: the claim's insert takes the database's write lock,
    /// waiting at most [`GuardConfig::busy_timeout`](super::GuardConfig::busy_timeout)
    /// (default 20 ms) before answering [`Outcome::RetryInFlight`]. While one handler runs,
    /// deliveries of *other* new events are answered `RetryInFlight` too; duplicates of
    /// processed events are answered without the lock. The handler's writes and the
    /// "processed" mark commit together, or not at all.
    ///
    /// # Errors
    ///
    /// [`RunError::Handler`] with the handler's error (the transaction was rolled back);
    /// [`RunError::Guard`] when the database fails.
    pub async fn transactional<T, E, F>(
        &self,
        key: &EventKey,
        body: &[u8],
        handler: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        F: SqliteHandler<T, E>,
    {
        let body_hash = Sha256Digest::of(body);
        let pool = &self.store().pool;
        if let Some(answer) = self.cached(key, &body_hash) {
            return Ok(answer.into());
        }
        // Fast path: a committed record answers without the write lock. It decides nothing on
        // its own; only the insert below claims.
        // An unfinished two-phase record is refused (`Error::ModeMismatch`), never answered.
        if let Some((state, hash)) = SqliteStore::record(pool, key).await? {
            let answer = transactional_answer(&state, &hash, &body_hash)?;
            self.remember(key, &body_hash, answer);
            return Ok(answer.into());
        }
        let now = self.now();
        let mut connection =
            ShortTimeout { connection: pool.acquire().await.map_err(Error::from)?, shortened: false };
        // Wait only briefly for the write lock, then put the connection's own timeout back.
        let previous: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(&mut *connection.connection)
            .await
            .map_err(Error::from)?;
        let short = self.config().busy_timeout().as_millis().min(i64::MAX as u128);
        connection.shortened = true;
        sqlx::query(&format!("PRAGMA busy_timeout = {short}"))
            .execute(&mut *connection.connection)
            .await
            .map_err(Error::from)?;
        let mut transaction = connection.connection.begin().await.map_err(Error::from)?;
        let claimed = sqlx::query(
            "INSERT INTO sos_webhook_events \
               (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
             VALUES (?1, ?2, ?3, ?4, 'processed', ?5, 1, ?6, NULL, ?6, ?6) \
             ON CONFLICT (tenant, provider, event_id) DO NOTHING \
             RETURNING 1",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .bind(body_hash.as_bytes().as_slice())
        .bind(new_token())
        .bind(micros(now))
        .fetch_optional(&mut *transaction)
        .await;
        sqlx::query(&format!("PRAGMA busy_timeout = {previous}"))
            .execute(&mut *transaction)
            .await
            .map_err(Error::from)?;
        connection.shortened = false;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            Err(error) if is_busy(&error) => {
                transaction.rollback().await.map_err(Error::from)?;
                return Ok(Outcome::RetryInFlight);
            }
            Err(error) => return Err(Error::from(error).into()),
        };
        if claimed.is_none() {
            let record = SqliteStore::record(&mut *transaction, key).await?;
            transaction.rollback().await.map_err(Error::from)?;
            let answer = match record {
                Some((state, hash)) => transactional_answer(&state, &hash, &body_hash)?,
                None => Duplicate::RetryInFlight,
            };
            self.remember(key, &body_hash, answer);
            return Ok(answer.into());
        }
        match handler(&mut transaction).await {
            Ok(value) => match transaction.commit().await {
                Ok(()) => {
                    self.remember(key, &body_hash, Duplicate::AlreadyProcessed);
                    Ok(Outcome::Processed(value))
                }
                Err(error) => Err(Error::from(error).into()),
            },
            Err(error) => {
                transaction.rollback().await.map_err(Error::from)?;
                Err(RunError::Handler(error))
            }
        }
    }
}
