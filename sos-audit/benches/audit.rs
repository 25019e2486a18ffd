//! Benchmarks of `sos-audit`, each figure printed beside the limit it is compared against,
//! measured in the same run:
//!
//! - verify throughput vs raw SHA-256 over the same bytes (goal ≥ 0.7 of raw);
//! - in-memory append (goal ≥ 1,000,000 entries/s on one core);
//! - SQLite (WAL) audited append (goal ≥ 5,000 transactions/s), each figure beside a plain INSERT
//!   of a row of the same size (and the host's UPDATE) in transactions of the same shape;
//! - PostgreSQL audited append vs a plain INSERT of a row of the same size, one connection and
//!   eight (goal ≥ 0.5 of the plain rate), and one chain vs 64 tenants' chains.
//!
//! Run: `cargo bench -p sos-audit --all-features --bench audit -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use criterion::{Criterion, Throughput};
use sha2::{Digest as _, Sha256};
use sos_audit::{
    AuditEntry, AuditStore, ChainVerifier, ExpectRows, MemoryAuditStore, NewEntry, PgAuditChain,
    SqliteAuditChain,
};
use sos_core::{Sha256Digest, TenantId};

const CHAIN_LENGTH: usize = 10_000;
/// Unique keys of the plain-INSERT rows across all runs in this process.
static PLAIN_KEY: AtomicI64 = AtomicI64::new(1);
const DB_WINDOW: Duration = Duration::from_secs(3);
/// The PostgreSQL ratio windows are split into this many alternating rounds.
const PG_ROUNDS: u32 = 3;
/// The SQLite windows are split into this many alternating rounds.
const SQLITE_ROUNDS: u32 = 3;

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant")
}

fn new_entry(tenant_name: &str, index: u64) -> NewEntry {
    NewEntry::new(
        tenant(tenant_name),
        "agent:closer",
        "deal.stage",
        format!("deal/{index}"),
        &serde_json::json!({"stage": "qualified", "amount_cents": 125_000, "index": index}),
    )
    .expect("valid entry")
}

fn chain() -> Vec<AuditEntry> {
    let time = Utc.with_ymd_and_hms(2026, 1, 1, 9, 0, 0).single().expect("time");
    let mut prev = Sha256Digest::ZERO;
    (0..CHAIN_LENGTH as u64)
        .map(|index| {
            let entry = new_entry("acme", index).into_entry(index + 1, time, prev).expect("hash");
            prev = entry.hash;
            entry
        })
        .collect()
}

/// The exact bytes the entry hash covers (see docs/audit-format.md): the preimage the entry's
/// own hashing leaves in its scratch buffer.
fn preimage(entry: &AuditEntry) -> Vec<u8> {
    let mut out = Vec::new();
    entry.compute_hash_with(&mut out).expect("hash");
    out
}

fn verify_all(entries: &[AuditEntry]) -> bool {
    let mut verifier = ChainVerifier::new(None);
    for entry in entries {
        verifier.push(entry);
    }
    verifier.finish().is_intact()
}

fn raw_all(preimages: &[Vec<u8>]) -> u8 {
    let mut acc = 0u8;
    for bytes in preimages {
        acc ^= Sha256::digest(bytes)[0];
    }
    acc
}

/// Runs `f` repeatedly for about `window` and returns items per second.
fn rate(window: Duration, items_per_call: u64, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut items = 0u64;
    while start.elapsed() < window {
        f();
        items += items_per_call;
    }
    items as f64 / start.elapsed().as_secs_f64()
}

fn verdict(ratio_or_value: f64, goal: f64) -> &'static str {
    if ratio_or_value >= goal { "meets goal" } else { "BELOW goal" }
}

fn cpu_benches(criterion: &mut Criterion, summary: &mut Vec<String>) {
    let entries = chain();
    let preimages: Vec<Vec<u8>> = entries.iter().map(preimage).collect();
    let bytes: usize = preimages.iter().map(Vec::len).sum();
    assert!(verify_all(&entries));

    let mut group = criterion.benchmark_group("verify");
    group.sample_size(10);
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("chain_verifier", |bench| bench.iter(|| black_box(verify_all(black_box(&entries)))));
    group.bench_function("raw_sha256_same_bytes", |bench| {
        bench.iter(|| black_box(raw_all(black_box(&preimages))))
    });
    group.finish();

    let window = Duration::from_secs(2);
    // Alternating short windows, so that a change in the machine's load hits both sides alike.
    let rounds = 8u32;
    let (mut verify_rate, mut raw_rate) = (0.0, 0.0);
    for _ in 0..rounds {
        verify_rate +=
            rate(window / rounds, CHAIN_LENGTH as u64, || assert!(verify_all(black_box(&entries))))
                / f64::from(rounds);
        raw_rate += rate(window / rounds, CHAIN_LENGTH as u64, || {
            black_box(raw_all(black_box(&preimages)));
        }) / f64::from(rounds);
    }
    let ratio = verify_rate / raw_rate;
    let mean = bytes as f64 / CHAIN_LENGTH as f64;
    summary.push(format!(
        "verify: {:.0} entries/s ({:.0} MB/s) vs raw SHA-256 over the same {:.0}-byte preimages: {:.0} entries/s ({:.0} MB/s) -> ratio {ratio:.2} (goal >= 0.70: {})",
        verify_rate,
        verify_rate * mean / 1e6,
        mean,
        raw_rate,
        raw_rate * mean / 1e6,
        verdict(ratio, 0.7)
    ));

    let mut group = criterion.benchmark_group("memory");
    group.sample_size(10);
    group.throughput(Throughput::Elements(1));
    let store = MemoryAuditStore::new();
    let mut index = 0u64;
    let prepared = new_entry("acme", 0);
    group.bench_function("append", |bench| {
        bench.iter(|| {
            index += 1;
            black_box(store.append_now(prepared.clone()).expect("append"));
        })
    });
    group.finish();
    // The caller's entries are built before the clock starts: this measures the append itself
    // (sequence, link, hash, store), on one thread.
    let store = MemoryAuditStore::new();
    let batch: Vec<NewEntry> = (0..10_000).map(|_| prepared.clone()).collect();
    let mut appended = 0u64;
    let mut busy = Duration::ZERO;
    while busy < window {
        let entries = batch.clone();
        let start = Instant::now();
        for entry in entries {
            black_box(store.append_now(entry).expect("append"));
        }
        busy += start.elapsed();
        appended += batch.len() as u64;
    }
    let memory_rate = appended as f64 / busy.as_secs_f64();
    summary.push(format!(
        "memory append (one thread, entries built before timing): {memory_rate:.0} entries/s (goal >= 1,000,000: {})",
        verdict(memory_rate, 1_000_000.0)
    ));
}

/// One audited write of the benchmark's host: the audit entry plus an UPDATE of the host's row.
async fn sqlite_audited(chain: &SqliteAuditChain, conn: &mut sqlx::SqliteConnection, index: u64) {
    chain
        .audited(conn, new_entry("acme", index), ExpectRows::Exactly(1), |conn| {
            Box::pin(async move {
                let done = sqlx::query(HOST_UPDATE).execute(conn).await?;
                Ok::<_, sqlx::Error>(done.rows_affected())
            })
        })
        .await
        .expect("audited");
}

/// The SQLite figures, measured side by side in alternating windows so that a change in the
/// machine's load hits every figure alike.
#[derive(Clone, Copy)]
enum SqliteWork {
    /// `append` alone (its own transaction).
    Append,
    /// `audited` as the host's whole transaction (audited append + host UPDATE).
    AuditedOwn,
    /// `audited` inside a transaction the host opened (a savepoint of it).
    AuditedNested,
    /// Floor of `Append`: an INSERT of a row of the same size into a plain table, as one
    /// autocommit statement (its own transaction), the cheapest way to write one row.
    PlainInsert,
    /// Floor of the audited writes: the same INSERT and the host's UPDATE in one transaction
    /// each, with no chain (`pool.begin()`: its first statement writes, so it takes the write
    /// lock at once, as `BEGIN IMMEDIATE` would, without sqlx's extra check of a custom BEGIN).
    PlainInsertUpdate,
}

/// The host's UPDATE of the audited benchmark writes.
const HOST_UPDATE: &str = "UPDATE deals SET stage = stage + 1 WHERE tenant = 'acme' AND id = 1";

/// A plain INSERT of a row of the same size as the audit entry `index` would be.
async fn sqlite_plain_insert(conn: &mut sqlx::SqliteConnection, index: u64) {
    let entry = new_entry("acme", index).into_entry(index + 1, Utc::now(), Sha256Digest::ZERO).expect("hash");
    sqlx::query(
        "INSERT INTO plain_rows (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )
    .bind(entry.tenant.as_str())
    .bind(PLAIN_KEY.fetch_add(1, Ordering::Relaxed))
    .bind(entry.time_us)
    .bind(&entry.actor)
    .bind(&entry.action)
    .bind(&entry.subject)
    .bind(&entry.payload)
    .bind(entry.prev_hash.as_bytes().as_slice())
    .bind(entry.hash.as_bytes().as_slice())
    .execute(conn)
    .await
    .expect("plain insert");
}

/// Transactions per second of `work` over `window`; `done` counts the calls across windows.
async fn sqlite_rate(
    work: SqliteWork,
    window: Duration,
    chain: &SqliteAuditChain,
    pool: &sqlx::SqlitePool,
    done: &mut u64,
) -> f64 {
    let start = Instant::now();
    let mut transactions = 0u64;
    while start.elapsed() < window {
        let index = *done;
        match work {
            SqliteWork::Append => {
                chain.append(new_entry("globex", index)).await.expect("append");
            }
            SqliteWork::AuditedOwn => {
                // `audited` on a pooled connection opens and commits the transaction itself.
                let mut conn = pool.acquire().await.expect("acquire");
                sqlite_audited(chain, &mut conn, index).await;
            }
            SqliteWork::AuditedNested => {
                let mut tx = chain.begin().await.expect("begin");
                sqlite_audited(chain, &mut tx, index).await;
                tx.commit().await.expect("commit");
            }
            SqliteWork::PlainInsert => {
                let mut conn = pool.acquire().await.expect("acquire");
                sqlite_plain_insert(&mut conn, index).await;
            }
            SqliteWork::PlainInsertUpdate => {
                let mut tx = pool.begin().await.expect("begin");
                sqlite_plain_insert(&mut tx, index).await;
                let done = sqlx::query(HOST_UPDATE).execute(&mut *tx).await.expect("host update");
                assert_eq!(done.rows_affected(), 1);
                tx.commit().await.expect("commit");
            }
        }
        transactions += 1;
        *done += 1;
    }
    transactions as f64 / start.elapsed().as_secs_f64()
}

async fn sqlite_bench(summary: &mut Vec<String>) {
    let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
    let pool = database.pool();
    sqlx::query("CREATE TABLE deals (tenant TEXT NOT NULL, id INTEGER NOT NULL, stage INTEGER NOT NULL, PRIMARY KEY (tenant, id))")
        .execute(pool)
        .await
        .expect("host table");
    sqlx::query("INSERT INTO deals VALUES ('acme', 1, 0)").execute(pool).await.expect("seed");
    // The floors' table: the audit entry's columns in an ordinary table with the same key.
    sqlx::query(
        "CREATE TABLE plain_rows (tenant TEXT NOT NULL, seq INTEGER NOT NULL, time_us INTEGER NOT NULL, actor TEXT NOT NULL,
         action TEXT NOT NULL, subject TEXT NOT NULL, payload TEXT NOT NULL, prev_hash BLOB NOT NULL, hash BLOB NOT NULL,
         PRIMARY KEY (tenant, seq))",
    )
    .execute(pool)
    .await
    .expect("plain table");
    let chain = SqliteAuditChain::new(pool.clone());
    let works = [
        SqliteWork::Append,
        SqliteWork::PlainInsert,
        SqliteWork::AuditedOwn,
        SqliteWork::AuditedNested,
        SqliteWork::PlainInsertUpdate,
    ];
    let mut rates = [0.0f64; 5];
    let mut done = [0u64; 5];
    for _ in 0..SQLITE_ROUNDS {
        for (slot, work) in works.iter().enumerate() {
            rates[slot] += sqlite_rate(*work, DB_WINDOW / SQLITE_ROUNDS, &chain, pool, &mut done[slot]).await
                / f64::from(SQLITE_ROUNDS);
        }
    }
    let [append, plain_insert, audited_own, audited_nested, plain_insert_update] = rates;
    let settings = "sqlite (WAL, synchronous=NORMAL)";
    summary.push(format!(
        "{settings} append alone, one transaction each: {append:.0} tx/s (goal >= 5,000: {}); plain INSERT of a same-size row, one autocommit statement each: {plain_insert:.0} tx/s -> ratio {:.2}",
        verdict(append, 5_000.0),
        append / plain_insert
    ));
    summary.push(format!(
        "{settings} audited append + host UPDATE as its own transaction: {audited_own:.0} tx/s (goal >= 5,000: {}); plain INSERT + host UPDATE, one transaction each: {plain_insert_update:.0} tx/s -> ratio {:.2}",
        verdict(audited_own, 5_000.0),
        audited_own / plain_insert_update
    ));
    summary.push(format!(
        "{settings} audited append + host UPDATE in a host transaction (savepoint): {audited_nested:.0} tx/s (goal >= 5,000: {}) -> ratio {:.2} of the plain INSERT + UPDATE",
        verdict(audited_nested, 5_000.0),
        audited_nested / plain_insert_update
    ));
}

/// Appends (or plain INSERTs) per second over `window`.
async fn pg_rate_for(
    window: Duration,
    connections: usize,
    tenants: usize,
    plain: bool,
    chain: &PgAuditChain,
) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for task in 0..connections {
        let chain = chain.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while start.elapsed() < window {
                let tenant_index = (task + done as usize * connections) % tenants;
                let name = format!("t{tenant_index}");
                if plain {
                    let entry = new_entry(&name, done).into_entry(done + 1, Utc::now(), Sha256Digest::ZERO).expect("hash");
                    sqlx::query(
                        "INSERT INTO plain_rows (tenant, seq, time_us, actor, action, subject, payload, prev_hash, hash)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                    )
                    .bind(entry.tenant.as_str())
                    .bind(PLAIN_KEY.fetch_add(1, Ordering::Relaxed))
                    .bind(entry.time_us)
                    .bind(&entry.actor)
                    .bind(&entry.action)
                    .bind(&entry.subject)
                    .bind(&entry.payload)
                    .bind(entry.prev_hash.as_bytes().as_slice())
                    .bind(entry.hash.as_bytes().as_slice())
                    .execute(chain.pool())
                    .await
                    .expect("plain insert");
                } else {
                    chain.append(new_entry(&name, done)).await.expect("append");
                }
                done += 1;
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("join");
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn pg_rate(connections: usize, tenants: usize, plain: bool, chain: &PgAuditChain) -> f64 {
    pg_rate_for(DB_WINDOW, connections, tenants, plain, chain).await
}

async fn postgres_bench(summary: &mut Vec<String>) {
    // A database of its own (not `sos_test_*`, which test runs of other crates may clean up).
    let server = sos_testkit::database_url();
    let name = format!("sos_audit_bench_{}", std::process::id());
    let admin = sqlx::PgPool::connect(&server).await.expect("PostgreSQL is reachable at DATABASE_URL");
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name}")).execute(&admin).await.expect("drop old");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create");
    let options: sqlx::postgres::PgConnectOptions = server.parse().expect("a PostgreSQL URL");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(8)
        .connect_with(options.database(&name))
        .await
        .expect("connect");
    sos_audit::postgres_migrator().run(&pool).await.expect("migrations");
    sqlx::query(
        "CREATE TABLE plain_rows (tenant TEXT NOT NULL, seq BIGINT NOT NULL, time_us BIGINT NOT NULL, actor TEXT NOT NULL,
         action TEXT NOT NULL, subject TEXT NOT NULL, payload TEXT NOT NULL, prev_hash BYTEA NOT NULL, hash BYTEA NOT NULL,
         PRIMARY KEY (tenant, seq))",
    )
    .execute(&pool)
    .await
    .expect("plain table");
    let chain = PgAuditChain::new(pool.clone());
    for connections in [1usize, 8] {
        // Alternating short windows, so that a change in the machine's load hits both sides alike.
        let (mut plain, mut audited) = (0.0, 0.0);
        for _ in 0..PG_ROUNDS {
            plain += pg_rate_for(DB_WINDOW / PG_ROUNDS, connections, 64, true, &chain).await
                / f64::from(PG_ROUNDS);
            audited += pg_rate_for(DB_WINDOW / PG_ROUNDS, connections, 64, false, &chain).await
                / f64::from(PG_ROUNDS);
        }
        let ratio = audited / plain;
        summary.push(format!(
            "postgres, {connections} connection(s), 64 tenants: audited append {audited:.0}/s vs plain INSERT of a same-size row {plain:.0}/s -> ratio {ratio:.2} (goal >= 0.50: {})",
            verdict(ratio, 0.5)
        ));
    }
    let one_chain = pg_rate(8, 1, false, &chain).await;
    let many_chains = pg_rate(8, 64, false, &chain).await;
    let one_connection_one_chain = pg_rate(1, 1, false, &chain).await;
    summary.push(format!(
        "postgres, 8 connections: one chain {one_chain:.0} appends/s (bounded by one commit at a time: {:.2} ms per append; 1 connection on one chain: {one_connection_one_chain:.0}/s) vs 64 tenants' chains {many_chains:.0} appends/s -> tenants scale x{:.1}",
        1000.0 / one_chain,
        many_chains / one_chain
    ));
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&admin).await.expect("drop");
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    let mut summary = Vec::new();
    cpu_benches(&mut criterion, &mut summary);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(sqlite_bench(&mut summary));
    runtime.block_on(postgres_bench(&mut summary));
    criterion.final_summary();
    println!("\nsos-audit figures (each beside its limit, same run):");
    for line in summary {
        println!("  {line}");
    }
}
