//! The Standard Webhooks signature parser and verifier on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_webhooks::signature::{StandardWebhooksVerifier, parse_standard_signature_header};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_standard_signature_header(&text);
    // Split the input into id, timestamp and signature so all three headers get fuzzed.
    let mut parts = text.splitn(3, '\n');
    let (id, timestamp, signature) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if let Ok(verifier) = StandardWebhooksVerifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]) {
        let _ = verifier.verify_header(id, timestamp, signature, data, &sos_core::SystemClock);
    }
});
