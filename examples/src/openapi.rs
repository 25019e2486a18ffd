//! The OpenAPI document served at `/openapi.json`, and the schemas of request bodies whose Rust
//! types live in other crates.

use std::sync::OnceLock;

use utoipa::OpenApi as _;

/// The OpenAPI document of the server, as JSON.
pub fn document() -> String {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT
        .get_or_init(|| {
            crate::api::ApiDoc::openapi()
                .to_pretty_json()
                .unwrap_or_else(|error| format!("{{\"error\":\"{error}\"}}"))
        })
        .clone()
}

/// A deal (`sos_ruliads::crm::Deal`); `tenant` and `id` come from the URL.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct DealInput {
    /// Who the deal is with.
    pub contact_name: String,
    /// `discovery`, `qualification`, `proposal`, `negotiation`, `closed-won`, `closed-lost` or
    /// another stage name.
    pub stage: String,
    /// The value in cents.
    pub value_cents: Option<i64>,
    /// The probability of winning, 0 to 100.
    #[schema(minimum = 0, maximum = 100)]
    pub probability: Option<u32>,
    /// When someone last acted on it.
    #[schema(format = DateTime)]
    pub last_action_at: Option<String>,
    /// When the last message about it went or came.
    #[schema(format = DateTime)]
    pub last_message_at: Option<String>,
    /// When it entered its stage.
    #[schema(format = DateTime)]
    pub stage_entered_at: Option<String>,
    /// The expected close date.
    #[schema(format = DateTime)]
    pub expected_close_at: Option<String>,
    /// The next planned step.
    #[schema(format = DateTime)]
    pub next_step_at: Option<String>,
    /// When it was created.
    #[schema(format = DateTime)]
    pub created_at: Option<String>,
}

/// A contact (`sos_ruliads::crm::Contact`); `tenant` and `id` come from the URL.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct ContactInput {
    /// The name people use.
    pub name: String,
    /// When a follow-up was promised.
    #[schema(format = DateTime)]
    pub follow_up_due_at: Option<String>,
    /// When the follow-up was done.
    #[schema(format = DateTime)]
    pub followed_up_at: Option<String>,
    /// When the business and the contact last talked.
    #[schema(format = DateTime)]
    pub last_interaction_at: Option<String>,
    /// How many interactions there have been.
    pub interactions: Option<u32>,
    /// A renewal or birthday date.
    #[schema(format = DateTime)]
    pub renewal_at: Option<String>,
}

/// A message (`sos_ruliads::crm::Message`); `tenant` comes from the URL.
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub(crate) struct MessageInput {
    /// The message id.
    pub id: String,
    /// Who sent or received it.
    pub contact_name: String,
    /// The subject line.
    pub subject: String,
    /// `inbound` or `outbound`.
    pub direction: String,
    /// When it was sent or received.
    #[schema(format = DateTime)]
    pub at: String,
    /// When the business answered.
    #[schema(format = DateTime)]
    pub answered_at: Option<String>,
}
