//! Signals: each agent's ruliads fire, resonance routing picks the agent that speaks, its trust
//! gate decides, and released signals go out through the channel with their receipts recorded.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use chrono::{DateTime, TimeDelta, Utc};
use serde::Serialize;
use serde_json::json;
use sos_audit::{ExpectRows, NewEntry};
use sos_core::{Clock as _, DeliveryReceipt, Signal, SignalId, TenantId};
use sos_identity::{KindEvidenceProfile, ResonanceRouter, RouterConfig};
use sos_ruliads::Class;
use sos_ruliads::trust::{Decision, Feedback};

use crate::App;
use crate::agents::{self, Agent};
use crate::db::{Bind, Statement};
use crate::error::ApiError;
use crate::state;

/// How long a delivery attempt owns a signal before another evaluation may retry it.
const DELIVERY_LEASE: TimeDelta = TimeDelta::seconds(60);

fn class_name(class: Class) -> &'static str {
    match class {
        Class::Insight => "insight",
        Class::Intervention => "intervention",
    }
}

/// The row of a new signal, as a statement.
pub(crate) fn insert_signal(
    signal: &Signal,
    agent: &str,
    class: &str,
    status: &str,
    detail: &str,
    now: DateTime<Utc>,
) -> Result<Statement, ApiError> {
    let body = serde_json::to_string(signal).map_err(ApiError::internal)?;
    // A new signal is inserted; a withheld one may be decided again (released, or withheld with
    // a new reason); a released or delivered one is never touched again.
    Ok(Statement::new(
        "INSERT INTO sos_server_signals \
           (tenant, id, agent, kind, class, status, detail, body, feedback, lease_us, created_us, updated_us) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 0, $9, $9) \
         ON CONFLICT (tenant, id) DO UPDATE SET agent = excluded.agent, status = excluded.status, \
           detail = excluded.detail, updated_us = excluded.updated_us \
         WHERE sos_server_signals.status = 'withheld'",
        vec![
            Bind::Text(signal.tenant().to_string()),
            Bind::Text(signal.id().to_string()),
            Bind::Text(agent.to_owned()),
            Bind::Text(signal.kind().to_string()),
            Bind::Text(class.to_owned()),
            Bind::Text(status.to_owned()),
            Bind::Text(detail.to_owned()),
            Bind::Text(body),
            Bind::Int(now.timestamp_micros()),
        ],
    ))
}

/// What one evaluation of a tenant did.
#[derive(Debug, Default, Clone, Serialize, utoipa::ToSchema)]
pub struct EvaluationReport {
    /// Distinct signals the agents' ruliads fired.
    pub fired: usize,
    /// Signals the trust gates released now.
    pub released: usize,
    /// Signals the trust gates kept back (see each signal's `detail`).
    pub withheld: usize,
    /// Signals the channel acknowledged in this run (including earlier releases retried).
    pub delivered: usize,
    /// Deliveries the channel refused or that failed.
    pub failed: usize,
}

/// Evaluates every agent of the tenant and delivers what the gates release.
pub(crate) async fn evaluate(app: &App, tenant: &TenantId) -> Result<EvaluationReport, ApiError> {
    // One evaluation at a time in this process (periodic, run-now and after webhooks); across
    // processes the agents' version check keeps the gates consistent.
    let _one_at_a_time = app.evaluating.lock().await;
    let mut report = EvaluationReport::default();
    let now = app.clock.now();
    let mut agents = agents::load_all(app, tenant).await?;
    if !agents.is_empty() {
        let records = state::all_records(&app.database, tenant).await?;
        // Observe: every message the tenant received since an agent was planted counts once.
        for agent in &mut agents {
            let since = agent.gate.state().planted_at.timestamp_micros();
            let seen = u64::try_from(state::messages_since(&app.database, tenant, since).await?).unwrap_or(0);
            let missing = seen.saturating_sub(agent.gate.state().observed_messages).min(1_000_000);
            for _ in 0..missing {
                agent.gate.observe_message();
            }
        }
        // Fire: each agent's ruliads over the tenant's records; one signal id, one signal.
        let mut fired: BTreeMap<SignalId, (Signal, Class, Vec<usize>)> = BTreeMap::new();
        for (index, agent) in agents.iter().enumerate() {
            let Some(pack) = app.settings.packs.get(&agent.vertical) else { continue };
            for hit in pack.engine().evaluate_batch(now, &records) {
                let class = hit.class;
                // The signal with its `because` line (the engine keeps it unrendered).
                let signal = hit.into_signal();
                fired.entry(signal.id()).or_insert_with(|| (signal, class, Vec::new())).2.push(index);
            }
        }
        report.fired = fired.len();
        let decided = decided_signals(app, tenant).await?;
        let mut statements = Vec::new();
        let mut released = Vec::new();
        for (id, (signal, class, candidates)) in fired {
            if decided.get(&id).is_some_and(|status| status != "withheld") {
                continue;
            }
            // Route: the agent the signal resonates with most, among those whose ruliads fired it.
            let chosen = route(&agents, &candidates, &signal)?;
            let agent = &mut agents[chosen];
            let (status, detail) = match agent.gate.offer(now, signal.clone(), class) {
                Decision::Release => {
                    report.released += 1;
                    released.push((signal.clone(), agent.name.as_str().to_owned(), class));
                    ("released", String::new())
                }
                Decision::Withhold { reason, detail } => {
                    report.withheld += 1;
                    ("withheld", format!("{reason}: {detail}"))
                }
                _ => {
                    report.withheld += 1;
                    ("withheld", "the gate gave no decision".to_owned())
                }
            };
            statements.push(insert_signal(
                &signal,
                agent.name.as_str(),
                class_name(class),
                status,
                &detail,
                now,
            )?);
        }
        // Withheld signals live in the signal table; the gate's own list would only grow.
        for agent in &mut agents {
            agent.gate.drain_withheld();
        }
        commit_decisions(app, tenant, &agents, statements, &released, now).await?;
    }
    let (delivered, failed) = deliver_pending(app, tenant).await?;
    report.delivered = delivered;
    report.failed = failed;
    Ok(report)
}

/// Statuses of the tenant's known signals.
async fn decided_signals(app: &App, tenant: &TenantId) -> Result<BTreeMap<SignalId, String>, ApiError> {
    let rows: Vec<(String, String)> = crate::db::on_pool!(&app.database, pool => {
        sqlx::query_as("SELECT id, status FROM sos_server_signals WHERE tenant = $1")
            .bind(tenant.to_string())
            .fetch_all(pool)
            .await?
    });
    Ok(rows.into_iter().filter_map(|(id, status)| Some((id.parse().ok()?, status))).collect())
}

fn route(agents: &[Agent], candidates: &[usize], signal: &Signal) -> Result<usize, ApiError> {
    if let [only] = candidates {
        return Ok(*only);
    }
    let mut router = ResonanceRouter::new(RouterConfig::default()).map_err(ApiError::internal)?;
    for &index in candidates {
        router.add(agents[index].name.clone(), agents[index].vector()).map_err(ApiError::internal)?;
    }
    let routed = router.route(signal, &KindEvidenceProfile).map_err(ApiError::internal)?;
    Ok(candidates.iter().copied().find(|&index| agents[index].name == routed.agent).unwrap_or(candidates[0]))
}

/// Writes every agent's gate state (compare-and-swap on its version), the signals' decisions and
/// an audit entry per released signal, in one transaction.
async fn commit_decisions(
    app: &App,
    tenant: &TenantId,
    agents: &[Agent],
    statements: Vec<Statement>,
    released: &[(Signal, String, Class)],
    now: DateTime<Utc>,
) -> Result<(), ApiError> {
    let mut slot = None;
    let mut tx = app.chain.begin(&mut slot).await?;
    {
        let mut conn = tx.conn();
        for agent in agents {
            let trust = serde_json::to_string(agent.gate.state()).map_err(ApiError::internal)?;
            let rows = conn
                .execute(&Statement::new(
                    "UPDATE sos_server_agents SET trust = $1, version = version + 1 \
                 WHERE tenant = $2 AND name = $3 AND version = $4",
                    vec![
                        Bind::Text(trust),
                        Bind::Text(tenant.to_string()),
                        Bind::Text(agent.name.as_str().to_owned()),
                        Bind::Int(agent.version),
                    ],
                ))
                .await?;
            if rows != 1 {
                // Another evaluation or a feedback moved this agent's gate meanwhile; nothing of
                // this run is kept, and the next run decides again from the new state.
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "concurrent_evaluation",
                    "another evaluation or feedback changed an agent meanwhile; run the evaluation again",
                ));
            }
        }
        for statement in &statements {
            conn.execute(statement).await?;
        }
        for (signal, agent, class) in released {
            let entry = NewEntry::new(
                tenant.clone(),
                format!("agent:{agent}"),
                "signal.released",
                format!("signal/{}", signal.id()),
                &json!({
                    "id": signal.id().to_string(),
                    "kind": signal.kind().as_str(),
                    "class": class_name(*class),
                    "subject": signal.subject(),
                    "cause": signal.cause().to_hex(),
                    "at": now.to_rfc3339(),
                }),
            )?;
            conn.audited(&app.chain, entry, ExpectRows::Exactly(0), Vec::new()).await?;
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Delivers every released (or earlier failed) signal of the tenant through the channel and
/// records each receipt; returns (acknowledged, not acknowledged).
pub(crate) async fn deliver_pending(app: &App, tenant: &TenantId) -> Result<(usize, usize), ApiError> {
    let now = app.clock.now();
    let pending: Vec<(String, String, String)> = crate::db::on_pool!(&app.database, pool => {
        sqlx::query_as(
            "SELECT id, agent, body FROM sos_server_signals WHERE tenant = $1 \
             AND (status IN ('released', 'failed') OR (status = 'delivering' AND lease_us < $2)) \
             ORDER BY created_us, id",
        )
        .bind(tenant.to_string())
        .bind(now.timestamp_micros())
        .fetch_all(pool)
        .await?
    });
    let (mut delivered, mut failed) = (0, 0);
    for (id, agent, body) in pending {
        // Claim the delivery so that two evaluations never post the same signal at once.
        let claimed = app
            .database
            .execute(&Statement::new(
                "UPDATE sos_server_signals SET status = 'delivering', lease_us = $1 WHERE tenant = $2 AND id = $3 \
                 AND (status IN ('released', 'failed') OR (status = 'delivering' AND lease_us < $4))",
                vec![
                    Bind::Int((now + DELIVERY_LEASE).timestamp_micros()),
                    Bind::Text(tenant.to_string()),
                    Bind::Text(id.clone()),
                    Bind::Int(now.timestamp_micros()),
                ],
            ))
            .await?;
        if claimed != 1 {
            continue;
        }
        let signal: Signal = serde_json::from_str(&body).map_err(ApiError::internal)?;
        let receipt = app.channel_for(tenant).deliver(&signal).await;
        let status = match &receipt {
            DeliveryReceipt::Acknowledged { .. } => "delivered",
            DeliveryReceipt::Rejected { .. } => "rejected",
            _ => "failed",
        };
        if status == "delivered" {
            delivered += 1;
        } else {
            failed += 1;
            tracing::warn!(%tenant, signal = %id, ?receipt, "the channel did not acknowledge a signal");
        }
        record_receipt(app, tenant, &id, &agent, &receipt, status).await?;
    }
    Ok((delivered, failed))
}

async fn record_receipt(
    app: &App,
    tenant: &TenantId,
    id: &str,
    agent: &str,
    receipt: &DeliveryReceipt,
    status: &'static str,
) -> Result<(), ApiError> {
    let now = app.clock.now();
    let receipt_json = serde_json::to_value(receipt).map_err(ApiError::internal)?;
    let attempt = app
        .database
        .int(
            "SELECT COUNT(*) FROM sos_server_receipts WHERE tenant = $1 AND signal_id = $2",
            &[Bind::Text(tenant.to_string()), Bind::Text(id.to_owned())],
        )
        .await?
        + 1;
    let entry = NewEntry::new(
        tenant.clone(),
        format!("agent:{agent}"),
        if status == "delivered" { "signal.delivered" } else { "signal.delivery_failed" },
        format!("signal/{id}"),
        &json!({ "id": id, "channel": app.channel_for(tenant).name(), "attempt": attempt, "receipt": receipt_json }),
    )?;
    let statements = vec![
        Statement::new(
            "INSERT INTO sos_server_receipts (tenant, signal_id, attempt, channel, receipt, at_us) \
             VALUES ($1, $2, $3, $4, $5, $6)",
            vec![
                Bind::Text(tenant.to_string()),
                Bind::Text(id.to_owned()),
                Bind::Int(attempt),
                Bind::Text(app.channel_for(tenant).name().to_owned()),
                Bind::Text(receipt_json.to_string()),
                Bind::Int(now.timestamp_micros()),
            ],
        ),
        Statement::new(
            "UPDATE sos_server_signals SET status = $1, updated_us = $2 \
             WHERE tenant = $3 AND id = $4 AND status = 'delivering'",
            vec![
                Bind::Text(status.to_owned()),
                Bind::Int(now.timestamp_micros()),
                Bind::Text(tenant.to_string()),
                Bind::Text(id.to_owned()),
            ],
        ),
    ];
    app.chain.write(entry, ExpectRows::Exactly(2), statements).await?;
    Ok(())
}

/// A signal as answered over HTTP.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SignalView {
    /// The signal id.
    pub id: String,
    /// The agent that speaks it.
    pub agent: String,
    /// The ruliad (kind) that fired it.
    pub kind: String,
    /// `insight`, `intervention` or `introduction`.
    pub class: String,
    /// `withheld`, `released`, `delivering`, `delivered`, `failed` or `rejected`.
    pub status: String,
    /// Why it is withheld (`trust: observing: 12 of 20 messages`), empty otherwise.
    pub detail: String,
    /// People's answer, `accepted` or `rejected`, once given.
    pub feedback: Option<String>,
    /// The signal itself.
    #[schema(value_type = Object)]
    pub signal: serde_json::Value,
    /// The channel's receipts, oldest first.
    #[schema(value_type = Vec<Object>)]
    pub receipts: Vec<serde_json::Value>,
}

type SignalRow = (String, String, String, String, String, String, Option<String>, String);

/// Lists the tenant's signals, newest first, at most `limit`.
pub(crate) async fn list(app: &App, tenant: &TenantId, limit: i64) -> Result<Vec<SignalView>, ApiError> {
    let rows: Vec<SignalRow> = crate::db::on_pool!(&app.database, pool => {
        sqlx::query_as(
            "SELECT id, agent, kind, class, status, detail, feedback, body FROM sos_server_signals \
             WHERE tenant = $1 ORDER BY created_us DESC, id LIMIT $2",
        )
        .bind(tenant.to_string())
        .bind(limit)
        .fetch_all(pool)
        .await?
    });
    let mut views = Vec::with_capacity(rows.len());
    for row in rows {
        views.push(view(app, tenant, row).await?);
    }
    Ok(views)
}

/// One signal.
pub(crate) async fn get(app: &App, tenant: &TenantId, id: &str) -> Result<Option<SignalView>, ApiError> {
    let rows: Vec<SignalRow> = crate::db::on_pool!(&app.database, pool => {
        sqlx::query_as(
            "SELECT id, agent, kind, class, status, detail, feedback, body FROM sos_server_signals \
             WHERE tenant = $1 AND id = $2",
        )
        .bind(tenant.to_string())
        .bind(id.to_owned())
        .fetch_all(pool)
        .await?
    });
    match rows.into_iter().next() {
        Some(row) => Ok(Some(view(app, tenant, row).await?)),
        None => Ok(None),
    }
}

async fn view(app: &App, tenant: &TenantId, row: SignalRow) -> Result<SignalView, ApiError> {
    let (id, agent, kind, class, status, detail, feedback, body) = row;
    let receipts = app
        .database
        .text_int_rows(
            "SELECT receipt, attempt FROM sos_server_receipts WHERE tenant = $1 AND signal_id = $2 ORDER BY attempt",
            &[Bind::Text(tenant.to_string()), Bind::Text(id.clone())],
        )
        .await?
        .into_iter()
        .map(|(receipt, _)| serde_json::from_str(&receipt).unwrap_or(serde_json::Value::Null))
        .collect();
    Ok(SignalView {
        id,
        agent,
        kind,
        class,
        status,
        detail,
        feedback,
        signal: serde_json::from_str(&body).map_err(ApiError::internal)?,
        receipts,
    })
}

/// The body of `POST …/signals/{id}/feedback`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FeedbackRequest {
    /// What people did with the signal.
    pub verdict: Verdict,
}

/// People's answer to a signal.
#[derive(Debug, Clone, Copy, serde::Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// They took the suggestion: the agent's budget rises, an accepted insight opens interventions.
    Accepted,
    /// They said no: the agent's budget falls (never to zero).
    Rejected,
}

/// What a feedback did.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FeedbackAnswer {
    /// The signal.
    pub signal: String,
    /// The verdict recorded.
    pub verdict: Verdict,
    /// The agent's trust gate after the feedback.
    pub trust: agents::TrustView,
}

/// Records people's answer to a delivered signal; it moves the agent's trust gate.
pub(crate) async fn feedback(
    app: &App,
    tenant: &TenantId,
    id: &str,
    verdict: Verdict,
) -> Result<FeedbackAnswer, ApiError> {
    let Some(signal) = get(app, tenant, id).await? else {
        return Err(ApiError::not_found("unknown_signal", format!("tenant {tenant} has no signal {id:?}")));
    };
    if signal.feedback.is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "feedback_given",
            "this signal already has feedback",
        ));
    }
    if !matches!(signal.status.as_str(), "released" | "delivering" | "delivered") {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_delivered",
            format!("the signal is {}; only a signal that went out can get feedback", signal.status),
        ));
    }
    let signal_id: SignalId =
        id.parse().map_err(|_| ApiError::bad_request("invalid_signal", "not a signal id"))?;
    let name = agents::parse_name(&signal.agent)?;
    let Some(mut agent) = agents::load(app, tenant, &name).await? else {
        return Err(ApiError::not_found("unknown_agent", format!("the signal's agent {name} is gone")));
    };
    let now = app.clock.now();
    let feedback = match verdict {
        Verdict::Accepted => Feedback::Accepted,
        Verdict::Rejected => Feedback::Rejected,
    };
    // An introduction or a signal the gate already counted as ignored moves nothing; the answer
    // is still recorded for people.
    let moved = agent.gate.feedback(now, tenant, signal_id, feedback);
    let verdict_text = match verdict {
        Verdict::Accepted => "accepted",
        Verdict::Rejected => "rejected",
    };
    let entry = NewEntry::new(
        tenant.clone(),
        "api",
        "signal.feedback",
        format!("signal/{id}"),
        &json!({ "id": id, "verdict": verdict_text, "agent": name.as_str(), "gate_moved": moved }),
    )?;
    let trust = serde_json::to_string(agent.gate.state()).map_err(ApiError::internal)?;
    let statements = vec![
        Statement::new(
            "UPDATE sos_server_signals SET feedback = $1, updated_us = $2 \
             WHERE tenant = $3 AND id = $4 AND feedback IS NULL",
            vec![
                Bind::Text(verdict_text.to_owned()),
                Bind::Int(now.timestamp_micros()),
                Bind::Text(tenant.to_string()),
                Bind::Text(id.to_owned()),
            ],
        ),
        Statement::new(
            "UPDATE sos_server_agents SET trust = $1, version = version + 1 \
             WHERE tenant = $2 AND name = $3 AND version = $4",
            vec![
                Bind::Text(trust),
                Bind::Text(tenant.to_string()),
                Bind::Text(name.as_str().to_owned()),
                Bind::Int(agent.version),
            ],
        ),
    ];
    app.chain.write(entry, ExpectRows::Exactly(2), statements).await.map_err(|error| match error {
        sos_audit::Error::UnexpectedRows { .. } => ApiError::new(
            StatusCode::CONFLICT,
            "concurrent_change",
            "the signal got feedback or its agent changed meanwhile; read the signal again",
        ),
        other => other.into(),
    })?;
    agent.version += 1;
    let pack = app.settings.packs.get(&agent.vertical).cloned();
    let trust = match pack {
        Some(pack) => agents::view(app, &agent, &pack).await?.trust,
        None => return Err(ApiError::internal("the agent's pack is gone")),
    };
    Ok(FeedbackAnswer { signal: id.to_owned(), verdict, trust })
}
