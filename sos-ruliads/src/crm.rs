//! The CRM-style domain the built-in catalog reads: deals, contacts, messages, leads and team
//! members.
//!
//! Hosts with their own types write their own ruliads against them; these types exist so that
//! the catalog, the packs and the fixtures have something concrete to look at. Every type is
//! plain serde data; unknown fields are rejected so that a typo in a fixture is an error.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sos_core::TenantId;

use crate::ruliad::Entity;

/// A deal's pipeline stage. Known stages have names; anything else is kept as written.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
#[non_exhaustive]
pub enum Stage {
    /// `discovery`.
    Discovery,
    /// `qualification`.
    Qualification,
    /// `proposal`.
    Proposal,
    /// `negotiation`.
    Negotiation,
    /// `closed-won`: finished, never stale.
    ClosedWon,
    /// `closed-lost`: finished, never stale.
    ClosedLost,
    /// Any other stage name.
    Other(String),
}

impl Stage {
    /// The stage name.
    #[inline]
    pub fn as_str(&self) -> &str {
        match self {
            Self::Discovery => "discovery",
            Self::Qualification => "qualification",
            Self::Proposal => "proposal",
            Self::Negotiation => "negotiation",
            Self::ClosedWon => "closed-won",
            Self::ClosedLost => "closed-lost",
            Self::Other(name) => name,
        }
    }

    /// The name for an explanation, borrowed when it is a known stage.
    #[inline]
    pub fn to_cow(&self) -> Cow<'static, str> {
        match self {
            Self::Other(name) => Cow::Owned(name.clone()),
            Self::Discovery => Cow::Borrowed("discovery"),
            Self::Qualification => Cow::Borrowed("qualification"),
            Self::Proposal => Cow::Borrowed("proposal"),
            Self::Negotiation => Cow::Borrowed("negotiation"),
            Self::ClosedWon => Cow::Borrowed("closed-won"),
            Self::ClosedLost => Cow::Borrowed("closed-lost"),
        }
    }

    /// The name of a known stage, `None` for [`Stage::Other`].
    #[inline]
    pub fn known_name(&self) -> Option<&'static str> {
        match self {
            Self::Other(_) => None,
            Self::Discovery => Some("discovery"),
            Self::Qualification => Some("qualification"),
            Self::Proposal => Some("proposal"),
            Self::Negotiation => Some("negotiation"),
            Self::ClosedWon => Some("closed-won"),
            Self::ClosedLost => Some("closed-lost"),
        }
    }

    /// Whether the deal is finished (won or lost).
    #[inline]
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::ClosedWon | Self::ClosedLost)
    }
}

impl From<String> for Stage {
    fn from(name: String) -> Self {
        match name.as_str() {
            "discovery" => Self::Discovery,
            "qualification" => Self::Qualification,
            "proposal" => Self::Proposal,
            "negotiation" => Self::Negotiation,
            "closed-won" => Self::ClosedWon,
            "closed-lost" => Self::ClosedLost,
            _ => Self::Other(name),
        }
    }
}

impl From<Stage> for String {
    fn from(stage: Stage) -> Self {
        stage.as_str().to_owned()
    }
}

/// A deal in a pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deal {
    /// The tenant.
    pub tenant: TenantId,
    /// The deal id.
    pub id: String,
    /// Who the deal is with, as people call them ("Acme").
    pub contact_name: String,
    /// The pipeline stage.
    pub stage: Stage,
    /// The value in minor units (cents), when known.
    #[serde(default)]
    pub value_cents: Option<i64>,
    /// The estimated probability of winning, 0 to 100, when known.
    #[serde(default)]
    pub probability: Option<u32>,
    /// When someone last acted on the deal.
    #[serde(default)]
    pub last_action_at: Option<DateTime<Utc>>,
    /// When the last message about the deal was sent or received; activity resets staleness.
    #[serde(default)]
    pub last_message_at: Option<DateTime<Utc>>,
    /// When the deal entered its current stage.
    #[serde(default)]
    pub stage_entered_at: Option<DateTime<Utc>>,
    /// The expected close date.
    #[serde(default)]
    pub expected_close_at: Option<DateTime<Utc>>,
    /// The next planned step, when one is planned.
    #[serde(default)]
    pub next_step_at: Option<DateTime<Utc>>,
    /// When the deal was created.
    #[serde(default)]
    pub created_at: Option<DateTime<Utc>>,
}

impl Deal {
    /// The latest activity: the later of the last action and the last message.
    #[inline]
    pub fn last_activity_at(&self) -> Option<DateTime<Utc>> {
        match (self.last_action_at, self.last_message_at) {
            (Some(action), Some(message)) => Some(action.max(message)),
            (action, message) => action.or(message),
        }
    }
}

/// A person the business deals with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contact {
    /// The tenant.
    pub tenant: TenantId,
    /// The contact id.
    pub id: String,
    /// The name people use.
    pub name: String,
    /// When a follow-up was promised.
    #[serde(default)]
    pub follow_up_due_at: Option<DateTime<Utc>>,
    /// When the follow-up was done (clears an overdue follow-up due before it).
    #[serde(default)]
    pub followed_up_at: Option<DateTime<Utc>>,
    /// When the business and the contact last talked.
    #[serde(default)]
    pub last_interaction_at: Option<DateTime<Utc>>,
    /// How many interactions there have been in total.
    #[serde(default)]
    pub interactions: u32,
    /// The contact's birthday or renewal date, when the business tracks one.
    #[serde(default)]
    pub renewal_at: Option<DateTime<Utc>>,
}

/// A direction of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// From a contact to the business.
    Inbound,
    /// From the business to a contact.
    Outbound,
}

/// A message exchanged with a contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// The tenant.
    pub tenant: TenantId,
    /// The message id.
    pub id: String,
    /// Who sent or received it.
    pub contact_name: String,
    /// The subject line, as written by an outside person (plain text, never a template).
    pub subject: String,
    /// Inbound or outbound.
    pub direction: Direction,
    /// When it was received or sent.
    pub at: DateTime<Utc>,
    /// When the business answered, if it did.
    #[serde(default)]
    pub answered_at: Option<DateTime<Utc>>,
}

/// A new lead.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lead {
    /// The tenant.
    pub tenant: TenantId,
    /// The lead id.
    pub id: String,
    /// The lead's name.
    pub name: String,
    /// Where the lead came from ("website", "referral").
    #[serde(default)]
    pub source: Option<String>,
    /// When it arrived.
    pub created_at: DateTime<Utc>,
    /// When someone first contacted it.
    #[serde(default)]
    pub contacted_at: Option<DateTime<Utc>>,
}

/// The arrival times of a tenant's recent leads, for the rules that look at the rhythm.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadLog {
    /// The tenant.
    pub tenant: TenantId,
    /// The log's id (usually one per tenant, such as `leads`).
    pub id: String,
    /// When each lead arrived, in any order.
    pub arrivals: Vec<DateTime<Utc>>,
}

/// A team member's response times, for the consent-gated well-being rule.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Member {
    /// The tenant.
    pub tenant: TenantId,
    /// The member id.
    pub id: String,
    /// The name people use.
    pub name: String,
    /// Whether the member explicitly opted in to response-time monitoring. Without it the
    /// rules about them never fire.
    #[serde(default)]
    pub consent: bool,
    /// (when a reply was sent, how many minutes it took), in any order.
    #[serde(default)]
    pub responses: Vec<(DateTime<Utc>, u32)>,
}

/// Any record of the CRM domain; the catalog's ruliads evaluate these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum Record {
    /// A deal.
    Deal(Deal),
    /// A contact.
    Contact(Contact),
    /// A message.
    Message(Message),
    /// A lead.
    Lead(Lead),
    /// A tenant's lead arrivals.
    LeadLog(LeadLog),
    /// A team member.
    Member(Member),
}

impl Record {
    /// The record's type name (`deal`, `contact`, …).
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Deal(_) => "deal",
            Self::Contact(_) => "contact",
            Self::Message(_) => "message",
            Self::Lead(_) => "lead",
            Self::LeadLog(_) => "lead_log",
            Self::Member(_) => "member",
        }
    }
}

impl Entity for Record {
    fn tenant(&self) -> &TenantId {
        match self {
            Self::Deal(deal) => &deal.tenant,
            Self::Contact(contact) => &contact.tenant,
            Self::Message(message) => &message.tenant,
            Self::Lead(lead) => &lead.tenant,
            Self::LeadLog(log) => &log.tenant,
            Self::Member(member) => &member.tenant,
        }
    }

    fn key(&self) -> &str {
        match self {
            Self::Deal(deal) => &deal.id,
            Self::Contact(contact) => &contact.id,
            Self::Message(message) => &message.id,
            Self::Lead(lead) => &lead.id,
            Self::LeadLog(log) => &log.id,
            Self::Member(member) => &member.id,
        }
    }
}
