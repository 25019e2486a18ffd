//! GitHub: `X-Hub-Signature-256: sha256=<hex>`, HMAC-SHA256 over the body. Nothing timestamped
//! is signed, so the dedupe store is the replay defence; key it by
//! [`EventId::of_body`](crate::EventId::of_body), not by `X-GitHub-Delivery`, which is not
//! signed (a replay under a fresh delivery id would be a new key).

use super::{Keys, decode_hex32, header_str, hmac};
use crate::error::{Error, Result};

const HEADER: &str = "x-hub-signature-256";

/// Parses an `X-Hub-Signature-256` value: `sha256=` and 64 hex characters.
///
/// # Errors
///
/// [`Error::MalformedHeader`] for anything else.
pub fn parse_github_signature(header: &str) -> Result<[u8; 32]> {
    let hex = header
        .strip_prefix("sha256=")
        .ok_or(Error::MalformedHeader { header: HEADER, reason: "it does not start with sha256=" })?;
    decode_hex32(hex).ok_or(Error::MalformedHeader {
        header: HEADER,
        reason: "the signature is not 64 lowercase hex characters",
    })
}

/// The `X-Hub-Signature-256` value GitHub would send for `body` under `secret`.
pub fn sign_github(secret: &str, body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac(secret.as_bytes(), &[body])))
}

/// Verifies GitHub webhook signatures.
///
/// ```
/// use sos_webhooks::signature::GithubVerifier;
///
/// // The example published in GitHub's docs, "Validating webhook deliveries".
/// let verifier = GithubVerifier::new(["It's a Secret to Everybody"])?;
/// verifier.verify_header(
///     "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17",
///     b"Hello, World!",
/// )?;
/// # Ok::<(), sos_webhooks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct GithubVerifier {
    keys: Keys,
}

impl GithubVerifier {
    /// The header GitHub signs with.
    pub const SIGNATURE_HEADER: &'static str = HEADER;

    /// A verifier accepting any of `secrets`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSecret`] when no secret is given or one is empty.
    pub fn new<I, S>(secrets: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<[u8]>,
    {
        Ok(Self { keys: Keys::new(secrets)? })
    }

    /// Verifies a request from its headers and raw body.
    ///
    /// # Errors
    ///
    /// [`Error::MissingHeader`], [`Error::MalformedHeader`], [`Error::NoMatchingSignature`].
    pub fn verify(&self, headers: &http::HeaderMap, body: &[u8]) -> Result<()> {
        self.verify_header(header_str(headers, HEADER)?, body)
    }

    /// Verifies a raw `X-Hub-Signature-256` value against the raw body.
    ///
    /// # Errors
    ///
    /// As [`GithubVerifier::verify`], without the missing-header case.
    pub fn verify_header(&self, header: &str, body: &[u8]) -> Result<()> {
        let signature = parse_github_signature(header)?;
        if self.keys.any_matches(&[body], std::iter::once(signature)) {
            Ok(())
        } else {
            Err(Error::NoMatchingSignature { header: HEADER })
        }
    }
}
