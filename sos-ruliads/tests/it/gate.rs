//! The full gate on the engine's one path: every held-back or delayed signal has its reason.

use chrono::{DateTime, TimeDelta, Utc};
use sos_core::{Signal, TenantId};
use sos_ruliads::ceiling::{Admission, CeilingConfig, MemoryCeiling, Refused};
use sos_ruliads::crm::{Record, Stage};
use sos_ruliads::engine::{Engine, Fired};
use sos_ruliads::gate::{Gate, GateState, Round};
use sos_ruliads::grouping::{GroupingConfig, InhibitRule};
use sos_ruliads::store::{MemoryStore, StateStore};
use sos_ruliads::trust::{Feedback, Reason, TrustConfig};
use sos_ruliads::{Class, Draft, Explain, catalog};

use crate::{at, deal};

fn tenant() -> TenantId {
    "acme".parse().expect("valid tenant")
}

fn planted() -> DateTime<Utc> {
    at(1, 9) - TimeDelta::days(30)
}

pub(crate) fn generous_trust() -> TrustConfig {
    TrustConfig { initial_per_day: 50.0, ceiling_per_day: 100.0, ..TrustConfig::default() }
}

fn insight(now: DateTime<Utc>) -> Signal {
    Explain::new()
        .fire(Draft::new(&tenant(), "lead-rhythm", now).subject("Your leads").text("Most leads on Tuesdays."))
        .into_signal()
        .expect("valid")
}

/// A gate whose agent was introduced, observed enough and had an insight accepted: it may
/// intervene.
pub(crate) fn trusted_gate(grouping: GroupingConfig, trust: TrustConfig) -> Gate {
    let mut gate = Gate::new(grouping, trust, planted()).expect("valid");
    let trust = gate.trust_mut();
    trust.introduce(planted(), &tenant(), "Nova").expect("valid name");
    for _ in 0..20 {
        trust.observe_message();
    }
    let first = insight(planted() + TimeDelta::days(5));
    assert_eq!(
        trust.offer(planted() + TimeDelta::days(5), first.clone(), Class::Insight),
        sos_ruliads::trust::Decision::Release
    );
    assert!(trust.feedback(planted() + TimeDelta::days(5), first.tenant(), first.id(), Feedback::Accepted));
    gate
}

fn stale_engine() -> Engine<Record> {
    Engine::new(vec![catalog::build("stale-deal-nudge", &serde_json::Value::Null).expect("defaults")])
}

fn stale_deals(count: usize) -> Vec<Record> {
    (0..count).map(|index| deal(&format!("d{index}"), Stage::Discovery, Some(1))).collect()
}

fn reasons(round: &Round, reason: Reason) -> usize {
    round.suppressed.iter().filter(|suppressed| suppressed.reason == reason).count()
}

fn run(
    engine: &Engine<Record>,
    gate: &mut Gate,
    store: &MemoryStore,
    now: DateTime<Utc>,
    batch: &[Record],
) -> Round {
    futures::executor::block_on(engine.run(gate, store, now, batch)).expect("memory store works")
}

#[test]
fn thirty_stale_deals_make_one_message_then_repeat() {
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let mut gate = trusted_gate(GroupingConfig::default(), generous_trust());
    let batch = stale_deals(30);
    let first = run(&engine, &mut gate, &store, at(10, 9), &batch);
    assert!(first.released.is_empty());
    assert_eq!(reasons(&first, Reason::Grouped), 30, "delayed by group_wait, with the reason");
    let second = run(&engine, &mut gate, &store, at(10, 10), &batch);
    assert_eq!(second.released.len(), 1, "one message");
    assert_eq!(second.released[0].members().len(), 30, "listing 30 deals");
    assert_eq!(second.released_signals().count(), 30);
    assert!(second.suppressed.is_empty(), "{:?}", second.suppressed);
    let third = run(&engine, &mut gate, &store, at(10, 11), &batch);
    assert!(third.released.is_empty());
    assert_eq!(reasons(&third, Reason::Repeat), 30);
    assert!(
        third.suppressed[0].detail.starts_with("already notified at 2026-03-10T10:00:00Z"),
        "{:?}",
        third.suppressed[0]
    );
    assert_eq!(gate.suppressed().count(), 60, "the gate's log holds every reason");
}

#[test]
fn inhibited_signals_are_recorded_and_never_sent() {
    let grouping = GroupingConfig {
        group_wait_seconds: 0,
        inhibit: vec![InhibitRule {
            source: "deal-lost".into(),
            target: "stale-deal-nudge".into(),
            equal: vec!["deal_id".into()],
        }],
        ..GroupingConfig::default()
    };
    let (store, mut gate) = (MemoryStore::new(), trusted_gate(grouping, generous_trust()));
    let mut fired = stale_engine().evaluate_batch(at(10, 9), &stale_deals(3));
    let mut why = Explain::new();
    why.label("deal_id", "d1");
    let lost = why
        .fire(Draft::new(&tenant(), "deal-lost", at(10, 9)).subject("Deal with Contact d1").text("Lost."))
        .into_signal()
        .expect("valid");
    fired.push(Fired::new(1, 1, Class::Insight, lost));
    let round = futures::executor::block_on(gate.round(&store, at(10, 9), fired)).expect("works");
    assert_eq!(reasons(&round, Reason::Inhibited), 1);
    let inhibited = round.suppressed.iter().find(|s| s.reason == Reason::Inhibited).expect("one");
    assert_eq!(inhibited.detail, "inhibited by deal-lost with equal deal_id");
    let sent: Vec<&str> = round.released_signals().map(Signal::subject).collect();
    assert_eq!(
        sent.iter().filter(|subject| subject.ends_with("d1")).count(),
        1,
        "only the lost signal: {sent:?}"
    );
    assert!(sent.contains(&"Deal with Contact d0") && sent.contains(&"Deal with Contact d2"), "{sent:?}");
}

#[test]
fn a_cause_claimed_by_another_evaluator_is_held_back_as_repeat() {
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut first = trusted_gate(grouping.clone(), generous_trust());
    let mut second = trusted_gate(grouping, generous_trust());
    let batch = stale_deals(4);
    let sent = run(&engine, &mut first, &store, at(10, 9), &batch);
    assert_eq!(sent.released_signals().count(), 4);
    let again = run(&engine, &mut second, &store, at(10, 9), &batch);
    assert!(again.released.is_empty());
    assert_eq!(reasons(&again, Reason::Repeat), 4);
    assert!(again.suppressed[0].detail.contains("claimed by another evaluator"), "{:?}", again.suppressed[0]);
    // Partly claimed: the message lists only the new deal.
    let more = run(&engine, &mut second, &store, at(10, 9) + TimeDelta::days(8), &stale_deals(5));
    assert_eq!(more.released.len(), 1);
    let members: Vec<&str> = more.released_signals().map(Signal::subject).collect();
    assert_eq!(members, ["Deal with Contact d4"]);
    assert_eq!(more.released[0].summary().subject(), "Deal with Contact d4");
}

#[test]
fn a_flapping_entity_is_held_back_as_cooldown() {
    let grouping =
        GroupingConfig { group_wait_seconds: 0, repeat_interval_seconds: 60, ..GroupingConfig::default() };
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let mut gate = trusted_gate(grouping, generous_trust());
    let mut cooldowns = 0;
    let mut sent = 0;
    for hour in 0..8 {
        // Present every other hour: appears, vanishes, appears again …
        let batch = if hour % 2 == 0 { stale_deals(1) } else { Vec::new() };
        let round = run(&engine, &mut gate, &store, at(10, hour), &batch);
        cooldowns += reasons(&round, Reason::Cooldown);
        sent += round.released_signals().count();
    }
    assert_eq!(sent, 1, "a flapping deal gives one signal");
    assert!(cooldowns >= 1);
}

#[test]
fn an_untrusted_agent_keeps_its_signals_with_reason_trust() {
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = Gate::new(grouping, TrustConfig::default(), at(9, 9)).expect("valid");
    let round = run(&engine, &mut gate, &store, at(10, 9), &stale_deals(2));
    assert!(round.released.is_empty());
    assert_eq!(reasons(&round, Reason::Trust), 2);
    assert_eq!(round.suppressed[0].detail, "the agent has not introduced itself yet");
    assert_eq!(gate.trust().withheld().count(), 1, "the message is kept, not lost");
}

#[test]
fn a_spent_budget_keeps_signals_with_reason_cooldown() {
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let grouping =
        GroupingConfig { group_wait_seconds: 0, group_interval_seconds: 1, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, TrustConfig::default());
    // The insight spent the only token of the day it was sent; a day later one more is there.
    let first = run(&engine, &mut gate, &store, at(10, 9), &stale_deals(1));
    assert_eq!(first.released.len(), 1);
    let batch: Vec<Record> =
        (10..12).map(|index| deal(&format!("d{index}"), Stage::Proposal, Some(1))).collect();
    let second = run(&engine, &mut gate, &store, at(10, 10), &batch);
    assert!(second.released.is_empty());
    assert_eq!(reasons(&second, Reason::Cooldown), 2);
    assert!(second.suppressed[0].detail.contains("budget"), "{:?}", second.suppressed[0]);
}

#[test]
fn a_refused_trigger_is_recorded_as_ceiling_or_repeat() {
    let ceiling = MemoryCeiling::new(CeilingConfig { global: 1, per_attribute: None });
    let mut gate = trusted_gate(GroupingConfig::default(), generous_trust());
    let fired = stale_engine().evaluate_batch(at(10, 9), &stale_deals(2));
    let (first, second) = (&fired[0].signal, &fired[1].signal);
    assert_eq!(
        futures::executor::block_on(gate.start_trigger(&ceiling, at(10, 9), first, "")).expect("ok"),
        Admission::Started
    );
    assert_eq!(
        futures::executor::block_on(gate.start_trigger(&ceiling, at(10, 9), second, "")).expect("ok"),
        Admission::Refused(Refused::Ceiling)
    );
    assert_eq!(
        futures::executor::block_on(gate.start_trigger(&ceiling, at(10, 9), first, "")).expect("ok"),
        Admission::Refused(Refused::Replay)
    );
    let logged: Vec<Reason> = gate.suppressed().map(|suppressed| suppressed.reason).collect();
    assert_eq!(logged, [Reason::Ceiling, Reason::Repeat]);
}

#[test]
fn gate_state_survives_a_restart_without_refiring() {
    let (engine, store) = (stale_engine(), MemoryStore::new());
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping.clone(), generous_trust());
    let batch = stale_deals(3);
    assert_eq!(run(&engine, &mut gate, &store, at(10, 9), &batch).released_signals().count(), 3);
    let saved = serde_json::to_value(gate.state()).expect("serializes");
    futures::executor::block_on(store.put(at(10, 9), &tenant(), "gate", &saved)).expect("stored");
    drop(gate);

    let loaded = futures::executor::block_on(store.get(&tenant(), "gate")).expect("ok").expect("saved");
    let state: GateState = serde_json::from_value(loaded).expect("deserializes");
    let mut restarted = Gate::restore(grouping, generous_trust(), state).expect("valid");
    let round = run(&engine, &mut restarted, &store, at(10, 12), &batch);
    assert!(round.released.is_empty(), "nothing fires twice after a restart");
    assert_eq!(reasons(&round, Reason::Repeat), 3);
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_failed_cause_claim_loses_nothing() {
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let store = SqliteStore::new(database.pool().clone());
    let engine = stale_engine();
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    let batch = stale_deals(3);
    // The database refuses every claim after the first: the group fails half-claimed.
    sqlx::query(
        "CREATE TRIGGER sos_test_full BEFORE INSERT ON sos_ruliads_seen_causes \
         WHEN (SELECT count(*) FROM sos_ruliads_seen_causes) >= 1 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(database.pool())
    .await
    .expect("trigger");
    let error = engine.run(&mut gate, &store, at(10, 9), &batch).await.expect_err("the store is failing");
    assert!(error.to_string().contains("storage failed"), "{error}");
    sqlx::query("DROP TRIGGER sos_test_full").execute(database.pool()).await.expect("drop trigger");
    let round = engine.run(&mut gate, &store, at(10, 10), &batch).await.expect("works again");
    assert_eq!(round.released_signals().count(), 3, "every member was offered again: {round:?}");
    assert!(round.suppressed.is_empty(), "nothing was claimed by the failed statement: {round:?}");
    let again = engine.run(&mut gate, &store, at(10, 11), &batch).await.expect("works");
    assert!(again.released.is_empty(), "and each is sent once");
}

/// A claim that fails between two statements of one batch (more causes than one statement
/// holds): the causes claimed by the first statement are this gate's, the round is offered again
/// whole, and each cause is sent once.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_claim_failing_between_statements_sends_each_cause_once() {
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let store = SqliteStore::new(database.pool().clone());
    let engine = stale_engine();
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    let batch = stale_deals(600);
    sqlx::query(
        "CREATE TRIGGER sos_test_full BEFORE INSERT ON sos_ruliads_seen_causes \
         WHEN (SELECT count(*) FROM sos_ruliads_seen_causes) >= 500 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(database.pool())
    .await
    .expect("trigger");
    engine.run(&mut gate, &store, at(10, 9), &batch).await.expect_err("the second statement fails");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM sos_ruliads_seen_causes")
        .fetch_one(database.pool())
        .await
        .expect("count");
    assert_eq!(stored, 500, "the first statement claimed its causes");
    sqlx::query("DROP TRIGGER sos_test_full").execute(database.pool()).await.expect("drop trigger");
    let round = engine.run(&mut gate, &store, at(10, 10), &batch).await.expect("works again");
    assert_eq!(round.released_signals().count(), 600, "every member was offered again");
    assert!(
        round.suppressed.is_empty(),
        "the causes claimed before the failure are ours: {:?}",
        round.suppressed
    );
    let again = engine.run(&mut gate, &store, at(10, 11), &batch).await.expect("works");
    assert!(again.released.is_empty(), "and each is sent once");
}

/// A failed claim releases nothing of its round: a message already due in another group is not
/// released (and lost with the failed round) but offered again with the rest.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_failed_claim_loses_no_other_group() {
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let store = SqliteStore::new(database.pool().clone());
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    let fired = || {
        ["lead-rhythm", "stale-deal-nudge"]
            .into_iter()
            .enumerate()
            .map(|(ruliad, kind)| {
                let signal = Explain::new()
                    .fire(Draft::new(&tenant(), kind, at(10, 9)).subject(kind).text("Look at this."))
                    .into_signal()
                    .expect("valid");
                Fired::new(0, ruliad, Class::Insight, signal)
            })
            .collect::<Vec<_>>()
    };
    sqlx::query(
        "CREATE TRIGGER sos_test_full BEFORE INSERT ON sos_ruliads_seen_causes \
         WHEN (SELECT count(*) FROM sos_ruliads_seen_causes) >= 1 BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .execute(database.pool())
    .await
    .expect("trigger");
    let outstanding = gate.trust().state().outstanding.len();
    gate.round(&store, at(10, 9), fired()).await.expect_err("the store is failing");
    assert_eq!(gate.trust().state().outstanding.len(), outstanding, "nothing was released");
    sqlx::query("DROP TRIGGER sos_test_full").execute(database.pool()).await.expect("drop trigger");
    let round = gate.round(&store, at(10, 10), fired()).await.expect("works again");
    assert_eq!(round.released.len(), 2, "both groups' messages: {round:?}");
    let again = gate.round(&store, at(10, 11), fired()).await.expect("works");
    assert!(again.released.is_empty());
    assert_eq!(reasons(&again, Reason::Repeat), 2);
}

/// Two evaluators (tasks) with their own gates run the engine's full path over the same 40 stale
/// deals for three rounds, claiming causes in `store`; returns the causes they sent.
#[cfg(feature = "postgres")]
async fn two_gated_evaluators<S: StateStore + 'static>(store: std::sync::Arc<S>) -> Vec<String> {
    let mut tasks = Vec::new();
    for evaluator in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let engine = stale_engine();
            let grouping = GroupingConfig {
                group_wait_seconds: 0,
                group_interval_seconds: 1,
                ..GroupingConfig::default()
            };
            let mut gate = trusted_gate(grouping, generous_trust());
            let mut sent = Vec::new();
            for round in 0..3 {
                let mut batch = stale_deals(40);
                if evaluator == 1 {
                    batch.reverse();
                }
                let now = at(10, 9) + TimeDelta::hours(round);
                let round = engine.run(&mut gate, &*store, now, &batch).await.expect("store works");
                sent.extend(round.released_signals().map(|signal| signal.cause().to_hex()));
            }
            sent
        }));
    }
    let mut sent = Vec::new();
    for task in tasks {
        sent.extend(task.await.expect("task"));
    }
    sent
}

/// The child half of the two-process test; on its own it runs over an in-memory store.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_gated_evaluator_process() {
    let sent = if std::env::var("SOS_CHILD_ROLE").as_deref() == Ok("ruliads-gated") {
        let url = std::env::var("SOS_CHILD_URL").expect("the parent passes the database URL");
        let start: u64 = std::env::var("SOS_CHILD_START").expect("start").parse().expect("millis");
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&url).await.expect("connect");
        // Both children begin at the same instant, so their claims race.
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis();
        tokio::time::sleep(std::time::Duration::from_millis(start.saturating_sub(now_ms as u64))).await;
        two_gated_evaluators(std::sync::Arc::new(sos_ruliads::store::PgStore::new(pool))).await
    } else {
        let sent = two_gated_evaluators(std::sync::Arc::new(MemoryStore::new())).await;
        assert_eq!(sent.len(), 40);
        sent
    };
    println!("\nSENT={}", sent.join(","));
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn four_gated_evaluators_in_two_processes_send_each_cause_once() {
    use sos_ruliads::store::postgres_migrator;
    let database = sos_testkit::PgTestDatabase::new(&[&postgres_migrator()]).await;
    let start =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_millis()
            + 1_500;
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "--exact",
                    "gate::child_gated_evaluator_process",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env("SOS_CHILD_ROLE", "ruliads-gated")
                .env("SOS_CHILD_URL", database.url())
                .env("SOS_CHILD_START", start.to_string())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("spawn child")
        })
        .collect();
    let mut sent = Vec::new();
    for child in children {
        let output = child.wait_with_output().expect("child ran");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "child failed: {stdout}");
        let line = stdout
            .lines()
            .find_map(|line| line.strip_prefix("SENT="))
            .expect("the child printed what it sent");
        sent.extend(line.split(',').filter(|cause| !cause.is_empty()).map(str::to_owned));
    }
    let unique: std::collections::BTreeSet<&String> = sent.iter().collect();
    assert_eq!(unique.len(), sent.len(), "0 duplicate signals across 4 evaluators in 2 processes");
    assert_eq!(sent.len(), 40, "each of the 40 causes was sent exactly once");
}

/// Review (rev-rgate): a gate restored with a cause it claimed in a failed round, where that
/// cause digest comes back in two groups (two kinds of one tenant) alongside a fresh cause. Only
/// the first member is this gate's without a claim; the others' claim outcomes must stay with
/// their own members. Before the fix the batch's outcomes shifted by one: the fresh cause was
/// claimed in the store but held back as `repeat`, lost forever.
#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_remembered_cause_in_two_groups_does_not_shift_the_batch_outcomes() {
    use sos_core::{Sha256Digest, SignalKind};
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let store = SqliteStore::new(database.pool().clone());
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let shared = Sha256Digest::of(b"shared cause");
    let fresh = Sha256Digest::of(b"fresh cause");
    let mut state = trusted_gate(grouping.clone(), generous_trust()).state();
    // As an older release saved it: (tenant, cause), for the first member of any kind.
    state.claimed_unsent.insert(sos_ruliads::gate::ClaimedCause::Unscoped(tenant(), shared));
    let mut gate = Gate::restore(grouping, generous_trust(), state).expect("valid state");
    let fired = || {
        [("lead-rhythm", shared), ("stale-deal-nudge", shared), ("win-back", fresh)]
            .into_iter()
            .enumerate()
            .map(|(ruliad, (kind, cause))| {
                let signal = Signal::builder(tenant(), SignalKind::new(kind).expect("slug"))
                    .subject(kind)
                    .text("Look at this.")
                    .observed_at(at(10, 9))
                    .cause(cause)
                    .build()
                    .expect("valid signal");
                Fired::new(0, ruliad, Class::Insight, signal)
            })
            .collect::<Vec<_>>()
    };
    let round = gate.round(&store, at(10, 9), fired()).await.expect("works");
    let sent: Vec<&str> = round.released_signals().map(|signal| signal.kind().as_str()).collect();
    assert!(sent.contains(&"win-back"), "the fresh cause this gate claimed is sent: {round:?}");
    assert_eq!(reasons(&round, Reason::Repeat), 0, "nothing here was claimed elsewhere: {round:?}");
    assert_eq!(sent.len(), 3, "{round:?}");
    let again = gate.round(&store, at(10, 10), fired()).await.expect("works");
    assert!(again.released.is_empty(), "and each is sent once: {again:?}");
}

/// A memory store whose claims of one cause digest fail while `failing` is set.
struct FailingCause {
    inner: MemoryStore,
    cause: sos_core::Sha256Digest,
    failing: std::sync::atomic::AtomicBool,
}

impl StateStore for FailingCause {
    async fn claim_cause(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        scope: &str,
        cause: &sos_core::Sha256Digest,
    ) -> sos_ruliads::Result<bool> {
        if *cause == self.cause && self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(sos_ruliads::Error::Storage("disk full".into()));
        }
        self.inner.claim_cause(now, tenant, scope, cause).await
    }
    async fn forget_causes_before(
        &self,
        tenant: &TenantId,
        before: DateTime<Utc>,
    ) -> sos_ruliads::Result<u64> {
        self.inner.forget_causes_before(tenant, before).await
    }
    async fn put(
        &self,
        now: DateTime<Utc>,
        tenant: &TenantId,
        key: &str,
        value: &serde_json::Value,
    ) -> sos_ruliads::Result<()> {
        self.inner.put(now, tenant, key, value).await
    }
    async fn get(&self, tenant: &TenantId, key: &str) -> sos_ruliads::Result<Option<serde_json::Value>> {
        self.inner.get(tenant, key).await
    }
}

/// Review finding: the gate remembered the causes it claimed but could not send yet by
/// (tenant, cause), while the store claims by (tenant, scope = kind, cause). A signal of another
/// kind with the same cause digest then passed as already claimed (sent without its own claim,
/// so a second evaluator could send it too), and the signal that really was claimed met its own
/// claim in the store and was dropped as `repeat`. Both now use (tenant, kind, cause).
#[test]
fn a_remembered_claim_belongs_to_its_kind_not_to_every_kind_with_that_cause() {
    let shared = sos_core::Sha256Digest::of(b"one cause, two kinds");
    let other = sos_core::Sha256Digest::of(b"another cause");
    let signal = |kind: &str, cause: sos_core::Sha256Digest| {
        Signal::builder(tenant(), kind.parse().expect("kind"))
            .subject(kind)
            .text("Look at this.")
            .cause(cause)
            .observed_at(at(10, 9))
            .build()
            .expect("valid")
    };
    let store = FailingCause { inner: MemoryStore::new(), cause: other, failing: true.into() };
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    // Round 1: "b-kind" claims the shared cause, then the claim of "c-kind" fails: nothing is
    // sent and "b-kind"'s claim is remembered as this gate's.
    let first = vec![
        Fired::new(0, 0, Class::Insight, signal("b-kind", shared)),
        Fired::new(1, 1, Class::Insight, signal("c-kind", other)),
    ];
    futures::executor::block_on(gate.round(&store, at(10, 9), first)).expect_err("the claim fails");
    let remembered = &gate.state().claimed_unsent;
    assert_eq!(remembered.len(), 1);
    assert!(
        remembered.contains(&sos_ruliads::gate::ClaimedCause::of(&signal("b-kind", shared))),
        "{remembered:?}"
    );
    // Round 2: an "a-kind" signal with the same cause digest comes first in the round.
    store.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    let second = vec![Fired::new(2, 2, Class::Insight, signal("a-kind", shared))];
    let round = futures::executor::block_on(gate.round(&store, at(10, 10), second)).expect("works");
    let mut sent: Vec<&str> = round.released_signals().map(|signal| signal.kind().as_str()).collect();
    sent.sort_unstable();
    assert_eq!(sent, ["a-kind", "b-kind", "c-kind"], "{:?}", round.suppressed);
    assert!(round.suppressed.is_empty(), "{:?}", round.suppressed);
    // "a-kind" was sent under its own claim: another evaluator cannot claim it again.
    let again =
        futures::executor::block_on(store.inner.claim_cause(at(10, 11), &tenant(), "a-kind", &shared));
    assert!(!again.expect("memory store works"), "a-kind's cause was claimed before it was sent");
}

/// A remembered claim saved by an earlier release as `[tenant, cause]` still loads, and still
/// stands for that cause.
#[test]
fn an_unscoped_remembered_claim_from_an_older_state_still_loads() {
    let mut gate = trusted_gate(GroupingConfig::default(), generous_trust());
    let mut saved = serde_json::to_value(gate.state()).expect("serializes");
    let cause = sos_core::Sha256Digest::of(b"old");
    saved["claimed_unsent"] = serde_json::json!([["acme", cause]]);
    let state: GateState = serde_json::from_value(saved).expect("the older form loads");
    assert!(state.claimed_unsent.contains(&sos_ruliads::gate::ClaimedCause::Unscoped(tenant(), cause)));
    gate = Gate::restore(GroupingConfig::default(), generous_trust(), state).expect("valid");
    let round_trip = serde_json::to_value(gate.state()).expect("serializes");
    assert_eq!(round_trip["claimed_unsent"], serde_json::json!([["acme", cause]]));
}

/// A signal of `kind` with the host's own cause digest, the same for every kind.
fn with_shared_cause(kind: &str, now: DateTime<Utc>) -> Fired {
    let signal = Signal::builder(tenant(), kind.parse().expect("kind"))
        .subject("Deal 42")
        .text("Deal 42 needs attention.")
        .observed_at(now)
        .cause(sos_core::Sha256Digest::of(b"deal-42@2026-03-10"))
        .build()
        .expect("valid");
    Fired::new(0, 0, Class::Insight, signal)
}

/// Review finding (`replay-same` across kinds), on the gate's whole path: a cause notified for
/// one kind held back a later signal of another kind with the same cause digest as `repeat`
/// (the repeat check was keyed by (tenant, cause)), although the store claims causes per kind
/// and sends both when they are due in one round. Now each kind is sent once, whatever the
/// round, and a repeat of either is held back.
async fn a_cause_is_sent_once_per_kind<S: StateStore>(store: &S) {
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    let first =
        gate.round(store, at(10, 9), vec![with_shared_cause("deal-lost", at(10, 9))]).await.expect("round");
    assert_eq!(first.released_signals().count(), 1, "{first:?}");
    let both = |now| vec![with_shared_cause("deal-lost", now), with_shared_cause("stale-deal-nudge", now)];
    let second = gate.round(store, at(10, 10), both(at(10, 10))).await.expect("round");
    let sent: Vec<&str> = second.released_signals().map(|signal| signal.kind().as_str()).collect();
    assert_eq!(sent, ["stale-deal-nudge"], "{second:?}");
    assert_eq!(reasons(&second, Reason::Repeat), 1, "the deal-lost signal is a repeat: {second:?}");
    let third = gate.round(store, at(10, 11), both(at(10, 11))).await.expect("round");
    assert!(third.released.is_empty(), "{third:?}");
    assert_eq!(reasons(&third, Reason::Repeat), 2, "{third:?}");
}

#[tokio::test]
async fn a_cause_is_sent_once_per_kind_memory() {
    a_cause_is_sent_once_per_kind(&MemoryStore::new()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn a_cause_is_sent_once_per_kind_sqlite() {
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    a_cause_is_sent_once_per_kind(&SqliteStore::new(database.pool().clone())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn a_cause_is_sent_once_per_kind_postgres() {
    use sos_ruliads::store::{PgStore, postgres_migrator};
    let database = sos_testkit::PgTestDatabase::new(&[&postgres_migrator()]).await;
    a_cause_is_sent_once_per_kind(&PgStore::new(database.pool().clone())).await;
}

/// `with_shared_cause` for `tenant`.
fn with_shared_cause_for(tenant: &str, now: DateTime<Utc>) -> Fired {
    let signal =
        Signal::builder(tenant.parse().expect("valid tenant"), "stale-deal-nudge".parse().expect("kind"))
            .subject("Deal 42")
            .text("Deal 42 needs attention.")
            .observed_at(now)
            .cause(sos_core::Sha256Digest::of(b"deal-42@2026-03-10"))
            .build()
            .expect("valid");
    Fired::new(0, 0, Class::Insight, signal)
}

/// Named shape `tenant-crosstalk` on the gate's whole path: two tenants' signals of one kind with
/// the same cause digest (a host's own cause that ignores the tenant) are two signals. The
/// repeat check, the claim and the claims remembered unsent are keyed by (tenant, kind, cause),
/// so neither tenant's signal holds back the other's, in one round or across rounds, and each is
/// still sent once.
async fn tenant_crosstalk_the_gate_claims_a_cause_per_tenant<S: StateStore>(store: &S) {
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let mut gate = trusted_gate(grouping, generous_trust());
    let first =
        gate.round(store, at(10, 9), vec![with_shared_cause_for("acme", at(10, 9))]).await.expect("round");
    assert_eq!(first.released_signals().count(), 1, "{first:?}");
    let both = |now| vec![with_shared_cause_for("acme", now), with_shared_cause_for("globex", now)];
    let second = gate.round(store, at(10, 10), both(at(10, 10))).await.expect("round");
    let sent: Vec<&str> = second.released_signals().map(|signal| signal.tenant().as_str()).collect();
    assert_eq!(sent, ["globex"], "acme's cause must not hold back globex's signal: {second:?}");
    assert_eq!(reasons(&second, Reason::Repeat), 1, "acme's signal is a repeat: {second:?}");
    let third = gate.round(store, at(10, 11), both(at(10, 11))).await.expect("round");
    assert!(third.released.is_empty(), "{third:?}");
    assert_eq!(reasons(&third, Reason::Repeat), 2, "{third:?}");
    // A second gate (another evaluator) sharing the store: each tenant's claim is taken, and
    // only that tenant's.
    let mut other =
        trusted_gate(GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() }, generous_trust());
    let elsewhere = other
        .round(
            store,
            at(10, 12),
            vec![with_shared_cause_for("initech", at(10, 12)), with_shared_cause_for("acme", at(10, 12))],
        )
        .await
        .expect("round");
    let sent: Vec<&str> = elsewhere.released_signals().map(|signal| signal.tenant().as_str()).collect();
    assert_eq!(sent, ["initech"], "{elsewhere:?}");
}

#[tokio::test]
async fn tenant_crosstalk_the_gate_claims_a_cause_per_tenant_memory() {
    tenant_crosstalk_the_gate_claims_a_cause_per_tenant(&MemoryStore::new()).await;
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn tenant_crosstalk_the_gate_claims_a_cause_per_tenant_sqlite() {
    use sos_ruliads::store::{SqliteStore, sqlite_migrator};
    let database = sos_testkit::SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    tenant_crosstalk_the_gate_claims_a_cause_per_tenant(&SqliteStore::new(database.pool().clone())).await;
}

#[cfg(feature = "postgres")]
#[tokio::test]
async fn tenant_crosstalk_the_gate_claims_a_cause_per_tenant_postgres() {
    use sos_ruliads::store::{PgStore, postgres_migrator};
    let database = sos_testkit::PgTestDatabase::new(&[&postgres_migrator()]).await;
    tenant_crosstalk_the_gate_claims_a_cause_per_tenant(&PgStore::new(database.pool().clone())).await;
}

/// One round's input of the seed-order scenario: four tenants, each with 30 entities that come
/// and go (flapping), causes shared across tenants, host-set ids shared across tenants, and
/// inhibiting sources with labels.
fn seed_order_batch(round: u32, now: DateTime<Utc>) -> Vec<Fired> {
    let mut fired = Vec::new();
    for (number, tenant) in ["umbrella", "acme", "initech", "globex"].into_iter().enumerate() {
        let tenant_id: TenantId = tenant.parse().expect("valid tenant");
        for entity in 0..30_u32 {
            if (entity + round).is_multiple_of(3) {
                continue;
            }
            let id = sos_core::SignalId::from_uuid(uuid::Uuid::from_u128(u128::from(entity) + 1));
            let signal = Signal::builder(tenant_id.clone(), "stale-deal-nudge".parse().expect("kind"))
                .id(id)
                .subject(format!("Deal {entity}"))
                .text("It needs attention.")
                .observed_at(now)
                .cause(sos_core::Sha256Digest::of(format!("deal-{entity}-{}", round / 4).as_bytes()))
                .build()
                .expect("valid");
            fired.push(Fired::new(entity as usize, 0, Class::Insight, signal));
            let mut why = Explain::new();
            why.label("deal_id", format!("d{}", entity % 7));
            let labelled = why
                .fire(
                    Draft::new(&tenant_id, "deal-at-risk", now)
                        .subject(format!("Deal {entity} at risk"))
                        .text("Risk."),
                )
                .into_signal()
                .expect("valid");
            fired.push(Fired::new(entity as usize, 1, Class::Intervention, labelled));
        }
        if (round + number as u32).is_multiple_of(2) {
            let mut why = Explain::new();
            why.label("deal_id", format!("d{}", round % 7));
            let lost = why
                .fire(Draft::new(&tenant_id, "deal-lost", now).subject("A deal was lost").text("Lost."))
                .into_signal()
                .expect("valid");
            fired.push(Fired::new(99, 2, Class::Insight, lost));
        }
    }
    fired
}

/// Runs the seed-order scenario through a fresh gate (its maps draw fresh keys) and returns
/// everything it let out, byte for byte: each round, the saved state, the suppression log and
/// the `Debug` of the gate.
fn seed_order_transcript() -> String {
    let grouping = GroupingConfig {
        group_wait_seconds: 0,
        group_interval_seconds: 1,
        repeat_interval_seconds: 1_800,
        flap_window_seconds: 3_600,
        flap_threshold: 3,
        inhibit: vec![InhibitRule {
            source: "deal-lost".into(),
            target: "deal-at-risk".into(),
            equal: vec!["deal_id".into()],
        }],
        ..GroupingConfig::default()
    };
    let store = MemoryStore::new();
    let mut gate = trusted_gate(grouping.clone(), generous_trust());
    let mut transcript = String::new();
    for round in 0..12_u32 {
        let now = at(10, 9) + TimeDelta::minutes(i64::from(round) * 10);
        let outcome = futures::executor::block_on(gate.round(&store, now, seed_order_batch(round, now)))
            .expect("memory");
        transcript.push_str(&format!("round {round}: {outcome:?}\n"));
        if round == 6 {
            // Saved and restored half-way: the restored gate's maps draw new keys again.
            let saved = serde_json::to_string(&gate.state()).expect("serializes");
            let state: GateState = serde_json::from_str(&saved).expect("loads");
            gate = Gate::restore(grouping.clone(), generous_trust(), state).expect("valid");
        }
    }
    let state = gate.state();
    transcript.push_str(&serde_json::to_string(&state).expect("serializes"));
    transcript.push_str(&format!("\n{state:?}\n{gate:?}\n"));
    transcript.push_str(&format!("{:?}\n", gate.suppressed().collect::<Vec<_>>()));
    transcript
}

/// Named shape `seed-order`: the gate's maps are keyed per map and per process from the OS
/// random source, so nothing it lets out may follow their iteration order. Two gates (and a
/// second process) with different keys, on the same input, produce byte-identical rounds,
/// saved state, suppression log and `Debug`. Before, the `Debug` of the state listed flap
/// histories, notified causes, outstanding signals and the inhibitors' index in bucket order:
/// it differed between two gates, and a log of it showed which keys share buckets.
#[test]
fn seed_order_gates_with_different_seeds_agree_byte_for_byte() {
    let first = seed_order_transcript();
    assert!(first.contains("Inhibited") && first.contains("Cooldown") && first.contains("Repeat"), "{first}");
    for _ in 0..3 {
        let other = seed_order_transcript();
        if other != first {
            let at = first.bytes().zip(other.bytes()).position(|(a, b)| a != b).unwrap_or(0);
            let from = at.saturating_sub(200);
            panic!(
                "two gates disagree at byte {at}:\n{}\n---\n{}",
                &first[from..(at + 200).min(first.len())],
                &other[from..(at + 200).min(other.len())]
            );
        }
    }
    // Another process draws another process seed.
    let output = std::process::Command::new(std::env::current_exe().expect("the test binary"))
        .args(["--exact", "gate::seed_order_child_transcript", "--nocapture", "--test-threads=1"])
        .env("SOS_RULIADS_SEED_ORDER_CHILD", "1")
        .output()
        .expect("the test binary runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let digest = stdout
        .lines()
        .find_map(|line| line.split_once("seed-order-transcript=").map(|(_, digest)| digest.to_owned()))
        .unwrap_or_else(|| panic!("the child printed its transcript: {stdout}"));
    assert_eq!(digest, sos_core::Sha256Digest::of(first.as_bytes()).to_hex(), "another process disagrees");
}

/// The child half of `seed_order_gates_with_different_seeds_agree_byte_for_byte`: prints the
/// digest of its transcript when asked to, and checks nothing otherwise.
#[test]
fn seed_order_child_transcript() {
    if std::env::var_os("SOS_RULIADS_SEED_ORDER_CHILD").is_some() {
        let digest = sos_core::Sha256Digest::of(seed_order_transcript().as_bytes()).to_hex();
        println!("seed-order-transcript={digest}");
    }
}

/// Named shape `tenant-crosstalk` on the gate's whole path: two tenants' signals with one
/// host-set id are released and await feedback each; one tenant's answer leaves the other's.
#[test]
fn tenant_crosstalk_the_gate_keeps_one_host_id_apart_per_tenant() {
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let (store, mut gate) = (MemoryStore::new(), trusted_gate(grouping, generous_trust()));
    let id = sos_core::SignalId::from_uuid(uuid::Uuid::from_u128(42));
    let of = |tenant: &str| {
        let signal =
            Signal::builder(tenant.parse().expect("valid tenant"), "stale-deal-nudge".parse().expect("kind"))
                .id(id)
                .subject("Deal 42")
                .text("It needs attention.")
                .observed_at(at(10, 9))
                .build()
                .expect("valid");
        Fired::new(0, 0, Class::Insight, signal)
    };
    let round = futures::executor::block_on(gate.round(&store, at(10, 9), vec![of("acme"), of("globex")]))
        .expect("memory");
    assert_eq!(round.released.len(), 2, "{round:?}");
    assert_eq!(gate.trust().state().outstanding.len(), 2);
    let globex: TenantId = "globex".parse().expect("valid");
    assert!(gate.trust_mut().feedback(at(10, 10), &globex, id, Feedback::Rejected));
    assert!(gate.trust().state().outstanding.get(&tenant(), id).is_some(), "acme's signal still awaits");
    assert!(!gate.trust_mut().feedback(at(10, 10), &globex, id, Feedback::Rejected));
}

/// An entity of the explanation-recycling test: a tenant's item with run-time words.
#[derive(Debug, Clone)]
struct Item {
    tenant: TenantId,
    id: String,
    words: Vec<String>,
}

/// A host rule that checks each of an item's words as interned text (so its explanation holds
/// run-time text of varying length), firing for items with an even number of words; its cause
/// covers the item and its word count, so an item that grows a word is news again.
#[derive(Debug)]
struct EveryWord;

impl sos_ruliads::Ruliad<Item> for EveryWord {
    fn name(&self) -> &str {
        "every-word"
    }
    fn class(&self) -> Class {
        Class::Insight
    }
    fn evaluate(&self, now: DateTime<Utc>, item: &Item) -> sos_ruliads::Evaluation {
        let mut why = Explain::new();
        let fired = self.evaluate_into(now, item, &mut why);
        why.into_evaluation(fired)
    }
    fn evaluate_into(&self, now: DateTime<Utc>, item: &Item, why: &mut Explain) -> Option<Signal> {
        use sos_ruliads::{Op, Predicate};
        for word in &item.words {
            let observed = why.text(word);
            why.check(Predicate::custom("word", observed, Op::Ne, "forbidden", true));
        }
        let count = item.words.len() as i64;
        if !why.check(Predicate::eq("even count", count % 2, 0)) {
            return why.stop_here();
        }
        why.label("item", item.id.clone()).label("words", count.to_string());
        why.fire_here(
            Draft::new(&item.tenant, "every-word", now).subject(item.id.clone()).text("Every word."),
        )
    }
}

/// A host rule with one short predicate, firing for every item: a buffer left over from a
/// longer explanation would show in its line.
#[derive(Debug)]
struct HasWords;

impl sos_ruliads::Ruliad<Item> for HasWords {
    fn name(&self) -> &str {
        "has-words"
    }
    fn class(&self) -> Class {
        Class::Insight
    }
    fn evaluate(&self, now: DateTime<Utc>, item: &Item) -> sos_ruliads::Evaluation {
        let mut why = Explain::new();
        let fired = self.evaluate_into(now, item, &mut why);
        why.into_evaluation(fired)
    }
    fn evaluate_into(&self, now: DateTime<Utc>, item: &Item, why: &mut Explain) -> Option<Signal> {
        use sos_ruliads::Predicate;
        why.check(Predicate::ge("words", item.words.len() as i64, 0));
        why.label("item", item.id.clone()).label("words", item.words.len().to_string());
        why.fire_here(Draft::new(&item.tenant, "has-words", now).subject(item.id.clone()).text("Has words."))
    }
}

/// The items of round `round`: two tenants; every third item grows a word every other round
/// (news again), the others stay as they are (held back as `repeat` once notified).
/// Items per tenant: enough that a serial batch's explanations fill more than one of the
/// engine's shared buffers (1,024 predicates each).
const RECYCLING_ITEMS: usize = 48;

fn recycling_items(round: usize) -> Vec<Item> {
    let mut items = Vec::new();
    for (tenant, prefix) in [("acme", "a"), ("globex", "g")] {
        for index in 0..RECYCLING_ITEMS {
            let grown = if index % 3 == 0 { round / 2 } else { 0 };
            let words = (0..index + grown)
                .map(|word| format!("{prefix}{index}-{}", "w".repeat(word % 7 + 1)))
                .collect();
            items.push(Item {
                tenant: tenant.parse().expect("valid tenant"),
                id: format!("{prefix}{index}"),
                words,
            });
        }
    }
    items
}

/// Named shape `tenant-crosstalk` on the gate's path: the gate writes each signal's `because`
/// line when it joins its group and hands the explanation buffer back to the thread's spare,
/// which the next evaluation records into. Over rounds where
/// some signals join, some are held back as `repeat` or `inhibited` (their explanations dropped,
/// not written) and some were pending already, for two tenants and two rules with run-time
/// text of different lengths, every released signal's `because` line is exactly the one its own
/// evaluation renders on a fresh thread: nothing of another signal, rule or tenant.
#[test]
fn recycled_explanation_never_leaks_into_another_signal() {
    // Serial (one range, its explanations over two shared buffers) and on two threads (a
    // range, and buffers, per thread).
    for (threads, threshold) in [(1, usize::MAX), (2, 8)] {
        let engine: Engine<Item> =
            Engine::new(vec![Box::new(HasWords), Box::new(EveryWord)]).with_parallelism(threads, threshold);
        let kept: usize = engine
            .evaluate_batch(at(10, 9), &recycling_items(0))
            .iter()
            .map(|fired| fired.explanation().map_or(0, |explanation| explanation.len()))
            .sum();
        assert!(kept > 1_024, "the batch's explanations fill more than one shared buffer: {kept}");
        recycled_explanations_are_each_signals_own(&engine);
    }
}

fn recycled_explanations_are_each_signals_own(engine: &Engine<Item>) {
    let grouping = GroupingConfig {
        // Rounds are 10 minutes apart: a group flushed in one round is not due in the next, so
        // its new members are still pending when they fire again a round later.
        group_wait_seconds: 0,
        group_interval_seconds: 1_500,
        inhibit: vec![InhibitRule {
            source: "every-word".into(),
            target: "has-words".into(),
            equal: vec!["item".into(), "words".into()],
        }],
        ..GroupingConfig::default()
    };
    let (store, mut gate) = (MemoryStore::new(), trusted_gate(grouping, generous_trust()));
    let mut released = 0;
    let mut held = std::collections::BTreeSet::new();
    let mut expected: std::collections::BTreeMap<sos_core::SignalId, String> =
        std::collections::BTreeMap::new();
    for round in 0..8_usize {
        let now = at(10, 9) + TimeDelta::minutes(round as i64 * 10);
        let items = recycling_items(round);
        // What each signal's own evaluation says (a signal's id stands for its words), rendered
        // on a thread whose spare buffer no gate ever touched; kept for the rounds in which a
        // pending signal is released later.
        let rendered: Vec<(sos_core::SignalId, String)> = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let mut rendered = Vec::new();
                    for item in &items {
                        for (_, evaluation) in engine.explain(now, item) {
                            if let Some(signal) = evaluation.into_signal() {
                                let because =
                                    signal.evidence()["because"].as_str().expect("traced").to_owned();
                                rendered.push((signal.id(), because));
                            }
                        }
                    }
                    rendered
                })
                .join()
                .expect("renders")
        });
        for (id, because) in rendered {
            assert_eq!(expected.insert(id, because.clone()).unwrap_or_else(|| because.clone()), because);
        }
        let outcome =
            futures::executor::block_on(engine.run(&mut gate, &store, now, &items)).expect("memory");
        held.extend(outcome.suppressed.iter().map(|suppressed| suppressed.reason));
        for signal in outcome.released_signals() {
            released += 1;
            let because = signal.evidence()["because"].as_str().expect("a because line");
            assert_eq!(Some(because), expected.get(&signal.id()).map(String::as_str), "{signal:?}");
            let prefix = if signal.tenant().as_str() == "acme" { "g" } else { "a" };
            for index in 0..RECYCLING_ITEMS {
                assert!(
                    !because.contains(&format!("{prefix}{index}-w")),
                    "another tenant's words: {because}"
                );
            }
        }
        // The spare buffer the next evaluation on this thread records into is empty.
        assert!(Explain::new().explanation().is_empty());
    }
    assert!(released >= 20, "released {released}");
    assert!(held.contains(&Reason::Repeat) && held.contains(&Reason::Inhibited), "{held:?}");
}

/// Named shape `seed-order`: the saved state's `Debug` (as a host logs it) says what the state
/// holds, not the history of the process that holds it. A group remembers the number its
/// grouper gave its (tenant, kind) when it was first flushed (a cache, never saved, not part of
/// the state's equality); a gate restored from the very same state has no such number. Before,
/// the `Debug` of the two equal states differed (`scope: Some(1)` against `scope: None`), and
/// showed in which order the agent's tenants were first notified.
#[test]
fn seed_order_a_restored_gate_prints_its_saved_state_as_the_original() {
    let grouping = GroupingConfig { group_wait_seconds: 0, ..GroupingConfig::default() };
    let (store, mut gate) = (MemoryStore::new(), trusted_gate(grouping.clone(), generous_trust()));
    let (engine, now) = (stale_engine(), at(10, 9));
    let mut batch = stale_deals(2);
    if let Record::Deal(deal) = &mut batch[1] {
        deal.tenant = "globex".parse().expect("valid tenant");
    }
    let round = run(&engine, &mut gate, &store, now, &batch);
    assert_eq!(round.released.len(), 2, "{round:?}");
    let state = gate.state();
    for restored in [
        Gate::restore(grouping.clone(), generous_trust(), state.clone()).expect("valid"),
        Gate::restore(
            grouping.clone(),
            generous_trust(),
            serde_json::from_str(&serde_json::to_string(&state).expect("saves")).expect("loads"),
        )
        .expect("valid"),
    ] {
        assert_eq!(restored.state(), state);
        assert_eq!(format!("{:?}", restored.state()), format!("{state:?}"));
        assert_eq!(format!("{:#?}", restored.state()), format!("{state:#?}"));
    }
    assert!(!format!("{state:?}").contains("scope"), "{state:?}");
}

/// A fired signal of tenant `["zeta", "alpha", "mid"][tenant]`, kind
/// `["deal-lost", "stale-deal-nudge"][kind]` and cause `cause` (its subject names the cause).
pub(crate) fn scoped_fired(tenant: usize, kind: usize, cause: u8) -> Fired {
    const TENANTS: [&str; 3] = ["zeta", "alpha", "mid"];
    const KINDS: [&str; 2] = ["deal-lost", "stale-deal-nudge"];
    let signal =
        Signal::builder(TENANTS[tenant].parse().expect("tenant"), KINDS[kind].parse().expect("kind"))
            .subject(format!("Deal {cause}"))
            .text("Needs attention.")
            .observed_at(at(10, 9))
            .cause(sos_core::Sha256Digest::of(&[cause]))
            .build()
            .expect("valid");
    Fired::new(usize::from(cause), kind, Class::Insight, signal)
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
    /// Named shapes `tenant-crosstalk`, `replay-same` and `seed-order` on the gate's whole path
    /// (grouping, claims in the store, trust): the grouper caches each group's scope number and
    /// the trust gate numbers tenants per agent, both anew on restore. A gate saved and restored
    /// at any points (from a clone or through JSON) releases, claims and holds back exactly what
    /// a gate that never was restored does, round after round, over several tenants and kinds.
    #[test]
    fn tenant_crosstalk_a_restored_gate_releases_as_the_live_one(
        steps in proptest::collection::vec(
            (
                proptest::prop_oneof![3 => 0_i64..4, 1 => 20_i64..30],
                proptest::collection::vec((0_usize..3, 0_usize..2, 0_u8..4), 0..6),
                proptest::prop_oneof![6 => proptest::strategy::Just(0_u8), 1 => proptest::strategy::Just(1_u8), 1 => proptest::strategy::Just(2_u8)],
            ),
            1..30,
        )
    ) {
        let grouping = GroupingConfig {
            group_wait_seconds: 3_600,
            group_interval_seconds: 3 * 3_600,
            repeat_interval_seconds: 86_400,
            flap_window_seconds: 6 * 3_600,
            flap_threshold: 3,
            inhibit: vec![InhibitRule { source: "deal-lost".into(), target: "stale-deal-nudge".into(), equal: vec![] }],
            ..GroupingConfig::default()
        };
        let (live_store, restored_store) = (MemoryStore::new(), MemoryStore::new());
        let mut live = trusted_gate(grouping.clone(), generous_trust());
        let mut restored = trusted_gate(grouping.clone(), generous_trust());
        let mut now = at(10, 9);
        for (hours, signals, restore) in steps {
            now += TimeDelta::hours(hours);
            let state = match restore {
                1 => Some(restored.state()),
                2 => Some(serde_json::from_str(&serde_json::to_string(&restored.state()).expect("saves")).expect("loads")),
                _ => None,
            };
            if let Some(state) = state {
                restored = Gate::restore(grouping.clone(), generous_trust(), state).expect("valid");
            }
            let fired = || signals.iter().map(|&(tenant, kind, cause)| scoped_fired(tenant, kind, cause)).collect::<Vec<_>>();
            let expected = futures::executor::block_on(live.round(&live_store, now, fired())).expect("memory");
            let actual = futures::executor::block_on(restored.round(&restored_store, now, fired())).expect("memory");
            proptest::prop_assert_eq!(&actual, &expected);
            proptest::prop_assert_eq!(format!("{actual:?}"), format!("{expected:?}"));
        }
    }
}

/// Named shape `tenant-crosstalk` in what a host logs: the engine keeps the explanations of a
/// batch's fired signals in buffers shared by up to 1,024 predicates' worth of signals, of any
/// rule, entity and tenant. The `Debug` of one [`Fired`] (as a host logs a signal it is about to
/// hand on) shows its own explanation only, exactly as the same signal fired on its own does:
/// before, it printed the whole shared buffer, with the words of other tenants' entities.
#[test]
fn tenant_crosstalk_a_fired_signals_debug_shows_only_its_own_explanation() {
    let engine: Engine<Item> =
        Engine::new(vec![Box::new(HasWords), Box::new(EveryWord)]).with_parallelism(1, usize::MAX);
    let (now, items) = (at(10, 9), recycling_items(0));
    let fired = engine.evaluate_batch(now, &items);
    assert!(fired.len() > 50);
    for one in &fired {
        let ruliad = &engine.ruliads()[one.ruliad];
        let alone = Fired::from_evaluation(
            one.entity,
            one.ruliad,
            one.class,
            ruliad.evaluate(now, &items[one.entity]),
        )
        .expect("fires alone too");
        let other = if one.signal.tenant().as_str() == "acme" { "g" } else { "a" };
        let printed = format!("{one:?}");
        for index in 0..RECYCLING_ITEMS {
            assert!(!printed.contains(&format!("{other}{index}-w")), "another tenant's words: {printed}");
        }
        assert_eq!(printed, format!("{alone:?}"));
    }
}
