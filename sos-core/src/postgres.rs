//! Opening a PostgreSQL transaction so that a cancelled `BEGIN` cannot poison the pool
//! (feature `postgres`).
//!
//! # Why
//!
//! In sqlx 0.8.6 (and 0.9.0), `PgTransactionManager::begin` queues `BEGIN`, awaits the server's
//! answer, and only then counts the transaction on the connection. A future dropped at that
//! await (a client that disconnects, `tokio::time::timeout`, `select!`, an aborted task) leaves
//! the count at zero, so no `ROLLBACK` is queued, and the pool's release ping does not look at
//! the server's transaction status: the connection goes back to the pool inside an open
//! transaction. The next borrower's autocommit statements then run inside it: their writes are
//! not committed (lost when the connection closes, or committed or rolled back by someone
//! else's later `COMMIT` or `ROLLBACK`) and their row locks stay held. Upstream:
//! <https://github.com/transact-rs/sqlx/issues/4393> and `#4385`, fixed by `#4394`.
//!
//! [`PgTxConnection`] owns the pooled connection and remembers while a `BEGIN` is in flight:
//! when it is dropped with a `BEGIN` that never finished (cancelled or failed), the connection
//! is closed instead of returned to the pool. Once `BEGIN` has succeeded, sqlx's own
//! [`Transaction`] queues the `ROLLBACK` when dropped, so only that window needs the guard.
//!
//! Every SOS crate that opens a transaction on a host's [`PgPool`] does it through this type.
//! A host's own `pool.begin()` on the same pool has the same upstream bug: see
//! `docs/webhooks.md`, "Sharing the host's pool".

use std::fmt;
use std::ops::{Deref, DerefMut};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, Postgres};
use sqlx::{Connection, Transaction};

/// A pooled PostgreSQL connection whose [`begin`](Self::begin) is cancel-safe: a connection
/// whose `BEGIN` was cancelled or failed is closed when this value is dropped, never returned
/// to the pool in a transaction nobody owns.
///
/// Dereferences to the [`PgConnection`] for autocommit statements. Open transactions only with
/// [`begin`](Self::begin): `Connection::begin` on the dereferenced connection bypasses the guard.
///
/// # Examples
///
/// ```no_run
/// # async fn run(pool: sqlx::PgPool) -> Result<(), sqlx::Error> {
/// use sos_core::postgres::PgTxConnection;
///
/// let mut connection = PgTxConnection::acquire(&pool).await?;
/// let mut transaction = connection.begin().await?;
/// sqlx::query("UPDATE deals SET stage = 'won' WHERE id = 42").execute(&mut *transaction).await?;
/// transaction.commit().await?;
/// # Ok(())
/// # }
/// ```
pub struct PgTxConnection {
    connection: PoolConnection<Postgres>,
    /// Set while a `BEGIN` is in flight, and kept set once one did not finish: the server may
    /// then hold a transaction that sqlx does not know about.
    begin_unfinished: bool,
}

impl PgTxConnection {
    /// Takes a connection from `pool` (as [`PgPool::acquire`], which is itself cancel-safe).
    ///
    /// # Errors
    ///
    /// The pool's error when no connection could be had.
    pub async fn acquire(pool: &PgPool) -> Result<Self, sqlx::Error> {
        Ok(Self::from_pool_connection(pool.acquire().await?))
    }

    /// Guards a connection already taken from a pool.
    pub fn from_pool_connection(connection: PoolConnection<Postgres>) -> Self {
        Self { connection, begin_unfinished: false }
    }

    /// Opens a transaction (`BEGIN`, or a `SAVEPOINT` when one is already open), like
    /// [`PgPool::begin`] but cancel-safe: if this future is dropped before the server answered,
    /// or `BEGIN` fails, the connection is closed when `self` is dropped.
    ///
    /// # Errors
    ///
    /// sqlx's error when `BEGIN` fails.
    pub async fn begin(&mut self) -> Result<Transaction<'_, Postgres>, sqlx::Error> {
        // The split borrow lets the flag be cleared while the transaction borrows the connection.
        let Self { connection, begin_unfinished } = self;
        let unfinished_before = *begin_unfinished;
        *begin_unfinished = true;
        let transaction = Connection::begin(&mut **connection).await?;
        *begin_unfinished = unfinished_before;
        Ok(transaction)
    }
}

impl Drop for PgTxConnection {
    fn drop(&mut self) {
        if self.begin_unfinished {
            // sqlx closes it gracefully (on a task of its own) instead of pinging it back into
            // the pool, where its stray transaction would swallow the next borrower's writes.
            self.connection.close_on_drop();
        }
    }
}

impl Deref for PgTxConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl DerefMut for PgTxConnection {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.connection
    }
}

impl fmt::Debug for PgTxConnection {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("PgTxConnection")
            .field("begin_unfinished", &self.begin_unfinished)
            .finish_non_exhaustive()
    }
}
