//! PostgreSQL: transactional mode, the two-phase suite, and the child side of the
//! multi-process tests.

use std::sync::Arc;
use std::time::{Duration, Instant};

use sos_core::SystemClock;
use sos_testkit::PgTestDatabase;
use sos_webhooks::{EventKey, Outcome, PgStore, RunError, WebhookGuard, postgres_migrator};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

use crate::support::{Counts, key};

pub(crate) const EFFECTS_TABLE: &str =
    "CREATE TABLE handler_effects (tenant TEXT NOT NULL, event_id TEXT NOT NULL, worker TEXT NOT NULL)";

pub(crate) async fn database() -> PgTestDatabase {
    let migrator = postgres_migrator();
    let database = PgTestDatabase::with_pool_size(&[&migrator], 20).await;
    sqlx::query(EFFECTS_TABLE).execute(database.pool()).await.unwrap();
    database
}

pub(crate) async fn effects(pool: &PgPool, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM handler_effects WHERE event_id = $1")
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// One transactional delivery whose handler writes one effect row.
pub(crate) async fn deliver(
    guard: &WebhookGuard<PgStore>,
    key: &EventKey,
    body: &[u8],
    worker: &str,
) -> Result<Outcome<()>, RunError<sqlx::Error>> {
    let event = key.event_id().as_str().to_owned();
    let worker = worker.to_owned();
    guard
        .transactional(key, body, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO handler_effects (tenant, event_id, worker) VALUES ('acme', $1, $2)")
                    .bind(event)
                    .bind(worker)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// The child's work in the multi-process test: every event from each of `tasks` tasks.
pub(crate) async fn deliver_all(url: &str, events: usize, tasks: usize) -> Counts {
    let pool = PgPoolOptions::new().max_connections(tasks as u32).connect(url).await.unwrap();
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool), SystemClock));
    let worker = format!("pid-{}", std::process::id());
    let mut handles = Vec::new();
    for _ in 0..tasks {
        let guard = Arc::clone(&guard);
        let worker = worker.clone();
        handles.push(tokio::spawn(async move {
            let mut counts = Counts::default();
            for event in 0..events {
                let key = key("acme", &format!("evt_{event}"));
                let body = format!("{{\"id\":{event}}}");
                loop {
                    match deliver(&guard, &key, body.as_bytes(), &worker).await.unwrap() {
                        Outcome::Processed(()) => counts.processed += 1,
                        Outcome::AlreadyProcessed => counts.already += 1,
                        Outcome::RetryInFlight => {
                            counts.retries += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            continue;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                    break;
                }
            }
            counts
        }));
    }
    let mut total = Counts::default();
    for handle in handles {
        total.add(handle.await.unwrap());
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_phase_conformance() {
    let database = database().await;
    crate::conformance::two_phase_suite(PgStore::new(database.pool().clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_handler_error_leaves_nothing() {
    let database = database().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock);
    let event = key("acme", "evt_error");
    let result = guard
        .transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_error', 'failing')")
                    .execute(&mut **tx)
                    .await
                    .map_err(|error| error.to_string())?;
                Err::<(), _>("the handler failed after writing".to_owned())
            })
        })
        .await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    assert_eq!(result.unwrap_err().to_http().status().as_u16(), 500);
    assert_eq!(effects(database.pool(), "evt_error").await, 0, "the handler's write rolled back");
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM sos_webhook_events")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(records, 0, "no claim remains after a failed handler");
    assert_eq!(deliver(&guard, &event, b"{}", "retry").await.unwrap(), Outcome::Processed(()));
    assert_eq!(deliver(&guard, &event, b"{}", "again").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_error").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_retry_in_flight_answers_quickly_while_handler_runs() {
    let database = database().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    let event = key("acme", "evt_slow");
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let slow = {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        tokio::spawn(async move {
            guard
                .transactional(&event, b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_slow', 'slow')")
                            .execute(&mut **tx)
                            .await?;
                        let _ = started_sender.send(());
                        tokio::time::sleep(Duration::from_secs(2)).await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    let mut slowest = Duration::ZERO;
    for _ in 0..20 {
        let started = Instant::now();
        assert_eq!(deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
        slowest = slowest.max(started.elapsed());
    }
    // The goal is 50 ms p99 (measured in the benchmark); a loaded CI machine gets slack here,
    // but nowhere near the handler's 2 s.
    assert!(slowest < Duration::from_millis(500), "a duplicate waited {slowest:?}");
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
    assert_eq!(deliver(&guard, &event, b"{}", "late").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_slow").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_purge_never_races_an_in_flight_claim() {
    let database = database().await;
    let clock = crate::support::manual_clock();
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), clock.clone()));
    let old = key("acme", "evt_old");
    assert_eq!(deliver(&guard, &old, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    clock.advance(chrono::Duration::days(8));
    // A transactional claim in flight on another event while the purge runs.
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let in_flight = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            guard
                .transactional(&key("acme", "evt_in_flight"), b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_in_flight', 'w')")
                            .execute(&mut **tx)
                            .await?;
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    let purged =
        tokio::time::timeout(Duration::from_secs(5), guard.purge()).await.expect("purge never blocks");
    assert_eq!(purged.unwrap(), 1);
    release_sender.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), Outcome::Processed(()));
    assert_eq!(guard.purge().await.unwrap(), 0, "the fresh claim is inside the horizon");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_body_mismatch_in_transactional_mode() {
    let database = database().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock);
    let event = key("acme", "evt_mismatch");
    assert_eq!(deliver(&guard, &event, b"{\"amount\":1}", "w").await.unwrap(), Outcome::Processed(()));
    let outcome = deliver(&guard, &event, b"{\"amount\":9}", "w").await.unwrap();
    assert_eq!(outcome, Outcome::BodyMismatch);
    assert_eq!(outcome.to_http().status().as_u16(), 409);
    assert_eq!(effects(database.pool(), "evt_mismatch").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_read_first_answers_duplicates_and_still_claims() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_read_first(true);
    let guard =
        Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock).with_config(config));
    let event = key("acme", "evt_read_first");
    // Concurrent first deliveries: the read finds nothing for all of them, the claim decides.
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        tasks.push(tokio::spawn(async move {
            deliver(&guard, &event, b"{}", &format!("w{worker}")).await.unwrap()
        }));
    }
    let mut processed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Processed(()) => processed += 1,
            Outcome::AlreadyProcessed | Outcome::RetryInFlight => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(processed, 1);
    assert_eq!(deliver(&guard, &event, b"{}", "late").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(deliver(&guard, &event, b"{\"x\":1}", "late").await.unwrap(), Outcome::BodyMismatch);
    assert_eq!(effects(database.pool(), "evt_read_first").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_swallowed_statement_error_is_never_answered_processed() {
    let database = database().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock);
    let event = key("acme", "evt_swallowed");
    let result = guard
        .transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_swallowed', 'w')")
                    .execute(&mut **tx)
                    .await?;
                // A failed statement aborts the transaction; the handler wrongly ignores it.
                let _ = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await;
    assert!(matches!(result, Err(RunError::Guard(sos_webhooks::Error::TransactionAborted))), "{result:?}");
    assert_eq!(effects(database.pool(), "evt_swallowed").await, 0);
    assert_eq!(deliver(&guard, &event, b"{}", "retry").await.unwrap(), Outcome::Processed(()));
    assert_eq!(effects(database.pool(), "evt_swallowed").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_failure_reason_with_nul_is_recorded() {
    let database = database().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), crate::support::manual_clock());
    let event = key("acme", "evt_nul");
    let message = format!("upstream said: \u{0}{}", "é".repeat(400));
    let result = guard.two_phase(&event, b"{}", |_| async { Err::<(), _>(message.clone()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))), "{result:?}");
    let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::PriorAttemptFailed);
}
