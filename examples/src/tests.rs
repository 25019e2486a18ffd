//! Unit tests of the server's small pure parts; the HTTP behaviour is tested over real HTTP in
//! the `sos-tests` package (`tests/it/server*.rs`).

use sos_core::Signal;

use crate::channel::{SlackChannel, escape};
use crate::config::{Config, ProviderKind, Settings};

fn packs() -> &'static str {
    concat!(env!("CARGO_MANIFEST_DIR"), "/packs")
}

#[test]
fn slack_escape_keeps_user_text_from_becoming_markup() {
    assert_eq!(escape("<@U123> & <!channel> {0} %s"), "&lt;@U123&gt; &amp; &lt;!channel&gt; {0} %s");
    assert_eq!(escape("plain"), "plain");
}

#[test]
fn slack_payload_is_subject_then_text() {
    let signal = Signal::builder("acme".parse().unwrap(), "stale-deal".parse().unwrap())
        .subject("Deal <x>")
        .text("9 days & counting")
        .build()
        .unwrap();
    assert_eq!(
        SlackChannel::payload(&signal),
        serde_json::json!({ "text": "*Deal &lt;x&gt;*\n9 days &amp; counting" })
    );
}

#[test]
fn provider_names_round_trip() {
    for provider in [ProviderKind::Stripe, ProviderKind::Standard] {
        assert_eq!(ProviderKind::parse(provider.as_str()), Some(provider));
    }
    assert_eq!(ProviderKind::parse("Stripe"), None);
}

#[test]
fn webhook_secrets_are_grouped_per_tenant_and_provider_and_never_echoed() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key").display().to_string();
    let config = Config::from_args([
        "sos-server",
        "--packs",
        packs(),
        "--signing-key",
        &key,
        "--webhook-secret",
        "acme:stripe=whsec_one",
        "--webhook-secret",
        "acme:stripe=whsec_two",
        "--webhook-secret",
        "globex:standard=whsec_c2VjcmV0",
    ])
    .unwrap();
    let settings = Settings::load(config).unwrap();
    assert_eq!(
        settings.verifiers.len(),
        2,
        "two secrets of one tenant and provider make one rotating verifier"
    );
    let config = Config::from_args([
        "sos-server",
        "--packs",
        packs(),
        "--signing-key",
        &key,
        "--webhook-secret",
        "acme=whsec_leak",
    ])
    .unwrap();
    let error = format!("{:#}", Settings::load(config).unwrap_err());
    assert!(!error.contains("whsec_leak"), "the secret is not echoed: {error}");
}

#[test]
fn demo_gets_its_secrets_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key").display().to_string();
    let plain =
        Settings::load(Config::from_args(["sos-server", "--packs", packs(), "--signing-key", &key]).unwrap())
            .unwrap();
    assert!(plain.verifiers.is_empty(), "no tenant accepts webhooks unless configured");
    let demo = Settings::load(
        Config::from_args(["sos-server", "--packs", packs(), "--signing-key", &key, "--demo"]).unwrap(),
    )
    .unwrap();
    let tenants: Vec<&str> = demo.verifiers.keys().map(|(tenant, _)| tenant.as_str()).collect();
    assert_eq!(tenants, ["demo", "demo"]);
}
