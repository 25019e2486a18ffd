//! HTTP routes and the JSON error contract.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sos_core::{Clock, Severity, Sha256Digest, Signal, SignalKind, TenantId};

use crate::db::{Database, Inserted};

/// The largest request body the server reads, in bytes.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct AppState {
    database: Database,
    clock: Arc<dyn Clock>,
}

impl AppState {
    /// State over an opened database and a clock.
    pub fn new(database: Database, clock: Arc<dyn Clock>) -> Self {
        Self { database, clock }
    }
}

/// Builds the router with every route of the reference server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/signals", get(list_signals).post(create_signal))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// An error answered as JSON: `{"error": {"code": "...", "message": "..."}}`.
///
/// `code` is stable and machine-readable; `message` says what was wrong and what to do.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "the server failed; see its log")
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code, message: &self.message } };
        (self.status, Json(body)).into_response()
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
            JsonRejection::BytesRejection(error) if error.status() == StatusCode::PAYLOAD_TOO_LARGE => {
                Self::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                )
            }
            other => Self::new(StatusCode::BAD_REQUEST, "bad_json", other.body_text()),
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_query", rejection.body_text())
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
    database: &'static str,
}

async fn healthz(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.database.ping().await.map_err(ApiError::internal)?;
    Ok(Json(Health { status: "ok", database: state.database.backend() }))
}

/// The body of `POST /v1/signals`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSignal {
    tenant: TenantId,
    kind: SignalKind,
    subject: String,
    text: String,
    #[serde(default)]
    severity: Severity,
    /// Optional digest of the cause; the same cause gives the same signal id, so a repeat is
    /// recognised instead of stored twice.
    cause: Option<Sha256Digest>,
    #[serde(default)]
    evidence: serde_json::Value,
}

#[derive(Serialize)]
struct Created {
    created: bool,
    signal: Signal,
}

async fn create_signal(
    State(state): State<AppState>,
    body: Result<Json<NewSignal>, JsonRejection>,
) -> Result<(StatusCode, Json<Created>), ApiError> {
    let Json(request) = body?;
    let mut builder = Signal::builder(request.tenant, request.kind)
        .subject(request.subject)
        .text(request.text)
        .severity(request.severity)
        .observed_at(state.clock.now())
        .evidence(request.evidence);
    if let Some(cause) = request.cause {
        builder = builder.cause(cause);
    }
    let signal = builder
        .build()
        .map_err(|error| ApiError::new(StatusCode::BAD_REQUEST, "invalid_signal", error.to_string()))?;
    match state.database.insert_signal(&signal).await.map_err(ApiError::internal)? {
        Inserted::New => Ok((StatusCode::CREATED, Json(Created { created: true, signal }))),
        Inserted::Existing => Ok((StatusCode::OK, Json(Created { created: false, signal }))),
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    tenant: String,
    limit: Option<i64>,
}

#[derive(Serialize)]
struct SignalList {
    signals: Vec<Signal>,
}

async fn list_signals(
    State(state): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SignalList>, ApiError> {
    let Query(query) = query?;
    let tenant: TenantId = query.tenant.parse().map_err(|error: sos_core::Error| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_tenant", error.to_string())
    })?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let signals = state.database.list_signals(&tenant, limit).await.map_err(ApiError::internal)?;
    Ok(Json(SignalList { signals }))
}
