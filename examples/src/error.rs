//! The JSON error contract: `{"error": {"code": "...", "message": "..."}}` with a stable code.

use axum::extract::rejection::{BytesRejection, JsonRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answered as JSON: `{"error": {"code": "...", "message": "..."}}`.
///
/// `code` is stable and machine-readable; `message` says what was wrong and what to do. Client
/// input never produces a 5xx: a 503 means "busy, retry after the `Retry-After` seconds".
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u32>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case code (`bad_json`, `unknown_tenant`, `bad_signature`, …).
    pub code: String,
    /// A sentence saying what was wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// An error with `status`, a stable `code` and a `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_secs: None }
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The stable code.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub(crate) fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub(crate) fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub(crate) fn unknown_tenant(tenant: &sos_core::TenantId) -> Self {
        Self::not_found(
            "unknown_tenant",
            format!("there is no tenant {tenant:?}; create it with PUT /v1/tenants/{tenant}"),
        )
    }

    pub(crate) fn busy(message: impl Into<String>) -> Self {
        Self { retry_after_secs: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", message) }
    }

    pub(crate) fn with_retry_after(mut self, seconds: u32) -> Self {
        self.retry_after_secs = Some(seconds);
        self
    }

    pub(crate) fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed; see its log")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_owned(), message: self.message } };
        let mut response = (self.status, axum::Json(body)).into_response();
        if let Some(seconds) = self.retry_after_secs {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

/// Whether a database error means "busy now, try again" rather than a fault.
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(database) => {
            let code = database.code().unwrap_or_default();
            // SQLite: SQLITE_BUSY (5) and SQLITE_LOCKED (6) and their extended codes.
            // PostgreSQL: serialization failure, deadlock, lock not available.
            matches!(code.as_ref(), "5" | "6" | "261" | "517" | "262" | "40001" | "40P01" | "55P03")
        }
        _ => false,
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            tracing::warn!(%error, "database busy");
            Self::busy("the database is busy; retry shortly")
        } else {
            Self::internal(error)
        }
    }
}

impl From<sos_audit::Error> for ApiError {
    fn from(error: sos_audit::Error) -> Self {
        match error {
            sos_audit::Error::InvalidEntry { .. } | sos_audit::Error::InvalidPayload { .. } => {
                Self::bad_request("invalid_record", error.to_string())
            }
            sos_audit::Error::Core(core) => Self::bad_request("invalid_record", core.to_string()),
            sos_audit::Error::UnexpectedRows { .. } => Self::new(
                StatusCode::CONFLICT,
                "concurrent_change",
                "the record changed while this request was written; read it again and retry",
            ),
            sos_audit::Error::Note(sos_audit::note::NoteError::UnknownSigner { .. }) => {
                tracing::error!(%error, "a recorded checkpoint is not signed by this server's key");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "key_mismatch",
                    "the recorded checkpoints were signed by another key than this server's; the \
                     operator must restore the signing key (or move the recorded checkpoints aside)",
                )
            }
            sos_audit::Error::Storage(source) | sos_audit::Error::HostWrite(source) => {
                match source.downcast::<sqlx::Error>() {
                    Ok(sqlx_error) => Self::from(*sqlx_error),
                    Err(other) => Self::internal(other),
                }
            }
            other => Self::internal(other),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send the body as JSON with `Content-Type: application/json`",
            ),
            JsonRejection::BytesRejection(error) => {
                Self::from_bytes_rejection(error.status(), error.body_text())
            }
            other => Self::bad_request("bad_json", other.body_text()),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(rejection: BytesRejection) -> Self {
        Self::from_bytes_rejection(rejection.status(), rejection.body_text())
    }
}

impl ApiError {
    fn from_bytes_rejection(status: StatusCode, text: String) -> Self {
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                "the body is larger than the server accepts (--max-body-bytes)",
            )
        } else {
            Self::bad_request("bad_body", text)
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request("bad_query", rejection.body_text())
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(error: anyhow::Error) -> Self {
        match error.downcast::<sqlx::Error>() {
            Ok(sqlx_error) => Self::from(sqlx_error),
            Err(error) => match error.downcast::<sos_audit::Error>() {
                Ok(audit) => Self::from(audit),
                Err(error) => Self::internal(format!("{error:#}")),
            },
        }
    }
}
