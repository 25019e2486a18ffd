//! The reference server over real HTTP, on SQLite and on PostgreSQL.

use std::sync::Arc;

use serde_json::{Value, json};
use sos_server::{AppState, Database};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};

/// Serves `database` on an ephemeral loopback port and returns the base URL.
async fn spawn_server(database: Database) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    let address = listener.local_addr().expect("local address");
    let app = sos_server::router(AppState::new(database, Arc::new(sos_core::SystemClock)));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("server runs") });
    format!("http://{address}")
}

async fn signal_roundtrip(base: &str) {
    let client = reqwest::Client::new();
    let health: Value = client.get(format!("{base}/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");

    let body = json!({
        "tenant": "acme",
        "kind": "stale-deal",
        "subject": "Deal {0} with %s Acme",
        "text": "9 days since the last action.",
        "severity": "notice",
        "evidence": { "idle_days": 9 }
    });
    let created = client.post(format!("{base}/v1/signals")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["created"], true);
    // Named shape `format-injection`: user text is stored and shown unchanged.
    assert_eq!(created["signal"]["subject"], "Deal {0} with %s Acme");

    let again = client.post(format!("{base}/v1/signals")).json(&body).send().await.unwrap();
    assert_eq!(again.status(), 200, "the same cause is recognised, not stored twice");

    let other_tenant =
        json!({ "tenant": "globex", "kind": "lead-spike", "subject": "Leads", "text": "Tuesday mornings." });
    assert_eq!(
        client.post(format!("{base}/v1/signals")).json(&other_tenant).send().await.unwrap().status(),
        201
    );

    let listed: Value =
        client.get(format!("{base}/v1/signals?tenant=acme")).send().await.unwrap().json().await.unwrap();
    let signals = listed["signals"].as_array().unwrap();
    assert_eq!(signals.len(), 1, "tenant isolation: only acme's signal is listed");
    assert_eq!(signals[0], created["signal"]);

    let bad_json = client
        .post(format!("{base}/v1/signals"))
        .header("content-type", "application/json")
        .body("{ not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_json.status(), 400);
    let error: Value = bad_json.json().await.unwrap();
    assert_eq!(error["error"]["code"], "bad_json");
    assert!(error["error"]["message"].as_str().unwrap().len() > 5);

    let bad_tenant = client
        .post(format!("{base}/v1/signals"))
        .json(&json!({ "tenant": "Acme Corp", "kind": "stale-deal", "subject": "x", "text": "y" }))
        .send()
        .await
        .unwrap();
    assert_eq!(bad_tenant.status(), 400);

    let bad_query = client.get(format!("{base}/v1/signals?tenant=")).send().await.unwrap();
    assert_eq!(bad_query.status(), 400);
    let error: Value = bad_query.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_tenant");
}

#[tokio::test]
async fn signals_roundtrip_on_sqlite() {
    let (sqlite, _) = sos_server::migrators();
    let database = SqliteTestDatabase::new(&[&sqlite]).await;
    signal_roundtrip(&spawn_server(Database::Sqlite(database.pool().clone())).await).await;
}

#[tokio::test]
async fn signals_roundtrip_on_postgres() {
    let (_, postgres) = sos_server::migrators();
    let database = PgTestDatabase::new(&[&postgres]).await;
    signal_roundtrip(&spawn_server(Database::Postgres(database.pool().clone())).await).await;
}
