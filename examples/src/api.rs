//! HTTP routes. Every handler answers JSON; every error is an [`ApiError`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sos_core::{Clock as _, TenantId};
use sos_ruliads::crm::Record;

use crate::App;
use crate::agents::{self, AgentView, NewAgent};
use crate::audit::{CheckpointView, entry_json};
use crate::error::{ApiError, ErrorBody};
use crate::signals::{self, EvaluationReport, FeedbackAnswer, FeedbackRequest, SignalView};
use crate::state::{self, RecordKind, Written};
use crate::webhooks::{self, WebhookAnswer};

/// Builds the router with every route of the reference server.
pub fn router(app: App) -> axum::Router {
    let limit = app.settings.config.max_body_bytes;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/openapi.json", get(openapi))
        .route("/v1/tenants/{tenant}", put(create_tenant).get(get_tenant))
        .route("/v1/tenants/{tenant}/webhooks/{provider}", post(receive_webhook))
        .route("/v1/tenants/{tenant}/deals", get(list_deals))
        .route("/v1/tenants/{tenant}/deals/{id}", put(put_deal).get(get_deal))
        .route("/v1/tenants/{tenant}/contacts", get(list_contacts))
        .route("/v1/tenants/{tenant}/contacts/{id}", put(put_contact).get(get_contact))
        .route("/v1/tenants/{tenant}/messages", post(post_message).get(list_messages))
        .route("/v1/tenants/{tenant}/messages/{id}", get(get_message))
        .route("/v1/tenants/{tenant}/agents", post(create_agent).get(list_agents))
        .route("/v1/tenants/{tenant}/agents/{name}", get(get_agent))
        .route("/v1/tenants/{tenant}/agents/{name}/portrait.svg", get(get_portrait))
        .route("/v1/tenants/{tenant}/evaluations", post(run_evaluation))
        .route("/v1/tenants/{tenant}/signals", get(list_signals))
        .route("/v1/tenants/{tenant}/signals/{id}", get(get_signal))
        .route("/v1/tenants/{tenant}/signals/{id}/feedback", post(post_feedback))
        .route("/v1/tenants/{tenant}/audit/entries", get(audit_entries))
        .route("/v1/tenants/{tenant}/audit/verify", get(audit_verify))
        .route("/v1/tenants/{tenant}/audit/checkpoint", get(audit_checkpoint))
        .route("/v1/tenants/{tenant}/audit/proofs/{seq}", get(audit_proof))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(app)
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "there is no such route; see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request("bad_path", rejection.body_text())
}

/// Refuses a record or signal id of the path that no stored row can have: one with a control
/// character (NUL, newline, …). PostgreSQL refuses NUL in text, so such an id must be answered
/// before it reaches a query, and alike on both backends.
fn checked_id(id: &str) -> Result<&str, ApiError> {
    if id.chars().any(char::is_control) {
        return Err(ApiError::bad_request(
            "bad_path",
            "the id in the path holds a control character (NUL, newline, …); ids are printable text",
        ));
    }
    Ok(id)
}

fn parse_tenant(text: &str) -> Result<TenantId, ApiError> {
    text.parse().map_err(|error: sos_core::Error| ApiError::bad_request("invalid_tenant", error.to_string()))
}

/// The tenant of the path, which must exist.
async fn known_tenant(app: &App, text: &str) -> Result<TenantId, ApiError> {
    let tenant = parse_tenant(text)?;
    state::require_tenant(&app.database, &tenant).await?;
    Ok(tenant)
}

fn json_object(body: &[u8]) -> Result<serde_json::Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::bad_request("bad_json", "the body must be a JSON object")),
        Err(error) => Err(ApiError::bad_request("bad_json", format!("the body is not JSON: {error}"))),
    }
}

/// Puts `tenant` and `id` into a record body, refusing a body that names others.
fn with_keys(
    mut object: serde_json::Map<String, Value>,
    tenant: &TenantId,
    id: Option<&str>,
) -> Result<Value, ApiError> {
    for (key, value) in [("tenant", Some(tenant.as_str())), ("id", id)] {
        let Some(value) = value else { continue };
        match object.get(key) {
            None => {
                object.insert(key.to_owned(), Value::String(value.to_owned()));
            }
            Some(Value::String(given)) if given == value => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "key_mismatch",
                    format!("the body's {key:?} differs from the URL's; leave it out or make them equal"),
                ));
            }
        }
    }
    Ok(Value::Object(object))
}

/// `/healthz`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// `sqlite` or `postgres`.
    pub database: String,
}

/// Liveness and database reachability.
#[utoipa::path(get, path = "/healthz", responses((status = 200, body = Health), (status = 503, body = ErrorBody)))]
async fn healthz(State(app): State<App>) -> Result<Json<Health>, ApiError> {
    app.database.ping().await.map_err(|error| {
        tracing::warn!(%error, "health check failed");
        ApiError::busy("the database does not answer")
    })?;
    Ok(Json(Health { status: "ok".to_owned(), database: app.database.backend().to_owned() }))
}

/// The OpenAPI document of this server, generated from its code.
#[utoipa::path(get, path = "/openapi.json", responses((status = 200, description = "OpenAPI 3.1 document")))]
async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], crate::openapi::document()).into_response()
}

/// A tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TenantView {
    /// The tenant id.
    pub tenant: String,
    /// Whether this request created it.
    pub created: bool,
}

/// Creates a tenant (idempotent).
#[utoipa::path(put, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path, description = "tenant id: lowercase letters, digits, '-' and '_'")),
    responses((status = 201, body = TenantView), (status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_tenant(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<TenantView>), ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = parse_tenant(&tenant)?;
    let written =
        state::create_tenant(&app.chain, &tenant, app.clock.now().timestamp_micros(), "api").await?;
    let created = written == Written::Created;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(TenantView { tenant: tenant.to_string(), created })))
}

/// Reads a tenant.
#[utoipa::path(get, path = "/v1/tenants/{tenant}", params(("tenant" = String, Path)),
    responses((status = 200, body = TenantView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_tenant(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<TenantView>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    Ok(Json(TenantView { tenant: tenant.to_string(), created: false }))
}

/// Receives a provider's webhook (`stripe` or `standard` for Standard Webhooks).
///
/// The signature is checked on the raw body; duplicates are answered from the first delivery's
/// outcome; the state change and its audit entry commit with the guard's mark.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/webhooks/{provider}",
    params(("tenant" = String, Path), ("provider" = String, Path, description = "stripe | standard")),
    request_body(content = Object, description = "the provider's event, signed", content_type = "application/json"),
    responses(
        (status = 200, body = WebhookAnswer, description = "processed, or already processed"),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody, description = "bad or missing signature"),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody, description = "same event id, other body"),
        (status = 413, body = ErrorBody),
        (status = 503, body = ErrorBody, description = "the same event is in flight; retry after Retry-After")))]
async fn receive_webhook(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<WebhookAnswer>), ApiError> {
    let Path((tenant, provider)) = path.map_err(path_error)?;
    let tenant = parse_tenant(&tenant)?;
    let body = body?;
    let (status, answer) = webhooks::receive(&app, &tenant, &provider, &headers, &body).await?;
    Ok((status, Json(answer)))
}

/// A stored record.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordView {
    /// Whether this request created it.
    pub created: bool,
    /// Its version, 1 on creation, one more per change.
    pub version: i64,
    /// The audit entry of this write (absent on reads).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
    /// The record.
    #[schema(value_type = Object)]
    pub record: Value,
}

/// A list of records.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RecordList {
    /// The records, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub records: Vec<Value>,
}

/// The query of list endpoints.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct ListQuery {
    /// The most items to return (1 to 1000, default 100).
    pub(crate) limit: Option<i64>,
}

fn limit_of(query: Result<Query<ListQuery>, QueryRejection>) -> Result<i64, ApiError> {
    let Query(query) = query?;
    Ok(query.limit.unwrap_or(100).clamp(1, 1000))
}

async fn put_record(
    app: &App,
    tenant: &str,
    id: &str,
    kind: RecordKind,
    body: &[u8],
) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    let id = checked_id(id)?;
    let tenant = known_tenant(app, tenant).await?;
    let object = json_object(body)?;
    let value = with_keys(object, &tenant, Some(id))?;
    let record = match kind {
        RecordKind::Deal => serde_json::from_value(value).map(Record::Deal),
        RecordKind::Contact => serde_json::from_value(value).map(Record::Contact),
        RecordKind::Message => serde_json::from_value(value).map(Record::Message),
    }
    .map_err(|error| ApiError::bad_request("invalid_record", format!("the {}: {error}", kind.as_str())))?;
    store_record(app, &record).await
}

async fn store_record(app: &App, record: &Record) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    let (written, version, seq) =
        state::write_record(&app.chain, record, app.clock.now().timestamp_micros(), "api").await?;
    let created = written == Written::Created;
    let record = match record {
        Record::Deal(deal) => serde_json::to_value(deal),
        Record::Contact(contact) => serde_json::to_value(contact),
        Record::Message(message) => serde_json::to_value(message),
        _ => Ok(Value::Null),
    }
    .map_err(ApiError::internal)?;
    Ok((
        if created { StatusCode::CREATED } else { StatusCode::OK },
        Json(RecordView { created, version, audit_seq: Some(seq), record }),
    ))
}

async fn get_record(
    app: &App,
    tenant: &str,
    id: &str,
    kind: RecordKind,
) -> Result<Json<RecordView>, ApiError> {
    let id = checked_id(id)?;
    let tenant = known_tenant(app, tenant).await?;
    match state::read_record(&app.database, &tenant, kind, id).await? {
        Some(stored) => Ok(Json(RecordView {
            created: false,
            version: stored.version,
            audit_seq: None,
            record: stored.body,
        })),
        None => Err(ApiError::not_found(
            match kind {
                RecordKind::Deal => "unknown_deal",
                RecordKind::Contact => "unknown_contact",
                RecordKind::Message => "unknown_message",
            },
            format!("tenant {tenant} has no {} {id:?}", kind.as_str()),
        )),
    }
}

async fn list_records(
    app: &App,
    tenant: &str,
    kind: RecordKind,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    let tenant = known_tenant(app, tenant).await?;
    let limit = limit_of(query)?;
    Ok(Json(RecordList { records: state::list_records(&app.database, &tenant, kind, limit).await? }))
}

/// Creates or replaces a deal (audited in the same transaction).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/deals/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    request_body(content = crate::openapi::DealInput, content_type = "application/json"),
    responses((status = 201, body = RecordView), (status = 200, body = RecordView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn put_deal(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    put_record(&app, &tenant, &id, RecordKind::Deal, &body?).await
}

/// Reads a deal.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/deals/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = RecordView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_deal(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RecordView>, ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    get_record(&app, &tenant, &id, RecordKind::Deal).await
}

/// Lists deals.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/deals", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = RecordList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_deals(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    list_records(&app, &tenant, RecordKind::Deal, query).await
}

/// Creates or replaces a contact (audited in the same transaction).
#[utoipa::path(put, path = "/v1/tenants/{tenant}/contacts/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    request_body(content = crate::openapi::ContactInput, content_type = "application/json"),
    responses((status = 201, body = RecordView), (status = 200, body = RecordView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn put_contact(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    put_record(&app, &tenant, &id, RecordKind::Contact, &body?).await
}

/// Reads a contact.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/contacts/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = RecordView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_contact(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RecordView>, ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    get_record(&app, &tenant, &id, RecordKind::Contact).await
}

/// Lists contacts.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/contacts", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = RecordList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_contacts(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    list_records(&app, &tenant, RecordKind::Contact, query).await
}

/// Stores a message (audited in the same transaction); agents observe it.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/messages", params(("tenant" = String, Path)),
    request_body(content = crate::openapi::MessageInput, content_type = "application/json"),
    responses((status = 201, body = RecordView), (status = 200, body = RecordView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn post_message(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<RecordView>), ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let object = json_object(&body?)?;
    let value = with_keys(object, &tenant, None)?;
    let message = serde_json::from_value(value)
        .map_err(|error| ApiError::bad_request("invalid_record", format!("the message: {error}")))?;
    store_record(&app, &Record::Message(message)).await
}

/// Reads a message.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/messages/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = RecordView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_message(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<RecordView>, ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    get_record(&app, &tenant, &id, RecordKind::Message).await
}

/// Lists messages, oldest first.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/messages", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = RecordList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_messages(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<RecordList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    list_records(&app, &tenant, RecordKind::Message, query).await
}

/// Registers an agent: identity vector, traits, registry entry and its vertical's pack; it is
/// planted, introduces itself, and observes before it speaks.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/agents", params(("tenant" = String, Path)),
    request_body(content = NewAgent, content_type = "application/json"),
    responses((status = 201, body = AgentView), (status = 200, body = AgentView), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_agent(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<(StatusCode, Json<AgentView>), ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let request: NewAgent = serde_json::from_slice(&body?)
        .map_err(|error| ApiError::bad_request("bad_json", format!("the agent: {error}")))?;
    let (status, view) = agents::register(&app, &tenant, request, app.clock.now(), "api").await?;
    if status == StatusCode::CREATED {
        // The introduction goes out now, not at the next evaluation.
        if let Err(error) = signals::deliver_pending(&app, &tenant).await {
            tracing::warn!(
                code = error.code(),
                "delivering the introduction failed; the next evaluation retries"
            );
        }
    }
    Ok((status, Json(view)))
}

/// The tenant's agents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentList {
    /// The agents, by name.
    pub agents: Vec<AgentView>,
}

/// Lists agents.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents", params(("tenant" = String, Path)),
    responses((status = 200, body = AgentList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_agents(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<AgentList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let mut views = Vec::new();
    for agent in agents::load_all(&app, &tenant).await? {
        if let Some(pack) = app.settings.packs.get(&agent.vertical).cloned() {
            views.push(agents::view(&app, &agent, &pack).await?);
        }
    }
    Ok(Json(AgentList { agents: views }))
}

async fn find_agent(app: &App, tenant: &str, name: &str) -> Result<agents::Agent, ApiError> {
    let tenant = known_tenant(app, tenant).await?;
    let name = agents::parse_name(name)
        .map_err(|_| ApiError::not_found("unknown_agent", "no agent has that name"))?;
    agents::load(app, &tenant, &name)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_agent", format!("tenant {tenant} has no agent {name}")))
}

/// Reads an agent.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/{name}", params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, body = AgentView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_agent(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<AgentView>, ApiError> {
    let Path((tenant, name)) = path.map_err(path_error)?;
    let agent = find_agent(&app, &tenant, &name).await?;
    let pack = app
        .settings
        .packs
        .get(&agent.vertical)
        .cloned()
        .ok_or_else(|| ApiError::not_found("unknown_vertical", "the agent's pack is no longer loaded"))?;
    Ok(Json(agents::view(&app, &agent, &pack).await?))
}

/// The agent's deterministic SVG portrait (a recognition aid, not authentication).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/agents/{name}/portrait.svg", params(("tenant" = String, Path), ("name" = String, Path)),
    responses((status = 200, content_type = "image/svg+xml", body = String), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_portrait(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path((tenant, name)) = path.map_err(path_error)?;
    let agent = find_agent(&app, &tenant, &name).await?;
    let svg = sos_identity::Portrait::of(&agent.vector()).into_svg();
    Ok(([(header::CONTENT_TYPE, "image/svg+xml")], svg).into_response())
}

/// Runs the evaluation now: every agent's ruliads, trust gates, routing and delivery.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/evaluations", params(("tenant" = String, Path)),
    responses((status = 200, body = EvaluationReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn run_evaluation(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<EvaluationReport>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    Ok(Json(signals::evaluate(&app, &tenant).await?))
}

/// The tenant's signals.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignalList {
    /// Newest first.
    pub signals: Vec<SignalView>,
}

/// Lists signals, newest first, with their status, withholding reason and receipts.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/signals", params(("tenant" = String, Path), ListQuery),
    responses((status = 200, body = SignalList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn list_signals(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<SignalList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let limit = limit_of(query)?;
    Ok(Json(SignalList { signals: signals::list(&app, &tenant, limit).await? }))
}

/// Reads a signal.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/signals/{id}", params(("tenant" = String, Path), ("id" = String, Path)),
    responses((status = 200, body = SignalView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn get_signal(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<SignalView>, ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    checked_id(&id)?;
    let tenant = known_tenant(&app, &tenant).await?;
    signals::get(&app, &tenant, &id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown_signal", format!("tenant {tenant} has no signal {id:?}")))
}

/// People's answer to a delivered signal; it moves the agent's trust gate.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/signals/{id}/feedback", params(("tenant" = String, Path), ("id" = String, Path)),
    request_body(content = FeedbackRequest, content_type = "application/json"),
    responses((status = 200, body = FeedbackAnswer), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn post_feedback(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Result<Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Json<FeedbackAnswer>, ApiError> {
    let Path((tenant, id)) = path.map_err(path_error)?;
    checked_id(&id)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let request: FeedbackRequest = serde_json::from_slice(&body?)
        .map_err(|error| ApiError::bad_request("bad_json", format!("the feedback: {error}")))?;
    Ok(Json(signals::feedback(&app, &tenant, &id, request.verdict).await?))
}

/// The query of `GET …/audit/entries`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub(crate) struct EntriesQuery {
    /// Entries after this sequence number (default 0: from the start).
    pub(crate) after: Option<u64>,
    /// The most entries (1 to 1000, default 100).
    pub(crate) limit: Option<u32>,
}

/// A page of the audit chain, in the JSON of the CLI's `export` (one object per JSONL line).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct EntryList {
    /// The entries, by sequence number.
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<Value>,
}

/// Lists audit entries.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit/entries", params(("tenant" = String, Path), EntriesQuery),
    responses((status = 200, body = EntryList), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_entries(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<EntriesQuery>, QueryRejection>,
) -> Result<Json<EntryList>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let entries = app.chain.entries(&tenant, query.after.unwrap_or(0), limit).await?;
    Ok(Json(EntryList { entries: entries.iter().map(entry_json).collect() }))
}

/// The verifier's answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct VerifyView {
    /// Whether every entry checked out.
    pub intact: bool,
    /// How many entries were checked.
    pub entries: u64,
    /// The head, `seq:hash`, when intact and not empty.
    pub head: Option<String>,
    /// The first bad entry and why, when tampered.
    pub finding: Option<String>,
}

/// Verifies the tenant's chain, as `sos-audit verify` does.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit/verify", params(("tenant" = String, Path)),
    responses((status = 200, body = VerifyView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_verify(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<VerifyView>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let view = match app.chain.verify(&tenant).await? {
        sos_audit::Verdict::Intact(chain) => VerifyView {
            intact: true,
            entries: chain.entries,
            head: chain.head.map(|head| head.to_string()),
            finding: None,
        },
        sos_audit::Verdict::Tampered { finding, entries_checked, .. } => VerifyView {
            intact: false,
            entries: entries_checked,
            head: None,
            finding: Some(finding.to_string()),
        },
    };
    Ok(Json(view))
}

/// The latest checkpoint of the chain, signed (C2SP signed note).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit/checkpoint", params(("tenant" = String, Path)),
    responses((status = 200, body = CheckpointView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_checkpoint(
    State(app): State<App>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<CheckpointView>, ApiError> {
    let Path(tenant) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    if app.chain.entries(&tenant, 0, 1).await?.is_empty() {
        return Err(ApiError::not_found(
            "empty_chain",
            format!("tenant {tenant}'s chain has no entry to checkpoint yet"),
        ));
    }
    Ok(Json(app.checkpoints.now(&tenant).await?))
}

/// The inclusion proof of entry `seq` against the latest signed checkpoint (signed now when the
/// entry is newer), as `sos-audit prove` prints it: `{"tenant", "seq", "entry_hash", "proof":
/// {"index", "size", "hashes"}, "checkpoint"}`.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/audit/proofs/{seq}", params(("tenant" = String, Path), ("seq" = u64, Path)),
    responses((status = 200, description = "the inclusion proof", body = Object), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn audit_proof(
    State(app): State<App>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<sos_audit::tlog::EntryProof>, ApiError> {
    let Path((tenant, seq)) = path.map_err(path_error)?;
    let tenant = known_tenant(&app, &tenant).await?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_request("bad_path", "the sequence number must be a positive integer"))?;
    match app.checkpoints.prove(&tenant, seq).await {
        Ok(proof) => Ok(Json(proof)),
        Err(sos_audit::Error::EntryNotFound { .. } | sos_audit::Error::Proof(_)) => {
            Err(ApiError::not_found("unknown_entry", format!("tenant {tenant}'s chain has no entry {seq}")))
        }
        Err(error) => Err(error.into()),
    }
}

/// The OpenAPI document, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "sos-server",
        description = "The SOS reference server: webhooks, audited CRM state, agents, signals and the audit chain."
    ),
    paths(
        healthz,
        openapi,
        create_tenant,
        get_tenant,
        receive_webhook,
        put_deal,
        get_deal,
        list_deals,
        put_contact,
        get_contact,
        list_contacts,
        post_message,
        get_message,
        list_messages,
        create_agent,
        list_agents,
        get_agent,
        get_portrait,
        run_evaluation,
        list_signals,
        get_signal,
        post_feedback,
        audit_entries,
        audit_verify,
        audit_checkpoint,
        audit_proof
    )
)]
pub(crate) struct ApiDoc;
