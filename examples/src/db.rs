//! The server's storage: SQLite by default, PostgreSQL when configured.
//!
//! Every statement is written once: both backends accept `$N` placeholders, and every column is
//! TEXT or a 64-bit integer, so the same SQL and the same binds run on either pool. The
//! [`on_pool!`] macro expands a block once per backend.

use std::time::Duration;

use anyhow::Context as _;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// The server's own migrations, one set per backend, as `(sqlite, postgres)`.
///
/// Migration versions of every SOS crate live in their own numeric range so several crates can
/// share one database; each migrator ignores the others' versions.
pub fn migrators() -> (Migrator, Migrator) {
    let mut sqlite = sqlx::migrate!("migrations/sqlite");
    sqlite.set_ignore_missing(true);
    let mut postgres = sqlx::migrate!("migrations/postgres");
    postgres.set_ignore_missing(true);
    (sqlite, postgres)
}

/// Every migrator the server runs on SQLite: sos-audit, sos-webhooks, sos-identity, its own.
pub fn sqlite_migrators() -> Vec<Migrator> {
    vec![
        sos_audit::sqlite_migrator(),
        sos_webhooks::sqlite_migrator(),
        sos_identity::sqlite_migrator(),
        migrators().0,
    ]
}

/// Every migrator the server runs on PostgreSQL: sos-audit, sos-webhooks, sos-identity, its own.
pub fn postgres_migrators() -> Vec<Migrator> {
    vec![
        sos_audit::postgres_migrator(),
        sos_webhooks::postgres_migrator(),
        sos_identity::postgres_migrator(),
        migrators().1,
    ]
}

/// A connection pool on one of the supported backends.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// A PostgreSQL server, when `DATABASE_URL` is set.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the pool of whichever backend `$db` is.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match $db {
            $crate::db::Database::Sqlite($pool) => $body,
            $crate::db::Database::Postgres($pool) => $body,
        }
    };
}
pub(crate) use on_pool;

/// One bound value of a statement.
#[derive(Debug, Clone)]
pub(crate) enum Bind {
    /// A TEXT value.
    Text(String),
    /// A 64-bit integer.
    Int(i64),
}

/// A statement with its values, to run inside an audited write.
#[derive(Debug, Clone)]
pub(crate) struct Statement {
    pub(crate) sql: &'static str,
    pub(crate) binds: Vec<Bind>,
}

impl Statement {
    pub(crate) fn new(sql: &'static str, binds: Vec<Bind>) -> Self {
        Self { sql, binds }
    }
}

/// Binds `$binds` (a slice of [`Bind`]) to the query or query_as `$query`, in order.
macro_rules! bind_all {
    ($query:expr, $binds:expr) => {{
        let mut query = $query;
        for bind in $binds {
            query = match bind {
                $crate::db::Bind::Text(text) => query.bind(text.clone()),
                $crate::db::Bind::Int(value) => query.bind(*value),
            };
        }
        query
    }};
}
pub(crate) use bind_all;

impl Database {
    /// Opens the database named by the configuration and applies every migration.
    ///
    /// # Errors
    ///
    /// When the database cannot be reached, created or migrated.
    pub async fn open(database_url: Option<&str>, sqlite_path: &std::path::Path) -> anyhow::Result<Self> {
        match database_url {
            Some(url) => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .context("cannot connect to PostgreSQL at DATABASE_URL; check that the server runs and the URL is right")?;
                for migrator in postgres_migrators() {
                    migrator.run(&pool).await.context("PostgreSQL migrations failed")?;
                }
                Ok(Self::Postgres(pool))
            }
            None => {
                if let Some(parent) = sqlite_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create directory {}", parent.display()))?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(sqlite_path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(8)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open SQLite database {}", sqlite_path.display()))?;
                for migrator in sqlite_migrators() {
                    migrator.run(&pool).await.context("SQLite migrations failed")?;
                }
                Ok(Self::Sqlite(pool))
            }
        }
    }

    /// Which backend this is, for logs and `/healthz`.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    ///
    /// When it does not.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(self, pool => sqlx::query("SELECT 1").execute(pool).await.map(drop))
    }

    /// Runs one statement outside any audited write (for bookkeeping that is not state: claims,
    /// leases, statuses) and returns the rows it changed.
    pub(crate) async fn execute(&self, statement: &Statement) -> Result<u64, sqlx::Error> {
        on_pool!(self, pool => Ok(bind_all!(sqlx::query(statement.sql), &statement.binds)
            .execute(pool)
            .await?
            .rows_affected()))
    }

    /// Runs a query returning one TEXT column and one integer column per row.
    pub(crate) async fn text_int_rows(
        &self,
        sql: &'static str,
        binds: &[Bind],
    ) -> Result<Vec<(String, i64)>, sqlx::Error> {
        on_pool!(self, pool => bind_all!(sqlx::query_as::<_, (String, i64)>(sql), binds).fetch_all(pool).await)
    }

    /// Runs a query returning one TEXT column per row.
    pub(crate) async fn text_rows(
        &self,
        sql: &'static str,
        binds: &[Bind],
    ) -> Result<Vec<String>, sqlx::Error> {
        on_pool!(self, pool => bind_all!(sqlx::query_as::<_, (String,)>(sql), binds)
            .fetch_all(pool)
            .await
            .map(|rows| rows.into_iter().map(|(text,)| text).collect()))
    }

    /// Runs a query returning one integer.
    pub(crate) async fn int(&self, sql: &'static str, binds: &[Bind]) -> Result<i64, sqlx::Error> {
        on_pool!(self, pool => bind_all!(sqlx::query_as::<_, (i64,)>(sql), binds)
            .fetch_one(pool)
            .await
            .map(|(value,)| value))
    }
}
