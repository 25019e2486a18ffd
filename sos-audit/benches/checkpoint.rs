//! Benchmarks of checkpointing, each figure printed beside the goal it is compared against,
//! measured in the same run:
//!
//! - checkpointing overhead on appends: appends with a checkpoint (tree extension from the
//!   chain, consistency check, Ed25519 signature, record) every 256 entries vs the same appends
//!   without, on SQLite (WAL) and PostgreSQL (goal < 5 %), measured two ways: the checkpoint
//!   run inline after each 256 appends (its whole cost, as if appends waited for it), and as
//!   deployed, `Checkpointer::run` polling (every 1 s, the default, and every 50 ms) in a task
//!   beside an appender, against the same appender alone (the appends lost to it, lock waits
//!   and CPU included);
//! - inclusion proof generation from the stored tiles of a 10,000,000-entry tenant in SQLite and
//!   PostgreSQL (goal < 1 ms median), and its verification (goal < 50 µs).
//!
//! Run: `cargo bench -p sos-audit --all-features --bench checkpoint -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::Criterion;
use sos_audit::merkle::{leaf_hash, verify_inclusion};
use sos_audit::note::NoteSigner;
use sos_audit::tlog::{self, CheckpointPolicy, Checkpointer, MerkleStore, TileBuilder};
use sos_audit::{NewEntry, PgAuditChain, SqliteAuditChain};
use sos_core::{Sha256Digest, TenantId};

const INTERVAL: u64 = 256;
const ROUNDS: usize = 15;
const BIG_TREE: u64 = 10_000_000;

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

/// The bench's one signing key: every checkpointer of a run signs with it, since a checkpointer
/// visits every tenant of its store and must verify the checkpoints an earlier one signed.
fn signer() -> NoteSigner {
    static KEY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let key = KEY.get_or_init(|| NoteSigner::generate("bench.example/log").expect("key").to_key_string());
    NoteSigner::from_key_string(key).expect("key")
}

fn median(mut samples: Vec<Duration>) -> Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Appends `INTERVAL` entries to `tenant_name` and returns the elapsed time.
async fn append_interval<S: MerkleStore>(store: &S, tenant_name: &str, first: u64) -> Duration {
    let started = Instant::now();
    for index in first..first + INTERVAL {
        store.append(new_entry(tenant_name, index)).await.expect("append");
    }
    started.elapsed()
}

/// Alternates intervals of 256 appends on two tenants of one database, checkpointing one of them
/// after each interval, so that machine load hits both alike. The overhead is the checkpoint's
/// time over the time of the 256 appends it covers (medians); the difference between the two
/// tenants' append times is printed too, as a check that checkpoints do not slow appends down.
async fn overhead<S: MerkleStore + Clone>(label: &str, store: S) {
    let checkpointer = Checkpointer::new(store.clone(), signer());
    let (mut plain, mut signed, mut checkpoints) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS as u64 {
        plain.push(append_interval(&store, "plain", round * INTERVAL).await);
        signed.push(append_interval(&store, "signed", round * INTERVAL).await);
        let started = Instant::now();
        checkpointer.checkpoint_now(&tenant("signed")).await.expect("checkpoint");
        checkpoints.push(started.elapsed());
    }
    let (plain, signed, checkpoint) = (median(plain), median(signed), median(checkpoints));
    println!(
        "{label}: {INTERVAL} appends {:.2} ms (tenant without checkpoints {:.2} ms); one checkpoint of them {:.3} ms: overhead {:.1} % (goal < 5 %)",
        signed.as_secs_f64() * 1e3,
        plain.as_secs_f64() * 1e3,
        checkpoint.as_secs_f64() * 1e3,
        checkpoint.as_secs_f64() / signed.as_secs_f64() * 100.0
    );
}

/// How long each window of the deployed-shape measurement appends.
const WINDOW: Duration = Duration::from_secs(2);
/// The poll intervals of the deployed-shape figure: the default (1 s: each checkpoint then
/// covers a second of appends) and 50 ms (at this machine's rate, a checkpoint about every 256
/// entries, the interval the goal names).
const DEPLOYED_POLLS: [Duration; 2] = [Duration::from_secs(1), Duration::from_millis(50)];
/// Windows with and without the background checkpointer, alternated.
const WINDOWS: usize = 4;

/// Appends to `tenant_name` for [`WINDOW`] from `first` on; returns the number appended.
async fn append_for<S: MerkleStore>(store: &S, tenant_name: &str, first: u64) -> u64 {
    let started = Instant::now();
    let mut index = first;
    while started.elapsed() < WINDOW {
        store.append(new_entry(tenant_name, index)).await.expect("append");
        index += 1;
    }
    index - first
}

/// The overhead as deployed: one task appends to a tenant of `store` while
/// [`Checkpointer::run`] polls every `poll` in another (as the reference server runs it),
/// against windows of the same appender on `unsigned`, a second database on the same server or
/// disk that no checkpointer reads (one checkpointer signs every tenant of its store, and a
/// tenant left unsigned during the other windows would be signed in one large catch-up here).
/// The windows alternate so that load hits both alike. The overhead is the share of appends
/// lost; the entries signed are counted so that a checkpointer that fell behind cannot pass for
/// a cheap one.
async fn overhead_deployed<S: MerkleStore + Clone + Send + Sync + 'static>(
    label: &str,
    store: S,
    unsigned: S,
    poll: Duration,
) {
    let checkpointer = std::sync::Arc::new(
        Checkpointer::new(store.clone(), signer())
            .with_policy(CheckpointPolicy::default().poll_interval(poll)),
    );
    // A tenant of its own per poll interval, so that each figure starts from an empty chain.
    let name = format!("deployed-{}", poll.as_millis());
    let (mut alone, mut beside, mut next, mut next_unsigned) = (0u64, 0u64, 0u64, 0u64);
    for _ in 0..WINDOWS {
        let appended = append_for(&unsigned, &name, next_unsigned).await;
        alone += appended;
        next_unsigned += appended;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runner = {
            let checkpointer = std::sync::Arc::clone(&checkpointer);
            tokio::spawn(async move {
                checkpointer
                    .run(
                        async {
                            let _ = stopped.await;
                        },
                        |_, outcome| {
                            outcome.as_ref().expect("checkpoint");
                        },
                    )
                    .await;
            })
        };
        let appended = append_for(&store, &name, next).await;
        beside += appended;
        next += appended;
        let _ = stop.send(());
        runner.await.expect("checkpointer task");
    }
    let signed = checkpointer.latest(&tenant(&name)).await.expect("latest").map_or(0, |c| c.size());
    println!(
        "{label}, as deployed (Checkpointer::run polling every {} ms beside one appender): {:.0} appends/s vs {:.0} appends/s without it: overhead {:.1} % (goal < 5 %); {} of {} entries signed",
        poll.as_millis(),
        beside as f64 / (WINDOW.as_secs_f64() * WINDOWS as f64),
        alone as f64 / (WINDOW.as_secs_f64() * WINDOWS as f64),
        (1.0 - beside as f64 / alone as f64) * 100.0,
        signed,
        next,
    );
}

/// Stores the tiles of a `BIG_TREE`-leaf tree for tenant `big` directly in both databases
/// (building them with the public `TileBuilder`; appending ten million real entries would take
/// the whole bench budget).
async fn store_big_tree(sqlite: &sqlx::SqlitePool, postgres: &sqlx::PgPool) {
    let mut builder = TileBuilder::new();
    let mut last = Sha256Digest::ZERO;
    let mut sqlite_tx = sqlite.begin().await.expect("begin");
    for leaf in 0..BIG_TREE {
        last = Sha256Digest::of(&leaf.to_be_bytes());
        builder.push_leaf_data(last.as_bytes());
        if (leaf + 1) % (1 << 17) == 0 || leaf + 1 == BIG_TREE {
            let changed = builder.take_changed();
            for (key, bytes) in &changed {
                sqlx::query(
                    "INSERT INTO audit_tree_tiles (tenant, level, idx, hashes) VALUES ('big', ?1, ?2, ?3)
                     ON CONFLICT (tenant, level, idx) DO UPDATE SET hashes = excluded.hashes",
                )
                .bind(i64::from(key.level))
                .bind(key.index as i64)
                .bind(bytes.as_slice())
                .execute(&mut *sqlite_tx)
                .await
                .expect("tile");
            }
            let levels: Vec<i16> = changed.iter().map(|(key, _)| i16::from(key.level)).collect();
            let indexes: Vec<i64> = changed.iter().map(|(key, _)| key.index as i64).collect();
            let hashes: Vec<Vec<u8>> = changed.into_iter().map(|(_, bytes)| bytes).collect();
            sqlx::query(
                "INSERT INTO audit_tree_tiles (tenant, level, idx, hashes)
                 SELECT 'big', * FROM UNNEST($1::smallint[], $2::bigint[], $3::bytea[])
                 ON CONFLICT (tenant, level, idx) DO UPDATE SET hashes = excluded.hashes",
            )
            .bind(levels)
            .bind(indexes)
            .bind(hashes)
            .execute(postgres)
            .await
            .expect("tiles");
        }
    }
    sqlx::query("INSERT INTO audit_tree_heads (tenant, size, last_entry_hash) VALUES ('big', ?1, ?2)")
        .bind(BIG_TREE as i64)
        .bind(last.as_bytes().as_slice())
        .execute(&mut *sqlite_tx)
        .await
        .expect("head");
    sqlite_tx.commit().await.expect("commit");
    sqlx::query("INSERT INTO audit_tree_heads (tenant, size, last_entry_hash) VALUES ('big', $1, $2)")
        .bind(BIG_TREE as i64)
        .bind(last.as_bytes().as_slice())
        .execute(postgres)
        .await
        .expect("head");
    sqlx::query("ANALYZE audit_tree_tiles").execute(postgres).await.expect("analyze");
}

/// Benchmarks proof generation from `store`'s tiles of tenant `big`.
fn bench_proofs<S: MerkleStore>(
    criterion: &mut Criterion,
    runtime: &tokio::runtime::Runtime,
    label: &str,
    store: &S,
) {
    let big = tenant("big");
    let mut group = criterion.benchmark_group("inclusion proof, 10M-entry tenant");
    let mut index = 0u64;
    group.bench_function(format!("generate from {label} tiles (goal < 1 ms median)"), |bench| {
        bench.iter(|| {
            index = (index + 7_654_321) % BIG_TREE;
            runtime.block_on(tlog::inclusion_proof(store, &big, black_box(index), BIG_TREE)).expect("proof")
        });
    });
    group.finish();
}

fn main() {
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut criterion = Criterion::default().configure_from_args();

    let (sqlite_database, sqlite) = runtime.block_on(async {
        let database = sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]).await;
        let store = SqliteAuditChain::new(database.pool().clone());
        (database, store)
    });
    runtime.block_on(overhead("SQLite (WAL)", sqlite.clone()));
    let unsigned_sqlite =
        runtime.block_on(sos_testkit::SqliteTestDatabase::new(&[&sos_audit::sqlite_migrator()]));
    for poll in DEPLOYED_POLLS {
        runtime.block_on(overhead_deployed(
            "SQLite (WAL)",
            sqlite.clone(),
            SqliteAuditChain::new(unsigned_sqlite.pool().clone()),
            poll,
        ));
    }
    let (pg_database, postgres) = runtime.block_on(async {
        let database = sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]).await;
        let store = PgAuditChain::new(database.pool().clone());
        (database, store)
    });
    runtime.block_on(overhead("PostgreSQL", postgres.clone()));
    let unsigned_pg = runtime.block_on(sos_testkit::PgTestDatabase::new(&[&sos_audit::postgres_migrator()]));
    for poll in DEPLOYED_POLLS {
        runtime.block_on(overhead_deployed(
            "PostgreSQL",
            postgres.clone(),
            PgAuditChain::new(unsigned_pg.pool().clone()),
            poll,
        ));
    }
    drop(unsigned_pg);

    let started = Instant::now();
    runtime.block_on(store_big_tree(sqlite_database.pool(), pg_database.pool()));
    println!(
        "stored the tiles of a {BIG_TREE}-leaf tree in SQLite and PostgreSQL in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let big = tenant("big");
    let root = runtime.block_on(tlog::root_at(&sqlite, &big, BIG_TREE)).expect("root");
    assert_eq!(runtime.block_on(tlog::root_at(&postgres, &big, BIG_TREE)).expect("root"), root);
    bench_proofs(&mut criterion, &runtime, "SQLite", &sqlite);
    bench_proofs(&mut criterion, &runtime, "PostgreSQL", &postgres);
    // The floor of any PostgreSQL-backed proof: one round trip to the server.
    let mut group = criterion.benchmark_group("inclusion proof, 10M-entry tenant");
    group.bench_function("PostgreSQL round trip, SELECT 1 (floor)", |bench| {
        bench.iter(|| runtime.block_on(sqlx::query("SELECT 1").execute(pg_database.pool())).expect("select"));
    });
    group.finish();

    let proven = 4_321_987u64;
    let proof = runtime.block_on(tlog::inclusion_proof(&sqlite, &big, proven, BIG_TREE)).expect("proof");
    let leaf = leaf_hash(Sha256Digest::of(&proven.to_be_bytes()).as_bytes());
    verify_inclusion(&leaf, proven, BIG_TREE, &proof.hashes, &root).expect("the proof verifies");
    let mut group = criterion.benchmark_group("inclusion proof, 10M-entry tenant");
    group.bench_function("verify (goal < 50 µs)", |bench| {
        bench.iter(|| verify_inclusion(black_box(&leaf), proven, BIG_TREE, black_box(&proof.hashes), &root));
    });
    group.finish();
    drop(pg_database);
    criterion.final_summary();
}
