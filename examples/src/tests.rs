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

mod inbound_event {
    use proptest::prelude::*;
    use serde_json::json;
    use sos_core::TenantId;
    use sos_ruliads::Entity as _;

    use crate::config::ProviderKind;
    use crate::webhooks::{Change, InboundEvent};

    fn tenant() -> TenantId {
        "acme".parse().unwrap()
    }

    fn check(body: &[u8]) -> Result<(), TestCaseError> {
        for provider in [ProviderKind::Stripe, ProviderKind::Standard] {
            match InboundEvent::parse(&tenant(), provider, Some("msg_1"), body) {
                Ok(event) => {
                    if let Change::Upsert(record) = &event.change {
                        prop_assert_eq!(record.tenant(), &tenant());
                    }
                }
                Err(error) => prop_assert_eq!(error.status().as_u16(), 400),
            }
        }
        Ok(())
    }

    proptest! {
        /// The mirror of the fuzz target `examples/fuzz/webhook_event`: arbitrary bytes.
        #[test]
        fn arbitrary_bodies_parse_or_get_a_400(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            check(&body)?;
        }

        /// Well-formed events with arbitrary fields: an upsert never leaves the URL's tenant.
        #[test]
        fn events_with_arbitrary_fields_stay_in_their_tenant(
            kind in prop_oneof![Just("deal.upserted".to_owned()), Just("contact.upserted".to_owned()),
                                Just("message.created".to_owned()), Just("payment_intent.succeeded".to_owned()),
                                "[a-z.]{0,20}"],
            named_tenant in prop_oneof![Just(None), Just(Some("acme".to_owned())), "[a-z]{1,8}".prop_map(Some)],
            id in "\\PC{0,20}",
            name in "\\PC{0,20}",
        ) {
            let mut data = json!({ "id": id, "name": name, "contact_name": name, "stage": "proposal",
                                   "subject": name, "direction": "inbound", "at": "2026-03-02T09:00:00Z",
                                   "metadata": { "deal_id": id } });
            if let Some(named) = named_tenant {
                data["tenant"] = json!(named);
            }
            let body = json!({ "id": id, "type": kind, "data": data }).to_string();
            check(body.as_bytes())?;
        }
    }

    #[test]
    fn a_stripe_payment_names_its_deal_and_other_events_change_nothing() {
        let paid =
            br#"{"id":"evt_1","type":"invoice.paid","data":{"object":{"metadata":{"deal_id":"d-1"}}}}"#;
        let event = InboundEvent::parse(&tenant(), ProviderKind::Stripe, None, paid).unwrap();
        assert_eq!(event.change, Change::DealPaid { deal_id: "d-1".to_owned() });
        let refunded =
            br#"{"id":"evt_2","type":"charge.refunded","data":{"object":{"metadata":{"deal_id":"d-1"}}}}"#;
        let event = InboundEvent::parse(&tenant(), ProviderKind::Stripe, None, refunded).unwrap();
        assert_eq!(event.change, Change::Nothing);
        let no_id = br#"{"type":"invoice.paid"}"#;
        let error = InboundEvent::parse(&tenant(), ProviderKind::Stripe, None, no_id).unwrap_err();
        assert_eq!(error.code(), "bad_event");
        let other_tenant = br#"{"type":"deal.upserted","data":{"tenant":"globex","id":"d","contact_name":"x","stage":"proposal"}}"#;
        let error =
            InboundEvent::parse(&tenant(), ProviderKind::Standard, Some("msg_1"), other_tenant).unwrap_err();
        assert_eq!(error.code(), "tenant_mismatch");
    }
}
