use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use sos_core::ManualClock;

use super::*;

fn key(event: &str) -> EventKey {
    EventKey::new("acme".parse().unwrap(), "stripe", event).unwrap()
}

fn clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap())
}

#[test]
fn key_parts_are_validated() {
    assert!(Provider::new("").is_err());
    assert!(Provider::new("Stripe").is_err());
    assert!(Provider::new("-x").is_err());
    assert!(Provider::new("standard-webhooks").is_ok());
    assert!(EventId::new("").is_err());
    assert!(EventId::new("evt\0x").is_err());
    assert!(EventId::new("x".repeat(256)).is_err());
    assert!(EventId::new("évènement 1").is_ok());
}

#[test]
fn lock_ids_differ_by_part_boundaries() {
    let tenant: sos_core::TenantId = "a".parse().unwrap();
    let left = EventKey::new(tenant.clone(), "ab", "c").unwrap();
    let right = EventKey::new(tenant, "a", "bc").unwrap();
    assert_ne!(left.lock_id(), right.lock_id());
    assert_eq!(left.lock_id(), left.clone().lock_id());
}

#[test]
fn reasons_are_cleaned_and_truncated_on_char_boundaries() {
    let long = "é".repeat(400);
    let cut = clean_reason(&long);
    assert!(cut.len() <= 500);
    assert!(long.starts_with(&cut));
    assert_eq!(clean_reason("a\0b\u{7}c"), "a\u{FFFD}b\u{FFFD}c");
}

#[test]
fn huge_durations_saturate_safely() {
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    assert!(add(now, Duration::MAX) > now + chrono::Duration::days(365 * 1000), "a huge lease never expires");
    assert!(
        sub(now, Duration::MAX) < now - chrono::Duration::days(365 * 1000),
        "a huge horizon purges nothing"
    );
    assert_eq!(add(now, Duration::from_secs(60)), now + chrono::Duration::seconds(60));
}

#[test]
fn memory_lease_takeover_and_failure_policy() {
    futures::executor::block_on(async {
        let clock = clock();
        let config = GuardConfig::default()
            .with_lease(Duration::from_secs(10))
            .unwrap()
            .with_failed_retry_after(Duration::from_secs(30));
        let guard = WebhookGuard::new(MemoryStore::new(), clock.clone()).with_config(config);
        let event = key("evt_1");
        let request = |now| ClaimRequest {
            key: &event,
            body_hash: Sha256Digest::of(b"{}"),
            now,
            lease_until: add(now, Duration::from_secs(10)),
            failed_reclaimable_before: sub(now, Duration::from_secs(30)),
            lease: Duration::from_secs(10),
            failed_retry_after: Duration::from_secs(30),
        };
        // A worker claims and "dies" (never completes).
        let ClaimAnswer::Claimed(first) = guard.store().claim(&request(clock.now())).await.unwrap() else {
            panic!("the first claim must succeed");
        };
        assert_eq!(
            guard.store().claim(&request(clock.now())).await.unwrap(),
            ClaimAnswer::Duplicate(Duplicate::RetryInFlight)
        );
        clock.advance(chrono::Duration::seconds(10));
        let ClaimAnswer::Claimed(second) = guard.store().claim(&request(clock.now())).await.unwrap() else {
            panic!("the lease expired, so a takeover must succeed");
        };
        assert_eq!(second.attempt(), 2);
        assert!(matches!(guard.store().complete(&first, clock.now()).await, Err(Error::LeaseLost)));
        guard.store().fail(&second, clock.now(), "api down").await.unwrap();
        assert_eq!(guard.store().last_error(&event).as_deref(), Some("api down"));
        let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
        assert_eq!(outcome, Outcome::PriorAttemptFailed);
        clock.advance(chrono::Duration::seconds(30));
        let outcome =
            guard.two_phase(&event, b"{}", |claim| async move { Ok::<_, String>(claim.attempt()) }).await;
        assert_eq!(outcome.unwrap(), Outcome::Processed(3));
        let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(0) }).await.unwrap();
        assert_eq!(outcome, Outcome::AlreadyProcessed);
        let outcome = guard.two_phase(&event, b"{ }", |_| async { Ok::<_, String>(0) }).await.unwrap();
        assert_eq!(outcome, Outcome::BodyMismatch);
    });
}
