//! Reading a request body with a size limit enforced while it streams in.

use futures::{Stream, StreamExt as _};

use crate::error::{Error, Result};

/// The default body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

/// Refuses a request up front when its `Content-Length` header declares more than `limit` bytes,
/// so that a server answers `413` without reading (or waiting for) the body.
///
/// Only a declared length over the limit decides anything: an absent, malformed or smaller one
/// passes, and [`read_body_limited`] still enforces the limit on the bytes that arrive.
///
/// ```
/// use sos_webhooks::signature::check_declared_length;
///
/// let mut headers = http::HeaderMap::new();
/// headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("2000000"));
/// assert!(check_declared_length(&headers, 1024 * 1024).is_err());
/// headers.insert(http::header::CONTENT_LENGTH, http::HeaderValue::from_static("20"));
/// assert!(check_declared_length(&headers, 1024 * 1024).is_ok());
/// ```
///
/// # Errors
///
/// [`Error::BodyTooLarge`] when the declared length exceeds `limit`.
pub fn check_declared_length(headers: &http::HeaderMap, limit: usize) -> Result<()> {
    for value in headers.get_all(http::header::CONTENT_LENGTH) {
        // Digits only; a length too large for u64 is over any limit.
        let declared =
            value.to_str().ok().filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()));
        if let Some(digits) = declared {
            let over = digits.parse::<u64>().map_or(true, |length| length > limit as u64);
            if over {
                return Err(Error::BodyTooLarge { limit });
            }
        }
    }
    Ok(())
}

/// Collects a body from a stream of chunks, refusing it as soon as it grows past `limit` bytes.
///
/// The limit is checked on the bytes actually received, never on a `Content-Length` the sender
/// claims, and reading stops at the first chunk that crosses it.
///
/// ```
/// # futures::executor::block_on(async {
/// use sos_webhooks::signature::read_body_limited;
///
/// let chunks = futures::stream::iter([Ok::<_, std::io::Error>(&b"{\"id\":"[..]), Ok(&b"1}"[..])]);
/// assert_eq!(read_body_limited(chunks, 1024).await?, b"{\"id\":1}");
///
/// let endless = futures::stream::repeat_with(|| Ok::<_, std::io::Error>([0u8; 4096]));
/// assert!(read_body_limited(endless, 1024 * 1024).await.is_err());
/// # Ok::<(), sos_webhooks::Error>(())
/// # }).unwrap();
/// ```
///
/// # Errors
///
/// [`Error::BodyTooLarge`] past the limit; [`Error::BodyRead`] when the stream fails.
pub async fn read_body_limited<S, B, E>(stream: S, limit: usize) -> Result<Vec<u8>>
where
    S: Stream<Item = std::result::Result<B, E>>,
    B: AsRef<[u8]>,
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut stream = std::pin::pin!(stream);
    let mut body = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| Error::BodyRead(error.into()))?;
        let chunk = chunk.as_ref();
        if chunk.len() > limit.saturating_sub(body.len()) {
            return Err(Error::BodyTooLarge { limit });
        }
        body.extend_from_slice(chunk);
    }
    Ok(body)
}
