use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use sos_core::{Sha256Digest, TenantId};
use sos_ruliads::ceiling::{
    Admission, Attempt, CeilingConfig, MemoryCeiling, PgCeiling, Refused, SqliteCeiling, TriggerCeiling,
};
use sos_ruliads::store::{postgres_migrator, sqlite_migrator};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

use crate::at;

fn tenant() -> TenantId {
    "acme".parse().expect("valid tenant")
}

fn attempt(cause: &str, attribute: &str) -> Attempt {
    Attempt { tenant: tenant(), cause: Sha256Digest::of(cause.as_bytes()), attribute: attribute.to_owned() }
}

/// The behaviour every backend shares.
async fn ceiling_suite<C: TriggerCeiling>(ceiling: &C) {
    let now = at(10, 9);
    assert_eq!(ceiling.try_start(now, &attempt("a", "email")).await.expect("ok"), Admission::Started);
    assert_eq!(ceiling.try_start(now, &attempt("b", "sms")).await.expect("ok"), Admission::Started);
    assert_eq!(ceiling.running(&tenant()).await.expect("ok"), 2);
    assert_eq!(
        ceiling.try_start(now, &attempt("c", "sms")).await.expect("ok"),
        Admission::Refused(Refused::Ceiling)
    );
    // Another tenant has its own ceiling.
    let other = Attempt { tenant: "globex".parse().expect("tenant"), ..attempt("c", "") };
    assert_eq!(ceiling.try_start(now, &other).await.expect("ok"), Admission::Started);
    assert!(ceiling.finish(now, &tenant(), &Sha256Digest::of(b"a")).await.expect("ok"));
    assert!(!ceiling.finish(now, &tenant(), &Sha256Digest::of(b"a")).await.expect("ok"), "finished once");
    assert_eq!(ceiling.running(&tenant()).await.expect("ok"), 1);
    // A refused cause may try again once there is room; a started one never again (replay-same).
    assert_eq!(ceiling.try_start(now, &attempt("c", "sms")).await.expect("ok"), Admission::Started);
    assert!(ceiling.finish(now, &tenant(), &Sha256Digest::of(b"c")).await.expect("ok"));
    // Refusals are listed by time (ties in no particular order), so the replay comes later.
    let later = at(10, 10);
    assert_eq!(
        ceiling.try_start(later, &attempt("a", "email")).await.expect("ok"),
        Admission::Refused(Refused::Replay)
    );
    let refusals = ceiling.refusals(&tenant()).await.expect("ok");
    let reasons: Vec<_> = refusals.iter().map(|refusal| refusal.reason).collect();
    assert_eq!(reasons, [Refused::Ceiling, Refused::Replay]);
    assert_eq!(refusals[1].cause, Sha256Digest::of(b"a").to_hex());
    assert!(ceiling.refusals(&"globex".parse().expect("tenant")).await.expect("ok").is_empty());
}

async fn per_attribute_suite<C: TriggerCeiling>(ceiling: &C) {
    let now = at(10, 9);
    assert_eq!(ceiling.try_start(now, &attempt("e1", "email")).await.expect("ok"), Admission::Started);
    assert_eq!(
        ceiling.try_start(now, &attempt("e2", "email")).await.expect("ok"),
        Admission::Refused(Refused::Ceiling)
    );
    assert_eq!(ceiling.try_start(now, &attempt("s1", "sms")).await.expect("ok"), Admission::Started);
    assert_eq!(
        ceiling.try_start(now, &attempt("s2", "sms")).await.expect("ok"),
        Admission::Refused(Refused::Ceiling)
    );
}

const PER_ATTRIBUTE: CeilingConfig = CeilingConfig { global: 3, per_attribute: Some(1) };

#[test]
fn refusals_map_to_suppression_reasons() {
    use sos_ruliads::trust::Reason;
    assert_eq!(Refused::Ceiling.reason(), Reason::Ceiling);
    assert_eq!(Refused::Replay.reason(), Reason::Repeat);
    assert_eq!(Reason::Ceiling.to_string(), "ceiling");
}

#[tokio::test]
async fn memory_ceiling_behaves() {
    ceiling_suite(&MemoryCeiling::new(CeilingConfig::default())).await;
    per_attribute_suite(&MemoryCeiling::new(PER_ATTRIBUTE)).await;
}

#[tokio::test]
async fn sqlite_ceiling_behaves() {
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    ceiling_suite(&SqliteCeiling::new(database.pool().clone(), CeilingConfig::default())).await;
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    per_attribute_suite(&SqliteCeiling::new(database.pool().clone(), PER_ATTRIBUTE)).await;
}

#[tokio::test]
async fn postgres_ceiling_behaves() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    ceiling_suite(&PgCeiling::new(database.pool().clone(), CeilingConfig::default())).await;
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    per_attribute_suite(&PgCeiling::new(database.pool().clone(), PER_ATTRIBUTE)).await;
}

/// 16 concurrent attempts, half of them replays of the other half's causes; each started trigger
/// runs a little while. Returns (started, refused).
async fn sixteen_attempts<C: TriggerCeiling + 'static>(ceiling: Arc<C>, prefix: &str) -> (usize, usize) {
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for index in 0..16 {
        let (ceiling, running, peak) = (ceiling.clone(), running.clone(), peak.clone());
        let cause = format!("{prefix}-{}", index % 8);
        tasks.push(tokio::spawn(async move {
            let attempt = attempt(&cause, "");
            match ceiling.try_start(at(10, 9), &attempt).await.expect("store works") {
                Admission::Started => {
                    let now_running = running.fetch_add(1, Ordering::SeqCst) + 1;
                    peak.fetch_max(now_running, Ordering::SeqCst);
                    assert!(ceiling.running(&attempt.tenant).await.expect("ok") <= 2);
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    assert!(ceiling.finish(at(10, 9), &attempt.tenant, &attempt.cause).await.expect("ok"));
                    true
                }
                Admission::Refused(_) => false,
            }
        }));
    }
    let mut started = 0;
    for task in tasks {
        if task.await.expect("task") {
            started += 1;
        }
    }
    assert!(peak.load(Ordering::SeqCst) <= 2, "peak {}", peak.load(Ordering::SeqCst));
    assert!((1..=8).contains(&started), "never a replay: {started} started");
    (started, 16 - started)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_tasks_on_postgres() {
    let database = PgTestDatabase::with_pool_size(&[&postgres_migrator()], 20).await;
    let ceiling = Arc::new(PgCeiling::new(database.pool().clone(), CeilingConfig::default()));
    let (started, refused) = sixteen_attempts(ceiling.clone(), "pg").await;
    assert_eq!(ceiling.refusals(&tenant()).await.expect("ok").len(), refused);
    assert_eq!(ceiling.running(&tenant()).await.expect("ok"), 0);
    assert!(started + refused == 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_tasks_on_sqlite() {
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let ceiling = Arc::new(SqliteCeiling::new(database.pool().clone(), CeilingConfig::default()));
    let (_, refused) = sixteen_attempts(ceiling.clone(), "lite").await;
    assert_eq!(ceiling.refusals(&tenant()).await.expect("ok").len(), refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_concurrent_tasks_in_memory() {
    let ceiling = Arc::new(MemoryCeiling::new(CeilingConfig::default()));
    let (_, refused) = sixteen_attempts(ceiling.clone(), "mem").await;
    assert_eq!(ceiling.refusals(&tenant()).await.expect("ok").len(), refused);
}

fn unix_millis() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis()
}

fn spawn_child(test: &str, url: &str, start: u128) -> std::process::Child {
    std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env("SOS_CHILD_ROLE", "ruliads-ceiling")
        .env("SOS_CHILD_URL", url)
        .env("SOS_CHILD_START", start.to_string())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn child")
}

/// What one child reports: the causes it started, each with the instants (Unix µs) between
/// which it held its slot.
fn started_in(child: std::process::Child) -> Vec<(String, u128, u128)> {
    let output = child.wait_with_output().expect("child ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "child failed: {stdout}");
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("STARTED="))
        .unwrap_or_else(|| panic!("child printed no report: {stdout}"));
    line.split(',')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let mut parts = entry.split(':');
            let mut next = || parts.next().expect("cause:from:to").to_owned();
            let (cause, from, to) = (next(), next(), next());
            (cause, from.parse().expect("micros"), to.parse().expect("micros"))
        })
        .collect()
}

/// Both processes' reports together: never a cause started twice, never more than `ceiling`
/// triggers holding a slot at the same instant. Returns how many started.
fn check_across_processes(reports: Vec<Vec<(String, u128, u128)>>, ceiling: usize) -> usize {
    let started: Vec<(String, u128, u128)> = reports.into_iter().flatten().collect();
    let causes: std::collections::BTreeSet<&String> = started.iter().map(|(cause, _, _)| cause).collect();
    assert_eq!(causes.len(), started.len(), "a cause started twice across processes: {started:?}");
    let mut events: Vec<(u128, i32)> =
        started.iter().flat_map(|(_, from, to)| [(*from, 1), (*to, -1)]).collect();
    // At equal instants the end comes first: the slot was freed before the next one held it.
    events.sort_by_key(|(at, delta)| (*at, *delta));
    let (mut running, mut peak) = (0, 0);
    for (_, delta) in events {
        running += delta;
        peak = peak.max(running);
    }
    assert!(peak as usize <= ceiling, "{peak} triggers ran at once across processes");
    started.len()
}

/// The child half of the two-process tests: 8 concurrent attempts on causes shared with the
/// other child. Without `SOS_CHILD_ROLE` it runs the same attempts on an in-memory ceiling, so
/// it still checks the ceiling when run on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn child_ceiling_process() {
    let role = std::env::var("SOS_CHILD_ROLE").unwrap_or_default();
    let url = std::env::var("SOS_CHILD_URL").unwrap_or_default();
    if role != "ruliads-ceiling" {
        sixteen_attempts(Arc::new(MemoryCeiling::new(CeilingConfig::default())), "solo").await;
        return;
    }
    // Both children start at the same instant, so their attempts race.
    let start: u128 = std::env::var("SOS_CHILD_START").expect("start").parse().expect("millis");
    tokio::time::sleep(Duration::from_millis(start.saturating_sub(unix_millis()) as u64)).await;
    let started = if url.starts_with("postgres") {
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(10).connect(&url).await.expect("connect");
        eight_attempts(Arc::new(PgCeiling::new(pool, CeilingConfig::default()))).await
    } else {
        let path = url.trim_start_matches("sqlite://");
        let pool = sos_testkit::sqlite_pool(std::path::Path::new(path), 8).await;
        eight_attempts(Arc::new(SqliteCeiling::new(pool, CeilingConfig::default()))).await
    };
    let report: Vec<String> =
        started.iter().map(|(cause, from, to)| format!("{cause}:{from}:{to}")).collect();
    // On its own line: libtest prints the test name before the test's output.
    println!("\nSTARTED={}", report.join(","));
}

fn unix_micros() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_micros()
}

/// 8 concurrent attempts on 6 causes shared with the other process; returns the causes started,
/// with the instants between which each held its slot.
async fn eight_attempts<C: TriggerCeiling + 'static>(ceiling: Arc<C>) -> Vec<(String, u128, u128)> {
    let mut tasks = Vec::new();
    for index in 0..8 {
        let ceiling = ceiling.clone();
        tasks.push(tokio::spawn(async move {
            let cause = format!("shared-{}", index % 6);
            let attempt = attempt(&cause, "");
            match ceiling.try_start(at(10, 9), &attempt).await.expect("store works") {
                Admission::Started => {
                    // The slot is held from the admission until `finish` returns; the interval
                    // reported lies inside it.
                    let from = unix_micros();
                    assert!(ceiling.running(&attempt.tenant).await.expect("ok") <= 2);
                    tokio::time::sleep(Duration::from_millis(40)).await;
                    assert!(ceiling.running(&attempt.tenant).await.expect("ok") <= 2);
                    let to = unix_micros();
                    ceiling.finish(at(10, 9), &attempt.tenant, &attempt.cause).await.expect("ok");
                    Some((cause, from, to))
                }
                Admission::Refused(_) => None,
            }
        }));
    }
    let mut started = Vec::new();
    for task in tasks {
        started.extend(task.await.expect("task"));
    }
    started
}

#[tokio::test]
async fn two_processes_share_the_postgres_ceiling() {
    let database = PgTestDatabase::new(&[&postgres_migrator()]).await;
    let start = unix_millis() + 1_500;
    let children: Vec<_> =
        (0..2).map(|_| spawn_child("ceiling::child_ceiling_process", database.url(), start)).collect();
    let started = check_across_processes(children.into_iter().map(started_in).collect(), 2);
    assert!((1..=6).contains(&started), "6 distinct causes, never a replay: {started} started");
    let ceiling = PgCeiling::new(database.pool().clone(), CeilingConfig::default());
    assert_eq!(ceiling.refusals(&tenant()).await.expect("ok").len(), 16 - started);
    assert_eq!(ceiling.running(&tenant()).await.expect("ok"), 0);
}

#[tokio::test]
async fn two_processes_share_the_sqlite_ceiling() {
    let database = SqliteTestDatabase::new(&[&sqlite_migrator()]).await;
    let start = unix_millis() + 1_500;
    let children: Vec<_> =
        (0..2).map(|_| spawn_child("ceiling::child_ceiling_process", &database.url(), start)).collect();
    let started = check_across_processes(children.into_iter().map(started_in).collect(), 2);
    assert!((1..=6).contains(&started), "{started} started");
    let ceiling = SqliteCeiling::new(database.pool().clone(), CeilingConfig::default());
    assert_eq!(ceiling.refusals(&tenant()).await.expect("ok").len(), 16 - started);
}
