//! The PostgreSQL store: transactional mode (the handler shares the claim's transaction) and
//! two-phase mode.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use sos_core::postgres::PgTxConnection;
use sos_core::{Sha256Digest, TenantId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, types::PgInterval};
use sqlx::{Executor as _, Postgres, Row as _, Transaction};

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
    for<'t, 'c> FnOnce(&'t mut Transaction<'c, Postgres>) -> BoxFuture<'t, Result<T, E>>
{
}

impl<T, E, F> PgHandler<T, E> for F where
    F: for<'t, 'c> FnOnce(&'t mut Transaction<'c, Postgres>) -> BoxFuture<'t, Result<T, E>>
{
}

/// Dedupe records in PostgreSQL (table `sos_webhook_events`).
///
/// # Clocks in two-phase mode
///
/// By default leases and failure delays are timed by the guard's [`Clock`](sos_core::Clock),
/// which lets tests drive them with a manual clock. Each worker then judges expiry by its own
/// clock: a worker whose clock runs `s` ahead sees a lease expire `s` early (it can take over a
/// live claim once `s` exceeds the lease left), and a worker whose clock runs behind writes a
/// lease that ends early. So set the lease above the handler's longest run plus the worst clock
/// skew between replicas, or turn on [`PgStore::with_database_clock`]: every lease, expiry and
/// failure delay is then timed by the database server's clock alone, and the workers' clocks
/// no longer matter.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    database_clock: bool,
}

impl fmt::Debug for PgStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// A store on `pool`; run [`postgres_migrator`] on the database first.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, database_clock: false }
    }

    /// Times two-phase leases, their expiry and failure delays by the database server's clock
    /// (`statement_timestamp()`) instead of the guard's, so that a worker with a skewed clock
    /// can neither take over a live claim nor write a short lease. The durations still come
    /// from [`GuardConfig`](super::GuardConfig). Transactional mode then stamps its records
    /// with the database's clock too, so every record the store writes carries one clock. The
    /// retention purge keeps the guard's clock (its horizon is days; skew is seconds). Off by
    /// default; see the type's docs.
    pub fn with_database_clock(mut self, database_clock: bool) -> Self {
        self.database_clock = database_clock;
        self
    }

    /// Whether two-phase mode is timed by the database's clock.
    pub fn database_clock(&self) -> bool {
        self.database_clock
    }

    /// The instant to bind: the guard's, or `NULL` for the database's own (`COALESCE`d in SQL).
    fn instant(&self, guard_instant: DateTime<Utc>) -> Option<DateTime<Utc>> {
        (!self.database_clock).then_some(guard_instant)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The committed record of `key`: its state and body hash.
    async fn record<'e, X>(&self, executor: X, key: &EventKey) -> Result<Option<(String, Vec<u8>)>>
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
            "UPDATE sos_webhook_events \
             SET state = $5, updated_at = COALESCE($6, statement_timestamp()), \
                 lease_until = COALESCE($6, statement_timestamp()), last_error = $7 \
             WHERE tenant = $1 AND provider = $2 AND event_id = $3 AND claim_token = $4 AND state = 'processing'",
        )
        .bind(claim.key().tenant().as_str())
        .bind(claim.key().provider().as_str())
        .bind(claim.key().event_id().as_str())
        .bind(claim.token())
        .bind(state)
        .bind(self.instant(now))
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
        // With the database's clock the three instants are bound as NULL and computed from
        // statement_timestamp() and the configured durations ($9 the lease, $10 the failure
        // delay), never from the guard's clock.
        let lease = interval(request.lease);
        let failed_delay = interval(request.failed_retry_after);
        let claimed = sqlx::query(
            "INSERT INTO sos_webhook_events AS e \
               (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
             VALUES ($1, $2, $3, $4, 'processing', $5, 1, COALESCE($6, statement_timestamp() + $9), NULL, \
                     COALESCE($7, statement_timestamp()), COALESCE($7, statement_timestamp())) \
             ON CONFLICT (tenant, provider, event_id) DO UPDATE \
               SET state = 'processing', claim_token = EXCLUDED.claim_token, attempts = e.attempts + 1, \
                   lease_until = EXCLUDED.lease_until, updated_at = EXCLUDED.updated_at \
               WHERE e.body_hash = EXCLUDED.body_hash \
                 AND ((e.state = 'processing' AND e.lease_until <= EXCLUDED.updated_at) \
                   OR (e.state = 'failed' AND e.updated_at <= COALESCE($8, statement_timestamp() - $10))) \
             RETURNING attempts",
        )
        .bind(key.tenant().as_str())
        .bind(key.provider().as_str())
        .bind(key.event_id().as_str())
        .bind(request.body_hash.as_bytes().as_slice())
        .bind(&token)
        .bind(self.instant(request.lease_until))
        .bind(self.instant(request.now))
        .bind(self.instant(request.failed_reclaimable_before))
        .bind(lease)
        .bind(failed_delay)
        .fetch_optional(&self.pool)
        .await;
        let claimed = match claimed {
            Ok(claimed) => claimed,
            // Under REPEATABLE READ or SERIALIZABLE (a database's default_transaction_isolation),
            // a record committed after the statement's snapshot fails the claim with 40001
            // instead of being arbitrated. Nothing was written: answer from the committed
            // record, read below with a fresh snapshot.
            Err(error) if is_serialization_failure(&error) => None,
            Err(error) => return Err(error.into()),
        };
        if let Some(row) = claimed {
            let attempts: i32 = row.try_get(0)?;
            return Ok(ClaimAnswer::Claimed(Claim::with_token(key, token, attempts.unsigned_abs())));
        }
        // The record exists and is not claimable; a record purged in between is answered
        // "retry", which is always safe.
        let answer = self.record(&self.pool, key).await?;
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
            sqlx::query("DELETE FROM sos_webhook_events WHERE state = 'processed' AND updated_at < $1")
                .bind(before)
                .execute(&self.pool)
                .await?;
        Ok(result.rows_affected())
    }

    async fn purge_processed_of(&self, tenant: &TenantId, before: DateTime<Utc>) -> Result<u64> {
        // The primary key starts with the tenant, so this reads only the tenant's records.
        let result = sqlx::query(
            "DELETE FROM sos_webhook_events WHERE tenant = $1 AND state = 'processed' AND updated_at < $2",
        )
        .bind(tenant.as_str())
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }
}

/// A configured duration as a PostgreSQL interval of microseconds only, at most 1,000 years.
///
/// No days part: `timestamptz + interval '1 day'` adds a calendar day in the session's time
/// zone (23 or 25 hours across a daylight-saving change), while a microseconds part is elapsed
/// time in every zone. The cap keeps `statement_timestamp() ± interval` inside PostgreSQL's
/// time range (4713 BC to 294276 AD) for any configured duration: a 1,000-year lease never
/// expires and a 1,000-year delay never passes, as the configured ones would not.
fn interval(duration: Duration) -> PgInterval {
    const MAX_MICROS: u128 = 1_000 * 366 * 24 * 3600 * 1_000_000;
    let micros = duration.as_micros().min(MAX_MICROS);
    PgInterval { months: 0, days: 0, microseconds: i64::try_from(micros).unwrap_or(i64::MAX) }
}

/// The transactional claim (migrations `0200000003` to `0200000006`), with bind parameters: a
/// read of the committed record (a duplicate takes no lock; skipped under SERIALIZABLE), and only when there is none the
/// advisory lock and one `INSERT … ON CONFLICT DO NOTHING`, whose conflict is answered from the
/// record read again. It answers with a row, never with an error (an error per duplicate
/// would fill the server's log).
const TRANSACTIONAL_CLAIM: &str =
    "SELECT claimed, state, body_hash FROM sos_webhooks_claim_v2($1, $2, $3, $4, $5, $6, $7)";

/// The message that ends a claimed transaction, in one round trip: the check (the transaction
/// is alive and its claim row stands, see migration `0200000002`), `COMMIT`, and a `BEGIN` that
/// opens an empty transaction for sqlx's bookkeeping: dropping the `Transaction` queues its
/// `ROLLBACK`, which the pool sends with the ping it makes when the connection is returned (a
/// `ROLLBACK` without a transaction would log a warning on every delivery). The only literal
/// is the guard's own token (`new_token`: 32 lowercase hex digits); anything else is refused.
fn commit_sql(token: &str) -> Result<String> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::Storage("the claim token is not hex digits".into()));
    }
    Ok(format!("SELECT sos_webhooks_check_v1('{token}'); COMMIT; BEGIN"))
}

/// The SQLSTATE of a database error, if it is one.
fn sqlstate(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(database) => database.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// Whether a database error is a serialization failure (SQLSTATE 40001), which REPEATABLE READ
/// and SERIALIZABLE raise where READ COMMITTED would wait and arbitrate.
fn is_serialization_failure(error: &sqlx::Error) -> bool {
    sqlstate(error).as_deref() == Some("40001")
}

impl WebhookGuard<PgStore> {
    /// Runs `handler` exactly once per event, in transactional mode.
    ///
    /// The guard opens a transaction and claims the event with one statement (the function
    /// `sos_webhooks_claim_v2`, bind parameters): it takes a non-blocking advisory lock on the key (a duplicate
    /// arriving while a handler runs is answered [`Outcome::RetryInFlight`] at once, however
    /// long the handler takes) and claims the event with one
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING`, already marked processed; only when that
    /// inserted nothing does it read the committed record to answer. The handler runs with the
    /// same transaction, then the guard checks the claim and commits in one round trip. The
    /// mark is invisible to others until the commit, so the handler's writes and the mark
    /// commit together. A handler error, a crash or a dropped future rolls everything back and
    /// leaves nothing to clean up.
    ///
    /// # Errors
    ///
    /// [`RunError::Handler`] with the handler's error (the transaction was rolled back);
    /// [`RunError::Guard`] when the database fails, [`Error::TransactionAborted`] when a
    /// statement inside the handler failed and the handler did not return its error, or
    /// [`Error::ModeMismatch`] when the event has an unfinished two-phase record.
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
        if let Some(answer) = self.cached(key, &body_hash) {
            return Ok(answer.into());
        }
        if self.reads_first() {
            // Answers committed duplicates without a transaction; decides nothing on its own.
            let record = self.store().record(&self.store().pool, key).await?;
            if record.is_some() {
                return Ok(self.answer_from_record(key, &body_hash, record)?.into());
            }
        }
        let token = new_token();
        // Cancel-safe BEGIN (sqlx#4393): a delivery dropped mid-BEGIN must not hand the host's
        // pool a connection inside a stray transaction, where later claims would be invisible.
        let mut connection = PgTxConnection::acquire(&self.store().pool).await.map_err(Error::from)?;
        let mut transaction = connection.begin().await.map_err(Error::from)?;
        let row = sqlx::query(TRANSACTIONAL_CLAIM)
            .bind(key.tenant().as_str())
            .bind(key.provider().as_str())
            .bind(key.event_id().as_str())
            .bind(body_hash.as_bytes().as_slice())
            .bind(&token)
            // NULL with the database clock: the claim stamps the record with
            // statement_timestamp() (migration 0200000006).
            .bind(self.store().instant(self.now()))
            .bind(key.lock_id())
            .fetch_one(&mut *transaction)
            .await;
        let row = match row {
            Ok(row) => row,
            // A record committed after the claim's snapshot (REPEATABLE READ or SERIALIZABLE by
            // default): nothing was written, so answer from the committed record, read after the
            // ROLLBACK with a fresh snapshot.
            Err(error) if is_serialization_failure(&error) => {
                transaction.rollback().await.map_err(Error::from)?;
                // Back to the pool before the read takes one (a pool of one must not wait on us).
                drop(connection);
                let record = self.store().record(&self.store().pool, key).await?;
                return Ok(self.answer_from_record(key, &body_hash, record)?.into());
            }
            Err(error) => return Err(Error::from(error).into()),
        };
        let claimed: bool = row.try_get(0).map_err(Error::from)?;
        if claimed {
            self.observe_delivery(false);
            return self.run_claimed(transaction, key, &body_hash, &token, handler).await;
        }
        // Not claimed. Whatever lock this transaction holds guards nothing (a committed record
        // answers every later delivery, and an uncommitted one holds its own lock), so the
        // ROLLBACK rides on the pool's release ping instead of taking a round trip.
        drop(transaction);
        drop(connection);
        let state: Option<String> = row.try_get(1).map_err(Error::from)?;
        let hash: Option<Vec<u8>> = row.try_get(2).map_err(Error::from)?;
        let record = state.zip(hash);
        Ok(self.answer_from_record(key, &body_hash, record)?.into())
    }

    /// The answer to a delivery that did not claim the event: from the committed record, or
    /// [`Duplicate::RetryInFlight`] when there is none (another delivery holds the event, or
    /// the record was purged in between; "retry" is always safe). Notes the delivery for
    /// [`ReadFirst::Adaptive`](super::ReadFirst::Adaptive) and remembers a processed event.
    ///
    /// # Errors
    ///
    /// [`Error::ModeMismatch`] for an unfinished two-phase record with the same body.
    fn answer_from_record(
        &self,
        key: &EventKey,
        body_hash: &Sha256Digest,
        record: Option<(String, Vec<u8>)>,
    ) -> Result<Duplicate> {
        self.observe_delivery(record.is_some());
        let answer = match record {
            Some((state, hash)) => super::transactional_answer(&state, &hash, body_hash)?,
            None => Duplicate::RetryInFlight,
        };
        self.remember(key, body_hash, answer);
        Ok(answer)
    }

    /// Runs the handler in the claimed transaction, then checks the claim and commits.
    async fn run_claimed<T, E, F>(
        &self,
        mut transaction: Transaction<'_, Postgres>,
        key: &EventKey,
        body_hash: &Sha256Digest,
        token: &str,
        handler: F,
    ) -> Result<Outcome<T>, RunError<E>>
    where
        F: PgHandler<T, E>,
    {
        match handler(&mut transaction).await {
            Ok(value) => match transaction.execute(sqlx::raw_sql(&commit_sql(token)?)).await {
                Ok(_) => {
                    // Committed; `transaction` now holds the empty transaction the message
                    // opened, whose ROLLBACK is queued on drop and sent with the release ping.
                    drop(transaction);
                    self.remember(key, body_hash, Duplicate::AlreadyProcessed);
                    Ok(Outcome::Processed(value))
                }
                Err(error) => {
                    // Either the check failed (the transaction is still open and aborted) or
                    // COMMIT failed (it is over). Roll back now either way.
                    let _ = transaction.rollback().await;
                    if matches!(sqlstate(&error).as_deref(), Some("25P02" | "SWG01")) {
                        Err(Error::TransactionAborted.into())
                    } else {
                        Err(Error::from(error).into())
                    }
                }
            },
            Err(error) => {
                transaction.rollback().await.map_err(Error::from)?;
                Err(RunError::Handler(error))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::commit_sql;

    #[test]
    fn commit_sql_holds_only_the_token_as_hex() {
        assert_eq!(
            commit_sql("0123abcd").unwrap(),
            "SELECT sos_webhooks_check_v1('0123abcd'); COMMIT; BEGIN"
        );
        for bad in ["", "ab'; DROP TABLE x; --", "0123\\", "zz"] {
            assert!(commit_sql(bad).is_err(), "{bad}");
        }
    }
}
