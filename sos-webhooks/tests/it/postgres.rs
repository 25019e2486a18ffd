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

/// A worker whose clock is `skew` ahead of the database's (and of the claiming worker's).
fn skewed_clock(skew: chrono::Duration) -> sos_core::ManualClock {
    sos_core::ManualClock::new(chrono::Utc::now() + skew)
}

/// Claims `event` in two-phase mode on `guard` with a handler that hangs until the returned
/// sender is used (or dropped).
async fn hold_claim(
    guard: Arc<WebhookGuard<PgStore>>,
    event: &EventKey,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<Outcome<()>, RunError<String>>>) {
    let (claimed_sender, claimed_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let event = event.clone();
    let holder = tokio::spawn(async move {
        guard
            .two_phase(&event, b"{}", |_| async move {
                let _ = claimed_sender.send(());
                let _ = release_receiver.await;
                Ok::<_, String>(())
            })
            .await
    });
    claimed_receiver.await.unwrap();
    (release_sender, holder)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_phase_database_clock_skewed_worker_cannot_take_over_a_live_lease() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_lease(Duration::from_secs(30)).unwrap();
    let store = PgStore::new(database.pool().clone()).with_database_clock(true);
    assert!(store.database_clock());
    let holder_guard = Arc::new(WebhookGuard::new(store.clone(), SystemClock).with_config(config));
    let event = key("acme", "evt_skew");
    let (release, holder) = hold_claim(Arc::clone(&holder_guard), &event).await;
    // A worker whose clock is an hour ahead: by its clock the 30 s lease ended long ago.
    let skewed = WebhookGuard::new(store, skewed_clock(chrono::Duration::hours(1))).with_config(config);
    let outcome = skewed.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::RetryInFlight, "the database's clock says the lease is live");
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()), "the holder kept its claim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_phase_database_clock_times_takeover_and_failure_delay() {
    let database = database().await;
    let lease = Duration::from_millis(800);
    let config = sos_webhooks::GuardConfig::default()
        .with_lease(lease)
        .unwrap()
        .with_failed_retry_after(Duration::from_millis(800));
    let store = PgStore::new(database.pool().clone()).with_database_clock(true);
    let holder_guard = Arc::new(WebhookGuard::new(store.clone(), SystemClock).with_config(config));
    let event = key("acme", "evt_db_clock");
    let (_release, holder) = hold_claim(Arc::clone(&holder_guard), &event).await;
    // A worker an hour *behind*: by its clock the lease has not even started, yet once the
    // database's clock passes the lease it takes over, exactly once.
    let behind = Arc::new(
        WebhookGuard::new(store.clone(), skewed_clock(chrono::Duration::hours(-1))).with_config(config),
    );
    let early = behind.two_phase(&event, b"{}", |_| async { Ok::<_, String>(0) }).await.unwrap();
    assert_eq!(early, Outcome::RetryInFlight);
    tokio::time::sleep(lease + Duration::from_millis(200)).await;
    let takeover = behind
        .two_phase(&event, b"{}", |claim| async move { Ok::<_, String>(claim.attempt()) })
        .await
        .unwrap();
    assert_eq!(takeover, Outcome::Processed(2), "the database's clock ended the lease");
    holder.abort();
    // A failure, then a worker an hour ahead: the failure delay is the database's too.
    let failing = key("acme", "evt_db_clock_failed");
    let result = holder_guard.two_phase(&failing, b"{}", |_| async { Err::<(), _>("502".to_owned()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    let ahead = WebhookGuard::new(store, skewed_clock(chrono::Duration::hours(1))).with_config(config);
    let outcome = ahead.two_phase(&failing, b"{}", |_| async { Ok::<_, String>(0) }).await.unwrap();
    assert_eq!(outcome, Outcome::PriorAttemptFailed, "the delay has not passed on the database's clock");
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let outcome = ahead
        .two_phase(&failing, b"{}", |claim| async move { Ok::<_, String>(claim.attempt()) })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Processed(2), "re-claimed after the delay");
}

/// With the guard's clock (the default) the bound is documented, not removed: a worker whose
/// clock is ahead by less than the lease left waits; one ahead by more takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_phase_guard_clock_skew_bound_is_the_lease_left() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_lease(Duration::from_secs(60)).unwrap();
    let store = PgStore::new(database.pool().clone());
    assert!(!store.database_clock());
    let holder_guard = Arc::new(WebhookGuard::new(store.clone(), SystemClock).with_config(config));
    let event = key("acme", "evt_guard_clock");
    let (_release, holder) = hold_claim(Arc::clone(&holder_guard), &event).await;
    let within =
        WebhookGuard::new(store.clone(), skewed_clock(chrono::Duration::seconds(30))).with_config(config);
    let outcome = within.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::RetryInFlight, "30 s of skew inside a 60 s lease");
    let beyond = WebhookGuard::new(store, skewed_clock(chrono::Duration::seconds(90))).with_config(config);
    let outcome = beyond.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "90 s of skew exceeds the lease: the documented bound");
    holder.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_processed_cache_answers_known_duplicates_only() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_processed_cache(100);
    let guard =
        Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock).with_config(config));
    let event = key("acme", "evt_cached");
    assert_eq!(deliver(&guard, &event, b"{\"a\":1}", "w").await.unwrap(), Outcome::Processed(()));
    // Remove the record behind the guard's back: only the memory can answer now.
    sqlx::query("DELETE FROM sos_webhook_events").execute(database.pool()).await.unwrap();
    assert_eq!(deliver(&guard, &event, b"{\"a\":1}", "w").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(deliver(&guard, &event, b"{\"a\":2}", "w").await.unwrap(), Outcome::BodyMismatch);
    // A clone shares the memory; an event it never saw processed goes to the database.
    let clone = Arc::new((*guard).clone());
    assert_eq!(deliver(&clone, &event, b"{\"a\":1}", "w").await.unwrap(), Outcome::AlreadyProcessed);
    // An event in flight is never remembered: its duplicates are told to retry, and once it
    // commits they are told it is processed.
    let in_flight = key("acme", "evt_cached_in_flight");
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let guard = Arc::clone(&guard);
        let in_flight = in_flight.clone();
        tokio::spawn(async move {
            guard
                .transactional(&in_flight, b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO handler_effects VALUES ('acme', 'evt_cached_in_flight', 'h')",
                        )
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
    assert_eq!(deliver(&clone, &in_flight, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
    release_sender.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));
    assert_eq!(deliver(&clone, &in_flight, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
    // A handler that failed is never remembered either: the next delivery processes it.
    let failed = key("acme", "evt_cached_failed");
    let result =
        guard.transactional(&failed, b"{}", |_tx| Box::pin(async { Err::<(), _>("boom".to_owned()) })).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    assert_eq!(deliver(&guard, &failed, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    assert_eq!(effects(database.pool(), "evt_cached_in_flight").await, 1);
}

/// Named shape `toctou-dedupe` with the processed-event memory on: many tasks deliver the same
/// events at once, and each handler's effect still happens exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_processed_cache_concurrent_deliveries_exactly_once() {
    const EVENTS: usize = 50;
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_processed_cache(1000);
    let guard =
        Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock).with_config(config));
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let guard = Arc::clone(&guard);
        tasks.push(tokio::spawn(async move {
            let mut processed = 0;
            for event in 0..EVENTS {
                let event = key("acme", &format!("evt_{event}"));
                loop {
                    match deliver(&guard, &event, b"{}", &format!("w{worker}")).await.unwrap() {
                        Outcome::Processed(()) => processed += 1,
                        Outcome::AlreadyProcessed => {}
                        Outcome::RetryInFlight => {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                            continue;
                        }
                        other => panic!("unexpected answer {other:?}"),
                    }
                    break;
                }
            }
            processed
        }));
    }
    let mut processed = 0;
    for task in tasks {
        processed += task.await.unwrap();
    }
    assert_eq!(processed, EVENTS);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM handler_effects")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
}

/// "Never expires" (`Duration::MAX`) stays "never" when the database's clock times it: the
/// lease and the failure delay saturate instead of failing or ending at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_phase_database_clock_huge_durations_saturate_safely() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default()
        .with_lease(Duration::MAX)
        .unwrap()
        .with_failed_retry_after(Duration::MAX);
    let store = PgStore::new(database.pool().clone()).with_database_clock(true);
    let guard = Arc::new(WebhookGuard::new(store.clone(), SystemClock).with_config(config));
    let event = key("acme", "evt_forever");
    let (release, holder) = hold_claim(Arc::clone(&guard), &event).await;
    let far_ahead =
        WebhookGuard::new(store, skewed_clock(chrono::Duration::days(365 * 100))).with_config(config);
    let outcome = far_ahead.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::RetryInFlight);
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));
    let failing = key("acme", "evt_forever_failed");
    let result = guard.two_phase(&failing, b"{}", |_| async { Err::<(), _>("down".to_owned()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    let outcome = far_ahead.two_phase(&failing, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::PriorAttemptFailed);
}

/// Database-clock mode times a lease by the database alone: a guard whose clock sits one
/// second before year 10000 (where "now + lease" saturates) still writes a lease of the
/// configured length from the database's now, and a failure delay counted back from the
/// database's now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_two_phase_database_clock_lease_ignores_the_guard_clock() {
    use chrono::TimeZone as _;
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_lease(Duration::from_secs(60)).unwrap();
    let store = PgStore::new(database.pool().clone()).with_database_clock(true);
    let end_of_time = chrono::Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    let guard = Arc::new(
        WebhookGuard::new(store.clone(), sos_core::ManualClock::new(end_of_time)).with_config(config),
    );
    let event = key("acme", "evt_db_lease");
    let (release, holder) = hold_claim(Arc::clone(&guard), &event).await;
    let lease_secs: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_until - updated_at)::float8 FROM sos_webhook_events WHERE event_id = $1",
    )
    .bind("evt_db_lease")
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert!((lease_secs - 60.0).abs() < 1e-3, "lease of {lease_secs} s, configured 60 s");
    let until_now: f64 = sqlx::query_scalar(
        "SELECT extract(epoch FROM lease_until - now())::float8 FROM sos_webhook_events WHERE event_id = $1",
    )
    .bind("evt_db_lease")
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert!(until_now > 50.0 && until_now <= 60.0, "lease ends {until_now} s after the database's now");
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));

    // The failure delay: a guard at the start of year 1 (where "now - delay" saturates) fails
    // an event; with a 1 s delay the database re-claims it after 1 s of its own time.
    let start_of_time = chrono::Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
    let config = config.with_failed_retry_after(Duration::from_secs(1));
    let early = WebhookGuard::new(store, sos_core::ManualClock::new(start_of_time)).with_config(config);
    let failing = key("acme", "evt_db_delay");
    let result = early.two_phase(&failing, b"{}", |_| async { Err::<(), _>("down".to_owned()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    let outcome = early.two_phase(&failing, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::PriorAttemptFailed, "the database's 1 s has not passed");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let outcome = early.two_phase(&failing, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "re-claimed after the database's 1 s");
}

/// Database-clock mode stamps transactional records with the database's clock too (review
/// item: the transactional claim used to record the guard's clock in that mode). A guard whose
/// clock sits in 2001 writes a record stamped with the database's now; the same guard without
/// the database clock writes its own instant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_transactional_database_clock_stamps_the_database_time() {
    use chrono::TimeZone as _;
    let database = database().await;
    let long_ago = chrono::Utc.with_ymd_and_hms(2001, 2, 3, 4, 5, 6).unwrap();
    let stamps = |event: &'static str| {
        let pool = database.pool().clone();
        async move {
            sqlx::query_as::<_, (f64, f64, f64)>(
                "SELECT extract(epoch FROM now() - first_seen_at)::float8, \
                        extract(epoch FROM now() - updated_at)::float8, \
                        extract(epoch FROM now() - lease_until)::float8 \
                 FROM sos_webhook_events WHERE event_id = $1",
            )
            .bind(event)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    for read_first in [false, true] {
        let config = sos_webhooks::GuardConfig::default().with_read_first(read_first);
        let event = if read_first { "evt_db_clock_read_first" } else { "evt_db_clock" };
        let store = PgStore::new(database.pool().clone()).with_database_clock(true);
        let guard = WebhookGuard::new(store, sos_core::ManualClock::new(long_ago)).with_config(config);
        let outcome = deliver(&guard, &key("acme", event), b"{}", "w").await.unwrap();
        assert_eq!(outcome, Outcome::Processed(()));
        let (first_seen, updated, lease) = stamps(event).await;
        for age in [first_seen, updated, lease] {
            assert!((0.0..60.0).contains(&age), "{event}: stamped {age} s before the database's now");
        }
    }

    let guard_clock =
        WebhookGuard::new(PgStore::new(database.pool().clone()), sos_core::ManualClock::new(long_ago));
    let outcome = deliver(&guard_clock, &key("acme", "evt_guard_clock"), b"{}", "w").await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()));
    let stamped: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT updated_at FROM sos_webhook_events WHERE event_id = 'evt_guard_clock'")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!(stamped, long_ago, "without the database clock the guard's instant is stored");
}

/// Mixing modes on one key (review item): a transactional delivery that meets an unfinished
/// two-phase record (in flight, crashed, or failed) is refused with `Error::ModeMismatch`
/// instead of answering "retry" or "failed" for ever, and writes nothing; a two-phase delivery
/// of an event processed transactionally is answered `AlreadyProcessed`, and vice versa.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_mixed_modes_never_skip_an_event() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default().with_failed_retry_after(Duration::ZERO);
    let guard =
        Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock).with_config(config));
    let mismatch = |result: Result<Outcome<()>, RunError<sqlx::Error>>| {
        matches!(result, Err(RunError::Guard(sos_webhooks::Error::ModeMismatch)))
    };

    // A two-phase claim in flight.
    let live = key("acme", "evt_mixed_live");
    let (release, holder) = hold_claim(Arc::clone(&guard), &live).await;
    assert!(mismatch(deliver(&guard, &live, b"{}", "tx").await));
    release.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));
    // Processed in two-phase mode: transactional answers AlreadyProcessed (and BodyMismatch).
    assert_eq!(deliver(&guard, &live, b"{}", "tx").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(deliver(&guard, &live, b"{\"x\":1}", "tx").await.unwrap(), Outcome::BodyMismatch);

    // A two-phase failure: refused in transactional mode, re-claimed in two-phase mode.
    let failed = key("acme", "evt_mixed_failed");
    let result = guard.two_phase(&failed, b"{}", |_| async { Err::<(), _>("down".to_owned()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    assert!(mismatch(deliver(&guard, &failed, b"{}", "tx").await));
    let read_first = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock)
        .with_config(config.with_read_first(true));
    assert!(mismatch(deliver(&read_first, &failed, b"{}", "tx").await), "read-first path too");
    assert_eq!(effects(database.pool(), "evt_mixed_failed").await, 0);
    let outcome = guard.two_phase(&failed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()));

    // Processed transactionally: a two-phase delivery answers AlreadyProcessed.
    let transactional = key("acme", "evt_mixed_tx");
    assert_eq!(deliver(&guard, &transactional, b"{}", "tx").await.unwrap(), Outcome::Processed(()));
    let outcome = guard.two_phase(&transactional, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_mixed_tx").await, 1);
}

/// Event ids that would break a hand-built SQL literal are stored exactly and dedupe exactly
/// through the transactional claim function.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_hostile_event_ids_round_trip_exactly() {
    let database = database().await;
    for read_first in [false, true] {
        let config = sos_webhooks::GuardConfig::default().with_read_first(read_first);
        let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock).with_config(config);
        for (index, id) in [
            "it's",
            "''; DROP TABLE sos_webhook_events; --",
            "back\\slash\\'",
            "\\x00",
            "$$ $fn$ dollar",
            "E'\\\\'",
            "é\u{301} 😀 \u{202e}rtl \u{2028}",
            "%s %d {} ?1 $1",
        ]
        .into_iter()
        .enumerate()
        {
            let id = format!("{id}#{index}#{read_first}");
            let event = EventKey::new("acme".parse().unwrap(), "stripe", &id).unwrap();
            assert_eq!(deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::Processed(()), "{id}");
            assert_eq!(deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::AlreadyProcessed, "{id}");
            let stored: String = sqlx::query_scalar(
                "SELECT event_id FROM sos_webhook_events WHERE tenant = 'acme' AND provider = 'stripe' AND event_id = $1",
            )
            .bind(&id)
            .fetch_one(database.pool())
            .await
            .unwrap();
            assert_eq!(stored, id);
            assert_eq!(effects(database.pool(), &id).await, 1, "{id}");
        }
    }
    // NUL never reaches the database: a typed error first.
    assert!(EventKey::new("acme".parse().unwrap(), "stripe", "a\u{0}b").is_err());
}

/// The database refuses empty key parts whoever writes them (migration 0200000002), and the
/// guard refuses them before the database with a typed error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_empty_key_parts_are_refused_by_the_database_too() {
    let database = database().await;
    for (tenant, provider, event) in [("", "stripe", "evt"), ("acme", "", "evt"), ("acme", "stripe", "")] {
        let result = sqlx::query(
            "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
             lease_until, first_seen_at, updated_at) VALUES ($1, $2, $3, $4, 'processed', 't', 1, now(), now(), now())",
        )
        .bind(tenant)
        .bind(provider)
        .bind(event)
        .bind(&[0u8; 32][..])
        .execute(database.pool())
        .await;
        let Err(sqlx::Error::Database(error)) = result else {
            panic!("an empty key part was stored: {result:?}")
        };
        assert_eq!(error.code().as_deref(), Some("23514"), "a CHECK violation");
    }
    assert!(matches!(
        EventKey::new("acme".parse().unwrap(), "", "evt"),
        Err(sos_webhooks::Error::InvalidKey { field: "provider", .. })
    ));
    assert!(matches!(
        EventKey::new("acme".parse().unwrap(), "stripe", ""),
        Err(sos_webhooks::Error::InvalidKey { field: "event id", .. })
    ));
    assert!("".parse::<sos_core::TenantId>().is_err());
}

/// Counts calls of the transactional claim function: the shipped `sos_webhooks_claim_v2` is
/// renamed and wrapped by one that first takes `nextval` of a sequence (not transactional, so a
/// claim rolled back still counts).
async fn count_claim_calls(pool: &PgPool) {
    for statement in [
        "CREATE SEQUENCE test_claim_calls",
        "ALTER FUNCTION sos_webhooks_claim_v2(TEXT, TEXT, TEXT, BYTEA, TEXT, TIMESTAMPTZ, BIGINT) \
         RENAME TO test_claim_v2_inner",
        "CREATE FUNCTION sos_webhooks_claim_v2(p_tenant TEXT, p_provider TEXT, p_event_id TEXT, \
         p_body_hash BYTEA, p_token TEXT, p_now TIMESTAMPTZ, p_lock BIGINT, \
         OUT claimed BOOLEAN, OUT state TEXT, OUT body_hash BYTEA) LANGUAGE plpgsql VOLATILE AS $fn$ \
         BEGIN PERFORM nextval('test_claim_calls'); \
         SELECT i.claimed, i.state, i.body_hash INTO claimed, state, body_hash \
         FROM test_claim_v2_inner(p_tenant, p_provider, p_event_id, p_body_hash, p_token, p_now, p_lock) AS i; \
         END $fn$",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

async fn claim_calls(pool: &PgPool) -> i64 {
    // A fresh sequence has no last_value until its first nextval.
    sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM test_claim_calls")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// `ReadFirst::Adaptive` (the default) claims first while deliveries are mostly new events and
/// reads first while they are mostly duplicates of committed records, and every delivery gets
/// the same answer in either phase: duplicates `AlreadyProcessed` (or `BodyMismatch` for
/// other bytes), a new event processed exactly once, a duplicate of one in flight
/// `RetryInFlight`. `Never` and `Always` keep their order whatever the traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_adaptive_read_first_follows_the_duplicate_share() {
    use sos_webhooks::{GuardConfig, ReadFirst};
    let database = database().await;
    count_claim_calls(database.pool()).await;
    let pool = database.pool();
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock));
    assert_eq!(guard.config().read_first(), ReadFirst::Adaptive);
    for n in 0..5 {
        let event = key("acme", &format!("evt_adaptive_{n}"));
        assert_eq!(deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    }
    assert_eq!(claim_calls(pool).await, 5, "new events are claimed first");

    // A retry storm: the first duplicates go through the claim, then the guard reads first.
    let mut claims_per_duplicate = Vec::new();
    for round in 0..40 {
        let before = claim_calls(pool).await;
        let event = key("acme", &format!("evt_adaptive_{}", round % 5));
        assert_eq!(deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
        claims_per_duplicate.push(claim_calls(pool).await - before);
    }
    assert_eq!(claims_per_duplicate[0], 1, "the first duplicate is claimed first");
    assert!(claims_per_duplicate[20..].iter().all(|&calls| calls == 0), "{claims_per_duplicate:?}");
    let before = claim_calls(pool).await;
    let mismatch = deliver(&guard, &key("acme", "evt_adaptive_0"), b"{\"x\":1}", "dup").await.unwrap();
    assert_eq!(mismatch, Outcome::BodyMismatch, "the read flags another body");
    assert_eq!(claim_calls(pool).await, before, "answered by the read");

    // While reading first: a duplicate of an event in flight is not answered by the read (its
    // record is not committed) and goes to the claim, which answers RetryInFlight at once.
    let slow_event = key("acme", "evt_adaptive_slow");
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let guard = Arc::clone(&guard);
        let slow_event = slow_event.clone();
        tokio::spawn(async move {
            guard
                .transactional(&slow_event, b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO handler_effects VALUES ('acme', 'evt_adaptive_slow', 'slow')",
                        )
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
    let before = claim_calls(pool).await;
    assert_eq!(deliver(&guard, &slow_event, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
    assert_eq!(claim_calls(pool).await, before + 1, "read first, then the claim answered");
    release_sender.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
    assert_eq!(effects(pool, "evt_adaptive_slow").await, 1);

    // New events again: each is read (nothing there) and claimed, processed exactly once, and
    // after a run of them the guard claims first again, so a duplicate goes to the claim.
    for n in 0..40 {
        let event = key("acme", &format!("evt_adaptive_new_{n}"));
        assert_eq!(deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::Processed(()));
        assert_eq!(effects(pool, &format!("evt_adaptive_new_{n}")).await, 1);
    }
    let before = claim_calls(pool).await;
    assert_eq!(
        deliver(&guard, &key("acme", "evt_adaptive_1"), b"{}", "dup").await.unwrap(),
        Outcome::AlreadyProcessed
    );
    assert_eq!(claim_calls(pool).await, before + 1, "claim first again after new events");

    // The fixed orders ignore the traffic.
    for (read_first, claims) in [(ReadFirst::Never, 30), (ReadFirst::Always, 0)] {
        let fixed = WebhookGuard::new(PgStore::new(pool.clone()), SystemClock)
            .with_config(GuardConfig::default().with_read_first(read_first));
        let before = claim_calls(pool).await;
        for round in 0..30 {
            let event = key("acme", &format!("evt_adaptive_{}", round % 5));
            assert_eq!(deliver(&fixed, &event, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
        }
        assert_eq!(claim_calls(pool).await - before, claims, "{read_first:?}");
    }
    for n in 0..5 {
        assert_eq!(effects(pool, &format!("evt_adaptive_{n}")).await, 1);
    }
}

/// Concurrent deliveries under `ReadFirst::Adaptive` while the share swings between new events
/// and duplicates: every event's effect happens exactly once, exactly one delivery of each is
/// `Processed`, and every other answer is `AlreadyProcessed` or `RetryInFlight`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_adaptive_read_first_concurrent_deliveries_exactly_once() {
    let database = database().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    for round in 0..6 {
        // Even rounds: 40 new events, each delivered 4 times at once; odd rounds: the same
        // events again 8 times each (all duplicates), which tips the guard into reading first.
        let copies = if round % 2 == 0 { 4 } else { 8 };
        let barrier = Arc::new(tokio::sync::Barrier::new(40 * copies));
        let mut tasks = Vec::new();
        for n in 0..40 {
            for copy in 0..copies {
                let (guard, barrier) = (Arc::clone(&guard), Arc::clone(&barrier));
                let event = key("acme", &format!("evt_swing_{}_{n}", round / 2));
                tasks.push(tokio::spawn(async move {
                    barrier.wait().await;
                    (n, deliver(&guard, &event, b"{}", &format!("c{copy}")).await.unwrap())
                }));
            }
        }
        let mut processed = [0u32; 40];
        for task in tasks {
            match task.await.unwrap() {
                (n, Outcome::Processed(())) => processed[n] += 1,
                (_, Outcome::AlreadyProcessed | Outcome::RetryInFlight) => {}
                (n, other) => panic!("round {round} event {n}: unexpected {other:?}"),
            }
        }
        // The delivery that takes the key's lock first always processes a new event.
        let expected = if round % 2 == 0 { 1 } else { 0 };
        assert!(processed.iter().all(|&count| count == expected), "round {round}: {processed:?}");
    }
    for phase in 0..3 {
        for n in 0..40 {
            let event = key("acme", &format!("evt_swing_{phase}_{n}"));
            let last = deliver(&guard, &event, b"{}", "last").await.unwrap();
            assert_eq!(last, Outcome::AlreadyProcessed);
            assert_eq!(effects(database.pool(), &format!("evt_swing_{phase}_{n}")).await, 1);
        }
    }
}

/// Reading first under a SERIALIZABLE default (which `ReadFirst::Adaptive` does during a retry
/// storm): the autocommit read of an absent key is a serializable transaction of its own, and
/// its predicate lock must not make concurrent claims of *different* fresh events cancel each
/// other (the shape migration 0200000005 fixed inside the claim). Every fresh event is
/// processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_read_first_serializable_default_distinct_fresh_events_all_processed() {
    use sos_webhooks::{GuardConfig, ReadFirst};
    let database = database().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
        database.name()
    ))
    .execute(database.pool())
    .await
    .unwrap();
    let pool = PgPoolOptions::new().max_connections(20).connect(database.url()).await.unwrap();
    let config = GuardConfig::default().with_read_first(ReadFirst::Always);
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock).with_config(config));
    let mut failures = Vec::new();
    for round in 0..5 {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let (guard, barrier) = (Arc::clone(&guard), Arc::clone(&barrier));
            let event = key("acme", &format!("evt_ser_read_first_{round}_{worker}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = guard
                    .transactional(&event, b"{}", |tx| {
                        Box::pin(async move {
                            sqlx::query("SELECT pg_sleep(0.05)").execute(&mut **tx).await?;
                            Ok::<_, sqlx::Error>(())
                        })
                    })
                    .await;
                (worker, format!("{outcome:?}"))
            }));
        }
        for task in tasks {
            let (worker, outcome) = task.await.unwrap();
            if outcome != "Ok(Processed(()))" {
                failures.push(format!("round {round} worker {worker}: {outcome}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} fresh distinct keys not processed: {failures:#?}", failures.len());
}
