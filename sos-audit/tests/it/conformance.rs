//! One behavioural suite for every `AuditStore`, run against memory, SQLite and PostgreSQL.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sos_audit::{AuditStore, MemoryAuditStore, verify_store};
use sos_core::{ManualClock, Sha256Digest};

use crate::{entry, tenant};

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).single().expect("valid time"))
}

pub(crate) async fn empty_store_has_no_chains<S: AuditStore>(store: S) {
    assert_eq!(store.head(&tenant("acme")).await.expect("head"), None);
    assert!(store.read_page(&tenant("acme"), 0, 10).await.expect("read").is_empty());
    assert!(store.tenants().await.expect("tenants").is_empty());
    assert!(verify_store(&store, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
}

pub(crate) async fn appends_link_and_page<S: AuditStore>(store: S, clock: ManualClock) {
    let mut appended = Vec::new();
    for index in 0..5 {
        clock.advance(chrono::Duration::microseconds(1_500));
        appended.push(store.append(entry("acme", index)).await.expect("append"));
    }
    for (index, stored) in appended.iter().enumerate() {
        assert_eq!(stored.seq, index as u64 + 1);
        let expected_prev = if index == 0 { Sha256Digest::ZERO } else { appended[index - 1].hash };
        assert_eq!(stored.prev_hash, expected_prev);
        assert_eq!(stored.hash, stored.compute_hash().expect("hash"));
        assert_eq!(stored.time_us, clock_start_us() + 1_500 * (index as i64 + 1));
    }
    assert_eq!(store.head(&tenant("acme")).await.expect("head"), Some(appended[4].as_head()));
    let all = store.read_page(&tenant("acme"), 0, 100).await.expect("read");
    assert_eq!(all, appended, "entries read back exactly as appended");
    let page = store.read_page(&tenant("acme"), 2, 2).await.expect("page");
    assert_eq!(page.iter().map(|stored| stored.seq).collect::<Vec<_>>(), vec![3, 4]);
    assert_eq!(all[0].payload, r#"{"index":0,"note":"é\n"}"#);
    let verdict =
        verify_store(&store, &tenant("acme"), Some(appended[2].as_head()), |_| {}).await.expect("verify");
    assert!(verdict.is_intact(), "{verdict:?}");
}

fn clock_start_us() -> i64 {
    Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).single().expect("valid time").timestamp_micros()
}

pub(crate) async fn tenants_have_separate_chains<S: AuditStore>(store: S) {
    store.append(entry("beta", 0)).await.expect("append");
    store.append(entry("alpha", 0)).await.expect("append");
    let second = store.append(entry("beta", 1)).await.expect("append");
    let alpha_head = store.head(&tenant("alpha")).await.expect("head").expect("alpha has a chain");
    assert_eq!(alpha_head.seq, 1);
    assert_eq!(second.seq, 2);
    assert_eq!(store.tenants().await.expect("tenants"), vec![tenant("alpha"), tenant("beta")]);
    assert!(
        store
            .read_page(&tenant("alpha"), 0, 10)
            .await
            .expect("read")
            .iter()
            .all(|e| e.tenant == tenant("alpha"))
    );
}

/// Tenants whose names are prefixes of one another, or differ only in `-` and `_`, each listed
/// once (the database stores find them by seeking from one tenant to the next).
pub(crate) async fn every_tenant_is_listed_once<S: AuditStore>(store: S) {
    let names = ["t", "t-a", "t_a", "ta", "t-aa", "t0", "t-", "u", "a", "a-", "9", "zz_z", "z-z"];
    for (round, name) in names.iter().chain(names.iter().rev()).enumerate() {
        store.append(entry(name, round as u64)).await.expect("append");
    }
    let mut listed = store.tenants().await.expect("tenants");
    // "Sorted" is the database's collation; compare as sets, and without repeats.
    listed.sort();
    let mut expected: Vec<_> = names.iter().map(|name| tenant(name)).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

pub(crate) async fn concurrent_appends_never_fork<S: AuditStore + Clone + 'static>(store: S) {
    let mut tasks = Vec::new();
    for task in 0..8u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for index in 0..12 {
                store.append(entry("acme", task * 100 + index)).await.expect("concurrent append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("task");
    }
    let verdict = verify_store(&store, &tenant("acme"), None, |_| {}).await.expect("verify");
    match verdict {
        sos_audit::Verdict::Intact(chain) => assert_eq!(chain.entries, 96),
        other => panic!("concurrent appends broke the chain: {other:?}"),
    }
}

/// Runs the whole suite against fresh stores made by `make`.
macro_rules! conformance_suite {
    ($module:ident, $make:expr) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn empty_store_has_no_chains() {
                let (store, _guard) = $make(clock()).await;
                super::empty_store_has_no_chains(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn appends_link_and_page() {
                let clock = clock();
                let (store, _guard) = $make(clock.clone()).await;
                super::appends_link_and_page(store, clock).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn tenants_have_separate_chains() {
                let (store, _guard) = $make(clock()).await;
                super::tenants_have_separate_chains(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn every_tenant_is_listed_once() {
                let (store, _guard) = $make(clock()).await;
                super::every_tenant_is_listed_once(store).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn concurrent_appends_never_fork() {
                let (store, _guard) = $make(clock()).await;
                super::concurrent_appends_never_fork(store).await;
            }
        }
    };
}

async fn memory_store(clock: ManualClock) -> (MemoryAuditStore, ()) {
    (MemoryAuditStore::new().with_clock(Arc::new(clock)), ())
}

conformance_suite!(memory, memory_store);

#[cfg(feature = "sqlite")]
async fn sqlite_store(clock: ManualClock) -> (sos_audit::SqliteAuditChain, sos_testkit::SqliteTestDatabase) {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    (sos_audit::SqliteAuditChain::new(database.pool().clone()).with_clock(Arc::new(clock)), database)
}

#[cfg(feature = "sqlite")]
conformance_suite!(sqlite, sqlite_store);

#[cfg(feature = "postgres")]
async fn postgres_store(clock: ManualClock) -> (sos_audit::PgAuditChain, sos_testkit::PgTestDatabase) {
    let database = sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    (sos_audit::PgAuditChain::new(database.pool().clone()).with_clock(Arc::new(clock)), database)
}

#[cfg(feature = "postgres")]
conformance_suite!(postgres, postgres_store);

/// A tenant whose head row an administrator deleted (the no-delete trigger dropped first) is
/// still listed from its entries, so the checkpointer visits it and reports the cut.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_tenant_without_head_row_is_still_listed() {
    let (store, database) = sqlite_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    store.append(entry("beta", 0)).await.expect("append");
    for statement in ["DROP TRIGGER audit_heads_no_delete", "DELETE FROM audit_heads WHERE tenant = 'beta'"] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    assert_eq!(store.tenants().await.expect("tenants"), vec![tenant("alpha"), tenant("beta")]);
}

/// As above, on PostgreSQL.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_tenant_without_head_row_is_still_listed() {
    let (store, database) = postgres_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    store.append(entry("beta", 0)).await.expect("append");
    for statement in [
        "ALTER TABLE audit_heads DISABLE TRIGGER audit_heads_no_delete",
        "DELETE FROM audit_heads WHERE tenant = 'beta'",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    let mut listed = store.tenants().await.expect("tenants");
    listed.sort();
    assert_eq!(listed, vec![tenant("alpha"), tenant("beta")]);
}

/// Entries whose tenant is NULL (an administrator rebuilt the SQLite table without its key and
/// NOT NULL constraint) make listing fail with `CorruptEntry`, as `SELECT DISTINCT` did, instead
/// of being passed over by the loose index scan (`MIN` skips NULL) and never checked.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_null_tenant_entries_are_reported() {
    let (store, database) = sqlite_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    store.append(entry("beta", 0)).await.expect("append");
    for statement in [
        "ALTER TABLE audit_entries RENAME TO audit_entries_old",
        "CREATE TABLE audit_entries (tenant TEXT, seq INTEGER, time_us INTEGER, actor TEXT, \
         action TEXT, subject TEXT, payload TEXT, prev_hash BLOB, hash BLOB, PRIMARY KEY (tenant, seq))",
        "INSERT INTO audit_entries SELECT * FROM audit_entries_old",
        "INSERT INTO audit_entries SELECT NULL, seq, time_us, actor, action, subject, payload, prev_hash, hash \
         FROM audit_entries_old WHERE tenant = 'beta'",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    let listed = store.tenants().await;
    assert!(
        matches!(listed, Err(sos_audit::Error::CorruptEntry { ref tenant, .. }) if tenant == "NULL"),
        "a NULL tenant must be reported, got {listed:?}"
    );
}

/// As above, on PostgreSQL (the key and the NOT NULL constraint dropped).
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_null_tenant_entries_are_reported() {
    let (store, database) = postgres_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    store.append(entry("beta", 0)).await.expect("append");
    for statement in [
        "ALTER TABLE audit_entries DISABLE TRIGGER USER",
        "ALTER TABLE audit_entries DROP CONSTRAINT audit_entries_tenant_seq_key CASCADE",
        "ALTER TABLE audit_entries ALTER COLUMN tenant DROP NOT NULL",
        "INSERT INTO audit_entries SELECT NULL, seq, time_us, actor, action, subject, payload, prev_hash, hash \
         FROM audit_entries WHERE tenant = 'beta'",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    let listed = store.tenants().await;
    assert!(
        matches!(listed, Err(sos_audit::Error::CorruptEntry { ref tenant, .. }) if tenant == "NULL"),
        "a NULL tenant must be reported, got {listed:?}"
    );
}

/// 10,000 tenants with entries and no head rows are all listed: the recursive scan takes one
/// step per tenant, and neither database limits its depth.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_ten_thousand_tenants_are_listed() {
    let (store, database) = sqlite_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    for statement in [
        "DROP TRIGGER audit_entries_linked",
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
         INSERT INTO audit_entries SELECT 'm' || i, 1, time_us, actor, action, subject, payload, prev_hash, hash \
         FROM n, audit_entries WHERE tenant = 'alpha'",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    let listed = store.tenants().await.expect("tenants");
    let mut expected: Vec<_> =
        (1..=10_000).map(|i| tenant(&format!("m{i}"))).chain([tenant("alpha")]).collect();
    expected.sort();
    assert_eq!(listed, expected);
}

/// As above, on PostgreSQL, then with the `(tenant, seq)` key dropped (1,000 tenants): the scan
/// then reads the table once per step, slower but with the same answer.
#[cfg(feature = "postgres")]
#[tokio::test]
async fn postgres_ten_thousand_tenants_are_listed_with_and_without_the_key() {
    let (store, database) = postgres_store(clock()).await;
    store.append(entry("alpha", 0)).await.expect("append");
    for statement in [
        "ALTER TABLE audit_entries DISABLE TRIGGER USER",
        "INSERT INTO audit_entries SELECT 'm' || i, 1, time_us, actor, action, subject, payload, prev_hash, hash \
         FROM generate_series(1, 10000) AS i, audit_entries WHERE tenant = 'alpha'",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    let mut expected: Vec<_> =
        (1..=10_000).map(|i| tenant(&format!("m{i}"))).chain([tenant("alpha")]).collect();
    expected.sort();
    let mut listed = store.tenants().await.expect("tenants");
    listed.sort();
    assert_eq!(listed, expected);
    // Without the key each step reads the whole table (quadratic), so keep 1,000 tenants.
    for statement in [
        "DELETE FROM audit_entries WHERE tenant LIKE 'm%' AND length(tenant) >= 5",
        "ALTER TABLE audit_entries DROP CONSTRAINT audit_entries_tenant_seq_key CASCADE",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect(statement);
    }
    expected.retain(|tenant| !(tenant.as_str().starts_with('m') && tenant.as_str().len() >= 5));
    assert_eq!(expected.len(), 1_000);
    let mut listed = store.tenants().await.expect("tenants without the key");
    listed.sort();
    assert_eq!(listed, expected);
}
