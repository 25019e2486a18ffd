//! `--demo`: the tenant `demo` with a planted agent, its history and a few records, so that a
//! newcomer sees a signal within a minute.
//!
//! The trust gate is not bypassed. The agent `ada` is registered *as if* it had been planted 22
//! days ago, and the messages it observed since then are seeded with their dates: an explicit,
//! audited history (actor `demo-seed`). Everything it then says passes the same gate as any
//! agent's. Its introduction goes out at start. The stale deal `d-1` fires a nudge, an
//! intervention, which the gate withholds until people accept an insight. The insight comes from
//! the README's signed test webhook: a contact whose renewal is near (`sos-send-webhook
//! contact-renewal`); with 20 messages and 5 days behind the agent, it goes out at once.

use chrono::TimeDelta;
use sos_core::{Clock as _, TenantId};
use sos_ruliads::crm::{Deal, Direction, Message, Record, Stage};

use crate::App;
use crate::agents::{self, NewAgent};
use crate::config::DEMO_TENANT;
use crate::error::ApiError;
use crate::state::{self, Written};

const ACTOR: &str = "demo-seed";

/// Seeds the demo tenant unless it exists.
pub(crate) async fn seed(app: &App) -> Result<(), ApiError> {
    let tenant: TenantId = DEMO_TENANT.parse().map_err(ApiError::internal)?;
    let now = app.clock.now();
    if state::create_tenant(&app.chain, &tenant, now.timestamp_micros(), ACTOR).await? == Written::Updated {
        tracing::info!(%tenant, "the demo tenant exists; not seeding it again");
        return Ok(());
    }
    let planted_at = now - TimeDelta::days(22);
    let request = NewAgent { name: "ada".to_owned(), role: None, vertical: "grants".to_owned() };
    if !app.settings.packs.contains_key(&request.vertical) {
        return Err(ApiError::internal("--demo needs the grants pack in the packs directory"));
    }
    agents::register(app, &tenant, request, planted_at, ACTOR).await?;
    let day = |days: i64| now - TimeDelta::days(days);
    // The history the agent observed: two messages a day with the funders since it was planted.
    for index in 0..24_i64 {
        let at = planted_at + TimeDelta::hours(index * 20 + 1);
        let message = Message {
            tenant: tenant.clone(),
            id: format!("m-{index:02}"),
            contact_name: ["Initech Fund", "Acme Foundation", "Globex Trust"][(index % 3) as usize]
                .to_owned(),
            subject: format!("Re: application round {}", index / 3 + 1),
            direction: if index % 2 == 0 { Direction::Inbound } else { Direction::Outbound },
            at,
            answered_at: Some(at + TimeDelta::hours(2)),
        };
        state::write_record(&app.chain, &Record::Message(message), at.timestamp_micros(), ACTOR).await?;
    }
    let deals = [
        Deal {
            tenant: tenant.clone(),
            id: "d-1".to_owned(),
            contact_name: "Acme Foundation".to_owned(),
            stage: Stage::Proposal,
            value_cents: Some(4_500_000),
            probability: Some(60),
            last_action_at: Some(day(16)),
            last_message_at: None,
            stage_entered_at: Some(day(16)),
            expected_close_at: Some(now + TimeDelta::days(30)),
            next_step_at: Some(now + TimeDelta::days(3)),
            created_at: Some(day(40)),
        },
        Deal {
            tenant: tenant.clone(),
            id: "d-2".to_owned(),
            contact_name: "Globex Trust".to_owned(),
            stage: Stage::Negotiation,
            value_cents: Some(1_200_000),
            probability: Some(80),
            last_action_at: Some(day(1)),
            last_message_at: Some(day(1)),
            stage_entered_at: Some(day(4)),
            expected_close_at: Some(now + TimeDelta::days(10)),
            next_step_at: Some(now + TimeDelta::days(2)),
            created_at: Some(day(30)),
        },
    ];
    for deal in deals {
        state::write_record(&app.chain, &Record::Deal(deal), now.timestamp_micros(), ACTOR).await?;
    }
    tracing::info!(
        %tenant,
        agent = "ada",
        planted = %planted_at.to_rfc3339(),
        "seeded the demo tenant: an agent planted 22 days ago with 24 observed messages, and 2 deals"
    );
    Ok(())
}
