//! A webhook provider and an API client, as the outside world talks to the server: signed
//! Stripe and Standard Webhooks deliveries, retried as providers retry, and the state calls the
//! tests set up with.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sos_webhooks::signature::{sign_standard, sign_stripe};

/// The current Unix time in seconds, as a provider signs with.
pub(crate) fn unix_now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A Stripe `payment_intent.succeeded` event whose payment is for `deal_id`; the same
/// arguments give the same bytes (a provider re-sends an event's bytes unchanged).
pub(crate) fn stripe_payment(event_id: &str, deal_id: &str) -> Vec<u8> {
    json!({
        "id": event_id,
        "object": "event",
        "type": "payment_intent.succeeded",
        "created": 1_763_884_800,
        "data": { "object": {
            "id": format!("pi_{event_id}"),
            "object": "payment_intent",
            "amount": 120_000,
            "currency": "eur",
            "metadata": { "deal_id": deal_id },
        } },
    })
    .to_string()
    .into_bytes()
}

/// One answer of the server.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<String>,
    pub(crate) body: String,
}

impl Answer {
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    /// The `outcome` of a webhook answer, or the `error.code` of an error.
    pub(crate) fn outcome(&self) -> String {
        let json = self.json();
        json["outcome"].as_str().or_else(|| json["error"]["code"].as_str()).unwrap_or_default().to_owned()
    }

    async fn read(response: reqwest::Response) -> Self {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .map(|value| value.to_str().unwrap_or("<not text>").to_owned());
        let body = response.text().await.unwrap_or_default();
        Self { status, retry_after, body }
    }
}

/// The webhook URL of `tenant` and `provider` on the server at `base`.
pub(crate) fn webhook_url(base: &str, tenant: &str, provider: &str) -> String {
    format!("{base}/v1/tenants/{tenant}/webhooks/{provider}")
}

/// A Stripe delivery signed at `timestamp` with `secret`.
pub(crate) fn stripe_request(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    secret: &str,
    timestamp: i64,
    body: &[u8],
) -> reqwest::RequestBuilder {
    client
        .post(webhook_url(base, tenant, "stripe"))
        .header("content-type", "application/json")
        .header("stripe-signature", sign_stripe(secret, timestamp, body))
        .body(body.to_vec())
}

/// A Standard Webhooks delivery of message `id` signed at `timestamp` with `secret`.
pub(crate) fn standard_request(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    secret: &str,
    id: &str,
    timestamp: i64,
    body: &[u8],
) -> reqwest::RequestBuilder {
    let signature =
        sign_standard(secret, id, timestamp, body).expect("a valid Standard Webhooks secret and id");
    client
        .post(webhook_url(base, tenant, "standard"))
        .header("content-type", "application/json")
        .header("webhook-id", id)
        .header("webhook-timestamp", timestamp.to_string())
        .header("webhook-signature", signature)
        .body(body.to_vec())
}

/// Sends a request and reads the answer; `Err` for a transport failure (refused, reset,
/// timed out), which a provider treats like any failed delivery.
pub(crate) async fn send(request: reqwest::RequestBuilder) -> Result<Answer, reqwest::Error> {
    Ok(Answer::read(request.send().await?).await)
}

/// Delivers a Stripe event until the server acknowledges it with a 2xx, as Stripe does: every
/// attempt signed afresh, a failed one (transport error, 409, 5xx) retried after a pause
/// (`Retry-After` when the server gives one, capped for the test). Returns the acknowledging
/// answer and every answer before it.
///
/// # Panics
///
/// When `deadline` passes, or the server answers a 4xx other than 409: a provider would give
/// up on that event, and the test must say so.
pub(crate) async fn deliver_stripe_until_acknowledged(
    client: &reqwest::Client,
    base: &str,
    tenant: &str,
    secret: &str,
    body: &[u8],
    deadline: Instant,
) -> (Answer, Vec<Result<Answer, String>>) {
    let mut attempts = Vec::new();
    let mut pause = Duration::from_millis(50);
    loop {
        let request =
            stripe_request(client, base, tenant, secret, unix_now(), body).timeout(Duration::from_secs(20));
        match send(request).await {
            Ok(answer) if (200..300).contains(&answer.status) => return (answer, attempts),
            Ok(answer) => {
                assert!(
                    (answer.status == 409 || answer.status >= 500) && answer.outcome() != "body_mismatch",
                    "a retryable failure or success expected, got {answer:?} after {attempts:?}"
                );
                if let Some(seconds) = answer.retry_after.as_deref().and_then(|text| text.parse::<u64>().ok())
                {
                    pause = Duration::from_secs(seconds).min(Duration::from_millis(500));
                }
                attempts.push(Ok(answer));
            }
            Err(error) => attempts.push(Err(error.to_string())),
        }
        assert!(Instant::now() < deadline, "never acknowledged within the deadline; attempts: {attempts:?}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(800));
    }
}

/// `PUT /v1/tenants/{tenant}`, asserting success.
pub(crate) async fn create_tenant(client: &reqwest::Client, base: &str, tenant: &str) {
    let answer = send(client.put(format!("{base}/v1/tenants/{tenant}"))).await.expect("the server answers");
    assert!((200..300).contains(&answer.status), "creating tenant {tenant}: {answer:?}");
}

/// A deal record as the API takes it.
pub(crate) fn deal_body(tenant: &str, id: &str, stage: &str) -> Value {
    json!({
        "tenant": tenant,
        "id": id,
        "contact_name": format!("Contact of {id}"),
        "stage": stage,
        "value_cents": 120_000,
    })
}

/// `PUT /v1/tenants/{tenant}/deals/{id}` in stage `proposal`, asserting success.
pub(crate) async fn put_deal(client: &reqwest::Client, base: &str, tenant: &str, id: &str) {
    let answer = send(
        client.put(format!("{base}/v1/tenants/{tenant}/deals/{id}")).json(&deal_body(tenant, id, "proposal")),
    )
    .await
    .expect("the server answers");
    assert!((200..300).contains(&answer.status), "creating deal {id}: {answer:?}");
}

/// `GET` a JSON document, asserting 200.
pub(crate) async fn get_json(client: &reqwest::Client, url: &str) -> Value {
    let answer = send(client.get(url)).await.expect("the server answers");
    assert_eq!(answer.status, 200, "GET {url}: {answer:?}");
    answer.json()
}
