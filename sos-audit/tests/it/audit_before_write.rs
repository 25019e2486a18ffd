//! Named shape `audit-before-write`: a state change and its audit entry commit together or not at
//! all. Every case reads both tables afterwards, on PostgreSQL and on SQLite.

use sos_audit::{AuditStore, Error, ExpectRows, verify_store};

use crate::{entry, tenant};

/// The host's write failed on purpose, after the audit insert and the host's own UPDATE.
#[derive(Debug, thiserror::Error)]
#[error("injected failure after the audit insert")]
struct Injected;

mod postgres {
    use sos_audit::PgAuditChain;
    use sos_testkit::PgTestDatabase;
    use sqlx::Connection as _;

    use super::*;

    async fn setup() -> (PgTestDatabase, PgAuditChain) {
        let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
        sqlx::query("CREATE TABLE deals (tenant TEXT NOT NULL, id BIGINT NOT NULL, stage TEXT NOT NULL, PRIMARY KEY (tenant, id))")
            .execute(database.pool())
            .await
            .expect("host table");
        sqlx::query("INSERT INTO deals VALUES ('acme', 1, 'new')")
            .execute(database.pool())
            .await
            .expect("seed");
        let chain = PgAuditChain::new(database.pool().clone());
        (database, chain)
    }

    async fn state(database: &PgTestDatabase) -> (i64, String, i64) {
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries")
            .fetch_one(database.pool())
            .await
            .expect("count");
        let stage: String = sqlx::query_scalar("SELECT stage FROM deals WHERE tenant = 'acme' AND id = 1")
            .fetch_one(database.pool())
            .await
            .expect("stage");
        let heads: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_heads WHERE seq > 0")
            .fetch_one(database.pool())
            .await
            .expect("heads");
        (entries, stage, heads)
    }

    #[tokio::test]
    async fn matching_write_commits_with_its_entry() {
        let (database, chain) = setup().await;
        let mut tx = database.pool().begin().await.expect("begin");
        let stored = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect("audited write");
        tx.commit().await.expect("commit");
        assert_eq!(stored.seq, 1);
        assert_eq!(state(&database).await, (1, "won".to_owned(), 1));
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }

    #[tokio::test]
    async fn zero_row_write_rolls_back_even_if_the_host_commits() {
        let (database, chain) = setup().await;
        let mut tx = database.pool().begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done =
                        sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999")
                            .execute(conn)
                            .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err("zero rows must fail");
        assert!(matches!(error, Error::UnexpectedRows { actual: 0, .. }), "{error:?}");
        // The careless host commits anyway: the savepoint already removed the entry.
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
    }

    #[tokio::test]
    async fn host_error_rolls_back_both() {
        let (database, chain) = setup().await;
        let mut tx = database.pool().begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(&mut *conn)
                        .await?;
                    // Violates the primary key: a host SQL error after its first change.
                    let done = sqlx::query("INSERT INTO deals VALUES ('acme', 1, 'dup')")
                        .execute(&mut *conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err("host error must fail");
        assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
        tx.commit().await.expect("the host transaction is still usable and commits nothing");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
    }

    #[tokio::test]
    async fn error_injected_after_audit_insert_before_commit() {
        let (database, chain) = setup().await;
        // Inside the audited write: the entry and the UPDATE are done, then the write fails.
        let mut tx = database.pool().begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(&mut *conn)
                        .await
                        .map_err(|_| Injected)?;
                    Err::<u64, _>(Injected)
                })
            })
            .await
            .expect_err("injected failure");
        assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));

        // After the audited write succeeded: the host's next statement fails and it rolls back.
        let mut tx = database.pool().begin().await.expect("begin");
        chain
            .audited(&mut tx, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect("audited write");
        let failed = sqlx::query("SELECT 1 / 0").execute(&mut *tx).await;
        assert!(failed.is_err());
        tx.rollback().await.expect("rollback");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));

        // The chain continues without a gap: the rolled-back entries left nothing behind.
        let stored = chain.append(entry("acme", 3)).await.expect("append");
        assert_eq!(stored.seq, 1);
    }

    #[tokio::test]
    async fn audited_without_host_transaction_is_atomic_too() {
        let (database, chain) = setup().await;
        let mut conn = database.pool().acquire().await.expect("connection");
        let error = chain
            .audited(&mut conn, entry("acme", 1), ExpectRows::AtLeast(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("DELETE FROM deals WHERE id = 999").execute(conn).await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err("zero rows");
        assert!(matches!(error, Error::UnexpectedRows { .. }));
        assert!(!conn.is_in_transaction());
        drop(conn);
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
    }
}

mod sqlite {
    use sos_audit::SqliteAuditChain;
    use sos_testkit::SqliteTestDatabase;

    use super::*;

    async fn setup() -> (SqliteTestDatabase, SqliteAuditChain) {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        sqlx::query("CREATE TABLE deals (tenant TEXT NOT NULL, id INTEGER NOT NULL, stage TEXT NOT NULL, PRIMARY KEY (tenant, id))")
            .execute(database.pool())
            .await
            .expect("host table");
        sqlx::query("INSERT INTO deals VALUES ('acme', 1, 'new')")
            .execute(database.pool())
            .await
            .expect("seed");
        let chain = SqliteAuditChain::new(database.pool().clone());
        (database, chain)
    }

    async fn state(database: &SqliteTestDatabase) -> (i64, String, i64) {
        let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries")
            .fetch_one(database.pool())
            .await
            .expect("count");
        let stage: String = sqlx::query_scalar("SELECT stage FROM deals WHERE tenant = 'acme' AND id = 1")
            .fetch_one(database.pool())
            .await
            .expect("stage");
        let heads: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_heads WHERE seq > 0")
            .fetch_one(database.pool())
            .await
            .expect("heads");
        (entries, stage, heads)
    }

    #[tokio::test]
    async fn matching_write_commits_with_its_entry() {
        let (database, chain) = setup().await;
        let mut tx = chain.begin().await.expect("begin");
        chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect("audited write");
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (1, "won".to_owned(), 1));
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }

    #[tokio::test]
    async fn zero_row_write_rolls_back_even_if_the_host_commits() {
        let (database, chain) = setup().await;
        let mut tx = chain.begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done =
                        sqlx::query("UPDATE deals SET stage = 'won' WHERE id = 999").execute(conn).await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err("zero rows must fail");
        assert!(matches!(error, Error::UnexpectedRows { actual: 0, .. }), "{error:?}");
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
    }

    #[tokio::test]
    async fn host_error_rolls_back_both() {
        let (database, chain) = setup().await;
        let mut tx = chain.begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(&mut *conn)
                        .await?;
                    let done = sqlx::query("INSERT INTO deals VALUES ('acme', 1, 'dup')")
                        .execute(&mut *conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err("host error must fail");
        assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
    }

    #[tokio::test]
    async fn error_injected_after_audit_insert_before_commit() {
        let (database, chain) = setup().await;
        let mut tx = chain.begin().await.expect("begin");
        let error = chain
            .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(&mut *conn)
                        .await
                        .map_err(|_| Injected)?;
                    Err::<u64, _>(Injected)
                })
            })
            .await
            .expect_err("injected failure");
        assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
        tx.commit().await.expect("commit");
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));

        let mut tx = chain.begin().await.expect("begin");
        chain
            .audited(&mut tx, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                        .execute(conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect("audited write");
        let failed = sqlx::query("INSERT INTO missing_table VALUES (1)").execute(&mut *tx).await;
        assert!(failed.is_err());
        drop(tx);
        assert_eq!(state(&database).await, (0, "new".to_owned(), 0));
        let stored = chain.append(entry("acme", 3)).await.expect("append");
        assert_eq!(stored.seq, 1);
    }
}
