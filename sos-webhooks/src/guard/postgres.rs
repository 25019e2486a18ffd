//! The PostgreSQL store: transactional mode (the handler shares the claim's transaction) and
//! two-phase mode.

use std::fmt;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
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
    for<'t> FnOnce(&'t mut Transaction<'static, Postgres>) -> BoxFuture<'t, Result<T, E>>
{
}

impl<T, E, F> PgHandler<T, E> for F where
    F: for<'t> FnOnce(&'t mut Transaction<'static, Postgres>) -> BoxFuture<'t, Result<T, E>>
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
    /// from [`GuardConfig`](super::GuardConfig). The retention purge keeps the guard's clock
    /// (its horizon is days; skew is seconds). Off by default; see the type's docs.
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
        // statement_timestamp() and the guard's durations ($9 the lease, $10 the failure delay).
        let lease = micros_between(request.now, request.lease_until);
        let failed_delay = micros_between(request.failed_reclaimable_before, request.now);
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

/// `later - earlier` as a PostgreSQL interval of microseconds only, never negative.
///
/// No days part: `timestamptz + interval '1 day'` adds a calendar day in the session's time
/// zone (23 or 25 hours across a daylight-saving change), while a microseconds part is elapsed
/// time in every zone. An `i64` of microseconds spans about 292,000 years, so a "never expires"
/// lease (saturated at year 9999) fits. (sqlx's own encoding of a `chrono::Duration` goes
/// through nanoseconds and refuses spans over about 292 years.)
fn micros_between(earlier: DateTime<Utc>, later: DateTime<Utc>) -> PgInterval {
    let span = later.signed_duration_since(earlier).max(chrono::Duration::zero());
    PgInterval { months: 0, days: 0, microseconds: span.num_microseconds().unwrap_or(i64::MAX) }
}

/// The claim of transactional mode, in one statement. `existing` reads the committed record
/// (the statement's snapshot never shows the row this statement inserts); only when there is
/// none does the insert ask for the key's advisory lock (a `CASE` fixes that order), so a
/// duplicate of a committed event takes no lock and its rollback may be deferred. A record
/// committed after the snapshot reads as absent, and the insert's arbitration on the unique
/// key then inserts nothing: answered "retry", which is always safe. The claim returns the
/// new row's `ctid` for the check before `COMMIT`.
const TRANSACTIONAL_CLAIM: &str = "\
WITH existing AS MATERIALIZED ( \
  SELECT state, body_hash FROM sos_webhook_events WHERE tenant = $1 AND provider = $2 AND event_id = $3), \
claimed AS ( \
  INSERT INTO sos_webhook_events \
    (tenant, provider, event_id, body_hash, state, claim_token, attempts, lease_until, last_error, first_seen_at, updated_at) \
  SELECT $1, $2, $3, $4, 'processed', $5, 1, $6, NULL, $6, $6 \
  WHERE CASE WHEN EXISTS (SELECT 1 FROM existing) THEN false ELSE pg_try_advisory_xact_lock($7) END \
  ON CONFLICT (tenant, provider, event_id) DO NOTHING \
  RETURNING ctid::text AS tid) \
SELECT (SELECT tid FROM claimed), (SELECT state FROM existing), (SELECT body_hash FROM existing)";

/// A row's `ctid` as PostgreSQL prints it, `(block,offset)`, parsed so that only digits are
/// ever written back into SQL.
fn parse_tid(text: &str) -> Option<(u32, u16)> {
    let inner = text.strip_prefix('(')?.strip_suffix(')')?;
    let (block, offset) = inner.split_once(',')?;
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if !digits(block) || !digits(offset) {
        return None;
    }
    Some((block.parse().ok()?, offset.parse().ok()?))
}

/// The statement that ends a claimed transaction, sent as one simple query (one round trip).
///
/// The `SELECT` fails if a statement inside the handler failed (PostgreSQL aborted the
/// transaction, and its `COMMIT` would silently roll back) or if the claim row is gone or
/// rewritten (division by zero); then neither `COMMIT` nor `BEGIN` runs. Otherwise `COMMIT`
/// commits, and `BEGIN` opens an empty transaction for sqlx's own bookkeeping: dropping the
/// `Transaction` queues its `ROLLBACK`, which the pool sends with the ping it makes when the
/// connection is returned, so it costs no round trip of its own. The literals are digits and
/// the guard's own hex token, never caller text.
fn commit_sql(tid: (u32, u16), token: &str) -> String {
    format!(
        "SELECT 1 / count(*)::int FROM sos_webhook_events WHERE ctid = '({},{})'::tid AND claim_token = '{token}'; COMMIT; BEGIN",
        tid.0, tid.1
    )
}

/// Whether a database error says the transaction was already aborted (25P02) or the claim
/// check found no row (22012, the check's division by zero).
fn is_aborted_claim(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(database) = error else {
        return false;
    };
    matches!(database.code().as_deref(), Some("25P02" | "22012"))
}

impl WebhookGuard<PgStore> {
    /// Runs `handler` exactly once per event, in transactional mode.
    ///
    /// The guard opens a transaction and, in one statement, reads the committed record and,
    /// when there is none, takes a non-blocking advisory lock on the key (a duplicate arriving
    /// while a handler runs is answered [`Outcome::RetryInFlight`] at once, however long the
    /// handler takes) and claims the event with one
    /// `INSERT … ON CONFLICT DO NOTHING RETURNING` already marked processed. It runs the handler
    /// with the same transaction, then checks the claim and commits in one round trip. The
    /// mark is invisible to others until the commit, so the handler's writes and the mark
    /// commit together. A handler error, a crash or a dropped future rolls everything back and
    /// leaves nothing to clean up.
    ///
    /// # Errors
    ///
    /// [`RunError::Handler`] with the handler's error (the transaction was rolled back);
    /// [`RunError::Guard`] when the database fails, or [`Error::TransactionAborted`] when a
    /// statement inside the handler failed and the handler did not return its error.
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
        if self.config().read_first() {
            // Answers committed duplicates without a transaction; decides nothing on its own.
            if let Some(answer) = self.store().existing(&self.store().pool, key, &body_hash).await?
                && answer != Duplicate::RetryInFlight
            {
                self.remember(key, &body_hash, answer);
                return Ok(answer.into());
            }
        }
        let now = self.now();
        let token = new_token();
        let mut transaction = self.store().pool.begin().await.map_err(Error::from)?;
        let row = sqlx::query(TRANSACTIONAL_CLAIM)
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
        let tid: Option<String> = row.try_get(0).map_err(Error::from)?;
        let Some(tid) = tid else {
            let state: Option<String> = row.try_get(1).map_err(Error::from)?;
            let hash: Option<Vec<u8>> = row.try_get(2).map_err(Error::from)?;
            let answer = match (state, hash) {
                (Some(state), Some(hash)) => {
                    // A committed record: no lock was asked for, so the rollback can ride on
                    // the pool's release ping instead of taking a round trip of its own.
                    drop(transaction);
                    answer_from(&state, &hash, &body_hash)
                }
                _ => {
                    // The lock is held by a delivery in flight, or a record committed after
                    // this statement's snapshot (and this transaction may hold the lock):
                    // end the transaction now.
                    transaction.rollback().await.map_err(Error::from)?;
                    Duplicate::RetryInFlight
                }
            };
            self.remember(key, &body_hash, answer);
            return Ok(answer.into());
        };
        let tid =
            parse_tid(&tid).ok_or_else(|| Error::Storage("PostgreSQL returned an unreadable ctid".into()))?;
        match handler(&mut transaction).await {
            Ok(value) => match transaction.execute(sqlx::raw_sql(&commit_sql(tid, &token))).await {
                Ok(_) => {
                    // Committed; `transaction` now holds the empty transaction the statement
                    // opened, whose ROLLBACK is queued on drop and sent with the release ping.
                    drop(transaction);
                    self.remember(key, &body_hash, Duplicate::AlreadyProcessed);
                    Ok(Outcome::Processed(value))
                }
                Err(error) => {
                    // Either the check failed (the transaction is still open and aborted) or
                    // COMMIT failed (it is over). Roll back now either way.
                    let _ = transaction.rollback().await;
                    if is_aborted_claim(&error) {
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
    use super::{commit_sql, parse_tid};

    #[test]
    fn tid_parser_accepts_only_digits() {
        assert_eq!(parse_tid("(0,1)"), Some((0, 1)));
        assert_eq!(parse_tid("(4294967295,65535)"), Some((u32::MAX, u16::MAX)));
        for bad in [
            "",
            "()",
            "(1)",
            "(1,)",
            "(,1)",
            "(1,2",
            "1,2)",
            "(1,2)'",
            "(1, 2)",
            "(-1,2)",
            "(1,65536)",
            "(1,2);--",
        ] {
            assert_eq!(parse_tid(bad), None, "{bad}");
        }
        assert!(commit_sql((3, 4), "abc").contains("ctid = '(3,4)'::tid AND claim_token = 'abc'"));
    }
}
