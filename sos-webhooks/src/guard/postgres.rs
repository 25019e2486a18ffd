//! The PostgreSQL store: transactional mode (the handler shares the claim's transaction) and
//! two-phase mode.

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sos_core::Sha256Digest;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPool;
use sqlx::{Postgres, Row as _, Transaction};

use super::{
    Claim, ClaimAnswer, ClaimRequest, ClaimStore, Duplicate, EventKey, Outcome, RunError, WebhookGuard,
    answer_from, new_token,
};
use crate::error::{Error, Result};

/// The crate's PostgreSQL migrations (versions `0200000001…`), set to ignore other crates'
/// migrations in the same database.
pub fn postgres_migrator() -> Migrator {
    let mut migrator = sqlx::migrate!("./migrations/postgres");
    migrator.set_ignore_missing(true);
    migrator
}

/// A transactional-mode handler: it receives the guard's open transaction, and its writes
/// commit together with the "processed" mark, or not at all.
///
/// Write it as `|tx| Box::pin(async move { … })`.
pub trait PgHandler<T, E>:
    for<'t> FnOnce(&'t mut Transaction<'static, Postgres>) -> BoxFuture<'t, Result<T, E>>
{
}

impl<T, E, F> PgHandler<T, E> for F where
    F: for<'t> FnOnce(&'t mut Transaction<'static, Postgres>) -> BoxFuture<'t, Result<T, E>>
{
}

/// Dedupe records in PostgreSQL (table `sos_webhook_events`).
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store on `pool`; run [`postgres_migrator`] on the database first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn existing<'e, X>(
        &self,
        executor: X,
        key: &EventKey,
        body_hash: &Sha256Digest,
    ) -> Result<Option<Duplicate>>
    where
        X: sqlx::Executor<'e, Database = Postgres>,
    {
        let row = sqlx::query(
            "SELECT state, body_hash FROM sos_webhook_events WHERE tenant = $1 AND provider = $2 AND event_id = $3",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .fetch_optional(executor)
        .await?;
        Ok(match row {
            Some(row) => {
                let state: String = row.try_get(0)?;
                let hash: Vec<u8> = row.try_get(1)?;
                Some(answer_from(&state, &hash, body_hash))
            }
            None => None,
        })
    }

    async fn finish(
        &self,
        claim: &Claim,
        now: DateTime<Utc>,
        state: &str,
        reason: Option<&str>,
    ) -> Result<()> {
        let result = sqlx::query(
            "UPDATE sos_webhook_events SET state = $5, updated_at = $6, lease_until = $6, last_error = $7 \
             WHERE tenant = $1 AND provider = $2 AND event_id = $3 AND claim_token = $4 AND state = 'processing'",
        )
        .bind(claim.key().tenant().as_str())
        .bind(claim.key().provider().as_str())
        .bind(claim.key().event_id().as_str())
        .bind(claim.token())
        .bind(state)
        .bind(now)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 1 { Ok(()) } else { Err(Error::LeaseLost) }
    }
}

impl ClaimStore for PgStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<ClaimAnswer> {
        let key = request.key;
        let token = new_token();
        // One arbitrated write: insert, or take over an expired lease or a re-claimable failure
        // with the same body. The row lock of ON CONFLICT DO UPDATE serializes racing claims.
        let claimed = sqlx::query(
            "INSERT INTO sos_webhook_events AS e \
               (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'processing', $5, 1, $6, NULL, $7, $7) \
             ON CONFLICT (tenant, provider, event_id) DO UPDATE \
               SET state = 'processing', claim_token = EXCLUDED.claim_token, attempts = e.attempts + 1, \
                   lease_until = EXCLUDED.lease_until, updated_at = EXCLUDED.updated_at \
               WHERE e.body_hash = EXCLUDED.body_hash \
                 AND ((e.state = 'processing' AND e.lease_until <= EXCLUDED.updated_at) \
                   OR (e.state = 'failed' AND e.updated_at <= $8)) \
             RETURNING attempts",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .bind(request.body_hash.as_bytes().as_slice())
        .bind(&token)
        .bind(request.lease_until)
        .bind(request.now)
        .bind(request.failed_reclaimable_before)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(row) = claimed {
            let attempts: i32 = row.try_get(0)?;
            return Ok(ClaimAnswer::Claimed(Claim::with_token(key, token, attempts.unsigned_abs())));
        }
        // The record exists and is not claimable; a record purged in between is answered
        // "retry", which is always safe.
        let answer = self.existing(&self.pool, key, &request.body_hash).await?;
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
            sqlx::query("DELETE FROM sos_webhook_events WHERE state = 'processed' AND updated_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }
}

impl WebhookGuard<PgStore> {
    /// Runs `handler` exactly once per event, in transactional mode.
    ///
    /// The guard opens a transaction and, in one statement, takes a non-blocking advisory lock
    /// on the key (a
    /// duplicate arriving while a handler runs is answered [`Outcome::RetryInFlight`] at once,
    /// however long the handler takes), claims the event with one
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING` already marked processed, runs the handler
    /// with the same transaction, and commits. The mark is invisible to others until the
    /// commit, so the handler's writes and the mark commit together. A handler error, a
    /// crash or a dropped future rolls everything back and leaves nothing to clean up.
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
        F: PgHandler<T, E>,
    {
        let body_hash = Sha256Digest::of(body);
        if self.config().read_first() {
            // Answers committed duplicates without a transaction; decides nothing on its own.
            if let Some(answer) = self.store().existing(&self.store().pool, key, &body_hash).await?
                && answer != Duplicate::RetryInFlight
            {
                return Ok(answer.into());
            }
        }
        let now = self.now();
        let token = new_token();
        let mut transaction = self.store().pool.begin().await.map_err(Error::from)?;
        // One statement claims and, when it cannot, reads the record to answer from. The read
        // sees the statement's snapshot, so it never sees the row this statement inserted,
        // and a row committed after the snapshot reads as absent (answered "retry": safe).
        let row = sqlx::query(
            "WITH claimed AS ( \
               INSERT INTO sos_webhook_events \
                 (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
               SELECT $1, $2, $3, $4, 'processed', $5, 1, $6, NULL, $6, $6 \
               WHERE pg_try_advisory_xact_lock($7) \
               ON CONFLICT (tenant, provider, event_id) DO NOTHING \
               RETURNING 1 AS one) \
             SELECT EXISTS (SELECT 1 FROM claimed), e.state, e.body_hash \
             FROM (SELECT 1) AS single \
             LEFT JOIN sos_webhook_events e ON e.tenant = $1 AND e.provider = $2 AND e.event_id = $3",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .bind(body_hash.as_bytes().as_slice())
        .bind(&token)
        .bind(now)
        .bind(key.lock_id())
        .fetch_one(&mut *transaction)
        .await
        .map_err(Error::from)?;
        let claimed: bool = row.try_get(0).map_err(Error::from)?;
        if !claimed {
            // Either the lock is held by a delivery in flight (no committed record: retry),
            // or a committed record exists (answer from it).
            let state: Option<String> = row.try_get(1).map_err(Error::from)?;
            let hash: Option<Vec<u8>> = row.try_get(2).map_err(Error::from)?;
            transaction.rollback().await.map_err(Error::from)?;
            let answer = match (state, hash) {
                (Some(state), Some(hash)) => answer_from(&state, &hash, &body_hash),
                _ => Duplicate::RetryInFlight,
            };
            return Ok(answer.into());
        }
        match handler(&mut transaction).await {
            Ok(value) => {
                // PostgreSQL answers COMMIT of an aborted transaction with a silent ROLLBACK, so
                // a handler that swallowed a failed statement would otherwise be reported
                // processed with nothing committed. Checking that the claim is still there
                // fails in an aborted transaction, and also catches a handler that deleted it.
                let still_claimed = sqlx::query(
                    "SELECT 1 FROM sos_webhook_events \
                     WHERE tenant = $1 AND provider = $2 AND event_id = $3 AND claim_token = $4",
                )
                .bind(key.tenant().as_str())
                .bind(key.provider().as_str())
                .bind(key.event_id().as_str())
                .bind(&token)
                .fetch_optional(&mut *transaction)
                .await;
                if !matches!(still_claimed, Ok(Some(_))) {
                    transaction.rollback().await.map_err(Error::from)?;
                    return Err(Error::TransactionAborted.into());
                }
                transaction.commit().await.map_err(Error::from)?;
                Ok(Outcome::Processed(value))
            }
            Err(error) => {
                transaction.rollback().await.map_err(Error::from)?;
                Err(RunError::Handler(error))
            }
        }
    }
}
