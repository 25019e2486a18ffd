//! The Stripe-Signature parser and verifier on arbitrary bytes: typed errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_webhooks::signature::{StripeVerifier, parse_stripe_header};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_stripe_header(&text);
    if let Ok(verifier) = StripeVerifier::new(["whsec_fuzz"]) {
        let _ = verifier.verify_header(&text, data, &sos_core::SystemClock);
    }
});
