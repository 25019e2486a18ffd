//! Named shape `unique-null`: no key column of the dedupe record can be NULL (a NULL would make
//! every row distinct and admit duplicates), and the API cannot build an empty key part.

use sos_webhooks::{EventId, EventKey, Provider};

#[test]
fn empty_key_parts_are_refused() {
    assert!(Provider::new("").is_err());
    assert!(EventId::new("").is_err());
    assert!(EventKey::new("acme".parse().unwrap(), "", "evt_1").is_err());
    assert!(EventKey::new("acme".parse().unwrap(), "stripe", "").is_err());
    assert!(EventId::new("evt\u{0}").is_err(), "NUL cannot be stored in PostgreSQL text");
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_key_columns_are_not_null() {
    let database = crate::postgres::database().await;
    for (tenant, provider, event) in [
        (None, Some("stripe"), Some("e")),
        (Some("acme"), None, Some("e")),
        (Some("acme"), Some("stripe"), None),
    ] {
        let result = sqlx::query(
            "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
             lease_until, first_seen_at, updated_at) VALUES ($1, $2, $3, $4, 'processed', 't', 1, now(), now(), now())",
        )
        .bind(tenant)
        .bind(provider)
        .bind(event)
        .bind(vec![0u8; 32])
        .execute(database.pool())
        .await;
        let error = result.expect_err("a NULL key column must be refused");
        assert_eq!(error.as_database_error().and_then(|e| e.code()).as_deref(), Some("23502"), "{error}");
    }
}

#[cfg(feature = "sqlite")]
#[tokio::test]
async fn sqlite_key_columns_are_not_null() {
    let database = crate::sqlite::database().await;
    for (tenant, provider, event) in [
        (None, Some("stripe"), Some("e")),
        (Some("acme"), None, Some("e")),
        (Some("acme"), Some("stripe"), None),
    ] {
        let result = sqlx::query(
            "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
             lease_until, first_seen_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'processed', 't', 1, 0, 0, 0)",
        )
        .bind(tenant)
        .bind(provider)
        .bind(event)
        .bind(vec![0u8; 32])
        .execute(database.pool())
        .await;
        let error = result.expect_err("a NULL key column must be refused");
        assert!(error.to_string().contains("NOT NULL"), "{error}");
    }
}
