//! Tenants and the CRM records the catalog ruliads look at (deals, contacts, messages); every
//! write is audited in the same transaction.

use serde_json::json;
use sos_audit::{ExpectRows, NewEntry};
use sos_core::TenantId;
use sos_ruliads::crm::{Contact, Deal, Message, Record};

use crate::audit::{Chain, Conn};
use crate::db::{Bind, Database, Statement};
use crate::error::ApiError;

/// Which kind of record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecordKind {
    Deal,
    Contact,
    Message,
}

impl RecordKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Deal => "deal",
            Self::Contact => "contact",
            Self::Message => "message",
        }
    }
}

/// A record as stored: its body and version.
#[derive(Debug, Clone)]
pub(crate) struct Stored {
    pub(crate) body: serde_json::Value,
    pub(crate) version: i64,
}

/// Whether a write created the row or changed an existing one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Written {
    Created,
    Updated,
}

const UPSERT: &str = "INSERT INTO sos_server_records (tenant, kind, id, body, version, at_us) \
     VALUES ($1, $2, $3, $4, 1, $5) \
     ON CONFLICT (tenant, kind, id) DO UPDATE SET body = excluded.body, \
     version = sos_server_records.version + 1, at_us = excluded.at_us";

/// Creates the tenant unless it exists; audited (`tenant.create`) only when created.
pub(crate) async fn create_tenant(
    chain: &Chain,
    tenant: &TenantId,
    now_us: i64,
    actor: &str,
) -> Result<Written, ApiError> {
    let entry =
        NewEntry::new(tenant.clone(), actor, "tenant.create", format!("tenant/{tenant}"), &json!({}))?;
    let insert = Statement::new(
        "INSERT INTO sos_server_tenants (tenant, created_us) VALUES ($1, $2) ON CONFLICT (tenant) DO NOTHING",
        vec![Bind::Text(tenant.to_string()), Bind::Int(now_us)],
    );
    // One arbitrated insert decides: when the tenant exists it changes no row, and the audited
    // write (expecting one) rolls back its entry, so repeats leave no trace.
    match chain.write(entry, ExpectRows::Exactly(1), vec![insert]).await {
        Ok(_) => Ok(Written::Created),
        Err(sos_audit::Error::UnexpectedRows { actual: 0, .. }) => Ok(Written::Updated),
        Err(error) => Err(error.into()),
    }
}

/// Whether the tenant exists.
pub(crate) async fn tenant_exists(database: &Database, tenant: &TenantId) -> Result<bool, ApiError> {
    let count = database
        .int("SELECT COUNT(*) FROM sos_server_tenants WHERE tenant = $1", &[Bind::Text(tenant.to_string())])
        .await?;
    Ok(count > 0)
}

/// Fails with 404 `unknown_tenant` unless the tenant exists.
pub(crate) async fn require_tenant(database: &Database, tenant: &TenantId) -> Result<(), ApiError> {
    if tenant_exists(database, tenant).await? { Ok(()) } else { Err(ApiError::unknown_tenant(tenant)) }
}

/// Every tenant, in name order.
pub(crate) async fn tenants(database: &Database) -> Result<Vec<TenantId>, ApiError> {
    let names = database.text_rows("SELECT tenant FROM sos_server_tenants ORDER BY tenant", &[]).await?;
    Ok(names.into_iter().filter_map(|name| name.parse().ok()).collect())
}

/// The time a record sorts by: a message's `at`, otherwise the write time.
fn sort_time(record: &Record, now_us: i64) -> i64 {
    match record {
        Record::Message(message) => message.at.timestamp_micros(),
        _ => now_us,
    }
}

fn kind_of(record: &Record) -> Option<RecordKind> {
    match record {
        Record::Deal(_) => Some(RecordKind::Deal),
        Record::Contact(_) => Some(RecordKind::Contact),
        Record::Message(_) => Some(RecordKind::Message),
        _ => None,
    }
}

fn id_of(record: &Record) -> &str {
    use sos_ruliads::Entity as _;
    record.key()
}

/// Upserts a record inside `conn`'s transaction, audited as `<kind>.upsert`.
pub(crate) async fn upsert_record(
    conn: &mut Conn<'_>,
    chain: &Chain,
    record: &Record,
    now_us: i64,
    actor: &str,
) -> Result<(Written, i64, u64), ApiError> {
    use sos_ruliads::Entity as _;
    let kind = kind_of(record).ok_or_else(|| {
        ApiError::bad_request("unsupported_record", "only deals, contacts and messages are stored")
    })?;
    let tenant = record.tenant().clone();
    let id = id_of(record).to_owned();
    let body = record_body(record)?;
    let entry = NewEntry::new(
        tenant.clone(),
        actor,
        format!("{}.upsert", kind.as_str()),
        format!("{}/{id}", kind.as_str()),
        &json!({ "id": id, "record": body }),
    )?;
    let statement = Statement::new(
        UPSERT,
        vec![
            Bind::Text(tenant.to_string()),
            Bind::Text(kind.as_str().to_owned()),
            Bind::Text(id.clone()),
            Bind::Text(body.to_string()),
            Bind::Int(sort_time(record, now_us)),
        ],
    );
    let appended = conn.audited(chain, entry, ExpectRows::Exactly(1), vec![statement]).await?;
    let version = conn
        .text_int(
            "SELECT body, version FROM sos_server_records WHERE tenant = $1 AND kind = $2 AND id = $3",
            &[Bind::Text(tenant.to_string()), Bind::Text(kind.as_str().to_owned()), Bind::Text(id)],
        )
        .await?
        .map_or(1, |(_, version)| version);
    Ok((if version == 1 { Written::Created } else { Written::Updated }, version, appended.seq))
}

/// Upserts one record in a transaction of its own.
pub(crate) async fn write_record(
    chain: &Chain,
    record: &Record,
    now_us: i64,
    actor: &str,
) -> Result<(Written, i64, u64), ApiError> {
    let mut slot = None;
    let mut tx = chain.begin(&mut slot).await?;
    let written = upsert_record(&mut tx.conn(), chain, record, now_us, actor).await?;
    tx.commit().await?;
    Ok(written)
}

/// The body of a record as stored: the record's own JSON (without the enum tag).
fn record_body(record: &Record) -> Result<serde_json::Value, ApiError> {
    let value = match record {
        Record::Deal(deal) => serde_json::to_value(deal),
        Record::Contact(contact) => serde_json::to_value(contact),
        Record::Message(message) => serde_json::to_value(message),
        _ => {
            return Err(ApiError::bad_request(
                "unsupported_record",
                "only deals, contacts and messages are stored",
            ));
        }
    };
    value.map_err(|error| ApiError::bad_request("invalid_record", error.to_string()))
}

/// Reads one record.
pub(crate) async fn read_record(
    database: &Database,
    tenant: &TenantId,
    kind: RecordKind,
    id: &str,
) -> Result<Option<Stored>, ApiError> {
    let rows = database
        .text_int_rows(
            "SELECT body, version FROM sos_server_records WHERE tenant = $1 AND kind = $2 AND id = $3",
            &[
                Bind::Text(tenant.to_string()),
                Bind::Text(kind.as_str().to_owned()),
                Bind::Text(id.to_owned()),
            ],
        )
        .await?;
    rows.into_iter()
        .next()
        .map(|(body, version)| {
            Ok(Stored { body: serde_json::from_str(&body).map_err(ApiError::internal)?, version })
        })
        .transpose()
}

/// Lists records of one kind, oldest first, at most `limit`.
pub(crate) async fn list_records(
    database: &Database,
    tenant: &TenantId,
    kind: RecordKind,
    limit: i64,
) -> Result<Vec<serde_json::Value>, ApiError> {
    let rows = database
        .text_int_rows(
            "SELECT body, version FROM sos_server_records WHERE tenant = $1 AND kind = $2 ORDER BY at_us, id LIMIT $3",
            &[Bind::Text(tenant.to_string()), Bind::Text(kind.as_str().to_owned()), Bind::Int(limit)],
        )
        .await?;
    rows.into_iter().map(|(body, _)| serde_json::from_str(&body).map_err(ApiError::internal)).collect()
}

/// Every deal, contact and message of the tenant, as the catalog's records.
pub(crate) async fn all_records(database: &Database, tenant: &TenantId) -> Result<Vec<Record>, ApiError> {
    let rows = database
        .text_int_rows(
            "SELECT kind || ' ' || body, version FROM sos_server_records WHERE tenant = $1 ORDER BY kind, at_us, id",
            &[Bind::Text(tenant.to_string())],
        )
        .await?;
    let mut records = Vec::with_capacity(rows.len());
    for (text, _) in rows {
        let Some((kind, body)) = text.split_once(' ') else { continue };
        let record = match kind {
            "deal" => serde_json::from_str::<Deal>(body).map(Record::Deal),
            "contact" => serde_json::from_str::<Contact>(body).map(Record::Contact),
            "message" => serde_json::from_str::<Message>(body).map(Record::Message),
            _ => continue,
        };
        records.push(record.map_err(ApiError::internal)?);
    }
    Ok(records)
}

/// How many messages the tenant received at or after `since_us`.
pub(crate) async fn messages_since(
    database: &Database,
    tenant: &TenantId,
    since_us: i64,
) -> Result<i64, ApiError> {
    Ok(database
        .int(
            "SELECT COUNT(*) FROM sos_server_records WHERE tenant = $1 AND kind = 'message' AND at_us >= $2",
            &[Bind::Text(tenant.to_string()), Bind::Int(since_us)],
        )
        .await?)
}

/// Marks a deal won inside `conn`'s transaction (a payment arrived for it), audited as
/// `deal.won`. Returns the audit entry's sequence number, or `None` when there is no such deal
/// or it is already `closed-won` (nothing is written then: one payment arrives as several
/// provider events, and the deal is won once).
pub(crate) async fn mark_deal_won(
    conn: &mut Conn<'_>,
    chain: &Chain,
    tenant: &TenantId,
    deal_id: &str,
    now: chrono::DateTime<chrono::Utc>,
    actor: &str,
    evidence: serde_json::Value,
) -> Result<Option<u64>, ApiError> {
    let Some((body, version)) = conn
        .text_int(
            "SELECT body, version FROM sos_server_records WHERE tenant = $1 AND kind = 'deal' AND id = $2",
            &[Bind::Text(tenant.to_string()), Bind::Text(deal_id.to_owned())],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut deal: Deal = serde_json::from_str(&body).map_err(ApiError::internal)?;
    if deal.stage == sos_ruliads::crm::Stage::ClosedWon {
        return Ok(None);
    }
    let previous = deal.stage.as_str().to_owned();
    deal.stage = sos_ruliads::crm::Stage::ClosedWon;
    deal.stage_entered_at = Some(now);
    deal.last_action_at = Some(now);
    let body = serde_json::to_value(&deal).map_err(ApiError::internal)?;
    let entry = NewEntry::new(
        tenant.clone(),
        actor,
        "deal.won",
        format!("deal/{deal_id}"),
        &json!({ "id": deal_id, "from_stage": previous, "record": body, "evidence": evidence }),
    )?;
    // Compare-and-swap on the version read above: a concurrent change makes this write change no
    // row, and the audited write then rolls back with its entry.
    let update = Statement::new(
        "UPDATE sos_server_records SET body = $1, version = version + 1, at_us = $2 \
         WHERE tenant = $3 AND kind = 'deal' AND id = $4 AND version = $5",
        vec![
            Bind::Text(body.to_string()),
            Bind::Int(now.timestamp_micros()),
            Bind::Text(tenant.to_string()),
            Bind::Text(deal_id.to_owned()),
            Bind::Int(version),
        ],
    );
    let appended = conn.audited(chain, entry, ExpectRows::Exactly(1), vec![update]).await?;
    Ok(Some(appended.seq))
}
