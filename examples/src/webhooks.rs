//! `POST /v1/tenants/{tenant}/webhooks/{provider}`: signature checked on the raw body, the
//! delivery made idempotent by `WebhookGuard` in transactional mode, and the state change
//! committed with its audit entry and the guard's mark in one transaction.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use serde::Serialize;
use serde_json::{Value, json};
use sos_audit::{ExpectRows, NewEntry};
use sos_core::{Clock as _, TenantId};
use sos_ruliads::crm::{Contact, Deal, Message, Record};
use sos_webhooks::{EventKey, GuardConfig, Outcome, PgStore, RunError, SqliteStore, WebhookGuard};

use crate::App;
use crate::audit::{Chain, Conn};
use crate::config::{ProviderKind, Verifier};
use crate::db::Database;
use crate::error::ApiError;
use crate::state;

/// The idempotency guard on the server's database.
#[derive(Debug)]
pub(crate) enum Guard {
    Sqlite(WebhookGuard<SqliteStore>),
    Postgres(WebhookGuard<PgStore>),
}

impl Guard {
    pub(crate) fn new(database: &Database, clock: std::sync::Arc<dyn sos_core::Clock>) -> Self {
        match database {
            Database::Sqlite(pool) => {
                // SQLite has one writer: let a new event wait a little for the write lock held by
                // another request instead of answering "retry" at once.
                let config = GuardConfig::default().with_busy_timeout(Duration::from_secs(1));
                Self::Sqlite(WebhookGuard::new(SqliteStore::new(pool.clone()), clock).with_config(config))
            }
            Database::Postgres(pool) => Self::Postgres(WebhookGuard::new(PgStore::new(pool.clone()), clock)),
        }
    }
}

impl Guard {
    /// Removes settled dedupe records older than the guard's retention (7 days); returns how
    /// many. A provider's redelivery after that is treated as a new event.
    pub(crate) async fn purge(&self) -> sos_webhooks::Result<u64> {
        match self {
            Self::Sqlite(guard) => guard.purge().await,
            Self::Postgres(guard) => guard.purge().await,
        }
    }
}

/// What a processed webhook did.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct WebhookAnswer {
    /// `processed` (this delivery ran the handler) or `already_processed` (a duplicate).
    pub outcome: String,
    /// What changed: `deal_won`, `deal_upserted`, `contact_upserted`, `message_upserted` or
    /// `recorded` (only the audit entry); absent for a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    /// The audit entry's sequence number in the tenant's chain; absent for a duplicate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audit_seq: Option<u64>,
}

/// A provider's event, parsed from its (already verified) body into the change it asks for.
///
/// Parsing is pure: [`InboundEvent::parse`] never touches the database, so it is fuzzed and
/// property-tested on its own (`examples/fuzz`, `sos-tests`).
#[derive(Debug, Clone, PartialEq)]
pub struct InboundEvent {
    /// The tenant of the URL the event arrived at.
    pub tenant: TenantId,
    /// Which provider sent it.
    pub provider: ProviderKind,
    /// The provider's event id (Stripe: the body's `id`; Standard Webhooks: `webhook-id`).
    pub id: String,
    /// The event type (`payment_intent.succeeded`, `contact.upserted`, …).
    pub kind: String,
    /// What the event asks the server to change.
    pub change: Change,
}

/// The state change an event asks for.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Change {
    /// A payment for a deal: the deal is won (when it exists in the tenant and is not won
    /// already).
    DealPaid {
        /// The deal id from `data.object.metadata.deal_id`.
        deal_id: String,
    },
    /// A record of the URL's tenant to create or replace.
    Upsert(Box<Record>),
    /// Nothing to change; only the audit entry records that it arrived.
    Nothing,
}

/// The Stripe event types that mean "paid".
const PAID: &[&str] =
    &["payment_intent.succeeded", "checkout.session.completed", "invoice.paid", "charge.succeeded"];

impl InboundEvent {
    /// Parses a verified body. `webhook_id` is the Standard Webhooks `webhook-id` header.
    ///
    /// # Errors
    ///
    /// An [`ApiError`] with status 400: `bad_json` when the body is not a JSON object,
    /// `bad_event` when the event lacks its id or its data does not make a record,
    /// `tenant_mismatch` when the data names another tenant than the URL.
    pub fn parse(
        tenant: &TenantId,
        provider: ProviderKind,
        webhook_id: Option<&str>,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let parsed: Value = serde_json::from_slice(body).map_err(|error| {
            ApiError::bad_request("bad_json", format!("the signed body is not JSON: {error}"))
        })?;
        if !parsed.is_object() {
            return Err(ApiError::bad_request("bad_json", "the signed body is not a JSON object"));
        }
        let kind = parsed.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
        let (id, change) = match provider {
            ProviderKind::Stripe => {
                let id = parsed
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        ApiError::bad_request("bad_event", "a Stripe event needs a string \"id\"")
                    })?
                    .to_owned();
                let deal_id = parsed.pointer("/data/object/metadata/deal_id").and_then(Value::as_str);
                let change = match deal_id {
                    // An id with a control character (NUL, …) names no deal (PostgreSQL cannot
                    // even hold it in text): the payment is only recorded, like one for an
                    // unknown deal, so a signed event is never refused on every retry.
                    Some(deal_id) if deal_id.chars().any(char::is_control) => Change::Nothing,
                    Some(deal_id) if PAID.contains(&kind.as_str()) => {
                        Change::DealPaid { deal_id: deal_id.to_owned() }
                    }
                    _ => Change::Nothing,
                };
                (id, change)
            }
            ProviderKind::Standard => {
                let id = webhook_id.unwrap_or_default().to_owned();
                let record = match kind.as_str() {
                    "deal.upserted" => {
                        Some(standard_record::<Deal>(tenant, &kind, &parsed).map(Record::Deal))
                    }
                    "contact.upserted" => {
                        Some(standard_record::<Contact>(tenant, &kind, &parsed).map(Record::Contact))
                    }
                    "message.created" | "message.upserted" => {
                        Some(standard_record::<Message>(tenant, &kind, &parsed).map(Record::Message))
                    }
                    _ => None,
                };
                let change = match record {
                    Some(record) => Change::Upsert(Box::new(record?)),
                    None => Change::Nothing,
                };
                (id, change)
            }
        };
        // The dedupe key's rules (length, characters) apply to the id as well.
        EventKey::new(tenant.clone(), provider.as_str(), &id)
            .map_err(|error| ApiError::bad_request("bad_event", error.to_string()))?;
        Ok(Self { tenant: tenant.clone(), provider, id, kind, change })
    }
}

/// Receives one delivery.
pub(crate) async fn receive(
    app: &App,
    tenant: &TenantId,
    provider: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(StatusCode, WebhookAnswer), ApiError> {
    let Some(provider) = ProviderKind::parse(provider) else {
        return Err(ApiError::not_found(
            "unknown_provider",
            format!("there is no webhook provider {provider:?}; use stripe or standard"),
        ));
    };
    state::require_tenant(&app.database, tenant).await?;
    let Some(verifier) = app.settings.verifiers.get(&(tenant.clone(), provider)) else {
        return Err(ApiError::not_found(
            "webhook_not_configured",
            format!(
                "no {} webhook secret is configured for tenant {tenant}; start the server with \
                 --webhook-secret {tenant}:{}=<secret>",
                provider.as_str(),
                provider.as_str()
            ),
        ));
    };
    let verified = match verifier {
        Verifier::Stripe(verifier) => verifier.verify(headers, body, &*app.clock),
        Verifier::Standard(verifier) => verifier.verify(headers, body, &*app.clock),
    };
    if let Err(error) = verified {
        return Err(signature_error(&error));
    }
    let webhook_id = headers
        .get(sos_webhooks::signature::StandardWebhooksVerifier::ID_HEADER)
        .and_then(|value| value.to_str().ok());
    let event = InboundEvent::parse(tenant, provider, webhook_id, body)?;
    let key = EventKey::new(tenant.clone(), provider.as_str(), &event.id)
        .map_err(|error| ApiError::bad_request("bad_event", error.to_string()))?;
    let chain = app.chain.clone();
    let now = app.clock.now();
    let outcome = match &*app.guard {
        Guard::Sqlite(guard) => {
            guard
                .transactional(&key, body, move |tx| {
                    Box::pin(async move { apply(&mut Conn::Sqlite(tx), &chain, &event, now).await })
                })
                .await
        }
        Guard::Postgres(guard) => {
            guard
                .transactional(&key, body, move |tx| {
                    Box::pin(async move { apply(&mut Conn::Postgres(tx), &chain, &event, now).await })
                })
                .await
        }
    };
    match outcome {
        Ok(Outcome::Processed((effect, seq))) => {
            if effect != "recorded" && app.settings.eval_interval().is_some() {
                // The state changed: evaluate the tenant now rather than at the next period.
                let app = app.clone();
                let tenant = tenant.clone();
                tokio::spawn(async move {
                    if let Err(error) = crate::signals::evaluate(&app, &tenant).await {
                        tracing::warn!(%tenant, code = error.code(), "evaluation after a webhook failed; the next run retries");
                    }
                });
            }
            Ok((
                StatusCode::OK,
                WebhookAnswer {
                    outcome: "processed".to_owned(),
                    effect: Some(effect.to_owned()),
                    audit_seq: Some(seq),
                },
            ))
        }
        Ok(Outcome::AlreadyProcessed) => Ok((
            StatusCode::OK,
            WebhookAnswer { outcome: "already_processed".to_owned(), effect: None, audit_seq: None },
        )),
        Ok(Outcome::RetryInFlight) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry_in_flight",
            "this event is being processed by another delivery; retry after the Retry-After seconds",
        )
        .with_retry_after(5)),
        Ok(Outcome::BodyMismatch) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "body_mismatch",
            "an event with this id was already received with a different body; send a new event id",
        )),
        Ok(_) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "retry_later",
            "an earlier attempt at this event failed; retry after the Retry-After seconds",
        )
        .with_retry_after(5)),
        Err(RunError::Handler(error)) => Err(error),
        Err(RunError::Guard(error)) => {
            tracing::warn!(%error, "webhook guard failed");
            Err(ApiError::busy("the webhook store is busy or failed; the delivery was not decided, retry it"))
        }
    }
}

fn signature_error(error: &sos_webhooks::Error) -> ApiError {
    use sos_webhooks::Error;
    let code = match error {
        Error::MissingHeader { .. } => "missing_signature",
        Error::MalformedHeader { .. } => "malformed_signature",
        Error::TimestampOutsideTolerance { .. } => "stale_timestamp",
        _ => "bad_signature",
    };
    ApiError::new(StatusCode::UNAUTHORIZED, code, error.to_string())
}

/// Runs the event's state change inside the guard's transaction; returns the effect's name and
/// the audit entry's sequence number.
async fn apply(
    conn: &mut Conn<'_>,
    chain: &Chain,
    event: &InboundEvent,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(&'static str, u64), ApiError> {
    let actor = format!("webhook:{}", event.provider.as_str());
    match &event.change {
        Change::DealPaid { deal_id } => {
            let evidence = json!({ "event": event.id, "type": event.kind });
            match state::mark_deal_won(conn, chain, &event.tenant, deal_id, now, &actor, evidence).await? {
                Some(seq) => Ok(("deal_won", seq)),
                // A payment for a deal this tenant does not have, or for one already won (one
                // payment arrives as several events), changes nothing.
                None => record_only(conn, chain, event, &actor).await,
            }
        }
        Change::Upsert(record) => {
            let (_, _, seq) =
                state::upsert_record(conn, chain, record, now.timestamp_micros(), &actor).await?;
            let effect = match **record {
                Record::Deal(_) => "deal_upserted",
                Record::Contact(_) => "contact_upserted",
                _ => "message_upserted",
            };
            Ok((effect, seq))
        }
        Change::Nothing => record_only(conn, chain, event, &actor).await,
    }
}

/// A Standard Webhooks event's `data`, as a record of the URL's tenant.
fn standard_record<T: serde::de::DeserializeOwned>(
    tenant: &TenantId,
    kind: &str,
    body: &Value,
) -> Result<T, ApiError> {
    let mut data = body.get("data").cloned().unwrap_or(Value::Null);
    let Some(object) = data.as_object_mut() else {
        return Err(ApiError::bad_request("bad_event", format!("a {kind} event needs a \"data\" object")));
    };
    match object.get("tenant") {
        None => {
            object.insert("tenant".to_owned(), Value::String(tenant.to_string()));
        }
        Some(Value::String(given)) if given == tenant.as_str() => {}
        Some(_) => {
            return Err(ApiError::bad_request(
                "tenant_mismatch",
                "the event's data names another tenant than the URL; a tenant's webhooks only change its own records",
            ));
        }
    }
    serde_json::from_value(data)
        .map_err(|error| ApiError::bad_request("bad_event", format!("the {kind} event's data: {error}")))
}

/// An event that changes no state still leaves an audit entry saying it arrived.
async fn record_only(
    conn: &mut Conn<'_>,
    chain: &Chain,
    event: &InboundEvent,
    actor: &str,
) -> Result<(&'static str, u64), ApiError> {
    let entry = NewEntry::new(
        event.tenant.clone(),
        actor,
        "webhook.recorded",
        format!("webhook/{}/{}", event.provider.as_str(), event.id),
        &json!({ "type": event.kind, "event_id": event.id }),
    )?;
    let appended = conn.audited(chain, entry, ExpectRows::Exactly(0), Vec::new()).await?;
    Ok(("recorded", appended.seq))
}
