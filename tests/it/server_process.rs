//! The reference server as real processes: several servers on one PostgreSQL racing on the same
//! webhook, SIGKILL mid-load and restart on SQLite and PostgreSQL, graceful shutdown.
//!
//! The processes are this test binary re-executed as children that run the server's library
//! entry point exactly as its `main` does (see [`harness`]).

pub(crate) mod harness;
pub(crate) mod provider;
pub(crate) mod tables;

use std::time::Duration;

use harness::{ServerArgs, ServerProcess, scratch_dir};

/// The child side of every process test. Run as a child (with [`harness::CHILD_ARGS`] set) it
/// is the server; run as a plain test it checks that the entry point refuses a bad
/// configuration with an error naming the flag, before binding or opening anything.
#[test]
fn child_entry() {
    if let Ok(args) = std::env::var(harness::CHILD_ARGS) {
        harness::init_child_logging();
        let args: Vec<String> = serde_json::from_str(&args).expect("the parent passes a JSON array");
        if let Err(error) = harness::child_main(args) {
            // `{:#}` prints the whole chain of causes, as `main` returning the error would.
            eprintln!("Error: {error:#}");
            std::process::exit(1);
        }
        return;
    }
    let error = harness::child_main(vec!["--listen".to_owned(), "not-an-address".to_owned()])
        .expect_err("an unparseable --listen is refused");
    assert!(error.to_string().contains("--listen"), "the error names the flag: {error}");
}

/// SIGTERM lets the server finish and exit 0; a restart on the same SQLite file comes up again
/// (migrations already applied) on the same address.
#[tokio::test]
async fn sigterm_exits_cleanly_and_a_restart_reopens_the_same_sqlite_file() {
    let dir = scratch_dir();
    let args = ServerArgs::sqlite(dir.path());
    let mut server = ServerProcess::start("sqlite", dir.path(), args).await;
    let status = server.terminate(Duration::from_secs(30)).expect("the server exits by itself on SIGTERM");
    assert!(status.success(), "a SIGTERM shutdown exits 0, got {status}\n{}", server.log());
    server.restart().await;
    let health: serde_json::Value =
        reqwest::get(format!("{}/healthz", server.url())).await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
}

// ---------------------------------------------------------------------------------------------
// Three processes on one PostgreSQL, one webhook delivered 20 times at once
// ---------------------------------------------------------------------------------------------

const RACE_TENANT: &str = "acme";
const RACE_SECRET: &str = "whsec_three_processes_race";
const RACE_DELIVERIES: usize = 20;

/// A checkpoint key shared by replicas, written before they start (as a deployment provisions
/// it), so that the replicas race on the database and not on creating the key file.
fn provision_signing_key(dir: &std::path::Path) {
    sos_audit::tlog::generate_signer_file(&dir.join("checkpoint.key"), sos_server::SIGNER_NAME)
        .expect("the key file is written");
}

/// Named shapes `toctou-dedupe` and `replay-same`, across processes: three servers started at
/// one instant on one fresh PostgreSQL database (so they also race on its migrations), the same
/// signed Stripe payment delivered 20 times at one instant across them. Exactly one delivery
/// is processed; every other one is answered already-processed (200) or in flight (409/503
/// with Retry-After), never another 5xx; the tables hold one effect (the deal's row written
/// once more) and one audit entry, and the chain verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_one_postgres_same_webhook_20_times_one_effect_one_audit_entry() {
    let dir = scratch_dir();
    provision_signing_key(dir.path());
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let secret = format!("{RACE_TENANT}:stripe={RACE_SECRET}");
    let servers = ServerProcess::start_together(
        dir.path(),
        (0..3)
            .map(|index| {
                let args =
                    ServerArgs::postgres(dir.path(), database.url()).arg("--webhook-secret", secret.clone());
                (format!("replica-{index}"), args)
            })
            .collect(),
    )
    .await;
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let client = reqwest::Client::new();
    provider::create_tenant(&client, &urls[0], RACE_TENANT).await;
    provider::put_deal(&client, &urls[1], RACE_TENANT, "d-race").await;
    let tables = tables::Tables::Postgres(database.pool().clone());
    let (_, version_before) = tables.deal(RACE_TENANT, "d-race").await.expect("the deal was stored");

    let event_id = format!("evt_race_{}", uuid_like());
    let body = provider::stripe_payment(&event_id, "d-race");
    // One signed delivery, sent 20 times: the same bytes and the same signature header.
    let timestamp = provider::unix_now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(RACE_DELIVERIES));
    let mut tasks = Vec::new();
    for delivery in 0..RACE_DELIVERIES {
        let base = urls[delivery % urls.len()].clone();
        let body = body.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            // Each delivery has its own connection, opened before the start line, so that the
            // 20 requests leave together.
            let client = reqwest::Client::builder().pool_max_idle_per_host(1).build().unwrap();
            provider::get_json(&client, &format!("{base}/healthz")).await;
            barrier.wait().await;
            provider::send(provider::stripe_request(
                &client,
                &base,
                RACE_TENANT,
                RACE_SECRET,
                timestamp,
                &body,
            ))
            .await
            .map_err(|error| error.to_string())
        }));
    }
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.expect("a delivery task").expect("every delivery is answered"));
    }

    let processed = answers.iter().filter(|a| a.status == 200 && a.outcome() == "processed").count();
    let already = answers.iter().filter(|a| a.status == 200 && a.outcome() == "already_processed").count();
    let in_flight: Vec<_> = answers.iter().filter(|a| a.status == 409 || a.status == 503).collect();
    eprintln!(
        "20 concurrent deliveries: {processed} processed, {already} already processed, {} in flight ({:?})",
        in_flight.len(),
        in_flight.iter().map(|answer| answer.status).collect::<Vec<_>>()
    );
    assert_eq!(processed, 1, "exactly one delivery is processed: {answers:#?}");
    assert_eq!(processed + already + in_flight.len(), RACE_DELIVERIES, "no other answer: {answers:#?}");
    for answer in &in_flight {
        assert!(answer.retry_after.is_some(), "an in-flight answer says when to retry: {answer:?}");
    }
    assert!(
        answers.iter().all(|a| a.status < 500 || a.status == 503),
        "no 5xx but in-flight 503: {answers:#?}"
    );

    // The provider retries what was in flight; by now every retry is already processed.
    for (index, _) in in_flight.iter().enumerate() {
        let base = &urls[index % urls.len()];
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let (answer, _) = provider::deliver_stripe_until_acknowledged(
            &client,
            base,
            RACE_TENANT,
            RACE_SECRET,
            &body,
            deadline,
        )
        .await;
        assert_eq!(answer.outcome(), "already_processed", "{answer:?}");
    }

    let (stage, version_after) = tables.deal(RACE_TENANT, "d-race").await.expect("the deal is still there");
    assert_eq!(stage, "closed-won", "the payment marked the deal won");
    assert_eq!(version_after, version_before + 1, "the deal's row was written exactly once by the webhook");
    assert_eq!(
        tables.audit_entries_mentioning(RACE_TENANT, "deal.won", &event_id).await,
        1,
        "one audit entry"
    );
    assert_eq!(
        tables.audit_entries_with_action(RACE_TENANT, "deal.won").await,
        1,
        "and no other deal.won entry"
    );
    let records = tables.webhook_records(RACE_TENANT).await;
    assert_eq!(records.len(), 1, "one guard record: {records:?}");
    assert_eq!((records[0].0.as_str(), records[0].1.as_str()), (event_id.as_str(), "processed"));
    tables.assert_chain_intact(RACE_TENANT).await;
    drop(servers);
}

/// A short random suffix, so that event ids never repeat across runs.
fn uuid_like() -> String {
    format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos())
}

// ---------------------------------------------------------------------------------------------
// SIGKILL mid-load and restart
// ---------------------------------------------------------------------------------------------

const LOAD_TENANT: &str = "crashco";
const LOAD_SECRET: &str = "whsec_sigkill_mid_load";
const LOAD_EVENTS: usize = 60;
const LOAD_SENDERS: usize = 4;
/// The pause before each sender's next delivery: 60 events over 4 senders take at least 0.6 s.
const SENDER_PACE: Duration = Duration::from_millis(40);

/// What the provider saw for one event.
#[derive(Debug, Clone)]
struct Acknowledged {
    event_id: String,
    deal_id: String,
    outcome: String,
    failed_attempts: usize,
}

/// How the server is stopped mid-load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Interrupt {
    /// SIGKILL: a crash; answers of committed deliveries may be lost, never their effects.
    Kill,
    /// SIGTERM: a graceful shutdown; in-flight deliveries finish and are answered, and the
    /// process exits 0.
    Terminate,
}

/// A stream of distinct signed Stripe payments, each for its own deal, delivered by four
/// concurrent senders that retry every failure as Stripe does; the server is stopped three times
/// (SIGKILL or SIGTERM) while deliveries are in flight and restarted on the same database and
/// address. Afterwards every event is re-delivered once more (providers do that too). Every
/// event was acknowledged; every deal was written exactly once by its payment with exactly one
/// `deal.won` entry; the guard holds every event as processed; the chain verifies, by the server
/// and independently.
async fn interrupted_mid_load_and_restart(
    mut server: ServerProcess,
    tables: tables::Tables,
    interrupt: Interrupt,
) {
    let base = server.url();
    let client = reqwest::Client::new();
    provider::create_tenant(&client, &base, LOAD_TENANT).await;
    let run = uuid_like();
    let events: Vec<(String, String)> = (0..LOAD_EVENTS)
        .map(|index| (format!("evt_load_{run}_{index:03}"), format!("d-{index:03}")))
        .collect();
    let mut versions_before = std::collections::BTreeMap::new();
    for (_, deal_id) in &events {
        provider::put_deal(&client, &base, LOAD_TENANT, deal_id).await;
        let (_, version) = tables.deal(LOAD_TENANT, deal_id).await.expect("the deal was stored");
        versions_before.insert(deal_id.clone(), version);
    }

    let queue = std::sync::Arc::new(std::sync::Mutex::new(events.clone()));
    let acknowledged = std::sync::Arc::new(std::sync::Mutex::new(Vec::<Acknowledged>::new()));
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    let mut senders = Vec::new();
    for _ in 0..LOAD_SENDERS {
        let (queue, acknowledged, base) = (queue.clone(), acknowledged.clone(), base.clone());
        senders.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            loop {
                // Paced like a provider's delivery queue, so the load outlasts the three
                // interruptions however fast the server answers: some deliveries must meet a
                // stopped server, or the test would prove nothing about restarts.
                tokio::time::sleep(SENDER_PACE).await;
                let Some((event_id, deal_id)) = queue.lock().unwrap().pop() else { return };
                let body = provider::stripe_payment(&event_id, &deal_id);
                let (answer, attempts) = provider::deliver_stripe_until_acknowledged(
                    &client,
                    &base,
                    LOAD_TENANT,
                    LOAD_SECRET,
                    &body,
                    deadline,
                )
                .await;
                acknowledged.lock().unwrap().push(Acknowledged {
                    event_id,
                    deal_id,
                    outcome: answer.outcome(),
                    failed_attempts: attempts.len(),
                });
            }
        }));
    }

    // Three interruptions while the senders are busy: after a quarter, a half and three quarters.
    for threshold in [LOAD_EVENTS / 4, LOAD_EVENTS / 2, 3 * LOAD_EVENTS / 4] {
        while acknowledged.lock().unwrap().len() < threshold {
            assert!(std::time::Instant::now() < deadline, "the load stalled before the crash");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        match interrupt {
            Interrupt::Kill => server.kill(),
            Interrupt::Terminate => {
                let status = server.terminate(Duration::from_secs(60)).expect("the server exits on SIGTERM");
                assert!(status.success(), "a graceful shutdown exits 0, got {status}\n{}", server.log());
            }
        }
        // The provider's deliveries fail while the server is down, and are retried.
        tokio::time::sleep(Duration::from_millis(300)).await;
        server.restart().await;
    }
    for sender in senders {
        sender.await.expect("a sender finished");
    }
    let acknowledged = std::mem::take(&mut *acknowledged.lock().unwrap());
    let mut acknowledged_pairs: Vec<(String, String)> =
        acknowledged.iter().map(|ack| (ack.event_id.clone(), ack.deal_id.clone())).collect();
    acknowledged_pairs.sort();
    assert_eq!(acknowledged_pairs, events, "every event was acknowledged, once");
    let retried = acknowledged.iter().filter(|ack| ack.failed_attempts > 0).count();
    let answer_lost = acknowledged.iter().filter(|ack| ack.outcome == "already_processed").count();
    eprintln!(
        "{LOAD_EVENTS} events, 3 times {interrupt:?}: {retried} needed retries, {answer_lost} were committed before a crash \
         lost their answer"
    );
    assert!(retried > 0, "the interruptions failed deliveries, which the provider retried: {acknowledged:?}");
    if interrupt == Interrupt::Terminate {
        assert_eq!(
            answer_lost, 0,
            "a graceful shutdown answers every delivery it committed: {acknowledged:?}"
        );
    }
    for ack in &acknowledged {
        assert!(
            ack.outcome == "processed" || (ack.outcome == "already_processed" && ack.failed_attempts > 0),
            "acknowledged as processed, or as already processed after a failed attempt whose answer \
             was lost in a crash: {ack:?}"
        );
    }

    // Providers also re-deliver events that were acknowledged.
    for (event_id, deal_id) in &events {
        let body = provider::stripe_payment(event_id, deal_id);
        let (answer, _) = provider::deliver_stripe_until_acknowledged(
            &client,
            &base,
            LOAD_TENANT,
            LOAD_SECRET,
            &body,
            deadline,
        )
        .await;
        assert_eq!(answer.outcome(), "already_processed", "{event_id}: {answer:?}");
    }

    for (event_id, deal_id) in &events {
        let (stage, version) = tables.deal(LOAD_TENANT, deal_id).await.expect("the deal is there");
        assert_eq!(stage, "closed-won", "{event_id} marked {deal_id} won (not lost)");
        assert_eq!(
            version,
            versions_before[deal_id] + 1,
            "{event_id} wrote {deal_id} exactly once (not doubled)"
        );
        assert_eq!(
            tables.audit_entries_mentioning(LOAD_TENANT, "deal.won", event_id).await,
            1,
            "{event_id} has exactly one audit entry"
        );
    }
    let won_entries = tables.audit_entries_with_action(LOAD_TENANT, "deal.won").await;
    assert_eq!(won_entries, i64::try_from(LOAD_EVENTS).unwrap(), "no stray deal.won entry");
    let records = tables.webhook_records(LOAD_TENANT).await;
    assert_eq!(records.len(), LOAD_EVENTS, "one guard record per event");
    assert!(
        records.iter().all(|(_, state, _)| state == "processed"),
        "every event is processed: {records:?}"
    );
    tables.assert_chain_intact(LOAD_TENANT).await;
    let verdict = provider::get_json(&client, &format!("{base}/v1/tenants/{LOAD_TENANT}/audit/verify")).await;
    assert_eq!(verdict["intact"], true, "the server verifies its own chain: {verdict}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_and_restart_on_sqlite_loses_and_doubles_no_webhook() {
    let dir = scratch_dir();
    let args =
        ServerArgs::sqlite(dir.path()).arg("--webhook-secret", format!("{LOAD_TENANT}:stripe={LOAD_SECRET}"));
    let sqlite_path = args.sqlite_path();
    let server = ServerProcess::start("sqlite", dir.path(), args).await;
    let tables = tables::Tables::Sqlite(sos_testkit::sqlite_pool(&sqlite_path, 2).await);
    interrupted_mid_load_and_restart(server, tables, Interrupt::Kill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_and_restart_on_postgres_loses_and_doubles_no_webhook() {
    let dir = scratch_dir();
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let args = ServerArgs::postgres(dir.path(), database.url())
        .arg("--webhook-secret", format!("{LOAD_TENANT}:stripe={LOAD_SECRET}"));
    let server = ServerProcess::start("postgres", dir.path(), args).await;
    interrupted_mid_load_and_restart(
        server,
        tables::Tables::Postgres(database.pool().clone()),
        Interrupt::Kill,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Three processes evaluating at once: each signal reaches the channel once
// ---------------------------------------------------------------------------------------------

/// A Slack-compatible incoming webhook on loopback: keeps every payload's text, answers `ok`
/// with an `x-slack-req-id` as Slack does.
async fn start_slack_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let texts = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let kept = texts.clone();
    let app = axum::Router::new().route(
        "/services/T000/B000/XXXX",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                let payload: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let count = {
                    let mut texts = kept.lock().unwrap();
                    texts.push(payload["text"].as_str().unwrap_or_default().to_owned());
                    texts.len()
                };
                ([("x-slack-req-id", format!("req-{count}"))], "ok")
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}/services/T000/B000/XXXX"), texts)
}

/// Three `--demo` replicas on one fresh PostgreSQL database, started at one instant (they race on
/// migrations and on seeding the demo tenant), each running the periodic evaluator every
/// second, and asked to evaluate at one instant as well: every released signal reaches the
/// Slack receiver exactly once, with exactly one receipt, and no request gets a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_evaluating_at_once_deliver_each_signal_once() {
    let dir = scratch_dir();
    provision_signing_key(dir.path());
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let (slack, received) = start_slack_receiver().await;
    let servers = ServerProcess::start_together(
        dir.path(),
        (0..3)
            .map(|index| {
                let args = ServerArgs::postgres(dir.path(), database.url())
                    .flag("--demo")
                    .arg("--slack-webhook-url", slack.clone())
                    .arg("--eval-interval", "1");
                (format!("replica-{index}"), args)
            })
            .collect(),
    )
    .await;
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let client = reqwest::Client::new();
    // The quick start's contact whose renewal is near: the demo agent's insight is about it.
    let now = chrono::Utc::now();
    let body = serde_json::json!({
        "type": "contact.upserted",
        "data": { "id": "c-1", "name": "Initech Fund", "interactions": 3, "last_interaction_at": now,
                  "renewal_at": now + chrono::TimeDelta::days(9) },
    })
    .to_string();
    let answer = provider::send(provider::standard_request(
        &client,
        &urls[0],
        sos_server::DEMO_TENANT,
        sos_server::DEMO_STANDARD_SECRET,
        "msg_three_replicas_contact",
        provider::unix_now(),
        body.as_bytes(),
    ))
    .await
    .unwrap();
    assert_eq!(answer.status, 200, "{answer:?}");

    // Every replica evaluates now, together, three times, while their evaluators also run.
    for _ in 0..3 {
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(urls.len()));
        let mut tasks = Vec::new();
        for base in urls.clone() {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let client = reqwest::Client::new();
                provider::get_json(&client, &format!("{base}/healthz")).await;
                barrier.wait().await;
                let url = format!("{base}/v1/tenants/{}/evaluations", sos_server::DEMO_TENANT);
                provider::send(client.post(url)).await.expect("the server answers")
            }));
        }
        for task in tasks {
            let answer = task.await.unwrap();
            assert!(
                answer.status == 200 || (answer.status == 409 && answer.outcome() == "concurrent_evaluation"),
                "an evaluation runs or says another one runs: {answer:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // Let the periodic evaluators finish what they started.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let texts = received.lock().unwrap().clone();
    eprintln!("three replicas delivered {} signal(s): {texts:?}", texts.len());
    assert!(!texts.is_empty(), "the demo's renewal insight was delivered");
    let mut distinct = texts.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), texts.len(), "no signal reached the channel twice: {texts:#?}");
    let delivered: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.id, (SELECT COUNT(*) FROM sos_server_receipts r WHERE r.tenant = s.tenant AND r.signal_id = s.id) \
         FROM sos_server_signals s WHERE s.tenant = $1 AND s.status = 'delivered'",
    )
    .bind(sos_server::DEMO_TENANT)
    .fetch_all(database.pool())
    .await
    .unwrap();
    assert_eq!(
        delivered.len(),
        texts.len(),
        "each delivered signal was posted once: {delivered:?} {texts:#?}"
    );
    assert!(delivered.iter().all(|(_, receipts)| *receipts == 1), "one receipt per delivery: {delivered:?}");
    tables::Tables::Postgres(database.pool().clone()).assert_chain_intact(sos_server::DEMO_TENANT).await;
    drop(servers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_and_restart_on_sqlite_answers_every_committed_webhook() {
    let dir = scratch_dir();
    let args =
        ServerArgs::sqlite(dir.path()).arg("--webhook-secret", format!("{LOAD_TENANT}:stripe={LOAD_SECRET}"));
    let sqlite_path = args.sqlite_path();
    let server = ServerProcess::start("sqlite", dir.path(), args).await;
    let tables = tables::Tables::Sqlite(sos_testkit::sqlite_pool(&sqlite_path, 2).await);
    interrupted_mid_load_and_restart(server, tables, Interrupt::Terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_mid_load_and_restart_on_postgres_answers_every_committed_webhook() {
    let dir = scratch_dir();
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let args = ServerArgs::postgres(dir.path(), database.url())
        .arg("--webhook-secret", format!("{LOAD_TENANT}:stripe={LOAD_SECRET}"));
    let server = ServerProcess::start("postgres", dir.path(), args).await;
    interrupted_mid_load_and_restart(
        server,
        tables::Tables::Postgres(database.pool().clone()),
        Interrupt::Terminate,
    )
    .await;
}

// ---------------------------------------------------------------------------------------------
// Three processes checkpointing and proving while they write
// ---------------------------------------------------------------------------------------------

/// Three replicas on one PostgreSQL database take writes for one tenant while auditors ask each
/// of them for checkpoints and inclusion proofs: every answer is a 2xx or a retryable 503 (no
/// replica mistakes another's newer checkpoint for a fork), every proof verifies with the
/// published verifier key, and every checkpoint a replica serves extends the earlier ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_processes_checkpoint_and_prove_while_writing() {
    let dir = scratch_dir();
    provision_signing_key(dir.path());
    let database = sos_testkit::PgTestDatabase::new(&[]).await;
    let servers = ServerProcess::start_together(
        dir.path(),
        (0..3)
            .map(|index| (format!("replica-{index}"), ServerArgs::postgres(dir.path(), database.url())))
            .collect(),
    )
    .await;
    let verifier =
        sos_audit::tlog::load_verifier(&dir.path().join("checkpoint.key.pub").display().to_string())
            .expect("the replicas wrote the verifier key");
    let urls: Vec<String> = servers.iter().map(ServerProcess::url).collect();
    let client = reqwest::Client::new();
    provider::create_tenant(&client, &urls[0], "acme").await;

    let deadline = std::time::Instant::now() + Duration::from_secs(4);
    let mut writers = Vec::new();
    for writer in 0..6 {
        let urls = urls.clone();
        writers.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            let mut index = 0;
            while std::time::Instant::now() < deadline {
                let base = &urls[(writer + index) % urls.len()];
                let id = format!("d-{writer}-{index}");
                let body = provider::deal_body("acme", &id, "proposal");
                let answer =
                    provider::send(client.put(format!("{base}/v1/tenants/acme/deals/{id}")).json(&body))
                        .await
                        .unwrap();
                let retryable = answer.status == 503 && answer.retry_after.is_some();
                if !((200..300).contains(&answer.status) || retryable) {
                    failures.push(format!("PUT {id} on {base}: {answer:?}"));
                }
                index += 1;
            }
            failures
        }));
    }
    let mut auditors = Vec::new();
    for auditor in 0..9 {
        let (urls, verifier) = (urls.clone(), verifier.clone());
        auditors.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut failures = Vec::new();
            let mut sizes: Vec<u64> = Vec::new();
            let mut round = 0;
            while std::time::Instant::now() < deadline {
                let base = &urls[(auditor + round) % urls.len()];
                round += 1;
                let answer = provider::send(client.get(format!("{base}/v1/tenants/acme/audit/checkpoint")))
                    .await
                    .unwrap();
                if answer.status == 503 && answer.retry_after.is_some() {
                    continue;
                }
                if answer.status != 200 {
                    failures.push(format!("checkpoint on {base}: {answer:?}"));
                    continue;
                }
                let size = answer.json()["size"].as_u64().unwrap_or(0);
                sizes.push(size);
                let seq = 1 + (round as u64 * 7) % size.max(1);
                let answer = provider::send(client.get(format!("{base}/v1/tenants/acme/audit/proofs/{seq}")))
                    .await
                    .unwrap();
                if answer.status == 503 && answer.retry_after.is_some() {
                    continue;
                }
                match sos_audit::tlog::EntryProof::from_json(answer.body.as_bytes()) {
                    Ok(proof) if answer.status == 200 => {
                        if let Err(error) = proof.verify(&verifier) {
                            failures.push(format!("proof of {seq} on {base} does not verify: {error}"));
                        }
                    }
                    _ => failures.push(format!("proof of {seq} on {base}: {answer:?}")),
                }
            }
            (failures, sizes)
        }));
    }
    let mut failures = Vec::new();
    for writer in writers {
        failures.extend(writer.await.unwrap());
    }
    for auditor in auditors {
        let (found, sizes) = auditor.await.unwrap();
        failures.extend(found);
        assert!(!sizes.is_empty(), "the auditor got checkpoints");
        eprintln!("auditor: {} checkpoints, sizes {:?}..{:?}", sizes.len(), sizes.first(), sizes.last());
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    tables::Tables::Postgres(database.pool().clone()).assert_chain_intact("acme").await;
    for server in &servers {
        assert!(
            !server.log().contains("a person must look"),
            "no replica reported a broken log:\n{}",
            server.log()
        );
    }
}
