//! Adversarial tests against `sos-webhooks`'s public API: forged input, races, replays, zero-row writes, NULLs in unique keys.
//!
//! Each test is named after the threat shape it attacks and asserts the safe behaviour: a
//! failing test is a finding. Database-level attacks use raw SQL on a real PostgreSQL or SQLite
//! test database; the multi-process attacks re-run this test binary as child processes.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use chrono::{DateTime, TimeZone as _, Utc};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use sos_core::{Clock, ManualClock, Sha256Digest, SystemClock};
use sos_testkit::{PgTestDatabase, SqliteTestDatabase};
use sos_webhooks::signature::{
    GithubVerifier, ShopifyVerifier, SlackVerifier, StandardWebhooksVerifier, StripeVerifier,
    read_body_limited, sign_github, sign_shopify, sign_slack, sign_standard, sign_stripe,
};
use sos_webhooks::{
    ClaimAnswer, ClaimRequest, ClaimStore, Error, EventId, EventKey, GuardConfig, MemoryStore, Outcome,
    PgStore, ReadFirst, RunError, SqliteStore, WebhookGuard, postgres_migrator, sqlite_migrator,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const EFFECTS: &str = "CREATE TABLE adv_effects (tenant TEXT NOT NULL, provider TEXT NOT NULL, \
                       event_id TEXT NOT NULL, worker TEXT NOT NULL, body TEXT NOT NULL)";

async fn pg_db() -> PgTestDatabase {
    let migrator = postgres_migrator();
    let database = PgTestDatabase::with_pool_size(&[&migrator], 24).await;
    sqlx::query(EFFECTS).execute(database.pool()).await.unwrap();
    database
}

async fn sqlite_db() -> SqliteTestDatabase {
    let migrator = sqlite_migrator();
    let database = SqliteTestDatabase::new(&[&migrator]).await;
    sqlx::query(EFFECTS).execute(database.pool()).await.unwrap();
    database
}

fn key(tenant: &str, provider: &str, event: &str) -> EventKey {
    EventKey::new(tenant.parse().unwrap(), provider, event).unwrap()
}

fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap()
}

fn clock() -> ManualClock {
    ManualClock::new(start())
}

fn clock_at(unix: i64) -> ManualClock {
    ManualClock::new(Utc.timestamp_opt(unix, 0).unwrap())
}

/// One transactional delivery on PostgreSQL whose handler writes one effect row.
async fn pg_deliver(
    guard: &WebhookGuard<PgStore>,
    key: &EventKey,
    body: &[u8],
    worker: &str,
) -> Result<Outcome<()>, RunError<sqlx::Error>> {
    let parts = (
        key.tenant().as_str().to_owned(),
        key.provider().as_str().to_owned(),
        key.event_id().as_str().to_owned(),
        worker.to_owned(),
        String::from_utf8_lossy(body).into_owned(),
    );
    guard
        .transactional(key, body, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO adv_effects (tenant, provider, event_id, worker, body) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(parts.0)
                .bind(parts.1)
                .bind(parts.2)
                .bind(parts.3)
                .bind(parts.4)
                .execute(&mut **tx)
                .await?;
                Ok(())
            })
        })
        .await
}

/// One transactional delivery on SQLite whose handler writes one effect row.
async fn sqlite_deliver(
    guard: &WebhookGuard<SqliteStore>,
    key: &EventKey,
    body: &[u8],
    worker: &str,
) -> Result<Outcome<()>, RunError<sqlx::Error>> {
    let parts = (
        key.tenant().as_str().to_owned(),
        key.provider().as_str().to_owned(),
        key.event_id().as_str().to_owned(),
        worker.to_owned(),
        String::from_utf8_lossy(body).into_owned(),
    );
    guard
        .transactional(key, body, |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO adv_effects (tenant, provider, event_id, worker, body) VALUES (?1, ?2, ?3, ?4, ?5)",
                )
                .bind(parts.0)
                .bind(parts.1)
                .bind(parts.2)
                .bind(parts.3)
                .bind(parts.4)
                .execute(&mut **tx)
                .await?;
                Ok(())
            })
        })
        .await
}

async fn pg_effects(pool: &sqlx::PgPool, key: &EventKey) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM adv_effects WHERE tenant = $1 AND provider = $2 AND event_id = $3",
    )
    .bind(key.tenant().as_str())
    .bind(key.provider().as_str())
    .bind(key.event_id().as_str())
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn sqlite_effects(pool: &sqlx::SqlitePool, key: &EventKey) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM adv_effects WHERE tenant = ?1 AND provider = ?2 AND event_id = ?3",
    )
    .bind(key.tenant().as_str())
    .bind(key.provider().as_str())
    .bind(key.event_id().as_str())
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn pg_records(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sos_webhook_events").fetch_one(pool).await.unwrap()
}

fn request<'a>(key: &'a EventKey, body: &[u8], now: DateTime<Utc>, lease: Duration) -> ClaimRequest<'a> {
    ClaimRequest {
        key,
        body_hash: Sha256Digest::of(body),
        now,
        lease_until: now + chrono::Duration::from_std(lease).unwrap(),
        failed_reclaimable_before: now - chrono::Duration::seconds(30),
        lease,
        failed_retry_after: Duration::from_secs(30),
    }
}

/// A handler body that panics (after the caller's writes).
fn boom() -> Result<(), sqlx::Error> {
    panic!("the handler panicked after its write")
}

fn hmac_hex(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn hmac_b64(secret: &[u8], parts: &[&[u8]]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
    for part in parts {
        mac.update(part);
    }
    BASE64.encode(mac.finalize().into_bytes())
}

fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in pairs {
        map.append(*name, http::HeaderValue::from_str(value).unwrap());
    }
    map
}

/// Runs `deliveries` concurrently and counts the answers; panics on an answer that is never
/// correct for one event delivered with one body (prior failure, body mismatch, errors).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Tally {
    processed: u64,
    already: u64,
    retries: u64,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.processed += other.processed;
        self.already += other.already;
        self.retries += other.retries;
    }

    fn count<T: std::fmt::Debug>(&mut self, outcome: &Outcome<T>) -> bool {
        match outcome {
            Outcome::Processed(_) => self.processed += 1,
            Outcome::AlreadyProcessed => self.already += 1,
            Outcome::RetryInFlight => {
                self.retries += 1;
                return false;
            }
            other => panic!("an answer that is wrong for one event with one body: {other:?}"),
        }
        true
    }
}

// ---------------------------------------------------------------------------------------------
// signature-bypass: Stripe
// ---------------------------------------------------------------------------------------------

const NOW: i64 = 1_773_046_800; // 2026-03-09T09:00:00Z

#[test]
fn signature_bypass_stripe_header_tricks() {
    let secret = "whsec_adversarial";
    let verifier = StripeVerifier::new([secret]).unwrap();
    let clock = clock_at(NOW);
    let body = br#"{"id":"evt_1","amount":100}"#;
    let forged = br#"{"id":"evt_1","amount":999999}"#;
    let valid = sign_stripe(secret, NOW, body);
    let sig = valid.split_once(",v1=").unwrap().1.to_owned();
    verifier.verify_header(&valid, body, &clock).expect("the genuine header verifies");

    // Missing header.
    assert!(matches!(
        verifier.verify(&http::HeaderMap::new(), body, &clock),
        Err(Error::MissingHeader { .. })
    ));
    // Empty, blank and degenerate values.
    for header in [
        "".to_owned(),
        " ".to_owned(),
        ",".to_owned(),
        "t=".to_owned(),
        format!("t={NOW}"),
        format!("t={NOW},v1="),
        format!("t={NOW},v1"),
        format!("t={NOW},v1=,v1={}", "0".repeat(64)),
        format!("t={NOW},v0={sig}"),
        format!("v1={sig}"),
        format!("t=,v1={sig}"),
        format!("t={NOW},v1={}", sig.to_uppercase()),
        format!("t={NOW},v1={}", &sig[..63]),
        format!("t={NOW},v1={sig}0"),
        format!("t={NOW}, v1={sig}"),
        format!("t={NOW} ,v1={sig}"),
        format!(" t={NOW},v1={sig}"),
        format!("t={NOW},,v1={sig}"),
        format!("t={NOW},v1={sig},"),
        format!("t={NOW},v1= {sig}"),
        format!("t={NOW},v1={sig} "),
        format!("t={NOW},t={NOW},v1={sig}"),
        format!("t={NOW},t={},v1={sig}", NOW + 1),
        format!("t={NOW};v1={sig}"),
        format!("T={NOW},V1={sig}"),
        format!("t={NOW},v1={sig}\u{0}"),
    ] {
        // A respelled genuine header may or may not verify the genuine body; it must never
        // verify a forged body, and must never panic.
        let result = verifier.verify_header(&header, forged, &clock);
        assert!(result.is_err(), "{header:?} verified a forged body");
        let _ = verifier.verify_header(&header, body, &clock);
    }
    // Uppercase hex is refused outright (documented: only the provider's spelling).
    assert!(matches!(
        verifier.verify_header(&format!("t={NOW},v1={}", sig.to_uppercase()), body, &clock),
        Err(Error::MalformedHeader { .. })
    ));
    // The genuine signature among forged ones (rotation): still only the genuine body.
    let rotated = format!("t={NOW},v1={},v1={sig},v0={sig}", "a".repeat(64));
    verifier.verify_header(&rotated, body, &clock).unwrap();
    assert!(matches!(
        verifier.verify_header(&rotated, forged, &clock),
        Err(Error::NoMatchingSignature { .. })
    ));
    // A signature for another body, and one under another secret.
    assert!(matches!(
        verifier.verify_header(&sign_stripe(secret, NOW, forged), body, &clock),
        Err(Error::NoMatchingSignature { .. })
    ));
    assert!(matches!(
        verifier.verify_header(&sign_stripe("whsec_attacker", NOW, forged), forged, &clock),
        Err(Error::NoMatchingSignature { .. })
    ));
    // The key is the literal `whsec_…` string: the secret without the prefix, or its base64
    // decoding, must not be the key.
    assert!(verifier.verify_header(&sign_stripe("adversarial", NOW, body), body, &clock).is_err());
    // Invalid secrets are refused at construction.
    assert!(matches!(StripeVerifier::new([""]), Err(Error::InvalidSecret { .. })));
    assert!(matches!(StripeVerifier::new(Vec::<&str>::new()), Err(Error::InvalidSecret { .. })));
}

#[test]
fn signature_bypass_stripe_timestamp_tolerance_both_directions_and_overflow() {
    let secret = "whsec_adversarial";
    let verifier = StripeVerifier::new([secret]).unwrap();
    let clock = clock_at(NOW);
    let body = br#"{"id":"evt_1"}"#;
    for (timestamp, ok) in
        [(NOW - 300, true), (NOW + 300, true), (NOW - 301, false), (NOW + 301, false), (0, false), (1, false)]
    {
        let result = verifier.verify_header(&sign_stripe(secret, timestamp, body), body, &clock);
        assert_eq!(result.is_ok(), ok, "t={timestamp}: {result:?}");
        if !ok {
            assert!(matches!(result, Err(Error::TimestampOutsideTolerance { .. })), "{result:?}");
        }
    }
    // Configured tolerance holds in both directions.
    let tight = StripeVerifier::new([secret]).unwrap().with_tolerance(Duration::from_secs(5));
    assert!(tight.verify_header(&sign_stripe(secret, NOW - 6, body), body, &clock).is_err());
    assert!(tight.verify_header(&sign_stripe(secret, NOW + 6, body), body, &clock).is_err());
    // Respelled timestamps: a captured header whose t is rewritten (leading +, zeros, spaces)
    // must not verify, and absurd values must be typed errors, never panics or wraparounds.
    let genuine = sign_stripe(secret, NOW - 3600, body); // stale by an hour
    let sig = genuine.split_once(",v1=").unwrap().1;
    for t in [
        format!("+{NOW}"),
        format!("0{NOW}"),
        format!("00{NOW}"),
        format!("{NOW}.0"),
        format!("-{NOW}"),
        format!(" {NOW}"),
        "9223372036854775807".to_owned(),
        "9223372036854775808".to_owned(),
        "18446744073709551616".to_owned(),
        "999999999999".to_owned(),
        "99999999999999999999999999999999".to_owned(),
        "-9223372036854775808".to_owned(),
        "1e10".to_owned(),
        "0x69aeaa10".to_owned(),
        "١٧٧٣٠٤٦٨٠٠".to_owned(),
    ] {
        let result = verifier.verify_header(&format!("t={t},v1={sig}"), body, &clock);
        assert!(result.is_err(), "t={t} verified a stale signature");
    }
    // A signer that signs a timestamp with leading zeros is still subject to the tolerance.
    let padded_stale = format!("0{}", NOW - 3600);
    let mac = hmac_hex(secret.as_bytes(), &[padded_stale.as_bytes(), b".", body]);
    assert!(verifier.verify_header(&format!("t={padded_stale},v1={mac}"), body, &clock).is_err());
    // Huge but well-formed timestamps (12 digits) are outside any sane tolerance.
    let huge = "999999999999";
    let mac = hmac_hex(secret.as_bytes(), &[huge.as_bytes(), b".", body]);
    let huge_tolerance = StripeVerifier::new([secret]).unwrap().with_tolerance(Duration::from_secs(u64::MAX));
    assert!(verifier.verify_header(&format!("t={huge},v1={mac}"), body, &clock).is_err());
    // An infinite tolerance disables the check, but must not panic.
    let _ = huge_tolerance.verify_header(&format!("t={huge},v1={mac}"), body, &clock);
}

// ---------------------------------------------------------------------------------------------
// signature-bypass: Standard Webhooks
// ---------------------------------------------------------------------------------------------

const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[test]
fn signature_bypass_standard_webhooks_header_tricks() {
    let verifier = StandardWebhooksVerifier::new([STD_SECRET]).unwrap();
    let clock = clock_at(NOW);
    let body = br#"{"type":"invoice.paid","amount":100}"#;
    let forged = br#"{"type":"invoice.paid","amount":999}"#;
    let id = "msg_2abc";
    let ts = NOW.to_string();
    let valid = sign_standard(STD_SECRET, id, NOW, body).unwrap();
    let sig = valid.strip_prefix("v1,").unwrap().to_owned();
    verifier.verify_header(id, &ts, &valid, body, &clock).unwrap();
    // Published vector (Standard Webhooks reference libraries, standard-webhooks/libraries tests).
    StandardWebhooksVerifier::new([STD_SECRET])
        .unwrap()
        .verify_header(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            "1614265330",
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
            br#"{"test": 2432232314}"#,
            &clock_at(1_614_265_330),
        )
        .unwrap();

    // Each of the three headers missing.
    for missing in ["webhook-id", "webhook-timestamp", "webhook-signature"] {
        let mut pairs = vec![
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", valid.as_str()),
        ];
        pairs.retain(|(name, _)| *name != missing);
        assert!(
            matches!(verifier.verify(&headers(&pairs), body, &clock), Err(Error::MissingHeader { .. })),
            "{missing} missing"
        );
    }
    for signature in [
        "".to_owned(),
        " ".to_owned(),
        "v1,".to_owned(),
        "v1".to_owned(),
        format!("v1,{sig} v1,"),
        format!("v1, {sig}"),
        format!("v1,{sig}  v1,{sig}"),
        format!(" v1,{sig}"),
        format!("v1,{sig} "),
        format!("v1,{sig},"),
        format!("v1,{}", sig.trim_end_matches('=')),
        format!("v1,{}", sig.to_lowercase()),
        format!("v1a,{sig}"),
        format!("v2,{sig}"),
        format!("V1,{sig}"),
        format!("v1,{sig}\t"),
        format!("v1={sig}"),
    ] {
        assert!(
            verifier.verify_header(id, &ts, &signature, forged, &clock).is_err(),
            "{signature:?} verified a forged body"
        );
        let _ = verifier.verify_header(id, &ts, &signature, body, &clock);
    }
    // Forged body with a signature under an attacker's secret next to a genuine one.
    let attacker = sign_standard("whsec_YXR0YWNrZXI=", id, NOW, forged).unwrap();
    let both = format!("{attacker} {valid}");
    assert!(matches!(
        verifier.verify_header(id, &ts, &both, forged, &clock),
        Err(Error::NoMatchingSignature { .. })
    ));
    // Timestamps: both directions, respellings, overflow.
    for (timestamp, ok) in [(NOW - 300, true), (NOW + 300, true), (NOW - 301, false), (NOW + 301, false)] {
        let signature = sign_standard(STD_SECRET, id, timestamp, body).unwrap();
        let result = verifier.verify_header(id, &timestamp.to_string(), &signature, body, &clock);
        assert_eq!(result.is_ok(), ok, "{timestamp}: {result:?}");
    }
    for t in [
        format!("+{NOW}"),
        format!("0{NOW}"),
        format!(" {NOW}"),
        "99999999999999999999".to_owned(),
        String::new(),
    ] {
        assert!(verifier.verify_header(id, &t, &valid, body, &clock).is_err(), "t={t:?}");
    }
}

#[test]
fn signature_bypass_standard_webhooks_id_with_dot_and_secrets() {
    let verifier = StandardWebhooksVerifier::new([STD_SECRET]).unwrap();
    let clock = clock_at(NOW);
    let key = BASE64.decode(STD_SECRET.strip_prefix("whsec_").unwrap()).unwrap();
    // A sender signs id "msg", timestamp NOW, body "<NOW>.{}"? The attacker moves the dot: id
    // "msg.<NOW>", timestamp NOW, body "{}" has the very same signed bytes when the id may
    // contain '.', so the id containing '.' must be refused even with a matching MAC.
    let ts = NOW.to_string();
    let body_real = format!("{ts}.{{}}");
    let mac = hmac_b64(&key, &[b"msg", b".", ts.as_bytes(), b".", body_real.as_bytes()]);
    let signature = format!("v1,{mac}");
    verifier.verify_header("msg", &ts, &signature, body_real.as_bytes(), &clock).unwrap();
    let shifted_id = format!("msg.{ts}");
    let result = verifier.verify_header(&shifted_id, &ts, &signature, b"{}", &clock);
    assert!(matches!(result, Err(Error::MalformedHeader { .. })), "{result:?}");
    for id in [".", "a.", ".a", "msg..1", "", " "] {
        assert!(verifier.verify_header(id, &ts, &signature, b"{}", &clock).is_err(), "id {id:?}");
    }
    assert!(sign_standard(STD_SECRET, "a.b", NOW, b"{}").is_err());
    // Secrets: bad base64 and empty decoded keys are refused.
    for secret in ["whsec_", "whsec_!!!!", "whsec_abc", "whsec_ YQ==", "whsec_YQ", "whsec_====", ""] {
        assert!(
            matches!(StandardWebhooksVerifier::new([secret]), Err(Error::InvalidSecret { .. })),
            "{secret:?} was accepted"
        );
    }
    assert!(StandardWebhooksVerifier::new(Vec::<&str>::new()).is_err());
    // The key is the decoded secret: a MAC keyed with the literal `whsec_…` string is refused.
    let literal = hmac_b64(STD_SECRET.as_bytes(), &[b"msg", b".", ts.as_bytes(), b".", b"{}"]);
    assert!(verifier.verify_header("msg", &ts, &format!("v1,{literal}"), b"{}", &clock).is_err());
}

// ---------------------------------------------------------------------------------------------
// signature-bypass: GitHub, Slack, Shopify
// ---------------------------------------------------------------------------------------------

#[test]
fn signature_bypass_github_header_tricks() {
    let secret = "It's a Secret to Everybody";
    let verifier = GithubVerifier::new([secret]).unwrap();
    // Published vector: GitHub Docs, "Validating webhook deliveries".
    let vector = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    verifier.verify_header(vector, b"Hello, World!").unwrap();
    let hex = vector.strip_prefix("sha256=").unwrap();
    assert!(matches!(
        verifier.verify(&http::HeaderMap::new(), b"Hello, World!"),
        Err(Error::MissingHeader { .. })
    ));
    for header in [
        "".to_owned(),
        "sha256=".to_owned(),
        "sha256".to_owned(),
        hex.to_owned(),
        format!("sha256={}", hex.to_uppercase()),
        format!("SHA256={hex}"),
        format!("sha256= {hex}"),
        format!("sha256={hex} "),
        format!(" sha256={hex}"),
        format!("sha256={hex},sha256={hex}"),
        format!("sha1={hex}"),
        format!("sha256={}", &hex[..62]),
    ] {
        assert!(verifier.verify_header(&header, b"Hello, World?").is_err(), "{header:?}");
        let _ = verifier.verify_header(&header, b"Hello, World!");
    }
    assert!(matches!(
        verifier.verify_header(vector, b"Hello, World?"),
        Err(Error::NoMatchingSignature { .. })
    ));
    assert!(verifier.verify_header(&sign_github("attacker", b"x"), b"x").is_err());
    assert!(GithubVerifier::new([""]).is_err());
}

#[test]
fn signature_bypass_slack_header_tricks() {
    // Published vector: Slack, "Verifying requests from Slack".
    let secret = "8f742231b10e8888abcd99yyyzzz85a5";
    let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    let verifier = SlackVerifier::new([secret]).unwrap();
    let vector = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    verifier.verify_header(vector, "1531420618", body, &clock_at(1_531_420_618)).unwrap();
    let clock = clock_at(NOW);
    let ts = NOW.to_string();
    let valid = sign_slack(secret, NOW, b"a=1");
    let hex = valid.strip_prefix("v0=").unwrap();
    assert!(matches!(
        verifier.verify(&headers(&[("x-slack-signature", valid.as_str())]), b"a=1", &clock),
        Err(Error::MissingHeader { .. })
    ));
    assert!(matches!(
        verifier.verify(&headers(&[("x-slack-request-timestamp", ts.as_str())]), b"a=1", &clock),
        Err(Error::MissingHeader { .. })
    ));
    for signature in [
        "".to_owned(),
        "v0=".to_owned(),
        hex.to_owned(),
        format!("v0={}", hex.to_uppercase()),
        format!("v1={hex}"),
        format!("v0= {hex}"),
        format!("v0={hex},v0={hex}"),
    ] {
        assert!(verifier.verify_header(&signature, &ts, b"a=2", &clock).is_err(), "{signature:?}");
        let _ = verifier.verify_header(&signature, &ts, b"a=1", &clock);
    }
    // The signed string is `v0:<ts>:<body>`: moving the colon between timestamp and body fails.
    assert!(verifier.verify_header(&valid, &format!("{NOW}:a=1"), b"", &clock).is_err());
    for (timestamp, ok) in [(NOW - 300, true), (NOW + 300, true), (NOW - 301, false), (NOW + 301, false)] {
        let signature = sign_slack(secret, timestamp, b"a=1");
        assert_eq!(
            verifier.verify_header(&signature, &timestamp.to_string(), b"a=1", &clock).is_ok(),
            ok,
            "{timestamp}"
        );
    }
    let stale = sign_slack(secret, NOW - 3600, b"a=1");
    for t in [
        format!("+{}", NOW - 3600),
        format!("0{}", NOW - 3600),
        "99999999999999999999".to_owned(),
        String::new(),
        "-1".to_owned(),
    ] {
        assert!(verifier.verify_header(&stale, &t, b"a=1", &clock).is_err(), "t={t:?}");
    }
}

#[test]
fn signature_bypass_shopify_header_tricks() {
    let secret = "shpss_adversarial";
    let verifier = ShopifyVerifier::new([secret]).unwrap();
    let body = br#"{"id":820982911946154508}"#;
    let valid = sign_shopify(secret, body);
    verifier.verify_header(&valid, body).unwrap();
    assert!(matches!(verifier.verify(&http::HeaderMap::new(), body), Err(Error::MissingHeader { .. })));
    let raw = BASE64.decode(&valid).unwrap();
    for header in [
        "".to_owned(),
        "=".to_owned(),
        valid.trim_end_matches('=').to_owned(),
        format!(" {valid}"),
        format!("{valid} "),
        format!("{valid},{valid}"),
        format!("sha256={valid}"),
        hex::encode(&raw),
        base64::engine::general_purpose::URL_SAFE.encode(&raw),
        valid.to_lowercase(),
    ] {
        assert!(verifier.verify_header(&header, b"{\"id\":1}").is_err(), "{header:?}");
        let _ = verifier.verify_header(&header, body);
    }
    assert!(matches!(verifier.verify_header(&valid, b"{\"id\":1}"), Err(Error::NoMatchingSignature { .. })));
    assert!(ShopifyVerifier::new([""]).is_err());
}

/// Bodies are bytes, not text: invalid UTF-8 verifies when genuine, and any flipped byte fails,
/// for every provider.
#[test]
fn signature_bypass_non_utf8_bodies_every_provider() {
    let clock = clock_at(NOW);
    let ts = NOW.to_string();
    let bodies: [&[u8]; 4] = [b"\xff\xfe\x00\x01", b"\x80", b"{\"a\":\"\xc3\x28\"}\x00\xff", &[0u8; 0]];
    for body in bodies {
        let mut flipped = body.to_vec();
        if let Some(first) = flipped.first_mut() {
            *first ^= 0x01;
        } else {
            flipped.push(0);
        }
        let stripe = StripeVerifier::new(["whsec_x"]).unwrap();
        let header = sign_stripe("whsec_x", NOW, body);
        stripe.verify_header(&header, body, &clock).unwrap();
        assert!(stripe.verify_header(&header, &flipped, &clock).is_err());
        let standard = StandardWebhooksVerifier::new([STD_SECRET]).unwrap();
        let signature = sign_standard(STD_SECRET, "msg_1", NOW, body).unwrap();
        standard.verify_header("msg_1", &ts, &signature, body, &clock).unwrap();
        assert!(standard.verify_header("msg_1", &ts, &signature, &flipped, &clock).is_err());
        let github = GithubVerifier::new(["g"]).unwrap();
        github.verify_header(&sign_github("g", body), body).unwrap();
        assert!(github.verify_header(&sign_github("g", body), &flipped).is_err());
        let slack = SlackVerifier::new(["s"]).unwrap();
        slack.verify_header(&sign_slack("s", NOW, body), &ts, body, &clock).unwrap();
        assert!(slack.verify_header(&sign_slack("s", NOW, body), &ts, &flipped, &clock).is_err());
        let shopify = ShopifyVerifier::new(["p"]).unwrap();
        shopify.verify_header(&sign_shopify("p", body), body).unwrap();
        assert!(shopify.verify_header(&sign_shopify("p", body), &flipped).is_err());
    }
}

/// A signed header that appears twice is ambiguous: the crate verifies one value, while the
/// framework or the application (which reads the dedupe id itself) may take another, so a
/// captured delivery could pass verification under one id and be deduplicated under another.
/// A duplicated signed header must be refused.
#[test]
fn signature_bypass_duplicated_signed_headers_refused() {
    let clock = clock_at(NOW);
    let ts = NOW.to_string();
    let body = br#"{"id":"evt_1"}"#;

    let stripe = StripeVerifier::new(["whsec_x"]).unwrap();
    let genuine = sign_stripe("whsec_x", NOW, body);
    let map = headers(&[("stripe-signature", genuine.as_str()), ("stripe-signature", "t=1,v1=00")]);
    assert!(stripe.verify(&map, body, &clock).is_err(), "Stripe: duplicated Stripe-Signature accepted");

    let standard = StandardWebhooksVerifier::new([STD_SECRET]).unwrap();
    let signature = sign_standard(STD_SECRET, "msg_genuine", NOW, body).unwrap();
    let map = headers(&[
        ("webhook-id", "msg_genuine"),
        ("webhook-id", "msg_fresh_replay"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-signature", signature.as_str()),
    ]);
    assert!(
        standard.verify(&map, body, &clock).is_err(),
        "Standard Webhooks: duplicated webhook-id accepted"
    );
    let map = headers(&[
        ("webhook-id", "msg_genuine"),
        ("webhook-timestamp", ts.as_str()),
        ("webhook-timestamp", "1"),
        ("webhook-signature", signature.as_str()),
    ]);
    assert!(standard.verify(&map, body, &clock).is_err(), "Standard Webhooks: duplicated timestamp accepted");

    let github = GithubVerifier::new(["g"]).unwrap();
    let map = headers(&[
        ("x-hub-signature-256", sign_github("g", body).as_str()),
        ("x-hub-signature-256", "sha256=00"),
    ]);
    assert!(github.verify(&map, body).is_err(), "GitHub: duplicated X-Hub-Signature-256 accepted");

    let slack = SlackVerifier::new(["s"]).unwrap();
    let map = headers(&[
        ("x-slack-signature", sign_slack("s", NOW, body).as_str()),
        ("x-slack-request-timestamp", ts.as_str()),
        ("x-slack-request-timestamp", "1"),
    ]);
    assert!(slack.verify(&map, body, &clock).is_err(), "Slack: duplicated timestamp accepted");

    let shopify = ShopifyVerifier::new(["p"]).unwrap();
    let map = headers(&[
        ("x-shopify-hmac-sha256", sign_shopify("p", body).as_str()),
        ("x-shopify-hmac-sha256", "AA=="),
    ]);
    assert!(shopify.verify(&map, body).is_err(), "Shopify: duplicated X-Shopify-Hmac-Sha256 accepted");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// Arbitrary header text never verifies an arbitrary body and never panics.
    #[test]
    fn signature_bypass_arbitrary_headers_never_verify(header in ".{0,200}", body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
        let clock = clock_at(NOW);
        let ts = NOW.to_string();
        proptest::prop_assert!(StripeVerifier::new(["whsec_x"]).unwrap().verify_header(&header, &body, &clock).is_err());
        let standard = StandardWebhooksVerifier::new([STD_SECRET]).unwrap();
        proptest::prop_assert!(standard.verify_header("msg_1", &ts, &header, &body, &clock).is_err());
        proptest::prop_assert!(standard.verify_header(&header, &ts, "v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", &body, &clock).is_err());
        proptest::prop_assert!(GithubVerifier::new(["g"]).unwrap().verify_header(&header, &body).is_err());
        proptest::prop_assert!(SlackVerifier::new(["s"]).unwrap().verify_header(&header, &ts, &body, &clock).is_err());
        proptest::prop_assert!(ShopifyVerifier::new(["p"]).unwrap().verify_header(&header, &body).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Body-size limit
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn signature_bypass_body_limit_boundaries() {
    let limit = 1024;
    let one = |bytes: Vec<u8>| axum::body::Body::from(bytes).into_data_stream();
    assert_eq!(read_body_limited(one(vec![7; limit]), limit).await.unwrap().len(), limit);
    assert!(matches!(
        read_body_limited(one(vec![7; limit + 1]), limit).await,
        Err(Error::BodyTooLarge { .. })
    ));
    assert!(matches!(read_body_limited(one(vec![7; 1]), 0).await, Err(Error::BodyTooLarge { .. })));
    assert!(read_body_limited(one(Vec::new()), 0).await.unwrap().is_empty());
    let error = read_body_limited(one(vec![0; limit + 1]), limit).await.unwrap_err();
    assert_eq!(error.to_http().status().as_u16(), 413);
}

/// A real HTTP server reading bodies with `read_body_limited` (64 KiB): chunked bodies and
/// lying `Content-Length` values are refused while they stream in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_bypass_body_limit_lying_content_length_and_chunked_stream() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const LIMIT: usize = 64 * 1024;
    let received = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let app = {
        let received = Arc::clone(&received);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |request: axum::extract::Request| {
                let received = Arc::clone(&received);
                async move {
                    match read_body_limited(request.into_body().into_data_stream(), LIMIT).await {
                        Ok(body) => {
                            received.lock().unwrap().push(body.len());
                            (http::StatusCode::OK, body.len().to_string())
                        }
                        Err(error) => (error.to_http().status(), error.to_string()),
                    }
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    // Sends `head` then `chunk` repeatedly (up to `max` bytes) on one connection, and returns
    // the status line of the answer and whether the sender had finished before it came.
    async fn attack(
        address: std::net::SocketAddr,
        head: String,
        chunk: Vec<u8>,
        max: usize,
    ) -> (String, bool) {
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let (mut reader, mut writer) = stream.into_split();
        let finished = Arc::new(AtomicBool::new(false));
        let sender = {
            let finished = Arc::clone(&finished);
            tokio::spawn(async move {
                if writer.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let mut sent = 0;
                while sent < max {
                    if writer.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
                finished.store(true, Ordering::SeqCst);
            })
        };
        let mut answer = vec![0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(20), reader.read(&mut answer))
            .await
            .expect("the server answered while the body was still streaming")
            .unwrap();
        let done_before_answer = finished.load(Ordering::SeqCst);
        sender.abort();
        let text = String::from_utf8_lossy(&answer[..read]).into_owned();
        (text.lines().next().unwrap_or_default().to_owned(), done_before_answer)
    }

    // Chunked transfer, no Content-Length, an endless body of 8 KiB chunks (up to 256 MiB).
    let mut chunk = format!("{:x}\r\n", 8192).into_bytes();
    chunk.extend_from_slice(&[b'a'; 8192]);
    chunk.extend_from_slice(b"\r\n");
    let head = "POST /hook HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned();
    let (status, finished) = attack(address, head, chunk.clone(), 256 << 20).await;
    assert!(status.contains(" 413"), "chunked endless body: {status}");
    assert!(!finished, "the server read the whole endless body before refusing it");

    // Content-Length claims 100 bytes, a chunked-looking stream follows; whatever the server
    // reads as the body is within the limit.
    let head = "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n".to_owned();
    let (status, _) = attack(address, head, vec![b'b'; 8192], 4 * LIMIT).await;
    assert!(status.contains(" 200") || status.contains(" 400") || status.contains(" 413"), "{status}");

    // Content-Length claims a huge body and it keeps coming: refused at the limit, not after.
    let head = "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 10737418240\r\n\r\n".to_owned();
    let (status, finished) = attack(address, head, vec![b'c'; 8192], 256 << 20).await;
    assert!(status.contains(" 413"), "huge Content-Length: {status}");
    assert!(!finished);

    // Both Content-Length (small, lying) and chunked: never a body past the limit.
    let head = "POST /hook HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
        .to_owned();
    let _ = attack(address, head, chunk, 256 << 20).await;
    assert!(received.lock().unwrap().iter().all(|&len| len <= LIMIT), "{:?}", received.lock().unwrap());
}

// ---------------------------------------------------------------------------------------------
// injection
// ---------------------------------------------------------------------------------------------

/// An outside principal sends a forged payload with a header that looks valid: a captured
/// signature for another body, a signature under its own secret, a genuine signature from
/// another tenant's endpoint, or a genuine one hidden among forged entries.
#[tokio::test]
async fn injection_forged_payload_with_valid_looking_header() {
    let clock = clock_at(NOW);
    let genuine = br#"{"id":"evt_7","type":"payout.paid","amount":100,"tenant":"acme"}"#;
    let forged = br#"{"id":"evt_7","type":"payout.paid","amount":100000,"tenant":"acme"}"#;
    let acme = StripeVerifier::new(["whsec_acme"]).unwrap();
    let globex_header = sign_stripe("whsec_globex", NOW, forged);
    // Another tenant's valid signature (the attacker is a customer of the same service).
    assert!(acme.verify_header(&globex_header, forged, &clock).is_err());
    // A captured genuine header with the forged body.
    let captured = sign_stripe("whsec_acme", NOW, genuine);
    assert!(acme.verify_header(&captured, forged, &clock).is_err());
    // Genuine v1 appended after a forged v1 (rotation-looking header).
    let mixed = format!("{globex_header},{}", captured.split_once(',').unwrap().1);
    assert!(acme.verify_header(&mixed, forged, &clock).is_err());
    // A forged body with JSON that re-serializes equal to the genuine one.
    let reformatted = br#"{ "id":"evt_7","type":"payout.paid","amount":100,"tenant":"acme" }"#;
    assert!(acme.verify_header(&captured, reformatted, &clock).is_err());

    // Past the verifier: the forged body under the genuine event id is flagged by the guard and
    // never processed, on every store.
    let runs = AtomicU32::new(0);
    let guard = WebhookGuard::new(MemoryStore::new(), clock.clone());
    let event = key("acme", "stripe", "evt_7");
    let handler = |_| async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(())
    };
    assert_eq!(guard.two_phase(&event, genuine, handler).await.unwrap(), Outcome::Processed(()));
    let outcome = guard.two_phase(&event, forged, handler).await.unwrap();
    assert_eq!(outcome, Outcome::BodyMismatch);
    assert_eq!(outcome.to_http().status().as_u16(), 409);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

// ---------------------------------------------------------------------------------------------
// toctou-dedupe: tasks
// ---------------------------------------------------------------------------------------------

const TASKS: usize = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_transactional_many_tasks_same_event() {
    let database = pg_db().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    for round in 0..5 {
        let event = key("acme", "stripe", &format!("evt_same_{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (guard, event, barrier) = (Arc::clone(&guard), event.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut tally = Tally::default();
                while !tally.count(&pg_deliver(&guard, &event, b"{}", &format!("t{task}")).await.unwrap()) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tally
            }));
        }
        let mut total = Tally::default();
        for task in tasks {
            total.add(task.await.unwrap());
        }
        assert_eq!(total.processed, 1, "round {round}: {total:?}");
        assert_eq!(total.processed + total.already, TASKS as u64);
        assert_eq!(pg_effects(database.pool(), &event).await, 1, "round {round}");
    }
}

/// Runs `TASKS` concurrent two-phase deliveries of one event on `store`; the handler's effect is
/// an atomic counter. Exactly one delivery processes; every other answer is correct.
async fn two_phase_same_event<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    let guard = Arc::new(WebhookGuard::new(store, SystemClock));
    for round in 0..5 {
        let event = key("acme", "stripe", &format!("evt_2p_{round}"));
        let runs = Arc::new(AtomicU32::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for _ in 0..TASKS {
            let (guard, event, barrier, runs) =
                (Arc::clone(&guard), event.clone(), Arc::clone(&barrier), Arc::clone(&runs));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut tally = Tally::default();
                loop {
                    let runs = Arc::clone(&runs);
                    let outcome = guard
                        .two_phase(&event, b"{}", |_| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            Ok::<_, String>(())
                        })
                        .await
                        .unwrap();
                    if tally.count(&outcome) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                tally
            }));
        }
        let mut total = Tally::default();
        for task in tasks {
            total.add(task.await.unwrap());
        }
        assert_eq!(total.processed, 1, "{label} round {round}: {total:?}");
        assert_eq!(total.processed + total.already, TASKS as u64, "{label}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{label} round {round}: handler ran more than once");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_two_phase_many_tasks_same_event_every_store() {
    two_phase_same_event(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    two_phase_same_event(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    two_phase_same_event(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_sqlite_transactional_many_tasks_same_event() {
    let database = sqlite_db().await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock));
    for round in 0..5 {
        let event = key("acme", "stripe", &format!("evt_same_{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for task in 0..16 {
            let (guard, event, barrier) = (Arc::clone(&guard), event.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let mut tally = Tally::default();
                while !tally.count(&sqlite_deliver(&guard, &event, b"{}", &format!("t{task}")).await.unwrap())
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tally
            }));
        }
        let mut total = Tally::default();
        for task in tasks {
            total.add(task.await.unwrap());
        }
        assert_eq!(total.processed, 1, "round {round}: {total:?}");
        assert_eq!(total.processed + total.already, 16);
        assert_eq!(sqlite_effects(database.pool(), &event).await, 1, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// toctou-dedupe: OS processes
// ---------------------------------------------------------------------------------------------

const CHILD_ROLE: &str = "SOS_ADV_WEBHOOKS_ROLE";
const CHILD_TARGET: &str = "SOS_ADV_WEBHOOKS_TARGET";
const CHILD_EVENTS: &str = "SOS_ADV_WEBHOOKS_EVENTS";
const CHILD_RESULT: &str = "SOS_ADV_WEBHOOKS_RESULT";
const PROCESSES: usize = 4;
const CHILD_TASKS: usize = 6;

/// The child side of the multi-process attacks. Without the role variable this is the parent
/// test run and does nothing.
#[test]
fn toctou_dedupe_child_worker() {
    let Ok(role) = std::env::var(CHILD_ROLE) else { return };
    let target = std::env::var(CHILD_TARGET).unwrap();
    let events: usize = std::env::var(CHILD_EVENTS).unwrap().parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let tally = runtime.block_on(child_deliver_all(role, target, events));
    println!("{CHILD_RESULT} {} {} {}", tally.processed, tally.already, tally.retries);
}

async fn child_deliver_all(role: String, target: String, events: usize) -> Tally {
    enum Guard {
        Pg(WebhookGuard<PgStore>),
        Sqlite(WebhookGuard<SqliteStore>),
    }
    let (guard, two_phase) = match role.as_str() {
        "pg-tx" | "pg-2p" => {
            let pool =
                sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&target).await.unwrap();
            (Guard::Pg(WebhookGuard::new(PgStore::new(pool), SystemClock)), role == "pg-2p")
        }
        "sqlite-tx" | "sqlite-2p" => {
            let pool = sos_testkit::sqlite_pool(std::path::Path::new(&target), 4).await;
            (Guard::Sqlite(WebhookGuard::new(SqliteStore::new(pool), SystemClock)), role == "sqlite-2p")
        }
        other => panic!("unknown role {other}"),
    };
    let guard = Arc::new(guard);
    let worker = format!("pid-{}", std::process::id());
    let mut tasks = Vec::new();
    for task in 0..CHILD_TASKS {
        let (guard, worker) = (Arc::clone(&guard), format!("{worker}-{task}"));
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            for event in 0..events {
                let event_key = key("acme", "stripe", &format!("evt_{event}"));
                let body = format!("{{\"id\":{event}}}");
                loop {
                    let outcome = match &*guard {
                        Guard::Pg(guard) if two_phase => {
                            let pool = guard.store().pool().clone();
                            let (worker, id) = (worker.clone(), event_key.event_id().as_str().to_owned());
                            guard
                                .two_phase(&event_key, body.as_bytes(), |_| async move {
                                    sqlx::query(
                                        "INSERT INTO adv_effects VALUES ('acme', 'stripe', $1, $2, '')",
                                    )
                                    .bind(id)
                                    .bind(worker)
                                    .execute(&pool)
                                    .await
                                    .map(|_| ())
                                })
                                .await
                                .unwrap()
                        }
                        Guard::Pg(guard) => {
                            pg_deliver(guard, &event_key, body.as_bytes(), &worker).await.unwrap()
                        }
                        Guard::Sqlite(guard) if two_phase => {
                            let pool = guard.store().pool().clone();
                            let (worker, id) = (worker.clone(), event_key.event_id().as_str().to_owned());
                            guard
                                .two_phase(&event_key, body.as_bytes(), |_| async move {
                                    sqlx::query(
                                        "INSERT INTO adv_effects VALUES ('acme', 'stripe', ?1, ?2, '')",
                                    )
                                    .bind(id)
                                    .bind(worker)
                                    .execute(&pool)
                                    .await
                                    .map(|_| ())
                                })
                                .await
                                .unwrap()
                        }
                        Guard::Sqlite(guard) => {
                            sqlite_deliver(guard, &event_key, body.as_bytes(), &worker).await.unwrap()
                        }
                    };
                    if tally.count(&outcome) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            tally
        }));
    }
    let mut total = Tally::default();
    for task in tasks {
        total.add(task.await.unwrap());
    }
    total
}

async fn run_processes(role: &str, target: &str, events: usize) -> Tally {
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            Command::new(&exe)
                .args([
                    "--exact",
                    "adversarial_webhooks::toctou_dedupe_child_worker",
                    "--nocapture",
                    "--test-threads",
                    "1",
                ])
                .env(CHILD_ROLE, role)
                .env(CHILD_TARGET, target)
                .env(CHILD_EVENTS, events.to_string())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap()
        })
        .collect();
    let outputs = tokio::task::spawn_blocking(move || {
        children.into_iter().map(|child| child.wait_with_output().unwrap()).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let mut total = Tally::default();
    for output in outputs {
        assert!(output.status.success(), "a child failed: {output:?}");
        let line = BufReader::new(&output.stdout[..])
            .lines()
            .map_while(Result::ok)
            .find_map(|line| line.find(CHILD_RESULT).map(|at| line[at + CHILD_RESULT.len()..].to_owned()))
            .expect("a result line");
        let numbers: Vec<u64> = line.split_whitespace().map(|n| n.parse().unwrap()).collect();
        total.add(Tally { processed: numbers[0], already: numbers[1], retries: numbers[2] });
    }
    total
}

fn assert_processes_exactly_once(total: Tally, events: usize) {
    assert_eq!(total.processed, events as u64, "each event processed exactly once: {total:?}");
    assert_eq!(total.processed + total.already, (events * PROCESSES * CHILD_TASKS) as u64, "{total:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_pg_four_processes_transactional() {
    const EVENTS: usize = 60;
    let database = pg_db().await;
    let total = run_processes("pg-tx", database.url(), EVENTS).await;
    assert_processes_exactly_once(total, EVENTS);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM adv_effects")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_pg_four_processes_two_phase() {
    const EVENTS: usize = 60;
    let database = pg_db().await;
    let total = run_processes("pg-2p", database.url(), EVENTS).await;
    assert_processes_exactly_once(total, EVENTS);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM adv_effects")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_sqlite_four_processes_transactional() {
    const EVENTS: usize = 30;
    let database = sqlite_db().await;
    let total = run_processes("sqlite-tx", &database.path().to_string_lossy(), EVENTS).await;
    assert_processes_exactly_once(total, EVENTS);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM adv_effects")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_sqlite_four_processes_two_phase() {
    const EVENTS: usize = 30;
    let database = sqlite_db().await;
    let total = run_processes("sqlite-2p", &database.path().to_string_lossy(), EVENTS).await;
    assert_processes_exactly_once(total, EVENTS);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT event_id) FROM adv_effects")
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!((rows, distinct), (EVENTS as i64, EVENTS as i64));
}

/// The read-first duplicate path (`GuardConfig::with_read_first`) under the same attack: many
/// concurrent deliveries of one event, and a concurrent mix of two bodies for one event id.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_transactional_read_first_same_event_and_mixed_bodies() {
    let database = pg_db().await;
    let guard = Arc::new(
        WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock)
            .with_config(GuardConfig::default().with_read_first(true)),
    );
    for round in 0..5 {
        let event = key("acme", "stripe", &format!("evt_rf_{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(TASKS));
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let (guard, event, barrier) = (Arc::clone(&guard), event.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                // Odd tasks send a forged body under the same event id.
                let body: &[u8] = if task % 2 == 0 { b"A" } else { b"B" };
                loop {
                    match pg_deliver(&guard, &event, body, &format!("t{task}")).await.unwrap() {
                        Outcome::RetryInFlight => tokio::time::sleep(Duration::from_millis(1)).await,
                        other => return (body, other),
                    }
                }
            }));
        }
        let mut winner = None;
        let mut answers = Vec::new();
        for task in tasks {
            let (body, outcome) = task.await.unwrap();
            if outcome == Outcome::Processed(()) {
                assert!(winner.replace(body).is_none(), "round {round}: two deliveries processed");
            }
            answers.push((body, outcome));
        }
        let winner = winner.expect("one delivery processed");
        for (body, outcome) in answers {
            if body == winner {
                assert!(matches!(outcome, Outcome::Processed(()) | Outcome::AlreadyProcessed), "{outcome:?}");
            } else {
                assert_eq!(outcome, Outcome::BodyMismatch, "round {round}");
            }
        }
        assert_eq!(pg_effects(database.pool(), &event).await, 1, "round {round}");
    }
}

// ---------------------------------------------------------------------------------------------
// replay-same
// ---------------------------------------------------------------------------------------------

/// The same event id with a different body is flagged, never processed: after processing,
/// while in flight (concurrently), after a failure and on an expired lease.
async fn replay_same_two_phase<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    let clock = clock();
    let guard = Arc::new(
        WebhookGuard::new(store.clone(), clock.clone()).with_config(
            GuardConfig::default()
                .with_lease(Duration::from_secs(30))
                .unwrap()
                .with_failed_retry_after(Duration::from_secs(30)),
        ),
    );
    let ok = |_| async { Ok::<_, String>(()) };
    // A body-mismatched delivery must never run the handler: if it did, `unwrap` fails below.
    let never =
        |_| async move { Err::<(), String>(format!("{label}: a body-mismatched delivery ran the handler")) };
    // After processing.
    let event = key("acme", "stripe", "evt_r1");
    assert_eq!(guard.two_phase(&event, b"A", ok).await.unwrap(), Outcome::Processed(()));
    assert_eq!(guard.two_phase(&event, b"B", never).await.unwrap(), Outcome::BodyMismatch, "{label}");
    // While the first delivery is in flight and after its lease expired (crashed worker).
    let event = key("acme", "stripe", "evt_r2");
    let claim = store.claim(&request(&event, b"A", clock.now(), Duration::from_secs(30))).await.unwrap();
    assert!(matches!(claim, ClaimAnswer::Claimed(_)));
    assert_eq!(guard.two_phase(&event, b"B", never).await.unwrap(), Outcome::BodyMismatch, "{label}");
    clock.advance(chrono::Duration::seconds(31));
    assert_eq!(
        guard.two_phase(&event, b"B", never).await.unwrap(),
        Outcome::BodyMismatch,
        "{label}: an expired lease was taken over with another body"
    );
    assert_eq!(guard.two_phase(&event, b"A", ok).await.unwrap(), Outcome::Processed(()), "{label}");
    // After a failure, past the re-claim delay.
    let event = key("acme", "stripe", "evt_r3");
    let _ = guard.two_phase(&event, b"A", |_| async { Err::<(), _>("boom") }).await;
    clock.advance(chrono::Duration::seconds(31));
    assert_eq!(
        guard.two_phase(&event, b"B", never).await.unwrap(),
        Outcome::BodyMismatch,
        "{label}: a failed event was re-claimed with another body"
    );
    assert_eq!(guard.two_phase(&event, b"A", ok).await.unwrap(), Outcome::Processed(()), "{label}");
    // Concurrently: half the deliveries carry body A, half body B; exactly one runs.
    let event = key("acme", "stripe", "evt_r4");
    let runs = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (guard, event, runs) = (Arc::clone(&guard), event.clone(), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            let body: &[u8] = if task % 2 == 0 { b"A" } else { b"B" };
            guard
                .two_phase(&event, body, |_| async move {
                    runs.lock().unwrap().push(body.to_vec());
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    Ok::<_, String>(())
                })
                .await
                .unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    assert_eq!(runs.lock().unwrap().len(), 1, "{label}: {:?}", runs.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_same_different_body_flagged_two_phase_every_store() {
    replay_same_two_phase(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    replay_same_two_phase(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    replay_same_two_phase(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replay_same_different_body_flagged_transactional_pg_and_sqlite() {
    let pg = pg_db().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pg.pool().clone()), SystemClock));
    let event = key("acme", "stripe", "evt_tx_replay");
    assert_eq!(pg_deliver(&guard, &event, b"A", "w").await.unwrap(), Outcome::Processed(()));
    assert_eq!(pg_deliver(&guard, &event, b"B", "w").await.unwrap(), Outcome::BodyMismatch);
    // Concurrent mixed bodies: only one body ever gets an effect.
    let event = key("acme", "stripe", "evt_tx_mixed");
    let mut tasks = Vec::new();
    for task in 0..32 {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tasks.push(tokio::spawn(async move {
            let body: &[u8] = if task % 2 == 0 { b"A" } else { b"B" };
            loop {
                match pg_deliver(&guard, &event, body, "w").await.unwrap() {
                    Outcome::RetryInFlight => tokio::time::sleep(Duration::from_millis(1)).await,
                    other => return (body, other),
                }
            }
        }));
    }
    let mut processed_body = None;
    let mut answers = Vec::new();
    for task in tasks {
        let (body, outcome) = task.await.unwrap();
        if outcome == Outcome::Processed(()) {
            assert!(processed_body.replace(body).is_none(), "two deliveries processed");
        }
        answers.push((body, outcome));
    }
    let winner = processed_body.expect("one delivery processed");
    for (body, outcome) in answers {
        if body != winner {
            assert_eq!(outcome, Outcome::BodyMismatch);
        } else {
            assert!(matches!(outcome, Outcome::Processed(()) | Outcome::AlreadyProcessed));
        }
    }
    assert_eq!(pg_effects(pg.pool(), &event).await, 1);

    let sqlite = sqlite_db().await;
    let guard = WebhookGuard::new(SqliteStore::new(sqlite.pool().clone()), SystemClock);
    assert_eq!(sqlite_deliver(&guard, &event, b"A", "w").await.unwrap(), Outcome::Processed(()));
    assert_eq!(sqlite_deliver(&guard, &event, b"B", "w").await.unwrap(), Outcome::BodyMismatch);
    assert_eq!(sqlite_effects(sqlite.pool(), &event).await, 1);
}

// ---------------------------------------------------------------------------------------------
// unique-null
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_null_raw_sql_null_keys_refused_pg_and_sqlite() {
    let pg = pg_db().await;
    let sqlite = sqlite_db().await;
    let cases = [
        (None, Some("stripe"), Some("e")),
        (Some("acme"), None, Some("e")),
        (Some("acme"), Some("stripe"), None),
        (None, None, None),
    ];
    for (tenant, provider, event) in cases {
        for _ in 0..2 {
            let result = sqlx::query(
                "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
                 lease_until, first_seen_at, updated_at) VALUES ($1, $2, $3, $4, 'processed', 't', 1, now(), now(), now())",
            )
            .bind(tenant)
            .bind(provider)
            .bind(event)
            .bind(vec![0u8; 32])
            .execute(pg.pool())
            .await;
            assert!(result.is_err(), "PostgreSQL accepted a NULL key: {tenant:?} {provider:?} {event:?}");
            let result = sqlx::query(
                "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
                 lease_until, first_seen_at, updated_at) VALUES (?1, ?2, ?3, ?4, 'processed', 't', 1, 0, 0, 0)",
            )
            .bind(tenant)
            .bind(provider)
            .bind(event)
            .bind(vec![0u8; 32])
            .execute(sqlite.pool())
            .await;
            assert!(result.is_err(), "SQLite accepted a NULL key: {tenant:?} {provider:?} {event:?}");
        }
    }
    // A real record: its key columns cannot be set to NULL afterwards either, nor duplicated.
    let event = key("acme", "stripe", "evt_real");
    let pg_guard = WebhookGuard::new(PgStore::new(pg.pool().clone()), SystemClock);
    let sqlite_guard = WebhookGuard::new(SqliteStore::new(sqlite.pool().clone()), SystemClock);
    pg_deliver(&pg_guard, &event, b"{}", "w").await.unwrap();
    sqlite_deliver(&sqlite_guard, &event, b"{}", "w").await.unwrap();
    for column in ["tenant", "provider", "event_id", "body_hash", "state", "claim_token"] {
        let statement = format!("UPDATE sos_webhook_events SET {column} = NULL");
        assert!(sqlx::query(&statement).execute(pg.pool()).await.is_err(), "PostgreSQL: {column} = NULL");
        assert!(sqlx::query(&statement).execute(sqlite.pool()).await.is_err(), "SQLite: {column} = NULL");
    }
    let duplicate_pg = sqlx::query(
        "INSERT INTO sos_webhook_events SELECT tenant, provider, event_id, body_hash, state, 'other', attempts, \
         lease_until, last_error, first_seen_at, updated_at FROM sos_webhook_events",
    )
    .execute(pg.pool())
    .await;
    assert!(duplicate_pg.is_err());
    let duplicate_sqlite = sqlx::query(
        "INSERT INTO sos_webhook_events SELECT tenant, provider, event_id, body_hash, state, 'other', attempts, \
         lease_until, last_error, first_seen_at, updated_at FROM sos_webhook_events",
    )
    .execute(sqlite.pool())
    .await;
    assert!(duplicate_sqlite.is_err());
    // After all of that, the event is still answered "already processed".
    assert_eq!(pg_deliver(&pg_guard, &event, b"{}", "w").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(sqlite_deliver(&sqlite_guard, &event, b"{}", "w").await.unwrap(), Outcome::AlreadyProcessed);
}

// ---------------------------------------------------------------------------------------------
// Tenant boundaries
// ---------------------------------------------------------------------------------------------

fn boundary_keys() -> Vec<EventKey> {
    vec![
        key("acme", "stripe", "evt_shared"),
        key("globex", "stripe", "evt_shared"),
        key("acme", "github", "evt_shared"),
        key("acme-stripe", "x", "evt_shared"),
        key("acme", "stripe-x", "evt_shared"),
        key("acmes", "tripe", "evt_shared"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_boundary_same_event_id_processed_independently_pg_transactional() {
    let database = pg_db().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    let keys = boundary_keys();
    let mut tasks = Vec::new();
    for event in &keys {
        for task in 0..8 {
            let (guard, event) = (Arc::clone(&guard), event.clone());
            tasks.push(tokio::spawn(async move {
                let mut tally = Tally::default();
                while !tally.count(&pg_deliver(&guard, &event, b"{}", &format!("t{task}")).await.unwrap()) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                tally
            }));
        }
    }
    let mut total = Tally::default();
    for task in tasks {
        total.add(task.await.unwrap());
    }
    assert_eq!(total.processed, keys.len() as u64, "{total:?}");
    for event in &keys {
        assert_eq!(pg_effects(database.pool(), event).await, 1, "{event:?}");
    }
    // One tenant's in-flight handler never makes another tenant's same event id wait.
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            guard
                .transactional(&key("acme", "stripe", "evt_slow"), b"{}", |_tx| {
                    Box::pin(async move {
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    for other in [key("globex", "stripe", "evt_slow"), key("acme", "github", "evt_slow")] {
        assert_eq!(
            pg_deliver(&guard, &other, b"{}", "w").await.unwrap(),
            Outcome::Processed(()),
            "{other:?}"
        );
    }
    assert_eq!(
        pg_deliver(&guard, &key("acme", "stripe", "evt_slow"), b"{}", "w").await.unwrap(),
        Outcome::RetryInFlight
    );
    release_sender.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
}

async fn tenant_boundary_two_phase<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    let clock = clock();
    let guard = WebhookGuard::new(store, clock.clone());
    // Tenant acme's event fails; globex's event with the same id and another body is
    // processed, and neither answer leaks into the other.
    let acme = key("acme", "stripe", "evt_shared");
    let globex = key("globex", "stripe", "evt_shared");
    let github = key("acme", "github", "evt_shared");
    let failed = guard.two_phase(&acme, b"acme body", |_| async { Err::<(), _>("acme's API is down") }).await;
    assert!(matches!(failed, Err(RunError::Handler(_))), "{label}");
    for other in [&globex, &github] {
        assert_eq!(
            guard.two_phase(other, b"other body", |_| async { Ok::<_, String>(()) }).await.unwrap(),
            Outcome::Processed(()),
            "{label}: {other:?}"
        );
    }
    assert_eq!(
        guard.two_phase(&acme, b"acme body", |_| async { Ok::<_, String>(()) }).await.unwrap(),
        Outcome::PriorAttemptFailed,
        "{label}"
    );
    // Retention purge only removes what is past the horizon, of any tenant; never a failed
    // or fresh record.
    clock.advance(chrono::Duration::days(8));
    let fresh = key("initech", "stripe", "evt_shared");
    guard.two_phase(&fresh, b"x", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(guard.purge().await.unwrap(), 2, "{label}");
    assert_eq!(
        guard.two_phase(&fresh, b"x", |_| async { Ok::<_, String>(()) }).await.unwrap(),
        Outcome::AlreadyProcessed,
        "{label}"
    );
    assert_eq!(
        guard
            .two_phase(&acme, b"acme body", |claim| async move { Ok::<_, String>(claim.attempt()) })
            .await
            .unwrap(),
        Outcome::Processed(2),
        "{label}: the failed record was kept and re-claimed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_boundary_same_event_id_two_phase_every_store() {
    tenant_boundary_two_phase(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    tenant_boundary_two_phase(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    tenant_boundary_two_phase(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_boundary_same_event_id_sqlite_transactional() {
    let database = sqlite_db().await;
    let guard = WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock);
    for event in boundary_keys() {
        assert_eq!(
            sqlite_deliver(&guard, &event, b"{}", "w").await.unwrap(),
            Outcome::Processed(()),
            "{event:?}"
        );
    }
    for event in boundary_keys() {
        assert_eq!(sqlite_deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::AlreadyProcessed);
        assert_eq!(sqlite_effects(database.pool(), &event).await, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Handler failure
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_failure_pg_panic_and_dropped_future_leave_nothing() {
    let database = pg_db().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    // A handler that panics after writing.
    let event = key("acme", "stripe", "evt_panic");
    let panicked = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move {
            guard
                .transactional(&event, b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_panic', 'p', '')",
                        )
                        .execute(&mut **tx)
                        .await?;
                        boom()
                    })
                })
                .await
        })
        .await
    };
    assert!(panicked.is_err());
    // A handler whose future is dropped mid-way (the request was cancelled).
    let dropped = key("acme", "stripe", "evt_dropped");
    let timed_out = tokio::time::timeout(
        Duration::from_millis(200),
        guard.transactional(&dropped, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_dropped', 'd', '')")
                    .execute(&mut **tx)
                    .await?;
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok::<_, sqlx::Error>(())
            })
        }),
    )
    .await;
    assert!(timed_out.is_err());
    for event in [event, dropped] {
        // The next delivery processes it, within a short time (the rollback must not leave the
        // advisory lock or the uncommitted row around).
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match pg_deliver(&guard, &event, b"{}", "next").await.unwrap() {
                Outcome::Processed(()) => break,
                Outcome::RetryInFlight if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => panic!("{event:?}: {other:?}"),
            }
        }
        assert_eq!(pg_effects(database.pool(), &event).await, 1, "{event:?}");
        assert_eq!(pg_deliver(&guard, &event, b"{}", "late").await.unwrap(), Outcome::AlreadyProcessed);
    }
}

/// A handler that hits an SQL error, ignores it and returns `Ok`: PostgreSQL has aborted the
/// transaction, and its `COMMIT` silently rolls back. The guard must not answer `Processed` (a
/// 200 that makes the provider stop retrying) when neither the effects nor the mark committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_pg_swallowed_sql_error_never_answered_processed() {
    let database = pg_db().await;
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock);
    let event = key("acme", "stripe", "evt_swallowed");
    let result = guard
        .transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_swallowed', 'w', '')")
                    .execute(&mut **tx)
                    .await?;
                // "Insert if missing", done wrong: the unique violation is ignored.
                let _ = sqlx::query("SELECT 1 / 0").execute(&mut **tx).await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await;
    let records = pg_records(database.pool()).await;
    let effects = pg_effects(database.pool(), &event).await;
    match result {
        Ok(Outcome::Processed(())) => {
            assert_eq!((records, effects), (1, 1), "answered Processed, but nothing committed");
        }
        Ok(other) => panic!("unexpected answer {other:?}"),
        Err(_) => {
            assert_eq!((records, effects), (0, 0), "an error left something behind");
            assert_eq!(pg_deliver(&guard, &event, b"{}", "retry").await.unwrap(), Outcome::Processed(()));
            assert_eq!(pg_effects(database.pool(), &event).await, 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_sqlite_error_and_panic_leave_nothing() {
    let database = sqlite_db().await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock));
    let event = key("acme", "stripe", "evt_sqlite_fail");
    let result = guard
        .transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_sqlite_fail', 'w', '')")
                    .execute(&mut **tx)
                    .await
                    .map_err(|error| error.to_string())?;
                Err::<(), _>("failed after writing".to_owned())
            })
        })
        .await;
    assert!(matches!(result, Err(RunError::Handler(_))));
    let panicked = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move {
            guard
                .transactional(&event, b"{}", |tx| {
                    Box::pin(async move {
                        sqlx::query(
                            "INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_sqlite_fail', 'p', '')",
                        )
                        .execute(&mut **tx)
                        .await?;
                        boom()
                    })
                })
                .await
        })
        .await
    };
    assert!(panicked.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sqlite_deliver(&guard, &event, b"{}", "next").await.unwrap() {
            Outcome::Processed(()) => break,
            Outcome::RetryInFlight if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sqlite_effects(database.pool(), &event).await, 1);
}

/// A two-phase handler's failure is recorded whatever its message holds. An error message
/// carrying a NUL (an echoed body field, say) cannot be stored in PostgreSQL text; the failure
/// must still be recorded and answered as a handler failure, not leave a `processing` claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_two_phase_error_message_with_nul_is_recorded() {
    let pg = pg_db().await;
    let sqlite = sqlite_db().await;
    async fn check<S: ClaimStore>(store: S, label: &str) {
        let guard = WebhookGuard::new(store, clock());
        let event = key("acme", "stripe", "evt_nul");
        let message = format!("upstream said: \u{0}{}\u{7}{}", "x".repeat(400), "é".repeat(300));
        let result = guard.two_phase(&event, b"{}", |_| async { Err::<(), _>(message.clone()) }).await;
        assert!(matches!(result, Err(RunError::Handler(_))), "{label}: {result:?}");
        assert_eq!(
            guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap(),
            Outcome::PriorAttemptFailed,
            "{label}"
        );
    }
    check(MemoryStore::new(), "memory").await;
    check(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
    check(PgStore::new(pg.pool().clone()), "postgres").await;
}

// ---------------------------------------------------------------------------------------------
// Two-phase lease takeover
// ---------------------------------------------------------------------------------------------

async fn takeover_race<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    for round in 0..8 {
        let clock = clock();
        let guard = Arc::new(
            WebhookGuard::new(store.clone(), clock.clone())
                .with_config(GuardConfig::default().with_lease(Duration::from_secs(30)).unwrap()),
        );
        let event = key("race", "stripe", &format!("evt_takeover_{round}"));
        let ClaimAnswer::Claimed(crashed) =
            store.claim(&request(&event, b"{}", clock.now(), Duration::from_secs(30))).await.unwrap()
        else {
            panic!("{label}: the first claim failed")
        };
        clock.advance(chrono::Duration::seconds(31));
        let runs = Arc::new(AtomicU32::new(0));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for _ in 0..16 {
            let (guard, event, runs, barrier) =
                (Arc::clone(&guard), event.clone(), Arc::clone(&runs), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                guard
                    .two_phase(&event, b"{}", |claim| async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        Ok::<_, String>(claim.attempt())
                    })
                    .await
                    .unwrap()
            }));
        }
        let mut processed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Outcome::Processed(attempt) => {
                    processed += 1;
                    assert_eq!(attempt, 2, "{label}");
                }
                Outcome::RetryInFlight | Outcome::AlreadyProcessed => {}
                other => panic!("{label}: {other:?}"),
            }
        }
        assert_eq!(processed, 1, "{label} round {round}");
        assert_eq!(runs.load(Ordering::SeqCst), 1, "{label} round {round}");
        // The crashed worker comes back: its completion must not count.
        assert!(matches!(store.complete(&crashed, clock.now()).await, Err(Error::LeaseLost)), "{label}");
        assert!(matches!(store.fail(&crashed, clock.now(), "late").await, Err(Error::LeaseLost)), "{label}");
        assert_eq!(
            guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(0) }).await.unwrap(),
            Outcome::AlreadyProcessed,
            "{label}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_phase_lease_takeover_race_exactly_one_every_store() {
    takeover_race(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    takeover_race(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    takeover_race(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

/// Durations too large for the clock arithmetic ("never take the claim over", "keep forever")
/// must saturate towards the safe side, not collapse to "now": a lease that ends at once lets
/// a second worker take over a claim whose handler is still running.
async fn huge_durations<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    let clock = clock();
    let config = GuardConfig::default()
        .with_lease(Duration::MAX)
        .unwrap()
        .with_failed_retry_after(Duration::MAX)
        .with_retention(Duration::MAX);
    let guard = Arc::new(WebhookGuard::new(store, clock.clone()).with_config(config));
    let event = key("acme", "stripe", "evt_huge_lease");
    let (claimed_sender, claimed_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let first = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move {
            guard
                .two_phase(&event, b"{}", |_| async move {
                    let _ = claimed_sender.send(());
                    let _ = release_receiver.await;
                    Ok::<_, String>("first")
                })
                .await
        })
    };
    claimed_receiver.await.unwrap();
    clock.advance(chrono::Duration::seconds(1));
    let second = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>("second") }).await;
    assert!(
        matches!(second, Ok(Outcome::RetryInFlight)),
        "{label}: a claim under a 'never expires' lease was taken over at once: {second:?}"
    );
    release_sender.send(()).unwrap();
    let _ = first.await.unwrap();
    // Retention "forever": a purge right after processing removes nothing.
    clock.advance(chrono::Duration::seconds(1));
    assert_eq!(guard.purge().await.unwrap(), 0, "{label}: an unbounded retention purged records");
    // failed_retry_after "forever": the failure is not re-claimed at once.
    let failing = key("acme", "stripe", "evt_huge_failed");
    let _ = guard.two_phase(&failing, b"{}", |_| async { Err::<(), _>("down") }).await;
    clock.advance(chrono::Duration::seconds(1));
    let again = guard.two_phase(&failing, b"{}", |_| async { Ok::<_, String>("again") }).await;
    assert!(matches!(again, Ok(Outcome::PriorAttemptFailed)), "{label}: {again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_huge_lease_and_retention_saturate_safely_every_store() {
    huge_durations(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    huge_durations(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    huge_durations(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

// ---------------------------------------------------------------------------------------------
// Retention purge racing in-flight claims
// ---------------------------------------------------------------------------------------------

/// Writes a processed record last touched at `at`, through the store's own two-phase API.
async fn old_processed<S: ClaimStore>(store: &S, event: &EventKey, at: DateTime<Utc>) {
    let ClaimAnswer::Claimed(claim) =
        store.claim(&request(event, b"{}", at, Duration::from_secs(60))).await.unwrap()
    else {
        panic!("{event:?} was not claimable")
    };
    store.complete(&claim, at).await.unwrap();
}

/// A claim older than the retention horizon (its lease long expired: the worker is slow or
/// dead) is never purged and its holder can still complete; a purge loop running alongside
/// fresh deliveries (while old records keep appearing for it to delete) removes exactly the old
/// records and never makes a fresh event run twice.
async fn purge_race<S: ClaimStore + Clone + 'static>(store: S, label: &str) {
    let clock = clock();
    let t0 = clock.now();
    let config = GuardConfig::default().with_retention(Duration::from_secs(3600));
    let guard = Arc::new(WebhookGuard::new(store.clone(), clock.clone()).with_config(config));
    for old in 0..20 {
        old_processed(&store, &key("acme", "stripe", &format!("evt_old_{old}")), t0).await;
    }
    let event = key("acme", "stripe", "evt_slow_claim");
    let ClaimAnswer::Claimed(claim) =
        store.claim(&request(&event, b"{}", t0, Duration::from_secs(60))).await.unwrap()
    else {
        panic!("{label}")
    };
    clock.advance(chrono::Duration::hours(2));
    assert_eq!(guard.purge().await.unwrap(), 20, "{label}: the old processed records, and only them");
    store.complete(&claim, clock.now()).await.expect("the in-flight claim survived the purge");
    assert_eq!(guard.purge().await.unwrap(), 0, "{label}: a just-completed record was purged");
    assert_eq!(
        guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap(),
        Outcome::AlreadyProcessed,
        "{label}"
    );
    // Purges in a loop while 50 fresh events are delivered by 4 workers each, and 100 old
    // records appear for the purge to delete.
    let stop = Arc::new(AtomicBool::new(false));
    let purger = {
        let (guard, stop) = (Arc::clone(&guard), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut purged = 0;
            while !stop.load(Ordering::SeqCst) {
                purged += guard.purge().await.unwrap();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            purged + guard.purge().await.unwrap()
        })
    };
    let old_writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for old in 0..100 {
                old_processed(&store, &key("acme", "stripe", &format!("evt_older_{old}")), t0).await;
            }
        })
    };
    let runs = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let (guard, runs) = (Arc::clone(&guard), Arc::clone(&runs));
        tasks.push(tokio::spawn(async move {
            for event in 0..50 {
                let event = key("acme", "stripe", &format!("evt_fresh_{}", (event * 7 + worker) % 50));
                loop {
                    let runs = Arc::clone(&runs);
                    let outcome = guard
                        .two_phase(&event, b"{}", |_| async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            Ok::<_, String>(())
                        })
                        .await
                        .unwrap();
                    if outcome != Outcome::RetryInFlight {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    old_writer.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    assert_eq!(purger.await.unwrap(), 100, "{label}: the purge removed something other than the old records");
    assert_eq!(runs.load(Ordering::SeqCst), 50, "{label}: an event ran twice alongside the purge");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_purge_racing_in_flight_claims_every_store() {
    purge_race(MemoryStore::new(), "memory").await;
    let pg = pg_db().await;
    purge_race(PgStore::new(pg.pool().clone()), "postgres").await;
    let sqlite = sqlite_db().await;
    purge_race(SqliteStore::new(sqlite.pool().clone()), "sqlite").await;
}

// ---------------------------------------------------------------------------------------------
// RetryInFlight latency
// ---------------------------------------------------------------------------------------------

/// The 90th percentile of `samples`, and a summary (min, median, p99, max) for the message.
///
/// The promise is 50 ms at p99 (measured without other load in the benchmark). These tests
/// share two cores with the rest of the suite, where a scheduler stall can hit any one sample,
/// so they assert the 90th percentile: a design whose every answer waits out a 50 ms busy
/// timeout still fails it on every run.
fn p90(mut samples: Vec<Duration>) -> (Duration, String) {
    samples.sort();
    let at = |percent: usize| samples[(samples.len() * percent).div_ceil(100) - 1];
    let summary = format!(
        "min {:?}, median {:?}, p99 {:?}, max {:?}",
        samples[0],
        samples[samples.len() / 2],
        at(99),
        samples[samples.len() - 1]
    );
    (at(90), summary)
}

/// The bound for these tests: the handler never finishes while they measure, so any answer at all
/// proves a duplicate is not queued behind it; the bound only catches a duplicate that waits out
/// a long lock timeout. The issue's 50 ms p99 goal is a figure of the benchmark
/// (`SOS_BENCH_ONLY=db cargo bench -p sos-webhooks --all-features --bench webhooks`, BENCHMARKS.md):
/// a timed assertion that tight fails on a loaded CI machine without anything being wrong.
const PROMPT_ANSWER: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_in_flight_answered_promptly_pg_while_handler_holds_claim() {
    let database = pg_db().await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock));
    let event = key("acme", "stripe", "evt_latency");
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move {
            guard
                .transactional(&event, b"{}", |_tx| {
                    Box::pin(async move {
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    // Warm the pool, then measure.
    for _ in 0..5 {
        pg_deliver(&guard, &event, b"{}", "warm").await.unwrap();
    }
    let mut samples = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        assert_eq!(pg_deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
        samples.push(started.elapsed());
    }
    let (p90, summary) = p90(samples);
    release_sender.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
    assert!(p90 <= PROMPT_ANSWER, "RetryInFlight p90 {p90:?} ({summary})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_in_flight_answered_promptly_sqlite_while_handler_holds_claim() {
    let database = sqlite_db().await;
    let guard = Arc::new(WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock));
    let event = key("acme", "stripe", "evt_latency");
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let slow = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move {
            guard
                .transactional(&event, b"{}", |_tx| {
                    Box::pin(async move {
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    for _ in 0..3 {
        sqlite_deliver(&guard, &event, b"{}", "warm").await.unwrap();
    }
    let mut samples = Vec::new();
    for _ in 0..100 {
        let started = Instant::now();
        assert_eq!(sqlite_deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::RetryInFlight);
        samples.push(started.elapsed());
    }
    let (p90, summary) = p90(samples);
    release_sender.send(()).unwrap();
    assert_eq!(slow.await.unwrap().unwrap(), Outcome::Processed(()));
    assert!(p90 <= PROMPT_ANSWER, "RetryInFlight p90 {p90:?} ({summary})");
}

/// A SQLite transactional delivery cancelled while it waits for the write lock (the client went
/// away and the framework dropped the request's future) must not hand its connection back to
/// the pool with the guard's short `busy_timeout`: every later user of that pooled connection
/// would then fail with "database is locked" after 50 ms instead of the pool's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn handler_failure_sqlite_cancelled_claim_leaves_no_connection_state_behind() {
    let database = sqlite_db().await;
    // The guard's busy timeout (1 s) is far above the 15 ms after which each delivery is cut,
    // so the cut always lands while the delivery waits for the write lock, however loaded the
    // machine (with the default 20 ms a descheduled runtime could see the delivery finish
    // first), and it still differs from the pool's own 5 s.
    let guard = Arc::new(
        WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock)
            .with_config(GuardConfig::default().with_busy_timeout(Duration::from_secs(1))),
    );
    let original: i64 = sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(database.pool()).await.unwrap();
    let (started_sender, started_receiver) = tokio::sync::oneshot::channel();
    let (release_sender, release_receiver) = tokio::sync::oneshot::channel::<()>();
    let holder = {
        let guard = Arc::clone(&guard);
        tokio::spawn(async move {
            guard
                .transactional(&key("acme", "stripe", "evt_holder"), b"{}", |_tx| {
                    Box::pin(async move {
                        let _ = started_sender.send(());
                        let _ = release_receiver.await;
                        Ok::<_, sqlx::Error>(())
                    })
                })
                .await
        })
    };
    started_receiver.await.unwrap();
    for attempt in 0..6 {
        let cancelled = tokio::time::timeout(
            Duration::from_millis(15),
            sqlite_deliver(&guard, &key("acme", "stripe", &format!("evt_cancelled_{attempt}")), b"{}", "c"),
        )
        .await;
        assert!(cancelled.is_err(), "the delivery was expected to wait for the write lock");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    release_sender.send(()).unwrap();
    assert_eq!(holder.await.unwrap().unwrap(), Outcome::Processed(()));
    // Check every pooled connection's busy timeout.
    let mut connections = Vec::new();
    for _ in 0..8 {
        connections.push(database.pool().acquire().await.unwrap());
    }
    for connection in &mut connections {
        let timeout: i64 =
            sqlx::query_scalar("PRAGMA busy_timeout").fetch_one(&mut **connection).await.unwrap();
        assert_eq!(timeout, original, "a pooled connection kept the guard's short busy timeout");
    }
}

/// GitHub and Shopify sign only the body: their delivery-id headers (`X-GitHub-Delivery`,
/// `X-Shopify-Webhook-Id`) are outside the signature, and nothing timestamped is signed. A
/// captured delivery replayed under a fresh delivery id verifies, so a dedupe key taken from
/// that header (what the docs said) lets the replay run the handler again, forever. Keyed by
/// `EventId::of_body` (the signed body's hash), the replay is answered `AlreadyProcessed`.
#[tokio::test]
async fn replay_same_github_and_shopify_replayed_under_fresh_delivery_id() {
    let guard = WebhookGuard::new(MemoryStore::new(), clock());
    let runs = AtomicU32::new(0);
    let handler = |_| async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, String>(())
    };
    let body = br#"{"action":"completed","check_run":{"id":4250001}}"#;
    let github = GithubVerifier::new(["gh-secret"]).unwrap();
    let shopify = ShopifyVerifier::new(["shpss_secret"]).unwrap();
    let github_signature = sign_github("gh-secret", body);
    let shopify_signature = sign_shopify("shpss_secret", body);
    let mut answers = Vec::new();
    for delivery in ["72d3162e-cc78-11e3-81ab-4c9367dc0958", "00000000-0000-4000-8000-000000000001"] {
        // The attacker's copy differs only in the unsigned delivery-id header.
        let request =
            headers(&[("x-hub-signature-256", github_signature.as_str()), ("x-github-delivery", delivery)]);
        github.verify(&request, body).expect("a replay verifies: nothing timestamped is signed");
        let event =
            EventKey::new("acme".parse().unwrap(), "github", EventId::of_body(body).as_str()).unwrap();
        answers.push(guard.two_phase(&event, body, handler).await.unwrap());

        let request = headers(&[
            ("x-shopify-hmac-sha256", shopify_signature.as_str()),
            ("x-shopify-webhook-id", delivery),
        ]);
        shopify.verify(&request, body).expect("a replay verifies: nothing timestamped is signed");
        let event =
            EventKey::new("acme".parse().unwrap(), "shopify", EventId::of_body(body).as_str()).unwrap();
        answers.push(guard.two_phase(&event, body, handler).await.unwrap());
    }
    assert_eq!(
        answers,
        [
            Outcome::Processed(()),
            Outcome::Processed(()),
            Outcome::AlreadyProcessed,
            Outcome::AlreadyProcessed
        ]
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "a replayed delivery ran the handler again");
    // The body key depends on every byte of the signed body, and is a valid event id.
    assert_ne!(EventId::of_body(body), EventId::of_body(&body[1..]));
    assert_eq!(EventId::of_body(b"").as_str().len(), "sha256:".len() + 64);
    assert_eq!(EventId::new(EventId::of_body(b"\xff\x00").as_str()).unwrap(), EventId::of_body(b"\xff\x00"));
}

// ---------------------------------------------------------------------------------------------
// The fast paths added for speed: the one-statement claim, read-first and the processed-event
// memory, the one-round-trip commit, the per-tenant purge, database-clock leases, the extractor
// ---------------------------------------------------------------------------------------------

/// A transactional delivery whose handler writes its effect, says it started, waits to be
/// released, then succeeds or fails as told.
async fn pg_held_delivery(
    guard: WebhookGuard<PgStore>,
    event: EventKey,
    body: &'static [u8],
    started: tokio::sync::oneshot::Sender<()>,
    release: tokio::sync::oneshot::Receiver<bool>,
) -> Result<Outcome<()>, RunError<sqlx::Error>> {
    let parts = (
        event.tenant().as_str().to_owned(),
        event.provider().as_str().to_owned(),
        event.event_id().as_str().to_owned(),
    );
    guard
        .transactional(&event, body, |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO adv_effects (tenant, provider, event_id, worker, body) VALUES ($1, $2, $3, 'held', '')")
                    .bind(parts.0)
                    .bind(parts.1)
                    .bind(parts.2)
                    .execute(&mut **tx)
                    .await?;
                let _ = started.send(());
                if release.await.unwrap_or(false) { Ok(()) } else { Err(sqlx::Error::RowNotFound) }
            })
        })
        .await
}

/// toctou-dedupe against every duplicate fast path at once (the one-statement claim's
/// committed-record branch, read-first, and the processed-event memory of two replicas): while
/// the first delivery's handler runs, and after it rolls back, no delivery is ever answered
/// `AlreadyProcessed` or `BodyMismatch`; only a commit makes the event processed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_fast_paths_never_answer_processed_for_in_flight_or_rolled_back_claim() {
    let database = pg_db().await;
    let store = PgStore::new(database.pool().clone());
    let replica_a = WebhookGuard::new(store.clone(), SystemClock)
        .with_config(GuardConfig::default().with_read_first(true).with_processed_cache(64));
    let replica_b = WebhookGuard::new(store.clone(), SystemClock)
        .with_config(GuardConfig::default().with_processed_cache(64));
    for succeed in [false, true] {
        let event = key("acme", "stripe", &format!("evt_fast_path_{succeed}"));
        let (started_sender, started) = tokio::sync::oneshot::channel();
        let (release, release_receiver) = tokio::sync::oneshot::channel();
        let first = tokio::spawn(pg_held_delivery(
            replica_a.clone(),
            event.clone(),
            b"{}",
            started_sender,
            release_receiver,
        ));
        started.await.unwrap();
        for round in 0..20 {
            for guard in [&replica_a, &replica_b] {
                for body in [&b"{}"[..], b"{\"forged\":1}"] {
                    let answer = pg_deliver(guard, &event, body, &format!("dup{round}")).await.unwrap();
                    assert_eq!(
                        answer,
                        Outcome::RetryInFlight,
                        "mid-handler (succeed={succeed}, round {round})"
                    );
                }
            }
        }
        release.send(succeed).unwrap();
        let first = first.await.unwrap();
        if succeed {
            assert_eq!(first.unwrap(), Outcome::Processed(()));
        } else {
            assert!(matches!(first, Err(RunError::Handler(_))), "{first:?}");
            assert_eq!(pg_records(database.pool()).await, 0, "a rolled-back claim leaves no mark");
            assert_eq!(pg_effects(database.pool(), &event).await, 0);
            // The rolled-back event is new again for both replicas (no memory kept it).
            assert_eq!(
                pg_deliver(&replica_b, &event, b"{}", "after-rollback").await.unwrap(),
                Outcome::Processed(())
            );
        }
        assert_eq!(pg_effects(database.pool(), &event).await, 1);
        for guard in [&replica_a, &replica_b] {
            for _ in 0..2 {
                // Twice: once from the store (or the committing replica's memory), then from memory.
                assert_eq!(
                    pg_deliver(guard, &event, b"{}", "late").await.unwrap(),
                    Outcome::AlreadyProcessed
                );
                assert_eq!(
                    pg_deliver(guard, &event, b"{\"forged\":1}", "late").await.unwrap(),
                    Outcome::BodyMismatch
                );
            }
        }
        assert_eq!(pg_effects(database.pool(), &event).await, 1);
    }
}

/// A handler that returns `Ok` but whose writes fail at `COMMIT` (a deferred constraint): the
/// one-round-trip check-and-commit reports a guard error, leaves no processed mark, and the
/// processed-event memory does not remember it, so the next delivery processes the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_failure_pg_deferred_constraint_failing_at_commit_leaves_no_mark() {
    let database = pg_db().await;
    sqlx::raw_sql(
        "CREATE TABLE adv_parent (id INT PRIMARY KEY); \
         CREATE TABLE adv_child (id INT PRIMARY KEY, parent INT NOT NULL REFERENCES adv_parent (id) DEFERRABLE INITIALLY DEFERRED)",
    )
    .execute(database.pool())
    .await
    .unwrap();
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock)
        .with_config(GuardConfig::default().with_processed_cache(16).with_read_first(true));
    let event = key("acme", "stripe", "evt_deferred");
    for attempt in 0..3 {
        let answer = guard
            .transactional(&event, b"{}", |tx| {
                Box::pin(async move {
                    sqlx::query("INSERT INTO adv_child (id, parent) VALUES ($1, 404)")
                        .bind(attempt)
                        .execute(&mut **tx)
                        .await?;
                    Ok::<_, sqlx::Error>(())
                })
            })
            .await;
        assert!(matches!(answer, Err(RunError::Guard(_))), "attempt {attempt}: {answer:?}");
        assert_eq!(pg_records(database.pool()).await, 0, "no processed mark survives a failed COMMIT");
    }
    let children: i64 =
        sqlx::query_scalar("SELECT count(*) FROM adv_child").fetch_one(database.pool()).await.unwrap();
    assert_eq!(children, 0);
    // The connection that failed its COMMIT is usable, and the event is still new.
    assert_eq!(pg_deliver(&guard, &event, b"{}", "fixed").await.unwrap(), Outcome::Processed(()));
    assert_eq!(pg_deliver(&guard, &event, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(pg_effects(database.pool(), &event).await, 1);
}

/// Tenant boundaries of the new parts: the processed-event memory is keyed by the whole
/// (tenant, provider, event id), and `purge_tenant` deletes only that tenant's old processed
/// records: never another tenant's (not even one whose name starts with it), never an
/// in-flight transactional claim (committed later with an old timestamp) or two-phase claim.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tenant_boundary_pg_processed_memory_and_purge_tenant_spare_other_tenants_and_in_flight() {
    let database = pg_db().await;
    let store = PgStore::new(database.pool().clone());
    let cached = WebhookGuard::new(store.clone(), SystemClock)
        .with_config(GuardConfig::default().with_processed_cache(64));
    let keys = boundary_keys();
    assert_eq!(pg_deliver(&cached, &keys[0], b"{}", "first").await.unwrap(), Outcome::Processed(()));
    for other in &keys[1..] {
        assert_eq!(
            pg_deliver(&cached, other, b"{\"other\":1}", "w").await.unwrap(),
            Outcome::Processed(()),
            "{other:?}"
        );
    }
    for event in &keys {
        assert_eq!(pg_effects(database.pool(), event).await, 1, "{event:?}");
    }
    sqlx::query("DELETE FROM sos_webhook_events").execute(database.pool()).await.unwrap();

    let clock = clock();
    let guard = WebhookGuard::new(store.clone(), clock.clone());
    let old = |tenant: &str| key(tenant, "stripe", "evt_old");
    for tenant in ["acme", "globex", "acme-stripe", "acmes"] {
        assert_eq!(pg_deliver(&guard, &old(tenant), b"{}", "old").await.unwrap(), Outcome::Processed(()));
    }
    // In flight for tenant acme: a transactional claim stamped now (it will be old at purge
    // time), and a two-phase claim.
    let in_flight = key("acme", "stripe", "evt_in_flight");
    let (started_sender, started) = tokio::sync::oneshot::channel();
    let (release, release_receiver) = tokio::sync::oneshot::channel();
    let held = tokio::spawn(pg_held_delivery(
        guard.clone(),
        in_flight.clone(),
        b"{}",
        started_sender,
        release_receiver,
    ));
    started.await.unwrap();
    let two_phase_key = key("acme", "stripe", "evt_two_phase");
    let ClaimAnswer::Claimed(claim) = store
        .claim(&request(&two_phase_key, b"{}", start(), Duration::from_secs(30 * 24 * 3600)))
        .await
        .unwrap()
    else {
        panic!("the two-phase claim was refused");
    };
    clock.advance(chrono::Duration::days(8));
    assert_eq!(
        guard.purge_tenant(&"acme".parse().unwrap()).await.unwrap(),
        1,
        "only acme's old processed record"
    );
    release.send(true).unwrap();
    assert_eq!(
        held.await.unwrap().unwrap(),
        Outcome::Processed(()),
        "the in-flight claim commits after the purge"
    );
    store.complete(&claim, start()).await.unwrap();
    for tenant in ["globex", "acme-stripe", "acmes"] {
        assert_eq!(
            pg_deliver(&guard, &old(tenant), b"{}", "dup").await.unwrap(),
            Outcome::AlreadyProcessed,
            "{tenant}"
        );
    }
    assert_eq!(pg_deliver(&guard, &in_flight, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(pg_effects(database.pool(), &in_flight).await, 1);
    // Purging a tenant with no records, or a name that only prefixes others, deletes nothing.
    assert_eq!(guard.purge_tenant(&"acm".parse().unwrap()).await.unwrap(), 0);
    assert_eq!(pg_records(database.pool()).await, 5);
}

/// lease-clock-skew on PostgreSQL with the database clock, raced: workers whose clocks run days
/// ahead cannot take over a live lease; after it expires by the database's clock, workers whose
/// clocks run days behind still take it over, exactly one of them; the first worker's late
/// completion is refused (`LeaseLost`) and the record is processed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lease_clock_skew_pg_database_clock_takeover_race_exactly_one() {
    let database = pg_db().await;
    let store = PgStore::new(database.pool().clone()).with_database_clock(true);
    let event = key("acme", "stripe", "evt_lease");
    let lease = Duration::from_millis(600);
    let ClaimAnswer::Claimed(first) = store.claim(&request(&event, b"{}", start(), lease)).await.unwrap()
    else {
        panic!("the first claim was refused");
    };
    let race = |skew: chrono::Duration| {
        let mut tasks = Vec::new();
        for _ in 0..12 {
            let (store, event) = (store.clone(), event.clone());
            tasks.push(tokio::spawn(async move {
                store.claim(&request(&event, b"{}", start() + skew, lease)).await.unwrap()
            }));
        }
        tasks
    };
    for task in race(chrono::Duration::days(3)) {
        assert_eq!(
            task.await.unwrap(),
            ClaimAnswer::Duplicate(sos_webhooks::Duplicate::RetryInFlight),
            "ahead, live lease"
        );
    }
    tokio::time::sleep(lease + Duration::from_millis(300)).await;
    let mut takeovers = Vec::new();
    for task in race(-chrono::Duration::days(3)) {
        match task.await.unwrap() {
            ClaimAnswer::Claimed(claim) => takeovers.push(claim),
            ClaimAnswer::Duplicate(duplicate) => {
                assert_eq!(duplicate, sos_webhooks::Duplicate::RetryInFlight)
            }
        }
    }
    assert_eq!(takeovers.len(), 1, "exactly one takeover after the database-clock lease: {takeovers:?}");
    assert_eq!(takeovers[0].attempt(), 2);
    assert!(
        matches!(store.complete(&first, start()).await, Err(Error::LeaseLost)),
        "the stale worker lost its lease"
    );
    store.complete(&takeovers[0], start() - chrono::Duration::days(3)).await.unwrap();
    for skew in [-3, 0, 3] {
        let answer = store
            .claim(&request(&event, b"{}", start() + chrono::Duration::days(skew), lease))
            .await
            .unwrap();
        assert_eq!(answer, ClaimAnswer::Duplicate(sos_webhooks::Duplicate::AlreadyProcessed));
    }
}

/// The axum extractor behind a real HTTP/1.1 server (hyper), fed raw bytes over TCP: a chunked
/// body without Content-Length that passes the limit, a single chunk that declares 1 GiB and
/// sends only a little past the limit (refused while the sender still holds the connection
/// open), and a Content-Length shorter than what is sent (the body is the framed bytes only).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signature_bypass_extractor_over_tcp_chunked_and_lying_content_length() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn hook(delivery: sos_webhooks::WebhookRequest<1024>) -> String {
        format!("len={}", delivery.body.len())
    }
    let app = axum::Router::new().route("/hook", axum::routing::post(hook));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    /// Sends `head` and `body` and returns the first response's status line and text, read
    /// while the connection stays open (the sender never finishes a declared body).
    async fn exchange(address: std::net::SocketAddr, head: &str, body: &[u8]) -> String {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        stream.write_all(head.as_bytes()).await.unwrap();
        // The server may answer and stop reading before the whole body is written.
        let _ = stream.write_all(body).await;
        let mut response = Vec::new();
        let mut buffer = [0u8; 4096];
        let read = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        response.extend_from_slice(&buffer[..n]);
                        let text = String::from_utf8_lossy(&response);
                        if let Some((headers, rest)) = text.split_once("\r\n\r\n") {
                            let length = headers
                                .lines()
                                .find_map(|line| {
                                    line.to_ascii_lowercase()
                                        .strip_prefix("content-length: ")
                                        .map(str::to_owned)
                                })
                                .and_then(|value| value.trim().parse::<usize>().ok());
                            if length.is_some_and(|length| rest.len() >= length) {
                                break;
                            }
                        }
                    }
                }
            }
        })
        .await;
        assert!(read.is_ok(), "no answer within 10 s: {}", String::from_utf8_lossy(&response));
        String::from_utf8_lossy(&response).into_owned()
    }

    let chunk = |data: &[u8]| {
        [format!("{:x}\r\n", data.len()).into_bytes(), data.to_vec(), b"\r\n".to_vec()].concat()
    };
    let chunked = "POST /hook HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n";

    // Within the limit, chunked, no Content-Length: accepted whole.
    let small = [chunk(&[b'a'; 600]), chunk(&[b'b'; 424]), b"0\r\n\r\n".to_vec()].concat();
    let answer = exchange(address, chunked, &small).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("len=1024"), "{answer}");

    // Past the limit in small chunks, no Content-Length: 413.
    let big = [chunk(&[b'a'; 600]), chunk(&[b'b'; 425]), b"0\r\n\r\n".to_vec()].concat();
    let answer = exchange(address, chunked, &big).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // One chunk declaring 1 GiB; 4 KiB sent and the connection held open: 413 without waiting.
    let mut endless = b"40000000\r\n".to_vec();
    endless.extend_from_slice(&[b'c'; 4096]);
    let answer = exchange(address, chunked, &endless).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");

    // Content-Length says 10 over the limit's worth of bytes: only the 10 framed bytes are the body.
    let answer =
        exchange(address, "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n", &[b'd'; 4096])
            .await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("len=10"), "{answer}");

    // Content-Length over the limit but the bytes that arrive cross it: 413 while streaming.
    let answer = exchange(
        address,
        "POST /hook HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n",
        &[b'e'; 4096],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    server.abort();
}

/// lease-clock-skew with the database clock in a session whose time zone has daylight saving
/// time: a lease is elapsed time. (`timestamptz + interval '30 days'` adds calendar days in the
/// session's zone, 23 or 25 hours across a change, so a lease written with a days part ends an
/// hour early or late.) Leases of 30, 60, … 360 days: at least one of them spans exactly one
/// change, whatever the date the test runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_clock_skew_pg_database_clock_lease_is_elapsed_time_whatever_the_session_time_zone() {
    use sqlx::Executor as _;

    let database = pg_db().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .after_connect(|connection, _| {
            Box::pin(async move {
                connection.execute("SET TIME ZONE 'Europe/Berlin'").await?;
                Ok(())
            })
        })
        .connect(database.url())
        .await
        .unwrap();
    let zone: String = sqlx::query_scalar("SHOW TIME ZONE").fetch_one(&pool).await.unwrap();
    assert_eq!(zone, "Europe/Berlin");
    let store = PgStore::new(pool.clone()).with_database_clock(true);
    for months in 1..=12_i64 {
        let event = key("acme", "stripe", &format!("evt_dst_{months}"));
        let lease = Duration::from_secs(30 * 86_400 * months.unsigned_abs());
        let answer = store.claim(&request(&event, b"{}", start(), lease)).await.unwrap();
        assert!(matches!(answer, ClaimAnswer::Claimed(_)), "{answer:?}");
        let seconds: f64 = sqlx::query_scalar(
            "SELECT (extract(epoch FROM lease_until) - extract(epoch FROM updated_at))::float8 \
             FROM sos_webhook_events WHERE event_id = $1",
        )
        .bind(event.event_id().as_str())
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(seconds, lease.as_secs_f64(), "a {months}×30-day lease in Europe/Berlin");
    }
}

// ---------------------------------------------------------------------------------------------
// injection: event ids built to break a SQL literal under either standard_conforming_strings
// setting must be stored and deduplicated exactly by the PostgreSQL transactional claim (a
// PL/pgSQL function; its arguments are bind parameters and its SQL is fixed).
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_hostile_event_ids_in_the_pg_transactional_claim() {
    let database = pg_db().await;
    let hostile = [
        "'",
        "''",
        "\\",
        "\\'; DELETE FROM sos_webhook_events; --",
        "'); SELECT pg_sleep(10); --",
        "E'\\x27'",
        "$$; DROP TABLE adv_effects; $$",
        "$fn$ RAISE $fn$",
        "\u{ff07}\u{2019}\u{02bc} lookalike quotes",
        "\u{5c}\u{a5}\u{20a9} backslash and yen/won signs",
        "naïve 漢字 🦀 \u{200b}\u{feff}",
    ];
    for standard_conforming in ["on", "off"] {
        // A pool whose sessions read literals the old way too: hex digits mean the same in both.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    connection
                        .execute(&*format!("SET standard_conforming_strings = {standard_conforming}"))
                        .await
                        .map(|_| ())
                })
            })
            .connect(database.url())
            .await
            .unwrap();
        let guard = WebhookGuard::new(PgStore::new(pool), SystemClock);
        for id in hostile {
            let id = format!("{id}|scs={standard_conforming}");
            let event = key("acme", "stripe", &id);
            assert_eq!(pg_deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::Processed(()), "{id}");
            assert_eq!(
                pg_deliver(&guard, &event, b"{}", "w").await.unwrap(),
                Outcome::AlreadyProcessed,
                "{id}"
            );
            assert_eq!(
                pg_deliver(&guard, &event, b"{\"x\":1}", "w").await.unwrap(),
                Outcome::BodyMismatch,
                "{id}"
            );
            assert_eq!(pg_effects(database.pool(), &event).await, 1, "{id}");
        }
    }
    assert_eq!(pg_records(database.pool()).await, 2 * hostile.len() as i64, "one record per id, none lost");
    let stored: Vec<String> = sqlx::query_scalar("SELECT event_id FROM sos_webhook_events ORDER BY event_id")
        .fetch_all(database.pool())
        .await
        .unwrap();
    let mut expected: Vec<String> = ["on", "off"]
        .iter()
        .flat_map(|scs| hostile.iter().map(move |id| format!("{id}|scs={scs}")))
        .collect();
    expected.sort();
    let mut stored_sorted = stored.clone();
    stored_sorted.sort();
    assert_eq!(stored_sorted, expected, "every id stored byte for byte");
    // NUL cannot be stored in PostgreSQL text: refused with a typed error before the database.
    assert!(matches!(
        EventKey::new("acme".parse().unwrap(), "stripe", "a\0b"),
        Err(Error::InvalidKey { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// cancellation: a transactional delivery dropped at any await point (a client hanging up, a
// timeout) must never leave a pooled connection inside its transaction, where the next user of
// the connection would commit a bare claim — an event marked processed whose handler never
// committed its effect.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_pg_transactional_dropped_anywhere_never_commits_a_bare_claim() {
    let database = pg_db().await;
    // A small pool, so that cancelled deliveries' connections are reused at once.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(database.url()).await.unwrap();
    let guard = WebhookGuard::new(PgStore::new(pool), SystemClock);
    let mut cancelled = 0;
    for round in 0..300u64 {
        let event = key("acme", "stripe", &format!("evt_cancel_{round}"));
        // Deadlines from 0 to ~3 ms cut the delivery at every stage of its round trips.
        let deadline = Duration::from_micros((round * 37) % 3000);
        if tokio::time::timeout(deadline, pg_deliver(&guard, &event, b"{}", "cut")).await.is_err() {
            cancelled += 1;
        }
        // Other deliveries reuse the pooled connections right away.
        let other = key("acme", "stripe", &format!("evt_after_{round}"));
        assert_eq!(pg_deliver(&guard, &other, b"{}", "next").await.unwrap(), Outcome::Processed(()));
    }
    assert!(cancelled > 0, "some deliveries must have been cut");
    // Every processed record has its effect: no claim committed without its handler.
    let bare: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sos_webhook_events e WHERE NOT EXISTS \
         (SELECT 1 FROM adv_effects a WHERE a.event_id = e.event_id)",
    )
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(bare, 0, "claims committed without their handler's effect");
    // And every cut event is still deliverable exactly once.
    for round in 0..300u64 {
        let event = key("acme", "stripe", &format!("evt_cancel_{round}"));
        let outcome = pg_deliver(&guard, &event, b"{}", "retry").await.unwrap();
        assert!(matches!(outcome, Outcome::Processed(()) | Outcome::AlreadyProcessed), "{outcome:?}");
        assert_eq!(pg_effects(database.pool(), &event).await, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// toctou-dedupe under REPEATABLE READ: a database whose default_transaction_isolation is
// `repeatable read` (or `serializable`) turns a duplicate that meets a record committed after
// its snapshot into SQLSTATE 40001 instead of an arbitrated answer. The guard must still answer
// (AlreadyProcessed here), never a storage error, and never run the handler.
// ---------------------------------------------------------------------------------------------

/// Inserts a committed-later record of `event` on its own connection: the returned transaction
/// holds the uncommitted row until the caller commits it.
async fn pg_uncommitted_record(
    pool: &sqlx::PgPool,
    event: &EventKey,
    body: &[u8],
    state: &str,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut transaction = pool.begin().await.unwrap();
    sqlx::query(
        "INSERT INTO sos_webhook_events (tenant, provider, event_id, body_hash, state, claim_token, attempts, \
         lease_until, first_seen_at, updated_at) \
         VALUES ($1, $2, $3, $4, $5, 'other', 1, now() + interval '1 hour', now(), now())",
    )
    .bind(event.tenant().as_str())
    .bind(event.provider().as_str())
    .bind(event.event_id().as_str())
    .bind(Sha256Digest::of(body).as_bytes().as_slice())
    .bind(state)
    .execute(&mut *transaction)
    .await
    .unwrap();
    transaction
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_repeatable_read_default_racing_commit_is_answered_not_an_error() {
    let database = pg_db().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'repeatable read'",
        database.name()
    ))
    .execute(database.pool())
    .await
    .unwrap();
    // New sessions pick the database default up.
    let pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(20).connect(database.url()).await.unwrap();
    let isolation: String = sqlx::query_scalar("SHOW transaction_isolation").fetch_one(&pool).await.unwrap();
    assert_eq!(isolation, "repeatable read");
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock));

    // Transactional: the claim takes the key's lock, then its insert waits on a record another
    // writer commits after the claim's snapshot was taken.
    let event = key("acme", "stripe", "evt_rr_tx");
    let writer = pg_uncommitted_record(&pool, &event, b"{}", "processed").await;
    let delivery = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move { pg_deliver(&guard, &event, b"{}", "rr").await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.commit().await.unwrap();
    let outcome = delivery.await.unwrap();
    assert!(matches!(outcome, Ok(Outcome::AlreadyProcessed)), "transactional: {outcome:?}");
    assert_eq!(pg_effects(&pool, &event).await, 0, "the handler never ran");

    // Two-phase: the same race on the claim's arbitrated write.
    let event = key("acme", "stripe", "evt_rr_2p");
    let writer = pg_uncommitted_record(&pool, &event, b"{}", "processed").await;
    let delivery = {
        let (guard, event) = (Arc::clone(&guard), event.clone());
        tokio::spawn(async move { guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    writer.commit().await.unwrap();
    let outcome = delivery.await.unwrap();
    assert!(matches!(outcome, Ok(Outcome::AlreadyProcessed)), "two-phase: {outcome:?}");

    // And a burst of 16 concurrent deliveries of one event in each mode: one processes, every
    // other one is answered (no storage error), one effect.
    for mode in ["tx", "2p"] {
        let event = key("acme", "stripe", &format!("evt_rr_burst_{mode}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let (guard, event, barrier, pool) =
                (Arc::clone(&guard), event.clone(), Arc::clone(&barrier), pool.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                if mode == "tx" {
                    pg_deliver(&guard, &event, b"{}", &format!("w{worker}")).await
                } else {
                    let id = event.event_id().as_str().to_owned();
                    guard
                        .two_phase(&event, b"{}", |_| async move {
                            sqlx::query("INSERT INTO adv_effects VALUES ('acme', 'stripe', $1, 'w', '')")
                                .bind(id)
                                .execute(&pool)
                                .await
                                .map(|_| ())
                        })
                        .await
                }
            }));
        }
        let mut processed = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(Outcome::Processed(())) => processed += 1,
                Ok(Outcome::AlreadyProcessed | Outcome::RetryInFlight) => {}
                other => panic!("{mode}: {other:?}"),
            }
        }
        assert!(processed <= 1, "{mode}: processed {processed} times");
        if processed == 0 {
            // Every delivery met one in flight; the retry processes it.
            let outcome = pg_deliver(&guard, &event, b"{}", "retry").await.unwrap();
            assert_eq!(outcome, Outcome::Processed(()), "{mode}");
        }
        assert_eq!(pg_effects(&pool, &event).await, 1, "{mode}");
    }
}

// ---------------------------------------------------------------------------------------------
// cancellation and a killed backend, checked on the server: after a transactional delivery is
// cut mid-handler (its future dropped) or its backend is terminated mid-handler, no session is
// left inside a transaction, no advisory lock is held, and the next delivery processes exactly
// once.
// ---------------------------------------------------------------------------------------------

async fn pg_server_state_is_clean(observer: &sqlx::PgPool) {
    // The released connection's ROLLBACK is sent when the pool pings it: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (open, advisory): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
                       AND pid <> pg_backend_pid() AND xact_start IS NOT NULL), \
                    (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory')",
        )
        .fetch_one(observer)
        .await
        .unwrap();
        if open == 0 && advisory == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{open} sessions in a transaction, {advisory} advisory locks held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellation_pg_transactional_cut_or_killed_mid_handler_leaves_the_server_clean() {
    let database = pg_db().await;
    let observer =
        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(database.url()).await.unwrap();
    // One connection: the next delivery reuses the cut one.
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(database.url()).await.unwrap();
    let guard = WebhookGuard::new(PgStore::new(pool.clone()), SystemClock);

    // Cut after the handler's write, while it waits on something else.
    let event = key("acme", "stripe", "evt_cut_mid_handler");
    let cut = tokio::time::timeout(
        Duration::from_millis(300),
        guard.transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_cut_mid_handler', 'cut', '')",
                )
                .execute(&mut **tx)
                .await?;
                std::future::pending::<()>().await;
                Ok::<_, sqlx::Error>(())
            })
        }),
    )
    .await;
    assert!(cut.is_err(), "the delivery was cut");
    pg_server_state_is_clean(&observer).await;
    assert_eq!(pg_deliver(&guard, &event, b"{}", "next").await.unwrap(), Outcome::Processed(()));
    assert_eq!(pg_effects(database.pool(), &event).await, 1);
    pg_server_state_is_clean(&observer).await;

    // Cut while a statement of the handler is running on the server.
    let event = key("acme", "stripe", "evt_cut_mid_statement");
    let cut = tokio::time::timeout(
        Duration::from_millis(200),
        guard.transactional(&event, b"{}", |tx| {
            Box::pin(async move {
                sqlx::query(
                    "INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_cut_mid_statement', 'cut', '')",
                )
                .execute(&mut **tx)
                .await?;
                sqlx::query("SELECT pg_sleep(0.6)").execute(&mut **tx).await?;
                Ok::<_, sqlx::Error>(())
            })
        }),
    )
    .await;
    assert!(cut.is_err(), "the delivery was cut");
    pg_server_state_is_clean(&observer).await;
    assert_eq!(pg_deliver(&guard, &event, b"{}", "next").await.unwrap(), Outcome::Processed(()));
    assert_eq!(pg_effects(database.pool(), &event).await, 1);

    // The backend killed mid-handler; the handler swallows the failure and answers Ok.
    let event = key("acme", "stripe", "evt_killed_mid_handler");
    let killer = observer.clone();
    let killed = guard
        .transactional(&event, b"{}", move |tx| {
            Box::pin(async move {
                sqlx::query("INSERT INTO adv_effects VALUES ('acme', 'stripe', 'evt_killed_mid_handler', 'killed', '')")
                    .execute(&mut **tx)
                    .await?;
                let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut **tx).await?;
                let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .fetch_one(&killer)
                    .await
                    .unwrap();
                let _ = sqlx::query("SELECT 1").execute(&mut **tx).await;
                Ok::<_, sqlx::Error>(())
            })
        })
        .await;
    assert!(matches!(killed, Err(RunError::Guard(_))), "a killed backend is not processed: {killed:?}");
    assert_eq!(pg_effects(database.pool(), &event).await, 0);
    pg_server_state_is_clean(&observer).await;
    assert_eq!(pg_deliver(&guard, &event, b"{}", "next").await.unwrap(), Outcome::Processed(()));
    assert_eq!(pg_deliver(&guard, &event, b"{}", "again").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(pg_effects(database.pool(), &event).await, 1);
}

// ---------------------------------------------------------------------------------------------
// mode mismatch after a two-phase lease expired (a crashed two-phase worker): transactional
// mode refuses it on every path and database, two-phase takes it over, and afterwards both modes
// answer from the processed record.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_mode_mismatch_after_an_expired_two_phase_lease_pg_and_sqlite() {
    let mismatch = |result: &Result<Outcome<()>, RunError<sqlx::Error>>| {
        matches!(result, Err(RunError::Guard(Error::ModeMismatch)))
    };
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);

    let database = pg_db().await;
    let store = PgStore::new(database.pool().clone());
    let event = key("acme", "stripe", "evt_expired_lease");
    let crashed = store.claim(&request(&event, b"{}", an_hour_ago, Duration::from_secs(1))).await.unwrap();
    assert!(matches!(crashed, ClaimAnswer::Claimed(_)));
    for read_first in [false, true] {
        let guard = WebhookGuard::new(store.clone(), SystemClock)
            .with_config(GuardConfig::default().with_read_first(read_first));
        let result = pg_deliver(&guard, &event, b"{}", "tx").await;
        assert!(mismatch(&result), "pg read_first={read_first}: {result:?}");
        let result = pg_deliver(&guard, &event, b"{\"x\":1}", "tx").await;
        assert!(matches!(result, Ok(Outcome::BodyMismatch)), "pg read_first={read_first}: {result:?}");
    }
    assert_eq!(pg_effects(database.pool(), &event).await, 0);
    let guard = WebhookGuard::new(store, SystemClock);
    let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "two-phase takes the expired lease over");
    assert_eq!(pg_deliver(&guard, &event, b"{}", "tx").await.unwrap(), Outcome::AlreadyProcessed);

    let database = sqlite_db().await;
    let store = SqliteStore::new(database.pool().clone());
    let crashed = store.claim(&request(&event, b"{}", an_hour_ago, Duration::from_secs(1))).await.unwrap();
    assert!(matches!(crashed, ClaimAnswer::Claimed(_)));
    let guard = WebhookGuard::new(store, SystemClock);
    let result = sqlite_deliver(&guard, &event, b"{}", "tx").await;
    assert!(mismatch(&result), "sqlite: {result:?}");
    assert_eq!(sqlite_effects(database.pool(), &event).await, 0);
    let outcome = guard.two_phase(&event, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::Processed(()), "two-phase takes the expired lease over");
    assert_eq!(sqlite_deliver(&guard, &event, b"{}", "tx").await.unwrap(), Outcome::AlreadyProcessed);
}

// ---------------------------------------------------------------------------------------------
// migration upgrade path: 0200000002 applied to databases that already hold records from
// 0200000001 (every state), keeping them answerable, and on SQLite keeping the table STRICT with
// its key index.
// ---------------------------------------------------------------------------------------------

fn first_migration_only(migrator: sqlx::migrate::Migrator) -> sqlx::migrate::Migrator {
    let mut first = migrator;
    let migrations: Vec<_> = first.migrations.iter().filter(|m| m.version == 200_000_001).cloned().collect();
    assert_eq!(migrations.len(), 1);
    first.migrations = std::borrow::Cow::Owned(migrations);
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_null_migration_0200000002_upgrades_databases_holding_records() {
    let hash = Sha256Digest::of(b"{}");
    // PostgreSQL.
    let database = PgTestDatabase::new(&[&first_migration_only(postgres_migrator())]).await;
    sqlx::query(EFFECTS).execute(database.pool()).await.unwrap();
    for (event, state) in [
        ("evt_old_processed", "processed"),
        ("evt_old_processing", "processing"),
        ("evt_old_failed", "failed"),
    ] {
        sqlx::query(
            "INSERT INTO sos_webhook_events VALUES ('acme', 'stripe', $1, $2, $3, 't', 1, now() + interval '1 hour', NULL, now(), now())",
        )
        .bind(event)
        .bind(hash.as_bytes().as_slice())
        .bind(state)
        .execute(database.pool())
        .await
        .unwrap();
    }
    postgres_migrator().run(database.pool()).await.unwrap();
    let guard = WebhookGuard::new(PgStore::new(database.pool().clone()), SystemClock);
    assert_eq!(
        pg_deliver(&guard, &key("acme", "stripe", "evt_old_processed"), b"{}", "w").await.unwrap(),
        Outcome::AlreadyProcessed
    );
    for event in ["evt_old_processing", "evt_old_failed"] {
        let result = pg_deliver(&guard, &key("acme", "stripe", event), b"{}", "w").await;
        assert!(matches!(result, Err(RunError::Guard(Error::ModeMismatch))), "{event}: {result:?}");
    }
    assert_eq!(
        pg_deliver(&guard, &key("acme", "stripe", "evt_new"), b"{}", "w").await.unwrap(),
        Outcome::Processed(())
    );

    // SQLite: the table is rebuilt; its rows, STRICT typing and key survive.
    let database = SqliteTestDatabase::new(&[&first_migration_only(sqlite_migrator())]).await;
    sqlx::query(EFFECTS).execute(database.pool()).await.unwrap();
    for (event, state) in [
        ("evt_old_processed", "processed"),
        ("evt_old_processing", "processing"),
        ("evt_old_failed", "failed"),
    ] {
        sqlx::query("INSERT INTO sos_webhook_events VALUES ('acme', 'stripe', ?1, ?2, ?3, 't', 1, 9000000000000000, NULL, 0, 0)")
            .bind(event)
            .bind(hash.as_bytes().as_slice())
            .bind(state)
            .execute(database.pool())
            .await
            .unwrap();
    }
    sqlite_migrator().run(database.pool()).await.unwrap();
    let (strict, indexes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT strict FROM pragma_table_list WHERE name = 'sos_webhook_events'), \
                (SELECT count(*) FROM pragma_index_list('sos_webhook_events') WHERE origin = 'pk' AND \"unique\" = 1)",
    )
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!((strict, indexes), (1, 1), "STRICT and the unique key survive the rebuild");
    let leftover: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_master WHERE name LIKE '%_v2%'")
        .fetch_one(database.pool())
        .await
        .unwrap();
    assert_eq!(leftover, 0, "no trace of the rebuild's temporary name");
    let wrong_type =
        sqlx::query("UPDATE sos_webhook_events SET attempts = 'many' WHERE event_id = 'evt_old_processed'")
            .execute(database.pool())
            .await;
    assert!(wrong_type.is_err(), "STRICT typing kept");
    let guard = WebhookGuard::new(SqliteStore::new(database.pool().clone()), SystemClock);
    assert_eq!(
        sqlite_deliver(&guard, &key("acme", "stripe", "evt_old_processed"), b"{}", "w").await.unwrap(),
        Outcome::AlreadyProcessed
    );
    for event in ["evt_old_processing", "evt_old_failed"] {
        let result = sqlite_deliver(&guard, &key("acme", "stripe", event), b"{}", "w").await;
        assert!(matches!(result, Err(RunError::Guard(Error::ModeMismatch))), "{event}: {result:?}");
    }
    assert_eq!(
        sqlite_deliver(&guard, &key("acme", "stripe", "evt_new"), b"{}", "w").await.unwrap(),
        Outcome::Processed(())
    );
}

// ---------------------------------------------------------------------------------------------
// toctou-dedupe under a SERIALIZABLE default (review finding, fixed by 0200000005). The read of an absent key
// takes an SIRead lock on the key's btree leaf page; concurrent claims of *different* fresh
// keys on the same page then form rw-antidependency cycles, and one claimer fails with 40001
// (at the INSERT or at COMMIT, after its handler ran). Every fresh key must still be Processed.
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_serializable_default_distinct_fresh_events_all_processed() {
    let database = pg_db().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
        database.name()
    ))
    .execute(database.pool())
    .await
    .unwrap();
    let pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(20).connect(database.url()).await.unwrap();
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock));
    let mut failures = Vec::new();
    for round in 0..5 {
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let mut tasks = Vec::new();
        for worker in 0..16 {
            let (guard, barrier) = (Arc::clone(&guard), Arc::clone(&barrier));
            let event = key("acme", "stripe", &format!("evt_ser_{round}_{worker}"));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = guard
                    .transactional(&event, b"{}", |tx| {
                        Box::pin(async move {
                            sqlx::query("SELECT pg_sleep(0.05)").execute(&mut **tx).await?;
                            Ok::<_, sqlx::Error>(())
                        })
                    })
                    .await;
                (worker, format!("{outcome:?}"))
            }));
        }
        for task in tasks {
            let (worker, outcome) = task.await.unwrap();
            if outcome != "Ok(Processed(()))" {
                failures.push(format!("round {round} worker {worker}: {outcome}"));
            }
        }
    }
    assert!(failures.is_empty(), "{} fresh distinct keys not processed: {failures:#?}", failures.len());
}

// ---------------------------------------------------------------------------------------------
// read-first orders (`ReadFirst`, default `Adaptive`) and the database-clock transactional
// stamp: every order answers every record alike, a record committed, rolled back or purged
// between the autocommit read and the claim is decided by the claim under every isolation
// default, and a flood of duplicates only ever changes the cost of fresh events.
// ---------------------------------------------------------------------------------------------

/// Counts calls of the transactional claim: the shipped `sos_webhooks_claim_v2` is renamed and
/// wrapped by one that first takes `nextval` of a sequence (not transactional, so a claim
/// rolled back still counts). The wrapper runs in the caller's transaction, so the claim
/// behaves as shipped.
async fn pg_count_claim_calls(pool: &sqlx::PgPool) {
    for statement in [
        "CREATE SEQUENCE adv_claim_calls",
        "ALTER FUNCTION sos_webhooks_claim_v2(TEXT, TEXT, TEXT, BYTEA, TEXT, TIMESTAMPTZ, BIGINT) \
         RENAME TO adv_claim_v2_inner",
        "CREATE FUNCTION sos_webhooks_claim_v2(p_tenant TEXT, p_provider TEXT, p_event_id TEXT, \
         p_body_hash BYTEA, p_token TEXT, p_now TIMESTAMPTZ, p_lock BIGINT, \
         OUT claimed BOOLEAN, OUT state TEXT, OUT body_hash BYTEA) LANGUAGE plpgsql VOLATILE AS $fn$ \
         BEGIN PERFORM nextval('adv_claim_calls'); \
         SELECT i.claimed, i.state, i.body_hash INTO claimed, state, body_hash \
         FROM adv_claim_v2_inner(p_tenant, p_provider, p_event_id, p_body_hash, p_token, p_now, p_lock) AS i; \
         END $fn$",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
}

async fn pg_claim_calls(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar("SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM adv_claim_calls")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A guard with the default `ReadFirst::Adaptive`, tipped into reading first the way a retry
/// storm tips it: it processed one event, then answered 24 duplicates of it (the share is then
/// about 0.79, above the one half that switches the order).
async fn pg_adaptive_tipped(store: PgStore, label: &str) -> WebhookGuard<PgStore> {
    let guard = WebhookGuard::new(store, SystemClock);
    assert_eq!(guard.config().read_first(), ReadFirst::Adaptive);
    let tip = key("acme", "stripe", &format!("evt_tip_{label}"));
    assert_eq!(pg_deliver(&guard, &tip, b"{}", "tip").await.unwrap(), Outcome::Processed(()));
    for _ in 0..24 {
        assert_eq!(pg_deliver(&guard, &tip, b"{}", "tip").await.unwrap(), Outcome::AlreadyProcessed);
    }
    guard
}

/// The state, attempts and claim token of a record, to show that a refused delivery wrote nothing.
async fn pg_record_row(pool: &sqlx::PgPool, event: &EventKey) -> Option<(String, i32, String)> {
    sqlx::query_as(
        "SELECT state, attempts, claim_token FROM sos_webhook_events \
         WHERE tenant = $1 AND provider = $2 AND event_id = $3",
    )
    .bind(event.tenant().as_str())
    .bind(event.provider().as_str())
    .bind(event.event_id().as_str())
    .fetch_optional(pool)
    .await
    .unwrap()
}

/// toctou-dedupe and replay-same across the three read-first orders (`Never`, `Always`, and
/// the default `Adaptive` tipped into reading first by a retry storm), with the guard's clock
/// and with the database's: a processed record answers `AlreadyProcessed` (`BodyMismatch` for
/// other bytes); an unfinished two-phase record (failed, live lease, expired lease) is refused
/// with `ModeMismatch` (`BodyMismatch` for other bytes) and left untouched, so that two-phase
/// mode re-claims it under its policy and it is then processed exactly once; another tenant's
/// or provider's record never answers; and the read-first orders answer records without the
/// claim while `Never` always claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_every_read_first_order_answers_every_record_alike() {
    let mismatch = |result: &Result<Outcome<()>, RunError<sqlx::Error>>| {
        matches!(result, Err(RunError::Guard(Error::ModeMismatch)))
    };
    let database = pg_db().await;
    let pool = database.pool();
    pg_count_claim_calls(pool).await;
    for database_clock in [false, true] {
        let store = PgStore::new(pool.clone()).with_database_clock(database_clock);
        for order in ["never", "always", "adaptive"] {
            let label = format!("{order}_{database_clock}");
            let guard = match order {
                "never" => WebhookGuard::new(store.clone(), SystemClock)
                    .with_config(GuardConfig::default().with_read_first(ReadFirst::Never)),
                "always" => WebhookGuard::new(store.clone(), SystemClock)
                    .with_config(GuardConfig::default().with_read_first(ReadFirst::Always)),
                _ => pg_adaptive_tipped(store.clone(), &label).await,
            };
            let reads_first = order != "never";
            let now = Utc::now();
            let processed = key("acme", "stripe", &format!("evt_done_{label}"));
            assert_eq!(pg_deliver(&guard, &processed, b"{}", "w").await.unwrap(), Outcome::Processed(()));
            // Two-phase records: failed, in flight with a live lease, crashed with an expired one.
            let failed = key("acme", "stripe", &format!("evt_failed_{label}"));
            let ClaimAnswer::Claimed(claim) =
                store.claim(&request(&failed, b"{}", now, Duration::from_secs(3600))).await.unwrap()
            else {
                panic!("{label}: failed event not claimed")
            };
            store.fail(&claim, now, "the api call failed").await.unwrap();
            let live = key("acme", "stripe", &format!("evt_live_{label}"));
            let expired = key("acme", "stripe", &format!("evt_expired_{label}"));
            for (event, at, lease) in [
                (&live, now, Duration::from_secs(3600)),
                (&expired, now - chrono::Duration::hours(1), Duration::ZERO),
            ] {
                let answer = store.claim(&request(event, b"{}", at, lease)).await.unwrap();
                assert!(matches!(answer, ClaimAnswer::Claimed(_)), "{label}: {answer:?}");
            }
            let before = pg_claim_calls(pool).await;
            let mut answered = 0;
            assert_eq!(
                pg_deliver(&guard, &processed, b"{}", "dup").await.unwrap(),
                Outcome::AlreadyProcessed
            );
            assert_eq!(
                pg_deliver(&guard, &processed, b"{\"x\":1}", "dup").await.unwrap(),
                Outcome::BodyMismatch
            );
            answered += 2;
            for event in [&failed, &live, &expired] {
                let row = pg_record_row(pool, event).await;
                let result = pg_deliver(&guard, event, b"{}", "tx").await;
                assert!(mismatch(&result), "{label} {event:?}: {result:?}");
                let result = pg_deliver(&guard, event, b"{\"x\":1}", "tx").await;
                assert!(matches!(result, Ok(Outcome::BodyMismatch)), "{label} {event:?}: {result:?}");
                assert_eq!(pg_record_row(pool, event).await, row, "{label}: a refused delivery wrote");
                assert_eq!(pg_effects(pool, event).await, 0, "{label}");
                answered += 2;
            }
            let claims = pg_claim_calls(pool).await - before;
            let expected = if reads_first { 0 } else { answered };
            assert_eq!(claims, expected, "{label}: claims for {answered} answered deliveries");

            // Same event id, other tenant or provider, other body: new events, never answered
            // by acme's stripe record.
            for other in [
                key("globex", "stripe", processed.event_id().as_str()),
                key("acme", "github", processed.event_id().as_str()),
            ] {
                assert_eq!(
                    pg_deliver(&guard, &other, b"{\"other\":1}", "w").await.unwrap(),
                    Outcome::Processed(()),
                    "{label} {other:?}"
                );
                assert_eq!(pg_effects(pool, &other).await, 1, "{label}");
            }

            // Two-phase mode re-claims what transactional mode refused, exactly once; then
            // every mode and order answers it processed.
            let two_phase = WebhookGuard::new(store.clone(), SystemClock)
                .with_config(GuardConfig::default().with_failed_retry_after(Duration::ZERO));
            for event in [&failed, &expired] {
                let runs = AtomicU32::new(0);
                let outcome = two_phase
                    .two_phase(event, b"{}", |_| async {
                        runs.fetch_add(1, Ordering::SeqCst);
                        Ok::<_, String>(())
                    })
                    .await
                    .unwrap();
                assert_eq!(outcome, Outcome::Processed(()), "{label} {event:?}");
                assert_eq!(runs.load(Ordering::SeqCst), 1);
                assert_eq!(
                    pg_deliver(&guard, event, b"{}", "after").await.unwrap(),
                    Outcome::AlreadyProcessed
                );
                assert_eq!(
                    pg_deliver(&guard, event, b"{\"x\":1}", "after").await.unwrap(),
                    Outcome::BodyMismatch
                );
            }
            let outcome = two_phase.two_phase(&live, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
            assert_eq!(outcome, Outcome::RetryInFlight, "{label}: a live lease is never taken over");
            // A two-phase delivery of the transactional record, on the same store and clock.
            let outcome =
                two_phase.two_phase(&processed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
            assert_eq!(outcome, Outcome::AlreadyProcessed, "{label}");
            let outcome = two_phase
                .two_phase(&processed, b"{\"x\":1}", |_| async { Ok::<_, String>(()) })
                .await
                .unwrap();
            assert_eq!(outcome, Outcome::BodyMismatch, "{label}");
            assert_eq!(pg_effects(pool, &processed).await, 1, "{label}");
        }
    }
}

/// toctou-dedupe between the autocommit read and the claim, under every isolation default:
/// another writer's record is uncommitted when the delivery reads (so the read sees nothing)
/// and commits or rolls back while the claim waits on it. A commit is answered from the
/// committed record (`AlreadyProcessed`, `BodyMismatch`, or `ModeMismatch` for a two-phase
/// failure), never by running the handler; a rollback leaves the key new, and the delivery
/// processes it once. Both orders, READ COMMITTED, REPEATABLE READ and SERIALIZABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_read_first_racing_commit_or_rollback_under_every_isolation_default() {
    for isolation in ["read committed", "repeatable read", "serializable"] {
        let database = pg_db().await;
        sqlx::query(&format!(
            "ALTER DATABASE \"{}\" SET default_transaction_isolation = '{isolation}'",
            database.name()
        ))
        .execute(database.pool())
        .await
        .unwrap();
        let pool =
            sqlx::postgres::PgPoolOptions::new().max_connections(24).connect(database.url()).await.unwrap();
        let shown: String = sqlx::query_scalar("SHOW transaction_isolation").fetch_one(&pool).await.unwrap();
        assert_eq!(shown, isolation);
        for order in [ReadFirst::Never, ReadFirst::Always] {
            let guard = Arc::new(
                WebhookGuard::new(PgStore::new(pool.clone()), SystemClock)
                    .with_config(GuardConfig::default().with_read_first(order)),
            );
            // (writer's body, writer's state, writer commits, the delivery's expected answer)
            let cases: [(&[u8], &str, bool, &str); 4] = [
                (b"{}", "processed", true, "Ok(AlreadyProcessed)"),
                (b"{\"forged\":1}", "processed", true, "Ok(BodyMismatch)"),
                (b"{}", "failed", true, "Err(Guard(ModeMismatch))"),
                (b"{}", "processed", false, "Ok(Processed(()))"),
            ];
            let mut writers = Vec::new();
            let mut deliveries = Vec::new();
            for (case, (body, state, commit, expected)) in cases.into_iter().enumerate() {
                let event = key("acme", "stripe", &format!("evt_race_{order:?}_{case}"));
                writers.push((pg_uncommitted_record(&pool, &event, body, state).await, commit));
                let (guard, delivered) = (Arc::clone(&guard), event.clone());
                let delivery =
                    tokio::spawn(async move { pg_deliver(&guard, &delivered, b"{}", "race").await });
                deliveries.push((event, delivery, expected));
            }
            // Let every delivery read (nothing) and reach the claim's insert, which waits.
            tokio::time::sleep(Duration::from_millis(100)).await;
            for (writer, commit) in writers {
                if commit {
                    writer.commit().await.unwrap();
                } else {
                    writer.rollback().await.unwrap();
                }
            }
            for (event, delivery, expected) in deliveries {
                let outcome = format!("{:?}", delivery.await.unwrap());
                assert_eq!(outcome, expected, "{isolation} {order:?} {event:?}");
                let effects = i64::from(expected == "Ok(Processed(()))");
                assert_eq!(pg_effects(&pool, &event).await, effects, "{isolation} {order:?} {event:?}");
            }
        }
    }
}

/// The adaptive order's moving average under attack: while 6 tasks flood duplicates (the
/// same bytes and forged bytes) of processed events, which tips the guard into reading first,
/// 40 fresh events are each delivered by 4 concurrent tasks. Every fresh event runs exactly
/// once, no flood delivery is ever processed, and once the flood stops a run of fresh events
/// brings the guard back to claiming first. The flood changes what fresh events cost (one
/// read more), never an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_adaptive_share_flooded_with_duplicates_costs_only() {
    let database = pg_db().await;
    let pool = database.pool().clone();
    pg_count_claim_calls(&pool).await;
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock));
    let targets: Vec<EventKey> = (0..3).map(|n| key("acme", "stripe", &format!("evt_flood_{n}"))).collect();
    for target in &targets {
        assert_eq!(pg_deliver(&guard, target, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for flooder in 0..6 {
        let (guard, stop, targets) = (Arc::clone(&guard), Arc::clone(&stop), targets.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) || sent < 40 {
                let target = &targets[(sent + flooder) % targets.len()];
                let forged = (sent + flooder) % 2 == 1;
                let body: &[u8] = if forged { b"{\"forged\":1}" } else { b"{}" };
                let outcome = pg_deliver(&guard, target, body, "flood").await.unwrap();
                let expected = if forged { Outcome::BodyMismatch } else { Outcome::AlreadyProcessed };
                assert_eq!(outcome, expected, "flood delivery {sent}");
                sent += 1;
            }
            sent
        }));
    }
    // Wait until the flood has tipped the guard: a duplicate is answered without the claim.
    for probe in 0.. {
        assert!(probe < 2_000, "the flood never tipped the guard into reading first");
        let before = pg_claim_calls(&pool).await;
        let outcome = pg_deliver(&guard, &targets[0], b"{}", "probe").await.unwrap();
        assert_eq!(outcome, Outcome::AlreadyProcessed);
        if pg_claim_calls(&pool).await == before {
            break;
        }
    }
    let fresh: Vec<EventKey> = (0..40).map(|n| key("acme", "stripe", &format!("evt_fresh_{n}"))).collect();
    let mut deliveries = Vec::new();
    for event in &fresh {
        for copy in 0..4 {
            let (guard, event) = (Arc::clone(&guard), event.clone());
            deliveries.push(tokio::spawn(async move {
                loop {
                    match pg_deliver(&guard, &event, b"{}", &format!("c{copy}")).await.unwrap() {
                        Outcome::RetryInFlight => tokio::time::sleep(Duration::from_millis(1)).await,
                        other => return other,
                    }
                }
            }));
        }
    }
    let mut processed = 0;
    for delivery in deliveries {
        match delivery.await.unwrap() {
            Outcome::Processed(()) => processed += 1,
            Outcome::AlreadyProcessed => {}
            other => panic!("a fresh event's delivery answered {other:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let mut flooded = 0;
    for flooder in flooders {
        flooded += flooder.await.unwrap();
    }
    assert_eq!(processed, fresh.len(), "each fresh event processed by exactly one delivery");
    for event in fresh.iter().chain(&targets) {
        assert_eq!(pg_effects(&pool, event).await, 1, "{event:?} after {flooded} flood deliveries");
    }
    // The flood is over: fresh events pull the share back down, and a duplicate goes to the
    // claim first again.
    for n in 0..30 {
        let event = key("acme", "stripe", &format!("evt_after_{n}"));
        assert_eq!(pg_deliver(&guard, &event, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    }
    let before = pg_claim_calls(&pool).await;
    assert_eq!(pg_deliver(&guard, &targets[1], b"{}", "w").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(pg_claim_calls(&pool).await, before + 1, "claims first again once the flood stopped");
}

/// The retention purge racing read-first deliveries of records it is deleting: 20 processed
/// records past the horizon are each delivered by 4 concurrent read-first tasks while a purge
/// loop runs. A delivery that read the record before the purge answers `AlreadyProcessed`; once
/// it is gone, exactly one delivery processes the event again (the documented policy after the
/// horizon), never two. Fresh records inside the horizon are never purged, and their
/// duplicates are answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_purge_racing_pg_read_first_transactional_deliveries() {
    let database = pg_db().await;
    let pool = database.pool().clone();
    let store = PgStore::new(pool.clone());
    let config = GuardConfig::default().with_retention(Duration::from_secs(3600));
    let guard = Arc::new(
        WebhookGuard::new(store.clone(), SystemClock).with_config(config.with_read_first(ReadFirst::Always)),
    );
    let two_hours_ago = Utc::now() - chrono::Duration::hours(2);
    let old: Vec<EventKey> = (0..20).map(|n| key("acme", "stripe", &format!("evt_aged_{n}"))).collect();
    for event in &old {
        old_processed(&store, event, two_hours_ago).await;
    }
    let recent: Vec<EventKey> = (0..10).map(|n| key("acme", "stripe", &format!("evt_recent_{n}"))).collect();
    for event in &recent {
        assert_eq!(pg_deliver(&guard, event, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let purger = {
        let (guard, stop) = (Arc::clone(&guard), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut purged = 0;
            while !stop.load(Ordering::SeqCst) {
                purged += guard.purge().await.unwrap();
                tokio::task::yield_now().await;
            }
            purged + guard.purge().await.unwrap()
        })
    };
    let mut deliveries = Vec::new();
    for (n, event) in old.iter().chain(&recent).enumerate() {
        for copy in 0..4 {
            let (guard, event) = (Arc::clone(&guard), event.clone());
            deliveries.push(tokio::spawn(async move {
                if copy % 2 == 1 {
                    tokio::time::sleep(Duration::from_millis(n as u64 % 5)).await;
                }
                loop {
                    match pg_deliver(&guard, &event, b"{}", &format!("c{copy}")).await.unwrap() {
                        Outcome::RetryInFlight => tokio::time::sleep(Duration::from_millis(1)).await,
                        other => return (event, other),
                    }
                }
            }));
        }
    }
    let mut processed_again = std::collections::HashMap::<EventKey, i64>::new();
    for delivery in deliveries {
        let (event, outcome) = delivery.await.unwrap();
        match outcome {
            Outcome::Processed(()) => *processed_again.entry(event).or_default() += 1,
            Outcome::AlreadyProcessed => {}
            other => panic!("{event:?}: {other:?}"),
        }
    }
    stop.store(true, Ordering::SeqCst);
    assert_eq!(purger.await.unwrap(), 20, "the purge deleted exactly the aged records");
    for event in &old {
        let again = processed_again.get(event).copied().unwrap_or(0);
        assert!(again <= 1, "{event:?} processed {again} times after its purge");
        assert_eq!(pg_effects(&pool, event).await, again, "{event:?}");
    }
    for event in &recent {
        assert_eq!(processed_again.get(event), None, "{event:?} inside the horizon ran again");
        assert_eq!(pg_effects(&pool, event).await, 1, "{event:?}");
    }
}

/// The SQLite half of `toctou_dedupe_pg_every_read_first_order_answers_every_record_alike`
/// (SQLite always reads first): a processed record answers `AlreadyProcessed` or
/// `BodyMismatch`; an unfinished two-phase record (failed, live lease, expired lease) is
/// refused with `ModeMismatch` (`BodyMismatch` for other bytes) and left untouched; another
/// tenant's or provider's record never answers; two-phase mode then re-claims the failed and
/// the expired events exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toctou_dedupe_sqlite_read_first_answers_every_record_alike() {
    let mismatch = |result: &Result<Outcome<()>, RunError<sqlx::Error>>| {
        matches!(result, Err(RunError::Guard(Error::ModeMismatch)))
    };
    let database = sqlite_db().await;
    let pool = database.pool();
    let store = SqliteStore::new(pool.clone());
    let guard = WebhookGuard::new(store.clone(), SystemClock);
    let record_row = |event: EventKey| async move {
        sqlx::query_as::<_, (String, i64, String)>(
            "SELECT state, attempts, claim_token FROM sos_webhook_events \
             WHERE tenant = ?1 AND provider = ?2 AND event_id = ?3",
        )
        .bind(event.tenant().as_str().to_owned())
        .bind(event.provider().as_str().to_owned())
        .bind(event.event_id().as_str().to_owned())
        .fetch_optional(pool)
        .await
        .unwrap()
    };
    let now = Utc::now();
    let processed = key("acme", "stripe", "evt_done");
    assert_eq!(sqlite_deliver(&guard, &processed, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    let failed = key("acme", "stripe", "evt_failed");
    let ClaimAnswer::Claimed(claim) =
        store.claim(&request(&failed, b"{}", now, Duration::from_secs(3600))).await.unwrap()
    else {
        panic!("failed event not claimed")
    };
    store.fail(&claim, now, "the api call failed").await.unwrap();
    let live = key("acme", "stripe", "evt_live");
    let expired = key("acme", "stripe", "evt_expired");
    for (event, at, lease) in [
        (&live, now, Duration::from_secs(3600)),
        (&expired, now - chrono::Duration::hours(1), Duration::ZERO),
    ] {
        let answer = store.claim(&request(event, b"{}", at, lease)).await.unwrap();
        assert!(matches!(answer, ClaimAnswer::Claimed(_)), "{answer:?}");
    }
    assert_eq!(sqlite_deliver(&guard, &processed, b"{}", "dup").await.unwrap(), Outcome::AlreadyProcessed);
    assert_eq!(sqlite_deliver(&guard, &processed, b"{\"x\":1}", "dup").await.unwrap(), Outcome::BodyMismatch);
    for event in [&failed, &live, &expired] {
        let row = record_row(event.clone()).await;
        let result = sqlite_deliver(&guard, event, b"{}", "tx").await;
        assert!(mismatch(&result), "{event:?}: {result:?}");
        let result = sqlite_deliver(&guard, event, b"{\"x\":1}", "tx").await;
        assert!(matches!(result, Ok(Outcome::BodyMismatch)), "{event:?}: {result:?}");
        assert_eq!(record_row(event.clone()).await, row, "a refused delivery wrote");
        assert_eq!(sqlite_effects(pool, event).await, 0);
    }
    for other in [
        key("globex", "stripe", processed.event_id().as_str()),
        key("acme", "github", processed.event_id().as_str()),
    ] {
        assert_eq!(
            sqlite_deliver(&guard, &other, b"{\"other\":1}", "w").await.unwrap(),
            Outcome::Processed(()),
            "{other:?}"
        );
        assert_eq!(sqlite_effects(pool, &other).await, 1);
    }
    let two_phase = WebhookGuard::new(store.clone(), SystemClock)
        .with_config(GuardConfig::default().with_failed_retry_after(Duration::ZERO));
    for event in [&failed, &expired] {
        let runs = AtomicU32::new(0);
        let outcome = two_phase
            .two_phase(event, b"{}", |_| async {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok::<_, String>(())
            })
            .await
            .unwrap();
        assert_eq!(outcome, Outcome::Processed(()), "{event:?}");
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(sqlite_deliver(&guard, event, b"{}", "after").await.unwrap(), Outcome::AlreadyProcessed);
        assert_eq!(
            sqlite_deliver(&guard, event, b"{\"x\":1}", "after").await.unwrap(),
            Outcome::BodyMismatch
        );
    }
    let outcome = two_phase.two_phase(&live, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::RetryInFlight, "a live lease is never taken over");
    let outcome = two_phase.two_phase(&processed, b"{}", |_| async { Ok::<_, String>(()) }).await.unwrap();
    assert_eq!(outcome, Outcome::AlreadyProcessed);
    assert_eq!(sqlite_effects(pool, &processed).await, 1);
}

/// What the database-clock transactional stamp (migration 0200000006) buys: a worker whose
/// clock runs 30 days behind processes an event in transactional mode, and a correct replica's
/// retention purge (horizon 1 hour) runs right after. With the database's clock the record
/// carries the database's time, so the purge keeps it and a provider retry is answered
/// `AlreadyProcessed` (the handler ran once). With the guard's clock (the default) the record
/// carries the slow worker's time and the purge deletes it: the skew bound is the operator's
/// job there, as the docs say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_clock_skew_pg_database_clock_transactional_record_of_a_slow_worker_survives_the_purge() {
    let database = pg_db().await;
    let pool = database.pool();
    let config = GuardConfig::default().with_retention(Duration::from_secs(3600));
    for database_clock in [true, false] {
        let store = PgStore::new(pool.clone()).with_database_clock(database_clock);
        let slow_worker =
            WebhookGuard::new(store.clone(), ManualClock::new(Utc::now() - chrono::Duration::days(30)))
                .with_config(config);
        let purger = WebhookGuard::new(store.clone(), SystemClock).with_config(config);
        let event = key("acme", "stripe", &format!("evt_slow_worker_{database_clock}"));
        assert_eq!(pg_deliver(&slow_worker, &event, b"{}", "slow").await.unwrap(), Outcome::Processed(()));
        let purged = purger.purge().await.unwrap();
        let retry = pg_deliver(&purger, &event, b"{}", "retry").await.unwrap();
        if database_clock {
            assert_eq!(purged, 0, "a just-processed record was purged");
            assert_eq!(retry, Outcome::AlreadyProcessed);
            assert_eq!(pg_effects(pool, &event).await, 1, "the handler ran twice");
        } else {
            assert_eq!(purged, 1, "guard-clock mode stores the slow worker's time");
            assert_eq!(retry, Outcome::Processed(()));
        }
    }
}

/// The duplicate flood under a SERIALIZABLE default: while 4 tasks flood duplicates of
/// processed events (their reads, first inside claims, then autocommit once the adaptive order
/// tips, take predicate locks on the key index's pages), 24 fresh events whose handlers write
/// their effect are delivered at once. No fresh event is cancelled by a serialization failure
/// (at its claim or at COMMIT after its handler ran): each is processed on its first delivery,
/// exactly once. The flood costs fresh events time, never their processing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn toctou_dedupe_pg_serializable_default_duplicate_flood_never_fails_fresh_events() {
    let database = pg_db().await;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" SET default_transaction_isolation = 'serializable'",
        database.name()
    ))
    .execute(database.pool())
    .await
    .unwrap();
    let pool =
        sqlx::postgres::PgPoolOptions::new().max_connections(24).connect(database.url()).await.unwrap();
    let guard = Arc::new(WebhookGuard::new(PgStore::new(pool.clone()), SystemClock));
    let targets: Vec<EventKey> =
        (0..3).map(|n| key("acme", "stripe", &format!("evt_ser_flood_{n}"))).collect();
    for target in &targets {
        assert_eq!(pg_deliver(&guard, target, b"{}", "w").await.unwrap(), Outcome::Processed(()));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut flooders = Vec::new();
    for flooder in 0..4 {
        let (guard, stop, targets) = (Arc::clone(&guard), Arc::clone(&stop), targets.clone());
        flooders.push(tokio::spawn(async move {
            let mut sent = 0usize;
            while !stop.load(Ordering::SeqCst) || sent < 30 {
                let target = &targets[(sent + flooder) % targets.len()];
                let outcome = pg_deliver(&guard, target, b"{}", "flood").await;
                assert!(
                    matches!(outcome, Ok(Outcome::AlreadyProcessed)),
                    "flood delivery {sent}: {outcome:?}"
                );
                sent += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    for round in 0..2 {
        let barrier = Arc::new(tokio::sync::Barrier::new(12));
        let mut deliveries = Vec::new();
        for n in 0..12 {
            let (guard, barrier) = (Arc::clone(&guard), Arc::clone(&barrier));
            let event = key("acme", "stripe", &format!("evt_ser_fresh_{round}_{n}"));
            deliveries.push(tokio::spawn(async move {
                barrier.wait().await;
                let outcome = pg_deliver(&guard, &event, b"{}", "fresh").await;
                (event, format!("{outcome:?}"))
            }));
        }
        for delivery in deliveries {
            let (event, outcome) = delivery.await.unwrap();
            assert_eq!(outcome, "Ok(Processed(()))", "{event:?}");
            assert_eq!(pg_effects(&pool, &event).await, 1, "{event:?}");
        }
    }
    stop.store(true, Ordering::SeqCst);
    for flooder in flooders {
        flooder.await.unwrap();
    }
    for target in &targets {
        assert_eq!(pg_effects(&pool, target).await, 1, "{target:?}");
    }
}
