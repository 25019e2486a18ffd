//! The X-Shopify-Hmac-Sha256 parser and verifier on arbitrary bytes: never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sos_webhooks::signature::{ShopifyVerifier, parse_shopify_hmac};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = parse_shopify_hmac(&text);
    if let Ok(verifier) = ShopifyVerifier::new(["fuzz"]) {
        let _ = verifier.verify_header(&text, data);
    }
});
