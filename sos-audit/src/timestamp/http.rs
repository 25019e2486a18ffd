//! The RFC 3161 client over HTTP (RFC 3161 §3.4).

use std::time::Duration;

use super::{MAX_TOKEN_BYTES, TimestampAuthority, TimestampRequest, TimestampToken, TsaCertificate};
use crate::{Error, Result};

/// The media type of a request body (RFC 3161 §3.4).
const QUERY_TYPE: &str = "application/timestamp-query";
/// The media type of a reply body (RFC 3161 §3.4).
const REPLY_TYPE: &str = "application/timestamp-reply";
/// The media type some older TSAs send instead of [`REPLY_TYPE`].
const LEGACY_REPLY_TYPE: &str = "application/timestamp-response";

/// Where and how [`HttpTimestampAuthority`] reaches its TSA.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HttpTsaConfig {
    /// The TSA's URL (`http` or `https`), such as `https://tsa.example/tsr`.
    pub url: String,
    /// The limit for one whole exchange (connect, send, read). Default 30 s.
    pub timeout: Duration,
    /// The largest reply read, in bytes. Default 64 KiB; at most [`MAX_TOKEN_BYTES`].
    pub max_response_bytes: usize,
}

impl HttpTsaConfig {
    /// A configuration for `url` with the default timeout and reply limit.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into(), timeout: Duration::from_secs(30), max_response_bytes: 64 * 1024 }
    }

    /// Sets [`HttpTsaConfig::timeout`].
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sets [`HttpTsaConfig::max_response_bytes`].
    pub fn max_response_bytes(mut self, max_response_bytes: usize) -> Self {
        self.max_response_bytes = max_response_bytes;
        self
    }
}

/// An RFC 3161 TSA reached over HTTP: each call posts a fresh [`TimestampRequest`] and verifies
/// the reply against the request and the configured [`TsaCertificate`].
#[derive(Debug, Clone)]
pub struct HttpTimestampAuthority {
    client: reqwest::Client,
    url: reqwest::Url,
    certificate: TsaCertificate,
    max_response_bytes: usize,
}

impl HttpTimestampAuthority {
    /// A client for the TSA at `config.url` whose tokens must be signed by `certificate`.
    ///
    /// # Errors
    ///
    /// [`Error::TsaUrl`] when the URL is not an `http` or `https` URL, and
    /// [`Error::TsaUnreachable`] when the HTTP client cannot be built.
    pub fn new(config: HttpTsaConfig, certificate: TsaCertificate) -> Result<Self> {
        let url = reqwest::Url::parse(&config.url).map_err(|error| Error::TsaUrl {
            url: config.url.chars().take(200).collect(),
            reason: error.to_string(),
        })?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(Error::TsaUrl {
                url: url.to_string(),
                reason: "the scheme is not http or https".to_owned(),
            });
        }
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            .build()
            .map_err(|error| Error::TsaUnreachable { url: url.to_string(), source: Box::new(error) })?;
        Ok(Self {
            client,
            url,
            certificate,
            max_response_bytes: config.max_response_bytes.min(MAX_TOKEN_BYTES),
        })
    }

    /// The TSA certificate tokens are checked against.
    pub fn certificate(&self) -> &TsaCertificate {
        &self.certificate
    }

    async fn exchange(&self, request: &TimestampRequest) -> Result<Vec<u8>> {
        let unreachable = |error: reqwest::Error| Error::TsaUnreachable {
            url: self.url.to_string(),
            source: Box::new(error),
        };
        let mut response = self
            .client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, QUERY_TYPE)
            .body(request.as_der().to_vec())
            .send()
            .await
            .map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(Error::TsaHttpStatus {
                url: self.url.to_string(),
                status: response.status().as_u16(),
            });
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let media_type = content_type.split(';').next().unwrap_or("").trim();
        if !media_type.eq_ignore_ascii_case(REPLY_TYPE) && !media_type.eq_ignore_ascii_case(LEGACY_REPLY_TYPE)
        {
            return Err(Error::TsaContentType {
                url: self.url.to_string(),
                content_type: content_type.chars().take(200).collect(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(unreachable)? {
            if body.len() + chunk.len() > self.max_response_bytes {
                return Err(Error::TsaResponseTooLarge {
                    url: self.url.to_string(),
                    limit: self.max_response_bytes,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body)
    }
}

impl TimestampAuthority for HttpTimestampAuthority {
    async fn timestamp(&self, bytes: &[u8]) -> Result<TimestampToken> {
        let request = TimestampRequest::new(bytes)?;
        let reply = self.exchange(&request).await?;
        request.verify_response(&reply, &self.certificate)
    }
}
