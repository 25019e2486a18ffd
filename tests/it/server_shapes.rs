//! The reference server against the named threat shapes, over real HTTP: `false-delivery`,
//! `replay-same` and `toctou-dedupe` (concurrent deliveries of one webhook), `injection` across
//! the tenant boundary, and arbitrary input never answered with a 5xx.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use chrono::TimeDelta;
use proptest::prelude::*;
use serde_json::{Value, json};
use sos_core::{Clock as _, ManualClock, SystemClock};

use crate::server::{Backend, STANDARD_SECRET, STRIPE_SECRET, TestServer, manual_clock};

/// A channel endpoint that answers each delivery with the next scripted answer (the last one
/// repeats), and counts deliveries.
#[derive(Clone)]
struct Scripted {
    answers: Arc<Mutex<Vec<(u16, &'static str)>>>,
    deliveries: Arc<AtomicUsize>,
}

impl Scripted {
    async fn start(answers: Vec<(u16, &'static str)>) -> (Self, String) {
        let this = Self { answers: Arc::new(Mutex::new(answers)), deliveries: Arc::new(AtomicUsize::new(0)) };
        let handler = this.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move || {
                let handler = handler.clone();
                async move {
                    handler.deliveries.fetch_add(1, Ordering::SeqCst);
                    let (status, body) = {
                        let mut answers = handler.answers.lock().unwrap();
                        if answers.len() > 1 { answers.remove(0) } else { answers[0] }
                    };
                    (axum::http::StatusCode::from_u16(status).unwrap(), body)
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (this, format!("http://{address}/hook"))
    }
}

/// Brings the tenant `acme` to one released insight: an agent planted, 20 messages observed, 6
/// days waited, a contact renewing soon. Returns nothing; the next evaluation releases it.
async fn prepare_insight(server: &TestServer, clock: &ManualClock) {
    let client = reqwest::Client::new();
    assert!(client.put(server.url("/v1/tenants/acme")).send().await.unwrap().status().is_success());
    let agent = client
        .post(server.url("/v1/tenants/acme/agents"))
        .json(&json!({ "name": "ada", "vertical": "grants" }))
        .send()
        .await
        .unwrap();
    assert!(agent.status().is_success());
    for index in 0..20 {
        let message = json!({ "id": format!("m-{index}"), "contact_name": "Initech", "subject": "hi",
                              "direction": "inbound", "at": clock.now() });
        assert_eq!(
            client
                .post(server.url("/v1/tenants/acme/messages"))
                .json(&message)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    clock.advance(TimeDelta::days(6));
    let contact = json!({ "name": "Initech", "renewal_at": clock.now() + TimeDelta::days(9) });
    assert_eq!(
        client.put(server.url("/v1/tenants/acme/contacts/c-1")).json(&contact).send().await.unwrap().status(),
        201
    );
}

async fn evaluate(server: &TestServer) -> Value {
    reqwest::Client::new()
        .post(server.url("/v1/tenants/acme/evaluations"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn renewal(server: &TestServer) -> Value {
    let signals: Value =
        reqwest::get(server.url("/v1/tenants/acme/signals")).await.unwrap().json().await.unwrap();
    signals["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|signal| signal["kind"] == "renewal-upcoming")
        .unwrap()
        .clone()
}

/// Named shape `false-delivery`: a channel that fails (5xx) is not a delivery; the signal is
/// retried at the next evaluation and counts as delivered only once the channel acknowledged it.
#[tokio::test]
async fn false_delivery_a_failed_post_is_retried_until_acknowledged() {
    let clock = manual_clock();
    let (channel, url) = Scripted::start(vec![(200, "ok"), (503, "busy"), (200, "ok")]).await;
    let server =
        TestServer::start(Backend::Sqlite, Arc::new(clock.clone()), &["--slack-webhook-url".to_owned(), url])
            .await;
    prepare_insight(&server, &clock).await;
    let report = evaluate(&server).await;
    assert_eq!(
        (report["released"].as_u64(), report["delivered"].as_u64(), report["failed"].as_u64()),
        (Some(1), Some(0), Some(1))
    );
    let signal = renewal(&server).await;
    assert_eq!(signal["status"], "failed");
    assert_eq!(signal["receipts"][0]["status"], "failed");
    // Feedback on a signal nobody saw is refused.
    let id = signal["id"].as_str().unwrap();
    let early = reqwest::Client::new()
        .post(server.url(&format!("/v1/tenants/acme/signals/{id}/feedback")))
        .json(&json!({ "verdict": "accepted" }))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 409);
    let report = evaluate(&server).await;
    assert_eq!((report["released"].as_u64(), report["delivered"].as_u64()), (Some(0), Some(1)), "{report}");
    let signal = renewal(&server).await;
    assert_eq!(signal["status"], "delivered");
    assert_eq!(signal["receipts"].as_array().unwrap().len(), 2);
    assert_eq!(signal["receipts"][1]["status"], "acknowledged");
    // Introduction, failed attempt, acknowledged attempt: three posts, no more.
    assert_eq!(channel.deliveries.load(Ordering::SeqCst), 3);
    evaluate(&server).await;
    assert_eq!(channel.deliveries.load(Ordering::SeqCst), 3, "a delivered signal is never posted again");
    server.stop().await;
}

/// Graceful shutdown: a request in flight when the server is told to stop (here an evaluation
/// waiting on a slow channel) finishes, and its receipt is committed; nothing is half-written.
#[tokio::test]
async fn graceful_shutdown_finishes_an_in_flight_evaluation() {
    let clock = manual_clock();
    let slow = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async {
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            "ok"
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, slow).await });
    let server =
        TestServer::start(Backend::Sqlite, Arc::new(clock.clone()), &["--slack-webhook-url".to_owned(), url])
            .await;
    prepare_insight(&server, &clock).await;
    let evaluation =
        tokio::spawn(reqwest::Client::new().post(server.url("/v1/tenants/acme/evaluations")).send());
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let database = server.dir.path().join("sos.sqlite");
    let started = std::time::Instant::now();
    // `stop` returns once the server has shut down; the evaluation was mid-delivery.
    let stopping = tokio::spawn(server.stop_keeping_files());
    let response = evaluation.await.unwrap().expect("the in-flight request is answered");
    assert_eq!(response.status(), 200);
    let report: Value = response.json().await.unwrap();
    assert_eq!(report["delivered"], 1, "{report}");
    let _dir = stopping.await.unwrap();
    assert!(started.elapsed() >= std::time::Duration::from_millis(900), "shutdown waited for the request");
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", database.display())).await.unwrap();
    let statuses: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.status, (SELECT COUNT(*) FROM sos_server_receipts r WHERE r.tenant = s.tenant AND r.signal_id = s.id) \
         FROM sos_server_signals s WHERE s.kind = 'renewal-upcoming'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(statuses, vec![("delivered".to_owned(), 1)], "the receipt committed with the status");
    let chain = sos_audit::SqliteAuditChain::new(pool);
    assert!(
        sos_audit::verify_store(&chain, &"acme".parse().unwrap(), None, |_| {}).await.unwrap().is_intact()
    );
}

/// Named shape `false-delivery`: a 2xx answer that neither says `ok` nor names the message is not
/// an acknowledgement, and a 4xx is a rejection that is not retried.
#[tokio::test]
async fn false_delivery_a_2xx_without_acknowledgement_is_a_rejection() {
    let clock = manual_clock();
    let (channel, url) = Scripted::start(vec![(200, "ok"), (200, "<html>proxy login</html>")]).await;
    let server =
        TestServer::start(Backend::Sqlite, Arc::new(clock.clone()), &["--slack-webhook-url".to_owned(), url])
            .await;
    prepare_insight(&server, &clock).await;
    let report = evaluate(&server).await;
    assert_eq!((report["delivered"].as_u64(), report["failed"].as_u64()), (Some(0), Some(1)), "{report}");
    let signal = renewal(&server).await;
    assert_eq!(signal["status"], "rejected");
    assert_eq!(signal["receipts"][0]["status"], "rejected");
    evaluate(&server).await;
    assert_eq!(
        channel.deliveries.load(Ordering::SeqCst),
        2,
        "a rejected signal is not posted again unchanged"
    );
    let entries: Value = reqwest::get(server.url("/v1/tenants/acme/audit/entries?limit=1000"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let actions: Vec<&str> = entries["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| entry["action"].as_str().unwrap())
        .collect();
    assert!(actions.contains(&"signal.delivery_failed"));
    assert_eq!(
        actions.iter().filter(|action| **action == "signal.delivered").count(),
        1,
        "only the introduction"
    );
    server.stop().await;
}

async fn concurrent_deliveries(backend: Backend) {
    let server = TestServer::start(backend, Arc::new(SystemClock), &[]).await;
    let client = reqwest::Client::new();
    assert_eq!(client.put(server.url("/v1/tenants/acme")).send().await.unwrap().status(), 201);
    let deal = json!({ "contact_name": "Acme", "stage": "negotiation" });
    assert_eq!(
        client.put(server.url("/v1/tenants/acme/deals/d-1")).json(&deal).send().await.unwrap().status(),
        201
    );
    let body = json!({ "id": "evt_race", "type": "invoice.paid",
                       "data": { "object": { "metadata": { "deal_id": "d-1" } } } })
    .to_string();
    let signature = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, server.app_now(), body.as_bytes());
    let mut deliveries = Vec::new();
    for _ in 0..20 {
        let request = client
            .post(server.url("/v1/tenants/acme/webhooks/stripe"))
            .header("stripe-signature", signature.clone())
            .body(body.clone());
        deliveries.push(tokio::spawn(async move { request.send().await.unwrap() }));
    }
    let mut processed = 0;
    for delivery in deliveries {
        let response = delivery.await.unwrap();
        match response.status().as_u16() {
            200 => {
                let answer: Value = response.json().await.unwrap();
                if answer["outcome"] == "processed" {
                    processed += 1;
                }
            }
            503 | 409 => assert!(response.headers().contains_key("retry-after") || response.status() == 409),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(processed, 1, "exactly one delivery ran the handler");
    let deal: Value =
        client.get(server.url("/v1/tenants/acme/deals/d-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!((deal["record"]["stage"].as_str(), deal["version"].as_u64()), (Some("closed-won"), Some(2)));
    let entries: Value = client
        .get(server.url("/v1/tenants/acme/audit/entries?limit=1000"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let won =
        entries["entries"].as_array().unwrap().iter().filter(|entry| entry["action"] == "deal.won").count();
    assert_eq!(won, 1, "one effect, one audit entry");
    server.stop().await;
}

/// Named shapes `replay-same` and `toctou-dedupe`: twenty concurrent deliveries of one signed
/// event change the deal once and leave one audit entry.
#[tokio::test]
async fn replay_same_concurrent_deliveries_have_one_effect_on_sqlite() {
    concurrent_deliveries(Backend::Sqlite).await;
}

/// As above, on PostgreSQL.
#[tokio::test]
async fn replay_same_concurrent_deliveries_have_one_effect_on_postgres() {
    concurrent_deliveries(Backend::postgres().await).await;
}

/// Named shape `injection`: a tenant's signed webhooks change only that tenant's records, and
/// one tenant's secret signs nothing for another.
#[tokio::test]
async fn injection_webhooks_stay_inside_their_tenant() {
    let server = TestServer::start(
        Backend::Sqlite,
        Arc::new(SystemClock),
        &["--webhook-secret".to_owned(), "globex:stripe=whsec_globex_secret".to_owned()],
    )
    .await;
    let client = reqwest::Client::new();
    for tenant in ["acme", "globex"] {
        assert_eq!(
            client.put(server.url(&format!("/v1/tenants/{tenant}"))).send().await.unwrap().status(),
            201
        );
    }
    let deal = json!({ "contact_name": "Globex", "stage": "negotiation" });
    assert_eq!(
        client.put(server.url("/v1/tenants/globex/deals/g-1")).json(&deal).send().await.unwrap().status(),
        201
    );

    // Acme's payment naming Globex's deal is only recorded; Globex's deal is untouched.
    let body = json!({ "id": "evt_x", "type": "invoice.paid", "data": { "object": { "metadata": { "deal_id": "g-1" } } } })
        .to_string();
    let signature = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, server.app_now(), body.as_bytes());
    let answer: Value = client
        .post(server.url("/v1/tenants/acme/webhooks/stripe"))
        .header("stripe-signature", signature.clone())
        .body(body.clone())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["effect"], "recorded");
    let globex: Value =
        client.get(server.url("/v1/tenants/globex/deals/g-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(globex["record"]["stage"], "negotiation");
    // Acme's signature does not open Globex's endpoint.
    let crossed = client
        .post(server.url("/v1/tenants/globex/webhooks/stripe"))
        .header("stripe-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(crossed.status(), 401);
    // A Standard Webhooks event of acme naming globex in its data is refused, nothing stored.
    let event = json!({ "type": "deal.upserted", "data": { "tenant": "globex", "id": "g-1", "contact_name": "Evil", "stage": "closed-lost" } })
        .to_string();
    let timestamp = server.app_now();
    let signature =
        sos_webhooks::signature::sign_standard(STANDARD_SECRET, "msg_evil", timestamp, event.as_bytes())
            .unwrap();
    let refused = client
        .post(server.url("/v1/tenants/acme/webhooks/standard"))
        .header("webhook-id", "msg_evil")
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(event)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(refused.json::<Value>().await.unwrap()["error"]["code"], "tenant_mismatch");
    let globex: Value =
        client.get(server.url("/v1/tenants/globex/deals/g-1")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (globex["record"]["contact_name"].as_str(), globex["version"].as_u64()),
        (Some("Globex"), Some(1))
    );
    assert_eq!(client.get(server.url("/v1/tenants/acme/deals/g-1")).send().await.unwrap().status(), 404);
    server.stop().await;
}

/// One server for the property test below, on its own runtime.
fn shared_server() -> &'static (tokio::runtime::Runtime, String) {
    static SERVER: std::sync::OnceLock<(tokio::runtime::Runtime, String)> = std::sync::OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let base = runtime.block_on(async {
            let server = TestServer::start(Backend::Sqlite, Arc::new(SystemClock), &[]).await;
            let client = reqwest::Client::new();
            client.put(server.url("/v1/tenants/acme")).send().await.unwrap();
            client
                .post(server.url("/v1/tenants/acme/agents"))
                .json(&json!({ "name": "ada", "vertical": "generic" }))
                .send()
                .await
                .unwrap();
            let base = server.base.clone();
            // The server lives as long as the test binary.
            std::mem::forget(server);
            base
        });
        (runtime, base)
    })
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("acme".to_owned()),
        Just("ada".to_owned()),
        Just("stripe".to_owned()),
        Just("standard".to_owned()),
        Just("1".to_owned()),
        "[a-z0-9_-]{0,12}",
        "\\PC{0,8}".prop_map(|text| text.bytes().map(|byte| format!("%{byte:02X}")).collect()),
    ]
}

fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        Just(br#"{"contact_name":"x","stage":"proposal"}"#.to_vec()),
        Just(br#"{"name":"x","vertical":"generic"}"#.to_vec()),
        Just(br#"{"verdict":"accepted"}"#.to_vec()),
        any::<String>().prop_map(|text| json!({ "name": text, "stage": text, "value_cents": 1e300 })
            .to_string()
            .into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    /// Whatever the method, path, headers and body, the answer is never a 5xx, and every error
    /// is the JSON error body.
    #[test]
    fn arbitrary_requests_never_get_a_server_error(
        method in prop_oneof![Just("GET"), Just("PUT"), Just("POST")],
        route in prop_oneof![
            Just("/v1/tenants/{0}"), Just("/v1/tenants/{0}/deals/{1}"), Just("/v1/tenants/{0}/contacts/{1}"),
            Just("/v1/tenants/{0}/messages"), Just("/v1/tenants/{0}/agents"), Just("/v1/tenants/{0}/agents/{1}"),
            Just("/v1/tenants/{0}/agents/{1}/portrait.svg"), Just("/v1/tenants/{0}/webhooks/{1}"),
            Just("/v1/tenants/{0}/signals/{1}/feedback"), Just("/v1/tenants/{0}/audit/proofs/{1}"),
            Just("/v1/tenants/{0}/audit/entries?after={1}&limit={1}"), Just("/v1/tenants/{0}/evaluations"),
        ],
        first in segment(),
        second in segment(),
        payload in body(),
        signature in prop_oneof![Just(None), "\\PC{0,80}".prop_map(Some)],
    ) {
        let (runtime, base) = shared_server();
        let url = format!("{base}{}", route.replace("{0}", &first).replace("{1}", &second));
        let (status, text) = runtime.block_on(async {
            let client = reqwest::Client::new();
            let mut request = client.request(method.parse().unwrap(), &url).body(payload);
            if let Some(signature) = signature {
                request = request.header("stripe-signature", signature.clone()).header("webhook-signature", signature)
                    .header("webhook-id", "msg_1").header("webhook-timestamp", "1");
            }
            match request.send().await {
                Ok(response) => (response.status().as_u16(), response.text().await.unwrap_or_default()),
                // A URL or header reqwest itself refuses never reached the server.
                Err(error) if error.is_builder() => (200, String::new()),
                Err(error) => panic!("{url}: {error}"),
            }
        });
        prop_assert!(status < 500, "{method} {url} answered {status}: {text}");
        if status >= 400 {
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            prop_assert!(body["error"]["code"].is_string(), "{method} {url} answered {status} without the error body: {text}");
        }
    }
}

/// Each tenant's signals go to its own channel URL when it has one, to the default otherwise
/// (tenant isolation of channels): two tenants' introductions reach two different receivers.
#[tokio::test]
async fn injection_a_tenants_signals_reach_only_its_own_channel() {
    let (default, default_url) = Scripted::start(vec![(200, "ok")]).await;
    let (globex, globex_url) = Scripted::start(vec![(200, "ok")]).await;
    let server = TestServer::start(
        Backend::Sqlite,
        Arc::new(SystemClock),
        &[
            "--slack-webhook-url".to_owned(),
            default_url,
            "--slack-webhook-url".to_owned(),
            format!("globex={globex_url}"),
        ],
    )
    .await;
    let client = reqwest::Client::new();
    for tenant in ["acme", "globex"] {
        assert_eq!(
            client.put(server.url(&format!("/v1/tenants/{tenant}"))).send().await.unwrap().status(),
            201
        );
        let agent = client
            .post(server.url(&format!("/v1/tenants/{tenant}/agents")))
            .json(&json!({ "name": "ada", "vertical": "generic" }))
            .send()
            .await
            .unwrap();
        assert_eq!(agent.status(), 201);
    }
    assert_eq!(
        default.deliveries.load(Ordering::SeqCst),
        1,
        "acme's introduction went to the default channel"
    );
    assert_eq!(globex.deliveries.load(Ordering::SeqCst), 1, "globex's went to its own");
    server.stop().await;
}
