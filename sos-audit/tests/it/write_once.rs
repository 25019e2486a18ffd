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

    /// The view `audit_appends` (migration 0100000012), through which the store appends with one
    /// statement, writes nothing a direct INSERT could not: an entry that does not extend the
    /// head (wrong link, fork, repeat, skip, under any conflict clause), a malformed one, and one
    /// whose insert a host's trigger swallows with RAISE(IGNORE) are refused, and the head stays
    /// where it was.
    #[tokio::test]
    async fn append_view_refuses_entries_that_do_not_extend_the_head() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let pool = database.pool();
        let chain = SqliteAuditChain::new(pool.clone());
        let mut hashes = Vec::new();
        for index in 0..3 {
            hashes.push(chain.append(entry("acme", index)).await.expect("append").hash);
        }
        let state = || async {
            let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries")
                .fetch_one(pool)
                .await
                .expect("count");
            let head: (i64, Vec<u8>) =
                sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = 'acme'")
                    .fetch_one(pool)
                    .await
                    .expect("head");
            (entries, head)
        };
        let before = state().await;
        assert_eq!(before, (3, (3, hashes[2].as_bytes().to_vec())));
        let forged = sos_core::Sha256Digest::of(b"forged");
        for (label, verb, seq, prev_hash, own_hash_len, refusal) in [
            ("next seq, wrong prev_hash", "INSERT", 4, forged, 32, "audit head moved"),
            ("fork of entry 2", "INSERT OR REPLACE", 3, hashes[1], 32, "audit head moved"),
            ("repeat of the head entry", "INSERT OR IGNORE", 3, hashes[1], 32, "audit head moved"),
            ("skipped seq", "INSERT OR FAIL", 5, hashes[2], 32, "audit head moved"),
            ("next seq, right link, 31-byte hash", "INSERT", 4, hashes[2], 31, "malformed"),
        ] {
            let own_hash = vec![7u8; own_hash_len];
            let error = sqlx::query(&format!(
                "{verb} INTO audit_appends VALUES ('acme', ?1, 0, 'mallory', 'grant', 'admin', '{{}}', ?2, ?3)"
            ))
            .bind(seq)
            .bind(prev_hash.as_bytes().as_slice())
            .bind(own_hash)
            .execute(pool)
            .await
            .expect_err(label);
            assert!(error.to_string().contains(refusal), "{label}: {error}");
            assert_eq!(state().await, before, "{label}: nothing written, head not moved");
        }
        // A host's trigger that silently drops the entry's insert cannot leave the head moved
        // onto an entry that does not exist.
        sqlx::query("CREATE TRIGGER host_swallows_entries BEFORE INSERT ON audit_entries BEGIN SELECT RAISE(IGNORE); END")
            .execute(pool)
            .await
            .expect("host trigger");
        let error = chain.append(entry("acme", 3)).await.expect_err("the entry was swallowed");
        let cause = std::error::Error::source(&error).map(ToString::to_string).unwrap_or_default();
        assert!(cause.contains("not written"), "{error}: {cause}");
        assert_eq!(state().await, before, "the head did not move without its entry");
        sqlx::query("DROP TRIGGER host_swallows_entries").execute(pool).await.expect("drop host trigger");
        let fourth = chain.append(entry("acme", 3)).await.expect("append");
        assert_eq!((fourth.seq, fourth.prev_hash), (4, hashes[2]));
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

/// Migration `0100000011_entries_without_rowid` on a database that already holds chains: the rows
/// move unchanged into the clustered table, the write-once and link triggers are the same as
/// before and still refuse, a host's view over the table survives, and appends continue the
/// chains.
mod sqlite_upgrade {
    use std::borrow::Cow;

    use sos_audit::SqliteAuditChain;
    use sos_testkit::SqliteTestDatabase;
    use sqlx::SqlitePool;
    use sqlx::migrate::Migrator;

    use super::*;

    const CLUSTERED: i64 = 100_000_011;

    /// The crate's SQLite migrations before the clustered table.
    fn migrator_before_clustered() -> Migrator {
        let mut migrator = sos_audit::sqlite_migrator();
        let before: Vec<_> =
            migrator.iter().filter(|migration| migration.version < CLUSTERED).cloned().collect();
        assert!(migrator.iter().any(|migration| migration.version == CLUSTERED), "the migration ships");
        migrator.migrations = Cow::Owned(before);
        migrator
    }

    type Row = (String, i64, i64, String, String, String, String, Vec<u8>, Vec<u8>);

    async fn rows(pool: &SqlitePool) -> Vec<Row> {
        sqlx::query_as(
            "SELECT tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash
             FROM audit_entries ORDER BY tenant, seq",
        )
        .fetch_all(pool)
        .await
        .expect("entries")
    }

    /// Each trigger on `audit_entries` with its SQL, whitespace collapsed.
    async fn triggers(pool: &SqlitePool) -> Vec<(String, String)> {
        let found: Vec<(String, String)> = sqlx::query_as(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_entries' ORDER BY name",
        )
        .fetch_all(pool)
        .await
        .expect("triggers");
        found
            .into_iter()
            .map(|(name, sql)| (name, sql.split_whitespace().collect::<Vec<_>>().join(" ")))
            .collect()
    }

    #[tokio::test]
    async fn upgrade_to_clustered_entries_keeps_rows_and_triggers() {
        let database = SqliteTestDatabase::new(&[&migrator_before_clustered()]).await;
        let pool = database.pool();
        // The rows as the store wrote them before 0100000012: head row moved, then the entry
        // inserted, in one transaction.
        let mut heads = std::collections::HashMap::new();
        for index in 0..40 {
            let name = if index % 3 == 0 { "globex" } else { "acme" };
            let (seq, prev_hash) = heads.get(name).copied().unwrap_or((0, sos_core::Sha256Digest::ZERO));
            let stored = entry(name, index).into_entry(seq + 1, chrono::Utc::now(), prev_hash).expect("hash");
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query("INSERT INTO audit_heads VALUES (?1, 0, zeroblob(32)) ON CONFLICT DO NOTHING")
                .bind(name)
                .execute(&mut *tx)
                .await
                .expect("head row");
            sqlx::query("UPDATE audit_heads SET seq = ?2, hash = ?3 WHERE tenant = ?1")
                .bind(name)
                .bind(seq as i64 + 1)
                .bind(stored.hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .expect("move head");
            sqlx::query("INSERT INTO audit_entries VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)")
                .bind(name)
                .bind(seq as i64 + 1)
                .bind(stored.time_us)
                .bind(&stored.actor)
                .bind(&stored.action)
                .bind(&stored.subject)
                .bind(&stored.payload)
                .bind(prev_hash.as_bytes().as_slice())
                .bind(stored.hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .expect("entry");
            tx.commit().await.expect("commit");
            heads.insert(name, (seq + 1, stored.hash));
        }
        sqlx::query("CREATE VIEW host_audit_report AS SELECT tenant, count(*) AS entries FROM audit_entries GROUP BY tenant")
            .execute(pool)
            .await
            .expect("a host's own view");
        let rows_before = rows(pool).await;
        let triggers_before = triggers(pool).await;
        assert_eq!(rows_before.len(), 40);
        assert_eq!(triggers_before.len(), 5, "{triggers_before:?}");

        sos_audit::sqlite_migrator().run(pool).await.expect("the upgrade applies");

        let table: String = sqlx::query_scalar(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'audit_entries'",
        )
        .fetch_one(pool)
        .await
        .expect("table");
        assert!(table.ends_with("WITHOUT ROWID"), "{table}");
        assert!(
            sqlx::query("SELECT rowid FROM audit_entries").fetch_all(pool).await.is_err(),
            "no rowid left"
        );
        assert_eq!(rows(pool).await, rows_before, "every entry moved unchanged");
        assert_eq!(triggers(pool).await, triggers_before, "the same triggers, word for word");
        let report: Vec<(String, i64)> =
            sqlx::query_as("SELECT tenant, entries FROM host_audit_report ORDER BY tenant")
                .fetch_all(pool)
                .await
                .expect("the host's view reads the new table");
        assert_eq!(report, vec![("acme".to_owned(), 26), ("globex".to_owned(), 14)]);
        let leftovers: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sqlite_master WHERE name LIKE 'audit_entries_%' AND type = 'table'",
        )
        .fetch_one(pool)
        .await
        .expect("leftovers");
        assert_eq!(leftovers, 0);

        // Write-once and link triggers still refuse, on the moved rows.
        for statement in [
            "UPDATE audit_entries SET actor = 'mallory' WHERE tenant = 'acme' AND seq = 2",
            "DELETE FROM audit_entries WHERE tenant = 'acme' AND seq = 3",
            "DELETE FROM audit_entries",
            "INSERT OR REPLACE INTO audit_entries VALUES ('acme', 2, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))",
        ] {
            let error = sqlx::query(statement).execute(pool).await.expect_err(statement);
            assert!(error.to_string().contains("append-only"), "{statement}: {error}");
        }
        let error = sqlx::query("INSERT INTO audit_entries VALUES ('acme', 27, 0, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))")
            .execute(pool)
            .await
            .expect_err("an unlinked entry");
        assert!(error.to_string().contains("not linked"), "{error}");
        let error = sqlx::query("INSERT INTO audit_entries VALUES ('acme', 27, 0.5, 'm', 'a', '', '{}', zeroblob(32), zeroblob(32))")
            .execute(pool)
            .await
            .expect_err("a malformed entry");
        assert!(error.to_string().contains("malformed"), "{error}");
        assert_eq!(rows(pool).await, rows_before, "nothing changed by the refused statements");

        // The chains continue: the store reads each head and links to it.
        let chain = SqliteAuditChain::new(pool.clone());
        let next = chain.append(entry("acme", 40)).await.expect("append after the upgrade");
        assert_eq!((next.seq, next.prev_hash.as_bytes().to_vec()), (27, rows_before[25].8.clone()));
        assert_eq!(chain.append(entry("acme", 41)).await.expect("append on the remembered head").seq, 28);
        let fresh = SqliteAuditChain::new(pool.clone());
        assert_eq!(fresh.append(entry("globex", 42)).await.expect("append").seq, 15);
        for name in ["acme", "globex"] {
            let verdict = verify_store(&fresh, &tenant(name), None, |_| {}).await.expect("verify");
            assert!(verdict.is_intact(), "{name}: {verdict:?}");
        }
    }

    /// A chain of three entries written through the store on the migrations before the
    /// clustered table, with `host_sql` (a host's own schema objects on the entry table) applied.
    async fn chain_before_clustered(host_sql: &[&str]) -> SqliteTestDatabase {
        let database = SqliteTestDatabase::new(&[&migrator_before_clustered()]).await;
        for statement in host_sql {
            sqlx::query(statement).execute(database.pool()).await.expect(statement);
        }
        // The store before 0100000012 moved the head row and inserted the entry in one
        // transaction; the view does not exist yet, so the rows are written the same way here.
        let mut prev_hash = sos_core::Sha256Digest::ZERO;
        for seq in 1..=3i64 {
            let stored = entry("acme", seq as u64)
                .into_entry(seq as u64, chrono::Utc::now(), prev_hash)
                .expect("hash");
            let mut tx = database.pool().begin().await.expect("begin");
            sqlx::query("INSERT INTO audit_heads VALUES ('acme', 0, zeroblob(32)) ON CONFLICT DO NOTHING")
                .execute(&mut *tx)
                .await
                .expect("head row");
            sqlx::query("UPDATE audit_heads SET seq = ?1, hash = ?2 WHERE tenant = 'acme'")
                .bind(seq)
                .bind(stored.hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .expect("move head");
            sqlx::query("INSERT INTO audit_entries VALUES ('acme', ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .bind(seq)
                .bind(stored.time_us)
                .bind(&stored.actor)
                .bind(&stored.action)
                .bind(&stored.subject)
                .bind(&stored.payload)
                .bind(prev_hash.as_bytes().as_slice())
                .bind(stored.hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .expect("entry");
            tx.commit().await.expect("commit");
            prev_hash = stored.hash;
        }
        database
    }

    /// Runs the migrations on `database`, expecting 0100000011 to refuse because of the host's
    /// own objects, and checks that nothing changed: the entries, the host's objects, and the
    /// migrations recorded as applied.
    async fn upgrade_is_refused_and_changes_nothing(database: &SqliteTestDatabase) {
        let pool = database.pool();
        let schema = || async {
            sqlx::query_as::<_, (String, String)>(
                "SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY name",
            )
            .fetch_all(pool)
            .await
            .expect("schema")
        };
        let (schema_before, rows_before) = (schema().await, rows(pool).await);
        // On its own connection, closed afterwards: sqlx's migrator leaves the connection of a
        // failed migration inside its transaction, on a snapshot from before it.
        let mut connection = pool.acquire().await.expect("connection");
        let refused =
            sos_audit::sqlite_migrator().run(&mut *connection).await.expect_err("the upgrade refuses");
        connection.close().await.expect("close");
        let message = refused.to_string();
        assert!(
            message.contains("not sos-audit's own") && message.contains("create them again"),
            "{message}"
        );
        assert_eq!(schema().await, schema_before, "no schema object changed");
        assert_eq!(rows(pool).await, rows_before, "no entry changed");
        let applied: i64 =
            sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations WHERE version >= 100000011")
                .fetch_one(pool)
                .await
                .expect("migrations table");
        assert_eq!(applied, 0, "0100000011 is not recorded as applied");
    }

    /// Finding (fixed): migration 0100000011 drops the old entry table, and SQLite drops every
    /// index and trigger on a table with it. A host's own index on `audit_entries` (a report by
    /// actor) and a host's own trigger on it (mirroring each new entry to an outbox) were gone
    /// after the upgrade, silently. The migration now refuses first, naming what to do, and
    /// changes nothing; after the host drops its objects the upgrade applies, and the host
    /// creates them again.
    #[tokio::test]
    async fn upgrade_to_clustered_entries_refuses_a_hosts_index_and_trigger() {
        let host_objects = [
            "CREATE INDEX host_entries_by_actor ON audit_entries (actor)",
            "CREATE TRIGGER host_entries_outbox AFTER INSERT ON audit_entries \
             BEGIN INSERT INTO host_outbox VALUES (NEW.tenant, NEW.seq); END",
        ];
        let mut host_sql = vec!["CREATE TABLE host_outbox (tenant TEXT NOT NULL, seq INTEGER NOT NULL)"];
        host_sql.extend(host_objects);
        let database = chain_before_clustered(&host_sql).await;
        upgrade_is_refused_and_changes_nothing(&database).await;

        // A fresh pool: a connection of the first one may still read a snapshot from before
        // (sqlx resets a SQLite statement lazily), whose schema still holds the host's index.
        let fresh = sos_testkit::sqlite_pool(database.path(), 1).await;
        let pool = &fresh;
        for drop in ["DROP INDEX host_entries_by_actor", "DROP TRIGGER host_entries_outbox"] {
            sqlx::query(drop).execute(pool).await.expect(drop);
        }
        sos_audit::sqlite_migrator().run(pool).await.expect("the upgrade applies");
        for create in host_objects {
            sqlx::query(create).execute(pool).await.expect(create);
        }
        let chain = SqliteAuditChain::new(pool.clone());
        chain.append(entry("acme", 4)).await.expect("append after the upgrade");
        let mirrored: i64 =
            sqlx::query_scalar("SELECT count(*) FROM host_outbox").fetch_one(pool).await.expect("outbox");
        assert_eq!(mirrored, 4, "three entries mirrored before the upgrade, and the one after it");
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }

    /// Finding (fixed): a host table whose foreign key references an entry (`REFERENCES
    /// audit_entries (tenant, seq)`) made the upgrade fail with a bare `FOREIGN KEY constraint
    /// failed` (sqlx opens SQLite connections with `foreign_keys` on, and DROP TABLE deletes every
    /// entry first). The migration now refuses first with a message that says what to do.
    #[tokio::test]
    async fn upgrade_to_clustered_entries_refuses_a_hosts_foreign_key() {
        let database = chain_before_clustered(&[
            "CREATE TABLE host_changes (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, seq INTEGER NOT NULL, \
             FOREIGN KEY (tenant, seq) REFERENCES audit_entries (tenant, seq))",
        ])
        .await;
        sqlx::query("INSERT INTO host_changes (tenant, seq) VALUES ('acme', 2)")
            .execute(database.pool())
            .await
            .expect("a host row referencing entry 2");
        upgrade_is_refused_and_changes_nothing(&database).await;
    }

    /// Finding (fixed): the guard of 0100000011 matched the table name case-sensitively and told
    /// its own objects from a host's by name alone. SQLite resolves `AUDIT_ENTRIES` to
    /// `audit_entries` but keeps the spelling in a trigger's `tbl_name` and a foreign key's
    /// target, so a host trigger `ON AUDIT_ENTRIES` was dropped silently and a foreign key to
    /// `"Audit_Entries"` failed the drop with a bare `FOREIGN KEY constraint failed` (leaving
    /// `legacy_alter_table` on for the connection); a host index named like one of sos-audit's
    /// triggers (`audit_entries_linked`) or like the primary key's index was dropped silently.
    /// Each is now refused up front like the objects above.
    #[tokio::test]
    async fn upgrade_to_clustered_entries_refuses_host_objects_named_in_another_case_or_like_its_own() {
        let cases: [&[&str]; 4] = [
            &[
                "CREATE TABLE host_outbox (tenant TEXT NOT NULL, seq INTEGER NOT NULL)",
                "CREATE TRIGGER host_entries_outbox AFTER INSERT ON AUDIT_ENTRIES \
                 BEGIN INSERT INTO host_outbox VALUES (NEW.tenant, NEW.seq); END",
            ],
            &[
                "CREATE TABLE host_changes (id INTEGER PRIMARY KEY, tenant TEXT NOT NULL, seq INTEGER NOT NULL, \
               FOREIGN KEY (tenant, seq) REFERENCES \"Audit_Entries\" (tenant, seq))",
            ],
            &["CREATE INDEX audit_entries_linked ON audit_entries (actor)"],
            &["CREATE INDEX sqlite1autoindex_audit_entries_1 ON audit_entries (subject)"],
        ];
        for host_sql in cases {
            let database = chain_before_clustered(host_sql).await;
            if host_sql[0].contains("host_changes") {
                sqlx::query("INSERT INTO host_changes (tenant, seq) VALUES ('acme', 2)")
                    .execute(database.pool())
                    .await
                    .expect("a host row referencing entry 2");
            }
            upgrade_is_refused_and_changes_nothing(&database).await;
        }
    }

    /// Migration 0100000011 on a database that already holds a Merkle tree and a signed
    /// checkpoint (0100000010 comes first): the checkpointer continues on the moved entries, its
    /// next checkpoint (after appends through the view `audit_appends`, its extension starting at
    /// the signed head) extends the one signed before the upgrade, and the chain verifies against
    /// both.
    #[tokio::test]
    async fn upgrade_to_clustered_entries_keeps_the_signed_tree() {
        use sos_audit::note::{Checkpoint, NoteSigner};
        use sos_audit::tlog::{self, Checkpointer, MerkleStore as _};

        let database = chain_before_clustered(&[]).await;
        let pool = database.pool();
        let acme = tenant("acme");
        let key = NoteSigner::generate("example.com/upgrade").expect("key");
        let verifier = key.verifier();
        let origin = tlog::origin_for(key.name(), &acme);
        let before_store = SqliteAuditChain::new(pool.clone());
        let before =
            Checkpointer::new(before_store, NoteSigner::from_key_string(&key.to_key_string()).expect("key"))
                .checkpoint_now(&acme)
                .await
                .expect("checkpoint before the upgrade");
        assert_eq!(before.size(), 3);

        sos_audit::sqlite_migrator().run(pool).await.expect("the upgrade applies");

        let store = SqliteAuditChain::new(pool.clone());
        for index in 3..300 {
            store.append(entry("acme", index)).await.expect("append through the view");
        }
        let checkpointer = Checkpointer::new(store.clone(), key);
        let after = checkpointer.checkpoint_now(&acme).await.expect("checkpoint after the upgrade");
        assert_eq!(after.size(), 300);
        let opened: Vec<Checkpoint> = [&before, &after]
            .into_iter()
            .map(|signed| {
                Checkpoint::open(signed.note.as_bytes(), &verifier, &origin).expect("the note opens")
            })
            .collect();
        let findings = tlog::verify_checkpoints(&store, &acme, &opened).await.expect("recompute the roots");
        assert!(findings.is_empty(), "the chain's prefixes match both checkpoints: {findings:?}");
        tlog::consistency_proof(&store, &acme, 3, 300)
            .await
            .expect("consistency proof")
            .verify(&before.root(), &after.root())
            .expect("the new checkpoint extends the old one");
        let proof =
            tlog::prove(&store, &acme, 2, None).await.expect("a proof for an entry moved by the upgrade");
        proof.verify(&verifier).expect("the moved entry is in the signed tree");
        assert_eq!(store.tree_state(&acme).await.expect("state").size, 300);
        assert!(verify_store(&store, &acme, None, |_| {}).await.expect("verify").is_intact());
    }
}
