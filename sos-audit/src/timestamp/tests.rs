//! Unit tests of the timestamp module against an exchange recorded with `openssl ts` (see
//! `testdata/make.sh`): the query and reply were made by OpenSSL, not by this crate.

use der::Decode as _;
use proptest::prelude::*;

use super::*;

const MESSAGE: &[u8] = include_bytes!("testdata/message.txt");
const QUERY: &[u8] = include_bytes!("testdata/query.tsq");
const REPLY: &[u8] = include_bytes!("testdata/reply.tsr");
const TOKEN: &[u8] = include_bytes!("testdata/token.der");
const CERTIFICATE: &[u8] = include_bytes!("testdata/tsa.der");
const NONCE_HEX: &str = include_str!("testdata/nonce.txt");

fn certificate() -> TsaCertificate {
    TsaCertificate::from_der(CERTIFICATE).expect("the fixture certificate is a valid TSA certificate")
}

fn recorded_request() -> TimestampRequest {
    let nonce = u64::from_str_radix(NONCE_HEX.trim(), 16).expect("nonce.txt holds the 64-bit nonce in hex");
    TimestampRequest::with_nonce(MESSAGE, nonce).expect("a request encodes")
}

#[test]
fn request_is_byte_identical_to_openssl_ts_query() {
    // `openssl ts -query -data message.txt -sha256 -cert` with the same nonce.
    assert_eq!(recorded_request().as_der(), QUERY);
}

#[test]
fn request_with_high_bit_nonce_is_a_positive_integer() {
    let request = TimestampRequest::with_nonce(b"bytes", u64::MAX).expect("a request encodes");
    let decoded = TimeStampReq::from_der(request.as_der()).expect("our request decodes");
    let nonce = decoded.nonce.expect("the nonce is present");
    assert_eq!(nonce.as_bytes(), [0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    assert!(decoded.cert_req);
    assert_eq!(decoded.message_imprint.hash_algorithm.oid, ID_SHA_256);
    assert_eq!(decoded.message_imprint.hashed_message.as_bytes(), Sha256::digest(b"bytes").as_slice());
}

#[test]
fn fresh_requests_have_fresh_nonces() {
    let first = TimestampRequest::new(MESSAGE).expect("a request encodes");
    let second = TimestampRequest::new(MESSAGE).expect("a request encodes");
    assert_eq!(first.message_imprint(), second.message_imprint());
    assert_ne!(first.as_der(), second.as_der(), "two requests must not share a nonce");
}

#[test]
fn recorded_openssl_reply_verifies() {
    let token =
        recorded_request().verify_response(REPLY, &certificate()).expect("the recorded reply verifies");
    assert_eq!(token.policy(), "1.2.3.4.1");
    assert_eq!(token.hash_algorithm(), HashAlgorithm::Sha256);
    assert_eq!(token.serial_number(), [1]);
    assert_eq!(token.message_imprint().as_slice(), Sha256::digest(MESSAGE).as_slice());
    let nonce = u64::from_str_radix(NONCE_HEX.trim(), 16).expect("hex nonce");
    let nonce_bytes = token.nonce().expect("the nonce is echoed");
    let value = nonce_bytes.iter().fold(0u128, |value, byte| (value << 8) | u128::from(*byte));
    assert_eq!(value, u128::from(nonce));
    // The token we keep is exactly the one `openssl ts -reply -token_out` extracts.
    assert_eq!(token.as_der(), TOKEN);
}

#[test]
fn stored_openssl_token_reverifies() {
    let token = TimestampToken::verify(TOKEN, MESSAGE, &certificate()).expect("the stored token verifies");
    assert_eq!(token.as_der(), TOKEN);
    assert!(matches!(
        TimestampToken::verify(TOKEN, b"other bytes", &certificate()),
        Err(Error::TimestampImprintMismatch)
    ));
}

#[test]
fn reply_to_another_nonce_is_rejected() {
    let nonce = u64::from_str_radix(NONCE_HEX.trim(), 16).expect("hex nonce");
    let request = TimestampRequest::with_nonce(MESSAGE, nonce.wrapping_add(1)).expect("a request encodes");
    assert!(matches!(request.verify_response(REPLY, &certificate()), Err(Error::TimestampNonceMismatch)));
}

#[test]
fn every_truncation_of_the_reply_is_a_typed_error() {
    let request = recorded_request();
    let certificate = certificate();
    for length in 0..REPLY.len() {
        let result = request.verify_response(&REPLY[..length], &certificate);
        assert!(
            matches!(result, Err(Error::TimestampMalformed { .. })),
            "prefix of {length} bytes: {result:?}"
        );
    }
    for length in 0..TOKEN.len() {
        let result = TimestampToken::verify(&TOKEN[..length], MESSAGE, &certificate);
        assert!(
            matches!(result, Err(Error::TimestampMalformed { .. })),
            "prefix of {length} bytes: {result:?}"
        );
    }
}

#[test]
fn certificate_loads_from_pem_and_rejects_garbage() {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(CERTIFICATE);
    let lines: Vec<&str> =
        body.as_bytes().chunks(64).map(|line| std::str::from_utf8(line).expect("base64 is ASCII")).collect();
    let pem = format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"));
    let loaded = TsaCertificate::from_pem(&pem).expect("PEM loads");
    assert_eq!(loaded.as_der(), CERTIFICATE);
    assert_eq!(loaded.key_algorithm(), "RSA");
    assert!(loaded.subject().contains("sos-audit fixture TSA"));
    assert!(matches!(TsaCertificate::from_der(b"not a certificate"), Err(Error::TsaCertificate { .. })));
    assert!(matches!(TsaCertificate::from_pem("not PEM"), Err(Error::TsaCertificate { .. })));
}

fn generalized(text: &str) -> Result<DateTime<Utc>> {
    parse_generalized_time(&Any::new(Tag::GeneralizedTime, text.as_bytes()).expect("a short value"))
}

#[test]
fn generalized_time_accepts_rfc_3161_fractions() {
    let whole = generalized("20261123105401Z").expect("whole seconds");
    assert_eq!(whole.to_rfc3339(), "2026-11-23T10:54:01+00:00");
    let millis = generalized("20261123105401.277Z").expect("milliseconds");
    assert_eq!(millis.timestamp_subsec_millis(), 277);
    let nanos = generalized("20261123105401.000000001Z").expect("nanoseconds");
    assert_eq!(nanos.timestamp_subsec_nanos(), 1);
}

#[test]
fn generalized_time_rejects_what_rfc_3161_forbids() {
    for text in [
        "20261123105401.270Z",        // trailing zero in the fraction
        "20261123105401.Z",           // empty fraction
        "20261123105401.0000000001Z", // more than nanoseconds
        "20261123105401",             // no Z
        "20261123105401+0100",        // local offset
        "202611231054Z",              // no seconds
        "20261323105401Z",            // month 13
        "20261123245401Z",            // hour 24
        "2026112310540aZ",            // not a digit
        "+0261123105401Z",            // a sign
    ] {
        assert!(matches!(generalized(text), Err(Error::TimestampMalformed { .. })), "{text} was accepted");
    }
    let utc_time = Any::new(Tag::UtcTime, b"261123105401Z".as_slice()).expect("a short value");
    assert!(parse_generalized_time(&utc_time).is_err());
}

#[test]
fn failure_info_names_the_rfc_3161_bits() {
    let bits = BitString::from_bytes(&[0b1000_0100, 0b0000_0000, 0b0000_0001]).expect("bit string");
    let failure = FailureInfo::from_bit_string(&bits);
    assert!(failure.contains(FailureInfo::BAD_ALG));
    assert!(failure.contains(FailureInfo::BAD_DATA_FORMAT));
    assert!(failure.contains(23));
    assert!(!failure.contains(FailureInfo::SYSTEM_FAILURE));
    assert_eq!(failure.to_string(), "badAlg, badDataFormat, bit 23");
    assert_eq!(FailureInfo::default().to_string(), "none given");
    assert!(!FailureInfo::default().contains(40));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The mirror of the `timestamp_response` fuzz target: arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let request = recorded_request();
        let certificate = certificate();
        prop_assert!(request.verify_response(&bytes, &certificate).is_err());
        prop_assert!(TimestampToken::verify(&bytes, MESSAGE, &certificate).is_err());
    }

    /// Damage anywhere in a real reply never panics, and never yields a token for other bytes.
    /// (Some damage is harmless by design: the certificates a TSA includes are not signed.)
    #[test]
    fn damaged_reply_never_panics(position in 0..REPLY.len(), mask in 1..=255u8, cut in 0..=REPLY.len()) {
        let mut damaged = REPLY.to_vec();
        damaged[position] ^= mask;
        damaged.truncate(cut.max(position + 1));
        let request = recorded_request();
        if let Ok(token) = request.verify_response(&damaged, &certificate()) {
            prop_assert_eq!(token.message_imprint(), request.message_imprint());
            prop_assert_eq!(token.gen_time(), TimestampToken::verify(TOKEN, MESSAGE, &certificate()).expect("valid").gen_time());
        }
    }
}
