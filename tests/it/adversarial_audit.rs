//! Adversarial tests against `sos-audit`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
//!
//! Each test is named after the threat shape it attacks and asserts the safe behaviour: a
//! failing test is a finding. Database-level attacks use raw SQL on a real PostgreSQL or SQLite
//! test database; the multi-process attacks re-run this test binary as child processes, and the
//! CLI attacks run the real `sos-audit` binary from the workspace's `target/debug`.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, TimeZone as _, Utc};
use sos_audit::{
    AuditEntry, AuditStore, ChainHead, Error, ExpectRows, Finding, MemoryAuditStore, NewEntry, PgAuditChain,
    SqliteAuditChain, Verdict, canonical_json, parse_jsonl_line, verify_jsonl, verify_store,
    write_jsonl_line,
};
use sos_core::{ManualClock, Sha256Digest, TenantId};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};
use sqlx::Connection as _;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid test tenant")
}

fn entry(tenant_name: &str, index: u64) -> NewEntry {
    NewEntry::new(
        tenant(tenant_name),
        "agent:adversary",
        "deal.update",
        format!("deal/{index}"),
        &serde_json::json!({ "index": index, "note": "é\n\"q\"" }),
    )
    .expect("valid entry")
}

/// A host error injected on purpose.
#[derive(Debug)]
struct Injected;

impl std::fmt::Display for Injected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("injected host failure")
    }
}

impl std::error::Error for Injected {}

impl From<sqlx::Error> for Injected {
    fn from(_: sqlx::Error) -> Self {
        Self
    }
}

const DEALS_PG: &str = "CREATE TABLE deals (tenant TEXT NOT NULL, id BIGINT NOT NULL, stage TEXT NOT NULL, \
                        n BIGINT NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))";
const DEALS_SQLITE: &str = "CREATE TABLE deals (tenant TEXT NOT NULL, id INTEGER NOT NULL, stage TEXT NOT NULL, \
                            n INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (tenant, id))";

async fn pg_setup() -> (PgTestDatabase, PgAuditChain) {
    let database = PgTestDatabase::with_pool_size(&[&sos_audit::postgres_migrator()], 16).await;
    sqlx::query(DEALS_PG).execute(database.pool()).await.expect("host table");
    sqlx::query("INSERT INTO deals (tenant, id, stage) VALUES ('acme', 1, 'new'), ('acme', 2, 'new')")
        .execute(database.pool())
        .await
        .expect("seed");
    let chain = PgAuditChain::new(database.pool().clone());
    (database, chain)
}

async fn sqlite_setup() -> (SqliteTestDatabase, SqliteAuditChain) {
    let database = SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    sqlx::query(DEALS_SQLITE).execute(database.pool()).await.expect("host table");
    sqlx::query("INSERT INTO deals (tenant, id, stage) VALUES ('acme', 1, 'new'), ('acme', 2, 'new')")
        .execute(database.pool())
        .await
        .expect("seed");
    let chain = SqliteAuditChain::new(database.pool().clone());
    (database, chain)
}

/// (audit entries, deals not in stage `new`, sum of the deals' counters, heads with seq > 0)
async fn pg_state(database: &PgTestDatabase) -> (i64, i64, i64, i64) {
    let pool = database.pool();
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_entries").fetch_one(pool).await.unwrap();
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deals WHERE stage <> 'new'").fetch_one(pool).await.unwrap();
    let counter: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(n), 0)::BIGINT FROM deals").fetch_one(pool).await.unwrap();
    let heads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_heads WHERE seq > 0").fetch_one(pool).await.unwrap();
    (entries, changed, counter, heads)
}

async fn sqlite_state(database: &SqliteTestDatabase) -> (i64, i64, i64, i64) {
    let pool = database.pool();
    let entries: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_entries").fetch_one(pool).await.unwrap();
    let changed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM deals WHERE stage <> 'new'").fetch_one(pool).await.unwrap();
    let counter: i64 =
        sqlx::query_scalar("SELECT COALESCE(sum(n), 0) FROM deals").fetch_one(pool).await.unwrap();
    let heads: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_heads WHERE seq > 0").fetch_one(pool).await.unwrap();
    (entries, changed, counter, heads)
}

/// Catches a panic raised while polling the inner future (what a host's panic-catching
/// middleware does).
struct CatchUnwind<F>(F);

impl<F: Future + Unpin> Future for CatchUnwind<F> {
    type Output = std::thread::Result<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(&mut *inner).poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(value)) => Poll::Ready(Ok(value)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// Polls the inner future at most `polls` times, then gives up and drops it: a cancellation at
/// a deterministic-ish await point (what `tokio::time::timeout` or `select!` do at random ones).
struct PollLimit<F> {
    inner: Option<F>,
    polls: u32,
}

impl<F: Future + Unpin> Future for PollLimit<F> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(inner) = self.inner.as_mut() else { return Poll::Ready(None) };
        match Pin::new(inner).poll(cx) {
            Poll::Ready(value) => {
                self.inner = None;
                Poll::Ready(Some(value))
            }
            Poll::Pending if self.polls <= 1 => {
                self.inner = None; // dropped here, mid-transaction
                Poll::Ready(None)
            }
            Poll::Pending => {
                self.polls -= 1;
                Poll::Pending
            }
        }
    }
}

fn cli_path() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let path = target.join("debug/sos-audit");
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p sos-audit --all-features --bin sos-audit` first",
        path.display()
    );
    path
}

fn sos_audit(args: &[&str]) -> Output {
    Command::new(cli_path())
        .args(args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("the sos-audit binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap()
}

/// A chain of `length` entries of `tenant_name`, built in memory on a manual clock.
fn memory_chain(tenant_name: &str, length: u64) -> Vec<AuditEntry> {
    let clock = Arc::new(ManualClock::new(start()));
    let store = MemoryAuditStore::new().with_clock(clock.clone());
    (0..length)
        .map(|index| {
            clock.advance(chrono::Duration::milliseconds(1500));
            store.append_now(entry(tenant_name, index)).expect("append")
        })
        .collect()
}

fn to_jsonl(entries: &[AuditEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        write_jsonl_line(&mut out, entry).expect("write");
    }
    out
}

fn verify_entries(entries: &[AuditEntry], head: Option<ChainHead>) -> Verdict {
    verify_jsonl(&to_jsonl(entries)[..], head, |_| {}).expect("well-formed JSONL")
}

/// Recomputes the hashes of `entries[from..]` so each is self-consistent and linked.
fn relink(entries: &mut [AuditEntry], from: usize) {
    for index in from..entries.len() {
        if index > 0 {
            entries[index].prev_hash = entries[index - 1].hash;
        }
        entries[index].hash = entries[index].compute_hash().expect("hash");
    }
}

async fn pg_disable_triggers(database: &PgTestDatabase) {
    sqlx::query("ALTER TABLE audit_entries DISABLE TRIGGER USER").execute(database.pool()).await.unwrap();
}

// ---------------------------------------------------------------------------------------------
// audit-before-write
// ---------------------------------------------------------------------------------------------

/// 0 rows, 2 rows, 0 rows under `AtLeast(1)`, a host SQL error and a host error after a real
/// change: every case rolls back both the entry and the write, even when the careless host
/// commits its transaction afterwards.
#[tokio::test]
async fn audit_before_write_row_count_mismatch_and_errors_pg() {
    let (database, chain) = pg_setup().await;
    let cases: [(&str, ExpectRows); 4] = [
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999", ExpectRows::Exactly(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme'", ExpectRows::Exactly(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'nobody'", ExpectRows::AtLeast(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme'", ExpectRows::Exactly(3)),
    ];
    for (index, (statement, expect)) in cases.into_iter().enumerate() {
        let mut tx = database.pool().begin().await.unwrap();
        let error = chain
            .audited(&mut tx, entry("acme", index as u64), expect, |conn| {
                Box::pin(async move {
                    let done = sqlx::query(statement).execute(conn).await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err(statement);
        assert!(matches!(error, Error::UnexpectedRows { .. }), "{statement}: {error:?}");
        tx.commit().await.expect("the careless host commits anyway");
        assert_eq!(pg_state(&database).await, (0, 0, 0, 0), "{statement}");
    }
    // A host SQL error after a successful change, and an injected non-SQL error.
    let mut tx = database.pool().begin().await.unwrap();
    let error = chain
        .audited(&mut tx, entry("acme", 10), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                let done = sqlx::query("UPDATE no_such_table SET x = 1").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await
        .expect_err("host SQL error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    let error = chain
        .audited(&mut tx, entry("acme", 11), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 2")
                    .execute(&mut *conn)
                    .await?;
                Err::<u64, _>(Injected)
            })
        })
        .await
        .expect_err("injected error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    tx.commit().await.expect("commit");
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0));
    // No gap: the next real append is seq 1.
    assert_eq!(chain.append(entry("acme", 12)).await.expect("append").seq, 1);
}

#[tokio::test]
async fn audit_before_write_row_count_mismatch_and_errors_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let cases: [(&str, ExpectRows); 4] = [
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999", ExpectRows::Exactly(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme'", ExpectRows::Exactly(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'nobody'", ExpectRows::AtLeast(1)),
        ("UPDATE deals SET stage = 'won' WHERE tenant = 'acme'", ExpectRows::Exactly(3)),
    ];
    for (index, (statement, expect)) in cases.into_iter().enumerate() {
        let mut tx = chain.begin().await.unwrap();
        let error = chain
            .audited(&mut tx, entry("acme", index as u64), expect, |conn| {
                Box::pin(async move {
                    let done = sqlx::query(statement).execute(conn).await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await
            .expect_err(statement);
        assert!(matches!(error, Error::UnexpectedRows { .. }), "{statement}: {error:?}");
        tx.commit().await.expect("the careless host commits anyway");
        assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0), "{statement}");
    }
    let mut tx = chain.begin().await.unwrap();
    let error = chain
        .audited(&mut tx, entry("acme", 10), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                let done = sqlx::query("UPDATE no_such_table SET x = 1").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await
        .expect_err("host SQL error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    let error = chain
        .audited(&mut tx, entry("acme", 11), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 2")
                    .execute(&mut *conn)
                    .await?;
                Err::<u64, _>(Injected)
            })
        })
        .await
        .expect_err("injected error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    tx.commit().await.expect("commit");
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0));
    assert_eq!(chain.append(entry("acme", 12)).await.expect("append").seq, 1);
}

/// The host's write panics after the audit insert and its own UPDATE; the host catches the panic
/// (as panic-catching middleware does) and commits its transaction anyway.
#[tokio::test]
async fn audit_before_write_panic_after_audit_insert_pg() {
    let (database, chain) = pg_setup().await;
    let mut tx = database.pool().begin().await.unwrap();
    let caught =
        CatchUnwind(Box::pin(chain.audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                if conn.is_in_transaction() {
                    panic!("injected panic after the audit insert and the host's UPDATE");
                }
                Ok::<u64, sqlx::Error>(1)
            })
        })))
        .await;
    assert!(caught.is_err(), "the write panicked");
    tx.commit().await.expect("the host commits after catching the panic");
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0), "no orphan entry, no unaudited write");
    assert_eq!(chain.append(entry("acme", 2)).await.expect("append").seq, 1);
}

#[tokio::test]
async fn audit_before_write_panic_after_audit_insert_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut tx = chain.begin().await.unwrap();
    let caught =
        CatchUnwind(Box::pin(chain.audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                if conn.is_in_transaction() {
                    panic!("injected panic after the audit insert and the host's UPDATE");
                }
                Ok::<u64, sqlx::Error>(1)
            })
        })))
        .await;
    assert!(caught.is_err(), "the write panicked");
    tx.commit().await.expect("the host commits after catching the panic");
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0), "no orphan entry, no unaudited write");
    assert_eq!(chain.append(entry("acme", 2)).await.expect("append").seq, 1);
}

/// The audited future is dropped after 1, 2, 3, … polls (every await point: savepoint, head
/// lock, insert, the host's UPDATE, release), and the careless host commits whatever is left.
/// Invariant: entries committed == increments of the host's counter, and the chain verifies.
#[tokio::test]
async fn audit_before_write_dropped_future_mid_transaction_pg() {
    let (database, chain) = pg_setup().await;
    let mut completed = 0i64;
    for polls in 1..=24u32 {
        let mut tx = database.pool().begin().await.unwrap();
        let outcome = PollLimit {
            inner: Some(Box::pin(chain.audited(
                &mut tx,
                entry("acme", u64::from(polls)),
                ExpectRows::Exactly(1),
                |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(&mut *conn)
                            .await?;
                        tokio::task::yield_now().await;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                },
            ))),
            polls,
        }
        .await;
        if let Some(result) = outcome {
            result.expect("an audited write that ran to completion succeeds");
            completed += 1;
        }
        // The careless host commits even after the cancellation.
        let _ = tx.commit().await;
        let (entries, _, counter, _) = pg_state(&database).await;
        assert_eq!(entries, counter, "after cancelling at poll {polls}: entries and writes disagree");
    }
    assert!(completed > 0, "some rounds ran to completion");
    let (entries, _, _, _) = pg_state(&database).await;
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
    let next = tokio::time::timeout(Duration::from_secs(10), chain.append(entry("acme", 99)))
        .await
        .expect("no head lock left behind by a cancelled transaction")
        .unwrap();
    assert_eq!(next.seq as i64, entries + 1);
}

#[tokio::test]
async fn audit_before_write_dropped_future_mid_transaction_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut completed = 0i64;
    for polls in 1..=24u32 {
        let mut tx = chain.begin().await.unwrap();
        let outcome = PollLimit {
            inner: Some(Box::pin(chain.audited(
                &mut tx,
                entry("acme", u64::from(polls)),
                ExpectRows::Exactly(1),
                |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(&mut *conn)
                            .await?;
                        tokio::task::yield_now().await;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                },
            ))),
            polls,
        }
        .await;
        if let Some(result) = outcome {
            result.expect("an audited write that ran to completion succeeds");
            completed += 1;
        }
        let _ = tx.commit().await;
        let (entries, _, counter, _) = sqlite_state(&database).await;
        assert_eq!(entries, counter, "after cancelling at poll {polls}: entries and writes disagree");
    }
    assert!(completed > 0, "some rounds ran to completion");
    let (entries, _, _, _) = sqlite_state(&database).await;
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
    let next = tokio::time::timeout(Duration::from_secs(10), chain.append(entry("acme", 99)))
        .await
        .expect("no write lock left behind by a cancelled transaction")
        .unwrap();
    assert_eq!(next.seq as i64, entries + 1);
}

/// A task holding the head lock inside an audited write is aborted: the lock is released, and
/// neither the entry nor the write survives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_before_write_aborted_task_releases_head_lock_pg() {
    let (database, chain) = pg_setup().await;
    let holder = tokio::spawn({
        let chain = chain.clone();
        let pool = database.pool().clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            let _ = chain
                .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(&mut *conn)
                            .await?;
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                })
                .await;
            tx.commit().await.unwrap();
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    holder.abort();
    assert!(holder.await.unwrap_err().is_cancelled());
    let next = tokio::time::timeout(Duration::from_secs(10), chain.append(entry("acme", 2)))
        .await
        .expect("the aborted task's head lock is released")
        .unwrap();
    assert_eq!(next.seq, 1);
    let (entries, _, counter, _) = pg_state(&database).await;
    assert_eq!((entries, counter), (1, 0));
}

/// The host's write ends the transaction itself (a helper that issues `COMMIT`) after changing 0
/// rows: the audit entry must not be committed without its write.
#[tokio::test]
async fn audit_before_write_closure_commits_pg() {
    let (database, chain) = pg_setup().await;
    let mut tx = database.pool().begin().await.unwrap();
    let result = chain
        .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await;
    assert!(result.is_err(), "0 rows where 1 was expected: {result:?}");
    let _ = tx.rollback().await;
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0), "an orphan audit entry was committed");
}

#[tokio::test]
async fn audit_before_write_closure_commits_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut tx = chain.begin().await.unwrap();
    let result = chain
        .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("COMMIT").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await;
    assert!(result.is_err(), "0 rows where 1 was expected: {result:?}");
    let _ = tx.rollback().await;
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0), "an orphan audit entry was committed");
}

/// The host's write rolls the whole transaction back itself and reports success: the caller must
/// get an error, and nothing may be left (no entry, no write).
#[tokio::test]
async fn audit_before_write_closure_rolls_back_pg() {
    let (database, chain) = pg_setup().await;
    let mut tx = database.pool().begin().await.unwrap();
    let result = chain
        .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await;
    assert!(result.is_err(), "the transaction was ended under the audited write: {result:?}");
    let _ = tx.commit().await;
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0));
    assert_eq!(chain.append(entry("acme", 2)).await.expect("append").seq, 1);
}

#[tokio::test]
async fn audit_before_write_closure_rolls_back_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut tx = chain.begin().await.unwrap();
    let result = chain
        .audited(&mut tx, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                sqlx::query("ROLLBACK").execute(&mut *conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await;
    assert!(result.is_err(), "the transaction was ended under the audited write: {result:?}");
    let _ = tx.commit().await;
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0));
    // The raw ROLLBACK desynchronises sqlx's transaction depth on that pooled connection (an sqlx
    // matter, caused by the host), so the chain continues on a fresh pool.
    let fresh = SqliteAuditChain::new(sos_testkit::sqlite_pool(database.path(), 1).await);
    assert_eq!(fresh.append(entry("acme", 2)).await.expect("append").seq, 1);
}

// ---------------------------------------------------------------------------------------------
// chain-seq-stale-read
// ---------------------------------------------------------------------------------------------

const ROLE_VAR: &str = "SOS_CHILD_ROLE";
const URL_VAR: &str = "SOS_ADV_AUDIT_URL";
const COUNT_VAR: &str = "SOS_ADV_AUDIT_COUNT";
const TASKS: u64 = 4;

/// One appender: `count` audited writes, every third one of which fails its row check and rolls
/// back. Returns how many committed.
async fn pg_appender_task(chain: PgAuditChain, pool: sqlx::PgPool, task: u64, count: u64) -> u64 {
    let mut committed = 0;
    for index in 0..count {
        let fail = index % 3 == 2;
        let mut tx = pool.begin().await.expect("begin");
        let result = chain
            .audited(
                &mut tx,
                entry("acme", task * 1_000_000 + index),
                ExpectRows::Exactly(if fail { 2 } else { 1 }),
                |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(conn)
                            .await?;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                },
            )
            .await;
        match result {
            Ok(_) => {
                tx.commit().await.expect("commit");
                committed += 1;
            }
            Err(Error::UnexpectedRows { .. }) if fail => {
                tx.rollback().await.expect("rollback");
            }
            Err(error) => panic!("unexpected failure: {error:?}"),
        }
    }
    committed
}

async fn pg_appenders(url: &str, count: u64) -> u64 {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(TASKS as u32)
        .connect(url)
        .await
        .expect("child connects");
    let chain = PgAuditChain::new(pool.clone());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| tokio::spawn(pg_appender_task(chain.clone(), pool.clone(), task, count)))
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("task");
    }
    committed
}

async fn sqlite_appenders(path: &str, count: u64) -> u64 {
    let pool = sos_testkit::sqlite_pool(std::path::Path::new(path), TASKS as u32).await;
    let chain = SqliteAuditChain::new(pool);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let chain = chain.clone();
            tokio::spawn(async move {
                let mut committed = 0;
                for index in 0..count {
                    let fail = index % 3 == 2;
                    let Ok(mut tx) = chain.begin().await else { continue };
                    let result = chain
                        .audited(
                            &mut tx,
                            entry("acme", task * 1_000_000 + index),
                            ExpectRows::Exactly(if fail { 2 } else { 1 }),
                            |conn| {
                                Box::pin(async move {
                                    let done = sqlx::query(
                                        "UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1",
                                    )
                                    .execute(conn)
                                    .await?;
                                    Ok::<_, sqlx::Error>(done.rows_affected())
                                })
                            },
                        )
                        .await;
                    match result {
                        Ok(_) => {
                            if tx.commit().await.is_ok() {
                                committed += 1;
                            }
                        }
                        Err(Error::UnexpectedRows { .. }) => {
                            assert!(fail, "only the rigged writes fail their row check");
                            tx.rollback().await.expect("rollback");
                        }
                        // A busy timeout is an honest failure; it must not leave anything behind
                        // (checked by the parent's invariant).
                        Err(_) => {}
                    }
                }
                committed
            })
        })
        .collect();
    let mut committed = 0;
    for task in tasks {
        committed += task.await.expect("task");
    }
    committed
}

/// The child half of the multi-process tests; run on its own it does an in-process round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_child_appender() {
    match std::env::var(ROLE_VAR).as_deref() {
        Ok("adv-audit-pg") => {
            let url = std::env::var(URL_VAR).unwrap();
            let count: u64 = std::env::var(COUNT_VAR).unwrap().parse().unwrap();
            println!("APPENDED {}", pg_appenders(&url, count).await);
        }
        Ok("adv-audit-sqlite") => {
            let path = std::env::var(URL_VAR).unwrap();
            let count: u64 = std::env::var(COUNT_VAR).unwrap().parse().unwrap();
            println!("APPENDED {}", sqlite_appenders(&path, count).await);
        }
        Ok("adv-audit-sqlite-autocommit") => {
            let path = std::env::var(URL_VAR).unwrap();
            let count: u64 = std::env::var(COUNT_VAR).unwrap().parse().unwrap();
            let (entries, writes) = sqlite_autocommit_appenders(&path, count).await;
            println!("APPENDED {entries}");
            println!("AUDITED {writes}");
        }
        _ => {
            let (database, chain) = pg_setup().await;
            let committed = pg_appenders(database.url(), 15).await;
            assert_eq!(committed, TASKS * 10);
            let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
            assert!(matches!(verdict, Verdict::Intact(ref v) if v.entries == committed), "{verdict:?}");
        }
    }
}

fn spawn_children(role: &str, url: &str, count: u64, processes: usize) -> Vec<std::process::Child> {
    let executable = std::env::current_exe().expect("test binary");
    (0..processes)
        .map(|_| {
            Command::new(&executable)
                .args(["--exact", "adversarial_audit::chain_seq_stale_read_child_appender", "--nocapture"])
                .env(ROLE_VAR, role)
                .env(URL_VAR, url)
                .env(COUNT_VAR, count.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect()
}

async fn collect_children(children: Vec<std::process::Child>) -> u64 {
    let mut total = 0;
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        assert!(output.status.success(), "a child failed: {}", text(&output.stdout));
        let stdout = text(&output.stdout);
        let line = stdout.lines().find_map(|line| line.strip_prefix("APPENDED ")).expect("the child's count");
        total += line.trim().parse::<u64>().unwrap();
    }
    total
}

/// Three OS processes × four tasks of audited writes on one PostgreSQL tenant, a third of them
/// rolling back: one gap-free chain, one entry per committed write, no seq reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_processes_with_rollbacks_pg() {
    let (database, chain) = pg_setup().await;
    let children = spawn_children("adv-audit-pg", database.url(), 60, 3);
    let committed = collect_children(children).await;
    assert_eq!(committed, 3 * TASKS * 40);
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    match verdict {
        Verdict::Intact(verified) => assert_eq!(verified.entries, committed),
        other => panic!("forked, gapped or reused: {other:?}"),
    }
    let (entries, _, counter, _) = pg_state(&database).await;
    assert_eq!((entries, counter), (committed as i64, committed as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_processes_with_rollbacks_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let path = database.path().to_str().unwrap().to_owned();
    let children = spawn_children("adv-audit-sqlite", &path, 30, 3);
    let committed = collect_children(children).await;
    assert!(committed > 0);
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    match verdict {
        Verdict::Intact(verified) => assert_eq!(verified.entries, committed),
        other => panic!("forked, gapped or reused: {other:?}"),
    }
    let (entries, _, counter, _) = sqlite_state(&database).await;
    assert_eq!((entries, counter), (committed as i64, committed as i64));
}

/// Many tasks race the very first append of fresh tenants (the head row does not exist yet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_first_append_race_pg() {
    let (database, chain) = pg_setup().await;
    for round in 0..6 {
        let name = format!("fresh-{round}");
        let tasks: Vec<_> = (0..12)
            .map(|index| {
                let chain = chain.clone();
                let name = name.clone();
                tokio::spawn(async move { chain.append(entry(&name, index)).await })
            })
            .collect();
        let mut seqs = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().expect("a racing first append succeeds").seq);
        }
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=12).collect::<Vec<u64>>());
        let verdict = verify_store(&chain, &tenant(&name), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "{verdict:?}");
    }
    drop(database);
}

/// A host transaction at REPEATABLE READ / SERIALIZABLE took its snapshot before another appender
/// committed: its audited write must fail or link to the current head, never fork.
#[tokio::test]
async fn chain_seq_stale_read_stale_snapshot_host_tx_pg() {
    for level in ["REPEATABLE READ", "SERIALIZABLE"] {
        let (database, chain) = pg_setup().await;
        chain.append(entry("acme", 0)).await.unwrap();
        let mut tx = database.pool().begin().await.unwrap();
        sqlx::query(&format!("SET TRANSACTION ISOLATION LEVEL {level}")).execute(&mut *tx).await.unwrap();
        let seen: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads WHERE tenant = 'acme'")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(seen, 1);
        chain.append(entry("acme", 1)).await.unwrap();
        let result = chain
            .audited(&mut tx, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
                Box::pin(async move {
                    let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                        .execute(conn)
                        .await?;
                    Ok::<_, sqlx::Error>(done.rows_affected())
                })
            })
            .await;
        match result {
            Ok(stored) => {
                assert_eq!(stored.seq, 3, "{level}");
                tx.commit().await.unwrap();
            }
            Err(_) => drop(tx),
        }
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "{level}: {verdict:?}");
        let (entries, _, counter, _) = pg_state(&database).await;
        assert_eq!(entries - 2, counter, "{level}");
    }
}

/// SQLite: a deferred host transaction read the head, then another connection appended: the
/// audited write must fail (busy snapshot) or link to the current head, never fork.
#[tokio::test]
async fn chain_seq_stale_read_stale_snapshot_host_tx_sqlite() {
    let (database, chain) = sqlite_setup().await;
    chain.append(entry("acme", 0)).await.unwrap();
    let mut tx = database.pool().begin().await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads WHERE tenant = 'acme'")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(seen, 1);
    chain.append(entry("acme", 1)).await.unwrap();
    let result = chain
        .audited(&mut tx, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                    .execute(conn)
                    .await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await;
    match result {
        Ok(stored) => {
            assert_eq!(stored.seq, 3);
            tx.commit().await.unwrap();
        }
        Err(_) => drop(tx),
    }
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
    let (entries, _, counter, _) = sqlite_state(&database).await;
    assert_eq!(entries - 2, counter);
}

/// A verifier running while appenders commit must never raise a false alarm (a gap or a head
/// mismatch seen between the head read and the page reads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_verify_during_appends_no_false_alarm() {
    let (pg, pg_chain) = pg_setup().await;
    let (sqlite, sqlite_chain) = sqlite_setup().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    let mut appenders = Vec::new();
    for task in 0..3u64 {
        let pg_chain = pg_chain.clone();
        let sqlite_chain = sqlite_chain.clone();
        appenders.push(tokio::spawn(async move {
            let mut index = 0;
            while std::time::Instant::now() < deadline {
                pg_chain.append(entry("acme", task * 1_000_000 + index)).await.unwrap();
                let _ = sqlite_chain.append(entry("acme", task * 1_000_000 + index)).await;
                index += 1;
            }
        }));
    }
    let mut rounds = 0;
    while std::time::Instant::now() < deadline {
        let verdict = verify_store(&pg_chain, &tenant("acme"), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "PostgreSQL false alarm: {verdict:?}");
        let verdict = verify_store(&sqlite_chain, &tenant("acme"), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "SQLite false alarm: {verdict:?}");
        rounds += 1;
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    assert!(rounds > 0);
    drop((pg, sqlite));
}

/// The statements a process that bypasses the store (the application role may INSERT) would use
/// to slip an unlinked entry into `acme`'s chain of 3 entries whose hashes are `hashes`: each is
/// (label, seq, prev_hash, whether it also moves the head onto the entry in the same statement).
fn unlinked_inserts(hashes: &[Sha256Digest]) -> Vec<(&'static str, i64, Sha256Digest, bool)> {
    let forged = Sha256Digest::of(b"forged");
    vec![
        ("next seq, wrong prev_hash", 4, Sha256Digest::ZERO, false),
        ("next seq, wrong prev_hash, head moved", 4, forged, true),
        ("next seq, right prev_hash, head not moved", 4, hashes[2], false),
        ("skipped seq", 6, hashes[2], true),
        ("fork of entry 2 (seq repeated)", 3, hashes[1], true),
        ("first entry of a tenant with a non-zero prev_hash", 1, forged, true),
    ]
}

/// Named shape `chain-seq-stale-read`, at the database: an INSERT by the application role that
/// does not go through the store cannot put a forked, repeated or skipped entry, or one with a
/// wrong prev_hash, into a chain; the store's next append still links to the real head.
#[tokio::test]
async fn chain_seq_stale_read_direct_unlinked_insert_refused_pg() {
    let (database, chain) = pg_setup().await;
    let mut hashes = Vec::new();
    for index in 0..3 {
        hashes.push(chain.append(entry("acme", index)).await.unwrap().hash);
    }
    for (label, seq, prev_hash, move_head) in unlinked_inserts(&hashes) {
        let tenant_name = if seq == 1 { "globex" } else { "acme" };
        if seq == 1 {
            sqlx::query("INSERT INTO audit_heads VALUES ('globex', 0, $1) ON CONFLICT DO NOTHING")
                .bind(Sha256Digest::ZERO.as_bytes().as_slice())
                .execute(database.pool())
                .await
                .unwrap();
        }
        let own_hash = Sha256Digest::of(label.as_bytes());
        let insert =
            "INSERT INTO audit_entries VALUES ($1, $2, 0, 'mallory', 'grant', 'admin', '{}', $3, $4)";
        let statement = if move_head {
            format!("WITH head AS (UPDATE audit_heads SET seq = $2, hash = $4 WHERE tenant = $1) {insert}")
        } else {
            insert.to_owned()
        };
        let outcome = sqlx::query(&statement)
            .bind(tenant_name)
            .bind(seq)
            .bind(prev_hash.as_bytes().as_slice())
            .bind(own_hash.as_bytes().as_slice())
            .execute(database.pool())
            .await;
        let error = outcome.expect_err(label);
        assert!(
            error.to_string().contains("not linked") || error.to_string().contains("duplicate"),
            "{label}: {error}"
        );
    }
    let fourth = chain.append(entry("acme", 3)).await.expect("append after the refused inserts");
    assert_eq!((fourth.seq, fourth.prev_hash), (4, hashes[2]));
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(matches!(verdict, Verdict::Intact(ref verified) if verified.entries == 4), "{verdict:?}");
}

/// [`chain_seq_stale_read_direct_unlinked_insert_refused_pg`] on SQLite (the head row is moved by
/// a second statement there, so "head moved" is an UPDATE before the INSERT).
#[tokio::test]
async fn chain_seq_stale_read_direct_unlinked_insert_refused_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut hashes = Vec::new();
    for index in 0..3 {
        hashes.push(chain.append(entry("acme", index)).await.unwrap().hash);
    }
    for (label, seq, prev_hash, move_head) in unlinked_inserts(&hashes) {
        let tenant_name = if seq == 1 { "globex" } else { "acme" };
        let own_hash = Sha256Digest::of(label.as_bytes());
        let mut tx = database.pool().begin().await.unwrap();
        if seq == 1 {
            sqlx::query("INSERT OR IGNORE INTO audit_heads VALUES ('globex', 0, zeroblob(32))")
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        let outcome = sqlx::query(
            "INSERT INTO audit_entries VALUES (?1, ?2, 0, 'mallory', 'grant', 'admin', '{}', ?3, ?4)",
        )
        .bind(tenant_name)
        .bind(seq)
        .bind(prev_hash.as_bytes().as_slice())
        .bind(own_hash.as_bytes().as_slice())
        .execute(&mut *tx)
        .await;
        let error = outcome.expect_err(label);
        assert!(
            error.to_string().contains("not linked") || error.to_string().contains("replaced"),
            "{label}: {error}"
        );
        if move_head {
            // Moving the head first does not help either: the entry must extend the head.
            sqlx::query("UPDATE audit_heads SET seq = ?2, hash = ?3 WHERE tenant = ?1")
                .bind(tenant_name)
                .bind(seq)
                .bind(own_hash.as_bytes().as_slice())
                .execute(&mut *tx)
                .await
                .unwrap();
            let outcome = sqlx::query(
                "INSERT INTO audit_entries VALUES (?1, ?2, 0, 'mallory', 'grant', 'admin', '{}', ?3, ?4)",
            )
            .bind(tenant_name)
            .bind(seq)
            .bind(prev_hash.as_bytes().as_slice())
            .bind(own_hash.as_bytes().as_slice())
            .execute(&mut *tx)
            .await;
            assert!(outcome.is_err(), "{label} (head moved first) was accepted");
        }
        tx.rollback().await.unwrap();
    }
    let fourth = chain.append(entry("acme", 3)).await.expect("append after the refused inserts");
    assert_eq!((fourth.seq, fourth.prev_hash), (4, hashes[2]));
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(matches!(verdict, Verdict::Intact(ref verified) if verified.entries == 4), "{verdict:?}");
}

/// Two stores over one pool (two processes' head caches) append to two tenants in an interleaved
/// order: every append links to the real head of its own tenant, never to another tenant's
/// remembered head nor to a head the other store has since moved past.
async fn cached_heads_stay_per_tenant<S: AuditStore>(stores: &[S; 2]) {
    let plan = [
        (0, "acme"),
        (0, "globex"),
        (1, "acme"),
        (0, "acme"),
        (1, "globex"),
        (1, "globex"),
        (0, "globex"),
        (1, "acme"),
        (0, "acme"),
        (0, "globex"),
    ];
    let mut last: std::collections::HashMap<&str, AuditEntry> = std::collections::HashMap::new();
    for (step, &(which, name)) in plan.iter().enumerate() {
        let stored = stores[which].append(entry(name, step as u64)).await.expect("append");
        let (seq, prev) = last.get(name).map_or((1, Sha256Digest::ZERO), |entry| (entry.seq + 1, entry.hash));
        assert_eq!((stored.seq, stored.prev_hash), (seq, prev), "step {step}: store {which}, tenant {name}");
        last.insert(name, stored);
    }
    for name in ["acme", "globex"] {
        let verdict = verify_store(&stores[0], &tenant(name), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "{name}: {verdict:?}");
    }
}

#[tokio::test]
async fn chain_seq_stale_read_cached_heads_stay_per_tenant_pg() {
    let (database, _chain) = pg_setup().await;
    cached_heads_stay_per_tenant(&[
        PgAuditChain::new(database.pool().clone()),
        PgAuditChain::new(database.pool().clone()),
    ])
    .await;
}

#[tokio::test]
async fn chain_seq_stale_read_cached_heads_stay_per_tenant_sqlite() {
    let (database, _chain) = sqlite_setup().await;
    cached_heads_stay_per_tenant(&[
        SqliteAuditChain::new(database.pool().clone()),
        SqliteAuditChain::new(database.pool().clone()),
    ])
    .await;
}

// ---------------------------------------------------------------------------------------------
// write-once
// ---------------------------------------------------------------------------------------------

/// Statements an application connection can issue against the entry table on SQLite. Every one
/// that would change or remove an existing entry must be refused.
#[tokio::test]
async fn write_once_sqlite_replace_cannot_rewrite_history() {
    let (database, chain) = sqlite_setup().await;
    for index in 0..4 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    let before: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_entries ORDER BY seq")
        .fetch_all(database.pool())
        .await
        .unwrap();
    let forged_values = "('acme', 2, 0, 'mallory', 'grant', 'admin', '{}', zeroblob(32), zeroblob(32))";
    for statement in [
        format!("INSERT OR REPLACE INTO audit_entries VALUES {forged_values}"),
        format!("REPLACE INTO audit_entries VALUES {forged_values}"),
        format!(
            "INSERT INTO audit_entries VALUES {forged_values} ON CONFLICT (tenant, seq) DO UPDATE SET actor = excluded.actor"
        ),
        "UPDATE OR REPLACE audit_entries SET seq = 2 WHERE seq = 3".to_owned(),
        "UPDATE audit_entries SET actor = 'mallory'".to_owned(),
        "DELETE FROM audit_entries WHERE seq = 4".to_owned(),
    ] {
        let _ = sqlx::query(&statement).execute(database.pool()).await;
        let after: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_entries ORDER BY seq")
            .fetch_all(database.pool())
            .await
            .unwrap();
        assert_eq!(after, before, "{statement} rewrote history");
    }
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
}

/// PostgreSQL: upserts, updates, deletes and TRUNCATE (also CASCADE / ONLY) on the entry table.
#[tokio::test]
async fn write_once_pg_upsert_update_delete_truncate_refused() {
    let (database, chain) = pg_setup().await;
    for index in 0..4 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    let before: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_entries ORDER BY seq")
        .fetch_all(database.pool())
        .await
        .unwrap();
    let forged = "('acme', 2, 0, 'mallory', 'grant', 'admin', '{}', '\\x00'::bytea, '\\x00'::bytea)";
    for statement in [
        format!(
            "INSERT INTO audit_entries VALUES {forged} ON CONFLICT (tenant, seq) DO UPDATE SET actor = excluded.actor"
        ),
        format!(
            "INSERT INTO audit_entries VALUES {forged} ON CONFLICT ON CONSTRAINT audit_entries_tenant_seq_key DO UPDATE SET hash = excluded.hash"
        ),
        "UPDATE audit_entries SET actor = 'mallory' WHERE seq = 2".to_owned(),
        "UPDATE audit_entries SET seq = seq + 10".to_owned(),
        "DELETE FROM audit_entries WHERE seq = 4".to_owned(),
        "TRUNCATE audit_entries".to_owned(),
        "TRUNCATE ONLY audit_entries".to_owned(),
        "TRUNCATE audit_entries, audit_heads CASCADE".to_owned(),
        "MERGE INTO audit_entries AS e USING (SELECT 'acme' AS tenant, 2::bigint AS seq) AS s \
         ON e.tenant = s.tenant AND e.seq = s.seq WHEN MATCHED THEN UPDATE SET actor = 'mallory'"
            .to_owned(),
        "MERGE INTO audit_entries AS e USING (SELECT 'acme' AS tenant, 4::bigint AS seq) AS s \
         ON e.tenant = s.tenant AND e.seq = s.seq WHEN MATCHED THEN DELETE"
            .to_owned(),
    ] {
        let _ = sqlx::query(&statement).execute(database.pool()).await;
        let after: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT seq, hash FROM audit_entries ORDER BY seq")
            .fetch_all(database.pool())
            .await
            .unwrap();
        assert_eq!(after, before, "{statement} rewrote history");
    }
}

/// The head table is the chain's lock and end marker. An application statement that deletes or
/// truncates head rows would make every later append of those tenants fail (a PK conflict at
/// seq 1): the whole audited write path of the host is down. Such statements must be refused.
#[tokio::test]
async fn write_once_head_rows_refuse_delete_and_truncate_pg() {
    let (database, chain) = pg_setup().await;
    for index in 0..3 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    for statement in ["DELETE FROM audit_heads WHERE tenant = 'acme'", "TRUNCATE audit_heads"] {
        let _ = sqlx::query(statement).execute(database.pool()).await;
        let head = chain.head(&tenant("acme")).await.unwrap();
        assert_eq!(head.map(|head| head.seq), Some(3), "{statement} removed the chain's head");
    }
    let next = chain.append(entry("acme", 9)).await.expect("appends keep working");
    assert_eq!(next.seq, 4);
}

#[tokio::test]
async fn write_once_head_rows_refuse_delete_sqlite() {
    let (database, chain) = sqlite_setup().await;
    for index in 0..3 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    for statement in ["DELETE FROM audit_heads WHERE tenant = 'acme'", "DELETE FROM audit_heads"] {
        let _ = sqlx::query(statement).execute(database.pool()).await;
        let head = chain.head(&tenant("acme")).await.unwrap();
        assert_eq!(head.map(|head| head.seq), Some(3), "{statement} removed the chain's head");
    }
    let next = chain.append(entry("acme", 9)).await.expect("appends keep working");
    assert_eq!(next.seq, 4);
}

/// Rewriting a head row (as the application role may, with UPDATE on `audit_heads`) must never
/// make the next append fork the chain silently: either the append fails, or the verifier
/// reports the damage, or the chain is intact with every original entry.
#[tokio::test]
async fn write_once_head_rewrite_cannot_fork_silently_pg() {
    let rewrites = [
        "UPDATE audit_heads SET seq = 2, hash = (SELECT hash FROM audit_entries WHERE tenant = 'acme' AND seq = 2)",
        "UPDATE audit_heads SET seq = 7",
        "UPDATE audit_heads SET hash = '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea",
        "UPDATE audit_heads SET seq = 0, hash = '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea",
    ];
    for rewrite in rewrites {
        let (database, chain) = pg_setup().await;
        let mut originals = Vec::new();
        for index in 0..3 {
            originals.push(chain.append(entry("acme", index)).await.unwrap());
        }
        let _ = sqlx::query(rewrite).execute(database.pool()).await;
        let appended = chain.append(entry("acme", 9)).await;
        let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
        let page = chain.read_page(&tenant("acme"), 0, 100).await.unwrap();
        assert_eq!(&page[..3], &originals[..], "{rewrite}: history changed");
        match (appended, verdict) {
            (Err(_), _) => {}
            (Ok(_), Verdict::Tampered { .. }) => {}
            (Ok(stored), Verdict::Intact(verified)) => {
                assert_eq!(stored.seq, 4, "{rewrite}");
                assert_eq!(stored.prev_hash, originals[2].hash, "{rewrite}");
                assert_eq!(verified.entries, 4, "{rewrite}");
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Verifier evasion
// ---------------------------------------------------------------------------------------------

/// Every single-field modification, at every position, is found at that position.
#[test]
fn verifier_evasion_modify_any_field_any_position() {
    let chain = memory_chain("acme", 6);
    for position in 0..chain.len() {
        for field in 0..10 {
            let mut entries = chain.clone();
            let target = &mut entries[position];
            match field {
                0 => target.tenant = tenant("acme2"),
                1 => target.seq += 1,
                2 => target.time_us -= 1,
                3 => target.actor.push(' '),
                4 => target.action = target.action.to_uppercase(),
                5 => target.subject.push('\u{200b}'),
                6 => target.payload = target.payload.replace("\\n", "\\u000a"),
                7 => target.prev_hash = Sha256Digest::of(b"x"),
                8 => target.hash = Sha256Digest::of(b"x"),
                _ => target.payload = format!(" {}", target.payload),
            }
            let verdict = verify_entries(&entries, None);
            let finding =
                verdict.finding().unwrap_or_else(|| panic!("field {field} at {position} undetected"));
            assert_eq!(finding.position(), position as u64 + 1, "field {field} at {position}: {finding}");
        }
    }
}

#[test]
fn verifier_evasion_delete_swap_insert_duplicate() {
    let chain = memory_chain("acme", 6);
    // Delete each entry but the last (the last is a truncation, tested below).
    for index in 0..5 {
        let mut entries = chain.clone();
        entries.remove(index);
        let verdict = verify_entries(&entries, None);
        assert_eq!(verdict.finding().map(Finding::position), Some(index as u64 + 1), "delete {index}");
    }
    // Swap neighbours.
    for index in 0..5 {
        let mut entries = chain.clone();
        entries.swap(index, index + 1);
        let verdict = verify_entries(&entries, None);
        assert_eq!(verdict.finding().map(Finding::position), Some(index as u64 + 1), "swap {index}");
    }
    // Swap far apart.
    let mut entries = chain.clone();
    entries.swap(1, 4);
    assert_eq!(verify_entries(&entries, None).finding().map(Finding::position), Some(2));
    // Insert a forged, correctly linked entry with a recomputed hash, anywhere.
    for index in 0..=6 {
        let mut entries = chain.clone();
        let prev = if index == 0 { Sha256Digest::ZERO } else { entries[index - 1].hash };
        let forged = NewEntry::new(tenant("acme"), "mallory", "grant", "admin", &serde_json::json!({}))
            .unwrap()
            .into_entry(index as u64 + 1, start(), prev)
            .unwrap();
        entries.insert(index, forged);
        let verdict = verify_entries(&entries, None);
        if index == 6 {
            // Appending a well-formed entry at the end is an append, not tampering.
            assert!(verdict.is_intact());
        } else {
            assert_eq!(verdict.finding().map(Finding::position), Some(index as u64 + 1), "insert {index}");
        }
    }
    // Duplicate an entry right after itself and further down.
    for (copy, at) in [(2usize, 3usize), (0, 1), (1, 5), (5, 6)] {
        let mut entries = chain.clone();
        let duplicate = entries[copy].clone();
        entries.insert(at, duplicate);
        let verdict = verify_entries(&entries, None);
        assert!(!verdict.is_intact(), "duplicate of {copy} at {at} undetected");
    }
}

/// A copy of entry 2 inserted after entry 4: entries 1 to 4 are intact, so the first bad entry
/// is the one at position 5; blaming entry 2 ("inserted at or before this position") is wrong.
#[test]
fn verifier_evasion_duplicate_far_down_names_the_first_bad_position() {
    let chain = memory_chain("acme", 6);
    let mut entries = chain.clone();
    entries.insert(4, chain[1].clone());
    let verdict = verify_entries(&entries, None);
    assert_eq!(verdict.finding().map(Finding::position), Some(5), "{verdict:?}");
    // The author's case stays as it is: a forged entry claiming the position it sits at.
    let mut entries = chain.clone();
    let forged = NewEntry::new(tenant("acme"), "mallory", "grant", "admin", &serde_json::json!({}))
        .unwrap()
        .into_entry(3, start(), entries[1].hash)
        .unwrap();
    entries.insert(2, forged);
    assert_eq!(verify_entries(&entries, None).finding().map(Finding::position), Some(3));
}

#[test]
fn verifier_evasion_recomputed_tail_and_truncation_need_an_outside_head() {
    let chain = memory_chain("acme", 8);
    let recorded = chain[7].as_head();
    // Change entry 3 and recompute the whole tail after it.
    let mut entries = chain.clone();
    entries[2].subject = "deal/forged".to_owned();
    relink(&mut entries, 2);
    assert!(verify_entries(&entries, None).is_intact(), "documented: undetectable without a head");
    let verdict = verify_entries(&entries, Some(recorded));
    assert!(matches!(verdict.finding(), Some(Finding::HeadMismatch { seq: 8, .. })), "{verdict:?}");
    // Recompute the tail and extend it past the recorded head.
    let mut longer = entries.clone();
    let prev = longer[7].hash;
    longer.push(entry("acme", 100).into_entry(9, start(), prev).unwrap());
    assert!(!verify_entries(&longer, Some(recorded)).is_intact());
    // Truncate the tail: without a head it is a shorter chain; with one, a truncation.
    for keep in [0usize, 1, 4, 7] {
        let truncated = &chain[..keep];
        assert!(verify_entries(truncated, None).is_intact());
        let verdict = verify_entries(truncated, Some(recorded));
        assert!(
            matches!(verdict.finding(), Some(Finding::Truncated { last, .. }) if *last == keep as u64),
            "keep {keep}: {verdict:?}"
        );
    }
    // A head of an older position still checks the hash there.
    let mut entries = chain.clone();
    entries[3].actor = "mallory".to_owned();
    relink(&mut entries, 3);
    let verdict = verify_entries(&entries, Some(chain[5].as_head()));
    assert!(matches!(verdict.finding(), Some(Finding::HeadMismatch { seq: 6, .. })), "{verdict:?}");
}

/// An entry of tenant B (self-consistent, same seq) spliced into tenant A's chain.
#[test]
fn verifier_evasion_splice_other_tenants_entry() {
    let acme = memory_chain("acme", 5);
    let globex = memory_chain("globex", 5);
    let mut entries = acme.clone();
    entries[2] = globex[2].clone();
    let verdict = verify_entries(&entries, None);
    assert_eq!(verdict.finding().map(Finding::position), Some(3), "{verdict:?}");
    // A whole file of the other tenant is not the chain a head recorded for acme names.
    let verdict = verify_entries(&globex, Some(acme[4].as_head()));
    assert!(!verdict.is_intact(), "{verdict:?}");
    // Rewrite the tenant field of acme's entry 3 to globex and recompute: a foreign entry.
    let mut entries = acme.clone();
    entries[2].tenant = tenant("globex");
    relink(&mut entries, 2);
    let verdict = verify_entries(&entries, None);
    assert_eq!(verdict.finding().map(Finding::position), Some(3), "{verdict:?}");
}

/// The tenant column of a stored row is moved to another tenant (around the triggers, as the
/// table owner): both chains are reported, and verifying one never reads the other.
#[tokio::test]
async fn verifier_evasion_splice_tenant_column_in_database_pg() {
    let (database, chain) = pg_setup().await;
    for index in 0..4 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    for index in 0..2 {
        chain.append(entry("globex", index)).await.unwrap();
    }
    pg_disable_triggers(&database).await;
    sqlx::query("UPDATE audit_entries SET tenant = 'globex' WHERE tenant = 'acme' AND seq = 3")
        .execute(database.pool())
        .await
        .unwrap();
    let acme = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert_eq!(acme.finding().map(Finding::position), Some(3), "{acme:?}");
    let globex = verify_store(&chain, &tenant("globex"), None, |_| {}).await.unwrap();
    assert_eq!(globex.finding().map(Finding::position), Some(3), "{globex:?}");
}

/// A malformed stored row later in a page must not hide an earlier modified entry: the verifier
/// names the first bad entry.
#[tokio::test]
async fn verifier_evasion_malformed_row_masks_earlier_modification_pg() {
    let (database, chain) = pg_setup().await;
    for index in 0..6 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    pg_disable_triggers(&database).await;
    // As the table owner: around the triggers and the hash-length CHECK.
    sqlx::query("ALTER TABLE audit_entries DROP CONSTRAINT IF EXISTS audit_entries_hash_length")
        .execute(database.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_entries SET subject = 'deal/forged' WHERE seq = 2")
        .execute(database.pool())
        .await
        .unwrap();
    sqlx::query("UPDATE audit_entries SET hash = '\\x0102'::bytea WHERE seq = 5")
        .execute(database.pool())
        .await
        .unwrap();
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert_eq!(verdict.finding().map(Finding::position), Some(2), "{verdict:?}");
}

/// A deleted entry before a malformed row (both done as the table owner): the verifier still
/// gives a verdict naming the deletion, not an error.
#[tokio::test]
async fn verifier_evasion_deletion_then_malformed_row_pg() {
    let (database, chain) = pg_setup().await;
    for index in 0..6 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    pg_disable_triggers(&database).await;
    sqlx::query("ALTER TABLE audit_entries DROP CONSTRAINT IF EXISTS audit_entries_hash_length")
        .execute(database.pool())
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_entries WHERE seq = 2").execute(database.pool()).await.unwrap();
    sqlx::query("UPDATE audit_entries SET hash = '\\x0102'::bytea WHERE seq = 4")
        .execute(database.pool())
        .await
        .unwrap();
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.expect("a verdict, not an error");
    assert_eq!(verdict.finding().map(Finding::position), Some(2), "{verdict:?}");
    let output = sos_audit(&["verify", "--database-url", database.url(), "--tenant", "acme"]);
    assert_eq!(output.status.code(), Some(1), "{}{}", text(&output.stdout), text(&output.stderr));
}

/// Canonical JSON: the same value sent with other key order, whitespace or escapes gives the same
/// payload; numbers whose JSON text is ambiguous (floats, -0, beyond 2^53) are refused or
/// normalised, never hashed in two spellings.
#[test]
fn verifier_evasion_canonical_json_ambiguity() {
    let spellings = [
        r#"{"b":1,"a":"é","c":[true,null]}"#,
        "{ \"a\" : \"\\u00e9\" ,\n \"c\" : [ true , null ] , \"b\" : 1 }",
        r#"{"c":[true,null],"b":1,"a":"\u00E9"}"#,
        r#"{"a":"e\u0301","b":1,"c":[true,null]}"#,
    ];
    let canonical: Vec<String> =
        spellings.iter().map(|text| canonical_json(&serde_json::from_str(text).unwrap()).unwrap()).collect();
    assert_eq!(canonical[0], canonical[1]);
    assert_eq!(canonical[0], canonical[2]);
    // A decomposed é is a different string: JCS does not normalise Unicode, and must not.
    assert_ne!(canonical[0], canonical[3]);

    for number in [
        "0.30000000000000004",
        "1.0",
        "1e2",
        "-0.0",
        "18446744073709551615",
        "9007199254740992",
        "-9007199254740992",
        "-9223372036854775808",
    ] {
        let value: serde_json::Value = serde_json::from_str(number).unwrap();
        assert!(canonical_json(&value).is_err(), "{number} must be refused");
    }
    for (number, expected) in
        [("-0", "0"), ("9007199254740991", "9007199254740991"), ("-9007199254740991", "-9007199254740991")]
    {
        let value: serde_json::Value = serde_json::from_str(number).unwrap();
        if let Ok(text) = canonical_json(&value) {
            assert_eq!(text, expected, "{number}");
        }
    }
    assert!(serde_json::from_str::<serde_json::Value>("1e400").is_err());
    assert!(canonical_json(&serde_json::json!(0.1 + 0.2)).is_err());
    assert!(canonical_json(&serde_json::json!(-0.0)).is_err());
    // Control characters, DEL and U+2028 have exactly one spelling each.
    let tricky = serde_json::json!({"k": "\u{1}\u{7f}\u{2028}\u{1f600}\"\\/"});
    let text = canonical_json(&tricky).unwrap();
    assert_eq!(text, "{\"k\":\"\\u0001\u{7f}\u{2028}\u{1f600}\\\"\\\\/\"}");
    assert_eq!(canonical_json(&serde_json::from_str(&text).unwrap()).unwrap(), text);
    // Deep nesting is refused, not a stack overflow.
    let mut deep = serde_json::json!(1);
    for _ in 0..100 {
        deep = serde_json::json!([deep]);
    }
    assert!(canonical_json(&deep).is_err());
}

/// Malformed chain files: always an error naming the line and exit status 2 from the CLI, never a
/// panic and never "intact".
#[test]
fn verifier_evasion_malformed_jsonl_cli() {
    let chain = memory_chain("acme", 3);
    let good = to_jsonl(&chain);
    let lines: Vec<String> = text(&good).lines().map(str::to_owned).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("chain.jsonl");
    let path = file.to_str().unwrap().to_owned();

    let mut cases: Vec<(String, Vec<u8>, u64)> = Vec::new();
    let with_line2 = |line2: Vec<u8>| -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(lines[0].as_bytes());
        out.push(b'\n');
        out.extend_from_slice(&line2);
        out.push(b'\n');
        out.extend_from_slice(lines[2].as_bytes());
        out.push(b'\n');
        out
    };
    cases.push(("truncated line".into(), with_line2(lines[1].as_bytes()[..40].to_vec()), 2));
    let mut invalid_utf8 = lines[1].clone().into_bytes();
    let at = lines[1].find("agent").unwrap();
    invalid_utf8[at] = 0xff;
    cases.push(("invalid UTF-8".into(), with_line2(invalid_utf8), 2));
    cases.push(("huge line".into(), with_line2(vec![b' '; 3 * 1024 * 1024]), 2));
    cases.push((
        "huge line of a string".into(),
        with_line2(format!("\"{}\"", "a".repeat(2 * 1024 * 1024)).into_bytes()),
        2,
    ));
    for (from, to) in [
        ("\"seq\":2", "\"seq\":\"2\""),
        ("\"seq\":2", "\"seq\":-2"),
        ("\"seq\":2", "\"seq\":2.0"),
        ("\"seq\":2", "\"seq\":18446744073709551616"),
        ("\"tenant\":\"acme\"", "\"tenant\":\"ACME\""),
        ("\"tenant\":\"acme\"", "\"tenant\":null"),
        ("\"actor\":\"agent:adversary\"", "\"actor\":1"),
        ("\"actor\":\"agent:adversary\"", "\"actor\":\"a\",\"actor\":\"agent:adversary\""),
        ("\"seq\":2", "\"seq\":2,\"extra\":1"),
        ("\"seq\":2,", ""),
        ("\"time_us\":", "\"time_us\":1e3,\"x\":"),
    ] {
        assert!(lines[1].contains(from), "{from}");
        cases.push((format!("{from} -> {to}"), with_line2(lines[1].replacen(from, to, 1).into_bytes()), 2));
    }
    let hash_at = lines[1].find("\"hash\":\"").unwrap() + 8;
    let mut short_hash = lines[1].clone();
    short_hash.remove(hash_at);
    cases.push(("63 hex digits".into(), with_line2(short_hash.into_bytes()), 2));
    let payload_object = lines[1].replacen("\"payload\":\"", "\"payload\":{\"x\":\"", 1);
    cases.push(("payload as an object".into(), with_line2(payload_object.into_bytes()), 2));
    cases.push((
        "two objects on a line".into(),
        with_line2(format!("{} {}", lines[1], lines[1]).into_bytes()),
        2,
    ));
    cases.push(("a JSON array".into(), with_line2(format!("[{}]", lines[1]).into_bytes()), 2));
    cases.push(("NUL byte".into(), with_line2(b"\0".to_vec()), 2));

    for (name, bytes, line) in cases {
        std::fs::write(&file, &bytes).unwrap();
        // The library never panics and names the line.
        let library = std::panic::catch_unwind(|| verify_jsonl(&bytes[..], None, |_| {}));
        match library {
            Ok(Err(Error::MalformedLine { line: found, .. })) => assert_eq!(found, line, "{name}"),
            other => panic!("{name}: expected a malformed-line error, got {other:?}"),
        }
        let output = sos_audit(&["verify", "--file", &path]);
        assert_eq!(output.status.code(), Some(2), "{name}: {}{}", text(&output.stdout), text(&output.stderr));
        assert!(text(&output.stderr).contains(&format!("line {line}")), "{name}: {}", text(&output.stderr));
    }

    // A UTF-8 byte-order mark, CRLF line ends and blank lines: the chain is still read correctly.
    let mut crlf = Vec::new();
    for line in &lines {
        crlf.extend_from_slice(line.as_bytes());
        crlf.extend_from_slice(b"\r\n\r\n");
    }
    std::fs::write(&file, &crlf).unwrap();
    assert_eq!(sos_audit(&["verify", "--file", &path]).status.code(), Some(0));
    // Tampering in a file: exit 1 naming the seq.
    let tampered = text(&good).replacen("deal/1", "deal/9", 1);
    std::fs::write(&file, tampered).unwrap();
    let output = sos_audit(&["verify", "--file", &path]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output.stdout));
    assert!(text(&output.stdout).contains("seq 2"), "{}", text(&output.stdout));
    // A directory, not a file: an I/O error.
    let output = sos_audit(&["verify", "--file", dir.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output.stderr));
    // Bad usage.
    assert_eq!(sos_audit(&["verify", "--file", &path, "--expect-head", "2:zz"]).status.code(), Some(2));
    assert_eq!(sos_audit(&["verify", "--file", &path, "--expect-head", "-1:00"]).status.code(), Some(2));
    assert_eq!(
        sos_audit(&["export", "--database-url", "mysql://x", "--tenant", "acme"]).status.code(),
        Some(2)
    );
    assert_eq!(
        sos_audit(&["verify", "--database-url", "sqlite:///nonexistent/dir/x.db"]).status.code(),
        Some(2)
    );
}

/// A row the application inserted with a tenant id that is not a valid `TenantId` (the app role
/// holds INSERT on the entry table) must not stop `sos-audit verify` from checking every chain,
/// and it is tampering (exit 1), not an I/O error (exit 2).
#[tokio::test]
async fn verifier_evasion_invalid_tenant_row_is_tampering_pg() {
    let (database, chain) = pg_setup().await;
    for index in 0..3 {
        chain.append(entry("acme", index)).await.unwrap();
    }
    let inserted = sqlx::query(
        "INSERT INTO audit_entries VALUES ('ACME Corp', 1, 0, 'mallory', 'grant', 'admin', '{}', \
         '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea, \
         '\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea)",
    )
    .execute(database.pool())
    .await;
    if inserted.is_err() {
        return; // refused by the schema: safe
    }
    let output = sos_audit(&["verify", "--database-url", database.url()]);
    assert_eq!(output.status.code(), Some(1), "{}{}", text(&output.stdout), text(&output.stderr));
    assert!(text(&output.stdout).contains("tenant acme: 3 entries"), "{}", text(&output.stdout));
}

/// SQLite stores whatever type it is given unless told otherwise: a row appended by the
/// application with a REAL seq, a TEXT time or a BLOB tenant must be refused, or be reported as
/// tampering (exit 1), never make the verifier give up with an I/O error or skip it.
#[tokio::test]
async fn verifier_evasion_sqlite_type_confused_rows() {
    let rows = [
        "('acme', 2.5, 0, 'mallory', 'grant', 'admin', '{}', zeroblob(32), zeroblob(32))",
        "('acme', 4, 'soon', 'mallory', 'grant', 'admin', '{}', zeroblob(32), zeroblob(32))",
        "('acme', 4, 0, X'ff', 'grant', 'admin', '{}', zeroblob(32), zeroblob(32))",
        "(CAST('acme' AS BLOB), 1, 0, 'mallory', 'grant', 'admin', '{}', zeroblob(32), zeroblob(32))",
        "('acme', 4, 0, 'mallory', 'grant', 'admin', '{}', 'not a blob hash', zeroblob(32))",
    ];
    for row in rows {
        let (database, chain) = sqlite_setup().await;
        for index in 0..3 {
            chain.append(entry("acme", index)).await.unwrap();
        }
        let inserted =
            sqlx::query(&format!("INSERT INTO audit_entries VALUES {row}")).execute(database.pool()).await;
        if inserted.is_err() {
            continue; // refused by the schema: safe
        }
        let url = database.url();
        let output = sos_audit(&["verify", "--database-url", &url, "--tenant", "acme"]);
        assert_eq!(output.status.code(), Some(1), "{row}: {}{}", text(&output.stdout), text(&output.stderr));
        let output = sos_audit(&["verify", "--database-url", &url]);
        assert_eq!(output.status.code(), Some(1), "{row}: {}{}", text(&output.stdout), text(&output.stderr));
    }
}

// ---------------------------------------------------------------------------------------------
// unique-null
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn unique_null_raw_null_keys_refused_pg() {
    let (database, chain) = pg_setup().await;
    chain.append(entry("acme", 0)).await.unwrap();
    let zero = "'\\x0000000000000000000000000000000000000000000000000000000000000000'::bytea";
    for statement in [
        format!("INSERT INTO audit_entries VALUES (NULL, 2, 0, 'a', 'b', '', '{{}}', {zero}, {zero})"),
        format!("INSERT INTO audit_entries VALUES ('acme', NULL, 0, 'a', 'b', '', '{{}}', {zero}, {zero})"),
        format!("INSERT INTO audit_entries VALUES ('acme', 2, NULL, 'a', 'b', '', '{{}}', {zero}, {zero})"),
        format!("INSERT INTO audit_entries VALUES ('acme', 2, 0, 'a', 'b', '', '{{}}', NULL, {zero})"),
        format!("INSERT INTO audit_entries VALUES ('acme', 2, 0, 'a', 'b', '', '{{}}', {zero}, NULL)"),
        format!("INSERT INTO audit_entries VALUES ('acme', 0, 0, 'a', 'b', '', '{{}}', {zero}, {zero})"),
        format!("INSERT INTO audit_entries VALUES ('acme', 1, 0, 'a', 'b', '', '{{}}', {zero}, {zero})"),
        format!("INSERT INTO audit_heads VALUES (NULL, 1, {zero})"),
        format!("INSERT INTO audit_heads VALUES ('globex', NULL, {zero})"),
        "INSERT INTO audit_heads VALUES ('globex', 1, NULL)".to_owned(),
        format!("INSERT INTO audit_heads VALUES ('acme', 5, {zero})"),
        format!("INSERT INTO audit_heads VALUES ('globex', -1, {zero})"),
    ] {
        let result = sqlx::query(&statement).execute(database.pool()).await;
        assert!(result.is_err(), "{statement} was accepted");
    }
}

#[tokio::test]
async fn unique_null_raw_null_keys_refused_sqlite() {
    let (database, chain) = sqlite_setup().await;
    chain.append(entry("acme", 0)).await.unwrap();
    for statement in [
        "INSERT INTO audit_entries VALUES (NULL, 2, 0, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', NULL, 0, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', 2, NULL, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', 2, 0, 'a', 'b', '', '{}', NULL, zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', 2, 0, 'a', 'b', '', '{}', zeroblob(32), NULL)",
        "INSERT INTO audit_entries VALUES ('acme', 0, 0, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', 1, 0, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_entries VALUES ('acme', '1', 0, 'a', 'b', '', '{}', zeroblob(32), zeroblob(32))",
        "INSERT INTO audit_heads VALUES (NULL, 1, zeroblob(32))",
        "INSERT INTO audit_heads VALUES ('globex', NULL, zeroblob(32))",
        "INSERT INTO audit_heads VALUES ('globex', 1, NULL)",
        "INSERT INTO audit_heads VALUES ('acme', 5, zeroblob(32))",
        "INSERT INTO audit_heads VALUES ('globex', -1, zeroblob(32))",
    ] {
        let result = sqlx::query(statement).execute(database.pool()).await;
        assert!(result.is_err(), "{statement} was accepted");
    }
}

// ---------------------------------------------------------------------------------------------
// Tenant boundaries
// ---------------------------------------------------------------------------------------------

/// A store that records which tenants were read and checks every row it hands out.
struct Spy<S> {
    inner: S,
    asked: Mutex<Vec<String>>,
}

impl<S: AuditStore> AuditStore for Spy<S> {
    async fn append(&self, entry: NewEntry) -> sos_audit::Result<AuditEntry> {
        self.inner.append(entry).await
    }

    async fn head(&self, tenant: &TenantId) -> sos_audit::Result<Option<ChainHead>> {
        self.asked.lock().unwrap().push(tenant.to_string());
        self.inner.head(tenant).await
    }

    async fn read_page(
        &self,
        tenant: &TenantId,
        after_seq: u64,
        limit: u32,
    ) -> sos_audit::Result<Vec<AuditEntry>> {
        self.asked.lock().unwrap().push(tenant.to_string());
        let page = self.inner.read_page(tenant, after_seq, limit).await?;
        assert!(page.iter().all(|entry| entry.tenant == *tenant), "rows of another tenant were read");
        Ok(page)
    }

    async fn tenants(&self) -> sos_audit::Result<Vec<TenantId>> {
        self.inner.tenants().await
    }
}

/// Two tenants with the same seqs, and prefix-sharing names; the other tenant's chain is
/// tampered with. Verifying one tenant reads only its rows and is not affected.
#[tokio::test]
async fn tenant_boundary_verification_reads_one_tenant_pg() {
    let (database, chain) = pg_setup().await;
    for name in ["acme", "acme-corp", "acm"] {
        for index in 0..1005 {
            if index < 3 || name == "acme" {
                chain.append(entry(name, index)).await.unwrap();
            }
        }
    }
    pg_disable_triggers(&database).await;
    sqlx::query("UPDATE audit_entries SET actor = 'mallory' WHERE tenant <> 'acme' AND seq = 2")
        .execute(database.pool())
        .await
        .unwrap();
    let spy = Spy { inner: chain.clone(), asked: Mutex::new(Vec::new()) };
    let verdict = verify_store(&spy, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(matches!(verdict, Verdict::Intact(ref v) if v.entries == 1005), "{verdict:?}");
    assert!(spy.asked.lock().unwrap().iter().all(|asked| asked == "acme"));
    for other in ["acme-corp", "acm"] {
        let verdict = verify_store(&chain, &tenant(other), None, |_| {}).await.unwrap();
        assert_eq!(verdict.finding().map(Finding::position), Some(2), "{other}");
    }
    // The same for SQLite and memory stores.
    let (sqlite, sqlite_chain) = sqlite_setup().await;
    for name in ["acme", "acme-corp"] {
        for index in 0..3 {
            sqlite_chain.append(entry(name, index)).await.unwrap();
        }
    }
    let spy = Spy { inner: sqlite_chain.clone(), asked: Mutex::new(Vec::new()) };
    assert!(verify_store(&spy, &tenant("acme"), None, |_| {}).await.unwrap().is_intact());
    drop(sqlite);
}

/// `sos-audit verify --file` of another tenant's export must not pass as the chain the user
/// meant: the summary names the tenant whose chain was verified.
#[test]
fn tenant_boundary_file_verify_names_the_tenant() {
    let globex = memory_chain("globex", 3);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("acme.jsonl");
    std::fs::write(&file, to_jsonl(&globex)).unwrap();
    let output = sos_audit(&["verify", "--file", file.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(0));
    assert!(
        text(&output.stdout).contains("globex"),
        "the summary hides the tenant: {}",
        text(&output.stdout)
    );
}

// ---------------------------------------------------------------------------------------------
// Time edge cases
// ---------------------------------------------------------------------------------------------

fn edge_instants() -> Vec<DateTime<Utc>> {
    vec![
        DateTime::<Utc>::MIN_UTC,
        Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap(),
        Utc.with_ymd_and_hms(1900, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::nanoseconds(123),
        Utc.timestamp_opt(-1, 999_999_999).unwrap(),
        Utc.timestamp_opt(-1, 1).unwrap(),
        Utc.timestamp_opt(0, 0).unwrap(),
        Utc.timestamp_opt(0, 999).unwrap(),
        Utc.timestamp_opt(1_767_258_000, 123_456_789).unwrap(),
        Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap() + chrono::Duration::nanoseconds(999_999_999),
        DateTime::<Utc>::MAX_UTC,
    ]
}

async fn check_time_edges<S: AuditStore>(store: &S, clock: &ManualClock, name: &str) {
    let mut appended = Vec::new();
    for instant in edge_instants() {
        clock.set(instant);
        let stored = store.append(entry(name, appended.len() as u64)).await.expect("append at a time edge");
        // What was hashed is exactly what is stored, and it is the instant at microsecond precision.
        let time = stored.time().expect("representable");
        assert!(time <= instant && instant - time < chrono::Duration::microseconds(1), "{instant} -> {time}");
        appended.push(stored);
    }
    let read = store.read_page(&tenant(name), 0, 100).await.unwrap();
    assert_eq!(read, appended, "what was read back differs from what was hashed");
    let verdict = verify_store(store, &tenant(name), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
    let verdict =
        verify_jsonl(&to_jsonl(&read)[..], appended.last().map(AuditEntry::as_head), |_| {}).unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
    for (index, line) in text(&to_jsonl(&read)).lines().enumerate() {
        assert_eq!(parse_jsonl_line(line.as_bytes(), index as u64 + 1).unwrap(), read[index]);
    }
}

#[tokio::test]
async fn time_edges_before_1970_far_future_and_sub_microsecond() {
    let clock = Arc::new(ManualClock::new(start()));
    let memory = MemoryAuditStore::new().with_clock(clock.clone());
    check_time_edges(&memory, &clock, "acme").await;

    let (database, chain) = pg_setup().await;
    let chain = chain.with_clock(clock.clone());
    check_time_edges(&chain, &clock, "acme").await;
    drop(database);

    let (database, chain) = sqlite_setup().await;
    let chain = chain.with_clock(clock.clone());
    check_time_edges(&chain, &clock, "acme").await;
    drop(database);
}

// ---------------------------------------------------------------------------------------------
// SQLite one-statement appends: `append` on a remembered head is one autocommit INSERT into the
// view `audit_appends`, and `audited` on a connection outside a transaction opens a deferred
// BEGIN (migrations 0100000011 and 0100000012).
// ---------------------------------------------------------------------------------------------

/// One child's tasks on one SQLite file: even rounds `append` (one autocommit statement on the
/// remembered head, or a deferred transaction that reads the head), odd rounds an audited write
/// on a pooled connection outside any transaction (deferred BEGIN), every third of which fails
/// its row check. Returns (entries committed, host writes committed).
async fn sqlite_autocommit_appenders(path: &str, count: u64) -> (u64, u64) {
    let pool = sos_testkit::sqlite_pool(std::path::Path::new(path), TASKS as u32).await;
    let chain = SqliteAuditChain::new(pool.clone());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let chain = chain.clone();
            let pool = pool.clone();
            tokio::spawn(async move {
                let (mut entries, mut writes) = (0, 0);
                for index in 0..count {
                    let entry = entry("acme", task * 1_000_000 + index);
                    if index % 2 == 0 {
                        // A busy timeout is an honest failure; the parent's invariants check
                        // that it left nothing behind.
                        if chain.append(entry).await.is_ok() {
                            entries += 1;
                        }
                        continue;
                    }
                    let fail = index % 3 == 2;
                    let Ok(mut conn) = pool.acquire().await else { continue };
                    let result = chain
                        .audited(&mut conn, entry, ExpectRows::Exactly(if fail { 2 } else { 1 }), |conn| {
                            Box::pin(async move {
                                let done = sqlx::query(
                                    "UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1",
                                )
                                .execute(conn)
                                .await?;
                                Ok::<_, sqlx::Error>(done.rows_affected())
                            })
                        })
                        .await;
                    match result {
                        Ok(_) => {
                            entries += 1;
                            writes += 1;
                        }
                        Err(Error::UnexpectedRows { .. }) => assert!(fail, "only the rigged writes fail"),
                        Err(_) => {}
                    }
                }
                (entries, writes)
            })
        })
        .collect();
    let (mut entries, mut writes) = (0, 0);
    for task in tasks {
        let (task_entries, task_writes) = task.await.expect("task");
        entries += task_entries;
        writes += task_writes;
    }
    (entries, writes)
}

/// Named shape `chain-seq-stale-read` on the one-statement append path: three OS processes × four
/// tasks on one SQLite file, mixing autocommit appends through the view `audit_appends` (each
/// process's remembered head goes stale whenever another process appends) with audited writes
/// that open a deferred transaction on a connection outside one, a third of them rolling back.
/// One gap-free chain, one entry per committed append or write, no seq reused, the head row on
/// the last entry, and exactly the committed host writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_seq_stale_read_processes_autocommit_and_deferred_appends_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let path = database.path().to_str().unwrap().to_owned();
    let children = spawn_children("adv-audit-sqlite-autocommit", &path, 40, 3);
    let (mut entries, mut writes) = (0u64, 0u64);
    for child in children {
        let output = tokio::task::spawn_blocking(move || child.wait_with_output()).await.unwrap().unwrap();
        let stdout = text(&output.stdout);
        assert!(output.status.success(), "a child failed: {stdout}");
        let count = |prefix: &str| -> u64 {
            let line = stdout.lines().find_map(|line| line.strip_prefix(prefix)).expect("the child's count");
            line.trim().parse().unwrap()
        };
        entries += count("APPENDED ");
        writes += count("AUDITED ");
    }
    assert!(writes > 0 && entries > writes, "both paths committed: {entries} entries, {writes} writes");
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    match verdict {
        Verdict::Intact(verified) => assert_eq!(verified.entries, entries),
        other => panic!("forked, gapped or reused: {other:?}"),
    }
    let (stored, _, counter, _) = sqlite_state(&database).await;
    assert_eq!((stored, counter), (entries as i64, writes as i64));
    let head: i64 = sqlx::query_scalar("SELECT seq FROM audit_heads WHERE tenant = 'acme'")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(head, entries as i64, "the head row is on the last entry");
}

/// Named shape `audit-before-write` on a connection outside any transaction (the store opens a
/// deferred BEGIN itself, on SQLite): 0 rows where 1 was expected, a host error after a real
/// change, and a dropped future after every await point leave neither an entry nor a write, read
/// back from the tables; a good write commits both. The same test on PostgreSQL.
#[tokio::test]
async fn audit_before_write_outside_a_transaction_sqlite() {
    let (database, chain) = sqlite_setup().await;
    let mut conn = database.pool().acquire().await.unwrap();
    let error = chain
        .audited(&mut conn, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999")
                    .execute(conn)
                    .await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await
        .expect_err("0 rows");
    assert!(matches!(error, Error::UnexpectedRows { .. }), "{error:?}");
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0));
    let error = chain
        .audited(&mut conn, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                Err::<u64, _>(Injected)
            })
        })
        .await
        .expect_err("host error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    assert_eq!(sqlite_state(&database).await, (0, 0, 0, 0));
    let mut completed = 0i64;
    for polls in 1..=16u32 {
        let outcome = PollLimit {
            inner: Some(Box::pin(chain.audited(
                &mut conn,
                entry("acme", 10 + u64::from(polls)),
                ExpectRows::Exactly(1),
                |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(&mut *conn)
                            .await?;
                        tokio::task::yield_now().await;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                },
            ))),
            polls,
        }
        .await;
        if let Some(result) = outcome {
            result.expect("an audited write that ran to completion succeeds");
            completed += 1;
        }
        // A COMMIT, or the ROLLBACK of the dropped transaction, may still be in flight on this
        // connection when the future is dropped (sent, not yet answered); one round trip on it
        // settles that before the tables are read.
        sqlx::query("SELECT 1").execute(&mut *conn).await.expect("the connection still works");
        let (entries, _, counter, _) = sqlite_state(&database).await;
        assert_eq!(entries, counter, "after cancelling at poll {polls}: entries and writes disagree");
    }
    assert!(completed > 0, "some rounds ran to completion");
    drop(conn);
    let (entries, _, _, _) = sqlite_state(&database).await;
    let next = tokio::time::timeout(Duration::from_secs(10), chain.append(entry("acme", 99)))
        .await
        .expect("no write lock left behind")
        .unwrap();
    assert_eq!(next.seq as i64, entries + 1);
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
}

#[tokio::test]
async fn audit_before_write_outside_a_transaction_pg() {
    let (database, chain) = pg_setup().await;
    let mut conn = database.pool().acquire().await.unwrap();
    let error = chain
        .audited(&mut conn, entry("acme", 1), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 999")
                    .execute(conn)
                    .await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await
        .expect_err("0 rows");
    assert!(matches!(error, Error::UnexpectedRows { .. }), "{error:?}");
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0));
    let error = chain
        .audited(&mut conn, entry("acme", 2), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                sqlx::query("UPDATE deals SET stage = 'won' WHERE tenant = 'acme' AND id = 1")
                    .execute(&mut *conn)
                    .await?;
                Err::<u64, _>(Injected)
            })
        })
        .await
        .expect_err("host error");
    assert!(matches!(error, Error::HostWrite(_)), "{error:?}");
    assert_eq!(pg_state(&database).await, (0, 0, 0, 0));
    let mut completed = 0i64;
    for polls in 1..=16u32 {
        let outcome = PollLimit {
            inner: Some(Box::pin(chain.audited(
                &mut conn,
                entry("acme", 10 + u64::from(polls)),
                ExpectRows::Exactly(1),
                |conn| {
                    Box::pin(async move {
                        let done = sqlx::query("UPDATE deals SET n = n + 1 WHERE tenant = 'acme' AND id = 1")
                            .execute(&mut *conn)
                            .await?;
                        tokio::task::yield_now().await;
                        Ok::<_, sqlx::Error>(done.rows_affected())
                    })
                },
            ))),
            polls,
        }
        .await;
        if let Some(result) = outcome {
            result.expect("an audited write that ran to completion succeeds");
            completed += 1;
        }
        // A COMMIT, or the ROLLBACK of the dropped transaction, may still be in flight on this
        // connection when the future is dropped (sent, not yet answered); one round trip on it
        // settles that before the tables are read.
        sqlx::query("SELECT 1").execute(&mut *conn).await.expect("the connection still works");
        let (entries, _, counter, _) = pg_state(&database).await;
        assert_eq!(entries, counter, "after cancelling at poll {polls}: entries and writes disagree");
    }
    assert!(completed > 0, "some rounds ran to completion");
    drop(conn);
    let (entries, _, _, _) = pg_state(&database).await;
    let next = tokio::time::timeout(Duration::from_secs(10), chain.append(entry("acme", 99)))
        .await
        .expect("no head lock left behind")
        .unwrap();
    assert_eq!(next.seq as i64, entries + 1);
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(verdict.is_intact(), "{verdict:?}");
}

/// (entries, head seq, head hash) of `tenant_name` on SQLite.
async fn sqlite_chain_state(database: &SqliteTestDatabase, tenant_name: &str) -> (i64, i64, Vec<u8>) {
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_entries WHERE tenant = ?1")
        .bind(tenant_name)
        .fetch_one(database.pool())
        .await
        .unwrap();
    let (seq, hash): (i64, Vec<u8>) = sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE tenant = ?1")
        .bind(tenant_name)
        .fetch_one(database.pool())
        .await
        .unwrap();
    (entries, seq, hash)
}

/// Named shape `injection` through the view `audit_appends`: a caller who may insert into it
/// picks every column, including `hash` (SQL cannot recompute SHA-256, so the database takes a
/// self-declared hash that links, exactly as a direct INSERT with a moved head row did before
/// the view). The verifier names that entry as modified, also after the store's next append
/// (whose remembered head went stale) chained a genuine entry onto it.
#[tokio::test]
async fn injection_sqlite_append_view_forged_hash_is_found_by_the_verifier() {
    let (database, chain) = sqlite_setup().await;
    let mut last = None;
    for index in 0..3 {
        last = Some(chain.append(entry("acme", index)).await.unwrap());
    }
    let head = last.expect("three entries");
    let forged = Sha256Digest::of(b"a hash the caller chose");
    sqlx::query(
        "INSERT INTO audit_appends VALUES ('acme', 4, ?1, 'mallory', 'grant', 'admin', '{}', ?2, ?3)",
    )
    .bind(head.time_us)
    .bind(head.hash.as_bytes().as_slice())
    .bind(forged.as_bytes().as_slice())
    .execute(database.pool())
    .await
    .expect("the view links the entry; it cannot check its hash");
    let fifth = chain.append(entry("acme", 4)).await.expect("append on the moved head");
    assert_eq!((fifth.seq, fifth.prev_hash), (5, forged), "the store read the moved head");
    let verdict = verify_store(&chain, &tenant("acme"), None, |_| {}).await.unwrap();
    assert!(matches!(verdict.finding(), Some(Finding::Modified { seq: 4, .. })), "{verdict:?}");
}

/// Tenant isolation through the view `audit_appends`: an entry of tenant B built on
/// tenant A's head (A's next seq and A's head hash as its link), or on A's head hash at B's next
/// seq, is refused under every conflict clause, also as the second row of a two-row insert whose
/// first row is good (the statement is undone whole); neither chain nor head row moves, and both
/// chains continue and verify.
#[tokio::test]
async fn tenant_boundary_sqlite_append_view_refuses_another_tenants_head() {
    let (database, chain) = sqlite_setup().await;
    let mut acme_head = None;
    for index in 0..3 {
        acme_head = Some(chain.append(entry("acme", index)).await.unwrap());
    }
    let globex_head = chain.append(entry("globex", 0)).await.unwrap();
    let acme_head = acme_head.expect("three entries");
    let before = (sqlite_chain_state(&database, "acme").await, sqlite_chain_state(&database, "globex").await);
    for verb in ["INSERT", "INSERT OR REPLACE", "INSERT OR IGNORE", "REPLACE"] {
        for (label, seq) in [("acme's next seq", 4i64), ("globex's next seq", 2)] {
            let result = sqlx::query(&format!(
                "{verb} INTO audit_appends VALUES ('globex', ?1, 0, 'mallory', 'grant', 'admin', '{{}}', ?2, ?3)"
            ))
            .bind(seq)
            .bind(acme_head.hash.as_bytes().as_slice())
            .bind(Sha256Digest::of(label.as_bytes()).as_bytes().as_slice())
            .execute(database.pool())
            .await;
            let error = result.expect_err("another tenant's head");
            assert!(error.to_string().contains("audit head moved"), "{verb}, {label}: {error}");
            let after =
                (sqlite_chain_state(&database, "acme").await, sqlite_chain_state(&database, "globex").await);
            assert_eq!(after, before, "{verb}, {label}: nothing written, no head moved");
        }
    }
    // One statement is atomic: a two-row insert whose first row extends acme's head and whose
    // second builds globex on acme's head writes neither.
    let error = sqlx::query(
        "INSERT INTO audit_appends VALUES ('acme', 4, 0, 'mallory', 'grant', 'admin', '{}', ?1, ?2), \
         ('globex', 2, 0, 'mallory', 'grant', 'admin', '{}', ?1, ?3)",
    )
    .bind(acme_head.hash.as_bytes().as_slice())
    .bind(Sha256Digest::of(b"acme 4").as_bytes().as_slice())
    .bind(Sha256Digest::of(b"globex 2").as_bytes().as_slice())
    .execute(database.pool())
    .await
    .expect_err("the second row builds on another tenant's head");
    assert!(error.to_string().contains("audit head moved"), "{error}");
    let after = (sqlite_chain_state(&database, "acme").await, sqlite_chain_state(&database, "globex").await);
    assert_eq!(after, before, "the first row was undone with the second");
    assert_eq!(chain.append(entry("globex", 1)).await.unwrap().prev_hash, globex_head.hash);
    assert_eq!(chain.append(entry("acme", 3)).await.unwrap().prev_hash, acme_head.hash);
    for name in ["acme", "globex"] {
        let verdict = verify_store(&chain, &tenant(name), None, |_| {}).await.unwrap();
        assert!(verdict.is_intact(), "{name}: {verdict:?}");
    }
}
