//! Agents: a registered identity (sos-identity), the vertical's pack (sos-ruliads) and a trust
//! gate whose state is stored with the agent.

use std::sync::Arc;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sos_audit::{ExpectRows, NewEntry};
use sos_core::TenantId;
use sos_identity::{
    AgentName, AgentRole, IdentityRegistry as _, IdentityVector, PostgresRegistry, RegistryEntry,
    SqliteRegistry, Traits,
};
use sos_ruliads::pack::Pack;
use sos_ruliads::trust::{TrustGate, TrustState};

use crate::App;
use crate::db::{Bind, Database, Statement};
use crate::error::ApiError;

/// The identity registry on the server's database.
#[derive(Debug, Clone)]
pub(crate) enum Registry {
    Sqlite(SqliteRegistry),
    Postgres(PostgresRegistry),
}

impl Registry {
    pub(crate) fn new(database: &Database, clock: Arc<dyn sos_core::Clock>) -> Self {
        match database {
            Database::Sqlite(pool) => Self::Sqlite(SqliteRegistry::new(pool.clone(), clock)),
            Database::Postgres(pool) => Self::Postgres(PostgresRegistry::new(pool.clone(), clock)),
        }
    }

    async fn register(
        &self,
        tenant: &TenantId,
        name: &AgentName,
        role: &AgentRole,
    ) -> sos_identity::Result<sos_identity::Registration> {
        match self {
            Self::Sqlite(registry) => registry.register(tenant, name, role).await,
            Self::Postgres(registry) => registry.register(tenant, name, role).await,
        }
    }

    async fn lookup(
        &self,
        tenant: &TenantId,
        name: &AgentName,
    ) -> sos_identity::Result<Option<RegistryEntry>> {
        match self {
            Self::Sqlite(registry) => registry.lookup(tenant, name).await,
            Self::Postgres(registry) => registry.lookup(tenant, name).await,
        }
    }
}

/// An agent as stored.
#[derive(Debug, Clone)]
pub(crate) struct Agent {
    pub(crate) tenant: TenantId,
    pub(crate) name: AgentName,
    pub(crate) role: AgentRole,
    pub(crate) vertical: String,
    pub(crate) gate: TrustGate,
    pub(crate) version: i64,
}

impl Agent {
    pub(crate) fn vector(&self) -> IdentityVector {
        IdentityVector::of(&self.name, &self.role)
    }
}

/// The body of `POST /v1/tenants/{tenant}/agents`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAgent {
    /// The agent's name, unique in the tenant (kept with its first role forever).
    pub name: String,
    /// Its role; the pack's `agent_role` when absent.
    #[serde(default)]
    pub role: Option<String>,
    /// The vertical whose pack the agent is born with (`generic`, `real-estate`, `dental`, `grants`, …).
    pub vertical: String,
}

/// An agent as answered over HTTP.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AgentView {
    /// The tenant.
    pub tenant: String,
    /// The name.
    pub name: String,
    /// The role.
    pub role: String,
    /// The vertical of its pack.
    pub vertical: String,
    /// The 16-dimensional identity vector, 64 hex characters.
    pub vector: String,
    /// The traits derived from the vector.
    #[schema(value_type = Object)]
    pub traits: serde_json::Value,
    /// The agent's entry in the tenant's identity registry chain.
    pub registry: RegistryView,
    /// The pack it was born with.
    pub pack: PackView,
    /// Where it stands with the trust gate.
    pub trust: TrustView,
    /// Where its portrait is.
    pub portrait: String,
}

/// A registry entry.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct RegistryView {
    /// Position in the tenant's registry chain.
    pub seq: u64,
    /// The entry hash, hex.
    pub hash: String,
    /// When it was registered (RFC 3339).
    pub registered_at: String,
}

/// A pack.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PackView {
    /// The vertical.
    pub vertical: String,
    /// The role the pack is written for.
    pub agent_role: String,
    /// The ruliads the agent evaluates, in order.
    pub ruliads: Vec<String>,
}

/// The trust gate's state, for people.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrustView {
    /// `planted`, `observing`, `insight` or `intervening`.
    pub phase: String,
    /// When the agent was planted (RFC 3339).
    pub planted_at: String,
    /// Messages observed so far.
    pub observed_messages: u64,
    /// Messages needed before a first insight.
    pub min_messages: u32,
    /// Whether people accepted an insight.
    pub insight_accepted: bool,
    /// Signals per day the agent may send now; feedback moves it.
    pub budget_per_day: f64,
}

fn text_of<T: Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(text)) => text,
        Ok(other) => other.to_string(),
        Err(_) => String::new(),
    }
}

pub(crate) fn parse_name(name: &str) -> Result<AgentName, ApiError> {
    AgentName::new(name).map_err(|error| ApiError::bad_request("invalid_agent", error.to_string()))
}

/// Registers an agent planted at `planted_at` (the request's time; `--demo` plants its agent
/// with a seeded, backdated history) and stores its introduction for delivery.
pub(crate) async fn register(
    app: &App,
    tenant: &TenantId,
    request: NewAgent,
    planted_at: DateTime<Utc>,
    actor: &str,
) -> Result<(StatusCode, AgentView), ApiError> {
    let Some(pack) = app.settings.packs.get(&request.vertical).cloned() else {
        let known: Vec<&str> = app.settings.packs.keys().map(String::as_str).collect();
        return Err(ApiError::bad_request(
            "unknown_vertical",
            format!(
                "there is no pack for vertical {:?}; known verticals: {}",
                request.vertical,
                known.join(", ")
            ),
        ));
    };
    let name = parse_name(&request.name)?;
    let role = AgentRole::new(request.role.as_deref().unwrap_or(pack.agent_role()))
        .map_err(|error| ApiError::bad_request("invalid_agent", error.to_string()))?;
    if let Some(existing) = load(app, tenant, &name).await? {
        return if existing.role == role && existing.vertical == request.vertical {
            Ok((StatusCode::OK, view(app, &existing, &pack).await?))
        } else {
            Err(ApiError::new(
                StatusCode::CONFLICT,
                "agent_conflict",
                format!(
                    "agent {name} already exists as {:?} in vertical {:?}; an identity keeps its first role",
                    existing.role.as_str(),
                    existing.vertical
                ),
            ))
        };
    }
    let registration = app.registry.register(tenant, &name, &role).await.map_err(|error| match error {
        sos_identity::Error::RoleConflict { .. } => {
            ApiError::new(StatusCode::CONFLICT, "agent_conflict", error.to_string())
        }
        other => ApiError::internal(other),
    })?;
    let entry = registration.entry();
    let mut gate = TrustGate::plant(pack.trust().clone(), planted_at)
        .map_err(|error| ApiError::internal(format!("the pack's trust configuration: {error}")))?;
    let introduction = gate
        .introduce(planted_at, tenant, name.as_str())
        .map_err(|error| ApiError::bad_request("invalid_agent", error.to_string()))?;
    let trust = serde_json::to_string(gate.state()).map_err(ApiError::internal)?;
    let audit = NewEntry::new(
        tenant.clone(),
        actor,
        "agent.register",
        format!("agent/{name}"),
        &json!({
            "name": name.as_str(),
            "role": role.as_str(),
            "vertical": request.vertical,
            "vector": entry.vector.to_hex(),
            "registry_seq": entry.seq,
            "registry_hash": entry.hash.to_hex(),
            "planted_at": planted_at.to_rfc3339(),
        }),
    )?;
    let mut statements = vec![Statement::new(
        "INSERT INTO sos_server_agents (tenant, name, role, vertical, trust, version, created_us) \
         VALUES ($1, $2, $3, $4, $5, 1, $6) ON CONFLICT (tenant, name) DO NOTHING",
        vec![
            Bind::Text(tenant.to_string()),
            Bind::Text(name.as_str().to_owned()),
            Bind::Text(role.as_str().to_owned()),
            Bind::Text(request.vertical.clone()),
            Bind::Text(trust),
            Bind::Int(planted_at.timestamp_micros()),
        ],
    )];
    if let Some(signal) = &introduction {
        statements.push(crate::signals::insert_signal(
            signal,
            name.as_str(),
            "introduction",
            "released",
            "",
            planted_at,
        )?);
    }
    let expect = ExpectRows::Exactly(statements.len() as u64);
    match app.chain.write(audit, expect, statements).await {
        Ok(_) => {}
        // A concurrent registration of the same agent won: answer with what it stored.
        Err(sos_audit::Error::UnexpectedRows { .. }) => {
            let existing = load(app, tenant, &name).await?.ok_or_else(|| {
                ApiError::new(
                    StatusCode::CONFLICT,
                    "concurrent_change",
                    "the agent is being registered; retry",
                )
            })?;
            return Ok((StatusCode::OK, view(app, &existing, &pack).await?));
        }
        Err(error) => return Err(error.into()),
    }
    let agent = Agent { tenant: tenant.clone(), name, role, vertical: request.vertical, gate, version: 1 };
    Ok((StatusCode::CREATED, view(app, &agent, &pack).await?))
}

/// Loads one agent.
pub(crate) async fn load(app: &App, tenant: &TenantId, name: &AgentName) -> Result<Option<Agent>, ApiError> {
    let agents = load_where(app, tenant, Some(name)).await?;
    Ok(agents.into_iter().next())
}

/// Loads every agent of the tenant, in name order.
pub(crate) async fn load_all(app: &App, tenant: &TenantId) -> Result<Vec<Agent>, ApiError> {
    load_where(app, tenant, None).await
}

async fn load_where(app: &App, tenant: &TenantId, name: Option<&AgentName>) -> Result<Vec<Agent>, ApiError> {
    let binds = [
        Bind::Text(tenant.to_string()),
        Bind::Text(name.map(|name| name.as_str().to_owned()).unwrap_or_default()),
        Bind::Int(i64::from(name.is_none())),
    ];
    let rows: Vec<(String, String, String, String, i64)> = crate::db::on_pool!(&app.database, pool => {
        crate::db::bind_all!(
            sqlx::query_as(
                "SELECT name, role, vertical, trust, version FROM sos_server_agents \
                 WHERE tenant = $1 AND (name = $2 OR $3 = 1) ORDER BY name",
            ),
            &binds
        )
        .fetch_all(pool)
        .await?
    });
    rows.into_iter()
        .map(|(name, role, vertical, trust, version)| {
            let state: TrustState = serde_json::from_str(&trust).map_err(ApiError::internal)?;
            // The gate runs with the pack's configuration as loaded at start; a vertical whose
            // pack was removed keeps the defaults.
            let config =
                app.settings.packs.get(&vertical).map(|pack| pack.trust().clone()).unwrap_or_default();
            let gate = TrustGate::restore(config, state.clone())
                .or_else(|_| TrustGate::restore(Default::default(), state))
                .map_err(ApiError::internal)?;
            Ok(Agent {
                tenant: tenant.clone(),
                name: AgentName::new(name).map_err(ApiError::internal)?,
                role: AgentRole::new(role).map_err(ApiError::internal)?,
                vertical,
                gate,
                version,
            })
        })
        .collect()
}

/// The HTTP view of an agent.
pub(crate) async fn view(app: &App, agent: &Agent, pack: &Arc<Pack>) -> Result<AgentView, ApiError> {
    let vector = agent.vector();
    let entry = app.registry.lookup(&agent.tenant, &agent.name).await.map_err(ApiError::internal)?;
    let registry = match entry {
        Some(entry) => RegistryView {
            seq: entry.seq,
            hash: entry.hash.to_hex(),
            registered_at: entry.registered_at.to_rfc3339(),
        },
        None => return Err(ApiError::internal(format!("agent {} has no registry entry", agent.name))),
    };
    let state = agent.gate.state();
    Ok(AgentView {
        tenant: agent.tenant.to_string(),
        name: agent.name.as_str().to_owned(),
        role: agent.role.as_str().to_owned(),
        vertical: agent.vertical.clone(),
        vector: vector.to_hex(),
        traits: serde_json::to_value(Traits::of(&vector)).map_err(ApiError::internal)?,
        registry,
        pack: PackView {
            vertical: pack.vertical().to_owned(),
            agent_role: pack.agent_role().to_owned(),
            ruliads: pack.engine().names().into_iter().map(str::to_owned).collect(),
        },
        trust: TrustView {
            phase: text_of(&agent.gate.phase()),
            planted_at: state.planted_at.to_rfc3339(),
            observed_messages: state.observed_messages,
            min_messages: agent.gate.config().min_messages,
            insight_accepted: state.insight_accepted,
            budget_per_day: agent.gate.budget_per_day(),
        },
        portrait: format!("/v1/tenants/{}/agents/{}/portrait.svg", agent.tenant, agent.name.as_str()),
    })
}
