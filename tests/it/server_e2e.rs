//! The whole loop of the reference server, end to end over real HTTP, on SQLite and on
//! PostgreSQL: signed webhook → state change + audit entry (read from the tables) → evaluation →
//! trust gate → signal delivered to a local Slack-compatible receiver (payload checked) →
//! feedback moves the gate → the chain verifies, with a checkpoint and an inclusion proof.
//!
//! Days pass on a `ManualClock` injected into the server: the agent is planted, observes 20
//! messages and waits out the gate's 5 days (the grants pack) exactly as in production; nothing
//! skips the gate.

use std::sync::{Arc, Mutex};

use axum::http::StatusCode;
use chrono::TimeDelta;
use serde_json::{Value, json};
use sos_core::Clock as _;

use crate::server::{Backend, STANDARD_SECRET, STRIPE_SECRET, TestServer, manual_clock};

/// A Slack-compatible incoming webhook on loopback that keeps every payload and answers `ok`
/// with an `x-slack-req-id`, as Slack does.
#[derive(Clone, Default)]
struct Receiver {
    payloads: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    async fn start(&self) -> String {
        let payloads = Arc::clone(&self.payloads);
        let app = axum::Router::new().route(
            "/services/T000/B000/XXXX",
            axum::routing::post(move |body: axum::body::Bytes| {
                let payloads = Arc::clone(&payloads);
                async move {
                    let payload: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    let count = {
                        let mut payloads = payloads.lock().unwrap();
                        payloads.push(payload);
                        payloads.len()
                    };
                    ([("x-slack-req-id", format!("req-{count}"))], "ok")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{address}/services/T000/B000/XXXX")
    }

    fn texts(&self) -> Vec<String> {
        self.payloads
            .lock()
            .unwrap()
            .iter()
            .map(|payload| payload["text"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// Rows the test reads straight from the server's tables.
async fn rows(server: &TestServer, sql: &str) -> Vec<(String, String)> {
    match &server.backend {
        Backend::Postgres(database) => sqlx::query_as(sql).fetch_all(database.pool()).await.unwrap(),
        Backend::Sqlite => {
            let url = format!("sqlite://{}", server.dir.path().join("sos.sqlite").display());
            let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
            let rows = sqlx::query_as(sql).fetch_all(&pool).await.unwrap();
            pool.close().await;
            rows
        }
    }
}

async fn post_standard(
    client: &reqwest::Client,
    server: &TestServer,
    id: &str,
    body: &Value,
) -> reqwest::Response {
    let body = body.to_string();
    let timestamp = server.app_now();
    let signature =
        sos_webhooks::signature::sign_standard(STANDARD_SECRET, id, timestamp, body.as_bytes()).unwrap();
    client
        .post(server.url("/v1/tenants/acme/webhooks/standard"))
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn whole_loop(backend: Backend) {
    let clock = manual_clock();
    let receiver = Receiver::default();
    let slack = receiver.start().await;
    let server =
        TestServer::start(backend, Arc::new(clock.clone()), &["--slack-webhook-url".to_owned(), slack]).await;
    let client = reqwest::Client::new();
    let json_of = |response: reqwest::Response| async move {
        let status = response.status();
        let body: Value = response.json().await.unwrap();
        (status, body)
    };

    // A tenant and its agent: planted, introduced (the one hello goes out at once), observing.
    assert_eq!(client.put(server.url("/v1/tenants/acme")).send().await.unwrap().status(), 201);
    let (status, agent) = json_of(
        client
            .post(server.url("/v1/tenants/acme/agents"))
            .json(&json!({ "name": "ada", "vertical": "grants" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{agent}");
    assert_eq!(agent["role"], "grants coordinator", "the pack's role is the default");
    assert_eq!(agent["vector"].as_str().unwrap().len(), 64);
    assert_eq!(agent["trust"]["phase"], "observing");
    assert!(agent["pack"]["ruliads"].as_array().unwrap().iter().any(|name| name == "renewal-upcoming"));
    assert_eq!(
        receiver.texts(),
        vec!["*Hi, I'm ada*\nHi, I'm ada. I'll be quiet for a few days while I learn your rhythm."]
    );
    let portrait = client.get(server.url("/v1/tenants/acme/agents/ada/portrait.svg")).send().await.unwrap();
    assert_eq!(portrait.headers()["content-type"], "image/svg+xml");
    assert!(portrait.text().await.unwrap().starts_with("<svg"));

    // A deal, and twenty messages the agent observes.
    let (status, _) = json_of(
        client
            .put(server.url("/v1/tenants/acme/deals/d-1"))
            .json(
                &json!({ "contact_name": "Acme Foundation", "stage": "proposal", "value_cents": 4_500_000 }),
            )
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    for index in 0..20 {
        let message = json!({
            "id": format!("m-{index}"),
            "contact_name": "Initech Fund",
            "subject": "Re: the application",
            "direction": if index % 2 == 0 { "inbound" } else { "outbound" },
            "at": clock.now(),
        });
        let response =
            client.post(server.url("/v1/tenants/acme/messages")).json(&message).send().await.unwrap();
        assert_eq!(response.status(), 201);
    }

    // Too early: nothing fired yet, and the gate would hold an insight back (day 0 of 5).
    let (_, report) =
        json_of(client.post(server.url("/v1/tenants/acme/evaluations")).send().await.unwrap()).await;
    assert_eq!(report["released"], 0, "{report}");
    clock.advance(TimeDelta::days(6));

    // A signed Standard Webhooks event upserts a contact whose renewal is near.
    let renewal_at = clock.now() + TimeDelta::days(9);
    let event = json!({
        "type": "contact.upserted",
        "data": { "id": "c-1", "name": "Initech <Fund> & Co", "interactions": 4, "renewal_at": renewal_at },
    });
    let (status, answer) = json_of(post_standard(&client, &server, "msg_c1", &event).await).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["outcome"], "processed");
    assert_eq!(answer["effect"], "contact_upserted");
    let contact_seq = answer["audit_seq"].as_u64().unwrap();
    // The state change and its audit entry are both in the tables.
    let stored =
        rows(&server, "SELECT id, body FROM sos_server_records WHERE tenant = 'acme' AND kind = 'contact'")
            .await;
    assert_eq!(stored.len(), 1);
    assert!(stored[0].1.contains("Initech <Fund> & Co"));
    let audited = rows(
        &server,
        &format!("SELECT actor, action FROM audit_entries WHERE tenant = 'acme' AND seq = {contact_seq}"),
    )
    .await;
    assert_eq!(audited, vec![("webhook:standard".to_owned(), "contact.upsert".to_owned())]);
    // A redelivery is answered from the first outcome and changes nothing.
    let entries_before =
        rows(&server, "SELECT tenant, CAST(COUNT(*) AS TEXT) FROM audit_entries GROUP BY tenant").await;
    let (status, again) = json_of(post_standard(&client, &server, "msg_c1", &event).await).await;
    assert_eq!((status, again["outcome"].as_str()), (StatusCode::OK, Some("already_processed")));
    let entries_after =
        rows(&server, "SELECT tenant, CAST(COUNT(*) AS TEXT) FROM audit_entries GROUP BY tenant").await;
    assert_eq!(entries_before, entries_after, "a duplicate leaves no audit entry");

    // A signed Stripe payment marks the deal won, with its audit entry.
    let payment = json!({
        "id": "evt_pay_1",
        "type": "payment_intent.succeeded",
        "data": { "object": { "amount": 4_500_000, "metadata": { "deal_id": "d-1" } } },
    })
    .to_string();
    let signature = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, server.app_now(), payment.as_bytes());
    let (status, answer) = json_of(
        client
            .post(server.url("/v1/tenants/acme/webhooks/stripe"))
            .header("stripe-signature", signature)
            .body(payment)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, answer["effect"].as_str()), (StatusCode::OK, Some("deal_won")), "{answer}");
    let (_, deal) = json_of(client.get(server.url("/v1/tenants/acme/deals/d-1")).send().await.unwrap()).await;
    assert_eq!(deal["record"]["stage"], "closed-won");
    assert_eq!(deal["version"], 2);
    let won = rows(
        &server,
        "SELECT actor, action FROM audit_entries WHERE tenant = 'acme' AND action = 'deal.won'",
    )
    .await;
    assert_eq!(won, vec![("webhook:stripe".to_owned(), "deal.won".to_owned())]);

    // The evaluation: the renewal insight passes the gate (20 messages, day 6 of 5) and reaches
    // the receiver, escaped so that user text is never markup.
    let (status, report) =
        json_of(client.post(server.url("/v1/tenants/acme/evaluations")).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!((report["released"].as_u64(), report["delivered"].as_u64()), (Some(1), Some(1)), "{report}");
    let texts = receiver.texts();
    assert_eq!(texts.len(), 2);
    assert_eq!(
        texts[1],
        format!(
            "*Renewal for Initech &lt;Fund&gt; &amp; Co*\nInitech &lt;Fund&gt; &amp; Co renews on {}.",
            renewal_at.format("%Y-%m-%d")
        )
    );
    let (_, signals) =
        json_of(client.get(server.url("/v1/tenants/acme/signals")).send().await.unwrap()).await;
    let renewal = signals["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|signal| signal["kind"] == "renewal-upcoming")
        .expect("the renewal signal is listed")
        .clone();
    assert_eq!(renewal["status"], "delivered");
    assert_eq!(renewal["class"], "insight");
    assert_eq!(renewal["receipts"], json!([{ "status": "acknowledged", "message_id": "req-2" }]));
    // Running again delivers nothing twice.
    let (_, report) =
        json_of(client.post(server.url("/v1/tenants/acme/evaluations")).send().await.unwrap()).await;
    assert_eq!(report["delivered"], 0, "{report}");
    assert_eq!(receiver.texts().len(), 2);

    // Feedback moves the gate: the budget rises and interventions are now earned.
    let id = renewal["id"].as_str().unwrap();
    let (status, feedback) = json_of(
        client
            .post(server.url(&format!("/v1/tenants/acme/signals/{id}/feedback")))
            .json(&json!({ "verdict": "accepted" }))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{feedback}");
    assert_eq!(feedback["trust"]["insight_accepted"], true);
    assert_eq!(feedback["trust"]["budget_per_day"], 1.25);
    let again = client
        .post(server.url(&format!("/v1/tenants/acme/signals/{id}/feedback")))
        .json(&json!({ "verdict": "rejected" }))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409, "feedback is given once");

    // The chain verifies over HTTP and on its own, and every entry is provably in the
    // checkpoint's tree.
    let (_, verdict) =
        json_of(client.get(server.url("/v1/tenants/acme/audit/verify")).send().await.unwrap()).await;
    assert_eq!(verdict["intact"], true, "{verdict}");
    let tenant: sos_core::TenantId = "acme".parse().unwrap();
    let verdict = match &server.backend {
        Backend::Postgres(database) => sos_audit::verify_store(
            &sos_audit::PgAuditChain::new(database.pool().clone()),
            &tenant,
            None,
            |_| {},
        )
        .await
        .unwrap(),
        Backend::Sqlite => {
            let url = format!("sqlite://{}", server.dir.path().join("sos.sqlite").display());
            let chain = sos_audit::SqliteAuditChain::new(sqlx::SqlitePool::connect(&url).await.unwrap());
            sos_audit::verify_store(&chain, &tenant, None, |_| {}).await.unwrap()
        }
    };
    assert!(verdict.is_intact(), "{verdict:?}");
    let (_, checkpoint) =
        json_of(client.get(server.url("/v1/tenants/acme/audit/checkpoint")).send().await.unwrap()).await;
    let verifier =
        sos_audit::note::NoteVerifier::from_key_string(checkpoint["verifier_key"].as_str().unwrap()).unwrap();
    let opened = sos_audit::note::Checkpoint::open(
        checkpoint["note"].as_str().unwrap().as_bytes(),
        &verifier,
        "sos-server/acme",
    )
    .expect("the checkpoint's signature verifies");
    let (_, page) = json_of(
        client
            .get(server.url(&format!("/v1/tenants/acme/audit/entries?after={}&limit=1", contact_seq - 1)))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let proof = client
        .get(server.url(&format!("/v1/tenants/acme/audit/proofs/{contact_seq}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let proof = sos_audit::tlog::EntryProof::from_json(&proof).expect("the proof is in the CLI's JSON");
    assert_eq!(proof.seq, contact_seq);
    assert_eq!(proof.entry_hash.to_hex(), page["entries"][0]["hash"].as_str().unwrap());
    let proven = proof.verify(&verifier).expect("the webhook's entry is in the signed tree");
    assert_eq!(proven.size, opened.size, "proved against the latest checkpoint");
    server.stop().await;
}

#[tokio::test]
async fn whole_loop_on_sqlite() {
    whole_loop(Backend::Sqlite).await;
}

#[tokio::test]
async fn whole_loop_on_postgres() {
    whole_loop(Backend::postgres().await).await;
}
