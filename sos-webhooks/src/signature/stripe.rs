//! Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…]`, HMAC-SHA256 over `<t>.<body>` keyed
//! with the literal `whsec_…` string.

use std::time::Duration;

use sos_core::Clock;

use super::{DEFAULT_TOLERANCE, Keys, check_tolerance, decode_hex32, header_str, hmac, parse_timestamp};
use crate::error::{Error, Result};

const HEADER: &str = "stripe-signature";

/// A parsed `Stripe-Signature` header: its timestamp and its `v1` signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StripeHeader<'h> {
    timestamp: i64,
    timestamp_text: &'h str,
    raw: &'h str,
    v1_count: usize,
}

impl<'h> StripeHeader<'h> {
    /// The signed timestamp, Unix seconds.
    pub fn timestamp(&self) -> i64 {
        self.timestamp
    }

    /// How many `v1` signatures the header carries (more than one during a secret rotation).
    pub fn v1_count(&self) -> usize {
        self.v1_count
    }

    /// The decoded `v1` signatures, in header order.
    pub fn v1_signatures(&self) -> impl Iterator<Item = [u8; 32]> + Clone + 'h {
        self.raw.split(',').filter_map(|pair| pair.strip_prefix("v1=")).filter_map(decode_hex32)
    }
}

/// Parses a `Stripe-Signature` header value.
///
/// The header is comma-separated `key=value` pairs. Exactly one `t`, at least one `v1`; every
/// `v1` must be 64 hex characters. Other schemes (`v0`, future ones) are ignored.
///
/// # Errors
///
/// [`Error::MalformedHeader`] for anything else.
pub fn parse_stripe_header(header: &str) -> Result<StripeHeader<'_>> {
    let mut timestamp = None;
    let mut timestamp_text = "";
    let mut v1_count = 0usize;
    for pair in header.split(',') {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(Error::MalformedHeader { header: HEADER, reason: "an item is not key=value" });
        };
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(Error::MalformedHeader { header: HEADER, reason: "it has more than one t" });
                }
                timestamp = Some(parse_timestamp(value, HEADER)?);
                timestamp_text = value;
            }
            "v1" => {
                if decode_hex32(value).is_none() {
                    return Err(Error::MalformedHeader {
                        header: HEADER,
                        reason: "a v1 signature is not 64 lowercase hex characters",
                    });
                }
                v1_count += 1;
            }
            _ => {}
        }
    }
    let Some(timestamp) = timestamp else {
        return Err(Error::MalformedHeader { header: HEADER, reason: "it has no t=<timestamp>" });
    };
    if v1_count == 0 {
        return Err(Error::MalformedHeader { header: HEADER, reason: "it has no v1 signature" });
    }
    Ok(StripeHeader { timestamp, timestamp_text, raw: header, v1_count })
}

/// The `Stripe-Signature` value Stripe would send for `body` at `timestamp` under `secret`.
pub fn sign_stripe(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac(secret.as_bytes(), &[timestamp.as_bytes(), b".", body]);
    format!("t={timestamp},v1={}", hex::encode(mac))
}

/// Verifies Stripe webhook signatures.
///
/// ```
/// use sos_core::SystemClock;
/// use sos_webhooks::signature::{StripeVerifier, sign_stripe};
///
/// let verifier = StripeVerifier::new(["whsec_new", "whsec_old"])?;
/// let body = br#"{"id":"evt_1"}"#;
/// let header = sign_stripe("whsec_old", chrono::Utc::now().timestamp(), body);
/// verifier.verify_header(&header, body, &SystemClock)?;
/// # Ok::<(), sos_webhooks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StripeVerifier {
    keys: Keys,
    tolerance: Duration,
}

impl StripeVerifier {
    /// The header Stripe signs with.
    pub const SIGNATURE_HEADER: &'static str = HEADER;

    /// A verifier accepting any of `secrets` (each the literal `whsec_…` string), with the
    /// default tolerance of 300 s.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] when no secret is given or one is empty.
    pub fn new<I, S>(secrets: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let secrets: Vec<S> = secrets.into_iter().collect();
        Ok(Self {
            keys: Keys::new(secrets.iter().map(|s| s.as_ref().as_bytes()))?,
            tolerance: DEFAULT_TOLERANCE,
        })
    }

    /// Replaces the timestamp tolerance (applied both into the past and the future).
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// Verifies a request from its headers and raw body.
    ///
    /// # Errors
    ///
    /// [`Error::MissingHeader`], [`Error::MalformedHeader`], [`Error::NoMatchingSignature`],
    /// [`Error::TimestampOutsideTolerance`].
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8], clock: &dyn Clock) -> Result<()> {
        self.verify_header(header_str(headers, HEADER)?, body, clock)
    }

    /// Verifies a raw `Stripe-Signature` value against the raw body.
    ///
    /// # Errors
    ///
    /// As [`StripeVerifier::verify`], without the missing-header case.
    pub fn verify_header(&self, header: &str, body: &[u8], clock: &dyn Clock) -> Result<()> {
        let parsed = parse_stripe_header(header)?;
        // The signed string holds the timestamp exactly as sent, so the header's own text is used.
        if !self.keys.any_matches(&[parsed.timestamp_text.as_bytes(), b".", body], parsed.v1_signatures()) {
            return Err(Error::NoMatchingSignature { header: HEADER });
        }
        check_tolerance(parsed.timestamp, clock, self.tolerance)
    }
}
