//! One behavioural suite for every registry store, on real databases.

use std::sync::Arc;

use chrono::{TimeZone, Utc};
use sos_core::{ManualClock, TenantId};
use sos_identity::{
    AgentName, AgentRole, Error, IdentityRegistry, IdentityVector, MemoryRegistry, Registration,
    verify_agent, verify_chain,
};

pub(crate) fn clock() -> Arc<ManualClock> {
    Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).single().expect("valid date")))
}

fn tenant(text: &str) -> TenantId {
    TenantId::new(text).expect("valid tenant")
}

fn name(text: &str) -> AgentName {
    AgentName::new(text).expect("valid name")
}

fn role(text: &str) -> AgentRole {
    AgentRole::new(text).expect("valid role")
}

/// The behaviour every store must have.
async fn suite<R: IdentityRegistry>(registry: &R, clock: &ManualClock) {
    let acme = tenant("acme");
    let other = tenant("other");

    let first = registry.register(&acme, &name("alice"), &role("researcher")).await.expect("register");
    let Registration::Created(entry) = &first else { panic!("expected a new entry, got {first:?}") };
    assert_eq!(entry.seq, 1);
    assert_eq!(entry.vector, IdentityVector::derive("alice", "researcher").expect("valid"));
    assert_eq!(entry.registered_at, Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).single().expect("valid"));

    clock.advance(chrono::Duration::microseconds(1_500_001));
    let again = registry.register(&acme, &name("alice"), &role("researcher")).await.expect("same role");
    assert!(!again.is_created());
    assert_eq!(again.entry(), entry, "the existing entry comes back unchanged");

    let refused = registry.register(&acme, &name("alice"), &role("admin")).await;
    assert!(matches!(refused, Err(Error::RoleConflict { .. })), "{refused:?}");

    // Whitespace is significant: "alice " is another agent.
    let spaced = registry.register(&acme, &name("alice "), &role("admin")).await.expect("distinct name");
    assert!(spaced.is_created());
    assert_eq!(spaced.entry().seq, 2);
    assert_eq!(spaced.entry().prev_hash, entry.hash);

    // Tenants are isolated: the same name starts a fresh chain elsewhere.
    let elsewhere = registry.register(&other, &name("alice"), &role("admin")).await.expect("other tenant");
    assert_eq!(elsewhere.entry().seq, 1);

    for index in 0..5 {
        clock.advance(chrono::Duration::seconds(1));
        registry.register(&acme, &name(&format!("bot-{index}")), &role("worker")).await.expect("register");
    }
    let entries = registry.entries(&acme).await.expect("entries");
    assert_eq!(entries.len(), 7);
    let summary = verify_chain(&acme, &entries).expect("intact chain");
    assert_eq!(summary.head, entries[6].hash);
    assert!(verify_chain(&other, &registry.entries(&other).await.expect("entries")).is_ok());
    // A chain verified under the wrong tenant fails at its first entry.
    assert!(matches!(verify_chain(&other, &entries), Err(Error::Tampered { seq: 1, .. })));

    // A checkpoint kept outside the store, and a proof that one agent is in it.
    #[cfg(feature = "audit")]
    {
        let checkpoint = sos_identity::checkpoint(&acme, &entries).expect("intact chain");
        assert_eq!((checkpoint.len, checkpoint.head), (7, summary.head));
        let proof = sos_identity::inclusion_proof(&entries, 4, checkpoint.len).expect("in range");
        assert!(sos_identity::verify_inclusion(&checkpoint, &entries[3].hash, &proof));
        assert!(!sos_identity::verify_inclusion(&checkpoint, &entries[4].hash, &proof));
        // The proof checks out with sos-audit's own verifier too (RFC 9162, leaf = entry hash).
        let leaf = sos_audit::merkle::leaf_hash(entries[3].hash.as_bytes());
        let audit_proof = proof.to_rfc9162().expect("seq ≥ 1");
        assert_eq!(audit_proof.verify(&leaf, &checkpoint.root), Ok(()));
        // A later checkpoint provably extends this one, whatever the store.
        clock.advance(chrono::Duration::seconds(1));
        registry.register(&acme, &name("late"), &role("worker")).await.expect("register");
        let longer = registry.entries(&acme).await.expect("entries");
        let later = sos_identity::checkpoint(&acme, &longer).expect("intact chain");
        let proof = sos_identity::consistency_proof(&longer, checkpoint.len, later.len).expect("in range");
        assert!(sos_identity::verify_consistency(&checkpoint, &later, &proof));
    }

    let looked_up = registry.lookup(&acme, &name("bot-3")).await.expect("lookup").expect("present");
    assert_eq!(looked_up, entries[5]);
    assert!(registry.lookup(&acme, &name("nobody")).await.expect("lookup").is_none());

    let claimed = IdentityVector::derive("bot-3", "worker").expect("valid");
    assert!(verify_agent(registry, &acme, &name("bot-3"), &claimed).await.expect("verified"));
    let impostor = IdentityVector::derive("bot-3", "admin").expect("valid");
    assert!(!verify_agent(registry, &acme, &name("bot-3"), &impostor).await.expect("verified"));
}

/// Many concurrent registrations in one process keep one unforked, gapless chain
/// (named shape `chain-seq-stale-read`), and each contested name has one winner.
async fn concurrent_suite<R: IdentityRegistry + 'static>(registry: Arc<R>) {
    let acme = tenant("acme");
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let registry = Arc::clone(&registry);
        let acme = acme.clone();
        tasks.push(tokio::spawn(async move {
            let mut won = 0;
            for index in 0..6 {
                let contested = registry
                    .register(&acme, &name(&format!("agent-{index}")), &role(&format!("role-{worker}")))
                    .await;
                match contested {
                    Ok(registration) if registration.is_created() => won += 1,
                    Ok(_) | Err(Error::RoleConflict { .. }) => {}
                    Err(other) => panic!("unexpected error {other}"),
                }
                registry
                    .register(&acme, &name(&format!("own-{worker}-{index}")), &role("worker"))
                    .await
                    .expect("uncontested");
            }
            won
        }));
    }
    let mut wins = 0;
    for task in tasks {
        wins += task.await.expect("task finished");
    }
    assert_eq!(wins, 6, "each contested name has exactly one winner");
    let entries = registry.entries(&acme).await.expect("entries");
    assert_eq!(entries.len(), 6 + 8 * 6);
    verify_chain(&acme, &entries).expect("one unforked chain");
}

#[tokio::test]
async fn memory_store_behaves() {
    let clock = clock();
    suite(&MemoryRegistry::new(clock.clone()), &clock).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_under_concurrency() {
    concurrent_suite(Arc::new(MemoryRegistry::new(clock()))).await;
}

#[cfg(feature = "sqlite")]
mod sqlite {
    use sos_identity::{SqliteRegistry, sqlite_migrator};
    use sos_testkit::SqliteTestDatabase;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_store_behaves() {
        let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
        let clock = clock();
        suite(&SqliteRegistry::new(database.pool().clone(), clock.clone()), &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sqlite_store_under_concurrency() {
        let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
        concurrent_suite(Arc::new(SqliteRegistry::new(database.pool().clone(), clock()))).await;
    }

    #[tokio::test]
    async fn sqlite_tampering_is_named() {
        let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
        let registry = SqliteRegistry::new(database.pool().clone(), clock());
        let acme = tenant("acme");
        for index in 0..4 {
            registry
                .register(&acme, &name(&format!("agent-{index}")), &role("worker"))
                .await
                .expect("register");
        }
        sqlx::query("UPDATE sos_identity_entries SET role = 'admin' WHERE tenant = 'acme' AND seq = 3")
            .execute(database.pool())
            .await
            .expect("tamper");
        let entries = registry.entries(&acme).await.expect("entries");
        assert!(matches!(verify_chain(&acme, &entries), Err(Error::Tampered { seq: 3, .. })));
    }

    /// Named shape `toctou-dedupe` on SQLite: two OS processes share one database file.
    mod toctou_dedupe {
        use std::process::Command;

        use super::*;

        const ROLE_VAR: &str = "SOS_CHILD_ROLE";
        const PATH_VAR: &str = "SOS_IDENTITY_RACE_SQLITE";
        const NAMES: usize = 10;

        async fn race(path: &std::path::Path, role_text: &str) -> Vec<String> {
            let registry =
                SqliteRegistry::new(sos_testkit::sqlite_pool(path, 2).await, Arc::new(sos_core::SystemClock));
            let acme = tenant("acme");
            let mut outcomes = Vec::new();
            for index in 0..NAMES {
                let outcome = match registry
                    .register(&acme, &name(&format!("racer-{index}")), &role(role_text))
                    .await
                {
                    Ok(registration) if registration.is_created() => "won",
                    Ok(_) => "existing",
                    Err(Error::RoleConflict { .. }) => "refused",
                    Err(other) => panic!("unexpected error {other}"),
                };
                outcomes.push(format!("OUTCOME racer-{index} {outcome}"));
            }
            outcomes
        }

        /// The child half. Spawned by the parent with the role variable set; run on its own, it
        /// races against nobody on a fresh database and must win every name.
        #[tokio::test]
        async fn toctou_dedupe_sqlite_child() {
            match std::env::var(ROLE_VAR) {
                Ok(role_text) => {
                    let path =
                        std::path::PathBuf::from(std::env::var(PATH_VAR).expect("parent passes the file"));
                    for line in race(&path, &role_text).await {
                        println!("{line}");
                    }
                }
                Err(_) => {
                    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
                    let outcomes = race(database.path(), "solo").await;
                    assert!(outcomes.iter().all(|line| line.ends_with(" won")), "{outcomes:?}");
                }
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn toctou_dedupe_sqlite_two_processes_exactly_one_wins() {
            let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
            let executable = std::env::current_exe().expect("test binary path");
            let children: Vec<_> = ["role-a", "role-b"]
                .iter()
                .map(|role_text| {
                    Command::new(&executable)
                        .args([
                            "--exact",
                            "registry::sqlite::toctou_dedupe::toctou_dedupe_sqlite_child",
                            "--nocapture",
                        ])
                        .env(ROLE_VAR, role_text)
                        .env(PATH_VAR, database.path())
                        .stdout(std::process::Stdio::piped())
                        .stderr(std::process::Stdio::piped())
                        .spawn()
                        .expect("spawn child")
                })
                .collect();
            let mut won = vec![0; NAMES];
            for child in children {
                let output = child.wait_with_output().expect("child finished");
                assert!(output.status.success(), "child failed: {}", String::from_utf8_lossy(&output.stderr));
                for line in String::from_utf8_lossy(&output.stdout)
                    .lines()
                    .filter_map(|line| line.strip_prefix("OUTCOME racer-"))
                {
                    let (index, outcome) = line.split_once(' ').expect("index and outcome");
                    if outcome == "won" {
                        won[index.parse::<usize>().expect("index")] += 1;
                    } else {
                        assert_eq!(outcome, "refused");
                    }
                }
            }
            assert!(won.iter().all(|count| *count == 1), "exactly one winner per name: {won:?}");
            let registry = SqliteRegistry::new(database.pool().clone(), clock());
            let acme = tenant("acme");
            verify_chain(&acme, &registry.entries(&acme).await.expect("entries"))
                .expect("one unforked chain");
        }
    }

    mod unique_null {
        use super::*;

        #[tokio::test]
        async fn unique_null_key_columns_refuse_null() {
            let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
            let inserted = sqlx::query(
                "INSERT INTO sos_identity_entries (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
                 VALUES (NULL, 1, 'alice', 'r', zeroblob(32), 0, zeroblob(32), zeroblob(32))",
            )
            .execute(database.pool())
            .await;
            assert!(inserted.is_err(), "a NULL tenant would escape UNIQUE (tenant, name)");
        }
    }
}

#[cfg(feature = "postgres")]
mod postgres {
    use sos_identity::{PostgresRegistry, postgres_migrator};
    use sos_testkit::PgTestDatabase;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_store_behaves() {
        let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
        let clock = clock();
        suite(&PostgresRegistry::new(database.pool().clone(), clock.clone()), &clock).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_store_under_concurrency() {
        let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
        concurrent_suite(Arc::new(PostgresRegistry::new(database.pool().clone(), clock()))).await;
    }

    #[tokio::test]
    async fn postgres_tampering_is_named() {
        let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
        let registry = PostgresRegistry::new(database.pool().clone(), clock());
        let acme = tenant("acme");
        for index in 0..4 {
            registry
                .register(&acme, &name(&format!("agent-{index}")), &role("worker"))
                .await
                .expect("register");
        }
        // Rewrite entry 2 completely and consistently: the verifier still names entry 3, whose
        // previous hash no longer matches.
        let entries = registry.entries(&acme).await.expect("entries");
        let mut forged = entries[1].clone();
        forged.role = role("admin");
        forged.vector = IdentityVector::of(&forged.name, &forged.role);
        forged.hash = forged.compute_hash();
        sqlx::query("UPDATE sos_identity_entries SET role = $1, vector = $2, entry_hash = $3 WHERE tenant = 'acme' AND seq = 2")
            .bind(forged.role.as_str())
            .bind(forged.vector.as_bytes().as_slice())
            .bind(forged.hash.as_bytes().as_slice())
            .execute(database.pool())
            .await
            .expect("tamper");
        let entries = registry.entries(&acme).await.expect("entries");
        assert!(matches!(verify_chain(&acme, &entries), Err(Error::Tampered { seq: 3, .. })));
        sqlx::query("DELETE FROM sos_identity_entries WHERE tenant = 'acme' AND seq = 1")
            .execute(database.pool())
            .await
            .expect("delete");
        let entries = registry.entries(&acme).await.expect("entries");
        assert!(matches!(verify_chain(&acme, &entries), Err(Error::Tampered { seq: 1, .. })));
    }

    mod unique_null {
        use super::*;

        #[tokio::test]
        async fn unique_null_key_columns_refuse_null() {
            let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
            let inserted = sqlx::query(
                "INSERT INTO sos_identity_entries (tenant, seq, name, role, vector, registered_at_us, prev_hash, entry_hash) \
                 VALUES ('acme', 1, NULL, 'r', $1, 0, $1, $1)",
            )
            .bind([0u8; 32].as_slice())
            .execute(database.pool())
            .await;
            assert!(inserted.is_err(), "a NULL name would escape UNIQUE (tenant, name)");
        }
    }

    /// Named shape `toctou-dedupe`: two OS processes race to register the same names on one
    /// PostgreSQL; for every name exactly one wins and the other is refused.
    mod toctou_dedupe {
        use std::process::Command;

        use super::*;

        const ROLE_VAR: &str = "SOS_CHILD_ROLE";
        const URL_VAR: &str = "SOS_IDENTITY_RACE_URL";
        const START_VAR: &str = "SOS_IDENTITY_RACE_START_MS";
        const NAMES: usize = 15;

        async fn race(url: &str, role_text: &str) -> Vec<String> {
            let pool =
                sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(url).await.expect("connect");
            let registry = PostgresRegistry::new(pool, Arc::new(sos_core::SystemClock));
            let acme = tenant("acme");
            let mut outcomes = Vec::new();
            for index in 0..NAMES {
                let outcome = match registry
                    .register(&acme, &name(&format!("racer-{index}")), &role(role_text))
                    .await
                {
                    Ok(registration) if registration.is_created() => "won",
                    Ok(_) => "existing",
                    Err(Error::RoleConflict { .. }) => "refused",
                    Err(other) => panic!("unexpected error {other}"),
                };
                outcomes.push(format!("OUTCOME racer-{index} {outcome}"));
            }
            outcomes
        }

        /// The child half. Spawned by the parent with the role variable set; run on its own
        /// (as in a plain `cargo test`), it races against nobody on a fresh database and must
        /// win every name.
        #[tokio::test]
        async fn toctou_dedupe_child() {
            match std::env::var(ROLE_VAR) {
                Ok(role_text) => {
                    let url = std::env::var(URL_VAR).expect("parent passes the database URL");
                    let start: u128 =
                        std::env::var(START_VAR).expect("parent passes a start time").parse().expect("ms");
                    while std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .expect("after 1970")
                        .as_millis()
                        < start
                    {
                        std::thread::sleep(std::time::Duration::from_millis(1));
                    }
                    for line in race(&url, &role_text).await {
                        println!("{line}");
                    }
                }
                Err(_) => {
                    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
                    let outcomes = race(database.url(), "solo").await;
                    assert!(outcomes.iter().all(|line| line.ends_with(" won")), "{outcomes:?}");
                }
            }
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn toctou_dedupe_two_processes_exactly_one_wins() {
            let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
            let executable = std::env::current_exe().expect("test binary path");
            let start = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("after 1970")
                .as_millis()
                + 1500;
            let children: Vec<_> = ["role-a", "role-b"]
                .iter()
                .map(|role_text| {
                    Command::new(&executable)
                        .args([
                            "--exact",
                            "registry::postgres::toctou_dedupe::toctou_dedupe_child",
                            "--nocapture",
                        ])
                        .env(ROLE_VAR, role_text)
                        .env(URL_VAR, database.url())
                        .env(START_VAR, start.to_string())
                        .output()
                        .expect("spawn child")
                })
                .collect::<Vec<_>>();
            let mut won = vec![0; NAMES];
            let mut refused = vec![0; NAMES];
            for child in &children {
                assert!(child.status.success(), "child failed: {}", String::from_utf8_lossy(&child.stderr));
                let stdout = String::from_utf8_lossy(&child.stdout);
                let mut lines = 0;
                for line in stdout.lines().filter_map(|line| line.strip_prefix("OUTCOME racer-")) {
                    let (index, outcome) = line.split_once(' ').expect("index and outcome");
                    let index: usize = index.parse().expect("index");
                    match outcome {
                        "won" => won[index] += 1,
                        "refused" => refused[index] += 1,
                        other => panic!("unexpected outcome {other}"),
                    }
                    lines += 1;
                }
                assert_eq!(lines, NAMES, "child printed every outcome: {stdout}");
            }
            assert!(won.iter().all(|count| *count == 1), "exactly one winner per name: {won:?}");
            assert!(refused.iter().all(|count| *count == 1), "exactly one refusal per name: {refused:?}");
            let registry = PostgresRegistry::new(database.pool().clone(), clock());
            let acme = tenant("acme");
            let entries = registry.entries(&acme).await.expect("entries");
            assert_eq!(entries.len(), NAMES);
            verify_chain(&acme, &entries).expect("one unforked chain");
        }
    }
}
