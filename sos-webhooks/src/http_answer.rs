//! Turning outcomes and errors into the HTTP answer a provider expects.

use http::StatusCode;

use crate::error::Error;
use crate::guard::{Outcome, RunError};

/// A status code, a JSON body and an optional `Retry-After`, ready for any HTTP framework.
///
/// Providers retry on any non-2xx answer, so: processed and already-processed are `200`;
/// in flight is `503` with `Retry-After`; a prior failure or a handler error is `500` (the
/// provider's retry re-claims it); a body mismatch is `409` (someone should look); bad
/// signatures are `400`/`401`; an oversized body `413`.
///
/// ```
/// use sos_webhooks::Outcome;
///
/// let answer = Outcome::<()>::RetryInFlight.to_http();
/// assert_eq!(answer.status().as_u16(), 503);
/// assert_eq!(answer.retry_after_secs(), Some(5));
/// assert_eq!(answer.body(), r#"{"outcome":"retry_in_flight"}"#);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    status: StatusCode,
    body: String,
    retry_after_secs: Option<u32>,
}

impl HttpAnswer {
    fn new(status: StatusCode, outcome: &str, retry_after_secs: Option<u32>) -> Self {
        let body = serde_json::json!({ "outcome": outcome }).to_string();
        Self { status, body, retry_after_secs }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The JSON body, `{"outcome":"<name>"}`.
    pub fn body(&self) -> &str {
        &self.body
    }

    /// The `Retry-After` value in seconds, when the provider should come back later.
    pub fn retry_after_secs(&self) -> Option<u32> {
        self.retry_after_secs
    }

    /// As an `http::Response` with `Content-Type: application/json` (and `Retry-After`).
    pub fn into_http_response(self) -> http::Response<String> {
        let mut response = http::Response::new(self.body);
        *response.status_mut() = self.status;
        response
            .headers_mut()
            .insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from(seconds));
        }
        response
    }
}

impl<T> Outcome<T> {
    /// The HTTP answer for this outcome.
    pub fn to_http(&self) -> HttpAnswer {
        let status = match self {
            Self::Processed(_) | Self::AlreadyProcessed => StatusCode::OK,
            Self::RetryInFlight => StatusCode::SERVICE_UNAVAILABLE,
            Self::PriorAttemptFailed => StatusCode::INTERNAL_SERVER_ERROR,
            Self::BodyMismatch => StatusCode::CONFLICT,
        };
        let retry_after = matches!(self, Self::RetryInFlight).then_some(5);
        HttpAnswer::new(status, self.as_str(), retry_after)
    }
}

impl Error {
    /// The HTTP answer for this error: `400` for a missing or malformed header, `401` for a
    /// signature that does not match or a stale timestamp, `413` for an oversized body, `500`
    /// for anything else (retryable).
    pub fn to_http(&self) -> HttpAnswer {
        let (status, name) = match self {
            Self::MissingHeader { .. } => (StatusCode::BAD_REQUEST, "missing_header"),
            Self::MalformedHeader { .. } => (StatusCode::BAD_REQUEST, "malformed_header"),
            Self::InvalidKey { .. } => (StatusCode::BAD_REQUEST, "invalid_event_key"),
            Self::NoMatchingSignature { .. } => (StatusCode::UNAUTHORIZED, "bad_signature"),
            Self::TimestampOutsideTolerance { .. } => (StatusCode::UNAUTHORIZED, "stale_timestamp"),
            Self::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
        };
        HttpAnswer::new(status, name, None)
    }
}

impl<E> RunError<E> {
    /// The HTTP answer: `500` for a handler failure (the provider's retry runs it again), the
    /// error's own answer for a guard failure.
    pub fn to_http(&self) -> HttpAnswer {
        match self {
            Self::Handler(_) => HttpAnswer::new(StatusCode::INTERNAL_SERVER_ERROR, "handler_failed", None),
            Self::Guard(error) => error.to_http(),
        }
    }
}

#[cfg(feature = "axum")]
mod axum_responses {
    use axum::response::{IntoResponse, Response};

    use super::HttpAnswer;
    use crate::error::Error;
    use crate::guard::{Outcome, RunError};

    impl IntoResponse for HttpAnswer {
        fn into_response(self) -> Response {
            self.into_http_response().map(axum::body::Body::from)
        }
    }

    /// The answer of [`Outcome::to_http`]; the handler's value is not sent.
    impl<T> IntoResponse for Outcome<T> {
        fn into_response(self) -> Response {
            self.to_http().into_response()
        }
    }

    impl<E> IntoResponse for RunError<E> {
        fn into_response(self) -> Response {
            self.to_http().into_response()
        }
    }

    impl IntoResponse for Error {
        fn into_response(self) -> Response {
            self.to_http().into_response()
        }
    }
}
