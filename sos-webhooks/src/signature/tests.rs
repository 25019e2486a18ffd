use std::time::Duration;

use chrono::{TimeZone as _, Utc};
use proptest::prelude::*;
use sos_core::ManualClock;

use super::*;
use crate::Error;

fn clock_at(unix: i64) -> ManualClock {
    ManualClock::new(Utc.timestamp_opt(unix, 0).single().expect("a valid test timestamp"))
}

// Source: GitHub Docs, "Validating webhook deliveries", section "Testing the webhook payload
// validation" (secret "It's a Secret to Everybody", payload "Hello, World!").
#[test]
fn github_published_vector() {
    let expected = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    assert_eq!(sign_github("It's a Secret to Everybody", b"Hello, World!"), expected);
    let verifier = GithubVerifier::new(["It's a Secret to Everybody"]).unwrap();
    verifier.verify_header(expected, b"Hello, World!").unwrap();
    assert!(matches!(
        verifier.verify_header(expected, b"Hello, World?"),
        Err(Error::NoMatchingSignature { header: "x-hub-signature-256" })
    ));
}

// Source: Slack API docs, "Verifying requests from Slack" (api.slack.com/authentication/
// verifying-requests-from-slack), the worked example with signing secret
// 8f742231b10e8888abcd99yyyzzz85a5 and timestamp 1531420618.
const SLACK_DOC_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";

#[test]
fn slack_published_vector() {
    let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
    assert_eq!(
        sign_slack("8f742231b10e8888abcd99yyyzzz85a5", 1_531_420_618, SLACK_DOC_BODY.as_bytes()),
        expected
    );
    let verifier = SlackVerifier::new(["8f742231b10e8888abcd99yyyzzz85a5"]).unwrap();
    verifier
        .verify_header(expected, "1531420618", SLACK_DOC_BODY.as_bytes(), &clock_at(1_531_420_618 + 60))
        .unwrap();
}

// Source: the Standard Webhooks reference libraries' signing test (standard-webhooks/
// standard-webhooks, libraries/*, "test_sign_function" / svix-webhooks): secret
// whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw, id msg_p5jXN8AQM9LWM0D4loKWxJek, timestamp 1614265330.
#[test]
fn standard_webhooks_published_vector() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let body = br#"{"test": 2432232314}"#;
    let expected = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(sign_standard(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, body).unwrap(), expected);
    let verifier = StandardWebhooksVerifier::new([secret]).unwrap();
    let clock = clock_at(1_614_265_330);
    verifier.verify_header("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", expected, body, &clock).unwrap();
    // Several signatures, space-separated, one of them right (a rotation in progress).
    let several = format!("v1,bm9wZQ== {expected}");
    assert!(
        parse_standard_signature_header(&several).is_err(),
        "a v1 entry that is not 32 bytes is malformed"
    );
    let several = format!("v1a,bm9wZQ== v1,{} {expected}", base64_encode(&[7u8; 32]));
    verifier.verify_header("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", &several, body, &clock).unwrap();
}

#[test]
fn standard_webhooks_id_with_dot_is_refused() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let verifier = StandardWebhooksVerifier::new([secret]).unwrap();
    let signature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    let result = verifier.verify_header("msg.1", "1614265330", signature, b"{}", &clock_at(1_614_265_330));
    assert!(matches!(result, Err(Error::MalformedHeader { header: "webhook-id", .. })));
    assert!(sign_standard(secret, "a.b", 1, b"").is_err());
}

#[test]
fn stripe_rotation_keeps_every_v1() {
    let body = b"{\"id\":\"evt_1\"}";
    let old = sign_stripe("whsec_old", 1_700_000_000, body);
    let new = sign_stripe("whsec_new", 1_700_000_000, body);
    let new_v1 = new.split_once(",v1=").unwrap().1;
    let header = format!("{old},v1={new_v1},v0=ignored");
    let parsed = parse_stripe_header(&header).unwrap();
    assert_eq!(parsed.v1_count(), 2);
    assert_eq!(parsed.timestamp(), 1_700_000_000);
    let clock = clock_at(1_700_000_010);
    StripeVerifier::new(["whsec_new"]).unwrap().verify_header(&header, body, &clock).unwrap();
    StripeVerifier::new(["whsec_old"]).unwrap().verify_header(&header, body, &clock).unwrap();
    StripeVerifier::new(["whsec_other", "whsec_new"]).unwrap().verify_header(&new, body, &clock).unwrap();
    assert!(matches!(
        StripeVerifier::new(["whsec_other"]).unwrap().verify_header(&header, body, &clock),
        Err(Error::NoMatchingSignature { .. })
    ));
}

#[test]
fn timestamp_tolerance_both_directions() {
    let body = b"{}";
    let header = sign_stripe("whsec_a", 1_700_000_000, body);
    let verifier = StripeVerifier::new(["whsec_a"]).unwrap().with_tolerance(Duration::from_secs(300));
    verifier.verify_header(&header, body, &clock_at(1_700_000_300)).unwrap();
    verifier.verify_header(&header, body, &clock_at(1_699_999_700)).unwrap();
    assert!(matches!(
        verifier.verify_header(&header, body, &clock_at(1_700_000_301)),
        Err(Error::TimestampOutsideTolerance { timestamp: 1_700_000_000, .. })
    ));
    assert!(matches!(
        verifier.verify_header(&header, body, &clock_at(1_699_999_699)),
        Err(Error::TimestampOutsideTolerance { .. })
    ));
    let slack = SlackVerifier::new(["s"]).unwrap();
    let signature = sign_slack("s", 1_700_000_000, body);
    assert!(matches!(
        slack.verify_header(&signature, "1700000000", body, &clock_at(1_700_001_000)),
        Err(Error::TimestampOutsideTolerance { .. })
    ));
}

#[test]
fn missing_and_malformed_headers_are_typed() {
    let headers = http::HeaderMap::new();
    let clock = clock_at(0);
    assert!(matches!(
        StripeVerifier::new(["whsec_a"]).unwrap().verify(&headers, b"", &clock),
        Err(Error::MissingHeader { header: "stripe-signature" })
    ));
    assert!(matches!(
        GithubVerifier::new(["a"]).unwrap().verify(&headers, b""),
        Err(Error::MissingHeader { header: "x-hub-signature-256" })
    ));
    assert!(matches!(
        ShopifyVerifier::new(["a"]).unwrap().verify(&headers, b""),
        Err(Error::MissingHeader { header: "x-shopify-hmac-sha256" })
    ));
    assert!(matches!(
        SlackVerifier::new(["a"]).unwrap().verify(&headers, b"", &clock),
        Err(Error::MissingHeader { .. })
    ));
    assert!(matches!(
        StandardWebhooksVerifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])
            .unwrap()
            .verify(&headers, b"", &clock),
        Err(Error::MissingHeader { header: "webhook-id" })
    ));
    for bad in ["", "t=1", "v1=00", "t=x,v1=00", "t=1,t=2,v1=00", "garbage", "t=-1,v1=ab"] {
        assert!(matches!(parse_stripe_header(bad), Err(Error::MalformedHeader { .. })), "{bad:?}");
    }
    for bad in ["", "sha1=abc", "sha256=zz", "sha256="] {
        assert!(matches!(parse_github_signature(bad), Err(Error::MalformedHeader { .. })), "{bad:?}");
    }
    assert!(parse_shopify_hmac("not base64!").is_err());
    assert!(parse_slack_signature("v1=00").is_err());
    assert!(StripeVerifier::new(Vec::<String>::new()).is_err());
    assert!(GithubVerifier::new([""]).is_err());
    assert!(StandardWebhooksVerifier::new(["whsec_!!!"]).is_err());
}

#[test]
fn verify_through_header_map() {
    let body = b"{\"id\":1}";
    let mut headers = http::HeaderMap::new();
    headers.insert("x-shopify-hmac-sha256", sign_shopify("s", body).parse().unwrap());
    ShopifyVerifier::new(["s"]).unwrap().verify(&headers, body).unwrap();
    headers.insert("x-hub-signature-256", sign_github("s", body).parse().unwrap());
    GithubVerifier::new(["t", "s"]).unwrap().verify(&headers, body).unwrap();
    let clock = clock_at(1_700_000_000);
    headers.insert("webhook-id", "msg_1".parse().unwrap());
    headers.insert("webhook-timestamp", "1700000000".parse().unwrap());
    let secret = format!("whsec_{}", base64_encode(b"0123456789abcdef"));
    headers.insert(
        "webhook-signature",
        sign_standard(&secret, "msg_1", 1_700_000_000, body).unwrap().parse().unwrap(),
    );
    StandardWebhooksVerifier::new([secret]).unwrap().verify(&headers, body, &clock).unwrap();
}

#[test]
fn duplicated_signed_headers_are_refused() {
    let body = b"{}";
    let mut headers = http::HeaderMap::new();
    headers.append("x-hub-signature-256", sign_github("s", body).parse().unwrap());
    headers.append("x-hub-signature-256", "sha256=00".parse().unwrap());
    assert!(matches!(
        GithubVerifier::new(["s"]).unwrap().verify(&headers, body),
        Err(Error::MalformedHeader { header: "x-hub-signature-256", reason: "it appears more than once" })
    ));
}

#[test]
fn non_utf8_bodies_verify() {
    let body = [0xff, 0x00, 0xfe, 0x80];
    let header = sign_github("s", &body);
    GithubVerifier::new(["s"]).unwrap().verify_header(&header, &body).unwrap();
}

#[test]
fn body_limit_refuses_while_streaming() {
    let result = futures::executor::block_on(read_body_limited(
        futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![0u8; 100]))),
        999,
    ));
    assert!(matches!(result, Err(Error::BodyTooLarge { limit: 999 })));
    let exact = futures::executor::block_on(read_body_limited(
        futures::stream::iter((0..10).map(|_| Ok::<_, std::io::Error>(vec![0u8; 100]))),
        1000,
    ))
    .unwrap();
    assert_eq!(exact.len(), 1000);
    // An endless body is refused after the limit, so this terminates.
    let endless = futures::executor::block_on(read_body_limited(
        futures::stream::repeat_with(|| Ok::<_, std::io::Error>([1u8; 64])),
        DEFAULT_BODY_LIMIT,
    ));
    assert!(matches!(endless, Err(Error::BodyTooLarge { .. })));
}

fn flip(bytes: &mut [u8], index: usize, xor: u8) {
    let len = bytes.len();
    bytes[index % len] ^= xor;
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn stripe_sign_then_verify(body in proptest::collection::vec(any::<u8>(), 0..512), ts in 1_000_000_000i64..2_000_000_000, index in any::<usize>(), xor in 1u8..) {
        let verifier = StripeVerifier::new(["whsec_prop"]).unwrap();
        let clock = clock_at(ts);
        let header = sign_stripe("whsec_prop", ts, &body);
        prop_assert!(verifier.verify_header(&header, &body, &clock).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            flip(&mut changed, index, xor);
            prop_assert!(verifier.verify_header(&header, &changed, &clock).is_err());
        }
        let mut changed_header = header.clone().into_bytes();
        flip(&mut changed_header, index, xor);
        if let Ok(changed_header) = String::from_utf8(changed_header)
            && changed_header != header {
                prop_assert!(verifier.verify_header(&changed_header, &body, &clock).is_err());
            }
    }

    #[test]
    fn standard_sign_then_verify(body in proptest::collection::vec(any::<u8>(), 0..512), ts in 1_000_000_000i64..2_000_000_000, index in any::<usize>(), xor in 1u8..) {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let verifier = StandardWebhooksVerifier::new([secret]).unwrap();
        let clock = clock_at(ts);
        let timestamp = ts.to_string();
        let signature = sign_standard(secret, "msg_1", ts, &body).unwrap();
        prop_assert!(verifier.verify_header("msg_1", &timestamp, &signature, &body, &clock).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            flip(&mut changed, index, xor);
            prop_assert!(verifier.verify_header("msg_1", &timestamp, &signature, &changed, &clock).is_err());
        }
        let mut changed_ts = timestamp.clone().into_bytes();
        flip(&mut changed_ts, index, xor);
        if let Ok(changed_ts) = String::from_utf8(changed_ts) {
            prop_assert!(verifier.verify_header("msg_1", &changed_ts, &signature, &body, &clock).is_err());
        }
        let mut changed_signature = signature.clone().into_bytes();
        flip(&mut changed_signature, index, xor);
        if let Ok(changed_signature) = String::from_utf8(changed_signature) {
            prop_assert!(verifier.verify_header("msg_1", &timestamp, &changed_signature, &body, &clock).is_err());
        }
    }

    #[test]
    fn slack_sign_then_verify(body in proptest::collection::vec(any::<u8>(), 0..512), ts in 1_000_000_000i64..2_000_000_000, index in any::<usize>(), xor in 1u8..) {
        let verifier = SlackVerifier::new(["slack"]).unwrap();
        let clock = clock_at(ts);
        let timestamp = ts.to_string();
        let signature = sign_slack("slack", ts, &body);
        prop_assert!(verifier.verify_header(&signature, &timestamp, &body, &clock).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            flip(&mut changed, index, xor);
            prop_assert!(verifier.verify_header(&signature, &timestamp, &changed, &clock).is_err());
        }
        let mut changed_ts = timestamp.clone().into_bytes();
        flip(&mut changed_ts, index, xor);
        if let Ok(changed_ts) = String::from_utf8(changed_ts) {
            prop_assert!(verifier.verify_header(&signature, &changed_ts, &body, &clock).is_err());
        }
        let mut changed_signature = signature.clone().into_bytes();
        flip(&mut changed_signature, index, xor);
        if let Ok(changed_signature) = String::from_utf8(changed_signature) {
            prop_assert!(verifier.verify_header(&changed_signature, &timestamp, &body, &clock).is_err());
        }
    }

    #[test]
    fn github_and_shopify_sign_then_verify(body in proptest::collection::vec(any::<u8>(), 0..512), index in any::<usize>(), xor in 1u8..) {
        let github = GithubVerifier::new(["gh"]).unwrap();
        let shopify = ShopifyVerifier::new(["sh"]).unwrap();
        let github_signature = sign_github("gh", &body);
        let shopify_signature = sign_shopify("sh", &body);
        prop_assert!(github.verify_header(&github_signature, &body).is_ok());
        prop_assert!(shopify.verify_header(&shopify_signature, &body).is_ok());
        if !body.is_empty() {
            let mut changed = body.clone();
            flip(&mut changed, index, xor);
            prop_assert!(github.verify_header(&github_signature, &changed).is_err());
            prop_assert!(shopify.verify_header(&shopify_signature, &changed).is_err());
        }
        for signature in [github_signature, shopify_signature] {
            let mut changed = signature.clone().into_bytes();
            flip(&mut changed, index, xor);
            if let Ok(changed) = String::from_utf8(changed) {
                prop_assert!(github.verify_header(&changed, &body).is_err());
                prop_assert!(shopify.verify_header(&changed, &body).is_err());
            }
        }
    }

    // Mirrors of the fuzz targets: random bytes into every header parser never panic.
    #[test]
    fn header_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_stripe_header(&text);
        let _ = parse_standard_signature_header(&text);
        let _ = parse_github_signature(&text);
        let _ = parse_slack_signature(&text);
        let _ = parse_shopify_hmac(&text);
    }

    // Mirrors of the fuzz targets' verifier halves: random header values and bodies get a
    // typed error, never a panic.
    #[test]
    fn verifiers_never_panic_on_random_headers(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let clock = clock_at(1_700_000_000);
        let mut parts = text.splitn(3, '\n');
        let (first, second, third) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        prop_assert!(StripeVerifier::new(["whsec_fuzz"]).unwrap().verify_header(&text, &bytes, &clock).is_err());
        prop_assert!(GithubVerifier::new(["fuzz"]).unwrap().verify_header(&text, &bytes).is_err());
        prop_assert!(ShopifyVerifier::new(["fuzz"]).unwrap().verify_header(&text, &bytes).is_err());
        prop_assert!(SlackVerifier::new(["fuzz"]).unwrap().verify_header(first, second, &bytes, &clock).is_err());
        let standard = StandardWebhooksVerifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]).unwrap();
        prop_assert!(standard.verify_header(first, second, third, &bytes, &clock).is_err());
    }
}
