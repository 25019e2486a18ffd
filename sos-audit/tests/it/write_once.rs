//! The entry table is write-once in the database itself, and tampering done around the triggers
//! (deliberately, as the table owner) is found by the verifier.

use sos_audit::{AuditStore, Finding, verify_store};

use crate::{entry, tenant};

mod postgres {
    use sos_audit::PgAuditChain;
    use sos_testkit::PgTestDatabase;

    use super::*;

    async fn chain_of(length: u64) -> (PgTestDatabase, PgAuditChain) {
        let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
        let chain = PgAuditChain::new(database.pool().clone());
        for index in 0..length {
            chain.append(entry("acme", index)).await.expect("append");
        }
        (database, chain)
    }

    #[tokio::test]
    async fn update_delete_truncate_are_rejected() {
        let (database, _chain) = chain_of(3).await;
        for statement in [
            "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 2",
            "DELETE FROM audit_entries WHERE seq = 3",
            "TRUNCATE audit_entries",
        ] {
            let error = sqlx::query(statement).execute(database.pool()).await.expect_err(statement);
            assert!(error.to_string().contains("append-only"), "{statement}: {error}");
        }
        let count: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries")
            .fetch_one(database.pool())
            .await
            .expect("count");
        assert_eq!(count, 3);
    }

    #[tokio::test]
    async fn head_rows_are_never_removed_and_malformed_rows_are_refused() {
        let (database, chain) = chain_of(2).await;
        for statement in ["DELETE FROM audit_heads", "TRUNCATE audit_heads"] {
            let error = sqlx::query(statement).execute(database.pool()).await.expect_err(statement);
            assert!(error.to_string().contains("never removed"), "{statement}: {error}");
        }
        let zero = "'\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea";
        for row in [
            format!("('ACME Corp', 1, 0, 'm', 'a', '', '{{}}', {zero}, {zero})"),
            format!("('acme', 9, 0, 'm', 'a', '', '{{}}', {zero}, '\\x00'::bytea)"),
        ] {
            let statement = format!("INSERT INTO audit_entries VALUES {row}");
            assert!(
                sqlx::query(&statement).execute(database.pool()).await.is_err(),
                "{statement} was accepted"
            );
        }
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }

    /// Named shape `unique-null`: no column of a uniqueness key may be NULL.
    #[tokio::test]
    async fn unique_null_key_columns_are_not_null() {
        let (database, _chain) = chain_of(0).await;
        let nullable: Vec<String> = sqlx::query_scalar(
            "SELECT c.table_name || '.' || c.column_name
             FROM information_schema.key_column_usage k
             JOIN information_schema.columns c
               ON c.table_name = k.table_name AND c.column_name = k.column_name AND c.table_schema = k.table_schema
             WHERE k.table_name IN ('audit_entries', 'audit_heads') AND c.is_nullable = 'YES'",
        )
        .fetch_all(database.pool())
        .await
        .expect("catalog query");
        assert!(nullable.is_empty(), "nullable key columns: {nullable:?}");
        let keyed: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.key_column_usage WHERE table_name IN ('audit_entries', 'audit_heads')",
        )
        .fetch_one(database.pool())
        .await
        .expect("catalog query");
        assert_eq!(keyed, 3, "(tenant, seq) and tenant are the keys");
    }

    #[tokio::test]
    async fn tampering_around_the_triggers_is_found() {
        let (database, chain) = chain_of(6).await;
        // Deliberately bypass the write-once triggers, as a superuser could.
        sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER")
            .execute(database.pool())
            .await
            .expect("disable");
        sqlx::query("UPDATE audit_entries SET subject = 'record/forged' WHERE seq = 4")
            .execute(database.pool())
            .await
            .expect("tamper");
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        assert_eq!(verdict.finding(), Some(&Finding::Modified { seq: 4, claimed_seq: 4 }));

        sqlx::query("DELETE FROM audit_entries WHERE seq = 6")
            .execute(database.pool())
            .await
            .expect("truncate tail");
        sqlx::query("UPDATE audit_entries SET subject = 'record/3' WHERE seq = 4")
            .execute(database.pool())
            .await
            .expect("restore");
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        assert!(
            matches!(verdict.finding(), Some(Finding::Truncated { last: 5, .. })),
            "the head row catches a careless truncation: {verdict:?}"
        );
        sqlx::query("ALTER TABLE audit_entries ENABLE TRIGGER USER")
            .execute(database.pool())
            .await
            .expect("enable");
    }
}

mod sqlite {
    use sos_audit::SqliteAuditChain;
    use sos_testkit::SqliteTestDatabase;

    use super::*;

    /// Named shape `unique-null`: every column of every table is NOT NULL, keys included.
    #[tokio::test]
    async fn unique_null_key_columns_are_not_null() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        for table in ["audit_entries", "audit_heads"] {
            let rows: Vec<(String, i64, i64)> =
                sqlx::query_as(&format!("SELECT name, \"notnull\", pk FROM pragma_table_info('{table}')"))
                    .fetch_all(database.pool())
                    .await
                    .expect("table info");
            assert!(rows.iter().any(|(_, _, pk)| *pk > 0), "{table} has a key");
            for (column, not_null, _) in rows {
                assert_eq!(not_null, 1, "{table}.{column} must be NOT NULL");
            }
        }
    }

    #[tokio::test]
    async fn head_rows_are_never_removed_and_type_confused_rows_are_refused() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let chain = SqliteAuditChain::new(database.pool().clone());
        chain.append(entry("acme", 0)).await.expect("append");
        let error =
            sqlx::query("DELETE FROM audit_heads").execute(database.pool()).await.expect_err("delete head");
        assert!(error.to_string().contains("never removed"), "{error}");
        for row in [
            "('acme', 2.5, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))",
            "('ACME Corp', 1, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))",
            "('acme', 2, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(31))",
            "('acme', 2, 0, 'm', 'a', '', '{}', zeroblob(32), 'x')",
        ] {
            let statement = format!("INSERT INTO audit_entries VALUES {row}");
            let error = sqlx::query(&statement).execute(database.pool()).await.expect_err(&statement);
            assert!(error.to_string().contains("malformed"), "{statement}: {error}");
        }
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }

    #[tokio::test]
    async fn update_and_delete_are_rejected_and_bypass_is_found() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let chain = SqliteAuditChain::new(database.pool().clone());
        for index in 0..5 {
            chain.append(entry("acme", index)).await.expect("append");
        }
        for statement in [
            "INSERT OR REPLACE INTO audit_entries VALUES ('acme', 2, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))",
            "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 2",
            "DELETE FROM audit_entries",
            "DELETE FROM audit_entries WHERE seq = 3",
        ] {
            let error = sqlx::query(statement).execute(database.pool()).await.expect_err(statement);
            assert!(error.to_string().contains("append-only"), "{statement}: {error}");
        }
        // Deliberately bypass the update trigger: an unreadable row later in the chain must not
        // mask an earlier modification.
        sqlx::query("DROP TRIGGER audit_entries_no_update")
            .execute(database.pool())
            .await
            .expect("drop trigger");
        sqlx::query("UPDATE audit_entries SET hash = x'0102' WHERE seq = 4")
            .execute(database.pool())
            .await
            .expect("tamper");
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        assert!(matches!(verdict.finding(), Some(Finding::Malformed { seq: 4, .. })), "{verdict:?}");
        sqlx::query("UPDATE audit_entries SET subject = 'forged' WHERE seq = 2")
            .execute(database.pool())
            .await
            .expect("tamper");
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        assert_eq!(verdict.finding().map(Finding::position), Some(2), "{verdict:?}");
        // Deliberately bypass the trigger and delete an entry in the middle.
        sqlx::query("DROP TRIGGER audit_entries_no_delete")
            .execute(database.pool())
            .await
            .expect("drop trigger");
        sqlx::query("DELETE FROM audit_entries WHERE seq = 3")
            .execute(database.pool())
            .await
            .expect("tamper");
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        // The modification at seq 2 is still the first finding.
        assert_eq!(verdict.finding().map(Finding::position), Some(2), "{verdict:?}");
    }
}
