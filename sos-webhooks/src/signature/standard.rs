//! The Standard Webhooks spec (<https://www.standardwebhooks.com>): `webhook-id`,
//! `webhook-timestamp`, `webhook-signature: v1,<base64> [v1,<base64> …]`, HMAC-SHA256 over
//! `<id>.<timestamp>.<body>` keyed with the base64-decoded secret after `whsec_`.

use std::time::Duration;

use sos_core::Clock;

use super::{
    DEFAULT_TOLERANCE, Keys, base64_decode, base64_encode, check_tolerance, decode_base64_32, header_str,
    hmac, parse_timestamp,
};
use crate::error::{Error, Result};

const ID_HEADER: &str = "webhook-id";
const TIMESTAMP_HEADER: &str = "webhook-timestamp";
const SIGNATURE_HEADER: &str = "webhook-signature";

/// A parsed `webhook-signature` header: its `v1` signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StandardWebhooksHeader<'h> {
    raw: &'h str,
    v1_count: usize,
}

impl<'h> StandardWebhooksHeader<'h> {
    /// How many `v1` signatures the header carries.
    pub fn v1_count(&self) -> usize {
        self.v1_count
    }

    /// The decoded `v1` signatures, in header order.
    pub fn v1_signatures(&self) -> impl Iterator<Item = [u8; 32]> + Clone + 'h {
        self.raw.split(' ').filter_map(|entry| entry.strip_prefix("v1,")).filter_map(decode_base64_32)
    }
}

/// Parses a `webhook-signature` value: space-separated `<version>,<signature>` entries.
///
/// Entries of other versions (`v1a` for asymmetric signatures) are ignored; every `v1` entry
/// must be base64 of 32 bytes, and there must be at least one.
///
/// # Errors
///
/// [`Error::MalformedHeader`] for anything else.
pub fn parse_standard_signature_header(header: &str) -> Result<StandardWebhooksHeader<'_>> {
    let mut v1_count = 0usize;
    for entry in header.split(' ') {
        let Some((version, signature)) = entry.split_once(',') else {
            return Err(Error::MalformedHeader {
                header: SIGNATURE_HEADER,
                reason: "an entry is not <version>,<signature>",
            });
        };
        if version == "v1" {
            if decode_base64_32(signature).is_none() {
                return Err(Error::MalformedHeader {
                    header: SIGNATURE_HEADER,
                    reason: "a v1 signature is not base64 of 32 bytes",
                });
            }
            v1_count += 1;
        }
    }
    if v1_count == 0 {
        return Err(Error::MalformedHeader { header: SIGNATURE_HEADER, reason: "it has no v1 signature" });
    }
    Ok(StandardWebhooksHeader { raw: header, v1_count })
}

/// Checks a `webhook-id`: non-empty, and without `.` (which would make the signed string
/// `<id>.<timestamp>.<body>` ambiguous).
fn check_id(id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(Error::MalformedHeader { header: ID_HEADER, reason: "it is empty" });
    }
    if id.contains('.') {
        return Err(Error::MalformedHeader {
            header: ID_HEADER,
            reason: "it contains '.', which would make the signed content ambiguous",
        });
    }
    Ok(())
}

/// Decodes a Standard Webhooks secret: `whsec_` (optional) then standard base64.
fn decode_secret(secret: &str) -> Result<Vec<u8>> {
    let encoded = secret.strip_prefix("whsec_").unwrap_or(secret);
    base64_decode(encoded).ok_or(Error::InvalidSecret { reason: "the part after whsec_ is not base64" })
}

/// The `webhook-signature` value a sender would send for `body` with `id` at `timestamp`.
///
/// # Errors
///
/// [`Error::InvalidSecret`] when the secret is not `whsec_<base64>`; [`Error::MalformedHeader`]
/// when the id contains `.`.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Result<String> {
    check_id(id)?;
    let key = decode_secret(secret)?;
    let timestamp = timestamp.to_string();
    let mac = hmac(&key, &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body]);
    Ok(format!("v1,{}", base64_encode(&mac)))
}

/// Verifies Standard Webhooks signatures (as sent by Svix, Resend, Clerk and others).
///
/// ```
/// use chrono::TimeZone;
/// use sos_core::ManualClock;
/// use sos_webhooks::signature::StandardWebhooksVerifier;
///
/// // The test vector of the Standard Webhooks reference libraries.
/// let verifier = StandardWebhooksVerifier::new(["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"])?;
/// let clock = ManualClock::new(chrono::Utc.timestamp_opt(1_614_265_330, 0).unwrap());
/// verifier.verify_header(
///     "msg_p5jXN8AQM9LWM0D4loKWxJek",
///     "1614265330",
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
///     br#"{"test": 2432232314}"#,
///     &clock,
/// )?;
/// # Ok::<(), sos_webhooks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct StandardWebhooksVerifier {
    keys: Keys,
    tolerance: Duration,
}

impl StandardWebhooksVerifier {
    /// The header carrying the message id (also the natural dedupe key).
    pub const ID_HEADER: &'static str = ID_HEADER;
    /// The header carrying the signed timestamp.
    pub const TIMESTAMP_HEADER: &'static str = TIMESTAMP_HEADER;
    /// The header carrying the signatures.
    pub const SIGNATURE_HEADER: &'static str = SIGNATURE_HEADER;

    /// A verifier accepting any of `secrets` (each `whsec_<base64>`), tolerance 300 s.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] when no secret is given, or one is not `whsec_<base64>` of at
    /// least one byte.
    pub fn new<I, S>(secrets: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let decoded =
            secrets.into_iter().map(|secret| decode_secret(secret.as_ref())).collect::<Result<Vec<_>>>()?;
        Ok(Self { keys: Keys::new(decoded)?, tolerance: DEFAULT_TOLERANCE })
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
        let id = header_str(headers, ID_HEADER)?;
        let timestamp = header_str(headers, TIMESTAMP_HEADER)?;
        let signature = header_str(headers, SIGNATURE_HEADER)?;
        self.verify_header(id, timestamp, signature, body, clock)
    }

    /// Verifies raw header values against the raw body.
    ///
    /// # Errors
    ///
    /// As [`StandardWebhooksVerifier::verify`], without the missing-header case.
    pub fn verify_header(
        &self,
        id: &str,
        timestamp: &str,
        signature: &str,
        body: &[u8],
        clock: &dyn Clock,
    ) -> Result<()> {
        check_id(id)?;
        let parsed_timestamp = parse_timestamp(timestamp, TIMESTAMP_HEADER)?;
        let parsed = parse_standard_signature_header(signature)?;
        let parts: [&[u8]; 5] = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body];
        if !self.keys.any_matches(&parts, parsed.v1_signatures()) {
            return Err(Error::NoMatchingSignature { header: SIGNATURE_HEADER });
        }
        check_tolerance(parsed_timestamp, clock, self.tolerance)
    }
}
