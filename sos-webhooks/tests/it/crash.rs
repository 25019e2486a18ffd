//! A process killed (SIGKILL) mid-handler: in transactional mode the next delivery processes
//! the event exactly once with nothing to clean up; in two-phase mode exactly one takeover
//! processes it after the lease.

use std::time::Duration;
#[cfg(any(feature = "postgres", feature = "sqlite"))]
use std::time::Instant;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
use crate::support::{
    CHILD_DB, CHILD_EVENT, CHILD_ROLE, IN_HANDLER, child_lines, spawn_child, wait_for_line,
};
use crate::support::{child_role, key};

/// The two-phase lease of the crashing child, short so the test stays fast.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
const CHILD_LEASE: Duration = Duration::from_secs(2);

/// The child side: claims the event, says so, and hangs inside the handler until killed.
#[test]
fn child_hang() {
    // Without SOS_CHILD_ROLE this is the parent test run, not a child: the crash tests below
    // start this function in a child process and kill it, so there is nothing to do here.
    let Some(role) = child_role() else { return };
    let url = std::env::var(crate::support::CHILD_DB).expect("the parent passes the database");
    let event = std::env::var(crate::support::CHILD_EVENT).expect("the parent passes the event");
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        let event = key("acme", &event);
        let announce_and_hang = || async {
            println!("{}", crate::support::IN_HANDLER);
            tokio::time::sleep(Duration::from_secs(120)).await;
        };
        match role.as_str() {
            #[cfg(feature = "postgres")]
            "pg-tx" => {
                let pool =
                    sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
                let guard =
                    sos_webhooks::WebhookGuard::new(sos_webhooks::PgStore::new(pool), sos_core::SystemClock);
                let outcome = guard
                    .transactional(&event, b"{}", |tx| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_crash', 'killed')")
                                .execute(&mut **tx)
                                .await?;
                            announce_and_hang().await;
                            Ok::<_, sqlx::Error>(())
                        })
                    })
                    .await;
                panic!("the child should have been killed, got {outcome:?}");
            }
            #[cfg(feature = "postgres")]
            "pg-two-phase" => {
                let pool =
                    sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
                let config = sos_webhooks::GuardConfig::default().with_lease(CHILD_LEASE).unwrap();
                let guard =
                    sos_webhooks::WebhookGuard::new(sos_webhooks::PgStore::new(pool), sos_core::SystemClock)
                        .with_config(config);
                let outcome = guard
                    .two_phase(&event, b"{}", |_| async {
                        announce_and_hang().await;
                        Ok::<_, String>(())
                    })
                    .await;
                panic!("the child should have been killed, got {outcome:?}");
            }
            #[cfg(feature = "sqlite")]
            "sqlite-tx" => {
                let pool = sos_testkit::sqlite_pool(std::path::Path::new(&url), 2).await;
                let guard = sos_webhooks::WebhookGuard::new(
                    sos_webhooks::SqliteStore::new(pool),
                    sos_core::SystemClock,
                );
                let outcome = guard
                    .transactional(&event, b"{}", |tx| {
                        Box::pin(async move {
                            sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_crash', 'killed')")
                                .execute(&mut **tx)
                                .await?;
                            announce_and_hang().await;
                            Ok::<_, sqlx::Error>(())
                        })
                    })
                    .await;
                panic!("the child should have been killed, got {outcome:?}");
            }
            #[cfg(feature = "sqlite")]
            "sqlite-two-phase" => {
                let pool = sos_testkit::sqlite_pool(std::path::Path::new(&url), 2).await;
                let config = sos_webhooks::GuardConfig::default().with_lease(CHILD_LEASE).unwrap();
                let guard = sos_webhooks::WebhookGuard::new(
                    sos_webhooks::SqliteStore::new(pool),
                    sos_core::SystemClock,
                )
                .with_config(config);
                let outcome = guard
                    .two_phase(&event, b"{}", |_| async {
                        announce_and_hang().await;
                        Ok::<_, String>(())
                    })
                    .await;
                panic!("the child should have been killed, got {outcome:?}");
            }
            other => panic!("unknown child role {other} (url {url})"),
        }
    });
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
fn start_hanging_child(role: &str, url: &str) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
    let mut child = spawn_child(
        "crash::child_hang",
        &[(CHILD_ROLE, role.to_owned()), (CHILD_DB, url.to_owned()), (CHILD_EVENT, "evt_crash".to_owned())],
    );
    let lines = child_lines(&mut child);
    wait_for_line(&lines, IN_HANDLER, Duration::from_secs(60));
    (child, lines)
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_transactional_sigkill_mid_handler_processes_once() {
    use sos_webhooks::{Outcome, PgStore, WebhookGuard};

    use crate::postgres::{database, deliver, effects};

    let database = database().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), sos_core::SystemClock);
    let event = key("acme", "evt_crash");
    let (mut child, _lines) = start_hanging_child("pg-tx", database.url());
    assert_eq!(deliver(&guard, &event, b"{}", "parent").await.unwrap(), Outcome::RetryInFlight);
    child.kill().unwrap();
    child.wait().unwrap();
    // The server notices the dead session and rolls its transaction back; until then the
    // delivery is answered "retry", as a provider's retry would be.
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcome = loop {
        let outcome = deliver(&guard, &event, b"{}", "parent").await.unwrap();
        if outcome != Outcome::RetryInFlight || Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outcome, Outcome::Processed(()));
    assert_eq!(deliver(&guard, &event, b"{}", "parent").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(effects(database.pool(), "evt_crash").await, 1, "the killed handler's write vanished");
    let killed: i64 = sqlx::query_scalar("SELECT count(*) FROM handler_effects WHERE worker = 'killed'")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(killed, 0);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pg_two_phase_sigkill_then_one_takeover_after_lease() {
    use std::sync::Arc;

    use sos_webhooks::{GuardConfig, Outcome, PgStore, WebhookGuard};

    use crate::postgres::{database, effects};

    let database = database().await;
    let config = GuardConfig::default().with_lease(CHILD_LEASE).unwrap();
    let guard = Arc::new(
        WebhookGuard::new(PgStore::new(database.pool().clone()), sos_core::SystemClock).with_config(config),
    );
    let event = key("acme", "evt_crash");
    let (mut child, _lines) = start_hanging_child("pg-two-phase", database.url());
    let claimed_at = Instant::now();
    let early = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    if claimed_at.elapsed() < CHILD_LEASE / 2 {
        assert_eq!(early, Outcome::RetryInFlight, "inside the lease a duplicate must wait");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(CHILD_LEASE.saturating_sub(claimed_at.elapsed()) + Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        let pool = database.pool().clone();
        tasks.push(tokio::spawn(async move {
            guard
                .two_phase(&event, b"{}", |claim| async move {
                    sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_crash', $1)")
                        .bind(format!("takeover-{worker}"))
                        .execute(&pool)
                        .await
                        .map_err(|error| error.to_string())?;
                    Ok::<_, String>(claim.attempt())
                })
                .await
                .unwrap()
        }));
    }
    let mut processed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Processed(attempt) => processed.push(attempt),
            Outcome::RetryInFlight | Outcome::AlreadyProcessed => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(processed, vec![2], "exactly one takeover, as the second attempt");
    assert_eq!(effects(database.pool(), "evt_crash").await, 1);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_transactional_sigkill_mid_handler_processes_once() {
    use sos_webhooks::{Outcome, SqliteStore, WebhookGuard};

    use crate::sqlite::{database, deliver, effects};

    let database = database().await;
    let guard = WebhookGuard::new(SqliteStore::new(database.pool().clone()), sos_core::SystemClock);
    let event = key("acme", "evt_crash");
    let path = database.path().to_string_lossy().into_owned();
    let (mut child, _lines) = start_hanging_child("sqlite-tx", &path);
    assert_eq!(deliver(&guard, &event, b"{}", "parent").await.unwrap(), Outcome::RetryInFlight);
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let outcome = loop {
        let outcome = deliver(&guard, &event, b"{}", "parent").await.unwrap();
        if outcome != Outcome::RetryInFlight || Instant::now() > deadline {
            break outcome;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(outcome, Outcome::Processed(()));
    assert_eq!(effects(database.pool(), "evt_crash").await, 1);
}

#[cfg(feature = "sqlite")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_two_phase_sigkill_then_one_takeover_after_lease() {
    use std::sync::Arc;

    use sos_webhooks::{GuardConfig, Outcome, SqliteStore, WebhookGuard};

    use crate::sqlite::{database, effects};

    let database = database().await;
    let config = GuardConfig::default().with_lease(CHILD_LEASE).unwrap();
    let guard = Arc::new(
        WebhookGuard::new(SqliteStore::new(database.pool().clone()), sos_core::SystemClock)
            .with_config(config),
    );
    let event = key("acme", "evt_crash");
    let path = database.path().to_string_lossy().into_owned();
    let (mut child, _lines) = start_hanging_child("sqlite-two-phase", &path);
    let claimed_at = Instant::now();
    let early = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    if claimed_at.elapsed() < CHILD_LEASE / 2 {
        assert_eq!(early, Outcome::RetryInFlight, "inside the lease a duplicate must wait");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(CHILD_LEASE.saturating_sub(claimed_at.elapsed()) + Duration::from_millis(300)).await;
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        let pool = database.pool().clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let pool = pool.clone();
                let outcome = guard
                    .two_phase(&event, b"{}", |claim| async move {
                        sqlx::query("INSERT INTO handler_effects VALUES ('acme', 'evt_crash', ?1)")
                            .bind(format!("takeover-{worker}"))
                            .execute(&pool)
                            .await
                            .map_err(|error| error.to_string())?;
                        Ok::<_, String>(claim.attempt())
                    })
                    .await;
                match outcome {
                    Ok(outcome) => return outcome,
                    // SQLite's single writer can refuse a claim with "busy" under this burst;
                    // the delivery was not decided and is simply retried.
                    Err(sos_webhooks::RunError::Guard(sos_webhooks::Error::Storage(_))) => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err(other) => panic!("unexpected error {other}"),
                }
            }
        }));
    }
    let mut processed = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Processed(attempt) => processed.push(attempt),
            Outcome::RetryInFlight | Outcome::AlreadyProcessed => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(processed, vec![2], "exactly one takeover, as the second attempt");
    assert_eq!(effects(database.pool(), "evt_crash").await, 1);
}
