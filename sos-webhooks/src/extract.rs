//! The axum extractor for a webhook delivery (feature `axum`).

use axum::extract::{FromRequest, Request};

use crate::error::Error;
use crate::signature::{DEFAULT_BODY_LIMIT, check_declared_length, read_body_limited};

/// A webhook delivery as signature verification needs it: the headers and the raw body bytes,
/// read while they stream in and refused as soon as they pass `LIMIT` bytes (default 1 MiB),
/// whatever `Content-Length` says. A `Content-Length` above `LIMIT` is refused before any of the
/// body is read (a smaller one is not trusted: the limit is still enforced on the bytes).
///
/// The rejection is [`Error::BodyTooLarge`] (HTTP 413) or [`Error::BodyRead`] (HTTP 500, so the provider retries),
/// which answer with the crate's JSON body. Use it as an axum handler's last argument, then
/// verify the signature and run the guard:
///
/// ```
/// # futures::executor::block_on(async {
/// use axum::extract::FromRequest as _;
/// use sos_webhooks::WebhookRequest;
/// use sos_webhooks::signature::{GithubVerifier, sign_github};
///
/// async fn github(delivery: WebhookRequest) -> Result<&'static str, sos_webhooks::Error> {
///     GithubVerifier::new(["It's a Secret to Everybody"])?.verify(&delivery.headers, &delivery.body)?;
///     Ok("verified") // … then `guard.transactional(&key, &delivery.body, …)`
/// }
///
/// let request = axum::http::Request::post("/webhooks/github")
///     .header("x-hub-signature-256", sign_github("It's a Secret to Everybody", b"Hello, World!"))
///     .body(axum::body::Body::from("Hello, World!"))?;
/// let delivery = WebhookRequest::from_request(request, &()).await?;
/// assert_eq!(github(delivery).await?, "verified");
///
/// // A smaller limit, chosen per route: WebhookRequest::<1024>.
/// let big = axum::http::Request::post("/").body(axum::body::Body::from(vec![0u8; 2048]))?;
/// let refused = WebhookRequest::<1024>::from_request(big, &()).await;
/// assert!(matches!(refused, Err(sos_webhooks::Error::BodyTooLarge { limit: 1024 })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
pub struct WebhookRequest<const LIMIT: usize = DEFAULT_BODY_LIMIT> {
    /// The request's headers (where the signatures and timestamps are).
    pub headers: http::HeaderMap,
    /// The raw body, exactly as received.
    pub body: Vec<u8>,
}

impl<S: Send + Sync, const LIMIT: usize> FromRequest<S> for WebhookRequest<LIMIT> {
    type Rejection = Error;

    async fn from_request(request: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let (parts, body) = request.into_parts();
        check_declared_length(&parts.headers, LIMIT)?;
        let body = read_body_limited(body.into_data_stream(), LIMIT).await?;
        Ok(Self { headers: parts.headers, body })
    }
}
