//! Named shape `replay-same`: the same event delivered again (the same cause) never fires the
//! handler twice, and a known event id with different bytes is flagged, not processed.

use std::sync::atomic::{AtomicU32, Ordering};

use sos_core::SystemClock;
use sos_webhooks::signature::{StripeVerifier, sign_stripe};
use sos_webhooks::{MemoryStore, Outcome, WebhookGuard};

use crate::support::key;

#[tokio::test]
async fn replayed_signed_delivery_runs_the_handler_once() {
    let verifier = StripeVerifier::new(["whsec_replay"]).unwrap();
    let guard = WebhookGuard::new(MemoryStore::new(), SystemClock);
    let body = br#"{"id":"evt_replay","type":"charge.succeeded"}"#;
    let header = sign_stripe("whsec_replay", chrono::Utc::now().timestamp(), body);
    let runs = AtomicU32::new(0);
    let mut answers = Vec::new();
    // A captured request replayed verbatim inside the tolerance still verifies; the guard is
    // what stops it from acting twice.
    for _ in 0..3 {
        verifier.verify_header(&header, body, &SystemClock).unwrap();
        let outcome = guard
            .two_phase(&key("acme", "evt_replay"), body, |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        answers.push(outcome);
    }
    assert_eq!(answers, [Outcome::Processed(()), Outcome::AlreadyProcessed, Outcome::AlreadyProcessed]);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn same_event_id_with_other_bytes_is_flagged() {
    let guard = WebhookGuard::new(MemoryStore::new(), SystemClock);
    let event = key("acme", "evt_1");
    guard.two_phase(&event, b"{\"amount\":100}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    let outcome =
        guard.two_phase(&event, b"{\"amount\":999}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::BodyMismatch);
}

#[tokio::test]
async fn tenants_and_providers_do_not_share_keys() {
    let guard = WebhookGuard::new(MemoryStore::new(), SystemClock);
    let keys = [
        key("acme", "evt_1"),
        key("globex", "evt_1"),
        sos_webhooks::EventKey::new("acme".parse().unwrap(), "github", "evt_1").unwrap(),
    ];
    for event in &keys {
        let outcome = guard.two_phase(event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
        assert_eq!(outcome, Outcome::Processed(()), "{event:?} is its own event");
    }
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_replay_runs_the_handler_once() {
    let database = crate::postgres::database().await;
    let guard = WebhookGuard::new(sos_webhooks::PgStore::new(database.pool().clone()), SystemClock);
    let event = key("acme", "evt_replay");
    let mut answers = Vec::new();
    for _ in 0..3 {
        answers.push(crate::postgres::deliver(&guard, &event, b"{}", "w").await.unwrap());
    }
    assert_eq!(answers, [Outcome::Processed(()), Outcome::AlreadyProcessed, Outcome::AlreadyProcessed]);
    assert_eq!(crate::postgres::effects(database.pool(), "evt_replay").await, 1);
}
