//! The server's storage: SQLite by default, PostgreSQL when configured.

use std::time::Duration;

use anyhow::Context as _;
use sos_core::{Signal, TenantId};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::config::Config;

/// The server's own migrations, one set per backend.
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

/// A connection pool on one of the supported backends.
#[derive(Debug, Clone)]
pub enum Database {
    /// The embedded default.
    Sqlite(SqlitePool),
    /// A PostgreSQL server, when `DATABASE_URL` is set.
    Postgres(PgPool),
}

/// Whether an insert stored a new row or found the same id already there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// A new row was stored.
    New,
    /// A row with the same (tenant, id) already existed; nothing changed.
    Existing,
}

impl Database {
    /// Opens the configured database and applies migrations.
    ///
    /// # Errors
    ///
    /// When the database cannot be reached, created or migrated.
    pub async fn open(config: &Config) -> anyhow::Result<Self> {
        let (sqlite_migrator, postgres_migrator) = migrators();
        match &config.database_url {
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(url)
                    .await
                    .with_context(|| "cannot connect to PostgreSQL at DATABASE_URL; check that the server runs and the URL is right")?;
                postgres_migrator.run(&pool).await.context("PostgreSQL migrations failed")?;
                Ok(Self::Postgres(pool))
            }
            Some(url) => anyhow::bail!(
                "DATABASE_URL {url:?} is not a postgres:// URL; unset it to use the embedded SQLite file"
            ),
            None => {
                if let Some(parent) = config.sqlite_path.parent().filter(|p| !p.as_os_str().is_empty()) {
                    std::fs::create_dir_all(parent)
                        .with_context(|| format!("cannot create directory {}", parent.display()))?;
                }
                let options = SqliteConnectOptions::new()
                    .filename(&config.sqlite_path)
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(5));
                let pool =
                    SqlitePoolOptions::new().max_connections(8).connect_with(options).await.with_context(
                        || format!("cannot open SQLite database {}", config.sqlite_path.display()),
                    )?;
                sqlite_migrator.run(&pool).await.context("SQLite migrations failed")?;
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
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// Stores a signal unless one with the same (tenant, id) exists; one arbitrated write, no
    /// check-then-insert.
    ///
    /// # Errors
    ///
    /// When the database fails.
    pub async fn insert_signal(&self, signal: &Signal) -> Result<Inserted, sqlx::Error> {
        let body = serde_json::to_value(signal).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let rows = match self {
            Self::Sqlite(pool) => sqlx::query(
                "INSERT INTO sos_server_signals (tenant, id, kind, observed_at, body) VALUES (?, ?, ?, ?, ?) \
                 ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(signal.tenant().as_str())
            .bind(signal.id().to_string())
            .bind(signal.kind().as_str())
            .bind(signal.observed_at().to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
            .bind(body.to_string())
            .execute(pool)
            .await?
            .rows_affected(),
            Self::Postgres(pool) => sqlx::query(
                "INSERT INTO sos_server_signals (tenant, id, kind, observed_at, body) VALUES ($1, $2::uuid, $3, $4, $5) \
                 ON CONFLICT (tenant, id) DO NOTHING",
            )
            .bind(signal.tenant().as_str())
            .bind(signal.id().to_string())
            .bind(signal.kind().as_str())
            .bind(signal.observed_at())
            .bind(&body)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(if rows == 1 { Inserted::New } else { Inserted::Existing })
    }

    /// Lists a tenant's signals in the order they arrived, at most `limit`.
    ///
    /// # Errors
    ///
    /// When the database fails or a stored row no longer parses as a signal.
    pub async fn list_signals(&self, tenant: &TenantId, limit: i64) -> Result<Vec<Signal>, sqlx::Error> {
        let bodies: Vec<String> = match self {
            Self::Sqlite(pool) => {
                sqlx::query_scalar(
                    "SELECT body FROM sos_server_signals WHERE tenant = ? ORDER BY rowid LIMIT ?",
                )
                .bind(tenant.as_str())
                .bind(limit)
                .fetch_all(pool)
                .await?
            }
            Self::Postgres(pool) => sqlx::query_scalar(
                "SELECT body::text FROM sos_server_signals WHERE tenant = $1 ORDER BY received_seq LIMIT $2",
            )
            .bind(tenant.as_str())
            .bind(limit)
            .fetch_all(pool)
            .await?,
        };
        bodies
            .iter()
            .map(|body| serde_json::from_str(body).map_err(|error| sqlx::Error::Decode(Box::new(error))))
            .collect()
    }
}
