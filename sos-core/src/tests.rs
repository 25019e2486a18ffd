//! Unit and property tests for `sos-core`.

use chrono::{Duration, TimeZone, Utc};
use proptest::prelude::*;

use crate::*;

fn acme() -> TenantId {
    "acme".parse().unwrap()
}

#[test]
fn tenant_accepts_the_documented_set() {
    for ok in ["a", "acme", "acme-realty", "acme_realty", "0day", &"x".repeat(64)] {
        assert_eq!(TenantId::new(ok).unwrap().as_str(), ok);
    }
}

#[test]
fn tenant_rejects_with_a_reason() {
    for bad in ["", "Acme", "acme ", " acme", "-acme", "_acme", "ac/me", "acmé", &"x".repeat(65), "a\0"] {
        let error = TenantId::new(bad).unwrap_err();
        assert!(matches!(error, Error::InvalidTenant { .. }), "{bad:?} gave {error:?}");
        assert!(error.to_string().contains("use 1 to 64 characters"), "message says what to do: {error}");
    }
}

#[test]
fn tenant_deserialize_validates() {
    assert!(serde_json::from_str::<TenantId>("\"acme\"").is_ok());
    assert!(serde_json::from_str::<TenantId>("\"ACME\"").is_err());
}

#[test]
fn signal_kind_is_a_slug() {
    assert!(SignalKind::new("stale-deal").is_ok());
    for bad in ["", "Stale", "stale_deal", "-stale", "stale-", "stale--deal", "stale deal"] {
        assert!(SignalKind::new(bad).is_err(), "{bad:?} accepted");
    }
}

#[test]
fn severity_parses_and_orders() {
    assert_eq!("warning".parse::<Severity>().unwrap(), Severity::Warning);
    assert!("urgent".parse::<Severity>().is_err());
    assert!(Severity::Info < Severity::Critical);
}

#[test]
fn digest_hex_roundtrip_and_errors() {
    let digest = Sha256Digest::of(b"abc");
    assert_eq!(Sha256Digest::from_hex(&digest.to_hex()).unwrap(), digest);
    assert_eq!(Sha256Digest::from_hex(&digest.to_hex().to_uppercase()).unwrap(), digest);
    for bad in ["", "00", &"g".repeat(64), &"0".repeat(63), &"0".repeat(66)] {
        assert!(matches!(Sha256Digest::from_hex(bad), Err(Error::InvalidDigest { .. })));
    }
}

fn sample_signal(subject: &str) -> Signal {
    Signal::builder(acme(), "stale-deal".parse().unwrap())
        .subject(subject)
        .text("9 days since the last action.")
        .severity(Severity::Notice)
        .observed_at(Utc.with_ymd_and_hms(2026, 3, 9, 9, 0, 0).unwrap())
        .cause(Sha256Digest::of(b"deal-42"))
        .evidence(serde_json::json!({ "idle_days": 9, "stage": "negotiation" }))
        .build()
        .unwrap()
}

#[test]
fn signal_roundtrips_through_json() {
    let signal = sample_signal("Deal with Acme");
    let json = serde_json::to_string(&signal).unwrap();
    assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), signal);
}

#[test]
fn format_injection_subject_is_plain_text() {
    // Named shape `format-injection`: template syntax in user text comes out unchanged.
    for subject in ["{contact_name}", "%s%s%n", "{{7*7}}", "${jndi:ldap://x}", "{0:>10}"] {
        let signal = sample_signal(subject);
        assert_eq!(signal.subject(), subject);
        let back: Signal = serde_json::from_str(&serde_json::to_string(&signal).unwrap()).unwrap();
        assert_eq!(back.subject(), subject);
    }
}

#[test]
fn signal_id_is_derived_from_tenant_kind_and_cause() {
    let first = sample_signal("Deal with Acme");
    let second = sample_signal("Deal with Acme (renamed)");
    assert_eq!(first.id(), second.id(), "same cause, same id: a replay is recognisable");
    let other = Signal::builder("globex".parse().unwrap(), "stale-deal".parse().unwrap())
        .subject("Deal with Acme")
        .text("x")
        .cause(Sha256Digest::of(b"deal-42"))
        .build()
        .unwrap();
    assert_ne!(first.id(), other.id(), "another tenant never shares an id");
}

#[test]
fn signal_rejects_empty_and_oversized_text() {
    let builder = || Signal::builder(acme(), "stale-deal".parse().unwrap());
    assert!(matches!(
        builder().subject("").text("x").build(),
        Err(Error::InvalidSignal { field: "subject", .. })
    ));
    assert!(matches!(
        builder().subject("x").text("   ").build(),
        Err(Error::InvalidSignal { field: "text", .. })
    ));
    let long = "x".repeat(Signal::MAX_TEXT_LEN + 1);
    assert!(builder().subject("x").text(long).build().is_err());
}

#[test]
fn signal_deserialize_rejects_bad_fields() {
    let mut value = serde_json::to_value(sample_signal("Deal")).unwrap();
    value["tenant"] = "Not A Tenant".into();
    assert!(serde_json::from_value::<Signal>(value.clone()).is_err());
    value["tenant"] = "acme".into();
    value["subject"] = "".into();
    assert!(serde_json::from_value::<Signal>(value.clone()).is_err());
    value["subject"] = "ok".into();
    value["cause"] = "zz".into();
    assert!(serde_json::from_value::<Signal>(value.clone()).is_err());
    value["cause"] = Sha256Digest::ZERO.to_hex().into();
    value["unexpected"] = 1.into();
    assert!(serde_json::from_value::<Signal>(value).is_err(), "unknown fields are refused");
}

#[test]
fn manual_clock_moves_only_when_told() {
    let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let clock = ManualClock::new(start);
    let shared = clock.clone();
    assert_eq!(clock.now(), start);
    shared.advance(Duration::hours(5));
    assert_eq!(clock.now(), start + Duration::hours(5));
    clock.set(start - Duration::days(1));
    assert_eq!(shared.now(), start - Duration::days(1));
    let system = SystemClock;
    assert!(system.now() > start);
}

#[tokio::test]
async fn memory_channel_acknowledges_only_what_it_kept() {
    // Named shape `false-delivery`: a refusing or failing channel never reports delivered.
    let channel = MemoryChannel::new();
    let signal = sample_signal("Deal");
    let dyn_channel: &dyn Channel = &channel;
    assert_eq!(dyn_channel.deliver(&signal).await.message_id(), Some("memory-1"));
    channel.reject_with("channel archived");
    let rejected = channel.deliver(&signal).await;
    assert!(!rejected.is_acknowledged());
    assert_eq!(rejected.message_id(), None);
    channel.fail_with("timeout");
    assert!(matches!(channel.deliver(&signal).await, DeliveryReceipt::Failed { .. }));
    assert_eq!(channel.delivered().len(), 1);
    channel.accept();
    assert_eq!(channel.deliver(&signal).await.message_id(), Some("memory-2"));
}

#[test]
fn receipt_serializes_with_a_status_tag() {
    let receipt = DeliveryReceipt::Acknowledged { message_id: "1700000000.000100".into() };
    let json = serde_json::to_value(&receipt).unwrap();
    assert_eq!(json, serde_json::json!({ "status": "acknowledged", "message_id": "1700000000.000100" }));
}

/// Reads the vector block of `docs/hashing.md` and checks every line.
#[test]
fn hashing_vectors_from_docs() {
    let doc = include_str!("../../docs/hashing.md");
    let block = doc.split("```text\n").nth(2).expect("the vector block is the second text block");
    let block = block.split("```").next().unwrap();
    let decode =
        |hex_or_dash: &str| if hex_or_dash == "-" { Vec::new() } else { hex::decode(hex_or_dash).unwrap() };
    let mut checked = 0;
    for line in block.lines().filter(|line| !line.trim().is_empty()) {
        let mut parts = line.split(' ');
        let domain = decode(parts.next().unwrap().strip_prefix("domain=").unwrap());
        let fields_text = parts.next().unwrap().strip_prefix("fields=[").unwrap().strip_suffix(']').unwrap();
        let fields: Vec<Vec<u8>> =
            if fields_text.is_empty() { Vec::new() } else { fields_text.split(',').map(decode).collect() };
        let encoding = parts.next().unwrap().strip_prefix("encoding=").unwrap();
        let expected = parts.next().unwrap().strip_prefix("digest=").unwrap();
        let domain = String::from_utf8(domain).unwrap();
        let field_refs: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        assert_eq!(digest_fields(&domain, &field_refs).unwrap().to_hex(), expected, "vector {line}");
        // The buffer encoder writes exactly the documented preimage and gives the same digest.
        let mut buffer = vec![0xaa; 3];
        let mut encoder = DomainEncoder::new(&domain, &mut buffer);
        for field in &field_refs {
            encoder.field(field).unwrap();
        }
        assert_eq!(hex::encode(encoder.as_bytes()), encoding, "vector {line}");
        assert_eq!(encoder.finish().to_hex(), expected, "vector {line}");
        checked += 1;
    }
    assert!(checked >= 5, "docs/hashing.md must hold at least five vectors, found {checked}");
}

#[test]
fn typed_integer_fields_match_raw_bytes() {
    let mut typed = DomainHasher::new("d");
    typed.u64_field(7).i64_field(-1);
    let raw = digest_fields("d", &[&7u64.to_be_bytes(), &(-1i64).to_be_bytes()]).unwrap();
    assert_eq!(typed.finish(), raw);
    let mut buffer = Vec::new();
    let mut encoded = DomainEncoder::new("d", &mut buffer);
    encoded.u64_field(7).i64_field(-1);
    assert_eq!(encoded.finish(), raw);
}

proptest! {
    #[test]
    fn tenant_parse_accepts_exactly_the_documented_set(input in "\\PC{0,70}") {
        let valid = !input.is_empty()
            && input.len() <= 64
            && input.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && input.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        prop_assert_eq!(TenantId::new(input.clone()).is_ok(), valid);
    }

    #[test]
    fn tenant_parse_roundtrips(input in "[a-z0-9][a-z0-9_-]{0,63}") {
        let tenant = TenantId::new(input.clone()).unwrap();
        prop_assert_eq!(tenant.to_string(), input);
    }

    #[test]
    fn hashing_is_injective_over_field_splits(
        fields_a in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..5),
        fields_b in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..6), 0..5),
    ) {
        // Different field lists must encode differently, even when their concatenations agree.
        let a: Vec<&[u8]> = fields_a.iter().map(Vec::as_slice).collect();
        let b: Vec<&[u8]> = fields_b.iter().map(Vec::as_slice).collect();
        let same = digest_fields("prop/v1", &a).unwrap() == digest_fields("prop/v1", &b).unwrap();
        prop_assert_eq!(same, fields_a == fields_b);
    }

    #[test]
    fn buffer_encoder_and_streaming_hasher_agree(
        domain in "\\PC{0,24}",
        fields in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 0..6),
        unsigned in any::<u64>(),
        signed in any::<i64>(),
    ) {
        let mut hasher = DomainHasher::new(&domain);
        let mut buffer = Vec::new();
        let mut encoder = DomainEncoder::new(&domain, &mut buffer);
        for field in &fields {
            hasher.field(field).unwrap();
            encoder.field(field).unwrap();
        }
        hasher.u64_field(unsigned).i64_field(signed);
        encoder.u64_field(unsigned).i64_field(signed);
        prop_assert_eq!(encoder.finish(), hasher.finish());
    }

    #[test]
    fn split_point_changes_the_digest(data in proptest::collection::vec(any::<u8>(), 2..32), cut in 1usize..31) {
        let cut = cut.min(data.len() - 1);
        let whole = digest_fields("prop/v1", &[&data]).unwrap();
        let split = digest_fields("prop/v1", &[&data[..cut], &data[cut..]]).unwrap();
        prop_assert_ne!(whole, split);
    }

    #[test]
    fn digest_hex_parser_never_panics(input in "\\PC{0,80}") {
        let _ = Sha256Digest::from_hex(&input);
    }
}

proptest! {
    /// Mirrors the fuzz target `parse_outside_input`: arbitrary bytes into every parser, no panic,
    /// and whatever parses as a signal round-trips.
    #[test]
    fn parsers_never_panic_on_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
        if let Ok(text) = std::str::from_utf8(&data) {
            let _ = text.parse::<TenantId>();
            let _ = text.parse::<SignalKind>();
            let _ = text.parse::<Sha256Digest>();
            let _ = text.parse::<Severity>();
        }
        if let Ok(signal) = serde_json::from_slice::<Signal>(&data) {
            let back: Signal = serde_json::from_slice(&serde_json::to_vec(&signal).unwrap()).unwrap();
            prop_assert_eq!(back, signal);
        }
    }

    #[test]
    fn signal_json_roundtrips(subject in "\\PC{1,60}", text in "\\PC{1,60}", days in 0i64..10_000) {
        prop_assume!(!subject.trim().is_empty() && !text.trim().is_empty());
        let signal = Signal::builder(acme(), "stale-deal".parse().unwrap())
            .subject(subject)
            .text(text)
            .observed_at(Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap() + Duration::days(days))
            .build()
            .unwrap();
        let back: Signal = serde_json::from_str(&serde_json::to_string(&signal).unwrap()).unwrap();
        prop_assert_eq!(back, signal);
    }
}
