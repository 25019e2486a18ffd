//! `sos-send-webhook`: signs and sends a test webhook to a running `sos-server`, the way Stripe
//! or a Standard Webhooks sender would. Defaults fit `sos-server --demo` on its default address.
//!
//! ```text
//! cargo run -p sos-server --bin sos-send-webhook -- contact-renewal
//! cargo run -p sos-server --bin sos-send-webhook -- stripe-payment --deal d-1
//! ```

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde_json::json;
use sos_webhooks::signature::{sign_standard, sign_stripe};

#[derive(Debug, Parser)]
#[command(name = "sos-send-webhook", about = "Sign and send a test webhook to sos-server")]
struct Args {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The tenant.
    #[arg(long, default_value = sos_server::DEMO_TENANT)]
    tenant: String,
    /// The signing secret (default: the demo tenant's secret for the provider).
    #[arg(long)]
    secret: Option<String>,
    /// The event id (default: a new one); send the same id twice to see the duplicate answered.
    #[arg(long)]
    event_id: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// A Standard Webhooks `contact.upserted` event: a contact whose renewal is near.
    ContactRenewal {
        /// The contact id.
        #[arg(long, default_value = "c-1")]
        id: String,
        /// The contact's name.
        #[arg(long, default_value = "Initech Fund")]
        name: String,
        /// Days until the renewal.
        #[arg(long, default_value_t = 9)]
        days: i64,
    },
    /// A Stripe `payment_intent.succeeded` event for a deal (`metadata.deal_id`): the deal is won.
    StripePayment {
        /// The deal id.
        #[arg(long)]
        deal: String,
        /// The amount in cents.
        #[arg(long, default_value_t = 4_500_000)]
        amount: i64,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let now = chrono::Utc::now();
    let client = reqwest::Client::new();
    let request = match &args.command {
        Command::ContactRenewal { id, name, days } => {
            let event_id =
                args.event_id.clone().unwrap_or_else(|| format!("msg_{id}_{}", now.timestamp_micros()));
            let body = json!({
                "type": "contact.upserted",
                "data": {
                    "id": id,
                    "name": name,
                    "interactions": 3,
                    "last_interaction_at": now,
                    "renewal_at": now + chrono::TimeDelta::days(*days),
                },
            })
            .to_string();
            let secret = args.secret.clone().unwrap_or_else(|| sos_server::DEMO_STANDARD_SECRET.to_owned());
            let signature = sign_standard(&secret, &event_id, now.timestamp(), body.as_bytes())
                .context("the secret is not a Standard Webhooks secret (whsec_<base64>)")?;
            client
                .post(format!("{}/v1/tenants/{}/webhooks/standard", args.url, args.tenant))
                .header("content-type", "application/json")
                .header("webhook-id", event_id)
                .header("webhook-timestamp", now.timestamp().to_string())
                .header("webhook-signature", signature)
                .body(body)
        }
        Command::StripePayment { deal, amount } => {
            let event_id =
                args.event_id.clone().unwrap_or_else(|| format!("evt_{deal}_{}", now.timestamp_micros()));
            let body = json!({
                "id": event_id,
                "object": "event",
                "type": "payment_intent.succeeded",
                "data": { "object": { "object": "payment_intent", "amount": amount, "currency": "usd",
                                      "metadata": { "deal_id": deal } } },
            })
            .to_string();
            let secret = args.secret.clone().unwrap_or_else(|| sos_server::DEMO_STRIPE_SECRET.to_owned());
            let signature = sign_stripe(&secret, now.timestamp(), body.as_bytes());
            client
                .post(format!("{}/v1/tenants/{}/webhooks/stripe", args.url, args.tenant))
                .header("content-type", "application/json")
                .header("stripe-signature", signature)
                .body(body)
        }
    };
    let response =
        request.send().await.with_context(|| format!("cannot reach {}; is sos-server running?", args.url))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    println!("{status} {text}");
    if status.is_success() { Ok(()) } else { std::process::exit(1) }
}
