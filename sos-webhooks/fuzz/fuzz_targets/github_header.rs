//! The X-Hub-Signature-256 parser and verifier on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_webhooks::signature::{GithubVerifier, parse_github_signature};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_github_signature(&text);
    if let Ok(verifier) = GithubVerifier::new(["fuzz"]) {
        let _ = verifier.verify_header(&text, data);
    }
});
