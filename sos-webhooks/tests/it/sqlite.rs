//! SQLite: transactional mode, the two-phase suite, and the child side of the multi-process
//! tests.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sos_core::SystemClock;
use sos_testkit::SqliteTestDatabase;
use sos_webhooks::{EventKey, Outcome, RunError, SqliteStore, WebhookGuard, sqlite_migrator};
use sqlx::SqlitePool;

use crate::support::{Counts, key};

pub(crate) async fn database() -> SqliteTestDatabase {
    let migrator = sqlite_migrator();
    let database = SqliteTestDatabase::new(&[&migrator]).await;
    sqlx::query(
        "CREATE TABLE handler_effects (tenant TEXT NOT NULL, event_id TEXT NOT NULL, worker TEXT NOT NULL)",
    )
    .execute(database.pool())
    .await
    .unwrap();
    database
}

pub(crate) async fn effects(pool: &SqlitePool, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM handler_effects WHERE event_id = ?1")
        .bind(event)
        .fetch_one(pool)
        .await
        .unwrap()
}

pub(crate) async fn deliver(
    guard: &WebhookGuard<SqliteStore>,
    key: &EventKey,
    body: &[u8],
    worker: &str,
) -> Result<Outcome<()>, RunError<sqlx::Error>> {
    let event = key.event_id().as_str().to_owned();
    let worker = worker.to_owned();
    guard
        .transactional(key, body, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO handler_effects (tenant, event_id, worker) VALUES ('acme', ?1, ?2)")
                    .bind(event)
                    .bind(worker)
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            })
        })
        .await
}

/// The child's work in the multi-process test. `url` is the database file's path.
pub(crate) async fn deliver_all(url: &str, events: usize, tasks: usize) -> Counts {
    let pool = sos_testkit::sqlite_pool(Path::new(url), tasks as u32).await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(pool), SystemClock));
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
async fn sqlite_two_phase_conformance() {
    let database = database().await;
    crate::conformance::two_phase_suite(SqliteStore::new(database.pool().clone())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_handler_error_leaves_nothing() {
    let database = database().await;
    let guard = WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock);
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
    assert_eq!(effects(database.pool(), "evt_error").await, 0);
    let records: i64 = sqlx::query_scalar("SELECT count(*) FROM sos_webhook_events")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(records, 0);
    assert_eq!(deliver(&guard, &event, b"{}", "retry").await.unwrap(), Outcome::Processed(()));
    assert_eq!(deliver(&guard, &event, b"{}", "again").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_error").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_retry_in_flight_while_handler_holds_the_write_lock() {
    let database = database().await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock));
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
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
    assert!(started.elapsed() < Duration::from_millis(500), "answered after {:?}", started.elapsed());
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
    assert_eq!(deliver(&guard, &event, b"{}", "late").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_slow").await, 1);
    // The connection's own busy timeout (5 s from the harness) was put back.
    let timeouts: Vec<i64> = {
        let mut values = Vec::new();
        for _ in 0..4 {
            values.push(sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(database.pool()).await.unwrap());
        }
        values
    };
    assert!(timeouts.iter().all(|timeout| *timeout == 5000), "{timeouts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_cancelled_claim_leaves_no_short_busy_timeout_in_the_pool() {
    let database = database().await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock));
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            guard
                .transactional(&key("acme", "evt_holder"), b"{}", |_tx| {
                    Box::pin(async move {
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    // Deliveries of other new events wait for the write lock; cancel them mid-wait.
    for attempt in 0..4 {
        let event = key("acme", &format!("evt_cancelled_{attempt}"));
        let cancelled =
            tokio::time::timeout(Duration::from_millis(5), deliver(&guard, &event, b"{}", "c")).await;
        assert!(cancelled.is_err(), "the delivery was expected to wait for the write lock");
    }
    release_sender.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(database.pool().acquire().await.unwrap());
    }
    for connection in &mut connections {
        let timeout: i64 =
            sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **connection).await.unwrap();
        assert_eq!(timeout, 5000, "a pooled connection kept the guard's short busy timeout");
    }
}

/// Mixing modes on one key (review item), as on PostgreSQL: a transactional delivery meeting an
/// unfinished two-phase record (in flight or failed) is refused with `Error::ModeMismatch` and
/// writes nothing; processed records answer across modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_mixed_modes_never_skip_an_event() {
    let database = database().await;
    let config = sos_webhooks::GuardConfig::default()
        .with_failed_retry_after(Duration::ZERO)
        .with_lease(Duration::from_secs(3600))
        .unwrap();
    let guard = WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock).with_config(config);
    let mismatch = |result: Result<Outcome<()>, RunError<sqlx::Error>>| {
        matches!(result, Err(RunError::Guard(sos_webhooks::Error::ModeMismatch)))
    };

    // A two-phase claim in flight (its handler runs while the transactional delivery arrives).
    let live = key("acme", "evt_mixed_live");
    let outcome = guard
        .two_phase(&live, b"{}", |_| async {
            assert!(mismatch(deliver(&guard, &live, b"{}", "tx").await));
            Ok::<_, String>(())
        })
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Processed(()));
    assert_eq!(deliver(&guard, &live, b"{}", "tx").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(deliver(&guard, &live, b"{\"x\":1}", "tx").await.unwrap(), Outcome::BodyMismatch);

    let failed = key("acme", "evt_mixed_failed");
    let result = guard.two_phase(&failed, b"{}", |_| async { Err::<(), _>("down".to_owned()) }).await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    assert!(mismatch(deliver(&guard, &failed, b"{}", "tx").await));
    assert_eq!(effects(database.pool(), "evt_mixed_failed").await, 0);
    let outcome = guard.two_phase(&failed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()));

    let transactional = key("acme", "evt_mixed_tx");
    assert_eq!(deliver(&guard, &transactional, b"{}", "tx").await.unwrap(), Outcome::Processed(()));
    let outcome = guard.two_phase(&transactional, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_mixed_tx").await, 1);
}

/// The rebuilt table (migration 0200000002) refuses empty key parts, and keeps its other
/// constraints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_empty_key_parts_are_refused_by_the_database_too() {
    let database = database().await;
    let insert = |tenant: &'static str, provider: &'static str, event: &'static str, hash: Vec<u8>| {
        sqlx::query(
            "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
             lease_until, first_seen_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'processed', 't', 1, 0, 0, 0)",
        )
        .bind(tenant)
        .bind(provider)
        .bind(event)
        .bind(hash)
        .execute(database.pool())
    };
    for (tenant, provider, event) in [("", "stripe", "evt"), ("acme", "", "evt"), ("acme", "stripe", "")] {
        let result = insert(tenant, provider, event, vec![0; 32]).await;
        let Err(sqlx::Error::Database(error)) = result else {
            panic!("an empty key part was stored: {result:?}")
        };
        assert!(error.message().contains("CHECK constraint failed"), "{}", error.message());
    }
    assert!(insert("acme", "stripe", "evt", vec![0; 31]).await.is_err(), "the hash length check remains");
    insert("acme", "stripe", "evt", vec![0; 32]).await.unwrap();
    assert!(insert("acme", "stripe", "evt", vec![0; 32]).await.is_err(), "the key remains unique");
}
