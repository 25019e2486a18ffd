//! RFC 3161 replies, stored tokens and TSA certificates from outside: typed errors, never a panic.
//! Seed the corpus with `../src/timestamp/testdata/reply.tsr` and `token.der` (recorded from
//! `openssl ts`); the property tests in `src/timestamp/tests.rs` mirror this target.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_audit::timestamp::{TimestampRequest, TimestampToken, TsaCertificate};

const MESSAGE: &[u8] = include_bytes!("../../src/timestamp/testdata/message.txt");
const CERTIFICATE: &[u8] = include_bytes!("../../src/timestamp/testdata/tsa.der");
const NONCE_HEX: &str = include_str!("../../src/timestamp/testdata/nonce.txt");

fuzz_target!(|data: &[u8]| {
    let certificate = TsaCertificate::from_der(CERTIFICATE).expect("the fixture certificate loads");
    let nonce = u64::from_str_radix(NONCE_HEX.trim(), 16).expect("the fixture nonce is hex");
    let request = TimestampRequest::with_nonce(MESSAGE, nonce).expect("a request encodes");
    let _ = request.verify_response(data, &certificate);
    let _ = TimestampToken::verify(data, MESSAGE, &certificate);
    let _ = TsaCertificate::from_der(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = TsaCertificate::from_pem(text);
    }
});
