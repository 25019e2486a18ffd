//! Named shape `chain-seq-stale-read`: concurrent appenders, in several OS processes, to one
//! tenant's chain on one PostgreSQL never fork it or reuse a sequence number; other tenants do
//! not wait for them.

use std::process::Command;
use std::time::Duration;

use sos_audit::{AuditStore, ExpectRows, PgAuditChain, Verdict, verify_store};
use sos_testkit::PgTestDatabase;

use crate::{entry, tenant};

const ROLE_VAR: &str = "SOS_CHILD_ROLE";
const URL_VAR: &str = "SOS_AUDIT_CHILD_DATABASE_URL";
const COUNT_VAR: &str = "SOS_AUDIT_CHILD_ENTRIES";
const PROCESSES: usize = 2;
const TASKS: u64 = 8;
const TOTAL: u64 = 5_000;

async fn append_concurrently(url: &str, entries: u64) {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(TASKS as u32)
        .connect(url)
        .await
        .expect("child connects to the test database");
    let chain = PgAuditChain::new(pool);
    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let chain = chain.clone();
        let share = entries / TASKS + u64::from(task < entries % TASKS);
        tasks.push(tokio::spawn(async move {
            for index in 0..share {
                chain.append(entry("acme", task * 1_000_000 + index)).await.expect("append");
            }
        }));
    }
    for task in tasks {
        task.await.expect("appender task");
    }
}

/// The child half of `two_processes_eight_tasks_one_gap_free_chain`. Run on its own (without
/// `SOS_CHILD_ROLE`), it appends 80 entries from 8 tasks to a fresh database and checks the chain,
/// so it is a meaningful test either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_appender() {
    if std::env::var(ROLE_VAR).as_deref() == Ok("audit-appender") {
        let url = std::env::var(URL_VAR).expect("the parent passes the database URL");
        let entries: u64 =
            std::env::var(COUNT_VAR).expect("the parent passes the count").parse().expect("a count");
        append_concurrently(&url, entries).await;
        return;
    }
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    append_concurrently(database.url(), 80).await;
    let chain = PgAuditChain::new(database.pool().clone());
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
    assert!(matches!(verdict, Verdict::Intact(ref verified) if verified.entries == 80), "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_eight_tasks_one_gap_free_chain() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let executable = std::env::current_exe().expect("the test binary's path");
    let per_process = TOTAL / PROCESSES as u64;
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&executable)
                .args(["--exact", "chain_seq_stale_read::child_appender", "--nocapture"])
                .env(ROLE_VAR, "audit-appender")
                .env(URL_VAR, database.url())
                .env(COUNT_VAR, per_process.to_string())
                .spawn()
                .expect("spawn a child appender")
        })
        .collect();
    for mut child in children {
        let status = tokio::task::spawn_blocking(move || child.wait()).await.expect("join").expect("wait");
        assert!(status.success(), "a child appender failed: {status}");
    }
    let chain = PgAuditChain::new(database.pool().clone());
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
    match verdict {
        Verdict::Intact(verified) => {
            assert_eq!(verified.entries, TOTAL);
            assert_eq!(verified.head.map(|head| head.seq), Some(TOTAL));
        }
        other => panic!("the chain forked or has gaps: {other:?}"),
    }
    let distinct: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT seq) FROM audit_entries WHERE tenant = 'acme'")
            .fetch_one(database.pool())
            .await
            .expect("count");
    assert_eq!(distinct, TOTAL as i64);
    // Times are stamped under the head lock (or on a guess that was current): never backwards.
    let backwards: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_entries a JOIN audit_entries b
         ON b.tenant = a.tenant AND b.seq = a.seq + 1 WHERE b.time_us < a.time_us",
    )
    .fetch_one(database.pool())
    .await
    .expect("times");
    assert_eq!(backwards, 0, "an entry is older than its predecessor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_do_not_serialize_on_each_other() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let chain = PgAuditChain::new(database.pool().clone());
    chain.append(entry("acme", 0)).await.expect("first append");

    // Hold acme's head lock in an open transaction.
    let mut tx = database.pool().begin().await.expect("begin");
    chain
        .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(0), |_conn| {
            Box::pin(async move { Ok::<u64, sqlx::Error>(0) })
        })
        .await
        .expect("audited entry holding the lock");

    let blocked = tokio::spawn({
        let chain = chain.clone();
        async move { chain.append(entry("acme", 2)).await }
    });
    let other = tokio::time::timeout(Duration::from_secs(5), chain.append(entry("globex", 0)))
        .await
        .expect("another tenant's append does not wait for acme's lock")
        .expect("append");
    assert_eq!(other.seq, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!blocked.is_finished(), "a second acme append must wait for the head lock");

    tx.commit().await.expect("commit");
    let unblocked = blocked.await.expect("join").expect("append after the lock is released");
    assert_eq!(unblocked.seq, 3);
    assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
}

/// Appends alternate between `stores` (each remembers the head it appended last, as two processes
/// would): every append must link to the real head, never to a remembered one that went stale.
async fn alternating_stores_link_to_the_real_head<S: AuditStore>(stores: &[S]) {
    let order = [0usize, 0, 1, 0, 1, 1, 0, 1, 0, 0, 1];
    let mut previous: Option<sos_audit::AuditEntry> = None;
    for (index, &which) in order.iter().enumerate() {
        let stored = stores[which].append(entry("acme", index as u64)).await.expect("append");
        assert_eq!(stored.seq, index as u64 + 1, "append {index} through store {which}");
        let expected_prev = previous.as_ref().map_or(sos_core::Sha256Digest::ZERO, |entry| entry.hash);
        assert_eq!(stored.prev_hash, expected_prev, "append {index} through store {which}");
        previous = Some(stored);
    }
    let verdict = verify_store(&stores[0], &tenant("acme"), None, |_| {}).await.expect("verify");
    assert!(
        matches!(verdict, Verdict::Intact(ref verified) if verified.entries == order.len() as u64),
        "{verdict:?}"
    );
}

#[tokio::test]
async fn stale_head_guess_of_another_store_is_rechecked_pg() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let stores = [PgAuditChain::new(database.pool().clone()), PgAuditChain::new(database.pool().clone())];
    alternating_stores_link_to_the_real_head(&stores).await;
}

/// An audited write whose host transaction rolls back after the append succeeded leaves the store
/// remembering a head that never committed; the next appends must link to the committed head.
#[tokio::test]
async fn stale_head_guess_after_host_rollback_pg() {
    let database = PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
    let chain = PgAuditChain::new(database.pool().clone());
    let first = chain.append(entry("acme", 0)).await.expect("append");
    for round in 0..2u64 {
        let mut tx = database.pool().begin().await.expect("begin");
        let uncommitted = chain
            .audited(&mut tx, entry("acme", 10 + round), ExpectRows::Exactly(0), |_conn| {
                Box::pin(async move { Ok::<u64, sqlx::Error>(0) })
            })
            .await
            .expect("audited");
        assert_eq!(uncommitted.seq, 2);
        tx.rollback().await.expect("the host rolls back");
    }
    let second = chain.append(entry("acme", 1)).await.expect("append after the rollback");
    assert_eq!((second.seq, second.prev_hash), (2, first.hash));
    let third = chain.append(entry("acme", 2)).await.expect("append");
    assert_eq!((third.seq, third.prev_hash), (3, second.hash));
    assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use std::process::Command;

    use sos_audit::{AuditStore, ExpectRows, SqliteAuditChain, Verdict, verify_store};
    use sos_testkit::SqliteTestDatabase;

    use super::{COUNT_VAR, ROLE_VAR, URL_VAR};
    use crate::{entry, tenant};

    const PROCESSES: usize = 2;
    const TASKS: u64 = 4;

    /// One process's share: `TASKS` tasks of audited writes on one SQLite file, every fourth one
    /// failing its row check. Returns how many committed.
    async fn audited_concurrently(path: &str, per_task: u64) -> u64 {
        let pool = sos_testkit::sqlite_pool(std::path::Path::new(path), TASKS as u32).await;
        let chain = SqliteAuditChain::new(pool);
        let tasks: Vec<_> = (0..TASKS)
            .map(|task| {
                let chain = chain.clone();
                tokio::spawn(async move {
                    let mut committed = 0;
                    for index in 0..per_task {
                        let expect = ExpectRows::Exactly(if index % 4 == 3 { 2 } else { 1 });
                        let entry = entry("acme", task * 1_000_000 + index);
                        let mut tx = chain.begin().await.expect("begin (busy timeout 5 s)");
                        let result = chain
                            .audited(&mut tx, entry, expect, |conn| {
                                Box::pin(async move {
                                    let done = sqlx::query("UPDATE counter SET n = n + 1 WHERE id = 1")
                                        .execute(conn)
                                        .await?;
                                    Ok::<_, sqlx::Error>(done.rows_affected())
                                })
                            })
                            .await;
                        match result {
                            Ok(_) => {
                                tx.commit().await.expect("commit");
                                committed += 1;
                            }
                            Err(sos_audit::Error::UnexpectedRows { actual: 1, .. }) if index % 4 == 3 => {
                                // The careless host commits anyway: nothing of the write is left.
                                tx.commit().await.expect("commit after a rolled-back savepoint");
                            }
                            Err(error) => panic!("audited write {index} of task {task}: {error:?}"),
                        }
                    }
                    committed
                })
            })
            .collect();
        let mut committed = 0;
        for task in tasks {
            committed += task.await.expect("appender task");
        }
        committed
    }

    /// The child half of `processes_share_one_sqlite_file`; on its own it runs one process's share
    /// on a fresh database and checks the chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn child_audited_appender_sqlite() {
        if std::env::var(ROLE_VAR).as_deref() == Ok("audit-appender-sqlite") {
            let path = std::env::var(URL_VAR).expect("the parent passes the database path");
            let per_task: u64 = std::env::var(COUNT_VAR).expect("count").parse().expect("a count");
            println!("COMMITTED {}", audited_concurrently(&path, per_task).await);
            return;
        }
        let database = counter_database().await;
        let committed = audited_concurrently(database.path().to_str().expect("utf-8 path"), 20).await;
        assert_chain(&database, committed).await;
    }

    async fn counter_database() -> SqliteTestDatabase {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        sqlx::query("CREATE TABLE counter (id INTEGER PRIMARY KEY, n INTEGER NOT NULL)")
            .execute(database.pool())
            .await
            .expect("host table");
        sqlx::query("INSERT INTO counter VALUES (1, 0)").execute(database.pool()).await.expect("seed");
        database
    }

    /// One gap-free chain with one entry per committed write, verifying, with times that never
    /// decrease along it.
    async fn assert_chain(database: &SqliteTestDatabase, committed: u64) {
        let chain = SqliteAuditChain::new(database.pool().clone());
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify");
        match verdict {
            Verdict::Intact(verified) => assert_eq!(verified.entries, committed),
            other => panic!("forked, gapped or reused: {other:?}"),
        }
        let counter: i64 = sqlx::query_scalar("SELECT n FROM counter WHERE id = 1")
            .fetch_one(database.pool())
            .await
            .expect("counter");
        assert_eq!(counter, committed as i64, "one write per entry, no unaudited write");
        let backwards: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM audit_entries a JOIN audit_entries b
             ON b.tenant = a.tenant AND b.seq = a.seq + 1 WHERE b.time_us < a.time_us",
        )
        .fetch_one(database.pool())
        .await
        .expect("times");
        assert_eq!(backwards, 0, "an entry is older than its predecessor");
    }

    /// Named shape `chain-seq-stale-read` on SQLite: two OS processes × four tasks of audited
    /// writes (a quarter failing their row check) on one database file; entry times never go
    /// backwards along the chain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn processes_share_one_sqlite_file() {
        let database = counter_database().await;
        let executable = std::env::current_exe().expect("the test binary's path");
        let per_task = 40u64;
        let children: Vec<_> = (0..PROCESSES)
            .map(|_| {
                Command::new(&executable)
                    .args([
                        "--exact",
                        "chain_seq_stale_read::sqlite::child_audited_appender_sqlite",
                        "--nocapture",
                    ])
                    .env(ROLE_VAR, "audit-appender-sqlite")
                    .env(URL_VAR, database.path())
                    .env(COUNT_VAR, per_task.to_string())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn a child appender")
            })
            .collect();
        let mut committed = 0;
        for child in children {
            let output = tokio::task::spawn_blocking(move || child.wait_with_output())
                .await
                .expect("join")
                .expect("wait");
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            assert!(output.status.success(), "a child appender failed: {stdout}");
            let line =
                stdout.lines().find_map(|line| line.strip_prefix("COMMITTED ")).expect("the child's count");
            committed += line.trim().parse::<u64>().expect("a count");
        }
        assert_eq!(committed, PROCESSES as u64 * TASKS * (per_task - per_task / 4));
        assert_chain(&database, committed).await;
    }

    #[tokio::test]
    async fn stale_head_guess_of_another_store_is_rechecked_sqlite() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let stores =
            [SqliteAuditChain::new(database.pool().clone()), SqliteAuditChain::new(database.pool().clone())];
        super::alternating_stores_link_to_the_real_head(&stores).await;
    }

    #[tokio::test]
    async fn stale_head_guess_after_host_rollback_sqlite() {
        let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let chain = SqliteAuditChain::new(database.pool().clone());
        let first = chain.append(entry("acme", 0)).await.expect("append");
        for round in 0..2u64 {
            let mut tx = chain.begin().await.expect("begin");
            let uncommitted = chain
                .audited(&mut tx, entry("acme", 10 + round), ExpectRows::Exactly(0), |_conn| {
                    Box::pin(async move { Ok::<u64, sqlx::Error>(0) })
                })
                .await
                .expect("audited");
            assert_eq!(uncommitted.seq, 2);
            tx.rollback().await.expect("the host rolls back");
        }
        let second = chain.append(entry("acme", 1)).await.expect("append after the rollback");
        assert_eq!((second.seq, second.prev_hash), (2, first.hash));
        let third = chain.append(entry("acme", 2)).await.expect("append");
        assert_eq!((third.seq, third.prev_hash), (3, second.hash));
        assert!(verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("verify").is_intact());
    }
}
