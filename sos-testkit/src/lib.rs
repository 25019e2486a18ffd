//! Test harness for the SOS crates: every test gets its own fresh database, on real servers.
//!
//! A mocked transaction can swallow the very error a rollback test is about, so the SOS test
//! suites run against real PostgreSQL and SQLite. [`PgTestDatabase::new`] creates a uniquely
//! named database on the server at `DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`), applies the given migrations and drops the
//! database when the value is dropped. [`SqliteTestDatabase::new`] does the same with a file in a
//! temporary directory (WAL mode, so several connections and processes can share it).
//!
//! When PostgreSQL is unreachable the harness panics with a message that says how to start it:
//! a PostgreSQL test never passes silently.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Executor};

/// The server URL used when `DATABASE_URL` is not set.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// How to start the local server, printed whenever it is unreachable.
pub const START_POSTGRES_HINT: &str = "start PostgreSQL with `pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` \
     (bash .ci/run does this), or set DATABASE_URL to a server where this user may CREATE DATABASE";

/// The PostgreSQL server URL the tests use: `DATABASE_URL`, or [`DEFAULT_DATABASE_URL`].
pub fn database_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_owned())
}

/// A fresh PostgreSQL database, dropped (with its connections) when this value is dropped.
#[derive(Debug)]
pub struct PgTestDatabase {
    pool: PgPool,
    name: String,
    url: String,
    admin_options: PgConnectOptions,
}

impl PgTestDatabase {
    /// Creates a database named `sos_test_<random>` and applies `migrators` in order.
    ///
    /// # Panics
    ///
    /// When the server is unreachable (with a message saying how to start it), or when a
    /// migration fails: both mean the test cannot say anything true.
    pub async fn new(migrators: &[&Migrator]) -> Self {
        Self::with_pool_size(migrators, 10).await
    }

    /// As [`PgTestDatabase::new`], with a pool of at most `max_connections`.
    ///
    /// # Panics
    ///
    /// As [`PgTestDatabase::new`].
    pub async fn with_pool_size(migrators: &[&Migrator], max_connections: u32) -> Self {
        let server_url = database_url();
        let admin_options = PgConnectOptions::from_str(&server_url)
            .unwrap_or_else(|error| panic!("DATABASE_URL {server_url:?} is not a PostgreSQL URL: {error}"));
        let mut admin = admin_options.connect().await.unwrap_or_else(|error| {
            panic!("PostgreSQL is unreachable at {server_url}: {error}; {START_POSTGRES_HINT}")
        });
        let name = format!("sos_test_{}", uuid::Uuid::new_v4().simple());
        admin.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap_or_else(|error| {
            panic!("cannot create test database {name}: {error}; {START_POSTGRES_HINT}")
        });
        admin.close().await.ok();

        let options = admin_options.clone().database(&name);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(options)
            .await
            .unwrap_or_else(|error| panic!("cannot connect to test database {name}: {error}"));
        for migrator in migrators {
            migrator.run(&pool).await.unwrap_or_else(|error| panic!("migrations failed on {name}: {error}"));
        }
        let url = with_database(&server_url, &name);
        Self { pool, name, url, admin_options }
    }

    /// The pool connected to this test's database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// A URL of this test's database, for child processes and CLIs.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Replaces the database path of a `postgres://` URL, keeping its query string.
fn with_database(server_url: &str, database: &str) -> String {
    let (base, query) = match server_url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server_url, None),
    };
    let authority_start = base.find("://").map_or(0, |index| index + 3);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(query) => format!("{base}/{database}?{query}"),
        None => format!("{base}/{database}"),
    }
}

impl Drop for PgTestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let options = self.admin_options.clone();
        // Dropping must not need the test's runtime (it may be shutting down), so a short-lived
        // thread with its own runtime removes the database. Failure leaves a stray database,
        // which is untidy but harmless.
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut admin) = options.connect().await {
                    let _ =
                        admin.execute(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str()).await;
                    let _ = admin.close().await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A fresh SQLite database file in its own temporary directory, removed on drop.
#[derive(Debug)]
pub struct SqliteTestDatabase {
    pool: SqlitePool,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SqliteTestDatabase {
    /// Creates `test.sqlite` in a new temporary directory (WAL, `busy_timeout` 5 s) and applies
    /// `migrators` in order.
    ///
    /// # Panics
    ///
    /// When the file cannot be created or a migration fails.
    pub async fn new(migrators: &[&Migrator]) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for the SQLite test database");
        let path = dir.path().join("test.sqlite");
        let pool = sqlite_pool(&path, 8).await;
        for migrator in migrators {
            migrator.run(&pool).await.unwrap_or_else(|error| panic!("SQLite migrations failed: {error}"));
        }
        Self { pool, path, _dir: dir }
    }

    /// The pool connected to this test's database.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The database file, for child processes and CLIs.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A `sqlite://` URL of the database file.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }
}

/// Opens (creating if needed) a SQLite pool on `path` with the settings the SOS crates expect:
/// WAL journal, `synchronous = NORMAL`, foreign keys on, `busy_timeout` 5 s.
///
/// # Panics
///
/// When the file cannot be opened.
pub async fn sqlite_pool(path: &Path, max_connections: u32) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    SqlitePoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .unwrap_or_else(|error| panic!("cannot open SQLite database {}: {error}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_database_and_keeps_query() {
        assert_eq!(with_database("postgres://u@h:5432/postgres", "x"), "postgres://u@h:5432/x");
        assert_eq!(with_database("postgres://u@h:5432", "x"), "postgres://u@h:5432/x");
        assert_eq!(
            with_database("postgres://u@h/db?sslmode=disable", "x"),
            "postgres://u@h/x?sslmode=disable"
        );
    }
}
