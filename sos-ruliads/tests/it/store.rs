use std::sync::Arc;

use chrono::TimeDelta;
use sos_core::{Sha256Digest, TenantId};
use sos_ruliads::crm::Stage;
use sos_ruliads::store::{
    CauseClaim, MemoryStore, PgStore, SqliteStore, StateStore, claim_new, postgres_migrator, sqlite_migrator,
};
use sos_ruliads::trust::{TrustConfig, TrustGate, TrustState};
use sos_ruliads::{Ruliad, catalog};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

use crate::{at, deal};

fn tenant(name: &str) -> TenantId {
    name.parse().expect("valid tenant")
}

/// The behaviour every backend shares.
async fn store_suite<S: StateStore>(store: &S) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let cause = Sha256Digest::of(b"deal-1");
    assert!(store.claim_cause(at(10, 9), &acme, "stale-deal-nudge", &cause).await.expect("ok"));
    assert!(
        !store.claim_cause(at(10, 10), &acme, "stale-deal-nudge", &cause).await.expect("ok"),
        "replay-same"
    );
    assert!(store.claim_cause(at(10, 9), &acme, "other-rule", &cause).await.expect("ok"));
    assert!(
        store.claim_cause(at(10, 9), &globex, "stale-deal-nudge", &cause).await.expect("ok"),
        "tenants apart"
    );
    let later = Sha256Digest::of(b"deal-2");
    assert!(store.claim_cause(at(12, 9), &acme, "stale-deal-nudge", &later).await.expect("ok"));
    assert_eq!(store.forget_causes_before(&acme, at(11, 0)).await.expect("ok"), 2);
    assert!(store.claim_cause(at(13, 9), &acme, "stale-deal-nudge", &cause).await.expect("ok"), "forgotten");
    assert!(!store.claim_cause(at(13, 9), &acme, "stale-deal-nudge", &later).await.expect("ok"), "kept");
    assert!(
        !store.claim_cause(at(13, 9), &globex, "stale-deal-nudge", &cause).await.expect("ok"),
        "other tenant kept"
    );

    batch_claims(store).await;

    assert_eq!(store.get(&acme, "trust").await.expect("ok"), None);
    let mut gate = TrustGate::plant(TrustConfig::default(), at(1, 9)).expect("valid");
    gate.introduce(at(1, 9), &acme, "Nova").expect("valid");
    gate.observe_message();
    let saved = serde_json::to_value(gate.state()).expect("serializes");
    store.put(at(10, 9), &acme, "trust", &saved).await.expect("ok");
    store.put(at(10, 9), &acme, "trust", &saved).await.expect("replaces");
    assert_eq!(store.get(&globex, "trust").await.expect("ok"), None);
    let loaded = store.get(&acme, "trust").await.expect("ok").expect("stored");
    let state: TrustState = serde_json::from_value(loaded).expect("deserializes");
    assert_eq!(TrustGate::restore(TrustConfig::default(), state).expect("valid"), gate);
}

/// A batch of claims decides each one as single claims would, in the caller's order: more
/// claims than one statement holds, a cause listed twice, causes claimed before, the same cause
/// in another scope and another tenant.
async fn batch_claims<S: StateStore>(store: &S) {
    let (acme, globex) = (tenant("acme"), tenant("globex"));
    let causes: Vec<Sha256Digest> =
        (0..1_200).map(|index| Sha256Digest::of(format!("batch-{index}").as_bytes())).collect();
    // Claimed before, one by one: every third cause.
    for cause in causes.iter().step_by(3) {
        assert!(store.claim_cause(at(14, 9), &acme, "batch", cause).await.expect("ok"));
    }
    // Reversed order, so the caller's order is not the key order.
    let mut claims: Vec<CauseClaim<'_>> =
        causes.iter().rev().map(|cause| CauseClaim { tenant: &acme, scope: "batch", cause }).collect();
    claims.push(CauseClaim { tenant: &acme, scope: "batch", cause: &causes[1] });
    claims.push(CauseClaim { tenant: &acme, scope: "other", cause: &causes[0] });
    claims.push(CauseClaim { tenant: &globex, scope: "batch", cause: &causes[0] });
    let mut claimed = vec![true; 3];
    store.claim_causes(at(14, 10), &claims, &mut claimed).await.expect("ok");
    assert_eq!(claimed.len(), claims.len(), "one flag per claim");
    for (index, flag) in claimed[..1_200].iter().enumerate() {
        let original = 1_199 - index;
        assert_eq!(*flag, original % 3 != 0, "cause {original}: first claims only");
    }
    assert_eq!(claimed[1_200..], [false, true, true], "a duplicate loses; scopes and tenants apart");
    store.claim_causes(at(14, 11), &claims, &mut claimed).await.expect("ok");
    assert!(claimed.iter().all(|flag| !flag), "replay-same: a second batch claims nothing");
    store.claim_causes(at(14, 11), &[], &mut claimed).await.expect("ok");
    assert!(claimed.is_empty());
    let single = [CauseClaim { tenant: &globex, scope: "single", cause: &causes[0] }];
    store.claim_causes(at(14, 11), &single, &mut claimed).await.expect("ok");
    assert_eq!(claimed, [true]);
    // The batch's claims are ordinary claims: forgotten with the others.
    assert_eq!(store.forget_causes_before(&globex, at(15, 0)).await.expect("ok"), 3);
}

#[tokio::test]
async fn memory_store_behaves() {
    store_suite(&MemoryStore::new()).await;
}

#[tokio::test]
async fn sqlite_store_behaves() {
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    store_suite(&SqliteStore::new(database.pool().clone())).await;
}

#[tokio::test]
async fn postgres_store_behaves() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    store_suite(&PgStore::new(database.pool().clone())).await;
}

/// Two evaluators in this process run the stale-deal rule over the same 40 deals and keep only
/// the signals whose cause they claimed first. Returns how many they kept.
async fn two_evaluators<S: StateStore + 'static>(store: Arc<S>) -> usize {
    let mut tasks = Vec::new();
    for evaluator in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let rule = catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults");
            let mut kept = 0;
            // Each evaluator runs three rounds, on different days, in a different deal order.
            for round in 0..3 {
                let now = at(10, 9) + TimeDelta::days(round);
                let mut signals: Vec<_> = (0..40)
                    .filter_map(|index| {
                        rule.evaluate(now, &deal(&format!("d{index}"), Stage::Discovery, Some(1)))
                            .into_signal()
                    })
                    .collect();
                if evaluator == 1 {
                    signals.reverse();
                }
                kept += claim_new(&*store, now, signals).await.expect("store works").len();
            }
            kept
        }));
    }
    let mut kept = 0;
    for task in tasks {
        kept += task.await.expect("task");
    }
    kept
}

/// The child half of the two-process test. Without `SOS_CHILD_ROLE` it runs the two evaluators
/// against an in-memory store, which must keep each of the 40 causes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_evaluator_process() {
    let kept = if std::env::var("SOS_CHILD_ROLE").as_deref() == Ok("ruliads-evaluators") {
        let url = std::env::var("SOS_CHILD_URL").expect("the parent passes the database URL");
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect");
        two_evaluators(Arc::new(PgStore::new(pool))).await
    } else {
        let kept = two_evaluators(Arc::new(MemoryStore::new())).await;
        assert_eq!(kept, 40);
        kept
    };
    println!("\nKEPT={kept}");
}

#[tokio::test]
async fn four_evaluators_in_two_processes_fire_each_cause_once() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args(["--exact", "store::child_evaluator_process", "--nocapture", "--test-threads", "1"])
                .env("SOS_CHILD_ROLE", "ruliads-evaluators")
                .env("SOS_CHILD_URL", database.url())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let mut kept = 0;
    for child in children {
        let output = child.wait_with_output().expect("child ran");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        kept += stdout
            .lines()
            .find_map(|line| line.split("KEPT=").nth(1))
            .and_then(|count| count.split_whitespace().next()?.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("child printed no count: {stdout}"));
    }
    assert_eq!(kept, 40, "40 causes, 4 evaluators, 3 rounds: each cause fires once, 0 duplicates");
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM sos_ruliads_seen_causes")
        .fetch_one(database.pool())
        .await
        .expect("count");
    assert_eq!(claimed, 40);
}

/// Review (rev-rgate), named shape `replay-same` at the batch boundary: four tasks claim
/// overlapping batches of 499, 500, 501 and 1001 claims (in different orders, a cause listed
/// twice, two tenants with the same digests) at once; every (tenant, cause) is claimed by exactly
/// one claim, and one tenant's claim never suppresses another's.
async fn concurrent_batches<S: StateStore + 'static>(store: Arc<S>) {
    let causes: Arc<Vec<Sha256Digest>> =
        Arc::new((0..1_001).map(|index| Sha256Digest::of(format!("race-{index}").as_bytes())).collect());
    let mut tasks = Vec::new();
    for (task, size) in [499_usize, 500, 501, 1_001].into_iter().enumerate() {
        let (store, causes) = (store.clone(), causes.clone());
        tasks.push(tokio::spawn(async move {
            let tenants = [tenant("acme"), tenant("globex")];
            let mut claims: Vec<CauseClaim<'_>> = Vec::new();
            for tenant in &tenants {
                for cause in &causes[..size] {
                    claims.push(CauseClaim { tenant, scope: "race", cause });
                }
            }
            if task % 2 == 1 {
                claims.reverse();
            }
            claims.push(claims[0]);
            let mut claimed = Vec::new();
            store.claim_causes(at(14, 9), &claims, &mut claimed).await.expect("store works");
            assert!(!claimed[claims.len() - 1], "a cause listed twice is claimed by its first entry");
            claims
                .iter()
                .zip(&claimed)
                .filter(|(_, flag)| **flag)
                .map(|(claim, _)| (claim.tenant.as_str().to_owned(), *claim.cause))
                .collect::<Vec<_>>()
        }));
    }
    let mut won = Vec::new();
    for task in tasks {
        won.extend(task.await.expect("task"));
    }
    let total = won.len();
    won.sort();
    won.dedup();
    assert_eq!(total, won.len(), "no cause claimed twice");
    assert_eq!(won.len(), 2 * 1_001, "every cause of both tenants claimed once");
}

#[tokio::test]
async fn sqlite_concurrent_batches_claim_each_cause_once() {
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    concurrent_batches(Arc::new(SqliteStore::new(database.pool().clone()))).await;
}

#[tokio::test]
async fn postgres_concurrent_batches_claim_each_cause_once() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    concurrent_batches(Arc::new(PgStore::new(database.pool().clone()))).await;
}

/// Review (rev-rgate): PostgreSQL refuses the second statement of a batch (more claims than one
/// statement holds, in reverse key order): the error reports exactly the claims the first
/// statement made as the caller's, and a retry claims the rest without claiming any twice.
#[tokio::test]
async fn postgres_batch_failing_between_statements_reports_its_first_claims() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    let store = PgStore::new(database.pool().clone());
    let acme = tenant("acme");
    let causes: Vec<Sha256Digest> =
        (0..600).map(|index| Sha256Digest::of(format!("fail-{index}").as_bytes())).collect();
    let claims: Vec<CauseClaim<'_>> =
        causes.iter().rev().map(|cause| CauseClaim { tenant: &acme, scope: "fail", cause }).collect();
    for statement in [
        "CREATE FUNCTION sos_test_full() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
         IF (SELECT count(*) FROM sos_ruliads_seen_causes) >= 500 THEN RAISE EXCEPTION 'disk full'; END IF; \
         RETURN NEW; END $$",
        "CREATE TRIGGER sos_test_full BEFORE INSERT ON sos_ruliads_seen_causes \
         FOR EACH STATEMENT EXECUTE FUNCTION sos_test_full()",
    ] {
        sqlx::query(statement).execute(database.pool()).await.expect("trigger");
    }
    let mut claimed = Vec::new();
    store.claim_causes(at(14, 9), &claims, &mut claimed).await.expect_err("the second statement fails");
    let stored: Vec<String> = sqlx::query_scalar("SELECT cause FROM sos_ruliads_seen_causes ORDER BY cause")
        .fetch_all(database.pool())
        .await
        .expect("rows");
    assert_eq!(stored.len(), 500, "the first statement claimed its causes");
    let mut reported: Vec<String> = claims
        .iter()
        .zip(&claimed)
        .filter(|(_, flag)| **flag)
        .map(|(claim, _)| claim.cause.to_hex())
        .collect();
    reported.sort();
    assert_eq!(reported, stored, "exactly the first statement's claims are the caller's");
    sqlx::query("DROP TRIGGER sos_test_full ON sos_ruliads_seen_causes")
        .execute(database.pool())
        .await
        .expect("drop trigger");
    store.claim_causes(at(14, 10), &claims, &mut claimed).await.expect("works again");
    assert_eq!(claimed.iter().filter(|flag| **flag).count(), 100, "only the rest is claimed now");
}

/// Runs a fixed, varied scenario (three tenants, two kinds, causes repeated, inhibited, expired
/// and claimed again; the gate saved and restored through JSON every fifth round) through a gate
/// claiming in `store`; returns every round as text.
async fn gate_transcript<S: StateStore>(store: &S) -> String {
    use sos_ruliads::gate::{Gate, GateState};
    use sos_ruliads::grouping::{GroupingConfig, InhibitRule};
    let grouping = GroupingConfig {
        group_wait_seconds: 3_600,
        group_interval_seconds: 3 * 3_600,
        repeat_interval_seconds: 86_400,
        flap_window_seconds: 6 * 3_600,
        inhibit: vec![InhibitRule {
            source: "deal-lost".into(),
            target: "stale-deal-nudge".into(),
            equal: vec![],
        }],
        ..GroupingConfig::default()
    };
    let mut gate = crate::gate::trusted_gate(grouping.clone(), crate::gate::generous_trust());
    let (mut now, mut seed, mut transcript) = (at(10, 9), 7_u64, String::new());
    for round in 0..60 {
        // A small linear congruential sequence: the same scenario on every store.
        let mut next = |bound: u64| {
            seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            (seed >> 33) % bound
        };
        now += TimeDelta::hours(if next(4) == 0 { 25 } else { i64::try_from(next(4)).expect("small") });
        let fired = (0..next(6))
            .map(|_| crate::gate::scoped_fired(next(3) as usize, next(2) as usize, next(4) as u8))
            .collect();
        let outcome = gate.round(store, now, fired).await.expect("the store works");
        transcript.push_str(&format!("{round}: {outcome:?}\n"));
        if round % 5 == 4 {
            let state: GateState =
                serde_json::from_str(&serde_json::to_string(&gate.state()).expect("saves")).expect("loads");
            gate = Gate::restore(grouping.clone(), crate::gate::generous_trust(), state).expect("valid");
        }
    }
    transcript
}

/// Named shapes `replay-same` and `tenant-crosstalk` across backends: the memory store claims a
/// cause with one lookup by (tenant, scope) when both were claimed before; the gate over it
/// releases, claims and holds back exactly what the gate over SQLite and PostgreSQL does, round
/// for round, byte for byte.
#[tokio::test]
async fn replay_same_gates_over_memory_sqlite_and_postgres_release_alike() {
    let memory = gate_transcript(&MemoryStore::new()).await;
    assert!(
        memory.contains("already sent") && memory.contains("Inhibited") && memory.contains("released: [N"),
        "{memory}"
    );
    let sqlite = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    assert_eq!(gate_transcript(&SqliteStore::new(sqlite.pool().clone())).await, memory, "SQLite");
    let postgres = PgTestDatabase::new(&[&postgres_migrator()]).await;
    assert_eq!(gate_transcript(&PgStore::new(postgres.pool().clone())).await, memory, "PostgreSQL");
}
