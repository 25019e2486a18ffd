//! Shopify: `X-Shopify-Hmac-Sha256: <base64>`, HMAC-SHA256 over the body. Nothing timestamped is
//! signed, so the dedupe store is the replay defence; key it by
//! [`EventId::of_body`](crate::EventId::of_body), not by `X-Shopify-Webhook-Id`, which is not
//! signed (a replay under a fresh webhook id would be a new key).

use super::{Keys, base64_encode, decode_base64_32, header_str, hmac};
use crate::error::{Error, Result};

const HEADER: &str = "x-shopify-hmac-sha256";

/// Parses an `X-Shopify-Hmac-Sha256` value: standard base64 of 32 bytes.
///
/// # Errors
///
/// [`Error::MalformedHeader`] for anything else.
pub fn parse_shopify_hmac(header: &str) -> Result<[u8; 32]> {
    decode_base64_32(header)
        .ok_or(Error::MalformedHeader { header: HEADER, reason: "it is not base64 of a 32-byte HMAC" })
}

/// The `X-Shopify-Hmac-Sha256` value Shopify would send for `body` under `secret`.
pub fn sign_shopify(secret: &str, body: &[u8]) -> String {
    base64_encode(&hmac(secret.as_bytes(), &[body]))
}

/// Verifies Shopify webhook signatures.
///
/// ```
/// use sos_webhooks::signature::{ShopifyVerifier, sign_shopify};
///
/// let verifier = ShopifyVerifier::new(["shpss_secret"])?;
/// let body = br#"{"id":1}"#;
/// verifier.verify_header(&sign_shopify("shpss_secret", body), body)?;
/// # Ok::<(), sos_webhooks::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ShopifyVerifier {
    keys: Keys,
}

impl ShopifyVerifier {
    /// The header Shopify signs with.
    pub const SIGNATURE_HEADER: &'static str = HEADER;

    /// A verifier accepting any of `secrets` (the app's client secret, old and new).
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

    /// Verifies a raw `X-Shopify-Hmac-Sha256` value against the raw body.
    ///
    /// # Errors
    ///
    /// As [`ShopifyVerifier::verify`], without the missing-header case.
    pub fn verify_header(&self, header: &str, body: &[u8]) -> Result<()> {
        let signature = parse_shopify_hmac(header)?;
        if self.keys.any_matches(&[body], std::iter::once(signature)) {
            Ok(())
        } else {
            Err(Error::NoMatchingSignature { header: HEADER })
        }
    }
}
