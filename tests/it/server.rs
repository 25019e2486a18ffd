//! The reference server over real HTTP, in-process, on SQLite and on PostgreSQL: start-up, the
//! JSON error contract and the OpenAPI document. `server_e2e` holds the whole loop.

use std::sync::Arc;

use chrono::{TimeZone as _, Utc};
use serde_json::{Value, json};
use sos_core::{Clock, ManualClock, SystemClock};
use sos_testkit::PgTestDatabase;

/// The Stripe secret of the tenant `acme` in these tests.
pub(crate) const STRIPE_SECRET: &str = "whsec_test_stripe_secret";
/// The Standard Webhooks secret of the tenant `acme` (`whsec_` + base64 of `sos-test-standard-secret`).
pub(crate) const STANDARD_SECRET: &str = "whsec_c29zLXRlc3Qtc3RhbmRhcmQtc2VjcmV0";

/// Which database a test server runs on.
pub(crate) enum Backend {
    Sqlite,
    Postgres(Box<PgTestDatabase>),
}

impl Backend {
    pub(crate) async fn postgres() -> Self {
        Self::Postgres(Box::new(PgTestDatabase::new(&[]).await))
    }
}

/// An in-process server on an ephemeral port, stopped (gracefully) on drop of its stopper.
pub(crate) struct TestServer {
    pub(crate) base: String,
    pub(crate) app: sos_server::App,
    pub(crate) dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub(crate) backend: Backend,
}

impl TestServer {
    /// Starts a server the way `main` does (flags parsed by clap, settings validated, database
    /// migrated), with `clock` and the extra flags, periodic evaluation off.
    pub(crate) async fn start(backend: Backend, clock: Arc<dyn Clock>, extra: &[String]) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let packs = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/packs");
        let mut args: Vec<String> = [
            "sos-server",
            "--listen",
            "127.0.0.1:0",
            "--packs",
            packs,
            "--eval-interval",
            "0",
            "--webhook-secret",
            &format!("acme:stripe={STRIPE_SECRET}"),
            "--webhook-secret",
            &format!("acme:standard={STANDARD_SECRET}"),
        ]
        .iter()
        .map(|arg| (*arg).to_owned())
        .collect();
        args.push("--sqlite-path".to_owned());
        args.push(dir.path().join("sos.sqlite").display().to_string());
        args.push("--signing-key".to_owned());
        args.push(dir.path().join("checkpoint.key").display().to_string());
        args.extend(extra.iter().cloned());
        let mut config = sos_server::Config::from_args(&args).expect("flags parse");
        // The environment's DATABASE_URL (the test server's admin URL) must not leak in.
        config.database_url = match &backend {
            Backend::Sqlite => None,
            Backend::Postgres(database) => Some(database.url().to_owned()),
        };
        let settings = sos_server::Settings::load(config).expect("settings load");
        let app = sos_server::App::open(settings, clock).await.expect("server opens");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let base = format!("http://{}", listener.local_addr().expect("local address"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(sos_server::serve_app(app.clone(), listener, async move {
            let _ = stopped.await;
        }));
        Self { base, app, dir, stop: Some(stop), task: Some(task), backend }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Stops the server gracefully and waits for it, handing back its directory (database,
    /// keys) for inspection.
    pub(crate) async fn stop_keeping_files(mut self) -> tempfile::TempDir {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
        let dir = tempfile::tempdir().expect("temporary directory");
        std::mem::replace(&mut self.dir, dir)
    }

    /// Stops the server gracefully and waits for it.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server stopped cleanly");
        }
    }
}

/// A clock standing at a fixed Monday morning.
pub(crate) fn manual_clock() -> ManualClock {
    ManualClock::new(Utc.with_ymd_and_hms(2026, 3, 2, 9, 0, 0).single().expect("valid time"))
}

async fn expect_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status of an error answer with code {code}");
    let body: Value = response.json().await.expect("an error body is JSON");
    assert_eq!(body["error"]["code"], code, "error body: {body}");
    assert!(
        body["error"]["message"].as_str().is_some_and(|message| message.len() > 10),
        "error body: {body}"
    );
    body
}

async fn error_contract(server: &TestServer) {
    let client = reqwest::Client::new();
    let health: Value = client.get(server.url("/healthz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");

    let created = client.put(server.url("/v1/tenants/acme")).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let again = client.put(server.url("/v1/tenants/acme")).send().await.unwrap();
    assert_eq!(again.status(), 200, "creating a tenant is idempotent");
    assert_eq!(again.json::<Value>().await.unwrap()["created"], false);

    // 400: bad JSON, bad ids, bad records; never a 5xx.
    let bad_json =
        client.put(server.url("/v1/tenants/acme/deals/d-1")).body("{ not json").send().await.unwrap();
    expect_error(bad_json, 400, "bad_json").await;
    let not_object =
        client.put(server.url("/v1/tenants/acme/deals/d-1")).body("[1, 2]").send().await.unwrap();
    expect_error(not_object, 400, "bad_json").await;
    let unknown_field = client
        .put(server.url("/v1/tenants/acme/deals/d-1"))
        .json(&json!({ "contact_name": "Acme", "stage": "proposal", "admin": true }))
        .send()
        .await
        .unwrap();
    expect_error(unknown_field, 400, "invalid_record").await;
    let other_tenant = client
        .put(server.url("/v1/tenants/acme/deals/d-1"))
        .json(&json!({ "tenant": "globex", "contact_name": "Acme", "stage": "proposal" }))
        .send()
        .await
        .unwrap();
    expect_error(other_tenant, 400, "key_mismatch").await;
    let huge_value = client
        .put(server.url("/v1/tenants/acme/deals/d-1"))
        .json(&json!({ "contact_name": "Acme", "stage": "proposal", "value_cents": i64::MAX }))
        .send()
        .await
        .unwrap();
    expect_error(huge_value, 400, "invalid_record").await;
    let bad_tenant = client.put(server.url("/v1/tenants/Acme%20Corp")).send().await.unwrap();
    expect_error(bad_tenant, 400, "invalid_tenant").await;
    let bad_limit = client.get(server.url("/v1/tenants/acme/deals?limit=many")).send().await.unwrap();
    expect_error(bad_limit, 400, "bad_query").await;
    let bad_seq = client.get(server.url("/v1/tenants/acme/audit/proofs/minus-one")).send().await.unwrap();
    expect_error(bad_seq, 400, "bad_path").await;
    let bad_agent = client
        .post(server.url("/v1/tenants/acme/agents"))
        .json(&json!({ "name": "ada" }))
        .send()
        .await
        .unwrap();
    expect_error(bad_agent, 400, "bad_json").await;
    let bad_vertical = client
        .post(server.url("/v1/tenants/acme/agents"))
        .json(&json!({ "name": "ada", "vertical": "astrology" }))
        .send()
        .await
        .unwrap();
    let body = expect_error(bad_vertical, 400, "unknown_vertical").await;
    assert!(body["error"]["message"].as_str().unwrap().contains("grants"), "the known verticals are named");

    // 404: unknown tenant, record, agent, signal, entry, route.
    let unknown = client.get(server.url("/v1/tenants/globex/deals")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_tenant").await;
    let unknown = client.get(server.url("/v1/tenants/acme/deals/nope")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_deal").await;
    let unknown = client.get(server.url("/v1/tenants/acme/agents/nobody")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_agent").await;
    let unknown = client.get(server.url("/v1/tenants/acme/agents/nobody/portrait.svg")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_agent").await;
    let unknown = client
        .post(server.url("/v1/tenants/acme/signals/5f0c5b2e-0000-4000-8000-000000000000/feedback"))
        .json(&json!({ "verdict": "accepted" }))
        .send()
        .await
        .unwrap();
    expect_error(unknown, 404, "unknown_signal").await;
    let unknown = client.get(server.url("/v1/tenants/acme/audit/proofs/99")).send().await.unwrap();
    expect_error(unknown, 404, "unknown_entry").await;
    let unknown = client.get(server.url("/v2/anything")).send().await.unwrap();
    expect_error(unknown, 404, "not_found").await;
    let unknown =
        client.post(server.url("/v1/tenants/acme/webhooks/paypal")).body("{}").send().await.unwrap();
    expect_error(unknown, 404, "unknown_provider").await;
    let unknown =
        client.post(server.url("/v1/tenants/globex/webhooks/stripe")).body("{}").send().await.unwrap();
    expect_error(unknown, 404, "unknown_tenant").await;
    let wrong_method = client.delete(server.url("/v1/tenants/acme")).send().await.unwrap();
    expect_error(wrong_method, 405, "method_not_allowed").await;

    // 401: unsigned, forged and stale webhooks (named shape `signature-bypass`).
    let body = br#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{}}}"#;
    let unsigned =
        client.post(server.url("/v1/tenants/acme/webhooks/stripe")).body(&body[..]).send().await.unwrap();
    expect_error(unsigned, 401, "missing_signature").await;
    let now = server.app_now();
    let forged = sos_webhooks::signature::sign_stripe("whsec_someone_else", now, body);
    let forged = client
        .post(server.url("/v1/tenants/acme/webhooks/stripe"))
        .header("stripe-signature", forged)
        .body(&body[..])
        .send()
        .await
        .unwrap();
    expect_error(forged, 401, "bad_signature").await;
    let stale = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, now - 3600, body);
    let stale = client
        .post(server.url("/v1/tenants/acme/webhooks/stripe"))
        .header("stripe-signature", stale)
        .body(&body[..])
        .send()
        .await
        .unwrap();
    expect_error(stale, 401, "stale_timestamp").await;
    let tampered = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, now, body);
    let tampered = client
        .post(server.url("/v1/tenants/acme/webhooks/stripe"))
        .header("stripe-signature", tampered)
        .body(r#"{"id":"evt_1","type":"payment_intent.succeeded","data":{"object":{"amount":1}}}"#)
        .send()
        .await
        .unwrap();
    expect_error(tampered, 401, "bad_signature").await;

    // 413: a body past --max-body-bytes (1 MiB by default).
    let big = vec![b' '; 2 * 1024 * 1024];
    let too_large =
        client.put(server.url("/v1/tenants/acme/deals/d-1")).body(big.clone()).send().await.unwrap();
    expect_error(too_large, 413, "payload_too_large").await;
    let too_large =
        client.post(server.url("/v1/tenants/acme/webhooks/stripe")).body(big).send().await.unwrap();
    expect_error(too_large, 413, "payload_too_large").await;

    // 409: the same event id with another body (signed correctly).
    let first = br#"{"id":"evt_9","type":"customer.created","data":{"object":{}}}"#;
    let second = br#"{"id":"evt_9","type":"customer.created","data":{"object":{"x":1}}}"#;
    for (body, status) in [(&first[..], 200), (&first[..], 200), (&second[..], 409)] {
        let signature = sos_webhooks::signature::sign_stripe(STRIPE_SECRET, now, body);
        let answer = client
            .post(server.url("/v1/tenants/acme/webhooks/stripe"))
            .header("stripe-signature", signature)
            .body(body.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status().as_u16(), status);
        if status == 409 {
            expect_error(answer, 409, "body_mismatch").await;
        }
    }

    // Nothing above left an unaudited write or broke the chain.
    let verify: Value =
        client.get(server.url("/v1/tenants/acme/audit/verify")).send().await.unwrap().json().await.unwrap();
    assert_eq!(verify["intact"], true, "{verify}");
}

impl TestServer {
    /// The server clock's time, Unix seconds (webhooks are signed with it).
    pub(crate) fn app_now(&self) -> i64 {
        self.clock_now().timestamp()
    }

    fn clock_now(&self) -> chrono::DateTime<Utc> {
        self.app.clock().now()
    }
}

#[tokio::test]
async fn error_contract_on_sqlite() {
    let server = TestServer::start(Backend::Sqlite, Arc::new(SystemClock), &[]).await;
    error_contract(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn error_contract_on_postgres() {
    let server = TestServer::start(Backend::postgres().await, Arc::new(SystemClock), &[]).await;
    error_contract(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn openapi_document_names_every_route_and_the_error_schema() {
    let server = TestServer::start(Backend::Sqlite, Arc::new(manual_clock()), &[]).await;
    let document: Value =
        reqwest::get(server.url("/openapi.json")).await.unwrap().json().await.expect("the document is JSON");
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().expect("paths");
    for path in [
        "/healthz",
        "/v1/tenants/{tenant}",
        "/v1/tenants/{tenant}/webhooks/{provider}",
        "/v1/tenants/{tenant}/deals/{id}",
        "/v1/tenants/{tenant}/contacts/{id}",
        "/v1/tenants/{tenant}/messages",
        "/v1/tenants/{tenant}/agents",
        "/v1/tenants/{tenant}/agents/{name}/portrait.svg",
        "/v1/tenants/{tenant}/evaluations",
        "/v1/tenants/{tenant}/signals/{id}/feedback",
        "/v1/tenants/{tenant}/audit/entries",
        "/v1/tenants/{tenant}/audit/verify",
        "/v1/tenants/{tenant}/audit/checkpoint",
        "/v1/tenants/{tenant}/audit/proofs/{seq}",
    ] {
        assert!(paths.contains_key(path), "the document lacks {path}");
    }
    assert!(document["components"]["schemas"]["ErrorBody"].is_object());
    assert_eq!(document.to_string(), sos_server::openapi_document().parse::<Value>().unwrap().to_string());
    server.stop().await;
}

#[tokio::test]
async fn invalid_configuration_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let parse = |extra: &[&str]| {
        let mut args = vec!["sos-server", "--signing-key"];
        let key = dir.path().join("key").display().to_string();
        let key: &'static str = Box::leak(key.into_boxed_str());
        args.push(key);
        args.extend_from_slice(extra);
        let config = sos_server::Config::from_args(&args).expect("flags parse");
        sos_server::Settings::load(config).map(drop).map_err(|error| format!("{error:#}"))
    };
    let packs = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/packs");
    let missing = parse(&["--packs", "/nonexistent/packs"]).unwrap_err();
    assert!(missing.contains("/nonexistent/packs") && missing.contains("--packs"), "{missing}");
    let bad_secret = parse(&["--packs", packs, "--webhook-secret", "acme:stripe"]).unwrap_err();
    assert!(bad_secret.contains("TENANT:PROVIDER=SECRET"), "{bad_secret}");
    let bad_provider = parse(&["--packs", packs, "--webhook-secret", "acme:paypal=x"]).unwrap_err();
    assert!(bad_provider.contains("paypal"), "{bad_provider}");
    let bad_standard =
        parse(&["--packs", packs, "--webhook-secret", "acme:standard=not-a-whsec"]).unwrap_err();
    assert!(bad_standard.contains("acme:standard"), "{bad_standard}");
    let bad_url = parse(&["--packs", packs, "--slack-webhook-url", "ftp://example.invalid/x"]).unwrap_err();
    assert!(bad_url.contains("--slack-webhook-url"), "{bad_url}");
    let twice =
        parse(&["--packs", packs, "--slack-webhook-url", "acme=http://a.invalid/x,acme=http://b.invalid/y"])
            .unwrap_err();
    assert!(twice.contains("already given"), "{twice}");
    let bad_tenant =
        parse(&["--packs", packs, "--slack-webhook-url", "Not A Tenant=http://a.invalid/x"]).unwrap_err();
    assert!(bad_tenant.contains("TENANT=URL"), "{bad_tenant}");
    parse(&[
        "--packs",
        packs,
        "--slack-webhook-url",
        "http://hooks.invalid/x?token=a=b,acme=https://hooks.invalid/y",
    ])
    .expect("a default URL with '=' in its query, and a tenant's own");
    // The signing key was generated by the first valid load and is read back by the next.
    parse(&["--packs", packs]).expect("a valid configuration loads");
    assert!(dir.path().join("key").exists(), "the signing key is generated on first run");
    let public =
        std::fs::read_to_string(dir.path().join("key.pub")).expect("the verifier key is written beside it");
    let verifier = sos_audit::note::NoteVerifier::from_key_string(public.trim()).expect("a verifier key");
    assert_eq!(verifier.name(), sos_server::SIGNER_NAME);
    parse(&["--packs", packs]).expect("the generated key is read back");
    std::fs::write(dir.path().join("key"), "garbage").unwrap();
    let bad_key = parse(&["--packs", packs]).unwrap_err();
    assert!(bad_key.contains("signing key"), "{bad_key}");
}

/// Opens an app on `dir`'s SQLite file (or on `database_url`) with the signing key
/// `dir/checkpoint.key`, the way `main` does; the error is the start-up error `main` prints.
async fn open_app_in(dir: &std::path::Path, database_url: Option<&str>) -> Result<sos_server::App, String> {
    let packs = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/packs");
    let sqlite = dir.join("sos.sqlite").display().to_string();
    let key = dir.join("checkpoint.key").display().to_string();
    let args = ["sos-server", "--packs", packs, "--sqlite-path", &sqlite, "--signing-key", &key];
    let mut config = sos_server::Config::from_args(args).expect("flags parse");
    config.database_url = database_url.map(str::to_owned);
    let settings = sos_server::Settings::load(config).map_err(|error| format!("{error:#}"))?;
    sos_server::App::open(settings, Arc::new(SystemClock)).await.map_err(|error| format!("{error:#}"))
}

/// Operator error (finding F5): the signing key file is lost while the database holds
/// checkpoints signed with it. A restart must refuse at once, saying to restore the key or move
/// the checkpoints aside, rather than generate a new key, start healthy and then fail every
/// checkpoint and proof; and it keeps refusing with the key generated by the refused start.
async fn lost_signing_key_is_refused_at_start(database: Option<PgTestDatabase>) {
    let url = database.as_ref().map(|database| database.url().to_owned());
    let dir = tempfile::tempdir().unwrap();
    let app = open_app_in(dir.path(), url.as_deref()).await.expect("the first start");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sos_server::serve_app(app, listener, async move {
        let _ = stopped.await;
    }));
    let client = reqwest::Client::new();
    let created = client.put(format!("{base}/v1/tenants/acme")).send().await.unwrap();
    assert!(created.status().is_success(), "{created:?}");
    let checkpoint = client.get(format!("{base}/v1/tenants/acme/audit/checkpoint")).send().await.unwrap();
    assert_eq!(checkpoint.status().as_u16(), 200, "a checkpoint is signed and recorded");
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    open_app_in(dir.path(), url.as_deref()).await.expect("a restart with the same key starts");
    let key = dir.path().join("checkpoint.key");
    std::fs::remove_file(&key).expect("remove the signing key");
    for attempt in
        ["the restart without the key", "the next restart, with the key generated by the refused one"]
    {
        let error = open_app_in(dir.path(), url.as_deref()).await.err().unwrap_or_else(|| {
            panic!("{attempt} started although the recorded checkpoints were signed by a lost key")
        });
        assert!(
            error.contains("Restore the original signing key")
                && error.contains("move the recorded checkpoints aside")
                && error.contains(&key.display().to_string()),
            "{attempt}: {error}"
        );
    }
}

#[tokio::test]
async fn lost_signing_key_is_refused_at_start_on_sqlite() {
    lost_signing_key_is_refused_at_start(None).await;
}

#[tokio::test]
async fn lost_signing_key_is_refused_at_start_on_postgres() {
    lost_signing_key_is_refused_at_start(Some(PgTestDatabase::new(&[]).await)).await;
}

/// A checkpoint recorded by a replica with another signing key (started on the same database
/// before any checkpoint existed) is answered 503 `key_mismatch`, not 500.
#[tokio::test]
async fn checkpoint_signed_by_another_replicas_key_is_a_503_key_mismatch() {
    let backend = Backend::postgres().await;
    let url = match &backend {
        Backend::Postgres(database) => database.url().to_owned(),
        Backend::Sqlite => unreachable!("a PostgreSQL backend"),
    };
    let other_dir = tempfile::tempdir().unwrap();
    let other = open_app_in(other_dir.path(), Some(&url)).await.expect("the other replica starts");
    let server = TestServer::start(backend, Arc::new(SystemClock), &[]).await;
    let client = reqwest::Client::new();
    let created = client.put(server.url("/v1/tenants/acme")).send().await.unwrap();
    assert!(created.status().is_success(), "{created:?}");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other_base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(sos_server::serve_app(other, listener, async move {
        let _ = stopped.await;
    }));
    let signed = client.get(format!("{other_base}/v1/tenants/acme/audit/checkpoint")).send().await.unwrap();
    assert_eq!(signed.status().as_u16(), 200, "the other replica signs the first checkpoint");
    let answer = client.get(server.url("/v1/tenants/acme/audit/checkpoint")).send().await.unwrap();
    expect_error(answer, 503, "key_mismatch").await;
    // A proof of a newer entry needs a newer checkpoint, which must extend the recorded one.
    let deal = json!({ "contact_name": "Key", "stage": "proposal" });
    let written = client.put(server.url("/v1/tenants/acme/deals/d-1")).json(&deal).send().await.unwrap();
    assert_eq!(written.status().as_u16(), 201, "{written:?}");
    let answer = client.get(server.url("/v1/tenants/acme/audit/proofs/2")).send().await.unwrap();
    expect_error(answer, 503, "key_mismatch").await;
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    server.stop().await;
}
