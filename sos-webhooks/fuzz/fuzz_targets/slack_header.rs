//! The X-Slack-Signature and timestamp parsers and verifier on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_webhooks::signature::{SlackVerifier, parse_slack_signature};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_slack_signature(&text);
    let (signature, timestamp) = text.split_once('\n').unwrap_or((&text, ""));
    if let Ok(verifier) = SlackVerifier::new(["fuzz"]) {
        let _ = verifier.verify_header(signature, timestamp, data, &sos_core::SystemClock);
    }
});
