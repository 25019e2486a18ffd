//! Provider signature verification on the raw body bytes, in constant time.
//!
//! Each provider has a verifier that holds one or more secrets (several during a rotation),
//! checks every signature the provider sent against every secret, and checks the signed
//! timestamp against a [`Clock`] in both directions. The `parse_*` functions are the header
//! parsers on their own (fuzzed), and the `sign_*` functions produce what the provider would
//! send, for tests and for senders.
//!
//! Verification allocates nothing: each secret's HMAC state is keyed once, when the verifier is
//! built, and cloned per check; signatures are decoded into stack buffers.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sos_core::Clock;
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

mod body;
mod github;
mod shopify;
mod slack;
mod standard;
mod stripe;

#[cfg(test)]
mod tests;

pub use body::{DEFAULT_BODY_LIMIT, check_declared_length, read_body_limited};
pub use github::{GithubVerifier, parse_github_signature, sign_github};
pub use shopify::{ShopifyVerifier, parse_shopify_hmac, sign_shopify};
pub use slack::{SlackVerifier, parse_slack_signature, sign_slack};
pub use standard::{
    StandardWebhooksHeader, StandardWebhooksVerifier, parse_standard_signature_header, sign_standard,
};
pub use stripe::{StripeHeader, StripeVerifier, parse_stripe_header, sign_stripe};

/// The default timestamp tolerance: five minutes either side of now, as Stripe, Slack and the
/// Standard Webhooks spec recommend.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

type HmacSha256 = Hmac<Sha256>;

/// The keyed HMAC states of an endpoint's secrets (one per secret, in rotation order).
#[derive(Clone)]
pub(crate) struct Keys {
    keys: Vec<HmacSha256>,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        write!(f, "Keys({} secret(s), redacted)", self.keys.len())
    }
}

impl Keys {
    /// Keys an HMAC state for each secret. Refuses an empty list and empty secrets.
    pub(crate) fn new<I, K>(secrets: I) -> Result<Self>
    where
        I: IntoIterator<Item = K>,
        K: AsRef<[u8]>,
    {
        let mut keys = Vec::new();
        for secret in secrets {
            let secret = secret.as_ref();
            if secret.is_empty() {
                return Err(Error::InvalidSecret { reason: "it is empty" });
            }
            keys.push(keyed(secret));
        }
        if keys.is_empty() {
            return Err(Error::InvalidSecret { reason: "no secret was given; give at least one" });
        }
        Ok(Self { keys })
    }

    /// Whether any secret's MAC over the concatenated `parts` equals any of `candidates`.
    ///
    /// Each comparison is constant time; the loop stops at the first match, which reveals only
    /// that some signature matched (what the caller answers anyway).
    pub(crate) fn any_matches<I>(&self, parts: &[&[u8]], candidates: I) -> bool
    where
        I: Iterator<Item = [u8; 32]> + Clone,
    {
        self.keys.iter().any(|key| {
            let tag = mac_of(key.clone(), parts);
            candidates.clone().any(|candidate| bool::from(tag.ct_eq(&candidate)))
        })
    }
}

/// An HMAC-SHA256 state keyed with `secret`.
pub(crate) fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of every length (long keys are hashed first), so this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC-SHA256 accepts a key of any length")
}

/// The MAC of the concatenation of `parts` under `key`.
pub(crate) fn mac_of(mut key: HmacSha256, parts: &[&[u8]]) -> [u8; 32] {
    for part in parts {
        key.update(part);
    }
    key.finalize().into_bytes().into()
}

/// HMAC-SHA256 of the concatenated `parts` under `secret`.
pub(crate) fn hmac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    mac_of(keyed(secret), parts)
}

/// Decodes exactly 64 lowercase hex characters (what every provider sends; accepting other
/// spellings of the same bytes would let a changed header still verify).
pub(crate) fn decode_hex32(input: &str) -> Option<[u8; 32]> {
    if !input.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(input, &mut out).ok()?;
    Some(out)
}

/// Decodes standard base64 that holds exactly 32 bytes.
pub(crate) fn decode_base64_32(input: &str) -> Option<[u8; 32]> {
    // 32 bytes are 44 base64 characters; anything else cannot be a SHA-256 MAC. The buffer has
    // room for the decoder's worst case so that it never reports a short buffer.
    if input.len() != 44 {
        return None;
    }
    let mut out = [0u8; 33];
    match BASE64.decode_slice(input, &mut out) {
        Ok(32) => {
            let mut mac = [0u8; 32];
            mac.copy_from_slice(&out[..32]);
            Some(mac)
        }
        _ => None,
    }
}

/// Parses a Unix timestamp in seconds: 1 to 12 ASCII digits, nothing else.
pub(crate) fn parse_timestamp(input: &str, header: &'static str) -> Result<i64> {
    if input.is_empty() || input.len() > 12 || !input.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::MalformedHeader { header, reason: "the timestamp is not 1 to 12 decimal digits" });
    }
    input.parse().map_err(|_| Error::MalformedHeader { header, reason: "the timestamp is not a number" })
}

/// Checks `timestamp` against the clock, in both directions.
pub(crate) fn check_tolerance(timestamp: i64, clock: &dyn Clock, tolerance: Duration) -> Result<()> {
    let now = clock.now().timestamp();
    let tolerance_secs = tolerance.as_secs();
    let distance = now.abs_diff(timestamp);
    if distance > tolerance_secs {
        return Err(Error::TimestampOutsideTolerance { timestamp, now, tolerance_secs });
    }
    Ok(())
}

/// A header's value as text, or a typed error when it is absent or not visible ASCII.
pub(crate) fn header_str<'h>(headers: &'h http::HeaderMap, name: &'static str) -> Result<&'h str> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(Error::MissingHeader { header: name })?;
    // Two copies of a signed header are ambiguous: a proxy and this verifier could each act on
    // a different one (one verified, the other used), so both are refused.
    if values.next().is_some() {
        return Err(Error::MalformedHeader { header: name, reason: "it appears more than once" });
    }
    value.to_str().map_err(|_| Error::MalformedHeader { header: name, reason: "it is not visible ASCII" })
}

pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    BASE64.encode(bytes)
}

pub(crate) fn base64_decode(input: &str) -> Option<Vec<u8>> {
    BASE64.decode(input).ok()
}
