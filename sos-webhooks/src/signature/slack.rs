//! Slack: `X-Slack-Signature: v0=<hex>` with `X-Slack-Request-Timestamp`, HMAC-SHA256 over
//! `v0:<timestamp>:<body>`.

use std::time::Duration;

use sos_core::Clock;

use super::{DEFAULT_TOLERANCE, Keys, check_tolerance, decode_hex32, header_str, hmac, parse_timestamp};
use crate::error::{Error, Result};

const SIGNATURE_HEADER: &str = "x-slack-signature";
const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";

/// Parses an `X-Slack-Signature` value: `v0=` and 64 hex characters.
///
/// # Errors
///
/// [`Error::MalformedHeader`] for anything else.
pub fn parse_slack_signature(header: &str) -> Result<[u8; 32]> {
    let hex = header
        .strip_prefix("v0=")
        .ok_or(Error::MalformedHeader { header: SIGNATURE_HEADER, reason: "it does not start with v0=" })?;
    decode_hex32(hex).ok_or(Error::MalformedHeader {
        header: SIGNATURE_HEADER,
        reason: "the signature is not 64 lowercase hex characters",
    })
}

/// The `X-Slack-Signature` value Slack would send for `body` at `timestamp` under `secret`.
pub fn sign_slack(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let timestamp = timestamp.to_string();
    let mac = hmac(secret.as_bytes(), &[b"v0:", timestamp.as_bytes(), b":", body]);
    format!("v0={}", hex::encode(mac))
}

/// Verifies Slack request signatures.
///
/// ```
/// use sos_core::SystemClock;
/// use sos_webhooks::signature::{SlackVerifier, sign_slack};
///
/// let verifier = SlackVerifier::new(["slack-signing-secret"])?;
/// let now = chrono::Utc::now().timestamp();
/// let body = b"token=x&team_id=T1";
/// let signature = sign_slack("slack-signing-secret", now, body);
/// verifier.verify_header(&signature, &now.to_string(), body, &SystemClock)?;
/// # Ok::<(), sos_webhooks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct SlackVerifier {
    keys: Keys,
    tolerance: Duration,
}

impl SlackVerifier {
    /// The header Slack signs with.
    pub const SIGNATURE_HEADER: &'static str = SIGNATURE_HEADER;
    /// The header carrying the signed timestamp.
    pub const TIMESTAMP_HEADER: &'static str = TIMESTAMP_HEADER;

    /// A verifier accepting any of `secrets`, with the default tolerance of 300 s.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] when no secret is given or one is empty.
    pub fn new<I, S>(secrets: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Ok(Self { keys: Keys::new(secrets)?, tolerance: DEFAULT_TOLERANCE })
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
        let signature = header_str(headers, SIGNATURE_HEADER)?;
        let timestamp = header_str(headers, TIMESTAMP_HEADER)?;
        self.verify_header(signature, timestamp, body, clock)
    }

    /// Verifies raw header values against the raw body.
    ///
    /// # Errors
    ///
    /// As [`SlackVerifier::verify`], without the missing-header case.
    pub fn verify_header(
        &self,
        signature: &str,
        timestamp: &str,
        body: &[u8],
        clock: &dyn Clock,
    ) -> Result<()> {
        let parsed_timestamp = parse_timestamp(timestamp, TIMESTAMP_HEADER)?;
        let signature = parse_slack_signature(signature)?;
        let parts: [&[u8]; 4] = [b"v0:", timestamp.as_bytes(), b":", body];
        if !self.keys.any_matches(&parts, std::iter::once(signature)) {
            return Err(Error::NoMatchingSignature { header: SIGNATURE_HEADER });
        }
        check_tolerance(parsed_timestamp, clock, self.tolerance)
    }
}
