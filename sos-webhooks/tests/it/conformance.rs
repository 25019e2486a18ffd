//! One behavioural suite for every two-phase store: the same assertions on memory, SQLite and
//! PostgreSQL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sos_webhooks::{ClaimStore, Error, GuardConfig, Outcome, RunError, WebhookGuard};

use crate::support::manual_clock;

/// Runs the whole two-phase suite against `store` (which must be empty), once with the
/// processed-event memory off and once with it on: every answer must be the same.
pub(crate) async fn two_phase_suite<S: ClaimStore + Clone + 'static>(store: S) {
    purge_tenant_touches_only_that_tenant(store.clone()).await;
    for cache in [0, 1000] {
        CACHE.with(|entries| entries.set(cache));
        processed_then_skipped(store.clone()).await;
        lease_takeover_exactly_once(store.clone()).await;
        failure_recorded_then_reclaimed(store.clone()).await;
        body_mismatch_flagged(store.clone()).await;
        purge_keeps_in_flight_and_failed(store.clone()).await;
    }
}

thread_local! {
    /// The processed-event memory of the suite's guards in this round (0: off).
    static CACHE: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The suite's keys: one tenant per round, so the rounds never see each other's records.
fn key(event: &str) -> sos_webhooks::EventKey {
    crate::support::key(&format!("conf{}", CACHE.with(std::cell::Cell::get)), event)
}

fn guard<S>(store: S, clock: &sos_core::ManualClock) -> WebhookGuard<S> {
    let config = GuardConfig::default()
        .with_lease(Duration::from_secs(30))
        .unwrap()
        .with_failed_retry_after(Duration::from_secs(60))
        .with_retention(Duration::from_secs(3 * 24 * 3600))
        .with_processed_cache(CACHE.with(std::cell::Cell::get));
    WebhookGuard::new(store, clock.clone()).with_config(config)
}

/// `purge_tenant` deletes one tenant's old processed records and nothing of another tenant's,
/// even with the same provider and event id.
async fn purge_tenant_touches_only_that_tenant<S: ClaimStore + Clone + 'static>(store: S) {
    let clock = manual_clock();
    let guard = guard(store, &clock);
    let ours = crate::support::key("purge-a", "evt_same");
    let theirs = crate::support::key("purge-b", "evt_same");
    for event in [&ours, &theirs] {
        guard.two_phase(event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    }
    clock.advance(chrono::Duration::days(4));
    assert_eq!(guard.purge_tenant(ours.tenant()).await.unwrap(), 1, "only the tenant's record");
    assert_eq!(guard.purge_tenant(ours.tenant()).await.unwrap(), 0);
    let again = guard.two_phase(&theirs, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(again, Outcome::AlreadyProcessed, "the other tenant's record is kept");
    let again = guard.two_phase(&ours, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(again, Outcome::Processed(()), "the purged tenant's event is new again");
    assert_eq!(guard.purge_tenant(theirs.tenant()).await.unwrap(), 1);
}

async fn processed_then_skipped<S: ClaimStore>(store: S) {
    let clock = manual_clock();
    let guard = guard(store, &clock);
    let event = key("evt_processed");
    let runs = AtomicU32::new(0);
    for expected in [Outcome::Processed(()), Outcome::AlreadyProcessed, Outcome::AlreadyProcessed] {
        let outcome = guard
            .two_phase(&event, b"{\"a\":1}", |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        assert_eq!(outcome, expected);
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

async fn lease_takeover_exactly_once<S: ClaimStore + Clone + 'static>(store: S) {
    let clock = manual_clock();
    let guard = Arc::new(guard(store, &clock));
    let event = key("evt_lease");
    // A worker claims and then hangs: its handler never returns during this test.
    let (claimed_sender, claimed_receiver) = tokio::sync::oneshot::channel();
    let hung = {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        tokio::spawn(async move {
            guard
                .two_phase(&event, b"{}", |_| async move {
                    let _ = claimed_sender.send(());
                    std::future::pending::<Result<(), String>>().await
                })
                .await
        })
    };
    claimed_receiver.await.unwrap();
    let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::RetryInFlight, "inside the lease, a duplicate must wait");
    clock.advance(chrono::Duration::seconds(30));
    // After the lease, several concurrent deliveries: exactly one takes over.
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let guard = Arc::clone(&guard);
        let event = event.clone();
        let runs = Arc::clone(&runs);
        tasks.push(tokio::spawn(async move {
            guard
                .two_phase(&event, b"{}", |claim| async move {
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok::<_, String>(claim.attempt())
                })
                .await
                .unwrap()
        }));
    }
    let mut processed = 0;
    for task in tasks {
        match task.await.unwrap() {
            Outcome::Processed(attempt) => {
                processed += 1;
                assert_eq!(attempt, 2);
            }
            Outcome::RetryInFlight | Outcome::AlreadyProcessed => {}
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(processed, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    hung.abort();
}

async fn failure_recorded_then_reclaimed<S: ClaimStore>(store: S) {
    let clock = manual_clock();
    let guard = guard(store, &clock);
    let event = key("evt_failure");
    let result = guard.two_phase(&event, b"{}", |_| async { Err::<(), _>("the API answered 502") }).await;
    assert!(matches!(result, Err(RunError::Handler("the API answered 502"))));
    let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::PriorAttemptFailed);
    assert_eq!(outcome.to_http().status().as_u16(), 500, "a prior failure must make the provider retry");
    clock.advance(chrono::Duration::seconds(60));
    let outcome =
        guard.two_phase(&event, b"{}", |claim| async move { Ok::<_, String>(claim.attempt()) }).await;
    assert_eq!(outcome.unwrap(), Outcome::Processed(2), "a failed event is re-claimable after the delay");
}

async fn body_mismatch_flagged<S: ClaimStore>(store: S) {
    let clock = manual_clock();
    let guard = guard(store, &clock);
    let event = key("evt_body");
    guard.two_phase(&event, b"{\"amount\":1}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    let outcome =
        guard.two_phase(&event, b"{\"amount\":1000}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::BodyMismatch);
}

async fn purge_keeps_in_flight_and_failed<S: ClaimStore + Clone + 'static>(store: S) {
    let clock = manual_clock();
    let guard = Arc::new(guard(store, &clock));
    let old_processed = key("evt_purge_old");
    let old_failed = key("evt_purge_failed");
    let old_in_flight = key("evt_purge_in_flight");
    guard.two_phase(&old_processed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    let _ = guard.two_phase(&old_failed, b"{}", |_| async { Err::<(), _>("boom") }).await;
    let (claimed_sender, claimed_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let in_flight = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            guard
                .two_phase(&old_in_flight, b"{}", |_| async move {
                    let _ = claimed_sender.send(());
                    let _ = release_receiver.await;
                    Ok::<_, String>(())
                })
                .await
        })
    };
    claimed_receiver.await.unwrap();
    clock.advance(chrono::Duration::days(4));
    let recent = key("evt_purge_recent");
    guard.two_phase(&recent, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    // Some earlier suites' processed records are old too; at least ours must go.
    let purged = guard.purge().await.unwrap();
    assert!(purged >= 1);
    // The in-flight claim is untouched and still completes.
    release_sender.send(()).unwrap();
    assert_eq!(in_flight.await.unwrap().unwrap(), Outcome::Processed(()));
    let outcome = guard.two_phase(&recent, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyProcessed, "a recent key is kept");
    let outcome = guard.two_phase(&old_failed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "the failed record was kept (and is re-claimable)");
    let outcome = guard.two_phase(&old_processed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "the old processed key was purged");
    assert!(matches!(Error::LeaseLost.to_http().status().as_u16(), 500));
}
