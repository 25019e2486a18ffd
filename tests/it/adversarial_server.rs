//! Adversarial review of the reference server over HTTP, against a real server process.
//!
//! Each test is named after the threat shape it attacks (docs/threat-shapes.md) and asserts the
//! safe behaviour: tenant boundaries (a tenant's secret, state, audit entries and proofs are
//! never reachable through another tenant), forged, replayed and stale signatures, oversized
//! bodies, bad JSON, unknown tenants and agents, and hostile path segments (NUL bytes, huge
//! ids, bad percent-encoding). Every error is `{"error":{"code","message"}}` and no client
//! input gets a 5xx.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::server_process::harness::{ServerArgs, ServerProcess, scratch_dir};
use crate::server_process::provider::{
    self, Answer, create_tenant, deal_body, put_deal, send, standard_request, stripe_payment, stripe_request,
    unix_now,
};
use crate::server_process::tables::Tables;

const ACME_STRIPE: &str = "whsec_acme_stripe_adversarial";
const GLOBEX_STRIPE: &str = "whsec_globex_stripe_adversarial";
const MAX_BODY: usize = 4096;

fn standard_secret(tenant: &str) -> String {
    let raw = format!("{tenant}-standard-webhooks-secret-for-tests");
    format!("whsec_{}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// One server on SQLite with tenants `acme` and `globex`, each with its own Stripe and Standard
/// Webhooks secrets, and a small body limit.
struct Target {
    _dir: tempfile::TempDir,
    // Dropped after the server (fields drop in order), so the server never loses its database.
    server: ServerProcess,
    _database: Option<sos_testkit::PgTestDatabase>,
    client: reqwest::Client,
    tables: Tables,
}

impl Target {
    /// The target on SQLite.
    async fn start() -> Self {
        Self::start_on(false).await
    }

    /// The target on PostgreSQL (`true`) or SQLite.
    async fn start_on(postgres: bool) -> Self {
        let dir = scratch_dir();
        let database = if postgres { Some(sos_testkit::PgTestDatabase::new(&[]).await) } else { None };
        let args = match &database {
            Some(database) => ServerArgs::postgres(dir.path(), database.url()),
            None => ServerArgs::sqlite(dir.path()),
        };
        let args = args
            .arg("--webhook-secret", format!("acme:stripe={ACME_STRIPE}"))
            .arg("--webhook-secret", format!("globex:stripe={GLOBEX_STRIPE}"))
            .arg("--webhook-secret", format!("acme:standard={}", standard_secret("acme")))
            .arg("--webhook-secret", format!("globex:standard={}", standard_secret("globex")))
            .arg("--max-body-bytes", MAX_BODY.to_string())
            .arg("--eval-interval", "0");
        let sqlite_path = args.sqlite_path();
        let server = ServerProcess::start("adversarial", dir.path(), args).await;
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        create_tenant(&client, &server.url(), "acme").await;
        create_tenant(&client, &server.url(), "globex").await;
        let tables = match &database {
            Some(database) => Tables::Postgres(database.pool().clone()),
            None => Tables::Sqlite(sos_testkit::sqlite_pool(&sqlite_path, 2).await),
        };
        Self { _dir: dir, server, _database: database, client, tables }
    }

    /// The verifier key the server wrote beside its signing key.
    fn verifier(&self) -> sos_audit::note::NoteVerifier {
        let path = self._dir.path().join("checkpoint.key.pub");
        sos_audit::tlog::load_verifier(&path.display().to_string())
            .expect("the server wrote its verifier key")
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.server.url())
    }

    async fn get(&self, path: &str) -> Answer {
        send(self.client.get(self.url(path))).await.expect("the server answers")
    }

    async fn stripe(&self, tenant: &str, secret: &str, timestamp: i64, body: &[u8]) -> Answer {
        send(stripe_request(&self.client, &self.server.url(), tenant, secret, timestamp, body))
            .await
            .expect("the server answers")
    }
}

/// Asserts a JSON error answer with `status` (and `code`, when given).
#[track_caller]
fn assert_error(answer: &Answer, status: u16, code: Option<&str>) {
    assert_eq!(answer.status, status, "{answer:?}");
    let body = answer.json();
    let actual =
        body["error"]["code"].as_str().unwrap_or_else(|| panic!("an error body with a code: {answer:?}"));
    assert!(
        !actual.is_empty() && actual.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
        "a stable snake_case code: {answer:?}"
    );
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "a message: {answer:?}");
    if let Some(code) = code {
        assert_eq!(actual, code, "{answer:?}");
    }
}

/// Asserts a client error (4xx) with the JSON error body, never a 5xx.
#[track_caller]
fn assert_client_error(answer: &Answer, context: &str) {
    assert!((400..500).contains(&answer.status), "{context}: a 4xx expected, got {answer:?}");
    let body = answer.json();
    assert!(
        body["error"]["code"].as_str().is_some(),
        "{context}: a JSON error body expected, got {answer:?}"
    );
}

/// Records a violation unless `answer` is a 4xx with the JSON error body (or, with `allow_ok`,
/// a 2xx): the hostile-input tests list every violation at once.
fn check_answer(violations: &mut Vec<String>, answer: &Answer, context: &str, allow_ok: bool) {
    let context = &context[..context.len().min(100)];
    let ok = allow_ok && (200..300).contains(&answer.status);
    let client_error =
        (400..500).contains(&answer.status) && answer.json()["error"]["code"].as_str().is_some();
    if !ok && !client_error {
        violations.push(format!(
            "{context}: {} {}",
            answer.status,
            &answer.body[..answer.body.len().min(200)]
        ));
    }
}

// ---------------------------------------------------------------------------------------------
// signature-bypass
// ---------------------------------------------------------------------------------------------

/// Named shape `signature-bypass`: globex's secret does not sign for acme, nor the reverse,
/// and a failed delivery changes nothing.
#[tokio::test]
async fn signature_bypass_one_tenants_secret_does_not_sign_for_another() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-1").await;
    let body = stripe_payment("evt_cross_secret", "d-1");
    let answer = target.stripe("acme", GLOBEX_STRIPE, unix_now(), &body).await;
    assert_error(&answer, 401, Some("bad_signature"));
    let answer = target.stripe("globex", ACME_STRIPE, unix_now(), &body).await;
    assert_error(&answer, 401, Some("bad_signature"));
    let event =
        json!({ "type": "deal.upserted", "data": deal_body("acme", "d-1", "closed-lost") }).to_string();
    for (tenant, secret) in [("acme", standard_secret("globex")), ("globex", standard_secret("acme"))] {
        let request = standard_request(
            &target.client,
            &target.server.url(),
            tenant,
            &secret,
            "msg_cross_secret",
            unix_now(),
            event.as_bytes(),
        );
        assert_error(&send(request).await.unwrap(), 401, Some("bad_signature"));
    }
    let (stage, _) = target.tables.deal("acme", "d-1").await.unwrap();
    assert_eq!(stage, "proposal", "a refused delivery changed nothing");
    assert!(target.tables.webhook_records("acme").await.is_empty(), "a refused delivery claimed nothing");
}

/// Named shape `signature-bypass`: a missing, malformed, forged or tampered signature is 401,
/// and none of them claims the event id (so the genuine delivery still goes through).
#[tokio::test]
async fn signature_bypass_missing_malformed_forged_and_tampered_signatures_get_401() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-1").await;
    let body = stripe_payment("evt_forged", "d-1");
    let url = provider::webhook_url(&target.server.url(), "acme", "stripe");
    let now = unix_now();
    let post = |signature: Option<String>, body: Vec<u8>| {
        let mut request = target.client.post(&url).header("content-type", "application/json").body(body);
        if let Some(signature) = signature {
            request = request.header("stripe-signature", signature);
        }
        send(request)
    };
    let missing = post(None, body.clone()).await.unwrap();
    assert_error(&missing, 401, None);
    for malformed in ["", "garbage", "t=,v1=", &format!("t={now}"), "v1=00", &format!("t={now},v1=zz")] {
        let answer = post(Some(malformed.to_owned()), body.clone()).await.unwrap();
        assert_error(&answer, 401, None);
    }
    let forged = format!("t={now},v1={}", "ab".repeat(32));
    assert_error(&post(Some(forged), body.clone()).await.unwrap(), 401, Some("bad_signature"));
    // A genuine signature over other bytes: the body was changed in transit.
    let genuine = sos_webhooks::signature::sign_stripe(ACME_STRIPE, now, &body);
    let mut tampered = body.clone();
    let position = tampered.len() - 3;
    tampered[position] ^= 0x01;
    assert_error(&post(Some(genuine.clone()), tampered).await.unwrap(), 401, Some("bad_signature"));
    // A signature for another timestamp than the one it claims.
    let shifted = genuine.replacen(&format!("t={now}"), &format!("t={}", now - 1), 1);
    assert_error(&post(Some(shifted), body.clone()).await.unwrap(), 401, Some("bad_signature"));
    assert!(target.tables.webhook_records("acme").await.is_empty(), "no refused delivery claimed the event");
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &body).await;
    assert_eq!((answer.status, answer.outcome().as_str()), (200, "processed"), "{answer:?}");
}

/// Named shape `signature-bypass`: a genuine signature made long ago (a captured delivery) or
/// for the future is refused as stale, on both providers.
#[tokio::test]
async fn signature_bypass_stale_and_future_timestamps_get_401() {
    let target = Target::start().await;
    let body = stripe_payment("evt_stale", "d-none");
    for timestamp in [unix_now() - 3600, unix_now() + 3600, 0, i64::from(i32::MAX) * 4] {
        let answer = target.stripe("acme", ACME_STRIPE, timestamp, &body).await;
        assert_error(&answer, 401, None);
    }
    let standard_body = json!({ "type": "note.created", "data": {} }).to_string().into_bytes();
    for timestamp in [unix_now() - 3600, unix_now() + 3600] {
        let request = standard_request(
            &target.client,
            &target.server.url(),
            "acme",
            &standard_secret("acme"),
            "msg_stale",
            timestamp,
            &standard_body,
        );
        assert_error(&send(request).await.unwrap(), 401, None);
    }
    assert!(target.tables.webhook_records("acme").await.is_empty());
}

// ---------------------------------------------------------------------------------------------
// replay-same
// ---------------------------------------------------------------------------------------------

/// Named shape `replay-same`: the very same signed request replayed (within the tolerance)
/// is answered already-processed and has no second effect; the same event id with other bytes
/// is refused, not applied.
#[tokio::test]
async fn replay_same_signed_delivery_replayed_has_no_second_effect() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-1").await;
    put_deal(&target.client, &target.server.url(), "acme", "d-2").await;
    let body = stripe_payment("evt_replayed", "d-1");
    let timestamp = unix_now();
    let first = target.stripe("acme", ACME_STRIPE, timestamp, &body).await;
    assert_eq!((first.status, first.outcome().as_str()), (200, "processed"), "{first:?}");
    let (_, version) = target.tables.deal("acme", "d-1").await.unwrap();
    for _ in 0..3 {
        let replay = target.stripe("acme", ACME_STRIPE, timestamp, &body).await;
        assert_eq!((replay.status, replay.outcome().as_str()), (200, "already_processed"), "{replay:?}");
    }
    // The same event id, now pointing at another deal (re-signed: a confused sender).
    let other = stripe_payment("evt_replayed", "d-2");
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &other).await;
    assert_error(&answer, 409, None);
    assert_eq!(target.tables.deal("acme", "d-1").await.unwrap().1, version, "no second write to d-1");
    assert_eq!(target.tables.deal("acme", "d-2").await.unwrap().0, "proposal", "d-2 untouched");
    assert_eq!(target.tables.audit_entries_with_action("acme", "deal.won").await, 1);
}

/// Named shape `replay-same` across tenants: an event id already used by globex does not
/// suppress acme's event of the same id (the dedupe key includes the tenant), and each
/// changes only its own tenant's deal.
#[tokio::test]
async fn replay_same_event_id_in_another_tenant_is_not_suppressed() {
    let target = Target::start().await;
    for tenant in ["acme", "globex"] {
        put_deal(&target.client, &target.server.url(), tenant, "d-1").await;
    }
    let body = stripe_payment("evt_shared_id", "d-1");
    let globex = target.stripe("globex", GLOBEX_STRIPE, unix_now(), &body).await;
    assert_eq!((globex.status, globex.outcome().as_str()), (200, "processed"), "{globex:?}");
    assert_eq!(
        target.tables.deal("acme", "d-1").await.unwrap().0,
        "proposal",
        "globex's event left acme alone"
    );
    let acme = target.stripe("acme", ACME_STRIPE, unix_now(), &body).await;
    assert_eq!((acme.status, acme.outcome().as_str()), (200, "processed"), "{acme:?}");
    assert_eq!(target.tables.deal("acme", "d-1").await.unwrap().0, "closed-won");
    assert_eq!(target.tables.audit_entries_with_action("acme", "deal.won").await, 1);
    assert_eq!(target.tables.audit_entries_with_action("globex", "deal.won").await, 1);
}

// ---------------------------------------------------------------------------------------------
// injection and tenant boundaries
// ---------------------------------------------------------------------------------------------

/// Named shape `injection`: a body that names another tenant than its URL is refused, for state
/// writes and for Standard Webhooks events, and nothing is written in either tenant.
#[tokio::test]
async fn injection_body_naming_another_tenant_is_refused() {
    let target = Target::start().await;
    let entries_before =
        (target.tables.audit_entry_count("acme").await, target.tables.audit_entry_count("globex").await);
    let answer = send(
        target
            .client
            .put(target.url("/v1/tenants/globex/deals/d-x"))
            .json(&deal_body("acme", "d-x", "proposal")),
    )
    .await
    .unwrap();
    assert_client_error(&answer, "a deal body naming acme under globex's URL");
    assert!(
        target.tables.deal("acme", "d-x").await.is_none()
            && target.tables.deal("globex", "d-x").await.is_none()
    );

    let event =
        json!({ "type": "deal.upserted", "data": deal_body("acme", "d-y", "negotiation") }).to_string();
    let request = standard_request(
        &target.client,
        &target.server.url(),
        "globex",
        &standard_secret("globex"),
        "msg_injection",
        unix_now(),
        event.as_bytes(),
    );
    let answer = send(request).await.unwrap();
    assert_client_error(&answer, "a globex event whose data names acme");
    assert!(
        target.tables.deal("acme", "d-y").await.is_none()
            && target.tables.deal("globex", "d-y").await.is_none()
    );
    let entries_after =
        (target.tables.audit_entry_count("acme").await, target.tables.audit_entry_count("globex").await);
    assert_eq!(entries_after, entries_before, "nothing was audited in either tenant");
}

/// Tenant boundary: globex's verified payment naming acme's deal id changes no acme state.
#[tokio::test]
async fn injection_webhook_of_one_tenant_cannot_change_another_tenants_deal() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-acme-only").await;
    let before = target.tables.deal("acme", "d-acme-only").await.unwrap();
    let body = stripe_payment("evt_cross_tenant_deal", "d-acme-only");
    let answer = target.stripe("globex", GLOBEX_STRIPE, unix_now(), &body).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    assert_eq!(target.tables.deal("acme", "d-acme-only").await.unwrap(), before, "acme's deal is untouched");
    assert!(target.tables.deal("globex", "d-acme-only").await.is_none(), "and none was made up in globex");
}

/// Tenant boundary: acme's records, audit entries, checkpoint and inclusion proofs are never
/// reachable through globex's URLs (unknown there: 404), and globex's listings hold none of
/// acme's rows.
#[tokio::test]
async fn tenant_boundary_state_audit_and_proofs_are_not_reachable_from_another_tenant() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-secret").await;
    let answer =
        target.stripe("acme", ACME_STRIPE, unix_now(), &stripe_payment("evt_secret_pay", "d-secret")).await;
    assert_eq!(answer.status, 200, "{answer:?}");

    assert_eq!(target.get("/v1/tenants/acme/deals/d-secret").await.status, 200);
    assert_error(&target.get("/v1/tenants/globex/deals/d-secret").await, 404, None);

    let acme_entries = target.get("/v1/tenants/acme/audit/entries").await;
    assert_eq!(acme_entries.status, 200, "{acme_entries:?}");
    assert!(acme_entries.body.contains("d-secret"), "acme sees its own entries: {acme_entries:?}");
    for path in
        ["/v1/tenants/globex/audit/entries", "/v1/tenants/globex/messages", "/v1/tenants/globex/signals"]
    {
        let answer = target.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {answer:?}");
        assert!(
            !answer.body.contains("d-secret") && !answer.body.contains("evt_secret_pay"),
            "{path} leaks acme's rows: {answer:?}"
        );
    }
    // acme's chain is longer than globex's: the sequence numbers only acme has get no proof
    // through globex.
    let acme_len = target.tables.audit_entry_count("acme").await;
    let globex_len = target.tables.audit_entry_count("globex").await;
    assert!(acme_len > globex_len, "acme {acme_len} entries, globex {globex_len}");
    for seq in globex_len + 1..=acme_len {
        assert_eq!(target.get(&format!("/v1/tenants/acme/audit/proofs/{seq}")).await.status, 200);
        let answer = target.get(&format!("/v1/tenants/globex/audit/proofs/{seq}")).await;
        assert_error(&answer, 404, None);
        assert!(!answer.body.contains("d-secret"), "{answer:?}");
    }
    let acme_checkpoint = target.get("/v1/tenants/acme/audit/checkpoint").await;
    let globex_checkpoint = target.get("/v1/tenants/globex/audit/checkpoint").await;
    assert_eq!(acme_checkpoint.status, 200, "{acme_checkpoint:?}");
    assert_ne!(acme_checkpoint.body, globex_checkpoint.body, "each tenant has its own checkpoint");
    let verify = target.get("/v1/tenants/globex/audit/verify").await;
    assert_eq!(verify.status, 200, "{verify:?}");
    assert!(!verify.body.contains("d-secret"), "{verify:?}");
}

/// Tenant boundary for agents: an agent registered in acme is unknown in globex (404), its
/// portrait too; registering the same name in globex makes a separate agent.
#[tokio::test]
async fn tenant_boundary_agents_and_portraits_are_not_reachable_from_another_tenant() {
    let target = Target::start().await;
    let agent = json!({ "name": "closer", "role": "sales closer", "vertical": "generic" });
    let answer = send(target.client.post(target.url("/v1/tenants/acme/agents")).json(&agent)).await.unwrap();
    assert!((200..300).contains(&answer.status), "{answer:?}");
    assert_eq!(target.get("/v1/tenants/acme/agents/closer").await.status, 200);
    assert_eq!(target.get("/v1/tenants/acme/agents/closer/portrait.svg").await.status, 200);
    assert_error(&target.get("/v1/tenants/globex/agents/closer").await, 404, None);
    assert_error(&target.get("/v1/tenants/globex/agents/closer/portrait.svg").await, 404, None);
}

// ---------------------------------------------------------------------------------------------
// Malformed input
// ---------------------------------------------------------------------------------------------

/// Oversized bodies are 413 with a JSON error, whether they announce their length or stream it
/// chunked, on webhooks and on state writes; nothing is written.
#[tokio::test]
async fn oversized_bodies_get_413_whether_announced_or_streamed() {
    let target = Target::start().await;
    let mut big = stripe_payment("evt_big", "d-1");
    big.truncate(big.len() - 1);
    big.extend_from_slice(format!(",\"padding\":\"{}\"}}", "x".repeat(MAX_BODY * 2)).as_bytes());
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &big).await;
    assert_error(&answer, 413, None);
    let mut deal = deal_body("acme", "d-big", "proposal");
    deal["contact_name"] = Value::String("y".repeat(MAX_BODY * 2));
    let answer =
        send(target.client.put(target.url("/v1/tenants/acme/deals/d-big")).json(&deal)).await.unwrap();
    assert_error(&answer, 413, None);

    // Chunked, no Content-Length: the limit holds while the body streams in.
    let signature = sos_webhooks::signature::sign_stripe(ACME_STRIPE, unix_now(), &big);
    let (status, body) =
        raw_chunked_post(&target.server.url(), "/v1/tenants/acme/webhooks/stripe", &signature, &big).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("\"code\""), "a JSON error body: {body}");
    assert!(target.tables.deal("acme", "d-big").await.is_none());
    assert!(target.tables.webhook_records("acme").await.is_empty());
}

/// Sends a chunked POST over a raw connection; returns the status and body.
async fn raw_chunked_post(base: &str, path: &str, signature: &str, body: &[u8]) -> (u16, String) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let address = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nStripe-Signature: {signature}\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.chunks(1000) {
        // The server may answer 413 and close before the whole body is sent.
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err()
            || stream.write_all(chunk).await.is_err()
            || stream.write_all(b"\r\n").await.is_err()
        {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, text)
}

/// Bad JSON is 400 with a stable code, on state writes and in a correctly signed webhook body;
/// a JSON body of the wrong shape is a 4xx too (never a 5xx).
#[tokio::test]
async fn bad_json_gets_400_with_a_stable_code() {
    let target = Target::start().await;
    for body in ["{ not json", "", "[1,2", "\u{0}", "{\"id\": \"d-1\", \"stage\": "] {
        let answer = send(
            target
                .client
                .put(target.url("/v1/tenants/acme/deals/d-1"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
        .unwrap();
        assert_error(&answer, 400, None);
    }
    for body in ["[]", "42", "null", "{\"id\": 5}", "{\"unknown\": true}"] {
        let answer = send(
            target
                .client
                .put(target.url("/v1/tenants/acme/deals/d-1"))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
        .unwrap();
        assert_client_error(&answer, body);
    }
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), b"{ not json").await;
    assert_error(&answer, 400, None);
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), b"{\"id\": 7}").await;
    assert_client_error(&answer, "a Stripe event whose id is not a string");
    assert!(target.tables.webhook_records("acme").await.is_empty());
}

/// Unknown tenants, agents and providers are 404 with a JSON error, on every kind of route.
#[tokio::test]
async fn unknown_tenant_agent_and_provider_get_404() {
    let target = Target::start().await;
    for path in [
        "/v1/tenants/nobody/deals/d-1",
        "/v1/tenants/nobody/contacts/c-1",
        "/v1/tenants/nobody/messages",
        "/v1/tenants/nobody/signals",
        "/v1/tenants/nobody/audit/entries",
        "/v1/tenants/nobody/audit/verify",
        "/v1/tenants/nobody/audit/checkpoint",
        "/v1/tenants/nobody/audit/proofs/1",
        "/v1/tenants/nobody/agents/closer",
        "/v1/tenants/acme/agents/nobody",
        "/v1/tenants/acme/agents/nobody/portrait.svg",
        "/v1/tenants/acme/deals/no-such-deal",
    ] {
        assert_error(&target.get(path).await, 404, None);
    }
    let answer = target.stripe("nobody", ACME_STRIPE, unix_now(), &stripe_payment("evt_nobody", "d-1")).await;
    assert_error(&answer, 404, None);
    let answer =
        send(target.client.post(target.url("/v1/tenants/acme/webhooks/paypal")).body("{}")).await.unwrap();
    assert_error(&answer, 404, None);
    let answer = send(
        target
            .client
            .put(target.url("/v1/tenants/nobody/deals/d-1"))
            .json(&deal_body("nobody", "d-1", "proposal")),
    )
    .await
    .unwrap();
    assert_error(&answer, 404, None);
    let feedback = json!({ "verdict": "accepted" });
    let answer = send(
        target.client.post(target.url("/v1/tenants/acme/signals/no-such-signal/feedback")).json(&feedback),
    )
    .await
    .unwrap();
    assert_client_error(&answer, "feedback on an unknown signal");
}

/// Hostile path segments (NUL bytes, control characters, bad percent-encoding, traversal,
/// huge ids, SQL) in the tenant, record id, agent name and proof sequence number get a 4xx
/// with a JSON error, never a 5xx, and never reach another tenant's rows.
async fn hostile_path_segments(target: &Target) {
    put_deal(&target.client, &target.server.url(), "acme", "d-1").await;
    let mut violations = Vec::new();
    let huge = "a".repeat(10_000);
    let very_huge = "z".repeat(60_000);
    let segments = [
        "%00",
        "d-1%00",
        "acme%00",
        "%0a%0d",
        "%FF%FE",
        "%2e%2e",
        "..%2Facme",
        "d-1%2F..%2F..",
        "ACME",
        "d-1'%20OR%20'1'='1",
        "%E2%80%AE",
        huge.as_str(),
        very_huge.as_str(),
    ];
    for segment in segments {
        for path in [
            format!("/v1/tenants/{segment}/deals/d-1"),
            format!("/v1/tenants/acme/deals/{segment}"),
            format!("/v1/tenants/acme/contacts/{segment}"),
            format!("/v1/tenants/acme/messages/{segment}"),
            format!("/v1/tenants/acme/signals/{segment}"),
            format!("/v1/tenants/acme/agents/{segment}"),
            format!("/v1/tenants/acme/agents/{segment}/portrait.svg"),
            format!("/v1/tenants/acme/audit/proofs/{segment}"),
            format!("/v1/tenants/acme/signals/{segment}/feedback"),
        ] {
            let answer = if path.ends_with("/feedback") {
                send(target.client.post(target.url(&path)).json(&json!({ "verdict": "accepted" })))
                    .await
                    .unwrap()
            } else {
                target.get(&path).await
            };
            check_answer(&mut violations, &answer, &path, false);
            assert!(!answer.body.contains("Contact of d-1"), "{path} reached acme's deal: {answer:?}");
        }
        let answer =
            send(target.client.put(target.url(&format!("/v1/tenants/{segment}"))).body("")).await.unwrap();
        check_answer(&mut violations, &answer, &format!("PUT /v1/tenants/{segment}"), false);
        let answer =
            target.stripe(segment, ACME_STRIPE, unix_now(), &stripe_payment("evt_hostile", "d-1")).await;
        check_answer(&mut violations, &answer, &format!("webhook to tenant {segment}"), false);
    }
    for seq in
        ["0", "-1", "18446744073709551616", "99999999999999999999999", "1e3", "0x10", "9223372036854775808"]
    {
        let answer = target.get(&format!("/v1/tenants/acme/audit/proofs/{seq}")).await;
        check_answer(&mut violations, &answer, &format!("proof {seq}"), false);
    }
    assert!(
        violations.is_empty(),
        "hostile path segments not answered with a JSON 4xx:\n{}",
        violations.join("\n")
    );
    assert_eq!(target.tables.deal("acme", "d-1").await.unwrap().0, "proposal");
}

#[tokio::test]
async fn hostile_path_segments_never_get_a_5xx_on_sqlite() {
    hostile_path_segments(&Target::start_on(false).await).await;
}

#[tokio::test]
async fn hostile_path_segments_never_get_a_5xx_on_postgres() {
    hostile_path_segments(&Target::start_on(true).await).await;
}

// ---------------------------------------------------------------------------------------------
// Races (toctou-dedupe, chain-seq-stale-read) over HTTP
// ---------------------------------------------------------------------------------------------

/// A request to be built on a given client.
type MakeRequest = Box<dyn FnOnce(&reqwest::Client) -> reqwest::RequestBuilder + Send>;

/// Sends `requests` at one instant (each on its own connection, opened beforehand) and returns
/// every answer.
async fn at_once(base: &str, requests: Vec<MakeRequest>) -> Vec<Answer> {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(requests.len()));
    let mut tasks = Vec::new();
    for make in requests {
        let barrier = barrier.clone();
        let base = base.to_owned();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
            send(client.get(format!("{base}/healthz"))).await.expect("the server answers");
            barrier.wait().await;
            send(make(&client)).await.expect("the server answers")
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("a request task"));
    }
    answers
}

/// Named shapes `toctou-dedupe` and `chain-seq-stale-read` over HTTP: the same tenant created
/// 16 times at once is created once (one 201, one `tenant.create` entry), and 16 concurrent
/// writes of one deal each get their own version and their own audit entry (or a retryable
/// 503), with no 5xx, on SQLite and on PostgreSQL.
async fn concurrent_creates_and_writes(base: &str, tables: &Tables) {
    let requests = (0..16)
        .map(|_| {
            let url = format!("{base}/v1/tenants/raced");
            Box::new(move |client: &reqwest::Client| client.put(url)) as MakeRequest
        })
        .collect();
    let answers = at_once(base, requests).await;
    assert!(answers.iter().all(|a| a.status == 201 || a.status == 200), "{answers:#?}");
    assert_eq!(answers.iter().filter(|a| a.status == 201).count(), 1, "created once: {answers:#?}");
    assert_eq!(tables.audit_entries_with_action("raced", "tenant.create").await, 1);

    let requests = (0..16)
        .map(|index| {
            let url = format!("{base}/v1/tenants/raced/deals/d-raced");
            let mut body = deal_body("raced", "d-raced", "proposal");
            body["contact_name"] = Value::String(format!("Writer {index}"));
            Box::new(move |client: &reqwest::Client| client.put(url).json(&body)) as MakeRequest
        })
        .collect();
    let answers = at_once(base, requests).await;
    let written: Vec<&Answer> = answers.iter().filter(|a| a.status == 200 || a.status == 201).collect();
    for answer in answers.iter().filter(|a| a.status != 200 && a.status != 201) {
        assert!(
            answer.status == 503 && answer.retry_after.is_some(),
            "only a retryable 503 besides success: {answer:?}"
        );
    }
    assert!(!written.is_empty(), "{answers:#?}");
    let mut versions: Vec<i64> =
        written.iter().map(|a| a.json()["version"].as_i64().expect("a version")).collect();
    versions.sort_unstable();
    let expected: Vec<i64> = (1..=i64::try_from(written.len()).unwrap()).collect();
    assert_eq!(versions, expected, "each successful write has its own version");
    assert_eq!(written.iter().filter(|a| a.status == 201).count(), 1, "one write created the deal");
    let (_, version) = tables.deal("raced", "d-raced").await.unwrap();
    assert_eq!(version, i64::try_from(written.len()).unwrap());
    assert_eq!(
        tables.audit_entries_mentioning("raced", "deal.upsert", "d-raced").await,
        i64::try_from(written.len()).unwrap(),
        "one audit entry per successful write, none for a refused one"
    );
    tables.assert_chain_intact("raced").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_concurrent_tenant_creation_and_deal_writes_on_sqlite() {
    let target = Target::start().await;
    concurrent_creates_and_writes(&target.server.url(), &target.tables).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_concurrent_tenant_creation_and_deal_writes_on_postgres() {
    let dir = scratch_dir();
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let server =
        ServerProcess::start("postgres", dir.path(), ServerArgs::postgres(dir.path(), database.url())).await;
    concurrent_creates_and_writes(&server.url(), &Tables::Postgres(database.pool().clone())).await;
}

/// Named shape `toctou-dedupe` for the checkpoint key: replicas started at one instant with the
/// same, not yet existing, `--signing-key` file all come up, and all sign with the one key that
/// was generated (none overwrites another's key, none fails because another created it first).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_replicas_started_together_share_one_generated_signing_key() {
    let dir = scratch_dir();
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let servers = ServerProcess::start_together(
        dir.path(),
        (0..3)
            .map(|index| (format!("replica-{index}"), ServerArgs::postgres(dir.path(), database.url())))
            .collect(),
    )
    .await;
    let client = reqwest::Client::new();
    create_tenant(&client, &servers[0].url(), "acme").await;
    let mut checkpoints = Vec::new();
    for server in &servers {
        let checkpoint =
            send(client.get(format!("{}/v1/tenants/acme/audit/checkpoint", server.url()))).await.unwrap();
        assert_eq!(checkpoint.status, 200, "{checkpoint:?}");
        checkpoints.push(checkpoint.body);
    }
    assert!(
        checkpoints.windows(2).all(|pair| pair[0] == pair[1]),
        "every replica signs the same checkpoint with the same key: {checkpoints:#?}"
    );
}

/// NUL bytes, huge ids and invalid text in what is written (record ids in the path, fields in
/// the body, agent names, the ids and fields of signed webhook events) get a 2xx or a 4xx with a
/// JSON error, never a 5xx: PostgreSQL refuses NUL in text, and that must be a 400, not a 500.
async fn hostile_writes(target: &Target) {
    let base = target.server.url();
    let mut violations = Vec::new();
    let huge = "d".repeat(3000);
    for segment in ["%00", "d%00x", "%0a", "%E2%80%AE", huge.as_str()] {
        let path = format!("/v1/tenants/acme/deals/{segment}");
        let body = json!({ "contact_name": "Hostile", "stage": "proposal" });
        let answer = send(target.client.put(target.url(&path)).json(&body)).await.unwrap();
        check_answer(&mut violations, &answer, &format!("PUT {path}"), true);
    }
    for (field, value) in
        [("contact_name", "nul \u{0} inside"), ("stage", "\u{0}"), ("contact_name", "\u{202e}evil")]
    {
        let mut body = deal_body("acme", "d-fields", "proposal");
        body[field] = Value::String(value.to_owned());
        let answer =
            send(target.client.put(target.url("/v1/tenants/acme/deals/d-fields")).json(&body)).await.unwrap();
        check_answer(&mut violations, &answer, &format!("a deal whose {field} is {value:?}"), true);
    }
    let message = json!({ "id": "m-\u{0}", "contact_name": "x", "subject": "\u{0}", "direction": "inbound", "at": "2026-11-01T00:00:00Z" });
    let answer =
        send(target.client.post(target.url("/v1/tenants/acme/messages")).json(&message)).await.unwrap();
    check_answer(&mut violations, &answer, "a message with NUL bytes", true);
    for name in ["a\u{0}b", "\u{0}", &"n".repeat(5000)] {
        let agent = json!({ "name": name, "role": "closer", "vertical": "generic" });
        let answer =
            send(target.client.post(target.url("/v1/tenants/acme/agents")).json(&agent)).await.unwrap();
        check_answer(
            &mut violations,
            &answer,
            &format!("an agent named {:?}", &name[..name.len().min(10)]),
            false,
        );
    }
    for (event_id, deal_id, kind) in [
        ("evt_\u{0}", "d-1", "payment_intent.succeeded"),
        ("evt_nul_deal", "d-\u{0}", "payment_intent.succeeded"),
        ("evt_nul_type", "d-1", "\u{0}"),
        (&*format!("evt_{}", "e".repeat(3000)), "d-1", "payment_intent.succeeded"),
    ] {
        let body = json!({ "id": event_id, "type": kind, "data": { "object": { "metadata": { "deal_id": deal_id } } } })
            .to_string()
            .into_bytes();
        let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &body).await;
        let shown = &event_id[..event_id.len().min(20)];
        let context = format!("a signed Stripe event {shown:?} for deal {deal_id:?} of type {kind:?}");
        check_answer(&mut violations, &answer, &context, true);
    }
    let event = json!({ "type": "deal.upserted", "data": { "id": "d-\u{0}", "contact_name": "x", "stage": "proposal" } });
    let request = standard_request(
        &target.client,
        &base,
        "acme",
        &standard_secret("acme"),
        "msg_nul",
        unix_now(),
        event.to_string().as_bytes(),
    );
    let answer = send(request).await.unwrap();
    check_answer(&mut violations, &answer, "a Standard Webhooks deal.upserted with a NUL id", true);
    assert!(
        violations.is_empty(),
        "hostile writes not answered with a 2xx or a JSON 4xx:\n{}",
        violations.join("\n")
    );
    target.tables.assert_chain_intact("acme").await;
}

#[tokio::test]
async fn hostile_writes_never_get_a_5xx_on_sqlite() {
    hostile_writes(&Target::start_on(false).await).await;
}

#[tokio::test]
async fn hostile_writes_never_get_a_5xx_on_postgres() {
    hostile_writes(&Target::start_on(true).await).await;
}

/// Named shape `replay-same` at the level of meaning: one real Stripe payment arrives as several
/// events with distinct ids (`payment_intent.succeeded`, `charge.succeeded`, and
/// `checkout.session.completed` behind a Checkout), all naming the same deal. The deal is won
/// once: one `deal.won` entry, one write of the row; the later events are recorded, and the
/// stage's entry time is not moved by them.
#[tokio::test]
async fn replay_same_one_payment_as_several_stripe_events_wins_the_deal_once() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-paid").await;
    let (_, version_before) = target.tables.deal("acme", "d-paid").await.unwrap();
    let mut won_at = None;
    for (event_id, kind) in [
        ("evt_pi", "payment_intent.succeeded"),
        ("evt_ch", "charge.succeeded"),
        ("evt_cs", "checkout.session.completed"),
    ] {
        let body = json!({
            "id": event_id, "object": "event", "type": kind,
            "data": { "object": { "payment_intent": "pi_1", "metadata": { "deal_id": "d-paid" } } },
        })
        .to_string()
        .into_bytes();
        let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &body).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let deal = target.get("/v1/tenants/acme/deals/d-paid").await.json();
        let entered = deal["record"]["stage_entered_at"].clone();
        assert_eq!(deal["record"]["stage"], "closed-won");
        assert_eq!(*won_at.get_or_insert(entered.clone()), entered, "{kind} moved the stage's entry time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(target.tables.audit_entries_with_action("acme", "deal.won").await, 1, "the deal was won once");
    assert_eq!(
        target.tables.deal("acme", "d-paid").await.unwrap().1,
        version_before + 1,
        "one write of the row"
    );
}

/// A `--demo` server on SQLite with the quick start's contact delivered, evaluated once: the
/// demo agent's renewal insight is delivered (to the log channel). Returns the server, its
/// tables and the delivered signal's id.
async fn demo_with_a_delivered_signal(dir: &std::path::Path) -> (ServerProcess, Tables, String) {
    let args = ServerArgs::sqlite(dir).flag("--demo").arg("--eval-interval", "0");
    let sqlite_path = args.sqlite_path();
    let server = ServerProcess::start("demo", dir, args).await;
    let client = reqwest::Client::new();
    let now = chrono::Utc::now();
    let body = json!({
        "type": "contact.upserted",
        "data": { "id": "c-1", "name": "Initech Fund", "interactions": 3, "last_interaction_at": now,
                  "renewal_at": now + chrono::TimeDelta::days(9) },
    })
    .to_string();
    let answer = send(standard_request(
        &client,
        &server.url(),
        sos_server::DEMO_TENANT,
        sos_server::DEMO_STANDARD_SECRET,
        "msg_feedback_contact",
        unix_now(),
        body.as_bytes(),
    ))
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let answer = send(client.post(format!("{}/v1/tenants/demo/evaluations", server.url()))).await.unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");
    let signals = provider::get_json(&client, &format!("{}/v1/tenants/demo/signals", server.url())).await;
    let delivered = signals["signals"]
        .as_array()
        .expect("a list of signals")
        .iter()
        .find(|signal| signal["status"] == "delivered")
        .unwrap_or_else(|| panic!("a delivered signal: {signals}"));
    let id = delivered["id"].as_str().unwrap().to_owned();
    let tables = Tables::Sqlite(sos_testkit::sqlite_pool(&sqlite_path, 2).await);
    (server, tables, id)
}

/// Named shapes `toctou-dedupe` and `replay-same` for feedback: twelve answers to one signal
/// sent at one instant (half accepting, half rejecting) record exactly one verdict, move the
/// trust gate once (one `signal.feedback` entry), and every other answer is 409
/// `feedback_given` (or a retryable 503), never a 5xx; the same signal id under another tenant
/// is unknown there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_concurrent_feedback_on_one_signal_moves_the_gate_once() {
    let dir = scratch_dir();
    let (server, tables, id) = demo_with_a_delivered_signal(dir.path()).await;
    let client = reqwest::Client::new();
    create_tenant(&client, &server.url(), "other").await;
    let answer = send(
        client
            .post(format!("{}/v1/tenants/other/signals/{id}/feedback", server.url()))
            .json(&json!({ "verdict": "accepted" })),
    )
    .await
    .unwrap();
    assert_error(&answer, 404, None);

    let requests = (0..12)
        .map(|index| {
            let url = format!("{}/v1/tenants/demo/signals/{id}/feedback", server.url());
            let verdict = if index % 2 == 0 { "accepted" } else { "rejected" };
            Box::new(move |client: &reqwest::Client| client.post(url).json(&json!({ "verdict": verdict })))
                as MakeRequest
        })
        .collect();
    let answers = at_once(&server.url(), requests).await;
    let recorded: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert_eq!(recorded.len(), 1, "one verdict is recorded: {answers:#?}");
    for answer in answers.iter().filter(|a| a.status != 200) {
        assert!(
            (answer.status == 409
                && ["feedback_given", "concurrent_change"].contains(&answer.outcome().as_str()))
                || (answer.status == 503 && answer.retry_after.is_some()),
            "{answer:?}"
        );
    }
    assert_eq!(
        tables.audit_entries_mentioning("demo", "signal.feedback", &id).await,
        1,
        "the gate moved once"
    );
    let signal = provider::get_json(&client, &format!("{}/v1/tenants/demo/signals/{id}", server.url())).await;
    assert_eq!(
        signal["feedback"],
        recorded[0].json()["verdict"],
        "the recorded verdict is the one answered 200"
    );
    tables.assert_chain_intact("demo").await;
}

/// Tenant boundary for auditors: every inclusion proof served for acme verifies on its own
/// (signature by the server's published verifier key, origin naming acme, leaf = the entry hash
/// in the table), including the entry written just before; a proof served for globex, relabelled
/// as acme's, does not verify.
#[tokio::test]
async fn tenant_boundary_proofs_over_http_verify_independently_and_only_for_their_tenant() {
    let target = Target::start().await;
    put_deal(&target.client, &target.server.url(), "acme", "d-1").await;
    let answer = target.stripe("acme", ACME_STRIPE, unix_now(), &stripe_payment("evt_proved", "d-1")).await;
    assert_eq!(answer.status, 200, "{answer:?}");
    let verifier = target.verifier();
    let acme_len = target.tables.audit_entry_count("acme").await;
    for seq in 1..=acme_len {
        let answer = target.get(&format!("/v1/tenants/acme/audit/proofs/{seq}")).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        let proof =
            sos_audit::tlog::EntryProof::from_json(answer.body.as_bytes()).expect("the CLI's proof JSON");
        let checkpoint = proof.verify(&verifier).unwrap_or_else(|error| panic!("proof of {seq}: {error}"));
        assert_eq!((proof.tenant.as_str(), proof.seq), ("acme", u64::try_from(seq).unwrap()));
        assert_eq!(answer.json()["entry_hash"], target.tables.audit_entry_hash("acme", seq).await.as_str());
        assert!(checkpoint.size >= u64::try_from(seq).unwrap(), "the checkpoint covers the entry");
    }
    let globex = target.get("/v1/tenants/globex/audit/proofs/1").await;
    assert_eq!(globex.status, 200, "{globex:?}");
    let mut relabelled = sos_audit::tlog::EntryProof::from_json(globex.body.as_bytes()).unwrap();
    relabelled.verify(&verifier).expect("globex's own proof verifies for globex");
    relabelled.tenant = "acme".parse().unwrap();
    assert!(relabelled.verify(&verifier).is_err(), "globex's checkpoint does not vouch for an acme entry");
}
